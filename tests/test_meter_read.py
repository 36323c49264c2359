"""`concentrator meter read` against a DL/T 645 meter played on a pty pair (and over TCP)."""

from __future__ import annotations

import json
import os
import select
import socket
import termios
import threading
import tty
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal

import pytest
from click.testing import CliRunner

from concentrator import dlt645
from concentrator.cli_meter import meter
from concentrator.dlt645 import Dlt645Frame, ErrorBits, StatusWord3

ADDR = "000000000161"
ENERGY_BLOCK = (Decimal("1234.56"), Decimal("600.00"), Decimal("400.00"), Decimal("200.00"),
                Decimal("34.56"))


def _values() -> dict[int, bytes]:
    v = dlt645.encode_value
    return {
        0x0001FF00: v(0x0001FF00, ENERGY_BLOCK),
        0x00010000: v(0x00010000, ENERGY_BLOCK[0]),
        0x0201FF00: v(0x0201FF00, (Decimal("229.8"), Decimal("0"), Decimal("0"))),
        0x0202FF00: v(0x0202FF00, (Decimal("-1.250"), Decimal("0"), Decimal("0"))),
        0x0203FF00: v(0x0203FF00, (Decimal("-0.2873"),) + (Decimal("0"),) * 3),
        0x04000101: v(0x04000101, date(2024, 5, 2)),
        0x04000102: v(0x04000102, time(13, 45, 7)),
        0x04000503: v(0x04000503, StatusWord3(relay_open=True, relay_trip_commanded=True)),
        0x05060002: v(0x05060002, datetime(2024, 4, 30, 0, 0)),
        0x05060102: v(0x05060102, ENERGY_BLOCK),
        0x04000C01: bytes.fromhex("0102"),  # a DI the registry does not know
        0x04000403: v(0x04000403, "ASSET-0042-SUBSTATION-7"),  # sent in two frames
    }


VALUES_1997 = {
    0x901F: dlt645.encode_value(0x901F, ENERGY_BLOCK, protocol=1997),
    0xB611: dlt645.encode_value(0xB611, 231, protocol=1997),
}


class FakeMeter:
    """Answers DL/T 645 requests with the codec's builders, like a meter on the bus.

    ``mode``: "normal", "silent" (never answers), "corrupt" (bad checksum), "noisy" (echoes
    the request and sends line noise before the answer), "no-blocks" (no such data for
    block DIs, as some single-phase meters do).
    """

    def __init__(self, address: str = ADDR, mode: str = "normal") -> None:
        self.address = address
        self.mode = mode
        self.values = _values()
        self.requests: list[Dlt645Frame] = []

    def answer(self, req: Dlt645Frame) -> bytes:
        if req.is_reply or self.mode == "silent":
            return b""
        self.requests.append(req)
        mine = req.address in (self.address, dlt645.WILDCARD_ADDRESS, dlt645.BROADCAST_ADDRESS)
        if not mine:
            return b""
        if req.function == 0x13:
            reply = dlt645.read_address_reply(self.address)
        elif req.function == 0x11 and req.di == 0x04000403:
            first = self.values[0x04000403][:20]
            reply = dlt645.read_reply(self.address, 0x04000403, first, follow_up=True)
        elif req.function == 0x12 and req.di == 0x04000403 and req.data[4] == 1:
            rest = self.values[0x04000403][20:]
            reply = dlt645.read_follow_up_reply(self.address, 0x04000403, rest, 1)
        elif req.function == 0x11:
            di = req.di or 0
            no_block = self.mode == "no-blocks" and (di >> 8) & 0xFF == 0xFF
            if di in self.values and not no_block:
                reply = dlt645.read_reply(self.address, di, self.values[di], preamble=2)
            else:
                reply = dlt645.error_reply(self.address, 0x11, ErrorBits.NO_DATA)
        elif req.function == 0x01:
            di = req.di or 0
            if di in VALUES_1997:
                reply = dlt645.read_reply_1997(self.address, di, VALUES_1997[di])
            else:
                reply = dlt645.error_reply(self.address, 0x01, ErrorBits.NO_DATA)
        else:
            reply = dlt645.error_reply(self.address, req.function, ErrorBits.OTHER)
        raw = dlt645.encode(reply)
        if self.mode == "corrupt":
            raw = raw[:-2] + bytes(((raw[-2] + 1) & 0xFF, 0x16))
        if self.mode == "noisy":
            raw = dlt645.encode(req) + b"\x00\x68\x13\xff" + raw
        return raw


