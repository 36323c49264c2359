"""Field-engineer commands that talk to the running daemon over its control socket.

Every command prints a human rendering by default and the daemon's JSON with ``--json``; the
JSON shapes are defined in ``docs/control-protocol.md`` and the renderers below read only those
keys (tolerating missing ones). Exit codes are stable: 0 ok, 1 failed, 2 usage, 3 daemon
unreachable. The socket is ``--socket PATH`` on the ``concentrator`` group (env
``CONCENTRATOR_SOCKET``). ``config check FILE`` works without a daemon.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import click
import yaml

from concentrator import config as config_mod
from concentrator.control import CommandFailed, ControlClient, ControlError, DaemonUnreachable

__all__ = [
    "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_UNREACHABLE", "DEFAULT_SOCKET", "COMMANDS",
    "render_status", "render_nodes", "render_node", "render_tree", "render_dot", "render_svg",
    "render_png",
    "render_read", "render_schedule", "render_uplink", "render_db_stats", "render_event",
    "render_archive", "render_audit",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
DEFAULT_SOCKET = "/run/concentrator/control.sock"
SOCKET_META = "concentrator.socket"

json_option = click.option("--json", "as_json", is_flag=True, help="Print the daemon's JSON.")


# --- plumbing -------------------------------------------------------------------------------


def socket_path(ctx: click.Context) -> str:
    """The control socket: global --socket, else $CONCENTRATOR_SOCKET, else the default."""
    return ctx.meta.get(SOCKET_META) or os.environ.get("CONCENTRATOR_SOCKET") or DEFAULT_SOCKET


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _call(cmd: str, args: Mapping[str, Any] | None = None) -> Any:
    ctx = click.get_current_context()
    try:
        return ControlClient(socket_path(ctx)).request(cmd, args)
    except DaemonUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except CommandFailed as exc:
        _fail(f"{cmd}: {exc}", EXIT_FAILED)
    except ControlError as exc:
        _fail(str(exc), EXIT_FAILED)


def _emit(result: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    text = render(result if isinstance(result, dict) else {})
    if text:
        click.echo(text)


def _run(cmd: str, args: Mapping[str, Any] | None, as_json: bool,
         render: Callable[[Any], str]) -> None:
    _emit(_call(cmd, args), as_json, render)


def _stream(cmd: str, args: Mapping[str, Any], as_json: bool,
            render_item: Callable[[Any], str], render_end: Callable[[Any], str] | None = None) -> None:
    ctx = click.get_current_context()
    client = ControlClient(socket_path(ctx))
    try:
        stream = client.stream(cmd, args, timeout=None)  # follow/discover may run for hours
        for item in stream:
            click.echo(json.dumps(item, ensure_ascii=False) if as_json else render_item(item))
    except KeyboardInterrupt:
        return  # Ctrl-C ends a follow; closing the socket stops the daemon's stream
    except DaemonUnreachable as exc:
        _fail(str(exc), EXIT_UNREACHABLE)
    except CommandFailed as exc:
        _fail(f"{cmd}: {exc}", EXIT_FAILED)
    except ControlError as exc:
        _fail(str(exc), EXIT_FAILED)
    if stream.result is not None:
        if as_json:
            click.echo(json.dumps({"result": stream.result}, ensure_ascii=False))
        elif render_end is not None:
            click.echo(render_end(stream.result))


def _table(rows: Iterable[Iterable[Any]], header: Iterable[str]) -> str:
    cells = [[str(h) for h in header]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, int | float) else "-"


def _size(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _duration(s: Any) -> str:
    if not isinstance(s, int | float):
        return "-"
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def _route(relays: Any) -> str:
    return " > ".join(relays) if relays else "direct"


# --- renderers (JSON result -> text); shapes in docs/control-protocol.md ---------------------


def render_status(r: Mapping[str, Any]) -> str:
    t, m, n = r.get("terminal") or {}, r.get("module") or {}, r.get("nodes") or {}
    rd, up, st = r.get("reading") or {}, r.get("uplink") or {}, r.get("store") or {}
    wd = r.get("watchdog") or {}
    nxt = rd.get("next_task") or {}
    lines = [
        f"terminal   {t.get('district', '-')}/{t.get('address', '-')}   version {r.get('version', '-')}"
        f"   up {_duration(r.get('uptime_s'))}",
        f"module     {m.get('port', '-')} {m.get('channel', '-')} "
        f"{'connected' if m.get('connected') else 'NOT CONNECTED'}  CCO {m.get('cco_address') or '-'}"
        + (f"  archive checked {m['archive_checked']}" if m.get("archive_checked") else "")
        + (f", {m['archive_added_back']} nodes added back" if m.get("archive_added_back") else ""),
        f"nodes      {n.get('total', 0)} total, {n.get('online', 0)} online, "
        f"{n.get('quarantined', 0)} quarantined",
        f"reading    {rd.get('day', '-')}: {rd.get('read', 0)}/{rd.get('due', 0)} read "
        f"({_pct(rd.get('rate'))})"
        + (f"; next {nxt.get('name')} at {nxt.get('at')}" if nxt else ""),
        f"uplink     {up.get('state', '-')} {up.get('master', '-')}  outbox {up.get('outbox', 0)}",
        f"store      {_size(st.get('size_bytes'))}",
        "watchdog   " + ("ok" if wd.get("healthy", True) else
                         "STALLED: " + ", ".join(wd.get("stale") or [])),
    ]
    # What is wrong right now, one line each (the first thing a field engineer needs).
    lines += [f"FAULT      {kind}: {message}"
              for kind, message in sorted((r.get("faults") or {}).items())]
    return "\n".join(lines)


def render_nodes(r: Mapping[str, Any]) -> str:
    nodes = r.get("nodes") or []
    rows = [(n.get("address"), n.get("level"), n.get("phase"), n.get("state"), n.get("device"),
             _pct(n.get("success_rate")), n.get("last_seen"), _route(n.get("relays")))
            for n in nodes]
    return _table(rows, ("ADDRESS", "LVL", "PH", "STATE", "DEVICE", "OK", "LAST SEEN", "ROUTE")) + \
        f"\n{len(nodes)} nodes"


def render_node(r: Mapping[str, Any]) -> str:
    out = [
        f"node {r.get('address')}  level {r.get('level')}  phase {r.get('phase') or '-'}  "
        f"{r.get('state')}",
        f"  {r.get('device', 'meter')} {r.get('protocol', '-')}  last seen {r.get('last_seen') or '-'}",
    ]
    if r.get("meters"):
        out.append("  meters behind: " + ", ".join(r["meters"]))
    out.append("routes:")
    for rt in r.get("routes") or []:
        star = "*" if rt.get("primary") else " "
        out.append(f" {star} {_route(rt.get('relays'))}   p={_pct(rt.get('probability'))}"
                   f"  cost={rt.get('cost', '-')}")
    if r.get("links"):
        out.append("links:")
        out.append(_table(((lk.get("peer"), lk.get("medium"), _pct(lk.get("up")),
                            _pct(lk.get("down")), lk.get("quality")) for lk in r["links"]),
                          ("  PEER", "MEDIUM", "UP", "DOWN", "Q")))
    if r.get("history"):
        out.append("recent exchanges:")
        for h in r["history"]:
            out.append(f"  {h.get('at')}  {'ok  ' if h.get('ok') else 'FAIL'}  "
                       f"{h.get('latency_ms', '-')} ms  via {_route(h.get('relays'))}")
    last = r.get("last_reading")
    if last:
        out.append(f"last reading: {last.get('item')} = {last.get('value')} {last.get('unit', '')}"
                   f" at {last.get('at')}")
    return "\n".join(out)


def _children(topo: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
    kids: dict[str, list[Mapping[str, Any]]] = {}
    for n in topo.get("nodes") or []:
        kids.setdefault(n.get("parent") or topo.get("root") or "", []).append(n)
    for v in kids.values():
        v.sort(key=lambda n: str(n.get("address")))
    return kids


def render_tree(topo: Mapping[str, Any]) -> str:
    root = topo.get("root") or "CCO"
    kids = _children(topo)
    lines = [f"{root} (CCO)"]
    seen = {root}

    def walk(addr: str, prefix: str) -> None:
        children = kids.get(addr, [])
        for i, n in enumerate(children):
            last = i == len(children) - 1
            a = str(n.get("address"))
            tags = " ".join(str(x) for x in (n.get("phase"), n.get("state")) if x)
            lines.append(f"{prefix}{'└── ' if last else '├── '}{a}" + (f"  [{tags}]" if tags else ""))
            if a not in seen:  # a bad parent loop from the daemon must not recurse forever
                seen.add(a)
                walk(a, prefix + ("    " if last else "│   "))

    walk(root, "")
    orphans = [n for n in topo.get("nodes") or [] if str(n.get("address")) not in seen]
    for n in orphans:
        lines.append(f"? {n.get('address')}  (parent {n.get('parent')} unknown)")
    return "\n".join(lines)


def render_dot(topo: Mapping[str, Any]) -> str:
    root = topo.get("root") or "CCO"
    out = ["graph district {", "  node [shape=box, fontname=monospace];",
           f'  "{root}" [shape=doubleoctagon, label="{root}\\nCCO"];']
    for n in topo.get("nodes") or []:
        style = ', style=dashed' if n.get("state") in ("silent", "quarantined") else ""
        out.append(f'  "{n.get("address")}" [label="{n.get("address")}\\nL{n.get("level")} '
                   f'{n.get("phase") or ""}"{style}];')
    tree = {(n.get("parent") or root, n.get("address")) for n in topo.get("nodes") or []}
    for lk in topo.get("links") or []:
        a, b = lk.get("a"), lk.get("b")
        on_tree = (a, b) in tree or (b, a) in tree
        q = lk.get("quality")
        label = f"{q:.2f}" if isinstance(q, int | float) else ""
        attrs = [f'label="{label}"'] if label else []
        attrs.append("penwidth=2" if on_tree else "style=dotted")
        if lk.get("medium") == "rf":
            attrs.append("color=blue")
        out.append(f'  "{a}" -- "{b}" [{", ".join(attrs)}];')
    linked = {(lk.get("a"), lk.get("b")) for lk in topo.get("links") or []}
    for p, c in sorted(tree, key=str):
        if (p, c) not in linked and (c, p) not in linked:
            out.append(f'  "{p}" -- "{c}" [penwidth=2];')
    out.append("}")
    return "\n".join(out)


def render_svg(topo: Mapping[str, Any]) -> str:
    """A layered drawing (CCO on top, one row per relay level) needing no Graphviz."""
    root = topo.get("root") or "CCO"
    kids = _children(topo)
    order: list[tuple[str, int]] = [(root, 0)]
    pos: dict[str, tuple[float, float]] = {}
    # Leaves get consecutive columns; a parent sits above the middle of its children.
    col = [0]

    def place(addr: str, depth: int, seen: set[str]) -> float:
        children = [n for n in kids.get(addr, []) if str(n.get("address")) not in seen]
        xs = []
        for n in children:
            a = str(n.get("address"))
            seen.add(a)
            order.append((a, depth + 1))
            xs.append(place(a, depth + 1, seen))
        x = sum(xs) / len(xs) if xs else float(col[0])
        if not xs:
            col[0] += 1
        pos[addr] = (x, depth)
        return x

    place(root, 0, {root})
    w, h, bw, bh = 130, 80, 116, 34
    width = max(1, col[0]) * w + 20
    height = (max((d for _, d in pos.values()), default=0) + 1) * h + 20
    state = {str(n.get("address")): n.get("state") for n in topo.get("nodes") or []}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
             'font-family="monospace" font-size="11">']

    def centre(a: str) -> tuple[float, float]:
        x, d = pos[a]
        return 10 + x * w + w / 2, 10 + d * h + bh / 2

    for lk in topo.get("links") or []:
        a, b = str(lk.get("a")), str(lk.get("b"))
        if a in pos and b in pos:
            (x1, y1), (x2, y2) = centre(a), centre(b)
            parts.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" '
                         'stroke="#bbb" stroke-dasharray="3,3"/>')
    for parent, nodes in kids.items():
        for n in nodes:
            a = str(n.get("address"))
            if parent in pos and a in pos:
                (x1, y1), (x2, y2) = centre(parent), centre(a)
                parts.append(f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" '
                             'stroke="#333" stroke-width="2"/>')
    for a, _ in order:
        if a not in pos:
            continue
        cx, cy = centre(a)
        fill = "#ffd" if a == root else ("#fdd" if state.get(a) in ("silent", "quarantined") else "#eef")
        parts.append(f'<rect x="{cx - bw / 2:.0f}" y="{cy - bh / 2:.0f}" width="{bw}" height="{bh}" '
                     f'rx="4" fill="{fill}" stroke="#333"/>')
        parts.append(f'<text x="{cx:.0f}" y="{cy + 4:.0f}" text-anchor="middle">{escape(a)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render_png(topo: Mapping[str, Any]) -> bytes:
    """The ``render_svg`` picture as PNG bytes, drawn with Pillow (raises ImportError without it)."""
    import io
    import re

    from PIL import Image, ImageDraw

    svg = render_svg(topo)
    size = re.search(r'width="(\d+)" height="(\d+)"', svg)
    width, height = (int(size.group(1)), int(size.group(2))) if size else (200, 100)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    num = r'"([-\d.]+)"'
    for m in re.finditer(r'<line x1=' + num + ' y1=' + num + ' x2=' + num + ' y2=' + num
                         + r' stroke="(#\w+)"(?: stroke-width="(\d+)")?', svg):
        x1, y1, x2, y2 = (float(v) for v in m.groups()[:4])
        draw.line((x1, y1, x2, y2), fill=m.group(5), width=int(m.group(6) or 1))
    for m in re.finditer(r'<rect x=' + num + ' y=' + num + ' width=' + num + ' height=' + num
                         + r' rx="\d+" fill="(#\w+)"', svg):
        x, y, w, h = (float(v) for v in m.groups()[:4])
        draw.rectangle((x, y, x + w, y + h), fill=m.group(5), outline="#333333")
    for m in re.finditer(r'<text x=' + num + ' y=' + num + r' text-anchor="middle">([^<]*)</text>',
                         svg):
        x, y, text = float(m.group(1)), float(m.group(2)), m.group(3)
        draw.text((x, y - 4), text, fill="black", anchor="mm")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def render_read(r: Mapping[str, Any]) -> str:
    rows = [(v.get("item"), v.get("value"), v.get("unit") or "", v.get("error") or "")
            for v in r.get("values") or []]
    head = (f"meter {r.get('address')} via {_route(r.get('relays'))}  "
            f"({r.get('attempts', '-')} attempt(s), {r.get('latency_ms', '-')} ms)")
    return head + "\n" + _table(rows, ("ITEM", "VALUE", "UNIT", "ERROR"))


def render_schedule(r: Mapping[str, Any]) -> str:
    rows = []
    for t in r.get("tasks") or []:
        res = t.get("last_result") or {}
        rows.append((t.get("name"), t.get("kind"), "yes" if t.get("enabled", True) else "no",
                     t.get("last_run"), f"{res.get('done')}/{res.get('due')}" if res else None,
                     t.get("next_run")))
    return _table(rows, ("TASK", "KIND", "ON", "LAST RUN", "DONE", "NEXT RUN"))


def render_uplink(r: Mapping[str, Any]) -> str:
    ob = r.get("outbox") or {}
    lines = [
        f"master     {r.get('master', '-')} ({r.get('role', '-')}{', TLS' if r.get('tls') else ''})"
        f"  {r.get('state', '-')}",
        f"connected  {r.get('connected_since') or '-'}   last heartbeat {r.get('last_heartbeat') or '-'}"
        f"   failures {r.get('failures', 0)}",
        f"outbox     {ob.get('pending', 0)} pending, oldest {ob.get('oldest') or '-'}",
    ]
    mq = r.get("mqtt")
    if mq:
        lines.append(f"mqtt       {mq.get('broker', '-')}  {mq.get('state', '-')}")
    return "\n".join(lines)


def render_db_stats(r: Mapping[str, Any]) -> str:
    lines = [f"database   {r.get('path', '-')}",
             f"size       {_size(r.get('size_bytes'))} of {_size(r.get('size_cap'))}",
             f"readings   {r.get('oldest_reading') or '-'} .. {r.get('newest_reading') or '-'}",
             f"backup     {r.get('last_backup') or 'never'}"]
    tables = r.get("tables") or {}
    if tables:
        lines.append(_table(sorted(tables.items()), ("TABLE", "ROWS")))
    return "\n".join(lines)


def render_event(e: Mapping[str, Any]) -> str:
    addr = e.get("address")
    return f"{e.get('at', '-')}  {e.get('kind', '-'):<18} {addr or '-':<12}  {e.get('text', '')}"


def render_archive(r: Mapping[str, Any]) -> str:
    meters = r.get("meters") or []
    rows = [(m.get("address"), m.get("protocol"), m.get("point"), m.get("source"), m.get("name") or "")
            for m in meters]
    return _table(rows, ("ADDRESS", "PROTOCOL", "POINT", "SOURCE", "NAME")) + f"\n{len(meters)} meters"


def render_audit(r: Mapping[str, Any]) -> str:
    rows = []
    for e in r.get("entries") or []:
        who = e.get("who") or {}
        args = json.dumps(e.get("args") or {}, ensure_ascii=False, separators=(",", ":"))
        rows.append((e.get("ts"), f"{who.get('user', who.get('uid', '?'))}[{who.get('pid', '?')}]",
                     e.get("what"), e.get("outcome"), args))
    return _table(rows, ("WHEN", "WHO", "WHAT", "OUTCOME", "ARGS"))


# --- commands -------------------------------------------------------------------------------


@click.command()
@json_option
def status(as_json: bool) -> None:
    """Daemon summary: module, nodes, today's reading rate, uplink, store, watchdog."""
    _run("status", None, as_json, render_status)


