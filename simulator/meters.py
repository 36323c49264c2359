"""Simulated DL/T 645 meters: one slave per meter (and the district summary meter).

A :class:`MeterSlave` answers DL/T 645-2007 (or -1997) requests from the meter truth
(``simulator.meterdata.MeterData``) at the current simulated time, through the project's
codec (``concentrator.dlt645``): the bytes are those a field meter sends.

2007 slave, what it answers:

* 0x11 read: combined/forward/reverse active energy (total, tariffs, FF blocks, settlement
  days 1..12 back), daily freezes 05 06 00/01/02 nn and the daily freeze block 05 06 FF nn
  (freeze time + forward + reverse active blocks, concatenated as DL/T 645-2007 table A.6 lays
  out a freeze block for a meter that freezes active energy only; a meter built with
  ``freeze_block=False`` answers it "no such data", as older 2007 meters do), hourly freezes
  05 04 00/01/02/FF nn,
  voltage/current/active power/power factor (phases, totals, FF blocks), neutral current,
  frequency, date/time (its own drifting clock), comm address and meter number, status words
  (word 3: relay state and command, pre-trip alarm, protect, prepaid bits), power-down count
  and records 03 11 00 nn, last trip/close records 1D/1E 00 01 01.
  Unknown DI -> error reply ``D1 01 35`` (ERR bit 1, no such data).
* 0x13 read address (to AA..AA): ``93`` with its address.
* 0x08 broadcast time (to 99..99): corrects its clock when the error is within
  ``BROADCAST_LIMIT_S`` (5 min, common meter behaviour [MEM]); never replies.
* 0x14 write of 04 00 01 01/02/0C (date/time) with the right password: sets the clock.
* 0x1C remote control with the right password and an expiry in the future (meter clock):
  trip / close / close-allowed / alarm / protect; trips call ``MeterData.set_relay``, so the
  meter stops counting. Wrong password -> ERR bit 2; expired, or a trip while protected ->
  ERR bit 0.
* Anything else -> ERR bit 0 (other error).

1997 slave (2-byte DIs, 0x01 read): 9010/901F/9011-9014, 9020/902F, B611-B613/B61F,
B621-B623/B62F, B630, C010, C011, C032; unknown DI -> ``C1 01 35``. It does not understand
2007 function codes and stays silent (as the field's 1997 meters do).

:class:`MeterBank` is the module's view of the meters (``simulator.module.MeterPort``): it
gives a request to the meters on a node's UART / a collector's RS-485 bus and returns the
reply with the time it took (``Channel.meter_reply_time``: UART at 2400/1200 baud, first-byte
latency, collector polling); a meter silent once is asked once more, as a node's read manager
does.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from concentrator import dlt645 as d
from concentrator.codec import CodecError, Rejected
from plc_driver.link import ByteLink, LinkClosed
from simulator.channel import Channel, _mix64
from simulator.meterdata import Freeze, Instant, MeterData
from simulator.scenario import Scenario

__all__ = [
    "MeterSlave",
    "MeterBank",
    "MeterSource",
    "TruthSource",
    "SummarySource",
    "serve_meter",
    "DEFAULT_PASSWORD",
    "BROADCAST_LIMIT_S",
]

log = logging.getLogger(__name__)

DEFAULT_PASSWORD = "02000000"  # level 02, password 000000 (the V4 capture's test meter)
BROADCAST_LIMIT_S = 300.0  # broadcast time is accepted only within +-5 min [MEM]
NODE_WAIT_S = 0.8  # STA waits this long for a meter's first byte (HiSilicon app_nv.h)
COLLECTOR_WAIT_S = 3.6  # I-type collector
_UART_BITS = 11  # 8E1

ERR_OTHER = int(d.ErrorBits.OTHER)
ERR_NO_DATA = int(d.ErrorBits.NO_DATA)
ERR_PASSWORD = int(d.ErrorBits.PASSWORD)


class MeterSource(Protocol):
    """Where a slave's values come from (a meter's truth, or the summary meter's)."""

    address: str

    def energy(self, t: float, reverse: bool = False) -> tuple[Decimal, tuple[Decimal, ...]]: ...
    def instant(self, t: float) -> Instant | None: ...
    def clock(self, t: float) -> datetime: ...
    def set_clock(self, t: float, meter_time: datetime) -> None: ...
    def daily_freeze(self, t: float, n: int) -> Freeze | None: ...
    def hourly_freeze(self, t: float, n: int) -> Freeze | None: ...
    def power_downs(self, t: float) -> list[tuple[datetime, datetime | None]]: ...
    def relay_open(self, t: float) -> bool: ...
    def set_relay(self, open_: bool, t: float) -> None: ...
    def relay_events(self, t: float) -> list[tuple[datetime, bool]]: ...
    def tariffs(self) -> int: ...


