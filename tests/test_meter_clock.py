"""Setting far-off meters' clocks one meter at a time (issue 5): policy, frames, the reader's
clock task against the simulator's own meters.

The district tests run the real ``Reader``, ``Store``, ``AuditLog`` and ``MeterClock`` in
virtual time; requests go as DL/T 645 bytes straight to ``simulator.meters.MeterSlave``s (the
radio bypassed), whose clocks are the simulator's meter truth (``MeterData``): a write that
works moves the truth's clock, and the truth's daily freeze follows it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import date, datetime, time, timedelta

import pytest

from concentrator import dlt645
from concentrator.audit import AuditLog
from concentrator.clock import LoopClock
from concentrator.codec import DataUnitError, EncodeError
from concentrator.config import ClockConfig
from concentrator.dlt645 import ErrorBits
from concentrator.keystore import MemoryKeyStore, MeterPassword
from concentrator.meter_clock import (
    AUDIT_WHAT,
    ClockAction,
    MeterClock,
    WriteOutcome,
    clock_write_frames,
    decide,
    interpret_write_reply,
)
from concentrator.reader import ERC_METER_CLOCK, Exchanged, Reader
from concentrator.store import MeterRecord, Store
from concentrator.tasks import Task, TaskKind
from simulator.generate import generate
from simulator.meterdata import MeterData
from simulator.meters import MeterSlave, TruthSource
from simulator.vtime import VirtualTimeLoop

CLOCK = Task("clock", TaskKind.CLOCK, time(6, 10), time(8, 10), threshold_s=60.0)
DAILY = Task("daily_frozen", TaskKind.DAILY_FROZEN, time(0, 5), time(6, 0), retry_pause_s=600)
LAT = 2.0  # seconds one exchange takes (the meter handles the request half-way)
GOOD = "02123456"  # level 02, password 123456: what the meters and the key store agree on


def run(coro):
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)


# --- the pure policy --------------------------------------------------------------------------

def test_policy_edges_threshold_broadcast_limit_and_direction():
    cfg = ClockConfig(write_enabled=True, write_beyond_s=300.0)

    def action(drift, **kw):
        kw.setdefault("has_password", True)
        return decide(drift, threshold_s=60.0, config=cfg, **kw).action

    assert action(60.0) is action(-60.0) is ClockAction.NONE  # exactly at the threshold
    assert action(60.5) is action(-60.5) is ClockAction.BROADCAST
    assert action(300.0) is action(-300.0) is ClockAction.BROADCAST  # exactly at the limit
    assert action(300.5) is ClockAction.WRITE  # ahead
    assert action(-300.5) is ClockAction.WRITE  # behind
    assert action(-86400 * 3) is ClockAction.WRITE  # days off (lost battery)
    # A lower write limit writes sooner; the broadcast still serves those that cannot be written.
    low = ClockConfig(write_beyond_s=120.0)
    assert decide(200.0, threshold_s=60, config=low, has_password=True).action is ClockAction.WRITE
    d = decide(200.0, threshold_s=60, config=low, has_password=False)
    assert d.action is ClockAction.BROADCAST and "password" in d.reason


@pytest.mark.parametrize("kw, words", [
    ({"has_password": False}, "no DL/T 645 password"),
    ({"has_password": True, "config": ClockConfig(write_enabled=False)}, "disabled"),
    ({"has_password": True, "protocol": 1997}, "1997"),
    ({"has_password": True, "written_today": True}, "already written"),
    ({"has_password": True, "refused_today": True}, "refused the password"),
])
def test_a_far_off_meter_that_may_not_be_written_is_left_alone_with_the_reason(kw, words):
    d = decide(-1200.0, threshold_s=60.0, **kw)
    assert d.action is ClockAction.LEAVE
    assert words in d.reason


# --- frames -----------------------------------------------------------------------------------

def test_clock_write_frame_bytes_and_reply_interpretation():
    pwd = MeterPassword(2, "123456", "12345678")
    (frame,) = clock_write_frames("000000000161", datetime(2024, 3, 1, 6, 30, 15), pwd)
    # DI 0C 01 00 04, PA 02, P0..P2 56 34 12, C0..C3 78 56 34 12, ss mm hh WW(5 = Friday) DD MM YY
    assert dlt645.encode(frame).hex(" ") == (
        "fe fe fe fe 68 61 01 00 00 00 00 68 14 13 3f 34 33 37 35 89 67 45 ab 89 67 45 "
        "48 63 39 38 34 36 57 5d 16")
    req = dlt645.parse_write_request(dlt645.decode(dlt645.encode(frame)))
    assert (req.di, req.password, req.operator) == (0x0400010C, "02123456", "12345678")
    date_f, time_f = clock_write_frames("000000000161", datetime(2024, 3, 1, 6, 30, 15), pwd,
                                        combined=False)
    assert dlt645.decode_value(date_f.di, dlt645.parse_write_request(date_f).value) == date(2024, 3, 1)
    assert dlt645.decode_value(time_f.di, dlt645.parse_write_request(time_f).value) == time(6, 30, 15)
    with pytest.raises(EncodeError):
        dlt645.clock_write_request("000000000161", datetime(2024, 3, 1), di=0x00010000)

    a = "000000000161"
    ok = bytes.fromhex("68 61 01 00 00 00 00 68 94 00 C6 16".replace(" ", ""))
    assert interpret_write_reply(a, ok) == (WriteOutcome.OK, "accepted")
    refused = dlt645.encode(dlt645.error_reply(a, 0x14, ErrorBits.PASSWORD))
    assert refused.hex() == "6861010000000068d401373e16"
    assert interpret_write_reply(a, refused)[0] is WriteOutcome.PASSWORD_ERROR
    no_data = dlt645.encode(dlt645.error_reply(a, 0x14, ErrorBits.NO_DATA))
    assert interpret_write_reply(a, no_data)[0] is WriteOutcome.UNSUPPORTED
    assert interpret_write_reply(a, None)[0] is WriteOutcome.NO_REPLY
    assert interpret_write_reply("000000000162", ok)[0] is WriteOutcome.BAD_FRAME
    read_reply = dlt645.encode(dlt645.read_reply(a, 0x00010000, b"\x00" * 4))
    assert interpret_write_reply(a, read_reply)[0] is WriteOutcome.BAD_FRAME
    with pytest.raises(DataUnitError):
        dlt645.parse_write_reply(dlt645.decode(read_reply))


def test_simulated_meter_takes_a_clock_write_only_with_its_password():
    sc = generate(10, "street", seed=3, events=False)
    data = MeterData(sc)
    m = next(x.address for x in sc.all_meters() if x.protocol == "dlt645-2007")
    slave = MeterSlave(TruthSource(data, m), password=GOOD)
    t = 3600.0
    target = sc.start + timedelta(seconds=t) + timedelta(minutes=17)
    wrong = clock_write_frames(m, target, MeterPassword(2, "000000"))[0]
    reply = slave.handle(dlt645.decode(dlt645.encode(wrong)), t)
    assert reply is not None and reply.control == 0xD4 and reply.data == bytes([0x04])
    assert abs((data.clock(m, t) - target).total_seconds()) > 60  # unchanged
    for frame in clock_write_frames(m, target, MeterPassword(2, "123456"), combined=False):
        reply = slave.handle(dlt645.decode(dlt645.encode(frame)), t)
        assert reply is not None and reply.control == 0x94 and reply.data == b""
    assert abs((data.clock(m, t) - target).total_seconds()) < 1
    # Its daily freeze follows the new clock: 17 min ahead, it froze 17 min before midnight.
    t_next = 86400.0 - 16 * 60
    assert data.daily_freeze(m, t_next, 1).time == datetime.combine(sc.start.date() + timedelta(days=1),
                                                                    time(0))


# --- the reader's clock task against simulated meters ----------------------------------------

class District:
    """Simulated meters behind a direct link: each request is handled half-way through a
    ``LAT`` s exchange at the meter's truth time; broadcasts reach every meter."""

    def __init__(self, n: int = 10, seed: int = 3) -> None:
        self.scenario = generate(n, "street", seed=seed, events=False)
        self.data = MeterData(self.scenario)
        self.clock = LoopClock(self.scenario.start + timedelta(hours=6, minutes=10))
        # Meters of good crystal (under 2 s a day), so only the offsets set here matter.
        self.meters = [m.address for m in self.scenario.all_meters()
                       if m.protocol == "dlt645-2007"
                       and abs((self.data.clock(m.address, 86400.0) - self.data.clock(m.address, 0.0))
                               .total_seconds() - 86400) < 2]
        self.slaves = {a: MeterSlave(TruthSource(self.data, a), password=GOOD) for a in self.meters}
        self.requests: list[dlt645.Dlt645Frame] = []
        self.broadcasts = 0

    def t(self) -> float:
        return (self.clock.now() - self.scenario.start).total_seconds()

    def set_offset(self, meter: str, seconds: float, at: float = 0.0) -> None:
        """From scenario time ``at`` on, the meter's clock is ``seconds`` off (+: ahead)."""
        self.data.set_clock(meter, at, self.scenario.start + timedelta(seconds=at + seconds))

    def offset(self, meter: str) -> float:
        return (self.data.clock(meter, self.t()) - self.clock.now()).total_seconds()

    async def exchange(self, address, dlt645_bytes, *, priority=False):
        frame = dlt645.decode(dlt645_bytes)
        self.requests.append(frame)
        await asyncio.sleep(LAT / 2)
        reply = self.slaves[address].handle(frame, self.t())
        await asyncio.sleep(LAT / 2)
        if reply is None:
            return Exchanged(None, (), 1, LAT, "no reply")
        return Exchanged(dlt645.encode(reply), (), 1, LAT, None)

    async def broadcast(self, raw: bytes) -> None:
        self.broadcasts += 1
        frame = dlt645.decode(raw)
        for s in self.slaves.values():
            s.handle(frame, self.t())

    def writes_to(self, meter: str) -> list[dlt645.Dlt645Frame]:
        return [f for f in self.requests if f.address == meter and f.function == 0x14]


