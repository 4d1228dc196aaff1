"""Rolling-origin backtest: forecasts from many past origins, scored against what happened.

Parameters of every model are estimated once on the data before the first origin; the origin then moves
forward (every `origin_every_s`) over the last `backtest_days` that still have a full horizon after them,
each forecast seeing only the history up to its origin.

Targets, for each configured horizon h (in grid steps): power at origin+h, energy over (origin, origin+h]
(trapezoid on the grid) and peak power over (origin, origin+h].

Scores per series × model × horizon (power):
- MAE, MAPE (over actuals above 1 W), sMAPE (2|e|/(|y|+|ŷ|)), and
- MASE = MAE / mean|y_t − y_{t−d}| over the training part, d = one day of steps: the forecast's error over
  the in-sample error of the daily seasonal-naive forecast (Hyndman & Koehler 2006, seasonal variant).
- coverage_80 / coverage_95: the share of actuals inside intervals built the way they are published
  (point + empirical quantiles of earlier residuals, pooled per hierarchy level and scaled by each series'
  level), using at each origin only residuals whose target time had already passed (no look-ahead).

Residual quantiles (`residual_quantiles`) sit at the plotting positions k/(n+1): for n exchangeable
residuals, a new one falls below the k-th smallest with probability k/(n+1), so the interval between the
(α/2) and (1 − α/2) positions covers 1 − α of new residuals in expectation at any pool size. Between order
statistics they interpolate linearly, beyond the ends they extrapolate from the two outermost (a 95 %
interval from 30 residuals reaches past the largest, which alone would cover only 29/31). The split-
conformal rule used before (each tail at the next order statistic up, after an (n+1)/n inflation) is
conservative twice over: with the fleet's 20 to 48 residuals its 80 % intervals cover (k − j)/(n + 1) = 0.81
to 0.86, 0.83 on average, by construction rather than 0.80.

Long horizons: residuals h ahead from origins spread over fewer than MIN_WINDOWS non-overlapping horizon
windows are a handful of draws, not a sample (two days of hourly origins hold 49 residuals at 24 h, but they
describe only about three days of what happened, and online only the first day's ones calibrate the second
day). For such a horizon the pool is the residuals of a proxy, the daily seasonal-naive forecast, at that
horizon from hourly origins over all the history (same grid as the backtest's origins), each series'
divided by its level, and scaled per interval by the ratio of the model's to the proxy's (1 − α) quantile of
absolute residuals at the backtest origins where both are known (`proxy_ratio`): the chosen model is often
more accurate than seasonal naive, and a ratio of mean errors, or one that may only widen, left its 80 %
bands too wide (a node's 24 h 80 % interval covered 0.86). Per level, because a model that cuts the typical
error may still miss the same job starts and ends in the tails; the ratio of a level's quantiles needs
MIN_CALIB pairs and MIN_TAIL beyond that quantile, else it is 1 (the proxy's own). The proxy needs no
fitting, so its residuals are out of sample at every origin.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from predictor.energy.models import BASELINES, MODELS, Forecaster, GlobalGBM, ModelFitError, ffill, period_steps
from predictor.energy.series import PowerPanel

log = logging.getLogger(__name__)

KINDS = ("power", "energy", "peak")
MIN_ORIGINS = 8
MAX_POOL = 20_000
MIN_WINDOWS = 10            # non-overlapping horizon windows the backtest's origins must span to calibrate alone
MIN_CALIB = 20
MIN_TAIL = 5                # pairs beyond a (1 − α) quantile before a proxy ratio at that level is trusted


class BacktestUnavailable(ValueError):
    """Too little history for a rolling-origin backtest (the message says how much is needed)."""


def path_steps(hsteps: np.ndarray) -> np.ndarray:
    """Steps at which paths are forecast: every step for the first 3 hours, then every 30 min, plus each h."""
    hmax = int(hsteps.max())
    dense = np.arange(1, min(hmax, 36) + 1)
    sparse = np.arange(36, hmax + 1, 6)
    return np.unique(np.concatenate([dense, sparse, hsteps])).astype(np.int64)


def targets_from_path(last: np.ndarray, path: np.ndarray, psteps: np.ndarray, hsteps: np.ndarray,
                      step_s: float) -> np.ndarray:
    """(…, 3, K) power/energy/peak targets from a forecast path (…, P) that starts after value `last`."""
    x = np.concatenate([[0], psteps]).astype(np.float64)
    full = np.concatenate([last[..., None], path], axis=-1)
    out = np.empty((*path.shape[:-1], 3, hsteps.size))
    for k, h in enumerate(hsteps):
        j = int(np.searchsorted(psteps, h))
        out[..., 0, k] = path[..., j]
        seg = full[..., : j + 2]
        out[..., 1, k] = np.trapezoid(seg, x[: j + 2], axis=-1) * step_s
        out[..., 2, k] = np.max(path[..., : j + 1], axis=-1)
    return out


def actual_targets(Y: np.ndarray, origins: np.ndarray, hsteps: np.ndarray, step_s: float) -> np.ndarray:
    """(n, O, 3, K) actual targets; NaN where the data has a gap that matters (energy: >10 % missing)."""
    n = Y.shape[0]
    out = np.full((n, origins.size, 3, hsteps.size), np.nan)
    F = ffill(Y)
    for j, o in enumerate(origins):
        for k, h in enumerate(hsteps):
            seg = Y[:, o: o + h + 1]
            if seg.shape[1] < h + 1:
                continue
            out[:, j, 0, k] = Y[:, o + h]
            miss = np.isnan(seg[:, 1:]).mean(axis=1)
            e = np.trapezoid(F[:, o: o + h + 1], dx=step_s, axis=1)
            out[:, j, 1, k] = np.where(miss <= 0.1, e, np.nan)
            pk = np.nanmax(np.where(np.isnan(seg[:, 1:]), -np.inf, seg[:, 1:]), axis=1)
            out[:, j, 2, k] = np.where((miss <= 0.1) & np.isfinite(pk), pk, np.nan)
    return out


@dataclass(slots=True)
class Backtest:
    """Forecasts and actuals of every model at every origin: preds[m] is (n, O, 3, K)."""

    panel: PowerPanel
    hsteps: np.ndarray
    origins: np.ndarray
    train_end: int
    preds: dict[str, np.ndarray]
    actual: np.ndarray
    scale: np.ndarray                    # series level (mean of training part, ≥ 1 W): pools residuals
    mase_scale: np.ndarray               # in-sample daily seasonal-naive MAE
    failed: dict[str, str] = field(default_factory=dict)
    fitted: dict[str, Forecaster] = field(default_factory=dict)
    proxy_origins: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    proxy: dict[int, np.ndarray] = field(default_factory=dict)   # k → (n, Op, 3) proxy residuals / level

    @property
    def models(self) -> list[str]:
        """Models that produced forecasts."""
        return list(self.preds)


def windows(origins: np.ndarray, h: int) -> int:
    """Non-overlapping horizon windows that residuals h ahead from these origins span."""
    return min(origins.size, int((origins[-1] - origins[0]) // max(h, 1)) + 1) if origins.size else 0


def long_horizons(origins: np.ndarray, hsteps: np.ndarray) -> np.ndarray:
    """Which horizons the backtest's origins span too few windows of (calibrated from the proxy's pool)."""
    return np.array([windows(origins, int(h)) < MIN_WINDOWS for h in hsteps], dtype=bool)


def proxy_residuals(Y: np.ndarray, origins: np.ndarray, hsteps: np.ndarray, step_s: float,
                    scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seasonal-naive residuals / level, (n, Op, 3, K), from origins over all history on the backtest's grid.

    Proxy origins step back from the last backtest origin by the backtest's spacing to a day into the data.
    """
    p = period_steps(step_s)
    every = int(origins[1] - origins[0]) if origins.size > 1 else 1
    porigins = np.arange(int(origins[-1]), p - 1, -every)[::-1].astype(np.int64)
    n = Y.shape[0]
    out = np.full((n, porigins.size, 3, hsteps.size), np.nan)
    if not porigins.size or not hsteps.size:
        return porigins, out
    F = ffill(Y)
    psteps = path_steps(hsteps)
    back = psteps - p * np.ceil(psteps / p).astype(np.int64)                 # ≤ 0: a day (or days) back
    for a in range(0, porigins.size, 32):                                    # chunks bound the memory
        o = porigins[a: a + 32]
        idx = o[:, None] + back[None, :]                                     # (Oc, P)
        path = np.where(idx >= 0, Y[:, np.maximum(idx, 0)], np.nan)          # (n, Oc, P)
        last = F[:, o]
        path = np.where(np.isfinite(path), path, last[:, :, None])
        pred = targets_from_path(last, path, psteps, hsteps, step_s)
        out[:, a: a + 32] = (actual_targets(Y, o, hsteps, step_s) - pred) / scale[:, None, None, None]
    return porigins, out


