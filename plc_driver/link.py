"""Byte links between the concentrator and its carrier/RF module.

``ByteLink`` is the whole transport contract the module driver relies on: ``await read()``
returns the next chunk of bytes (any split), ``write(data)`` queues bytes without blocking, and
``close()`` ends the link. When the port is closed or vanishes (USB module unplugged), ``read``
and ``write`` raise ``LinkClosed``; nothing else escapes.

* ``SerialLink``: the real serial port through pyserial (9600 8E1 by default), read without
  threads through ``loop.add_reader`` on the non-blocking file descriptor.
* ``MemoryLink.pair()``: two in-memory ends for the in-process simulator. It uses no threads,
  only loop callbacks, so it runs under ``simulator.vtime.VirtualTimeLoop``; an optional
  per-chunk ``delay`` is scheduled with ``loop.call_later`` (virtual time when simulated).
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
from collections import deque
from typing import Protocol

__all__ = ["ByteLink", "LinkClosed", "SerialLink", "MemoryLink"]

log = logging.getLogger(__name__)


class LinkClosed(Exception):
    """The link is closed, or the port behind it has gone away."""


class ByteLink(Protocol):
    async def read(self) -> bytes:
        """Next chunk of received bytes; raises ``LinkClosed`` when the link is gone."""
        ...

    def write(self, data: bytes) -> None:
        """Queue bytes for sending; raises ``LinkClosed`` when the link is gone."""
        ...

    def close(self) -> None:
        """Close the link; pending and later ``read`` calls raise ``LinkClosed``."""
        ...


class MemoryLink:
    """One end of an in-memory byte link; make both ends with ``MemoryLink.pair()``."""

    def __init__(self, name: str = "memory", delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay  # seconds between a write here and its arrival at the peer
        self._peer: MemoryLink | None = None
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._peer_gone = False
        self._last_arrival = 0.0  # keeps chunks in order when ``delay`` changes between writes
        self._in_flight: deque[bytes] = deque()

    @classmethod
    def pair(cls, delay: float = 0.0) -> tuple[MemoryLink, MemoryLink]:
        """Two joined ends: bytes written to one are read from the other."""
        a, b = cls("memory-a", delay), cls("memory-b", delay)
        a._peer, b._peer = b, a
        return a, b

    @property
    def closed(self) -> bool:
        return self._closed or self._peer_gone

    async def read(self) -> bytes:
        while not self._chunks:
            if self._closed or self._peer_gone:
                raise LinkClosed(f"{self.name}: link closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._chunks.popleft()

    def write(self, data: bytes) -> None:
        if self._closed or self._peer_gone or self._peer is None:
            raise LinkClosed(f"{self.name}: link closed")
        if not data:
            return
        peer, chunk = self._peer, bytes(data)
        if self.delay <= 0:
            peer._deliver(chunk)
            return
        loop = asyncio.get_running_loop()
        arrival = max(loop.time() + self.delay, self._last_arrival)
        self._last_arrival = arrival
        # asyncio does not order timers due at the same instant, so chunks wait in our own
        # FIFO and each timer delivers the oldest one: bytes never overtake each other.
        self._in_flight.append(chunk)
        loop.call_at(arrival, self._arrive)

    def _arrive(self) -> None:
        if self._in_flight and self._peer is not None:
            self._peer._deliver(self._in_flight.popleft())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        if self._peer is not None:
            self._peer._peer_gone = True
            self._peer._wake()

    def _deliver(self, chunk: bytes) -> None:
        if self._closed:
            return  # bytes in flight to a closed end are lost, as on a real line
        self._chunks.append(chunk)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class SerialLink:
    """The module's serial port (pyserial), read through the event loop without threads.

    Opening failures and a port that vanishes later raise ``LinkClosed``.
    """

    def __init__(
        self,
        port: str,
        baud: int = 9600,
        parity: str = "E",
        *,
        bytesize: int = 8,
        stopbits: float = 1,
    ) -> None:
        import serial  # imported here so the simulator and tests need no serial port

        self.port = port
        try:
            self._serial = serial.Serial(
                port,
                baudrate=baud,
                bytesize=bytesize,
                parity=parity,
                stopbits=stopbits,
                timeout=0,
                write_timeout=0,
            )
        except (serial.SerialException, OSError, ValueError, termios.error) as exc:
            # termios.error is not an OSError: a port that refuses its line settings (seen on
            # a pty reopened after a SIGKILL) must be a retried fault, not a dead serial loop.
            raise LinkClosed(f"{port}: cannot open: {exc}") from exc
        self._fd = self._serial.fileno()
        os.set_blocking(self._fd, False)
        # pyserial's timeout=0 sets VMIN=0, which makes an idle tty read as b"" (end of file);
        # VMIN=1 with O_NONBLOCK makes "no data" EAGAIN, so b"" really means the port is gone.
        try:
            attrs = termios.tcgetattr(self._fd)
            attrs[6][termios.VMIN] = 1
            attrs[6][termios.VTIME] = 0
            termios.tcsetattr(self._fd, termios.TCSANOW, attrs)
        except termios.error as exc:
            log.warning("serial port %s: cannot set VMIN=1: %s", port, exc)
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out = bytearray()
        self._writer_on = False
        self._ready: asyncio.Future[None] | None = None  # wakes a pending read on close()
        #: the loop watching the port's fd for reads, kept between reads (see ``read``)
        self._watching: asyncio.AbstractEventLoop | None = None
        log.info("serial port %s open at %d %d%s%g", port, baud, bytesize, parity, stopbits)

    async def read(self) -> bytes:
        if self._closed:
            raise LinkClosed(f"{self.port}: link closed")
        loop = asyncio.get_running_loop()
        self._loop = loop
        while True:
            chunk = self._read_now()
            if chunk:
                return chunk
            ready = loop.create_future()
            self._ready = ready
            if self._watching is not loop:
                # The port stays watched from one read to the next: the module driver asks for
                # the next chunk as soon as it has handled one, and adding and removing the
                # reader around every chunk (two epoll_ctl calls and the selector's
                # bookkeeping) was about 6 % of the daemon's CPU in a reading round.
                self._unwatch()
                loop.add_reader(self._fd, self._on_readable)
                self._watching = loop
            try:
                await ready
            finally:
                self._ready = None
            if self._closed:
                raise LinkClosed(f"{self.port}: link closed")

    def _on_readable(self) -> None:
        ready = self._ready
        if ready is None:
            # Nobody is reading now: stop watching, or the level-triggered readiness would
            # wake the loop on every turn until the next read.
            self._unwatch()
        elif not ready.done():
            ready.set_result(None)

    def _unwatch(self) -> None:
        loop, self._watching = self._watching, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)

    def _read_now(self) -> bytes:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:  # EIO when a USB adapter or pty goes away
            self._fail(f"read failed: {exc}")
        if not data:
            # Readable but end of file: the device is gone.
            self._fail("port vanished (end of file)")
        return data

    def write(self, data: bytes) -> None:
        if self._closed:
            raise LinkClosed(f"{self.port}: link closed")
        self._out += data
        self._flush()

    def _flush(self) -> None:
        try:
            while self._out:
                n = os.write(self._fd, self._out)
                del self._out[:n]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._fail(f"write failed: {exc}")
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        if self._out and not self._writer_on:
            loop.add_writer(self._fd, self._flush_later)
            self._writer_on = True
        elif not self._out and self._writer_on:
            loop.remove_writer(self._fd)
            self._writer_on = False

    def _flush_later(self) -> None:
        # Called by the loop: a failure here closes the link; the next read() reports it.
        try:
            self._flush()
        except LinkClosed:
            pass

    def _fail(self, why: str) -> None:
        log.error("serial port %s: %s", self.port, why)
        self.close()
        raise LinkClosed(f"{self.port}: {why}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ready is not None:
            _set_done(self._ready)
        self._unwatch()
        if self._writer_on and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_writer(self._fd)
        try:
            self._serial.close()
        except OSError as exc:  # closing a vanished device may fail; it is closed either way
            log.debug("serial port %s: close: %s", self.port, exc)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
