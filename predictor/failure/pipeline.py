"""Train, score and evaluate over traces: features → labels → model → threshold, one trace at a time.

Each trace is read through its own TraceView (two simulated fleets may reuse node names and times, so
they are never merged into one view). Training cross-fits the classifier over folds of nodes and picks
the operating threshold on every training GPU's out-of-fold risk, to meet the false-alarm budget and the
precision floor; the model saved is fitted on everything. Evaluation belongs on other GPUs and later
time (bench/bench_failure.py tests on unseen fleets that start when the training fleet ends).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collector.series_view import SeriesView, TraceView
from predictor.failure.evaluate import (
    CLEAR_RATIOS,
    DEFAULT_CLEAR_RATIO,
    Episode,
    Scores,
    TruthFailure,
    baseline_scores,
    censored_gpus,
    episodes,
    first_failure,
    pool_counts,
    pr_auc,
    sample_truth,
    score,
    truth_failures,
)
from predictor.failure.explain import Reason, explain
from predictor.failure.features import (
    FEATURE_NAMES,
    LOOKBACK_S,
    METRICS_READ,
    MONOTONIC,
    FeatureFrame,
    compute_features,
)
from predictor.failure.labels import DEFAULT_HORIZON_S, LABEL_METRICS, failure_times, sample_labels
from predictor.failure.model import FailureRiskModel, SampleSet, flatten
from predictor.failure.modelfile import ModelFile

log = logging.getLogger("fleetwatch.failure")

DEFAULT_STEP_S = 900.0
DEFAULT_EVERY = 2                      # score every 2nd grid point (30 min at 900 s)
WARMUP_S = 6 * 3600.0                  # samples this early in a trace have too little history to train on
FA_BUDGET = 0.05                       # false alarms per 1,000 GPU-days targeted on validation (half of 0.1)
MIN_PRECISION = 0.9
MAX_NEGATIVES = 150_000
# Under this many false alarms allowed on the budget check's GPU-days, the check is mostly fleet-to-fleet noise
# (the benchmark saw 1 against 7 on two 57,000 GPU-day fleets at one threshold).
MIN_BUDGET_ALARMS = 5.0
DEFAULT_FOLDS = 4


@dataclass(slots=True)
class TraceData:
    """One trace's features and observed labels."""

    path: str
    view: SeriesView
    frame: FeatureFrame
    start_ns: int
    end_ns: int
    failures: dict[int, int]          # GPU row -> first observed failure (ns)


def trace_span(view: SeriesView, path: str | Path) -> tuple[int, int]:
    """The trace's first and last sample time; ValueError when it holds no metrics."""
    span = view.span()
    if span is None:
        raise ValueError(f"{path}: the trace holds no metric samples")
    return span


def load_trace(path: str | Path, step_s: float = DEFAULT_STEP_S, every: int = DEFAULT_EVERY) -> TraceData:
    """Features (whole span) and observed failure times of one trace."""
    view = TraceView(path)
    lo, hi = trace_span(view, path)
    view.prefetch(sorted({*METRICS_READ, *LABEL_METRICS}))
    frame = compute_features(view, lo, hi, step_s, every=every)
    if not frame.keys:
        raise ValueError(f"{path}: the trace has no GPUs")
    fails = failure_times(view, frame.keys, lo, hi, step_s)
    row = {k: i for i, k in enumerate(frame.keys)}
    return TraceData(str(path), view, frame, lo, hi, {row[k]: t for k, t in fails.items()})


def _labels(td: TraceData, horizon_s: float) -> tuple[np.ndarray, np.ndarray]:
    fails = {td.frame.keys[g]: t for g, t in td.failures.items()}
    y, valid = sample_labels(td.frame.keys, td.frame.ts_ns, fails, horizon_s, end_ns=td.end_ns)
    valid &= (td.frame.ts_ns >= td.start_ns + int(WARMUP_S * 1e9))[None, :]
    return y, valid


