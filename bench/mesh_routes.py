"""Route computation on a synthetic 2,040-node district: speed and route quality.

The district: 2,040 meters uniform in a disc with the concentrator at the centre (a
transformer in the middle of its district, field-figures.md §1.1 "2040 in the STATIC_MASTER
build"), each hearing ~30 neighbours. The true delivery probability of a link falls off with
distance with a cliff (PLC links are good or bad), a ceiling of 0.98 (impulsive noise and
collisions cost every hop something), a per-link random offset and ±5 % up/down asymmetry. Links are learned as the engine would: a search report's quality (true p
mapped to 0..15 with ±1 noise) then ``DRAWS`` Bernoulli draws per direction.

Figures:
* wall time of a full recompute, and of one link change (``observe`` on a random routed link,
  incremental; median of many), of ``routes()`` (primary + 2 alternates) per node, of
  ``rebalance()``;
* route quality: share of meters whose primary route's *true* delivery probability (product
  over hops of the true p both ways) is within 2 % of the best route that exists (goal >= 95 %),
  with learned estimates and with exact estimates (which isolates the cost function);
* incremental == full: routes after the timed changes equal those of a fresh full recompute.

Run: .venv/bin/python bench/mesh_routes.py [deep_share]   (writes bench/mesh_routes.json)
"""

from __future__ import annotations

import json
import math
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mesh.links import LinkEstimate  # noqa: E402
from mesh.routes import RouteConfig  # noqa: E402
from mesh.topology import Topology  # noqa: E402

N = 2040
NEIGHBOURS = 30
DRAWS = 40
SEED = 7
ROOT = "000000000001"


def addr(i: int) -> str:
    return f"{i + 2:012d}"


