"""The meter reading engine: runs the reading tasks' rounds through the mesh and stores results.

``Reader`` owns the schedule. For each enabled ``Task`` it waits for the task's next round
window, reads every meter of the archive once (``_pass``), then makes *make-up passes* over the
meters that failed, ``task.retry_pause_s`` apart, until all are read or the window closes.
Retries of a single read are the mesh's business: ``exchange`` tries the alternate routes.

* **Concurrency**: at most ``max_concurrent`` exchanges are in flight (the module's limit,
  1 for narrowband PLC). Meters are read subtree by subtree of the routing tree
  (``order_for_channel``), so the reads in flight at once are in one neighbourhood whose
  nodes hear each other and defer (carrier sense), instead of being hidden from each other
  and colliding at the concentrator's module: on a 1,000-meter HPLC street district the
  first exchange was answered on the primary route 96.6 % of the time with subtrees
  interleaved, 98.7 % subtree by subtree (``bench/read.py``; issue 5).
  ``await read_now(address, item)`` takes the next free slot before any scheduled read. A
  read that only waits for the mesh's repair of its node gives its slot back meanwhile
  (``mesh.slots``), and one more worker reads the next meters.
  Starts of concurrent exchanges are staggered by ``pace_s_per_level`` per relay level
  (their replies then reach the module apart); ``adaptive`` lowers the in-flight limit while
  first routes fail (off by default: it measured worse than pacing).
* **Make-up passes**: the first follows the first pass at once (its failures are mostly
  collisions); then ``retry_pause_s`` apart. A meter that answers "not frozen yet" with
  yesterday's freeze has its clock read (04 00 01 0C, or 01 + 02) and is read again when that
  clock passes midnight (``RoundReport.clock_behind``), or stood in for at once by its
  real-time registers when that is after the window; ``RoundReport.readable_s`` is the round
  for the meters that could be read.
* **Storage**: a round's readings, events and per-read statistics are written in batches of
  ``batch_size`` meters, one transaction per batch; a meter whose batch fails to commit counts
  as unread and is read again in the next make-up pass. Each round's summary (first-attempt and
  final success rates, unread meters with why) goes to ``Store.record_round``.
* **Summary meter and line loss**: the daily frozen round also reads the district summary
  meter (its own RS-485 port, ``summary_meter.SummaryMeter``) and then computes the line loss of
  the previous day (``lineloss.update_day``).
* **Meter clocks**: the clock task reads each meter's clock; a drift above the task's threshold
  is an ERC 12 event and, within ``clock.write_beyond_s`` (at most ±5 min), joins the broadcast
  time sync (0x08) sent after the round. Given a ``meter_clock.MeterClock``, a meter further
  off has its date and time written (0x14, password from the key store, at most once a day)
  and read back, and the event records the drift before and after.

Outcomes of a meter in a round (``MeterResult.outcome``): ``ok``; ``no_reply:<why>`` (the mesh
found no working route; ``why`` is its failure reason); ``bad_frame`` (undecodable, another
meter's or another item's reply); ``meter_error`` (an error reply other than "no such data");
``no_record`` (the freeze record is empty or is not the expected day's yet); ``not_available``
(the meter does not have the item, e.g. DL/T 645-1997 freeze records or status word 3 — not
retried and not counted in the success rates); ``window_closed``; ``store_error``.

One meter's read (``ReadRecord``) counts the routes tried over every exchange the task needs
(``attempts``: the mesh tries alternates at once) and the whole time they took (``latency_s``).
A meter is a *first-attempt success* (``first_attempt_ok``, the rate the module's low-read-rate
alarm watches) when the first exchange of its job in the first pass was answered by the meter
on its primary route; ``first_ok`` says it was *read* in the first pass (data stored, alternate
routes allowed; a meter whose clock is behind and has not frozen yet fails it); ``no_retry``:
read in the first pass with no exchange needing a second route.

The reader talks to anything with ``await exchange(address, dlt645_bytes, *, priority)`` that
returns the mesh's ``ExchangeOutcome`` (or this module's ``Exchanged``): the daemon passes the
``mesh.Mesh``, the tests a small fake.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from concentrator import dlt645, lineloss
from concentrator.clock import Clock
from concentrator.codec import CodecError, DataUnitError
from concentrator.dlt645 import ErrorBits, StatusWord3
from concentrator.store import (
    FLAG_BACKFILLED,
    FLAG_FROM_REALTIME,
    DailyReading,
    ReadRecord,
    ReadRound,
    RealtimeReading,
    Store,
    StoreError,
)
from concentrator.tasks import Task, TaskKind
from mesh.slots import holding_read_slot

__all__ = [
    "Exchanger",
    "Exchanged",
    "ItemRead",
    "MeterResult",
    "RoundReport",
    "OnDemandReading",
    "ReaderError",
    "Reader",
    "ON_DEMAND_ITEMS",
    "order_for_channel",
    "decode_daily_block",
    "DI_DAILY_BLOCK",
    "ERC_METER_CLOCK",
    "ERC_METER_FAULT",
    "ERC_READ_FAILURE",
    "ERC_STATUS_CHANGE",
]

log = logging.getLogger(__name__)

# Q/GDW 1376.1 event codes used by the reader (protocols.md §3.10).
ERC_METER_CLOCK = 12  # meter clock drift
ERC_METER_FAULT = 13  # meter fault information: here the meter's own power-down records
ERC_READ_FAILURE = 31  # RS-485 read failure (the summary meter)
ERC_STATUS_CHANGE = 33  # meter status-word change (relay opened/closed)
ERC_CLOCK_SET = 41  # Q/GDW 1376.1 ERC 41 (对时事件): here the terminal's own wall clock stepped
CLOCK_JUMP_S = 120.0  # wall time vs monotonic time disagreeing by more than this is a clock step
_EPOCH = datetime(2000, 1, 1)

OK = "ok"
BAD_FRAME = "bad_frame"
METER_ERROR = "meter_error"
NOT_AVAILABLE = "not_available"
NO_RECORD = "no_record"
WINDOW_CLOSED = "window_closed"
#: the mesh's failure reason for a meter found replaced at its spot (``Mesh.replaced_by``): the
#: make-up passes do not ask for it again; the round lists it unread with the new address
REPLACED = "replaced by "
STORE_ERROR = "store_error"

# DIs (2007 unless named _97).
DI_DAILY_TIME, DI_DAILY_FWD, DI_DAILY_REV = 0x05060000, 0x05060100, 0x05060200
# "(上 nn 次)日冻结数据块" (DL/T 645-2007 table A.6): freeze time, then the frozen items in the
# order of their DI1 (forward, reverse active, ...) concatenated with no separators.
DI_DAILY_BLOCK = 0x0506FF00
DI_HOURLY_BLOCK = 0x0504FF01
DI_FWD, DI_FWD_BLOCK, DI_REV_BLOCK = 0x00010000, 0x0001FF00, 0x0002FF00
DI_VOLT, DI_CURR, DI_POWER = 0x0201FF00, 0x0202FF00, 0x02030000
DI_DATE, DI_TIME, DI_DATETIME = 0x04000101, 0x04000102, 0x0400010C
DI_STATUS3 = 0x04000503
DI_POWER_DOWN_COUNT = 0x03110000
DI97_FWD, DI97_FWD_BLOCK, DI97_REV_BLOCK = 0x9010, 0x901F, 0x902F
DI97_VOLT, DI97_CURR, DI97_POWER, DI97_DATE, DI97_TIME = 0xB61F, 0xB62F, 0xB630, 0xC010, 0xC011

# What ``read_now`` can read: item -> protocol -> alternatives (block first, single value next).
ON_DEMAND_ITEMS: dict[str, dict[int, tuple[int, ...]]] = {
    "energy": {2007: (DI_FWD_BLOCK, DI_FWD), 1997: (DI97_FWD_BLOCK, DI97_FWD)},
    "reverse_energy": {2007: (DI_REV_BLOCK, 0x00020000), 1997: (DI97_REV_BLOCK, 0x9020)},
    "voltage": {2007: (DI_VOLT, 0x02010100), 1997: (DI97_VOLT, 0xB611)},
    "current": {2007: (DI_CURR, 0x02020100), 1997: (DI97_CURR, 0xB621)},
    "power": {2007: (DI_POWER,), 1997: (DI97_POWER,)},
    "status": {2007: (DI_STATUS3,)},
    "date": {2007: (DI_DATE,), 1997: (DI97_DATE,)},
    "time": {2007: (DI_TIME,), 1997: (DI97_TIME,)},
}


class ReaderError(ValueError):
    """A caller asked for something the reader cannot do (unknown item or meter)."""


# --- the exchange contract -----------------------------------------------------------------------

class Exchanger(Protocol):
    async def exchange(self, address: str, dlt645_bytes: bytes, *, priority: bool = False) -> Any:
        """Carry one DL/T 645 request to ``address`` and return the outcome (never raise on
        a failed read; the outcome says why)."""
        ...


@dataclass(frozen=True, slots=True)
class Exchanged:
    """One exchange as the reader sees it (the mesh's ``ExchangeOutcome`` is converted)."""

    reply: bytes | None  # the meter's DL/T 645 reply frame, None when none came
    relays: tuple[str, ...] = ()  # route of the last attempt, nearest the concentrator first
    attempts: int = 1  # transmissions made (1 = first try worked or the only try)
    latency_s: float = 0.0  # time the exchange took, all attempts
    failure: str | None = None  # why there is no reply


def _normalize(raw: Any) -> Exchanged:
    """The mesh's outcome (or an ``Exchanged``) as an ``Exchanged``."""
    if isinstance(raw, Exchanged):
        return raw
    reply = getattr(raw, "reply", None)
    relays = getattr(raw, "relays", None)
    if relays is None:
        route = getattr(raw, "route", ())
        relays = getattr(route, "relays", route) or ()
    attempts = getattr(raw, "attempts", 1)
    if not isinstance(attempts, int):
        attempts = len(attempts) or 1
    latency = getattr(raw, "latency_s", None)
    if latency is None:
        latency = getattr(raw, "latency", None) or getattr(raw, "elapsed", 0.0)
    failure = getattr(raw, "failure", None)
    if reply is None and failure is None:
        failure = "no reply"
    return Exchanged(reply, tuple(relays), attempts, float(latency or 0.0),
                     None if failure is None else str(failure))


# --- results ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ItemRead:
    """One data item read from a meter."""

    value: Any
    status: str  # OK or one of the outcome strings
    exchanged: Exchanged | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True, slots=True)
