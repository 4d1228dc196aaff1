"""The failure-risk model: a cross-fitted, calibrated gradient-boosting classifier with monotonic
constraints, and an IsolationForest anomaly score for fleets with no labels yet.

Supervised risk is the calibrated probability that the GPU fails within the horizon. Training is
cross-fitted over k folds of groups (nodes): member k is a classifier fitted without fold k and an
isotonic map fitted on its scores of fold k; the risk is the members' mean (as scikit-learn's
CalibratedClassifierCV with ensemble=True). Because member k never saw fold k's features, its calibrated
score on fold k is an honest out-of-fold risk (`oof_risk`), on which training picks the operating
threshold. Monotonic constraints say what every operator knows (more errors, more throttling, hotter
than peers never lowers the risk): with a few dozen failures per fault kind they are what lets the model
generalise to fleets it has not seen.

Without labels (or without failures in the history) the risk is the anomaly score mapped to [0, 1] by
how rare it was in the training fleet: an upper-tail probability p becomes min(1, -log10(p) / 6), so one
sample in a million scores 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import HistGradientBoostingClassifier, IsolationForest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold
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


def squash(X: np.ndarray) -> np.ndarray:
    """sign(x)·log1p(|x|): error rates span decades; IsolationForest splits uniformly within a range."""
    return np.sign(X) * np.log1p(np.abs(np.nan_to_num(X)))


class FailureRiskModel(ClassifierMixin, BaseEstimator):
    """Cross-fitted, calibrated HistGradientBoosting (when labels exist) plus an IsolationForest anomaly score.

    Parameters
    ----------
    max_iter, learning_rate, max_leaf_nodes, min_samples_leaf : gradient-boosting hyperparameters.
    monotonic_cst : per feature, 1 where a higher value may only raise the risk, 0 for no constraint
        (HistGradientBoostingClassifier's monotonic_cst); None for none.
    calibration : "isotonic" or "sigmoid", fitted on out-of-fold scores.
    cv : folds for cross-fitting, grouped by `groups` (nodes) when fit gets them.
    n_estimators : trees of the IsolationForest.
    n_threads : OpenMP threads while fitting and predicting; 1 by default because on a busy host
        (several processes per core) OpenMP's spinning threads made fitting ~17× slower than one thread.
    random_state : seed of both.

    Attributes
    ----------
    members_ : [(classifier fitted without fold k, its calibration fitted on fold k)]; empty when there
        were no positive labels.
    folds_ : the groups held out of each member (for oof_risk), until drop_folds().
    isolation_ : the fitted IsolationForest.
    anomaly_ref_ : sorted anomaly scores of the training samples (for the tail probability).
    """

    def __init__(self, *, max_iter: int = 150, learning_rate: float = 0.1, max_leaf_nodes: int = 31,
                 min_samples_leaf: int = 20, monotonic_cst: Sequence[int] | None = None,
                 calibration: str = "isotonic", cv: int = 4, n_estimators: int = 100, n_threads: int = 1,
                 random_state: int | None = 0) -> None:
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.min_samples_leaf = min_samples_leaf
        self.monotonic_cst = monotonic_cst
        self.calibration = calibration
        self.cv = cv
        self.n_estimators = n_estimators
        self.n_threads = n_threads
        self.random_state = random_state

    def fit(self, X: np.ndarray, y: np.ndarray | None = None, sample_weight: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> FailureRiskModel:
        """Fit the anomaly score on all samples and, when y has both classes, the cross-fitted classifier."""
        with threadpool_limits(limits=self.n_threads):
            return self._fit(X, y, sample_weight, groups)

    def _classifier(self) -> HistGradientBoostingClassifier:
        cst = list(self.monotonic_cst) if self.monotonic_cst is not None else None
        return HistGradientBoostingClassifier(max_iter=self.max_iter, learning_rate=self.learning_rate,
                                              max_leaf_nodes=self.max_leaf_nodes,
                                              min_samples_leaf=self.min_samples_leaf, l2_regularization=1.0,
                                              monotonic_cst=cst, random_state=self.random_state)

    def _fit(self, X: np.ndarray, y: np.ndarray | None, sample_weight: np.ndarray | None,
             groups: np.ndarray | None) -> FailureRiskModel:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"X must be a non-empty 2-D array of features, got shape {X.shape}")
        if self.monotonic_cst is not None and len(self.monotonic_cst) != X.shape[1]:
            raise ValueError(f"monotonic_cst has {len(self.monotonic_cst)} entries for {X.shape[1]} features")
        if self.calibration not in ("isotonic", "sigmoid"):
            raise ValueError(f"calibration must be 'isotonic' or 'sigmoid', got {self.calibration!r}")
        self.n_features_in_ = X.shape[1]
        rng = np.random.default_rng(self.random_state)
        sub = X if len(X) <= 200_000 else X[rng.choice(len(X), 200_000, replace=False)]
        self.isolation_ = IsolationForest(n_estimators=self.n_estimators, random_state=self.random_state)
        self.isolation_.fit(squash(sub))
        self.anomaly_ref_ = np.sort(-self.isolation_.score_samples(squash(sub)))
        self.members_: list[tuple[HistGradientBoostingClassifier, IsotonicRegression | LogisticRegression]] = []
        self.folds_: list[frozenset[int]] = []
        self.classes_ = np.array([0, 1])
        if y is None:
            return self
        y = np.asarray(y).astype(int)
        if len(y) != len(X):
            raise ValueError(f"y has {len(y)} labels for {len(X)} samples")
        if y.min() == y.max() or y.sum() < 2 * self.cv:
            return self
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        g = np.asarray(groups) if groups is not None else np.arange(len(y))
        if groups is not None and len(np.unique(g)) >= self.cv:
            splits = GroupKFold(n_splits=self.cv).split(X, y, g)
        else:
            splits = StratifiedKFold(n_splits=self.cv, shuffle=True, random_state=self.random_state).split(X, y)
        for fit_rows, held in splits:
            clf = self._classifier().fit(X[fit_rows], y[fit_rows], sample_weight=w[fit_rows])
            cal = self._calibrate(clf.predict_proba(X[held])[:, 1], y[held], w[held])
            self.members_.append((clf, cal))
            self.folds_.append(frozenset(np.unique(g[held]).tolist()))
        return self

    def _calibrate(self, score: np.ndarray, y: np.ndarray, w: np.ndarray) -> IsotonicRegression | LogisticRegression:
        if self.calibration == "isotonic":
            return IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, y, sample_weight=w)
        return LogisticRegression().fit(_logit(score)[:, None], y, sample_weight=w)

    @staticmethod
    def _member_risk(member: tuple[HistGradientBoostingClassifier, IsotonicRegression | LogisticRegression],
                     X: np.ndarray) -> np.ndarray:
        clf, cal = member
        score = clf.predict_proba(X)[:, 1]
        if isinstance(cal, IsotonicRegression):
            return np.clip(cal.predict(score), 0.0, 1.0)
        return cal.predict_proba(_logit(score)[:, None])[:, 1]

    def drop_folds(self) -> None:
        """Forget which groups each member held out (only training needs it; it would name training nodes)."""
        self.folds_ = []

    @property
    def supervised(self) -> bool:
        """Whether the risk is a calibrated probability (else the anomaly score)."""
        return bool(getattr(self, "members_", None))

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
        if self.members_:
            with threadpool_limits(limits=getattr(self, "n_threads", 1)):
                return np.mean([self._member_risk(m, X) for m in self.members_], axis=0)
        return self.anomaly_risk(X)

    def oof_risk(self, X: np.ndarray, groups: np.ndarray) -> np.ndarray:
        """Risk of each row from the member that did not see its group (the full ensemble for new groups)."""
        X = self._check(X)
        if not self.members_:
            return self.anomaly_risk(X)
        if not self.folds_:
            raise ValueError("the fold assignment was dropped: out-of-fold risk is only available right after fit")
        g = np.asarray(groups)
        out = np.full(len(X), np.nan)
        with threadpool_limits(limits=getattr(self, "n_threads", 1)):
            for held, member in zip(self.folds_, self.members_, strict=True):
                rows = np.nonzero(np.isin(g, list(held)))[0]
                if len(rows):
                    out[rows] = self._member_risk(member, X[rows])
        rest = np.isnan(out)
        if rest.any():
            out[rest] = self.risk(X[rest])
        return out


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))
