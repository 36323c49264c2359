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
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from concentrator import dlt645
from concentrator.clock import Clock
from concentrator.config import MeshConfig
from mesh import persist
from mesh.guard import MeshGuard, screen_search
from mesh.links import MEDIA, quality_prior
from mesh.routes import MAX_RELAY_LEVEL, Route
from mesh.topology import NodeKind, NodeStatus, Topology
from plc_driver.driver import (
    ExchangeResult,
    ModuleArchiveFull,
    ModuleDriver,
    ModuleError,
    ReadFailure,
)
from plc_driver.link import LinkClosed

__all__ = [
    "Mesh",
    "EngineTuning",
    "ExchangeOutcome",
    "NodeFound",
    "UnknownMeter",
    "DiscoveryProgress",
    "DiscoveryDone",
    "NodeAged",
    "MeterReplacementFound",
    "RepairDone",
]

log = logging.getLogger(__name__)

DENY_SLAVE_SILENT = 11  # AFN00 F2: the node did not answer (a hop of the path failed)
DENY_METER_SILENT = 8  # the node answered but its meter did not: the path itself worked
DENY_BUSY = 9  # module busy / archive full: not the links' fault
#: a search report this soon after the search started was queued before it (no medium carries
#: a search round this fast): it says nothing about the time of a round
_STALE_S = 0.05
#: how long to wait for one more queued report after stopping a search
_DRAIN_S = 0.01
_SEARCH_LOG = 5000  # searches kept in ``Mesh.stats.search_log``


# --- events (frozen: they go to the log, the store and the master station) -----------------

@dataclass(frozen=True, slots=True)
class NodeFound:
    """A search found ``address`` through ``proxy`` (the CCO address: heard directly)."""

    address: str
    level: int
    proxy: str
    quality: int | None
    kind: str
    in_archive: bool


@dataclass(frozen=True, slots=True)
class UnknownMeter:
    """A node not in the master's archive answered a search; ``admitted`` or quarantined."""

    address: str
    proxy: str
    admitted: bool


@dataclass(frozen=True, slots=True)
class DiscoveryProgress:
    """A discovery level is done: ``found`` new nodes at ``level``, ``total`` so far."""

    level: int
    found: int
    total: int
    searches: int


@dataclass(frozen=True, slots=True)
class DiscoveryDone:
    nodes: int
    by_level: tuple[tuple[int, int], ...]  # (level, nodes)
    searches: int
    reads: int
    seconds: float
    missing_archive: tuple[str, ...]  # archive meters no search found


@dataclass(frozen=True, slots=True)
class NodeAged:
    """A node silent since ``last_seen`` was deleted (topology and module archive)."""

    address: str
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class MeterReplacementFound:
    """``old`` went silent and ``new`` answered a local search from ``old``'s neighbours."""

    old: str
    new: str
    near: str


@dataclass(frozen=True, slots=True)
class RepairDone:
    address: str
    reachable: bool
    probes: int
    searches: int


@dataclass(frozen=True, slots=True)
class ExchangeOutcome:
    """What ``Mesh.exchange`` did: the reply (or why there is none) and the route it used."""

    address: str
    reply: bytes | None
    failure: str | None
    route: Route | None  # the route of the last attempt
    attempts: int
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.reply is not None

    @property
    def relays(self) -> tuple[str, ...]:
        return () if self.route is None else self.route.relays

    @property
    def latency(self) -> float:
        return self.latency_s


def _background(coro: Any, name: str) -> asyncio.Task:
    """A task nobody awaits for its result (probing, repairs, checks, the survey): its crash
    is logged (``_log_crash``)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(_log_crash)
    return task


def _log_crash(task: asyncio.Task) -> None:
    """Done-callback of the mesh's background tasks: nobody awaits their result, so a bug
    there would otherwise end the probing or a repair without a word (``wait_*`` gather with
    ``return_exceptions``)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, LinkClosed):
        log.error("mesh: background task %s failed: %r", task.get_name(), exc,
                  exc_info=exc)


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


def _crosses(route: Route, hops: frozenset[tuple[str, str]]) -> bool:
    """True when ``route`` has one of ``hops`` (pairs of addresses, either order given)."""
    path = route.path
    return any((path[i], path[i + 1]) in hops for i in range(len(path) - 1))


