"""Trace compaction and retention: one sorted, deduplicated file per table and day; old days deleted.

Compaction. For each day partition of the metrics and events tables, every live file (hot `part-` files,
merged `seg-` files, the simulator's and importers' files, an earlier `day-` file) is merged into one file
`day-YYYY-MM-DD.parquet`, sorted by the table's keys (metrics: node, entity, metric, ts) with identical rows
dropped. It is written to a `.tmp-` name, fsynced and renamed into place; only then are its inputs deleted.
The day file's footer lists the names it replaced (collector/trace_io.py), so a reader that lists the
directory between the rename and the deletes, or after a crash between them, skips the inputs; the next
compaction deletes such leftovers. A crash before the rename leaves the inputs as they were (and a temp
file readers ignore). Rows are merged a few nodes (or, for a big node, a few entities) at a time, so memory
stays bounded whatever the size of the day.

What is left alone: the day the recorder is writing (today, UTC, and any later day) unless all_days; and
in any partition, hot files of a segment the recorder has not merged yet if they were written within
inflight_grace_s (the recorder reads them back when it closes the segment). The grace must exceed the
recorder's rotate interval (1 h by default).

Encoding (measured on simulated traces, bench/bench_analyze.py --small prints the figures): ts
DELTA_BINARY_PACKED (sorted per series: deltas are the sampling interval), value PLAIN, strings dictionary,
zstd level 9, row groups of 2^20 rows. Against the recorder's defaults (zstd 3, dictionary ts) this is
0.79-0.81 vs 1.25 bytes per row on a 1 s, 16-node trace and 1.03 vs 2.04 on a 10 s, 1-node trace; zstd 12
saves under 1% more at 1.5x the write time, and 4x bigger row groups save ~2% but cut DuckDB's scan
parallelism (one row group per thread).

Retention. Whole days are deleted: first every day that ended more than retention_age_s ago (a day partly
inside the window is kept), then, while the trace is larger than retention_bytes, the oldest remaining day
outside the age window. A sample inside the age window is never deleted, nor the recorder's current day, so
the size limit may stay exceeded; the report says so. Deleting a day deletes its rollups/ partition too.

Rollups. compact() takes an optional after_day hook, called for every finished metrics day that has a day
file (just merged or merged earlier) with (trace_dir, day, day file): fleetwatch passes
fleetwatch.analysis.rollup.after_compaction, which writes rollups/date=DAY/rollup-day-DAY.parquet when the
current one is missing or stale (collector must not import fleetwatch, hence the hook). A hook that fails
is an error in the report; the day file stays as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from collector.clock import Clock, WallClock
from collector.fsync import atomic_file
from collector.fsync import fsync_dir as _fsync_dir
from collector.trace import ENTITIES_DIR, EVENTS_DIR, GROUND_TRUTH_DIR, METRICS_DIR
from collector.trace_io import (
    COMPACTED_FROM_KEY,
    NS_PER_DAY,
    SCHEMAS,
    SORT_KEYS,
    TEMP_PREFIX,
    TraceError,
    check_file,
    compacted_day,
    compacted_file_name,
    compacted_inputs,
    day_of,
    hot_segment,
    superseded,
)

log = logging.getLogger(__name__)

TABLES = (METRICS_DIR, EVENTS_DIR)
COMPRESSION = "zstd"
COMPRESSION_LEVEL = 9
ROW_GROUP_ROWS = 1 << 20
CHUNK_ROWS = 4_000_000          # rows merged in memory at once (~130 MB of metric columns, ×3 while sorting)
INFLIGHT_GRACE_S = 6 * 3600.0
_DATE_PREFIX = "date="
# Derived per-day summaries (written by the after_day hook), not a table of the trace schema: trace readers
# never list it; retention deletes a day's rollups with the day.
ROLLUPS_DIR = "rollups"
# compact()'s hook: (trace dir, day, the day's compacted metrics file) → a line for the report or None.
AfterDay = Callable[[Path, str, Path], "str | None"]


@dataclass(frozen=True, slots=True)
class Retention:
    """How much of a trace to keep: days younger than age_s, and at most size_bytes in all (None: no limit)."""

    age_s: float | None = None
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class MergedDay:
    """One partition compacted: how many files and rows went in and came out."""

    table: str
    day: str
    inputs: int
    rows_in: int
    rows_out: int
    bytes_in: int
    bytes_out: int


@dataclass(slots=True)
class CompactReport:
    """What compact() did."""

    merged: list[MergedDay] = field(default_factory=list)
    deleted_days: list[tuple[str, int]] = field(default_factory=list)   # (day, bytes freed)
    leftovers_removed: int = 0        # inputs of an earlier, interrupted compaction or segment merge
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)      # what the after_day hook did (rollups written)
    bytes_before: int = 0
    bytes_after: int = 0
    over_size_limit: bool = False

    def lines(self) -> list[str]:
        """A human-readable account, one line per action."""
        out = [f"merged {m.table}/date={m.day}: {m.inputs} file(s), {m.rows_in:,} → {m.rows_out:,} rows, "
               f"{_size(m.bytes_in)} → {_size(m.bytes_out)}" for m in self.merged]
        out += self.notes
        out += [f"deleted day {day}: {_size(size)}" for day, size in self.deleted_days]
        if self.leftovers_removed:
            out.append(f"removed {self.leftovers_removed} leftover file(s) of an interrupted compaction or merge")
        out += [f"skipped {s}" for s in self.skipped]
        out += [f"error: {e}" for e in self.errors]
        if self.over_size_limit:
            out.append("still over the size limit: the remaining days are inside the age window or being written")
        out.append(f"bytes before {self.bytes_before:,} ({_size(self.bytes_before)}), "
                   f"after {self.bytes_after:,} ({_size(self.bytes_after)})")
        return out


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# --- files ----------------------------------------------------------------------------------------






def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def trace_bytes(trace_dir: Path) -> int:
    """Bytes of every file under the trace's table directories."""
    total = 0
    for table in (METRICS_DIR, EVENTS_DIR, GROUND_TRUTH_DIR, ENTITIES_DIR, ROLLUPS_DIR):
        for root, _, names in os.walk(trace_dir / table):
            total += sum(_file_size(Path(root) / n) for n in names)
    return total


