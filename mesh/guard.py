"""Rogue-node guard of the mesh (issue 9): search reports the mesh does not trust.

1376.2 and DL/T 645 carry no authentication, so a modem on the PLC/RF network can answer a
registration search as any address. The guard screens the AFN06 F4 reports of each search
(``Mesh._search_from`` hands it the whole search before any report is used) and drops:

* **duplicate address** — a report for a node that is a relay of the search's own path (the
  module never asks the path's nodes), or for a node already registered with the module from a
  proxy that is not its known neighbour. A genuine registered node stays quiet in searches (the
  module's slave archive tells it so), so such a report is another modem answering for an
  address it does not own. More than ``forgotten_archive`` registered nodes in one search mean
  the module lost its archive (a reset): those reports are used as before;
* **repeated report** — one address reported more than once in one search (two reporters for
  one address, or a modem answering every round): the first report is used, the rest dropped,
  nothing reported on its own (a genuine node may answer two rounds before it is registered);
* **flood** — a search with more than ``repeat_limit`` repeated reports (distinct addresses
  alone are no sign: a search from the concentrator hears hundreds of genuine nodes): its
  distinct addresses beyond ``max(flood_cap, slices)`` are dropped and every *new* address of
  that search must answer a read-address through the search's proxy before it is used
  (a flooder's invented addresses do not answer; genuine new nodes do). The flood is reported
  only when at least ``flood_confirm`` new addresses failed that check (3 tries each): a busy
  search of genuine nodes raises no event.

A dropped sighting changes nothing: no node, no link, no route, the archive record is kept.
Each suspect is reported as a :class:`RogueSuspected` event (the daemon stores it as ERC 35,
"unknown meter found", with the reason in the detail) and one log line with the address, at
most once per suspect and reason per ``report_period_s`` (1 h); the suppressed sightings are
counted in the next event. ``MeshGuard.screen`` is pure; ``screen_search`` adds the
verification reads and the reporting for the engine.

Known limit: the first sighting of an address is trusted. A rogue heard before the genuine
node takes its place until the genuine node answers near its own place (``docs/security.md``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from concentrator import dlt645
from concentrator.codec import CodecError
from mesh.topology import Topology

__all__ = ["MeshGuard", "GuardConfig", "RogueSuspected", "Screened", "ERC_ROGUE",
           "screen_search"]

log = logging.getLogger(__name__)

#: Q/GDW 1376.1 ERC 35 "unknown meter found": the master's staff go and look, which is what a
#: rogue modem needs (ERC 20 is the terminal's own command authentication, docs/security.md).
ERC_ROGUE = 35

DENY_METER_SILENT = 8  # AFN00 F2: the node answered, its meter did not

REASONS = ("duplicate-address", "repeated-report", "flood", "not-verified")


@dataclass(frozen=True, slots=True)
class RogueSuspected:
    """Search reports from ``proxy``'s search that the mesh did not use (see module docstring).

    ``address`` is the claimed address (None for a flood of many addresses); ``sightings`` the
    dropped reports of this suspect since its last event.
    """

    address: str | None
    reason: str
    proxy: str
    sightings: int
    detail: str = ""
    erc: ClassVar[int] = ERC_ROGUE

    def event_detail(self) -> dict[str, Any]:
        """The store event's detail (ERC 35)."""
        return {"reason": self.reason, "proxy": self.proxy, "sightings": self.sightings,
                "detail": self.detail, "rogue": True}


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Limits of the guard (defaults: HPLC and narrowband alike)."""

    #: distinct addresses one search may report (at least the search's answer slots)
    flood_cap: int = 64
    #: repeated reports one search may carry before it counts as flooded
    repeat_limit: int = 2
    flood_confirm: int = 3   # invented addresses (failed verification) that confirm a flood
    #: more registered nodes than this answering one search: the module forgot its archive
    forgotten_archive: int = 4
    #: one event per suspect and reason per this many seconds
    report_period_s: float = 3600.0
    #: timeout of a verification read (None: the driver's default)
    verify_timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Screened:
    """The guard's verdict on one search: reports to use, new addresses to verify first."""

    accepted: tuple[int, ...]  # indices into the search's reports
    verify: tuple[int, ...]  # indices of new addresses that must answer a read first
    suspects: tuple[tuple[str | None, str, int, str], ...]  # (address, reason, count, detail)
    flooded: bool


