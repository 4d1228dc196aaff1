"""The live scorer's per-GPU alert state: fleetwatch_gpu_failure_risk_threshold is the model's threshold while a
GPU is not alerting and threshold x clear ratio while it is, so the default alert rule (risk >= that series)
fires, holds and clears as the benchmark's episodes do."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from alerts.engine import Engine
from alerts.rules import default_rules
from collector.batch import Batch, Entity
from collector.clock import ManualClock
from collector.series_view import RecentWindow
from fleetwatch.config import ConfigError, load_config
from predictor.failure.features import FEATURE_NAMES, PENDING
from predictor.failure.live import RISK, THRESHOLD, FailureScorer, build
from predictor.failure.modelfile import ModelFile
from tests.conftest import sample_gpu

GPU0, GPU1 = sample_gpu("node-0", 0), sample_gpu("node-0", 1)
COL = FEATURE_NAMES.index("remap_pending")


class PendingIsRisk:
    """A transparent model: the risk is the remap_pending feature itself (the last reading of
    fleetwatch_gpu_remapped_rows_pending), so a test sets each GPU's risk by what it feeds the window."""

    supervised = True

    def risk(self, X: np.ndarray) -> np.ndarray:
        return np.clip(np.nan_to_num(np.asarray(X, dtype=float)[:, COL]), 0.0, 1.0)


def scorer(threshold: float = 0.8, model_ratio: float = 0.75, **kw: float) -> FailureScorer:
    clock, window = ManualClock(), RecentWindow()
    svc = SimpleNamespace(clock=clock, window=window, history=lambda: None, publish=window.add)
    model = ModelFile(estimator=PendingIsRisk(), threshold=threshold, horizon_s=86400.0, step_s=60.0,  # type: ignore[arg-type]
                      clear_ratio=model_ratio)
    return FailureScorer(svc, model, interval_s=60.0, **kw)


def round_(sc: FailureScorer, risks: dict[Entity, float]) -> dict[str, tuple[float, float]]:
    """Feed one minute of readings, score, publish; {gpu: (risk, threshold series)} from the batch."""
    sc.svc.clock.advance(60.0)
    readings = Batch("gpu", sc.svc.clock.now_ns())
    for gpu, r in risks.items():
        readings.add(PENDING, gpu, r)
    sc.svc.window.add(readings)
    batch = sc.score_once()
    assert batch is not None
    sc.svc.publish(batch)
    rows = batch.rows()
    risk = {e.labels[1]: v for m, e, v, _ in rows if m == RISK}
    level = {e.labels[1]: v for m, e, v, _ in rows if m == THRESHOLD}
    assert risk.keys() == level.keys() == {"0", "1"}
    return {g: (round(risk[g], 6), round(level[g], 6)) for g in risk}     # the risk went through float32


def test_threshold_series_fires_holds_and_clears_per_gpu() -> None:
    sc = scorer()                    # fire at 0.8, hold while >= 0.6
    steps = [  # GPU 0's risk, the level expected for it after the round; GPU 1 stays at 0.7 throughout
        (0.7, 0.8),                  # below the threshold: not alerting, the fire level is in effect
        (0.85, 0.6),                 # reaches it: alerting, the clear level is in effect
        (0.7, 0.6),                  # between clear and fire: holds
        (0.6, 0.6),                  # exactly the clear level still holds (>=)
        (0.55, 0.8),                 # below it: clears
        (0.7, 0.8),                  # between the two again, but not alerting: stays clear
        (0.8, 0.6),                  # exactly the threshold fires (>=)
    ]
    for i, (r0, want) in enumerate(steps):
        got = round_(sc, {GPU0: r0, GPU1: 0.7})
        assert got["0"] == pytest.approx((r0, want)), f"round {i}: risk {r0}"
        assert got["1"] == pytest.approx((0.7, 0.8)), f"round {i}: GPU 1 has its own state"
    assert [k.entity for k in sc.alerting] == [GPU0.id]


