"""Evaluation against the trace's ground-truth fault log: alert episodes, precision/recall, lead time,
false alarms per 1,000 GPU-days, PR-AUC, and the same for the dcgm-style rule baseline.

Alert semantics. An alert is the risk crossing the operating threshold for a GPU; it holds while the risk
stays at or above DEFAULT_CLEAR_RATIO × the threshold (hysteresis, as alert rules clear), and alerting
samples with gaps up to `merge_s` form one episode, so a GPU flagged for a day is one alert, not 48.
An episode is true when the GPU fails while it stands or within the horizon H after its last sample
above the threshold; otherwise it is a false alarm. Samples in a trace's last horizon on GPUs that have
not failed by its end are censored (their outcome is unknown): they neither raise nor clear alerts, and an
episode still standing when its GPU's observation is censored has an unknown outcome too: it is left out
of precision and false alarms (it would be true if the GPU failed within H of the alert's real end).
A failure is caught when a true episode started before it; its lead time is failure minus the start of
the first such episode. The rule baseline alerts on each double-bit ECC error or critical XID (and GPU
lost) as it happens: lead time zero by construction.
Ground truth is read here only, never by training or scoring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score

from collector import xid as xidcat
from collector.series_view import SeriesKey, SeriesView
from collector.trace_io import read_ground_truth
from predictor.failure.labels import DEFAULT_HORIZON_S

DEFAULT_MERGE_S = 6 * 3600.0
# An alert clears below this share of the threshold unless the model chose another (models from before the
# choice, and the anomaly score): a risk wobbling around the threshold is one alert, not several.
DEFAULT_CLEAR_RATIO = 0.75
# The hysteresis ratios training may choose between with the threshold (on validation data).
CLEAR_RATIOS: tuple[float, ...] = (0.75, 0.5, 0.33)
KEYS = ("precision", "recall", "recall_with_precursors", "pr_auc", "median_lead_time_h", "p10_lead_time_h",
        "false_alarms_per_1000_gpu_days", "threshold", "gpus", "gpu_days", "failures")


@dataclass(frozen=True, slots=True)
class Episode:
    """One alert episode of one GPU (row index into the keys), first and last sample time above threshold."""

    gpu: int
    start_ns: int
    end_ns: int


@dataclass(slots=True)
class Scores:
    """The evaluation figures (the JSON keys of `fleetwatch evaluate`)."""

    precision: float | None
    recall: float | None
    recall_with_precursors: float | None
    pr_auc: float | None
    median_lead_time_h: float | None
    p10_lead_time_h: float | None
    false_alarms_per_1000_gpu_days: float
    threshold: float | None
    gpus: int
    gpu_days: float
    failures: int
    alerts: int = 0
    false_alarms: int = 0
    caught: int = 0
    with_precursors: int = 0
    caught_with_precursors: int = 0

    def as_dict(self) -> dict[str, float | int | None]:
        """The figures as a JSON-ready dict."""
        return asdict(self)


COUNTS = ("alerts", "false_alarms", "caught", "failures", "with_precursors", "caught_with_precursors", "gpus",
          "gpu_days")


def pool_counts(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several fleets' figures pooled from their counts (Scores as dicts); lead times and PR-AUC do not pool
    from counts and are left out."""
    n = {k: sum(p[k] for p in parts) for k in COUNTS}
    days = n["gpu_days"]
    return {**n,
            "precision": (n["alerts"] - n["false_alarms"]) / n["alerts"] if n["alerts"] else None,
            "recall": n["caught"] / n["failures"] if n["failures"] else None,
            "recall_with_precursors": (n["caught_with_precursors"] / n["with_precursors"]
                                       if n["with_precursors"] else None),
            "false_alarms_per_1000_gpu_days": 1000.0 * n["false_alarms"] / days if days > 0 else 0.0}


@dataclass(frozen=True, slots=True)
class TruthFailure:
    """A ground-truth GPU failure."""

    gpu: int
    ts_ns: int
    had_precursors: bool
    kind: str


def clear_level(threshold: float, clear_ratio: float) -> float:
    """The risk below which an alert that fired at `threshold` clears (the ratio capped at 1)."""
    return threshold * min(1.0, clear_ratio)


