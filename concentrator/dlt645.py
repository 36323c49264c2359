"""DL/T 645-2007 meter protocol (and the DL/T 645-1997 read subset), sans-IO.

What is here:

* the frame codec: ``decode(b)``/``encode(frame)`` for one frame, ``parse_prefix(buf)`` and
  ``Dlt645StreamDecoder`` for a byte stream (the FE wake-up run belongs to the frame);
* the data-identifier registry (protocols.md §1.7–§1.9, §1.13): ``lookup(di)``,
  ``decode_value(di, value_bytes)``, ``encode_value(di, value)`` with typed values
  (``Decimal`` energies, signed ``Decimal`` current/power/pf, ``datetime``/``date``/``time``
  clocks, tuples for blocks, ``StatusWord3`` for the relay state);
* builders for both sides of the link (the reader and the simulated meters):
  ``read_request``, ``read_reply``, ``error_reply``, ``read_address_request`` ...;
* ``describe(frame)`` and ``to_dict(frame)`` for people and JSON.

Frames hold the payload *after* removing the +0x33 offset; ``encode(decode(b)) == b`` for
every valid frame because the count of FE bytes is kept in ``Dlt645Frame.preamble``.
Only the ``concentrator.codec`` error tree is raised. DIs are integers written big-endian
as printed in the standard (``0x00010000`` is "00 01 00 00"; it goes out DI0 first).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Protocol

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
    bcd_byte,
    bcd_to_int,
    from_bcd_byte,
    int_to_bcd,
)

__all__ = [
    "WILDCARD_ADDRESS",
    "BROADCAST_ADDRESS",
    "Dlt645Frame",
    "Dlt645StreamDecoder",
    "ErrorBits",
    "RemoteAction",
    "RemoteControl",
    "StatusWord3",
    "DataItem",
    "decode",
    "encode",
    "parse_prefix",
    "lookup",
    "decode_value",
    "encode_value",
    "format_value",
    "json_value",
    "format_di",
    "parse_di",
    "read_request",
    "read_reply",
    "read_follow_up_request",
    "read_follow_up_reply",
    "error_reply",
    "read_address_request",
    "read_address_reply",
    "address_from_reply",
    "broadcast_time",
    "parse_broadcast_time",
    "remote_control",
    "parse_remote_control",
    "control_reply",
    "write_request",
    "WriteRequest",
    "parse_write_request",
    "clock_write_request",
    "parse_write_reply",
    "DI_CLOCK_DATE",
    "DI_CLOCK_TIME",
    "DI_CLOCK_DATETIME",
    "read_request_1997",
    "read_reply_1997",
    "describe",
    "to_dict",
]

WILDCARD_ADDRESS = "AAAAAAAAAAAA"  # the single meter on a point-to-point link
BROADCAST_ADDRESS = "999999999999"  # every meter; meters never answer it

# Every DATA byte travels as (value + 0x33) mod 256. ``bytes.translate`` with a table does
# the whole payload in C, which is what makes >100k decodes/s possible.
_PLUS33 = bytes((i + 0x33) & 0xFF for i in range(256))
_MINUS33 = bytes((i - 0x33) & 0xFF for i in range(256))

# Control-code bits (§1.2).
_DIR_UP = 0x80
_ABNORMAL = 0x40
_FOLLOW_UP = 0x20
_FUNC_MASK = 0x1F

# Function codes of the 2007 edition (§1.3) and of the 1997 edition (§1.13).
FUNCTIONS_2007 = {
    0x03: "security authentication",
    0x08: "broadcast time sync",
    0x11: "read data",
    0x12: "read follow-up data",
    0x13: "read address",
    0x14: "write data",
    0x15: "write address",
    0x16: "freeze",
    0x17: "change baud rate",
    0x18: "change password",
    0x19: "clear maximum demand",
    0x1A: "meter clear",
    0x1B: "event clear",
    0x1C: "remote control (trip/close/alarm/protect)",
    0x1D: "multi-function terminal output control",
}
FUNCTIONS_1997 = {
    0x01: "read data (1997)",
    0x02: "read follow-up data (1997)",
    0x04: "write data (1997)",
    0x0A: "write address (1997)",
    0x0C: "change baud rate (1997)",
    0x0F: "change password (1997)",
    0x10: "clear maximum demand (1997)",
}
_F_READ, _F_READ_NEXT, _F_READ_ADDR, _F_WRITE, _F_CONTROL, _F_TIME = 0x11, 0x12, 0x13, 0x14, 0x1C, 0x08
_F97_READ, _F97_READ_NEXT, _F97_WRITE = 0x01, 0x02, 0x04


# --- frames -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Dlt645Frame:
    """One DL/T 645 frame.

    ``data`` is the payload with the +0x33 offset already removed; ``preamble`` is the
    number of FE wake-up bytes in front of the first 68 (kept so frames re-encode exactly).
    """

    address: str  # 12 digits as printed on the meter, e.g. "000000000161"
    control: int  # C byte: D7 direction, D6 abnormal, D5 follow-up, D4..D0 function
    data: bytes = b""  # DATA field, offset removed
    preamble: int = 0  # count of FE bytes before the frame

    @property
    def function(self) -> int:
        """Function code D4..D0 (0x11 read, 0x13 read address, 0x01 the 1997 read ...)."""
        return self.control & _FUNC_MASK

    @property
    def is_reply(self) -> bool:
        """Sent by a meter (D7 = 1)."""
        return bool(self.control & _DIR_UP)

    @property
    def is_error(self) -> bool:
        """An abnormal (error) reply: D6 = 1, the data is the ERR word."""
        return bool(self.control & _ABNORMAL)

    @property
    def has_follow_up(self) -> bool:
        """The meter has more data; ask with read follow-up (0x12)."""
        return bool(self.control & _FOLLOW_UP)

    @property
    def is_1997(self) -> bool:
        """The function code only exists in DL/T 645-1997 (0x01 read, 0x04 write ...)."""
        return self.function in FUNCTIONS_1997

    @property
    def di(self) -> int | None:
        """The data identifier of a read/write request or a normal read reply, else None."""
        if self.is_error:
            return None
        func = self.function
        if func in (_F_READ, _F_READ_NEXT, _F_WRITE) and len(self.data) >= 4:
            return int.from_bytes(self.data[:4], "little")
        if func in (_F97_READ, _F97_READ_NEXT, _F97_WRITE) and len(self.data) >= 2:
            return int.from_bytes(self.data[:2], "little")
        return None

    @property
    def value_bytes(self) -> bytes | None:
        """The value carried by a normal read reply (after the DI, without the frame
        sequence byte of a follow-up reply), else None."""
        if not self.is_reply or self.is_error:
            return None
        func = self.function
        if func == _F_READ and len(self.data) >= 4:
            return self.data[4:]
        if func == _F_READ_NEXT and len(self.data) >= 5:
            return self.data[4:-1]
        if func in (_F97_READ, _F97_READ_NEXT) and len(self.data) >= 2:
            return self.data[2:]
        return None

    @property
    def error_bits(self) -> ErrorBits | None:
        """The ERR word of an error reply (the first data byte), else None."""
        if not (self.is_reply and self.is_error) or not self.data:
            return None
        return ErrorBits(self.data[0])


MAX_PREAMBLE = 16  # FE bytes accepted before the first 68 (4 is usual; some gateways add more)


def parse_prefix(buf: bytes) -> tuple[Dlt645Frame, int]:
    """Decode the frame at the start of ``buf`` (FE run included); return it and the bytes used.

    Raises ``IncompleteFrame`` when more bytes are needed, ``FrameFormatError`` when ``buf``
    does not start with a frame and ``ChecksumError`` when the CS byte is wrong.
    """
    n = len(buf)
    i = n - len(buf.lstrip(b"\xfe"))  # length of the FE run, counted in C
    if i > MAX_PREAMBLE:
        # Masters send at most 4 wake-up bytes; a long FE run is line noise, and holding it as
        # an "incomplete frame" would make a stream decoder rescan it on every feed.
        raise FrameFormatError(f"{i} wake-up bytes (FE) before the frame, at most {MAX_PREAMBLE}")
    if i == n:
        raise IncompleteFrame("only wake-up bytes so far")
    if buf[i] != 0x68:
        raise FrameFormatError(f"expected 68 at offset {i}, got {buf[i]:02X}")
    # Reject a false start as early as possible so a stream resynchronises quickly.
    if n > i + 7 and buf[i + 7] != 0x68:
        raise FrameFormatError(f"expected second 68 at offset {i + 7}, got {buf[i + 7]:02X}")
    if n < i + 10:
        raise IncompleteFrame("header incomplete")
    end = i + 12 + buf[i + 9]
    if n < end:
        raise IncompleteFrame(f"need {end} bytes, have {n}")
    if buf[end - 1] != 0x16:
        raise FrameFormatError(f"expected end byte 16 at offset {end - 1}, got {buf[end - 1]:02X}")
    cs = sum(buf[i : end - 2]) & 0xFF
    if cs != buf[end - 2]:
        raise ChecksumError(f"checksum {buf[end - 2]:02X} != computed {cs:02X}")
    frame = Dlt645Frame(
        address_from_wire(buf[i + 1 : i + 7]),
        buf[i + 8],
        buf[i + 10 : end - 2].translate(_MINUS33),
        i,
    )
    return frame, end


def decode(b: bytes) -> Dlt645Frame:
    """Decode exactly one frame (with 0..n FE bytes in front); trailing bytes are an error."""
    if type(b) is not bytes:
        b = bytes(b)
    frame, used = parse_prefix(b)
    if used != len(b):
        raise FrameFormatError(f"{len(b) - used} bytes after the end of the frame")
    return frame


def encode(frame: Dlt645Frame) -> bytes:
    """Frame -> wire bytes (FE preamble, +0x33 on DATA, CS, 16)."""
    data = frame.data
    if len(data) > 255:
        raise EncodeError(f"DATA of {len(data)} bytes does not fit the L byte")
    if not 0 <= frame.control <= 0xFF:
        raise EncodeError(f"control code {frame.control} is not a byte")
    if frame.preamble < 0:
        raise EncodeError("preamble count cannot be negative")
    addr = address_to_wire(frame.address)
    if len(addr) != 6:
        raise EncodeError(f"address {frame.address!r} is not 12 hex digits")
    body = b"\x68" + addr + bytes((0x68, frame.control, len(data))) + bytes(data).translate(_PLUS33)
    return b"\xfe" * frame.preamble + body + bytes((sum(body) & 0xFF, 0x16))


class Dlt645StreamDecoder(StreamDecoder[Dlt645Frame]):
    """Streaming DL/T 645 decoder: ``feed(bytes)`` -> frames and ``Rejected`` items."""

    def __init__(self, max_buffer: int = 4096) -> None:
        super().__init__(parse_prefix, start_bytes=b"\x68\xfe", max_buffer=max_buffer)


# --- error word, status word 3, remote control --------------------------------------------------


class ErrorBits(enum.IntFlag):
    """ERR byte of an error reply (§1.5)."""

    OTHER = 0x01
    NO_DATA = 0x02
    PASSWORD = 0x04
    BAUD_FIXED = 0x08
    YEAR_ZONES = 0x10
    DAY_PERIODS = 0x20
    TARIFFS = 0x40
    RESERVED = 0x80

    def describe(self) -> str:
        """Human text, e.g. 'no such data (data not requested/unknown DI)'."""
        texts = [text for bit, text in _ERR_TEXT.items() if self & bit]
        return "; ".join(texts) if texts else "no error bit set"


_ERR_TEXT = {
    ErrorBits.OTHER: "other error",
    ErrorBits.NO_DATA: "no such data (unknown or unsupported data identifier)",
    ErrorBits.PASSWORD: "password wrong / unauthorised",
    ErrorBits.BAUD_FIXED: "baud rate cannot be changed",
    ErrorBits.YEAR_ZONES: "too many year time zones",
    ErrorBits.DAY_PERIODS: "too many daily time periods",
    ErrorBits.TARIFFS: "too many tariffs",
    ErrorBits.RESERVED: "reserved bit 7",
}

_POWER_SOURCES = ("mains", "auxiliary", "battery", "reserved")
_PREPAID = ("none", "energy", "money", "reserved")


@dataclass(frozen=True, slots=True)
class StatusWord3:
    """Status word 3 (04 00 05 03), the operation class, decoded bit by bit (§1.9)."""

    period_table_2: bool = False  # bit 0: time-period table set 2 in use
    power_source: str = "mains"  # bits 1-2: mains / auxiliary / battery
    programming_allowed: bool = False  # bit 3
    relay_open: bool = False  # bit 4: the relay is open (supply cut, 断)
    zone_table_2: bool = False  # bit 5: time-zone table set 2 in use
    relay_trip_commanded: bool = False  # bit 6: last relay command was trip
    pre_trip_alarm: bool = False  # bit 7
    prepaid: str = "none"  # bits 8-9: none / energy / money
    price_set_2: bool = False  # bit 10
    step_set_2: bool = False  # bit 11
    protected: bool = False  # bit 12: protect (保电) is on, the meter will not trip
    authenticated: bool = False  # bit 13: identity authentication valid
    local_account_open: bool = False  # bit 14
    remote_account_open: bool = False  # bit 15

    @classmethod
    def from_word(cls, word: int) -> StatusWord3:
        def bit(n: int) -> bool:
            return bool(word >> n & 1)

        return cls(
            bit(0), _POWER_SOURCES[word >> 1 & 3], bit(3), bit(4), bit(5), bit(6), bit(7),
            _PREPAID[word >> 8 & 3], bit(10), bit(11), bit(12), bit(13), bit(14), bit(15),
        )

    @property
    def word(self) -> int:
        """The 16-bit word as the meter sends it."""
        try:
            source = _POWER_SOURCES.index(self.power_source)
            prepaid = _PREPAID.index(self.prepaid)
        except ValueError as exc:
            raise EncodeError(f"status word 3 field not encodable: {exc}") from exc
        flags = (
            (self.period_table_2, 0), (self.programming_allowed, 3), (self.relay_open, 4),
            (self.zone_table_2, 5), (self.relay_trip_commanded, 6), (self.pre_trip_alarm, 7),
            (self.price_set_2, 10), (self.step_set_2, 11), (self.protected, 12),
            (self.authenticated, 13), (self.local_account_open, 14),
            (self.remote_account_open, 15),
        )
        word = source << 1 | prepaid << 8
        for on, n in flags:
            word |= int(on) << n
        return word

    def __str__(self) -> str:
        relay = "open (supply off)" if self.relay_open else "closed (supply on)"
        cmd = "trip" if self.relay_trip_commanded else "close"
        text = f"relay {relay}, last command {cmd}, protect {'on' if self.protected else 'off'}"
        if self.pre_trip_alarm:
            text += ", pre-trip alarm"
        return f"{text}, prepaid {self.prepaid}, power {self.power_source}"


class RemoteAction(enum.IntEnum):
    """N1 of the remote-control command 0x1C (§1.11)."""

    TRIP = 0x1A
    CLOSE_ALLOWED = 0x1B  # the customer must press the button to close
    CLOSE = 0x1C  # direct close
    ALARM = 0x2A
    ALARM_RELEASE = 0x2B
    PROTECT = 0x3A
    PROTECT_RELEASE = 0x3B


@dataclass(frozen=True, slots=True)
class RemoteControl:
    """A decoded 0x1C command (what a simulated meter acts on)."""

    password: str  # 8 hex digits as printed: level PA then P2 P1 P0, e.g. "02000000"
    operator: str  # 8 digits, C3..C0
    action: RemoteAction | int  # int when N1 is not a known action
    expiry: datetime | None


# --- value codecs -------------------------------------------------------------------------------


class ValueCodec(Protocol):
    """How one data item's value bytes (offset removed, low byte first) map to a value."""

    length: int | None  # fixed byte length, None = any multiple of ``step``
    step: int

    def decode(self, b: bytes) -> Any: ...

    def encode(self, value: Any) -> bytes: ...


