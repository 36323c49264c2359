"""The district summary meter (考核表) on the concentrator's own RS-485 port.

The summary meter sits at the transformer and is wired point-to-point to the concentrator, so
it is read directly over a ``plc_driver.link.ByteLink`` (``SerialLink`` at 2400 8E1 in the
field, a simulator link in tests) rather than through the carrier module. ``SummaryMeter``
offers the same ``exchange(address, dlt645_bytes, *, priority)`` call as the mesh, so the
reader's daily frozen code reads it exactly like a customer meter.

One request at a time (the bus is half duplex). A reply must come from the summary meter's
address; anything else on the line (echoes, garbage, a late answer to an earlier request that
timed out) is logged and skipped. A request with no reply is sent again ``retries`` times.
"""

from __future__ import annotations

import asyncio
import logging

from concentrator import dlt645
from concentrator.codec import Rejected
from concentrator.reader import Exchanged
from plc_driver.link import ByteLink, LinkClosed

__all__ = ["SummaryMeter"]

log = logging.getLogger(__name__)


class SummaryMeter:
    """Reads the summary meter over its own point-to-point link."""

    def __init__(self, link: ByteLink, address: str, *, protocol: str = "dlt645-2007",
                 timeout: float = 2.0, retries: int = 2) -> None:
        self.link = link
        self.address = address.upper()
        self.protocol = protocol
        self.timeout = float(timeout)  # first byte up to ~0.8 s plus 2400-baud transfer
        self.retries = max(0, int(retries))
        self._lock = asyncio.Lock()
        self._decoder = dlt645.Dlt645StreamDecoder()
        self._backlog: list[dlt645.Dlt645Frame] = []

    async def exchange(self, address: str, dlt645_bytes: bytes, *, priority: bool = False
                       ) -> Exchanged:
        """Send one request and wait for the meter's reply (``priority`` has no effect here)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        failure = "timeout"
        async with self._lock:
            for attempt in range(1, self.retries + 2):
                self._backlog.clear()  # whatever arrived before this request is stale
                try:
                    self.link.write(dlt645_bytes)
                    reply = await self._await_reply(address.upper())
                except LinkClosed as exc:
                    log.error("summary meter %s: link closed: %s", self.address, exc)
                    return Exchanged(None, (), attempt, loop.time() - t0, "link closed")
                if reply is not None:
                    return Exchanged(reply, (), attempt, loop.time() - t0, None)
                log.info("summary meter %s: no reply (attempt %d)", self.address, attempt)
        return Exchanged(None, (), self.retries + 1, loop.time() - t0, failure)

    async def _await_reply(self, address: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            while self._backlog:
                frame = self._backlog.pop(0)
                if frame.is_reply and frame.address == address:
                    return dlt645.encode(frame)
                log.info("summary meter %s: skipped a frame from %s (control %02X)",
                         self.address, frame.address, frame.control)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                chunk = await asyncio.wait_for(self.link.read(), remaining)
            except TimeoutError:
                return None
            for item in self._decoder.feed(chunk):
                if isinstance(item, Rejected):
                    log.info("summary meter %s: rejected %s: %s", self.address,
                             item.raw[:32].hex(" ").upper(), item.error)
                else:
                    self._backlog.append(item)
