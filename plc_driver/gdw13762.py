"""Q/GDW 1376.2-2013 codec: frames between the concentrator and its local carrier/RF module.

Sans-IO: ``decode(bytes) -> Frame13762``, ``encode(frame) -> bytes``, ``parse_prefix`` for
``Gdw13762StreamDecoder()``, typed data units for the AFN/Fn pairs this project uses, builders
for the frames the concentrator and the simulated module send, and ``describe``/``to_dict`` for
the ``concentrator frame decode`` command. Wire layout (protocols.md §4)::

    68 | L(2, LE, total length) | C | R(6) | [A: src 6 | relays 6*n | dst 6] | AFN | DT1 DT2 | data | CS | 16

Only the ``concentrator.codec`` error tree escapes: ``decode`` raises ``IncompleteFrame``,
``FrameFormatError``, ``ChecksumError`` or ``DataUnitError``; ``encode`` and the builders raise
``EncodeError``; ``decode_data_unit`` raises ``DataUnitError`` for a known AFN/Fn whose body
does not fit its layout and returns ``RawUnit`` for an AFN/Fn it does not know.

Where public implementations disagree (protocols.md [CONFLICT]) this module follows: module
flag at R1 D2; AFN00 F1 command status in D0; AFN10 F2 protocol in D3-D5 of the second info
byte; AFN10 F4 status bits per icprog. Bits the standard leaves reserved are kept in
``reserved`` fields so that ``encode(decode(b)) == b`` for every valid frame.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass
from datetime import date, datetime
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
    from_bcd_byte,
)

__all__ = [
    "DOWN",
    "UP",
    "COMM_MODES",
    "PROTOCOLS",
    "DENY_CODES",
    "MAX_RELAYS",
    "MIN_FRAME_LEN",
    "InfoDown",
    "InfoUp",
    "Frame13762",
    "decode",
    "encode",
    "parse_prefix",
    "Gdw13762StreamDecoder",
    "DataUnit",
    "RawUnit",
    "NoData",
    "Confirm",
    "Deny",
    "Forward",
    "VendorVersion",
    "MasterAddress",
    "ModuleRunInfo",
    "Broadcast",
    "SlaveIndexEntry",
    "ReportSlaveInfo",
    "ReportReadData",
    "RouteWorkStatus",
    "FoundNode",
    "ReportSlaves",
    "ReportEvent",
    "SlaveCount",
    "SlaveInfoQuery",
    "SlaveInfo",
    "SlaveInfoList",
    "RouteRunStatus",
    "AddSlaves",
    "DeleteSlaves",
    "FixedRelayPath",
    "RouteWorkMode",
    "SearchStart",
    "MonitorRequest",
    "MonitorReply",
    "RouteReadRequest",
    "RouteReadAnswer",
    "ClockRequest",
    "ClockAnswer",
    "DelayCorrectRequest",
    "DelayCorrectAnswer",
    "decode_unit",
    "decode_data_unit",
    "request",
    "reply",
    "monitor_request",
    "monitor_reply",
    "confirm",
    "deny",
    "search_start",
    "report_slave",
    "describe",
    "to_dict",
]

DOWN = 0  # DIR: concentrator -> module
UP = 1  # DIR: module -> concentrator

MIN_FRAME_LEN = 15  # 68 L L C R*6 AFN DT1 DT2 CS 16, no A field, no data

#: relays a frame's R field can name (its relay level is 4 bits)
MAX_RELAYS = 15

COMM_MODES: dict[int, str] = {
    1: "centralised-routing narrowband PLC",
    2: "distributed-routing narrowband PLC",
    3: "broadband PLC (HPLC)",
    7: "Eastsoft master-slave (vendor)",
    10: "micro-power wireless",
    20: "Ethernet",
}

PROTOCOLS: dict[int, str] = {
    0: "transparent",
    1: "DL/T 645-1997",
    2: "DL/T 645-2007",
    3: "DL/T 698.45",
}

DENY_CODES: dict[int, str] = {
    0: "communication timeout",
    1: "invalid data unit",
    2: "length error",
    3: "checksum error",
    4: "no such information class",
    5: "format error",
    6: "duplicate meter",
    7: "meter not found",
    8: "meter application layer did not answer",
    9: "master node busy",
    10: "master node does not support the command",
    11: "slave did not answer",
    12: "slave not in network",
    109: "concurrency: too many requests (2019)",
    110: "concurrency: duplicate request (2019)",
    111: "concurrency: meter busy (2019)",
}

AFN_NAMES: dict[int, str] = {
    0x00: "confirm/deny",
    0x01: "initialise",
    0x02: "forward data",
    0x03: "query data",
    0x04: "link test",
    0x05: "control command",
    0x06: "module report",
    0x10: "route query",
    0x11: "route setting",
    0x12: "route control",
    0x13: "monitor slave node",
    0x14: "route data request",
    0x15: "file transfer",
    0xF0: "vendor debug",
}


# --- frame --------------------------------------------------------------------------------

def _check(name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise EncodeError(f"{name}={value} does not fit {bits} bits")


@dataclass(frozen=True, slots=True)
class InfoDown:
    """Downlink information field R (concentrator -> module)."""

    routing: bool = False  # R1 D0: 1 = relays are given in the A field (we route)
    attached_node: bool = False  # R1 D1: attached (subordinate) node flag
    module: bool = False  # R1 D2: A field present, the target is a slave node
    conflict_detection: bool = False  # R1 D3
    relay_level: int = 0  # R1 D4-D7: number of relays in the A field
    channel: int = 0  # R2 D0-D3
    ecc: int = 0  # R2 D4-D7: error-correction coding id
    reply_bytes: int = 0  # R3: expected reply byte count
    rate: int = 0  # R4-R5 D0-D14, 0 = module default
    rate_kbps: bool = False  # R5 D7: unit of rate (0 bps, 1 kbps)
    seq: int = 0  # R6: message sequence number, echoed by the reply

    def to_bytes(self) -> bytes:
        _check("relay_level", self.relay_level, 4)
        _check("channel", self.channel, 4)
        _check("ecc", self.ecc, 4)
        _check("reply_bytes", self.reply_bytes, 8)
        _check("rate", self.rate, 15)
        _check("seq", self.seq, 8)
        r1 = (
            int(self.routing)
            | int(self.attached_node) << 1
            | int(self.module) << 2
            | int(self.conflict_detection) << 3
            | self.relay_level << 4
        )
        rate = self.rate | int(self.rate_kbps) << 15
        return bytes([r1, self.channel | self.ecc << 4, self.reply_bytes]) + rate.to_bytes(
            2, "little"
        ) + bytes([self.seq])

    @classmethod
    def from_bytes(cls, r: bytes) -> InfoDown:
        rate = int.from_bytes(r[3:5], "little")
        return cls(
            routing=bool(r[0] & 1),
            attached_node=bool(r[0] & 2),
            module=bool(r[0] & 4),
            conflict_detection=bool(r[0] & 8),
            relay_level=r[0] >> 4,
            channel=r[1] & 0x0F,
            ecc=r[1] >> 4,
            reply_bytes=r[2],
            rate=rate & 0x7FFF,
            rate_kbps=bool(rate >> 15),
            seq=r[5],
        )


# Bits of R1..R6 (as one little-endian 48-bit integer) that the uplink R field assigns.
_UP_ASSIGNED = 0xFF_01_FF_FF_0F_F5


@dataclass(frozen=True, slots=True)
class InfoUp:
    """Uplink information field R (module -> concentrator)."""

    routing: bool = False  # R1 D0
    module: bool = False  # R1 D2: A field present
    relay_level: int = 0  # R1 D4-D7
    channel: int = 0  # R2 D0-D3
    phase: int = 0  # R3 D0-D3: measured phase, 0 unknown, 1..3
    meter_channel: int = 0  # R3 D4-D7: meter channel characteristic
    cmd_quality: int = 0  # R4 D0-D3: signal quality of the last command hop (0..15)
    reply_quality: int = 0  # R4 D4-D7: signal quality of the last reply hop (0..15)
    event: bool = False  # R5 D0: the module has events to report
    seq: int = 0  # R6
    reserved: int = 0  # reserved bits as received (R1..R6 little-endian), kept for re-encoding

    def to_bytes(self) -> bytes:
        _check("relay_level", self.relay_level, 4)
        _check("channel", self.channel, 4)
        _check("phase", self.phase, 4)
        _check("meter_channel", self.meter_channel, 4)
        _check("cmd_quality", self.cmd_quality, 4)
        _check("reply_quality", self.reply_quality, 4)
        _check("seq", self.seq, 8)
        if self.reserved & _UP_ASSIGNED or not 0 <= self.reserved < 1 << 48:
            raise EncodeError(f"reserved bits {self.reserved:012X} overlap assigned R bits")
        r = bytes([
            int(self.routing) | int(self.module) << 2 | self.relay_level << 4,
            self.channel,
            self.phase | self.meter_channel << 4,
            self.cmd_quality | self.reply_quality << 4,
            int(self.event),
            self.seq,
        ])
        return (int.from_bytes(r, "little") | self.reserved).to_bytes(6, "little")

    @classmethod
    def from_bytes(cls, r: bytes) -> InfoUp:
        return cls(
            routing=bool(r[0] & 1),
            module=bool(r[0] & 4),
            relay_level=r[0] >> 4,
            channel=r[1] & 0x0F,
            phase=r[2] & 0x0F,
            meter_channel=r[2] >> 4,
            cmd_quality=r[3] & 0x0F,
            reply_quality=r[3] >> 4,
            event=bool(r[4] & 1),
            seq=r[5],
            reserved=int.from_bytes(r, "little") & ~_UP_ASSIGNED & (1 << 48) - 1,
        )


@dataclass(frozen=True, slots=True)
class Frame13762:
    """One Q/GDW 1376.2 frame. ``info`` is ``InfoDown`` when ``direction == DOWN``, else ``InfoUp``.

    The A field (``source``, ``relays``, ``destination``) is present exactly when the module
    flag in ``info`` is set; then ``len(relays) == info.relay_level``.
    """

    direction: int  # C D7: DOWN (0) or UP (1)
    prm: int  # C D6: 1 = initiating station, 0 = responding
    comm_mode: int  # C D5-D0: see COMM_MODES
    info: InfoDown | InfoUp
    afn: int
    fn: int
    data: bytes = b""
    source: str | None = None
    relays: tuple[str, ...] = ()
    destination: str | None = None

    @property
    def seq(self) -> int:
        return self.info.seq

    @property
    def has_address(self) -> bool:
        return self.info.module

    @property
    def target(self) -> str | None:
        """The slave node the frame is about: destination downlink, source uplink."""
        if not self.info.module:
            return None
        return self.destination if self.direction == DOWN else self.source


def _fn_to_dt(fn: int) -> bytes:
    if not 1 <= fn <= 2048:
        raise EncodeError(f"Fn {fn} out of range 1..2048")
    return bytes([1 << ((fn - 1) % 8), (fn - 1) // 8])


def _dt_to_fn(dt1: int, dt2: int) -> int:
    if dt1 == 0 or dt1 & (dt1 - 1):
        # A 1376.2 frame carries exactly one Fn: one bit of DT1.
        raise DataUnitError(f"DT {dt1:02X} {dt2:02X} does not name exactly one Fn")
    return dt2 * 8 + dt1.bit_length()


def encode(frame: Frame13762) -> bytes:
    """Frame -> wire bytes; ``EncodeError`` if a field cannot be represented."""
    if frame.direction not in (DOWN, UP) or frame.prm not in (0, 1):
        raise EncodeError("direction and prm must be 0 or 1")
    _check("comm_mode", frame.comm_mode, 6)
    _check("afn", frame.afn, 8)
    want = InfoDown if frame.direction == DOWN else InfoUp
    if not isinstance(frame.info, want):
        raise EncodeError(f"direction {frame.direction} needs {want.__name__}")
    body = bytearray([frame.direction << 7 | frame.prm << 6 | frame.comm_mode])
    body += frame.info.to_bytes()
    if frame.info.module:
        if frame.source is None or frame.destination is None:
            raise EncodeError("module flag set: source and destination addresses are required")
        if len(frame.relays) != frame.info.relay_level:
            raise EncodeError(
                f"relay level {frame.info.relay_level} but {len(frame.relays)} relay addresses"
            )
        body += address_to_wire(frame.source)
        for relay in frame.relays:
            body += address_to_wire(relay)
        body += address_to_wire(frame.destination)
    elif frame.source is not None or frame.destination is not None or frame.relays:
        raise EncodeError("addresses given but the module flag is not set")
    body.append(frame.afn)
    body += _fn_to_dt(frame.fn)
    body += frame.data
    total = len(body) + 5
    if total > 0xFFFF:
        raise EncodeError(f"frame of {total} bytes exceeds the 16-bit length field")
    return b"\x68" + total.to_bytes(2, "little") + bytes(body) + bytes([sum(body) & 0xFF, 0x16])


def parse_prefix(buf: bytes) -> tuple[Frame13762, int]:
    """Decode the frame starting at ``buf[0]``; return it and the bytes it used."""
    if not buf:
        raise IncompleteFrame("empty buffer")
    if buf[0] != 0x68:
        raise FrameFormatError(f"frame starts with {buf[0]:02X}, not 68")
    if len(buf) < 3:
        raise IncompleteFrame("length field not yet received")
    total = int.from_bytes(buf[1:3], "little")
    if total < MIN_FRAME_LEN:
        raise FrameFormatError(f"length {total} below the minimum {MIN_FRAME_LEN}")
    if len(buf) < total:
        raise IncompleteFrame(f"need {total} bytes, have {len(buf)}")
    raw = buf[:total]
    if raw[-1] != 0x16:
        raise FrameFormatError(f"frame ends with {raw[-1]:02X}, not 16")
    body = raw[3:-2]
    if sum(body) & 0xFF != raw[-2]:
        raise ChecksumError(f"checksum {raw[-2]:02X}, computed {sum(body) & 0xFF:02X}")
    c = body[0]
    direction, prm, mode = c >> 7, (c >> 6) & 1, c & 0x3F
    r = body[1:7]
    info: InfoDown | InfoUp = InfoDown.from_bytes(r) if direction == DOWN else InfoUp.from_bytes(r)
    pos = 7
    source = destination = None
    relays: tuple[str, ...] = ()
    if info.module:
        need = 12 + 6 * info.relay_level
        if len(body) < pos + need + 3:
            raise FrameFormatError(
                f"length {total} too short for an A field with {info.relay_level} relays"
            )
        source = address_from_wire(body[pos : pos + 6])
        relays = tuple(
            address_from_wire(body[pos + 6 + 6 * i : pos + 12 + 6 * i])
            for i in range(info.relay_level)
        )
        destination = address_from_wire(body[pos + need - 6 : pos + need])
        pos += need
    afn = body[pos]
    fn = _dt_to_fn(body[pos + 1], body[pos + 2])
    frame = Frame13762(
        direction=direction,
        prm=prm,
        comm_mode=mode,
        info=info,
        afn=afn,
        fn=fn,
        data=bytes(body[pos + 3 :]),
        source=source,
        relays=relays,
        destination=destination,
    )
    return frame, total


def decode(data: bytes) -> Frame13762:
    """Exactly one frame -> ``Frame13762``; trailing bytes are a ``FrameFormatError``."""
    frame, used = parse_prefix(bytes(data))
    if used != len(data):
        raise FrameFormatError(f"{len(data) - used} bytes after the end of the frame")
    return frame


def Gdw13762StreamDecoder(max_buffer: int = 4096) -> StreamDecoder[Frame13762]:  # noqa: N802
    """Streaming decoder for the module's serial byte stream (frames and ``Rejected``)."""
    return StreamDecoder(parse_prefix, start_bytes=b"\x68", max_buffer=max_buffer)