def episodes(risk: np.ndarray, valid: np.ndarray, ts_ns: np.ndarray, threshold: float,
             merge_s: float = DEFAULT_MERGE_S, clear_ratio: float = DEFAULT_CLEAR_RATIO,
             censored: np.ndarray | None = None) -> list[Episode]:
    """Alert episodes: an alert fires when the risk reaches the threshold and holds while it stays at or above
    clear_ratio × threshold (hysteresis, as alert rules clear); runs closer than merge_s are joined.

    `censored` (one flag per GPU) marks GPUs whose observation ends before the grid does without a failure
    (right-censored): an episode still standing at such a GPU's last valid sample is left out (unknown outcome).
    """
    hold = (risk >= clear_level(threshold, clear_ratio)) & valid
    fire = (risk >= threshold) & valid
    out: list[Episode] = []
    merge_ns = int(merge_s * 1e9)
    n_t = valid.shape[1]
    last_valid = np.where(valid.any(axis=1), n_t - 1 - np.argmax(valid[:, ::-1], axis=1), -1)
    for g in np.nonzero(fire.any(axis=1))[0]:
        h = hold[g]
        # runs of consecutive holding samples; a run is alerting from its first firing sample on
        run_id = np.cumsum(np.concatenate([[True], ~h[:-1]]) & h)
        first = np.full(int(run_id[-1]) + 1, len(h))
        fires = np.nonzero(fire[g])[0]
        np.minimum.at(first, run_id[fires], fires)
        idx = np.nonzero(h & (np.arange(len(h)) >= first[run_id]))[0]
        t = ts_ns[idx]
        breaks = np.nonzero(np.diff(t) > merge_ns)[0]
        starts = np.concatenate([[0], breaks + 1])
        ends = np.concatenate([breaks, [len(t) - 1]])
        cut = censored is not None and bool(censored[g]) and last_valid[g] < n_t - 1
        out.extend(Episode(int(g), int(t[a]), int(t[b])) for a, b in zip(starts, ends, strict=True)
                   if not (cut and idx[b] == last_valid[g]))
    return out


def censored_gpus(n_gpus: int, failures: Sequence[TruthFailure]) -> np.ndarray:
    """One flag per GPU row: True where no failure is known (its last horizon is censored)."""
    out = np.ones(n_gpus, dtype=bool)
    out[[f.gpu for f in failures if f.gpu < n_gpus]] = False
    return out


def score(eps: Sequence[Episode], failures: Sequence[TruthFailure], *, gpus: int, gpu_days: float,
          horizon_s: float = DEFAULT_HORIZON_S, threshold: float | None = None,
          pr_auc: float | None = None) -> Scores:
    """Precision, recall and lead times of alert episodes against failures."""
    h = int(horizon_s * 1e9)
    by_gpu: dict[int, list[TruthFailure]] = {}
    for f in failures:
        by_gpu.setdefault(f.gpu, []).append(f)
    true_eps = 0
    first_alert: dict[tuple[int, int], int] = {}
    for e in eps:
        hit = [f for f in by_gpu.get(e.gpu, []) if e.start_ns <= f.ts_ns <= e.end_ns + h]
        if hit:
            true_eps += 1
            for f in hit:
                k = (f.gpu, f.ts_ns)
                first_alert[k] = min(first_alert.get(k, e.start_ns), e.start_ns)
    leads = [(f.ts_ns - first_alert[(f.gpu, f.ts_ns)]) / 3.6e12 for f in failures if (f.gpu, f.ts_ns) in first_alert]
    caught = len(leads)
    with_pre = [f for f in failures if f.had_precursors]
    caught_pre = sum(1 for f in with_pre if (f.gpu, f.ts_ns) in first_alert)
    false_alarms = len(eps) - true_eps
    return Scores(
        precision=true_eps / len(eps) if eps else None,
        recall=caught / len(failures) if failures else None,
        recall_with_precursors=caught_pre / len(with_pre) if with_pre else None,
        pr_auc=pr_auc,
        median_lead_time_h=float(np.median(leads)) if leads else None,
        p10_lead_time_h=float(np.percentile(leads, 10)) if leads else None,
        false_alarms_per_1000_gpu_days=1000.0 * false_alarms / gpu_days if gpu_days > 0 else 0.0,
        threshold=threshold, gpus=gpus, gpu_days=gpu_days, failures=len(failures), alerts=len(eps),
        false_alarms=false_alarms, caught=caught, with_precursors=len(with_pre), caught_with_precursors=caught_pre)


