"""The concentrator's SQLite store: every reading, event and statistic, and the upload outbox.

A reading counts as *stored* only once a transaction holding it has committed in a way that
survives power loss (WAL with ``synchronous=FULL``). In that same transaction the reading gets
an outbox sequence number; it leaves the outbox only when the master station confirms it, so a
crash anywhere makes the uplink re-send, never drop. Old data is evicted by age and by a size
cap, and whatever is evicted before it was uploaded is counted and recorded as an event.

Errors::

    StoreError          the store cannot be opened or used (permissions, newer schema, misuse)
    └── StoreFull       disk full or the configured size cap: the batch was rolled back whole

See docs/store.md for the schema, the durability argument and the outbox contract.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import sqlite_utils

from concentrator.clock import Clock
from concentrator.codec import EncodeError, address_to_wire

__all__ = [
    "StoreError",
    "StoreFull",
    "MeterRecord",
    "DailyReading",
    "CurveDay",
    "RealtimeReading",
    "Event",
    "LineLoss",
    "ReadRecord",
    "ReadRound",
    "OutboxItem",
    "OutboxStats",
    "StoreStats",
    "PruneReport",
    "Store",
    "MIGRATIONS",
    "ERC_TERMINAL_FAULT",
    "FLAG_FROM_REALTIME",
    "FLAG_BACKFILLED",
    "pack_points",
    "unpack_points",
]

log = logging.getLogger(__name__)

# Q/GDW 1376.1 ERC 21 "terminal fault": what the store records about itself (corrupt file,
# full disk, data evicted before upload). ``detail["fault"]`` says which.
ERC_TERMINAL_FAULT = 21

# Daily-reading flags (bit field).
FLAG_FROM_REALTIME = 0x01  # meter has no freeze function: real-time value stored as the freeze
FLAG_BACKFILLED = 0x02  # read in a make-up (补抄) round for an earlier day

CURVE_SCALE = 4  # curve points are kept as integers of 10^-4 units (A.14 resolution)
_HIGH_WATER = 0.90  # size-cap eviction starts above this share of the cap ...
_LOW_WATER = 0.80  # ... and evicts whole oldest days until below this share
_SQLITE_FULL = 13
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class StoreError(Exception):
    """The store cannot be opened or the call cannot be honoured; nothing was half-written."""


class StoreFull(StoreError):
    """Disk full or size cap reached; the whole batch was rolled back, earlier data is intact."""


# --- records --------------------------------------------------------------------------------

Tariffs = tuple[Decimal | None, ...]


@dataclass(frozen=True, slots=True)
class MeterRecord:
    """One meter (or collector) in the archive."""

    address: str  # 12-digit address as printed on the meter
    protocol: str = "dlt645-2007"  # "dlt645-2007" | "dlt645-1997"
    device_kind: str = "meter"  # "meter" | "collector" (AFN06 F4 device type)
    collector: str | None = None  # RS-485 meters: address of the collector they sit behind
    phase: str | None = None  # "A" | "B" | "C" | "ABC" | None (unknown)
    point: int | None = None  # 1376.1 measuring point number pn (1..2040)
    prepaid: bool = False
    prepaid_params: Mapping[str, Any] | None = None  # tariff / thresholds for prepaid meters
    source: str = "archive"  # "archive" (from the master, AFN04 F10) | "discovered" (search)
    quarantined: bool = False  # found but not trusted (e.g. unknown meter, ERC 35): not read


@dataclass(frozen=True, slots=True)
class DailyReading:
    """A daily frozen reading (DL/T 645 05 06 xx nn) of one meter for one freeze date."""

    meter: str
    freeze_date: date
    fwd_total: Decimal | None  # forward active total, kWh (None: meter answered EE / absent)
    read_time: datetime  # when the concentrator read it
    fwd_tariffs: Tariffs = ()
    rev_total: Decimal | None = None
    rev_tariffs: Tariffs = ()
    freeze_time: datetime | None = None  # freeze timestamp reported by the meter (05 06 00 nn)
    flags: int = 0  # FLAG_* bits


@dataclass(frozen=True, slots=True)
class CurveDay:
    """One meter's load curve for one day: ``points[i]`` is the slot starting i*density min."""

    meter: str
    day: date
    density_min: int
    points: tuple[Decimal | None, ...]
    item: str = "fwd_active"


@dataclass(frozen=True, slots=True)
class RealtimeReading:
    """A real-time (current) reading of one meter."""

    meter: str
    read_time: datetime
    fwd_total: Decimal | None
    fwd_tariffs: Tariffs = ()
    rev_total: Decimal | None = None
    rev_tariffs: Tariffs = ()
    values: Mapping[str, Decimal] = field(default_factory=dict)  # e.g. {"voltage_a": ...}
    flags: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    """An event in the 1376.1 sense: ERC code, meter (None = the concentrator), time, detail."""

    id: int
    erc: int
    meter: str | None
    time: datetime
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LineLoss:
    """Line loss of the district for one day."""

    day: date
    summary_energy: Decimal  # energy through the district's summary (transformer) meter
    customer_energy: Decimal  # sum over the customers' meters that were read
    loss_pct: Decimal | None  # (summary - customers) / summary * 100
    meters_covered: int
    meters_total: int


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """Statistics of one read of one meter."""

    meter: str
    task: str
    route: tuple[str, ...]  # relay addresses used, nearest the concentrator first
    attempts: int
    latency_s: float | None
    outcome: str  # "ok", "timeout", "no_reply", "bad_frame", ...
    time: datetime