class MeterResult:
    """How one meter fared in one round."""

    meter: str
    ok: bool
    outcome: str  # final: OK or why it was not read
    first_ok: bool  # read in the first pass (the mesh may have tried alternate routes)
    no_retry: bool  # read in the first pass with every exchange on its first route
    first_outcome: str
    attempts: int  # transmissions over all passes
    latency_s: float  # time of the last pass's read
    route: tuple[str, ...]  # relays of the last exchange
    passes: int  # passes in which the meter was tried
    applicable: bool = True  # False: the meter lacks the item (not counted in the rates)
    #: the operator's "first attempt" (the module's read-rate figure): in the first pass, the
    #: job's first exchange was answered by the meter on its primary route (the module's own
    #: retries inside that exchange are part of the attempt; a second route or a make-up pass
    #: is not). A meter that answers "not frozen yet" (clock behind) was reached: it counts
    #: here and fails ``first_ok``
    first_attempt_ok: bool = False


@dataclass(frozen=True, slots=True)
class RoundReport:
    """What a round did (also stored, without the per-meter details, as a ``ReadRound``)."""

    task: str
    kind: str
    opens: datetime
    closes: datetime
    start: datetime
    end: datetime
    duration_s: float  # monotonic seconds from the first read to the last (make-ups included)
    first_pass_s: float  # monotonic seconds of the first pass over all meters
    meters: int  # meters the round had to read (applicable ones)
    first_rate: float  # share read in the first pass (alternate routes allowed)
    final_rate: float
    no_retry_rate: float  # share read in the first pass with no alternate route needed
    unread: Mapping[str, str]
    results: Mapping[str, MeterResult]
    passes: int
    exchanges: int
    skipped: int = 0  # already stored before the round started (restart inside a window)
    summary_ok: bool | None = None  # daily frozen: the summary meter was read (None: none)
    line_loss: lineloss.LineLoss | None = None
    #: share reached on the first attempt (``MeterResult.first_attempt_ok``): issue 5's figure
    first_attempt_rate: float = 0.0
    #: seconds from the first read until the last meter read in the round was: meters whose
    #: own clock had not reached the freeze yet (``clock_behind``) are left out, nobody can
    #: read their freeze earlier, and so are meters never read (they are in ``unread``);
    #: the round's duration for issue 5
    readable_s: float = 0.0
    #: daily frozen: meters found not frozen yet -> seconds their clock was behind midnight
    #: (each read once when its clock passes midnight, or stood in for if that is too late)
    clock_behind: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OnDemandReading:
    """Result of ``Reader.read_now``."""

    meter: str
    item: str
    ok: bool
    value: Any
    outcome: str
    route: tuple[str, ...]
    attempts: int
    latency_s: float


# --- ordering -------------------------------------------------------------------------------------

def order_for_channel(addresses: Iterable[str],
                      route_of: Callable[[str], Sequence[str] | None] | None = None) -> list[str]:
    """Meters in an order that keeps the reads in flight at once in one neighbourhood.

    Meters are grouped by the first relay of their route (a direct meter heads the group of the
    meters relayed through it); within a group they come depth first along their routes
    (a relay before the meters behind it). Concurrent reads then go to nodes that hear each
    other, so their frames defer to each other instead of colliding as hidden nodes at the
    module. Without ``route_of`` the order is by address.
    """
    addrs = sorted(set(addresses))
    if route_of is None:
        return addrs

    def key(a: str) -> tuple[str, tuple[str, ...], str]:
        try:
            relays = tuple(route_of(a) or ())
        except Exception:  # a meter the mesh does not know yet: read it, on its own
            relays = ()
        return (relays[0] if relays else a), relays, a

    return sorted(addrs, key=key)


# --- the priority slot pool ---------------------------------------------------------------------

