"""Channel physics of the simulated district: who hears whom, how well, and how long it takes.

Every figure used here is listed, with its source or marked as our choice, in
``docs/channel-model.md``. The model is deliberately *not* kind to the concentrator:
links are asymmetric, noise rises in the evening and near noisy loads, single-phase meters on
another phase are hard to reach, frames fade from one to the next, and nodes die.

API for the device layer (carrier module, node relaying, meter slaves)::

    ch = Channel(scenario, seed=None)         # seed defaults to scenario.seed
    ch.nodes                                  # tuple[Node]: concentrator (CCO), PLC/RF meters, collectors
    ch.node(address) -> Node
    ch.media                                  # ("npl",) / ("hplc",) / ("rf",) / ("hplc", "rf") for dual
    ch.p_success(src, dst, nbytes, t, medium=None) -> float   # mean over fading; 0 if a node is down
    ch.transmit(src, dst, nbytes, t, rng, medium=None, interferers=()) -> bool   # one frame, draws fading
    ch.snr_db(src, dst, t, medium=None) -> float              # mean SNR of the link (-inf: no path)
    ch.interferes(tx, rx, t, medium=None) -> bool             # tx's signal at rx is strong enough to collide
    ch.collision_domain(node, t, medium=None) -> list[str]    # nodes whose transmissions collide at node
    ch.airtime(nbytes, medium=None) -> float                  # seconds on the medium, preamble included
    ch.processing_time(medium=None) -> float                  # per-hop receive/forward processing
    ch.meter_reply_time(meter, req_bytes, reply_bytes, rng, t) -> float | None   # UART + meter latency; None: no reply
    ch.neighbours(node, min_p, t=0.0, medium=None) -> list[tuple[str, float]]    # (address, p) with p >= min_p
    ch.is_up(node, t) -> bool; ch.set_up(node, up, t)         # power state: scenario events + device overrides

``src``/``dst`` are node addresses (12-digit strings). ``t`` is simulated seconds since the
scenario start; the time of day comes from ``scenario.start``. ``medium=None`` means the
channel's medium, and for ``dual`` the better of HPLC and RF for that link (dual-mode modules
choose per link). All randomness comes from the seed: the static per-link and per-node
variation is a hash of (seed, addresses), and per-frame draws use the ``rng`` the caller
passes, so a run with the same seed and the same call sequence is identical.

Meters behind a collector are not channel nodes: they are reached over the collector's
RS-485 bus, whose latency is in :meth:`Channel.meter_reply_time`.
"""

from __future__ import annotations

import bisect
import heapq
import logging
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

from simulator.scenario import MeterInstalled, MeterReplaced, NodeOff, NodeOn, NoiseBurst, Scenario

__all__ = ["Channel", "Node", "MediumParams", "MEDIA", "REF_FRAME_BYTES", "hash_normal"]

log = logging.getLogger(__name__)

# A DL/T 645 energy-block reply (4 FE + 12 header + 4 DI + 20 data + 2) relayed in one
# carrier frame; "p of the reference read frame" in the truth is for this size.
REF_FRAME_BYTES = 42

_SQRT2 = math.sqrt(2.0)
_LOG2 = math.log(2.0)


@dataclass(frozen=True, slots=True)
class MediumParams:
    """Figures of one medium (see docs/channel-model.md for each value's source)."""

    name: str
    bit_rate: float  # application bit rate, bit/s
    frame_overhead_s: float  # preamble, frame control, inter-frame space
    mac_overhead_bytes: int  # MAC/network header and CRC added to the payload
    processing_s: float  # per-hop receive, check, forward
    tx_db: float  # transmit level (PLC: dBuV at the coupler; RF: dBm)
    noise_db: float  # quiet-hour noise floor in the receiver bandwidth (same unit)
    snr50_db: float  # SNR at which the reference frame gets through half the time
    curve_db: float  # width of the waterfall (probit sigma) without fading
    fading_db: float  # frame-to-frame variation of the SNR (Gaussian sigma)
    asym_db: float  # static per-direction link difference (sigma)
    node_db: float  # module-to-module transmit / receiver spread (sigma)
    length_db_per_doubling: float  # extra SNR needed per doubling of frame length
    # PLC along the cable
    att_db_per_km: tuple[tuple[str, float], ...] = ()  # by cable kind
    branch_db: float = 0.0  # per extra branch at a junction passed through
    load_db: float = 0.0  # per meter connected at a junction passed through
    load_cap_db: float = 0.0  # at most this much per junction passed
    end_load_db: float = 0.0  # per doubling of meters at the sending/receiving junction
    cross_phase_db: float = 0.0  # single-phase nodes on different phases
    # RF
    pl0_db: float = 0.0  # path loss at 1 m
    exponent: float = 0.0  # log-distance exponent
    shadow_db: float = 0.0  # log-normal shadowing of the link itself (symmetric, truncated at 2.5 sigma)
    shadow_node_db: float = 0.0  # shadowing owed to each end's surroundings (per node)
    box_db: float = 0.0  # meter box / cabinet loss at each meter or collector

    @property
    def sd_db(self) -> float:
        return math.hypot(self.curve_db, self.fading_db)


