"""`fleetwatch rules export|check`: promtool accepts the export, its unit tests cover the defaults, and the
checked-in deploy files are up to date."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.promexport import export, render_yaml
from alerts.rules import default_rules
from tests.alerts import promtool_cases
from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_RULES = ROOT / "deploy" / "prometheus" / "rules" / "fleetwatch-alerts.yml"


def test_export_of_the_defaults_passes_promtool_and_its_unit_tests(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    promtool = require_tool("promtool")
    out = tmp_path / promtool_cases.RULE_FILE
    code, _, err = run_cli(capsys, "rules", "export", "-o", str(out))
    assert code == 0, err
    assert out.read_text() == DEPLOY_RULES.read_text(), \
        "deploy/prometheus/rules/fleetwatch-alerts.yml is stale: fleetwatch rules export -o <that file>"
    check = subprocess.run([promtool, "check", "rules", str(out)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    groups = yaml.safe_load(out.read_text())["groups"]
    assert {r["alert"] for r in groups[0]["rules"]} == {r.alert for r in default_rules()}
    shutil.copy(promtool_cases.FIXTURE, tmp_path / promtool_cases.FIXTURE.name)
    unit = subprocess.run([promtool, "test", "rules", promtool_cases.FIXTURE.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_a_numeric_budget_replaces_the_exported_budget_metric(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "rules", "export", "--power-budget-watts", "12500", "-o", "-")
    assert code == 0
    (rule,) = [r for r in yaml.safe_load(out)["groups"][0]["rules"]
               if r["alert"] == "FleetwatchPowerBudgetBreachForecast"]
    assert rule["expr"].endswith("> 12500") and "fleetwatch_power_budget_watts" not in rule["expr"]
    assert 'quantile=~"0.001|0.005|0.01|0.025|0.05|0.1|0.2"' in rule["expr"]     # <= 1 - 0.8
    assert 'horizon=~"1m|5m|10m|15m|30m|1h|2h"' in rule["expr"]                      # within 2h


def test_promtool_unit_tests_fail_when_a_rule_changes(tmp_path: Path) -> None:
    # The unit tests can fail: the temperature rule with its threshold moved from 83 to 90 °C breaks its case.
    promtool = require_tool("promtool")
    name = "FleetwatchGpuTemperatureNearSlowdown"
    doc, _ = export([r for r in default_rules() if r.alert == name])
    text = render_yaml(doc)
    assert "fleetwatch_gpu_temperature_celsius >= 83" in text
    (tmp_path / promtool_cases.RULE_FILE).write_text(text.replace("celsius >= 83", "celsius >= 90"))
    unit_tests = promtool_cases.build()
    unit_tests["tests"] = [t for t in unit_tests["tests"] if t["name"] == name]
    (tmp_path / "t.yml").write_text(yaml.safe_dump(unit_tests))
    unit = subprocess.run([promtool, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert unit.returncode != 0 and name in unit.stdout + unit.stderr


def test_promtool_unit_test_file_is_current() -> None:
    assert promtool_cases.FIXTURE.read_text() == promtool_cases.render_file(), \
        "regenerate: python -m tests.alerts.promtool_cases --write"


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """fleetwatch's main() in this process (no interpreter start-up per call)."""
    from fleetwatch.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_rules_check_names_the_bad_rule_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("rules:\n  - alert: FleetwatchX\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n"
                   "    value: high\n")
    code, _, err = run_cli(capsys, "rules", "check", str(bad))
    assert code == 1 and err.startswith(f"fleetwatch: rules check: {bad}: rule 1 (FleetwatchX), field value")
    good = tmp_path / "good.yml"
    good.write_text("rules:\n  - alert: FleetwatchX\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n"
                    "    op: '=='\n    value: 1\n")
    code, out, _ = run_cli(capsys, "rules", "check", str(good))
    assert code == 0 and "OK: 1 rules (1 threshold)" in out
    code, _, err = run_cli(capsys, "rules", "export", "--rules", str(good), "-o", str(tmp_path / "no" / "dir.yml"))
    assert code == 1 and "cannot write" in err
    code, _, err = run_cli(capsys, "rules", "export", "--power-budget-watts", "-5", "-o", "-")
    assert code == 2 and "--power-budget-watts must be > 0" in err


def test_run_refuses_a_bad_rule_file_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("rules:\n  - alert: A\n    kind: absent\n    metric: fleetwatch_gpu_info\n    after: 2h\n")
    code, _, err = run_cli(capsys, "run", "--simulate", "1x1", "--no-record", "--rules", str(bad),
                           "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"))
    assert code == 2
    assert err.startswith(f"fleetwatch: alerts.rules: {bad}: rule 1 (A)") and "after: must be" in err


def test_alertmanager_flag_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "--simulate", "1x1", "--no-record", "--alertmanager", "alertmanager:9093",
                           "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"))
    assert code == 2 and "alerts.alertmanagers" in err and "expected an Alertmanager URL" in err
