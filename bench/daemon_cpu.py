"""The concentrator daemon's own CPU per 1,000 meter reads (issue 5 goal: under 2 s).

``bench/read.py`` measures CPU in one process that also runs the simulated district, so the
concentrator's share is not known there. This bench runs the real daemon as a process
(``concentrator run --config``) against ``concentrator-sim serve`` (the district on ptys, in
another process) and the simulated master station (in this process), all in accelerated time
sharing one epoch, as ``simulator/demo.py`` (``make run``) does. The district is a generated
1,000-meter HPLC ``street``; the daemon starts from an empty archive.

The daemon's CPU time (``/proc/<pid>/stat`` utime + stime) is sampled at phase boundaries,
which this bench finds in the daemon's log and its store (read-only SQLite connection), so
that the bench itself adds no work to the daemon (a control-socket ``status`` is not free: it
snapshots the whole topology and counts every table; its cost is measured separately):

* **formation**: from the first answer on the control socket to ``mesh: discovery done``;
* **round**: from there until the daily frozen round and the hourly curve round that open
  together at 00:05 are done and the master confirmed every upload (outbox empty): the reads
  and their uploads. CPU per 1,000 reads counts every meter read job of the period (daily and
  curve; the read_stats rows);
* **idle**: a quiet stretch after that (no round running: from the end of the round until the
  next hourly curve window opens), given per simulated hour.

The daemon runs with its CPU sampled by task (``simulator/cpu_split.py``: a stack walk every
2 ms of CPU, about 1 % more CPU, in the figures): of the round's CPU, the share of the tasks
that read (``READING_TASKS``: the reader, the module link, the summary meter, the uploads and
the store) gives ``reading_cpu_per_1000_reads``; the rest is what the mesh does meanwhile on its
own (probing for alternates after formation, repairs, upkeep), which the round's window holds
too. At 20x a millisecond of scheduling jitter on this machine is 20 ms of simulated time,
several HPLC frames: the realtime run collides more than the same district in virtual time
(``bench/read.py``), and its retries and repairs cost CPU of their own.

The daemon config is demo.py's except the daily window, which ends at the field default 06:00
so that the once-a-day tasks after it (power-down records, clock, relay) do not read during the
idle hour. Each phase also says how busy the rest of the machine was (``others_cpu_s``: the
machine's busy CPU from ``/proc/stat`` less the daemon's, the simulator's and this bench's;
``steal_s``: the hypervisor's): the same work costs the daemon more CPU time when other jobs
share the two cores (the simulator's CPU for the same district rises with it), so runs from a
quiet and a busy machine should not be compared as they are. ``--profile`` runs the daemon under cProfile switched on for the round only (SIGUSR1
at formation end, SIGUSR2 at round end) and prints the top functions; its CPU figures are
inflated by the profiler and are not the measurement.

    python bench/daemon_cpu.py                    # 1,000 meters at 20x; writes daemon_cpu.json
    python bench/daemon_cpu.py --factor 20 40     # one case per factor (acceleration check)
    python bench/daemon_cpu.py --profile --out /tmp/dcpu   # + cProfile of the round
    python bench/daemon_cpu.py --meters 2040 --json bench/daemon_cpu_2040.json  # the daemon's
                                                  # RSS and CPU on the largest district
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.cpu_split import READING_TASKS as TRIAL_READING_TASKS  # noqa: E402

BIN = Path(sys.executable).parent
GOAL_CPU_PER_1000 = 2.0
TICK = os.sysconf("SC_CLK_TCK")
#: the daemon's CPU is sampled by task every this many CPU seconds (a stack walk each: about
#: 1 % more CPU, in the figures)
SPLIT_INTERVAL_S = 0.002
#: the daemon's tasks that read (``module.function`` of a task's outermost concentrator
#: frame): the reader, the module link, the summary meter, and the uplink of the readings;
#: the rest is the mesh's own upkeep (probing for alternates, repairs, maintain) and the
#: daemon's housekeeping
READING_TASKS = (*TRIAL_READING_TASKS, "client.", "store.")

_DONE = re.compile(r"task (\w+): round (\S+ \S+) done in (\d+) s[^:]*: (\d+) meters, first attempt "
                   r"([\d.]+)%, first pass ([\d.]+)%, final ([\d.]+)%, (\d+) passes, (\d+) exchanges")
_UNREAD = re.compile(r"task (\w+): (\d+) meters unread after pass (\d+)")


def proc_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds the process ``pid`` has used; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2:].split()   # the command name may hold spaces
    return int(rest[11]) / TICK, int(rest[12]) / TICK


def proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) the process ``pid`` has used; None once it is gone."""
    t = proc_times(pid)
    return None if t is None else t[0] + t[1]


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores (``/proc/stat``)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK, steal / TICK


