"""The real daemon, the simulated district and the master station in one process, in virtual time.

``make run`` runs the daemon as a process against ptys in accelerated real time; this runs the
very same ``concentrator.daemon.Daemon`` object in a ``VirtualTimeLoop`` with the district's
module and summary meter on in-memory links (``Daemon(open_link=...)``) and the master station
on loopback TCP, so a test can cover days of district time in seconds::

    async with VirtualDaemon(scenario, tmp_path, extra_config=...) as vd:
        await vd.until(lambda: vd.daemon.mesh is not None and ..., timeout=3600)
        await vd.master.read_energy(vd.terminal, 1)

Run it inside ``asyncio.Runner(loop_factory=simulator.vtime.VirtualTimeLoop)``. Loopback TCP
and Unix sockets are ready as soon as the peer has written, so the virtual clock never jumps
over an answer in flight.
"""

from __future__ import annotations

import asyncio
import grp
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from concentrator import config as cfgmod
from concentrator.daemon import Daemon
from concentrator.keystore import FileKeyStore, MeterPassword
from plc_driver.link import ByteLink
from simulator.district import SimDistrict
from simulator.master import MasterStation
from simulator.scenario import Scenario

TERMINAL = "4403:1"
MODULE_PORT = "sim:module"
SUMMARY_PORT = "sim:summary"


def daemon_config(out: Path, master_port: int, channel: str, *, summary: str | None = None,
                  extra: str = "") -> str:
    """A daemon configuration for the in-process district (YAML text)."""
    group = grp.getgrgid(os.getgid()).gr_name
    summary_text = (f'summary_meter:\n  port: {SUMMARY_PORT}\n  address: "{summary}"\n'
                    if summary else "")
    return f"""paths: {{etc: {out}, state: {out}, runtime: {out}}}
terminal: {{district: "4403", address: 1}}
module: {{port: {MODULE_PORT}, channel: {channel}}}
{summary_text}mesh: {{unknown_node_policy: admit}}
store: {{path: {out}/concentrator.db}}
uplink:
  primary: 127.0.0.1:{master_port}
  heartbeat_period: 5min
  tls: {{enabled: false}}
security: {{key_file: {out}/keys.json}}
control: {{socket: {out}/control.sock, group: {group}, audit_log: {out}/audit.jsonl}}
{extra}"""


class SteppedClock:
    """The district's clock plus an offset that ``step()`` changes: the terminal's wall clock
    stepping (a bad RTC, a time sync) while monotonic time and the meters' clocks go on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return self.inner.now() + self.offset

    def monotonic(self) -> float:
        return self.inner.monotonic()

    def step(self, delta: timedelta) -> None:
        self.offset += delta


class VirtualDaemon:
    """Daemon + ``SimDistrict`` + ``MasterStation`` sharing the district's clock."""

    def __init__(self, scenario: Scenario, out: Path, *, extra_config: str = "",
                 meter_passwords: dict[str, str] | None = None) -> None:
        self.scenario = scenario
        self.out = Path(out)
        self.extra_config = extra_config
        self.meter_passwords = meter_passwords or {}
        self.terminal = TERMINAL
        self.district: SimDistrict | None = None
        self.master: MasterStation | None = None
        self.daemon: Daemon | None = None
        self.clock: SteppedClock | None = None   # the daemon's wall clock (``step_clock``)
        self.master_port: int | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _open_link(self, port: str, baud: int, parity: str) -> ByteLink:
        assert self.district is not None
        if port == MODULE_PORT:
            return self.district.module_link()
        if port == SUMMARY_PORT:
            return self.district.summary_meter_link()
        raise OSError(f"no such simulated port {port}")

    async def __aenter__(self) -> VirtualDaemon:
        self.out.mkdir(parents=True, exist_ok=True)
        self.district = SimDistrict(self.scenario, passwords=self.meter_passwords or None)
        keys = FileKeyStore(self.out / "keys.json", create=True)
        keys.set_terminal_key("4403", 1, os.urandom(16))
        for meter, pw in self.meter_passwords.items():
            # The simulator's form is level (2 hex digits) + password (6), e.g. "02000000".
            keys.set_meter_password(meter, MeterPassword(int(pw[:2], 16), pw[2:]))
        keys.save()
        self.master = MasterStation(self.out / "master.sqlite", keys=keys,
                                    clock=self.district.clock)
        port = self.master_port = await self.master.start()
        summary = self.scenario.summary_meter.address if self.scenario.summary_meter else None
        text = daemon_config(self.out, port, self.scenario.channel, summary=summary,
                             extra=self.extra_config)
        cfg = cfgmod.loads(text, str(self.out / "concentrator.yaml"))
        self.clock = SteppedClock(self.district.clock)
        self.daemon = Daemon(cfg, clock=self.clock, open_link=self._open_link)
        self._task = asyncio.create_task(self.daemon.run(self._stop), name="daemon")
        return self

    def step_clock(self, delta: timedelta) -> None:
        """The daemon's wall clock steps by ``delta`` (the district's and master's do not)."""
        assert self.clock is not None
        self.clock.step(delta)

    async def master_down(self) -> None:
        """The master station stops listening and drops its connections."""
        assert self.master is not None
        await self.master.stop()

    async def master_up(self) -> None:
        """The master station listens again on the same port."""
        assert self.master is not None
        if not self.master._servers:
            await self.master.start("127.0.0.1", self.master_port or 0)

    async def until(self, cond: Callable[[], Any], timeout: float, step: float = 5.0) -> Any:
        """Wait (virtual seconds) until ``cond()`` is truthy; its value, or TimeoutError."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            value = cond()
            if value:
                return value
            if self._task is not None and self._task.done():
                self._task.result()
                raise RuntimeError("the daemon stopped")
            if loop.time() >= end:
                raise TimeoutError(f"condition not met in {timeout} s of district time")
            await asyncio.sleep(step)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(asyncio.shield(self._task), 60)
        if self.master is not None:
            await self.master.stop()
            self.master.close()
        if self.district is not None:
            await self.district.close()
