"""The forecasting pipeline: backtest → choose per series → refit on all history → reconciled forecasts with
calibrated quantiles.

Intervals are empirical: for each hierarchy level, target and horizon, the residuals of the published
(chosen, reconciled) forecasts over the backtest origins, divided by each series' level, are pooled; a
series' quantile q is its point forecast plus its level times the q-quantile of that pool at the plotting
position q·(n+1) (backtest.residual_quantiles; split-conformal style, so parametric models' own, usually too
narrow, intervals are never used). The same rule builds the intervals whose online coverage the backtest
reports. The median published is
the reconciled point forecast itself, so medians add up GPU → node → fleet; the other quantiles do not
(quantiles of sums are not sums of quantiles). At long horizons, where the backtest's origins span fewer than
MIN_WINDOWS horizon windows, the pool is the seasonal-naive proxy's residuals over all the history, scaled
per interval (80 %, 95 %) to the published forecast's residuals (backtest.proxy_ratio); `Plan.calibration` says which
pool, how many residuals and how many windows calibrate each level, target and horizon. Without a backtest
(short history) the intervals are those of a random walk with the series' step-to-step spread, at least
SHORT_HISTORY_SPREAD of the series' level per step (a few idle readings measure no spread at all, and a band of
zero width would claim certainty nobody has), not capped by the short history's highest reading, and the
series is flagged `short_history`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from predictor.energy.backtest import (
    Backtest,
    BacktestUnavailable,
    Score,
    bt_prior,
    conformal_bounds,
    level_of,
    make_model,
    online_coverage,
    path_steps,
    prior_pool,
    residual_quantiles,
    run_backtest,
    scope_groups,
    statsmodels_rows,
    targets_from_path,
    windows,
)
from predictor.energy.models import BASELINES, MODELS, Forecaster, ModelFitError, ffill, period_steps
from predictor.energy.reconcile import projection, reconcile
from predictor.energy.select import choose, records, series_status, short_history_model
from predictor.energy.series import PowerPanel, SeriesId

log = logging.getLogger(__name__)

QUANTILES = (0.025, 0.1, 0.5, 0.9, 0.975)
DEFAULT_MODELS = ("last_value", "seasonal_naive", "holt_winters", "gbm")
MIN_POOL = 20
# Standard-normal quantiles standing in for residuals where there is no backtest (random-walk intervals).
_Z = norm.ppf((np.arange(1, 400) - 0.5) / 399)


@dataclass(frozen=True, slots=True)
class Settings:
    """What to forecast and how hard to try."""

    horizons_s: tuple[float, ...] = (900.0, 3600.0, 86400.0)
    step_s: float = 300.0
    models: tuple[str, ...] = DEFAULT_MODELS
    backtest_days: float = 2.0
    origin_every_s: float = 3600.0
    statsmodels_max_series: int = 12
    sarimax_max_series: int = 1
    random_state: int = 0

    def hsteps(self) -> np.ndarray:
        """Horizons in grid steps (at least one)."""
        bad = [h for h in self.horizons_s if not h > 0]
        if bad or not self.horizons_s:
            raise ValueError(f"horizons must be positive durations, got {list(self.horizons_s)}")
        unknown = [m for m in self.models if m not in MODELS]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
        return np.array([max(1, round(h / self.step_s)) for h in self.horizons_s], dtype=np.int64)


def horizon_label(seconds: float) -> str:
    """900 → '15m', 3600 → '1h', 86400 → '24h' (hours up to days: the dashboards query horizon="24h")."""
    s = round(seconds)
    if s % 3600 == 0:
        return f"{s // 3600}h"
    if s % 60 == 0:
        return f"{s // 60}m"
    return f"{s}s"


@dataclass(slots=True)
class Plan:
    """A fitted forecaster for one panel's series: choices, refitted models, reconciliation, calibration."""

    settings: Settings
    ids: list[SeriesId]
    hsteps: np.ndarray
    chosen: np.ndarray                       # (n, 3, K) model names
    fallback: list[str]                      # per series
    fitted: dict[str, Forecaster]
    rows: dict[str, np.ndarray]              # series each fitted model covers
    proj: dict[tuple[int, int], np.ndarray]  # (kind, k) → projection matrix
    residuals: dict[tuple[str, int, int], np.ndarray]   # (scope, kind, k) → residuals / level
    scale: np.ndarray
    spread: np.ndarray                       # per series: std of step-to-step changes (random-walk intervals)
    scores: list[Score] = field(default_factory=list)
    coverage: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # (scope, kind, k) → (pool: "backtest" or "seasonal_naive_proxy", residuals, origins, horizon windows)
    calibration: dict[tuple[str, int, int], tuple[str, int, int, int]] = field(default_factory=dict)
    # (scope, kind, k) → the pool's quantile offsets at QUANTILES (residual / level; 0 at the median)
    offsets: dict[tuple[str, int, int], np.ndarray] = field(default_factory=dict)
    fitted_at_ns: int = 0
    backtested: bool = False


