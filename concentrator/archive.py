"""From the mesh to the reading archive: which nodes the reader reads, and by which route.

Shared by the daemon and the field trial, so both read exactly the meters the mesh admitted.
"""

from __future__ import annotations

from typing import Any

from concentrator.store import MeterRecord, Store


def register_found(mesh: Any, store: Store) -> list[str]:
    """Store the nodes the mesh found as meters to read; return the readable addresses.

    A collector becomes a collector record and its RS-485 meters become meters behind it;
    a quarantined node is stored quarantined (not read). Records already in the archive (from
    the master, or earlier) are kept as they are.
    """
    readable: list[str] = []
    with store.batch():
        for node in mesh.topology.nodes():
            kind = getattr(node.kind, "value", str(node.kind))
            status = getattr(node.status, "value", str(node.status))
            if kind == "concentrator" or node.address == mesh.root:
                continue
            if kind == "collector":
                if store.meter(node.address) is None:
                    store.upsert_meter(MeterRecord(node.address, device_kind="collector",
                                                   source="discovered"))
                for sub in node.sub_meters:
                    if store.meter(sub) is None:
                        store.upsert_meter(MeterRecord(sub, collector=node.address,
                                                       source="discovered"))
                    readable.append(sub)
                continue
            if store.meter(node.address) is None:
                store.upsert_meter(MeterRecord(
                    node.address, protocol=node.protocol or "dlt645-2007",
                    source="discovered", quarantined=status == "quarantined"))
            if status != "quarantined":
                readable.append(node.address)
    return readable


def primary_relays(mesh: Any, address: str) -> tuple[str, ...] | None:
    """Relays of a meter's primary route (a collector's meters share the collector's route)."""
    if mesh is None:
        return None
    topo = mesh.topology
    host = mesh.host_of(address)
    route = topo.primary(host) if host in topo else None
    return None if route is None else tuple(route.relays)
