"""Benchmark: drain an outbox backlog to the local simulated master station.

Run: ``.venv/bin/python bench/uplink.py [--meters 2040] [--frame-bytes 2048]``

The backlog is 24 h of 15-minute load curves for 2,040 meters (2,040 curve rows, 195,840
readings) plus one daily frozen reading per meter, in a fresh store. For confirmation windows
1 and 8 the uplink connects to a ``MasterStation`` on 127.0.0.1, logs in and uploads until the
outbox is empty; the time runs from the login to the last confirmation. Goal: under 60 s.
Prints the figures and writes ``bench/uplink.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import sys
import tempfile
import time
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concentrator.clock import LoopClock  # noqa: E402
from concentrator.config import HostPort, UplinkConfig  # noqa: E402
from concentrator.store import DailyReading, MeterRecord, Store  # noqa: E402
from simulator.master import MasterStation  # noqa: E402
from uplink import gdw13761 as g  # noqa: E402
from uplink.client import UplinkClient, UplinkOptions  # noqa: E402

START = datetime(2024, 5, 10, 8, 0)
DAY = date(2024, 5, 9)


class _Services:
    async def read_energy_now(self, meter):  # noqa: ANN001, ANN201
        return None

    async def forward_645(self, meter, frame, timeout):  # noqa: ANN001, ANN201
        return None

    async def archive_changed(self, upserted, removed):  # noqa: ANN001, ANN201
        return None

    async def set_time(self, when):  # noqa: ANN001, ANN201
        return None

    async def reset(self, kind):  # noqa: ANN001, ANN201
        return None


class _FixedClock:
    """Wall time for building the store outside an event loop."""

    def now(self) -> datetime:
        return START

    def monotonic(self) -> float:
        return time.monotonic()


def build_store(path: Path, meters: int) -> tuple[int, int]:
    store = Store.open(path, clock=_FixedClock())
    readings = 0
    with store.batch():
        for i in range(1, meters + 1):
            a = f"{i:012d}"
            store.upsert_meter(MeterRecord(a, point=i))
            base = Decimal(1000 + i)
            store.write_curve(a, DAY, {s: base + Decimal(s) / 4 for s in range(96)})
            store.write_daily(DailyReading(a, DAY, base, datetime(2024, 5, 10, 0, 7)))
            readings += 97
    rows = store.outbox_stats().depth
    store.close()
    return rows, readings


async def drain(store_path: Path, window: int, frame_bytes: int, master_dir: Path
                ) -> dict[str, float | int]:
    store = Store.open(store_path, clock=LoopClock(START))
    rows = store.outbox_stats().depth
    master = MasterStation(master_dir / f"master-w{window}.db", clock=LoopClock(START))
    port = await master.start()
    client = UplinkClient(UplinkConfig(HostPort("127.0.0.1", port)), g.Address("4403", 1),
                          store, _Services(), LoopClock(START),
                          UplinkOptions(window=window, max_frame_bytes=frame_bytes,
                                        poll_interval=0.05, batch_items=500))
    task = asyncio.create_task(client.run())
    await master.wait_login("4403:1", 10)
    t0 = time.perf_counter()
    while store.outbox_stats().depth:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    client.stop()
    await task
    await master.stop()
    summary = master.upload_summary()
    master.close()
    store.close()
    frames = client.stats["frames_confirmed"]
    return {"window": window, "rows": rows, "readings": summary["readings"],
            "frames": frames, "seconds": round(elapsed, 3),
            "readings_per_s": round(summary["readings"] / elapsed),
            "frames_per_s": round(frames / elapsed, 1),
            "violations": summary["violations"], "duplicates_received":
                summary["copies_received"] - summary["items"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=2040)
    ap.add_argument("--frame-bytes", type=int, default=2048)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for window in (1, 8):
            store_path = d / f"store-w{window}.db"
            t0 = time.perf_counter()
            rows, readings = build_store(store_path, args.meters)
            print(f"backlog: {rows} outbox rows, {readings} readings "
                  f"(built in {time.perf_counter() - t0:.1f} s)")
            r = asyncio.run(drain(store_path, window, args.frame_bytes, d))
            results.append(r)
            print(f"window {window}: {r['readings']} readings in {r['frames']} frames, "
                  f"{r['seconds']} s -> {r['readings_per_s']} readings/s, "
                  f"{r['frames_per_s']} frames/s (goal < 60 s: "
                  f"{'met' if r['seconds'] < 60 else 'MISSED'})")
    out = {"benchmark": "uplink backlog drain to the local master station",
           "meters": args.meters, "max_frame_bytes": args.frame_bytes,
           "python": platform.python_version(), "machine": platform.machine(),
           "results": results}
    path = Path(__file__).with_suffix(".json")
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