@click.command()
@click.option("--level", type=click.IntRange(0, 15), help="Only nodes at this relay level.")
@click.option("--state", type=click.Choice(["online", "silent", "quarantined", "unknown"]))
@json_option
def nodes(level: int | None, state: str | None, as_json: bool) -> None:
    """All nodes with level, phase, state and primary route."""
    args = {k: v for k, v in (("level", level), ("state", state)) if v is not None}
    _run("nodes", args, as_json, render_nodes)


def _address(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value is None:
        return value
    if len(value) != 12 or not value.isdigit():
        raise click.BadParameter(f"{value!r} is not a 12-digit meter address")
    return value


@click.command()
@click.argument("address", callback=_address)
@json_option
def node(address: str, as_json: bool) -> None:
    """One node: routes, links, recent exchanges, last reading."""
    _run("node", {"address": address}, as_json, render_node)


@click.command()
@click.option("--format", "fmt", type=click.Choice(["tree", "dot", "svg", "png"]), default="tree",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True),
              help="Write to FILE instead of standard output (required for png).")
@json_option
def topology(fmt: str, output: str | None, as_json: bool) -> None:
    """The district's relay tree as text, Graphviz DOT, SVG or PNG."""
    if fmt == "png" and not output:
        raise click.UsageError("--format png needs -o FILE")
    topo = _call("topology")
    if as_json:
        _emit(topo, True, str)
        return
    topo = topo if isinstance(topo, dict) else {}
    data: bytes
    if fmt == "tree":
        data = (render_tree(topo) + "\n").encode()
    elif fmt == "dot":
        data = (render_dot(topo) + "\n").encode()
    elif fmt == "svg":
        data = (render_svg(topo) + "\n").encode()
    else:
        dot = shutil.which("dot")
        if dot is None:
            # No Graphviz on the laptop: draw the same layered picture as the SVG with Pillow.
            try:
                data = render_png(topo)
            except ImportError:
                _fail("PNG needs Graphviz 'dot' or Pillow; use --format svg or --format dot",
                      EXIT_FAILED)
        else:
            proc = subprocess.run([dot, "-Tpng"], input=render_dot(topo).encode(),
                                  capture_output=True, check=False, timeout=60)
            if proc.returncode != 0:
                _fail(f"dot failed: {proc.stderr.decode(errors='replace').strip()}", EXIT_FAILED)
            data = proc.stdout
    if output:
        try:
            Path(output).write_bytes(data)
        except OSError as exc:
            _fail(f"cannot write {output}: {exc.strerror or exc}", EXIT_FAILED)
        click.echo(f"wrote {output} ({len(topo.get('nodes') or [])} nodes)", err=True)
    else:
        click.echo(data.decode(), nl=False)


