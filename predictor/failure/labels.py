"""Failure labels from observable events and metrics: when each GPU failed, and which samples precede a failure.

A failure is an uncorrectable event: a double-bit ECC error (the DBE counter rising), an XID among
48/79/94/95/64/74/119/120 or any code whose catalogue action is RESET_GPU or worse, the GPU falling off
the bus (a gpu_lost event or the fleetwatch_gpu_lost gauge), or the GPU reaching its thermal shutdown
temperature. Only what a real fleet records is read here, never the simulator's ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from collector import xid as xidcat
from collector.series_view import SeriesKey, SeriesView

# Immediate catalogue actions that take the GPU out of service ("RESET_GPU or worse").
FAILURE_ACTIONS = frozenset({"RESET_GPU", "RESTART_VM", "RESTART_BM", "CONTACT_SUPPORT"})
EXPLICIT_XIDS = frozenset({48, 79, 94, 95, 64, 74, 119, 120})
FAILURE_XIDS: frozenset[int] = EXPLICIT_XIDS | frozenset(
    c for c, info in xidcat.catalogue().items() if info.immediate_action in FAILURE_ACTIONS)
# H100 SXM shutdown temperature (collector/data/nvml-profiles/h100-80gb-hbm3.json, shutdown_c).
SHUTDOWN_C = 95.0
DEFAULT_HORIZON_S = 24 * 3600.0
LABEL_METRICS: tuple[str, ...] = ("fleetwatch_gpu_ecc_dbe_aggregate_total", "fleetwatch_gpu_lost",
                                  "fleetwatch_gpu_temperature_celsius")


def failure_times(view: SeriesView, keys: Sequence[SeriesKey], start_ns: int, end_ns: int,
                  step_s: float = 600.0, shutdown_c: float = SHUTDOWN_C) -> dict[SeriesKey, int]:
    """The first observed failure time (ns) of each GPU in [start, end]; GPUs that did not fail are absent."""
    wanted = set(keys)
    first: dict[SeriesKey, int] = {}

    def note(k: SeriesKey, ts: int) -> None:
        if k in wanted and (k not in first or ts < first[k]):
            first[k] = ts

    for e in view.events(start_ns, end_ns + 1, kinds=["xid", "gpu_lost"]):
        if e.kind == "gpu_lost" or e.code in FAILURE_XIDS:
            note(SeriesKey(e.node, e.entity), e.ts_ns)
    stale = max(300.0, 2.5 * step_s)
    nodes = sorted({k.node for k in keys}) or None
    for metric, test in zip(LABEL_METRICS, ("rise", "positive", "hot"), strict=True):
        f = view.range(metric, start_ns, end_ns, step_s, nodes=nodes, stale_s=stale)
        if not f.keys:
            continue
        v = f.values
        if test == "rise":
            filled = np.where(np.isnan(v), -np.inf, v)
            prev = np.maximum.accumulate(filled, axis=1)
            hit = np.zeros_like(v, dtype=bool)
            hit[:, 1:] = (filled[:, 1:] > prev[:, :-1]) & np.isfinite(prev[:, :-1])
        elif test == "positive":
            hit = np.nan_to_num(v) > 0
        else:
            hit = np.nan_to_num(v) >= shutdown_c
        rows = np.nonzero(hit.any(axis=1))[0]
        for i in rows:
            note(f.keys[i], int(f.ts_ns[int(np.argmax(hit[i]))]))
    return first


def sample_labels(keys: Sequence[SeriesKey], ts_ns: np.ndarray, failures: dict[SeriesKey, int],
                  horizon_s: float = DEFAULT_HORIZON_S, end_ns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(y, valid) of shape (G, T): y=1 when a failure follows within the horizon; valid excludes samples at
    or after the GPU's failure and, when end_ns is given, negatives whose horizon reaches past the data."""
    h = int(horizon_s * 1e9)
    fail = np.array([failures.get(k, np.iinfo(np.int64).max) for k in keys], dtype=np.int64)[:, None]
    t = ts_ns[None, :]
    before = t < fail
    y = before & (fail - t <= h)
    valid = before.copy()
    if end_ns is not None:
        valid &= y | (t + h <= end_ns)
    return y, valid
