"""Compaction and retention: every row kept, duplicates dropped, crash safety, the recorder left alone."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector import compact as compact_mod
from collector.batch import Batch, Event, gpu_entity
from collector.clock import ManualClock
from collector.compact import Retention, compact, compact_loop, trace_bytes
from collector.recorder import Recorder
from collector.sim.faults import parse_inject
from collector.sim.offline import generate_trace
from collector.trace_io import (
    COMPACTED_FROM_KEY,
    NS_PER_DAY,
    TraceError,
    check_file,
    list_trace_files,
    read_events,
    read_metrics,
)
from fleetwatch.analysis.query import analyze
from tests.analysis.tracefiles import DAY0, POWER, TEMP, S, series, write_events, write_metrics

ROOT = Path(__file__).resolve().parents[1]
GPUS = [gpu_entity(f"node-{n}", i, f"GPU-{n:04d}-{i:04d}", f"00000000:{0x18 + i:02X}:00.0",
                   "NVIDIA H100 80GB HBM3", "550.90.07") for n in range(2) for i in range(2)]
OLD = 10 * 86400.0          # seconds to age a file's mtime by, so it is past the in-flight grace


def _batch(ts_ns: int, k: int) -> Batch:
    b = Batch("test", ts_ns)
    for j, g in enumerate(GPUS):
        b.add(POWER, g, 100.0 + k + j)
        b.add(TEMP, g, 40.0 + (k % 7))
    if k % 5 == 0:
        b.events.append(Event(ts_ns, GPUS[0].node, GPUS[0].id, "xid", 63, f"remap {k}"))
    return b


def _record(trace: Path, start_ns: int, n: int, step_s: float, rotate_every: int = 4,
            close: bool = True) -> Recorder:
    """Record n batches every step_s with a flush per batch and a segment merge every rotate_every flushes."""
    clock = ManualClock(start_ns)
    rec = Recorder(trace, clock, rotate_interval_s=1e9)
    for k in range(n):
        rec.add(_batch(clock.now_ns(), k))
        rec.flush()
        if k % rotate_every == rotate_every - 1:
            rec.rotate()
        clock.advance(step_s)
    if close:
        rec.close()
    return rec


def _age(trace: Path) -> None:
    """Make every file look old (past the in-flight grace)."""
    for p in trace.rglob("*.parquet"):
        st = p.stat()
        os.utime(p, (st.st_atime - OLD, st.st_mtime - OLD))


def _rows(table: pa.Table) -> list[tuple[object, ...]]:
    """A table's rows as sorted tuples (strings decoded, timestamps as int ns)."""
    cols = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        elif pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64())
        cols.append(col.to_pylist())
    return sorted(zip(*cols, strict=True))


def _snapshot(trace: Path) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    return _rows(read_metrics(trace)), _rows(read_events(trace))


def _names(trace: Path, table: str = "metrics") -> dict[str, list[str]]:
    return {d.name: sorted(os.listdir(d)) for d in sorted((trace / table).iterdir())}


@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """Three days recorded with hot and segment files (the last segment of each day left unmerged)."""
    trace = tmp_path / "trace"
    for day in range(3):
        _record(trace, DAY0 + day * NS_PER_DAY + 3600 * S, n=10, step_s=600, close=day == 2)
    _age(trace)
    return trace


NOW = DAY0 + 5 * NS_PER_DAY + 12 * 3600 * S     # 2026-01-06 12:00: every recorded day is finished


def test_compaction_preserves_every_row_and_leaves_one_file_per_day(recorded: Path) -> None:
    before = _snapshot(recorded)
    assert any(n.startswith("part-") for names in _names(recorded).values() for n in names)
    report = compact(recorded, now_ns=NOW)
    assert _snapshot(recorded) == before
    for table in ("metrics", "events"):
        for day, names in _names(recorded, table).items():
            assert names == [f"day-{day.removeprefix('date=')}.parquet"], (table, day, names)
    assert {(m.table, m.day) for m in report.merged} == {
        (t, f"2026-01-0{d}") for t in ("metrics", "events") for d in (1, 2, 3)}
    assert all(m.rows_in == m.rows_out for m in report.merged)
    assert report.bytes_after < report.bytes_before
    for f in list_trace_files(recorded):
        if f.parent.parent.name in ("metrics", "events"):
            check_file(f, f.parent.parent.name)
            meta = pq.read_schema(f).metadata
            assert COMPACTED_FROM_KEY in meta


