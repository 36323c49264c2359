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
    pass


_attach()
