"""The 1376.1 uplink against the simulated master station: link, upload, serving, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import ssl
import subprocess
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path

import pytest

from concentrator import dlt645
from concentrator.clock import LoopClock
from concentrator.config import HostPort, TlsConfig, UplinkConfig
from concentrator.store import (
    DailyReading,
    LineLoss,
    MeterRecord,
    RealtimeReading,
    Store,
)
from simulator.master import MasterError, MasterStation
from simulator.vtime import VirtualTimeLoop
from uplink import gdw13761 as g
from uplink import outbox as ob
from uplink.client import UplinkClient, UplinkOptions

TERMINAL = g.Address("4403", 1)
KEY = "4403:1"
START = datetime(2024, 5, 10, 8, 0)
DAY = date(2024, 5, 9)


@dataclass(frozen=True)
class FakePurchase:
    """The fields of ``prepay.PurchaseResult`` and ``prepay.PurchaseRecord`` the uplink reads."""

    status: str
    order_no: int = 0
    amount: D = D(0)
    replace: bool = False
    alarm_threshold: D | None = None
    trip_threshold: D | None = None
    balance_before: D | None = None
    balance_after: D | None = None
    applied_at: datetime = START
    reason: str = ""


@dataclass(frozen=True)
class FakeTicket:
    id: int
    meter: str
    action: str
    state: str


class FakeServices:
    """Records what the uplink asked of the rest of the daemon.

    Prepayment is a minimal in-memory ledger: ``prepaid`` maps each prepaid meter to its
    credit; an order number applies once per meter (a repeat is "duplicate" with the balances
    of the original), so a test can see that the uplink does not credit twice."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.energy: dict[str, RealtimeReading] = {}
        self.forward_reply: bytes | None = None
        self.prepaid: dict[str, D] = {}
        self.orders: dict[tuple[str, int], FakePurchase] = {}
        self.history: dict[str, list[FakePurchase]] = {}
        self.protected: dict[str | None, datetime | None] = {}
        self.tickets: list[FakeTicket] = []
        self.ticket_state = "pending"

    async def read_energy_now(self, meter: str) -> RealtimeReading | None:
        self.calls.append(("read_energy_now", meter))
        return self.energy.get(meter)

    async def forward_645(self, meter: str, frame: bytes, timeout: float) -> bytes | None:
        self.calls.append(("forward_645", meter, frame, timeout))
        return self.forward_reply

    async def archive_changed(self, upserted, removed) -> None:
        self.calls.append(("archive_changed", [m.address for m in upserted], list(removed)))

    async def set_time(self, when: datetime) -> None:
        self.calls.append(("set_time", when))

    async def reset(self, kind: int) -> None:
        self.calls.append(("reset", kind))

    async def purchase(self, meter: str, order_no: int, amount: D, replace: bool,
                       alarm_threshold: D | None, trip_threshold: D | None,
                       source: str) -> FakePurchase:
        self.calls.append(("purchase", meter, order_no, amount, replace, source))
        if meter not in self.prepaid:
            return FakePurchase("not-prepaid", reason="not a prepaid meter")
        done = self.orders.get((meter, order_no))
        if done is not None:
            return dataclasses.replace(done, status="duplicate")
        if amount <= 0:
            return FakePurchase("rejected", reason="amount must be positive")
        before = self.prepaid[meter]
        after = amount if replace else before + amount
        rec = FakePurchase("applied", order_no, amount, replace, alarm_threshold,
                           trip_threshold, before, after)
        self.prepaid[meter] = after
        self.orders[(meter, order_no)] = rec
        self.history.setdefault(meter, []).insert(0, rec)
        return rec

    async def balance(self, meter: str) -> D | None:
        self.calls.append(("balance", meter))
        return self.prepaid.get(meter)

    async def purchases(self, meter: str, limit: int = 20) -> list[FakePurchase]:
        self.calls.append(("purchases", meter, limit))
        return self.history.get(meter, [])[:limit]

    async def set_protect(self, meter: str | None, on: bool, until: datetime | None,
                          source: str) -> None:
        self.calls.append(("set_protect", meter, on, until, source))
        if on:
            self.protected[meter] = until
        else:
            self.protected.pop(meter, None)

    async def request_control(self, meter: str, action: str, source: str) -> FakeTicket:
        self.calls.append(("request_control", meter, action, source))
        ticket = FakeTicket(len(self.tickets) + 1, meter, action, self.ticket_state)
        self.tickets.append(ticket)
        return ticket


