"""Which side of a trial spent the CPU: the concentrator's code or the simulated district's.

The trial (``simulator.trial``) runs the concentrator's objects and the simulated district in one
process and one thread, so ``time.process_time()`` gives their sum. ``CpuSplit`` samples the
running stack on the process's CPU timer (``ITIMER_PROF``: a sample per ``interval`` seconds of
CPU, so idle and virtual-time jumps cost nothing) and attributes each sample to the innermost
frame of the repository that says whose work it is:

* a frame in ``simulator/`` -> the simulator (its module, nodes, meters, channel);
* a frame in ``concentrator/``, ``mesh/``, ``plc_driver/`` or ``uplink/`` -> the concentrator;
* the codecs both sides share (DL/T 645, 1376.2, 1376.1, the BCD helpers) are skipped: a frame
  there counts for whichever side called it;
* no repository frame at all (the event loop's own bookkeeping) -> ``loop``, which both sides
  cause; ``concentrator_share`` gives it to the concentrator in proportion to its samples.

Sampling is statistical (a 1 ms timer over tens of CPU seconds is tens of thousands of
samples) and cheap (one stack walk per sample), unlike a tracing profiler, whose cost per call
would weigh small, often-called functions more than they really cost.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: concentrator tasks (``module.function`` of a task's outermost frame) that do the reading:
#: the reader, the module link and its receive loop, the summary meter
READING_TASKS = ("reader.", "driver.", "link.", "summary_meter.")
#: the asyncio frame that runs a task's step: the outermost frame of a task's own stack
_LOOP_RUN = "asyncio/events.py"
CONCENTRATOR_PACKAGES = ("concentrator", "mesh", "plc_driver", "uplink")
#: codecs both the concentrator and the simulator call: they count for the caller
SHARED_CODECS = ("concentrator/dlt645.py", "concentrator/codec.py", "plc_driver/gdw13762.py",
                 "uplink/gdw13761.py")
#: the harness itself (the trial's driving coroutine, virtual time, this sampler): the loop's
#: bookkeeping under them counts as ``loop``
HARNESS = ("simulator/trial.py", "simulator/vtime.py", "simulator/cpu_split.py")


def _side_of(filename: str, cache: dict[str, str | None]) -> str | None:
    side = cache.get(filename, "?")
    if side != "?":
        return side
    side = None
    try:
        rel = Path(filename).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        rel = ""
    if rel and rel not in SHARED_CODECS and rel not in HARNESS:
        top = rel.split("/", 1)[0]
        if top == "simulator":
            side = "simulator"
        elif top in CONCENTRATOR_PACKAGES:
            side = "concentrator"
    cache[filename] = side
    return side


class CpuSplit:
    """Samples this process's CPU by phase and side (see the module docstring).

    ``start()`` installs a SIGPROF handler (main thread only), ``phase(name)`` switches the
    phase the next samples count for, ``stop()`` restores the previous handler.
    """

    def __init__(self, interval: float = 0.001) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self.counts: dict[str, dict[str, int]] = {}
        #: concentrator samples per phase by the task they were for (``module.function``)
        self.tasks: dict[str, dict[str, int]] = {}
        self._phase = "start"
        self._cache: dict[str, str | None] = {}
        self._previous: Any = None

    def phase(self, name: str) -> None:
        self._phase = name

    def _sample(self, _signum: int, frame: FrameType | None) -> None:
        side = "loop"
        f = frame
        while f is not None:
            s = _side_of(f.f_code.co_filename, self._cache)
            if s is not None:
                side = s
                break
            f = f.f_back
        by_side = self.counts.setdefault(self._phase, {})
        by_side[side] = by_side.get(side, 0) + 1
        if side == "concentrator":
            # The outermost concentrator frame is the task the work is for (the reader's
            # worker, the mesh's gap probing, a repair, the driver's receive loop).
            root = None
            while f is not None:
                name = f.f_code.co_filename
                if name.endswith(_LOOP_RUN):
                    break  # the task's coroutine ends here; above it is the loop's caller
                if _side_of(name, self._cache) == "concentrator":
                    root = f
                f = f.f_back
            if root is not None:
                key = f"{Path(root.f_code.co_filename).stem}.{root.f_code.co_name}"
                tasks = self.tasks.setdefault(self._phase, {})
                tasks[key] = tasks.get(key, 0) + 1

    def start(self) -> None:
        self._previous = signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, self._previous or signal.SIG_DFL)

    def concentrator_share(self, phase: str) -> float | None:
        """The concentrator's share of the phase's CPU, the loop's shared out pro rata."""
        c = self.counts.get(phase, {})
        conc, sim = c.get("concentrator", 0), c.get("simulator", 0)
        if conc + sim == 0:
            return None
        return conc / (conc + sim)

    def task_share(self, phase: str, prefixes: tuple[str, ...]) -> float | None:
        """Share of the phase's CPU spent for concentrator tasks whose ``module.function``
        starts with one of ``prefixes`` (the loop's share given out pro rata)."""
        c = self.counts.get(phase, {})
        known = c.get("concentrator", 0) + c.get("simulator", 0)
        if known == 0:
            return None
        mine = sum(n for k, n in self.tasks.get(phase, {}).items() if k.startswith(prefixes))
        return mine / known

    def report(self) -> dict[str, dict[str, Any]]:
        """Samples per phase and side, and the concentrator's share of each phase."""
        out: dict[str, dict[str, Any]] = {}
        for ph, c in self.counts.items():
            share = self.concentrator_share(ph)
            tasks = sorted(self.tasks.get(ph, {}).items(), key=lambda kv: -kv[1])
            out[ph] = {"samples": dict(c),
                       "concentrator_share": None if share is None else round(share, 3),
                       "concentrator_tasks": dict(tasks)}
        return out
