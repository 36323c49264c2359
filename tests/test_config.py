"""Configuration loading, error messages (also through `concentrator config check`), reload diff."""

from __future__ import annotations

import dataclasses
from datetime import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from concentrator import config
from concentrator.cli import main

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = """\
terminal: {district: "4403", address: 4}
module: {port: /dev/ttyS1}
uplink: {primary: "192.0.2.10:7001", tls: {enabled: false}}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def issues(text: str) -> list[tuple[str, str]]:
    with pytest.raises(config.ConfigError) as ei:
        config.loads(text, "x.yaml")
    return [(i.key, i.message) for i in ei.value.issues]


def test_shipped_files_are_valid():
    cfg = config.load(ROOT / "config" / "concentrator.yaml")
    assert cfg.module.baud == 9600 and cfg.module.parity == "E"
    assert cfg.reading.daily_frozen_start == time(0, 5)
    tls = config.load(ROOT / "config" / "example-tls.yaml")
    assert tls.uplink.tls.enabled and tls.uplink.tls.ca == Path("/etc/concentrator/tls/master-ca.pem")
    assert tls.uplink.mqtt is not None and tls.uplink.mqtt.broker.port == 8883


def test_defaults_and_derived_paths():
    cfg = config.loads(MINIMAL + "paths: {state: /srv/c, runtime: /tmp/r}\n")
    assert cfg.terminal == config.TerminalConfig("4403", 4)
    assert cfg.store.path == Path("/srv/c/concentrator.db")
    assert cfg.control.socket == Path("/tmp/r/control.sock")
    assert cfg.control.audit_log == Path("/srv/c/audit.jsonl")
    assert cfg.mesh.max_relay_depth == 15 and cfg.mesh.unknown_node_policy == "quarantine"
    assert cfg.uplink.primary == config.HostPort("192.0.2.10", 7001)
    # Narrowband PLC modules take one read at a time unless told otherwise.
    npl = config.loads(MINIMAL.replace("/dev/ttyS1}", "/dev/ttyS1, channel: npl}"))
    assert npl.module.max_concurrent == 1


def test_durations_sizes_and_times():
    cfg = config.loads(MINIMAL + """\
