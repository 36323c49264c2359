"""Read one meter directly (DL/T 645 over a serial port or a TCP serial server).

This is the field engineer's tool behind ``concentrator meter read``: an optical probe or an
RS-485 adapter on the meter, one request, one answer. It is synchronous (pyserial) on
purpose; the daemon reads meters through the mesh and never uses this module.

Failures are ``MeterReadError`` subclasses with a one-line message naming the meter:
``PortUnavailable``, ``NoReply`` (timeout), ``BadReply`` (checksum or garbled answer) and
``ErrorReply`` (the meter answered with its ERR word).
"""

from __future__ import annotations

import logging
import os
import termios
import time
from dataclasses import dataclass, field
from typing import Any

import serial

from concentrator import dlt645
from concentrator.codec import ChecksumError, CodecError, Rejected
from concentrator.dlt645 import DataItem, Dlt645Frame, ErrorBits

__all__ = [
    "ITEMS",
    "MeterReadError",
    "PortUnavailable",
    "NoReply",
    "BadReply",
    "ErrorReply",
    "Reading",
    "MeterLink",
    "open_port",
    "read_di",
    "read_item",
]

log = logging.getLogger(__name__)

# What each named item reads, per protocol edition: a list of alternatives tried in order
# (a meter answering "no such data" to a block is asked for the single value instead), and
# for some items several DIs that together make the item (date + time).
ITEMS: dict[str, dict[int, list[list[int]]]] = {
    "energy": {2007: [[0x0001FF00], [0x00010000]], 1997: [[0x901F], [0x9010]]},
    "voltage": {2007: [[0x0201FF00], [0x02010100]], 1997: [[0xB61F], [0xB611]]},
    "current": {2007: [[0x0202FF00], [0x02020100]], 1997: [[0xB62F], [0xB621]]},
    "power": {2007: [[0x0203FF00], [0x02030000]], 1997: [[0xB630]]},
    "clock": {2007: [[0x04000101, 0x04000102]], 1997: [[0xC010, 0xC011]]},
    "address": {2007: [], 1997: [[0xC032]]},  # 2007 uses the read-address command 0x13
    "status": {2007: [[0x04000503]]},
    "daily-frozen": {2007: []},  # DIs depend on --days-back
}
MAX_FOLLOW_UPS = 16  # a meter that keeps saying "more follows" is broken, not generous


class MeterReadError(Exception):
    """Base of every failure of a direct meter read; ``str()`` is one line for the user."""


class PortUnavailable(MeterReadError):
    """The serial port or TCP endpoint cannot be opened or went away."""


class NoReply(MeterReadError):
    """No reply from the meter before the timeout."""


class BadReply(MeterReadError):
    """A reply arrived but was corrupted (checksum) or not what was asked."""


class ErrorReply(MeterReadError):
    """The meter answered with an error reply; ``err`` holds the ERR bits."""

    def __init__(self, address: str, err: ErrorBits) -> None:
        super().__init__(f"meter {address} replied with error {int(err):02X}: {err.describe()}")
        self.address = address
        self.err = err


@dataclass(frozen=True, slots=True)
class Reading:
    """One value read from a meter."""

    address: str  # the meter that answered
    name: str
    unit: str
    value: Any  # typed value (Decimal, datetime, tuple ...) or raw bytes for an unknown DI
    di: int | None = None  # None for the read-address command
    protocol: int = 2007
    item: DataItem | None = field(default=None, repr=False, compare=False)

    @property
    def text(self) -> str:
        """The value with its unit, e.g. "total 2.26 kWh, tariff 1 1.00 kWh"."""
        if self.item is not None:
            return dlt645.format_value(self.item, self.value)
        if isinstance(self.value, bytes):
            return self.value.hex(" ").upper() or "(empty)"
        return f"{self.value} {self.unit}".rstrip()

    def to_dict(self) -> dict[str, Any]:
        return {
            "meter": self.address,
            "di": dlt645.format_di(self.di, self.protocol) if self.di is not None else None,
            "name": self.name,
            "unit": self.unit,
            "value": dlt645.json_value(self.value),
        }


