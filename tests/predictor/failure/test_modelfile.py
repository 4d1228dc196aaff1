"""Model files: versioned, and refused with a clear message when built for other features."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from predictor.failure.features import FEATURE_NAMES
from predictor.failure.model import FailureRiskModel
from predictor.failure.modelfile import FORMAT, ModelFile, ModelFileError, load, save


def _model() -> ModelFile:
    X = np.random.default_rng(0).normal(size=(300, len(FEATURE_NAMES)))
    est = FailureRiskModel(random_state=0).fit(X)
    return ModelFile(est, threshold=0.4, horizon_s=86400.0, step_s=900.0, training={"traces": ["x"]}, clear_ratio=0.5)


def test_round_trip_keeps_version_and_figures(tmp_path: Path) -> None:
    m = _model()
    p = save(m, tmp_path / "m.joblib")
    back = load(p)
    assert back.version == m.version and back.version.startswith(f"{FORMAT}-")
    assert back.threshold == 0.4 and back.features == FEATURE_NAMES and back.kind == "anomaly"
    assert back.clear_ratio == 0.5 and back.clear_threshold == 0.2      # the alert policy travels with the model
    X = np.ones((2, len(FEATURE_NAMES)))
    np.testing.assert_allclose(back.estimator.risk(X), m.estimator.risk(X))


def test_model_for_other_features_is_refused(tmp_path: Path) -> None:
    p = save(_model(), tmp_path / "m.joblib")
    payload = joblib.load(p)
    payload["features"] = [*payload["features"][:-1], "gpu_mood_24h"]
    joblib.dump(payload, p)
    with pytest.raises(ModelFileError, match=r"gpu_mood_24h.*retrain"):
        load(p)


@pytest.mark.parametrize("content", [b"not a model", b""], ids=["text", "empty"])
def test_foreign_files_are_refused(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "m.joblib"
    p.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"m\.joblib"):
        load(p)


def test_missing_file_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="fleetwatch train"):
        load(tmp_path / "none.joblib")
