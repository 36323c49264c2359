"""Authentication of the master's state-changing commands (Q/GDW 1376.1 PW field + Tp).

Sans-IO: pure functions and one small state machine; the uplink client feeds it decoded
frames and the wall time, and records what it decides. Algorithm (``docs/security.md``):

* **MAC**: every downlink frame that carries PW (AFN 01 reset, 04 set parameters, 05 control,
  06, 0F file transfer, 10 forwarding: the AFNs that change state or reach a meter) carries
  ``HMAC-SHA256(key, user data with the 16 PW bytes set to zero)[:16]`` in PW. User data is
  C through the end of AUX (so A, AFN, SEQ, every data unit and the Tp are covered), exactly
  the bytes the CS sums. ``key`` is the per-terminal key from ``concentrator.keystore``.
* **Freshness**: a signed command must carry a Tp. Its send time must be within the frame's
  allowed delay (or ``max_delay`` when the frame says 0 = "do not check"), and its PFC must come
  *after* the last accepted PFC of that master (per MSA): ``0 < (pfc - last) mod 256 <= window``
  (serial-number arithmetic, RFC 1982, so 255 -> 0 is an increase). The last PFC per MSA is
  persisted (store kv ``security.pfc``) so a restart does not reopen old frames. The MACs of
  the last ``RECENT_MACS`` accepted commands are also remembered: an exact replay is refused even
  if its PFC would look new after the counter wrapped.
* The time-set command (AFN05 F31 alone) is exempt from the *time* check, not from the PFC
  check: a terminal whose clock is wrong must still accept the command that corrects it.

``CommandGuard.check(frame, now)`` returns a ``Verdict``; on success it has already advanced
the PFC. The caller denies a refused command with AFN00 F2, logs it and records ERC20.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from concentrator.codec import CodecError, EncodeError
from concentrator.keystore import KeyStore
from uplink import gdw13761 as g

__all__ = [
    "MAC_LEN",
    "SIGNED_AFNS",
    "ERC_AUTH",
    "KV_PFC",
    "RECENT_MACS",
    "Verdict",
    "KvStore",
    "CommandGuard",
    "compute_mac",
    "sign",
    "verify",
    "needs_mac",
    "pfc_after",
    "guard_for",
]

log = logging.getLogger(__name__)

MAC_LEN = 16                                            # the PW field is 16 bytes (§3.7)
SIGNED_AFNS = frozenset({0x01, 0x04, 0x05, 0x06, 0x0F, 0x10})   # downlink AFNs with PW
ERC_AUTH = 20                                           # ERC20: authentication error
KV_PFC = "security.pfc"
RECENT_MACS = 256
_ZERO_PW = bytes(MAC_LEN)


class KvStore(Protocol):
    """Where the last accepted PFC per master survives restarts (``concentrator.store.Store``)."""

    def kv_get(self, key: str, default: Any = None) -> Any: ...

    def kv_set(self, key: str, value: Any) -> None: ...


def needs_mac(frame: g.Frame13761) -> bool:
    """Whether ``frame`` is a master-initiated downlink command that must be authenticated."""
    return not frame.control.uplink and frame.control.prm and frame.afn in SIGNED_AFNS


def _signed_bytes(frame: g.Frame13761) -> bytes:
    """User data (C .. end of AUX) of ``frame`` with PW zeroed. Raises ``EncodeError``."""
    raw = g.encode(dataclasses.replace(frame, pw=_ZERO_PW))
    return raw[6:-2]


def compute_mac(key: bytes, frame: g.Frame13761) -> bytes:
    """HMAC-SHA256 over the frame's user data with PW zeroed, cut to 16 bytes."""
    return hmac.new(key, _signed_bytes(frame), hashlib.sha256).digest()[:MAC_LEN]


def sign(frame: g.Frame13761, key: bytes) -> g.Frame13761:
    """``frame`` with its PW set to the MAC (the frame must be one that carries PW)."""
    if not g.aux_has_pw(frame.control.uplink, frame.afn):
        raise EncodeError(f"AFN{frame.afn:02X} in this direction has no PW field to sign")
    return dataclasses.replace(frame, pw=compute_mac(key, frame))


def verify(frame: g.Frame13761, key: bytes) -> bool:
    """Whether the PW of ``frame`` is the MAC of its contents under ``key`` (constant time)."""
    if frame.pw is None or len(frame.pw) != MAC_LEN:
        return False
    try:
        expected = compute_mac(key, frame)
    except CodecError:
        return False
    return hmac.compare_digest(expected, frame.pw)


def pfc_after(pfc: int, last: int, window: int = 127) -> bool:
    """Whether ``pfc`` comes after ``last`` on the 8-bit counter: 1..window steps ahead."""
    return 0 < (pfc - last) % 256 <= window


@dataclass(frozen=True, slots=True)
class Verdict:
    """The guard's decision on one command; ``reason`` is a stable word for logs and ERC20."""

    ok: bool
    reason: str = ""        # "", no-key, no-mac, bad-mac, no-tp, expired, old-pfc, replayed
    detail: str = ""        # human text for the log line

    def event_detail(self, frame: g.Frame13761) -> dict[str, Any]:
        """ERC20 detail stored in the events table (and uploaded to the master): no secrets."""
        fns = sorted({fn for u in frame.units for fn in u.fns})
        return {"reason": self.reason, "afn": frame.afn, "fn": fns, "msa": frame.address.msa,
                "pfc": frame.tp.pfc if frame.tp else None, "seq": frame.seq.seq}