def _check_len(b: bytes, n: int) -> None:
    if len(b) != n:
        raise DataUnitError(f"value needs {n} bytes, got {len(b)}")


class _Bcd:
    """Packed BCD number with ``decimals`` after the point; signed = top bit of the top byte."""

    __slots__ = ("length", "step", "decimals", "signed", "_limit")

    def __init__(self, nbytes: int, decimals: int, signed: bool = False) -> None:
        self.length = self.step = nbytes
        self.decimals = decimals
        self.signed = signed
        # With a sign bit the top digit can only be 0..7.
        self._limit = 8 * 10 ** (2 * nbytes - 1) if signed else 100**nbytes

    def decode(self, b: bytes) -> Decimal:
        _check_len(b, self.length)
        negative = False
        if self.signed and b[-1] & 0x80:
            negative = True
            b = b[:-1] + bytes((b[-1] & 0x7F,))
        value = Decimal(bcd_to_int(b)).scaleb(-self.decimals)
        return -value if negative else value

    def encode(self, value: Any) -> bytes:
        try:
            d = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
            n = int(d.scaleb(self.decimals).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))
        except (InvalidOperation, TypeError, ValueError) as exc:
            raise EncodeError(f"{value!r} is not a number") from exc
        negative = n < 0
        if negative and not self.signed:
            raise EncodeError(f"{value} is negative but the item is unsigned")
        n = abs(n)
        if n >= self._limit:
            raise EncodeError(f"{value} does not fit {self.length} BCD bytes")
        b = int_to_bcd(n, self.length)
        if negative:
            b = b[:-1] + bytes((b[-1] | 0x80,))
        return b


