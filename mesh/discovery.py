"""Discovery, the formation of a district from an empty archive: a mixin of
``mesh.engine.Mesh`` (see ``mesh.engine``'s docstring, **Discovery** and **Search sizing**).

The searches from the CCO and then level by level from the nodes found, the completeness
sweep, the sizing of each search's answer slots, the reading of its reports and the
registration of what it found with the module."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from mesh.events import DiscoveryDone, DiscoveryProgress, NodeFound, UnknownMeter
from mesh.guard import screen_search
from mesh.routes import MAX_RELAY_LEVEL
from mesh.topology import NodeKind, NodeStatus
from plc_driver.driver import ModuleError

# The engine's one logger name, whichever part logs (field engineers filter on it).
log = logging.getLogger("mesh.engine")

#: a search report this soon after the search started was queued before it (no medium carries
#: a search round this fast): it says nothing about the time of a round
_STALE_S = 0.05
#: how long to wait for one more queued report after stopping a search
_DRAIN_S = 0.01
_SEARCH_LOG = 5000  # searches kept in ``Mesh.stats.search_log``


def _search_finds(report: Any) -> list[tuple[str, int | None, Any]]:
    """The nodes a registration search's report carries: (address, signal quality, report)
    each; none for another report. 06 F4 gives each node's device type (and a collector's
    meters); modules of the 2009 edition report with 06 F1, address and protocol only, so
    its nodes are taken for meters.

    The data unit counts its nodes, and a module may gather several in one report: taking
    only the first lost the others for the whole discovery. The info field's quality is the
    report frame's last hop: a node's own only when the report is about it alone, or names
    it as the A-field source; the others' hops are learnt with no quality (``None``)."""
    f = report.frame
    if f.afn != 0x06 or f.fn not in (1, 4):
        return []
    quality = f.info.cmd_quality if f.info else None
    nodes = list(dict.fromkeys(n.address for n in getattr(report.unit, "nodes", ())))
    if len(nodes) <= 1:
        return [] if report.node is None else [(report.node, quality, report)]
    return [(a, quality if a == f.source else None, report) for a in nodes]


def _spread(n: int) -> list[int]:
    """0..n-1 in an order that halves the gaps: 0, then the middle, then the quarters..."""
    out: list[int] = []
    seen: set[int] = set()
    step = 1
    while len(out) < n:
        for k in range(step):
            i = (2 * k + 1) * n // (2 * step) if step > 1 else 0
            if i not in seen:
                seen.add(i)
                out.append(i)
        step *= 2
        if step > 2 * n:
            out += [i for i in range(n) if i not in seen]
            break
    return out


ArchiveItem = str | tuple[str, Any] | Any


def _proto_name(proto: Any) -> str:
    return "dlt645-1997" if proto in (1, "1", 1997, "1997", "dlt645-1997") else "dlt645-2007"


