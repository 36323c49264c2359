"""Prepayment over Q/GDW 1376.1: the data units' bytes, and purchases, credit, protect and
direct meter control between the simulated master and the uplink client (signed, guarded)."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concentrator.codec import DataUnitError, EncodeError
from concentrator.keystore import MemoryKeyStore
from concentrator.store import MeterRecord
from simulator.master import MasterError
from tests.test_uplink import (
    KEY,
    START,
    FakeServices,
    make_client,
    make_store,
    master_at,
    running,
)
from uplink import gdw13761 as g
from uplink import security as sec

K1 = bytes(range(32))
ADDR = g.Address("4403", 1, 1)
PREPAID, POSTPAID = "000000000001", "000000000002"   # at measuring points 1 and 2


def _down(afn: int, units: list[g.DataUnit]) -> g.Frame13761:
    return g.request(ADDR, afn, units, 3)


def _roundtrip(frame: g.Frame13761) -> list[g.DecodedUnit]:
    raw = g.encode(frame)
    again = g.decode(raw)
    assert g.encode(again) == raw
    return g.decode_units(again)


# --- A.3 (data format 03) -----------------------------------------------------------------------

@pytest.mark.parametrize(("value", "large", "wire"), [
    (0, False, "00 00 00 00"),
    (1234567, False, "67 45 23 01"),
    (-1234567, True, "67 45 23 51"),        # G (D6) and S (D4) in byte 4
    (9999999, True, "99 99 99 49"),
])
def test_a3_byte_layout(value, large, wire):
    assert g.encode_a3(value, large).hex(" ") == wire
    assert g.decode_a3(bytes.fromhex(wire)) == (value, large)


@given(st.integers(-9_999_999, 9_999_999), st.booleans())
@settings(max_examples=200)
def test_a3_round_trips(value, large):
    assert g.decode_a3(g.encode_a3(value, large)) == (value, large)


def test_a3_rejects_out_of_range_and_reserved_bits():
    with pytest.raises(EncodeError):
        g.encode_a3(10_000_000, False)
    with pytest.raises(DataUnitError):
        g.decode_a3(bytes.fromhex("00 00 00 80"))       # D7 of byte 4 is reserved
    assert g.decode_a3(b"\xee" * 4) is None


@pytest.mark.parametrize(("yuan", "wire"), [
    (D("100.50"), "00 05 10 00"),           # 100 500 厘, G = 0
    (D("-0.001"), "01 00 00 10"),
    (D("9999.999"), "99 99 99 09"),
    (D("12345"), "45 23 01 40"),            # above 9999.999: whole yuan, G = 1
])
def test_a3_money_uses_li_then_whole_yuan(yuan, wire):
    assert g.encode_a3_money(yuan).hex(" ") == wire
    assert g.decode_a3_money(bytes.fromhex(wire)) == yuan


def test_a3_money_never_rounds_a_purchase_and_reports_a_balance_toward_zero():
    for bad in (D("1.0005"), D("12345.5"), D("10000000")):
        with pytest.raises(EncodeError):
            g.encode_a3_money(bad)
    assert g.decode_a3_money(g.encode_a3_money(D("12345.99"), exact=False)) == D("12345")
    assert g.decode_a3_money(g.encode_a3_money(D("-12345.99"), exact=False)) == D("-12345")
    assert g.decode_a3_money(g.encode_a3_money(D("1.0009"), exact=False)) == D("1.000")


# --- the data units -----------------------------------------------------------------------------

def test_afn04_f47_purchase_parameters_bytes():
    p = g.PurchaseParams(1001, D("100.00"), False, D("20"), D("0"))
    frame = _down(0x04, [g.unit(3, 47, p)])
    raw = g.encode(frame)
    # DA p3 = 04 01, DT F47 = 40 05, order 1001 LE, 55H add, three A.3 in 厘.
    assert raw[14:35].hex(" ") == ("04 01 40 05 e9 03 00 00 55 00 00 10 00 00 00 02 00 "
                                  "00 00 00 00")
    assert _roundtrip(frame)[0].value == p
    replace = g.PurchaseParams(7, D("5"), True)
    assert replace.encode().hex(" ") == "07 00 00 00 aa 00 50 00 00 " + "ee " * 7 + "ee"


purchases = st.builds(
    g.PurchaseParams, st.integers(0, 0xFFFFFFFF),
    st.integers(-9_999_999, 9_999_999).map(lambda n: D(n).scaleb(-3)), st.booleans(),
    st.none() | st.integers(0, 9_999_999).map(lambda n: D(n).scaleb(-3)),
    st.none() | st.integers(0, 9_999_999).map(D))


@given(purchases, st.integers(1, 2040))
@settings(max_examples=100)
def test_purchase_parameters_round_trip_in_set_and_query_frames(p, pn):
    assert _roundtrip(_down(0x04, [g.unit(pn, 47, p)]))[0].value == p
    up = g.response(_down(0x0A, [g.unit(pn, 47)]), [g.unit(pn, 47, p)])
    assert _roundtrip(up)[0].value == p


def test_f47_flag_other_than_55_or_aa_is_a_data_unit_error():
    data = bytearray(g.PurchaseParams(1, D(1)).encode())
    data[4] = 0x00
    with pytest.raises(DataUnitError, match="55 nor AA"):
        g.decode_units(_down(0x04, [g.DataUnit((1,), (47,), bytes(data))]))


def test_afn0c_f23_remaining_credit_bytes():
    req = g.request(ADDR, 0x0C, [g.unit(1, 23)], 2)
    assert g.encode(req)[14:18].hex(" ") == "01 01 40 02"      # p1, DT F23 = 40 02
    up = g.response(req, [g.unit(1, 23, g.RemainingCredit(D("-3.5")))])
    assert g.encode(up)[18:22].hex(" ") == "00 35 00 10"       # -3 500 厘
    assert _roundtrip(up)[0].value == g.RemainingCredit(D("-3.5"))


def test_afn05_f25_protect_on_and_f33_off_bytes():
    on = _down(0x05, [g.unit(0, 25, g.ProtectOn(3))])
    assert g.encode(on)[14:19].hex(" ") == "00 00 01 03 03"     # DT F25 = 01 03, 3 x 0.5 h
    off = _down(0x05, [g.unit(0, 33)])
    assert g.encode(off)[14:18].hex(" ") == "00 00 01 04"       # DT F33 = 01 04, no data
    assert [it.value for it in _roundtrip(on) + _roundtrip(off)] == [g.ProtectOn(3),
                                                                     g.ProtectOff()]
    assert "90 min" in g.ProtectOn(3).describe()


def test_afn10_f2043_direct_meter_control_bytes():
    by_addr = _down(0x10, [g.unit(0, g.FN_METER_CONTROL,
                                  g.MeterControl("000000000161", g.METER_TRIP))])
    # p0, DT F2043 = 04 FF, the address low byte first, 1AH trip.
    assert g.encode(by_addr)[14:25].hex(" ") == "00 00 04 ff 61 01 00 00 00 00 1a"
    by_point = _down(0x10, [g.unit(5, g.FN_METER_CONTROL, g.MeterControl(None, g.METER_CLOSE))])
    assert g.encode(by_point)[18:25].hex(" ") == "ee ee ee ee ee ee 1c"
    assert _roundtrip(by_point)[0].value.action_name == "close"
    with pytest.raises(DataUnitError):
        g.MeterControl.decode(bytes(6) + b"\x55")


entries = st.builds(
    g.PurchaseEntry, st.integers(0, 0xFFFFFFFF),
    st.integers(0, 9_999_999).map(lambda n: D(n).scaleb(-3)), st.booleans(),
    st.none() | st.integers(-9_999_999, 9_999_999).map(lambda n: D(n).scaleb(-3)),
    st.none() | st.integers(-9_999_999, 9_999_999).map(D),
    st.none() | st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
        lambda t: t.replace(second=0, microsecond=0)))


@given(st.lists(entries, max_size=12), st.integers(1, 255))
@settings(max_examples=60)
def test_afn0a_f2044_purchase_history_round_trips(items, count):
    req = g.request(ADDR, 0x0A, [g.unit(2, g.FN_PURCHASE_HISTORY, g.HistoryRequest(count))], 1)
    assert _roundtrip(req)[0].value == g.HistoryRequest(count)
    up = g.response(req, [g.unit(2, g.FN_PURCHASE_HISTORY, g.PurchaseHistory(tuple(items)))])
    raw = g.encode(up)
    assert len(raw) == 8 + 8 + 4 + 1 + 22 * len(items)
    assert _roundtrip(up)[0].value == g.PurchaseHistory(tuple(items))


def test_describe_names_every_prepay_unit():
    frames = [_down(0x04, [g.unit(1, 47, g.PurchaseParams(1, D(1)))]),
              _down(0x05, [g.unit(0, 25, g.ProtectOn(0))]),
              _down(0x10, [g.unit(0, g.FN_METER_CONTROL, g.MeterControl(PREPAID, 0x1A))])]
    text = " ".join(v for f in frames for _, v in g.describe(f))
    assert "purchase order 1" in text and "until cancelled" in text and "direct trip" in text


# --- master <-> terminal ------------------------------------------------------------------------

@pytest.fixture
async def prepay(tmp_path):
    store = make_store(tmp_path)
    store.upsert_meter(MeterRecord(PREPAID, point=1))
    store.upsert_meter(MeterRecord(POSTPAID, point=2))
    services = FakeServices()
    services.prepaid[PREPAID] = D("10.00")
    keys = MemoryKeyStore()
    keys.set_terminal_key("4403", 1, K1)
    async with master_at(tmp_path, keys=keys) as m:
        client = make_client(store, m.port, services=services)
        client.guard = sec.guard_for(keys, "4403", 1, kv=store)
        async with running(client):
            await m.wait_login(KEY)
            yield m, client, store, services


def _purchase_calls(services: FakeServices) -> list[tuple]:
    return [c for c in services.calls if c[0] == "purchase"]


async def test_purchase_is_applied_and_a_repeated_order_is_confirmed_but_credited_once(prepay):
    m, client, store, services = prepay
    assert await m.purchase(KEY, 1, 1001, D("100.50"), alarm=D("20"), trip=D("0"))
    assert await m.balance(KEY, 1) == D("110.50")
    assert await m.purchase(KEY, 1, 1001, D("100.50"))          # the master retries
    assert await m.balance(KEY, 1) == D("110.50")                # credited once
    assert len(_purchase_calls(services)) == 2                   # both reached the service
    assert _purchase_calls(services)[0][1:] == (PREPAID, 1001, D("100.50"), False, "master")
    assert await m.purchase(KEY, 1, 1002, D("50"), replace=True)
    assert await m.balance(KEY, 1) == D("50")
    last = await m.last_purchase(KEY, 1)
    assert (last.order_no, last.amount, last.replace) == (1002, D("50"), True)
    history = await m.purchase_history(KEY, 1, 5)
    assert [(e.order_no, e.balance_before, e.balance_after) for e in history] == [
        (1002, D("110.50"), D("50")), (1001, D("10.00"), D("110.50"))]
    assert client.stats["auth_refused"] == 0 and m.violations == []


async def test_purchase_for_no_meter_or_a_postpaid_meter_is_denied(prepay):
    m, client, store, services = prepay
    assert not await m.purchase(KEY, 9, 1, D("10")) and _purchase_calls(services) == []
    assert not await m.purchase(KEY, 2, 2, D("10"))              # not prepaid
    assert not await m.purchase(KEY, 1, 3, D("-5"))              # rejected by the service
    assert services.prepaid == {PREPAID: D("10.00")}
    with pytest.raises(MasterError, match="denied"):
        await m.balance(KEY, 2)
    with pytest.raises(MasterError, match="denied"):
        await m.last_purchase(KEY, 1)                            # nothing bought yet
    assert m.violations == []


async def test_protect_on_for_a_while_per_meter_and_off(prepay):
    m, client, store, services = prepay
    assert await m.protect(KEY, True, 90)
    until = services.protected[None]
    assert until is not None and timedelta(minutes=90) <= until - START < timedelta(minutes=91)
    assert await m.protect(KEY, True, pn=1)                      # until cancelled
    assert services.protected[PREPAID] is None
    assert await m.protect(KEY, False, pn=1)
    assert await m.protect(KEY, False)
    assert services.protected == {}
    assert not await m.protect(KEY, True, pn=7)                  # no meter at p7
    assert m.violations == []


async def test_direct_trip_and_close_are_confirmed_when_queued(prepay):
    m, client, store, services = prepay
    assert await m.control_meter(KEY, 2, "trip")                 # by measuring point
    assert await m.control_meter(KEY, PREPAID, "close")          # by address
    assert [(t.meter, t.action) for t in services.tickets] == [(POSTPAID, "trip"),
                                                               (PREPAID, "close")]
    assert not await m.control_meter(KEY, "000000009999", "trip")   # not in the archive
    assert not await m.control_meter(KEY, 7, "trip")
    services.ticket_state = "failed"
    assert not await m.control_meter(KEY, 1, "trip")
    assert len(services.tickets) == 3
    assert m.violations == []


async def test_unsigned_or_replayed_purchase_is_refused_and_never_applied(prepay):
    m, client, store, services = prepay
    keys, m.keys = m.keys, None                 # a master without the key: PW all zeros
    try:
        assert not await m.purchase(KEY, 1, 2001, D("500"))
    finally:
        m.keys = keys
    assert _purchase_calls(services) == []
    assert services.prepaid[PREPAID] == D("10.00")
    assert await m.purchase(KEY, 1, 2002, D("1"))
    genuine = m.last_request(KEY)
    assert not await m.command(KEY, 0x04, [], resend=genuine)   # the same frame again
    assert len(_purchase_calls(services)) == 1
    assert services.prepaid[PREPAID] == D("11.00")
    reasons = [e.detail["reason"] for e in store.events_since(0, 100) if e.erc == sec.ERC_AUTH]
    assert reasons == ["no-mac", "replayed"]
    assert client.stats["auth_refused"] == 2
    # Unsigned protect and direct control are refused the same way.
    m.keys = None
    try:
        assert not await m.protect(KEY, True)
        assert not await m.control_meter(KEY, 1, "trip")
    finally:
        m.keys = keys
    assert services.protected == {} and services.tickets == []


async def test_master_control_commands_for_prepayment(prepay):
    """The JSON commands ``concentrator-sim master-cmd`` sends (one per operation)."""
    m, client, store, services = prepay
    assert await m.control({"cmd": "purchase", "terminal": KEY, "pn": 1, "order": 5,
                            "amount": "2.5", "alarm": "1"}) is True
    assert await m.control({"cmd": "balance", "terminal": KEY, "pn": 1}) == D("12.50")
    hist = await m.control({"cmd": "purchases", "terminal": KEY, "pn": 1, "count": 3})
    assert [e.order_no for e in hist] == [5]
    assert await m.control({"cmd": "protect", "terminal": KEY, "on": True, "minutes": 30})
    assert await m.control({"cmd": "control-meter", "terminal": KEY, "meter": POSTPAID,
                            "action": "trip"})
    assert services.tickets[-1].meter == POSTPAID
    with pytest.raises(ValueError):
        await m.control({"cmd": "control-meter", "terminal": KEY, "pn": 1, "action": "open"})