class _Count:
    """Unsigned BCD integer (event counts)."""

    __slots__ = ("length", "step")

    def __init__(self, nbytes: int) -> None:
        self.length = self.step = nbytes

    def decode(self, b: bytes) -> int:
        _check_len(b, self.length)
        return bcd_to_int(b)

    def encode(self, value: Any) -> bytes:
        return int_to_bcd(int(value), self.length)


_KINDS = {"datetime", "date", "time"}


class _Clock:
    """BCD clock fields, written big-endian like "YYMMDDWWhhmmss"; sent low byte first.

    All-zero dates decode to None: meters send them for a freeze or event end not yet made
    (a bare time of all zeros is midnight).
    WW (weekday, 0 = Sunday) is accepted as sent and recomputed on encode.
    """

    __slots__ = ("length", "step", "fields", "kind")

    def __init__(self, layout: str, kind: str) -> None:
        self.fields = tuple(layout[i : i + 2] for i in range(0, len(layout), 2))
        self.length = self.step = len(self.fields)
        assert kind in _KINDS
        self.kind = kind

    def decode(self, b: bytes) -> datetime | date | time | None:
        _check_len(b, self.length)
        if not any(b) and self.kind != "time":
            return None
        f = dict(zip(self.fields, (from_bcd_byte(x) for x in reversed(b)), strict=True))
        try:
            if self.kind == "time":
                return time(f.get("hh", 0), f.get("mm", 0), f.get("ss", 0))
            year, month, day = 2000 + f["YY"], f["MM"], f["DD"]
            if self.kind == "date":
                return date(year, month, day)
            return datetime(year, month, day, f.get("hh", 0), f.get("mm", 0), f.get("ss", 0))
        except ValueError as exc:
            raise DataUnitError(f"clock bytes {b[::-1].hex()} are not a valid {self.kind}: {exc}") from exc

    def encode(self, value: Any) -> bytes:
        if value is None:
            return bytes(self.length)
        try:
            parts = {
                "YY": value.year - 2000 if self.kind != "time" else 0,
                "MM": value.month if self.kind != "time" else 0,
                "DD": value.day if self.kind != "time" else 0,
                "WW": value.isoweekday() % 7 if self.kind != "time" else 0,
                "hh": value.hour if self.kind != "date" else 0,
                "mm": value.minute if self.kind != "date" else 0,
                "ss": value.second if self.kind != "date" else 0,
            }
        except AttributeError as exc:
            raise EncodeError(f"{value!r} is not a {self.kind}") from exc
        digits = [parts[k] for k in self.fields]
        if not all(0 <= x <= 99 for x in digits):
            raise EncodeError(f"{value} is out of the range of a two-digit-year clock")
        return bytes(bcd_byte(x) for x in reversed(digits))