@dataclass(frozen=True, slots=True)
class EngineTuning:
    """Engine knobs below the user-facing ``MeshConfig`` (defaults suit HPLC and NPL)."""

    #: narrowband: the CCO's own search finds nodes at half the cost per node of proxy
    #: searches (no report relayed back over a hop); 10 minutes found 231 of 1,000, 20 found 894
    root_search_minutes: int = 20
    proxy_search_minutes: int = 3
    search_retries: int = 0
    #: a search stopped at the guard's answer cap is made again (its answers registered) at
    #: most this many times in a row
    max_search_repeats: int = 4
    #: ... for the CCO's own search (its repeats hear the weakly heard nodes of the first
    #: ones again: they stay unregistered, see ``register_quality``)
    root_repeats: int = 4
    #: the root search stops once a round brings under 1/root_tail of its best round (hplc:
    #: a 255-slot round of 10 s then brings under 25 nodes, which proxy searches find at
    #: 0.3 s each; 6 -> 3: 1,000-meter hplc formation -10 s)
    root_tail: int = 3
    #: the same for a search from a proxy (0: the module ends it)
    proxy_tail: int = 0
    #: a level ends after this many proxy searches in a row found nothing new
    empty_streak: int = 12
    #: ... and, when it first does, its remaining proxies are searched weakest-heard first
    #: (the level's edge) until this many more in a row found nothing (0: no edge sweep)
    edge_sweep: int = 6
    #: a node heard at least ``cover_quality`` by any searched proxy (not only its finder)
    #: is covered: a node found weakly is heard again by later searches (it stays
    #: unregistered), and one of them that hears it well shares its neighbourhood. 1,000-meter
    #: hplc feeder, seed 1: 110 of 509 searches went to such proxies (21 found anything);
    #: formation 507 -> 454 sim-s, seeds 2/3 733 -> 434, 659 -> 465, 1000/1000 found. It
    #: learns fewer hops: route quality after probing (with the hop-aware congestion rule)
    #: 96.9 -> 96.3 % (seed 2: 90.3 -> 87.6 %); 2,040 street 595 -> 576 s, 94.1 -> 91.8 %.
    #: Off: a district is formed once, and read on its routes every day
    cover_any: bool = False
    #: completeness sweep after the levels: never-searched nodes are searched (see
    #: ``Mesh._sweep``) until this many in a row found nothing (0: no sweep). 1,000-meter
    #: npl, seed 1: 60 -> 995/1000 (+210 s), 120 -> 995, 250 -> 1000/1000 (+720 s);
    #: 2,040 hplc 2040/2040 from 60 on (+95 s at 250); 1,000 hplc +46 s at 250 ...
    sweep_empty: int = 250
    #: ... each with this many answer slots (most find nothing: a short round; npl 4 -> 2:
    #: 2.7 -> 2.0 s an empty search)
    sweep_slices: int = 2
    #: a level whose own last searches (this many, or all of them if fewer) found nothing
    #: searches no covered proxies
    covered_after: int = 4
    root_slices: int = 255  # random answer slots of the first search: many nodes hear the CCO
    #: the fewest slots of a proxy search (see ``slots_window``): most proxies have a few
    #: unfound neighbours, and a round costs its slots whether answered or not (1,000-meter
    #: hplc: 16 -> 8 slots, level 2 199 -> 158 s)
    proxy_slices: int = 8
    #: a search whose answers nearly stopped while the module keeps it going (its rounds end
    #: in collisions: more contenders than slots) is stopped after this many rounds and made
    #: again with ``congestion_factor`` times the slots, up to ``max_slices`` (the data unit's
    #: byte). 2,040-meter street: searches of 120 contenders in 16 slots ran 150 s for 64 nodes
    congestion_rounds: int = 4
    #: a proxy search asks for about ``slots_per_answer`` slots per answer the last
    #: ``slots_window`` proxy searches heard (0: always ``proxy_slices``)
    slots_window: int = 4
    slots_per_answer: float = 0.5
    congestion_factor: int = 4
    max_slices: int = 255
    #: a node heard at least this well by its proxy shares the proxy's neighbourhood: it is
    #: only searched from when its level's other proxies find nothing new or archive meters
    #: are still unfound. 8 and 10 lost whole branches of a generated 200-meter feeder
    #: (115/200 found); 12 found 200/200 with 68 searches (16 = search from every node: 201)
    cover_quality: int = 12
    #: a node heard worse than this is not registered with the module until discovery ends,
    #: so it keeps answering the searches of later proxies and the planner learns the better
    #: hops it has (a node registered after one weak report had that hop as its only link;
    #: on a 200-meter feeder route quality 82 % with 7, 88 % with 9, formation +10 %)
    register_quality: int = 9
    #: ... or once this many proxies' searches heard it (0: never): each further answer
    #: costs a slot and a relayed report (2,040-meter hplc: level 2 heard 2,020 answers for
    #: 983 new nodes). Off: 2 gave 2,040 hplc 1,283 -> 1,075 s but route quality at first
    #: read 91 -> 82 % (200 feeder 67 -> 49 %); 3 gave 1,229 s, 88 %
    register_after: int = 0
    #: probe every node for its alternates before ``discover`` returns (reading waits for
    #: it); off: only uncertain route choices are probed then (``probe_uncertain``)
    alternates_at_formation: bool = False
    #: seconds before each background probe for alternates (reads waiting go first)
    gap_probe_s: float = 0.2
    #: before the alternates, search once from every relay of a primary route with the nodes
    #: around it out of the module's archive (``Mesh.survey``): a registered node answers no
    #: search, so formation heard each node from one proxy only and never the relay-to-relay
    #: hops that carry the reads by day, when the pumps' noise breaks the night's chains
    #: (``bench/mesh_day.py``, 1,000-meter hplc feeder, seeds 1/2/3: a read of every meter at
    #: 09:00 reached 75 / 86 / 93 % of them without it, 98 / 99 / 99 % with it)
    survey: bool = True
    #: ... taking out the survey proxy's known neighbourhood, nearest first by signal
    #: (``Mesh._survey_ring``; at most ``survey_depth`` hops out), up to this many nodes per
    #: search. Narrowband: 32 (its answer slots are ~0.3 s: 96 took 147 sim-s a search on the
    #: 200-meter feeder; 32 gave as good day reads, 97.0 % against 96.5 %, in half the time)
    survey_ring: int = 96
    survey_depth: int = 4
    #: ... each survey search waits until no read has been in flight for this long: its
    #: answer rounds fill the medium around its proxy for seconds, and one started in a
    #: reading round's short gaps (the quick make-up pass's 5 s) collided with the reads
    #: (``bench/rogue.py``, first attempt with the flooder: 99.50 % without the survey,
    #: 99.15 % with it at ``gap_idle_s``)
    survey_idle_s: float = 30.0
    #: the survey is made again this often, in the background of the hourly upkeep
    #: (``maintain``): relays change as meters come, go and move (None: once, after formation;
    #: a restart counts as a survey, so restarts do not add searches)
    survey_every_s: float | None = 7 * 86400.0
    #: the upkeep checks the module's slave count (10 F1) this often and adds back what the
    #: module lost (``sync_module_archive``; None: only at a restart)
    archive_check_s: float | None = 3600.0
    #: ... and background probes wait until no read has been in flight for this long: probing
    #: with half the read slots during a round doubled the daemon's CPU per read and held the
    #: round's make-up passes back (bench/daemon_cpu.py, 1,000-meter hplc)
    gap_idle_s: float = 2.0
    alternates: int = 2
    probes_per_node: int = 6  # candidate relays tried per node when looking for alternates
    #: a primary with a hop heard below this quality (either direction) keeps looking for a
    #: stronger route after its alternates are found (see ``Mesh._weak_primary``).
    #: 11 on narrowband is chaos, not a gain: 1,000-meter npl feeder at 02:30, seed 1
    #: 86.8 -> 94.7 %, seed 2 97.8 -> 88.9 % (4.47 -> 7.61 frames per node); 10: 74.7 %
    weak_quality: int = 9
    #: ... or a hop whose worst period of the day (``LinkEstimate.p_worst``, both directions)
    #: carries under this share of the exchanges (0: off): learned by day, a hop that fails
    #: at noon while it carried every read at night (pumps, workshops) sends the node on
    #: looking for a route that works at every hour
    weak_p: float = 0.0
    #: passes of the background probing made again over the nodes whose primary is weak
    #: after the last pass (``_weak_primary``): the day's failures are learned on other
    #: nodes' probes after a node's own turn, when it had no reason to look further
    weak_passes: int = 0
    #: a node whose alternates are found but whose primary is weak skips (uncounted) the
    #: candidate relays whose own route already costs as much as its primary: they cannot
    #: give a stronger one (2,040-meter hplc feeder, seed 1: 7.97 -> 7.79 frames per node,
    #: probing done at 24,608 sim-s instead of 29,535; route quality unchanged within noise)
    skip_dear_candidates: bool = True
    #: candidate relays are tried in the order of how alike their common neighbours heard
    #: them and the node (``Topology.unlikeness``); off: nearest level first, then by the
    #: relay's own route (address order in effect: every HPLC route reads ~1.0). 2,040-meter
    #: hplc feeder, seed 1: the truly good relay was among the first 5 tried at 1,291 of
    #: 1,499 nodes, 456 by level; route quality at 02:30 85.2 -> 98.5 %, 7.79 -> 5.86
    #: frames per node (fewer probes fail)
    rank_alike: bool = True
    #: ... after the relays whose own route costs less than the node's primary (less one
    #: hop): only they can give it a stronger one (the relays heard most alike are often its
    #: siblings, behind the same weak hop). Same district: 98.5 -> 99.2 %. Both on, over
    #: seeds 1/2/3 of that district: 85.2/97.6/94.6 -> 99.2/92.4/91.9 % (chaotic; mean
    #: +2 points), frames per node 7.79/7.41/7.37 -> 5.87/7.00/6.56. Narrowband turns both
    #: off (``for_comm_mode``): 1,000-meter npl feeder, seed 1, at 02:30 90.7 % off, 74.8 %
    #: on (its qualities say little of the hours when the pumps run); 200 feeder 1.7x frames
    rank_stronger_first: bool = True
    #: plan on each link's worst period of the day (``RouteConfig.worst_period``). HPLC
    #: keeps the all-day estimates: with them on, 1,000-meter hplc street day-2 first
    #: attempts 99.9 -> 99.6 %, round 261 -> 276 s (bench/read.py)
    worst_period: bool = False
    #: a link down with no new evidence for this long may be tried again, its failures still
    #: counted (0: only a success or a fresh quality report brings it back;
    #: ``Topology.expire_down``, at each upkeep). Links marked down by a day's noise stayed
    #: out of the night's routes: 1,000-meter hplc feeder seeds 1/2/3 (bench/mesh_day.py),
    #: the next night's route quality 79.5/86.6/95.5 -> 86.7/87.7/95.3 % and 311/462/316 ->
    #: 0 links down; day reads 75.5/89.6/90.9 -> 75.3/85.8/93.1 %; the daily rounds of
    #: bench/read.py (1,000 and 2,040 hplc) unchanged
    down_hold_s: float = 3600.0
    uncertain_std: float = 0.15
    uncertain_probes: int = 2
    probe_timeout: float | None = None
    busy_retry_s: float = 1.0
    repair_probes: int = 8
    #: a relay suspected after a broken route is read (to find out whether it died) at most
    #: once per this many seconds
    relay_check_s: float = 600.0
    #: probes (the first along the broken route, then along the relay's own routes) that
    #: must all go unanswered before a relay is declared dead (see ``Mesh._check_relay``).
    #: Narrowband: 8 (1,000-meter npl feeder, 5 % of the relays dead: 147 of 254 check
    #: probes of live relays failed, and 3 probes declared 44 live relays dead of 47)
    relay_check_probes: int = 3
    #: the relays of a broken primary are checked (in the background) as soon as it fails,
    #: while the alternates are tried, not once they have all failed too
    early_relay_check: bool = True
    #: ... and a long route's suspects are narrowed down by bisection first (``_bisect_relays``)
    bisect_relay_checks: bool = True
    #: a read whose primary crosses a relay under check goes first by the best route round
    #: it (the primary stays its fallback): the check's probes take a timeout each, and
    #: meanwhile every read through a dead relay lost one too
    avoid_checked_relays: bool = True
    #: relay checks' probes go beside each other (never under a search, see
    #: ``_beside_checks``); False: one at a time under the search lock
    checks_beside: bool = True
    #: a read waiting for a group repair goes out once its node is heard again and back in
    #: the module's archive, not after the repair's searches for the others. Off: its read
    #: then meets the next searches' answer rounds (bench/mesh.py, 1,000-meter hplc street
    #: seeds 1/2/3: repair 74/45/31 sim-s off, 116/49/37 on with 2 reads lost; feeder seed 2
    #: 163 -> 194 s)
    early_repair_reads: bool = False
    #: reads to or through the proxy of the search under way wait for the search to end
    reads_wait_for_proxy: bool = True
    #: a repair search ends once the nodes it is for have answered, and is not judged
    #: congested (see ``_search_from``)
    repair_search_wanted: bool = True
    local_search_minutes: int = 2
    #: repair searches from the live nodes around a silent node (nearest first)
    repair_searches: int = 3
    #: searches of one repair for all the nodes a dead relay left with no route: at most
    #: this many, and ``group_searches_per_orphan`` per orphan (at least ``repair_searches``;
    #: a one-meter group made 8 searches, then the per-meter repair searched again)
    group_searches: int = 8
    group_searches_per_orphan: int = 2
    #: ... then from each orphan's own neighbours (``_search_proxies``), ``repair_searches``
    #: each, still for all of them, before each is repaired alone
    group_own_proxies: bool = True
    #: a relay whose repair search heard nodes this recently is alive: a read through it
    #: that fails does not get it declared dead (1,000-meter npl: a node that had just heard
    #: 4 orphans was declared dead, and its orphans with it)
    heard_alive_s: float = 300.0
    #: a read whose routes all failed looks for this many more dead relays on the routes
    #: it moves to (one per route that breaks)
    recover_checks: int = 2
    #: a read of a node with no route waits this long for the repair under way
    repair_wait_s: float = 120.0
    #: a node whose repair found nothing gets no new repair from its failed reads for this
    #: long, doubled after each further fruitless repair up to ``repair_backoff_max_s``
    #: (2,040-meter hplc trial: a meter gone from the district got a repair on every make-up
    #: pass, 292 repair searches in two days, each holding the medium during the round)
    repair_backoff_s: float = 60.0
    repair_backoff_max_s: float = 3600.0
    #: a repair search's proxy not seen working for this long is probed first; silent, it is
    #: passed over (not counted as a search): the command of a search from it would not
    #: reach it, and the search would end at once as if nothing were heard (2,040-meter npl
    #: street: 5 of the 8 searches for a dead relay's 6 orphans went so, and 4 stayed unread).
    #: None: never probed (a silent narrowband probe costs its ~6-15 s timeout)
    proxy_fresh_s: float | None = 60.0
    save_period: float = 3600.0
    #: medium recorded for search reports (the module does not say); "rf" for RF modules
    search_medium: str = "plc"
    #: weight of the signal-quality margin in hop costs (``RouteConfig.quality_weight``;
    #: None: the topology's own). Narrowband 2.5: 1,000-meter npl feeder, seed 1, route
    #: quality after probing at the first read's hour 78 % at 5.0, 86 % at 2.5 (hplc keeps
    #: 5.0: 2,040 feeder 89 % later vs 80 % at 2.5)
    route_quality_weight: float | None = None

    @classmethod
    def for_comm_mode(cls, comm_mode: int | None) -> EngineTuning:
        """The defaults for a module's 1376.2 communication mode (1, 2: narrowband carrier;
        3: broadband HPLC; 10: micro-power RF).

        Broadband and RF: the CCO's search is made again once at most (its third search cost
        0.7 s per new node where proxies take 0.25 s) and the completeness sweep ends after 120
        empty searches. 1,000-meter hplc street, seed 1: formation 351 -> 276 sim-s (sweep 60),
        1000/1000, route quality 97.5 %; 2,040: 2040/2040. With the routes the signal margin
        now chooses, 60 left 2 of 2,040 unfound; 120: 2040/2040 in 1,270 sim-s, 1,000 in 286.
        Narrowband keeps both: its root search is cheap per node and its sweep needed 250
        empty searches to find the last nodes (1,000 npl 1000/1000). It skips the probing of
        uncertain route choices: at ~8 s a probe that runs for many hours while the noise
        moves with the time of day, and it moved primaries off good routes (route quality
        at the first read's hour, seed 1: 1,000 feeder 72.8 -> 86.1 %, 200 feeder 94.5 ->
        98.5 %, 1,000 street 98.8 -> 99.4 % without it). Its lossy links need more silent
        probes before a relay is declared dead (``relay_check_probes``)."""
        if comm_mode in (3, 10):
            return cls(root_repeats=1, sweep_empty=120)
        return cls(uncertain_probes=0, relay_check_probes=8, route_quality_weight=2.5,
                   survey_ring=32,
                   weak_p=0.8, weak_passes=1, worst_period=True, rank_alike=False,
                   rank_stronger_first=False)


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


ArchiveItem = str | tuple[str, Any] | Any


class Mesh:
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
            if host is None or not self.tuning.early_repair_reads:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(task), self.tuning.repair_wait_s)
                return
            topo = self.topology
            while not task.done() and loop.time() < end:
                if host in self._registered and host in topo and topo.primary(host) is not None:
                    return
                await asyncio.wait({task}, timeout=min(0.5, max(0.0, end - loop.time())))
        finally:
            self._reads_waiting_repair -= 1

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


def _database(db: Any) -> sqlite_utils.Database:
    if isinstance(db, sqlite_utils.Database):
        return db
    inner = getattr(db, "db", None)
    if isinstance(inner, sqlite_utils.Database):
        return inner
    raise TypeError(f"mesh: cannot persist to {type(db).__name__}")


def _proto_name(proto: Any) -> str:
    return "dlt645-1997" if proto in (1, "1", 1997, "1997", "dlt645-1997") else "dlt645-2007"


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