def district(seed: int = SEED):
    """Positions and true directed link probabilities of a synthetic district."""
    rnd = random.Random(seed)
    pts = [(0.0, 0.0)]
    while len(pts) < N + 1:
        x, y = rnd.uniform(-0.5, 0.5), rnd.uniform(-0.5, 0.5)
        if x * x + y * y <= 0.25:
            pts.append((x, y))
    radius = math.sqrt(NEIGHBOURS * 0.25 / N)  # expected neighbours within radius
    names = [ROOT] + [addr(i) for i in range(N)]
    cell: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(pts):
        cell.setdefault((int(x // radius), int(y // radius)), []).append(i)
    true_p: dict[tuple[str, str], float] = {}
    for i, (x, y) in enumerate(pts):
        cx, cy = int(x // radius), int(y // radius)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in cell.get((cx + dx, cy + dy), ()):
                    if j <= i:
                        continue
                    d = math.hypot(x - pts[j][0], y - pts[j][1])
                    if d > radius:
                        continue
                    # cliff at 80 % of the radius, per-link offset: some short links are bad
                    # ceiling 0.98: impulsive noise and collisions cost every hop something
                    base = 0.98 / (1.0 + math.exp((d / radius - 0.8) / 0.03))
                    base = max(0.0, base - abs(rnd.gauss(0, 0.03)))
                    for a, b in ((i, j), (j, i)):
                        p = min(0.99, max(0.0, base * (1 + rnd.uniform(-0.05, 0.05))))
                        if p > 0.02:
                            true_p[(names[a], names[b])] = p
    return names, true_p


def quality_of(p: float, rnd: random.Random) -> int:
    """Invert the estimator's prior curve (so the quality is informative), with ±1 noise."""
    p = min(0.98, max(0.04, p))
    q = 6 + 1.5 * math.log((p - 0.02) / (0.98 - p)) if p < 0.98 else 15
    return int(min(15, max(0, round(q + rnd.choice((-1, 0, 0, 1))))))


DEEP_SHARE = float(sys.argv[1]) if len(sys.argv) > 1 else RouteConfig().deep_share


def build(names, true_p, exact: bool, seed: int = SEED) -> Topology:
    rnd = random.Random(seed + 1)
    topo = Topology(ROOT, route_cfg=RouteConfig(deep_share=DEEP_SHARE))
    for n in names[1:]:
        topo.add_node(n, status="approved")
    # Bulk load without per-change recompute: fill estimates, then one full recompute.
    for (a, b), p in true_p.items():
        if not topo.graph.has_edge(a, b):
            topo.graph.add_edge(a, b, links={})
        if exact:
            est = LinkEstimate(p, 1e6)
        else:
            est = LinkEstimate()
            est.note_quality(quality_of(p, rnd), topo.link_cfg)
            est.succ = float(sum(rnd.random() < p for _ in range(DRAWS)))
            est.fail = DRAWS - est.succ
        topo.graph.edges[a, b]["links"]["plc"] = est
    return topo


def best_true(names, true_p, max_hops: int) -> dict[str, float]:
    """Best true two-way delivery probability per node within the hop limit (Bellman-Ford)."""
    w: dict[str, list[tuple[str, float]]] = {}
    for (a, b), p in true_p.items():
        q = true_p.get((b, a))
        if q:
            w.setdefault(a, []).append((b, -math.log(p * q)))
    best = {ROOT: 0.0}
    frontier = {ROOT: 0.0}
    for _ in range(max_hops):
        # round k extends only paths of k-1 hops (values from the previous round)
        nxt: dict[str, float] = {}
        for u, du in frontier.items():
            for v, c in w.get(u, ()):
                if v != ROOT and du + c < min(best.get(v, math.inf), nxt.get(v, math.inf)):
                    nxt[v] = du + c
        for v, d in nxt.items():
            if d < best.get(v, math.inf):
                best[v] = d
        frontier = {v: d for v, d in nxt.items() if d <= best[v]}
    return {n: math.exp(-d) for n, d in best.items()}


def true_delivery(route, true_p) -> float:
    p = 1.0
    path = route.path
    for a, b in zip(path, path[1:], strict=False):
        p *= true_p.get((a, b), 0.0) * true_p.get((b, a), 0.0)
    return p


def quality(topo: Topology, names, true_p) -> dict:
    best = best_true(names, true_p, topo.route_cfg.max_hops)
    good = total = unreachable = 0
    ratios = []
    for n in names[1:]:
        if n not in best:
            continue
        total += 1
        r = topo.primary(n)
        if r is None:
            unreachable += 1
            continue
        ratio = true_delivery(r, true_p) / best[n]
        ratios.append(ratio)
        good += ratio >= 0.98
    levels = [len(topo.primary(n).relays) + 1 for n in names[1:] if topo.primary(n)]
    return {
        "meters_reachable_in_truth": total,
        "unreachable_by_planner": unreachable,
        "share_within_2pct": round(good / total, 4),
        "median_ratio": round(statistics.median(ratios), 4),
        "p5_ratio": round(sorted(ratios)[len(ratios) // 20], 4),
        "max_level": max(levels),
        "mean_level": round(statistics.mean(levels), 2),
    }


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> dict:
    names, true_p = district()
    rnd = random.Random(SEED + 2)
    deg = len(true_p) / len(names)
    results: dict = {"deep_share": DEEP_SHARE, "nodes": N, "directed_links": len(true_p), "mean_out_degree": round(deg, 1)}

    topo = build(names, true_p, exact=False)
    fulls = []
    for _ in range(3):
        fulls.append(timed(topo.full_recompute))
        topo.planner.published.clear()  # force the next one to rebuild every route object too
    results["full_recompute_s_median"] = round(statistics.median(fulls), 3)
    topo.full_recompute()
    results["quality_learned"] = quality(topo, names, true_p)

    # One link change at a time: an exchange outcome on a link some primary route uses.
    hops = _route_hops(topo)
    routed = [(a, b) for a, b in true_p if (a, b) in hops]
    change_times = []
    t = 1000.0
    for _ in range(200):
        a, b = rnd.choice(routed)
        t += 10.0
        ok = rnd.random() < true_p[(a, b)]
        change_times.append(timed(lambda a=a, b=b, ok=ok, t=t: topo.observe(a, b, ok, t=t)))
    # and harsher ones: a routed link going down
    down_times = []
    for _ in range(30):
        a, b = rnd.choice(routed)
        down_times.append(timed(lambda a=a, b=b: topo.mark_down(a, b)))
    results["link_change_ms_median"] = round(1000 * statistics.median(change_times), 3)
    results["link_change_ms_p95"] = round(1000 * sorted(change_times)[189], 3)
    results["link_down_ms_median"] = round(1000 * statistics.median(down_times), 3)
    results["link_down_ms_max"] = round(1000 * max(down_times), 3)

    sample = rnd.sample(names[1:], 200)
    route_times = [timed(lambda n=n: topo.routes(n)) for n in sample]
    results["routes_per_node_ms_median"] = round(1000 * statistics.median(route_times), 3)
    with_two_alts = sum(len(topo.routes(n)) >= 3 for n in sample)
    results["share_with_2_alternates"] = round(with_two_alts / len(sample), 3)
    shared = []
    for n in sample:
        rs = topo.routes(n)
        if len(rs) >= 2:
            shared.append(len(set(rs[0].relays) & set(rs[1].relays)))
    results["alt1_shared_relays_mean"] = round(statistics.mean(shared), 3)

    # Incremental == full after all those changes.
    before = {n: topo.planner.primary_path(n) for n in names[1:]}
    # The planner's own rebuild on the same hop costs (the topology re-plans a hop only
    # when its cost moved by replan_threshold, so re-deriving costs would change the input).
    topo.planner.full_recompute(retune=False)
    after = {n: topo.planner.primary_path(n) for n in names[1:]}
    results["incremental_equals_full"] = before == after

    load_before = max(topo.loads().values())
    results["rebalance_s"] = round(timed(topo.rebalance), 3)
    results["max_relay_load_before_after"] = [load_before, max(topo.loads().values())]
    results["relieved_routes"] = len(topo.planner.pins)

    exact = build(names, true_p, exact=True)
    exact.full_recompute()
    results["quality_exact_estimates"] = quality(exact, names, true_p)

    results["python"] = platform.python_version()
    results["machine"] = platform.machine()
    return results


def _route_hops(topo: Topology) -> set[tuple[str, str]]:
    hops = set()
    for target, (relays, _m) in topo.planner.published.items():
        path = (topo.root, *relays, target)
        for a, b in zip(path, path[1:], strict=False):
            hops.add((a, b))
            hops.add((b, a))
    return hops


if __name__ == "__main__":
    res = main()
    for k, v in res.items():
        print(f"{k:32s} {v}")
    Path(__file__).with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