def meter(i: int) -> str:
    return f"{i:012d}"


def fill(store: Store, meters: int = 20, *, events: int = 3, curves: bool = True) -> int:
    """Archive + one day of daily readings, curves and events; returns outbox rows."""
    with store.batch():
        for i in range(1, meters + 1):
            store.upsert_meter(MeterRecord(meter(i), point=i))
            store.write_daily(DailyReading(meter(i), DAY, D(i) + D("0.25"),
                                           datetime(2024, 5, 10, 0, 7),
                                           (D(i), D("0.25"), None, D(0))))
            if curves:
                store.write_curve(meter(i), DAY, {s: D(i * 100 + s) / 100 for s in range(96)})
        for k in range(events):
            store.add_event(14 if k % 2 else 31, meter(k + 1), {"n": k})
        store.write_line_loss(LineLoss(DAY, D("500.5"), D("480.25"), D("4.0"), meters, meters))
    return store.outbox_stats().depth


def make_store(tmp_path: Path, name: str = "store.db") -> Store:
    return Store.open(tmp_path / name, clock=LoopClock(START))


def make_client(store: Store, port: int, *, backup: int | None = None, services=None,
                tls: TlsConfig | None = None, **opts) -> UplinkClient:
    cfg = UplinkConfig(HostPort("127.0.0.1", port),
                       backup=HostPort("127.0.0.1", backup) if backup else None,
                       failover_attempts=2, heartbeat_period=opts.pop("heartbeat", 30.0),
                       login_retry=2.0, reconnect_backoff_cap=2.0, tls=tls or TlsConfig())
    base = {"response_timeout": 2.0, "backoff_base": 0.05, "poll_interval": 0.2,
            "primary_probe": 0.5}
    base.update(opts)
    return UplinkClient(cfg, TERMINAL, store, services or FakeServices(), LoopClock(START),
                        UplinkOptions(**base))


async def until(pred, timeout: float = 10.0, step: float = 0.02) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def running(client: UplinkClient):
    task = asyncio.create_task(client.run())
    try:
        yield client
    finally:
        client.stop()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def master_at(tmp_path: Path, port: int = 0, name: str = "master.db", **kw):
    m = MasterStation(tmp_path / name, clock=LoopClock(START), **kw)
    await m.start(port=port)
    try:
        yield m
    finally:
        await m.stop()      # the database stays open for the test's final checks


def assert_exactly_once(m: MasterStation, expected_seqs: set[int]) -> None:
    rows = m.uploads(KEY)
    got = [r["seq"] for r in rows if r["part"] == 0]
    assert sorted(got) == sorted(expected_seqs)          # every row, and each once
    assert m.violations == []


# --- link -------------------------------------------------------------------------------------

async def test_an_unreachable_master_is_logged_once_not_per_retry(tmp_path, caplog):
    # A days-long outage must not fill the log with one line per back-off step: one line when
    # the master cannot be reached, one when it is reachable again.
    store = make_store(tmp_path)
    port = free_port()
    client = make_client(store, port, backoff_base=0.02)
    caplog.set_level(logging.DEBUG, logger="uplink.client")
    async with running(client):
        await until(lambda: sum(1 for r in caplog.records if "failed" in r.getMessage()) >= 5)
        async with master_at(tmp_path, port=port) as m:
            await m.wait_login(KEY)
    failed = [r for r in caplog.records if "connect to master" in r.getMessage()]
    assert len(failed) >= 5
    assert [r.levelno for r in failed].count(logging.WARNING) == 1
    back = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert len(back) == 1 and back[0].levelno == logging.WARNING


async def test_login_and_heartbeats_confirmed(tmp_path):
    store = make_store(tmp_path)
    async with master_at(tmp_path) as m:
        client = make_client(store, m.port, heartbeat=0.2)
        async with running(client):
            await m.wait_login(KEY)
            await until(lambda: m.terminal_stats(KEY)["heartbeats"] >= 3)
            assert client.logged_in and client.stats["connects"] == 1
    assert m.terminal_stats(KEY)["logins"] == 1
    assert m.violations == []