# --- data-unit helpers --------------------------------------------------------------------

class _Reader:
    """Cursor over a data unit; every shortfall is a ``DataUnitError``."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DataUnitError(
                f"{self.what}: needs {self.pos + n} bytes, data unit has {len(self.data)}"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "little")

    def addr(self) -> str:
        return address_from_wire(self.take(6))

    def lv(self) -> bytes:
        return self.take(self.u8())

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DataUnitError(f"{self.what}: {len(self.data) - self.pos} unexpected trailing bytes")


def _u8(name: str, v: int) -> bytes:
    _check(name, v, 8)
    return bytes([v])


def _u16(name: str, v: int) -> bytes:
    _check(name, v, 16)
    return v.to_bytes(2, "little")


def _lv(name: str, payload: bytes) -> bytes:
    if len(payload) > 255:
        raise EncodeError(f"{name} of {len(payload)} bytes exceeds the 1-byte length")
    return bytes([len(payload)]) + payload


def _bcd_date(b: bytes, what: str) -> date:
    """DD MM YY (BCD) -> date."""
    try:
        return date(2000 + from_bcd_byte(b[2]), from_bcd_byte(b[1]), from_bcd_byte(b[0]))
    except ValueError as exc:
        raise DataUnitError(f"{what}: {b.hex(' ').upper()} is not a date") from exc


def _date_bcd(d: date) -> bytes:
    if not 2000 <= d.year <= 2099:
        raise EncodeError(f"year {d.year} outside 2000..2099")
    return bytes([bcd_byte(d.day), bcd_byte(d.month), bcd_byte(d.year - 2000)])


def _bcd_datetime(b: bytes, what: str) -> datetime:
    """ss mm hh DD MM YY (BCD) -> datetime."""
    try:
        s, mi, h, d, mo, y = (from_bcd_byte(x) for x in b)
        return datetime(2000 + y, mo, d, h, mi, s)
    except ValueError as exc:
        raise DataUnitError(f"{what}: {b.hex(' ').upper()} is not a date-time") from exc


def _datetime_bcd(t: datetime) -> bytes:
    if not 2000 <= t.year <= 2099:
        raise EncodeError(f"year {t.year} outside 2000..2099")
    return bytes(bcd_byte(v) for v in (t.second, t.minute, t.hour, t.day, t.month, t.year - 2000))


class DataUnit(Protocol):
    """What every typed data unit offers."""

    def encode(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class RawUnit:
    """Data unit of an AFN/Fn this codec does not type: the bytes as received."""

    afn: int
    fn: int
    data: bytes

    def encode(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class NoData:
    """An Fn whose data unit is empty in this direction (queries, 12 F1..F3, 11 F6 ...)."""

    def encode(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, data: bytes) -> NoData:
        if data:
            raise DataUnitError(f"expected no data unit, got {len(data)} bytes")
        return cls()


# --- AFN00 -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Confirm:
    """00 F1 confirm. 2013: status (4) + wait time (2 s) = 6 bytes; 2009: 4 bytes.

    2013 status: D0 = command processed, D1..D31 = state of channels 1..31. The 2009 body is
    read as channel status (2) + wait time (2) [MEM]; ``edition`` keeps which one arrived.
    """

    status: int = 0xFFFFFFFF
    wait_s: int = 0
    edition: int = 2013

    @property
    def command_processed(self) -> bool:
        return bool(self.status & 1) if self.edition == 2013 else True

    def encode(self) -> bytes:
        if self.edition == 2009:
            return _u16("status", self.status) + _u16("wait_s", self.wait_s)
        if self.edition != 2013:
            raise EncodeError(f"edition {self.edition}: must be 2009 or 2013")
        _check("status", self.status, 32)
        return self.status.to_bytes(4, "little") + _u16("wait_s", self.wait_s)

    @classmethod
    def decode(cls, data: bytes) -> Confirm:
        if len(data) == 6:
            return cls(int.from_bytes(data[:4], "little"), int.from_bytes(data[4:], "little"), 2013)
        if len(data) == 4:
            return cls(int.from_bytes(data[:2], "little"), int.from_bytes(data[2:], "little"), 2009)
        raise DataUnitError(f"00 F1 confirm needs 4 (2009) or 6 (2013) bytes, got {len(data)}")


@dataclass(frozen=True, slots=True)
class Deny:
    """00 F2 deny: one error code (see ``DENY_CODES``)."""

    code: int

    @property
    def reason(self) -> str:
        return DENY_CODES.get(self.code, f"unknown error {self.code}")

    def encode(self) -> bytes:
        return _u8("code", self.code)

    @classmethod
    def decode(cls, data: bytes) -> Deny:
        if len(data) != 1:
            raise DataUnitError(f"00 F2 deny needs 1 byte, got {len(data)}")
        return cls(data[0])


# --- AFN02 / AFN03 / AFN05 ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Forward:
    """02 F1 forward data (both directions): protocol type + frame."""

    protocol: int
    frame: bytes

    def encode(self) -> bytes:
        return _u8("protocol", self.protocol) + _lv("frame", self.frame)

    @classmethod
    def decode(cls, data: bytes) -> Forward:
        r = _Reader(data, "02 F1")
        out = cls(r.u8(), r.lv())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class VendorVersion:
    """03 F1 vendor code and version (9 bytes); also the tail of 03 F10."""

    vendor: str  # 2 ASCII, sent low byte first ("ES" is sent 53 45)
    chip: str  # 2 ASCII, low byte first
    version_date: date  # DD MM YY BCD
    version: int  # 2 bytes LE, shown as 4 hex digits ("0013")

    def encode(self) -> bytes:
        out = bytearray()
        for name, code in (("vendor", self.vendor), ("chip", self.chip)):
            raw = code.encode("ascii", errors="replace")
            if len(raw) != 2:
                raise EncodeError(f"{name} code {code!r} must be 2 ASCII characters")
            out += raw[::-1]
        return bytes(out) + _date_bcd(self.version_date) + _u16("version", self.version)

    @classmethod
    def decode(cls, data: bytes) -> VendorVersion:
        r = _Reader(data, "vendor/version")
        vendor = r.take(2)[::-1].decode("latin-1")
        chip = r.take(2)[::-1].decode("latin-1")
        out = cls(vendor, chip, _bcd_date(r.take(3), "version date"), r.u16())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class MasterAddress:
    """03 F4 (U) and 05 F1 (D): the master node (CCO) address."""

    address: str

    def encode(self) -> bytes:
        return address_to_wire(self.address)

    @classmethod
    def decode(cls, data: bytes) -> MasterAddress:
        if len(data) != 6:
            raise DataUnitError(f"master address needs 6 bytes, got {len(data)}")
        return cls(address_from_wire(data))


@dataclass(frozen=True, slots=True)
class ModuleRunInfo:
    """03 F10 local module running-mode information."""

    mode: bytes  # 6 mode bytes, see the properties
    monitor_timeout_s: int  # slave monitor max timeout
    broadcast_timeout_s: int
    max_frame_len: int
    max_file_packet: int
    upgrade_wait_min: int
    master_address: str
    max_slaves: int
    current_slaves: int
    protocol_date: date
    record_date: date
    vendor: VendorVersion
    rates: tuple[int, ...] = ()  # raw 2-byte rate words (D15 = kbps unit)

    @property
    def module_kind(self) -> int:
        """b0 D0-D3: 1 narrowband, 2 broadband, 3 wireless."""
        return self.mode[0] & 0x0F

    @property
    def channel_count(self) -> int:
        return self.mode[2] & 0x1F

    @property
    def max_concurrent(self) -> int:
        """AFN13 requests the module takes at once: 5 for broadband PLC and micro-power wireless
        (the HPLC CCO default, HiSilicon ``MRS_PARALLEL_NUM_DEFAULT``), 1 for narrowband PLC."""
        return 5 if self.module_kind in (2, 3) else 1

    def encode(self) -> bytes:
        if len(self.mode) != 6:
            raise EncodeError("mode must be 6 bytes")
        if len(self.rates) != self.mode[3] & 0x0F:
            raise EncodeError(f"mode byte 3 says {self.mode[3] & 0x0F} rates, {len(self.rates)} given")
        return (
            self.mode
            + _u8("monitor_timeout_s", self.monitor_timeout_s)
            + _u16("broadcast_timeout_s", self.broadcast_timeout_s)
            + _u16("max_frame_len", self.max_frame_len)
            + _u16("max_file_packet", self.max_file_packet)
            + _u8("upgrade_wait_min", self.upgrade_wait_min)
            + address_to_wire(self.master_address)
            + _u16("max_slaves", self.max_slaves)
            + _u16("current_slaves", self.current_slaves)
            + _date_bcd(self.protocol_date)
            + _date_bcd(self.record_date)
            + self.vendor.encode()
            + b"".join(_u16("rate", v) for v in self.rates)
        )

    @classmethod
    def decode(cls, data: bytes) -> ModuleRunInfo:
        r = _Reader(data, "03 F10")
        mode = r.take(6)
        out = cls(
            mode=mode,
            monitor_timeout_s=r.u8(),
            broadcast_timeout_s=r.u16(),
            max_frame_len=r.u16(),
            max_file_packet=r.u16(),
            upgrade_wait_min=r.u8(),
            master_address=r.addr(),
            max_slaves=r.u16(),
            current_slaves=r.u16(),
            protocol_date=_bcd_date(r.take(3), "protocol date"),
            record_date=_bcd_date(r.take(3), "record date"),
            vendor=VendorVersion.decode(r.take(9)),
            rates=tuple(r.u16() for _ in range(mode[3] & 0x0F)),
        )
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class Broadcast:
    """05 F3 start broadcast: control word (0 transparent, 1 645-97, 2 645-07) + frame."""

    control: int
    frame: bytes

    def encode(self) -> bytes:
        return _u8("control", self.control) + _lv("frame", self.frame)

    @classmethod
    def decode(cls, data: bytes) -> Broadcast:
        r = _Reader(data, "05 F3")
        out = cls(r.u8(), r.lv())
        r.end()
        return out


# --- AFN06 module reports ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SlaveIndexEntry:
    address: str
    protocol: int
    index: int  # slave sequence number in the module's archive


@dataclass(frozen=True, slots=True)
class ReportSlaveInfo:
    """06 F1 report slave node info."""

    nodes: tuple[SlaveIndexEntry, ...]

    def encode(self) -> bytes:
        out = bytearray(_u8("count", len(self.nodes)))
        for n in self.nodes:
            out += address_to_wire(n.address) + _u8("protocol", n.protocol) + _u16("index", n.index)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> ReportSlaveInfo:
        r = _Reader(data, "06 F1")
        nodes = tuple(SlaveIndexEntry(r.addr(), r.u8(), r.u16()) for _ in range(r.u8()))
        r.end()
        return cls(nodes)


@dataclass(frozen=True, slots=True)
class ReportReadData:
    """06 F2 report read data."""

    index: int
    protocol: int
    duration_s: int
    frame: bytes

    def encode(self) -> bytes:
        return (
            _u16("index", self.index)
            + _u8("protocol", self.protocol)
            + _u16("duration_s", self.duration_s)
            + _lv("frame", self.frame)
        )

    @classmethod
    def decode(cls, data: bytes) -> ReportReadData:
        r = _Reader(data, "06 F2")
        out = cls(r.u16(), r.u8(), r.u16(), r.lv())
        r.end()
        return out


ROUTE_WORK_STATUS = {1: "reading done", 2: "search done", 3: "area identification done"}


@dataclass(frozen=True, slots=True)
class RouteWorkStatus:
    """06 F3 route work status change: 1 reading done, 2 search done, 3 area id done."""

    status: int

    @property
    def search_done(self) -> bool:
        return self.status == 2

    def encode(self) -> bytes:
        return _u8("status", self.status)

    @classmethod
    def decode(cls, data: bytes) -> RouteWorkStatus:
        if len(data) != 1:
            raise DataUnitError(f"06 F3 needs 1 byte, got {len(data)}")
        return cls(data[0])


@dataclass(frozen=True, slots=True)
class FoundNode:
    """One node in 06 F4: device type 0 = meter, 1 = collector (with its RS-485 meters)."""

    address: str
    protocol: int = 2
    index: int = 0
    device_type: int = 0
    sub_total: int = 0  # meters behind the collector in all
    subs: tuple[tuple[str, int], ...] = ()  # (address, protocol) carried in this frame


@dataclass(frozen=True, slots=True)
class ReportSlaves:
    """06 F4 report slave info and device type (registration search finds)."""

    nodes: tuple[FoundNode, ...]

    def encode(self) -> bytes:
        out = bytearray(_u8("count", len(self.nodes)))
        for n in self.nodes:
            out += address_to_wire(n.address) + _u8("protocol", n.protocol) + _u16("index", n.index)
            out += _u8("device_type", n.device_type) + _u8("sub_total", n.sub_total)
            out += _u8("sub count", len(n.subs))
            for addr, proto in n.subs:
                out += address_to_wire(addr) + _u8("protocol", proto)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> ReportSlaves:
        r = _Reader(data, "06 F4")
        nodes = []
        for _ in range(r.u8()):
            addr, proto, index, dtype, total = r.addr(), r.u8(), r.u16(), r.u8(), r.u8()
            subs = tuple((r.addr(), r.u8()) for _ in range(r.u8()))
            nodes.append(FoundNode(addr, proto, index, dtype, total, subs))
        r.end()
        return cls(tuple(nodes))


@dataclass(frozen=True, slots=True)
class ReportEvent:
    """06 F5 report slave event."""

    device_type: int
    protocol: int
    frame: bytes

    def encode(self) -> bytes:
        return _u8("device_type", self.device_type) + _u8("protocol", self.protocol) + _lv(
            "frame", self.frame
        )

    @classmethod
    def decode(cls, data: bytes) -> ReportEvent:
        r = _Reader(data, "06 F5")
        out = cls(r.u8(), r.u8(), r.lv())
        r.end()
        return out


# --- AFN10 route queries -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SlaveCount:
    """10 F1 (U): slaves in the archive and the most the module supports."""

    count: int
    max_supported: int

    def encode(self) -> bytes:
        return _u16("count", self.count) + _u16("max_supported", self.max_supported)

    @classmethod
    def decode(cls, data: bytes) -> SlaveCount:
        r = _Reader(data, "10 F1")
        out = cls(r.u16(), r.u16())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class SlaveInfoQuery:
    """10 F2 (D): start index (1-based in 2013, 0 in the 2009 capture) and count."""

    start: int
    count: int

    def encode(self) -> bytes:
        return _u16("start", self.start) + _u8("count", self.count)

    @classmethod
    def decode(cls, data: bytes) -> SlaveInfoQuery:
        r = _Reader(data, "10 F2 query")
        out = cls(r.u16(), r.u8())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class SlaveInfo:
    """One 10 F2 entry. Info word: D0-D3 relay level, D4-D7 quality, D8-D10 phase,
    D11-D13 protocol (icprog reading of the [CONFLICT]), D14-D15 reserved."""

    address: str
    relay_level: int = 0
    quality: int = 0
    phase: int = 0
    protocol: int = 2
    reserved: int = 0

    def encode(self) -> bytes:
        for name, v, bits in (
            ("relay_level", self.relay_level, 4),
            ("quality", self.quality, 4),
            ("phase", self.phase, 3),
            ("protocol", self.protocol, 3),
            ("reserved", self.reserved, 2),
        ):
            _check(name, v, bits)
        word = (
            self.relay_level
            | self.quality << 4
            | self.phase << 8
            | self.protocol << 11
            | self.reserved << 14
        )
        return address_to_wire(self.address) + word.to_bytes(2, "little")


@dataclass(frozen=True, slots=True)
class SlaveInfoList:
    """10 F2 (U): total slaves and the entries in this frame."""

    total: int
    slaves: tuple[SlaveInfo, ...]

    def encode(self) -> bytes:
        return _u16("total", self.total) + _u8("count", len(self.slaves)) + b"".join(
            s.encode() for s in self.slaves
        )

    @classmethod
    def decode(cls, data: bytes) -> SlaveInfoList:
        r = _Reader(data, "10 F2")
        total = r.u16()
        slaves = []
        for _ in range(r.u8()):
            addr, w = r.addr(), r.u16()
            slaves.append(SlaveInfo(addr, w & 15, (w >> 4) & 15, (w >> 8) & 7, (w >> 11) & 7, w >> 14))
        r.end()
        return cls(total, tuple(slaves))


@dataclass(frozen=True, slots=True)
class RouteRunStatus:
    """10 F4 (U) route running status (16 bytes). Status bits per icprog [CONFLICT]."""

    status: int
    total: int
    read: int
    read_via_relay: int
    work_switch: int
    rate: int
    relay_levels: tuple[int, int, int]
    work_steps: tuple[int, int, int]

    @property
    def route_done(self) -> bool:
        return bool(self.status & 1)

    @property
    def working(self) -> bool:
        return bool(self.status & 2)

    def encode(self) -> bytes:
        if len(self.relay_levels) != 3 or len(self.work_steps) != 3:
            raise EncodeError("relay_levels and work_steps need one value per phase")
        return (
            _u8("status", self.status)
            + _u16("total", self.total)
            + _u16("read", self.read)
            + _u16("read_via_relay", self.read_via_relay)
            + _u8("work_switch", self.work_switch)
            + _u16("rate", self.rate)
            + b"".join(_u8("relay level", v) for v in self.relay_levels)
            + b"".join(_u8("work step", v) for v in self.work_steps)
        )

    @classmethod
    def decode(cls, data: bytes) -> RouteRunStatus:
        r = _Reader(data, "10 F4")
        out = cls(
            r.u8(), r.u16(), r.u16(), r.u16(), r.u8(), r.u16(),
            (r.u8(), r.u8(), r.u8()), (r.u8(), r.u8(), r.u8()),
        )
        r.end()
        return out


# --- AFN11 route settings ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AddSlaves:
    """11 F1 add slaves to the module's archive: (address, protocol) pairs."""

    slaves: tuple[tuple[str, int], ...]

    def encode(self) -> bytes:
        out = bytearray(_u8("count", len(self.slaves)))
        for addr, proto in self.slaves:
            out += address_to_wire(addr) + _u8("protocol", proto)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> AddSlaves:
        r = _Reader(data, "11 F1")
        out = cls(tuple((r.addr(), r.u8()) for _ in range(r.u8())))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class DeleteSlaves:
    """11 F2 delete slaves from the archive."""

    addresses: tuple[str, ...]

    def encode(self) -> bytes:
        return _u8("count", len(self.addresses)) + b"".join(
            address_to_wire(a) for a in self.addresses
        )

    @classmethod
    def decode(cls, data: bytes) -> DeleteSlaves:
        r = _Reader(data, "11 F2")
        out = cls(tuple(r.addr() for _ in range(r.u8())))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class FixedRelayPath:
    """11 F3 set a fixed relay path for one slave."""

    address: str
    relays: tuple[str, ...]

    def encode(self) -> bytes:
        return address_to_wire(self.address) + _u8("relay level", len(self.relays)) + b"".join(
            address_to_wire(a) for a in self.relays
        )

    @classmethod
    def decode(cls, data: bytes) -> FixedRelayPath:
        r = _Reader(data, "11 F3")
        addr = r.addr()
        out = cls(addr, tuple(r.addr() for _ in range(r.u8())))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class RouteWorkMode:
    """11 F4: mode (D0 0 reading / 1 learning, D1 register allowed, D4-D7 ECC) + rate (2)."""

    mode: int
    rate: int = 0

    def encode(self) -> bytes:
        return _u8("mode", self.mode) + _u16("rate", self.rate)

    @classmethod
    def decode(cls, data: bytes) -> RouteWorkMode:
        r = _Reader(data, "11 F4")
        out = cls(r.u8(), r.u16())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class SearchStart:
    """11 F5 activate slave registration. ``start`` None = all-zero time field (start now)."""

    start: datetime | None = None
    duration_min: int = 10
    retries: int = 1
    slices: int = 8  # random wait time slices

    def encode(self) -> bytes:
        when = bytes(6) if self.start is None else _datetime_bcd(self.start)
        return when + _u16("duration_min", self.duration_min) + _u8("retries", self.retries) + _u8(
            "slices", self.slices
        )

    @classmethod
    def decode(cls, data: bytes) -> SearchStart:
        r = _Reader(data, "11 F5")
        when = r.take(6)
        start = None if when == bytes(6) else _bcd_datetime(when, "search start")
        out = cls(start, r.u16(), r.u8(), r.u8())
        r.end()
        return out