class _Address:
    __slots__ = ("length", "step")

    def __init__(self) -> None:
        self.length = self.step = 6

    def decode(self, b: bytes) -> str:
        _check_len(b, 6)
        return address_from_wire(b)

    def encode(self, value: Any) -> bytes:
        return address_to_wire(str(value))


class _Ascii:
    """ASCII text; like every multi-byte item it is sent last character first."""

    __slots__ = ("length", "step")

    def __init__(self, nbytes: int) -> None:
        self.length = self.step = nbytes

    def decode(self, b: bytes) -> str:
        _check_len(b, self.length)
        try:
            return b[::-1].decode("ascii").rstrip("\x00 ")
        except UnicodeDecodeError as exc:
            raise DataUnitError(f"text is not ASCII: {b.hex()}") from exc

    def encode(self, value: Any) -> bytes:
        try:
            raw = str(value).encode("ascii")
        except UnicodeEncodeError as exc:
            raise EncodeError(f"{value!r} is not ASCII") from exc
        if len(raw) > self.length:
            raise EncodeError(f"text longer than {self.length} characters")
        return raw.ljust(self.length, b"\x00")[::-1]


class _Word:
    """A 16-bit bit field (status words), low byte first."""

    __slots__ = ("length", "step")

    def __init__(self) -> None:
        self.length = self.step = 2

    def decode(self, b: bytes) -> int:
        _check_len(b, 2)
        return int.from_bytes(b, "little")

    def encode(self, value: Any) -> bytes:
        try:
            return int(value).to_bytes(2, "little")
        except (OverflowError, ValueError, TypeError) as exc:
            raise EncodeError(f"{value!r} is not a 16-bit word") from exc


class _Status3(_Word):
    __slots__ = ()

    def decode(self, b: bytes) -> StatusWord3:  # type: ignore[override]
        return StatusWord3.from_word(super().decode(b))

    def encode(self, value: Any) -> bytes:
        return super().encode(value.word if isinstance(value, StatusWord3) else value)


_BAUDS = {0x02: 600, 0x04: 1200, 0x08: 2400, 0x10: 4800, 0x20: 9600, 0x40: 19200}
_BAUD_BITS = {v: k for k, v in _BAUDS.items()}


class _Baud:
    """Baud feature word Z (one bit set), §1.12 -> bits per second."""

    __slots__ = ("length", "step")

    def __init__(self) -> None:
        self.length = self.step = 1

    def decode(self, b: bytes) -> int:
        _check_len(b, 1)
        try:
            return _BAUDS[b[0]]
        except KeyError:
            raise DataUnitError(f"baud feature word {b[0]:02X} has no single known bit") from None

    def encode(self, value: Any) -> bytes:
        try:
            return bytes((_BAUD_BITS[int(value)],))
        except (KeyError, ValueError, TypeError):
            raise EncodeError(f"{value!r} bps has no baud feature bit") from None


class _Block:
    """``count`` (or, if None, one or more) values of one element codec, as a tuple."""

    __slots__ = ("length", "step", "elem", "count")

    def __init__(self, elem: ValueCodec, count: int | None = None) -> None:
        self.elem = elem
        self.count = count
        self.step = elem.length or 1
        self.length = self.step * count if count else None

    def decode(self, b: bytes) -> tuple[Any, ...]:
        k = self.step
        if self.count is not None:
            _check_len(b, self.length or 0)
        elif not b or len(b) % k:
            raise DataUnitError(f"block of {len(b)} bytes is not a whole number of {k}-byte values")
        dec = self.elem.decode
        return tuple(dec(b[i : i + k]) for i in range(0, len(b), k))

    def encode(self, value: Any) -> bytes:
        values = tuple(value)
        if (self.count is not None and len(values) != self.count) or not values:
            raise EncodeError(f"block needs {self.count or 'at least 1'} values, got {len(values)}")
        return b"".join(self.elem.encode(v) for v in values)


class _Record:
    """A fixed sequence of different codecs, as a tuple (e.g. start time + end time)."""

    __slots__ = ("length", "step", "parts")

    def __init__(self, *parts: ValueCodec) -> None:
        self.parts = parts
        self.length = self.step = sum(p.length or 0 for p in parts)

    def decode(self, b: bytes) -> tuple[Any, ...]:
        _check_len(b, self.length)
        out, i = [], 0
        for p in self.parts:
            k = p.length or 0
            out.append(p.decode(b[i : i + k]))
            i += k
        return tuple(out)

    def encode(self, value: Any) -> bytes:
        values = tuple(value)
        if len(values) != len(self.parts):
            raise EncodeError(f"record needs {len(self.parts)} values, got {len(values)}")
        return b"".join(p.encode(v) for p, v in zip(self.parts, values, strict=True))


class _TimedRecord:
    """Event record that starts with YYMMDDhhmmss; the rest is kept as raw bytes."""

    __slots__ = ("length", "step", "_time")

    def __init__(self) -> None:
        self.length = None
        self.step = 1
        self._time = _Clock("YYMMDDhhmmss", "datetime")

    def decode(self, b: bytes) -> tuple[datetime | None, bytes]:
        if len(b) < 6:
            raise DataUnitError(f"event record needs at least 6 bytes, got {len(b)}")
        return self._time.decode(b[:6]), bytes(b[6:])

    def encode(self, value: Any) -> bytes:
        when, rest = value
        return self._time.encode(when) + bytes(rest)


# --- data identifier registry -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataItem:
    """One data identifier: what it is, its unit, its length and its value codec."""

    di: int
    name: str
    unit: str
    codec: ValueCodec = field(repr=False, compare=False)
    protocol: int = 2007  # 2007 (4-byte DI) or 1997 (2-byte DI)
    labels: tuple[str, ...] = ()  # names of the elements of a block/record

    @property
    def length(self) -> int | None:
        """Value bytes; None for a block whose length depends on the meter (tariff count)."""
        return self.codec.length

    def decode(self, value_bytes: bytes) -> Any:
        return self.codec.decode(value_bytes)

    def encode(self, value: Any) -> bytes:
        return self.codec.encode(value)


