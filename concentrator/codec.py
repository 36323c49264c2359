"""Shared pieces of the three sans-IO wire codecs (DL/T 645, Q/GDW 1376.2, Q/GDW 1376.1).

The error tree is the only thing a decoder may raise::

    CodecError                  base of everything a codec raises
    ├── IncompleteFrame         more bytes are needed (one-shot decode of a short buffer)
    ├── ChecksumError           frame is complete but its CS byte is wrong
    ├── FrameFormatError        start/end bytes, length fields or layout are wrong
    ├── DataUnitError           the frame is sound but a data unit/identifier cannot be decoded
    └── EncodeError             *local* misuse: a value cannot be put on the wire

``StreamDecoder`` turns any protocol's ``parse_prefix`` function into a streaming decoder:
feed it bytes in any split and it returns whole frames, skips leading garbage, resynchronises
after a bad frame, and never buffers more than ``max_buffer`` bytes. Bad frames come out as
``Rejected`` events (so the caller can log them) rather than exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = [
    "CodecError",
    "IncompleteFrame",
    "ChecksumError",
    "FrameFormatError",
    "DataUnitError",
    "EncodeError",
    "Rejected",
    "StreamDecoder",
    "bcd_to_int",
    "int_to_bcd",
    "bcd_byte",
    "from_bcd_byte",
    "address_to_wire",
    "address_from_wire",
]


class CodecError(Exception):
    """Base class of every error a codec raises."""


class IncompleteFrame(CodecError):
    """The buffer holds the start of a frame but not all of it."""


class ChecksumError(CodecError):
    """The frame is complete but the checksum does not match."""


class FrameFormatError(CodecError):
    """Start/end bytes, length fields or the frame layout are wrong."""


class DataUnitError(CodecError):
    """The frame is well formed but a data unit or identifier cannot be decoded."""


class EncodeError(CodecError):
    """A value given to an encoder cannot be represented on the wire (caller's mistake)."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A stretch of input a stream decoder discarded, with the reason."""

    error: CodecError
    raw: bytes


F = TypeVar("F")


class StreamDecoder(Generic[F]):
    """Streaming frame decoder built from a protocol's ``parse_prefix`` function.

    ``parse_prefix(buf)`` must decode one frame that starts at ``buf[0]`` and return
    ``(frame, bytes_consumed)``; raise ``IncompleteFrame`` when more bytes are needed and any
    other ``CodecError`` when ``buf`` does not start with a valid frame.
    ``start_bytes`` are the bytes a frame may start with (e.g. ``b"\\x68\\xfe"``).
    """

    def __init__(
        self,
        parse_prefix: Callable[[bytes], tuple[F, int]],
        start_bytes: bytes = b"\x68",
        max_buffer: int = 4096,
    ) -> None:
        self._parse = parse_prefix
        self._starts = frozenset(start_bytes)
        self._max = max_buffer
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes currently held waiting for the rest of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()

    def _next_start(self, frm: int) -> int:
        # The first start byte at ``frm`` or after, found by ``bytearray.find`` per start byte
        # (a partly received frame is rescanned for a later start on every chunk).
        buf = self._buf
        found = -1
        for start in self._starts:
            i = buf.find(start, frm)
            if i >= 0 and (found < 0 or i < found):
                found = i
        return found

    def feed(self, data: bytes) -> list[F | Rejected]:
        """Add bytes; return the frames (and rejections) completed by them, in order."""
        self._buf += data
        out: list[F | Rejected] = []
        buf = self._buf
        while buf:
            start = self._next_start(0)
            if start < 0:
                out.append(Rejected(FrameFormatError("no frame start in input"), bytes(buf)))
                buf.clear()
                break
            if start > 0:
                out.append(Rejected(FrameFormatError("garbage before frame start"), bytes(buf[:start])))
                del buf[:start]
            try:
                frame, used = self._parse(bytes(buf))
            except IncompleteFrame:
                # A false start (a 0x68 inside garbage with a large length) must not stall the
                # stream: if a later start already holds a complete valid frame, skip to it.
                later = self._complete_frame_after(1)
                if later is not None:
                    out.append(Rejected(FrameFormatError("truncated frame"), bytes(buf[:later])))
                    del buf[:later]
                    continue
                if len(buf) > self._max:
                    out.append(Rejected(FrameFormatError("frame exceeds buffer limit"), bytes(buf[:1])))
                    del buf[:1]
                    continue
                break
            except CodecError as exc:
                # Drop the start byte and resynchronise on the next candidate.
                nxt = self._next_start(1)
                cut = nxt if nxt > 0 else len(buf)
                out.append(Rejected(exc, bytes(buf[:cut])))
                del buf[:cut]
                continue
            out.append(frame)
            del buf[:used]
        return out

    def _complete_frame_after(self, frm: int) -> int | None:
        buf = bytes(self._buf)
        i = self._next_start(frm)
        while i >= 0:
            try:
                self._parse(buf[i:])
                return i
            except CodecError:
                pass
            i = self._next_start(i + 1)
        return None


# --- BCD helpers (every protocol here sends multi-byte BCD low byte first) -------------------

def bcd_byte(value: int) -> int:
    """0..99 -> one packed-BCD byte."""
    if not 0 <= value <= 99:
        raise EncodeError(f"{value} does not fit one BCD byte")
    return (value // 10) << 4 | (value % 10)


def from_bcd_byte(b: int) -> int:
    """One packed-BCD byte -> 0..99; raises DataUnitError on a non-decimal nibble."""
    hi, lo = b >> 4, b & 0x0F
    if hi > 9 or lo > 9:
        raise DataUnitError(f"byte {b:02X} is not BCD")
    return hi * 10 + lo


def bcd_to_int(data: bytes) -> int:
    """Packed BCD, low byte first -> integer."""
    digits = data[::-1].hex()
    if digits.isdigit():
        # Every nibble decimal (the usual case): the hex text is the number's digits.
        return int(digits)
    value = 0  # an empty input, or a non-decimal nibble to report (from the top byte down)
    for b in reversed(data):
        value = value * 100 + from_bcd_byte(b)
    return value


def int_to_bcd(value: int, nbytes: int) -> bytes:
    """Integer -> packed BCD of ``nbytes`` bytes, low byte first."""
    if value < 0 or value >= 100**nbytes:
        raise EncodeError(f"{value} does not fit {nbytes} BCD bytes")
    # The zero-padded decimal digits are the BCD nibbles, high byte first.
    return bytes.fromhex(f"{value:0{2 * nbytes}d}")[::-1] if nbytes else b""


def address_to_wire(address: str) -> bytes:
    """12-digit meter/node address as printed ("000000000161") -> 6 wire bytes, low first.

    Hex digits are allowed (AAAAAAAAAAAA wildcard, 999999999999 broadcast).
    """
    if len(address) != 12:
        raise EncodeError(f"address {address!r} must have 12 digits")
    try:
        return bytes.fromhex(address)[::-1]
    except ValueError as exc:
        raise EncodeError(f"address {address!r} is not hexadecimal/BCD") from exc


def address_from_wire(data: bytes) -> str:
    """6 wire bytes, low first -> 12-digit printed address."""
    if len(data) != 6:
        raise FrameFormatError(f"address needs 6 bytes, got {len(data)}")
    return data[::-1].hex().upper()