# --- AFN13 / AFN14 -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MonitorRequest:
    """13 F1 (D) monitor slave node: forward a meter frame along the A-field path."""

    protocol: int
    frame: bytes
    delay_related: bool = False
    attached: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return (
            _u8("protocol", self.protocol)
            + bytes([int(self.delay_related)])
            + _u8("attached count", len(self.attached))
            + b"".join(address_to_wire(a) for a in self.attached)
            + _lv("frame", self.frame)
        )

    @classmethod
    def decode(cls, data: bytes) -> MonitorRequest:
        r = _Reader(data, "13 F1 request")
        proto, delay = r.u8(), r.u8()
        if delay > 1:
            raise DataUnitError(f"13 F1 delay-related flag {delay} is not 0/1")
        attached = tuple(r.addr() for _ in range(r.u8()))
        out = cls(proto, r.lv(), bool(delay), attached)
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class MonitorReply:
    """13 F1 (U): local communication uplink duration (s) + protocol + the meter's reply."""

    duration_s: int
    protocol: int
    frame: bytes

    def encode(self) -> bytes:
        return _u16("duration_s", self.duration_s) + _u8("protocol", self.protocol) + _lv(
            "frame", self.frame
        )

    @classmethod
    def decode(cls, data: bytes) -> MonitorReply:
        r = _Reader(data, "13 F1 reply")
        out = cls(r.u16(), r.u8(), r.lv())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class RouteReadRequest:
    """14 F1 (U): the module's router asks the concentrator what to send to a slave."""

    phase: int
    address: str
    index: int

    def encode(self) -> bytes:
        return _u8("phase", self.phase) + address_to_wire(self.address) + _u16("index", self.index)

    @classmethod
    def decode(cls, data: bytes) -> RouteReadRequest:
        r = _Reader(data, "14 F1 request")
        out = cls(r.u8(), r.addr(), r.u16())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class RouteReadAnswer:
    """14 F1 (D): read flag (0 failed, 1 success, 2 may read) + frame + attached nodes."""

    flag: int
    frame: bytes = b""
    delay_related: bool = False
    attached: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return (
            _u8("flag", self.flag)
            + bytes([int(self.delay_related)])
            + _lv("frame", self.frame)
            + _u8("attached count", len(self.attached))
            + b"".join(address_to_wire(a) for a in self.attached)
        )

    @classmethod
    def decode(cls, data: bytes) -> RouteReadAnswer:
        r = _Reader(data, "14 F1 answer")
        flag, delay = r.u8(), r.u8()
        if delay > 1:
            raise DataUnitError(f"14 F1 delay-related flag {delay} is not 0/1")
        frame = r.lv()
        out = cls(flag, frame, bool(delay), tuple(r.addr() for _ in range(r.u8())))
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class ClockRequest(NoData):
    """14 F2 (U): the module asks for the concentrator's time (no data)."""

    @classmethod
    def decode(cls, data: bytes) -> ClockRequest:
        NoData.decode(data)
        return cls()


