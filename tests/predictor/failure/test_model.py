"""The risk model: cross-fitting without leakage, calibrated and monotonic risk, the anomaly fallback."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.failure.model import FailureRiskModel, flatten


def test_folds_hold_out_whole_groups_and_oof_risk_uses_them() -> None:
    X, y = _data(4000, 3)
    groups = np.arange(len(y)) % 40
    m = FailureRiskModel(max_iter=40, cv=4, random_state=0).fit(X, y, groups=groups)
    held = m.folds_
    assert len(held) == 4 and len(m.members_) == 4 and set().union(*held) == set(range(40))
    assert sum(len(h) for h in held) == 40                       # each group held out exactly once
    oof, fitted = m.oof_risk(X, groups), m.risk(X)
    # out-of-fold risk comes from members that never saw the rows: it differs from the ensemble's
    assert not np.allclose(oof, fitted)
    assert ((oof >= 0) & (oof <= 1)).all()
    m.drop_folds()
    with pytest.raises(ValueError, match="fold assignment was dropped"):
        m.oof_risk(X, groups)


def test_monotonic_constraint_holds_where_the_data_would_break_it() -> None:
    rng = np.random.default_rng(5)
    X = rng.uniform(0, 10, size=(6000, 2))
    # failures rise with feature 0 except for a dip around 6-7 that a free model would learn
    p = np.clip(X[:, 0] / 10 - 0.5 * ((X[:, 0] > 6) & (X[:, 0] < 7)), 0, 1) * 0.3
    y = (rng.random(6000) < p).astype(int)
    free = FailureRiskModel(max_iter=80, random_state=0).fit(X, y)
    mono = FailureRiskModel(max_iter=80, monotonic_cst=[1, 0], random_state=0).fit(X, y)
    grid = np.column_stack([np.linspace(0, 10, 101), np.full(101, 5.0)])
    assert (np.diff(mono.risk(grid)) >= -1e-12).all()
    assert (np.diff(free.risk(grid)) < -1e-3).any()              # the constraint did something
    with pytest.raises(ValueError, match="monotonic_cst has 1 entries for 2 features"):
        FailureRiskModel(monotonic_cst=[1]).fit(X, y)


def test_flatten_subsamples_negatives_with_weights() -> None:
    X = np.zeros((4, 50, 2))
    y = np.zeros((4, 50), dtype=bool)
    y[1, 40:] = True
    s = flatten(X, y, np.arange(50), np.ones((4, 50), dtype=bool), max_negatives=20, seed=0)
    assert s.y.sum() == 10 and (s.y == 0).sum() == 20
    # the weights restore the negatives' share: 190 negatives stand behind 20 samples
    assert np.isclose(s.weight[s.y == 0].sum(), 190)


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y = (X[:, 0] + 0.3 * rng.normal(size=n) > 1.8).astype(int)
    return X, y


def test_supervised_risk_ranks_and_is_calibrated() -> None:
    X, y = _data(6000, 0)
    m = FailureRiskModel(max_iter=60, random_state=0).fit(X, y, groups=np.arange(len(y)) % 30)
    assert m.supervised
    Xt, yt = _data(4000, 1)
    r = m.risk(Xt)
    assert ((r >= 0) & (r <= 1)).all()
    assert r[yt == 1].mean() > 5 * r[yt == 0].mean()
    # calibration: the mean predicted risk is close to the observed rate
    assert abs(r.mean() - yt.mean()) < 0.02


def test_without_labels_the_anomaly_score_flags_outliers() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 4))
    m = FailureRiskModel(random_state=0).fit(X)
    assert not m.supervised
    r = m.risk(np.vstack([np.zeros(4), np.full(4, 8.0)]))
    assert r[1] > 0.3 > r[0]
