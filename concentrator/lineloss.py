"""Daily line loss of the transformer district from daily frozen readings.

The loss of day ``d`` compares what went through the summary (transformer) meter with what the
customers' meters counted, both as the difference of their daily freezes at 00:00 of ``d + 1``
and of ``d`` (``DailyReading.freeze_date`` is the date of the freeze)::

    supplied  = summary.fwd(d + 1) - summary.fwd(d)
    customers = Σ over meters with both freezes of [fwd(d + 1) - fwd(d)] - [rev(d + 1) - rev(d)]
    loss %    = (supplied - customers) / supplied * 100

A customer's exported (reverse) energy is subtracted because it feeds neighbours through the same
transformer, exactly as the summary meter sees it. A meter whose delta is missing or negative
(not read, replaced, registers reset) is left out, and ``meters_covered`` says how many counted.

An alarm event (Q/GDW 1376.1 ERC 22, active-energy difference out of limit) is raised when the
loss exceeds the threshold or when coverage is incomplete (the figure is then biased high), once
per day and change: re-computing a day with the same figures raises nothing new.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from decimal import Decimal

from concentrator.store import DailyReading, LineLoss, Store

__all__ = ["LineLoss", "ERC_LINE_LOSS", "energy_delta", "compute", "update_day", "alarm_reasons"]

log = logging.getLogger(__name__)

ERC_LINE_LOSS = 22  # Q/GDW 1376.1 ERC 22: active-energy difference (差动) out of limit
_PCT = Decimal("0.01")


def energy_delta(start: DailyReading | None, end: DailyReading | None) -> Decimal | None:
    """Net energy (forward minus reverse) between two freezes; None if it cannot be trusted."""
    if start is None or end is None or start.fwd_total is None or end.fwd_total is None:
        return None
    fwd = end.fwd_total - start.fwd_total
    if fwd < 0:
        return None  # meter replaced or cleared between the freezes
    rev = Decimal(0)
    if start.rev_total is not None and end.rev_total is not None:
        rev = end.rev_total - start.rev_total
        if rev < 0:
            return None
    return fwd - rev


def compute(day: date, summary_start: DailyReading | None, summary_end: DailyReading | None,
            start: Mapping[str, DailyReading], end: Mapping[str, DailyReading],
            customers: Iterable[str]) -> LineLoss | None:
    """The line loss of ``day`` from the freezes of ``day`` (start) and ``day + 1`` (end).

    None when the summary meter's delta is unknown: without it there is no loss figure.
    """
    supplied = energy_delta(summary_start, summary_end)
    if supplied is None:
        return None
    names = sorted(set(customers))
    total = Decimal(0)
    covered = 0
    for m in names:
        d = energy_delta(start.get(m), end.get(m))
        if d is not None:
            total += d
            covered += 1
    pct = None
    if supplied > 0:
        pct = ((supplied - total) / supplied * 100).quantize(_PCT)
    return LineLoss(day=day, summary_energy=supplied, customer_energy=total, loss_pct=pct,
                    meters_covered=covered, meters_total=len(names))


def alarm_reasons(ll: LineLoss, threshold_pct: float) -> list[str]:
    """Why this day's line loss deserves an alarm (empty: it does not)."""
    reasons = []
    if ll.loss_pct is not None and ll.loss_pct > Decimal(str(threshold_pct)):
        reasons.append("threshold")
    if ll.meters_covered < ll.meters_total:
        reasons.append("coverage")
    return reasons


def update_day(store: Store, day: date, summary_address: str, customers: Iterable[str],
               threshold_pct: float) -> LineLoss | None:
    """Compute, store and (if needed) alarm the line loss of ``day``; None if not computable."""
    names = list(customers)
    s_start = store.daily(summary_address, day)
    s_end = store.daily(summary_address, day + timedelta(days=1))
    start = {r.meter: r for r in store.daily_for_date(day)}
    end = {r.meter: r for r in store.daily_for_date(day + timedelta(days=1))}
    ll = compute(day, s_start, s_end, start, end, names)
    if ll is None:
        log.info("line loss %s: summary meter %s has no delta yet", day, summary_address)
        return None
    old = store.line_loss(day)
    if old == ll:
        return ll
    reasons = alarm_reasons(ll, threshold_pct)
    with store.batch():
        store.write_line_loss(ll)
        if reasons:
            store.add_event(ERC_LINE_LOSS, None, {
                "day": day.isoformat(), "loss_pct": None if ll.loss_pct is None else str(ll.loss_pct),
                "threshold_pct": threshold_pct, "meters_covered": ll.meters_covered,
                "meters_total": ll.meters_total, "reasons": reasons})
    if reasons:
        log.warning("line loss %s: %s%% over %d/%d meters (%s)", day, ll.loss_pct,
                    ll.meters_covered, ll.meters_total, ", ".join(reasons))
    return ll
