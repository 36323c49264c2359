"""`make run`: the whole system on one machine, ending in a summary a person reads in 10 s.

Generates a district, serves its carrier module and summary meter on ptys
(``concentrator-sim serve``), runs a master station on loopback, and starts the real daemon
(``concentrator run``) with an empty archive, all in accelerated time sharing one epoch. It
shows progress while the network forms and the first day is read and uploaded, then prints
the summary and writes the topology picture.

    python -m simulator.demo [--meters 200] [--channel hplc] [--factor 20] [--out run-output]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from concentrator.control import ControlClient, ControlError
from concentrator.keystore import FileKeyStore
from concentrator.store import Store
from simulator.generate import generate
from simulator.master import MasterStation
from simulator.scenario import dump
from simulator.truth import truth

BIN = Path(sys.executable).parent


class _DistrictClock:
    """The district's accelerated wall time, as the daemon and the simulator compute it."""

    def __init__(self, start: datetime, epoch: float, factor: float) -> None:
        self.start, self.epoch, self.factor = start, epoch, factor

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.time() - self.epoch) * self.factor)

    def monotonic(self) -> float:
        return time.monotonic()


class _FixedClock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return time.monotonic()


def _daemon_config(out: Path, module_pty: str, summary_pty: str | None, summary_addr: str | None,
                   master_port: int, channel: str) -> str:
    group = grp.getgrgid(os.getgid()).gr_name
    summary = (f"summary_meter:\n  port: {summary_pty}\n  address: \"{summary_addr}\"\n"
               if summary_pty else "")
    return f"""# Written by simulator/demo.py for `make run`.
paths:
  etc: {out}
  state: {out}
  runtime: {out}
terminal:
  district: "4403"
  address: 1
module:
  port: {module_pty}
  channel: {channel}
{summary}mesh:
  unknown_node_policy: admit
reading:
  curve_density: 60
  daily_frozen_start: "00:05"
  daily_frozen_end: "00:40"   # a short window so the demo's round closes (field default 06:00)
store:
  path: {out}/concentrator.db
uplink:
  primary: 127.0.0.1:{master_port}
  heartbeat_period: 5min
  tls: {{enabled: false}}      # the simulated master listens on loopback without TLS
security:
  key_file: {out}/keys.json
archive: []
logging:
  level: INFO
control:
  socket: {out}/control.sock
  group: {group}
  audit_log: {out}/audit.jsonl
"""


def start_simulator(scenario: Path, log_path: Path, args: list[str]
                    ) -> tuple[subprocess.Popen[str], str | None, str | None]:
    """``concentrator-sim serve SCENARIO ARGS``; returns it and the module and summary-meter
    ptys it prints (None when it did not start)."""
    sim = subprocess.Popen([str(BIN / "concentrator-sim"), "serve", str(scenario), *args],
                           stdout=subprocess.PIPE, stderr=open(log_path, "a"),  # noqa: SIM115
                           text=True)
    module_pty = summary_pty = None
    assert sim.stdout is not None
    for _ in range(3):
        line = sim.stdout.readline()
        if line.startswith("module:"):
            module_pty = line.split()[1]
        elif line.startswith("summary meter:") and "/dev/" in line:
            summary_pty = line.split()[2]
    return sim, module_pty, summary_pty


