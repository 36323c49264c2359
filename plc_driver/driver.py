"""Async driver of the local carrier/RF module (CCO) over Q/GDW 1376.2.

``ModuleDriver`` owns one ``ByteLink`` and the 1376.2 message sequence numbers (R6). A reader
task feeds the stream decoder; every uplink reply is matched to its request by R6 (and, for
AFN13 reads, by the meter address in the A field), so up to ``max_concurrent`` reads can be in
flight at once. Module-initiated frames (AFN06 reports, AFN14 requests) go to an asyncio queue
read with ``reports()``; AFN06 reports are confirmed with AFN00 F1 automatically.

Errors callers see:

* ``LinkClosed`` (from ``plc_driver.link``): the serial port closed or vanished. Every waiting
  call gets it, ``reports()`` ends, and later calls raise it at once.
* ``ModuleTimeout``, ``ModuleDenied`` (with the AFN00 F2 code) and ``ModuleProtocolError`` for
  the archive/route commands; ``ModuleArchiveFull`` (a ``ModuleDenied``) when an AFN11 F1 add
  is refused and the module's slave count (10 F1) shows its archive full. ``read()`` does not raise these: a read that fails is an
  ``ExchangeResult`` with a ``failure`` reason, because the mesh learns from every outcome.

All timeouts are asyncio timeouts, so the driver runs unchanged under the virtual-time loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from concentrator.clock import Clock
from concentrator.codec import CodecError, DataUnitError, Rejected
from plc_driver import gdw13762 as g
from plc_driver.link import ByteLink, LinkClosed

__all__ = [
    "ModuleDriver",
    "ExchangeResult",
    "ReadFailure",
    "ModuleReport",
    "ModuleInfo",
    "ModuleError",
    "ModuleTimeout",
    "ModuleDenied",
    "ModuleArchiveFull",
    "ModuleProtocolError",
    "LinkClosed",
]

log = logging.getLogger(__name__)

DEFAULT_READ_TIMEOUT = 90.0  # s; a safety net above the module's own monitor timeout
READ_TIMEOUT_MARGIN = 10.0  # s added to the module's reported monitor timeout (03 F10)
DEFAULT_COMMAND_TIMEOUT = 5.0  # s for commands the module answers itself
SLAVES_PER_FRAME = 16  # archive entries per 11 F1 / 11 F2 frame


class ModuleError(Exception):
    """The module did not do what a command asked."""


class ModuleTimeout(ModuleError):
    """No reply within the timeout."""


class ModuleDenied(ModuleError):
    """The module answered AFN00 F2 deny."""

    def __init__(self, code: int, what: str = "") -> None:
        self.code = code
        self.reason = g.DENY_CODES.get(code, f"unknown error {code}")
        super().__init__(f"{what}: denied, error {code} ({self.reason})" if what else self.reason)


class ModuleArchiveFull(ModuleDenied):
    """AFN11 F1 refused because the slave archive holds all the slaves the module supports
    (``count`` of ``capacity``); ``refused`` are the addresses of that add not confirmed."""

    def __init__(self, code: int, count: int, capacity: int, refused: tuple[str, ...]) -> None:
        super().__init__(code, f"AFN11 F1 (slave archive full, {count} of {capacity})")
        self.count = count
        self.capacity = capacity
        self.refused = refused


class ModuleProtocolError(ModuleError):
    """The module's answer did not fit the request."""


class ReadFailure(StrEnum):
    TIMEOUT = "timeout"  # no answer within the driver's timeout
    DENIED = "denied"  # AFN00 F2; see ExchangeResult.deny_code (11 = slave did not answer)
    BAD_REPLY = "bad-reply"  # an answer that is not a usable 13 F1 reply


@dataclass(frozen=True, slots=True)
class ExchangeResult:
    """Outcome of one AFN13 F1 read through the module."""

    address: str
    relays: tuple[str, ...]
    seq: int
    elapsed: float  # seconds from sending the request to its answer (or timeout)
    reply: bytes | None = None  # the meter's DL/T 645 reply frame
    failure: ReadFailure | None = None
    deny_code: int | None = None
    cmd_quality: int | None = None  # R4 D0-D3: quality of the last hop, command direction
    reply_quality: int | None = None  # R4 D4-D7: quality of the last hop, reply direction
    phase: int | None = None
    duration_s: int | None = None  # the module's own "local comm uplink duration"

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def deny_reason(self) -> str | None:
        if self.deny_code is None:
            return None
        return g.DENY_CODES.get(self.deny_code, f"unknown error {self.deny_code}")