def observed_failures(td: TraceData, gpus: np.ndarray | None = None) -> list[TruthFailure]:
    """The observed (label) failures as evaluation records (precursors unknown: counted as True)."""
    return [TruthFailure(g, t, True, "observed") for g, t in td.failures.items() if gpus is None or gpus[g]]


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """The alert policy chosen in training: fire at `threshold`, clear below clear_ratio × threshold."""

    threshold: float
    clear_ratio: float
    scores: Scores


@dataclass(slots=True)
class ScoredFleet:
    """Risk of a fleet's GPUs on one grid with its valid samples, observed failures and GPU-days."""

    risk: np.ndarray
    valid: np.ndarray
    ts_ns: np.ndarray
    failures: list[TruthFailure]
    gpu_days: float

    def scores(self, threshold: float, clear_ratio: float, horizon_s: float) -> Scores:
        """The figures of this fleet's alert episodes under one alert policy."""
        n = self.risk.shape[0]
        eps = episodes(self.risk, self.valid, self.ts_ns, threshold, clear_ratio=clear_ratio,
                       censored=censored_gpus(n, self.failures))
        return score(eps, self.failures, gpus=n, gpu_days=self.gpu_days, horizon_s=horizon_s, threshold=threshold)


def choose_threshold(risk: np.ndarray, valid: np.ndarray, ts_ns: np.ndarray, failures: Sequence[TruthFailure],
                     gpu_days: float, horizon_s: float, *, fa_budget: float = FA_BUDGET,
                     min_precision: float = MIN_PRECISION,
                     clear_ratios: Sequence[float] = (DEFAULT_CLEAR_RATIO,),
                     alarms: ScoredFleet | None = None) -> OperatingPoint:
    """The operating point: for each hysteresis ratio, the lowest threshold whose false alarms and precision
    meet the targets, else the lowest that meets the precision, else the best F0.5 (precision weighted twice
    recall: false drains cost more); across ratios the best tier, then the highest recall.

    With `alarms` (a fleet at its real fault rate) the false-alarm budget is checked there, not on the fleet
    that measures precision (which may run at a raised fault rate to have enough failures)."""
    n = risk.shape[0]
    fleet = ScoredFleet(risk, valid, ts_ns, list(failures), gpu_days)

    def run(thr: float, ratio: float) -> Scores:
        return fleet.scores(thr, ratio, horizon_s)

    def alarms_ok(s: Scores, thr: float, ratio: float) -> bool:
        fa = s if alarms is None else alarms.scores(thr, ratio, horizon_s)
        return fa.false_alarms_per_1000_gpu_days <= fa_budget

    if not failures:            # nothing to tune against: a conservative default
        return OperatingPoint(0.5, DEFAULT_CLEAR_RATIO, run(0.5, DEFAULT_CLEAR_RATIO))
    vals = risk[valid]
    # Candidates: quantiles of the samples' risk and of each GPU's peak (where the set of alerted GPUs changes).
    peaks = np.where(valid, risk, 0.0).max(axis=1)
    qs = np.linspace(0.5, 1.0, 120)
    parts = [np.quantile(v[v > 0.01], qs, method="lower") for v in (vals, peaks) if (v > 0.01).any()]
    cand = np.unique(np.concatenate(parts)) if parts else np.zeros(0)
    best: tuple[tuple[float, ...], OperatingPoint] | None = None
    for ratio in clear_ratios:
        both: OperatingPoint | None = None
        precise: OperatingPoint | None = None
        fallback: tuple[float, OperatingPoint] | None = None
        for thr in cand:
            s = run(float(thr), ratio)
            op = OperatingPoint(float(thr), ratio, s)
            if (s.precision or 0.0) >= min_precision:
                if precise is None:
                    precise = op
                if both is None and alarms_ok(s, float(thr), ratio):
                    both = op
            p, r = s.precision or 0.0, s.recall or 0.0
            f05 = 1.25 * p * r / (0.25 * p + r) if p + r > 0 else 0.0
            if fallback is None or (f05, -float(thr)) > (fallback[0], -fallback[1].threshold):
                fallback = (f05, op)
        # rank: tier (both targets, precision only, F0.5), then recall (or F0.5), then the higher ratio
        if both is not None:
            key: tuple[float, ...] = (2.0, both.scores.recall or 0.0, ratio)
            pick = both
        elif precise is not None:
            key, pick = (1.0, precise.scores.recall or 0.0, ratio), precise
        elif fallback is not None:
            key, pick = (0.0, fallback[0], ratio), fallback[1]
        else:
            continue
        if best is None or key > best[0]:
            best = (key, pick)
    if best is not None:
        return best[1]
    return OperatingPoint(0.5, DEFAULT_CLEAR_RATIO, score([], failures, gpus=n, gpu_days=gpu_days,
                                                          horizon_s=horizon_s, threshold=0.5))


