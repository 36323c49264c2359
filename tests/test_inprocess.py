"""The real Daemon object against the in-process district and master, in virtual time."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import date, datetime
from decimal import Decimal

from simulator.generate import generate
from simulator.inprocess import VirtualDaemon
from simulator.vtime import VirtualTimeLoop


def test_two_days_of_the_daemon_deliver_every_daily_freeze_once_and_true(tmp_path):
    scenario = generate(12, "street", 3, channel="hplc", events=False)

    async def main() -> tuple[list[dict], VirtualDaemon]:
        async with VirtualDaemon(scenario, tmp_path) as vd:
            await vd.until(lambda: vd.district.wall_time() >= datetime(2024, 3, 3, 2, 0),
                           3 * 86400, step=600)
            return vd.master.uploads(), vd

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        uploads, vd = runner.run(main())
    daily = [u for u in uploads if u["afn"] == 0x0D and u["fn"] == 161]
    per_key = Counter((u["meter"], u["value"]["day"]) for u in daily)
    assert all(u["copies"] == 1 for u in uploads)
    md = vd.district.meterdata
    meters = [m.address for m in scenario.all_meters()]
    protocol = {m.address: int(m.protocol[-4:]) for m in scenario.all_meters()}
    assert set(protocol.values()) == {1997, 2007}
    t_end = (datetime(2024, 3, 3, 12, 0) - scenario.start).total_seconds()

    def true_freeze(meter: str, day: date) -> Decimal:
        # Labelled by the meter's own freeze time (meter clocks drift; the truth knows by how much).
        for n in range(1, 5):
            f = md.daily_freeze(meter, t_end, n)
            if f is not None and f.time.date() == day:
                return f.forward[0]
        raise AssertionError(f"no true freeze of {meter} on {day}")

    for day in (date(2024, 3, 2), date(2024, 3, 3)):
        for meter in meters:
            assert per_key[(meter, day.isoformat())] == 1, (meter, day)
            value = next(u["value"] for u in daily
                         if u["meter"] == meter and u["value"]["day"] == day.isoformat())
            if protocol[meter] == 2007:
                assert Decimal(value["total"]) == true_freeze(meter, day), (meter, day)
            else:
                # DL/T 645-1997 meters have no daily freeze: the register read at 00:05 stands in.
                assert 0 <= Decimal(value["total"]) - true_freeze(meter, day) < 1, (meter, day)


def test_an_unreachable_master_is_listed_in_status_faults_until_it_is_back(tmp_path):
    # A field engineer asking `concentrator status` why the master has no data must see the
    # master station as a fault (with the backlog), and not after it has come back.
    scenario = generate(10, "street", 5, channel="hplc", events=False)

    async def main() -> tuple[dict, dict, dict]:
        async with VirtualDaemon(scenario, tmp_path) as vd:
            d = vd.daemon
            await vd.until(lambda: d.uplink is not None and d.uplink.logged_in, 600)
            await vd.master_down()
            await asyncio.sleep(300)  # one heartbeat period: not yet a fault
            early = await d._h_status({})
            await asyncio.sleep(900)
            down = await d._h_status({})
            await vd.master_up()
            await vd.until(lambda: d.uplink.logged_in, 1800)
            await asyncio.sleep(10)
            back = await d._h_status({})
            return early, down, back

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        early, down, back = runner.run(main())
    assert "master station" not in early["faults"]
    assert "master station" in down["faults"]
    assert "rows waiting" in down["faults"]["master station"]
    assert "master station" not in back["faults"]