@click.command("read")
@click.argument("address", callback=_address)
@click.option("--item", "items", multiple=True, default=("energy",), show_default=True,
              help="energy, energy-reverse, voltage, current, power, clock, status, relay, "
                   "or a DL/T 645 identifier (8 hex digits). Repeatable.")
@json_option
def read_cmd(address: str, items: tuple[str, ...], as_json: bool) -> None:
    """Read a meter now, through the mesh."""
    _run("read", {"address": address, "items": list(items)}, as_json, render_read)


def _render_progress(item: Mapping[str, Any]) -> str:
    if item.get("type") == "node":
        return (f"  found {item.get('address')} at level {item.get('level')} via "
                f"{item.get('via') or 'CCO'}{'' if item.get('known', True) else '  (not in archive)'}")
    return (f"level {item.get('level')}: {item.get('found')} found"
            + (f" of {item.get('total')}" if item.get("total") else "")
            + f"  [{_duration(item.get('elapsed_s'))}]")


@click.command()
@click.option("--from", "proxy", callback=lambda c, p, v: v and _address(c, p, v),
              help="Search from this node (a local search) instead of the whole district.")
@json_option
def discover(proxy: str | None, as_json: bool) -> None:
    """Search the network for nodes and show progress (changes state; audited)."""
    args = {"from": proxy} if proxy else {}
    _stream("discover", args, as_json, _render_progress,
            lambda r: f"done: {r.get('found')} nodes ({r.get('new')} new) on {r.get('levels')} "
                      f"levels in {_duration(r.get('duration_s'))}")


