"""systemd integration without a dependency: sd_notify messages and a heartbeat-gated watchdog.

systemd passes ``NOTIFY_SOCKET`` (a filesystem path, or ``@name`` for the abstract namespace)
to a ``Type=notify`` service; we send it plain datagrams such as ``READY=1``. Outside systemd the
variable is absent and every call is a no-op returning False, so the daemon runs the same way
under a terminal, the simulator and tests.

``Watchdog`` sends ``WATCHDOG=1`` at half of ``WATCHDOG_USEC``, but only while every registered
loop (serial reader, scheduler, store writer, uplink, ...) has called ``beat(name)`` within its
allowed interval. A hung loop therefore stops the pings and systemd restarts the daemon, which
a ping from a separate timer task alone would never do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = ["Notifier", "Watchdog", "LoopState", "ready", "status", "stopping", "reloading",
           "watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify datagrams to the socket named by ``NOTIFY_SOCKET`` (if any)."""

    def __init__(self, address: str | None = None, *, env: Mapping[str, str] | None = None) -> None:
        if address is None:
            address = (os.environ if env is None else env).get("NOTIFY_SOCKET") or None
        self.address = address
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def _target(self) -> str:
        assert self.address is not None
        # '@' marks the Linux abstract namespace, which the socket API spells with a NUL.
        return "\0" + self.address[1:] if self.address.startswith("@") else self.address

    def send(self, *fields: str) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines; True when it was handed to systemd."""
        if self.address is None:
            return False
        payload = "\n".join(fields).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._target())
        except OSError as exc:
            # Never fatal: a lost notification is better than a daemon that dies of it.
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self.address, exc)
                self._warned = True
            return False
        self._warned = False
        return True

    def ready(self, status_text: str | None = None) -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status_text:
            fields.append(f"STATUS={status_text}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        # STATUS is one line; a newline would start a new (bogus) field.
        return self.send("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        # Type=notify-reload wants the monotonic timestamp with RELOADING=1 (systemd >= 253).
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


_default: Notifier | None = None


def _notifier() -> Notifier:
    global _default
    if _default is None:
        _default = Notifier()
    return _default


def ready(status_text: str | None = None) -> bool:
    """Tell systemd start-up is complete (``READY=1``)."""
    return _notifier().ready(status_text)


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status``."""
    return _notifier().status(text)


def stopping() -> bool:
    """Tell systemd the daemon is shutting down (``STOPPING=1``)."""
    return _notifier().stopping()


def reloading() -> bool:
    """Tell systemd a configuration reload started (``RELOADING=1``); send ``ready()`` after."""
    return _notifier().reloading()


def watchdog() -> bool:
    """Send one keep-alive (``WATCHDOG=1``). Prefer ``Watchdog``, which checks the loops."""
    return _notifier().watchdog()


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between keep-alives (half of ``WATCHDOG_USEC``), or None when not supervised."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog belongs to another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return None
    return value / 2e6 if value > 0 else None


@dataclass(frozen=True, slots=True)
class LoopState:
    """A registered loop as the watchdog sees it."""

    name: str
    allowed: float  # seconds a loop may go without a heartbeat
    last_beat: float  # monotonic time of the last heartbeat
    age: float  # seconds since the last heartbeat

    @property
    def healthy(self) -> bool:
        return self.age <= self.allowed


def _default_now() -> float:
    # The architecture's monotonic time is the running loop's; outside a loop (start-up,
    # tests) the default loop's clock is time.monotonic, so the two agree.
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


class Watchdog:
    """Keep-alive pings gated on heartbeats from every registered loop.

    ``register("scheduler", allowed=120)`` then, inside the scheduler loop, ``beat("scheduler")``
    at least every 120 s. ``tick()`` sends ``WATCHDOG=1`` when all loops are fresh; ``run()``
    calls it every ``interval`` seconds (half of ``WATCHDOG_USEC`` by default).
    """

    def __init__(
        self,
        notifier: Notifier | None = None,
        *,
        interval: float | None = None,
        now: Callable[[], float] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.notifier = notifier if notifier is not None else Notifier(env=env)
        self.interval = interval if interval is not None else watchdog_interval(env)
        self._now = now or _default_now
        self._allowed: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._stale_reported: set[str] = set()

    @property
    def enabled(self) -> bool:
        return self.interval is not None and self.notifier.enabled

    def register(self, name: str, allowed: float) -> None:
        """Watch loop ``name``; it counts as beating from now on."""
        if allowed <= 0:
            raise ValueError(f"loop {name!r}: allowed interval must be positive, got {allowed}")
        self._allowed[name] = allowed
        self._last[name] = self._now()

    def unregister(self, name: str) -> None:
        """Stop watching ``name`` (a loop that ends on purpose, e.g. at shutdown)."""
        self._allowed.pop(name, None)
        self._last.pop(name, None)
        self._stale_reported.discard(name)

    def beat(self, name: str) -> None:
        """Record a heartbeat from loop ``name`` (cheap; call it every iteration)."""
        if name not in self._allowed:
            raise KeyError(f"loop {name!r} is not registered with the watchdog")
        self._last[name] = self._now()

    def loops(self) -> list[LoopState]:
        t = self._now()
        return [LoopState(n, a, self._last[n], t - self._last[n]) for n, a in self._allowed.items()]

    def stale(self) -> list[str]:
        """Names of loops whose last heartbeat is older than allowed."""
        return [s.name for s in self.loops() if not s.healthy]

    def healthy(self) -> bool:
        return not self.stale()

    def tick(self) -> bool:
        """Send WATCHDOG=1 if every loop is fresh; returns whether a ping was sent."""
        states = self.loops()
        stale = [s for s in states if not s.healthy]
        for s in stale:
            # Log once per stall, not once per tick; the recovery is logged too.
            if s.name not in self._stale_reported:
                log.error("watchdog: loop %s silent for %.0fs (allowed %.0fs); keep-alive withheld",
                          s.name, s.age, s.allowed)
                self._stale_reported.add(s.name)
        for s in states:
            if s.healthy and s.name in self._stale_reported:
                log.warning("watchdog: loop %s beating again", s.name)
                self._stale_reported.discard(s.name)
        if stale:
            self.notifier.status("stalled: " + ", ".join(s.name for s in stale))
            return False
        return self.notifier.watchdog()

    async def run(self) -> None:
        """Ping until cancelled; returns at once when systemd does not supervise us."""
        if not self.enabled:
            log.info("watchdog: not supervised (no NOTIFY_SOCKET/WATCHDOG_USEC)")
            return
        assert self.interval is not None
        log.info("watchdog: keep-alive every %.1fs for loops %s", self.interval,
                 ", ".join(self._allowed) or "(none)")
        while True:
            self.tick()
            await asyncio.sleep(self.interval)
