"""The simulated world: scenario files, generator, importer, meter truth and truth."""

import copy
import math
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from simulator.channel import Channel
from simulator.generate import generate
from simulator.importer import import_feeder
from simulator.meterdata import MeterData
from simulator.scenario import ScenarioError, dump, from_dict, load, loads, to_dict
from simulator.truth import truth

IEEE = Path("/work/shared/data/lv-feeders/ieee-european-lv")


@pytest.mark.parametrize("layout", ["street", "flats", "feeder"])
def test_generated_scenario_round_trips_through_yaml(layout, tmp_path):
    sc = generate(60, layout, seed=2)
    path = tmp_path / "d.yaml"
    dump(sc, path)
    again = load(path)
    assert again == sc
    assert dump(again) == dump(sc)


@pytest.mark.parametrize("layout", ["street", "flats", "feeder"])
@pytest.mark.parametrize("n", [10, 2040])
def test_generator_sizes(layout, n):
    sc = generate(n, layout, seed=1)
    assert len(sc.meters) == n
    assert len({m.address for m in sc.meters}) == n
    if layout == "flats" and n == 2040:
        assert sc.collectors and sc.buildings
        per = {}
        for m in sc.meters:
            if m.collector:
                per[m.collector] = per.get(m.collector, 0) + 1
        assert max(per.values()) <= 32


def test_generator_is_deterministic_by_seed():
    assert dump(generate(200, "street", seed=7)) == dump(generate(200, "street", seed=7))
    assert dump(generate(200, "street", seed=7)) != dump(generate(200, "street", seed=8))
    assert generate(50, "flats", seed=1, channel="rf").channel == "rf"


def test_generator_rejects_bad_sizes():
    with pytest.raises(ScenarioError, match="meters"):
        generate(9, "street")
    with pytest.raises(ScenarioError, match="layout"):
        generate(50, "village")


@pytest.mark.parametrize("n", [40, 300])
def test_feeder_layout_needs_deep_relay_chains(n):
    sc = generate(n, "feeder", seed=3)
    tr = truth(sc, "12:00", registers=False)
    hops = [nd["hops"] for nd in tr["nodes"] if nd["kind"] == "meter" and nd["up"]]
    assert max(h for h in hops if h is not None) >= 5  # 4 or more relays
    assert max(h for h in hops if h is not None) <= 15  # 1376.2 carries at most 15 relays
    assert sum(h is None for h in hops) <= 0.02 * len(hops)


def test_ieee_feeder_imports_and_every_meter_is_reachable():
    sc = import_feeder(IEEE)
    assert len(sc.meters) == 55
    assert len(sc.junctions) == 906 and len(sc.segments) == 905
    assert sc.concentrator.node == sc.transformer.node
    for at in ("03:00", "20:00"):
        tr = truth(sc, at)
        meters = [n for n in tr["nodes"] if n["kind"] == "meter"]
        assert len(meters) == 55
        assert all(n["hops"] is not None and n["hops"] >= 1 for n in meters)
        assert len(tr["registers"]) == 55


# --- validation -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_dict():
    return to_dict(generate(20, "street", seed=1))


def broken(base, mutate):
    d = copy.deepcopy(base)
    mutate(d)
    with pytest.raises(ScenarioError) as err:
        from_dict(d)
    return err.value


def test_validation_errors_name_the_key(base_dict):
    assert broken(base_dict, lambda d: d["meters"][3].update(phase="D")).key == "meters[3].phase"
    assert broken(base_dict, lambda d: d["meters"][0].update(address="12345")).key == "meters[0].address"
    e = broken(base_dict, lambda d: d["meters"][5].update(address=d["meters"][2]["address"]))
    assert e.key == "meters[5].address" and "meters[2].address" in str(e)
    assert broken(base_dict, lambda d: d["segments"][4].__setitem__(1, "nowhere")).key == "segments[4].to"
    assert broken(base_dict, lambda d: d["segments"][2].__setitem__(3, "wet-string")).key == "segments[2].cable"
    assert broken(base_dict, lambda d: d["segments"][2].__setitem__(2, -5)).key == "segments[2].length_m"
    assert broken(base_dict, lambda d: d.update(channel="wifi")).key == "channel"
    assert broken(base_dict, lambda d: d.pop("concentrator")).key == "concentrator"
    assert broken(base_dict, lambda d: d["events"][0].update(address="000000000000")).key == "events[0].address"
    assert broken(base_dict, lambda d: d["meters"][1].update(tariffs=3)).key == "meters[1].tariffs"


def test_disconnected_meter_and_full_collector_are_rejected(base_dict):
    def island(d):
        d["junctions"].append(["island", 5000.0, 5000.0])
        d["meters"][7]["node"] = "island"
    assert broken(base_dict, island).key == "meters[7].node"

    def crowd(d):
        d["collectors"] = [{"address": "880000000001", "node": "T"}]
        for m in d["meters"][:20]:
            m.pop("node")
            m["collector"] = "880000000001"
        for k in range(13):
            d["meters"].append({"address": f"7700000000{k:02d}", "collector": "880000000001", "phase": "A"})
    assert broken(base_dict, crowd).key == "meters[32].collector"


def test_bad_yaml_is_a_scenario_error():
    with pytest.raises(ScenarioError):
        loads("name: [unclosed")
    with pytest.raises(ScenarioError, match="name"):
        loads(yaml.safe_dump({"seed": 1}))


# --- meter truth ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def world():
    sc = generate(120, "street", seed=9)
    return sc, MeterData(sc)


