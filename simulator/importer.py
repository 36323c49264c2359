"""Import a real LV feeder (four CSV files) as a scenario: ``import_feeder(folder) -> Scenario``.

The folder holds the files described in ``/work/shared/data/lv-feeders/README.md``:
``buses.csv`` (bus, x_m, y_m), ``cables.csv`` (from_bus, to_bus, length_m, cable_type),
``customers.csv`` (customer, bus, phase) and ``transformer.csv`` (lv_bus, rating_kva).
Each bus becomes a junction, each cable a segment, each customer a single-phase residential
meter (DL/T 645-2007, 4 tariffs) at its bus, and the concentrator sits at the transformer.
Meter addresses are the customer's row number (``000000000001`` ...); daily energy is drawn
from the seed. Unknown cable types are added from their name (``4c_`` = underground
four-core, ``2c_`` = service) with a resistance guessed from it, and logged.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import re
from datetime import datetime
from pathlib import Path

from simulator.scenario import (
    BUILTIN_CABLES,
    CableType,
    Concentrator,
    Junction,
    Meter,
    Scenario,
    ScenarioError,
    Segment,
    SummaryMeter,
    Transformer,
)

__all__ = ["import_feeder"]

log = logging.getLogger(__name__)

CCO_ADDRESS = "990000000001"
SUMMARY_ADDRESS = "990000000002"


def _rows(folder: Path, name: str, columns: tuple[str, ...]) -> list[dict[str, str]]:
    path = folder / name
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ScenarioError(name, f"cannot read {path}: {exc}") from exc
    if rows and not set(columns) <= set(rows[0]):
        raise ScenarioError(name, f"needs columns {', '.join(columns)}, has {', '.join(rows[0])}")
    return rows


def _guess_cable(name: str) -> CableType:
    kind = "service" if name.startswith("2c") else "overhead" if "SAC" in name else "underground"
    m = re.search(r"(\d+)", name.split("_", 1)[-1])
    area = float(m.group(1)) if m else 35.0
    # Aluminium: ~28 ohm mm^2/km at 20 °C.
    return CableType(name, round(28.0 / max(area, 1.0), 3), kind)


def import_feeder(folder: str | Path, seed: int = 1, channel: str = "npl",
                  start: datetime = datetime(2024, 3, 1)) -> Scenario:
    """Scenario from a folder of buses/cables/customers/transformer CSVs."""
    folder = Path(folder)
    buses = _rows(folder, "buses.csv", ("bus", "x_m", "y_m"))
    cables = _rows(folder, "cables.csv", ("from_bus", "to_bus", "length_m", "cable_type"))
    customers = _rows(folder, "customers.csv", ("customer", "bus", "phase"))
    trafo = _rows(folder, "transformer.csv", ("lv_bus", "rating_kva"))
    if not trafo:
        raise ScenarioError("transformer.csv", "has no transformer row")
    rng = random.Random(f"import:{folder.name}:{seed}")
    junctions = []
    for i, r in enumerate(buses):
        try:
            junctions.append(Junction(str(r["bus"]), float(r["x_m"]), float(r["y_m"])))
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"buses.csv[{i}]", f"bad row {r}: {exc}") from exc
    extra: dict[str, CableType] = {}
    segments = []
    for i, r in enumerate(cables):
        name = r["cable_type"]
        if name not in BUILTIN_CABLES and name not in extra:
            extra[name] = _guess_cable(name)
            log.warning("cable type %s unknown: assumed %s", name, extra[name])
        try:
            length = max(0.01, float(r["length_m"]))
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"cables.csv[{i}].length_m", f"bad value {r['length_m']!r}") from exc
        segments.append(Segment(str(r["from_bus"]), str(r["to_bus"]), length, name))
    meters = []
    for i, r in enumerate(customers):
        phase = str(r["phase"]).strip().upper()
        if phase not in ("A", "B", "C", "ABC"):
            raise ScenarioError(f"customers.csv[{i}].phase", f"must be A, B or C, got {r['phase']!r}")
        meters.append(Meter(f"{i + 1:012d}", str(r["bus"]), phase, "dlt645-2007", "residential",
                            round(rng.lognormvariate(math.log(8.0), 0.45), 2), 4))
    total_kw = sum(m.daily_kwh for m in meters) / 24
    sc = Scenario(
        name=folder.name,
        seed=seed,
        start=start,
        channel=channel,
        transformer=Transformer(str(trafo[0]["lv_bus"]), float(trafo[0]["rating_kva"])),
        concentrator=Concentrator(CCO_ADDRESS, str(trafo[0]["lv_bus"])),
        junctions=tuple(junctions),
        segments=tuple(segments),
        meters=tuple(meters),
        summary_meter=SummaryMeter(SUMMARY_ADDRESS, round(total_kw * 0.01, 2)),
        cable_types=tuple(extra.values()),
        description=f"imported from {folder}",
    )
    # Round-trip through the validator so an imported feeder obeys the same rules as a file.
    from simulator.scenario import from_dict, to_dict

    return from_dict(to_dict(sc))