_ENERGY = _Bcd(4, 2)  # XXXXXX.XX kWh
_ENERGY_SIGNED = _Bcd(4, 2, signed=True)  # combined energy may be negative (standard)
_VOLT = _Bcd(2, 1)  # XXX.X V
_AMP = _Bcd(3, 3, signed=True)  # XXX.XXX A
_KW = _Bcd(3, 4, signed=True)  # XX.XXXX kW
_PF = _Bcd(2, 3, signed=True)  # X.XXX
_FREEZE_TIME = _Clock("YYMMDDhhmm", "datetime")
_EVENT_TIME = _Clock("YYMMDDhhmmss", "datetime")

_PHASES = ("A", "B", "C")
_TARIFF_LABELS = ("total",) + tuple(f"tariff {n}" for n in range(1, 64))

ITEMS_2007: dict[int, DataItem] = {}
ITEMS_1997: dict[int, DataItem] = {}


def _add(di: int, name: str, unit: str, codec: ValueCodec, labels: tuple[str, ...] = (),
         protocol: int = 2007) -> None:
    table = ITEMS_2007 if protocol == 2007 else ITEMS_1997
    table[di] = DataItem(di, name, unit, codec, protocol, labels)


def _ago(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n > 1 else ''} back"


def _build_registry() -> None:
    # Energy (§1.7): DI2 = 00 combined, 01 forward, 02 reverse; DI1 = tariff (FF block);
    # DI0 = settlement day back (0 = current).
    for di2, what, codec in ((0, "combined active energy", _ENERGY_SIGNED),
                             (1, "forward active energy", _ENERGY),
                             (2, "reverse active energy", _ENERGY)):
        for di0 in range(0, 13):
            when = "" if di0 == 0 else f", {_ago(di0, 'settlement')}"
            _add(di2 << 16 | di0, f"{what}, total{when}", "kWh", codec)
            _add(di2 << 16 | 0xFF00 | di0, f"{what} block (total, tariffs){when}", "kWh",
                 _Block(codec), _TARIFF_LABELS)
            for tariff in range(1, 64):
                _add(di2 << 16 | tariff << 8 | di0, f"{what}, tariff {tariff}{when}", "kWh", codec)
    # Instantaneous quantities (§1.7).
    for di2, what, unit, codec, with_total in ((1, "voltage", "V", _VOLT, False),
                                               (2, "current", "A", _AMP, False),
                                               (3, "active power", "kW", _KW, True),
                                               (6, "power factor", "", _PF, True)):
        base = 0x02000000 | di2 << 16
        labels = (("total",) if with_total else ()) + tuple(f"phase {p}" for p in _PHASES)
        if with_total:
            _add(base, f"{what}, total", unit, codec)
        for n, p in enumerate(_PHASES, start=1):
            _add(base | n << 8, f"{what}, phase {p}", unit, codec)
        _add(base | 0xFF00, f"{what} block ({', '.join(labels)})", unit, _Block(codec, len(labels)), labels)
    _add(0x02800001, "neutral current", "A", _Bcd(3, 3))
    _add(0x02800002, "grid frequency", "Hz", _Bcd(2, 2))
    # Parameters.
    _add(0x04000101, "date and weekday", "", _Clock("YYMMDDWW", "date"))
    _add(0x04000102, "time", "", _Clock("hhmmss", "time"))
    _add(0x0400010C, "date, weekday and time", "", _Clock("YYMMDDWWhhmmss", "datetime"))
    _add(0x04000401, "communication address", "", _Address())
    _add(0x04000402, "meter number", "", _Address())
    _add(0x04000403, "asset management code", "", _Ascii(32))
    for n in range(1, 8):
        _add(0x04000500 | n, f"status word {n}", "", _Status3() if n == 3 else _Word())
    _add(0x040005FF, "status words 1..7", "", _Block(_Word(), 7),
         tuple(f"status word {n}" for n in range(1, 8)))
    for n, port in enumerate(("IR modulated", "IR contact", "RS-485 port 1", "RS-485 port 2",
                              "RS-485 port 3"), start=1):
        _add(0x04000700 | n, f"baud rate, {port}", "bps", _Baud())
    # Daily freeze 05 06 xx nn, nn = 1..62 freezes back (§1.8).
    for nn in range(1, 0x3F):
        ago = _ago(nn, "day")
        _add(0x05060000 | nn, f"daily freeze time, {ago}", "", _FREEZE_TIME)
        _add(0x05060100 | nn, f"daily freeze forward active energy block, {ago}", "kWh",
             _Block(_ENERGY), _TARIFF_LABELS)
        _add(0x05060200 | nn, f"daily freeze reverse active energy block, {ago}", "kWh",
             _Block(_ENERGY), _TARIFF_LABELS)
    # Hourly freeze 05 04 xx nn; the range of nn is not confirmed, 1..254 is accepted.
    for nn in range(1, 0xFF):
        ago = _ago(nn, "hour")
        _add(0x05040000 | nn, f"hourly freeze time, {ago}", "", _FREEZE_TIME)
        _add(0x05040100 | nn, f"hourly freeze forward active energy, {ago}", "kWh", _ENERGY)
        _add(0x05040200 | nn, f"hourly freeze reverse active energy, {ago}", "kWh", _ENERGY)
        _add(0x0504FF00 | nn, f"hourly freeze block (time, forward active), {ago}", "",
             _Record(_FREEZE_TIME, _ENERGY), ("time", "forward active energy kWh"))
    # Events.
    _add(0x03110000, "power-down count", "", _Count(3))
    for nn in range(1, 11):
        _add(0x03110000 | nn, f"power-down record, {_ago(nn, 'event')}", "",
             _Record(_EVENT_TIME, _EVENT_TIME), ("start", "end"))
    for di1, what in ((0x00, "programming"), (0x01, "meter clear"), (0x02, "demand clear"),
                      (0x03, "event clear"), (0x04, "time set"), (0x0D, "cover open")):
        _add(0x03300000 | di1 << 8, f"{what} count", "", _Count(3))
        _add(0x03300001 | di1 << 8, f"last {what} record", "", _TimedRecord(), ("time", "rest"))
    _add(0x1D000101, "last trip record", "", _TimedRecord(), ("time", "rest"))
    _add(0x1E000101, "last close record", "", _TimedRecord(), ("time", "rest"))

    # DL/T 645-1997 (§1.13), 2-byte DI.
    for di, what in ((0x9010, "forward active energy"), (0x9020, "reverse active energy")):
        _add(di, f"{what}, total", "kWh", _ENERGY, protocol=1997)
        for tariff in range(1, 5):
            _add(di + tariff, f"{what}, tariff {tariff}", "kWh", _ENERGY, protocol=1997)
        _add(di | 0xF, f"{what} block (total, tariffs)", "kWh", _Block(_ENERGY), _TARIFF_LABELS,
             protocol=1997)
    for base, what, unit, codec in ((0xB610, "voltage", "V", _Bcd(2, 0)),
                                    (0xB620, "current", "A", _Bcd(2, 2))):
        for n, p in enumerate(_PHASES, start=1):
            _add(base + n, f"{what}, phase {p}", unit, codec, protocol=1997)
        labels = tuple(f"phase {p}" for p in _PHASES)
        _add(base | 0xF, f"{what} block (phase A, B, C)", unit, _Block(codec, 3), labels,
             protocol=1997)
    _add(0xB630, "active power, total", "kW", _Bcd(3, 4), protocol=1997)
    _add(0xC010, "date and weekday", "", _Clock("YYMMDDWW", "date"), protocol=1997)
    _add(0xC011, "time", "", _Clock("hhmmss", "time"), protocol=1997)
    _add(0xC032, "communication address", "", _Address(), protocol=1997)


