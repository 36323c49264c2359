"""Save and restore the mesh (nodes, link estimates, routes) in the concentrator's SQLite store.

After a restart the daemon calls ``load(db)`` and reading resumes on the learned routes with no
new discovery: every link's prior, decayed evidence, down flag and last quality come back, so
the planner rebuilds exactly the routes it had; relieved (pinned) routes are restored too.

Tables (created on first ``save``; the store owns the database file and its WAL mode):

* ``mesh_nodes``  — one row per node; ``is_root`` marks the concentrator (CCO address);
* ``mesh_links``  — one row per directed link and medium (``src``, ``dst``, ``medium``);
* ``mesh_routes`` — each node's routes as last computed (rank 0 = primary, ``kind`` tells
  primary/relief/alternate), kept for inspection and for restoring relief pins;
* ``mesh_repairs`` — what the repairs learned that the topology does not hold: a meter found
  replaced (by which, since when) and a node whose repairs found nothing (how many in a row,
  no new repair until when). Without it a restart searched for a replaced meter again, and
  for a meter gone from the district at once.

``save`` writes the three tables in one transaction, so a power cut leaves either the old or
the new state; given what the last committed save returned, it writes only the rows that
changed since (the flash is spared an hourly rewrite of every link). It uses
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

__all__ = ["save", "load", "load_repairs", "NODES", "LINKS", "ROUTES", "REPAIRS",
           "MeshStateError", "SavedRows", "RepairState"]

log = logging.getLogger(__name__)

NODES, LINKS, ROUTES = "mesh_nodes", "mesh_links", "mesh_routes"
REPAIRS = "mesh_repairs"

#: node -> (replaced by, when found, fruitless repairs in a row, no repair before)
RepairState = dict[str, tuple[str | None, float | None, int, float | None]]


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
            "quality": int, "periods": str, "standby": int,
        }, pk=("src", "dst", "medium"))
    else:
        # A store saved before the by-time-of-day evidence or the survey: the columns come
        # with this save.
        for column, kind in (("periods", str), ("standby", int)):
            if column not in db[LINKS].columns_dict:
                db[LINKS].add_column(column, kind)
    if not db[REPAIRS].exists():
        db[REPAIRS].create({"address": str, "replaced_by": str, "replaced_at": float,
                            "fruitless": int, "no_repair_before": float}, pk="address")
    if not db[ROUTES].exists():
        db[ROUTES].create({
            "address": str, "rank": int, "kind": str, "relays": str, "media": str,
            "p": float, "cost": float,
        }, pk=("address", "rank"))


#: what the store holds of each mesh table after a save: row key -> row values
SavedRows = dict[str, dict[tuple, tuple]]

_KEYS = {NODES: 1, LINKS: 3, ROUTES: 2}  # leading columns that make a row's key
_COLUMNS = {
    NODES: ("address", "is_root", "kind", "status", "protocol", "phase", "level", "first_seen",
            "last_seen", "successes", "failures", "history", "sub_meters"),
    LINKS: ("src", "dst", "medium", "prior_mean", "prior_weight", "succ", "fail", "t_last",
            "down", "consec_fail", "quality", "periods", "standby"),
    ROUTES: ("address", "rank", "kind", "relays", "media", "p", "cost"),
}


def _rows(topology: Topology, alternates: bool) -> SavedRows:
    nodes = {}
    for n in topology.nodes():
        nodes[(n.address,)] = (
            int(n.address == topology.root), n.kind.value, n.status.value, n.protocol, n.phase,
            n.level, n.first_seen, n.last_seen, n.successes, n.failures, n.history,
            json.dumps(n.sub_meters))
    links = {}
    for u, v, m, est in topology.links():
        # (json.dumps(None) is "null": spelled out, since most links have no periods and a
        # save prices every link of the district, ~78,000 at 2,040 nodes)
        periods = "null" if est.periods is None else \
            json.dumps([[round(a, 4), round(b, 4)] for a, b in est.periods])
        links[(u, v, m)] = (
            est.prior_mean, est.prior_weight, est.succ, est.fail, est.t_last, int(est.down),
            est.consec_fail, est.quality, periods, int(est.standby))
    routes = {}
    for n in topology.nodes():
        if n.address == topology.root:
            continue
        rs = topology.routes(n.address) if alternates else [topology.primary(n.address)]
        for rank, r in enumerate(x for x in rs if x is not None):
            # Rounded: learning nudges every route's p after each exchange; a row rewritten
            # for the fifth decimal would be flash worn for nothing.
            routes[(n.address, rank)] = (r.kind, json.dumps(r.relays), json.dumps(r.media),
                                         round(r.p, 4), round(r.cost, 3))
    return {NODES: nodes, LINKS: links, ROUTES: routes}


def save(db: sqlite_utils.Database, topology: Topology, alternates: bool = True,
         previous: SavedRows | None = None, repairs: RepairState | None = None) -> SavedRows:
    """Write the mesh state; ``alternates=False`` stores primaries only (faster).

    With ``previous`` (what this function returned for the last save *that was committed*),
    only the rows that changed since are written and the rows gone deleted: an hourly save
    of a 2,040-node district rewrote its ~80k rows to the flash every time, most of them
    unchanged. Without it, the tables are rewritten whole. Returns what the tables now hold.

    ``repairs`` (a handful of rows) replaces the ``mesh_repairs`` table whole.

    One transaction of its own, or a savepoint inside the caller's open transaction.
    """
    rows = _rows(topology, alternates)
    written = deleted = 0
    with db.atomic():
        _ensure_tables(db)
        if repairs is not None:
            db.execute(f"DELETE FROM [{REPAIRS}]")
            db.conn.executemany(
                f"INSERT INTO [{REPAIRS}] (address, replaced_by, replaced_at, fruitless, "
                "no_repair_before) VALUES (?, ?, ?, ?, ?)",
                [(a, *v) for a, v in sorted(repairs.items())])
        for table, now in rows.items():
            cols = _COLUMNS[table]
            nkey = _KEYS[table]
            if previous is None:
                db.execute(f"DELETE FROM [{table}]")
                changed = list(now.items())
            else:
                before = previous.get(table, {})
                gone = [k for k in before if k not in now]
                if gone:
                    where = " AND ".join(f"[{c}] = ?" for c in cols[:nkey])
                    db.conn.executemany(f"DELETE FROM [{table}] WHERE {where}", gone)
                    deleted += len(gone)
                changed = [(k, v) for k, v in now.items() if before.get(k) != v]
            if changed:
                # Plain executemany: sqlite-utils' insert_all inspects every value of every
                # row, which was most of a save's CPU (an hourly save of 1,000 nodes: 0.5 s).
                sql = (f"INSERT OR REPLACE INTO [{table}] ({', '.join(f'[{c}]' for c in cols)}) "
                       f"VALUES ({', '.join('?' * len(cols))})")
                db.conn.executemany(sql, [k + v for k, v in changed])
                written += len(changed)
    log.info("mesh: saved %d nodes, %d links, %d routes (%d rows written, %d deleted)",
             len(rows[NODES]), len(rows[LINKS]), len(rows[ROUTES]), written, deleted)
    return rows


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
                           periods, bool(r.get("standby") or 0))
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


def load_repairs(db: sqlite_utils.Database) -> RepairState:
    """What ``save`` stored of the repairs (empty for a store saved before the table)."""
    if not db[REPAIRS].exists():
        return {}
    out: RepairState = {}
    for r in db[REPAIRS].rows:
        try:
            out[str(r["address"])] = (r["replaced_by"], r["replaced_at"], int(r["fruitless"] or 0),
                                      r["no_repair_before"])
        except (TypeError, ValueError) as exc:
            log.warning("mesh: stored repair state of %s rejected: %s", r.get("address"), exc)
    return out
