"""The mesh engine's events and the outcome of an exchange (frozen: they go to the log, the
store and the master station). ``mesh.engine`` exports them too."""

from __future__ import annotations

from dataclasses import dataclass

from mesh.routes import Route

__all__ = [
    "NodeFound",
    "UnknownMeter",
    "DiscoveryProgress",
    "DiscoveryDone",
    "NodeAged",
    "MeterReplacementFound",
    "RepairDone",
    "ExchangeOutcome",
]


@dataclass(frozen=True, slots=True)
class NodeFound:
    """A search found ``address`` through ``proxy`` (the CCO address: heard directly)."""

    address: str
    level: int
    proxy: str
    quality: int | None
    kind: str
    in_archive: bool


@dataclass(frozen=True, slots=True)
class UnknownMeter:
    """A node not in the master's archive answered a search; ``admitted`` or quarantined."""

    address: str
    proxy: str
    admitted: bool


@dataclass(frozen=True, slots=True)
class DiscoveryProgress:
    """A discovery level is done: ``found`` new nodes at ``level``, ``total`` so far."""

    level: int
    found: int
    total: int
    searches: int


@dataclass(frozen=True, slots=True)
class DiscoveryDone:
    nodes: int
    by_level: tuple[tuple[int, int], ...]  # (level, nodes)
    searches: int
    reads: int
    seconds: float
    missing_archive: tuple[str, ...]  # archive meters no search found


@dataclass(frozen=True, slots=True)
class NodeAged:
    """A node silent since ``last_seen`` was deleted (topology and module archive)."""

    address: str
    last_seen: float | None


@dataclass(frozen=True, slots=True)
class MeterReplacementFound:
    """``old`` went silent and ``new`` answered a local search from ``old``'s neighbours."""

    old: str
    new: str
    near: str


@dataclass(frozen=True, slots=True)
class RepairDone:
    address: str
    reachable: bool
    probes: int
    searches: int


@dataclass(frozen=True, slots=True)
class ExchangeOutcome:
    """What ``Mesh.exchange`` did: the reply (or why there is none) and the route it used."""

    address: str
    reply: bytes | None
    failure: str | None
    route: Route | None  # the route of the last attempt
    attempts: int
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.reply is not None

    @property
    def relays(self) -> tuple[str, ...]:
        return () if self.route is None else self.route.relays

    @property
    def latency(self) -> float:
        return self.latency_s
