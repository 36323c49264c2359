"""DL/T 645 codec: the protocols.md §1.14 vectors byte-exact, typed values, builders, streams."""

from __future__ import annotations

import json
from datetime import date, datetime, time
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from concentrator import dlt645
from concentrator.codec import (
    ChecksumError,
    CodecError,
    DataUnitError,
    EncodeError,
    FrameFormatError,
    IncompleteFrame,
    Rejected,
)
from concentrator.dlt645 import Dlt645Frame, ErrorBits, RemoteAction, StatusWord3

H = bytes.fromhex
ADDR = "558890213594"

# protocols.md §1.14. "…" prefixes of V2/V3 are the same meter's header as V2's reply.
V1 = H("FE FE FE FE 68 94 35 21 90 88 55 68 93 06 C7 68 54 C3 BB 88 49 16")
V2_REQ = H("FE FE FE FE 68 94 35 21 90 88 55 68 11 04 33 33 34 33 09 16")
V2 = H("FE FE FE FE 68 94 35 21 90 88 55 68 91 08 33 33 34 33 59 35 33 33 81 16")
V3 = H("68 94 35 21 90 88 55 68 91 06 33 34 34 35 7B 55 5E 16")
V3B = H("68 94 35 21 90 88 55 68 91 07 33 34 35 35 6B 35 33 63 16")
V4 = H("FE FE FE FE 68 94 35 21 90 88 55 68 1C 10 35 33 33 33 33 33 33 33 4D 33 8C 8C 56 3C 3A 54 A5 16")
V4_ACK = H("68 94 35 21 90 88 55 68 9C 00 C3 16")
V5 = H("68 99 99 99 99 99 99 68 08 06 84 55 43 38 39 4A 4B 16")
V6_REQ = H("68 03 00 00 00 00 00 68 01 02 44 E9 03 16")
V6 = H("68 03 00 00 00 00 00 68 81 04 44 E9 33 34 EC 16")
V7_REQ = H("FE FE FE FE 68 61 01 00 00 00 00 68 11 04 33 33 34 33 14 16")
V7 = H("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16")

ALL_VECTORS = [V1, V2_REQ, V2, V3, V3B, V4, V4_ACK, V5, V6_REQ, V6, V7_REQ, V7]


@pytest.mark.parametrize("raw", ALL_VECTORS, ids=lambda b: b.hex()[-12:])
def test_vectors_reencode_byte_exact(raw: bytes) -> None:
    assert dlt645.encode(dlt645.decode(raw)) == raw


def test_v1_read_address_reply() -> None:
    f = dlt645.decode(V1)
    assert (f.address, f.control, f.preamble, f.function) == (ADDR, 0x93, 4, 0x13)
    assert f.is_reply and not f.is_error
    assert dict(dlt645.describe(f))["meter address"] == ADDR
    assert dlt645.encode(dlt645.read_address_reply(ADDR, preamble=4)) == V1


def test_v2_energy_request_and_reply() -> None:
    assert dlt645.encode(dlt645.read_request(ADDR, 0x00010000)) == V2_REQ
    f = dlt645.decode(V2)
    assert f.di == 0x00010000 and f.value_bytes == H("26 02 00 00")
    assert dlt645.decode_value(f.di, f.value_bytes) == Decimal("2.26")
    assert dlt645.to_dict(f)["value"] == "2.26"


def test_v3_voltage_and_current() -> None:
    f = dlt645.decode(V3)
    assert f.di == 0x02010100 and dlt645.decode_value(f.di, f.value_bytes) == Decimal("224.8")
    f = dlt645.decode(V3B)
    assert f.di == 0x02020100 and dlt645.decode_value(f.di, f.value_bytes) == Decimal("0.238")


