"""Route computation: primary relay paths and diverse alternates, updated incrementally.

The concentrator is the routing brain (the CCO only follows the relay list it is given), so
routes are *source routes*: for every node a relay list from the concentrator (root) to it.

Cost of a route = sum over its hops of ``hop_time[medium] + fail_cost * -ln(p_fwd * p_back)``.
The first term is the airtime and processing of a hop that works; the second approximates the
expected cost of retries (a route's delivery probability is the product of its hops' two-way
probabilities, so ``-ln`` makes it additive). ``fail_cost`` is deliberately large (15 s: a failed
attempt costs its per-level timeouts, ~0.5 s per relay level + 0.8 s meter time, *and* the retry
it forces and the risk of missing the reading window), so that one extra relay is worth only
about 1 % of delivery probability: reliability dominates, hop count breaks near-ties.
Each hop uses whichever medium (``plc``/``rf``) is cheaper on it, so ``dual`` districts mix.
Hop costs are symmetric, so the planner works on an undirected weighted graph.

* **Primary routes** come from a shortest-path tree (SPT) from the root in which only the root
  and *relay-capable* nodes (approved, not quarantined) are expanded. The tree is canonical
  (ties broken by the lower address) and maintained incrementally: a cheaper hop propagates
  only the improvements it causes; a dearer tree hop raises the subtree below it by the
  difference and re-settles only the nodes a hop from outside now reaches more cheaply.
  A node whose SPT path is deeper than ``max_relays`` gets an exact hop-bounded search instead
  (kept until its branch or a hop of its path changes).
* **Alternates** are found on demand with an A* search from the node back to the root whose
  heuristic is the SPT distance (exact for the unpenalised graph, so the search stays narrow);
  relays and hops already used by earlier routes of the node carry ``share_penalty``, so
  alternates share as few relays as possible unless avoiding them costs more than the penalty.
* **Relief**: ``rebalance()`` moves routes off relays that carry more than ``max_load`` routes
  when another path costs at most ``relief_margin`` more; the moved routes are *pinned* and
  kept while they stay within that margin of the best route.

Pure logic, no I/O: ``mesh.topology.Topology`` feeds it hop metrics and reads routes back.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["RouteConfig", "Route", "HopMetric", "RoutePlanner", "hop_cost"]

log = logging.getLogger(__name__)

MAX_RELAY_LEVEL = 15  # 4-bit relay level in the 1376.2 R field
_NO_HOPS: dict[str, HopMetric] = {}  # the hops of a node the planner does not know (read only)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """Route planner tuning. Times are seconds of expected reading time."""

    #: maximum number of relays on a route (1376.2 allows 0..15)
    max_relays: int = 15
    #: airtime + processing of one successful hop, per medium
    hop_time: dict[str, float] = field(default_factory=lambda: {"plc": 0.15, "rf": 0.10})
    #: cost of a failed attempt, weighting -ln(delivery probability)
    fail_cost: float = 15.0
    #: two-way hop probability below which a hop is not used at all
    p_floor: float = 1e-3
    #: how many alternates ``routes()`` tries to return besides the primary
    alternates: int = 2
    #: extra cost an alternate pays for each relay or hop it shares with earlier routes
    share_penalty: float = 5.0
    #: routes through one relay above which ``rebalance()`` relieves it
    max_load: int = 128
    #: extra cost a relieved route may have over the best route (0.3 s ~ 2 % probability)
    relief_margin: float = 0.3
    #: weight (seconds) of the signal-quality margin of a hop: ``-ln`` of the quality prior of
    #: both directions. With the module's MAC retries a marginal hop (quality ~7) and a strong
    #: one (15) both look ~0.99 reliable in the read outcomes, but only the strong one keeps
    #: working when the evening noise rises; this term picks it when both are known.
    #: Read outcomes cannot make that choice: with 2 MAC retries a hop losing 1 frame in 4
    #: still carries ~98 % of reads, so every usable hop's estimate converges on ~0.99. At 1.0
    #: the term was too weak to move a primary off a marginal hop that reads kept confirming
    #: (1,000-meter hplc feeder, seed 1: 88 % of meters within 2 % of the truth's best route
    #: after probing, judged at the first read's hour; 5.0 with ``uncertainty_k`` 0.5: 95 %).
    #: Narrowband takes 2.5 (``EngineTuning.route_quality_weight``): its hops cost far more
    #: airtime than ``hop_time`` says, and at 5.0 its routes grew longer and worse
    quality_weight: float = 5.0
    #: plan on each link's worst period of the day (``LinkEstimate.p_plan``) and share the
    #: blame of a failed exchange by the estimates of its hour (``LinkEstimate.p_at``);
    #: off: the all-day estimates. Narrowband turns it on (``EngineTuning.worst_period``):
    #: 1,000-meter npl feeder, seed 1, pumps on the lanes from 6:00 to 19:00: 299 of the
    #: primaries bad at noon looked good to the all-day estimates, 26 with it
    worst_period: bool = False
    #: pessimism of the cost: each direction counts at ``p - uncertainty_k * std``, so a hop
    #: known from one weak report does not carry a primary when a better-known path exists.
    #: 1.0 made a hop probed a few times (std ~0.06) cost ~2 s more than one read 300 times:
    #: primaries stayed on the well-trodden path where a probe had found a stronger hop (same
    #: district: 73 of the 92 meters judged bad had a truly better route among known hops)
    uncertainty_k: float = 0.5
    #: share of nodes allowed deeper than max_relays in the tree before a per-hop surcharge
    #: is added (those nodes get an exact but slower hop-bounded search on every change)
    deep_share: float = 0.01
    #: a hop whose cost moved less than this (seconds; 0.05 ~ 0.3 % delivery probability)
    #: since the planner last saw it is not re-planned: every exchange nudges its links'
    #: estimates, and re-settling the routes below a hop per nudge was the engine's main CPU
    #: cost. Failures, links going down and new hops always go through at once
    replan_threshold: float = 0.05
    #: added to a hop only ever heard in a survey's search (``Topology.hear``), never an
    #: exchange of ours: it stands by for the day a route breaks, but does not move a working
    #: primary onto itself (1,000-meter hplc street: with it free, the survey's strong
    #: detours took half the direct meters onto 2-relay routes, and the daily round went
    #: from 243 to 301 sim-s)
    standby_cost: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.max_relays <= MAX_RELAY_LEVEL:
            raise ValueError(f"max_relays must be 0..{MAX_RELAY_LEVEL}, got {self.max_relays}")

    @property
    def max_hops(self) -> int:
        return self.max_relays + 1


class HopMetric(NamedTuple):
    """What the planner knows about an undirected hop, seen from one end (a -> b)."""

    cost: float
    medium: str
    p_fwd: float  # a -> b
    p_back: float  # b -> a

    def mirrored(self) -> HopMetric:
        return HopMetric(self.cost, self.medium, self.p_back, self.p_fwd)


def hop_cost(p_fwd: float, p_back: float, medium: str, cfg: RouteConfig,
             q_prior: float | None = None) -> float | None:
    """Additive cost of a hop, or None when it is too unreliable to use.

    ``q_prior`` is the product of both directions' quality priors (``links.quality_prior``)
    when the module reported qualities: it adds the ``quality_weight`` margin term.
    """
    p2 = p_fwd * p_back
    if p2 < cfg.p_floor:
        return None
    cost = cfg.hop_time.get(medium, 0.15) + cfg.fail_cost * -math.log(p2)
    if q_prior is not None and cfg.quality_weight:
        cost += cfg.quality_weight * -math.log(max(q_prior, 1e-3))
    return cost


@dataclass(frozen=True, slots=True)
class Route:
    """A relay path from the concentrator (``root``) to ``target``.

    ``media[i]`` is the medium of hop i (root->first relay is hop 0); ``p`` is the estimated
    probability that a request and its reply both get through; ``cost`` the additive expected
    cost in seconds; ``kind`` is ``primary``, ``relief`` (a pinned primary moved off an
    overloaded relay), ``alternate`` or ``explicit`` (a path the caller asked about).
    """

    root: str
    target: str
    relays: tuple[str, ...]
    media: tuple[str, ...]
    p: float
    cost: float
    kind: str = "primary"

    @property
    def path(self) -> tuple[str, ...]:
        return (self.root, *self.relays, self.target)

    @property
    def level(self) -> int:
        """Hops from the concentrator (1 = heard directly)."""
        return len(self.relays) + 1

    def hops(self) -> list[tuple[str, str, str]]:
        """(sender, receiver, medium) for each downlink hop."""
        path = self.path
        return [(path[i], path[i + 1], self.media[i]) for i in range(len(self.media))]


class RoutePlanner:
    """Incremental shortest-path tree plus on-demand alternates over symmetric hop costs."""

    def __init__(self, root: str, cfg: RouteConfig | None = None) -> None:
        self.root = root
        self.cfg = cfg or RouteConfig()
        self.adj: dict[str, dict[str, HopMetric]] = {root: {}}
        self.relay_ok: set[str] = set()
        self.dist: dict[str, float] = {root: 0.0}
        self.parent: dict[str, str | None] = {root: None}
        self.children: dict[str, set[str]] = {}
        #: relieved routes: target -> full path (root ... target)
        self.pins: dict[str, tuple[str, ...]] = {}
        #: last primary (relays, media) handed out, to report changes
        self.published: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        #: nodes whose SPT path is deeper than max_relays (they use a bounded search)
        self.deep: set[str] = set()
        #: their bounded-search paths, kept until a change can move them (see ``_refresh``)
        self._deep_path: dict[str, tuple[str, ...] | None] = {}
        #: target -> (version, struct_version, primary path, alternates) of the last search
        self._alt_cache: dict[str, tuple[int, int, tuple[str, ...], list[Route]]] = {}
        self.version = 0
        #: node -> (version last checked, its primary Route, the hop metrics it was priced
        #: with); see ``primary``
        self._primary_cache: dict[str, tuple[int, Route | None, tuple[HopMetric, ...]]] = {}
        #: path searches made (alternates, deep nodes, relief): the planner's costly step
        self.searches = 0
        #: per-hop surcharge (a Lagrange multiplier for the relay limit), tuned by
        #: ``full_recompute`` so that SPT paths fit ``max_relays``; kept fixed in between
        self.hop_surcharge = 0.0
        #: fewest hops from the root to each node through relays (None: to be recomputed)
        self._hmin: dict[str, int] | None = None
        #: bumped when a hop appears or disappears or a relay changes status: the events that
        #: can open a new alternate (cost changes of known hops only re-price cached ones)
        self.struct_version = 0
        #: ``version`` at the last ``rebalance`` that moved nothing: with no edit since, it
        #: would search the same relief paths in vain again (the hourly upkeep between rounds)
        self._relieved_at = -1

    def _structural(self) -> None:
        self._hmin = None
        self.struct_version += 1

    # --- graph edits (each returns the nodes whose primary route changed) -------------------

    def add_node(self, n: str, relay_ok: bool) -> None:
        self.adj.setdefault(n, {})
        if relay_ok:
            self.relay_ok.add(n)

    def _expandable(self, n: str) -> bool:
        return n == self.root or n in self.relay_ok

    def set_edge(self, u: str, v: str, metric: HopMetric | None) -> list[str]:
        """Set (or with None remove) the hop u-v; ``metric`` is seen from u."""
        if u == v:
            return []
        self.version += 1
        old = self.adj.get(u, {}).get(v)
        self.adj.setdefault(u, {})
        self.adj.setdefault(v, {})
        if metric is None:
            if old is None:
                return []
            del self.adj[u][v]
            del self.adj[v][u]
            self._structural()
        else:
            if old is None:
                self._structural()
            self.adj[u][v] = metric
            self.adj[v][u] = metric.mirrored()
        touched: set[str] = set()
        heap: list[tuple[float, str]] = []
        tree_child = None
        if self.parent.get(v) == u:
            tree_child = v
        elif self.parent.get(u) == v:
            tree_child = u
        if tree_child is not None:
            if metric is None or old is None:
                self._invalidate(self._subtree(tree_child), heap, touched)
            else:
                if metric.cost > old.cost:
                    # Dearer tree hop: the subtree keeps its paths at a higher price unless a
                    # hop from outside now beats it (cheaper than forgetting and re-settling
                    # the whole subtree, which was most of a link change's time).
                    self._raise_subtree(tree_child, metric.cost - old.cost, heap, touched)
                if metric.medium != old.medium:
                    touched.add(tree_child)
        if metric is not None:
            for a, b in ((u, v), (v, u)):
                if a in self.dist and self._expandable(a):
                    self._relax(a, b, self.adj[a][b].cost, heap, touched)
        self._run(heap, touched)
        dearer = metric is None or (old is not None and metric.cost >= old.cost)
        return self._refresh(touched, hop=(u, v), cheaper=not dearer)

    def put_edge(self, u: str, v: str, metric: HopMetric | None) -> None:
        """Set a hop without updating routes (bulk loading; call ``full_recompute`` after)."""
        self._structural()
        self._primary_cache.clear()
        self.adj.setdefault(u, {})
        self.adj.setdefault(v, {})
        if metric is None:
            self.adj[u].pop(v, None)
            self.adj[v].pop(u, None)
        else:
            self.adj[u][v] = metric
            self.adj[v][u] = metric.mirrored()

    def remove_node(self, n: str) -> list[str]:
        if n not in self.adj or n == self.root:
            return []
        self.version += 1
        self._structural()
        heap: list[tuple[float, str]] = []
        touched: set[str] = set()
        if n in self.dist:
            self._invalidate(self._subtree(n), heap, touched, exclude=n)
        for w in list(self.adj[n]):
            del self.adj[w][n]
        del self.adj[n]
        self.relay_ok.discard(n)
        self.dist.pop(n, None)
        p = self.parent.pop(n, None)
        if p is not None:
            self.children.get(p, set()).discard(n)
        self.children.pop(n, None)
        self.pins.pop(n, None)
        self.published.pop(n, None)
        self._primary_cache.pop(n, None)
        self.deep.discard(n)
        self._deep_path.pop(n, None)
        self._alt_cache.pop(n, None)
        self._run(heap, touched)
        touched.discard(n)
        return self._refresh(touched)

    def set_relay_ok(self, n: str, ok: bool) -> list[str]:
        """Allow or forbid ``n`` as a relay (approved vs discovered/quarantined)."""
        if ok == (n in self.relay_ok) or n not in self.adj:
            if ok:
                self.relay_ok.add(n)
            return []
        self.version += 1
        self._structural()
        heap: list[tuple[float, str]] = []
        touched: set[str] = set()
        if ok:
            self.relay_ok.add(n)
            if n in self.dist:
                for b, h in self.adj[n].items():
                    self._relax(n, b, h.cost, heap, touched)
        else:
            self.relay_ok.discard(n)
            if n in self.dist:
                below = self._subtree(n)
                below.discard(n)
                self._invalidate(below, heap, touched)
        self._run(heap, touched)
        return self._refresh(touched)

    def full_recompute(self, retune: bool = True) -> list[str]:
        """Rebuild the tree from scratch; returns nodes whose primary route changed.

        With ``retune`` the per-hop surcharge is re-chosen: 0 when the cheapest paths fit the
        relay limit, else the smallest surcharge (binary search) that leaves at most
        ``deep_share`` of the nodes deeper than ``max_relays`` (those get an exact hop-bounded
        search). This
        keeps reliability first and only trades it for depth where the limit binds.
        """
        self.version += 1
        self._deep_path.clear()
        if retune:
            self.hop_surcharge = 0.0
            self._dijkstra_all()
            tol = max(1, int(len(self.adj) * self.cfg.deep_share))
            if self._deep_count() > tol:
                lo, hi = 0.0, self.cfg.fail_cost
                for _ in range(10):
                    mid = (lo + hi) / 2
                    self.hop_surcharge = mid
                    self._dijkstra_all()
                    if self._deep_count() > tol:
                        lo = mid
                    else:
                        hi = mid
                self.hop_surcharge = hi
                log.info("mesh: per-hop surcharge %.3f keeps routes within %d relays",
                         hi, self.cfg.max_relays)
        self._dijkstra_all()
        return self._refresh(set(self.adj) | set(self.published), full=True)

    def _dijkstra_all(self) -> None:
        self.dist = {self.root: 0.0}
        self.parent = {self.root: None}
        self.children = {}
        self._run([(0.0, self.root)], set())

    def _deep_count(self) -> int:
        """Nodes deeper than the limit in the SPT that *could* be reached within it."""
        hmin = self.hop_floor()
        limit = self.cfg.max_hops
        depth = {self.root: 0}
        stack = [self.root]
        deep = 0
        while stack:
            u = stack.pop()
            for c in self.children.get(u, ()):
                depth[c] = depth[u] + 1
                deep += depth[c] > limit and hmin.get(c, 99) <= limit
                stack.append(c)
        return deep

    # --- the dynamic SPT ---------------------------------------------------------------------

    def _subtree(self, n: str) -> set[str]:
        out = {n}
        stack = [n]
        while stack:
            for c in self.children.get(stack.pop(), ()):
                if c not in out:
                    out.add(c)
                    stack.append(c)
        return out

    def _set_parent(self, v: str, u: str | None) -> None:
        old = self.parent.get(v)
        if old is not None:
            self.children.get(old, set()).discard(v)
        self.parent[v] = u
        if u is not None:
            self.children.setdefault(u, set()).add(v)

    def _relax(self, u: str, v: str, c: float, heap: list, touched: set[str]) -> None:
        if v == self.root:
            return
        nd = self.dist[u] + c + self.hop_surcharge
        cur = self.dist.get(v)
        if cur is None or nd < cur or (nd == cur and u < (self.parent.get(v) or "")):
            if self.parent.get(v) != u or cur != nd:
                touched.add(v)
            self.dist[v] = nd
            self._set_parent(v, u)
            heapq.heappush(heap, (nd, v))

    def _raise_subtree(self, top: str, delta: float, heap: list, touched: set[str]) -> None:
        """Every node below ``top`` (included) costs ``delta`` more on its tree path; seed
        the nodes a hop from outside the subtree now reaches more cheaply."""
        below = self._subtree(top)
        dist = self.dist
        for s in below:
            dist[s] += delta
        for s in below:
            for w, h in self.adj[s].items():
                if w not in below and w in dist and self._expandable(w):
                    self._relax(w, s, h.cost, heap, touched)

    def _invalidate(self, nodes: set[str], heap: list, touched: set[str],
                    exclude: str | None = None) -> None:
        """Forget the distances of ``nodes`` and seed them from the rest of the tree."""
        for s in nodes:
            self.dist.pop(s, None)
            self._set_parent(s, None)
            self.parent.pop(s, None)
        touched |= nodes
        for s in nodes:
            if s == exclude:
                continue
            for w, h in self.adj.get(s, {}).items():
                if w not in nodes and w in self.dist and self._expandable(w):
                    self._relax(w, s, h.cost, heap, touched)

    def _run(self, heap: list, touched: set[str]) -> None:
        # ``_relax`` and ``_set_parent`` written out in the loop (the same steps in the same
        # order): the calls were most of the time of re-settling a subtree after a link update.
        done: set[str] = set()
        dist, parent, children, adj = self.dist, self.parent, self.children, self.adj
        root, relay_ok, surcharge = self.root, self.relay_ok, self.hop_surcharge
        push, pop = heapq.heappush, heapq.heappop
        while heap:
            d, u = pop(heap)
            if dist.get(u) != d or u in done:
                continue
            done.add(u)
            if u != root and u not in relay_ok:
                continue  # not expandable: a leaf of the tree
            for v, h in adj[u].items():
                if v == root:
                    continue
                nd = dist[u] + h.cost + surcharge
                cur = dist.get(v)
                old = parent.get(v)
                if cur is None or nd < cur or (nd == cur and u < (old or "")):
                    if old != u or cur != nd:
                        touched.add(v)
                    dist[v] = nd
                    if old is not None:
                        children.get(old, set()).discard(v)
                    parent[v] = u
                    children.setdefault(u, set()).add(v)
                    push(heap, (nd, v))

    def hop_floor(self) -> dict[str, int]:
        """Fewest hops from the root to every node through relays (BFS, cached until an
        edge appears/disappears or a relay changes status)."""
        if self._hmin is None:
            hmin = {self.root: 0}
            frontier = [self.root]
            while frontier:
                nxt = []
                for u in frontier:
                    if not self._expandable(u):
                        continue
                    for v in self.adj[u]:
                        if v not in hmin:
                            hmin[v] = hmin[u] + 1
                            nxt.append(v)
                frontier = nxt
            self._hmin = hmin
        return self._hmin

    def spt_path(self, n: str) -> tuple[str, ...] | None:
        if n not in self.dist:
            return None
        parent, root = self.parent, self.root
        path = [n]
        while n != root:
            n = parent[n]  # type: ignore[assignment]
            path.append(n)
        path.reverse()
        return tuple(path)

    # --- primaries, their changes, pins -------------------------------------------------------

    def _best_path(self, n: str) -> tuple[str, ...] | None:
        """Best path within the relay limit, ignoring pins."""
        path = self.spt_path(n)
        if path is None or len(path) - 1 <= self.cfg.max_hops:
            self.deep.discard(n)
            self._deep_path.pop(n, None)
            return path
        self.deep.add(n)
        if n not in self._deep_path:
            self._deep_path[n] = self.search(n, max_hops=self.cfg.max_hops)
        return self._deep_path[n]

    def primary_path(self, n: str) -> tuple[str, ...] | None:
        pin = self.pins.get(n)
        if pin is not None:
            return pin
        return self._best_path(n)

    def _pin_valid(self, n: str, pin: tuple[str, ...]) -> bool:
        if len(pin) - 1 > self.cfg.max_hops:
            return False
        if any(r not in self.relay_ok for r in pin[1:-1]):
            return False
        cost = self.path_cost(pin)
        best = self._best_path(n)
        if cost is None or best is None:
            return False
        return cost <= (self.path_cost(best) or 0.0) + self.cfg.relief_margin

    def _refresh(self, touched: Iterable[str], full: bool = False,
                 hop: tuple[str, str] | None = None, cheaper: bool = False) -> list[str]:
        """Recompute the primaries that may have changed and report those that did.

        ``hop``: the one hop whose cost changed (a link update). Deep nodes (bounded search)
        are then searched again only when their tree branch was touched or the hop lies on
        their path; re-searching all of them on every link update was most of a link
        change's time at 2,040 nodes. A ``cheaper`` hop (or a new one) off a deep node's path
        may still give it a better one: it is searched again unless no path through the hop
        can beat its path (``_may_improve``). Any other change re-searches every deep node.
        """
        affected: set[str] = set()
        touched = set(touched)
        if full:
            affected = set(touched)
        else:
            # A touched node whose tree parent and last hop's medium are still those of its
            # published route kept its path (only its distance moved): the nodes below it keep
            # theirs too unless they were touched themselves. Re-deriving every route below a
            # hop that got a little cheaper was most of this method's time.
            for n in touched:
                if n in affected:
                    continue
                if n not in self.dist:
                    affected.add(n)
                elif self._tree_path_moved(n):
                    affected |= self._subtree(n)
        if hop is None:
            stale = set(self.deep)
        else:
            pair = {hop, hop[::-1]}
            stale = set()
            for d in self.deep:
                dp = self._deep_path.get(d)
                if dp is None or any(h in pair for h in _hops(dp)) \
                        or self._below_touched(d, touched) \
                        or (cheaper and self._may_improve(d, dp, hop)):
                    stale.add(d)
        for d in stale:
            self._deep_path.pop(d, None)
        affected |= stale
        for n, pin in list(self.pins.items()):
            if not self._pin_valid(n, pin):
                log.info("mesh: relief route of %s dropped (no longer within margin)", n)
                del self.pins[n]
                self._primary_cache.pop(n, None)  # rebalance() may come here unversioned
            affected.add(n)
        changed = []
        for n in affected:
            if n == self.root:
                continue
            path = self.primary_path(n)
            new = None
            if path is not None:
                new = (path[1:-1], self.path_media(path))
            old = self.published.get(n)
            if new != old:
                if new is None:
                    self.published.pop(n, None)
                else:
                    self.published[n] = new
                changed.append(n)
        return sorted(changed)

    def _tree_path_moved(self, n: str) -> bool:
        """Whether ``n``'s tree path may differ from its published route at its last hop
        (always for a pinned or deep node, whose route is not its tree path)."""
        if n in self.pins or n in self.deep:
            return True
        pub = self.published.get(n)
        if pub is None:
            return True
        relays, media = pub
        parent = self.parent.get(n)
        if parent != (relays[-1] if relays else self.root):
            return True
        hop = self.adj.get(parent, {}).get(n)
        return hop is None or hop.medium != media[-1]

    def _below_touched(self, d: str, touched: set[str]) -> bool:
        """Whether ``d`` or a node above it in the tree was touched."""
        if d in touched:
            return True
        if d not in self.dist:
            return False
        p = self.parent.get(d)
        while p is not None:
            if p in touched:
                return True
            p = self.parent.get(p)
        return False

    def _may_improve(self, d: str, path: tuple[str, ...], hop: tuple[str, str]) -> bool:
        """Whether a path to deep node ``d`` through ``hop`` could beat ``path`` (in the
        bounded search's metric: costs plus the per-hop surcharge). Through u->v it costs at
        least dist[u] + hop + dist[d] - dist[v], the tree distances being lower bounds of
        its two parts (dist[d] <= dist[v] + the part from v to d)."""
        cost = self.path_cost(path)
        if cost is None:
            return True
        mine = cost + self.hop_surcharge * (len(path) - 1)
        for a, b in (hop, hop[::-1]):
            h = self.adj.get(a, {}).get(b)
            if h is None:
                continue
            if a not in self.dist or b not in self.dist or d not in self.dist:
                return True
            bound = self.dist[a] + h.cost + self.hop_surcharge + self.dist[d] - self.dist[b]
            if bound < mine - 1e-9:
                return True
        return False

    # --- route objects -------------------------------------------------------------------------

    def path_media(self, path: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(self.adj[path[i]][path[i + 1]].medium for i in range(len(path) - 1))

    def path_cost(self, path: tuple[str, ...]) -> float | None:
        cost = 0.0
        for i in range(len(path) - 1):
            h = self.adj.get(path[i], {}).get(path[i + 1])
            if h is None:
                return None
            cost += h.cost
        return cost

    def make_route(self, path: tuple[str, ...], kind: str) -> Route | None:
        """Route object for an explicit path; None when a hop is unknown or unusable."""
        p = 1.0
        cost = 0.0
        media = []
        for i in range(len(path) - 1):
            h = self.adj.get(path[i], {}).get(path[i + 1])
            if h is None:
                return None
            p *= h.p_fwd * h.p_back
            cost += h.cost
            media.append(h.medium)
        return Route(self.root, path[-1], tuple(path[1:-1]), tuple(media), p, cost, kind)

    def primary(self, n: str) -> Route | None:
        # The same node's primary is asked for many times (the reader's pacing, the exchange, a
        # repair's candidate relays and their routes): a Route is reused while the planner's
        # version has not moved, or its path and kind are the same and every hop still has the
        # metric it was priced with (a changed hop always gets a new ``HopMetric``).
        hit = self._primary_cache.get(n)
        if hit is not None:
            if hit[0] == self.version:
                return hit[1]
            route = hit[1]
            if route is not None and route.kind == "primary" and n not in self.pins \
                    and n not in self.deep and self._tree_holds(n, route.relays, hit[2]):
                # What the path search below would conclude, without building the path: an
                # unpinned node that is not deep has its tree path for primary (repair ranking
                # asks for the primary of every node around a node: most of its time)
                self._primary_cache[n] = (self.version, route, hit[2])
                return route
        path = self.primary_path(n)
        if path is None:
            self._primary_cache[n] = (self.version, None, ())
            return None
        kind = "relief" if n in self.pins else "primary"
        adj = self.adj
        if hit is not None and hit[1] is not None and hit[1].kind == kind \
                and hit[1].target == n and hit[1].relays == path[1:-1]:
            metrics = hit[2]
            for i, metric in enumerate(metrics):
                if adj.get(path[i], _NO_HOPS).get(path[i + 1]) is not metric:
                    break
            else:
                self._primary_cache[n] = (self.version, hit[1], metrics)
                return hit[1]
        route = self.make_route(path, kind)
        metrics = () if route is None else \
            tuple(adj[path[i]][path[i + 1]] for i in range(len(path) - 1))
        self._primary_cache[n] = (self.version, route, metrics)
        return route

    def _tree_holds(self, n: str, relays: tuple[str, ...],
                    metrics: tuple[HopMetric, ...]) -> bool:
        """Whether ``n``'s tree path is root, ``relays``, n and each of its hops still has the
        metric object in ``metrics`` (a changed hop always gets a new ``HopMetric``)."""
        if n not in self.dist or len(metrics) != len(relays) + 1:
            return False
        parent, adj = self.parent, self.adj
        cur = n
        for i in range(len(relays), -1, -1):
            up = parent.get(cur)
            if up != (relays[i - 1] if i else self.root):
                return False
            if adj[up].get(cur) is not metrics[i]:
                return False
            cur = up
        return True

    def routes(self, n: str) -> list[Route]:
        """Primary first, then up to ``cfg.alternates`` alternates sharing few relays.

        Alternates are searched again only when the primary changed, a hop appeared or
        vanished, a relay changed status, or a cached alternate got dearer by more than
        ``relief_margin``; otherwise the cached paths are re-priced (learning moves link
        costs after every exchange, and a full search per exchange was the engine's main
        CPU cost).
        """
        first = self.primary(n)
        if first is None:
            return []
        cached = self._alt_cache.get(n)
        if cached is not None and cached[2] == first.path:
            ver, sver, _ppath, alts = cached
            if ver == self.version:
                return [first, *alts]
            if sver == self.struct_version:
                fresh = self._reprice(alts)
                if fresh is not None:
                    self._alt_cache[n] = (self.version, sver, first.path, fresh)
                    return [first, *fresh]
        out = [first]
        avoid_nodes = set(first.relays)
        avoid_hops = set(_hops(first.path))
        seen = {first.path}
        mh = self.cfg.max_hops
        for _ in range(self.cfg.alternates):
            path = self.search(n, avoid_nodes=avoid_nodes, avoid_hops=avoid_hops, max_hops=mh)
            if path is None or path in seen:
                # Sharing is cheaper than any detour: insist on a different route, fully
                # disjoint if possible, else at least through different hops.
                path = self.search(n, banned=avoid_nodes, banned_hops=avoid_hops, max_hops=mh)
                if path is None:
                    path = self.search(n, avoid_nodes=avoid_nodes, banned_hops=avoid_hops,
                                       max_hops=mh)
            if path is None or path in seen:
                break
            route = self.make_route(path, "alternate")
            if route is None:
                break
            seen.add(path)
            out.append(route)
            avoid_nodes |= set(route.relays)
            avoid_hops |= set(_hops(path))
        if len(self._alt_cache) > 4 * len(self.adj) + 64:
            self._alt_cache.clear()
        self._alt_cache[n] = (self.version, self.struct_version, first.path, out[1:])
        return list(out)

    def _reprice(self, alts: list[Route]) -> list[Route] | None:
        """Cached alternates with today's costs; None when one got much dearer or unusable."""
        fresh = []
        for r in alts:
            nr = self.make_route(r.path, "alternate")
            if nr is None or nr.cost > r.cost + self.cfg.relief_margin:
                return None
            fresh.append(nr)
        return fresh

    def search(
        self,
        target: str,
        avoid_nodes: Iterable[str] = (),
        avoid_hops: Iterable[tuple[str, str]] = (),
        banned: Iterable[str] = (),
        max_hops: int | None = None,
        banned_hops: Iterable[tuple[str, str]] = (),
    ) -> tuple[str, ...] | None:
        """Cheapest root->target path with penalties, via A* from target back to root.

        Relays in ``avoid_nodes`` and hops in ``avoid_hops`` cost ``share_penalty`` extra;
        ``banned`` nodes are never relays and ``banned_hops`` never used. Labels are (node, hops) with Pareto pruning, so the
        result is exact under the hop bound. The SPT distance is the heuristic: it is a lower
        bound of the remaining cost because penalties and bans only add cost.
        """
        if target not in self.adj or target not in self.dist or target == self.root:
            return None
        self.searches += 1
        avoid_n = set(avoid_nodes)
        avoid_h = {frozenset(h) for h in avoid_hops}
        ban = set(banned)
        ban_h = {frozenset(h) for h in banned_hops}
        # The cheapest path ignoring the hop bound is the answer whenever it fits the bound
        # (the bounded optimum can only cost more), and it settles each node once; the
        # Pareto (node, hops) search below is only needed when it does not fit.
        # The hop floor (a BFS over the whole graph, recomputed after every new hop) is only
        # consulted when the plain answer does not fit: most searches never need it.
        path = self._search_plain(target, avoid_n, avoid_h, ban, ban_h)
        if path is None or max_hops is None or len(path) - 1 <= max_hops:
            return path
        if self.hop_floor().get(target, 99) > max_hops:
            return None  # out of reach within the relay limit
        return self._search_bounded(target, avoid_n, avoid_h, ban, ban_h, max_hops)

    def _search_plain(self, target: str, avoid_n: set[str], avoid_h: set[frozenset],
                      ban: set[str], ban_h: set[frozenset]) -> tuple[str, ...] | None:
        """A* from ``target`` to the root with penalties and bans, no hop bound."""
        pen = self.cfg.share_penalty
        dist = self.dist
        root = self.root
        relay_ok = self.relay_ok
        sur = self.hop_surcharge
        best: dict[str, float] = {target: 0.0}
        prev: dict[str, str] = {}
        done: set[str] = set()
        heap = [(dist[target], 0.0, target)]
        while heap:
            _f, g, node = heapq.heappop(heap)
            if node in done:
                continue
            done.add(node)
            if node == root:
                path = [root]
                while path[-1] != target:
                    path.append(prev[path[-1]])
                return tuple(path)
            if node != target and node not in relay_ok:
                continue
            for m, h in self.adj[node].items():
                if m == target or m in done or m not in dist:
                    continue
                if m != root and (m not in relay_ok or m in ban):
                    continue
                if ban_h and frozenset((node, m)) in ban_h:
                    continue
                ng = g + h.cost + sur
                if m in avoid_n and m != root:
                    ng += pen
                if avoid_h and frozenset((node, m)) in avoid_h:
                    ng += pen
                old = best.get(m)
                if old is None or ng < old:
                    best[m] = ng
                    prev[m] = node
                    heapq.heappush(heap, (ng + dist[m], ng, m))
        return None

    def _search_bounded(self, target: str, avoid_n: set[str], avoid_h: set[frozenset],
                        ban: set[str], ban_h: set[frozenset],
                        max_hops: int) -> tuple[str, ...] | None:
        """Exact hop-bounded search: (node, hops) labels with Pareto pruning."""
        pen = self.cfg.share_penalty
        dist = self.dist
        root = self.root
        hmin = self.hop_floor() if max_hops is not None else None
        labels: list[tuple[str, int]] = []  # (node, previous label index)
        settled: dict[str, list[tuple[int, float]]] = {}
        heap = [(dist[target], 0.0, 0, target, -1)]
        while heap:
            _f, g, hops, node, prev = heapq.heappop(heap)
            seen = settled.setdefault(node, [])
            if any(h2 <= hops and g2 <= g for h2, g2 in seen):
                continue
            seen.append((hops, g))
            labels.append((node, prev))
            me = len(labels) - 1
            if node == root:
                path = []
                i = me
                while i >= 0:
                    path.append(labels[i][0])
                    i = labels[i][1]
                return tuple(path)  # built from root outwards: labels point toward target
            if node != target and node not in self.relay_ok:
                continue
            nh = hops + 1
            if max_hops is not None and nh > max_hops:
                continue
            for m, h in self.adj[node].items():
                if m == target or m not in dist:
                    continue
                if m != root:
                    if m not in self.relay_ok or m in ban:
                        continue
                    # m still needs hmin[m] hops to the root: prune what cannot make it
                    if hmin is not None and nh + hmin.get(m, 99) > max_hops:
                        continue
                if ban_h and frozenset((node, m)) in ban_h:
                    continue
                ng = g + h.cost + self.hop_surcharge
                if m in avoid_n and m != root:
                    ng += pen
                if avoid_h and frozenset((node, m)) in avoid_h:
                    ng += pen
                heapq.heappush(heap, (ng + dist[m], ng, nh, m, me))
        return None

    # --- load relief ---------------------------------------------------------------------------

    def loads(self) -> dict[str, int]:
        """Number of primary routes each relay carries."""
        load: dict[str, int] = {}
        for relays, _media in self.published.values():
            for r in relays:
                load[r] = load.get(r, 0) + 1
        return load

    def rebalance(self) -> list[str]:
        """Relieve relays above ``max_load``; returns nodes whose primary route changed."""
        if self.version == self._relieved_at:
            return []
        cfg = self.cfg
        load = self.loads()
        changed: set[str] = set()
        for relay in sorted(load, key=lambda r: (-load[r], r)):
            if load[relay] <= cfg.max_load:
                continue
            candidates = []
            for n, (relays, _m) in self.published.items():
                if relay not in relays:
                    continue
                cur = self.primary_path(n)
                cur_cost = self.path_cost(cur) if cur else None
                best = self._best_path(n)
                best_cost = self.path_cost(best) if best else None
                if cur_cost is None or best_cost is None:
                    continue
                alt = self.search(n, banned={relay}, max_hops=cfg.max_hops)
                if alt is None:
                    continue
                alt_cost = self.path_cost(alt)
                if alt_cost is None or alt_cost > best_cost + cfg.relief_margin:
                    continue
                candidates.append((alt_cost - cur_cost, n, alt))
            candidates.sort()
            for _extra, n, alt in candidates:
                if load[relay] <= cfg.max_load:
                    break
                if any(load.get(r, 0) + 1 > cfg.max_load for r in alt[1:-1]):
                    continue
                old_relays = self.published[n][0]
                for r in old_relays:
                    load[r] -= 1
                for r in alt[1:-1]:
                    load[r] = load.get(r, 0) + 1
                self.pins[n] = alt
                changed.add(n)
                log.info("mesh: route of %s moved off overloaded relay %s", n, relay)
        if changed:
            self.version += 1
        else:
            self._relieved_at = self.version
        return self._refresh(changed)


def _hops(path: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(path[i], path[i + 1]) for i in range(len(path) - 1)]
