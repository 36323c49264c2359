"""Ground truth of a district at one moment: usable links, true hop counts, true registers.

The benchmarks and the integration tests compare what the concentrator believes (its mesh,
its readings) with this. ``truth(scenario, at) -> dict`` and the ``concentrator-sim truth``
command produce the same structure::

    {"scenario": name, "at": ISO time, "t": seconds, "usable_p": 0.5, "reference_frame_bytes": 42,
     "links":  [{"src", "dst", "p", "medium"}, ...],     # ordered pairs with p >= usable_p
     "nodes":  [{"address", "kind", "x", "y", "junction", "phase", "up", "hops", "collector"}, ...],
     "registers": {address: {"forward": [total, t1..tM], "reverse": [...], "clock": ISO}}}

*Usable link*: the probability that one reference read frame (:data:`REF_FRAME_BYTES`, a
DL/T 645 energy-block reply) from ``src`` is received by ``dst`` at that time, averaged over
frame-to-frame fading, is at least ``usable_p`` (0.5: with the module's usual single retry a
read then gets through at least 75 % of the time). *Hops* is the smallest number of links from
the concentrator over pairs usable in **both** directions (a read goes down and its reply comes
back up the same way); 1 = heard directly, relay level = hops - 1; ``None`` = unreachable
(or powered down). Meters behind a collector have the hops of their collector.
Energy values are decimal strings.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from typing import Any

from simulator.channel import REF_FRAME_BYTES, Channel
from simulator.meterdata import MeterData
from simulator.scenario import Scenario

__all__ = ["truth", "hop_counts", "USABLE_P", "parse_time"]

USABLE_P = 0.5


def parse_time(scenario: Scenario, at: str | float | datetime) -> float:
    """Scenario seconds from seconds, an ISO datetime, or "HH:MM" on the first day."""
    if isinstance(at, datetime):
        return (at - scenario.start).total_seconds()
    if isinstance(at, int | float):
        return float(at)
    s = str(at).strip()
    try:
        return float(s)
    except ValueError:
        pass
    if len(s) <= 5 and ":" in s:
        hh, mm = s.split(":")
        base = datetime.combine(scenario.start.date(), datetime.min.time())
        return (base.replace(hour=int(hh), minute=int(mm)) - scenario.start).total_seconds()
    return (datetime.fromisoformat(s) - scenario.start).total_seconds()


def hop_counts(links: list[tuple[str, str, float, str]], root: str) -> dict[str, int]:
    """Breadth-first hop counts from root over pairs present in both directions."""
    out: dict[str, set[str]] = defaultdict(set)
    for a, b, _, _ in links:
        out[a].add(b)
    hops = {root: 0}
    frontier = [root]
    while frontier:
        nxt = []
        for a in frontier:
            for b in out[a]:
                if b not in hops and a in out[b]:
                    hops[b] = hops[a] + 1
                    nxt.append(b)
        frontier = nxt
    return hops


def truth(scenario: Scenario, at: str | float | datetime, channel: Channel | None = None,
          meterdata: MeterData | None = None, registers: bool = True,
          usable_p: float = USABLE_P) -> dict[str, Any]:
    """The true state of the district at ``at`` (see module docstring)."""
    t = parse_time(scenario, at)
    ch = channel or Channel(scenario)
    links = ch.links(t, usable_p, REF_FRAME_BYTES)
    hops = hop_counts(links, scenario.concentrator.address)
    nodes = []
    for n in ch.nodes:
        up = ch.is_up(n.address, t)
        nodes.append({"address": n.address, "kind": n.kind, "x": n.x, "y": n.y, "junction": n.junction,
                      "phase": n.phase, "up": up, "hops": hops.get(n.address) if up else None,
                      "collector": None})
    md = meterdata or MeterData(scenario)
    regs: dict[str, Any] = {}
    for m in scenario.all_meters():
        if not md.present(m.address, t):
            continue
        if m.collector is not None:
            c = ch.node(m.collector)
            powered = md.powered(m.address, t)
            cup = ch.is_up(m.collector, t)
            nodes.append({"address": m.address, "kind": "meter", "x": c.x, "y": c.y, "junction": m.node,
                          "phase": m.phase, "up": powered,
                          "hops": hops.get(m.collector) if powered and cup else None,
                          "collector": m.collector})
        if registers:
            fwd = md.energy(m.address, t)
            rev = md.energy(m.address, t, reverse=True)
            regs[m.address] = {"forward": [str(fwd[0]), *map(str, fwd[1])],
                               "reverse": [str(rev[0]), *map(str, rev[1])],
                               "clock": md.clock(m.address, t).isoformat(timespec="seconds")}
    result: dict[str, Any] = {
        "scenario": scenario.name,
        "at": (scenario.start + _td(t)).isoformat(timespec="seconds"),
        "t": t,
        "usable_p": usable_p,
        "reference_frame_bytes": REF_FRAME_BYTES,
        "links": [{"src": a, "dst": b, "p": round(p, 4), "medium": m} for a, b, p, m in links],
        "nodes": nodes,
    }
    if registers:
        result["registers"] = regs
        if scenario.summary_meter:
            result["summary_meter"] = {"address": scenario.summary_meter.address,
                                       "forward": str(md.summary_energy(t))}
    return result


def _td(t: float):  # noqa: ANN202
    from datetime import timedelta
    return timedelta(seconds=t if math.isfinite(t) else 0)