class TruthSource:
    """A customer meter's values from ``MeterData``."""

    def __init__(self, data: MeterData, address: str) -> None:
        self.data = data
        self.address = address

    def energy(self, t: float, reverse: bool = False) -> tuple[Decimal, tuple[Decimal, ...]]:
        return self.data.energy(self.address, t, reverse)

    def instant(self, t: float) -> Instant | None:
        return self.data.instant(self.address, t)

    def clock(self, t: float) -> datetime:
        return self.data.clock(self.address, t)

    def set_clock(self, t: float, meter_time: datetime) -> None:
        self.data.set_clock(self.address, t, meter_time)

    def daily_freeze(self, t: float, n: int) -> Freeze | None:
        return self.data.daily_freeze(self.address, t, n)

    def hourly_freeze(self, t: float, n: int) -> Freeze | None:
        return self.data.hourly_freeze(self.address, t, n)

    def power_downs(self, t: float) -> list[tuple[datetime, datetime | None]]:
        return self.data.power_downs(self.address, t)

    def relay_open(self, t: float) -> bool:
        return self.data.relay_open(self.address, t)

    def set_relay(self, open_: bool, t: float) -> None:
        self.data.set_relay(self.address, open_, t)

    def relay_events(self, t: float) -> list[tuple[datetime, bool]]:
        return self.data.relay_events(self.address, t)

    def tariffs(self) -> int:
        return self.data.scenario.meter(self.address).tariffs


class SummarySource:
    """The district summary meter (考核表): one register, the summary truth, an exact clock
    unless set. It has no relay (remote control is refused) and no instantaneous values."""

    def __init__(self, data: MeterData, address: str) -> None:
        self.data = data
        self.address = address
        self.start = data.scenario.start
        self._offset = 0.0

    def energy(self, t: float, reverse: bool = False) -> tuple[Decimal, tuple[Decimal, ...]]:
        if reverse:
            zero = Decimal("0.00")
            return zero, (zero,)
        e = self.data.summary_energy(t)
        return e, (e,)

    def instant(self, t: float) -> Instant | None:
        return None

    def clock(self, t: float) -> datetime:
        return self.start + timedelta(seconds=t + self._offset)

    def set_clock(self, t: float, meter_time: datetime) -> None:
        self._offset = (meter_time - self.start).total_seconds() - t

    def _freeze(self, t: float, n: int, period: float) -> Freeze | None:
        now = self.clock(t)
        midnight = datetime.combine(now.date(), datetime.min.time())
        mark = midnight + timedelta(seconds=math.floor((now - midnight).total_seconds() / period) * period)
        mark -= timedelta(seconds=(n - 1) * period)
        tt = (mark - self.start).total_seconds() - self._offset
        return Freeze(mark, self.energy(tt), self.energy(tt, True))

    def daily_freeze(self, t: float, n: int) -> Freeze | None:
        return self._freeze(t, n, 86400.0)

    def hourly_freeze(self, t: float, n: int) -> Freeze | None:
        return self._freeze(t, n, 3600.0)

    def power_downs(self, t: float) -> list[tuple[datetime, datetime | None]]:
        return []

    def relay_open(self, t: float) -> bool:
        return False

    def set_relay(self, open_: bool, t: float) -> None:
        raise ValueError("the summary meter has no load relay")

    def relay_events(self, t: float) -> list[tuple[datetime, bool]]:
        return []

    def tariffs(self) -> int:
        return 1


