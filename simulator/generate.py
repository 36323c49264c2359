"""Synthetic transformer districts: ``generate(meters, layout, seed) -> Scenario``.

Layouts (10 to 2,040 meters; the same arguments always give the same district):

* ``street``: a town district. Main streets leave the transformer in four directions with
  underground cable; side streets branch off every 80 m; houses stand on both sides every
  ~15 m, each fed by a service cable from a joint in front of it. A few shops are three-phase
  commercial meters, some with noisy drives.
* ``flats``: blocks of flats on a grid. Each stairwell has a meter room in the basement with
  18-36 meters on one busbar, fed by a riser from a cabinet that serves a few blocks. About a
  third of the meter rooms have a collector with the room's meters on RS-485 (up to 32 each).
  The blocks are buildings with concrete walls for RF.
* ``feeder``: a rural district. Long overhead feeders run along roads with poles every ~40 m;
  houses sit in hamlets along them and on short branch lines, with irrigation pumps (noisy,
  three-phase) at the field edges. The far hamlets are 2-3 km out, so at the default channel
  (npl) some meters need 4-7 relays.

Every district also gets the summary meter with a little unmetered load, and a few timed
events in the first day (a node outage, a meter replacement, an evening noise burst), so the
concentrator has something to notice.
"""

from __future__ import annotations

import math
import random
from datetime import datetime

from simulator.scenario import (
    CHANNELS,
    Building,
    Collector,
    Concentrator,
    Junction,
    Meter,
    MeterReplaced,
    NodeOff,
    NodeOn,
    NoiseBurst,
    NoiseSource,
    Scenario,
    ScenarioError,
    Segment,
    SummaryMeter,
    Transformer,
)

__all__ = ["generate", "LAYOUTS", "MIN_METERS", "MAX_METERS"]

LAYOUTS = ("street", "flats", "feeder")
MIN_METERS, MAX_METERS = 10, 2040
CCO_ADDRESS = "990000000001"
SUMMARY_ADDRESS = "990000000002"


