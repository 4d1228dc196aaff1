"""The failure-risk model: a calibrated gradient-boosting classifier, an IsolationForest anomaly score, and
splits by GPU and by time so that nothing leaks from test into training.

Risk is the calibrated probability that the GPU fails within the horizon when the model was trained on
labelled history; on a fleet with no labels yet (or no failures in its history) it is the anomaly score
mapped to [0, 1] by how rare it was in the training fleet: an upper-tail probability p becomes
min(1, -log10(p) / 6), so one sample in a million scores 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.model_selection import GroupKFold
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

ANOMALY_DECADES = 6.0          # an upper-tail probability of 1e-6 maps to risk 1


@dataclass(slots=True)
class SampleSet:
    """Flattened samples: features, labels, the GPU (row of the frame) and time of each, and weights."""

    X: np.ndarray
    y: np.ndarray
    gpu: np.ndarray
    ts_ns: np.ndarray
    weight: np.ndarray


def flatten(X: np.ndarray, y: np.ndarray, ts_ns: np.ndarray, mask: np.ndarray, *, max_negatives: int | None = None,
            seed: int = 0, gpu_offset: int = 0) -> SampleSet:
    """The masked (G, T) samples as rows; negatives beyond max_negatives are subsampled and up-weighted."""
    gi, ti = np.nonzero(mask)
    yy = y[gi, ti].astype(np.int8)
    weight = np.ones(len(gi))
    if max_negatives is not None:
        neg = np.nonzero(yy == 0)[0]
        if len(neg) > max_negatives:
            rng = np.random.default_rng(seed)
            drop = np.ones(len(gi), dtype=bool)
            keep_neg = rng.choice(neg, size=max_negatives, replace=False)
            drop[keep_neg] = False
            drop[yy == 1] = False
            sel = ~drop
            weight = np.where(yy == 0, len(neg) / max_negatives, 1.0)[sel]
            gi, ti, yy = gi[sel], ti[sel], yy[sel]
    return SampleSet(X[gi, ti].astype(np.float32), yy, gi + gpu_offset, ts_ns[ti], weight)


def split_by_gpu_and_time(n_gpus: int, ts_ns: np.ndarray, *, gpu_fraction: float = 0.7,
                          time_fraction: float = 0.6, seed: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """(train GPUs mask (G,), test GPUs mask (G,), split time): train GPUs before the split time, test
    GPUs after it, so that no GPU and no moment is in both."""
    rng = np.random.default_rng(seed)
    train = np.zeros(n_gpus, dtype=bool)
    train[rng.permutation(n_gpus)[: max(1, round(gpu_fraction * n_gpus))]] = True
    split = int(ts_ns[0] + time_fraction * (ts_ns[-1] - ts_ns[0])) if len(ts_ns) else 0
    return train, ~train, split


def squash(X: np.ndarray) -> np.ndarray:
    """sign(x)·log1p(|x|): error rates span decades; IsolationForest splits uniformly within a range."""
    return np.sign(X) * np.log1p(np.abs(np.nan_to_num(X)))


class FailureRiskModel(ClassifierMixin, BaseEstimator):
    """Calibrated HistGradientBoosting (when labels exist) plus an IsolationForest anomaly score.

    Parameters
    ----------
    max_iter, learning_rate, max_leaf_nodes : gradient-boosting hyperparameters.
    calibration : "isotonic" or "sigmoid" (CalibratedClassifierCV method).
    cv : folds for calibration, grouped by GPU when fit gets `groups`.
    n_estimators : trees of the IsolationForest.
    n_threads : OpenMP threads while fitting and predicting; 1 by default because on a busy host
        (several processes per core) OpenMP's spinning threads made fitting ~17× slower than one thread.
    random_state : seed of both.

    Attributes
    ----------
    classifier_ : the fitted CalibratedClassifierCV, or None (no positive labels).
    isolation_ : the fitted IsolationForest.
    anomaly_ref_ : sorted anomaly scores of the training samples (for the tail probability).
    """

    def __init__(self, *, max_iter: int = 150, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 calibration: str = "isotonic", cv: int = 3, n_estimators: int = 100,
                 n_threads: int = 1, random_state: int | None = 0) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.calibration = calibration
        self.cv = cv
        self.n_estimators = n_estimators
        self.n_threads = n_threads
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None, sample_weight: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> FailureRiskModel:
        """Fit the anomaly score on all samples and, when y has both classes, the calibrated classifier."""
        with threadpool_limits(limits=self.n_threads):
            return self._fit(X, y, sample_weight, groups)

    def _fit(self, X: np.ndarray, y: np.ndarray | None, sample_weight: np.ndarray | None,
             groups: np.ndarray | None) -> FailureRiskModel:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"X must be a non-empty 2-D array of features, got shape {X.shape}")
        self.n_features_in_ = X.shape[1]
        rng = np.random.default_rng(self.random_state)
        sub = X if len(X) <= 200_000 else X[rng.choice(len(X), 200_000, replace=False)]
        self.isolation_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.random_state)
        self.isolation_.fit(squash(sub))
        self.anomaly_ref_ = np.sort(-self.isolation_.score_samples(squash(sub)))
        self.classifier_ = None
        self.classes_ = np.array([0, 1])
        if y is not None:
            y = np.asarray(y).astype(int)
            if len(y) != len(X):
                raise ValueError(f"y has {len(y)} labels for {len(X)} samples")
            if y.min() != y.max() and y.sum() >= 2 * self.cv:
                hgb = HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                                     max_leaf_nodes=self.max_leaf_nodes, l2_regularization=1.0,
                                                     random_state=self.random_state)
                cv: object = self.cv
                if groups is not None and len(np.unique(groups)) >= self.cv:
                    cv = list(GroupKFold(n_splits=self.cv).split(X, y, groups))
                self.classifier_ = CalibratedClassifierCV(hgb, method=self.calibration, cv=cv)
                self.classifier_.fit(X, y, sample_weight=sample_weight)
        return self

    @property
    def supervised(self) -> bool:
        """Whether the risk is a calibrated probability (else the anomaly score)."""
        return getattr(self, "classifier_", None) is not None

    def _check(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "isolation_")
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}; the model expects {self.n_features_in_} features")
        return X

    def anomaly_risk(self, X: np.ndarray) -> np.ndarray:
        """The anomaly score in [0, 1]: -log10 of its upper-tail probability in the training fleet, / 6."""
        X = self._check(X)
        s = -self.isolation_.score_samples(squash(X))
        ref = self.anomaly_ref_
        tail = (len(ref) - np.searchsorted(ref, s, side="left") + 1.0) / (len(ref) + 1.0)
        return np.clip(-np.log10(tail) / ANOMALY_DECADES, 0.0, 1.0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 2) probabilities of no failure / failure within the horizon (the risk in column 1)."""
        r = self.risk(X)
        return np.column_stack([1.0 - r, r])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """1 where the risk is at least 0.5."""
        return (self.risk(X) >= 0.5).astype(int)

    def risk(self, X: np.ndarray) -> np.ndarray:
        """The combined risk in [0, 1]: the calibrated probability when supervised, else the anomaly risk."""
        X = self._check(X)
        if self.classifier_ is not None:
            with threadpool_limits(limits=getattr(self, "n_threads", 1)):
                return np.clip(self.classifier_.predict_proba(X)[:, 1], 0.0, 1.0)
        return self.anomaly_risk(X)