@dataclass(slots=True)
class _Controls:
    """Remote-control state the truth does not keep (status word 3 bits)."""

    trip_commanded: bool = False
    alarm: bool = False
    protected: bool = False
    operator: str = "00000000"


class MeterSlave:
    """One DL/T 645 meter: ``handle(frame, t)`` returns the reply frame or None."""

    def __init__(self, source: MeterSource, *, protocol: int = 2007,
                 password: str = DEFAULT_PASSWORD, prepaid: str = "none",
                 freeze_block: bool = True) -> None:
        self.source = source
        self.freeze_block = freeze_block
        self.address = source.address
        self.protocol = protocol
        self.password = password
        self.prepaid = prepaid
        self.controls = _Controls()

    # --- entry -------------------------------------------------------------------------------
    def handle(self, frame: d.Dlt645Frame, t: float) -> d.Dlt645Frame | None:
        """React to a request at scenario time ``t``; None when a meter stays silent."""
        if frame.is_reply:
            return None
        addr = frame.address
        func = frame.function
        if addr == d.BROADCAST_ADDRESS:
            if func == 0x08:
                self._broadcast_time(frame, t)
            return None  # meters never answer a broadcast
        if addr == d.WILDCARD_ADDRESS:
            if func == 0x13 and self.protocol == 2007:
                return d.read_address_reply(self.address)
            if self.protocol == 1997 and func == 0x01:
                return self._read_1997(frame, t)
            if func != 0x11:
                return None
        elif addr != self.address:
            return None
        if self.protocol == 1997:
            return self._read_1997(frame, t) if func == 0x01 else None
        try:
            if func == 0x11:
                return self._read(frame, t)
            if func == 0x1C:
                return self._remote_control(frame, t)
            if func == 0x14:
                return self._write(frame, t)
        except CodecError as exc:
            log.info("meter %s: bad request %02X: %s", self.address, frame.control, exc)
            return d.error_reply(self.address, func, ERR_OTHER)
        log.info("meter %s: function %02X not supported", self.address, func)
        return d.error_reply(self.address, func, ERR_OTHER)

    # --- 2007 read ---------------------------------------------------------------------------
    def _read(self, frame: d.Dlt645Frame, t: float) -> d.Dlt645Frame:
        di = frame.di
        if di is not None and di >> 8 == 0x0506FF and 1 <= di & 0xFF <= 0x3E:
            return self._daily_block(di, t)
        value = None if di is None else self.value(di, t)
        if value is None:
            log.info("meter %s: no data for DI %s", self.address,
                     "?" if di is None else d.format_di(di))
            return d.error_reply(self.address, 0x11, ERR_NO_DATA)
        try:
            raw = d.encode_value(di, value)
        except CodecError as exc:
            log.warning("meter %s: DI %s value %r not encodable: %s", self.address,
                        d.format_di(di), value, exc)
            return d.error_reply(self.address, 0x11, ERR_OTHER)
        return d.read_reply(self.address, di, raw)

    def value(self, di: int, t: float) -> Any:
        """The typed value of a 2007 DI at ``t`` (what ``dlt645.decode_value`` gives back),
        or None when the meter has no such data."""
        src = self.source
        di3, di2, di1, di0 = di >> 24, di >> 16 & 0xFF, di >> 8 & 0xFF, di & 0xFF
        if di3 == 0x00 and di2 in (0, 1, 2) and di0 <= 12:
            return self._energy_value(di2, di1, di0, t)
        if di3 == 0x02:
            return self._instant_value(di, t)
        if di3 == 0x05 and di2 in (0x04, 0x06) and 1 <= di0:
            return self._freeze_value(di2, di1, di0, t)
        if di == 0x04000101:
            return src.clock(t).date()
        if di == 0x04000102:
            return src.clock(t).time().replace(microsecond=0)
        if di == 0x0400010C:
            return src.clock(t).replace(microsecond=0)
        if di in (0x04000401, 0x04000402):
            return self.address
        if di == 0x04000503:
            return self.status_word3(t)
        if 0x04000501 <= di <= 0x04000507:
            return 0
        if di == 0x040005FF:
            return (0, 0, self.status_word3(t).word, 0, 0, 0, 0)
        if di == 0x04000704:
            return 2400 if self.protocol == 2007 else 1200
        if di == 0x03110000:
            return len(src.power_downs(t))
        if di >> 8 == 0x031100 and 1 <= di0 <= 10:
            downs = src.power_downs(t)
            return downs[di0 - 1] if di0 <= len(downs) else (None, None)
        if di in (0x1D000101, 0x1E000101):
            return self._relay_record(opened=di == 0x1D000101, t=t)
        return None

    def _energy_value(self, kind: int, tariff: int, back: int, t: float) -> Any:
        at = t if back == 0 else self._settlement_t(back, t)
        if kind == 0:
            fwd, rev = self.source.energy(at), self.source.energy(at, True)
            total = fwd[0] - rev[0]
            regs = tuple(a - b for a, b in zip(fwd[1], rev[1], strict=True))
        else:
            total, regs = self.source.energy(at, reverse=kind == 2)
        if tariff == 0xFF:
            return (total, *regs)
        if tariff == 0:
            return total
        return regs[tariff - 1] if tariff <= len(regs) else None

    def _settlement_t(self, back: int, t: float) -> float:
        """True time of the ``back``-th most recent settlement (1st of the month, 00:00)."""
        now = self.source.clock(t)
        y, m = now.year, now.month
        for _ in range(back - 1):
            y, m = (y, m - 1) if m > 1 else (y - 1, 12)
        mark = datetime(y, m, 1)
        return t - (now - mark).total_seconds()

    def _instant_value(self, di: int, t: float) -> Any:
        inst = self.source.instant(t)
        if inst is None:
            return None
        di2, di1 = di >> 16 & 0xFF, di >> 8 & 0xFF
        if di == 0x02800001:
            # Single-phase: the neutral carries the phase current; balanced three-phase: ~0.
            return abs(sum(inst.current)) if sum(1 for v in inst.voltage if v) <= 1 else Decimal("0.000")
        if di == 0x02800002:
            return inst.frequency
        if di & 0xFF:
            return None
        live = [i for i, v in enumerate(inst.voltage) if v]
        if di2 == 1 and 1 <= di1 <= 3:
            return inst.voltage[di1 - 1]
        if di2 == 1 and di1 == 0xFF:
            return inst.voltage
        if di2 == 2 and 1 <= di1 <= 3:
            return inst.current[di1 - 1]
        if di2 == 2 and di1 == 0xFF:
            return inst.current
        if di2 == 3:
            share = inst.active_kw / len(live) if live else Decimal(0)
            phases = tuple(share if i in live else Decimal(0) for i in range(3))
            if di1 == 0:
                return inst.active_kw
            if 1 <= di1 <= 3:
                return phases[di1 - 1]
            if di1 == 0xFF:
                return (inst.active_kw, *phases)
        if di2 == 6:
            phases = tuple(inst.power_factor if i in live else Decimal("1.000") for i in range(3))
            if di1 == 0:
                return inst.power_factor
            if 1 <= di1 <= 3:
                return phases[di1 - 1]
            if di1 == 0xFF:
                return (inst.power_factor, *phases)
        return None

    def _freeze_value(self, family: int, item: int, n: int, t: float) -> Any:
        if family == 0x06 and n > 0x3E or family == 0x04 and n > 0xFE:
            return None
        fz = self.source.daily_freeze(t, n) if family == 0x06 else self.source.hourly_freeze(t, n)
        if fz is None:
            return None
        if item == 0x00:
            return fz.time
        if family == 0x06 and item in (1, 2):
            total, regs = fz.forward if item == 1 else fz.reverse
            return (total, *regs)
        if family == 0x04 and item in (1, 2):
            return (fz.forward if item == 1 else fz.reverse)[0]
        if family == 0x04 and item == 0xFF:
            return (fz.time, fz.forward[0])
        return None

    def _daily_block(self, di: int, t: float) -> d.Dlt645Frame:
        """05 06 FF nn: the three frozen items' value bytes back to back (no separator)."""
        nn = di & 0xFF
        fz = self.source.daily_freeze(t, nn) if self.freeze_block else None
        if fz is None:
            return d.error_reply(self.address, 0x11, ERR_NO_DATA)
        raw = (d.encode_value(0x05060000 | nn, fz.time)
               + d.encode_value(0x05060100 | nn, (fz.forward[0], *fz.forward[1]))
               + d.encode_value(0x05060200 | nn, (fz.reverse[0], *fz.reverse[1])))
        return d.read_reply(self.address, di, raw)

    def _relay_record(self, opened: bool, t: float) -> Any:
        for when, op in self.source.relay_events(t):
            if op == opened:
                fwd, rev = self.source.energy(t)[0], self.source.energy(t, True)[0]
                rest = (bytes.fromhex(self.controls.operator)[::-1] + d.encode_value(0x00010000, fwd)
                        + d.encode_value(0x00020000, rev))
                return (when.replace(microsecond=0), rest)
        return (None, bytes(12))

    def status_word3(self, t: float) -> d.StatusWord3:
        c = self.controls
        return d.StatusWord3(relay_open=self.source.relay_open(t), relay_trip_commanded=c.trip_commanded,
                             pre_trip_alarm=c.alarm, prepaid=self.prepaid, protected=c.protected,
                             remote_account_open=self.prepaid != "none")

    # --- clock ------------------------------------------------------------------------------
    def _broadcast_time(self, frame: d.Dlt645Frame, t: float) -> None:
        try:
            when = d.parse_broadcast_time(frame)
        except CodecError as exc:
            log.info("meter %s: bad broadcast time: %s", self.address, exc)
            return
        error = (self.source.clock(t) - when).total_seconds()
        if abs(error) > BROADCAST_LIMIT_S:
            log.info("meter %s: broadcast time refused, clock off by %.0f s", self.address, error)
            return
        self.source.set_clock(t, when)

    def _check_password(self, data: bytes) -> bool:
        given = f"{data[0]:02X}" + data[1:4][::-1].hex().upper()
        return given == self.password

    def _write(self, frame: d.Dlt645Frame, t: float) -> d.Dlt645Frame:
        data = frame.data
        if len(data) < 12:
            return d.error_reply(self.address, 0x14, ERR_OTHER)
        if not self._check_password(data[4:8]):
            log.info("meter %s: write refused, wrong password", self.address)
            return d.error_reply(self.address, 0x14, ERR_PASSWORD)
        di = int.from_bytes(data[:4], "little")
        value = d.decode_value(di, data[12:]) if di in (0x04000101, 0x04000102, 0x0400010C) else None
        if value is None:
            return d.error_reply(self.address, 0x14, ERR_OTHER)
        now = self.source.clock(t)
        if di == 0x04000101:
            new = datetime.combine(value, now.time())
        elif di == 0x04000102:
            new = datetime.combine(now.date(), value)
        else:
            new = value
        self.source.set_clock(t, new)
        log.info("meter %s: clock set to %s", self.address, new)
        return d.control_reply(self.address, 0x14)

    # --- remote control ---------------------------------------------------------------------
    def _remote_control(self, frame: d.Dlt645Frame, t: float) -> d.Dlt645Frame:
        cmd = d.parse_remote_control(frame)
        if cmd.password != self.password:
            log.info("meter %s: remote control refused, wrong password", self.address)
            return d.error_reply(self.address, 0x1C, ERR_PASSWORD)
        if cmd.expiry is None or cmd.expiry <= self.source.clock(t):
            log.info("meter %s: remote control refused, expired %s", self.address, cmd.expiry)
            return d.error_reply(self.address, 0x1C, ERR_OTHER)
        c = self.controls
        action = cmd.action
        try:
            if action == d.RemoteAction.TRIP:
                if c.protected:
                    log.info("meter %s: trip refused, meter is protected", self.address)
                    return d.error_reply(self.address, 0x1C, ERR_OTHER)
                c.trip_commanded = True
                if not self.source.relay_open(t):
                    self.source.set_relay(True, t)
            elif action in (d.RemoteAction.CLOSE, d.RemoteAction.CLOSE_ALLOWED):
                c.trip_commanded = False
                # "Close allowed" waits for the customer's button; only a direct close closes.
                if action == d.RemoteAction.CLOSE and self.source.relay_open(t):
                    self.source.set_relay(False, t)
            elif action == d.RemoteAction.ALARM:
                c.alarm = True
            elif action == d.RemoteAction.ALARM_RELEASE:
                c.alarm = False
            elif action == d.RemoteAction.PROTECT:
                c.protected = True
            elif action == d.RemoteAction.PROTECT_RELEASE:
                c.protected = False
            else:
                return d.error_reply(self.address, 0x1C, ERR_OTHER)
        except ValueError as exc:  # a meter without relay (summary meter)
            log.info("meter %s: remote control refused: %s", self.address, exc)
            return d.error_reply(self.address, 0x1C, ERR_OTHER)
        c.operator = cmd.operator
        log.info("meter %s: remote control %s by operator %s", self.address,
                 getattr(action, "name", action), cmd.operator)
        return d.control_reply(self.address, 0x1C)

    # --- 1997 -------------------------------------------------------------------------------
    def _read_1997(self, frame: d.Dlt645Frame, t: float) -> d.Dlt645Frame | None:
        di = frame.di
        value = None if di is None else self.value_1997(di, t)
        if value is None:
            return d.error_reply(self.address, 0x01, ERR_NO_DATA)
        try:
            raw = d.encode_value(di, value, 1997)
        except CodecError:
            return d.error_reply(self.address, 0x01, ERR_OTHER)
        return d.read_reply_1997(self.address, di, raw)

    def value_1997(self, di: int, t: float) -> Any:
        """Typed value of a 1997 two-byte DI at ``t`` (None: no such data)."""
        src = self.source
        if di >> 4 in (0x901, 0x902):
            total, regs = src.energy(t, reverse=di >> 4 == 0x902)
            k = di & 0xF
            if k == 0:
                return total
            if k == 0xF:
                return (total, *regs)
            return regs[k - 1] if k <= len(regs) else None
        inst = src.instant(t) if di >> 8 == 0xB6 else None
        if inst is not None:
            if 0xB611 <= di <= 0xB613:
                return inst.voltage[di - 0xB611].quantize(Decimal(1))
            if di == 0xB61F:
                return tuple(v.quantize(Decimal(1)) for v in inst.voltage)
            if 0xB621 <= di <= 0xB623:
                return abs(inst.current[di - 0xB621]).quantize(Decimal("0.01"))
            if di == 0xB62F:
                return tuple(abs(i).quantize(Decimal("0.01")) for i in inst.current)
            if di == 0xB630:
                return max(inst.active_kw, Decimal(0))
        if di == 0xC010:
            return src.clock(t).date()
        if di == 0xC011:
            return src.clock(t).time().replace(microsecond=0)
        if di == 0xC032:
            return self.address
        return None


