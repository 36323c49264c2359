"""The field trial: `concentrator-sim trial` runs the real concentrator objects on a small district."""

from __future__ import annotations

import json

from click.testing import CliRunner

from simulator.cli import main
from simulator.generate import generate
from simulator.scenario import dump


def test_trial_command_runs_a_small_district_and_writes_its_json(tmp_path):
    scenario = generate(30, "street", seed=2)
    path = tmp_path / "district.yaml"
    path.write_text(dump(scenario), encoding="utf-8")
    out = tmp_path / "trial.json"

    result = CliRunner().invoke(main, ["trial", str(path), "--days", "2", "--channel", "hplc",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "formation:" in result.output and "line loss" in result.output

    res = json.loads(out.read_text(encoding="utf-8"))
    f = res["formation"]
    assert f["reachable_found"] == f["reachable"] > 0
    assert f["meters_in_archive"] >= f["reachable"] - 1  # minus the collector, if any
    daily = [r for r in res["rounds"] if r["task"] == "daily_frozen"]
    assert len(daily) == 2
    for r in daily:
        assert r["meters"] == f["meters_in_archive"]
        assert r["final_rate"] >= 0.95 and r["airtime_lower_bound_s"] > 0
        # The bound with the meters' own time is a bound: no first pass (every meter tried
        # once) beats it, and it is never below the airtime alone.
        assert r["airtime_lower_bound_s"] <= r["exchange_lower_bound_s"] <= r["first_pass_s"]
        assert r["summary_meter_read"] is True
    assert set(res["meters"]) and all(
        {"route", "first", "final", "attempts", "latency_s"} <= set(m) for m in res["meters"].values())
    assert sum(m["final"] == "ok" for m in res["meters"].values()) >= 0.95 * len(res["meters"])
    # First attempt: the first exchange answered on the primary route; the last round's rate
    # is the share of its meters flagged so.
    last = daily[-1]
    assert 0.8 <= last["first_attempt_rate"] <= 1.0
    flagged = [m["first_attempt_ok"] for m in res["meters"].values()]
    assert last["first_attempt_rate"] == round(sum(flagged) / last["meters"], 5)
    assert "first attempt" in result.output
    (ll,) = res["line_loss"]
    assert ll["summary_kwh"] == ll["truth_supplied_kwh"]
    # Right for the meters it could count, whatever the day's replacements did to coverage.
    assert abs(ll["loss_pct"] - ll["truth_pct_covered_meters"]) < 0.5


def test_trial_rejects_an_unknown_task(tmp_path):
    path = tmp_path / "district.yaml"
    path.write_text(dump(generate(10, "street", seed=1)), encoding="utf-8")
    result = CliRunner().invoke(main, ["trial", str(path), "--tasks", "daily_frozen,gossip"])
    assert result.exit_code != 0 and "gossip" in result.output
