"""Setting a far-off meter's clock one meter at a time, and choosing that over the broadcast.

A DL/T 645-2007 meter takes the broadcast time sync (0x08) only when it is off by at most
5 minutes (and once a day); a meter further off stays wrong, and one that is behind freezes its
daily data late. The concentrator then writes that meter's date and time with a
password-protected write (0x14, DI 04 00 01 0C; a meter without it gets 04 00 01 01 then
04 00 01 02), with the meter's password and operator code from the key store.

The pure part (no I/O, no clock):

* ``decide(drift_s, ...)`` -> ``ClockDecision``: nothing (within the check threshold),
  broadcast (within ``clock.write_beyond_s``), write (beyond it, writes enabled, a password
  known, not yet written or refused today), or leave alone with the reason.
* ``clock_write_frames(address, when, password, combined=...)``: the write frame(s).
* ``interpret_write_reply(address, reply)`` -> ``(WriteOutcome, detail)``.

``MeterClock`` is the small driver the reader's clock task calls with the drift it measured
and two callables (send one DL/T 645 request through the mesh; read the meter's clock again):
it applies the policy, sends the write, re-reads the clock, writes the audit log and returns a
``ClockCorrection`` whose ``event_detail()`` goes into the ERC 12 (meter clock) event. It keeps
which meters were written or refused their password today (in the store's key-value table when
given one, so a restart does not allow a second write the same day).

Policy (the utility's): never more than one write per meter per day (a write that got no
answer counts: it may have been applied); a wrong password is never retried the same day
(meters lock out after a few) and shows in the event; 1997 meters are left alone.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from concentrator import dlt645
from concentrator.audit import AuditLog
from concentrator.clock import Clock
from concentrator.codec import CodecError
from concentrator.config import BROADCAST_LIMIT_S, ClockConfig
from concentrator.dlt645 import DI_CLOCK_DATE, DI_CLOCK_DATETIME, DI_CLOCK_TIME, ErrorBits
from concentrator.keystore import KeyStore, MeterPassword

__all__ = [
    "ClockAction",
    "ClockDecision",
    "WriteOutcome",
    "ClockCorrection",
    "MeterClock",
    "decide",
    "clock_write_frames",
    "interpret_write_reply",
    "BROADCAST_LIMIT_S",
    "AUDIT_WHAT",
]

log = logging.getLogger(__name__)

AUDIT_WHAT = "meter.clock_write"
AUDIT_WHO = {"user": "reader:clock"}
KV_KEY = "meter_clock.today"  # {"day": ISO date, "written": [...], "refused": [...]}


class ClockAction(enum.StrEnum):
    NONE = "none"  # within the check threshold
    BROADCAST = "broadcast"  # the broadcast time sync after the round corrects it
    WRITE = "write"  # a per-meter date/time write
    LEAVE = "leave"  # too far off for the broadcast and not written (reason says why)


@dataclass(frozen=True, slots=True)
class ClockDecision:
    action: ClockAction
    reason: str


class WriteOutcome(enum.StrEnum):
    OK = "ok"  # normal reply 0x94
    PASSWORD_ERROR = "password_error"  # 0xD4 with ERR bit 2: never retried the same day
    UNSUPPORTED = "unsupported"  # 0xD4 without the password bit (e.g. no 04 00 01 0C)
    NO_REPLY = "no_reply"
    BAD_FRAME = "bad_frame"  # undecodable, from another meter, or not a write reply


_DEFAULT = ClockConfig()


def decide(drift_s: float, *, threshold_s: float, config: ClockConfig = _DEFAULT,
           has_password: bool, protocol: int = 2007, written_today: bool = False,
           refused_today: bool = False) -> ClockDecision:
    """What to do about a meter whose clock is ``drift_s`` seconds off (positive: ahead).

    Limits are inclusive: a drift of exactly ``threshold_s`` needs nothing, one of exactly
    ``config.write_beyond_s`` is left to the broadcast. A meter that cannot be written falls
    back to the broadcast while the broadcast can still correct it (±300 s).
    """
    off = abs(drift_s)
    if off <= threshold_s:
        return ClockDecision(ClockAction.NONE, f"within {threshold_s:.0f} s")
    if off <= config.write_beyond_s:
        return ClockDecision(ClockAction.BROADCAST, f"within {config.write_beyond_s:.0f} s")
    why = None
    if protocol == 1997:
        why = "DL/T 645-1997 meter: no per-meter clock write"
    elif not config.write_enabled:
        why = "per-meter clock write disabled (clock.write_enabled)"
    elif not has_password:
        why = "no DL/T 645 password for the meter in the key store"
    elif refused_today:
        why = "the meter refused the password today; not tried again before tomorrow"
    elif written_today:
        why = "already written once today"
    if why is None:
        return ClockDecision(ClockAction.WRITE, f"beyond {config.write_beyond_s:.0f} s")
    if off <= BROADCAST_LIMIT_S:
        return ClockDecision(ClockAction.BROADCAST, why)
    return ClockDecision(ClockAction.LEAVE, why)


def _password_text(pwd: MeterPassword) -> str:
    return f"{pwd.level:02X}{pwd.password}"


def clock_write_frames(address: str, when: datetime, password: MeterPassword, *,
                       combined: bool = True) -> list[dlt645.Dlt645Frame]:
    """The write(s) that set the meter's clock to ``when``: one 04 00 01 0C, or 04 00 01 01
    (date) then 04 00 01 02 (time). Raises ``EncodeError`` on a bad address or password."""
    dis = (DI_CLOCK_DATETIME,) if combined else (DI_CLOCK_DATE, DI_CLOCK_TIME)
    return [dlt645.clock_write_request(address, when, di=di, password=_password_text(password),
                                       operator=password.operator) for di in dis]


def interpret_write_reply(address: str, reply: bytes | None) -> tuple[WriteOutcome, str]:
    """What the meter at ``address`` said to a write: (outcome, human detail)."""
    if reply is None:
        return WriteOutcome.NO_REPLY, "no reply"
    try:
        frame, _ = dlt645.parse_prefix(reply)
        bits = dlt645.parse_write_reply(frame)
    except CodecError as exc:
        return WriteOutcome.BAD_FRAME, str(exc)[:80]
    if frame.address != address:
        return WriteOutcome.BAD_FRAME, f"reply from {frame.address}"
    if bits is None:
        return WriteOutcome.OK, "accepted"
    if bits & ErrorBits.PASSWORD:
        return WriteOutcome.PASSWORD_ERROR, bits.describe()
    return WriteOutcome.UNSUPPORTED, bits.describe()


@dataclass(frozen=True, slots=True)
class ClockCorrection:
    """What was done about one meter's clock in one clock round."""

    meter: str
    drift_s: float  # before, positive: the meter is ahead
    decision: ClockDecision
    outcome: WriteOutcome | None = None  # of the write (None: no write sent)
    detail: str = ""
    set_to: datetime | None = None  # the time written (the last frame's)
    drift_after_s: float | None = None  # re-read after the write (None: not re-read or unread)

    @property
    def broadcast(self) -> bool:
        """The meter is left to the broadcast time sync after the round."""
        return self.decision.action is ClockAction.BROADCAST

    def event_detail(self) -> dict[str, Any]:
        """Fields for the ERC 12 event (JSON-ready), added to drift and threshold."""
        out: dict[str, Any] = {"action": self.decision.action.value,
                               "reason": self.decision.reason}
        if self.outcome is not None:
            out["outcome"] = self.outcome.value
            out["detail"] = self.detail
        if self.set_to is not None:
            out["set_to"] = self.set_to.isoformat(timespec="seconds")
        if self.drift_after_s is not None:
            out["drift_after_s"] = round(self.drift_after_s, 1)
        return out


