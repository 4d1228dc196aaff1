"""Shared simulated traces for the energy forecaster's tests (generated once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.series_view import TraceView
from collector.sim.offline import generate_trace
from predictor.energy.forecast import Plan, Settings, fit_plan
from predictor.energy.series import PowerPanel, load_power

# Three models keep the backtest quick; holt_winters is exercised in test_models.
SETTINGS = Settings(models=("last_value", "seasonal_naive", "gbm"), backtest_days=1.5)


@pytest.fixture(scope="session")
def trace4d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2×4-GPU fleet, 4 days at 5-minute samples, no faults."""
    out = tmp_path_factory.mktemp("energy") / "trace"
    generate_trace(out, nodes=2, gpus_per_node=4, days=4, seed=3, interval_s=300, fault_rate=0.0)
    return out


@pytest.fixture(scope="session")
def panel4d(trace4d: Path) -> PowerPanel:
    """Its GPU, node and fleet power on the 5-minute grid."""
    view = TraceView(trace4d)
    span = view.span()
    assert span is not None
    return load_power(view, span[0], span[1], 300.0)


@pytest.fixture(scope="session")
def plan4d(panel4d: PowerPanel) -> Plan:
    """A backtested plan on it."""
    return fit_plan(panel4d, SETTINGS)
