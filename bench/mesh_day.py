"""A day and a night of reading after formation: the mesh's routes by day (issue 4).

``bench/mesh.py`` forms the district at night and judges its routes at 02:30 and, the same
routes, at 12:30. It never reads by day. Here the mesh lives through a day as the daemon's
mesh does (its upkeep every simulated hour) and every meter is read three times:

* **night 1**, 02:00: the night's reading on the routes formation learned;
* **day**, 09:00: pumps and workshops run from 06:00 to 19:00 on the feeders (the noise
  of a house near a pump rises 18-30 dB). Curve reads, on-demand reads and remote control
  all come by day;
* **night 2**, 02:00 the next night: what the day left behind.

Each pass reads every meter found once, up to the module's concurrent reads (the reader's
first pass), then waits for the repairs the failures started. Per pass: the share of meters
read (over the meters the truth can reach at that hour: ``truth_reachable``), the simulated
seconds, why the failed reads failed, and, after the pass, route quality (share of meters whose
primary is within 2 % of the truth's best route at that moment, as ``bench/mesh.py`` judges
it), relays presumed dead (none dies here: every one is a live relay taken for dead) and links
down.

    .venv/bin/python bench/mesh_day.py                      # the districts below (~15 min)
    .venv/bin/python bench/mesh_day.py --case 1000:feeder:hplc --tuning '{"down_hold_s": 3600}'

Prints the figures and writes ``bench/mesh_day.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlite_utils  # noqa: E402

from bench.mesh import energy_request  # noqa: E402
from mesh.engine import Mesh  # noqa: E402
from mesh.topology import Topology  # noqa: E402
from mesh.tuning import EngineTuning  # noqa: E402
from plc_driver.driver import ModuleDriver  # noqa: E402
from simulator.district import SimDistrict  # noqa: E402
from simulator.generate import generate  # noqa: E402
from simulator.module import COMM_MODE  # noqa: E402
from simulator.vtime import VirtualTimeLoop  # noqa: E402

HERE = Path(__file__).resolve().parent
CASES = ("1000:feeder:hplc", "200:feeder:hplc", "1000:street:hplc", "200:feeder:npl")
PASSES = (("night 1", 2), ("day", 9), ("night 2", 2))
UPKEEP_S = 3600.0  # the daemon's mesh upkeep period (concentrator.daemon.MAINTAIN_PERIOD_S)


def _quality(d: SimDistrict, root: str, topo: Topology, found: set[str]) -> float:
    """Share of found meters whose primary is within 2 % of the truth's best route now."""
    t = d.now()
    best = d.routes(t)
    rated = good = 0
    for a in found:
        if a not in best:
            continue
        rated += 1
        primary = topo.primary(a)
        if primary is not None:
            good += d.route_p(primary.path, t) >= d.route_p((root, *best[a], a), t) - 0.02
    return round(good / max(1, rated), 4)


def _next(d: SimDistrict, day0_s: int, hour: int) -> float:
    """Sim-seconds of the next ``hour`` o'clock from now (``day0_s``: the scenario's start,
    seconds into its day)."""
    wall = day0_s + d.now()
    wait = (hour * 3600 - wall) % 86400
    return d.now() + wait


async def _read(mesh: Mesh, slots: asyncio.Semaphore, request: bytes, meter: str,
                ok: set[str], why: collections.Counter[str]) -> None:
    async with slots:
        res = await mesh.exchange(meter, request)
    if res.ok:
        ok.add(meter)
    else:
        why[(res.failure or "?").split(" (")[0]] += 1


async def _district(meters: int, layout: str, channel: str, seed: int,
                    tuning: EngineTuning, db_path: Path) -> dict:
    sc = generate(meters, layout, seed=seed, channel=channel, events=False)
    d = SimDistrict(sc)
    root = sc.concentrator.address
    driver = ModuleDriver(d.module_link(), comm_mode=COMM_MODE[channel], clock=d.clock)
    await driver.start()
    mesh = Mesh(driver, Topology(root), clock=d.clock,
                db=sqlite_utils.Database(db_path, recreate=True), tuning=tuning)
    await mesh.discover()
    await mesh.wait_alternates()
    topo = mesh.topology
    found = {n.address for n in topo.nodes() if n.address != root and n.level}
    day0_s = sc.start.hour * 3600 + sc.start.minute * 60 + sc.start.second

    async def upkeep() -> None:
        while True:
            await asyncio.sleep(UPKEEP_S)
            await mesh.maintain()
    upkeeping = asyncio.create_task(upkeep())
    slots = asyncio.Semaphore(max(1, driver.max_concurrent))
    out = []
    for name, hour in PASSES:
        await asyncio.sleep(_next(d, day0_s, hour) - d.now())
        reachable = set(d.routes(d.now())) & found
        t0 = d.now()
        ok: set[str] = set()
        why: collections.Counter[str] = collections.Counter()

        await asyncio.gather(*(_read(mesh, slots, energy_request(sc, a), a, ok, why)
                               for a in sorted(found)))
        await mesh.wait_repairs()
        out.append({
            "pass": name, "hour": hour, "meters": len(found),
            "truth_reachable": len(reachable),
            "read": len(ok), "read_share_of_reachable": round(len(ok & reachable)
                                                             / max(1, len(reachable)), 4),
            "sim_s": round(d.now() - t0, 1), "why_unread": dict(why.most_common()),
            "route_quality_after": _quality(d, root, topo, found),
            "relays_presumed_dead": len(topo.presumed_dead),
            "links_down": len(topo.down_links()),
        })
    upkeeping.cancel()
    await driver.close()
    await d.close()
    return {"meters": meters, "layout": layout, "channel": channel, "seed": seed,
            "found": len(found), "passes": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", action="append", default=[], metavar="N:LAYOUT:CHANNEL")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tuning", default="{}", metavar="JSON",
                    help="EngineTuning fields to change, e.g. '{\"down_hold_s\": 3600}'")
    ap.add_argument("--out", default=str(HERE / "mesh_day.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    tuning = json.loads(args.tuning)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.case or CASES:
            n, lay, ch = case.split(":")
            w = time.perf_counter()
            with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
                r = runner.run(_district(int(n), lay, ch, args.seed, dataclasses.replace(
                    EngineTuning.for_comm_mode(COMM_MODE[ch]), **tuning), Path(tmp) / "m.db"))
            r["wall_s"] = round(time.perf_counter() - w, 1)
            results.append(r)
            print(f"{lay:7} {n:5} {ch:4}: " + "; ".join(
                f"{p['pass']} {p['hour']:02d}:00 read {p['read']}/{p['meters']} "
                f"({p['read_share_of_reachable']:.1%} of {p['truth_reachable']} reachable) in "
                f"{p['sim_s']:.0f} sim-s, quality after {p['route_quality_after']:.1%}, "
                f"{p['relays_presumed_dead']} live relays presumed dead, "
                f"{p['links_down']} links down" for p in r["passes"])
                + f" [{r['wall_s']} s wall]", flush=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "tuning": tuning,
                                          "districts": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
