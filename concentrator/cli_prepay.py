"""`concentrator prepay`: balances, one prepaid meter, and the control actions, from the daemon.

Talks to the running daemon's control socket (commands ``prepay.balances``, ``prepay.meter``,
``prepay.actions``; ``concentrator.prepay.PrepayService.control_handlers``) with the plumbing
and table rendering of ``cli_ctl``. ``--json`` prints the daemon's JSON. Exit codes as every
control command: 0 ok, 1 failed, 2 usage, 3 daemon unreachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click

from concentrator.cli_ctl import _address, _run, _table, json_option

__all__ = ["prepay", "render_balances", "render_meter", "render_actions"]


def render_balances(r: Mapping[str, Any]) -> str:
    rows = [(m.get("meter"), m.get("balance"), m.get("alarm_threshold"), m.get("trip_threshold"),
             m.get("state"), m.get("protected_until") or "", m.get("last_reading"))
            for m in r.get("meters") or []]
    return _table(rows, ("METER", "BALANCE", "ALARM", "TRIP", "STATE", "PROTECTED UNTIL",
                         "LAST READING")) + f"\n{len(rows)} prepaid meters"


def _action_rows(actions: Any) -> list[tuple[Any, ...]]:
    return [(a.get("id"), a.get("meter"), a.get("action"), a.get("origin"), a.get("state"),
             a.get("attempts"), a.get("next_at") or "", a.get("updated"), a.get("outcome") or "")
            for a in actions or []]


_ACTION_HEADER = ("ID", "METER", "ACTION", "ORIGIN", "STATE", "TRIES", "NEXT", "UPDATED", "OUTCOME")


def render_actions(r: Mapping[str, Any]) -> str:
    return _table(_action_rows(r.get("actions")), _ACTION_HEADER)


def render_meter(r: Mapping[str, Any]) -> str:
    acc = r.get("account") or {}
    prices = acc.get("prices") or []
    tariff = ("by period " + " / ".join(prices)) if prices else f"flat {acc.get('flat_price')}"
    lines = [
        f"meter            {r.get('meter', '-')}",
        f"balance          {r.get('balance', '-')} yuan  ({r.get('state', '-')})",
        f"tariff           {tariff} yuan/kWh",
        f"thresholds       alarm {acc.get('alarm_threshold', '-')}, "
        f"trip {acc.get('trip_threshold', '-')}",
        f"protected until  {r.get('protected_until') or '-'}",
        f"last reading     {r.get('last_reading') or '-'}  total {r.get('last_total') or '-'} kWh",
        "",
        "purchases:",
    ]
    rows = [(p.get("applied_at"), p.get("order_no"), ("=" if p.get("replace") else "+")
             + str(p.get("amount")), p.get("balance_before"), p.get("balance_after"),
             p.get("source")) for p in r.get("purchases") or []]
    lines.append(_table(rows, ("WHEN", "ORDER", "AMOUNT", "BEFORE", "AFTER", "SOURCE")))
    lines += ["", "actions:", _table(_action_rows(r.get("actions")), _ACTION_HEADER)]
    return "\n".join(lines)


@click.group()
def prepay() -> None:
    """Prepaid meters: credit, purchases and remote trip/close actions."""


@prepay.command()
@json_option
def balances(as_json: bool) -> None:
    """Every prepaid meter's balance, thresholds and state."""
    _run("prepay.balances", None, as_json, render_balances)


@prepay.command()
@click.argument("address", callback=_address)
@json_option
def show(address: str, as_json: bool) -> None:
    """One prepaid meter: balance, tariff, purchases, actions."""
    _run("prepay.meter", {"address": address}, as_json, render_meter)


@prepay.command()
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
def actions(limit: int, as_json: bool) -> None:
    """Pending and recent trip/close/alarm actions."""
    _run("prepay.actions", {"limit": limit}, as_json, render_actions)
