"""Benchmark of the 1376.2 codec and the module driver (prints figures, writes JSON beside it).

Run: ``.venv/bin/python bench/bench_plc_driver.py``

* codec: decode/encode of the 13 F1 frame per second, and stream-decoder throughput when the
  bytes arrive one at a time (the worst split a serial port can give);
* driver: wall time for N AFN13 F1 reads through ``ModuleDriver`` over ``MemoryLink`` against a
  minimal echo module in virtual time (what the simulator pays per read).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from plc_driver import gdw13762 as g
from plc_driver.driver import ModuleDriver
from plc_driver.link import LinkClosed, MemoryLink
from simulator.vtime import VirtualTimeLoop

FRAME = bytes.fromhex(
    "68 2F 00 41 04 00 00 00 00 01 00 26 00 00 00 00 61 01 00 00 00 00 13 01 00 02 00 00 10 "
    "68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16 32 16"
)


def per_second(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - t0)


def bench_codec() -> dict[str, float]:
    frame = g.decode(FRAME)
    stream = FRAME * 200
    t0 = time.perf_counter()
    dec = g.Gdw13762StreamDecoder()
    got = 0
    for i in range(len(stream)):
        got += len(dec.feed(stream[i : i + 1]))
    bytewise = time.perf_counter() - t0
    assert got == 200
    return {
        "decode_per_s": per_second(lambda: g.decode(FRAME), 20000),
        "encode_per_s": per_second(lambda: g.encode(frame), 20000),
        "decode_data_unit_per_s": per_second(lambda: g.decode_data_unit(frame), 20000),
        "stream_bytewise_frames_per_s": 200 / bytewise,
    }


async def echo_module(link: MemoryLink, delay: float) -> None:
    dec = g.Gdw13762StreamDecoder()
    loop = asyncio.get_running_loop()

    def answer(f: g.Frame13762) -> None:
        try:
            link.write(g.encode(g.monitor_reply(f, b"\x68reply\x16", duration_s=1)))
        except LinkClosed:
            pass

    while True:
        try:
            chunk = await link.read()
        except LinkClosed:
            return
        for f in dec.feed(chunk):
            if isinstance(f, g.Frame13762) and f.afn == 0x13:
                loop.call_later(delay, answer, f)


async def driver_reads(n: int, concurrency: int) -> dict[str, float]:
    a, b = MemoryLink.pair(delay=0.02)
    module = asyncio.create_task(echo_module(b, 0.5))
    driver = ModuleDriver(a, comm_mode=3, cco_address="000000002600", max_concurrent=concurrency)
    await driver.start()  # the echo module answers no queries: defaults are kept
    loop = asyncio.get_running_loop()
    t_virtual = loop.time()
    wall = time.perf_counter()
    results = await asyncio.gather(
        *(driver.read(f"{i:012d}", ("000000000201",), b"\x68req\x16") for i in range(n))
    )
    wall = time.perf_counter() - wall
    assert all(r.ok for r in results)
    await driver.close()
    module.cancel()
    return {
        "reads": n,
        "concurrency": concurrency,
        "virtual_s": loop.time() - t_virtual,
        "wall_s": wall,
        "wall_us_per_read": wall / n * 1e6,
    }


def main() -> None:
    out: dict[str, object] = {"codec": bench_codec()}
    runs = []
    for conc in (1, 5):
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            runs.append(runner.run(driver_reads(2000, conc)))
    out["driver"] = runs
    print(json.dumps(out, indent=2))
    Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
