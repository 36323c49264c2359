"""Q/GDW 1376.1-2013 codec: the frames between the concentrator (terminal) and the master station.

Sans-IO: pure functions and frozen dataclasses, no sockets and no clock. The daemon's uplink
client and the simulator's master station both build and read frames with this module.

Frame (protocols.md §3.1)::

    68 | L L | L L | 68 | C | A1 A1 A2 A2 A3 | AFN | SEQ | {DA DA DT DT data}... | AUX | CS | 16

* ``decode(b)`` / ``encode(frame)``: one frame, ``encode(decode(b)) == b`` for every frame
  ``decode`` accepts, and ``decode(encode(f)) == f`` for every frame ``encode`` accepts.
* ``parse_prefix(buf)`` and ``Gdw13761StreamDecoder`` for byte streams (TCP).
* Only the ``concentrator.codec`` error tree escapes: ``IncompleteFrame``, ``ChecksumError``,
  ``FrameFormatError`` (start/end/length/address), ``DataUnitError`` (a data unit cannot be
  split or decoded), ``EncodeError`` (a value given to ``encode`` or a builder does not fit).

Which AUX parts a frame carries is decided by its header, never guessed (§3.7):
PW (16 bytes) on downlink AFN 01/04/05/0F/10 and on AFN 06 both ways; EC (2 bytes) on uplink
frames with ACD = 1; Tp (6 bytes) when SEQ.TpV = 1. They follow the data units in the order
PW, EC, Tp.

Splitting the user data into data units needs each unit's length. The codec knows the length
rules of the Fn this project uses (``KNOWN_FN``). **A data unit with an Fn it does not know
takes all the remaining user data as one raw unit**: ``decode`` still succeeds, the frame
re-encodes byte-exactly, and ``decode_units`` returns that unit as ``RawUnit``.
Data of one DA/DT pair is laid out pn-major, Fn-minor (for each pn, for each Fn).

Typed data units (``decode_units``) are frozen dataclasses with ``decode(data)`` and
``encode()``; missing values (all ``EE`` bytes on the wire) are ``None`` and energies are
``Decimal``. Control-field function codes are read but never interpreted beyond DIR/PRM;
builders take them from a ``FunctionTable`` the operator can configure (§3.2).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from ipaddress import IPv4Address
from typing import Any, ClassVar

from concentrator.codec import (
    ChecksumError,
    CodecError,
    DataUnitError,
    EncodeError,
    FrameFormatError,
    IncompleteFrame,
    StreamDecoder,
    address_from_wire,
    address_to_wire,
    bcd_to_int,
    from_bcd_byte,
    int_to_bcd,
)

log = logging.getLogger(__name__)

__all__ = [
    # frame
    "Control", "Address", "Seq", "DayTime", "Tp", "EventCounters", "DataUnit", "Frame13761",
    "decode", "encode", "parse_prefix", "Gdw13761StreamDecoder",
    "encode_da", "decode_da", "encode_dt", "decode_dt", "ALL_POINTS", "MAX_USER_LENGTH",
    "aux_has_pw", "tp_expired",
    # appendix A
    "decode_a1", "a1_week", "encode_a1", "decode_a3", "encode_a3", "decode_a3_money",
    "encode_a3_money", "decode_a11", "encode_a11", "decode_a14", "encode_a14", "decode_a15",
    "encode_a15", "decode_a16", "encode_a16", "decode_a20",
    "encode_a20",
    # typed data units
    "AllConfirmed", "AllDenied", "AckItem", "PerItemAck", "Reset", "Login", "Logout",
    "Heartbeat", "TerminalCommParams", "MasterStationParams", "MeterRecord", "MeterArchive",
    "ArchiveQuery", "RemoteTrip", "AllowClose", "TerminalClock", "ForwardEnergy",
    "DayRequest", "DailyForwardEnergy", "EventRequest", "EventRecord", "EventReply",
    "TransparentForward", "TransparentReply", "TerminalVersion", "RawUnit", "DecodedUnit",
    "PurchaseParams", "RemainingCredit", "ProtectOn", "ProtectOff", "MeterControl",
    "HistoryRequest", "PurchaseEntry", "PurchaseHistory", "PURCHASE_ADD", "PURCHASE_REPLACE",
    "FN_PURCHASE_HISTORY", "FN_METER_CONTROL", "METER_TRIP", "METER_CLOSE",
    "decode_units", "decode_item", "KNOWN_FN", "ERC_NAMES", "AFN_NAMES",
    # builders
    "FunctionTable", "DEFAULT_FUNCTIONS", "unit", "login", "logout", "heartbeat", "confirm",
    "deny", "response", "request", "report",
    # presentation
    "describe", "to_dict",
]

AFN_CONFIRM = 0x00
AFN_RESET = 0x01
AFN_LINK = 0x02
AFN_SET = 0x04
AFN_CONTROL = 0x05
AFN_AUTH = 0x06
AFN_CONFIG = 0x09
AFN_QUERY = 0x0A
AFN_CLASS1 = 0x0C
AFN_CLASS2 = 0x0D
AFN_CLASS3 = 0x0E
AFN_FILE = 0x0F
AFN_FORWARD = 0x10

AFN_NAMES: dict[int, str] = {
    0x00: "confirm/deny", 0x01: "reset", 0x02: "link interface check", 0x03: "relay station",
    0x04: "set parameters", 0x05: "control", 0x06: "authentication and key negotiation",
    0x08: "request cascaded terminal report", 0x09: "request terminal configuration",
    0x0A: "query parameters", 0x0B: "request task data", 0x0C: "class-1 data (real time)",
    0x0D: "class-2 data (frozen)", 0x0E: "class-3 data (events)", 0x0F: "file transfer",
    0x10: "data forwarding",
}

# AFNs whose downlink frames carry PW; AFN 06 carries it both ways (§3.7).
_PW_DOWN_AFNS = frozenset({0x01, 0x04, 0x05, 0x0F, 0x10})

MAX_USER_LENGTH = 16383          # 14 bits of L; 255 on dedicated radio channels
ALL_POINTS = 0xFFFF              # DA1 = FF, DA2 = 00: every valid measuring point except p0
_PW_LEN, _EC_LEN, _TP_LEN = 16, 2, 6


# --- frame parts -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Control:
    """Control field C (§3.2)."""

    uplink: bool        # DIR: True = terminal -> master
    prm: bool           # True = sent by the initiating station
    fcb_acd: bool       # downlink FCB (frame count bit); uplink ACD (important events, EC in AUX)
    fcv: bool           # downlink FCV (FCB valid); uplink D4 is reserved, kept for round trips
    function: int       # D3-D0; only DIR and PRM are interpreted when decoding

    @property
    def acd(self) -> bool:
        return self.uplink and self.fcb_acd

    def to_byte(self) -> int:
        if not 0 <= self.function <= 15:
            raise EncodeError(f"function code {self.function} is not 0..15")
        return (self.uplink << 7 | self.prm << 6 | self.fcb_acd << 5 | self.fcv << 4
                | self.function)

    @classmethod
    def from_byte(cls, b: int) -> Control:
        return cls(bool(b & 0x80), bool(b & 0x40), bool(b & 0x20), bool(b & 0x10), b & 0x0F)


@dataclass(frozen=True, slots=True)
class Address:
    """Terminal address A (§3.3)."""

    district: str       # A1 administrative district as written, "4403" (wire 03 44)
    terminal: int       # A2 terminal address 1..65535 (binary); FFFF + group = broadcast
    msa: int = 0        # A3 D7-D1 master station address 0..127; responses copy it
    group: bool = False  # A3 D0: A2 is a group address

    def __str__(self) -> str:
        return f"{self.district}-{self.terminal:05d}"

    def to_wire(self) -> bytes:
        if len(self.district) != 4:
            raise EncodeError(f"district {self.district!r} must have 4 digits")
        try:
            a1 = bytes.fromhex(self.district)[::-1]
        except ValueError as exc:
            raise EncodeError(f"district {self.district!r} is not BCD/hex") from exc
        if not 1 <= self.terminal <= 0xFFFF:
            raise EncodeError(f"terminal address {self.terminal} is not 1..65535")
        if not 0 <= self.msa <= 127:
            raise EncodeError(f"MSA {self.msa} is not 0..127")
        return a1 + self.terminal.to_bytes(2, "little") + bytes([self.msa << 1 | self.group])

    @classmethod
    def from_wire(cls, b: bytes) -> Address:
        terminal = int.from_bytes(b[2:4], "little")
        if terminal == 0:
            raise FrameFormatError("terminal address A2 = 0000 is invalid")
        # A1 is BCD by the standard; hex digits are kept as they are so odd masters round-trip.
        return cls(b[1::-1].hex().upper(), terminal, b[4] >> 1, bool(b[4] & 1))


@dataclass(frozen=True, slots=True)
class Seq:
    """Frame sequence field SEQ (§3.5)."""

    seq: int            # PSEQ/RSEQ 0..15; responses reuse the request's number
    fir: bool = True    # first frame of a message
    fin: bool = True    # last frame of a message
    con: bool = False   # the receiver must confirm
    tpv: bool = False   # Tp present in AUX

    def to_byte(self) -> int:
        if not 0 <= self.seq <= 15:
            raise EncodeError(f"sequence {self.seq} is not 0..15")
        return self.tpv << 7 | self.fir << 6 | self.fin << 5 | self.con << 4 | self.seq

    @classmethod
    def from_byte(cls, b: int) -> Seq:
        return cls(b & 0x0F, bool(b & 0x40), bool(b & 0x20), bool(b & 0x10), bool(b & 0x80))


@dataclass(frozen=True, slots=True)
class DayTime:
    """Appendix A.16: day of month and time of day (no month or year on the wire)."""

    day: int
    hour: int
    minute: int
    second: int

    def __str__(self) -> str:
        return f"day {self.day} {self.hour:02d}:{self.minute:02d}:{self.second:02d}"


@dataclass(frozen=True, slots=True)
class Tp:
    """Time label in AUX: initiator's frame counter, send time, allowed delay (§3.7)."""

    pfc: int                    # frame counter of the initiating station 0..255
    send_time: DayTime | None   # A.16 (None = EE)
    delay: int = 0              # allowed transmission delay in minutes; 0 = do not check

    def to_wire(self) -> bytes:
        if not (0 <= self.pfc <= 255 and 0 <= self.delay <= 255):
            raise EncodeError(f"Tp PFC {self.pfc} / delay {self.delay} do not fit a byte")
        return bytes([self.pfc]) + encode_a16(self.send_time) + bytes([self.delay])

    @classmethod
    def from_wire(cls, b: bytes) -> Tp:
        return cls(b[0], decode_a16(b[1:5]), b[5])


@dataclass(frozen=True, slots=True)
class EventCounters:
    """EC in uplink AUX: important (EC1) and general (EC2) event counters."""

    important: int
    general: int


