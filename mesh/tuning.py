"""``EngineTuning``: the mesh engine's knobs below the user-facing ``MeshConfig``, each with
the measurement that chose its default (``mesh.engine`` exports it too)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineTuning"]


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
