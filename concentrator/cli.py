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
@click.option("--socket", "socket_path", envvar="CONCENTRATOR_SOCKET", metavar="PATH",
              default="/run/concentrator/control.sock", show_default=True,
              help="Daemon control socket (env CONCENTRATOR_SOCKET).")
@click.pass_context
def main(ctx: click.Context, verbose: int, socket_path: str) -> None:
    """Concentrator for a transformer district: mesh, meter reading, master-station uplink."""
    ctx.meta["concentrator.socket"] = socket_path
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _attach() -> None:
    # Commands register themselves here; keep one line per module.
    from concentrator import cli_frame

    main.add_command(cli_frame.frame)
    from concentrator import cli_ctl

    cli_ctl.attach(main)
    from concentrator import cli_meter

    main.add_command(cli_meter.meter)
    from concentrator import cli_run

    main.add_command(cli_run.run_cmd)
    from concentrator import cli_prepay

    main.add_command(cli_prepay.prepay)


_attach()
