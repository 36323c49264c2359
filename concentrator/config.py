"""The daemon's configuration: one YAML file loaded into frozen dataclasses and checked at start.

``load(path)`` reads the file, applies defaults and validates every value; all problems are
collected and raised together as one ``ConfigError`` whose lines name the file, the key path and
what is wrong (``/etc/concentrator/concentrator.yaml: module.baud: must be one of 1200, ...``).
``concentrator config check FILE`` prints exactly those lines.

The sections (documented key by key in ``config/concentrator.yaml``):

``paths``       etc / state / runtime directories (the systemd unit's Configuration-, State- and
                RuntimeDirectory); other paths default to files inside them.
``terminal``    the concentrator's 1376.1 address: A1 district code, A2 terminal address.
``module``      the PLC/RF module (CCO) on its serial port: baud, parity, channel, concurrency.
``summary_meter`` optional: the district's summary meter on its own RS-485 port.
``mesh``        relay depth, unknown-node policy, node silence timeout, active probing.
``reading``     daily frozen window, back-fill days, load-curve density, clock check, real time.
``lineloss``    the line-loss alarm threshold.
``clock``       setting a far-off meter's clock with a password-protected write (0x14).
``store``       SQLite store: path, size cap, retention, backup.
``uplink``      master stations (primary, backup), heartbeat, login retry, backoff, TLS, MQTT.
``archive``     optional list of meters known in advance (the master may also supply it).
``logging``     log level.
``control``     the control socket (path, group, mode) and the audit log.
``security``    authentication of the master's commands (``require_mac``), key file, Tp age.
``prepay``      optional: prepaid meters (tariffs, thresholds, credit), protected periods, retries.

What may change on SIGHUP without a restart is decided by ``reloadable_diff(old, new)``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from concentrator.codec import EncodeError, address_to_wire

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "Config",
    "PathsConfig",
    "TerminalConfig",
    "ModuleConfig",
    "SummaryMeterConfig",
    "MeshConfig",
    "ReadingConfig",
    "LineLossConfig",
    "ClockConfig",
    "StoreConfig",
    "HostPort",
    "TlsConfig",
    "MqttConfig",
    "UplinkConfig",
    "ArchiveMeter",
    "ControlConfig",
    "LoggingConfig",
    "SecurityConfig",
    "PrepayAccountConfig",
    "PrepayConfig",
    "ReloadPlan",
    "METER_PROTOCOLS",
    "CHANNELS",
    "RELOADABLE",
    "load",
    "loads",
    "parse",
    "parse_archive",
    "reloadable_diff",
    "parse_duration",
    "parse_size",
]

log = logging.getLogger(__name__)

METER_PROTOCOLS = ("dlt645-2007", "dlt645-1997")
CHANNELS = ("npl", "hplc", "rf", "dual")
PARITIES = ("N", "E", "O")
BAUDS = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
METER_BAUDS = (600, 1200, 2400, 4800, 9600)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Narrowband PLC modules take one read at a time; broadband and RF modules take several
# (HiSilicon HPLC CCO default 5, see field-figures.md).
DEFAULT_CONCURRENCY = {"npl": 1, "hplc": 5, "rf": 5, "dual": 5}

# Key paths (prefixes) that the running daemon re-applies on SIGHUP: the meter archive, the
# reading schedule and the alarm/ageing thresholds. Everything else (ports, addresses, paths,
# sockets, uplink endpoints) is wired into long-lived objects and needs a restart.
RELOADABLE = (
    "archive",
    "reading",
    "lineloss",
    "logging.level",
    "mesh.unknown_node_policy",
    "mesh.node_silence_timeout",
    "mesh.probing",
)


# --- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in the file: where (dotted key path) and what."""

    key: str
    message: str


