"""Channel physics: distance, phase, band, walls, noise, fading and reproducibility."""

import dataclasses
import random
from datetime import datetime

import pytest

from simulator.channel import REF_FRAME_BYTES, Channel
from simulator.generate import generate
from simulator.scenario import (
    Building,
    Concentrator,
    Junction,
    Meter,
    NodeOff,
    NoiseBurst,
    Scenario,
    Segment,
    Transformer,
)

NOON = 12 * 3600.0


def line_district(channel="npl", lengths=(50.0, 950.0), phases=("A", "A", "A"), buildings=(), events=()):
    """T - J1 - J2 - J3 along one cable (x in metres); meters m1 at J1, m2 at J2, m3 at J3."""
    xs = [0.0]
    for ln in lengths + (0.1,):
        xs.append(xs[-1] + ln)
    junctions = tuple(Junction(f"J{i}", x, 0.0) for i, x in enumerate(xs))
    segments = tuple(Segment(f"J{i}", f"J{i + 1}", xs[i + 1] - xs[i], "YJLV-4x150") for i in range(len(xs) - 1))
    meters = tuple(Meter(f"00000000000{k}", f"J{k}", phases[k - 1], "dlt645-2007", "residential", 5.0)
                   for k in (1, 2, 3))
    return Scenario(name="line", seed=3, start=datetime(2024, 3, 1), channel=channel,
                    transformer=Transformer("J0"), concentrator=Concentrator("990000000001", "J0"),
                    junctions=junctions, segments=segments, meters=meters, buildings=tuple(buildings),
                    events=tuple(events))


CCO, M1, M2, M3 = "990000000001", "000000000001", "000000000002", "000000000003"


def test_longer_cable_gives_lower_success():
    ch = Channel(line_district())
    near = ch.p_success(CCO, M1, REF_FRAME_BYTES, NOON)
    far = ch.p_success(CCO, M2, REF_FRAME_BYTES, NOON)
    assert near > 0.99
    assert far < near
    assert ch.snr_db(CCO, M1, NOON) - ch.snr_db(CCO, M2, NOON) > 40


def test_cross_phase_costs_and_three_phase_couples_to_all():
    # m2 and m3 sit at the same far junction; seen from m1 (phase A), the phase-B meter is harder.
    same = Channel(line_district(lengths=(50.0, 400.0), phases=("A", "A", "A")))
    cross = Channel(line_district(lengths=(50.0, 400.0), phases=("A", "A", "B")))
    three = Channel(line_district(lengths=(50.0, 400.0), phases=("A", "A", "ABC")))
    s_same = same.snr_db(M1, M3, NOON)
    s_cross = cross.snr_db(M1, M3, NOON)
    assert s_same - s_cross == pytest.approx(18.0, abs=0.01)
    assert three.snr_db(M1, M3, NOON) == pytest.approx(s_same, abs=0.01)
    assert cross.p_success(M1, M3, REF_FRAME_BYTES, NOON) < same.p_success(M1, M3, REF_FRAME_BYTES, NOON)


def test_hplc_attenuates_more_per_km_than_npl():
    def drop(channel):
        ch = Channel(line_district(channel=channel, lengths=(50.0, 250.0)))
        return ch.snr_db(CCO, M1, NOON) - ch.snr_db(CCO, M2, NOON)

    assert drop("hplc") > drop("npl") + 10


def test_rf_walls_cost():
    open_air = Channel(line_district(channel="rf", lengths=(50.0, 150.0)))
    walled = Channel(line_district(channel="rf", lengths=(50.0, 150.0),
                                   buildings=[Building(100.0, -20.0, 150.0, 20.0, wall_db=12.0)]))
    assert open_air.snr_db(M1, M2, NOON) - walled.snr_db(M1, M2, NOON) == pytest.approx(24.0, abs=0.01)
    assert walled.p_success(M1, M2, REF_FRAME_BYTES, NOON) < open_air.p_success(M1, M2, REF_FRAME_BYTES, NOON)


def test_dual_uses_the_better_medium():
    ch = Channel(line_district(channel="dual", lengths=(50.0, 300.0)))
    p = ch.p_success(CCO, M2, REF_FRAME_BYTES, NOON)
    assert p == max(ch.p_success(CCO, M2, REF_FRAME_BYTES, NOON, m) for m in ("hplc", "rf"))
    with pytest.raises(ValueError):
        ch.p_success(CCO, M2, REF_FRAME_BYTES, NOON, "npl")


@pytest.fixture(scope="module")
def street():
    sc = generate(300, "street", seed=5)
    return sc, Channel(sc)


def test_links_are_asymmetric(street):
    sc, ch = street
    links = {(a, b): p for a, b, p, _ in ch.links(NOON, min_p=0.05)}
    diffs = [abs(p - links[(b, a)]) for (a, b), p in links.items() if (b, a) in links]
    assert max(diffs) > 0.2


