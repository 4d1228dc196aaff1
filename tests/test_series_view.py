"""The series view (trace, in-memory window, Prometheus): grid, lookback, gaps, events, entities."""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from collector.batch import Batch, Event
from collector.series_view import PrometheusView, RecentWindow, SeriesKey, TraceView, grid, resample
from collector.sim.offline import DEFAULT_START_NS, generate_trace
from tests.conftest import require_tool, sample_gpu
from tests.test_e2e_prometheus import free_port, http_get, stop, wait_until

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


def test_prometheus_view_reads_a_day_at_a_fine_step_in_chunks(tmp_path: Path) -> None:
    """A 24 h window at 5 s is 17,281 points: past Prometheus' 11,000-point limit, so the view must chunk."""
    promtool, prometheus = require_tool("promtool"), require_tool("prometheus")
    end_s = (int(time.time()) // 60) * 60 - 3600
    start_s = end_s - 86400
    lines = ["# HELP fleetwatch_gpu_temperature_celsius GPU temperature.",
             "# TYPE fleetwatch_gpu_temperature_celsius gauge"]
    for t in range(start_s, end_s + 1, 60):           # one sample a minute: the value is the minute of the day
        lines.append(f'fleetwatch_gpu_temperature_celsius{{node="n1",gpu="0",uuid="GPU-1"}} '
                     f"{(t - start_s) // 60} {t}")
    src = tmp_path / "day.om"
    src.write_text("\n".join(lines) + "\n# EOF\n")
    tsdb = tmp_path / "tsdb"
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(src), str(tsdb)], check=True,
                   capture_output=True)
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global: {}\n")
    prom = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tsdb}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_get(url + "/-/ready")[0] == 200, 60, "prometheus ready", prom)
        view = PrometheusView(url)
        f = view.range("fleetwatch_gpu_temperature_celsius", start_s * 10**9, end_s * 10**9, 5.0, stale_s=120.0)
        assert len(f.ts_ns) == 86400 // 5 + 1 and len(f.keys) == 1
        minute = (f.ts_ns // 10**9 - start_s) // 60
        # every grid point carries the sample of its minute: nothing lost or shifted at chunk boundaries
        assert np.array_equal(f.values[0], minute.astype(float))
    finally:
        stop(prom)