_build_registry()


def format_di(di: int, protocol: int = 2007) -> str:
    """0x00010000 -> "00010000" (1997: 0x9010 -> "9010")."""
    return f"{di:08X}" if protocol == 2007 else f"{di:04X}"


def parse_di(text: str) -> int:
    """"00010000", "00 01 00 00" or "0x00010000" -> 0x00010000 (raises DataUnitError)."""
    cleaned = text.strip().replace(" ", "").removeprefix("0x").removeprefix("0X")
    if len(cleaned) not in (4, 8):
        raise DataUnitError(f"data identifier {text!r} needs 4 or 8 hex digits")
    try:
        return int(cleaned, 16)
    except ValueError:
        raise DataUnitError(f"data identifier {text!r} is not hexadecimal") from None


def lookup(di: int, protocol: int = 2007) -> DataItem:
    """The registry entry of ``di``; unknown DI -> ``DataUnitError``."""
    item = (ITEMS_2007 if protocol == 2007 else ITEMS_1997).get(di)
    if item is None:
        raise DataUnitError(f"unknown data identifier {format_di(di, protocol)} (DL/T 645-{protocol})")
    return item


def decode_value(di: int, value_bytes: bytes, protocol: int = 2007) -> Any:
    """Typed value of ``di`` from its value bytes (offset removed, as in ``frame.data``)."""
    return lookup(di, protocol).codec.decode(value_bytes)


def encode_value(di: int, value: Any, protocol: int = 2007) -> bytes:
    """Value bytes (before the +0x33) for ``di``; raises EncodeError/DataUnitError."""
    return lookup(di, protocol).codec.encode(value)


def json_value(value: Any) -> Any:
    """A value as JSON-friendly data."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, StatusWord3):
        return {"word": f"{value.word:04X}", **{k: getattr(value, k) for k in value.__slots__}}
    if isinstance(value, bytes):
        return value.hex().upper()
    if isinstance(value, tuple):
        return [json_value(v) for v in value]
    return value


def format_value(item: DataItem, value: Any) -> str:
    """One-line human text of a value with its unit, e.g. "2.26 kWh"."""
    def one(v: Any, unit: str) -> str:
        if v is None:
            return "not set"
        if isinstance(v, bytes):
            return v.hex().upper() or "-"
        if isinstance(v, int) and not isinstance(v, bool) and item.codec.__class__ is _Word:
            return f"{v:04X}"
        return f"{v} {unit}".rstrip() if unit else str(v)

    if isinstance(value, tuple):
        labels = item.labels or tuple(str(i) for i in range(len(value)))
        unit = item.unit
        return ", ".join(f"{lab} {one(v, unit if not isinstance(v, datetime) else '')}"
                         for lab, v in zip(labels, value, strict=False))
    return one(value, item.unit)


# --- builders -------------------------------------------------------------------------------------
# Master->meter frames carry 4 FE wake-up bytes by default (what masters usually send);
# meter->master frames none (meters may or may not send them).


def _di_bytes(di: int, nbytes: int = 4) -> bytes:
    try:
        return di.to_bytes(nbytes, "little")
    except (OverflowError, AttributeError) as exc:
        raise EncodeError(f"data identifier {di!r} does not fit {nbytes} bytes") from exc


def _printed_to_wire(text: str, nbytes: int, what: str) -> bytes:
    """"02000000" (as printed, high digits first) -> wire bytes low first."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != nbytes or len(text) != 2 * nbytes:
        raise EncodeError(f"{what} {text!r} must be {2 * nbytes} hex digits")
    return raw[::-1]


def read_request(address: str, di: int, *, preamble: int = 4) -> Dlt645Frame:
    """Read data (0x11) of ``di`` from the meter at ``address``."""
    return Dlt645Frame(address, _F_READ, _di_bytes(di), preamble)


def read_reply(address: str, di: int, value_bytes: bytes, *, follow_up: bool = False,
               preamble: int = 0) -> Dlt645Frame:
    """Normal read reply (0x91, or 0xB1 when more data follows)."""
    control = 0x91 | (_FOLLOW_UP if follow_up else 0)
    return Dlt645Frame(address, control, _di_bytes(di) + bytes(value_bytes), preamble)


def read_follow_up_request(address: str, di: int, seq: int, *, preamble: int = 4) -> Dlt645Frame:
    """Read follow-up data (0x12): DI + frame sequence number."""
    if not 0 <= seq <= 0xFF:
        raise EncodeError(f"follow-up sequence {seq} is not a byte")
    return Dlt645Frame(address, _F_READ_NEXT, _di_bytes(di) + bytes((seq,)), preamble)


def read_follow_up_reply(address: str, di: int, value_bytes: bytes, seq: int, *,
                         follow_up: bool = False, preamble: int = 0) -> Dlt645Frame:
    """Reply to read follow-up (0x92, 0xB2 when still more follows): DI + value + sequence."""
    if not 0 <= seq <= 0xFF:
        raise EncodeError(f"follow-up sequence {seq} is not a byte")
    control = 0x92 | (_FOLLOW_UP if follow_up else 0)
    return Dlt645Frame(address, control, _di_bytes(di) + bytes(value_bytes) + bytes((seq,)), preamble)


def error_reply(address: str, request_code: int, err_bits: int, *, preamble: int = 0) -> Dlt645Frame:
    """Abnormal reply to ``request_code`` (e.g. 0x11 -> C = 0xD1) carrying the ERR byte."""
    if not 0 <= err_bits <= 0xFF:
        raise EncodeError(f"ERR word {err_bits} is not a byte")
    return Dlt645Frame(address, (request_code & _FUNC_MASK) | 0xC0, bytes((int(err_bits),)), preamble)


def control_reply(address: str, request_code: int, *, preamble: int = 0) -> Dlt645Frame:
    """Normal reply with no data to a write/control command (e.g. 0x1C -> ``9C 00``)."""
    return Dlt645Frame(address, (request_code & _FUNC_MASK) | _DIR_UP, b"", preamble)