def stop_processes(procs: list[subprocess.Popen[Any]], timeout: float) -> None:
    """SIGTERM the processes newest first (the daemon before the simulator, so the module
    port does not vanish under it), killing any that does not stop within ``timeout``."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()


def _line(text: str) -> None:
    sys.stdout.write("\r\033[K" + text if sys.stdout.isatty() else text + "\n")
    sys.stdout.flush()


async def _status(sock: Path) -> dict[str, Any] | None:
    try:
        return await asyncio.to_thread(ControlClient(sock, timeout=5).request, "status", {})
    except (ControlError, OSError):
        return None


async def run_demo(meters: int, channel: str, factor: float, out: Path, seed: int,
                   budget_s: float, on_ready: Any = None, layout: str = "street") -> int:
    """Run the demo; ``on_ready(socket_path, master)`` (tests) is awaited while all still runs."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, mode=0o750)
    scenario = generate(meters, layout, seed, channel=channel)
    scen_path = out / "district.yaml"
    scen_path.write_text(dump(scenario))
    start = scenario.start
    print(f"district: {meters} meters, {layout} layout, {channel}, seed {seed} -> {scen_path}")

    # The concentrator was installed the day before: yesterday's freezes are back-filled, so the
    # first morning already gives a day of line loss (needs two daily freezes).
    with contextlib.closing(Store.open(out / "concentrator.db",
                                       clock=_FixedClock(start))) as store:
        store.kv_set("reader.first_day.daily_frozen", (start.date() - timedelta(days=1)).isoformat())

    # The terminal key the master signs its commands with (docs/security.md), 0600 on both sides.
    keys = FileKeyStore(out / "keys.json", create=True)
    keys.set_terminal_key("4403", 1, os.urandom(16))
    keys.save()
    epoch = time.time() + 2.0
    master = MasterStation(out / "master.sqlite", trace=out / "master-trace.txt", keys=keys,
                           clock=_DistrictClock(start, epoch, factor))
    port = await master.start("127.0.0.1", 0)
    common = ["--time-factor", str(factor), "--epoch", repr(epoch), "--start", start.isoformat()]
    sim, module_pty, summary_pty = start_simulator(scen_path, out / "simulator.log", common)
    procs = [sim]
    try:
        if module_pty is None:
            print("simulator did not start; see", out / "simulator.log")
            return 1
        cfg_path = out / "concentrator.yaml"
        summary_addr = scenario.summary_meter.address if scenario.summary_meter else None
        cfg_path.write_text(_daemon_config(out, module_pty, summary_pty, summary_addr, port,
                                           channel))
        daemon = subprocess.Popen([str(BIN / "concentrator"), "-v", "run", "--config",
                                   str(cfg_path), *common],
                                  stdout=subprocess.DEVNULL, stderr=open(out / "daemon.log", "w"))
        procs.append(daemon)
        print(f"simulator: module {module_pty}, summary meter {summary_pty}; master on "
              f"127.0.0.1:{port}; daemon log {out / 'daemon.log'}; {factor:g}x real time")

        sock = out / "control.sock"
        t_wall = time.monotonic()
        status: dict[str, Any] | None = None
        done_since = None
        while time.monotonic() - t_wall < budget_s:
            await asyncio.sleep(1.0)
            if daemon.poll() is not None:
                print(f"\ndaemon exited with code {daemon.returncode}; see {out / 'daemon.log'}")
                return 1
            status = await _status(sock) or status
            if status is None:
                continue
            sim_now = start + timedelta(seconds=(time.time() - epoch) * factor)
            nodes = status["nodes"]
            reading = status.get("reading") or {}
            up = master.upload_summary()
            phase = ("forming the network" if status.get("discovering") else
                     f"last round {reading.get('task')} {100 * reading.get('rate', 0):.1f}%"
                     if reading else "reading the daily frozen data")
            _line(f"{sim_now:%H:%M:%S}  nodes {nodes['online']}/{nodes['total']} routed  "
                  f"{phase}  uplink {status['uplink']['state']}, outbox "
                  f"{status['uplink'].get('outbox')}, master holds {up['readings']} readings")
            daily = (status.get("rounds") or {}).get("daily_frozen")
            if daily and status["uplink"].get("outbox") == 0:
                done_since = done_since or time.monotonic()
                if time.monotonic() - done_since > 2:
                    break
        print()
        if status is None:
            print("the daemon never answered on its control socket; see", out / "daemon.log")
            return 1
        code = await _summary(out, sock, status, master, scenario, start)
        if on_ready is not None:
            await on_ready(sock, master)
        return code
    finally:
        stop_processes(procs, 15)
        await master.stop()
        master.close()


