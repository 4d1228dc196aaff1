"""Tests for the Parquet trace recorder and the trace readers."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collector import recorder as recorder_mod
from collector.batch import Batch, Entity, Event, entity_from_record, gpu_entity
from collector.catalogue import BY_NAME
from collector.clock import ManualClock
from collector.recorder import Recorder
from collector.trace import EVENTS_SCHEMA, GROUND_TRUTH_SCHEMA, METRICS_SCHEMA
from collector.trace_io import (
    TraceError,
    check_file,
    day_of,
    list_trace_files,
    read_entities,
    read_events,
    read_ground_truth,
    read_metrics,
)

T0 = 1_767_225_600 * 10**9  # 2026-01-01T00:00:00Z
S = 10**9
RECORDED = ("fleetwatch_gpu_temperature_celsius", "fleetwatch_gpu_power_watts",
            "fleetwatch_gpu_utilization_ratio", "fleetwatch_gpu_ecc_sbe_volatile_total")
NOT_RECORDED = "fleetwatch_gpu_clock_event_active"
KEYS = ("node", "entity", "metric", "ts")


def gpus(node: str, n: int = 2) -> list[Entity]:
    """n GPU entities on a node."""
    return [gpu_entity(node, i, f"GPU-{node}-{i:04d}", f"00000000:{0x18 + i:02x}:00.0",
                       "NVIDIA H100 80GB HBM3", "550.54.15") for i in range(n)]


NODES = {n: gpus(n) for n in ("node-b", "node-a")}
ETH0 = Entity("interface", "node-a", "eth0", ("node-a", "eth0"))


def make_batch(ts_ns: int, seq: int = 0, with_events: bool = False) -> Batch:
    """A batch with recorded and unrecorded GPU metrics and one network metric; value encodes position."""
    b = Batch("test", ts_ns)
    for ents in NODES.values():
        for g in ents:
            for k, m in enumerate(RECORDED):
                b.add(m, g, seq * 100 + k)
            b.add(NOT_RECORDED, g, 1.0, ("sw_power_cap",))
    b.add("fleetwatch_network_receive_bytes_total", ETH0, seq * 1000.0)
    if with_events:
        b.events.append(Event(ts_ns, "node-a", NODES["node-a"][0].id, "xid", 79, "fallen off the bus"))
    return b


def expected_rows(batches: list[Batch]) -> set[tuple[int, str, str, str, float, str]]:
    """The (ts, node, entity, metric, value, unit) rows a recorder must keep from batches."""
    out = set()
    for b in batches:
        for m, e, v, _ in b.rows():
            if BY_NAME[m].record:
                out.add((b.ts_ns, e.node, e.id, m, v, BY_NAME[m].unit))
    return out


def as_rows(table: pa.Table) -> list[tuple[int, str, str, str, float, str]]:
    """Metric table rows as plain tuples with integer timestamps."""
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    cols = [table.column(c).to_pylist() for c in ("node", "entity", "metric", "value", "unit")]
    return [(t, *rest) for t, *rest in zip(ts, *cols, strict=True)]


def assert_sorted(rows: list[tuple]) -> None:
    """Rows are in (node, entity, metric, ts) order."""
    keys = [(r[1], r[2], r[3], r[0]) for r in rows]
    assert keys == sorted(keys)


def data_only(paths: list[Path]) -> list[Path]:
    """The metrics and events files among paths (not the entities table)."""
    return [p for p in paths if p.parent.name.startswith("date=")]


def files(root: Path, prefix: str) -> list[Path]:
    """Data files under root whose names start with prefix."""
    return sorted(p for p in root.rglob("*.parquet") if p.name.startswith(prefix))


# --- round trip ------------------------------------------------------------------------------------


def test_round_trip_values_units_encoding_and_order(tmp_path: Path) -> None:
    clock = ManualClock(T0 + 3600 * S)
    rec = Recorder(tmp_path, clock)
    batches = [make_batch(T0 + 3600 * S + i * S, i, with_events=(i == 2)) for i in range(5)]
    for b in batches:
        rec.add(b)
    written = rec.flush()

    assert [p.parent.name for p in data_only(written)] == ["date=2026-01-01", "date=2026-01-01"]
    table = read_metrics(tmp_path)
    rows = as_rows(table)
    assert len(rows) == len(expected_rows(batches)) == 5 * (4 * 4 + 1)
    assert set(rows) == expected_rows(batches)
    assert NOT_RECORDED not in table.column("metric").to_pylist()
    assert {r[5] for r in rows} == {"celsius", "watts", "ratio", "", "bytes"}
    assert_sorted(rows)
    for name in ("node", "entity", "metric", "unit"):
        assert pa.types.is_dictionary(table.schema.field(name).type)
    assert table.schema.equals(METRICS_SCHEMA, check_metadata=True)
    # Each file on disk is sorted, zstd, dictionary-encoded and carries the schema version.
    for path in list_trace_files(tmp_path, "metrics"):
        on_disk = pq.read_table(path)
        assert_sorted(as_rows(on_disk))
        assert pa.types.is_dictionary(on_disk.schema.field("metric").type)
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
        assert check_file(path, "metrics").metadata[b"fleetwatch.schema_version"] == b"1"

    events = read_events(tmp_path)
    assert events.num_rows == 1
    assert events.column("kind").to_pylist() == ["xid"]
    assert events.column("code").to_pylist() == [79]
    assert events.column("ts").cast(pa.int64()).to_pylist() == [T0 + 3602 * S]
    assert events.schema.equals(EVENTS_SCHEMA)


def test_rows_spanning_midnight_land_in_two_day_partitions(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ManualClock())
    batches = [make_batch(T0 - 2 * S + i * S, i) for i in range(4)]  # 23:59:58 .. 00:00:01
    for b in batches:
        rec.add(b)
    rec.flush()
    parts = sorted({p.parent.name for p in list_trace_files(tmp_path, "metrics")})
    assert parts == ["date=2025-12-31", "date=2026-01-01"]
    for path in list_trace_files(tmp_path, "metrics"):
        days = {day_of(t) for t in pq.read_table(path).column("ts").cast(pa.int64()).to_pylist()}
        assert days == {path.parent.name.removeprefix("date=")}
    assert set(as_rows(read_metrics(tmp_path))) == expected_rows(batches)
    assert set(as_rows(read_metrics(tmp_path, start_ns=T0))) == expected_rows(batches[2:])
    assert set(as_rows(read_metrics(tmp_path, end_ns=T0))) == expected_rows(batches[:2])


def test_read_filters_by_time_node_metric_and_entity(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ManualClock())
    batches = [make_batch(T0 + i * S, i) for i in range(6)]
    for b in batches:
        rec.add(b)
    rec.flush()
    window = read_metrics(tmp_path, start_ns=T0 + 2 * S, end_ns=T0 + 4 * S)
    assert set(as_rows(window)) == expected_rows(batches[2:4])
    only = read_metrics(tmp_path, nodes=["node-a"], metrics=["fleetwatch_gpu_power_watts"])
    assert set(only.column("node").to_pylist()) == {"node-a"}
    assert set(only.column("metric").to_pylist()) == {"fleetwatch_gpu_power_watts"}
    assert only.num_rows == 6 * 2
    eth = read_metrics(tmp_path, entities=["eth0"])
    assert eth.column("value").to_pylist() == [i * 1000.0 for i in range(6)]
    assert read_metrics(tmp_path, nodes=["nowhere"]).num_rows == 0
    assert read_metrics(tmp_path / "empty").schema.equals(METRICS_SCHEMA)


def test_unknown_metric_is_a_key_error_and_keeps_nothing(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ManualClock())
    b = make_batch(T0)
    b.add("fleetwatch_gpu_made_up_metric", NODES["node-a"][0], 1.0)
    with pytest.raises(KeyError, match="fleetwatch_gpu_made_up_metric"):
        rec.add(b)
    assert rec.pending_rows == 0
    assert rec.flush() == []


def test_stats_count_rows_files_and_bytes(tmp_path: Path) -> None:
    clock = ManualClock()
    rec = Recorder(tmp_path, clock)
    rec.add(make_batch(T0, with_events=True))
    clock.advance(5)
    written = rec.flush()
    assert rec.rows_written == 17 + 1
    assert rec.files_written == 3             # metrics, events and the entities table
    assert rec.bytes_written == sum(p.stat().st_size for p in written)
    assert rec.last_flush_ns == clock.now_ns()
    assert rec.pending_rows == 0


def test_duckdb_reads_the_hive_layout(tmp_path: Path) -> None:
    import duckdb

    rec = Recorder(tmp_path, ManualClock())
    for i in range(3):
        rec.add(make_batch(T0 - S + i * S, i))
    rec.flush()
    glob = str(tmp_path / "metrics" / "*" / "*.parquet")
    got = duckdb.sql(f"SELECT date, count(*) FROM read_parquet('{glob}', hive_partitioning=true) "
                     "GROUP BY date ORDER BY date").fetchall()
    assert [(str(d), n) for d, n in got] == [("2025-12-31", 17), ("2026-01-01", 34)]


# --- rotation --------------------------------------------------------------------------------------


def test_rotation_by_time_merges_the_segment_into_one_sorted_file(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    rec = Recorder(tmp_path, clock, flush_interval_s=10, rotate_interval_s=60)
    batches = []
    for i in range(6):  # flushes at t = 0, 10, ..., 50 s: one segment of six hot files
        batches.append(make_batch(clock.now_ns(), i))
        rec.add(batches[-1])
        rec.flush()
        clock.advance(10)
    assert len(files(tmp_path / "metrics", "part-")) == 6
    assert files(tmp_path / "metrics", "seg-") == []

    batches.append(make_batch(clock.now_ns(), 6))
    rec.add(batches[-1])
    rec.flush()  # t = 60 s: the segment is 60 s old, so this flush closes it
    assert files(tmp_path / "metrics", "part-") == []
    (merged,) = files(tmp_path / "metrics", "seg-")
    on_disk = as_rows(pq.read_table(merged))
    assert_sorted(on_disk)
    assert set(on_disk) == expected_rows(batches)
    assert len(on_disk) == len(expected_rows(batches))

    batches.append(make_batch(clock.now_ns(), 7))
    rec.add(batches[-1])
    (hot,) = data_only(rec.flush())
    assert hot.name.startswith("part-") and hot.name.split("-")[3] == "00001"  # next segment
    rows = as_rows(read_metrics(tmp_path))  # two files with different dictionaries, read back sorted
    assert_sorted(rows)
    assert sorted(rows) == sorted(expected_rows(batches))


def test_rotation_by_size(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    rec = Recorder(tmp_path, clock, rotate_bytes=1 << 40)
    rec.add(make_batch(T0, 0))
    first = data_only(rec.flush())
    rec.rotate_bytes = int(sum(p.stat().st_size for p in first) * 2.5)  # a segment closes on its third file
    batches = [make_batch(T0, 0)]
    for i in range(1, 6):
        clock.advance(1)
        batches.append(make_batch(clock.now_ns(), i))
        rec.add(batches[-1])
        rec.flush()
    merged = files(tmp_path / "metrics", "seg-")
    hot = files(tmp_path / "metrics", "part-")
    assert [len(pq.read_table(p)) for p in merged] == [3 * 17, 3 * 17]
    assert hot == []
    assert sorted(as_rows(read_metrics(tmp_path))) == sorted(expected_rows(batches))


def test_rotation_of_a_segment_spanning_midnight_merges_per_day(tmp_path: Path) -> None:
    clock = ManualClock(T0 - 2 * S)
    rec = Recorder(tmp_path, clock)
    batches = []
    for i in range(4):
        batches.append(make_batch(clock.now_ns(), i))
        rec.add(batches[-1])
        rec.flush()
        clock.advance(1)
    merged = rec.rotate()
    assert sorted(p.parent.name for p in merged) == ["date=2025-12-31", "date=2026-01-01"]
    assert files(tmp_path / "metrics", "part-") == []
    assert sorted(as_rows(read_metrics(tmp_path))) == sorted(expected_rows(batches))


# --- crash safety ----------------------------------------------------------------------------------


def test_temp_files_are_ignored_by_readers_and_cleaned_at_start(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ManualClock())
    rec.add(make_batch(T0))
    (path,) = data_only(rec.flush())
    stale = path.parent / ".tmp-0123456789abcdef.parquet"
    stale.write_bytes(b"PAR1 half a file")
    gt_stale = tmp_path / "ground_truth" / ".tmp-feed.parquet"
    gt_stale.parent.mkdir()
    gt_stale.write_bytes(b"")
    assert stale not in list_trace_files(tmp_path)
    assert read_metrics(tmp_path).num_rows == 17

    again = Recorder(tmp_path, ManualClock())  # the constructor runs recover()
    assert not stale.exists() and not gt_stale.exists()
    assert again.recover() == []
    assert path.exists()


def test_failed_write_leaves_no_temp_file_and_retries_the_rows(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(tmp_path, ManualClock())
    batches = [make_batch(T0, 0), make_batch(T0 + S, 1)]
    rec.add(batches[0])
    real_replace = os.replace

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder_mod.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        rec.flush()
    assert rec.flush_errors == 1
    assert list(tmp_path.rglob(".tmp-*")) == []
    assert rec.pending_rows == 17

    monkeypatch.setattr(recorder_mod.os, "replace", real_replace)
    rec.add(batches[1])
    rec.flush()
    assert rec.pending_rows == 0
    assert sorted(as_rows(read_metrics(tmp_path))) == sorted(expected_rows(batches))


def test_pending_rows_are_bounded_after_repeated_failures(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(tmp_path, ManualClock(), max_pending_rows=40)

    def full_disk(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder_mod.os, "replace", full_disk)
    for i in range(4):
        rec.add(make_batch(T0 + i * S, i))
        with pytest.raises(OSError):
            rec.flush()
    assert rec.pending_rows <= 40
    assert rec.rows_dropped == 4 * 17 - rec.pending_rows


def test_crash_between_merge_rename_and_input_deletion(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(T0)
    rec = Recorder(tmp_path, clock)
    batches = []
    for i in range(3):
        batches.append(make_batch(clock.now_ns(), i))
        rec.add(batches[-1])
        rec.flush()
        clock.advance(1)

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise OSError("simulated crash before the inputs are deleted")

    monkeypatch.setattr(Path, "unlink", crash)
    rec.rotate()  # merge fails after the rename: merged file and its inputs coexist
    monkeypatch.undo()
    assert len(files(tmp_path / "metrics", "part-")) == 3
    assert len(files(tmp_path / "metrics", "seg-")) == 1
    listed = list_trace_files(tmp_path, "metrics")
    assert [p.name.split("-")[0] for p in listed] == ["seg"]
    rows = as_rows(read_metrics(tmp_path))
    assert len(rows) == len(expected_rows(batches))  # no row twice
    Recorder(tmp_path, ManualClock())  # the constructor's recover() deletes the merged inputs
    assert files(tmp_path / "metrics", "part-") == []
    assert sorted(as_rows(read_metrics(tmp_path))) == sorted(rows)


def test_readers_racing_flushes_and_merges_see_a_clean_prefix(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    rec = Recorder(tmp_path, clock)
    total = 60
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(total):
                rec.add(make_batch(T0 + i * S, i))
                rec.flush()
                if i % 3 == 2:
                    rec.rotate()
        except BaseException as err:  # surfaced by the main thread's assertion
            errors.append(err)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    reads = 0
    while not done.is_set() or reads == 0:
        table = read_metrics(tmp_path)
        ts = table.column("ts").cast(pa.int64()).to_pylist()
        n = len(set(ts))
        assert sorted(set(ts)) == [T0 + i * S for i in range(n)]  # a prefix of the batches...
        assert table.num_rows == 17 * n                            # ...each batch exactly once
        reads += 1
    thread.join()
    assert not errors
    assert read_metrics(tmp_path).num_rows == 17 * total


# --- bad files --------------------------------------------------------------------------------------


def _alien(path: Path) -> None:
    pq.write_table(pa.table({"x": [1, 2]}), path)


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not parquet at all")


def _future(path: Path) -> None:
    meta = {**METRICS_SCHEMA.metadata, b"fleetwatch.schema_version": b"99"}
    pq.write_table(METRICS_SCHEMA.empty_table().replace_schema_metadata(meta), path)


def _wrong_table(path: Path) -> None:
    pq.write_table(EVENTS_SCHEMA.empty_table(), path)


def _truncated(path: Path) -> None:
    rec_dir = path.parent.parent.parent / "src"
    rec = Recorder(rec_dir, ManualClock())
    rec.add(make_batch(T0))
    (src,) = data_only(rec.flush())
    data = src.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("make", "why"), [
    (_alien, "not a fleetwatch trace"),
    (_garbage, "not a readable Parquet file"),
    (_future, "schema version 99 (newer than this reader)"),
    (_wrong_table, "holds the 'events' table"),
    (_truncated, "not a readable Parquet file"),
], ids=["alien", "garbage", "future-version", "wrong-table", "truncated"])
def test_bad_files_raise_trace_error_naming_the_file(tmp_path: Path, make, why: str) -> None:
    trace = tmp_path / "trace"
    rec = Recorder(trace, ManualClock())
    rec.add(make_batch(T0))
    rec.flush()
    bad = trace / "metrics" / "date=2026-01-01" / "intruder.parquet"
    make(bad)
    with pytest.raises(TraceError) as info:
        read_metrics(trace)
    assert str(bad) in str(info.value)
    assert why in str(info.value)


def test_corrupt_data_pages_raise_trace_error_naming_the_file(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ManualClock())
    for i in range(50):
        rec.add(make_batch(T0 + i * S, i))
    (path,) = data_only(rec.flush())
    data = bytearray(path.read_bytes())
    footer_len = int.from_bytes(data[-8:-4], "little")
    for i in range(8, len(data) - footer_len - 8, 7):  # scribble over the pages, keep the footer
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(TraceError, match="corrupt data") as info:
        read_metrics(tmp_path)
    assert str(path) in str(info.value)


# --- ground truth -----------------------------------------------------------------------------------


def _fault(fault_id: int, failure: int | None) -> dict[str, object]:
    return {"fault_id": fault_id, "node": "node-a", "entity": "GPU-node-a-0000", "gpu_index": 0,
            "kind": "hbm-degradation", "cause": "hbm3", "onset": T0, "failure": failure,
            "had_precursors": failure is not None, "xid": 48 if failure else None, "detail": ""}


def test_ground_truth_is_rewritten_atomically_with_all_rows(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ManualClock())
    assert read_ground_truth(tmp_path) is None
    rec.add_ground_truth([_fault(1, T0 + 3600 * S)])
    rec.flush()
    first = read_ground_truth(tmp_path)
    assert first is not None and first.column("fault_id").to_pylist() == [1]
    rec.add_ground_truth([_fault(2, None)])
    rec.flush()
    both = read_ground_truth(tmp_path)
    assert both is not None
    assert both.schema.equals(GROUND_TRUTH_SCHEMA, check_metadata=True)
    assert both.column("fault_id").to_pylist() == [1, 2]
    assert both.column("failure").to_pylist()[1] is None
    assert both.column("failure").to_pylist()[0] == dt.datetime(2026, 1, 1, 1, tzinfo=dt.UTC)
    assert [p.name for p in (tmp_path / "ground_truth").iterdir()] == ["ground_truth.parquet"]
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, KeyError, TypeError, ValueError)):
        rec.add_ground_truth([{"fault_id": "not a number"}])


def test_ground_truth_snapshots_upsert_by_fault_id(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ManualClock())
    rec.add_ground_truth([])  # a simulation with no fault yet still gets an (empty) file
    assert [p.name for p in rec.flush()] == ["ground_truth.parquet"]
    assert read_ground_truth(tmp_path).num_rows == 0  # type: ignore[union-attr]
    snapshot = [_fault(1, None), _fault(2, None)]
    rec.add_ground_truth(snapshot)
    rec.flush()
    rec.add_ground_truth(snapshot)  # the same snapshot again: nothing to rewrite
    assert rec.flush() == []
    rec.add_ground_truth([_fault(1, T0 + 60 * S), _fault(2, None)])  # fault 1 has failed since
    rec.flush()
    gt = read_ground_truth(tmp_path)
    assert gt is not None
    assert gt.column("fault_id").to_pylist() == [1, 2]
    failure = gt.column("failure").cast(pa.int64()).to_pylist()
    assert failure == [T0 + 60 * S, None]


# --- run loop -------------------------------------------------------------------------------------


async def test_run_flushes_off_the_loop_and_closes_on_stop(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    rec = Recorder(tmp_path, clock, flush_interval_s=10)
    threads: set[int] = set()
    real_flush = rec.flush

    def spy() -> list[Path]:
        threads.add(threading.get_ident())
        return real_flush()

    rec.flush = spy  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(rec.run(stop))
    batches = []
    for i in range(3):
        batches.append(make_batch(clock.now_ns(), i))
        rec.add(batches[-1])
        for _ in range(500):  # the manual clock makes each flush immediate; wait for it on the loop
            await asyncio.sleep(0.001)
            if rec.pending_rows == 0:
                break
    assert rec.files_written >= 1
    assert clock.now_ns() > T0  # time came from the injected clock's sleep
    stop.set()
    await asyncio.wait_for(task, 5)
    assert threads and threading.get_ident() not in threads
    assert files(tmp_path / "metrics", "part-") == []  # close() merged the open segment
    assert sorted(as_rows(read_metrics(tmp_path))) == sorted(expected_rows(batches))


async def test_run_survives_a_failing_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock(T0)
    rec = Recorder(tmp_path, clock, flush_interval_s=1)
    calls = 0
    real_write = recorder_mod._write_atomic

    def flaky(*args: object) -> tuple[Path, int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError(5, "I/O error")
        return real_write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(recorder_mod, "_write_atomic", flaky)
    rec.add(make_batch(T0))
    stop = asyncio.Event()
    task = asyncio.create_task(rec.run(stop))
    for _ in range(500):
        await asyncio.sleep(0.001)
        if rec.rows_written:
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    assert rec.flush_errors == 1
    assert read_metrics(tmp_path).num_rows == 17


def test_entities_table_keeps_identity_labels_across_restarts(tmp_path: Path) -> None:
    rec = Recorder(tmp_path, ManualClock())
    batch = make_batch(T0)
    rec.add(batch)
    rec.close()
    table = read_entities(tmp_path)
    assert table is not None
    got = {(r["node"], r["entity"]): entity_from_record(r) for r in table.to_pylist()}
    for e in set(batch.entity):
        assert got[(e.node, e.id)] == e           # labels and dcgm labels survive byte for byte
    # a new recorder in the same directory adds to the table instead of replacing it
    rec2 = Recorder(tmp_path, ManualClock())
    extra = Batch("s", T0 + S)
    gpu = gpu_entity("node-z", 0, "GPU-ffffffff-0000-0000-0000-000000000000", "00000000:18:00.0", "m", "d")
    extra.add("fleetwatch_gpu_power_watts", gpu, 1.0)
    rec2.add(extra)
    rec2.close()
    table = read_entities(tmp_path)
    assert table is not None and table.num_rows == len(got) + 1


def test_recorder_reports_its_own_health(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from collector.exposition import Renderer

    clock = ManualClock()
    rec = Recorder(tmp_path, clock)
    rec.add(make_batch(T0))
    pending = rec.self_batch()
    rec.flush()
    done = rec.self_batch()
    values = {s.name: s.value for f in text_string_to_metric_families(
        Renderer("dcgm").render_text([done]).decode()) for s in f.samples}     # shown in every names mode
    assert values["fleetwatch_recorder_rows_written_total"] == rec.rows_written > 0
    assert values["fleetwatch_recorder_pending_rows"] == 0
    assert values["fleetwatch_recorder_last_flush_timestamp_seconds"] == clock.now_ns() / 1e9
    assert dict(zip(pending.metric, pending.value, strict=True))["fleetwatch_recorder_pending_rows"] > 0
