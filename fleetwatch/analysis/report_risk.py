"""The HTML report's failure-risk section: the riskiest GPUs at the end of the window, with their reasons.

The model is the file named by FLEETWATCH_FAILURE__MODEL (the same variable that sets `failure.model`
for `fleetwatch run`); without one, an unsupervised anomaly score is fitted on the traces themselves.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from collector.series_view import TraceView
from fleetwatch.analysis import _plots
from fleetwatch.analysis.report import _empty, _esc, _figure
from predictor.failure.features import compute_features
from predictor.failure.model import FailureRiskModel
from predictor.failure.modelfile import ModelFile, ModelFileError, load
from predictor.failure.pipeline import GpuScore, score_view

TOP = 10
STEP_S = 900.0


def _model(view: TraceView, lo: int, hi: int) -> tuple[ModelFile | None, str]:
    path = os.environ.get("FLEETWATCH_FAILURE__MODEL")
    if path:
        try:
            m = load(path)
            return m, f"model {m.version} ({m.kind}, threshold {m.threshold:.3f})"
        except ModelFileError as err:
            return None, f"model file unusable ({err}); anomaly score instead"
    return None, "no model file (FLEETWATCH_FAILURE__MODEL): unsupervised anomaly score fitted on these traces"


def _anomaly_model(view: TraceView, lo: int, hi: int) -> ModelFile | None:
    start = max(lo, hi - 7 * 86400 * 10**9)
    ref = compute_features(view, start, hi, STEP_S, every=8)
    X = ref.X.reshape(-1, ref.X.shape[-1])
    if len(X) < 2:
        return None
    est = FailureRiskModel(random_state=0).fit(X)
    q75, q25 = np.nanpercentile(X, 75, axis=0), np.nanpercentile(X, 25, axis=0)
    return ModelFile(est, threshold=0.5, horizon_s=86400.0, step_s=STEP_S, fleet_median=np.nanmedian(X, axis=0),
                     fleet_scale=np.where(q75 - q25 > 0, q75 - q25, 1.0), training={"traces": "self"})


def _bar(scores: list[GpuScore], title: str) -> _plots.Plot:
    names = [f"{s.node} GPU {s.gpu}" for s in scores]
    risk = np.array([s.risk for s in scores])
    with plt.rc_context(_plots._RC):
        fig, ax = plt.subplots(figsize=(10, max(1.6, 0.28 * len(names) + 0.9)))
        y = np.arange(len(names))
        ax.barh(y, risk, color=_plots.PALETTE[0])
        ax.set_yticks(y, [_plots.mpl_text(n) for n in names])
        ax.invert_yaxis()
        ax.set_xlim(0, max(1e-3, float(risk.max()) * 1.15))
        ax.set_xlabel("failure risk (0-1)")
        ax.set_title(title)
        alt = "Bar chart of the GPUs with the highest failure risk: " + ", ".join(
            f"{n} {v:.2f}" for n, v in list(zip(names, risk, strict=True))[:5]) + "."
        return _plots._finish(fig, "failure-risk", title, alt)


def section(paths: Sequence[Path], start_ns: int | None, end_ns: int | None) -> str:
    """The failure-risk section's inner HTML."""
    parts: list[str] = []
    for p in paths:
        view = TraceView(p)
        span = view.span()
        if span is None:
            continue
        lo, hi = span[0] if start_ns is None else max(span[0], start_ns), span[1] if end_ns is None else min(
            span[1], end_ns)
        if hi <= lo:
            continue
        model, what = _model(view, lo, hi)
        if model is None:
            model = _anomaly_model(view, lo, hi)
        if model is None:
            continue
        scores = [s for s in score_view(model, view, hi, history_s=0.0) if s.risk > 0]
        if not scores:
            continue
        top = scores[:TOP]
        rows = "".join(
            f"<tr><td>{_esc(s.node)}</td><td>{_esc(s.gpu)}</td><td>{s.risk:.3f}</td>"
            f"<td>{'yes' if s.alert else ''}</td><td>{_esc('; '.join(r.text for r in s.reasons) or '-')}</td></tr>"
            for s in top)
        parts.append(f"<p>{_esc(p.name)}: {_esc(what)}; risk at the end of the window.</p>")
        parts.append(_figure(_bar(top, "Highest failure risk"), "GPUs ranked by predicted failure risk."))
        parts.append("<table><thead><tr><th>node</th><th>GPU</th><th>risk</th><th>alert</th><th>reasons</th>"
                     f"</tr></thead><tbody>{rows}</tbody></table>")
    return "\n".join(parts) if parts else _empty("No GPU data to score in this window.")