def _serve(fd_read, fd_write, fake: FakeMeter, stop: threading.Event) -> None:
    decoder = dlt645.Dlt645StreamDecoder()
    while not stop.is_set():
        ready, _, _ = select.select([fd_read], [], [], 0.02)
        if not ready:
            continue
        try:
            data = fd_read()
        except OSError:
            return
        if not data:
            return
        for item in decoder.feed(data):
            if isinstance(item, Dlt645Frame):
                out = fake.answer(item)
                if out:
                    fd_write(out)


class _Fd:
    """select()-able callable wrapper for the pty master fd."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def __call__(self) -> bytes:
        return os.read(self.fd, 1024)


class PtyMeter:
    """A FakeMeter answering on the master side of a pty; ``port`` is the slave's name."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo or newline translation, as on a serial device
        self._fresh = termios.tcgetattr(self.slave)
        self.fake = FakeMeter()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_serve, args=(_Fd(self.master), lambda b: os.write(self.master, b), self.fake, self._stop),
            daemon=True)
        self._thread.start()

    @property
    def port(self) -> str:
        # Linux ptys drop PARENB and then refuse pyserial's second 8E1 setup (EINVAL), so
        # put the line back to its first settings before every open.
        termios.tcsetattr(self.slave, termios.TCSANOW, self._fresh)
        return os.ttyname(self.slave)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.slave)
        os.close(self.master)


@pytest.fixture
def pty_meter() -> Iterator[tuple[PtyMeter, FakeMeter]]:
    line = PtyMeter()
    try:
        yield line, line.fake
    finally:
        line.close()


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(meter, ["read", *args])
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        result.exception
    return result.exit_code, result.output


def test_energy_block_printed_with_units(pty_meter) -> None:
    line, fake = pty_meter
    code, out = run("--port", line.port, "--address", ADDR, "--item", "energy")
    assert code == 0, out
    assert f"meter {ADDR}" in out
    assert "forward active energy block (total, tariffs) [0001FF00]:" in out
    assert "    total     1234.56 kWh\n    tariff 1  600.00 kWh\n" in out and "tariff 4  34.56 kWh" in out
    assert fake.requests[0].di == 0x0001FF00 and fake.requests[0].preamble == 4


def test_energy_falls_back_to_total_when_blocks_unsupported(pty_meter) -> None:
    line, fake = pty_meter
    fake.mode = "no-blocks"
    code, out = run("--port", line.port, "--address", ADDR)
    assert code == 0, out
    assert "forward active energy, total [00010000]: 1234.56 kWh" in out


def test_json_current_and_wildcard_address(pty_meter) -> None:
    line, fake = pty_meter
    code, out = run("--port", line.port, "--item", "current", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["meter"] == ADDR and doc["readings"][0]["unit"] == "A"
    assert doc["readings"][0]["value"] == ["-1.250", "0.000", "0.000"]
    assert fake.requests[0].address == dlt645.WILDCARD_ADDRESS


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--item", "voltage"], "phase A  229.8 V"),
        (["--item", "power"], "total    -0.2873 kW"),
        (["--item", "clock"], "time [04000102]: 13:45:07"),
        (["--item", "status"], "relay open (supply off), last command trip"),
        (["--item", "daily-frozen", "--days-back", "2"], "daily freeze time, 2 days back [05060002]: 2024-04-30 00:00:00"),
        (["--item", "address"], "communication address: 000000000161"),
        (["--di", "04000C01"], "data 04000C01 [04000C01]: 01 02"),
        (["--di", "04000403"], "asset management code [04000403]: ASSET-0042-SUBSTATION-7"),
    ],
)
def test_items(pty_meter, args: list[str], expected: str) -> None:
    line, _ = pty_meter
    code, out = run("--port", line.port, *args)
    assert code == 0, out
    assert expected in out