def test_compacted_file_is_sorted_and_encoded_compactly(recorded: Path) -> None:
    compact(recorded, now_ns=NOW)
    f = recorded / "metrics" / "date=2026-01-01" / "day-2026-01-01.parquet"
    t = pq.read_table(f)
    keys = list(zip(*(t.column(c).cast(pa.string()).to_pylist() for c in ("node", "entity", "metric")),
                    t.column("ts").cast(pa.int64()).to_pylist(), strict=True))
    assert keys == sorted(keys)
    col = pq.ParquetFile(f).metadata.row_group(0).column(0)
    assert col.path_in_schema == "ts" and "DELTA_BINARY_PACKED" in col.encodings
    assert col.compression == "ZSTD"


def test_compaction_is_idempotent(recorded: Path) -> None:
    compact(recorded, now_ns=NOW)
    files = {p: p.stat().st_mtime_ns for p in recorded.rglob("*.parquet")}
    report = compact(recorded, now_ns=NOW)
    assert report.merged == [] and report.deleted_days == [] and report.errors == []
    assert {p: p.stat().st_mtime_ns for p in recorded.rglob("*.parquet")} == files
    assert report.bytes_before == report.bytes_after


def test_new_files_after_compaction_are_merged_into_the_day_file(recorded: Path) -> None:
    compact(recorded, now_ns=NOW)
    late = series("node-9", "GPU-late", POWER, [1, 2, 3], start_ns=DAY0 + 3600 * S)
    write_metrics(recorded, late, name="late.parquet")
    before = _snapshot(recorded)
    report = compact(recorded, now_ns=NOW)
    assert [(m.table, m.day, m.inputs) for m in report.merged] == [("metrics", "2026-01-01", 2)]
    assert _snapshot(recorded) == before
    assert _names(recorded)["date=2026-01-01"] == ["day-2026-01-01.parquet"]


def test_identical_rows_are_dropped_and_different_values_kept(tmp_path: Path) -> None:
    trace = tmp_path / "t"
    rows = series("node-0", "GPU-a", POWER, [100, 200, 300])
    write_metrics(trace, rows, name="a.parquet")
    write_metrics(trace, rows, name="b.parquet")          # the same import run twice
    write_metrics(trace, [(DAY0, "node-0", "GPU-a", POWER, 101.0)], name="c.parquet")
    write_events(trace, [(DAY0, "node-0", "GPU-a", "xid", 48, "dbe")] * 2)
    assert read_metrics(trace).num_rows == 7
    report = compact(trace, now_ns=NOW)
    assert report.merged[0].rows_in == 7 and report.merged[0].rows_out == 4
    assert _rows(read_metrics(trace)) == sorted({*((r[0], *r[1:], "watts") for r in rows),
                                                 (DAY0, "node-0", "GPU-a", POWER, 101.0, "watts")})
    assert read_events(trace).num_rows == 1


def test_chunked_merge_equals_one_pass(tmp_path: Path) -> None:
    """Tiny chunks force several nodes per chunk, a node cut by entity, and many row groups."""
    trace = tmp_path / "sim"
    generate_trace(trace, nodes=3, gpus_per_node=2, days=0.05, seed=4, interval_s=60,
                   injects=[parse_inject("hbm-degradation@node-1/1+10m")])
    before = _snapshot(trace)
    report = compact(trace, now_ns=NOW, chunk_rows=500)
    assert report.errors == [] and len(report.merged) == 2
    assert _snapshot(trace) == before


def test_analysis_is_unchanged_by_compaction(tmp_path: Path) -> None:
    trace = tmp_path / "sim"
    generate_trace(trace, nodes=2, gpus_per_node=2, days=1.5, seed=9, interval_s=300,
                   injects=[parse_inject("thermal@node-0/1+2h"), parse_inject("gpu-lost@node-1/0+20h")])
    before = analyze([trace])
    compact(trace, now_ns=NOW)
    after = analyze([trace])
    assert after.equals(before)


def test_retention_by_age_keeps_partly_covered_days(recorded: Path) -> None:
    now = DAY0 + 2 * NS_PER_DAY + 6 * 3600 * S          # 2026-01-03 06:00
    report = compact(recorded, retention_age_s=1.5 * 86400, now_ns=now)
    # the window starts at 01-01 18:00, so 01-01 (ending 01-02 00:00) is partly inside it: kept
    assert report.deleted_days == []
    report = compact(recorded, retention_age_s=86400, now_ns=now)     # window starts 01-02 06:00
    assert [d for d, _ in report.deleted_days] == ["2026-01-01"]
    assert sorted(_names(recorded)) == ["date=2026-01-02", "date=2026-01-03"]
    assert sorted(_names(recorded, "events")) == ["date=2026-01-02", "date=2026-01-03"]
    first = read_metrics(recorded).column("ts").cast(pa.int64()).to_pylist()
    assert min(first) >= DAY0 + NS_PER_DAY
    # today (01-03) is not compacted: the recorder may still be writing it
    assert any("date=2026-01-03" in s for s in report.skipped)
    assert not any(n.startswith("day-") for n in _names(recorded)["date=2026-01-03"])


