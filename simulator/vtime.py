"""Virtual-time asyncio event loop: a day of a large district in minutes of wall time.

Everything above it (``asyncio.sleep``, ``wait_for`` timeouts, ``call_later``) runs unchanged.
When no callback is ready, instead of sleeping until the next timer the loop moves its clock
forward to that timer. Real file descriptors are still polled (without blocking), so mixed
use does not hang, but in-process simulations must not use threads or executors: their
completion would arrive in real time while virtual time races ahead.

Use::

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())
"""

from __future__ import annotations

import asyncio

from concentrator.timescale import DelegatingSelector


class _VirtualSelector(DelegatingSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None):  # type: ignore[no-untyped-def]
        ready = self._real.select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            # Nothing scheduled at all: only real I/O (e.g. a thread's wake-up) can help.
            return self._real.select(None)
        self._loop.advance(timeout)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual and jumps to the next timer."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_VirtualSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        if seconds > 0:
            self._virtual_now += seconds