@dataclass
class GuardStats:
    """Counters for the CLI, tests and benches."""

    detections: Counter[str] = field(default_factory=Counter)  # by reason, every sighting
    dropped: int = 0  # reports not used
    verified: int = 0
    refused: int = 0  # new addresses that did not answer their verification read
    suspects: set[str] = field(default_factory=set)  # addresses claimed by rogues


class MeshGuard:
    """Screens registration-search reports and rate-limits the reporting of suspects."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self.stats = GuardStats()
        self._last: dict[tuple[str, str], float] = {}  # (reason, suspect) -> last event time
        self._pending: Counter[tuple[str, str]] = Counter()  # sightings not reported yet

    # --- the pure part ------------------------------------------------------------------------

    def screen(self, topology: Topology, proxy: str, addresses: list[str],
               registered: set[str] | frozenset[str], slices: int = 16,
               path: tuple[str, ...] = (), verify_new: bool = False) -> Screened:
        """Judge one search's reports (``addresses`` in arrival order) from ``proxy``, whose
        relay path (relays and proxy) is ``path``. ``verify_new``: every address new to the
        topology must answer a read-address before it is used, flood or not (short searches
        give a flooder too few repeats to be marked)."""
        cfg = self.config
        counts = Counter(addresses)
        # Many registered nodes answering at once: the module lost its slave archive (a
        # reset), not a rogue (a rogue claims one address or a few).
        forgotten = sum(1 for a in counts if a in registered) > cfg.forgotten_archive
        repeats = sum(c - 1 for c in counts.values())
        cap = max(cfg.flood_cap, slices)
        # Only repeats mark a flood: a genuine node answers a search once, while a search from
        # the concentrator in a large district legitimately hears hundreds of distinct nodes
        # (capping those pushed genuine direct meters onto relayed routes).
        flooded = repeats > cfg.repeat_limit
        suspects: list[tuple[str | None, str, int, str]] = []
        accepted: list[int] = []
        verify: list[int] = []
        seen: set[str] = set()
        distinct = 0
        for i, addr in enumerate(addresses):
            if addr in seen:
                continue  # a repeat: counted below, never used
            seen.add(addr)
            distinct += 1
            # A genuine node may answer two rounds of one search before the module registers
            # it: a repeat alone is not reported, only used (with others) to spot a flood.
            if addr in path or (addr in registered and addr in topology
                                and not forgotten and not _near(topology, addr, proxy)):
                suspects.append((addr, "duplicate-address", 1,
                                 "relay of the search path answered it" if addr in path else
                                 "registered node answered a search away from its neighbours"))
                continue
            if flooded and distinct > cap:
                continue  # the flood's excess
            if (flooded or verify_new) and addr not in topology:
                verify.append(i)
            else:
                accepted.append(i)
        if flooded:
            suspects.append((None, "flood", len(addresses) - len(accepted) - len(verify),
                             f"{len(addresses)} reports, {len(counts)} addresses, "
                             f"{repeats} repeated"))
        return Screened(tuple(accepted), tuple(verify), tuple(suspects), flooded)

    def report(self, address: str | None, reason: str, proxy: str, count: int, detail: str,
               now: float) -> RogueSuspected | None:
        """Count a suspect's sightings; the event to emit, or None inside its quiet period."""
        # A flooder has no address of its own and is heard through many proxies: its
        # searches share one key, so a flood is one event per period, not one per proxy.
        key = (reason, address or "*")
        self.stats.detections[reason] += count
        if address is not None:
            self.stats.suspects.add(address)
        self._pending[key] += count
        last = self._last.get(key)
        if last is not None and now - last < self.config.report_period_s:
            return None
        self._last[key] = now
        n = self._pending.pop(key)
        return RogueSuspected(address, reason, proxy, n, detail)