def _gpu_days(valid: np.ndarray, ts_ns: np.ndarray) -> float:
    step = float(np.median(np.diff(ts_ns))) / 1e9 if len(ts_ns) > 1 else 0.0
    return float(valid.sum()) * step / 86400.0


def _samples(data: Sequence[TraceData], horizon_s: float, seed: int) -> SampleSet:
    parts: list[SampleSet] = []
    offset = 0
    per_trace = MAX_NEGATIVES // max(1, len(data))
    for td in data:
        y, valid = _labels(td, horizon_s)
        parts.append(flatten(td.frame.X, y, td.frame.ts_ns, valid, max_negatives=per_trace, seed=seed,
                             gpu_offset=offset))
        offset += len(td.frame.keys)
    return SampleSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("X", "y", "gpu", "ts_ns", "weight")))


def _node_groups(data: Sequence[TraceData]) -> np.ndarray:
    """A group number per GPU row (rows of all traces stacked): its node, never shared across traces."""
    names = [f"{i}\x00{k.node}" for i, td in enumerate(data) for k in td.frame.keys]
    return np.unique(np.asarray(names), return_inverse=True)[1].astype(np.int64)


def train(traces: Sequence[str | Path], *, validation: Sequence[str | Path] = (),
          alarm_validation: Sequence[str | Path] = (),
          horizon_s: float = DEFAULT_HORIZON_S, step_s: float = DEFAULT_STEP_S, every: int = DEFAULT_EVERY,
          seed: int = 0, fa_budget: float = FA_BUDGET, min_precision: float = MIN_PRECISION,
          folds: int = DEFAULT_FOLDS, clear_ratios: Sequence[float] = CLEAR_RATIOS,
          progress: Callable[[str], None] | None = None) -> ModelFile:
    """Train a model file on traces (their observable events and metrics only).

    Folds are by node (a node's GPUs share jobs, power and faults). The operating threshold is chosen on
    `validation` traces (other GPUs, scored by the model as it will run) when given, else on every
    training GPU's out-of-fold risk (each from the member that did not see its node). Out-of-fold risk
    is a single member's, noisier than the members' mean, so it picks a conservative threshold. With
    `alarm_validation` traces (a fleet at its real fault rate) the false-alarm budget is checked on them.
    """
    say = progress or (lambda _m: None)
    data = []
    for t in traces:
        say(f"features: {t}")
        data.append(load_trace(t, step_s, every))
    node_of_gpu = _node_groups(data)
    s = _samples(data, horizon_s, seed)
    say(f"fitting on {len(s.y)} samples ({int(s.y.sum())} positive), {folds} folds by node")
    model = FailureRiskModel(monotonic_cst=MONOTONIC, cv=folds, random_state=seed)
    model.fit(s.X, s.y, sample_weight=s.weight, groups=node_of_gpu[s.gpu])
    def full(td: TraceData, _g0: int) -> np.ndarray:
        return model.risk(td.frame.X.reshape(-1, td.frame.X.shape[2]))

    held = [load_trace(t, step_s, every) for t in validation]
    if held:
        fleet = _scored_fleet(held, horizon_s, full)
    else:
        def oof(td: TraceData, g0: int) -> np.ndarray:
            g, t, f = td.frame.X.shape
            return model.oof_risk(td.frame.X.reshape(-1, f), np.repeat(node_of_gpu[g0:g0 + g], t))
        fleet = _scored_fleet(data, horizon_s, oof)
    alarm_tds = [load_trace(t, step_s, every) for t in alarm_validation]
    alarms = _scored_fleet(alarm_tds, horizon_s, full) if alarm_tds else None
    model.drop_folds()
    method = "validation traces" if held else "out-of-fold risk (folds by node)"
    op = choose_threshold(fleet.risk, fleet.valid, fleet.ts_ns, fleet.failures, fleet.gpu_days, horizon_s,
                          fa_budget=fa_budget, min_precision=min_precision, clear_ratios=clear_ratios, alarms=alarms)
    val_scores = op.scores
    checked_days = (alarms or fleet).gpu_days
    allowed = fa_budget * checked_days / 1000.0
    if allowed < MIN_BUDGET_ALARMS:
        say(f"warning: the false-alarm budget ({fa_budget:g} per 1,000 GPU-days) allows {allowed:.1f} alarms on "
            f"the {checked_days:.0f} GPU-days it is checked on: too few to tell a threshold's false-alarm rate "
            f"from chance; give more GPU-days ({'--validate-alarms' if alarms else '--validate'} is repeatable)")
    say(f"threshold {op.threshold:.4f}, clearing below {op.clear_ratio:g} × it, on {method}: precision "
        f"{val_scores.precision}, recall {val_scores.recall}, "
        f"{val_scores.false_alarms_per_1000_gpu_days:.3f} false alarms / 1000 GPU-days")
    alarm_scores = alarms.scores(op.threshold, op.clear_ratio, horizon_s) if alarms is not None else None
    if alarm_scores is not None:
        say(f"false alarms on the alarm-validation traces: {alarm_scores.false_alarms_per_1000_gpu_days:.3f} / 1000 "
            f"GPU-days (budget {fa_budget:g})")
    neg = s.X[s.y == 0]
    neg = np.where(np.isnan(neg).all(axis=0, keepdims=True), 0.0, neg)   # a feature never seen: median 0
    median = np.nanmedian(neg, axis=0) if len(neg) else np.zeros(len(FEATURE_NAMES))
    q75, q25 = (np.nanpercentile(neg, q, axis=0) for q in (75, 25)) if len(neg) else (median, median)
    scale = np.where(q75 - q25 > 0, q75 - q25, np.maximum(np.nanstd(neg, axis=0) if len(neg) else 1.0, 1e-6))
    training = {
        "traces": [str(t) for t in traces], "start_ns": min(td.start_ns for td in data),
        "end_ns": max(td.end_ns for td in data), "gpus": int(sum(len(td.frame.keys) for td in data)),
        "failures": int(sum(len(td.failures) for td in data)), "samples": len(s.y),
        "positives": int(s.y.sum()), "validation": val_scores.as_dict(), "validation_method": method,
        "validation_traces": [str(t) for t in validation],
        "alarm_validation": alarm_scores.as_dict() if alarm_scores is not None else None,
        "alarm_validation_traces": [str(t) for t in alarm_validation],
        "folds": folds, "seed": seed, "fa_budget": fa_budget, "fa_budget_gpu_days": checked_days,
        "min_precision": min_precision,
        "clear_ratios": list(clear_ratios),
    }
    return ModelFile(estimator=model, threshold=op.threshold, clear_ratio=op.clear_ratio, horizon_s=horizon_s,
                     step_s=step_s,
                     fleet_median=median.astype(np.float64), fleet_scale=scale.astype(np.float64), training=training)


