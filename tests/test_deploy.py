"""Deployment files: the example Prometheus configuration passes promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[1]


def test_prometheus_config_passes_promtool() -> None:
    promtool = require_tool("promtool")
    res = subprocess.run([promtool, "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout + res.stderr
