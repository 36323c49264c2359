"""The mesh engine: plug-and-play discovery, link learning, probing, repair and node ageing.

``Mesh`` is the concentrator's routing brain on top of the pure core (``mesh.topology``,
``mesh.links``, ``mesh.routes``, ``mesh.persist``) and the module driver
(``plc_driver.driver.ModuleDriver``). The module only carries frames along the relay list it
is given; everything here decides *which* list.

* **Discovery** (``await discover(archive)``): a registration search (AFN11 F5) from the CCO,
  then hop by hop from the found nodes of each level as proxies (the search runs from the node
  at the end of the A-field relay list, see docs/architecture.md), until a level brings no new
  node or the relay depth is reached. A crowded search is stopped at the guard's answer cap
  and made again once its answers are registered; the root search also stops when a round
  brings under 1/``root_tail`` of its best; a level ends after ``empty_streak`` proxy
  searches in a row found nothing (issue 4: 1,000-meter HPLC formation 664 -> 388 -> 305
  sim-s). A search is judged congested by the rounds of searches as many hops out (a deep
  proxy's answers come back slower).
  When the levels run dry, a completeness sweep searches the found nodes never
  searched from (``Mesh._sweep``: short searches spread over the finders' regions, until
  ``sweep_empty`` in a row found nothing), and follows whatever it finds outwards: the level
  rules had left pockets 2-3 hops out unfound (1,000-meter npl 989 -> 1000/1000).
  Every found node is registered with the module (AFN11 F1,
  with a collector's RS-485 meters) so it stays quiet in later searches. Archive meters come
  first (registered and used as proxies before unknown nodes); a node not in the master's
  archive is reported as ``UnknownMeter`` and admitted or quarantined per
  ``MeshConfig.unknown_node_policy`` (quarantined nodes are read but never relay). With no
  archive at all (plug and play from scratch) every node is admitted and still reported.
* **Rogue nodes**: every search's reports are screened by ``mesh.guard`` first (duplicate
  addresses, repeated reports, floods); what it drops is never used and is reported as
  ``mesh.guard.RogueSuspected``.
* **Learning**: every exchange outcome goes to ``Topology.observe_path`` (the last hop's R4
  signal quality included); search reports give both directions of the proxy-node hop.
* **Probing**: once discovery has given every node its search route, ``discover`` returns and
  reading may start; in the background (``wait_alternates()``), only while no read has been
  in flight for ``gap_idle_s`` and with at most half the module's read slots, each node is
  probed (a cheap DL/T 645 read-address, or a short read for
  collectors and 1997 meters) through candidate relays from its neighbourhood (those its
  common neighbours heard most alike first: ``Topology.unlikeness``) until it has a
  primary and ``alternates`` alternates or the probe budget is spent; then routes whose choice
  is uncertain (``Topology.needs_probe``) are probed along the route itself. Before both,
  the **survey** (``EngineTuning.survey``) searches once from every relay of a primary route
  with the nodes around it taken out of the module's archive: formation hears each node from
  the one proxy that found it, and the survey adds the hops between relays that carry the
  reads when the day's noise breaks the night's chains.
  ``EngineTuning.alternates_at_formation`` probes before ``discover`` returns (``probe_phases``).
* **Search sizing**: a proxy search asks for about half as many answer slots as the last proxy
  searches heard answers (at least ``proxy_slices``); a search stopped mid-round is followed by
  the next only when the round's answers are over; answers already sent when a search is
  stopped are kept; a level that runs dry is searched from its weakest-heard nodes (its edge)
  before it ends.
* **Exchange** (``await exchange(address, dlt645_bytes, priority=...)``): primary route first,
  alternates at once on failure; a node unreachable on every route triggers a background repair
  (probes through its neighbourhood, then a local search from its last known neighbours, which
  also finds a meter replaced at the same spot under its new address). A repair that heard
  nothing holds the node's next one off (``repair_backoff_s``, doubled each time up to
  ``repair_backoff_max_s``). A replaced meter leaves the module's slave archive (the new one
  takes its slot) and its reads fail at once, "replaced by ..." (``replaced_by``), until it is
  heard again or aged out. An add the module refuses with its archive full is not sent again
  until a node leaves it. A relay suspected after
  a broken route is checked once however many reads meet it, starting as soon as the
  primary fails (beside the alternates' attempts); a long route's suspects are bisected
  first, and the checks of several relays probe side by side, never under a search.
  Declared dead, a relay gets one group
  repair for every node it left with no route (they are taken out of the module's archive so
  they answer, and searched for from the relay's live neighbours); reads of those nodes wait
  for it (``repair_wait_s``). A repair search ends once the nodes it is for have answered.
* **Reports**: the mesh owns the module's report queue (``drain_reports``): reports outside a
  search are logged, a search keeps its own (the daemon's drain loop once took every other
  one, found nodes included).
* **Defaults by medium**: ``EngineTuning.for_comm_mode`` (HPLC and RF repeat the CCO's search
  once and sweep shorter than narrowband).
* **Ageing** (``await age()``): nodes silent longer than ``node_silence_timeout`` are deleted
  from the topology and the module's slave archive; the deletion is reported.
* **Persistence**: ``save()`` after discovery and from ``maintain()`` every ``save_period``;
  ``Mesh.restore(...)`` brings the saved mesh back so reading resumes with no discovery.

Events go to ``on_event`` (a plain callable): the engine's own events below plus the core's
``RouteChanged``/``NodeAdded``/``NodeDeleted``/``LinkDown``... events, drained after each step.

Persistence: ``save()`` writes inside ``Store.batch()`` when given a ``Store`` (so the mesh state
and whatever else the batch holds commit together); ``mesh.persist.save`` uses
``Database.atomic()``, a savepoint inside that batch.

The code: ``Mesh`` here (exchanges, probing for alternates, the survey, upkeep, ageing,
persistence) with two mixins, ``mesh.discovery.Discovery`` (formation searches) and
``mesh.repair.Repair`` (relay checks and repairs); the knobs in ``mesh.tuning``, the events in
``mesh.events``. They log as ``mesh.engine``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from concentrator import dlt645
from concentrator.clock import Clock
from concentrator.config import MeshConfig
from mesh import persist
from mesh.background import background as _background
from mesh.discovery import ArchiveItem, Discovery, _proto_name
from mesh.events import (
    ExchangeOutcome,
    NodeAged,
)
from mesh.guard import MeshGuard
from mesh.repair import Repair
from mesh.routes import Route
from mesh.slots import released_while_waiting
from mesh.topology import NodeKind, NodeStatus, Topology
from mesh.tuning import EngineTuning
from plc_driver.driver import (
    ExchangeResult,
    ModuleArchiveFull,
    ModuleDriver,
    ModuleError,
    ReadFailure,
)
from plc_driver.link import LinkClosed

__all__ = ["Mesh"]  # its events: mesh.events; its knobs: mesh.tuning (or the package, mesh)

log = logging.getLogger(__name__)

DENY_SLAVE_SILENT = 11  # AFN00 F2: the node did not answer (a hop of the path failed)
DENY_METER_SILENT = 8  # the node answered but its meter did not: the path itself worked
DENY_BUSY = 9  # module busy / archive full: not the links' fault


def _crosses(route: Route, hops: frozenset[tuple[str, str]]) -> bool:
    """True when ``route`` has one of ``hops`` (pairs of addresses, either order given)."""
    path = route.path
    return any((path[i], path[i + 1]) in hops for i in range(len(path) - 1))


class _SearchLock(asyncio.Lock):
    """The engine's search lock; ``free`` is set while no search holds or waits for it.

    A search reads the module's reports itself from the driver's one report queue; any other
    reader of that queue (the daemon's drain of reports outside searches) would take every
    other report, found nodes included. ``Mesh.drain_reports`` stands aside while this is
    not ``free`` (found by the churn week: meters swapped in were heard by a repair search,
    their report went to the drain and they stayed unknown for days).
    """

    def __init__(self) -> None:
        super().__init__()
        self.users = 0
        self.free = asyncio.Event()
        self.free.set()
        self.wanted = asyncio.Event()

    async def acquire(self) -> bool:
        self.users += 1
        self.free.clear()
        self.wanted.set()
        try:
            return await super().acquire()
        except BaseException:
            self._left()
            raise

    def release(self) -> None:
        super().release()
        self._left()

    def _left(self) -> None:
        self.users -= 1
        if self.users <= 0:
            self.users = 0
            self.wanted.clear()
            self.free.set()


@dataclass
class _Stats:
    searches: int = 0
    reads: int = 0
    probes: int = 0
    found: int = 0
    discovery_s: float = 0.0
    first_read_s: float = 0.0  # from the start of discovery until reading can start
    #: one (level, proxy, slots, sim-s, answers, new nodes) per search, for the bench's profile
    search_log: list[tuple[int, str, int, float, int, int]] = field(default_factory=list)
    by_level: dict[int, int] = field(default_factory=dict)




class Mesh(Discovery, Repair):
    """Discovery, routing, probing, repair and ageing of one district (see module docstring)."""

    def __init__(
        self,
        driver: ModuleDriver,
        topology: Topology,
        *,
        clock: Clock,
        config: MeshConfig | None = None,
        db: Any = None,
        on_event: Callable[[Any], None] | None = None,
        tuning: EngineTuning | None = None,
    ) -> None:
        self.driver = driver
        self.topology = topology
        self.clock = clock
        self.config = config or MeshConfig()
        self.tuning = tuning or EngineTuning.for_comm_mode(getattr(driver, "comm_mode", None))
        if self.tuning.route_quality_weight is not None:
            topology.set_quality_weight(self.tuning.route_quality_weight)
        topology.set_worst_period(self.tuning.worst_period)
        self.db = db
        self.on_event = on_event
        self.stats = _Stats()
        self.archive: dict[str, int] = {}  # master archive: address -> 1 (645-97) / 2 (645-07)
        self._finder: dict[str, tuple[str, int | None]] = {}  # node -> (proxy, quality)
        self._host: dict[str, str] = {}  # RS-485 meter -> its collector
        self._registered: set[str] = set()
        self._search_lock = _SearchLock()  # also tells drain_reports to stand aside
        self._discovering = False
        #: found during discovery but heard only weakly so far: registered when discovery ends
        self._unregistered: dict[str, int] = {}
        self._late_reg: list[tuple[str, int]] = []
        self._search_cut = False  # the last search was stopped early: make it again
        self._retry_slices: int | None = None  # answer slots for that next search
        #: seconds one answer slot of a search lasts (learned from the searches' first answers)
        self._slice_s: float | None = None
        #: (slots, hops to the proxy) of a search -> the quickest first answer such a search
        #: gave (a round's length)
        self._round_s: dict[tuple[int, int], float] = {}
        #: distinct answers of the last proxy searches (they size the next one's slots)
        self._answers: list[int] = []
        self._repairs: dict[str, asyncio.Task[None]] = {}
        self._bg_checks: set[asyncio.Task[None]] = set()  # relay checks after alternate reads
        self._gap_task: asyncio.Task[None] | None = None  # alternates probed after discovery
        self._reads_in_flight = 0  # exchanges under way (background probes wait for none)
        self._reads_waiting_repair = 0  # ... of them, waiting for a repair under way
        self._sweeping = False  # the completeness sweep is searching (verify what it finds)
        self._last_read_end = float("-inf")
        self._reads_idle = asyncio.Event()
        self._relay_checked: dict[str, float] = {}  # relay -> when it was last checked
        #: relay -> its check under way (True: declared dead): reads in flight at once that
        #: meet the same silent relay wait for that one check, no second probe or repair
        self._relay_checks: dict[str, asyncio.Task[bool]] = {}
        #: relays of broken routes whose check is under way: how many checks suspect each,
        #: and when the latest of their failed reads was sent (see ``_detour``)
        self._suspects: dict[str, tuple[int, float]] = {}
        self._bisect_probes: dict[str, asyncio.Task[bool]] = {}  # see _bisect_relays
        self._checks_in_flight = 0  # relay check probes under way (see _beside_checks)
        self._search_proxy: str | None = None  # the proxy of the search under way
        self._search_over = asyncio.Event()
        self._search_over.set()
        self._checks_idle = asyncio.Event()
        self._checks_idle.set()
        #: node -> when a repair search from it last heard nodes (it is alive, see
        #: ``heard_alive_s``)
        self._search_heard: dict[str, float] = {}
        self._quick_repaired: dict[str, float] = {}  # node -> last inline repair (exchange)
        #: silent node -> {proxy: when a repair search for it went out from there}
        self._searched_for: dict[str, dict[str, float]] = {}
        #: relay declared dead and the nodes it relayed -> their level just before (their
        #: routes are gone, and with them ``Node.level``): where a repair looks around them
        self._level_before: dict[str, int] = {}
        self._repair_sem: asyncio.Semaphore | None = None  # repair probes in flight
        #: node -> (fruitless repairs in a row, no repair from its reads before this time)
        self._repair_backoff: dict[str, tuple[int, float]] = {}
        #: old meter -> (its replacement, when found): out of the module's archive, never
        #: searched for; its reads fail at once until it is heard again or aged out
        self._replaced: dict[str, tuple[str, float]] = {}
        #: the module refused an add, its slave archive full: no add is sent until a delete
        #: frees a slot (each refused add was an AFN11 F1 exchange and a warning, per repair)
        self._archive_full = False
        self._last_save: float | None = None
        self._saved: persist.SavedRows | None = None  # the mesh tables as last committed
        self.guard = MeshGuard()  # rogue nodes: screens every search's reports (mesh.guard)
        self._last_survey: float | None = None  # when the last survey ended (``survey``)
        #: when the module's slave archive was last checked and how many nodes the checks
        #: have added back since the start (``sync_module_archive``; the daemon's status)
        self.archive_checked_at: float | None = None
        self.archive_added_back = 0
        #: addresses taken out of the module's archive on purpose (a survey's ring, a repair
        #: search's node, a replaced meter) until added back: ``sync_module_archive`` leaves
        #: them out, also while their delete (AFN11 F2) is still on its way
        self._held_out: set[str] = set()
        self._survey_task: asyncio.Task[int] | None = None  # a survey the upkeep started
        self._rebuild_hosts()

    # --- construction from saved state -------------------------------------------------------

    @classmethod
    def restore(
        cls,
        driver: ModuleDriver,
        db: Any,
        *,
        clock: Clock,
        config: MeshConfig | None = None,
        on_event: Callable[[Any], None] | None = None,
        tuning: EngineTuning | None = None,
    ) -> Mesh | None:
        """The mesh saved in ``db`` (a ``Store`` or a sqlite-utils ``Database``), or None."""
        try:
            topo = persist.load(_database(db))
        except persist.MeshStateError as exc:
            log.info("mesh: no saved state (%s): discovery needed", exc)
            return None
        mesh = cls(driver, topo, clock=clock, config=config, db=db, on_event=on_event,
                   tuning=tuning)
        # Everything in the saved mesh was registered with the module before the restart.
        mesh._registered = {n.address for n in topo.nodes() if n.address != topo.root}
        for a, (new, t, fruitless, until) in persist.load_repairs(_database(db)).items():
            if a not in topo:
                continue
            if new is not None and new in topo:
                mesh._replaced[a] = (new, t if t is not None else mesh._now())
                mesh._registered.discard(a)  # it left the module's archive for good
            if fruitless and until is not None:
                mesh._repair_backoff[a] = (fruitless, until)
        mesh._last_save = mesh._now()
        mesh._last_survey = mesh._now()
        log.info("mesh: restored %d nodes, %d with a route", len(topo.nodes()) - 1,
                 len(topo.planner.published))
        return mesh

    @property
    def root(self) -> str:
        return self.topology.root

    @property
    def formed(self) -> bool:
        """True when some node has a route (a restored or discovered mesh)."""
        return bool(self.topology.planner.published)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _rebuild_hosts(self) -> None:
        self._host = {}
        for n in self.topology.nodes():
            for m in n.sub_meters:
                self._host[m] = n.address

    def host_of(self, address: str) -> str:
        """The node whose modem reaches ``address``: itself, or its collector."""
        return self._host.get(address, address)

    # --- events --------------------------------------------------------------------------------

    def _emit(self, event: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:  # a faulty listener must not stop routing
            log.exception("mesh: event listener failed on %s", type(event).__name__)

    def _flush(self) -> None:
        for ev in self.topology.drain_events():
            self._emit(ev)

    # --- discovery -----------------------------------------------------------------------------

    def set_archive(self, archive: Iterable[ArchiveItem] | None) -> None:
        """The master station's meter archive (addresses with optional protocol)."""
        self.archive = {}
        for item in archive or ():
            addr, proto = _archive_entry(item)
            if addr is None:
                log.warning("mesh: archive entry %r rejected (no valid address)", item)
                continue
            self.archive[addr] = proto

    def _known(self, address: str, subs: Iterable[str] = ()) -> bool:
        return address in self.archive or any(s in self.archive for s in subs)

    async def _register(self, pairs: list[tuple[str, int]]) -> None:
        pairs = [(a, p) for a, p in dict(pairs).items() if a not in self._registered]
        if not pairs:
            return
        # Archive meters first: if the module's slave archive fills, they are the ones in it.
        pairs.sort(key=lambda ap: (0 if ap[0] in self.archive else 1, ap[0]))
        if self._archive_full:
            log.info("mesh: module's slave archive full, %s not registered",
                     ", ".join(a for a, _ in pairs[:8]))
            return
        try:
            await self.driver.add_slaves(pairs)
        except ModuleArchiveFull as exc:
            # Asked again it would refuse again (one AFN11 F1 and a warning per repair, 98 in
            # the 2,040-meter trial's two days): no add until a delete frees a slot.
            self._archive_full = True
            done = len(pairs) - len(exc.refused)
            self._registered.update(a for a, _ in pairs[:done])
            self._held_out.difference_update(a for a, _ in pairs[:done])
            log.warning("mesh: module's slave archive full (%d of %d): %s not registered; "
                        "no registration until a node leaves it", exc.count, exc.capacity,
                        ", ".join(exc.refused[:8]))
            return
        except ModuleError as exc:
            log.warning("mesh: registering %d nodes failed: %s", len(pairs), exc)
            return
        self._registered.update(a for a, _ in pairs)
        self._held_out.difference_update(a for a, _ in pairs)

    def _slave_pairs(self, address: str) -> list[tuple[str, int]]:
        """``address`` and a collector's RS-485 meters as the module's slave entries (address,
        protocol: 1 = DL/T 645-1997, 2 = 2007)."""
        node = self.topology.node(address)
        return [(address, 1 if node.protocol == "dlt645-1997" else 2),
                *((s, self.archive.get(s, 2)) for s in node.sub_meters)]

    async def _unregister(self, addresses: list[str]) -> None:
        """Delete ``addresses`` from the module's slave archive (AFN11 F2; ``ModuleError``
        when refused): the slots it frees take adds again."""
        out = set(addresses) - self._held_out
        self._held_out |= out
        try:
            await self.driver.delete_slaves(addresses)
        except BaseException:
            self._held_out -= out  # (refused, or the link closed: they are still in it)
            raise
        if self._registered.intersection(addresses):
            self._archive_full = False  # (deleting a node it does not hold frees nothing)
        self._registered.difference_update(addresses)

    # --- probing -------------------------------------------------------------------------------

    def _probe_frame(self, address: str) -> tuple[str, bytes]:
        """(target address, DL/T 645 frame) of the cheapest read that proves the path."""
        node = self.topology.node(address)
        if node.kind is NodeKind.COLLECTOR:
            if not node.sub_meters:
                return address, dlt645.encode(dlt645.read_address_request())
            sub = node.sub_meters[0]
            if self.archive.get(sub) == 1:
                return sub, dlt645.encode(dlt645.read_request_1997(sub, 0x9010))
            return sub, dlt645.encode(dlt645.read_request(sub, 0x00010000))
        if node.protocol == "dlt645-1997":
            return address, dlt645.encode(dlt645.read_request_1997(address, 0x9010))
        return address, dlt645.encode(dlt645.read_address_request())

    async def probe(self, address: str, relays: Iterable[str] | None = None) -> bool:
        """One probe read of node ``address`` along ``relays`` (default: its primary route).

        Learns from the outcome like any exchange; True when the path worked.
        """
        host = self.host_of(address)
        if relays is None:
            route = self.topology.primary(host)
            if route is None:
                return False
            relays = route.relays
        path = (self.root, *tuple(relays), host)
        target, frame = self._probe_frame(host)
        self.stats.probes += 1
        result = await self._read(target, host, path, frame, self.tuning.probe_timeout)
        ok = self._learn(path, result, None)
        self._flush()
        return ok

    async def probe_phases(self) -> None:
        """After discovery: give every node a primary and the wanted alternates, probing
        candidate relays from its neighbourhood; then probe uncertain route choices."""
        topo = self.topology
        nodes = sorted((n for n in topo.nodes() if n.address != self.root and n.level),
                       key=lambda n: (n.level or 99, n.address))
        sem = asyncio.Semaphore(max(1, self.driver.max_concurrent))

        async def one(addr: str) -> None:
            async with sem:
                await self._find_alternates(addr)
        await asyncio.gather(*(one(n.address) for n in nodes))
        await self.probe_uncertain()

    def _start_gap_probing(self) -> None:
        if self._gap_task is not None and not self._gap_task.done():
            self._gap_task.cancel()
        topo = self.topology
        nodes = [n.address for n in sorted((n for n in topo.nodes()
                                            if n.address != self.root and n.level),
                                           key=lambda n: (n.level or 99, n.address))]
        self._gap_task = _background(self._probe_in_gaps(nodes), "mesh-alternates")

    async def _probe_in_gaps(self, nodes: list[str]) -> None:
        """``probe_phases`` in the background: at most half the module's read slots (the
        rest stay with the reader; with one slot, one probe at a time), each probe after
        ``gap_probe_s`` (a read waiting for the slot goes first); then uncertain routes; then
        the mesh is saved."""
        todo = list(nodes)

        async def worker() -> None:
            while todo:
                addr = todo.pop(0)
                if addr in self.topology and self.topology.node(addr).level:
                    await self._find_alternates(addr, pause=self.tuning.gap_probe_s)
        workers = max(1, self.driver.max_concurrent // 2)
        try:
            if self.tuning.survey:
                # First: with the relays' hops known, most nodes have their alternates without
                # a probe (1,000-meter hplc feeder: probing done at 4,154 sim-s, against 5,846
                # with the survey after it and 5,051 with none).
                await self.survey()
            await asyncio.gather(*(worker() for _ in range(workers)))
            for _pass in range(self.tuning.weak_passes):
                todo = [a for a in nodes if a in self.topology and self._weak_primary(a)]
                if not todo:
                    break
                log.info("mesh: %d nodes have a weak primary: probing them again", len(todo))
                await asyncio.gather(*(worker() for _ in range(workers)))
            await self.probe_uncertain()
            self.save()
            log.info("mesh: alternates probed for %d nodes", len(nodes))
        except LinkClosed:
            log.info("mesh: probing for alternates stopped, the module link closed")

    async def _wait_for_quiet(self, pause: float = 0.0, *, but_repair_waits: bool = False,
                              idle_s: float | None = None) -> None:
        """Wait for a pause in the reads (none in flight for ``idle_s``, default
        ``gap_idle_s``), then ``pause``.

        ``but_repair_waits``: reads waiting for a repair do not count (a repair search waits
        so: those reads wait for it, they would be waiting for each other)."""
        loop = asyncio.get_running_loop()
        idle = self.tuning.gap_idle_s if idle_s is None else idle_s
        while True:
            if self._reads_in_flight > (self._reads_waiting_repair if but_repair_waits else 0):
                self._reads_idle.clear()
                await self._reads_idle.wait()
                continue
            quiet = loop.time() - self._last_read_end
            if quiet >= idle:
                break
            await asyncio.sleep(idle - quiet)
        await asyncio.sleep(pause)

    async def wait_alternates(self) -> None:
        """Wait until the background probing for alternates after discovery is done."""
        if self._gap_task is not None:
            await asyncio.gather(self._gap_task, return_exceptions=True)

    def _candidates(self, address: str, include_down: bool = False) -> list[str]:
        """Relays worth a probe for ``address``: its neighbourhood two hops out, those heard
        most alike by their common neighbours first (``Topology.unlikeness``), then nearest
        level.

        ``include_down``: also relays whose link to ``address`` is down, after the others (a
        repair: a probe is the only way a link marked down comes back)."""
        topo = self.topology
        node = topo.node(address)
        level = node.level or 1
        current = {r for route in topo.routes(address) for r in route.relays}
        primary = topo.primary(address) if self.tuning.rank_stronger_first else None
        weak = self._weak_hops(primary) if primary is not None else frozenset()
        kept = []
        # The loop's invariants and lookups taken out of it (the two-hop ring of a street
        # node is hundreds of nodes; a repair or the probing for alternates ranks them all)
        root = self.root
        too_deep = self.config.max_relay_depth + 1
        medium = self.tuning.search_medium
        relay_primary = topo.planner.primary
        cheapest_hop = self._cheapest_hop()
        for w in self._ring(address):
            if w == address or w == root or w in current:
                continue
            wn = topo.find_node(w)
            if wn is None or wn.status is not NodeStatus.APPROVED or wn.level is None:
                continue
            if wn.level > level or wn.level >= too_deep:
                continue
            est = topo.link(w, address, medium)
            down = est is not None and est.down
            if down and not include_down:
                continue
            route = relay_primary(w)
            if route is None or address in route.relays:
                continue
            # _cannot_beat, inline; a relay behind the same marginal hop as the primary cannot
            # beat it either, however cheap its own route looks
            dear = primary is not None and (route.cost + cheapest_hop >= primary.cost
                                            or (bool(weak) and _crosses(route, weak)))
            kept.append((down, dear, abs(wn.level - (level - 1)), -route.p, w))
        # How alike the kept relays are heard is worked out for them alone (the score of a
        # node does not depend on which others are scored); the order is the sort's.
        alike = topo.unlikeness(address, among={k[-1] for k in kept}) \
            if self.tuning.rank_alike else {}
        out = [(down, dear, alike.get(w, 0.0), lv, p, w) for down, dear, lv, p, w in kept]
        return [w for *_k, w in sorted(out)]

    def _cheapest_hop(self) -> float:
        """The cheapest a hop can cost (its airtime on the fastest medium): ``_cannot_beat``."""
        return min(self.topology.route_cfg.hop_time.values(), default=0.0)

    def _cannot_beat(self, relay_route: Route, primary: Route,
                     weak: frozenset[tuple[str, str]]) -> bool:
        """A relay whose own route plus the cheapest hop already costs as much as the node's
        primary cannot give it a stronger one (hop costs are positive and add up), nor can one
        whose route crosses a marginal hop of the primary (``weak``: its ``_weak_hops``)."""
        if relay_route.cost + self._cheapest_hop() >= primary.cost:
            return True
        return bool(weak) and _crosses(relay_route, weak)

    def _weak_hops(self, route: Route) -> frozenset[tuple[str, str]]:
        """The hops of ``route`` heard below ``weak_quality`` either way (both orders of
        each). A weak primary's siblings behind the same marginal hop are heard most alike
        and look cheap, but the probe for them repeats the margin the node needs to leave
        (2,040-meter hplc feeder, seed 1: 212 meters behind one quality 7/6 first hop had its
        siblings as their first 6 candidates and never tried the strong relays beside it)."""
        weak = []
        for a, b, m in route.hops():
            for x, y in ((a, b), (b, a)):
                est = self.topology.link(x, y, m)
                if est is not None and est.quality is not None \
                        and est.quality < self.tuning.weak_quality:
                    weak += [(a, b), (b, a)]
                    break
        return frozenset(weak)

    def _ring(self, address: str) -> set[str]:
        """Nodes within two known hops of ``address``."""
        return self.topology.two_hop_ring(address)

    def _weak_primary(self, address: str) -> bool:
        """True when a hop of the primary route was heard below ``weak_quality`` either way:
        it works tonight but has little margin for the evening noise, so a stronger route
        is worth looking for even when the wanted alternates are already there; or when a
        hop's worst period of the day carries under ``weak_p`` of the exchanges both ways."""
        route = self.topology.primary(address)
        if route is None:
            return False
        if self._weak_hops(route):
            return True
        for a, b, m in route.hops():
            two_way = 1.0
            for x, y in ((a, b), (b, a)):
                est = self.topology.link(x, y, m)
                if est is not None:
                    two_way *= est.p_worst
            if two_way < self.tuning.weak_p:
                return True
        return False

    async def _find_alternates(self, address: str, pause: float = 0.0) -> None:
        topo = self.topology
        tried = 0
        if pause:
            real_probe = self.probe

            async def probe(addr: str, relays: Iterable[str] | None = None) -> bool:
                await self._wait_for_quiet(pause)
                return await real_probe(addr, relays)
        else:
            probe = self.probe
        primary = topo.primary(address)
        if primary is not None and primary.relays and topo.link(self.root, address) is None \
                and topo.link(address, self.root) is None:
            # The CCO itself is the best relay list there is (no relay): a node found through
            # a proxy was often within the CCO's reach too, but registered before the root
            # search heard it. One direct probe settles it (on a 1,000-meter NPL street 3 of 4
            # nodes hear the CCO directly; discovery had found 1 in 5 that way).
            tried += 1
            await probe(address, ())
        def have_alternates() -> bool:
            return len(topo.routes(address)) >= 1 + self.tuning.alternates

        def enough() -> bool:
            return have_alternates() and not self._weak_primary(address)

        weak_of: list[Any] = [None, frozenset()]  # (primary, its _weak_hops), worked out once

        def cannot_help(route: Route) -> bool:
            # Only a stronger primary is wanted, and the relay's own route already costs as
            # much as the primary: no hop from it can make a cheaper one (hop costs add up
            # and are positive). Not probed, not counted.
            if not self.tuning.skip_dear_candidates or not have_alternates():
                return False
            primary = topo.primary(address)
            if primary is None:
                return False
            if weak_of[0] is not primary:  # a probe may have moved the primary
                weak_of[:] = [primary, self._weak_hops(primary)]
            return self._cannot_beat(route, primary, weak_of[1])
        # The loop below would stop at its first candidate: skip working the candidates out
        # (a sort of the whole two-hop neighbourhood, a route each: most of the CPU of a round
        # that overlaps the probing for alternates).
        candidates = [] if enough() or tried >= self.tuning.probes_per_node \
            else self._candidates(address)
        for w in candidates:
            if enough():
                break
            if tried >= self.tuning.probes_per_node:
                break
            route = topo.primary(w)
            if route is None or address in route.relays or cannot_help(route):
                continue
            tried += 1
            await probe(address, (*route.relays, w))
        if not topo.node(address).phase and topo.primary(address) is not None:
            await probe(address)  # the phase comes back in the read's R3

    async def probe_uncertain(self) -> int:
        """Probe along the routes whose choice is in doubt; returns the probes made."""
        if not self.config.probing:
            return 0
        done = 0
        for _round in range(self.tuning.uncertain_probes):
            doubtful = [n.address for n in self.topology.nodes()
                        if n.address != self.root and n.level
                        and self.topology.needs_probe(n.address, self.tuning.uncertain_std)]
            if not doubtful:
                break
            for addr in doubtful:
                for route in self.topology.routes(addr)[:2]:
                    await self.probe(addr, route.relays)
                    done += 1
        return done

    # --- exchanges -------------------------------------------------------------------------------

    async def _read(self, target: str, host: str, path: tuple[str, ...], frame: bytes,
                    timeout: float | None) -> ExchangeResult:
        relays = path[1:-1]
        if target != host:
            relays = (*relays, host)  # the collector carries the frame to its RS-485 meter
        while self._search_proxy is not None and self._search_proxy in path[1:] \
                and self.tuning.reads_wait_for_proxy:
            # The proxy of the search under way is busy with its beacons and answer rounds:
            # a read to or through it then failed like a dead node's (1,000-meter hplc
            # street: the group repair's proxy lost its own read to its probes meanwhile).
            await self._search_over.wait()
        self.stats.reads += 1
        result = await self.driver.read(target, relays, frame, timeout=timeout)
        if result.deny_code == DENY_BUSY:
            await asyncio.sleep(self.tuning.busy_retry_s)
            self.stats.reads += 1
            result = await self.driver.read(target, relays, frame, timeout=timeout)
        return result

    def _learn(self, path: tuple[str, ...], result: ExchangeResult,
               route: Route | None) -> bool:
        """Feed one read's outcome to the topology; True when the path carried it."""
        topo = self.topology
        path_ok = result.ok or result.deny_code == DENY_METER_SILENT
        if not path_ok and not (result.failure is ReadFailure.DENIED
                                and result.deny_code == DENY_SLAVE_SILENT):
            # A driver timeout, a busy module or a garbled reply says nothing about the links.
            log.info("mesh: read %s via %s: %s, not learned", path[-1], list(path[1:-1]),
                     result.failure)
            return False
        n = len(path) - 1
        quals: list[Any] = [None] * n
        if result.cmd_quality is not None or result.reply_quality is not None:
            quals[-1] = (result.cmd_quality, result.reply_quality)
        t = self._now()
        try:
            topo.observe_path(route if route is not None and route.path == path else path,
                              path_ok, t=t, qualities=quals)
        except ValueError as exc:
            log.warning("mesh: outcome via %s not learned: %s", list(path), exc)
            return path_ok
        if result.phase and path[-1] in topo:
            node = topo.node(path[-1])
            if node.phase != result.phase:
                topo.add_node(path[-1], node.kind, phase=result.phase)
        return path_ok

    async def exchange(self, address: str, dlt645_bytes: bytes, *,
                       priority: bool = False) -> ExchangeOutcome:
        """Carry one DL/T 645 request to meter ``address`` (see module docstring).

        Never raises for a failed read (the outcome says why); ``LinkClosed`` from the driver
        (the serial port is gone) propagates.
        """
        # Counted so that background probing keeps out of the reads' way (_wait_for_quiet).
        self._reads_in_flight += 1
        try:
            return await self._exchange(address, dlt645_bytes, priority=priority)
        finally:
            self._reads_in_flight -= 1
            self._last_read_end = asyncio.get_running_loop().time()
            self._note_reads_idle()

    async def _exchange(self, address: str, dlt645_bytes: bytes, *,
                        priority: bool = False) -> ExchangeOutcome:
        """Carry one DL/T 645 request to meter ``address`` (see module docstring).

        Never raises for a failed read (the outcome says why); ``LinkClosed`` from the driver
        (the serial port is gone) propagates. ``priority`` is accepted for the reader's sake:
        ordering is the reader's job, the mesh tries the routes the same way.
        """
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        since = self._now()  # a relay seen working after this is not the one that failed
        host = self.host_of(address)
        if host not in self.topology:
            log.info("mesh: exchange with unknown meter %s refused", address)
            return ExchangeOutcome(address, None, "unknown meter", None, 0, 0.0)
        if host in self._replaced:
            new = self.replaced_by(host)
            if new is not None:
                # No radio, no repair: the reason goes to the round's unread list for the
                # operator, until the master station's archive drops the old meter.
                log.info("mesh: read of %s not sent: replaced by %s", address, new)
                return ExchangeOutcome(address, None, f"replaced by {new}", None, 0, 0.0)
            log.warning("mesh: meter %s heard again after its replacement by %s was found: "
                        "a node of the mesh again", host, self._replaced.pop(host)[0])
            await self._register(self._slave_pairs(host))
        primary = self.topology.primary(host)
        if primary is None:
            # A repair under way (started when a relay was declared dead, or by an earlier
            # read) may give it a route in a moment: waiting beats losing the read.
            task = self._repairs.get(host)
            if task is not None and not task.done():
                await self._wait_repair(task, host)
            primary = self.topology.primary(host)
        if primary is None:
            log.info("mesh: no route to %s", address)
            self._start_repair(host)
            return ExchangeOutcome(address, None, "no route", None, 0, loop.time() - t0)
        # Alternates are worked out only once the primary has failed (and that failure has
        # been learned): most exchanges never need them, and the search was per-read CPU.
        routes = [primary]
        if self._suspects and self.tuning.avoid_checked_relays:
            detour = self._detour(address, host, primary)
            if detour is not None:
                routes = [detour, primary]
        alternates_fetched = False
        attempts = 0
        last_route: Route | None = None
        failure = "no reply"
        tried: set[tuple[str, ...]] = set()
        failed_primary = False  # the primary's path broke (a relay or hop did not answer)
        while routes:
            route = routes.pop(0)
            if route.path in tried:
                continue
            tried.add(route.path)
            attempts += 1
            last_route = route
            result = await self._read(address, host, route.path, dlt645_bytes, None)
            path_ok = self._learn(route.path, result, route)
            self._flush()
            if result.ok:
                self._repair_backoff.pop(host, None)
                if route is not primary and failed_primary \
                        and not (primary.relays and self.tuning.early_relay_check):
                    # The read is done: the check of the relay it suspects goes on without
                    # holding the read (its probes may wait for a repair search, and a
                    # daily round's slot held that long slowed the round by minutes).
                    self._check_relays_bg(primary, route, since)
                return ExchangeOutcome(address, result.reply, None, route, attempts,
                                       loop.time() - t0)
            if route is primary and not path_ok and result.deny_code == DENY_SLAVE_SILENT:
                failed_primary = True
                if route.relays and self.tuning.early_relay_check:
                    # The relays are checked while the alternates are tried: most alternates
                    # share a relay with the primary (the node's one heard neighbour), and a
                    # dead one fails them all, a timeout each, before its check would start.
                    self._check_relays_bg(primary, None, since)
            failure = _failure_text(result)
            if path_ok:
                break  # the node answered, its meter did not: another route will not help
            if not alternates_fetched:
                alternates_fetched = True
                routes = [r for r in self.topology.routes(host)
                          if r.path not in tried][:self.tuning.alternates]
            if not routes:
                # Learning may have produced a new route that avoids the failed relays.
                alt = self.topology.route_for(host, avoid=set(route.relays))
                if alt is not None and alt.path not in tried:
                    routes.append(alt)
        if not path_ok:
            log.info("mesh: %s unreachable on %d routes", address, attempts)
            if failed_primary:
                await self._check_relays(primary, None, since)
            again = await self._recover(address, host, dlt645_bytes, tried)
            if again is not None:
                route, reply = again
                return ExchangeOutcome(address, reply, None, route, attempts + 1,
                                       loop.time() - t0)
            self._start_repair(host)
        return ExchangeOutcome(address, None, failure, last_route, attempts, loop.time() - t0)

    async def _recover(self, address: str, host: str, frame: bytes,
                       tried: set[tuple[str, ...]]) -> tuple[Route, bytes] | None:
        """Every route of ``host`` failed: more reads on routes that avoid what failed (a
        relay declared dead just moved it; a second dead relay further out is looked for
        when that route breaks too), else after the repair under way or quick repair probes
        (at most once per ``relay_check_s`` a node); (route, reply) when a read worked."""
        topo = self.topology
        under_repair: tuple[str, ...] | None = None  # a path read while its repair searched
        for _attempt in range(1 + self.tuning.recover_checks):
            route = topo.primary(host)
            task = self._repairs.get(host)
            if (route is None or route.path in tried) and task is not None \
                    and not task.done():
                # Its relay was just declared dead and the repair of everything behind it
                # is under way: this read waits for it rather than being lost (until the
                # node is heard again; after a read that failed then, until it ends).
                await self._wait_repair(task, host if route is None else None)
                route = topo.primary(host)
                if route is not None and route.path == under_repair:
                    # Read once while the repair's next searches filled the medium: the
                    # path it was heard on gets one more read now they are over (200-meter
                    # hplc feeder: such a read was lost to the search from its neighbour).
                    tried.discard(route.path)
                    under_repair = None
                if route is None or route.path in tried:
                    return None
            elif route is None or route.path in tried:
                now = self._now()
                last = self._quick_repaired.get(host)
                if last is not None and now - last < self.tuning.relay_check_s:
                    return None
                self._quick_repaired[host] = now
                ok, _probes = await self._repair_probes(host)
                route = topo.primary(host)
                if not ok or route is None:
                    # No relay around it answers for it: a repair search is the one way
                    # left (it finds a node whose links all failed). This read waits for it
                    # rather than being lost (a meter beside a dead relay, 200-meter feeder).
                    task = self._start_repair(host, probes=False)
                    if task is None:
                        return None  # its last repairs found nothing: backed off
                    await self._wait_repair(task)
                    route = topo.primary(host)
                    if route is None:
                        return None  # (a path tried before is tried again: just heard)
            tried.add(route.path)
            since = self._now()
            task = self._repairs.get(host)
            repairing = task is not None and not task.done()
            result = await self._read(address, host, route.path, frame, None)
            path_ok = self._learn(route.path, result, route)
            self._flush()
            if result.ok:
                self._repair_backoff.pop(host, None)
                log.info("mesh: %s read via %s after its routes failed", address,
                         list(route.relays))
                return route, result.reply
            if repairing and under_repair is None and not path_ok:
                under_repair = route.path
            if path_ok or result.deny_code != DENY_SLAVE_SILENT or not route.relays:
                return None
            # The new route broke as well: another relay on it may be dead (5 % of the relays
            # of a feeder died: a meter's route crossed two of them).
            await self._check_relays(route, None, since)
        return None

    def _note_reads_idle(self) -> None:
        """Wake the waiters of ``_wait_for_quiet`` once no read is in flight but the ones
        waiting for a repair (each waiter checks which reads it counts)."""
        if self._reads_in_flight <= self._reads_waiting_repair:
            self._reads_idle.set()

    async def _wait_repair(self, task: asyncio.Task[None], host: str | None = None) -> None:
        """A read waits (at most ``repair_wait_s``) for the repair that may give it a route;
        with ``host`` (``early_repair_reads``), only until ``host`` has a route again and is
        back in the module's archive: a group repair's later searches are for the others."""
        self._reads_waiting_repair += 1
        self._note_reads_idle()
        loop = asyncio.get_running_loop()
        end = loop.time() + self.tuning.repair_wait_s
        try:
            # The wait uses no module slot: the caller's read slot serves other meters
            # meanwhile (``mesh.slots``).
            async with released_while_waiting():
                if host is None or not self.tuning.early_repair_reads:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(task), self.tuning.repair_wait_s)
                    return
                topo = self.topology
                while not task.done() and loop.time() < end:
                    if host in self._registered and host in topo \
                            and topo.primary(host) is not None:
                        return
                    await asyncio.wait({task}, timeout=min(0.5, max(0.0, end - loop.time())))
        finally:
            self._reads_waiting_repair -= 1

    @contextlib.asynccontextmanager
    async def _searching(self, proxy: str) -> Any:
        """Hold the search lock for a search from ``proxy``, once the relay checks' probes in
        flight are over (see ``_beside_checks``); reads through ``proxy`` wait meanwhile
        (``_read``)."""
        async with self._search_lock:
            await self._checks_idle.wait()
            self._search_proxy = proxy
            self._search_over.clear()
            try:
                yield
            finally:
                self._search_proxy = None
                self._search_over.set()

    @contextlib.asynccontextmanager
    async def _beside_checks(self) -> Any:
        """A relay check's probe: never under a search (its answer rounds fill the medium
        around the proxy, and a probe sent beneath them is lost like a dead relay's), but
        beside the other checks' probes. Under the search lock itself, the checks of the
        relays a round met waited for each other: 2,040-meter HPLC street, 10 relays dead,
        their checks took until 41-45 s after the first broken read (a silent probe's
        timeout each, in a row)."""
        if not self.tuning.checks_beside:
            async with self._search_lock:
                yield
            return
        async with self._search_lock:
            pass  # a search under way or waiting goes first
        self._checks_in_flight += 1
        self._checks_idle.clear()
        try:
            yield
        finally:
            self._checks_in_flight -= 1
            if not self._checks_in_flight:
                self._checks_idle.set()

    async def drain_reports(self, driver: ModuleDriver | None = None) -> None:
        """Take the module reports that come outside a search (logged only), until the link
        closes; while a search runs or waits to start, stand aside: its reports are its own
        (see ``_SearchLock``). For the daemon's report loop."""
        driver = driver or self.driver
        lock = self._search_lock
        while True:
            await lock.free.wait()
            get = asyncio.ensure_future(anext(driver.reports()))
            wanted = asyncio.ensure_future(lock.wanted.wait())
            try:
                await asyncio.wait({get, wanted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                wanted.cancel()
                if not get.done():
                    # A cancelled wait leaves the report in the queue for the search.
                    get.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await get
            if get.cancelled():
                continue
            try:
                report = get.result()
            except StopAsyncIteration:
                return  # the link closed
            log.info("mesh: module report AFN%02X F%d outside a search (node %s)",
                     report.frame.afn, report.frame.fn, report.node)

    async def survey(self, proxies: Iterable[str] | None = None) -> int:
        """Learn the hops between relays: one search from each of ``proxies`` (default: every
        relay of a primary route, nearest the CCO first) with its known neighbourhood taken out
        of the module's archive (AFN11 F2) so that those nodes answer it, and added back after
        (AFN11 F1). Every answer is a hop heard, in both directions, with its signal quality.
        Returns how many searches were made.

        Formation registers each node as soon as one proxy hears it, so it knows each node's
        hop from that proxy, the CCO's, and the hops probed for alternates: a chain of short
        hops. By day the noise near pumps breaks links into some relays of those chains, and
        the routes that still work use longer hops between other relays that no search ever
        reported. Each search waits for a pause in the reads (``survey_idle_s``)."""
        topo = self.topology
        if proxies is None:
            proxies = sorted(topo.loads(), key=lambda a: (topo.node(a).level or 99, a))
        searches = learned = 0
        for proxy in proxies:
            if proxy not in topo or topo.primary(proxy) is None:
                continue
            ring = self._survey_ring(proxy)
            if not ring:
                continue
            await self._wait_for_quiet(idle_s=self.tuning.survey_idle_s)
            pairs = [p for a in ring if a in topo for p in self._slave_pairs(a)]
            try:
                await self._unregister([a for a, _p in pairs])
            except ModuleError as exc:
                log.warning("mesh: survey from %s skipped, its neighbours stay in the module: "
                            "%s", proxy, exc)
                continue
            before = topo.graph.number_of_edges()
            level = (topo.node(proxy).level or 0) + 1
            slots = self._slots_for(len(ring))
            try:
                await self._search_from(proxy, level, not self.archive, slices=slots,
                                        survey=True)
                if self._search_cut:
                    await self._search_from(proxy, level, not self.archive,
                                            slices=self._retry_slices, survey=True)
            finally:
                await self._register([p for p in pairs if p[0] in topo])
            searches += 1
            learned += topo.graph.number_of_edges() - before
        self._last_survey = self._now()
        log.info("mesh: survey: %d searches from relays, %d new directed links heard", searches,
                 learned)
        return searches

    def _survey_ring(self, proxy: str) -> list[str]:
        """The registered nodes nearest ``proxy`` over the known hops (either direction, the
        CCO's included), at most ``survey_depth`` hops and ``survey_ring`` nodes; never the
        proxy's own relays (they carry the search).

        Nearest by signal: a hop costs 16 - its reported quality (1 at the best; 12 when
        never reported), so the nodes a proxy's strong hops lead to come before a weak hop's,
        and the CCO's many weak hops to the far end of the district come last. (``_around``,
        the repair's neighbourhood, never crosses the CCO: a level-1 relay's ring would miss
        the siblings that only the CCO's hops link it to.)"""
        topo = self.topology
        graph = topo.graph
        path = set(self._proxy_path(proxy) or ())
        best: dict[str, float] = {proxy: 0.0}
        heap: list[tuple[float, int, str]] = [(0.0, 0, proxy)]
        done: set[str] = set()
        ring: list[str] = []
        while heap and len(ring) < self.tuning.survey_ring:
            d, hops, x = heapq.heappop(heap)
            if x in done:
                continue
            done.add(x)
            if x != proxy and x != self.root and x in self._registered and x not in path:
                ring.append(x)
            if hops >= self.tuning.survey_depth:
                continue
            for w in set(graph.successors(x)) | set(graph.predecessors(x)):
                if w in done:
                    continue
                q = topo.heard_quality(x, w)
                dw = d + 16 - (4 if q is None else q)
                if dw < best.get(w, float("inf")):
                    best[w] = dw
                    heapq.heappush(heap, (dw, hops + 1, w))
        return ring

    async def _proxy_answers(self, proxy: str) -> bool:
        """True when a repair search from ``proxy`` would reach it: the CCO, a node seen
        working within ``proxy_fresh_s``, or one that answers a probe along its route now
        (a failed probe is learned: the proxy's route moves off the broken hop)."""
        if proxy == self.root or self.tuning.proxy_fresh_s is None:
            return True
        seen = self.topology.node(proxy).last_seen if proxy in self.topology else None
        if seen is not None and self._now() - seen < self.tuning.proxy_fresh_s:
            return True
        return await self.probe(proxy)

    def _search_depth(self) -> int:
        """Relays a repair search's proxy path may have, with the proxy itself: what it hears
        is reported over that path plus one hop, within the 15 relay levels of 1376.2 (a
        2,040-meter npl feeder's repair searched from a node 15 relays out, and the report
        of a level-16 node could not be encoded)."""
        return min(self.config.max_relay_depth, self.topology.route_cfg.max_relays)

    def replaced_by(self, address: str) -> str | None:
        """The meter found in ``address``'s place (its reads fail at once, see
        ``_replacement``), or None: never replaced, aged out, or heard since (it was only
        off: the next exchange makes it a node of the mesh again)."""
        rep = self._replaced.get(self.host_of(address))
        if rep is None:
            return None
        new, when = rep
        host = self.host_of(address)
        seen = self.topology.node(host).last_seen if host in self.topology else None
        return new if seen is None or seen <= when else None

    async def age(self, now: float | None = None) -> list[str]:
        """Delete nodes silent longer than ``node_silence_timeout``; returns their addresses."""
        now = self._now() if now is None else now
        silent = self.topology.silent_nodes(now - self.config.node_silence_timeout)
        gone = []
        for addr in silent:
            node = self.topology.node(addr)
            if node.status is NodeStatus.ARCHIVE:
                continue  # never heard: nothing to forget in the module
            last = node.last_seen
            subs = node.sub_meters
            self.topology.remove_node(addr, "silent")
            for s in subs:
                self._host.pop(s, None)
            self._replaced.pop(addr, None)
            self._repair_backoff.pop(addr, None)
            try:
                await self._unregister([addr, *subs])
            except ModuleError as exc:
                log.warning("mesh: deleting %s from the module failed: %s", addr, exc)
            self._registered.difference_update([addr, *subs])
            log.warning("mesh: node %s silent since %s, deleted", addr, last)
            self._emit(NodeAged(addr, last))
            gone.append(addr)
        self._flush()
        return gone

    async def maintain(self) -> None:
        """Periodic upkeep: ageing, probing uncertain routes, load relief, saving."""
        await self.age()
        self.topology.revive_presumed_dead(self._now(), self.tuning.relay_check_s)
        if self.tuning.down_hold_s > 0:
            self.topology.expire_down(self._now(), self.tuning.down_hold_s)
        self._flush()
        await self.probe_uncertain()
        self.topology.rebalance()
        self._flush()
        now = self._now()
        tn = self.tuning
        if (tn.survey and tn.survey_every_s and self.config.probing
                and self._last_survey is not None
                and now - self._last_survey >= tn.survey_every_s
                and (self._survey_task is None or self._survey_task.done())
                and (self._gap_task is None or self._gap_task.done())):
            log.info("mesh: last survey %.0f h ago: surveying again", (now - self._last_survey) / 3600)
            self._survey_task = _background(self._survey_bg(), "mesh-survey")
        if tn.archive_check_s is not None and (
                self.archive_checked_at is None
                or now - self.archive_checked_at >= tn.archive_check_s):
            await self.sync_module_archive()
        if self._last_save is None or now - self._last_save >= self.tuning.save_period:
            self.save()

    async def sync_module_archive(self) -> int:
        """Add back to the module's slave archive the nodes it should hold and does not;
        returns how many were added.

        The mesh keeps which nodes it registered; the module can lose them behind its back:
        a module swapped or power-cycled in the field starts with an empty archive, and a
        survey cut short by a restart leaves its ring deleted (AFN11 F2) while the saved mesh
        counts them registered. A node missing from the archive answers every search (its
        slots collide with the new nodes'), and a module with a white list does not network
        it at all. One slave count (10 F1) tells; only a short count costs the list (10 F2,
        32 a frame) and the adds, of the missing nodes alone (adding a slave a module holds
        is refused as a duplicate by some)."""
        self.archive_checked_at = self._now()
        topo = self.topology
        wanted: dict[str, int] = {}
        for a in sorted(self._registered):
            if a in topo and topo.node(a).kind is not NodeKind.CONCENTRATOR:
                wanted.update(self._slave_pairs(a))
        for a in self._held_out:
            wanted.pop(a, None)
        try:
            count = await self.driver.slave_count()
            if count.count >= len(wanted):
                return 0
            held = set(await self.driver.slave_addresses())
        except ModuleError as exc:
            log.info("mesh: module's slave archive not checked: %s", exc)
            return 0
        # (a repair or a survey may have taken some out meanwhile: they stay out)
        missing = [(a, p) for a, p in wanted.items() if a not in held and a not in self._held_out]
        if not missing:
            return 0
        log.warning("mesh: module's slave archive holds %d slaves, %d of the mesh's missing "
                    "(%s): adding them back", count.count, len(missing),
                    ", ".join(a for a, _p in missing[:8]))
        self._registered.difference_update(a for a, _p in missing)
        await self._register(missing)
        added = sum(a in self._registered for a, _p in missing)
        self.archive_added_back += added
        return added

    async def _survey_bg(self) -> int:
        try:
            return await self.survey()
        except LinkClosed:
            log.info("mesh: survey stopped, the module link closed")
            return 0

    # --- persistence and inspection ----------------------------------------------------------

    def save(self) -> bool:
        """Write the mesh to the store in one transaction; False (logged) when it failed."""
        if self.db is None:
            return False
        db = _database(self.db)
        previous, self._saved = self._saved, None  # unknown until this save is committed
        try:
            repairs = self._repair_state()
            if hasattr(self.db, "batch"):
                with self.db.batch():
                    saved = persist.save(db, self.topology, previous=previous,
                                         repairs=repairs)
            else:
                saved = persist.save(db, self.topology, previous=previous, repairs=repairs)
        except Exception as exc:  # the store has its own error tree; routing goes on
            log.error("mesh: saving the mesh failed: %s", exc)
            return False
        if not db.conn.in_transaction:
            # Committed: the next save writes only what changes from here. Inside a caller's
            # open transaction it may still roll back, so the next save rewrites it all.
            self._saved = saved
        self._last_save = self._now()
        return True

    def _repair_state(self) -> persist.RepairState:
        """The replaced meters and the backed-off repairs, for ``persist.save``."""
        out: persist.RepairState = {}
        for old, (new, t) in self._replaced.items():
            out[old] = (new, t, 0, None)
        for a, (fruitless, until) in self._repair_backoff.items():
            new, t, _f, _u = out.get(a, (None, None, 0, None))
            out[a] = (new, t, fruitless, until)
        return out

    def snapshot(self) -> dict:
        """JSON-able view for the CLI: nodes with level, phase, links, route, last seen,
        success history, alternates; discovery figures."""
        snap = self.topology.snapshot()
        for n in snap["nodes"]:
            if n["address"] == self.root:
                continue
            routes = self.topology.routes(n["address"])
            n["alternates"] = [{"relays": list(r.relays), "media": list(r.media),
                                "p": round(r.p, 4)} for r in routes[1:]]
            finder = self._finder.get(n["address"])
            n["found_via"] = None if finder is None else finder[0]
        s = self.stats
        snap["discovery"] = {
            "searches": s.searches, "reads": s.reads, "probes": s.probes, "found": s.found,
            "seconds": round(s.discovery_s, 1), "by_level": dict(sorted(s.by_level.items())),
        }
        return snap


# --- helpers ------------------------------------------------------------------------------------

def _database(db: Any) -> sqlite_utils.Database:
    if isinstance(db, sqlite_utils.Database):
        return db
    inner = getattr(db, "db", None)
    if isinstance(inner, sqlite_utils.Database):
        return inner
    raise TypeError(f"mesh: cannot persist to {type(db).__name__}")


def _archive_entry(item: Any) -> tuple[str | None, int]:
    if isinstance(item, str):
        addr, proto = item, 2
    elif isinstance(item, tuple):
        addr, proto = item[0], (item[1] if len(item) > 1 else 2)
    else:
        addr, proto = getattr(item, "address", None), getattr(item, "protocol", 2)
    if not isinstance(addr, str) or len(addr) != 12:
        return None, 2
    try:
        bytes.fromhex(addr)
    except ValueError:
        return None, 2
    return addr.upper(), 1 if _proto_name(proto) == "dlt645-1997" else 2


def _failure_text(result: ExchangeResult) -> str:
    if result.failure is ReadFailure.DENIED:
        return f"denied {result.deny_code} ({result.deny_reason})"
    return str(result.failure.value if result.failure else "no reply")