def test_v4_remote_trip_and_ack() -> None:
    f = dlt645.decode(V4)
    rc = dlt645.parse_remote_control(f)
    assert rc.password == "02000000" and rc.operator == "00000000"
    assert rc.action is RemoteAction.TRIP
    assert rc.expiry == datetime(2021, 7, 9, 23, 59, 59)
    built = dlt645.remote_control(ADDR, "02000000", "00000000", RemoteAction.TRIP,
                                  datetime(2021, 7, 9, 23, 59, 59))
    assert dlt645.encode(built) == V4
    ack = dlt645.decode(V4_ACK)
    assert ack.is_reply and not ack.is_error and ack.data == b""
    assert dlt645.encode(dlt645.control_reply(ADDR, 0x1C)) == V4_ACK


def test_v5_broadcast_time() -> None:
    f = dlt645.decode(V5)
    assert f.address == dlt645.BROADCAST_ADDRESS
    assert dlt645.parse_broadcast_time(f) == datetime(2017, 6, 5, 10, 22, 51)
    assert dlt645.encode(dlt645.broadcast_time(datetime(2017, 6, 5, 10, 22, 51), preamble=0)) == V5


def test_v6_dlt645_1997_read() -> None:
    assert dlt645.encode(dlt645.read_request_1997("000000000003", 0xB611, preamble=0)) == V6_REQ
    f = dlt645.decode(V6)
    assert f.is_1997 and f.di == 0xB611 and f.value_bytes == H("00 01")
    assert dlt645.decode_value(0xB611, f.value_bytes, protocol=1997) == Decimal(100)
    value = dlt645.encode_value(0xB611, 100, protocol=1997)
    assert dlt645.encode(dlt645.read_reply_1997("000000000003", 0xB611, value)) == V6


def test_v7_request_and_reply_rebuilt() -> None:
    assert dlt645.encode(dlt645.read_request("000000000161", 0x00010000)) == V7_REQ
    value = dlt645.encode_value(0x00010000, Decimal("0.26"))
    assert dlt645.encode(dlt645.read_reply("000000000161", 0x00010000, value)) == V7
    assert dlt645.decode_value(0x00010000, dlt645.decode(V7).value_bytes) == Decimal("0.26")


def test_error_reply_no_such_data() -> None:
    raw = dlt645.encode(dlt645.error_reply(ADDR, 0x11, ErrorBits.NO_DATA))
    assert raw[8:11] == H("D1 01 35")
    f = dlt645.decode(raw)
    assert f.is_error and f.error_bits == ErrorBits.NO_DATA and f.di is None
    assert "no such data" in dict(dlt645.describe(f))["error"]
    assert dlt645.to_dict(f)["error_bits"] == ["NO_DATA"]
    assert "password" in (ErrorBits.PASSWORD | ErrorBits.OTHER).describe()


# --- malformed input ----------------------------------------------------------------------------


def test_bad_checksum_is_checksum_error() -> None:
    bad = V7[:-2] + bytes(((V7[-2] + 1) & 0xFF,)) + V7[-1:]
    with pytest.raises(ChecksumError):
        dlt645.decode(bad)


@pytest.mark.parametrize(
    "raw, error",
    [
        (V7[:-1] + b"\x17", FrameFormatError),  # end byte
        (V7[:7] + b"\x00" + V7[8:], FrameFormatError),  # second 68
        (V7 + b"\x00", FrameFormatError),  # trailing byte in a one-shot decode
        (b"\x00" + V7, FrameFormatError),  # garbage before the frame
        (V7[:-1], IncompleteFrame),
        (b"\xfe\xfe", IncompleteFrame),
        (b"", IncompleteFrame),
    ],
)
def test_malformed_frames(raw: bytes, error: type[CodecError]) -> None:
    with pytest.raises(error):
        dlt645.decode(raw)


def test_encode_rejects_misuse() -> None:
    with pytest.raises(EncodeError):
        dlt645.encode(Dlt645Frame("1234", 0x11))
    with pytest.raises(EncodeError):
        dlt645.encode(Dlt645Frame(ADDR, 0x11, bytes(256)))
    with pytest.raises(EncodeError):
        dlt645.encode(Dlt645Frame(ADDR, 0x111))
    with pytest.raises(EncodeError):
        dlt645.remote_control(ADDR, "0200", "00000000", RemoteAction.TRIP, datetime(2030, 1, 1))


