"""Field trial: the real concentrator objects against the in-process simulated district.

``run_trial(scenario, days=N)`` runs, in virtual time, exactly what the daemon runs —
``ModuleDriver`` on the module's serial link, ``mesh.Mesh`` for discovery and routing,
``concentrator.reader.Reader`` with its tasks, ``SummaryMeter`` on the RS-485 link and the SQLite
``Store`` — against ``simulator.district.SimDistrict``, starting from an empty archive:

1. formation, from the scenario's start: the mesh discovers the district from nothing; the
   nodes it found become the reading archive (``source = "discovered"``);
2. N days of schedule (daily frozen from 00:05 by default, plus the other tasks asked for),
   starting with the first day whose daily window is still open when formation ends.

The result (printed as a summary by the ``trial`` command and written as JSON) holds the
formation time and the nodes found against the truth; per meter its route, first-attempt and
final outcome, attempts and latency in the last daily frozen round; per round the success
rates, duration and the *airtime lower bound*: the sum over the meters read of one request's
and one reply's airtime along the shortest usable path in the truth (no contention, no
processing, no meter time, every meter needing one exchange) — the time no reader could beat on
a serial channel; and the line loss of every complete day against the simulator's truth.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import resource
import tempfile
import time
from datetime import datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import click

from concentrator import dlt645
from concentrator.archive import primary_relays, register_found
from concentrator.config import ClockConfig, MeshConfig
from concentrator.keystore import MemoryKeyStore, MeterPassword
from concentrator.meter_clock import MeterClock
from concentrator.reader import Reader, RoundReport
from concentrator.store import Store
from concentrator.summary_meter import SummaryMeter
from concentrator.tasks import Task, TaskKind
from mesh.engine import Mesh
from mesh.topology import Topology
from plc_driver.driver import ModuleDriver
from simulator.channel import _BITS_PER_UART_BYTE
from simulator.cpu_split import READING_TASKS, CpuSplit
from simulator.district import SimDistrict
from simulator.meters import DEFAULT_PASSWORD
from simulator.module import COMM_MODE
from simulator.scenario import CHANNELS, Scenario
from simulator.vtime import VirtualTimeLoop

__all__ = ["run_trial", "trial_cmd", "airtime_lower_bound", "exchange_lower_bound", "TRIAL_TASKS"]

log = logging.getLogger(__name__)

# Tasks the trial can run (``--tasks``); the daily frozen round is what the figures are about.
TRIAL_TASKS: dict[str, Task] = {
    "daily_frozen": Task("daily_frozen", TaskKind.DAILY_FROZEN, dtime(0, 5), dtime(6, 0),
                         retry_pause_s=300.0),
    "curve": Task("curve", TaskKind.CURVE, dtime(0, 5), dtime(0, 50), period_min=60,
                  density_min=60, retry_pause_s=120.0),
    "power_down": Task("power_down", TaskKind.POWER_DOWN, dtime(8, 0), dtime(10, 0)),
    "clock": Task("clock", TaskKind.CLOCK, dtime(8, 0), dtime(10, 0)),
    "relay": Task("relay", TaskKind.RELAY, dtime(10, 0), dtime(12, 0)),
}

MAINTAIN_PERIOD_S = 3600.0  # mesh upkeep period while reading (the daemon's route period)

# Sizes of the daily frozen exchange the lower bound counts: a read request and a reply with
# the forward block of 4 tariffs (05 06 01 01).
_REQ_BYTES = len(dlt645.encode(dlt645.read_request("000000000001", 0x05060101)))
_REPLY_BYTES = len(dlt645.encode(dlt645.read_reply("000000000001", 0x05060101, bytes(20))))
_FIRST_BYTE_MIN_S = 0.05  # the simulated meters' fastest first byte (simulator/channel.py)
_COLLECTOR_POLL_MIN_S = 0.2  # a collector's shortest RS-485 poll (same)


def airtime_lower_bound(district: SimDistrict, meters: list[str], t: float,
                        routes: dict[str, tuple[str, ...]] | None = None) -> float:
    """Seconds of airtime for one request and one reply per meter along the truth's shortest
    usable path at scenario time ``t`` (meters with no usable path are left out)."""
    routes = district.routes(t) if routes is None else routes
    ch = district.channel
    per_hop = ch.airtime(_REQ_BYTES) + ch.airtime(_REPLY_BYTES)
    return sum((len(routes[m]) + 1) * per_hop for m in meters if m in routes)


def exchange_lower_bound(district: SimDistrict, meters: list[str], t: float, concurrent: int,
                         routes: dict[str, tuple[str, ...]] | None = None) -> float:
    """Seconds no reader can beat with ``concurrent`` reads in flight: the airtime bound, or
    each meter's shortest possible exchange (its airtime, the request and reply on the meter's
    UART, the fastest first byte a meter gives, a collector's shortest RS-485 poll), summed and
    shared among the concurrent reads, whichever is longer. The airtime bound alone leaves the
    meters out: on HPLC they take ~0.4 s of a ~0.45 s exchange."""
    routes = district.routes(t) if routes is None else routes
    ch = district.channel
    sc = district.scenario
    per_hop = ch.airtime(_REQ_BYTES) + ch.airtime(_REPLY_BYTES)
    total = 0.0
    for m in meters:
        if m not in routes:
            continue
        meter = sc.meter(m)
        baud = 1200 if meter.protocol == "dlt645-1997" else 2400
        uart = (_REQ_BYTES + _REPLY_BYTES) * _BITS_PER_UART_BYTE / baud
        total += (len(routes[m]) + 1) * per_hop + uart + _FIRST_BYTE_MIN_S \
            + (_COLLECTOR_POLL_MIN_S if meter.collector else 0.0)
    return max(airtime_lower_bound(district, meters, t, routes), total / max(1, concurrent))


def _reachable(district: SimDistrict, meters: list[str], t: float,
               routes: dict[str, tuple[str, ...]]) -> set[str]:
    """Meters installed at ``t`` with a usable path in the truth."""
    md = district.meterdata
    return {m for m in meters if m in routes and md.present(m, t)}


def _make_mesh(driver: ModuleDriver, root: str, clock: Any, store: Store) -> Mesh:
    # From an empty archive every node found is admitted (and still reported as unknown).
    return Mesh(driver, Topology(root), clock=clock, config=MeshConfig(), db=store)


def _sim_keys(scenario: Scenario) -> MemoryKeyStore:
    """The simulated meters' password (they all keep the default) for every meter, so the
    clock task writes far-off meters' clocks as the daemon does."""
    keys = MemoryKeyStore()
    pwd = MeterPassword(int(DEFAULT_PASSWORD[:2], 16), DEFAULT_PASSWORD[2:])
    for m in scenario.all_meters():
        keys.set_meter_password(m.address, pwd)
    return keys