# Least random-walk spread per step, as a share of the series' level, for intervals without a backtest.
SHORT_HISTORY_SPREAD = 0.1


def fit_plan(panel: PowerPanel, settings: Settings = Settings()) -> Plan:
    """Backtest, choose, calibrate and refit on the whole panel."""
    hsteps = settings.hsteps()
    n = len(panel.ids)
    period = period_steps(panel.step_s)
    notes = list(panel.notes)
    with np.errstate(invalid="ignore"):
        diffs = np.diff(panel.values, axis=1)[:, -2 * period:]
        spread = np.array([np.nanstd(d) if np.isfinite(d).sum() > 1 else math.nan for d in diffs])
    spread = np.where(np.isfinite(spread), spread, 0.0)
    try:
        bt = run_backtest(panel, hsteps, list(settings.models), backtest_days=settings.backtest_days,
                          origin_every_s=settings.origin_every_s,
                          statsmodels_max_series=settings.statsmodels_max_series,
                          sarimax_max_series=settings.sarimax_max_series, random_state=settings.random_state)
    except BacktestUnavailable as err:
        notes.append(f"no backtest: {err}; baseline forecasts with random-walk intervals")
        chosen = np.empty((n, 3, hsteps.size), dtype=object)
        fallback = []
        for i in range(n):
            status = series_status(panel.values[i], period)
            chosen[i] = "last_value" if status in ("constant", "no_data") else short_history_model(
                panel.values[i], period)
            fallback.append(status if status in ("constant", "no_data") else "short_history")
        scale = np.maximum(np.nan_to_num(np.nanmax(np.abs(np.nan_to_num(panel.values)), axis=1)), 1.0)
        plan = Plan(settings, list(panel.ids), hsteps, chosen, fallback, {}, {}, {}, {}, scale, spread, notes=notes)
        _refit(plan, panel)
        mse = (spread ** 2)[:, None] * hsteps[None, :].astype(float)
        for kind in range(3):
            for k in range(hsteps.size):
                # Bottom-up: the levels above the GPUs get no weight of their own.
                w = np.where([s.scope == "gpu" for s in panel.ids], mse[:, k] + 1e-9, np.inf)
                plan.proj[(kind, k)] = projection(panel.structure(), w)
        return plan
    for name, why in bt.failed.items():
        notes.append(f"model {name} not used: {why}")
    chosen, fallback, scores = choose(bt)
    plan = Plan(settings, list(panel.ids), hsteps, chosen, fallback, {}, {}, {}, {}, bt.scale, spread,
                scores=records(bt, chosen, scores), notes=notes, backtested=True)
    _calibrate(plan, bt)
    _refit(plan, panel)
    return plan


