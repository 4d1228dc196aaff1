"""Choosing a model per series and target by backtest, and the reasons to fall back to a baseline.

Per series, horizon and target (power, energy, peak) the model with the lowest backtest MAE wins (for power
this is the lowest MASE: the scale is per series). A series falls back, and says why in the
`fallback` label of fleetwatch_forecast_model_info:

- no_data: no finite sample at all (no forecast is published for it);
- constant: every sample equal (last value, zero-width intervals);
- short_history: too little history to backtest (seasonal naive with a day of history, else last value;
  random-walk intervals);
- gaps: more than half of the last day missing (seasonal naive over the gaps);
- fit_failed: every non-baseline model failed on it (the best baseline).
"""

from __future__ import annotations

import numpy as np

from predictor.energy.backtest import Backtest, Score, coverage, score
from predictor.energy.models import BASELINES, period_steps

NONE = "none"


def series_status(y: np.ndarray, period: int) -> str:
    """'no_data', 'constant', 'gaps' or 'none' for one series' history."""
    finite = y[np.isfinite(y)]
    if finite.size == 0:
        return "no_data"
    if finite.size >= 12 and np.all(finite == finite[0]):      # a few equal readings are just a short history
        return "constant"
    recent = y[-period:]
    if np.isnan(recent).mean() > 0.5:
        return "gaps"
    return NONE


def short_history_model(y: np.ndarray, period: int) -> str:
    """Seasonal naive when a day of history exists, else last value."""
    return "seasonal_naive" if np.isfinite(y[:-period]).any() and y.size > period else "last_value"


def choose(bt: Backtest) -> tuple[np.ndarray, list[str], dict[str, dict[str, np.ndarray]]]:
    """Chosen model names (n, 3, K), a fallback reason per series, and the scores of every model."""
    n = len(bt.panel.ids)
    period = period_steps(bt.panel.step_s)
    names = bt.models
    scores = {m: score(bt, bt.preds[m], kind=0) for m in names}
    mae = np.stack([np.stack([score(bt, bt.preds[m], kind=k)["mae"] for k in range(3)], axis=1) for m in names])
    counts = np.stack([np.isfinite(bt.preds[m][:, :, 0, :]).sum(axis=1) for m in names])   # (M, n, K)
    o_count = bt.origins.size
    mae = np.where(counts[:, :, None, :] >= o_count // 2, mae, np.inf)                  # (M, n, 3, K)
    mae = np.where(np.isfinite(mae), mae, np.inf)
    best = np.argmin(mae, axis=0)                                                       # (n, 3, K)
    chosen = np.array(names, dtype=object)[best]
    fallback = []
    base = [names.index(b) for b in BASELINES if b in names]
    learned = [i for i, m in enumerate(names) if m not in BASELINES]
    for i in range(n):
        y = bt.panel.values[i]
        status = series_status(y, period)
        if status == "constant" or status == "no_data":
            chosen[i] = "last_value"
        elif status == "gaps":
            chosen[i] = "seasonal_naive"
        elif learned and base and not np.isfinite(mae[learned, i]).any():
            status = "fit_failed"
            chosen[i] = np.array(names, dtype=object)[np.array(base)][np.argmin(mae[base, i], axis=0)]
        fallback.append(status)
    return chosen, fallback, scores


def records(bt: Backtest, chosen: np.ndarray, scores: dict[str, dict[str, np.ndarray]]) -> list[Score]:
    """The accuracy table: one row per series × model × horizon (power targets)."""
    out: list[Score] = []
    for m, s in scores.items():
        c80, c95 = coverage(bt, s["res"])
        for i, sid in enumerate(bt.panel.ids):
            for k, h in enumerate(bt.hsteps):
                out.append(Score(sid.name, m, float(h * bt.panel.step_s), _f(s["mae"][i, k]), _f(s["mape"][i, k]),
                                 _f(s["smape"][i, k]), _f(s["mase"][i, k]), _f(c80[i, k]), _f(c95[i, k]),
                                 int(s["n"][i, k]), chosen=bool(chosen[i, 0, k] == m)))
    return out


def _f(x: float) -> float:
    return float(x) if np.isfinite(x) else float("nan")
