"""The pipeline on a simulated fleet: choices, coherence, intervals, fallbacks and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from predictor.energy.costs import Tariff, price, pue_now
from predictor.energy.forecast import QUANTILES, exceed_probability, fit_plan, make_forecast
from predictor.energy.series import PowerPanel, SeriesId
from tests.predictor.energy.conftest import SETTINGS


def _panel(p: PowerPanel, values: np.ndarray) -> PowerPanel:
    from predictor.energy.series import aggregate

    ids, vals = aggregate([s for s in p.ids if s.scope == "gpu"], values)
    return PowerPanel(p.ts_ns[: values.shape[1]], p.step_s, ids, vals)


def test_plan_is_backtested_and_meets_the_1h_target(plan4d) -> None:  # type: ignore[no-untyped-def]
    assert plan4d.backtested and set(plan4d.fallback) == {"none"}
    chosen = [s for s in plan4d.scores if s.chosen and s.horizon_s == 3600.0 and s.series == "fleet"]
    assert len(chosen) == 1
    assert chosen[0].mase <= 0.7, chosen[0]
    # The baseline it is scaled by scores about 1 against itself over a day.
    sn = [s for s in plan4d.scores if s.model == "seasonal_naive" and s.series == "fleet" and s.horizon_s == 86400.0]
    assert 0.5 < sn[0].mase < 2.0


def test_forecast_adds_up_and_quantiles_are_ordered(plan4d, panel4d) -> None:  # type: ignore[no-untyped-def]
    fc = make_forecast(plan4d, panel4d)
    med = fc.quantiles.index(0.5)
    gpus, nodes, fleet = panel4d.rows("gpu"), panel4d.rows("node"), panel4d.rows("fleet")[0]
    for k in range(len(fc.horizons_s)):
        np.testing.assert_allclose(fc.power[gpus, k, med].sum(), fc.power[fleet, k, med], rtol=1e-6)
        np.testing.assert_allclose(fc.power[nodes, k, med].sum(), fc.power[fleet, k, med], rtol=1e-6)
        np.testing.assert_allclose(fc.energy[gpus, k, med].sum(), fc.energy[fleet, k, med], rtol=1e-6)
    assert np.all(np.diff(fc.power, axis=2) >= 0) and np.all(fc.power >= 0)
    # Energy over 24 h is about a day of the current fleet power, not a unit slip away from it.
    e24 = fc.energy[fleet, 2, med]
    assert 0.2 * 86400 * fc.power[fleet, 0, med] < e24 < 5 * 86400 * fc.power[fleet, 0, med]


def test_backtest_records_every_series_model_and_horizon(plan4d, panel4d) -> None:  # type: ignore[no-untyped-def]
    n = len(panel4d.ids) * len(SETTINGS.models) * len(SETTINGS.horizons_s)
    assert len(plan4d.scores) == n
    assert {s.series for s in plan4d.scores} >= {"fleet", "node-0", "node-1"}
    for s in plan4d.scores:
        assert s.mae >= 0 and 0 <= s.smape <= 2
        assert math.isnan(s.coverage_80) or 0 <= s.coverage_80 <= s.coverage_95 <= 1
    # Exactly one chosen model per series and horizon.
    per = {}
    for s in plan4d.scores:
        per[(s.series, s.horizon_s)] = per.get((s.series, s.horizon_s), 0) + s.chosen
    assert set(per.values()) == {1}


def test_budget_probability_falls_as_the_budget_rises(plan4d, panel4d) -> None:  # type: ignore[no-untyped-def]
    fc = make_forecast(plan4d, panel4d)
    f = panel4d.rows("fleet")[0]
    peak = fc.peak[f, 2]
    probs = [exceed_probability(fc, f, 2, b) for b in (0.0, peak, 10 * peak)]
    assert probs[0] == 1.0 and probs[2] == 0.0 and 0.0 <= probs[1] <= 1.0
    assert probs == sorted(probs, reverse=True)


def test_short_history_is_a_flagged_baseline(panel4d) -> None:  # type: ignore[no-untyped-def]
    short = _panel(panel4d, panel4d.values[panel4d.rows("gpu"), :100])
    plan = fit_plan(short, SETTINGS)
    assert not plan.backtested and set(plan.fallback) == {"short_history"}
    assert any("no backtest" in n for n in plan.notes)
    fc = make_forecast(plan, short)
    assert set(fc.model.ravel()) == {"last_value"}                  # under a day: no season to repeat
    assert np.all(np.isfinite(fc.power)) and np.all(fc.power[:, :, 0] <= fc.power[:, :, -1])
    day = _panel(panel4d, panel4d.values[panel4d.rows("gpu"), :400])
    assert set(fit_plan(day, SETTINGS).chosen.ravel()) == {"seasonal_naive"}


def test_constant_nan_and_gappy_series_fall_back(panel4d) -> None:  # type: ignore[no-untyped-def]
    v = panel4d.values[panel4d.rows("gpu")].copy()
    v[0] = 250.0                                    # constant
    v[1] = np.nan                                   # a GPU that never reported
    v[2, -200:] = np.nan                            # most of the last day missing
    p = _panel(panel4d, v)
    plan = fit_plan(p, SETTINGS)
    assert plan.fallback[0] == "constant" and plan.fallback[1] == "no_data" and plan.fallback[2] == "gaps"
    fc = make_forecast(plan, p)
    np.testing.assert_allclose(fc.power[0], 250.0, rtol=1e-6)      # zero-width interval at the constant
    assert np.isnan(fc.power[1]).all()              # nothing published for a GPU without data
    assert np.all(np.isfinite(fc.power[2])) and fc.model[2, 0] == "seasonal_naive"
    f = p.rows("fleet")[0]
    assert np.isfinite(fc.power[f]).all()


def test_plan_refuses_a_changed_fleet(plan4d, panel4d) -> None:  # type: ignore[no-untyped-def]
    fewer = PowerPanel(panel4d.ts_ns, panel4d.step_s, [SeriesId("fleet")], panel4d.values[-1:])
    with pytest.raises(ValueError, match="refit"):
        make_forecast(plan4d, fewer)


def test_cost_follows_the_hourly_tariff() -> None:
    ts = 1_767_225_600 * 10**9 + np.arange(1, 25, dtype=np.int64) * 3600 * 10**9
    path = np.full(24, 1000.0)
    cheap_nights = Tariff([0.1] * 12 + [0.3] * 12, 200.0)
    m = price(np.array([24 * 3.6e6]), cheap_nights, ts, path, int(ts[-1]))
    assert m.cost[0] == pytest.approx(24 * 0.2, rel=0.05) and m.carbon_g[0] == pytest.approx(24 * 200)
    assert price(np.array([3.6e6]), Tariff(1.0), ts, path, int(ts[-1]), pue=1.5).cost[0] == pytest.approx(1.5)
    with pytest.raises(ValueError, match="24 hourly"):
        Tariff([0.1, 0.2])
    assert pue_now(1000.0, 1300.0, None) == pytest.approx(1.3) and math.isnan(pue_now(0.0, 1300.0, None))


def test_quantile_levels_match_the_published_labels() -> None:
    assert QUANTILES == (0.025, 0.1, 0.5, 0.9, 0.975)


def test_long_horizon_intervals_are_calibrated_from_all_history() -> None:
    """Two days of hourly backtest origins span only three 24 h windows: the 24 h pool must come from more."""
    from predictor.energy.forecast import Settings
    from predictor.energy.series import aggregate

    days, p, n_gpu = 8, 288, 8
    t = np.arange(days * p)
    rng = np.random.default_rng(5)
    jobs = np.repeat(rng.uniform(0, 200, (n_gpu, days * 24)), 12, axis=1)       # hourly job changes
    gpus = 250 + 100 * np.sin(2 * np.pi * t / p)[None, :] + jobs + rng.normal(0, 10, (n_gpu, t.size))
    ids, vals = aggregate([SeriesId("gpu", f"node-{i // 4}", str(i % 4)) for i in range(n_gpu)], gpus)
    panel = PowerPanel(1_767_225_600 * 10**9 + t.astype(np.int64) * 300 * 10**9, 300.0, ids, vals)
    plan = fit_plan(panel, Settings(models=("last_value", "seasonal_naive"), backtest_days=2.0))
    assert plan.backtested
    bt_origins = 2 * 24 + 1
    # The fleet's 24 h interval: from six days of hourly origins' residuals, not the backtest's 49 (old code).
    assert plan.residuals[("fleet", 0, 2)].size >= (days - 2) * 24
    for scope, rows in (("gpu", n_gpu), ("node", 2), ("fleet", 1)):
        for kind in range(3):
            # 15 m and 1 h: the backtest's 49 hourly origins are 49 separate windows, enough on their own.
            for k in (0, 1):
                assert plan.calibration[(scope, kind, k)] == ("backtest", rows * bt_origins, bt_origins, bt_origins)
            src, n_res, n_origins, n_windows = plan.calibration[(scope, kind, 2)]
            # 24 h: hourly origins from a day in to a day before the end, i.e. six days of them, not two.
            assert src == "seasonal_naive_proxy"
            assert n_origins >= (days - 2) * 24 and n_windows >= days - 2 > 3
            assert n_res == plan.residuals[(scope, kind, 2)].size >= rows * (days - 2) * 24
    from predictor.energy.backtest import MIN_WINDOWS

    assert all(w >= MIN_WINDOWS for src, _, _, w in plan.calibration.values() if src == "backtest")
    fc = make_forecast(plan, panel)
    assert np.all(np.isfinite(fc.power)) and np.all(np.diff(fc.power, axis=2) >= 0)


def test_a_few_idle_readings_give_an_honest_band(panel4d) -> None:  # type: ignore[no-untyped-def]
    # Seen on a real H200: minutes after start, a few idle readings (80.23 W) and no measured spread gave
    # every quantile the same value while the GPU went to 690 W.
    gpus = panel4d.rows("gpu")
    idle = np.tile(np.array([80.23, 80.24, 80.23]), (len(gpus), 1))
    short = _panel(panel4d, idle)
    plan = fit_plan(short, SETTINGS)
    fc = make_forecast(plan, short)
    assert set(plan.fallback) == {"short_history"}
    lo, hi = QUANTILES.index(0.025), QUANTILES.index(0.975)
    width = fc.power[:, :, hi] - fc.power[:, :, lo]
    assert np.all(width > 0)                                         # never a zero-width claim
    assert np.all(np.diff(width, axis=1) > 0)                        # wider at longer horizons
    assert np.all(fc.power[:, -1, hi] > 1.05 * idle.max())           # not capped by three idle readings
