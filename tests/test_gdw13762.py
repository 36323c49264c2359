"""Q/GDW 1376.2 codec: protocols.md §4.7 vectors byte-exact, data units, builders, fuzzing."""

from datetime import date, datetime

import pytest
from hypothesis import HealthCheck, given, settings
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
from plc_driver import gdw13762 as g


def h(s: str) -> bytes:
    return bytes.fromhex(s)


# (hex, direction, prm, comm_mode, afn, fn, seq, expected data unit)
VECTORS = [
    ("68 0F 00 41 00 00 28 00 00 00 12 02 00 7D 16", g.DOWN, 1, 1, 0x12, 2, 0, g.NoData()),
    ("68 13 00 81 00 00 40 00 00 00 00 01 00 FF FF 00 00 C0 16", g.UP, 0, 1, 0x00, 1, 0,
     g.Confirm(0xFFFF, 0, 2009)),
    ("68 15 00 41 00 00 28 00 00 00 05 01 00 00 26 00 00 00 00 95 16", g.DOWN, 1, 1, 0x05, 1, 0,
     g.MasterAddress("000000002600")),
    ("68 0F 00 41 00 00 50 00 00 00 03 08 00 9C 16", g.DOWN, 1, 1, 0x03, 4, 0, g.NoData()),
    ("68 15 00 81 00 00 40 00 00 00 03 08 00 00 26 00 00 00 00 F2 16", g.UP, 0, 1, 0x03, 4, 0,
     g.MasterAddress("000000002600")),
    ("68 0F 00 41 00 00 5F 00 00 00 03 01 00 A4 16", g.DOWN, 1, 1, 0x03, 1, 0, g.NoData()),
    ("68 18 00 81 00 00 40 00 00 00 03 01 00 53 45 54 52 08 12 11 13 00 41 16", g.UP, 0, 1,
     0x03, 1, 0, g.VendorVersion("ES", "RT", date(2011, 12, 8), 0x0013)),
    ("68 0F 00 41 00 00 00 00 00 00 10 01 00 52 16", g.DOWN, 1, 1, 0x10, 1, 0, g.NoData()),
    ("68 13 00 81 00 00 40 00 00 00 10 01 00 73 01 DC 05 27 16", g.UP, 0, 1, 0x10, 1, 0,
     g.SlaveCount(371, 1500)),
    ("68 12 00 41 00 00 00 00 00 00 10 02 00 00 00 0F 62 16", g.DOWN, 1, 1, 0x10, 2, 0,
     g.SlaveInfoQuery(0, 15)),
]

