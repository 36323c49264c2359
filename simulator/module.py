"""The simulated carrier/RF module (CCO) and the PLC/RF nodes it talks to.

One class, :class:`CarrierModule`, serves the concentrator's ``ModuleDriver`` over any
``ByteLink``: a pty in real time (``simulator.serve``) or a ``MemoryLink`` end in virtual time
(``simulator.district``). It speaks Q/GDW 1376.2 through ``plc_driver.gdw13762`` and follows
the module contract of docs/architecture.md: the module **does no routing**; an AFN13 F1 read
is carried hop by hop along the relay list in the A field, each hop a channel draw with
airtime, processing and per-hop MAC retries, and a bad relay list simply fails.

What it answers (anything else: AFN00 F2 error 10; a malformed data unit: error 1)::

    01 F1/F2/F3      init (F1 = hardware reset: pending reads lost; F2 clears the slave archive)
    03 F1/F4/F10     vendor/version, master address, running mode (max concurrent reads)
    05 F1/F3         set master address, broadcast (delivered to every powered meter)
    10 F1/F2/F4      slave count, slave info list, route running status
    11 F1/F2/F5/F6   slave archive add/delete, registration search start/stop
    12 F1/F2/F3      restart (drops pending reads) / pause / resume
    13 F1            monitor slave node (carry a DL/T 645 frame to a meter and back)
    00 F1/F2 (down)  the concentrator's confirms of our reports: accepted silently

Module reports (PRM = 1): AFN06 F4 for each node found by a search (with the A field:
found node | path back, proxy first | CCO; R4 = quality of the proxy<->node hop) and
AFN06 F3 = 2 when a search ends.

The shared medium (:class:`Medium`): every transmission occupies the channel for its airtime;
a sender defers while a transmission it can hear is on the air (carrier sense), then waits a
random number of contention slots. Two senders that start within one slot do not hear each
other in time and both fail where each reaches the other's receiver; transmissions from
hidden nodes add to the noise at the receiver (``Channel.transmit(interferers=...)``).

Timing figures (per-level timeout, retries, slot, quality scale) are in
docs/channel-model.md, section "Devices".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from concentrator import dlt645
from concentrator.codec import CodecError, DataUnitError, Rejected
from plc_driver import gdw13762 as g
from plc_driver.link import ByteLink, LinkClosed
from simulator.channel import MEDIA, REF_FRAME_BYTES, Channel
from simulator.scenario import Scenario

__all__ = [
    "CarrierModule",
    "Medium",
    "MeterPort",
    "ModuleStats",
    "COMM_MODE",
    "MODULE_KIND",
    "MAX_CONCURRENT",
    "MAC_RETRIES",
    "quality",
]

log = logging.getLogger(__name__)

# 1376.2 C-field communication mode and 03 F10 module kind per channel (protocols.md §4.2,
# §4.6). Dual-mode HPLC + HRF modules present themselves as broadband.
COMM_MODE = {"npl": 1, "hplc": 3, "rf": 10, "dual": 3}
MODULE_KIND = {"npl": 1, "hplc": 2, "rf": 3, "dual": 2}
# AFN13 F1 requests the module takes at once (HiSilicon default 5; narrowband modules 1).
MAX_CONCURRENT = {"npl": 1, "hplc": 5, "rf": 5, "dual": 5}
# Per-hop MAC retransmissions after the first attempt: HiSilicon "unicast 2" for HPLC/RF;
# narrowband frames are long, so its MAC retries once (our choice).
MAC_RETRIES = {"npl": 1, "hplc": 2, "rf": 2}
# Contention slot: how long a carrier takes to be detected; two senders that start within
# one slot collide. Contention window in slots. Our choice (HPLC slots are tens of us in
# IEEE 1901.1; the simulator only needs the order of magnitude relative to airtime).
SLOT_S = {"npl": 0.020, "hplc": 0.002, "rf": 0.003}
CONTENTION_WINDOW = 8
# A MAC retransmission after a missing ACK draws its backoff from a window doubled per failed
# attempt (8, 16, 32, 64 slots), as the IEEE 1901 / HomePlug AV CSMA/CA that IEEE 1901.1 HPLC
# inherits does (backoff procedure counter) and IEEE 802.15.4 CSMA-CA for RF (backoff
# exponent). With a fixed window two hidden senders whose frames overlapped retried in
# lockstep and lost all three attempts (docs/channel-model.md). Narrowband modules' MACs are
# vendor-specific: npl keeps its fixed window (its per-level timeout assumes it).
WINDOW_DOUBLINGS = {"npl": 0, "hplc": 3, "rf": 3}
ACK_BYTES = 8  # MAC acknowledgement payload (airtime only; its loss is not drawn)

# Module timeouts (HiSilicon read manager, field-figures §1.1): 500 ms per relay level, meter
# first byte 800 ms (3600 ms behind an I-type collector), +2000 ms for remote control.
LEVEL_TIMEOUT_S = 0.5
METER_FIRST_BYTE_S = 0.8
COLLECTOR_FIRST_BYTE_S = 3.6
REMOTE_CONTROL_EXTRA_S = 2.0
METER_FRAME_BUDGET_S = 0.6  # request + reply on the meter UART (~60 bytes at 1200-2400 baud)
MAX_SLAVES = 2040  # Triductor STATIC_MASTER white-list size (field-figures §1.1)

VENDOR = g.VendorVersion("SM", "SI", date(2024, 3, 1), 0x0100)
NOTICE_BYTES = 8  # "meter did not answer" notice a node sends back to the CCO


def quality(snr_db: float, medium: str) -> int:
    """Signal quality 0..15 for R4 from a hop's SNR: 4 at the SNR of 50 % frame success,
    one step per 2 dB (our scale; the standard leaves it to the vendor)."""
    if snr_db == -math.inf:
        return 0
    q = 4 + round((snr_db - MEDIA[medium].snr50_db) / 2.0)
    return max(0, min(15, q))


class MeterPort(Protocol):
    """What the module needs from the meters: the UART/RS-485 side of each node."""

    def exchange(self, node: str, request: bytes, t: float,
                 rng: random.Random) -> tuple[bytes | None, float]:
        """Give ``request`` to the meters at ``node`` at scenario time ``t``; return the
        reply (None: no meter answered) and the seconds until the reply is complete (or until
        the node gives up waiting)."""
        ...

    def broadcast(self, request: bytes, t: float) -> int:
        """Deliver a broadcast frame to every powered meter; return how many got it."""
        ...


@dataclass(slots=True)
class _Tx:
    src: str
    dst: str | None
    medium: str
    start: float
    end: float
    collided: bool = False


class Medium:
    """The shared PLC/RF medium: carrier sense, contention slots, collisions, hidden nodes."""

    def __init__(self, channel: Channel, rng: random.Random, now: Callable[[], float]) -> None:
        self.channel = channel
        self.rng = rng
        self.now = now
        self._air: list[_Tx] = []
        self.collisions = 0  # transmissions lost to a same-slot collision
        self.transmissions = 0

    def medium_for(self, src: str, dst: str) -> str:
        ch = self.channel
        if len(ch.media) == 1:
            return ch.media[0]
        return ch.best_medium(src, dst, self.now())

    def _prune(self, t: float) -> None:
        # Keep finished transmissions a little: they may still overlap one that is ending.
        horizon = t - 2.0
        if self._air and self._air[0].end < horizon:
            self._air = [x for x in self._air if x.end >= horizon]

    def _heard_busy_until(self, src: str, medium: str, t: float) -> float:
        slot = SLOT_S[medium]
        until = 0.0
        for x in self._air:
            # A carrier is detectable one slot after it started.
            if x.medium == medium and x.end > t and x.start <= t - slot and x.src != src \
                    and self.channel.interferes(x.src, src, t, medium):
                until = max(until, x.end)
        return until

    async def acquire(self, src: str, dst: str | None, medium: str, nbytes: int,
                      window: int = CONTENTION_WINDOW) -> _Tx:
        """Wait for the medium (carrier sense + backoff in ``window`` slots) and put a frame
        on the air."""
        ch = self.channel
        slot = SLOT_S[medium]
        for _ in range(64):
            t = self.now()
            self._prune(t)
            busy = self._heard_busy_until(src, medium, t)
            if busy > t:
                await asyncio.sleep(busy - t)
            await asyncio.sleep(self.rng.randrange(window) * slot)
            t = self.now()
            if self._heard_busy_until(src, medium, t) <= t:
                break
        t = self.now()
        tx = _Tx(src, dst, medium, t, t + ch.airtime(nbytes, medium))
        for x in self._air:
            if x.medium == medium and x.end > t and t - x.start < slot and x.src != src:
                # Same contention slot: neither sensed the other.
                if dst is not None and ch.interferes(x.src, dst, t, medium):
                    tx.collided = True
                if x.dst is not None and ch.interferes(src, x.dst, t, medium):
                    if not x.collided:
                        self.collisions += 1
                    x.collided = True
        if tx.collided:
            self.collisions += 1
        self._air.append(tx)
        self.transmissions += 1
        return tx

    def overlapping(self, tx: _Tx) -> list[str]:
        """Senders of other frames on the same medium that overlapped ``tx`` in time."""
        return [x.src for x in self._air
                if x is not tx and x.medium == tx.medium and x.start < tx.end and x.end > tx.start]

    async def send(self, src: str, dst: str, nbytes: int, attempt: int = 0) -> bool:
        """One frame src -> dst (no retries): True when dst received it. ``attempt`` = MAC
        retransmissions of this frame so far (each doubles the contention window)."""
        medium = self.medium_for(src, dst)
        window = CONTENTION_WINDOW << min(max(attempt, 0), WINDOW_DOUBLINGS.get(medium, 0))
        tx = await self.acquire(src, dst, medium, nbytes, window)
        await asyncio.sleep(tx.end - tx.start)
        if tx.collided:
            return False
        return self.channel.transmit(src, dst, nbytes, tx.start, self.rng, medium,
                                     interferers=self.overlapping(tx))

    def occupy(self, src: str, medium: str, start: float, end: float,
               collided: bool = False) -> _Tx:
        """Record a slotted transmission (registration answers) so others defer to it."""
        tx = _Tx(src, None, medium, start, end, collided)
        self._air.append(tx)
        self.transmissions += 1
        return tx


@dataclass(slots=True)
class ModuleStats:
    """Counters a test or bench can read (not on the wire)."""

    reads: int = 0
    reads_ok: int = 0
    reads_via_relay: int = 0
    denied: dict[int, int] = field(default_factory=dict)
    garbage: int = 0
    unsupported: int = 0
    busy: int = 0
    searches: int = 0
    found: int = 0


@dataclass(slots=True)
class _Search:
    task: asyncio.Task[None]
    path: tuple[str, ...]  # relays + proxy (empty: from the CCO)


class CarrierModule:
    """The CCO: 1376.2 slave of the concentrator, master of the PLC/RF nodes.

    ``now()`` returns scenario seconds (``t`` of the channel); the wall time of the district
    is ``scenario.start + now()``. Call :meth:`attach` with the module's end of a byte link;
    the module keeps its state (archive, master address) when the link is replaced.
    """

    def __init__(
        self,
        scenario: Scenario,
        channel: Channel,
        meters: MeterPort,
        *,
        now: Callable[[], float],
        seed: int | None = None,
    ) -> None:
        self.scenario = scenario
        self.channel = channel
        self.meters = meters
        self.now = now
        kind = scenario.channel
        self.comm_mode = COMM_MODE[kind]
        self.max_concurrent = MAX_CONCURRENT[kind]
        self.address = scenario.concentrator.address  # the CCO's node in the channel
        self.master_address = scenario.concentrator.address  # as set by 05 F1
        self.rng = random.Random(f"module:{scenario.seed if seed is None else seed}")
        self.medium = Medium(channel, self.rng, now)
        self.archive: dict[str, int] = {}  # slave address -> protocol (insertion order = index)
        self.paused = False
        self.stats = ModuleStats()
        self._link: ByteLink | None = None
        self._reader: asyncio.Task[None] | None = None
        self._decoder = g.Gdw13762StreamDecoder()
        self._reads: dict[int, asyncio.Task[None]] = {}
        self._search: _Search | None = None
        self._report_seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self.rogues: Any = None  # simulator.rogue.RogueSet, set by SimDistrict when there are any

    # --- link ------------------------------------------------------------------------------
    def attach(self, link: ByteLink) -> None:
        """Serve the concentrator on ``link`` (replaces any previous link)."""
        self.detach()
        self._link = link
        self._decoder = g.Gdw13762StreamDecoder()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop(link),
                                                               name="sim-module-reader")
        log.info("module %s: serving on %s", self.address, getattr(link, "name", link))

    def detach(self) -> None:
        """Stop reading the current link (the link itself is closed by its owner)."""
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self._link = None

    async def close(self) -> None:
        """Stop everything the module runs (reader, reads, search)."""
        reader = self._reader
        self.detach()
        self._drop_pending("module closed")
        tasks = [t for t in (reader, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def reset(self) -> None:
        """Fault injection / 01 F1: power-cycle the module. Slave archive, pending reads and
        a running search are lost; the master address is kept (it is in flash)."""
        self.archive.clear()
        self._drop_pending("module reset")
        self.paused = False
        log.warning("module %s: reset, slave archive and pending requests lost", self.address)

    def _drop_pending(self, why: str) -> None:
        for seq, task in list(self._reads.items()):
            task.cancel()
            log.info("module: read seq %d dropped (%s)", seq, why)
        self._reads.clear()
        if self._search is not None:
            self._search.task.cancel()
            self._search = None

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _read_loop(self, link: ByteLink) -> None:
        while True:
            try:
                chunk = await link.read()
            except LinkClosed:
                log.info("module %s: link closed", self.address)
                return
            for item in self._decoder.feed(chunk):
                if isinstance(item, Rejected):
                    self.stats.garbage += 1
                    log.warning("module: rejected %s: %s", item.raw[:64].hex(" ").upper(), item.error)
                    continue
                try:
                    self._handle(item)
                except Exception:  # one bad frame must never stop the module
                    log.exception("module: failed on AFN%02X F%d seq %d", item.afn, item.fn, item.seq)

    def _send(self, frame: g.Frame13762) -> None:
        link = self._link
        if link is None:
            log.info("module: no link, AFN%02X F%d seq %d lost", frame.afn, frame.fn, frame.seq)
            return
        try:
            link.write(g.encode(frame))
        except LinkClosed:
            log.info("module: link closed, AFN%02X F%d seq %d lost", frame.afn, frame.fn, frame.seq)

    def _confirm(self, f: g.Frame13762, wait_s: int = 0) -> None:
        self._send(g.confirm(f.seq, self.comm_mode, unit=g.Confirm(0xFFFFFFFF, wait_s)))

    def _deny(self, f: g.Frame13762, code: int) -> None:
        self.stats.denied[code] = self.stats.denied.get(code, 0) + 1
        self._send(g.deny(f.seq, code, self.comm_mode, to=f if f.info.module else None))

    def _answer(self, f: g.Frame13762, unit: g.DataUnit) -> None:
        self._send(g.reply(f.afn, f.fn, f.seq, self.comm_mode, unit))

    # --- dispatch --------------------------------------------------------------------------
    def _handle(self, f: g.Frame13762) -> None:
        if f.direction != g.DOWN:
            log.warning("module: uplink frame AFN%02X F%d seq %d received, ignored", f.afn, f.fn, f.seq)
            return
        if f.afn == 0x00:
            # The concentrator confirms (or denies) our reports; nothing to do.
            log.debug("module: AFN00 F%d seq %d from the concentrator", f.fn, f.seq)
            return
        handler = self._HANDLERS.get((f.afn, f.fn))
        if handler is None:
            self.stats.unsupported += 1
            log.info("module: AFN%02X F%d seq %d not supported", f.afn, f.fn, f.seq)
            self._deny(f, 10)
            return
        try:
            unit = g.decode_data_unit(f)
        except DataUnitError as exc:
            log.warning("module: AFN%02X F%d seq %d bad data unit: %s", f.afn, f.fn, f.seq, exc)
            self._deny(f, 1)
            return
        handler(self, f, unit)

    def _init(self, f: g.Frame13762, unit: Any) -> None:
        if f.fn == 1:
            self.reset()
        elif f.fn == 2:
            self.archive.clear()
            log.info("module: parameter area initialised, slave archive cleared")
        self._confirm(f)

    def _query(self, f: g.Frame13762, unit: Any) -> None:
        if f.fn == 1:
            self._answer(f, VENDOR)
        elif f.fn == 4:
            self._answer(f, g.MasterAddress(self.master_address))
        else:
            self._answer(f, self.run_info())

    def run_info(self) -> g.ModuleRunInfo:
        """03 F10 as this module reports it."""
        kind = self.scenario.channel
        medium = self.channel.media[0]
        rate = int(MEDIA[medium].bit_rate)
        rate_word = rate if rate < 0x8000 else (rate // 1000) | 0x8000
        return g.ModuleRunInfo(
            mode=bytes([MODULE_KIND[kind], 0, 1, 1, 0, 0]),
            monitor_timeout_s=min(255, math.ceil(self.read_timeout(15, collector=True,
                                                                   control=True))),
            broadcast_timeout_s=math.ceil(3 * self.level_timeout()),
            max_frame_len=2048,
            max_file_packet=512,
            upgrade_wait_min=10,
            master_address=self.master_address,
            max_slaves=MAX_SLAVES,
            current_slaves=len(self.archive),
            protocol_date=date(2013, 3, 1),
            record_date=date(2024, 3, 1),
            vendor=VENDOR,
            rates=(rate_word,),
        )

    def _control(self, f: g.Frame13762, unit: Any) -> None:
        if f.fn == 1:
            self.master_address = unit.address
            log.info("module: master address set to %s", unit.address)
            self._confirm(f)
            return
        # 05 F3 broadcast: the network floods it; meters act on it after the wait time.
        wait = math.ceil(3 * self.level_timeout())
        self._confirm(f, wait_s=wait)
        self._spawn(self._broadcast(unit.frame, wait), "sim-broadcast")

    async def _broadcast(self, frame: bytes, wait: float) -> None:
        await asyncio.sleep(wait)
        n = self.meters.broadcast(frame, self.now())
        log.info("module: broadcast of %d bytes delivered to %d meters", len(frame), n)

    def _route_query(self, f: g.Frame13762, unit: Any) -> None:
        if f.fn == 1:
            self._answer(f, g.SlaveCount(len(self.archive), MAX_SLAVES))
        elif f.fn == 2:
            items = list(self.archive.items())
            start = max(unit.start, 1) - 1  # 1-based (2013); the 2009 capture sends 0
            chunk = items[start : start + min(unit.count, 32)]
            slaves = tuple(g.SlaveInfo(a, 0, 0, self._phase(a), p) for a, p in chunk)
            self._answer(f, g.SlaveInfoList(len(items), slaves))
        else:
            searching = self._search is not None
            s = self.stats
            self._answer(f, g.RouteRunStatus(
                status=(0 if searching else 1) | (2 if searching else 0),
                total=min(len(self.archive), 0xFFFF), read=min(s.reads_ok, 0xFFFF),
                read_via_relay=min(s.reads_via_relay, 0xFFFF), work_switch=0,
                rate=int(MEDIA[self.channel.media[0]].bit_rate // 1000),
                relay_levels=(0, 0, 0), work_steps=(0, 0, 0)))

    def _route_set(self, f: g.Frame13762, unit: Any) -> None:
        if f.fn == 1:
            for addr, proto in unit.slaves:
                if addr not in self.archive and len(self.archive) >= MAX_SLAVES:
                    log.warning("module: slave archive full, %s not added", addr)
                    self._deny(f, 9)
                    return
                self.archive[addr] = proto
            log.info("module: %d slaves added (archive %d)", len(unit.slaves), len(self.archive))
            self._confirm(f)
        elif f.fn == 2:
            for addr in unit.addresses:
                self.archive.pop(addr, None)
            log.info("module: %d slaves deleted (archive %d)", len(unit.addresses), len(self.archive))
            self._confirm(f)
        elif f.fn == 5:
            path = (*f.relays, f.destination) if f.info.module and f.destination else ()
            if len(path) > g.MAX_RELAYS:
                # What the proxy hears would come back over more relays than the 4-bit relay
                # level of a report can hold.
                log.warning("module: search from %s, %d relays out, refused", path[-1],
                            len(path))
                self._deny(f, 1)
                return
            self._confirm(f)
            self.start_search(path, unit)
        else:
            if self._search is not None:
                self._search.task.cancel()
                self._search = None
                log.info("module: search stopped by the concentrator")
            self._confirm(f)

    def _route_control(self, f: g.Frame13762, unit: Any) -> None:
        if f.fn == 1:
            # Route restart: the read manager is reset (HiSilicon), pending reads dropped.
            for task in self._reads.values():
                task.cancel()
            self._reads.clear()
            self.paused = False
        else:
            self.paused = f.fn == 2
        log.info("module: route %s", {1: "restarted", 2: "paused", 3: "resumed"}[f.fn])
        self._confirm(f)

    _HANDLERS: dict[tuple[int, int], Callable[[CarrierModule, g.Frame13762, Any], None]] = {}

    # --- reading (13 F1) -------------------------------------------------------------------
    def level_timeout(self) -> float:
        """Module timeout per relay level: 500 ms (HiSilicon) or, for slow narrowband, what a
        level needs with its MAC retries both ways plus 20 % (our choice)."""
        medium = self.channel.media[0]
        attempts = 1 + MAC_RETRIES[medium]
        hop = self.channel.airtime(REF_FRAME_BYTES, medium) + self.channel.processing_time(medium) \
            + self.channel.airtime(ACK_BYTES, medium)
        return max(LEVEL_TIMEOUT_S, 1.2 * 2 * attempts * hop)

    def read_timeout(self, relays: int, *, collector: bool = False, control: bool = False) -> float:
        """When the module gives up on a 13 F1: per level x (relays + 1) + meter time."""
        meter = (COLLECTOR_FIRST_BYTE_S if collector else METER_FIRST_BYTE_S) + METER_FRAME_BUDGET_S
        if control:
            meter += REMOTE_CONTROL_EXTRA_S
        return (relays + 1) * self.level_timeout() + meter

    def host_of(self, address: str) -> str:
        """The node (own modem) that reaches meter ``address``: itself or its collector."""
        try:
            m = self.scenario.meter(address)
        except KeyError:
            return address
        return m.collector or address

    def _phase(self, address: str) -> int:
        host = self.host_of(address)
        if not self.channel.has_node(host):
            return 0
        return {"A": 1, "B": 2, "C": 3}.get(self.channel.node(host).phase, 0)

    def _monitor(self, f: g.Frame13762, unit: g.MonitorRequest) -> None:
        if not f.info.module or f.destination is None:
            log.warning("module: 13 F1 seq %d without an A field", f.seq)
            self._deny(f, 5)
            return
        if f.seq in self._reads or len(self._reads) >= self.max_concurrent:
            self.stats.busy += 1
            log.info("module: 13 F1 seq %d to %s refused, %d reads in flight", f.seq,
                     f.destination, len(self._reads))
            self._deny(f, 9)
            return
        task = self._spawn(self._carry(f, unit), f"sim-read-{f.seq}")
        self._reads[f.seq] = task

    async def _hop(self, a: str, b: str, nbytes: int) -> bool:
        """One hop with MAC retries; each attempt is one frame plus its ACK on the medium."""
        if not (self.channel.has_node(a) and self.channel.has_node(b)):
            # An address with no modem in the district: nobody acknowledges, retries time out.
            medium = self.channel.media[0]
            await asyncio.sleep((1 + MAC_RETRIES[medium]) * (
                self.channel.airtime(nbytes, medium) + self.channel.airtime(ACK_BYTES, medium)))
            return False
        medium = self.medium.medium_for(a, b)
        ack = self.channel.airtime(ACK_BYTES, medium)
        for attempt in range(1 + MAC_RETRIES[medium]):
            ok = await self.medium.send(a, b, nbytes, attempt)
            await asyncio.sleep(ack)
            if ok:
                await asyncio.sleep(self.channel.processing_time(medium))
                return True
        return False

    async def _path(self, path: list[str], nbytes: int) -> bool:
        for a, b in zip(path, path[1:], strict=False):
            if not await self._hop(a, b, nbytes):
                return False
        return True

    async def _carry(self, f: g.Frame13762, unit: g.MonitorRequest) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        meter = f.destination or ""
        host = self.host_of(meter)
        path = [self.address, *f.relays]
        if path[-1] != host:
            path.append(host)
        control = False
        with contextlib.suppress(CodecError):
            control = dlt645.parse_prefix(unit.frame)[0].function == 0x1C
        behind = host != meter
        limit = self.read_timeout(len(f.relays), collector=behind, control=control)
        self.stats.reads += 1
        code = 11
        reply: bytes | None = None
        # A rogue that claims the target and overhears the last relay answers in its place.
        rogue = None if self.rogues is None else self.rogues.intercept(path, self.now(), self.rng)
        hops = path if rogue is None else path[:-1]
        try:
            if await self._path(hops, len(unit.frame)):
                answer, dt = (rogue or self.meters).exchange(host, unit.frame, self.now(), self.rng)
                await asyncio.sleep(dt)
                back = hops[::-1]
                if answer is not None:
                    if await self._path(back, len(answer)):
                        reply = answer
                elif await self._path(back, NOTICE_BYTES):
                    code = 8  # the node told us its meter stayed silent
            elapsed = loop.time() - t0
            if reply is not None and elapsed <= limit:
                last = (path[-2], path[-1] if rogue is None else rogue.device)
                ch = self.channel if rogue is None else self.rogues.channel
                t = self.now()
                medium = self.medium.medium_for(*last) if rogue is None else ch.media[0]
                self.stats.reads_ok += 1
                if f.relays:
                    self.stats.reads_via_relay += 1
                self._send(g.monitor_reply(
                    f, reply, duration_s=min(0xFFFF, round(elapsed)),
                    cmd_quality=quality(ch.snr_db(last[0], last[1], t, medium), medium),
                    reply_quality=quality(ch.snr_db(last[1], last[0], t, medium), medium),
                    phase=self._phase(meter)))
                log.debug("module: read %s via %s ok in %.2f s", meter,
                          " > ".join(f.relays) or "direct", elapsed)
                return
            if reply is not None:
                code = 11  # too late: the module had already given up
            # The module only knows something went wrong when its timeout expires.
            await asyncio.sleep(max(0.0, t0 + limit - loop.time()))
            log.debug("module: read %s via %s failed, error %d", meter,
                      " > ".join(f.relays) or "direct", code)
            self._deny(f, code)
        finally:
            if self._reads.get(f.seq) is asyncio.current_task():
                del self._reads[f.seq]

    # --- registration search (11 F5) -------------------------------------------------------
    def start_search(self, path: Iterable[str] = (), unit: g.SearchStart | None = None) -> None:
        """Start a registration search from the CCO, or from the last node of ``path``."""
        unit = unit or g.SearchStart()
        if self._search is not None:
            self._search.task.cancel()
        path = tuple(path)
        self.stats.searches += 1
        task = self._spawn(self._run_search(path, unit), "sim-search")
        self._search = _Search(task, path)
        log.info("module: search from %s for %d min, %d retries, %d slices",
                 path[-1] if path else "the CCO", unit.duration_min, unit.retries, unit.slices)

    def _report(self, unit: g.DataUnit, fn: int, **addr: Any) -> None:
        seq = self._report_seq
        self._report_seq = (seq + 1) % 256
        self._send(g.reply(0x06, fn, seq, self.comm_mode, unit, prm=1, **addr))

    def _found_node(self, address: str, t: float) -> g.FoundNode:
        sc = self.scenario
        if self.rogues is not None and not self.channel.has_node(address):
            return self.rogues.found_node(address)  # an answer no genuine modem gave
        node = self.channel.node(address)
        if node.kind == "collector":
            subs = []
            for m in sc.all_meters():
                t0, t1 = sc.meter_lifetime(m.address)
                if m.collector == address and t0 <= t < t1:
                    subs.append((m.address, 1 if m.protocol == "dlt645-1997" else 2))
            subs = subs[:32]
            return g.FoundNode(address, 2, 0, 1, len(subs), tuple(subs))
        proto = 1 if sc.meter(address).protocol == "dlt645-1997" else 2
        return g.FoundNode(address, proto, 0, 0)

    async def _run_search(self, path: tuple[str, ...], unit: g.SearchStart) -> None:
        loop = asyncio.get_running_loop()
        t_end = loop.time() + unit.duration_min * 60
        try:
            if unit.start is not None:
                wall = self.scenario.start + timedelta(seconds=self.now())
                await asyncio.sleep(max(0.0, (unit.start - wall).total_seconds()))
            searcher = path[-1] if path else self.address
            route = [self.address, *path]
            reported: set[str] = set()
            reachable = not path or await self._path(route, 24)
            if not reachable:
                log.info("module: search command did not reach proxy %s", searcher)
            # At least 1 + retries rounds; more while answers still collide or new nodes
            # turn up, until the search duration is over.
            min_rounds = 1 + min(unit.retries, 15)
            slices = max(1, unit.slices)
            rounds = 0
            while reachable and loop.time() < t_end:
                rounds += 1
                found, collided = await self._search_round(searcher, route, reported, slices)
                if self.rogues is not None and rounds == 1:
                    found += self.rogues.search_answers(searcher, self.now(), self.rng)
                # Only this search's own slots tell the CCO of collisions (a garbled slot): the
                # medium's count also held the reads' collisions elsewhere in the district,
                # and a search during a reading round never ended before its duration.
                if rounds >= min_rounds and not found and not collided:
                    break
                for address, q in found:
                    back = route[::-1]
                    if path and not await self._path(back, 40):
                        continue  # the proxy's report was lost on the way back
                    reported.add(address)
                    self.stats.found += 1
                    log.info("module: search found %s via %s (quality %d)", address,
                             " > ".join(path) or "the CCO", q)
                    self._report(g.ReportSlaves((self._found_node(address, self.now()),)), 4,
                                 source=address, relays=tuple(reversed(path)),
                                 destination=self.master_address, cmd_quality=q, reply_quality=q)
            self._report(g.RouteWorkStatus(2), 3)
            log.info("module: search from %s done, %d nodes reported", searcher, len(reported))
        finally:
            if self._search is not None and self._search.task is asyncio.current_task():
                self._search = None

    async def _search_round(self, searcher: str, route: list[str], reported: set[str],
                            slices: int) -> tuple[list[tuple[str, int]], int]:
        """One beacon from ``searcher`` and its answers in random slots: the answers heard
        (node, quality) and how many collided in their slots."""
        ch = self.channel
        t = self.now()
        on_path = set(route)
        candidates = [a for a, _ in ch.neighbours(searcher, 0.001, t, direction="out")
                      if a not in on_path and a not in reported and a not in self.archive
                      and ch.node(a).kind != "concentrator"]
        medium0 = ch.media[0]
        beacon = await self.medium.acquire(searcher, None, medium0, 24)
        await asyncio.sleep(beacon.end - beacon.start)
        heard = [a for a in candidates
                 if ch.transmit(searcher, a, 24, beacon.start, self.rng,
                                interferers=self.medium.overlapping(beacon))]
        slots: dict[int, list[str]] = {}
        for a in heard:
            slots.setdefault(self.rng.randrange(slices), []).append(a)
        # A slot holds one answer and a guard of one contention slot for the answerers'
        # timing error; nothing is forwarded during it, so no per-hop processing time.
        slot_len = ch.airtime(40, medium0) + SLOT_S[medium0]
        found: list[tuple[str, int]] = []
        collided_here = 0
        t_round = self.now()
        for k in range(slices):
            mates = slots.get(k, [])
            start = t_round + k * slot_len
            for a in mates:
                others = [b for b in mates if b != a]
                collided = any(ch.interferes(b, searcher, start) for b in others)
                medium = self.medium.medium_for(a, searcher)
                self.medium.occupy(a, medium, start, start + ch.airtime(40, medium), collided)
                if collided:
                    self.medium.collisions += 1
                    collided_here += 1
                    continue
                if ch.transmit(a, searcher, 40, start, self.rng, medium):
                    found.append((a, quality(ch.snr_db(searcher, a, start, medium), medium)))
        await asyncio.sleep(slices * slot_len)
        return found, collided_here


CarrierModule._HANDLERS = {
    **{(0x01, fn): CarrierModule._init for fn in (1, 2, 3)},
    **{(0x03, fn): CarrierModule._query for fn in (1, 4, 10)},
    (0x05, 1): CarrierModule._control,
    (0x05, 3): CarrierModule._control,
    **{(0x10, fn): CarrierModule._route_query for fn in (1, 2, 4)},
    **{(0x11, fn): CarrierModule._route_set for fn in (1, 2, 5, 6)},
    **{(0x12, fn): CarrierModule._route_control for fn in (1, 2, 3)},
    (0x13, 1): CarrierModule._monitor,
}


def wall_time(scenario: Scenario, t: float) -> datetime:
    """Wall time of the district at scenario second ``t``."""
    return scenario.start + timedelta(seconds=t)