def test_registers_grow_and_tariffs_add_up(world):
    sc, md = world
    for m in sc.meters[:30]:
        prev = None
        for t in (0.0, 3600 * 7.5, 86400.0, 86400 * 2.2):
            total, tariffs = md.energy(m.address, t)
            assert total == sum(tariffs)
            assert total.as_tuple().exponent == -2
            assert len(tariffs) == m.tariffs
            if prev is not None:
                assert total >= prev
            prev = total
        day = md.energy(m.address, 86400 * 2.0)[0] - md.energy(m.address, 86400.0)[0]
        assert Decimal("0.2") * Decimal(str(m.daily_kwh)) < day < 3 * Decimal(str(m.daily_kwh))


def test_valley_tariff_counts_at_night(world):
    sc, md = world
    m = next(m for m in sc.meters if m.tariffs == 4 and m.profile == "residential")
    a, b = md.energy(m.address, 3600.0)[1], md.energy(m.address, 5 * 3600.0)[1]
    assert b[3] > a[3] and b[:3] == a[:3]


def test_relay_open_stops_consumption():
    sc = generate(30, "street", seed=4, events=False)
    md = MeterData(sc)
    a = sc.meters[0].address
    md.set_relay(a, True, 3600.0)
    assert md.energy(a, 3600.0) == md.energy(a, 3 * 3600.0)
    assert md.instant(a, 7200.0).active_kw == 0
    md.set_relay(a, False, 3 * 3600.0)
    assert md.energy(a, 12 * 3600.0)[0] > md.energy(a, 3 * 3600.0)[0]
    assert [op for _, op in md.relay_events(a, 86400.0)] == [False, True]


def test_power_down_and_replacement_events(world):
    sc, md = world
    off, on, rep = (next(e for e in sc.events if type(e).__name__ == k)
                    for k in ("NodeOff", "NodeOn", "MeterReplaced"))
    assert md.energy(off.address, off.at) == md.energy(off.address, on.at)
    [(start, end)] = md.power_downs(off.address, on.at + 1)
    assert abs((start - md.clock(off.address, off.at)).total_seconds()) < 1
    assert end is not None
    assert md.energy(rep.new, rep.at)[0] == 0
    assert md.energy(rep.new, rep.at + 6 * 3600)[0] > 0
    assert md.energy(rep.old, rep.at) == md.energy(rep.old, rep.at + 86400)
    assert not md.present(rep.old, rep.at + 1) and md.present(rep.new, rep.at + 1)


def test_daily_freeze_is_taken_at_the_meters_midnight(world):
    sc, md = world
    for m in sc.meters[:40]:
        fr = md.daily_freeze(m.address, 86400 * 2 + 7200, 1)
        assert fr is not None
        assert fr.time.hour == 0 and fr.time.minute == 0
        err = (md.clock(m.address, 86400 * 2) - sc.start).total_seconds() - 86400 * 2
        if abs(err) < 60:  # an accurate clock freezes at true midnight
            assert fr.time.date() == (sc.start.date().fromordinal(sc.start.toordinal() + 2))
            assert md.energy(m.address, 86400 * 2 - 120)[0] <= fr.forward[0] <= md.energy(m.address, 86400 * 2 + 120)[0]
        older = md.daily_freeze(m.address, 86400 * 2 + 7200, 3)
        assert (fr.time - older.time).days == 2 and older.forward[0] <= fr.forward[0]
    hourly = md.hourly_freeze(sc.meters[0].address, 5.5 * 3600)
    assert hourly.time.minute == 0


def test_clocks_drift_and_some_are_badly_off():
    sc = generate(600, "street", seed=2)
    md = MeterData(sc)
    errs = [abs((md.clock(m.address, 86400.0) - sc.start).total_seconds() - 86400.0) for m in sc.meters]
    assert sum(e > 300 for e in errs) >= 5
    assert sum(e < 60 for e in errs) > 0.9 * len(errs)
    a = sc.meters[0].address
    md.set_clock(a, 1000.0, sc.start.replace(second=0) + (md.clock(a, 0) - md.clock(a, 0)) +
                 __import__("datetime").timedelta(seconds=1000))
    assert abs((md.clock(a, 1000.0) - sc.start).total_seconds() - 1000.0) < 1e-3


def test_summary_meter_balances_with_a_few_percent_line_loss(world):
    sc, md = world
    ll = md.line_loss(0.0, 86400.0)
    assert ll["supplied_kwh"] > ll["billed_kwh"] > 0
    assert 0.01 < ll["loss_rate"] < 0.10
    unmetered = sc.summary_meter.unmetered_kw * 24
    assert ll["loss_kwh"] > unmetered


def test_truth_structure_and_hops_follow_links():
    sc = generate(80, "flats", seed=5)
    tr = truth(sc, "21:00")
    nodes = {n["address"]: n for n in tr["nodes"]}
    pairs = {(lk["src"], lk["dst"]) for lk in tr["links"]}
    assert all(lk["p"] >= tr["usable_p"] for lk in tr["links"])
    for n in tr["nodes"]:
        if n["collector"]:
            assert n["hops"] == nodes[n["collector"]]["hops"] or not n["up"]
        elif n["hops"] and n["hops"] > 1:
            assert any((n["address"], b) in pairs and (b, n["address"]) in pairs
                       and nodes[b]["hops"] == n["hops"] - 1 for b in nodes)
    assert set(tr["registers"]) >= {m.address for m in sc.meters if MeterData(sc).present(m.address, tr["t"])}
    assert not math.isnan(float(tr["summary_meter"]["forward"]))
    assert Channel(sc).nodes[0].kind == "concentrator"
