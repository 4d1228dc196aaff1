"""DuckDB aggregations over traces: hand-computed values, a NumPy reference on a simulated trace, edge cases."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from collector.sim.faults import parse_inject
from collector.sim.offline import generate_trace
from collector.trace_io import TraceError, read_events, read_metrics
from fleetwatch.analysis.query import (
    REASONS,
    THROTTLE_MASK,
    analyze,
    connect,
    fleet_power_series,
    format_time,
    gpu_series,
    parse_time,
    to_records,
)
from tests.analysis.tracefiles import (
    CLOCK_REASONS,
    DAY0,
    DBE_VOL,
    ENERGY,
    MEMTEMP,
    POWER,
    REMAP_C,
    SBE_VOL,
    TEMP,
    UTIL,
    S,
    metrics_table,
    series,
    uuid_of,
    write_entities,
    write_events,
    write_metrics,
)

A, B, C = uuid_of(0, 0), uuid_of(0, 1), uuid_of(1, 0)
JOULES_PER_KWH = 3.6e6


def _fleet(trace: Path) -> None:
    """Node-0 with GPUs A (energy counter with a reset, throttling, ECC) and B (no counter, a gap)."""
    rows = []
    rows += series("node-0", A, POWER, [150, 200, 200, 100, 50, 50, 300])
    rows += series("node-0", A, UTIL, [0, 1, 1, 0.5, 0, 0, 1])
    rows += series("node-0", A, ENERGY, [1000, 2000, 3000, 500, 1500, 2500, 4000])
    rows += series("node-0", A, CLOCK_REASONS, [0, 0x4, 0x4 | 0x40, 0x1, 0x2, 0, 0x80])
    rows += series("node-0", A, TEMP, [30, 40, 50, 60, 50, 40, 35])
    rows += series("node-0", A, MEMTEMP, [40, 50, 60, 70, 60, 50, 45])
    rows += series("node-0", A, SBE_VOL, [0, 0, 1, 1, 3, 0, 2])
    rows += series("node-0", A, DBE_VOL, [0] * 7)
    rows += series("node-0", A, REMAP_C, [2] * 7)
    rows += series("node-0", B, POWER, [100, 100, 200, 0, 0, 0, 100, 100], skip=(3, 4, 5))
    rows += series("node-0", B, UTIL, [0.5] * 8, skip=(3, 4, 5))
    rows += series("node-0", B, CLOCK_REASONS, [0] * 8, skip=(3, 4, 5))
    write_metrics(trace, rows)
    write_events(trace, [(DAY0 + 15 * S, "node-0", A, "xid", 48, "double-bit ECC error"),
                         (DAY0 + 45 * S, "node-0", A, "xid", 63, "row remap"),
                         (DAY0 + 46 * S, "node-0", A, "gpu_lost", 79, "GPU is lost")])
    write_entities(trace, [(0, 0), (0, 1)])


def _other(trace: Path) -> None:
    """A second trace: node-1 with GPU C at 100 W, fully used, one XID."""
    write_metrics(trace, series("node-1", C, POWER, [100] * 7) + series("node-1", C, UTIL, [1.0] * 7))
    write_events(trace, [(DAY0 + 5 * S, "node-1", C, "xid", 79, "fallen off the bus")])
    write_entities(trace, [(1, 0)])


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    trace = tmp_path / "fleet"
    _fleet(trace)
    return trace


def _by_uuid(table: pa.Table) -> dict[str, dict[str, object]]:
    return {r["uuid"]: r for r in table.to_pylist()}


def test_per_gpu_values_match_hand_computation(fleet: Path) -> None:
    rows = _by_uuid(analyze([fleet]))
    a, b = rows[A], rows[B]
    assert (a["node"], a["gpu"], b["gpu"]) == ("node-0", 0, 1)
    assert a["samples"] == 7 and b["samples"] == 5
    # counter: +1000 +1000, reset to 500 counts 500, +1000 +1000 +1500
    assert a["energy_kwh"] == pytest.approx(6000 / JOULES_PER_KWH)
    # trapezoid 1000 + 1500, the 40 s gap (> 3 × 10 s) skipped, then 1000
    assert b["energy_kwh"] == pytest.approx(3500 / JOULES_PER_KWH)
    assert a["power_mean_w"] == pytest.approx(1050 / 7)
    assert a["power_max_w"] == 300
    assert a["power_p95_w"] == pytest.approx(np.percentile([150, 200, 200, 100, 50, 50, 300], 95))
    assert a["util_mean"] == pytest.approx(3.5 / 7)
    assert (a["temp_max_c"], a["mem_temp_max_c"]) == (60, 70)
    assert a["temp_mean_c"] == pytest.approx(305 / 7)
    # reasons per 10 s sample: power cap, power cap + HW thermal, idle, app clocks, power brake
    assert a["throttled_s"] == pytest.approx(30)
    assert a["throttled_s_sw_power_cap"] == pytest.approx(20)
    assert a["throttled_s_hw_thermal_slowdown"] == pytest.approx(10)
    assert a["throttled_s_hw_power_brake_slowdown"] == pytest.approx(10)
    assert a["throttled_s_applications_clocks_setting"] == pytest.approx(10)
    assert a["throttled_s_display_clock_setting"] == 0
    assert "throttled_s_gpu_idle" not in rows[A]
    assert b["throttled_s"] == 0
    # ECC: +1, +2, reset to 0, +2; remaps constant; replays never reported
    assert (a["ecc_corrected"], a["ecc_uncorrected"], a["remapped_rows_correctable"]) == (5, 0, 0)
    assert a["pcie_replays"] is None and b["ecc_corrected"] is None
    assert a["xid_count"] == 2 and b["xid_count"] == 0
    span_days = 70 / 86400          # 60 s between first and last sample + one 10 s interval
    assert a["xid_rate_per_day"] == pytest.approx(2 / span_days)
    assert a["ecc_corrected_per_day"] == pytest.approx(5 / span_days)
    # util < 5 % above 100 W: only the first sample (150 W, idle)
    assert a["idle_powered_s"] == pytest.approx(10)
    assert a["joules_per_util_hour"] == pytest.approx(6000 / (35 / 3600))
    assert a["start"] == pd_ts(DAY0) and a["end"] == pd_ts(DAY0 + 60 * S)


def pd_ts(ns: int) -> object:
    """The Python value pyarrow gives for a timestamp[ns, UTC] scalar."""
    return pa.scalar(ns, pa.timestamp("ns", tz="UTC")).as_py()


def test_idle_power_threshold_is_a_parameter(fleet: Path) -> None:
    rows = _by_uuid(analyze([fleet], idle_power_w=40))
    assert rows[A]["idle_powered_s"] == pytest.approx(30)        # 150 W, 50 W, 50 W at 0 % util


def test_json_records_have_the_contract_columns_and_iso_times(fleet: Path) -> None:
    rec = to_records(analyze([fleet]))[0]
    for col in ("node", "gpu", "uuid", "start", "end", "samples", "energy_kwh", "power_mean_w", "power_p95_w",
                "power_max_w", "util_mean", "temp_max_c", "throttled_s", "xid_count", "ecc_corrected",
                "ecc_uncorrected", "temp_mean_c", "mem_temp_max_c", "remapped_rows_correctable",
                "remapped_rows_uncorrectable", "retired_pages", "pcie_replays", "nvlink_crc_errors",
                "xid_rate_per_day", "ecc_corrected_per_day", "idle_powered_s", "joules_per_util_hour",
                *(f"throttled_s_{r}" for r in REASONS)):
        assert col in rec, col
    assert rec["start"] == "2026-01-01T00:00:00Z" and rec["end"] == "2026-01-01T00:01:00Z"
    assert THROTTLE_MASK == 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x80


def test_time_range_restarts_counters_at_the_first_selected_sample(fleet: Path) -> None:
    rows = _by_uuid(analyze([fleet], start_ns=DAY0 + 20 * S, end_ns=DAY0 + 50 * S))
    a = rows[A]
    assert a["samples"] == 3
    assert a["energy_kwh"] == pytest.approx(1500 / JOULES_PER_KWH)     # reset → 500, then +1000
    assert a["xid_count"] == 1                                           # only the one at 45 s
    assert rows[B]["samples"] == 1 and rows[B]["energy_kwh"] == 0    # one sample: nothing to integrate


def test_windows_partition_the_totals(fleet: Path) -> None:
    whole = _by_uuid(analyze([fleet]))
    win = analyze([fleet], window_s=30)
    assert win.column_names[3] == "window_start"
    a = [r for r in win.to_pylist() if r["uuid"] == A]
    assert [r["window_start"] for r in a] == [pd_ts(DAY0), pd_ts(DAY0 + 30 * S), pd_ts(DAY0 + 60 * S)]
    assert [r["energy_kwh"] * JOULES_PER_KWH for r in a] == pytest.approx([2000, 2500, 1500])
    for col in ("energy_kwh", "throttled_s", "idle_powered_s"):
        for uuid in (A, B):
            total = sum(r[col] for r in win.to_pylist() if r["uuid"] == uuid)
            assert total == pytest.approx(whole[uuid][col]), (col, uuid)
    assert sum(r["xid_count"] for r in a) == 2 and sum(r["ecc_corrected"] for r in a) == 5


def test_by_node_sums_gpus_per_instant(fleet: Path) -> None:
    (n,) = analyze([fleet], by="node").to_pylist()
    node_power = [250, 300, 400, 100, 50, 50, 400, 100]     # A + B where both report, else the one that does
    assert n["node"] == "node-0" and n["gpus"] == 2
    assert n["power_mean_w"] == pytest.approx(np.mean(node_power))
    assert n["power_max_w"] == 400
    assert n["power_p95_w"] == pytest.approx(np.percentile(node_power, 95))
    assert n["energy_kwh"] == pytest.approx(9500 / JOULES_PER_KWH)
    assert n["samples"] == 8 and n["xid_count"] == 2 and n["ecc_corrected"] == 5
    assert n["throttled_s"] == pytest.approx(30)
    assert n["util_mean"] == pytest.approx((3.5 + 2.5) / 12)
    assert "uuid" not in n


def test_node_power_joins_gpu_readings_a_few_ms_apart(tmp_path: Path) -> None:
    """nvidia-smi stamps each GPU's line separately: one node instant, not one per GPU."""
    trace = tmp_path / "smi"
    rows = series("node-0", A, POWER, [100, 200, 300], step_s=5)
    rows += series("node-0", B, POWER, [10, 20, 30], step_s=5, start_ns=DAY0 + 3_000_000)
    write_metrics(trace, rows)
    (n,) = analyze([trace], by="node").to_pylist()
    assert n["samples"] == 3 and n["power_max_w"] == 330
    assert n["power_mean_w"] == pytest.approx(220)