@dataclass(frozen=True, slots=True)
class ClockAnswer:
    """14 F2 (D): ss mm hh DD MM YY."""

    time: datetime

    def encode(self) -> bytes:
        return _datetime_bcd(self.time)

    @classmethod
    def decode(cls, data: bytes) -> ClockAnswer:
        if len(data) != 6:
            raise DataUnitError(f"14 F2 needs 6 bytes, got {len(data)}")
        return cls(_bcd_datetime(data, "14 F2"))


@dataclass(frozen=True, slots=True)
class DelayCorrectRequest:
    """14 F3 (U): a frame the module wants corrected for an expected delay."""

    address: str
    delay_s: int
    data: bytes

    def encode(self) -> bytes:
        return address_to_wire(self.address) + _u16("delay_s", self.delay_s) + _lv("data", self.data)

    @classmethod
    def decode(cls, data: bytes) -> DelayCorrectRequest:
        r = _Reader(data, "14 F3 request")
        out = cls(r.addr(), r.u16(), r.lv())
        r.end()
        return out


@dataclass(frozen=True, slots=True)
class DelayCorrectAnswer:
    """14 F3 (D): the corrected data; empty = give up."""

    data: bytes

    def encode(self) -> bytes:
        return _lv("data", self.data)

    @classmethod
    def decode(cls, data: bytes) -> DelayCorrectAnswer:
        r = _Reader(data, "14 F3 answer")
        out = cls(r.lv())
        r.end()
        return out


