"""Prepayment (issue 8): credit ledgers of prepaid meters and the relay control they drive.

A prepaid meter has an *account* (flat price or a price per DL/T 645 tariff register 1..4,
alarm and trip thresholds) and a *ledger* (balance in yuan, the registers and time of the last
reading). Every reading (``on_reading``: the service's own periodic read of 00 01 FF 00, or
the Reader's daily/real-time readings) charges the register *increases* since the last
reading at the account's prices. Purchases (``purchase``) add to or replace the balance, once
per (meter, order number).

After each ledger update the balance is compared with the thresholds and *control actions*
are queued: ``alarm`` (0x1C N1 = 2A) below the alarm threshold, ``alarm_release`` (2B) above
it, ``trip`` (1A) at or below the trip threshold, ``close`` (1B or 1C per ``close_mode``) when
a purchase lifts the balance above it again. The master's direct trip/close
(``request_control``) goes through the same executor. Actions are a small state machine::

    pending --sent, reply 9C, status word 3 confirms--> verified
    pending --no reply / refused / not confirmed--> pending (attempt + 1, backoff doubles)
            --max_attempts reached, or the password refused--> failed
    pending --trip while the meter is protected--> deferred --period over--> pending
    pending | deferred --a newer action of the same kind for the meter--> superseded
    deferred --credit restored before the period ended--> cancelled

One outstanding *relay* action (trip/close) and one *alarm* action per meter: the latest
wins. Every command sent and its outcome goes to the audit log and, as an event, to the
master: ERC7 (credit-driven control, ``action, outcome, attempts, balance``), ERC5 (master's
direct control, ``action, outcome, attempts``), ERC19 purchase applied, ERC23 low credit,
ERC8 meter registers went backwards (meter replaced: new baseline).

A trip is *protected* (deferred) during the configured daily periods (``22:00-06:00``),
holidays and while the master's protect flag is on (per meter or for all, with an optional
end). Everything lives in the SQLite store (tables ``prepay_*``, schema migration 2); a
purchase, its balance and its event are one transaction. See docs/prepayment.md.

Errors: ``PrepayError`` (a ``ValueError``) for a request that names an unknown meter or action.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from concentrator import dlt645
from concentrator.audit import AuditLog
from concentrator.clock import Clock
from concentrator.codec import CodecError, EncodeError, address_to_wire
from concentrator.config import PrepayAccountConfig, PrepayConfig
from concentrator.control import CommandError
from concentrator.dlt645 import ErrorBits, RemoteAction, StatusWord3
from concentrator.keystore import KeyStore
from concentrator.reader import (
    DI_FWD,
    DI_FWD_BLOCK,
    DI_STATUS3,
    NOT_AVAILABLE,
    Exchanger,
    _decode_reply,
    _normalize,
)
from concentrator.store import Store, StoreError

__all__ = [
    "PrepayService",
    "PrepayError",
    "Account",
    "Ledger",
    "PurchaseResult",
    "PurchaseRecord",
    "ControlTicket",
    "Action",
    "ProtectCalendar",
    "charge",
    "ERC_DIRECT_CONTROL",
    "ERC_CREDIT_CONTROL",
    "ERC_METER_REPLACED",
    "ERC_PURCHASE",
    "ERC_LOW_CREDIT",
]

log = logging.getLogger(__name__)

ERC_DIRECT_CONTROL = 5  # outcome of the master's direct trip/close
ERC_CREDIT_CONTROL = 7  # outcome of a credit-driven trip/close/alarm
ERC_METER_REPLACED = 8  # registers went backwards: new baseline (1376.1 "meter parameter change")
ERC_PURCHASE = 19  # purchase applied
ERC_LOW_CREDIT = 23  # balance fell below the alarm threshold

RELAY_ACTIONS = ("trip", "close")
ALARM_ACTIONS = ("alarm", "alarm_release")
OPEN_STATES = ("pending", "deferred")
_FOREVER = datetime.max.replace(microsecond=0)
_VERIFY_DELAY_S = 2.0  # a relay needs a moment before status word 3 shows it
_IDLE_S = 300.0  # the executor re-checks at least this often
_BACKOFF_CAP_S = 3600.0


class PrepayError(ValueError):
    """A request names an unknown meter or action, or carries an impossible amount."""


# --- the model (pure) -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """A prepaid meter's tariff and thresholds (yuan, yuan/kWh)."""

    meter: str
    flat_price: Decimal | None  # the price of every kWh, or the fallback for a TOU account
    prices: tuple[Decimal, ...]  # price of tariff registers 1..n (empty: flat)
    alarm_threshold: Decimal
    trip_threshold: Decimal

    def as_json(self) -> dict[str, Any]:
        return {"flat_price": None if self.flat_price is None else str(self.flat_price),
                "prices": [str(p) for p in self.prices],
                "alarm_threshold": str(self.alarm_threshold),
                "trip_threshold": str(self.trip_threshold)}

    @classmethod
    def from_json(cls, meter: str, d: Mapping[str, Any]) -> Account:
        flat = d.get("flat_price")
        return cls(meter, None if flat is None else Decimal(flat),
                   tuple(Decimal(p) for p in d.get("prices", ())),
                   Decimal(d["alarm_threshold"]), Decimal(d["trip_threshold"]))


