"""The simulated master station: a strict Q/GDW 1376.1 server for any number of concentrators.

``MasterStation`` accepts terminal connections (plain TCP or TLS), confirms logins and
heartbeats, stores uploads in its own SQLite file deduplicated by (terminal, outbox seq)
(the private upload-key trailer of ``uplink.outbox``), and sends requests to a connected
terminal (``request`` and helpers such as ``read_clock``, ``set_archive``, ``forward``).

It is *strict*: every received frame is checked against the standard (framing, L, CS, DIR,
address, login first, PSEQ/RSEQ rules, FIR/FIN order, data-unit lengths, Tp echo, MSA copy)
and each violation is recorded (``violations`` table and ``MasterStation.violations``) instead
of being tolerated silently. ``trace`` writes every frame in both directions as one line
``timestamp direction hex`` (direction ``up`` = terminal -> master, ``down``).

Commands that change state (AFN 01/04/05/06/0F/10) are signed (``uplink.security``) with
the key the master's ``KeyStore`` holds for that terminal, with a Tp whose PFC counts up per
terminal (kept in the ``pfc`` table across connections and restarts). Without a key they go
out unsigned (PW all zeros), as a legacy master would send them.

Control: a connection whose first byte is ``{`` (instead of 68) speaks JSON lines: one request
object per line, one reply object per line; ``concentrator-sim master-cmd`` uses it
(``start_control`` opens a separate plain listener for TLS masters).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import ssl
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO

from concentrator.clock import Clock, SystemClock
from concentrator.codec import CodecError, Rejected
from concentrator.keystore import KeyStore
from uplink import gdw13761 as g
from uplink import outbox as ob
from uplink import security as sec

__all__ = ["MasterStation", "MasterError", "terminal_key", "parse_terminal", "jsonable"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS terminals (
    terminal TEXT PRIMARY KEY, logins INTEGER NOT NULL DEFAULT 0,
    heartbeats INTEGER NOT NULL DEFAULT 0, last_seen TEXT);
CREATE TABLE IF NOT EXISTS uploads (
    terminal TEXT NOT NULL, seq INTEGER NOT NULL, part INTEGER NOT NULL,
    meter TEXT, pn INTEGER NOT NULL, afn INTEGER NOT NULL, fn INTEGER NOT NULL,
    readings INTEGER NOT NULL, value TEXT NOT NULL, received TEXT NOT NULL,
    copies INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (terminal, seq, part));
CREATE TABLE IF NOT EXISTS line_loss (
    terminal TEXT NOT NULL, day TEXT NOT NULL, value TEXT NOT NULL, received TEXT NOT NULL,
    PRIMARY KEY (terminal, day));
CREATE TABLE IF NOT EXISTS pfc (
    terminal TEXT PRIMARY KEY, pfc INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS violations (
    id INTEGER PRIMARY KEY, terminal TEXT, time TEXT NOT NULL, message TEXT NOT NULL,
    frame TEXT NOT NULL);
"""


class MasterError(Exception):
    """A request to a terminal failed (not connected, timed out, denied)."""


def terminal_key(a: g.Address) -> str:
    """"4403:1" for district 4403, terminal 1 (what ``--terminal A1:A2`` takes)."""
    return f"{a.district}:{a.terminal}"


def parse_terminal(text: str) -> tuple[str, int]:
    district, _, term = text.partition(":")
    if len(district) != 4 or not term.isdigit():
        raise ValueError(f"terminal {text!r} must be A1:A2, e.g. 4403:1")
    return district, int(term)