@dataclass(frozen=True, slots=True)
class ReadRound:
    """Summary of one reading round of a task."""

    task: str
    start: datetime
    end: datetime
    first_rate: float  # share of meters read on the first attempt
    final_rate: float  # share read after all retries and make-ups
    unread: Mapping[str, str]  # meter address -> why it was not read
    id: int | None = None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One thing waiting for upload: its sequence number, kind and the record to encode."""

    seq: int
    kind: str  # "daily" | "curve" | "realtime" | "event"
    meter: str | None
    payload: DailyReading | CurveDay | RealtimeReading | Event
    created: datetime


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    oldest_seq: int | None
    oldest_created: datetime | None
    by_kind: Mapping[str, int]
    evicted_unsent: int  # total ever evicted before upload (since the store was created)


@dataclass(frozen=True, slots=True)
class StoreStats:
    rows: Mapping[str, int]
    file_bytes: int  # database file + WAL
    used_bytes: int  # pages in use (the size cap applies to this)
    outbox_depth: int
    oldest_pending_seq: int | None
    oldest_pending_created: datetime | None
    schema_version: int
    size_cap_bytes: int | None


@dataclass(frozen=True, slots=True)
class PruneReport:
    reason: str  # "age" | "size_cap"
    rows: int  # data rows deleted
    unsent: Mapping[str, int]  # outbox entries deleted before upload, by kind
    through: date | None  # data strictly before this date is gone


# --- load-curve packing ---------------------------------------------------------------------

def pack_points(values: Sequence[int | None]) -> bytes:
    """Pack scaled integer points: presence bitmap, then zig-zag varint deltas of present points.

    Curves of energy or power change little from slot to slot, so a day of 96 points takes
    typically 150-250 bytes instead of 96 decimal strings.
    """
    bitmap = bytearray((len(values) + 7) // 8)
    out = bytearray()
    prev = 0
    for i, v in enumerate(values):
        if v is None:
            continue
        bitmap[i >> 3] |= 1 << (i & 7)
        d = v - prev
        prev = v
        z = d << 1 if d >= 0 else ((-d) << 1) - 1
        while z >= 0x80:
            out.append((z & 0x7F) | 0x80)
            z >>= 7
        out.append(z)
    return bytes(bitmap) + bytes(out)


def unpack_points(blob: bytes, count: int) -> list[int | None]:
    """Inverse of ``pack_points`` for a day of ``count`` slots; raises StoreError if damaged."""
    nmap = (count + 7) // 8
    if len(blob) < nmap:
        raise StoreError("curve blob shorter than its bitmap")
    out: list[int | None] = [None] * count
    pos = nmap
    prev = 0
    for i in range(count):
        if not blob[i >> 3] >> (i & 7) & 1:
            continue
        z = shift = 0
        while True:
            if pos >= len(blob):
                raise StoreError("curve blob truncated")
            b = blob[pos]
            pos += 1
            z |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        d = z >> 1 if not z & 1 else -((z + 1) >> 1)
        prev += d
        out[i] = prev
    return out


# --- migrations -----------------------------------------------------------------------------

_SCHEMA_V1 = """
CREATE TABLE archive (
    address TEXT PRIMARY KEY,
    protocol TEXT NOT NULL,
    device_kind TEXT NOT NULL,
    collector TEXT,
    phase TEXT,
    point INTEGER,
    prepaid INTEGER NOT NULL DEFAULT 0,
    prepaid_params TEXT,
    source TEXT NOT NULL CHECK (source IN ('archive', 'discovered')),
    quarantined INTEGER NOT NULL DEFAULT 0,
    updated TEXT NOT NULL
);
CREATE TABLE daily (
    meter TEXT NOT NULL,
    freeze_date TEXT NOT NULL,
    freeze_time TEXT,
    fwd_total TEXT,
    fwd_tariffs TEXT NOT NULL,
    rev_total TEXT,
    rev_tariffs TEXT NOT NULL,
    read_time TEXT NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (meter, freeze_date)
) WITHOUT ROWID;
CREATE INDEX daily_date ON daily (freeze_date);
CREATE TABLE curve (
    meter TEXT NOT NULL,
    day TEXT NOT NULL,
    item TEXT NOT NULL,
    density_min INTEGER NOT NULL,
    points BLOB NOT NULL,
    PRIMARY KEY (meter, day, item)
);
CREATE INDEX curve_day ON curve (day);
CREATE TABLE realtime (
    meter TEXT NOT NULL,
    read_time TEXT NOT NULL,
    fwd_total TEXT,
    fwd_tariffs TEXT NOT NULL,
    rev_total TEXT,
    rev_tariffs TEXT NOT NULL,
    extra TEXT NOT NULL,
    flags INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (meter, read_time)
) WITHOUT ROWID;
CREATE INDEX realtime_time ON realtime (read_time);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    erc INTEGER NOT NULL,
    meter TEXT,
    time TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX events_time ON events (time);
