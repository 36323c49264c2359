"""The concentrator's Q/GDW 1376.1 uplink: a TCP/TLS client to the master station.

``UplinkClient`` keeps one connection to the master (primary, or the backup after
``failover_attempts`` failed attempts, going back to the primary when a periodic probe finds it
again), logs in (AFN02 F1) until confirmed, sends heartbeats (F3) and reconnects with capped
exponential backoff when confirmations stop. While connected it

* uploads the store's outbox (``uplink.outbox`` maps rows to data units) with CON = 1, in
  multi-frame messages (FIR/FIN), keeping up to ``window`` frames unconfirmed; a row leaves the
  outbox only when the AFN00 confirmation of the frame that carried it arrives, so after any
  disconnect or restart the upload resumes from the oldest unconfirmed row;
* serves the master's requests (AFN01/04/05/09/0A/0C/0D/0E/10) through the store and a small
  ``TerminalServices`` object the daemon supplies, including prepayment (AFN04/0A F47
  purchases, AFN0C F23 credit, AFN05 F25/F33 protect, private AFN0A F2044 history and AFN10
  F2043 direct meter trip/close; docs/prepayment.md); anything else gets AFN00 F2 (deny);
  downlink requests whose Tp has expired are dropped and logged;
* with a ``CommandGuard`` (``uplink.security``), refuses state-changing commands (AFN 01/04/05/
  06/0F/10) that are unsigned, altered, replayed or old: AFN00 F2, a SECURITY log line and an
  ERC20 (authentication error) event that the upload loop sends to the master.

Every wait is an asyncio timer, so the client runs unchanged under the simulator's
virtual-time loop. Time of day comes from the injected ``Clock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from concentrator import dlt645
from concentrator.clock import Clock
from concentrator.codec import CodecError, Rejected
from concentrator.config import HostPort, TlsConfig, UplinkConfig
from concentrator.store import Event, LineLoss, MeterRecord, RealtimeReading, Store, StoreError
from uplink import gdw13761 as g
from uplink import outbox as ob
from uplink import security as sec

__all__ = [
    "TerminalServices",
    "PurchaseOutcome",
    "PurchaseLine",
    "ControlRequest",
    "UplinkOptions",
    "UplinkClient",
    "EventPointers",
    "ssl_client_context",
    "wait_event",
]

log = logging.getLogger(__name__)

_PROTOCOLS = {g.PROTO_DLT645_2007: "dlt645-2007", g.PROTO_DLT645_1997: "dlt645-1997"}
_PROTOCOL_CODES = {v: k for k, v in _PROTOCOLS.items()}
_ARCHIVE_RECORDS_PER_UNIT = 40     # 2 + 40 x 27 bytes: several units per frame, frames < 2 KB
_KV_COMM = "uplink.comm_params"
_KV_MASTER = "uplink.master"
_KV_DEVICES = "uplink.devices"
_KV_LINE_LOSS = "uplink.line_loss_sent"
_ERC20_PER_HOUR = 30    # a flood of forged commands must not fill the store and the uplink


class TerminalServices(Protocol):
    """What the uplink needs from the rest of the daemon (the lead wires the real objects)."""

    async def read_energy_now(self, meter: str) -> RealtimeReading | None:
        """Read the meter's current forward active energy now (None: it did not answer)."""
        ...

    async def forward_645(self, meter: str, frame: bytes, timeout: float) -> bytes | None:
        """Send a DL/T 645 frame to the meter through the mesh; its reply, None on silence."""
        ...

    async def archive_changed(self, upserted: Sequence[MeterRecord],
                              removed: Sequence[str]) -> None:
        """The master changed the meter archive (already written to the store)."""
        ...

    async def set_time(self, when: datetime) -> None:
        """The master set the terminal clock (AFN05 F31)."""
        ...

    async def reset(self, kind: int) -> None:
        """AFN01 F1..F4 after it was confirmed: 1 hardware, 2 data, 3 factory, 4 parameters."""
        ...

    # Prepayment (issue 8): the daemon forwards these to ``concentrator.prepay.PrepayService``
    # (the uplink never imports it). Amounts are yuan as ``Decimal``.

    async def purchase(self, meter: str, order_no: int, amount: Decimal, replace: bool,
                       alarm_threshold: Decimal | None, trip_threshold: Decimal | None,
                       source: str) -> PurchaseOutcome:
        """Apply a purchase once per (meter, order_no); a repeat returns "duplicate"."""
        ...

    async def balance(self, meter: str) -> Decimal | None:
        """Remaining credit of the meter; None when it is not a prepaid meter."""
        ...

    async def purchases(self, meter: str, limit: int = 20) -> Sequence[PurchaseLine]:
        """The meter's most recent purchases, newest first."""
        ...

    async def set_protect(self, meter: str | None, on: bool, until: datetime | None,
                          source: str) -> None:
        """Protect (no credit-driven trip) on/off; meter None = every prepaid meter."""
        ...

    async def request_control(self, meter: str, action: str, source: str) -> ControlRequest:
        """Queue the master's direct "trip"/"close" of one meter (outcome later as ERC5)."""
        ...


class PurchaseOutcome(Protocol):
    """What ``TerminalServices.purchase`` returns (``prepay.PurchaseResult``)."""

    @property
    def status(self) -> str: ...    # applied, duplicate, unknown-meter, not-prepaid, rejected

    @property
    def reason(self) -> str: ...


class PurchaseLine(Protocol):
    """One entry of ``TerminalServices.purchases`` (``prepay.PurchaseRecord``)."""

    @property
    def order_no(self) -> int: ...

    @property
    def amount(self) -> Decimal: ...

    @property
    def replace(self) -> bool: ...

    @property
    def alarm_threshold(self) -> Decimal | None: ...

    @property
    def trip_threshold(self) -> Decimal | None: ...

    @property
    def balance_before(self) -> Decimal | None: ...

    @property
    def balance_after(self) -> Decimal | None: ...

    @property
    def applied_at(self) -> datetime: ...


class ControlRequest(Protocol):
    """What ``TerminalServices.request_control`` returns (``prepay.ControlTicket``)."""

    @property
    def id(self) -> int: ...

    @property
    def state(self) -> str: ...     # pending, deferred, verified, failed


