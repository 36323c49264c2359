"""Tests of the Q/GDW 1376.1 codec: the §3.11 vectors, data-unit layouts, builders, streams."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from concentrator.codec import (
    ChecksumError,
    CodecError,
    DataUnitError,
    EncodeError,
    FrameFormatError,
    IncompleteFrame,
    Rejected,
)
from uplink import gdw13761 as g
from uplink.gdw13761 import (
    Address,
    Control,
    DataUnit,
    DayTime,
    EventCounters,
    Frame13761,
    Seq,
    Tp,
    decode,
    encode,
)


def hx(s: str) -> bytes:
    return bytes.fromhex(s)


T1 = hx("68 32 00 32 00 68 C9 03 44 04 00 00 02 71 00 00 01 00 88 16")
T2 = hx("68 32 00 32 00 68 0B 03 44 04 00 00 00 61 00 00 01 00 B8 16")
T3_LOGIN = hx("68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 01 00 85 16")
T3_HEARTBEAT = hx("68 32 00 32 00 68 C9 00 02 34 12 00 02 71 00 00 04 00 88 16")
T3_CONFIRM = hx("68 32 00 32 00 68 0B 00 02 34 12 00 00 61 00 00 01 00 B5 16")
T4 = hx("68 4A 00 4A 00 68 5A 00 11 01 00 02 0C E0 00 00 02 00 00 27 13 13 24 FF CC 16")
T5_PREFIX = hx("68 CE 00 CE 00 68 AA 00 11 01 00 F6 0C E0 01 01 01 10 23 10 16 09 13 04 "
               "65 87 99 99 99 90 78 56 34 12")
T6 = hx("68 32 00 32 00 68 4B 03 44 04 00 02 0C 61 01 01 01 10 18 16")


# --- §3.11 vectors -----------------------------------------------------------------------------

def test_t1_login_decodes_and_reencodes() -> None:
    f = decode(T1)
    assert f.control == Control(uplink=True, prm=True, fcb_acd=False, fcv=False, function=9)
    assert f.address == Address("4403", 4, msa=0, group=False)
    assert f.afn == 0x02
    assert f.seq == Seq(1, fir=True, fin=True, con=True, tpv=False)
    assert f.units == (DataUnit((0,), (1,), b""),)
    assert (f.pw, f.ec, f.tp) == (None, None, None)
    assert [u.value for u in g.decode_units(f)] == [g.Login()]
    assert encode(f) == T1


def test_t2_master_confirm() -> None:
    f = decode(T2)
    assert not f.control.uplink and not f.control.prm and f.control.function == 11
    assert f.afn == 0x00 and f.seq == Seq(1, con=False)
    assert [u.value for u in g.decode_units(f)] == [g.AllConfirmed()]
    assert encode(f) == T2


@pytest.mark.parametrize("raw", [T3_LOGIN, T3_HEARTBEAT, T3_CONFIRM])
def test_t3_district_0200_terminal_4660(raw: bytes) -> None:
    f = decode(raw)
    assert f.address.district == "0200" and f.address.terminal == 0x1234 == 4660
    assert encode(f) == raw


def test_t3_heartbeat_is_f3() -> None:
    items = g.decode_units(decode(T3_HEARTBEAT))
    assert [(i.pn, i.fn, i.value) for i in items] == [(0, 3, g.Heartbeat())]


def test_t4_clock_read_with_tp() -> None:
    f = decode(T4)
    assert f.control == Control(False, True, False, True, 10)
    assert f.address == Address("1100", 1, msa=1)
    assert f.afn == 0x0C and f.seq.tpv and f.seq.seq == 0
    assert f.units == (DataUnit((0,), (2,), b""),)
    assert f.tp == Tp(0, DayTime(24, 13, 13, 27), 255)
    assert f.pw is None and f.ec is None
    assert encode(f) == T4


def test_t5_f129_reply_prefix_matches_document() -> None:
    energy = g.ForwardEnergy(datetime(2013, 9, 16, 10, 23), Decimal("999999.8765"),
                             (Decimal("123456.7890"), Decimal("1.5"), None, Decimal("0")))
    f = Frame13761(Control(True, False, True, False, 10), Address("1100", 1, msa=123),
                   0x0C, Seq(0, tpv=True), (g.unit(1, 129, energy),),
                   ec=EventCounters(3, 7), tp=Tp(0, DayTime(16, 10, 23, 5), 0))
    raw = encode(f)
    assert raw.startswith(T5_PREFIX)
    assert len(raw) == 51 + 8
    back = decode(raw)
    assert back == f and encode(back) == raw
    assert back.ec == EventCounters(3, 7)
    (item,) = g.decode_units(back)
    assert (item.pn, item.fn) == (1, 129)
    assert item.value.total == Decimal("999999.8765")
    assert item.value.tariffs[0] == Decimal("123456.7890")
    assert item.value.tariffs[2] is None


def test_t6_read_f129_request() -> None:
    f = decode(T6)
    assert f.control.function == 11 and f.control.prm and not f.control.uplink
    assert f.address == Address("4403", 4, msa=1)
    assert f.units == (DataUnit((1,), (129,), b""),)
    assert [(i.pn, i.fn, i.value) for i in g.decode_units(f)] == [(1, 129, None)]
    assert encode(f) == T6


# --- builders reproduce the vectors --------------------------------------------------------------

def test_builders_reproduce_login_heartbeat_and_confirm() -> None:
    assert encode(g.login(Address("4403", 4), 1)) == T1
    assert encode(g.confirm(decode(T1))) == T2
    assert encode(g.login(Address("0200", 0x1234), 1)) == T3_LOGIN
    assert encode(g.heartbeat(Address("0200", 0x1234), 1)) == T3_HEARTBEAT
    assert encode(g.confirm(decode(T3_HEARTBEAT))) == T3_CONFIRM


def test_request_builder_uses_function_table() -> None:
    addr = Address("4403", 4, msa=1)
    assert encode(g.request(addr, 0x0C, [g.unit(1, 129)], 1)) == T6
    table = g.FunctionTable.from_mapping({"requests": {"0C": [10, True]}})
    t4 = g.request(Address("1100", 1, msa=1), 0x0C, [g.unit(0, 2)], 0,
                   tp=Tp(0, DayTime(24, 13, 13, 27), 255), table=table)
    assert encode(t4) == T4


def test_request_builder_adds_pw_where_needed() -> None:
    f = g.request(Address("4403", 4), 0x05, [g.unit(0, 2, g.AllowClose())], 3)
    assert f.pw == bytes(16)
    raw = encode(f)
    assert decode(raw).pw == bytes(16)
    assert raw[6] == 0x5A      # default for AFN05: function 10 with FCV = 1


def test_response_copies_seq_msa_and_tp_and_sets_acd_with_ec() -> None:
    req = decode(T4)
    clock = g.TerminalClock(datetime(2024, 5, 6, 7, 8, 9))
    resp = g.response(req, [g.unit(0, 2, clock)], ec=EventCounters(1, 2))
    raw = encode(resp)
    back = decode(raw)
    assert back.control.uplink and not back.control.prm and back.control.acd
    assert back.control.function == 8
    assert back.address.msa == 1 and back.seq.seq == 0 and back.tp == req.tp
    assert back.ec == EventCounters(1, 2)
    (item,) = g.decode_units(back)
    assert item.value.time == datetime(2024, 5, 6, 7, 8, 9) and item.value.week == 1


def test_terminal_confirm_and_deny_of_a_set_request() -> None:
    req = g.request(Address("4403", 4, msa=2), 0x04,
                    [g.unit(0, 1, g.TerminalCommParams(heartbeat_min=15))], 7)
    ok = decode(encode(g.confirm(req)))
    no = decode(encode(g.deny(req)))
    assert ok.control.uplink and ok.control.function == 0 and ok.address.msa == 2
    assert [i.value for i in g.decode_units(ok)] == [g.AllConfirmed()]
    assert [i.value for i in g.decode_units(no)] == [g.AllDenied()]
    assert ok.seq.seq == 7 and ok.pw is None


def test_function_table_rejects_bad_code() -> None:
    with pytest.raises(ValueError):
        g.FunctionTable.from_mapping({"requests": {"0C": 16}})


# --- DA / DT and appendix A ----------------------------------------------------------------------

@pytest.mark.parametrize(("fn", "wire"), [(1, "01 00"), (3, "04 00"), (10, "02 01"),
                                          (25, "01 03"), (129, "01 10"), (161, "01 14")])
def test_dt_examples(fn: int, wire: str) -> None:
    assert g.encode_dt([fn]) == hx(wire)
    assert g.decode_dt(hx(wire)) == (fn,)


@pytest.mark.parametrize(("pn", "wire"), [(0, "00 00"), (1, "01 01"), (8, "80 01"),
                                          (9, "01 02")])
def test_da_examples(pn: int, wire: str) -> None:
    assert g.encode_da([pn]) == hx(wire)
    assert g.decode_da(hx(wire)) == (pn,)


def test_da_dt_several_points_and_fns() -> None:
    assert g.encode_da([1, 3, 8]) == hx("85 01")
    assert g.decode_da(hx("85 01")) == (1, 3, 8)
    assert g.decode_da(hx("FF 00")) == (g.ALL_POINTS,)
    assert g.encode_dt([129, 130]) == hx("03 10")
    with pytest.raises(EncodeError):
        g.encode_da([1, 9])        # two DA2 groups
    with pytest.raises(EncodeError):
        g.encode_dt([3, 1])        # not ascending
    with pytest.raises(DataUnitError):
        g.decode_dt(hx("00 01"))
    with pytest.raises(DataUnitError):
        g.decode_da(hx("00 03"))


def test_a1_clock_from_liming_output() -> None:
    raw = hx("13 13 13 24 49 13")
    assert g.decode_a1(raw) == datetime(2013, 9, 24, 13, 13, 13)
    assert g.a1_week(raw) == 2          # Tuesday
    assert g.encode_a1(datetime(2013, 9, 24, 13, 13, 13)) == raw
    assert g.decode_a1(b"\xee" * 6) is None and g.encode_a1(None) == b"\xee" * 6


def test_appendix_formats_and_missing_values() -> None:
    assert g.decode_a14(hx("65 87 99 99 99")) == Decimal("999999.8765")
    assert g.encode_a14(Decimal("12.5")) == hx("00 50 12 00 00")
    assert g.decode_a11(hx("56 34 12 00")) == Decimal("1234.56")
    assert g.encode_a11(Decimal("1234.56")) == hx("56 34 12 00")
    assert g.decode_a15(hx("23 10 16 09 13")) == datetime(2013, 9, 16, 10, 23)
    assert g.decode_a16(hx("27 13 13 24")) == DayTime(24, 13, 13, 27)
    assert g.decode_a20(hx("01 02 24")) == date(2024, 2, 1)
    for dec, n in ((g.decode_a11, 4), (g.decode_a14, 5), (g.decode_a15, 5),
                   (g.decode_a16, 4), (g.decode_a20, 3)):
        assert dec(b"\xee" * n) is None
    with pytest.raises(EncodeError):
        g.encode_a11(Decimal("1.234"))      # would lose a digit
    with pytest.raises(EncodeError):
        g.encode_a14(Decimal("-1"))
    with pytest.raises(DataUnitError):
        g.decode_a14(hx("6A 87 99 99 99"))
    with pytest.raises(DataUnitError):
        g.decode_a15(hx("00 00 31 02 24"))  # 31 February


@given(st.integers(0, 10**10 - 1))
@settings(max_examples=50)
def test_a14_round_trip(n: int) -> None:
    value = Decimal(n).scaleb(-4)
    assert g.decode_a14(g.encode_a14(value)) == value


# --- typed data units, one per Fn --------------------------------------------------------------

ADDR = Address("4403", 4, msa=1)
REC = g.MeterRecord(device_no=1, point=1, address="000000000161", protocol=g.PROTO_DLT645_2007,
                    port=31, baud=2400, password=hx("11 22 33 44 55 66"), tariffs=4,
                    integer_digits=6, decimal_digits=2, collector="000000000000",
                    major_class=5, minor_class=1)
REC2 = g.MeterRecord(2, 2, "201900001234", protocol=g.PROTO_DLT645_1997, port=2, baud=1200,
                     collector="000000009999")
VERSION = g.TerminalVersion("TOPS", "00012345", "V1.2", date(2023, 4, 5), "CAP-0001",
                            "2013", "H1.0", date(2022, 1, 2))

# (uplink, AFN, pn, Fn, value): every Fn this codec gives a layout to, both directions.
UNIT_CASES = [
    (True, 0x00, 0, 1, g.AllConfirmed()),
    (False, 0x00, 0, 2, g.AllDenied()),
    (True, 0x00, 0, 3, g.PerItemAck(0x04, (g.AckItem((0,), (1,), 0), g.AckItem((0,), (3,), 1)))),
    (False, 0x01, 0, 1, g.Reset(1)),
    (False, 0x01, 0, 2, g.Reset(2)),
    (False, 0x01, 0, 3, g.Reset(3)),
    (False, 0x01, 0, 4, g.Reset(4)),
    (True, 0x02, 0, 1, g.Login()),
    (True, 0x02, 0, 2, g.Logout()),
    (True, 0x02, 0, 3, g.Heartbeat(hx("00 01 02 03 04 05"))),
    (False, 0x04, 0, 1, g.TerminalCommParams(2, 3, 60, 2, 0b101, 15)),
    (False, 0x04, 0, 3, g.MasterStationParams("10.1.2.3", 7000, "10.1.2.4", 7001, "CMNET")),
    (False, 0x04, 0, 10, g.MeterArchive((REC, REC2))),
    (False, 0x05, 1, 1, g.RemoteTrip(4, 2)),
    (False, 0x05, 1, 2, g.AllowClose()),
    (False, 0x05, 0, 31, g.TerminalClock(datetime(2024, 2, 29, 23, 59, 58))),
    (False, 0x09, 0, 1, None),
    (True, 0x09, 0, 1, VERSION),
    (False, 0x0A, 0, 1, None),
    (True, 0x0A, 0, 1, g.TerminalCommParams()),
    (True, 0x0A, 0, 3, g.MasterStationParams("192.168.0.1", 9001)),
    (False, 0x0A, 0, 10, g.ArchiveQuery((1, 2, 10))),
    (True, 0x0A, 0, 10, g.MeterArchive((REC,))),
    (False, 0x0C, 0, 2, None),
    (True, 0x0C, 0, 2, g.TerminalClock(datetime(2013, 9, 24, 13, 13, 13), 2)),
    (False, 0x0C, 3, 129, None),
    (True, 0x0C, 3, 129, g.ForwardEnergy(datetime(2024, 1, 1, 0, 5), Decimal("123.4500"),
                                         (Decimal("100.0000"), Decimal("23.4500")))),
    (False, 0x0D, 2, 161, g.DayRequest(date(2024, 3, 1))),
    (True, 0x0D, 2, 161, g.DailyForwardEnergy(date(2024, 3, 1), datetime(2024, 3, 1, 0, 10),
                                              Decimal("5.0000"), (None,) * 4)),
    (False, 0x0E, 0, 1, g.EventRequest(0, 2)),
    (True, 0x0E, 0, 1, g.EventReply(2, 9, 0, 2, (
        g.EventRecord(14, hx("10 08 01 03 24 15 08 01 03 24")), g.EventRecord(35, hx("AA"))))),
    (False, 0x0E, 0, 2, g.EventRequest(250, 1)),
    (True, 0x0E, 0, 2, g.EventReply(0, 1, 255, 0, (g.EventRecord(31, b""),))),
    (False, 0x10, 0, 1, g.TransparentForward(31, hx("68 61 01 00 00 00 00 68 11 04 33 33 34 33 "
                                                    "14 16"))),
    (True, 0x10, 0, 1, g.TransparentReply(31, hx("FE FE 68 01 02"))),
]


def _frame_for(uplink: bool, afn: int, units: list[DataUnit]) -> Frame13761:
    ctl = Control(uplink, not uplink, False, not uplink, 8 if uplink else 10)
    pw = bytes(range(16)) if g.aux_has_pw(uplink, afn) else None
    return Frame13761(ctl, ADDR, afn, Seq(5), tuple(units), pw=pw)


@pytest.mark.parametrize(("uplink", "afn", "pn", "fn", "value"), UNIT_CASES,
                         ids=[f"{'up' if c[0] else 'down'}-AFN{c[1]:02X}-F{c[3]}"
                              for c in UNIT_CASES])
def test_unit_round_trip(uplink: bool, afn: int, pn: int, fn: int, value: object) -> None:
    if value is not None:
        data = value.encode()
        assert g.decode_item(uplink, afn, fn, data) == value
    f = _frame_for(uplink, afn, [g.unit(pn, fn, value)])
    raw = encode(f)
    back = decode(raw)
    assert back == f and encode(back) == raw
    assert [(i.pn, i.fn, i.value) for i in g.decode_units(back)] == [(pn, fn, value)]
    assert all(isinstance(t, str) for row in g.describe(back) for t in row)


def test_meter_archive_record_is_27_bytes_at_the_documented_offsets() -> None:
    data = REC.encode()
    assert len(data) == 27
    assert data[0:2] == hx("01 00") and data[2:4] == hx("01 00")
    assert data[4] == 3 << 5 | 31 and data[5] == 30
    assert data[6:12] == hx("61 01 00 00 00 00")
    assert data[18] == 4 and data[19] == (6 - 4) << 2 | (2 - 1) and data[26] == 0x51
    assert g.MeterArchive((REC, REC2)).encode()[:2] == hx("02 00")


def test_transparent_forward_layout_and_nested_frame_exposed() -> None:
    nested = hx("68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
    fwd = g.TransparentForward(2, nested)
    assert fwd.encode()[:6] == hx("02 6B 85 0A 10 00") and fwd.baud == 2400
    f = g.request(ADDR, 0x10, [g.unit(0, 1, fwd)], 2)
    back = decode(encode(f))
    (item,) = g.decode_units(back)
    assert item.value.payload == nested
    assert g.to_dict(back)["items"][0]["value"]["payload"] == nested.hex()
    assert "2400 8E1" in dict(g.describe(back))["p0 F1"]


def test_several_points_in_one_unit_are_pn_major() -> None:
    e = [g.ForwardEnergy(datetime(2024, 1, 1, 0, 0), Decimal(p), (Decimal(p),)) for p in (1, 2, 5)]
    f = _frame_for(True, 0x0C, [g.unit([1, 2, 5], 129, e)])
    back = decode(encode(f))
    assert back.units[0].pns == (1, 2, 5)
    assert [(i.pn, i.value.total) for i in g.decode_units(back)] == [
        (1, Decimal(1)), (2, Decimal(2)), (5, Decimal(5))]


def test_several_fns_in_one_unit_are_fn_minor() -> None:
    comm = g.TerminalCommParams(heartbeat_min=1)
    master = g.MasterStationParams("1.2.3.4", 5)
    f = _frame_for(False, 0x04, [g.unit(0, [1, 3], [comm, master])])
    back = decode(encode(f))
    assert [(i.fn, i.value) for i in g.decode_units(back)] == [(1, comm), (3, master)]


def test_unknown_fn_takes_the_rest_of_the_frame_as_raw() -> None:
    clock = g.TerminalClock(datetime(2024, 1, 2, 3, 4, 5))
    raw_tail = hx("01 02 03 04 05 00 00 01 00 AA")      # looks like more units: stays raw
    f = _frame_for(True, 0x0C, [g.unit(0, 2, clock), DataUnit((1,), (25,), raw_tail)])
    raw = encode(f)
    back = decode(raw)
    assert back == f and encode(back) == raw
    items = g.decode_units(back)
    assert items[0].value == clock
    assert items[1].value == g.RawUnit((1,), (25,), raw_tail)


def test_unknown_fn_unit_must_be_last_when_encoding() -> None:
    f = _frame_for(True, 0x0C, [DataUnit((1,), (25,), b"\x01"), g.unit(0, 2, b"\x00" * 6)])
    with pytest.raises(EncodeError):
        encode(f)


def test_encode_rejects_unit_data_not_matching_layout() -> None:
    with pytest.raises(EncodeError):
        encode(_frame_for(True, 0x0C, [DataUnit((0,), (2,), b"\x00" * 5)]))


def test_heartbeat_with_appended_clock_is_tolerated() -> None:
    clock = g.encode_a1(datetime(2024, 6, 1, 12, 0, 0))
    f = g.heartbeat(Address("4403", 4), 2, extra=clock)
    back = decode(encode(f))
    (item,) = g.decode_units(back)
    assert item.value.clock == datetime(2024, 6, 1, 12, 0, 0)
    assert g.confirm(back).control.function == 11


def test_event_reply_names_and_power_event() -> None:
    value = UNIT_CASES[30][4]
    f = _frame_for(True, 0x0E, [g.unit(0, 1, value)])
    text = dict(g.describe(decode(encode(f))))["p0 F1"]
    assert "terminal power off/on" in text and "2024-03-01 08:10:00" in text
    assert "unknown meter found" in text


# --- AUX rules ---------------------------------------------------------------------------------

def test_aux_presence_rules() -> None:
    assert g.aux_has_pw(False, 0x04) and g.aux_has_pw(False, 0x10)
    assert not g.aux_has_pw(True, 0x04) and not g.aux_has_pw(False, 0x0C)
    assert g.aux_has_pw(True, 0x06) and g.aux_has_pw(False, 0x06)


def test_encode_refuses_aux_that_the_header_does_not_announce() -> None:
    good = _frame_for(False, 0x04, [g.unit(0, 1, g.TerminalCommParams())])
    with pytest.raises(EncodeError):
        encode(Frame13761(good.control, good.address, good.afn, good.seq, good.units))
    with pytest.raises(EncodeError):   # EC without ACD
        encode(Frame13761(Control(True, False, False, False, 8), ADDR, 0x0C, Seq(0),
                          ec=EventCounters(0, 0)))
    with pytest.raises(EncodeError):   # Tp without TpV
        encode(Frame13761(Control(False, True, False, False, 11), ADDR, 0x0C, Seq(0),
                          tp=Tp(0, None, 0)))


def test_pw_on_downlink_forward_is_read_before_tp() -> None:
    fwd = g.TransparentForward(1, hx("01 02 03"))
    tp = Tp(9, DayTime(1, 2, 3, 4), 5)
    f = g.request(ADDR, 0x10, [g.unit(0, 1, fwd)], 4, pw=bytes(range(16)), tp=tp)
    raw = encode(f)
    assert raw[-2 - 6 - 16:-2 - 6] == bytes(range(16))
    back = decode(raw)
    assert back.pw == bytes(range(16)) and back.tp == tp


# --- bad input ---------------------------------------------------------------------------------

def test_bad_frames_raise_documented_errors() -> None:
    with pytest.raises(ChecksumError):
        decode(T1[:-2] + b"\x00\x16")
    with pytest.raises(IncompleteFrame):
        decode(T1[:-1])
    with pytest.raises(FrameFormatError):
        decode(T1[:1] + b"\x31" + T1[2:])          # protocol mark / length copies differ
    with pytest.raises(FrameFormatError):
        decode(T1[:-1] + b"\x17")
    with pytest.raises(FrameFormatError):
        decode(T1 + b"\x00")
    with pytest.raises(FrameFormatError):       # terminal address 0000
        zero = bytearray(T1)
        zero[9:11] = b"\x00\x00"
        zero[-2] = sum(zero[6:-2]) & 0xFF
        decode(bytes(zero))


def test_known_fn_truncated_is_a_data_unit_error() -> None:
    body = bytearray(hx("88 03 44 04 00 02 0C 60 01 01 01 10") + hx("23 10 16 09 13 04 65 87"))
    length = (len(body) << 2 | 2).to_bytes(2, "little")
    raw = b"\x68" + length + length + b"\x68" + bytes(body) + bytes([sum(body) & 0xFF, 0x16])
    with pytest.raises(DataUnitError):
        decode(raw)


def test_non_bcd_values_fail_in_decode_units_but_not_describe() -> None:
    energy = g.ForwardEnergy(None, Decimal(1), ()).encode()
    bad = energy[:6] + b"\xAB" + energy[7:]
    f = _frame_for(True, 0x0C, [DataUnit((1,), (129,), bad)])
    back = decode(encode(f))
    with pytest.raises(DataUnitError):
        g.decode_units(back)
    assert dict(g.describe(back))["error"].startswith("data units do not decode")
    assert "error" in g.to_dict(back)


# --- streaming ---------------------------------------------------------------------------------

def test_stream_splits_garbage_and_frames() -> None:
    stream = b"\x00\x68\x01" + T1 + b"\xff" + T4 + T6
    for step in (1, 3, len(stream)):
        dec = g.Gdw13761StreamDecoder()
        out: list[object] = []
        for i in range(0, len(stream), step):
            out += dec.feed(stream[i:i + step])
        frames = [o for o in out if isinstance(o, Frame13761)]
        assert [encode(f) for f in frames] == [T1, T4, T6]
        assert all(isinstance(o, Frame13761 | Rejected) for o in out)


def test_tp_expiry() -> None:
    tp = Tp(0, DayTime(24, 13, 13, 27), 5)
    assert not g.tp_expired(tp, datetime(2024, 9, 24, 13, 15))
    assert g.tp_expired(tp, datetime(2024, 9, 24, 13, 30))
    assert g.tp_expired(tp, datetime(2024, 10, 1, 0, 0))          # sent last month
    assert not g.tp_expired(Tp(0, DayTime(24, 13, 13, 27), 0), datetime(2030, 1, 1))


# --- property tests ----------------------------------------------------------------------------

energies = st.one_of(st.none(), st.integers(0, 10**10 - 1).map(lambda n: Decimal(n).scaleb(-4)))
minutes = st.one_of(st.none(), st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31))
                    .map(lambda d: d.replace(second=0, microsecond=0)))
days = st.one_of(st.none(), st.dates(date(2000, 1, 1), date(2099, 12, 31)))
text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=4)
ips = st.ip_addresses(v=4).map(str)
addresses = st.builds(Address, st.text("0123456789", min_size=4, max_size=4),
                      st.integers(1, 0xFFFF), st.integers(0, 127), st.booleans())
meter_addr = st.integers(0, 10**12 - 1).map(lambda n: f"{n:012d}")
records = st.builds(g.MeterRecord, st.integers(1, 2040), st.integers(0, 2040), meter_addr,
                    st.sampled_from([1, 2, 30, 31]), st.integers(1, 31),
                    st.sampled_from([0, 600, 1200, 2400, 4800, 7200, 9600, 19200]),
                    st.binary(min_size=6, max_size=6), st.integers(1, 48), st.integers(4, 7),
                    st.integers(1, 4), meter_addr, st.integers(0, 15), st.integers(0, 15))
event_records = st.builds(g.EventRecord, st.integers(1, 35), st.binary(max_size=12))


@st.composite
def event_replies(draw: st.DrawFn) -> g.EventReply:
    recs = tuple(draw(st.lists(event_records, max_size=3)))
    pm = draw(st.integers(0, 255))
    return g.EventReply(draw(st.integers(0, 255)), draw(st.integers(0, 255)), pm,
                        (pm + len(recs)) % 256, recs)


clocks = st.builds(g.TerminalClock,
                   st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31))
                   .map(lambda d: d.replace(microsecond=0)), st.integers(0, 7))
comm = st.builds(g.TerminalCommParams, st.integers(0, 255), st.integers(0, 255),
                 st.integers(0, 4095), st.integers(0, 3), st.integers(0, 255),
                 st.integers(0, 255))
master = st.builds(g.MasterStationParams, ips, st.integers(0, 0xFFFF), ips,
                   st.integers(0, 0xFFFF), text)
none = st.none()

# (uplink, AFN, Fn) -> strategy of the item value; "p" marks Fn that take measuring points.
ITEMS: dict[tuple[bool, int, int], st.SearchStrategy] = {}
for up in (False, True):
    ITEMS[(up, 0x00, 1)] = st.just(g.AllConfirmed())
    ITEMS[(up, 0x00, 2)] = st.just(g.AllDenied())
    ITEMS[(up, 0x00, 3)] = st.builds(g.PerItemAck, st.integers(0, 255), st.lists(
        st.builds(g.AckItem, st.just((0,)), st.sampled_from([(1,), (3,), (1, 3)]),
                  st.integers(0, 255)), max_size=3).map(tuple))
for f in (1, 2, 3, 4):
    ITEMS[(False, 0x01, f)] = st.just(g.Reset(f))
ITEMS[(True, 0x02, 1)] = st.builds(g.Login, st.binary(max_size=4))
ITEMS[(True, 0x02, 2)] = st.builds(g.Logout, st.binary(max_size=4))
ITEMS[(True, 0x02, 3)] = st.builds(g.Heartbeat, st.binary(max_size=8))
ITEMS[(False, 0x04, 1)] = comm
ITEMS[(False, 0x04, 3)] = master
ITEMS[(False, 0x04, 10)] = st.lists(records, max_size=3).map(lambda r: g.MeterArchive(tuple(r)))
ITEMS[(False, 0x05, 1)] = st.builds(g.RemoteTrip, st.integers(0, 15), st.integers(0, 15))
ITEMS[(False, 0x05, 2)] = st.just(g.AllowClose())
ITEMS[(False, 0x05, 31)] = clocks
ITEMS[(False, 0x09, 1)] = none
ITEMS[(True, 0x09, 1)] = st.builds(g.TerminalVersion, text, text, text, days, text, text,
                                   text, days)
ITEMS[(False, 0x0A, 1)] = none
ITEMS[(True, 0x0A, 1)] = comm
ITEMS[(False, 0x0A, 3)] = none
ITEMS[(True, 0x0A, 3)] = master
ITEMS[(False, 0x0A, 10)] = st.lists(st.integers(1, 2040), max_size=4).map(
    lambda n: g.ArchiveQuery(tuple(n)))
ITEMS[(True, 0x0A, 10)] = ITEMS[(False, 0x04, 10)]
ITEMS[(False, 0x0C, 2)] = none
ITEMS[(True, 0x0C, 2)] = clocks
ITEMS[(False, 0x0C, 129)] = none
ITEMS[(True, 0x0C, 129)] = st.builds(g.ForwardEnergy, minutes, energies,
                                     st.lists(energies, max_size=4).map(tuple))
ITEMS[(False, 0x0D, 161)] = st.dates(date(2000, 1, 1), date(2099, 12, 31)).map(g.DayRequest)
ITEMS[(True, 0x0D, 161)] = st.builds(g.DailyForwardEnergy, days, minutes, energies,
                                     st.lists(energies, max_size=4).map(tuple))
for f in (1, 2):
    ITEMS[(False, 0x0E, f)] = st.builds(g.EventRequest, st.integers(0, 255), st.integers(0, 255))
    ITEMS[(True, 0x0E, f)] = event_replies()
ITEMS[(False, 0x10, 1)] = st.builds(g.TransparentForward, st.integers(0, 31),
                                    st.binary(max_size=40), st.integers(0, 255),
                                    st.integers(0, 255), st.integers(0, 255))
ITEMS[(True, 0x10, 1)] = st.builds(g.TransparentReply, st.integers(0, 31),
                                   st.binary(max_size=40))
POINT_FNS = {129, 161}
TAKES_REST = {(0x00, 3), (0x02, 1), (0x02, 2), (0x02, 3)}
AFNS = sorted({a for (_, a, _) in ITEMS} | {0x03, 0x07, 0x0B})


@st.composite
def frames(draw: st.DrawFn) -> tuple[Frame13761, list[tuple[int, int, object]]]:
    uplink = draw(st.booleans())
    afn = draw(st.sampled_from(AFNS))
    fns = sorted(f for (u, a, f) in ITEMS if u == uplink and a == afn)
    units: list[DataUnit] = []
    expect: list[tuple[int, int, object]] = []
    for _ in range(draw(st.integers(0, 3)) if fns else 0):
        fn = draw(st.sampled_from(fns))
        if fn in POINT_FNS:
            group = draw(st.integers(0, 254))
            pns = sorted(draw(st.sets(st.integers(1, 8), min_size=1, max_size=3)))
            pns = [group * 8 + p for p in pns]
        else:
            pns = [0]
        values = [draw(ITEMS[(uplink, afn, fn)]) for _ in pns]
        units.append(g.unit(pns, fn, values))
        expect += [(pn, fn, v) for pn, v in zip(pns, values, strict=True)]
        if (afn, fn) in TAKES_REST:
            break
    else:
        if draw(st.booleans()):     # a unit of an Fn without a layout, always last
            raw = draw(st.binary(max_size=12))
            units.append(DataUnit((0,), (241,), raw))
            expect.append((0, 241, g.RawUnit((0,), (241,), raw)))
    acd = uplink and draw(st.booleans())
    seq = Seq(draw(st.integers(0, 15)), draw(st.booleans()), draw(st.booleans()),
              draw(st.booleans()), draw(st.booleans()))
    ctl = Control(uplink, draw(st.booleans()), acd if uplink else draw(st.booleans()),
                  draw(st.booleans()), draw(st.integers(0, 15)))
    pw = draw(st.binary(min_size=16, max_size=16)) if g.aux_has_pw(uplink, afn) else None
    ec = EventCounters(draw(st.integers(0, 255)), draw(st.integers(0, 255))) if acd else None
    tp = None
    if seq.tpv:
        send = draw(st.one_of(st.none(), st.builds(DayTime, st.integers(1, 31),
                                                   st.integers(0, 23), st.integers(0, 59),
                                                   st.integers(0, 59))))
        tp = Tp(draw(st.integers(0, 255)), send, draw(st.integers(0, 255)))
    frame = Frame13761(ctl, draw(addresses), afn, seq, tuple(units), pw, ec, tp)
    return frame, expect


@given(frames())
@settings(max_examples=300, deadline=None)
def test_random_valid_frames_round_trip(case: tuple[Frame13761, list]) -> None:
    frame, expect = case
    raw = encode(frame)
    back = decode(raw)
    assert back == frame
    assert encode(back) == raw
    assert [(i.pn, i.fn, i.value) for i in g.decode_units(back)] == expect
    assert g.describe(back) and g.to_dict(back)["afn"] == frame.afn


def _only_frames_or_rejections(data: bytes) -> None:
    whole = g.Gdw13761StreamDecoder(max_user_length=255)
    out = whole.feed(data)
    one = g.Gdw13761StreamDecoder(max_user_length=255)
    out_bytewise: list[object] = []
    for b in data:
        out_bytewise += one.feed(bytes([b]))
    for item in out + out_bytewise:
        assert isinstance(item, Frame13761 | Rejected)
        if isinstance(item, Frame13761):
            g.describe(item)
            g.to_dict(item)
    assert whole.buffered <= 255 + 8 and one.buffered <= 255 + 8


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_random_bytes_yield_only_frames_or_rejections(data: bytes) -> None:
    _only_frames_or_rejections(data)


@given(frames(), st.data())
@settings(max_examples=200, deadline=None)
def test_corrupted_frames_with_fixed_checksum_never_crash(case: tuple, data: st.DataObject
                                                          ) -> None:
    # Mutate the user data and repair CS so the decoder gets past the framing checks.
    raw = bytearray(encode(case[0]))
    if len(raw) > 255 + 8:
        return
    i = data.draw(st.integers(6, len(raw) - 3))
    raw[i] = data.draw(st.integers(0, 255))
    raw[-2] = sum(raw[6:-2]) & 0xFF
    try:
        f = decode(bytes(raw))
    except CodecError:
        pass
    else:
        assert encode(f) == bytes(raw)
        g.describe(f)
        g.to_dict(f)
    _only_frames_or_rejections(bytes(raw))