def test_gpu_selection_by_uuid_and_node_index_and_node(tmp_path: Path, fleet: Path) -> None:
    other = tmp_path / "other"
    _other(other)
    assert set(_by_uuid(analyze([fleet, other]))) == {A, B, C}
    assert set(_by_uuid(analyze([fleet, other], gpus=["node-0/1"]))) == {B}
    assert set(_by_uuid(analyze([fleet, other], gpus=[C, "node-0/0"]))) == {A, C}
    assert set(_by_uuid(analyze([fleet, other], nodes=["node-1"]))) == {C}
    assert analyze([fleet, other, fleet]).equals(analyze([fleet, other]))
    assert _by_uuid(analyze([fleet, other]))[C]["xid_count"] == 1
    with pytest.raises(ValueError, match="no GPU 7 on node 'node-0'"):
        analyze([fleet], gpus=["node-0/7"])


def test_empty_selection_keeps_the_schema(fleet: Path, tmp_path: Path) -> None:
    full = analyze([fleet])
    for kwargs in ({"nodes": ["nowhere"]}, {"start_ns": DAY0 + 10**15}, {"gpus": []}):
        empty = analyze([fleet], **kwargs)
        assert empty.num_rows == 0 and empty.schema == full.schema, kwargs
    events_only = tmp_path / "events-only"
    write_events(events_only, [(DAY0, "node-0", A, "xid", 48, "")])
    assert analyze([events_only]).schema == full.schema
    assert analyze([fleet], by="node", window_s=60, nodes=[]).num_rows == 0