async def test_unconfirmed_heartbeats_make_the_terminal_reconnect(tmp_path):
    store = make_store(tmp_path)
    async with master_at(tmp_path) as m:
        client = make_client(store, m.port, heartbeat=0.2, response_timeout=0.2,
                             heartbeats_missed=2)
        async with running(client):
            await m.wait_login(KEY)
            m.silent = True                  # a hung master: the TCP link stays up
            await until(lambda: client.stats["connects"] >= 2)
            waiter = asyncio.create_task(m.wait_login(KEY, 10))
            m.silent = False
            await waiter
    assert m.terminal_stats(KEY)["logins"] >= 2


async def test_primary_down_goes_to_backup_then_back_to_primary(tmp_path):
    store = make_store(tmp_path)
    fill(store, 5, events=0, curves=False)
    primary_port = free_port()
    async with master_at(tmp_path, name="backup.db") as backup:
        client = make_client(store, primary_port, backup=backup.port)
        async with running(client):
            await backup.wait_login(KEY)
            assert client.endpoint == HostPort("127.0.0.1", backup.port)
            await until(lambda: store.outbox_stats().depth == 0)
            async with master_at(tmp_path, port=primary_port, name="primary.db") as primary:
                await primary.wait_login(KEY, 10)
                assert client.endpoint == HostPort("127.0.0.1", primary_port)
                await until(lambda: KEY not in backup.conns)
    assert backup.upload_summary()["items"] == 5


# --- upload -----------------------------------------------------------------------------------

@pytest.mark.parametrize("window", [1, 8])
async def test_outbox_upload_reaches_the_master_exactly_once(tmp_path, window):
    store = make_store(tmp_path)
    fill(store, 20)
    seqs = {i.seq for i in store.outbox_pending(10_000)}
    async with master_at(tmp_path) as m:
        async with running(make_client(store, m.port, window=window, max_frame_bytes=1024)):
            await until(lambda: store.outbox_stats().depth == 0)
            await until(lambda: m.upload_summary()["line_loss_days"] == 1)
    assert_exactly_once(m, seqs)
    rows = {(r["meter"], r["fn"]): r["value"] for r in m.uploads(KEY)}
    daily = rows[(meter(7), 161)]
    assert daily["total"] == "7.2500" and daily["day"] == "2024-05-09"
    curve = rows[(meter(7), 101)]
    assert len(curve["points"]) == 96 and curve["points"][5] == "7.05"
    events = [r for r in m.uploads(KEY) if r["afn"] == 0x0E]
    assert {e["value"]["records"][0]["erc"] for e in events} == {14, 31}
    loss = m.line_losses()[0]
    assert loss["loss_pct"] == "4.0" and loss["customer_energy"] == "480.2500"


async def test_a_corrected_line_loss_is_uploaded_again_and_an_unchanged_one_is_not(tmp_path):
    # A meter read late changes yesterday's customer energy: the master must get the new line
    # loss (the upload loop's "nothing new" shortcut must notice the store's write).
    store = make_store(tmp_path)
    fill(store, 5, curves=False)
    async with master_at(tmp_path) as m:
        async with running(make_client(store, m.port)):
            await until(lambda: m.upload_summary()["line_loss_days"] == 1)
            await until(lambda: store.outbox_stats().depth == 0)
            await asyncio.sleep(0.5)
            frames = m.frames_received
            store.write_line_loss(LineLoss(DAY, D("500.5"), D("480.25"), D("4.0"), 5, 5))
            await asyncio.sleep(0.6)  # three idle polls: the same figures are not re-sent
            assert m.frames_received == frames
            store.write_line_loss(LineLoss(DAY, D("500.5"), D("490.25"), D("2.0"), 5, 5))
            await until(lambda: any(x["loss_pct"] == "2.0" for x in m.line_losses()))