def test_clear_ratio_comes_from_config_else_the_model_else_the_default() -> None:
    assert round_(scorer(model_ratio=0.9), {GPU0: 0.9, GPU1: 0.1})["0"] == pytest.approx((0.9, 0.72))
    assert round_(scorer(model_ratio=0.9, clear_ratio=0.5), {GPU0: 0.9, GPU1: 0.1})["0"] == pytest.approx((0.9, 0.4))
    # without a model: the anomaly score's 0.8, cleared below 0.75 x 0.8
    bare = FailureScorer(SimpleNamespace(), None)
    assert (bare.threshold, bare.clear_threshold) == pytest.approx((0.8, 0.6))
    svc = SimpleNamespace(clock=ManualClock(), window=RecentWindow(), history=lambda: None)
    built = build(load_config(None, {"failure": {"clear_ratio": 0.9, "threshold": 0.4}}), svc)
    assert built is not None and built.clear_threshold == pytest.approx(0.36)
    with pytest.raises(ConfigError, match=r"failure\.clear_ratio"):
        load_config(None, {"failure": {"clear_ratio": 1.5}})


def test_default_rule_follows_the_scorer_through_the_engine() -> None:
    """The built-in FleetwatchGpuHighFailureRisk over what the scorer publishes: fires after its 10 min
    `for` although the risk fell below the threshold meanwhile, and once the risk drops below the clear level
    keeps firing for the rule's 6 h keep_firing_for (the benchmark's episode merge), then resolves; the other
    GPU, at the same in-between risk but never past the threshold, never alerts."""
    (rule,) = [r for r in default_rules() if r.alert == "FleetwatchGpuHighFailureRisk"]
    engine = Engine([rule])
    sc = scorer()
    seen: list[dict[str, str]] = []
    for r0 in [0.85] + [0.7] * 11 + [0.5]:
        round_(sc, {GPU0: r0, GPU1: 0.7})
        now = sc.svc.clock.now_ns()
        seen.append({a.labels["gpu"]: a.state for a in engine.evaluate(sc.svc.window, now)})
    assert seen[0] == {"0": "pending"}
    assert seen[10] == {"0": "firing"}                 # 10 rounds of a minute after it became active
    assert all("1" not in s for s in seen)
    assert seen[-1] == {"0": "firing"}                 # below the clear level: kept for 6 h
    assert rule.keep_firing_for == 6 * 3600.0
    sc.svc.clock.advance(6 * 3600.0 - 120.0)
    for want in ("firing", "resolved"):                # 6 h - 1 min, then 6 h after the first round below
        round_(sc, {GPU0: 0.5, GPU1: 0.7})
        (alert,) = engine.evaluate(sc.svc.window, sc.svc.clock.now_ns())
        assert alert.state == want
    # the risk it last held at, not the threshold series (0.6): remediation policies match min_risk on it
    assert alert.value == pytest.approx(0.7) and alert.annotations["risk"] == "0.7000"


def test_a_restarted_scorer_takes_the_alert_state_back_from_the_view() -> None:
    """A new scorer over a view that still holds the last exported levels (as a fleet's Prometheus does) keeps
    an alerting GPU alerting between the two levels; a GPU that was not alerting stays so at the same risk."""
    first = scorer()
    round_(first, {GPU0: 0.9, GPU1: 0.7})                       # GPU 0 alerting (level 0.6), GPU 1 not
    again = scorer()
    again.svc = first.svc                                       # same window and clock, fresh state
    assert round_(again, {GPU0: 0.7, GPU1: 0.7}) == {"0": (0.7, 0.6), "1": (0.7, 0.8)}
    fresh = scorer()                                            # an empty view: nothing to take back
    assert round_(fresh, {GPU0: 0.7, GPU1: 0.7}) == {"0": (0.7, 0.8), "1": (0.7, 0.8)}


def test_anomaly_reference_takes_features_without_data_as_median_zero() -> None:
    """Without a model the scorer fits the anomaly score on the window; features with no data yet (all but
    remapped rows here) get median 0, not NaN (which made reasons compare against NaN), and no warning."""
    clock, window = ManualClock(), RecentWindow()
    svc = SimpleNamespace(clock=clock, window=window, history=lambda: None, publish=window.add)
    sc = FailureScorer(svc, None, interval_s=60.0)        # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        for r in (0.0, 0.0, 1.0):
            clock.advance(60.0)
            b = Batch("gpu", clock.now_ns())
            b.add(PENDING, GPU0, r)
            b.add(PENDING, GPU1, 0.0)
            window.add(b)
            sc.score_once()
    assert sc._anomaly_median is not None and np.isfinite(sc._anomaly_median).all()
    assert sc._anomaly_median[COL] == 0.0
