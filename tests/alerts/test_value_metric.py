"""Threshold rules compared with another metric, series by series (`value_metric`): validation, the in-process
engine, and the same rule exported for Prometheus (promtool checks and runs it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from alerts.promexport import export, render_yaml
from alerts.rules import RuleError, ThresholdRule, parse_rules
from collector.batch import Batch
from tests.alerts.promtool_cases import G2, G, sel
from tests.alerts.test_engine import GPU0, GPU1, OTHER, Feed, rules
from tests.conftest import require_tool

RISK, LEVEL = "fleetwatch_gpu_failure_risk", "fleetwatch_gpu_failure_risk_threshold"
RULE = f"""
  - alert: Risky
    kind: threshold
    metric: {RISK}
    op: ">="
    value_metric: {LEVEL}
"""


def one(extra: str) -> str:
    return "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_failure_risk\n" + extra


@pytest.mark.parametrize(("text", "message"), [
    (one("    value: 0.8\n    value_metric: fleetwatch_gpu_failure_risk_threshold\n"),
     "rule 1 (A), field value_metric: give exactly one of value (a number) or value_metric"),
    (one(""), "rule 1 (A), field value: give the threshold to compare with (a number), or value_metric"),
    (one("    value_metric: fleetwatch_gpu_failure_risk_threshold\n    clear: 0.5\n"),
     "rule 1 (A), field clear: not allowed with value_metric"),
    (one("    value_metric: fleetwatch_gpu_failure_risk_threshold\n    by: [node]\n"),
     "rule 1 (A), field by: not allowed with value_metric"),
    (one("    value_metric: fleetwatch_gpu_nope\n"),
     "rule 1 (A), field value_metric: unknown metric 'fleetwatch_gpu_nope'"),
    (one("    value_metric: fleetwatch_gpu_failure_risk_reason\n"),
     "rule 1 (A), field value_metric: fleetwatch_gpu_failure_risk_reason has labels (node, gpu, uuid, pci_bus_id, "
     "device, model_name, driver_version, reason) but fleetwatch_gpu_failure_risk has"),
    ("rules:\n  - alert: A\n    kind: rate\n    metric: fleetwatch_gpu_pcie_replays_total\n"
     "    value_metric: fleetwatch_gpu_failure_risk_threshold\n", "rule 1 (A), field value: Field required"),
], ids=["both", "neither", "clear", "by", "unknown", "other labels", "rate"])
def test_value_metric_validation_names_the_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules(text, "r.yml")
    assert message in str(err.value)


def test_value_metric_parses_without_a_value() -> None:
    (r,) = parse_rules("rules:" + RULE)
    assert isinstance(r, ThresholdRule) and r.value is None and r.value_metric == LEVEL and r.clear is None


def test_engine_compares_each_series_with_its_own_threshold() -> None:
    f = Feed(rules(RULE))

    def step(r0: float, l0: float, r1: float, l1: float) -> dict[str, tuple[str, float]]:
        def fill(b: Batch) -> None:
            for gpu, risk, level in ((GPU0, r0, l0), (GPU1, r1, l1)):
                b.add(RISK, gpu, risk)
                b.add(LEVEL, gpu, level)
            b.add(RISK, OTHER, 0.99)        # no threshold series: never fires, whatever its risk
        return {a.labels["uuid"]: (a.state, a.value) for a in f.step(fill)}

    # same risk 0.7: GPU 0's threshold is 0.6 (fires, its value the risk), GPU 1's 0.8 (does not)
    assert step(0.7, 0.6, 0.7, 0.8) == {GPU0.id: ("firing", 0.7)}
    # at its threshold exactly (>=) GPU 1 fires; GPU 0, now below its own, resolves
    assert step(0.5, 0.6, 0.8, 0.8) == {GPU0.id: ("resolved", 0.7), GPU1.id: ("firing", 0.8)}
    # the threshold series moves, not the risk: GPU 1's rises above it and the alert ends
    assert step(0.5, 0.6, 0.8, 0.85) == {GPU0.id: ("resolved", 0.7), GPU1.id: ("resolved", 0.8)}


def test_engine_skips_a_rule_whose_value_metric_is_not_catalogued() -> None:
    (r,) = parse_rules("rules:" + RULE)
    f = Feed(rules(RULE))
    f.engine.rules = [r.model_copy(update={"value_metric": "fleetwatch_nope_ratio"})]
    f.step(lambda b: b.add(RISK, GPU0, 0.9))
    assert "fleetwatch_nope_ratio" in f.engine.last.skipped["Risky"]


def test_export_compares_the_two_metrics_and_promtool_fires_per_series(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    matched = RULE + "    matchers: {node: n0}\n    for: 2m\n"
    doc, _ = export(parse_rules("rules:" + matched))
    (rule,) = doc["groups"][0]["rules"]
    assert rule["expr"] == f'{RISK}{{node="n0"}} >= {LEVEL}{{node="n0"}}'
    (tmp_path / "r.yml").write_text(render_yaml(doc))
    check = subprocess.run([promtool, "check", "rules", "r.yml"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # GPU 3: risk 0.7 over a threshold of 0.6 (fires, $value the risk); GPU 4: the same risk under 0.8 (never);
    # from 4 min GPU 3's threshold rises to 0.75 (below it: the alert ends)
    tests = {"rule_files": ["r.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": sel(RISK, G), "values": "0.7x10"},
                         {"series": sel(LEVEL, G), "values": "0.6x3 0.75x7"},
                         {"series": sel(RISK, G2), "values": "0.7x10"},
                         {"series": sel(LEVEL, G2), "values": "0.8x10"}],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "Risky", "exp_alerts": []},      # pending (for: 2m)
            {"eval_time": "3m", "alertname": "Risky", "exp_alerts": [{"exp_labels": {**G, "severity": "warning"}}]},
            {"eval_time": "5m", "alertname": "Risky", "exp_alerts": []},
        ]}]}
    (tmp_path / "t.yml").write_text(yaml.safe_dump(tests))
    unit = subprocess.run([promtool, "test", "rules", "t.yml"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr
