"""`concentrator`: the daemon and the field engineer's command line.

Each command group lives in its own module and is attached here, so the parts of the
product can grow independently. Exit codes are stable: 0 ok, 1 failed, 2 usage,
3 daemon unreachable.
"""

from __future__ import annotations

import logging

import click


@click.group()
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Concentrator for a transformer district: mesh, meter reading, master-station uplink."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _attach() -> None:
    # Commands register themselves here; keep one line per module.
    from concentrator import cli_frame

    main.add_command(cli_frame.frame)


_attach()