def truth_failures(traces: Sequence[str | Path], keys: Sequence[SeriesKey], start_ns: int,
                   end_ns: int) -> list[TruthFailure]:
    """GPU failures of the ground-truth fault log within [start, end] (GPU rows indexed as in keys)."""
    row = {k: i for i, k in enumerate(keys)}
    out: list[TruthFailure] = []
    for t in traces:
        table = read_ground_truth(t)
        if table is None:
            raise FileNotFoundError(f"{t}: no ground truth (ground_truth/ground_truth.parquet); evaluation "
                                    "needs a simulated trace")
        fail_ts = table.column("failure").cast("int64").to_pylist()
        for i, r in enumerate(table.to_pylist()):
            if r["gpu_index"] is None or fail_ts[i] is None:
                continue
            g = row.get(SeriesKey(r["node"], r["entity"]))
            if g is not None and start_ns <= fail_ts[i] <= end_ns:
                out.append(TruthFailure(g, int(fail_ts[i]), bool(r["had_precursors"]), r["kind"]))
    out.sort(key=lambda f: (f.ts_ns, f.gpu))
    return out


def first_failure(failures: Sequence[TruthFailure], n_gpus: int) -> np.ndarray:
    """The first failure time of each GPU row (int64 max when none)."""
    out = np.full(n_gpus, np.iinfo(np.int64).max, dtype=np.int64)
    for f in failures:
        out[f.gpu] = min(out[f.gpu], f.ts_ns)
    return out


def sample_truth(ts_ns: np.ndarray, first: np.ndarray, horizon_s: float,
                 end_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, valid) from ground truth: valid samples precede the GPU's failure (negatives need a full horizon)."""
    h = int(horizon_s * 1e9)
    t = ts_ns[None, :]
    f = first[:, None]
    valid = t < f
    y = valid & (f - t <= h)
    valid &= y | (t + h <= end_ns)
    return y, valid


def pr_auc(risk: np.ndarray, y: np.ndarray, valid: np.ndarray) -> float | None:
    """Average precision of the sample-level risk (None without both classes)."""
    yy = y[valid]
    if yy.min(initial=0) == yy.max(initial=0):
        return None
    return float(average_precision_score(yy, risk[valid]))


def baseline_episodes(view: SeriesView, keys: Sequence[SeriesKey], start_ns: int, end_ns: int,
                      step_s: float) -> list[Episode]:
    """The dcgm-style rule: an alert at each double-bit ECC error, critical XID or GPU lost event."""
    row = {k: i for i, k in enumerate(keys)}
    eps: list[Episode] = []
    for e in view.events(start_ns, end_ns + 1, kinds=["xid", "gpu_lost"]):
        g = row.get(SeriesKey(e.node, e.entity))
        if g is not None and (e.kind == "gpu_lost" or xidcat.severity(e.code) == "critical"):
            eps.append(Episode(g, e.ts_ns, e.ts_ns))
    nodes = sorted({k.node for k in keys}) or None
    f = view.range("fleetwatch_gpu_ecc_dbe_aggregate_total", start_ns, end_ns, step_s, nodes=nodes,
                   stale_s=max(300.0, 2.5 * step_s))
    if f.keys:
        v = np.where(np.isnan(f.values), -np.inf, f.values)
        prev = np.maximum.accumulate(v, axis=1)
        rise = np.zeros_like(v, dtype=bool)
        rise[:, 1:] = (v[:, 1:] > prev[:, :-1]) & np.isfinite(prev[:, :-1])
        for i, j in zip(*np.nonzero(rise), strict=True):
            g = row.get(f.keys[i])
            if g is not None:
                eps.append(Episode(g, int(f.ts_ns[j]), int(f.ts_ns[j])))
    # one alert per GPU and failure: events of one incident (XID 48 + 63 + DBE counter) are one page
    eps.sort(key=lambda e: (e.gpu, e.start_ns))
    merged: list[Episode] = []
    for e in eps:
        if merged and merged[-1].gpu == e.gpu and e.start_ns - merged[-1].end_ns <= int(step_s * 1e9) * 2:
            merged[-1] = Episode(e.gpu, merged[-1].start_ns, max(merged[-1].end_ns, e.end_ns))
        else:
            merged.append(e)
    return merged


def baseline_scores(view: SeriesView, keys: Sequence[SeriesKey], failures: Sequence[TruthFailure], start_ns: int,
                    end_ns: int, step_s: float, gpu_days: float, horizon_s: float) -> Scores:
    """The rule baseline's figures; an alert at the failure itself counts as caught with lead time 0."""
    eps = baseline_episodes(view, keys, start_ns, end_ns, step_s)
    # The rule fires at (or a sample after) the failure: allow one sample of slack before its start.
    slack = int(step_s * 1e9)
    shifted = [Episode(e.gpu, e.start_ns - slack, e.end_ns) for e in eps]
    s = score(shifted, failures, gpus=len(keys), gpu_days=gpu_days, horizon_s=horizon_s)
    if s.median_lead_time_h is not None:            # by construction: the rule alerts when it fails
        s.median_lead_time_h = 0.0
        s.p10_lead_time_h = 0.0
    return s
