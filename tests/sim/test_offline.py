"""Offline trace generation: layout, schemas, sort order, units, lost GPUs, events and ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from collector.catalogue import BY_NAME
from collector.sim.faults import parse_inject
from collector.sim.offline import TraceSummary, generate_trace
from collector.trace import EVENTS_SCHEMA, GROUND_TRUTH_SCHEMA, METRICS_SCHEMA

S = 10**9
EVENING = (1_767_225_600 + 18 * 3600) * S       # 2026-01-01T18:00Z: 1.5 days span three UTC dates


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TraceSummary, list[tuple[int, int]]]:
    """A 1.5-day trace of 3 nodes x 4 GPUs with three injected faults, written once for the module."""
    out = tmp_path_factory.mktemp("trace")
    calls: list[tuple[int, int]] = []
    summary = generate_trace(out, nodes=3, gpus_per_node=4, days=1.5, seed=5, interval_s=600, fault_rate=0.0,
                             injects=[parse_inject("gpu-lost@node-1/2+2h"),
                                      parse_inject("ib-link-flap@node-2/3+3h"),
                                      parse_inject("thermal@node-0/0+20h")],
                             start_ns=EVENING, progress=lambda d, t: calls.append((d, t)))
    return out, summary, calls


def strings(table: pa.Table, name: str) -> np.ndarray:
    """A (dictionary) column as a NumPy array of str."""
    return np.asarray(table.column(name).cast(pa.string()).to_pylist())


def test_layout_one_file_per_utc_day_and_progress(trace) -> None:
    out, summary, calls = trace
    metric_files = sorted(p.relative_to(out).as_posix() for p in (out / "metrics").rglob("*.parquet"))
    assert metric_files == [f"metrics/date=2026-01-0{d}/part-0.parquet" for d in (1, 2, 3)]
    event_files = sorted(p.relative_to(out).as_posix() for p in (out / "events").rglob("*.parquet"))
    assert event_files == [f"events/date=2026-01-0{d}/part-0.parquet" for d in (1, 2, 3)]
    assert (out / "ground_truth" / "ground_truth.parquet").is_file()
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]               # written atomically
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert summary.samples == 216 and summary.gpus == 12 and summary.nodes == 3
    assert summary.end_ns == EVENING + 215 * 600 * S
    assert len(summary.files) == 8          # 3 metrics, 3 events, ground truth, entities


def test_metrics_files_match_schema_and_sort_order(trace) -> None:
    out, summary, _ = trace
    total = 0
    for path in sorted((out / "metrics").rglob("*.parquet")):
        assert pq.read_metadata(path).schema.to_arrow_schema().equals(METRICS_SCHEMA, check_metadata=True)
        t = pq.read_table(path)
        assert t.schema.equals(METRICS_SCHEMA, check_metadata=True)
        total += t.num_rows
        day = path.parent.name.removeprefix("date=")
        ts = t.column("ts").cast(pa.int64()).to_numpy()
        dates = pc.strftime(t.column("ts"), format="%Y-%m-%d")
        assert set(dates.to_pylist()) == {day}
        keys = list(zip(strings(t, "node"), strings(t, "entity"), strings(t, "metric"), ts, strict=True))
        assert keys == sorted(keys)
        assert len(set(keys)) == len(keys)
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert total == summary.metric_rows


def test_recorded_metrics_units_and_entities(trace) -> None:
    out, _, _ = trace
    t = pq.read_table(out / "metrics" / "date=2026-01-02" / "part-0.parquet")
    metric, unit, entity = strings(t, "metric"), strings(t, "unit"), strings(t, "entity")
    names = set(metric)
    assert all(BY_NAME[m].record for m in names)
    assert {"fleetwatch_gpu_power_watts", "fleetwatch_gpu_energy_joules_total", "fleetwatch_gpu_lost",
            "fleetwatch_gpu_ecc_dbe_volatile_total", "fleetwatch_gpu_remapped_rows_pending",
            "fleetwatch_gpu_nvlink_crc_errors_total", "fleetwatch_gpu_dram_active_ratio",
            "fleetwatch_infiniband_port_link_downed_total", "fleetwatch_node_power_watts"} <= names
    assert not any(BY_NAME[m].entity == "nvlink" for m in names)             # per-link series stay live-only
    for m in names:
        assert set(unit[metric == m]) == {BY_NAME[m].unit}
    ib = set(entity[np.char.startswith(metric, "fleetwatch_infiniband")])
    assert ib == {f"mlx5_{p}/1" for p in range(8)}
    assert set(entity[metric == "fleetwatch_node_power_watts"]) == {"node-0", "node-1", "node-2"}
    v = t.column("value").to_numpy()
    util = v[metric == "fleetwatch_gpu_utilization_ratio"]
    assert util.min() >= 0 and util.max() <= 1 and util.max() > 0.5
    power = v[metric == "fleetwatch_gpu_power_watts"]
    assert power.min() > 60 and power.max() <= 700
    assert np.all(v[metric == "fleetwatch_gpu_sm_clock_hertz"] >= 345e6)
    temp = v[metric == "fleetwatch_gpu_temperature_celsius"]
    assert temp.min() > 15 and temp.max() < 100


def test_counters_are_monotone_per_series(trace) -> None:
    out, _, _ = trace
    t = pq.read_table(out / "metrics")                                          # all days, hive partitions
    t = pa.table({name: t.column(name).cast(pa.string()) for name in ("node", "entity", "metric")}
                 | {"ts": t.column("ts"), "value": t.column("value")})
    t = t.sort_by([("node", "ascending"), ("entity", "ascending"), ("metric", "ascending"), ("ts", "ascending")])
    metric, v = strings(t, "metric"), t.column("value").to_numpy()
    entity = np.char.add(strings(t, "node"), strings(t, "entity"))         # IB port names repeat per node
    for name in ("fleetwatch_gpu_energy_joules_total", "fleetwatch_infiniband_port_data_received_bytes_total",
                 "fleetwatch_gpu_nvlink_bandwidth_total"):
        sel = metric == name
        e, x = entity[sel], v[sel]
        same = e[1:] == e[:-1]
        assert np.all(np.diff(x)[same] >= 0), name


def test_lost_gpu_reports_only_lost_after_failure(trace) -> None:
    out, _, _ = trace
    gt = pq.read_table(out / "ground_truth" / "ground_truth.parquet")
    lost = gt.filter(pc.equal(gt.column("kind"), "gpu-lost"))
    uuid = lost.column("entity")[0].as_py()
    fail_ns = lost.column("failure").cast(pa.int64())[0].as_py()
    assert fail_ns == EVENING + 2 * 3600 * S + 30 * S                     # injected lead: 30 s of PCIe replays
    t = pq.read_table(out / "metrics" / "date=2026-01-01" / "part-0.parquet")
    t = t.filter(pc.equal(t.column("entity").cast(pa.string()), uuid))
    ts = t.column("ts").cast(pa.int64()).to_numpy()
    metric, v = strings(t, "metric"), t.column("value").to_numpy()
    after = ts >= fail_ns
    assert after.any() and (~after).any()
    assert set(metric[after]) == {"fleetwatch_gpu_lost"} and np.all(v[after] == 1)
    assert len(set(metric[~after])) > 30
    assert np.all(v[(metric == "fleetwatch_gpu_lost") & ~after] == 0)


def test_events_and_ground_truth_files(trace) -> None:
    out, summary, _ = trace
    events = []
    for path in sorted((out / "events").rglob("*.parquet")):
        t = pq.read_table(path)
        assert t.schema.equals(EVENTS_SCHEMA, check_metadata=True)
        events += list(zip(strings(t, "kind"), t.column("code").to_pylist(), strings(t, "node"), strict=True))
    assert ("xid", 79, "node-1") in events and ("gpu_lost", 79, "node-1") in events
    assert ("ib_link_down", 1, "node-2") in events and ("ib_link_up", 4, "node-2") in events
    assert len(events) == summary.event_rows
    gt = pq.read_table(out / "ground_truth" / "ground_truth.parquet")
    assert gt.schema.equals(GROUND_TRUTH_SCHEMA, check_metadata=True)
    assert sorted(gt.column("kind").to_pylist()) == ["gpu-lost", "ib-link-flap", "thermal"]
    assert gt.column("had_precursors").to_pylist() == [True, True, True]
    assert summary.faults == 3 and summary.failures == 3


def test_ground_truth_stays_out_of_metrics_and_events(trace) -> None:
    out, _, _ = trace
    gt_cols = {f.name for f in GROUND_TRUTH_SCHEMA} - {"node", "entity"}
    for path in (out / "metrics").rglob("*.parquet"):
        schema = pq.read_schema(path)
        assert not gt_cols & set(schema.names)
        assert set(schema.metadata) == {b"fleetwatch.schema_version", b"fleetwatch.table"}
        names = set(strings(pq.read_table(path, columns=["metric"]), "metric"))
        assert not any(w in n for n in names for w in ("fault", "onset", "truth", "precursor", "cause"))
    t = pq.read_table(out / "events")
    # The thermal fault has no observable event: nothing in the events table may reveal it.
    assert not any("thermal" in d or "injected" in d for d in t.column("detail").to_pylist())


def test_same_seed_same_trace(tmp_path: Path) -> None:
    a = generate_trace(tmp_path / "a", 2, 2, 0.25, seed=9, interval_s=900, fault_rate=100.0)
    b = generate_trace(tmp_path / "b", 2, 2, 0.25, seed=9, interval_s=900, fault_rate=100.0)
    for fa, fb in zip(a.files, b.files, strict=True):
        assert pq.read_table(fa).equals(pq.read_table(fb))
    with pytest.raises(ValueError, match="days"):
        generate_trace(tmp_path / "c", 1, 1, 0, seed=1)
