"""Measured facility power: read with a PromQL query from a Prometheus API, kept on the forecast grid, and
the PUE model fitted on its history against IT power (the fleet's GPU power).

Model. Cooling and power distribution have a fixed part and a part proportional to the load, so

    facility ≈ a + b · IT,    a, b ≥ 0, least squares over the history where both are known

(`fit_linear`). The forecast moves the measured facility power along that slope,

    facility(h) = facility_now + b · (IT(h) − IT_now),    PUE(h) = facility(h) / IT(h)

so at horizon zero it is the measured PUE, and a fixed part that drifts (weather, other loads) is taken as
it is now rather than as its average over the history. With too little history (fewer than MIN_FIT_POINTS
common grid points) or IT power that hardly varied (relative spread below MIN_IT_SPREAD: the slope is not
identified), b is the current ratio facility_now / IT_now, which holds the PUE at its current value. The
`method` label of fleetwatch_pue_forecast_ratio says which: `linear_fit` or `current_ratio`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear

from collector.importers._writer import InputError
from collector.series_view import NS, PrometheusView

log = logging.getLogger(__name__)

MIN_FIT_POINTS = 24          # common grid points (2 h at 5 minutes) before the slope is fitted
MIN_IT_SPREAD = 0.02         # IT power's std / mean below which the slope is not identified


class FacilityQueryError(ValueError):
    """The facility power query failed or did not give one series (the message says which); `reason` is the
    error counter's label: facility_query (refused, unreachable, several series) or facility_no_data."""

    def __init__(self, message: str, reason: str = "facility_query") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class PueModel:
    """facility ≈ fixed_w + slope · IT; method: 'linear_fit' or 'current_ratio' (slope = facility / IT now)."""

    method: str
    fixed_w: float
    slope: float
    points: int


def fit_linear(facility_w: np.ndarray, it_w: np.ndarray) -> PueModel | None:
    """Least-squares facility = a + b·IT (a, b ≥ 0) over the points where both are known; None when the
    history is too short or IT power too flat to tell the slope."""
    f = np.asarray(facility_w, dtype=np.float64)
    x = np.asarray(it_w, dtype=np.float64)
    ok = np.isfinite(f) & np.isfinite(x) & (x > 0) & (f > 0)
    n = int(ok.sum())
    if n < MIN_FIT_POINTS:
        return None
    f, x = f[ok], x[ok]
    if float(np.std(x)) < MIN_IT_SPREAD * float(np.mean(x)):
        return None
    # Scaled columns keep the problem well conditioned whether the fleet draws watts or megawatts.
    sx = float(np.mean(x))
    A = np.column_stack([np.ones(n), x / sx])
    sol = lsq_linear(A, f, bounds=([0.0, 0.0], [np.inf, np.inf]))
    return PueModel("linear_fit", float(sol.x[0]), float(sol.x[1]) / sx, n)


def pue_model(facility_hist: np.ndarray, it_hist: np.ndarray, facility_now: float, it_now: float) -> PueModel:
    """The fitted model, else the current ratio (see the module docstring)."""
    fitted = fit_linear(facility_hist, it_hist)
    if fitted is not None:
        return fitted
    ratio = facility_now / it_now if it_now > 0 else math.nan
    return PueModel("current_ratio", 0.0, ratio, 0)


def facility_at(model: PueModel, facility_now: float, it_now: float, it_w: np.ndarray | float) -> np.ndarray:
    """Facility power (W) when IT power is it_w: the measured value moved along the model's slope (≥ 0)."""
    return np.maximum(facility_now + model.slope * (np.asarray(it_w, dtype=np.float64) - it_now), 0.0)


def pue_forecast(model: PueModel, facility_now: float, it_now: float, it_w: float) -> float:
    """PUE when IT power is it_w (NaN without IT power)."""
    if not it_w > 0:
        return math.nan
    return float(facility_at(model, facility_now, it_now, it_w)) / it_w


