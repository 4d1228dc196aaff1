"""Rollups written at compaction: analyze() from rollups equals analyze() from raw rows, stale/corrupt files."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector.clock import ManualClock
from collector.compact import ROLLUPS_DIR, compact, compact_loop
from collector.sim.faults import parse_inject
from collector.sim.offline import generate_trace
from collector.trace_io import (
    TEMP_PREFIX,
    TraceError,
    list_trace_files,
    read_entities,
    read_metrics,
    sort_order,
)
from fleetwatch.analysis import rollup
from fleetwatch.analysis.query import _gpu_index, _open, analyze
from tests.analysis.tracefiles import DAY0, ENERGY, POWER, SBE_VOL, S, write_metrics

ROOT = Path(__file__).resolve().parents[2]
H = 3600 * S
START = DAY0 + 5 * H + 17 * S           # mid-hour, mid-day: partial first day, hours not on sample instants
DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")


def _damage(trace: Path, a: str, b: str) -> None:
    """Counter resets on GPU a (at midnight, the first sample of a day) and b, a gap of b across midnight."""
    for f in list_trace_files(trace, "metrics"):
        t = pq.read_table(f)
        ts = t.column("ts").cast(pa.int64()).to_numpy()
        ent = np.asarray(t.column("entity").cast(pa.string()).to_pylist())
        met = np.asarray(t.column("metric").cast(pa.string()).to_pylist())
        val = t.column("value").to_numpy().copy()
        val[(ent == a) & (met == SBE_VOL) & (ts < DAY0 + 24 * H)] += 100.0
        # driver reload on GPU a at 2026-01-02 00:00 (its first sample of the day): counters restart near 0
        reset = (ent == a) & (ts >= DAY0 + 24 * H) & np.isin(met, [ENERGY, SBE_VOL])
        for m in (ENERGY, SBE_VOL):
            k = reset & (met == m)
            if k.any():
                val[k] = val[k] - val[k].min() + (7.0 if m == SBE_VOL else 1000.0)
        # a second energy reset mid-hour on GPU b
        k = (ent == b) & (met == ENERGY) & (ts >= DAY0 + 30 * H + 1234 * S)
        if k.any():
            val[k] = val[k] - val[k].min() + 5.0
        # GPU b silent from 22:30 to 01:10 across midnight (a gap longer than GAP_FACTOR intervals)
        keep = ~((ent == b) & (ts >= DAY0 + 22 * H + 1800 * S) & (ts < DAY0 + 25 * H + 600 * S))
        t = t.set_column(t.schema.get_field_index("value"), "value", pa.array(val)).filter(pa.array(keep))
        pq.write_table(t.take(sort_order(t, ["node", "entity", "metric", "ts"])), f, compression="zstd")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2x2-GPU trace over three UTC days at 60 s with faults, resets and a gap; compacted with rollups."""
    out = tmp_path_factory.mktemp("rollup") / "trace"
    generate_trace(out, nodes=2, gpus_per_node=2, days=1.9, seed=5, interval_s=60, fault_rate=30.0, start_ns=START,
                   injects=[parse_inject("hbm-degradation@node-0/1+1h"), parse_inject("thermal@node-1/0+20h"),
                            parse_inject("gpu-lost@node-1/1+40h")])
    ents = read_entities(out)
    uuid = {(n, json.loads(lb)["gpu"]): e for n, e, lb in zip(ents.column("node").to_pylist(),
            ents.column("entity").to_pylist(), ents.column("labels").to_pylist(), strict=True)
            if json.loads(lb).get("gpu") is not None}
    _damage(out, uuid[("node-0", "0")], uuid[("node-1", "0")])        # node-1/0 is busy and throttled
    report = compact(out, all_days=True, after_day=rollup.after_compaction)
    assert not report.errors, report.errors
    assert len([n for n in report.notes if n.startswith("rollup date=")]) == 3
    return out


@pytest.fixture
def trace(source: Path, tmp_path: Path) -> Path:
    """A private copy of the compacted trace, for tests that change it."""
    shutil.copytree(source, tmp_path / "t")
    return tmp_path / "t"


def _same(got: pa.Table, want: pa.Table) -> None:
    """Equal schemas and rows; floats to 1e-9 relative, p95 power within the histogram's bound."""
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows > 0
    for name in want.column_names:
        for i, (g, w) in enumerate(zip(got.column(name).to_pylist(), want.column(name).to_pylist(), strict=True)):
            if isinstance(w, float) and isinstance(g, float):
                if math.isnan(w):
                    assert math.isnan(g), (name, i)
                    continue
                tol = rollup.P95_BOUND_W if name.endswith("p95_w") else 1e-9 * max(abs(w), 1.0)
                assert abs(g - w) <= tol, (name, i, g, w)
            else:
                assert g == w, (name, i, g, w)


