"""Feature helpers on literal arrays, and features of a trace with injected faults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collector.batch import Batch
from collector.series_view import RecentWindow, TraceView
from collector.trace_io import read_ground_truth
from predictor.failure.features import (
    COUNTERS,
    FEATURE_NAMES,
    LOOKBACK_S,
    compute_features,
    counter_increase,
    ffill,
    lag_diff,
    node_relative,
    rolling_mean,
    rolling_std,
)
from predictor.failure.pipeline import load_trace
from tests.conftest import sample_gpu

NAN = np.nan


def test_ffill_carries_last_value_and_backfills_the_start() -> None:
    a = np.array([[NAN, 1.0, NAN, 3.0, NAN], [NAN, NAN, NAN, NAN, NAN]])
    np.testing.assert_array_equal(ffill(a), [[1, 1, 1, 3, 3], [0, 0, 0, 0, 0]])


def test_counter_increase_ignores_resets_and_gaps() -> None:
    # 5, 7, (gap), 9, reset to 0, 2: increases 2 + 2 + 0 + 2 over the whole window
    a = np.array([[5.0, 7.0, NAN, 9.0, 0.0, 2.0]])
    np.testing.assert_array_equal(counter_increase(a, 6), [[0, 2, 2, 4, 4, 6]])
    np.testing.assert_array_equal(counter_increase(a, 2), [[0, 2, 2, 2, 2, 2]])


def test_lag_diff_and_rolling_stats() -> None:
    a = np.array([[1.0, 2.0, 4.0, 8.0]])
    np.testing.assert_array_equal(lag_diff(a, 2), [[0, 1, 3, 6]])
    m = rolling_mean(np.array([[1.0, NAN, 3.0, 5.0]]), 2)
    np.testing.assert_allclose(m, [[1, 1, 3, 4]])
    np.testing.assert_allclose(rolling_std(np.array([[2.0, 4.0, 4.0]]), 2), [[0, 1, 0]])


def test_node_relative_compares_with_peers_on_the_same_node() -> None:
    temps = np.array([[50.0], [52.0], [70.0], [40.0], [41.0]])
    rel = node_relative(temps, ["a", "a", "a", "b", "b"])
    np.testing.assert_allclose(rel[:, 0], [-2.0, 0.0, 18.0, -0.5, 0.5])


def test_error_counters_are_read_over_three_days() -> None:
    # 40 PCIe replays two days ago, none since: the 24 h rate has forgotten them, the 72 h rate has not.
    hour = 3600 * 10**9
    now = 100 * hour
    window = RecentWindow(max_age_s=LOOKBACK_S + 3600.0)
    gpu = sample_gpu("node-0", 0)
    for h in range(now // hour - 96, now // hour + 1):
        b = Batch("gpu", h * hour)
        b.add(COUNTERS["pcie_replay"][0], gpu, 0.0 if h < now // hour - 48 else 40.0)
        window.add(b)
    frame = compute_features(window, now, now, 900.0)
    x = dict(zip(FEATURE_NAMES, frame.X[0, -1].tolist(), strict=True))
    assert LOOKBACK_S == 72 * 3600.0
    assert x["pcie_replay_rate_24h"] == 0.0
    assert x["pcie_replay_rate_72h"] == pytest.approx(40.0 / 72)


@pytest.fixture(scope="module")
def loaded(train_trace: Path):  # type: ignore[no-untyped-def]
    return load_trace(train_trace, 900.0, 1)


def test_faulty_gpus_stand_out_before_they_fail(loaded, train_trace: Path) -> None:  # type: ignore[no-untyped-def]
    td = loaded
    assert td.frame.X.shape == (64, len(td.frame.ts_ns), len(FEATURE_NAMES))
    truth = read_ground_truth(train_trace).to_pylist()
    row = {(k.node, k.entity): i for i, k in enumerate(td.frame.keys)}
    f = {n: i for i, n in enumerate(FEATURE_NAMES)}
    checked = 0
    for r in truth:
        if r["kind"] != "hbm-degradation":
            continue
        g = row[(r["node"], r["entity"])]
        fail_ns = int(r["failure"].timestamp() * 1e9)
        j = int(np.searchsorted(td.frame.ts_ns, fail_ns)) - 1        # the last sample before the failure
        sbe = td.frame.X[:, j, f["ecc_sbe_rate_6h"]]
        # the degrading GPU's correctable-ECC rate tops the fleet's at that moment
        assert sbe[g] == sbe.max() and sbe[g] > 0, r
        checked += 1
    assert checked >= 3


def test_features_use_only_the_past(train_trace: Path) -> None:
    view = TraceView(train_trace)
    lo, hi = view.span()
    from predictor.failure.features import compute_features

    mid = lo + (hi - lo) // 2
    full = compute_features(view, lo, hi, 900.0)
    cut = compute_features(view, lo, mid, 900.0)
    n = len(cut.ts_ns)
    # features at times <= mid do not change when later data exists
    np.testing.assert_allclose(full.X[:, :n], cut.X, equal_nan=True)


def test_prefetch_serves_the_same_frames_as_per_metric_reads(train_trace: Path) -> None:
    # TraceView.prefetch (added for this predictor) must not change what range() returns
    plain, pre = TraceView(train_trace), TraceView(train_trace)
    lo, hi = plain.span()
    metrics = ["fleetwatch_gpu_temperature_celsius", "fleetwatch_gpu_ecc_sbe_aggregate_total"]
    pre.prefetch(metrics)
    for m in metrics:
        a = plain.range(m, lo + 3600 * 10**9, hi, 900.0, nodes=["node-1", "node-2"])
        b = pre.range(m, lo + 3600 * 10**9, hi, 900.0, nodes=["node-1", "node-2"])
        assert a.keys == b.keys and len(a.keys) == 16
        np.testing.assert_array_equal(a.values, b.values)
