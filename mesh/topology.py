"""The district's mesh as the concentrator sees it: nodes, directed links, and their routes.

``Topology`` is the one object the discovery/repair engine talks to. It holds

* the **nodes** (meters and collectors, plus the concentrator itself as the root, addressed by
  its CCO address) with their archive status, phase, level, and reading history;
* the **directed links** between them on a ``networkx.DiGraph``; edge ``(src, dst)`` carries
  ``links = {medium: LinkEstimate}`` (one estimate per direction and medium, see ``links.py``);
* a ``RoutePlanner`` (``routes.py``) kept up to date incrementally after every change;
* an **event list** (``RouteChanged``, ``NodeDeleted`` ...) the engine drains to log, persist
  and tell the master station.

How the engine drives it (all pure calls, no I/O; ``t`` is wall time in seconds)::

    topo = Topology("000000000001")
    topo.add_node(addr, kind="meter", status="approved", phase=1)
    topo.observe(proxy, addr, ok=True, quality=11, t=t)      # a search report (AFN06 F4)
    for route in topo.routes(addr):                          # primary first
        result = await driver.read(addr, route.relays, ...)
        topo.observe_path(route, result.ok, t=t, qualities=[..., (down_q, up_q)])
        if result.ok: break
    topo.needs_probe(addr)        # links worth a probe before trusting the choice
    topo.rebalance()              # once per route period
    for event in topo.drain_events(): ...

Only ``approved`` nodes relay; ``discovered``/``archive``/``quarantined`` nodes can be reached
(to read or identify them) but never carry anyone else's traffic; ``deleted`` removes the node.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import networkx as nx

from concentrator.codec import CodecError, address_to_wire
from mesh.links import (
    MEDIA,
    LinkConfig,
    LinkEstimate,
    distribute_blame,
    quality_prior,
)
from mesh.routes import _NO_HOPS, HopMetric, Route, RouteConfig, RoutePlanner, hop_cost

__all__ = [
    "NodeKind",
    "NodeStatus",
    "Node",
    "Neighbour",
    "LinkKey",
    "RouteChanged",
    "NodeAdded",
    "NodeStatusChanged",
    "NodeDeleted",
    "LinkDown",
    "LinkUp",
    "Topology",
]

log = logging.getLogger(__name__)

HISTORY_LEN = 32
_NO_LINKS: dict[str, LinkEstimate] = {}  # the links of a pair of nodes never heard (read only)
_NO_EDGES: dict[str, dict] = {}  # the edges of a node not in the graph (read only)


class NodeKind(StrEnum):
    CONCENTRATOR = "concentrator"  # the root (CCO address)
    METER = "meter"
    COLLECTOR = "collector"  # RS-485 collector with sub-meters behind it


class NodeStatus(StrEnum):
    ARCHIVE = "archive"  # in the master station's archive, not heard yet
    DISCOVERED = "discovered"  # heard in a search, not (yet) in the archive
    QUARANTINED = "quarantined"  # misbehaving or suspicious: reachable, never a relay
    APPROVED = "approved"  # in the archive and heard: may relay
    DELETED = "deleted"  # only ever seen in a NodeDeleted event


@dataclass(slots=True)
class Node:
    """One node of the mesh. Read it freely; change it through ``Topology`` methods."""

    address: str
    kind: NodeKind = NodeKind.METER
    status: NodeStatus = NodeStatus.DISCOVERED
    protocol: str | None = None  # "dlt645-2007", "dlt645-1997" ...
    phase: int = 0  # 0 unknown, 1..3 (1376.2 uplink R3 D0-D3)
    level: int | None = None  # hops on the primary route; 0 for the root, None unreachable
    first_seen: float | None = None
    last_seen: float | None = None
    successes: int = 0  # exchanges with this node that worked
    failures: int = 0
    history: str = ""  # last outcomes, oldest first: "1" ok, "0" failed
    sub_meters: tuple[str, ...] = ()  # a collector's RS-485 meters

    def record(self, ok: bool) -> None:
        if ok:
            self.successes += 1
        else:
            self.failures += 1
        self.history = (self.history + ("1" if ok else "0"))[-HISTORY_LEN:]


LinkKey = tuple[str, str, str]  # (src, dst, medium)


# --- events (nouns, frozen) --------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RouteChanged:
    """The primary route of ``address`` changed (``new_relays`` None: unreachable now)."""

    address: str
    old_relays: tuple[str, ...] | None
    new_relays: tuple[str, ...] | None
    media: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class NodeAdded:
    address: str
    status: str


@dataclass(frozen=True, slots=True)
class NodeStatusChanged:
    address: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class NodeDeleted:
    address: str
    reason: str


@dataclass(frozen=True, slots=True)
class LinkDown:
    src: str
    dst: str
    medium: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    src: str
    dst: str
    medium: str


Event = RouteChanged | NodeAdded | NodeStatusChanged | NodeDeleted | LinkDown | LinkUp


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A node heard by (or hearing) another, as ``neighbours()`` reports it."""

    address: str
    medium: str
    p_out: float | None  # this node -> neighbour
    p_in: float | None  # neighbour -> this node
    std_out: float | None
    std_in: float | None
    quality: int | None  # last reported quality, either direction
    down: bool