# --- dispatch ----------------------------------------------------------------------------

_BOTH = (DOWN, UP)
_UNITS: dict[tuple[int, int, int], Any] = {}


def _register(afn: int, fn: int, directions: tuple[int, ...], cls: Any) -> None:
    for d in directions:
        _UNITS[(afn, fn, d)] = cls


_register(0x00, 1, _BOTH, Confirm)
_register(0x00, 2, _BOTH, Deny)
for _fn in (1, 2, 3):
    _register(0x01, _fn, (DOWN,), NoData)
_register(0x02, 1, _BOTH, Forward)
for _fn in range(1, 17):
    if _fn != 3:  # 03 F3 slave listen info carries a query body
        _register(0x03, _fn, (DOWN,), NoData)
_register(0x03, 1, (UP,), VendorVersion)
_register(0x03, 4, (UP,), MasterAddress)
_register(0x03, 10, (UP,), ModuleRunInfo)
_register(0x05, 1, (DOWN,), MasterAddress)
_register(0x05, 3, (DOWN,), Broadcast)
_register(0x06, 1, (UP,), ReportSlaveInfo)
_register(0x06, 2, (UP,), ReportReadData)
_register(0x06, 3, (UP,), RouteWorkStatus)
_register(0x06, 4, (UP,), ReportSlaves)
_register(0x06, 5, (UP,), ReportEvent)
_register(0x10, 1, (DOWN,), NoData)
_register(0x10, 1, (UP,), SlaveCount)
_register(0x10, 2, (DOWN,), SlaveInfoQuery)
_register(0x10, 2, (UP,), SlaveInfoList)
_register(0x10, 4, (DOWN,), NoData)
_register(0x10, 4, (UP,), RouteRunStatus)
_register(0x11, 1, (DOWN,), AddSlaves)
_register(0x11, 2, (DOWN,), DeleteSlaves)
_register(0x11, 3, (DOWN,), FixedRelayPath)
_register(0x11, 4, (DOWN,), RouteWorkMode)
_register(0x11, 5, (DOWN,), SearchStart)
_register(0x11, 6, (DOWN,), NoData)
for _fn in (1, 2, 3):
    _register(0x12, _fn, (DOWN,), NoData)
