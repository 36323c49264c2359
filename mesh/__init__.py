"""The district mesh: topology, link estimates, routes, persistence and the engine (``Mesh``)."""

from mesh.engine import (
    DiscoveryDone,
    DiscoveryProgress,
    EngineTuning,
    ExchangeOutcome,
    Mesh,
    MeterReplacementFound,
    NodeAged,
    NodeFound,
    RepairDone,
    UnknownMeter,
)
from mesh.topology import Topology

__all__ = [
    "Mesh",
    "Topology",
    "EngineTuning",
    "ExchangeOutcome",
    "NodeFound",
    "UnknownMeter",
    "DiscoveryProgress",
    "DiscoveryDone",
    "NodeAged",
    "MeterReplacementFound",
    "RepairDone",
]