def _near(topology: Topology, address: str, proxy: str) -> bool:
    """Whether ``proxy`` is a known neighbour of ``address`` (a link either way)."""
    graph = topology.graph
    if proxy not in graph or address not in graph:
        return False
    return graph.has_edge(proxy, address) or graph.has_edge(address, proxy)


# --- the engine's side (I/O through the module driver) ----------------------------------------

async def screen_search(mesh: Any, proxy: str, path: tuple[str, ...],
                        found: list[tuple[str, Any, Any]], slices: int,
                        verify_new: bool = False) -> list[tuple[str, Any, Any]]:
    """Screen the reports ``found`` of ``mesh``'s search from ``proxy`` (relay path ``path``
    ending at the proxy, empty from the CCO); return the ones to use, in order.
    ``verify_new``: see ``MeshGuard.screen``."""
    guard: MeshGuard = mesh.guard
    addresses = [a for a, _q, _r in found]
    verdict = guard.screen(mesh.topology, proxy, addresses,
                           mesh._registered - set(mesh._unregistered), slices, path,
                           verify_new=verify_new)
    keep = set(verdict.accepted)
    if verdict.verify:
        sem = asyncio.Semaphore(max(1, mesh.driver.max_concurrent))

        async def check(i: int) -> bool:
            async with sem:
                return await _answers(mesh, addresses[i], path, guard.config.verify_timeout)
        results = await asyncio.gather(*(check(i) for i in verdict.verify))
        refused = [addresses[i] for i, ok in zip(verdict.verify, results, strict=True) if not ok]
        keep.update(i for i, ok in zip(verdict.verify, results, strict=True) if ok)
        guard.stats.verified += len(verdict.verify) - len(refused)
        guard.stats.refused += len(refused)
        if refused:
            log.warning("mesh: %d new addresses from the search via %s did not answer, "
                        "not used (%s%s)", len(refused), proxy, ", ".join(refused[:5]),
                        ", ..." if len(refused) > 5 else "")
        refused_n = len(refused)
    else:
        refused_n = 0
    out = [f for i, f in enumerate(found) if i in keep]
    guard.stats.dropped += len(found) - len(out)
    now = mesh._now()
    if not verdict.flooded and refused_n >= guard.config.flood_confirm:
        # Not marked by repeats, but enough invented addresses failed the check: a flood.
        verdict = Screened(verdict.accepted, verdict.verify, (*verdict.suspects, (
            None, "flood", refused_n, f"{len(addresses)} reports, no repeats")), True)
    for address, reason, count, detail in verdict.suspects:
        if reason == "flood" and refused_n < guard.config.flood_confirm:
            # Repeats made the search suspect, but its new addresses answered: a busy search of
            # genuine nodes, not a flood. Nothing to report (a false ERC35 costs an operator).
            log.debug("mesh: search via %s had repeats but no invented address (%s)", proxy,
                      detail)
            continue
        if reason == "flood":
            detail = f"{detail}; {refused_n} new addresses did not answer"
        ev = guard.report(address, reason, proxy, count, detail, now)
        if ev is None:
            continue
        log.warning("mesh: ROGUE %s: %s via %s, %d sightings dropped (%s)", reason,
                    address or "many addresses", proxy, ev.sightings, detail)
        mesh._emit(ev)
    return out


async def _answers(mesh: Any, address: str, path: tuple[str, ...], timeout: float | None,
                   attempts: int = 3) -> bool:
    """True when a modem answers as ``address`` through ``path``: its meter gives its own
    address to a read-address, or the node answers that its meter stayed silent (AFN00 F2
    error 8: collectors and 1997 meters do not know the 2007 read-address)."""
    frame = dlt645.encode(dlt645.read_address_request())
    for _ in range(attempts):
        mesh.stats.reads += 1
        result = await mesh.driver.read(address, path, frame, timeout=timeout)
        if result.deny_code == DENY_METER_SILENT:
            return True
        if not result.ok or result.reply is None:
            continue  # a lost frame is not proof: once more
        try:
            reply, _ = dlt645.parse_prefix(result.reply)
        except CodecError:
            return False
        return reply.address == address
    return False
