"""`concentrator-sim master` (run the simulated master station) and `master-cmd` (talk to it).

``master-cmd`` sends one JSON line to the running master's port (the master tells control
lines from terminal frames by the first byte) and prints the JSON reply, e.g.::

    concentrator-sim master --listen 127.0.0.1:7001 --db master.sqlite --trace frames.log
    concentrator-sim master-cmd --master 127.0.0.1:7001 --terminal 4403:1 time
    concentrator-sim master-cmd --master 127.0.0.1:7001 --terminal 4403:1 read --pn 3 --day 2024-05-09
    concentrator-sim master-cmd --master 127.0.0.1:7001 --terminal 4403:1 purchase --pn 3 \
        --order 1001 --amount 100.00
    concentrator-sim master-cmd --master 127.0.0.1:7001 --terminal 4403:1 control-meter --pn 3 \
        --action trip
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import ssl
import sys
from typing import Any

import click

from simulator.master import MasterStation, parse_terminal

log = logging.getLogger(__name__)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@click.command("master")
@click.option("--listen", required=True, help="HOST:PORT the terminals connect to.")
@click.option("--db", "db", required=True, type=click.Path(dir_okay=False),
              help="SQLite file of the master (uploads, violations).")
@click.option("--trace", type=click.Path(dir_okay=False), help="Append every frame here.")
@click.option("--cert", type=click.Path(exists=True), help="TLS: server certificate (PEM).")
@click.option("--key", type=click.Path(exists=True), help="TLS: server key (PEM).")
@click.option("--client-ca", type=click.Path(exists=True),
              help="TLS: require client certificates from this CA.")
@click.option("--control", help="HOST:PORT for control lines (needed with TLS).")
def master_cmd_server(listen: str, db: str, trace: str | None, cert: str | None,
                      key: str | None, client_ca: str | None, control: str | None) -> None:
    """Run the simulated master station until interrupted."""
    host, port = _host_port(listen)
    ctx = None
    if cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_ca)
        ctx.load_cert_chain(cert, key)
        if client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED

    async def main() -> None:
        m = MasterStation(db, trace=trace, ssl_context=ctx)
        bound = await m.start(host, port)
        click.echo(f"master station listening on {host}:{bound}", err=True)
        if control:
            ch, cp = _host_port(control)
            click.echo(f"control on {ch}:{await m.start_control(ch, cp)}", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await m.stop()
        m.close()

    asyncio.run(main())


def _send(master: str, cmd: dict[str, Any], timeout: float) -> dict[str, Any]:
    host, port = _host_port(master)
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(json.dumps(cmd).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    if not buf:
        raise click.ClickException("the master closed the connection without a reply")
    return json.loads(buf)


@click.command("master-cmd")
@click.option("--master", "master", required=True, help="HOST:PORT of the running master.")
@click.option("--terminal", help="A1:A2 of the concentrator, e.g. 4403:1.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait.")
@click.argument("command", type=click.Choice(
    ["status", "violations", "time", "read", "set-archive", "archive", "forward", "events",
     "reset", "version", "raw", "purchase", "balance", "purchases", "protect",
     "control-meter"]))
@click.option("--pn", type=int, help="read, purchase, balance, purchases, protect, "
              "control-meter: measuring point (protect: 0 or unset = every prepaid meter).")
@click.option("--day", help="read: frozen day (YYYY-MM-DD) for AFN0D F161.")
@click.option("--set", "set_", help="time: set the terminal clock (ISO time).")
@click.option("--meter", "meters", multiple=True,
              help="set-archive: DEVICE:PN:ADDRESS[:PROTOCOL], repeatable.")
@click.option("--device", "devices", multiple=True, type=int, help="archive: device numbers.")
@click.option("--frame", help="forward: DL/T 645 frame in hex.")
@click.option("--important", is_flag=True, help="events: important (F1) instead of general.")
@click.option("--pm", type=int, default=0, help="events: start pointer.")
@click.option("--pn-end", type=int, default=0, help="events: end pointer (Pn).")
@click.option("--kind", type=int, help="reset: F1..F4.")
@click.option("--afn", help="raw: AFN in hex.")
@click.option("--fn", "fns", multiple=True, type=int, help="raw: Fn, repeatable.")
@click.option("--data", default="", help="raw: data unit bytes in hex.")
@click.option("--order", type=int, help="purchase: order number (the same order credits once).")
@click.option("--amount", help="purchase: amount in yuan.")
@click.option("--replace", is_flag=True, help="purchase: replace the credit instead of adding.")
@click.option("--alarm", help="purchase: alarm threshold in yuan.")
@click.option("--trip", help="purchase: trip threshold in yuan.")
@click.option("--last", is_flag=True, help="purchases: only the last one (AFN0A F47).")
@click.option("--count", type=int, default=20, show_default=True,
              help="purchases: how many (AFN0A F2044).")
@click.option("--off", is_flag=True, help="protect: switch protect off (AFN05 F33).")
@click.option("--minutes", type=int, default=0, show_default=True,
              help="protect: duration (0 = until switched off).")
@click.option("--address", help="control-meter: meter address (instead of --pn).")
@click.option("--action", type=click.Choice(["trip", "close"]), help="control-meter: action.")
def master_cmd(master: str, terminal: str | None, timeout: float, command: str,
               pn: int | None, day: str | None, set_: str | None, meters: tuple[str, ...],
               devices: tuple[int, ...], frame: str | None, important: bool, pm: int,
               pn_end: int, kind: int | None, afn: str | None, fns: tuple[int, ...],
               data: str, order: int | None, amount: str | None, replace: bool,
               alarm: str | None, trip: str | None, last: bool, count: int, off: bool,
               minutes: int, address: str | None, action: str | None) -> None:
    """Send COMMAND to a connected terminal through the running master; print the reply."""
    cmd: dict[str, Any] = {"cmd": command}
    if command not in ("status", "violations"):
        if not terminal:
            raise click.UsageError(f"{command} needs --terminal A1:A2")
        try:
            parse_terminal(terminal)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
        cmd["terminal"] = terminal
    if command == "read":
        if pn is None:
            raise click.UsageError("read needs --pn")
        cmd.update(pn=pn, day=day)
    elif command == "time" and set_:
        cmd["set"] = set_
    elif command == "set-archive":
        recs = []
        for m in meters:
            parts = m.split(":")
            if len(parts) not in (3, 4):
                raise click.BadParameter(f"{m!r} is not DEVICE:PN:ADDRESS[:PROTOCOL]")
            recs.append({"device": parts[0], "pn": parts[1], "address": parts[2],
                         "protocol": parts[3] if len(parts) == 4 else 30})
        cmd["records"] = recs
    elif command == "archive":
        cmd["devices"] = list(devices)
    elif command == "forward":
        if not frame:
            raise click.UsageError("forward needs --frame HEX")
        cmd["frame"] = frame.replace(" ", "")
    elif command == "events":
        cmd.update(important=important, pm=pm, pn=pn_end)
    elif command == "reset":
        cmd["kind"] = kind or 1
    elif command in ("purchase", "balance", "purchases"):
        if pn is None:
            raise click.UsageError(f"{command} needs --pn")
        cmd["pn"] = pn
        if command == "purchase":
            if order is None or amount is None:
                raise click.UsageError("purchase needs --order and --amount")
            cmd.update(order=order, amount=amount, replace=replace, alarm=alarm, trip=trip)
        elif command == "purchases":
            cmd.update(last=last, count=count)
    elif command == "protect":
        cmd.update(on=not off, minutes=minutes, pn=pn or 0)
    elif command == "control-meter":
        if action is None or (pn is None) == (address is None):
            raise click.UsageError("control-meter needs --action and one of --pn / --address")
        cmd.update(action=action, pn=pn, meter=address)
    elif command == "raw":
        cmd.update(afn=int(afn or "0C", 16), fns=list(fns) or [1], data=data,
                   pns=[pn or 0])
    try:
        reply = _send(master, cmd, timeout)
    except OSError as exc:
        raise click.ClickException(f"cannot reach the master at {master}: {exc}") from None
    click.echo(json.dumps(reply.get("result") if reply.get("ok") else reply, indent=2))
    if not reply.get("ok"):
        sys.exit(1)
