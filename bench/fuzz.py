"""Long fuzzing run of every parser harness in tests/test_fuzz.py.

    .venv/bin/python bench/fuzz.py [--examples 20000] [--only gdw13761,config]

Runs each harness for N generated inputs (hypothesis, generate phase only, no shrinking, so a
failure does not stop the run), counts inputs tried, crashes (an exception outside the
parser's documented errors, a broken invariant, or an input over the per-input time limit)
and the slowest input, prints one line per harness and writes ``bench/fuzz.json``. A crash
prints the exception and the first failing input (hex or repr) so it can become a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_fuzz import LIMIT_S, ControlHarness, Harness, harnesses, time_limit  # noqa: E402


def run(h: Harness, examples: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"tried": 0, "crashes": 0, "kinds": {}, "first": None,
                             "slowest_ms": 0.0}

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(h.strategy)
    def body(data: Any) -> None:
        stats["tried"] += 1
        t0 = time.perf_counter()
        try:
            with time_limit(LIMIT_S):
                h.check(data)
        except Exception as exc:  # noqa: BLE001 - a fuzz run records every crash and goes on
            stats["crashes"] += 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            kind = f"{type(exc).__name__} at {Path(where.filename).name}:{where.lineno}"
            stats["kinds"][kind] = stats["kinds"].get(kind, 0) + 1
            if stats["first"] is None:
                shown = data.hex() if isinstance(data, bytes) else repr(data)[:2000]
                stats["first"] = {"error": f"{type(exc).__name__}: {exc}"[:500], "input": shown}
        stats["slowest_ms"] = max(stats["slowest_ms"], (time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    body()
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    stats["slowest_ms"] = round(stats["slowest_ms"], 2)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=20000)
    ap.add_argument("--only", default="", help="comma-separated harness names")
    args = ap.parse_args()
    # Parsers log every rejection (that is their job); millions of lines would bury the result.
    logging.basicConfig(level=logging.CRITICAL)
    control = ControlHarness()
    results: dict[str, Any] = {}
    try:
        only = {n for n in args.only.split(",") if n}
        for h in harnesses(control):
            if only and h.name not in only:
                continue
            r = run(h, args.examples)
            results[h.name] = r
            print(f"{h.name:16s} tried {r['tried']:6d}  crashes {r['crashes']:3d}  "
                  f"{r['seconds']:7.1f} s  slowest {r['slowest_ms']:.1f} ms", flush=True)
            for kind, n in r["kinds"].items():
                print(f"    {n:5d} x {kind}")
            if r["first"]:
                print(f"    first: {r['first']['error']}\n    input: {r['first']['input'][:300]}")
    finally:
        control.close()
    out = {"examples_per_harness": args.examples, "time_limit_s": LIMIT_S,
           "total_tried": sum(r["tried"] for r in results.values()),
           "total_crashes": sum(r["crashes"] for r in results.values()), "harnesses": results}
    path = Path(__file__).with_suffix(".json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"total: {out['total_tried']} inputs, {out['total_crashes']} crashes -> {path}")


if __name__ == "__main__":
    main()