def proc_rss_mb(pid: int, field: str = "VmRSS") -> float | None:
    """Resident set of ``pid`` in MB (``VmHWM``: its peak so far)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def profiled_daemon(out: str, argv: list[str]) -> None:
    """``concentrator <argv>`` under cProfile, switched on by SIGUSR1 and off (+ dump) by SIGUSR2."""
    import cProfile

    prof = cProfile.Profile()

    def on(*_: Any) -> None:
        prof.enable()

    def off(*_: Any) -> None:
        prof.disable()
        prof.dump_stats(out)

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    from concentrator.cli import main

    main(argv)


def sampled_daemon(out: str, argv: list[str]) -> None:
    """``concentrator <argv>`` with its CPU sampled by task (``simulator.cpu_split``): SIGUSR1
    starts the round's phase, SIGUSR2 ends it and writes the samples to ``out`` (JSON)."""
    from simulator.cpu_split import CpuSplit

    split = CpuSplit(interval=SPLIT_INTERVAL_S)

    def on(*_: Any) -> None:
        split.phase("round")

    def off(*_: Any) -> None:
        split.phase("after")
        Path(out).write_text(json.dumps(split.report().get("round", {})), encoding="utf-8")

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    split.start()
    from concentrator.cli import main

    main(argv)


class _Store:
    """The daemon's store, read-only from this process (WAL: readers never block the writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def _c(self) -> sqlite3.Connection | None:
        if self.conn is None and self.path.exists():
            with contextlib.suppress(sqlite3.Error):
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        return self.conn

    def reads(self) -> dict[str, int]:
        """Meter read jobs so far: ``<task>`` (all outcomes) and ``<task>:ok``."""
        c = self._c()
        out: dict[str, int] = {}
        if c is None:
            return out
        with contextlib.suppress(sqlite3.Error):
            for task, outcome, n in c.execute(
                    "SELECT task, outcome = 'ok', COUNT(*) FROM read_stats GROUP BY 1, 2"):
                out[task] = out.get(task, 0) + n
                if outcome:
                    out[f"{task}:ok"] = out.get(f"{task}:ok", 0) + n
        return out

    def outbox(self) -> int | None:
        c = self._c()
        if c is None:
            return None
        try:
            return c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error:
            return None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class _Log:
    """Follows the daemon's log file; collects round reports and formation end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.formed = False
        self.done: list[dict[str, Any]] = []        # round done lines, in order
        self.unread_passes: dict[str, int] = {}     # task -> make-up passes announced
        self.errors = 0
        self.port_error: str | None = None

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return
        cut = data.rfind(b"\n") + 1
        self.pos += cut
        for line in data[:cut].decode("utf-8", "replace").splitlines():
            if "module port:" in line and "cannot open" in line:
                self.port_error = line
            elif "mesh: discovery done" in line:
                self.formed = True
            elif (m := _DONE.search(line)) is not None:
                self.done.append({"task": m[1], "opens": m[2], "duration_s": int(m[3]),
                                  "meters": int(m[4]), "first_attempt_pct": float(m[5]),
                                  "first_pass_pct": float(m[6]), "final_pct": float(m[7]),
                                  "passes": int(m[8]), "exchanges": int(m[9])})
            elif (m := _UNREAD.search(line)) is not None:
                self.unread_passes[m[1]] = max(self.unread_passes.get(m[1], 0), int(m[3]))
            elif " ERROR " in line or "Traceback" in line:
                self.errors += 1

    def round_done(self, task: str, opens: str) -> dict[str, Any] | None:
        return next((d for d in self.done if d["task"] == task and d["opens"] == opens), None)