def test_retention_by_size_deletes_oldest_days_first(recorded: Path) -> None:
    compact(recorded, now_ns=NOW)
    per_day = {d: sum(p.stat().st_size for t in ("metrics", "events") for p in (recorded / t / d).iterdir())
               for d in _names(recorded)}
    limit = trace_bytes(recorded) - per_day["date=2026-01-01"]      # exactly one day too much
    report = compact(recorded, retention_bytes=limit, now_ns=NOW)
    assert [d for d, _ in report.deleted_days] == ["2026-01-01"] and not report.over_size_limit
    assert report.bytes_after <= limit
    # the age window protects its days even when the size limit is exceeded
    report = compact(recorded, retention_bytes=1, retention_age_s=5 * 86400, now_ns=NOW)
    assert report.deleted_days == [] and report.over_size_limit
    assert sorted(_names(recorded)) == ["date=2026-01-02", "date=2026-01-03"]
    # without it, everything but today goes
    report = compact(recorded, retention_bytes=1, now_ns=DAY0 + 2 * NS_PER_DAY)
    assert [d for d, _ in report.deleted_days] == ["2026-01-02"] and report.over_size_limit
    assert sorted(_names(recorded)) == ["date=2026-01-03"]


def test_crash_between_rename_and_delete_leaves_no_duplicates(recorded: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(recorded)
    analysis = analyze([recorded])

    def crash(directory: Path, names: list[str]) -> int:
        raise KeyboardInterrupt("power cut")        # never reaches the deletes

    monkeypatch.setattr(compact_mod, "_unlink_all", crash)
    with pytest.raises(KeyboardInterrupt):
        compact(recorded, now_ns=NOW)
    part = recorded / "metrics" / "date=2026-01-01"
    names = os.listdir(part)
    assert "day-2026-01-01.parquet" in names and any(n.startswith(("part-", "seg-")) for n in names)
    assert _snapshot(recorded) == before                       # readers skip the replaced inputs
    assert analyze([recorded]).equals(analysis)
    assert [p.name for p in list_trace_files(recorded, "metrics") if p.parent == part] == ["day-2026-01-01.parquet"]
    monkeypatch.undo()
    report = compact(recorded, now_ns=NOW)                     # the next run finishes the job
    assert report.leftovers_removed > 0
    assert os.listdir(part) == ["day-2026-01-01.parquet"]
    assert _snapshot(recorded) == before


def test_crash_before_rename_leaves_the_inputs(recorded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _snapshot(recorded)
    names = _names(recorded)

    def crash(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(compact_mod.os, "replace", crash)
    report = compact(recorded, now_ns=NOW)
    assert len(report.errors) == 6 and "inputs kept" in report.errors[0]
    monkeypatch.undo()
    assert _names(recorded) == names and _snapshot(recorded) == before
    # a temp file a real crash leaves behind is ignored by readers and removed once stale
    tmp = recorded / "metrics" / "date=2026-01-01" / ".tmp-deadbeef.parquet"
    tmp.write_bytes(b"PAR1 half written")
    assert _snapshot(recorded) == before
    os.utime(tmp, (0, 0))
    compact(recorded, now_ns=NOW)
    assert not tmp.exists() and _snapshot(recorded) == before


def test_unreadable_input_skips_its_partition_only(recorded: Path) -> None:
    bad = recorded / "metrics" / "date=2026-01-02" / "broken.parquet"
    bad.write_bytes(b"not parquet at all")
    names = _names(recorded)["date=2026-01-02"]
    report = compact(recorded, now_ns=NOW)
    assert len(report.errors) == 1 and "broken.parquet" in report.errors[0]
    assert _names(recorded)["date=2026-01-02"] == names
    assert _names(recorded)["date=2026-01-01"] == ["day-2026-01-01.parquet"]


def test_recorder_writing_today_is_untouched(tmp_path: Path) -> None:
    trace = tmp_path / "live"
    today = DAY0 + 3 * NS_PER_DAY
    rec = _record(trace, today + 3600 * S, n=6, step_s=60, rotate_every=4, close=False)
    files = {p: p.stat().st_mtime_ns for p in trace.rglob("*.parquet")}
    report = compact(trace, now_ns=today + 7200 * S)
    assert report.merged == [] and {p: p.stat().st_mtime_ns for p in trace.rglob("*.parquet")} == files
    # even with --all, the open segment's recent hot files stay for the recorder to merge
    report = compact(trace, now_ns=today + 7200 * S, all_days=True)
    assert [m.table for m in report.merged] == ["metrics", "events"]
    hot = [n for n in _names(trace)["date=2026-01-04"] if n.startswith("part-")]
    assert len(hot) == 2
    rec.add(_batch(today + 7200 * S, 99))
    rec.close()                                     # flush + merge: must not fail or lose anything
    assert rec.flush_errors == 0
    got = read_metrics(trace)
    assert got.num_rows == 7 * len(GPUS) * 2
    assert len(set(_rows(got))) == got.num_rows


def test_superseded_hot_files_are_replaced_and_removed(tmp_path: Path) -> None:
    trace = tmp_path / "t"
    _record(trace, DAY0 + 3600 * S, n=4, step_s=60, rotate_every=100, close=False)
    part = trace / "metrics" / "date=2026-01-01"
    hot = sorted(p for p in part.iterdir() if p.name.startswith("part-"))
    # an interrupted segment merge: the segment file is in place, its inputs not yet deleted
    rows = pa.concat_tables([pq.read_table(p) for p in hot]).unify_dictionaries()
    seg = part / hot[0].name.replace("part-", "seg-").rsplit("-", 1)[0]
    pq.write_table(rows, f"{seg}.parquet")
    _age(trace)
    before = _snapshot(trace)
    compact(trace, now_ns=NOW)
    assert os.listdir(part) == ["day-2026-01-01.parquet"] and _snapshot(trace) == before


def test_a_day_file_with_a_bad_replaced_list_is_a_trace_error(recorded: Path) -> None:
    compact(recorded, now_ns=NOW)
    f = recorded / "metrics" / "date=2026-01-02" / "day-2026-01-02.parquet"
    t = pq.read_table(f)
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, COMPACTED_FROM_KEY: b"{not json"}), f)
    with pytest.raises(TraceError, match=r"day-2026-01-02\.parquet: bad fleetwatch\.compacted_from"):
        read_metrics(recorded)