def read_address_request(*, preamble: int = 4) -> Dlt645Frame:
    """Read address (0x13) of the single meter on a point-to-point link."""
    return Dlt645Frame(WILDCARD_ADDRESS, _F_READ_ADDR, b"", preamble)


def read_address_reply(address: str, *, preamble: int = 0) -> Dlt645Frame:
    """Reply 0x93 carrying the meter's address."""
    return Dlt645Frame(address, 0x93, address_to_wire(address), preamble)


def address_from_reply(frame: Dlt645Frame) -> str:
    """The address carried by a read-address reply (0x93); raises DataUnitError."""
    if frame.control != 0x93 or len(frame.data) != 6:
        raise DataUnitError(f"control {frame.control:02X} with {len(frame.data)} bytes is not a "
                            "read-address reply")
    return address_from_wire(frame.data)


_TIME6 = _Clock("YYMMDDhhmmss", "datetime")


def broadcast_time(when: datetime, *, preamble: int = 4) -> Dlt645Frame:
    """Broadcast time sync (0x08) to 999999999999; meters do not answer."""
    return Dlt645Frame(BROADCAST_ADDRESS, _F_TIME, _TIME6.encode(when), preamble)


def parse_broadcast_time(frame: Dlt645Frame) -> datetime:
    """The time carried by a 0x08 frame (raises DataUnitError)."""
    if frame.function != _F_TIME or frame.is_reply:
        raise DataUnitError(f"control {frame.control:02X} is not a broadcast time sync")
    when = _TIME6.decode(frame.data)
    if when is None:
        raise DataUnitError("broadcast time is all zeros")
    return when  # type: ignore[return-value]


def remote_control(address: str, password: str, operator: str, action: RemoteAction | int,
                   expiry: datetime, *, preamble: int = 4) -> Dlt645Frame:
    """Remote control 0x1C in plain form (§1.11): trip, close, alarm, protect.

    ``password`` is 8 hex digits as printed, level first ("02000000" = level 02, password
    000000); ``operator`` is 8 digits; ``expiry`` is when the command stops being valid.
    """
    if not 0 <= int(action) <= 0xFF:
        raise EncodeError(f"control type {action} is not a byte")
    data = (
        _password_wire(password)
        + _printed_to_wire(operator, 4, "operator code")
        + bytes((int(action), 0x00))
        + _TIME6.encode(expiry)
    )
    return Dlt645Frame(address, _F_CONTROL, data, preamble)


def _password_wire(password: str) -> bytes:
    raw = _printed_to_wire(password, 4, "password")  # P0 P1 P2 PA
    return raw[3:] + raw[:3]  # PA P0 P1 P2


def parse_remote_control(frame: Dlt645Frame) -> RemoteControl:
    """Decode a 0x1C request (raises DataUnitError on a short or odd payload)."""
    d = frame.data
    if frame.function != _F_CONTROL or frame.is_reply:
        raise DataUnitError(f"control {frame.control:02X} is not a remote-control request")
    if len(d) != 16:
        raise DataUnitError(f"remote control needs 16 data bytes, got {len(d)}")
    password = f"{d[0]:02X}" + d[1:4][::-1].hex().upper()
    operator = d[4:8][::-1].hex().upper()
    try:
        action: RemoteAction | int = RemoteAction(d[8])
    except ValueError:
        action = d[8]
    return RemoteControl(password, operator, action, _TIME6.decode(d[10:16]))  # type: ignore[arg-type]


def write_request(address: str, di: int, value_bytes: bytes, *, password: str = "02000000",
                  operator: str = "00000000", preamble: int = 4) -> Dlt645Frame:
    """Write data (0x14): DI + PA P0 P1 P2 + C0..C3 + value (§1.10)."""
    data = _di_bytes(di) + _password_wire(password) + _printed_to_wire(operator, 4, "operator code")
    return Dlt645Frame(address, _F_WRITE, data + bytes(value_bytes), preamble)