_register(0x13, 1, (DOWN,), MonitorRequest)
_register(0x13, 1, (UP,), MonitorReply)
_register(0x14, 1, (UP,), RouteReadRequest)
_register(0x14, 1, (DOWN,), RouteReadAnswer)
_register(0x14, 2, (UP,), ClockRequest)
_register(0x14, 2, (DOWN,), ClockAnswer)
_register(0x14, 3, (UP,), DelayCorrectRequest)
_register(0x14, 3, (DOWN,), DelayCorrectAnswer)


def decode_unit(afn: int, fn: int, data: bytes, direction: int) -> Any:
    """Decode a data unit; ``RawUnit`` for an unknown AFN/Fn, ``DataUnitError`` if it misfits."""
    cls = _UNITS.get((afn, fn, direction))
    if cls is None:
        return RawUnit(afn, fn, bytes(data))
    try:
        return cls.decode(bytes(data))
    except DataUnitError as exc:
        raise DataUnitError(f"AFN{afn:02X} F{fn}: {exc}") from exc
    except CodecError:
        raise
    except (ValueError, IndexError, UnicodeError) as exc:  # defensive: never crash on bad input
        raise DataUnitError(f"AFN{afn:02X} F{fn}: {exc}") from exc


def decode_data_unit(frame: Frame13762) -> Any:
    """The frame's data unit as a typed object (``RawUnit`` when the AFN/Fn is not typed)."""
    return decode_unit(frame.afn, frame.fn, frame.data, frame.direction)


