"""The in-process district: world + carrier module + nodes + meters from one scenario and seed.

``SimDistrict`` wires the channel (``simulator.channel``), the meter truth
(``simulator.meterdata``), the meters (``simulator.meters``) and the CCO
(``simulator.module``) and hands the concentrator side byte links::

    async def main():
        district = SimDistrict(scenario, seed=7, start=datetime(2024, 3, 1, 0, 5))
        driver = ModuleDriver(district.module_link(), comm_mode=1, clock=district.clock)
        await driver.start()
        ...
        district.kill_node("000000000161"); district.inject(drop=0.1)
        truth = district.truth()            # what is really out there now
        await district.close()

    asyncio.Runner(loop_factory=VirtualTimeLoop).run(main())   # or plain asyncio.run: real time

Scenario time ``t`` (seconds after ``scenario.start``) follows the event loop's clock from
``start`` on: ``t = (start - scenario.start) + loop.time() - loop_time``, where ``loop_time``
is the loop time that corresponds to ``start`` (the loop time at the first ``module_link()``
when not given). No threads: it runs under ``VirtualTimeLoop`` and in real time alike.

Scenario events (node off/on, meter replaced/installed, noise bursts) act at their times
through the channel and the meter truth; each is logged when its time comes.

Fault injection on the serial link (``inject``): lost chunks, extra delay, chunks split into
pieces, corrupted bytes, in both directions; ``reset_module()`` (archive and pending requests
lost), ``unplug()`` (the link closes: the driver sees ``LinkClosed``) and ``replug()`` (a new
link to the same module). ``kill_node``/``revive_node`` stop and restart a node's modem.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from plc_driver.link import ByteLink, LinkClosed, MemoryLink
from simulator.channel import REF_FRAME_BYTES, Channel
from simulator.meterdata import MeterData
from simulator.meters import MeterBank, serve_meter
from simulator.module import CarrierModule
from simulator.rogue import RogueSet
from simulator.scenario import (
    MeterInstalled,
    MeterReplaced,
    NodeOff,
    NodeOn,
    NoiseBurst,
    Scenario,
)
from simulator.truth import USABLE_P, truth

__all__ = ["SimDistrict", "LinkFaults", "FaultyLink", "DistrictClock", "best_routes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """Serial-link faults, applied per chunk in both directions."""

    drop: float = 0.0  # probability a chunk is lost
    corrupt: float = 0.0  # probability one byte of a chunk is flipped
    split: int = 0  # > 0: chunks are cut into pieces of at most this many bytes
    delay: float = 0.0  # extra seconds before a chunk arrives

    @property
    def any(self) -> bool:
        return bool(self.drop or self.corrupt or self.split or self.delay)


class FaultyLink:
    """The module's end of the serial link with injectable faults (a ``ByteLink``)."""

    def __init__(self, inner: ByteLink, rng: random.Random) -> None:
        self.inner = inner
        self.rng = rng
        self.faults = LinkFaults()
        self.name = f"faulty-{getattr(inner, 'name', 'link')}"
        self._pending: list[bytes] = []
        self._late: deque[tuple[float, list[bytes]]] = deque()

    def _mangle(self, data: bytes) -> list[bytes]:
        f = self.faults
        if not f.any:
            return [data]
        if f.drop and self.rng.random() < f.drop:
            log.info("serial fault: dropped %d bytes", len(data))
            return []
        if f.corrupt and data and self.rng.random() < f.corrupt:
            i = self.rng.randrange(len(data))
            data = data[:i] + bytes([data[i] ^ (1 << self.rng.randrange(8))]) + data[i + 1 :]
            log.info("serial fault: corrupted byte %d of %d", i, len(data))
        if f.split > 0:
            return [data[i : i + f.split] for i in range(0, len(data), f.split)]
        return [data]

    async def read(self) -> bytes:
        while not self._pending:
            chunk = await self.inner.read()
            self._pending = self._mangle(chunk)
            if self._pending and self.faults.delay:
                await asyncio.sleep(self.faults.delay)
        return self._pending.pop(0)

    def write(self, data: bytes) -> None:
        pieces = self._mangle(bytes(data))
        if self.faults.delay or self._late:
            # Delayed chunks leave from one FIFO: timers due at the same moment may run in
            # any order, bytes on a serial line may not.
            loop = asyncio.get_running_loop()
            due = loop.time() + self.faults.delay
            self._late.append((due, pieces))
            loop.call_at(due, self._drain)
        else:
            for p in pieces:
                self.inner.write(p)

    def _drain(self) -> None:
        now = asyncio.get_running_loop().time()
        with contextlib.suppress(LinkClosed):
            while self._late and self._late[0][0] <= now:
                for p in self._late.popleft()[1]:
                    self.inner.write(p)

    def close(self) -> None:
        self.inner.close()