def test_dlt645_1997_read(pty_meter) -> None:
    line, fake = pty_meter
    code, out = run("--port", line.port, "--protocol", "1997", "--address", ADDR, "--item", "voltage")
    # This meter has no B61F block; the reader falls back to phase A.
    assert code == 0 and "voltage, phase A [B611]: 231 V" in out, out
    assert [r.di for r in fake.requests] == [0xB61F, 0xB611]
    code, out = run("--port", line.port, "--protocol", "1997", "--address", ADDR)
    assert code == 0 and "total     1234.56 kWh" in out, out
    assert fake.requests[-1].function == 0x01


def test_echo_and_line_noise_are_skipped(pty_meter) -> None:
    line, fake = pty_meter
    fake.mode = "noisy"
    code, out = run("--port", line.port, "--address", ADDR, "--item", "voltage")
    assert code == 0 and "phase A  229.8 V" in out


def test_timeout_is_one_line_and_exit_1(pty_meter) -> None:
    line, fake = pty_meter
    fake.mode = "silent"
    code, out = run("--port", line.port, "--address", ADDR, "--timeout", "0.3")
    assert code == 1
    assert out.strip() == f"Error: meter {ADDR}: no reply within 0.3 s"


def test_error_reply_decodes_err_bits(pty_meter) -> None:
    line, _ = pty_meter
    code, out = run("--port", line.port, "--address", ADDR, "--di", "04000402")
    assert code == 1
    assert out.strip() == (f"Error: meter {ADDR} replied with error 02: "
                           "no such data (unknown or unsupported data identifier)")


def test_checksum_error(pty_meter) -> None:
    line, fake = pty_meter
    fake.mode = "corrupt"
    code, out = run("--port", line.port, "--address", ADDR)
    assert code == 1 and "checksum error" in out and len(out.strip().splitlines()) == 1


def test_missing_port() -> None:
    code, out = run("--port", "/dev/does-not-exist-ttyUSB9", "--address", ADDR, "--timeout", "0.2")
    assert code == 1
    assert out.strip() == "Error: cannot open /dev/does-not-exist-ttyUSB9: No such file or directory"


@pytest.mark.parametrize(
    "args",
    [[], ["--port", "/dev/null", "--tcp", "h:1"], ["--port", "x", "--address", "12"],
     ["--port", "x", "--di", "9010"], ["--port", "x", "--protocol", "1997", "--item", "status"]],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    code, _ = run(*args)
    assert code == 2


def test_tcp_serial_server() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    host, tcp_port = server.getsockname()
    fake = FakeMeter()
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            _serve(_Sock(conn), conn.sendall, fake, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        code, out = run("--tcp", f"{host}:{tcp_port}", "--address", ADDR, "--item", "voltage")
    finally:
        stop.set()
        thread.join(2)
        server.close()
    assert code == 0, out
    assert "phase A  229.8 V" in out


def test_tcp_connection_refused() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        host, free_port = probe.getsockname()  # closed again: nothing listens there now
    code, out = run("--tcp", f"{host}:{free_port}", "--address", ADDR, "--timeout", "0.2")
    assert code == 1 and out.startswith(f"Error: cannot open socket://{host}:{free_port}")
    assert len(out.strip().splitlines()) == 1


class _Sock:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def fileno(self) -> int:
        return self.conn.fileno()

    def __call__(self) -> bytes:
        return self.conn.recv(1024)


def test_attached_to_the_concentrator_command(pty_meter) -> None:
    from concentrator.cli import main

    line, _ = pty_meter
    result = CliRunner().invoke(main, ["meter", "read", "--port", line.port, "--address", ADDR])
    assert result.exit_code == 0, result.output
    assert "1234.56 kWh" in result.output
