"""Scenario files: the simulated transformer district as data (YAML <-> frozen dataclasses).

A :class:`Scenario` is everything the simulator knows about a district *before* anything
runs: the LV cable network (junctions with x/y in metres, cable segments), the transformer and
the concentrator's carrier module (CCO) at it, meters with phase/protocol/load profile,
collectors with their RS-485 meters, the district summary meter, the local channel kind
(``npl``, ``hplc``, ``rf`` or ``dual``), buildings (walls for RF), places of noisy loads and
timed events (node off/on, meter replaced, meter installed, noise burst).

Use::

    sc = load("district.yaml")        # raises ScenarioError("meters[3].phase: ...")
    text = dump(sc)                   # YAML text; load(dump(sc)) == sc
    sc = from_dict(mapping)           # same validation, from a parsed mapping

The file format is documented key by key in ``docs/scenario-format.md``. Validation errors
are :class:`ScenarioError` whose ``key`` is the path of the offending key
(``"segments[12]"``, ``"meters[3].phase"``) so a user can find it in the file.

Times in events are seconds after ``start`` (the scenario's wall-clock start, naive local
time of the district); an ISO datetime string is accepted too and converted.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ScenarioError",
    "CableType",
    "Junction",
    "Segment",
    "Meter",
    "Collector",
    "Transformer",
    "Concentrator",
    "SummaryMeter",
    "NoiseSource",
    "Building",
    "Event",
    "NodeOff",
    "NodeOn",
    "MeterReplaced",
    "MeterInstalled",
    "NoiseBurst",
    "Rogue",
    "ROGUE_KINDS",
    "Scenario",
    "CHANNELS",
    "PHASES",
    "PROTOCOLS",
    "PROFILES",
    "BUILTIN_CABLES",
    "load",
    "loads",
    "dump",
    "from_dict",
    "to_dict",
]

FORMAT_VERSION = 1
CHANNELS = ("npl", "hplc", "rf", "dual")
PHASES = ("A", "B", "C", "ABC")
PROTOCOLS = ("dlt645-2007", "dlt645-1997")
PROFILES = ("residential", "commercial", "pump", "prosumer")
CABLE_KINDS = ("underground", "overhead", "service")
MAX_METERS_PER_COLLECTOR = 32
ROGUE_KINDS = ("impostor", "flooder")


class ScenarioError(ValueError):
    """A scenario file or mapping is invalid; ``key`` is the path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


@dataclass(frozen=True, slots=True)
class CableType:
    """An LV cable type: resistance for technical loss, kind for PLC attenuation."""

    name: str
    r_ohm_per_km: float  # positive-sequence resistance R1 of one conductor
    kind: str  # underground (4-core main), overhead (aerial bundled), service (drop to a house)


# Cable types known without a ``cable_types`` section. R1 of the IEEE European LV test feeder
# line codes (LineCode.txt; pandapower drops the dot: "4c_.35" -> "4c_35"), plus generic
# Chinese LV cables (YJLV aluminium XLPE, JKLYJ aerial, BV copper service) at 20 °C.
BUILTIN_CABLES: dict[str, CableType] = {
    c.name: c
    for c in (
        CableType("4c_35", 0.089, "underground"),
        CableType("4c_185", 0.166, "underground"),
        CableType("4c_1", 0.274, "underground"),
        CableType("4c_95_SAC_XC", 0.322, "overhead"),
        CableType("4c_70", 0.446, "underground"),
        CableType("4c_06", 0.469, "underground"),
        CableType("35_SAC_XSC", 0.868, "overhead"),
        CableType("2c_16", 1.15, "service"),
        CableType("2c_0225", 1.257, "service"),
        CableType("2c_007", 3.97, "service"),
        CableType("YJLV-4x240", 0.125, "underground"),
        CableType("YJLV-4x150", 0.206, "underground"),
        CableType("YJLV-4x95", 0.320, "underground"),
        CableType("JKLYJ-4x120", 0.253, "overhead"),
        CableType("JKLYJ-4x70", 0.443, "overhead"),
        CableType("JKLYJ-4x35", 0.868, "overhead"),
        CableType("BV-2x10", 1.83, "service"),
        CableType("BV-2x16", 1.15, "service"),
        CableType("YJV-4x25", 0.727, "service"),
    )
}