Registers = tuple[Decimal, tuple[Decimal, ...]]  # (total, tariff registers 1..n) in kWh


def charge(account: Account, before: Registers, after: Registers) -> tuple[Decimal, Decimal] | None:
    """(kWh, cost) consumed between two readings; None when a register went backwards.

    A TOU account charges each tariff register's increase at its price; when the readings
    lack tariff registers (a meter answering the total only) the total is charged at the
    flat price, or at the highest tariff price if the account has no flat price (the
    customer is never undercharged by a missing register).
    """
    t0, r0 = before
    t1, r1 = after
    if t1 < t0 or any(b < a for a, b in zip(r0, r1, strict=False)):
        return None
    kwh = t1 - t0
    prices = account.prices
    if prices and len(r0) >= len(prices) and len(r1) >= len(prices):
        cost = sum(((r1[i] - r0[i]) * p for i, p in enumerate(prices)), Decimal(0))
        return kwh, cost
    price = account.flat_price if account.flat_price is not None else max(prices)
    return kwh, kwh * price


@dataclass(frozen=True, slots=True)
class Ledger:
    """A prepaid meter's credit and what the last reading said."""

    meter: str
    balance: Decimal
    last_registers: Registers | None
    last_time: datetime | None
    alarm_on: bool  # the low-credit alarm was commanded
    credit_trip: bool  # the credit wants the relay open (a trip was queued for it)
    protect: bool  # the master's protect flag
    protect_until: datetime | None


@dataclass(frozen=True, slots=True)
class PurchaseResult:
    """What ``purchase`` did: status applied | duplicate | unknown-meter | not-prepaid | rejected."""

    status: str
    balance_before: Decimal | None = None
    balance_after: Decimal | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PurchaseRecord:
    """One applied purchase."""

    order_no: int
    amount: Decimal
    replace: bool
    alarm_threshold: Decimal | None
    trip_threshold: Decimal | None
    balance_before: Decimal
    balance_after: Decimal
    applied_at: datetime
    source: str


@dataclass(frozen=True, slots=True)
class ControlTicket:
    """The master's handle on a direct trip/close: state pending/deferred/verified/failed."""

    id: int
    meter: str
    action: str
    state: str


@dataclass(frozen=True, slots=True)
class Action:
    """One control action of the executor (a row of ``prepay_action``)."""

    id: int
    meter: str
    action: str  # trip | close | alarm | alarm_release
    origin: str  # credit | master
    source: str
    state: str  # pending | deferred | verified | failed | superseded | cancelled
    attempts: int
    next_at: datetime | None
    created: datetime
    updated: datetime
    outcome: str

    def as_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("next_at", "created", "updated"):
            d[k] = None if d[k] is None else d[k].isoformat(timespec="seconds")
        return d


class ProtectCalendar:
    """Daily protected periods (may cross midnight) and protected holidays."""

    def __init__(self, daily: Sequence[tuple[time, time]] = (), holidays: Sequence[date] = ()):
        self.daily = tuple(daily)
        self.holidays = frozenset(holidays)

    def _end_of(self, t: datetime) -> datetime | None:
        ends: list[datetime] = []
        if t.date() in self.holidays:
            ends.append(datetime.combine(t.date() + timedelta(days=1), time(0)))
        now = t.time()
        for start, end in self.daily:
            if start < end and start <= now < end:
                ends.append(datetime.combine(t.date(), end))
            elif start > end and now >= start:
                ends.append(datetime.combine(t.date() + timedelta(days=1), end))
            elif start > end and now < end:
                ends.append(datetime.combine(t.date(), end))
        return max(ends) if ends else None

    def protected_until(self, t: datetime) -> datetime | None:
        """End of the protected period covering ``t`` (periods that touch are joined)."""
        end = None
        probe = t
        for _ in range(400):  # a year of back-to-back holidays and nights at most
            e = self._end_of(probe)
            if e is None or e <= probe:
                break
            end = probe = e
        return end


# --- the service ------------------------------------------------------------------------------


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.replace(microsecond=0).isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def _dec(s: str | None) -> Decimal | None:
    return None if s is None else Decimal(s)


def _money(d: Decimal | None) -> str | None:
    return None if d is None else str(d.quantize(Decimal("0.01")))


def _regs_json(r: Registers) -> str:
    return json.dumps([str(r[0]), [str(x) for x in r[1]]])


def _regs_load(s: str | None) -> Registers | None:
    if s is None:
        return None
    total, tariffs = json.loads(s)
    return Decimal(total), tuple(Decimal(x) for x in tariffs)


def _registers(value: Any) -> Registers | None:
    """(total, tariffs) from a 00 01 FF 00 block tuple, a single total, or a reading record."""
    if value is None:
        return None
    if hasattr(value, "fwd_total"):
        total, tariffs = value.fwd_total, tuple(getattr(value, "fwd_tariffs", ()) or ())
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if not value:
            return None
        total, tariffs = value[0], tuple(value[1:])
    else:
        total, tariffs = value, ()
    if not isinstance(total, Decimal) or not total.is_finite():
        return None
    if any(not isinstance(x, Decimal) for x in tariffs):
        tariffs = ()  # a register the meter lacks: charge from the total
    return total, tariffs


