"""Store outbox rows -> Q/GDW 1376.1 upload frames (and back, for the master station).

The store's outbox is the truth about what the master has not confirmed yet (docs/store.md).
This module is pure: it turns ``OutboxItem`` rows into data units and packs them into frames of
at most ``max_user_bytes`` of user data, each carrying a private *upload-key trailer* so the
master can deduplicate by (terminal, outbox seq). ``parse_upload`` is the inverse the master
station uses. Mapping (details and byte layouts in docs/uplink.md):

=============  ===========================================================================
outbox kind    1376.1 data unit
=============  ===========================================================================
``daily``      AFN0D F161 (pn = measuring point), ``DailyForwardEnergy``
``curve``      AFN0D F101 forward active energy indication curve, Td_c + n x A.11 [MEM]
``realtime``   AFN0C F129 (pn = measuring point), ``ForwardEnergy``
``event``      AFN0E F1 (important ERC) or F2 (general), one record per unit; record data =
               A.15 time | pn (2) | private tail (compact JSON of the detail) [private]
line loss      AFN0D p0 F2042 [private]: Td_d | summary A.14 | customers A.14 | loss A.5 |
               meters covered (2) | meters total (2); not an outbox kind, see ``LineLossTracker``
=============  ===========================================================================

Every upload frame ends with p0 F2041 (private, "upload keys"): ``n (2 LE)`` then n x
(outbox seq (4 LE) | meter address (6, wire order; EE.. for the concentrator)), one entry per
(pn, Fn) item of the frame in frame order. A meter without a measuring point is sent as p0
and identified by its trailer address. The codec treats an Fn it does not know as "the rest
of the user data", so a private unit is always the last one of a frame.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from typing import Any

from concentrator.codec import (
    CodecError,
    DataUnitError,
    EncodeError,
    address_from_wire,
    address_to_wire,
    bcd_to_int,
    int_to_bcd,
)
from concentrator.store import CurveDay, DailyReading, Event, LineLoss, OutboxItem, RealtimeReading
from uplink import gdw13761 as g

__all__ = [
    "FN_UPLOAD_KEYS",
    "FN_LINE_LOSS",
    "FN_CURVE",
    "DEFAULT_IMPORTANT_ERCS",
    "UploadKey",
    "UploadBatch",
    "CurveUnit",
    "LineLossUnit",
    "EventRecordData",
    "daily_unit",
    "realtime_unit",
    "curve_units",
    "event_unit",
    "line_loss_unit",
    "pack_items",
    "parse_upload",
    "ParsedItem",
    "density_code",
    "density_minutes",
    "encode_keys",
    "decode_keys",
    "register_layouts",
]

log = logging.getLogger(__name__)

FN_UPLOAD_KEYS = 2041   # private: the outbox key of every item of the frame (last unit)
FN_LINE_LOSS = 2042     # private: district line loss of one day (AFN0D p0)
FN_CURVE = 101          # AFN0D F101 forward active total energy indication curve [MEM]
DEFAULT_IMPORTANT_ERCS = frozenset({1, 12, 13, 14, 20, 21, 27, 30, 35})

_NO_METER = b"\xee" * 6
_KEY_LEN = 10
# Td_c density codes [MEM]: 1 = 15 min, 2 = 30 min, 3 = 60 min, 254 = 5 min, 255 = 1 min.
_DENSITY = {15: 1, 30: 2, 60: 3, 5: 254, 1: 255}
_DENSITY_MIN = {v: k for k, v in _DENSITY.items()}
_CURVE_CHUNK = 96       # points per data unit (the count byte allows 255; 96 = a 15-min day)


def density_code(minutes: int) -> int:
    """Td_c density code for a curve density in minutes (EncodeError if none exists)."""
    try:
        return _DENSITY[minutes]
    except KeyError:
        raise EncodeError(f"curve density {minutes} min has no Td_c code") from None


def density_minutes(code: int) -> int:
    try:
        return _DENSITY_MIN[code]
    except KeyError:
        raise DataUnitError(f"Td_c density code {code} is not defined") from None


# --- typed private / curve units --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class UploadKey:
    """One trailer entry: the outbox seq of an item and the meter it belongs to."""

    seq: int
    meter: str | None       # None = the concentrator itself (events without a meter, line loss)

    def encode(self) -> bytes:
        if not 0 <= self.seq <= 0xFFFFFFFF:
            raise EncodeError(f"outbox seq {self.seq} does not fit 4 bytes")
        meter = _NO_METER if self.meter is None else address_to_wire(self.meter)
        return self.seq.to_bytes(4, "little") + meter


def encode_keys(keys: Sequence[UploadKey]) -> bytes:
    return len(keys).to_bytes(2, "little") + b"".join(k.encode() for k in keys)


def decode_keys(data: bytes) -> tuple[UploadKey, ...]:
    if len(data) < 2:
        raise DataUnitError("upload keys need a 2-byte count")
    n = int.from_bytes(data[:2], "little")
    if len(data) != 2 + _KEY_LEN * n:
        raise DataUnitError(f"upload keys: {n} entries need {2 + _KEY_LEN * n} bytes, "
                            f"got {len(data)}")
    out = []
    for i in range(n):
        chunk = data[2 + _KEY_LEN * i: 2 + _KEY_LEN * (i + 1)]
        meter_b = chunk[4:]
        out.append(UploadKey(int.from_bytes(chunk[:4], "little"),
                             None if meter_b == _NO_METER else address_from_wire(meter_b)))
    return tuple(out)


def _encode_a11(value: Decimal | None) -> bytes:
    if value is None:
        return b"\xee" * 4
    # Load records of DL/T 645 meters have two decimals; anything finer is cut, not rounded up.
    return g.encode_a11(Decimal(value).quantize(Decimal("0.01"), rounding=ROUND_DOWN))


@dataclass(frozen=True, slots=True)
class CurveUnit:
    """AFN0D F101 data: Td_c (start A.15, density code, count) then count x A.11 kWh."""

    start: datetime
    density_min: int
    points: tuple[Decimal | None, ...]

    def encode(self) -> bytes:
        if not 1 <= len(self.points) <= 255:
            raise EncodeError(f"a curve unit holds 1..255 points, not {len(self.points)}")
        return (g.encode_a15(self.start) + bytes([density_code(self.density_min),
                                                  len(self.points)])
                + b"".join(_encode_a11(p) for p in self.points))

    @classmethod
    def decode(cls, data: bytes) -> CurveUnit:
        if len(data) < 7:
            raise DataUnitError("F101 needs a 7-byte Td_c")
        start = g.decode_a15(data[:5])
        if start is None:
            raise DataUnitError("F101 start time is missing (EE)")
        n = data[6]
        if len(data) != 7 + 4 * n:
            raise DataUnitError(f"F101 with {n} points needs {7 + 4 * n} bytes, got {len(data)}")
        points = tuple(g.decode_a11(data[7 + 4 * i:11 + 4 * i]) for i in range(n))
        return cls(start, density_minutes(data[5]), points)


def _encode_a5(value: Decimal | None) -> bytes:
    """A.5: signed XXX.X in 2 BCD bytes, sign in D7 of the high byte [MEM]."""
    if value is None:
        return b"\xee\xee"
    scaled = int((abs(Decimal(value)) * 10).to_integral_value())
    if scaled > 7999:
        raise EncodeError(f"{value} does not fit A.5 (|x| <= 799.9)")
    raw = bytearray(int_to_bcd(scaled, 2))
    if value < 0:
        raw[1] |= 0x80
    return bytes(raw)


def _decode_a5(data: bytes) -> Decimal | None:
    if data == b"\xee\xee":
        return None
    neg = bool(data[1] & 0x80)
    value = Decimal(bcd_to_int(bytes([data[0], data[1] & 0x7F]))).scaleb(-1)
    return -value if neg else value


@dataclass(frozen=True, slots=True)
class LineLossUnit:
    """AFN0D p0 F2042 [private], 19 bytes: Td_d (3) | summary energy A.14 (5) | customer energy
    A.14 (5) | loss A.5 % (2) | meters covered (2 LE) | meters total (2 LE)."""

    day: date
    summary_energy: Decimal
    customer_energy: Decimal
    loss_pct: Decimal | None
    meters_covered: int
    meters_total: int

    SIZE = 19

    def encode(self) -> bytes:
        return (g.encode_a20(self.day) + g.encode_a14(self.summary_energy)
                + g.encode_a14(self.customer_energy) + _encode_a5(self.loss_pct)
                + self.meters_covered.to_bytes(2, "little")
                + self.meters_total.to_bytes(2, "little"))

    @classmethod
    def decode(cls, data: bytes) -> LineLossUnit:
        if len(data) != cls.SIZE:
            raise DataUnitError(f"line loss needs {cls.SIZE} bytes, got {len(data)}")
        day = g.decode_a20(data[0:3])
        summary, customer = g.decode_a14(data[3:8]), g.decode_a14(data[8:13])
        if day is None or summary is None or customer is None:
            raise DataUnitError("line loss day and energies cannot be missing")
        return cls(day, summary, customer, _decode_a5(data[13:15]),
                   int.from_bytes(data[15:17], "little"), int.from_bytes(data[17:19], "little"))

    @classmethod
    def from_store(cls, ll: LineLoss) -> LineLossUnit:
        return cls(ll.day, ll.summary_energy, ll.customer_energy, ll.loss_pct,
                   ll.meters_covered, ll.meters_total)


@dataclass(frozen=True, slots=True)
class EventRecordData:
    """Data of the event records this terminal sends: A.15 time | pn (2 LE) | JSON tail."""

    time: datetime
    point: int
    detail: Mapping[str, Any]

    def encode(self) -> bytes:
        head = g.encode_a15(self.time) + self.point.to_bytes(2, "little")
        tail = json.dumps(dict(self.detail), separators=(",", ":"), sort_keys=True,
                          default=str).encode()
        # Le is one byte: a long detail is cut (the master keeps the full event via a read).
        return head + tail[:255 - len(head)]

    @classmethod
    def decode(cls, data: bytes) -> EventRecordData:
        if len(data) < 7:
            raise DataUnitError("event record data needs 7 bytes")
        when = g.decode_a15(data[:5])
        if when is None:
            raise DataUnitError("event time is missing (EE)")
        try:
            detail = json.loads(data[7:].decode()) if len(data) > 7 else {}
        except (UnicodeDecodeError, ValueError):
            detail = {"raw": data[7:].hex()}   # truncated JSON: keep the bytes
        return cls(when, int.from_bytes(data[5:7], "little"), detail)


# --- outbox rows -> data units ----------------------------------------------------------------

PointOf = Callable[[str], int | None]


def _pn(point: int | None) -> int:
    return point if point is not None and 1 <= point <= 2040 else 0


def daily_unit(r: DailyReading, point: int | None) -> g.DataUnit:
    v = g.DailyForwardEnergy(r.freeze_date, r.read_time.replace(second=0, microsecond=0),
                             r.fwd_total, tuple(r.fwd_tariffs))
    return g.unit(_pn(point), 161, v)


def realtime_unit(r: RealtimeReading, point: int | None) -> g.DataUnit:
    v = g.ForwardEnergy(r.read_time.replace(second=0, microsecond=0), r.fwd_total,
                        tuple(r.fwd_tariffs))
    return g.unit(_pn(point), 129, v)


def curve_units(c: CurveDay, point: int | None) -> list[g.DataUnit]:
    """One F101 unit per 96 points of the day (a 15-minute day is one unit)."""
    if c.item != "fwd_active":
        raise EncodeError(f"curve item {c.item!r} has no 1376.1 mapping here")
    density_code(c.density_min)
    out = []
    start_of_day = datetime(c.day.year, c.day.month, c.day.day)
    for i in range(0, len(c.points), _CURVE_CHUNK):
        chunk = c.points[i:i + _CURVE_CHUNK]
        start = start_of_day + timedelta(minutes=i * c.density_min)
        out.append(g.unit(_pn(point), FN_CURVE, CurveUnit(start, c.density_min, tuple(chunk))))
    return out


def event_unit(e: Event, point: int | None, ec: tuple[int, int], index: int,
               important: bool) -> g.DataUnit:
    """AFN0E F1/F2 unit with one record; ``index`` is the event's pointer in its class."""
    rec = g.EventRecord(e.erc, EventRecordData(e.time.replace(second=0, microsecond=0),
                                               point or 0, e.detail).encode())
    reply = g.EventReply(ec[0] % 256, ec[1] % 256, index % 256, (index + 1) % 256, (rec,))
    return g.unit(0, 1 if important else 2, reply)