def make_reader(tmp_path, dist: District, keys: MemoryKeyStore, *, config=None):
    store = Store.open(tmp_path / "c.db", clock=dist.clock)
    for m in dist.meters:
        store.upsert_meter(MeterRecord(m))
    audit = AuditLog(tmp_path / "audit.jsonl", clock=dist.clock, fsync=False)
    mc = MeterClock(config or ClockConfig(), keys, dist.clock, audit=audit, kv=store)
    reader = Reader(dist, store, dist.clock, [CLOCK, DAILY], broadcaster=dist.broadcast,
                    meter_clock=mc)
    return store, audit, reader


def clock_events(store: Store) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for ev in store.events_since(0, 1000):
        if ev.erc == ERC_METER_CLOCK:
            detail = ev.detail if isinstance(ev.detail, dict) else json.loads(ev.detail)
            out.setdefault(ev.meter, []).append(detail)
    return out


def test_far_behind_meter_is_written_and_freezes_on_time_a_near_one_gets_the_broadcast(tmp_path):
    dist = District()
    behind, near, unwritten = dist.meters[:3]
    dist.set_offset(behind, -1200.0)  # 20 min behind
    dist.set_offset(near, 120.0)  # 2 min ahead
    dist.set_offset(unwritten, -1200.0)  # as far behind, but no password in the key store
    keys = MemoryKeyStore()
    for m in (behind, near):
        keys.set_meter_password(m, MeterPassword(2, "123456"))

    async def main():
        store, audit, reader = make_reader(tmp_path, dist, keys)
        rep = await reader.run_round(CLOCK)
        after_round = {m: dist.offset(m) for m in (behind, near, unwritten)}
        # Next day: the daily round at 00:05.
        await asyncio.sleep((datetime.combine(dist.scenario.start.date() + timedelta(days=1),
                                              time(0, 5)) - dist.clock.now()).total_seconds())
        daily = await reader.run_round(DAILY)
        return store, audit, rep, after_round, daily

    store, audit, rep, after, daily = run(main())
    # The far-off meter: one write, read back within a few seconds of the concentrator's clock.
    assert [f.di for f in dist.writes_to(behind)] == [dlt645.DI_CLOCK_DATETIME]
    assert abs(after[behind]) < 3
    ev = clock_events(store)
    assert ev[behind][0]["action"] == "write" and ev[behind][0]["outcome"] == "ok"
    assert ev[behind][0]["drift_s"] == pytest.approx(-1200, abs=3)
    assert abs(ev[behind][0]["drift_after_s"]) < 3
    assert rep.results[behind].ok
    # The near one: no write, only the broadcast, which corrected it.
    assert dist.writes_to(near) == [] and dist.broadcasts == 1
    assert ev[near][0]["action"] == "broadcast" and abs(after[near]) < 3
    # No password: left alone (an event says why), still 20 min behind.
    assert dist.writes_to(unwritten) == []
    assert ev[unwritten][0]["action"] == "leave" and "password" in ev[unwritten][0]["reason"]
    assert after[unwritten] == pytest.approx(-1200, abs=3)
    # Every write is in the audit log.
    entries = [e for e in audit.read() if e["what"] == AUDIT_WHAT]
    assert [(e["args"]["meter"], e["outcome"]) for e in entries] == [(behind, "ok")]
    # The written meter froze at midnight and is read in the first pass; the other is read
    # only once its own clock has passed midnight, 20 min late.
    assert behind not in daily.clock_behind and daily.results[behind].first_ok
    # (clock_behind: how far its clock was from midnight when found, minutes after 00:05)
    assert 600 < daily.clock_behind[unwritten] <= 1200
    assert not daily.results[unwritten].first_ok and daily.results[unwritten].ok
    day2 = dist.scenario.start.date() + timedelta(days=1)
    got = store.daily(behind, day2)
    assert got is not None and got.freeze_time == datetime.combine(day2, time(0))


