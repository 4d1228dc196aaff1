"""Power forecasters with one shape: fit on a panel of series, forecast a path from any origin's history.

All take Y (n_series, T) on a regular grid (NaN = gap) and its timestamps. `fit` estimates parameters
(scikit-learn style: hyperparameters in __init__, fitted state in attributes ending in `_`); `predict(Y, ts,
steps)` forecasts steps (1-based, in grid steps) ahead of the last column of Y with those parameters, so a
rolling-origin backtest estimates once and then moves the origin without re-estimating.

- LastValue, SeasonalNaive (daily): the baselines, vectorised.
- HoltWinters: statsmodels ExponentialSmoothing, additive daily season, one fit per series.
- Sarimax: statsmodels SARIMAX(1,0,1) with a constant and daily Fourier terms (a seasonal AR of period 288
  would need a 288-dimensional state; Fourier regressors carry the daily cycle at a fraction of the cost).
- GlobalGBM: one HistGradientBoostingRegressor (quantile loss, median) across all series, on lag, rolling
  and calendar features of the level-normalised series, the horizon being a feature: one fit for 1,000
  series instead of 1,000 statsmodels fits.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.exceptions import NotFittedError
from threadpoolctl import threadpool_limits

DAY_S = 86400.0


class ModelFitError(RuntimeError):
    """A model could not be fitted to a series (the caller falls back to a baseline)."""


def _check(Y: np.ndarray, ts_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Y = np.asarray(Y, dtype=np.float64)
    ts = np.asarray(ts_ns, dtype=np.int64)
    if Y.ndim != 2 or Y.shape[1] != ts.shape[0]:
        raise ValueError(f"Y must be (n_series, T) matching {ts.shape[0]} timestamps, got {Y.shape}")
    if ts.size > 1 and np.any(np.diff(ts) <= 0):
        raise ValueError("timestamps must increase strictly (a clock went backwards?)")
    return Y, ts


def ffill(Y: np.ndarray) -> np.ndarray:
    """Carry the last finite value forward along time (leading NaNs stay)."""
    idx = np.where(np.isfinite(Y), np.arange(Y.shape[1])[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    return Y[np.arange(Y.shape[0])[:, None], idx]


def last_finite(Y: np.ndarray) -> np.ndarray:
    """The last finite value of each row (NaN when none)."""
    if not Y.shape[1]:
        return np.full(Y.shape[0], np.nan)
    ok = np.isfinite(Y[:, ::-1])
    idx = Y.shape[1] - 1 - np.argmax(ok, axis=1)
    out = Y[np.arange(Y.shape[0]), idx]
    return np.where(ok.any(axis=1), out, np.nan)


def period_steps(step_s: float) -> int:
    """Grid steps in a day."""
    return max(1, round(DAY_S / step_s))


class Forecaster:
    """Common interface; subclasses set `name` and implement _fit/_predict."""

    name: ClassVar[str] = ""
    baseline: ClassVar[bool] = False

    def fit(self, Y: np.ndarray, ts_ns: np.ndarray, step_s: float) -> Forecaster:
        """Estimate parameters on the history Y (n, T); returns self."""
        Y, ts = _check(Y, ts_ns)
        self.step_s_ = float(step_s)
        self.period_ = period_steps(step_s)
        self._fit(Y, ts)
        return self

    def predict(self, Y: np.ndarray, ts_ns: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Point forecasts (n, len(steps)) for `steps` grid steps after the last column of Y."""
        if not hasattr(self, "step_s_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit first")
        Y, ts = _check(Y, ts_ns)
        steps = np.asarray(steps, dtype=np.int64)
        if steps.size and steps.min() < 1:
            raise ValueError("forecast steps start at 1")
        return self._predict(Y, ts, steps)

    def _fit(self, Y: np.ndarray, ts: np.ndarray) -> None:
        pass

    def _predict(self, Y: np.ndarray, ts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class LastValue(Forecaster):
    """Tomorrow is like now: the last finite value at every step."""

    name = "last_value"
    baseline = True

    def _predict(self, Y: np.ndarray, ts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return np.repeat(last_finite(Y)[:, None], steps.size, axis=1)


class SeasonalNaive(Forecaster):
    """The value one day before the target time (the last value where that is missing)."""

    name = "seasonal_naive"
    baseline = True

    def _predict(self, Y: np.ndarray, ts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        p, t = self.period_, Y.shape[1]
        back = (t - 1) + steps - p * np.ceil(steps / p).astype(np.int64)
        out = np.full((Y.shape[0], steps.size), np.nan)
        ok = back >= 0
        out[:, ok] = Y[:, back[ok]]
        last = last_finite(Y)[:, None]
        return np.where(np.isfinite(out), out, last)


def _filled(y: np.ndarray, period: int) -> np.ndarray:
    """A gap-free copy for models that cannot skip NaNs: the value a day earlier, else the last value."""
    y = y.copy()
    bad = ~np.isfinite(y)
    if bad.any():
        for i in np.nonzero(bad)[0]:
            if i >= period and np.isfinite(y[i - period]):
                y[i] = y[i - period]
        y = ffill(y[None, :])[0]
        first = np.isfinite(y)
        if not first.all():
            y[~first] = y[first][0] if first.any() else 0.0
    return y


class HoltWinters(Forecaster):
    """Additive daily-seasonal exponential smoothing (statsmodels), one fit per series.

    Parameters
    ----------
    history_days : days of history each fit and forecast uses (the heuristic seasonal start needs two; more
        makes every backtest origin's filter pass slower).
    """

    name = "holt_winters"

    def __init__(self, history_days: float = 2.0) -> None:
        self.history_days = history_days

    def _fit(self, Y: np.ndarray, ts: np.ndarray) -> None:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        p = self.period_
        n_hist = int(self.history_days * p)
        self.params_: list[tuple[float, float] | None] = []
        for y in Y:
            y = y[-n_hist:]
            if np.isfinite(y).sum() < 2 * p or np.nanstd(y) == 0:
                self.params_.append(None)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    r = ExponentialSmoothing(_filled(y, p), seasonal="add", seasonal_periods=p,
                                             initialization_method="heuristic").fit()
                    self.params_.append((float(r.params["smoothing_level"]), float(r.params["smoothing_seasonal"])))
                except (ValueError, np.linalg.LinAlgError):
                    self.params_.append(None)

    def _predict(self, Y: np.ndarray, ts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        from statsmodels.tsa.holtwinters import ExponentialSmoothing

        p = self.period_
        n_hist = int(self.history_days * p)
        out = np.full((Y.shape[0], steps.size), np.nan)
        if not steps.size:
            return out
        for i, y in enumerate(Y):
            par = self.params_[i] if i < len(self.params_) else None
            y = y[-n_hist:]
            if par is None or np.isfinite(y).sum() < 2 * p:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = ExponentialSmoothing(_filled(y, p), seasonal="add", seasonal_periods=p,
                                         initialization_method="heuristic").fit(
                    smoothing_level=par[0], smoothing_seasonal=par[1], optimized=False)
                out[i] = r.forecast(int(steps.max()))[steps - 1]
        return out


def _fourier(ts: np.ndarray, k: int) -> np.ndarray:
    """Daily sine/cosine pairs of orders 1..k at the given times (UTC)."""
    phase = 2.0 * math.pi * ((ts // 10**9) % 86400) / DAY_S
    return np.column_stack([f(j * phase) for j in range(1, k + 1) for f in (np.sin, np.cos)])


class Sarimax(Forecaster):
    """SARIMAX(1,0,1) + constant + daily Fourier terms (statsmodels); NaNs are skipped by the Kalman filter.

    Parameters
    ----------
    history_days : days of history each fit uses.
    state_days : days of history a forecast filters through (the Fourier terms carry the season).
    fourier : sine/cosine pairs of the daily cycle.
    """

    name = "sarimax"

    def __init__(self, history_days: float = 3.0, fourier: int = 3, state_days: float = 1.0) -> None:
        self.history_days = history_days
        self.fourier = fourier
        self.state_days = state_days

    def _fit(self, Y: np.ndarray, ts: np.ndarray) -> None:
        from statsmodels.tsa.statespace.sarimax import SARIMAX

        n_hist = int(self.history_days * self.period_)
        self.results_: list[object | None] = []
        x = _fourier(ts[-n_hist:], self.fourier)
        for y in Y:
            y = y[-n_hist:]
            if np.isfinite(y).sum() < self.period_ or np.nanstd(y) == 0:
                self.results_.append(None)
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    self.results_.append(SARIMAX(y, exog=x, order=(1, 0, 1), trend="c").fit(disp=False, maxiter=50))
                except (ValueError, np.linalg.LinAlgError):
                    self.results_.append(None)

    def _predict(self, Y: np.ndarray, ts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        n_hist = int(self.state_days * self.period_)
        out = np.full((Y.shape[0], steps.size), np.nan)
        if not steps.size:
            return out
        step_ns = round(self.step_s_ * 1e9)
        x = _fourier(ts[-n_hist:], self.fourier)
        future = ts[-1] + step_ns * np.arange(1, int(steps.max()) + 1, dtype=np.int64)
        xf = _fourier(future, self.fourier)
        for i, y in enumerate(Y):
            res = self.results_[i] if i < len(self.results_) else None
            y = y[-n_hist:]
            if res is None or len(y) != len(x) or np.isfinite(y).sum() < self.period_ // 4:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    fc = res.apply(y, exog=x).forecast(int(steps.max()), exog=xf)  # type: ignore[attr-defined]
                except (ValueError, np.linalg.LinAlgError):
                    continue
            out[i] = np.asarray(fc)[steps - 1]
        return out


PREDICT_ROWS = 300_000          # feature rows the global model predicts at once (memory bound)
# Horizons (in steps at 5 minutes) the global model trains on; the horizon is a feature, so the trees
# answer the steps in between from their neighbours.
TRAIN_STEPS = (1, 2, 3, 4, 6, 9, 12, 18, 24, 36, 48, 72, 96, 144, 192, 240, 288)


def _cum(Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(Y)
    z = np.zeros((Y.shape[0], 1))
    return (np.hstack([z, np.cumsum(np.where(ok, Y, 0.0), axis=1)]),
            np.hstack([z, np.cumsum(ok, axis=1, dtype=np.float64)]))


def _window_mean(cs: np.ndarray, cn: np.ndarray, o: np.ndarray, w: int) -> np.ndarray:
    """Mean of the finite values in (o-w, o] for each origin column o (rows × origins)."""
    hi = o + 1
    lo = np.maximum(hi - w, 0)
    n = cn[:, hi] - cn[:, lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (cs[:, hi] - cs[:, lo]) / n, np.nan)


def features(Y: np.ndarray, ts: np.ndarray, origins: np.ndarray, steps: np.ndarray, period: int,
             level: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature rows for every (series, origin, step): X (n·O·H, F), the last value and the scale per row."""
    n = Y.shape[0]
    F = ffill(Y)
    cs, cn = _cum(Y)
    cs2, _ = _cum(np.where(np.isfinite(Y), Y * Y, np.nan))
    o = origins
    last = F[:, o]                                                       # (n, O)
    scale = np.maximum(_window_mean(cs, cn, o, period), 1.0)
    scale = np.where(np.isfinite(scale), scale, np.maximum(np.abs(last), 1.0))
    scale = np.where(np.isfinite(scale), scale, 1.0)

    def rel(v: np.ndarray) -> np.ndarray:
        return (v - last) / scale

    def at(idx: np.ndarray) -> np.ndarray:
        ok = idx >= 0
        out = np.full(idx.shape, np.nan)
        out[ok] = Y[np.broadcast_to(np.arange(n)[:, None], idx.shape)[ok], idx[ok]] if idx.ndim == 2 else 0
        return out

    o2 = np.broadcast_to(o[None, :], (n, o.size))
    m1 = _window_mean(cs, cn, o, 12)
    m6 = _window_mean(cs, cn, o, 72)
    sq = _window_mean(cs2, cn, o, 12)
    sd1 = np.sqrt(np.maximum(sq - m1 * m1, 0.0)) / scale
    base = [last / scale, rel(at(o2 - 1)), rel(at(o2 - 3)), rel(at(o2 - 12)), rel(m1), rel(m6),
            rel(_window_mean(cs, cn, o, period)), sd1,
            1.0 - (cn[:, o + 1] - cn[:, np.maximum(o + 1 - period, 0)]) / np.minimum(o + 1, period),
            np.broadcast_to(level[:, None], (n, o.size))]
    B = np.stack(base, axis=-1)                                          # (n, O, Fb)
    H = steps.size
    tgt = o2[:, :, None] + steps[None, None, :]                          # (n, O, H) target column
    step_ns = int(ts[1] - ts[0]) if ts.size > 1 else 300 * 10**9
    tgt_ts = ts[o][None, :, None] + steps[None, None, :] * step_ns
    # Hour of day of the target; no day of week: with days to weeks of history the trees would split on
    # weekdays never seen in training.
    hour = ((tgt_ts // 10**9) % 86400) / 3600.0
    seas = []
    for k in (1,):
        idx = tgt - k * period * np.ceil(steps / (k * period)).astype(np.int64)[None, None, :]
        v = np.full(idx.shape, np.nan)
        ok = (idx >= 0) & (idx <= o2[:, :, None])
        rows = np.broadcast_to(np.arange(n)[:, None, None], idx.shape)
        v[ok] = Y[rows[ok], idx[ok]]
        seas.append((v - last[:, :, None]) / scale[:, :, None])
    Hf = np.stack([np.broadcast_to(steps[None, None, :], (n, o.size, H)).astype(np.float64),
                   np.broadcast_to(hour, (n, o.size, H)),
                   *seas], axis=-1)
    X = np.concatenate([np.broadcast_to(B[:, :, None, :], (n, o.size, H, B.shape[-1])), Hf], axis=-1)
    return (X.reshape(-1, X.shape[-1]), np.broadcast_to(last[:, :, None], (n, o.size, H)).reshape(-1),
            np.broadcast_to(scale[:, :, None], (n, o.size, H)).reshape(-1))


class GlobalGBM(Forecaster):
    """One HistGradientBoostingRegressor (quantile loss, median) for all series and horizons.

    The target is the change from the last value, divided by the series' mean over the last day, so GPUs,
    nodes and the fleet share one model.

    Parameters
    ----------
    max_rows : training rows kept (a random subset beyond that).
    origin_stride : grid steps between training origins.
    max_iter, learning_rate, max_depth, min_samples_leaf : passed to HistGradientBoostingRegressor; shallow,
        slow and with large leaves because days of job-driven power overfit easily (the hour of day would
        otherwise memorise when yesterday's jobs ended).
    random_state : seed of the row subset and of the trees.
    level : per-series hierarchy level (0 GPU, 1 node, 2 fleet), a feature; None: all 0.
    n_threads : OpenMP threads. One by default: the service shares its node with the collector (and GPU
        jobs), and OpenMP's spinning threads on a busy machine made a small fit 25x slower in our tests.
    """

    name = "gbm"

    def __init__(self, max_rows: int = 150_000, origin_stride: int = 6, max_iter: int = 60,
                 learning_rate: float = 0.05, max_depth: int = 2, min_samples_leaf: int = 500, random_state: int = 0,
                 level: np.ndarray | None = None, n_threads: int = 1) -> None:
        self.max_rows = max_rows
        self.origin_stride = origin_stride
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.random_state = random_state
        self.level = level
        self.n_threads = n_threads

    def _level(self, n: int) -> np.ndarray:
        return np.zeros(n) if self.level is None else np.asarray(self.level, dtype=np.float64)[:n]

    def _fit(self, Y: np.ndarray, ts: np.ndarray) -> None:
        n, t = Y.shape
        steps = np.array([s for s in TRAIN_STEPS if s < t // 2] or [1], dtype=np.int64)
        hi = t - 1 - steps.max()
        # Origins from one day in, so the daily lag feature is always there in training as it is live.
        first = self.period_ if hi - self.period_ >= 12 * self.origin_stride else min(12, max(hi, 0))
        origins = np.arange(first, max(hi, 0) + 1, self.origin_stride, dtype=np.int64)
        if origins.size == 0 or hi < 1:
            raise ModelFitError(f"gbm: {t} grid points are too few to train on")
        rng = np.random.default_rng(self.random_state)
        per_origin = n * steps.size
        if origins.size * per_origin > self.max_rows:
            origins = np.sort(rng.choice(origins, size=max(1, self.max_rows // per_origin), replace=False))
        X, last, scale = features(Y, ts, origins, steps, self.period_, self._level(n))
        tgt = (origins[None, :, None] + steps[None, None, :])
        yv = Y[np.arange(n)[:, None, None], np.broadcast_to(tgt, (n, origins.size, steps.size))].reshape(-1)
        y = (yv - last) / scale
        ok = np.isfinite(y) & np.isfinite(last)
        if ok.sum() < 200:
            raise ModelFitError(f"gbm: only {int(ok.sum())} usable training rows")
        X = X[ok]
        # A lag longer than the history is all NaN; the binner rejects such a column, so it becomes 0.
        self.empty_ = ~np.isfinite(X).any(axis=0)
        X[:, self.empty_] = 0.0
        self.model_ = HistGradientBoostingRegressor(
            loss="quantile", quantile=0.5, max_iter=self.max_iter, learning_rate=self.learning_rate,
            max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf, random_state=self.random_state,
            early_stopping=False)
        with threadpool_limits(self.n_threads, user_api="openmp"):
            self.model_.fit(X, y[ok])

    def _predict(self, Y: np.ndarray, ts: np.ndarray, steps: np.ndarray) -> np.ndarray:
        return self.predict_origins(Y, ts, np.array([Y.shape[1] - 1]), steps)[:, 0, :]

    def predict_origins(self, Y: np.ndarray, ts: np.ndarray, origins: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """Forecasts (n, O, H) from several origins (columns of Y) at once: a backtest in one call."""
        n = Y.shape[0]
        out = np.full((n, origins.size, steps.size), np.nan)
        if not steps.size or not origins.size:
            return out
        # In chunks of origins, so 1,000 series × 50 origins × 60 steps never materialise at once.
        per = max(1, PREDICT_ROWS // max(1, n * steps.size))
        for a in range(0, origins.size, per):
            chunk = origins[a: a + per]
            X, last, scale = features(Y, ts, chunk, steps, self.period_, self._level(n))
            X[:, self.empty_] = 0.0
            with threadpool_limits(self.n_threads, user_api="openmp"):
                pred = last + scale * self.model_.predict(X)
            out[:, a: a + per] = pred.reshape(n, chunk.size, steps.size)
        return out


MODELS: dict[str, type[Forecaster]] = {
    c.name: c for c in (LastValue, SeasonalNaive, HoltWinters, Sarimax, GlobalGBM)
}
BASELINES = ("last_value", "seasonal_naive")
