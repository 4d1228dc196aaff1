"""Why a GPU's risk is high: its top contributing features, in words.

A feature's contribution is how much the risk drops when that feature alone is set back to the fleet's
median (an occlusion test on the fitted model); the candidates are the features furthest above the
fleet median. Words give the value against the fleet: "correctable ECC errors 40× fleet median
(12 in 6 h)".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor.failure.features import BY_FEATURE, FEATURE_NAMES
from predictor.failure.model import FailureRiskModel


@dataclass(frozen=True, slots=True)
class Reason:
    """One contributing feature of one GPU's risk."""

    feature: str
    label: str              # stable short text (a metric label value): what, not how much
    text: str               # the full sentence with the figures
    contribution: float     # risk drop when the feature is set to the fleet median
    value: float
    median: float


def label_of(feature: str) -> str:
    """The stable words for a feature, e.g. "correctable ECC errors (6 h)"."""
    d = BY_FEATURE[feature]
    return f"{d.words} ({d.window_h} h)" if d.window_h else d.words


def describe(feature: str, value: float, median: float) -> str:
    """A feature's value in words against the fleet median."""
    d = BY_FEATURE[feature]
    if d.kind == "rate":
        n = value * d.window_h
        if median > 0:
            return f"{d.words} {value / median:.0f}× fleet median ({n:.0f} in {d.window_h} h)"
        return f"{n:.0f} {d.words} in {d.window_h} h (fleet median 0)"
    if d.kind == "delta":
        return f"{d.words}: {value:+.1f}/h over the last 6 h versus 24 h"
    if d.kind == "count":
        return f"{value:.0f} {d.words} in {d.window_h} h"
    if d.kind == "fraction":
        return f"{d.words} {100 * value:.0f}% of the last {d.window_h} h (fleet median {100 * median:.0f}%)"
    if feature.startswith(("temp", "memtemp")):
        if "std" in feature:
            return f"{d.words} {value:.1f} °C over {d.window_h} h (fleet median {median:.1f} °C)"
        return f"{d.words} by {value:+.1f} °C ({d.window_h} h mean)"
    if feature.startswith("power_std"):
        return f"{d.words} {value:.0f} W over {d.window_h} h (fleet median {median:.0f} W)"
    if feature.startswith("power"):
        return f"{d.words} {value:+.0f} W over {d.window_h} h (fleet median {median:+.0f} W)"
    return f"{d.words} {value:g} (fleet median {median:g})"


def explain(model: FailureRiskModel, X: np.ndarray, median: np.ndarray, scale: np.ndarray, *, top: int = 3,
            candidates: int = 6, base: np.ndarray | None = None) -> list[list[Reason]]:
    """Top `top` reasons for each row of X (rows with no feature above the fleet median get none)."""
    X = np.asarray(X, dtype=np.float32)
    n, f = X.shape
    if n == 0:
        return []
    risk = model.risk(X) if base is None else base
    z = (np.nan_to_num(X) - median[None, :]) / np.where(scale > 0, scale, 1.0)[None, :]
    k = min(candidates, f)
    cand = np.argsort(-z, axis=1)[:, :k]                        # (n, k) features furthest above median
    probe = np.repeat(X, k, axis=0)
    rows = np.arange(n * k)
    probe[rows, cand.ravel()] = median[cand.ravel()]
    drop = (risk[:, None] - model.risk(probe).reshape(n, k))     # (n, k)
    out: list[list[Reason]] = []
    for i in range(n):
        order = np.argsort(-drop[i])
        reasons = []
        for j in order[:top]:
            fi = int(cand[i, j])
            if z[i, fi] <= 0:
                continue
            name = FEATURE_NAMES[fi]
            val, med = float(X[i, fi]), float(median[fi])
            reasons.append(Reason(name, label_of(name), describe(name, val, med), float(max(drop[i, j], 0.0)),
                                  val, med))
        out.append(reasons)
    return out
