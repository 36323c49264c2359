"""The packaged systemd unit keeps its hardening (docs/security.md, "Operating system")."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parent.parent / "config" / "concentrator.service"


def _settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_daemon_runs_unprivileged_with_no_capabilities_and_a_read_only_os():
    s = _settings()
    assert s["User"] == ["concentrator"] and s["NoNewPrivileges"] == ["yes"]
    assert s["CapabilityBoundingSet"] == [""] and s["AmbientCapabilities"] == [""]
    assert s["ProtectSystem"] == ["strict"] and s["UMask"] == ["0077"]
    assert "~@privileged @resources" in s["SystemCallFilter"]
    # The daemon writes only where systemd gives it a directory.
    assert {"StateDirectory", "RuntimeDirectory", "ConfigurationDirectory"} <= s.keys()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_rates_the_unit_ok_with_exposure_at_most_2(tmp_path):
    run = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    m = re.search(r"Overall exposure level for concentrator\.service: (\d+\.\d+)", run.stdout)
    if m is None and "offline" in run.stderr:
        pytest.skip("this systemd-analyze has no offline mode")
    assert m is not None, run.stdout + run.stderr
    assert float(m.group(1)) <= 2.0, run.stdout