_ACCEPT = Verdict(True)


def _is_time_set(frame: g.Frame13761) -> bool:
    return frame.afn == 0x05 and bool(frame.units) and all(u.fns == (31,) for u in frame.units)


def _sent_at(tp: g.Tp, now: datetime) -> datetime | None:
    """The send time of Tp (A.16: day + time only) as the latest such moment <= now + 1 min."""
    st = tp.send_time
    if st is None:
        return None
    year, month = now.year, now.month
    for _ in range(3):
        try:
            sent = datetime(year, month, st.day, st.hour, st.minute, st.second,
                            tzinfo=now.tzinfo)
        except ValueError:
            sent = None
        if sent is not None and sent <= now + timedelta(minutes=1):
            return sent
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return None


class CommandGuard:
    """Decides whether a downlink command is authentic and fresh (one per terminal).

    ``key`` is this terminal's MAC key (None: every signed command is refused as no-key when
    ``require_mac`` is on). ``require_mac=False`` accepts every command unchecked, the explicit
    choice for a legacy master that cannot sign. ``kv`` persists the last PFC per MSA.
    """

    def __init__(self, key: bytes | None, *, require_mac: bool = True,
                 max_delay: timedelta = timedelta(minutes=5), window: int = 127,
                 kv: KvStore | None = None) -> None:
        if not 1 <= window <= 127:
            raise ValueError(f"PFC window {window} must be 1..127")
        self._key = key
        self.require_mac = require_mac
        self.max_delay = max_delay
        self.window = window
        self._kv = kv
        self._recent: deque[bytes] = deque(maxlen=RECENT_MACS)
        saved = kv.kv_get(KV_PFC, {}) if kv is not None else {}
        self._last: dict[int, int] = {}
        if isinstance(saved, Mapping):
            for msa, pfc in saved.items():
                if str(msa).isdigit() and isinstance(pfc, int) and 0 <= pfc <= 255:
                    self._last[int(msa)] = pfc

    def __repr__(self) -> str:     # never show the key
        return (f"<CommandGuard require_mac={self.require_mac} key={'set' if self._key else 'none'}"
                f" last_pfc={self._last}>")

    @property
    def last_pfc(self) -> dict[int, int]:
        """Last accepted PFC per master station address (MSA)."""
        return dict(self._last)

    def check(self, frame: g.Frame13761, now: datetime) -> Verdict:
        """Accept or refuse ``frame``; an accepted frame advances its master's PFC."""
        if not self.require_mac or not needs_mac(frame):
            return _ACCEPT
        if self._key is None:
            return Verdict(False, "no-key", "this terminal has no MAC key configured")
        if frame.pw is None or frame.pw == _ZERO_PW:
            return Verdict(False, "no-mac", "PW is empty (unsigned command)")
        if not verify(frame, self._key):
            return Verdict(False, "bad-mac", "MAC does not match (altered, or another key)")
        tp = frame.tp
        if tp is None:
            return Verdict(False, "no-tp", "signed command without a time label (Tp)")
        if not _is_time_set(frame):
            sent = _sent_at(tp, now)
            # The frame's own delay is honoured when it is stricter; a lax one (FF is a
            # common "don't care") is capped so a captured frame cannot be held for hours.
            allowed = (min(timedelta(minutes=tp.delay), self.max_delay) if tp.delay
                       else self.max_delay)
            if sent is None or now - sent > allowed:
                return Verdict(False, "expired",
                               f"Tp {tp.send_time} + {allowed} is before {now:%d %H:%M:%S}")
        if frame.pw in self._recent:
            return Verdict(False, "replayed", "the same signed command was already accepted")
        msa = frame.address.msa
        last = self._last.get(msa)
        if last is not None and not pfc_after(tp.pfc, last, self.window):
            return Verdict(False, "old-pfc", f"PFC {tp.pfc} does not follow {last}")
        self._last[msa] = tp.pfc
        self._recent.append(frame.pw)
        if self._kv is not None:
            self._kv.kv_set(KV_PFC, {str(k): v for k, v in sorted(self._last.items())})
        return _ACCEPT


def guard_for(keys: KeyStore | None, district: str, terminal: int, *, require_mac: bool = True,
              max_delay: timedelta = timedelta(minutes=5), kv: KvStore | None = None
              ) -> CommandGuard:
    """The guard of terminal ``district``/``terminal`` with its key from ``keys``."""
    key = keys.terminal_key(district, terminal) if keys is not None else None
    if require_mac and key is None:
        log.error("terminal %s-%05d: security.require_mac is on but the key store has no key "
                  "for it: every state-changing command will be denied", district, terminal)
    elif not require_mac:
        log.warning("terminal %s-%05d: security.require_mac is off: state-changing commands "
                    "are accepted without authentication", district, terminal)
    return CommandGuard(key, require_mac=require_mac, max_delay=max_delay, kv=kv)