def check_address(address: str) -> str:
    """Validate a 12-digit node address; raise ValueError with the reason."""
    try:
        address_to_wire(address)
    except CodecError as exc:
        raise ValueError(str(exc)) from exc
    return address.upper()


@dataclass
class Topology:
    """Nodes, per-direction link estimates and routes of one district (see module docstring)."""

    root: str
    link_cfg: LinkConfig = field(default_factory=LinkConfig)
    route_cfg: RouteConfig = field(default_factory=RouteConfig)

    def __post_init__(self) -> None:
        self.root = check_address(self.root)
        if self.link_cfg.by_period != self.route_cfg.worst_period:
            # the evidence per period of the day is kept only when the routes plan on it
            self.link_cfg = dataclasses.replace(self.link_cfg,
                                                by_period=self.route_cfg.worst_period)
        self.graph = nx.DiGraph()
        # networkx's own node and adjacency dicts (its documented data structure for
        # subclasses), read directly on the hot paths: the view objects and methods around
        # them cost more than the lookups
        self._node_data: dict[str, dict] = self.graph._node
        self._succ: dict[str, dict[str, dict]] = self.graph._succ
        self._pred: dict[str, dict[str, dict]] = self.graph._pred
        self.planner = RoutePlanner(self.root, self.route_cfg)
        self.events: list[Event] = []
        self.now: float | None = None
        # the primary relays last reported in a RouteChanged, for the event's ``old_relays``
        self._last_relays: dict[str, tuple[str, ...] | None] = {}
        # nodes presumed dead (mark_node_down) -> when; their links are tried again later
        self.presumed_dead: dict[str, float] = {}
        self.graph.add_node(self.root, node=Node(self.root, NodeKind.CONCENTRATOR,
                                                 NodeStatus.APPROVED, level=0))

    # --- nodes -------------------------------------------------------------------------------

    def __contains__(self, address: str) -> bool:
        return address in self._node_data

    def node(self, address: str) -> Node:
        """The node record; KeyError for an unknown address."""
        return self._node_data[address]["node"]

    def find_node(self, address: str) -> Node | None:
        """The node record, None for an unknown address."""
        data = self._node_data.get(address)
        return None if data is None else data["node"]

    def nodes(self) -> list[Node]:
        return [d["node"] for _, d in self.graph.nodes(data=True)]

    def add_node(
        self,
        address: str,
        kind: NodeKind | str = NodeKind.METER,
        status: NodeStatus | str | None = None,
        protocol: str | None = None,
        phase: int | None = None,
        sub_meters: Iterable[str] | None = None,
        t: float | None = None,
    ) -> Node:
        """Add a node, or update the given fields of a known one. ValueError on a bad address."""
        address = check_address(address)
        if address == self.root:
            return self.node(self.root)
        if address in self.graph:
            node = self.node(address)
            node.kind = NodeKind(kind)
            if protocol is not None:
                node.protocol = protocol
            if phase is not None:
                node.phase = phase
            if sub_meters is not None:
                node.sub_meters = tuple(sub_meters)
            if status is not None:
                self.set_status(address, status)
            return node
        st = NodeStatus(status or NodeStatus.DISCOVERED)
        if st is NodeStatus.DELETED:
            raise ValueError(f"cannot add node {address} as deleted")
        node = Node(address, NodeKind(kind), st, protocol, phase or 0,
                    first_seen=None, sub_meters=tuple(sub_meters or ()))
        self.graph.add_node(address, node=node)
        self.planner.add_node(address, relay_ok=st is NodeStatus.APPROVED)
        self.events.append(NodeAdded(address, st.value))
        log.info("mesh: node %s added (%s, %s)", address, node.kind.value, st.value)
        return node

    def set_status(self, address: str, status: NodeStatus | str, reason: str = "") -> None:
        """Change a node's status; ``deleted`` removes it. Only approved nodes relay."""
        st = NodeStatus(status)
        if st is NodeStatus.DELETED:
            self.remove_node(address, reason or "deleted")
            return
        node = self.node(address)
        if address == self.root or node.status is st:
            return
        old = node.status
        node.status = st
        self.events.append(NodeStatusChanged(address, old.value, st.value))
        log.info("mesh: node %s %s -> %s %s", address, old.value, st.value, reason)
        self._emit_routes(self.planner.set_relay_ok(address, st is NodeStatus.APPROVED))

    def approve(self, address: str) -> None:
        self.set_status(address, NodeStatus.APPROVED)

    def quarantine(self, address: str, reason: str = "") -> None:
        self.set_status(address, NodeStatus.QUARANTINED, reason)

    def remove_node(self, address: str, reason: str = "removed") -> None:
        """Forget a node and its links; routes through it move elsewhere."""
        if address == self.root:
            raise ValueError("the concentrator (root) cannot be removed")
        if address not in self.graph:
            return
        self.graph.remove_node(address)
        self.events.append(NodeDeleted(address, reason))
        log.info("mesh: node %s deleted (%s)", address, reason)
        self._last_relays.pop(address, None)
        self._emit_routes(self.planner.remove_node(address))

    def silent_nodes(self, since: float) -> list[str]:
        """Nodes (not the root) not heard since ``since`` (never heard counts as silent)."""
        return sorted(
            n.address for n in self.nodes()
            if n.address != self.root and (n.last_seen is None or n.last_seen < since)
        )

    # --- links ---------------------------------------------------------------------------------

    def link(self, src: str, dst: str, medium: str = "plc") -> LinkEstimate | None:
        data = self._succ.get(src, _NO_EDGES).get(dst)
        return None if data is None else data["links"].get(medium)

    def _links_both_ways(self, u: str, v: str) -> tuple[dict[str, LinkEstimate],
                                                        dict[str, LinkEstimate]]:
        """The links u->v and v->u by medium (empty when never heard), one edge lookup each
        for every medium: route pricing and candidate ranking ask for both media."""
        fwd = self._succ.get(u, _NO_EDGES).get(v)
        back = self._succ.get(v, _NO_EDGES).get(u)
        return (_NO_LINKS if fwd is None else fwd["links"],
                _NO_LINKS if back is None else back["links"])

    def links(self) -> Iterable[tuple[str, str, str, LinkEstimate]]:
        for u, v, d in self.graph.edges(data=True):
            for m, est in d["links"].items():
                yield u, v, m, est

    def _estimate(self, src: str, dst: str, medium: str, quality: int | None) -> LinkEstimate:
        data = self._succ.get(src, _NO_EDGES).get(dst)
        if data is None:
            self.graph.add_edge(src, dst, links={})
            data = self._succ[src][dst]
        est = data["links"].get(medium)
        if est is None:
            prior = quality_prior(quality, self.link_cfg.unknown_prior)
            if quality is None:
                # PLC/RF links are roughly symmetric: start from the reverse direction's prior.
                rev = self.link(dst, src, medium)
                if rev is not None:
                    prior = rev.prior_mean
            est = LinkEstimate(prior, self.link_cfg.prior_weight, t_last=self.now)
            data["links"][medium] = est
        return est

    def _ensure_node(self, address: str, t: float | None) -> None:
        if address not in self._node_data:
            log.info("mesh: node %s heard before it was added; added as discovered", address)
            self.add_node(address, t=t)

    def _tick(self, t: float | None) -> float | None:
        if t is not None and (self.now is None or t > self.now):
            self.now = t
        return t if t is not None else self.now

    def _seen(self, address: str, t: float | None) -> None:
        data = self._node_data.get(address)
        if t is None or data is None:
            return
        node = data["node"]
        if node.first_seen is None:
            node.first_seen = t
        if node.last_seen is None or t > node.last_seen:
            node.last_seen = t
        if self.presumed_dead.pop(address, None) is not None:
            # Heard working (a read through it, a search report): searches and relay checks
            # may use it again at once, not only after ``revive_presumed_dead``'s hold.
            log.info("mesh: node %s presumed dead is heard again", address)

    @staticmethod
    def _checked_quality(src: str, dst: str, quality: int | None) -> int | None:
        if quality is not None and not 0 <= int(quality) <= 15:
            log.warning("mesh: link %s->%s quality %s out of 0..15, ignored", src, dst, quality)
            return None
        return quality

    def _learn(self, src: str, dst: str, medium: str, ok: bool, t: float | None,
               weight: float, quality: int | None) -> None:
        if medium not in MEDIA:
            raise ValueError(f"unknown medium {medium!r} (expected one of {MEDIA})")
        quality = self._checked_quality(src, dst, quality)
        est = self._estimate(src, dst, medium, quality)
        if est.observe(ok, t, self.link_cfg, weight, quality):
            ev = LinkDown(src, dst, medium) if est.down else LinkUp(src, dst, medium)
            self.events.append(ev)
            log.info("mesh: link %s->%s %s %s (p=%.2f)", src, dst, medium,
                     "down" if est.down else "up", est.p)

    def observe(
        self,
        src: str,
        dst: str,
        ok: bool,
        quality: int | None = None,
        medium: str = "plc",
        t: float | None = None,
        weight: float = 1.0,
    ) -> None:
        """One outcome of ``src`` sending to ``dst`` (a probe, a search report, a heard beacon).

        Unknown nodes are added as ``discovered``. ``quality`` is the 0..15 signal quality
        reported for this direction (out-of-range values are logged and ignored).
        """
        src, dst = check_address(src), check_address(dst)
        t = self._tick(t)
        self._ensure_node(src, t)
        self._ensure_node(dst, t)
        self._learn(src, dst, medium, ok, t, weight, quality)
        if ok:
            self._seen(src, t)
            self._seen(dst, t)
        self._update_hop(src, dst)

    def hear(self, src: str, dst: str, quality: int | None, medium: str = "plc",
             t: float | None = None) -> None:
        """``dst`` answered a search from ``src`` at ``quality`` (a survey): a new hop starts
        from the quality's prior with no outcome, and stands by (``RouteConfig.standby_cost``)
        until an exchange of ours crosses it; a hop already known takes it as a success."""
        if self.link(src, dst, medium) is not None:
            self.observe(src, dst, True, quality, medium, t)
            return
        src, dst = check_address(src), check_address(dst)
        t = self._tick(t)
        self._ensure_node(src, t)
        self._ensure_node(dst, t)
        quality = self._checked_quality(src, dst, quality)
        est = self._estimate(src, dst, medium, quality)
        if quality is not None:
            est.note_quality(quality, self.link_cfg)
        est.standby = True
        self._seen(src, t)
        self._seen(dst, t)
        self._update_hop(src, dst)

    def mark_down(self, src: str, dst: str, medium: str | None = None,
                  both_directions: bool = True) -> None:
        """Declare a link dead (e.g. the module reported the node gone) until evidence returns."""
        pairs = [(src, dst), (dst, src)] if both_directions else [(src, dst)]
        for a, b in pairs:
            data = self.graph.get_edge_data(a, b)
            if data is None:
                continue
            for m, est in data["links"].items():
                if (medium is None or m == medium) and not est.down:
                    est.down = True
                    est.consec_fail = max(est.consec_fail, self.link_cfg.down_after)
                    self.events.append(LinkDown(a, b, m))
                    log.info("mesh: link %s->%s %s marked down", a, b, m)
        self._update_hop(src, dst)

    def mark_node_down(self, address: str) -> int:
        """Declare a node's modem dead: every link to and from it goes down at once, so every
        route relayed by it moves to its best alternate in one step (instead of each route
        failing once on its own). Returns the number of neighbours cut off; a real success or
        a fresh quality report on a link brings that link back."""
        address = check_address(address)
        if address not in self.graph or address == self.root:
            return 0
        others = sorted(set(self.graph.successors(address)) | set(self.graph.predecessors(address)))
        for w in others:
            self.mark_down(address, w)
        self.presumed_dead[address] = self.now if self.now is not None else 0.0
        log.warning("mesh: node %s presumed dead, %d links down", address, len(others))
        return len(others)

    def revive_presumed_dead(self, now: float, hold: float) -> list[str]:
        """Let the links of nodes presumed dead for ``hold`` seconds be tried again.

        A node that came back (power restored, a churned modem re-plugged) is still registered in
        the module, so no search hears it, and the meters it relayed have no way to it while all
        its links are down: without this they would stay unread for good. Its links come back
        with their failure history; if it is still dead the next exchange marks them down again.
        """
        back = [a for a, t in self.presumed_dead.items() if now - t >= hold]
        for a in back:
            del self.presumed_dead[a]
            if a not in self.graph:
                continue
            for w in set(self.graph.successors(a)) | set(self.graph.predecessors(a)):
                for x, y in ((a, w), (w, a)):
                    data = self.graph.get_edge_data(x, y)
                    for est in (data or {}).get("links", {}).values():
                        est.down = False
                        est.consec_fail = 0.0
                self._update_hop(a, w)
                self._update_hop(w, a)
            log.info("mesh: node %s presumed dead %.0f s ago: its links may be used again", a, hold)
        # Any node left with no route at all (its links went down one failure at a time while
        # it was off): links not heard from for ``hold`` are tried again, or it would stay
        # unread after it came back (found by the fault campaign's churn week).
        for node in self.nodes():
            addr = node.address
            if addr == self.root or addr in back or self.primary(addr) is not None:
                continue
            revived = False
            for w in set(self.graph.successors(addr)) | set(self.graph.predecessors(addr)):
                for x, y in ((addr, w), (w, addr)):
                    data = self.graph.get_edge_data(x, y)
                    for est in (data or {}).get("links", {}).values():
                        if est.down and est.t_last is not None and now - est.t_last >= hold:
                            est.down = False
                            est.consec_fail = 0.0
                            revived = True
                self._update_hop(addr, w)
                self._update_hop(w, addr)
            if revived:
                back.append(addr)
                log.info("mesh: node %s has no route: links silent for %.0f s may be tried again",
                         addr, hold)
        return back

    def down_links(self) -> list[LinkKey]:
        """Links currently down: candidates for a repair probe."""
        return sorted((u, v, m) for u, v, m, est in self.links() if est.down)

    def hop_metric(self, u: str, v: str) -> HopMetric | None:
        """Best medium and cost for the hop u-v (request u->v, reply v->u), or None."""
        best: HopMetric | None = None
        fwd_links, back_links = self._links_both_ways(u, v)
        for m in MEDIA:
            fwd = fwd_links.get(m)
            back = back_links.get(m)
            if fwd is None and back is None:
                continue
            # A direction never observed is assumed as good as the other (links are roughly
            # symmetric); a direction known to be down makes the hop unusable on that medium.
            # With ``worst_period`` the worst period of the day counts (``p_plan``): a
            # primary must stay good at every hour a read may come.
            sf = sb = None
            if self.route_cfg.worst_period:
                pf = (fwd if fwd is not None else back).p_plan  # type: ignore[union-attr]
                pb = (back if back is not None else fwd).p_plan  # type: ignore[union-attr]
            else:
                # p_usable and std of each direction in one call (every exchange prices the
                # hops of its path: the properties' calls were most of this method's time)
                pf, sf = (fwd if fwd is not None else back).usable_p_std()  # type: ignore[union-attr]
                pb, sb = (back if back is not None else fwd).usable_p_std()  # type: ignore[union-attr]
            if pf * pb < self.route_cfg.p_floor:
                continue  # too unreliable to use at all (``hop_cost`` would say None)
            # The route cost is pessimistic (p - k*std) and counts the quality margin.
            k = self.route_cfg.uncertainty_k
            if sf is None:
                sf = fwd.std if fwd is not None else back.std  # type: ignore[union-attr]
                sb = back.std if back is not None else fwd.std  # type: ignore[union-attr]
            qf = fwd.quality if fwd is not None and fwd.quality is not None else (
                back.quality if back is not None else None)
            qb = back.quality if back is not None and back.quality is not None else qf
            qp = None if qf is None else quality_prior(qf) * quality_prior(qb)
            floor = self.route_cfg.p_floor
            cost = hop_cost(max(pf - k * sf, floor), max(pb - k * sb, floor), m,
                            self.route_cfg, qp)
            if cost is None:
                continue
            if (fwd is None or fwd.standby) and (back is None or back.standby):
                cost += self.route_cfg.standby_cost  # only heard in a survey (``hear``)
            if best is None or cost < best.cost:
                best = HopMetric(cost, m, pf, pb)
        return best

    def _update_hop(self, u: str, v: str) -> None:
        if u not in self._node_data or v not in self._node_data:
            return
        metric = self.hop_metric(u, v)
        old = self.planner.adj.get(u, _NO_HOPS).get(v)
        if metric == old:
            return
        if (metric is not None and old is not None and metric.medium == old.medium
                and abs(metric.cost - old.cost) < self.route_cfg.replan_threshold):
            return  # a nudge too small to change a route choice (see RouteConfig)
        self._emit_routes(self.planner.set_edge(u, v, metric))

    def heard_quality(self, u: str, v: str) -> int | None:
        """Signal quality last reported for the hop u-v: its weaker direction, on the medium
        heard best (None: no quality was ever reported for it)."""
        return _heard_quality(*self._links_both_ways(u, v))

    def unlikeness(self, address: str, prior: float = 6.0,
                   among: set[str] | None = None) -> dict[str, float]:
        """How differently each node two hops from ``address`` is heard from their common
        neighbours: the mean gap between the signal qualities the module reported for c-w
        and c-``address``, over every common neighbour c with both reported, ``prior``
        counted as one more neighbour (0: heard alike everywhere).

        The signal is lost along the cable, so two nodes at the same pole or a few spans
        apart are heard alike by every third node, and hear each other well: a hop never
        probed between nodes heard alike is the likeliest strong one (issue 4: the truth's
        best routes ran through hops the concentrator had never heard).

        ``among``: only these nodes are scored (the same score each; a repair ranks only the
        relays it may use, a fraction of the ring)."""
        succ, pred = self._succ, self._pred
        if address not in succ:
            return {}
        near = set(succ[address]) | set(pred[address])
        gap: dict[str, float] = {}
        common: dict[str, int] = {}
        for c in near:
            qc = self.heard_quality(address, c)
            into_c, from_c = pred[c], succ[c]  # edge data w->c and c->w by w
            ws = set(from_c) | set(into_c)
            if among is not None:
                ws &= among
            for w in ws:
                if w == address:
                    continue
                q = None
                if qc is not None:
                    # heard_quality(w, c), its two edges looked up in c's own dicts
                    fwd, back = into_c.get(w), from_c.get(w)
                    q = _heard_quality(_NO_LINKS if fwd is None else fwd["links"],
                                       _NO_LINKS if back is None else back["links"])
                if q is None:
                    gap.setdefault(w, 0.0)
                    common.setdefault(w, 0)
                    continue
                gap[w] = gap.get(w, 0.0) + abs(q - qc)
                common[w] = common.get(w, 0) + 1
        for w in near:
            if among is None or w in among:
                gap.setdefault(w, 0.0)
                common.setdefault(w, 0)
        return {w: (g + prior) / (common[w] + 1) for w, g in gap.items()}

    def two_hop_ring(self, address: str) -> set[str]:
        """Nodes with a link to or from ``address`` or to or from one of those (``address``
        itself among them when it has a neighbour): the nodes ``unlikeness`` scores."""
        succ, pred = self._succ, self._pred
        near = set(succ[address]) | set(pred[address])
        ring = set(near)
        for w in near:
            ring.update(succ[w])
            ring.update(pred[w])
        return ring

    def neighbours(self, address: str) -> list[Neighbour]:
        """Every node with a link to or from ``address``, best two-way probability first."""
        out = []
        others = set(self.graph.successors(address)) | set(self.graph.predecessors(address))
        for w in others:
            for m in MEDIA:
                lo = self.link(address, w, m)
                li = self.link(w, address, m)
                if lo is None and li is None:
                    continue
                q = (lo.quality if lo is not None and lo.quality is not None
                     else li.quality if li is not None else None)
                out.append(Neighbour(
                    w, m,
                    lo.p if lo else None, li.p if li else None,
                    lo.std if lo else None, li.std if li else None,
                    q, bool((lo and lo.down) or (li and li.down)),
                ))
        out.sort(key=lambda n: (-(n.p_out or n.p_in or 0) * (n.p_in or n.p_out or 0), n.address))
        return out

    # --- exchanges over whole routes -------------------------------------------------------------

    def observe_path(
        self,
        path: Route | Sequence[str],
        ok: bool,
        t: float | None = None,
        qualities: Sequence[int | tuple[int | None, int | None] | None] | None = None,
        media: Sequence[str] | None = None,
        failed_at: int | None = None,
    ) -> None:
        """Learn from one exchange along ``path`` (root, relays..., target).

        ``ok``: the reply came back, so every hop worked in both directions. On failure the
        blame is shared by ``distribute_blame`` unless ``failed_at`` names the directed hop
        that failed (0..n-1 down the path, n..2n-1 back up). ``qualities[i]`` is the signal
        quality of hop i (an int for both directions or a (down, up) pair; 1376.2 reports the
        last hop's pair in R4). ``media`` default to the route's media / the hop's best medium.
        """
        if isinstance(path, Route):
            media = media or path.media
            nodes = list(path.path)
        else:
            nodes = [check_address(a) for a in path]
        if len(nodes) < 2 or nodes[0] != self.root:
            raise ValueError(f"path must start at the concentrator {self.root}: {nodes}")
        t = self._tick(t)
        node_data = self._node_data
        for a in nodes:
            if a not in node_data:
                self._ensure_node(a, t)
        n = len(nodes) - 1
        if media is None:
            media = []
            for i in range(n):
                h = self.planner.adj.get(nodes[i], {}).get(nodes[i + 1])
                media.append(h.medium if h else "plc")
        if len(media) != n:
            raise ValueError(f"{len(media)} media for {n} hops")
        directed: list[tuple[str, str, str, int | None]] = []
        quals = list(qualities or []) + [None] * n
        for i in range(n):
            q = quals[i]
            qd = q[0] if isinstance(q, tuple) else q
            directed.append((nodes[i], nodes[i + 1], media[i], qd))
        for i in reversed(range(n)):
            q = quals[i]
            qu = q[1] if isinstance(q, tuple) else q
            directed.append((nodes[i + 1], nodes[i], media[i], qu))
        if ok:
            weights = [(1.0, 0.0)] * len(directed)
        elif failed_at is not None:
            if not 0 <= failed_at < len(directed):
                raise ValueError(f"failed_at {failed_at} outside 0..{len(directed) - 1}")
            weights = [(1.0, 0.0)] * failed_at + [(0.0, 1.0)] + \
                [(0.0, 0.0)] * (len(directed) - failed_at - 1)
        else:
            # Shared by the estimates of this hour's period: a hop that carried every read
            # all night and dies by day takes its share now (see links.py).
            ps = []
            for a, b, m, _q in directed:
                est = self.link(a, b, m) or self.link(b, a, m)
                ps.append(self.link_cfg.unknown_prior if est is None else
                          est.p_at(t) if self.route_cfg.worst_period else est.p)
            weights = distribute_blame(ps)
        for (a, b, m, q), (sw, fw) in zip(directed, weights, strict=True):
            if sw > 1e-6:
                self._learn(a, b, m, True, t, sw, q)
            if fw > 1e-6:
                self._learn(a, b, m, False, t, fw, q if sw <= 1e-6 else None)
            elif q is not None and sw <= 1e-6:
                self._estimate(a, b, m, q).note_quality(q, self.link_cfg)
        target = self.node(nodes[-1])
        target.record(ok)
        if ok:
            for a in nodes:
                self._seen(a, t)
        if log.isEnabledFor(logging.DEBUG):  # the relays' list is built only when logged
            log.debug("mesh: exchange with %s via %s %s", nodes[-1], nodes[1:-1],
                      "ok" if ok else "failed")
        update_hop = self._update_hop
        for i in range(n):
            update_hop(nodes[i], nodes[i + 1])

    # --- routes ----------------------------------------------------------------------------------

    def routes(self, address: str) -> list[Route]:
        """Primary route first, then alternates sharing as few relays as possible."""
        return self.planner.routes(address)

    def primary(self, address: str) -> Route | None:
        return self.planner.primary(address)

    def route_for(self, address: str, avoid: Iterable[str] = ()) -> Route | None:
        """Best route that uses none of the relays in ``avoid`` (e.g. a relay just failed)."""
        avoid = set(avoid)
        for r in self.routes(address):
            if not avoid.intersection(r.relays):
                return r
        return self.cheapest_route_avoiding(address, avoid)

    def cheapest_route_avoiding(self, address: str, avoid: Iterable[str]) -> Route | None:
        """The cheapest route that uses none of the relays in ``avoid``: the primary the node
        would have with them gone (``route_for`` takes the first alternate that avoids them,
        and alternates are chosen to differ from the primary, not to be cheap)."""
        path = self.planner.search(address, banned=set(avoid), max_hops=self.route_cfg.max_hops)
        return self.planner.make_route(path, "alternate") if path else None

    def path_route(self, path: Sequence[str]) -> Route | None:
        """Route object (media, p, cost) for an explicit path, e.g. a probe; None if a hop is
        unknown or unusable."""
        return self.planner.make_route(tuple(path), "explicit")

    def full_recompute(self, retune: bool = True) -> None:
        """Rebuild every route from scratch (after a restore or a bulk change); ``retune``
        re-chooses the per-hop surcharge that keeps routes within the relay limit."""
        for u, v in list(self.graph.edges()):
            if u < v or not self.graph.has_edge(v, u):
                self.planner.put_edge(u, v, self.hop_metric(u, v))
        self._emit_routes(self.planner.full_recompute(retune))

    def set_quality_weight(self, weight: float) -> None:
        """Re-weight the signal-quality margin of hop costs (``RouteConfig.quality_weight``;
        the engine sets it per medium) and re-plan the routes already known."""
        if weight == self.route_cfg.quality_weight:
            return
        self.route_cfg = dataclasses.replace(self.route_cfg, quality_weight=weight)
        self.planner.cfg = self.route_cfg
        if self.graph.number_of_edges():
            self.full_recompute(retune=False)

    def set_worst_period(self, on: bool) -> None:
        """Plan on the links' worst period of the day (``RouteConfig.worst_period``; the
        engine sets it per medium) and re-plan the routes already known."""
        if on == self.route_cfg.worst_period:
            return
        self.route_cfg = dataclasses.replace(self.route_cfg, worst_period=on)
        self.link_cfg = dataclasses.replace(self.link_cfg, by_period=on)
        self.planner.cfg = self.route_cfg
        if self.graph.number_of_edges():
            self.full_recompute(retune=False)

    def expire_down(self, now: float, hold: float) -> int:
        """Links down with no new evidence for ``hold`` seconds may be tried again: marked down
        by the failures of a noisy hour, a link good at other hours would otherwise stay out of
        every route until a search happened to hear it. Their failures still count in the
        estimate (and fade with it). Returns how many came back."""
        back = 0
        for u, v, _m, est in list(self.links()):
            if est.down and est.t_last is not None and now - est.t_last >= hold:
                est.down = False
                est.consec_fail = 0.0
                back += 1
                self._update_hop(u, v)
        if back:
            log.info("mesh: %d links down for %.0f s with no news may be tried again", back,
                     hold)
        return back

    def refresh(self, t: float) -> None:
        """Let evidence fade up to ``t`` on every link, then recompute all routes."""
        self._tick(t)
        for _u, _v, _m, est in self.links():
            est.decay(t, self.link_cfg.half_life, self.link_cfg.period_half_life)
        self.full_recompute()

    def rebalance(self) -> None:
        """Relieve relays carrying more than ``route_cfg.max_load`` routes (see routes.py)."""
        self._emit_routes(self.planner.rebalance())

    def loads(self) -> dict[str, int]:
        return self.planner.loads()

    def uncertain_links(self, max_std: float = 0.15, routed_only: bool = True) -> list[LinkKey]:
        """Directed links whose estimate is too uncertain (std above ``max_std``), most
        uncertain first; with ``routed_only`` only those on a current primary route."""
        on_routes: set[tuple[str, str]] | None = None
        if routed_only:
            on_routes = set()
            for target, (relays, _m) in self.planner.published.items():
                path = (self.root, *relays, target)
                for i in range(len(path) - 1):
                    on_routes.add((path[i], path[i + 1]))
                    on_routes.add((path[i + 1], path[i]))
        out = []
        for u, v, m, est in self.links():
            if on_routes is not None and (u, v) not in on_routes:
                continue
            if est.std > max_std:
                out.append((est.std, (u, v, m)))
        out.sort(key=lambda x: (-x[0], x[1]))
        return [k for _s, k in out]

    def needs_probe(self, target: str | Route, max_std: float = 0.15) -> list[LinkKey]:
        """Directed links worth probing before trusting the route choice for a node.

        A hop of the primary whose estimate has std above ``max_std`` always qualifies. When
        the primary's pessimistic cost (p - std on every hop) exceeds the first alternate's
        optimistic cost (p + std), the choice itself is in doubt: the hops of both routes with
        std above ``max_std / 2`` qualify too. An empty list means: no probe needed.
        """
        if isinstance(target, Route):
            routes = [target]
        else:
            routes = self.routes(target)
        if not routes:
            return []
        out: dict[LinkKey, None] = {}
        first = self._route_links(routes[0])
        for key, _est, std in first:
            if std > max_std:
                out[key] = None
        if len(routes) > 1:
            second = self._route_links(routes[1])
            pess = self._bound_cost(routes[0], first, -1.0)
            opt = self._bound_cost(routes[1], second, +1.0)
            if pess > opt:
                for links in (first, second):
                    for key, _est, std in links:
                        if std > max_std / 2:
                            out[key] = None
        return list(out)

    def _route_links(self, route: Route) -> list[tuple[LinkKey, LinkEstimate, float]]:
        """(link, estimate, std) of both directions of every hop (each std computed once:
        the maintenance sweep asks this of every node's two best routes)."""
        out = []
        adj = self.graph._adj
        for a, b, m in route.hops():
            for x, y in ((a, b), (b, a)):
                data = adj.get(x, {}).get(y)
                est = None if data is None else data["links"].get(m)
                if est is not None:
                    out.append(((x, y, m), est, est.std))
        return out

    def _bound_cost(self, route: Route, links: list[tuple[LinkKey, LinkEstimate, float]],
                    sign: float) -> float:
        known = {key: (est.p, std) for key, est, std in links}
        cost = 0.0
        for a, b, m in route.hops():
            ps = []
            for x, y in ((a, b), (b, a)):
                ps_x = known.get((x, y, m)) or known.get((y, x, m))
                p = ps_x[0] + sign * ps_x[1] if ps_x is not None else 0.5
                ps.append(min(0.999, max(1e-3, p)))
            cost += self.route_cfg.hop_time.get(m, 0.15) - self.route_cfg.fail_cost * math.log(
                ps[0] * ps[1])
        return cost

    # --- events and inspection -----------------------------------------------------------------

    def _emit_routes(self, changed: Iterable[str]) -> None:
        for addr in changed:
            if addr not in self.graph:
                continue
            node = self.node(addr)
            pub = self.planner.published.get(addr)
            old = self._last_relays.get(addr)
            new_relays = pub[0] if pub else None
            node.level = len(new_relays) + 1 if new_relays is not None else None
            self.events.append(RouteChanged(addr, old, new_relays, pub[1] if pub else None))
            self._last_relays[addr] = new_relays
            log.info("mesh: route of %s now %s", addr,
                     "unreachable" if new_relays is None else list(new_relays) or "direct")

    def drain_events(self) -> list[Event]:
        """Events since the last drain, oldest first."""
        out, self.events = self.events, []
        return out

    def snapshot(self) -> dict:
        """JSON-able view for the CLI: every node with level, phase, route, links, history."""
        nodes = []
        for n in sorted(self.nodes(), key=lambda n: (n.level if n.level is not None else 99,
                                                       n.address)):
            route = self.primary(n.address) if n.address != self.root else None
            nodes.append({
                "address": n.address,
                "kind": n.kind.value,
                "status": n.status.value,
                "protocol": n.protocol,
                "phase": n.phase,
                "level": n.level,
                "first_seen": n.first_seen,
                "last_seen": n.last_seen,
                "successes": n.successes,
                "failures": n.failures,
                "history": n.history,
                "sub_meters": list(n.sub_meters),
                "route": None if route is None else {
                    "relays": list(route.relays), "media": list(route.media),
                    "p": round(route.p, 4), "cost": round(route.cost, 3), "kind": route.kind,
                },
                "links": [
                    {"to": nb.address, "medium": nb.medium,
                     "p_out": None if nb.p_out is None else round(nb.p_out, 3),
                     "p_in": None if nb.p_in is None else round(nb.p_in, 3),
                     "quality": nb.quality, "down": nb.down}
                    for nb in self.neighbours(n.address)
                ],
            })
        reachable = sum(1 for n in nodes if n["route"] is not None)
        return {
            "root": self.root,
            "nodes": nodes,
            "summary": {
                "nodes": len(nodes) - 1,
                "reachable": reachable,
                "links": sum(1 for _ in self.links()),
                "down_links": len(self.down_links()),
                "pinned_routes": len(self.planner.pins),
            },
        }


def _heard_quality(fwd_links: dict[str, LinkEstimate],
                   back_links: dict[str, LinkEstimate]) -> int | None:
    """``Topology.heard_quality`` of a hop given its links both ways by medium."""
    best: int | None = None
    for m in MEDIA:
        fwd, back = fwd_links.get(m), back_links.get(m)
        qf = None if fwd is None else fwd.quality
        qb = None if back is None else back.quality
        q = qb if qf is None else qf if qb is None or qf <= qb else qb
        if q is not None and (best is None or q > best):
            best = q
    return best
