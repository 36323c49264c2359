"""Optional MQTT uplink: the store's outbox as JSON messages to a broker, commands back.

``MqttUplink`` connects with aiomqtt (MQTT 3.1.1) under a fixed client id with a persistent
session (``clean_session=False``), so QoS 1 messages queued for our command topic survive a
reconnect. Topics, with ``P = topic_prefix`` and ``T = A1-A2`` (e.g. ``4403-1``)::

    P/T/readings   daily, curve and real-time rows       (QoS 1, terminal -> broker)
    P/T/events     events                                (QoS 1)
    P/T/commands   commands to the terminal              (subscribed, QoS 1)
    P/T/replies    one reply per command                 (QoS 1)

Every message carries ``"id": "T:seq"`` (terminal + outbox seq), our own idempotency key:
QoS 1 is at-least-once, so a consumer drops ids it has seen. A row leaves the outbox only
after the broker's PUBACK for the message that carried it; a restart re-publishes the rest.

The outbox has one consumer: run this *instead of* the 1376.1 uplink, or give it its own
store; as a second consumer it would miss rows the master already confirmed (see
docs/uplink.md).

Commands (JSON object with ``id`` and ``cmd``): ``ping``, ``outbox`` (depth and oldest),
``read_energy`` {meter} (through ``TerminalServices.read_energy_now``), ``set_time`` {time}.
Anything else gets ``{"ok": false}``; a command that is not JSON is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from datetime import datetime
from decimal import Decimal
from typing import Any

import aiomqtt

from concentrator.config import MqttConfig
from concentrator.store import CurveDay, DailyReading, Event, OutboxItem, RealtimeReading, Store
from uplink.client import TerminalServices, ssl_client_context, wait_event
from uplink.gdw13761 import Address

__all__ = ["MqttUplink", "row_message"]

log = logging.getLogger(__name__)


def _num(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


def row_message(terminal: str, item: OutboxItem) -> tuple[str, dict[str, Any]]:
    """(topic suffix, JSON object) for one outbox row."""
    p = item.payload
    msg: dict[str, Any] = {"id": f"{terminal}:{item.seq}", "terminal": terminal,
                           "seq": item.seq, "kind": item.kind, "meter": item.meter}
    if isinstance(p, DailyReading):
        msg.update(day=p.freeze_date.isoformat(), read_time=p.read_time.isoformat(),
                   fwd_total=_num(p.fwd_total), fwd_tariffs=[_num(t) for t in p.fwd_tariffs],
                   rev_total=_num(p.rev_total), flags=p.flags)
    elif isinstance(p, CurveDay):
        msg.update(day=p.day.isoformat(), item=p.item, density_min=p.density_min,
                   points=[_num(v) for v in p.points])
    elif isinstance(p, RealtimeReading):
        msg.update(read_time=p.read_time.isoformat(), fwd_total=_num(p.fwd_total),
                   fwd_tariffs=[_num(t) for t in p.fwd_tariffs], rev_total=_num(p.rev_total))
    elif isinstance(p, Event):
        msg.update(event_id=p.id, erc=p.erc, time=p.time.isoformat(), detail=dict(p.detail))
        return "events", msg
    return "readings", msg


class MqttUplink:
    """Publish the outbox to an MQTT broker and answer commands. ``await run()``/``stop()``."""

    def __init__(self, config: MqttConfig, terminal: Address, store: Store,
                 services: TerminalServices, *, batch: int = 50, poll_interval: float = 5.0,
                 backoff_cap: float = 300.0, keepalive: int = 60, timeout: float = 10.0
                 ) -> None:
        self.config = config
        self.terminal = f"{terminal.district}-{terminal.terminal}"
        self.store = store
        self.services = services
        self.batch = batch
        self.poll_interval = poll_interval
        self.backoff_cap = backoff_cap
        self.keepalive = keepalive
        self.timeout = timeout      # connect/subscribe/disconnect round trips with the broker
        self.base = f"{config.topic_prefix}/{self.terminal}"
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self.connected = False
        self.stats = {"connects": 0, "published": 0, "confirmed": 0, "commands": 0}

    def notify_outbox(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.config.broker.host, self.config.broker.port, identifier=self.config.client_id,
            clean_session=False, protocol=aiomqtt.ProtocolVersion.V311,
            keepalive=self.keepalive, tls_context=ssl_client_context(self.config.tls),
            timeout=self.timeout)

    async def run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = self._client()
            try:
                await client.__aenter__()
                try:
                    self.connected = True
                    self.stats["connects"] += 1
                    attempt = 0
                    log.info("terminal %s: MQTT connected to %s as %s", self.terminal,
                             self.config.broker, self.config.client_id)
                    await client.subscribe(f"{self.base}/commands", qos=1)
                    tasks = [asyncio.create_task(self._publish_loop(client)),
                             asyncio.create_task(self._command_loop(client)),
                             asyncio.create_task(self._stop.wait())]
                    try:
                        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for t in tasks:
                            t.cancel()
                        for t in tasks:
                            with contextlib.suppress(BaseException):
                                await t
                    for t in done:
                        if not t.cancelled() and t.exception() is not None:
                                raise t.exception()  # type: ignore[misc]
                finally:
                    # Some brokers never close after DISCONNECT; aiomqtt would wait forever.
                    with contextlib.suppress(TimeoutError, aiomqtt.MqttError):
                        await asyncio.wait_for(client.__aexit__(None, None, None), self.timeout)
            except aiomqtt.MqttError as exc:
                log.warning("terminal %s: MQTT link to %s lost: %s", self.terminal,
                            self.config.broker, exc)
            finally:
                self.connected = False
            if self._stop.is_set():
                break
            delay = min(self.backoff_cap, 2.0 ** attempt) * random.uniform(0.75, 1.0)
            attempt += 1
            await wait_event(self._stop, delay)

    async def _publish_loop(self, client: aiomqtt.Client) -> None:
        while True:
            items = self.store.outbox_pending(self.batch)
            if not items:
                self._wake.clear()
                await wait_event(self._wake, self.poll_interval)
                continue
            # publish() returns once the broker's PUBACK arrived (QoS 1): only then confirm.
            await asyncio.gather(*(self._publish(client, it) for it in items))
            removed = self.store.outbox_confirm(it.seq for it in items)
            self.stats["confirmed"] += removed
            log.debug("terminal %s: %d rows acknowledged by the broker", self.terminal, removed)

    async def _publish(self, client: aiomqtt.Client, item: OutboxItem) -> None:
        suffix, msg = row_message(self.terminal, item)
        await client.publish(f"{self.base}/{suffix}", json.dumps(msg, sort_keys=True), qos=1)
        self.stats["published"] += 1

    async def _command_loop(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            try:
                cmd = json.loads(payload if isinstance(payload, bytes | str) else b"")
                if not isinstance(cmd, dict):
                    raise ValueError("not an object")
            except ValueError as exc:
                log.warning("terminal %s: MQTT command dropped, not JSON: %s", self.terminal, exc)
                continue
            self.stats["commands"] += 1
            reply = await self._command(cmd)
            await client.publish(f"{self.base}/replies", json.dumps(reply, sort_keys=True),
                                 qos=1)

    async def _command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"id": cmd.get("id"), "terminal": self.terminal, "ok": True}
        op = cmd.get("cmd")
        log.info("terminal %s: MQTT command %s (%s)", self.terminal, op, cmd.get("id"))
        try:
            if op == "ping":
                pass
            elif op == "outbox":
                st = self.store.outbox_stats()
                out.update(depth=st.depth, oldest_seq=st.oldest_seq)
            elif op == "read_energy":
                r = await self.services.read_energy_now(str(cmd["meter"]))
                out.update(meter=cmd["meter"], fwd_total=None if r is None else _num(r.fwd_total),
                           read_time=None if r is None else r.read_time.isoformat())
            elif op == "set_time":
                await self.services.set_time(datetime.fromisoformat(str(cmd["time"])))
            else:
                out.update(ok=False, error=f"unknown command {op!r}")
        except (KeyError, ValueError) as exc:
            out.update(ok=False, error=f"bad command: {exc}")
        return out
