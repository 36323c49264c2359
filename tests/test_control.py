"""Control socket: round trips, bad input, streaming, permissions + audit, and the CLI on top."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
import xml.etree.ElementTree as ET
from datetime import datetime

import pytest
from click.testing import CliRunner

from concentrator import cli_ctl
from concentrator.audit import AuditLog
from concentrator.cli import main
from concentrator.control import (
    MAX_LINE,
    CommandError,
    CommandFailed,
    ControlClient,
    ControlServer,
    DaemonUnreachable,
    Peer,
    StreamResult,
    audit_handler,
    peer_credentials,
)

STATUS = {
    "version": "0.1.0", "uptime_s": 3725.0,
    "terminal": {"district": "4403", "address": 1},
    "module": {"port": "/dev/ttyS1", "channel": "hplc", "connected": True, "cco_address": "000000000001"},
    "nodes": {"total": 3, "online": 2, "quarantined": 1},
    "reading": {"day": "2024-05-01", "due": 3, "read": 2, "rate": 2 / 3, "next_task": None},
    "uplink": {"state": "online", "master": "192.0.2.10:7001", "outbox": 0},
    "store": {"size_bytes": 2048}, "watchdog": {"healthy": False, "stale": ["store"]},
}
TOPOLOGY = {
    "root": "000000000001",
    "nodes": [
        {"address": "000000000101", "level": 1, "parent": "000000000001", "state": "online", "phase": "A"},
        {"address": "000000000161", "level": 2, "parent": "000000000101", "state": "online", "phase": "B"},
        {"address": "000000000162", "level": 1, "parent": "000000000001", "state": "silent", "phase": None},
    ],
    "links": [{"a": "000000000001", "b": "000000000101", "medium": "plc", "quality": 0.95},
              {"a": "000000000101", "b": "000000000161", "medium": "rf", "quality": 0.8},
              {"a": "000000000162", "b": "000000000161", "medium": "plc", "quality": 0.3}],
}


class FakeDaemon:
    """A handler table like the lead's daemon will pass, with observable state."""

    def __init__(self, audit: AuditLog) -> None:
        self.archive: dict[str, dict] = {}
        self.follow_closed = threading.Event()
        self.handlers = {
            "status": self.status, "topology": self.topology, "archive.add": self.archive_add,
            "archive.list": self.archive_list, "discover": self.discover, "events": self.events,
            "node": self.node, "boom": self.boom, "audit": audit_handler(audit),
        }

    async def status(self, args):
        return STATUS

    async def topology(self, args):
        return TOPOLOGY

    async def archive_add(self, args):
        if args["address"] in self.archive:
            raise CommandError(f"meter {args['address']} already in the archive", "bad-request")
        self.archive[args["address"]] = {**args, "source": "cli"}
        return {"added": self.archive[args["address"]]}

    async def archive_list(self, args):
        return {"meters": list(self.archive.values())}

    async def node(self, args):
        raise CommandError(f"node {args['address']} unknown", "not-found")

    async def boom(self, args):
        raise RuntimeError("handler bug")

    async def discover(self, args):
        for level in (1, 2):
            yield {"type": "progress", "level": level, "found": level * 2, "total": 4, "elapsed_s": 10.0 * level}
            await asyncio.sleep(0)
        yield StreamResult({"found": 4, "new": 1, "levels": 2, "duration_s": 20.0})

    async def events(self, args):
        try:
            yield {"at": "2024-05-01T00:07:12", "kind": "unknown-meter", "address": "000000000999",
                   "text": "not in archive", "data": {}}
            if args.get("follow"):
                await asyncio.sleep(3600)  # waits for new events until the client leaves
        finally:
            self.follow_closed.set()


class Harness:
    """The server on its own event-loop thread, so blocking clients and the CLI can call it."""

    def __init__(self, tmp_path, **kw):
        self.path = str(tmp_path / "control.sock")
        self.audit = AuditLog(tmp_path / "audit.jsonl", fsync=False)
        self.fake = FakeDaemon(self.audit)
        self.loop = asyncio.new_event_loop()
        self.server = ControlServer(self.path, self.fake.handlers, audit=self.audit, **kw)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._run(self.server.start())

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(5)

    def close(self):
        self._run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def raw(self, payload: bytes, lines: int) -> list[dict]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.path)
            s.sendall(payload)
            f = s.makefile("rb")
            return [json.loads(f.readline()) for _ in range(lines)]