class _Slots:
    """``n`` exchange slots; waiters with ``priority`` are served before the others."""

    def __init__(self, n: int) -> None:
        self.n = max(1, n)
        self._busy = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: bool) -> None:
        if self._busy < self.n and not self._waiters:
            self._busy += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (0 if priority else 1, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            raise

    def release(self) -> None:
        if self._busy > self.n:  # the limit was lowered: this slot is not handed on
            self._busy -= 1
            return
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot passes straight to the waiter
                return
        self._busy -= 1

    def resize(self, n: int) -> None:
        """A new limit; a raised one lets waiters in at once, a lowered one as slots free."""
        self.n = max(1, n)
        while self._busy < self.n and self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                self._busy += 1
                fut.set_result(None)


# --- per-meter jobs -----------------------------------------------------------------------------

@dataclass(slots=True)
class _Job:
    """What one meter's read in one pass produced."""

    meter: str
    status: str = OK
    detail: str = ""
    attempts: int = 0
    exchanges: int = 0
    latency_s: float = 0.0
    route: tuple[str, ...] = ()
    writes: list[tuple[str, Any]] = field(default_factory=list)
    applicable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    first_answered: bool | None = None  # the first exchange was answered on the first route

    def add(self, item: ItemRead) -> ItemRead:
        ex = item.exchanged
        if ex is not None:
            if self.first_answered is None:
                self.first_answered = ex.reply is not None and ex.attempts <= 1 \
                    and item.status != BAD_FRAME
            self.attempts += ex.attempts
            self.exchanges += 1
            self.latency_s += ex.latency_s
            self.route = ex.relays
        return item

    def fail(self, item: ItemRead) -> _Job:
        self.status = item.status
        self.detail = item.detail
        if item.status == NOT_AVAILABLE:
            self.applicable = False
        return self

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def first_try(self) -> bool:
        return self.ok and self.attempts == self.exchanges


ADAPT_FLOOR = 3  # adaptive in-flight limit: never below this (3 in flight: 99.5 % first try)
ADAPT_RAISE_AFTER = 20  # ... and one more after this many first-route answers in a row
#: the pass whose worker makes the current read: (on_lend, on_return) for its read slot
_PASS_LENDING: contextvars.ContextVar[tuple[Callable[[], None], Callable[[], None]] | None] = \
    contextvars.ContextVar("reader_pass_lending", default=None)
# Stagger of exchange starts per relay level (+1 for the meter's hop) when reads run
# concurrently: on 1,000 HPLC meters 0 s gave 97.9 % first attempt in 223 s, 0.1 s 99.1 % in
# 232 s, 0.15 s 99.4 % in 296 s, 0.2 s 99.0 % in 401 s (bench/read.py, issue 5).
PACE_S_PER_LEVEL = 0.1
QUICK_MAKEUP_PAUSE_S = 5.0  # pause before the first make-up pass (the others: retry_pause_s)
FREEZE_MARGIN_S = 30.0  # a behind meter is read this long after its clock passes midnight
BACKFILL_RETRY_PASSES = 3  # make-up passes that retry a failed back-fill of a missed day


@dataclass(slots=True)
class _RoundCtx:
    task: Task
    opens: datetime
    closes: datetime
    day: date
    protocols: dict[str, int]
    missing: dict[str, list[date]] = field(default_factory=dict)
    backfilled_days: set[date] = field(default_factory=set)
    kv: dict[str, Any] = field(default_factory=dict)
    drifting: dict[str, float] = field(default_factory=dict)
    #: daily frozen: meters whose clock has not reached the freeze yet -> when (terminal wall
    #: time) it will; the make-up passes read each of them then, not every retry pause
    freeze_due: dict[str, datetime] = field(default_factory=dict)
    #: ... and every meter found so this round -> seconds its clock was behind midnight
    clock_behind: dict[str, float] = field(default_factory=dict)


def _protocol(text: str | None) -> int:
    return 1997 if text and "1997" in text else 2007


class Reader:
    """Schedules and runs the reading tasks of one district (see the module docstring)."""

    def __init__(
        self,
        exchanger: Exchanger,
        store: Store,
        clock: Clock,
        tasks: Sequence[Task],
        *,
        max_concurrent: int = 1,
        summary: Any = None,
        route_of: Callable[[str], Sequence[str] | None] | None = None,
        broadcaster: Callable[[bytes], Awaitable[Any]] | None = None,
        lineloss_threshold: float = 10.0,
        batch_size: int = 64,
        on_round: Callable[[RoundReport], None] | None = None,
        adaptive: bool = False,
        pace_s_per_level: float = PACE_S_PER_LEVEL,
        meter_clock: Any = None,
    ) -> None:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ReaderError(f"task names must be unique: {names}")
        self.exchanger = exchanger
        self.store = store
        self.clock = clock
        self.tasks = list(tasks)
        self.max_concurrent = max(1, int(max_concurrent))
        self.summary = summary  # SummaryMeter (or anything with .address and .exchange)
        self.route_of = route_of
        self.broadcaster = broadcaster
        self.lineloss_threshold = float(lineloss_threshold)
        self.batch_size = max(1, int(batch_size))
        self.on_round = on_round
        #: ``meter_clock.MeterClock``: writes far-off meters' clocks (None: broadcast only)
        self.meter_clock = meter_clock
        self._slots = _Slots(self.max_concurrent)
        #: lower the in-flight limit when a first route fails, raise it after successes
        self.adaptive = bool(adaptive)
        self._streak = 0
        #: stagger: an exchange starts at least this many seconds per relay level (+1 for the
        #: meter's own hop) after the previous exchange started
        self.pace_s_per_level = max(0.0, float(pace_s_per_level))
        self._next_start = 0.0
        #: 2007 meters that answered the daily freeze block with an error (or a layout we
        #: cannot split): read with the separate DIs from then on
        self.no_daily_block: set[str] = set()
        self._pending_writes: list[tuple[str, list[tuple[str, Any]]]] = []
        self.reports: list[RoundReport] = []
        #: wall time minus monotonic time when last looked at; a change is a wall-clock step
        self._wall_offset: float | None = None

    # --- running the schedule ---------------------------------------------------------------

    def set_max_concurrent(self, n: int) -> None:
        """Follow the module's limit once it is known (the daemon learns it at connect)."""
        self.max_concurrent = max(1, int(n))
        self._slots.resize(self.max_concurrent)

    async def run(self) -> None:
        """Run every enabled task's schedule until cancelled."""
        loops = [asyncio.create_task(self._task_loop(t), name=f"task-{t.name}")
                 for t in self.tasks if t.enabled]
        try:
            await asyncio.gather(*loops)
        finally:
            for t in loops:
                t.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    def _done_key(self, task: Task) -> str:
        return f"reader.done.{task.name}"

    def _check_clock_step(self) -> None:
        """One event (ERC 41) and one log line when the wall clock stepped against monotonic."""
        now, mono = self.clock.now(), self.clock.monotonic()
        offset = (now - _EPOCH).total_seconds() - mono   # naive: no host time-zone rules
        last, self._wall_offset = self._wall_offset, offset
        if last is None or abs(offset - last) <= CLOCK_JUMP_S:
            return
        step = offset - last
        before = now - timedelta(seconds=step)
        log.warning("terminal clock stepped by %+.0f s (%s -> %s)", step,
                    before.isoformat(timespec="seconds"), now.isoformat(timespec="seconds"))
        try:
            self.store.add_event(ERC_CLOCK_SET, None, {
                "fault": "clock_step", "before": before.isoformat(timespec="seconds"),
                "after": now.isoformat(timespec="seconds"), "step_s": round(step)}, time=now)
        except StoreError as exc:
            log.error("clock step event not stored: %s", exc)

    def _skipped_window(self, task: Task, now: datetime, since: datetime,
                        done: str | None) -> tuple[datetime, datetime] | None:
        """A daily window that opened after ``since`` and closed unread (the clock stepped over
        it): a late round of it, from now for one window length."""
        if task.kind is not TaskKind.DAILY_FROZEN or done is None:
            return None
        past = [o for d in (now.date() - timedelta(days=1), now.date())
                for o, c in task.windows_on(d) if since < o and c <= now]
        if not past or done >= past[-1].isoformat():
            return None
        log.warning("task %s: window %s passed unread (clock step); late round now", task.name,
                    past[-1].strftime("%Y-%m-%d %H:%M"))
        return past[-1], now + timedelta(seconds=task.window_s)

    async def _task_loop(self, task: Task) -> None:
        since = self.clock.now()
        while True:
            self._check_clock_step()
            now = self.clock.now()
            win = task.window_at(now)
            done = self.store.kv_get(self._done_key(task))
            if win is None:
                win = self._skipped_window(task, now, since, done)
            if win is not None and (done is None or done < win[0].isoformat()):
                try:
                    await self.run_round(task, *win)
                except asyncio.CancelledError:
                    raise
                except Exception:  # one broken round must not end the schedule
                    log.exception("task %s: round %s failed", task.name, win[0])
                    self.store.kv_set(self._done_key(task), win[0].isoformat())
                continue
            opens, _ = task.next_window(now)
            # Sleep in slices so a wall-clock jump (time sync) is noticed.
            delay = (opens - now).total_seconds()
            await asyncio.sleep(min(max(delay, 0.0), 600.0))

    # --- one round -----------------------------------------------------------------------------

    def _meters(self) -> dict[str, int]:
        summary = getattr(self.summary, "address", None)
        return {m.address: _protocol(m.protocol)
                for m in self.store.meters(include_quarantined=False)
                if m.device_kind == "meter" and m.address != summary}

    async def run_round(self, task: Task, opens: datetime | None = None,
                        closes: datetime | None = None) -> RoundReport:
        """Run one round of ``task`` now: first pass, then make-up passes until the window closes."""
        loop = asyncio.get_running_loop()
        start_wall = self.clock.now()
        if opens is None or closes is None:
            opens = start_wall
            closes = start_wall + timedelta(seconds=task.window_s)
        protocols = self._meters()
        ctx = _RoundCtx(task, opens, closes, opens.date(), protocols)
        todo = sorted(protocols)
        skipped = 0
        if task.kind is TaskKind.DAILY_FROZEN:
            todo, skipped = self._prepare_daily(ctx, todo)
        elif task.kind in (TaskKind.POWER_DOWN, TaskKind.RELAY):
            ctx.kv = dict(self.store.kv_get(f"reader.{task.kind.value}", {}) or {})
        log.info("task %s: round %s opens (%d meters, %d already stored, window to %s)",
                 task.name, opens.strftime("%Y-%m-%d %H:%M"), len(todo), skipped,
                 closes.strftime("%H:%M"))
        summary_job = None
        if task.kind is TaskKind.DAILY_FROZEN and self.summary is not None:
            summary_job = asyncio.create_task(self._summary_round(ctx))

        t0 = loop.time()
        results: dict[str, MeterResult] = {}
        pending = order_for_channel(todo, self.route_of)
        passes = exchanges = 0
        first_pass = 0.0
        read_at: dict[str, float] = {}  # meter -> end of the pass that read it (round seconds)
        retry_at: dict[str, datetime] = {}  # meter still to read -> when its next pass is
        try:
            while pending:
                passes += 1
                exchanges += await self._pass(ctx, pending, results, passes)
                if passes == 1:
                    first_pass = loop.time() - t0
                for m in pending:
                    if m in results and results[m].ok:
                        read_at.setdefault(m, loop.time() - t0)
                unread = [m for m, r in results.items() if not r.ok and r.applicable
                          and r.outcome != WINDOW_CLOSED and REPLACED not in r.outcome]
                if passes <= BACKFILL_RETRY_PASSES:
                    # Meters read today whose back-fill failed get the missed days again (the
                    # line loss of a back-filled day needs every meter's two freezes).
                    unread += [m for m in ctx.missing if m in results and results[m].ok
                               and m != getattr(self.summary, "address", None)
                               and any(self.store.daily(m, b) is None for b in ctx.missing[m])]
                now = self.clock.now()
                # The last pass starts a full pause before the window closes, not in its last
                # seconds: meters stood in for (clock behind) are read in that pass only (found
                # by the clock-step scenario: 7 of 20 meters lost a day).
                pause = task.retry_pause_s
                if passes == 1:
                    # The first pass's failures are mostly collisions of concurrent replies,
                    # gone a moment later: the first make-up pass follows at once.
                    pause = min(pause, QUICK_MAKEUP_PAUSE_S)
                left = (closes - now).total_seconds()
                if left - pause < pause:
                    pause = max(0.0, left - pause)
                # Who is read when: a meter whose clock is behind when it freezes, the others
                # one pause after this pass (none after the last pass).
                tried = set(pending)
                due = {m: ctx.freeze_due.pop(m) for m in tried if m in ctx.freeze_due}
                last = now + timedelta(seconds=task.retry_pause_s) >= closes
                # A meter not tried in this pass keeps its planned time; one with none yet (a
                # back-fill that failed in an earlier pass) gets the next pass.
                retry_at = {m: retry_at[m] if m not in tried and m in retry_at else due.get(m)
                            or (None if last else now + timedelta(seconds=pause))
                            for m in unread}
                retry_at = {m: t for m, t in retry_at.items() if t is not None and t < closes}
                if not retry_at:
                    break
                wake = min(retry_at.values())
                pending = [m for m, t in retry_at.items() if t <= wake]
                log.info("task %s: %d meters unread after pass %d; make-up pass for %d in %.0f s",
                         task.name, len(retry_at), passes, len(pending),
                         (wake - now).total_seconds())
                await asyncio.sleep(max(0.0, (wake - now).total_seconds()))
                pending = order_for_channel(pending, self.route_of)
            duration = loop.time() - t0
            summary_ok = None
            if summary_job is not None:
                summary_ok = await summary_job
        except BaseException:
            if summary_job is not None:
                summary_job.cancel()
            self._flush()  # what was read is kept (a restart resumes with the rest)
            raise
        self._flush()
        ll = await self._after_round(ctx)

        applicable = [r for r in results.values() if r.applicable]
        n = len(applicable)
        first = sum(r.first_ok for r in applicable)
        no_retry = sum(r.no_retry for r in applicable)
        first_attempt = sum(r.first_attempt_ok for r in applicable)
        final = sum(r.ok for r in applicable)
        unread = {r.meter: r.outcome for r in applicable if not r.ok}
        end_wall = self.clock.now()
        # The round for the meters that could be read: until the last of them was. A meter
        # never read (gone, replaced, unreachable) is in ``unread``; letting it stretch this
        # figure to the window's end would hide how long the readable meters took.
        readable = [read_at[m] for m, r in results.items()
                    if r.applicable and m in read_at and m not in ctx.clock_behind]
        report = RoundReport(
            task=task.name, kind=task.kind.value, opens=opens, closes=closes, start=start_wall,
            end=end_wall, duration_s=duration, first_pass_s=first_pass, meters=n,
            first_rate=first / n if n else 1.0, final_rate=final / n if n else 1.0,
            no_retry_rate=no_retry / n if n else 1.0,
            unread=unread, results=results, passes=passes, exchanges=exchanges,
            skipped=skipped, summary_ok=summary_ok, line_loss=ll,
            first_attempt_rate=first_attempt / n if n else 1.0,
            readable_s=max(readable, default=0.0), clock_behind=dict(ctx.clock_behind))
        try:
            self.store.record_round(ReadRound(task.name, start_wall, end_wall, report.first_rate,
                                              report.final_rate, unread))
            self.store.kv_set(self._done_key(task), opens.isoformat())
        except StoreError as exc:
            log.error("task %s: round summary not stored: %s", task.name, exc)
        for meter, why in sorted(unread.items()):
            log.warning("task %s: meter %s not read in round %s: %s", task.name, meter,
                        opens.strftime("%Y-%m-%d %H:%M"), why)
        log.info("task %s: round %s done in %.0f s (%.0f s for the %d meters whose clock had "
                 "frozen): %d meters, first attempt %.2f%%, first pass %.2f%%, final %.2f%%, "
                 "%d passes, %d exchanges", task.name, opens.strftime("%Y-%m-%d %H:%M"),
                 duration, report.readable_s, len(readable), n, 100 * report.first_attempt_rate,
                 100 * report.first_rate, 100 * report.final_rate, passes, exchanges)
        self.reports.append(report)
        if self.on_round is not None:
            self.on_round(report)
        return report

    async def _pass(self, ctx: _RoundCtx, meters: list[str], results: dict[str, MeterResult],
                    pass_no: int) -> int:
        queue = deque(meters)
        count = [0]

        async def one(meter: str) -> None:
            try:
                job = await self._job(ctx, meter)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or a dead link: log, count, keep reading
                log.exception("task %s: meter %s read failed", ctx.task.name, meter)
                job = _Job(meter, f"error:{type(exc).__name__}")
            count[0] += job.exchanges
            job.writes.append(("read", ReadRecord(
                meter, ctx.task.name, job.route, job.attempts,
                round(job.latency_s, 3) if job.exchanges else None,
                job.status if not job.detail else f"{job.status}:{job.detail}"[:120],
                self.clock.now())))
            self._result(results, job, pass_no)
            self._pending_writes.append((meter, job.writes))
            if len(self._pending_writes) >= self.batch_size:
                self._flush(results)

        async def worker() -> None:
            while queue:
                if self.clock.now() >= ctx.closes:
                    while queue:
                        m = queue.popleft()
                        self._result(results, _Job(m, WINDOW_CLOSED), pass_no)
                    return
                await one(queue.popleft())

        # A read that waits for a repair lends its slot (mesh.slots): one more worker reads
        # the next meters meanwhile, so the round does not stand still behind it.
        lent = [0]
        helpers: set[asyncio.Task[None]] = set()

        async def helper() -> None:
            while queue and lent[0] > 0 and self.clock.now() < ctx.closes:
                await one(queue.popleft())

        def on_lend() -> None:
            lent[0] += 1
            if queue:
                task = asyncio.get_running_loop().create_task(helper())
                helpers.add(task)
                task.add_done_callback(helpers.discard)

        def on_return() -> None:
            lent[0] -= 1

        token = _PASS_LENDING.set((on_lend, on_return))
        try:
            n = min(self.max_concurrent, len(queue)) or 1
            await asyncio.gather(*(worker() for _ in range(n)))
            while helpers:
                await asyncio.gather(*helpers)
        finally:
            _PASS_LENDING.reset(token)
            for task in list(helpers):
                task.cancel()
        self._flush(results)
        return count[0]

    @staticmethod
    def _result(results: dict[str, MeterResult], job: _Job, pass_no: int) -> None:
        prev = results.get(job.meter)
        results[job.meter] = MeterResult(
            meter=job.meter, ok=job.ok, outcome=job.status if not job.detail
            else f"{job.status}:{job.detail}", first_ok=prev.first_ok if prev else job.ok,
            no_retry=prev.no_retry if prev else job.first_try,
            first_outcome=prev.first_outcome if prev else job.status,
            attempts=(prev.attempts if prev else 0) + job.attempts, latency_s=job.latency_s,
            route=job.route, passes=(prev.passes if prev else 0) + 1, applicable=job.applicable,
            first_attempt_ok=prev.first_attempt_ok if prev else bool(job.first_answered))

    def _flush(self, results: dict[str, MeterResult] | None = None) -> None:
        """Write the buffered jobs in one transaction (no awaits in here: one shared connection)."""
        if not self._pending_writes:
            return
        batch, self._pending_writes = self._pending_writes, []
        try:
            with self.store.batch():
                for _meter, writes in batch:
                    for kind, obj in writes:
                        self._apply(kind, obj)
        except StoreError as exc:
            log.error("store: batch of %d meters rolled back: %s", len(batch), exc)
            if results is not None:
                for meter, _ in batch:
                    r = results.get(meter)
                    if r is not None and r.ok:
                        results[meter] = MeterResult(
                            r.meter, False, STORE_ERROR, False, False, r.first_outcome,
                            r.attempts, r.latency_s, r.route, r.passes, r.applicable, False)

    def _apply(self, kind: str, obj: Any) -> None:
        s = self.store
        if kind == "daily":
            s.write_daily(obj)
        elif kind == "read":
            s.record_read(obj)
        elif kind == "curve":
            meter, day, points, density = obj
            s.write_curve(meter, day, points, density_min=density)
        elif kind == "realtime":
            s.write_realtime(obj)
        elif kind == "event":
            erc, meter, detail, when = obj
            s.add_event(erc, meter, detail, time=when)
        else:  # pragma: no cover - internal misuse
            raise StoreError(f"unknown write kind {kind}")

    # --- reading one item -------------------------------------------------------------------

    @property
    def in_flight_limit(self) -> int:
        """Exchanges allowed in flight now (``max_concurrent`` unless adaptive lowered it)."""
        return self._slots.n

    def _adapt(self, ex: Exchanged) -> None:
        """Adaptive in-flight limit: one less when the first route of an exchange failed
        (replies of concurrent reads collided), one more after ADAPT_RAISE_AFTER exchanges in a
        row answered on their first route; between ADAPT_FLOOR and ``max_concurrent``."""
        if not self.adaptive or self.max_concurrent <= 1:
            return
        n = self._slots.n
        if ex.reply is None or ex.attempts > 1:
            self._streak = 0
            if n > min(ADAPT_FLOOR, self.max_concurrent):
                self._slots.resize(n - 1)
                log.debug("in-flight limit %d -> %d", n, n - 1)
            return
        self._streak += 1
        if self._streak >= ADAPT_RAISE_AFTER and n < self.max_concurrent:
            self._streak = 0
            self._slots.resize(n + 1)
            log.debug("in-flight limit %d -> %d", n, n + 1)

    async def _pace(self, address: str) -> None:
        """Stagger the starts of concurrent exchanges by the relay depth of the one started."""
        if self.pace_s_per_level <= 0 or self.max_concurrent <= 1:
            return
        loop = asyncio.get_running_loop()
        wait = self._next_start - loop.time()
        levels = 0
        if self.route_of is not None:
            try:
                levels = len(self.route_of(address) or ())
            except Exception:  # a meter the mesh does not know yet
                levels = 0
        self._next_start = max(self._next_start, loop.time()) + \
            self.pace_s_per_level * (levels + 1)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _exchange(self, address: str, request: bytes, priority: bool) -> Exchanged:
        # The mesh gives the slot back while the read only waits for a repair (mesh.slots);
        # within a pass another worker takes it meanwhile (``_pass``).
        lending = _PASS_LENDING.get()
        async with holding_read_slot(lambda: self._slots.acquire(priority), self._slots.release,
                                     *(lending or ())):
            if not priority:
                await self._pace(address)
            raw = await self.exchanger.exchange(address, request, priority=priority)
        ex = _normalize(raw)
        self._adapt(ex)
        return ex

    async def read_item(self, address: str, di: int, protocol: int = 2007, *,
                        priority: bool = False, via: Exchanger | None = None,
                        decode: Callable[[bytes], Any] | None = None) -> ItemRead:
        """Read one data item from a meter and decode it (never raises on a bad answer).

        ``decode`` turns the value bytes into the value for a DI the codec's registry does not
        describe (it raises ``CodecError`` on a layout it cannot read)."""
        if protocol == 1997:
            request = dlt645.encode(dlt645.read_request_1997(address, di))
        else:
            request = dlt645.encode(dlt645.read_request(address, di))
        if via is None:
            ex = await self._exchange(address, request, priority)
        else:
            ex = _normalize(await via.exchange(address, request, priority=priority))
        return _decode_reply(address, di, protocol, ex, decode)

    # --- daily frozen ------------------------------------------------------------------------

    def _prepare_daily(self, ctx: _RoundCtx, meters: list[str]) -> tuple[list[str], int]:
        day = ctx.day
        stored = {r.meter for r in self.store.daily_for_date(day)}
        todo = [m for m in meters if m not in stored]
        first_key = f"reader.first_day.{ctx.task.name}"
        first_text = self.store.kv_get(first_key)
        if first_text is None:
            # Days before the concentrator first read this district are not back-filled: an
            # empty archive would otherwise re-read every meter's last days on the first day.
            self.store.kv_set(first_key, day.isoformat())
            first = day
        else:
            first = date.fromisoformat(first_text)
        since = max(first, day - timedelta(days=ctx.task.backfill_days))
        b = since
        while b < day:
            have = {r.meter for r in self.store.daily_for_date(b)}
            for m in meters:
                if m not in have:
                    ctx.missing.setdefault(m, []).append(b)
            b += timedelta(days=1)
        if ctx.missing:
            log.info("task %s: %d meters miss days since %s; back-filling", ctx.task.name,
                     len(ctx.missing), since)
        # A meter read earlier today (restart inside the window) only needs its back-fill.
        extra = [m for m in ctx.missing if m in stored]
        return todo + extra, len(stored) - len(extra)

    async def _daily_job(self, ctx: _RoundCtx, meter: str, protocol: int,
                         via: Exchanger | None = None) -> _Job:
        job = _Job(meter)
        day = ctx.day
        now = self.clock.now()
        if protocol == 1997:
            # No freeze records in DL/T 645-1997: the real-time registers read inside the window
            # stand in for the freeze (flagged), and missed days cannot be back-filled.
            fwd = job.add(await self._read_alt(meter, (DI97_FWD_BLOCK, DI97_FWD), 1997, via))
            if not fwd.ok:
                return job.fail(fwd)
            rev = job.add(await self._read_alt(meter, (DI97_REV_BLOCK, 0x9020), 1997, via)) \
                if ctx.task.reverse else None
            if rev is not None and not rev.ok and rev.status != NOT_AVAILABLE:
                return job.fail(rev)
            f_total, f_tar = _split_block(fwd.value)
            r_total, r_tar = _split_block(rev.value) if rev is not None and rev.ok else (None, ())
            job.writes.append(("daily", DailyReading(
                meter, day, f_total, self.clock.now(), f_tar, r_total, r_tar,
                freeze_time=None, flags=FLAG_FROM_REALTIME)))
            return job
        if meter not in ctx.missing or self.store.daily(meter, day) is None:
            got = await self._read_freeze(job, meter, 1, day, via, ctx.task.reverse)
            last = job.extra.get("last_freeze")
            last_pass = self.clock.now() + timedelta(seconds=ctx.task.retry_pause_s) >= ctx.closes
            due = None
            if not got and last is not None and (day - last.date()).days == 1 and not last_pass:
                # Yesterday's freeze is its last: the meter's clock has not reached midnight.
                due = await self._freeze_due(job, ctx, meter, via)
            if not got and last is not None and last.date() < day and (
                    (day - last.date()).days >= 2 or last_pass
                    or (due is not None and due + timedelta(seconds=FREEZE_MARGIN_S) >= ctx.closes)):
                # The meter's clock is far behind: it will not have frozen today before the
                # window closes. Its real-time registers stand in (flagged), as for a meter
                # without freeze records, and the clock fault becomes an event. If that read
                # fails, the make-up passes try it again: its freeze time, after the window,
                # must not plan it out of them (the clock-step scenario lost a day so).
                ctx.freeze_due.pop(meter, None)
                return await self._daily_from_realtime(job, ctx, meter, last, via)
            if not got:
                return job
            ft, f, r = got
            job.writes.append(("daily", DailyReading(
                meter, day, f[0], now, f[1], r[0], r[1], freeze_time=ft)))
        for b in ctx.missing.get(meter, ()):
            nn = (day - b).days + 1
            sub = _Job(meter)
            got = await self._read_freeze(sub, meter, nn, b, via, ctx.task.reverse)
            job.attempts += sub.attempts
            job.exchanges += sub.exchanges
            job.latency_s += sub.latency_s
            if got:
                ft, f, r = got
                job.writes.append(("daily", DailyReading(
                    meter, b, f[0], self.clock.now(), f[1], r[0], r[1], freeze_time=ft,
                    flags=FLAG_BACKFILLED)))
                ctx.backfilled_days.add(b)
                log.info("meter %s: daily frozen %s back-filled from record %d", meter, b, nn)
            else:
                log.info("meter %s: daily frozen %s not back-filled: %s", meter, b, sub.status)
        return job

    async def _freeze_due(self, job: _Job, ctx: _RoundCtx, meter: str,
                          via: Exchanger | None) -> datetime | None:
        """When (terminal wall time) a meter whose clock is behind will freeze ``ctx.day``.

        Reads the meter's clock (04 00 01 0C, or 04 00 01 01 + 02 when the meter lacks it); the
        freeze is taken when that clock passes midnight. Recorded in ``ctx.freeze_due`` (the
        make-up passes read the meter then) unless it is already due; None when the clock
        could not be read (the meter is then retried every ``retry_pause_s`` as before)."""
        sub = _Job(meter)
        dt = sub.add(await self.read_item(meter, DI_DATETIME, via=via))
        if dt.status == NOT_AVAILABLE:
            d = sub.add(await self.read_item(meter, DI_DATE, via=via))
            t = sub.add(await self.read_item(meter, DI_TIME, via=via)) if d.ok else d
            dt = ItemRead(datetime.combine(d.value, t.value) if t.ok and d.value else None,
                          t.status, t.exchanged)
        job.attempts += sub.attempts
        job.exchanges += sub.exchanges
        job.latency_s += sub.latency_s
        if not dt.ok or not isinstance(dt.value, datetime):
            log.info("meter %s: not frozen yet and its clock unreadable (%s)", meter, dt.status)
            return None
        now = self.clock.now()
        lat = dt.exchanged.latency_s if dt.exchanged is not None else 0.0
        meter_now = dt.value + timedelta(seconds=lat / 2)  # read about half the exchange ago
        behind = (datetime.combine(ctx.day, datetime.min.time()) - meter_now).total_seconds()
        if behind <= 0:
            return None  # its clock is past midnight: the freeze is late, retry as usual
        due = now + timedelta(seconds=behind + FREEZE_MARGIN_S)
        ctx.freeze_due[meter] = due
        ctx.clock_behind[meter] = round(behind, 1)
        job.detail = f"clock {behind:.0f} s behind, freezes at {due:%H:%M:%S}"
        log.info("meter %s: not frozen yet, its clock is %.0f s behind; read again at %s", meter,
                 behind, due.strftime("%H:%M:%S"))
        return due

    async def _read_freeze(self, job: _Job, meter: str, nn: int, want: date,
                           via: Exchanger | None, reverse: bool = True
                           ) -> tuple[datetime, tuple[Any, tuple[Any, ...]],
                                      tuple[Any, tuple[Any, ...]]] | None:
        """Freeze record ``nn`` back if it is ``want``'s; on a one-off shift, the right record.

        One exchange when the meter has the daily freeze block (05 06 FF nn); otherwise (an
        error reply, or a block laid out in a way we cannot split) the separate freeze time,
        forward and reverse DIs, and the meter is remembered in ``no_daily_block``.
        """
        block_failed = False
        if meter not in self.no_daily_block:
            got = await self._read_freeze_block(job, meter, nn, want, via, reverse)
            if got is not _NO_BLOCK:
                return got
            block_failed = True
        for _ in range(2):
            t = job.add(await self.read_item(meter, DI_DAILY_TIME | nn, via=via))
            if not t.ok:
                job.fail(t)
                return None
            if block_failed:
                # The meter has freeze records but not the block: read it item by item from now on.
                block_failed = False
                self.no_daily_block.add(meter)
                log.info("meter %s: no daily freeze block, reading the freeze item by item", meter)
            if t.value is None:
                job.fail(ItemRead(None, NO_RECORD, t.exchanged, "empty"))
                return None
            shift = (t.value.date() - want).days
            if shift == 0:
                break
            # The meter skipped or repeated a freeze (powered off, clock set): the wanted day is
            # ``shift`` records further back, if it exists at all.
            if shift < 0 or nn + shift > 62:
                job.extra["last_freeze"] = t.value
                job.fail(ItemRead(None, NO_RECORD, t.exchanged,
                                  f"last freeze {t.value:%Y-%m-%d %H:%M}"))
                return None
            nn += shift
        else:
            job.fail(ItemRead(None, NO_RECORD, None, f"no freeze for {want}"))
            return None
        fwd = job.add(await self.read_item(meter, DI_DAILY_FWD | nn, via=via))
        if not fwd.ok:
            job.fail(fwd)
            return None
        rev_pair: tuple[Any, tuple[Any, ...]] = (None, ())
        if reverse:
            rev = job.add(await self.read_item(meter, DI_DAILY_REV | nn, via=via))
            if rev.ok:
                rev_pair = _split_block(rev.value)
            elif rev.status != NOT_AVAILABLE:
                job.fail(rev)
                return None
        return t.value, _split_block(fwd.value), rev_pair

    async def _read_freeze_block(self, job: _Job, meter: str, nn: int, want: date,
                                 via: Exchanger | None, reverse: bool) -> Any:
        """``_read_freeze`` through the block; ``_NO_BLOCK`` when the meter lacks it."""
        for tries in range(2):
            item = job.add(await self.read_item(meter, DI_DAILY_BLOCK | nn, via=via,
                                                decode=decode_daily_block))
            refused = item.status in (NOT_AVAILABLE, METER_ERROR) or (
                item.status == BAD_FRAME and item.detail.startswith(_BLOCK_LAYOUT))
            if refused and tries:
                # The block of the record the shift points to is missing: so is the record.
                job.fail(ItemRead(None, NO_RECORD, item.exchanged, f"no freeze for {want}"))
                return None
            if refused:
                log.info("meter %s: daily freeze block %02X refused (%s), trying the items", meter,
                         nn, f"{item.status}:{item.detail}")
                return _NO_BLOCK
            if not item.ok:
                job.fail(item)
                return None
            ft, fwd, rev = item.value
            if ft is None:
                job.fail(ItemRead(None, NO_RECORD, item.exchanged, "empty"))
                return None
            shift = (ft.date() - want).days
            if shift == 0:
                return ft, fwd, rev if reverse else (None, ())
            if shift < 0 or nn + shift > 62:
                job.extra["last_freeze"] = ft
                job.fail(ItemRead(None, NO_RECORD, item.exchanged,
                                  f"last freeze {ft:%Y-%m-%d %H:%M}"))
                return None
            nn += shift
        job.fail(ItemRead(None, NO_RECORD, None, f"no freeze for {want}"))
        return None

    async def _daily_from_realtime(self, job: _Job, ctx: _RoundCtx, meter: str,
                                   last: datetime, via: Exchanger | None) -> _Job:
        job.status, job.detail = OK, ""
        fwd = job.add(await self._read_alt(meter, (DI_FWD_BLOCK, DI_FWD), 2007, via))
        if not fwd.ok:
            return job.fail(fwd)
        r_total, r_tar = None, ()
        if ctx.task.reverse:
            rev = job.add(await self._read_alt(meter, (DI_REV_BLOCK, 0x00020000), 2007, via))
            if rev.ok:
                r_total, r_tar = _split_block(rev.value)
            elif rev.status != NOT_AVAILABLE:
                return job.fail(rev)
        f_total, f_tar = _split_block(fwd.value)
        now = self.clock.now()
        job.writes.append(("daily", DailyReading(meter, ctx.day, f_total, now, f_tar, r_total,
                                                 r_tar, freeze_time=None,
                                                 flags=FLAG_FROM_REALTIME)))
        job.writes.append(("event", (ERC_METER_CLOCK, meter, {
            "fault": "no_freeze", "last_freeze": last.isoformat(), "day": ctx.day.isoformat()},
            now)))
        log.warning("meter %s: last freeze %s, clock far behind; real-time registers stored "
                    "for %s", meter, last, ctx.day)
        return job

    async def _read_alt(self, meter: str, dis: Sequence[int], protocol: int,
                        via: Exchanger | None = None, priority: bool = False) -> ItemRead:
        """The first of ``dis`` the meter has (a block first, then the single value)."""
        item = ItemRead(None, NOT_AVAILABLE)
        for di in dis:
            item = await self.read_item(meter, di, protocol, priority=priority, via=via)
            if item.status != NOT_AVAILABLE:
                return item
        return item

    async def _summary_round(self, ctx: _RoundCtx) -> bool:
        """Read the summary meter's daily frozen record, retrying until the window closes."""
        sm = self.summary
        protocol = _protocol(getattr(sm, "protocol", None))
        # Back-fill the summary meter over the same days as the customers' meters, so the line
        # loss of a back-filled day has both ends.
        first_text = self.store.kv_get(f"reader.first_day.{ctx.task.name}")
        first = date.fromisoformat(first_text) if first_text else ctx.day
        since = max(first, ctx.day - timedelta(days=ctx.task.backfill_days))
        days = [since + timedelta(days=i) for i in range((ctx.day - since).days)]
        gaps = [b for b in days if self.store.daily(sm.address, b) is None]
        if gaps:
            ctx.missing[sm.address] = gaps
        if self.store.daily(sm.address, ctx.day) is not None and not gaps:
            return True
        pause = min(60.0, ctx.task.retry_pause_s)
        last = ""
        while True:
            job = await self._daily_job(ctx, sm.address, protocol, via=sm)
            if job.ok:
                try:
                    with self.store.batch():
                        for kind, obj in job.writes:
                            self._apply(kind, obj)
                except StoreError as exc:
                    log.error("summary meter %s: daily %s not stored: %s", sm.address, ctx.day, exc)
                    return False
                log.info("summary meter %s: daily frozen %s read", sm.address, ctx.day)
                return True
            last = job.status if not job.detail else f"{job.status}:{job.detail}"
            if self.clock.now() + timedelta(seconds=pause) >= ctx.closes:
                break
            await asyncio.sleep(pause)
        log.warning("summary meter %s: daily frozen %s not read: %s", sm.address, ctx.day, last)
        try:
            self.store.add_event(ERC_READ_FAILURE, sm.address,
                                 {"what": "summary meter daily frozen", "day": ctx.day.isoformat(),
                                  "why": last})
        except StoreError as exc:
            log.error("summary meter %s: failure event not stored: %s", sm.address, exc)
        return False

    # --- other kinds ----------------------------------------------------------------------------

    async def _job(self, ctx: _RoundCtx, meter: str) -> _Job:
        protocol = ctx.protocols.get(meter, 2007)
        kind = ctx.task.kind
        if kind is TaskKind.DAILY_FROZEN:
            return await self._daily_job(ctx, meter, protocol)
        if kind is TaskKind.CURVE:
            return await self._curve_job(ctx, meter, protocol)
        if kind is TaskKind.REALTIME:
            return await self._realtime_job(meter, protocol, priority=False)
        if kind is TaskKind.POWER_DOWN:
            return await self._power_down_job(ctx, meter, protocol)
        if kind is TaskKind.CLOCK:
            return await self._clock_job(ctx, meter, protocol)
        if kind is TaskKind.RELAY:
            return await self._relay_job(ctx, meter, protocol)
        raise ReaderError(f"task kind {kind} has no job")  # pragma: no cover

    async def _curve_job(self, ctx: _RoundCtx, meter: str, protocol: int) -> _Job:
        job = _Job(meter)
        density = ctx.task.density_min
        if density == 60 and protocol == 2007:
            item = job.add(await self.read_item(meter, DI_HOURLY_BLOCK))
            if not item.ok:
                return job.fail(item)
            ft, fwd = item.value
            if ft is None:
                return job.fail(ItemRead(None, NO_RECORD, item.exchanged, "empty"))
            job.writes.append(("curve", (meter, ft.date(), {ft.time(): fwd}, 60)))
            return job
        # Real-time read stored at the slot the round opened in.
        dis = (DI97_FWD,) if protocol == 1997 else (DI_FWD,)
        item = job.add(await self.read_item(meter, dis[0], protocol))
        if not item.ok:
            return job.fail(item)
        slot_minutes = ctx.opens.hour * 60 + ctx.opens.minute
        slot = slot_minutes // density
        job.writes.append(("curve", (meter, ctx.opens.date(), {slot: item.value}, density)))
        return job

    async def _realtime_job(self, meter: str, protocol: int, priority: bool,
                            items: Sequence[str] = ("energy", "reverse_energy", "voltage",
                                                    "current", "power")) -> _Job:
        job = _Job(meter)
        values: dict[str, Any] = {}
        for name in items:
            dis = ON_DEMAND_ITEMS[name].get(protocol)
            if not dis:
                continue
            item = job.add(await self._read_alt(meter, dis, protocol, priority=priority))
            if item.status == NOT_AVAILABLE:
                continue
            if not item.ok:
                return job.fail(item)
            values[name] = item.value
        if "energy" not in values:
            return job.fail(ItemRead(None, NOT_AVAILABLE, None, "no energy register"))
        job.extra["values"] = values
        job.writes.append(("realtime", _realtime_record(meter, self.clock.now(), values)))
        return job

    async def _power_down_job(self, ctx: _RoundCtx, meter: str, protocol: int) -> _Job:
        job = _Job(meter)
        if protocol == 1997:
            return job.fail(ItemRead(None, NOT_AVAILABLE, None, "no power-down records in 1997"))
        count = job.add(await self.read_item(meter, DI_POWER_DOWN_COUNT))
        if not count.ok:
            return job.fail(count)
        prev = ctx.kv.get(meter)
        ctx.kv[meter] = count.value
        if prev is None or count.value <= prev:
            # First sight sets the baseline; a lower count means the meter was cleared.
            return job
        for n in range(1, min(count.value - prev, 10) + 1):
            rec = job.add(await self.read_item(meter, DI_POWER_DOWN_COUNT | n))
            if not rec.ok:
                ctx.kv[meter] = prev + n - 1  # read the rest next time
                return job.fail(rec)
            start, end = rec.value
            job.writes.append(("event", (ERC_METER_FAULT, meter, {
                "fault": "power_down", "start": start, "end": end}, self.clock.now())))
            log.info("meter %s: power down %s .. %s", meter, start, end)
        return job

    async def _clock_job(self, ctx: _RoundCtx, meter: str, protocol: int) -> _Job:
        job = _Job(meter)
        dis = (DI97_DATE, DI97_TIME) if protocol == 1997 else (DI_DATE, DI_TIME)

        async def measure() -> tuple[float | None, float, ItemRead | None]:
            """(drift in seconds or None, latency of the time read, the read that failed)."""
            d = job.add(await self.read_item(meter, dis[0], protocol))
            if not d.ok:
                return None, 0.0, d
            t = job.add(await self.read_item(meter, dis[1], protocol))
            if not t.ok:
                return None, 0.0, t
            if d.value is None:
                return None, 0.0, ItemRead(None, BAD_FRAME, t.exchanged, "meter date is zero")
            meter_time = datetime.combine(d.value, t.value)
            # The time was read about half the exchange's latency before its reply arrived.
            lat = t.exchanged.latency_s if t.exchanged is not None else 0.0
            drift = (meter_time - (self.clock.now() - timedelta(seconds=lat / 2))).total_seconds()
            # Around midnight the date and time may straddle the day change.
            if drift > 43200:
                drift -= 86400
            elif drift < -43200:
                drift += 86400
            return drift, lat, None

        drift, lat, failed = await measure()
        if drift is None:
            assert failed is not None
            return job.fail(failed)
        job.extra["drift_s"] = drift
        if abs(drift) > ctx.task.threshold_s:
            detail: dict[str, Any] = {"drift_s": round(drift, 1),
                                      "threshold_s": ctx.task.threshold_s}
            fix = None
            if self.meter_clock is not None:
                # Beyond the broadcast's reach the meter's clock is written (meter_clock.py).
                async def send(request: bytes) -> tuple[bytes | None, float]:
                    ex = await self._exchange(meter, request, False)
                    job.add(ItemRead(None, OK, ex))
                    return ex.reply, ex.latency_s

                async def reread() -> float | None:
                    return (await measure())[0]

                fix = await self.meter_clock.correct(meter, protocol, drift, ctx.task.threshold_s,
                                                     latency_s=lat, send=send, reread=reread)
                detail.update(fix.event_detail())
                job.extra["clock_fix"] = fix
            if fix is None or fix.broadcast:
                ctx.drifting[meter] = drift
            job.writes.append(("event", (ERC_METER_CLOCK, meter, detail, self.clock.now())))
            log.info("meter %s: clock off by %.0f s", meter, drift)
        return job

    async def _relay_job(self, ctx: _RoundCtx, meter: str, protocol: int) -> _Job:
        job = _Job(meter)
        if protocol == 1997:
            return job.fail(ItemRead(None, NOT_AVAILABLE, None, "no status word 3 in 1997"))
        item = job.add(await self.read_item(meter, DI_STATUS3))
        if not item.ok:
            return job.fail(item)
        sw: StatusWord3 = item.value
        now = self.clock.now()
        prev = ctx.kv.get(meter)
        ctx.kv[meter] = sw.relay_open
        job.writes.append(("realtime", RealtimeReading(
            meter, now, None, values={"status_word_3": Decimal(sw.word),
                                      "relay_open": Decimal(int(sw.relay_open))})))
        if prev is not None and prev != sw.relay_open:
            job.writes.append(("event", (ERC_STATUS_CHANGE, meter, {
                "relay_open": sw.relay_open, "word": f"{sw.word:04X}"}, now)))
            log.info("meter %s: relay now %s", meter, "open" if sw.relay_open else "closed")
        return job

    # --- after a round ---------------------------------------------------------------------------

    async def _after_round(self, ctx: _RoundCtx) -> lineloss.LineLoss | None:
        kind = ctx.task.kind
        if kind in (TaskKind.POWER_DOWN, TaskKind.RELAY):
            try:
                self.store.kv_set(f"reader.{kind.value}", ctx.kv)
            except StoreError as exc:
                log.error("task %s: state not stored: %s", ctx.task.name, exc)
        if kind is TaskKind.CLOCK and ctx.drifting and self.broadcaster is not None:
            frame = dlt645.encode(dlt645.broadcast_time(self.clock.now()))
            try:
                await self.broadcaster(frame)
                log.info("time sync broadcast: %d meters drifted more than %.0f s",
                         len(ctx.drifting), ctx.task.threshold_s)
            except Exception as exc:  # the module refused or is gone: next round tries again
                log.error("time sync broadcast failed: %s", exc)
        if kind is not TaskKind.DAILY_FROZEN or self.summary is None:
            return None
        customers = sorted(ctx.protocols)
        # Day d's loss uses the freezes of d and d + 1: a back-filled day b changes b - 1 and b.
        yesterday = ctx.day - timedelta(days=1)
        days = {yesterday}
        for b in ctx.backfilled_days:
            days |= {b - timedelta(days=1), b}
        days = {d for d in days if d <= yesterday}
        result = None
        for d in sorted(days):
            try:
                ll = lineloss.update_day(self.store, d, self.summary.address, customers,
                                         self.lineloss_threshold)
            except StoreError as exc:
                log.error("line loss %s not stored: %s", d, exc)
                continue
            if d == ctx.day - timedelta(days=1):
                result = ll
        return result

    # --- on demand ---------------------------------------------------------------------------

    async def read_now(self, address: str, item: str | int) -> OnDemandReading:
        """Read ``item`` from one meter before any scheduled read (the next free slot).

        ``item`` is a name from ``ON_DEMAND_ITEMS`` ("energy", "voltage", "current", "power",
        "status", "date", "time", "reverse_energy") or a raw DI. Energy readings are stored as
        real-time readings. Raises ``ReaderError`` for an unknown meter or item; a failed read
        is a result with ``ok`` False.
        """
        rec = self.store.meter(address)
        if rec is None:
            raise ReaderError(f"meter {address} is not in the archive")
        protocol = _protocol(rec.protocol)
        if isinstance(item, int):
            dis: tuple[int, ...] = (item,)
            name = dlt645.format_di(item, protocol)
        else:
            spec = ON_DEMAND_ITEMS.get(item)
            if spec is None:
                raise ReaderError(f"unknown item {item!r}; one of {', '.join(ON_DEMAND_ITEMS)}")
            dis = spec.get(protocol, ())
            name = item
        if not dis:
            log.info("meter %s: %s not available on DL/T 645-%d", address, name, protocol)
            return OnDemandReading(address, name, False, None, NOT_AVAILABLE, (), 0, 0.0)
        job = _Job(address)
        got = job.add(await self._read_alt(address, dis, protocol, priority=True))
        if got.ok and name == "energy":
            try:
                self.store.write_realtime(_realtime_record(address, self.clock.now(),
                                                           {"energy": got.value}))
            except StoreError as exc:
                log.error("meter %s: on-demand reading not stored: %s", address, exc)
        outcome = got.status if not got.detail else f"{got.status}:{got.detail}"
        log.info("meter %s: on-demand %s -> %s", address, name, outcome)
        return OnDemandReading(address, name, got.ok, got.value, outcome, job.route,
                               job.attempts, job.latency_s)


# --- helpers --------------------------------------------------------------------------------------

def _decode_reply(address: str, di: int, protocol: int, ex: Exchanged,
                  decode: Callable[[bytes], Any] | None = None) -> ItemRead:
    if ex.reply is None:
        return ItemRead(None, f"no_reply:{ex.failure or 'unknown'}", ex)
    try:
        frame, _ = dlt645.parse_prefix(ex.reply)
    except CodecError as exc:
        log.info("meter %s: undecodable reply to %s: %s", address, dlt645.format_di(di, protocol), exc)
        return ItemRead(None, BAD_FRAME, ex, str(exc)[:60])
    if frame.address != address or not frame.is_reply:
        log.info("meter %s: reply from %s to %s", address, frame.address,
                 dlt645.format_di(di, protocol))
        return ItemRead(None, BAD_FRAME, ex, f"from {frame.address}")
    if frame.is_error:
        bits = frame.error_bits or ErrorBits(0)
        if bits & ErrorBits.NO_DATA:
            return ItemRead(None, NOT_AVAILABLE, ex, dlt645.format_di(di, protocol))
        return ItemRead(None, METER_ERROR, ex, bits.describe()[:60])
    if frame.di != di or frame.value_bytes is None:
        return ItemRead(None, BAD_FRAME, ex, "answer to another item")
    try:
        value = decode(frame.value_bytes) if decode is not None \
            else dlt645.decode_value(di, frame.value_bytes, protocol)
    except CodecError as exc:
        log.info("meter %s: bad value for %s: %s", address, dlt645.format_di(di, protocol), exc)
        return ItemRead(None, BAD_FRAME, ex, str(exc)[:60])
    return ItemRead(value, OK, ex)


_NO_BLOCK = object()  # sentinel: the meter does not have the daily freeze block
_BLOCK_LAYOUT = "daily block layout"
_ENERGY_ITEMS_FULL = 8  # forward, reverse, combined reactive 1/2, reactive quadrants 1-4
_DEMAND_ITEMS = 2  # forward and reverse maximum demand with their time (8 bytes a register)
_VARIABLES = 24  # frozen active and reactive power, total and phases (3 bytes each)
_VOLTAGE_RATES = 4 * 27  # voltage qualification of T/A/B/C some State Grid meters add


def _block_layouts(size: int) -> list[int]:
    """Register counts (total + tariffs) that a daily block of ``size`` value bytes after the
    freeze time could have: forward + reverse only (a meter whose freeze mode word keeps only
    active energy), the standard's full record, or the full record with voltage rates."""
    out = []
    if size % 8 == 0 and 1 <= size // 8 <= 64:
        out.append(size // 8)
    for tail in (_VARIABLES, _VARIABLES + _VOLTAGE_RATES):
        per = 4 * _ENERGY_ITEMS_FULL + 8 * _DEMAND_ITEMS
        if size > tail and (size - tail) % per == 0 and 1 <= (size - tail) // per <= 15:
            out.append((size - tail) // per)
    return out


def _tariffs_add_up(block: tuple[Any, ...]) -> bool:
    """A total equal to the sum of its tariff registers (within their rounding)."""
    total, tariffs = block[0], block[1:]
    if not tariffs or total is None or any(t is None for t in tariffs):
        return True
    return abs(total - sum(tariffs)) <= Decimal("0.01") * len(tariffs)


def decode_daily_block(value: bytes) -> tuple[datetime | None, tuple[Any, tuple[Any, ...]],
                                              tuple[Any, tuple[Any, ...]]]:
    """Value bytes of 05 06 FF nn -> (freeze time, (forward total, tariffs), (reverse ...)).

    The block is the freeze time (YYMMDDhhmm) followed by the frozen items in DI1 order with no
    separator; forward and reverse active energy (4 bytes per register) come first. The
    register count is found from the length and checked (total = sum of tariffs); a length
    that fits no layout, or more than one, raises ``DataUnitError`` (the caller then reads the
    items one by one rather than guess).
    """
    if len(value) < 5 + 8:
        raise DataUnitError(f"{_BLOCK_LAYOUT}: {len(value)} bytes is too short")
    try:
        when = dlt645.decode_value(DI_DAILY_TIME | 1, value[:5])
    except CodecError as exc:
        raise DataUnitError(f"{_BLOCK_LAYOUT}: no freeze time first ({exc})") from exc
    rest = value[5:]
    fits = []
    for n in _block_layouts(len(rest)):
        try:
            fwd = dlt645.decode_value(DI_DAILY_FWD | 1, rest[:4 * n])
            rev = dlt645.decode_value(DI_DAILY_REV | 1, rest[4 * n:8 * n])
        except CodecError:
            continue
        if _tariffs_add_up(fwd) and _tariffs_add_up(rev):
            fits.append((fwd, rev))
    if len(fits) != 1:
        raise DataUnitError(f"{_BLOCK_LAYOUT}: {len(value)} bytes fit {len(fits)} layouts")
    fwd, rev = fits[0]
    return when, _split_block(fwd), _split_block(rev)


def _split_block(value: Any) -> tuple[Any, tuple[Any, ...]]:
    """(total, tariffs) from a block tuple, or (value, ()) from a single value."""
    if isinstance(value, tuple):
        return (value[0] if value else None), tuple(value[1:])
    return value, ()


def _realtime_record(meter: str, when: datetime, values: Mapping[str, Any]) -> RealtimeReading:
    f_total, f_tar = _split_block(values.get("energy"))
    r_total, r_tar = _split_block(values.get("reverse_energy"))
    extra: dict[str, Decimal] = {}
    for name in ("voltage", "current", "power"):
        v = values.get(name)
        if isinstance(v, tuple):
            labels = ("total", "a", "b", "c") if len(v) == 4 else ("a", "b", "c")
            for lab, x in zip(labels, v, strict=False):
                if isinstance(x, Decimal):
                    extra[f"{name}_{lab}"] = x
        elif isinstance(v, Decimal):
            extra[name] = v
    return RealtimeReading(meter, when, f_total, f_tar, r_total, r_tar, values=extra)