MEDIA: dict[str, MediumParams] = {
    "npl": MediumParams(
        name="npl", bit_rate=2400.0, frame_overhead_s=0.040, mac_overhead_bytes=16, processing_s=0.100,
        tx_db=120.0, noise_db=50.0, snr50_db=6.0, curve_db=1.5, fading_db=2.5, asym_db=2.0,
        node_db=1.5, length_db_per_doubling=1.5,
        att_db_per_km=(("underground", 60.0), ("overhead", 40.0), ("service", 60.0)),
        branch_db=1.5, load_db=0.3, load_cap_db=6.0, end_load_db=1.0, cross_phase_db=18.0,
    ),
    "hplc": MediumParams(
        name="hplc", bit_rate=100_000.0, frame_overhead_s=0.004, mac_overhead_bytes=32, processing_s=0.030,
        tx_db=110.0, noise_db=25.0, snr50_db=4.0, curve_db=1.5, fading_db=3.0, asym_db=2.0,
        node_db=1.5, length_db_per_doubling=1.0,
        att_db_per_km=(("underground", 150.0), ("overhead", 100.0), ("service", 150.0)),
        branch_db=1.8, load_db=0.1, load_cap_db=3.0, end_load_db=0.5, cross_phase_db=10.0,
    ),
    "rf": MediumParams(
        name="rf", bit_rate=50_000.0, frame_overhead_s=0.006, mac_overhead_bytes=24, processing_s=0.050,
        tx_db=17.0, noise_db=-110.0, snr50_db=5.0, curve_db=1.5, fading_db=4.0, asym_db=1.5,
        node_db=1.5, length_db_per_doubling=1.0,
        pl0_db=26.0, exponent=3.5, shadow_db=3.0, shadow_node_db=5.0, box_db=10.0,
    ),
}

# Noise above the quiet floor by hour of day (dB). PLC: evening domestic load (LED drivers,
# chargers, TVs) is the worst; RF only sees a little more activity by day. Our choice.
PLC_NOISE_BY_HOUR = (-2, -3, -3, -3, -3, -2, 0, 2, 2, 1, 1, 1, 1, 1, 1, 1, 2, 4, 6, 6, 6, 5, 3, 0)
RF_NOISE_BY_HOUR = (0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0)

# A transmission collides at a receiver when it arrives no weaker than this SNR; below it the
# receiver's own noise floor hides it. Our choice (capture is decided by transmit()).
INTERFERENCE_SNR_DB = 0.0

# Meter UART: DL/T 645-2007 meters default to 2400 baud, 1997 meters to 1200; 8E1 = 11 bits.
_BITS_PER_UART_BYTE = 11


@dataclass(frozen=True, slots=True)
class Node:
    """A device with its own PLC/RF modem: the CCO, a meter (not behind a collector), a collector."""

    index: int
    address: str
    kind: str  # "concentrator", "meter", "collector"
    junction: str
    phase: str  # A, B, C or ABC
    x: float
    y: float


_PHASE_MASK = {"A": 1, "B": 2, "C": 4, "ABC": 7}


def _mix64(x: int) -> int:
    # splitmix64 finaliser: a cheap, well-spread hash for per-link static variation.
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def hash_normal(*keys: int) -> float:
    """Deterministic approximately standard-normal number from integer keys (Irwin-Hall of 4)."""
    h = 0
    for k in keys:
        h = _mix64(h ^ k)
    s = (h & 0xFFFF) + ((h >> 16) & 0xFFFF) + ((h >> 32) & 0xFFFF) + ((h >> 48) & 0xFFFF)
    return (s - 131070.0) / 37837.0  # mean 4*65535/2, sigma 65536*sqrt(4/12)


_M64 = 0xFFFFFFFFFFFFFFFF


def _pair_normal(ka: int, kb: int, salt: int) -> float:
    """Fast deterministic ~N(0,1) for an ordered pair of pre-mixed node keys (one mix)."""
    x = (ka ^ ((kb * 0x9E3779B97F4A7C15 + salt) & _M64)) + 0x9E3779B97F4A7C15 & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    x ^= x >> 31
    return ((x & 0xFFFF) + ((x >> 16) & 0xFFFF) + ((x >> 32) & 0xFFFF) + (x >> 48) - 131070.0) / 37837.0


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / _SQRT2))


