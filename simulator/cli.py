"""`concentrator-sim`: the field simulator (districts, physics, devices, master station)."""

from __future__ import annotations

import logging

import click


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Simulated transformer district for testing and planning a concentrator."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _attach() -> None:
    # Commands register themselves here; keep one line per module.
    from simulator import cli_world

    for cmd in cli_world.COMMANDS:
        main.add_command(cmd)
    from simulator import serve

    main.add_command(serve.serve_cmd)
    from simulator import trial

    main.add_command(trial.trial_cmd)
    from simulator import cli_master

    main.add_command(cli_master.master_cmd_server)
    main.add_command(cli_master.master_cmd)


_attach()
