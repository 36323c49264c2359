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
