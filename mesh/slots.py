"""A reader's concurrent-read slot, which the mesh gives up while a read only waits.

The reader (and ``bench/mesh.py``) keeps as many reads in flight as the module takes. A read
whose node is being repaired waits for the repair in ``Mesh.exchange`` (up to
``EngineTuning.repair_wait_s``) without using the module; holding its slot meanwhile kept the
other meters waiting (a dead relay's two orphans held two of the five slots for a minute
while the relay's other meters queued behind them). The caller takes its slot with
``holding_read_slot``; ``Mesh`` gives it back while the read waits
(``released_while_waiting``) and takes it again before the read goes on. A caller that does
not use it changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = ["ReadSlot", "holding_read_slot", "released_while_waiting"]


class ReadSlot:
    """One slot of a caller's pool, held or not (``acquire`` takes it, ``release`` gives it);
    ``on_lend`` / ``on_return`` are told when the mesh gives it back during a read and
    takes it again (a caller with a fixed set of workers starts one more meanwhile)."""

    def __init__(self, acquire: Callable[[], Awaitable[Any]], release: Callable[[], None],
                 on_lend: Callable[[], None] | None = None,
                 on_return: Callable[[], None] | None = None) -> None:
        self._acquire = acquire
        self._release = release
        self.on_lend = on_lend
        self.on_return = on_return
        self.held = False

    async def take(self) -> None:
        await self._acquire()
        self.held = True

    def give(self) -> None:
        if self.held:
            self.held = False
            self._release()


#: the slot of the read the current task is making (the task, so that background tasks
#: started from it, which copy the context, do not give it away)
_CURRENT: contextvars.ContextVar[tuple[asyncio.Task, ReadSlot] | None] = \
    contextvars.ContextVar("mesh_read_slot", default=None)


@contextlib.asynccontextmanager
async def holding_read_slot(acquire: Callable[[], Awaitable[Any]],
                            release: Callable[[], None],
                            on_lend: Callable[[], None] | None = None,
                            on_return: Callable[[], None] | None = None,
                            ) -> AsyncIterator[ReadSlot]:
    """Take a slot for one read; within the block the mesh may give it back while the read
    waits (``released_while_waiting``); it is given back at the end if held."""
    slot = ReadSlot(acquire, release, on_lend, on_return)
    await slot.take()
    token = _CURRENT.set((asyncio.current_task(), slot))
    try:
        yield slot
    finally:
        _CURRENT.reset(token)
        slot.give()


@contextlib.asynccontextmanager
async def released_while_waiting() -> AsyncIterator[None]:
    """Give the current read's slot back for the block (a wait that uses no module slot), and
    take it again after; nothing when the read holds none."""
    current = _CURRENT.get()
    slot = current[1] if current is not None and current[0] is asyncio.current_task() \
        else None
    if slot is None or not slot.held:
        yield
        return
    slot.give()
    if slot.on_lend is not None:
        slot.on_lend()
    try:
        yield
    finally:
        if slot.on_return is not None:
            slot.on_return()
    # Taken again only when the read goes on: a read cancelled while it waited (the daemon
    # stopping) must not wait for a slot first.
    await slot.take()
