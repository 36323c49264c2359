"""Save and restore the mesh (nodes, link estimates, routes) in the concentrator's SQLite store.

After a restart the daemon calls ``load(db)`` and reading resumes on the learned routes with no
new discovery: every link's prior, decayed evidence, down flag and last quality come back, so
the planner rebuilds exactly the routes it had; relieved (pinned) routes are restored too.

Tables (created on first ``save``; the store owns the database file and its WAL mode):

* ``mesh_nodes``  — one row per node; ``is_root`` marks the concentrator (CCO address);
* ``mesh_links``  — one row per directed link and medium (``src``, ``dst``, ``medium``);
* ``mesh_routes`` — each node's routes as last computed (rank 0 = primary, ``kind`` tells
  primary/relief/alternate), kept for inspection and for restoring relief pins.

``save`` rewrites the three tables in one transaction (a 2,040-node district is ~40k rows,
well under a second), so a power cut leaves either the old or the new state. It uses
``Database.atomic()`` (sqlite-utils >= 4): inside a caller's open transaction (a
``Store.batch()``) that is a savepoint, so the caller's batch stays one transaction and is
committed by the caller, never early by the mesh.
"""

from __future__ import annotations

import json
import logging

import sqlite_utils

from mesh.links import LinkConfig, LinkEstimate
from mesh.routes import RouteConfig
from mesh.topology import Node, NodeKind, NodeStatus, Topology

__all__ = ["save", "load", "NODES", "LINKS", "ROUTES", "MeshStateError"]

log = logging.getLogger(__name__)

NODES, LINKS, ROUTES = "mesh_nodes", "mesh_links", "mesh_routes"


class MeshStateError(Exception):
    """The stored mesh state cannot be loaded (no root, or inconsistent rows)."""


def _ensure_tables(db: sqlite_utils.Database) -> None:
    if not db[NODES].exists():
        db[NODES].create({
            "address": str, "is_root": int, "kind": str, "status": str, "protocol": str,
            "phase": int, "level": int, "first_seen": float, "last_seen": float,
            "successes": int, "failures": int, "history": str, "sub_meters": str,
        }, pk="address")
    if not db[LINKS].exists():
        db[LINKS].create({
            "src": str, "dst": str, "medium": str, "prior_mean": float, "prior_weight": float,
            "succ": float, "fail": float, "t_last": float, "down": int, "consec_fail": float,
            "quality": int, "periods": str,
        }, pk=("src", "dst", "medium"))
    elif "periods" not in db[LINKS].columns_dict:
        # A store saved before the by-time-of-day evidence: the column comes with this save.
        db[LINKS].add_column("periods", str)
    if not db[ROUTES].exists():
        db[ROUTES].create({
            "address": str, "rank": int, "kind": str, "relays": str, "media": str,
            "p": float, "cost": float,
        }, pk=("address", "rank"))


def save(db: sqlite_utils.Database, topology: Topology, alternates: bool = True) -> None:
    """Write the whole mesh state; ``alternates=False`` stores primaries only (faster).

    One transaction of its own, or a savepoint inside the caller's open transaction.
    """
    nodes = [{
        "address": n.address, "is_root": int(n.address == topology.root), "kind": n.kind.value,
        "status": n.status.value, "protocol": n.protocol, "phase": n.phase, "level": n.level,
        "first_seen": n.first_seen, "last_seen": n.last_seen, "successes": n.successes,
        "failures": n.failures, "history": n.history, "sub_meters": json.dumps(n.sub_meters),
    } for n in topology.nodes()]
    links = []
    for u, v, m, est in topology.links():
        d = est.as_dict()
        d["down"] = int(d["down"])
        d["periods"] = json.dumps(d["periods"])
        links.append({"src": u, "dst": v, "medium": m, **d})
    routes = []
    for n in topology.nodes():
        if n.address == topology.root:
            continue
        rs = topology.routes(n.address) if alternates else [topology.primary(n.address)]
        for rank, r in enumerate(x for x in rs if x is not None):
            routes.append({
                "address": n.address, "rank": rank, "kind": r.kind,
                "relays": json.dumps(r.relays), "media": json.dumps(r.media),
                "p": r.p, "cost": r.cost,
            })
    with db.atomic():
        _ensure_tables(db)
        for table, rows in ((NODES, nodes), (LINKS, links), (ROUTES, routes)):
            db.execute(f"DELETE FROM [{table}]")
            if rows:
                # Plain executemany: sqlite-utils' insert_all inspects every value of every
                # row, which was most of a save's CPU (an hourly save of 1,000 nodes: 0.5 s).
                cols = list(rows[0])
                sql = (f"INSERT INTO [{table}] ({', '.join(f'[{c}]' for c in cols)}) "
                       f"VALUES ({', '.join('?' * len(cols))})")
                db.conn.executemany(sql, [tuple(r[c] for c in cols) for r in rows])
    log.info("mesh: saved %d nodes, %d links, %d routes", len(nodes), len(links), len(routes))