def plan_origins(t: int, hsteps: np.ndarray, step_s: float, backtest_days: float,
                 origin_every_s: float) -> np.ndarray:
    """Origins (column indices) of the backtest; BacktestUnavailable when history is too short."""
    p = period_steps(step_s)
    last = t - 1 - int(hsteps.max())
    first = max(last - int(backtest_days * p), p + 12)
    every = max(1, round(origin_every_s / step_s))
    origins = np.arange(last, first - 1, -every)[::-1].astype(np.int64) if last >= first else np.zeros(0, np.int64)
    if origins.size < MIN_ORIGINS:
        need = (p + 12 + MIN_ORIGINS * every + int(hsteps.max())) * step_s / 3600.0
        raise BacktestUnavailable(f"{t * step_s / 3600.0:.1f} h of history; a backtest at these horizons needs "
                                  f"at least {need:.0f} h")
    return origins


def make_model(name: str, level: np.ndarray, random_state: int, n_threads: int = 1) -> Forecaster:
    """An unfitted model by name."""
    if name == "gbm":
        return GlobalGBM(level=level, random_state=random_state, n_threads=n_threads)
    return MODELS[name]()


def level_of(panel: PowerPanel) -> np.ndarray:
    """Hierarchy level per series: 0 GPU, 1 node, 2 fleet."""
    return np.array([{"gpu": 0, "node": 1, "fleet": 2}[s.scope] for s in panel.ids], dtype=np.float64)