def _combined(bt: Backtest, chosen: np.ndarray) -> np.ndarray:
    """The chosen model's backtest targets per series, target and horizon: (n, O, 3, K)."""
    out = np.full(bt.actual.shape, np.nan)
    for m, pred in bt.preds.items():
        sel = (chosen == m)[:, None, :, :]
        out = np.where(sel, pred, out)
    for m in BASELINES:          # a model chosen by fallback but not backtested (list without baselines)
        if m not in bt.preds and (chosen == m).any():
            log.debug("baseline %s chosen without backtest", m)
    return out


def _calibrate(plan: Plan, bt: Backtest) -> None:
    """Reconciliation weights and residual pools from the chosen forecasts over the backtest."""
    comb = _combined(bt, plan.chosen)
    S = bt.panel.structure()
    scopes = [s.scope for s in bt.panel.ids]
    for kind in range(3):
        for k in range(bt.hsteps.size):
            e = bt.actual[:, :, kind, k] - comb[:, :, kind, k]
            with np.errstate(invalid="ignore"):
                mse = np.array([np.nanmean(r * r) if np.isfinite(r).any() else np.nan for r in e])
            P = projection(S, mse)
            plan.proj[(kind, k)] = P
            rec = reconcile(P, comb[:, :, kind, k])
            res = (bt.actual[:, :, kind, k] - rec) / bt.scale[:, None]
            h = int(bt.hsteps[k])
            prior = bt_prior(bt, kind, k)
            for scope in ("gpu", "node", "fleet"):
                rows = np.array([i for i, s in enumerate(scopes) if s == scope and plan.fallback[i] != "no_data"],
                                dtype=np.int64)
                if not rows.size:
                    continue
                if prior is None:
                    pool = res[rows].ravel()
                    pool = pool[np.isfinite(pool)]
                    plan.calibration[(scope, kind, k)] = ("backtest", pool.size, bt.origins.size,
                                                          windows(bt.origins, h))
                    offsets = residual_quantiles(pool, QUANTILES)
                else:
                    pool = prior_pool(prior, rows, res, bt.origins, h)
                    plan.calibration[(scope, kind, k)] = ("seasonal_naive_proxy", pool.size, prior.origins.size,
                                                          windows(prior.origins, h))
                    # Each interval's quantiles from the proxy pool scaled for that interval's level.
                    offsets = np.array([residual_quantiles(prior_pool(prior, rows, res, bt.origins, h,
                                                                      alpha=2 * min(q, 1 - q)), (q,))[0]
                                        if q != 0.5 else 0.0 for q in QUANTILES])
                plan.residuals[(scope, kind, k)] = pool
                plan.offsets[(scope, kind, k)] = offsets
            if kind == 0:
                for g in scope_groups(bt.panel):
                    scope = bt.panel.ids[int(g[0])].scope
                    c80 = online_coverage(res, [g], bt.origins, h, 0.2, prior=prior)[g]
                    c95 = online_coverage(res, [g], bt.origins, h, 0.05, prior=prior)[g]
                    with np.errstate(invalid="ignore"):
                        plan.coverage[(scope, k)] = (float(np.nanmean(c80)) if np.isfinite(c80).any() else math.nan,
                                                     float(np.nanmean(c95)) if np.isfinite(c95).any() else math.nan)