def _scored_fleet(data: Sequence[TraceData], horizon_s: float,
                  risk_of: Callable[[TraceData, int], np.ndarray]) -> ScoredFleet:
    """The traces' GPUs stacked into one fleet, risk_of(trace, first GPU row) giving each trace's risk."""
    risks, valids, ts_all, fails, days, g0 = [], [], [], [], 0.0, 0
    for td in data:
        _, valid = _labels(td, horizon_s)
        g, t, _ = td.frame.X.shape
        risks.append(np.asarray(risk_of(td, g0)).reshape(g, t))
        valids.append(valid)
        ts_all.append(td.frame.ts_ns)
        fails.extend(TruthFailure(x.gpu + g0, x.ts_ns, True, x.kind) for x in observed_failures(td))
        days += _gpu_days(valid, td.frame.ts_ns)
        g0 += g
    # traces may have different grids: pad to the longest so that episodes() sees one array
    t_max = max(len(t) for t in ts_all)
    risk = np.vstack([np.pad(r, ((0, 0), (0, t_max - r.shape[1]))) for r in risks])
    valid = np.vstack([np.pad(v, ((0, 0), (0, t_max - v.shape[1]))) for v in valids])
    if len({len(t) for t in ts_all}) > 1 or any(not np.array_equal(t, ts_all[0]) for t in ts_all):
        # align by position (same step): time only matters relative to each GPU's own failures
        base = ts_all[int(np.argmax([len(t) for t in ts_all]))]
        shifted: list[TruthFailure] = []
        g0 = 0
        for r, t in zip(risks, ts_all, strict=True):
            delta = int(base[0] - t[0])
            shifted.extend(TruthFailure(f.gpu, f.ts_ns + delta, f.had_precursors, f.kind)
                           for f in fails if g0 <= f.gpu < g0 + r.shape[0])
            g0 += r.shape[0]
        fails, ts = shifted, base
    else:
        ts = ts_all[0]
    return ScoredFleet(risk, valid, ts, fails, days)


