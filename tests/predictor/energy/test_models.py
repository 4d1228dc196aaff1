"""The forecasters on series whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError

from predictor.energy.models import GlobalGBM, HoltWinters, LastValue, SeasonalNaive, ffill
from predictor.energy.reconcile import projection, reconcile

T0 = 1_767_225_600 * 10**9
STEP = 300.0
P = 288


def _ts(n: int) -> np.ndarray:
    return T0 + np.arange(n, dtype=np.int64) * int(STEP * 1e9)


def _daily(days: int, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(days * P)
    rng = np.random.default_rng(seed)
    return 1000 + 400 * np.sin(2 * np.pi * t / P) + rng.normal(0, noise, t.size)


def test_last_value_skips_trailing_gaps() -> None:
    y = np.array([[1.0, 2.0, 3.0, np.nan, np.nan]])
    m = LastValue().fit(y, _ts(5), STEP)
    assert m.predict(y, _ts(5), np.array([1, 5])).tolist() == [[3.0, 3.0]]


def test_seasonal_naive_repeats_yesterday() -> None:
    y = _daily(3)[None, :]
    f = SeasonalNaive().fit(y, _ts(y.shape[1]), STEP).predict(y, _ts(y.shape[1]), np.arange(1, P + 1))
    np.testing.assert_allclose(f[0], y[0, -P:])


def test_unfitted_model_refuses() -> None:
    with pytest.raises(NotFittedError):
        LastValue().predict(np.zeros((1, 3)), _ts(3), np.array([1]))


def test_clock_going_backwards_is_refused() -> None:
    ts = _ts(4)[[0, 2, 1, 3]]
    with pytest.raises(ValueError, match="backwards"):
        LastValue().fit(np.zeros((1, 4)), ts, STEP)


@pytest.mark.parametrize("model", [HoltWinters(), GlobalGBM(min_samples_leaf=20, max_depth=3, max_iter=100)],
                         ids=["holt_winters", "gbm"])
def test_learned_models_follow_a_daily_cycle(model) -> None:  # type: ignore[no-untyped-def]
    y = _daily(5, noise=20.0)[None, :]
    y = np.vstack([y, y * 0.5 + 100])
    train, test = y[:, : 4 * P], y[:, 4 * P:]
    model.fit(train, _ts(4 * P), STEP)
    steps = np.arange(1, P + 1)
    f = model.predict(train, _ts(4 * P), steps)
    lv = LastValue().fit(train, _ts(4 * P), STEP).predict(train, _ts(4 * P), steps)
    err, err_lv = np.mean(np.abs(f - test)), np.mean(np.abs(lv - test))
    assert err < 0.5 * err_lv, (err, err_lv)


def test_ffill_keeps_leading_gaps() -> None:
    out = ffill(np.array([[np.nan, 1.0, np.nan, 3.0]]))
    assert np.isnan(out[0, 0]) and out[0, 1:].tolist() == [1.0, 1.0, 3.0]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1000), min_size=4, max_size=4), st.lists(st.floats(0.01, 100), min_size=7, max_size=7))
def test_reconciled_forecasts_add_up(gpus: list[float], mse: list[float]) -> None:
    # Two nodes of two GPUs, then the fleet: S maps the 4 GPUs to 7 series.
    S = np.vstack([np.eye(4), [[1, 1, 0, 0], [0, 0, 1, 1]], np.ones((1, 4))])
    base = S @ np.array(gpus) + np.array([5.0, -3.0, 2.0, 0.0, 10.0, -4.0, 7.0])     # incoherent base forecasts
    rec = reconcile(projection(S, np.array(mse)), base)
    np.testing.assert_allclose(rec[4], rec[0] + rec[1], atol=1e-6 * (1 + abs(rec[4])))
    np.testing.assert_allclose(rec[6], rec[:4].sum(), atol=1e-6 * (1 + abs(rec[6])))


def test_reconciliation_keeps_coherent_forecasts() -> None:
    S = np.vstack([np.eye(2), np.ones((1, 2))])
    base = np.array([3.0, 4.0, 7.0])
    np.testing.assert_allclose(reconcile(projection(S, np.array([1.0, 5.0, 2.0])), base), base)