# --- builders ----------------------------------------------------------------------------

def request(
    afn: int,
    fn: int,
    seq: int,
    comm_mode: int,
    data: bytes | DataUnit = b"",
    *,
    prm: int = 1,
    cco: str | None = None,
    relays: tuple[str, ...] | list[str] = (),
    destination: str | None = None,
    reply_bytes: int = 0,
) -> Frame13762:
    """A downlink frame; with ``destination`` the A field (cco | relays | destination) is set
    together with the module flag, routing flag and relay level."""
    body = data if isinstance(data, bytes | bytearray) else data.encode()
    relays = tuple(relays)
    if destination is not None:
        if cco is None:
            raise EncodeError("a frame to a slave node needs the CCO (source) address")
        info = InfoDown(
            routing=True, module=True, relay_level=len(relays), reply_bytes=reply_bytes, seq=seq
        )
        _check("relay level", len(relays), 4)
        return Frame13762(DOWN, prm, comm_mode, info, afn, fn, bytes(body), cco, relays, destination)
    if relays:
        raise EncodeError("relays given without a destination")
    info = InfoDown(reply_bytes=reply_bytes, seq=seq)
    return Frame13762(DOWN, prm, comm_mode, info, afn, fn, bytes(body))


def reply(
    afn: int,
    fn: int,
    seq: int,
    comm_mode: int,
    data: bytes | DataUnit = b"",
    *,
    prm: int = 0,
    source: str | None = None,
    relays: tuple[str, ...] | list[str] = (),
    destination: str | None = None,
    cmd_quality: int = 0,
    reply_quality: int = 0,
    phase: int = 0,
    event: bool = False,
) -> Frame13762:
    """An uplink frame; with ``source`` the A field (source | relays | destination) is set."""
    body = data if isinstance(data, bytes | bytearray) else data.encode()
    relays = tuple(relays)
    module = source is not None
    if module and destination is None:
        raise EncodeError("an uplink A field needs a destination (the CCO) address")
    if relays and not module:
        raise EncodeError("relays given without a source address")
    _check("relay level", len(relays), 4)
    info = InfoUp(
        routing=module,
        module=module,
        relay_level=len(relays),
        phase=phase,
        cmd_quality=cmd_quality,
        reply_quality=reply_quality,
        event=event,
        seq=seq,
    )
    return Frame13762(
        UP, prm, comm_mode, info, afn, fn, bytes(body),
        source if module else None, relays, destination if module else None,
    )


def monitor_request(
    seq: int,
    cco: str,
    relays: tuple[str, ...] | list[str],
    meter: str,
    protocol: int,
    dlt645_bytes: bytes,
    comm_mode: int,
    *,
    delay_related: bool = False,
    reply_bytes: int = 0,
) -> Frame13762:
    """13 F1 down: forward ``dlt645_bytes`` to ``meter`` along ``relays`` (first hop first)."""
    unit = MonitorRequest(protocol, bytes(dlt645_bytes), delay_related)
    return request(
        0x13, 1, seq, comm_mode, unit,
        cco=cco, relays=relays, destination=meter, reply_bytes=reply_bytes,
    )


def monitor_reply(
    req: Frame13762,
    dlt645_bytes: bytes,
    *,
    duration_s: int = 0,
    cmd_quality: int = 0,
    reply_quality: int = 0,
    phase: int = 0,
    protocol: int | None = None,
) -> Frame13762:
    """13 F1 up answering ``req``: same seq, A field swapped (meter | relays reversed | CCO)."""
    if req.afn != 0x13 or req.direction != DOWN or not req.info.module:
        raise EncodeError("monitor_reply needs a downlink 13 F1 request with an A field")
    if protocol is None:
        try:
            protocol = MonitorRequest.decode(req.data).protocol
        except DataUnitError as exc:
            raise EncodeError(f"cannot answer a malformed 13 F1 request: {exc}") from exc
    unit = MonitorReply(duration_s, protocol, bytes(dlt645_bytes))
    return reply(
        0x13, 1, req.seq, req.comm_mode, unit,
        source=req.destination, relays=tuple(reversed(req.relays)), destination=req.source,
        cmd_quality=cmd_quality, reply_quality=reply_quality, phase=phase,
    )


def _answer_addresses(to: Frame13762 | None) -> dict[str, Any]:
    """A field for an answer to ``to``: swapped if ``to`` carried one."""
    if to is None or not to.info.module:
        return {}
    return {"source": to.destination, "relays": tuple(reversed(to.relays)), "destination": to.source}