def test_wrong_password_is_tried_once_raises_an_event_and_is_not_retried_that_day(tmp_path, caplog):
    dist = District()
    meter, nopw = dist.meters[:2]
    dist.set_offset(meter, 900.0)  # 15 min ahead
    dist.set_offset(nopw, -1800.0)
    keys = MemoryKeyStore()
    keys.set_meter_password(meter, MeterPassword(2, "654321"))  # the meter's is 123456

    async def main():
        store, audit, reader = make_reader(tmp_path, dist, keys)
        with caplog.at_level(logging.INFO, logger="concentrator.meter_clock"):
            await reader.run_round(CLOCK)
            await asyncio.sleep(3600)
            await reader.run_round(CLOCK)  # a second round the same day
        # A restarted concentrator (new MeterClock on the same store) keeps the day's refusal.
        restarted = MeterClock(ClockConfig(), keys, dist.clock, kv=store)
        return store, audit, restarted.refused_today(meter)

    store, audit, refused_after_restart = run(main())
    assert len(dist.writes_to(meter)) == 1
    ev = clock_events(store)[meter]
    assert ev[0]["outcome"] == "password_error"
    assert ev[1]["action"] == "leave" and "refused the password" in ev[1]["reason"]
    assert dist.offset(meter) == pytest.approx(900, abs=3)
    assert [e["outcome"] for e in audit.read() if e["what"] == AUDIT_WHAT] == \
        ["error: password_error: password wrong / unauthorised"]
    assert refused_after_restart
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(meter in r.getMessage() and "password" in r.getMessage() for r in errors)
    # The meter without a password: no write, and the log says why.
    assert dist.writes_to(nopw) == []
    assert any(nopw in r.getMessage() and "no DL/T 645 password" in r.getMessage()
               for r in caplog.records)


