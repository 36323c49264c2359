"""Simulator speed: wall seconds per simulated day of a district in virtual time.

Run: ``.venv/bin/python bench/sim_speed.py [--sizes 200 1000 2040] [--layout street]
[--rounds N]``

For each generated narrowband-PLC (npl) district the bench drives the simulated module with
``ModuleDriver`` over a ``MemoryLink`` the way a concentrator would: at 00:05 every meter is
read once for its daily frozen record (05 06 01 01), and at hh:05 of each of the 24 hours for
its last hourly freeze (05 04 01 01), each read along the best route the truth gives at the
start of the round (this measures the simulator, not the mesh). Rounds that overrun the hour
start late. ``--rounds N`` runs only the first N of the 25 rounds and extrapolates the wall
time to the whole day (the output says so). Figures are printed and written to
``bench/sim_speed.json``. Goal: under 2 minutes per simulated day for 1,000 meters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from datetime import timedelta
from pathlib import Path

from concentrator import dlt645 as d
from plc_driver.driver import ModuleDriver
from simulator.district import SimDistrict
from simulator.generate import generate
from simulator.vtime import VirtualTimeLoop

ROUNDS_PER_DAY = 25  # 1 daily-freeze round + 24 hourly-freeze rounds


async def simulate(meters: int, layout: str, rounds: int, seed: int) -> dict:
    t0 = time.perf_counter()
    sc = generate(meters, layout, seed=seed, channel="npl")
    district = SimDistrict(sc)
    setup_s = time.perf_counter() - t0
    loop = asyncio.get_running_loop()
    driver = ModuleDriver(district.module_link(), comm_mode=1, clock=district.clock)
    await driver.start()
    targets = [m for m in sc.all_meters()]
    stats = {"reads": 0, "ok": 0, "denied_11": 0, "denied_8": 0, "timeouts": 0, "unroutable": 0}
    route_s = 0.0
    vt_start = loop.time()
    t1 = time.perf_counter()
    for r in range(rounds):
        start = 5 * 60 + r * 3600  # 00:05 daily round, then 01:05 ... 24:05 hourly rounds
        delay = start - district.now()
        if delay > 0:
            await asyncio.sleep(delay)
        tr = time.perf_counter()
        routes = district.routes()
        route_s += time.perf_counter() - tr
        t = district.now()
        di = 0x05060101 if r == 0 else 0x05040101
        queue = [m for m in targets if district.meterdata.present(m.address, t)]

        async def worker(queue: list, routes: dict, di: int) -> None:
            while queue:
                m = queue.pop()
                relays = routes.get(m.address)
                if relays is None:
                    stats["unroutable"] += 1
                    continue
                proto, req = (1, d.encode(d.read_request_1997(m.address, 0x9010))) \
                    if m.protocol == "dlt645-1997" else (2, d.encode(d.read_request(m.address, di)))
                res = await driver.read(m.address, relays, req, protocol=proto)
                stats["reads"] += 1
                if res.ok:
                    stats["ok"] += 1
                elif res.deny_code in (8, 11):
                    stats[f"denied_{res.deny_code}"] += 1
                else:
                    stats["timeouts"] += 1

        await asyncio.gather(*(worker(queue, routes, di) for _ in range(driver.max_concurrent)))
    wall = time.perf_counter() - t1
    virtual = loop.time() - vt_start
    medium = district.module.medium
    await driver.close()
    await district.close()
    per_day = wall * ROUNDS_PER_DAY / rounds
    return {
        "meters": meters,
        "layout": layout,
        "setup_s": round(setup_s, 2),
        "rounds": rounds,
        "extrapolated": rounds < ROUNDS_PER_DAY,
        "wall_s": round(wall, 2),
        "route_computation_s": round(route_s, 2),
        "wall_s_per_simulated_day": round(per_day, 1),
        # The truth's best-route computation is the bench's own work, not the simulator's.
        "wall_s_per_simulated_day_without_routes": round((wall - route_s) * ROUNDS_PER_DAY / rounds, 1),
        "virtual_s": round(virtual),
        "virtual_end": str(sc.start + timedelta(seconds=district.now())),
        "transmissions": medium.transmissions,
        "collisions": medium.collisions,
        **stats,
        "read_success": round(stats["ok"] / max(1, stats["reads"]), 4),
        "reads_per_wall_s": round(stats["reads"] / wall, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 1000, 2040])
    ap.add_argument("--layout", default="street")
    ap.add_argument("--rounds", type=int, default=None,
                    help="rounds to run (default: all 25; 2,040 meters: 5, extrapolated)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = []
    for n in args.sizes:
        rounds = args.rounds or (5 if n > 1500 else ROUNDS_PER_DAY)
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            res = runner.run(simulate(n, args.layout, min(rounds, ROUNDS_PER_DAY), args.seed))
        note = f" (measured {res['rounds']} of 25 rounds, extrapolated)" if res["extrapolated"] else ""
        print(f"{n:5d} meters ({args.layout}, npl): {res['wall_s_per_simulated_day']:7.1f} wall s per "
              f"simulated day{note} ({res['wall_s_per_simulated_day_without_routes']} s without the "
              f"bench's route computation); {res['reads']} reads, {res['read_success']:.1%} ok, "
              f"{res['reads_per_wall_s']:.0f} reads/wall s, setup {res['setup_s']} s, "
              f"routes {res['route_computation_s']} s, collisions {res['collisions']}")
        results.append(res)
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps({"goal": "1000 meters: < 120 wall s per simulated day",
                               "command": "python bench/sim_speed.py " + " ".join(
                                   f"--sizes {' '.join(map(str, args.sizes))}".split()),
                               "results": results}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
