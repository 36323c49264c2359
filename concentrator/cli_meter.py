"""`concentrator meter ...`: talk to one meter directly, without the mesh.

``concentrator meter read --port /dev/ttyUSB0 --address 000000000161 --item energy`` reads
one item over a serial port (8E1, 2400 bps for DL/T 645-2007, 1200 bps for 1997 by default)
or over a TCP serial server (``--tcp HOST:PORT``) and prints it with its unit. Exit code 1
with a one-line message on timeout, checksum error, error reply or a missing port.
"""

from __future__ import annotations

import json

import click

from concentrator import dlt645, meter_read
from concentrator.codec import CodecError
from concentrator.meter_read import MeterLink, MeterReadError

_DEFAULT_BAUD = {2007: 2400, 1997: 1200}


@click.group()
def meter() -> None:
    """Read a meter directly over a serial port or a TCP serial server."""


@meter.command("read")
@click.option("--port", help="Serial device of the probe or RS-485 adapter, e.g. /dev/ttyUSB0.")
@click.option("--tcp", metavar="HOST:PORT", help="TCP serial server instead of a local port.")
@click.option("--address", help="12-digit meter address; default: the wildcard (one meter on the line).")
@click.option("--item", type=click.Choice(sorted(meter_read.ITEMS)), default="energy",
              show_default=True, help="What to read.")
@click.option("--di", "di_text", metavar="DI", help="Read this data identifier instead of --item, e.g. 00010000.")
@click.option("--protocol", type=click.Choice(["2007", "1997"]), default="2007", show_default=True)
@click.option("--baud", type=int, help="Bit rate [default: 2400 for 2007, 1200 for 1997].")
@click.option("--parity", type=click.Choice(["E", "N", "O"]), default="E", show_default=True)
@click.option("--days-back", type=click.IntRange(1, 62), default=1, show_default=True,
              help="Which daily freeze for --item daily-frozen (1 = yesterday's).")
@click.option("--timeout", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="Seconds to wait for each reply.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def read(port: str | None, tcp: str | None, address: str | None, item: str, di_text: str | None,
         protocol: str, baud: int | None, parity: str, days_back: int, timeout: float,
         as_json: bool) -> None:
    """Read one meter and print the value with its unit."""
    edition = int(protocol)
    if (port is None) == (tcp is None):
        raise click.UsageError("give exactly one of --port or --tcp")
    if address is None:
        # 1997 meters answer reads to the broadcast address; 2007 meters to the wildcard.
        address = dlt645.WILDCARD_ADDRESS if edition == 2007 else dlt645.BROADCAST_ADDRESS
    elif len(address) != 12 or any(c not in "0123456789ABCDEFabcdef" for c in address):
        raise click.BadParameter("must be 12 digits, e.g. 000000000161", param_hint="--address")
    address = address.upper()
    di: int | None = None
    if di_text is not None:
        try:
            di = dlt645.parse_di(di_text)
        except CodecError as exc:
            raise click.BadParameter(str(exc), param_hint="--di") from None
        digits = 8 if edition == 2007 else 4
        if len(di_text.strip().replace(" ", "").removeprefix("0x").removeprefix("0X")) != digits:
            raise click.BadParameter(f"DL/T 645-{edition} data identifiers have {digits} hex digits",
                                     param_hint="--di")
    elif edition not in meter_read.ITEMS[item]:
        raise click.UsageError(f"item {item} is not defined for DL/T 645-{edition}")

    try:
        serial_port = meter_read.open_port(port, tcp, baud=baud or _DEFAULT_BAUD[edition], parity=parity)
        try:
            link = MeterLink(serial_port, timeout=timeout)
            if di is not None:
                readings = [meter_read.read_di(link, address, di, edition)]
            else:
                readings = meter_read.read_item(link, address, item, protocol=edition, days_back=days_back)
        finally:
            serial_port.close()
    except MeterReadError as exc:
        raise click.ClickException(str(exc)) from None

    meter_address = readings[0].address
    if as_json:
        click.echo(json.dumps({
            "meter": meter_address,
            "protocol": f"DL/T 645-{edition}",
            "item": item if di is None else dlt645.format_di(di, edition),
            "readings": [r.to_dict() for r in readings],
        }, indent=2))
        return
    click.echo(f"meter {meter_address} (DL/T 645-{edition})")
    for r in readings:
        tag = f" [{dlt645.format_di(r.di, edition)}]" if r.di is not None else ""
        if isinstance(r.value, tuple) and r.item is not None and r.item.labels:
            # Blocks (total + tariffs, phases A/B/C): one element per line reads best.
            click.echo(f"  {r.name}{tag}:")
            width = max(len(label) for label in r.item.labels[: len(r.value)])
            for label, v in zip(r.item.labels, r.value, strict=False):
                click.echo(f"    {label:<{width}}  {dlt645.format_value(r.item, v)}")
        else:
            click.echo(f"  {r.name}{tag}: {r.text}")
