"""Repair after relays die or nodes fall silent: a mixin of ``mesh.engine.Mesh`` (see
``mesh.engine``'s docstring, **Exchange**).

The check of the relays of a broken route (bisection, then probes of each suspect), the
detour of reads round the suspects meanwhile, the group repair of a dead relay's orphans, the
repair of one silent node (probes, then searches around it), and a meter found replaced at
its spot."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from mesh.background import background as _background
from mesh.events import MeterReplacementFound, RepairDone
from mesh.links import MEDIA, quality_prior
from mesh.routes import Route
from mesh.topology import NodeStatus, Topology
from plc_driver.driver import ModuleError
from plc_driver.link import LinkClosed

# The engine's one logger name, whichever part logs (field engineers filter on it).
log = logging.getLogger("mesh.engine")


class Repair:
    """Relay checks and repairs (a mixin: ``mesh.engine.Mesh``)."""

    def _detour(self, address: str, host: str, primary: Route) -> Route | None:
        """The cheapest route round the relays of ``primary`` that a check suspects (not
        seen working since the read that broke), or None."""
        suspects = self._suspects
        avoid = {r for r in primary.relays if r in suspects
                 and not self._alive_lately(r, suspects[r][1])}
        if not avoid:
            return None
        detour = self.topology.cheapest_route_avoiding(host, avoid)
        if detour is None or detour.path == primary.path:
            return None
        log.info("mesh: read of %s goes round %s (relay check under way)", address,
                 ", ".join(sorted(avoid)))
        return detour

    async def _check_relays(self, failed: Route, good: Route | None,
                            since: float | None = None) -> None:
        """``_find_dead_relay``, its suspects known meanwhile (``_suspects``): the reads
        through them go round them (``_detour``)."""
        used = set(good.relays) if good is not None else set()
        suspects = [r for r in failed.relays if r not in used]
        at = self._now() if since is None else since
        for r in suspects:
            n, t = self._suspects.get(r, (0, at))
            self._suspects[r] = (n + 1, max(t, at))
        try:
            await self._find_dead_relay(failed, good, since)
        finally:
            for r in suspects:
                n, t = self._suspects.pop(r, (1, at))
                if n > 1:
                    self._suspects[r] = (n - 1, t)

    async def _find_dead_relay(self, failed: Route, good: Route | None,
                               since: float | None = None) -> None:
        """Find a dead relay behind a broken route and take it out of every route at once.

        The relays of ``failed`` that ``good`` (the route that worked, if any) did not use are
        suspects, outward from the CCO (see ``_check_relay``); the first found dead ends the
        check. Reads in flight at once meet the same dead relay: a relay already presumed
        dead explains the broken route (nothing to check), and a relay another read is
        checking is not probed again: this read waits for that verdict (and the one group
        repair it starts). A relay seen working since ``since`` (when the failed read was
        sent) or whose repair search just heard nodes is alive; a relay checked in the last
        ``relay_check_s`` is not checked again.
        """
        topo = self.topology
        used = set(good.relays) if good is not None else set()
        relays = failed.relays
        if self.tuning.bisect_relay_checks and len(relays) >= 3:
            await self._bisect_relays(relays, used, since)
        for i, r in enumerate(relays):
            if r in used or r not in topo:
                continue
            if r in topo.presumed_dead:
                return  # declared dead meanwhile (another read): its routes have moved
            pending = self._relay_checks.get(r)
            if pending is not None:
                if await asyncio.shield(pending):
                    return
                continue
            if self._alive_lately(r, since):
                continue
            now = self._now()
            last = self._relay_checked.get(r)
            if last is not None and now - last < self.tuning.relay_check_s:
                continue
            self._relay_checked[r] = now
            task = asyncio.get_running_loop().create_task(
                self._check_relay(r, relays[:i]), name=f"mesh-check-{r}")
            self._relay_checks[r] = task
            task.add_done_callback(
                lambda t, r=r: self._relay_checks.pop(r, None)
                if self._relay_checks.get(r) is t else None)
            if await asyncio.shield(task):
                return

    async def _bisect_relays(self, relays: tuple[str, ...], used: set[str],
                             since: float | None) -> None:
        """Narrow a broken route's suspects down before they are checked one by one: one
        probe of the middle suspect along the route; if it answers, every relay up to it
        works (seen since ``since``: the outward check passes over them), else the silent
        one lies at or before it. A deep route's live relays were otherwise probed one
        after another, outward from the CCO (200-meter hplc feeder: 18 s of probes before
        the dead eighth relay's own). A lost probe only makes the outward check start
        earlier; nothing is declared dead here."""
        topo = self.topology
        lo, hi = 0, len(relays) - 1  # the first silent relay lies in relays[lo..hi]
        while hi - lo >= 2:
            mid = (lo + hi) // 2
            r = relays[mid]
            if r in topo.presumed_dead or r in self._relay_checks or r not in topo:
                return  # known dead or under another read's check: its verdict decides
            if r in used or self._alive_lately(r, since):
                lo = mid + 1
                continue
            pending = self._bisect_probes.get(r)
            if pending is None:
                # Reads in flight at once meet the same broken route: one probe serves all.
                pending = asyncio.get_running_loop().create_task(
                    self._bisect_probe(r, relays[:mid], since), name=f"mesh-bisect-{r}")
                self._bisect_probes[r] = pending
                pending.add_done_callback(lambda _t, r=r: self._bisect_probes.pop(r, None))
            ok = await asyncio.shield(pending)
            if ok:
                lo = mid + 1
            else:
                hi = mid

    async def _bisect_probe(self, r: str, prefix: tuple[str, ...], since: float | None) -> bool:
        async with self._beside_checks():
            return self._alive_lately(r, since) or await self.probe(r, prefix)

    def _alive_lately(self, relay: str, since: float | None) -> bool:
        """True when ``relay`` worked since ``since`` (a read or probe through it, a search
        report of it) or its repair search heard nodes within ``heard_alive_s``."""
        topo = self.topology
        seen = topo.node(relay).last_seen if relay in topo else None
        if since is not None and seen is not None and seen > since:
            return True
        heard = self._search_heard.get(relay)
        return heard is not None and self._now() - heard < self.tuning.heard_alive_s

    async def _check_relay(self, r: str, prefix: tuple[str, ...]) -> bool:
        """Read suspect relay ``r`` along ``prefix`` (the broken route's relays before it),
        then along its own primary; silent on both, it is presumed dead
        (``Topology.mark_node_down``): every route it relayed moves to an alternate now,
        instead of each of its meters losing one read (and its timeout) to learn it, and one
        group repair starts for the nodes it left with no route. True when declared dead."""
        topo = self.topology
        t0 = self._now()
        before = topo.primary(r)
        if await self.probe(r, prefix):
            return False
        # Its own route may cross a relay another read is checking: wait for that verdict.
        # A route through a dead relay proves nothing about this one: cut off by it, it is
        # one of that relay's orphans (its group repair brings it back), not dead itself.
        via = set(before.relays) if before is not None else set()
        for x in via:
            pending = self._relay_checks.get(x)
            if pending is not None and pending is not asyncio.current_task():
                with contextlib.suppress(Exception):
                    await asyncio.shield(pending)
        own = topo.primary(r)
        if own is not None:
            via |= set(own.relays)
        if via & topo.presumed_dead.keys():
            log.info("mesh: relay %s silent behind a dead relay: not declared dead", r)
            return False
        # One silent probe is weak evidence: while the repair's searches and the reads hold
        # the medium, a probe of a live relay often comes back after the module's timeout
        # (2,040-meter hplc feeder, 5 % of the relays dead: 126 of 260 check probes of live
        # relays failed, 14 of them straight from the CCO; one failure each got 87 live
        # relays declared dead, and the 1,000 nodes behind them lost their routes). The relay
        # is probed again along its own routes (and the broken route's prefix once more)
        # until ``relay_check_probes`` probes have all gone unanswered. These probes hold the
        # search lock: a repair search's answer rounds fill the medium around its proxy, and
        # probes sent under them were lost alike (3 probes without the lock: 92 of the first
        # 103 relays declared dead were alive).
        paths = [prefix]
        for rt in [*([own] if own is not None else []), *topo.routes(r)]:
            if rt.relays not in paths and not topo.presumed_dead.keys() & set(rt.relays):
                paths.append(rt.relays)
        for i in range(1, max(self.tuning.relay_check_probes, len(paths[:3]))):
            async with self._beside_checks():
                if self._alive_lately(r, t0):
                    break
                ok = await self.probe(r, paths[i % min(3, len(paths))])
            if ok:
                log.info("mesh: relay %s answered check probe %d: alive", r, i + 1)
                return False
        if self._alive_lately(r, t0):
            log.info("mesh: relay %s silent to the check but heard meanwhile: alive", r)
            return False
        below = [n.address for n in topo.nodes() if n.address not in (self.root, r)
                 and n.address not in topo.presumed_dead
                 and (rt := topo.primary(n.address)) is not None and r in rt.relays]
        for a in (r, *below):
            if topo.node(a).level:
                self._level_before[a] = topo.node(a).level
        topo.mark_node_down(r)
        self._flush()
        # Its meters with no route left are looked for at once, side by side, not each
        # when its own read fails (issue 4: a dead relay's orphans).
        orphans = [a for a in below if a in topo and topo.primary(a) is None]
        if orphans:
            log.warning("mesh: relay %s presumed dead, repairing %d nodes with no other "
                        "route: %s", r, len(orphans), ", ".join(orphans[:8]))
            self._start_group_repair(r, orphans, [a for a in below if a not in orphans])
        return True

    # --- repair, replacement, ageing -------------------------------------------------------------

    def _start_repair(self, host: str, probes: bool = True) -> asyncio.Task[None] | None:
        """The repair of ``host`` under way (a group repair that has it included), else a new
        one (``probes``: probe first; False when the caller's probes just failed); None while
        its repairs are backed off (the last found nothing) or it was replaced."""
        task = self._repairs.get(host)
        if task is not None and not task.done():
            return task
        if host in self._replaced:
            return None
        backoff = self._repair_backoff.get(host)
        if backoff is not None and self._now() < backoff[1]:
            return None
        task = _background(self._repair_bg(host, probes), f"mesh-repair-{host}")
        self._repairs[host] = task
        return task

    def _start_group_repair(self, relay: str, orphans: list[str], siblings: list[str]) -> None:
        """One repair for every node that dead ``relay`` left with no route (see
        ``_repair_group``); a node with its own repair under way keeps that one."""
        group = [a for a in orphans if a not in self._repairs or self._repairs[a].done()]
        if not group:
            return
        task = _background(self._repair_group_bg(relay, group, siblings),
                           f"mesh-repair-group-{relay}")
        for a in group:
            self._repairs[a] = task

    async def _repair_group_bg(self, relay: str, orphans: list[str],
                               siblings: list[str]) -> None:
        try:
            await self._repair_group(relay, orphans, siblings)
        except LinkClosed:
            log.info("mesh: repair behind %s stopped, the module link closed", relay)

    async def _repair_bg(self, host: str, probes: bool = True) -> None:
        """A background repair; the serial port closing under it ends it quietly."""
        try:
            await self.repair(host, probes=probes)
        except LinkClosed:
            log.info("mesh: repair of %s stopped, the module link closed", host)

    def _check_relays_bg(self, failed: Route, good: Route | None, since: float | None) -> None:
        """``_check_relays`` in the background (kept until done; see ``wait_repairs``)."""
        async def check() -> None:
            try:
                await self._check_relays(failed, good, since)
            except LinkClosed:
                log.info("mesh: relay check of %s stopped, the module link closed",
                         " > ".join(failed.relays))
        task = _background(check(), "mesh-relay-check")
        self._bg_checks.add(task)
        task.add_done_callback(self._bg_checks.discard)

    async def wait_repairs(self) -> None:
        """Wait for the background relay checks and repairs started by exchanges."""
        while any(not t.done() for t in (*self._bg_checks, *self._repairs.values())):
            await asyncio.gather(*self._bg_checks, *self._repairs.values(),
                                 return_exceptions=True)

    async def repair(self, address: str, *, searched: Iterable[str] = (),
                     probes: bool = True) -> bool:
        """Find a way back to ``address``: probes via its neighbourhood (in parallel), then a
        repair search from the live nodes around it (which also finds a replacement meter),
        except from the nodes in ``searched`` (a group repair searched from them already,
        with ``address`` out of the module's archive). ``probes`` False: searches only (the
        caller's probes just failed)."""
        topo = self.topology
        if address not in topo or address in self._replaced:
            return False
        seen = topo.node(address).last_seen
        made = 0
        if probes:
            ok, made = await self._repair_probes(address)
            if ok:
                log.info("mesh: %s reachable again after %d probes", address, made)
                self._repair_backoff.pop(address, None)
                self._emit(RepairDone(address, True, made, 0))
                return True
        searches = await self._repair_search(address, skip=set(searched))
        # Heard by the search, with a route: a route left from before proves nothing.
        heard = address in topo and topo.node(address).last_seen != seen
        reachable = heard and topo.primary(address) is not None
        if heard:
            self._repair_backoff.pop(address, None)
        elif address in topo and address not in self._replaced:
            self._back_off(address)
        self._emit(RepairDone(address, reachable, made, searches))
        return reachable

    def _back_off(self, address: str) -> None:
        """A repair of ``address`` found nothing: no repair from its reads for a while, twice
        as long after each fruitless one (``repair_backoff_s`` .. ``repair_backoff_max_s``)."""
        tn = self.tuning
        fruitless = self._repair_backoff.get(address, (0, 0.0))[0] + 1
        wait = min(tn.repair_backoff_max_s, tn.repair_backoff_s * 2 ** min(fruitless - 1, 30))
        self._repair_backoff[address] = (fruitless, self._now() + wait)
        log.warning("mesh: repair of %s found nothing (%d in a row): no repair for %.0f s",
                    address, fruitless, wait)

    async def _repair_probes(self, address: str) -> tuple[bool, int]:
        """Probe ``address`` through up to ``repair_probes`` candidate relays (the CCO itself
        first when it may hear the node), ``max_concurrent`` at a time; (reachable, probes)."""
        topo = self.topology
        node = topo.node(address)
        paths: list[tuple[str, ...]] = []
        if (node.level or 99) <= 2 or topo.link(self.root, address) is not None:
            paths.append(())  # straight from the CCO (the root has no route)
        # Its own routes once more where no relay is presumed dead: the check of a relay that
        # missed a read often finds it alive (a busy medium), and it carries the node again.
        for route in topo.routes(address):
            if route.relays and route.relays not in paths \
                    and not topo.presumed_dead.keys() & set(route.relays):
                paths.append(route.relays)
        for w in self._candidates(address, include_down=True):
            if len(paths) >= self.tuning.repair_probes:
                break  # the rest would be cut off below
            route = topo.primary(w)
            if route is not None and w not in topo.presumed_dead:
                paths.append((*route.relays, w))
        paths = paths[:self.tuning.repair_probes]
        if self._repair_sem is None:
            # Shared by every repair: the orphans of a dead relay are repaired side by side.
            self._repair_sem = asyncio.Semaphore(max(1, self.driver.max_concurrent))
        sem = self._repair_sem
        done = asyncio.Event()
        made = 0

        async def one(relays: tuple[str, ...]) -> bool:
            nonlocal made
            async with sem:
                if done.is_set():
                    return False
                made += 1
                if await self.probe(address, relays):
                    log.info("mesh: %s answered via %s", address, list(relays) or "the CCO")
                    done.set()
                    return True
                return False
        await asyncio.gather(*(one(r) for r in paths))
        return done.is_set() and topo.primary(address) is not None, made

    def _search_proxies(self, address: str) -> list[str]:
        """Live nodes near ``address`` to search from: its own neighbours, then the neighbours
        of its neighbours presumed dead (a dead relay's orphans lie around it); best first."""
        topo = self.topology

        def live(w: str) -> bool:
            if w == self.root:
                return True
            if w not in topo or w in topo.presumed_dead:
                return False
            n = topo.node(w)
            route = topo.primary(w)
            return n.status is NodeStatus.APPROVED and route is not None \
                and address not in route.relays and len(route.relays) < self._search_depth()
        score: dict[str, float] = {}
        # Ties (every link down or heard with no quality scores alike) go to the neighbour
        # with the best estimated two-way delivery, not the lowest address (2,040-meter npl
        # street: a level-1 meter whose links were all down was searched for from its three
        # lowest-address neighbours after every failed read, and never heard).
        two_way: dict[str, float] = {}

        def note(nb: Any, value: float, p_scale: float = 1.0) -> None:
            score[nb.address] = max(score.get(nb.address, 0.0), value)
            p = (nb.p_out or nb.p_in or 0.0) * (nb.p_in or nb.p_out or 0.0) * p_scale
            two_way[nb.address] = max(two_way.get(nb.address, 0.0), p)
        dead: list[tuple[str, float]] = []
        level = self._level_before.get(address) or topo.node(address).level or 1
        for nb in topo.neighbours(address):
            if not _heard(topo, address, nb.address) and (nb.address != self.root
                                                          or level > 2):
                continue  # known from failed probes only (see ``_heard``); the CCO's own
                # search hears every node next to it (its failed probe says no more), but
                # not a node found 3 hops out or more (1,000-meter hplc feeder: the CCO
                # was the first proxy searched for a level-6 meter)
            if nb.address in topo.presumed_dead:
                dead.append((nb.address, _heard_before(topo, nb.address, address)))
            elif live(nb.address):
                note(nb, _evidence(nb))
        # The neighbours of a dead neighbour (its relay) heard the spot too: a two-hop guess,
        # but a better one than a link whose reads failed (reported at quality 0).
        for d, via in dead:
            for nb in topo.neighbours(d):
                if nb.address != address and live(nb.address) and _heard(topo, d, nb.address):
                    note(nb, 0.9 * via * _heard_before(topo, d, nb.address), 0.5)
        out = sorted(score, key=lambda w: (-score[w], -two_way[w], w))
        # Then the live nodes further out (up to three heard links, nearest the spot first,
        # see ``_around``): when the nodes around it were searched from in vain, the next
        # repair searches a wider circle instead of the same proxies again (2,040-meter hplc
        # feeder: three meters whose one way back was a node never linked to them were
        # searched for from the same three proxies after every read).
        out += [w for w in _around(topo, (address, *(d for d, _v in dead)), live, level - 1)
                if w not in score]
        return out

    async def _repair_search(self, address: str, skip: set[str] | None = None) -> int:
        """Searches from the live nodes around silent ``address``; returns how many were made.

        A node in the module's slave archive does not answer a search (1376.2 AFN11 F5), so
        ``address`` (with a collector's meters) is deleted from it first (AFN11 F2) and added
        back after: if it is alive it answers and its new hop gives it a route; a meter
        swapped in at its spot answers too (``MeterReplacementFound``)."""
        topo = self.topology
        # Proxies searched from for it lately are not searched again: each repair of a node
        # still silent searches the next ones out (see ``_search_proxies``).
        now = self._now()
        lately = self._searched_for.setdefault(address, {})
        proxies = [w for w in self._search_proxies(address) if (not skip or w not in skip)
                   and now - lately.get(w, float("-inf")) >= self.tuning.relay_check_s]
        if not proxies:
            log.info("mesh: no live node near %s to search from", address)
            return 0
        # A search fills the medium around its proxy with answer rounds for up to minutes: in
        # the middle of a reading round (from the CCO above all, where every read's frames
        # pass) it made dozens of reads fail on their first route and moved the routes of
        # whole subtrees (1,000-meter hplc, the second day's round: 2.7 % of first reads
        # failed, against ~0.5 %). The search for one silent meter waits for the reads to
        # pause; the reads waiting for a repair do not count (they would wait for each other).
        if self._reads_in_flight > self._reads_waiting_repair:
            log.info("mesh: repair search for %s waits for the reads to pause", address)
        await self._wait_for_quiet(but_repair_waits=True)
        pairs = self._slave_pairs(address)
        try:
            await self._unregister([a for a, _p in pairs])
        except ModuleError as exc:
            log.warning("mesh: %s not taken out of the module for a repair search: %s",
                        address, exc)
        searches = 0
        silent = 0
        try:
            for w in proxies:
                if searches >= self.tuning.repair_searches \
                        or silent >= self.tuning.repair_searches:
                    break
                if not await self._proxy_answers(w):
                    silent += 1
                    log.info("mesh: repair search for %s: proxy %s silent, passed over",
                             address, w)
                    continue
                searches += 1
                lately[w] = self._now()
                level = (topo.node(w).level or 0) + 1 if w != self.root else 1
                log.info("mesh: repair search for %s from %s", address, w)
                seen = topo.node(address).last_seen
                new = await self._search_from(w, level, not self.archive,
                                              minutes=self.tuning.local_search_minutes,
                                              wanted={address}
                                              if self.tuning.repair_search_wanted else None)
                for _again in range(self.tuning.max_search_repeats):
                    # Stopped early (taken for congested before its first answers came back
                    # along a long relay path): a silent node's answer is the one wanted.
                    if not self._search_cut:
                        break
                    new += await self._search_from(w, level, not self.archive,
                                                   minutes=self.tuning.local_search_minutes,
                                                   slices=self._retry_slices)
                for addr in new:
                    # Near the proxy whose report it was (a late report of an earlier search
                    # may come in during this one).
                    await self._replacement(address, addr,
                                            self._finder.get(addr, (w, None))[0])
                if address not in topo or new:
                    break
                if topo.node(address).last_seen != seen and topo.primary(address) is not None:
                    log.info("mesh: %s heard again by the search from %s", address, w)
                    self._search_heard[w] = self._now()
                    break
        finally:
            if address in topo and address not in self._replaced:
                await self._register(pairs)  # (a replaced meter leaves the module for good)
        return searches

    def _group_proxies(self, relay: str, orphans: list[str], siblings: list[str]) -> list[str]:
        """Live nodes to search from for the orphans of dead ``relay``, best first.

        The orphans lie around the dead relay, and so do the nodes it relayed that kept a
        route (``siblings``) and its own live neighbours: a node scores for each orphan it
        has a link to and for its link to the relay (heard in a search report counts more
        than a probe's outcome), its level next to the relay's breaking ties. The CCO last.
        """
        topo = self.topology
        waiting = set(orphans)

        def usable(w: str) -> bool:
            if w == self.root or w in waiting or w not in topo or w in topo.presumed_dead:
                return False
            n = topo.node(w)
            route = topo.primary(w)
            return n.status is NodeStatus.APPROVED and route is not None \
                and relay not in route.relays and not waiting.intersection(route.relays) \
                and len(route.relays) < self._search_depth()

        score: dict[str, float] = {}
        for a in (relay, *orphans):
            weight = 1.0 if a == relay else 2.0
            for nb in topo.neighbours(a):
                # Heard links only: a link known from failed probes alone (an alternates
                # probe through a candidate anywhere in the district) is no sign of a
                # neighbour, and such links took every search of the repair of 8 orphans
                # (1,000-meter hplc feeder) to nodes that did not hear them.
                if usable(nb.address) and _heard(topo, a, nb.address):
                    # (every link of the dead relay was marked down at once and its reads
                    # failed: scored alike, its neighbours went by address, and the
                    # 1,000-meter npl feeder's repair searched from three nodes nowhere near)
                    ev = _heard_before(topo, relay, nb.address) if a == relay else _evidence(nb)
                    score[nb.address] = score.get(nb.address, 0.0) + weight * ev
        for w in siblings:
            if usable(w):
                score[w] = score.get(w, 0.0) + 0.5
        level = self._level_before.get(relay) or (topo.node(relay).level or 0
                                                  if relay in topo else 0)

        def key(w: str) -> tuple[float, int, str]:
            return (-score[w], abs((topo.node(w).level or 0) - (level + 1)), w)
        first = sorted(score, key=key)
        # Then wider, until the orphans are heard: the live nodes around the relay's spot
        # (see ``_around``), its parent's siblings among them.
        wider = [w for w in _around(topo, (relay, *orphans), usable, level) if w not in score]
        return [*first, *wider, self.root]

    async def _repair_group(self, relay: str, orphans: list[str], siblings: list[str]) -> int:
        """Bring back every node dead ``relay`` left with no route, with one set of searches.

        The orphans (with a collector's meters) leave the module's slave archive together
        (AFN11 F2: a registered node does not answer a search), then searches go out from the
        live nodes around the relay (``_group_proxies``) until every orphan was heard again:
        one search hears all the orphans around its proxy, where a repair per node searched
        the same few proxies once for each orphan (a 200-meter feeder: 3 searches for each
        of 7 orphans, all of them empty). An orphan heard again is registered at once and
        searched from next: the orphans further out hear it better than any node left.
        Orphans still silent after ``group_searches`` searches are repaired one by one
        (probes, then the search that finds a meter replaced at the spot). Returns the
        searches made.
        """
        topo = self.topology
        tn = self.tuning
        waiting = [a for a in orphans if a in topo and topo.primary(a) is None]
        if not waiting:
            return 0
        pairs: dict[str, tuple[str, int]] = {}
        for a in waiting:
            pairs.update((x, (x, proto)) for x, proto in self._slave_pairs(a))
        try:
            await self._unregister(list(pairs))
        except ModuleError as exc:
            log.warning("mesh: nodes behind %s not taken out of the module for a repair "
                        "search: %s", relay, exc)
        seen = {a: topo.node(a).last_seen for a in waiting}
        searched: set[str] = set()
        searches = 0

        async def search_from(queue: list[str], limit: int) -> None:
            """Searches from ``queue`` (at most ``limit``) until every orphan was heard."""
            nonlocal waiting, searches
            silent = made = 0
            while queue and waiting and made < limit:
                w = queue.pop(0)
                if w in searched or (w != self.root and (
                        w not in topo or topo.primary(w) is None
                        or len(topo.primary(w).relays) >= self._search_depth())):
                    continue
                searched.add(w)
                if silent < limit and not await self._proxy_answers(w):
                    silent += 1
                    log.info("mesh: repair behind %s: proxy %s silent, passed over", relay, w)
                    continue
                made += 1
                searches += 1
                for a in waiting:
                    self._searched_for.setdefault(a, {})[w] = self._now()
                level = (topo.node(w).level or 0) + 1 if w != self.root else 1
                # Slots for the orphans still silent (they are most of the answers).
                slices = tn.proxy_slices
                while slices < 2 * len(waiting) and slices * 2 <= tn.max_slices:
                    slices *= 2
                new = await self._search_from(w, level, not self.archive,
                                              minutes=tn.local_search_minutes, slices=slices,
                                              wanted=set(waiting) if tn.repair_search_wanted
                                              else None)
                for _again in range(tn.max_search_repeats):
                    if not self._search_cut:
                        break
                    new += await self._search_from(w, level, not self.archive,
                                                   minutes=tn.local_search_minutes,
                                                   slices=self._retry_slices)
                for addr in new:
                    # A node never seen before where the relay went silent: the relay's
                    # meter replaced at the same spot (the repair per node found it so).
                    await self._replacement(relay, addr, self._finder.get(addr, (w, None))[0])
                heard = [a for a in waiting if a in topo and topo.node(a).last_seen != seen[a]
                         and topo.primary(a) is not None]
                if not heard:
                    continue
                log.info("mesh: search from %s heard %d of the %d nodes behind %s", w,
                         len(heard), len(waiting), relay)
                self._search_heard[w] = self._now()
                waiting = [a for a in waiting if a not in heard]
                # Registered again at once (they need not answer the next search), and
                # searched from next, best heard first.
                back = [pairs[x] for a in heard for x in (a, *topo.node(a).sub_meters)
                        if x in pairs]
                await self._register(back)
                heard.sort(key=lambda a: -self._best_quality(a))
                queue[:0] = [a for a in heard if a not in searched]

        # A search hears every orphan around its proxy: a few orphans need few searches.
        limit = min(tn.group_searches,
                    max(tn.repair_searches, tn.group_searches_per_orphan * len(waiting)))
        queue = self._group_proxies(relay, waiting, siblings)
        log.info("mesh: repair of %d nodes behind %s: searching from %s", len(waiting), relay,
                 ", ".join(queue[:limit]))
        try:
            await search_from(queue, limit)
            if waiting and tn.group_own_proxies:
                # Then from each silent orphan's own neighbours in turn, still for them all:
                # orphans of one relay are often heard by one node away from it (2,040-meter
                # hplc street: two orphans, each then repaired alone, both found by the second
                # node of its own list; the second's repair waited 19 s for the reads to
                # pause, and their two reads held two of the five read slots for a minute).
                own = [[w for w in self._search_proxies(a) if w not in searched]
                       for a in waiting]
                queue = list(dict.fromkeys(w for tier in itertools.zip_longest(*own)
                                           for w in tier if w is not None))
                limit = min(tn.group_searches, tn.repair_searches * len(waiting))
                log.info("mesh: %d nodes behind %s not heard, searching from their own "
                         "neighbours: %s", len(waiting), relay, ", ".join(queue[:limit]))
                await search_from(queue, limit)
        finally:
            rest = [pairs[x] for a in waiting if a in topo
                    for x in (a, *topo.node(a).sub_meters) if x in pairs]
            await self._register(rest)
        for a in orphans:
            if a in topo and a not in waiting:
                self._emit(RepairDone(a, topo.primary(a) is not None, 0, searches))
        if waiting:
            log.warning("mesh: %d nodes behind %s not heard by %d searches, repaired one by "
                        "one: %s", len(waiting), relay, searches, ", ".join(waiting[:8]))
        for a in waiting:
            if a in topo and topo.primary(a) is None:
                await self.repair(a, searched=searched)
        return searches

    async def _replacement(self, old: str, new: str, near: str) -> None:
        """``new`` appeared beside silent ``old``: a meter replaced at the same spot.

        The old meter leaves the module's slave archive (AFN11 F2) so the new one has its
        slot (a module holds as many slaves as a district has meters: the 2,040-meter trial's
        replacement was refused with the archive full, and every later repair of the old
        meter registered it back in vain); it is not searched for again, and its reads fail
        at once, "replaced by ...", until it is heard again (it was only off) or aged out.
        """
        topo = self.topology
        if old not in topo or new not in topo or old in self._replaced:
            return
        onode, nnode = topo.node(old), topo.node(new)
        if onode.kind is not nnode.kind:
            return
        log.warning("mesh: meter %s replaced by %s (found near %s)", old, new, near)
        if onode.status is NodeStatus.APPROVED and nnode.status is NodeStatus.QUARANTINED:
            # The utility's own swap at the same spot: it takes over the old meter's role.
            topo.approve(new)
        self._replaced[old] = (new, self._now())
        self._repair_backoff.pop(old, None)
        self._emit(MeterReplacementFound(old, new, near))
        try:
            await self._unregister([old, *onode.sub_meters])
        except ModuleError as exc:
            log.warning("mesh: replaced meter %s not deleted from the module: %s", old, exc)
        if new not in self._registered:
            await self._register(self._slave_pairs(new))


def _evidence(nb: Any) -> float:
    """How much a recorded neighbour says the two nodes hear each other: the prior of the
    quality it was heard at (a search report's, or a read's: a failed read reports about 0),
    a quarter for a link with no quality or marked down (a probe's outcome only)."""
    if nb.quality is None or nb.down:
        return 0.25
    return quality_prior(nb.quality)


def _heard_before(topo: Topology, dead: str, w: str) -> float:
    """How well ``w`` and presumed-dead ``dead`` heard each other before it went silent: the
    link's estimate without its failures (the reads and check probes that found it silent
    all failed, and failed reads report quality 0, so the recorded quality and estimate of
    every link of a dead relay look alike; the failures say it died, not how well it was
    heard), the better direction."""
    best = 0.0
    for x, y in ((dead, w), (w, dead)):
        for m in MEDIA:
            est = topo.link(x, y, m)
            if est is not None:
                best = max(best, est.p_given(est.succ, 0.0))
    return best


def _heard(topo: Topology, x: str, w: str) -> bool:
    """True when ``x`` and ``w`` were ever heard over their link (either direction): a search
    report or a read gave it a quality above 0, or at least one whole exchange went over it.
    A link known only from failed probes (quality 0 and a fraction of a success from blame
    sharing) says nothing about where the node stands: an alternates probe tries candidate
    relays anywhere, and a dead relay's orphans were linked so to nodes that never heard them
    (1,000-meter hplc feeder: searches for 12 orphans went from such nodes only)."""
    for u, v in ((x, w), (w, x)):
        for m in MEDIA:
            est = topo.link(u, v, m)
            if est is not None and ((est.quality or 0) > 0 or est.succ >= 1.0):
                return True
    return False


def _heard_neighbours(topo: Topology, x: str) -> set[str]:
    """The nodes ``x`` was heard with (see ``_heard``)."""
    g = topo.graph
    if x not in g:
        return set()
    return {w for w in (*g.successors(x), *g.predecessors(x)) if _heard(topo, x, w)}


def _around(topo: Topology, centre: Iterable[str], usable: Callable[[str], bool],
            level: int, hops: int = 3) -> list[str]:
    """Usable nodes up to ``hops`` heard links out from ``centre`` (a dead relay and the
    nodes it left, or one silent node), the likeliest to hear the centre's spot first.

    The concentrator knows few links between nodes of one level (a registered node does not
    answer the searches of its siblings), so the live nodes that hear a dead relay's orphans
    are mostly two or three heard links away from it. Nodes sharing more heard neighbours
    with the centre and the nodes around it stand nearer; ties go to the level next to
    ``level`` (1,000-meter hplc feeder, seed 1: 86 usable nodes lay within three heard
    links of a dead level-4 relay and its 8 orphans, 14 of them hearing an orphan; the
    group repair's 7th search, the 4th in this order, heard all 8).
    """
    centre = [c for c in centre if c in topo]
    dist: dict[str, int] = {c: 0 for c in centre}
    frontier = list(centre)
    nbs: dict[str, set[str]] = {}
    for hop in range(1, hops + 1):
        nxt = []
        for x in frontier:
            if x == topo.root or (hop > 1 and x in topo.presumed_dead):
                continue  # every level-1 node is two links from any other through the CCO
            nbs[x] = nbs.get(x) or _heard_neighbours(topo, x)
            for w in sorted(nbs[x]):
                if w not in dist:
                    dist[w] = hop
                    nxt.append(w)
        frontier = nxt
    core = set(centre).union(*(nbs.get(c, set()) for c in centre))
    out = [w for w in dist if dist[w] > 0 and w != topo.root and usable(w)]
    shared = {w: len((nbs.get(w) or _heard_neighbours(topo, w)) & core) for w in out}
    out.sort(key=lambda w: (-shared[w], abs((topo.node(w).level or 0) - level), dist[w], w))
    return out