async def test_window_limits_the_unconfirmed_frames(tmp_path):
    store = make_store(tmp_path)
    fill(store, 40)
    async with master_at(tmp_path) as m:
        m.drop_upload_confirms = True
        async with running(make_client(store, m.port, window=3, max_frame_bytes=512,
                                       response_timeout=30.0)):
            await m.wait_login(KEY)
            await asyncio.sleep(0.5)
            uploads_seen = m.frames_received - 1          # minus the login
            assert uploads_seen == 3
            assert store.outbox_stats().depth > 0        # nothing confirmed, nothing removed


async def test_denied_upload_stays_in_the_outbox_until_the_next_connection(tmp_path):
    store = make_store(tmp_path)
    n = fill(store, 3, events=0, curves=False)
    async with master_at(tmp_path) as m:
        m.deny_uploads = True
        client = make_client(store, m.port)
        async with running(client):
            await m.wait_login(KEY)
            await until(lambda: m.frames_received >= 2)
            await asyncio.sleep(0.3)
            assert store.outbox_stats().depth == n
            m.deny_uploads = False
            waiter = asyncio.create_task(m.wait_login(KEY))
            assert m.disconnect(KEY)
            await waiter
            await until(lambda: store.outbox_stats().depth == 0)
    assert m.upload_summary()["items"] == n


def test_a_simulated_day_of_master_outage_loses_and_duplicates_nothing(tmp_path):
    """Virtual time: the master is gone for 24 h while readings keep arriving."""

    async def main():
        store = make_store(tmp_path)
        fill(store, 10)
        port = free_port()
        m = MasterStation(tmp_path / "master.db", clock=LoopClock(START))
        await m.start(port=port)
        client = make_client(store, port, heartbeat=300.0, response_timeout=30.0,
                             backoff_base=1.0, poll_interval=5.0)
        client.config = UplinkConfig(client.config.primary, heartbeat_period=300.0,
                                     reconnect_backoff_cap=600.0)
        async with running(client):
            await until(lambda: store.outbox_stats().depth == 0, timeout=300)
            await m.stop()                                      # the master goes away
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with store.batch():                                 # the reader keeps storing
                for i in range(1, 11):
                    store.write_daily(DailyReading(meter(i), DAY + timedelta(days=1), D(i + 1),
                                                   datetime(2024, 5, 11, 0, 7)))
            client.notify_outbox()
            await asyncio.sleep(86400)
            assert store.outbox_stats().depth == 10
            await m.start(port=port)                            # and comes back a day later
            await until(lambda: store.outbox_stats().depth == 0, timeout=1200)
            outage = loop.time() - t0
        await m.stop()
        seqs = [r["seq"] for r in m.uploads(KEY)]
        m.close()
        return outage, seqs, client.stats

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        outage, seqs, stats = runner.run(main())
    assert 86400 <= outage < 86400 + 1200       # capped backoff: back within one cap period
    assert len(seqs) == len(set(seqs)) == 10 + 10 + 10 + 3   # daily, curves, new daily, events
    assert stats["connects"] >= 2


# --- serving the master -----------------------------------------------------------------------

@pytest.fixture
async def served(tmp_path):
    store = make_store(tmp_path)
    fill(store, 5, curves=False)
    services = FakeServices()
    async with master_at(tmp_path) as m:
        client = make_client(store, m.port, services=services, max_frame_bytes=512)
        async with running(client):
            await m.wait_login(KEY)
            await until(lambda: store.outbox_stats().depth == 0)
            yield m, client, store, services


async def test_master_reads_clock_energy_and_daily(served):
    m, client, store, services = served
    clock = await m.read_clock(KEY)
    assert abs((clock - START).total_seconds()) < 5
    # F129: nothing cached -> read on demand through the services
    services.energy[meter(2)] = RealtimeReading(meter(2), START, D("42.5"), (D("40"), D("2.5")))
    e = await m.read_energy(KEY, 2)
    assert e.total == D("42.5") and e.tariffs == (D("40.0000"), D("2.5000"))
    assert ("read_energy_now", meter(2)) in services.calls
    # a fresh stored reading answers without reading the meter
    store.write_realtime(RealtimeReading(meter(3), START, D("7")))
    services.calls.clear()
    assert (await m.read_energy(KEY, 3)).total == D("7")
    assert services.calls == []
    d = await m.read_daily(KEY, 4, DAY)
    assert d.total == D("4.25") and d.day == DAY and d.tariffs[2] is None
    with pytest.raises(MasterError):
        await m.read_energy(KEY, 99)       # no such measuring point: denied


