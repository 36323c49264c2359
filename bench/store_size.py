"""Store size and write throughput for a full district: 2,040 meters, 62 days daily, 31 days curves.

Goal: the database stays under 512 MB with the outbox full (uplink down for the whole period,
nothing confirmed, the worst case). Prints the figures and writes bench/store_size.json.

    .venv/bin/python bench/store_size.py [--meters 2040] [--daily-days 62] [--curve-days 31]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from concentrator.store import DailyReading, Store  # noqa: E402

GOAL_BYTES = 512 * 1024 * 1024


class BenchClock:
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return time.monotonic()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=2040)
    ap.add_argument("--daily-days", type=int, default=62)
    ap.add_argument("--curve-days", type=int, default=31)
    args = ap.parse_args()

    rng = random.Random(7)
    last = date(2024, 5, 31)
    clock = BenchClock(datetime.combine(last, datetime.min.time()) + timedelta(hours=1))
    meters = [f"{i + 1:012d}" for i in range(args.meters)]
    base = {m: Decimal(rng.randint(100_000, 9_000_000)) / 100 for m in meters}

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        store = Store.open(path, clock=clock)

        # Daily frozen readings: one batch per freeze date (how a reading round commits).
        t0 = time.perf_counter()
        n_daily = 0
        for d in range(args.daily_days - 1, -1, -1):
            day = last - timedelta(days=d)
            read_time = datetime.combine(day, datetime.min.time()) + timedelta(minutes=7)
            with store.batch():
                for m in meters:
                    fwd = base[m] + Decimal(args.daily_days - d) * Decimal("7.31")
                    q = (fwd / 4).quantize(Decimal("0.01"))
                    store.write_daily(DailyReading(
                        meter=m, freeze_date=day, fwd_total=fwd,
                        fwd_tariffs=(q, q, q, fwd - 3 * q), rev_total=Decimal("0.00"),
                        rev_tariffs=(Decimal("0.00"),) * 4,
                        freeze_time=datetime.combine(day, datetime.min.time()),
                        read_time=read_time))
                    n_daily += 1
        t_daily = time.perf_counter() - t0
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # measure the database, not the WAL
        size_daily = store.stats().file_bytes

        # 15-minute curves of forward active energy, a whole day per write.
        t0 = time.perf_counter()
        n_curve_days = 0
        for d in range(args.curve_days - 1, -1, -1):
            day = last - timedelta(days=d)
            with store.batch():
                for m in meters:
                    v = base[m] * 100
                    points = {}
                    for slot in range(96):
                        v += rng.randint(0, 5000)  # 0 .. 0.5 kWh per quarter hour, in 10^-4
                        points[slot] = Decimal(v).scaleb(-4)
                    store.write_curve(m, day, points)
                    n_curve_days += 1
        t_curve = time.perf_counter() - t0

        # Curves usually arrive in blocks: upsert one more day in 4 blocks of 24 points.
        extra_day = last + timedelta(days=1)
        clock.t += timedelta(days=1)
        t0 = time.perf_counter()
        for block in range(4):
            with store.batch():
                for m in meters:
                    store.write_curve(m, extra_day, {
                        s: Decimal(rng.randint(0, 10**8)).scaleb(-4)
                        for s in range(block * 24, block * 24 + 24)})
        t_upsert = time.perf_counter() - t0

        stats = store.stats()
        store.close()
        file_bytes = path.stat().st_size  # after the closing checkpoint, WAL folded in

    result = {
        "meters": args.meters,
        "daily_days": args.daily_days,
        "curve_days": args.curve_days,
        "daily_rows": stats.rows["daily"],
        "curve_rows": stats.rows["curve"],
        "outbox_depth": stats.outbox_depth,
        "db_bytes_daily_only": size_daily,
        "db_bytes": file_bytes,
        "db_mb": round(file_bytes / 2**20, 1),
        "goal_mb": GOAL_BYTES // 2**20,
        "meets_goal": file_bytes < GOAL_BYTES,
        "bytes_per_daily_reading": round(size_daily / max(1, n_daily)),
        "bytes_per_curve_day": round((file_bytes - size_daily) / max(1, n_curve_days)),
        "daily_readings_per_s": round(n_daily / t_daily),
        "curve_days_per_s": round(n_curve_days / t_curve),
        "curve_points_per_s": round(96 * n_curve_days / t_curve),
        "curve_block_upserts_per_s": round(4 * args.meters / t_upsert),
        "seconds": round(t_daily + t_curve + t_upsert, 1),
        "python": sys.version.split()[0],
    }
    for k, v in result.items():
        print(f"{k:28} {v}")
    out = Path(__file__).with_suffix(".json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {out}")


if __name__ == "__main__":
    main()
