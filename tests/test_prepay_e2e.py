"""Remote sale of electricity end to end (issue 8): the master station sells credit through
Q/GDW 1376.1, the real daemon (in virtual time) keeps each prepaid meter's relay in step over the
mesh with DL/T 645 0x1C, and the simulated meters' relays and registers show it happened."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal

from concentrator.audit import AuditLog
from simulator.generate import generate
from simulator.inprocess import VirtualDaemon
from simulator.vtime import VirtualTimeLoop

A, B, C = "000000956917", "000003383696", "000064019337"   # 2007 meters of the scenario
PW = "02123456"                                                # level 02, password 123456

EXTRA = f"""archive:
  - {{address: "{A}", point: 1}}
  - {{address: "{B}", point: 2}}
  - {{address: "{C}", point: 3}}
prepay:
  enabled: true
  read_interval: 15
  trip_expiry_minutes: 30
  max_attempts: 3
  retry_backoff: 60s
  accounts:
    - {{address: "{A}", price: 1.0, alarm: 3, trip: 1}}
    - {{address: "{B}", price: 1.0, alarm: 2, trip: 0.5}}
"""


def _events(master, erc: int) -> list[dict]:
    out = []
    for u in master.uploads():
        if u["afn"] == 0x0E:
            out += [r for r in u["value"]["records"] if r.get("erc") == erc]
    return out


def test_credit_alarm_trip_purchase_close_protect_and_a_silent_meter(tmp_path):
    scenario = generate(12, "street", 3, channel="hplc", events=False)
    passwords = {m: PW for m in (A, B, C)}
    seen: dict[str, object] = {}

    async def main() -> None:
        async with VirtualDaemon(scenario, tmp_path, extra_config=EXTRA,
                                 meter_passwords=passwords) as vd:
            master, term, md = vd.master, vd.terminal, vd.district.meterdata

            def t() -> float:
                return vd.district.now()

            await master.wait_login(term, 600)
            # A customer buys 6 yuan; the same purchase message delivered twice credits once.
            assert await master.purchase(term, 1, 7001, Decimal("6"))
            assert await master.purchase(term, 1, 7001, Decimal("6"))
            assert await master.balance(term, 1) == Decimal("6")
            assert len(await master.purchase_history(term, 1)) == 1
            # B buys 3 yuan and is protected (e.g. a medical case) until the master lifts it.
            assert await master.purchase(term, 2, 8001, Decimal("3"))
            assert await master.protect(term, True, pn=2)

            # A consumes: alarm below 3 yuan, trip at 1 yuan; the relay opens and A stops counting.
            await vd.until(lambda: md.relay_open(A, t()), 2 * 86400, step=60)
            alarm = [e for e in _events(master, 23) if e["pn"] == 1]
            assert alarm and Decimal(alarm[0]["detail"]["balance"]) < Decimal("3")
            tripped_at, e_trip = t(), md.energy(A, t())[0]
            assert await master.balance(term, 1) <= Decimal("1")
            await asyncio.sleep(3 * 3600)
            assert md.relay_open(A, t()) and md.energy(A, t())[0] == e_trip
            # B's credit ran out too, but its trip waits for the end of the protection.
            await vd.until(lambda: vd.daemon.prepay.ledger(B).balance <= Decimal("0.5"),
                           2 * 86400, step=60)
            await asyncio.sleep(1800)
            assert not md.relay_open(B, t())
            assert any(a.meter == B and a.state == "deferred"
                       for a in vd.daemon.prepay.open_actions())
            assert await master.protect(term, False, pn=2)
            await vd.until(lambda: md.relay_open(B, t()), 3600, step=30)

            # A buys again: the relay closes and consumption resumes.
            assert md.energy(A, t())[0] == e_trip     # nothing counted while open
            assert await master.purchase(term, 1, 7002, Decimal("20"))
            await vd.until(lambda: not md.relay_open(A, t()), 3600, step=30)
            closed_at = t()
            await asyncio.sleep(4 * 3600)
            assert md.energy(A, t())[0] > md.energy(A, closed_at)[0]
            seen["trip_to_close_h"] = (closed_at - tripped_at) / 3600

            # The master trips C directly while C's node is dead: retried, then reported failed.
            vd.district.kill_node(C)
            assert await master.control_meter(term, 3, "trip")
            await vd.until(lambda: [e for e in _events(master, 5) if e["pn"] == 3], 3 * 3600,
                           step=60)
            (outcome,) = [e for e in _events(master, 5) if e["pn"] == 3]
            assert outcome["detail"]["outcome"] != "verified"
            assert outcome["detail"]["attempts"] == 3
            assert not md.relay_open(C, t())
            seen["erc7"] = [(e["pn"], e["detail"].get("action"), e["detail"].get("outcome"))
                            for e in _events(master, 7)]
            seen["end"] = vd.district.wall_time()

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())
    # Every credit-driven command's outcome reached the master: A's alarm, trip and close,
    # B's deferred trip.
    erc7 = seen["erc7"]
    assert (1, "trip", "verified") in erc7 and (1, "close", "verified") in erc7
    assert (2, "trip", "verified") in erc7
    assert seen["end"] < datetime(2024, 3, 8)
    # Every state change the master made is in the audit trail, with who and the outcome.
    audit = AuditLog(tmp_path / "audit.jsonl").read()
    purchases = [(e["args"]["order_no"], e["outcome"].split()[0]) for e in audit
                 if e["what"] == "prepay.purchase"]
    assert purchases[:2] == [(7001, "applied"), (7001, "duplicate")]
    assert (7002, "applied") in purchases
    assert any(e["what"] == "meter.trip" and e["args"]["meter"] == C
               and e["who"]["user"] == "master" for e in audit)
    assert any(e["what"] == "prepay.trip" and e["args"]["meter"] == A for e in audit)