def test_control_bits() -> None:
    f = Dlt645Frame(ADDR, 0xB1, H("00 FF 01 00"))
    assert f.is_reply and f.has_follow_up and not f.is_error and f.function == 0x11
    assert not Dlt645Frame(ADDR, 0x11).is_reply


# --- values ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "di, value, wire",
    [
        (0x00010000, Decimal("123456.78"), H("78 56 34 12")),
        (0x00000000, Decimal("-12.50"), H("50 12 00 80")),  # combined energy carries a sign
        (0x02020200, Decimal("-1.250"), H("50 12 80")),  # reverse current, sign in the top byte
        (0x02030000, Decimal("2.2000"), H("00 20 02")),
        (0x02060000, Decimal("-0.987"), H("87 89")),
        (0x02800002, Decimal("50.01"), H("01 50")),
        (0x04000101, date(2024, 2, 29), H("04 29 02 24")),  # Thursday = 04
        (0x04000102, time(13, 5, 9), H("09 05 13")),
        (0x04000102, time(0, 0, 0), H("00 00 00")),  # midnight, not "unset"
        (0x0400010C, datetime(2024, 3, 3, 8, 0, 1), H("01 00 08 00 03 03 24")),  # Sunday = 00
        (0x04000401, "000000000161", H("61 01 00 00 00 00")),
        (0x04000703, 9600, H("20")),
        (0x03110000, 42, H("42 00 00")),
        (0x05060001, datetime(2024, 5, 1, 0, 0), H("00 00 01 05 24")),
        (0x05040101, Decimal("7.5"), H("50 07 00 00")),
        (0x0504FF01, (datetime(2024, 5, 1, 13, 0), Decimal("1.00")), H("00 13 01 05 24 00 01 00 00")),
        (0x1D000101, (datetime(2024, 5, 1, 13, 0, 2), H("0102")), H("02 00 13 01 05 24 01 02")),
    ],
)
def test_value_codecs(di: int, value: object, wire: bytes | None) -> None:
    protocol = 2007
    raw = dlt645.encode_value(di, value, protocol=protocol)
    if wire is not None:
        assert raw == wire
    assert dlt645.decode_value(di, raw, protocol=protocol) == value


@pytest.mark.parametrize(
    "di, value, wire",
    [
        (0x9010, Decimal("1234.56"), H("56 34 12 00")),
        (0xB621, Decimal("5.07"), H("07 05")),
        (0xC010, date(2024, 5, 1), H("03 01 05 24")),
        (0xC011, time(23, 59, 0), H("00 59 23")),
        (0xC032, "000000000003", H("03 00 00 00 00 00")),
    ],
)
def test_1997_value_codecs(di: int, value: object, wire: bytes) -> None:
    assert dlt645.encode_value(di, value, protocol=1997) == wire
    assert dlt645.decode_value(di, wire, protocol=1997) == value


def test_energy_block_and_daily_freeze() -> None:
    values = (Decimal("100.00"), Decimal("40.00"), Decimal("30.00"), Decimal("20.00"), Decimal("10.00"))
    raw = dlt645.encode_value(0x05060103, values)
    assert len(raw) == 20
    assert dlt645.decode_value(0x05060103, raw) == values
    assert dlt645.decode_value(0x0001FF00, raw[:8]) == values[:2]  # a 1-tariff meter
    item = dlt645.lookup(0x05060103)
    assert "3 days back" in item.name and item.unit == "kWh" and item.length is None
    assert dlt645.format_value(item, values).startswith("total 100.00 kWh, tariff 1 40.00 kWh")
    with pytest.raises(DataUnitError):
        dlt645.decode_value(0x05060103, raw[:6])


def test_power_down_record_with_open_end() -> None:
    start = datetime(2024, 1, 2, 3, 4, 5)
    raw = dlt645.encode_value(0x03110001, (start, None))
    assert raw[6:] == bytes(6)
    assert dlt645.decode_value(0x03110001, raw) == (start, None)