def _check_meter(meter: str) -> str:
    try:
        address_to_wire(meter)
    except (EncodeError, TypeError) as exc:
        raise PrepayError(f"bad meter address {meter!r}: {exc}") from None
    return meter.upper()


class PrepayService:
    """Prepaid meters: ledger, purchases, protected periods and the control executor.

    ``exchanger`` is anything with ``async exchange(address, dlt645_bytes, *, priority)``
    (the mesh); ``keystore`` gives each meter's DL/T 645 password; ``audit`` receives one
    line per command sent (None: no audit file, e.g. some tests).
    """

    def __init__(self, store: Store, clock: Clock, exchanger: Exchanger, keystore: KeyStore,
                 audit: AuditLog | None, config: PrepayConfig) -> None:
        self.store = store
        self.clock = clock
        self.exchanger = exchanger
        self.keystore = keystore
        self.audit = audit
        self.config = config
        self.calendar = ProtectCalendar(config.protect_daily, config.protect_holidays)
        self._wake = asyncio.Event()
        self._inflight: int | None = None
        self._sync_accounts(config.accounts)

    # --- SQL helpers ------------------------------------------------------------------------

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self.store.db.execute(sql, params).fetchall())

    def _x(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        try:
            return self.store.db.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"prepay: {exc}") from exc

    def _now(self) -> datetime:
        return self.clock.now().replace(microsecond=0)

    # --- accounts ---------------------------------------------------------------------------

    def _sync_accounts(self, accounts: Sequence[PrepayAccountConfig]) -> None:
        """Create configured accounts once (initial credit applied once); on later starts
        take the configured prices but keep thresholds the master may have changed."""
        now = _iso(self._now())
        for a in accounts:
            meter = a.address.upper()
            stored = self.account(meter)
            if stored is None:
                acc = Account(meter, a.flat_price, tuple(a.prices), a.alarm, a.trip)
            else:
                acc = dataclasses.replace(stored, flat_price=a.flat_price, prices=tuple(a.prices))
            with self.store.batch():
                self._x("INSERT OR REPLACE INTO prepay_account (meter, params, updated)"
                        " VALUES (?,?,?)", (meter, json.dumps(acc.as_json()), now))
                if stored is None and self.ledger(meter) is None:
                    self._x("INSERT INTO prepay_ledger (meter, balance, updated) VALUES (?,?,?)",
                            (meter, str(a.initial_credit), now))
                    log.info("meter %s: prepaid account opened, credit %s yuan", meter,
                             a.initial_credit)
            rec = self.store.meter(meter)
            if rec is not None and not rec.prepaid:
                # The archive's prepaid flag is what the master station sees (1376.1 F10).
                self.store.upsert_meter(dataclasses.replace(rec, prepaid=True,
                                                            prepaid_params=acc.as_json()))

    def account(self, meter: str) -> Account | None:
        rows = self._q("SELECT params FROM prepay_account WHERE meter=?", (meter.upper(),))
        return Account.from_json(meter.upper(), json.loads(rows[0][0])) if rows else None

    def accounts(self) -> list[Account]:
        return [Account.from_json(m, json.loads(p))
                for m, p in self._q("SELECT meter, params FROM prepay_account ORDER BY meter")]

    def ledger(self, meter: str) -> Ledger | None:
        rows = self._q("SELECT meter, balance, last_registers, last_time, alarm_on, credit_trip,"
                       " protect, protect_until FROM prepay_ledger WHERE meter=?", (meter.upper(),))
        if not rows:
            return None
        r = rows[0]
        return Ledger(r[0], Decimal(r[1]), _regs_load(r[2]), _dt(r[3]), bool(r[4]), bool(r[5]),
                      bool(r[6]), _dt(r[7]))

    # --- contract: purchases, balance, protect, direct control ------------------------------

    async def purchase(self, meter: str, order_no: int, amount: Decimal, replace: bool,
                       alarm_threshold: Decimal | None, trip_threshold: Decimal | None,
                       source: str) -> PurchaseResult:
        """Apply a purchase once per (meter, order_no); a repeat returns "duplicate" with the
        balances of the first application. Purchase, balance and ERC19 are one transaction."""
        try:
            meter = _check_meter(meter)
        except PrepayError as exc:
            return PurchaseResult("rejected", reason=str(exc))
        dup = self._purchase_row(meter, order_no)
        if dup is not None:
            log.info("meter %s: purchase order %d is a duplicate (from %s)", meter, order_no, source)
            return PurchaseResult("duplicate", dup.balance_before, dup.balance_after,
                                  f"order {order_no} applied {dup.applied_at:%Y-%m-%d %H:%M:%S}")
        acc = self.account(meter)
        if acc is None:
            status = "not-prepaid" if self.store.meter(meter) is not None else "unknown-meter"
            log.warning("meter %s: purchase order %d refused: %s", meter, order_no, status)
            return PurchaseResult(status, reason=f"meter {meter} has no prepaid account")
        reason = self._purchase_problem(order_no, amount, alarm_threshold, trip_threshold, acc)
        if reason:
            log.warning("meter %s: purchase order %d rejected: %s", meter, order_no, reason)
            return PurchaseResult("rejected", reason=reason)
        led = self.ledger(meter)
        assert led is not None  # an account always has a ledger
        before = led.balance
        after = amount if replace else before + amount
        acc = dataclasses.replace(
            acc, alarm_threshold=acc.alarm_threshold if alarm_threshold is None else alarm_threshold,
            trip_threshold=acc.trip_threshold if trip_threshold is None else trip_threshold)
        now = self._now()
        with self.store.batch():
            self._x("INSERT INTO prepay_purchase (meter, order_no, amount, replace, alarm_threshold,"
                    " trip_threshold, balance_before, balance_after, applied_at, source)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (meter, order_no, str(amount), int(replace), _dec_text(alarm_threshold),
                     _dec_text(trip_threshold), str(before), str(after), _iso(now), source))
            self._x("UPDATE prepay_account SET params=?, updated=? WHERE meter=?",
                    (json.dumps(acc.as_json()), _iso(now), meter))
            self._x("UPDATE prepay_ledger SET balance=?, updated=? WHERE meter=?",
                    (str(after), _iso(now), meter))
            self.store.add_event(ERC_PURCHASE, meter, {
                "order_no": order_no, "amount": str(amount), "replace": replace,
                "balance_before": _money(before), "balance_after": _money(after)})
            self._evaluate(meter, acc, after, source)
        log.info("meter %s: purchase order %d %s %s yuan from %s: balance %s -> %s", meter,
                 order_no, "replaces with" if replace else "adds", amount, source,
                 _money(before), _money(after))
        self._wake.set()
        return PurchaseResult("applied", before, after)

    @staticmethod
    def _purchase_problem(order_no: Any, amount: Any, alarm: Decimal | None,
                          trip: Decimal | None, acc: Account) -> str:
        if isinstance(order_no, bool) or not isinstance(order_no, int) or order_no < 0:
            return f"order number {order_no!r} is not a non-negative integer"
        if not isinstance(amount, Decimal) or not amount.is_finite():
            return f"amount {amount!r} is not a decimal amount"
        if amount < 0:
            return f"amount {amount} is negative"
        for name, v in (("alarm threshold", alarm), ("trip threshold", trip)):
            if v is not None and (not isinstance(v, Decimal) or not v.is_finite()):
                return f"{name} {v!r} is not a decimal amount"
        a = acc.alarm_threshold if alarm is None else alarm
        t = acc.trip_threshold if trip is None else trip
        if a < t:
            return f"alarm threshold {a} is below the trip threshold {t}"
        return ""

    def _purchase_row(self, meter: str, order_no: Any) -> PurchaseRecord | None:
        if isinstance(order_no, bool) or not isinstance(order_no, int):
            return None
        rows = self._q(_PURCHASE_SELECT + " WHERE meter=? AND order_no=?", (meter, order_no))
        return _purchase_record(rows[0]) if rows else None

    async def balance(self, meter: str) -> Decimal | None:
        """Remaining credit in yuan; None when the meter is not prepaid."""
        try:
            led = self.ledger(_check_meter(meter))
        except PrepayError:
            return None
        return None if led is None else led.balance

    async def purchases(self, meter: str, limit: int = 20) -> list[PurchaseRecord]:
        """The meter's most recent purchases, newest first."""
        try:
            meter = _check_meter(meter)
        except PrepayError:
            return []
        rows = self._q(_PURCHASE_SELECT + " WHERE meter=? ORDER BY applied_at DESC, rowid DESC"
                       " LIMIT ?", (meter, max(0, int(limit))))
        return [_purchase_record(r) for r in rows]

    async def set_protect(self, meter: str | None, on: bool, until: datetime | None,
                          source: str) -> None:
        """The master's protect flag (no credit-driven or direct trip while on); ``until``
        ends it by itself; meter None = every prepaid meter."""
        if meter is None:
            meters = [a.meter for a in self.accounts()]
        else:
            meters = [meter.upper()]
            if self.ledger(meter.upper()) is None:
                # Nothing to protect: a meter without credit is never tripped for it.
                log.warning("meter %s: protect %s ignored: no prepaid account", meter,
                            "on" if on else "off")
                return
        now = self._now()
        with self.store.batch():
            for m in meters:
                self._x("UPDATE prepay_ledger SET protect=?, protect_until=?, updated=?"
                        " WHERE meter=?", (int(on), _iso(until) if on else None, _iso(now), m))
                if not on:
                    # Deferred trips are looked at again now; the executor re-checks periods.
                    self._x("UPDATE prepay_action SET state='pending', next_at=?, updated=?"
                            " WHERE meter=? AND state='deferred'", (_iso(now), _iso(now), m))
        self._audit(source, "prepay.protect", {"meter": meter or "all", "on": on,
                                               "until": _iso(until)}, "ok")
        log.warning("protect %s for %s%s (by %s)", "on" if on else "off",
                    f"meter {meter}" if meter else "every prepaid meter",
                    f" until {until:%Y-%m-%d %H:%M}" if on and until else "", source)
        self._wake.set()

    async def request_control(self, meter: str, action: str, source: str) -> ControlTicket:
        """Queue the master's direct trip/close; the outcome comes later as ERC5."""
        if action not in RELAY_ACTIONS:
            raise PrepayError(f"unknown control action {action!r} (trip or close)")
        meter = _check_meter(meter)
        if self.store.meter(meter) is None and self.account(meter) is None:
            raise PrepayError(f"meter {meter} is not in the archive")
        with self.store.batch():
            aid = self._enqueue(meter, action, "master", source)
        self._wake.set()
        log.warning("meter %s: direct %s requested by %s (action %d)", meter, action, source, aid)
        return ControlTicket(aid, meter, action, "pending")

    async def ticket(self, action_id: int) -> ControlTicket | None:
        """The current state of an action (a ``ControlTicket`` the master holds)."""
        a = self.action(action_id)
        return None if a is None else ControlTicket(a.id, a.meter, a.action, a.state)

    # --- readings ---------------------------------------------------------------------------

    def on_reading(self, meter: str, when: datetime, registers: Any) -> str:
        """Charge the consumption since the last reading of a prepaid meter.

        ``registers``: the forward-active block (total, tariff 1..n) as read from 00 01 FF 00,
        a single total, or a ``RealtimeReading``/``DailyReading``. ``when`` is the time the
        registers are from (a daily freeze: its freeze time). Returns what happened:
        ``not-prepaid``, ``missing`` (no value: charged at the next reading), ``stale`` (not
        newer than the last reading), ``baseline`` (first reading), ``replaced`` (registers
        went backwards: new baseline and ERC8), ``charged``.
        """
        try:
            meter = _check_meter(meter)
        except PrepayError:
            return "not-prepaid"
        acc, led = self.account(meter), self.ledger(meter)
        if acc is None or led is None:
            return "not-prepaid"
        regs = _registers(registers)
        if regs is None:
            log.info("meter %s: prepaid reading missing at %s; charged at the next one", meter,
                     when)
            return "missing"
        when = when.replace(microsecond=0)
        if led.last_time is not None and when <= led.last_time:
            return "stale"
        balance = led.balance
        outcome = "charged"
        with self.store.batch():
            if led.last_registers is None:
                outcome = "baseline"
                log.info("meter %s: prepaid baseline %s kWh at %s", meter, regs[0], when)
            else:
                got = charge(acc, led.last_registers, regs)
                if got is None:
                    outcome = "replaced"
                    log.warning("meter %s: registers went backwards (%s -> %s kWh): meter "
                                "replaced? new baseline", meter, led.last_registers[0], regs[0])
                    self.store.add_event(ERC_METER_REPLACED, meter, {
                        "reason": "registers_decreased", "before": str(led.last_registers[0]),
                        "after": str(regs[0]), "balance": _money(balance)})
                else:
                    kwh, cost = got
                    balance = balance - cost
                    if kwh:
                        log.debug("meter %s: %s kWh cost %s yuan, balance %s", meter, kwh,
                                  cost, balance)
            self._x("UPDATE prepay_ledger SET balance=?, last_registers=?, last_time=?, updated=?"
                    " WHERE meter=?", (str(balance), _regs_json(regs), _iso(when),
                                       _iso(self._now()), meter))
            self._evaluate(meter, acc, balance, "credit")
        self._wake.set()
        return outcome

    async def read_meter(self, meter: str) -> str:
        """Read the meter's forward-active registers now and charge them (``on_reading``)."""
        item = await self._read(meter, DI_FWD_BLOCK)
        if item.status == NOT_AVAILABLE:
            item = await self._read(meter, DI_FWD)
        if not item.ok:
            log.info("meter %s: prepaid energy read failed: %s %s", meter, item.status, item.detail)
            return "missing"
        return self.on_reading(meter, self.clock.now(), item.value)

    async def _read(self, meter: str, di: int) -> Any:
        request = dlt645.encode(dlt645.read_request(meter, di))
        return _decode_reply(meter, di, 2007, _normalize(await self.exchanger.exchange(meter, request)))

    # --- thresholds -> actions --------------------------------------------------------------

    def _evaluate(self, meter: str, acc: Account, balance: Decimal, source: str) -> None:
        """Queue what the balance asks for (inside the caller's transaction)."""
        led = self.ledger(meter)
        assert led is not None
        now = _iso(self._now())
        want_trip = balance <= acc.trip_threshold
        if want_trip != led.credit_trip:
            self._x("UPDATE prepay_ledger SET credit_trip=? WHERE meter=?", (int(want_trip), meter))
            self._enqueue(meter, "trip" if want_trip else "close", "credit", source)
        want_alarm = balance < acc.alarm_threshold
        if want_alarm != led.alarm_on:
            self._x("UPDATE prepay_ledger SET alarm_on=?, updated=? WHERE meter=?",
                    (int(want_alarm), now, meter))
            if want_alarm:
                self.store.add_event(ERC_LOW_CREDIT, meter, {
                    "balance": _money(balance), "alarm_threshold": _money(acc.alarm_threshold)})
                log.warning("meter %s: credit %s below the alarm threshold %s", meter,
                            _money(balance), acc.alarm_threshold)
            # A meter that is tripped needs no alarm; the alarm state still follows the credit.
            self._enqueue(meter, "alarm" if want_alarm else "alarm_release", "credit", source)

    def _enqueue(self, meter: str, action: str, origin: str, source: str) -> int:
        group = RELAY_ACTIONS if action in RELAY_ACTIONS else ALARM_ACTIONS
        now = _iso(self._now())
        superseded = self._x(
            "UPDATE prepay_action SET state='superseded', outcome=?, updated=? WHERE meter=?"
            " AND action IN (?,?) AND state IN ('pending','deferred')",
            (f"superseded by {action}", now, meter, *group)).rowcount
        cur = self._x("INSERT INTO prepay_action (meter, action, origin, source, state, attempts,"
                      " next_at, created, updated) VALUES (?,?,?,?,'pending',0,?,?,?)",
                      (meter, action, origin, source, now, now, now))
        aid = int(cur.lastrowid or 0)
        log.info("meter %s: %s queued (action %d, %s%s)", meter, action, aid, origin,
                 f", {superseded} superseded" if superseded else "")
        return aid

    # --- protection -------------------------------------------------------------------------

    def protected_until(self, meter: str, t: datetime | None = None) -> datetime | None:
        """When the protection of ``meter`` covering ``t`` (default now) ends; None if not
        protected; ``datetime.max`` while the master's flag is on with no end."""
        t = t or self._now()
        led = self.ledger(meter)
        ends = []
        if led is not None and led.protect and (led.protect_until is None or led.protect_until > t):
            ends.append(led.protect_until or _FOREVER)
        cal = self.calendar.protected_until(t)
        if cal is not None:
            ends.append(cal)
        if not ends:
            return None
        end = max(ends)
        if end != _FOREVER and led is not None and led.protect and (
                led.protect_until is None or led.protect_until > end):
            end = led.protect_until or _FOREVER
        if end != _FOREVER:
            later = self.calendar.protected_until(end)  # a holiday right after the master's flag
            end = later or end
        return end

    # --- the executor -----------------------------------------------------------------------

    def action(self, action_id: int) -> Action | None:
        rows = self._q(_ACTION_SELECT + " WHERE id=?", (int(action_id),))
        return _action(rows[0]) if rows else None

    def open_actions(self) -> list[Action]:
        return [_action(r) for r in self._q(_ACTION_SELECT + " WHERE state IN ('pending',"
                                            "'deferred') ORDER BY id")]

    async def run_due(self) -> int:
        """Execute every action that is due now; returns how many were looked at."""
        now = self._now()
        n = 0
        for a in self.open_actions():
            if a.next_at is not None and a.next_at > now:
                continue
            if a.state == "deferred" and a.next_at is None:
                continue  # waits for the master's protect flag to go off
            n += 1
            try:
                await self._step(a)
            except (StoreError, sqlite3.Error) as exc:
                log.error("meter %s: action %d could not be recorded: %s", a.meter, a.id, exc)
        return n

    def _next_due(self) -> datetime | None:
        times = [a.next_at for a in self.open_actions() if a.next_at is not None]
        return min(times) if times else None

    async def _step(self, a: Action) -> None:
        now = self._now()
        if a.action == "trip":
            if a.origin == "credit" and not self._still_due(a):
                self._finish(a, "cancelled", "credit restored", a.attempts, event=False)
                return
            until = self.protected_until(a.meter, now)
            if until is not None:
                next_at = None if until == _FOREVER else until
                with self.store.batch():
                    self._x("UPDATE prepay_action SET state='deferred', next_at=?, updated=?"
                            " WHERE id=?", (_iso(next_at), _iso(now), a.id))
                if a.state != "deferred":
                    log.warning("meter %s: trip deferred (protected until %s)", a.meter,
                                "further notice" if next_at is None else f"{next_at:%Y-%m-%d %H:%M}")
                    self._audit(a.source, "prepay.trip", {"meter": a.meter, "action_id": a.id},
                                f"deferred until {_iso(next_at) or 'protect off'}")
                return
        attempt = a.attempts + 1
        self._inflight = a.id
        try:
            ok, why, permanent = await self._send(a)
        finally:
            self._inflight = None
        self._audit(a.source, f"prepay.{a.action}", {"meter": a.meter, "action_id": a.id,
                                                     "attempt": attempt, "origin": a.origin},
                    "ok" if ok else f"error: {why}")
        current = self.action(a.id)
        if current is not None and current.state not in OPEN_STATES:
            # Superseded while on the way: the newer action decides; record what happened.
            with self.store.batch():
                self._x("UPDATE prepay_action SET attempts=?, outcome=? WHERE id=?",
                        (attempt, f"{current.outcome}; last attempt {'ok' if ok else why}", a.id))
            return
        if ok:
            self._finish(a, "verified", "verified", attempt)
        elif permanent or attempt >= self.config.max_attempts:
            self._finish(a, "failed", why, attempt)
        else:
            delay = min(self.config.retry_backoff * 2 ** (attempt - 1), _BACKOFF_CAP_S)
            next_at = self._now() + timedelta(seconds=delay)
            with self.store.batch():
                self._x("UPDATE prepay_action SET state='pending', attempts=?, next_at=?,"
                        " outcome=?, updated=? WHERE id=?",
                        (attempt, _iso(next_at), why, _iso(self._now()), a.id))
            log.warning("meter %s: %s attempt %d failed (%s); retry at %s", a.meter, a.action,
                        attempt, why, f"{next_at:%H:%M:%S}")

    def _still_due(self, a: Action) -> bool:
        led = self.ledger(a.meter)
        return led is not None and led.credit_trip

    def _finish(self, a: Action, state: str, outcome: str, attempts: int, *,
                event: bool = True) -> None:
        led = self.ledger(a.meter)
        with self.store.batch():
            self._x("UPDATE prepay_action SET state=?, attempts=?, next_at=NULL, outcome=?,"
                    " updated=? WHERE id=?", (state, attempts, outcome, _iso(self._now()), a.id))
            if event:
                text = "verified" if state == "verified" else f"failed: {outcome}"
                if a.origin == "master":
                    self.store.add_event(ERC_DIRECT_CONTROL, a.meter, {
                        "action": a.action, "outcome": text, "attempts": attempts,
                        "action_id": a.id})
                else:
                    self.store.add_event(ERC_CREDIT_CONTROL, a.meter, {
                        "action": a.action, "outcome": text, "attempts": attempts,
                        "balance": _money(led.balance) if led else None, "action_id": a.id})
        level = logging.INFO if state == "verified" else logging.ERROR
        log.log(level, "meter %s: %s %s after %d attempt(s)%s", a.meter, a.action, state,
                attempts, "" if state == "verified" else f": {outcome}")

    def _n1(self, action: str) -> RemoteAction:
        if action == "trip":
            return RemoteAction.TRIP
        if action == "close":
            return RemoteAction.CLOSE if self.config.close_mode == "direct" else RemoteAction.CLOSE_ALLOWED
        return RemoteAction.ALARM if action == "alarm" else RemoteAction.ALARM_RELEASE

    async def _send(self, a: Action) -> tuple[bool, str, bool]:
        """One attempt: the 0x1C command, then status word 3. (ok, why not, give up now)."""
        pwd = self.keystore.meter_password(a.meter)
        if pwd is None:
            return False, "no DL/T 645 password for the meter in the key store", True
        n1 = self._n1(a.action)
        expiry = self._now() + timedelta(minutes=self.config.trip_expiry_minutes)
        try:
            frame = dlt645.remote_control(a.meter, f"{pwd.level:02X}{pwd.password}", pwd.operator,
                                          n1, expiry)
            request = dlt645.encode(frame)
        except CodecError as exc:
            return False, f"cannot encode the command: {exc}", True
        log.info("meter %s: sending %s (N1=%02X, action %d)", a.meter, a.action, int(n1), a.id)
        ex = _normalize(await self.exchanger.exchange(a.meter, request, priority=True))
        if ex.reply is None:
            return False, f"no reply ({ex.failure or 'unknown'})", False
        try:
            reply, _ = dlt645.parse_prefix(ex.reply)
        except CodecError as exc:
            return False, f"bad reply frame: {exc}", False
        if reply.address != a.meter or not reply.is_reply or reply.function != 0x1C:
            return False, "reply from another meter or to another command", False
        if reply.is_error:
            bits = reply.error_bits or ErrorBits(0)
            # A wrong password is not retried: meters lock after a few wrong ones.
            return False, f"meter refused: {bits.describe()}", bool(bits & ErrorBits.PASSWORD)
        await asyncio.sleep(_VERIFY_DELAY_S)
        item = await self._read(a.meter, DI_STATUS3)
        if not item.ok or not isinstance(item.value, StatusWord3):
            return False, f"command accepted, status word 3 unread ({item.status})", False
        word: StatusWord3 = item.value
        if a.action == "trip":
            good = word.relay_open
        elif a.action == "close":
            # "Close allowed" only clears the trip command; the customer's button closes.
            good = (not word.relay_open) if n1 == RemoteAction.CLOSE else not word.relay_trip_commanded
        else:
            good = word.pre_trip_alarm == (a.action == "alarm")
        if not good:
            return False, f"command accepted but status word 3 says {word}", False
        return True, "", False

    def _audit(self, source: str, what: str, args: Mapping[str, Any], outcome: str) -> None:
        if self.audit is None:
            return
        try:
            self.audit.record({"user": f"prepay:{source}"}, what, args, outcome)
        except OSError as exc:
            log.error("audit log %s cannot be written: %s", self.audit.path, exc)

    # --- loops ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """The executor and the periodic energy read of every prepaid meter, until ``stop``."""
        stop = stop or asyncio.Event()
        tasks = [asyncio.create_task(self._executor(stop), name="prepay-executor"),
                 asyncio.create_task(self._reads(stop), name="prepay-reads")]
        try:
            await stop.wait()
        finally:
            self._wake.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _executor(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            try:
                await self.run_due()
            except (StoreError, sqlite3.Error) as exc:
                log.error("prepay executor: store error: %s", exc)
            nxt = self._next_due()
            delay = _IDLE_S if nxt is None else (nxt - self._now()).total_seconds()
            delay = min(max(delay, 0.5), _IDLE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _reads(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for acc in self.accounts():
                if stop.is_set():
                    return
                try:
                    await self.read_meter(acc.meter)
                except (StoreError, sqlite3.Error) as exc:
                    log.error("meter %s: prepaid reading not stored: %s", acc.meter, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.read_interval)

    # --- views for the CLI and the control socket -------------------------------------------

    def balances(self) -> list[dict[str, Any]]:
        """One row per prepaid meter: balance, thresholds, relay/alarm wishes, protection."""
        out = []
        now = self._now()
        for acc in self.accounts():
            led = self.ledger(acc.meter)
            if led is None:
                continue
            until = self.protected_until(acc.meter, now)
            out.append({
                "meter": acc.meter, "balance": _money(led.balance),
                "alarm_threshold": str(acc.alarm_threshold),
                "trip_threshold": str(acc.trip_threshold),
                "state": "tripped" if led.credit_trip else ("alarm" if led.alarm_on else "ok"),
                "protected_until": None if until is None else (
                    "protect on" if until == _FOREVER else until.isoformat(timespec="seconds")),
                "last_reading": _iso(led.last_time),
                "last_total": None if led.last_registers is None else str(led.last_registers[0]),
            })
        return out

    def actions(self, limit: int = 50, meter: str | None = None) -> list[Action]:
        """Open actions first, then the most recent finished ones."""
        where, params = ("", ()) if meter is None else (" AND meter=?", (meter.upper(),))
        open_ = [_action(r) for r in self._q(
            _ACTION_SELECT + " WHERE state IN ('pending','deferred')" + where + " ORDER BY id",
            params)]
        done = [_action(r) for r in self._q(
            _ACTION_SELECT + " WHERE state NOT IN ('pending','deferred')" + where
            + " ORDER BY id DESC LIMIT ?", (*params, max(0, limit - len(open_))))]
        return open_ + done

    def control_handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        """Read-only control-socket commands: prepay.balances, prepay.meter, prepay.actions."""
        return {"prepay.balances": self._h_balances, "prepay.meter": self._h_meter,
                "prepay.actions": self._h_actions}

    async def _h_balances(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"meters": self.balances()}

    async def _h_meter(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            meter = _check_meter(str(args.get("address", "")))
        except PrepayError as exc:
            raise CommandError(str(exc), "bad-args") from None
        acc = self.account(meter)
        if acc is None:
            raise CommandError(f"meter {meter} has no prepaid account", "not-found")
        row = next((b for b in self.balances() if b["meter"] == meter), {})
        return {
            **row,
            "account": acc.as_json(),
            "purchases": [_purchase_json(p) for p in await self.purchases(meter, 20)],
            "actions": [a.as_json() for a in self.actions(20, meter)],
        }

    async def _h_actions(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            limit = int(args.get("limit", 50))
        except (TypeError, ValueError):
            raise CommandError("limit must be an integer", "bad-args") from None
        return {"actions": [a.as_json() for a in self.actions(limit)]}


# --- rows ---------------------------------------------------------------------------------------

_PURCHASE_SELECT = ("SELECT order_no, amount, replace, alarm_threshold, trip_threshold,"
                    " balance_before, balance_after, applied_at, source FROM prepay_purchase")
_ACTION_SELECT = ("SELECT id, meter, action, origin, source, state, attempts, next_at, created,"
                  " updated, outcome FROM prepay_action")


def _dec_text(d: Decimal | None) -> str | None:
    return None if d is None else str(d)


def _purchase_record(r: Sequence[Any]) -> PurchaseRecord:
    return PurchaseRecord(int(r[0]), Decimal(r[1]), bool(r[2]), _dec(r[3]), _dec(r[4]),
                          Decimal(r[5]), Decimal(r[6]), datetime.fromisoformat(r[7]), r[8])


def _purchase_json(p: PurchaseRecord) -> dict[str, Any]:
    return {"order_no": p.order_no, "amount": str(p.amount), "replace": p.replace,
            "alarm_threshold": _dec_text(p.alarm_threshold),
            "trip_threshold": _dec_text(p.trip_threshold),
            "balance_before": _money(p.balance_before), "balance_after": _money(p.balance_after),
            "applied_at": p.applied_at.isoformat(timespec="seconds"), "source": p.source}


def _action(r: Sequence[Any]) -> Action:
    created = datetime.fromisoformat(r[8])
    return Action(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]), _dt(r[7]), created,
                  datetime.fromisoformat(r[9]), r[10])

