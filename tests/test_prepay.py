"""Prepayment: ledger, purchases, thresholds driving real 0x1C commands, protection, restarts.

The service talks real DL/T 645 bytes to simulated meters (``simulator.meters.MeterSlave`` over
``simulator.meterdata.MeterData``) through a small in-process exchanger, in virtual time: a
trip really opens the simulated relay and the meter stops counting; a close resumes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pytest

from concentrator import dlt645 as d
from concentrator.audit import AuditLog
from concentrator.clock import LoopClock
from concentrator.config import PrepayAccountConfig, PrepayConfig
from concentrator.keystore import MemoryKeyStore, MeterPassword
from concentrator.prepay import (
    ERC_CREDIT_CONTROL,
    ERC_DIRECT_CONTROL,
    ERC_LOW_CREDIT,
    ERC_METER_REPLACED,
    ERC_PURCHASE,
    Account,
    PrepayService,
    ProtectCalendar,
    charge,
)
from concentrator.reader import Exchanged
from concentrator.store import MeterRecord, Store
from simulator.generate import generate
from simulator.meterdata import MeterData
from simulator.meters import MeterSlave, TruthSource
from simulator.vtime import VirtualTimeLoop

D = Decimal
PASSWORD = MeterPassword(2, "123456", "00000042")
PRICES = (D("0.80"), D("0.65"), D("0.50"), D("0.30"))


def run(coro):
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)


@pytest.fixture(scope="module")
def district():
    sc = generate(12, "street", seed=5, events=False)
    meters = tuple(dataclasses.replace(m, protocol="dlt645-2007", tariffs=4, profile="residential")
                   for m in sc.meters)
    sc = dataclasses.replace(sc, meters=meters, _index={})
    md = MeterData(sc)
    # Meters whose clock is right (a meter days off refuses every 0x1C as expired: real, but
    # not what these tests are about).
    good = [m.address for m in sc.meters
            if abs((md.clock(m.address, 0) - sc.start).total_seconds()) < 60]
    assert len(good) >= 3
    return sc, good


class SimMeters:
    """The exchanger: DL/T 645 bytes to simulated meters and back (0.5 s per exchange)."""

    def __init__(self, sc, t0: float):
        self.data = MeterData(sc)
        self.t0 = t0
        self.slaves = {m.address: MeterSlave(TruthSource(self.data, m.address), password="02123456",
                                             prepaid="money") for m in sc.meters}
        self.dead: set[str] = set()
        self.sent: list[tuple[str, int, int | None]] = []  # (meter, function, N1)

    def t(self) -> float:
        return asyncio.get_running_loop().time() - self.t0

    async def exchange(self, address, dlt645_bytes, *, priority=False):
        frame = d.decode(dlt645_bytes)
        n1 = d.parse_remote_control(frame).action if frame.function == 0x1C else None
        self.sent.append((address, frame.function, None if n1 is None else int(n1)))
        await asyncio.sleep(0.5)
        if address in self.dead:
            return Exchanged(None, (), 3, 1.5, "no route answered")
        reply = self.slaves[address].handle(frame, self.t())
        return Exchanged(None if reply is None else d.encode(reply), (), 1, 0.5, None)

    def energy(self, meter):
        return self.data.energy(meter, self.t())

    def relay_open(self, meter):
        return self.data.relay_open(meter, self.t())

    def controls(self, meter, n1):
        return [s for s in self.sent if s[0] == meter and s[1] == 0x1C and s[2] == n1]


class World:
    """Store, clock, meters, key store and audit log; ``service()`` builds a PrepayService."""

    def __init__(self, tmp_path, sc, meters, **cfg):
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        self.sc = sc
        self.clock = LoopClock(sc.start, t0=self.t0)
        self.path = tmp_path / "c.db"
        self.store = Store.open(self.path, clock=self.clock)
        for m in sc.meters:
            self.store.upsert_meter(MeterRecord(m.address))
        self.sim = SimMeters(sc, self.t0)
        self.keys = MemoryKeyStore()
        for m in sc.meters:
            self.keys.set_meter_password(m.address, PASSWORD)
        self.audit = AuditLog(tmp_path / "audit.jsonl", clock=self.clock, fsync=False)
        accounts = cfg.pop("accounts", None) or tuple(
            PrepayAccountConfig(a, prices=PRICES, alarm=D(20), trip=D(0), initial_credit=D(100))
            for a in meters)
        self.config = PrepayConfig(enabled=True, read_interval=900.0, accounts=accounts,
                                   retry_backoff=60.0, max_attempts=3, **cfg)

    def service(self) -> PrepayService:
        return PrepayService(self.store, self.clock, self.sim, self.keys, self.audit, self.config)

    def reopen(self) -> PrepayService:
        self.store.close()
        self.store = Store.open(self.path, clock=self.clock)
        return self.service()

    def events(self, erc):
        return [e for e in self.store.events_since(0, 10_000) if e.erc == erc]


async def until(pred, timeout=3600.0, step=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(step)


async def running(svc):
    stop = asyncio.Event()
    task = asyncio.create_task(svc.run(stop))
    return stop, task


async def stopped(stop, task):
    stop.set()
    await task


# --- pure parts ----------------------------------------------------------------------------------


def test_charge_prices_each_tariff_register_and_refuses_backwards_registers():
    tou = Account("000000000001", None, PRICES, D(20), D(0))
    before = (D("100.00"), (D("10"), D("20"), D("30"), D("40.00")))
    after = (D("103.00"), (D("10.5"), D("21"), D("30.5"), D("41.00")))
    assert charge(tou, before, after) == (D("3.00"), D("0.5") * D("0.80") + D("0.65")
                                          + D("0.5") * D("0.50") + D("0.30"))
    flat = Account("000000000001", D("0.52"), (), D(20), D(0))
    assert charge(flat, before, after) == (D("3.00"), D("1.56"))
    # A meter answering the total only: a TOU account charges it at its highest price.
    assert charge(tou, (D(100), ()), (D(101), ())) == (D(1), D("0.80"))
    assert charge(flat, after, before) is None


def test_protected_periods_cross_midnight_and_join_a_holiday():
    cal = ProtectCalendar([(time(22), time(6))], [date(2024, 3, 2)])
    assert cal.protected_until(datetime(2024, 3, 1, 21, 59)) is None
    # 22:00 on the 1st -> the night, then the whole holiday, then the next night until 06:00.
    assert cal.protected_until(datetime(2024, 3, 1, 23, 0)) == datetime(2024, 3, 3, 6, 0)
    assert cal.protected_until(datetime(2024, 3, 4, 5, 0)) == datetime(2024, 3, 4, 6, 0)
    assert cal.protected_until(datetime(2024, 3, 4, 12, 0)) is None


# --- purchases -----------------------------------------------------------------------------------


def test_a_purchase_applies_once_per_order_number_and_replace_sets_the_balance(tmp_path, district):
    sc, good = district
    m = good[0]

    async def main():
        w = World(tmp_path, sc, [m])
        svc = w.service()
        assert await svc.balance(m) == D(100)
        r = await svc.purchase(m, 7001, D("50.00"), False, None, None, "master")
        assert (r.status, r.balance_before, r.balance_after) == ("applied", D(100), D("150.00"))
        again = await svc.purchase(m, 7001, D("50.00"), False, None, None, "master")
        assert (again.status, again.balance_before, again.balance_after) == \
            ("duplicate", D(100), D("150.00"))
        assert await svc.balance(m) == D("150.00")
        rep = await svc.purchase(m, 7002, D("30.00"), True, D(10), D(2), "master")
        assert (rep.status, rep.balance_after) == ("applied", D("30.00"))
        assert svc.account(m).alarm_threshold == D(10) and svc.account(m).trip_threshold == D(2)
        hist = await svc.purchases(m)
        assert [p.order_no for p in hist] == [7002, 7001] and hist[0].replace
        assert len(w.events(ERC_PURCHASE)) == 2
        assert w.events(ERC_PURCHASE)[0].detail["balance_after"] == "150.00"
        # Unknown meters, meters that are not prepaid, nonsense amounts.
        other = next(a.address for a in sc.meters if a.address != m)
        assert (await svc.purchase(other, 1, D(5), False, None, None, "master")).status == "not-prepaid"
        assert (await svc.purchase("999999999999", 1, D(5), False, None, None, "master")).status \
            == "unknown-meter"
        assert (await svc.purchase(m, 8, D(-5), False, None, None, "master")).status == "rejected"
        assert (await svc.purchase(m, 9, D(5), False, D(1), D(3), "master")).status == "rejected"
        assert await svc.balance(m) == D("30.00")
        assert await svc.balance(other) is None

    run(main())


# --- balance from consumption --------------------------------------------------------------------


def test_the_balance_follows_consumption_at_flat_and_time_of_use_prices(tmp_path, district):
    sc, good = district
    flat_m, tou_m = good[0], good[1]
    accounts = (PrepayAccountConfig(flat_m, flat_price=D("0.52"), alarm=D(0), trip=D(-1000),
                                    initial_credit=D(500)),
                PrepayAccountConfig(tou_m, prices=PRICES, alarm=D(0), trip=D(-1000),
                                    initial_credit=D(500)))

    async def main():
        w = World(tmp_path, sc, [], accounts=accounts)
        svc = w.service()
        assert await svc.read_meter(flat_m) == "baseline"
        assert await svc.read_meter(tou_m) == "baseline"
        e0 = {m: w.sim.energy(m) for m in (flat_m, tou_m)}
        await asyncio.sleep(26 * 3600)
        assert await svc.read_meter(flat_m) == "charged"
        assert await svc.read_meter(tou_m) == "charged"
        e1 = {m: w.sim.energy(m) for m in (flat_m, tou_m)}
        used = (e1[flat_m][0] - e0[flat_m][0]) * D("0.52")
        assert used > 0
        assert await svc.balance(flat_m) == D(500) - used
        tou_cost = sum((b - a) * p for a, b, p in zip(e0[tou_m][1], e1[tou_m][1], PRICES, strict=True))
        assert await svc.balance(tou_m) == D(500) - tou_cost
        # Re-sending an older reading changes nothing; a reading with no value waits.
        assert svc.on_reading(flat_m, w.clock.now() - timedelta(hours=1), e1[flat_m][0]) == "stale"
        assert svc.on_reading(flat_m, w.clock.now() + timedelta(seconds=1), None) == "missing"
        # The meter was replaced: registers start again near zero -> new baseline, ERC8, no charge.
        before = await svc.balance(flat_m)
        assert svc.on_reading(flat_m, w.clock.now() + timedelta(minutes=1), (D("1.00"),)) == "replaced"
        assert await svc.balance(flat_m) == before
        assert [e.meter for e in w.events(ERC_METER_REPLACED)] == [flat_m]
        assert svc.on_reading(flat_m, w.clock.now() + timedelta(minutes=2), (D("3.00"),)) == "charged"
        assert await svc.balance(flat_m) == before - 2 * D("0.52")

    run(main())


# --- thresholds drive the relay ----------------------------------------------------------------


def test_low_credit_alarms_then_trips_stops_consumption_and_a_purchase_closes(tmp_path, district):
    sc, good = district
    m = good[0]
    kwh_day = D(str(next(x.daily_kwh for x in sc.meters if x.address == m)))
    # Credit for about one and a half days; alarm a day before the trip.
    credit = (kwh_day * D("1.5") * D("0.5")).quantize(D("0.01"))
    alarm = (kwh_day * D("0.5")).quantize(D("0.01"))
    accounts = (PrepayAccountConfig(m, flat_price=D("0.5"), alarm=alarm, trip=D(0),
                                    initial_credit=credit),)

    async def main():
        w = World(tmp_path, sc, [], accounts=accounts)
        svc = w.service()
        stop, task = await running(svc)
        await until(lambda: w.events(ERC_LOW_CREDIT), timeout=3 * 86400, step=600)
        await until(lambda: w.sim.slaves[m].controls.alarm, timeout=600, step=5)
        assert w.sim.controls(m, 0x2A) and not w.sim.relay_open(m)
        await until(lambda: w.sim.relay_open(m), timeout=2 * 86400, step=300)
        # Tripped at or below the threshold: the balance is at most one read interval's use.
        bal = await svc.balance(m)
        assert bal <= 0 and bal > -kwh_day * D("0.5")
        await until(lambda: any(e.detail["action"] == "trip" for e in w.events(ERC_CREDIT_CONTROL)),
                    timeout=600, step=5)
        trip_ev = [e for e in w.events(ERC_CREDIT_CONTROL) if e.detail["action"] == "trip"][0]
        assert trip_ev.detail["outcome"] == "verified"
        # Consumption has stopped: a day later the registers and the balance are unchanged.
        frozen = w.sim.energy(m)[0]
        await asyncio.sleep(86400)
        assert w.sim.energy(m)[0] == frozen and await svc.balance(m) == bal
        r = await svc.purchase(m, 1, D(100), False, None, None, "master")
        assert r.status == "applied"
        await until(lambda: not w.sim.relay_open(m), timeout=600, step=5)
        assert w.sim.controls(m, 0x1C) and w.sim.controls(m, 0x2B)  # direct close, alarm off
        await asyncio.sleep(6 * 3600)
        assert w.sim.energy(m)[0] > frozen  # consumption resumed
        await stopped(stop, task)
        outcomes = [(e.detail["action"], e.detail["outcome"]) for e in w.events(ERC_CREDIT_CONTROL)]
        assert outcomes == [("alarm", "verified"), ("trip", "verified"),
                            ("close", "verified"), ("alarm_release", "verified")]
        audit = [e for e in w.audit.read() if e["what"].startswith("prepay.")]
        assert [e["what"] for e in audit] == ["prepay.alarm", "prepay.trip", "prepay.close",
                                              "prepay.alarm_release"]
        assert all(e["outcome"] == "ok" for e in audit)

    run(main())


def test_a_trip_in_a_protected_night_waits_until_morning(tmp_path, district):
    sc, good = district
    m = good[0]
    accounts = (PrepayAccountConfig(m, flat_price=D("0.5"), alarm=D(0), trip=D(0),
                                    initial_credit=D(10)),)

    async def main():
        w = World(tmp_path, sc, [], accounts=accounts, protect_daily=((time(22), time(6)),))
        svc = w.service()
        stop, task = await running(svc)
        await asyncio.sleep(22 * 3600 + 1800)  # 22:30 on the first day
        await svc.purchase(m, 1, D("0"), True, None, None, "master")  # credit gone at night
        await asyncio.sleep(60)
        assert [a.state for a in svc.open_actions()] == ["deferred"]
        assert svc.open_actions()[0].next_at == datetime.combine(sc.start.date() + timedelta(days=1),
                                                                 time(6))
        await asyncio.sleep(7 * 3600)  # 05:30: still protected
        assert not w.sim.relay_open(m) and not w.sim.controls(m, 0x1A)
        await until(lambda: w.sim.relay_open(m), timeout=3600, step=30)
        assert w.clock.now().time() >= time(6)
        assert any("deferred" in e["outcome"] for e in w.audit.read())
        await stopped(stop, task)

    run(main())


def test_the_masters_protect_flag_holds_a_trip_until_it_is_released(tmp_path, district):
    sc, good = district
    m = good[0]
    accounts = (PrepayAccountConfig(m, flat_price=D("0.5"), alarm=D(0), trip=D(0),
                                    initial_credit=D(10)),)

    async def main():
        w = World(tmp_path, sc, [], accounts=accounts)
        svc = w.service()
        stop, task = await running(svc)
        await svc.set_protect(None, True, None, "master")
        await svc.purchase(m, 1, D("0"), True, None, None, "master")
        await asyncio.sleep(2 * 86400)
        assert not w.sim.relay_open(m) and [a.state for a in svc.open_actions()] == ["deferred"]
        await svc.set_protect(m, False, None, "master")
        await until(lambda: w.sim.relay_open(m), timeout=600, step=5)
        # A protect with an end lapses by itself.
        await svc.purchase(m, 2, D("50"), False, None, None, "master")
        await until(lambda: not w.sim.relay_open(m), timeout=600, step=5)
        await svc.set_protect(m, True, w.clock.now() + timedelta(hours=3), "master")
        await svc.purchase(m, 3, D("0"), True, None, None, "master")
        await asyncio.sleep(2 * 3600)
        assert not w.sim.relay_open(m)
        await until(lambda: w.sim.relay_open(m), timeout=2 * 3600, step=30)
        await stopped(stop, task)

    run(main())


def test_a_meter_that_does_not_answer_is_retried_with_backoff_then_reported(tmp_path, district):
    sc, good = district
    m = good[0]

    async def main():
        w = World(tmp_path, sc, [m])
        svc = w.service()
        w.sim.dead.add(m)
        stop, task = await running(svc)
        ticket = await svc.request_control(m, "trip", "master")
        assert ticket.state == "pending"
        await until(lambda: w.events(ERC_DIRECT_CONTROL), timeout=3600, step=5)
        await stopped(stop, task)
        ev = w.events(ERC_DIRECT_CONTROL)[0]
        assert ev.detail["action"] == "trip" and ev.detail["attempts"] == 3
        assert ev.detail["outcome"].startswith("failed: no reply")
        assert (await svc.ticket(ticket.id)).state == "failed"
        sends = [e for e in w.audit.read() if e["what"] == "prepay.trip"]
        assert [e["args"]["attempt"] for e in sends] == [1, 2, 3]
        assert all(e["outcome"].startswith("error: no reply") for e in sends)
        gaps = [(datetime.fromisoformat(b["ts"]) - datetime.fromisoformat(a["ts"])).total_seconds()
                for a, b in zip(sends, sends[1:], strict=False)]
        assert 59 <= gaps[0] < 90 and 119 <= gaps[1] < 150  # backoff doubles

    run(main())


def test_a_credit_trip_that_fails_is_an_erc7_and_a_wrong_password_is_not_retried(tmp_path, district):
    sc, good = district
    m, m2 = good[0], good[1]

    async def main():
        w = World(tmp_path, sc, [m, m2])
        svc = w.service()
        w.sim.dead.add(m)
        w.keys.set_meter_password(m2, MeterPassword(2, "654321"))
        stop, task = await running(svc)
        await svc.purchase(m, 1, D(0), True, None, None, "master")
        await svc.purchase(m2, 1, D(0), True, None, None, "master")
        await until(lambda: len([e for e in w.events(ERC_CREDIT_CONTROL)
                                 if e.detail["action"] == "trip"]) == 2, timeout=7200, step=10)
        await stopped(stop, task)
        trips = {e.meter: e.detail for e in w.events(ERC_CREDIT_CONTROL) if e.detail["action"] == "trip"}
        assert trips[m]["attempts"] == 3 and trips[m]["outcome"].startswith("failed")
        assert trips[m2]["attempts"] == 1 and "password" in trips[m2]["outcome"]
        assert trips[m]["balance"] == "0.00"

    run(main())


# --- restart ----------------------------------------------------------------------------------------


def test_a_restart_keeps_balances_purchases_and_pending_actions(tmp_path, district):
    sc, good = district
    m = good[0]

    async def main():
        w = World(tmp_path, sc, [m])
        svc = w.service()
        await svc.read_meter(m)
        await svc.purchase(m, 42, D("12.34"), False, None, None, "master")
        w.sim.dead.add(m)
        await svc.purchase(m, 43, D("0"), True, None, None, "master")  # trip + alarm queued
        await svc.run_due()  # first attempts fail: the meter is silent
        assert {a.action: a.attempts for a in svc.open_actions()} == {"trip": 1, "alarm": 1}
        svc2 = w.reopen()  # a new service on the same file: config's initial credit not re-applied
        assert await svc2.balance(m) == D(0)
        assert [p.order_no for p in await svc2.purchases(m)] == [43, 42]
        dup = await svc2.purchase(m, 42, D("12.34"), False, None, None, "master")
        assert dup.status == "duplicate" and dup.balance_after == D("112.34")
        assert {a.action: a.attempts for a in svc2.open_actions()} == {"trip": 1, "alarm": 1}
        assert svc2.ledger(m).last_registers is not None
        w.sim.dead.clear()
        stop, task = await running(svc2)
        await until(lambda: w.sim.relay_open(m), timeout=3600, step=10)
        await stopped(stop, task)

    run(main())


# --- a month --------------------------------------------------------------------------------------


def test_a_month_of_periodic_reads_bills_true_consumption_within_one_interval(tmp_path, district):
    sc, good = district
    meters = good[:2]
    interval = 3600.0

    async def main():
        w = World(tmp_path, sc, [], accounts=tuple(
            PrepayAccountConfig(a, prices=PRICES, alarm=D(0), trip=D(-10**6),
                                initial_credit=D(10_000)) for a in meters))
        w.config = dataclasses.replace(w.config, read_interval=interval)
        svc = w.service()
        stop, task = await running(svc)
        await asyncio.sleep(1)
        start = {m: w.sim.energy(m) for m in meters}  # the baseline reads happened at t=0.5 s
        await asyncio.sleep(30 * 86400)
        await stopped(stop, task)
        for m in meters:
            end = w.sim.energy(m)
            true_cost = sum((b - a) * p for a, b, p in zip(start[m][1], end[1], PRICES, strict=True))
            billed = D(10_000) - await svc.balance(m)
            kwh_day = D(str(next(x.daily_kwh for x in sc.meters if x.address == m)))
            one_interval = kwh_day * D(4) / 24 * max(PRICES)  # generous: a peak hour's cost
            assert true_cost > 0
            assert abs(true_cost - billed) <= one_interval, (m, true_cost, billed)

    run(main())


# --- views ----------------------------------------------------------------------------------------


def test_control_handlers_show_balances_one_meter_and_actions(tmp_path, district):
    sc, good = district
    m = good[0]

    async def main():
        w = World(tmp_path, sc, [m])
        svc = w.service()
        h = svc.control_handlers()
        assert set(h) == {"prepay.balances", "prepay.meter", "prepay.actions"}
        await svc.purchase(m, 5, D("1.00"), True, None, None, "master")
        bal = await h["prepay.balances"]({})
        assert bal["meters"][0]["meter"] == m and bal["meters"][0]["balance"] == "1.00"
        assert bal["meters"][0]["state"] == "alarm"
        one = await h["prepay.meter"]({"address": m})
        assert one["purchases"][0]["order_no"] == 5
        assert [a["action"] for a in one["actions"]] == ["alarm"]
        acts = await h["prepay.actions"]({})
        assert acts["actions"][0]["state"] == "pending"
        from concentrator.control import CommandError
        with pytest.raises(CommandError):
            await h["prepay.meter"]({"address": "999999999999"})

    run(main())


def test_the_cli_renders_the_daemons_prepay_answers(tmp_path, district):
    from click.testing import CliRunner

    from concentrator.cli import main as cli_main
    from concentrator.cli_prepay import render_actions, render_balances, render_meter

    sc, good = district
    m = good[0]

    async def main():
        w = World(tmp_path, sc, [m])
        svc = w.service()
        await svc.purchase(m, 77, D("3.50"), True, None, None, "master")
        h = svc.control_handlers()
        return (await h["prepay.balances"]({}), await h["prepay.meter"]({"address": m}),
                await h["prepay.actions"]({}))

    bal, one, acts = run(main())
    assert m in render_balances(bal) and "3.50" in render_balances(bal)
    text = render_meter(one)
    assert "=3.50" in text and "by period 0.80 / 0.65 / 0.50 / 0.30" in text
    assert "alarm" in render_actions(acts) and "pending" in render_actions(acts)
    # No daemon on the socket: exit code 3, and a bad address is a usage error.
    runner = CliRunner()
    sock = str(tmp_path / "none.sock")
    assert runner.invoke(cli_main, ["--socket", sock, "prepay", "balances"]).exit_code == 3
    assert runner.invoke(cli_main, ["--socket", sock, "prepay", "show", "12"]).exit_code == 2