def _refit(plan: Plan, panel: PowerPanel) -> None:
    """Fit every chosen model on all history; series whose model fails fall back to a baseline."""
    needed = sorted({str(m) for m in plan.chosen.ravel()})
    level = level_of(panel)
    sm = statsmodels_rows(panel, plan.settings.statsmodels_max_series)
    for name in needed:
        if name in BASELINES:
            plan.fitted[name] = MODELS[name]().fit(panel.values, panel.ts_ns, panel.step_s)
            plan.rows[name] = np.arange(len(panel.ids))
            continue
        rows = np.array(sorted({i for i in range(len(panel.ids)) if (plan.chosen[i] == name).any()}), dtype=np.int64)
        if name in ("holt_winters", "sarimax"):
            rows = np.intersect1d(rows, sm)
        m = make_model(name, level[rows], plan.settings.random_state)
        try:
            if name == "gbm":                 # the global model learns from every series, not just its own
                m = make_model(name, level, plan.settings.random_state)
                rows = np.arange(len(panel.ids))
            m.fit(panel.values[rows], panel.ts_ns, panel.step_s)
        except (ModelFitError, ValueError, np.linalg.LinAlgError) as err:
            plan.notes.append(f"refit of {name} failed ({err}): its series fall back to seasonal naive")
            for i in range(len(panel.ids)):
                if (plan.chosen[i] == name).any():
                    plan.chosen[i][plan.chosen[i] == name] = "seasonal_naive"
                    plan.fallback[i] = "fit_failed"
            if "seasonal_naive" not in plan.fitted:
                plan.fitted["seasonal_naive"] = MODELS["seasonal_naive"]().fit(panel.values, panel.ts_ns,
                                                                               panel.step_s)
                plan.rows["seasonal_naive"] = np.arange(len(panel.ids))
            continue
        plan.fitted[name] = m
        plan.rows[name] = rows


@dataclass(slots=True)
class Forecast:
    """Forecasts from one origin: power (W) at and energy (J) over each horizon, as quantiles."""

    ids: list[SeriesId]
    origin_ns: int
    horizons_s: tuple[float, ...]
    quantiles: tuple[float, ...]
    power: np.ndarray                 # (n, K, Q)
    energy: np.ndarray                # (n, K, Q)
    peak: np.ndarray                  # (n, K) point forecast of the highest power within each horizon
    plan: Plan                        # for the peak's residuals (budget probabilities)
    model: np.ndarray                 # (n, K) model of the power forecast
    fallback: list[str]
    path_ts_ns: np.ndarray            # fleet path (for cost weighting and plots)
    path: np.ndarray                  # (n, P) point paths of the chosen model at the longest horizon
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """Horizon labels ('15m', '1h', '24h')."""
        return [horizon_label(h) for h in self.horizons_s]


def _pooled(plan: Plan, i: int, kind: int, k: int) -> bool:
    """Whether series i's intervals come from its level's pool of backtest residuals."""
    pool = plan.residuals.get((plan.ids[i].scope, kind, k))
    return (pool is not None and pool.size >= MIN_POOL
            and plan.fallback[i] not in ("short_history", "gaps", "constant"))


def _samples(plan: Plan, i: int, kind: int, k: int, step_s: float) -> np.ndarray:
    """Residual samples (W or J) for series i: the pooled, scaled backtest residuals, else a random walk."""
    if plan.fallback[i] == "constant":
        return np.zeros(1)
    if _pooled(plan, i, kind, k):
        return plan.residuals[(plan.ids[i].scope, kind, k)] * plan.scale[i]
    h = float(plan.hsteps[k])
    spread = plan.spread[i]
    if plan.fallback[i] == "short_history":
        spread = max(spread, SHORT_HISTORY_SPREAD * float(plan.scale[i]))
    sigma = spread * (math.sqrt(h) if kind != 1 else step_s * math.sqrt(h ** 3 / 3.0))
    return sigma * _Z


