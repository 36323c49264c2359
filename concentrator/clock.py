"""Injected time: every component asks a Clock, so virtual time and clock jumps can be tested.

Monotonic time is always ``asyncio`` loop time (``loop.time()``), which the simulator's
virtual-time loop advances without sleeping. Wall time (the district's local civil time, used
for schedules, freeze dates and DL/T 645 clocks) comes from ``Clock.now()``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Local wall time of the district (naive datetime)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps."""
        ...


class SystemClock:
    """The real clock of the machine."""

    def now(self) -> datetime:
        return datetime.now()

    def monotonic(self) -> float:
        return time.monotonic()


class LoopClock:
    """Wall time derived from the running event loop's time, starting at ``start``.

    Under the simulator's virtual-time loop this runs as fast as the work allows; ``jump()``
    moves the wall clock (not the monotonic one) to test clock corrections.
    """

    def __init__(
        self,
        start: datetime,
        loop: asyncio.AbstractEventLoop | None = None,
        t0: float | None = None,
    ) -> None:
        # ``t0``: the loop time at which the wall clock reads ``start`` (default: first use).
        self._loop = loop
        self._start = start
        self._t0: float | None = t0
        self._offset = timedelta(0)

    def _time(self) -> float:
        if self._loop is not None:
            return self._loop.time()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            # Used outside a running loop (set-up code, synchronous tests): real monotonic time,
            # which is what a plain event loop's time() is as well.
            return time.monotonic()

    def monotonic(self) -> float:
        return self._time()

    def now(self) -> datetime:
        t = self._time()
        if self._t0 is None:
            self._t0 = t
        return self._start + timedelta(seconds=t - self._t0) + self._offset

    def jump(self, delta: timedelta) -> None:
        self._offset += delta