class ConfigError(Exception):
    """The configuration file cannot be used; ``issues`` lists every problem found."""

    def __init__(self, source: str, issues: Iterable[ConfigIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One human line per problem: ``FILE: key.path: message``."""
        return [
            f"{self.source}: {i.key}: {i.message}" if i.key else f"{self.source}: {i.message}"
            for i in self.issues
        ]


# --- value parsers -----------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h|d)?\s*$")
_DURATION_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0,
                   "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|K|KB|KiB|M|MB|MiB|G|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2,
               "mib": 1024**2, "g": 1024**3, "gb": 1000**3, "gib": 1024**3}


def parse_duration(value: Any) -> float:
    """``90``, ``"90s"``, ``"15min"``, ``"2h"``, ``"7d"`` -> seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30s, 15min, 2h, 7d")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 30s, 15min, 2h, 7d, got {value!r}")


def parse_size(value: Any) -> int:
    """``1048576``, ``"512MiB"``, ``"2GB"`` -> bytes. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "b").lower()
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size like 512MiB or 2GB, got {value!r}")


# --- the configuration dataclasses ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PathsConfig:
    etc: Path = Path("/etc/concentrator")
    state: Path = Path("/var/lib/concentrator")
    runtime: Path = Path("/run/concentrator")


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    district: str  # A1: administrative district code, 4 decimal digits ("4403")
    address: int  # A2: terminal address, 1..65535 (sent binary, little-endian)


@dataclass(frozen=True, slots=True)
class ModuleConfig:
    port: str
    baud: int = 9600
    parity: str = "E"
    channel: str = "hplc"
    max_concurrent: int = 5  # AFN13 F1 requests in flight at once
    cco_address: str | None = None  # None: ask the module (AFN03 F4)


@dataclass(frozen=True, slots=True)
class SummaryMeterConfig:
    port: str
    address: str
    protocol: str = "dlt645-2007"
    baud: int = 2400
    parity: str = "E"


@dataclass(frozen=True, slots=True)
class MeshConfig:
    max_relay_depth: int = 15
    unknown_node_policy: str = "quarantine"  # admit | quarantine
    node_silence_timeout: float = 7 * 86400.0  # seconds silent before a node is deleted
    probing: bool = True


@dataclass(frozen=True, slots=True)
class ReadingConfig:
    daily_frozen_start: time = time(0, 5)
    daily_frozen_end: time = time(6, 0)
    backfill_days: int = 3
    curve_density: int = 15  # minutes between load-curve points: 15 or 60
    clock_check_threshold: float = 300.0  # seconds of meter clock drift before a time sync
    realtime_period: float = 0.0  # seconds between real-time rounds; 0 = on demand only


# DL/T 645-2007 meters take a broadcast time sync (0x08) only within +-5 minutes.
BROADCAST_LIMIT_S = 300.0


@dataclass(frozen=True, slots=True)
class ClockConfig:
    """``clock``: see concentrator/meter_clock.py."""

    # write a meter's date and time (0x14, its password from the key store) when its clock is
    # off by more than write_beyond_s; meters without a password are never written
    write_enabled: bool = True
    write_beyond_s: float = BROADCAST_LIMIT_S  # within this, the broadcast time sync does


@dataclass(frozen=True, slots=True)
class LineLossConfig:
    alarm_threshold: float = 10.0  # percent of the summary meter's energy


@dataclass(frozen=True, slots=True)
class StoreConfig:
    path: Path
    size_cap: int = 512 * 1024**2  # bytes
    retention_days: int = 400
    backup_path: Path | None = None
    backup_period: float = 86400.0


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    enabled: bool = False
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True, slots=True)
class MqttConfig:
    broker: HostPort
    client_id: str
    topic_prefix: str = "concentrator"
    tls: TlsConfig = field(default_factory=TlsConfig)


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    primary: HostPort
    backup: HostPort | None = None
    failover_attempts: int = 3
    heartbeat_period: float = 300.0
    login_retry: float = 30.0
    reconnect_backoff_cap: float = 600.0
    tls: TlsConfig = field(default_factory=TlsConfig)
    mqtt: MqttConfig | None = None


@dataclass(frozen=True, slots=True)
class ArchiveMeter:
    address: str
    protocol: str = "dlt645-2007"
    point: int | None = None  # 1376.1 measuring point number pn (1..2040)
    name: str = ""


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path
    group: str = "concentrator"
    mode: int = 0o660
    audit_log: Path = Path("/var/lib/concentrator/audit.jsonl")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``security``: see uplink/security.py and docs/security.md."""

    require_mac: bool = True        # off only for a legacy master that cannot sign commands
    key_file: Path = Path("/etc/concentrator/keys.json")   # 0600 JSON (concentrator.keystore)
    max_delay: float = 300.0        # seconds a signed command's Tp may be old (Tp delay 0 or larger)


@dataclass(frozen=True, slots=True)
class PrepayAccountConfig:
    """One prepaid meter: flat price or DL/T 645 tariff 1..4 prices (yuan/kWh), thresholds."""

    address: str
    flat_price: Decimal | None = None   # yuan/kWh; also the fallback when tariffs are missing
    prices: tuple[Decimal, ...] = ()    # tariff registers 1..4 (sharp, peak, flat, valley)
    alarm: Decimal = Decimal("20")      # below this credit the meter alarms (0x1C N1 2A)
    trip: Decimal = Decimal("0")        # at or below this credit the meter is tripped
    initial_credit: Decimal = Decimal("0")


@dataclass(frozen=True, slots=True)
class PrepayConfig:
    """``prepay``: see concentrator/prepay.py and docs/prepayment.md."""

    enabled: bool = False
    read_interval: float = 900.0        # seconds between energy reads of prepaid meters
    close_mode: str = "direct"          # "direct" (N1 1C) | "allowed" (N1 1B, customer button)
    trip_expiry_minutes: int = 30       # validity of a 0x1C command (N3..N8)
    max_attempts: int = 5
    retry_backoff: float = 60.0         # seconds before the 2nd attempt; doubles each time
    protect_daily: tuple[tuple[time, time], ...] = ()   # e.g. 22:00-06:00 (may cross midnight)
    protect_holidays: tuple[date, ...] = ()
    accounts: tuple[PrepayAccountConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class Config:
    source: str
    paths: PathsConfig
    terminal: TerminalConfig
    module: ModuleConfig
    summary_meter: SummaryMeterConfig | None
    mesh: MeshConfig
    reading: ReadingConfig
    lineloss: LineLossConfig
    store: StoreConfig
    uplink: UplinkConfig
    archive: tuple[ArchiveMeter, ...]
    logging: LoggingConfig
    control: ControlConfig
    security: SecurityConfig = field(default_factory=SecurityConfig)
    prepay: PrepayConfig = field(default_factory=PrepayConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)


# --- the checking reader -------------------------------------------------------------------------

_MISSING: Any = object()


class _Section:
    """Reads one mapping of the file, recording every problem instead of stopping at the first.

    Each getter returns the parsed value, or the default (possibly None) when the value is
    bad, so that checking can go on and report all problems at once.
    """

    def __init__(self, issues: list[ConfigIssue], path: str, data: Any) -> None:
        self.issues = issues
        self.prefix = path
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error("", f"must be a mapping of keys, got {_kind(data)}")
            data = {}
        self.data: Mapping[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.key(name) if name else self.prefix, message))

    def has(self, name: str) -> bool:
        return name in self.data and self.data[name] is not None

    def raw(self, name: str, default: Any) -> Any:
        self.seen.add(name)
        if not self.has(name):
            if default is _MISSING:
                self.error(name, "missing key (required)")
                return _MISSING
            return default
        return self.data[name]

    def sub(self, name: str) -> _Section:
        self.seen.add(name)
        return _Section(self.issues, self.key(name), self.data.get(name))

    def string(self, name: str, default: Any = _MISSING, choices: Iterable[str] | None = None,
               what: str = "") -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if not isinstance(value, str):
            self.error(name, f"must be a string, got {_kind(value)}")
            return None if default is _MISSING else default
        if choices is not None:
            choices = tuple(choices)
            if value not in choices:
                label = f"unknown {what} {value!r}" if what else f"{value!r} is not allowed"
                self.error(name, f"{label}; must be one of {', '.join(choices)}")
                return None if default is _MISSING else default
        return value

    def integer(self, name: str, default: Any = _MISSING, lo: int | None = None,
                hi: int | None = None, choices: Iterable[int] | None = None) -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(name, f"must be an integer, got {_kind(value)}")
            return None if default is _MISSING else default
        if choices is not None:
            choices = tuple(choices)
            if value not in choices:
                self.error(name, f"must be one of {', '.join(map(str, choices))}, got {value}")
                return None if default is _MISSING else default
        if not _in_range(value, lo, hi):
            self.error(name, f"out of range: {value} (allowed {_range_text(lo, hi)})")
            return None if default is _MISSING else default
        return value

    def number(self, name: str, default: Any = _MISSING, lo: float | None = None,
               hi: float | None = None) -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(name, f"must be a number, got {_kind(value)}")
            return None if default is _MISSING else default
        if not _in_range(value, lo, hi):
            self.error(name, f"out of range: {value} (allowed {_range_text(lo, hi)})")
            return None if default is _MISSING else default
        return float(value)

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if not isinstance(value, bool):
            self.error(name, f"must be true or false, got {_kind(value)}")
            return None if default is _MISSING else default
        return value

    def duration(self, name: str, default: Any = _MISSING, lo: float | None = None,
                 hi: float | None = None) -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.error(name, str(exc))
            return None if default is _MISSING else default
        if not _in_range(seconds, lo, hi):
            self.error(name, f"out of range: {value} (allowed {_range_text(lo, hi, 's')})")
            return None if default is _MISSING else default
        return seconds

    def size(self, name: str, default: Any = _MISSING, lo: int | None = None) -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        try:
            nbytes = parse_size(value)
        except ValueError as exc:
            self.error(name, str(exc))
            return None if default is _MISSING else default
        if not _in_range(nbytes, lo, None):
            self.error(name, f"out of range: {value} (at least {lo} bytes)")
            return None if default is _MISSING else default
        return nbytes

    def clock_time(self, name: str, default: time) -> time:
        value = self.raw(name, default)
        if value is default:
            return default
        # YAML 1.1 reads an unquoted 00:05 as a base-60 integer (5); accept that too.
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 24 * 60:
            return time(value // 60, value % 60)
        if isinstance(value, str):
            m = re.match(r"^(\d{1,2}):(\d{2})$", value.strip())
            if m and int(m.group(1)) < 24 and int(m.group(2)) < 60:
                return time(int(m.group(1)), int(m.group(2)))
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"{value // 60}:{value % 60:02d}"  # undo YAML's base-60 reading for the message
        self.error(name, f"must be a time of day HH:MM (00:00..23:59), got {value!r}")
        return default

    def path(self, name: str, default: Any = _MISSING, base: Path | None = None) -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if not isinstance(value, str) or not value:
            self.error(name, f"must be a path string, got {_kind(value)}")
            return None if default is _MISSING else default
        p = Path(value)
        if not p.is_absolute():
            if base is None:
                self.error(name, f"must be an absolute path, got {value!r}")
                return None if default is _MISSING else default
            p = base / p
        return p

    def address(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        if isinstance(value, int) and not isinstance(value, bool):
            # Unquoted, YAML 1.1 reads 000000000161 as an octal integer: the digits are lost.
            self.error(name, f"must be a quoted 12-digit string (\"000000000161\"), got the number {value}")
            return None if default is _MISSING else default
        if not isinstance(value, str) or not value.isdigit():
            self.error(name, f"must be a 12-digit meter address, got {value!r}")
            return None if default is _MISSING else default
        try:
            address_to_wire(value)
        except EncodeError as exc:
            self.error(name, str(exc))
            return None if default is _MISSING else default
        return value

    def host_port(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default)
        if value is _MISSING or value is default:
            return None if value is _MISSING else value
        hp = _parse_host_port(value)
        if hp is None:
            self.error(name, f"must be host:port (port 1..65535), got {value!r}")
            return None if default is _MISSING else default
        return hp

    def finish(self) -> None:
        """Report keys nobody asked for: they are typos or keys of another version."""
        for k in self.data:
            if k not in self.seen:
                hint = difflib.get_close_matches(str(k), self.seen, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.error(str(k), f"unknown key{extra}")


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__) + (
        f" ({value!r})" if isinstance(value, bool | int | float | str) else "")


def _in_range(value: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _range_text(lo: float | None, hi: float | None, unit: str = "") -> str:
    if lo is not None and hi is not None:
        return f"{lo:g}..{hi:g}{unit}"
    if lo is not None:
        return f">= {lo:g}{unit}"
    return f"<= {hi:g}{unit}"


def _parse_host_port(value: Any) -> HostPort | None:
    if not isinstance(value, str):
        return None
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\]:(\d+)$", value) or re.match(r"^([^:\s]+):(\d+)$", value)
    if not m:
        return None
    port = int(m.group(2))
    if not 1 <= port <= 65535:
        return None
    return HostPort(m.group(1), port)


# --- sections --------------------------------------------------------------------------------------


def _tls(s: _Section, etc: Path, *, default_enabled: bool = False) -> TlsConfig:
    # The master-station link defaults to TLS (docs/security.md): plain TCP must be asked for.
    enabled = s.boolean("enabled", default_enabled)
    ca = s.path("ca", None, base=etc)
    cert = s.path("cert", None, base=etc)
    key = s.path("key", None, base=etc)
    if enabled and ca is None:
        # A pinned CA is the point of TLS to the master; the system store is not trusted here.
        s.error("ca", "missing key (required when tls.enabled is true"
                + ("; TLS is on by default here, set enabled: false to ask for plain TCP)"
                   if default_enabled else ")"))
    if (cert is None) != (key is None):
        s.error("cert" if cert is None else "key", "cert and key must be given together")
    s.finish()
    return TlsConfig(enabled, ca, cert, key)


def _paths(s: _Section) -> PathsConfig:
    d = PathsConfig()
    out = PathsConfig(s.path("etc", d.etc), s.path("state", d.state), s.path("runtime", d.runtime))
    s.finish()
    return out


def _terminal(s: _Section) -> TerminalConfig:
    district = s.raw("district", _MISSING)
    if isinstance(district, int) and not isinstance(district, bool):
        # Unquoted, YAML 1.1 reads 0200 as octal 128; only a quoted string keeps the digits.
        s.error("district", f"must be quoted (\"4403\"), got the number {district}")
        district = None
    elif district is not _MISSING and not (isinstance(district, str) and re.fullmatch(r"\d{4}", district)):
        s.error("district", f"must be 4 decimal digits (A1, e.g. \"4403\"), got {district!r}")
        district = None
    address = s.integer("address", _MISSING, lo=1, hi=65535)
    s.finish()
    return TerminalConfig(district if district is not _MISSING else None, address)


def _module(s: _Section) -> ModuleConfig:
    port = s.string("port")
    baud = s.integer("baud", 9600, choices=BAUDS)
    parity = s.string("parity", "E", choices=PARITIES)
    channel = s.string("channel", "hplc", choices=CHANNELS, what="channel")
    concurrent = s.integer("max_concurrent", DEFAULT_CONCURRENCY.get(channel or "hplc"), lo=1, hi=1024)
    cco = s.address("cco_address", None)
    s.finish()
    return ModuleConfig(port, baud, parity, channel, concurrent, cco)


def _summary_meter(s: _Section) -> SummaryMeterConfig:
    out = SummaryMeterConfig(
        port=s.string("port"),
        address=s.address("address"),
        protocol=s.string("protocol", "dlt645-2007", choices=METER_PROTOCOLS, what="meter protocol"),
        baud=s.integer("baud", 2400, choices=METER_BAUDS),
        parity=s.string("parity", "E", choices=PARITIES),
    )
    s.finish()
    return out


def _mesh(s: _Section) -> MeshConfig:
    d = MeshConfig()
    out = MeshConfig(
        max_relay_depth=s.integer("max_relay_depth", d.max_relay_depth, lo=0, hi=15),
        unknown_node_policy=s.string("unknown_node_policy", d.unknown_node_policy,
                                     choices=("admit", "quarantine"), what="policy"),
        node_silence_timeout=s.duration("node_silence_timeout", d.node_silence_timeout, lo=3600),
        probing=s.boolean("probing", d.probing),
    )
    s.finish()
    return out


def _reading(s: _Section) -> ReadingConfig:
    d = ReadingConfig()
    start = s.clock_time("daily_frozen_start", d.daily_frozen_start)
    end = s.clock_time("daily_frozen_end", d.daily_frozen_end)
    if end <= start:
        s.error("daily_frozen_end", f"must be later than daily_frozen_start ({start:%H:%M})")
    out = ReadingConfig(
        daily_frozen_start=start,
        daily_frozen_end=end,
        # DL/T 645 meters keep the last 62 daily freezes (05 06 xx 01..3E).
        backfill_days=s.integer("backfill_days", d.backfill_days, lo=0, hi=62),
        curve_density=s.integer("curve_density", d.curve_density, choices=(15, 60)),
        clock_check_threshold=s.duration("clock_check_threshold", d.clock_check_threshold,
                                         lo=1, hi=3600),
        realtime_period=s.duration("realtime_period", d.realtime_period, lo=0),
    )
    if out.realtime_period and out.realtime_period < 60:
        s.error("realtime_period", "out of range: must be 0 (on demand) or at least 60s")
    s.finish()
    return out


def _lineloss(s: _Section) -> LineLossConfig:
    out = LineLossConfig(s.number("alarm_threshold", LineLossConfig().alarm_threshold, lo=0, hi=100))
    s.finish()
    return out


def _clock(s: _Section) -> ClockConfig:
    d = ClockConfig()
    out = ClockConfig(
        write_enabled=s.boolean("write_enabled", d.write_enabled),
        # Beyond 300 s a broadcast no longer corrects the meter, so a larger value would leave
        # the meters in between uncorrected.
        write_beyond_s=s.duration("write_beyond_s", d.write_beyond_s, lo=1, hi=BROADCAST_LIMIT_S),
    )
    s.finish()
    return out


def _store(s: _Section, state: Path) -> StoreConfig:
    d = StoreConfig(path=state / "concentrator.db")
    out = StoreConfig(
        path=s.path("path", d.path, base=state),
        size_cap=s.size("size_cap", d.size_cap, lo=1024**2),
        retention_days=s.integer("retention_days", d.retention_days, lo=1, hi=3650),
        backup_path=s.path("backup_path", None, base=state),
        backup_period=s.duration("backup_period", d.backup_period, lo=60),
    )
    s.finish()
    return out


def _mqtt(s: _Section, etc: Path) -> MqttConfig:
    out = MqttConfig(
        broker=s.host_port("broker"),
        client_id=s.string("client_id"),
        topic_prefix=s.string("topic_prefix", "concentrator"),
        tls=_tls(s.sub("tls"), etc),
    )
    s.finish()
    return out


def _uplink(s: _Section, etc: Path) -> UplinkConfig:
    d = UplinkConfig(primary=HostPort("", 0))
    out = UplinkConfig(
        primary=s.host_port("primary"),
        backup=s.host_port("backup", None),
        failover_attempts=s.integer("failover_attempts", d.failover_attempts, lo=1, hi=100),
        heartbeat_period=s.duration("heartbeat_period", d.heartbeat_period, lo=10, hi=86400),
        login_retry=s.duration("login_retry", d.login_retry, lo=1, hi=3600),
        reconnect_backoff_cap=s.duration("reconnect_backoff_cap", d.reconnect_backoff_cap,
                                         lo=1, hi=86400),
        tls=_tls(s.sub("tls"), etc, default_enabled=True),
        mqtt=_mqtt(s.sub("mqtt"), etc) if s.has("mqtt") else None,
    )
    s.seen.add("mqtt")
    s.finish()
    return out


def _archive(issues: list[ConfigIssue], data: Any) -> tuple[ArchiveMeter, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        issues.append(ConfigIssue("archive", f"must be a list of meters, got {_kind(data)}"))
        return ()
    meters: list[ArchiveMeter] = []
    addresses: dict[str, int] = {}
    points: dict[int, int] = {}
    for i, item in enumerate(data):
        s = _Section(issues, f"archive[{i}]", item)
        meter = ArchiveMeter(
            address=s.address("address"),
            protocol=s.string("protocol", "dlt645-2007", choices=METER_PROTOCOLS,
                              what="meter protocol"),
            point=s.integer("point", None, lo=1, hi=2040),
            name=s.string("name", ""),
        )
        s.finish()
        if meter.address is not None:
            if meter.address in addresses:
                s.error("address", f"duplicate meter {meter.address} (also archive[{addresses[meter.address]}])")
            addresses.setdefault(meter.address, i)
        if meter.point is not None:
            if meter.point in points:
                s.error("point", f"measuring point {meter.point} already used by archive[{points[meter.point]}]")
            points.setdefault(meter.point, i)
        meters.append(meter)
    return tuple(meters)


def parse_archive(data: Any, source: str = "<archive>") -> tuple[ArchiveMeter, ...]:
    """Check a list of meter mappings (an archive import file); raises ``ConfigError``."""
    issues: list[ConfigIssue] = []
    meters = _archive(issues, data)
    if issues:
        raise ConfigError(source, issues)
    return meters


def _control(s: _Section, runtime: Path, state: Path) -> ControlConfig:
    socket = s.path("socket", runtime / "control.sock", base=runtime)
    group = s.string("group", "concentrator")
    mode = s.raw("mode", 0o660)
    if isinstance(mode, str) and re.fullmatch(r"0?o?[0-7]{3,4}", mode):
        mode = int(mode.replace("o", ""), 8)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        s.error("mode", f"must be an octal file mode like \"0660\", got {mode!r}")
        mode = 0o660
    elif mode & 0o007:
        # Other users must never reach the socket; peer-credential checks are the second line.
        s.error("mode", f"must not grant access to other users, got {mode:04o}")
        mode = 0o660
    audit = s.path("audit_log", state / "audit.jsonl", base=state)
    s.finish()
    return ControlConfig(socket, group, mode, audit)


_TOP_KEYS = ("paths", "terminal", "module", "summary_meter", "mesh", "reading", "lineloss",
             "store", "uplink", "archive", "logging", "control", "security", "prepay", "clock")


def parse(data: Any, source: str = "<config>") -> Config:
    """Build a ``Config`` from already-parsed YAML data; raises ``ConfigError``."""
    issues: list[ConfigIssue] = []
    top = _Section(issues, "", data)
    top.seen.update(_TOP_KEYS)
    paths = _paths(top.sub("paths"))
    cfg = Config(
        source=source,
        paths=paths,
        terminal=_terminal(top.sub("terminal")),
        module=_module(top.sub("module")),
        summary_meter=_summary_meter(top.sub("summary_meter")) if top.has("summary_meter") else None,
        mesh=_mesh(top.sub("mesh")),
        reading=_reading(top.sub("reading")),
        lineloss=_lineloss(top.sub("lineloss")),
        store=_store(top.sub("store"), paths.state),
        uplink=_uplink(top.sub("uplink"), paths.etc),
        archive=_archive(issues, top.data.get("archive")),
        logging=_logging(top.sub("logging")),
        control=_control(top.sub("control"), paths.runtime, paths.state),
        security=_security(top.sub("security"), paths.etc),
        prepay=_prepay(top.sub("prepay")),
        clock=_clock(top.sub("clock")),
    )
    top.finish()
    if issues:
        raise ConfigError(source, issues)
    return cfg


def _to_money(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return amount if amount.is_finite() else None


def _money(s: _Section, name: str, default: Any = _MISSING, lo: Decimal | None = None) -> Any:
    """A money amount (yuan) or price as Decimal: 12.5, "12.50"; floats keep their printed digits."""
    value = s.raw(name, default)
    if value is _MISSING or value is default:
        return None if value is _MISSING else value
    amount = _to_money(value)
    if amount is None:
        s.error(name, f"must be an amount like 12.50, got {_kind(value)}")
        return None if default is _MISSING else default
    if lo is not None and amount < lo:
        s.error(name, f"out of range: {value} (at least {lo})")
        return None if default is _MISSING else default
    return amount


def _time_range(text: Any) -> tuple[time, time] | None:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text) \
        if isinstance(text, str) else None
    if not m:
        return None
    h1, m1, h2, m2 = (int(g) for g in m.groups())
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        return None
    return time(h1, m1), time(0, 0) if h2 == 24 else time(h2, m2)


def _prepay_account(s: _Section) -> PrepayAccountConfig:
    address = s.address("address")
    flat = _money(s, "price", None, lo=Decimal(0))
    prices: list[Decimal] = []
    raw = s.raw("tariff_prices", None)
    if raw is not None:
        if not isinstance(raw, list) or not 1 <= len(raw) <= 4:
            s.error("tariff_prices", "must be a list of 1..4 prices (tariff registers 1..4)")
        else:
            for i, v in enumerate(raw):
                p = _to_money(v)
                if p is None or p < 0:
                    s.error(f"tariff_prices[{i}]", f"must be a price like 0.52, got {_kind(v)}")
                prices.append(p if p is not None and p >= 0 else Decimal(0))
    if flat is None and not prices:
        s.error("price", "missing key: give price (flat) or tariff_prices (by time period)")
    d = PrepayAccountConfig("")
    alarm = _money(s, "alarm", d.alarm)
    trip = _money(s, "trip", d.trip)
    if alarm is not None and trip is not None and alarm < trip:
        s.error("alarm", f"must not be below the trip threshold ({trip})")
    out = PrepayAccountConfig(address, flat, tuple(prices), alarm, trip,
                              _money(s, "initial_credit", Decimal(0)))
    s.finish()
    return out


def _prepay(s: _Section) -> PrepayConfig:
    d = PrepayConfig()
    interval = s.number("read_interval", d.read_interval / 60, lo=1, hi=1440)
    daily: list[tuple[time, time]] = []
    holidays: list[date] = []
    prot = s.sub("protect")
    for i, text in enumerate(prot.raw("daily", None) or []):
        r = _time_range(text)
        if r is None or r[0] == r[1]:
            prot.error(f"daily[{i}]", f"must be a time range HH:MM-HH:MM, got {text!r}")
        else:
            daily.append(r)
    for i, v in enumerate(prot.raw("holidays", None) or []):
        if isinstance(v, str):
            try:
                v = date.fromisoformat(v.strip())
            except ValueError:
                pass
        if isinstance(v, date):
            holidays.append(v)
        else:
            prot.error(f"holidays[{i}]", f"must be a date YYYY-MM-DD, got {v!r}")
    prot.finish()
    accounts: list[PrepayAccountConfig] = []
    raw = s.raw("accounts", None)
    if raw is not None and not isinstance(raw, list):
        s.error("accounts", f"must be a list of prepaid meters, got {_kind(raw)}")
        raw = None
    seen: dict[str, int] = {}
    for i, item in enumerate(raw or []):
        sub = _Section(s.issues, s.key(f"accounts[{i}]"), item)
        acc = _prepay_account(sub)
        if acc.address is not None:
            if acc.address in seen:
                sub.error("address", f"duplicate meter {acc.address} (also accounts[{seen[acc.address]}])")
            seen.setdefault(acc.address, i)
        accounts.append(acc)
    out = PrepayConfig(
        enabled=s.boolean("enabled", d.enabled),
        read_interval=(interval or d.read_interval / 60) * 60.0,
        close_mode=s.string("close_mode", d.close_mode, choices=("direct", "allowed"),
                            what="close mode"),
        trip_expiry_minutes=s.integer("trip_expiry_minutes", d.trip_expiry_minutes, lo=1,
                                      hi=1440),
        max_attempts=s.integer("max_attempts", d.max_attempts, lo=1, hi=100),
        retry_backoff=s.duration("retry_backoff", d.retry_backoff, lo=1, hi=86400),
        protect_daily=tuple(daily),
        protect_holidays=tuple(holidays),
        accounts=tuple(accounts),
    )
    s.finish()
    return out


def _security(s: _Section, etc: Path) -> SecurityConfig:
    out = SecurityConfig(
        require_mac=s.boolean("require_mac", True),
        key_file=s.path("key_file", etc / "keys.json", base=etc),
        max_delay=s.duration("max_delay", 300.0, lo=10, hi=86400),
    )
    s.finish()
    return out


def _logging(s: _Section) -> LoggingConfig:
    level = s.raw("level", "INFO")
    if isinstance(level, str) and level.upper() in LOG_LEVELS:
        level = level.upper()
    else:
        s.error("level", f"unknown log level {level!r}; must be one of {', '.join(LOG_LEVELS)}")
        level = "INFO"
    s.finish()
    return LoggingConfig(level)


def loads(text: str, source: str = "<string>") -> Config:
    """Parse YAML text; raises ``ConfigError`` (YAML syntax errors included)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigIssue("", f"{where}YAML syntax error: {problem}")]) from exc
    if data is None:
        data = {}
    return parse(data, source)


def load(path: str | Path) -> Config:
    """Read and check the configuration file at ``path``; raises ``ConfigError``."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [ConfigIssue("", f"cannot read file: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(source, [ConfigIssue("", f"not UTF-8 text: {exc}")]) from exc
    cfg = loads(text, source)
    log.info("configuration loaded from %s (terminal %s/%d, %d archive meters)",
             source, cfg.terminal.district, cfg.terminal.address, len(cfg.archive))
    return cfg


# --- reload ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What changed between two configurations, split by what SIGHUP can apply."""

    reloadable: tuple[str, ...]  # changed key paths the daemon re-applies in place
    restart: tuple[str, ...]  # changed key paths that only take effect after a restart

    @property
    def changed(self) -> bool:
        return bool(self.reloadable or self.restart)

    @property
    def needs_restart(self) -> bool:
        return bool(self.restart)


def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type | HostPort):
        for f in dataclasses.fields(obj):
            _flatten(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name, out)
    else:
        out[prefix] = obj


def _parents(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _is_reloadable(key: str) -> bool:
    return any(key == r or key.startswith(r + ".") for r in RELOADABLE)


def reloadable_diff(old: Config, new: Config) -> ReloadPlan:
    """Compare two configurations key by key (the archive as one key).

    The daemon applies ``plan.reloadable`` on SIGHUP and, when ``plan.restart`` is not empty,
    keeps running with the old values for those keys and logs that a restart is needed.
    """
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(dataclasses.replace(old, source=""), "", a)
    _flatten(dataclasses.replace(new, source=""), "", b)
    changed = {k for k in a.keys() | b.keys() if a.get(k, _MISSING) != b.get(k, _MISSING)}
    # An optional section that appeared or vanished is one change, not one per sub-key.
    changed = sorted(k for k in changed if not any(p in changed for p in _parents(k)))
    return ReloadPlan(
        reloadable=tuple(k for k in changed if _is_reloadable(k)),
        restart=tuple(k for k in changed if not _is_reloadable(k)),
    )