@dataclass(frozen=True, slots=True)
class Junction:
    """A point of the cable network (bus, pole, cable joint, meter room)."""

    id: str
    x: float  # metres east of the transformer
    y: float  # metres north of the transformer


@dataclass(frozen=True, slots=True)
class Segment:
    """A cable between two junctions."""

    a: str
    b: str
    length_m: float
    cable: str


@dataclass(frozen=True, slots=True)
class Meter:
    """An electricity meter. ``collector`` set: it talks RS-485 to that collector, not PLC/RF."""

    address: str  # 12 digits as printed on the meter
    node: str  # junction it is connected to (for collector meters: the collector's junction)
    phase: str  # A, B, C or ABC (three-phase meter, couples to every phase)
    protocol: str  # dlt645-2007 or dlt645-1997
    profile: str  # residential, commercial, pump, prosumer
    daily_kwh: float  # mean forward energy per day
    tariffs: int = 4  # tariff registers (1 or 4)
    collector: str | None = None


@dataclass(frozen=True, slots=True)
class Collector:
    """A collector (采集器): a PLC/RF node with up to 32 meters on RS-485 behind it."""

    address: str
    node: str
    phase: str = "ABC"


@dataclass(frozen=True, slots=True)
class Transformer:
    node: str
    rating_kva: float = 630.0


@dataclass(frozen=True, slots=True)
class Concentrator:
    """The concentrator and its carrier module (CCO); the CCO couples to all three phases."""

    address: str  # CCO (module) address, 12 digits
    node: str


@dataclass(frozen=True, slots=True)
class SummaryMeter:
    """District summary meter at the transformer (考核表) and load nobody bills."""

    address: str
    unmetered_kw: float = 0.0  # street lights off the books, theft: constant kW


@dataclass(frozen=True, slots=True)
class NoiseSource:
    """A noisy load (pump drive, PV inverter, LED drivers) injecting PLC noise at a junction."""

    node: str
    level_db: float  # noise above the channel's base floor at that junction
    from_hour: int = 0  # active from this hour of day (inclusive) ...
    to_hour: int = 24  # ... to this hour (exclusive); from > to wraps past midnight


@dataclass(frozen=True, slots=True)
class Building:
    """An axis-aligned building footprint; each wall an RF path crosses costs ``wall_db``."""

    x0: float
    y0: float
    x1: float
    y1: float
    wall_db: float = 12.0
    name: str = ""


@dataclass(frozen=True, slots=True)
class Event:
    """Base of the timed events; ``at`` = seconds after the scenario start."""

    at: float


@dataclass(frozen=True, slots=True)
class NodeOff(Event):
    """A node (meter, collector) loses power: no PLC/RF, no consumption, power-down record."""

    address: str = ""


@dataclass(frozen=True, slots=True)
class NodeOn(Event):
    address: str = ""


@dataclass(frozen=True, slots=True)
class MeterReplaced(Event):
    """The meter ``old`` is removed and ``new`` (registers from zero) takes its place."""

    old: str = ""
    new: str = ""


@dataclass(frozen=True, slots=True)
class MeterInstalled(Event):
    """A new customer's meter appears (registers from zero)."""

    meter: Meter | None = None