# The meter's clock as written with 0x14 (§1.7): date + weekday, time, or both in one write
# (04 00 01 0C: not every meter has it; the others take 01 then 02).
DI_CLOCK_DATE, DI_CLOCK_TIME, DI_CLOCK_DATETIME = 0x04000101, 0x04000102, 0x0400010C


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A decoded write-data request (0x14)."""

    di: int
    password: str  # PA + P2 P1 P0 as printed, level first: "02000000"
    operator: str  # C3 C2 C1 C0 as printed
    value: bytes  # the value bytes after the operator code, offset removed


def parse_write_request(frame: Dlt645Frame) -> WriteRequest:
    """Decode a 0x14 request (raises DataUnitError on a reply or a payload under 12 bytes)."""
    d = frame.data
    if frame.function != _F_WRITE or frame.is_reply:
        raise DataUnitError(f"control {frame.control:02X} is not a write-data request")
    if len(d) < 12:
        raise DataUnitError(f"write data needs DI, password and operator (12 bytes), got {len(d)}")
    password = f"{d[4]:02X}" + d[5:8][::-1].hex().upper()
    return WriteRequest(int.from_bytes(d[:4], "little"), password, d[8:12][::-1].hex().upper(),
                        d[12:])


def clock_write_request(address: str, when: datetime, *, di: int = DI_CLOCK_DATETIME,
                        password: str = "02000000", operator: str = "00000000",
                        preamble: int = 4) -> Dlt645Frame:
    """Write the meter's clock (0x14): ``di`` is 04 00 01 0C (date, weekday and time),
    04 00 01 01 (date and weekday only) or 04 00 01 02 (time only); the weekday is computed
    from ``when``, seconds are truncated. Raises EncodeError for another DI or a bad value."""
    if di not in (DI_CLOCK_DATE, DI_CLOCK_TIME, DI_CLOCK_DATETIME):
        raise EncodeError(f"{format_di(di)} is not a clock data identifier")
    if not isinstance(when, datetime):
        raise EncodeError(f"clock write needs a datetime, got {type(when).__name__}")
    return write_request(address, di, encode_value(di, when), password=password,
                         operator=operator, preamble=preamble)


def parse_write_reply(frame: Dlt645Frame) -> ErrorBits | None:
    """The outcome a meter gives a write (0x14): None when it accepted it (normal reply 0x94,
    no data), else the ERR bits of its error reply 0xD4 (``ErrorBits.PASSWORD``: wrong
    password or not authorised). Raises DataUnitError when the frame answers no write."""
    if not frame.is_reply or frame.function != _F_WRITE:
        raise DataUnitError(f"control {frame.control:02X} is not a reply to a write")
    if frame.is_error:
        bits = frame.error_bits
        return bits if bits is not None else ErrorBits(0)
    return None


def read_request_1997(address: str, di16: int, *, preamble: int = 4) -> Dlt645Frame:
    """DL/T 645-1997 read (0x01) of a 2-byte DI such as 0x9010."""
    return Dlt645Frame(address, _F97_READ, _di_bytes(di16, 2), preamble)


def read_reply_1997(address: str, di16: int, value_bytes: bytes, *, preamble: int = 0) -> Dlt645Frame:
    """DL/T 645-1997 normal read reply (0x81)."""
    return Dlt645Frame(address, 0x81, _di_bytes(di16, 2) + bytes(value_bytes), preamble)


# --- description ---------------------------------------------------------------------------------


def _function_name(frame: Dlt645Frame) -> str:
    func = frame.function
    return FUNCTIONS_2007.get(func) or FUNCTIONS_1997.get(func) or f"unknown function {func:02X}"


def _address_note(address: str) -> str:
    if address == BROADCAST_ADDRESS:
        return f"{address} (broadcast)"
    if address == WILDCARD_ADDRESS:
        return f"{address} (wildcard)"
    return address


def _data_fields(frame: Dlt645Frame) -> list[tuple[str, str, Any]]:
    """(field, human text, JSON value) of the DATA field; never raises on a decoded frame."""
    out: list[tuple[str, str, Any]] = []
    d = frame.data
    func = frame.function
    protocol = 1997 if frame.is_1997 else 2007
    if frame.is_reply and frame.is_error:
        bits = ErrorBits(d[0]) if d else ErrorBits(0)
        out.append(("error", f"{d[:1].hex().upper() or '-'}: {bits.describe()}",
                    [b.name for b in ErrorBits if bits & b]))
        return out
    di = frame.di
    if di is not None:
        try:
            item: DataItem | None = lookup(di, protocol)
        except DataUnitError:
            item = None
        out.append(("data identifier", format_di(di, protocol) + (f" {item.name}" if item else " (unknown)"),
                    format_di(di, protocol)))
        value = frame.value_bytes
        if func == _F_WRITE and len(d) >= 12:
            password = f"{d[4]:02X}" + d[5:8][::-1].hex().upper()
            out.append(("password", f"level {password[:2]}, {password[2:]}", password))
            out.append(("operator", d[8:12][::-1].hex().upper(), d[8:12][::-1].hex().upper()))
            value = d[12:]
        elif func == _F_READ_NEXT and len(d) >= 5:
            out.append(("frame sequence", str(d[-1]), d[-1]))
        if value is not None and (frame.has_follow_up or func == _F_READ_NEXT):
            # One part of a multi-frame value: it only decodes once the parts are joined.
            out.append(("value part", value.hex().upper(), value.hex().upper()))
        elif value is not None or func == _F_WRITE:
            value = value or b""
            if item is not None and (value or frame.is_reply or func == _F_WRITE):
                try:
                    v = item.decode(value)
                    out.append(("value", format_value(item, v), json_value(v)))
                except CodecError as exc:
                    out.append(("value", f"{value.hex().upper()} (cannot decode: {exc})", value.hex().upper()))
            elif value:
                out.append(("value", value.hex().upper(), value.hex().upper()))
        elif func == _F_READ and len(d) > 4:
            out.append(("request parameters", d[4:].hex().upper(), d[4:].hex().upper()))
        return out
    try:
        if func == _F_READ_ADDR and frame.is_reply and len(d) == 6:
            addr = address_from_wire(d)
            out.append(("meter address", addr, addr))
        elif func == _F_TIME and not frame.is_reply:
            when = parse_broadcast_time(frame)
            out.append(("time", when.isoformat(" "), when.isoformat()))
        elif func == _F_CONTROL and not frame.is_reply:
            rc = parse_remote_control(frame)
            name = rc.action.name.lower().replace("_", " ") if isinstance(rc.action, RemoteAction) \
                else f"unknown type {rc.action:02X}"
            out.append(("password", f"level {rc.password[:2]}, {rc.password[2:]}", rc.password))
            out.append(("operator", rc.operator, rc.operator))
            out.append(("action", name, name))
            expiry = rc.expiry.isoformat(" ") if rc.expiry else "not set"
            out.append(("valid until", expiry, rc.expiry.isoformat() if rc.expiry else None))
        elif d:
            out.append(("data", d.hex(" ").upper(), d.hex().upper()))
    except CodecError as exc:
        out.append(("data", f"{d.hex(' ').upper()} (cannot decode: {exc})", d.hex().upper()))
    return out


def _header_fields(frame: Dlt645Frame) -> list[tuple[str, str, Any]]:
    c = frame.control
    direction = "meter -> master" if frame.is_reply else "master -> meter"
    flags = [direction]
    if frame.is_error:
        flags.append("error reply")
    if frame.has_follow_up:
        flags.append("follow-up frame exists")
    return [
        ("preamble", f"{frame.preamble} x FE", frame.preamble),
        ("address", _address_note(frame.address), frame.address),
        ("control", f"{c:02X}: {_function_name(frame)}, {', '.join(flags)}", f"{c:02X}"),
        ("length", str(len(frame.data)), len(frame.data)),
    ]


def describe(frame: Dlt645Frame) -> list[tuple[str, str]]:
    """(field name, human meaning) pairs for printing a frame; never raises."""
    return [(name, text) for name, text, _ in _header_fields(frame) + _data_fields(frame)]


def to_dict(frame: Dlt645Frame) -> dict[str, Any]:
    """JSON-ready description of a frame (strings for Decimal/datetime values)."""
    out: dict[str, Any] = {
        "protocol": "DL/T 645-1997" if frame.is_1997 else "DL/T 645-2007",
        "address": frame.address,
        "control": f"{frame.control:02X}",
        "function": f"{frame.function:02X}",
        "function_name": _function_name(frame),
        "reply": frame.is_reply,
        "error": frame.is_error,
        "follow_up": frame.has_follow_up,
        "preamble": frame.preamble,
        "data": frame.data.hex().upper(),
    }
    keys = {"data identifier": "di", "value": "value", "error": "error_bits", "meter address": "meter_address",
            "time": "time", "password": "password", "operator": "operator", "action": "action",
            "valid until": "valid_until", "frame sequence": "sequence",
            "request parameters": "request_parameters",
            "value part": "value_part"}
    protocol = 1997 if frame.is_1997 else 2007
    for name, _text, value in _data_fields(frame):
        if name in keys and value is not None:
            out[keys[name]] = value
    if frame.di is not None:
        try:
            item = lookup(frame.di, protocol)
            out["item"], out["unit"] = item.name, item.unit
        except DataUnitError:
            pass
    return out

