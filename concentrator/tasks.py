"""Reading tasks: what the concentrator reads from its meters, when, and in which window.

A ``Task`` is data: its kind (what to read), the daily time its first round starts, the time
that round's window closes, and the period between rounds. Every round of a task has the same
window length (``end - start``): a daily frozen task from 00:05 to 06:00 has one round a day
with a 5 h 55 min window; an hourly curve task from 00:05 to 00:50 with a 60-minute period has
24 rounds, each open from hh:05 to hh:50. Inside its window a round makes *make-up passes* over
the meters that failed, ``retry_pause_s`` apart, until all are read or the window closes.

Kinds and what they read (DL/T 645-2007; the 1997 equivalent where one exists):

``daily_frozen``  05 06 00 01 freeze time, 05 06 01 01 forward and 05 06 02 01 reverse active
                  block (total + tariffs); days missed in the last ``backfill_days`` are
                  back-filled from 05 06 xx nn. 1997 meters have no freeze records: their
                  real-time 901F/902F blocks are read inside the window and stored as the
                  freeze (``FLAG_FROM_REALTIME``); they cannot be back-filled.
``curve``         load-curve points. ``density_min`` 60: the hourly freeze record 05 04 FF 01
                  (freeze time + forward total), so the point is the meter's own value at the
                  whole hour, whenever in the window it is read. ``density_min`` 15 (or any
                  density other than 60): a real-time read of 00 01 00 00 at each slot, stored
                  at the slot the round started in (value taken up to a few minutes late).
                  1997 meters: real-time 9010 the same way.
``realtime``      energy (forward block), voltage, current and power; also what
                  ``Reader.read_now`` serves on demand.
``power_down``    03 11 00 00 power-down count; new records 03 11 00 01..0A become events.
``clock``         meter date and time (04 00 01 01 + 04 00 01 02; 1997 C010 + C011); a drift
                  above ``threshold_s`` is an event and triggers one broadcast time sync (0x08).
``relay``         status word 3 (04 00 05 03), bit 4 = relay open; a change is an event.
                  Not available on 1997 meters.

Load tasks from YAML with ``load_tasks(mapping)`` (``{"tasks": [...]}`` or the list itself) or
build the daemon's defaults from its ``reading`` configuration with ``default_tasks``.
Problems raise ``TaskConfigError`` naming the key (``tasks[2].start: ...``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Any

__all__ = [
    "TaskKind",
    "Task",
    "TaskConfigError",
    "load_tasks",
    "default_tasks",
]

DAY_MIN = 1440


class TaskConfigError(ValueError):
    """A task definition is invalid; ``key`` is the path of the offending key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class TaskKind(enum.StrEnum):
    DAILY_FROZEN = "daily_frozen"
    CURVE = "curve"
    REALTIME = "realtime"
    POWER_DOWN = "power_down"
    CLOCK = "clock"
    RELAY = "relay"