@dataclass(frozen=True, slots=True)
class NoiseBurst(Event):
    """Impulsive noise at a junction (welding, a faulty drive) for ``duration_s``."""

    node: str = ""
    level_db: float = 30.0
    duration_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Rogue:
    """A rogue PLC/RF node (``simulator.rogue``): a physical modem of its own at ``node``, not a
    meter of the district (never in the truth's meter list). An impostor answers searches and
    reads as ``claims``; a flooder answers every search it hears with ``rate`` reports."""

    kind: str  # impostor | flooder
    device: str  # its own modem's address (its place in the channel model; never on the wire)
    node: str  # junction it is connected to
    phase: str
    near: str  # as written in the file: a meter address or a junction id
    claims: str | None = None  # the address it answers as (flooder: also reported among its noise)
    rate: int = 1  # reports per search it hears (flooder)
    answers_reads: bool = True  # it also answers reads for the addresses it claims (flooder: off)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    seed: int
    start: datetime
    channel: str
    transformer: Transformer
    concentrator: Concentrator
    junctions: tuple[Junction, ...]
    segments: tuple[Segment, ...]
    meters: tuple[Meter, ...]
    collectors: tuple[Collector, ...] = ()
    summary_meter: SummaryMeter | None = None
    cable_types: tuple[CableType, ...] = ()  # extra/overriding types; BUILTIN_CABLES otherwise
    noise_sources: tuple[NoiseSource, ...] = ()
    buildings: tuple[Building, ...] = ()
    events: tuple[Event, ...] = ()
    description: str = ""
    rogues: tuple[Rogue, ...] = ()
    _index: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        # dataclasses.replace() hands over the old look-up cache: always start a fresh one.
        object.__setattr__(self, "_index", {})

    # -- look-ups (built lazily, cached on the frozen instance) --------------------------------
    def _idx(self) -> dict[str, Any]:
        if not self._index:
            self._index["junction"] = {j.id: j for j in self.junctions}
            self._index["meter"] = {m.address: m for m in self.all_meters()}
            self._index["collector"] = {c.address: c for c in self.collectors}
            cables = dict(BUILTIN_CABLES)
            cables.update({c.name: c for c in self.cable_types})
            self._index["cable"] = cables
        return self._index

    def junction(self, jid: str) -> Junction:
        return self._idx()["junction"][jid]

    def meter(self, address: str) -> Meter:
        """Any meter that exists at some time (initial, replacement or newly installed)."""
        return self._idx()["meter"][address]

    def collector(self, address: str) -> Collector:
        return self._idx()["collector"][address]

    def cable(self, name: str) -> CableType:
        return self._idx()["cable"][name]

    def all_meters(self) -> tuple[Meter, ...]:
        """Initial meters plus those that appear through replacement or installation events."""
        out = list(self.meters)
        by_addr = {m.address: m for m in self.meters}
        for ev in sorted(self.events, key=lambda e: e.at):
            if isinstance(ev, MeterReplaced) and ev.old in by_addr:
                old = by_addr[ev.old]
                new = Meter(ev.new, old.node, old.phase, old.protocol, old.profile,
                            old.daily_kwh, old.tariffs, old.collector)
                by_addr[ev.new] = new
                out.append(new)
            elif isinstance(ev, MeterInstalled) and ev.meter is not None:
                by_addr[ev.meter.address] = ev.meter
                out.append(ev.meter)
        return tuple(out)

    def meter_lifetime(self, address: str) -> tuple[float, float]:
        """(installed_at, removed_at) in scenario seconds; initial meters start at -inf."""
        t0, t1 = -math.inf, math.inf
        for ev in self.events:
            if isinstance(ev, MeterReplaced):
                if ev.new == address:
                    t0 = ev.at
                if ev.old == address:
                    t1 = min(t1, ev.at)
            elif isinstance(ev, MeterInstalled) and ev.meter and ev.meter.address == address:
                t0 = ev.at
        return t0, t1


# --- parsing -----------------------------------------------------------------------------------

def _req(d: Mapping[str, Any], key: str, path: str) -> Any:
    if not isinstance(d, Mapping):
        raise ScenarioError(path, f"must be a mapping, got {type(d).__name__}")
    if key not in d or d[key] is None:
        raise ScenarioError(f"{path}.{key}" if path else key, "is required")
    return d[key]