def statsmodels_rows(panel: PowerPanel, max_series: int) -> np.ndarray:
    """Rows statsmodels models run on: all when few, else the fleet and nodes first (one fit per series)."""
    order = sorted(range(len(panel.ids)), key=lambda i: -level_of(panel)[i])
    return np.array(sorted(order[:max_series]), dtype=np.int64)


def run_backtest(panel: PowerPanel, hsteps: np.ndarray, models: list[str], *, backtest_days: float = 2.0,
                 origin_every_s: float = 3600.0, statsmodels_max_series: int = 12,
                 sarimax_max_series: int = 3, random_state: int = 0) -> Backtest:
    """Backtest `models` on the panel at horizons `hsteps` (grid steps)."""
    Y, ts, step_s = panel.values, panel.ts_ns, panel.step_s
    origins = plan_origins(Y.shape[1], hsteps, step_s, backtest_days, origin_every_s)
    train_end = int(origins[0])
    p = period_steps(step_s)
    train = Y[:, : train_end + 1]
    with np.errstate(invalid="ignore"), _quiet():
        scale = np.nanmean(train, axis=1)
        d = np.abs(train[:, p:] - train[:, :-p]) if train.shape[1] > p else np.full((Y.shape[0], 1), np.nan)
        mase_scale = np.nanmean(d, axis=1)
    scale = np.where(np.isfinite(scale), np.maximum(scale, 1.0), 1.0)
    psteps = path_steps(hsteps)
    last = ffill(Y)[:, origins]                                           # (n, O)
    level = level_of(panel)
    sm_rows = statsmodels_rows(panel, statsmodels_max_series)
    bt = Backtest(panel, hsteps, origins, train_end, {}, actual_targets(Y, origins, hsteps, step_s), scale,
                  mase_scale)
    long = np.nonzero(long_horizons(origins, hsteps))[0]
    if long.size:
        bt.proxy_origins, pres = proxy_residuals(Y, origins, hsteps[long], step_s, scale)
        bt.proxy = {int(k): pres[:, :, :, j] for j, k in enumerate(long)}
    for name in models:
        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
        rows = {"holt_winters": sm_rows, "sarimax": sm_rows[-sarimax_max_series:] if sarimax_max_series else
                sm_rows[:0]}.get(name, np.arange(Y.shape[0]))
        m = make_model(name, level[rows], random_state)
        try:
            m.fit(train[rows], ts[: train_end + 1], step_s)
        except (ModelFitError, ValueError, np.linalg.LinAlgError) as err:
            bt.failed[name] = str(err)
            log.info("backtest: %s not fitted: %s", name, err)
            continue
        path = np.full((Y.shape[0], origins.size, psteps.size), np.nan)
        if isinstance(m, GlobalGBM):
            path[rows] = m.predict_origins(Y[rows], ts, origins, psteps)
        else:
            for j, o in enumerate(origins):
                path[rows, j] = m.predict(Y[rows, : o + 1], ts[: o + 1], psteps)
        bt.preds[name] = targets_from_path(last, path, psteps, hsteps, step_s)
        bt.fitted[name] = m
    return bt


