"""Mesh engine: discovery, routing, repair, ageing and restart on scenarios with known answers.

Hand-made districts run against ``GraphModule``, a 1376.2 module whose radio is a plain graph
(which nodes hear which), so each test knows exactly which routes exist. A generated district
runs against the full simulator (``SimDistrict``) to check discovery against the truth.
"""

import asyncio
import contextlib
import dataclasses
import logging
from datetime import datetime

import pytest
import sqlite_utils

from concentrator import dlt645
from concentrator.clock import LoopClock
from concentrator.config import MeshConfig
from mesh.engine import Mesh
from mesh.events import DiscoveryProgress, MeterReplacementFound, NodeAged, UnknownMeter
from mesh.topology import NodeStatus, Topology
from mesh.tuning import EngineTuning
from plc_driver import gdw13762 as g
from plc_driver.driver import ModuleDriver
from plc_driver.link import LinkClosed, MemoryLink
from simulator.vtime import VirtualTimeLoop

CCO = "990000000001"
COMM = 3


def addr(i: int) -> str:
    return f"{i:012d}"


def run(coro):
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)


class GraphModule:
    """A CCO whose nodes hear each other exactly along ``edges`` (both ways)."""

    def __init__(self, link: MemoryLink, edges, collectors=None) -> None:
        self.link = link
        self.adj: dict[str, set[str]] = {}
        for a, b in edges:
            self.adj.setdefault(a, set()).add(b)
            self.adj.setdefault(b, set()).add(a)
        self.collectors = collectors or {}  # collector -> its RS-485 meters
        self.dead: set[str] = set()
        self.archive: dict[str, int] = {}
        self.reads: list[tuple[str, tuple[str, ...], bool]] = []  # (meter, relays, ok)
        self.searches: list[tuple[str, ...]] = []
        self.report_seq = 0
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def host(self, meter: str) -> str:
        for c, subs in self.collectors.items():
            if meter in subs:
                return c
        return meter

    def connect(self, a: str, b: str) -> None:
        """From now on ``a`` and ``b`` hear each other."""
        self.adj[a].add(b)
        self.adj[b].add(a)

    def cut(self, a: str, b: str) -> None:
        """From now on ``a`` and ``b`` no longer hear each other."""
        self.adj[a].discard(b)
        self.adj[b].discard(a)

    def hears(self, a: str, b: str) -> bool:
        return b in self.adj.get(a, ()) and a not in self.dead and b not in self.dead

    def path_ok(self, path) -> bool:
        return all(self.hears(a, b) for a, b in zip(path, path[1:], strict=False))

    def send(self, frame) -> None:
        try:
            self.link.write(g.encode(frame))
        except LinkClosed:
            pass

    async def _serve(self) -> None:
        dec = g.Gdw13762StreamDecoder()
        while True:
            try:
                chunk = await self.link.read()
            except LinkClosed:
                return
            for f in dec.feed(chunk):
                if isinstance(f, g.Frame13762):
                    self.handle(f)

    def handle(self, f) -> None:
        if f.afn == 0x00:
            return
        if (f.afn, f.fn) == (0x11, 1):
            for a, p in g.decode_data_unit(f).slaves:
                self.archive[a] = p
        elif (f.afn, f.fn) == (0x11, 2):
            for a in g.decode_data_unit(f).addresses:
                self.archive.pop(a, None)
        elif (f.afn, f.fn) == (0x11, 5):
            path = (*f.relays, f.destination) if f.info.module and f.destination else ()
            asyncio.get_running_loop().create_task(self._search(path))
        elif (f.afn, f.fn) == (0x13, 1):
            asyncio.get_running_loop().create_task(self._read(f, g.decode_data_unit(f)))
            return
        elif f.afn in (0x03, 0x10):
            self.send(g.deny(f.seq, 10, COMM))
            return
        self.send(g.confirm(f.seq, COMM))

    async def _search(self, path) -> None:
        self.searches.append(path)
        await asyncio.sleep(2.0)
        full = (CCO, *path)
        searcher = full[-1]
        if self.path_ok(full):
            for b in sorted(self.adj.get(searcher, ())):
                if b in self.archive or b in full or b == CCO or not self.hears(searcher, b):
                    continue
                subs = self.collectors.get(b)
                node = (g.FoundNode(b, 2, 0, 1, len(subs), tuple((s, 2) for s in subs))
                        if subs else g.FoundNode(b, 2))
                self.report_seq = (self.report_seq + 1) % 256
                self.send(g.reply(0x06, 4, self.report_seq, COMM, g.ReportSlaves((node,)),
                                  prm=1, source=b, relays=tuple(reversed(path)),
                                  destination=CCO, cmd_quality=12, reply_quality=12))
                await asyncio.sleep(0.1)
        self.report_seq = (self.report_seq + 1) % 256
        self.send(g.reply(0x06, 3, self.report_seq, COMM, g.RouteWorkStatus(2), prm=1))

    async def _read(self, f, unit) -> None:
        meter = f.destination
        host = self.host(meter)
        path = [CCO, *f.relays]
        if path[-1] != host:
            path.append(host)
        await asyncio.sleep(0.2 * len(path))
        ok = self.path_ok(path) and meter not in self.dead
        self.reads.append((meter, tuple(f.relays), ok))
        if ok:
            reply = dlt645.encode(dlt645.read_address_reply(meter))
            self.send(g.monitor_reply(f, reply, cmd_quality=12, reply_quality=12, phase=1))
        else:
            self.send(g.deny(f.seq, 11, COMM, to=f))


async def make(edges, *, collectors=None, config=None, db=None, archive=None, topo=None,
               events=None, module_cls=None, module=None, tuning=None, max_concurrent=1):
    """A simulated module on ``edges`` (``module``: a factory taking the module's end of the
    link, else ``module_cls``), its driver started, and a mesh on it."""
    conc, mod = MemoryLink.pair()
    module = module(mod) if module is not None else \
        (module_cls or GraphModule)(mod, edges, collectors)
    clock = LoopClock(datetime(2024, 3, 1))
    driver = ModuleDriver(conc, comm_mode=COMM, cco_address=CCO, max_concurrent=max_concurrent,
                          read_timeout=30.0)
    await driver.start()
    on_event = events.append if events is not None else None
    if topo == "restore":
        mesh = Mesh.restore(driver, db, clock=clock, config=config, on_event=on_event)
    else:
        mesh = Mesh(driver, Topology(CCO), clock=clock, config=config or MeshConfig(), db=db,
                    on_event=on_event, tuning=tuning or EngineTuning(cover_quality=16))
    return module, driver, mesh


REQ = dlt645.encode(dlt645.read_address_request())


async def formed_for_repair(edges):
    """A district formed with no probing, whose repairs search at once (no congestion wait,
    no probes first): the repair tests' starting point."""
    module, driver, mesh = await make(edges, config=MeshConfig(probing=False))
    mesh.tuning = dataclasses.replace(mesh.tuning, congestion_rounds=10_000, repair_probes=0)
    await mesh.discover()
    return module, driver, mesh


async def searches_after_relay_dies(module, mesh, relay: str, meter: str) -> list:
    """Kill ``relay``, read ``meter`` (it must come back) and wait for the repairs: the
    searches they made (proxy paths)."""
    module.dead.add(relay)
    before = len(module.searches)
    assert (await mesh.exchange(meter, REQ)).ok
    await mesh.wait_repairs()
    return module.searches[before:]


def chain(n: int) -> list[tuple[str, str]]:
    nodes = [CCO] + [addr(i) for i in range(1, n + 1)]
    return list(zip(nodes, nodes[1:], strict=False))


def test_chain_of_seven_hops_is_found_and_read():
    async def main():
        events = []
        module, driver, mesh = await make(chain(7), events=events)
        done = await mesh.discover()
        assert {lv: n for lv, n in done.by_level if n} == {i: 1 for i in range(1, 8)}
        last = addr(7)
        route = mesh.topology.primary(last)
        assert route.relays == tuple(addr(i) for i in range(1, 7))
        out = await mesh.exchange(last, REQ)
        assert out.ok and out.attempts == 1 and out.relays == route.relays
        assert dlt645.address_from_reply(dlt645.decode(out.reply)) == last
        assert set(module.archive) == {addr(i) for i in range(1, 8)}
        levels = [e.level for e in events if isinstance(e, DiscoveryProgress) and e.found]
        assert levels == list(range(1, 8))
        await driver.close()
    run(main())


def test_meter_reachable_only_through_a_collector():
    async def main():
        col, m1, m2 = addr(50), addr(51), addr(52)
        edges = [(CCO, addr(1)), (addr(1), col)]
        module, driver, mesh = await make(edges, collectors={col: (m1, m2)},
                                          archive=None)
        await mesh.discover([m1, m2, addr(1)])
        assert mesh.topology.node(col).sub_meters == (m1, m2)
        assert {m1, m2} <= set(module.archive)  # the RS-485 meters are registered too
        out = await mesh.exchange(m2, dlt645.encode(dlt645.read_request(m2, 0x00010000)))
        assert out.ok
        assert module.reads[-1] == (m2, (addr(1), col), True)
        assert mesh.snapshot()["discovery"]["found"] == 2
        await driver.close()
    run(main())


def test_dead_relay_read_succeeds_on_the_alternate():
    async def main():
        a, b, target = addr(1), addr(2), addr(3)
        # Two relays to the target; only the CCO->a->target path is found by search first.
        edges = [(CCO, a), (CCO, b), (a, target), (b, target)]
        module, driver, mesh = await make(edges)
        await mesh.discover()
        await mesh.wait_alternates()  # probed in the background once reading may start
        routes = mesh.topology.routes(target)
        assert {r.relays for r in routes[:2]} == {(a,), (b,)}
        primary = routes[0].relays[0]
        other = b if primary == a else a
        # A read that works on the primary works out no alternates (per-read CPU).
        mesh.topology.planner._alt_cache.clear()
        searches = mesh.topology.planner.searches
        assert (await mesh.exchange(target, REQ)).ok
        assert mesh.topology.planner.searches == searches
        module.dead.add(primary)
        out = await mesh.exchange(target, REQ)
        assert out.ok and out.attempts == 2 and out.relays == (other,)
        # Learning moves the primary off the dead relay after a few failures.
        for _ in range(3):
            await mesh.exchange(target, REQ)
        assert mesh.topology.primary(target).relays == (other,)
        await mesh.wait_repairs()
        await driver.close()
    run(main())


def test_a_node_found_through_a_proxy_is_probed_directly_and_read_direct():
    async def main():
        a, target = addr(1), addr(2)
        module, driver, mesh = await make([(CCO, a), (a, target)],
                                          config=MeshConfig(probing=False))
        await mesh.discover()
        assert mesh.topology.primary(target).relays == (a,)
        # The target also hears the CCO, which discovery never learned (it searched first).
        module.adj[CCO].add(target)
        module.adj[target] = {a, CCO}
        await mesh.probe_phases()
        assert (target, (), True) in module.reads
        assert mesh.topology.primary(target).relays == ()
        out = await mesh.exchange(target, REQ)
        assert out.ok and out.relays == ()
        await driver.close()
    run(main())


def test_a_dead_relay_is_found_once_and_every_route_through_it_moves():
    async def main():
        a, b = addr(1), addr(2)
        meters = [addr(i) for i in range(10, 16)]
        edges = [(CCO, a), (CCO, b)] + [(r, m) for m in meters for r in (a, b)]
        module, driver, mesh = await make(edges)
        await mesh.discover()
        await mesh.wait_alternates()
        first = mesh.topology.primary(meters[0]).relays[0]
        through = [m for m in meters if mesh.topology.primary(m).relays == (first,)]
        assert len(through) >= 2
        module.dead.add(first)
        out = await mesh.exchange(through[0], REQ)
        assert out.ok and out.relays != (first,)
        # The relay itself was read and stayed silent (the check goes on beside the read):
        # no route uses it any more, so the other meters it relayed are read on their first
        # attempt.
        await mesh.wait_repairs()
        assert first in mesh.topology.presumed_dead
        assert all(first not in mesh.topology.primary(m).relays for m in meters)
        for m in through[1:]:
            out = await mesh.exchange(m, REQ)
            assert out.ok and out.attempts == 1
        await mesh.wait_repairs()
        await driver.close()
    run(main())


def test_quarantined_unknown_node_is_never_a_relay():
    async def main():
        known, rogue, far = addr(1), addr(9), addr(3)
        # The rogue node is the only direct path to "far"; the known meter reaches it too.
        edges = [(CCO, known), (CCO, rogue), (rogue, far), (known, far)]
        events = []
        module, driver, mesh = await make(edges, events=events,
                                          config=MeshConfig(unknown_node_policy="quarantine"))
        await mesh.discover([known, far])
        assert mesh.topology.node(rogue).status is NodeStatus.QUARANTINED
        assert [e.address for e in events if isinstance(e, UnknownMeter)] == [rogue]
        assert not any(e.admitted for e in events if isinstance(e, UnknownMeter))
        assert all(rogue not in r.relays for r in mesh.topology.routes(far))
        out = await mesh.exchange(far, REQ)
        assert out.ok and out.relays == (known,)
        assert all(rogue not in relays for _m, relays, _ok in module.reads)
        assert all(p[:1] != (rogue,) for p in module.searches)  # never a search proxy
        assert (await mesh.exchange(rogue, REQ)).ok  # still read directly
        await driver.close()
    run(main())


