"""Live failure-risk scoring in `fleetwatch run`: every GPU every minute, published as metrics.

The input is a series view: this node's own readings (the in-memory recent window, backed by the
recorded traces for the 24 h windows) or, for a fleet, a Prometheus-compatible query API
(`failure.source: http://prometheus:9090`). With a model file (`failure.model`, from `fleetwatch train`)
the risk is its calibrated probability; without one it is the unsupervised anomaly score of an
IsolationForest refitted every hour on the fleet's own recent features, so an unlabelled fleet still
gets a ranking of its oddest GPUs.

Each GPU also gets the risk level that alerts on it now (fleetwatch_gpu_failure_risk_threshold): the
model's operating point with its hysteresis, kept per GPU across rounds, so that the alert rule is simply
"risk >= threshold" and fires and clears exactly as the benchmark's episodes (predictor/failure/evaluate.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from collector.batch import Batch, Entity, Event
from collector.series_view import PrometheusView, SeriesFrame, SeriesKey, SeriesView
from predictor.failure.evaluate import DEFAULT_CLEAR_RATIO, clear_level
from predictor.failure.explain import explain
from predictor.failure.features import FeatureFrame, compute_features
from predictor.failure.model import FailureRiskModel
from predictor.failure.modelfile import ModelFile, ModelFileError, load

log = logging.getLogger("fleetwatch.failure")

NAME = "failure"
RISK = "fleetwatch_gpu_failure_risk"
REASON = "fleetwatch_gpu_failure_risk_reason"
THRESHOLD = "fleetwatch_gpu_failure_risk_threshold"
INFO = "fleetwatch_failure_model_info"
DURATION = "fleetwatch_failure_scoring_duration_seconds"
REFIT_S = 3600.0            # the unsupervised reference is refitted this often (data time)
REFERENCE_S = 6 * 3600.0    # ... on this much recent history
# Without a trained model the risk is a rarity score (0.8: one sample in ~60,000 of the fleet's own): alert only on
# GPUs that odd, as the fixed default rule did before models carried their own operating point.
ANOMALY_THRESHOLD = 0.8
PROCESS = Entity(kind="process", node="", id="fleetwatch", labels=())


class MergedView:
    """The recent window first, the recorded history where the window has no sample (same interface)."""

    def __init__(self, recent: SeriesView, history: SeriesView | None) -> None:
        self.recent, self.history = recent, history

    def range(self, metric: str, start_ns: int, end_ns: int, step_s: float, *,
              nodes: Sequence[str] | None = None, stale_s: float = 300.0) -> SeriesFrame:
        """The window's frame, gaps filled from the history's."""
        a = self.recent.range(metric, start_ns, end_ns, step_s, nodes=nodes, stale_s=stale_s)
        if self.history is None:
            return a
        try:
            b = self.history.range(metric, start_ns, end_ns, step_s, nodes=nodes, stale_s=stale_s)
        except Exception as err:        # a trace being written can fail a read: the window alone will do
            log.debug("failure: history read of %s failed: %s", metric, err)
            return a
        keys = sorted(set(a.keys) | set(b.keys))
        out = np.full((len(keys), len(a.ts_ns)), np.nan)
        ia = {k: i for i, k in enumerate(a.keys)}
        ib = {k: i for i, k in enumerate(b.keys)}
        for i, k in enumerate(keys):
            if k in ib:
                out[i] = b.values[ib[k]]
            if k in ia:
                v = a.values[ia[k]]
                out[i] = np.where(np.isnan(v), out[i], v)
        return SeriesFrame(metric, keys, a.ts_ns, out)

    def latest(self, metric: str, at_ns: int, *, stale_s: float = 300.0) -> dict[SeriesKey, float]:
        """The window's latest values."""
        return self.recent.latest(metric, at_ns, stale_s=stale_s)

    def events(self, start_ns: int, end_ns: int, *, kinds: Sequence[str] | None = None) -> list[Event]:
        """Events of both, without duplicates."""
        seen: dict[tuple[int, str, str, str, int], Event] = {}
        sources = [self.recent] if self.history is None else [self.history, self.recent]
        for v in sources:
            try:
                evs = v.events(start_ns, end_ns, kinds=kinds)
            except Exception as err:        # see range()
                log.debug("failure: history events read failed: %s", err)
                continue
            for e in evs:
                seen.setdefault((e.ts_ns, e.node, e.entity, e.kind, e.code), e)
        return sorted(seen.values(), key=lambda e: e.ts_ns)

    def entities(self) -> dict[SeriesKey, Entity]:
        """The entities of both (the window's win)."""
        out = {}
        if self.history is not None:
            try:
                out.update(self.history.entities())
            except Exception as err:        # see range()
                log.debug("failure: history entities read failed: %s", err)
        out.update(self.recent.entities())
        return out

    def span(self) -> tuple[int, int] | None:
        """The union of both spans."""
        spans = [s for s in (self.recent.span(), self.history.span() if self.history else None) if s]
        return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None


