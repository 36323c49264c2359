"""Rogue PLC/RF nodes of the simulated district (issue 9): impostors and flooders.

A rogue is a physical modem at a junction of the district (scenario ``rogues:``, see
docs/scenario-format.md), with links of its own, but it is not a meter of the district: it is
not in the truth's meter list, in ``best_routes`` or in the shared medium's collision model.

* An **impostor** answers every registration search it hears, once per search, as the address
  it ``claims`` (ignoring the module's slave archive, which a genuine registered node obeys),
  and answers the reads addressed to that address that it overhears at the last hop, from
  registers of its own (so a read through it gives wrong values).
* A **flooder** answers every search it hears with ``rate`` reports: random addresses, some of
  them repeated, plus its ``claims`` address if it has one; with ``answers_reads`` it also
  answers reads for the addresses it invented.

``RogueSet(scenario)`` is what ``simulator.module.CarrierModule`` consults (``module.rogues``,
set by ``simulator.district.SimDistrict``): ``search_answers`` after a search beacon and
``intercept`` before a read's last hop. Rogue links are drawn from a channel built for the
scenario with each rogue added as a node at its junction (so every genuine link keeps its
figures: per-link variation is a hash of the two addresses). Our simplification: rogue answers
do not take answer slots from genuine nodes (they are drawn on their own links only).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace

from concentrator import dlt645
from concentrator.codec import CodecError
from plc_driver import gdw13762 as g
from simulator.channel import Channel
from simulator.meterdata import MeterData
from simulator.meters import MeterSlave, TruthSource
from simulator.module import quality
from simulator.scenario import Meter, MeterInstalled, Rogue, Scenario

__all__ = ["RogueSet", "RogueDevice", "add_rogues", "by_distance", "SEARCH_BYTES", "ANSWER_BYTES"]

log = logging.getLogger(__name__)

SEARCH_BYTES = 24  # the search beacon (as simulator.module sends it)
ANSWER_BYTES = 40  # one registration answer
#: rogue answers take no meter UART time: the impostor answers from memory at once
ANSWER_DELAY_S = 0.05


@dataclass
class RogueDevice:
    """One rogue modem and what it has claimed so far."""

    spec: Rogue
    slave: MeterSlave | None = None  # the impostor's own registers, answering as ``claims``
    invented: set[str] = field(default_factory=set)  # addresses a flooder has reported
    searches_answered: int = 0
    reads_answered: int = 0

    @property
    def device(self) -> str:
        return self.spec.device

    def exchange(self, node: str, request: bytes, t: float,
                 rng: random.Random) -> tuple[bytes | None, float]:
        """Answer a read addressed to ``node`` (a ``MeterPort.exchange`` look-alike)."""
        try:
            frame, _ = dlt645.parse_prefix(request)
        except CodecError:
            return None, ANSWER_DELAY_S
        self.reads_answered += 1
        if self.slave is not None and node == self.slave.address:
            reply = self.slave.handle(frame, t)
        else:
            # A flooder's invented meter: it only knows how to say its name.
            reply = dlt645.read_address_reply(node) if frame.function == 0x13 else None
        log.info("rogue %s: answered a read for %s", self.device, node)
        return (None if reply is None else dlt645.encode(reply)), ANSWER_DELAY_S


class RogueSet:
    """The rogue modems of a scenario (see module docstring)."""

    def __init__(self, scenario: Scenario, seed: int | None = None) -> None:
        self.scenario = scenario
        seed = scenario.seed if seed is None else seed
        self.rng = random.Random(f"rogues:{seed}")
        # The rogues join the channel as "installed" meters: the channel counts the loads of the
        # initial meters only, so the genuine links are the same as in the district's channel.
        extra = tuple(MeterInstalled(0.0, Meter(r.device, r.node, r.phase, "dlt645-2007",
                                                "residential", 0.0)) for r in scenario.rogues)
        self.channel = Channel(replace(scenario, events=(*scenario.events, *extra)), seed=seed)
        self.devices: list[RogueDevice] = []
        for r in scenario.rogues:
            dev = RogueDevice(r)
            if r.kind == "impostor" and r.claims:
                # Its own registers: another meter's life under the claimed address.
                own = replace(scenario, meters=(Meter(r.claims, r.node, "A", "dlt645-2007",
                                                      "commercial", 23.0),),
                              collectors=(), events=(), summary_meter=None, rogues=())
                dev.slave = MeterSlave(TruthSource(MeterData(own, seed=seed + 7919), r.claims))
            self.devices.append(dev)
        log.info("rogues: %s", ", ".join(f"{r.kind} {r.device} at {r.node}"
                                         f"{' claiming ' + r.claims if r.claims else ''}"
                                         for r in scenario.rogues) or "none")

    def _hears(self, src: str, dst: str, t: float, rng: random.Random) -> bool:
        ch = self.channel
        if not (ch.has_node(src) and ch.has_node(dst)):
            return False
        return ch.transmit(src, dst, ANSWER_BYTES, t, rng)

    def search_answers(self, searcher: str, t: float, rng: random.Random) -> list[tuple[str, int]]:
        """(address, quality) answers the rogues give to a search beacon from ``searcher``."""
        out: list[tuple[str, int]] = []
        medium = self.channel.media[0]
        for dev in self.devices:
            if not self._hears(searcher, dev.device, t, rng):
                continue
            q = quality(self.channel.snr_db(searcher, dev.device, t, medium), medium)
            answers: list[str] = []
            spec = dev.spec
            if spec.kind == "impostor" and spec.claims:
                answers = [spec.claims]
            elif spec.kind == "flooder":
                fresh = max(1, spec.rate // 2)
                for _ in range(fresh):
                    addr = f"{self.rng.randrange(10**11, 10**12):012d}"
                    dev.invented.add(addr)
                    answers.append(addr)
                # The rest repeat what it has already sent (a jammed or careless modem).
                answers += [self.rng.choice(answers) for _ in range(spec.rate - fresh)]
                if spec.claims:
                    answers.append(spec.claims)
            got = [a for a in answers if self._hears(dev.device, searcher, t, rng)]
            if got:
                dev.searches_answered += 1
                log.info("rogue %s (%s): %d answers to the search from %s", dev.device,
                         spec.kind, len(got), searcher)
            out += [(a, q) for a in got]
        return out

    def intercept(self, path: list[str], t: float, rng: random.Random) -> RogueDevice | None:
        """The rogue that answers a read whose last hop is ``path[-2] -> path[-1]``, if any:
        one that claims ``path[-1]`` and hears the last relay (and is heard back) answers
        first, since it needs no meter time."""
        if len(path) < 2:
            return None
        target, last = path[-1], path[-2]
        for dev in self.devices:
            spec = dev.spec
            if not spec.answers_reads:
                continue
            if target != spec.claims and target not in dev.invented:
                continue
            if self._hears(last, dev.device, t, rng) and self._hears(dev.device, last, t, rng):
                return dev
        return None

    def found_node(self, address: str) -> g.FoundNode:
        """What a rogue says about itself in a search answer: a plain DL/T 645-2007 meter."""
        return g.FoundNode(address, 2, 0, 0)


def add_rogues(scenario: Scenario, rogues: list[dict]) -> Scenario:
    """``scenario`` with a ``rogues:`` list added (validated as a scenario file would be)."""
    from simulator.scenario import from_dict, to_dict

    d = to_dict(scenario)
    d["rogues"] = [*d.get("rogues", []), *rogues]
    return from_dict(d)


def by_distance(scenario: Scenario) -> list[str]:
    """Addresses of the district's PLC/RF meters, nearest the transformer first."""
    t = scenario.junction(scenario.transformer.node)
    own = [m for m in scenario.meters if m.collector is None]

    def dist(m: Meter) -> float:
        j = scenario.junction(m.node)
        return (j.x - t.x) ** 2 + (j.y - t.y) ** 2
    return [m.address for m in sorted(own, key=lambda m: (dist(m), m.address))]