class _Sample:
    def __init__(self, pid: int, sim_pid: int, store: _Store, sim_now: datetime) -> None:
        self.user, self.sys = proc_times(pid) or (0.0, 0.0)
        self.cpu = self.user + self.sys
        self.sim_cpu = proc_cpu(sim_pid)
        self.machine_busy, self.steal = machine_cpu()
        self.bench_cpu = sum(os.times()[:2])   # this process: the master station and the polls
        self.wall = time.monotonic()
        self.sim_now = sim_now
        self.reads = store.reads()


def _phase(a: _Sample, b: _Sample) -> dict[str, Any]:
    cpu = (b.cpu or 0.0) - (a.cpu or 0.0)
    reads = {k: b.reads.get(k, 0) - a.reads.get(k, 0) for k in b.reads
             if b.reads.get(k, 0) - a.reads.get(k, 0)}
    ok = sum(v for k, v in reads.items() if k.endswith(":ok"))
    sim_cpu = (b.sim_cpu or 0) - (a.sim_cpu or 0)
    others = (b.machine_busy - a.machine_busy) - cpu - sim_cpu - (b.bench_cpu - a.bench_cpu)
    return {"cpu_s": round(cpu, 2), "user_s": round(b.user - a.user, 2),
            "sys_s": round(b.sys - a.sys, 2), "sim_cpu_s": round(sim_cpu, 2),
            "sim_s": round((b.sim_now - a.sim_now).total_seconds()),
            "wall_s": round(b.wall - a.wall, 1), "reads": reads, "reads_ok": ok,
            "cpu_per_1000_reads": round(1000 * cpu / ok, 2) if ok else None,
            "others_cpu_s": round(max(others, 0.0), 2), "steal_s": round(b.steal - a.steal, 2)}


def _port_opens(path: str) -> bool:
    """The module pty opens at the module's line settings, as the daemon will open it.

    A pty keeps the settings its last user left, and pyserial's next open of it then fails
    with EINVAL (simulator/campaign.py says the same): the settings are put back afterwards.
    """
    import termios

    import serial

    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        fresh = termios.tcgetattr(fd)
        try:
            serial.Serial(path, 9600, parity="E", timeout=0).close()
        except Exception as exc:  # SerialException, OSError, and termios.error (no OSError)
            print(f"  {path}: {exc}", flush=True)
            return False
        finally:
            termios.tcsetattr(fd, termios.TCSANOW, fresh)
    finally:
        os.close(fd)
    return True