class Discovery:
    """``Mesh.discover`` and the searches it makes (a mixin: ``mesh.engine.Mesh``)."""

    async def discover(self, archive: Iterable[ArchiveItem] | None = None) -> DiscoveryDone:
        """Find the district hop by hop from the CCO (see module docstring); returns a summary."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        if archive is not None:
            self.set_archive(archive)
        if self._gap_task is not None and not self._gap_task.done():
            self._gap_task.cancel()  # the last discovery's probes: its nodes may be stale
        if self._survey_task is not None and not self._survey_task.done():
            self._survey_task.cancel()  # (its ring goes back into the module as it ends)
        plug_and_play = not self.archive
        for addr in self.archive:
            if addr not in self.topology and addr not in self._host:
                self.topology.add_node(addr, status=NodeStatus.ARCHIVE,
                                       protocol=_proto_name(self.archive[addr]))
        depth = min(self.config.max_relay_depth, self.topology.route_cfg.max_relays)
        self._discovering = True
        try:
            await self._discover_levels(depth, plug_and_play)
        finally:
            self._discovering = False
        rest = [(a, p) for a, p in self._unregistered.items() if a in self.topology
                or a in self._host]
        self._unregistered = {}
        await self._register(rest)
        # Formation time: every node found so far has its (search) route now.
        self.stats.discovery_s = loop.time() - t0
        if self.config.probing:
            if self.tuning.alternates_at_formation:
                if self.tuning.survey:
                    await self.survey()
                await self.probe_phases()
            else:
                # Reading starts now: the alternates are probed in the background with at
                # most half the module's read slots (probe_phases() before reading held it
                # back ~1,500 s on a 1,000-meter hplc district).
                self._start_gap_probing()
        self.stats.first_read_s = loop.time() - t0
        missing = self._missing_archive()
        for addr in missing:
            log.warning("mesh: archive meter %s not found by discovery", addr)
        done = DiscoveryDone(
            nodes=len(self.topology.nodes()) - 1,
            by_level=tuple(sorted(self.stats.by_level.items())),
            searches=self.stats.searches, reads=self.stats.reads,
            seconds=loop.time() - t0, missing_archive=tuple(missing),
        )
        self._emit(done)
        self.save()
        return done

    async def _discover_levels(self, depth: int, plug_and_play: bool) -> None:
        """The hop-by-hop searches of ``discover`` (see the module docstring), then the
        completeness sweep (``_sweep``)."""
        searched: set[str] = set()
        await self._levels_from([self.root], 1, depth, plug_and_play, searched)
        await self._sweep(depth, plug_and_play, searched)

    async def _levels_from(self, frontier: list[str], level: int, depth: int,
                           plug_and_play: bool, searched: set[str]) -> None:
        """Level by level outwards: ``frontier`` (nodes of ``level - 1``) searched for
        ``level``, the nodes they find for the next, until a level brings nothing new."""
        while frontier and level <= depth + 1:
            new: list[str] = []
            skipped: list[str] = []
            empty = 0  # searches in a row that found nothing new
            queue = self._order_proxies(frontier)
            searched_here: list[str] = []  # the level's own (uncovered) proxies searched
            edge = False  # the rest of the level is searched from its edge, weakest first
            while queue:
                proxy = queue.pop(0)
                if proxy != self.root and self._covered(proxy, searched):
                    skipped.append(proxy)
                    continue
                streak = self.tuning.edge_sweep if edge else self.tuning.empty_streak
                if empty >= streak and not self._missing_archive():
                    if not edge and self.tuning.edge_sweep:
                        # The best-heard proxies lie inside the known area; the nodes still
                        # unfound are beyond the level's edge, heard only by its weakest-heard
                        # nodes (1,000-meter npl: 28 nodes missed when the level ended here).
                        edge, empty = True, 0
                        queue = self._order_proxies(queue, edge_first=True)
                        log.info("mesh: level %d: searching from its edge", level)
                        continue
                    # The level's proxies have heard their whole neighbourhood: the rest of
                    # the frontier lies inside the known area (169 of 175 level-3 searches of
                    # a 1,000-meter district found nothing).
                    log.info("mesh: level %d: %d searches in a row found nothing, level ends",
                             level, empty)
                    break
                got = await self._search_repeated(proxy, level, plug_and_play)
                empty = 0 if got else empty + 1
                new += got
                searched.add(proxy)
                searched_here.append(proxy)
            # Covered proxies are searched after all when the level would otherwise end the
            # discovery (a chain along a feeder runs on through them) or archive meters are
            # still missing; not when the level's own proxies, up to ``covered_after`` of
            # them, found nothing in a row (1,000-meter npl: 88 more empty searches, 540 s,
            # that found nothing either; 2,040-meter hplc level 5: 44 searches, 25 s).
            own = len(searched_here)
            exhausted = own > 0 and empty >= min(self.tuning.empty_streak,
                                                 self.tuning.covered_after, own)
            if skipped and ((not new and not exhausted) or self._missing_archive()):
                for proxy in skipped:
                    new += await self._search_repeated(proxy, level, plug_and_play)
                    searched.add(proxy)
            self.stats.by_level[level] = self.stats.by_level.get(level, 0) + len(new)
            total = sum(self.stats.by_level.values())
            log.info("mesh: discovery level %d: %d new nodes, %d in all", level, len(new), total)
            self._emit(DiscoveryProgress(level, len(new), total, self.stats.searches))
            self._flush()
            frontier = [a for a in new if a in self.topology
                        and self.topology.node(a).status is NodeStatus.APPROVED]
            level += 1

    async def _sweep(self, depth: int, plug_and_play: bool, searched: set[str]) -> None:
        """Completeness sweep once the levels ran dry: the found nodes never searched from
        (covered, or left when their level ended after ``empty_streak`` empty searches) are
        searched with ``sweep_slices`` slots, spread over the district (``_sweep_order``),
        until ``sweep_empty`` in a row found nothing; what one finds is searched outwards
        level by level as in formation. The levels' own rules leave whole pockets unfound:
        nodes 2-3 hops out heard by ~25-35 found nodes none of which was searched (1,000-meter
        npl 989/1000, 2,040-meter hplc 2031/2040)."""
        self._sweeping = True
        try:
            await self._sweep_searches(depth, plug_and_play, searched)
        finally:
            self._sweeping = False

    async def _sweep_searches(self, depth: int, plug_and_play: bool, searched: set[str]) -> None:
        # The sweep's short searches give a flooder too few repeats to be marked, so every
        # node they find answers a read-address through its proxy first (screen_search's
        # verify_new: sweep finds are few, 11 of 1,000 on npl).
        tn = self.tuning
        empty = 0
        while tn.sweep_empty:
            queue = self._sweep_order(searched, depth)
            found_any = False
            for proxy in queue:
                if empty >= tn.sweep_empty:
                    break
                node = self.topology.node(proxy)
                level = (node.level or 0) + 1
                new = await self._search_repeated(proxy, level, plug_and_play,
                                                  slices=tn.sweep_slices)
                searched.add(proxy)
                if not new:
                    empty += 1
                    continue
                log.info("mesh: completeness sweep: search from %s found %d new nodes",
                         proxy, len(new))
                self.stats.by_level[level] = self.stats.by_level.get(level, 0) + len(new)
                empty = 0
                found_any = True
                await self._levels_from(
                    [a for a in new if a in self.topology
                     and self.topology.node(a).status is NodeStatus.APPROVED],
                    level + 1, depth, plug_and_play, searched)
                break  # new nodes and finders: order the rest again
            if not found_any:
                return

    def _sweep_order(self, searched: set[str], depth: int) -> list[str]:
        """The sweep's proxies: found, approved, within the relay depth, never searched from.

        The finders in turn (their neighbourhoods are the district's regions; a pocket of
        unfound nodes lies beside one of them), within a finder from its
        weakest-heard find outwards and then spread over the signal qualities (its finds at
        one quality lie at about one distance)."""
        groups: dict[str, list[tuple[int, str]]] = {}
        for n in self.topology.nodes():
            a = n.address
            if a == self.root or a in searched or n.status is not NodeStatus.APPROVED \
                    or not n.level or n.level > depth:
                continue
            finder, q = self._finder.get(a, (self.root, None))
            groups.setdefault(finder, []).append((-1 if q is None else q, a))
        keyed: list[tuple[float, str]] = []
        for members in groups.values():
            members.sort()
            n = len(members)
            for rank, i in enumerate(_spread(n)):
                # Each finder's turn comes in proportion to its finds: a pocket is heard by
                # a share of a region's finds, not by a fixed number of them (1,000-meter
                # npl: ~30 of the CCO's 889).
                keyed.append(((rank + 0.5) / n, members[i][1]))
        keyed.sort()
        return [a for _k, a in keyed]

    async def _search_repeated(self, proxy: str, level: int, plug_and_play: bool,
                               slices: int | None = None) -> list[str]:
        """A search from ``proxy``, made again while it was stopped early (answer cap reached,
        or congested: then with more slots); returns the new nodes of all of them."""
        new = await self._search_from(proxy, level, plug_and_play, slices=slices)
        repeats = self.tuning.root_repeats if proxy == self.root \
            else self.tuning.max_search_repeats
        for _again in range(repeats):
            if not self._search_cut:
                break
            new += await self._search_from(proxy, level, plug_and_play,
                                           slices=self._retry_slices)
        return new

    def _best_quality(self, address: str) -> int:
        """Best signal quality any search report gave for a hop to ``address`` (-1: none)."""
        best = -1
        graph = self.topology.graph
        if address not in graph:
            return best
        for w in graph.predecessors(address):
            for est in graph.edges[w, address]["links"].values():
                if est.quality is not None and est.quality > best:
                    best = est.quality
        return best

    def _heard_by(self, address: str) -> int:
        """How many nodes' searches heard ``address`` (its known hops in)."""
        graph = self.topology.graph
        return graph.in_degree(address) if address in graph else 0

    def _missing_archive(self) -> list[str]:
        out = []
        for addr in sorted(self.archive):
            host = self.host_of(addr)
            if host not in self.topology or self.topology.node(host).status is NodeStatus.ARCHIVE:
                out.append(addr)
        return out

    def _order_proxies(self, nodes: list[str], edge_first: bool = False) -> list[str]:
        # Archive meters first; then the best-heard (the most dependable relay paths), or with
        # ``edge_first`` the weakest-heard (the farthest out), no weaker than a hop worth
        # registering, then the rest.
        floor = self.tuning.register_quality

        def key(a: str) -> tuple[int, int, str]:
            node = self.topology.node(a) if a in self.topology else None
            known = node is not None and self._known(a, node.sub_meters)
            q = self._finder.get(a, (self.root, 15))[1]
            q = 0 if q is None else q
            if edge_first:
                return (0 if known else 1, q if q >= floor else 16 - q, a)
            return (0 if known else 1, -q, a)
        return sorted(set(nodes), key=key)

    def _covered(self, proxy: str, searched: set[str]) -> bool:
        finder, q = self._finder.get(proxy, (None, None))
        if finder in searched and q is not None and q >= self.tuning.cover_quality:
            return True
        return self.tuning.cover_any and self._best_quality(proxy) >= self.tuning.cover_quality

    def _congestion_wait(self, slices: int, hops: int) -> float | None:
        """How long to wait for a search report before a congestion check (None: no check)."""
        if slices >= self.tuning.max_slices:
            return None
        return self._round_len(slices, hops)

    def _round_len(self, slices: int, hops: int) -> float | None:
        """A search round's length with ``slices`` slots from a proxy ``hops`` relay hops out:
        the quickest first answer such a search gave (a module's rounds need not scale with
        the slots); None: unknown.

        A round's every answer is relayed back over the proxy's hops before the next round's
        beacon, so a deep proxy's rounds are longer (HPLC ~50 ms a hop and answer): judged by
        a level-2 round, 2,040-meter feeder searches 6-9 hops out were taken for congested
        while their answers were on the way back, and 41 of 100 made again with 32 slots
        heard at most 4 answers. Not known for these hops yet: the nearest shallower one's
        (a lower bound)."""
        known = self._round_s.get((slices, hops))
        if known is not None:
            return known
        shallower = [(h, t) for (s, h), t in self._round_s.items() if s == slices and h < hops]
        return max(shallower)[1] if shallower else None

    def _congested(self, slices: int, hops: int, t_start: float, arrivals: list[float],
                   now: float) -> bool:
        """True when the search's last ``congestion_rounds`` rounds brought at most one answer.

        The module ends a search on a round with neither answers nor collisions, so a search
        still running with no answers is colliding: its contenders outnumber its slots (a
        round of 16 slots with 120 contenders passes about one answer in 30 rounds). A low
        yield alone is no sign: weakly heard nodes get through only now and then, and 64 or
        255 slots made those tails 4-16 times as long (2,040-meter street: 1,368 -> 2,373 s).
        """
        # A round's length: the quickest first answer of a search with these many slots from
        # as many hops out (a module's rounds need not scale with the slots; none known: no
        # congestion check).
        round_s = self._round_len(slices, hops)
        if round_s is None:
            return False
        window = self.tuning.congestion_rounds * round_s
        if now - t_start < window:
            return False
        return sum(1 for t in arrivals if t > now - window) <= 1

    async def _queued_reports(self) -> list[tuple[str, int | None, Any]]:
        """The node reports already queued by the driver (a stopped search's last round)."""
        out: list[tuple[str, int | None, Any]] = []
        reports = self.driver.reports()
        while True:
            try:
                # The module sent them before it confirmed the stop: they are queued already
                # (a short wait only ends the loop when there are none left).
                async with asyncio.timeout(_DRAIN_S):
                    report = await anext(reports)
            except (TimeoutError, StopAsyncIteration):
                return out
            out += _search_finds(report)

    def _proxy_slots(self) -> int:
        """Answer slots for the next proxy search: about half the answers the last few proxy
        searches heard (a round's best yield is at slots ~ contenders, and the contenders
        halve by the second round), at least ``proxy_slices``."""
        tn = self.tuning
        if not tn.slots_window or not self._answers:
            return tn.proxy_slices
        return self._slots_for(sum(self._answers) / len(self._answers))

    def _slots_for(self, answers: float) -> int:
        """Answer slots for a search expecting about ``answers`` answers: a power of two times
        ``proxy_slices``, up to ``answers * slots_per_answer`` (and ``max_slices``)."""
        tn = self.tuning
        want = answers * tn.slots_per_answer
        slots = tn.proxy_slices
        while slots * 2 <= want and slots * 2 <= tn.max_slices:
            slots *= 2
        return slots

    def _proxy_path(self, proxy: str) -> tuple[str, ...] | None:
        if proxy == self.root:
            return ()
        route = self.topology.primary(proxy)
        return None if route is None else (*route.relays, proxy)

    async def _search_from(self, proxy: str, level: int, plug_and_play: bool,
                           minutes: int | None = None, slices: int | None = None,
                           wanted: set[str] | None = None, survey: bool = False) -> list[str]:
        """One registration search from ``proxy``; returns the nodes it found first.

        ``survey``: a survey's search (``survey``), whose answers are known nodes taken out of
        the archive for it: they do not size the next proxy searches' slots.

        ``wanted``: a repair's search for these silent nodes, with slots sized for them. It
        ends once they have all answered, and is not judged congested: during a reading
        round its answers come back slowly among the reads' frames, and a repair search
        taken for congested was stopped and made again with 4 then 16 times the slots
        (1,000-meter hplc street: one dead relay's 10 nodes heard after 92 s, not 7)."""
        path = self._proxy_path(proxy)
        if path is None:
            log.info("mesh: no route to proxy %s, search skipped", proxy)
            return []
        if len(path) > MAX_RELAY_LEVEL:
            # Its route grew while the search waited (a repair's searches wait for the reads
            # to pause): what it hears could not be reported within 15 relay levels.
            log.info("mesh: proxy %s is %d relays out now, search skipped", proxy, len(path))
            return []
        tn = self.tuning
        if minutes is None:
            minutes = tn.root_search_minutes if proxy == self.root else tn.proxy_search_minutes
        if slices is None:
            slices = tn.root_slices if proxy == self.root else self._proxy_slots()
        found: list[tuple[str, int | None, Any]] = []
        # The guard takes a search with more distinct answers than this for a flood (drops the
        # excess, verifies the rest by reads): a crowded search is stopped at the cap and
        # searched again once its answers are registered (fewer contenders, fewer collisions).
        cap = max(self.guard.config.flood_cap, slices)
        self._search_cut = False
        self._retry_slices = None
        # Answers come back in bursts, one per search round. From the CCO the last rounds
        # bring the few nodes that hear it badly (found later, and better, through proxies):
        # the root search stops once a round brings under 1/``root_tail`` of its best round.
        bursts: list[int] = []
        tail = tn.root_tail if proxy == self.root else tn.proxy_tail
        last_t: float | None = None
        loop = asyncio.get_running_loop()
        missing = set(wanted or ())  # the wanted nodes not heard yet
        async with self._searching(proxy):
            self.stats.searches += 1
            try:
                await self.driver.start_search(path, minutes, retries=tn.search_retries,
                                               slices=slices)
            except ModuleError as exc:
                log.warning("mesh: search from %s refused: %s", proxy, exc)
                return []
            t_start = loop.time()
            arrivals: list[float] = []  # when this search's reports came in
            reports = self.driver.reports()
            stopped = False  # the engine stopped the search (its last reports may be queued)
            mid_round = False  # ... and not at a round's end (its answers are still due)
            # The module starts no round past the duration, but ends the one it is in.
            last_round = self._round_len(slices, len(path)) or 0.0
            try:
                async with asyncio.timeout(minutes * 60 + last_round + 30):
                    while True:
                        try:
                            async with asyncio.timeout(
                                    None if wanted else self._congestion_wait(slices,
                                                                              len(path))):
                                report = await anext(reports)
                        except StopAsyncIteration:
                            break  # the link closed
                        except TimeoutError:
                            # The wait was cut for a congestion check; the cancelled wait
                            # ended the report iterator, so a new one takes over.
                            reports = self.driver.reports()
                            if self._congested(slices, len(path), t_start, arrivals,
                                               loop.time()):
                                self._retry_slices = min(tn.max_slices,
                                                         slices * tn.congestion_factor)
                                log.info("mesh: search from %s congested (%d answers in %d "
                                         "slices over %.1f s), stopped to search again with "
                                         "%d slices", proxy, len(arrivals), slices,
                                         loop.time() - t_start, self._retry_slices)
                                self._search_cut = True
                                stopped = True
                                with contextlib.suppress(ModuleError):
                                    await self.driver.stop_search()
                                mid_round = True
                                break
                            continue
                        f = report.frame
                        if f.afn == 0x06 and f.fn == 3:
                            if getattr(report.unit, "status", None) == 2:
                                break
                            continue
                        finds = _search_finds(report)
                        if not finds:
                            log.info("mesh: module report AFN%02X F%d ignored", f.afn, f.fn)
                            continue
                        found += finds
                        now = loop.time()
                        if not arrivals and now - t_start > _STALE_S:
                            # No answer can come before the first round's slices are over:
                            # the quickest first answer bounds the time of one slice. (Answers
                            # there at once were queued by the search stopped before this one.)
                            est = (now - t_start) / slices
                            self._slice_s = est if self._slice_s is None \
                                else min(self._slice_s, est)
                            key = (slices, len(path))
                            self._round_s[key] = min(self._round_s.get(key, now - t_start),
                                                     now - t_start)
                        arrivals.append(now)
                        # A round's answers come one report time apart, rounds a round apart.
                        gap = 2.0 if self._slice_s is None else slices * self._slice_s / 2
                        if not bursts or (last_t is not None and now - last_t > gap):
                            if (tail and len(bursts) >= 3
                                    and bursts[-1] * tail < max(bursts)):
                                log.info("mesh: search from %s stopped after %d rounds (last "
                                         "brought %d)", proxy, len(bursts), bursts[-1])
                                stopped = True
                                with contextlib.suppress(ModuleError):
                                    await self.driver.stop_search()
                                break
                            bursts.append(0)
                        bursts[-1] += len(finds)
                        last_t = now
                        missing.difference_update(self.host_of(a) for a, _q, _r in finds)
                        if wanted and not missing:
                            log.info("mesh: search from %s heard all %d nodes it was for",
                                     proxy, len(wanted))
                            stopped = True
                            with contextlib.suppress(ModuleError):
                                await self.driver.stop_search()
                            break
                        if len({a for a, _q, _r in found}) >= cap:
                            log.info("mesh: search from %s reached %d answers, stopped to "
                                     "register them", proxy, cap)
                            self._search_cut = True
                            self._retry_slices = slices
                            stopped = True
                            with contextlib.suppress(ModuleError):
                                await self.driver.stop_search()
                            break
            except TimeoutError:
                log.warning("mesh: search from %s did not end, stopping it", proxy)
                stopped = mid_round = True
                with contextlib.suppress(ModuleError):
                    await self.driver.stop_search()
            if mid_round:
                # The nodes that heard the round's beacon answer in their slots whatever the
                # CCO does: the next search's command and beacon would go out under those
                # answers and be lost (npl: 255 slots are 84 s of answers; the level after a
                # stopped root search found nothing in 12 searches). Let the round end first.
                await asyncio.sleep(self._round_len(slices, len(path)) or 0.0)
            if stopped:
                # The rest of the round the module reported before it took the stop is this
                # search's too. Left queued, the next search took those answers for its own;
                # never registered, they answered it again, and the repeats made the guard
                # treat it as a flood and verify every new node by reads (1,000-meter HPLC:
                # 50 of the root search's 172 s).
                found += await self._queued_reports()
        answers = len({a for a, _q, _r in found})
        if self._discovering:
            self.stats.search_log.append((level, proxy, slices,
                                          round(loop.time() - t_start, 2), answers, 0))
            del self.stats.search_log[:-_SEARCH_LOG]
        if proxy != self.root and not survey \
                and not (self._search_cut and self._retry_slices != slices):
            # What this search heard sizes the next ones (a congested one heard too little).
            self._answers.append(len({a for a, _q, _r in found}))
            del self._answers[:-max(1, tn.slots_window)]
        found = await screen_search(self, proxy, path, found, slices,
                                    verify_new=self._sweeping)
        new: list[str] = []
        reg: list[tuple[str, int]] = []
        for address, q, report in found:
            added = self._on_found(address, report, q, level, plug_and_play, survey)
            if added is not None:
                new.append(address)
                reg += added
        if self._late_reg:
            reg += self._late_reg
            for a, _p in self._late_reg:
                self._unregistered.pop(a, None)
            self._late_reg = []
        if self._discovering:
            # Weakly heard nodes stay out of the module's archive for now (see EngineTuning).
            keep = []
            for a, proto in reg:
                host = self.host_of(a)
                if self._best_quality(host) < self.tuning.register_quality and (
                        not self.tuning.register_after
                        or self._heard_by(host) < self.tuning.register_after):
                    self._unregistered[a] = proto
                else:
                    self._unregistered.pop(a, None)
                    keep.append((a, proto))
            reg = keep
        await self._register(reg)
        self._flush()
        if self._discovering and self.stats.search_log \
                and self.stats.search_log[-1][1] == proxy:
            self.stats.search_log[-1] = (*self.stats.search_log[-1][:5], len(new))
        return new

    def _on_found(self, address: str, report: Any, quality: int | None, level: int,
                  plug_and_play: bool, survey: bool = False) -> list[tuple[str, int]] | None:
        """Record a search report; return the (address, protocol) pairs to register.
        ``survey``: a survey's answer, whose new hop stands by (``Topology.hear``)."""
        topo = self.topology
        relays_back = tuple(report.frame.relays or ())
        proxy = relays_back[0] if relays_back else self.root
        units = getattr(report.unit, "nodes", ())
        info = next((u for u in units if u.address == address), units[0] if units else None)
        if info is None:
            log.warning("mesh: search report for %s without node data, ignored", address)
            return None
        t = self._now()
        # (a 06 F1 entry has no device type: a meter)
        is_collector = getattr(info, "device_type", 0) == 1
        subs = tuple(a for a, _p in getattr(info, "subs", ()))
        if proxy not in topo:
            log.warning("mesh: node %s found via unknown proxy %s, ignored", address, proxy)
            return None
        existing = topo.node(address) if address in topo else None
        first = existing is None or existing.status is NodeStatus.ARCHIVE
        known = plug_and_play or self._known(address, subs)
        if existing is not None and existing.status is not NodeStatus.ARCHIVE:
            status = None  # already classified; just learn the link
        elif known:
            status = NodeStatus.APPROVED
        else:
            admit = self.config.unknown_node_policy == "admit"
            status = NodeStatus.APPROVED if admit else NodeStatus.QUARANTINED
        proto = None if is_collector else _proto_name(info.protocol)
        topo.add_node(address, NodeKind.COLLECTOR if is_collector else NodeKind.METER,
                      status, protocol=proto, sub_meters=subs if is_collector else None, t=t)
        m = self.tuning.search_medium
        if survey:
            topo.hear(proxy, address, quality, medium=m, t=t)
            topo.hear(address, proxy, quality, medium=m, t=t)
        else:
            topo.observe(proxy, address, True, quality, medium=m, t=t)
            topo.observe(address, proxy, True, quality, medium=m, t=t)
        for s in subs:
            self._host[s] = address
            if s in topo and topo.node(s).status is NodeStatus.ARCHIVE:
                topo.remove_node(s, "behind collector " + address)
        if not first:
            tn = self.tuning
            if address in self._unregistered and (
                    (quality is not None and quality >= tn.register_quality)
                    or (tn.register_after and self._heard_by(address) >= tn.register_after)):
                # Heard well at last, or by enough proxies: register it now (with a
                # collector's meters).
                return_later = [(address, self._unregistered[address])] + \
                    [(s, self._unregistered[s]) for s in subs if s in self._unregistered]
                self._late_reg += return_later
            return None
        self._finder[address] = (proxy, quality)
        self.stats.found += 1
        self._emit(NodeFound(address, level, proxy, quality, "collector" if is_collector
                             else "meter", self._known(address, subs)))
        if not self._known(address, subs):
            admitted = topo.node(address).status is NodeStatus.APPROVED
            # Plug and play from an empty archive: every node is "unknown"; not worth a warning.
            log.log(logging.INFO if plug_and_play else logging.WARNING,
                    "mesh: unknown meter %s found via %s, %s", address, proxy,
                    "admitted" if admitted else "quarantined")
            self._emit(UnknownMeter(address, proxy, admitted))
        return [(address, info.protocol), *getattr(info, "subs", ())]
