"""The PUE model on measured facility power: the fit, its fallbacks, and the configuration keys."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fleetwatch.config import ConfigError, load_config
from predictor.energy.facility import (
    MIN_FIT_POINTS,
    energy_pue,
    fit_linear,
    pue_forecast,
    pue_model,
)


def test_fit_recovers_fixed_and_proportional_parts() -> None:
    rng = np.random.default_rng(4)
    it = rng.uniform(20_000, 60_000, 500)
    a, b = 8_000.0, 1.15
    facility = a + b * it + rng.normal(0, 200, it.size)
    facility[::17] = np.nan                          # gaps in the meter are skipped, not filled
    m = fit_linear(facility, it)
    assert m is not None and m.method == "linear_fit"
    assert m.fixed_w == pytest.approx(a, rel=0.03) and m.slope == pytest.approx(b, rel=0.01)
    assert m.points == int(np.isfinite(facility).sum())


def test_fit_keeps_parts_non_negative() -> None:
    it = np.linspace(1000, 2000, 100)
    m = fit_linear(2000 - 0.5 * it, it)              # facility falling with load: no physical reading
    assert m is not None and m.slope >= 0 and m.fixed_w >= 0


def test_short_or_flat_history_falls_back_to_the_current_ratio() -> None:
    it = np.linspace(1000, 2000, MIN_FIT_POINTS - 1)
    assert fit_linear(1.3 * it, it) is None
    flat = np.full(200, 1000.0) + np.sin(np.arange(200))   # 0.07 % spread: the slope is not identified
    assert fit_linear(1300 + 0.0 * flat, flat) is None
    m = pue_model(1.3 * it, it, facility_now=1560.0, it_now=1200.0)
    assert m.method == "current_ratio" and m.slope == pytest.approx(1.3)
    # The current ratio holds PUE where it is, whatever IT power does.
    assert pue_forecast(m, 1560.0, 1200.0, 3000.0) == pytest.approx(1.3)


def test_forecast_moves_the_measured_power_along_the_slope() -> None:
    rng = np.random.default_rng(1)
    it = rng.uniform(1000, 3000, 300)
    m = pue_model(500 + 1.1 * it, it, facility_now=2800.0, it_now=2000.0)
    assert m.method == "linear_fit"
    # At the current IT power the forecast is the measurement; at more load the fixed part weighs less.
    assert pue_forecast(m, 2800.0, 2000.0, 2000.0) == pytest.approx(1.4)
    assert pue_forecast(m, 2800.0, 2000.0, 3000.0) == pytest.approx((2800 + 1.1 * 1000) / 3000, rel=1e-3)
    assert math.isnan(pue_forecast(m, 2800.0, 2000.0, 0.0))
    ts = np.arange(4, dtype=np.int64) * 300 * 10**9
    path = np.array([2000.0, 3000.0, 3000.0, 1e9])
    # Energy-weighted along the path, up to the horizon's end only.
    expect = (2800 + 2 * (2800 + 1.1 * 1000)) / 8000
    assert energy_pue(m, 2800.0, 2000.0, ts, path, int(ts[2])) == pytest.approx(expect, rel=1e-3)


@pytest.mark.parametrize(("energy", "words"), [
    ({"facility_power_query": "sum(pdu_input_power_watts)"}, ["facility_power_query", "facility_source"]),
    ({"facility_power_query": "sum(x)", "source": "http://p:9090", "pue": 1.3}, ["facility_power_query", "pue"]),
    ({"facility_power_query": "sum(x)", "facility_source": "ftp://p"}, ["facility_source", "http"]),
])
def test_bad_facility_config_names_the_keys(energy: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides={"energy": energy})
    assert all(w in str(err.value) for w in words), str(err.value)


def test_facility_source_defaults_to_the_energy_source() -> None:
    cfg = load_config(overrides={"energy": {"facility_power_query": "sum(x)", "source": "http://p:9090"}})
    assert cfg.energy.facility_url() == "http://p:9090"
    cfg = load_config(environ={"FLEETWATCH_ENERGY__FACILITY_POWER_QUERY": "sum(x)",
                               "FLEETWATCH_ENERGY__FACILITY_SOURCE": "http://q:9090"})
    assert cfg.energy.facility_url() == "http://q:9090"
