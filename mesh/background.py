"""The mesh engine's background tasks: started with a name, and a crash is logged, not lost
(``asyncio.gather(..., return_exceptions=True)`` and unawaited tasks drop it silently)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from plc_driver.link import LinkClosed

log = logging.getLogger("mesh.engine")


def background(coro: Any, name: str) -> asyncio.Task:
    """A task nobody awaits for its result (probing, repairs, checks, the survey): its crash
    is logged (``log_crash``)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(log_crash)
    return task


def log_crash(task: asyncio.Task) -> None:
    """Done-callback of the mesh's background tasks: nobody awaits their result, so a bug
    there would otherwise end the probing or a repair without a word (``wait_*`` gather with
    ``return_exceptions``)."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, LinkClosed):
        log.error("mesh: background task %s failed: %r", task.get_name(), exc,
                  exc_info=exc)
