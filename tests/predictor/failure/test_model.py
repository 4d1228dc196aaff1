"""The risk model: splits without leakage, calibrated risk, the anomaly fallback."""

from __future__ import annotations

import numpy as np

from predictor.failure.model import FailureRiskModel, flatten, split_by_gpu_and_time


def test_split_keeps_gpus_and_time_apart() -> None:
    ts = np.arange(100) * 10**9
    train, test, cut = split_by_gpu_and_time(50, ts, gpu_fraction=0.6, time_fraction=0.5, seed=3)
    assert train.sum() == 30 and not (train & test).any() and (train | test).all()
    assert ts[0] < cut < ts[-1]


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
