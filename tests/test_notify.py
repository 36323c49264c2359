"""sd_notify datagrams on a test NOTIFY_SOCKET, and the heartbeat-gated watchdog."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from concentrator import notify
from concentrator.notify import Notifier, Watchdog


@pytest.fixture
def sd_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(1.0)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(1.0)
    return out


def test_ready_status_stopping_watchdog(sd_socket):
    path, sock = sd_socket
    n = Notifier(env={"NOTIFY_SOCKET": path})
    assert n.ready("reading 3 meters")
    assert n.status("line one\nline two")
    assert n.watchdog()
    assert n.stopping()
    msgs = received(sock)
    assert msgs[0].split("\n") == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=reading 3 meters"]
    assert msgs[1:] == ["STATUS=line one line two", "WATCHDOG=1", "STOPPING=1"]


def test_abstract_namespace_socket():
    name = f"concentrator-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(1.0)
    try:
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096).startswith(b"READY=1")
    finally:
        sock.close()


def test_module_functions_use_environment(sd_socket, monkeypatch):
    path, sock = sd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setattr(notify, "_default", None)
    assert notify.status("up")
    assert sock.recv(4096) == b"STATUS=up"
    monkeypatch.setattr(notify, "_default", None)


def test_without_systemd_everything_is_a_quiet_no_op(tmp_path):
    assert not Notifier(env={}).ready()
    # A socket that vanished must not raise either.
    assert not Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone")}).watchdog()
    assert Watchdog(env={}).enabled is False


def test_watchdog_interval_from_environment():
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert notify.watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}) is None \
        or os.getpid() == 1
    assert notify.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    assert notify.watchdog_interval({}) is None


def test_watchdog_pings_only_while_every_loop_beats(sd_socket):
    path, sock = sd_socket
    now = [1000.0]
    wd = Watchdog(Notifier(env={"NOTIFY_SOCKET": path}), interval=15.0, now=lambda: now[0])
    for loop, allowed in (("serial", 30), ("scheduler", 120), ("store", 60), ("uplink", 60)):
        wd.register(loop, allowed)
    # All loops beat regularly: one WATCHDOG=1 per tick.
    for _ in range(4):
        now[0] += 15
        for loop in ("serial", "scheduler", "store", "uplink"):
            wd.beat(loop)
        assert wd.tick()
    assert received(sock) == ["WATCHDOG=1"] * 4
    # The store writer hangs: the others keep beating, but no keep-alive goes out.
    for _ in range(8):
        now[0] += 15
        for loop in ("serial", "scheduler", "uplink"):
            wd.beat(loop)
        wd.tick()
    msgs = received(sock)
    # 15..60 s after its last beat it is still within its allowed 60 s; from 75 s on, silence.
    assert msgs[:4] == ["WATCHDOG=1"] * 4
    assert msgs[4:] == ["STATUS=stalled: store"] * 4
    assert wd.stale() == ["store"]
    # It recovers: keep-alives resume.
    wd.beat("store")
    assert wd.tick()
    assert received(sock) == ["WATCHDOG=1"]


def test_watchdog_beat_of_unknown_loop_is_a_programming_error():
    wd = Watchdog(Notifier(env={}), interval=1.0)
    with pytest.raises(KeyError):
        wd.beat("nobody")
    with pytest.raises(ValueError):
        wd.register("x", 0)


async def test_watchdog_run_sends_at_interval(sd_socket):
    import asyncio

    path, sock = sd_socket
    wd = Watchdog(Notifier(env={"NOTIFY_SOCKET": path}), interval=0.01)
    wd.register("scheduler", 10)
    task = asyncio.create_task(wd.run())
    await asyncio.sleep(0.055)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 3 <= received(sock).count("WATCHDOG=1") <= 7