def test_not_a_trace_is_a_trace_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="nope: no such trace directory"):
        analyze([tmp_path / "nope"])
    (tmp_path / "plain").mkdir()
    with pytest.raises(TraceError, match="plain: not a fleetwatch trace"):
        analyze([tmp_path / "plain"])
    foreign = tmp_path / "foreign" / "metrics" / "date=2026-01-01"
    foreign.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), foreign / "x.parquet")
    with pytest.raises(TraceError, match=r"x\.parquet: not a fleetwatch trace file"):
        analyze([tmp_path / "foreign"])


def test_damaged_data_pages_are_a_trace_error_naming_the_file(fleet: Path) -> None:
    f = fleet / "metrics" / "date=2026-01-01" / "part-0.parquet"
    data = bytearray(f.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8       # keep the footer: only pages are damaged
    for i in range(4, len(data) - footer, 3):
        data[i] ^= 0x5A
    f.write_bytes(bytes(data))
    with pytest.raises(TraceError, match=r"part-0\.parquet: corrupt data"):
        analyze([fleet])


def test_bad_arguments_are_value_errors(fleet: Path) -> None:
    with pytest.raises(ValueError, match="by must be"):
        analyze([fleet], by="rack")
    with pytest.raises(ValueError, match="window must be > 0"):
        analyze([fleet], window_s=0)
    with pytest.raises(ValueError, match="empty time range"):
        analyze([fleet], start_ns=DAY0 + S, end_ns=DAY0)


def test_temp_and_superseded_files_are_never_read(fleet: Path) -> None:
    part = fleet / "metrics" / "date=2026-01-01"
    (part / ".tmp-0123.parquet").write_bytes(b"half a file")
    # a hot file already merged into its segment file: the same rows twice, which must count once
    dup = metrics_table(series("node-0", A, POWER, [150, 200, 200, 100, 50, 50, 300]))
    pq.write_table(dup, part / f"seg-{DAY0:019d}-abcdef01-00000.parquet")
    pq.write_table(dup, part / f"part-{DAY0:019d}-abcdef01-00000-000000.parquet")
    a = _by_uuid(analyze([fleet]))[A]
    # the segment file repeats the power rows: max() picks the same value per instant, counts stay
    assert a["samples"] == 7 and a["power_mean_w"] == pytest.approx(1050 / 7)
    con = connect([fleet])
    try:
        files = con.execute("SELECT count(DISTINCT filename) FROM read_parquet(["
                            + ", ".join(f"'{p}'" for p in sorted(part.glob("[!.]*.parquet"))) + "], filename=true)"
                            ).fetchall()[0][0]
        assert files == 3
        n = con.execute("SELECT count(*) FROM metrics WHERE metric = ?", [POWER]).fetchall()[0][0]
        assert n == 7 + 5 + 7          # A, B, and A again from the segment file; the hot file is skipped
    finally:
        con.close()


def test_connect_views(fleet: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    _other(other)
    con = connect([fleet, other])
    try:
        assert con.execute("SELECT count(DISTINCT node) FROM metrics").fetchall()[0][0] == 2
        assert con.execute("SELECT count(*) FROM events WHERE kind = 'xid'").fetchall()[0][0] == 3
        assert con.execute("SELECT count(*) FROM entities").fetchall()[0][0] == 3
        assert con.execute("SELECT column_name FROM (DESCRIBE metrics)").fetchall() == [
            ("ts",), ("node",), ("entity",), ("metric",), ("value",), ("unit",)]
    finally:
        con.close()


def test_series(fleet: Path) -> None:
    p = fleet_power_series([fleet], step_s=30)
    assert p.column_names == ["ts", "node", "power_w"]
    # bucket [0, 30 s): A mean 550/3, B mean 400/3 → node sum
    first = p.to_pylist()[0]
    assert first["ts"] == pd_ts(DAY0) and first["power_w"] == pytest.approx(550 / 3 + 400 / 3)
    assert p.num_rows == 3
    auto = fleet_power_series([fleet])
    assert auto.num_rows == 8               # 70 s span / 1000 buckets → 1 s buckets: one per instant
    t = gpu_series([fleet], TEMP, start_ns=DAY0 + 30 * S, step_s=60)
    assert t.column_names == ["ts", "node", "entity", "value"]
    assert t.to_pylist() == [{"ts": pd_ts(DAY0), "node": "node-0", "entity": A, "value": pytest.approx(50)},
                             {"ts": pd_ts(DAY0 + 60 * S), "node": "node-0", "entity": A, "value": 35.0}]
    with pytest.raises(ValueError, match="unknown metric"):
        gpu_series([fleet], "no_such_metric")


def test_time_parsing_and_formatting() -> None:
    assert parse_time("2026-01-01") == DAY0
    assert parse_time("2026-01-01T00:00:10Z") == DAY0 + 10 * S
    assert parse_time("2026-01-01T01:00:10+01:00") == DAY0 + 10 * S
    assert parse_time(str(DAY0 // S + 1.5)) == DAY0 + 3 * S // 2
    assert format_time(DAY0 + 3 * S // 2) == "2026-01-01T00:00:01.5Z"
    with pytest.raises(ValueError, match="bad time"):
        parse_time("yesterday")


# --- against a NumPy reference on a simulated trace ----------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "trace"
    generate_trace(out, nodes=2, gpus_per_node=2, days=0.25, seed=11, interval_s=60,
                   injects=[parse_inject("hbm-degradation@node-0/1+1h"), parse_inject("thermal@node-1/0+30m"),
                            parse_inject("gpu-lost@node-1/1+4h")])
    return out


def _reference(trace: Path) -> dict[str, dict[str, float]]:
    """Per-GPU figures computed row by row with NumPy from read_metrics / read_events."""
    m = read_metrics(trace)
    ev = read_events(trace, kinds=["xid"])
    ent = np.asarray(m.column("entity").cast(pa.string()).to_pylist())
    met = np.asarray(m.column("metric").cast(pa.string()).to_pylist())
    ts = m.column("ts").cast(pa.int64()).to_numpy()
    val = m.column("value").to_numpy()
    out: dict[str, dict[str, float]] = {}
    for uuid in sorted({e for e in ent if e.startswith("GPU-")}):
        def s(metric: str, uuid: str = uuid) -> tuple[np.ndarray, np.ndarray]:
            k = (ent == uuid) & (met == metric)
            return ts[k], val[k]
        pt, pv = s(POWER)
        _, evv = s(ENERGY)
        _, tv = s(TEMP)
        _, uv = s(UTIL)
        rt, rv = s(CLOCK_REASONS)
        _, sv = s(SBE_VOL)
        d = np.diff(evv)
        dr = np.diff(rt)
        med = np.median(dr)
        dt = np.concatenate([[med], np.where(dr <= 3 * med, dr, med)])
        ds = np.diff(sv)
        out[uuid] = {
            "samples": len(pt), "power_mean_w": pv.mean(), "power_max_w": pv.max(),
            "power_p95_w": np.percentile(pv, 95), "util_mean": uv.mean(), "temp_max_c": tv.max(),
            "energy_kwh": np.where(d >= 0, d, evv[1:]).sum() / JOULES_PER_KWH,
            "throttled_s": dt[(rv.astype(np.int64) & THROTTLE_MASK) != 0].sum() / 1e9,
            "ecc_corrected": np.where(ds >= 0, ds, sv[1:]).sum(),
            "xid_count": int(pc.sum(pc.equal(ev.column("entity").cast(pa.string()), uuid)).as_py() or 0),
        }
    return out


def test_matches_a_numpy_reference_on_a_simulated_trace(simulated: Path) -> None:
    ref = _reference(simulated)
    got = _by_uuid(analyze([simulated]))
    assert set(got) == set(ref)
    for uuid, r in ref.items():
        for col, want in r.items():
            assert got[uuid][col] == pytest.approx(want, rel=1e-9, abs=1e-9), (uuid, col)
    assert sum(r["xid_count"] for r in ref.values()) > 0         # the injected faults left XIDs
    assert max(r["throttled_s"] for r in ref.values()) > 0       # and thermal throttling
    assert max(r["ecc_corrected"] for r in ref.values()) > 0


def test_energy_counter_agrees_with_integrated_power(simulated: Path) -> None:
    """The simulator's energy counter integrates its power: both paths give about the same energy."""
    with_counter = _by_uuid(analyze([simulated]))
    gpu = next(iter(with_counter))
    rows = read_metrics(simulated, entities=[gpu], metrics=[POWER])
    trace = simulated.parent / "power-only"
    write_metrics(trace, zip(rows.column("ts").cast(pa.int64()).to_pylist(),
                             rows.column("node").cast(pa.string()).to_pylist(),
                             rows.column("entity").cast(pa.string()).to_pylist(),
                             rows.column("metric").cast(pa.string()).to_pylist(),
                             rows.column("value").to_pylist(), strict=True))
    integrated = _by_uuid(analyze([trace]))[gpu]["energy_kwh"]
    assert integrated == pytest.approx(with_counter[gpu]["energy_kwh"], rel=0.05)
    assert not math.isnan(integrated)


def test_node_and_window_views_are_consistent(simulated: Path) -> None:
    gpus = analyze([simulated])
    nodes = analyze([simulated], by="node")
    windows = analyze([simulated], window_s=3600, by="node")
    for col in ("energy_kwh", "xid_count", "ecc_corrected", "throttled_s"):
        total = pc.sum(gpus.column(col)).as_py()
        assert pc.sum(nodes.column(col)).as_py() == pytest.approx(total), col
        assert pc.sum(windows.column(col)).as_py() == pytest.approx(total), col
    assert windows.num_rows == 2 * 6
