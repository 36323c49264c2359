"""The control socket: JSON-lines requests from the `concentrator` command line to the daemon.

Wire format (one UTF-8 JSON object per ``\\n``-terminated line, at most ``MAX_LINE`` bytes;
the full contract and every command's result shape are in ``docs/control-protocol.md``)::

    -> {"id": 1, "cmd": "status", "args": {}}
    <- {"id": 1, "ok": true, "result": {...}}
    <- {"id": 1, "ok": false, "error": "unknown command 'stauts'", "code": "unknown-command"}

A streaming command (``events`` with follow, ``discover``) answers with any number of
``{"id": 1, "item": {...}}`` lines and ends with one line that has ``"ok"`` (and ``"end": true``).
The line carrying ``"ok"`` always ends a request. While a stream runs, the client stops it by
closing the connection or sending any line.

``ControlServer`` (asyncio) checks each peer's credentials with ``SO_PEERCRED``: state-changing
commands are refused (code ``denied``) unless the peer is root, the daemon's own user, or a
member of the control group, and every state-changing command is written to the audit log with
its outcome. Malformed input gets an error reply, never an exception out of the server.
``ControlClient`` is the blocking client the CLI uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import inspect
import json
import logging
import os
import pwd
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from concentrator.audit import AuditLog

__all__ = [
    "MAX_LINE",
    "STATE_CHANGING",
    "Peer",
    "CommandError",
    "ControlError",
    "DaemonUnreachable",
    "CommandFailed",
    "ControlServer",
    "ControlClient",
    "Stream",
    "StreamResult",
    "audit_handler",
]

log = logging.getLogger(__name__)

MAX_LINE = 64 * 1024
# Commands that change the daemon's state; the lead's handler table uses these names.
STATE_CHANGING = frozenset({"discover", "archive.add", "archive.remove", "archive.import"})

Handler = Callable[[dict[str, Any]], Awaitable[Any] | AsyncIterator[Any]]


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end of a connection, as the kernel reports it."""

    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    def as_dict(self) -> dict[str, Any]:
        return {"uid": self.uid, "gid": self.gid, "pid": self.pid, "user": self.user}


class CommandError(Exception):
    """Raised by a handler for a request it cannot carry out; the message goes to the user."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


class ControlError(Exception):
    """Client side: base of every control-socket failure."""

    code = "failed"


class DaemonUnreachable(ControlError):
    """No daemon answers on the socket (not running, wrong path, no permission)."""

    code = "unreachable"


class CommandFailed(ControlError):
    """The daemon answered ``ok: false``."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


def peer_credentials(sock: socket.socket) -> Peer:
    """``SO_PEERCRED`` of a connected Unix socket (Linux)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def _process_groups(pid: int) -> set[int]:
    """Supplementary groups of a live process, from /proc (empty if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:]}
    except (OSError, ValueError):
        pass
    return set()


def _resolve_group(group: str | int | None) -> int | None:
    if group is None:
        return None
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return int(group) if group.isdigit() else None


def _encode(obj: Mapping[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":")) + "\n").encode()


