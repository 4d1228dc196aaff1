"""Versioned failure-model files: the estimator with its feature list, training window and library versions.

A model file is a joblib pickle of one dict. Loading checks, before anything is used, that it is a
fleetwatch failure model of a format this code reads, built with the same feature set (names and
definitions) and a compatible scikit-learn; otherwise ModelFileError says what differs. Pickles can run
code when loaded: load only model files you built or trust.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import sklearn

from collector.fsync import atomic_file
from predictor.failure.evaluate import DEFAULT_CLEAR_RATIO, clear_level
from predictor.failure.features import FEATURE_NAMES, FEATURE_SET
from predictor.failure.model import FailureRiskModel

MAGIC = "fleetwatch-failure-model"
FORMAT = 2                  # 2: cross-fitted calibration, monotonic constraints


class ModelFileError(ValueError):
    """A model file that cannot be used here; the message says why and what to do."""


@dataclass
class ModelFile:
    """A trained model and everything needed to use and audit it."""

    estimator: FailureRiskModel
    threshold: float
    horizon_s: float
    step_s: float
    features: tuple[str, ...] = FEATURE_NAMES
    feature_set: str = FEATURE_SET
    fleet_median: np.ndarray = field(default_factory=lambda: np.zeros(len(FEATURE_NAMES)))
    fleet_scale: np.ndarray = field(default_factory=lambda: np.ones(len(FEATURE_NAMES)))
    training: dict[str, Any] = field(default_factory=dict)     # traces, window, GPUs, failures, figures
    sklearn_version: str = sklearn.__version__
    created: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    version: str = ""
    # The alert policy chosen with the threshold: an alert fires at `threshold` and holds while the risk
    # stays at or above clear_ratio × threshold (hysteresis); evaluation and the live rule use both.
    clear_ratio: float = DEFAULT_CLEAR_RATIO

    def __post_init__(self) -> None:
        if not self.version:
            h = hashlib.sha256(json.dumps([self.feature_set, list(self.features), self.training, self.created],
                                          sort_keys=True, default=str).encode()).hexdigest()[:10]
            self.version = f"{FORMAT}-{self.created[:10]}-{h}"

    @property
    def clear_threshold(self) -> float:
        """The risk below which a firing alert clears."""
        return clear_level(self.threshold, self.clear_ratio)

    @property
    def kind(self) -> str:
        """"supervised" (calibrated classifier) or "anomaly" (IsolationForest only)."""
        return "supervised" if self.estimator.supervised else "anomaly"


def save(model: ModelFile, path: str | os.PathLike[str]) -> Path:
    """Write the model file atomically (temp file renamed into place)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"magic": MAGIC, "format": FORMAT, "version": model.version, "created": model.created,
               "sklearn_version": model.sklearn_version, "feature_set": model.feature_set,
               "features": list(model.features), "threshold": float(model.threshold),
               "clear_ratio": float(model.clear_ratio),
               "horizon_s": float(model.horizon_s), "step_s": float(model.step_s),
               "fleet_median": np.asarray(model.fleet_median, dtype=np.float64),
               "fleet_scale": np.asarray(model.fleet_scale, dtype=np.float64),
               "training": model.training, "estimator": model.estimator}
    with atomic_file(out) as tmp:
        joblib.dump(payload, tmp, compress=3)
    return out


def _minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def load(path: str | os.PathLike[str]) -> ModelFile:
    """Read a model file; ModelFileError when it is not one, or was built for other features or sklearn."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such model file (build one with `fleetwatch train TRACE... -o {p}`)")
    try:
        payload = joblib.load(p)
    except Exception as err:        # joblib/pickle raise many types for a damaged or foreign file
        raise ModelFileError(f"{p}: not a readable model file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("magic") != MAGIC:
        raise ModelFileError(f"{p}: not a fleetwatch failure model file")
    if payload.get("format") != FORMAT:
        raise ModelFileError(f"{p}: model file format {payload.get('format')}, this fleetwatch reads format "
                             f"{FORMAT}: retrain with `fleetwatch train`")
    feats = tuple(payload.get("features") or ())
    if payload.get("feature_set") != FEATURE_SET or feats != FEATURE_NAMES:
        missing = sorted(set(FEATURE_NAMES) - set(feats))
        extra = sorted(set(feats) - set(FEATURE_NAMES))
        raise ModelFileError(
            f"{p}: model built for feature set {payload.get('feature_set')!r} with {len(feats)} features, "
            f"this fleetwatch computes {FEATURE_SET!r} with {len(FEATURE_NAMES)}"
            + (f"; missing here: {', '.join(extra)}" if extra else "")
            + (f"; new here: {', '.join(missing)}" if missing else "")
            + ": retrain with `fleetwatch train`")
    if _minor(str(payload.get("sklearn_version"))) != _minor(sklearn.__version__):
        raise ModelFileError(f"{p}: model built with scikit-learn {payload.get('sklearn_version')}, this is "
                             f"{sklearn.__version__}: retrain with `fleetwatch train`")
    est = payload.get("estimator")
    if not isinstance(est, FailureRiskModel):
        raise ModelFileError(f"{p}: the model file holds no failure-risk estimator")
    return ModelFile(estimator=est, threshold=float(payload["threshold"]), horizon_s=float(payload["horizon_s"]),
                     step_s=float(payload["step_s"]), features=feats, feature_set=payload["feature_set"],
                     fleet_median=np.asarray(payload["fleet_median"]), fleet_scale=np.asarray(payload["fleet_scale"]),
                     training=dict(payload.get("training") or {}), sklearn_version=payload["sklearn_version"],
                     created=payload["created"], version=payload["version"],
                     clear_ratio=float(payload.get("clear_ratio", DEFAULT_CLEAR_RATIO)))