async def run_case(meters: int, factor: float, seed: int, out: Path, *, profile: bool = False,
                   budget_s: float = 1800.0, min_idle_min: float = 20.0) -> dict[str, Any]:
    """One run: formation, the 00:05 rounds with their uploads, a quiet stretch; CPU of each."""
    from concentrator.control import ControlClient, ControlError
    from concentrator.keystore import FileKeyStore
    from simulator.demo import (
        _daemon_config,
        _DistrictClock,
        start_simulator,
        stop_processes,
    )
    from simulator.generate import generate
    from simulator.master import MasterStation
    from simulator.scenario import dump

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, mode=0o750)
    scenario = generate(meters, "street", seed, channel="hplc")
    (out / "district.yaml").write_text(dump(scenario))
    start = scenario.start
    keys = FileKeyStore(out / "keys.json", create=True)
    keys.set_terminal_key("4403", 1, os.urandom(16))
    keys.save()
    epoch = time.time() + 3.0

    def sim_now() -> datetime:
        return start + timedelta(seconds=(time.time() - epoch) * factor)

    master = MasterStation(out / "master.sqlite", keys=keys,
                           clock=_DistrictClock(start, epoch, factor))
    port = await master.start("127.0.0.1", 0)
    common = ["--time-factor", str(factor), "--epoch", repr(epoch), "--start", start.isoformat()]
    procs: list[subprocess.Popen[Any]] = []
    store = _Store(out / "concentrator.db")
    dlog = _Log(out / "daemon.log")
    prof_path = out / "round.prof"
    res: dict[str, Any] = {"meters": meters, "channel": "hplc", "layout": "street", "seed": seed,
                           "factor": factor, "profiled": profile}
    try:
        for _ in range(3):
            sim, module_pty, summary_pty = start_simulator(out / "district.yaml",
                                                            out / "simulator.log", common)
            procs.append(sim)
            if module_pty is not None and _port_opens(module_pty):
                break
            # Seen here once: pyserial's open of a fresh pty refused with EINVAL (the daemon
            # would retry for ever); a new pty from a new simulator process is fine.
            print(f"  module pty {module_pty} does not open; restarting the simulator", flush=True)
            sim.send_signal(signal.SIGTERM)
            sim.wait(timeout=30)
            procs.remove(sim)
        else:
            raise RuntimeError(f"simulator did not start; see {out / 'simulator.log'}")
        cfg = _daemon_config(out, module_pty, summary_pty,
                             scenario.summary_meter.address if scenario.summary_meter else None,
                             port, "hplc")
        # The field's daily window: the once-a-day tasks after it stay out of the idle hour.
        cfg = re.sub(r'daily_frozen_end: "[0-9:]+".*', 'daily_frozen_end: "06:00"', cfg)
        (out / "concentrator.yaml").write_text(cfg)
        args = ["-v", "run", "--config", str(out / "concentrator.yaml"), *common]
        split_path = out / "round-split.json"
        cmd = [sys.executable, str(Path(__file__).resolve()),
               "--as-daemon" if profile else "--as-sampled-daemon",
               str(prof_path if profile else split_path), "--", *args]
        daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                  stderr=open(out / "daemon.log", "w"))  # noqa: SIM115
        procs.append(daemon)
        pid = daemon.pid
        t_wall = time.monotonic()

        def alive() -> None:
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon exited with {daemon.returncode}; see "
                                   f"{out / 'daemon.log'}")
            if time.monotonic() - t_wall > budget_s:
                raise RuntimeError(f"budget of {budget_s:.0f} wall s used up at "
                                   f"{sim_now():%H:%M:%S}; see {out / 'daemon.log'}")

        sock = out / "control.sock"
        while True:
            alive()
            with contextlib.suppress(ControlError, OSError):
                await asyncio.to_thread(ControlClient(sock, timeout=5).request, "status", {})
                break
            await asyncio.sleep(0.2)
        s_ready = _Sample(pid, sim.pid, store, sim_now())
        res["daemon_start_cpu_s"] = s_ready.cpu   # interpreter start, imports, store open
        while not dlog.formed:
            alive()
            if dlog.port_error:
                raise RuntimeError(f"the daemon cannot open the module pty: {dlog.port_error}")
            await asyncio.sleep(0.05)
            dlog.poll()
        s_formed = _Sample(pid, sim.pid, store, sim_now())
        daemon.send_signal(signal.SIGUSR1)
        print(f"  formed at {s_formed.sim_now:%H:%M:%S} (factor {factor:g}); reading", flush=True)

        # The 00:05 rounds (daily frozen + hourly curve) and their uploads.
        day = start.date().isoformat()

        def settled(task: str, opens: str) -> bool:
            # Done, or (a meter unreachable keeps a round in make-up passes until its window
            # closes) past its first make-up pass.
            return dlog.round_done(task, opens) is not None or dlog.unread_passes.get(task, 0) >= 2

        def curve_after_formation() -> bool:
            # The curve round of the window open at formation end (00:05's, or a later hour's
            # when formation outlasted 00:50).
            return any(d["task"] == "curve" for d in dlog.done[n_done:]) \
                or dlog.unread_passes.get("curve", 0) >= 2

        n_done = len(dlog.done)
        while True:
            alive()
            await asyncio.sleep(0.05)
            dlog.poll()
            if settled("daily_frozen", f"{day} 00:05") and curve_after_formation() \
                    and store.outbox() == 0:
                break
        s_round = _Sample(pid, sim.pid, store, sim_now())
        daemon.send_signal(signal.SIGUSR2)
        print(f"  round and uploads done at {s_round.sim_now:%H:%M:%S}", flush=True)

        # Idle: a settle minute, then until a minute before the next curve window (hh:05).
        async def until(when: datetime) -> None:
            while sim_now() < when:
                alive()
                await asyncio.sleep(min(0.5, max(0.01, (when - sim_now()).total_seconds()
                                                  / factor)))

        await until(sim_now() + timedelta(minutes=1))
        s_idle0 = _Sample(pid, sim.pid, store, sim_now())
        nxt = s_idle0.sim_now.replace(minute=5, second=0, microsecond=0)
        if nxt <= s_idle0.sim_now:
            nxt += timedelta(hours=1)
        idle_end = nxt - timedelta(minutes=1)
        if (idle_end - s_idle0.sim_now).total_seconds() < min_idle_min * 60:
            # Too short: let the next hour's curve round pass first.
            hour_opens = f"{nxt:%Y-%m-%d %H:%M}"
            while not settled("curve", hour_opens) or store.outbox() != 0:
                alive()
                await asyncio.sleep(0.1)
                dlog.poll()
            await until(sim_now() + timedelta(minutes=1))
            s_idle0 = _Sample(pid, sim.pid, store, sim_now())
            idle_end = nxt + timedelta(hours=1, minutes=-1)
        await until(idle_end)
        s_idle1 = _Sample(pid, sim.pid, store, sim_now())
        dlog.poll()

        # What one control-socket status costs the daemon (the CLI's and demo's poll).
        c0 = proc_cpu(pid) or 0.0
        n_status = 5
        st: dict[str, Any] = {}
        for _ in range(n_status):
            st = await asyncio.to_thread(ControlClient(sock, timeout=30).request, "status", {})
        status_cpu = ((proc_cpu(pid) or 0.0) - c0) / n_status

        formation = _phase(s_ready, s_formed)
        rnd = _phase(s_formed, s_round)
        idle = _phase(s_idle0, s_idle1)
        idle["cpu_per_sim_hour"] = round(3600 * idle["cpu_s"] / max(idle["sim_s"], 1), 3)
        daily = dlog.round_done("daily_frozen", f"{day} 00:05")
        curve = next((d for d in dlog.done[n_done:] if d["task"] == "curve"), None)
        formation["nodes_online"] = st.get("nodes", {}).get("online")
        formation["cpu_per_1000_meters"] = round(1000 * formation["cpu_s"] / meters, 2)
        rnd["daily_round"] = daily
        rnd["curve_round"] = curve
        rnd["note"] = ("the hourly curve round runs beside the daily one; CPU per 1,000 reads "
                       "counts both tasks' read jobs (read_stats rows with outcome ok)")
        rnd["master"] = master.upload_summary()
        if not profile and split_path.exists():
            split = json.loads(split_path.read_text(encoding="utf-8"))
            tasks = split.get("concentrator_tasks", {})
            known = sum(tasks.values())
            reading = sum(n for k, n in tasks.items() if k.startswith(READING_TASKS))
            rnd["cpu_by_task_samples"] = tasks
            if known and rnd.get("cpu_per_1000_reads") is not None:
                rnd["reading_share"] = round(reading / known, 3)
                rnd["reading_cpu_per_1000_reads"] = round(
                    rnd["cpu_per_1000_reads"] * reading / known, 2)
        res.update({
            "formation": formation, "round": rnd, "idle": idle,
            "status_call_cpu_s": round(status_cpu, 4),
            "daemon_rss_mb": proc_rss_mb(pid), "daemon_peak_rss_mb": proc_rss_mb(pid, "VmHWM"),
            "daemon_log_errors": dlog.errors,
            "wall_s": round(time.monotonic() - t_wall, 1),
            "start_sim": start.isoformat(), "formed_sim": s_formed.sim_now.isoformat(
                timespec="seconds"), "round_end_sim": s_round.sim_now.isoformat(timespec="seconds"),
        })
        if profile:
            res["profile"] = str(prof_path)
        return res
    finally:
        store.close()
        stop_processes(procs, 30)
        await master.stop()
        master.close()


