"""Labels from observable events and metrics agree with the simulator's ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from collector.series_view import SeriesKey, TraceView
from collector.trace_io import read_ground_truth
from predictor.failure.features import gpu_keys
from predictor.failure.labels import FAILURE_XIDS, failure_times, sample_labels


def test_failure_xids_cover_the_issue_list_and_reset_actions() -> None:
    assert {48, 79, 94, 95, 64, 74, 119, 120} <= FAILURE_XIDS
    assert 62 in FAILURE_XIDS          # catalogue action RESET_GPU
    assert 63 not in FAILURE_XIDS and 43 not in FAILURE_XIDS     # row remap event, IGNORE


def test_observed_failures_match_ground_truth(train_trace: Path) -> None:
    view = TraceView(train_trace)
    lo, hi = view.span()
    keys = gpu_keys(view, lo, hi, 900.0)
    seen = failure_times(view, keys, lo, hi, 900.0)
    truth = {SeriesKey(r["node"], r["entity"]): int(r["failure"].timestamp() * 1e9)
             for r in read_ground_truth(train_trace).to_pylist()
             if r["failure"] is not None and r["gpu_index"] is not None}
    assert set(seen) == set(truth)
    for k, t in truth.items():
        assert abs(seen[k] - t) <= 900 * 10**9, k         # within one sample


def test_sample_labels_mark_the_horizon_before_a_failure() -> None:
    k = [SeriesKey("n", "a"), SeriesKey("n", "b")]
    ts = np.arange(0, 10) * 3600 * 10**9
    y, valid = sample_labels(k, ts, {k[0]: 6 * 3600 * 10**9}, horizon_s=3 * 3600.0, end_ns=int(ts[-1]))
    assert y[0].tolist() == [False, False, False, True, True, True, False, False, False, False]
    assert valid[0].tolist() == [True] * 6 + [False] * 4         # nothing at or after the failure
    assert not y[1].any()
    assert valid[1].tolist() == [True] * 7 + [False] * 3         # negatives need a full horizon of data