def _num(v: Any, path: str, *, positive: bool = False, minimum: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ScenarioError(path, f"must be a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise ScenarioError(path, f"must be finite, got {v!r}")
    if positive and f <= 0:
        raise ScenarioError(path, f"must be > 0, got {v!r}")
    if minimum is not None and f < minimum:
        raise ScenarioError(path, f"must be >= {minimum}, got {v!r}")
    return f


def _str(v: Any, path: str) -> str:
    if isinstance(v, bool) or v is None or isinstance(v, list | dict):
        raise ScenarioError(path, f"must be a string, got {v!r}")
    return str(v)


def _address(v: Any, path: str) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        v = f"{v:012d}"  # YAML read an unquoted address as a number
    s = _str(v, path)
    if len(s) != 12 or not s.isdigit():
        raise ScenarioError(path, f"must be a 12-digit address, got {v!r}")
    return s


def _choice(v: Any, choices: tuple[str, ...], path: str) -> str:
    s = _str(v, path)
    if s not in choices:
        raise ScenarioError(path, f"must be one of {', '.join(choices)}, got {v!r}")
    return s


def _time(v: Any, start: datetime, path: str) -> float:
    if isinstance(v, datetime):
        return (v - start).total_seconds()
    if isinstance(v, str):
        try:
            return (datetime.fromisoformat(v) - start).total_seconds()
        except ValueError as exc:
            raise ScenarioError(path, f"must be seconds or an ISO datetime, got {v!r}") from exc
    return _num(v, path)


def _list(d: Mapping[str, Any], key: str, path: str = "") -> list[Any]:
    v = d.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise ScenarioError(key, "must be a list")
    return v


def _meter(d: Any, path: str, collectors: dict[str, Collector]) -> Meter:
    if not isinstance(d, Mapping):
        raise ScenarioError(path, "must be a mapping")
    address = _address(_req(d, "address", path), f"{path}.address")
    collector = d.get("collector")
    if collector is not None:
        collector = _address(collector, f"{path}.collector")
        if collector not in collectors:
            raise ScenarioError(f"{path}.collector", f"no collector {collector}")
        node = _str(d.get("node", collectors[collector].node), f"{path}.node")
    else:
        node = _str(_req(d, "node", path), f"{path}.node")
    tariffs = d.get("tariffs", 4)
    if tariffs not in (1, 4):
        raise ScenarioError(f"{path}.tariffs", f"must be 1 or 4, got {tariffs!r}")
    return Meter(
        address=address,
        node=node,
        phase=_choice(_req(d, "phase", path), PHASES, f"{path}.phase"),
        protocol=_choice(d.get("protocol", "dlt645-2007"), PROTOCOLS, f"{path}.protocol"),
        profile=_choice(d.get("profile", "residential"), PROFILES, f"{path}.profile"),
        daily_kwh=_num(d.get("daily_kwh", 5.0), f"{path}.daily_kwh", minimum=0.0),
        tariffs=int(tariffs),
        collector=collector,
    )


def from_dict(d: Mapping[str, Any]) -> Scenario:
    """Validate a parsed scenario mapping and build the :class:`Scenario`."""
    if not isinstance(d, Mapping):
        raise ScenarioError("", "a scenario must be a YAML mapping at top level")
    fmt = d.get("format", FORMAT_VERSION)
    if fmt != FORMAT_VERSION:
        raise ScenarioError("format", f"unsupported format version {fmt!r} (this is {FORMAT_VERSION})")
    name = _str(_req(d, "name", ""), "name")
    seed = d.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ScenarioError("seed", f"must be an integer, got {seed!r}")
    start_raw = d.get("start", "2024-01-01T00:00:00")
    try:
        start = start_raw if isinstance(start_raw, datetime) else datetime.fromisoformat(str(start_raw))
    except ValueError as exc:
        raise ScenarioError("start", f"must be an ISO datetime, got {start_raw!r}") from exc
    start = start.replace(tzinfo=None)
    channel = _choice(d.get("channel", "npl"), CHANNELS, "channel")

    cable_types = []
    ct = d.get("cable_types") or {}
    if not isinstance(ct, Mapping):
        raise ScenarioError("cable_types", "must be a mapping of name -> {r_ohm_per_km, kind}")
    for cname, spec in ct.items():
        p = f"cable_types.{cname}"
        cable_types.append(CableType(
            str(cname),
            _num(_req(spec, "r_ohm_per_km", p), f"{p}.r_ohm_per_km", positive=True),
            _choice(spec.get("kind", "underground"), CABLE_KINDS, f"{p}.kind"),
        ))
    known_cables = set(BUILTIN_CABLES) | {c.name for c in cable_types}

    junctions: list[Junction] = []
    seen: set[str] = set()
    for i, row in enumerate(_list(d, "junctions")):
        p = f"junctions[{i}]"
        if isinstance(row, Mapping):
            row = [row.get("id"), row.get("x"), row.get("y")]
        if not isinstance(row, list) or len(row) != 3 or row[0] is None:
            raise ScenarioError(p, f"must be [id, x, y], got {row!r}")
        jid = _str(row[0], f"{p}.id")
        if jid in seen:
            raise ScenarioError(p, f"duplicate junction id {jid!r}")
        seen.add(jid)
        junctions.append(Junction(jid, _num(row[1], f"{p}.x"), _num(row[2], f"{p}.y")))
    if not junctions:
        raise ScenarioError("junctions", "at least one junction is required")

    segments: list[Segment] = []
    for i, row in enumerate(_list(d, "segments")):
        p = f"segments[{i}]"
        if isinstance(row, Mapping):
            row = [row.get("a"), row.get("b"), row.get("length_m"), row.get("cable")]
        if not isinstance(row, list) or len(row) != 4:
            raise ScenarioError(p, f"must be [from, to, length_m, cable], got {row!r}")
        a, b = _str(row[0], f"{p}.from"), _str(row[1], f"{p}.to")
        for end, key in ((a, "from"), (b, "to")):
            if end not in seen:
                raise ScenarioError(f"{p}.{key}", f"no junction {end!r}")
        if a == b:
            raise ScenarioError(p, "a segment must join two different junctions")
        cable = _str(row[3], f"{p}.cable")
        if cable not in known_cables:
            raise ScenarioError(f"{p}.cable", f"unknown cable type {cable!r}; define it under cable_types")
        segments.append(Segment(a, b, _num(row[2], f"{p}.length_m", positive=True), cable))

    tr = _req(d, "transformer", "")
    transformer = Transformer(
        _str(_req(tr, "node", "transformer"), "transformer.node"),
        _num(tr.get("rating_kva", 630.0), "transformer.rating_kva", positive=True),
    )
    cc = _req(d, "concentrator", "")
    concentrator = Concentrator(
        _address(_req(cc, "address", "concentrator"), "concentrator.address"),
        _str(cc.get("node", transformer.node), "concentrator.node"),
    )
    for jid, key in ((transformer.node, "transformer.node"), (concentrator.node, "concentrator.node")):
        if jid not in seen:
            raise ScenarioError(key, f"no junction {jid!r}")

    addresses: dict[str, str] = {concentrator.address: "concentrator.address"}

    def claim(addr: str, path: str) -> None:
        if addr in addresses:
            raise ScenarioError(path, f"address {addr} already used at {addresses[addr]}")
        addresses[addr] = path

    collectors: dict[str, Collector] = {}
    for i, c in enumerate(_list(d, "collectors")):
        p = f"collectors[{i}]"
        addr = _address(_req(c, "address", p), f"{p}.address")
        claim(addr, f"{p}.address")
        node = _str(_req(c, "node", p), f"{p}.node")
        if node not in seen:
            raise ScenarioError(f"{p}.node", f"no junction {node!r}")
        collectors[addr] = Collector(addr, node, _choice(c.get("phase", "ABC"), PHASES, f"{p}.phase"))

    meters: list[Meter] = []
    behind: dict[str, int] = {}
    for i, m in enumerate(_list(d, "meters")):
        p = f"meters[{i}]"
        meter = _meter(m, p, collectors)
        claim(meter.address, f"{p}.address")
        if meter.node not in seen:
            raise ScenarioError(f"{p}.node", f"no junction {meter.node!r}")
        if meter.collector:
            behind[meter.collector] = behind.get(meter.collector, 0) + 1
            if behind[meter.collector] > MAX_METERS_PER_COLLECTOR:
                raise ScenarioError(f"{p}.collector",
                                    f"collector {meter.collector} has more than {MAX_METERS_PER_COLLECTOR} meters")
        meters.append(meter)

    summary = None
    if d.get("summary_meter") is not None:
        sm = d["summary_meter"]
        addr = _address(_req(sm, "address", "summary_meter"), "summary_meter.address")
        claim(addr, "summary_meter.address")
        summary = SummaryMeter(addr, _num(sm.get("unmetered_kw", 0.0), "summary_meter.unmetered_kw", minimum=0.0))

    noise_sources = []
    for i, n in enumerate(_list(d, "noise_sources")):
        p = f"noise_sources[{i}]"
        node = _str(_req(n, "node", p), f"{p}.node")
        if node not in seen:
            raise ScenarioError(f"{p}.node", f"no junction {node!r}")
        fh, th = n.get("from_hour", 0), n.get("to_hour", 24)
        for v, k in ((fh, "from_hour"), (th, "to_hour")):
            if not isinstance(v, int) or not 0 <= v <= 24:
                raise ScenarioError(f"{p}.{k}", f"must be an hour 0..24, got {v!r}")
        noise_sources.append(NoiseSource(node, _num(_req(n, "level_db", p), f"{p}.level_db"), fh, th))

    buildings = []
    for i, b in enumerate(_list(d, "buildings")):
        p = f"buildings[{i}]"
        x0, y0 = _num(_req(b, "x0", p), f"{p}.x0"), _num(_req(b, "y0", p), f"{p}.y0")
        x1, y1 = _num(_req(b, "x1", p), f"{p}.x1"), _num(_req(b, "y1", p), f"{p}.y1")
        if x1 <= x0 or y1 <= y0:
            raise ScenarioError(p, "needs x0 < x1 and y0 < y1")
        buildings.append(Building(x0, y0, x1, y1, _num(b.get("wall_db", 12.0), f"{p}.wall_db", minimum=0.0),
                                  str(b.get("name", ""))))

    events: list[Event] = []
    node_addrs = set(addresses) - {concentrator.address} - ({summary.address} if summary else set())
    for i, e in enumerate(_list(d, "events")):
        p = f"events[{i}]"
        kind = _choice(_req(e, "kind", p), ("node_off", "node_on", "meter_replaced", "meter_installed",
                                           "noise_burst"), f"{p}.kind")
        at = _time(_req(e, "at", p), start, f"{p}.at")
        if at < 0:
            raise ScenarioError(f"{p}.at", "must not be before the scenario start")
        if kind in ("node_off", "node_on"):
            addr = _address(_req(e, "address", p), f"{p}.address")
            if addr not in node_addrs:
                raise ScenarioError(f"{p}.address", f"no meter or collector {addr} (yet)")
            events.append((NodeOff if kind == "node_off" else NodeOn)(at, addr))
        elif kind == "meter_replaced":
            old = _address(_req(e, "old", p), f"{p}.old")
            if old not in node_addrs or old in collectors:
                raise ScenarioError(f"{p}.old", f"no meter {old}")
            new = _address(_req(e, "new", p), f"{p}.new")
            claim(new, f"{p}.new")
            node_addrs.add(new)
            events.append(MeterReplaced(at, old, new))
        elif kind == "meter_installed":
            meter = _meter(_req(e, "meter", p), f"{p}.meter", collectors)
            claim(meter.address, f"{p}.meter.address")
            if meter.node not in seen:
                raise ScenarioError(f"{p}.meter.node", f"no junction {meter.node!r}")
            node_addrs.add(meter.address)
            events.append(MeterInstalled(at, meter))
        else:
            node = _str(_req(e, "node", p), f"{p}.node")
            if node not in seen:
                raise ScenarioError(f"{p}.node", f"no junction {node!r}")
            events.append(NoiseBurst(at, node, _num(_req(e, "level_db", p), f"{p}.level_db"),
                                     _num(_req(e, "duration_s", p), f"{p}.duration_s", positive=True)))

    rogues = _rogues(d, seen, {m.address: m for m in meters}, collectors, claim)

    _check_connected(junctions, segments, transformer.node,
                     [(m.node, f"meters[{i}].node") for i, m in enumerate(meters)]
                     + [(c.node, "collectors") for c in collectors.values()]
                     + [(concentrator.node, "concentrator.node")])

    return Scenario(
        name=name, seed=seed, start=start, channel=channel, transformer=transformer,
        concentrator=concentrator, junctions=tuple(junctions), segments=tuple(segments),
        meters=tuple(meters), collectors=tuple(collectors.values()), summary_meter=summary,
        cable_types=tuple(cable_types), noise_sources=tuple(noise_sources),
        buildings=tuple(buildings), events=tuple(sorted(events, key=lambda e: e.at)),
        description=str(d.get("description", "")), rogues=rogues,
    )


def _rogues(d: Mapping[str, Any], junctions: set[str], meters: dict[str, Meter],
            collectors: dict[str, Collector], claim: Any) -> tuple[Rogue, ...]:
    """The ``rogues:`` list (docs/scenario-format.md, "Rogue nodes")."""
    out = []
    for i, r in enumerate(_list(d, "rogues")):
        p = f"rogues[{i}]"
        kind = _choice(_req(r, "kind", p), ROGUE_KINDS, f"{p}.kind")
        near_raw = _req(r, "near", p)
        near = _str(near_raw, f"{p}.near")
        if near in junctions:
            node, phase = near, "ABC"
        else:
            addr = _address(near_raw, f"{p}.near")
            if addr in meters:
                m = meters[addr]
                node, phase = m.node, m.phase
            elif addr in collectors:
                node, phase = collectors[addr].node, collectors[addr].phase
            else:
                raise ScenarioError(f"{p}.near", f"no junction, meter or collector {near!r}")
            near = addr
        phase = _choice(r.get("phase", phase), PHASES, f"{p}.phase")
        claims = None
        if r.get("claims") is not None or kind == "impostor":
            claims = _address(_req(r, "claims", p), f"{p}.claims")
        rate = r.get("rate", 40 if kind == "flooder" else 1)
        if isinstance(rate, bool) or not isinstance(rate, int) or not 1 <= rate <= 255:
            raise ScenarioError(f"{p}.rate", f"must be an integer 1..255, got {rate!r}")
        if r.get("device") is not None:
            device = _address(r["device"], f"{p}.device")
            claim(device, f"{p}.device")
        else:  # the first free address of the 97... block
            k = i + 1
            while True:
                device = f"97{k:010d}"
                try:
                    claim(device, f"{p}.device")
                    break
                except ScenarioError:
                    k += 1
        reads = r.get("answers_reads", kind == "impostor")
        if not isinstance(reads, bool):
            raise ScenarioError(f"{p}.answers_reads", f"must be true or false, got {reads!r}")
        out.append(Rogue(kind, device, node, phase, near, claims, rate, reads))
    return tuple(out)


def _check_connected(junctions: list[Junction], segments: list[Segment], root: str,
                     users: list[tuple[str, str]]) -> None:
    adj: dict[str, list[str]] = {j.id: [] for j in junctions}
    for s in segments:
        adj[s.a].append(s.b)
        adj[s.b].append(s.a)
    reached = {root}
    stack = [root]
    while stack:
        for n in adj[stack.pop()]:
            if n not in reached:
                reached.add(n)
                stack.append(n)
    for node, key in users:
        if node not in reached:
            raise ScenarioError(key, f"junction {node!r} is not connected to the transformer by cable")


# --- serialising -------------------------------------------------------------------------------

def _n(v: float) -> float | int:
    """Whole numbers are written without ".0" so hand-written and dumped files look alike."""
    return int(v) if float(v).is_integer() else v


def _meter_dict(m: Meter) -> dict[str, Any]:
    d: dict[str, Any] = {"address": m.address}
    if m.collector:
        d["collector"] = m.collector
    else:
        d["node"] = m.node
    d.update(phase=m.phase, protocol=m.protocol, profile=m.profile,
             daily_kwh=round(m.daily_kwh, 3), tariffs=m.tariffs)
    return d


def to_dict(sc: Scenario) -> dict[str, Any]:
    """The scenario as plain data (the inverse of :func:`from_dict`)."""
    d: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "name": sc.name,
        "description": sc.description,
        "seed": sc.seed,
        "start": sc.start.isoformat(),
        "channel": sc.channel,
        "transformer": {"node": sc.transformer.node, "rating_kva": sc.transformer.rating_kva},
        "concentrator": {"address": sc.concentrator.address, "node": sc.concentrator.node},
    }
    if sc.summary_meter:
        d["summary_meter"] = {"address": sc.summary_meter.address,
                              "unmetered_kw": sc.summary_meter.unmetered_kw}
    if sc.cable_types:
        d["cable_types"] = {c.name: {"r_ohm_per_km": c.r_ohm_per_km, "kind": c.kind} for c in sc.cable_types}
    d["junctions"] = [[j.id, round(j.x, 2), round(j.y, 2)] for j in sc.junctions]
    d["segments"] = [[s.a, s.b, round(s.length_m, 2), s.cable] for s in sc.segments]
    d["collectors"] = [{"address": c.address, "node": c.node, "phase": c.phase} for c in sc.collectors]
    d["meters"] = [_meter_dict(m) for m in sc.meters]
    d["noise_sources"] = [{"node": n.node, "level_db": n.level_db, "from_hour": n.from_hour,
                           "to_hour": n.to_hour} for n in sc.noise_sources]
    d["buildings"] = [{"name": b.name, "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1,
                       "wall_db": b.wall_db} for b in sc.buildings]
    events = []
    for e in sc.events:
        if isinstance(e, NodeOff | NodeOn):
            events.append({"at": _n(e.at), "kind": "node_off" if isinstance(e, NodeOff) else "node_on",
                           "address": e.address})
        elif isinstance(e, MeterReplaced):
            events.append({"at": _n(e.at), "kind": "meter_replaced", "old": e.old, "new": e.new})
        elif isinstance(e, MeterInstalled) and e.meter is not None:
            events.append({"at": _n(e.at), "kind": "meter_installed", "meter": _meter_dict(e.meter)})
        elif isinstance(e, NoiseBurst):
            events.append({"at": _n(e.at), "kind": "noise_burst", "node": e.node, "level_db": e.level_db,
                           "duration_s": _n(e.duration_s)})
    d["events"] = events
    if sc.rogues:
        d["rogues"] = [{"kind": r.kind, "near": r.near, "device": r.device, "phase": r.phase,
                        "rate": r.rate, "answers_reads": r.answers_reads,
                        **({"claims": r.claims} if r.claims else {})} for r in sc.rogues]
    return d


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    pass


def _repr_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    # Rows of scalars (junctions, segments) on one line keep a 2,040-meter file readable.
    flow = all(not isinstance(v, dict | list) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _repr_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flow = all(not isinstance(v, dict | list) for v in data.values()) and len(data) <= 8
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_Dumper.add_representer(list, _repr_list)
_Dumper.add_representer(dict, _repr_dict)


def dump(sc: Scenario, path: str | Path | None = None) -> str:
    """YAML text of the scenario; also written to ``path`` when given."""
    text = "# concentrator-sim scenario; format: docs/scenario-format.md\n" + yaml.dump(
        to_dict(sc), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    if path is not None:
        Path(path).write_text(text, encoding="utf-8")
    return text


def loads(text: str) -> Scenario:
    """Parse and validate scenario YAML text."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(text, Loader=loader)  # noqa: S506 - safe loader
    except yaml.YAMLError as exc:
        raise ScenarioError("", f"not valid YAML: {exc}") from exc
    return from_dict(data)


def load(path: str | Path) -> Scenario:
    """Read and validate a scenario file; raises ScenarioError naming the bad key."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError("", f"cannot read {path}: {exc}") from exc
    return loads(text)