@dataclass(frozen=True, slots=True)
class ModuleReport:
    """A frame the module sent on its own (AFN06 report, AFN14 request), decoded."""

    frame: g.Frame13762
    unit: Any  # typed data unit, or RawUnit when untyped or undecodable
    received: float  # loop time

    @property
    def node(self) -> str | None:
        """Address the report is about: the A-field source, or the first node in the unit."""
        if self.frame.source is not None:
            return self.frame.source
        nodes = getattr(self.unit, "nodes", ())
        return nodes[0].address if nodes else getattr(self.unit, "address", None)


@dataclass(frozen=True, slots=True)
class ModuleInfo:
    """What ``query_info()`` learnt; a part the module denies is None (2009 modules lack 03 F10)."""

    vendor: g.VendorVersion | None
    master_address: str | None
    run_info: g.ModuleRunInfo | None


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[g.Frame13762]
    afn: int
    target: str | None  # the slave the request is for; its reply must come from it


class ModuleDriver:
    """Talks to one carrier/RF module over a ``ByteLink``."""

    def __init__(
        self,
        link: ByteLink,
        *,
        comm_mode: int,
        cco_address: str | None = None,
        max_concurrent: int | None = None,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        read_timeout: float | None = None,
        clock: Clock | None = None,
        report_queue_size: int = 1024,
    ) -> None:
        self.link = link
        self.comm_mode = comm_mode
        self.cco_address = cco_address
        self.command_timeout = command_timeout
        self.info: ModuleInfo | None = None
        self._fixed_concurrency = max_concurrent
        self._fixed_read_timeout = read_timeout
        self.max_concurrent = max_concurrent or 1
        self.read_timeout = read_timeout or DEFAULT_READ_TIMEOUT
        self._clock = clock  # when given, 14 F2 clock requests are answered automatically
        self._slots = asyncio.Semaphore(self.max_concurrent)
        self._command_lock = asyncio.Lock()
        self._pending: dict[int, _Pending] = {}
        self._next_seq = 0
        self._decoder = g.Gdw13762StreamDecoder()
        self._reports: asyncio.Queue[ModuleReport | None] = asyncio.Queue(report_queue_size)
        self._reader: asyncio.Task[None] | None = None
        self._closed: LinkClosed | None = None

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> ModuleInfo | None:
        """Start reading; ask the module who it is (03 F1/F4/F10) and size concurrency.

        With ``cco_address`` given and the module holding another master address, the
        driver sets it (05 F1). A module that does not answer is logged, not fatal.
        """
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop(), name="module-reader")
        try:
            info = await self.query_info()
        except (ModuleError, LinkClosed) as exc:
            log.warning("module: no module information at start (%s); using defaults", exc)
            if isinstance(exc, LinkClosed):
                raise
            return None
        if self.cco_address is None:
            self.cco_address = info.master_address
        elif info.master_address != self.cco_address:
            log.info(
                "module: master address %s, setting %s", info.master_address, self.cco_address
            )
            await self.set_master_address(self.cco_address)
        return info

    async def close(self) -> None:
        """Stop the reader, close the link, fail waiting calls with ``LinkClosed``."""
        self._shut(LinkClosed("driver closed"))
        self.link.close()
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _shut(self, exc: LinkClosed) -> None:
        if self._closed is not None:
            return
        self._closed = exc
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._put_report(None)

    # --- receiving --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            try:
                chunk = await self.link.read()
            except LinkClosed as exc:
                if self._closed is None:
                    log.error("module: link closed: %s", exc)
                self._shut(exc)
                return
            for item in self._decoder.feed(chunk):
                if isinstance(item, Rejected):
                    log.warning("module: rejected %s: %s", item.raw.hex(" ").upper(), item.error)
                else:
                    try:
                        self._dispatch(item)
                    except Exception:  # one bad frame must not stop the reader
                        log.exception("module: failed to handle AFN%02X F%d seq %d",
                                      item.afn, item.fn, item.seq)

    def _dispatch(self, frame: g.Frame13762) -> None:
        if frame.direction != g.UP:
            log.warning("module: downlink frame AFN%02X F%d received, ignored", frame.afn, frame.fn)
            return
        if frame.afn in (0x06, 0x14):
            self._on_report(frame)
            return
        pending = self._pending.get(frame.seq)
        if pending is None:
            if frame.prm == 1:
                self._on_report(frame)
            else:
                log.warning(
                    "module: reply AFN%02X F%d seq %d node %s matches no request",
                    frame.afn, frame.fn, frame.seq, frame.source,
                )
            return
        if frame.afn not in (0x00, pending.afn) or (
            pending.target is not None and frame.source not in (None, pending.target)
        ):
            # A late answer to an earlier request whose seq was reused: not ours.
            log.warning(
                "module: reply AFN%02X F%d seq %d node %s does not fit the request "
                "AFN%02X to %s, ignored",
                frame.afn, frame.fn, frame.seq, frame.source, pending.afn, pending.target,
            )
            return
        if not pending.future.done():
            pending.future.set_result(frame)

    def _on_report(self, frame: g.Frame13762) -> None:
        try:
            unit = g.decode_data_unit(frame)
        except DataUnitError as exc:
            log.warning("module: report AFN%02X F%d seq %d undecodable: %s",
                        frame.afn, frame.fn, frame.seq, exc)
            unit = g.RawUnit(frame.afn, frame.fn, frame.data)
        loop = asyncio.get_running_loop()
        report = ModuleReport(frame, unit, loop.time())
        log.info("module: report AFN%02X F%d seq %d node %s", frame.afn, frame.fn, frame.seq,
                 report.node)
        if frame.afn == 0x06:
            self._send(g.confirm(frame.seq, self.comm_mode, direction=g.DOWN), quiet=True)
        elif frame.afn == 0x14 and frame.fn == 2 and self._clock is not None:
            self.respond(report, g.ClockAnswer(self._clock.now().replace(microsecond=0)))
            return
        self._put_report(report)

    def _put_report(self, report: ModuleReport | None) -> None:
        if self._reports.full():
            dropped = self._reports.get_nowait()
            if dropped is not None:
                log.warning("module: report queue full, dropped AFN%02X F%d node %s",
                            dropped.frame.afn, dropped.frame.fn, dropped.node)
        self._reports.put_nowait(report)

    async def reports(self) -> AsyncIterator[ModuleReport]:
        """Module-initiated reports in arrival order; ends when the link closes."""
        while True:
            report = await self._reports.get()
            if report is None:
                self._put_report(None)  # let any other consumer end too
                return
            yield report

    def respond(self, report: ModuleReport, unit: g.DataUnit | bytes) -> None:
        """Answer a module request (e.g. AFN14) with a data unit, same AFN/Fn and seq."""
        f = report.frame
        self._send(g.request(f.afn, f.fn, f.seq, self.comm_mode, unit, prm=0))

    # --- sending ----------------------------------------------------------------------

    def _send(self, frame: g.Frame13762, quiet: bool = False) -> None:
        if self._closed is not None:
            if quiet:
                return
            raise self._closed
        try:
            self.link.write(g.encode(frame))
        except LinkClosed as exc:
            self._shut(exc)
            if not quiet:
                raise

    def _alloc_seq(self) -> int:
        for _ in range(256):
            seq = self._next_seq
            self._next_seq = (seq + 1) % 256
            if seq not in self._pending:
                return seq
        raise ModuleError("all 256 sequence numbers are in flight")

    async def _transact(
        self,
        build: Callable[[int], g.Frame13762],
        timeout: float,
        target: str | None = None,
    ) -> g.Frame13762:
        if self._closed is not None:
            raise self._closed
        seq = self._alloc_seq()
        frame = build(seq)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[g.Frame13762] = loop.create_future()
        self._pending[seq] = _Pending(fut, frame.afn, target)
        timer: asyncio.TimerHandle | None = None
        expired: list[bool] = []
        try:
            self._send(frame)
            # One timer on the answer's future instead of an ``asyncio.timeout`` per request
            # (its context object, rescheduling and task cancellation were a few % of the
            # daemon's CPU in a reading round). The same outcome: the deadline counts from
            # after sending, and an answer that came in the loop step the deadline passed,
            # before this task resumed, is a timeout as it was with ``asyncio.timeout``.
            timer = loop.call_at(loop.time() + timeout, _expire, fut, expired)
            reply = await fut
            if expired:
                raise TimeoutError
            return reply
        except TimeoutError:
            raise ModuleTimeout(
                f"AFN{frame.afn:02X} F{frame.fn} seq {seq}: no answer in {timeout:g} s"
            ) from None
        finally:
            if timer is not None:
                timer.cancel()
            del self._pending[seq]

    async def _command(
        self,
        afn: int,
        fn: int,
        data: g.DataUnit | bytes = b"",
        *,
        timeout: float | None = None,
        **addr: Any,
    ) -> g.Frame13762:
        what = f"AFN{afn:02X} F{fn}"
        async with self._command_lock:
            frame = await self._transact(
                lambda seq: g.request(afn, fn, seq, self.comm_mode, data, **addr),
                timeout or self.command_timeout,
            )
        if frame.afn == 0x00 and frame.fn == 2:
            code = _deny_code(frame)
            log.warning("module: %s denied: error %s", what, code)
            raise ModuleDenied(code, what)
        return frame

    async def _confirmed(self, afn: int, fn: int, data: g.DataUnit | bytes = b"",
                         **kw: Any) -> g.Confirm:
        frame = await self._command(afn, fn, data, **kw)
        if frame.afn != 0x00 or frame.fn != 1:
            raise ModuleProtocolError(
                f"AFN{afn:02X} F{fn}: expected a confirm, got AFN{frame.afn:02X} F{frame.fn}"
            )
        try:
            return g.Confirm.decode(frame.data)
        except DataUnitError as exc:
            raise ModuleProtocolError(f"AFN{afn:02X} F{fn}: {exc}") from exc

    async def _query(self, afn: int, fn: int, data: g.DataUnit | bytes = b"") -> Any:
        frame = await self._command(afn, fn, data)
        if (frame.afn, frame.fn) != (afn, fn):
            raise ModuleProtocolError(
                f"AFN{afn:02X} F{fn}: answered with AFN{frame.afn:02X} F{frame.fn}"
            )
        try:
            return g.decode_data_unit(frame)
        except CodecError as exc:
            raise ModuleProtocolError(f"AFN{afn:02X} F{fn}: {exc}") from exc

    # --- module information and settings ---------------------------------------------

    async def query_info(self) -> ModuleInfo:
        """03 F1 vendor/version, 03 F4 master address, 03 F10 running mode.

        Sizes ``max_concurrent`` and the read timeout from 03 F10 unless fixed by the caller.
        """
        parts: list[Any] = []
        for fn in (1, 4, 10):
            try:
                parts.append(await self._query(0x03, fn))
            except (ModuleDenied, ModuleProtocolError) as exc:
                log.info("module: 03 F%d not available: %s", fn, exc)
                parts.append(None)
        vendor, master, run = parts
        info = ModuleInfo(
            vendor if isinstance(vendor, g.VendorVersion) else None,
            master.address if isinstance(master, g.MasterAddress) else None,
            run if isinstance(run, g.ModuleRunInfo) else None,
        )
        self.info = info
        if info.run_info is not None:
            if self._fixed_concurrency is None:
                self._set_concurrency(info.run_info.max_concurrent)
            if self._fixed_read_timeout is None and info.run_info.monitor_timeout_s:
                self.read_timeout = info.run_info.monitor_timeout_s + READ_TIMEOUT_MARGIN
        log.info(
            "module: vendor %s chip %s, master %s, %d concurrent reads, read timeout %g s",
            vendor.vendor if info.vendor else "?", vendor.chip if info.vendor else "?",
            info.master_address, self.max_concurrent, self.read_timeout,
        )
        return info

    def _set_concurrency(self, n: int) -> None:
        if n != self.max_concurrent:
            # Requests already in flight hold the old semaphore; new ones use the new size.
            self.max_concurrent = n
            self._slots = asyncio.Semaphore(n)

    async def set_master_address(self, address: str) -> None:
        """05 F1: give the module its master-node (CCO) address."""
        await self._confirmed(0x05, 1, g.MasterAddress(address))
        self.cco_address = address
        log.info("module: master address set to %s", address)

    async def add_slaves(self, slaves: Iterable[tuple[str, int]]) -> int:
        """11 F1: add (address, protocol) pairs to the module's archive; returns how many."""
        items = list(slaves)
        for i in range(0, len(items), SLAVES_PER_FRAME):
            batch = tuple(items[i : i + SLAVES_PER_FRAME])
            try:
                await self._confirmed(0x11, 1, g.AddSlaves(batch))
            except ModuleDenied as exc:
                # Error 9 is "master node busy", which a module also answers when its slave
                # archive is full: the slave count tells the two apart (a busy module is
                # worth a retry, a full archive is not until a slave leaves it).
                full = await self._archive_full() if exc.code == 9 else None
                if full is None:
                    raise
                raise ModuleArchiveFull(exc.code, full.count, full.max_supported,
                                        tuple(a for a, _ in items[i:])) from exc
            log.info("module: added slaves %s", " ".join(a for a, _ in batch))
        return len(items)

    async def _archive_full(self) -> g.SlaveCount | None:
        """The slave count (10 F1) when it shows the archive full, else None (also when the
        module does not answer it)."""
        try:
            count = await self.slave_count()
        except ModuleError as exc:
            log.info("module: slave count not available: %s", exc)
            return None
        return count if count.max_supported and count.count >= count.max_supported else None

    async def delete_slaves(self, addresses: Iterable[str]) -> int:
        """11 F2: delete addresses from the module's archive; returns how many."""
        items = list(addresses)
        for i in range(0, len(items), SLAVES_PER_FRAME):
            batch = tuple(items[i : i + SLAVES_PER_FRAME])
            await self._confirmed(0x11, 2, g.DeleteSlaves(batch))
            log.info("module: deleted slaves %s", " ".join(batch))
        return len(items)

    async def slave_count(self) -> g.SlaveCount:
        """10 F1: slaves in the archive and the most the module supports."""
        unit = await self._query(0x10, 1)
        if not isinstance(unit, g.SlaveCount):
            raise ModuleProtocolError("10 F1: no slave count in the answer")
        return unit

    async def slave_addresses(self, page: int = 32) -> list[str]:
        """10 F2, page by page: the addresses in the module's slave archive, in its order."""
        out: list[str] = []
        while True:
            unit = await self._query(0x10, 2, g.SlaveInfoQuery(len(out) + 1, page))
            if not isinstance(unit, g.SlaveInfoList):
                raise ModuleProtocolError("10 F2: no slave list in the answer")
            out += [s.address for s in unit.slaves]
            if not unit.slaves or len(out) >= unit.total:
                return out

    async def start_search(
        self,
        proxy_path: Iterable[str] = (),
        duration_min: int = 10,
        *,
        retries: int = 1,
        slices: int = 8,
    ) -> None:
        """11 F5: start a registration search, from the last node of ``proxy_path`` if given."""
        path = tuple(proxy_path)
        unit = g.SearchStart(None, duration_min, retries, slices)
        addr: dict[str, Any] = {}
        if path:
            addr = {"cco": self._cco(), "relays": path[:-1], "destination": path[-1]}
        await self._confirmed(0x11, 5, unit, **addr)
        log.info("module: search started from %s for %d min",
                 path[-1] if path else "the CCO", duration_min)

    async def stop_search(self) -> None:
        """11 F6: stop the registration search."""
        await self._confirmed(0x11, 6)
        log.info("module: search stopped")

    async def clear_slaves(self) -> None:
        """01 F2 (parameter area init): the module forgets its whole slave archive."""
        await self._confirmed(0x01, 2)
        log.warning("module: slave archive cleared (01 F2)")

    async def restart(self) -> None:
        """12 F1: restart the module's routing work."""
        await self._confirmed(0x12, 1)

    async def pause(self) -> None:
        """12 F2: pause the module's routing work."""
        await self._confirmed(0x12, 2)

    async def resume(self) -> None:
        """12 F3: resume the module's routing work."""
        await self._confirmed(0x12, 3)

    async def broadcast(self, dlt645_bytes: bytes, control: int = 2) -> g.Confirm:
        """05 F3: broadcast a frame (control 0 transparent, 1 645-97, 2 645-07).

        The confirm's ``wait_s`` is how long the module needs to carry it out.
        """
        confirm = await self._confirmed(0x05, 3, g.Broadcast(control, bytes(dlt645_bytes)))
        log.info("module: broadcast %d bytes, module busy %d s", len(dlt645_bytes), confirm.wait_s)
        return confirm

    def _cco(self) -> str:
        if self.cco_address is None:
            raise ModuleError("CCO address unknown: pass cco_address or start() the driver")
        return self.cco_address

    # --- reading ----------------------------------------------------------------------

    async def read(
        self,
        address: str,
        relays: Iterable[str] = (),
        dlt645_bytes: bytes = b"",
        protocol: int = 2,
        timeout: float | None = None,
    ) -> ExchangeResult:
        """13 F1: carry ``dlt645_bytes`` to the meter/node ``address`` along ``relays``.

        ``relays`` run from the CCO outward (first hop first). ``timeout`` counts from
        sending (waiting for a free slot is not counted). Raises
        ``LinkClosed`` only; every other outcome is in the result.
        """
        relays = tuple(relays)
        cco = self._cco()
        limit = timeout if timeout is not None else self.read_timeout
        loop = asyncio.get_running_loop()
        async with self._slots:
            t0 = loop.time()
            seq_box: list[int] = []

            def build(seq: int) -> g.Frame13762:
                seq_box.append(seq)
                return g.monitor_request(
                    seq, cco, relays, address, protocol, dlt645_bytes, self.comm_mode
                )

            try:
                frame = await self._transact(build, limit, target=address)
            except ModuleTimeout:
                elapsed = loop.time() - t0
                log.info("read %s via %s: timeout after %.1f s", address, _path(relays), elapsed)
                return ExchangeResult(address, relays, seq_box[0], elapsed,
                                      failure=ReadFailure.TIMEOUT)
        elapsed = loop.time() - t0
        info = frame.info
        q = {"cmd_quality": info.cmd_quality, "reply_quality": info.reply_quality,
             "phase": info.phase} if isinstance(info, g.InfoUp) else {}
        if frame.afn == 0x00 and frame.fn == 2:
            code = _deny_code(frame)
            log.info("read %s via %s: denied, error %s (%s)", address, _path(relays), code,
                     g.DENY_CODES.get(code, "unknown"))
            return ExchangeResult(address, relays, frame.seq, elapsed,
                                  failure=ReadFailure.DENIED, deny_code=code, **q)
        if frame.afn == 0x13 and frame.fn == 1:
            try:
                unit = g.MonitorReply.decode(frame.data)
            except DataUnitError as exc:
                log.warning("read %s: bad 13 F1 reply: %s", address, exc)
            else:
                if log.isEnabledFor(logging.DEBUG):  # the path text is built only when logged
                    log.debug("read %s via %s: %d bytes in %.2f s", address, _path(relays),
                              len(unit.frame), elapsed)
                return ExchangeResult(address, relays, frame.seq, elapsed, reply=unit.frame,
                                      duration_s=unit.duration_s, **q)
        else:
            log.warning("read %s: answered with AFN%02X F%d", address, frame.afn, frame.fn)
        return ExchangeResult(address, relays, frame.seq, elapsed,
                              failure=ReadFailure.BAD_REPLY, **q)


def _expire(fut: asyncio.Future[Any], expired: list[bool]) -> None:
    """A request's deadline passed: its waiter gets ``TimeoutError`` (``_transact``)."""
    expired.append(True)
    if not fut.done():
        fut.set_exception(TimeoutError())


def _deny_code(frame: g.Frame13762) -> int:
    # A deny with a malformed body still means "no": report code 255 (unknown).
    return frame.data[0] if len(frame.data) == 1 else 255


def _path(relays: tuple[str, ...]) -> str:
    return " > ".join(relays) if relays else "direct"