def test_status_word_3_relay_bits() -> None:
    sw = dlt645.decode_value(0x04000503, H("10 10"))  # bits 4 and 12
    assert isinstance(sw, StatusWord3)
    assert sw.relay_open and sw.protected and not sw.relay_trip_commanded
    assert "relay open" in str(sw)
    sw = dlt645.decode_value(0x04000503, H("50 01"))  # open, trip commanded, energy prepaid
    assert sw.relay_open and sw.relay_trip_commanded and sw.prepaid == "energy"
    assert dlt645.encode_value(0x04000503, sw) == H("50 01")
    assert StatusWord3.from_word(0xFFFF).word == 0xFFFF


@pytest.mark.parametrize(
    "di, raw",
    [
        (0x00010000, H("26 02 00")),  # too short
        (0x00010000, H("2A 02 00 00")),  # not BCD
        (0x04000101, H("00 32 13 24")),  # month 13
        (0x04000701, H("03")),  # two baud bits
        (0x12345678, H("00")),  # unknown DI
    ],
)
def test_bad_values_are_data_unit_errors(di: int, raw: bytes) -> None:
    with pytest.raises(DataUnitError):
        dlt645.decode_value(di, raw)


@pytest.mark.parametrize(
    "di, value",
    [(0x00010000, Decimal("1000000")), (0x00010000, -1), (0x02020100, 800), (0x04000101, "x")],
)
def test_unencodable_values(di: int, value: object) -> None:
    with pytest.raises(EncodeError):
        dlt645.encode_value(di, value)


def test_describe_unknown_di_and_json() -> None:
    f = dlt645.read_reply(ADDR, 0x12345678, H("01 02"))
    fields = dict(dlt645.describe(f))
    assert fields["data identifier"] == "12345678 (unknown)" and fields["value"] == "0102"
    for raw in ALL_VECTORS:
        json.dumps(dlt645.to_dict(dlt645.decode(raw)))
    # A known DI with a value that does not decode is shown, not raised.
    fields = dict(dlt645.describe(dlt645.read_reply(ADDR, 0x00010000, H("FF"))))
    assert "cannot decode" in fields["value"]


def test_registry_covers_the_documented_families() -> None:
    for di in (0x00013F00, 0x0002FF0C, 0x0201FF00, 0x0202FF00, 0x02800001, 0x04000403,
               0x040005FF, 0x0506003E, 0x0506023E, 0x050400FE,
               0x0311000A, 0x03300D01, 0x1D000101, 0x1E000101):
        assert dlt645.lookup(di).name
    for di in (0x9010, 0x901F, 0xB611, 0xB621, 0xC010, 0xC011, 0xC032):
        assert dlt645.lookup(di, protocol=1997).name
    with pytest.raises(DataUnitError):
        dlt645.lookup(0x0506003F)  # 63 freezes back does not exist


# --- properties and streams ----------------------------------------------------------------------

frames = st.builds(
    Dlt645Frame,
    address=st.binary(min_size=6, max_size=6).map(lambda b: b.hex().upper()),
    control=st.integers(0, 255),
    data=st.binary(max_size=255),
    preamble=st.integers(0, 6),
)


@settings(max_examples=200)
@given(frames)
def test_random_frames_round_trip(frame: Dlt645Frame) -> None:
    raw = dlt645.encode(frame)
    assert dlt645.decode(raw) == frame
    assert dlt645.encode(dlt645.decode(raw)) == raw


def _feed_all(chunks: list[bytes]) -> list[object]:
    dec = dlt645.Dlt645StreamDecoder()
    out: list[object] = []
    for c in chunks:
        out.extend(dec.feed(c))
    assert dec.buffered <= 4096 + max((len(c) for c in chunks), default=0)
    return out


@settings(max_examples=150)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        for item in _feed_all(chunks):
            assert isinstance(item, Dlt645Frame | Rejected)


