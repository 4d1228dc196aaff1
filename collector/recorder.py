"""The trace recorder: buffers batches and writes them as crash-safe, day-partitioned Parquet files.

Crash safety. Every flush writes a new small file: first to `.tmp-<uuid>.parquet` in the target
directory, fsynced, then os.replace()d to its final `part-…` name and the directory fsynced. A file with
a final name is therefore always complete; a SIGKILL loses only what was buffered since the last flush
(one flush interval) plus any `.tmp-*` file, which readers ignore and the next Recorder deletes.

Segments. The hot files written since the last rotation form the current segment. When the segment is
older than rotate_interval_s or bigger than rotate_bytes (checked after each flush), it is closed:
per day partition, its hot files are merged into one sorted `seg-…` file (temp, fsync, rename), then
the inputs are deleted. Between the rename and the deletes both exist; trace_io skips hot files whose
segment has a merged file, so readers never see rows twice, and the next Recorder deletes such leftovers.
See collector/trace_io.py for the naming rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from collector.batch import Batch, Entity, entity_record
from collector.catalogue import METRICS, spec
from collector.clock import Clock
from collector.fsync import atomic_file
from collector.fsync import fsync_dir as _fsync_dir
from collector.trace import (
    ENTITIES_DIR,
    ENTITIES_FILE,
    ENTITIES_SCHEMA,
    EVENTS_DIR,
    GROUND_TRUTH_DIR,
    GROUND_TRUTH_SCHEMA,
    METRICS_DIR,
)
from collector.trace_io import (
    GROUND_TRUTH_FILE,
    NS_PER_DAY,
    SCHEMAS,
    SORT_KEYS,
    TEMP_PREFIX,
    day_of,
    hot_file_name,
    segment_file_name,
    sort_order,
    superseded,
)

log = logging.getLogger(__name__)

MIB = 1024 * 1024
COMPRESSION = "zstd"
# Recorded metric → unit; metrics the catalogue marks record=False are dropped silently.
_UNITS: dict[str, str] = {m.name: m.unit for m in METRICS if m.record}
_UNRECORDED: frozenset[str] = frozenset(m.name for m in METRICS if not m.record)


@dataclass
class _Buffer:
    """Rows added since the last flush, column by column (plain lists: appending is the cheap part)."""

    m_ts: list[int] = field(default_factory=list)
    m_node: list[str] = field(default_factory=list)
    m_entity: list[str] = field(default_factory=list)
    m_metric: list[str] = field(default_factory=list)
    m_value: list[float] = field(default_factory=list)
    e_ts: list[int] = field(default_factory=list)
    e_node: list[str] = field(default_factory=list)
    e_entity: list[str] = field(default_factory=list)
    e_kind: list[str] = field(default_factory=list)
    e_code: list[int] = field(default_factory=list)
    e_detail: list[str] = field(default_factory=list)






def _encode(plain: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table of plain columns to `schema` (dictionary-encoding its string columns)."""
    cols = []
    for f in schema:
        col = plain.column(f.name)
        if pa.types.is_dictionary(f.type):
            col = col.cast(pa.string()).combine_chunks().dictionary_encode()
        elif col.type != f.type:
            col = col.cast(f.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def _write_atomic(table: pa.Table, directory: Path, name: str) -> tuple[Path, int]:
    """Write `table` to directory/name via a fsynced temp file and a rename; (path, size)."""
    target = directory / name
    with atomic_file(target, TEMP_PREFIX) as tmp:
        pq.write_table(table, tmp, compression=COMPRESSION)
    return target, target.stat().st_size


_PROCESS = Entity(kind="process", node="", id="fleetwatch", labels=())


class Recorder:
    """Buffers batches and writes metrics, events and ground truth as a Parquet trace under data_dir.

    add() runs on the event loop and only appends to lists; flush(), rotate() and close() block on
    disk and belong on a worker thread (run() does that). All methods are thread-safe.
    """

    def __init__(self, data_dir: str | Path, clock: Clock, flush_interval_s: float = 10.0,
                 rotate_interval_s: float = 3600.0, rotate_bytes: int = 64 * MIB,
                 max_pending_rows: int = 5_000_000) -> None:
        if flush_interval_s <= 0:
            raise ValueError(f"flush_interval_s must be > 0, got {flush_interval_s}")
        self.data_dir = Path(data_dir)
        self.clock = clock
        self.flush_interval_s = flush_interval_s
        self.rotate_interval_s = rotate_interval_s
        self.rotate_bytes = rotate_bytes
        self.max_pending_rows = max_pending_rows
        # Self-metrics. rows_written counts metric and event rows written by flushes (merges rewrite
        # rows already counted); files_written and bytes_written count merged files too.
        self.rows_written = 0
        self.files_written = 0
        self.bytes_written = 0
        self.last_flush_ns = 0
        self.flush_errors = 0
        self.rows_dropped = 0
        self._buf = _Buffer()
        self._buf_lock = threading.Lock()   # add() on the loop thread vs. flush() on a worker
        self._io_lock = threading.RLock()   # one writer at a time: flush, rotate, close
        self._pending: list[tuple[str, str, pa.Table]] = []  # (table, day, rows) not yet on disk
        self._run = uuid.uuid4().hex[:8]    # keeps names unique across restarts and writers
        self._segment = 0
        self._seq = 0
        self._seg_files: dict[Path, list[Path]] = {}
        self._seg_bytes = 0
        self._seg_started: float | None = None
        self._ground_truth: dict[int, dict[str, Any]] | None = None  # None: never given any
        self._ground_truth_dirty = False
        self._known_dirs: set[Path] = set()
        # Identity labels of every entity recorded: (node, entity id) → entities-table row.
        self._entities: dict[tuple[str, str], dict[str, str]] = {}
        self._entity_ids: set[int] = set()      # id() of Entity objects already seen: the cheap check
        self._entity_objs: list[Any] = []       # keeps those objects alive so their ids stay unique
        self._entities_dirty = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.recover()
        self._load_entities()

    # --- buffering (event loop) ---------------------------------------------------------------

    def add(self, batch: Batch) -> None:
        """Buffer the batch's recorded metric rows and its events; KeyError for a metric not catalogued."""
        units = _UNITS
        node: list[str] = []
        entity: list[str] = []
        metric: list[str] = []
        value: list[float] = []
        fresh: list[Any] = []
        for m, e, v in zip(batch.metric, batch.entity, batch.value, strict=True):
            if m not in units:
                if m in _UNRECORDED:
                    continue
                spec(m)  # raises KeyError naming the metric; nothing of the batch is kept
            node.append(e.node)
            entity.append(e.id)
            metric.append(m)
            value.append(v)
            if id(e) not in self._entity_ids:
                fresh.append(e)
        for e in fresh:          # only once the whole batch is known good
            self._note_entity(e)
        with self._buf_lock:
            buf = self._buf
            buf.m_ts.extend([batch.ts_ns] * len(metric))
            buf.m_node.extend(node)
            buf.m_entity.extend(entity)
            buf.m_metric.extend(metric)
            buf.m_value.extend(value)
            for ev in batch.events:
                buf.e_ts.append(ev.ts_ns)
                buf.e_node.append(ev.node)
                buf.e_entity.append(ev.entity)
                buf.e_kind.append(ev.kind)
                buf.e_code.append(int(ev.code))
                buf.e_detail.append(ev.detail)

    def self_batch(self) -> Batch:
        """The recorder's own health as fleetwatch_recorder_* readings (for the exporter)."""
        b = Batch("recorder", self.clock.now_ns())
        b.add("fleetwatch_recorder_rows_written_total", _PROCESS, self.rows_written)
        b.add("fleetwatch_recorder_written_bytes_total", _PROCESS, self.bytes_written)
        b.add("fleetwatch_recorder_flush_errors_total", _PROCESS, self.flush_errors)
        b.add("fleetwatch_recorder_rows_dropped_total", _PROCESS, self.rows_dropped)
        b.add("fleetwatch_recorder_pending_rows", _PROCESS, self.pending_rows)
        if self.last_flush_ns:
            b.add("fleetwatch_recorder_last_flush_timestamp_seconds", _PROCESS, self.last_flush_ns / 1e9)
        return b

    def _note_entity(self, e: Any) -> None:
        if len(self._entity_objs) > 100_000:    # entities churn (hot-plug): forget the fast-path cache
            self._entity_ids.clear()
            self._entity_objs.clear()
        self._entity_ids.add(id(e))
        self._entity_objs.append(e)
        row = entity_record(e)
        key = (row["node"], row["entity"])
        with self._buf_lock:
            if self._entities.get(key) != row:
                self._entities[key] = row
                self._entities_dirty = True

    def _load_entities(self) -> None:
        path = self.data_dir / ENTITIES_DIR / ENTITIES_FILE
        if not path.is_file():
            return
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, pa.ArrowInvalid) as err:
            log.warning("recorder: cannot read %s (%s); it will be rewritten", path, err)
            return
        for row in rows:
            self._entities[(row["node"], row["entity"])] = row

    def add_ground_truth(self, rows: list[dict[str, Any]]) -> None:
        """Upsert ground-truth rows by fault_id (a later row replaces an earlier one); written on flush.

        Callers may pass increments or the simulator's full snapshot each time (a fault's `failure`
        fills in once it fails); the file is rewritten, atomically, only when something changed.
        """
        pa.Table.from_pylist(rows, schema=GROUND_TRUTH_SCHEMA)  # reject bad rows now, not at flush
        with self._buf_lock:
            changed = self._ground_truth is None
            if self._ground_truth is None:
                self._ground_truth = {}
            for row in rows:
                key = int(row["fault_id"])
                if self._ground_truth.get(key) != row:
                    self._ground_truth[key] = dict(row)
                    changed = True
            self._ground_truth_dirty |= changed

    @property
    def pending_rows(self) -> int:
        """Rows buffered or prepared but not yet on disk."""
        with self._buf_lock:
            buffered = len(self._buf.m_ts) + len(self._buf.e_ts)
        return buffered + sum(t.num_rows for _, _, t in self._pending)

    # --- writing (worker thread) --------------------------------------------------------------

    def flush(self) -> list[Path]:
        """Write everything buffered as new files (one per table and day); the paths written.

        A failed write keeps its rows for the next flush (up to max_pending_rows, oldest dropped).
        """
        with self._io_lock:
            with self._buf_lock:
                buf, self._buf = self._buf, _Buffer()
                gt_dirty, self._ground_truth_dirty = self._ground_truth_dirty, False
                gt = [self._ground_truth[k] for k in sorted(self._ground_truth or {})]
                ent_dirty, self._entities_dirty = self._entities_dirty, False
                ents = [self._entities[k] for k in sorted(self._entities)]
            self._pending.extend(self._prepare(buf))
            written: list[Path] = []
            try:
                while self._pending:
                    table, day, rows = self._pending[0]
                    written.append(self._write_hot(table, day, rows))
                    self._pending.pop(0)
                    self.rows_written += rows.num_rows
                if gt_dirty:
                    written.append(self._write_ground_truth(gt))
                if ent_dirty:
                    written.append(self._write_entities(ents))
            except BaseException:
                self.flush_errors += 1
                with self._buf_lock:
                    self._ground_truth_dirty |= gt_dirty
                    self._entities_dirty |= ent_dirty
                self._drop_overflow()
                raise
            self.last_flush_ns = self.clock.now_ns()
            if self._segment_due():
                self.rotate()
            return written

    def rotate(self) -> list[Path]:
        """Close the current segment: merge its hot files, per day, into one sorted file each."""
        with self._io_lock:
            files, self._seg_files = self._seg_files, {}
            segment = self._segment
            self._segment += 1
            self._seg_bytes = 0
            self._seg_started = None
            merged: list[Path] = []
            for directory, hot in files.items():
                try:
                    merged.append(self._merge(directory, hot, segment))
                except Exception:
                    # The hot files are intact and still read as they are; only compaction failed.
                    log.exception("recorder: merging segment %d in %s failed", segment, directory)
            return merged

    def close(self) -> None:
        """Final flush, then merge the open segment so a clean shutdown leaves no small files."""
        with self._io_lock:
            self.flush()
            self.rotate()

    def recover(self) -> list[Path]:
        """Delete temp files left by a crash and hot files already merged by an interrupted rotation."""
        removed: list[Path] = []
        dirs = [self.data_dir / GROUND_TRUTH_DIR, self.data_dir / ENTITIES_DIR]
        for table in (METRICS_DIR, EVENTS_DIR):
            root = self.data_dir / table
            if root.is_dir():
                dirs.extend(p for p in root.iterdir() if p.is_dir() and p.name.startswith("date="))
        for d in dirs:
            if not d.is_dir():
                continue
            names = os.listdir(d)
            doomed = [n for n in names if n.startswith(TEMP_PREFIX)] + sorted(superseded(names))
            for n in doomed:
                with contextlib.suppress(FileNotFoundError):
                    (d / n).unlink()
                    removed.append(d / n)
            if doomed:
                _fsync_dir(d)
        if removed:
            log.info("recorder: removed %d leftover file(s) from an interrupted run", len(removed))
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        """Flush every flush_interval_s of the clock's time, off the event loop; close when stop is set."""
        deadline = self.clock.monotonic()
        while not stop.is_set():
            now = self.clock.monotonic()
            deadline = max(deadline + self.flush_interval_s, now)  # no burst of catch-up flushes
            sleeper = asyncio.ensure_future(self.clock.sleep(deadline - now))
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                stopper.cancel()
            if stop.is_set():
                break
            try:
                await asyncio.to_thread(self.flush)
            except Exception:
                log.exception("recorder: flush failed; keeping the rows for the next one")
        try:
            await asyncio.to_thread(self.close)
        except Exception:
            log.exception("recorder: final flush failed; %d row(s) not written", self.pending_rows)

    # --- internals ----------------------------------------------------------------------------

    def _prepare(self, buf: _Buffer) -> list[tuple[str, str, pa.Table]]:
        """Turn buffered lists into sorted, encoded Arrow tables, one per (table, UTC day)."""
        out: list[tuple[str, str, pa.Table]] = []
        if buf.m_ts:
            plain = pa.table({
                "ts": pa.array(buf.m_ts, type=pa.int64()),
                "node": pa.array(buf.m_node, type=pa.string()),
                "entity": pa.array(buf.m_entity, type=pa.string()),
                "metric": pa.array(buf.m_metric, type=pa.string()),
                "value": pa.array(buf.m_value, type=pa.float64()),
                "unit": pa.array([_UNITS[m] for m in buf.m_metric], type=pa.string()),
            })
            out.extend(self._split_days(METRICS_DIR, plain, np.asarray(buf.m_ts, dtype=np.int64)))
        if buf.e_ts:
            plain = pa.table({
                "ts": pa.array(buf.e_ts, type=pa.int64()),
                "node": pa.array(buf.e_node, type=pa.string()),
                "entity": pa.array(buf.e_entity, type=pa.string()),
                "kind": pa.array(buf.e_kind, type=pa.string()),
                "code": pa.array(buf.e_code, type=pa.int64()),
                "detail": pa.array(buf.e_detail, type=pa.string()),
            })
            out.extend(self._split_days(EVENTS_DIR, plain, np.asarray(buf.e_ts, dtype=np.int64)))
        return out

    @staticmethod
    def _split_days(table: str, plain: pa.Table, ts: np.ndarray) -> list[tuple[str, str, pa.Table]]:
        """Split rows by UTC day, sort each part by the table's keys, and encode it."""
        days = ts // NS_PER_DAY
        unique = np.unique(days)
        out = []
        for d in unique:
            part = _encode(plain if len(unique) == 1 else plain.filter(pa.array(days == d)), SCHEMAS[table])
            out.append((table, day_of(int(d) * NS_PER_DAY), part.take(sort_order(part, SORT_KEYS[table]))))
        return out

    def _segment_due(self) -> bool:
        """Whether the open segment is big or old enough to close."""
        if not self._seg_files or self._seg_started is None:
            return False
        age = self.clock.monotonic() - self._seg_started
        return self._seg_bytes >= self.rotate_bytes or age >= self.rotate_interval_s

    def _partition(self, table: str, day: str) -> Path:
        """The day directory, created and made durable on first use."""
        d = self.data_dir / table / f"date={day}"
        if d not in self._known_dirs:
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                _fsync_dir(d.parent)
                _fsync_dir(d.parent.parent)
            self._known_dirs.add(d)
        return d

    def _write_hot(self, table: str, day: str, rows: pa.Table) -> Path:
        """Write one flush file of the current segment."""
        d = self._partition(table, day)
        first_ts = int(rows.column("ts").cast(pa.int64()).to_numpy().min())
        path, size = _write_atomic(rows, d, hot_file_name(first_ts, self._run, self._segment, self._seq))
        self._seq += 1
        self.files_written += 1
        self.bytes_written += size
        self._seg_files.setdefault(d, []).append(path)
        self._seg_bytes += size
        if self._seg_started is None:
            self._seg_started = self.clock.monotonic()
        return path

    def _merge(self, directory: Path, hot: list[Path], segment: int) -> Path:
        """Merge one partition's hot files of a segment into one sorted file, then delete them."""
        table = directory.parent.name
        if len(hot) == 1:
            # Already one sorted file: renaming it is the merge.
            first_ts = int(hot[0].name.split("-")[1])
            target = directory / segment_file_name(first_ts, self._run, segment)
            os.replace(hot[0], target)
            _fsync_dir(directory)
            return target
        rows = pa.concat_tables([pq.read_table(p, schema=SCHEMAS[table]) for p in hot]).unify_dictionaries()
        rows = rows.take(sort_order(rows, SORT_KEYS[table]))
        first_ts = min(int(p.name.split("-")[1]) for p in hot)
        target, size = _write_atomic(rows, directory, segment_file_name(first_ts, self._run, segment))
        self.files_written += 1
        self.bytes_written += size
        # Inputs go only after the merged file is durable; a crash in between leaves duplicates that
        # readers skip by name and recover() deletes.
        for p in hot:
            p.unlink()
        _fsync_dir(directory)
        return target

    def _write_ground_truth(self, rows: list[dict[str, Any]]) -> Path:
        """Replace the ground-truth file atomically with all rows given so far."""
        d = self.data_dir / GROUND_TRUTH_DIR
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            _fsync_dir(d.parent)
        table = pa.Table.from_pylist(rows, schema=GROUND_TRUTH_SCHEMA)
        path, size = _write_atomic(table, d, GROUND_TRUTH_FILE)
        self.files_written += 1
        self.bytes_written += size
        return path

    def _write_entities(self, rows: list[dict[str, str]]) -> Path:
        """Replace the entities file atomically with every entity seen (this run and earlier ones)."""
        d = self.data_dir / ENTITIES_DIR
        if not d.is_dir():
            d.mkdir(parents=True, exist_ok=True)
            _fsync_dir(d.parent)
        path, size = _write_atomic(pa.Table.from_pylist(rows, schema=ENTITIES_SCHEMA), d, ENTITIES_FILE)
        self.files_written += 1
        self.bytes_written += size
        return path

    def _drop_overflow(self) -> None:
        """Bound the rows kept after failed writes: drop the oldest parts beyond max_pending_rows."""
        total = sum(t.num_rows for _, _, t in self._pending)
        while self._pending and total > self.max_pending_rows:
            _, _, rows = self._pending.pop(0)
            total -= rows.num_rows
            self.rows_dropped += rows.num_rows
            log.warning("recorder: dropped %d unwritten row(s) after repeated write failures", rows.num_rows)