def _has_freeze_block(seed: int, address: str) -> bool:
    # About 5 % of 2007 meters (early firmware) answer the daily freeze block "no such data"
    # and are read item by item (our choice; it keeps the reader's fallback exercised).
    return _mix64(seed * 37 + int(address)) % 100 >= 5


def _prepaid(seed: int, address: str) -> str:
    # About 30 % of residential meters are money-prepaid in the districts we model (our choice).
    return "money" if _mix64(seed * 31 + int(address)) % 100 < 30 else "none"


class MeterBank:
    """All meters of a district behind their nodes (implements ``simulator.module.MeterPort``)."""

    def __init__(self, scenario: Scenario, channel: Channel, data: MeterData, *,
                 passwords: dict[str, str] | None = None) -> None:
        self.scenario = scenario
        self.channel = channel
        self.data = data
        self.slaves: dict[str, MeterSlave] = {}
        self.by_node: dict[str, list[MeterSlave]] = {}
        pw = passwords or {}
        for m in scenario.all_meters():
            slave = MeterSlave(TruthSource(data, m.address),
                               protocol=1997 if m.protocol == "dlt645-1997" else 2007,
                               password=pw.get(m.address, DEFAULT_PASSWORD),
                               prepaid=_prepaid(scenario.seed, m.address),
                               freeze_block=_has_freeze_block(scenario.seed, m.address))
            self.slaves[m.address] = slave
            self.by_node.setdefault(m.collector or m.address, []).append(slave)
        self.summary: MeterSlave | None = None
        if scenario.summary_meter is not None:
            self.summary = MeterSlave(SummarySource(data, scenario.summary_meter.address))

    def exchange(self, node: str, request: bytes, t: float,
                 rng: random.Random) -> tuple[bytes | None, float]:
        """The node hands ``request`` to its meters; (reply or None, seconds taken)."""
        slaves = self.by_node.get(node, [])
        collector = bool(slaves) and slaves[0].address != node
        wait = (COLLECTOR_WAIT_S if collector else NODE_WAIT_S) + len(request) * _UART_BITS / 2400
        try:
            frame, _ = d.parse_prefix(request)
        except CodecError as exc:
            log.info("node %s: meter request not DL/T 645 (%s)", node, exc)
            return None, wait
        replies = []
        for s in slaves:
            if not self.data.present(s.address, t):
                continue
            r = s.handle(frame, t)
            if r is not None:
                replies.append((s, r))
        if len(replies) != 1:
            if len(replies) > 1:
                log.info("node %s: %d meters answered at once, garbled", node, len(replies))
            return None, wait
        slave, reply = replies[0]
        raw = d.encode(reply)
        dt = self.channel.meter_reply_time(slave.address, len(request), len(raw), rng, t)
        if dt is not None:
            return raw, dt
        # The node asks its meter once more after the first-byte wait (HiSilicon read manager
        # "meter-side 1", field-figures §1.1): a reply lost on the UART costs time, not the
        # read. A meter that is off stays silent the second time too.
        dt = self.channel.meter_reply_time(slave.address, len(request), len(raw), rng, t + wait)
        if dt is None:
            log.debug("meter %s: no reply twice (powered off or lost)", slave.address)
            return None, 2 * wait
        return raw, wait + dt

    def broadcast(self, request: bytes, t: float) -> int:
        """Deliver a broadcast (e.g. 0x08 time) to every powered meter."""
        try:
            frame, _ = d.parse_prefix(request)
        except CodecError as exc:
            log.info("broadcast frame not DL/T 645 (%s), dropped", exc)
            return 0
        n = 0
        for slave in self.slaves.values():
            if self.data.powered(slave.address, t) and self._node_up(slave.address, t):
                slave.handle(frame, t)
                n += 1
        return n

    def _node_up(self, address: str, t: float) -> bool:
        m = self.scenario.meter(address)
        host = m.collector or address
        return not self.channel.has_node(host) or self.channel.is_up(host, t)