def jsonable(obj: Any) -> Any:
    """JSON-ready form of decoded data units (Decimal/dates as strings, dataclasses as dicts)."""
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, bytes | bytearray):
        return obj.hex()
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, list | tuple):
        return [jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    return obj


def _readings(value: Any) -> int:
    if isinstance(value, ob.CurveUnit):
        return sum(p is not None for p in value.points)
    if isinstance(value, g.EventReply):
        return len(value.records)
    return 1


def _event_json(rep: g.EventReply) -> dict[str, Any]:
    recs = []
    for r in rep.records:
        try:
            d = ob.EventRecordData.decode(r.data)
            recs.append({"erc": r.erc, "time": d.time.isoformat(), "pn": d.point,
                         "detail": d.detail})
        except CodecError:
            recs.append({"erc": r.erc, "raw": r.data.hex()})
    return {"ec1": rep.ec1, "ec2": rep.ec2, "pm": rep.pm, "pn": rep.pn, "records": recs}


class _Conn:
    """One terminal connection and the state the strict checks need."""

    def __init__(self, master: MasterStation, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, first: bytes) -> None:
        self.m = master
        self.reader = reader
        self.writer = writer
        self.first = first
        self.decoder = g.Gdw13761StreamDecoder()
        self.address: g.Address | None = None
        self.last_pseq: int | None = None
        self.msg_open = False
        self.master_pseq = 0
        self.request_lock = asyncio.Lock()
        self.waiting: tuple[g.Frame13761, asyncio.Queue[g.Frame13761]] | None = None
        self.peer = writer.get_extra_info("peername")

    @property
    def key(self) -> str | None:
        return None if self.address is None else terminal_key(self.address)

    def send(self, frame: g.Frame13761) -> None:
        raw = g.encode(frame)
        self.m._trace("down", raw)
        self.writer.write(raw)

    async def run(self) -> None:
        data = self.first
        try:
            while True:
                if data:
                    for item in self.decoder.feed(data):
                        if isinstance(item, Rejected):
                            self.m._violation(self.key, f"bad frame: {item.error}", item.raw)
                            self.m._trace("up", item.raw)
                            continue
                        self._received(item)
                await self.writer.drain()
                data = await self.reader.read(65536)
                if not data:
                    return
        except (ConnectionError, ssl.SSLError) as exc:
            log.info("master: terminal %s at %s dropped: %s", self.key, self.peer, exc)

    def _received(self, f: g.Frame13761) -> None:
        raw = g.encode(f)
        self.m._trace("up", raw)
        self.m.frames_received += 1
        problems = self._check(f)
        for p in problems:
            self.m._violation(self.key or str(f.address), p, raw)
        if not f.control.uplink:
            return
        if f.control.prm:
            self._initiated(f, raw)
        elif self.waiting is not None:
            self.waiting[1].put_nowait(f)
        else:
            self.m._violation(self.key, f"unsolicited answer AFN{f.afn:02X} seq {f.seq.seq}",
                              raw)

    # --- strict checks ------------------------------------------------------------------------

    def _check(self, f: g.Frame13761) -> list[str]:
        out: list[str] = []
        if not f.control.uplink:
            out.append("DIR = 0 on a frame sent by a terminal")
            return out
        if f.address.group:
            out.append("a terminal sent a group address")
        if self.address is None and not (f.afn == 0x02 and f.control.prm):
            out.append(f"AFN{f.afn:02X} before login")
        if self.address is not None and (f.address.district, f.address.terminal) != (
                self.address.district, self.address.terminal):
            out.append(f"address {f.address} differs from the logged-in {self.address}")
        try:
            items = g.decode_units(f)
        except CodecError as exc:
            out.append(f"data units do not decode: {exc}")
            items = []
        for it in items:
            if isinstance(it.value, g.RawUnit):
                out.append(f"AFN{f.afn:02X} F{it.fn} has no layout (unknown Fn)")
        if f.control.prm:
            if self.last_pseq is not None and f.seq.seq not in (self.last_pseq,
                                                                (self.last_pseq + 1) % 16):
                out.append(f"PSEQ {f.seq.seq} does not follow {self.last_pseq}")
            self.last_pseq = f.seq.seq
            if f.afn == 0x02:
                if not f.seq.con or not (f.seq.fir and f.seq.fin):
                    out.append("login/heartbeat needs SEQ FIR = FIN = CON = 1")
                if [u.fns for u in f.units] not in ([(1,)], [(2,)], [(3,)]) or any(
                        u.pns != (0,) for u in f.units):
                    out.append("AFN02 must carry exactly one p0 F1/F2/F3 unit")
                if f.address.msa != 0:
                    out.append("a terminal-initiated frame must carry MSA 0")
            elif f.afn in (0x0C, 0x0D, 0x0E):
                if f.seq.fir and self.msg_open:
                    out.append("FIR = 1 while a multi-frame message is still open")
                if not f.seq.fir and not self.msg_open:
                    out.append("FIR = 0 without a first frame")
                self.msg_open = not f.seq.fin
            else:
                out.append(f"AFN{f.afn:02X} is not a terminal-initiated AFN")
        else:
            if self.waiting is None:
                return out
            req, q = self.waiting
            expect = (req.seq.seq + q.qsize() + self._got) % 16
            if f.seq.seq != expect:
                out.append(f"RSEQ {f.seq.seq}, expected {expect}")
            if f.afn not in (0x00, req.afn):
                out.append(f"answer AFN{f.afn:02X} to a request AFN{req.afn:02X}")
            if f.address.msa != req.address.msa:
                out.append(f"answer MSA {f.address.msa}, request had {req.address.msa}")
            if req.tp is not None and f.tp != req.tp:
                out.append("the answer does not copy the request's Tp")
        return out

    _got = 0
    last_request: g.Frame13761 | None = None

    # --- terminal-initiated frames ------------------------------------------------------------

    def _initiated(self, f: g.Frame13761, raw: bytes) -> None:
        m = self.m
        if f.afn == 0x02:
            fn = f.units[0].fns[0] if f.units else 0
            if fn == 1:
                if self.address is None or terminal_key(self.address) != terminal_key(f.address):
                    self.address = f.address
                    m._register(self)
                m._count(self.key, "logins")
                log.info("master: terminal %s logged in from %s", self.key, self.peer)
            elif fn == 3:
                m._count(self.key, "heartbeats")
            elif fn == 2:
                log.info("master: terminal %s logged out", self.key)
            if self.address is not None and f.seq.con and not m.silent:
                self.send(g.confirm(f, table=m.functions))
                if fn == 1:
                    m._login_event(self.key)
            return
        if self.address is None:
            return
        try:
            items, losses = ob.parse_upload(f)
        except CodecError as exc:
            m._violation(self.key, f"upload does not decode: {exc}", raw)
            if f.seq.con and not m.silent:
                self.send(g.deny(f, table=m.functions))
            return
        if m.deny_uploads:
            if f.seq.con and not m.silent:
                self.send(g.deny(f, table=m.functions))
            return
        m._store_upload(self.key or "", items, losses)
        if f.seq.con and not m.silent and not m.drop_upload_confirms:
            self.send(g.confirm(f, table=m.functions))

    async def request(self, afn: int, units: Sequence[g.DataUnit], *, tp_delay: int | None,
                      tp_age: timedelta, timeout: float, msa: int,
                      prepare: Callable[[g.Frame13761], g.Frame13761] | None = None,
                      resend: g.Frame13761 | None = None) -> list[g.Frame13761]:
        if self.address is None:
            raise MasterError("terminal has not logged in")
        async with self.request_lock:
            if resend is not None:
                req = resend            # the exact frame again (a replay, for tests)
            else:
                key = self.m.keys.terminal_key(self.address.district, self.address.terminal) \
                    if self.m.keys is not None else None
                signing = key is not None and afn in sec.SIGNED_AFNS
                if signing and tp_delay is None:
                    tp_delay = self.m.sign_tp_delay     # a signed command needs a Tp
                tp = None
                if tp_delay is not None:
                    now = self.m.clock.now() - tp_age
                    tp = g.Tp(self.m._next_pfc(self.key or ""),
                              g.DayTime(now.day, now.hour, now.minute, now.second), tp_delay)
                addr = g.Address(self.address.district, self.address.terminal, msa)
                req = g.request(addr, afn, units, self.master_pseq, tp=tp,
                                table=self.m.functions)
                self.master_pseq = (self.master_pseq + 1) % 16
                if signing and key is not None:
                    req = sec.sign(req, key)
                if prepare is not None:
                    req = prepare(req)   # tests: alter the signed frame as an attacker would
            self.last_request = req
            q: asyncio.Queue[g.Frame13761] = asyncio.Queue()
            self.waiting, self._got = (req, q), 0
            try:
                self.send(req)
                await self.writer.drain()
                out: list[g.Frame13761] = []
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout
                while True:
                    try:
                        f = await asyncio.wait_for(q.get(), max(0.0, deadline - loop.time()))
                    except TimeoutError:
                        raise MasterError(f"terminal {self.key}: no answer to AFN{afn:02X} "
                                          f"within {timeout} s") from None
                    self._got += 1
                    out.append(f)
                    if f.seq.fin or f.afn == 0x00:
                        return out
            finally:
                self.waiting, self._got = None, 0


class MasterStation:
    """The master station: ``await start()``, talk to terminals, ``await stop()``."""

    def __init__(self, db: str | Path, *, trace: str | Path | None = None,
                 ssl_context: ssl.SSLContext | None = None, clock: Clock | None = None,
                 functions: g.FunctionTable = g.DEFAULT_FUNCTIONS, msa: int = 1,
                 keys: KeyStore | None = None, sign_tp_delay: int = 5) -> None:
        self.db_path = Path(db)
        self.db = sqlite3.connect(str(self.db_path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.clock = clock or SystemClock()
        self.functions = functions
        self.msa = msa
        self.keys = keys                    # per-terminal MAC keys; None = send unsigned
        self.sign_tp_delay = sign_tp_delay  # Tp delay (minutes) on signed commands
        self.ssl_context = ssl_context
        self._trace_file: TextIO | None = open(trace, "a") if trace else None  # noqa: SIM115
        self.conns: dict[str, _Conn] = {}
        self.violations: list[tuple[str | None, str, str]] = []
        self.frames_received = 0
        self.silent = False                  # confirm nothing (a hung master)
        self.drop_upload_confirms = False    # confirm logins/heartbeats but not uploads
        self.deny_uploads = False            # answer uploads with AFN00 F2
        self._servers: list[asyncio.base_events.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._login_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self.port: int | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen for terminals (and control lines on plain TCP); returns the port."""
        server = await asyncio.start_server(self._accept, host, port, ssl=self.ssl_context)
        self._servers.append(server)
        self.port = server.sockets[0].getsockname()[1]
        log.info("master: listening on %s:%d%s", host, self.port,
                 " (TLS)" if self.ssl_context else "")
        return self.port

    async def start_control(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """A plain JSON-lines control listener (needed when the main port is TLS)."""
        server = await asyncio.start_server(self._accept_control, host, port)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listeners and every connection (the database stays for a restart)."""
        for s in self._servers:
            s.close()
        for w in list(self._writers):
            w.close()
        # Closing the transports ends each handler; cancelling them at once would make
        # asyncio's stream callback log the CancelledError as an error.
        if self._tasks:
            _, left = await asyncio.wait(list(self._tasks), timeout=2.0)
            for t in left:
                t.cancel()
        for s in self._servers:
            with contextlib.suppress(Exception):
                await s.wait_closed()
        self._servers.clear()
        self.conns.clear()

    def disconnect(self, terminal: str) -> bool:
        """Drop a terminal's connection (it will reconnect); False if it is not connected."""
        conn = self.conns.get(terminal)
        if conn is None:
            return False
        conn.writer.close()
        return True

    def close(self) -> None:
        self.db.close()
        if self._trace_file:
            self._trace_file.close()
            self._trace_file = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            first = await reader.read(65536)
            if first.startswith(b"{"):
                await self._control_session(reader, writer, first)
                return
            conn = _Conn(self, reader, writer, first)
            try:
                await conn.run()
            finally:
                if conn.key and self.conns.get(conn.key) is conn:
                    del self.conns[conn.key]
                    log.info("master: terminal %s disconnected", conn.key)
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("master: connection failed: %s", exc)
        finally:
            writer.close()
            self._tasks.discard(task)
            self._writers.discard(writer)

    async def _accept_control(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        try:
            await self._control_session(reader, writer, b"")
        finally:
            writer.close()

    # --- bookkeeping ----------------------------------------------------------------------------

    def _trace(self, direction: str, raw: bytes) -> None:
        if self._trace_file:
            self._trace_file.write(f"{self.clock.now().isoformat(timespec='milliseconds')} "
                                   f"{direction} {raw.hex()}\n")
            self._trace_file.flush()

    def _violation(self, terminal: str | None, message: str, raw: bytes) -> None:
        log.warning("master: terminal %s violation: %s (%s)", terminal, message, raw.hex())
        self.violations.append((terminal, message, raw.hex()))
        self.db.execute("INSERT INTO violations (terminal, time, message, frame) VALUES (?,?,?,?)",
                        (terminal, self.clock.now().isoformat(), message, raw.hex()))

    def _register(self, conn: _Conn) -> None:
        key = conn.key
        assert key is not None
        old = self.conns.get(key)
        if old is not None and old is not conn:
            log.info("master: terminal %s logged in again on a new connection", key)
            old.writer.close()
        self.conns[key] = conn

    def _count(self, key: str | None, what: str) -> None:
        self.db.execute("INSERT INTO terminals (terminal) VALUES (?) ON CONFLICT DO NOTHING",
                        (key,))
        self.db.execute(f"UPDATE terminals SET {what} = {what} + 1, last_seen = ? "
                        "WHERE terminal = ?", (self.clock.now().isoformat(), key))

    def _next_pfc(self, terminal: str) -> int:
        """The next Tp PFC for ``terminal``: counts up mod 256 and survives restarts, so the
        terminal's replay guard sees every new command as newer than the last."""
        row = self.db.execute("SELECT pfc FROM pfc WHERE terminal = ?", (terminal,)).fetchone()
        pfc = 0 if row is None else (row[0] + 1) % 256
        self.db.execute("INSERT OR REPLACE INTO pfc (terminal, pfc) VALUES (?, ?)",
                        (terminal, pfc))
        return pfc

    def _login_event(self, key: str | None) -> None:
        for fut in self._login_waiters.pop(key or "", []):
            if not fut.done():
                fut.set_result(None)

    def _store_upload(self, key: str, items: list[ob.ParsedItem],
                      losses: list[ob.LineLossUnit]) -> None:
        now = self.clock.now().isoformat()
        parts: dict[int, int] = {}
        self.db.execute("BEGIN")
        for it in items:
            part = parts.get(it.seq, 0)
            parts[it.seq] = part + 1
            value = _event_json(it.value) if isinstance(it.value, g.EventReply) else jsonable(
                it.value)
            self.db.execute(
                "INSERT INTO uploads (terminal, seq, part, meter, pn, afn, fn, readings, value,"
                " received) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (terminal, seq, part)"
                " DO UPDATE SET copies = copies + 1",
                (key, it.seq, part, it.meter, it.pn, it.afn, it.fn, _readings(it.value),
                 json.dumps(value, sort_keys=True), now))
        for ll in losses:
            self.db.execute("INSERT OR REPLACE INTO line_loss VALUES (?,?,?,?)",
                            (key, ll.day.isoformat(), json.dumps(jsonable(ll)), now))
        self.db.execute("COMMIT")

    # --- queries (tests, bench, master-cmd) -----------------------------------------------------

    def uploads(self, terminal: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT terminal, seq, part, meter, pn, afn, fn, readings, value, copies FROM uploads"
        args: tuple[Any, ...] = ()
        if terminal:
            sql += " WHERE terminal = ?"
            args = (terminal,)
        cols = ("terminal", "seq", "part", "meter", "pn", "afn", "fn", "readings", "value",
                "copies")
        return [dict(zip(cols, r[:8] + (json.loads(r[8]), r[9]), strict=True))
                for r in self.db.execute(sql + " ORDER BY terminal, seq, part", args)]

    def upload_summary(self) -> dict[str, Any]:
        rows, readings, copies = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(readings), 0), COALESCE(SUM(copies), 0) FROM uploads"
        ).fetchone()
        return {"items": rows, "readings": readings, "copies_received": copies,
                "line_loss_days": self.db.execute("SELECT COUNT(*) FROM line_loss").fetchone()[0],
                "violations": self.db.execute("SELECT COUNT(*) FROM violations").fetchone()[0],
                "connected": sorted(self.conns)}

    def line_losses(self) -> list[dict[str, Any]]:
        return [{"terminal": t, **json.loads(v)}
                for t, v in self.db.execute("SELECT terminal, value FROM line_loss")]

    def terminal_stats(self, terminal: str) -> dict[str, int]:
        r = self.db.execute("SELECT logins, heartbeats FROM terminals WHERE terminal = ?",
                            (terminal,)).fetchone()
        return {"logins": r[0], "heartbeats": r[1]} if r else {"logins": 0, "heartbeats": 0}

    async def wait_login(self, terminal: str, timeout: float = 10.0) -> None:
        """Wait until ``terminal`` ("4403:1") logs in (again)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._login_waiters.setdefault(terminal, []).append(fut)
        await asyncio.wait_for(fut, timeout)

    # --- requests to terminals ------------------------------------------------------------------

    async def request(self, terminal: str, afn: int, units: Sequence[g.DataUnit], *,
                      tp_delay: int | None = None, tp_age: timedelta = timedelta(0),
                      timeout: float = 10.0,
                      prepare: Callable[[g.Frame13761], g.Frame13761] | None = None,
                      resend: g.Frame13761 | None = None) -> list[g.Frame13761]:
        """Send a request; the answer frames (several for a multi-frame answer).

        ``tp_delay`` adds a Tp with that allowed delay (minutes), sent ``tp_age`` ago (signed
        commands always get one). ``prepare`` changes the built (signed) frame before it is
        sent and ``resend`` sends an earlier frame byte for byte: attacks, for tests."""
        conn = self.conns.get(terminal)
        if conn is None:
            raise MasterError(f"terminal {terminal} is not connected")
        return await conn.request(afn, units, tp_delay=tp_delay, tp_age=tp_age,
                                  timeout=timeout, msa=self.msa, prepare=prepare,
                                  resend=resend)

    def last_request(self, terminal: str) -> g.Frame13761 | None:
        """The last request frame sent to ``terminal`` on its current connection."""
        conn = self.conns.get(terminal)
        return None if conn is None else conn.last_request

    async def ask(self, terminal: str, afn: int, units: Sequence[g.DataUnit], **kw: Any
                  ) -> list[g.DecodedUnit]:
        """``request`` and decode: the items of the answer; MasterError on a deny."""
        frames = await self.request(terminal, afn, units, **kw)
        items = [it for f in frames for it in g.decode_units(f)]
        if frames[0].afn == 0x00:
            if any(it.fn == 2 for it in items):
                raise MasterError(f"terminal {terminal} denied AFN{afn:02X}")
        return items

    async def read_clock(self, terminal: str) -> datetime | None:
        items = await self.ask(terminal, 0x0C, [g.unit(0, 2)])
        return items[0].value.time

    async def read_energy(self, terminal: str, pn: int) -> g.ForwardEnergy:
        return (await self.ask(terminal, 0x0C, [g.unit(pn, 129)]))[0].value

    async def read_daily(self, terminal: str, pn: int, day: date) -> g.DailyForwardEnergy:
        return (await self.ask(terminal, 0x0D, [g.unit(pn, 161, g.DayRequest(day))]))[0].value

    async def set_archive(self, terminal: str, records: Sequence[g.MeterRecord]) -> bool:
        items = await self.ask(terminal, 0x04, [g.unit(0, 10, g.MeterArchive(tuple(records)))])
        return items[0].fn == 1

    async def query_archive(self, terminal: str, devices: Sequence[int]
                            ) -> list[g.MeterRecord]:
        items = await self.ask(terminal, 0x0A, [g.unit(0, 10, g.ArchiveQuery(tuple(devices)))])
        return [r for it in items for r in it.value.records]

    async def forward(self, terminal: str, payload: bytes, *, port: int = 31,
                      timeout_s: int = 10) -> bytes:
        fwd = g.TransparentForward(port, payload, frame_timeout=0x80 | min(timeout_s, 127))
        items = await self.ask(terminal, 0x10, [g.unit(0, 1, fwd)], timeout=timeout_s + 5.0)
        return items[0].value.payload

    async def set_time(self, terminal: str, when: datetime) -> bool:
        items = await self.ask(terminal, 0x05, [g.unit(0, 31, g.TerminalClock(when))])
        return items[0].fn == 1

    async def events(self, terminal: str, important: bool, pm: int, pn: int) -> g.EventReply:
        items = await self.ask(terminal, 0x0E, [g.unit(0, 1 if important else 2,
                                                       g.EventRequest(pm, pn))])
        return items[0].value

    async def reset(self, terminal: str, kind: int) -> bool:
        items = await self.ask(terminal, 0x01, [g.unit(0, kind)])
        return items[0].fn == 1

    async def version(self, terminal: str) -> g.TerminalVersion:
        return (await self.ask(terminal, 0x09, [g.unit(0, 1)]))[0].value

    # --- prepayment (docs/prepayment.md, "Master station (Q/GDW 1376.1)") ----------------------

    async def command(self, terminal: str, afn: int, units: Sequence[g.DataUnit], **kw: Any
                      ) -> bool:
        """Send a (signed) command; True if the terminal confirmed all of it (AFN00 F1, or F3
        with every item correct), False if it denied any part (F2 or an F3 error)."""
        frames = await self.request(terminal, afn, units, **kw)
        items = [it for f in frames for it in g.decode_units(f)]
        if frames[0].afn != 0x00:
            raise MasterError(f"terminal {terminal} answered AFN{afn:02X} with "
                              f"AFN{frames[0].afn:02X}, not a confirmation")
        for it in items:
            if it.fn == 1:
                return True
            if it.fn == 3 and isinstance(it.value, g.PerItemAck):
                return all(i.ok for i in it.value.items)
        return False

    async def purchase(self, terminal: str, pn: int, order_no: int, amount: Decimal, *,
                       replace: bool = False, alarm: Decimal | None = None,
                       trip: Decimal | None = None) -> bool:
        """AFN04 F47 purchase for the meter at measuring point ``pn`` (money in yuan).
        True: applied, or a repeat of an order already applied (credited once)."""
        params = g.PurchaseParams(order_no, Decimal(amount), replace, alarm, trip)
        return await self.command(terminal, 0x04, [g.unit(pn, 47, params)])

    async def balance(self, terminal: str, pn: int) -> Decimal:
        """AFN0C F23: the meter's remaining credit (yuan). MasterError if it is not prepaid."""
        value = (await self.ask(terminal, 0x0C, [g.unit(pn, 23)]))[0].value
        if value.balance is None:
            raise MasterError(f"terminal {terminal} has no credit for p{pn}")
        return value.balance

    async def last_purchase(self, terminal: str, pn: int) -> g.PurchaseParams:
        """AFN0A F47: the parameters of the meter's last purchase."""
        return (await self.ask(terminal, 0x0A, [g.unit(pn, 47)]))[0].value

    async def purchase_history(self, terminal: str, pn: int, count: int = 20
                               ) -> list[g.PurchaseEntry]:
        """AFN0A F2044 [private]: the meter's last ``count`` purchases, newest first."""
        items = await self.ask(terminal, 0x0A, [g.unit(pn, g.FN_PURCHASE_HISTORY,
                                                       g.HistoryRequest(count))])
        return list(items[0].value.entries)

    async def protect(self, terminal: str, on: bool, minutes: int = 0, *, pn: int = 0) -> bool:
        """AFN05 F25 (on; ``minutes`` rounded up to half hours, 0 = until cancelled) or F33
        (off). pn 0 = every prepaid meter of the terminal, else the meter at that point."""
        if not on:
            return await self.command(terminal, 0x05, [g.unit(pn, 33)])
        half_hours = -(-minutes // 30)
        if not 0 <= half_hours <= 255:
            raise ValueError(f"protect for {minutes} min does not fit 255 half hours")
        return await self.command(terminal, 0x05, [g.unit(pn, 25, g.ProtectOn(half_hours))])

    async def control_meter(self, terminal: str, meter: int | str, action: str) -> bool:
        """AFN10 F2043 [private]: trip or close one meter now, named by its measuring point
        (int) or its address (str). True when the terminal queued it (outcome: ERC5)."""
        code = {"trip": g.METER_TRIP, "close": g.METER_CLOSE}.get(action)
        if code is None:
            raise ValueError(f"action {action!r} is not trip or close")
        if isinstance(meter, int):
            u = g.unit(meter, g.FN_METER_CONTROL, g.MeterControl(None, code))
        else:
            u = g.unit(0, g.FN_METER_CONTROL, g.MeterControl(meter, code))
        return await self.command(terminal, 0x10, [u])

    # --- control protocol -----------------------------------------------------------------------

    async def _control_session(self, reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter, first: bytes) -> None:
        buf = first
        while True:
            while b"\n" not in buf:
                more = await reader.read(65536)
                if not more:
                    return
                buf += more
            line, _, buf = buf.partition(b"\n")
            try:
                reply = {"ok": True, "result": jsonable(await self.control(json.loads(line)))}
            except (MasterError, ValueError, KeyError, TypeError, CodecError,
                    TimeoutError, ArithmeticError) as exc:     # ArithmeticError: bad Decimal
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()

    async def control(self, cmd: dict[str, Any]) -> Any:
        """Run one control command (the JSON object ``master-cmd`` sends)."""
        op = cmd["cmd"]
        if op == "status":
            return self.upload_summary()
        if op == "violations":
            return [{"terminal": t, "message": m, "frame": f} for t, m, f in self.violations]
        t = cmd["terminal"]
        if op == "time":
            if cmd.get("set"):
                return await self.set_time(t, datetime.fromisoformat(cmd["set"]))
            return await self.read_clock(t)
        if op == "read":
            if cmd.get("day"):
                return await self.read_daily(t, int(cmd["pn"]), date.fromisoformat(cmd["day"]))
            return await self.read_energy(t, int(cmd["pn"]))
        if op == "set-archive":
            recs = [g.MeterRecord(int(r["device"]), int(r["pn"]), r["address"],
                                  int(r.get("protocol", 30))) for r in cmd["records"]]
            return await self.set_archive(t, recs)
        if op == "archive":
            return await self.query_archive(t, [int(n) for n in cmd["devices"]])
        if op == "forward":
            return await self.forward(t, bytes.fromhex(cmd["frame"]),
                                      timeout_s=int(cmd.get("timeout", 10)))
        if op == "events":
            return await self.events(t, bool(cmd.get("important")), int(cmd.get("pm", 0)),
                                     int(cmd.get("pn", 0)))
        if op == "reset":
            return await self.reset(t, int(cmd["kind"]))
        if op == "version":
            return await self.version(t)
        if op == "purchase":
            return await self.purchase(
                t, int(cmd["pn"]), int(cmd["order"]), Decimal(str(cmd["amount"])),
                replace=bool(cmd.get("replace")),
                alarm=None if cmd.get("alarm") is None else Decimal(str(cmd["alarm"])),
                trip=None if cmd.get("trip") is None else Decimal(str(cmd["trip"])))
        if op == "balance":
            return await self.balance(t, int(cmd["pn"]))
        if op == "purchases":
            if cmd.get("last"):
                return await self.last_purchase(t, int(cmd["pn"]))
            return await self.purchase_history(t, int(cmd["pn"]), int(cmd.get("count", 20)))
        if op == "protect":
            return await self.protect(t, bool(cmd.get("on", True)), int(cmd.get("minutes", 0)),
                                      pn=int(cmd.get("pn", 0)))
        if op == "control-meter":
            target = cmd.get("meter")
            return await self.control_meter(t, str(target) if target else int(cmd["pn"]),
                                            cmd["action"])
        if op == "raw":
            frames = await self.request(t, int(cmd["afn"]), [g.DataUnit(
                tuple(cmd.get("pns", [0])), tuple(cmd["fns"]), bytes.fromhex(cmd.get("data", "")))])
            return [g.to_dict(f) for f in frames]
        raise ValueError(f"unknown command {op!r}")
