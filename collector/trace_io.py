"""Reading Parquet traces back (metrics, events, ground truth) and the file-naming rules writers share.

Layout (collector/trace.py): TRACE_DIR/<table>/date=YYYY-MM-DD/<file>.parquet for metrics and events;
TRACE_DIR/ground_truth/ground_truth.parquet for the ground truth (one small file, replaced atomically).

File names inside a day partition:
- `.tmp-<uuid>.parquet`: a write in progress or one a crash cut short; readers never look at it.
- `part-<first_ts>-<run>-<segment>-<seq>.parquet`: a "hot" file, one per flush.
- `seg-<first_ts>-<run>-<segment>.parquet`: the hot files of one closed segment merged into one.
- `day-YYYY-MM-DD.parquet`: every file of the partition compacted into one (collector/compact.py).
A `seg-` file supersedes the hot files of the same run and segment in its directory: the merge renames
the merged file into place first and deletes its inputs after, so a reader that lists the directory
between the two steps (or after a crash between them) must skip those inputs, and does, by name.
A `day-` file lists the names of the files it replaced in its footer (key fleetwatch.compacted_from);
readers skip those names in its directory for the same reason. Files written into the partition after
the compaction are not listed and are read alongside it.
`first_ts` is zero-padded Unix nanoseconds, so names sort by time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from collector.trace import (
    DATA_DIR_TRACES,
    ENTITIES_DIR,
    ENTITIES_FILE,
    ENTITIES_SCHEMA,
    EVENTS_DIR,
    EVENTS_SCHEMA,
    GROUND_TRUTH_DIR,
    GROUND_TRUTH_SCHEMA,
    METRICS_DIR,
    METRICS_SCHEMA,
    SCHEMA_VERSION,
)

TEMP_PREFIX = ".tmp-"
GROUND_TRUTH_FILE = "ground_truth.parquet"
NS_PER_DAY = 86_400 * 10**9

SCHEMAS: dict[str, pa.Schema] = {
    METRICS_DIR: METRICS_SCHEMA,
    EVENTS_DIR: EVENTS_SCHEMA,
    GROUND_TRUTH_DIR: GROUND_TRUTH_SCHEMA,
    ENTITIES_DIR: ENTITIES_SCHEMA,
}
# Sort order within a file; the recorder writes it and readers return it.
SORT_KEYS: dict[str, tuple[str, ...]] = {
    METRICS_DIR: ("node", "entity", "metric", "ts"),
    EVENTS_DIR: ("node", "entity", "ts", "kind"),
}

_HOT_RE = re.compile(r"^part-(\d{19})-([0-9a-f]{8})-(\d{5})-(\d{6})\.parquet$")
_SEG_RE = re.compile(r"^seg-(\d{19})-([0-9a-f]{8})-(\d{5})\.parquet$")
_DAY_RE = re.compile(r"^day-(\d{4}-\d{2}-\d{2})\.parquet$")
_DATE_RE = re.compile(r"^date=(\d{4}-\d{2}-\d{2})$")
# Footer key of a compacted day file: JSON list of the file names (same directory) it replaced.
COMPACTED_FROM_KEY = b"fleetwatch.compacted_from"
_TS_TYPE = pa.timestamp("ns", tz="UTC")
_PARTITIONING = ds.partitioning(pa.schema([pa.field("date", pa.string())]), flavor="hive")
_MAX_ATTEMPTS = 5


class TraceError(Exception):
    """A trace file is missing its fleetwatch metadata, has the wrong schema, or cannot be read."""


# --- naming ---------------------------------------------------------------------------------------


def day_of(ts_ns: int) -> str:
    """The UTC day (YYYY-MM-DD) of a Unix-nanosecond timestamp: the row's date= partition."""
    return (dt.datetime(1970, 1, 1) + dt.timedelta(days=ts_ns // NS_PER_DAY)).date().isoformat()


def hot_file_name(first_ts: int, run: str, segment: int, seq: int) -> str:
    """Name of one flush's file."""
    return f"part-{first_ts:019d}-{run}-{segment:05d}-{seq:06d}.parquet"


def segment_file_name(first_ts: int, run: str, segment: int) -> str:
    """Name of a closed segment's merged file."""
    return f"seg-{first_ts:019d}-{run}-{segment:05d}.parquet"


def hot_segment(name: str) -> tuple[str, int] | None:
    """(run, segment) of a hot file name, None for any other name."""
    m = _HOT_RE.match(name)
    return (m.group(2), int(m.group(3))) if m else None


def merged_segment(name: str) -> tuple[str, int] | None:
    """(run, segment) of a merged segment file name, None for any other name."""
    m = _SEG_RE.match(name)
    return (m.group(2), int(m.group(3))) if m else None


def superseded(names: Iterable[str]) -> set[str]:
    """Hot file names (of one directory) whose segment already has a merged file there."""
    names = list(names)
    merged = {key for n in names if (key := merged_segment(n)) is not None}
    return {n for n in names if hot_segment(n) in merged}


def compacted_file_name(day: str) -> str:
    """Name of a day partition's compacted file."""
    return f"day-{day}.parquet"


def compacted_day(name: str) -> str | None:
    """The day (YYYY-MM-DD) of a compacted file name, None for any other name."""
    m = _DAY_RE.match(name)
    return m.group(1) if m else None


def compacted_inputs(path: str | Path) -> set[str]:
    """Names of the files a compacted day file replaced, from its footer; empty if it is gone."""
    path = Path(path)
    try:
        meta = pq.read_schema(path).metadata or {}
    except FileNotFoundError:
        return set()
    except (pa.ArrowException, OSError) as err:
        raise TraceError(f"{path}: not a readable Parquet file ({err})") from err
    raw = meta.get(COMPACTED_FROM_KEY)
    if raw is None:
        return set()
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise TraceError(f"{path}: bad {COMPACTED_FROM_KEY.decode()} metadata {raw[:80]!r}")
    return set(names)


def covered(directory: Path, names: Iterable[str]) -> set[str]:
    """File names (of one directory) that a compacted day file there has replaced."""
    out: set[str] = set()
    for n in names:
        if compacted_day(n) is not None:
            out |= compacted_inputs(directory / n)
    return out


# --- listing --------------------------------------------------------------------------------------


def _table_files(trace_dir: Path, table: str, first_day: str | None = None,
                 last_day: str | None = None) -> list[Path]:
    """Live data files of a partitioned table, optionally only partitions in [first_day, last_day]."""
    root = trace_dir / table
    if not root.is_dir():
        return []
    files: list[Path] = []
    for part in sorted(root.iterdir(), key=lambda p: p.name):
        m = _DATE_RE.match(part.name)
        if m is None or not part.is_dir():
            continue
        day = m.group(1)
        if (first_day is not None and day < first_day) or (last_day is not None and day > last_day):
            continue
        names = [n for n in os.listdir(part) if n.endswith(".parquet") and not n.startswith(".")]
        skip = superseded(names) | covered(part, names)
        files.extend(part / n for n in sorted(names) if n not in skip)
    return files


def resolve_trace_dir(path: str | Path) -> Path:
    """The trace directory a user meant: `path`, or `path/traces` when `path` is the service's data dir."""
    path = Path(path)
    tables = (METRICS_DIR, EVENTS_DIR, GROUND_TRUTH_DIR, ENTITIES_DIR)
    if not any((path / t).is_dir() for t in tables) and any((path / DATA_DIR_TRACES / t).is_dir() for t in tables):
        return path / DATA_DIR_TRACES
    return path


def list_trace_files(trace_dir: str | Path, table: str | None = None) -> list[Path]:
    """The trace's live Parquet files (no temp files, no superseded hot files), for one table or all."""
    trace_dir = Path(trace_dir)
    tables = [table] if table is not None else [METRICS_DIR, EVENTS_DIR, GROUND_TRUTH_DIR]
    files: list[Path] = []
    for t in tables:
        if t not in SCHEMAS:
            raise ValueError(f"unknown trace table {t!r}; expected one of {sorted(SCHEMAS)}")
        if t in (GROUND_TRUTH_DIR, ENTITIES_DIR):
            single = trace_dir / t / (GROUND_TRUTH_FILE if t == GROUND_TRUTH_DIR else ENTITIES_FILE)
            files.extend([single] if single.is_file() else [])
        else:
            files.extend(_table_files(trace_dir, t))
    return files


# --- validation -----------------------------------------------------------------------------------


def check_file(path: str | Path, table: str) -> pa.Schema:
    """Validate one file's footer: a fleetwatch trace of `table` at a schema version this code reads.

    Raises TraceError naming the file and the problem; FileNotFoundError passes through (a reader
    racing a merge retries on it).
    """
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as err:
        raise TraceError(f"{path}: not a readable Parquet file ({err})") from err
    meta = schema.metadata or {}
    kind = meta.get(b"fleetwatch.table")
    if kind is None:
        raise TraceError(f"{path}: not a fleetwatch trace file (no fleetwatch.table metadata)")
    if kind.decode(errors="replace") != table:
        raise TraceError(f"{path}: holds the {kind.decode(errors='replace')!r} table, expected {table!r}")
    raw = meta.get(b"fleetwatch.schema_version", b"")
    try:
        version = int(raw)
    except ValueError:
        raise TraceError(f"{path}: bad fleetwatch.schema_version {raw!r}") from None
    if version != SCHEMA_VERSION:
        newer = " (newer than this reader)" if version > SCHEMA_VERSION else ""
        raise TraceError(f"{path}: schema version {version}{newer}; this reader reads {SCHEMA_VERSION}")
    want = SCHEMAS[table]
    for field in want:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            raise TraceError(f"{path}: column {field.name!r} is missing")
        if schema.field(idx).type != field.type:
            raise TraceError(f"{path}: column {field.name!r} is {schema.field(idx).type}, expected {field.type}")
    return schema


def _culprit(files: Sequence[Path], table: str, err: Exception) -> TraceError:
    """Find which file a failed scan choked on by reading each one; a TraceError naming it."""
    for f in files:
        try:
            pq.read_table(f, schema=SCHEMAS[table])
        except FileNotFoundError:
            continue
        except (pa.ArrowException, OSError) as e:
            return TraceError(f"{f}: corrupt data ({e})")
    where = files[0].parent.parent if files else "trace"
    return TraceError(f"{where}: reading {len(files)} file(s) failed ({err})")


# --- reading --------------------------------------------------------------------------------------


def _ts(ns: int) -> pa.Scalar:
    return pa.scalar(ns, type=_TS_TYPE)


def _ranks(col: pa.ChunkedArray) -> pa.Array:
    """Each value's rank in the sorted dictionary of a column whose chunks share one dictionary."""
    if col.num_chunks == 0:
        return pa.array([], type=pa.int32())
    order = pc.sort_indices(col.chunk(0).dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in col.chunks])
    return pa.array(rank[indices])


def sort_order(table: pa.Table, keys: Sequence[str]) -> pa.Array:
    """Indices that sort `table` by `keys` ascending.

    Arrow cannot sort dictionary columns, and decoding them to strings is slow, so each dictionary
    column is replaced by its values' ranks in the sorted dictionary.
    """
    keyed = table.select(list(keys)).unify_dictionaries()
    cols = {}
    for k in keys:
        col = keyed.column(k)
        cols[k] = _ranks(col) if pa.types.is_dictionary(col.type) else col
    return pc.sort_indices(pa.table(cols), sort_keys=[(k, "ascending") for k in keys])


def _scan(trace_dir: Path, table: str, files: list[Path], flt: ds.Expression | None) -> pa.Table:
    """Read validated files through pyarrow.dataset with Hive date partitions."""
    schema = SCHEMAS[table]
    dataset = ds.dataset([str(f) for f in files], format="parquet", partitioning=_PARTITIONING,
                         partition_base_dir=str(trace_dir / table),
                         schema=schema.append(pa.field("date", pa.string())))
    try:
        out = dataset.to_table(columns=schema.names, filter=flt)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as err:
        raise _culprit(files, table, err) from err
    return out.replace_schema_metadata(schema.metadata)


def _read_table(trace_dir: str | Path, table: str, start_ns: int | None, end_ns: int | None,
                flt: ds.Expression | None) -> pa.Table:
    """Validate and read a partitioned table, retrying when a concurrent merge swaps files underneath."""
    trace_dir = Path(trace_dir)
    first_day = day_of(start_ns) if start_ns is not None else None
    last_day = day_of(end_ns - 1) if end_ns is not None else None
    if start_ns is not None:
        flt = _and(flt, (ds.field("ts") >= _ts(start_ns)) & (ds.field("date") >= first_day))
    if end_ns is not None:
        flt = _and(flt, (ds.field("ts") < _ts(end_ns)) & (ds.field("date") <= last_day))
    for _ in range(_MAX_ATTEMPTS):
        files = _table_files(trace_dir, table, first_day, last_day)
        if not files:
            return SCHEMAS[table].empty_table()
        try:
            for f in files:
                check_file(f, table)
            out = _scan(trace_dir, table, files, flt)
        except FileNotFoundError:
            continue  # a merge deleted its inputs after we listed them: list again
        # A listing is not a snapshot: if a file we read vanished or a merged or compacted file appeared
        # meanwhile, we may have missed it or read rows twice, so read again.
        after = _table_files(trace_dir, table, first_day, last_day)
        before = set(files)
        if before.issubset(after) and not any(
                merged_segment(p.name) or compacted_day(p.name) for p in after if p not in before):
            return out.take(sort_order(out, SORT_KEYS[table]))
    raise TraceError(f"{trace_dir / table}: files kept changing while reading ({_MAX_ATTEMPTS} attempts)")


def _and(a: ds.Expression | None, b: ds.Expression) -> ds.Expression:
    return b if a is None else a & b


def _isin(column: str, values: Iterable[str] | None) -> ds.Expression | None:
    if values is None:
        return None
    return ds.field(column).isin(pa.array(list(values), type=pa.string()))


def read_metrics(trace_dir: str | Path, start_ns: int | None = None, end_ns: int | None = None,
                 nodes: Iterable[str] | None = None, metrics: Iterable[str] | None = None,
                 entities: Iterable[str] | None = None) -> pa.Table:
    """Metric rows with start_ns <= ts < end_ns, optionally only some nodes, metrics or entities.

    Returns METRICS_SCHEMA columns sorted by (node, entity, metric, ts); TraceError on a bad file.
    """
    flt: ds.Expression | None = None
    for col, values in (("node", nodes), ("metric", metrics), ("entity", entities)):
        expr = _isin(col, values)
        if expr is not None:
            flt = _and(flt, expr)
    return _read_table(trace_dir, METRICS_DIR, start_ns, end_ns, flt)


def read_events(trace_dir: str | Path, start_ns: int | None = None, end_ns: int | None = None,
                nodes: Iterable[str] | None = None, kinds: Iterable[str] | None = None) -> pa.Table:
    """Event rows with start_ns <= ts < end_ns, optionally only some nodes or kinds.

    Returns EVENTS_SCHEMA columns sorted by (node, entity, ts, kind); TraceError on a bad file.
    """
    flt: ds.Expression | None = None
    for col, values in (("node", nodes), ("kind", kinds)):
        expr = _isin(col, values)
        if expr is not None:
            flt = _and(flt, expr)
    return _read_table(trace_dir, EVENTS_DIR, start_ns, end_ns, flt)


def _read_single(trace_dir: str | Path, table: str, name: str) -> pa.Table | None:
    """A one-file table (ground truth, entities), or None when the trace has none."""
    path = Path(trace_dir) / table / name
    schema = SCHEMAS[table]
    try:
        check_file(path, table)
        data = pq.read_table(path, schema=schema)
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as err:
        raise TraceError(f"{path}: corrupt data ({err})") from err
    return data.replace_schema_metadata(schema.metadata)


def read_ground_truth(trace_dir: str | Path) -> pa.Table | None:
    """The simulator's ground-truth table, or None when the trace has none."""
    return _read_single(trace_dir, GROUND_TRUTH_DIR, GROUND_TRUTH_FILE)


def read_entities(trace_dir: str | Path) -> pa.Table | None:
    """The entities table (identity labels of every entity), or None when the trace has none."""
    return _read_single(trace_dir, ENTITIES_DIR, ENTITIES_FILE)
