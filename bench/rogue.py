"""Issue 9 figures: reading a district with rogue mesh nodes against the same district clean.

The trial (``simulator.trial.run_trial``, virtual time, formation from an empty archive then the
daily frozen round) on a generated HPLC street district (fixed seed), once clean and once with
an impostor claiming the meter nearest the transformer (placed at the far end of the street)
and a flooder (40 reports per search) in the middle. Prints and writes ``bench/rogue.json``:
nodes found, the guard's detections, daily-frozen first-attempt and final success of both runs
and the difference, pooled over every daily round (goal: no more than 0.5 points below the
clean run; final success not lower).

    .venv/bin/python bench/rogue.py              # 1,000 meters, 2 days
    .venv/bin/python bench/rogue.py --meters 40
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator import trial as trial_mod  # noqa: E402
from simulator.generate import generate  # noqa: E402
from simulator.rogue import add_rogues, by_distance  # noqa: E402


def one(scenario, meshes: list, days: int) -> dict:
    t0 = time.process_time()
    res = trial_mod.run_trial(scenario, days=days)
    rounds = [r for r in res["rounds"] if r["task"] == "daily_frozen"]
    n = sum(r["meters"] for r in rounds)
    # Pooled over every daily round: one day of 200 meters moves by a point per 2 meters.
    first_attempt = sum(r["first_attempt_rate"] * r["meters"] for r in rounds) / max(1, n)
    final = sum(r["final_rate"] * r["meters"] for r in rounds) / max(1, n)
    daily = {"meters": n, "first_attempt_rate": first_attempt, "final_rate": final}
    stats = meshes[-1].guard.stats
    return {
        "formation_s": res["formation"]["seconds"],
        "nodes_found": res["formation"]["nodes_found"],
        "reachable_found": res["formation"]["reachable_found"],
        "reachable": res["formation"]["reachable"],
        "meters_read": daily["meters"],
        "rounds": len(rounds),
        "first_rate_pct": round(100 * daily["first_attempt_rate"], 2),
        "final_rate_pct": round(100 * daily["final_rate"], 2),
        "detections": dict(stats.detections),
        "suspect_addresses": sorted(stats.suspects),
        "reports_dropped": stats.dropped,
        "new_addresses_refused": stats.refused,
        "cpu_s": round(time.process_time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--days", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    meshes: list = []
    make_mesh = trial_mod._make_mesh

    def spy(*a, **kw):  # keep the trial's mesh to read its guard's counters
        meshes.append(make_mesh(*a, **kw))
        return meshes[-1]
    trial_mod._make_mesh = spy

    clean_sc = generate(args.meters, "street", seed=args.seed, channel="hplc", events=False)
    order = by_distance(clean_sc)
    rogue_sc = add_rogues(clean_sc, [
        {"kind": "impostor", "near": order[-1], "claims": order[0]},
        {"kind": "flooder", "near": order[len(order) // 2], "rate": 40}])
    clean = one(clean_sc, meshes, args.days)
    rogue = one(rogue_sc, meshes, args.days)
    diff = round(rogue["first_rate_pct"] - clean["first_rate_pct"], 2)
    out = {"district": f"street {args.meters} meters hplc seed {args.seed}, {args.days} days",
           "rogues": [{"kind": r.kind, "near": r.near, "claims": r.claims, "rate": r.rate}
                      for r in rogue_sc.rogues],
           "clean": clean, "rogue": rogue, "first_rate_difference_points": diff,
           # The goal is about harm: the rogue run's first-attempt rate may not fall more than
           # 0.5 points below the clean run's, and final success may not fall at all.
           "goal_met": diff >= -0.5 and rogue["final_rate_pct"] >= clean["final_rate_pct"],
           "false_alarms_in_clean_run": sum(clean["detections"].values())}
    for name in ("clean", "rogue"):
        r = out[name]
        print(f"{name:6s} found {r['reachable_found']}/{r['reachable']} (formation "
              f"{r['formation_s']:.0f} s), read {r['meters_read']}, first {r['first_rate_pct']} %, "
              f"final {r['final_rate_pct']} %, detections {r['detections']}, "
              f"refused {r['new_addresses_refused']}")
    print(f"false alarms in the clean run: {out['false_alarms_in_clean_run']}")
    print(f"first-attempt difference {diff:+.2f} points (goal: no worse than -0.5): "
          f"{'met' if out['goal_met'] else 'NOT met'}")
    path = Path(__file__).with_suffix(".json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