def _core(f: Dlt645Frame) -> tuple[str, int, bytes]:
    return f.address, f.control, f.data


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.binary(max_size=40), frames), min_size=1, max_size=5), st.binary(max_size=40))
def test_garbage_between_frames_recovers_every_frame(parts: list[tuple[bytes, Dlt645Frame]],
                                                     tail: bytes) -> None:
    stream = b"".join(g + dlt645.encode(f) for g, f in parts) + tail
    expected = [_core(f) for _, f in parts]
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        got = [_core(x) for x in _feed_all(chunks) if isinstance(x, Dlt645Frame)]
        # Garbage may by chance hold a valid frame of its own; every real frame must be there,
        # in order.
        it = iter(got)
        assert all(any(g == e for g in it) for e in expected), (got, expected)


def test_stream_split_frames_and_bad_checksum() -> None:
    bad = V7[:-2] + b"\x00\x16"
    stream = V2 + b"\x00\x11" + bad + V7_REQ + V3
    dec = dlt645.Dlt645StreamDecoder()
    out = []
    for i in range(0, len(stream), 3):
        out.extend(dec.feed(stream[i : i + 3]))
    got = [x for x in out if isinstance(x, Dlt645Frame)]
    assert [dlt645.encode(f) for f in got] == [V2, V7_REQ, V3]
    assert any(isinstance(x, Rejected) and isinstance(x.error, ChecksumError) for x in out)
    assert dec.buffered == 0


_KNOWN_DIS = sorted(dlt645.ITEMS_2007)[::7]
described = st.builds(
    lambda control, di, rest: Dlt645Frame(ADDR, control, di.to_bytes(4, "little") + rest),
    st.sampled_from([0x91, 0xB1, 0x92, 0x11, 0x12, 0x14, 0xD1, 0x1C, 0x08, 0x93, 0x81, 0x01, 0x9C]),
    st.sampled_from(_KNOWN_DIS),
    st.binary(max_size=40),
) | frames


@settings(max_examples=300)
@given(described)
def test_describe_and_to_dict_never_raise(frame: Dlt645Frame) -> None:
    fields = dlt645.describe(frame)
    assert fields[1][0] == "address"
    json.dumps(dlt645.to_dict(frame))


@settings(max_examples=300)
@given(st.sampled_from(sorted(dlt645.ITEMS_2007)), st.binary(max_size=24))
def test_value_decoding_of_garbage_raises_only_data_unit_error(di: int, raw: bytes) -> None:
    try:
        value = dlt645.decode_value(di, raw)
    except DataUnitError:
        return
    json.dumps(dlt645.json_value(value))


def test_write_request_layout_and_description() -> None:
    value = dlt645.encode_value(0x04000102, time(12, 0, 0))
    f = dlt645.write_request(ADDR, 0x04000102, value, password="04123456", operator="00000001")
    assert f.data == H("02 01 00 04  04 56 34 12  01 00 00 00  00 00 12")
    fields = dict(dlt645.describe(dlt645.decode(dlt645.encode(f))))
    assert fields["password"] == "level 04, 123456" and fields["operator"] == "00000001"
    assert fields["value"] == "12:00:00"


def test_follow_up_parts_are_shown_raw() -> None:
    first = dlt645.read_reply(ADDR, 0x04000403, bytes(20), follow_up=True)
    part = dlt645.read_follow_up_reply(ADDR, 0x04000403, bytes(12), 1)
    assert part.value_bytes == bytes(12) and part.di == 0x04000403
    for f in (first, part):
        assert "value part" in dict(dlt645.describe(f))


def test_a_long_run_of_wake_up_bytes_is_noise_and_the_next_frame_still_decodes():
    from concentrator.dlt645 import MAX_PREAMBLE, Dlt645StreamDecoder
    from concentrator.dlt645 import Dlt645Frame as _F

    dec = Dlt645StreamDecoder()
    frame = bytes.fromhex("68 61 01 00 00 00 00 68 91 08 33 33 34 33 59 33 33 33 8A 16")
    out = []
    for _ in range(64):
        out += dec.feed(b"\xfe" * 64)
        assert dec.buffered <= MAX_PREAMBLE
    out += dec.feed(frame)
    frames = [x for x in out if isinstance(x, _F)]
    assert [f.address for f in frames] == ["000000000161"]