async def _meter_about_to_be_replaced():
    """A relay with meter ``old`` behind it, found; ``new`` beside it, not installed yet."""
    relay, old, new = addr(1), addr(2), addr(77)
    events = []
    module, driver, mesh = await make([(CCO, relay), (relay, old), (relay, new)], events=events)
    module.dead.add(new)
    await mesh.discover([relay, old])
    return relay, old, new, events, module, driver, mesh


def test_replaced_meter_is_found_under_its_new_address():
    async def main():
        relay, old, new, events, module, driver, mesh = await _meter_about_to_be_replaced()
        module.dead.add(old)
        module.dead.discard(new)
        out = await mesh.exchange(old, REQ)
        assert not out.ok
        await mesh.wait_repairs()
        found = [e for e in events if isinstance(e, MeterReplacementFound)]
        assert [(e.old, e.new, e.near) for e in found] == [(old, new, relay)]
        assert (await mesh.exchange(new, REQ)).ok
        # The old address ages out of the mesh and the module's archive.
        later = mesh._now() + mesh.config.node_silence_timeout + 1
        assert await mesh.age(later) == [old] or old in await mesh.age(later) or \
            old not in mesh.topology
        assert old not in mesh.topology and old not in module.archive
        assert any(isinstance(e, NodeAged) and e.address == old for e in events)
        await driver.close()
    run(main())


def test_restart_from_saved_state_reads_without_discovery(tmp_path):
    db_path = tmp_path / "mesh.db"

    async def first():
        db = sqlite_utils.Database(db_path)
        module, driver, mesh = await make(chain(3), db=db)
        await mesh.discover()
        await driver.close()

    async def second():
        db = sqlite_utils.Database(db_path)
        module, driver, mesh = await make(chain(3), db=db, topo="restore")
        module.archive = {addr(i): 2 for i in (1, 2, 3)}
        assert mesh is not None and mesh.formed
        out = await mesh.exchange(addr(3), REQ)
        assert out.ok and out.attempts == 1 and out.relays == (addr(1), addr(2))
        assert module.searches == []  # no discovery after the restart
        await driver.close()

    run(first())
    run(second())


class GatheringModule(GraphModule):
    """A module that reports all the nodes a search heard in one 06 F4 report (the data
    unit counts its nodes), its A-field source and signal quality those of the first; with
    ``fn`` 1 in a 06 F1 report (2009-edition modules: address and protocol only)."""

    fn = 4

    async def _search(self, path) -> None:
        self.searches.append(path)
        await asyncio.sleep(2.0)
        full = (CCO, *path)
        searcher = full[-1]
        heard = [b for b in sorted(self.adj.get(searcher, ())) if b not in self.archive
                 and b not in full and b != CCO and self.hears(searcher, b)]
        if heard and self.path_ok(full):
            nodes = tuple(g.FoundNode(b, 2, 0, 1, len(self.collectors[b]),
                                      tuple((s, 2) for s in self.collectors[b]))
                          if b in self.collectors else g.FoundNode(b, 2) for b in heard)
            unit = g.ReportSlaves(nodes) if self.fn == 4 else g.ReportSlaveInfo(
                tuple(g.SlaveIndexEntry(b, 2, 0) for b in heard))
            self.report_seq = (self.report_seq + 1) % 256
            self.send(g.reply(0x06, self.fn, self.report_seq, COMM, unit, prm=1,
                              source=heard[0], relays=tuple(reversed(path)), destination=CCO,
                              cmd_quality=13, reply_quality=13))
        self.report_seq = (self.report_seq + 1) % 256
        self.send(g.reply(0x06, 3, self.report_seq, COMM, g.RouteWorkStatus(2), prm=1))


@pytest.mark.parametrize("fn", [4, 1])
def test_every_node_of_a_report_that_gathers_several_is_found_and_read(fn):
    async def main():
        relay = addr(1)
        leaves = [addr(i) for i in (2, 3, 4)]
        # 06 F4 tells a collector and its meters; 06 F1 knows meters only
        col, m1 = (addr(50), addr(51)) if fn == 4 else (addr(5), None)
        edges = [(CCO, relay), *((relay, x) for x in (*leaves, col))]
        module_cls = type("Gathering", (GatheringModule,), {"fn": fn})
        module, driver, mesh = await make(edges, collectors={col: (m1,)} if m1 else None,
                                          module_cls=module_cls)
        done = await mesh.discover()
        assert done.nodes == 5
        for x in (*leaves, col):
            assert mesh.topology.primary(x).relays == (relay,)
        assert {relay, *leaves, col, *([m1] if m1 else [])} <= set(module.archive)
        # The report's quality is its first node's hop; the others' is not known from it.
        assert mesh.topology.link(relay, leaves[0]).quality == 13
        assert mesh.topology.link(relay, leaves[1]).quality is None
        for meter in (*leaves, m1 or col):
            assert (await mesh.exchange(meter, REQ)).ok
        await driver.close()
    run(main())


