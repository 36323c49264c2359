"""Bounded fuzzing of every parser that reads outside input (issue 9).

One harness per parser: the three wire codecs (one-shot with their data-unit decoders, and
streaming), the daemon's YAML configuration (``concentrator.config.loads``), the control
socket's request lines (a real ``ControlServer`` on a Unix socket) and the simulator's scenario
loader (``simulator.scenario.loads``). Each harness asserts that

* only the documented errors escape (the ``concentrator.codec`` tree, ``ConfigError``,
  ``ScenarioError``; the control server answers every line with a JSON error reply and keeps
  serving),
* memory stays bounded (a stream decoder never buffers more than its cap),
* no input hangs a parser (each example runs under a hard ``SIGALRM`` limit of ``LIMIT_S``).

Inputs are random bytes/text plus *mutations of valid seeds* (bit flips, byte edits, cuts,
with length and checksum fields re-fixed so the mutation reaches the data-unit decoders).
``HARNESSES`` is shared with ``bench/fuzz.py``, which runs each for thousands of examples.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concentrator import config, dlt645
from concentrator.codec import CodecError, Rejected, StreamDecoder
from concentrator.control import MAX_LINE, ControlServer
from plc_driver import gdw13762
from simulator import scenario
from simulator.generate import generate
from uplink import gdw13761
from uplink import security as sec

EXAMPLES = 150           # per harness in the test suite; bench/fuzz.py runs many more
LIMIT_S = 2.0            # hard per-example limit (a hang fails the example, never the run)


class Hang(Exception):
    """An example ran over its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise ``Hang`` in the main thread if the block runs longer than ``seconds``."""
    def _alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no result after {seconds} s")
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --- seeds and mutations ----------------------------------------------------------------------

def _h(s: str) -> bytes:
    return bytes.fromhex(s)


SEEDS_645 = [  # protocols.md §1.14
    _h("FE FE FE FE 68 94 35 21 90 88 55 68 93 06 C7 68 54 C3 BB 88 49 16"),
    _h("FE FE FE FE 68 94 35 21 90 88 55 68 91 08 33 33 34 33 59 35 33 33 81 16"),
    _h("FE FE FE FE 68 94 35 21 90 88 55 68 1C 10 35 33 33 33 33 33 33 33 4D 33 8C 8C 56 3C"
       " 3A 54 A5 16"),
    _h("68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16"),
    _h("68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16"),
    _h("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16"),
]

SEEDS_13762 = [  # protocols.md §4.7
    _h("68 0F 00 41 00 00 28 00 00 00 12 02 00 7D 16"),
    _h("68 13 00 81 00 00 40 00 00 00 00 01 00 FF FF 00 00 C0 16"),
    _h("68 15 00 41 00 00 28 00 00 00 05 01 00 00 26 00 00 00 00 95 16"),
    _h("68 18 00 81 00 00 40 00 00 00 03 01 00 53 45 54 52 08 12 11 13 00 41 16"),
    _h("68 13 00 81 00 00 40 00 00 00 10 01 00 73 01 DC 05 27 16"),
    _h("68 12 00 41 00 00 00 00 00 00 10 02 00 00 00 0F 62 16"),
    _h("68 2F 00 41 04 00 00 00 00 01 00 26 00 00 00 00 61 01 00 00 00 00 13 01 00 02 00 00 10"
       " 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16 32 16"),
]


def _seeds_13761() -> list[bytes]:
    g = gdw13761
    a = g.Address("4403", 1, 1)
    tp = g.Tp(7, g.DayTime(10, 8, 0, 30), 5)
    key = bytes(range(32))
    reqs = [
        g.request(a, 0x04, [g.unit(0, 10, g.MeterArchive((
            g.MeterRecord(1, 1, "000000000161"), g.MeterRecord(2, 2, "000000000162"))))], 1,
            tp=tp),
        g.request(a, 0x05, [g.unit(0, 31, g.TerminalClock(datetime(2024, 5, 10, 9)))], 2, tp=tp),
        g.request(a, 0x10, [g.unit(0, 1, g.TransparentForward(31, SEEDS_645[5][:0] + _h(
            "68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16"), frame_timeout=0x8A))], 3),
        g.request(a, 0x0D, [g.unit(1, 161, g.DayRequest(datetime(2024, 5, 9).date()))], 4),
        g.request(a, 0x0E, [g.unit(0, 1, g.EventRequest(0, 5))], 5),
        g.request(a, 0x0A, [g.unit(0, 10, g.ArchiveQuery((1, 2)))], 6),
        g.request(a, 0x04, [g.unit(0, 1, g.TerminalCommParams(heartbeat_min=2))], 7),
    ]
    frames = [g.encode(sec.sign(r, key) if sec.needs_mac(r) and r.tp else r) for r in reqs]
    return frames + [
        _h("68 32 00 32 00 68 C9 03 44 04 00 00 02 71 00 00 01 00 88 16"),
        _h("68 32 00 32 00 68 0B 03 44 04 00 00 00 61 00 00 01 00 B8 16"),
        _h("68 4A 00 4A 00 68 5A 00 11 01 00 02 0C E0 00 00 02 00 00 27 13 13 24 FF CC 16"),
        _h("68 32 00 32 00 68 4B 03 44 04 00 02 0C 61 01 01 01 10 18 16"),
    ]


SEEDS_13761 = _seeds_13761()


def _fix_645(b: bytearray) -> None:
    p = next((i for i, x in enumerate(b) if x == 0x68), None)
    if p is None or len(b) < p + 12:
        return
    b[p + 9] = (len(b) - p - 12) & 0xFF
    b[-2] = sum(b[p:-2]) & 0xFF


def _fix_13762(b: bytearray) -> None:
    if len(b) < 6:
        return
    b[1:3] = (len(b) & 0xFFFF).to_bytes(2, "little")
    b[-2] = sum(b[3:-2]) & 0xFF


def _fix_13761(b: bytearray) -> None:
    if len(b) < 16:
        return
    ln = (((len(b) - 8) << 2 | 2) & 0xFFFF).to_bytes(2, "little")
    b[1:3] = ln
    b[3:5] = ln
    b[-2] = sum(b[6:-2]) & 0xFF


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], fix: Callable[[bytearray], None]) -> bytes:
    """A seed frame with a few random edits; usually with L and CS made consistent again."""
    b = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        op = draw(st.integers(0, 4))
        if op == 0:
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:
            b[i] = draw(st.integers(0, 255))
        elif op == 2:
            del b[i]
        elif op == 3:
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del b[i:]
    if draw(st.integers(0, 3)):
        fix(b)
    return bytes(b)


def frame_bytes(seeds: list[bytes], fix: Callable[[bytearray], None]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(seeds, fix))


def chunked(frames: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes]]:
    """A byte stream of frames and garbage, cut at random points."""
    @st.composite
    def build(draw: st.DrawFn) -> list[bytes]:
        stream = b"".join(draw(st.lists(st.one_of(frames, st.binary(max_size=40)), max_size=8)))
        cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
        out, last = [], 0
        for c in [*cuts, len(stream)]:
            out.append(stream[last:c])
            last = c
        return out
    return build()


# --- harnesses ---------------------------------------------------------------------------------

NOW = datetime(2024, 5, 10, 8, 0, 30)


def check_645(data: bytes) -> None:
    try:
        frame = dlt645.decode(data)
    except CodecError:
        return
    assert dlt645.encode(frame) == data
    if len(frame.data) >= 4:
        di = int.from_bytes(frame.data[:4], "little")
        with contextlib.suppress(CodecError):
            dlt645.decode_value(di, frame.data[4:])


def check_13762(data: bytes) -> None:
    try:
        frame = gdw13762.decode(data)
    except CodecError:
        return
    assert gdw13762.encode(frame) == data
    with contextlib.suppress(CodecError):
        gdw13762.decode_data_unit(frame)


_GUARD_KEY = bytes(range(32))


def check_13761(data: bytes) -> None:
    try:
        frame = gdw13761.decode(data)
    except CodecError:
        return
    assert gdw13761.encode(frame) == data
    with contextlib.suppress(CodecError):
        gdw13761.decode_units(frame)
    if frame.tp is not None:
        gdw13761.tp_expired(frame.tp, NOW)
    # The replay guard sees every decodable downlink frame: it must decide, never raise.
    verdict = sec.CommandGuard(_GUARD_KEY).check(frame, NOW)
    assert verdict.ok or verdict.reason in {"no-mac", "bad-mac", "no-tp", "expired",
                                            "old-pfc", "replayed"}


def _check_stream(make: Callable[[], StreamDecoder[Any]], frame_type: type
                  ) -> Callable[[list[bytes]], None]:
    def check(chunks: list[bytes]) -> None:
        dec = make()
        cap = dec._max          # noqa: SLF001 - the cap the decoder was built with
        for chunk in chunks:
            for item in dec.feed(chunk):
                assert isinstance(item, Rejected | frame_type), type(item)
                if isinstance(item, Rejected):
                    assert isinstance(item.error, CodecError) and item.raw
            assert dec.buffered <= cap
    return check


MINIMAL_CONFIG = """\
terminal: {district: "4403", address: 4}
module: {port: /dev/ttyS1, baud: 9600, channel: hplc}
uplink: {primary: "192.0.2.10:7001", backup: "192.0.2.11:7001", heartbeat_period: 5min,
         tls: {enabled: false}}