class _Builder:
    """Accumulates junctions, cables and meters while a layout is drawn."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.junctions: list[Junction] = [Junction("T", 0.0, 0.0)]
        self.segments: list[Segment] = []
        self.meters: list[Meter] = []
        self.collectors: list[Collector] = []
        self.noise: list[NoiseSource] = []
        self.buildings: list[Building] = []
        self._used: set[str] = {CCO_ADDRESS, SUMMARY_ADDRESS}
        self._pos = {"T": (0.0, 0.0)}

    def junction(self, jid: str, x: float, y: float) -> str:
        self.junctions.append(Junction(jid, round(x, 2), round(y, 2)))
        self._pos[jid] = (x, y)
        return jid

    def cable(self, a: str, b: str, cable: str, length: float | None = None) -> None:
        if length is None:
            (xa, ya), (xb, yb) = self._pos[a], self._pos[b]
            # Cables follow the street, not the straight line: 5 % extra for bends and risers.
            length = max(1.0, math.hypot(xa - xb, ya - yb) * 1.05)
        self.segments.append(Segment(a, b, round(length, 2), cable))

    def address(self, prefix: str = "") -> str:
        while True:
            a = prefix + f"{self.rng.randrange(10 ** (12 - len(prefix))):0{12 - len(prefix)}d}"
            if a not in self._used and a != "0" * 12:
                self._used.add(a)
                return a

    def meter(self, node: str, profile: str = "residential", phase: str | None = None,
              collector: str | None = None) -> Meter:
        rng = self.rng
        if phase is None:
            phase = "ABC" if profile in ("commercial", "pump") and rng.random() < 0.6 else rng.choice("ABC")
        if profile == "residential" and rng.random() < 0.05:
            profile = "prosumer"
        daily = {
            "residential": lambda: rng.lognormvariate(math.log(6.0), 0.45),
            "prosumer": lambda: rng.lognormvariate(math.log(8.0), 0.35),
            "commercial": lambda: rng.lognormvariate(math.log(40.0), 0.6),
            "pump": lambda: rng.lognormvariate(math.log(25.0), 0.5),
        }[profile]()
        m = Meter(
            address=self.address("0000"),
            node=node,
            phase=phase,
            protocol="dlt645-1997" if rng.random() < 0.08 else "dlt645-2007",
            profile=profile,
            daily_kwh=round(daily, 2),
            tariffs=1 if rng.random() < 0.05 else 4,
            collector=collector,
        )
        self.meters.append(m)
        return m


def _street(b: _Builder, n: int) -> None:
    rng = b.rng
    pitch, side_len, crossing = 15.0, 240.0, 80.0
    per_side_street = int(2 * side_len // pitch)
    side_streets = max(1, math.ceil(n / per_side_street))
    dirs = [(1, 0), (0, 1), (-1, 0), (0, -1)]
    crossings: dict[int, list[str]] = {d: [] for d in range(4)}
    placed = 0
    for s in range(side_streets):
        d = s % 4
        k = (s // 4) // 2  # two side streets (left/right) per crossing
        left = (s // 4) % 2 == 0
        dx, dy = dirs[d]
        if len(crossings[d]) <= k:
            prev = crossings[d][-1] if crossings[d] else "T"
            dist = 40.0 + crossing * k
            jid = b.junction(f"M{d}_{k}", dx * dist, dy * dist)
            b.cable(prev, jid, "YJLV-4x240" if k < 3 else "YJLV-4x150")
            crossings[d].append(jid)
        base = crossings[d][k]
        bx, by = b._pos[base]
        px, py = (-dy, dx) if left else (dy, -dx)  # perpendicular direction of the side street
        prev = base
        houses = min(per_side_street, n - placed)
        for h in range(math.ceil(houses / 2)):
            along = 10.0 + pitch * h + rng.uniform(-2, 2)
            jx, jy = bx + px * along, by + py * along
            joint = b.junction(f"S{s}_{h}", jx, jy)
            b.cable(prev, joint, "YJLV-4x95")
            prev = joint
            for side in (1, -1):
                if placed >= n:
                    break
                off = rng.uniform(8, 22)
                hx, hy = jx + dx * side * off, jy + dy * side * off
                house = b.junction(f"H{s}_{h}_{'L' if side > 0 else 'R'}", hx, hy)
                b.cable(joint, house, "BV-2x16", off * 1.2 + 3)
                profile = "commercial" if rng.random() < 0.04 else "residential"
                m = b.meter(house, profile)
                if profile == "commercial" and rng.random() < 0.4:
                    b.noise.append(NoiseSource(house, round(rng.uniform(15, 28), 1), 8, 20))
                elif profile == "prosumer" or m.profile == "prosumer":
                    b.noise.append(NoiseSource(house, round(rng.uniform(8, 16), 1), 9, 17))
                placed += 1


def _flats(b: _Builder, n: int) -> None:
    rng = b.rng
    rooms: list[int] = []
    left = n
    while left > 0:
        k = min(left, rng.randint(18, 36))
        rooms.append(k)
        left -= k
    units = 3
    blocks = math.ceil(len(rooms) / units)
    cols = max(1, math.ceil(math.sqrt(blocks)))
    room_i = 0
    cabinet = None
    for bi in range(blocks):
        r, c = divmod(bi, cols)
        x0, y0 = 30.0 + c * 90.0, 30.0 + r * 45.0
        b.buildings.append(Building(x0, y0, x0 + 66.0, y0 + 14.0, 15.0, f"block {bi + 1}"))
        if bi % 3 == 0:
            cabinet = b.junction(f"CAB{bi // 3}", x0 - 10.0, y0 - 8.0)
            b.cable("T", cabinet, "YJLV-4x240", (abs(x0 - 10) + abs(y0 - 8)) * 1.05 + 10)
        assert cabinet is not None
        for u in range(units):
            if room_i >= len(rooms):
                break
            count = rooms[room_i]
            room = b.junction(f"R{room_i}", x0 + 11.0 + 22.0 * u, y0 + 7.0)
            b.cable(cabinet, room, "YJLV-4x95")
            collector = None
            if rng.random() < 0.33:
                collector = b.address("8800")
                b.collectors.append(Collector(collector, room, "ABC"))
            for k in range(count):
                phase = "ABC"[k % 3]
                if collector is not None and k >= 32:
                    collector_k = None
                else:
                    collector_k = collector
                shop = u == 0 and k < 2 and rng.random() < 0.5
                b.meter(room, "commercial" if shop else "residential",
                        None if shop else phase, collector_k)
            if rng.random() < 0.15:
                # Lift motor drive / LED drivers in the basement.
                b.noise.append(NoiseSource(room, round(rng.uniform(10, 20), 1), 6, 23))
            room_i += 1


def _feeder(b: _Builder, n: int) -> None:
    rng = b.rng
    feeders = 1 if n < 60 else min(5, 2 + n // 500)
    shares = [n // feeders + (1 if i < n % feeders else 0) for i in range(feeders)]
    for f, count in enumerate(shares):
        # The first feeder is the long one that needs the deep relay chains.
        if f == 0:
            # Sparse feeders reach further per hop, so they must be longer to need 4+ relays.
            length = 3200.0 if 40 <= n < 600 else 2700.0 if n >= 600 else 1800.0
        else:
            length = min(2000.0, max(600.0, count * 30.0)) * rng.uniform(0.6, 0.9)
        heading = 2 * math.pi * f / feeders + rng.uniform(-0.3, 0.3)
        poles = int(length // 40.0)
        x = y = 0.0
        prev = "T"
        pole_ids: list[str] = []
        for p in range(poles):
            heading += rng.uniform(-0.06, 0.06)  # the road bends
            x += 40.0 * math.cos(heading)
            y += 40.0 * math.sin(heading)
            pid = b.junction(f"F{f}P{p}", x, y)
            b.cable(prev, pid, "JKLYJ-4x70" if p < poles // 2 else "JKLYJ-4x35")
            pole_ids.append(pid)
            prev = pid
        # Hamlets every 220-380 m, first one near the transformer.
        centres = []
        pos = rng.uniform(60, 160)
        while pos < length - 20:
            centres.append(pos)
            pos += rng.uniform(220, 380)
        weights = [rng.uniform(0.6, 1.4) for _ in centres]
        tot = sum(weights)
        per = [max(1, round(count * w / tot)) for w in weights]
        while sum(per) > count:
            per[per.index(max(per))] -= 1
        while sum(per) < count:
            per[rng.randrange(len(per))] += 1
        for h, (centre, k) in enumerate(zip(centres, per, strict=True)):
            branch_prev = None
            for i in range(k):
                along = min(length - 1, max(1.0, centre + rng.uniform(-70, 70)))
                pidx = min(len(pole_ids) - 1, int(along // 40.0))
                pole = pole_ids[pidx]
                px, py = b._pos[pole]
                if k > 12 and i >= k * 0.6:
                    # Larger hamlets have a branch line up a lane.
                    if branch_prev is None:
                        ang = heading + math.pi / 2
                        branch_prev = pole
                        branch_xy = (px, py)
                    bx, by = branch_xy
                    bx += 35 * math.cos(ang)
                    by += 35 * math.sin(ang)
                    branch_xy = (bx, by)
                    lane = b.junction(f"F{f}H{h}L{i}", bx, by)
                    b.cable(branch_prev, lane, "JKLYJ-4x35")
                    branch_prev = lane
                    pole, px, py = lane, bx, by
                off = rng.uniform(12, 40)
                ang2 = rng.uniform(0, 2 * math.pi)
                house = b.junction(f"F{f}H{h}M{i}", px + off * math.cos(ang2), py + off * math.sin(ang2))
                b.cable(pole, house, "BV-2x10")
                profile = "pump" if rng.random() < 0.05 else "residential"
                b.meter(house, profile)
                if profile == "pump":
                    b.noise.append(NoiseSource(house, round(rng.uniform(18, 30), 1), 6, 19))


def generate(meters: int, layout: str = "street", seed: int = 1, channel: str = "npl",
             name: str | None = None, events: bool = True,
             start: datetime = datetime(2024, 3, 1, 0, 0, 0)) -> Scenario:
    """A synthetic district of ``meters`` meters; same arguments -> identical scenario."""
    if layout not in LAYOUTS:
        raise ScenarioError("layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if channel not in CHANNELS:
        raise ScenarioError("channel", f"must be one of {', '.join(CHANNELS)}, got {channel!r}")
    if not MIN_METERS <= meters <= MAX_METERS:
        raise ScenarioError("meters", f"must be {MIN_METERS}..{MAX_METERS}, got {meters}")
    rng = random.Random(f"{layout}:{meters}:{seed}")
    b = _Builder(rng)
    {"street": _street, "flats": _flats, "feeder": _feeder}[layout](b, meters)

    evs = []
    if events:
        plc_meters = [m for m in b.meters if m.collector is None]
        victim = rng.choice(plc_meters)
        t_off = rng.uniform(9, 12) * 3600
        evs += [NodeOff(round(t_off), victim.address), NodeOn(round(t_off + rng.uniform(1, 4) * 3600), victim.address)]
        old = rng.choice([m for m in b.meters if m is not victim])
        evs.append(MeterReplaced(round(rng.uniform(13, 16) * 3600), old.address, b.address("0000")))
        where = rng.choice(b.junctions[1:]).id
        evs.append(NoiseBurst(round(rng.uniform(19, 21) * 3600), where, round(rng.uniform(25, 35), 1),
                              round(rng.uniform(300, 1800))))
    total_kw = sum(m.daily_kwh for m in b.meters) / 24
    return Scenario(
        name=name or f"{layout}-{meters}-s{seed}",
        seed=seed,
        start=start,
        channel=channel,
        transformer=Transformer("T", 400.0 if total_kw < 150 else 630.0 if total_kw < 300 else 1000.0),
        concentrator=Concentrator(CCO_ADDRESS, "T"),
        junctions=tuple(b.junctions),
        segments=tuple(b.segments),
        meters=tuple(b.meters),
        collectors=tuple(b.collectors),
        summary_meter=SummaryMeter(SUMMARY_ADDRESS, round(total_kw * rng.uniform(0.005, 0.02), 2)),
        noise_sources=tuple(b.noise),
        buildings=tuple(b.buildings),
        events=tuple(sorted(evs, key=lambda e: e.at)),
        description=f"generated: layout={layout} meters={meters} seed={seed} channel={channel}",
    )