@dataclass(frozen=True, slots=True)
class DataUnit:
    """One DA/DT pair and the raw bytes of its data (pn-major, Fn-minor)."""

    pns: tuple[int, ...]    # measuring points; (0,) = p0; (ALL_POINTS,) = all but p0
    fns: tuple[int, ...]    # information classes, all in one DT2 group
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Frame13761:
    """One Q/GDW 1376.1 frame. AUX parts are present exactly when §3.7 says so."""

    control: Control
    address: Address
    afn: int
    seq: Seq
    units: tuple[DataUnit, ...] = ()
    pw: bytes | None = None             # 16 bytes: downlink AFN 01/04/05/0F/10, AFN 06 both ways
    ec: EventCounters | None = None     # uplink with ACD = 1
    tp: Tp | None = None                # SEQ.TpV = 1

    def __post_init__(self) -> None:
        if not isinstance(self.units, tuple):
            object.__setattr__(self, "units", tuple(self.units))

    @property
    def uplink(self) -> bool:
        return self.control.uplink


def aux_has_pw(uplink: bool, afn: int) -> bool:
    """Whether a frame in this direction with this AFN carries PW in AUX (§3.7)."""
    return afn == AFN_AUTH or (not uplink and afn in _PW_DOWN_AFNS)


# --- DA / DT (§3.6) ----------------------------------------------------------------------------

def encode_da(pns: Sequence[int]) -> bytes:
    """Measuring points -> DA1 DA2. All pn must share one group of 8 and be ascending."""
    pns = tuple(pns)
    if pns == (0,):
        return b"\x00\x00"
    if pns == (ALL_POINTS,):
        return b"\xff\x00"
    if not pns or list(pns) != sorted(set(pns)) or not all(1 <= p <= 2040 for p in pns):
        raise EncodeError(f"measuring points {pns} must be ascending, unique, 1..2040")
    group = (pns[0] - 1) // 8
    da1 = 0
    for p in pns:
        if (p - 1) // 8 != group:
            raise EncodeError(f"measuring points {pns} are not in one DA2 group")
        da1 |= 1 << ((p - 1) % 8)
    return bytes([da1, group + 1])


def decode_da(b: bytes) -> tuple[int, ...]:
    """DA1 DA2 -> measuring points (ascending)."""
    da1, da2 = b[0], b[1]
    if da2 == 0:
        if da1 == 0:
            return (0,)
        if da1 == 0xFF:
            return (ALL_POINTS,)
        raise DataUnitError(f"DA {da1:02X} {da2:02X} is not a valid point set")
    if da1 == 0:
        raise DataUnitError(f"DA {da1:02X} {da2:02X} names no measuring point")
    return tuple((da2 - 1) * 8 + i + 1 for i in range(8) if da1 >> i & 1)


def encode_dt(fns: Sequence[int]) -> bytes:
    """Fn list -> DT1 DT2. All Fn must share one group of 8 and be ascending."""
    fns = tuple(fns)
    if not fns or list(fns) != sorted(set(fns)) or not all(1 <= f <= 2048 for f in fns):
        raise EncodeError(f"Fn list {fns} must be ascending, unique, 1..2048")
    group = (fns[0] - 1) // 8
    dt1 = 0
    for f in fns:
        if (f - 1) // 8 != group:
            raise EncodeError(f"Fn list {fns} is not in one DT2 group")
        dt1 |= 1 << ((f - 1) % 8)
    return bytes([dt1, group])


def decode_dt(b: bytes) -> tuple[int, ...]:
    """DT1 DT2 -> Fn list (ascending)."""
    dt1, dt2 = b[0], b[1]
    if dt1 == 0:
        raise DataUnitError(f"DT {dt1:02X} {dt2:02X} names no Fn")
    return tuple(dt2 * 8 + i + 1 for i in range(8) if dt1 >> i & 1)


# --- Appendix A data formats (§3.9) ------------------------------------------------------------

def _is_missing(data: bytes) -> bool:
    return all(b == 0xEE for b in data)


def _bcd_fields(data: bytes) -> list[int]:
    return [from_bcd_byte(b) for b in data]


def _dt(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
        what: str = "time") -> datetime:
    try:
        return datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise DataUnitError(f"{what} is not a valid date/time: {exc}") from exc


def decode_a1(data: bytes) -> datetime | None:
    """A.1 (6 bytes ``ss mm hh DD [week|MM] YY``) -> datetime; ``a1_week`` gives the week."""
    if _is_missing(data):
        return None
    ss, mm, hh, dd = _bcd_fields(data[:4])
    month = from_bcd_byte(data[4] & 0x1F)
    return _dt(2000 + from_bcd_byte(data[5]), month, dd, hh, mm, ss)


def a1_week(data: bytes) -> int:
    """Week number (1 = Monday .. 7 = Sunday, 0 = not given) held in an A.1 value."""
    return 0 if _is_missing(data) else data[4] >> 5


def encode_a1(value: datetime | None, week: int | None = None) -> bytes:
    """datetime -> A.1; the week defaults to the date's ISO weekday (1 = Monday)."""
    if value is None:
        return b"\xee" * 6
    if not 2000 <= value.year <= 2099:
        raise EncodeError(f"year {value.year} does not fit A.1")
    wk = value.isoweekday() if week is None else week
    if not 0 <= wk <= 7:
        raise EncodeError(f"week {wk} is not 0..7")
    return bytes([*int_to_bcd(value.second, 1), *int_to_bcd(value.minute, 1),
                  *int_to_bcd(value.hour, 1), *int_to_bcd(value.day, 1),
                  wk << 5 | int_to_bcd(value.month, 1)[0], *int_to_bcd(value.year - 2000, 1)])


def _decode_fixed_decimal(data: bytes, places: int) -> Decimal | None:
    if _is_missing(data):
        return None
    return Decimal(bcd_to_int(data)).scaleb(-places)


def _encode_fixed_decimal(value: Decimal | None, nbytes: int, places: int, what: str) -> bytes:
    if value is None:
        return b"\xee" * nbytes
    scaled = Decimal(value).scaleb(places)
    if scaled != scaled.to_integral_value() or scaled < 0:
        raise EncodeError(f"{value} does not fit {what} (unsigned, {places} decimals)")
    return int_to_bcd(int(scaled), nbytes)


def decode_a3(data: bytes) -> tuple[int, bool] | None:
    """A.3 (4 bytes, ``(+/-)XXXXXXX``) -> (signed value, G); None for EE (missing).

    Byte 4: D6 = G (0: kWh or 厘, 1: MWh or 元), D4 = S (1 = negative), D3-D0 = the
    millions digit; D7 and D5 are 0. [V2: liming ``sMtFmt03_f``; a C# master ``OrgFormat03``;
    a C decoder ``getdataformat03`` (G from 0x40, S from 0x10)]
    """
    _expect_len(data, 4, "A.3")
    if _is_missing(data):
        return None
    if data[3] & 0xA0:
        raise DataUnitError(f"A.3 {data.hex(' ')}: reserved bits D7/D5 of byte 4 are set")
    magnitude = bcd_to_int(data[:3]) + from_bcd_byte(data[3] & 0x0F) * 1_000_000
    return (-magnitude if data[3] & 0x10 else magnitude), bool(data[3] & 0x40)


