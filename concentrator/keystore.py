"""Secrets of the concentrator behind one interface: uplink MAC keys and DL/T 645 meter passwords.

``KeyStore`` is what the rest of the code asks; nothing else reads key material from disk.

* ``terminal_key(district, terminal)``: the 1376.1 command-authentication key of a terminal
  (HMAC-SHA256 key, 16..64 bytes). The concentrator holds its own; the master station holds one
  per terminal it commands.
* ``meter_password(meter)``: the DL/T 645 write/control password (level + 3 bytes) and
  operator code of a meter (protocols.md §1.10).

``FileKeyStore`` is the software store: one JSON file, owner read/write only (mode 0600).
It refuses a file that the group or other users may read or write, or that belongs to another
user, because anyone who can read it can command every meter. Key bytes never appear in
logs, reprs or exceptions; log lines name the terminal/meter and say "key loaded", nothing more.
``MemoryKeyStore`` is the same interface without a file (tests, the simulated master).

File layout (``docs/security.md``)::

    {"terminals": {"4403:1": "<hex key>"},
     "meters": {"000000000161": {"level": 2, "password": "123456", "operator": "00000000"}}}

Errors: ``KeyStoreError`` (unreadable, unsafe or malformed file; bad values given to a setter).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "KeyStore",
    "KeyStoreError",
    "MeterPassword",
    "MemoryKeyStore",
    "FileKeyStore",
    "terminal_id",
    "MIN_KEY_BYTES",
    "MAX_KEY_BYTES",
]

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 16      # 128 bits: the MAC on the wire is 128 bits, a shorter key is the weak link
MAX_KEY_BYTES = 64      # one SHA-256 block; longer HMAC keys are hashed down anyway


class KeyStoreError(Exception):
    """The key file is unreadable, unsafe or malformed, or a value given to a setter is bad."""


def terminal_id(district: str, terminal: int) -> str:
    """Key-file name of a terminal: "4403:1" (the same form ``master-cmd --terminal`` takes)."""
    return f"{district.upper()}:{int(terminal)}"


@dataclass(frozen=True, slots=True)
class MeterPassword:
    """A DL/T 645 password: level PA (02/04 for plain writes, 98/99 with ESAM) and 3 bytes."""

    level: int
    password: str = field(repr=False)   # 6 digits as printed, e.g. "123456"; never shown
    operator: str = "00000000"          # operator code C0..C3 as printed

    def __post_init__(self) -> None:
        if not 0 <= self.level <= 0xFF:
            raise KeyStoreError(f"password level {self.level} is not 0..255")
        for what, text, n in (("password", self.password, 6), ("operator", self.operator, 8)):
            if len(text) != n or any(ch not in "0123456789abcdefABCDEF" for ch in text):
                raise KeyStoreError(f"meter {what} must be {n} hex digits")

    def wire(self) -> bytes:
        """``PA P0 P1 P2 C0 C1 C2 C3`` as a 645 write/control data field starts (low byte first)."""
        return (bytes([self.level]) + bytes.fromhex(self.password)[::-1]
                + bytes.fromhex(self.operator)[::-1])


class KeyStore(Protocol):
    """Where keys and meter passwords come from (software file now, a secure element later)."""

    def terminal_key(self, district: str, terminal: int) -> bytes | None:
        """The MAC key of that terminal; None when this store has none."""
        ...

    def meter_password(self, meter: str) -> MeterPassword | None:
        """The DL/T 645 password of that meter; None when this store has none."""
        ...


def _check_key(key: bytes, who: str) -> bytes:
    if not isinstance(key, bytes | bytearray) or not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise KeyStoreError(f"key of terminal {who} must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes")
    return bytes(key)


def _check_meter(meter: str) -> str:
    if len(meter) != 12 or any(ch not in "0123456789abcdefABCDEF" for ch in meter):
        raise KeyStoreError(f"meter address {meter!r} must have 12 digits")
    return meter.upper()


class MemoryKeyStore:
    """A ``KeyStore`` held in memory (tests, the simulated master station)."""

    def __init__(self) -> None:
        self._keys: dict[str, bytes] = {}
        self._meters: dict[str, MeterPassword] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {len(self._keys)} terminal keys, " \
               f"{len(self._meters)} meter passwords>"

    def terminal_key(self, district: str, terminal: int) -> bytes | None:
        return self._keys.get(terminal_id(district, terminal))

    def meter_password(self, meter: str) -> MeterPassword | None:
        return self._meters.get(meter.upper())

    def set_terminal_key(self, district: str, terminal: int, key: bytes) -> None:
        who = terminal_id(district, terminal)
        self._keys[who] = _check_key(key, who)

    def set_meter_password(self, meter: str, password: MeterPassword) -> None:
        self._meters[_check_meter(meter)] = password

    def _load_dict(self, data: Any, source: str) -> None:
        if not isinstance(data, dict):
            raise KeyStoreError(f"{source}: must hold a JSON object")
        unknown = set(data) - {"terminals", "meters"}
        if unknown:
            raise KeyStoreError(f"{source}: unknown sections {sorted(unknown)}")
        terminals = data.get("terminals", {})
        meters = data.get("meters", {})
        if not isinstance(terminals, dict) or not isinstance(meters, dict):
            raise KeyStoreError(f"{source}: 'terminals' and 'meters' must be objects")
        keys: dict[str, bytes] = {}
        for who, hexkey in terminals.items():
            district, _, term = str(who).partition(":")
            if len(district) != 4 or not term.isdigit() or not 1 <= int(term) <= 0xFFFF:
                raise KeyStoreError(f"{source}: terminal {who!r} must be A1:A2, e.g. 4403:1")
            try:
                raw = bytes.fromhex(hexkey) if isinstance(hexkey, str) else None
            except ValueError:
                raw = None
            if raw is None:
                # Do not echo the value: it is (a mistyped) secret.
                raise KeyStoreError(f"{source}: key of terminal {who} is not a hex string")
            name = terminal_id(district, int(term))
            keys[name] = _check_key(raw, name)
        pwds: dict[str, MeterPassword] = {}
        for addr, entry in meters.items():
            if not isinstance(entry, dict):
                raise KeyStoreError(f"{source}: meter {addr!r} must map to an object")
            try:
                pwd = MeterPassword(int(entry.get("level", 2)), str(entry["password"]),
                                    str(entry.get("operator", "00000000")))
            except (KeyError, TypeError, ValueError) as exc:
                raise KeyStoreError(f"{source}: meter {addr!r} needs level/password "
                                    f"({type(exc).__name__})") from None
            pwds[_check_meter(str(addr))] = pwd
        self._keys, self._meters = keys, pwds

    def _as_dict(self) -> dict[str, Any]:
        return {"terminals": {k: v.hex() for k, v in sorted(self._keys.items())},
                "meters": {m: {"level": p.level, "password": p.password, "operator": p.operator}
                           for m, p in sorted(self._meters.items())}}


class FileKeyStore(MemoryKeyStore):
    """The software key store: a JSON file readable and writable by its owner only (0600).

    ``FileKeyStore(path)`` loads it at once; ``create=True`` starts an empty store when the
    file does not exist (written on ``save()``). Raises ``KeyStoreError``.
    """

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        if create and not self.path.exists():
            log.info("key store %s: new, empty", self.path)
            return
        self.reload()

    def reload(self) -> None:
        """Read the file again (SIGHUP); the old keys stay if the new file is refused."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise KeyStoreError(f"{self.path}: cannot open key file: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            self._check_safe(st)
            try:
                data = json.loads(fh.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                # The message carries no file content: only where it went wrong.
                where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
                raise KeyStoreError(f"{self.path}: not valid JSON{where}") from None
        self._load_dict(data, str(self.path))
        log.info("key store %s: %d terminal keys and %d meter passwords loaded", self.path,
                 len(self._keys), len(self._meters))

    def _check_safe(self, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise KeyStoreError(f"{self.path}: not a regular file")
        if st.st_mode & 0o077:
            raise KeyStoreError(f"{self.path}: mode {stat.S_IMODE(st.st_mode):04o} lets other "
                                "users read or write the keys; chmod 600 it")
        if st.st_uid not in (os.geteuid(), 0):
            raise KeyStoreError(f"{self.path}: owned by uid {st.st_uid}, not by this user "
                                "or root")

    def save(self) -> None:
        """Write the store atomically with mode 0600 (a temporary file renamed over the old)."""
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self._as_dict(), fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        log.info("key store %s: saved (%d terminal keys, %d meter passwords)", self.path,
                 len(self._keys), len(self._meters))