reading: {daily_window: "00:05-06:00"}
archive:
  - {address: "000000000161", point: 1}
security: {require_mac: true, max_delay: 5min}
"""

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                       st.floats(allow_nan=True), st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=20)


@st.composite
def mutated_mapping(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """``base`` with a few values (at any depth) replaced by random JSON-like values."""
    d = json.loads(json.dumps(base, default=str))
    for _ in range(draw(st.integers(1, 4))):
        node: Any = d
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            k = draw(st.sampled_from(keys))
            if not isinstance(node[k], dict | list) or draw(st.integers(0, 2)) == 0:
                node[k] = draw(_json)
                break
            node = node[k]
        else:
            if isinstance(node, dict):
                node[draw(st.text(max_size=10))] = draw(_json)
    return d


def _yaml_text(base: dict[str, Any]) -> st.SearchStrategy[str]:
    def dump(d: Any) -> str:
        return yaml.safe_dump(d, allow_unicode=True)
    return st.one_of(st.text(max_size=200), mutated_mapping(base).map(dump), _json.map(dump))


def check_config(text: str) -> None:
    with contextlib.suppress(config.ConfigError):
        config.loads(text, "fuzz.yaml")


_SCENARIO_BASE: dict[str, Any] = scenario.to_dict(generate(10, "street", seed=3))


def check_scenario(text: str) -> None:
    with contextlib.suppress(scenario.ScenarioError):
        scenario.loads(text)


class ControlHarness:
    """A ``ControlServer`` on a Unix socket, served by an event loop in a thread."""

    PROBE = {"id": "probe-7f3a", "cmd": "echo", "args": {"x": 1}}

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name) / "control.sock"
        self.loop = asyncio.new_event_loop()

        async def echo(args: dict[str, Any]) -> Any:
            return args

        async def change(args: dict[str, Any]) -> Any:
            return {"changed": True}

        self.server = ControlServer(self.path, {"echo": echo, "archive.add": change},
                                    group=None, daemon_uid=-1)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(5)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
        self._dir.cleanup()

    def check(self, line: bytes) -> None:
        """Send one fuzzed line, then a valid probe: every reply is a JSON object, the fuzzed
        line gets at most one, and the probe is still answered (the server survived)."""
        line = line.replace(b"\n", b" ")[:MAX_LINE - 1]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(LIMIT_S)
            s.connect(str(self.path))
            s.sendall(line + b"\n" + json.dumps(self.PROBE).encode() + b"\n")
            buf = b""
            replies: list[dict[str, Any]] = []
            while not any(r.get("id") == self.PROBE["id"] for r in replies):
                chunk = s.recv(65536)
                assert chunk, f"server closed the connection; replies so far {replies}"
                buf += chunk
                while b"\n" in buf:
                    raw, _, buf = buf.partition(b"\n")
                    reply = json.loads(raw)
                    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
                    replies.append(reply)
        before = replies[:-1]
        assert len(before) <= 1, before
        assert replies[-1] == {"id": "probe-7f3a", "ok": True, "result": {"x": 1}}
        for r in before:
            assert r.get("code") != "internal", r      # a parser bug surfaced as a 500


def _control_lines() -> st.SearchStrategy[bytes]:
    req = st.fixed_dictionaries({}, optional={
        "id": _json, "cmd": st.one_of(st.sampled_from(["echo", "archive.add", "", "x"]), _json),
        "args": _json})
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.one_of(req, _json).map(lambda o: json.dumps(o).encode()),
    )


@dataclass(frozen=True)
class Harness:
    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any], None]


def harnesses(control: ControlHarness | None = None) -> list[Harness]:
    """Every harness; the control one only when a running ``ControlHarness`` is given."""
    b645 = frame_bytes(SEEDS_645, _fix_645)
    b13762 = frame_bytes(SEEDS_13762, _fix_13762)
    b13761 = frame_bytes(SEEDS_13761, _fix_13761)
    out = [
        Harness("dlt645", b645, check_645),
        Harness("dlt645-stream", chunked(b645),
                _check_stream(dlt645.Dlt645StreamDecoder, dlt645.Dlt645Frame)),
        Harness("gdw13762", b13762, check_13762),
        Harness("gdw13762-stream", chunked(b13762),
                _check_stream(gdw13762.Gdw13762StreamDecoder, gdw13762.Frame13762)),
        Harness("gdw13761", b13761, check_13761),
        Harness("gdw13761-stream", chunked(b13761),
                _check_stream(gdw13761.Gdw13761StreamDecoder, gdw13761.Frame13761)),
        Harness("config", _yaml_text(yaml.safe_load(MINIMAL_CONFIG)), check_config),
        Harness("scenario", _yaml_text(_SCENARIO_BASE), check_scenario),
    ]
    if control is not None:
        out.append(Harness("control", _control_lines(), control.check))
    return out


# --- the tests ---------------------------------------------------------------------------------

# The per-example deadline is the SIGALRM limit in each example: hypothesis's own deadline
# reports "unreliable timings" when a loaded machine slows one run, which is not a parser bug.
_FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def control_harness():
    h = ControlHarness()
    yield h
    h.close()


_BY_NAME = {h.name: h for h in harnesses()}


@pytest.mark.parametrize("name", sorted(_BY_NAME))
def test_parser_survives_fuzzing(name):
    h = _BY_NAME[name]

    @_FUZZ
    @given(h.strategy)
    def run(data: Any) -> None:
        with time_limit(LIMIT_S):
            h.check(data)

    run()


def test_control_socket_survives_fuzzing(control_harness):
    @_FUZZ
    @given(_control_lines())
    def run(line: bytes) -> None:
        with time_limit(LIMIT_S):
            control_harness.check(line)

    run()


@pytest.mark.parametrize(("make", "false_start", "frame", "cap"), [
    # 645: C = 11, L = FF announces 255 data bytes
    (dlt645.Dlt645StreamDecoder, _h("68 00 00 00 00 00 00 68 11 FF"), SEEDS_645[5], 4096),
    # 1376.2: L = FFFF
    (gdw13762.Gdw13762StreamDecoder, _h("68 FF FF"), SEEDS_13762[0], 4096),
    # 1376.1: L = FFFE twice (protocol mark 10, 16383 bytes of user data)
    (gdw13761.Gdw13761StreamDecoder, _h("68 FE FF FE FF 68"), SEEDS_13761[-1],
     gdw13761.MAX_USER_LENGTH + 8)])
def test_a_false_start_with_a_huge_length_cannot_grow_the_buffer(make, false_start, frame, cap):
    """A 68 announcing the longest frame, then 40 KB without another start byte: the decoder
    stays under its cap and still finds the next real frame."""
    dec = make()
    got: list[Any] = []
    with time_limit(10.0):
        got += dec.feed(false_start)
        for _ in range(40):
            got += dec.feed(b"\x00" * 1024)
            assert dec.buffered <= cap
        got += dec.feed(frame)
    frames = [x for x in got if not isinstance(x, Rejected)]
    assert len(frames) == 1
    assert any(isinstance(x, Rejected) for x in got)


def test_a_crash_would_be_reported():
    """The harness catches what it must: a parser raising outside its error tree fails it."""
    def bad(data: bytes) -> None:
        if data.startswith(b"\x68"):
            raise KeyError("boom")

    @settings(max_examples=200, database=None, deadline=None)
    @given(frame_bytes(SEEDS_13761, _fix_13761))
    def run(data: bytes) -> None:
        bad(data)

    with pytest.raises(KeyError):
        run()
