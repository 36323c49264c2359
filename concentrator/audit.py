"""The audit log: who changed what through the control socket, when, and how it ended.

One JSON object per line in an append-only file (mode 0640, opened ``O_APPEND`` so concurrent
writers and crashes can only ever add whole lines at the end)::

    {"ts": "2024-05-01T10:12:03", "who": {"uid": 1000, "gid": 1000, "pid": 4242, "user": "ops"},
     "what": "archive.add", "args": {"address": "000000000161"}, "outcome": "ok"}

``outcome`` is ``"ok"``, ``"denied"`` or ``"error: <message>"``. Timestamps are the district's
wall time from the injected clock, to the second.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from concentrator.clock import Clock, SystemClock

__all__ = ["AuditLog"]

log = logging.getLogger(__name__)


class AuditLog:
    """Append-only JSON-lines audit file."""

    def __init__(self, path: str | Path, *, clock: Clock | None = None, fsync: bool = True) -> None:
        self.path = Path(path)
        self._clock = clock or SystemClock()
        self._fsync = fsync

    def record(self, who: Mapping[str, Any] | str, what: str, args: Mapping[str, Any] | None,
               outcome: str) -> dict[str, Any]:
        """Append one entry and return it. Raises OSError when the file cannot be written."""
        entry = {
            "ts": self._clock.now().isoformat(timespec="seconds"),
            "who": dict(who) if isinstance(who, Mapping) else {"user": who},
            "what": what,
            "args": dict(args or {}),
            "outcome": outcome,
        }
        # One write() of one line: with O_APPEND the kernel places it whole at the end.
        line = (json.dumps(entry, ensure_ascii=False, default=str, sort_keys=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, line)
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        log.info("audit: %s by %s -> %s", what, _who_text(entry["who"]), outcome)
        return entry

    def read(self, since: datetime | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Entries in file order, optionally only those at or after ``since``; ``limit`` keeps
        the most recent ones. A missing file reads as empty; damaged lines are skipped."""
        if isinstance(since, str):
            since = datetime.fromisoformat(since)
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        out: list[dict[str, Any]] = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                ts = datetime.fromisoformat(entry["ts"])
            except (ValueError, KeyError, TypeError):
                log.warning("audit: skipping damaged line %d of %s", n, self.path)
                continue
            if since is not None and _naive(ts) < _naive(since):
                continue
            out.append(entry)
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out


def _naive(dt: datetime) -> datetime:
    # Entries are naive local time; compare an aware ``since`` by its local equivalent.
    return dt.astimezone().replace(tzinfo=None) if dt.tzinfo else dt


def _who_text(who: Mapping[str, Any]) -> str:
    user = who.get("user") or (f"uid {who['uid']}" if "uid" in who else "?")
    return f"{user} (pid {who['pid']})" if "pid" in who else str(user)
