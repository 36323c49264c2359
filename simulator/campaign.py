"""The fault campaign's harness: the real daemon process against the district and the master.

One ``Campaign`` runs, in accelerated time sharing one epoch (``concentrator.timescale``):

* the simulated district **in this process** (``SimDistrict`` served on ptys, as
  ``concentrator-sim serve`` does), so faults can be injected into it directly;
* the master station(s) in this process (``MasterStation``; a primary and a backup that
  together stand for one master system: both databases are merged by upload key);
* the real daemon (``concentrator run``) as a subprocess that can be SIGKILLed and restarted
  with the same configuration and the same store, with ``NOTIFY_SOCKET``/``WATCHDOG_USEC``
  pointing at a datagram socket this process listens on, so watchdog pings are counted.

The module port is configured through a symlink (``<out>/ttyPLC``, as a udev rule names the
port in the field), so that a pty that vanished and came back with another ``/dev/pts/N`` is
found again under the same name.

A clock jump is a restart of the daemon with a shifted ``--start`` (same epoch): the daemon's
wall clock is ``LoopClock(start)`` over the scaled loop, and the daemon has no control command
to move it; the scaled loop's monotonic time stays continuous, which is what a real wall-clock
step does to ``CLOCK_MONOTONIC`` too. The simulator's and the master's clocks do not move.

The checker (``check``) compares what the master holds with the meters' truth: for each day
in the period whose daily freeze the meters took (truth: the meter was present), one
``daily`` reading per meter is expected; *delivered* = expected ones the master holds,
*lost* = expected ones it does not, *duplicated* = readings (daily per meter and day, curve
per meter and point time) the master holds under more than one upload key. Copies of one key
are the protocol's retransmissions, which the master deduplicates by (terminal, seq); they
are reported as ``retransmitted``.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import termios
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from concentrator.clock import LoopClock
from concentrator.control import ControlClient, ControlError
from concentrator.keystore import FileKeyStore
from simulator.district import SimDistrict
from simulator.generate import generate
from simulator.master import MasterStation
from simulator.scenario import Scenario, dump
from simulator.serve import PtyLink, open_pty

__all__ = ["Campaign", "CheckResult", "WatchdogListener", "TERMINAL"]

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent
TERMINAL = "4403:1"
WATCHDOG_S = 60.0   # simulated seconds of WATCHDOG_USEC given to the daemon


@dataclass
class CheckResult:
    """What the master holds against the truth for one period (see module docstring)."""

    expected: int
    delivered: int
    lost: int
    duplicated: int
    retransmitted: int
    curve_points: int
    lost_items: list[tuple[str, str]] = field(default_factory=list)
    duplicated_items: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"expected": self.expected, "delivered": self.delivered, "lost": self.lost,
                "duplicated": self.duplicated, "retransmitted": self.retransmitted,
                "curve_points": self.curve_points,
                "lost_items": self.lost_items[:20], "duplicated_items": self.duplicated_items[:20]}


class WatchdogListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET: counts what the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.counts: Counter[str] = Counter()
        self.last_ping: float | None = None   # time.monotonic() of the last WATCHDOG=1

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            for line in data.decode("utf-8", "replace").splitlines():
                key = line.split("=", 1)[0]
                self.counts[key] += 1
                if line == "WATCHDOG=1":
                    self.last_ping = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


def _proc_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _proc_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Campaign:
    """The district, the master(s) and a killable daemon; run inside a ``ScaledTimeLoop``.

    ``async with Campaign(out, factor=..., epoch=...) as c:`` starts everything (the daemon
    too) and stops it all on exit. ``asyncio.sleep(s)`` in the campaign's loop sleeps ``s``
    simulated seconds.
    """

    def __init__(self, out: Path, *, epoch: float, factor: float, meters: int = 20,
                 layout: str = "feeder", channel: str = "hplc", seed: int = 1,
                 backup: bool = False, size_cap: int | None = None,
                 scenario: Scenario | None = None, extra_config: str = "") -> None:
        self.out = out
        self.epoch, self.factor = epoch, factor
        self.scenario = scenario or generate(meters, layout, seed, channel=channel)
        self.channel = self.scenario.channel
        self.start = self.scenario.start
        self.with_backup = backup
        self.size_cap = size_cap
        self.extra_config = extra_config
        self.clock_shift = timedelta(0)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.kills = 0
        self.district: SimDistrict | None = None
        self.module_pty: PtyLink | None = None
        self.summary_pty: PtyLink | None = None
        self.masters: dict[str, MasterStation] = {}
        self.ports: dict[str, int] = {}
        self.watchdog: WatchdogListener | None = None
        self.rss_samples: list[int] = []
        self._daemon_log: Any = None
        self._pty_attrs: dict[str, list[Any]] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Campaign:
        await self.setup()
        await self.start_daemon()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def now(self) -> datetime:
        """The district's true wall time (the meters' and the master's clock)."""
        return self.start + timedelta(seconds=asyncio.get_running_loop().time())

    async def setup(self) -> None:
        out = self.out
        out.mkdir(parents=True, exist_ok=True, mode=0o750)
        (out / "district.yaml").write_text(dump(self.scenario))
        keys = FileKeyStore(out / "keys.json", create=True)
        keys.set_terminal_key("4403", 1, os.urandom(16))
        keys.save()
        names = ["primary", "backup"] if self.with_backup else ["primary"]
        for name in names:
            m = MasterStation(out / f"master-{name}.sqlite", keys=keys,
                              clock=LoopClock(self.start, t0=0.0))
            self.masters[name] = m
            self.ports[name] = await m.start("127.0.0.1", 0)
        # The district's loop time 0 is the epoch: scenario time = loop time (start = scenario start).
        self.district = SimDistrict(self.scenario, start=self.start, loop_time=0.0)
        self.module_pty = self._remember(open_pty(9600, "E"))
        self._link_module(self.module_pty.path)
        self.district.attach_module(self.module_pty)
        if self.scenario.summary_meter is not None:
            self.summary_pty = self._remember(open_pty(2400, "E"))
            self.district.attach_summary_meter(self.summary_pty)
        self.watchdog = WatchdogListener(out / "notify.sock")
        self.watchdog.start()
        self.write_config()

    def _remember(self, pty: PtyLink) -> PtyLink:
        self._pty_attrs[pty.path] = termios.tcgetattr(pty._slave_fd)
        return pty

    def _link_module(self, target: str) -> None:
        link = self.out / "ttyPLC"
        tmp = self.out / "ttyPLC.new"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(target)
        tmp.replace(link)

    def write_config(self) -> None:
        out = self.out
        group = grp.getgrgid(os.getgid()).gr_name
        sm = self.scenario.summary_meter
        summary = (f"summary_meter:\n  port: {self.summary_pty.path}\n  address: \"{sm.address}\"\n"
                   if sm is not None and self.summary_pty is not None else "")
        backup = f"  backup: 127.0.0.1:{self.ports['backup']}\n" if "backup" in self.ports else ""
        cap = f"  size_cap: {self.size_cap}\n" if self.size_cap else ""
        (out / "concentrator.yaml").write_text(f"""# Written by simulator/campaign.py.
paths:
  etc: {out}
  state: {out}
  runtime: {out}
terminal:
  district: "4403"
  address: 1
module:
  port: {out}/ttyPLC
  channel: {self.channel}
{summary}mesh:
  unknown_node_policy: admit
reading:
  curve_density: 60
  daily_frozen_start: "00:05"
  daily_frozen_end: "00:40"
store:
  path: {out}/concentrator.db
{cap}uplink:
  primary: 127.0.0.1:{self.ports['primary']}
{backup}  failover_attempts: 2
  heartbeat_period: 5min
  login_retry: 30s
  reconnect_backoff_cap: 5min
  tls: {{enabled: false}}
security:
  key_file: {out}/keys.json
archive: []
logging:
  level: INFO
control:
  socket: {out}/control.sock
  group: {group}
  audit_log: {out}/audit.jsonl
{self.extra_config}""")

    async def start_daemon(self) -> None:
        """Start ``concentrator run`` (same config, same store); returns once it answers."""
        assert self.watchdog is not None
        env = dict(os.environ, NOTIFY_SOCKET=str(self.watchdog.path),
                   WATCHDOG_USEC=str(int(WATCHDOG_S * 1e6)))
        start = self.start + self.clock_shift
        # A Linux pty keeps the line settings its last user left (a real UART driver is reset
        # by the next open); after a SIGKILL those make pyserial's next open fail with EINVAL.
        # Give the "hardware" its power-on settings back, as a real port has them.
        for pty in (self.module_pty, self.summary_pty):
            if pty is not None:
                with contextlib.suppress(termios.error, OSError):
                    termios.tcsetattr(pty._slave_fd, termios.TCSANOW, self._pty_attrs[pty.path])
        if self._daemon_log is None:
            self._daemon_log = open(self.out / "daemon.log", "ab")  # noqa: SIM115
        self._daemon_log.write(f"=== campaign: daemon start (clock shift {self.clock_shift}) "
                               f"at district time {self.now():%Y-%m-%d %H:%M:%S}\n".encode())
        self._daemon_log.flush()
        self.daemon = subprocess.Popen(
            [str(BIN / "concentrator"), "-v", "run", "--config", str(self.out / "concentrator.yaml"),
             "--time-factor", str(self.factor), "--epoch", repr(self.epoch),
             "--start", start.isoformat()],
            stdout=subprocess.DEVNULL, stderr=self._daemon_log, env=env)
        await self.wait_status()

    async def wait_status(self, wall_timeout: float = 60.0) -> dict[str, Any]:
        t0 = time.monotonic()
        while time.monotonic() - t0 < wall_timeout:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.daemon.returncode}; see "
                                   f"{self.out / 'daemon.log'}")
            st = await self.status()
            if st is not None:
                return st
            await self.wall_sleep(0.2)
        raise RuntimeError("daemon does not answer on its control socket")

    async def wall_sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of real time (the loop's timers run ``factor`` times faster)."""
        await asyncio.sleep(seconds * self.factor)

    def kill9_daemon(self) -> None:
        """SIGKILL the daemon (no clean-up of any kind), as a power cut or an OOM kill does."""
        assert self.daemon is not None
        self.daemon.send_signal(signal.SIGKILL)
        self.daemon.wait()
        self.kills += 1

    async def restart_daemon(self) -> float:
        """Start the daemon again (what systemd's Restart= does); wall seconds until it answers."""
        t0 = time.monotonic()
        self.restarts += 1
        await self.start_daemon()
        return time.monotonic() - t0

    async def stop_daemon(self) -> int:
        """SIGTERM and wait (a clean stop); returns the exit code."""
        if self.daemon is None or self.daemon.poll() is not None:
            return self.daemon.returncode if self.daemon else 0
        self.daemon.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.daemon.wait, 30)
        except subprocess.TimeoutExpired:
            self.daemon.kill()
            return -9

    async def shutdown(self) -> None:
        await self.stop_daemon()
        for m in self.masters.values():
            with contextlib.suppress(Exception):
                await m.stop()
            m.close()
        if self.district is not None:
            await self.district.close()
        for p in (self.module_pty, self.summary_pty):
            if p is not None:
                p.close()
        if self.watchdog is not None:
            self.watchdog.close()
        if self._daemon_log is not None:
            self._daemon_log.close()

    # --- faults --------------------------------------------------------------------------------

    async def master_down(self, which: str = "primary") -> None:
        """The master station (``primary``, ``backup`` or ``both``) stops listening."""
        for name in (("primary", "backup") if which == "both" else (which,)):
            if name in self.masters:
                await self.masters[name].stop()

    async def master_up(self, which: str = "primary") -> None:
        """The master station is back on the same address."""
        for name in (("primary", "backup") if which == "both" else (which,)):
            m = self.masters.get(name)
            if m is not None and not m._servers:
                await m.start("127.0.0.1", self.ports[name])

    def close_module_pty(self) -> None:
        """The module's serial port vanishes: the pty is closed, its /dev/pts node is gone."""
        assert self.district is not None and self.module_pty is not None
        self.district.unplug()
        self.module_pty.close()
        self.module_pty = None

    def reopen_module_pty(self) -> None:
        """The port comes back (a new pty behind the same ``ttyPLC`` name; module state kept)."""
        assert self.district is not None
        self.module_pty = self._remember(open_pty(9600, "E"))
        self._link_module(self.module_pty.path)
        self.district.attach_module(self.module_pty)
        log.warning("campaign: module port back on %s", self.module_pty.path)

    def module_reset(self) -> None:
        """The module resets itself: slave archive and pending requests lost."""
        assert self.district is not None
        self.district.reset_module()

    def garbage(self, on: bool) -> None:
        """The module's serial line answers garbage (corrupted, split and lost bytes) or not."""
        assert self.district is not None
        if on:
            self.district.inject(drop=0.05, corrupt=0.3, split=3)
        else:
            self.district.inject()

    def set_size_cap(self, cap: int | None) -> None:
        """Write the store size cap into the configuration (applies at the next start)."""
        self.size_cap = cap
        self.write_config()

    def corrupt_store_file(self, rng: random.Random | None = None) -> None:
        """Overwrite pages in the middle of the store file (daemon must be stopped)."""
        rng = rng or random.Random(7)
        path = self.out / "concentrator.db"
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                (self.out / f"concentrator.db{suffix}").unlink()
        data = bytearray(path.read_bytes())
        page = 4096
        pages = max(2, len(data) // page)
        for _ in range(max(3, pages // 4)):
            p = rng.randrange(1, pages)
            data[p * page:(p + 1) * page] = rng.randbytes(page)
        path.write_bytes(bytes(data))

    def shift_clock(self, delta: timedelta) -> None:
        """The daemon's wall clock jumps by ``delta`` (applies at the next start)."""
        self.clock_shift += delta

    def kill_node(self, address: str) -> None:
        assert self.district is not None
        self.district.kill_node(address)

    def revive_node(self, address: str) -> None:
        assert self.district is not None
        self.district.revive_node(address)

    # --- observations --------------------------------------------------------------------------

    async def status(self) -> dict[str, Any] | None:
        return await self.request("status")

    async def request(self, command: str, args: dict[str, Any] | None = None
                      ) -> dict[str, Any] | None:
        try:
            return await asyncio.to_thread(ControlClient(self.out / "control.sock",
                                                         timeout=10).request, command, args or {})
        except (ControlError, OSError):
            return None

    def rss_kib(self) -> int | None:
        return _proc_rss_kib(self.daemon.pid) if self.daemon else None

    def fds(self) -> int | None:
        return _proc_fds(self.daemon.pid) if self.daemon else None

    def sample_rss(self) -> int | None:
        rss = self.rss_kib()
        if rss is not None:
            self.rss_samples.append(rss)
        return rss

    async def healthy(self, wall_timeout: float = 30.0) -> dict[str, Any]:
        """Is the daemon healthy: alive, ``status`` answers, watchdog pings flowing (fresh)."""
        alive = self.daemon is not None and self.daemon.poll() is None
        st = await self.status() if alive else None
        assert self.watchdog is not None
        before = self.watchdog.counts["WATCHDOG"]
        t0 = time.monotonic()
        # Half of WATCHDOG_USEC between pings: wait up to a few intervals for a new one.
        while (alive and self.watchdog.counts["WATCHDOG"] == before
               and time.monotonic() - t0 < wall_timeout):
            await self.wall_sleep(0.1)
        pings = self.watchdog.counts["WATCHDOG"] > before
        return {"alive": alive, "status": st is not None, "watchdog_pings": pings,
                "watchdog_healthy": bool(st and st["watchdog"]["healthy"]),
                "faults": st["faults"] if st else None,
                "healthy": bool(alive and st is not None and pings)}

    async def wait_until(self, pred: Any, wall_timeout: float, poll: float = 0.5) -> bool:
        """Poll ``await pred(status)`` until true; False after ``wall_timeout`` real seconds."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < wall_timeout:
            st = await self.status()
            if st is not None and pred(st):
                return True
            await self.wall_sleep(poll)
        return False

    async def wait_drained(self, wall_timeout: float = 120.0) -> bool:
        """The outbox is empty and the uplink online."""
        return await self.wait_until(lambda s: s["uplink"]["outbox"] == 0
                                     and s["uplink"]["state"] == "online", wall_timeout)

    def round_done(self, day: date) -> Any:
        """A status predicate: the daily-frozen round of ``day`` has closed."""
        def pred(st: dict[str, Any]) -> bool:
            r = (st.get("rounds") or {}).get("daily_frozen")
            return bool(r and r["day"] >= day.isoformat())
        return pred

    # --- the checker ---------------------------------------------------------------------------

    def master_items(self) -> list[dict[str, Any]]:
        """Every upload item the master system holds, primary and backup merged by key."""
        merged: dict[tuple[str, int, int], dict[str, Any]] = {}
        for m in self.masters.values():
            for it in m.uploads():
                key = (it["terminal"], it["seq"], it["part"])
                if key in merged:
                    merged[key]["copies"] += it["copies"]
                else:
                    merged[key] = dict(it)
        return list(merged.values())

    def expected_daily(self, days: list[date]) -> set[tuple[str, str]]:
        """(meter, day) of every daily freeze the meters' truth says was taken on ``days``."""
        assert self.district is not None
        return expected_daily(self.district, days)

    def check(self, days: list[date]) -> CheckResult:
        """Compare the master's holdings with the truth for the daily freezes of ``days``."""
        return check_items(self.master_items(), self.expected_daily(days))


def expected_daily(district: SimDistrict, days: list[date]) -> set[tuple[str, str]]:
    """(meter, day) of every daily freeze the meters' truth says was taken on ``days``."""
    md, sc = district.meterdata, district.scenario
    out = set()
    for d in days:
        t = (datetime.combine(d, datetime.min.time()) - sc.start).total_seconds()
        for m in sc.all_meters():
            if md.present(m.address, t):
                out.add((m.address, d.isoformat()))
    return out


def check_items(items: list[dict[str, Any]], expected: set[tuple[str, str]]) -> CheckResult:
    """The master's upload items against the expected (meter, day) daily readings."""
    daily: Counter[tuple[str, str]] = Counter()
    curve: Counter[tuple[str, str]] = Counter()
    retrans = 0
    for it in items:
        retrans += max(0, it["copies"] - 1)
        v = it["value"]
        if it["afn"] == 0x0D and it["fn"] == 161:
            daily[(it["meter"], _day_of(v))] += 1
        elif it["afn"] == 0x0D and it["fn"] == 101:
            for ts in _curve_times(v):
                curve[(it["meter"], ts)] += 1
    delivered = expected & set(daily)
    lost = sorted(expected - delivered)
    dup = sorted(k for k, n in (*daily.items(), *curve.items()) if n > 1)
    return CheckResult(expected=len(expected), delivered=len(delivered), lost=len(lost),
                       duplicated=len(dup), retransmitted=retrans, curve_points=len(curve),
                       lost_items=lost, duplicated_items=dup)


def _day_of(value: dict[str, Any]) -> str:
    for k in ("day", "td", "date"):
        if k in value:
            return str(value[k])[:10]
    return json.dumps(value, sort_keys=True)


def _curve_times(value: dict[str, Any]) -> list[str]:
    start = value.get("start")
    minutes = value.get("density_min") or value.get("density_minutes")
    points = value.get("points") or []
    if start is None or not minutes:
        return [json.dumps(value, sort_keys=True)]
    t0 = datetime.fromisoformat(str(start))
    return [(t0 + timedelta(minutes=int(minutes) * i)).isoformat()
            for i, p in enumerate(points) if p is not None]


# --- scenarios -----------------------------------------------------------------------------------
#
# Each scenario is one fresh district, master and daemon in its own directory and its own
# accelerated loop; it returns a plain dict (the campaign report's row). Parameters scale the
# scenario from the test's small version to the bench's full one.

DEFAULT_FACTOR = 40.0   # reads at 120x fail only because of the acceleration; 40x reads all


def run_scenario(name: str, out: Path, factor: float = DEFAULT_FACTOR, **kw: Any
                 ) -> dict[str, Any]:
    """Run scenario ``name`` (a key of :data:`SCENARIOS`) in its own accelerated loop."""
    from concentrator.timescale import loop_factory

    if name in VSCENARIOS:
        return run_virtual(name, out, **kw)
    out.mkdir(parents=True, exist_ok=True)
    epoch = time.time() + 0.5
    t0 = time.monotonic()
    with asyncio.Runner(loop_factory=loop_factory(epoch, factor)) as runner:
        row = runner.run(SCENARIOS[name](out, epoch, factor, **kw))
    row.update(scenario=name, wall_s=round(time.monotonic() - t0, 1), factor=factor)
    return row


async def _finish(c: Campaign, days: list[date], row: dict[str, Any],
                  drain_wall_s: float = 120.0) -> dict[str, Any]:
    drained = await c.wait_drained(drain_wall_s)
    health = await c.healthy()
    c.sample_rss()
    res = c.check(days)
    row.update(res.as_dict())
    row.update(drained=drained, healthy=health["healthy"], health=health,
               peak_rss_kib=max(c.rss_samples, default=None), restarts=c.restarts,
               kills=c.kills, watchdog_pings=c.watchdog.counts["WATCHDOG"] if c.watchdog else 0,
               end_district_time=c.now().isoformat(timespec="seconds"))
    return row


async def _round_and_drain(c: Campaign, day: date, wall_s: float = 240.0) -> bool:
    return await c.wait_until(c.round_done(day), wall_s)


async def scenario_kill9(out: Path, epoch: float, factor: float, kills: int = 3,
                         seed: int = 1, min_gap_s: float = 1.0, max_gap_s: float = 6.0
                         ) -> dict[str, Any]:
    """``kills`` SIGKILLs at random moments (formation, reading, upload), each then a restart."""
    rng = random.Random(seed)
    row: dict[str, Any] = {"recovery_s": []}
    async with Campaign(out, epoch=epoch, factor=factor) as c:
        day = c.start.date()
        c.sample_rss()
        for k in range(kills):
            if k == 0:
                # The first kill falls in formation: a 20-meter district forms in a few wall
                # seconds at the campaign's speed-up, so a random gap of 1-6 s often missed it.
                for _poll in range(100):
                    st = await c.status()
                    if st is not None and st["discovering"]:
                        break
                    await c.wall_sleep(0.1)
                await c.wall_sleep(rng.uniform(0.0, 0.3))
            else:
                await c.wall_sleep(rng.uniform(min_gap_s, max_gap_s))
            st = await c.status()
            phase = ("formation" if st and st["discovering"] else "upload"
                     if st and st["uplink"]["outbox"] else "reading")
            row.setdefault("phases", Counter())[phase] += 1
            c.sample_rss()
            c.kill9_daemon()
            row["recovery_s"].append(round(await c.restart_daemon(), 2))
        await _round_and_drain(c, day)
        row = await _finish(c, [day], row)
        row["phases"] = dict(row.get("phases", {}))
    return row


async def scenario_master_outage(out: Path, epoch: float, factor: float, hours: float = 6.0,
                                 ) -> dict[str, Any]:
    """The master unreachable for ``hours`` simulated hours from the start, then back."""
    row: dict[str, Any] = {"outage_h": hours, "rss_during_kib": []}
    async with Campaign(out, epoch=epoch, factor=factor) as c:
        await c.master_down("primary")
        day = c.start.date()
        t_end = hours * 3600.0
        while asyncio.get_running_loop().time() < t_end:
            await asyncio.sleep(min(1800.0, max(1.0, t_end - asyncio.get_running_loop().time())))
            row["rss_during_kib"].append(c.sample_rss())
        st = await c.status()
        row["outbox_before"] = st["uplink"]["outbox"] if st else None
        await c.master_up("primary")
        t0 = time.monotonic()
        await _round_and_drain(c, day)
        drained = await c.wait_drained(300.0)
        row["recovery_s"] = [round(time.monotonic() - t0, 1)] if drained else []
        days = [day + timedelta(days=i) for i in range(int(hours // 24) + 1)
                if c.now() >= datetime.combine(day + timedelta(days=i), datetime.min.time())
                + timedelta(hours=1)]
        row = await _finish(c, days, row)
    return row


async def scenario_failover(out: Path, epoch: float, factor: float, flaps: int = 4,
                            flap_s: float = 300.0) -> dict[str, Any]:
    """Primary down with the backup up; both down; then the primary flapping every few minutes."""
    row: dict[str, Any] = {"recovery_s": []}
    async with Campaign(out, epoch=epoch, factor=factor, backup=True) as c:
        day = c.start.date()
        await c.master_down("primary")              # the backup takes the uploads
        await _round_and_drain(c, day)
        await c.wait_drained(120.0)
        row["backup_items"] = len(c.masters["backup"].uploads())
        await c.master_down("both")
        await asyncio.sleep(1800.0)
        await c.master_up("primary")
        for i in range(flaps):
            await asyncio.sleep(flap_s)
            if i % 2 == 0:
                await c.master_down("primary")
            else:
                await c.master_up("primary")
        await c.master_up("both")
        t0 = time.monotonic()
        if await c.wait_drained(240.0):
            row["recovery_s"].append(round(time.monotonic() - t0, 1))
        row = await _finish(c, [day], row)
    return row


async def scenario_module(out: Path, epoch: float, factor: float, vanish_s: float = 600.0,
                          garbage_s: float = 300.0) -> dict[str, Any]:
    """The module's pty vanishes mid-read and returns; the module resets and talks garbage."""
    row: dict[str, Any] = {"recovery_s": []}
    async with Campaign(out, epoch=epoch, factor=factor) as c:
        day = c.start.date()
        # Mid-read: once the daily round has started reading.
        await c.wait_until(lambda s: not s["discovering"] and s["nodes"]["online"] > 0, 120.0)
        await asyncio.sleep(max(0.0, 7 * 60.0 - asyncio.get_running_loop().time()))
        c.close_module_pty()
        await asyncio.sleep(vanish_s)
        c.reopen_module_pty()
        t0 = time.monotonic()
        if await c.wait_until(lambda s: s["module"]["connected"], 120.0, poll=0.2):
            row["recovery_s"].append(round(time.monotonic() - t0, 1))
        c.module_reset()
        c.garbage(True)
        await asyncio.sleep(garbage_s)
        c.garbage(False)
        await _round_and_drain(c, day)
        row = await _finish(c, [day], row)
    return row


def _pad_store(path: Path, cap: int) -> int:
    """Fill the store file up to ``cap`` with a harness table (the rest of a full disk)."""
    import sqlite3

    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count={cap // page}")
        conn.execute("CREATE TABLE IF NOT EXISTS campaign_padding (b BLOB)")
        n = 0
        for size in (65536, 4096, 512):
            while True:
                try:
                    conn.execute("INSERT INTO campaign_padding VALUES (?)", (os.urandom(size),))
                    n += size
                except sqlite3.OperationalError:
                    break
        return n
    finally:
        conn.close()


def _unpad_store(path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    try:
        conn.execute("DELETE FROM campaign_padding")
    finally:
        conn.close()


async def scenario_disk(out: Path, epoch: float, factor: float, full_s: float = 600.0
                        ) -> dict[str, Any]:
    """Store full (size cap) during the round, then room again; then a corrupted store file."""
    cap = 1024 * 1024
    row: dict[str, Any] = {"recovery_s": []}
    async with Campaign(out, epoch=epoch, factor=factor, size_cap=cap) as c:
        day = c.start.date()
        await c.wait_until(lambda s: not s["discovering"] and s["nodes"]["online"] > 0, 120.0)
        # Full before the round's first writes: a 20-meter round now ends within a minute of
        # 00:05, so filling the disk at 00:06 met no write and raised no alarm.
        row["padding_bytes"] = await asyncio.to_thread(_pad_store, out / "concentrator.db", cap)
        await asyncio.sleep(full_s)
        st = await c.status()
        row["faults_while_full"] = st["faults"] if st else None
        row["alive_while_full"] = c.daemon is not None and c.daemon.poll() is None
        await asyncio.to_thread(_unpad_store, out / "concentrator.db")
        await _round_and_drain(c, day)
        ev = await c.request("events", {}) or {"events": []}
        row["store_full_events"] = sum(1 for e in ev["events"]
                                       if e["data"].get("fault") == "store_full")
        # The store evicts its oldest days above the cap's high water before SQLite is full:
        # that eviction event is the alarm when the daemon's own writes still fit.
        row["size_cap_events"] = sum(1 for e in ev["events"]
                                     if e["data"].get("fault") == "evicted"
                                     and e["data"].get("reason") == "size_cap")
        row = await _finish(c, [day], row)
        # Corruption: a clean stop, pages overwritten, a start: detected, moved aside, an event.
        await c.stop_daemon()
        c.corrupt_store_file()
        t0 = time.monotonic()
        await c.restart_daemon()
        row["recovery_s"].append(round(time.monotonic() - t0, 2))
        ev = await c.request("events", {}) or {"events": []}
        row["corrupt_events"] = sum(1 for e in ev["events"]
                                    if e["data"].get("fault") == "store_corrupt")
        row["moved_aside"] = sorted(p.name for p in out.glob("concentrator.db.corrupt-*"))
        health = await c.healthy()
        row["healthy"] = row["healthy"] and health["healthy"]
    return row


# --- in-process scenarios, in virtual time -------------------------------------------------------
#
# Days and weeks at 40x are hours of wall time, so the long scenarios run the same Daemon object
# in-process (``simulator.inprocess.VirtualDaemon``: the district on in-memory links, the master
# on loopback, all in ``VirtualTimeLoop``). There is no process to SIGKILL or pty to close here;
# RSS and open files are the whole test process's (district, master and daemon together).


def _self_rss_kib() -> int | None:
    return _proc_rss_kib(os.getpid())


def _self_fds() -> int | None:
    return _proc_fds(os.getpid())


async def _v_healthy(vd: Any) -> dict[str, Any]:
    """The daemon task alive, ``status`` answers, every watchdog loop beat in the last minute."""
    alive = vd._task is not None and not vd._task.done()
    st = await vd.daemon._h_status({}) if alive else None
    wd = vd.daemon.watchdog
    before = dict(wd._last)
    await asyncio.sleep(60.0)
    beats = bool(before) and all(wd._last.get(n, 0) > t for n, t in before.items())
    return {"alive": alive, "status": st is not None, "watchdog_beats": beats,
            "watchdog_healthy": wd.healthy(), "faults": st["faults"] if st else None,
            "healthy": bool(alive and st is not None and beats and wd.healthy())}


def _v_outbox(vd: Any) -> int:
    return vd.daemon.store.outbox_count() if hasattr(vd.daemon.store, "outbox_count") else -1


async def _v_drained(vd: Any, timeout: float) -> float | None:
    """Virtual seconds until the master confirmed the backlog (status outbox 0, online)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while loop.time() - t0 < timeout:
        st = await vd.daemon._h_status({})
        if st["uplink"]["outbox"] == 0 and st["uplink"]["state"] == "online":
            return loop.time() - t0
        await asyncio.sleep(30.0)
    return None


def _v_round_done(vd: Any, day: date) -> bool:
    if vd.daemon.store is None:     # not opened yet
        return False
    done = vd.daemon.store.kv_get("reader.done.daily_frozen")
    return bool(done and done[:10] >= day.isoformat())


async def _v_finish(vd: Any, days: list[date], row: dict[str, Any],
                    expected: set[tuple[str, str]] | None = None) -> dict[str, Any]:
    row["drain_s"] = await _v_drained(vd, 6 * 3600.0)
    health = await _v_healthy(vd)
    exp = expected if expected is not None else expected_daily(vd.district, days)
    row.update(check_items(vd.master.uploads(), exp).as_dict())
    row.update(drained=row["drain_s"] is not None, healthy=health["healthy"], health=health,
               days=[d.isoformat() for d in days], restarts=0, kills=0,
               end_district_time=vd.district.wall_time().isoformat(timespec="seconds"),
               rss_scope="test process (district + master + daemon)")
    return row


def _churn_events(sc: Scenario, days: int, seed: int) -> Scenario:
    """``sc`` plus, every day, a node outage, a meter replacement and a noise burst."""
    from dataclasses import replace as dc_replace

    from simulator.scenario import MeterReplaced, NodeOff, NodeOn, NoiseBurst

    rng = random.Random(f"churn:{seed}")
    evs = list(sc.events)
    gone = {e.old for e in evs if isinstance(e, MeterReplaced)}
    nodes = [j.id for j in sc.junctions[1:]] if getattr(sc, "junctions", None) else []
    for d in range(1, days):
        base = d * 86400.0
        live = sorted({m.address for m in sc.all_meters()} - gone)
        plc = [m.address for m in sc.all_meters() if m.address in live and m.collector is None]
        victim = rng.choice(plc)
        t_off = base + rng.uniform(9, 12) * 3600
        evs += [NodeOff(round(t_off), victim), NodeOn(round(t_off + rng.uniform(1, 4) * 3600), victim)]
        old = rng.choice([a for a in live if a != victim])
        new = f"99{d:02d}{rng.randrange(10**8):08d}"
        evs.append(MeterReplaced(round(base + rng.uniform(13, 16) * 3600), old, new))
        gone.add(old)
        if nodes:
            evs.append(NoiseBurst(round(base + rng.uniform(19, 21) * 3600), rng.choice(nodes),
                                  round(rng.uniform(25, 35), 1), round(rng.uniform(300, 1800))))
    return dc_replace(sc, events=tuple(sorted(evs, key=lambda e: e.at)))


async def vscenario_churn(out: Path, days: int = 7, meters: int = 20, seed: int = 1
                          ) -> dict[str, Any]:
    """A week of churn: every day a node dies and returns, a meter is replaced, a noise burst."""
    from simulator.inprocess import VirtualDaemon

    sc = _churn_events(generate(meters, "feeder", seed, channel="hplc", events=True), days, seed)
    row: dict[str, Any] = {"days_run": days, "events": len(sc.events), "replacements": {
        e.new for e in sc.events if type(e).__name__ == "MeterReplaced"}}
    async with VirtualDaemon(sc, out) as vd:
        first = sc.start.date()
        await vd.until(lambda: _v_round_done(vd, first), 86400, step=300)
        await _v_drained(vd, 3600)
        row["rss_start_kib"], row["fds_start"] = _self_rss_kib(), _self_fds()
        last = first + timedelta(days=days - 1)
        await vd.until(lambda: _v_round_done(vd, last), days * 86400, step=600)
        await asyncio.sleep(3600.0)
        row["rss_end_kib"], row["fds_end"] = _self_rss_kib(), _self_fds()
        row["peak_rss_kib"] = max(row["rss_start_kib"] or 0, row["rss_end_kib"] or 0)
        row["recovery_s"] = []
        days_l = [first + timedelta(days=i) for i in range(days)]
        row = await _v_finish(vd, days_l, row)
    return row


async def vscenario_outage72(out: Path, hours: float = 72.0, meters: int = 20, seed: int = 1
                             ) -> dict[str, Any]:
    """The master unreachable for ``hours`` simulated hours from the start, then back."""
    from simulator.inprocess import VirtualDaemon

    sc = generate(meters, "feeder", seed, channel="hplc", events=False)
    row: dict[str, Any] = {"outage_h": hours, "rss_during_kib": [], "outbox_during": []}
    async with VirtualDaemon(sc, out) as vd:
        await vd.master_down()
        loop = asyncio.get_running_loop()
        t_end = loop.time() + hours * 3600.0
        while loop.time() < t_end:
            await asyncio.sleep(min(6 * 3600.0, t_end - loop.time()))
            st = await vd.daemon._h_status({})
            row["rss_during_kib"].append(_self_rss_kib())
            row["outbox_during"].append(st["uplink"]["outbox"])
        row["outbox_before"] = row["outbox_during"][-1]
        row["uplink_state_during"] = (await vd.daemon._h_status({}))["uplink"]["state"]
        await vd.master_up()
        drain = await _v_drained(vd, 6 * 3600.0)
        row["recovery_s"] = [round(drain)] if drain is not None else []
        row["rss_after_kib"] = _self_rss_kib()
        row["peak_rss_kib"] = max(x for x in row["rss_during_kib"] + [row["rss_after_kib"]] if x)
        first = sc.start.date()
        days = [first + timedelta(days=i) for i in range(int(hours // 24) + 1)
                if _v_round_done(vd, first + timedelta(days=i))]
        row = await _v_finish(vd, days, row)
    return row


async def vscenario_clock_jump(out: Path, meters: int = 20, seed: int = 1) -> dict[str, Any]:
    """The terminal's wall clock steps forward a day, later back an hour (the meters' clocks and
    the master's do not): no daily round of the terminal's days missed or repeated, the readings
    whose meters had not frozen that day flagged, an ERC 41 event per step."""
    from concentrator.store import FLAG_FROM_REALTIME
    from simulator.inprocess import VirtualDaemon

    sc = generate(meters, "feeder", seed, channel="hplc", events=False)
    row: dict[str, Any] = {"recovery_s": []}
    d0 = sc.start.date()
    days = [d0 + timedelta(days=i) for i in range(4)]
    async with VirtualDaemon(sc, out) as vd:
        await vd.until(lambda: _v_round_done(vd, d0), 86400, step=300)
        await vd.until(lambda: vd.district.wall_time() >= datetime.combine(d0, datetime.min.time())
                       + timedelta(hours=12), 86400, step=300)
        vd.step_clock(timedelta(days=1))          # the terminal now reads day 2, 12:00
        t0 = asyncio.get_running_loop().time()
        await vd.until(lambda: _v_round_done(vd, days[1]), 6 * 3600, step=60)
        row["recovery_s"].append(round(asyncio.get_running_loop().time() - t0))
        await vd.until(lambda: _v_round_done(vd, days[2]), 86400, step=60)
        row["back_step_at"] = vd.clock.now().isoformat(timespec="seconds")
        vd.step_clock(timedelta(hours=-1))        # back an hour, just after day 3's round
        await vd.until(lambda: _v_round_done(vd, days[3]), 2 * 86400, step=300)
        store = vd.daemon.store
        row["reports"] = [(r.task, r.opens.isoformat()) for r in vd.daemon.reader.reports
                          if r.task == "daily_frozen"]
        flagged = {d.isoformat(): sum(1 for r in store.daily_for_date(d)
                                      if r.flags & FLAG_FROM_REALTIME) for d in days}
        row["flagged_by_day"] = flagged
        await _v_drained(vd, 3600)
        ercs = Counter()
        for u in vd.master.uploads():
            if u["afn"] == 0x0E:
                for r in u["value"].get("records", []):
                    ercs[r.get("erc")] += 1
        row["events_at_master"] = dict(ercs)
        row["peak_rss_kib"] = _self_rss_kib()
        # The terminal's days are the labels now: each meter once for each of its four days.
        expected = {(m.address, d.isoformat()) for m in sc.all_meters() for d in days}
        row = await _v_finish(vd, days, row, expected=expected)
    return row


VSCENARIOS: dict[str, Any] = {
    "churn": vscenario_churn,
    "outage72": vscenario_outage72,
    "clock_jump": vscenario_clock_jump,
}


def run_virtual(name: str, out: Path, **kw: Any) -> dict[str, Any]:
    """Run in-process scenario ``name`` (a key of :data:`VSCENARIOS`) in virtual time."""
    from simulator.vtime import VirtualTimeLoop

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        row = runner.run(VSCENARIOS[name](out, **kw))
    row.update(scenario=name, wall_s=round(time.monotonic() - t0, 1), factor="virtual",
               harness="in-process")
    return row


SCENARIOS: dict[str, Any] = {
    "kill9": scenario_kill9,
    "master_outage": scenario_master_outage,
    "failover": scenario_failover,
    "module": scenario_module,
    "disk": scenario_disk,
}
