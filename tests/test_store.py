"""The SQLite store: round trips, the outbox contract, eviction, corruption and a kill -9 test."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time as walltime
from datetime import date, datetime, time, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import concentrator.store as store_mod
from concentrator.store import (
    ERC_TERMINAL_FAULT,
    FLAG_BACKFILLED,
    DailyReading,
    LineLoss,
    MeterRecord,
    ReadRecord,
    ReadRound,
    RealtimeReading,
    Store,
    StoreError,
    StoreFull,
    pack_points,
    unpack_points,
)

M1 = "000000000161"
M2 = "000000000162"
TODAY = date(2024, 5, 10)


class FakeClock:
    def __init__(self, now: datetime = datetime(2024, 5, 10, 1, 30)) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return 0.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "store.db"


@pytest.fixture
def store(path: Path, clock: FakeClock):
    s = Store.open(path, clock=clock)
    yield s
    s.close()


def daily(meter: str = M1, day: date = TODAY, total: str = "1234.56", **kw) -> DailyReading:
    return DailyReading(meter=meter, freeze_date=day, fwd_total=D(total),
                        read_time=datetime.combine(day, time(0, 7)), **kw)


def events_of(s: Store, fault: str) -> list:
    return [e for e in s.events_since(0, 1_000_000)
            if e.erc == ERC_TERMINAL_FAULT and e.detail.get("fault") == fault]


# --- opening: permissions, pragmas, migrations ----------------------------------------------

def test_new_store_is_private_wal_and_synchronous_full(path, clock):
    s = Store.open(path, clock=clock)
    try:
        s.write_daily(daily())
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        s.close()


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666])
def test_store_writable_by_others_is_refused(path, clock, mode):
    Store.open(path, clock=clock).close()
    os.chmod(path, mode)
    with pytest.raises(StoreError, match="writable by group/others"):
        Store.open(path, clock=clock)


def test_fresh_store_runs_every_migration_from_version_0(store):
    assert store.schema_version == len(store_mod.MIGRATIONS)
    versions = [r["version"] for r in store.db.query("SELECT version FROM schema_version")]
    assert versions == list(range(1, len(store_mod.MIGRATIONS) + 1))


def test_new_migration_is_applied_on_reopen_and_keeps_data(path, clock, monkeypatch):
    s = Store.open(path, clock=clock)
    s.write_daily(daily())
    s.close()

    def add_note_column(db):
        db.execute("ALTER TABLE archive ADD COLUMN note TEXT")

    monkeypatch.setattr(store_mod, "MIGRATIONS",
                        [*store_mod.MIGRATIONS, ("archive notes", add_note_column)])
    s = Store.open(path, clock=clock)
    try:
        assert s.schema_version == len(store_mod.MIGRATIONS)
        assert "note" in s.db["archive"].columns_dict
        assert s.daily(M1, TODAY).fwd_total == D("1234.56")
    finally:
        s.close()


def test_failing_migration_rolls_back_and_refuses_to_open(path, clock, monkeypatch):
    Store.open(path, clock=clock).close()
    current = len(store_mod.MIGRATIONS)

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, ("broken", broken)])
    with pytest.raises(StoreError, match=f"migration to v{current + 1}"):
        Store.open(path, clock=clock)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == current
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='half_done'").fetchone() is None
    conn.close()


def test_store_from_newer_software_is_refused(path, clock, monkeypatch):
    Store.open(path, clock=clock).close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", [])
    with pytest.raises(StoreError, match="newer"):
        Store.open(path, clock=clock)


def test_corrupt_file_is_moved_aside_and_a_fresh_store_records_it(path, clock):
    path.parent.mkdir(mode=0o700)
    garbage = b"this is not an sqlite database " * 200
    path.write_bytes(garbage)
    os.chmod(path, 0o600)
    path.with_name(path.name + "-wal").write_bytes(b"old wal")
    s = Store.open(path, clock=clock)
    try:
        aside = path.with_name("store.db.corrupt-20240510T013000")
        assert aside.read_bytes() == garbage
        assert path.with_name(aside.name + "-wal").read_bytes() == b"old wal"
        [ev] = events_of(s, "store_corrupt")
        assert ev.detail["moved_to"] == aside.name
        assert [i.kind for i in s.outbox_pending()] == ["event"]  # the master hears of it
        s.write_daily(daily())
        assert s.daily(M1, TODAY) is not None
    finally:
        s.close()


def test_damaged_page_is_detected_as_corrupt(path, clock):
    s = Store.open(path, clock=clock)
    with s.batch():
        for i in range(300):
            s.write_daily(daily(meter=f"{i:012d}"))
    s.close()
    data = bytearray(path.read_bytes())
    for off in range(4096 * 3, len(data), 4096):  # overwrite every page past the schema
        data[off:off + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    s = Store.open(path, clock=clock)
    try:
        assert len(events_of(s, "store_corrupt")) == 1
        assert list(path.parent.glob("store.db.corrupt-*"))
    finally:
        s.close()


# --- round trips ------------------------------------------------------------------------------

def test_archive_round_trip(store):
    m = MeterRecord(M1, protocol="dlt645-1997", device_kind="meter", collector="000000009001",
                    phase="B", point=7, prepaid=True,
                    prepaid_params={"tariff": "0.5283", "alarm_kwh": 10}, source="discovered")
    store.upsert_meter(m)
    assert store.meter(M1) == m
    store.upsert_meter(MeterRecord(M2))
    assert store.set_quarantined(M2, True)
    assert [x.address for x in store.meters(include_quarantined=False)] == [M1]
    assert store.remove_meter(M1) and store.meter(M1) is None
    assert not store.set_quarantined("000000000999", True)
    with pytest.raises(StoreError):
        store.upsert_meter(MeterRecord(M1, source="guessed"))


def test_daily_round_trip_keeps_exact_decimals_and_tariffs(store):
    r = DailyReading(meter=M1, freeze_date=TODAY, fwd_total=D("999999.99"),
                     fwd_tariffs=(D("1.01"), None, D("0.00"), D("3")),
                     rev_total=D("0.10"), rev_tariffs=(D("0.10"),),
                     freeze_time=datetime(2024, 5, 10, 0, 0), read_time=datetime(2024, 5, 10, 0, 7),
                     flags=FLAG_BACKFILLED)
    assert store.write_daily(r)
    assert store.daily(M1, TODAY) == r
    assert store.daily(M1, TODAY - timedelta(days=1)) is None
    assert store.daily_for_date(TODAY) == [r]


def test_curve_upserts_points_into_one_row_per_meter_and_day(store):
    assert store.write_curve(M1, TODAY, {0: D("1.5"), time(0, 45): D("2.25")})
    assert store.write_curve(M1, TODAY, {1: D("1.75"), 95: D("-0.0001"), 3: None})
    c = store.curve(M1, TODAY)
    assert c.density_min == 15 and len(c.points) == 96
    assert c.points[:4] == (D("1.5"), D("1.75"), None, D("2.25"))
    assert c.points[95] == D("-0.0001") and c.points[50] is None
    assert not store.write_curve(M1, TODAY, {0: D("1.5")})  # nothing new
    assert store.db.execute("SELECT COUNT(*) FROM curve").fetchone()[0] == 1
    with pytest.raises(StoreError, match="stored at 15 min"):
        store.write_curve(M1, TODAY, {0: D(1)}, density_min=60)
    with pytest.raises(StoreError, match="decimals"):
        store.write_curve(M1, TODAY, {0: D("1.00001")})
    with pytest.raises(StoreError, match="slot"):
        store.write_curve(M1, TODAY, {time(0, 10): D(1)})
    with pytest.raises(StoreError, match="slot"):
        store.write_curve(M1, TODAY, {96: D(1)})


def test_a_growing_curve_uploads_each_point_once(store):
    # 00:00 read at 00:05, 00:15 at 00:20 ... the master must not get 00:00 again each time.
    store.write_curve(M1, TODAY, {0: D("1.5")})
    (first,) = store.outbox_pending()
    store.write_curve(M1, TODAY, {1: D("1.75"), 2: D("2.0")})
    store.write_curve(M1, TODAY, {2: D("2.0")})                # nothing new: nothing queued
    pending = store.outbox_pending()
    assert [p.seq for p in pending][0] == first.seq and len(pending) == 2
    sent = [{i: v for i, v in enumerate(p.payload.points) if v is not None} for p in pending]
    assert sent == [{0: D("1.5")}, {1: D("1.75"), 2: D("2.0")}]
    # The first upload is confirmed while the second waits: the second still holds its points.
    store.outbox_confirm([first.seq])
    (left,) = store.outbox_pending()
    assert left.payload.points[:3] == (None, D("1.75"), D("2.0"))
    # A re-read that changes a point sends that point again (the master gets the new value).
    store.write_curve(M1, TODAY, {0: D("1.6")})
    assert [p.payload.points[0] for p in store.outbox_pending()] == [None, D("1.6")]


def test_realtime_latest_per_meter(store):
    for h in (1, 3, 2):
        store.write_realtime(RealtimeReading(M1, datetime(2024, 5, 10, h), D(f"10{h}.00"),
                                             values={"voltage_a": D("229.9")}))
    store.write_realtime(RealtimeReading(M2, datetime(2024, 5, 10, 1), None))
    latest = store.latest_realtime(M1)
    assert latest.read_time.hour == 3 and latest.fwd_total == D("103.00")
    assert latest.values == {"voltage_a": D("229.9")}
    everyone = store.latest_realtime_all()
    assert set(everyone) == {M1, M2} and everyone[M1] == latest
    assert everyone[M2].fwd_total is None
    assert store.latest_realtime("000000000999") is None


def test_events_since_pointer(store):
    ids = [store.add_event(14, None, {"off": "2024-05-09T23:10:00"}),
           store.add_event(31, M1, {"why": "no reply"}),
           store.add_event(35, M2)]
    evs = store.events_since(ids[0])
    assert [(e.id, e.erc, e.meter) for e in evs] == [(ids[1], 31, M1), (ids[2], 35, M2)]
    assert evs[0].detail == {"why": "no reply"}
    assert store.events_since(ids[2]) == []
    for bad in (0, 256, True):
        with pytest.raises(StoreError):
            store.add_event(bad)


def test_line_loss_read_stats_rounds_and_kv_round_trip(store, clock):
    ll = LineLoss(TODAY, D("1000.0"), D("962.5"), D("3.75"), 198, 200)
    store.write_line_loss(ll)
    store.write_line_loss(ll)
    assert store.line_loss(TODAY) == ll
    rec = ReadRecord(M1, "daily", ("000000000301", "000000000302"), 2, 1.84, "ok", clock.now())
    store.record_read(rec)
    store.record_read(ReadRecord(M1, "daily", (), 3, None, "timeout",
                                 clock.now() - timedelta(hours=1)))
    assert store.reads(M1)[0] == rec and store.reads(M1)[1].outcome == "timeout"
    rnd = ReadRound("daily", clock.now(), clock.now() + timedelta(minutes=9), 0.97, 0.995,
                    {M2: "node 000000000301 did not answer"})
    rid = store.record_round(rnd)
    got = store.rounds("daily")
    assert len(got) == 1 and got[0].id == rid and got[0].unread == dict(rnd.unread)
    store.kv_set("mesh.epoch", {"n": 3})
    assert store.kv_get("mesh.epoch") == {"n": 3} and store.kv_get("nope", 5) == 5


def test_bad_input_is_a_store_error_not_a_crash(store):
    with pytest.raises(StoreError, match="address"):
        store.write_daily(daily(meter="12345"))
    with pytest.raises(StoreError, match="Decimal"):
        store.write_daily(DailyReading(M1, TODAY, 1.5, datetime(2024, 5, 10)))  # float
    with pytest.raises(StoreError, match="date"):
        store.write_daily(DailyReading(M1, "2024-05-10", D(1), datetime(2024, 5, 10)))
    with pytest.raises(StoreError):
        store.write_realtime(RealtimeReading(M1, datetime(2024, 5, 10), D("NaN")))
    assert store.stats().rows["daily"] == 0


# --- idempotency, batches and the outbox --------------------------------------------------------

def test_restoring_the_same_daily_reading_does_not_duplicate_it(store):
    assert store.write_daily(daily())
    again = DailyReading(M1, TODAY, D("1234.56"), datetime(2024, 5, 10, 2, 0))  # later re-read
    assert not store.write_daily(again)
    assert store.stats().rows["daily"] == 1
    assert len(store.outbox_pending()) == 1


def test_changed_reading_gets_a_new_seq_so_an_old_confirm_cannot_retire_it(store):
    store.write_daily(daily(total="1.00"))
    [old] = store.outbox_pending()
    store.write_daily(daily(total="2.00"))
    assert store.outbox_confirm([old.seq]) == 0
    [new] = store.outbox_pending()
    assert new.seq > old.seq and new.payload.fwd_total == D("2.00")


def test_outbox_in_sequence_order_with_payloads_and_confirm_semantics(store):
    store.write_daily(daily(M1))
    store.write_curve(M1, TODAY, {0: D("0.5")})
    store.write_realtime(RealtimeReading(M2, datetime(2024, 5, 10, 1), D("7")))
    eid = store.add_event(31, M2, {"why": "timeout"})
    items = store.outbox_pending()
    assert [i.kind for i in items] == ["daily", "curve", "realtime", "event"]
    assert [i.seq for i in items] == sorted(i.seq for i in items)
    assert items[0].payload == store.daily(M1, TODAY)
    assert items[3].payload.id == eid and items[3].meter == M2
    assert [i.seq for i in store.outbox_pending(2, after_seq=items[0].seq)] == \
        [items[1].seq, items[2].seq]

    assert store.outbox_confirm([items[1].seq, items[3].seq, 10_000]) == 2
    assert [i.seq for i in store.outbox_pending()] == [items[0].seq, items[2].seq]
    st_ = store.outbox_stats()
    assert st_.depth == 2 and st_.oldest_seq == items[0].seq
    assert st_.by_kind == {"daily": 1, "realtime": 1}
    assert store.outbox_confirm([items[1].seq]) == 0  # repeated confirmation is harmless


def test_unconfirmed_items_survive_a_restart_and_a_failed_confirm(path, clock):
    s = Store.open(path, clock=clock)
    s.write_daily(daily(M1))
    s.write_daily(daily(M2))
    seqs = [i.seq for i in s.outbox_pending()]
    # Crash between receiving the master's confirmation and storing it: nothing is marked.
    with pytest.raises(RuntimeError), s.batch():
        s.outbox_confirm(seqs)
        raise RuntimeError("power cut")
    s.close()
    s = Store.open(path, clock=clock)
    try:
        assert [i.seq for i in s.outbox_pending()] == seqs
        assert s.outbox_confirm(seqs) == 2 and s.outbox_stats().depth == 0
    finally:
        s.close()


def test_batch_is_all_or_nothing(store):
    with pytest.raises(RuntimeError), store.batch():
        store.write_daily(daily(M1))
        store.add_event(31, M1)
        raise RuntimeError("reader crashed mid-batch")
    assert store.stats().rows["daily"] == 0 and store.outbox_stats().depth == 0
    with store.batch():
        store.write_daily(daily(M1))
        with pytest.raises(ValueError), store.batch():  # a nested batch is a savepoint
            store.write_daily(daily(M2))
            raise ValueError
    assert store.daily(M1, TODAY) and store.daily(M2, TODAY) is None


def test_sqlite_utils_writes_through_store_db_join_the_batch(store):
    with pytest.raises(RuntimeError), store.batch():
        store.write_daily(daily(M1))
        store.db["mesh_nodes"].insert_all([{"address": M2, "level": 1}], pk="address")
        raise RuntimeError("mesh save failed")
    assert not store.db["mesh_nodes"].exists() and store.daily(M1, TODAY) is None
    with store.batch():
        store.db["mesh_nodes"].insert_all([{"address": M2, "level": 1}], pk="address")
    assert store.db["mesh_nodes"].count == 1


# --- retention, size cap, backup --------------------------------------------------------------

def test_age_retention_counts_data_evicted_before_upload(path, clock):
    s = Store.open(path, clock=clock, retention_days=62)
    try:
        with s.batch():
            for back in range(69, -1, -1):  # oldest first, as a back-fill would store them
                s.write_daily(daily(M1, TODAY - timedelta(days=back)))
        s.outbox_confirm([i.seq for i in s.outbox_pending(5)])  # 5 oldest were uploaded
        report = s.prune()
        assert report.unsent == {"daily": 2}  # 7 days too old, 5 of them uploaded
        assert s.daily(M1, TODAY - timedelta(days=62)) is not None
        assert s.daily(M1, TODAY - timedelta(days=63)) is None
        [ev] = events_of(s, "evicted")
        assert ev.detail["unsent"] == 2 and ev.detail["reason"] == "age"
        assert s.outbox_stats().evicted_unsent == 2
    finally:
        s.close()


def test_age_pruning_is_due_once_a_day_not_on_every_call(store, clock):
    # The daemon's store loop asks every minute; each pruning is a synced transaction on flash.
    assert not store.prune_due()  # opening the store pruned today's
    clock.t += timedelta(hours=20)
    assert not store.prune_due()
    clock.t = datetime.combine(TODAY + timedelta(days=1), datetime.min.time())
    assert store.prune_due()
    store.prune()
    assert not store.prune_due()


def test_wall_clock_jumping_years_ahead_does_not_wipe_the_store(path, clock):
    s = Store.open(path, clock=clock)
    try:
        s.write_daily(daily(M1))
        clock.t = datetime(2031, 1, 1)
        s.prune()
        assert s.daily(M1, TODAY) is not None
    finally:
        s.close()


def _fill_batch(s: Store, n: int, day: date, tag: int) -> None:
    with s.batch():
        for m in range(n):
            s.write_daily(DailyReading(f"{tag:06d}{m:06d}", day, D(f"{tag}.{m:02d}"),
                                       datetime.combine(day, time(0, 7)),
                                       fwd_tariffs=(D("1.11"), D("2.22"), D("3.33"), D("4.44"))))


def test_size_cap_raises_store_full_without_losing_stored_rows(path, clock):
    s = Store.open(path, clock=clock, size_cap_bytes=512 * 1024)
    committed = []
    with pytest.raises(StoreFull):
        for tag in range(1000):
            _fill_batch(s, 50, TODAY, tag)  # all today: nothing may be evicted
            committed.append(tag)
    failed = len(committed)
    assert committed and s.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    for tag in committed:
        assert s.db.execute("SELECT COUNT(*) FROM daily WHERE meter LIKE ?",
                            (f"{tag:06d}%",)).fetchone()[0] == 50
    assert s.db.execute("SELECT COUNT(*) FROM daily WHERE meter LIKE ?",
                        (f"{failed:06d}%",)).fetchone()[0] == 0
    # The alarm needs far less room than a batch, so it is recorded at once, and only once.
    assert len(events_of(s, "store_full")) == 1
    assert s.outbox_stats().depth == 50 * len(committed) + 1
    with pytest.raises(StoreFull):
        _fill_batch(s, 50, TODAY, failed)
    assert len(events_of(s, "store_full")) == 1
    s.close()

    s = Store.open(path, clock=clock, size_cap_bytes=4 * 1024 * 1024)  # room again
    try:
        _fill_batch(s, 50, TODAY, failed)
        _fill_batch(s, 50, TODAY, failed + 1)
        assert s.daily(f"{failed:06d}{0:06d}", TODAY) is not None
        assert len(events_of(s, "store_full")) == 1
    finally:
        s.close()


def test_store_full_alarm_waits_until_space_allows(path, clock):
    s = Store.open(path, clock=clock, size_cap_bytes=512 * 1024)
    try:
        n = 0
        with pytest.raises(StoreFull):
            for n in range(100_000):  # noqa: B007 - fill with events as large as the alarm
                s.add_event(ERC_TERMINAL_FAULT, None, {"fault": "filler_xx"})
        assert events_of(s, "store_full") == []  # not even the alarm fits
        assert len(events_of(s, "filler_xx")) == n
        s.db.execute("DELETE FROM events WHERE id < 500")  # the operator makes room
        s.write_daily(daily(M1))
        [alarm] = events_of(s, "store_full")
        assert s.daily(M1, TODAY) is not None
        assert alarm.id in {i.payload.id for i in s.outbox_pending(10_000) if i.kind == "event"}
    finally:
        s.close()


def test_size_cap_evicts_oldest_days_and_records_unsent_losses(path, clock):
    s = Store.open(path, clock=clock, size_cap_bytes=1024 * 1024)
    try:
        for back in range(40, -1, -1):
            _fill_batch(s, 60, TODAY - timedelta(days=back), back)
        st_ = s.stats()
        assert st_.used_bytes <= 1024 * 1024 * 0.9
        assert s.daily(f"{0:06d}{0:06d}", TODAY) is not None  # newest day kept
        assert s.daily(f"{40:06d}{0:06d}", TODAY - timedelta(days=40)) is None
        evs = events_of(s, "evicted")
        assert evs and all(e.detail["reason"] == "size_cap" for e in evs)
        lost = sum(e.detail["unsent"] for e in evs)
        assert lost > 0 and s.outbox_stats().evicted_unsent == lost
        assert st_.rows["daily"] + lost == 41 * 60  # every reading is stored or counted
    finally:
        s.close()


def test_backup_is_private_and_holds_the_data(store, tmp_path):
    store.write_daily(daily(M1))
    store.add_event(35, M2)
    target = store.backup(tmp_path / "bk" / "copy.db")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not target.with_name("copy.db.tmp").exists()
    copy = Store.open(target, clock=FakeClock())
    try:
        assert copy.daily(M1, TODAY) == store.daily(M1, TODAY)
        assert copy.outbox_stats().depth == 2
    finally:
        copy.close()
    with pytest.raises(StoreError), store.batch():
        store.backup(tmp_path / "other.db")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-(10**12), 10**12)), min_size=1, max_size=300))
def test_curve_packing_round_trips(values):
    assert unpack_points(pack_points(values), len(values)) == values


# --- kill -9 --------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys
    from datetime import date, datetime
    from decimal import Decimal
    from concentrator.store import DailyReading, Store

    class Clock:
        def now(self):
            return datetime(2024, 5, 10, 1, 30)
        def monotonic(self):
            return 0.0

    s = Store.open(sys.argv[1], clock=Clock())
    b = 0
    while True:
        with s.batch():
            for m in range(200):
                s.write_daily(DailyReading(f"{b:06d}{m:06d}", date(2024, 5, 10),
                                           Decimal(b) + Decimal(m) / 100, datetime(2024, 5, 10, 0, 7)))
        print(b, flush=True)
        b += 1
""")


def test_kill_9_loses_no_committed_batch_and_leaves_nothing_half_written(path, clock):
    Store.open(path, clock=clock).close()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    reported = []
    deadline = walltime.monotonic() + 20
    try:
        while len(reported) < 25 and walltime.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            reported.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert len(reported) >= 5, "writer did not get going"

    s = Store.open(path, clock=clock)
    try:
        assert events_of(s, "store_corrupt") == []
        counts = dict(s.db.execute(
            "SELECT substr(meter, 1, 6), COUNT(*) FROM daily GROUP BY 1").fetchall())
        present = sorted(int(k) for k in counts)
        assert all(n == 200 for n in counts.values()), "a batch was half-written"
        assert set(reported) <= set(present), "a batch reported committed is missing"
        assert present == list(range(len(present)))
        assert len(present) <= len(reported) + 1  # at most the batch committed but not printed
        assert s.outbox_stats().depth == 200 * len(present)  # one outbox entry per reading
    finally:
        s.close()