class _quiet:
    """Silence numpy's 'mean of empty slice' for all-NaN rows (they are handled as NaN)."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._w.__exit__(*exc)


# --- scores -----------------------------------------------------------------------------------------------


def residual_quantiles(res: np.ndarray, probs: np.ndarray | tuple[float, ...]) -> np.ndarray:
    """Quantiles of a residual pool at the plotting positions k/(n+1): linear between order statistics and
    beyond the ends (from the two outermost), so the interval between the α/2 and 1 − α/2 quantiles covers
    1 − α of a new exchangeable residual at any pool size (module docstring). NaN for an empty pool."""
    p = np.asarray(probs, dtype=np.float64)
    r = np.asarray(res, dtype=np.float64).ravel()
    r = r[np.isfinite(r)]
    n = r.size
    if n < 2:
        return np.full(p.shape, r[0] if n else math.nan)
    x = p * (n + 1) - 1.0                                       # 0-based fractional rank
    lo = np.clip(np.floor(x).astype(np.int64), 0, n - 2)
    part = np.partition(r, np.unique(np.concatenate([lo, lo + 1])))   # only the order statistics needed
    return part[lo] + (x - lo) * (part[lo + 1] - part[lo])


def conformal_bounds(res: np.ndarray, alpha: float) -> tuple[float, float]:
    """Lower and upper residual quantiles of a (1 − alpha) interval (`residual_quantiles`)."""
    lo, hi = residual_quantiles(res, (alpha / 2.0, 1.0 - alpha / 2.0))
    return float(lo), float(hi)


@dataclass(frozen=True, slots=True)
class Prior:
    """A long horizon's proxy pool: residuals / level (n, Op) from `origins` (a superset of the backtest's)."""

    res: np.ndarray
    origins: np.ndarray

    def at(self, origins: np.ndarray) -> np.ndarray:
        """The proxy's residuals at the backtest's origins (n, O)."""
        return self.res[:, np.searchsorted(self.origins, origins)]


def proxy_ratio(res: np.ndarray, proxy: np.ndarray, alpha: float) -> float:
    """How much wider or narrower than the proxy's a model's (1 − alpha) interval should be: the ratio of their
    (1 − alpha) quantiles of |residual| at the same series and origins (1 with too few pairs: fewer than
    MIN_CALIB, or fewer than MIN_TAIL beyond that quantile).

    Per interval level: the pairs come from the backtest's few horizon windows, and a model that cuts the
    typical error may still miss the same job starts and ends as the proxy, so the 95 % tails get their own
    ratio rather than the body's.
    """
    ok = np.isfinite(res) & np.isfinite(proxy)
    n = int(ok.sum())
    if n < MIN_CALIB or n * alpha < MIN_TAIL:
        return 1.0
    den = float(np.quantile(np.abs(proxy[ok]), 1.0 - alpha))
    return float(np.quantile(np.abs(res[ok]), 1.0 - alpha)) / den if den > 0 else 1.0


def prior_pool(prior: Prior, rows: np.ndarray, res: np.ndarray, bt_origins: np.ndarray, h: int,
               until: int | None = None, alpha: float = 0.2) -> np.ndarray:
    """The proxy pool of `rows` scaled for a (1 − alpha) interval, from residuals whose target time is at or
    before `until` (all: None).

    res (n, O): the model's residuals / level at the backtest origins, for the scaling.
    """
    m = prior.origins.size if until is None else int(np.searchsorted(prior.origins + h, until, side="right"))
    k = bt_origins.size if until is None else int(np.searchsorted(bt_origins + h, until, side="right"))
    pool = prior.res[rows, :m]
    pool = pool[np.isfinite(pool)]
    return pool * proxy_ratio(res[rows, :k], prior.at(bt_origins)[rows, :k], alpha)


def online_coverage(res_norm: np.ndarray, groups: list[np.ndarray], origins: np.ndarray, h: int,
                    alpha: float, min_calib: int = MIN_CALIB, prior: Prior | None = None) -> np.ndarray:
    """Per series: the share of origins whose residual fell inside the interval calibrated on earlier ones.

    res_norm (n, O): residuals divided by the series level; `groups` pool series (one hierarchy level each);
    at origin j only origins whose target time (origin + h) is at or before origins[j] count. With a
    `prior` (long horizons) the pool is the scaled proxy pool known at origins[j] instead.
    """
    n, o_count = res_norm.shape
    hits = np.zeros(n)
    tried = np.zeros(n)
    known = np.searchsorted(origins + h, origins, side="right")          # origins usable at each j
    for g in groups:
        sub = res_norm[g]
        for j in range(o_count):
            if prior is None:
                past = sub[:, : known[j]]
                past = past[np.isfinite(past)]
            else:
                past = prior_pool(prior, g, res_norm, origins, h, until=int(origins[j]), alpha=alpha)
            if past.size > MAX_POOL:                # an even thinning keeps the quantiles, not the cost
                past = past[:: past.size // MAX_POOL + 1]
            if past.size < min_calib:
                continue
            lo, hi = conformal_bounds(past, alpha)
            r = sub[:, j]
            ok = np.isfinite(r)
            tried[g[ok]] += 1
            hits[g[ok]] += (r[ok] >= lo) & (r[ok] <= hi)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tried > 0, hits / tried, np.nan)


def scope_groups(panel: PowerPanel) -> list[np.ndarray]:
    """Row indices per hierarchy level (the pools of residuals)."""
    return [np.array(panel.rows(s), dtype=np.int64) for s in ("gpu", "node", "fleet") if panel.rows(s)]


@dataclass(frozen=True, slots=True)
class Score:
    """One series × model × horizon of the accuracy table."""

    series: str
    model: str
    horizon_s: float
    mae: float
    mape: float
    smape: float
    mase: float
    coverage_80: float
    coverage_95: float
    n: int
    chosen: bool = False


def score(bt: Backtest, pred: np.ndarray, kind: int = 0) -> dict[str, np.ndarray]:
    """Error measures (n, K) of one model's targets (n, O, 3, K) against the actuals."""
    a = bt.actual[:, :, kind, :]
    f = pred[:, :, kind, :]
    e = a - f
    ok = np.isfinite(e)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet():
        mae = np.nanmean(np.abs(e), axis=1)
        big = ok & (np.abs(a) > 1.0)
        mape = np.nansum(np.where(big, np.abs(e) / np.abs(np.where(big, a, 1.0)), 0.0), axis=1) / big.sum(axis=1)
        den = np.abs(a) + np.abs(f)
        sm = np.where(ok & (den > 0), 2 * np.abs(e) / np.where(den > 0, den, 1.0), np.where(ok, 0.0, np.nan))
        smape = np.nanmean(sm, axis=1)
        unit = bt.mase_scale if kind == 0 else bt.mase_scale * bt.hsteps.max() * bt.panel.step_s
        mase = mae / np.where(unit > 0, unit, np.nan)[:, None]
    return {"mae": mae, "mape": mape, "smape": smape, "mase": mase, "n": ok.sum(axis=1),
            "res": e / bt.scale[:, None, None]}


def coverage(bt: Backtest, res_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Online coverage (n, K) at 80 % and 95 % for normalised residuals (n, O, K)."""
    groups = scope_groups(bt.panel)
    c80 = np.full((res_norm.shape[0], bt.hsteps.size), np.nan)
    c95 = c80.copy()
    for k, h in enumerate(bt.hsteps):
        prior = bt_prior(bt, 0, k)
        c80[:, k] = online_coverage(res_norm[:, :, k], groups, bt.origins, int(h), 0.2, prior=prior)
        c95[:, k] = online_coverage(res_norm[:, :, k], groups, bt.origins, int(h), 0.05, prior=prior)
    return c80, c95


def bt_prior(bt: Backtest, kind: int, k: int) -> Prior | None:
    """The proxy pool of target `kind` at horizon k, when that horizon is a long one."""
    return Prior(bt.proxy[k][:, :, kind], bt.proxy_origins) if k in bt.proxy else None


__all__ = ["BASELINES", "KINDS", "MIN_WINDOWS", "Backtest", "BacktestUnavailable", "Prior", "Score", "bt_prior",
           "coverage", "prior_pool", "residual_quantiles", "run_backtest", "score", "windows"]