async def _summary(out: Path, sock: Path, status: dict[str, Any], master: MasterStation,
                   scenario: Any, start: datetime) -> int:
    client = ControlClient(sock, timeout=30)
    nodes = (await asyncio.to_thread(client.request, "nodes", {}))["nodes"]
    topo = await asyncio.to_thread(client.request, "topology", {})
    by_level = Counter(n["level"] for n in nodes if n["level"] is not None)
    t = truth(scenario, start + timedelta(hours=1), registers=False)
    reachable = sum(1 for n in t["nodes"] if n.get("hops") not in (None, 0)
                    and n["kind"] != "concentrator")
    reading = (status.get("rounds") or {}).get("daily_frozen") or {}
    up = master.upload_summary()
    svg = out / "topology.svg"
    from concentrator import cli_ctl

    svg.write_text(cli_ctl.render_svg(topo))
    print("=" * 72)
    print(f"SUMMARY  district of {len(scenario.meters)} meters ({scenario.channel}), "
          f"simulated start {start:%Y-%m-%d %H:%M}")
    print(f"  nodes found: {len(nodes)} (truth: {reachable} reachable nodes); by hop level: "
          + ", ".join(f"L{lv}: {c}" for lv, c in sorted(by_level.items())))
    if reading:
        print(f"  daily frozen read {reading.get('day')}: first-attempt "
              f"{100 * reading['first_rate']:.2f}%, final {100 * reading['final_rate']:.2f}% "
              f"of {reading['due']} meters in {reading['duration_s'] / 60:.1f} simulated minutes")
    else:
        store = Store.open(out / "concentrator.db", clock=_FixedClock(start))
        try:
            got = len(store.daily_for_date(start.date()))
        finally:
            store.close()
        print(f"  daily frozen round still open (make-up passes until 06:00): {got} of "
              f"{len(nodes)} meters read so far")
    print(f"  uploaded to the master: {up['readings']} readings in {up['items']} items, "
          f"confirmed (outbox now {status['uplink'].get('outbox')}); "
          f"duplicates {up['copies_received'] - up['items']}, protocol violations "
          f"{up['violations']}")
    day = start.date() - timedelta(days=1)
    store = Store.open(out / "concentrator.db", clock=_FixedClock(start))
    try:
        ll = store.line_loss(day)
        covered = ({r.meter for r in store.daily_for_date(day)}
                   & {r.meter for r in store.daily_for_date(start.date())})
    finally:
        store.close()
    if ll is not None and ll.loss_pct is not None:
        from simulator.meterdata import MeterData

        md = MeterData(scenario)
        t0 = (datetime.combine(day, datetime.min.time()) - start).total_seconds()
        t1 = t0 + 86400.0
        truth_all = 100 * md.line_loss(t0, t1)["loss_rate"]
        supplied = float(md.summary_energy(t1) - md.summary_energy(t0))
        billed = sum(float(md.energy(m, t1)[0] - md.energy(m, t0)[0])
                     - float(md.energy(m, t1, True)[0] - md.energy(m, t0, True)[0])
                     for m in covered if m in {x.address for x in scenario.all_meters()})
        truth_cov = 100 * (supplied - billed) / supplied if supplied else float("nan")
        print(f"  line loss {day}: {float(ll.loss_pct):.2f}% over {ll.meters_covered}/"
              f"{ll.meters_total} meters; simulator truth {truth_cov:.2f}% over the same meters "
              f"({truth_all:.2f}% over all)")
    else:
        print("  line loss: not computed yet (needs the summary meter and two daily freezes)")
    print(f"  topology picture: {svg}")
    print(f"  logs: {out / 'daemon.log'}, {out / 'simulator.log'}, master trace "
          f"{out / 'master-trace.txt'}")
    print("=" * 72)
    (out / "summary.json").write_text(json.dumps(
        {"nodes": len(nodes), "reachable_truth": reachable, "by_level": by_level,
         "reading": reading, "master": up}, default=str, indent=1))
    return 0 if reading else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=200)
    ap.add_argument("--layout", default="street", choices=["street", "feeder", "flats"])
    ap.add_argument("--channel", default="hplc", choices=["npl", "hplc", "rf", "dual"])
    ap.add_argument("--factor", type=float, default=25.0, help="times faster than real time")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("run-output"))
    ap.add_argument("--budget", type=float, default=150.0, help="wall seconds before giving up")
    args = ap.parse_args(argv)
    return asyncio.run(run_demo(args.meters, args.channel, args.factor, args.out.resolve(),
                                args.seed, args.budget, layout=args.layout))


if __name__ == "__main__":
    sys.exit(main())
