"""`fleetwatch forecast` and `fleetwatch backtest` on a simulated trace, and their errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fleetwatch.cli import main

FAST = ["--models", "last_value,seasonal_naive", "--backtest-days", "1.5"]


def test_backtest_json_has_one_record_per_series_model_horizon(trace4d: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", str(trace4d), "--format", "json", *FAST]) == 0
    recs = json.loads(capsys.readouterr().out)
    keys = {"series", "model", "horizon_s", "mae", "mape", "smape", "mase", "coverage_80", "coverage_95", "chosen"}
    assert all(set(r) == keys for r in recs)
    series = {r["series"] for r in recs}
    assert "fleet" in series and len(series) == 8 + 2 + 1
    assert len(recs) == len(series) * 2 * 3
    assert {r["horizon_s"] for r in recs} == {900.0, 3600.0, 86400.0}
    fleet_1h = [r for r in recs if r["series"] == "fleet" and r["horizon_s"] == 3600.0]
    assert sum(r["chosen"] for r in fleet_1h) == 1


def test_backtest_table(trace4d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", str(trace4d), *FAST]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["series", "model", "horizon", "MAE"]
    assert "fleet" in out and "node-1" in out and "*" in out


def test_forecast_formats(trace4d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "f.csv"
    assert main(["forecast", str(trace4d), "--horizon", "24h", "--format", "csv", "-o", str(out), *FAST]) == 0
    rows = list(csv.DictReader(out.open()))
    fleet = [r for r in rows if r["series"] == "fleet"]
    assert len(fleet) == 1 and fleet[0]["horizon"] == "24h"
    assert float(fleet[0]["power_w_q0.1"]) <= float(fleet[0]["power_w_q0.5"]) <= float(fleet[0]["power_w_q0.9"])
    assert main(["forecast", str(trace4d), "--format", "json", "--budget-watts", "1", *FAST]) == 0
    doc = json.loads(capsys.readouterr().out)
    f24 = next(r for r in doc["forecasts"] if r["series"] == "fleet" and r["horizon"] == "24h")
    assert f24["p_exceed_budget"] == 1.0 and f24["cost_q0.5"] > 0 and f24["carbon_kg_q0.5"] > 0
    assert main(["forecast", str(trace4d), *FAST]) == 0
    assert "fleet 24h: cost" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    ([], "give trace directories or --prometheus"),
    (["--horizon", "soon"], "expected a duration"),
    (["--horizon", "0s"], "horizons must be positive"),
    (["--models", "prophet"], "unknown model"),
    (["--start", "2030-01-01", "--end", "2029-01-01"], "--end must be after --start"),
], ids=["no-input", "bad-horizon", "zero-horizon", "bad-model", "reversed-window"])
def test_user_errors_are_named(trace4d: Path, args: list[str], message: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["forecast", *([str(trace4d)] if args else []), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fleetwatch: ") and message in err and "Traceback" not in err


def test_empty_window_and_missing_trace(trace4d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["forecast", str(trace4d), "--start", "2020-01-01", "--end", "2020-01-02"]) == 1
    assert "no fleetwatch_gpu_power_watts samples" in capsys.readouterr().err
    assert main(["backtest", str(tmp_path / "nope")]) == 2
    assert "no such trace directory" in capsys.readouterr().err


def test_backtest_says_when_history_is_short(trace4d: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backtest", str(trace4d), "--start", "2026-01-01T00:00:00", "--end", "2026-01-01T12:00:00"]) == 1
    assert "no backtest" in capsys.readouterr().err