def make_forecast(plan: Plan, panel: PowerPanel) -> Forecast:
    """Forecasts from the end of `panel` (which must hold the plan's series) with the plan's models."""
    if list(panel.ids) != plan.ids:
        raise ValueError("the series changed since the plan was fitted: refit")
    n, K = len(plan.ids), plan.hsteps.size
    psteps = path_steps(plan.hsteps)
    last = ffill(panel.values)[:, -1]
    paths: dict[str, np.ndarray] = {}
    targets: dict[str, np.ndarray] = {}
    for name, m in plan.fitted.items():
        rows = plan.rows[name]
        p = np.full((n, psteps.size), np.nan)
        p[rows] = m.predict(panel.values[rows], panel.ts_ns, psteps)
        paths[name] = p
        targets[name] = targets_from_path(last, p, psteps, plan.hsteps, panel.step_s)      # (n, 3, K)
    base = np.full((n, 3, K), np.nan)
    path = np.full((n, psteps.size), np.nan)
    for i in range(n):
        for kind in range(3):
            for k in range(K):
                name = str(plan.chosen[i, kind, k])
                t = targets.get(name)
                v = t[i, kind, k] if t is not None else np.nan
                if not np.isfinite(v) and name not in BASELINES:          # model had nothing for it
                    v = targets["seasonal_naive"][i, kind, k] if "seasonal_naive" in targets else np.nan
                base[i, kind, k] = v
        name = str(plan.chosen[i, 0, K - 1])
        if name in paths:
            path[i] = paths[name][i]
    point = np.empty_like(base)
    for kind in range(3):
        for k in range(K):
            point[:, kind, k] = reconcile(plan.proj[(kind, k)], base[:, kind, k])
    dead = np.array([f == "no_data" for f in plan.fallback])
    point[dead] = np.nan
    point = np.maximum(point, 0.0)
    qs = np.array(QUANTILES)
    power = np.full((n, K, qs.size), np.nan)
    energy = power.copy()
    pooled: dict[tuple[str, int, int], np.ndarray] = {}         # quantiles of each normalised pool, once
    # Pooled residuals scaled by level can reach past what a series ever drew (its power limits); the
    # bands stop at 5 % above the highest reading in the history.
    with np.errstate(invalid="ignore"):
        cap = np.array([np.nanmax(v) * 1.05 if np.isfinite(v).any() else np.inf for v in panel.values])
    hor_s = plan.hsteps.astype(np.float64) * panel.step_s
    for i in range(n):
        for k in range(K):
            for kind, out in ((0, power), (1, energy)):
                key = (plan.ids[i].scope, kind, k)
                if _pooled(plan, i, kind, k):
                    if key not in pooled:
                        pooled[key] = plan.offsets[key] if key in plan.offsets else residual_quantiles(
                            plan.residuals[key], qs)
                    off = pooled[key] * plan.scale[i]
                else:
                    r = _samples(plan, i, kind, k, panel.step_s)
                    off = np.quantile(r, qs) if r.size else np.zeros(qs.size)
                off[qs < 0.5] = np.minimum(off[qs < 0.5], 0.0)        # keep the quantiles ordered around the
                off[qs > 0.5] = np.maximum(off[qs > 0.5], 0.0)        # (additive) point forecast
                off[qs == 0.5] = 0.0
                top = cap[i] if kind == 0 else cap[i] * hor_s[k]
                if plan.fallback[i] == "short_history":
                    top = np.inf            # a few readings say nothing about the series' range
                band = np.clip(point[i, kind, k] + off, 0.0, max(top, point[i, kind, k]))
                band[qs == 0.5] = point[i, kind, k]
                out[i, k] = band
    step_ns = round(panel.step_s * 1e9)
    model = np.array([[str(plan.chosen[i, 0, k]) for k in range(K)] for i in range(n)], dtype=object)
    return Forecast(plan.ids, int(panel.ts_ns[-1]), plan.settings.horizons_s, QUANTILES, power, energy,
                    point[:, 2, :], plan, model, list(plan.fallback),
                    int(panel.ts_ns[-1]) + psteps * step_ns, path, list(plan.notes))


def exceed_probability(fc: Forecast, i: int, k: int, budget_w: float) -> float:
    """P(the highest power within horizon k exceeds budget_w) for series i, from the peak residuals."""
    pk = fc.peak[i, k]
    if not np.isfinite(pk):
        return math.nan
    r = _samples(fc.plan, i, 2, k, fc.plan.settings.step_s)
    if r.size == 0 or not np.any(r):
        return float(pk > budget_w)
    return float(np.mean(pk + r > budget_w))


__all__ = ["DEFAULT_MODELS", "QUANTILES", "Forecast", "Plan", "Settings", "conformal_bounds", "exceed_probability",
           "fit_plan", "horizon_label", "make_forecast"]