def confirm(
    seq: int,
    comm_mode: int,
    *,
    direction: int = UP,
    unit: Confirm | None = None,
    to: Frame13762 | None = None,
) -> Frame13762:
    """00 F1 confirm. Up = module confirms a command; down = concentrator confirms a report."""
    unit = unit or Confirm()
    if direction == UP:
        return reply(0x00, 1, seq, comm_mode, unit, **_answer_addresses(to))
    return request(0x00, 1, seq, comm_mode, unit, prm=0)


def deny(
    seq: int,
    code: int,
    comm_mode: int,
    *,
    direction: int = UP,
    to: Frame13762 | None = None,
) -> Frame13762:
    """00 F2 deny with one error code (``DENY_CODES``)."""
    if direction == UP:
        return reply(0x00, 2, seq, comm_mode, Deny(code), **_answer_addresses(to))
    return request(0x00, 2, seq, comm_mode, Deny(code), prm=0)


def search_start(
    seq: int,
    comm_mode: int,
    *,
    cco: str | None = None,
    proxy_path: tuple[str, ...] | list[str] = (),
    duration_min: int = 10,
    retries: int = 1,
    slices: int = 8,
    start: datetime | None = None,
) -> Frame13762:
    """11 F5 start a registration search; with ``proxy_path`` it runs from the last node of
    the path (project extension: A = CCO | path[:-1] | path[-1])."""
    unit = SearchStart(start, duration_min, retries, slices)
    path = tuple(proxy_path)
    if not path:
        return request(0x11, 5, seq, comm_mode, unit)
    if cco is None:
        raise EncodeError("a proxied search needs the CCO address")
    return request(0x11, 5, seq, comm_mode, unit, cco=cco, relays=path[:-1], destination=path[-1])


def report_slave(
    seq: int,
    comm_mode: int,
    node: FoundNode,
    cco: str,
    path_back: tuple[str, ...] | list[str] = (),
    quality: int = 0,
) -> Frame13762:
    """06 F4 up (PRM = 1): the module reports a found node; A = node | path back | CCO and
    R4 = signal quality of the last (proxy <-> node) hop."""
    return reply(
        0x06, 4, seq, comm_mode, ReportSlaves((node,)),
        prm=1, source=node.address, relays=tuple(path_back), destination=cco,
        cmd_quality=quality, reply_quality=quality,
    )


# --- describe / to_dict ------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex(" ").upper() if value else "(none)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ", ".join(_fmt(v) for v in value) if value else "(none)"
    if is_dataclass(value) and not isinstance(value, type):
        return "; ".join(f"{f.name}={_fmt(getattr(value, f.name))}" for f in fields(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


_UNIT_NOTES: dict[str, Any] = {
    "protocol": lambda v: f"{v} ({PROTOCOLS.get(v, 'unknown')})",
    "code": lambda v: f"{v} ({DENY_CODES.get(v, 'unknown')})",
    "status": lambda v: f"0x{v:X}",
    "version": lambda v: f"{v:04X}",
    "control": lambda v: f"{v} ({PROTOCOLS.get(v, 'unknown')})",
}


def _unit_lines(prefix: str, unit: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for f in fields(unit):
        v = getattr(unit, f.name)
        note = _UNIT_NOTES.get(f.name)
        if note is not None and isinstance(v, int) and not isinstance(v, bool):
            text = note(v)
        else:
            text = _fmt(v)
        out.append((f"{prefix}.{f.name}", text))
    return out


def describe(frame: Frame13762) -> list[tuple[str, str]]:
    """(field, human meaning) lines for a frame, including its decoded data unit."""
    lines: list[tuple[str, str]] = [
        ("direction", "module -> concentrator" if frame.direction == UP else "concentrator -> module"),
        ("prm", "initiating" if frame.prm else "responding"),
        ("comm_mode", f"{frame.comm_mode} ({COMM_MODES.get(frame.comm_mode, 'unknown')})"),
    ]
    i = frame.info
    if isinstance(i, InfoDown):
        rate = f"{i.rate} {'kbps' if i.rate_kbps else 'bps'}" if i.rate else "default"
        lines += [
            ("routing", "relays given in A field" if i.routing else "module routes"),
            ("attached_node", _fmt(i.attached_node)),
            ("module", "A field present (slave node)" if i.module else "to the module itself"),
            ("conflict_detection", _fmt(i.conflict_detection)),
            ("relay_level", str(i.relay_level)),
            ("channel", str(i.channel)),
            ("ecc", str(i.ecc)),
            ("reply_bytes", str(i.reply_bytes)),
            ("rate", rate),
        ]
    else:
        lines += [
            ("routing", _fmt(i.routing)),
            ("module", "A field present (slave node)" if i.module else "from the module itself"),
            ("relay_level", str(i.relay_level)),
            ("channel", str(i.channel)),
            ("phase", {0: "unknown"}.get(i.phase, str(i.phase))),
            ("meter_channel", str(i.meter_channel)),
            ("cmd_quality", f"{i.cmd_quality}/15"),
            ("reply_quality", f"{i.reply_quality}/15"),
            ("event", "module has events" if i.event else "no events"),
        ]
        if i.reserved:
            lines.append(("reserved_bits", f"{i.reserved:012X}"))
    lines.append(("seq", str(i.seq)))
    if i.module:
        lines += [
            ("source", frame.source or ""),
            ("relays", " > ".join(frame.relays) or "(none)"),
            ("destination", frame.destination or ""),
        ]
    lines.append(("afn", f"{frame.afn:02X} ({AFN_NAMES.get(frame.afn, 'unknown')})"))
    lines.append(("fn", f"F{frame.fn}"))
    try:
        unit = decode_data_unit(frame)
    except CodecError as exc:
        lines += [("data", _fmt(frame.data)), ("data_error", str(exc))]
        return lines
    if isinstance(unit, RawUnit):
        lines.append(("data", _fmt(frame.data)))
    elif isinstance(unit, NoData):
        lines.append(("data", "(none)"))
    else:
        lines.append(("unit", type(unit).__name__))
        lines += _unit_lines("unit", unit)
        if isinstance(unit, Deny):
            lines.append(("unit.reason", unit.reason))
    return lines


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex().upper()
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    return value


def to_dict(frame: Frame13762) -> dict[str, Any]:
    """JSON-ready dict of a frame: header fields, A field, and the decoded data unit."""
    out: dict[str, Any] = {
        "protocol": "Q/GDW 1376.2",
        "direction": "up" if frame.direction == UP else "down",
        "prm": frame.prm,
        "comm_mode": frame.comm_mode,
        "info": _jsonable(frame.info),
        "seq": frame.seq,
        "afn": frame.afn,
        "fn": frame.fn,
        "data": frame.data.hex().upper(),
    }
    if frame.info.module:
        out["source"] = frame.source
        out["relays"] = list(frame.relays)
        out["destination"] = frame.destination
    try:
        unit = decode_data_unit(frame)
    except CodecError as exc:
        out["unit_error"] = str(exc)
    else:
        if not isinstance(unit, RawUnit | NoData):
            out["unit_type"] = type(unit).__name__
            out["unit"] = _jsonable(unit)
    return out