@click.command()
@json_option
def schedule(as_json: bool) -> None:
    """Reading tasks with their last and next runs."""
    _run("schedule", None, as_json, render_schedule)


@click.group()
def uplink() -> None:
    """Master-station link."""


@uplink.command("status")
@json_option
def uplink_status(as_json: bool) -> None:
    """Connection to the master station and the upload backlog."""
    _run("uplink.status", None, as_json, render_uplink)


@click.group()
def db() -> None:
    """The store."""


@db.command("stats")
@json_option
def db_stats(as_json: bool) -> None:
    """Database size, table sizes, reading span, last backup."""
    _run("db.stats", None, as_json, render_db_stats)


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--since", help="Only events at or after this time (ISO, e.g. 2024-05-01T00:00).")
@click.option("--limit", type=click.IntRange(min=0), help="At most this many (latest) events.")
@json_option
def events(follow: bool, since: str | None, limit: int | None, as_json: bool) -> None:
    """Events (unknown meters, deleted nodes, line loss, power-down, ...)."""
    args: dict[str, Any] = {k: v for k, v in (("since", since), ("limit", limit)) if v is not None}
    if follow:
        _stream("events", {**args, "follow": True}, as_json, render_event)
    else:
        _run("events", args, as_json,
             lambda r: "\n".join(render_event(e) for e in r.get("events") or []))


