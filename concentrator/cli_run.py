"""`concentrator run`: start the daemon (systemd runs this at boot)."""

from __future__ import annotations

import logging
import sys
from datetime import datetime

import click

from concentrator import config as cfgmod


@click.command("run")
@click.option("--config", "config_path", default="/etc/concentrator/concentrator.yaml",
              show_default=True, type=click.Path(dir_okay=False), help="Configuration file.")
@click.option("--start", default=None,
              help="Simulation only: wall time at --epoch (ISO); default the system clock.")
@click.option("--time-factor", type=float, default=1.0, show_default=True,
              help="Simulation only: run this many times faster than real time.")
@click.option("--epoch", type=float, default=None,
              help="Simulation only: Unix time at which the clock reads --start.")
def run_cmd(config_path: str, start: str | None, time_factor: float, epoch: float | None) -> None:
    """Run the concentrator daemon with the configuration file."""
    from concentrator.daemon import run_daemon

    try:
        config = cfgmod.load(config_path)
    except cfgmod.ConfigError as exc:
        for line in exc.lines():
            click.echo(line, err=True)
        sys.exit(1)
    logging.getLogger().setLevel(config.logging.level)
    when = None
    if start:
        try:
            when = datetime.fromisoformat(start)
        except ValueError as exc:
            raise click.BadParameter(f"{start!r} is not an ISO datetime", param_hint="--start") from exc
    sys.exit(run_daemon(config, config_path=config_path, start=when, time_factor=time_factor,
                        epoch=epoch))