def _partitions(trace_dir: Path, tables: Iterable[str] = TABLES) -> dict[str, list[Path]]:
    """Day → its partition directories (metrics and/or events, or the given directories)."""
    days: dict[str, list[Path]] = {}
    for table in tables:
        root = trace_dir / table
        if not root.is_dir():
            continue
        for d in root.iterdir():
            if d.is_dir() and d.name.startswith(_DATE_PREFIX) and len(d.name) == len(_DATE_PREFIX) + 10:
                days.setdefault(d.name[len(_DATE_PREFIX):], []).append(d)
    return dict(sorted(days.items()))


def _check_trace(trace_dir: Path) -> None:
    if not trace_dir.is_dir():
        raise TraceError(f"{trace_dir}: no such trace directory")
    if not any((trace_dir / t).is_dir() for t in (METRICS_DIR, EVENTS_DIR, GROUND_TRUTH_DIR, ENTITIES_DIR)):
        raise TraceError(f"{trace_dir}: not a fleetwatch trace (no metrics/ or events/ directory)")


# --- merging --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Plan:
    """One partition's compaction: what goes in, what the new file replaces, what is only deleted."""

    inputs: list[Path]                 # files whose rows go into the day file (an old day file first)
    replaced: list[str]                # names the new day file lists as replaced (deleted after the rename)
    keep: set[str]                     # replaced names the recorder may still delete itself: left to it
    leftovers: list[str]               # names an existing day file already replaced: only deleted