def _via_partials(trace: Path, **kw: object) -> pa.Table:
    """analyze() asserting that the selection was answered from rollups (not the raw fallback)."""
    start_ns, end_ns = kw.get("start_ns"), kw.get("end_ns")
    files, _ = rollup.plan([trace], None, None, start_ns, end_ns)      # type: ignore[arg-type]
    assert files, "no day of the selection has a usable rollup"
    con = _open([trace])
    try:
        con.register("_gpu_index", _gpu_index(con))
        window = kw.get("window_s")
        out = rollup.analyze_partials(con, [trace], None, None, start_ns, end_ns, kw.get("nodes"),  # type: ignore
                                      None, None if window is None else int(window) * S, kw.get("by", "gpu"))
        assert out is not None
    finally:
        con.close()
    return analyze([trace], **kw)      # type: ignore[arg-type]


CASES = [
    pytest.param({}, id="per-gpu"),
    pytest.param({"by": "node"}, id="per-node"),
    pytest.param({"window_s": 3600}, id="hourly"),
    pytest.param({"window_s": 86400, "by": "node"}, id="daily-by-node"),
    pytest.param({"start_ns": DAY0 + 24 * H}, id="from-midnight"),           # the first rollup day opens it
    pytest.param({"start_ns": DAY0 + 10 * H + 7 * S, "end_ns": DAY0 + 60 * H + 1}, id="partial-days"),
    pytest.param({"nodes": ["node-1"], "window_s": 7200}, id="node-selector"),
]


@pytest.mark.parametrize("kw", CASES)
def test_rollups_give_the_raw_answer(source: Path, kw: dict[str, object]) -> None:
    _same(_via_partials(source, **kw), analyze([source], use_rollups=False, **kw))   # type: ignore[arg-type]


def test_gpu_selector_and_resets_and_gap(source: Path) -> None:
    raw = analyze([source], use_rollups=False)
    uuids = raw.column("uuid").to_pylist()          # node-0/0, node-0/1, node-1/0, node-1/1
    got = analyze([source], gpus=[uuids[0], "node-0/1"], window_s=3600)
    _same(got, analyze([source], gpus=[uuids[0], "node-0/1"], window_s=3600, use_rollups=False))
    assert set(got.column("uuid").to_pylist()) == {uuids[0], uuids[1]}
    # the damage is there: counters restart (one at midnight) and node-1/0 has a gap of over two hours
    sbe = read_metrics(source, entities=[uuids[0]], metrics=[SBE_VOL]).column("value").to_numpy()
    assert (np.diff(sbe) < 0).any()
    power = read_metrics(source, entities=[uuids[2]], metrics=[POWER]).column("ts").cast(pa.int64()).to_numpy()
    assert np.diff(power).max() > 2 * H
    got = analyze([source]).to_pylist()
    assert got[0]["ecc_corrected"] == raw.column("ecc_corrected")[0].as_py() >= 7


def test_windows_that_are_not_whole_hours_use_raw_rows(source: Path) -> None:
    assert not rollup.usable(1800 * S, "gpu", None, rollup.IDLE_POWER_W)
    assert not rollup.usable(None, "node", ["node-0/0"], rollup.IDLE_POWER_W)
    assert not rollup.usable(None, "gpu", None, 50.0)
    _same(analyze([source], window_s=1800), analyze([source], window_s=1800, use_rollups=False))


def test_trace_readers_ignore_rollups(source: Path) -> None:
    assert (source / ROLLUPS_DIR / f"date={DAYS[1]}" / f"rollup-day-{DAYS[1]}.parquet").is_file()
    assert not any(ROLLUPS_DIR in f.parts for f in list_trace_files(source))
    assert read_metrics(source, metrics=[POWER]).num_rows > 0


