"""Accelerated real time, so a demo or a field trial on real ports runs a day in minutes.

``ScaledTimeLoop(epoch, factor)`` is an asyncio loop whose ``time()`` is
``(time.time() - epoch) * factor``: two processes (the daemon and the simulator) given the same
epoch and factor agree on the time without talking to each other. Timers and timeouts shrink by
the factor; real I/O (ptys, TCP) still happens in real time, which only makes the channel look
faster than its airtime would allow at high factors. Factor 1 is plain real time.
"""

from __future__ import annotations

import asyncio
import selectors
import time


class DelegatingSelector(selectors.BaseSelector):
    """A real selector behind a ``select`` that subclasses change (scaled or virtual time)."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()

    def register(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj):  # type: ignore[no-untyped-def]
        return self._real.unregister(fileobj)

    def modify(self, fileobj, events, data=None):  # type: ignore[no-untyped-def]
        return self._real.modify(fileobj, events, data)

    def get_map(self):  # type: ignore[no-untyped-def]
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
        return self._real.select(timeout)


class _ScaledSelector(DelegatingSelector):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self._factor = factor

    def select(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
        return self._real.select(None if timeout is None else timeout / self._factor)


class ScaledTimeLoop(asyncio.SelectorEventLoop):
    """Event loop whose clock runs ``factor`` times faster than real time from ``epoch``."""

    def __init__(self, epoch: float | None = None, factor: float = 1.0) -> None:
        if factor <= 0:
            raise ValueError("time factor must be positive")
        self.epoch = time.time() if epoch is None else epoch
        self.factor = factor
        super().__init__(selector=_ScaledSelector(factor))

    def time(self) -> float:
        return (time.time() - self.epoch) * self.factor


def loop_factory(epoch: float | None, factor: float):  # type: ignore[no-untyped-def]
    """A ``loop_factory`` for ``asyncio.Runner``: plain loop at factor 1 without an epoch."""
    if factor == 1.0 and epoch is None:
        return asyncio.new_event_loop
    return lambda: ScaledTimeLoop(epoch, factor)