def _plan(directory: Path, grace_s: float, wall_s: float) -> _Plan:
    """Decide what to merge in one partition directory."""
    names = sorted(n for n in os.listdir(directory) if n.endswith(".parquet") and not n.startswith("."))
    day_name = compacted_file_name(directory.name[len(_DATE_PREFIX):])
    old = day_name in names
    done = compacted_inputs(directory / day_name) if old else set()
    merged_hot = superseded(names)

    def recent(n: str) -> bool:
        try:
            return wall_s - (directory / n).stat().st_mtime < grace_s
        except FileNotFoundError:
            return True     # gone already: nothing to do with it

    # Hot files of a segment the recorder has not merged: it will read them back, so leave recent ones.
    in_flight = {n for n in names if hot_segment(n) is not None and n not in merged_hot and recent(n)}
    fresh = [n for n in names if n != day_name and n not in done and n not in merged_hot and n not in in_flight
             and compacted_day(n) is None]
    leftovers = sorted(n for n in names if n in done)
    if not fresh:
        # Nothing new: only inputs of an interrupted compaction (covered by the day file) and hot files
        # superseded by a segment file that the recorder's recover() has not deleted yet.
        return _Plan([], [], set(), leftovers + sorted(n for n in merged_hot if not recent(n)))
    replaced = sorted(set(fresh) | merged_hot | (done & set(names)))
    # Hot files a segment merge superseded a moment ago: the recorder deletes them itself right after
    # its rename; deleting them first would only make its unlink fail. The day file lists them anyway.
    keep = {n for n in merged_hot if recent(n)}
    inputs = ([directory / day_name] if old else []) + [directory / n for n in fresh]
    return _Plan(inputs, replaced, keep, [])


@dataclass(frozen=True, slots=True)
class _Chunk:
    """A run of rows in sort order: some whole nodes, or some entities of one node."""

    nodes: tuple[str, ...]
    entities: tuple[str, ...] | None = None


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _row_groups(pf: pq.ParquetFile, chunk: _Chunk | None) -> list[int]:
    """Row groups of a file that may hold rows of the chunk, from their node/entity statistics.

    (pyarrow does not prune row groups on dictionary columns itself, so a filtered read decodes the
    whole file; a day of a big fleet holds hundreds of chunks.)
    """
    md = pf.metadata
    if chunk is None:
        return list(range(md.num_row_groups))
    names = pf.schema_arrow.names
    bounds = [(names.index("node"), chunk.nodes[0], chunk.nodes[-1])]
    if chunk.entities is not None:
        bounds.append((names.index("entity"), chunk.entities[0], chunk.entities[-1]))
    out = []
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        overlaps = True
        for col, lo, hi in bounds:
            st = rg.column(col).statistics
            if st is not None and st.has_min_max and (_text(st.max) < lo or _text(st.min) > hi):
                overlaps = False
        if overlaps:
            out.append(i)
    return out