def line_loss_unit(ll: LineLoss) -> g.DataUnit:
    return g.DataUnit((0,), (FN_LINE_LOSS,), LineLossUnit.from_store(ll).encode())


_AFN_OF_KIND = {"daily": 0x0D, "curve": 0x0D, "realtime": 0x0C, "event": 0x0E}


@dataclass(frozen=True, slots=True)
class UploadBatch:
    """The data units of one upload frame and the outbox seqs it retires when confirmed."""

    afn: int
    units: tuple[g.DataUnit, ...]   # including the trailer
    seqs: tuple[int, ...]
    user_bytes: int                 # size of the units on the wire (DA/DT included)


EventInfo = Callable[[Event], tuple[tuple[int, int], int, bool]]


def _units_for(item: OutboxItem, point_of: PointOf, event_info: EventInfo
               ) -> list[g.DataUnit]:
    p = item.payload
    point = point_of(item.meter) if item.meter else None
    if isinstance(p, DailyReading):
        return [daily_unit(p, point)]
    if isinstance(p, CurveDay):
        return curve_units(p, point)
    if isinstance(p, RealtimeReading):
        return [realtime_unit(p, point)]
    if isinstance(p, Event):
        ec, index, important = event_info(p)
        return [event_unit(p, point, ec, index, important)]
    raise EncodeError(f"outbox kind {item.kind!r} has no 1376.1 mapping")