def reply_delay(request: bytes, reply: bytes, baud: int, rng: random.Random) -> float:
    """UART time of request and reply at ``baud`` plus a first-byte latency (50-300 ms)."""
    return (len(request) + len(reply)) * _UART_BITS / baud + rng.uniform(0.05, 0.3)


async def serve_meter(link: ByteLink, slave: MeterSlave, now: Callable[[], float], *,
                      baud: int = 2400, seed: int = 0) -> None:
    """Serve one meter on a point-to-point link (RS-485 to the concentrator) until it closes."""
    dec = d.Dlt645StreamDecoder()
    rng = random.Random(f"meter-link:{slave.address}:{seed}")
    loop = asyncio.get_running_loop()
    busy_until = 0.0
    while True:
        try:
            chunk = await link.read()
        except LinkClosed:
            log.info("meter %s: link closed", slave.address)
            return
        for item in dec.feed(chunk):
            if isinstance(item, Rejected):
                log.info("meter %s: rejected %s: %s", slave.address, item.raw[:32].hex(" "), item.error)
                continue
            req = d.encode(item)
            reply = slave.handle(item, now())
            if reply is None:
                continue
            raw = d.encode(reply)
            # Replies leave in order; each waits for the previous one on the half-duplex bus.
            at = max(loop.time(), busy_until) + reply_delay(req, raw, baud, rng)
            busy_until = at
            loop.call_at(at, _write_quietly, link, raw, slave.address)


def _write_quietly(link: ByteLink, raw: bytes, address: str) -> None:
    try:
        link.write(raw)
    except LinkClosed:
        log.info("meter %s: link closed before the reply went out", address)