class DistrictClock:
    """``concentrator.clock.Clock`` of the district: wall time = scenario start + t."""

    def __init__(self, district: SimDistrict) -> None:
        self._d = district

    def now(self) -> datetime:
        return self._d.wall_time()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()


def best_routes(channel: Channel, t: float, usable_p: float = USABLE_P) -> dict[str, tuple[str, ...]]:
    """Relay list (CCO side first) of the best route to every reachable node at ``t``.

    Fewest hops over links usable both ways (as the truth counts hops); among equals the
    path whose round-trip success product is highest. Meters behind a collector get the
    collector's relays.
    """
    links = channel.links(t, usable_p)
    p = {(a, b): pp for a, b, pp, _ in links}
    both: dict[str, list[tuple[str, float]]] = {}
    for (a, b), pab in p.items():
        pba = p.get((b, a))
        if pba is not None:
            both.setdefault(a, []).append((b, pab * pba))
    root = channel.scenario.concentrator.address
    best: dict[str, tuple[float, tuple[str, ...]]] = {root: (0.0, ())}
    frontier = [root]
    while frontier:
        level: dict[str, tuple[float, tuple[str, ...]]] = {}
        for a in frontier:
            cost_a, path_a = best[a]
            for b, q in both.get(a, ()):
                if b in best:
                    continue
                cost = cost_a - math.log(max(q, 1e-12))
                if b not in level or cost < level[b][0]:
                    level[b] = (cost, path_a + ((a,) if a != root else ()))
        best.update(level)
        frontier = sorted(level)
    routes = {addr: path for addr, (_, path) in best.items() if addr != root}
    for m in channel.scenario.all_meters():
        if m.collector and m.collector in routes:
            routes[m.address] = routes[m.collector]
    return routes


