"""`fleetwatch train | score | evaluate` on small simulated fleets, through the real CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fleetwatch.cli import main
from predictor.failure.evaluate import KEYS
from predictor.failure.modelfile import load


def test_train_writes_a_versioned_supervised_model(model_path: Path, train_trace: Path) -> None:
    m = load(model_path)
    assert m.kind == "supervised" and 0 < m.threshold <= 1
    assert m.training["traces"] == [str(train_trace)] and m.training["failures"] == 14
    assert m.training["validation_method"].startswith("out-of-fold") and m.training["folds"] == 4
    assert m.training["start_ns"] < m.training["end_ns"]


def test_train_can_choose_its_threshold_on_validation_traces(train_trace: Path, test_trace: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.joblib"
    assert main(["train", str(train_trace), "--validate", str(test_trace), "--validate-alarms", str(train_trace),
                 "-o", str(out)]) == 0
    m = load(out)
    assert m.training["validation_method"] == "validation traces"
    assert m.training["validation_traces"] == [str(test_trace)]
    # the figures are the validation fleet's: its 48 GPUs, not the 64 it was trained on
    assert m.training["validation"]["gpus"] == 48 and 0 < m.threshold <= 1
    # false alarms were also counted on the alarm-validation fleet (64 GPUs), at the chosen threshold
    assert m.training["alarm_validation_traces"] == [str(train_trace)]
    assert m.training["alarm_validation"]["gpus"] == 64
    assert m.training["alarm_validation"]["threshold"] == pytest.approx(m.threshold)
    # a few hundred GPU-days cannot resolve 0.05 false alarms per 1,000: training says so, and what to do
    days = m.training["alarm_validation"]["gpu_days"]
    assert m.training["fa_budget_gpu_days"] == pytest.approx(days) and days < 1000
    assert re.search(rf"allows 0\.0 alarms on the {days:.0f} GPU-days .*\(--validate-alarms is repeatable\)",
                     capsys.readouterr().err)


def test_evaluate_json_has_the_figures_and_beats_the_rule_on_lead_time(
        model_path: Path, test_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(model_path), str(test_trace), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(KEYS) <= set(out) and set(KEYS) <= set(out["baseline"])
    assert out["failures"] == out["baseline"]["failures"] >= 6
    assert out["gpus"] == 48 and out["gpu_days"] > 100
    # the rule sees every failure as it happens (lead 0); the model warns hours ahead for some
    assert out["baseline"]["recall"] == 1.0 and out["baseline"]["median_lead_time_h"] == 0.0
    assert out["recall"] > 0 and out["median_lead_time_h"] > 1.0
    assert out["pr_auc"] > 0.2


def test_evaluate_table(model_path: Path, test_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(model_path), str(test_trace)]) == 0
    out = capsys.readouterr().out
    assert "rule baseline" in out and "median lead time (h)" in out


def test_score_lists_gpus_with_reasons(model_path: Path, test_trace: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--model", str(model_path), str(test_trace), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    gpus = out["gpus"]
    assert len(gpus) == 48
    assert [g["risk"] for g in gpus] == sorted((g["risk"] for g in gpus), reverse=True)
    assert any(g["reasons"] for g in gpus)
    assert all(0 <= g["risk"] <= 1 for g in gpus)


def test_bad_model_file_is_a_usage_error(tmp_path: Path, test_trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "m.joblib"
    bad.write_text("nope")
    assert main(["score", "--model", str(bad), str(test_trace)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetwatch: score: ") and "Traceback" not in err


def test_missing_trace_is_an_error(model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--model", str(model_path), str(tmp_path / "nope")]) == 1
    assert "fleetwatch: evaluate: " in capsys.readouterr().err