def print_profile(path: Path, top: int = 40) -> None:
    import pstats

    if not path.exists():
        print(f"  no profile written at {path}")
        return
    st = pstats.Stats(str(path))
    st.sort_stats("tottime").print_stats(top)
    st.sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--meters", type=int, default=1000)
    ap.add_argument("--factor", type=float, nargs="+", default=[20.0],
                    help="times faster than real time (one case per factor)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default: a temp dir)")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the daemon during the round (figures inflated; no JSON)")
    ap.add_argument("--budget", type=float, default=1800.0, help="wall seconds per case")
    ap.add_argument("--json", type=Path, default=None,
                    help="write the figures here (default: bench/daemon_cpu.json)")
    ap.add_argument("--as-daemon", help=argparse.SUPPRESS)   # internal: the profiled daemon
    ap.add_argument("--as-sampled-daemon", help=argparse.SUPPRESS)  # internal: sampled by task
    args, rest = ap.parse_known_args()
    if args.as_daemon:
        profiled_daemon(args.as_daemon, [a for a in rest if a != "--"])
        return
    if args.as_sampled_daemon:
        sampled_daemon(args.as_sampled_daemon, [a for a in rest if a != "--"])
        return
    base = args.out or Path(tempfile.mkdtemp(prefix="daemon_cpu-"))
    cases = []
    for factor in args.factor:
        out = (base / f"x{factor:g}").resolve()
        print(f"{args.meters} meters hplc street at {factor:g}x -> {out}", flush=True)
        r = asyncio.run(run_case(args.meters, factor, args.seed, out, profile=args.profile,
                                 budget_s=args.budget))
        cases.append(r)
        f, rd, idle = r["formation"], r["round"], r["idle"]
        daily = rd["daily_round"] or {}
        print(f"  formation: {f['cpu_s']} s CPU in {f['sim_s']} sim-s "
              f"({f['cpu_per_1000_meters']} s per 1,000 meters; simulator {f['sim_cpu_s']} s)")
        print(f"  round: {rd['cpu_s']} s CPU (user {rd['user_s']}, system {rd['sys_s']}) for {rd['reads_ok']} reads ok "
              f"({rd['reads']}) in {rd['sim_s']} sim-s = {rd['cpu_per_1000_reads']} s per "
              f"1,000 reads (goal {GOAL_CPU_PER_1000}); simulator {rd['sim_cpu_s']} s; daily "
              f"first attempt {daily.get('first_attempt_pct')}% final {daily.get('final_pct')}%; "
              f"other processes {rd['others_cpu_s']} s CPU meanwhile (steal {rd['steal_s']} s)")
        if rd.get("reading_cpu_per_1000_reads") is not None:
            print(f"  of it reading (reader, module link, uploads, store): "
                  f"{rd['reading_cpu_per_1000_reads']} s per 1,000 reads "
                  f"({100 * rd['reading_share']:.0f} % of the round's CPU; the rest is the "
                  f"mesh's probing, repairs and upkeep: "
                  f"{dict(list(rd['cpu_by_task_samples'].items())[:6])} samples)")
        print(f"  idle: {idle['cpu_s']} s CPU in {idle['sim_s']} sim-s = "
              f"{idle['cpu_per_sim_hour']} s per sim-hour (reads {idle['reads']})")
        print(f"  one control-socket status: {r['status_call_cpu_s']} s CPU; daemon RSS "
              f"{r['daemon_rss_mb']} MB (peak {r['daemon_peak_rss_mb']} MB); wall {r['wall_s']} s",
              flush=True)
        if args.profile:
            print_profile(out / "round.prof")
    if args.profile:
        return
    result = {"generated": datetime.now().isoformat(timespec="seconds"),
              "command": "python bench/daemon_cpu.py " + " ".join(sys.argv[1:]),
              "goal_cpu_per_1000_reads": GOAL_CPU_PER_1000, "cases": cases}
    path = args.json or Path(__file__).with_suffix(".json")
    path.write_text(json.dumps(result, indent=1, default=str), encoding="utf-8")
    print(f"written {path}")


if __name__ == "__main__":
    main()
