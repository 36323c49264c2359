"""Meter truth: what every simulated meter's registers, clock and event log say at any time.

Values are deterministic functions of (scenario, seed, meter address, time) plus the few
state changes the device layer makes (relay trips, clock settings), so a run is reproducible
and any value can be evaluated for any time without simulating the ones before it.

API for the device layer (DL/T 645 slaves) and the benchmarks::

    md = MeterData(scenario, seed=None)
    md.energy(addr, t, reverse=False) -> (total, (t1, .., tM))   # Decimal kWh, 0.01 resolution
    md.instant(addr, t) -> Instant       # voltage A/B/C, current, kW, pf, Hz
    md.clock(addr, t) -> datetime        # the meter's own (drifting) clock
    md.set_clock(addr, t, meter_time)    # broadcast/point time setting (0x08, 04000102)
    md.daily_freeze(addr, t, n=1) -> Freeze | None     # nth most recent 00:00 freeze (05 06 xx nn)
    md.hourly_freeze(addr, t, n=1) -> Freeze | None    # nth most recent whole-hour freeze (05 04 xx nn)
    md.power_downs(addr, t) -> list[(start, end | None)]   # meter-clock times, newest first (03 11 00 nn)
    md.set_relay(addr, open_, t); md.relay_open(addr, t); md.relay_events(addr, t)
    md.summary_energy(t) -> Decimal      # district summary meter forward total
    md.line_loss(t0, t1) -> dict         # supplied, billed, loss kWh and rate
    md.present(addr, t) -> bool          # installed (not yet replaced) at t

``t`` is scenario seconds (may be negative back to 62 days before the start, for freezes
read on the first day). Tariffs: 1 = sharp (尖), 2 = peak (峰), 3 = flat (平), 4 = valley (谷)
by hour of day (:data:`TARIFF_BY_HOUR`); a 1-tariff meter has one register equal to the total.
The total is the sum of the tariff registers. A meter counts nothing while its relay is
open, while it is powered down (scenario ``node_off``) and before it is installed; a replaced
meter's registers stay at their last value.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from simulator.channel import _mix64, hash_normal
from simulator.scenario import Meter, NodeOff, NodeOn, Scenario

__all__ = ["MeterData", "Freeze", "Instant", "TARIFF_BY_HOUR", "PROFILE_SHAPES"]

log = logging.getLogger(__name__)

DAY = 86400.0
# 尖 10-11, 19-21; 峰 8-10, 11-12, 17-19, 21-22; 平 7-8, 12-17, 22-23; 谷 23-07 (our choice,
# shaped like the four-period tariffs of Chinese provinces).
TARIFF_BY_HOUR = (4, 4, 4, 4, 4, 4, 4, 3, 2, 2, 1, 2, 3, 3, 3, 3, 3, 2, 2, 1, 1, 2, 3, 4)


def _norm(xs: list[float]) -> tuple[float, ...]:
    s = sum(xs)
    return tuple(x / s for x in xs)


# Share of a day's energy in each hour (our choice, typical load curves).
PROFILE_SHAPES: dict[str, tuple[float, ...]] = {
    "residential": _norm([2, 1.6, 1.5, 1.5, 1.5, 1.8, 3, 5, 4.5, 3.5, 3.2, 3.4, 4, 3.5, 3, 3, 3.4, 4.5,
                          6.5, 7.5, 7.5, 6.5, 4.5, 3]),
    "commercial": _norm([1, 1, 1, 1, 1, 1, 1.5, 3, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6.5, 5, 3, 1.5, 1, 1]),
    "pump": _norm([0.3] * 6 + [6, 8, 8, 8, 8, 7, 6, 7, 8, 8, 8, 6] + [0.3] * 6),
    "prosumer": _norm([2, 1.6, 1.5, 1.5, 1.5, 1.8, 3, 4, 2.5, 1.2, 0.6, 0.5, 0.5, 0.5, 0.6, 1.2, 2.5, 4.5,
                       6.5, 7.5, 7.5, 6.5, 4.5, 3]),
}
SOLAR_SHAPE = _norm([0] * 7 + [1, 3, 6, 8, 9, 9, 8, 6, 3, 1] + [0] * 7)
PROSUMER_EXPORT = 0.7  # exported kWh per kWh of daily consumption (our choice)
_STANDBY_KW = 0.01
METER_SELF_KW = 0.0015


@dataclass(frozen=True, slots=True)
class Freeze:
    """A frozen reading: meter-clock time of the freeze and the registers at that moment."""

    time: datetime  # as the meter records it (YYMMDDhhmm)
    forward: tuple[Decimal, tuple[Decimal, ...]]
    reverse: tuple[Decimal, tuple[Decimal, ...]]


@dataclass(frozen=True, slots=True)
class Instant:
    voltage: tuple[Decimal, Decimal, Decimal]  # V per phase, 0.1 V (0 on phases not connected)
    current: tuple[Decimal, Decimal, Decimal]  # A per phase, 0.001 A
    active_kw: Decimal  # 0.0001 kW, negative when exporting
    power_factor: Decimal  # 0.001
    frequency: Decimal  # 0.01 Hz


class _MeterModel:
    __slots__ = ("meter", "key", "shape_prefix", "tariff_share", "solar_prefix", "solar_share", "initial",
                 "initial_rev", "ppm", "clock_sets", "off", "relay", "installed", "removed", "pf",
                 "cum_pos", "cum_neg", "cable_km", "weekend")


class MeterData:
    """Deterministic registers of every meter of a scenario (see module docstring)."""

    def __init__(self, scenario: Scenario, seed: int | None = None) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self._seedkey = _mix64(self.seed * 7_919 + 3)
        self._midnight = datetime.combine(scenario.start.date(), datetime.min.time())
        self._t0 = (scenario.start - self._midnight).total_seconds()  # start as seconds after midnight
        self._models: dict[str, _MeterModel] = {}
        self._km = self._cable_km_from_transformer()
        for m in scenario.all_meters():
            self._models[m.address] = self._model(m)
        self._loss_fraction = self._technical_loss_fraction()
        sm = scenario.summary_meter
        self._summary_key = int(sm.address) if sm else 0
        log.info("meter truth ready: %d meters, technical loss %.2f %%", len(self._models),
                 100 * self._loss_fraction)

    # -- set-up --------------------------------------------------------------------------------
    def _cable_km_from_transformer(self) -> dict[str, float]:
        sc = self.scenario
        adj: dict[str, list[tuple[str, float]]] = {}
        for s in sc.segments:
            adj.setdefault(s.a, []).append((s.b, s.length_m))
            adj.setdefault(s.b, []).append((s.a, s.length_m))
        dist = {sc.transformer.node: 0.0}
        q = deque([sc.transformer.node])
        while q:  # networks are trees or nearly: breadth-first distances are good enough here
            u = q.popleft()
            for v, ln in adj.get(u, ()):
                if v not in dist:
                    dist[v] = dist[u] + ln / 1000.0
                    q.append(v)
        return dist

    def _model(self, m: Meter) -> _MeterModel:
        k = int(m.address)
        md = _MeterModel()
        md.meter = m
        md.key = k
        shape = PROFILE_SHAPES[m.profile]
        md.shape_prefix, md.tariff_share = _prefixes(shape, m.tariffs)
        if m.profile == "prosumer":
            md.solar_prefix, md.solar_share = _prefixes(SOLAR_SHAPE, m.tariffs)
        else:
            md.solar_prefix, md.solar_share = None, None
        t0, t1 = self.scenario.meter_lifetime(m.address)
        md.installed, md.removed = t0, t1
        u = (_mix64(self._seedkey ^ k ^ 0xA1) % 10_000) / 10_000
        if t0 == -math.inf:
            # Years of service already on the register: 200-2,000 days of this load.
            md.initial = m.daily_kwh * (200 + 1800 * u)
            md.initial_rev = md.initial * PROSUMER_EXPORT * 0.3 if m.profile == "prosumer" else 0.0
        else:
            md.initial = md.initial_rev = 0.0
        # Clock: crystal error a few ppm; 2 % with a bad crystal; 3 % set minutes to hours off;
        # 0.5 % a whole day or more off (lost battery, wrong date).
        r = (_mix64(self._seedkey ^ k ^ 0xC1) % 10_000) / 10_000
        md.ppm = 3.0 * hash_normal(self._seedkey, k, 11)
        if r < 0.02:
            md.ppm = math.copysign(50 + 150 * r / 0.02, hash_normal(self._seedkey, k, 12))
        off = 15.0 * hash_normal(self._seedkey, k, 13)
        if 0.02 <= r < 0.05:
            off = math.copysign(300 + 7000 * (r - 0.02) / 0.03, hash_normal(self._seedkey, k, 14))
        elif 0.05 <= r < 0.055:
            off = math.copysign(DAY * (1 + int(10 * (r - 0.05) / 0.005)), hash_normal(self._seedkey, k, 15))
        md.clock_sets = [(-math.inf, off)]  # (true t of setting, offset at that moment)
        md.off = []
        state_on, since = True, -math.inf
        for ev in self.scenario.events:
            if isinstance(ev, NodeOff | NodeOn) and ev.address in (m.address,):
                if isinstance(ev, NodeOff) and state_on:
                    state_on, since = False, ev.at
                elif isinstance(ev, NodeOn) and not state_on:
                    md.off.append((since, ev.at))
                    state_on = True
        if not state_on:
            md.off.append((since, math.inf))
        md.relay = []  # [(t, open)]
        md.pf = 0.85 + 0.13 * ((_mix64(self._seedkey ^ k ^ 0xB1) % 1000) / 1000)
        md.cum_pos, md.cum_neg = [0.0], [0.0]
        md.cable_km = self._km.get(m.node, 0.0)
        md.weekend = 0.6 if m.profile == "commercial" else 1.0
        return md

    def _technical_loss_fraction(self) -> float:
        """I^2 R loss of the cables at the mean load, as a fraction of the energy delivered."""
        sc = self.scenario
        adj: dict[str, list[tuple[str, float, str]]] = {}
        for s in sc.segments:
            adj.setdefault(s.a, []).append((s.b, s.length_m, s.cable))
            adj.setdefault(s.b, []).append((s.a, s.length_m, s.cable))
        load: dict[str, float] = {}
        for m in sc.meters:
            load[m.node] = load.get(m.node, 0.0) + m.daily_kwh / 24.0
        total = sum(load.values())
        if total <= 0:
            return 0.0
        order, parent = [sc.transformer.node], {sc.transformer.node: None}
        i = 0
        while i < len(order):
            u = order[i]
            i += 1
            for v, ln, cab in adj.get(u, ()):
                if v not in parent:
                    parent[v] = (u, ln, cab)
                    order.append(v)
        down = dict(load)
        loss_kw = 0.0
        form_factor = 2.5  # mean of I^2 over (mean I)^2 for peaky household load (our choice)
        for v in reversed(order[1:]):
            u, ln, cab = parent[v]  # type: ignore[misc]
            p_kw = down.get(v, 0.0)
            down[u] = down.get(u, 0.0) + p_kw
            r = sc.cable(cab).r_ohm_per_km * ln / 1000.0
            if sc.cable(cab).kind == "service":
                i_a = p_kw * 1000 / (230 * 0.95)
                loss_kw += 2 * i_a * i_a * r * form_factor / 1000  # phase and neutral
            else:
                i_a = p_kw * 1000 / (3 * 230 * 0.95)
                # Phases are not balanced in the field: 1.5x the balanced loss, neutral included.
                loss_kw += 3 * i_a * i_a * r * form_factor * 1.5 / 1000
        # Every electronic meter draws ~1.5 W on the line side of its own register (our choice,
        # typical of single-phase smart meters): unbilled, so it counts as district loss.
        loss_kw += METER_SELF_KW * len(sc.meters)
        return loss_kw / total

    # -- energy --------------------------------------------------------------------------------
    def _day_factor(self, md: _MeterModel, d: int) -> float:
        f = math.exp(0.2 * hash_normal(self._seedkey, md.key, d & 0xFFFFFFFF, 7))
        if md.weekend != 1.0 and (self._midnight + timedelta(days=d)).weekday() >= 5:
            f *= md.weekend
        return f

    def _days_sum(self, md: _MeterModel, d: int) -> float:
        """Sum of day factors of days [0, d) (negative of [d, 0) when d < 0)."""
        if d >= 0:
            cum = md.cum_pos
            while len(cum) <= d:
                cum.append(cum[-1] + self._day_factor(md, len(cum) - 1))
            return cum[d]
        cum = md.cum_neg
        while len(cum) <= -d:
            cum.append(cum[-1] + self._day_factor(md, -len(cum)))
        return -cum[-d]

    def _cum(self, md: _MeterModel, t: float, solar: bool) -> list[float]:
        """Uninterrupted energy per tariff from the start's midnight to t (kWh, may be < 0)."""
        s = self._t0 + t
        d = math.floor(s / DAY)
        within = (s - d * DAY) / 3600.0
        h = min(23, int(within))
        frac = within - h
        prefix, share = (md.solar_prefix, md.solar_share) if solar else (md.shape_prefix, md.tariff_share)
        daily = md.meter.daily_kwh * (PROSUMER_EXPORT if solar else 1.0)
        full = self._days_sum(md, d) * daily
        today = self._day_factor(md, d) * daily
        out = []
        for k in range(len(share)):
            pk = prefix[k]
            part = pk[h] + (pk[h + 1] - pk[h]) * frac
            out.append(full * share[k] + today * part)
        return out

    def _off_intervals(self, md: _MeterModel) -> list[tuple[float, float]]:
        iv = list(md.off)
        if md.installed > -math.inf:
            iv.append((-math.inf, md.installed))
        if md.removed < math.inf:
            iv.append((md.removed, math.inf))
        opened = None
        for t, op in md.relay:
            if op and opened is None:
                opened = t
            elif not op and opened is not None:
                iv.append((opened, t))
                opened = None
        if opened is not None:
            iv.append((opened, math.inf))
        return iv

    def _registers_float(self, md: _MeterModel, t: float, solar: bool) -> list[float]:
        lo = -self._t0 - 62 * DAY
        t = max(t, lo)
        cur = self._cum(md, t, solar)
        base = self._cum(md, lo, solar)  # time before installation is an off interval
        vals = [c - b for c, b in zip(cur, base, strict=True)]
        for s, e in self._off_intervals(md):
            s, e = max(s, lo), min(e, t)
            if e > s:
                a, b = self._cum(md, s, solar), self._cum(md, e, solar)
                vals = [v - (y - x) for v, x, y in zip(vals, a, b, strict=True)]
        initial = md.initial_rev if solar else md.initial
        if md.installed == -math.inf:
            # initial is the reading at the start's midnight; shift by what fell before it.
            c0 = self._cum(md, -self._t0, solar)
            cl = self._cum(md, lo, solar)
            share = md.solar_share if solar else md.tariff_share
            vals = [v + initial * sh - (z - y) for v, sh, y, z in zip(vals, share, cl, c0, strict=True)]
        return [max(0.0, v) for v in vals]

    def _get(self, addr: str) -> _MeterModel:
        try:
            return self._models[addr]
        except KeyError:
            raise KeyError(f"no meter {addr} in scenario {self.scenario.name}") from None

    def energy(self, addr: str, t: float, reverse: bool = False) -> tuple[Decimal, tuple[Decimal, ...]]:
        """(total, per-tariff registers) in kWh with 0.01 resolution at scenario time t."""
        md = self._get(addr)
        if reverse and md.solar_prefix is None:
            zero = Decimal("0.00")
            return zero, tuple(zero for _ in md.tariff_share)
        vals = self._registers_float(md, t, reverse)
        regs = tuple(Decimal(math.floor(v * 100 + 1e-6)) / 100 for v in vals)
        return sum(regs, Decimal("0.00")).quantize(Decimal("0.01")), tuple(r.quantize(Decimal("0.01")) for r in regs)

    def present(self, addr: str, t: float) -> bool:
        md = self._get(addr)
        return md.installed <= t < md.removed

    def powered(self, addr: str, t: float) -> bool:
        md = self._get(addr)
        return self.present(addr, t) and not any(s <= t < e for s, e in md.off)

    # -- instantaneous -------------------------------------------------------------------------
    def _load_kw(self, md: _MeterModel, t: float) -> float:
        if not self.powered(md.meter.address, t) or self.relay_open(md.meter.address, t):
            return 0.0
        s = self._t0 + t
        d = math.floor(s / DAY)
        h = int((s - d * DAY) // 3600) % 24
        shape = PROFILE_SHAPES[md.meter.profile]
        minute = int(s // 60)
        kw = md.meter.daily_kwh * self._day_factor(md, d) * shape[h] * (
            1 + 0.25 * hash_normal(self._seedkey, md.key, minute & 0xFFFFFFFF, 21))
        kw = max(_STANDBY_KW, kw)
        if md.solar_prefix is not None:
            kw -= md.meter.daily_kwh * PROSUMER_EXPORT * self._day_factor(md, d) * SOLAR_SHAPE[h]
        return kw

    def instant(self, addr: str, t: float) -> Instant:
        """Voltage, current, active power, power factor and frequency at t."""
        md = self._get(addr)
        kw = self._load_kw(md, t)
        s = self._t0 + t
        h = int((s % DAY) // 3600)
        district = PROFILE_SHAPES["residential"][h] * 24  # 1.0 = mean district load
        minute = int(s // 60) & 0xFFFFFFFF
        phases = "ABC" if md.meter.phase == "ABC" else md.meter.phase
        volts, amps = [], []
        powered = self.powered(addr, t)
        for ph in "ABC":
            if ph not in phases or not powered:
                volts.append(Decimal("0.0"))
                amps.append(Decimal("0.000"))
                continue
            v = 232.0 - 22.0 * md.cable_km * district + 1.2 * hash_normal(self._seedkey, md.key, minute, ord(ph))
            volts.append(Decimal(f"{v:.1f}"))
            i_a = abs(kw) * 1000 / (len(phases) * v * md.pf)
            amps.append(Decimal(f"{math.copysign(i_a, kw):.3f}"))
        hz = 50.0 + 0.02 * hash_normal(self._seedkey, minute, 22)
        pf = md.pf if kw != 0 else 1.0
        return Instant(tuple(volts), tuple(amps), Decimal(f"{kw:.4f}"), Decimal(f"{pf:.3f}"),  # type: ignore[arg-type]
                       Decimal(f"{hz:.2f}"))

    # -- clock ---------------------------------------------------------------------------------
    def _clock_s(self, md: _MeterModel, t: float) -> float:
        k = bisect.bisect_right(md.clock_sets, (t, math.inf)) - 1
        ts, off = md.clock_sets[max(k, 0)]
        since = t - (ts if ts > -math.inf else 0.0)
        return t + off + md.ppm * 1e-6 * since

    def clock(self, addr: str, t: float) -> datetime:
        """The meter's own clock at true scenario time t (drift, offsets, settings)."""
        md = self._get(addr)
        return self.scenario.start + timedelta(seconds=self._clock_s(md, t))

    def set_clock(self, addr: str, t: float, meter_time: datetime) -> None:
        """The meter's clock is set to ``meter_time`` at true time t (time sync from the concentrator)."""
        md = self._get(addr)
        off = (meter_time - self.scenario.start).total_seconds() - t
        # Two settings at the same instant (a date write, then a time write): the later wins,
        # whereas insort alone would order them by offset.
        md.clock_sets = [s for s in md.clock_sets if s[0] != t]
        bisect.insort(md.clock_sets, (t, off))
        log.info("meter %s clock set at t=%.0f, error was %.1f s", addr, t,
                 self._clock_s(md, t - 1e-6) - t)

    def _true_time(self, md: _MeterModel, meter_s: float) -> float | None:
        """True t at which the meter clock reads meter_s (None if its clock jumped over it)."""
        sets = md.clock_sets
        for k in range(len(sets) - 1, -1, -1):
            ts, off = sets[k]
            base = ts if ts > -math.inf else 0.0
            t = (meter_s - off + md.ppm * 1e-6 * base) / (1 + md.ppm * 1e-6)
            t_next = sets[k + 1][0] if k + 1 < len(sets) else math.inf
            if (ts == -math.inf or t >= ts) and t < t_next:
                return t
        return None

    def _freeze(self, md: _MeterModel, t: float, n: int, period: float) -> Freeze | None:
        if n < 1:
            raise ValueError("n counts from 1 (the most recent freeze)")
        now = self._clock_s(md, t) + self._t0  # meter seconds after the start's midnight
        last = math.floor(now / period) * period
        mark = last - (n - 1) * period
        while True:
            tt = self._true_time(md, mark - self._t0)
            if tt is None or tt <= t:
                break
            mark -= period  # clock was set back past this mark: the freeze has not happened yet
        if tt is None or tt < md.installed or tt >= md.removed or tt < -self._t0 - 62 * DAY:
            return None
        addr = md.meter.address
        return Freeze(self._midnight + timedelta(seconds=mark), self.energy(addr, tt),
                      self.energy(addr, tt, reverse=True))

    def daily_freeze(self, addr: str, t: float, n: int = 1) -> Freeze | None:
        """The nth most recent daily freeze (taken when the meter clock passed 00:00), as of t."""
        return self._freeze(self._get(addr), t, n, DAY)

    def hourly_freeze(self, addr: str, t: float, n: int = 1) -> Freeze | None:
        """The nth most recent whole-hour freeze as of t."""
        return self._freeze(self._get(addr), t, n, 3600.0)

    # -- events --------------------------------------------------------------------------------
    def power_downs(self, addr: str, t: float) -> list[tuple[datetime, datetime | None]]:
        """Power-down records known at t, newest first, in meter-clock time (end None: still down)."""
        md = self._get(addr)
        out = []
        for s, e in reversed(md.off):
            if s <= t:
                out.append((self.clock(addr, s), self.clock(addr, e) if e <= t else None))
        return out

    def set_relay(self, addr: str, open_: bool, t: float) -> None:
        """The device layer trips (open_=True) or closes the meter's load relay at t."""
        md = self._get(addr)
        bisect.insort(md.relay, (t, open_))
        log.info("meter %s relay %s at t=%.0f", addr, "open" if open_ else "closed", t)

    def relay_open(self, addr: str, t: float) -> bool:
        md = self._get(addr)
        k = bisect.bisect_right(md.relay, (t, True)) - 1
        return md.relay[k][1] if k >= 0 else False

    def relay_events(self, addr: str, t: float) -> list[tuple[datetime, bool]]:
        """(meter-clock time, opened) of relay operations up to t, newest first."""
        md = self._get(addr)
        return [(self.clock(addr, ts), op) for ts, op in reversed(md.relay) if ts <= t]

    # -- district ------------------------------------------------------------------------------
    @property
    def technical_loss_fraction(self) -> float:
        return self._loss_fraction

    def _delivered(self, t: float) -> float:
        total = 0.0
        for md in self._models.values():
            total += sum(self._registers_float(md, t, False)) - (md.initial if md.installed == -math.inf else 0.0)
            if md.solar_prefix is not None:
                # Exported energy flows back through the transformer meter's forward count only
                # net of what neighbours consume: treat it as reducing delivered energy.
                total -= sum(self._registers_float(md, t, True)) - md.initial_rev
        return total

    def summary_energy(self, t: float) -> Decimal:
        """District summary meter forward total (kWh, 0.01): customers + cable loss + unmetered."""
        sm = self.scenario.summary_meter
        unmetered = sm.unmetered_kw if sm else 0.0
        initial = 5000.0 + (_mix64(self._seedkey ^ self._summary_key) % 100_000)
        hours = (t + self._t0 + 62 * DAY) / 3600.0
        v = initial + self._delivered(t) * (1 + self._loss_fraction) + unmetered * hours
        return Decimal(math.floor(v * 100)) / 100

    def line_loss(self, t0: float, t1: float) -> dict[str, float]:
        """Supplied (summary meter), billed (sum of meters, net of export) and lost kWh over [t0, t1]."""
        supplied = float(self.summary_energy(t1) - self.summary_energy(t0))
        billed = 0.0
        for addr in self._models:
            billed += float(self.energy(addr, t1)[0] - self.energy(addr, t0)[0])
            billed -= float(self.energy(addr, t1, True)[0] - self.energy(addr, t0, True)[0])
        loss = supplied - billed
        return {"supplied_kwh": supplied, "billed_kwh": billed, "loss_kwh": loss,
                "loss_rate": loss / supplied if supplied > 0 else 0.0}


def _prefixes(shape: tuple[float, ...], tariffs: int) -> tuple[list[list[float]], list[float]]:
    """Per tariff: cumulative share of the day's energy at each hour boundary, and total share."""
    n = tariffs
    prefix = [[0.0] * 25 for _ in range(n)]
    for k in range(n):
        acc = 0.0
        for h in range(24):
            prefix[k][h] = acc
            if n == 1 or TARIFF_BY_HOUR[h] == k + 1:
                acc += shape[h]
        prefix[k][24] = acc
    return prefix, [p[24] for p in prefix]