class _Kv(Protocol):
    def kv_get(self, key: str, default: Any = None) -> Any: ...

    def kv_set(self, key: str, value: Any) -> None: ...


#: send one DL/T 645 request to the meter; (its reply or None, seconds the exchange took)
Send = Callable[[bytes], Awaitable[tuple[bytes | None, float]]]
#: read the meter's clock again; its drift in seconds, None when it could not be read
Reread = Callable[[], Awaitable[float | None]]


class MeterClock:
    """Applies the clock policy for the reader (see the module docstring)."""

    def __init__(self, config: ClockConfig, keystore: KeyStore | None, clock: Clock, *,
                 audit: AuditLog | None = None, kv: _Kv | None = None) -> None:
        self.config = config
        self.keystore = keystore
        self.clock = clock
        self.audit = audit
        self.kv = kv
        #: meters that answered 04 00 01 0C "unsupported": written with 01 + 02 from then on
        self.no_combined: set[str] = set()
        self._day: date | None = None
        self._written: set[str] = set()
        self._refused: set[str] = set()

    # --- once a day -------------------------------------------------------------------------

    def _today(self) -> date:
        today = self.clock.now().date()
        if self._day != today:
            self._day, self._written, self._refused = today, set(), set()
            saved = None
            if self.kv is not None:
                try:
                    saved = self.kv.kv_get(KV_KEY)
                except Exception as exc:  # a store problem must not stop the clock round
                    log.error("meter clock: state not read: %s", exc)
            if isinstance(saved, dict) and saved.get("day") == today.isoformat():
                self._written = set(saved.get("written", ()))
                self._refused = set(saved.get("refused", ()))
        return today

    def _save(self) -> None:
        if self.kv is None or self._day is None:
            return
        state = {"day": self._day.isoformat(), "written": sorted(self._written),
                 "refused": sorted(self._refused)}
        try:
            self.kv.kv_set(KV_KEY, state)
        except Exception as exc:
            log.error("meter clock: state not stored: %s", exc)

    def written_today(self, meter: str) -> bool:
        self._today()
        return meter in self._written

    def refused_today(self, meter: str) -> bool:
        self._today()
        return meter in self._refused

    # --- the job ----------------------------------------------------------------------------

    def _password(self, meter: str) -> MeterPassword | None:
        if self.keystore is None:
            return None
        try:
            return self.keystore.meter_password(meter)
        except Exception as exc:  # a broken key store: no write, said once per meter
            log.error("meter %s: key store unusable: %s", meter, type(exc).__name__)
            return None

    def decide_for(self, meter: str, drift_s: float, threshold_s: float,
                   protocol: int = 2007) -> tuple[ClockDecision, MeterPassword | None]:
        """``decide`` with this meter's password and today's writes filled in."""
        self._today()
        pwd = self._password(meter) if abs(drift_s) > threshold_s else None
        decision = decide(drift_s, threshold_s=threshold_s, config=self.config,
                          has_password=pwd is not None, protocol=protocol,
                          written_today=meter in self._written,
                          refused_today=meter in self._refused)
        return decision, pwd

    async def correct(self, meter: str, protocol: int, drift_s: float, threshold_s: float, *,
                      latency_s: float, send: Send, reread: Reread) -> ClockCorrection:
        """Decide, and write the meter's clock when the policy says so; never raises on a bad
        answer. ``latency_s`` is how long the clock read took: the write carries the time it
        will be when the request reaches the meter (about half of that later)."""
        decision, pwd = self.decide_for(meter, drift_s, threshold_s, protocol)
        if decision.action is ClockAction.LEAVE:
            log.warning("meter %s: clock off by %+.0f s, left alone: %s", meter, drift_s,
                        decision.reason)
        if decision.action is not ClockAction.WRITE:
            return ClockCorrection(meter, drift_s, decision)
        assert pwd is not None
        self._written.add(meter)  # before sending: a lost reply may hide an applied write
        self._save()
        combined = meter not in self.no_combined
        outcome, detail, when = await self._write(meter, pwd, combined, latency_s, send, drift_s)
        if outcome is WriteOutcome.UNSUPPORTED and combined:
            # No 04 00 01 0C on this meter: date, then time (part of the same day's one write).
            self.no_combined.add(meter)
            log.info("meter %s: no combined date-time write (%s); writing date and time",
                     meter, detail)
            outcome, detail, when = await self._write(meter, pwd, False, latency_s, send, drift_s)
        if outcome is WriteOutcome.PASSWORD_ERROR:
            self._refused.add(meter)
            self._save()
            log.error("meter %s: clock write refused, password wrong or not authorised; "
                      "not tried again today", meter)
            return ClockCorrection(meter, drift_s, decision, outcome, detail, when)
        if outcome is not WriteOutcome.OK:
            log.warning("meter %s: clock write failed: %s (%s)", meter, outcome.value, detail)
            return ClockCorrection(meter, drift_s, decision, outcome, detail, when)
        after = await reread()
        if after is None:
            log.warning("meter %s: clock written (%+.0f s off before), not read back", meter,
                        drift_s)
        else:
            log.info("meter %s: clock written, %+.0f s off before, %+.1f s after", meter,
                     drift_s, after)
        return ClockCorrection(meter, drift_s, decision, outcome, detail, when, after)

    async def _write(self, meter: str, pwd: MeterPassword, combined: bool, latency_s: float,
                     send: Send, drift_s: float) -> tuple[WriteOutcome, str, datetime | None]:
        """Send the frame(s) of one way of writing; stop at the first that is not accepted."""
        outcome, detail, when = WriteOutcome.OK, "accepted", None
        for di in ((DI_CLOCK_DATETIME,) if combined else (DI_CLOCK_DATE, DI_CLOCK_TIME)):
            # The meter keeps whole seconds: round to the nearest one at its arrival.
            arrive = self.clock.now() + timedelta(seconds=max(0.0, latency_s) / 2 + 0.5)
            when = arrive.replace(microsecond=0)
            try:
                request = dlt645.encode(dlt645.clock_write_request(
                    meter, when, di=di, password=_password_text(pwd), operator=pwd.operator))
            except CodecError as exc:
                outcome, detail = WriteOutcome.BAD_FRAME, f"cannot encode the write: {exc}"
                self._audit(meter, di, when, drift_s, f"error: {detail}")
                return outcome, detail, when
            reply, _lat = await send(request)
            outcome, detail = interpret_write_reply(meter, reply)
            self._audit(meter, di, when, drift_s,
                        "ok" if outcome is WriteOutcome.OK else f"error: {outcome.value}: {detail}")
            if outcome is not WriteOutcome.OK:
                break
        return outcome, detail, when

    def _audit(self, meter: str, di: int, when: datetime, drift_s: float, outcome: str) -> None:
        if self.audit is None:
            return
        args = {"meter": meter, "di": dlt645.format_di(di), "set_to": when.isoformat(),
                "drift_s": round(drift_s, 1)}
        try:
            self.audit.record(AUDIT_WHO, AUDIT_WHAT, args, outcome)
        except OSError as exc:
            log.error("meter %s: clock write not audited (%s): %s", meter, self.audit.path, exc)