# C, A (5), AFN, SEQ + trailer DA/DT + count; frames must also fit AUX (EC/Tp are not sent).
_FRAME_OVERHEAD = 8 + 4 + 2


def pack_items(items: Iterable[OutboxItem], *, point_of: PointOf, event_info: EventInfo,
               max_user_bytes: int = 2048, skipped: list[tuple[int, str]] | None = None
               ) -> list[UploadBatch]:
    """Pack outbox items, in order, into upload frames of at most ``max_user_bytes``.

    A frame holds one AFN; consecutive items of the same AFN share frames. An item that cannot
    be encoded is logged, left out and reported in ``skipped`` as (seq, reason): it stays in the
    outbox (nothing leaves it without the master's confirmation).
    """
    batches: list[UploadBatch] = []
    cur_afn: int | None = None
    cur_units: list[g.DataUnit] = []
    cur_keys: list[UploadKey] = []
    cur_seqs: list[int] = []
    size = _FRAME_OVERHEAD

    def flush() -> None:
        nonlocal cur_units, cur_keys, cur_seqs, size
        if cur_units and cur_afn is not None:
            trailer = g.DataUnit((0,), (FN_UPLOAD_KEYS,), encode_keys(cur_keys))
            batches.append(UploadBatch(cur_afn, (*cur_units, trailer), tuple(cur_seqs),
                                       size - 8))
        cur_units, cur_keys, cur_seqs, size = [], [], [], _FRAME_OVERHEAD

    for item in items:
        try:
            units = _units_for(item, point_of, event_info)
            for u in units:
                g.encode_da(u.pns)   # validate pn early: a bad point must not spoil a frame
        except (CodecError, ValueError) as exc:
            log.error("outbox seq %d (%s meter %s) cannot be encoded, left pending: %s",
                      item.seq, item.kind, item.meter or "-", exc)
            if skipped is not None:
                skipped.append((item.seq, str(exc)))
            continue
        afn = _AFN_OF_KIND[item.kind]
        need = sum(4 + len(u.data) + _KEY_LEN for u in units)
        if cur_afn != afn or (cur_units and size + need > max_user_bytes):
            flush()
            cur_afn = afn
        cur_units.extend(units)
        cur_keys.extend(UploadKey(item.seq, item.meter) for _ in units)
        cur_seqs.append(item.seq)
        size += need
    flush()
    return batches


