"""The forecaster inside `fleetwatch run`: keeps a power history, refits on a schedule, publishes every
evaluation.

From the first evaluation it publishes (a baseline flagged `short_history` until there is enough history
for a backtest); every `refit_interval` of data time it backtests, chooses and refits in a worker thread.
History comes from the service's recorded traces at start (when recording) and then from the live window;
it is kept on the forecast grid for `history`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from collector.batch import Batch, Entity
from collector.series_view import NS, PrometheusView, SeriesFrame, SeriesKey, view_entities
from collector.trace_io import TraceError
from predictor.energy.costs import Tariff, price, pue_now
from predictor.energy.facility import (
    FacilityMeter,
    FacilityNow,
    FacilityQueryError,
    energy_pue,
    pue_forecast,
    pue_model,
)
from predictor.energy.forecast import (
    Forecast,
    Plan,
    Settings,
    exceed_probability,
    fit_plan,
    horizon_label,
    make_forecast,
)
from predictor.energy.series import POWER_METRIC, PowerPanel, SeriesId, SeriesInputError, align_grid, load_power

log = logging.getLogger(__name__)
NAME = "energy"


class GridBuffer:
    """GPU power on the forecast grid, appended from a live view; a series view over itself."""

    def __init__(self, step_s: float, keep_s: float) -> None:
        self.step_s = step_s
        self.keep = max(2, int(keep_s / step_s))
        self.ts = np.zeros(0, dtype=np.int64)
        self.vals: dict[SeriesKey, np.ndarray] = {}
        self.ents: dict[SeriesKey, Entity] = {}

    def merge(self, frame: SeriesFrame, entities: dict[SeriesKey, Entity]) -> None:
        """Take in a frame: its grid points replace any held from its first point on (the newest point is
        provisional until its step has passed), earlier ones are kept."""
        if not frame.ts_ns.size:
            return
        cut = int(np.searchsorted(self.ts, frame.ts_ns[0]))
        overlap = self.ts.size - cut          # held points the frame covers again (the frame's grid matches)
        self.ts = np.concatenate([self.ts[:cut], frame.ts_ns])
        vals = {k: np.concatenate([v, np.full(frame.ts_ns.size - overlap, np.nan)]) for k, v in self.vals.items()}
        for i, k in enumerate(frame.keys):
            if k not in vals:
                vals[k] = np.full(self.ts.size, np.nan)
            new = frame.values[i]
            # A reading the live window no longer holds (older than its span) is kept from before.
            vals[k][cut:] = np.where(np.isfinite(new), new, vals[k][cut:])
            if k in entities:
                self.ents[k] = entities[k]
        if self.ts.size > self.keep:
            drop = self.ts.size - self.keep
            self.ts = self.ts[drop:]
            vals = {k: v[drop:] for k, v in vals.items()}
        self.vals = {k: v for k, v in vals.items() if np.isfinite(v).any()}

    def range(self, metric: str, start_ns: int, end_ns: int, step_s: float, *,
              nodes: Sequence[str] | None = None, stale_s: float = 0.0) -> SeriesFrame:
        """The held grid points in [start, end] (the buffer's own grid; step and staleness were applied)."""
        sel = (self.ts >= start_ns) & (self.ts <= end_ns)
        keys = sorted(k for k in self.vals if nodes is None or k.node in nodes)
        values = np.array([self.vals[k][sel] for k in keys]).reshape(len(keys), int(sel.sum()))
        return SeriesFrame(metric, keys, self.ts[sel], values)

    def entities(self) -> dict[SeriesKey, Entity]:
        """Identities seen."""
        return dict(self.ents)


def _entity(sid: SeriesId) -> Entity:
    return Entity(kind="scope", node=sid.node, id=f"forecast:{sid.name}", labels=(sid.scope, sid.node, sid.gpu))


_PROCESS = Entity(kind="process", node="", id=NAME, labels=())
# The facility query's failures count in the collectors' error metric, as a source of its own.
_FACILITY_SOURCE = Entity(kind="source", node="", id=NAME, labels=(NAME,))


def settings_from(cfg: Any) -> Settings:
    """Forecast settings from the `energy:` config section."""
    return Settings(horizons_s=tuple(float(h) for h in cfg.horizons), step_s=float(cfg.step),
                    models=tuple(cfg.models), backtest_days=float(cfg.backtest_days),
                    statsmodels_max_series=int(cfg.statsmodels_max_series))


def _pues(fc: Forecast, fleet_i: int | None, cfg: Any,
          facility: FacilityNow | None) -> tuple[float, list[float], list[float], str]:
    """PUE now, at each horizon (at the median IT forecast), to price each horizon's energy, and the method.

    Measured facility power follows predictor/energy/facility.py; a constant PUE stays constant; a constant
    facility power is divided by the IT power at each point.
    """
    K = len(fc.horizons_s)
    nan = [math.nan] * K
    if fleet_i is None or fc.fallback[fleet_i] == "no_data":
        return math.nan, nan, nan, ""
    median = [float(fc.power[fleet_i, k, fc.quantiles.index(0.5)]) for k in range(K)]
    until = [fc.origin_ns + round(h * NS) for h in fc.horizons_s]
    if facility is not None:
        args = (facility.model, facility.facility_w, facility.it_w)
        return (facility.pue, [pue_forecast(*args, it) for it in median],
                [energy_pue(*args, fc.path_ts_ns, fc.path[fleet_i], u) for u in until], facility.model.method)
    if cfg.pue is not None:
        return float(cfg.pue), [float(cfg.pue)] * K, [float(cfg.pue)] * K, "configured_pue"
    if cfg.facility_power_watts is not None:
        it_now = float(fc.path[fleet_i, 0]) if fc.path.size else math.nan
        fw = float(cfg.facility_power_watts)
        ahead = [pue_now(it, fw, None) for it in median]
        return pue_now(it_now, fw, None), ahead, ahead, "configured_facility"
    return math.nan, nan, nan, ""


def forecast_batch(fc: Forecast, plan: Plan, cfg: Any, ts_ns: int, source: str = NAME,
                   facility: FacilityNow | None = None) -> Batch:
    """Every forecast metric of one evaluation as a batch (facility: the measured facility power, if any)."""
    b = Batch(source, ts_ns)
    labels = fc.labels
    qs = [f"{q:g}" for q in fc.quantiles]
    tariff = Tariff(cfg.price_per_kwh, cfg.carbon_g_per_kwh)
    fleet_i = next((i for i, s in enumerate(fc.ids) if s.scope == "fleet"), None)
    pue, pue_ahead, pue_energy, method = _pues(fc, fleet_i, cfg, facility)
    for i, sid in enumerate(fc.ids):
        e = _entity(sid)
        for k, h in enumerate(labels):
            b.add("fleetwatch_forecast_model_info", e, 1.0, (h, str(fc.model[i, k]), fc.fallback[i]))
            if fc.fallback[i] == "no_data":
                continue
            for j, q in enumerate(qs):
                b.add("fleetwatch_power_forecast_watts", e, float(fc.power[i, k, j]), (h, q))
                b.add("fleetwatch_energy_forecast_joules", e, float(fc.energy[i, k, j]), (h, q))
            if sid.scope != "gpu":
                until = fc.origin_ns + round(fc.horizons_s[k] * NS)
                money = price(fc.energy[i, k], tariff, fc.path_ts_ns, fc.path[i], until,
                              pue_energy[k] if sid.scope == "fleet" else math.nan)
                for j, q in enumerate(qs):
                    b.add("fleetwatch_energy_forecast_cost", e, float(money.cost[j]), (h, q))
                    b.add("fleetwatch_energy_forecast_carbon_grams", e, float(money.carbon_g[j]), (h, q))
        budget = cfg.budget_watts if sid.scope == "fleet" else cfg.node_budget_watts if sid.scope == "node" else None
        if budget is not None and fc.fallback[i] != "no_data":
            b.add("fleetwatch_power_budget_watts", e, float(budget))
            for k, h in enumerate(labels):
                b.add("fleetwatch_power_budget_exceed_probability_ratio", e, exceed_probability(fc, i, k, budget), (h,))
        if sid.scope == "fleet" and facility is not None:
            b.add("fleetwatch_facility_power_watts", e, facility.facility_w)
        if sid.scope == "fleet" and math.isfinite(pue):
            b.add("fleetwatch_pue_ratio", e, pue)
            for k, h in enumerate(labels):
                if math.isfinite(pue_ahead[k]):
                    b.add("fleetwatch_pue_forecast_ratio", e, pue_ahead[k], (h, method))
    _score_metrics(b, plan, labels)
    b.add("fleetwatch_forecast_origin_timestamp_seconds", _PROCESS, fc.origin_ns / NS)
    return b


def _score_metrics(b: Batch, plan: Plan, labels: list[str]) -> None:
    """Backtest MASE (chosen model for GPUs, every model for nodes and the fleet) and coverage per level."""
    ents = {sid.name: (sid, _entity(sid)) for sid in plan.ids}
    for s in plan.scores:
        sid, e = ents[s.series]
        if (sid.scope == "gpu" and not s.chosen) or not math.isfinite(s.mase):
            continue
        k = int(np.argmin([abs(h - s.horizon_s) for h in plan.settings.horizons_s]))
        b.add("fleetwatch_forecast_backtest_mase", e, s.mase, (labels[k], s.model))
    for (scope, k), (c80, c95) in plan.coverage.items():
        e = Entity(kind="scope", node="", id=f"forecast-level:{scope}", labels=(scope, "", ""))
        for name, c in (("80", c80), ("95", c95)):
            if math.isfinite(c):
                b.add("fleetwatch_forecast_backtest_coverage_ratio", e, c, (labels[k], name))


class EnergyForecaster:
    """The `energy` component of the service."""

    name = NAME

    def __init__(self, cfg: Any, svc: Any) -> None:
        self.cfg = cfg
        self.svc = svc
        self.settings = settings_from(cfg)
        self.buffer = GridBuffer(self.settings.step_s, float(cfg.history))
        self.plan: Plan | None = None
        self.plan_ids: list[SeriesId] = []
        self.fitted_at_ns = 0
        self.fit_duration_s = math.nan
        self.seeded = False
        self.last_error = ""
        self.published = False
        self._prometheus: PrometheusView | None = None
        url = cfg.facility_url() if getattr(cfg, "facility_power_query", None) else None
        self.facility = None if url is None else FacilityMeter(url, cfg.facility_power_query, self.settings.step_s,
                                                               float(cfg.history))
        self.facility_errors = {"facility_query": 0, "facility_no_data": 0}
        self.facility_failing = ""

    def notes(self) -> list[str]:
        """Where to look."""
        hz = ", ".join(horizon_label(h) for h in self.settings.horizons_s)
        source = getattr(self.cfg, "source", "local")
        where = "" if source in ("", "local") else f" from {source}"
        notes = [f"energy forecasts ({hz}){where} on /metrics as fleetwatch_power_forecast_watts, refit every "
                 f"{self.cfg.refit_interval / 3600:g} h of data"]
        if self.facility is not None:
            notes.append(f"facility power from {self.facility.query} at {self.facility.view.url}: "
                         "fleetwatch_facility_power_watts, fleetwatch_pue_ratio")
        return notes

    def _view(self) -> Any:
        """Where readings come from: the live window, or a Prometheus API for a fleet (energy.source)."""
        source = getattr(self.cfg, "source", "local")
        if source in ("", "local"):
            return self.svc.window
        if self._prometheus is None:
            self._prometheus = PrometheusView(source)
        return self._prometheus

    def _seed(self, now_ns: int) -> None:
        """Fill the buffer from recorded traces (or Prometheus), so a restart does not start from nothing."""
        self.seeded = True
        local = getattr(self.cfg, "source", "local") in ("", "local")
        hist = (self.svc.history() if hasattr(self.svc, "history") else None) if local else self._view()
        if hist is None:
            return
        start, end = align_grid(now_ns - int(self.cfg.history * NS), now_ns, self.settings.step_s)
        try:
            frame = hist.range(POWER_METRIC, start, end, self.settings.step_s, stale_s=2.5 * self.settings.step_s)
        except (TraceError, OSError, ValueError) as err:
            log.info("energy: no recorded history to start from: %s", err)
            return
        self.buffer.merge(frame, view_entities(hist))

    def step(self, now_ns: int) -> Batch | None:
        """One evaluation: take in new readings, refit when due, forecast; the batch to publish (or None)."""
        step_s = self.settings.step_s
        if not self.seeded:
            self._seed(now_ns)
        window = self._view()
        # From the newest held point (provisional) to the grid point after now, which holds the latest reading.
        start = int(self.buffer.ts[-1]) if self.buffer.ts.size else now_ns - int(3600 * NS)
        start, end = align_grid(start, now_ns, step_s)
        frame = window.range(POWER_METRIC, start, end + round(step_s * NS), step_s, stale_s=2.5 * step_s)
        self.buffer.merge(frame, view_entities(window))
        if not self.buffer.ts.size or not self.buffer.vals:
            return None
        try:
            panel = load_power(self.buffer, int(self.buffer.ts[0]), int(self.buffer.ts[-1]) + 1, step_s)
        except SeriesInputError as err:
            self.last_error = str(err)
            return None
        due = now_ns - self.fitted_at_ns >= int(self.cfg.refit_interval * NS)
        # Until a backtest is possible the plan is a baseline: cheap, so it follows the growing history.
        due = due or (self.plan is not None and not self.plan.backtested)
        if self.plan is None or panel.ids != self.plan_ids or due:
            self._refit(panel, now_ns)
        assert self.plan is not None
        fc = make_forecast(self.plan, panel)
        b = forecast_batch(fc, self.plan, self.cfg, now_ns, facility=self._facility(now_ns, panel))
        if self.facility is not None:
            for reason, n in self.facility_errors.items():
                b.add("fleetwatch_source_errors_total", _FACILITY_SOURCE, float(n), (reason,))
        b.add("fleetwatch_forecast_last_fit_timestamp_seconds", _PROCESS, self.fitted_at_ns / NS)
        b.add("fleetwatch_forecast_fit_duration_seconds", _PROCESS, self.fit_duration_s)
        return b

    def _facility(self, now_ns: int, panel: PowerPanel) -> FacilityNow | None:
        """Read facility power up to now; its reading, the IT power beside it and the PUE model, or None while
        the query fails or gives nothing recent (IT forecasts go on; the failure is logged once and counted)."""
        if self.facility is None:
            return None
        fleet = panel.rows("fleet")
        if not fleet:
            return None
        step_ns = round(self.settings.step_s * NS)
        it = panel.values[fleet[0]]
        try:
            self.facility.read(int(panel.ts_ns[0]), int(panel.ts_ns[-1]))
            ok = np.isfinite(it)
            it_ts = int(panel.ts_ns[ok][-1]) if ok.any() else 0
            facility_w = self.facility.latest(it_ts, round(2.5 * step_ns))
            if not math.isfinite(facility_w) or not ok.any():
                raise FacilityQueryError(f"facility power query {self.facility.query!r} has no reading within "
                                         f"{2.5 * self.settings.step_s:g} s of the newest IT power", "facility_no_data")
        except Exception as err:  # the meter is optional: nothing wrong with it may cost the IT forecasts
            reason = err.reason if isinstance(err, FacilityQueryError) else "facility_query"
            self.facility_errors[reason] += 1
            if not self.facility_failing:
                log.warning("energy: %s; facility power and PUE are left out until it works", err,
                            exc_info=not isinstance(err, FacilityQueryError))
            self.facility_failing = str(err)
            return None
        if self.facility_failing:
            log.info("energy: facility power query works again")
        self.facility_failing = ""
        it_w = float(it[np.isfinite(it)][-1])
        model = pue_model(self.facility.on(panel.ts_ns), it, facility_w, it_w)
        return FacilityNow(facility_w, it_w, model)

    def _refit(self, panel: PowerPanel, now_ns: int) -> None:
        t0 = time.perf_counter()
        self.plan = fit_plan(panel, self.settings)
        self.plan_ids = list(panel.ids)
        self.fitted_at_ns = now_ns
        self.fit_duration_s = time.perf_counter() - t0
        log.log(logging.INFO if self.plan.backtested else logging.DEBUG,
                "energy: refit on %d series × %d points in %.1f s (%s)", len(panel.ids), panel.ts_ns.size,
                self.fit_duration_s, "backtested" if self.plan.backtested else "baseline, short history")

    async def run(self, stop: asyncio.Event) -> None:
        """Evaluate every evaluate_interval of data time until stop."""
        failing = False
        # The first forecast waits for every source's first reading: a fleet sum over half the GPUs would be
        # a confident wrong number. (A source that never answers delays it by the timeout only.)
        with contextlib.suppress(TimeoutError, AttributeError):
            await self.svc.agent.wait_first_round(timeout=10.0)
        while not stop.is_set():
            try:
                batch = await asyncio.to_thread(self.step, self.svc.clock.now_ns())
                if batch is not None:
                    self.svc.publish(batch)
                    self.published = True
                if failing:
                    log.info("energy: forecasting recovered")
                failing = False
            except Exception as err:  # the boundary: one bad evaluation must not end the service
                if not failing:
                    log.warning("energy: forecasting failed: %s", err, exc_info=True)
                failing = True
            # Until the first forecast is out, look again soon (the first readings are about to arrive).
            wait_s = float(self.cfg.evaluate_interval) if self.published else min(1.0, self.cfg.evaluate_interval)
            sleeper = asyncio.ensure_future(self.svc.clock.sleep(wait_s))
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            for t in (sleeper, stopper):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t


def build(cfg: Any, svc: Any) -> EnergyForecaster | None:
    """The service builder: an EnergyForecaster unless energy.enabled is false."""
    if not cfg.energy.enabled:
        return None
    return EnergyForecaster(cfg.energy, svc)