def open_port(port: str | None = None, tcp: str | None = None, *, baud: int = 2400,
              parity: str = "E") -> serial.SerialBase:
    """Open a serial device (8 data bits, ``parity``, 1 stop bit) or ``HOST:PORT`` over TCP."""
    url = port if tcp is None else f"socket://{tcp}"
    if url is None:
        raise PortUnavailable("give a serial port or a TCP HOST:PORT")
    try:
        return serial.serial_for_url(url, baudrate=baud, bytesize=8, parity=parity, stopbits=1,
                                     timeout=0.05)
    except (serial.SerialException, OSError, ValueError, termios.error) as exc:
        # termios.error: the device refuses the line settings (e.g. parity on some ptys).
        raise PortUnavailable(f"cannot open {url}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """The short cause of an open failure ("No such file or directory"), not pyserial's echo."""
    for cause in (exc, exc.__cause__, exc.__context__):  # pyserial wraps the OSError
        errno = getattr(cause, "errno", None)
        if isinstance(errno, int):
            return os.strerror(errno)
        if isinstance(cause, termios.error) and len(cause.args) > 1:
            return f"not a serial port ({cause.args[1]})"
    return str(exc)


class MeterLink:
    """Request/response with one meter over an open pyserial port, one exchange at a time."""

    def __init__(self, port: serial.SerialBase, *, timeout: float = 2.0) -> None:
        self._port = port
        self.timeout = timeout

    def exchange(self, request: Dlt645Frame) -> Dlt645Frame:
        """Send ``request`` and return the matching normal reply.

        Skips our own echo (half-duplex RS-485 adapters), replies of other meters and
        stale replies to another DI; raises NoReply, BadReply, ErrorReply or PortUnavailable.
        """
        address = request.address
        try:
            self._port.reset_input_buffer()
            self._port.write(dlt645.encode(request))
        except (serial.SerialException, OSError) as exc:
            raise PortUnavailable(f"meter {address}: cannot write to the port: {exc}") from exc
        log.debug("meter %s: sent %02X %s", address, request.control, request.data.hex())
        decoder = dlt645.Dlt645StreamDecoder()
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            try:
                chunk = self._port.read(self._port.in_waiting or 1)
            except (serial.SerialException, OSError) as exc:
                raise PortUnavailable(f"meter {address}: port closed while waiting: {exc}") from exc
            if not chunk:
                continue
            for item in decoder.feed(chunk):
                reply = self._match(request, item)
                if reply is not None:
                    return reply
        raise NoReply(f"meter {address}: no reply within {self.timeout:g} s")

    @staticmethod
    def _match(request: Dlt645Frame, item: Dlt645Frame | Rejected) -> Dlt645Frame | None:
        address = request.address
        if isinstance(item, Rejected):
            if isinstance(item.error, ChecksumError):
                raise BadReply(f"meter {address}: reply has a checksum error ({item.error})")
            log.debug("meter %s: skipped %d bytes of line noise (%s)", address, len(item.raw), item.error)
            return None
        if not item.is_reply:
            return None  # our own echo
        wildcard = address in (dlt645.WILDCARD_ADDRESS, dlt645.BROADCAST_ADDRESS)
        if not wildcard and item.address != address:
            log.warning("meter %s: ignored a reply from meter %s", address, item.address)
            return None
        if item.function != request.function:
            log.warning("meter %s: ignored a reply to function %02X", address, item.function)
            return None
        if item.is_error:
            raise ErrorReply(item.address, item.error_bits or ErrorBits(0))
        if request.di is not None and item.di != request.di:
            log.warning("meter %s: ignored a stale reply for DI %s", address,
                        "none" if item.di is None else f"{item.di:X}")
            return None
        return item


def read_di(link: MeterLink, address: str, di: int, protocol: int = 2007) -> Reading:
    """Read one data identifier; unknown DIs come back as raw bytes."""
    if protocol == 1997:
        reply = link.exchange(dlt645.read_request_1997(address, di))
        value_bytes = reply.value_bytes or b""
    else:
        reply = link.exchange(dlt645.read_request(address, di))
        value_bytes = reply.value_bytes or b""
        seq = 0
        follow = reply
        # Long items come in several frames: ask with 0x12 and the frame number.
        while follow.has_follow_up:
            seq += 1
            if seq > MAX_FOLLOW_UPS:
                raise BadReply(f"meter {address}: more than {MAX_FOLLOW_UPS} follow-up frames")
            follow = link.exchange(dlt645.read_follow_up_request(address, di, seq))
            value_bytes += follow.value_bytes or b""
    try:
        item: DataItem | None = dlt645.lookup(di, protocol)
    except CodecError:
        item = None
    if item is None:
        log.info("meter %s: DI %s = %s (not in the registry)", reply.address,
                 dlt645.format_di(di, protocol), value_bytes.hex())
        return Reading(reply.address, f"data {dlt645.format_di(di, protocol)}", "", value_bytes, di, protocol)
    try:
        value = item.decode(value_bytes)
    except CodecError as exc:
        raise BadReply(f"meter {reply.address}: {item.name} value {value_bytes.hex().upper()} "
                       f"cannot be decoded: {exc}") from exc
    log.info("meter %s: %s = %s", reply.address, item.name, dlt645.format_value(item, value))
    return Reading(reply.address, item.name, item.unit, value, di, protocol, item)


def read_item(link: MeterLink, address: str, item: str, *, protocol: int = 2007,
              days_back: int = 1) -> list[Reading]:
    """Read a named item ("energy", "voltage", ..., "daily-frozen") from one meter."""
    per_protocol = ITEMS.get(item)
    if per_protocol is None or protocol not in per_protocol:
        raise ValueError(f"item {item!r} is not available for DL/T 645-{protocol}")
    if item == "address" and protocol == 2007:
        reply = link.exchange(dlt645.read_address_request())
        try:
            found = dlt645.address_from_reply(reply)
        except CodecError as exc:
            raise BadReply(f"meter {reply.address}: {exc}") from exc
        log.info("meter %s: read address", found)
        return [Reading(found, "communication address", "", found, None, protocol)]
    if item == "daily-frozen":
        if not 1 <= days_back <= 62:
            raise ValueError("days back must be 1..62 (daily freezes a meter keeps)")
        choices = [[0x05060000 | days_back, 0x05060100 | days_back]]
    else:
        choices = per_protocol[protocol]
    for n, dis in enumerate(choices):
        try:
            return [read_di(link, address, di, protocol) for di in dis]
        except ErrorReply as exc:
            # Only "no such data" means "try the narrower item"; anything else is final.
            if n == len(choices) - 1 or not exc.err & ErrorBits.NO_DATA:
                raise
            log.info("meter %s: %s not supported, trying %s", address,
                     dlt645.format_di(dis[0], protocol), dlt645.format_di(choices[n + 1][0], protocol))
    raise AssertionError("unreachable: the last choice either returns or raises")