# --- master side: upload frame -> items -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ParsedItem:
    """One uploaded item as the master stores it."""

    seq: int
    meter: str | None
    afn: int
    fn: int
    pn: int
    value: Any      # DailyForwardEnergy, CurveUnit, ForwardEnergy, EventReply, LineLossUnit


def parse_upload(frame: g.Frame13761) -> tuple[list[ParsedItem], list[LineLossUnit]]:
    """Items of a terminal's upload frame, keyed by its trailer; private line-loss units apart.

    Raises ``DataUnitError`` when the frame's units do not decode or the trailer does not
    match the items (count or order).
    """
    keys: tuple[UploadKey, ...] | None = None
    values: list[tuple[int, int, Any]] = []
    losses: list[LineLossUnit] = []
    for item in g.decode_units(frame):
        v = item.value
        if isinstance(v, g.RawUnit):
            raise DataUnitError(f"AFN{frame.afn:02X} F{','.join(map(str, v.fns))} "
                                "has no layout here")
        if item.fn == FN_UPLOAD_KEYS:
            if keys is not None:
                raise DataUnitError("two upload-key trailers in one frame")
            keys = v
        elif item.fn == FN_LINE_LOSS and frame.afn == 0x0D:
            losses.append(v)
        else:
            values.append((item.pn, item.fn, v))
    if not values:
        return [], losses
    if keys is None or len(keys) != len(values):
        raise DataUnitError(f"upload keys ({0 if keys is None else len(keys)}) do not match "
                            f"the {len(values)} items of the frame")
    return [ParsedItem(k.seq, k.meter, frame.afn, fn, pn, v)
            for k, (pn, fn, v) in zip(keys, values, strict=True)], losses