def test_late_data_makes_the_rollup_stale_until_compaction_rewrites_it(trace: Path) -> None:
    day = DAYS[1]
    before = analyze([trace], use_rollups=False)
    gpu = before.column("uuid")[0].as_py()
    late = [(DAY0 + 24 * H + 37 * H // 10 + k * S, "node-0", gpu, POWER, 950.0) for k in range(3)]
    write_metrics(trace, late, name="part-late.parquet")
    assert rollup.plan([trace], None, None, None, None)[0] == \
        [rollup.rollup_path(trace, d) for d in (DAYS[0], DAYS[2])]           # the day has a hot file now
    _same(analyze([trace]), analyze([trace], use_rollups=False))
    compact(trace, all_days=True)                                          # no hook: the rollup is stale
    assert rollup.current_rollup(trace, day) is None
    assert rollup.rollup_path(trace, day).is_file()
    _same(analyze([trace]), analyze([trace], use_rollups=False))
    report = compact(trace, all_days=True, after_day=rollup.after_compaction)
    assert any(n.startswith(f"rollup date={day}") for n in report.notes)
    assert rollup.current_rollup(trace, day) is not None
    got = _via_partials(trace)
    _same(got, analyze([trace], use_rollups=False))
    assert got.column("power_max_w").to_pylist()[0] == 950.0                # the late rows are counted


def test_corrupt_rollup_is_a_trace_error_naming_it(trace: Path) -> None:
    path = rollup.rollup_path(trace, DAYS[1])
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    data[4:len(data) - 8 - footer] = os.urandom(len(data) - 12 - footer)     # damaged pages, readable footer
    path.write_bytes(bytes(data))
    assert rollup.rollup_identity(path)
    with pytest.raises(TraceError, match=str(path)):
        analyze([trace])
    report = compact(trace, all_days=True, after_day=rollup.after_compaction)      # compaction repairs it
    assert any(n.startswith(f"rollup date={DAYS[1]}") and "damaged" in n for n in report.notes)
    _same(analyze([trace]), analyze([trace], use_rollups=False))
    path.write_bytes(b"not parquet at all")
    with pytest.raises(TraceError, match=str(path)):
        analyze([trace])
    assert analyze([trace], use_rollups=False).num_rows == 4               # the raw path does not read it
    compact(trace, all_days=True, after_day=rollup.after_compaction)
    assert rollup.current_rollup(trace, DAYS[1]) == path


def test_crash_before_rename_leaves_no_rollup_in_use(trace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    day = DAYS[1]
    path = rollup.rollup_path(trace, day)
    path.unlink()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(rollup.os, "replace", crash)
    report = compact(trace, all_days=True, after_day=rollup.after_compaction)
    monkeypatch.undo()
    assert any(day in e and "crash" in e for e in report.errors)
    assert not path.exists() and not list(path.parent.glob(f"{TEMP_PREFIX}*"))
    # a half-written temp file from a real crash is never read, and an old one is cleaned up
    tmp = path.parent / f"{TEMP_PREFIX}dead.parquet"
    tmp.write_bytes(b"PAR1 half a rollup")
    _same(analyze([trace]), analyze([trace], use_rollups=False))
    os.utime(tmp, (1, 1))
    compact(trace, all_days=True, after_day=rollup.after_compaction)
    assert rollup.current_rollup(trace, day) == path and not tmp.exists()


def test_retention_deletes_a_days_rollups(trace: Path) -> None:
    now = DAY0 + (2 * 24 + 12) * H
    report = compact(trace, retention_age_s=30 * 3600, now_ns=now, after_day=rollup.after_compaction)
    assert [d for d, _ in report.deleted_days] == [DAYS[0]]
    assert not (trace / ROLLUPS_DIR / f"date={DAYS[0]}").exists()
    assert rollup.current_rollup(trace, DAYS[1]) is not None
    _same(analyze([trace]), analyze([trace], use_rollups=False))


def test_cli_compact_says_rollups_were_written(trace: Path) -> None:
    shutil.rmtree(trace / ROLLUPS_DIR)
    res = subprocess.run([sys.executable, "-m", "fleetwatch.cli", "compact", str(trace), "--all"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"rollup date={DAYS[0]}" in res.stdout and "partial rows" in res.stdout
    assert all(rollup.current_rollup(trace, d) is not None for d in DAYS)


async def test_the_services_compaction_loop_writes_rollups(trace: Path) -> None:
    shutil.rmtree(trace / ROLLUPS_DIR)
    stop = asyncio.Event()
    task = asyncio.create_task(compact_loop(trace, stop, 3600, clock=ManualClock(DAY0 + 10 * 86400 * S),
                                            after_day=rollup.after_compaction))
    for _ in range(3000):
        await asyncio.sleep(0.01)
        if all(rollup.current_rollup(trace, d) is not None for d in DAYS):
            break
    stop.set()
    await asyncio.wait_for(task, 60)
    assert all(rollup.current_rollup(trace, d) is not None for d in DAYS)