def test_meter_without_the_combined_item_gets_date_then_time_and_only_one_write_a_day(tmp_path):
    dist = District()
    meter = dist.meters[0]
    dist.set_offset(meter, -3 * 86400 - 600.0)  # lost its battery: 3 days and 10 min behind
    keys = MemoryKeyStore()
    keys.set_meter_password(meter, MeterPassword(2, "123456"))
    slave = dist.slaves[meter]
    plain_write = slave._write

    def no_combined(frame, t):  # an older meter: "no such data" for 04 00 01 0C
        if frame.di == dlt645.DI_CLOCK_DATETIME:
            return dlt645.error_reply(meter, 0x14, ErrorBits.NO_DATA)
        return plain_write(frame, t)

    slave._write = no_combined

    async def main():
        store, audit, reader = make_reader(tmp_path, dist, keys)
        await reader.run_round(CLOCK)
        off1 = dist.offset(meter)
        dist.set_offset(meter, -1200.0, at=dist.t())  # off again the same day (not realistic, but possible)
        await reader.run_round(CLOCK)
        return store, off1

    store, off1 = run(main())
    assert [f.di for f in dist.writes_to(meter)] == [dlt645.DI_CLOCK_DATETIME, dlt645.DI_CLOCK_DATE,
                                                      dlt645.DI_CLOCK_TIME]
    assert abs(off1) < 3
    ev = clock_events(store)[meter]
    assert ev[0]["outcome"] == "ok" and ev[1]["reason"] == "already written once today"