class ControlServer:
    """Serves ``handlers`` (command name -> async function or async generator of ``args``)."""

    def __init__(
        self,
        path: str | Path,
        handlers: Mapping[str, Handler],
        *,
        group: str | int | None = None,
        mode: int = 0o660,
        state_changing: frozenset[str] | set[str] = STATE_CHANGING,
        audit: AuditLog | None = None,
        credentials: Callable[[socket.socket], Peer] = peer_credentials,
        daemon_uid: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.handlers = dict(handlers)
        self.group = group
        self.mode = mode
        self.state_changing = frozenset(state_changing)
        self.audit = audit
        self._credentials = credentials
        self._daemon_uid = os.geteuid() if daemon_uid is None else daemon_uid
        self._gid = _resolve_group(group)
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and start accepting connections."""
        if self.path.exists() or self.path.is_symlink():
            if await self._someone_listening():
                raise RuntimeError(f"{self.path}: another daemon is already serving this socket")
            self.path.unlink()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_LINE)
        os.chmod(self.path, self.mode)
        if self.group is not None and self._gid is None:
            log.warning("control socket %s: group %r does not exist; only root and uid %d may "
                        "change state", self.path, self.group, self._daemon_uid)
        elif self._gid is not None:
            try:
                os.chown(self.path, -1, self._gid)
            except OSError as exc:
                log.warning("control socket %s: cannot set group %s: %s", self.path, self.group, exc)
        log.info("control socket listening on %s (mode %04o)", self.path, self.mode)

    async def _someone_listening(self) -> bool:
        try:
            _, writer = await asyncio.open_unix_connection(str(self.path))
        except OSError:
            return False
        writer.close()
        return True

    async def close(self) -> None:
        """Stop accepting, end every open connection and remove the socket file."""
        if self._server is not None:
            self._server.close()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- authorisation -------------------------------------------------------------------------

    def allowed_to_change(self, peer: Peer) -> bool:
        """Root, the daemon's own user, or a member (primary or supplementary) of the group."""
        if peer.uid == 0 or peer.uid == self._daemon_uid:
            return True
        if self._gid is None:
            return False
        if peer.gid == self._gid or self._gid in _process_groups(peer.pid):
            return True
        # /proc of other users may be hidden (hidepid); fall back to the group database.
        try:
            return peer.user in grp.getgrgid(self._gid).gr_mem
        except KeyError:
            return False

    # --- connections ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            sock = writer.get_extra_info("socket")
            try:
                peer = self._credentials(sock)
            except OSError as exc:
                log.warning("control: cannot read peer credentials: %s", exc)
                return
            log.debug("control: connection from %s (uid %d pid %d)", peer.user, peer.uid, peer.pid)
            await self._session(peer, reader, writer)
        except (ConnectionError, BrokenPipeError):
            pass  # the client went away; nothing to tell it
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _session(self, peer: Peer, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if exc.partial.strip():
                    line = exc.partial  # last request without newline: still answer it
                else:
                    return
            except asyncio.LimitOverrunError:
                # The rest of the line cannot be framed reliably: answer, then hang up.
                log.warning("control: request line over %d bytes from %s (pid %d)",
                            MAX_LINE, peer.user, peer.pid)
                await self._send(writer, {"id": None, "ok": False, "code": "bad-request",
                                          "error": f"request line too long (max {MAX_LINE} bytes)"})
                return
            if not line.strip():
                continue
            await self._handle_line(peer, line, reader, writer)
            if reader.at_eof():
                return

    async def _send(self, writer: asyncio.StreamWriter, obj: Mapping[str, Any]) -> None:
        writer.write(_encode(obj))
        await writer.drain()

    async def _handle_line(self, peer: Peer, line: bytes, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        try:
            req = json.loads(line.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("control: malformed request from %s (pid %d): %s", peer.user, peer.pid, exc)
            await self._send(writer, {"id": None, "ok": False, "code": "bad-request",
                                      "error": f"malformed JSON: {exc}"})
            return
        rid = req.get("id") if isinstance(req, dict) else None
        if isinstance(rid, bool) or not isinstance(rid, int | str | None):
            rid = None
        problem = _check_request(req)
        if problem:
            log.warning("control: bad request from %s (pid %d): %s", peer.user, peer.pid, problem)
            await self._send(writer, {"id": rid, "ok": False, "code": "bad-request", "error": problem})
            return
        cmd: str = req["cmd"]
        args: dict[str, Any] = req.get("args") or {}
        handler = self.handlers.get(cmd)
        if handler is None:
            await self._send(writer, {"id": rid, "ok": False, "code": "unknown-command",
                                      "error": f"unknown command {cmd!r}"})
            return
        changing = cmd in self.state_changing
        if changing and not self.allowed_to_change(peer):
            log.warning("control: refused %s from %s (uid %d pid %d): not in group %s",
                        cmd, peer.user, peer.uid, peer.pid, self.group)
            self._audit(peer, cmd, args, "denied")
            await self._send(writer, {"id": rid, "ok": False, "code": "denied",
                                      "error": f"permission denied: {cmd} changes the daemon's state; "
                                               f"run as root or as a member of group {self.group}"})
            return
        log.info("control: %s from %s (pid %d)", cmd, peer.user, peer.pid)
        try:
            outcome = handler(args)
            if inspect.isasyncgen(outcome):
                reply = await self._stream(rid, outcome, reader, writer)
            else:
                reply = {"id": rid, "ok": True, "result": await outcome}
        except CommandError as exc:
            reply = {"id": rid, "ok": False, "code": exc.code, "error": str(exc)}
        except (ConnectionError, asyncio.CancelledError):
            if changing:
                self._audit(peer, cmd, args, "error: connection closed")
            raise
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the server
            log.exception("control: handler for %s failed", cmd)
            reply = {"id": rid, "ok": False, "code": "internal", "error": f"internal error: {exc}"}
        if changing:
            self._audit(peer, cmd, args, "ok" if reply.get("ok") else f"error: {reply.get('error')}")
        await self._send(writer, reply)

    async def _stream(self, rid: Any, items: AsyncIterator[Any], reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> dict[str, Any]:
        """Send each item; stop early when the client closes or sends anything."""
        stop = asyncio.ensure_future(reader.read(1))
        result: Any = None
        cancelled = False
        try:
            it = aiter(items)
            while True:
                nxt = asyncio.ensure_future(anext(it))
                done, _ = await asyncio.wait({nxt, stop}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    nxt.cancel()
                    with contextlib.suppress(BaseException):
                        await nxt
                    cancelled = True
                    break
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    break
                if isinstance(item, StreamResult):
                    result = item.value
                    break
                await self._send(writer, {"id": rid, "item": item})
        finally:
            stop.cancel()
            with contextlib.suppress(BaseException):
                await stop
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        reply: dict[str, Any] = {"id": rid, "ok": True, "end": True, "result": result}
        if cancelled:
            reply["cancelled"] = True
        return reply

    def _audit(self, peer: Peer, cmd: str, args: Mapping[str, Any], outcome: str) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record(peer.as_dict(), cmd, args, outcome)
        except OSError as exc:
            log.error("audit log %s unwritable: %s (%s by %s -> %s)",
                      self.audit.path, exc, cmd, peer.user, outcome)


@dataclass(frozen=True, slots=True)
class StreamResult:
    """Yield this last from a streaming handler to put a summary in the end line."""

    value: Any


def _check_request(req: Any) -> str | None:
    if not isinstance(req, dict):
        return "request must be a JSON object"
    cmd = req.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        return "request needs a \"cmd\" string"
    args = req.get("args")
    if args is not None and not isinstance(args, dict):
        return "\"args\" must be a JSON object"
    return None


def audit_handler(audit: AuditLog) -> Handler:
    """A ready ``audit`` command handler: args ``since`` (ISO time) and ``limit``."""

    async def handle(args: dict[str, Any]) -> dict[str, Any]:
        since = args.get("since")
        limit = args.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise CommandError("limit must be a non-negative integer", "bad-request")
        try:
            entries = audit.read(since=since, limit=limit)
        except ValueError as exc:
            raise CommandError(f"since: {exc}", "bad-request") from exc
        return {"entries": entries}

    return handle


# --- client ------------------------------------------------------------------------------------


class ControlClient:
    """Blocking client: one connection per request (the CLI makes one or two)."""

    def __init__(self, path: str | Path, *, timeout: float | None = 120.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._next_id = 1

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(10.0)
        try:
            sock.connect(str(self.path))
        except FileNotFoundError:
            sock.close()
            raise DaemonUnreachable(f"no daemon socket at {self.path} (is concentrator running?)") from None
        except ConnectionRefusedError:
            sock.close()
            raise DaemonUnreachable(f"daemon not accepting on {self.path} (stale socket?)") from None
        except PermissionError:
            sock.close()
            raise DaemonUnreachable(f"permission denied on {self.path} "
                                    "(are you in the concentrator group?)") from None
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        return sock

    def _send(self, sock: socket.socket, cmd: str, args: Mapping[str, Any] | None) -> int:
        rid = self._next_id
        self._next_id += 1
        sock.sendall(_encode({"id": rid, "cmd": cmd, "args": dict(args or {})}))
        return rid

    def request(self, cmd: str, args: Mapping[str, Any] | None = None) -> Any:
        """Send one command and return its ``result``; raises ``CommandFailed`` on ``ok: false``."""
        stream = self.stream(cmd, args)
        for _ in stream:
            pass  # a plain command sends no items; tolerate them all the same
        return stream.result

    def stream(self, cmd: str, args: Mapping[str, Any] | None = None, *,
               timeout: float | None | str = "default") -> Stream:
        """Send a command and iterate its items; ``.result`` holds the end line's result."""
        sock = self._connect()
        try:
            rid = self._send(sock, cmd, args)
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(f"daemon closed {self.path}: {exc}") from None
        sock.settimeout(self.timeout if timeout == "default" else timeout)
        return Stream(sock, rid, str(self.path))


class Stream:
    """Items of one response; iterate it, then read ``result`` (and ``cancelled``)."""

    def __init__(self, sock: socket.socket, rid: int, where: str) -> None:
        self._sock = sock
        self._rid = rid
        self._where = where
        self._file = sock.makefile("rb")
        self.result: Any = None
        self.cancelled = False
        self.done = False

    def __iter__(self) -> Iterator[Any]:
        try:
            while not self.done:
                try:
                    line = self._file.readline(MAX_LINE * 16)
                except TimeoutError:
                    raise ControlError(f"no answer from daemon on {self._where} (timed out)") from None
                except OSError as exc:
                    raise DaemonUnreachable(f"connection to {self._where} lost: {exc}") from None
                if not line:
                    raise ControlError(f"daemon closed the connection on {self._where} without answering")
                try:
                    msg = json.loads(line)
                except ValueError as exc:
                    raise ControlError(f"malformed reply from daemon: {exc}") from None
                if not isinstance(msg, dict):
                    raise ControlError("malformed reply from daemon: not an object")
                if "ok" in msg:
                    self.done = True
                    if not msg["ok"]:
                        raise CommandFailed(str(msg.get("error", "failed")), str(msg.get("code", "failed")))
                    self.result = msg.get("result")
                    self.cancelled = bool(msg.get("cancelled"))
                    return
                if "item" in msg:
                    yield msg["item"]
        finally:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
            self._sock.close()