_NORMAL = NormalDist()
_CLIP = 2.5  # RF shadowing draws are truncated at +-2.5 sigma (our choice, keeps bounds exact)


def _probit(p: float) -> float:
    return -math.inf if p <= 0 else math.inf if p >= 1 else _NORMAL.inv_cdf(p)


def _clip(z: float) -> float:
    return -_CLIP if z < -_CLIP else _CLIP if z > _CLIP else z


class Channel:
    """Link budgets of a scenario, built once; cheap per-frame queries (see module docstring)."""

    def __init__(self, scenario: Scenario, seed: int | None = None) -> None:
        self.scenario = scenario
        self.seed = scenario.seed if seed is None else seed
        self._seedkey = _mix64(self.seed * 1_000_003 + 17)
        self.media: tuple[str, ...] = ("hplc", "rf") if scenario.channel == "dual" else (scenario.channel,)
        self._day0 = (scenario.start.hour * 3600 + scenario.start.minute * 60 + scenario.start.second)

        # Nodes: the CCO, every meter with its own modem (including future ones), collectors.
        junc = {j.id: j for j in scenario.junctions}
        nodes: list[Node] = []

        def add(address: str, kind: str, jid: str, phase: str) -> None:
            j = junc[jid]
            nodes.append(Node(len(nodes), address, kind, jid, phase, j.x, j.y))

        add(scenario.concentrator.address, "concentrator", scenario.concentrator.node, "ABC")
        for c in scenario.collectors:
            add(c.address, "collector", c.node, c.phase)
        for m in scenario.all_meters():
            if m.collector is None:
                add(m.address, "meter", m.node, m.phase)
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self._index = {n.address: n.index for n in nodes}
        self._mask = [_PHASE_MASK[n.phase] for n in nodes]
        self._akey = [int(n.address) for n in nodes]
        self._nkey = [_mix64(self._seedkey ^ k) for k in self._akey]  # per-node key for link hashes

        # Junctions as integers; meters (loads) per junction for the PLC load terms.
        self._jids = [j.id for j in scenario.junctions]
        jix = {jid: k for k, jid in enumerate(self._jids)}
        self._jix = jix
        self._njunc = [jix[n.junction] for n in nodes]
        self._loads = [0] * len(self._jids)
        for m in scenario.meters:
            self._loads[jix[m.node]] += 1
        self._at_junction: dict[int, list[int]] = {}
        for n in nodes:
            self._at_junction.setdefault(jix[n.junction], []).append(n.index)

        # Per-node static variation and per-medium noise by hour.
        self._tx: dict[str, list[float]] = {}
        self._noise: dict[str, list[list[float]]] = {}
        self._box: list[float] = [0.0 if n.kind == "concentrator" else 1.0 for n in nodes]
        # RF: the part of the shadowing owed to each end's surroundings (per node) and the
        # meter-box loss, as one per-node figure; zero for PLC media.
        self._rf_end: list[float] = [0.0] * len(nodes)
        if "rf" in self.media:
            rf = MEDIA["rf"]
            self._rf_end = [rf.shadow_node_db * _clip(hash_normal(self._seedkey, self._akey[n.index], 5))
                            + rf.box_db * self._box[n.index] for n in nodes]
        for name in self.media:
            mp = MEDIA[name]
            tx = []
            for n in nodes:
                off = mp.node_db * hash_normal(self._seedkey, self._akey[n.index], 1)
                # A few modules are weak (bad coupler, damaged capacitor): our choice, 2 %.
                if (_mix64(self._seedkey ^ self._akey[n.index] ^ 0x5EED) % 1000) < 20:
                    off -= 6.0
                tx.append(mp.tx_db + off)
            self._tx[name] = tx
            self._noise[name] = [[0.0] * 24 for _ in nodes]
        self._cable_km: dict[str, float] = {}

        # PLC: junction-to-junction loss for junctions that host nodes, within a cut-off.
        self._plc_loss: dict[str, dict[int, dict[int, float]]] = {}
        self._passl: dict[str, list[float]] = {}
        self._adj: list[list[tuple[int, float, str]]] = [[] for _ in self._jids]
        for s in scenario.segments:
            kind = scenario.cable(s.cable).kind
            a, b = jix[s.a], jix[s.b]
            self._adj[a].append((b, s.length_m / 1000.0, kind))
            self._adj[b].append((a, s.length_m / 1000.0, kind))
        for name in self.media:
            if name != "rf":
                self._plc_loss[name] = self._build_plc(MEDIA[name])
        self._build_noise()

        # Power state: scenario events as (t, up) change lists per node.
        self._changes: dict[int, list[tuple[float, bool]]] = {}
        self._build_power_changes()
        self._bursts: list[tuple[float, float, dict[str, dict[int, float]]]] = []
        self._build_bursts()
        self._walls: dict[tuple[int, int], float] = {}
        self._grid: dict[tuple[int, int], list[int]] = {}
        self._grid_m = 250.0
        if "rf" in self.media:
            for k, idx in self._at_junction.items():
                n = nodes[idx[0]]
                self._grid.setdefault((int(n.x // self._grid_m), int(n.y // self._grid_m)), []).append(k)
        log.info("channel built: %d nodes, media %s, scenario %s", len(nodes), "/".join(self.media),
                 scenario.name)

    # -- construction helpers ------------------------------------------------------------------
    def _cutoff(self, mp: MediumParams) -> float:
        # Loss beyond which even the best module pair at the quietest hour, with +3.5 sigma of
        # link asymmetry and a +3.5 sigma fade, has p < 1e-3: such pairs are never stored.
        return (mp.tx_db + 3 * mp.node_db) - (mp.noise_db - 3 - 3 * mp.node_db) - mp.snr50_db \
            + 3.5 * math.hypot(mp.sd_db, mp.asym_db)

    def _pass_loss(self, mp: MediumParams, j: int) -> float:
        # Each extra branch shunts part of the signal; several taps at one pole act together,
        # so the loss grows with the log of their number rather than linearly (our choice).
        extra = max(0, len(self._adj[j]) - 2)
        return mp.branch_db * math.log2(1 + extra) + min(mp.load_cap_db, mp.load_db * self._loads[j])

    def _end_loss(self, mp: MediumParams, j: int) -> float:
        return mp.end_load_db * math.log2(1 + self._loads[j])

    def _dijkstra(self, mp: MediumParams, src: int, cutoff: float) -> dict[int, float]:
        """Cable loss from junction src to every junction within ``cutoff`` dB."""
        att = dict(mp.att_db_per_km)
        adj = self._adj
        passl = self._passl.get(mp.name)
        if passl is None:
            passl = self._passl[mp.name] = [self._pass_loss(mp, j) for j in range(len(adj))]
        dist = {src: 0.0}
        heap = [(0.0, src)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist.get(u, math.inf):
                continue
            through = passl[u] if u != src else 0.0
            for v, km, kind in adj[u]:
                nd = d + through + att[kind] * km
                if nd <= cutoff and nd < dist.get(v, math.inf):
                    dist[v] = nd
                    heapq.heappush(heap, (nd, v))
        return dist

    def _build_plc(self, mp: MediumParams) -> dict[int, dict[int, float]]:
        cutoff = self._cutoff(mp)
        hosts = sorted(self._at_junction)
        out: dict[int, dict[int, float]] = {}
        for j in hosts:
            ej = self._end_loss(mp, j)
            dist = self._dijkstra(mp, j, cutoff - ej)
            row = {}
            for k, d in dist.items():
                if k in self._at_junction:
                    loss = d + ej + self._end_loss(mp, k)
                    if loss <= cutoff:
                        row[k] = loss
            out[j] = row
        return out

    def _build_noise(self) -> None:
        for name in self.media:
            mp = MEDIA[name]
            by_hour = RF_NOISE_BY_HOUR if name == "rf" else PLC_NOISE_BY_HOUR
            # Noisy loads only reach PLC receivers, attenuated along the cable like a signal.
            src_at: list[tuple[int, float, int, int]] = []
            if name != "rf":
                for ns in self.scenario.noise_sources:
                    dist = self._dijkstra(mp, self._jix[ns.node], ns.level_db + 10.0)
                    for k, d in dist.items():
                        if k in self._at_junction:
                            src_at.append((k, ns.level_db - d, ns.from_hour, ns.to_hour))
            extra: dict[int, list[tuple[float, int, int]]] = {}
            for k, lvl, fh, th in src_at:
                extra.setdefault(k, []).append((lvl, fh, th))
            for n in self.nodes:
                rx = mp.node_db * hash_normal(self._seedkey, self._akey[n.index], 2)
                row = self._noise[name][n.index]
                srcs = extra.get(self._njunc[n.index], ())
                for h in range(24):
                    base = mp.noise_db + by_hour[h] + rx
                    p = 10 ** (base / 10)
                    for lvl, fh, th in srcs:
                        active = fh <= h < th if fh <= th else (h >= fh or h < th)
                        if active:
                            p += 10 ** ((mp.noise_db + lvl) / 10)
                    row[h] = 10 * math.log10(p)

    def _build_power_changes(self) -> None:
        sc = self.scenario
        for n in self.nodes:
            if n.kind != "meter":
                continue
            t0, t1 = sc.meter_lifetime(n.address)
            ch = []
            if t0 > -math.inf:
                ch += [(-math.inf, False), (t0, True)]
            if t1 < math.inf:
                ch.append((t1, False))
            if ch:
                self._changes[n.index] = ch
        for ev in sc.events:
            if isinstance(ev, NodeOff | NodeOn) and ev.address in self._index:
                i = self._index[ev.address]
                bisect.insort(self._changes.setdefault(i, []), (ev.at, isinstance(ev, NodeOn)))
            elif isinstance(ev, MeterReplaced | MeterInstalled):
                continue

    def _build_bursts(self) -> None:
        for ev in self.scenario.events:
            if not isinstance(ev, NoiseBurst):
                continue
            per_medium: dict[str, dict[int, float]] = {}
            for name in self.media:
                mp = MEDIA[name]
                if name == "rf":
                    # Broadband impulsive noise radiates a little: nodes within 50 m.
                    j = self.scenario.junction(ev.node)
                    per_medium[name] = {n.index: mp.noise_db + ev.level_db - 20
                                        for n in self.nodes if math.hypot(n.x - j.x, n.y - j.y) < 50}
                    continue
                dist = self._dijkstra(mp, self._jix[ev.node], ev.level_db + 10.0)
                lv: dict[int, float] = {}
                for k, d in dist.items():
                    for i in self._at_junction.get(k, ()):
                        lv[i] = mp.noise_db + ev.level_db - d
                per_medium[name] = lv
            self._bursts.append((ev.at, ev.at + ev.duration_s, per_medium))

    # -- power state ---------------------------------------------------------------------------
    def node(self, address: str) -> Node:
        return self.nodes[self._index[address]]

    def has_node(self, address: str) -> bool:
        return address in self._index

    def is_up(self, node: str, t: float) -> bool:
        """Powered and installed at ``t`` (scenario events and device-layer overrides)."""
        i = self._index[node]
        ch = self._changes.get(i)
        if not ch:
            return True
        k = bisect.bisect_right(ch, (t, True)) - 1
        return True if k < 0 else ch[k][1]

    def set_up(self, node: str, up: bool, t: float) -> None:
        """Device layer: the node loses or regains power at ``t`` (adds to scenario events)."""
        i = self._index[node]
        bisect.insort(self._changes.setdefault(i, []), (t, up))
        log.info("node %s %s at t=%.0f", node, "up" if up else "down", t)

    # -- link budget ---------------------------------------------------------------------------
    def _hour(self, t: float) -> int:
        return int((self._day0 + t) // 3600) % 24

    def _noise_at(self, name: str, j: int, t: float) -> float:
        n = self._noise[name][j][self._hour(t)]
        for t0, t1, lv in self._bursts:
            if t0 <= t < t1 and j in lv[name]:
                n = 10 * math.log10(10 ** (n / 10) + 10 ** (lv[name][j] / 10))
        return n

    def _rf_loss(self, i: int, j: int) -> float:
        a, b = self.nodes[i], self.nodes[j]
        d = max(1.0, math.hypot(a.x - b.x, a.y - b.y))
        mp = MEDIA["rf"]
        loss = mp.pl0_db + 10 * mp.exponent * math.log10(d)
        lo, hi = (i, j) if i < j else (j, i)
        loss += mp.shadow_db * _clip(_pair_normal(self._nkey[lo], self._nkey[hi], 3))
        loss += self._rf_end[i] + self._rf_end[j]
        if self.scenario.buildings:
            ja, jb = self._njunc[i], self._njunc[j]
            key = (ja, jb) if ja < jb else (jb, ja)
            w = self._walls.get(key)
            if w is None:
                w = self._walls[key] = _walls_db(self.scenario.buildings, a.x, a.y, b.x, b.y)
            loss += w
        return loss

    def _level(self, name: str, i: int, j: int) -> float:
        """Mean received level of i's transmission at j (dB, unit of the medium)."""
        mp = MEDIA[name]
        if name == "rf":
            loss = self._rf_loss(i, j)
        else:
            row = self._plc_loss[name].get(self._njunc[i])
            loss = row.get(self._njunc[j]) if row is not None else None
            if loss is None:
                return -math.inf
            if not self._mask[i] & self._mask[j]:
                loss += mp.cross_phase_db
        return self._tx[name][i] - loss + mp.asym_db * _pair_normal(self._nkey[i], self._nkey[j], 4)

    def _snr(self, name: str, i: int, j: int, t: float) -> float:
        if i == j:
            return -math.inf
        return self._level(name, i, j) - self._noise_at(name, j, t)

    def _media_for(self, medium: str | None) -> tuple[str, ...]:
        if medium is None:
            return self.media
        if medium not in self.media:
            raise ValueError(f"medium {medium!r} not in this channel ({'/'.join(self.media)})")
        return (medium,)

    def _p(self, name: str, snr: float, nbytes: int) -> float:
        if snr == -math.inf:
            return 0.0
        mp = MEDIA[name]
        need = mp.snr50_db + mp.length_db_per_doubling * math.log2(max(nbytes, 1) / REF_FRAME_BYTES)
        return _phi((snr - need) / mp.sd_db)

    def best_medium(self, src: str, dst: str, t: float) -> str:
        """The medium a dual-mode module would use for this link (the one with the higher p)."""
        i, j = self._index[src], self._index[dst]
        return max(self.media, key=lambda m: self._p(m, self._snr(m, i, j, t), REF_FRAME_BYTES))

    def snr_db(self, src: str, dst: str, t: float, medium: str | None = None) -> float:
        """Mean SNR (dB) of src's frames at dst at time t; -inf when there is no path."""
        i, j = self._index[src], self._index[dst]
        return max(self._snr(m, i, j, t) for m in self._media_for(medium))

    def p_success(self, src: str, dst: str, nbytes: int, t: float, medium: str | None = None) -> float:
        """Probability that one frame of ``nbytes`` from src is received by dst at time t."""
        i, j = self._index[src], self._index[dst]
        if i == j or not (self._up(i, t) and self._up(j, t)):
            return 0.0
        if len(self.media) == 1 and medium in (None, self.media[0]):
            name = self.media[0]
            return self._p(name, self._snr(name, i, j, t), nbytes)
        return max(self._p(m, self._snr(m, i, j, t), nbytes) for m in self._media_for(medium))

    def _up(self, i: int, t: float) -> bool:
        ch = self._changes.get(i)
        if not ch:
            return True
        k = bisect.bisect_right(ch, (t, True)) - 1
        return True if k < 0 else ch[k][1]

    def transmit(self, src: str, dst: str, nbytes: int, t: float, rng: random.Random,
                 medium: str | None = None, interferers: Iterable[str] = ()) -> bool:
        """Send one frame: draw this frame's fading and decide reception.

        ``interferers`` are other nodes transmitting on the same medium at the same time; their
        signals add to the noise at dst (no capture below the SINR needed).
        """
        i, j = self._index[src], self._index[dst]
        if i == j or not (self._up(i, t) and self._up(j, t)):
            return False
        name = self.media[0] if medium is None and len(self.media) == 1 else (
            medium if medium is not None else self.best_medium(src, dst, t))
        self._media_for(name)
        mp = MEDIA[name]
        level = self._level(name, i, j)
        if level == -math.inf:
            return False
        noise_p = 10 ** (self._noise_at(name, j, t) / 10)
        for other in interferers:
            k = self._index[other]
            if k not in (i, j) and self._up(k, t):
                lv = self._level(name, k, j)
                if lv > -math.inf:
                    noise_p += 10 ** (lv / 10)
        snr = level - 10 * math.log10(noise_p) + rng.gauss(0.0, mp.fading_db)
        need = mp.snr50_db + mp.length_db_per_doubling * math.log2(max(nbytes, 1) / REF_FRAME_BYTES)
        return rng.random() < _phi((snr - need) / mp.curve_db)

    def interferes(self, tx: str, rx: str, t: float, medium: str | None = None) -> bool:
        """True when a frame from tx arrives at rx above rx's noise: overlapping frames collide."""
        i, j = self._index[tx], self._index[rx]
        if i == j or not self._up(i, t):
            return False
        return any(self._snr(m, i, j, t) >= INTERFERENCE_SNR_DB for m in self._media_for(medium))

    def collision_domain(self, node: str, t: float, medium: str | None = None) -> list[str]:
        """Addresses whose transmissions overlap-collide at ``node`` (carrier-sense neighbours)."""
        j = self._index[node]
        return [self.nodes[i].address for i in self._candidates(j, medium)
                if i != j and self._up(i, t)
                and any(self._snr(m, i, j, t) >= INTERFERENCE_SNR_DB for m in self._media_for(medium))]

    def _candidates(self, i: int, medium: str | None) -> Iterable[int]:
        """Nodes that can possibly reach or be reached by node i (stored PLC pairs, RF grid)."""
        seen: set[int] = set()
        for name in self._media_for(medium):
            for k, _ in self._junction_pairs(name, self._njunc[i]):
                seen.update(self._at_junction[k])
        seen.discard(i)
        return sorted(seen)

    def _junction_pairs(self, name: str, jj: int, max_loss: float = math.inf) -> Iterable[tuple[int, float]]:
        """(junction, loss shared by all node pairs there) for junctions that host nodes.

        For RF, junctions whose free-path loss alone exceeds ``max_loss`` are skipped.
        """
        if name != "rf":
            return self._plc_loss[name].get(jj, {}).items()
        mp = MEDIA[name]
        a = self.nodes[self._at_junction[jj][0]]
        gx, gy = int(a.x // self._grid_m), int(a.y // self._grid_m)
        r = self._rf_radius_cells()
        d2max = math.inf
        if max_loss < math.inf:
            dmax = 10 ** ((max_loss - mp.pl0_db) / (10 * mp.exponent))
            d2max = dmax * dmax
            r = min(r, int(dmax // self._grid_m) + 1)
        out = []
        for dx in range(-r, r + 1):
            for dy in range(-r, r + 1):
                for k in self._grid.get((gx + dx, gy + dy), ()):
                    b = self.nodes[self._at_junction[k][0]]
                    d2 = (a.x - b.x) ** 2 + (a.y - b.y) ** 2
                    if d2 > d2max:
                        continue
                    d = max(1.0, math.sqrt(d2))
                    loss = mp.pl0_db + 10 * mp.exponent * math.log10(d)
                    if self.scenario.buildings:
                        key = (jj, k) if jj < k else (k, jj)
                        w = self._walls.get(key)
                        if w is None:
                            w = self._walls[key] = _walls_db(self.scenario.buildings, a.x, a.y, b.x, b.y)
                        loss += w
                    out.append((k, loss))
        return out

    def _rf_radius_cells(self) -> int:
        mp = MEDIA["rf"]
        budget = self._cutoff(mp) + _CLIP * (mp.shadow_db + 2 * mp.shadow_node_db)
        dmax = 10 ** ((budget - mp.pl0_db) / (10 * mp.exponent))
        return int(dmax // self._grid_m) + 1

    def links(self, t: float, min_p: float = 0.5, nbytes: int = REF_FRAME_BYTES,
              sources: Iterable[str] | None = None) -> list[tuple[str, str, float, str]]:
        """Every ordered (src, dst, p, medium) with p >= min_p at time t (best medium for dual).

        This is the bulk form of :meth:`p_success` used by the truth: node pairs are taken a
        junction pair at a time and whole groups are skipped when even their best case misses.
        """
        best: dict[tuple[int, int], tuple[float, str]] = {}
        src_idx = [self._index[a] for a in sources] if sources is not None else range(len(self.nodes))
        src_j: dict[int, list[int]] = {}
        for i in src_idx:
            if self._up(i, t):
                src_j.setdefault(self._njunc[i], []).append(i)
        up = [self._up(i, t) for i in range(len(self.nodes))]
        hour = self._hour(t)
        for name in self.media:
            mp = MEDIA[name]
            need = mp.snr50_db + mp.length_db_per_doubling * math.log2(max(nbytes, 1) / REF_FRAME_BYTES)
            sd = mp.sd_db
            tx = self._tx[name]
            noise = [self._noise_at(name, j, t) if self._bursts else self._noise[name][j][hour]
                     for j in range(len(self.nodes))]
            rf = name == "rf"
            end = self._rf_end if rf else [0.0] * len(self.nodes)
            # Best case of each junction's nodes as receivers, and the largest static luck a
            # link can have (asymmetry, link shadowing): a junction pair that misses min_p even
            # then is skipped without looking at its node pairs.
            rx_best = {k: min(noise[j] + end[j] for j in idx) for k, idx in self._at_junction.items()}
            spread = 3.47 * mp.asym_db + (_CLIP * mp.shadow_db if rf else 0.0)
            z = sd * _probit(min_p)
            for jj, srcs in src_j.items():
                tx_best = max(tx[i] - end[i] for i in srcs)
                max_loss = tx_best + spread - min(rx_best.values()) - need - z
                for k, base in self._junction_pairs(name, jj, max_loss):
                    if tx_best - base + spread - rx_best[k] - need < z:
                        continue
                    nkey, mask = self._nkey, self._mask
                    for i in srcs:
                        ki = nkey[i]
                        for j in self._at_junction[k]:
                            if j == i or not up[j]:
                                continue
                            loss = base
                            if rf:
                                lo, hi = (ki, nkey[j]) if i < j else (nkey[j], ki)
                                loss += mp.shadow_db * _clip(_pair_normal(lo, hi, 3)) + end[i] + end[j]
                            elif not mask[i] & mask[j]:
                                loss += mp.cross_phase_db
                            snr = tx[i] - loss + mp.asym_db * _pair_normal(ki, nkey[j], 4) - noise[j]
                            p = _phi((snr - need) / sd)
                            if p >= min_p and p > best.get((i, j), (-1.0, ""))[0]:
                                best[(i, j)] = (p, name)
        nodes = self.nodes
        return [(nodes[i].address, nodes[j].address, p, m) for (i, j), (p, m) in sorted(best.items())]

    def neighbours(self, node: str, min_p: float, t: float = 0.0, medium: str | None = None,
                   nbytes: int = REF_FRAME_BYTES, direction: str = "out") -> list[tuple[str, float]]:
        """Nodes ``node`` reaches (direction "out") or that reach it ("in") with p >= min_p."""
        i = self._index[node]
        out: list[tuple[str, float]] = []
        if not self._up(i, t):
            return out
        for k in self._candidates(i, medium):
            a, b = (i, k) if direction == "out" else (k, i)
            if not self._up(k, t):
                continue
            p = max(self._p(m, self._snr(m, a, b, t), nbytes) for m in self._media_for(medium))
            if p >= min_p:
                out.append((self.nodes[k].address, p))
        return out

    # -- timing --------------------------------------------------------------------------------
    def airtime(self, nbytes: int, medium: str | None = None) -> float:
        """Seconds one frame with ``nbytes`` of payload occupies the medium."""
        mp = MEDIA[medium or self.media[0]]
        return mp.frame_overhead_s + (nbytes + mp.mac_overhead_bytes) * 8 / mp.bit_rate

    def processing_time(self, medium: str | None = None) -> float:
        """Per-hop processing (receive, check, queue, forward) in seconds."""
        return MEDIA[medium or self.media[0]].processing_s

    def meter_reply_time(self, meter: str, req_bytes: int, reply_bytes: int, rng: random.Random,
                         t: float = 0.0) -> float | None:
        """Seconds from handing a DL/T 645 request to the meter's UART to the end of its reply.

        Includes the request and reply at the meter's baud rate, the meter's first-byte latency
        (a per-meter typical value, a few slow meters near 800 ms) and, behind a collector, the
        collector's RS-485 polling. ``None``: the meter does not answer (powered off, removed,
        or an occasional lost reply).
        """
        sc = self.scenario
        m = sc.meter(meter)
        t0, t1 = sc.meter_lifetime(meter)
        if not t0 <= t < t1:
            return None
        host = m.collector if m.collector else meter
        if host in self._index and not self._up(self._index[host], t):
            return None
        if m.collector and not self._meter_powered(meter, t):
            return None
        key = int(meter)
        u = (_mix64(self._seedkey ^ key ^ 0xF1) % 10_000) / 10_000
        flaky = u < 0.01
        if rng.random() < (0.02 if flaky else 0.001):
            return None
        baud = 1200 if m.protocol == "dlt645-1997" else 2400
        uart = (req_bytes + reply_bytes) * _BITS_PER_UART_BYTE / baud
        slow = u > 0.97
        typical = 0.5 + 0.25 * ((_mix64(self._seedkey ^ key ^ 0xF2) % 1000) / 1000) if slow else \
            0.05 + 0.25 * ((_mix64(self._seedkey ^ key ^ 0xF2) % 1000) / 1000)
        first = min(0.8, typical * math.exp(rng.gauss(0.0, 0.2)))
        extra = 0.0
        if m.collector:
            # The collector polls its RS-485 meters in turn and buffers the reply.
            extra = 0.2 + rng.uniform(0.0, 1.3)
        return uart + first + extra

    def _meter_powered(self, meter: str, t: float) -> bool:
        state = True
        for ev in self.scenario.events:
            if ev.at > t:
                break
            if isinstance(ev, NodeOff | NodeOn) and ev.address == meter:
                state = isinstance(ev, NodeOn)
        return state


def _walls_db(buildings: Iterable, x0: float, y0: float, x1: float, y1: float) -> float:
    """Wall loss of the straight path: each building wall the segment crosses costs wall_db."""
    total = 0.0
    for b in buildings:
        if max(x0, x1) < b.x0 or min(x0, x1) > b.x1 or max(y0, y1) < b.y0 or min(y0, y1) > b.y1:
            continue
        inside0 = b.x0 < x0 < b.x1 and b.y0 < y0 < b.y1
        inside1 = b.x0 < x1 < b.x1 and b.y0 < y1 < b.y1
        if inside0 and inside1:
            continue  # same building: inner walls are in the exponent
        if inside0 or inside1:
            total += b.wall_db
        elif _crosses(b, x0, y0, x1, y1):
            total += 2 * b.wall_db
    return total


def _crosses(b, x0: float, y0: float, x1: float, y1: float) -> bool:  # noqa: ANN001
    # Liang-Barsky clip of the segment against the rectangle.
    t0, t1 = 0.0, 1.0
    dx, dy = x1 - x0, y1 - y0
    for p, q in ((-dx, x0 - b.x0), (dx, b.x1 - x0), (-dy, y0 - b.y0), (dy, b.y1 - y0)):
        if p == 0:
            if q < 0:
                return False
            continue
        r = q / p
        if p < 0:
            t0 = max(t0, r)
        else:
            t1 = min(t1, r)
        if t0 > t1:
            return False
    return True