def load(
    db: sqlite_utils.Database,
    link_cfg: LinkConfig | None = None,
    route_cfg: RouteConfig | None = None,
) -> Topology:
    """Rebuild the Topology saved by ``save``; raises MeshStateError when there is none."""
    if not db[NODES].exists():
        raise MeshStateError("no mesh state stored")
    rows = list(db[NODES].rows)
    roots = [r for r in rows if r["is_root"]]
    if len(roots) != 1:
        raise MeshStateError(f"expected one root node, found {len(roots)}")
    topo = Topology(roots[0]["address"], link_cfg or LinkConfig(), route_cfg or RouteConfig())
    for r in rows:
        try:
            node = Node(
                r["address"], NodeKind(r["kind"]), NodeStatus(r["status"]), r["protocol"],
                r["phase"] or 0, r["level"], r["first_seen"], r["last_seen"],
                r["successes"] or 0, r["failures"] or 0, r["history"] or "",
                tuple(json.loads(r["sub_meters"] or "[]")),
            )
        except (ValueError, TypeError) as exc:
            log.warning("mesh: stored node %s rejected: %s", r.get("address"), exc)
            continue
        if node.address == topo.root:
            topo.graph.nodes[topo.root]["node"] = node
            continue
        topo.graph.add_node(node.address, node=node)
        topo.planner.add_node(node.address, relay_ok=node.status is NodeStatus.APPROVED)
    for r in db[LINKS].rows:
        if r["src"] not in topo.graph or r["dst"] not in topo.graph:
            log.warning("mesh: stored link %s->%s refers to an unknown node, dropped",
                        r["src"], r["dst"])
            continue
        try:
            periods = json.loads(r.get("periods") or "[]")
        except ValueError:
            log.warning("mesh: stored link %s->%s has unreadable periods, dropped them",
                        r["src"], r["dst"])
            periods = []
        est = LinkEstimate(r["prior_mean"], r["prior_weight"], r["succ"], r["fail"],
                           r["t_last"], bool(r["down"]), r["consec_fail"], r["quality"],
                           periods)
        if not topo.graph.has_edge(r["src"], r["dst"]):
            topo.graph.add_edge(r["src"], r["dst"], links={})
        topo.graph.edges[r["src"], r["dst"]]["links"][r["medium"]] = est
        if r["t_last"] is not None and (topo.now is None or r["t_last"] > topo.now):
            topo.now = r["t_last"]
    if db[ROUTES].exists():
        for r in db[ROUTES].rows_where("kind = ?", ["relief"]):
            if r["address"] in topo.graph:
                topo.planner.pins[r["address"]] = (
                    topo.root, *json.loads(r["relays"]), r["address"])
    topo.full_recompute()
    # The restored routes are the routes the daemon already had: not news.
    topo._last_relays = {a: pub[0] for a, pub in topo.planner.published.items()}
    topo.drain_events()
    for n in topo.nodes():
        pub = topo.planner.published.get(n.address)
        if n.address != topo.root:
            n.level = len(pub[0]) + 1 if pub else None
    log.info("mesh: loaded %d nodes, %d routes", len(rows), len(topo.planner.published))
    return topo