mesh: {node_silence_timeout: 2d}
reading: {daily_frozen_start: "01:30", daily_frozen_end: "05:00", clock_check_threshold: 90s}
store: {size_cap: 64MiB}
""")
    assert cfg.mesh.node_silence_timeout == 2 * 86400
    assert cfg.reading.daily_frozen_start == time(1, 30)
    assert cfg.reading.clock_check_threshold == 90
    assert cfg.store.size_cap == 64 * 1024**2


def test_missing_key_named():
    assert ("terminal.address", "missing key (required)") in issues(
        MINIMAL.replace(", address: 4", ""))
    assert ("uplink.primary", "missing key (required)") in issues(
        "terminal: {district: '4403', address: 1}\nmodule: {port: x}\n")


def test_bad_type_and_range_named():
    found = issues(MINIMAL.replace("/dev/ttyS1}", "/dev/ttyS1, baud: fast, max_concurrent: 0}")
                   + "mesh: {max_relay_depth: 16, probing: 'yes'}\n")
    keys = dict(found)
    assert keys["module.baud"].startswith("must be an integer")
    assert keys["module.max_concurrent"].startswith("out of range: 0")
    assert keys["mesh.max_relay_depth"] == "out of range: 16 (allowed 0..15)"
    assert keys["mesh.probing"].startswith("must be true or false")


def test_unknown_protocol_channel_and_key():
    found = dict(issues(MINIMAL.replace("/dev/ttyS1}", "/dev/ttyS1, channel: plc, bauds: 1}")
                        + "archive:\n  - {address: '000000000161', protocol: iec62056}\n"))
    assert found["module.channel"] == "unknown channel 'plc'; must be one of npl, hplc, rf, dual"
    assert found["archive[0].protocol"].startswith("unknown meter protocol 'iec62056'")
    assert found["module.bauds"] == "unknown key (did you mean 'baud'?)"


def test_unquoted_numbers_that_yaml_would_mangle_are_refused():
    found = dict(issues(MINIMAL.replace('"4403"', "0200")
                        + "archive:\n  - {address: 000000000161}\n"))
    assert "quoted" in found["terminal.district"]
    assert "quoted" in found["archive[0].address"]


def test_archive_duplicates_and_tls_needs_ca():
    found = dict(issues(MINIMAL.replace("tls: {enabled: false}", "tls: {enabled: true}")
        + "archive:\n  - {address: '000000000161', point: 1}\n  - {address: '000000000161', point: 1}\n"))
    assert found["uplink.tls.ca"].startswith("missing key")
    assert found["archive[1].address"].startswith("duplicate meter 000000000161")
    assert found["archive[1].point"].startswith("measuring point 1 already used")


def test_tls_to_the_master_is_on_unless_plain_tcp_is_asked_for(tmp_path):
    found = dict(issues(MINIMAL.replace(", tls: {enabled: false}", "")))
    assert "plain TCP" in found["uplink.tls.ca"]
    pinned = config.load(write(tmp_path, MINIMAL.replace("tls: {enabled: false}", "tls: {ca: ca.pem}")))
    assert pinned.uplink.tls.enabled and pinned.uplink.tls.ca.name == "ca.pem"
    assert config.load(write(tmp_path, MINIMAL, "plain.yaml")).uplink.tls.enabled is False


def test_yaml_syntax_error_has_line():
    (key, msg), = issues("terminal: {district: '4403'\nmodule: [")
    assert key == "" and msg.startswith("line ") and "YAML syntax error" in msg


def test_error_lines_name_the_file(tmp_path):
    p = write(tmp_path, MINIMAL.replace("hplc", "x") + "lineloss: {alarm_threshold: 120}\n")
    with pytest.raises(config.ConfigError) as ei:
        config.load(p)
    assert ei.value.lines() == [f"{p}: lineloss.alarm_threshold: out of range: 120 (allowed 0..100)"]


def test_cli_config_check_ok_and_errors(tmp_path):
    runner = CliRunner()
    good = write(tmp_path, MINIMAL, "good.yaml")
    res = runner.invoke(main, ["config", "check", str(good)])
    assert res.exit_code == 0 and "OK" in res.output
    bad = write(tmp_path, MINIMAL.replace(", address: 4", "") +
                "summary_meter: {port: /dev/ttyS2, address: '000000000001', protocol: modbus}\n"
                "module: {port: 3}\n", "bad.yaml")
    res = runner.invoke(main, ["config", "check", str(bad)])
    assert res.exit_code == 1
    assert f"{bad}: terminal.address: missing key (required)" in res.output
    assert f"{bad}: summary_meter.protocol: unknown meter protocol 'modbus'" in res.output
    assert f"{bad}: module.port: must be a string, got an integer (3)" in res.output
    res = runner.invoke(main, ["config", "check", "--json", str(bad)])
    assert res.exit_code == 1 and '"key": "terminal.address"' in res.output
    res = runner.invoke(main, ["config", "check", str(tmp_path / "absent.yaml")])
    assert res.exit_code == 1 and "cannot read file" in res.output


def test_reload_diff_splits_reloadable_from_restart():
    old = config.loads(MINIMAL)
    new = dataclasses.replace(
        old,
        archive=(config.ArchiveMeter("000000000161"),),
        reading=dataclasses.replace(old.reading, backfill_days=5),
        lineloss=config.LineLossConfig(7.5),
        module=dataclasses.replace(old.module, baud=19200),
    )
    plan = config.reloadable_diff(old, new)
    assert plan.reloadable == ("archive", "lineloss.alarm_threshold", "reading.backfill_days")
    assert plan.restart == ("module.baud",)
    assert plan.needs_restart
    assert not config.reloadable_diff(old, config.loads(MINIMAL, "other.yaml")).changed


def test_reload_diff_optional_section_is_one_change():
    old = config.loads(MINIMAL)
    new = config.loads(MINIMAL.replace('7001",', '7001", backup: "[2001:db8::1]:7001",'))
    assert new.uplink.backup == config.HostPort("2001:db8::1", 7001)
    assert config.reloadable_diff(old, new).restart == ("uplink.backup",)
