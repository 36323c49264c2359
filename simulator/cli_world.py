"""`concentrator-sim` commands for the simulated world: generate, import, truth, draw.

    concentrator-sim generate --meters 300 --layout street --seed 1 [--channel npl] -o district.yaml
    concentrator-sim import /work/shared/data/lv-feeders/ieee-european-lv -o ieee.yaml
    concentrator-sim truth district.yaml --at 20:00 --json [-o truth.json]
    concentrator-sim draw district.yaml -o district.svg|.png [--at 20:00] [--all-links]

Errors in a scenario file are reported with the key that is wrong and exit code 1.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from simulator.generate import LAYOUTS, MAX_METERS, MIN_METERS, generate
from simulator.scenario import CHANNELS, ScenarioError, dump, load

log = logging.getLogger(__name__)


def _load(path: str):  # noqa: ANN202
    try:
        return load(path)
    except ScenarioError as exc:
        raise click.ClickException(f"{path}: {exc}") from exc


@click.command("generate")
@click.option("--meters", type=click.IntRange(MIN_METERS, MAX_METERS), required=True, help="Number of meters.")
@click.option("--layout", type=click.Choice(LAYOUTS), default="street", show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--channel", type=click.Choice(CHANNELS), default="npl", show_default=True)
@click.option("--no-events", is_flag=True, help="Leave out the timed events.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
def generate_cmd(meters: int, layout: str, seed: int, channel: str, no_events: bool, output: str) -> None:
    """Generate a synthetic district scenario file."""
    t0 = time.perf_counter()
    sc = generate(meters, layout, seed, channel=channel, events=not no_events)
    dump(sc, output)
    click.echo(f"{output}: {len(sc.meters)} meters, {len(sc.collectors)} collectors, "
               f"{len(sc.junctions)} junctions, channel {sc.channel} ({time.perf_counter() - t0:.2f} s)")


@click.command("import")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--channel", type=click.Choice(CHANNELS), default="npl", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True)
def import_cmd(folder: str, seed: int, channel: str, output: str) -> None:
    """Import a real LV feeder (buses/cables/customers/transformer CSVs)."""
    from simulator.importer import import_feeder

    try:
        sc = import_feeder(folder, seed=seed, channel=channel)
    except ScenarioError as exc:
        raise click.ClickException(f"{folder}: {exc}") from exc
    dump(sc, output)
    click.echo(f"{output}: {len(sc.meters)} meters, {len(sc.junctions)} buses, {len(sc.segments)} cables")


@click.command("truth")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("--at", "at", default="12:00", show_default=True,
              help="Seconds after start, HH:MM on the first day, or an ISO datetime.")
@click.option("--json", "as_json", is_flag=True, help="Print the full truth as JSON.")
@click.option("--no-registers", is_flag=True, help="Links and nodes only.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the JSON here.")
def truth_cmd(scenario: str, at: str, as_json: bool, no_registers: bool, output: str | None) -> None:
    """True links, hop counts and registers of a scenario at a moment."""
    from simulator.truth import truth

    sc = _load(scenario)
    try:
        tr = truth(sc, at, registers=not no_registers)
    except ValueError as exc:
        raise click.ClickException(f"--at {at!r}: {exc}") from exc
    text = json.dumps(tr, indent=1 if output else None)
    if output:
        Path(output).write_text(text, encoding="utf-8")
    if as_json and not output:
        sys.stdout.write(text + "\n")
    elif not as_json:
        hops = [n["hops"] for n in tr["nodes"] if n["kind"] != "concentrator"]
        reach = [h for h in hops if h is not None]
        click.echo(f"{sc.name} at {tr['at']}: {len(tr['links'])} usable links, "
                   f"{len(reach)}/{len(hops)} nodes reachable, max hops {max(reach, default=0)}")


@click.command("draw")
@click.argument("scenario", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help=".svg or .png")
@click.option("--at", "at", default="12:00", show_default=True)
@click.option("--all-links", is_flag=True, help="Draw every usable link, not the hop tree.")
def draw_cmd(scenario: str, output: str, at: str, all_links: bool) -> None:
    """Draw the district with its true links (SVG or PNG)."""
    from simulator.draw import draw

    if Path(output).suffix.lower() not in (".svg", ".png"):
        raise click.ClickException("output must end in .svg or .png")
    sc = _load(scenario)
    draw(sc, output, at=at, all_links=all_links)
    click.echo(output)


COMMANDS = (generate_cmd, import_cmd, truth_cmd, draw_cmd)