CREATE TABLE line_loss (
    day TEXT PRIMARY KEY,
    summary_energy TEXT NOT NULL,
    customer_energy TEXT NOT NULL,
    loss_pct TEXT,
    meters_covered INTEGER NOT NULL,
    meters_total INTEGER NOT NULL
);
CREATE TABLE read_stats (
    id INTEGER PRIMARY KEY,
    meter TEXT NOT NULL,
    task TEXT NOT NULL,
    route TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    latency_s REAL,
    outcome TEXT NOT NULL,
    time TEXT NOT NULL
);
CREATE INDEX read_stats_time ON read_stats (time);
CREATE INDEX read_stats_meter ON read_stats (meter, time);
CREATE TABLE read_rounds (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    start TEXT NOT NULL,
    "end" TEXT NOT NULL,
    first_rate REAL NOT NULL,
    final_rate REAL NOT NULL,
    unread TEXT NOT NULL
);
CREATE INDEX read_rounds_start ON read_rounds (start);
CREATE TABLE kv (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    meter TEXT,
    ref TEXT NOT NULL,
    day TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE UNIQUE INDEX outbox_ref ON outbox (kind, ref, meter);
CREATE INDEX outbox_day ON outbox (kind, day);
"""


def _migration_1(db: sqlite_utils.Database) -> None:
    for statement in _SCHEMA_V1.split(";"):
        if statement.strip():
            db.execute(statement)


_SCHEMA_V2 = """
CREATE TABLE prepay_account (
    meter TEXT PRIMARY KEY,
    params TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE prepay_ledger (
    meter TEXT PRIMARY KEY,
    balance TEXT NOT NULL,
    last_registers TEXT,
    last_time TEXT,
    alarm_on INTEGER NOT NULL DEFAULT 0,
    credit_trip INTEGER NOT NULL DEFAULT 0,
    protect INTEGER NOT NULL DEFAULT 0,
    protect_until TEXT,
    updated TEXT NOT NULL
);
CREATE TABLE prepay_purchase (
    meter TEXT NOT NULL,
    order_no INTEGER NOT NULL,
    amount TEXT NOT NULL,
    replace INTEGER NOT NULL,
    alarm_threshold TEXT,
    trip_threshold TEXT,
    balance_before TEXT NOT NULL,
    balance_after TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (meter, order_no)
);
CREATE INDEX prepay_purchase_time ON prepay_purchase (meter, applied_at);
CREATE TABLE prepay_action (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter TEXT NOT NULL,
    action TEXT NOT NULL,
    origin TEXT NOT NULL,
    source TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at TEXT,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    outcome TEXT NOT NULL DEFAULT ''
);
CREATE INDEX prepay_action_state ON prepay_action (state, meter);
"""


def _migration_2(db: sqlite_utils.Database) -> None:
    # Prepayment (concentrator/prepay.py owns the SQL on these tables).
    for statement in _SCHEMA_V2.split(";"):
        if statement.strip():
            db.execute(statement)


# Applied in order: entry i takes the schema from version i to i + 1. Append, never edit.
Migration = tuple[str, Callable[[sqlite_utils.Database], None]]
MIGRATIONS: list[Migration] = [
    ("initial schema: archive, readings, events, line loss, statistics, kv, outbox", _migration_1),
    ("prepayment: accounts, ledger, purchases, control actions", _migration_2),
]

_DATA_TABLES = ("daily", "curve", "realtime", "events", "line_loss", "read_stats", "read_rounds")


# --- conversions ----------------------------------------------------------------------------

def _slot_ranges(slots: Sequence[int]) -> str:
    """Sorted slot numbers as compact ranges: [0, 1, 2, 5] -> "0-2,5"."""
    runs: list[list[int]] = []
    for slot in slots:
        if runs and slot == runs[-1][1] + 1:
            runs[-1][1] = slot
        else:
            runs.append([slot, slot])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _parse_slot_ranges(text: str) -> set[int]:
    keep: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        keep.update(range(int(lo), int(hi or lo) + 1))
    return keep


def _address(a: str, what: str = "meter") -> str:
    try:
        address_to_wire(a)
    except (EncodeError, TypeError) as exc:
        raise StoreError(f"bad {what} address {a!r}: {exc}") from exc
    return a.upper()


def _dec(v: Any, what: str) -> Decimal | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, Decimal | int):
        raise StoreError(f"{what} must be a Decimal, got {type(v).__name__}")
    d = Decimal(v)
    if not d.is_finite():
        raise StoreError(f"{what} is not finite: {d}")
    return d


def _dec_str(v: Any, what: str) -> str | None:
    d = _dec(v, what)
    return None if d is None else str(d)


def _tariffs_json(values: Iterable[Any], what: str) -> str:
    return json.dumps([_dec_str(v, what) for v in values])


def _tariffs_load(text: str) -> Tariffs:
    return tuple(None if s is None else Decimal(s) for s in json.loads(text))


def _from_text(s: str | None) -> Decimal | None:
    return None if s is None else Decimal(s)


def _iso(t: datetime) -> str:
    return t.replace(microsecond=0).isoformat()


def _check_date(v: Any, what: str) -> date:
    if isinstance(v, datetime) or not isinstance(v, date):
        raise StoreError(f"{what} must be a date, got {v!r}")
    return v


def _check_datetime(v: Any, what: str) -> datetime:
    if not isinstance(v, datetime):
        raise StoreError(f"{what} must be a datetime, got {v!r}")
    return v


def _scaled(v: Any, what: str) -> int | None:
    d = _dec(v, what)
    if d is None:
        return None
    try:
        q = d.scaleb(CURVE_SCALE)
        if q != q.to_integral_value():
            raise StoreError(f"{what} {d} has more than {CURVE_SCALE} decimals")
        return int(q)
    except InvalidOperation as exc:
        raise StoreError(f"{what} {d} cannot be stored") from exc


def _json_default(o: Any) -> Any:
    if isinstance(o, Decimal):
        return str(o)
    if isinstance(o, datetime | date):
        return o.isoformat()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == _SQLITE_FULL or "database or disk is full" in str(exc)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "not a database" in str(exc) or (
        "malformed" in str(exc)
    )


def _create_private_file(path: Path) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _ensure_private_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves so one batch is one transaction.
    return sqlite3.connect(str(path), isolation_level=None, timeout=5.0)


def _quick_check(conn: sqlite3.Connection) -> str | None:
    """None if the file is sound, else the reason it is not. Locking errors are raised."""
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if _is_corrupt(exc):
            return str(exc)
        raise StoreError(f"cannot check the store: {exc}") from exc
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows[:5])


# --- the store ------------------------------------------------------------------------------

class Store:
    """The SQLite store. Open with ``Store.open``; not safe to share between threads."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        clock: Clock,
        size_cap_bytes: int | None,
        retention_days: int,
        curve_retention_days: int,
    ) -> None:
        self._conn = conn
        self.db = sqlite_utils.Database(conn)  # for packages with their own tables (the mesh)
        self.path = path
        self._clock = clock
        self._cap = size_cap_bytes
        self.retention_days = retention_days
        self.curve_retention_days = curve_retention_days
        self._depth = 0
        self._doomed: StoreError | None = None
        # One store-full alarm per episode: pending after StoreFull, recorded by the next
        # transaction that commits, re-armed once a batch of the caller's data commits again.
        self._full_alarm_pending = False
        self._full_alarm_in_tx = False
        self._full_alarmed = False
        self._last_prune_day: date | None = None
        self._in_housekeeping = False  # prune/evict run their own batches: no re-entry
        self._closed = False
        # Bumped on every line-loss write or deletion, so the uplink's idle poll can tell
        # "nothing new" without querying each day (it polls every few seconds, all day).
        self.line_loss_version = 0
        self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]

    # --- opening and closing ----------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock,
        size_cap_bytes: int | None = None,
        retention_days: int = 62,
        curve_retention_days: int = 31,
    ) -> Store:
        """Open (creating if needed) the store at ``path``.

        Refuses (StoreError) a file writable by group or others or with a newer schema. A file
        that fails ``PRAGMA quick_check`` is moved aside to ``<name>.corrupt-<timestamp>`` and
        a fresh store is created; an ERC 21 event records it.
        """
        path = Path(path)
        if size_cap_bytes is not None and size_cap_bytes < 256 * 1024:
            raise StoreError(f"size cap {size_cap_bytes} B is too small to hold a store")
        if retention_days < 1 or curve_retention_days < 1:
            raise StoreError("retention must be at least one day")
        _ensure_private_dir(path.parent)
        if path.exists():
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):
                raise StoreError(f"{path} is not a regular file")
            if st.st_mode & 0o022:
                raise StoreError(
                    f"{path} is writable by group/others (mode {stat.S_IMODE(st.st_mode):o}); "
                    "refusing to use it: chmod 600 it if its contents are trusted"
                )
        else:
            _create_private_file(path)

        corrupt: tuple[str, Path] | None = None
        with path.open("rb") as f:
            header = f.read(16)
        if header and header != b"SQLite format 3\x00":
            # Checked before SQLite touches it: SQLite would delete a stray WAL on close.
            reason: str | None = "file is not a database (bad header)"
            conn = None
        else:
            conn = _connect(path)
            try:
                reason = _quick_check(conn)
            except BaseException:
                conn.close()
                raise
        if reason is not None:
            if conn is not None:
                conn.close()
            aside = cls._move_aside(path, clock)
            log.error("store %s is corrupt (%s): moved aside to %s, starting fresh",
                      path, reason, aside)
            _create_private_file(path)
            _fsync_dir(path.parent)
            conn = _connect(path)
            corrupt = (reason, aside)

        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"cannot put {path} in WAL mode (got {mode})")
            # FULL: in WAL mode NORMAL may lose the last commits on power loss (docs/store.md).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA journal_size_limit=8388608")
            if size_cap_bytes is not None:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                # Beyond this page count SQLite answers SQLITE_FULL, exactly like a full disk.
                conn.execute(f"PRAGMA max_page_count={max(16, size_cap_bytes // page_size)}")
            version = cls._migrate(conn, clock)
        except BaseException:
            conn.close()
            raise

        store = cls(conn, path, clock, size_cap_bytes, retention_days, curve_retention_days)
        log.info("store %s open: schema v%d, cap %s B, retention %d/%d days",
                 path, version, size_cap_bytes, retention_days, curve_retention_days)
        if corrupt is not None:
            store.add_event(ERC_TERMINAL_FAULT, None,
                            {"fault": "store_corrupt", "reason": corrupt[0][:200],
                             "moved_to": corrupt[1].name})
        store._housekeeping()
        return store

    @staticmethod
    def _move_aside(path: Path, clock: Clock) -> Path:
        stamp = clock.now().strftime("%Y%m%dT%H%M%S")
        aside = path.with_name(f"{path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            aside = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.replace(path, aside)
        # The WAL must go with it: a leftover WAL could be replayed into the fresh file.
        for suffix in ("-wal", "-shm", "-journal"):
            side = path.with_name(path.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        return aside

    @staticmethod
    def _migrate(conn: sqlite3.Connection, clock: Clock) -> int:
        db = sqlite_utils.Database(conn)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version INTEGER PRIMARY KEY, applied TEXT NOT NULL, description TEXT NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
        migrations = MIGRATIONS
        if current > len(migrations):
            raise StoreError(
                f"store schema v{current} is newer than this software (v{len(migrations)})"
            )
        for version in range(current + 1, len(migrations) + 1):
            description, migrate = migrations[version - 1]
            conn.execute("BEGIN IMMEDIATE")
            try:
                migrate(db)
                conn.execute(
                    "INSERT INTO schema_version (version, applied, description) VALUES (?, ?, ?)",
                    (version, _iso(clock.now()), description),
                )
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, Exception):
                    raise StoreError(f"migration to v{version} ({description}) failed: {exc}") from exc
                raise
            log.info("store schema migrated to v%d: %s", version, description)
            current = version
        return current

    def close(self) -> None:
        """Checkpoint the WAL and close. Refused inside a batch."""
        if self._closed:
            return
        if self._depth:
            raise StoreError("close() inside a batch")
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        self._closed = True
        log.info("store %s closed", self.path)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return self._conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]

    # --- transactions -----------------------------------------------------------------------

    def _translate(self, exc: sqlite3.Error, what: str) -> StoreError:
        if _is_full(exc):
            if not self._full_alarmed:
                self._full_alarm_pending = True
            return StoreFull(f"{what}: {exc}")
        return StoreError(f"{what}: {exc}")

    def _x(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        """Execute inside the current batch; an SQLite error dooms the whole batch."""
        if self._doomed is not None:
            # SQLite may already have rolled the transaction back: running on would autocommit.
            raise self._doomed
        try:
            return self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            err = self._translate(exc, "write failed")
            if self._depth and self._doomed is None:
                self._doomed = err
            raise err from exc

    @contextlib.contextmanager
    def batch(self) -> Iterator[Store]:
        """One transaction for many writes: all of them are stored, or (on error) none.

        Nested ``batch()`` blocks are savepoints inside the outer transaction. If any write in
        the batch fails with an SQLite error the whole batch is rolled back at the end, even if
        the caller caught the error. Raises StoreFull when the disk or the size cap is full.
        """
        if self._closed:
            raise StoreError("store is closed")
        if self._depth:
            name = f"b{self._depth}"
            self._conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield self
            except BaseException:
                self._depth -= 1
                if self._conn.in_transaction:
                    self._conn.execute(f"ROLLBACK TO {name}")
                    self._conn.execute(f"RELEASE {name}")
                raise
            self._depth -= 1
            self._conn.execute(f"RELEASE {name}")
            return

        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise self._translate(exc, "cannot start a transaction") from exc
        self._depth = 1
        self._doomed = None
        self._full_alarm_in_tx = False
        try:
            if self._full_alarm_pending:
                self._insert_event(ERC_TERMINAL_FAULT, None, {"fault": "store_full"})
                self._full_alarm_in_tx = True
            yield self
            if self._doomed is not None:
                raise self._doomed
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise self._translate(exc, "commit failed") from exc
        except BaseException as exc:
            self._depth = 0
            self._doomed = None
            with contextlib.suppress(sqlite3.Error):
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            if isinstance(exc, StoreFull):
                log.error("store full: batch rolled back (%s)", exc)
                self._relieve_full()
            raise
        self._depth = 0
        if self._full_alarm_in_tx:
            self._full_alarm_pending = False
            self._full_alarm_in_tx = False
            self._full_alarmed = True
            log.warning("store has room again: store-full alarm recorded")
        elif not self._in_housekeeping:
            self._full_alarmed = False  # the caller's data fits again: the episode is over
        self._housekeeping()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        # A single write outside a batch is its own transaction; inside one it just joins it.
        if self._closed:
            raise StoreError("store is closed")
        if self._depth:
            yield
        else:
            with self.batch():
                yield

    # --- archive ----------------------------------------------------------------------------

    def upsert_meter(self, m: MeterRecord) -> None:
        """Add or replace a meter in the archive."""
        address = _address(m.address)
        collector = None if m.collector is None else _address(m.collector, "collector")
        if m.source not in ("archive", "discovered"):
            raise StoreError(f"meter {address}: source must be archive|discovered, not {m.source!r}")
        params = None if m.prepaid_params is None else json.dumps(
            dict(m.prepaid_params), default=_json_default, sort_keys=True)
        with self._tx():
            self._x(
                "INSERT INTO archive (address, protocol, device_kind, collector, phase, point,"
                " prepaid, prepaid_params, source, quarantined, updated)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (address) DO UPDATE SET"
                " protocol=excluded.protocol, device_kind=excluded.device_kind,"
                " collector=excluded.collector, phase=excluded.phase, point=excluded.point,"
                " prepaid=excluded.prepaid, prepaid_params=excluded.prepaid_params,"
                " source=excluded.source, quarantined=excluded.quarantined,"
                " updated=excluded.updated",
                (address, m.protocol, m.device_kind, collector, m.phase, m.point,
                 int(m.prepaid), params, m.source, int(m.quarantined), _iso(self._clock.now())),
            )
        log.debug("meter %s archived (%s, %s)", address, m.source, m.device_kind)

    def set_quarantined(self, address: str, quarantined: bool) -> bool:
        """Mark a meter (un)trusted; False if it is not in the archive."""
        address = _address(address)
        with self._tx():
            n = self._x("UPDATE archive SET quarantined=?, updated=? WHERE address=?",
                        (int(quarantined), _iso(self._clock.now()), address)).rowcount
        if n:
            log.info("meter %s %s", address, "quarantined" if quarantined else "released")
        return bool(n)

    def remove_meter(self, address: str) -> bool:
        """Delete a meter from the archive (its readings stay until they age out)."""
        address = _address(address)
        with self._tx():
            n = self._x("DELETE FROM archive WHERE address=?", (address,)).rowcount
        if n:
            log.info("meter %s removed from the archive", address)
        return bool(n)

    def meter(self, address: str) -> MeterRecord | None:
        row = self._conn.execute("SELECT * FROM archive WHERE address=?",
                                 (_address(address),)).fetchone()
        return None if row is None else self._meter_row(row)

    def meters(self, *, include_quarantined: bool = True) -> list[MeterRecord]:
        sql = "SELECT * FROM archive"
        if not include_quarantined:
            sql += " WHERE quarantined=0"
        return [self._meter_row(r) for r in self._conn.execute(sql + " ORDER BY address")]

    def meter_points(self) -> list[tuple[str, int]]:
        """(address, measuring point pn) of every meter that has a point, in address order.

        The uplink maps meters to points for every upload frame: this skips building a
        MeterRecord per archive row (``meters()`` did that 1,000 times per frame).
        """
        return self._conn.execute("SELECT address, point FROM archive WHERE point IS NOT NULL"
                                  " AND point <> 0 ORDER BY address").fetchall()

    @staticmethod
    def _meter_row(r: Sequence[Any]) -> MeterRecord:
        return MeterRecord(
            address=r[0], protocol=r[1], device_kind=r[2], collector=r[3], phase=r[4],
            point=r[5], prepaid=bool(r[6]),
            prepaid_params=None if r[7] is None else json.loads(r[7]),
            source=r[8], quarantined=bool(r[9]),
        )

    # --- readings ---------------------------------------------------------------------------

    def _outbox_put(self, kind: str, meter: str | None, ref: str, day: str) -> int:
        # A changed record gets a new sequence number, so the master's confirmation of the old
        # version cannot retire the new one.
        self._x("DELETE FROM outbox WHERE kind=? AND ref=? AND meter IS ?", (kind, ref, meter))
        cur = self._x(
            "INSERT INTO outbox (kind, meter, ref, day, created) VALUES (?,?,?,?,?)",
            (kind, meter, ref, day, _iso(self._clock.now())),
        )
        return int(cur.lastrowid or 0)

    def write_daily(self, r: DailyReading) -> bool:
        """Store a daily frozen reading; False if the same reading was already stored."""
        meter = _address(r.meter)
        fd = _check_date(r.freeze_date, "freeze_date").isoformat()
        row = (
            None if r.freeze_time is None else _iso(_check_datetime(r.freeze_time, "freeze_time")),
            _dec_str(r.fwd_total, "fwd_total"),
            _tariffs_json(r.fwd_tariffs, "fwd tariff"),
            _dec_str(r.rev_total, "rev_total"),
            _tariffs_json(r.rev_tariffs, "rev tariff"),
            _iso(_check_datetime(r.read_time, "read_time")),
            int(r.flags),
        )
        with self._tx():
            old = self._x(
                "SELECT freeze_time, fwd_total, fwd_tariffs, rev_total, rev_tariffs, read_time,"
                " flags FROM daily WHERE meter=? AND freeze_date=?", (meter, fd)).fetchone()
            if old is not None and tuple(old[:5]) == row[:5] and old[6] == row[6]:
                return False  # same values (a re-read's read_time alone is no news)
            self._x(
                "INSERT INTO daily (meter, freeze_date, freeze_time, fwd_total, fwd_tariffs,"
                " rev_total, rev_tariffs, read_time, flags) VALUES (?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (meter, freeze_date) DO UPDATE SET freeze_time=excluded.freeze_time,"
                " fwd_total=excluded.fwd_total, fwd_tariffs=excluded.fwd_tariffs,"
                " rev_total=excluded.rev_total, rev_tariffs=excluded.rev_tariffs,"
                " read_time=excluded.read_time, flags=excluded.flags",
                (meter, fd, *row),
            )
            self._outbox_put("daily", meter, fd, fd)
        if old is not None:
            log.warning("meter %s daily %s changed: fwd %s -> %s", meter, fd, old[1], row[1])
        else:
            log.debug("meter %s daily %s stored: fwd %s", meter, fd, row[1])
        return True

    def daily(self, meter: str, freeze_date: date) -> DailyReading | None:
        """The daily frozen reading of ``meter`` for ``freeze_date``, if stored."""
        meter = _address(meter)
        row = self._conn.execute(
            "SELECT meter, freeze_date, freeze_time, fwd_total, fwd_tariffs, rev_total,"
            " rev_tariffs, read_time, flags FROM daily WHERE meter=? AND freeze_date=?",
            (meter, _check_date(freeze_date, "freeze_date").isoformat())).fetchone()
        return None if row is None else self._daily_row(row)

    def daily_for_date(self, freeze_date: date) -> list[DailyReading]:
        """All meters' daily readings for one freeze date (line loss, completeness)."""
        rows = self._conn.execute(
            "SELECT meter, freeze_date, freeze_time, fwd_total, fwd_tariffs, rev_total,"
            " rev_tariffs, read_time, flags FROM daily WHERE freeze_date=? ORDER BY meter",
            (_check_date(freeze_date, "freeze_date").isoformat(),))
        return [self._daily_row(r) for r in rows]

    @staticmethod
    def _daily_row(r: Sequence[Any]) -> DailyReading:
        return DailyReading(
            meter=r[0], freeze_date=date.fromisoformat(r[1]),
            freeze_time=None if r[2] is None else datetime.fromisoformat(r[2]),
            fwd_total=_from_text(r[3]), fwd_tariffs=_tariffs_load(r[4]),
            rev_total=_from_text(r[5]), rev_tariffs=_tariffs_load(r[6]),
            read_time=datetime.fromisoformat(r[7]), flags=r[8],
        )

    def write_curve(
        self,
        meter: str,
        day: date,
        points: Mapping[int | time, Decimal | None],
        *,
        density_min: int = 15,
        item: str = "fwd_active",
    ) -> bool:
        """Upsert load-curve points of one meter and day; keys are slot numbers or times.

        Points already stored for other slots are kept. False if nothing changed. Values are
        kept to 10^-4 (more decimals, a density that does not divide the day or differs from
        the stored row's: StoreError).
        """
        meter = _address(meter)
        ds = _check_date(day, "day").isoformat()
        if density_min < 1 or 1440 % density_min:
            raise StoreError(f"meter {meter}: curve density {density_min} min does not divide a day")
        count = 1440 // density_min
        updates: dict[int, int | None] = {}
        for key, value in points.items():
            if isinstance(key, time):
                minutes = key.hour * 60 + key.minute
                if key.second or key.microsecond or minutes % density_min:
                    raise StoreError(f"meter {meter}: curve time {key} is not on a "
                                     f"{density_min}-minute slot")
                slot = minutes // density_min
            else:
                slot = int(key)
            if not 0 <= slot < count:
                raise StoreError(f"meter {meter}: curve slot {slot} outside 0..{count - 1}")
            updates[slot] = _scaled(value, f"meter {meter} curve point")
        ref = f"{ds}/{item}"
        with self._tx():
            old = self._x("SELECT density_min, points FROM curve WHERE meter=? AND day=? AND item=?",
                          (meter, ds, item)).fetchone()
            if old is not None:
                if old[0] != density_min:
                    raise StoreError(f"meter {meter}: curve {ref} is stored at {old[0]} min, "
                                     f"not {density_min}")
                values = unpack_points(old[1], count)
            else:
                values = [None] * count
            merged = list(values)
            for slot, v in updates.items():
                if v is not None:  # a missing point never erases a stored one
                    merged[slot] = v
            if old is not None and merged == values:
                return False
            self._x(
                "INSERT INTO curve (meter, day, item, density_min, points) VALUES (?,?,?,?,?)"
                " ON CONFLICT (meter, day, item) DO UPDATE SET points=excluded.points",
                (meter, ds, item, density_min, pack_points(merged)),
            )
            # Upload only the points this write changed: a day's curve grows point by point, and
            # re-sending the whole day each time would deliver every point many times over.
            changed = [i for i in range(count) if merged[i] != values[i]]
            self._outbox_put("curve", meter, f"{ref}/{_slot_ranges(changed)}", ds)
        log.debug("meter %s curve %s: %d points upserted", meter, ref, len(updates))
        return True

    def curve(self, meter: str, day: date, item: str = "fwd_active") -> CurveDay | None:
        row = self._conn.execute(
            "SELECT meter, day, item, density_min, points FROM curve"
            " WHERE meter=? AND day=? AND item=?",
            (_address(meter), _check_date(day, "day").isoformat(), item)).fetchone()
        return None if row is None else self._curve_row(row)

    @staticmethod
    def _curve_row(r: Sequence[Any], keep: set[int] | None = None) -> CurveDay:
        """The row as a ``CurveDay``; with ``keep``, only those slots (the rest ``None``)."""
        count = 1440 // r[3]
        # Only the points asked for become Decimals: an incremental upload item keeps a few
        # slots of the day, and 96 Decimals per outbox row were the upload's main cost.
        points = tuple(None if v is None or (keep is not None and i not in keep)
                       else Decimal(v).scaleb(-CURVE_SCALE)
                       for i, v in enumerate(unpack_points(r[4], count)))
        return CurveDay(meter=r[0], day=date.fromisoformat(r[1]), item=r[2],
                        density_min=r[3], points=points)

    def write_realtime(self, r: RealtimeReading) -> bool:
        """Store a real-time reading; False if this meter/read time is already stored as is."""
        meter = _address(r.meter)
        rt = _iso(_check_datetime(r.read_time, "read_time"))
        extra = json.dumps({str(k): _dec_str(v, f"value {k}") for k, v in r.values.items()},
                           sort_keys=True)
        row = (_dec_str(r.fwd_total, "fwd_total"), _tariffs_json(r.fwd_tariffs, "fwd tariff"),
               _dec_str(r.rev_total, "rev_total"), _tariffs_json(r.rev_tariffs, "rev tariff"),
               extra, int(r.flags))
        with self._tx():
            old = self._x(
                "SELECT fwd_total, fwd_tariffs, rev_total, rev_tariffs, extra, flags FROM realtime"
                " WHERE meter=? AND read_time=?", (meter, rt)).fetchone()
            if old is not None and tuple(old) == row:
                return False
            self._x(
                "INSERT OR REPLACE INTO realtime (meter, read_time, fwd_total, fwd_tariffs,"
                " rev_total, rev_tariffs, extra, flags) VALUES (?,?,?,?,?,?,?,?)",
                (meter, rt, *row),
            )
            self._outbox_put("realtime", meter, rt, rt[:10])
        log.debug("meter %s realtime %s stored: fwd %s", meter, rt, row[0])
        return True

    def latest_realtime(self, meter: str) -> RealtimeReading | None:
        row = self._conn.execute(
            "SELECT * FROM realtime WHERE meter=? ORDER BY read_time DESC LIMIT 1",
            (_address(meter),)).fetchone()
        return None if row is None else self._realtime_row(row)

    def latest_realtime_all(self) -> dict[str, RealtimeReading]:
        """The newest real-time reading of every meter that has one."""
        rows = self._conn.execute(
            "SELECT r.* FROM realtime r JOIN (SELECT meter, MAX(read_time) AS t FROM realtime"
            " GROUP BY meter) m ON r.meter = m.meter AND r.read_time = m.t")
        return {r[0]: self._realtime_row(r) for r in rows}

    @staticmethod
    def _realtime_row(r: Sequence[Any]) -> RealtimeReading:
        return RealtimeReading(
            meter=r[0], read_time=datetime.fromisoformat(r[1]), fwd_total=_from_text(r[2]),
            fwd_tariffs=_tariffs_load(r[3]), rev_total=_from_text(r[4]),
            rev_tariffs=_tariffs_load(r[5]),
            values={k: Decimal(v) for k, v in json.loads(r[6]).items() if v is not None},
            flags=r[7],
        )

    # --- events -----------------------------------------------------------------------------

    def _insert_event(self, erc: int, meter: str | None, detail: Mapping[str, Any],
                      when: datetime | None = None) -> int:
        t = _iso(when or self._clock.now())
        text = json.dumps(dict(detail), default=_json_default, sort_keys=True)
        eid = int(self._x("INSERT INTO events (erc, meter, time, detail) VALUES (?,?,?,?)",
                          (erc, meter, t, text)).lastrowid or 0)
        self._outbox_put("event", meter, str(eid), t[:10])
        return eid

    def add_event(self, erc: int, meter: str | None = None,
                  detail: Mapping[str, Any] | None = None, *, time: datetime | None = None) -> int:
        """Record an event (ERC 1..255, meter None = the concentrator itself); returns its id."""
        if isinstance(erc, bool) or not isinstance(erc, int) or not 1 <= erc <= 255:
            raise StoreError(f"ERC code must be 1..255, got {erc!r}")
        m = None if meter is None else _address(meter)
        if time is not None:
            _check_datetime(time, "event time")
        try:
            json.dumps(dict(detail or {}), default=_json_default)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"event detail is not JSON serialisable: {exc}") from exc
        with self._tx():
            eid = self._insert_event(erc, m, detail or {}, time)
        log.info("event %d ERC%d meter %s: %s", eid, erc, m or "-", dict(detail or {}))
        return eid

    def events_since(self, pointer: int = 0, limit: int = 100) -> list[Event]:
        """Events with id > ``pointer``, oldest first (the uplink's event pointer)."""
        rows = self._conn.execute(
            "SELECT id, erc, meter, time, detail FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (int(pointer), int(limit)))
        return [self._event_row(r) for r in rows]

    @staticmethod
    def _event_row(r: Sequence[Any]) -> Event:
        return Event(id=r[0], erc=r[1], meter=r[2], time=datetime.fromisoformat(r[3]),
                     detail=json.loads(r[4]))

    # --- line loss, statistics, kv ----------------------------------------------------------

    def write_line_loss(self, ll: LineLoss) -> None:
        """Store (or replace) the line loss of one day."""
        day = _check_date(ll.day, "day").isoformat()
        row = (day, _dec_str(ll.summary_energy, "summary_energy"),
               _dec_str(ll.customer_energy, "customer_energy"), _dec_str(ll.loss_pct, "loss_pct"),
               int(ll.meters_covered), int(ll.meters_total))
        if row[1] is None or row[2] is None:
            raise StoreError("line loss needs summary and customer energy")
        with self._tx():
            self._x("INSERT OR REPLACE INTO line_loss VALUES (?,?,?,?,?,?)", row)
            self.line_loss_version += 1
        log.info("line loss %s: %s%% (%d/%d meters)", day, row[3], row[4], row[5])

    def line_loss(self, day: date) -> LineLoss | None:
        r = self._conn.execute("SELECT * FROM line_loss WHERE day=?",
                               (_check_date(day, "day").isoformat(),)).fetchone()
        if r is None:
            return None
        return LineLoss(day=date.fromisoformat(r[0]), summary_energy=Decimal(r[1]),
                        customer_energy=Decimal(r[2]), loss_pct=_from_text(r[3]),
                        meters_covered=r[4], meters_total=r[5])

    def record_read(self, rec: ReadRecord) -> None:
        """Append the statistics of one read."""
        meter = _address(rec.meter)
        route = json.dumps([_address(a, "relay") for a in rec.route])
        with self._tx():
            self._x(
                "INSERT INTO read_stats (meter, task, route, attempts, latency_s, outcome, time)"
                " VALUES (?,?,?,?,?,?,?)",
                (meter, rec.task, route, int(rec.attempts),
                 None if rec.latency_s is None else float(rec.latency_s), rec.outcome,
                 _iso(_check_datetime(rec.time, "read time"))),
            )

    def reads(self, meter: str, limit: int = 100) -> list[ReadRecord]:
        """The latest read statistics of one meter, newest first."""
        rows = self._conn.execute(
            "SELECT meter, task, route, attempts, latency_s, outcome, time FROM read_stats"
            " WHERE meter=? ORDER BY time DESC, id DESC LIMIT ?", (_address(meter), int(limit)))
        return [ReadRecord(meter=r[0], task=r[1], route=tuple(json.loads(r[2])), attempts=r[3],
                           latency_s=r[4], outcome=r[5], time=datetime.fromisoformat(r[6]))
                for r in rows]

    def record_round(self, rnd: ReadRound) -> int:
        """Store the summary of a reading round; returns its id."""
        unread = json.dumps({_address(a): str(why) for a, why in rnd.unread.items()},
                            sort_keys=True)
        with self._tx():
            rid = self._x(
                'INSERT INTO read_rounds (task, start, "end", first_rate, final_rate, unread)'
                " VALUES (?,?,?,?,?,?)",
                (rnd.task, _iso(_check_datetime(rnd.start, "start")),
                 _iso(_check_datetime(rnd.end, "end")), float(rnd.first_rate),
                 float(rnd.final_rate), unread),
            ).lastrowid
        log.info("round %s %s: first %.4f final %.4f, %d unread", rnd.task, _iso(rnd.start),
                 rnd.first_rate, rnd.final_rate, len(rnd.unread))
        return int(rid or 0)

    def rounds(self, task: str | None = None, limit: int = 20) -> list[ReadRound]:
        """The latest reading rounds (of one task), newest first."""
        sql = 'SELECT id, task, start, "end", first_rate, final_rate, unread FROM read_rounds'
        params: tuple[Any, ...] = ()
        if task is not None:
            sql += " WHERE task=?"
            params = (task,)
        rows = self._conn.execute(sql + " ORDER BY start DESC, id DESC LIMIT ?", (*params, limit))
        return [ReadRound(id=r[0], task=r[1], start=datetime.fromisoformat(r[2]),
                          end=datetime.fromisoformat(r[3]), first_rate=r[4], final_rate=r[5],
                          unread=json.loads(r[6])) for r in rows]

    def kv_get(self, key: str, default: Any = None) -> Any:
        """A JSON value other packages stored with ``kv_set``."""
        row = self._conn.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def kv_set(self, key: str, value: Any) -> None:
        try:
            text = json.dumps(value, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise StoreError(f"kv {key!r}: value is not JSON serialisable: {exc}") from exc
        with self._tx():
            self._x("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (key, text))

    # --- outbox -----------------------------------------------------------------------------

    def outbox_pending(self, limit: int = 100, after_seq: int | None = None) -> list[OutboxItem]:
        """Unconfirmed items in sequence order (after ``after_seq`` if given)."""
        rows = self._conn.execute(
            "SELECT seq, kind, meter, ref, created FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (-1 if after_seq is None else int(after_seq), int(limit))).fetchall()
        out: list[OutboxItem] = []
        for seq, kind, meter, ref, created in rows:
            payload = self._load(kind, meter, ref)
            if payload is None:  # cannot happen: eviction removes outbox rows with their data
                log.error("outbox seq %d (%s meter %s %s) has no data", seq, kind, meter, ref)
                continue
            out.append(OutboxItem(seq=seq, kind=kind, meter=meter, payload=payload,
                                  created=datetime.fromisoformat(created)))
        return out

    def _load(self, kind: str, meter: str | None, ref: str
              ) -> DailyReading | CurveDay | RealtimeReading | Event | None:
        c = self._conn
        if kind == "daily":
            r = c.execute("SELECT meter, freeze_date, freeze_time, fwd_total, fwd_tariffs,"
                          " rev_total, rev_tariffs, read_time, flags FROM daily"
                          " WHERE meter=? AND freeze_date=?", (meter, ref)).fetchone()
            return None if r is None else self._daily_row(r)
        if kind == "curve":
            day, _, rest = ref.partition("/")
            item, _, slots = rest.partition("/")
            r = c.execute("SELECT meter, day, item, density_min, points FROM curve"
                          " WHERE meter=? AND day=? AND item=?", (meter, day, item)).fetchone()
            if r is None:
                return None
            # No slots: written before uploads became incremental, the whole day.
            return self._curve_row(r, _parse_slot_ranges(slots) if slots else None)
        if kind == "realtime":
            r = c.execute("SELECT * FROM realtime WHERE meter=? AND read_time=?",
                          (meter, ref)).fetchone()
            return None if r is None else self._realtime_row(r)
        if kind == "event":
            r = c.execute("SELECT id, erc, meter, time, detail FROM events WHERE id=?",
                          (int(ref),)).fetchone()
            return None if r is None else self._event_row(r)
        return None

    def outbox_confirm(self, seqs: Iterable[int]) -> int:
        """The master confirmed these: remove them. Unknown seqs are ignored; returns removed."""
        wanted = sorted({int(s) for s in seqs})
        removed = 0
        with self._tx():
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                removed += self._x(
                    f"DELETE FROM outbox WHERE seq IN ({','.join('?' * len(chunk))})", chunk
                ).rowcount
        log.debug("outbox: %d of %d confirmations removed items", removed, len(wanted))
        return removed

    def outbox_stats(self) -> OutboxStats:
        c = self._conn
        depth, oldest = c.execute("SELECT COUNT(*), MIN(seq) FROM outbox").fetchone()
        created = None
        if oldest is not None:
            created = datetime.fromisoformat(
                c.execute("SELECT created FROM outbox WHERE seq=?", (oldest,)).fetchone()[0])
        by_kind = dict(c.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
        return OutboxStats(depth=depth, oldest_seq=oldest, oldest_created=created,
                           by_kind=by_kind, evicted_unsent=int(self.kv_get("store.evicted_unsent", 0)))

    # --- stats ------------------------------------------------------------------------------

    def _used_bytes(self) -> int:
        c = self._conn
        pages = c.execute("PRAGMA page_count").fetchone()[0]
        free = c.execute("PRAGMA freelist_count").fetchone()[0]
        return (pages - free) * self._page_size

    def stats(self) -> StoreStats:
        rows = {t: self._conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("archive", *_DATA_TABLES, "outbox")}
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(str(self.path) + suffix).st_size
        ob = self.outbox_stats()
        return StoreStats(rows=rows, file_bytes=size, used_bytes=self._used_bytes(),
                          outbox_depth=ob.depth, oldest_pending_seq=ob.oldest_seq,
                          oldest_pending_created=ob.oldest_created,
                          schema_version=self.schema_version, size_cap_bytes=self._cap)

    # --- retention and the size cap ---------------------------------------------------------

    def _delete_before(self, before: date, curve_before: date) -> tuple[int, dict[str, int]]:
        """Delete data dated before the given days; returns (rows, unsent outbox by kind)."""
        b, cb = before.isoformat(), curve_before.isoformat()
        unsent: dict[str, int] = {}
        for kind, cut in (("daily", b), ("curve", cb), ("realtime", b), ("event", b)):
            n = self._x("DELETE FROM outbox WHERE kind=? AND day < ?", (kind, cut)).rowcount
            if n:
                unsent[kind] = n
        rows = 0
        for sql, cut in (
            ("DELETE FROM daily WHERE freeze_date < ?", b),
            ("DELETE FROM curve WHERE day < ?", cb),
            ("DELETE FROM realtime WHERE read_time < ?", b),
            ("DELETE FROM events WHERE time < ?", b),
            ("DELETE FROM line_loss WHERE day < ?", b),
            ("DELETE FROM read_stats WHERE time < ?", b),
            ("DELETE FROM read_rounds WHERE start < ?", b),
        ):
            rows += self._x(sql, (cut,)).rowcount
        self.line_loss_version += 1
        return rows, unsent

    def _record_eviction(self, report: PruneReport) -> None:
        lost = sum(report.unsent.values())
        if lost:
            total = int(self.kv_get("store.evicted_unsent", 0)) + lost
            self._x("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)",
                    ("store.evicted_unsent", json.dumps(total)))
        if lost or report.reason == "size_cap":
            self._insert_event(ERC_TERMINAL_FAULT, None, {
                "fault": "evicted", "reason": report.reason, "rows": report.rows,
                "unsent": lost, "unsent_by_kind": dict(report.unsent),
                "through": None if report.through is None else report.through.isoformat()})

    def _reference_day(self) -> date:
        # Age is measured from the newest meter-dated reading, not only from the wall clock:
        # a wall clock that jumps years ahead must not wipe the store.
        today = self._clock.now().date()
        newest = self._conn.execute(
            "SELECT MAX(d) FROM (SELECT MAX(freeze_date) AS d FROM daily"
            " UNION ALL SELECT MAX(day) FROM curve)").fetchone()[0]
        if newest is None:
            return today
        return min(today, date.fromisoformat(newest))

    def prune_due(self) -> bool:
        """Whether today's age pruning has not run yet (it runs once a day: an empty pruning
        transaction every minute would cost the flash a sync for nothing)."""
        return self._last_prune_day != self._clock.now().date()

    def prune(self) -> PruneReport:
        """Delete data older than the retention periods; unsent losses become an ERC 21 event."""
        self._last_prune_day = self._clock.now().date()
        ref = self._reference_day()
        before = ref - timedelta(days=self.retention_days)
        curve_before = ref - timedelta(days=self.curve_retention_days)
        with self._tx():
            rows, unsent = self._delete_before(before, curve_before)
            report = PruneReport("age", rows, unsent, before)
            self._record_eviction(report)
        if rows:
            log.info("retention: %d rows before %s deleted (%d never uploaded)",
                     rows, before, sum(unsent.values()))
        if unsent:
            log.warning("retention evicted %s before upload", unsent)
        return report

    def _oldest_data_day(self) -> date | None:
        row = self._conn.execute(
            "SELECT MIN(d) FROM (SELECT MIN(freeze_date) AS d FROM daily"
            " UNION ALL SELECT MIN(day) FROM curve"
            " UNION ALL SELECT MIN(substr(read_time, 1, 10)) FROM realtime"
            " UNION ALL SELECT MIN(substr(time, 1, 10)) FROM events"
            " UNION ALL SELECT MIN(day) FROM line_loss"
            " UNION ALL SELECT MIN(substr(time, 1, 10)) FROM read_stats"
            " UNION ALL SELECT MIN(substr(start, 1, 10)) FROM read_rounds)").fetchone()
        return None if row[0] is None else date.fromisoformat(row[0])

    def _evict_for_size(self) -> PruneReport | None:
        """Delete whole oldest days (never today's) until used space is below the low water."""
        if self._cap is None:
            return None
        target = self._cap * _LOW_WATER
        today = self._clock.now().date()
        rows = 0
        unsent: dict[str, int] = {}
        through: date | None = None
        with self._tx():
            while self._used_bytes() > target:
                oldest = self._oldest_data_day()
                if oldest is None or oldest >= today:
                    break
                through = oldest + timedelta(days=1)
                n, u = self._delete_before(through, through)
                rows += n
                for k, v in u.items():
                    unsent[k] = unsent.get(k, 0) + v
            if through is None:
                return None
            report = PruneReport("size_cap", rows, unsent, through)
            self._record_eviction(report)
            if self._full_alarm_pending:
                self._insert_event(ERC_TERMINAL_FAULT, None, {"fault": "store_full"})
                self._full_alarm_in_tx = True
        log.warning("size cap: %d rows before %s evicted (%d never uploaded)",
                    rows, through, sum(unsent.values()))
        return report

    def _relieve_full(self) -> None:
        # After StoreFull: make room by evicting old days, if a cap says how much we may use.
        if self._in_housekeeping:
            return
        self._in_housekeeping = True
        try:
            self._evict_for_size()
        except StoreError as exc:
            log.error("store full and eviction failed: %s", exc)
        finally:
            self._in_housekeeping = False

    def _housekeeping(self) -> None:
        """After a commit: age pruning once a day, size-cap eviction above the high water."""
        if self._in_housekeeping:
            return
        self._in_housekeeping = True
        try:
            if self._last_prune_day != self._clock.now().date():
                self.prune()
            if self._cap is not None and self._used_bytes() > self._cap * _HIGH_WATER:
                self._evict_for_size()
        except StoreError as exc:
            # The caller's data is committed; housekeeping will be retried after the next batch.
            log.error("store housekeeping failed: %s", exc)
        finally:
            self._in_housekeeping = False

    # --- backup -----------------------------------------------------------------------------

    def backup(self, path: str | os.PathLike[str]) -> Path:
        """Online copy of the store to ``path`` (mode 0600), replaced atomically when complete."""
        if self._depth:
            raise StoreError("backup() inside a batch")
        target = Path(path)
        _ensure_private_dir(target.parent)
        tmp = target.with_name(target.name + ".tmp")
        for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        _create_private_file(tmp)
        try:
            dest = sqlite3.connect(str(tmp))
            try:
                self._conn.backup(dest)
            finally:
                dest.close()
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    target.with_name(target.name + suffix).unlink()
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise StoreError(f"backup to {target} failed: {exc}") from exc
        log.info("store backed up to %s", target)
        return target
