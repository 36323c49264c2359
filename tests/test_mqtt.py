"""The MQTT uplink through a real broker process (amqtt) started by the test."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

aiomqtt = pytest.importorskip("aiomqtt", reason="aiomqtt is not installed (test extra)")

from concentrator.config import HostPort, MqttConfig  # noqa: E402
from concentrator.store import RealtimeReading  # noqa: E402
from tests.test_uplink import (  # noqa: E402
    START,
    TERMINAL,
    FakeServices,
    fill,
    make_store,
    meter,
)
from uplink.mqtt import MqttUplink  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path):
    exe = shutil.which("amqtt", path=str(Path(sys.executable).parent)) or shutil.which("amqtt")
    if exe is None:
        mosq = shutil.which("mosquitto")
        if mosq is None:
            pytest.skip("neither amqtt nor mosquitto can be started (pip install amqtt)")
    port = _free_port()
    if exe:
        cfg = tmp_path / "amqtt.yaml"
        cfg.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                       "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                       "    allow_anonymous: true\n")
        cmd = [exe, "-c", str(cfg)]
    else:
        cmd = [mosq, "-p", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.skip(f"the MQTT broker {cmd[0]} did not start")
            time.sleep(0.1)
    yield port
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


async def test_readings_and_events_reach_the_broker_once_each_with_their_keys(tmp_path, broker):
    store = make_store(tmp_path)
    n = fill(store, 10)
    expected = {i.seq for i in store.outbox_pending(1000)}
    services = FakeServices()
    services.energy[meter(1)] = RealtimeReading(meter(1), START, 12)
    cfg = MqttConfig(HostPort("127.0.0.1", broker), client_id="conc-4403-1", topic_prefix="t")
    got: dict[str, list[dict]] = {"readings": [], "events": [], "replies": []}

    async with aiomqtt.Client("127.0.0.1", broker, identifier="observer",
                              protocol=aiomqtt.ProtocolVersion.V311, timeout=2) as obs:
        await obs.subscribe("t/4403-1/#", qos=1)
        up = MqttUplink(cfg, TERMINAL, store, services, poll_interval=0.2, timeout=2)
        task = asyncio.create_task(up.run())

        async def collect():
            asked = False
            async for m in obs.messages:
                kind = str(m.topic).rsplit("/", 1)[1]
                if kind in got:
                    got[kind].append(json.loads(m.payload))
                if not asked and len(got["readings"]) + len(got["events"]) >= n:
                    asked = True
                    await obs.publish("t/4403-1/commands", json.dumps(
                        {"id": "c1", "cmd": "read_energy", "meter": meter(1)}), qos=1)
                    await obs.publish("t/4403-1/commands", b"not json", qos=1)
                    await obs.publish("t/4403-1/commands", json.dumps(
                        {"id": "c2", "cmd": "outbox"}), qos=1)
                if len(got["replies"]) == 2:
                    return

        await asyncio.wait_for(collect(), 20)
        up.stop()
        await asyncio.wait_for(task, 10)

    ids = [m["id"] for m in got["readings"] + got["events"]]
    assert len(ids) == len(set(ids)) == n
    assert {int(i.split(":")[1]) for i in ids} == expected
    assert all(i.startswith("4403-1:") for i in ids)
    daily = next(m for m in got["readings"] if m["kind"] == "daily" and m["meter"] == meter(3))
    assert daily["fwd_total"] == "3.25"
    assert {m["erc"] for m in got["events"]} == {14, 31}
    r1, r2 = sorted(got["replies"], key=lambda r: r["id"])
    assert r1["fwd_total"] == "12" and r1["ok"]
    assert r2["depth"] == 0                                  # PUBACKed rows left the outbox
    assert store.outbox_stats().depth == 0


async def test_unreachable_broker_keeps_rows_in_the_outbox(tmp_path):
    store = make_store(tmp_path)
    n = fill(store, 2, events=0, curves=False)
    cfg = MqttConfig(HostPort("127.0.0.1", _free_port()), client_id="conc-x")
    up = MqttUplink(cfg, TERMINAL, store, FakeServices(), backoff_cap=0.1)
    task = asyncio.create_task(up.run())
    await asyncio.sleep(0.5)
    up.stop()
    await asyncio.wait_for(task, 5)
    assert up.stats["connects"] == 0 and store.outbox_stats().depth == n
