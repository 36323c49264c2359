"""``concentrator-sim serve``: the simulated district on pseudo-terminals, in real time.

The carrier module (CCO) is served on one pty and the district summary meter on a second,
both set to the field's serial settings (module 9600 8E1, meter 2400 8E1). A concentrator, or
any serial tool, opens the printed ``/dev/pts/N`` paths exactly as it would open
``/dev/ttyS1``::

    $ concentrator-sim serve district.yaml
    module: /dev/pts/5 (9600 8E1)
    summary meter: /dev/pts/6 (2400 8E1)

It runs until Ctrl-C (or SIGTERM). The simulator holds the pty masters; the slave ends stay
open on our side too, so a client may close and reopen its port at will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import termios
import tty
from collections.abc import Callable
from datetime import datetime

import click

from plc_driver.link import LinkClosed
from simulator.district import SimDistrict
from simulator.scenario import Scenario

__all__ = ["PtyLink", "open_pty", "serve", "run_serve", "serve_cmd"]

log = logging.getLogger(__name__)

_BAUD = {1200: termios.B1200, 2400: termios.B2400, 9600: termios.B9600, 19200: termios.B19200}


class PtyLink:
    """The master side of a pty as a ``ByteLink`` (non-blocking fd + ``loop.add_reader``)."""

    def __init__(self, master_fd: int, slave_fd: int, path: str) -> None:
        self.fd = master_fd
        self._slave_fd = slave_fd  # kept open: a master reads EIO while no slave is open
        self.name = path
        self.path = path
        os.set_blocking(master_fd, False)
        self._closed = False
        self._out = bytearray()
        self._writer_on = False

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise LinkClosed(f"{self.path}: closed")
            try:
                data = os.read(self.fd, 4096)
            except BlockingIOError:
                data = None
            except OSError as exc:
                raise LinkClosed(f"{self.path}: {exc}") from exc
            if data:
                return data
            if data == b"":
                raise LinkClosed(f"{self.path}: end of file")
            ready = loop.create_future()
            loop.add_reader(self.fd, lambda f=ready: f.done() or f.set_result(None))
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)

    def write(self, data: bytes) -> None:
        if self._closed:
            raise LinkClosed(f"{self.path}: closed")
        self._out += data
        self._flush()

    def _flush(self) -> None:
        try:
            while self._out:
                n = os.write(self.fd, self._out)
                del self._out[:n]
        except BlockingIOError:
            pass
        except OSError as exc:
            log.warning("pty %s: write failed: %s", self.path, exc)
            self._out.clear()
        loop = asyncio.get_running_loop()
        if self._out and not self._writer_on:
            loop.add_writer(self.fd, self._flush)
            self._writer_on = True
        elif not self._out and self._writer_on:
            loop.remove_writer(self.fd)
            self._writer_on = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.fd)
            if self._writer_on:
                loop.remove_writer(self.fd)
        for fd in (self.fd, self._slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_pty(baud: int = 9600, parity: str = "E") -> PtyLink:
    """A new pty in raw mode at ``baud`` 8-``parity``-1; returns the master side as a link."""
    master, slave = os.openpty()
    tty.setraw(slave)
    attrs = termios.tcgetattr(slave)
    cflag = attrs[2] & ~(termios.CSIZE | termios.PARENB | termios.PARODD | termios.CSTOPB)
    cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
    if parity in ("E", "O"):
        cflag |= termios.PARENB | (termios.PARODD if parity == "O" else 0)
    attrs[2] = cflag
    attrs[4] = attrs[5] = _BAUD[baud]
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    return PtyLink(master, slave, os.ttyname(slave))


async def serve(scenario: Scenario, seed: int | None = None, *, start: datetime | None = None,
                ready: Callable[[str, str | None], None] | None = None,
                stop: asyncio.Event | None = None, loop_time: float | None = None) -> None:
    """Run the module and the summary meter on ptys until ``stop`` is set (or cancelled).

    ``ready(module_path, summary_path)`` is called once both ptys are open. ``loop_time``: the
    loop time at which the district reads ``start`` (default: now); accelerated runs pass 0 so
    that the daemon and the simulator, sharing an epoch, agree on the wall time.
    """
    district = SimDistrict(scenario, seed, start=start, loop_time=loop_time)
    module_pty = open_pty(9600, "E")
    summary_pty = open_pty(2400, "E") if scenario.summary_meter is not None else None
    try:
        district.attach_module(module_pty)
        if summary_pty is not None:
            district.attach_summary_meter(summary_pty)
        log.info("serving %s: module on %s, summary meter on %s", scenario.name, module_pty.path,
                 summary_pty.path if summary_pty else "-")
        if ready is not None:
            ready(module_pty.path, summary_pty.path if summary_pty else None)
        await (stop or asyncio.Event()).wait()
    finally:
        await district.close()
        module_pty.close()
        if summary_pty is not None:
            summary_pty.close()


def run_serve(scenario: Scenario, seed: int | None = None, *, start: datetime | None = None,
              echo: Callable[[str], None] = print, time_factor: float = 1.0,
              epoch: float | None = None) -> None:
    """Blocking entry of the CLI: print the pty paths, serve until SIGINT/SIGTERM.

    ``time_factor``/``epoch``: run in accelerated time (``concentrator.timescale``), in step with
    a daemon started with the same epoch and factor.
    """
    from concentrator.timescale import loop_factory

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(module: str, summary: str | None) -> None:
            echo(f"module: {module} (9600 8E1)")
            echo(f"summary meter: {summary} (2400 8E1)" if summary else "summary meter: none in scenario")
            pace = "real time" if time_factor == 1.0 else f"{time_factor:g}x real time"
            echo(f"running in {pace}; Ctrl-C stops")

        await serve(scenario, seed, start=start, ready=ready, stop=stop,
                    loop_time=None if epoch is None else 0.0)

    with asyncio.Runner(loop_factory=loop_factory(epoch, time_factor)) as runner:
        runner.run(main())


@click.command("serve")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--seed", type=int, default=None, help="Seed (default: the scenario's).")
@click.option("--start", "start", default=None,
              help="Wall time of the district at launch (ISO; default the scenario start).")
@click.option("--time-factor", type=float, default=1.0, show_default=True,
              help="Run this many times faster than real time.")
@click.option("--epoch", type=float, default=None,
              help="Unix time at which the district reads --start (share it with the daemon).")
def serve_cmd(scenario: str, seed: int | None, start: str | None, time_factor: float,
              epoch: float | None) -> None:
    """Run the module (9600 8E1) and the summary meter (2400 8E1) on ptys, in real time."""
    from simulator.scenario import ScenarioError, load

    try:
        sc = load(scenario)
    except ScenarioError as exc:
        raise click.ClickException(f"{scenario}: {exc}") from exc
    try:
        when = datetime.fromisoformat(start) if start else None
    except ValueError as exc:
        raise click.BadParameter(f"{start!r} is not an ISO datetime", param_hint="--start") from exc
    run_serve(sc, seed, start=when, echo=lambda s: click.echo(s, nl=True) or sys.stdout.flush(),
              time_factor=time_factor, epoch=epoch)