@dataclass(frozen=True)
class UplinkOptions:
    """Client settings beyond ``concentrator.config.UplinkConfig``."""

    window: int = 4                     # unconfirmed upload frames in flight, 1..15
    max_frame_bytes: int = 2048         # user data per frame (masters on GPRS often want < 2 KB)
    response_timeout: float = 30.0      # confirmation of a login/heartbeat/upload frame
    heartbeats_missed: int = 2          # unconfirmed heartbeats in a row before reconnecting
    login_attempts: int = 3             # per connection, ``login_retry`` apart
    primary_probe: float = 300.0        # while on the backup: try the primary this often
    backoff_base: float = 1.0           # first reconnect delay; doubles up to the config cap
    connect_timeout: float = 20.0
    poll_interval: float = 5.0          # outbox poll when nobody calls notify_outbox()
    batch_items: int = 200              # outbox rows fetched per round
    realtime_max_age: float = 900.0     # F129: a stored reading this fresh answers at once
    line_loss_days: int = 7             # line loss of this many recent days is uploaded
    important_ercs: frozenset[int] = ob.DEFAULT_IMPORTANT_ERCS
    functions: g.FunctionTable = g.DEFAULT_FUNCTIONS
    version: g.TerminalVersion = field(default_factory=lambda: g.TerminalVersion(
        "OPEN", "CONC0001", "0.1", date(2024, 1, 1), "", "2013", "1.0", date(2024, 1, 1)))

    def __post_init__(self) -> None:
        if not 1 <= self.window <= 15:
            # PSEQ has 16 values and a heartbeat may be in flight too.
            raise ValueError(f"window {self.window} must be 1..15")
        if not 256 <= self.max_frame_bytes <= g.MAX_USER_LENGTH:
            raise ValueError(f"max_frame_bytes {self.max_frame_bytes} must be 256..16383")


def ssl_client_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """TLS context trusting only the pinned CA, with our client certificate if configured."""
    if not tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert is not None and tls.key is not None:
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    return ctx


