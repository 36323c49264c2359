"""The district mesh: topology, link estimates, routes, persistence and the engine (``Mesh``)."""

from mesh.engine import Mesh
from mesh.events import (
    DiscoveryDone,
    DiscoveryProgress,
    ExchangeOutcome,
    MeterReplacementFound,
    NodeAged,
    NodeFound,
    RepairDone,
    UnknownMeter,
)
from mesh.topology import Topology
from mesh.tuning import EngineTuning

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
