"""The series-view reads the engine leans on: the all-series resampling and RecentWindow.latest agree with the
one-series-at-a-time definitions, and extra labels (quantile, xid) keep series apart."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.batch import Batch
from collector.series_view import NS, RecentWindow, SeriesKey, _frame, resample
from tests.conftest import sample_gpu

_series = st.lists(st.lists(st.integers(0, 400), max_size=12, unique=True).map(sorted), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None)
@given(_series, st.integers(0, 400), st.integers(1, 60), st.integers(1, 30), st.integers(1, 200))
def test_frame_resamples_like_one_series_at_a_time(series: list[list[int]], start: int, step: int, points: int,
                                                   stale: int) -> None:
    data = {SeriesKey("n", f"e{i}"): (np.array(ts, dtype=np.int64) * NS, np.arange(len(ts), dtype=float) + i)
            for i, ts in enumerate(series)}
    grid = np.arange(start, start + step * points, step, dtype=np.int64) * NS
    got = _frame("fleetwatch_gpu_power_watts", data, grid, float(stale))
    for i, k in enumerate(got.keys):
        want = resample(data[k][0], data[k][1], grid, stale * NS)
        np.testing.assert_array_equal(got.values[i], want)


def test_latest_matches_range_and_extra_labels_stay_apart() -> None:
    w = RecentWindow()
    g = sample_gpu()
    for t in range(5):
        b = Batch("t", (1000 + 10 * t) * NS)
        b.add("fleetwatch_gpu_power_watts", g, 100.0 + t)
        b.add("fleetwatch_gpu_xid_errors_total", g, 1.0 + t, ("79",))
        b.add("fleetwatch_gpu_xid_errors_total", g, 5.0, ("48",))
        if t < 2:
            b.add("fleetwatch_gpu_temperature_celsius", g, 50.0)
        w.add(b)
    for at, stale in ((1040, 300.0), (1025, 300.0), (1040, 5.0), (1100, 30.0), (999, 300.0)):
        for metric in ("fleetwatch_gpu_power_watts", "fleetwatch_gpu_xid_errors_total",
                       "fleetwatch_gpu_temperature_celsius"):
            f = w.range(metric, at * NS, at * NS, 1.0, stale_s=stale)
            via_range = {k: float(v) for k, v in zip(f.keys, f.values[:, 0], strict=True) if not np.isnan(v)}
            assert w.latest(metric, at * NS, stale_s=stale) == via_range, (metric, at, stale)
    xids = w.latest("fleetwatch_gpu_xid_errors_total", 1040 * NS)
    assert xids == {SeriesKey("node-0", g.id, ("79",)): 5.0, SeriesKey("node-0", g.id, ("48",)): 5.0}
    assert set(w.entities()) == {SeriesKey("node-0", g.id)}
