"""The report's failure-risk section: a ranked plot and table, with or without a model file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetwatch.analysis.report_risk import section


def test_section_without_model_uses_the_anomaly_score(test_trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEETWATCH_FAILURE__MODEL", raising=False)
    html = section([test_trace], None, None)
    assert "anomaly score" in html and "<svg" in html and html.count("<tr>") == 11     # header + top 10


def test_section_with_model_names_its_version(test_trace: Path, model_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from predictor.failure.modelfile import load

    monkeypatch.setenv("FLEETWATCH_FAILURE__MODEL", str(model_path))
    html = section([test_trace], None, None)
    assert load(model_path).version in html and "<table>" in html