def encode_a3(value: int, large_unit: bool) -> bytes:
    """(signed value, G) -> A.3; |value| <= 9 999 999."""
    if not -9_999_999 <= value <= 9_999_999:
        raise EncodeError(f"{value} does not fit A.3 (+/-9999999)")
    m = abs(value)
    low = int_to_bcd(m % 1_000_000, 3)
    return low + bytes([large_unit << 6 | (value < 0) << 4 | m // 1_000_000])


_LI = Decimal("0.001")      # 1 厘 = 0.001 yuan


def decode_a3_money(data: bytes) -> Decimal | None:
    """A.3 money -> yuan (G = 0: the value is in 厘, G = 1: in 元)."""
    v = decode_a3(data)
    if v is None:
        return None
    value, yuan = v
    return Decimal(value) if yuan else Decimal(value).scaleb(-3)


def encode_a3_money(value: Decimal | None, *, exact: bool = True) -> bytes:
    """yuan -> A.3 money: in 厘 (G = 0) when it fits (|v| <= 9999.999), else whole 元 (G = 1).

    ``exact`` (a purchase): an amount that A.3 cannot carry without rounding raises
    ``EncodeError``. Otherwise (a balance being reported) it is cut toward zero to the 厘 or,
    above 9999.999, to the whole yuan, so the master never sees more credit than there is.
    """
    if value is None:
        return b"\xee" * 4
    v = Decimal(value)
    li = v.scaleb(3)
    if abs(li) <= 9_999_999:
        if li != li.to_integral_value() and exact:
            raise EncodeError(f"{value} yuan has more than 3 decimals (A.3 counts 厘)")
        return encode_a3(int(li), False)          # int() cuts toward zero
    if v != v.to_integral_value() and exact:
        raise EncodeError(f"{value} yuan above 9999.999 must be whole yuan in A.3")
    if abs(v) > 9_999_999:
        raise EncodeError(f"{value} yuan does not fit A.3")
    return encode_a3(int(v), True)


def decode_a11(data: bytes) -> Decimal | None:
    """A.11 (4 bytes BCD, XXXXXX.XX kWh) -> Decimal."""
    return _decode_fixed_decimal(data, 2)


def encode_a11(value: Decimal | None) -> bytes:
    return _encode_fixed_decimal(value, 4, 2, "A.11")


def decode_a14(data: bytes) -> Decimal | None:
    """A.14 (5 bytes BCD, XXXXXX.XXXX kWh) -> Decimal."""
    return _decode_fixed_decimal(data, 4)


def encode_a14(value: Decimal | None) -> bytes:
    return _encode_fixed_decimal(value, 5, 4, "A.14")


def decode_a15(data: bytes) -> datetime | None:
    """A.15 (5 bytes ``mm hh DD MM YY``) -> datetime."""
    if _is_missing(data):
        return None
    mm, hh, dd, mo, yy = _bcd_fields(data)
    return _dt(2000 + yy, mo, dd, hh, mm, what="A.15")


def encode_a15(value: datetime | None) -> bytes:
    if value is None:
        return b"\xee" * 5
    if not 2000 <= value.year <= 2099:
        raise EncodeError(f"year {value.year} does not fit A.15")
    return b"".join(int_to_bcd(v, 1) for v in (value.minute, value.hour, value.day,
                                                value.month, value.year - 2000))


def decode_a16(data: bytes) -> DayTime | None:
    """A.16 (4 bytes ``ss mm hh DD``) -> DayTime."""
    if _is_missing(data):
        return None
    ss, mm, hh, dd = _bcd_fields(data)
    if not (1 <= dd <= 31 and hh <= 23 and mm <= 59 and ss <= 59):
        raise DataUnitError(f"A.16 {data.hex(' ')} is not a valid day/time")
    return DayTime(dd, hh, mm, ss)


def encode_a16(value: DayTime | None) -> bytes:
    if value is None:
        return b"\xee" * 4
    return b"".join(int_to_bcd(v, 1) for v in (value.second, value.minute, value.hour,
                                                value.day))


def decode_a20(data: bytes) -> date | None:
    """A.20 (3 bytes ``DD MM YY``, the Td_d of daily freezes) -> date."""
    if _is_missing(data):
        return None
    dd, mo, yy = _bcd_fields(data)
    return _dt(2000 + yy, mo, dd, what="A.20").date()


def encode_a20(value: date | None) -> bytes:
    if value is None:
        return b"\xee" * 3
    if not 2000 <= value.year <= 2099:
        raise EncodeError(f"year {value.year} does not fit A.20")
    return b"".join(int_to_bcd(v, 1) for v in (value.day, value.month, value.year - 2000))


def _text(data: bytes) -> str:
    # Latin-1 so any byte value round-trips; trailing NUL padding is dropped.
    return data.decode("latin-1").rstrip("\x00")


def _text_field(value: str, n: int, what: str) -> bytes:
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"{what} {value!r} is not ASCII/Latin-1") from exc
    if len(raw) > n:
        raise EncodeError(f"{what} {value!r} is longer than {n} bytes")
    return raw.ljust(n, b"\x00")


def _expect_len(data: bytes, n: int, what: str) -> None:
    if len(data) != n:
        raise DataUnitError(f"{what} needs {n} bytes, got {len(data)}")


def _u8(value: int, what: str) -> int:
    if not 0 <= value <= 255:
        raise EncodeError(f"{what} {value} does not fit one byte")
    return value


def _u16(value: int, what: str) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise EncodeError(f"{what} {value} does not fit two bytes")
    return value.to_bytes(2, "little")


# --- typed data units --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AllConfirmed:
    """AFN00 F1: everything in the request was accepted (no data)."""

    def encode(self) -> bytes:
        return b""

    def describe(self) -> str:
        return "all confirmed"


@dataclass(frozen=True, slots=True)
class AllDenied:
    """AFN00 F2: everything in the request was refused (no data)."""

    def encode(self) -> bytes:
        return b""

    def describe(self) -> str:
        return "all denied"


@dataclass(frozen=True, slots=True)
class AckItem:
    """One entry of AFN00 F3: a DA/DT of the request and its result (0 = correct)."""

    pns: tuple[int, ...]
    fns: tuple[int, ...]
    result: int = 0

    @property
    def ok(self) -> bool:
        return self.result == 0


@dataclass(frozen=True, slots=True)
class PerItemAck:
    """AFN00 F3: the AFN answered, then {DA DT result} per data unit."""

    afn: int
    items: tuple[AckItem, ...]

    def encode(self) -> bytes:
        out = bytearray([_u8(self.afn, "AFN")])
        for it in self.items:
            out += encode_da(it.pns) + encode_dt(it.fns) + bytes([_u8(it.result, "result")])
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> PerItemAck:
        if not data or (len(data) - 1) % 5:
            raise DataUnitError(f"AFN00 F3 needs 1 + 5n bytes, got {len(data)}")
        items = tuple(AckItem(decode_da(data[i:i + 2]), decode_dt(data[i + 2:i + 4]), data[i + 4])
                      for i in range(1, len(data), 5))
        return cls(data[0], items)

    def describe(self) -> str:
        parts = [f"p{','.join(map(str, i.pns))} F{','.join(map(str, i.fns))} "
                 f"{'ok' if i.ok else f'error {i.result}'}" for i in self.items]
        return f"per-item answer to AFN{self.afn:02X}: " + "; ".join(parts)


_RESET_NAMES = {1: "hardware initialisation", 2: "data area initialisation",
                3: "factory reset (parameters and data)",
                4: "parameter reset except master-station communication"}


@dataclass(frozen=True, slots=True)
class Reset:
    """AFN01 F1..F4 (the Fn is the kind of reset; no data unit)."""

    kind: int

    def encode(self) -> bytes:
        return b""

    def describe(self) -> str:
        return _RESET_NAMES.get(self.kind, f"reset F{self.kind}")


@dataclass(frozen=True, slots=True)
class Login:
    """AFN02 F1. The base standard has no data; extra bytes of regional variants are kept."""

    extra: bytes = b""

    def encode(self) -> bytes:
        return self.extra

    def describe(self) -> str:
        return "login" + (f" (+{self.extra.hex(' ')})" if self.extra else "")


@dataclass(frozen=True, slots=True)
class Logout:
    """AFN02 F2 (no data; extra bytes kept)."""

    extra: bytes = b""

    def encode(self) -> bytes:
        return self.extra

    def describe(self) -> str:
        return "logout" + (f" (+{self.extra.hex(' ')})" if self.extra else "")


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """AFN02 F3. No data in the base standard; some variants append a clock (kept in extra)."""

    extra: bytes = b""

    @property
    def clock(self) -> datetime | None:
        """The appended A.1 clock when the extra bytes are exactly one valid A.1 value."""
        if len(self.extra) != 6:
            return None
        try:
            return decode_a1(self.extra)
        except CodecError:
            return None

    def encode(self) -> bytes:
        return self.extra

    def describe(self) -> str:
        if not self.extra:
            return "heartbeat"
        clock = self.clock
        return f"heartbeat (+{clock.isoformat() if clock else self.extra.hex(' ')})"


@dataclass(frozen=True, slots=True)
class TerminalCommParams:
    """AFN04/0A F1, terminal uplink communication parameters (6 bytes)::

        RTS (1, x20 ms) | allowed delay as initiator (1, min) |
        timeout+retries (2 LE: D11-D0 seconds, D13-D12 retries) | CON flags (1) | heartbeat (1, min)

    Layout from the standard's text as remembered [MEM]; protocols.md does not give it.
    """

    rts_20ms: int = 0
    send_delay_min: int = 0
    response_timeout_s: int = 30
    retries: int = 3
    confirm_flags: int = 0      # D0 class-1, D1 class-2, D2 class-3 reports need CON
    heartbeat_min: int = 5

    def encode(self) -> bytes:
        if not (0 <= self.response_timeout_s <= 0xFFF and 0 <= self.retries <= 3):
            raise EncodeError("response timeout must be 0..4095 s and retries 0..3")
        word = self.retries << 12 | self.response_timeout_s
        return bytes([_u8(self.rts_20ms, "RTS"), _u8(self.send_delay_min, "delay"),
                      *word.to_bytes(2, "little"), _u8(self.confirm_flags, "CON flags"),
                      _u8(self.heartbeat_min, "heartbeat")])

    @classmethod
    def decode(cls, data: bytes) -> TerminalCommParams:
        _expect_len(data, 6, "F1 terminal comm parameters")
        word = int.from_bytes(data[2:4], "little")
        return cls(data[0], data[1], word & 0xFFF, word >> 12 & 3, data[4], data[5])

    def describe(self) -> str:
        return (f"RTS {self.rts_20ms * 20} ms, delay {self.send_delay_min} min, timeout "
                f"{self.response_timeout_s} s x{self.retries} retries, CON flags "
                f"{self.confirm_flags:03b}, heartbeat {self.heartbeat_min} min")


def _ip(data: bytes) -> str:
    return str(IPv4Address(data))


def _ip_wire(value: str) -> bytes:
    try:
        return IPv4Address(value).packed
    except ValueError as exc:
        raise EncodeError(f"{value!r} is not an IPv4 address") from exc


@dataclass(frozen=True, slots=True)
class MasterStationParams:
    """AFN04/0A F3, master station addresses (28 bytes)::

        primary IP (4) | primary port (2 LE) | backup IP (4) | backup port (2 LE) | APN (16 ASCII, NUL padded)

    IP bytes in dotted order; layout [MEM] (protocols.md names the fields only).
    """

    primary_ip: str
    primary_port: int
    backup_ip: str = "0.0.0.0"
    backup_port: int = 0
    apn: str = ""

    def encode(self) -> bytes:
        return (_ip_wire(self.primary_ip) + _u16(self.primary_port, "port")
                + _ip_wire(self.backup_ip) + _u16(self.backup_port, "port")
                + _text_field(self.apn, 16, "APN"))

    @classmethod
    def decode(cls, data: bytes) -> MasterStationParams:
        _expect_len(data, 28, "F3 master station parameters")
        return cls(_ip(data[0:4]), int.from_bytes(data[4:6], "little"), _ip(data[6:10]),
                   int.from_bytes(data[10:12], "little"), _text(data[12:28]))

    def describe(self) -> str:
        return (f"master {self.primary_ip}:{self.primary_port}, backup "
                f"{self.backup_ip}:{self.backup_port}, APN {self.apn!r}")


_BAUDS = (0, 600, 1200, 2400, 4800, 7200, 9600, 19200)   # archive baud code -> bit/s (0 = default)
PROTO_DLT645_1997 = 1
PROTO_AC_SAMPLING = 2
PROTO_DLT645_2007 = 30
PROTO_PLC = 31
_PROTO_NAMES = {0: "none", 1: "DL/T 645-1997", 2: "AC sampling", 30: "DL/T 645-2007",
                31: "PLC module"}


@dataclass(frozen=True, slots=True)
class MeterRecord:
    """One 27-byte record of the meter archive (AFN04 F10 / AFN0A F10, §3.10)."""

    device_no: int                      # 1..2040
    point: int                          # measuring point 0..2040 (0 = delete)
    address: str                        # meter address, 12 digits as printed
    protocol: int = PROTO_DLT645_2007
    port: int = 31                      # 1..31 (31 = carrier/PLC port by convention)
    baud: int = 0                       # bit/s; 0 = the port's default
    password: bytes = bytes(6)
    tariffs: int = 4                    # 1..48
    integer_digits: int = 6             # 4..7
    decimal_digits: int = 2             # 1..4
    collector: str = "000000000000"     # collector address; 0 = meter read directly
    major_class: int = 0
    minor_class: int = 0

    SIZE: ClassVar[int] = 27

    def encode(self) -> bytes:
        if self.baud not in _BAUDS:
            raise EncodeError(f"baud {self.baud} has no archive code")
        if not (0 <= self.port <= 31 and 0 <= self.tariffs <= 63 and 4 <= self.integer_digits <= 7
                and 1 <= self.decimal_digits <= 4 and 0 <= self.major_class <= 15
                and 0 <= self.minor_class <= 15 and len(self.password) == 6):
            raise EncodeError(f"meter record {self.device_no}: a field is out of range")
        return (_u16(self.device_no, "device number") + _u16(self.point, "measuring point")
                + bytes([_BAUDS.index(self.baud) << 5 | self.port, _u8(self.protocol, "protocol")])
                + address_to_wire(self.address) + self.password
                + bytes([self.tariffs,
                         (self.integer_digits - 4) << 2 | (self.decimal_digits - 1)])
                + address_to_wire(self.collector)
                + bytes([self.major_class << 4 | self.minor_class]))

    @classmethod
    def decode(cls, data: bytes) -> MeterRecord:
        _expect_len(data, 27, "meter archive record")
        return cls(
            device_no=int.from_bytes(data[0:2], "little"),
            point=int.from_bytes(data[2:4], "little"),
            baud=_BAUDS[data[4] >> 5], port=data[4] & 0x1F, protocol=data[5],
            address=address_from_wire(data[6:12]), password=bytes(data[12:18]),
            tariffs=data[18] & 0x3F,
            integer_digits=(data[19] >> 2 & 3) + 4, decimal_digits=(data[19] & 3) + 1,
            collector=address_from_wire(data[20:26]),
            major_class=data[26] >> 4, minor_class=data[26] & 0x0F)

    def describe(self) -> str:
        via = "" if self.collector == "000000000000" else f" via collector {self.collector}"
        return (f"#{self.device_no} p{self.point} meter {self.address} "
                f"{_PROTO_NAMES.get(self.protocol, self.protocol)} port {self.port}"
                f" {self.baud or 'default'} bd, {self.tariffs} tariffs{via}")


@dataclass(frozen=True, slots=True)
class MeterArchive:
    """AFN04 F10 (set) and AFN0A F10 (reply): n (2 LE) then n x 27-byte records."""

    records: tuple[MeterRecord, ...]

    def encode(self) -> bytes:
        return _u16(len(self.records), "record count") + b"".join(r.encode()
                                                                   for r in self.records)

    @classmethod
    def decode(cls, data: bytes) -> MeterArchive:
        if len(data) < 2:
            raise DataUnitError("meter archive needs a 2-byte count")
        n = int.from_bytes(data[0:2], "little")
        _expect_len(data, 2 + 27 * n, f"meter archive of {n} records")
        return cls(tuple(MeterRecord.decode(data[2 + 27 * i:29 + 27 * i]) for i in range(n)))

    def describe(self) -> str:
        return f"{len(self.records)} meter records: " + "; ".join(r.describe()
                                                                  for r in self.records)


@dataclass(frozen=True, slots=True)
class ArchiveQuery:
    """AFN0A F10 query: n (2 LE) then n device sequence numbers (2 LE each)."""

    device_numbers: tuple[int, ...]

    def encode(self) -> bytes:
        return _u16(len(self.device_numbers), "count") + b"".join(
            _u16(n, "device number") for n in self.device_numbers)

    @classmethod
    def decode(cls, data: bytes) -> ArchiveQuery:
        if len(data) < 2:
            raise DataUnitError("archive query needs a 2-byte count")
        n = int.from_bytes(data[0:2], "little")
        _expect_len(data, 2 + 2 * n, f"archive query of {n} numbers")
        return cls(tuple(int.from_bytes(data[2 + 2 * i:4 + 2 * i], "little") for i in range(n)))

    def describe(self) -> str:
        return "query meter records " + ", ".join(map(str, self.device_numbers))


@dataclass(frozen=True, slots=True)
class RemoteTrip:
    """AFN05 F1, trip a load-control round of the *terminal* (pn = round 1..8), 1 byte:
    D7-D4 power-limit time in half hours (0 = until allowed), D3-D0 alarm delay in minutes.
    The nibble order is [MEM] in protocols.md."""

    limit_half_hours: int = 0
    alarm_delay_min: int = 0

    def encode(self) -> bytes:
        if not (0 <= self.limit_half_hours <= 15 and 0 <= self.alarm_delay_min <= 15):
            raise EncodeError("remote trip times must be 0..15")
        return bytes([self.limit_half_hours << 4 | self.alarm_delay_min])

    @classmethod
    def decode(cls, data: bytes) -> RemoteTrip:
        _expect_len(data, 1, "AFN05 F1")
        return cls(data[0] >> 4, data[0] & 0x0F)

    def describe(self) -> str:
        limit = f"{self.limit_half_hours * 30} min" if self.limit_half_hours else "indefinitely"
        return f"remote trip, limit {limit}, alarm after {self.alarm_delay_min} min"


@dataclass(frozen=True, slots=True)
class AllowClose:
    """AFN05 F2, allow the round to close again (no data)."""

    def encode(self) -> bytes:
        return b""

    def describe(self) -> str:
        return "allow close"


# --- prepayment (issue 8; docs/prepayment.md "Master station (Q/GDW 1376.1)") ---------------

PURCHASE_ADD = 0x55         # 追加: add the amount to the remaining credit
PURCHASE_REPLACE = 0xAA     # 刷新: the amount becomes the remaining credit
FN_PURCHASE_HISTORY = 2044  # AFN0A [private]: the last n purchases of a meter
FN_METER_CONTROL = 2043     # AFN10 [private]: the master's direct trip/close of one meter
METER_TRIP = 0x1A           # action codes as in the DL/T 645 0x1C payload (N1)
METER_CLOSE = 0x1C
_METER_ACTIONS = {METER_TRIP: "trip", METER_CLOSE: "close"}


@dataclass(frozen=True, slots=True)
class PurchaseParams:
    """AFN04 F47 (set) and AFN0A F47 (reply), purchase (credit) control parameters, 17 bytes::

        order number BIN (4 LE) | add/replace flag (1: 55H add, AAH replace) |
        amount A.3 (4) | alarm threshold A.3 (4) | trip threshold A.3 (4)

    [V2: a C# master decoder (case 47: BIN 4, 55 = 追加, three A.3) and a terminal's ERC19
    decoder with the same fields; 55H/AAH also in a terminal's F47 check]. Money in yuan
    (A.3 厘 or 元). pn is the meter's measuring point here (the standard uses the total-add
    group; see docs/prepayment.md). A threshold of EE (None) leaves the meter's threshold as
    it is (the standard always sends both).
    """

    order_no: int
    amount: Decimal
    replace: bool = False
    alarm_threshold: Decimal | None = None
    trip_threshold: Decimal | None = None

    SIZE: ClassVar[int] = 17

    def encode(self) -> bytes:
        if not 0 <= self.order_no <= 0xFFFFFFFF:
            raise EncodeError(f"order number {self.order_no} does not fit 4 bytes")
        return (self.order_no.to_bytes(4, "little")
                + bytes([PURCHASE_REPLACE if self.replace else PURCHASE_ADD])
                + encode_a3_money(self.amount) + encode_a3_money(self.alarm_threshold)
                + encode_a3_money(self.trip_threshold))

    @classmethod
    def decode(cls, data: bytes) -> PurchaseParams:
        _expect_len(data, 17, "F47 purchase parameters")
        if data[4] not in (PURCHASE_ADD, PURCHASE_REPLACE):
            raise DataUnitError(f"F47 add/replace flag {data[4]:02X} is neither 55 nor AA")
        amount = decode_a3_money(data[5:9])
        if amount is None:
            raise DataUnitError("F47 purchase amount cannot be missing (EE)")
        return cls(int.from_bytes(data[0:4], "little"), amount, data[4] == PURCHASE_REPLACE,
                   decode_a3_money(data[9:13]), decode_a3_money(data[13:17]))

    def describe(self) -> str:
        def th(v: Decimal | None) -> str:
            return "unchanged" if v is None else f"{v} yuan"
        return (f"purchase order {self.order_no}: {'replace credit with' if self.replace else 'add'}"
                f" {self.amount} yuan, alarm {th(self.alarm_threshold)}, "
                f"trip {th(self.trip_threshold)}")


@dataclass(frozen=True, slots=True)
class RemainingCredit:
    """AFN0C F23 reply, current remaining credit (终端当前剩余电量(费)): A.3, 4 bytes, yuan.
    [V2: a terminal's F23 store (4 bytes, format 03) and a C# master decoder]"""

    balance: Decimal | None

    def encode(self) -> bytes:
        return encode_a3_money(self.balance, exact=False)

    @classmethod
    def decode(cls, data: bytes) -> RemainingCredit:
        return cls(decode_a3_money(data))

    def describe(self) -> str:
        return "remaining credit EE" if self.balance is None else \
            f"remaining credit {self.balance} yuan"


@dataclass(frozen=True, slots=True)
class ProtectOn:
    """AFN05 F25, protect (保电) on: 1 byte BIN, duration in half hours, 0 = until F33.
    [V2: a terminal's AFN05 store (1 byte BIN 0.5 h), a C# master decoder (x 0.5 h) and a
    master's dictionary (0 = 长期保电)]"""

    half_hours: int = 0

    def encode(self) -> bytes:
        return bytes([_u8(self.half_hours, "protect duration")])

    @classmethod
    def decode(cls, data: bytes) -> ProtectOn:
        _expect_len(data, 1, "AFN05 F25")
        return cls(data[0])

    def describe(self) -> str:
        return ("protect on until cancelled" if not self.half_hours
                else f"protect on for {self.half_hours * 30} min")


@dataclass(frozen=True, slots=True)
class ProtectOff:
    """AFN05 F33, protect (保电) off (no data)."""

    def encode(self) -> bytes:
        return b""

    def describe(self) -> str:
        return "protect off"


@dataclass(frozen=True, slots=True)
class MeterControl:
    """AFN10 F2043 [private] downlink, the master's direct trip/close of one meter, 7 bytes::

        meter address (6, as in the archive) | action (1: 1AH trip, 1CH close)

    With pn = p0 the address names the meter; with pn = its measuring point the address may
    be EE x 6 (then the point names it). The standard's AFN10 F10 has no layout we could pin
    from two public sources, so this is private (docs/prepayment.md).
    """

    meter: str | None
    action: int

    def __post_init__(self) -> None:
        if self.action not in _METER_ACTIONS:
            raise EncodeError(f"meter control action {self.action:#04x} is not 1A or 1C")

    @property
    def action_name(self) -> str:
        return _METER_ACTIONS[self.action]

    def encode(self) -> bytes:
        return (b"\xee" * 6 if self.meter is None else address_to_wire(self.meter)) + bytes(
            [self.action])

    @classmethod
    def decode(cls, data: bytes) -> MeterControl:
        _expect_len(data, 7, "AFN10 F2043")
        if data[6] not in _METER_ACTIONS:
            raise DataUnitError(f"meter control action {data[6]:02X} is not 1A or 1C")
        return cls(None if _is_missing(data[:6]) else address_from_wire(data[:6]), data[6])

    def describe(self) -> str:
        return f"direct {self.action_name} of meter {self.meter or '(by measuring point)'}"


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """AFN0A F2044 [private] downlink: how many recent purchases (1 byte, 1..255)."""

    count: int = 20

    def encode(self) -> bytes:
        if not 1 <= self.count <= 255:
            raise EncodeError(f"history count {self.count} is not 1..255")
        return bytes([self.count])

    @classmethod
    def decode(cls, data: bytes) -> HistoryRequest:
        _expect_len(data, 1, "AFN0A F2044 request")
        if data[0] == 0:
            raise DataUnitError("history count 0")
        return cls(data[0])

    def describe(self) -> str:
        return f"last {self.count} purchases"


@dataclass(frozen=True, slots=True)
class PurchaseEntry:
    """One 22-byte record of AFN0A F2044: order BIN (4 LE) | flag (1) | amount A.3 |
    balance before A.3 | balance after A.3 | applied at A.15 (5)."""

    order_no: int
    amount: Decimal
    replace: bool
    balance_before: Decimal | None
    balance_after: Decimal | None
    applied_at: datetime | None

    SIZE: ClassVar[int] = 22

    def encode(self) -> bytes:
        if not 0 <= self.order_no <= 0xFFFFFFFF:
            raise EncodeError(f"order number {self.order_no} does not fit 4 bytes")
        at = None if self.applied_at is None else self.applied_at.replace(second=0,
                                                                           microsecond=0)
        return (self.order_no.to_bytes(4, "little")
                + bytes([PURCHASE_REPLACE if self.replace else PURCHASE_ADD])
                + encode_a3_money(self.amount, exact=False)
                + encode_a3_money(self.balance_before, exact=False)
                + encode_a3_money(self.balance_after, exact=False) + encode_a15(at))

    @classmethod
    def decode(cls, data: bytes) -> PurchaseEntry:
        _expect_len(data, 22, "purchase record")
        if data[4] not in (PURCHASE_ADD, PURCHASE_REPLACE):
            raise DataUnitError(f"purchase flag {data[4]:02X} is neither 55 nor AA")
        amount = decode_a3_money(data[5:9])
        if amount is None:
            raise DataUnitError("purchase record amount cannot be missing (EE)")
        return cls(int.from_bytes(data[0:4], "little"), amount, data[4] == PURCHASE_REPLACE,
                   decode_a3_money(data[9:13]), decode_a3_money(data[13:17]),
                   decode_a15(data[17:22]))


@dataclass(frozen=True, slots=True)
class PurchaseHistory:
    """AFN0A F2044 [private] reply: n (1) then n x 22-byte ``PurchaseEntry``, newest first."""

    entries: tuple[PurchaseEntry, ...]

    def encode(self) -> bytes:
        return bytes([_u8(len(self.entries), "record count")]) + b"".join(
            e.encode() for e in self.entries)

    @classmethod
    def decode(cls, data: bytes) -> PurchaseHistory:
        if not data:
            raise DataUnitError("purchase history needs a count byte")
        n = data[0]
        _expect_len(data, 1 + 22 * n, f"purchase history of {n} records")
        return cls(tuple(PurchaseEntry.decode(data[1 + 22 * i:23 + 22 * i]) for i in range(n)))

    def describe(self) -> str:
        return f"{len(self.entries)} purchases: " + "; ".join(
            f"#{e.order_no} {'=' if e.replace else '+'}{e.amount} -> {e.balance_after}"
            for e in self.entries)


@dataclass(frozen=True, slots=True)
class TerminalClock:
    """A.1 clock: AFN0C F2 (terminal clock reply) and AFN05 F31 (set the terminal clock)."""

    time: datetime | None
    week: int | None = None     # 1 = Monday .. 7 = Sunday, 0 = not given; None -> from time

    def __post_init__(self) -> None:
        if self.week is None:
            # Fill in the weekday now so a built value equals its decoded copy.
            object.__setattr__(self, "week", self.time.isoweekday() if self.time else 0)

    def encode(self) -> bytes:
        return encode_a1(self.time, self.week)

    @classmethod
    def decode(cls, data: bytes) -> TerminalClock:
        _expect_len(data, 6, "A.1 clock")
        return cls(decode_a1(data), a1_week(data))

    def describe(self) -> str:
        return self.time.isoformat(sep=" ") if self.time else "clock missing (EE)"


def _energies_wire(total: Decimal | None, tariffs: Sequence[Decimal | None]) -> bytes:
    return bytes([_u8(len(tariffs), "tariff count")]) + encode_a14(total) + b"".join(
        encode_a14(t) for t in tariffs)


def _energies(data: bytes, what: str) -> tuple[Decimal | None, tuple[Decimal | None, ...]]:
    m = data[0]
    _expect_len(data, 1 + 5 * (m + 1), f"{what} with {m} tariffs")
    values = tuple(decode_a14(data[1 + 5 * i:6 + 5 * i]) for i in range(m + 1))
    return values[0], values[1:]


def _fmt_kwh(v: Decimal | None) -> str:
    return "EE" if v is None else f"{v} kWh"


@dataclass(frozen=True, slots=True)
class ForwardEnergy:
    """AFN0C F129, current forward active energy (pn = measuring point)::

        meter read time A.15 (5) | M (1) | total A.14 (5) | tariff 1..M A.14 (5 each)
    """

    read_time: datetime | None
    total: Decimal | None
    tariffs: tuple[Decimal | None, ...] = ()

    def encode(self) -> bytes:
        return encode_a15(self.read_time) + _energies_wire(self.total, self.tariffs)

    @classmethod
    def decode(cls, data: bytes) -> ForwardEnergy:
        if len(data) < 6:
            raise DataUnitError("F129 needs at least 6 bytes")
        total, tariffs = _energies(data[5:], "F129")
        return cls(decode_a15(data[:5]), total, tariffs)

    def describe(self) -> str:
        when = self.read_time.isoformat(sep=" ") if self.read_time else "EE"
        return (f"forward active energy read {when}: total {_fmt_kwh(self.total)}, tariffs "
                + ", ".join(_fmt_kwh(t) for t in self.tariffs))


@dataclass(frozen=True, slots=True)
class DayRequest:
    """AFN0D F161 request: the frozen day Td_d (A.20)."""

    day: date

    def encode(self) -> bytes:
        return encode_a20(self.day)

    @classmethod
    def decode(cls, data: bytes) -> DayRequest:
        _expect_len(data, 3, "Td_d")
        day = decode_a20(data)
        if day is None:
            raise DataUnitError("Td_d of a request cannot be missing (EE)")
        return cls(day)

    def describe(self) -> str:
        return f"frozen day {self.day.isoformat()}"


@dataclass(frozen=True, slots=True)
class DailyForwardEnergy:
    """AFN0D F161 reply, daily-frozen forward active energy::

        Td_d A.20 (3) | read time A.15 (5) | M (1) | total A.14 (5) | tariff 1..M A.14 (5 each)
    """

    day: date | None
    read_time: datetime | None
    total: Decimal | None
    tariffs: tuple[Decimal | None, ...] = ()

    def encode(self) -> bytes:
        return (encode_a20(self.day) + encode_a15(self.read_time)
                + _energies_wire(self.total, self.tariffs))

    @classmethod
    def decode(cls, data: bytes) -> DailyForwardEnergy:
        if len(data) < 9:
            raise DataUnitError("F161 needs at least 9 bytes")
        total, tariffs = _energies(data[8:], "F161")
        return cls(decode_a20(data[:3]), decode_a15(data[3:8]), total, tariffs)

    def describe(self) -> str:
        day = self.day.isoformat() if self.day else "EE"
        when = self.read_time.isoformat(sep=" ") if self.read_time else "EE"
        return (f"frozen {day} (read {when}): total {_fmt_kwh(self.total)}, tariffs "
                + ", ".join(_fmt_kwh(t) for t in self.tariffs))


ERC_NAMES: dict[int, str] = {
    1: "data initialisation / version change", 2: "parameter loss", 3: "parameter change",
    4: "state change", 5: "remote trip", 6: "power-control trip", 7: "energy-control trip",
    8: "meter parameter change", 9: "current loop fault", 10: "voltage loop fault",
    11: "phase order fault", 12: "meter clock drift", 13: "meter fault",
    14: "terminal power off/on", 15: "harmonics over limit", 16: "DC analogue over limit",
    17: "voltage/current unbalance", 18: "capacitor lock", 19: "purchase parameters set",
    20: "authentication error", 21: "terminal fault", 22: "differential energy over limit",
    23: "energy-control alarm", 24: "voltage over limit", 25: "current over limit",
    26: "apparent power over limit", 27: "energy reading decreased", 28: "energy excess",
    29: "meter runaway", 30: "meter stopped", 31: "RS485 read failure",
    32: "communication traffic over limit", 33: "meter status-word change", 34: "CT fault",
    35: "unknown meter found",
}


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event record: ERC (1) | Le (1) | Le bytes."""

    erc: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return ERC_NAMES.get(self.erc, f"ERC{self.erc}")

    def encode(self) -> bytes:
        return bytes([_u8(self.erc, "ERC"), _u8(len(self.data), "event length")]) + self.data

    def describe(self) -> str:
        if self.erc == 14 and len(self.data) >= 10:
            try:
                off, on = decode_a15(self.data[0:5]), decode_a15(self.data[5:10])
                return f"ERC14 {self.name}: off {off}, on {on}"
            except CodecError:
                pass
        return f"ERC{self.erc} {self.name}: {self.data.hex(' ')}"


@dataclass(frozen=True, slots=True)
class EventRequest:
    """AFN0E F1/F2 request: records from pointer Pm up to (not including) Pn."""

    pm: int
    pn: int

    def encode(self) -> bytes:
        return bytes([_u8(self.pm, "Pm"), _u8(self.pn, "Pn")])

    @classmethod
    def decode(cls, data: bytes) -> EventRequest:
        _expect_len(data, 2, "event request")
        return cls(data[0], data[1])

    def describe(self) -> str:
        return f"events Pm {self.pm} .. Pn {self.pn}"


@dataclass(frozen=True, slots=True)
class EventReply:
    """AFN0E F1/F2 reply: EC1 | EC2 | Pm | Pn | (Pn - Pm) mod 256 records."""

    ec1: int
    ec2: int
    pm: int
    pn: int
    records: tuple[EventRecord, ...] = ()

    def encode(self) -> bytes:
        if len(self.records) != (self.pn - self.pm) % 256:
            raise EncodeError(f"{len(self.records)} records do not match Pm {self.pm} Pn {self.pn}")
        return bytes([_u8(self.ec1, "EC1"), _u8(self.ec2, "EC2"), _u8(self.pm, "Pm"),
                      _u8(self.pn, "Pn")]) + b"".join(r.encode() for r in self.records)

    @classmethod
    def decode(cls, data: bytes) -> EventReply:
        if len(data) < 4:
            raise DataUnitError("event reply needs 4 header bytes")
        records = []
        pos = 4
        for _ in range((data[3] - data[2]) % 256):
            if pos + 2 > len(data) or pos + 2 + data[pos + 1] > len(data):
                raise DataUnitError("event record truncated")
            le = data[pos + 1]
            records.append(EventRecord(data[pos], bytes(data[pos + 2:pos + 2 + le])))
            pos += 2 + le
        _expect_len(data, pos, "event reply")
        return cls(data[0], data[1], data[2], data[3], tuple(records))

    def describe(self) -> str:
        return (f"EC1 {self.ec1} EC2 {self.ec2} Pm {self.pm} Pn {self.pn}: "
                + "; ".join(r.describe() for r in self.records))


_FWD_BAUDS = (300, 600, 1200, 2400, 4800, 7200, 9600, 19200)


@dataclass(frozen=True, slots=True)
class TransparentForward:
    """AFN10 F1 downlink: forward ``payload`` (e.g. a DL/T 645 frame) on a terminal port::

        port (1) | comm control BS8 (1) | frame timeout (1) | byte timeout (1) | k (2 LE) | k bytes

    control: D7-D5 baud (0 = 300 .. 3 = 2400, 6 = 9600, 7 = 19200), D4 stop bits (0 = 1),
    D3 parity enabled, D2 odd parity, D1-D0 data bits - 5; 0x6B = 2400 8E1.
    frame timeout: D7 = 1 seconds / 0 tens of ms [CONFLICT], D6-D0 value. Byte timeout x10 ms.
    """

    port: int
    payload: bytes
    control: int = 0x6B
    frame_timeout: int = 0x80 | 5
    byte_timeout: int = 10

    @property
    def baud(self) -> int:
        return _FWD_BAUDS[self.control >> 5]

    def encode(self) -> bytes:
        return bytes([_u8(self.port, "port"), _u8(self.control, "control"),
                      _u8(self.frame_timeout, "frame timeout"),
                      _u8(self.byte_timeout, "byte timeout")]) + _u16(
            len(self.payload), "payload length") + self.payload

    @classmethod
    def decode(cls, data: bytes) -> TransparentForward:
        if len(data) < 6:
            raise DataUnitError("AFN10 F1 downlink needs 6 header bytes")
        k = int.from_bytes(data[4:6], "little")
        _expect_len(data, 6 + k, "AFN10 F1 downlink")
        return cls(data[0], bytes(data[6:]), data[1], data[2], data[3])

    def describe(self) -> str:
        c = self.control
        parity = ("O" if c & 4 else "E") if c & 8 else "N"
        unit = "s" if self.frame_timeout & 0x80 else "x10 ms"
        return (f"forward on port {self.port} at {self.baud} {(c & 3) + 5}{parity}"
                f"{2 if c & 0x10 else 1}, frame timeout {self.frame_timeout & 0x7F} {unit}, "
                f"byte timeout {self.byte_timeout * 10} ms: {self.payload.hex(' ')}")


@dataclass(frozen=True, slots=True)
class TransparentReply:
    """AFN10 F1 uplink: port (1) | k (2 LE) | k bytes the device answered."""

    port: int
    payload: bytes

    def encode(self) -> bytes:
        return bytes([_u8(self.port, "port")]) + _u16(len(self.payload),
                                                       "payload length") + self.payload

    @classmethod
    def decode(cls, data: bytes) -> TransparentReply:
        if len(data) < 3:
            raise DataUnitError("AFN10 F1 uplink needs 3 header bytes")
        k = int.from_bytes(data[1:3], "little")
        _expect_len(data, 3 + k, "AFN10 F1 uplink")
        return cls(data[0], bytes(data[3:]))

    def describe(self) -> str:
        return f"answer from port {self.port}: {self.payload.hex(' ') or '(nothing)'}"


@dataclass(frozen=True, slots=True)
class TerminalVersion:
    """AFN09 F1 reply, terminal version information (41 bytes, the 2013 layout)::

        vendor (4 ASCII) | device number (8 ASCII) | software version (4 ASCII) |
        software date A.20 (3) | capacity code (11 ASCII) | protocol version (4 ASCII) |
        hardware version (4 ASCII) | hardware date A.20 (3)

    Text fields are NUL padded on the wire.
    """

    vendor: str
    device_no: str
    software_version: str
    software_date: date | None
    capacity: str = ""
    protocol_version: str = ""
    hardware_version: str = ""
    hardware_date: date | None = None

    _TEXT: ClassVar[tuple[tuple[str, int], ...]] = (
        ("vendor", 4), ("device_no", 8), ("software_version", 4), ("software_date", 3),
        ("capacity", 11), ("protocol_version", 4), ("hardware_version", 4), ("hardware_date", 3))

    def encode(self) -> bytes:
        out = bytearray()
        for name, n in self._TEXT:
            value = getattr(self, name)
            out += encode_a20(value) if name.endswith("date") else _text_field(value, n, name)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> TerminalVersion:
        _expect_len(data, 41, "AFN09 F1")
        values: dict[str, Any] = {}
        pos = 0
        for name, n in cls._TEXT:
            chunk = data[pos:pos + n]
            values[name] = decode_a20(chunk) if name.endswith("date") else _text(chunk)
            pos += n
        return cls(**values)

    def describe(self) -> str:
        return (f"vendor {self.vendor!r} device {self.device_no!r} software "
                f"{self.software_version!r} ({self.software_date}), hardware "
                f"{self.hardware_version!r} ({self.hardware_date}), protocol "
                f"{self.protocol_version!r}, capacity {self.capacity!r}")


@dataclass(frozen=True, slots=True)
class RawUnit:
    """A data unit whose Fn has no layout here: the DA/DT and every byte after it."""

    pns: tuple[int, ...]
    fns: tuple[int, ...]
    data: bytes

    def encode(self) -> bytes:
        return self.data

    def describe(self) -> str:
        return f"raw {self.data.hex(' ') or '(no data)'}"


@dataclass(frozen=True, slots=True)
class DecodedUnit:
    """One (pn, Fn) item of a frame and its typed value.

    ``value`` is ``None`` for a request that carries no data (e.g. AFN0C F129 downlink) and a
    ``RawUnit`` for an Fn without a layout here (then ``pn``/``fn`` are its first ones).
    """

    pn: int
    fn: int
    value: Any


# --- length rules and the Fn registry ----------------------------------------------------------

LengthRule = Callable[[bytes, int, int], int]


def _need(end: int, pos: int, n: int, what: str) -> None:
    if end - pos < n:
        raise DataUnitError(f"{what} truncated: needs {n} bytes, {end - pos} left")


def _fixed(n: int) -> LengthRule:
    return lambda buf, pos, end: n


def _rest(buf: bytes, pos: int, end: int) -> int:
    return end - pos


def _len_f129(buf: bytes, pos: int, end: int) -> int:
    _need(end, pos, 6, "F129")
    return 6 + 5 * (buf[pos + 5] + 1)


def _len_f161_up(buf: bytes, pos: int, end: int) -> int:
    _need(end, pos, 9, "F161")
    return 9 + 5 * (buf[pos + 8] + 1)


def _len_archive(buf: bytes, pos: int, end: int) -> int:
    _need(end, pos, 2, "meter archive")
    return 2 + 27 * int.from_bytes(buf[pos:pos + 2], "little")


def _len_archive_query(buf: bytes, pos: int, end: int) -> int:
    _need(end, pos, 2, "archive query")
    return 2 + 2 * int.from_bytes(buf[pos:pos + 2], "little")


def _len_events_up(buf: bytes, pos: int, end: int) -> int:
    _need(end, pos, 4, "event reply")
    p = pos + 4
    for _ in range((buf[pos + 3] - buf[pos + 2]) % 256):
        _need(end, p, 2, "event record")
        p += 2 + buf[p + 1]
    return p - pos


def _len_history(buf: bytes, pos: int, end: int) -> int:
    _need(end, pos, 1, "purchase history")
    return 1 + PurchaseEntry.SIZE * buf[pos]


def _len_forward_down(buf: bytes, pos: int, end: int) -> int:
    _need(end, pos, 6, "AFN10 F1")
    return 6 + int.from_bytes(buf[pos + 4:pos + 6], "little")


def _len_forward_up(buf: bytes, pos: int, end: int) -> int:
    _need(end, pos, 3, "AFN10 F1")
    return 3 + int.from_bytes(buf[pos + 1:pos + 3], "little")


def _no_data(_: bytes) -> None:
    return None


def _const(obj: Any) -> Callable[[bytes], Any]:
    return lambda _data: obj


@dataclass(frozen=True, slots=True)
class _FnSpec:
    name: str
    down: tuple[LengthRule, Callable[[bytes], Any]]
    up: tuple[LengthRule, Callable[[bytes], Any]]


def _spec(name: str, down: tuple[LengthRule, Callable[[bytes], Any]],
          up: tuple[LengthRule, Callable[[bytes], Any]] | None = None) -> _FnSpec:
    return _FnSpec(name, down, up or down)


_EMPTY = (_fixed(0), _no_data)

#: (AFN, Fn) -> length rule and typed decoder, per direction. Fn outside this table are raw.
KNOWN_FN: dict[tuple[int, int], _FnSpec] = {
    (0x00, 1): _spec("all confirmed", (_fixed(0), _const(AllConfirmed()))),
    (0x00, 2): _spec("all denied", (_fixed(0), _const(AllDenied()))),
    (0x00, 3): _spec("confirm/deny per data unit", (_rest, PerItemAck.decode)),
    **{(0x01, f): _spec(_RESET_NAMES[f], (_fixed(0), _const(Reset(f)))) for f in (1, 2, 3, 4)},
    (0x02, 1): _spec("login", (_rest, Login)),
    (0x02, 2): _spec("logout", (_rest, Logout)),
    (0x02, 3): _spec("heartbeat", (_rest, Heartbeat)),
    (0x04, 1): _spec("terminal uplink comm parameters", (_fixed(6), TerminalCommParams.decode)),
    (0x04, 3): _spec("master station IP/port and APN", (_fixed(28), MasterStationParams.decode)),
    (0x04, 10): _spec("meter archive", (_len_archive, MeterArchive.decode)),
    (0x05, 1): _spec("remote trip", (_fixed(1), RemoteTrip.decode)),
    (0x05, 2): _spec("allow close", (_fixed(0), _const(AllowClose()))),
    (0x05, 31): _spec("set clock", (_fixed(6), TerminalClock.decode)),
    (0x04, 47): _spec("purchase control parameters", (_fixed(17), PurchaseParams.decode)),
    (0x05, 25): _spec("protect on", (_fixed(1), ProtectOn.decode)),
    (0x05, 33): _spec("protect off", (_fixed(0), _const(ProtectOff()))),
    (0x0A, 47): _spec("purchase control parameters", _EMPTY,
                      (_fixed(17), PurchaseParams.decode)),
    (0x0A, FN_PURCHASE_HISTORY): _spec("purchase history [private]",
                                       (_fixed(1), HistoryRequest.decode),
                                       (_len_history, PurchaseHistory.decode)),
    (0x0C, 23): _spec("remaining credit", _EMPTY, (_fixed(4), RemainingCredit.decode)),
    (0x10, FN_METER_CONTROL): _spec("direct meter trip/close [private]",
                                    (_fixed(7), MeterControl.decode), _EMPTY),
    (0x09, 1): _spec("terminal version", _EMPTY, (_fixed(41), TerminalVersion.decode)),
    (0x0A, 1): _spec("terminal uplink comm parameters", _EMPTY,
                     (_fixed(6), TerminalCommParams.decode)),
    (0x0A, 3): _spec("master station IP/port and APN", _EMPTY,
                     (_fixed(28), MasterStationParams.decode)),
    (0x0A, 10): _spec("meter archive", (_len_archive_query, ArchiveQuery.decode),
                      (_len_archive, MeterArchive.decode)),
    (0x0C, 2): _spec("terminal clock", _EMPTY, (_fixed(6), TerminalClock.decode)),
    (0x0C, 129): _spec("current forward active energy", _EMPTY,
                       (_len_f129, ForwardEnergy.decode)),
    (0x0D, 161): _spec("daily-frozen forward active energy", (_fixed(3), DayRequest.decode),
                       (_len_f161_up, DailyForwardEnergy.decode)),
    (0x0E, 1): _spec("important events", (_fixed(2), EventRequest.decode),
                     (_len_events_up, EventReply.decode)),
    (0x0E, 2): _spec("general events", (_fixed(2), EventRequest.decode),
                     (_len_events_up, EventReply.decode)),
    (0x10, 1): _spec("transparent forwarding", (_len_forward_down, TransparentForward.decode),
                     (_len_forward_up, TransparentReply.decode)),
}


def _rule(uplink: bool, afn: int, fn: int) -> tuple[LengthRule, Callable[[bytes], Any]] | None:
    spec = KNOWN_FN.get((afn, fn))
    if spec is None:
        return None
    return spec.up if uplink else spec.down


def _split_units(uplink: bool, afn: int, buf: bytes, pos: int, end: int
                 ) -> tuple[DataUnit, ...]:
    """Cut buf[pos:end] into data units; an unknown Fn takes everything left."""
    units = []
    while pos < end:
        if end - pos < 4:
            raise DataUnitError(f"{end - pos} stray bytes after the last data unit")
        pns = decode_da(buf[pos:pos + 2])
        fns = decode_dt(buf[pos + 2:pos + 4])
        pos += 4
        start = pos
        rules = [_rule(uplink, afn, fn) for fn in fns]
        if any(r is None for r in rules):
            pos = end
        else:
            for _pn in pns:
                for fn, r in zip(fns, rules, strict=True):
                    assert r is not None
                    n = r[0](buf, pos, end)
                    _need(end, pos, n, f"AFN{afn:02X} F{fn}")
                    pos += n
        units.append(DataUnit(pns, fns, bytes(buf[start:pos])))
    return tuple(units)


def decode_item(uplink: bool, afn: int, fn: int, data: bytes) -> Any:
    """Typed value of one (pn, Fn) item's bytes; ``RawUnit`` semantics are the caller's."""
    r = _rule(uplink, afn, fn)
    if r is None:
        raise DataUnitError(f"AFN{afn:02X} F{fn} has no layout in this codec")
    return r[1](bytes(data))


def decode_units(frame: Frame13761) -> list[DecodedUnit]:
    """Every (pn, Fn) item of the frame with its typed value (unknown Fn -> ``RawUnit``).

    Raises ``DataUnitError`` when a known Fn's bytes do not decode (e.g. non-BCD digits).
    """
    out: list[DecodedUnit] = []
    up = frame.control.uplink
    for u in frame.units:
        rules = [_rule(up, frame.afn, fn) for fn in u.fns]
        if any(r is None for r in rules):
            log.debug("terminal %s: AFN%02X F%s has no layout here, kept raw",
                      frame.address, frame.afn, ",".join(map(str, u.fns)))
            out.append(DecodedUnit(u.pns[0], u.fns[0], RawUnit(u.pns, u.fns, u.data)))
            continue
        pos, end = 0, len(u.data)
        for pn in u.pns:
            for fn, r in zip(u.fns, rules, strict=True):
                assert r is not None
                n = r[0](u.data, pos, end)
                _need(end, pos, n, f"AFN{frame.afn:02X} F{fn}")
                out.append(DecodedUnit(pn, fn, r[1](u.data[pos:pos + n])))
                pos += n
        if pos != end:
            raise DataUnitError(f"AFN{frame.afn:02X} unit has {end - pos} bytes too many")
    return out


# --- frame codec -------------------------------------------------------------------------------

def _aux_lengths(control: Control, afn: int, seq: Seq) -> tuple[int, int, int]:
    pw = _PW_LEN if aux_has_pw(control.uplink, afn) else 0
    ec = _EC_LEN if control.acd else 0
    tp = _TP_LEN if seq.tpv else 0
    return pw, ec, tp


def parse_prefix(buf: bytes) -> tuple[Frame13761, int]:
    """Decode the frame that starts at ``buf[0]``; return it and the bytes it used.

    Raises ``IncompleteFrame`` when more bytes are needed; header checks run on as many
    bytes as are present so that a false start is rejected early.
    """
    n = len(buf)
    if n == 0:
        raise IncompleteFrame("empty buffer")
    if buf[0] != 0x68:
        raise FrameFormatError(f"frame starts with {buf[0]:02X}, not 68")
    if n >= 5:
        l1 = int.from_bytes(buf[1:3], "little")
        if l1 != int.from_bytes(buf[3:5], "little"):
            raise FrameFormatError("the two length fields differ")
        if l1 & 3 != 2:
            raise FrameFormatError(f"protocol mark {l1 & 3:02b} is not 376.1 (10)")
        user = l1 >> 2
        if user < 8:
            raise FrameFormatError(f"user data length {user} is shorter than the header")
    if n >= 6 and buf[5] != 0x68:
        raise FrameFormatError("second start byte is not 68")
    if n < 6:
        raise IncompleteFrame(f"header needs 6 bytes, have {n}")
    total = user + 8
    if n < total:
        raise IncompleteFrame(f"frame needs {total} bytes, have {n}")
    if buf[total - 1] != 0x16:
        raise FrameFormatError("end byte is not 16")
    if sum(buf[6:6 + user]) & 0xFF != buf[6 + user]:
        raise ChecksumError(f"CS {buf[6 + user]:02X}, computed {sum(buf[6:6 + user]) & 0xFF:02X}")
    control = Control.from_byte(buf[6])
    address = Address.from_wire(bytes(buf[7:12]))
    afn = buf[12]
    seq = Seq.from_byte(buf[13])
    pw_len, ec_len, tp_len = _aux_lengths(control, afn, seq)
    aux_start = 6 + user - pw_len - ec_len - tp_len
    if aux_start < 14:
        raise FrameFormatError(f"user data of {user} bytes cannot hold its AUX field")
    units = _split_units(control.uplink, afn, buf, 14, aux_start)
    p = aux_start
    pw = bytes(buf[p:p + pw_len]) if pw_len else None
    p += pw_len
    ec = EventCounters(buf[p], buf[p + 1]) if ec_len else None
    p += ec_len
    tp = Tp.from_wire(bytes(buf[p:p + tp_len])) if tp_len else None
    return Frame13761(control, address, afn, seq, units, pw, ec, tp), total


def decode(data: bytes) -> Frame13761:
    """Decode exactly one frame; trailing bytes are a ``FrameFormatError``."""
    frame, used = parse_prefix(data)
    if used != len(data):
        raise FrameFormatError(f"{len(data) - used} bytes after the end of the frame")
    return frame


def encode(frame: Frame13761) -> bytes:
    """Frame -> wire bytes. Raises ``EncodeError`` when the frame could not decode back to
    itself (AUX parts not matching the header, unit data not matching its Fn's layout, a
    field out of range, or user data over 16383 bytes)."""
    c, s = frame.control, frame.seq
    if not 0 <= frame.afn <= 255:
        raise EncodeError(f"AFN {frame.afn} does not fit a byte")
    body = bytearray([c.to_byte()])
    body += frame.address.to_wire()
    body += bytes([frame.afn, s.to_byte()])
    units_start = len(body)
    for u in frame.units:
        body += encode_da(u.pns) + encode_dt(u.fns) + u.data
    units_end = len(body)
    pw_len, ec_len, tp_len = _aux_lengths(c, frame.afn, s)
    if pw_len:
        if frame.pw is None or len(frame.pw) != _PW_LEN:
            raise EncodeError(f"AFN{frame.afn:02X} in this direction needs a 16-byte PW")
        body += frame.pw
    elif frame.pw is not None:
        raise EncodeError(f"AFN{frame.afn:02X} in this direction carries no PW")
    if ec_len:
        if frame.ec is None:
            raise EncodeError("an uplink frame with ACD = 1 needs EC")
        body += bytes([_u8(frame.ec.important, "EC1"), _u8(frame.ec.general, "EC2")])
    elif frame.ec is not None:
        raise EncodeError("EC is sent only on uplink frames with ACD = 1")
    if tp_len:
        if frame.tp is None:
            raise EncodeError("SEQ.TpV = 1 needs a Tp")
        body += frame.tp.to_wire()
    elif frame.tp is not None:
        raise EncodeError("a Tp needs SEQ.TpV = 1")
    if len(body) > MAX_USER_LENGTH:
        raise EncodeError(f"user data of {len(body)} bytes exceeds {MAX_USER_LENGTH}")
    try:
        again = _split_units(c.uplink, frame.afn, bytes(body), units_start, units_end)
    except DataUnitError as exc:
        raise EncodeError(f"data units do not match their Fn layouts: {exc}") from exc
    if again != frame.units:
        raise EncodeError("data units would not decode as given (unit data length does not "
                          "match its Fn, or an unknown-Fn unit is not the last)")
    length = (len(body) << 2 | 2).to_bytes(2, "little")
    return b"\x68" + length + length + b"\x68" + bytes(body) + bytes([sum(body) & 0xFF, 0x16])


class Gdw13761StreamDecoder(StreamDecoder[Frame13761]):
    """Streaming 1376.1 decoder for a TCP connection (or radio with ``max_user_length=255``)."""

    def __init__(self, max_user_length: int = MAX_USER_LENGTH) -> None:
        super().__init__(parse_prefix, b"\x68", max_buffer=max_user_length + 8)


def tp_expired(tp: Tp, now: datetime) -> bool:
    """Whether a frame's time label is older than its allowed delay at ``now`` [MEM].

    A.16 has no month, so the send time is taken as the latest day-of-month/time at or
    before ``now`` (up to a minute ahead is tolerated as clock skew). Delay 0 never expires.
    """
    if tp.delay == 0 or tp.send_time is None:
        return False
    st = tp.send_time
    year, month = now.year, now.month
    for _ in range(3):
        try:
            sent = datetime(year, month, st.day, st.hour, st.minute, st.second,
                            tzinfo=now.tzinfo)
        except ValueError:
            sent = None
        if sent is not None and sent <= now + timedelta(minutes=1):
            return now - sent > timedelta(minutes=tp.delay)
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return True


# --- builders ----------------------------------------------------------------------------------

def _default_requests() -> dict[int, tuple[int, bool]]:
    # §3.2 recommendation [MEM]: reset 1; set/control/forward/file/auth 10 with FCV;
    # reads and queries 11 (class-2 request, "4B", the common sight for AFN0C/0D/0E).
    table = {afn: (11, False) for afn in (0x03, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E)}
    table.update({afn: (10, True) for afn in (0x04, 0x05, 0x06, 0x0F, 0x10)})
    table[0x01] = (1, False)
    return table


@dataclass(frozen=True)
class FunctionTable:
    """Control-field function codes the builders use; configure to match the master software.

    ``requests``: AFN -> (function code, FCV) for master-initiated downlink frames.
    """

    requests: Mapping[int, tuple[int, bool]] = field(default_factory=_default_requests)
    link_test: int = 9      # terminal's AFN02 login / heartbeat / logout (C = C9)
    report: int = 4         # terminal's unsolicited AFN0C/0D/0E report (PRM = 1)
    response: int = 8       # PRM = 0 answer with data
    ack: int = 0            # PRM = 0 AFN00 F1/F3 confirm
    deny: int = 9           # PRM = 0 AFN00 F2 ("deny: no data requested")
    link_ack: int = 11      # master's AFN00 answer to AFN02 (C = 0B, "link status")

    def request_code(self, afn: int) -> tuple[int, bool]:
        return self.requests.get(afn, (10, False))

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> FunctionTable:
        """Build from operator configuration, e.g. ``{"response": 8, "requests": {"0C": 10,
        "04": [10, true]}}``; AFN keys are hex strings or ints, values a code or [code, fcv]."""
        base = cls()
        reqs = dict(base.requests)
        for key, value in dict(m.get("requests", {})).items():
            afn = int(key, 16) if isinstance(key, str) else int(key)
            code, fcv = (value, False) if isinstance(value, int) else (value[0], bool(value[1]))
            if not 0 <= code <= 15:
                raise ValueError(f"function code {code} for AFN {afn:02X} is not 0..15")
            reqs[afn] = (int(code), fcv)
        kw = {f.name: int(m[f.name]) for f in fields(cls) if f.name != "requests" and f.name in m}
        return cls(requests=reqs, **kw)


DEFAULT_FUNCTIONS = FunctionTable()


def unit(pn: int | Sequence[int], fn: int | Sequence[int], value: Any = None) -> DataUnit:
    """A data unit from typed value(s): ``value`` is None (no data), bytes, an object with
    ``encode()``, or a sequence of those in pn-major, Fn-minor order for several pn/Fn."""
    pns = (pn,) if isinstance(pn, int) else tuple(pn)
    fns = (fn,) if isinstance(fn, int) else tuple(fn)
    values = value if isinstance(value, list | tuple) else [value]
    data = b"".join(b"" if v is None else bytes(v) if isinstance(v, bytes | bytearray)
                    else v.encode() for v in values)
    return DataUnit(pns, fns, data)


def _up_link(address: Address, seq: int, fn: int, extra: bytes, table: FunctionTable
             ) -> Frame13761:
    return Frame13761(Control(True, True, False, False, table.link_test), address, AFN_LINK,
                      Seq(seq, con=True), (DataUnit((0,), (fn,), extra),))


def login(address: Address, seq: int, *, table: FunctionTable = DEFAULT_FUNCTIONS
          ) -> Frame13761:
    """Terminal login (AFN02 F1, p0, CON = 1), e.g. C9 ... 02 7n 00 00 01 00."""
    return _up_link(address, seq, 1, b"", table)


def logout(address: Address, seq: int, *, table: FunctionTable = DEFAULT_FUNCTIONS
           ) -> Frame13761:
    """Terminal logout (AFN02 F2)."""
    return _up_link(address, seq, 2, b"", table)


def heartbeat(address: Address, seq: int, *, extra: bytes = b"",
              table: FunctionTable = DEFAULT_FUNCTIONS) -> Frame13761:
    """Terminal heartbeat (AFN02 F3); ``extra`` is for regional variants that append data."""
    return _up_link(address, seq, 3, extra, table)


def _answer(req: Frame13761, afn: int, function: int, units: tuple[DataUnit, ...],
            ec: EventCounters | None, fir: bool, fin: bool, address: Address | None,
            pw: bytes | None) -> Frame13761:
    up = not req.control.uplink
    if ec is not None and not up:
        raise EncodeError("EC is sent only uplink")
    if aux_has_pw(up, afn) and pw is None:
        pw = bytes(_PW_LEN)
    # Responses reuse the request's sequence number and copy its time label [MEM].
    seq = Seq(req.seq.seq, fir, fin, False, req.tp is not None)
    return Frame13761(Control(up, False, ec is not None, False, function),
                      address or req.address, afn, seq, units, pw, ec, req.tp)


def confirm(req: Frame13761, *, ec: EventCounters | None = None,
            address: Address | None = None, table: FunctionTable = DEFAULT_FUNCTIONS
            ) -> Frame13761:
    """AFN00 F1 answering ``req`` (a login/heartbeat gets the link-status function, C = 0B)."""
    function = table.link_ack if req.afn == AFN_LINK else table.ack
    return _answer(req, AFN_CONFIRM, function, (DataUnit((0,), (1,)),), ec, True, True,
                   address, None)


def deny(req: Frame13761, *, ec: EventCounters | None = None,
         address: Address | None = None, table: FunctionTable = DEFAULT_FUNCTIONS
         ) -> Frame13761:
    """AFN00 F2 (all denied) answering ``req``."""
    return _answer(req, AFN_CONFIRM, table.deny, (DataUnit((0,), (2,)),), ec, True, True,
                   address, None)


def response(req: Frame13761, units: Iterable[DataUnit], *, ec: EventCounters | None = None,
             fir: bool = True, fin: bool = True, address: Address | None = None,
             pw: bytes | None = None, table: FunctionTable = DEFAULT_FUNCTIONS) -> Frame13761:
    """Answer ``req`` with data in the same AFN (PRM = 0, function ``table.response``).
    Set ``fir``/``fin`` for multi-frame answers; ``ec`` sets ACD and adds EC."""
    return _answer(req, req.afn, table.response, tuple(units), ec, fir, fin, address, pw)


def request(address: Address, afn: int, units: Iterable[DataUnit], seq: int, *,
            pw: bytes | None = None, tp: Tp | None = None, fcb: bool = False,
            con: bool = False, table: FunctionTable = DEFAULT_FUNCTIONS) -> Frame13761:
    """Master-station request (downlink, PRM = 1); function code and FCV from ``table``.
    PW defaults to 16 zero bytes where the AFN needs one."""
    function, fcv = table.request_code(afn)
    if aux_has_pw(False, afn) and pw is None:
        pw = bytes(_PW_LEN)
    return Frame13761(Control(False, True, fcb and fcv, fcv, function), address, afn,
                      Seq(seq, con=con, tpv=tp is not None), tuple(units), pw, None, tp)


def report(address: Address, afn: int, units: Iterable[DataUnit], seq: int, *,
           ec: EventCounters | None = None, con: bool = True,
           table: FunctionTable = DEFAULT_FUNCTIONS) -> Frame13761:
    """Terminal-initiated upload (uplink, PRM = 1), e.g. an AFN0E event report."""
    return Frame13761(Control(True, True, ec is not None, False, table.report), address, afn,
                      Seq(seq, con=con), tuple(units), None, ec, None)


# --- presentation ------------------------------------------------------------------------------

_FUNC_PRM1 = {1: "reset", 4: "user data, no reply", 9: "link test", 10: "request class-1 data",
              11: "request class-2 data"}
_FUNC_PRM0 = {0: "acknowledge", 8: "user data (response)", 9: "deny: no data requested",
              11: "link status"}


def _fn_name(afn: int, fn: int) -> str:
    spec = KNOWN_FN.get((afn, fn))
    return spec.name if spec else "no layout in this codec"


def _pn_text(pn: int) -> str:
    return "p(all)" if pn == ALL_POINTS else f"p{pn}"


def describe(frame: Frame13761) -> list[tuple[str, str]]:
    """Human-readable (field, meaning) lines for ``concentrator frame decode``. Never raises."""
    c, a, s = frame.control, frame.address, frame.seq
    func = (_FUNC_PRM1 if c.prm else _FUNC_PRM0).get(c.function, "unassigned")
    if c.uplink:
        bits = f"ACD={int(c.fcb_acd)}"
    else:
        bits = f"FCB={int(c.fcb_acd)} FCV={int(c.fcv)}"
    out = [
        ("C", f"{c.to_byte():02X}: {'uplink' if c.uplink else 'downlink'}, "
              f"PRM={int(c.prm)} ({'initiator' if c.prm else 'responder'}), {bits}, "
              f"function {c.function} ({func})"),
        ("A", f"district {a.district}, terminal {a.terminal} (0x{a.terminal:04X}), MSA {a.msa}, "
              f"{'group' if a.group else 'single'} address"),
        ("AFN", f"{frame.afn:02X} {AFN_NAMES.get(frame.afn, 'reserved')}"),
        ("SEQ", f"{s.to_byte():02X}: seq {s.seq}, FIR={int(s.fir)} FIN={int(s.fin)} "
                f"CON={int(s.con)} TpV={int(s.tpv)}"),
    ]
    try:
        for item in decode_units(frame):
            label = f"{_pn_text(item.pn)} F{item.fn}"
            if item.value is None:
                text = f"{_fn_name(frame.afn, item.fn)} (request, no data)"
            elif isinstance(item.value, RawUnit):
                label = (f"p{','.join(map(str, item.value.pns))} "
                         f"F{','.join(map(str, item.value.fns))}")
                text = f"{_fn_name(frame.afn, item.fn)}: {item.value.describe()}"
            else:
                text = item.value.describe()
            out.append((label, text))
    except CodecError as exc:
        for u in frame.units:
            out.append((f"p{','.join(map(str, u.pns))} F{','.join(map(str, u.fns))}",
                        f"raw {u.data.hex(' ')}"))
        out.append(("error", f"data units do not decode: {exc}"))
    if frame.pw is not None:
        out.append(("PW", frame.pw.hex(" ")))
    if frame.ec is not None:
        out.append(("EC", f"important {frame.ec.important}, general {frame.ec.general}"))
    if frame.tp is not None:
        out.append(("Tp", f"PFC {frame.tp.pfc}, sent {frame.tp.send_time or 'EE'}, "
                          f"allowed delay {frame.tp.delay} min"))
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes | bytearray):
        return obj.hex()
    if isinstance(obj, Decimal):
        return str(obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, DayTime):
        return {"day": obj.day, "hour": obj.hour, "minute": obj.minute, "second": obj.second}
    if is_dataclass(obj) and not isinstance(obj, type):
        d = {"type": type(obj).__name__}
        d.update({f.name: _jsonable(getattr(obj, f.name)) for f in fields(obj)})
        if isinstance(obj, EventRecord):
            d["name"] = obj.name
        return d
    if isinstance(obj, list | tuple):
        return [_jsonable(x) for x in obj]
    return obj


def to_dict(frame: Frame13761) -> dict[str, Any]:
    """JSON-ready dict of the frame and its decoded data units (bytes as hex strings).

    An AFN10 F1 item carries the forwarded frame in ``value["payload"]`` (hex)."""
    d: dict[str, Any] = {
        "direction": "uplink" if frame.control.uplink else "downlink",
        "control": _jsonable(frame.control) | {"byte": frame.control.to_byte()},
        "address": _jsonable(frame.address),
        "afn": frame.afn,
        "afn_name": AFN_NAMES.get(frame.afn, "reserved"),
        "seq": _jsonable(frame.seq),
        "data_units": [_jsonable(u) for u in frame.units],
        "pw": None if frame.pw is None else frame.pw.hex(),
        "ec": _jsonable(frame.ec),
        "tp": _jsonable(frame.tp),
    }
    try:
        d["items"] = [{"pn": it.pn, "fn": it.fn, "name": _fn_name(frame.afn, it.fn),
                       "value": _jsonable(it.value)} for it in decode_units(frame)]
    except CodecError as exc:
        d["items"] = []
        d["error"] = str(exc)
    return d