async def test_archive_change_reaches_the_services_and_is_queryable(served):
    m, client, store, services = served
    recs = [g.MeterRecord(101, 6, "000000009006"), g.MeterRecord(102, 7, "000000009007",
                                                                 g.PROTO_DLT645_1997)]
    assert await m.set_archive(KEY, recs)
    assert ("archive_changed", ["000000009006", "000000009007"], []) in services.calls
    assert store.meter("000000009007").protocol == "dlt645-1997"
    got = await m.query_archive(KEY, [101, 102, 555])
    assert [(r.device_no, r.point, r.address) for r in got] == [
        (101, 6, "000000009006"), (102, 7, "000000009007")]
    # point 0 deletes
    assert await m.set_archive(KEY, [g.MeterRecord(101, 0, "000000009006")])
    assert services.calls[-1] == ("archive_changed", [], ["000000009006"])
    assert store.meter("000000009006") is None


async def test_large_archive_answer_is_multi_frame(served):
    m, client, store, services = served
    recs = [g.MeterRecord(200 + i, 100 + i, f"0000000{i + 10000:05d}") for i in range(60)]
    assert await m.set_archive(KEY, recs)
    frames = await m.request(KEY, 0x0A, [g.unit(0, 10, g.ArchiveQuery(
        tuple(r.device_no for r in recs)))])
    assert len(frames) > 1
    assert frames[0].seq.fir and not frames[0].seq.fin and frames[-1].seq.fin
    got = [r for f in frames for it in g.decode_units(f) for r in it.value.records]
    assert [r.address for r in got] == [r.address for r in recs]
    assert m.violations == []


async def test_comm_and_master_parameters(served):
    m, client, store, services = served
    items = await m.ask(KEY, 0x04, [g.unit(0, 1, g.TerminalCommParams(heartbeat_min=2)),
                                    g.unit(0, 3, g.MasterStationParams("127.0.0.1", 7001,
                                                                       "127.0.0.2", 7002))])
    assert items[0].fn == 1
    assert client.heartbeat_period == 120.0
    assert client.primary == HostPort("127.0.0.1", 7001)
    got = await m.ask(KEY, 0x0A, [g.unit(0, [1, 3])])
    assert got[0].value.heartbeat_min == 2
    assert got[1].value.backup_port == 7002


async def test_time_set_reset_version_and_events(served):
    m, client, store, services = served
    when = datetime(2024, 5, 10, 9, 30, 0)
    assert await m.set_time(KEY, when)
    assert ("set_time", when) in services.calls
    assert await m.reset(KEY, 2)
    await until(lambda: ("reset", 2) in services.calls)
    assert (await m.version(KEY)).vendor == "OPEN"
    rep = await m.events(KEY, False, 0, 2)      # general events: the two ERC31 of fill()
    assert [r.erc for r in rep.records] == [31, 31] and rep.pn == 2
    rep = await m.events(KEY, True, 0, 5)       # important: one ERC14 exists
    assert [r.erc for r in rep.records] == [14] and rep.pn == 1
    # load-control trip is not something a concentrator has: denied
    with pytest.raises(MasterError):
        await m.ask(KEY, 0x05, [g.unit(1, 1, g.RemoteTrip())])


async def test_transparent_forwarding_reaches_the_meter(served):
    m, client, store, services = served
    req = dlt645.encode(dlt645.read_request(meter(3), 0x00010000))
    services.forward_reply = b"\x68reply"
    answer = await m.forward(KEY, req, timeout_s=7)
    assert answer == b"\x68reply"
    call = services.calls[-1]
    assert call[:3] == ("forward_645", meter(3), req) and call[3] == 7.0
    with pytest.raises(MasterError):
        await m.forward(KEY, b"\x01\x02not645")


async def test_unknown_afn_is_denied_and_the_link_survives(served):
    m, client, store, services = served
    frames = await m.request(KEY, 0x0B, [g.unit(0, 1)])          # task data: not served
    assert frames[0].afn == 0x00 and g.decode_units(frames[0])[0].fn == 2
    frames = await m.request(KEY, 0x0C, [g.DataUnit((0,), (250,), b"\x01\x02")])
    assert g.decode_units(frames[0])[0].fn == 2
    assert client.stats["requests_denied"] == 2
    assert await m.read_clock(KEY) is not None


