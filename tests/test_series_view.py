"""The series view (trace and in-memory window): grid, lookback, gaps, events, entities."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from collector.batch import Batch, Event
from collector.series_view import RecentWindow, SeriesKey, TraceView, grid, resample
from collector.sim.offline import DEFAULT_START_NS, generate_trace
from tests.conftest import sample_gpu

NS = 10**9
POWER = "fleetwatch_gpu_power_watts"


def test_resample_takes_latest_fresh_sample_and_leaves_gaps() -> None:
    ts = np.array([0, 10, 20, 100], dtype=np.int64) * NS
    vals = np.array([1.0, 2.0, 3.0, 4.0])
    points = grid(0, 120 * NS, 10.0)
    out = resample(ts, vals, points, 30 * NS)
    assert out[0] == 1 and out[1] == 2 and out[2] == 3 and out[5] == 3     # at 50 s: 30 s old, still fresh
    assert math.isnan(out[6]) and math.isnan(out[9])                        # 40..90 s: the gap stays a gap
    assert out[10] == 4 and out[12] == 4
    with pytest.raises(ValueError, match="step"):
        grid(0, 10, 0)


def test_trace_view_reads_simulated_fleet(tmp_path: Path) -> None:
    generate_trace(tmp_path / "t", nodes=2, gpus_per_node=2, days=0.25, seed=3, interval_s=60)
    view = TraceView(tmp_path / "t")
    lo, hi = view.span()
    assert lo == DEFAULT_START_NS and hi > lo + 5 * 3600 * NS
    f = view.range(POWER, lo, lo + 3600 * NS, 60.0)
    assert len(f.keys) == 4 and f.values.shape == (4, 61)
    assert np.all(np.isfinite(f.values)) and np.all((f.values > 20) & (f.values < 1000))
    assert {k.node for k in f.keys} == set(view.entities()[k].node for k in f.keys)
    only = view.range(POWER, lo, lo + 600 * NS, 60.0, nodes=[f.keys[0].node])
    assert {k.node for k in only.keys} == {f.keys[0].node}
    latest = view.latest(POWER, lo + 1800 * NS)
    assert latest[f.keys[0]] == f.row(f.keys[0])[30]
    with pytest.raises(KeyError, match="not in the catalogue"):
        view.range("no_such_metric", lo, hi, 60.0)


def test_trace_view_accepts_the_service_data_dir(tmp_path: Path) -> None:
    generate_trace(tmp_path / "data" / "traces", nodes=1, gpus_per_node=1, days=0.05, seed=1, interval_s=60)
    assert TraceView(tmp_path / "data").span() is not None


def test_recent_window_keeps_recent_readings_and_events() -> None:
    gpu = sample_gpu()
    win = RecentWindow(max_age_s=100)
    for i in range(300):
        b = Batch("gpu", i * NS)
        b.add(POWER, gpu, float(i))
        if i == 250:
            b.events.append(Event(i * NS, gpu.node, gpu.id, "xid", 79, "fell off the bus"))
        win.add(b)
    key = SeriesKey(gpu.node, gpu.id)
    assert win.latest(POWER, 299 * NS) == {key: 299.0}
    f = win.range(POWER, 150 * NS, 299 * NS, 10.0, stale_s=5)
    assert math.isnan(f.row(key)[0])            # older than max_age: pruned
    assert f.row(key)[-1] == 290.0
    assert [e.code for e in win.events(0, 300 * NS)] == [79]
    assert win.entities()[key] is gpu
    stale = Batch("gpu", 10 * NS)               # time going backwards is dropped, not stored out of order
    stale.add(POWER, gpu, -1.0)
    win.add(stale)
    assert win.latest(POWER, 299 * NS) == {key: 299.0}