@dataclass(slots=True)
class GpuScore:
    """One GPU's latest risk and its reasons."""

    node: str
    entity: str
    gpu: str
    ts_ns: int
    risk: float
    max_risk: float
    alert: bool
    reasons: list[Reason]


def score_view(model: ModelFile, view: SeriesView, at_ns: int, *, history_s: float = 0.0,
               top: int = 3) -> list[GpuScore]:
    """Score every GPU the view knows at `at_ns` (and report its maximum over history_s before)."""
    start = at_ns - int(history_s * 1e9)
    frame = compute_features(view, start, at_ns, model.step_s)
    if not frame.keys or not len(frame.ts_ns):
        return []
    g, t, f = frame.X.shape
    risk = model.estimator.risk(frame.X.reshape(-1, f)).reshape(g, t)
    last = frame.X[:, -1, :]
    reasons = explain(model.estimator, last, model.fleet_median, model.fleet_scale, top=top, base=risk[:, -1])
    ents = view.entities()
    out = []
    for i, k in enumerate(frame.keys):
        e = ents.get(k)
        gpu = e.labels[1] if e is not None and e.kind == "gpu" and len(e.labels) > 1 else ""
        out.append(GpuScore(k.node, k.entity, gpu, int(frame.ts_ns[-1]), float(risk[i, -1]),
                            float(risk[i].max()), bool(risk[i, -1] >= model.threshold), reasons[i]))
    out.sort(key=lambda s: -s.risk)
    return out


def score_traces(model: ModelFile, traces: Sequence[str | Path], *, history_s: float = 24 * 3600.0,
                 top: int = 3) -> list[GpuScore]:
    """Score every GPU of each trace at the trace's last sample."""
    out: list[GpuScore] = []
    for t in traces:
        view = TraceView(t)
        _, hi = trace_span(view, t)
        out.extend(score_view(model, view, hi, history_s=history_s, top=top))
    out.sort(key=lambda s: -s.risk)
    return out