class SimDistrict:
    """A whole simulated district in this process (see module docstring)."""

    def __init__(self, scenario: Scenario, seed: int | None = None, *,
                 start: datetime | None = None, loop_time: float | None = None,
                 passwords: dict[str, str] | None = None) -> None:
        if seed is not None and seed != scenario.seed:
            scenario = replace(scenario, seed=seed)
        self.scenario = scenario
        self.seed = scenario.seed
        self.start = start or scenario.start
        self._t_start = (self.start - scenario.start).total_seconds()
        self._loop_time = loop_time
        self.channel = Channel(scenario)
        self.meterdata = MeterData(scenario)
        self.meters = MeterBank(scenario, self.channel, self.meterdata, passwords=passwords)
        self.module = CarrierModule(scenario, self.channel, self.meters, now=self.now)
        if scenario.rogues:
            self.module.rogues = RogueSet(scenario)
        self.clock = DistrictClock(self)
        self._rng = random.Random(f"district-link:{self.seed}")
        self._module_end: FaultyLink | None = None
        self._concentrator_end: MemoryLink | None = None
        self._faults = LinkFaults()
        self._tasks: list[asyncio.Task[Any]] = []
        self._events_scheduled = False

    # --- time -------------------------------------------------------------------------------
    def _anchor(self) -> None:
        if self._loop_time is None:
            self._loop_time = asyncio.get_running_loop().time()
        if not self._events_scheduled:
            self._events_scheduled = True
            self._schedule_event_logs()

    def now(self) -> float:
        """Scenario seconds now (``t`` of the channel and the truth)."""
        if self._loop_time is None:
            return self._t_start
        return self._t_start + asyncio.get_running_loop().time() - self._loop_time

    def wall_time(self) -> datetime:
        return self.scenario.start + timedelta(seconds=self.now())

    def _schedule_event_logs(self) -> None:
        loop = asyncio.get_running_loop()
        t = self.now()
        for ev in self.scenario.events:
            if ev.at >= t:
                loop.call_later(ev.at - t, self._log_event, ev)

    def _log_event(self, ev: Any) -> None:
        if isinstance(ev, NodeOff | NodeOn):
            log.info("event: node %s %s", ev.address, "off" if isinstance(ev, NodeOff) else "on")
        elif isinstance(ev, MeterReplaced):
            log.info("event: meter %s replaced by %s", ev.old, ev.new)
        elif isinstance(ev, MeterInstalled) and ev.meter is not None:
            log.info("event: meter %s installed", ev.meter.address)
        elif isinstance(ev, NoiseBurst):
            log.info("event: noise burst %.0f dB at %s for %.0f s", ev.level_db, ev.node, ev.duration_s)

    # --- links ------------------------------------------------------------------------------
    def module_link(self) -> ByteLink:
        """The concentrator's end of a fresh serial link to the module (call in the loop)."""
        conc, mod = MemoryLink.pair()
        conc.name, mod.name = "concentrator-serial", "module-serial"
        self.attach_module(mod)
        self._concentrator_end = conc
        return conc

    def attach_module(self, link: ByteLink) -> None:
        """Serve the module on the module's end of any byte link (a pty, a memory link)."""
        self._anchor()
        end = FaultyLink(link, self._rng)
        end.faults = self._faults
        self._module_end = end
        self.module.attach(end)

    def summary_meter_link(self) -> ByteLink:
        """The concentrator's end of the RS-485 link to the district summary meter."""
        if self.meters.summary is None:
            raise ValueError(f"scenario {self.scenario.name} has no summary meter")
        conc, mtr = MemoryLink.pair()
        conc.name, mtr.name = "concentrator-rs485", "summary-meter"
        self.attach_summary_meter(mtr)
        return conc

    def attach_summary_meter(self, link: ByteLink) -> None:
        """Serve the summary meter on the meter's end of any byte link."""
        self._anchor()
        if self.meters.summary is None:
            raise ValueError(f"scenario {self.scenario.name} has no summary meter")
        task = asyncio.get_running_loop().create_task(
            serve_meter(link, self.meters.summary, self.now, seed=self.seed), name="sim-summary-meter")
        self._tasks.append(task)

    # --- truth ------------------------------------------------------------------------------
    def truth(self, at: float | datetime | str | None = None, **kw: Any) -> dict[str, Any]:
        """``simulator.truth.truth`` of this district (now by default), same channel state."""
        return truth(self.scenario, self.now() if at is None else at, channel=self.channel,
                     meterdata=self.meterdata, **kw)

    def routes(self, at: float | None = None) -> dict[str, tuple[str, ...]]:
        """Best relay list to every reachable node/meter (see :func:`best_routes`)."""
        return best_routes(self.channel, self.now() if at is None else at)

    def route_p(self, path: tuple[str, ...], at: float | None = None) -> float:
        """The truth's probability that a request and its reply both cross ``path`` (CCO,
        relays..., node): a reference frame each way over every hop, no retries."""
        t = self.now() if at is None else at
        p = 1.0
        for a, b in zip(path, path[1:], strict=False):
            p *= self.channel.p_success(a, b, REF_FRAME_BYTES, t) * \
                self.channel.p_success(b, a, REF_FRAME_BYTES, t)
        return p

    # --- faults -----------------------------------------------------------------------------
    def inject(self, *, drop: float = 0.0, corrupt: float = 0.0, split: int = 0,
               delay: float = 0.0) -> None:
        """Serial-link faults from now on (both directions); ``inject()`` clears them."""
        self._faults = LinkFaults(drop, corrupt, split, delay)
        if self._module_end is not None:
            self._module_end.faults = self._faults
        log.info("serial faults: %s", self._faults)

    def reset_module(self) -> None:
        """The module restarts: slave archive and pending requests are lost."""
        self.module.reset()

    def unplug(self) -> None:
        """Pull the module: the link closes, the concentrator's reads raise ``LinkClosed``."""
        if self._module_end is not None:
            self._module_end.close()
        self.module.detach()
        self._module_end = self._concentrator_end = None
        log.warning("module unplugged")

    def replug(self) -> ByteLink:
        """Plug the module back in: a new link (the module kept its state)."""
        log.warning("module plugged in again")
        return self.module_link()

    def kill_node(self, address: str) -> None:
        """The node's modem dies now: it neither relays nor answers."""
        self.channel.set_up(address, False, self.now())

    def revive_node(self, address: str) -> None:
        self.channel.set_up(address, True, self.now())

    async def close(self) -> None:
        """Stop the module and the meter links."""
        await self.module.close()
        if self._module_end is not None:
            self._module_end.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
