"""The virtual-time loop: simulated hours pass in milliseconds, in the right order."""

import asyncio
import time
from datetime import datetime, timedelta

from concentrator.clock import LoopClock
from simulator.vtime import VirtualTimeLoop


def run(coro):
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)


def test_a_simulated_day_of_sleeps_takes_no_wall_time():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for _ in range(24):
            await asyncio.sleep(3600)
        return loop.time() - t0

    wall = time.monotonic()
    elapsed = run(main())
    assert abs(elapsed - 86400) < 1e-6
    assert time.monotonic() - wall < 2.0


def test_timers_fire_in_virtual_order_and_timeouts_work():
    async def main():
        order = []

        async def after(delay, name):
            await asyncio.sleep(delay)
            order.append((name, round(asyncio.get_running_loop().time(), 3)))

        await asyncio.gather(after(5, "b"), after(1.5, "a"), after(60, "c"))
        timed_out = False
        try:
            await asyncio.wait_for(asyncio.sleep(100), timeout=10)
        except TimeoutError:
            timed_out = True
        return order, timed_out

    order, timed_out = run(main())
    assert order == [("a", 1.5), ("b", 5.0), ("c", 60.0)]
    assert timed_out


def test_loop_clock_follows_virtual_time_and_jumps():
    start = datetime(2026, 11, 24, 0, 0, 0)

    async def main():
        clock = LoopClock(start)
        first = clock.now()
        await asyncio.sleep(300)
        later = clock.now()
        clock.jump(timedelta(days=1))
        return first, later, clock.now()

    first, later, jumped = run(main())
    assert first == start
    assert later == start + timedelta(minutes=5)
    assert jumped == start + timedelta(days=1, minutes=5)


def test_scaled_loop_runs_faster_than_real_time_and_processes_agree():
    from concentrator.timescale import ScaledTimeLoop

    epoch = time.time()

    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.sleep(30)  # 30 scaled seconds = 0.1 s real at factor 300
        return loop.time() - t0

    wall = time.monotonic()
    with asyncio.Runner(loop_factory=lambda: ScaledTimeLoop(epoch, 300.0)) as runner:
        elapsed = runner.run(main())
    real = time.monotonic() - wall
    assert elapsed >= 30
    assert real < 1.0
    other = ScaledTimeLoop(epoch, 300.0)
    try:
        assert abs(other.time() - (time.time() - epoch) * 300.0) < 1.0
    finally:
        other.close()
