"""The concentrator daemon: one asyncio process wiring module driver, mesh, reader, store, uplink.

Loops and what keeps each alive (the systemd watchdog pings only while all four beat):

* ``serial``: the module supervisor. Opens the module port, starts the driver, restores the
  mesh from the store (or discovers the district from an empty archive), confirms module
  reports; when the port is missing or dies it reports the fault once, keeps the rest of the
  daemon serving, and reconnects with capped backoff.
* ``scheduler``: the reader's schedule (daily frozen, curves, events, clock, relay state).
* ``store``: periodic store upkeep (retention, backup).
* ``uplink``: the Q/GDW 1376.1 client to the master station.

SIGTERM stops taking work, cancels in-flight reads (a round keeps what it committed), saves the
mesh, closes the store. SIGHUP reloads what can change without a restart (archive, schedule,
thresholds). The control socket serves the field engineer's CLI (``docs/control-protocol.md``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from concentrator import __version__, dlt645
from concentrator import config as cfgmod
from concentrator.archive import primary_relays, register_found
from concentrator.audit import AuditLog
from concentrator.clock import Clock
from concentrator.config import Config
from concentrator.control import CommandError, ControlServer, StreamResult, audit_handler
from concentrator.keystore import FileKeyStore, KeyStore, KeyStoreError, MemoryKeyStore
from concentrator.meter_clock import MeterClock
from concentrator.notify import Notifier, Watchdog
from concentrator.prepay import (
    ControlTicket,
    PrepayError,
    PrepayService,
    PurchaseRecord,
    PurchaseResult,
)
from concentrator.reader import Exchanged, Reader, ReaderError
from concentrator.store import MeterRecord, RealtimeReading, Store, StoreError
from concentrator.summary_meter import SummaryMeter
from concentrator.tasks import default_tasks
from mesh.engine import Mesh
from mesh.events import MeterReplacementFound, NodeFound, UnknownMeter
from mesh.guard import RogueSuspected
from mesh.topology import Topology
from plc_driver.driver import ModuleDriver
from plc_driver.link import ByteLink, LinkClosed, SerialLink
from uplink import gdw13761, security
from uplink.client import UplinkClient

log = logging.getLogger(__name__)

COMM_MODES = {"npl": 1, "hplc": 3, "rf": 10, "dual": 3}
PROTOCOL_CODES = {"dlt645-1997": 1, "dlt645-2007": 2}
MAINTAIN_PERIOD_S = 3600.0  # mesh upkeep: ageing, probing uncertain routes, relief, saving
BEAT_PERIOD_S = 5.0


class _FaultLog:
    """Log the first failure of a kind once, stay quiet while it lasts, log when it clears."""

    def __init__(self) -> None:
        self._active: dict[str, str] = {}

    def fail(self, kind: str, message: str) -> None:
        if kind not in self._active:
            log.error("%s: %s", kind, message)
        self._active[kind] = message

    def recovered(self, kind: str) -> None:
        if self._active.pop(kind, None) is not None:
            log.warning("%s: recovered", kind)

    @property
    def active(self) -> dict[str, str]:
        return dict(self._active)


class Daemon:
    """Everything the concentrator runs; ``await run(stop)`` until ``stop`` is set."""

    def __init__(self, config: Config, *, clock: Clock, notifier: Notifier | None = None,
                 config_path: str | None = None,
                 open_link: Callable[[str, int, str], ByteLink] | None = None) -> None:
        self.config = config
        # How a serial port (path, baud, parity) becomes a byte link: pyserial in the field; an
        # in-process simulated district in virtual-time tests.
        self._open_link = open_link or SerialLink
        self.config_path = config_path
        self.clock = clock
        self.notifier = notifier or Notifier()
        self.watchdog = Watchdog(self.notifier)
        self.faults = _FaultLog()
        self.started = clock.now()
        self.store: Store | None = None
        self.driver: ModuleDriver | None = None
        self.mesh: Mesh | None = None
        self.reader: Reader | None = None
        self.uplink: UplinkClient | None = None
        self.summary: SummaryMeter | None = None
        self.prepay: PrepayService | None = None
        self.audit: AuditLog | None = None
        self.module_connected = False
        self.discovering = False
        self.discovery_progress: dict[str, Any] = {}
        self._time_offset = timedelta(0)
        self._event_waiters: set[asyncio.Event] = set()
        self._stop: asyncio.Event | None = None
        self._formed: asyncio.Event | None = None
        self._master_fault_min = -1

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        self._stop = stop
        self._formed = asyncio.Event()
        cfg = self.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self.reload)

        self.store = Store.open(cfg.store.path, clock=self.clock, size_cap_bytes=cfg.store.size_cap,
                                retention_days=cfg.store.retention_days)
        self._apply_archive(cfg.archive, source="archive")
        audit = AuditLog(cfg.control.audit_log, clock=self.clock)
        self.audit = audit
        self._keys = self._key_store()
        if cfg.prepay.enabled:
            # Prepaid meters' credit and relays (docs/prepayment.md); commands go through the mesh.
            self.prepay = PrepayService(self.store, self.clock, self, self._keys, audit, cfg.prepay)
        server = ControlServer(cfg.control.socket, self._handlers(audit), group=cfg.control.group,
                               mode=cfg.control.mode, audit=audit)
        await server.start()
        self.reader = Reader(self, self.store, self.clock, default_tasks(cfg.reading),
                             max_concurrent=1, summary=None, route_of=self._route_of,
                             broadcaster=self._broadcast,
                             lineloss_threshold=cfg.lineloss.alarm_threshold,
                             meter_clock=MeterClock(cfg.clock, self._keys, self.clock,
                                                    audit=audit, kv=self.store))
        self.uplink = UplinkClient(cfg.uplink, gdw13761.Address(cfg.terminal.district,
                                                                cfg.terminal.address),
                                   self.store, _Services(self), self.clock,
                                   guard=self._command_guard())
        for name, allowed in (("serial", 60.0), ("scheduler", 60.0), ("store", 60.0),
                              ("uplink", 60.0)):
            self.watchdog.register(name, allowed)
        tasks = {
            "serial": asyncio.create_task(self._module_loop(stop), name="serial"),
            "scheduler": asyncio.create_task(self._schedule_loop(), name="scheduler"),
            "store": asyncio.create_task(self._store_loop(stop), name="store"),
            "uplink": asyncio.create_task(self.uplink.run(), name="uplink"),
        }
        if cfg.summary_meter is not None:
            tasks["summary"] = asyncio.create_task(self._summary_loop(stop), name="summary")
        if self.prepay is not None:
            tasks["prepay"] = asyncio.create_task(self.prepay.run(stop), name="prepay")
        beats = asyncio.create_task(self._beats(tasks, stop))
        wd = asyncio.create_task(self.watchdog.run())
        self.notifier.ready("concentrator running")
        log.info("daemon: started (terminal %s:%d, module %s, %s)", cfg.terminal.district,
                 cfg.terminal.address, cfg.module.port, cfg.module.channel)
        try:
            await stop.wait()
        finally:
            self.notifier.stopping()
            log.info("daemon: stopping")
            self.uplink.stop()
            for t in (*tasks.values(), beats, wd):
                t.cancel()
            await asyncio.gather(*tasks.values(), beats, wd, return_exceptions=True)
            if self.mesh is not None:
                with contextlib.suppress(Exception):
                    self.mesh.save()
            if self.driver is not None:
                with contextlib.suppress(Exception):
                    await self.driver.close()
            await server.close()
            self.store.close()
            log.info("daemon: stopped cleanly")

    def audit_state_change(self, who: dict[str, Any], what: str, args: dict[str, Any],
                           outcome: str) -> None:
        """Append a state change that did not come through the control socket (the master's
        commands, a reload) to the audit log; a failed write is logged, never fatal."""
        if self.audit is None:
            return
        try:
            self.audit.record(who, what, args, outcome)
        except OSError as exc:
            log.error("audit: %s by %s not recorded: %s", what, who, exc)

    def _key_store(self) -> KeyStore:
        """Terminal keys and meter passwords; an unusable key file leaves an empty store."""
        try:
            return FileKeyStore(self.config.security.key_file)
        except KeyStoreError as exc:
            self.faults.fail("key store", f"{exc}; state-changing commands will be refused")
            return MemoryKeyStore()

    def _command_guard(self) -> security.CommandGuard:
        """Authentication of the master's state-changing commands (docs/security.md).

        Fails closed: without a usable key file every signed command is refused while
        ``security.require_mac`` is on.
        """
        cfg, sec = self.config, self.config.security
        return security.guard_for(self._keys, cfg.terminal.district, cfg.terminal.address,
                                  require_mac=sec.require_mac,
                                  max_delay=timedelta(seconds=sec.max_delay), kv=self.store)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration file and apply what can change in place."""
        if not self.config_path:
            return
        try:
            new = cfgmod.load(self.config_path)
        except cfgmod.ConfigError as exc:
            for line in exc.lines():
                log.error("reload refused: %s", line)
            self.audit_state_change(_RELOADER, "config.reload", {"file": self.config_path},
                                    "refused: " + "; ".join(exc.lines())[:500])
            return
        plan = cfgmod.reloadable_diff(self.config, new)
        self.audit_state_change(_RELOADER, "config.reload", {"file": self.config_path},
                                "applied " + (", ".join(plan.reloadable) or "nothing")
                                + (f"; restart needed for {', '.join(plan.restart)}"
                                   if plan.restart else ""))
        if "archive" in plan.reloadable:
            self._apply_archive(new.archive, source="archive")
        if self.reader is not None and any(k.startswith("reading") for k in plan.reloadable):
            log.warning("reload: schedule changes take effect at the next round")
        if plan.restart:
            log.warning("reload: these keys need a restart: %s", ", ".join(plan.restart))
        self.config = new
        logging.getLogger().setLevel(new.logging.level)
        log.info("reload: applied %s", ", ".join(plan.reloadable) or "nothing")

    # --- loops ---------------------------------------------------------------------------

    async def _beats(self, tasks: dict[str, asyncio.Task[Any]], stop: asyncio.Event) -> None:
        master_seen = self.clock.monotonic()
        while not stop.is_set():
            for name in ("serial", "scheduler", "store", "uplink"):
                if not tasks[name].done():
                    self.watchdog.beat(name)
                else:
                    self.faults.fail(f"loop {name}", "stopped; watchdog will restart the daemon")
            master_seen = self._check_master(master_seen)
            await asyncio.sleep(BEAT_PERIOD_S)

    def _check_master(self, seen: float) -> float:
        """List the master station as a fault while no session has been logged in for two
        heartbeat periods (how a master station itself counts a terminal offline); readings
        wait in the outbox meanwhile, so the field engineer sees why the master has no data."""
        now = self.clock.monotonic()
        if self.uplink is not None and self.uplink.logged_in:
            self.faults.recovered("master station")
            self._master_fault_min = -1
            return now
        limit = max(60.0, 2 * self.config.uplink.heartbeat_period)
        minutes = int((now - seen) // 60)
        if now - seen >= limit and minutes != self._master_fault_min:
            # Once a minute: the outbox count is a query, and beats come every 5 s.
            self._master_fault_min = minutes
            waiting = None
            if self.store is not None:
                with contextlib.suppress(Exception):
                    waiting = self.store.stats().outbox_depth
            self.faults.fail("master station",
                             f"not logged in for {minutes} min "
                             f"({self.config.uplink.primary}"
                             + (f", backup {self.config.uplink.backup}"
                                if self.config.uplink.backup else "")
                             + f"); {waiting if waiting is not None else 'unknown'} rows waiting")
        return seen

    async def _schedule_loop(self) -> None:
        # Rounds start once the network has formed (or was restored): a round opened on an
        # empty archive would count zero meters. Windows still open then are read at once.
        assert self._formed is not None and self.reader is not None
        await self._formed.wait()
        await self.reader.run()

    async def _module_loop(self, stop: asyncio.Event) -> None:
        cfg = self.config.module
        backoff = 1.0
        while not stop.is_set():
            link = await self._open_port("module port", cfg.port, cfg.baud, cfg.parity, stop, 60.0)
            if link is None:
                return
            driver = ModuleDriver(link, comm_mode=COMM_MODES[cfg.channel],
                                  cco_address=cfg.cco_address, clock=self.clock)
            try:
                await driver.start()
                self.driver = driver
                self.module_connected = True
                self.faults.recovered("module port")
                backoff = 1.0
                if self.reader is not None:
                    self.reader.set_max_concurrent(min(cfg.max_concurrent, driver.max_concurrent))
                await self._attach_mesh(driver)
                await self._serve_module(driver, stop)
            except (LinkClosed, OSError) as exc:
                self.faults.fail("module port", f"lost: {exc}")
            except Exception:  # a driver bug must not kill the daemon; the supervisor retries
                log.exception("module: unexpected failure; reconnecting")
            finally:
                self.module_connected = False
                self.driver = None
                with contextlib.suppress(Exception):
                    await driver.close()
            if not stop.is_set():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    async def _attach_mesh(self, driver: ModuleDriver) -> None:
        assert self.store is not None
        mcfg = self.config.mesh
        if self.mesh is None:
            self.mesh = Mesh.restore(driver, self.store, clock=self.clock, config=mcfg,
                                     on_event=self._mesh_event)
        else:
            self.mesh.driver = driver
        if self.mesh is None:
            root = driver.cco_address or self.config.module.cco_address or "000000000001"
            self.mesh = Mesh(driver, Topology(root), clock=self.clock, config=mcfg,
                             db=self.store, on_event=self._mesh_event)
        if not self.mesh.formed:
            if not any(n.address != self.mesh.root for n in self.mesh.topology.nodes()):
                # No mesh state (first start, or killed before discovery saved it): the module
                # may still hold the nodes a lost discovery registered, and a search only finds
                # nodes outside its archive. Found by the fault campaign (kill -9 in formation).
                await driver.clear_slaves()
            await self.discover()
        else:
            # A module swapped or reset while the daemon was down holds none of the nodes
            # (or a survey cut short by the restart holds its ring out): add them back.
            await self.mesh.sync_module_archive()
            register_found(self.mesh, self.store)
        if self._formed is not None:
            self._formed.set()

    async def discover(self) -> Any:
        """Search the district (plug-and-play); archive meters first when there is an archive."""
        assert self.mesh is not None and self.store is not None
        if self.discovering:
            raise CommandError("a discovery is already running", "busy")
        self.discovering = True
        t0 = self.clock.monotonic()
        try:
            archive = [(m.address, PROTOCOL_CODES.get(m.protocol, 2))
                       for m in self.store.meters() if m.source == "archive"]
            done = await self.mesh.discover(archive or None)
            register_found(self.mesh, self.store)
            self.mesh.save()
            log.info("mesh: discovery done in %.0f s", self.clock.monotonic() - t0)
            return done
        finally:
            self.discovering = False

    async def _serve_module(self, driver: ModuleDriver, stop: asyncio.Event) -> None:
        """Keep the mesh maintained while the module is up; return when the link dies."""
        reports = asyncio.create_task(self._drain_reports(driver))
        try:
            while not stop.is_set() and not reports.done():
                done, _ = await asyncio.wait({reports}, timeout=MAINTAIN_PERIOD_S)
                if done:
                    break
                if self.mesh is not None and not self.discovering:
                    try:
                        await self.mesh.maintain()
                    except (LinkClosed, OSError):
                        raise
                    except Exception:
                        log.exception("mesh: maintenance failed")
            if reports.done() and not stop.is_set():
                raise LinkClosed("module reports ended (port closed)")
        finally:
            reports.cancel()
            with contextlib.suppress(BaseException):
                await reports

    async def _drain_reports(self, driver: ModuleDriver) -> None:
        # The driver confirms reports itself; reports outside a search are only logged.
        if self.mesh is not None:
            # The mesh stands aside while it searches: a search reads its own reports (this
            # loop took every other one, found meters included: the churn week's lost days).
            await self.mesh.drain_reports(driver)
            return
        async for report in driver.reports():
            log.debug("module report AFN%02X F%d", report.frame.afn, report.frame.fn)

    async def _store_loop(self, stop: asyncio.Event) -> None:
        assert self.store is not None
        scfg = self.config.store
        last_backup = self.clock.monotonic()
        while not stop.is_set():
            await asyncio.sleep(60.0)
            try:
                if self.store.prune_due():
                    self.store.prune()
                if scfg.backup_path and self.clock.monotonic() - last_backup >= scfg.backup_period:
                    self.store.backup(scfg.backup_path)
                    last_backup = self.clock.monotonic()
                    self.store.kv_set("daemon.last_backup", self._iso(self.clock.now()))
                self.faults.recovered("store")
            except Exception as exc:
                self.faults.fail("store", str(exc))

    async def _summary_loop(self, stop: asyncio.Event) -> None:
        sm = self.config.summary_meter
        assert sm is not None
        link = await self._open_port("summary meter port", sm.port, sm.baud, sm.parity, stop, 300.0)
        if link is None:
            return
        self.faults.recovered("summary meter port")
        self.summary = SummaryMeter(link, sm.address, protocol=sm.protocol)
        if self.reader is not None:
            self.reader.summary = self.summary

    async def _open_port(self, what: str, port: str, baud: int, parity: str,
                         stop: asyncio.Event, cap: float) -> ByteLink | None:
        """Open a serial port, retrying with capped backoff (fault logged once); None on stop."""
        backoff = 1.0
        while not stop.is_set():
            try:
                return self._open_link(port, baud, parity)
            except LinkClosed as exc:
                self.faults.fail(what, str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, cap)
        return None

    # --- what the reader and the uplink call ------------------------------------------

    async def exchange(self, address: str, dlt645_bytes: bytes, *, priority: bool = False) -> Any:
        """The reader's and the uplink's path to a meter: through the mesh when it is up."""
        if self.mesh is None or not self.module_connected:
            return Exchanged(reply=None, failure="module not connected")
        if self.discovering and not priority:
            await self._wait_discovery()
        try:
            return await self.mesh.exchange(address, dlt645_bytes, priority=priority)
        except (LinkClosed, OSError) as exc:
            return Exchanged(reply=None, failure=f"module link: {exc}")

    async def _wait_discovery(self) -> None:
        while self.discovering:
            await asyncio.sleep(5.0)

    def _route_of(self, address: str) -> tuple[str, ...] | None:
        return primary_relays(self.mesh, address)

    async def _broadcast(self, frame: bytes) -> Any:
        if self.driver is None:
            raise LinkClosed("module not connected")
        return await self.driver.broadcast(frame, control=2)

    def _mesh_event(self, event: Any) -> None:
        if isinstance(event, NodeFound):
            self.discovery_progress["found"] = self.discovery_progress.get("found", 0) + 1
        elif isinstance(event, RogueSuspected) and self.store is not None:
            # Already rate-limited by the mesh guard (one per suspect per hour): ERC 35.
            try:
                self.store.add_event(event.erc, event.address, event.event_detail())
            except StoreError as exc:
                log.error("mesh: rogue event for %s not stored: %s", event.address, exc)
        elif isinstance(event, (MeterReplacementFound, UnknownMeter)) and self._formed_done():
            # Found after formation (a meter swapped beside a silent one, a new customer): into
            # the reading archive now, not at the next restart (found by the churn scenario:
            # replacement meters were never read). After the mesh's own bookkeeping.
            asyncio.get_running_loop().call_soon(self._register_found)
        log.debug("mesh event: %s", event)
        for waiter in list(self._event_waiters):
            waiter.set()

    def _formed_done(self) -> bool:
        return self._formed is not None and self._formed.is_set() and self.store is not None

    def _register_found(self) -> None:
        if self.mesh is None or self.store is None:
            return
        try:
            register_found(self.mesh, self.store)
        except StoreError as exc:
            log.error("mesh: found meters not archived: %s", exc)

    def _apply_archive(self, archive: Any, source: str) -> None:
        assert self.store is not None
        with self.store.batch():
            for m in archive:
                self.store.upsert_meter(MeterRecord(m.address, protocol=m.protocol,
                                                    point=m.point, source=source))

    # --- control socket handlers --------------------------------------------------------

    def _handlers(self, audit: AuditLog) -> dict[str, Any]:
        return {
            "status": self._h_status,
            "nodes": self._h_nodes,
            "node": self._h_node,
            "topology": self._h_topology,
            "read": self._h_read,
            "discover": self._h_discover,
            "schedule": self._h_schedule,
            "uplink.status": self._h_uplink,
            "db.stats": self._h_db,
            "events": self._h_events,
            "archive.list": self._h_archive_list,
            "archive.add": self._h_archive_add,
            "archive.remove": self._h_archive_remove,
            "archive.import": self._h_archive_import,
            "audit": audit_handler(audit),
            **(self.prepay.control_handlers() if self.prepay is not None else {}),
        }

    def _iso(self, ts: float | datetime | None) -> str | None:
        if ts is None:
            return None
        if isinstance(ts, datetime):
            return ts.isoformat(timespec="seconds")
        return datetime.fromtimestamp(ts).isoformat(timespec="seconds")

    def _snapshot(self) -> dict[str, Any]:
        if self.mesh is None:
            return {"root": self.config.module.cco_address, "nodes": []}
        return self.mesh.topology.snapshot()

    def _node_view(self, n: dict[str, Any]) -> dict[str, Any]:
        ok, bad = n.get("successes") or 0, n.get("failures") or 0
        status = n.get("status")
        state = "quarantined" if status == "quarantined" else (
            "online" if n.get("route") else "silent")
        return {
            "address": n["address"], "level": n.get("level"), "phase": _phase(n.get("phase")),
            "state": state, "protocol": n.get("protocol"), "device": n.get("kind"),
            "relays": (n.get("route") or {}).get("relays", []),
            "success_rate": round(ok / (ok + bad), 4) if ok + bad else None,
            "last_seen": self._iso(n.get("last_seen")),
        }

    def _node_counts(self) -> tuple[str | None, dict[str, int]]:
        # Counted on the topology itself: the full snapshot (links, history of every node) cost
        # 0.15 s of CPU per status at 1,000 nodes, and the demo and the CLI poll status.
        if self.mesh is None:
            return self.config.module.cco_address, {"total": 0, "online": 0, "quarantined": 0}
        topo = self.mesh.topology
        nodes = [n for n in topo.nodes() if n.address != topo.root]
        return topo.root, {
            "total": len(nodes),
            "online": sum(1 for n in nodes if topo.primary(n.address) is not None),
            "quarantined": sum(1 for n in nodes if n.status.value == "quarantined")}

    async def _h_status(self, args: dict[str, Any]) -> dict[str, Any]:
        root, counts = self._node_counts()
        rounds = self.reader.reports if self.reader is not None else []
        last = rounds[-1] if rounds else None
        stats = self.store.stats() if self.store else None
        return {
            "version": __version__,
            "started": self._iso(self.started),
            "uptime_s": round((self.clock.now() - self.started).total_seconds(), 1),
            "terminal": {"district": self.config.terminal.district,
                         "address": self.config.terminal.address},
            "module": {"port": self.config.module.port, "channel": self.config.module.channel,
                       "connected": self.module_connected,
                       "cco_address": root,
                       # the slave archive check (Mesh.sync_module_archive): a module swapped
                       # or reset shows as nodes added back
                       "archive_checked": self._iso(getattr(self.mesh, "archive_checked_at", None)),
                       "archive_added_back": getattr(self.mesh, "archive_added_back", 0)},
            "nodes": counts,
            "discovering": self.discovering,
            "reading": None if last is None else {
                "task": last.task, "day": last.opens.date().isoformat(), "due": last.meters,
                "read": round(last.final_rate * last.meters), "rate": round(last.final_rate, 4),
                "first_rate": round(last.first_rate, 4), "next_task": None},
            "rounds": {r.task: {"day": r.opens.date().isoformat(), "due": r.meters,
                                "first_rate": round(r.first_rate, 4),
                                "final_rate": round(r.final_rate, 4),
                                "duration_s": round(r.duration_s, 1), "unread": len(r.unread)}
                       for r in rounds},
            "uplink": self._uplink_state(stats),
            "store": {"size_bytes": stats.file_bytes if stats else None},
            "watchdog": {"healthy": self.watchdog.healthy(), "stale": list(self.watchdog.stale())},
            "faults": self.faults.active,
        }

    def _uplink_state(self, stats: Any) -> dict[str, Any]:
        u = self.uplink
        ep = getattr(u, "endpoint", None) if u else None
        state = "online" if u and u.logged_in else ("connecting" if ep else "offline")
        return {"state": state, "master": None if ep is None else f"{ep.host}:{ep.port}",
                "outbox": stats.outbox_depth if stats else None,
                "stats": dict(u.stats) if u else {}}

    async def _h_nodes(self, args: dict[str, Any]) -> dict[str, Any]:
        snap = self._snapshot()
        out = [self._node_view(n) for n in snap["nodes"] if n["address"] != snap.get("root")]
        if args.get("level") is not None:
            out = [n for n in out if n["level"] == int(args["level"])]
        if args.get("state"):
            out = [n for n in out if n["state"] == args["state"]]
        return {"nodes": out}

    async def _h_node(self, args: dict[str, Any]) -> dict[str, Any]:
        addr = str(args.get("address", ""))
        snap = self._snapshot()
        match = [n for n in snap["nodes"] if n["address"] == addr]
        if not match:
            raise CommandError(f"node {addr} is not in the mesh", "not-found")
        n = match[0]
        view = self._node_view(n)
        routes = []
        if self.mesh is not None:
            for i, r in enumerate(self.mesh.topology.routes(addr)):
                routes.append({"relays": list(r.relays), "probability": round(r.p, 4),
                               "cost": round(r.cost, 3), "primary": i == 0})
        view.update({
            "meters": n.get("sub_meters", []),
            "routes": routes,
            "links": [{"peer": lk["to"], "medium": lk["medium"], "up": lk["p_out"],
                       "down": lk["p_in"], "quality": lk["quality"]} for lk in n.get("links", [])],
            "history": [
                {"at": self._iso(r.time), "ok": r.outcome == "ok", "relays": list(r.route),
                 "latency_ms": round(r.latency_s * 1000)}
                for r in (self.store.reads(addr, limit=20) if self.store else [])
            ] if self.store else [],
            "last_reading": None,
        })
        return view

    async def _h_topology(self, args: dict[str, Any]) -> dict[str, Any]:
        snap = self._snapshot()
        root = snap.get("root")
        nodes, links, seen = [], [], set()
        for n in snap["nodes"]:
            if n["address"] == root:
                continue
            relays = (n.get("route") or {}).get("relays", [])
            nodes.append({"address": n["address"], "level": n.get("level"),
                          "parent": relays[-1] if relays else root,
                          "state": self._node_view(n)["state"], "phase": _phase(n.get("phase"))})
        for n in snap["nodes"]:
            for lk in n.get("links", []):
                key = tuple(sorted((n["address"], lk["to"])))
                if key in seen:
                    continue
                seen.add(key)
                ps = [p for p in (lk["p_out"], lk["p_in"]) if p is not None]
                links.append({"a": key[0], "b": key[1], "medium": lk["medium"],
                              "quality": round(min(ps), 3) if ps else None})
        return {"root": root, "nodes": nodes, "links": links}

    async def _h_read(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.reader is not None
        addr = str(args.get("address", ""))
        items = args.get("items") or ["energy"]
        values, last = [], None
        for item in items:
            key: str | int = int(item, 16) if len(item) == 8 and _is_hex(item) else item
            try:
                res = await self.reader.read_now(addr, key)
            except ReaderError as exc:
                raise CommandError(str(exc), "not-found" if "unknown meter" in str(exc)
                                   else "bad-request") from exc
            last = res
            values.append({"item": item, "value": _text(res.value) if res.ok else None,
                           "unit": _unit(key), "error": None if res.ok else res.outcome})
        if last is not None and not any(v["value"] is not None for v in values):
            raise CommandError(f"{addr}: {last.outcome}", "failed")
        return {"address": addr, "relays": list(last.route) if last else [],
                "attempts": last.attempts if last else 0,
                "latency_ms": round(last.latency_s * 1000) if last else 0, "values": values}

    async def _h_discover(self, args: dict[str, Any]) -> AsyncIterator[Any]:
        if self.mesh is None or not self.module_connected:
            raise CommandError("module not connected", "failed")
        if self.discovering:
            raise CommandError("a discovery is already running", "busy")
        before = {n.address for n in self.mesh.topology.nodes()}
        t0 = self.clock.monotonic()
        job = asyncio.create_task(self.discover())
        reported: set[str] = set()
        while not job.done():
            await asyncio.wait({job}, timeout=2.0)
            for node in self.mesh.topology.nodes():
                if node.address not in reported and node.address != self.mesh.root:
                    reported.add(node.address)
                    yield {"type": "node", "address": node.address, "level": node.level,
                           "known": node.address in before}
            yield {"type": "progress", "found": len(reported),
                   "elapsed_s": round(self.clock.monotonic() - t0, 1)}
        job.result()
        levels = {n.level for n in self.mesh.topology.nodes() if n.level}
        yield StreamResult({"found": len(reported), "new": len(reported - before),
                            "levels": len(levels),
                            "duration_s": round(self.clock.monotonic() - t0, 1)})

    async def _h_schedule(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.reader is not None
        now = self.clock.now()
        out = []
        for task in self.reader.tasks:
            win = task.window_at(now) or task.next_window(now)
            last = next((r for r in reversed(self.reader.reports) if r.task == task.name), None)
            out.append({"name": task.name, "kind": str(task.kind), "enabled": task.enabled,
                        "next_run": self._iso(win[0]) if win else None,
                        "last_run": self._iso(last.opens) if last else None,
                        "last_result": None if last is None else {
                            "due": last.meters, "done": round(last.final_rate * last.meters)}})
        return {"tasks": out}

    async def _h_uplink(self, args: dict[str, Any]) -> dict[str, Any]:
        stats = self.store.stats() if self.store else None
        state = self._uplink_state(stats)
        state.update({"tls": self.config.uplink.tls.enabled,
                      "outbox": {"pending": stats.outbox_depth if stats else None,
                                 "oldest": self._iso(stats.oldest_pending_created) if stats else None}})
        return state

    async def _h_db(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        st = self.store.stats()
        rows = dict(st.rows)
        day = self.store.db.execute("SELECT MIN(read_time), MAX(read_time) FROM daily").fetchone()
        return {"path": str(self.store.path), "size_bytes": st.file_bytes,
                "size_cap": st.size_cap_bytes,
                "tables": {"readings": sum(rows.get(t, 0) for t in ("daily", "curve", "realtime")),
                           "events": rows.get("events", 0), "outbox": st.outbox_depth, **rows},
                "oldest_reading": day[0], "newest_reading": day[1],
                "last_backup": self.store.kv_get("daemon.last_backup"),
                "schema_version": st.schema_version}

    def _event_view(self, ev: Any) -> dict[str, Any]:
        name = gdw13761.ERC_NAMES.get(ev.erc, f"ERC{ev.erc}")
        detail = dict(ev.detail)
        text = detail.get("what") or detail.get("fault") or detail.get("why") or name
        return {"at": self._iso(ev.time), "kind": name, "erc": ev.erc, "address": ev.meter,
                "text": f"{name}: {text}" if text != name else name, "data": detail}

    def _events_after(self, pointer: int, since: datetime | None) -> tuple[list[Any], int]:
        assert self.store is not None
        out = []
        while True:
            batch = self.store.events_since(pointer, 500)
            if not batch:
                return out, pointer
            for ev in batch:
                pointer = ev.id
                if since is None or ev.time >= since:
                    out.append(ev)

    def _h_events(self, args: dict[str, Any]) -> Any:
        # A coroutine for a one-off listing, an async generator (streamed) with ``follow``.
        since = datetime.fromisoformat(args["since"]) if args.get("since") else None
        limit = int(args["limit"]) if args.get("limit") else None
        events, pointer = self._events_after(0, since)
        if limit is not None:
            events = events[-limit:]
        if args.get("follow"):
            return self._follow_events(events, pointer)
        return self._listing({"events": [self._event_view(e) for e in events]})

    @staticmethod
    async def _listing(result: dict[str, Any]) -> dict[str, Any]:
        return result

    async def _follow_events(self, first: list[Any], pointer: int) -> AsyncIterator[Any]:
        for ev in first:
            yield self._event_view(ev)
        while True:
            await asyncio.sleep(1.0)
            new, pointer = self._events_after(pointer, None)
            for ev in new:
                yield self._event_view(ev)

    async def _h_archive_list(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        return {"meters": [{"address": m.address, "protocol": m.protocol, "point": m.point,
                            "source": m.source, "quarantined": m.quarantined,
                            "collector": m.collector}
                           for m in self.store.meters()]}

    async def _h_archive_add(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        meters = args.get("meters") or [args]
        added = []
        for m in meters:
            addr = str(m.get("address", ""))
            if len(addr) != 12 or not addr.isdigit():
                raise CommandError(f"bad meter address {addr!r}", "bad-request")
            protocol = m.get("protocol", "dlt645-2007")
            if protocol not in PROTOCOL_CODES:
                raise CommandError(f"unknown meter protocol {protocol!r}", "bad-request")
            with self.store.batch():
                self.store.upsert_meter(MeterRecord(addr, protocol=protocol, point=m.get("point"),
                                                    source="archive"))
            if self.mesh is not None:
                self.mesh.set_archive([(a.address, PROTOCOL_CODES.get(a.protocol, 2))
                                       for a in self.store.meters() if a.source == "archive"])
            added.append(addr)
        return {"added": added}

    async def _h_archive_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        assert self.store is not None
        addr = str(args.get("address", ""))
        with self.store.batch():
            removed = self.store.remove_meter(addr)
        if not removed:
            raise CommandError(f"meter {addr} is not in the archive", "not-found")
        return {"removed": [addr]}

    async def _h_archive_import(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._h_archive_add({"meters": args.get("meters") or []})


_RELOADER = {"user": "root", "via": "SIGHUP"}
_MASTER = {"user": "master", "via": "Q/GDW 1376.1"}


class _Services:
    """What the uplink asks of the rest of the concentrator (``uplink.client.TerminalServices``)."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    async def read_energy_now(self, meter: str) -> RealtimeReading | None:
        if self.d.reader is None:
            return None
        try:
            await self.d.reader.read_now(meter, "energy")
        except ReaderError:
            return None
        assert self.d.store is not None
        return self.d.store.latest_realtime(meter)

    async def forward_645(self, meter: str, frame: bytes, timeout: float) -> bytes | None:
        try:
            out = await asyncio.wait_for(self.d.exchange(meter, frame, priority=True), timeout)
        except TimeoutError:
            return None
        return getattr(out, "reply", None)

    async def archive_changed(self, upserted: Any, removed: Any) -> None:
        d = self.d
        assert d.store is not None
        with d.store.batch():
            for rec in upserted:
                d.store.upsert_meter(rec)
            for addr in removed:
                d.store.remove_meter(addr)
        if d.mesh is not None:
            d.mesh.set_archive([(a.address, PROTOCOL_CODES.get(a.protocol, 2))
                                for a in d.store.meters() if a.source == "archive"])
        log.info("archive: %d meters set, %d removed by the master", len(upserted), len(removed))
        d.audit_state_change(_MASTER, "archive.set",
                             {"set": [r.address for r in upserted], "removed": list(removed)},
                             "ok")

    # --- prepayment (docs/prepayment.md); refused cleanly when prepayment is off ----------

    async def purchase(self, meter: str, order_no: int, amount: Decimal, replace: bool,
                       alarm_threshold: Decimal | None, trip_threshold: Decimal | None,
                       source: str) -> PurchaseResult:
        if self.d.prepay is None:
            result = PurchaseResult("not-prepaid", reason="prepayment is not enabled here")
        else:
            result = await self.d.prepay.purchase(meter, order_no, amount, replace,
                                                  alarm_threshold, trip_threshold, source)
        self.d.audit_state_change(
            {"user": source, "via": "Q/GDW 1376.1"}, "prepay.purchase",
            {"meter": meter, "order_no": order_no, "amount": str(amount), "replace": replace},
            f"{result.status} (balance {result.balance_before} -> {result.balance_after})"
            if result.status in ("applied", "duplicate") else
            f"{result.status}: {result.reason}")
        return result

    async def balance(self, meter: str) -> Decimal | None:
        return None if self.d.prepay is None else await self.d.prepay.balance(meter)

    async def purchases(self, meter: str, limit: int = 20) -> list[PurchaseRecord]:
        return [] if self.d.prepay is None else await self.d.prepay.purchases(meter, limit)

    async def set_protect(self, meter: str | None, on: bool, until: datetime | None,
                          source: str) -> None:
        if self.d.prepay is None:
            log.warning("protect %s from %s ignored: prepayment is not enabled",
                        "on" if on else "off", source)
            return
        await self.d.prepay.set_protect(meter, on, until, source)

    async def request_control(self, meter: str, action: str, source: str) -> ControlTicket:
        who = {"user": source, "via": "Q/GDW 1376.1"}
        try:
            if self.d.prepay is None:
                raise PrepayError("prepayment (meter control) is not enabled here")
            ticket = await self.d.prepay.request_control(meter, action, source)
        except PrepayError as exc:
            self.d.audit_state_change(who, f"meter.{action}", {"meter": meter}, f"refused: {exc}")
            raise
        self.d.audit_state_change(who, f"meter.{action}", {"meter": meter},
                                  f"queued as action {ticket.id}")
        return ticket

    async def set_time(self, when: datetime) -> None:
        # The daemon runs unprivileged (no CAP_SYS_TIME): record the correction; the system
        # clock is disciplined by NTP/the RTC service. The meters get a broadcast time sync.
        log.warning("time set by the master: %s (local clock %s)", when, self.d.clock.now())
        self.d.audit_state_change(_MASTER, "clock.set", {"time": when.isoformat()},
                                  "meters synchronised by broadcast; system clock left to NTP")
        if self.d.driver is not None:
            with contextlib.suppress(Exception):
                await self.d.driver.broadcast(dlt645.encode(dlt645.broadcast_time(when)), control=2)

    async def reset(self, kind: int) -> None:
        log.warning("reset requested by the master (kind %d)", kind)
        self.d.audit_state_change(_MASTER, "reset", {"kind": kind},
                                  "restarting" if kind == 1 else "ok")
        if kind == 1 and self.d._stop is not None:  # hardware init: restart (systemd restarts us)
            self.d._stop.set()


def _is_hex(s: str) -> bool:
    try:
        int(s, 16)
        return True
    except ValueError:
        return False


def _phase(value: Any) -> str | None:
    # The module reports the measured phase as 1..3 (0 unknown); the CLI shows A/B/C.
    if isinstance(value, int):
        return {1: "A", 2: "B", 3: "C"}.get(value)
    return value or None


def _text(value: Any) -> Any:
    if isinstance(value, tuple):
        return " / ".join(str(_text(v)) for v in value) if value else None
    if hasattr(value, "relay_open"):
        return "open" if value.relay_open else "closed"
    return None if value is None else str(value)


_UNITS = {"energy": "kWh", "reverse_energy": "kWh", "voltage": "V", "current": "A",
          "power": "kW"}


def _unit(item: Any) -> str | None:
    return _UNITS.get(item) if isinstance(item, str) else None


def run_daemon(config: Config, *, config_path: str | None = None, start: datetime | None = None,
               time_factor: float = 1.0, epoch: float | None = None) -> int:
    """Blocking entry of ``concentrator run``: returns the process exit code."""
    from concentrator.clock import LoopClock, SystemClock
    from concentrator.timescale import loop_factory

    os.umask(0o027)
    for p in (config.paths.state, config.paths.runtime, config.control.socket.parent,
              config.store.path.parent):
        Path(p).mkdir(parents=True, exist_ok=True, mode=0o750)

    async def main() -> None:
        clock: Clock = SystemClock() if start is None else LoopClock(start, t0=0.0 if epoch else None)
        await Daemon(config, clock=clock, config_path=config_path).run()

    with asyncio.Runner(loop_factory=loop_factory(epoch, time_factor)) as runner:
        runner.run(main())
    return 0