def test_evening_is_noisier_than_night(street):
    sc, ch = street
    night = len(ch.links(3 * 3600.0))
    evening = len(ch.links(20 * 3600.0))
    assert evening < night


def test_noise_burst_and_dead_node_hurt():
    base = line_district(lengths=(50.0, 500.0))
    burst = dataclasses.replace(base, events=(NoiseBurst(1000.0, "J2", 35.0, 600.0),
                                              NodeOff(5000.0, M1)))
    ch = Channel(burst)
    before = ch.p_success(CCO, M2, REF_FRAME_BYTES, 900.0)
    during = ch.p_success(CCO, M2, REF_FRAME_BYTES, 1200.0)
    after = ch.p_success(CCO, M2, REF_FRAME_BYTES, 1700.0)
    assert during < before - 0.3 and after == pytest.approx(before)
    assert ch.p_success(CCO, M1, REF_FRAME_BYTES, 4000.0) > 0.9
    assert ch.p_success(CCO, M1, REF_FRAME_BYTES, 6000.0) == 0.0
    ch.set_up(M1, True, 7000.0)
    assert ch.p_success(CCO, M1, REF_FRAME_BYTES, 7100.0) > 0.9


def test_longer_frames_fail_more(street):
    sc, ch = street
    a, b, p, _ = next(lk for lk in ch.links(NOON) if 0.6 < lk[2] < 0.95)
    assert ch.p_success(a, b, 200, NOON) < ch.p_success(a, b, REF_FRAME_BYTES, NOON) < ch.p_success(a, b, 12, NOON)


def test_transmit_draws_match_p_success(street):
    sc, ch = street
    a, b, p, _ = next(lk for lk in ch.links(NOON) if 0.6 < lk[2] < 0.8)
    rng = random.Random(9)
    n = 4000
    hits = sum(ch.transmit(a, b, REF_FRAME_BYTES, NOON, rng) for _ in range(n))
    assert abs(hits / n - p) < 0.04


def test_interferer_at_the_receiver_breaks_a_frame(street):
    sc, ch = street
    a, b, p, _ = next(lk for lk in ch.links(NOON) if lk[2] > 0.99 and lk[0] != sc.concentrator.address)
    loud = max((x for x in ch.collision_domain(b, NOON) if x not in (a, b)),
               key=lambda x: ch.snr_db(x, b, NOON))
    assert ch.interferes(loud, b, NOON)
    rng = random.Random(1)
    alone = sum(ch.transmit(a, b, REF_FRAME_BYTES, NOON, rng) for _ in range(200))
    jammed = sum(ch.transmit(a, b, REF_FRAME_BYTES, NOON, rng, interferers=[loud]) for _ in range(200))
    assert jammed < alone


def test_reproducible_by_seed():
    sc = generate(120, "feeder", seed=11)
    a, b = Channel(sc), Channel(sc)
    la, lb = a.links(NOON), b.links(NOON)
    assert la == lb
    r1, r2 = random.Random(4), random.Random(4)
    src, dst, _, _ = la[len(la) // 2]
    assert [a.transmit(src, dst, 60, NOON, r1) for _ in range(50)] == \
        [b.transmit(src, dst, 60, NOON, r2) for _ in range(50)]
    other = Channel(sc, seed=12)
    assert other.links(NOON) != la


def test_airtime_and_meter_reply_time():
    ch = Channel(line_district())
    assert ch.airtime(100, "npl") > ch.airtime(20, "npl") > 0.1
    hplc = Channel(line_district(channel="hplc"))
    assert hplc.airtime(100) < ch.airtime(100) / 10
    rng = random.Random(2)
    times = [ch.meter_reply_time(M1, 16, 40, rng) for _ in range(300)]
    got = [t for t in times if t is not None]
    assert len(got) >= 280
    assert all(0.05 < t < 0.8 + 56 * 11 / 2400 + 1e-9 for t in got)


def test_collector_meters_answer_slower_and_only_when_powered():
    sc = generate(150, "flats", seed=4)
    ch = Channel(sc)
    behind = next(m for m in sc.meters if m.collector)
    direct = [m for m in sc.meters if not m.collector and m.protocol == "dlt645-2007"]
    rng = random.Random(3)

    def mean(addr):
        ts = [ch.meter_reply_time(addr, 16, 40, rng) for _ in range(200)]
        ts = [t for t in ts if t is not None]
        return sum(ts) / len(ts)

    assert mean(behind.address) > sum(mean(m.address) for m in direct[:5]) / 5 + 0.3
    ch.set_up(behind.collector, False, 100.0)
    assert ch.meter_reply_time(behind.address, 16, 40, rng, t=200.0) is None