async def _maintain(mesh: Mesh, period: float) -> None:
    """The daemon's periodic mesh upkeep (ageing, probing uncertain routes, relief, saving)."""
    while True:
        await asyncio.sleep(period)
        try:
            await mesh.maintain()
        except Exception:  # upkeep failing must not stop the trial's reading
            log.exception("trial: mesh maintenance failed")


async def _trial(scenario: Scenario, days: int, task_names: tuple[str, ...], db_path: Path,
                 max_concurrent: int | None, cpu_split: CpuSplit | None = None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    # Formation starts at the scenario's start (00:00 for generated districts); the first
    # daily frozen round starts when it is done, if that is inside the 00:05-06:00 window.
    district = SimDistrict(scenario, start=scenario.start)
    clock = district.clock
    store = Store.open(db_path, clock=clock)
    driver = ModuleDriver(district.module_link(), comm_mode=COMM_MODE[scenario.channel],
                          cco_address=scenario.concentrator.address, clock=clock)
    cpu0 = time.process_time()
    if cpu_split is not None:
        cpu_split.phase("formation")
    try:
        await driver.start()
        mesh = _make_mesh(driver, scenario.concentrator.address, clock, store)
        t0 = loop.time()
        await mesh.discover()
        formation_s = loop.time() - t0
        archive = register_found(mesh, store)
        truth = district.truth()
        reachable = {n["address"] for n in truth["nodes"] if n.get("hops") is not None
                     and n["kind"] != "concentrator" and not n.get("collector")}
        found = {n.address for n in mesh.topology.nodes()} - {scenario.concentrator.address}
        log.info("trial: formation %.0f s, %d nodes found of %d reachable", formation_s,
                 len(found & reachable), len(reachable))

        summary = None
        if scenario.summary_meter is not None:
            summary = SummaryMeter(district.summary_meter_link(), scenario.summary_meter.address)
        tasks = [TRIAL_TASKS[n] for n in task_names]
        bounds: dict[tuple[str, datetime], tuple[float, set[str], float]] = {}
        conc = max_concurrent or driver.max_concurrent

        def on_round(rep: RoundReport) -> None:
            t = (rep.end - scenario.start).total_seconds()
            routes = district.routes(t)
            meters = list(rep.results)
            bounds[(rep.task, rep.opens)] = (airtime_lower_bound(district, meters, t, routes),
                                             _reachable(district, meters, t, routes),
                                             exchange_lower_bound(district, meters, t, conc,
                                                                  routes))

        reader = Reader(mesh, store, clock, tasks, max_concurrent=conc, summary=summary,
                        route_of=lambda a: primary_relays(mesh, a),
                        broadcaster=lambda b: driver.broadcast(b, control=2), on_round=on_round,
                        meter_clock=MeterClock(ClockConfig(), _sim_keys(scenario), clock, kv=store))
        # Day 1 of the schedule is the first day whose first task's window has not closed
        # when formation ends (a slow npl formation moves it to the next day).
        now = clock.now()
        win = tasks[0].window_at(now) or tasks[0].next_window(now)
        end_day = win[0].date() + timedelta(days=days - 1)
        # Until the last round of the last day has closed.
        until = max(closes for t in tasks for _, closes in t.windows_on(end_day)) \
            + timedelta(minutes=5)
        cpu_sched = time.process_time()
        if cpu_split is not None:
            cpu_split.phase("schedule")
        runner = asyncio.create_task(reader.run())
        upkeep = asyncio.create_task(_maintain(mesh, MAINTAIN_PERIOD_S))
        await asyncio.sleep(max(0.0, (until - clock.now()).total_seconds()))
        for job in (runner, upkeep):
            job.cancel()
        await asyncio.gather(runner, upkeep, return_exceptions=True)
        cpu_end = time.process_time()
        if cpu_split is not None:
            cpu_split.phase("report")
        result = _report(scenario, district, store, reader, bounds, formation_s, found,
                         reachable, archive, conc)
        result["cpu_s"] = {"formation": round(cpu_sched - cpu0, 2),
                           "schedule": round(cpu_end - cpu_sched, 2)}
        if cpu_split is not None:
            # The concentrator's own CPU (the simulator's taken out by sampling, cpu_split.py).
            split = cpu_split.report()
            for ph, cpu in result["cpu_s"].items():
                share = split.get(ph, {}).get("concentrator_share")
                reading = cpu_split.task_share(ph, READING_TASKS)
                split.setdefault(ph, {})["concentrator_cpu_s"] = \
                    None if share is None else round(share * cpu, 2)
                # The reads themselves: the reader's tasks (their exchanges through the mesh,
                # retries and repairs included) and the module link's receive loop, which
                # also carries the mesh's probes (so this errs high).
                split[ph]["reading_cpu_s"] = None if reading is None else round(reading * cpu, 2)
            result["cpu_split"] = split
        result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        return result
    finally:
        await driver.close()
        await district.close()
        store.close()


def _report(scenario: Scenario, district: SimDistrict, store: Store, reader: Reader,
            bounds: dict[tuple[str, datetime], tuple[float, set[str], float]], formation_s: float,
            found: set[str],
            reachable: set[str], archive: list[str], conc: int) -> dict[str, Any]:
    rounds = []
    for rep in reader.reports:
        bound, reach, xbound = bounds.get((rep.task, rep.opens), (0.0, set(), 0.0))
        reach_ok = sum(1 for m in reach if rep.results[m].ok)
        # The same rates over the meters the truth could still reach at the round's end (a
        # meter replaced or removed meanwhile cannot be read by anyone; ``unread`` lists it).
        reach_applicable = [m for m in reach if rep.results[m].applicable]
        reach_first = sum(1 for m in reach_applicable if rep.results[m].first_attempt_ok)
        rounds.append({
            "task": rep.task, "opens": rep.opens.isoformat(), "meters": rep.meters,
            "first_attempt_rate": round(rep.first_attempt_rate, 5),
            "first_rate": round(rep.first_rate, 5), "final_rate": round(rep.final_rate, 5),
            "no_retry_rate": round(rep.no_retry_rate, 5),
            "duration_s": round(rep.duration_s, 1), "first_pass_s": round(rep.first_pass_s, 1),
            # Until every meter whose own clock had frozen was read (issue 5's round duration);
            # meters whose clock was behind midnight are listed with how far behind it was.
            "readable_s": round(rep.readable_s, 1), "clock_behind": dict(rep.clock_behind),
            "passes": rep.passes,
            "exchanges": rep.exchanges, "airtime_lower_bound_s": round(bound, 2),
            "duration_over_bound": round(rep.duration_s / bound, 2) if bound else None,
            "first_pass_over_bound": round(rep.first_pass_s / bound, 2) if bound else None,
            # ... and against what the module's concurrent reads allow with the meters' own time
            "exchange_lower_bound_s": round(xbound, 2),
            "duration_over_exchange_bound": round(rep.duration_s / xbound, 2) if xbound else None,
            "reachable_at_end": len(reach),
            "final_rate_reachable": round(reach_ok / len(reach), 5) if reach else None,
            "first_attempt_rate_reachable": (round(reach_first / len(reach_applicable), 5)
                                             if reach_applicable else None),
            "unread": dict(rep.unread), "summary_meter_read": rep.summary_ok})
    daily = [r for r in reader.reports if r.kind == TaskKind.DAILY_FROZEN.value]
    meters: dict[str, Any] = {}
    if daily:
        for m, r in sorted(daily[-1].results.items()):
            meters[m] = {"route": list(r.route), "first": r.first_outcome,
                         "first_attempt_ok": r.first_attempt_ok, "first_pass_ok": r.first_ok,
                         "no_retry": r.no_retry,
                         "final": r.outcome,
                         "attempts": r.attempts, "latency_s": round(r.latency_s, 2),
                         "passes": r.passes}
    losses = []
    for rep in daily:
        ll = rep.line_loss
        if ll is None:
            continue
        t0 = (datetime.combine(ll.day, datetime.min.time()) - scenario.start).total_seconds()
        truth = district.meterdata.line_loss(t0, t0 + 86400.0)
        # The truth restricted to the meters the concentrator could count (both freezes read):
        # says whether its figure is right for what it covers.
        both = {r.meter for r in store.daily_for_date(ll.day)} & \
            {r.meter for r in store.daily_for_date(ll.day + timedelta(days=1))}
        md = district.meterdata
        billed = 0.0
        for m in both & {x.address for x in scenario.all_meters()}:
            billed += float(md.energy(m, t0 + 86400.0)[0] - md.energy(m, t0)[0])
            billed -= float(md.energy(m, t0 + 86400.0, True)[0] - md.energy(m, t0, True)[0])
        supplied = truth["supplied_kwh"]
        covered_pct = 100 * (supplied - billed) / supplied if supplied > 0 else None
        losses.append({
            "day": ll.day.isoformat(), "loss_pct": None if ll.loss_pct is None else float(ll.loss_pct),
            "truth_pct": round(100 * truth["loss_rate"], 3),
            "truth_pct_covered_meters": None if covered_pct is None else round(covered_pct, 3),
            "summary_kwh": float(ll.summary_energy), "truth_supplied_kwh": round(truth["supplied_kwh"], 2),
            "customers_kwh": float(ll.customer_energy), "truth_billed_kwh": round(truth["billed_kwh"], 2),
            "meters_covered": ll.meters_covered, "meters_total": ll.meters_total})
    return {
        "scenario": scenario.name, "channel": scenario.channel, "seed": scenario.seed,
        "max_concurrent": conc,
        "formation": {"seconds": round(formation_s, 1), "nodes_found": len(found),
                      "reachable": len(reachable), "reachable_found": len(found & reachable),
                      "meters_in_archive": len(archive)},
        "rounds": rounds, "meters": meters, "line_loss": losses,
    }


def run_trial(scenario: Scenario, *, days: int = 2, channel: str | None = None,
              tasks: tuple[str, ...] = ("daily_frozen",), db_path: Path | None = None,
              max_concurrent: int | None = None, cpu_split: bool = False) -> dict[str, Any]:
    """Run the trial in virtual time and return the JSON-ready result (see module docstring).

    ``cpu_split``: also sample which side spent the CPU (``simulator.cpu_split``) and report
    the concentrator's own CPU per phase in ``result["cpu_split"]`` (main thread only).
    """
    if days < 1:
        raise ValueError("days must be at least 1")
    unknown = [t for t in tasks if t not in TRIAL_TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {', '.join(TRIAL_TASKS)}")
    if channel is not None:
        scenario = dataclasses.replace(scenario, channel=channel)
    with tempfile.TemporaryDirectory() as tmp:
        path = db_path or Path(tmp) / "trial.db"
        with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
            sampler = CpuSplit() if cpu_split else None
            if sampler is not None:
                sampler.start()
            try:
                return runner.run(_trial(scenario, days, tuple(tasks), path, max_concurrent,
                                         sampler))
            finally:
                if sampler is not None:
                    sampler.stop()


def _print_summary(res: dict[str, Any]) -> None:
    f = res["formation"]
    click.echo(f"scenario {res['scenario']} ({res['channel']}, {res['max_concurrent']} concurrent)")
    click.echo(f"formation: {f['seconds']:.0f} s, {f['reachable_found']}/{f['reachable']} reachable "
               f"nodes found, {f['meters_in_archive']} meters in the archive")
    for r in res["rounds"]:
        ratio = (f", first pass {r['first_pass_over_bound']}x the airtime bound"
                 if r["first_pass_over_bound"] else "")
        click.echo(f"{r['task']} {r['opens']}: {r['meters']} meters, first attempt "
                   f"{100 * r['first_attempt_rate']:.2f}%, first pass {100 * r['first_rate']:.2f}%, "
                   f"final {100 * r['final_rate']:.2f}%, {r['readable_s']:.0f} s for the meters "
                   f"whose clock had frozen (first pass {r['first_pass_s']:.0f} s){ratio}, "
                   f"{r['duration_s']:.0f} s with the {len(r['clock_behind'])} whose clock was "
                   f"behind, {len(r['unread'])} unread")
    for ll in res["line_loss"]:
        click.echo(f"line loss {ll['day']}: {ll['loss_pct']}% over {ll['meters_covered']}/"
                   f"{ll['meters_total']} meters (truth {ll['truth_pct_covered_meters']}% over the "
                   f"same meters, {ll['truth_pct']}% over all)")


@click.command("trial")
@click.argument("scenario_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--days", type=click.IntRange(1, 62), default=2, show_default=True,
              help="Days of schedule after formation.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Write the full result as JSON here.")
@click.option("--channel", type=click.Choice(CHANNELS), default=None,
              help="Override the scenario's local channel.")
@click.option("--tasks", default="daily_frozen", show_default=True,
              help=f"Comma-separated tasks: {', '.join(TRIAL_TASKS)}.")
def trial_cmd(scenario_file: str, days: int, json_out: str | None, channel: str | None,
              tasks: str) -> None:
    """Run the concentrator against SCENARIO_FILE in virtual time: formation, then DAYS of reading."""
    from simulator.scenario import ScenarioError, load

    try:
        scenario = load(scenario_file)
    except (ScenarioError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        res = run_trial(scenario, days=days, channel=channel,
                        tasks=tuple(t.strip() for t in tasks.split(",") if t.strip()))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_summary(res)
    if json_out:
        Path(json_out).write_text(json.dumps(res, indent=1, sort_keys=True), encoding="utf-8")
        click.echo(f"written {json_out}")