MONITOR_645 = h("68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
MONITOR_VECTOR = h(
    "68 2F 00 41 04 00 00 00 00 01 00 26 00 00 00 00 61 01 00 00 00 00 13 01 00 02 00 00 10 "
    "68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16 32 16"
)


@pytest.mark.parametrize("hexs,direction,prm,mode,afn,fn,seq,unit", VECTORS)
def test_eastsoft_vectors_decode_to_stated_fields_and_reencode(
    hexs, direction, prm, mode, afn, fn, seq, unit
):
    raw = h(hexs)
    frame = g.decode(raw)
    assert (frame.direction, frame.prm, frame.comm_mode) == (direction, prm, mode)
    assert (frame.afn, frame.fn, frame.seq) == (afn, fn, seq)
    assert frame.source is None and frame.relays == ()
    assert g.decode_data_unit(frame) == unit
    assert g.encode(frame) == raw


def test_pause_vector_expected_reply_bytes_and_length():
    frame = g.decode(h(VECTORS[0][0]))
    assert isinstance(frame.info, g.InfoDown)
    assert frame.info.reply_bytes == 0x28
    assert not frame.info.module


def test_2009_confirm_is_kept_as_2009_and_2013_as_2013():
    c09 = g.decode_unit(0x00, 1, h("FF FF 00 00"), g.UP)
    assert c09.edition == 2009 and c09.encode() == h("FF FF 00 00")
    c13 = g.decode_unit(0x00, 1, h("01 00 00 00 05 00"), g.UP)
    assert c13 == g.Confirm(1, 5, 2013)
    assert c13.command_processed and c13.encode() == h("01 00 00 00 05 00")
    assert not g.Confirm(0, 0).command_processed
    with pytest.raises(DataUnitError):
        g.decode_unit(0x00, 1, h("01 00 00"), g.UP)


def test_monitor_vector_address_field_and_nested_645():
    frame = g.decode(MONITOR_VECTOR)
    assert frame.info.module and frame.info.relay_level == 0 and frame.seq == 1
    assert frame.source == "000000002600" and frame.destination == "000000000161"
    assert frame.target == "000000000161"
    unit = g.decode_data_unit(frame)
    assert unit == g.MonitorRequest(2, MONITOR_645, False, ())
    assert g.encode(frame) == MONITOR_VECTOR


def test_monitor_request_builder_matches_vector_except_routing_flag():
    frame = g.monitor_request(1, "000000002600", (), "000000000161", 2, MONITOR_645, 1)
    raw = g.encode(frame)
    # The project always routes itself (R1 D0 = 1); the hand-built vector leaves D0 = 0.
    expected = bytearray(MONITOR_VECTOR)
    expected[4] = 0x05
    expected[-2] = (expected[-2] + 1) & 0xFF
    assert raw == bytes(expected)


def test_monitor_request_with_relays_and_reply_swaps_path():
    relays = ("000000000201", "000000000202")
    req = g.monitor_request(200, "000000002600", relays, "000000000161", 2, MONITOR_645, 3)
    back = g.decode(g.encode(req))
    assert back == req
    assert back.info.relay_level == 2 and back.info.routing and back.info.module
    rep = g.monitor_reply(req, b"\x68reply", duration_s=3, cmd_quality=9, reply_quality=12)
    back = g.decode(g.encode(rep))
    assert back.direction == g.UP and back.seq == 200
    assert back.source == "000000000161" and back.destination == "000000002600"
    assert back.relays == ("000000000202", "000000000201")
    assert (back.info.cmd_quality, back.info.reply_quality) == (9, 12)
    assert g.decode_data_unit(back) == g.MonitorReply(3, 2, b"\x68reply")


def test_deny_names_and_builder():
    frame = g.decode(g.encode(g.deny(7, 11, 3)))
    unit = g.decode_data_unit(frame)
    assert unit == g.Deny(11) and unit.reason == "slave did not answer"
    assert g.Deny(8).reason == "meter application layer did not answer"
    assert "unknown" in g.Deny(77).reason


def test_search_start_with_proxy_path_carries_a_field():
    f = g.search_start(5, 3, cco="000000002600", proxy_path=("000000000201", "000000000305"),
                       duration_min=20)
    back = g.decode(g.encode(f))
    assert back.relays == ("000000000201",) and back.destination == "000000000305"
    assert g.decode_data_unit(back) == g.SearchStart(None, 20, 1, 8)
    plain = g.decode(g.encode(g.search_start(6, 3)))
    assert not plain.info.module and plain.source is None


def test_report_slave_is_up_prm1_with_path_back_and_quality():
    node = g.FoundNode("000000000777", 2, 12, 1, 2, (("000000000901", 2), ("000000000902", 1)))
    f = g.report_slave(9, 3, node, "000000002600", ("000000000305", "000000000201"), quality=7)
    back = g.decode(g.encode(f))
    assert (back.direction, back.prm, back.afn, back.fn) == (g.UP, 1, 0x06, 4)
    assert back.source == "000000000777" and back.destination == "000000002600"
    assert back.relays == ("000000000305", "000000000201")
    assert back.info.cmd_quality == 7
    assert g.decode_data_unit(back) == g.ReportSlaves((node,))


RUN_INFO = g.ModuleRunInfo(
    mode=bytes([0x02, 0, 1, 2, 0, 0]),
    monitor_timeout_s=30, broadcast_timeout_s=120, max_frame_len=512, max_file_packet=256,
    upgrade_wait_min=5, master_address="000000002600", max_slaves=1015, current_slaves=371,
    protocol_date=date(2013, 3, 1), record_date=date(2016, 7, 20),
    vendor=g.VendorVersion("ES", "RT", date(2011, 12, 8), 0x13), rates=(100, 0x8000 | 500),
)

UNITS = [
    (0x00, 1, g.UP, g.Confirm(0xFFFFFFFF, 12)),
    (0x00, 2, g.DOWN, g.Deny(4)),
    (0x02, 1, g.DOWN, g.Forward(2, MONITOR_645)),
    (0x03, 1, g.UP, g.VendorVersion("TC", "01", date(2020, 2, 29), 0x0102)),
    (0x03, 4, g.UP, g.MasterAddress("112233445566")),
    (0x03, 10, g.UP, RUN_INFO),
    (0x05, 1, g.DOWN, g.MasterAddress("000000002600")),
    (0x05, 3, g.DOWN, g.Broadcast(2, MONITOR_645)),
    (0x06, 1, g.UP, g.ReportSlaveInfo((g.SlaveIndexEntry("000000000161", 2, 1),
                                       g.SlaveIndexEntry("000000000162", 1, 2)))),
    (0x06, 2, g.UP, g.ReportReadData(3, 2, 4, MONITOR_645)),
    (0x06, 3, g.UP, g.RouteWorkStatus(2)),
    (0x06, 4, g.UP, g.ReportSlaves((g.FoundNode("000000000161"),
                                    g.FoundNode("000000000999", 2, 3, 1, 1,
                                                (("000000000901", 2),))))),
    (0x06, 5, g.UP, g.ReportEvent(0, 2, MONITOR_645)),
    (0x10, 2, g.UP, g.SlaveInfoList(2, (g.SlaveInfo("000000000161", 1, 9, 2, 2, 0),
                                        g.SlaveInfo("000000000162", 15, 15, 7, 7, 3)))),
    (0x10, 4, g.UP, g.RouteRunStatus(3, 371, 360, 20, 1, 9600, (1, 2, 3), (4, 5, 6))),
    (0x11, 1, g.DOWN, g.AddSlaves((("000000000161", 2), ("000000000162", 1)))),
    (0x11, 2, g.DOWN, g.DeleteSlaves(("000000000161",))),
    (0x11, 3, g.DOWN, g.FixedRelayPath("000000000161", ("000000000201", "000000000202"))),
    (0x11, 4, g.DOWN, g.RouteWorkMode(0x12, 100)),
    (0x11, 5, g.DOWN, g.SearchStart(datetime(2024, 5, 6, 7, 8, 9), 60, 2, 16)),
    (0x13, 1, g.DOWN, g.MonitorRequest(2, MONITOR_645, True, ("000000000301",))),
    (0x13, 1, g.UP, g.MonitorReply(2, 2, MONITOR_645)),
    (0x14, 1, g.UP, g.RouteReadRequest(1, "000000000161", 4)),
    (0x14, 1, g.DOWN, g.RouteReadAnswer(1, MONITOR_645, False, ("000000000301",))),
    (0x14, 2, g.UP, g.ClockRequest()),
    (0x14, 2, g.DOWN, g.ClockAnswer(datetime(2024, 12, 31, 23, 59, 58))),
    (0x14, 3, g.UP, g.DelayCorrectRequest("000000000161", 3, b"\x01\x02")),
    (0x14, 3, g.DOWN, g.DelayCorrectAnswer(b"")),
    (0x12, 1, g.DOWN, g.NoData()),
    (0x11, 6, g.DOWN, g.NoData()),
]


@pytest.mark.parametrize("afn,fn,direction,unit", UNITS, ids=lambda x: type(x).__name__)
def test_data_units_round_trip_through_a_frame(afn, fn, direction, unit):
    if direction == g.UP:
        frame = g.reply(afn, fn, 17, 3, unit)
    else:
        frame = g.request(afn, fn, 17, 3, unit)
    back = g.decode(g.encode(frame))
    assert g.decode_data_unit(back) == unit
    assert back.data == unit.encode()


def test_run_info_gives_concurrency_and_counts():
    assert RUN_INFO.max_concurrent == 5 and RUN_INFO.channel_count == 1
    narrow = g.decode_unit(0x03, 10, bytes([1]) + RUN_INFO.encode()[1:], g.UP)
    assert narrow.max_concurrent == 1
    with pytest.raises(DataUnitError):
        g.decode_unit(0x03, 10, RUN_INFO.encode()[:-1], g.UP)  # one rate byte short


def test_unknown_afn_fn_is_raw_not_an_error():
    unit = g.decode_data_unit(g.reply(0xF0, 1, 0, 3, b"\x01\x02"))
    assert unit == g.RawUnit(0xF0, 1, b"\x01\x02")
    assert g.decode_unit(0x03, 3, b"\x00", g.UP) == g.RawUnit(0x03, 3, b"\x00")


def test_malformed_known_units_raise_data_unit_error():
    with pytest.raises(DataUnitError):
        g.decode_unit(0x13, 1, h("02 00 00 10 68"), g.DOWN)  # frame shorter than its length
    with pytest.raises(DataUnitError):
        g.decode_unit(0x12, 1, b"\x00", g.DOWN)  # no-data Fn with data
    with pytest.raises(DataUnitError):
        g.decode_unit(0x14, 2, h("99 99 99 99 99 99"), g.DOWN)  # not a date
    with pytest.raises(DataUnitError):
        g.decode_unit(0x03, 1, h("53 45 54 52 0A 12 11 13 00"), g.UP)  # date not BCD


def test_reserved_uplink_bits_survive_a_round_trip():
    raw = bytearray(g.encode(g.reply(0x10, 1, 3, 1, g.SlaveCount(1, 2))))
    raw[4] |= 0x0A  # R1 D1, D3 reserved
    raw[5] |= 0xF0  # R2 D4-D7 reserved
    raw[8] |= 0xFE  # R5 D1-D7 reserved
    raw[-2] = sum(raw[3:-2]) & 0xFF
    frame = g.decode(bytes(raw))
    assert frame.info.reserved != 0 and frame.info.seq == 3
    assert g.encode(frame) == bytes(raw)


def test_decode_errors_are_from_the_codec_tree():
    good = h(VECTORS[0][0])
    with pytest.raises(IncompleteFrame):
        g.decode(good[:-1])
    with pytest.raises(ChecksumError):
        g.decode(good[:-2] + b"\x00\x16")
    with pytest.raises(FrameFormatError):
        g.decode(good[:-1] + b"\x17")
    with pytest.raises(FrameFormatError):
        g.decode(h("68 0E 00") + good[3:])  # L below the minimum
    with pytest.raises(FrameFormatError):
        g.decode(good + b"\x00")
    with pytest.raises(FrameFormatError):
        g.decode(b"\x10" + good[1:])
    bad_dt = bytearray(good)
    bad_dt[11] = 0x03  # DT1 naming two Fn
    bad_dt[-2] = sum(bad_dt[3:-2]) & 0xFF
    with pytest.raises(DataUnitError):
        g.decode(bytes(bad_dt))
    short_a = bytearray(good)
    short_a[4] = 0x04  # module flag set, but no room for an A field
    short_a[-2] = sum(short_a[3:-2]) & 0xFF
    with pytest.raises(FrameFormatError):
        g.decode(bytes(short_a))


def test_encode_rejects_what_the_wire_cannot_carry():
    with pytest.raises(EncodeError):
        g.encode(g.Frame13762(g.DOWN, 1, 3, g.InfoDown(module=True, relay_level=1), 0x13, 1,
                              b"", "000000002600", (), "000000000161"))
    with pytest.raises(EncodeError):
        g.encode(g.Frame13762(g.DOWN, 1, 3, g.InfoUp(), 0x13, 1))
    with pytest.raises(EncodeError):
        g.encode(g.request(0x13, 1, 300, 3))
    with pytest.raises(EncodeError):
        g.encode(g.monitor_request(1, "2600", (), "000000000161", 2, b"", 3))
    with pytest.raises(EncodeError):
        g.MonitorRequest(2, bytes(256)).encode()
    with pytest.raises(EncodeError):
        g.request(0x13, 1, 1, 3, b"", cco="000000002600",
                  relays=tuple(f"{i:012d}" for i in range(16)), destination="000000000161")


def test_describe_and_to_dict_explain_a_frame():
    frame = g.decode(MONITOR_VECTOR)
    lines = dict(g.describe(frame))
    assert lines["destination"] == "000000000161"
    assert lines["afn"].startswith("13") and lines["fn"] == "F1"
    assert lines["unit.protocol"] == "2 (DL/T 645-2007)"
    assert lines["unit.frame"] == MONITOR_645.hex(" ").upper()
    d = g.to_dict(g.decode(g.encode(g.deny(1, 11, 3))))
    assert d["unit_type"] == "Deny" and d["unit"] == {"code": 11}
    assert dict(g.describe(g.decode(g.encode(g.deny(1, 11, 3)))))["unit.reason"] == (
        "slave did not answer"
    )
    broken = g.reply(0x13, 1, 0, 3, b"\x01")
    assert "data_error" in dict(g.describe(broken)) and "unit_error" in g.to_dict(broken)
    v = dict(g.describe(g.decode(h(VECTORS[6][0]))))
    assert v["unit.vendor"] == "ES" and v["unit.version"] == "0013"


# --- hypothesis ---------------------------------------------------------------------------

addresses = st.integers(0, 10**12 - 1).map(lambda n: f"{n:012d}")


@st.composite
def frames(draw):
    direction = draw(st.sampled_from([g.DOWN, g.UP]))
    module = draw(st.booleans())
    relays = tuple(draw(st.lists(addresses, max_size=15))) if module else ()
    level = len(relays) if module else draw(st.integers(0, 15))
    seq = draw(st.integers(0, 255))
    if direction == g.DOWN:
        info = g.InfoDown(
            draw(st.booleans()), draw(st.booleans()), module, draw(st.booleans()), level,
            draw(st.integers(0, 15)), draw(st.integers(0, 15)), draw(st.integers(0, 255)),
            draw(st.integers(0, 0x7FFF)), draw(st.booleans()), seq,
        )
    else:
        info = g.InfoUp(
            draw(st.booleans()), module, level, draw(st.integers(0, 15)),
            draw(st.integers(0, 15)), draw(st.integers(0, 15)), draw(st.integers(0, 15)),
            draw(st.integers(0, 15)), draw(st.booleans()), seq,
        )
    return g.Frame13762(
        direction, draw(st.integers(0, 1)), draw(st.integers(0, 63)), info,
        draw(st.integers(0, 255)), draw(st.integers(1, 248)), draw(st.binary(max_size=64)),
        draw(addresses) if module else None, relays, draw(addresses) if module else None,
    )


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_random_valid_frames_round_trip(frame):
    raw = g.encode(frame)
    assert len(raw) == int.from_bytes(raw[1:3], "little")
    back = g.decode(raw)
    assert back == frame
    assert g.encode(back) == raw
    # describe/to_dict never raise on a valid frame, whatever its data unit holds
    assert g.describe(back) and g.to_dict(back)["seq"] == frame.seq


@settings(max_examples=150)
@given(st.binary(max_size=300))
def test_random_bytes_whole_or_bytewise_give_only_frames_or_rejections(data):
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        dec = g.Gdw13762StreamDecoder()
        for chunk in chunks:
            for item in dec.feed(chunk):
                assert isinstance(item, g.Frame13762 | Rejected)
                if isinstance(item, Rejected):
                    assert isinstance(item.error, CodecError)
                else:
                    g.describe(item)
        assert dec.buffered <= 4096


@settings(max_examples=100)
@given(st.lists(frames(), min_size=1, max_size=4), st.binary(max_size=20), st.data())
def test_stream_recovers_frames_after_garbage_in_any_split(fs, garbage, data):
    garbage = garbage.replace(b"\x68", b"\x00")  # garbage without a frame start
    stream = garbage + b"".join(g.encode(f) for f in fs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = g.Gdw13762StreamDecoder()
    got = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        got += dec.feed(stream[prev:cut])
        prev = cut
    assert [x for x in got if isinstance(x, g.Frame13762)] == fs