@click.group()
def archive() -> None:
    """The meter archive (list, add, remove, import)."""


@archive.command("list")
@json_option
def archive_list(as_json: bool) -> None:
    """Meters in the archive."""
    _run("archive.list", None, as_json, render_archive)


@archive.command("add")
@click.argument("address", callback=_address)
@click.option("--protocol", type=click.Choice(config_mod.METER_PROTOCOLS), default="dlt645-2007",
              show_default=True)
@click.option("--point", type=click.IntRange(1, 2040), help="1376.1 measuring point number.")
@click.option("--name", default="", help="Where the meter is (free text).")
@json_option
def archive_add(address: str, protocol: str, point: int | None, name: str, as_json: bool) -> None:
    """Add one meter (changes state; audited)."""
    args = {"address": address, "protocol": protocol, "point": point, "name": name}
    _run("archive.add", args, as_json,
         lambda r: f"added {(r.get('added') or {}).get('address', address)}")


@archive.command("remove")
@click.argument("address", callback=_address)
@json_option
def archive_remove(address: str, as_json: bool) -> None:
    """Remove one meter (changes state; audited)."""
    _run("archive.remove", {"address": address}, as_json,
         lambda r: f"removed {r.get('removed', address)}")


def _load_archive_file(path: str) -> list[dict[str, Any]]:
    """CSV (header address,protocol,point,name) or a YAML/JSON list of meters, checked."""
    text = Path(path).read_text(encoding="utf-8")
    data: Any
    if path.lower().endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
        data = []
        for row in rows:
            item: dict[str, Any] = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            if not item.get("point"):
                item.pop("point", None)
            elif item["point"].isdigit():
                item["point"] = int(item["point"])
            if not item.get("protocol"):
                item.pop("protocol", None)
            data.append(item)
    else:
        data = yaml.safe_load(text)
        if isinstance(data, dict) and "archive" in data:
            data = data["archive"]  # a config file's archive section works too
    meters = config_mod.parse_archive(data, path)
    return [{"address": m.address, "protocol": m.protocol, "point": m.point, "name": m.name}
            for m in meters]