class ListingModule(GraphModule):
    """A GraphModule that answers the slave count (10 F1) and list (10 F2) and records the
    slaves each add (11 F1) carried."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.adds: list[list[str]] = []

    def handle(self, f) -> None:
        if (f.afn, f.fn) == (0x10, 1):
            self.send(g.reply(0x10, 1, f.seq, COMM, g.SlaveCount(len(self.archive), 2040)))
        elif (f.afn, f.fn) == (0x10, 2):
            q = g.decode_data_unit(f)
            held = list(self.archive.items())[q.start - 1 : q.start - 1 + q.count]
            self.send(g.reply(0x10, 2, f.seq, COMM, g.SlaveInfoList(
                len(self.archive), tuple(g.SlaveInfo(a, protocol=p) for a, p in held))))
        else:
            if (f.afn, f.fn) == (0x11, 1):
                self.adds.append([a for a, _p in g.decode_data_unit(f).slaves])
            super().handle(f)


def test_a_module_that_lost_its_archive_gets_the_nodes_back_at_the_restart_and_upkeep(
        tmp_path, caplog):
    # The module was swapped while the daemon was down: it holds one of the three nodes. The
    # restored mesh adds back the other two (only them: some modules refuse a duplicate),
    # and after a module reset in service, the hourly upkeep adds back all three.
    db_path = tmp_path / "mesh.db"
    nodes = [addr(i) for i in (1, 2, 3)]

    async def first():
        module, driver, mesh = await make(chain(3), db=sqlite_utils.Database(db_path))
        await mesh.discover()
        await driver.close()

    async def second():
        module, driver, mesh = await make(chain(3), db=sqlite_utils.Database(db_path),
                                          topo="restore", module_cls=ListingModule)
        module.archive = {nodes[1]: 2}
        with caplog.at_level(logging.WARNING, logger="mesh.engine"):
            assert await mesh.sync_module_archive() == 2
        assert mesh.archive_added_back == 2 and mesh.archive_checked_at == mesh._now()
        assert module.adds == [[nodes[0], nodes[2]]]
        assert set(module.archive) == set(nodes)
        assert "holds 1 slaves, 2 of the mesh's missing" in caplog.text
        assert await mesh.sync_module_archive() == 0  # a full count: no list, no add
        assert len(module.adds) == 1
        module.archive.clear()  # a module reset in service
        await mesh.maintain()  # within the hour of the last check: not checked
        assert module.archive == {}
        await asyncio.sleep(mesh.tuning.archive_check_s)
        await mesh.maintain()
        assert set(module.archive) == set(nodes)
        # A node taken out of the module on purpose (a repair's search for it) stays out,
        # also when the check comes while its delete (AFN11 F2) is still on its way.
        removal = asyncio.get_running_loop().create_task(mesh._unregister([nodes[0]]))
        await asyncio.sleep(0)
        assert nodes[0] in mesh._registered  # not confirmed yet
        assert await mesh.sync_module_archive() == 0
        await removal
        assert nodes[0] not in module.archive and nodes[0] not in mesh._registered
        out = await mesh.exchange(nodes[2], REQ)
        assert out.ok and module.searches == []
        await driver.close()

    run(first())
    run(second())


def test_a_module_that_cannot_count_its_slaves_is_left_as_it_is(caplog):
    async def main():
        module, driver, mesh = await make(chain(2))
        await mesh.discover()
        with caplog.at_level(logging.INFO, logger="mesh.engine"):
            assert await mesh.sync_module_archive() == 0
        assert "slave archive not checked" in caplog.text
        assert (await mesh.exchange(addr(2), REQ)).ok
        await driver.close()
    run(main())


def test_save_inside_a_store_batch_keeps_the_callers_transaction(tmp_path):
    from concentrator.store import Store

    async def main():
        store = Store.open(tmp_path / "s.db", clock=LoopClock(datetime(2024, 3, 1)))
        module, driver, mesh = await make(chain(2), db=store)
        await mesh.discover()
        assert mesh.save()
        rows = {r["address"] for r in store.db["mesh_nodes"].rows}
        assert rows == {CCO, addr(1), addr(2)}
        await driver.close()
    run(main())


def test_bad_archive_entries_are_rejected_not_fatal(caplog):
    async def main():
        module, driver, mesh = await make(chain(1))
        with caplog.at_level(logging.WARNING):
            await mesh.discover(["12", ("ZZZZZZZZZZZZ", 2), addr(1)])
        assert "rejected" in caplog.text
        assert mesh.topology.node(addr(1)).status is NodeStatus.APPROVED
        assert not (await mesh.exchange(addr(5), REQ)).ok  # unknown meter: an outcome
        await driver.close()
    run(main())


@pytest.mark.parametrize("channel", ["hplc"])
def test_generated_district_is_found_and_read(channel):
    from simulator.district import SimDistrict
    from simulator.generate import generate
    from simulator.module import COMM_MODE

    async def main():
        sc = generate(40, "feeder", seed=3, channel=channel, events=False)
        d = SimDistrict(sc)
        driver = ModuleDriver(d.module_link(), comm_mode=COMM_MODE[channel], clock=d.clock)
        await driver.start()
        mesh = Mesh(driver, Topology(sc.concentrator.address), clock=d.clock)
        truth = d.truth(registers=False)
        reach = {n["address"] for n in truth["nodes"]
                 if n["hops"] and n["collector"] is None and n["kind"] != "concentrator"}
        await mesh.discover()
        routed = {a for a in reach if mesh.topology.primary(a) is not None}
        assert routed == reach  # every node the truth can reach was found and has a route
        direct = sorted(a for a in reach if mesh.topology.primary(a).relays == ()
                        and sc.meter(a).protocol == "dlt645-2007")
        outs = [await mesh.exchange(a, REQ) for a in direct]
        assert direct and all(o.ok for o in outs)
        await d.close()
        await driver.close()
    run(main())


def test_generated_feeder_every_reachable_node_is_found():
    """Issue 4: on a 200-meter hplc feeder discovery used to stop with 115 of the 200 reachable
    nodes (covered proxies were skipped and never searched); weakly heard nodes now also keep
    answering later searches until heard well, so they get more than one known hop."""
    from simulator.district import SimDistrict
    from simulator.generate import generate
    from simulator.module import COMM_MODE

    async def main():
        sc = generate(200, "feeder", seed=1, channel="hplc", events=False)
        d = SimDistrict(sc)
        driver = ModuleDriver(d.module_link(), comm_mode=COMM_MODE["hplc"], clock=d.clock)
        await driver.start()
        mesh = Mesh(driver, Topology(sc.concentrator.address), clock=d.clock,
                    config=MeshConfig(probing=False))
        truth = d.truth(registers=False)
        reach = {n["address"] for n in truth["nodes"]
                 if n["hops"] and n["collector"] is None and n["kind"] != "concentrator"}
        await mesh.discover()
        routed = {a for a in reach if mesh.topology.primary(a) is not None}
        assert routed == reach
        # Weakly heard nodes were registered with the module in the end all the same.
        module = d.module
        assert reach <= set(module.archive)
        await d.close()
        await driver.close()
    run(main())


class SlottedModule(GraphModule):
    """A ``GraphModule`` whose searches answer in random slots, like the simulator's module:
    a round of ``slices`` slots of 40 ms; two answers in one slot are both lost; the search
    ends on a round with neither answers nor collisions (or at its duration)."""

    SLOT_S = 0.04

    def __init__(self, link: MemoryLink, edges) -> None:
        super().__init__(link, edges)
        self.slices: list[int] = []  # slots asked for by each search
        self.starts: list[float] = []  # when each search was asked for (11 F5)
        self.stops: list[float] = []  # when a search was stopped (11 F6)
        self.rng = __import__("random").Random(5)

    def handle(self, f) -> None:
        if (f.afn, f.fn) == (0x11, 5):
            self.starts.append(asyncio.get_running_loop().time())
            self.slices.append(g.decode_data_unit(f).slices)
            path = (*f.relays, f.destination) if f.info.module and f.destination else ()
            self.searching = asyncio.get_running_loop().create_task(
                self._slotted(path, self.slices[-1], g.decode_data_unit(f).duration_min))
            self.send(g.confirm(f.seq, COMM))
            return
        if (f.afn, f.fn) == (0x11, 6):
            self.stops.append(asyncio.get_running_loop().time())
            if getattr(self, "searching", None) is not None:
                self.searching.cancel()
        super().handle(f)

    def relay_s(self, path) -> float:
        """Seconds an answer's report takes to come back from the proxy at ``path``'s end."""
        return 0.0

    async def _slotted(self, path, slices: int, minutes: int) -> None:
        self.searches.append(path)
        loop = asyncio.get_running_loop()
        t_end = loop.time() + minutes * 60
        searcher = (CCO, *path)[-1]
        reported: set[str] = set()
        while loop.time() < t_end:
            contenders = [b for b in sorted(self.adj.get(searcher, ())) if b not in reported
                          and b not in self.archive and b != CCO and b not in path]
            slots: dict[int, list[str]] = {}
            for b in contenders:
                slots.setdefault(self.rng.randrange(slices), []).append(b)
            await asyncio.sleep(slices * self.SLOT_S)
            won = [m[0] for m in slots.values() if len(m) == 1]
            if not won and all(len(m) == 1 for m in slots.values()):
                break
            for b in won:
                reported.add(b)
                await asyncio.sleep(self.relay_s(path))
                self.report_seq = (self.report_seq + 1) % 256
                self.send(g.reply(0x06, 4, self.report_seq, COMM,
                                  g.ReportSlaves((g.FoundNode(b, 2),)), prm=1, source=b,
                                  relays=tuple(reversed(path)), destination=CCO,
                                  cmd_quality=12, reply_quality=12))
                await asyncio.sleep(0.05)
        self.report_seq = (self.report_seq + 1) % 256
        self.send(g.reply(0x06, 3, self.report_seq, COMM, g.RouteWorkStatus(2), prm=1))


def _crowd(tuning: EngineTuning, gaps: bool = False) -> tuple:
    """A quiet proxy with 3 unknown neighbours, then one with 100 (heard by nobody else):
    (formation s, nodes found, slots asked for by each search[, seconds from each stopped
    search to the next search's start])."""
    quiet, hub = addr(1), addr(2)
    edges = [(CCO, quiet), (CCO, hub)] + [(quiet, addr(50 + i)) for i in range(3)] \
        + [(hub, addr(100 + i)) for i in range(100)]

    async def main():
        module, driver, mesh = await make(edges, module=lambda link: SlottedModule(link, edges),
                                          config=MeshConfig(probing=False), tuning=tuning)
        done = await mesh.discover()
        await driver.close()
        out = (mesh.stats.discovery_s, done.nodes, module.slices)
        if gaps:
            out += ([min(t for t in module.starts if t > s) - s for s in module.stops
                     if any(t > s for t in module.starts)],)
        return out
    return run(main())


def test_a_congested_proxy_search_is_made_again_with_more_slots():
    """Issue 4: 100 contenders in 16 slots almost all collide round after round (a 2,040-meter
    street had proxy searches of 150 s for 60 nodes); the engine sees the answers stop while
    the search goes on, stops it and searches again with 4 times the slots."""
    seconds, nodes, slices = _crowd(EngineTuning(slots_window=0))
    assert nodes == 105
    # The CCO's search, the quiet proxy's (its first answer times a round), the crowded one's.
    assert slices[:3] == [255, 8, 8]
    assert 32 in slices[3:]
    # Without the congestion rule 100 contenders in 8 slots almost never answer alone: the
    # crowded proxy's whole 3-minute search hears next to none of them.
    slow, slow_nodes, slow_slices = _crowd(EngineTuning(congestion_rounds=10_000,
                                                        slots_window=0))
    assert set(slow_slices[1:]) == {8}
    assert slow_nodes < 50 and slow > seconds


def test_a_quiet_proxy_search_keeps_its_slots():
    """A search with slots enough for its contenders is not taken for a congested one."""
    seconds, nodes, slices = _crowd(EngineTuning(proxy_slices=128))
    assert nodes == 105 and set(slices[1:]) == {128}


# --- repair: replaced meters and dead relays (issues 4 and 10) ------------------------------------

def test_replaced_meter_is_found_within_minutes_while_reports_are_drained():
    """Issue 10 (churn week): the daemon drains module reports outside searches; that drain
    took every other report of a repair search, so a meter swapped in beside a silent one was
    found days late. With ``Mesh.drain_reports`` running, the first failed read of the old
    meter finds the new one within minutes, long before the old one ages out."""
    async def main():
        relay, old, new, events, module, driver, mesh = await _meter_about_to_be_replaced()
        drain = asyncio.get_running_loop().create_task(mesh.drain_reports())
        module.dead.add(old)
        module.dead.discard(new)
        t0 = asyncio.get_running_loop().time()
        assert not (await mesh.exchange(old, REQ)).ok
        await mesh.wait_repairs()
        found = [e for e in events if isinstance(e, MeterReplacementFound)]
        assert [(e.old, e.new) for e in found] == [(old, new)]
        assert asyncio.get_running_loop().time() - t0 < 300
        assert old in mesh.topology  # not aged out: found beside it, not after it
        assert new in module.archive and (await mesh.exchange(new, REQ)).ok
        drain.cancel()
        await driver.close()
    run(main())


def test_dead_relay_with_a_neighbour_that_hears_its_meter_loses_no_read():
    """Issue 4: the only known route of ``m`` runs through ``r``; ``r`` dies. The relay is
    declared dead and ``m`` is probed through ``r``'s live neighbour ``s`` at once: the very
    read that found the relay dead comes back."""
    async def main():
        r, s, m = addr(1), addr(2), addr(3)
        module, driver, mesh = await make([(CCO, r), (CCO, s), (r, m), (r, s)],
                                          config=MeshConfig(probing=False))
        await mesh.discover()
        topo = mesh.topology
        assert topo.primary(m).relays == (r,) and len(topo.routes(m)) == 1
        for x, y in ((r, s), (s, r)):  # a search heard r and s each other
            topo.observe(x, y, True, 12, t=mesh._now())
        module.connect(s, m)          # s hears m too; the mesh does not know it yet
        module.dead.add(r)
        out = await mesh.exchange(m, REQ)
        assert out.ok and out.relays == (s,)
        assert r in topo.presumed_dead
        await driver.close()
    run(main())


def test_dead_relay_whose_meter_has_no_known_alternate_is_repaired_by_a_search():
    """Issue 4: no known link leads to ``m`` but the dead relay's. A node in the module's
    archive does not answer a search, so the repair takes ``m`` out of it (AFN11 F2), searches
    from the live nodes around the dead relay, and registers ``m`` again once heard."""
    from dataclasses import replace

    async def main():
        r, s, m = addr(1), addr(2), addr(3)
        module, driver, mesh = await make([(CCO, r), (CCO, s), (r, m), (r, s)],
                                          config=MeshConfig(probing=False))
        # No probe: only a search helps. (GraphModule answers a search after 2 s and ignores
        # a stop, so the congestion rule is off here: a stopped search's late end would
        # end the next one.)
        mesh.tuning = replace(mesh.tuning, repair_probes=0, congestion_rounds=10_000)
        await mesh.discover()
        topo = mesh.topology
        for x, y in ((r, s), (s, r)):
            topo.observe(x, y, True, 12, t=mesh._now())
        module.connect(s, m)
        module.dead.add(r)
        searches = len(module.searches)
        # The read that found the relay dead waits for the repair and comes back.
        first = await mesh.exchange(m, REQ)
        assert first.ok and first.relays == (s,)
        await mesh.wait_repairs()
        assert (s,) in module.searches[searches:]
        assert m in module.archive                  # registered again after the search
        out = await mesh.exchange(m, REQ)
        assert out.ok and out.relays == (s,) and out.attempts == 1
        await driver.close()
    run(main())


# --- repair of everything a dead relay leaves with no route (issue 4) -----------------------


def test_dead_relays_meters_are_all_read_again_after_one_search():
    """Issue 4: relay ``r`` is the only known way to three meters; it dies. One repair for the
    relay (not one per meter) takes all three out of the module's archive and searches from
    ``r``'s live neighbour ``s``, which hears them all: one search, every meter read again,
    and the read that found ``r`` dead is not lost."""
    from dataclasses import replace

    from mesh.events import RepairDone

    async def main():
        r, s = addr(1), addr(2)
        meters = [addr(3), addr(4), addr(5)]
        edges = [(CCO, r), (CCO, s), (r, s), *((r, m) for m in meters)]
        events = []
        module, driver, mesh = await make(edges, config=MeshConfig(probing=False),
                                          events=events)
        mesh.tuning = replace(mesh.tuning, congestion_rounds=10_000)
        await mesh.discover()
        topo = mesh.topology
        assert all(topo.primary(m).relays == (r,) and len(topo.routes(m)) == 1
                   for m in meters)
        for x, y in ((r, s), (s, r)):  # a search heard r and s each other
            topo.observe(x, y, True, 12, t=mesh._now())
        for m in meters:              # s hears every meter; the mesh does not know it
            module.connect(s, m)
        module.dead.add(r)
        searches = len(module.searches)
        outs = [await mesh.exchange(m, REQ) for m in meters]
        await mesh.wait_repairs()
        assert [o.ok for o in outs] == [True, True, True]
        assert all(o.relays == (s,) for o in outs)
        assert module.searches[searches:] == [(s,)]        # one search for the dead relay
        assert all(m in module.archive for m in meters)   # registered again
        done = [e for e in events if isinstance(e, RepairDone)]
        assert sorted(e.address for e in done if e.reachable) == meters
        await driver.close()
    run(main())


def test_orphan_heard_again_relays_for_the_orphans_beyond_it():
    """Issue 4: behind dead relay ``r`` lie ``a`` (heard by ``r``'s live neighbour ``s``) and
    ``b`` (heard only by ``a``). The search from ``s`` hears ``a``; ``a`` is searched from
    next and hears ``b``: two searches bring both back, and no search is made per meter."""

    async def main():
        r, s, a, b = addr(1), addr(2), addr(3), addr(4)
        edges = [(CCO, r), (CCO, s), (r, s), (r, a), (r, b)]
        module, driver, mesh = await formed_for_repair(edges)
        topo = mesh.topology
        for x, y in ((r, s), (s, r)):
            topo.observe(x, y, True, 12, t=mesh._now())
        for x, y in ((s, a), (a, b)):
            module.connect(x, y)
        assert await searches_after_relay_dies(module, mesh, r, b) == [(s,), (s, a)]
        assert topo.primary(b).relays == (s, a)
        assert (await mesh.exchange(a, REQ)).ok
        await driver.close()
    run(main())


def _orphans_read_at_once(**tuning) -> tuple[float, float]:
    """Behind dead relay ``r``: ``a`` (heard by ``r``'s neighbour ``s``) and ``b`` (heard only
    by ``a``), read at once. Returns when each read came back."""
    async def main():
        r, s, a, b = addr(1), addr(2), addr(3), addr(4)
        edges = [(CCO, r), (CCO, s), (r, s), (r, a), (r, b)]
        module, driver, mesh = await formed_for_repair(edges)
        # (the search for b is made from a: a's read would wait for it, see below)
        mesh.tuning = dataclasses.replace(mesh.tuning, reads_wait_for_proxy=False, **tuning)
        topo = mesh.topology
        for x, y in ((r, s), (s, r)):
            topo.observe(x, y, True, 12, t=mesh._now())
        for x, y in ((s, a), (a, b)):
            module.connect(x, y)
        module.dead.add(r)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        done: dict[str, float] = {}

        async def read(m: str) -> None:
            assert (await mesh.exchange(m, REQ)).ok
            done[m] = loop.time() - t0
        await asyncio.gather(read(a), read(b))
        await mesh.wait_repairs()
        await driver.close()
        return done[a], done[b]
    return run(main())


def test_an_orphan_heard_again_is_read_before_the_search_for_the_others_ends():
    """With ``early_repair_reads`` (off by default): the group repair behind dead relay ``r``
    hears ``a`` in its first search and ``b`` in its second (from ``a``). ``a``'s read goes
    out once ``a`` is heard and back in the module's archive, not after the search for
    ``b``."""
    early_a, early_b = _orphans_read_at_once(early_repair_reads=True)
    late_a, late_b = _orphans_read_at_once()
    assert early_a < early_b
    assert early_a + 1.0 < late_a  # (without: it waited for the 2-second search for b)


class BusyProxyModule(GraphModule):
    """A ``GraphModule`` in which a node searching (beacons, answer rounds) drops the reads
    sent to or through it meanwhile."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.searching: str | None = None

    async def _search(self, path) -> None:
        self.searching = path[-1] if path else None
        try:
            await super()._search(path)
        finally:
            self.searching = None

    async def _read(self, f, unit) -> None:
        if self.searching is not None and self.searching in (*f.relays, f.destination):
            await asyncio.sleep(0.2 * (len(f.relays) + 2))
            self.reads.append((f.destination, tuple(f.relays), False))
            self.send(g.deny(f.seq, 11, COMM, to=f))
            return
        await super()._read(f, unit)


def _read_while_it_searches(**tuning) -> bool:
    async def main():
        p, m = addr(1), addr(2)
        module, driver, mesh = await make(chain(2), module_cls=BusyProxyModule,
                                          config=MeshConfig(probing=False), max_concurrent=2,
                                          tuning=EngineTuning(cover_quality=16, **tuning))
        await mesh.discover()
        search = asyncio.ensure_future(mesh._search_from(p, 2, True, minutes=1))
        await asyncio.sleep(0.5)
        reads = len(module.reads)
        out = await mesh.exchange(m, REQ)
        await search
        await driver.close()
        return out.ok and out.attempts == 1 and len(module.reads) == reads + 1
    return run(main())


def test_a_read_through_the_proxy_of_a_search_under_way_waits_for_the_search():
    """Relay ``p`` is searching (a repair's search, say) when ``m`` behind it is read: the
    read waits for the search to end and goes through on its first attempt, instead of
    failing into ``p``'s answer rounds and spending its retries and probes there."""
    assert _read_while_it_searches()
    assert not _read_while_it_searches(reads_wait_for_proxy=False)


# --- faster formation (issue 4): known answers for each rule --------------------------------

class RoundModule(GraphModule):
    """A ``GraphModule`` whose search reports each round's answers at once at the round's end
    (like the simulator's module), with a signal quality per node, and which stops at 11 F6.
    Records when each search started and stopped."""

    ROUND_S = 1.0

    def __init__(self, link: MemoryLink, edges, quality=None, per_round: int = 1000) -> None:
        super().__init__(link, edges)
        self.quality = quality or {}
        self.per_round = per_round  # answers a round can carry
        self.starts: list[float] = []
        self.stops: list[float] = []
        self.searching: asyncio.Task | None = None

    def handle(self, f) -> None:
        loop = asyncio.get_running_loop()
        if (f.afn, f.fn) == (0x11, 5):
            self.starts.append(loop.time())
            path = (*f.relays, f.destination) if f.info.module and f.destination else ()
            self.searching = loop.create_task(self._rounds(path))
            self.send(g.confirm(f.seq, COMM))
            return
        if (f.afn, f.fn) == (0x11, 6):
            self.stops.append(loop.time())
            if self.searching is not None:
                self.searching.cancel()
        super().handle(f)

    async def _rounds(self, path) -> None:
        self.searches.append(path)
        searcher = (CCO, *path)[-1]
        reported: set[str] = set()
        while True:
            await asyncio.sleep(self.ROUND_S)
            won = [b for b in sorted(self.adj.get(searcher, ())) if b not in reported
                   and b not in self.archive and b != CCO and b not in path][:self.per_round]
            if not won:
                break
            for b in won:
                reported.add(b)
                q = self.quality.get((searcher, b), self.quality.get(b, 12))
                self.report_seq = (self.report_seq + 1) % 256
                self.send(g.reply(0x06, 4, self.report_seq, COMM,
                                  g.ReportSlaves((g.FoundNode(b, 2),)), prm=1, source=b,
                                  relays=tuple(reversed(path)), destination=CCO,
                                  cmd_quality=q, reply_quality=q))
        self.report_seq = (self.report_seq + 1) % 256
        self.send(g.reply(0x06, 3, self.report_seq, COMM, g.RouteWorkStatus(2), prm=1))


async def _round_mesh(edges, quality=None, tuning=None, per_round=1000, guard=None):
    module, driver, mesh = await make(
        edges, module=lambda link: RoundModule(link, edges, quality, per_round),
        config=MeshConfig(probing=False), tuning=tuning or EngineTuning())
    if guard is not None:
        mesh.guard = guard
    return module, driver, mesh


def test_a_search_stopped_at_its_answer_cap_keeps_the_answers_already_sent():
    """The CCO's round brings 10 answers at once; the engine stops the search at the guard's
    cap of 4 answers. The other 6 were sent before the stop: they belong to this search.
    (Left queued, the next search took them for its own, the nodes answered it again, and
    the guard took the repeats for a flood: 18 verification reads.)"""
    from mesh.guard import GuardConfig, MeshGuard

    async def main():
        nodes = [addr(i) for i in range(1, 11)]
        module, driver, mesh = await _round_mesh(
            [(CCO, n) for n in nodes], tuning=EngineTuning(root_slices=4),
            guard=MeshGuard(GuardConfig(flood_cap=4)))
        done = await mesh.discover()
        assert done.nodes == 10
        assert mesh.stats.by_level[1] == 10
        assert mesh.stats.reads == 0 and mesh.guard.stats.dropped == 0
        assert set(module.archive) == set(nodes)
        await driver.close()
    run(main())


def test_a_search_stopped_mid_round_lets_the_round_end_before_the_next_search():
    """Nodes that heard a round's beacon answer in their slots whatever the CCO is told: a
    search stopped for congestion mid-round is followed by the next search only a round
    later (npl: the level after a root search stopped mid-round found nothing in 12
    searches, their commands lost under its 84 s of answers)."""
    seconds, nodes, slices, gaps = _crowd(EngineTuning(slots_window=0), gaps=True)
    assert nodes == 105 and 32 in slices
    # The crowded search (8 slots of 40 ms) was stopped for congestion: the next began a
    # round later. The one stopped at the answer cap stopped at a round's end: no wait.
    assert len(gaps) == 2
    assert gaps[0] >= 8 * SlottedModule.SLOT_S and gaps[1] < 0.1


def test_proxy_search_slots_follow_the_answers_of_the_last_searches():
    """About half as many slots as the last proxy searches heard answers, 8 at least, 255 at
    most: crowded neighbourhoods get the slots they need, empty ones cost a short round."""
    async def main():
        module, driver, mesh = await _round_mesh([(CCO, addr(1))])
        assert mesh._proxy_slots() == 8  # nothing heard yet
        mesh._answers = [0, 0, 1, 0]
        assert mesh._proxy_slots() == 8
        mesh._answers = [40, 40, 30, 50]
        assert mesh._proxy_slots() == 16
        mesh._answers = [300, 300, 300, 300]
        assert mesh._proxy_slots() == 128
        await driver.close()
    run(main())


def _edge_district():
    """13 level-1 nodes heard well by the CCO and one heard weakly (quality 9) whose far
    neighbour nobody else hears."""
    near = [addr(i) for i in range(1, 14)]
    edge, far = addr(20), addr(21)
    edges = [(CCO, n) for n in near] + [(CCO, edge), (edge, far)]
    quality = {n: 11 for n in near} | {edge: 9, far: 9}
    return edges, quality, far


def test_a_level_ending_in_empty_searches_is_searched_from_its_edge_first():
    """The 12 best-heard level-1 proxies find nothing; before the level ends, its weakest-heard
    proxies are searched: the node only the edge proxy hears is found with one search."""
    edges, quality, far = _edge_district()

    async def main(tuning):
        module, driver, mesh = await _round_mesh(edges, quality, tuning)
        await mesh.discover()
        await driver.close()
        return far in mesh.topology, len(module.searches)
    found, searches = run(main(EngineTuning(sweep_empty=0)))
    assert found and searches == 1 + 12 + 1 + 1  # CCO, 12 empty, the edge, the far node
    found, _ = run(main(EngineTuning(edge_sweep=0, sweep_empty=0)))
    assert not found


def _covered_level(tuning: EngineTuning) -> tuple[int, int]:
    """The CCO hears 4 nodes at quality 10 and 10 covered ones at 14, and nothing else
    exists: (nodes found, searches made) by a discovery with ``tuning``."""
    uncovered = [addr(i) for i in range(1, 5)]
    covered = [addr(i) for i in range(10, 20)]
    edges = [(CCO, n) for n in uncovered + covered]
    quality = {n: 10 for n in uncovered} | {n: 14 for n in covered}

    async def main():
        module, driver, mesh = await _round_mesh(edges, quality, tuning)
        done = await mesh.discover()
        await driver.close()
        return done.nodes, len(module.searches)
    return run(main())


def test_covered_proxies_are_not_searched_after_the_level_ran_dry():
    """A level whose own proxies found nothing, four in a row, searches none of its covered
    proxies (heard well by a searched finder, so inside its neighbourhood): 1 + 4 searches,
    not 1 + 4 + 10."""
    assert _covered_level(EngineTuning(sweep_empty=0)) == (14, 1 + 4)


def _heard_well_elsewhere(tuning: EngineTuning) -> tuple[int, list]:
    """The CCO hears A and B at quality 10 and P at 8 (too weak to register, so P answers
    again); A's search hears P at 13 and nothing new: (nodes found, search paths)."""
    a, b, p = addr(1), addr(2), addr(3)
    edges = [(CCO, a), (CCO, b), (CCO, p), (a, p)]
    quality = {(CCO, a): 10, (CCO, b): 10, (CCO, p): 8, (a, p): 13}

    async def main():
        module, driver, mesh = await _round_mesh(edges, quality, tuning)
        done = await mesh.discover()
        await driver.close()
        return done.nodes, module.searches
    return run(main())


def test_a_proxy_heard_well_by_another_searched_proxy_is_not_searched():
    """Issue 4: P, found weakly by the CCO, was heard at quality 13 by A's search: it lies
    inside A's neighbourhood, and a search from it would hear only what A's did. The level's
    own proxies found nothing more, so P is not searched (1,000-meter hplc feeder, seed 1:
    110 of 509 searches went to such proxies, 21 of them found anything; formation 507 ->
    454 sim-s, 1000/1000 found)."""
    a, b, p = addr(1), addr(2), addr(3)
    nodes, searches = _heard_well_elsewhere(EngineTuning(sweep_empty=0, cover_any=True))
    assert nodes == 3 and searches == [(), (a,), (b,)]
    # Off (the default: it learns fewer hops), only a hop from its finder counts: P is
    # searched too.
    nodes, searches = _heard_well_elsewhere(EngineTuning(sweep_empty=0))
    assert nodes == 3 and any(path and path[-1] == p for path in searches)


class DeepModule(SlottedModule):
    """A ``SlottedModule`` whose search command goes out, and each answer comes back, over
    the proxy's hops at ``HOP_S`` a hop (as the simulator's module relays them)."""

    HOP_S = 0.3

    async def _slotted(self, path, slices: int, minutes: int) -> None:
        await asyncio.sleep(self.HOP_S * len(path))
        await super()._slotted(path, slices, minutes)

    def relay_s(self, path) -> float:
        return self.HOP_S * len(path)


def test_a_deep_proxys_slow_answers_are_not_taken_for_congestion():
    """Issue 4: a proxy 6 hops out gets each answer back 6 hops later than one a hop out; its
    rounds are that much longer. Judged by a 1-hop search's round, its search was stopped
    for congestion and made again with 32 slots (2,040-meter hplc feeder: 124 such repeats,
    41 of 100 at levels 6-9 heard at most 4 answers); judged by its own hops it keeps its
    8 slots."""
    chain_nodes = [addr(i) for i in range(1, 8)]
    edges = list(zip([CCO, *chain_nodes], chain_nodes, strict=False))
    # The last relay of the chain has 5 unknown neighbours; a level-2 proxy has 2.
    edges += [(chain_nodes[-1], addr(100 + i)) for i in range(5)]
    edges += [(chain_nodes[0], addr(200 + i)) for i in range(2)]

    async def main(tuning):
        module, driver, mesh = await make(edges, module=lambda link: DeepModule(link, edges),
                                          config=MeshConfig(probing=False), tuning=tuning)
        done = await mesh.discover()
        await driver.close()
        return done.nodes, module.slices
    nodes, slices = run(main(EngineTuning(slots_window=0, sweep_empty=0)))
    assert nodes == 14
    assert set(slices[1:]) == {8}


def test_reading_starts_at_formation_and_alternates_follow_in_the_gaps():
    """discover() returns when every node has its search route; the alternates are probed in
    the background, one probe at a time (the module's other read slots stay free)."""
    async def main():
        a, b, target = addr(1), addr(2), addr(3)
        module, driver, mesh = await make([(CCO, a), (CCO, b), (a, target), (b, target)])
        await mesh.discover()
        assert module.reads == []  # nothing probed before reading may start
        assert mesh.stats.first_read_s == mesh.stats.discovery_s
        assert mesh.topology.primary(target) is not None
        await mesh.wait_alternates()
        assert {r.relays for r in mesh.topology.routes(target)[:2]} == {(a,), (b,)}
        await driver.close()
    run(main())


def test_a_bug_in_the_background_probing_is_logged_not_lost(caplog, monkeypatch):
    """Nobody awaits the probing for alternates: an exception there must reach the log
    with the task's name, or the probing ends and the field never knows why."""
    async def main():
        a, b, target = addr(1), addr(2), addr(3)
        module, driver, mesh = await make([(CCO, a), (CCO, b), (a, target), (b, target)])

        async def broken(address, pause=0.0):
            raise TypeError("a bug")
        monkeypatch.setattr(mesh, "_find_alternates", broken)
        with caplog.at_level(logging.ERROR, logger="mesh.engine"):
            await mesh.discover()
            await mesh.wait_alternates()
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert said == ["mesh: background task mesh-alternates failed: TypeError('a bug')"]
        assert (await mesh.exchange(target, REQ)).ok  # reading goes on
        await driver.close()
    run(main())


def test_background_probing_waits_for_a_pause_in_the_reads():
    """Alternates are probed only while no read is in flight for ``gap_idle_s``: probes taking
    read slots during a round slowed the round and doubled the daemon's CPU per read."""
    async def main():
        a, b, target = addr(1), addr(2), addr(3)
        module, driver, mesh = await make([(CCO, a), (CCO, b), (a, target), (b, target)])
        await mesh.discover()
        loop = asyncio.get_running_loop()
        ours = 0
        end = loop.time() + 30.0
        while loop.time() < end:  # a round: a read every second for 30 s
            assert (await mesh.exchange(target, REQ)).ok
            ours += 1
            await asyncio.sleep(1.0)
        during = len(module.reads)
        await mesh.wait_alternates()
        after = len(module.reads)
        await driver.close()
        return ours, during, after
    ours, during, after = run(main())
    assert during == ours  # not one probe between the reads
    assert after > during  # ... and the alternates were probed once the reads paused


# --- completeness sweep (issue 4): no pocket of nodes is left unfound ------------------------

def _line_behind_a_strong_node():
    """A line CCO - strong - far1 - far2 - far3: the CCO hears ``strong`` at quality 15 (so it
    counts as covered: inside the CCO's neighbourhood) and 20 other level-1 nodes at 10; the
    far nodes are heard only along the line, through ``strong``."""
    near = [addr(i) for i in range(1, 21)]
    strong = addr(30)
    far = [addr(31), addr(32), addr(33)]
    edges = [(CCO, n) for n in near] + [(CCO, strong), (strong, far[0]), (far[0], far[1]),
                                         (far[1], far[2])]
    quality = {n: 10 for n in near} | {strong: 15} | {f: 12 for f in far}
    return edges, quality, strong, far


def test_a_line_behind_a_strongly_heard_node_is_found_completely():
    """The level's own proxies find nothing (12 in a row, then 6 from its edge) and the
    strongly heard node is covered, so the levels end; the completeness sweep searches it,
    finds the line's next node and follows the line hop by hop to its end: every node found
    and given a route through the strong node. Without the sweep the line stays unfound."""
    edges, quality, strong, far = _line_behind_a_strong_node()

    async def main(tuning):
        module, driver, mesh = await _round_mesh(edges, quality, tuning)
        done = await mesh.discover()
        routes = {f: mesh.topology.primary(f) for f in far if f in mesh.topology}
        await driver.close()
        return done.nodes, routes, module.searches
    nodes, routes, searches = run(main(EngineTuning(sweep_empty=5)))
    assert nodes == 20 + 1 + 3
    assert [routes[f].relays for f in far] == [(strong,), (strong, far[0]),
                                              (strong, far[0], far[1])]
    assert (strong,) in searches  # the covered node was searched by the sweep
    nodes, routes, _ = run(main(EngineTuning(sweep_empty=0)))
    assert nodes == 21 and routes == {}


def test_the_sweep_ends_after_its_empty_searches_in_a_row():
    """With nothing left to find, the sweep costs ``sweep_empty`` short searches and stops,
    even with more never-searched nodes left (here 10 covered ones)."""
    assert _covered_level(EngineTuning(sweep_empty=3)) == (14, 1 + 4 + 3)


# --- repair with reads in flight at once (issue 4) ------------------------------------------


def test_two_reads_in_flight_meet_one_dead_relay_and_share_one_repair():
    """Issue 4: meters ``a`` and ``b`` are read at once (a module with two read slots); both
    routes run through relay ``r``, which dies, and only a search from ``r``'s live
    neighbour ``s`` can find them again (no probe helps). The relay is checked once, one
    group repair makes one search for both, and both reads come back:
    the second read waits for the first one's check and repair instead of giving up."""
    async def main():
        r, s, a, b = addr(1), addr(2), addr(3), addr(4)
        conc, mod = MemoryLink.pair()
        module = GraphModule(mod, [(CCO, r), (CCO, s), (r, s), (r, a), (r, b)])
        driver = ModuleDriver(conc, comm_mode=COMM, cco_address=CCO, max_concurrent=2,
                              read_timeout=30.0)
        await driver.start()
        mesh = Mesh(driver, Topology(CCO), clock=LoopClock(datetime(2024, 3, 1)),
                    config=MeshConfig(probing=False),
                    tuning=EngineTuning(cover_quality=16, repair_probes=0,
                                        congestion_rounds=10_000))
        await mesh.discover()
        topo = mesh.topology
        assert topo.primary(a).relays == (r,) and topo.primary(b).relays == (r,)
        for x, y in ((r, s), (s, r)):  # a search heard r and s each other
            topo.observe(x, y, True, 12, t=mesh._now())
        for m in (a, b):              # s hears both meters; the mesh does not know it
            module.connect(s, m)
        module.dead.add(r)
        searches, reads = len(module.searches), len(module.reads)
        outs = await asyncio.gather(mesh.exchange(a, REQ), mesh.exchange(b, REQ))
        await mesh.wait_repairs()
        assert [o.ok for o in outs] == [True, True]
        assert all(o.relays == (s,) for o in outs)
        assert r in topo.presumed_dead
        # One check of r (relay_check_probes silent probes: straight from the CCO, along its
        # own route via s, from the CCO again), not one per read.
        assert [rl for m, rl, _ok in module.reads[reads:] if m == r] == [(), (s,), ()]
        assert module.searches[searches:] == [(s,)]  # one group repair, one search
        await driver.close()
    run(main())


class LossyModule(GraphModule):
    """A ``GraphModule`` that loses the next ``drops[node]`` reads of a node (a medium held by
    other reads and searches: the module's timeout runs out) though every link is alive."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drops: dict[str, int] = {}

    async def _read(self, f, unit) -> None:
        meter = f.destination
        if self.drops.get(meter, 0) > 0:
            self.drops[meter] -= 1
            await asyncio.sleep(0.2 * (len(f.relays) + 2))
            self.reads.append((meter, tuple(f.relays), False))
            self.send(g.deny(f.seq, 11, COMM, to=f))
            return
        await super()._read(f, unit)


def test_a_live_relay_that_misses_one_check_probe_is_not_declared_dead():
    """Issue 4 (2,040-meter feeder: 87 of 99 relays declared dead were alive, each on one
    probe lost to a busy medium, and their meters lost their routes): the read of ``m`` via
    its relay ``r`` and the first probe of ``r`` are lost. ``r`` answers the next check
    probe, so it keeps its links, ``m`` is read through it, and no repair search is made."""
    async def main():
        r, s, m = addr(1), addr(2), addr(3)
        conc, mod = MemoryLink.pair()
        module = LossyModule(mod, [(CCO, r), (CCO, s), (r, s), (r, m)])
        driver = ModuleDriver(conc, comm_mode=COMM, cco_address=CCO, max_concurrent=1,
                              read_timeout=30.0)
        await driver.start()
        mesh = Mesh(driver, Topology(CCO), clock=LoopClock(datetime(2024, 3, 1)),
                    config=MeshConfig(probing=False), tuning=EngineTuning(cover_quality=16))
        await mesh.discover()
        topo = mesh.topology
        assert topo.primary(m).relays == (r,)
        searches, reads = len(module.searches), len(module.reads)
        module.drops.update({m: 1, r: 1})
        out = await mesh.exchange(m, REQ)
        await mesh.wait_repairs()
        assert out.ok and out.relays == (r,)
        assert r not in topo.presumed_dead
        assert topo.primary(m).relays == (r,) and topo.primary(r) is not None
        assert [ok for x, _rl, ok in module.reads[reads:] if x == r] == [False, True]
        assert module.searches[searches:] == []
        await driver.close()
    run(main())


# --- how fast a dead relay is found (issue 4: every affected meter read again in 60 s) ------


def _read_behind_dead_relay(**tuning) -> tuple[float, list]:
    """``m``'s primary runs via ``a`` then ``r``, its alternates via ``b`` or ``s`` then ``r``;
    ``r`` dies, and its live neighbours hear ``m`` (the mesh does not know it). Returns the
    read's latency (it must come back) and the module's reads after the death."""
    async def main():
        a, b, r, s, m = addr(1), addr(2), addr(3), addr(4), addr(5)
        edges = [(CCO, a), (CCO, b), (CCO, s), (a, r), (b, r), (s, r), (r, m)]
        module, driver, mesh = await make(  # (two slots: a read and a check probe at once)
            edges, config=MeshConfig(probing=False), max_concurrent=2,
            tuning=EngineTuning(cover_quality=16, repair_probes=0, congestion_rounds=10_000,
                                **tuning))
        await mesh.discover()
        topo = mesh.topology
        for x, y in ((b, r), (r, b), (r, s), (s, r)):  # heard by searches, say
            topo.observe(x, y, True, 12, t=mesh._now())
        assert topo.primary(m).relays == (a, r)
        assert {rt.relays for rt in topo.routes(m)[1:]} == {(b, r), (s, r)}
        for x in (a, b, s):  # the repair's first search hears it, whichever it is
            module.connect(x, m)
        module.dead.add(r)
        reads = len(module.reads)
        out = await mesh.exchange(m, REQ)
        await mesh.wait_repairs()
        assert out.ok and len(out.relays) == 1
        assert r in topo.presumed_dead
        await driver.close()
        return out.latency, module.reads[reads:]
    return run(main())


def test_a_broken_primarys_relay_is_checked_while_its_alternate_is_tried():
    """The alternates of ``m`` share the dead relay ``r`` with its primary. The primary's
    relays are checked (outward from the CCO: ``a``, then ``r``) as soon as it fails, beside
    the alternates' attempts, not after them: the check's first probe ends before the first
    alternate's read does, and ``m`` is read sooner."""
    a, r, m = addr(1), addr(3), addr(5)

    def first_probe_and_alternates(reads) -> tuple[int, list[int]]:
        order = [(x, rl) for x, rl, _ok in reads]
        alternates = [i for i, (x, rl) in enumerate(order) if x == m and r in rl and rl != (a, r)]
        return order.index((a, ())), alternates
    early, reads = _read_behind_dead_relay()
    late, reads_late = _read_behind_dead_relay(early_relay_check=False)
    probe, alternates = first_probe_and_alternates(reads)
    assert len(alternates) == 2 and probe < alternates[0]
    probe, alternates = first_probe_and_alternates(reads_late)
    assert len(alternates) == 2 and probe > alternates[-1]
    assert early < late


def _two_dead_relays(**tuning) -> float:
    """Relays ``r1`` and ``r2`` are each the one known way to a meter; both die and their
    meters are read at once (two read slots). Returns when the slower read came back."""
    async def main():
        r1, r2, s, m1, m2 = addr(1), addr(2), addr(3), addr(4), addr(5)
        edges = [(CCO, r1), (CCO, r2), (CCO, s), (r1, s), (r2, s), (r1, m1), (r2, m2)]
        module, driver, mesh = await make(
            edges, config=MeshConfig(probing=False), max_concurrent=2,
            tuning=EngineTuning(cover_quality=16, repair_probes=0, congestion_rounds=10_000,
                                **tuning))
        await mesh.discover()
        topo = mesh.topology
        for x, y in ((r1, s), (s, r1), (r2, s), (s, r2)):
            topo.observe(x, y, True, 12, t=mesh._now())
        for m in (m1, m2):
            module.connect(s, m)
        module.dead.update((r1, r2))
        outs = await asyncio.gather(mesh.exchange(m1, REQ), mesh.exchange(m2, REQ))
        await mesh.wait_repairs()
        assert [o.ok for o in outs] == [True, True]
        assert {r1, r2} <= topo.presumed_dead.keys()
        await driver.close()
        return max(o.latency for o in outs)
    return run(main())


def test_the_checks_of_two_dead_relays_probe_side_by_side():
    """Two relays die at once: their checks' probes go out side by side (still never under a
    search), not one check's silent probes after the other's, so both meters are read again
    sooner."""
    beside = _two_dead_relays()
    in_turn = _two_dead_relays(checks_beside=False)
    assert beside < in_turn


def _live_relays_probed_in_check(**tuning) -> list[str]:
    """A chain of six relays to ``m``; the sixth dies. The live relays the check probed."""
    async def main():
        module, driver, mesh = await make(
            chain(7), config=MeshConfig(probing=False),
            tuning=EngineTuning(cover_quality=16, repair_probes=0, congestion_rounds=10_000,
                                **tuning))
        await mesh.discover()
        relays, m = [addr(i) for i in range(1, 7)], addr(7)
        assert mesh.topology.primary(m).relays == tuple(relays)
        module.dead.add(relays[-1])
        reads = len(module.reads)
        out = await mesh.exchange(m, REQ)
        await mesh.wait_repairs()
        assert not out.ok  # nothing else hears it
        assert set(mesh.topology.presumed_dead) == {relays[-1]}
        await driver.close()
        return [x for x, _rl, _ok in module.reads[reads:] if x in relays[:-1]]
    return run(main())


def test_a_long_routes_suspects_are_narrowed_down_by_halves():
    """The sixth relay of ``m``'s route dies. The check probes the route's middle relay, then
    the middle of what is left, and finds the first five alive with two probes, where one
    by one outward from the CCO it probed all five."""
    assert _live_relays_probed_in_check() == [addr(3), addr(5)]
    assert _live_relays_probed_in_check(bisect_relay_checks=False) == [addr(i)
                                                                       for i in range(1, 6)]


def _group_search_rounds(**tuning) -> tuple[int, list[str]]:
    """Relay ``r`` dies; its two meters are heard again by ``s``, which also hears five nodes
    no search found before (a round module reporting one answer a round). Returns after how
    many rounds the repair's search was stopped (if it was) and the strangers it found."""
    async def main():
        r, s, m1, m2 = addr(1), addr(2), addr(3), addr(4)
        strangers = [addr(i) for i in range(10, 15)]
        edges = [(CCO, r), (CCO, s), (r, s), (r, m1), (r, m2)]
        module, driver, mesh = await _round_mesh(
            edges, per_round=1,
            tuning=EngineTuning(cover_quality=16, repair_probes=0, congestion_rounds=10_000,
                                **tuning))
        await mesh.discover()
        topo = mesh.topology
        for x, y in ((r, s), (s, r)):
            topo.observe(x, y, True, 12, t=mesh._now())
        for u in strangers:
            module.adj.setdefault(u, set())
        for x in (m1, m2, *strangers):
            module.connect(s, x)
        module.dead.add(r)
        starts = len(module.starts)
        outs = [await mesh.exchange(m, REQ) for m in (m1, m2)]
        await mesh.wait_repairs()
        assert [o.ok and o.relays == (s,) for o in outs] == [True, True]
        assert len(module.starts) == starts + 1  # one search
        t0 = module.starts[starts]
        stops = [round((t - t0) / RoundModule.ROUND_S) for t in module.stops if t > t0]
        await driver.close()
        return stops, [a for a in strangers if a in topo]
    return run(main())


def test_a_repair_search_ends_once_the_nodes_it_is_for_have_answered():
    """The search for a dead relay's two meters is stopped once both answered (two rounds),
    not run on while strangers around the proxy answer one a round."""
    stops, strangers = _group_search_rounds()
    assert stops == [2] and strangers == []
    stops, strangers = _group_search_rounds(repair_search_wanted=False)
    assert stops == [] and len(strangers) == 5  # it ran until the module ended it


# --- formation: repeats of the CCO's own search (root_repeats) ------------------------------


def test_the_root_search_is_made_again_at_most_root_repeats_times():
    """The CCO hears 10 nodes, 4 answers a round, and the guard's cap is 4: each root search
    is stopped at the cap and made again (3 searches by default). With ``root_repeats=0``
    the CCO searches once and the 6 nodes left are found by the proxy that hears them."""
    from mesh.guard import GuardConfig, MeshGuard

    async def main(repeats):
        nodes = [addr(i) for i in range(1, 11)]
        edges = [(CCO, n) for n in nodes] + [(nodes[0], n) for n in nodes[1:]]
        tuning = EngineTuning(root_slices=4, root_repeats=repeats)
        module, driver, mesh = await _round_mesh(edges, tuning=tuning, per_round=4,
                                                 guard=MeshGuard(GuardConfig(flood_cap=4)))
        done = await mesh.discover()
        await driver.close()
        return done.nodes, sum(1 for p in module.searches if not p)

    assert run(main(4)) == (10, 3)
    assert run(main(0)) == (10, 1)


def test_engine_defaults_follow_the_modules_communication_mode():
    # Broadband (HPLC) and RF repeat the CCO's search once and sweep shorter; narrowband keeps
    # the long sweep it needs to find its last nodes (EngineTuning.for_comm_mode).
    hplc, npl = EngineTuning.for_comm_mode(3), EngineTuning.for_comm_mode(1)
    assert (hplc.root_repeats, hplc.sweep_empty) == (1, 120)
    assert (npl.root_repeats, npl.sweep_empty) == (EngineTuning().root_repeats, 250)
    assert npl.uncertain_probes == 0 and hplc.uncertain_probes == EngineTuning().uncertain_probes
    assert EngineTuning.for_comm_mode(10) == hplc and EngineTuning.for_comm_mode(None) == npl

    async def main():
        conc, _mod = MemoryLink.pair()
        tunings = []
        for mode in (3, 1):
            driver = ModuleDriver(conc, comm_mode=mode, cco_address=CCO)
            tunings.append(Mesh(driver, Topology(CCO), clock=LoopClock(datetime(2024, 3, 1)),
                                config=MeshConfig()).tuning)
        return tunings
    assert run(main()) == [hplc, npl]


def test_a_narrowband_mesh_weighs_signal_margin_less_than_an_hplc_one():
    # A narrowband hop costs far more airtime than an HPLC one: a strong detour must beat
    # a marginal direct hop by more (see RouteConfig.quality_weight).
    weights = {}
    for mode in (1, 3):
        driver = type("Driver", (), {"comm_mode": mode, "max_concurrent": 1})()
        mesh = Mesh(driver, Topology(CCO), clock=LoopClock(datetime(2024, 3, 1)))
        weights[mode] = mesh.topology.planner.cfg.quality_weight
    assert weights == {1: 2.5, 3: 5.0}


def test_a_repair_search_for_one_meter_waits_for_the_rounds_reads_to_pause():
    """A search fills the medium with answer rounds: started mid-round it failed the round's
    other reads. The search for one silent meter waits until the other reads pause; the read
    that asked for it waits for it and is not lost."""
    from dataclasses import replace

    async def main():
        r, m, x = addr(1), addr(3), addr(4)
        module, driver, mesh = await make([(CCO, r), (r, m), (CCO, x)],
                                          config=MeshConfig(probing=False))
        mesh.tuning = replace(mesh.tuning, repair_probes=0, congestion_rounds=10_000)
        await mesh.discover()
        loop = asyncio.get_running_loop()
        searched_at: list[float] = []
        search = module._search

        async def timed(path):
            searched_at.append(loop.time())
            await search(path)
        module._search = timed
        module.dead.add(m)  # silent for a while: its read fails, a repair search is due
        loop.call_later(5.0, module.dead.discard, m)
        round_end = loop.time() + 20.0

        async def round_of_reads() -> None:  # the rest of the round: x read back to back
            while loop.time() < round_end:
                assert (await mesh.exchange(x, REQ)).ok
        other = loop.create_task(round_of_reads())
        out = await mesh.exchange(m, REQ)
        await other
        await mesh.wait_repairs()
        await driver.close()
        return out, searched_at, round_end
    out, searched_at, round_end = run(main())
    assert out.ok and out.relays == (addr(1),)  # the read waited for the search, not lost
    assert searched_at and min(searched_at) >= round_end  # no search while the reads ran


def test_a_dead_relays_repair_searches_first_from_the_neighbour_that_heard_it_best():
    """Issue 4: relay ``r`` dies and leaves meter ``m`` with no route. Its neighbours ``s1``
    (heard at quality 3) and ``s2`` (heard at quality 14) are both live; only ``s2`` hears
    ``m``. Declaring ``r`` dead marked every link of it down at once, which says nothing of
    how well each neighbour heard it: the group repair still searches from ``s2`` first,
    not from the lowest address."""

    async def main():
        r, s1, s2, m = addr(9), addr(2), addr(5), addr(7)
        edges = [(CCO, r), (CCO, s1), (CCO, s2), (r, s1), (r, s2), (r, m)]
        module, driver, mesh = await formed_for_repair(edges)
        topo = mesh.topology
        assert topo.primary(m).relays == (r,)
        for x, y, q in ((r, s1, 3), (s1, r, 3), (r, s2, 14), (s2, r, 14)):
            topo.observe(x, y, True, q, t=mesh._now())
        module.connect(s2, m)
        assert await searches_after_relay_dies(module, mesh, r, m) == [(s2,)]
        assert topo.primary(m).relays == (s2,)
        await driver.close()
    run(main())


def test_a_repair_passes_over_proxies_it_cannot_reach_and_searches_from_one_it_can():
    """Issue 4: relay ``r`` dies and leaves meter ``m`` with no route. Its best-heard
    neighbours ``s1``-``s3`` can no longer be reached from the CCO (the mesh does not know
    it yet); ``s4`` can, and hears ``m``. A search command that does not reach its proxy ends
    at once as if nothing were heard: the repair probes each proxy not seen lately first,
    passes over the silent ones and makes its one search from ``s4``."""

    async def main():
        r, m = addr(9), addr(8)
        near = [addr(1), addr(2), addr(3)]
        s4 = addr(4)
        edges = [(CCO, r), (CCO, s4), (r, s4), (r, m),
                 *((CCO, s) for s in near), *((r, s) for s in near)]
        module, driver, mesh = await formed_for_repair(edges)
        topo = mesh.topology
        assert topo.primary(m).relays == (r,)
        for s, q in ((near[0], 14), (near[1], 14), (near[2], 14), (s4, 5)):
            for x, y in ((r, s), (s, r)):
                topo.observe(x, y, True, q, t=mesh._now())
        await asyncio.sleep(600)  # nobody read for ten minutes
        for s in near:
            module.cut(CCO, s)
        module.connect(s4, m)
        assert await searches_after_relay_dies(module, mesh, r, m) == [(s4,)]
        assert topo.primary(m).relays == (s4,)
        await driver.close()
    run(main())


def test_a_meter_not_heard_around_its_dead_relay_is_searched_for_further_out():
    """Issue 4: relay ``r`` dies; its meter ``m`` is heard by no node ever linked to it, only
    by ``t``, a neighbour of ``r``'s neighbour ``s``. The searches around ``r`` (from ``s``
    and the CCO) hear nothing; the meter's own repair then searches the next circle out
    instead of giving up, hears ``m`` from ``t``, and ``m`` is read again."""

    async def main():
        r, s, t, m = addr(1), addr(2), addr(3), addr(4)
        edges = [(CCO, r), (CCO, s), (r, s), (r, m), (s, t)]
        module, driver, mesh = await formed_for_repair(edges)
        topo = mesh.topology
        assert topo.primary(m).relays == (r,) and topo.primary(t).relays == (s,)
        for x, y in ((r, s), (s, r)):  # a search heard r and s each other
            topo.observe(x, y, True, 12, t=mesh._now())
        module.connect(t, m)
        module.dead.add(r)
        await mesh.exchange(m, REQ)
        await mesh.wait_repairs()
        assert (s, t) in module.searches
        out = await mesh.exchange(m, REQ)
        assert out.ok and out.relays == (s, t)
        await driver.close()
    run(main())


def test_an_orphan_linked_only_by_failed_probes_is_searched_for_beside_its_dead_relay():
    """Issue 4: relay ``r`` (level 2, behind ``p``) dies; its meter ``m`` is heard by ``t``,
    ``r``'s sibling under ``p``, which the mesh never linked to ``m`` or ``r``. ``m``'s other
    links are failed alternates probes through six level-1 nodes far away (quality 0): they
    say nothing of where ``m`` stands. The repair searches from ``r``'s parent, then from
    the nodes next to it (``t``) instead of the probed ones, and the read that found ``r``
    dead comes back through ``t`` (1,000-meter hplc feeder: 12 orphans searched for only
    from such nodes stayed unread)."""

    async def main():
        p, r, t, m = addr(1), addr(2), addr(3), addr(4)
        far = [addr(10 + i) for i in range(6)]
        edges = [(CCO, p), (p, r), (p, t), (r, m), *((CCO, d) for d in far)]
        module, driver, mesh = await formed_for_repair(edges)
        topo = mesh.topology
        assert topo.primary(m).relays == (p, r) and topo.primary(t).relays == (p,)
        for d in far:  # alternates probes of m through d failed (quality 0 reported)
            for x, y in ((d, m), (m, d)):
                topo.observe(x, y, False, 0, t=mesh._now())
        module.connect(t, m)
        module.dead.add(r)
        before = len(module.searches)
        out = await mesh.exchange(m, REQ)
        await mesh.wait_repairs()
        assert out.ok and out.relays == (p, t)
        searches = module.searches[before:]
        assert (p, t) in searches and not any(s[-1] in far for s in searches if s)
        await driver.close()
    run(main())


def test_the_cco_is_searched_from_for_a_node_near_it_not_for_one_three_hops_out():
    """A failed probe straight from the CCO says nothing of whether the CCO's own search
    hears a node: for a level-2 node the CCO stays a repair proxy, for a level-3 node it
    does not (its search would be one more empty one before the nodes around it)."""
    async def main():
        module, driver, mesh = await formed_for_repair(chain(3))
        topo = mesh.topology
        near, far = addr(2), addr(3)
        for m in (near, far):
            for x, y in ((CCO, m), (m, CCO)):
                topo.observe(x, y, False, 0, t=mesh._now())
        assert CCO in mesh._search_proxies(near)
        assert CCO not in mesh._search_proxies(far)
        assert addr(2) in mesh._search_proxies(far)
        await driver.close()
    run(main())


# --- a replaced meter, fruitless repairs, a full slave archive (issue 4) --------------------

class FullModule(GraphModule):
    """A GraphModule whose slave archive holds ``CAPACITY`` slaves: an add beyond it is denied
    with error 9, as the simulated (Triductor) module does, and 10 F1 gives the count."""

    CAPACITY = 2

    def __init__(self, link, edges, collectors=None) -> None:
        super().__init__(link, edges, collectors)
        self.adds = 0  # AFN11 F1 frames received
        self.refused = 0  # ... denied: the archive was full

    def handle(self, f) -> None:
        if (f.afn, f.fn) == (0x11, 1):
            self.adds += 1
            for a, p in g.decode_data_unit(f).slaves:
                if a not in self.archive and len(self.archive) >= self.CAPACITY:
                    self.refused += 1
                    self.send(g.deny(f.seq, 9, COMM))
                    return
                self.archive[a] = p
            self.send(g.confirm(f.seq, COMM))
        elif (f.afn, f.fn) == (0x10, 1):
            self.send(g.reply(0x10, 1, f.seq, COMM,
                              g.SlaveCount(len(self.archive), self.CAPACITY)))
        else:
            super().handle(f)


async def _replaced_in_a_full_module():
    """``old`` behind ``relay`` replaced by ``new`` at its spot, the module's archive full
    (relay and old); ``old``'s failed read found ``new``."""
    relay, old, new = addr(1), addr(2), addr(77)
    events = []
    module, driver, mesh = await make([(CCO, relay), (relay, old), (relay, new)],
                                      events=events, module_cls=FullModule,
                                      config=MeshConfig(probing=False))
    module.dead.add(new)
    await mesh.discover([relay, old])
    assert set(module.archive) == {relay, old}
    module.dead.add(old)
    module.dead.discard(new)
    assert not (await mesh.exchange(old, REQ)).ok
    await mesh.wait_repairs()
    found = [e for e in events if isinstance(e, MeterReplacementFound)]
    assert [(e.old, e.new, e.near) for e in found] == [(old, new, relay)]
    return relay, old, new, events, module, driver, mesh


def test_a_replaced_meter_leaves_the_full_module_and_its_reads_fail_at_once_with_the_reason():
    """Issue 4 (2,040-meter hplc trial): the module holds as many slaves as the district has
    meters. Once the mesh has found the replacement, the old meter leaves the module's
    archive and the new one has its slot; the old one is not registered back nor searched
    for, and a read of it fails at once, with no radio, saying which meter replaced it
    (before: every repair registered it back, refused, and searched for it again)."""
    async def main():
        relay, old, new, events, module, driver, mesh = await _replaced_in_a_full_module()
        assert set(module.archive) == {relay, new} and mesh.replaced_by(old) == new
        assert (await mesh.exchange(new, REQ)).ok
        adds, searches = module.adds, len(module.searches)
        reads = len([x for x in module.reads if x[0] == old])
        for _ in range(3):
            out = await mesh.exchange(old, REQ)
            assert not out.ok and out.failure == f"replaced by {new}" and out.attempts == 0
            await mesh.wait_repairs()
            await asyncio.sleep(700)  # past every repair hold-off
        assert len([x for x in module.reads if x[0] == old]) == reads
        assert (module.adds, len(module.searches)) == (adds, searches)
        assert module.refused == 0
        # It ages out like any silent node, and is then unknown to the mesh.
        later = mesh._now() + mesh.config.node_silence_timeout + 1
        assert old in await mesh.age(later)
        assert (await mesh.exchange(old, REQ)).failure == "unknown meter"
        await driver.close()
    run(main())


def test_a_restart_remembers_the_replaced_meter_and_the_repairs_held_off(tmp_path):
    """Issue 4: the mesh found ``old`` replaced by ``new``, and a repair of ``gone`` found
    nothing. After a restart from the saved state, a read of ``old`` still fails at once
    with the reason (no radio, no search), ``old`` is not registered back with the module,
    and ``gone`` gets no new repair before its hold-off ends."""
    async def main():
        relay, old, new, events, module, driver, mesh = await _replaced_in_a_full_module()
        db = sqlite_utils.Database(tmp_path / "mesh.db")
        mesh.db = db
        gone = relay  # silent from now on: its repair finds nothing and is held off
        module.dead.add(gone)
        await mesh.repair(gone, probes=False)
        held = mesh._repair_backoff[gone]
        assert mesh.save()
        await driver.close()
        conc, mod = MemoryLink.pair()
        module2 = FullModule(mod, [(CCO, relay), (relay, old), (relay, new)])
        module2.archive.update(module.archive)
        module2.dead.update(module.dead)
        driver2 = ModuleDriver(conc, comm_mode=COMM, cco_address=CCO, read_timeout=30.0)
        await driver2.start()
        again = Mesh.restore(driver2, db, clock=LoopClock(datetime(2024, 3, 1)),
                             config=MeshConfig(probing=False))
        assert again.replaced_by(old) == new
        assert again._repair_backoff[gone] == held
        out = await again.exchange(old, REQ)
        assert not out.ok and out.failure == f"replaced by {new}" and out.attempts == 0
        assert again._start_repair(gone) is None  # held off as before the restart
        await again.wait_repairs()
        assert module2.reads == [] and module2.searches == [] and module2.adds == 0
        await driver2.close()
    run(main())


def test_a_replaced_meter_heard_again_is_a_node_of_the_mesh_again():
    """Issue 4: the meter taken for replaced was only off. Heard again (here: a search from
    its relay reports it), its reads go out again and it is back in the module's archive."""
    async def main():
        relay, old, new, events, module, driver, mesh = await _replaced_in_a_full_module()
        FullModule.CAPACITY = 3
        try:
            assert (await mesh.exchange(old, REQ)).failure == f"replaced by {new}"
            module.dead.discard(old)
            await asyncio.sleep(10)
            mesh.topology.observe(relay, old, True, 12, t=mesh._now())  # a search heard it
            mesh.topology.observe(old, relay, True, 12, t=mesh._now())
            assert mesh.replaced_by(old) is None
            out = await mesh.exchange(old, REQ)
            assert out.ok and out.relays == (relay,)
            assert set(module.archive) == {relay, old, new}
        finally:
            FullModule.CAPACITY = 2
        await driver.close()
    run(main())


def test_a_full_slave_archive_is_not_asked_again_on_every_repair(caplog):
    """Issue 4: with the module's archive full (2 slaves), the third node of a chain is
    refused (AFN11 F1, error 9; the slave count says full). It goes silent; each of its
    repairs takes it out of the module (it is not there) and searches: none asks to add it
    again, the module sees one refused add, and the log says why once."""
    async def main():
        a, b, c = addr(1), addr(2), addr(3)
        module, driver, mesh = await make(chain(3), module_cls=FullModule,
                                          config=MeshConfig(probing=False))
        mesh.tuning = dataclasses.replace(mesh.tuning, congestion_rounds=10_000)
        with caplog.at_level(logging.WARNING, logger="mesh.engine"):
            await mesh.discover()
            assert set(module.archive) == {a, b} and module.refused == 1
            module.dead.add(c)  # silent: each repair searches for it, then registers it
            for _ in range(3):
                await mesh.repair(c)
                await asyncio.sleep(700)
        assert module.refused == 1
        full = [r for r in caplog.records if "slave archive full" in r.getMessage()]
        assert len(full) == 1 and c in full[0].getMessage()
        await driver.close()
    run(main())


def test_a_node_whose_repairs_find_nothing_is_repaired_less_and_less_often(caplog):
    """Issue 4: meter ``m`` is gone and nothing answers at its spot. Read every 30 s for an
    hour (a night of make-up passes), it does not get a repair (probes, searches holding
    the medium) after every read: each repair that found nothing doubles the hold-off
    (60, 120, 240 ... s), and the log says so."""
    from mesh.events import RepairDone

    async def main():
        r, s, m = addr(1), addr(2), addr(3)
        events = []
        module, driver, mesh = await make([(CCO, r), (CCO, s), (r, s), (r, m)], events=events,
                                          config=MeshConfig(probing=False))
        mesh.tuning = dataclasses.replace(mesh.tuning, congestion_rounds=10_000)
        await mesh.discover()
        module.dead.add(m)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with caplog.at_level(logging.WARNING, logger="mesh.engine"):
            while loop.time() - t0 < 3600:
                assert not (await mesh.exchange(m, REQ)).ok
                await mesh.wait_repairs()
                await asyncio.sleep(30)
        repairs = [e for e in events if isinstance(e, RepairDone) and e.address == m]
        assert repairs and not any(e.reachable for e in repairs)
        assert len(repairs) <= 7
        said = [r.getMessage() for r in caplog.records if "found nothing" in r.getMessage()]
        assert said[:3] == [f"mesh: repair of {m} found nothing ({i} in a row): no repair "
                            f"for {60 * 2 ** (i - 1)} s" for i in (1, 2, 3)]
        await driver.close()
    run(main())


# --- exploring for a stronger primary (issue 4): known answers ------------------------------

def _known_mesh(edges, known):
    """A mesh whose topology already knows ``known`` (a, b, quality) both ways, every node
    approved; the module's radio is ``edges``."""
    async def build():
        module, driver, mesh = await make(edges)
        topo = mesh.topology
        for a, b, q in known:
            for x in (a, b):
                if x != CCO:
                    topo.add_node(x, status="approved", phase=1)
            for _ in range(3):
                topo.observe(a, b, True, quality=q, t=0.0)
                topo.observe(b, a, True, quality=q, t=0.0)
        return module, driver, mesh
    return build()


# R-A-B-N is N's primary with a weak last hop (quality 5); R-C-D-N and R-A-E-N are its
# alternates (as weak): N keeps looking for a stronger primary.
_N = addr(9)
_A, _B, _C, _D, _E, _J = (addr(i) for i in (1, 2, 3, 4, 5, 8))
_WEAK = [(CCO, _A, 12), (_A, _B, 12), (_B, _N, 5), (CCO, _C, 12), (_C, _D, 12), (_D, _N, 5),
         (_A, _E, 12), (_E, _N, 5)]


def test_a_candidate_whose_own_route_costs_more_than_the_primary_is_not_probed():
    # J hears N, but J's own route R-C-D-J has a weaker hop (quality 4) than N's primary:
    # no route through J can be stronger, so the probe is not made.
    async def main():
        edges = [(a, b) for a, b, _q in _WEAK] + [(_D, _J), (_J, _N)]
        module, driver, mesh = await _known_mesh(edges, [*_WEAK, (_D, _J, 4)])
        topo = mesh.topology
        assert topo.primary(_J).cost > topo.primary(_N).cost
        assert _J in mesh._candidates(_N)
        await mesh._find_alternates(_N)
        assert not [relays for meter, relays, _ok in module.reads if _J in relays]
        await driver.close()
    run(main())


def test_the_relay_heard_alike_is_probed_before_one_earlier_by_address():
    # N's primary R-A-N has a weak last hop (quality 5). D1..D3 and W are one hop from the
    # CCO and heard by A: W as weakly as N (the two are heard alike: they stand together),
    # the Ds strongly (they stand by A). Two Ds carry N's alternates through A; with one
    # candidate probe, W is the one tried (D3 comes first by address) and N's primary moves
    # to R-W-N.
    n, a, w = addr(9), addr(1), addr(5)
    ds = [addr(i) for i in (2, 3, 4)]
    known = [(CCO, a, 12), (a, n, 5), (CCO, w, 12), (a, w, 5)]
    known += [k for x in ds for k in ((CCO, x, 12), (a, x, 14))]

    async def main():
        edges = [(x, y) for x, y, _q in known] + [(w, n)]
        module, driver, mesh = await _known_mesh(edges, known)
        mesh.tuning = dataclasses.replace(mesh.tuning, probes_per_node=2)
        topo = mesh.topology
        assert topo.primary(n).relays == (a,)
        await mesh._find_alternates(n)
        assert not [relays for _m, relays, _ok in module.reads if ds[2] in relays]
        assert topo.primary(n).relays == (w,)
        await driver.close()
    run(main())


def test_a_relay_that_can_give_a_stronger_primary_is_probed_before_one_heard_more_alike():
    # N's primary R-A-N has a weak last hop (quality 5); the CCO hears N barely (2). W1 is
    # heard by A as N is (alike) but its own routes carry a hop as weak: no route through it
    # beats the primary. W2, heard by the CCO at 12, is less alike but could: it is the one
    # probed, and N's primary moves to R-W2-N.
    n, a, w2, e, w1 = addr(9), addr(1), addr(2), addr(3), addr(4)
    known = [(CCO, a, 12), (a, n, 5), (CCO, n, 2), (CCO, w2, 12), (CCO, e, 12), (e, w1, 5),
             (a, w1, 5)]

    async def main():
        edges = [(x, y) for x, y, _q in known] + [(w2, n), (w1, n)]
        module, driver, mesh = await _known_mesh(edges, known)
        mesh.tuning = dataclasses.replace(mesh.tuning, probes_per_node=1)
        topo = mesh.topology
        assert topo.unlikeness(n)[w1] < topo.unlikeness(n)[w2]
        await mesh._find_alternates(n)
        assert not [relays for _m, relays, _ok in module.reads if w1 in relays]
        assert topo.primary(n).relays == (w2,)
        await driver.close()
    run(main())


def test_a_weak_primarys_siblings_behind_the_same_marginal_hop_are_probed_last():
    # N's primary R-A-N starts with a marginal hop (the CCO hears A at quality 6). S, behind
    # A too, is heard by A most like N and its own route looks cheaper than N's; W, heard by
    # the CCO at 12, is less alike. With one candidate probe, W is the one tried (a route
    # through S keeps the marginal hop) and N's primary moves to R-W-N.
    n, a, s, w = addr(9), addr(1), addr(2), addr(3)
    known = [(CCO, a, 6), (a, n, 10), (CCO, n, 2), (a, s, 11), (CCO, w, 12), (a, w, 4)]

    async def main():
        edges = [(x, y) for x, y, _q in known] + [(w, n), (s, n)]
        module, driver, mesh = await _known_mesh(edges, known)
        mesh.tuning = dataclasses.replace(mesh.tuning, probes_per_node=1)
        topo = mesh.topology
        assert topo.primary(n).relays == (a,)
        assert topo.primary(s).cost < topo.primary(n).cost - 0.5
        alike = topo.unlikeness(n)
        assert alike[s] < alike[w]
        await mesh._find_alternates(n)
        assert not [relays for _m, relays, _ok in module.reads if s in relays]
        assert topo.primary(n).relays == (w,)
        await driver.close()
    run(main())


def test_no_search_from_a_node_15_relays_out():
    """What a node 15 relays out hears would come back over 16 relays, more than a 1376.2
    frame's 4-bit relay level can name: the end of a 16-hop chain is read, never searched
    from (a repair's proxy whose route grew that long while its search waited is skipped)."""
    async def main():
        module, driver, mesh = await make(chain(16))
        await mesh.discover()
        end = addr(16)
        assert len(mesh.topology.primary(end).relays) == 15
        assert (await mesh.exchange(end, REQ)).ok
        assert all(path[-1:] != (end,) for path in module.searches)
        before = len(module.searches)
        assert await mesh._search_from(end, 17, True) == []
        assert len(module.searches) == before
        await driver.close()
    run(main())


@pytest.mark.parametrize("survey", [False, True])
def test_a_survey_learns_the_hop_between_relays_that_formation_never_heard(survey):
    # N is found from A (A is searched first) and registered, so B's search never hears it.
    # By day the hop A-N breaks: after the survey (searches from the relays A and B with
    # their neighbours out of the module's archive) the mesh knows B-N and the read goes
    # round at once; without it, N's every known route fails first. (No probing for alternates:
    # in a district this small it would try every relay.)
    A, B, N, M = addr(1), addr(2), addr(3), addr(4)
    edges = [(CCO, A), (CCO, B), (A, N), (B, N), (B, M)]

    async def main():
        module, driver, mesh = await make(edges, tuning=EngineTuning(
            cover_quality=16, survey=survey, probes_per_node=0, uncertain_probes=0))
        await mesh.discover()
        await mesh.wait_alternates()
        topo = mesh.topology
        assert topo.primary(N).relays == (A,)
        assert topo.primary(M).relays == (B,)
        assert topo.graph.has_edge(B, N) is survey
        assert ((B,) in [r.relays for r in topo.routes(N)]) is survey
        # Every node is back in the module's archive after the survey.
        assert set(module.archive) == {A, B, N, M}
        module.cut(A, N)
        out = await mesh.exchange(N, REQ)
        assert out.ok and out.relays == (B,)
        # After the survey B was N's alternate before the hop broke: the read's second
        # attempt. Without it B was nowhere in N's routes: the recovery had to find it.
        assert (out.attempts == 2 and out.latency_s < 2.0) is survey
        await mesh.wait_repairs()
        await driver.close()
    run(main())


def test_the_upkeep_surveys_again_after_a_week_and_a_restart_does_not():
    A, B, N, M = addr(1), addr(2), addr(3), addr(4)
    edges = [(CCO, A), (CCO, B), (A, N), (B, M)]
    tuning = EngineTuning(cover_quality=16, probes_per_node=0, uncertain_probes=0,
                          survey_every_s=7 * 86400)

    async def main():
        db = sqlite_utils.Database(memory=True)
        module, driver, mesh = await make(edges, tuning=tuning, db=db)
        await mesh.discover()
        await mesh.wait_alternates()
        relays_searched = [p for p in module.searches if p in ((A,), (B,))]
        assert len(relays_searched) == 4  # formation's two, the survey's two
        mesh.save()
        async def read_all():  # (a week's reads: a node silent that long is aged out)
            for x in (N, M):
                assert (await mesh.exchange(x, REQ)).ok
        await asyncio.sleep(6 * 86400)
        await read_all()
        await mesh.maintain()
        assert mesh._survey_task is None
        # A meter added since (a new house) is heard by the survey's search from B.
        module.adj[addr(5)] = set()
        module.connect(B, addr(5))
        await asyncio.sleep(86400)
        await read_all()
        await mesh.maintain()
        assert await mesh._survey_task == 2
        assert addr(5) in mesh.topology and mesh.topology.primary(addr(5)).relays == (B,)
        assert set(module.archive) == {A, B, N, M, addr(5)}
        await driver.close()
        # Restored from the store, the mesh counts the restart as its last survey.
        module, driver, mesh = await make(edges, tuning=tuning, db=db, topo="restore")
        mesh.tuning = tuning
        await mesh.maintain()
        assert mesh._survey_task is None
        await driver.close()
    run(main())


class StoppableModule(GraphModule):
    """A GraphModule whose search ends at the stop command (AFN11 F6), as a module's does."""

    def handle(self, f) -> None:
        if (f.afn, f.fn) == (0x11, 5):
            path = (*f.relays, f.destination) if f.info.module and f.destination else ()
            self.search_task = asyncio.get_running_loop().create_task(self._search(path))
            self.send(g.confirm(f.seq, COMM))
        elif (f.afn, f.fn) == (0x11, 6):
            task = getattr(self, "search_task", None)
            if task is not None:
                task.cancel()
            self.send(g.confirm(f.seq, COMM))
        else:
            super().handle(f)


def _orphans_heard_away_from_their_relay(**tuning) -> tuple[list, list, list, float]:
    """Relay ``r`` dies, leaving meters m1 and m2 with no route. Four live nodes hear ``r``
    well (the group repair's first proxies) but not the meters; ``w``, a node m1 was once
    heard with faintly, hears both. The searches after the death, the reads' relays, and
    the reads' outcomes."""
    from dataclasses import replace

    async def main():
        r, w = addr(1), addr(9)
        m1, m2 = addr(20), addr(21)
        near = [addr(i) for i in (2, 3, 4, 5)]
        edges = [(CCO, r), (CCO, w), (r, m1), (r, m2), *((CCO, n) for n in near),
                 *((r, n) for n in near)]
        module, driver, mesh = await make(edges, config=MeshConfig(probing=False),
                                          module_cls=StoppableModule)
        mesh.tuning = replace(mesh.tuning, congestion_rounds=10_000, repair_probes=0,
                              **tuning)
        await mesh.discover()
        topo = mesh.topology
        assert all(topo.primary(m).relays == (r,) and len(topo.routes(m)) == 1
                   for m in (m1, m2))
        t = mesh._now()
        for n in near:
            topo.observe(r, n, True, 14, t=t)
            topo.observe(n, r, True, 14, t=t)
        topo.observe(w, m1, False, 1, t=t)  # heard once, faintly: no route through it
        module.connect(w, m1)
        module.connect(w, m2)
        module.dead.add(r)
        before = len(module.searches)
        t0 = asyncio.get_running_loop().time()
        outs = await asyncio.gather(*(mesh.exchange(m, REQ) for m in (m1, m2)))
        took = asyncio.get_running_loop().time() - t0
        await mesh.wait_repairs()
        return module.searches[before:], [o.relays for o in outs], [o.ok for o in outs], took
    return run(main())


def test_orphans_a_group_search_missed_are_searched_for_together_from_their_own_neighbours():
    """Issue 4, repair: the group repair's searches round the dead relay hear neither orphan;
    the next searches go from the orphans' own neighbours and still look for both, so the
    search from ``w`` brings both back (each repaired alone: a search per orphan, the second
    after the first was done, each read holding a read slot meanwhile)."""
    w = addr(9)
    searches, relays, ok, took = _orphans_heard_away_from_their_relay()
    assert ok == [True, True] and relays == [(w,), (w,)]
    assert len(searches) == 6 and searches[-1] == (w,)
    searches_alone, _relays, ok, took_alone = _orphans_heard_away_from_their_relay(
        group_own_proxies=False)
    assert ok == [True, True] and len(searches_alone) == 9  # w's twice, and others
    assert took < took_alone


def _second_read_behind_a_relay_under_check(**tuning) -> tuple:
    """Meters ``a`` and ``b`` hang off relay ``r2`` (CCO > r1 > r2), with a weaker known way
    through ``s``. ``r2`` dies; ``a`` is read (its primary fails, the check of the relay
    starts, ``s`` carries the read) and ``b`` right after, while the check still runs.
    Returns b's outcome and whether r2 ended presumed dead."""
    async def main():
        r1, r2, s, a, b = addr(1), addr(2), addr(3), addr(4), addr(5)
        module, driver, mesh = await make(
            [(CCO, r1), (r1, r2), (r2, a), (r2, b), (CCO, s)],
            config=MeshConfig(probing=False),
            tuning=EngineTuning(cover_quality=16, repair_probes=0, congestion_rounds=10_000,
                                **tuning))
        await mesh.discover()
        topo = mesh.topology
        t = mesh._now()
        for m in (a, b):
            module.connect(s, m)
            topo.observe(s, m, True, 7, t=t)
            topo.observe(m, s, True, 7, t=t)
        assert all(topo.primary(m).relays == (r1, r2) for m in (a, b))
        assert all(topo.route_for(m, avoid={r2}).relays == (s,) for m in (a, b))
        module.dead.add(r2)
        first = await mesh.exchange(a, REQ)
        assert first.ok and first.attempts == 2
        second = await mesh.exchange(b, REQ)
        await mesh.wait_repairs()
        dead = r2 in topo.presumed_dead
        await driver.close()
        return second, dead
    return run(main())


def test_a_read_goes_round_a_relay_under_check():
    """Issue 4, repair: while a failed read's relays are being checked (a timeout per silent
    probe), the next read through them takes its best route round them, and is answered on
    its first try instead of losing a timeout on the dead relay."""
    second, dead = _second_read_behind_a_relay_under_check()
    assert second.ok and second.attempts == 1 and second.relays == (addr(3),)
    assert dead
    second, dead = _second_read_behind_a_relay_under_check(avoid_checked_relays=False)
    assert second.ok and second.attempts == 2 and dead


def test_a_read_waiting_for_a_repair_lends_its_read_slot():
    """Issue 4/5: with one read slot, meter ``a`` behind dead relay ``r`` waits for the
    group repair (a search from ``s``); meter ``c``, queued behind it, is read meanwhile
    instead of waiting for that repair too. A caller that holds its slot the plain way
    (no ``holding_read_slot``) keeps ``c`` waiting."""
    from mesh.slots import holding_read_slot

    async def reads(lend: bool) -> list[str]:
        r, s, a, c = addr(1), addr(2), addr(3), addr(4)
        module, driver, mesh = await make([(CCO, r), (CCO, s), (r, s), (r, a), (CCO, c)],
                                          config=MeshConfig(probing=False),
                                          tuning=EngineTuning(cover_quality=16,
                                                              repair_probes=0,
                                                              congestion_rounds=10_000))
        await mesh.discover()
        for x, y in ((r, s), (s, r)):
            mesh.topology.observe(x, y, True, 12, t=mesh._now())
        module.connect(s, a)
        module.dead.add(r)
        pool = asyncio.Semaphore(1)
        done: list[str] = []

        async def read(m: str) -> None:
            if lend:
                async with holding_read_slot(pool.acquire, pool.release):
                    out = await mesh.exchange(m, REQ)
            else:
                async with pool:
                    out = await mesh.exchange(m, REQ)
            assert out.ok
            done.append(m)
        await asyncio.gather(read(a), read(c))
        await mesh.wait_repairs()
        await driver.close()
        return done

    assert run(reads(lend=True)) == [addr(4), addr(3)]
    assert run(reads(lend=False)) == [addr(3), addr(4)]


def test_a_read_cancelled_while_its_slot_is_lent_ends_at_once_and_keeps_the_pool_whole():
    """The daemon stopping cancels a read that waits for a repair with its slot lent: it ends
    at once (it does not wait for a slot first) and leaves the pool's count as it was."""
    from mesh.slots import holding_read_slot, released_while_waiting

    async def main():
        pool = asyncio.Semaphore(1)
        lent = asyncio.Event()

        async def waiting_read():
            async with holding_read_slot(pool.acquire, pool.release):
                async with released_while_waiting():
                    lent.set()
                    await asyncio.sleep(3600)

        read = asyncio.create_task(waiting_read())
        await lent.wait()
        await pool.acquire()  # another read takes the lent slot and keeps it
        read.cancel()
        await asyncio.wait({read}, timeout=1.0)
        ended = read.done()
        pool.release()
        with contextlib.suppress(asyncio.CancelledError):
            await read
        return ended, pool._value

    ended, free = run(main())
    assert ended and free == 1
