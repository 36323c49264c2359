"""`concentrator frame decode`: paste a hex dump from a log, get every field with its meaning.

Recognises DL/T 645 (2007/1997), Q/GDW 1376.2 and Q/GDW 1376.1 frames, and decodes frames
nested inside them (a DL/T 645 frame inside 1376.2 AFN13 F1 or 1376.1 AFN10 F1, ...).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any

import click

from concentrator import dlt645
from concentrator.codec import CodecError
from plc_driver import gdw13762
from uplink import gdw13761

PROTOCOLS = (
    ("Q/GDW 1376.1", gdw13761),
    ("DL/T 645", dlt645),
    ("Q/GDW 1376.2", gdw13762),
)


def parse_hex(text: str) -> bytes:
    """Hex dump in any usual form (spaces, 0x prefixes, commas, dashes) -> bytes."""
    cleaned = re.sub(r"0[xX]", "", text)
    cleaned = re.sub(r"[^0-9A-Fa-f]", "", cleaned)
    if len(cleaned) % 2:
        raise click.UsageError("odd number of hex digits")
    return bytes.fromhex(cleaned)


def detect(raw: bytes) -> tuple[str, Any, Any]:
    """Return (protocol name, codec module, frame) for the first protocol that decodes ``raw``."""
    errors = []
    for name, codec in PROTOCOLS:
        try:
            return name, codec, codec.decode(raw)
        except CodecError as exc:
            errors.append(f"{name}: {exc}")
    raise CodecError("not a frame of any known protocol (" + "; ".join(errors) + ")")


def _embedded_bytes(obj: Any, depth: int = 0):
    """Every bytes value inside a decoded data unit (dataclasses, tuples, lists, dicts)."""
    if depth > 6:
        return
    if isinstance(obj, bytes | bytearray):
        if len(obj) >= 12:
            yield bytes(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _embedded_bytes(getattr(obj, f.name), depth + 1)
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _embedded_bytes(item, depth + 1)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _embedded_bytes(item, depth + 1)


def _data_units(codec: Any, frame: Any) -> list[Any]:
    try:
        if codec is gdw13762:
            return [gdw13762.decode_data_unit(frame)]
        if codec is gdw13761:
            return list(gdw13761.decode_units(frame))
    except CodecError:
        return []
    return []


def analyse(raw: bytes, depth: int = 0) -> dict[str, Any]:
    """Decode ``raw`` and everything nested in it; returns a JSON-ready tree."""
    name, codec, frame = detect(raw)
    node: dict[str, Any] = {
        "protocol": name,
        "hex": raw.hex(" ").upper(),
        "fields": [[k, v] for k, v in codec.describe(frame)],
        "frame": codec.to_dict(frame),
        "nested": [],
    }
    if depth < 3:
        seen = set()
        for unit in _data_units(codec, frame):
            for blob in _embedded_bytes(unit):
                if blob in seen or blob == raw:
                    continue
                seen.add(blob)
                try:
                    node["nested"].append(analyse(blob, depth + 1))
                except CodecError:
                    continue
    return node


def render(node: dict[str, Any], indent: int = 0) -> str:
    pad = "  " * indent
    lines = [f"{pad}{node['protocol']} frame: {node['hex']}"]
    width = max((len(k) for k, _ in node["fields"]), default=0)
    for key, value in node["fields"]:
        lines.append(f"{pad}  {key.ljust(width)}  {value}")
    for inner in node["nested"]:
        lines.append(f"{pad}  nested:")
        lines.append(render(inner, indent + 2))
    return "\n".join(lines)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return obj.hex().upper()
    return str(obj)


@click.group()
def frame() -> None:
    """Wire frames: decode hex dumps from logs."""


@frame.command("decode")
@click.argument("hexdump", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def decode_cmd(hexdump: tuple[str, ...], as_json: bool) -> None:
    """Decode HEXDUMP (or one frame per line on stdin) as DL/T 645, 1376.2 or 1376.1."""
    texts = [" ".join(hexdump)] if hexdump else [ln for ln in sys.stdin.read().splitlines() if ln.strip()]
    if not texts:
        raise click.UsageError("give a hex dump as arguments or on stdin")
    failed = False
    results = []
    for text in texts:
        raw = parse_hex(text)
        try:
            results.append(analyse(raw))
        except CodecError as exc:
            failed = True
            results.append({"hex": raw.hex(" ").upper(), "error": str(exc)})
    if as_json:
        click.echo(json.dumps(results if len(results) > 1 else results[0], default=_json_default, indent=2))
    else:
        for res in results:
            if "error" in res:
                click.echo(f"{res['hex']}\n  cannot decode: {res['error']}")
            else:
                click.echo(render(res))
    sys.exit(1 if failed else 0)