@archive.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_option
def archive_import(file: str, as_json: bool) -> None:
    """Import meters from a CSV or YAML file (changes state; audited)."""
    try:
        meters = _load_archive_file(file)
    except config_mod.ConfigError as exc:
        for line in exc.lines():
            click.echo(line, err=True)
        sys.exit(EXIT_FAILED)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, csv.Error) as exc:
        _fail(f"cannot read {file}: {exc}", EXIT_FAILED)
    _run("archive.import", {"meters": meters}, as_json,
         lambda r: f"{r.get('added', 0)} added, {r.get('updated', 0)} updated, "
                   f"{r.get('unchanged', 0)} unchanged")


@click.command("audit")
@click.option("--since", help="Only entries at or after this time (ISO).")
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True)
@json_option
def audit_cmd(since: str | None, limit: int, as_json: bool) -> None:
    """Who changed what through the control socket."""
    args: dict[str, Any] = {"limit": limit}
    if since:
        args["since"] = since
    _run("audit", args, as_json, render_audit)


@click.group("config")
def config_group() -> None:
    """Configuration file tools."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@json_option
def config_check(file: str, as_json: bool) -> None:
    """Check a configuration file: prints OK or every problem; exit 0 / 1."""
    try:
        cfg = config_mod.load(file)
    except config_mod.ConfigError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "errors": [
                {"key": i.key, "message": i.message} for i in exc.issues]}, indent=2))
        else:
            for line in exc.lines():
                click.echo(line, err=True)
        sys.exit(EXIT_FAILED)
    if as_json:
        click.echo(json.dumps({"ok": True, "errors": []}))
    else:
        click.echo(f"{file}: OK (terminal {cfg.terminal.district}/{cfg.terminal.address}, "
                   f"{cfg.module.channel} on {cfg.module.port}, {len(cfg.archive)} archive meters)")


COMMANDS = (status, nodes, node, topology, read_cmd, discover, schedule, uplink, db, events,
            archive, audit_cmd, config_group)


def attach(group: click.Group) -> None:
    """Add every control command to the ``concentrator`` group."""
    for cmd in COMMANDS:
        group.add_command(cmd)