class EventPointers:
    """Pm/Pn pointers of AFN0E: each event class (important F1, general F2) is numbered in
    store order; a pointer is that number mod 256 and EC1/EC2 count the events of a class."""

    def __init__(self, store: Store, important: frozenset[int]) -> None:
        self._store = store
        self._important = important
        self._last_id = 0
        self._ids: dict[bool, list[int]] = {True: [], False: []}
        self._index: dict[int, tuple[bool, int]] = {}

    def refresh(self) -> None:
        while True:
            batch = self._store.events_since(self._last_id, 1000)
            for e in batch:
                cls = e.erc in self._important
                self._index[e.id] = (cls, len(self._ids[cls]))
                self._ids[cls].append(e.id)
                self._last_id = e.id
            if len(batch) < 1000:
                return

    def counters(self) -> tuple[int, int]:
        return len(self._ids[True]) % 256, len(self._ids[False]) % 256

    def info(self, e: Event) -> tuple[tuple[int, int], int, bool]:
        """(EC1, EC2), pointer index and class of a stored event (for ``outbox.pack_items``)."""
        if e.id not in self._index:
            self.refresh()
        important, index = self._index.get(e.id, (e.erc in self._important, 0))
        return self.counters(), index, important

    def records(self, important: bool, pm: int, pn: int) -> tuple[int, list[Event]]:
        """Events with pointers Pm..Pn-1 among the newest 256 of the class; (Pn', events)."""
        self.refresh()
        ids = self._ids[important]
        window = ids[-256:]
        first = len(ids) - len(window)
        by_ptr = {(first + i) % 256: eid for i, eid in enumerate(window)}
        out: list[Event] = []
        p = pm
        for _ in range((pn - pm) % 256):
            eid = by_ptr.get(p)
            if eid is None:
                break
            ev = self._store.events_since(eid - 1, 1)
            if not ev or ev[0].id != eid:
                break   # aged out of the store
            out.append(ev[0])
            p = (p + 1) % 256
        return p, out


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` up to ``timeout`` s; True if it is set.

    Not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives while the
    event is being set, which would leave a session task running after it was cancelled.
    """
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return event.is_set()


class _SessionEnded(Exception):
    """The connection must be closed; the message says why."""


@dataclass
class _Inflight:
    frame_seq: int
    seqs: tuple[int, ...]
    sent_at: float
    fut: asyncio.Future[str]
    on_ok: Callable[[], None] | None = None


class UplinkClient:
    """1376.1 client of one terminal. ``await run()`` until ``stop()``."""

    def __init__(self, config: UplinkConfig, terminal: g.Address, store: Store,
                 services: TerminalServices, clock: Clock,
                 options: UplinkOptions | None = None, *, rng: random.Random | None = None,
                 guard: sec.CommandGuard | None = None) -> None:
        self.config = config
        self.terminal = terminal
        self.store = store
        self.services = services
        self.clock = clock
        self.options = options or UplinkOptions()
        self._rng = rng or random.Random()
        # None = commands are not authenticated; the daemon passes one built from ``security``.
        self.guard = guard
        self._erc20_times: list[float] = []
        self._ssl = ssl_client_context(config.tls)
        self._pseq = 0
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._ll_confirmed = 0  # line-loss confirmations so far (part of the pending cache key)
        self._ll_key: tuple[Any, ...] | None = None
        self._ll_pending: list[tuple[LineLoss, str]] = []
        self._session: _Session | None = None
        self.upload_enabled = True
        self.events = EventPointers(store, self.options.important_ercs)
        self.endpoint: HostPort | None = None       # where the current session is connected
        self.logged_in = False
        self.stats: dict[str, int] = {"connects": 0, "logins": 0, "frames_sent": 0,
                                      "frames_confirmed": 0, "rows_confirmed": 0,
                                      "requests_served": 0, "requests_denied": 0,
                                      "tp_expired": 0, "auth_refused": 0}
        self.heartbeat_period = config.heartbeat_period
        comm = store.kv_get(_KV_COMM)
        if comm and comm.get("heartbeat_min"):
            self.heartbeat_period = 60.0 * comm["heartbeat_min"]
        self.primary, self.backup = config.primary, config.backup
        master = store.kv_get(_KV_MASTER)
        if master:
            # The master moved itself with AFN04 F3; that survives a restart.
            self.primary = HostPort(master["primary_ip"], master["primary_port"])
            self.backup = (HostPort(master["backup_ip"], master["backup_port"])
                           if master["backup_port"] else None)

    # --- control --------------------------------------------------------------------------

    def notify_outbox(self) -> None:
        """New rows were committed to the outbox: upload them without waiting for the poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        if self._session is not None:
            self._session.close("stopping")

    def next_seq(self) -> int:
        """Next PSEQ for a frame this terminal initiates, skipping any still awaiting an answer."""
        busy = self._session.pending.keys() if self._session else ()
        for _ in range(16):
            seq = self._pseq
            self._pseq = (self._pseq + 1) % 16
            if seq not in busy:
                return seq
        raise RuntimeError("all 16 sequence numbers are awaiting confirmation")

    # --- connection management --------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        await wait_event(self._stopping, seconds)

    def _backoff(self, n: int) -> float:
        delay = min(self.config.reconnect_backoff_cap, self.options.backoff_base * 2 ** min(n, 30))
        return delay * self._rng.uniform(0.75, 1.0)   # spread many terminals after an outage

    async def _open(self, ep: HostPort) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(
            asyncio.open_connection(ep.host, ep.port, ssl=self._ssl,
                                    server_hostname=ep.host if self._ssl else None),
            self.options.connect_timeout)

    async def run(self) -> None:
        """Connect, log in, serve and upload; reconnect forever until ``stop()``."""
        failures = 0          # consecutive failed attempts on the current endpoint
        backoff_n = 0
        on_backup = False
        unreachable = 0       # failed connects since the last session (one log line per outage)
        while not self._stopping.is_set():
            ep = self.backup if on_backup and self.backup else self.primary
            try:
                reader, writer = await self._open(ep)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                failures += 1
                unreachable += 1
                # The first failure of an outage is the event; the retries are not (a 72-hour
                # outage logged a line per back-off step). `status` lists the outage as a fault.
                log.log(logging.WARNING if unreachable == 1 else logging.DEBUG,
                        "terminal %s: connect to master %s failed (%d): %s; retrying with "
                        "backoff", self.terminal, ep, failures, exc or type(exc).__name__)
                if self.backup and failures >= self.config.failover_attempts:
                    on_backup = not on_backup
                    failures = 0
                    log.warning("terminal %s: switching to the %s master %s", self.terminal,
                                "backup" if on_backup else "primary",
                                self.backup if on_backup else self.primary)
                await self._sleep(self._backoff(backoff_n))
                backoff_n += 1
                continue
            self.stats["connects"] += 1
            if unreachable:
                log.warning("terminal %s: master %s reachable again after %d failed connects",
                            self.terminal, ep, unreachable)
                unreachable = 0
            self.endpoint = ep
            session = _Session(self, reader, writer, probe_primary=on_backup)
            self._session = session
            reason = await session.run()
            self._session = None
            self.endpoint = None
            self.logged_in = False
            if reason == "primary back":
                on_backup, failures, backoff_n = False, 0, 0
                continue
            if session.logged_in_once:
                failures, backoff_n = 0, 0
            else:
                failures += 1
                if self.backup and failures >= self.config.failover_attempts:
                    on_backup, failures = not on_backup, 0
            if self._stopping.is_set():
                break
            await self._sleep(self._backoff(backoff_n))
            backoff_n += 1
        log.info("terminal %s: uplink stopped", self.terminal)

    async def probe_primary(self) -> bool:
        """Whether the primary master accepts a connection (used while on the backup)."""
        try:
            _, writer = await self._open(self.primary)
        except (OSError, TimeoutError, ssl.SSLError):
            return False
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
        return True

    # --- helpers the session uses -----------------------------------------------------------

    def point_map(self) -> dict[str, int]:
        return dict(self.store.meter_points())

    def meter_of_point(self) -> dict[int, str]:
        return {point: address for address, point in self.store.meter_points()}

    def line_loss_pending(self) -> list[tuple[LineLoss, str]]:
        """Line loss of recent days not yet confirmed as it is now (with its fingerprint)."""
        today = self.clock.now().date()
        # The upload loop asks on every wake and idle poll; the answer only changes when the
        # store writes or prunes line loss, a confirmation lands, or the day turns.
        version = getattr(self.store, "line_loss_version", None)
        key = (today, version, self._ll_confirmed)
        if version is not None and key == self._ll_key:
            return list(self._ll_pending)
        sent = self.store.kv_get(_KV_LINE_LOSS, {}) or {}
        out = []
        for d in range(self.options.line_loss_days, -1, -1):
            ll = self.store.line_loss(today - timedelta(days=d))
            if ll is None:
                continue
            fp = f"{ll.summary_energy}|{ll.customer_energy}|{ll.loss_pct}|{ll.meters_covered}"
            if sent.get(ll.day.isoformat()) != fp:
                out.append((ll, fp))
        self._ll_key, self._ll_pending = key, out
        return list(out)

    def line_loss_confirmed(self, day: date, fp: str) -> None:
        sent = dict(self.store.kv_get(_KV_LINE_LOSS, {}) or {})
        sent[day.isoformat()] = fp
        keep = sorted(sent)[-(self.options.line_loss_days + 2):]
        self.store.kv_set(_KV_LINE_LOSS, {k: sent[k] for k in keep})
        self._ll_confirmed += 1


class _Session:
    """One TCP/TLS connection: login, heartbeat, upload and serving requests."""

    def __init__(self, client: UplinkClient, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, probe_primary: bool) -> None:
        self.c = client
        self.o = client.options
        self.reader = reader
        self.writer = writer
        self.probe = probe_primary
        self.decoder = g.Gdw13761StreamDecoder(self.o.max_frame_bytes
                                               if self.o.max_frame_bytes > 4096
                                               else g.MAX_USER_LENGTH)
        self.pending: dict[int, asyncio.Future[str]] = {}
        self.inflight: dict[int, _Inflight] = {}
        self.window_changed = asyncio.Event()
        self.logged_in_once = False
        self.closed = asyncio.Event()
        self.reason = ""
        self.write_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.skip: set[int] = set()     # outbox seqs denied or unencodable in this session
        self.label = f"terminal {client.terminal} master {client.endpoint}"

    def close(self, reason: str) -> None:
        if not self.closed.is_set():
            self.reason = reason
            self.closed.set()

    async def run(self) -> str:
        log.info("%s: connected", self.label)
        main = [asyncio.create_task(self._read_loop()), asyncio.create_task(self._main())]
        try:
            waiter = asyncio.create_task(self.closed.wait())
            done, _ = await asyncio.wait([*main, waiter], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is not waiter and not t.cancelled() and t.exception() is not None:
                    exc = t.exception()
                    self.close(str(exc) if isinstance(exc, _SessionEnded)
                               else f"{type(exc).__name__}: {exc}")
                    if not isinstance(exc, _SessionEnded | OSError | ssl.SSLError):
                        log.error("%s: session failed", self.label, exc_info=exc)
            self.close(self.reason or "closed")
        finally:
            for t in (*main, waiter, *self.tasks):
                t.cancel()
            for t in (*main, waiter, *self.tasks):
                with contextlib.suppress(BaseException):
                    await t
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 5)
        log.info("%s: disconnected (%s)", self.label, self.reason)
        return self.reason

    async def _main(self) -> None:
        await self._login()
        subs = [asyncio.create_task(self._heartbeat_loop()), asyncio.create_task(self._upload_loop())]
        if self.probe:
            subs.append(asyncio.create_task(self._probe_loop()))
        self.tasks.update(subs)
        done, _ = await asyncio.wait(subs, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]

    # --- wire ---------------------------------------------------------------------------------

    async def send(self, frame: g.Frame13761) -> None:
        raw = g.encode(frame)
        async with self.write_lock:
            self.writer.write(raw)
            await self.writer.drain()
        self.c.stats["frames_sent"] += 1
        log.debug("%s: sent AFN%02X seq %d (%d bytes)", self.label, frame.afn, frame.seq.seq,
                  len(raw))

    async def _read_loop(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                raise _SessionEnded("master closed the connection")
            for item in self.decoder.feed(data):
                if isinstance(item, Rejected):
                    log.warning("%s: rejected %d bytes: %s", self.label, len(item.raw), item.error)
                    continue
                self._dispatch(item)

    def _dispatch(self, f: g.Frame13761) -> None:
        t = self.c.terminal
        if f.control.uplink:
            log.warning("%s: ignored an uplink-direction frame AFN%02X", self.label, f.afn)
            return
        broadcast = f.address.group and f.address.terminal == 0xFFFF
        if not broadcast and (f.address.district != t.district or f.address.terminal != t.terminal):
            log.warning("%s: ignored a frame for terminal %s", self.label, f.address)
            return
        if not f.control.prm:
            if f.afn != 0x00:
                log.warning("%s: unexpected answer AFN%02X seq %d", self.label, f.afn, f.seq.seq)
                return
            self._answer(f)
            return
        guard = self.c.guard
        if guard is not None and guard.require_mac and sec.needs_mac(f):
            # The guard checks the Tp itself (and lets a time-set through a wrong clock).
            verdict = guard.check(f, self.c.clock.now())
            if not verdict.ok:
                self._refuse(f, verdict)
                return
        elif f.tp is not None and g.tp_expired(f.tp, self.c.clock.now()):
            self.c.stats["tp_expired"] += 1
            log.warning("%s: dropped AFN%02X seq %d: Tp %s + %d min has expired", self.label,
                        f.afn, f.seq.seq, f.tp.send_time, f.tp.delay)
            return
        task = asyncio.create_task(self._serve(f))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _refuse(self, f: g.Frame13761, verdict: sec.Verdict) -> None:
        """Deny a command that failed authentication: AFN00 F2, log line, ERC20 event."""
        c = self.c
        c.stats["auth_refused"] += 1
        log.warning("%s: SECURITY: refused AFN%02X seq %d from MSA %d: %s (%s)", self.label,
                    f.afn, f.seq.seq, f.address.msa, verdict.reason, verdict.detail)
        now = asyncio.get_running_loop().time()
        c._erc20_times = [t for t in c._erc20_times if now - t < 3600.0]
        if len(c._erc20_times) < _ERC20_PER_HOUR:
            c._erc20_times.append(now)
            try:
                c.store.add_event(sec.ERC_AUTH, None, verdict.event_detail(f))
                c.notify_outbox()
            except StoreError as exc:
                log.error("%s: could not record ERC20: %s", self.label, exc)
        else:
            log.warning("%s: SECURITY: ERC20 limit of %d per hour reached; event not recorded",
                        self.label, _ERC20_PER_HOUR)
        task = asyncio.create_task(self.send(g.deny(f, table=self.o.functions)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _answer(self, f: g.Frame13761) -> None:
        result = "deny"
        try:
            items = g.decode_units(f)
        except CodecError as exc:
            log.warning("%s: undecodable AFN00 seq %d: %s", self.label, f.seq.seq, exc)
            return
        fns = {it.fn for it in items}
        if 1 in fns:
            result = "ok"
        elif 3 in fns:
            acks = [it.value for it in items if isinstance(it.value, g.PerItemAck)]
            if acks and all(i.ok for a in acks for i in a.items):
                result = "ok"
        fut = self.pending.pop(f.seq.seq, None)
        if fut is None:
            log.info("%s: late or unknown confirmation seq %d", self.label, f.seq.seq)
            return
        if not fut.done():
            fut.set_result(result)
        entry = self.inflight.pop(f.seq.seq, None)
        if entry is not None:
            if result == "ok":
                removed = self.c.store.outbox_confirm(entry.seqs) if entry.seqs else 0
                if entry.on_ok:
                    entry.on_ok()
                self.c.stats["frames_confirmed"] += 1
                self.c.stats["rows_confirmed"] += removed
            else:
                self.skip.update(entry.seqs)
                log.error("%s: master denied upload frame seq %d (outbox %d..%d); kept for "
                          "the next connection", self.label, f.seq.seq,
                          min(entry.seqs, default=0), max(entry.seqs, default=0))
            self.window_changed.set()

    async def exchange(self, frame: g.Frame13761, timeout: float) -> str | None:
        """Send a CON = 1 frame and wait for its AFN00 answer ("ok"/"deny", None on timeout)."""
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[frame.seq.seq] = fut
        await self.send(frame)
        await asyncio.wait({fut}, timeout=timeout)     # not wait_for: see wait_event
        if fut.done():
            return fut.result()
        if self.pending.get(frame.seq.seq) is fut:
            del self.pending[frame.seq.seq]
        return None

    # --- link ---------------------------------------------------------------------------------

    async def _login(self) -> None:
        tbl = self.o.functions
        for attempt in range(1, self.o.login_attempts + 1):
            res = await self.exchange(g.login(self.c.terminal, self.c.next_seq(), table=tbl),
                                      self.c.config.login_retry)
            if res == "ok":
                self.logged_in_once = True
                self.c.logged_in = True
                self.c.stats["logins"] += 1
                log.info("%s: logged in", self.label)
                return
            log.warning("%s: login attempt %d %s", self.label, attempt,
                        "denied" if res else "not confirmed")
            if res == "deny":
                await asyncio.sleep(self.c.config.login_retry)
        raise _SessionEnded("login not confirmed")

    async def _heartbeat_loop(self) -> None:
        missed = 0
        while True:
            await asyncio.sleep(self.c.heartbeat_period)
            res = await self.exchange(
                g.heartbeat(self.c.terminal, self.c.next_seq(), table=self.o.functions),
                min(self.o.response_timeout, self.c.heartbeat_period))
            if res == "ok":
                missed = 0
                continue
            missed += 1
            log.warning("%s: heartbeat %s (%d in a row)", self.label,
                        "denied" if res else "not confirmed", missed)
            if missed >= self.o.heartbeats_missed:
                raise _SessionEnded(f"{missed} heartbeats not confirmed")

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.o.primary_probe)
            if await self.c.probe_primary():
                log.warning("%s: primary master %s is back, moving to it", self.label,
                            self.c.primary)
                self.close("primary back")
                return

    # --- upload -------------------------------------------------------------------------------

    async def _room(self) -> None:
        """Wait until the window has room; a frame unconfirmed too long ends the session."""
        loop = asyncio.get_running_loop()
        while len(self.inflight) >= self.o.window:
            oldest = min(self.inflight.values(), key=lambda e: e.sent_at)
            remaining = oldest.sent_at + self.o.response_timeout - loop.time()
            if remaining <= 0:
                raise _SessionEnded(f"upload frame seq {oldest.frame_seq} not confirmed")
            self.window_changed.clear()
            await wait_event(self.window_changed, remaining)

    async def _drain(self) -> None:
        """Wait for every frame in flight to be answered (or time out)."""
        while self.inflight:
            loop = asyncio.get_running_loop()
            oldest = min(self.inflight.values(), key=lambda e: e.sent_at)
            remaining = oldest.sent_at + self.o.response_timeout - loop.time()
            if remaining <= 0:
                raise _SessionEnded(f"upload frame seq {oldest.frame_seq} not confirmed")
            self.window_changed.clear()
            await wait_event(self.window_changed, remaining)

    async def _send_upload(self, afn: int, units: tuple[g.DataUnit, ...], seqs: tuple[int, ...],
                           fir: bool, fin: bool, on_ok: Callable[[], None] | None = None) -> None:
        await self._room()
        seq = self.c.next_seq()
        frame = g.Frame13761(g.Control(True, True, False, False, self.o.functions.report),
                             self.c.terminal, afn, g.Seq(seq, fir, fin, con=True), units)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[seq] = fut
        self.inflight[seq] = _Inflight(seq, seqs, asyncio.get_running_loop().time(), fut, on_ok)
        await self.send(frame)

    async def _upload_loop(self) -> None:
        c = self.c
        after: int | None = None
        while True:
            if not c.upload_enabled:
                await self._idle()
                continue
            for ll, fp in c.line_loss_pending():
                await self._send_upload(
                    0x0D, (ob.line_loss_unit(ll),), (), True, True,
                    on_ok=lambda d=ll.day, f=fp: c.line_loss_confirmed(d, f))
            items = [i for i in c.store.outbox_pending(self.o.batch_items, after)
                     if i.seq not in self.skip]
            if not items:
                await self._drain()
                if not self.c.store.outbox_pending(1, after) and not c.line_loss_pending():
                    await self._idle()
                continue
            after = items[-1].seq
            skipped: list[tuple[int, str]] = []
            points = c.point_map()
            batches = ob.pack_items(items, point_of=points.get, event_info=c.events.info,
                                    max_user_bytes=self.o.max_frame_bytes, skipped=skipped)
            self.skip.update(s for s, _ in skipped)
            for i, b in enumerate(batches):
                fir = i == 0 or batches[i - 1].afn != b.afn
                fin = i == len(batches) - 1 or batches[i + 1].afn != b.afn
                await self._send_upload(b.afn, b.units, b.seqs, fir, fin)
            log.debug("%s: %d outbox rows in %d frames sent, up to seq %d", self.label,
                      len(items), len(batches), after)

    async def _idle(self) -> None:
        c = self.c
        c._wake.clear()
        await wait_event(c._wake, self.o.poll_interval)

    # --- serving the master -------------------------------------------------------------------

    async def _serve(self, req: g.Frame13761) -> None:
        handler = _HANDLERS.get(req.afn)
        label = f"{self.label} AFN{req.afn:02X} seq {req.seq.seq}"
        try:
            if handler is None:
                raise _Refused(f"AFN{req.afn:02X} is not served")
            items = g.decode_units(req)
            reply = await handler(self, req, items)
        except _Refused as exc:
            self.c.stats["requests_denied"] += 1
            log.warning("%s: denied: %s", label, exc)
            await self.send(g.deny(req, table=self.o.functions))
            return
        except (CodecError, ValueError) as exc:
            self.c.stats["requests_denied"] += 1
            log.warning("%s: denied, bad request: %s", label, exc)
            await self.send(g.deny(req, table=self.o.functions))
            return
        self.c.stats["requests_served"] += 1
        if isinstance(reply, _Ack):
            await self.send(reply.frame(req, self.o.functions))
            if reply.after is not None:
                await reply.after()
        else:
            await self._respond(req, reply)
        log.info("%s: served", label)

    async def _respond(self, req: g.Frame13761, units: Sequence[g.DataUnit]) -> None:
        """Answer with data; split over several frames (FIR/FIN, RSEQ + 1 each) if large."""
        frames: list[list[g.DataUnit]] = [[]]
        size = 0
        for u in units:
            n = 4 + len(u.data)
            if frames[-1] and size + n > self.o.max_frame_bytes - 8 - 22:
                frames.append([])
                size = 0
            frames[-1].append(u)
            size += n
        for i, chunk in enumerate(frames):
            f = g.response(req, chunk, fir=i == 0, fin=i == len(frames) - 1,
                           table=self.o.functions)
            if i:
                f = dataclasses.replace(f, seq=dataclasses.replace(f.seq, seq=(req.seq.seq + i) % 16))
            await self.send(f)


class _Refused(Exception):
    """The request is valid but this terminal will not or cannot do it (-> AFN00 F2)."""


@dataclass
class _Ack:
    """Answer with AFN00: F1 when every item succeeded, F2 when none did, else F3 per item."""

    results: list[tuple[int, int, bool]]      # (pn, fn, ok)
    after: Callable[[], Awaitable[None]] | None = None

    def frame(self, req: g.Frame13761, table: g.FunctionTable) -> g.Frame13761:
        oks = [ok for _, _, ok in self.results]
        if oks and all(oks):
            return g.confirm(req, table=table)
        if not any(oks):
            return g.deny(req, table=table)
        items = tuple(g.AckItem((pn,), (fn,), 0 if ok else 1) for pn, fn, ok in self.results)
        return g._answer(req, 0x00, table.ack,  # noqa: SLF001 - the codec's answer builder
                         (g.unit(0, 3, g.PerItemAck(req.afn, items)),), None, True, True,
                         None, None)


Handler = Callable[[_Session, g.Frame13761, list[g.DecodedUnit]],
                   Awaitable["_Ack | list[g.DataUnit]"]]


def _points(s: _Session, pn: int) -> list[tuple[int, str]]:
    by_point = s.c.meter_of_point()
    if pn == g.ALL_POINTS:
        return sorted(by_point.items())
    return [(pn, by_point[pn])] if pn in by_point else []


async def _reset(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]) -> _Ack:
    kinds = [it.fn for it in items if it.fn in (1, 2, 3, 4)]
    results = [(it.pn, it.fn, it.fn in (1, 2, 3, 4)) for it in items]

    async def after() -> None:
        for k in kinds:
            log.warning("%s: reset F%d requested by the master", s.label, k)
            await s.c.services.reset(k)

    return _Ack(results, after if kinds else None)


async def _set_params(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]) -> _Ack:
    results = []
    for it in items:
        v = it.value
        ok = True
        if isinstance(v, g.TerminalCommParams):
            s.c.store.kv_set(_KV_COMM, {
                "heartbeat_min": v.heartbeat_min, "response_timeout_s": v.response_timeout_s,
                "retries": v.retries, "confirm_flags": v.confirm_flags, "rts_20ms": v.rts_20ms,
                "send_delay_min": v.send_delay_min})
            if v.heartbeat_min:
                s.c.heartbeat_period = 60.0 * v.heartbeat_min
            log.info("%s: comm parameters set: heartbeat %d min", s.label, v.heartbeat_min)
        elif isinstance(v, g.MasterStationParams):
            s.c.store.kv_set(_KV_MASTER, {"primary_ip": v.primary_ip,
                                          "primary_port": v.primary_port,
                                          "backup_ip": v.backup_ip,
                                          "backup_port": v.backup_port, "apn": v.apn})
            s.c.primary = HostPort(v.primary_ip, v.primary_port)
            s.c.backup = HostPort(v.backup_ip, v.backup_port) if v.backup_port else None
            log.warning("%s: master addresses set to %s / %s (used from the next connection)",
                        s.label, s.c.primary, s.c.backup)
        elif isinstance(v, g.MeterArchive):
            ok = await _apply_archive(s, v.records)
        elif isinstance(v, g.PurchaseParams):
            ok = await _purchase(s, it.pn, v)
        else:
            ok = False
        results.append((it.pn, it.fn, ok))
    return _Ack(results)


_SOURCE = "master"      # the ``source`` the prepay service records for the master's commands


def _meter_at(s: _Session, pn: int) -> str | None:
    """The meter at measuring point ``pn`` (prepayment is per meter: pn = its point)."""
    return s.c.meter_of_point().get(pn)


async def _purchase(s: _Session, pn: int, v: g.PurchaseParams) -> bool:
    """AFN04 F47: confirmed when applied or a duplicate of an applied order, else denied."""
    meter = _meter_at(s, pn)
    if meter is None:
        log.warning("%s: purchase order %d for p%d denied: no meter at that point", s.label,
                    v.order_no, pn)
        return False
    res = await s.c.services.purchase(meter, v.order_no, v.amount, v.replace,
                                      v.alarm_threshold, v.trip_threshold, _SOURCE)
    ok = res.status in ("applied", "duplicate")
    log.log(logging.INFO if ok else logging.WARNING,
            "%s: purchase order %d for meter %s (%s %s yuan): %s%s", s.label, v.order_no, meter,
            "replace" if v.replace else "add", v.amount, res.status,
            f" ({res.reason})" if res.reason else "")
    return ok


async def _apply_archive(s: _Session, records: Sequence[g.MeterRecord]) -> bool:
    store = s.c.store
    devices: dict[str, str] = dict(store.kv_get(_KV_DEVICES, {}) or {})
    upserted: list[MeterRecord] = []
    removed: list[str] = []
    for r in records:
        if r.point != 0 and r.protocol not in _PROTOCOLS:
            log.warning("%s: archive record #%d meter %s: protocol %d not supported", s.label,
                        r.device_no, r.address, r.protocol)
            return False
    with store.batch():
        for r in records:
            old_addr = devices.get(str(r.device_no))
            if r.point == 0:
                # Point 0 deletes the device (standard practice for AFN04 F10).
                addr = old_addr or r.address
                if store.remove_meter(addr):
                    removed.append(addr)
                devices.pop(str(r.device_no), None)
                continue
            if old_addr and old_addr != r.address and store.remove_meter(old_addr):
                removed.append(old_addr)
            for m in store.meters():      # a point moves with its meter: free it elsewhere
                if m.point == r.point and m.address != r.address:
                    store.upsert_meter(dataclasses.replace(m, point=None))
            existing = store.meter(r.address)
            collector = None if r.collector == "000000000000" else r.collector
            base = existing or MeterRecord(address=r.address)
            rec = dataclasses.replace(base, protocol=_PROTOCOLS[r.protocol], point=r.point,
                                      collector=collector, source="archive")
            store.upsert_meter(rec)
            upserted.append(rec)
            devices[str(r.device_no)] = r.address
        store.kv_set(_KV_DEVICES, devices)
    log.info("%s: archive set by the master: %d meters upserted, %d removed", s.label,
             len(upserted), len(removed))
    await s.c.services.archive_changed(upserted, removed)
    return True


async def _control(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]) -> _Ack:
    results = []
    for it in items:
        ok = False
        if it.fn == 31 and isinstance(it.value, g.TerminalClock) and it.value.time is not None:
            log.warning("%s: clock set by the master to %s", s.label, it.value.time)
            await s.c.services.set_time(it.value.time)
            ok = True
        elif it.fn == 29:       # allow the terminal's active upload [MEM]
            s.c.upload_enabled = True
            s.c.notify_outbox()
            ok = True
        elif it.fn == 37:       # forbid the terminal's active upload [MEM]
            s.c.upload_enabled = False
            ok = True
        elif it.fn in (25, 33):
            ok = await _protect(s, it.pn, it.value)
        # F1/F2 (load-control rounds) and the rest: a concentrator has no such outputs.
        results.append((it.pn, it.fn, ok))
    return _Ack(results)


async def _protect(s: _Session, pn: int, v: Any) -> bool:
    """AFN05 F25 (on, for n half hours or until F33) / F33 (off). p0 = every prepaid meter
    (the standard's terminal-wide protect); pn = that meter only (our per-meter extension)."""
    meter = None
    if pn != 0:
        meter = _meter_at(s, pn)
        if meter is None:
            log.warning("%s: protect for p%d denied: no meter at that point", s.label, pn)
            return False
    on = isinstance(v, g.ProtectOn)
    until = (s.c.clock.now() + timedelta(minutes=30 * v.half_hours)
             if isinstance(v, g.ProtectOn) and v.half_hours else None)
    await s.c.services.set_protect(meter, on, until, _SOURCE)
    log.warning("%s: protect %s for %s%s by the master", s.label, "on" if on else "off",
                f"meter {meter}" if meter else "every prepaid meter",
                f" until {until:%Y-%m-%d %H:%M}" if until else "")
    return True


async def _config(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]
                  ) -> list[g.DataUnit]:
    if [it.fn for it in items] != [1]:
        raise _Refused("only AFN09 F1 (version) is served")
    return [g.unit(0, 1, s.o.version)]


def _device_records(s: _Session) -> dict[int, g.MeterRecord]:
    devices = {v: int(k) for k, v in (s.c.store.kv_get(_KV_DEVICES, {}) or {}).items()}
    out = {}
    for m in s.c.store.meters():
        if not m.point:
            continue
        no = devices.get(m.address, m.point)
        out[no] = g.MeterRecord(no, m.point, m.address, _PROTOCOL_CODES.get(m.protocol, 30),
                                collector=m.collector or "000000000000")
    return out


async def _query(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]
                 ) -> list[g.DataUnit]:
    units: list[g.DataUnit] = []
    for it in items:
        if it.fn == 1:
            comm = s.c.store.kv_get(_KV_COMM) or {}
            units.append(g.unit(0, 1, g.TerminalCommParams(
                comm.get("rts_20ms", 0), comm.get("send_delay_min", 0),
                comm.get("response_timeout_s", int(s.o.response_timeout)),
                comm.get("retries", 3), comm.get("confirm_flags", 0),
                int(s.c.heartbeat_period // 60))))
        elif it.fn == 3:
            bk = s.c.backup
            units.append(g.unit(0, 3, g.MasterStationParams(
                s.c.primary.host, s.c.primary.port, bk.host if bk else "0.0.0.0",
                bk.port if bk else 0, (s.c.store.kv_get(_KV_MASTER) or {}).get("apn", ""))))
        elif it.fn == 10 and isinstance(it.value, g.ArchiveQuery):
            records = _device_records(s)
            wanted = [records[n] for n in it.value.device_numbers if n in records]
            for i in range(0, max(len(wanted), 1), _ARCHIVE_RECORDS_PER_UNIT):
                units.append(g.unit(0, 10, g.MeterArchive(
                    tuple(wanted[i:i + _ARCHIVE_RECORDS_PER_UNIT]))))
        elif it.fn == 47:
            meter = _prepaid_meter(s, it.pn)
            last = await s.c.services.purchases(meter, 1)
            if not last:
                raise _Refused(f"meter {meter} has no purchase recorded")
            r = last[0]
            units.append(g.unit(it.pn, 47, g.PurchaseParams(
                r.order_no, r.amount, r.replace, r.alarm_threshold, r.trip_threshold)))
        elif it.fn == g.FN_PURCHASE_HISTORY and isinstance(it.value, g.HistoryRequest):
            meter = _prepaid_meter(s, it.pn)
            records = await s.c.services.purchases(meter, it.value.count)
            units.append(g.unit(it.pn, it.fn, g.PurchaseHistory(tuple(
                g.PurchaseEntry(r.order_no, r.amount, r.replace, r.balance_before,
                                r.balance_after, r.applied_at)
                for r in records[:it.value.count]))))
        else:
            raise _Refused(f"AFN0A F{it.fn} is not served")
    return units


def _prepaid_meter(s: _Session, pn: int) -> str:
    meter = _meter_at(s, pn)
    if meter is None:
        raise _Refused(f"no meter at measuring point p{pn}")
    return meter


async def _class1(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]
                  ) -> list[g.DataUnit]:
    units = []
    for it in items:
        if it.fn == 2:
            units.append(g.unit(0, 2, g.TerminalClock(s.c.clock.now().replace(microsecond=0))))
        elif it.fn == 129:
            for pn, meter in _points(s, it.pn):
                units.append(g.unit(pn, 129, await _energy_now(s, meter)))
        elif it.fn == 23:
            # Meters that are not prepaid have no credit: left out (all of them -> denied).
            for pn, meter in _points(s, it.pn):
                balance = await s.c.services.balance(meter)
                if balance is not None:
                    units.append(g.unit(pn, 23, g.RemainingCredit(balance)))
        else:
            raise _Refused(f"AFN0C F{it.fn} is not served")
    if not units:
        raise _Refused("no such measuring point")
    return units


async def _energy_now(s: _Session, meter: str) -> g.ForwardEnergy:
    now = s.c.clock.now()
    r = s.c.store.latest_realtime(meter)
    if r is None or (now - r.read_time).total_seconds() > s.o.realtime_max_age:
        log.info("%s: reading meter %s on demand for F129", s.label, meter)
        fresh = await s.c.services.read_energy_now(meter)
        r = fresh or r
    if r is None:
        return g.ForwardEnergy(None, None, ())
    return g.ForwardEnergy(r.read_time.replace(second=0, microsecond=0), r.fwd_total,
                           tuple(r.fwd_tariffs))


async def _class2(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]
                  ) -> list[g.DataUnit]:
    units = []
    for it in items:
        if it.fn == 161 and isinstance(it.value, g.DayRequest):
            for pn, meter in _points(s, it.pn):
                d = s.c.store.daily(meter, it.value.day)
                v = (g.DailyForwardEnergy(it.value.day, None, None, ()) if d is None else
                     g.DailyForwardEnergy(d.freeze_date, d.read_time.replace(second=0,
                                                                               microsecond=0),
                                          d.fwd_total, tuple(d.fwd_tariffs)))
                units.append(g.unit(pn, 161, v))
        elif it.fn == ob.FN_LINE_LOSS and isinstance(it.value, g.DayRequest):
            ll = s.c.store.line_loss(it.value.day)
            if ll is not None:
                units.append(ob.line_loss_unit(ll))
        else:
            raise _Refused(f"AFN0D F{it.fn} is not served")
    if not units:
        raise _Refused("no data for the request")
    return units


async def _class3(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]
                  ) -> list[g.DataUnit]:
    units = []
    point_of = s.c.point_map()
    for it in items:
        if it.fn not in (1, 2) or not isinstance(it.value, g.EventRequest):
            raise _Refused(f"AFN0E F{it.fn} is not served")
        important = it.fn == 1
        pn_end, events = s.c.events.records(important, it.value.pm, it.value.pn)
        ec1, ec2 = s.c.events.counters()
        recs = tuple(g.EventRecord(e.erc, ob.EventRecordData(
            e.time.replace(second=0, microsecond=0),
            point_of.get(e.meter, 0) if e.meter else 0, e.detail).encode()) for e in events)
        units.append(g.unit(0, it.fn, g.EventReply(ec1, ec2, it.value.pm, pn_end, recs)))
    return units


async def _forward(s: _Session, req: g.Frame13761, items: list[g.DecodedUnit]
                   ) -> _Ack | list[g.DataUnit]:
    if items and all(it.fn == g.FN_METER_CONTROL for it in items):
        return _Ack([(it.pn, it.fn, await _meter_control(s, it.pn, it.value)) for it in items])
    units = []
    for it in items:
        v = it.value
        if it.fn != 1 or not isinstance(v, g.TransparentForward):
            raise _Refused(f"AFN10 F{it.fn} is not served")
        try:
            meter = dlt645.decode(v.payload).address
        except CodecError as exc:
            raise _Refused(f"forwarded bytes are not a DL/T 645 frame: {exc}") from exc
        t = v.frame_timeout & 0x7F
        timeout = float(t) if v.frame_timeout & 0x80 else t / 100.0
        log.info("%s: forwarding %d bytes to meter %s (timeout %.1f s)", s.label,
                 len(v.payload), meter, timeout)
        answer = await s.c.services.forward_645(meter, v.payload, max(timeout, 0.1))
        if answer is None:
            log.warning("%s: meter %s did not answer the forwarded frame", s.label, meter)
        units.append(g.unit(0, 1, g.TransparentReply(v.port, answer or b"")))
    return units


async def _meter_control(s: _Session, pn: int, v: g.MeterControl) -> bool:
    """AFN10 F2043: confirmed once the trip/close is queued; the outcome comes as ERC5."""
    meter = v.meter
    if pn != 0:
        at_point = _meter_at(s, pn)
        if at_point is None or (meter is not None and meter != at_point):
            log.warning("%s: direct %s for p%d (meter %s) denied: not the meter at that point",
                        s.label, v.action_name, pn, meter)
            return False
        meter = at_point
    if meter is None or s.c.store.meter(meter) is None:
        log.warning("%s: direct %s denied: meter %s is not in the archive", s.label,
                    v.action_name, meter)
        return False
    try:
        ticket = await s.c.services.request_control(meter, v.action_name, _SOURCE)
    except (ValueError, LookupError) as exc:
        log.warning("%s: direct %s of meter %s refused: %s", s.label, v.action_name, meter, exc)
        return False
    ok = ticket.state != "failed"
    log.warning("%s: direct %s of meter %s requested by the master: ticket %d %s", s.label,
                v.action_name, meter, ticket.id, ticket.state)
    return ok


_HANDLERS: dict[int, Handler] = {
    0x01: _reset, 0x04: _set_params, 0x05: _control, 0x09: _config, 0x0A: _query,
    0x0C: _class1, 0x0D: _class2, 0x0E: _class3, 0x10: _forward,
}