class FailureScorer:
    """The live failure-risk component."""

    name = NAME

    def __init__(self, svc: Any, model: ModelFile | None, *, interval_s: float = 60.0, step_s: float = 60.0,
                 source: str = "local", threshold: float | None = None, clear_ratio: float | None = None,
                 top: int = 3) -> None:
        self.svc = svc
        self.model = model
        self.interval_s = interval_s
        self.step_s = model.step_s if model is not None else step_s
        self.source = source
        self.threshold = threshold if threshold is not None else (model.threshold if model else ANOMALY_THRESHOLD)
        ratio = clear_ratio if clear_ratio is not None else (model.clear_ratio if model else DEFAULT_CLEAR_RATIO)
        self.clear_threshold = clear_level(self.threshold, ratio)
        # GPUs alerting now (risk reached the threshold, not yet below the clear level), kept in memory. After a
        # restart the first round takes it back from the view where that is possible (see _restore); where it
        # is not (a node's own window starts empty), a GPU between the two levels is not alerting until its
        # risk reaches the threshold again: one missed hold.
        self.alerting: set[SeriesKey] = set()
        self._restored = False
        self.top = top
        self._anomaly: FailureRiskModel | None = None
        self._anomaly_median: np.ndarray | None = None
        self._anomaly_scale: np.ndarray | None = None
        self._fitted_at = 0
        self.last: list[tuple[SeriesKey, float]] = []

    def view(self) -> SeriesView:
        """The series view scored: Prometheus for a fleet, else this node's window and history."""
        if self.source not in ("", "local"):
            return PrometheusView(self.source)
        return MergedView(self.svc.window, self.svc.history())

    def notes(self) -> list[str]:
        """Where the risk comes from."""
        what = (f"model {self.model.version} ({self.model.kind})" if self.model
                else "unsupervised anomaly score (no failure.model configured)")
        src = "this node's readings" if self.source in ("", "local") else self.source
        return [f"failure risk: {what}, from {src}, every {self.interval_s:g} s → {RISK}; alerting at "
                f"{self.threshold:g}, clearing below {self.clear_threshold:g} → {THRESHOLD}"]

    def _reference(self, view: SeriesView, now: int) -> None:
        """Refit the unsupervised model on the fleet's recent features (all GPUs, every few samples)."""
        span = view.span()
        start = max(now - int(REFERENCE_S * 1e9), span[0] if span else now)
        every = max(1, int(REFERENCE_S / self.step_s / 200))
        ref = compute_features(view, start, now, self.step_s, every=every)
        X = ref.X.reshape(-1, ref.X.shape[-1])
        if len(X) < 2:
            return
        self._anomaly = FailureRiskModel(n_estimators=100, random_state=0).fit(X)
        X = np.where(np.isnan(X).all(axis=0, keepdims=True), 0.0, X)   # a feature with no data yet: median 0
        self._anomaly_median = np.nanmedian(X, axis=0)
        q75, q25 = np.nanpercentile(X, 75, axis=0), np.nanpercentile(X, 25, axis=0)
        self._anomaly_scale = np.where(q75 - q25 > 0, q75 - q25, 1.0)
        self._fitted_at = now

    def score_once(self) -> Batch | None:
        """Score every GPU now (blocking: run it in a thread); the batch to publish, or None without GPUs."""
        t0 = time.perf_counter()
        now = self.svc.clock.now_ns()
        view = self.view()
        frame: FeatureFrame = compute_features(view, now, now, self.step_s)
        if not frame.keys or frame.X.shape[1] == 0:
            return None
        X = frame.X[:, -1, :]
        if not self._restored:
            self._restore(view, now)
        if self.model is not None:
            est, median, scale = self.model.estimator, self.model.fleet_median, self.model.fleet_scale
        else:
            if self._anomaly is None or now - self._fitted_at >= int(REFIT_S * 1e9):
                self._reference(view, now)
            if self._anomaly is None:
                return None
            est, median, scale = self._anomaly, self._anomaly_median, self._anomaly_scale
        risk = est.risk(X)
        reasons = explain(est, X, median, scale, top=self.top, base=risk)
        ents = view.entities()
        batch = Batch(self.name, now)
        for i, k in enumerate(frame.keys):
            ent = ents.get(k)
            if ent is None or ent.kind != "gpu":
                continue
            batch.add(RISK, ent, float(risk[i]))
            batch.add(THRESHOLD, ent, self._alert_level(k, float(risk[i])))
            for r in reasons[i]:                # features above the fleet median, by how much they raise risk
                batch.add(REASON, ent, r.contribution, (r.label,))
        version = self.model.version if self.model else "anomaly-live"
        kind = self.model.kind if self.model else "anomaly"
        batch.add(INFO, PROCESS, 1.0, (version, kind, f"{self.threshold:g}"))
        batch.add(DURATION, PROCESS, time.perf_counter() - t0)
        self.last = sorted(zip(frame.keys, risk.tolist(), strict=True), key=lambda x: -x[1])
        return batch

    def _restore(self, view: SeriesView, now: int) -> None:
        """Take back the alert states of a previous run from the levels it last exported (a fleet's
        Prometheus still has them): a GPU whose level was this model's clear level was alerting."""
        self._restored = True
        try:
            prev = view.latest(THRESHOLD, now, stale_s=max(300.0, 3 * self.interval_s))
        except Exception as err:        # an unreachable Prometheus: start with no GPU alerting
            log.debug("failure: could not read the previous alert levels: %s", err)
            return
        if self.clear_threshold < self.threshold:       # else the two levels cannot be told apart
            self.alerting.update(k for k, v in prev.items() if abs(v - self.clear_threshold) < 1e-9)

    def _alert_level(self, key: SeriesKey, risk: float) -> float:
        """Advance the GPU's alert state with this round's risk; the level in effect for it now."""
        if key in self.alerting:
            if not risk >= self.clear_threshold:        # NaN clears too: no risk, no alert
                self.alerting.discard(key)
        elif risk >= self.threshold:
            self.alerting.add(key)
        return self.clear_threshold if key in self.alerting else self.threshold

    async def run(self, stop: asyncio.Event) -> None:
        """Score every interval (data time) until stop."""
        while not stop.is_set():
            batch = None
            try:
                batch = await asyncio.to_thread(self.score_once)
                if batch is not None:
                    self.svc.publish(batch)
            except Exception as err:        # one bad scoring round must not stop the service
                log.warning("failure: scoring failed: %s", err)
            # no readings yet (just started): try again soon rather than a whole interval later
            wait = self.interval_s if batch is not None else min(self.interval_s, 2.0)
            sleep = asyncio.ensure_future(self.svc.clock.sleep(wait))
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait({sleep, waiter}, return_when=asyncio.FIRST_COMPLETED)
            for f in (sleep, waiter):
                f.cancel()


def build(cfg: Any, svc: Any) -> FailureScorer | None:
    """The component for `fleetwatch run` (None when failure.enabled is false)."""
    from collector.config_types import ConfigError

    fc = cfg.failure
    if not fc.enabled:
        return None
    model = None
    if fc.model:
        try:
            model = load(fc.model)
        except ModelFileError as err:
            raise ConfigError(f"failure.model: {err}") from None
    return FailureScorer(svc, model, interval_s=fc.interval, step_s=fc.step, source=fc.source,
                         threshold=fc.threshold, clear_ratio=fc.clear_ratio)