@pytest.fixture
def daemon(tmp_path):
    h = Harness(tmp_path, group="root")
    yield h
    h.close()


def cli(h: Harness | None, *args: str, socket_path: str | None = None):
    path = socket_path or (h.path if h else "/nonexistent/control.sock")
    return CliRunner().invoke(main, ["--socket", path, *args])


def test_round_trip_and_socket_mode(daemon):
    assert ControlClient(daemon.path).request("status") == STATUS
    assert stat.S_IMODE(os.stat(daemon.path).st_mode) == 0o660


def test_cli_human_and_json_output(daemon):
    res = cli(daemon, "status")
    assert res.exit_code == 0, res.output
    assert "terminal   4403/1" in res.output
    assert "2/3 read (66.7%)" in res.output
    assert "STALLED: store" in res.output
    res = cli(daemon, "status", "--json")
    assert res.exit_code == 0 and json.loads(res.output) == STATUS


def test_malformed_input_gets_errors_and_server_keeps_serving(daemon):
    replies = daemon.raw(b'{not json\n[1,2]\n{"id": 5}\n{"id": 6, "cmd": "status", "args": [1]}\n'
                         b'{"id": 7, "cmd": "stauts"}\n\xff\xfe\n{"id": 8, "cmd": "status"}\n', 7)
    assert [r["ok"] for r in replies] == [False] * 6 + [True]
    assert [r.get("code") for r in replies[:6]] == ["bad-request", "bad-request", "bad-request",
                                                   "bad-request", "unknown-command", "bad-request"]
    assert replies[2]["id"] == 5 and "cmd" in replies[2]["error"]
    assert replies[4]["error"] == "unknown command 'stauts'"
    assert "utf-8" in replies[5]["error"]
    assert replies[6] == {"id": 8, "ok": True, "result": STATUS}


def test_over_long_line_is_refused_not_buffered(daemon):
    (reply,) = daemon.raw(b'{"id": 1, "cmd": "' + b"x" * (MAX_LINE + 10) + b'"}\n', 1)
    assert reply["ok"] is False and "too long" in reply["error"]
    assert ControlClient(daemon.path).request("status") == STATUS  # next connection is fine


def test_handler_errors_become_replies(daemon):
    c = ControlClient(daemon.path)
    with pytest.raises(CommandFailed) as ei:
        c.request("boom")
    assert ei.value.code == "internal" and "handler bug" in str(ei.value)
    with pytest.raises(CommandFailed) as ei:
        c.request("node", {"address": "000000000777"})
    assert ei.value.code == "not-found"
    res = cli(daemon, "node", "000000000777")
    assert res.exit_code == 1 and "node 000000000777 unknown" in res.output
    assert cli(daemon, "node", "12x").exit_code == 2  # usage: not an address


def test_streaming_items_then_end_marker(daemon):
    stream = ControlClient(daemon.path).stream("discover")
    items = list(stream)
    assert [i["level"] for i in items] == [1, 2]
    assert stream.result == {"found": 4, "new": 1, "levels": 2, "duration_s": 20.0}
    res = cli(daemon, "discover")
    assert res.exit_code == 0
    assert "level 2: 4 found of 4" in res.output and "done: 4 nodes (1 new) on 2 levels" in res.output


def test_follow_stops_when_client_leaves(daemon):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(daemon.path)
        s.sendall(b'{"id": 1, "cmd": "events", "args": {"follow": true}}\n')
        first = json.loads(s.makefile("rb").readline())
        assert first["item"]["kind"] == "unknown-meter" and "ok" not in first
    # Closing the connection must close the daemon's generator, not leave it waiting an hour.
    assert daemon.fake.follow_closed.wait(5)


def test_follow_cancelled_by_sending_a_line(daemon):
    replies = daemon.raw(b'{"id": 2, "cmd": "events", "args": {"follow": true}}\n', 1)
    assert "item" in replies[0]
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(daemon.path)
        s.sendall(b'{"id": 3, "cmd": "events", "args": {"follow": true}}\n')
        f = s.makefile("rb")
        assert "item" in json.loads(f.readline())
        s.sendall(b"\n")
        end = json.loads(f.readline())
    assert end == {"id": 3, "ok": True, "end": True, "result": None, "cancelled": True}


