"""The fault campaign (issue 10): the real daemon against the district and the master, with faults.

Each scenario (``simulator.campaign``) runs the real ``concentrator run`` process against a
20-meter HPLC feeder on ptys and the master station on loopback, in accelerated time (40x:
at 120x reads fail only because of the acceleration), and checks at the end that the master
holds every daily freeze the meters' truth says was taken, exactly once, and that the daemon
is healthy (``status`` answers, watchdog pings flowing):

* ``kill9``: ``--kills`` SIGKILLs at random moments in formation, reading and upload, each
  followed by a restart (what systemd does);
* ``master_outage``: the master unreachable for ``--outage-h`` simulated hours, then back;
  the backlog drains; RSS sampled every simulated half hour while it waits;
* ``failover``: primary down with the backup up; both down; the primary flapping;
* ``module``: the module's pty vanishes mid-read and returns; the module resets and answers
  garbage for a while;
* ``disk``: the store full (size cap) during the round, then room again; then the store file
  corrupted on disk (detected at start, moved aside, a fresh store, an event).

Three more run the same Daemon object in-process in virtual time (``simulator.inprocess``;
days in seconds of wall time, RSS and open files are the whole bench process's):

* ``clock_jump``: the terminal's wall clock steps forward a day, later back an hour;
* ``outage72``: the master unreachable for ``--outage72-h`` (72) simulated hours, then back;
* ``churn``: ``--churn-days`` (7) days of node outages, meter replacements and noise bursts,
  RSS and open files at the start and the end.

Per scenario: readings expected, delivered, lost, duplicated (and retransmitted copies, which
the master deduplicates by upload key); recovery times (wall seconds); peak RSS of the daemon.

    python bench/faults.py                       # the full campaign (100 kills, 72-h outage)
    python bench/faults.py --quick               # 10 kills, 2-h and 24-h outages, 3 days churn
    python bench/faults.py --only kill9 --kills 20

Prints a table and writes ``bench/faults.json`` next to this script (``--json`` elsewhere).
Exit code 1 when any scenario lost or duplicated a reading or ended unhealthy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulator.campaign import DEFAULT_FACTOR, SCENARIOS, VSCENARIOS, run_scenario  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 kills, a 6-h outage")
    ap.add_argument("--only", action="append", choices=sorted({*SCENARIOS, *VSCENARIOS}))
    ap.add_argument("--outage72-h", type=float, default=None)
    ap.add_argument("--churn-days", type=int, default=None)
    ap.add_argument("--kills", type=int, default=None)
    ap.add_argument("--outage-h", type=float, default=None)
    ap.add_argument("--factor", type=float, default=DEFAULT_FACTOR)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: tmp)")
    ap.add_argument("--json", type=Path, default=Path(__file__).with_suffix(".json"))
    args = ap.parse_args(argv)
    kills = args.kills if args.kills is not None else (10 if args.quick else 100)
    # The process harness runs at 40x: 72 simulated hours would be 108 min of wall time, so the
    # process outage is 4 h here and the 72-h outage runs in virtual time (``outage72``).
    outage = args.outage_h if args.outage_h is not None else (2.0 if args.quick else 4.0)
    params = {"kill9": {"kills": kills}, "master_outage": {"hours": outage},
              "outage72": {"hours": args.outage72_h or (24.0 if args.quick else 72.0)},
              "churn": {"days": args.churn_days or (3 if args.quick else 7)}}
    names = args.only or [*SCENARIOS, *VSCENARIOS]
    base = args.out or Path(tempfile.mkdtemp(prefix="faults-"))
    rows = []
    t0 = time.monotonic()
    for name in names:
        print(f"running {name} {params.get(name, {})} in {base / name} ...", flush=True)
        try:
            row = run_scenario(name, base / name, args.factor, **params.get(name, {}))
        except Exception as exc:  # a scenario that cannot run is a failed row, not a crash
            row = {"scenario": name, "error": repr(exc), "healthy": False}
        rows.append(row)
        print(_line(row), flush=True)
    print()
    print("(in-process rows: recovery in simulated s, RSS of the whole bench process)")
    print(f"{'scenario':15} {'expected':>8} {'delivered':>9} {'lost':>5} {'dup':>4} "
          f"{'retx':>5} {'recovery s (max)':>16} {'peak RSS MiB':>12} {'healthy':>7} {'wall s':>7}")
    for r in rows:
        print(_line(r))
    ok = all(r.get("lost") == 0 and r.get("duplicated") == 0 and r.get("healthy")
             for r in rows)
    print(f"\n{'PASS' if ok else 'FAIL'}: {len(rows)} scenarios in "
          f"{time.monotonic() - t0:.0f} s wall; runs kept in {base}")
    args.json.write_text(json.dumps({"factor": args.factor, "kills": kills, "outage_h": outage,
                                     "ok": ok, "scenarios": rows}, default=str, indent=1))
    return 0 if ok else 1


def _line(r: dict) -> str:
    if "error" in r:
        return f"{r['scenario']:15} ERROR {r['error']}"
    rec = r.get("recovery_s") or []
    rss = r.get("peak_rss_kib")
    return (f"{r['scenario']:15} {r['expected']:8} {r['delivered']:9} {r['lost']:5} "
            f"{r['duplicated']:4} {r['retransmitted']:5} "
            f"{(max(rec) if rec else float('nan')):16.1f} "
            f"{(rss / 1024 if rss else float('nan')):12.1f} {str(r['healthy']):>7} "
            f"{r.get('wall_s', 0):7.0f}")


if __name__ == "__main__":
    sys.exit(main())
