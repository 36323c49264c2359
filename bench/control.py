"""Control-socket figures: request round trip (new connection each, as the CLI does) and
streamed items per second. Prints the figures and writes bench/control.json.

    .venv/bin/python bench/control.py
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import threading
import time
from pathlib import Path

from concentrator.control import ControlClient, ControlServer, StreamResult

N_REQUESTS = 500
N_ITEMS = 20000


async def status(args):
    return {"nodes": {"total": 1000, "online": 990}}


async def events(args):
    for i in range(N_ITEMS):
        yield {"at": "2024-05-01T00:07:12", "kind": "read", "address": f"{i:012d}", "text": "ok"}
    yield StreamResult({"count": N_ITEMS})


def main() -> None:
    path = str(Path(tempfile.mkdtemp()) / "c.sock")
    loop = asyncio.new_event_loop()
    server = ControlServer(path, {"status": status, "events": events})
    loop.run_until_complete(server.start())
    threading.Thread(target=loop.run_forever, daemon=True).start()
    client = ControlClient(path)
    t0 = time.perf_counter()
    for _ in range(N_REQUESTS):
        client.request("status")
    rtt_ms = (time.perf_counter() - t0) / N_REQUESTS * 1000
    t0 = time.perf_counter()
    n = sum(1 for _ in client.stream("events"))
    rate = n / (time.perf_counter() - t0)
    figures = {"request_round_trip_ms": round(rtt_ms, 3), "stream_items_per_s": round(rate)}
    print(json.dumps(figures))
    (Path(__file__).with_suffix(".json")).write_text(json.dumps(figures, indent=2) + "\n")
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)


if __name__ == "__main__":
    main()