@pytest.mark.parametrize("args", [["status"], ["nodes"], ["events", "--follow"], ["archive", "list"]])
def test_exit_code_3_when_no_daemon(tmp_path, args):
    res = cli(None, *args, socket_path=str(tmp_path / "none.sock"))
    assert res.exit_code == 3
    assert "no daemon socket at" in res.output


def test_socket_from_environment(daemon, tmp_path):
    res = CliRunner().invoke(main, ["status", "--json"], env={"CONCENTRATOR_SOCKET": daemon.path})
    assert res.exit_code == 0
    res = CliRunner().invoke(main, ["status"], env={"CONCENTRATOR_SOCKET": str(tmp_path / "x")})
    assert res.exit_code == 3


def test_stale_socket_file_is_replaced_and_refused_connection_is_unreachable(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.close()  # a socket file nobody listens on, as after a crash
    with pytest.raises(DaemonUnreachable, match="not accepting"):
        ControlClient(path).request("status")
    loop = asyncio.new_event_loop()
    try:
        server = ControlServer(path, {})
        loop.run_until_complete(server.start())
        loop.run_until_complete(server.close())
    finally:
        loop.close()
    assert not os.path.exists(path)


def test_real_peer_credentials_are_audited(daemon):
    res = cli(daemon, "archive", "add", "000000000161", "--point", "1", "--name", "flat 12")
    assert res.exit_code == 0 and "added 000000000161" in res.output
    (entry,) = daemon.audit.read()
    assert entry["what"] == "archive.add" and entry["outcome"] == "ok"
    assert entry["who"]["pid"] == os.getpid() and entry["who"]["uid"] == os.geteuid()
    assert entry["args"]["address"] == "000000000161"
    # A failed state change is audited with its error.
    assert cli(daemon, "archive", "add", "000000000161").exit_code == 1
    assert daemon.audit.read()[-1]["outcome"] == "error: meter 000000000161 already in the archive"
    # Read-only commands are not audited.
    cli(daemon, "archive", "list")
    assert len(daemon.audit.read()) == 2


def test_state_change_refused_for_peer_outside_group(tmp_path):
    outsider = Peer(pid=0, uid=54321, gid=54321)
    h = Harness(tmp_path, group=54320, credentials=lambda sock: outsider)
    try:
        res = cli(h, "archive", "add", "000000000161")
        assert res.exit_code == 1 and "permission denied" in res.output
        assert h.fake.archive == {}  # the handler never ran
        (entry,) = h.audit.read()
        assert entry["outcome"] == "denied" and entry["what"] == "archive.add"
        assert entry["who"]["uid"] == 54321
        # Looking is allowed; only changes are refused.
        assert cli(h, "status").exit_code == 0
        res = cli(h, "discover")
        assert res.exit_code == 1 and [e["what"] for e in h.audit.read()] == ["archive.add", "discover"]
    finally:
        h.close()


def test_group_members_and_root_may_change_state(tmp_path):
    server = ControlServer(tmp_path / "s", {}, group=54320, daemon_uid=999)
    assert server.allowed_to_change(Peer(0, 54321, 54320))  # primary group
    assert server.allowed_to_change(Peer(0, 0, 0))  # root
    assert server.allowed_to_change(Peer(0, 999, 999))  # the daemon's own user
    assert not server.allowed_to_change(Peer(0, 54321, 54321))
    # Supplementary groups come from /proc/<pid>/status of the live peer.
    me = peer_credentials_of_self()
    groups = os.getgroups()
    if groups:
        other = ControlServer(tmp_path / "t", {}, group=groups[-1], daemon_uid=999)
        assert other.allowed_to_change(Peer(me.pid, 54321, 54321))


def peer_credentials_of_self() -> Peer:
    a, b = socket.socketpair(socket.AF_UNIX)
    try:
        return peer_credentials(a)
    finally:
        a.close()
        b.close()


def test_audit_log_file_is_append_only_jsonl(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    log.record({"uid": 1, "pid": 2, "user": "ops"}, "archive.remove", {"address": "000000000161"}, "ok")
    log.record("root", "discover", None, "error: busy")
    (tmp_path / "audit.jsonl").open("a").write("garbage\n")
    log.record("root", "archive.add", {"address": "000000000162"}, "ok")
    assert stat.S_IMODE(os.stat(tmp_path / "audit.jsonl").st_mode) == 0o640
    entries = log.read()
    assert [e["what"] for e in entries] == ["archive.remove", "discover", "archive.add"]
    assert log.read(limit=1)[0]["args"] == {"address": "000000000162"}
    assert log.read(since=datetime(2100, 1, 1)) == []
    assert len(log.read(since="2000-01-01T00:00")) == 3
    assert AuditLog(tmp_path / "missing.jsonl").read() == []


def test_cli_audit_command(daemon):
    cli(daemon, "archive", "add", "000000000161")
    res = cli(daemon, "audit")
    assert res.exit_code == 0 and "archive.add" in res.output and "ok" in res.output
    res = cli(daemon, "audit", "--since", "not a time")
    assert res.exit_code == 1 and "since" in res.output


def test_topology_renderings(daemon, tmp_path):
    res = cli(daemon, "topology")
    assert res.exit_code == 0
    assert res.output.splitlines() == [
        "000000000001 (CCO)",
        "├── 000000000101  [A online]",
        "│   └── 000000000161  [B online]",
        "└── 000000000162  [silent]",
    ]
    res = cli(daemon, "topology", "--format", "dot")
    assert res.output.startswith("graph district {")
    assert '"000000000101" -- "000000000161" [label="0.80", penwidth=2, color=blue];' in res.output
    assert '"000000000162" -- "000000000161" [label="0.30", style=dotted];' in res.output
    out = tmp_path / "t.svg"
    res = cli(daemon, "topology", "--format", "svg", "-o", str(out))
    assert res.exit_code == 0
    svg = ET.parse(out).getroot()
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert sorted(texts) == ["000000000001", "000000000101", "000000000161", "000000000162"]
    assert cli(daemon, "topology", "--format", "png").exit_code == 2  # png needs -o


def test_archive_import_checks_the_file_first(daemon, tmp_path):
    bad = tmp_path / "meters.csv"
    bad.write_text("address,protocol,point\n000000000161,dlt645-2007,1\n12345,iec,2\n")
    res = cli(daemon, "archive", "import", str(bad))
    assert res.exit_code == 1
    assert f"{bad}: archive[1].protocol: unknown meter protocol 'iec'" in res.output
    assert daemon.audit.read() == []  # nothing was sent


def test_status_text_lists_each_fault_on_its_own_line():
    text = cli_ctl.render_status({"faults": {
        "master station": "not logged in for 12 min (10.0.0.1:6000); 340 rows waiting",
        "module port": "lost: [Errno 5] Input/output error"}})
    lines = text.splitlines()
    assert "FAULT      master station: not logged in for 12 min (10.0.0.1:6000); 340 rows waiting" \
        in lines
    assert "FAULT      module port: lost: [Errno 5] Input/output error" in lines
    assert not [ln for ln in cli_ctl.render_status({"faults": {}}).splitlines()
                if ln.startswith("FAULT")]


def test_status_text_says_when_the_module_archive_was_checked_and_what_came_back():
    m = {"port": "/dev/ttyS1", "channel": "hplc", "connected": True, "cco_address": "000000000001",
         "archive_checked": "2024-03-01T03:00:12", "archive_added_back": 0}
    line = cli_ctl.render_status({"module": m}).splitlines()[1]
    assert line.endswith("CCO 000000000001  archive checked 2024-03-01T03:00:12")
    line = cli_ctl.render_status({"module": {**m, "archive_added_back": 998}}).splitlines()[1]
    assert line.endswith("archive checked 2024-03-01T03:00:12, 998 nodes added back")


def test_renderers_tolerate_sparse_results():
    # The lead's handlers may omit optional keys; the human output must not crash.
    for render in (cli_ctl.render_status, cli_ctl.render_nodes, cli_ctl.render_node,
                   cli_ctl.render_tree, cli_ctl.render_dot, cli_ctl.render_svg, cli_ctl.render_read,
                   cli_ctl.render_schedule, cli_ctl.render_uplink, cli_ctl.render_db_stats,
                   cli_ctl.render_event, cli_ctl.render_archive, cli_ctl.render_audit):
        assert isinstance(render({}), str)