def test_bad_retention_values_are_errors(recorded: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retention age"):
        compact(recorded, retention_age_s=-1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TraceError, match="not a fleetwatch trace"):
        compact(tmp_path / "empty")


async def test_compact_loop_runs_until_stopped(recorded: Path) -> None:
    stop = asyncio.Event()
    clock = ManualClock(NOW)
    task = asyncio.create_task(compact_loop(recorded, stop, 3600, Retention(age_s=4 * 86400), clock=clock))
    for _ in range(500):
        await asyncio.sleep(0.01)
        if clock.now_ns() > NOW + 3600 * S:          # one pass done, the loop sleeps and goes again
            break
    stop.set()
    await asyncio.wait_for(task, 10)
    assert sorted(_names(recorded)) == ["date=2026-01-02", "date=2026-01-03"]     # 01-01 is past 4 days
    assert _names(recorded)["date=2026-01-02"] == ["day-2026-01-02.parquet"]


def test_cli_compact(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = subprocess.run([sys.executable, "-m", "fleetwatch.cli", "compact", str(recorded), "--retention-size",
                          "1GiB"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "merged metrics/date=2026-01-01" in res.stdout and "bytes before" in res.stdout
    # The usage error through main() in this process (the run above already starts the command as a user does).
    from fleetwatch.cli import main

    assert main(["compact", str(recorded), "--retention-age", "soon"]) == 2
    assert "compact: expected a duration" in capsys.readouterr().err


def test_after_day_hook_sees_every_compacted_metrics_day_and_its_failure_is_reported(recorded: Path) -> None:
    seen: list[tuple[str, str]] = []

    def hook(trace_dir: Path, day: str, day_file: Path) -> str | None:
        assert trace_dir == recorded and day_file.is_file()
        check_file(day_file, "metrics")
        seen.append((day, day_file.name))
        return f"summarised {day}" if day != "2026-01-02" else None

    report = compact(recorded, now_ns=NOW, after_day=hook)
    assert seen == [(f"2026-01-0{d}", f"day-2026-01-0{d}.parquet") for d in (1, 2, 3)]
    assert report.notes == ["summarised 2026-01-01", "summarised 2026-01-03"]
    assert "summarised 2026-01-01" in report.lines()
    # already compacted days get the hook too (it decides whether its output is current)
    seen.clear()
    compact(recorded, now_ns=NOW, after_day=hook)
    assert len(seen) == 3

    def broken(trace_dir: Path, day: str, day_file: Path) -> str | None:
        raise OSError("disk full")

    before = _snapshot(recorded)
    report = compact(recorded, now_ns=NOW, after_day=broken)
    assert [e for e in report.errors if "disk full" in e and "date=2026-01-0" in e] and len(report.errors) == 3
    assert _snapshot(recorded) == before