# --- layouts of the units above, registered with the codec ------------------------------------

def _len_curve(buf: bytes, pos: int, end: int) -> int:
    if end - pos < 7:
        raise DataUnitError("F101 truncated: needs a 7-byte Td_c")
    return 7 + 4 * buf[pos + 6]


def _len_keys(buf: bytes, pos: int, end: int) -> int:
    if end - pos < 2:
        raise DataUnitError("upload keys truncated")
    return 2 + _KEY_LEN * int.from_bytes(buf[pos:pos + 2], "little")


def register_layouts() -> None:
    """Teach the 1376.1 codec the length rules of F101 and the private Fn used here.

    Without them the codec takes an unknown Fn as all remaining user data, so no unit could
    follow a curve. Idempotent. (The codec has no public registration call yet; the lead may
    move these entries into ``gdw13761.KNOWN_FN``.)
    """
    spec = g._spec  # noqa: SLF001 - the codec's own registry entry builder
    g.KNOWN_FN.setdefault((0x0D, FN_CURVE), spec(
        "forward active energy indication curve",
        (lambda b, p, e: 7, lambda d: bytes(d)), (_len_curve, CurveUnit.decode)))
    g.KNOWN_FN.setdefault((0x0D, FN_LINE_LOSS), spec(
        "district line loss [private]", (lambda b, p, e: 3, g.DayRequest.decode),
        (lambda b, p, e: LineLossUnit.SIZE, LineLossUnit.decode)))
    for afn in (0x0C, 0x0D, 0x0E):
        g.KNOWN_FN.setdefault((afn, FN_UPLOAD_KEYS), spec(
            "upload keys (outbox seq, meter) [private]", (_len_keys, decode_keys)))


register_layouts()