@dataclass(frozen=True, slots=True)
class Task:
    """One reading task (see the module docstring for the kinds)."""

    name: str
    kind: TaskKind
    start: time = time(0, 5)  # first round of the day opens
    end: time = time(6, 0)  # ... and closes; later rounds keep the same window length
    period_min: int = DAY_MIN  # minutes between rounds; must divide the day
    backfill_days: int = 3  # daily_frozen: missed days re-read from the meter's records
    reverse: bool = True  # daily_frozen: read reverse active too (prosumers, PV)
    density_min: int = 60  # curve: 60 = hourly freeze records, else real-time reads
    threshold_s: float = 300.0  # clock: drift that triggers the time sync
    retry_pause_s: float = 300.0  # pause between make-up passes
    enabled: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", TaskKind(self.kind))
        except ValueError:
            raise TaskConfigError("kind", f"unknown task kind {self.kind!r}; one of "
                                  f"{', '.join(k.value for k in TaskKind)}") from None
        if not self.name:
            raise TaskConfigError("name", "must not be empty")
        if self.period_min < 1 or DAY_MIN % self.period_min:
            raise TaskConfigError("period", f"{self.period_min} min does not divide a day")
        if self.window_s <= 0:
            raise TaskConfigError("end", f"must be later than start ({self.start:%H:%M})")
        if self.window_s > self.period_min * 60:
            raise TaskConfigError("end", "the window is longer than the period between rounds")
        if not 0 <= self.backfill_days <= 62:
            raise TaskConfigError("backfill_days", "must be 0..62 (meters keep 62 daily freezes)")
        if self.density_min < 1 or DAY_MIN % self.density_min:
            raise TaskConfigError("density", f"{self.density_min} min does not divide a day")
        if self.threshold_s <= 0 or self.retry_pause_s < 0:
            raise TaskConfigError("threshold", "thresholds and pauses must be positive")

    @property
    def window_s(self) -> float:
        """Length of every round's window in seconds."""
        return float((self.end.hour * 60 + self.end.minute - self.start.hour * 60
                      - self.start.minute) * 60 + self.end.second - self.start.second)

    def windows_on(self, day: date) -> Iterator[tuple[datetime, datetime]]:
        """(opens, closes) of every round that opens on ``day``."""
        first = datetime.combine(day, self.start)
        midnight = datetime.combine(day + timedelta(days=1), time(0))
        k = 0
        while True:
            opens = first + timedelta(minutes=k * self.period_min)
            if opens >= midnight:
                return
            yield opens, opens + timedelta(seconds=self.window_s)
            k += 1

    def window_at(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The round window that contains ``now``, if any."""
        for day in (now.date() - timedelta(days=1), now.date()):
            for opens, closes in self.windows_on(day):
                if opens <= now < closes:
                    return opens, closes
        return None

    def next_window(self, after: datetime) -> tuple[datetime, datetime]:
        """The first round window that opens strictly after ``after``."""
        day = after.date()
        while True:
            for opens, closes in self.windows_on(day):
                if opens > after:
                    return opens, closes
            day += timedelta(days=1)


# --- loading ---------------------------------------------------------------------------------

_DURATION_UNITS = {"s": 1, "min": 60, "m": 60, "h": 3600, "d": 86400}
_BOOL_KEYS = {"reverse", "enabled"}


def _clock_time(v: Any, key: str) -> time:
    if isinstance(v, time):
        return v
    if isinstance(v, int) and not isinstance(v, bool):
        # YAML 1.1 reads an unquoted 00:05 as a base-60 integer (5 minutes).
        if 0 <= v < DAY_MIN:
            return time(v // 60, v % 60)
    if isinstance(v, str):
        try:
            hh, mm = v.strip().split(":")[:2]
            return time(int(hh), int(mm))
        except ValueError:
            pass
        if v.strip() == "24:00":
            return time(23, 59, 59)
    raise TaskConfigError(key, f"{v!r} is not a time of day HH:MM")


def _duration_s(v: Any, key: str) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, str):
        text = v.strip()
        for unit in sorted(_DURATION_UNITS, key=len, reverse=True):
            if text.endswith(unit):
                try:
                    return float(text[: -len(unit)]) * _DURATION_UNITS[unit]
                except ValueError:
                    break
        try:
            return float(text)
        except ValueError:
            pass
    raise TaskConfigError(key, f"{v!r} is not a duration (e.g. 300, 5min, 1h)")


def _task(raw: Any, path: str) -> Task:
    if not isinstance(raw, Mapping):
        raise TaskConfigError(path, f"must be a mapping, got {type(raw).__name__}")
    known = {f.name for f in fields(Task)} | {"period", "density", "threshold", "retry_pause"}
    for k in raw:
        if k not in known:
            raise TaskConfigError(f"{path}.{k}", "unknown key")
    if "kind" not in raw:
        raise TaskConfigError(f"{path}.kind", "missing")
    kw: dict[str, Any] = {"kind": raw["kind"], "name": str(raw.get("name", raw["kind"]))}
    for k in ("start", "end"):
        if k in raw:
            kw[k] = _clock_time(raw[k], f"{path}.{k}")
    for k, field_name, scale in (("period", "period_min", 60), ("period_min", "period_min", 1),
                                 ("density", "density_min", 60), ("density_min", "density_min", 1),
                                 ("threshold", "threshold_s", 1), ("threshold_s", "threshold_s", 1),
                                 ("retry_pause", "retry_pause_s", 1),
                                 ("retry_pause_s", "retry_pause_s", 1)):
        if k in raw:
            if scale == 60:  # "1h", "15min" or a bare number of minutes
                v = raw[k]
                minutes = v if isinstance(v, int) and not isinstance(v, bool) \
                    else _duration_s(v, f"{path}.{k}") / 60
                if minutes != int(minutes):
                    raise TaskConfigError(f"{path}.{k}", "must be whole minutes")
                kw[field_name] = int(minutes)
            elif field_name == "period_min" or field_name == "density_min":
                kw[field_name] = int(raw[k])
            else:
                kw[field_name] = _duration_s(raw[k], f"{path}.{k}")
    if "backfill_days" in raw:
        v = raw["backfill_days"]
        if isinstance(v, bool) or not isinstance(v, int):
            raise TaskConfigError(f"{path}.backfill_days", f"{v!r} is not a whole number")
        kw["backfill_days"] = v
    for k in _BOOL_KEYS:
        if k in raw:
            if not isinstance(raw[k], bool):
                raise TaskConfigError(f"{path}.{k}", f"{raw[k]!r} is not true/false")
            kw[k] = raw[k]
    try:
        return Task(**kw)
    except TaskConfigError as exc:
        raise TaskConfigError(f"{path}.{exc.key}", str(exc).split(": ", 1)[-1]) from None


def load_tasks(data: Mapping[str, Any] | Sequence[Any]) -> list[Task]:
    """Tasks from parsed YAML: ``{"tasks": [...]}`` or the list itself; names must be unique."""
    items = data.get("tasks") if isinstance(data, Mapping) else data
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise TaskConfigError("tasks", "must be a list of task mappings")
    out = [_task(raw, f"tasks[{i}]") for i, raw in enumerate(items)]
    seen: set[str] = set()
    for i, t in enumerate(out):
        if t.name in seen:
            raise TaskConfigError(f"tasks[{i}].name", f"{t.name!r} is used twice")
        seen.add(t.name)
    return out


def default_tasks(reading: Any = None) -> list[Task]:
    """The daemon's tasks from its ``reading`` config section (``config.ReadingConfig``).

    Daily frozen in the configured window with back-fill; the load curve at the configured
    density (hourly freeze records when 60); power-down records, clock check and relay state
    once a day after the frozen window; real-time rounds only when ``realtime_period`` is set.
    """
    start = getattr(reading, "daily_frozen_start", time(0, 5))
    end = getattr(reading, "daily_frozen_end", time(6, 0))
    backfill = getattr(reading, "backfill_days", 3)
    density = getattr(reading, "curve_density", 15)
    threshold = getattr(reading, "clock_check_threshold", 300.0)
    realtime_period = getattr(reading, "realtime_period", 0.0)
    curve_start = time(0, 5) if density == 60 else time(0, 1)
    curve_end = time(0, 50) if density == 60 else time(0, min(density, 60) - 1)
    after = (datetime.combine(date(2000, 1, 1), end) + timedelta(minutes=10)).time()
    later = (datetime.combine(date(2000, 1, 1), after) + timedelta(hours=2)).time()
    tasks = [
        Task("daily_frozen", TaskKind.DAILY_FROZEN, start, end, backfill_days=backfill),
        Task("curve", TaskKind.CURVE, curve_start, curve_end, period_min=density,
             density_min=density, retry_pause_s=120.0),
        Task("power_down", TaskKind.POWER_DOWN, after, later),
        Task("clock", TaskKind.CLOCK, after, later, threshold_s=threshold),
        Task("relay", TaskKind.RELAY, after, later),
    ]
    if realtime_period:
        period = max(1, int(realtime_period // 60))
        while DAY_MIN % period:
            period += 1
        window = max(1, period - 1)
        tasks.append(Task("realtime", TaskKind.REALTIME, time(0, 0), time(window // 60, window % 60),
                          period_min=period, retry_pause_s=60.0))
    return tasks