def evaluate(model: ModelFile, traces: Sequence[str | Path], *, horizon_s: float | None = None,
             every: int = DEFAULT_EVERY, threshold: float | None = None,
             clear_ratio: float | None = None) -> dict[str, object]:
    """Model and rule-baseline figures against the traces' ground truth (pooled over traces), with the model's
    alert policy (threshold, clear ratio) unless overridden."""
    h = model.horizon_s if horizon_s is None else horizon_s
    thr = model.threshold if threshold is None else threshold
    ratio = model.clear_ratio if clear_ratio is None else clear_ratio
    m_eps: list[Episode] = []
    b_eps_scores: list[Scores] = []
    fails_all: list[TruthFailure] = []
    ys, vs, rs = [], [], []
    days = 0.0
    gpus = 0
    for t in traces:
        td = load_trace(t, model.step_s, every)
        keys = td.frame.keys
        # scores start once the windows have full history, as live scoring would after a day of data
        start = td.start_ns + int(min(LOOKBACK_S, WARMUP_S) * 1e9)
        fails = truth_failures([t], keys, start, td.end_ns)
        first = first_failure(fails, len(keys))
        obs = np.array([td.failures.get(i, np.iinfo(np.int64).max) for i in range(len(keys))], dtype=np.int64)
        # Right-censored: a sample in the trace's last horizon on a GPU that has not failed by the end has an
        # outcome the trace cannot show, so it neither raises nor clears an alert (as in training).
        fail_at = np.minimum(first, obs)
        y, valid = sample_truth(td.frame.ts_ns, fail_at, h, td.end_ns)
        valid &= (td.frame.ts_ns >= start)[None, :]
        g, n_t, f = td.frame.X.shape
        risk = model.estimator.risk(td.frame.X.reshape(-1, f)).reshape(g, n_t)
        d = _gpu_days(valid, td.frame.ts_ns)
        eps = episodes(risk, valid, td.frame.ts_ns, thr, clear_ratio=ratio,
                       censored=fail_at == np.iinfo(np.int64).max)
        m_eps.extend(Episode(e.gpu + gpus, e.start_ns, e.end_ns) for e in eps)
        fails_all.extend(TruthFailure(x.gpu + gpus, x.ts_ns, x.had_precursors, x.kind) for x in fails)
        b_eps_scores.append(baseline_scores(td.view, keys, fails, start, td.end_ns, model.step_s, d, h))
        _, v_auc = sample_truth(td.frame.ts_ns, first, h, td.end_ns)
        ys.append(y[valid & v_auc])
        rs.append(risk[valid & v_auc])
        vs.append(d)
        days += d
        gpus += g
    yy, rr = np.concatenate(ys), np.concatenate(rs)
    auc = pr_auc(rr[None, :], yy[None, :], np.ones((1, len(yy)), dtype=bool))
    s = score(m_eps, fails_all, gpus=gpus, gpu_days=days, horizon_s=h, threshold=thr, pr_auc=auc)
    out: dict[str, object] = {k: v for k, v in s.as_dict().items()}
    out["baseline"] = _pool_baseline(b_eps_scores, gpus, days)
    out["clear_ratio"] = ratio
    out["model_version"] = model.version
    out["horizon_h"] = h / 3600.0
    return out


def _pool_baseline(parts: list[Scores], gpus: int, days: float) -> dict[str, object]:
    pooled = pool_counts([p.as_dict() for p in parts])
    caught = pooled["caught"]
    return {**pooled, "gpus": gpus, "gpu_days": days, "pr_auc": None, "threshold": None,
            "median_lead_time_h": 0.0 if caught else None, "p10_lead_time_h": 0.0 if caught else None,
            "false_alarms_per_1000_gpu_days": 1000.0 * pooled["false_alarms"] / days if days > 0 else 0.0}