def energy_pue(model: PueModel, facility_now: float, it_now: float, path_ts_ns: np.ndarray, path_w: np.ndarray,
               until_ns: int) -> float:
    """Facility energy over IT energy along a forecast path up to until_ns: the PUE that prices its energy."""
    sel = (path_ts_ns <= until_ns) & np.isfinite(path_w)
    it = np.asarray(path_w, dtype=np.float64)[sel]
    if not it.size or float(np.sum(it)) <= 0:
        return pue_forecast(model, facility_now, it_now, it_now)
    return float(np.sum(facility_at(model, facility_now, it_now, it)) / np.sum(it))


@dataclass(frozen=True, slots=True)
class FacilityNow:
    """What one evaluation knows about facility power: the reading, the IT power beside it, the model."""

    facility_w: float
    it_w: float
    model: PueModel

    @property
    def pue(self) -> float:
        """Measured PUE now."""
        return self.facility_w / self.it_w if self.it_w > 0 else math.nan


class FacilityMeter:
    """Facility power from `query` at a Prometheus API, on the forecast grid, with the history it has read."""

    def __init__(self, url: str, query: str, step_s: float, keep_s: float, *, timeout_s: float = 10.0) -> None:
        # One retry: a facility meter that does not answer must not hold up the IT forecasts for long.
        self.view = PrometheusView(url, timeout_s=timeout_s, retries=1)
        self.query = query
        self.step_ns = round(step_s * NS)
        self.keep = max(2, int(keep_s / step_s))
        self.ts = np.zeros(0, dtype=np.int64)
        self.vals = np.zeros(0, dtype=np.float64)

    def read(self, start_ns: int, end_ns: int) -> None:
        """Fetch the grid points in [start, end] (aligned on the step); FacilityQueryError when that fails."""
        start_ns -= start_ns % self.step_ns
        end_ns -= end_ns % self.step_ns
        if self.ts.size:                 # from the newest held point on: it was provisional
            start_ns = max(start_ns, int(self.ts[-1]))
        start_ns = min(max(start_ns, end_ns - (self.keep - 1) * self.step_ns), end_ns)
        try:
            series = self.view.query_range(self.query, start_ns, end_ns, self.step_ns / NS)
        except (InputError, OSError, ValueError) as err:
            raise FacilityQueryError(f"facility power query {self.query!r} failed: {err}") from None
        if len(series) > 1:
            raise FacilityQueryError(f"facility power query {self.query!r} gives {len(series)} series; it must give "
                                     "one (wrap it in sum(...))")
        points = np.arange(start_ns, end_ns + 1, self.step_ns, dtype=np.int64)
        new = np.full(points.size, np.nan)
        got = False
        if series:
            ts, vals = series[0][1], series[0][2]
            idx = np.searchsorted(points, ts)
            ok = (idx < points.size) & (points[np.minimum(idx, points.size - 1)] == ts) & np.isfinite(vals)
            new[idx[ok]] = vals[ok]
            got = bool(ok.any())
        cut = int(np.searchsorted(self.ts, start_ns))
        m = min(self.vals.size - cut, points.size)
        # A point Prometheus no longer answers for (retention) keeps what was read before.
        new[:m] = np.where(np.isfinite(new[:m]), new[:m], self.vals[cut: cut + m])
        self.ts = np.concatenate([self.ts[:cut], points])[-self.keep:]
        self.vals = np.concatenate([self.vals[:cut], new])[-self.keep:]
        if not got:
            raise FacilityQueryError(f"facility power query {self.query!r} gives no data", "facility_no_data")

    def latest(self, at_ns: int, stale_ns: int) -> float:
        """The newest reading at or before at_ns and no older than stale_ns; NaN without one."""
        sel = (self.ts <= at_ns) & (self.ts >= at_ns - stale_ns) & np.isfinite(self.vals)
        return float(self.vals[sel][-1]) if sel.any() else math.nan

    def on(self, ts_ns: np.ndarray) -> np.ndarray:
        """The held readings at the given grid times (NaN where none)."""
        out = np.full(len(ts_ns), np.nan)
        idx = np.searchsorted(self.ts, ts_ns)
        ok = idx < self.ts.size
        ok[ok] &= self.ts[idx[ok]] == ts_ns[ok]
        out[ok] = self.vals[idx[ok]]
        return out


__all__ = ["FacilityMeter", "FacilityNow", "FacilityQueryError", "PueModel", "energy_pue", "facility_at",
           "fit_linear", "pue_forecast", "pue_model"]