def _member(col: pa.ChunkedArray, values: Iterable[str]) -> np.ndarray:
    """Boolean mask of the rows of a dictionary column whose value is in `values`."""
    want = pa.array(sorted(values), pa.string())
    parts = []
    for chunk in col.chunks:
        hit = pc.is_in(chunk.dictionary, value_set=want).to_numpy(zero_copy_only=False)
        parts.append(hit[chunk.indices.to_numpy(zero_copy_only=False)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _read(inputs: list[Path], schema: pa.Schema, chunk: _Chunk | None,
          columns: list[str] | None = None) -> pa.Table:
    """The inputs' rows of one chunk (all rows for None), as one table with `schema`'s columns."""
    parts = []
    for p in inputs:
        pf = pq.ParquetFile(p)
        groups = _row_groups(pf, chunk)
        if not groups:
            continue
        t = pf.read_row_groups(groups, columns=columns)
        if chunk is not None:
            mask = _member(t.column("node"), chunk.nodes)
            if chunk.entities is not None:
                mask &= _member(t.column("entity"), chunk.entities)
            t = t.filter(pa.array(mask))
        parts.append(t.replace_schema_metadata(None))
    want = schema if columns is None else pa.schema([schema.field(c) for c in columns])
    if not parts:
        return want.empty_table()
    return pa.concat_tables([t.select(want.names).cast(want) for t in parts])


def _counts(col: pa.ChunkedArray) -> dict[str, int]:
    """Rows per value of a dictionary column."""
    counts: dict[str, int] = {}
    for chunk in col.chunks:
        n = np.bincount(chunk.indices.to_numpy(zero_copy_only=False), minlength=len(chunk.dictionary))
        for value, c in zip(chunk.dictionary.to_pylist(), n.tolist(), strict=True):
            if c:
                counts[value] = counts.get(value, 0) + c
    return dict(sorted(counts.items()))


def _runs(counts: dict[str, int], limit: int) -> Iterator[tuple[str, ...]]:
    """Consecutive runs of keys whose counts add up to at most `limit` (a bigger key is a run of its own)."""
    run: list[str] = []
    total = 0
    for key, n in counts.items():
        if run and total + n > limit:
            yield tuple(run)
            run, total = [], 0
        run.append(key)
        total += n
    if run:
        yield tuple(run)


def _chunks(inputs: list[Path], table: str, limit: int) -> Iterator[_Chunk | None]:
    """Disjoint chunks of the inputs' rows, in sort order, of about `limit` rows each."""
    schema = SCHEMAS[table]
    if table != METRICS_DIR:
        yield None              # events are few: one chunk
        return
    counts = _counts(_read(inputs, schema, None, ["node"]).column("node"))
    for nodes in _runs(counts, limit):
        if len(nodes) > 1 or counts[nodes[0]] <= limit:
            yield _Chunk(nodes)
            continue
        # One node bigger than a chunk (a day of a node sampled every second): cut it by entity.
        ents = _counts(_read(inputs, schema, _Chunk(nodes), ["node", "entity"]).column("entity"))
        for run in _runs(ents, limit):
            yield _Chunk(nodes, run)


def _key_arrays(table: pa.Table, keys: list[str]) -> list[np.ndarray]:
    """Each key column as a NumPy array that orders like the column (dictionaries by their values' rank)."""
    out = []
    for k in keys:
        col = table.column(k)
        arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            arr = arr.dictionary_encode()       # event details: equal strings get one rank
        if pa.types.is_dictionary(arr.type):
            order = pc.sort_indices(arr.dictionary).to_numpy()
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            out.append(rank[arr.indices.to_numpy(zero_copy_only=False)])
        elif pa.types.is_floating(arr.type):
            out.append(arr.to_numpy(zero_copy_only=False).view(np.int64))   # a total order, NaN included
        elif pa.types.is_timestamp(arr.type) or pa.types.is_integer(arr.type):
            out.append(arr.cast(pa.int64()).to_numpy(zero_copy_only=False))
        else:
            raise TypeError(f"cannot order column {k!r} of type {arr.type}")
    return out


def _dedup_sorted(table: pa.Table, keys: list[str]) -> pa.Table:
    """Sort by every column (the table's keys first) and drop rows identical to the previous one."""
    table = table.unify_dictionaries().combine_chunks()
    n = table.num_rows
    if n < 2:
        return table
    arrays = _key_arrays(table, keys)
    # Most chunks come from one file already in order: check before paying for a sort.
    later = np.zeros(n - 1, dtype=bool)        # row i+1 sorts after row i
    tied = np.ones(n - 1, dtype=bool)          # rows i and i+1 equal on the keys so far
    for a in arrays:
        later |= tied & (a[1:] > a[:-1])
        tied &= a[1:] == a[:-1]
    if not (later | tied).all():
        order = np.lexsort(arrays[::-1])
        table = table.take(pa.array(order))
        arrays = [a[order] for a in arrays]
        tied = np.ones(n - 1, dtype=bool)
        for a in arrays:
            tied &= a[1:] == a[:-1]
    if not tied.any():
        return table
    return table.filter(pa.array(np.concatenate([[True], ~tied])))


def _merge(directory: Path, table: str, plan: _Plan, chunk_rows: int) -> tuple[Path, int, int]:
    """Write the partition's day file from plan.inputs (temp, fsync, rename); (path, rows in, rows out)."""
    schema = SCHEMAS[table]
    keys = [*SORT_KEYS[table], *(n for n in schema.names if n not in SORT_KEYS[table])]
    meta = dict(schema.metadata or {})
    meta[COMPACTED_FROM_KEY] = json.dumps(plan.replaced).encode()
    out_schema = schema.with_metadata(meta)
    strings = [f.name for f in schema if pa.types.is_dictionary(f.type)]
    target = directory / compacted_file_name(directory.name[len(_DATE_PREFIX):])
    rows_in = rows_out = 0
    encodings = {"ts": "DELTA_BINARY_PACKED", **({"value": "PLAIN"} if "value" in schema.names else {})}
    # The writer closes before atomic_file fsyncs and renames.
    with atomic_file(target, TEMP_PREFIX) as tmp, pq.ParquetWriter(
            tmp, out_schema, compression=COMPRESSION, compression_level=COMPRESSION_LEVEL, use_dictionary=strings,
            column_encoding=encodings) as writer:
        for chunk in _chunks(plan.inputs, table, chunk_rows):
            rows = _read(plan.inputs, schema, chunk)
            rows_in += rows.num_rows
            if rows.num_rows == 0:
                continue
            rows = _dedup_sorted(rows, keys)
            rows_out += rows.num_rows
            writer.write_table(rows.replace_schema_metadata(meta), row_group_size=ROW_GROUP_ROWS)
    return target, rows_in, rows_out


def _unlink_all(directory: Path, names: list[str]) -> int:
    removed = 0
    for n in names:
        with contextlib.suppress(FileNotFoundError):
            (directory / n).unlink()
            removed += 1
    if names:
        _fsync_dir(directory)
    return removed


def _remove_stale_temps(directory: Path, grace_s: float, wall_s: float) -> None:
    """Delete temp files a crashed writer left (old ones only: a live writer may own a recent one)."""
    for n in os.listdir(directory):
        if n.startswith(TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                if wall_s - (directory / n).stat().st_mtime >= grace_s:
                    (directory / n).unlink()


def compact_partition(directory: Path, table: str, *, inflight_grace_s: float = INFLIGHT_GRACE_S,
                      chunk_rows: int = CHUNK_ROWS, report: CompactReport | None = None) -> MergedDay | None:
    """Compact one day partition directory of `table`; None when there was nothing new to merge.

    TraceError (naming the file) when an input is not a readable trace file of that table: nothing is
    written or deleted then.
    """
    report = report if report is not None else CompactReport()
    wall_s = time.time()
    _remove_stale_temps(directory, inflight_grace_s, wall_s)
    plan = _plan(directory, inflight_grace_s, wall_s)
    if plan.leftovers:
        report.leftovers_removed += _unlink_all(directory, plan.leftovers)
    if not plan.inputs:
        return None
    for p in plan.inputs:
        try:
            check_file(p, table)
        except FileNotFoundError as err:
            raise TraceError(f"{p}: vanished while compacting (another compaction running?)") from err
    bytes_in = sum(_file_size(p) for p in plan.inputs)
    try:
        target, rows_in, rows_out = _merge(directory, table, plan, chunk_rows)
    except (pa.ArrowException, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise TraceError(f"{directory}: a file vanished while compacting ({err})") from err
        raise TraceError(f"{directory}: compaction failed, inputs kept ({err})") from err
    # The day file is durable and lists its inputs: from here on, deleting them changes nothing for readers.
    _unlink_all(directory, [n for n in plan.replaced if n not in plan.keep])
    return MergedDay(table=table, day=directory.name[len(_DATE_PREFIX):], inputs=len(plan.inputs),
                     rows_in=rows_in, rows_out=rows_out, bytes_in=bytes_in, bytes_out=_file_size(target))


# --- retention ------------------------------------------------------------------------------------


def _delete_day(dirs: list[Path]) -> int:
    """Delete a day's partition directories; the bytes freed."""
    freed = 0
    for d in dirs:
        for entry in list(d.iterdir()):
            size = _file_size(entry)
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                freed += size
        with contextlib.suppress(OSError):      # a writer may have just put a file there: keep the dir
            d.rmdir()
        _fsync_dir(d.parent)
    return freed


def _day_end_ns(day: str) -> int:
    """Unix ns of the end of a UTC day (YYYY-MM-DD)."""
    start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    return int(start.timestamp()) * 10**9 + NS_PER_DAY


# --- entry points ---------------------------------------------------------------------------------


def compact(trace_dir: str | os.PathLike[str], retention_age_s: float | None = None,
            retention_bytes: int | None = None, now_ns: int | None = None, *, all_days: bool = False,
            inflight_grace_s: float = INFLIGHT_GRACE_S, chunk_rows: int = CHUNK_ROWS,
            after_day: AfterDay | None = None) -> CompactReport:
    """Apply age retention, compact every finished day of metrics and events, then apply the size limit.

    now_ns (default: the wall clock) decides "today" and the age window. A partition whose files cannot
    be read is skipped and named in report.errors; the others are still compacted. after_day is called
    for each finished metrics day with a day file (see the module docstring).
    """
    trace_dir = Path(trace_dir)
    _check_trace(trace_dir)
    if retention_age_s is not None and retention_age_s < 0:
        raise ValueError(f"retention age must be >= 0, got {retention_age_s}")
    if retention_bytes is not None and retention_bytes < 0:
        raise ValueError(f"retention size must be >= 0, got {retention_bytes}")
    now_ns = time.time_ns() if now_ns is None else int(now_ns)
    today = day_of(now_ns)
    report = CompactReport(bytes_before=trace_bytes(trace_dir))
    days = _partitions(trace_dir)
    rollups = _partitions(trace_dir, (ROLLUPS_DIR,))

    def delete_day(day: str) -> int:
        return _delete_day(days.pop(day) + rollups.pop(day, []))

    def inside_age_window(day: str) -> bool:
        return retention_age_s is not None and _day_end_ns(day) > now_ns - round(retention_age_s * 1e9)

    if retention_age_s is not None:
        for day in [d for d in days if d < today and not inside_age_window(d)]:
            report.deleted_days.append((day, delete_day(day)))
    for day, dirs in days.items():
        if day >= today and not all_days:
            report.skipped.append(f"date={day}: the recorder may still be writing it (use --all)")
            continue
        for d in dirs:
            table = d.parent.name
            try:
                merged = compact_partition(d, table, inflight_grace_s=inflight_grace_s, chunk_rows=chunk_rows,
                                           report=report)
            except TraceError as err:
                report.errors.append(str(err))
                log.warning("compaction of %s skipped: %s", d, err)
                continue
            if merged is not None:
                report.merged.append(merged)
            if after_day is not None and table == METRICS_DIR:
                _run_hook(after_day, trace_dir, day, d / compacted_file_name(day), report)
    if retention_bytes is not None:
        total = trace_bytes(trace_dir)
        for day in list(days):
            if total <= retention_bytes:
                break
            if day >= today or inside_age_window(day):
                break       # days are in order: every later day is protected too
            freed = delete_day(day)
            report.deleted_days.append((day, freed))
            total -= freed
        report.over_size_limit = total > retention_bytes
    report.bytes_after = trace_bytes(trace_dir)
    return report


def _run_hook(after_day: AfterDay, trace_dir: Path, day: str, day_file: Path, report: CompactReport) -> None:
    """Call the after_day hook for a compacted metrics day; its failure is a report error, not an exception."""
    if not day_file.is_file():
        return
    try:
        note = after_day(trace_dir, day, day_file)
    except Exception as err:     # a derived summary: the day file itself is fine, so report and go on
        report.errors.append(f"date={day}: after-compaction hook failed: {err}")
        log.warning("after-compaction hook for %s failed", day, exc_info=True)
        return
    if note:
        report.notes.append(note)


async def compact_loop(trace_dir: str | os.PathLike[str], stop: asyncio.Event, interval_s: float,
                       retention: Retention | None = None, *, clock: Clock | None = None,
                       after_day: AfterDay | None = None) -> None:
    """Compact and apply retention every interval_s (of the clock) until stop is set; never raises.

    The first pass runs at once. Each pass runs in a worker thread; its errors are logged.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    clock = clock or WallClock()
    retention = retention or Retention()
    while not stop.is_set():
        try:
            report = await asyncio.to_thread(
                compact, trace_dir, retention_age_s=retention.age_s, retention_bytes=retention.size_bytes,
                now_ns=clock.now_ns(), after_day=after_day)
        except TraceError as err:
            log.debug("compaction: %s", err)        # no trace recorded yet
        except Exception:
            log.exception("compaction of %s failed", trace_dir)
        else:
            for line in report.lines()[:-1]:
                (log.warning if line.startswith(("error", "still over")) else log.info)("compaction: %s", line)
        sleeper = asyncio.ensure_future(clock.sleep(interval_s))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()
