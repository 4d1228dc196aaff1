"""Coherent forecasts across GPU → node → fleet by weighted least squares (WLS) reconciliation.

Every series is a sum of GPU series, y = S b (S: the summing matrix). Given base forecasts ŷ of all series
(each from its own chosen model), the reconciled forecasts are

    ỹ = S (Sᵀ W⁻¹ S)⁻¹ Sᵀ W⁻¹ ŷ,    W = diag(backtest MSE of each series' base forecast)

(Wickramasuriya, Athanasopoulos & Hyndman 2019, "WLS with variance scaling"): the GPU forecasts are moved
least where they were most accurate, and node and fleet forecasts are then exact sums of their GPUs'.
A series without a base forecast gets a huge variance, so the others decide its value.
"""

from __future__ import annotations

import numpy as np

MISSING_VARIANCE = 1e18


def projection(S: np.ndarray, mse: np.ndarray) -> np.ndarray:
    """The matrix P with ỹ = P ŷ for summing matrix S (n × m) and per-series MSE (n,)."""
    w = np.asarray(mse, dtype=np.float64).copy()
    finite = np.isfinite(w) & (w > 0)
    # Only ratios of variances matter: scale them to a median of 1 so joules² and watts² behave alike.
    med = float(np.nanmedian(w[finite])) if finite.any() else 1.0
    w = np.where(np.isfinite(w), np.maximum(w / med, 1e-6), MISSING_VARIANCE)
    winv = 1.0 / w
    a = S.T @ (S * winv[:, None])
    b = S.T * winv[None, :]
    return S @ np.linalg.solve(a + 1e-12 * np.eye(a.shape[0]), b)


def reconcile(P: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """Apply a projection to base forecasts (n, ...): missing ones count as zero with no weight."""
    flat = np.nan_to_num(yhat.reshape(yhat.shape[0], -1), nan=0.0)
    return (P @ flat).reshape(yhat.shape)