async def test_expired_tp_is_dropped_and_a_fresh_one_answered(served):
    m, client, store, services = served
    with pytest.raises(MasterError):
        await m.request(KEY, 0x0C, [g.unit(0, 2)], tp_delay=1, tp_age=timedelta(minutes=5),
                        timeout=0.5)
    assert client.stats["tp_expired"] == 1
    frames = await m.request(KEY, 0x0C, [g.unit(0, 2)], tp_delay=5)
    assert frames[0].tp is not None and frames[0].tp.delay == 5     # Tp copied back
    assert m.violations == []


# --- TLS --------------------------------------------------------------------------------------

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    try:
        for ca in ("ca", "rogue"):
            _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                     "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
                     "-subj", f"/CN={ca}", cwd=d)
        for name, ca, ext in (("server", "ca", "subjectAltName=IP:127.0.0.1"),
                              ("client", "ca", "extendedKeyUsage=clientAuth"),
                              ("intruder", "rogue", "extendedKeyUsage=clientAuth")):
            _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                     "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
                     cwd=d)
            (d / f"{name}.ext").write_text(ext + "\n")
            _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
                     f"{ca}.key", "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                     "-extfile", f"{name}.ext", cwd=d)
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl CLI cannot make test certificates: {exc}")
    return d


def _server_ctx(pki: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def test_tls_with_client_certificate_is_accepted(tmp_path, pki):
    store = make_store(tmp_path)
    n = fill(store, 3, events=0, curves=False)
    async with master_at(tmp_path, ssl_context=_server_ctx(pki)) as m:
        tls = TlsConfig(True, pki / "ca.pem", pki / "client.pem", pki / "client.key")
        async with running(make_client(store, m.port, tls=tls)):
            await m.wait_login(KEY)
            await until(lambda: store.outbox_stats().depth == 0)
    assert m.upload_summary()["items"] == n


async def test_tls_with_a_certificate_from_another_ca_is_refused(tmp_path, pki):
    store = make_store(tmp_path)
    async with master_at(tmp_path, ssl_context=_server_ctx(pki)) as m:
        tls = TlsConfig(True, pki / "ca.pem", pki / "intruder.pem", pki / "intruder.key")
        client = make_client(store, m.port, tls=tls)
        async with running(client):
            await asyncio.sleep(1.0)
            assert not client.logged_in and client.stats["logins"] == 0
        assert m.terminal_stats(KEY)["logins"] == 0
        # and a master whose certificate is not from the pinned CA is refused by the terminal
        tls = TlsConfig(True, pki / "rogue.pem", pki / "client.pem", pki / "client.key")
        client = make_client(store, m.port, tls=tls)
        async with running(client):
            await asyncio.sleep(0.5)
            assert client.stats["connects"] == 0


# --- outbox mapping ---------------------------------------------------------------------------

def test_curve_unit_round_trip_and_a5_sign():
    u = ob.CurveUnit(datetime(2024, 5, 9), 15, (D("1.239"), None, D("999999.99")))
    back = ob.CurveUnit.decode(u.encode())
    assert back.points == (D("1.23"), None, D("999999.99"))   # cut to A.11, not rounded up
    ll = ob.LineLossUnit(DAY, D(100), D(110), D("-10.0"), 3, 4)
    assert ob.LineLossUnit.decode(ll.encode()).loss_pct == D("-10.0")


def test_unencodable_rows_are_skipped_and_reported():
    from concentrator.store import CurveDay, OutboxItem
    items = [OutboxItem(1, "curve", meter(1), CurveDay(meter(1), DAY, 10, (D(1),) * 144),
                        START),
             OutboxItem(2, "daily", meter(2), DailyReading(meter(2), DAY, D(1), START), START)]
    skipped: list = []
    batches = ob.pack_items(items, point_of={meter(2): 2}.get, event_info=None,
                            skipped=skipped)
    assert [b.seqs for b in batches] == [(2,)]
    assert skipped[0][0] == 1 and "10 min" in skipped[0][1]
