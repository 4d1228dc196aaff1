"""Atomic trace writing for the importers: stage every row, commit by rename at the end, or leave nothing.

Staging. A fresh TRACE_DIR is built whole in a hidden `.tmp-import-<id>` directory beside it and renamed
into place by one rename. Into an existing trace, files are staged in a hidden `.tmp-import-<id>`
directory inside TRACE_DIR (readers only look under TRACE_DIR/<table>/, so they never see it), then each
is linked to its final name (a link never replaces an existing file) and the entities file is replaced
atomically last. Any error or KeyboardInterrupt before or during the commit removes the staging
directory and every file already linked, so a failed import leaves the trace as it was.

Rows. Importers append readings to per-series buffers (`TraceWriter.series`), compact typed arrays
rather than Python objects per sample. Past `flush_samples` buffered samples they are sorted and written
as staged chunks; at commit each UTC day's chunks are merged into one file sorted by
(node, entity, metric, ts), the trace layout of collector/trace.py, named like the recorder's merged
segment files (`seg-<first_ts>-<run>-<n>.parquet`) so they sort by time and never collide.

Duplicates. Two readings of one series at one timestamp keep one: the one added with the higher `rank`
(importers give native names precedence over dcgm-exporter names for the same GPU field), else the
later one. Samples already in an existing trace are not compared against.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import errno
import os
import re
import shutil
import sys
import time
import uuid
import zoneinfo
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from collector.batch import Entity, Event, entity_record
from collector.catalogue import BY_NAME
from collector.fsync import fsync_dir as _fsync_dir
from collector.fsync import fsync_file as _fsync_file
from collector.trace import (
    ENTITIES_DIR,
    ENTITIES_FILE,
    ENTITIES_SCHEMA,
    EVENTS_DIR,
    EVENTS_SCHEMA,
    METRICS_DIR,
    METRICS_SCHEMA,
)
from collector.trace_io import NS_PER_DAY, SORT_KEYS, TEMP_PREFIX, day_of, segment_file_name, sort_order

OnError = Literal["fail", "skip"]
ON_ERROR_CHOICES: tuple[str, ...] = ("fail", "skip")
COMPRESSION = "zstd"
STAGING_PREFIX = f"{TEMP_PREFIX}import-"
# Buffered samples before a staged chunk is written: 16 bytes each in the arrays, so about 130 MB.
FLUSH_SAMPLES = 8_000_000
# A day's staged rows are merged (and de-duplicated across chunks) into one file up to this many rows;
# bigger days keep one file per chunk so the merge never needs more memory than this.
MERGE_ROWS = 40_000_000
MAX_PROBLEMS = 20
_TS_TYPE = pa.timestamp("ns", tz="UTC")
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS})


class InputError(ValueError):
    """Malformed or unusable input; the message names the file, the line (or sample) and the field."""


@dataclass
class ImportSummary:
    """What an import read and wrote, printed at its end."""

    kind: str
    trace_dir: str = ""
    files: int = 0                 # inputs read (files, or Prometheus range requests)
    samples: int = 0               # metric rows written
    series: int = 0                # distinct (node, entity, metric) written
    events: int = 0
    entities: int = 0
    skipped: int = 0               # bad lines or records skipped under --on-error skip
    missing: int = 0               # values the input marked unavailable ([N/A], [Not Supported], ...)
    unknown: Counter[str] = field(default_factory=Counter)   # fields/metrics not in the catalogue → count
    problems: list[str] = field(default_factory=list)        # the first MAX_PROBLEMS skip messages
    written: list[str] = field(default_factory=list)         # output files
    bytes_written: int = 0

    def __str__(self) -> str:
        lines = [
            f"imported {self.kind} into {self.trace_dir}",
            f"  files read:      {self.files}",
            f"  samples:         {self.samples} in {self.series} series",
            f"  events:          {self.events}",
            f"  entities:        {self.entities}",
            f"  skipped:         {self.skipped} bad line(s)/record(s)",
            f"  unavailable:     {self.missing} value(s)",
            f"  unknown fields:  {sum(self.unknown.values())} value(s) of {len(self.unknown)} field(s)",
            f"  written:         {len(self.written)} file(s), {self.bytes_written} bytes",
        ]
        for name, n in sorted(self.unknown.items(), key=lambda kv: (-kv[1], kv[0]))[:15]:
            lines.append(f"    ignored {name}: {n}")
        if len(self.unknown) > 15:
            lines.append(f"    ... and {len(self.unknown) - 15} more")
        for p in self.problems:
            lines.append(f"  skipped: {p}")
        if self.skipped > len(self.problems):
            lines.append(f"  ... and {self.skipped - len(self.problems)} more skipped")
        return "\n".join(lines)


class Reporter:
    """Applies --on-error: `bad()` raises InputError under "fail", counts and remembers under "skip"."""

    def __init__(self, summary: ImportSummary, on_error: str = "fail") -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise InputError(f"--on-error must be one of {', '.join(ON_ERROR_CHOICES)}, got {on_error!r}")
        self.summary = summary
        self.skip = on_error == "skip"

    def bad(self, message: str) -> None:
        """Report one bad line or record (the message names where and what)."""
        if not self.skip:
            raise InputError(message)
        self.summary.skipped += 1
        if len(self.summary.problems) < MAX_PROBLEMS:
            self.summary.problems.append(message)


class Series:
    """One series' buffered readings: Unix-nanosecond timestamps and float64 values, appended in step."""

    __slots__ = ("ts", "values")

    def __init__(self) -> None:
        self.ts = array("q")
        self.values = array("d")

    def add(self, ts_ns: int, value: float) -> None:
        """Append one reading."""
        self.ts.append(ts_ns)
        self.values.append(value)


def input_files(sources: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The sources as paths; InputError for one that is not a file (before anything is written)."""
    paths = [Path(s) for s in sources]
    for p in paths:
        if not p.is_file():
            raise InputError(f"{p}: no such file")
    return paths


def progress_bar(total: int | None, desc: str, unit: str = "B") -> Any:
    """A tqdm bar on stderr, disabled when stderr is not a terminal (logs and tests stay clean)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr, leave=False,
                disable=not sys.stderr.isatty())






def _link_no_replace(src: Path, dst: Path) -> None:
    """Give src the name dst without ever replacing an existing dst (FileExistsError instead)."""
    try:
        os.link(src, dst)                           # atomic, and fails rather than overwrite
        return
    except OSError as err:
        # Filesystems without hard links (some network and FUSE mounts): check, then rename.
        if isinstance(err, FileExistsError) or err.errno not in _NO_LINK_ERRNOS:
            raise
    if dst.exists():
        raise FileExistsError(errno.EEXIST, "file exists", str(dst))
    os.rename(src, dst)


def _dict_column(codes: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, type=pa.int32()), pa.array(values, type=pa.string()))


def _unit(metric: str) -> str:
    return BY_NAME[metric].unit


class TraceWriter:
    """Collects an import's metric rows, events and entities and commits them into TRACE_DIR atomically.

    Use as a context manager: leaving the block by an exception (KeyboardInterrupt included) or without
    commit() removes everything staged.
    """

    def __init__(self, trace_dir: str | os.PathLike[str], flush_samples: int = FLUSH_SAMPLES,
                 merge_rows: int = MERGE_ROWS) -> None:
        self.trace_dir = Path(trace_dir).absolute()
        if self.trace_dir.exists() and not self.trace_dir.is_dir():
            raise InputError(f"{trace_dir}: exists and is not a directory")
        self.flush_samples = flush_samples
        self.merge_rows = merge_rows
        self.fresh = not self.trace_dir.exists()
        self._created_parents: list[Path] = []
        self._linked: list[Path] = []
        self._made_dirs: list[Path] = []
        parent = self.trace_dir.parent
        if self.fresh:
            missing = [p for p in [parent, *parent.parents] if not p.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            self._created_parents = missing          # deepest first: removed in this order on abort
        run = uuid.uuid4().hex
        self.run = run[:8]
        self.staging = (parent if self.fresh else self.trace_dir) / f"{STAGING_PREFIX}{run}"
        self.staging.mkdir()
        self._chunk_dir = self.staging / ".chunks"
        self._series: dict[tuple[str, str, str, int], Series] = {}
        self._pending = 0
        self._chunks: dict[str, list[Path]] = {}     # day → staged chunk files
        self._events: list[Event] = []
        self._entities: dict[tuple[str, str], dict[str, str]] = {}
        self._series_seen: set[tuple[str, str, str]] = set()
        self._seq = 0
        self._final: list[tuple[str, Path]] = []     # (table, staged final file)
        self.samples = 0
        self.state = "open"

    # --- adding -------------------------------------------------------------------------------

    def series(self, node: str, entity: str, metric: str, rank: int = 0) -> Series:
        """The buffer of one series (created on first use; the same object for the whole import).

        `rank` orders duplicates: at one timestamp the reading added with the higher rank is kept.
        ValueError for a metric the catalogue does not know or that traces do not record.
        """
        key = (node, entity, metric, rank)
        s = self._series.get(key)
        if s is None:
            spec = BY_NAME.get(metric)
            if spec is None or not spec.record:
                raise ValueError(f"metric {metric!r} is not a recorded catalogue metric")
            s = self._series[key] = Series()
        return s

    def add(self, ts_ns: int, node: str, entity: str, metric: str, value: float, rank: int = 0) -> None:
        """Add one reading (convenience for importers that do not keep Series handles)."""
        s = self.series(node, entity, metric, rank)
        s.ts.append(ts_ns)
        s.values.append(value)
        self.added(1)

    def added(self, n: int) -> None:
        """Tell the writer that n readings were appended to series buffers; flushes a chunk when due."""
        self._pending += n
        if self._pending >= self.flush_samples:
            self._flush_chunk()

    def add_event(self, event: Event) -> None:
        """Add one event row."""
        self._events.append(event)

    def add_entity(self, entity: Entity) -> None:
        """Record an entity's identity labels for the entities table (the last labels given win)."""
        row = entity_record(entity)
        self._entities[(row["node"], row["entity"])] = row

    # --- building tables ----------------------------------------------------------------------

    def _take(self) -> pa.Table | None:
        """Everything buffered as one table sorted by (node, entity, metric, ts), plus a rank column."""
        groups: dict[tuple[str, str, str], list[tuple[int, Series]]] = {}
        for (node, entity, metric, rank), s in self._series.items():
            if len(s.ts):
                groups.setdefault((node, entity, metric), []).append((rank, s))
        self._pending = 0
        if not groups:
            return None
        keys = sorted(groups)
        ts_parts: list[np.ndarray] = []
        val_parts: list[np.ndarray] = []
        rank_parts: list[np.ndarray] = []
        lengths = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            members = sorted(groups[key], key=lambda rs: rs[0])
            if len(members) == 1:
                rank, s = members[0]
                ts = np.frombuffer(s.ts, dtype=np.int64).copy()
                vals = np.frombuffer(s.values, dtype=np.float64).copy()
                ranks = np.full(ts.size, rank, dtype=np.int16)
            else:
                ts = np.concatenate([np.frombuffer(s.ts, dtype=np.int64) for _, s in members])
                vals = np.concatenate([np.frombuffer(s.values, dtype=np.float64) for _, s in members])
                ranks = np.concatenate([np.full(len(s.ts), r, dtype=np.int16) for r, s in members])
            for _, s in members:
                del s.ts[:]
                del s.values[:]
            if ts.size > 1 and (len(members) > 1 or bool(np.any(ts[1:] < ts[:-1]))):
                # Stable: within one timestamp, lower ranks stay first, so "keep the last" keeps the highest.
                order = np.argsort(ts, kind="stable")
                ts, vals, ranks = ts[order], vals[order], ranks[order]
            if ts.size > 1:
                keep = np.ones(ts.size, dtype=bool)
                keep[:-1] = ts[1:] != ts[:-1]
                if not keep.all():
                    ts, vals, ranks = ts[keep], vals[keep], ranks[keep]
            ts_parts.append(ts)
            val_parts.append(vals)
            rank_parts.append(ranks)
            lengths[i] = ts.size
            self._series_seen.add(key)
        nodes = sorted({k[0] for k in keys})
        entities = sorted({k[1] for k in keys})
        metrics = sorted({k[2] for k in keys})
        units = sorted({_unit(m) for m in metrics})
        n_idx = {v: i for i, v in enumerate(nodes)}
        e_idx = {v: i for i, v in enumerate(entities)}
        m_idx = {v: i for i, v in enumerate(metrics)}
        u_idx = {v: i for i, v in enumerate(units)}
        node_codes = np.repeat(np.array([n_idx[k[0]] for k in keys], dtype=np.int32), lengths)
        ent_codes = np.repeat(np.array([e_idx[k[1]] for k in keys], dtype=np.int32), lengths)
        met_codes = np.repeat(np.array([m_idx[k[2]] for k in keys], dtype=np.int32), lengths)
        unit_codes = np.repeat(np.array([u_idx[_unit(k[2])] for k in keys], dtype=np.int32), lengths)
        return pa.table({
            "ts": pa.array(np.concatenate(ts_parts), type=_TS_TYPE),
            "node": _dict_column(node_codes, nodes),
            "entity": _dict_column(ent_codes, entities),
            "metric": _dict_column(met_codes, metrics),
            "value": pa.array(np.concatenate(val_parts), type=pa.float64()),
            "unit": _dict_column(unit_codes, units),
            "rank": pa.array(np.concatenate(rank_parts), type=pa.int16()),
        })

    @staticmethod
    def _by_day(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
        """Split a sorted table by UTC day (filtering keeps the sort order)."""
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        days = ts // NS_PER_DAY
        unique = np.unique(days)
        if unique.size == 1:
            yield day_of(int(unique[0]) * NS_PER_DAY), table
            return
        for d in unique:
            yield day_of(int(d) * NS_PER_DAY), table.filter(pa.array(days == d))

    def _flush_chunk(self) -> None:
        """Write everything buffered as staged chunks (one per day) and free the buffers."""
        table = self._take()
        if table is None:
            return
        self._chunk_dir.mkdir(exist_ok=True)
        for day, part in self._by_day(table):
            path = self._chunk_dir / f"{day}-{len(self._chunks.get(day, [])):06d}.parquet"
            pq.write_table(part, path, compression="lz4")   # scratch space: fast beats small
            self._chunks.setdefault(day, []).append(path)

    @staticmethod
    def _dedup_merged(table: pa.Table) -> pa.Table:
        """Sort merged chunks by (node, entity, metric, ts, rank) and keep the last row of each reading."""
        table = table.unify_dictionaries().combine_chunks()
        table = table.take(sort_order(table, ("node", "entity", "metric", "ts", "rank")))
        if table.num_rows < 2:
            return table
        same = np.ones(table.num_rows - 1, dtype=bool)
        for col in ("node", "entity", "metric"):
            idx = table.column(col).chunk(0).indices.to_numpy(zero_copy_only=False)
            same &= idx[1:] == idx[:-1]
        ts = table.column("ts").cast(pa.int64()).to_numpy()
        same &= ts[1:] == ts[:-1]
        keep = np.ones(table.num_rows, dtype=bool)
        keep[:-1] = ~same
        return table if keep.all() else table.filter(pa.array(keep))

    def _write_final(self, table_name: str, day: str, table: pa.Table) -> None:
        """Write one final file (trace schema, zstd) for a day into the staging directory."""
        schema = METRICS_SCHEMA if table_name == METRICS_DIR else EVENTS_SCHEMA
        out = pa.Table.from_arrays([table.column(f.name).combine_chunks() for f in schema], schema=schema)
        first_ts = _first_ts(out)
        name = segment_file_name(first_ts, self.run, self._seq)
        self._seq += 1
        path = self.staging / table_name / f"date={day}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(out, path, compression=COMPRESSION)
        _fsync_file(path)
        self._final.append((table_name, path))
        if table_name == METRICS_DIR:
            self.samples += out.num_rows

    def _write_metrics(self) -> None:
        memory = self._take()
        mem_days = dict(self._by_day(memory)) if memory is not None else {}
        for day in sorted(set(mem_days) | set(self._chunks)):
            chunks = self._chunks.get(day, [])
            if not chunks:
                self._write_final(METRICS_DIR, day, mem_days[day])
                continue
            parts = [pq.read_table(p) for p in chunks]
            if day in mem_days:
                parts.append(mem_days[day])
            if sum(p.num_rows for p in parts) <= self.merge_rows:
                self._write_final(METRICS_DIR, day, self._dedup_merged(pa.concat_tables(parts)))
            else:
                for part in parts:
                    self._write_final(METRICS_DIR, day, part)
            del parts

    def _write_events(self) -> None:
        if not self._events:
            return
        evs = self._events
        ts = np.array([e.ts_ns for e in evs], dtype=np.int64)
        plain = pa.table({
            "ts": pa.array(ts, type=_TS_TYPE),
            "node": pa.array([e.node for e in evs], type=pa.string()).dictionary_encode(),
            "entity": pa.array([e.entity for e in evs], type=pa.string()).dictionary_encode(),
            "kind": pa.array([e.kind for e in evs], type=pa.string()).dictionary_encode(),
            "code": pa.array([int(e.code) for e in evs], type=pa.int64()),
            "detail": pa.array([e.detail for e in evs], type=pa.string()),
        })
        for day, part in self._by_day(plain):
            part = part.combine_chunks()
            self._write_final(EVENTS_DIR, day, part.take(sort_order(part, SORT_KEYS[EVENTS_DIR])))

    def _entities_table(self) -> pa.Table | None:
        """The entities table to commit: the trace's existing rows, plus this import's new entities."""
        if not self._entities:
            return None
        rows = dict(self._entities)
        existing = self.trace_dir / ENTITIES_DIR / ENTITIES_FILE
        if not self.fresh and existing.is_file():
            try:
                old = pq.read_table(existing).to_pylist()
            except (OSError, pa.ArrowInvalid) as err:
                raise InputError(f"{existing}: cannot read the trace's entities table ({err})") from err
            for row in old:      # what the trace already says about an entity wins over an import
                rows[(row["node"], row["entity"])] = {k: row[k] for k in ENTITIES_SCHEMA.names}
        return pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=ENTITIES_SCHEMA)

    # --- committing ---------------------------------------------------------------------------

    def commit(self, summary: ImportSummary | None = None) -> list[Path]:
        """Write the final files and move them into TRACE_DIR; the paths written. Aborts on any error."""
        if self.state != "open":
            raise RuntimeError(f"TraceWriter already {self.state}")
        try:
            self._write_metrics()
            self._write_events()
            entities = self._entities_table()
            shutil.rmtree(self._chunk_dir, ignore_errors=True)
            written = self._move_into_place(entities)
        except BaseException:
            self.abort()
            raise
        self.state = "committed"
        if summary is not None:
            summary.trace_dir = str(self.trace_dir)
            summary.samples += self.samples
            summary.series += len(self._series_seen)
            summary.events += len(self._events)
            summary.entities += len(self._entities)
            summary.written.extend(str(p) for p in written)
            summary.bytes_written += sum(p.stat().st_size for p in written)
        return written

    def _move_into_place(self, entities: pa.Table | None) -> list[Path]:
        if not self._final and entities is None:
            shutil.rmtree(self.staging)
            self._remove_created_parents()
            return []
        if self.fresh and not self.trace_dir.exists():
            if entities is not None:
                path = self.staging / ENTITIES_DIR / ENTITIES_FILE
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(entities, path, compression=COMPRESSION)
                _fsync_file(path)
                self._final.append((ENTITIES_DIR, path))
            for d in {p.parent for _, p in self._final} | {p.parent.parent for _, p in self._final}:
                _fsync_dir(d)
            os.rename(self.staging, self.trace_dir)
            _fsync_dir(self.trace_dir.parent)
            return [self.trace_dir / p.relative_to(self.staging) for _, p in self._final]
        # Into an existing trace: link each file to its final name, never replacing one.
        written: list[Path] = []
        touched: set[Path] = set()
        for _, src in self._final:
            target = self.trace_dir / src.relative_to(self.staging)
            self._makedirs(target.parent)
            _link_no_replace(src, target)
            self._linked.append(target)
            touched.add(target.parent)
            written.append(target)
        for d in touched:
            _fsync_dir(d)
        if entities is not None:
            d = self.trace_dir / ENTITIES_DIR
            self._makedirs(d)
            tmp = d / f"{TEMP_PREFIX}{uuid.uuid4().hex}.parquet"
            try:
                pq.write_table(entities, tmp, compression=COMPRESSION)
                _fsync_file(tmp)
                os.replace(tmp, d / ENTITIES_FILE)   # the last step: after it, the import is complete
            except BaseException:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                raise
            _fsync_dir(d)
            written.append(d / ENTITIES_FILE)
        self._linked = []
        shutil.rmtree(self.staging)
        return written

    def _makedirs(self, d: Path) -> None:
        missing = [p for p in [d, *d.parents] if not p.exists()]
        d.mkdir(parents=True, exist_ok=True)
        self._made_dirs.extend(missing)

    def _remove_created_parents(self) -> None:
        for p in self._created_parents:
            with contextlib.suppress(OSError):
                p.rmdir()

    def abort(self) -> None:
        """Remove everything staged, every file already linked into the trace and directories made for them."""
        if self.state == "aborted":
            return
        self.state = "aborted"
        for p in self._linked:
            with contextlib.suppress(OSError):
                p.unlink()
        for d in sorted(set(self._made_dirs), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        shutil.rmtree(self.staging, ignore_errors=True)
        self._remove_created_parents()
        self._series.clear()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.state == "open":
            self.abort()


def _first_ts(table: pa.Table) -> int:
    """The smallest timestamp of a table's ts column, as Unix nanoseconds."""
    return int(table.column("ts").cast(pa.int64()).to_numpy().min())


# --- option parsing the importers share -----------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_DURATION_NS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9, "d": 86400 * 10**9,
                "w": 7 * 86400 * 10**9, "y": 365 * 86400 * 10**9}
_SECONDS_RE = re.compile(r"^[-+]?\d+(?:\.\d+)?$")
_OFFSET_RE = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_FRACTION_RE = re.compile(r"(?<=:\d\d)\.(\d+)")


def parse_duration(text: str) -> int:
    """Nanoseconds of a Prometheus-style duration ("15s", "1h30m", "500ms") or plain seconds ("2.5")."""
    t = text.strip()
    if _SECONDS_RE.match(t):
        if t.startswith("-"):
            raise InputError(f"duration {text!r} must be a non-negative number of seconds")
        return int(decimal.Decimal(t) * 10**9)
    pos = 0
    total = 0
    for m in _DURATION_RE.finditer(t):
        if m.start() != pos:
            break
        total += round(float(m.group(1)) * _DURATION_NS[m.group(2)])
        pos = m.end()
    if pos != len(t) or not t:
        raise InputError(f"cannot parse duration {text!r} (examples: 15s, 1h30m, 500ms, 2.5)")
    return total


def parse_time(text: str, now_ns: int | None = None) -> int:
    """Unix nanoseconds of RFC 3339 ("2024-05-01T12:00:00Z"), Unix seconds, "now", "-1h" or "now-1h"."""
    t = text.strip()
    now = time.time_ns() if now_ns is None else now_ns
    if t == "now":
        return now
    if t.startswith(("now-", "-")):
        return now - parse_duration(t.removeprefix("now").removeprefix("-"))
    if _SECONDS_RE.match(t):
        return int(decimal.Decimal(t) * 10**9)     # exact: a float has no nanoseconds left at 1.7e9 s
    # datetime keeps microseconds: carry a finer fraction separately so nanoseconds survive.
    frac_ns = 0
    m = _FRACTION_RE.search(t)
    if m is not None:
        digits = m.group(1)
        frac_ns = int(digits[:9].ljust(9, "0"))
        t = t[: m.start()] + t[m.end():]
    try:
        stamp = dt.datetime.fromisoformat(t.replace("z", "Z"))
    except ValueError:
        raise InputError(f"cannot parse time {text!r} (RFC 3339, Unix seconds, now, -1h or now-1h)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)      # RFC 3339 requires an offset: take a bare time as UTC
    return (stamp - _EPOCH) // dt.timedelta(microseconds=1) * 1000 + frac_ns


def parse_timezone(name: str | None) -> dt.tzinfo | None:
    """The zone local wall-clock times in the input are in: IANA name, "UTC", "+05:30", or "local" (None)."""
    if name is None or name.strip().upper() in ("UTC", "Z", "GMT"):
        return dt.UTC
    n = name.strip()
    if n == "local":
        return None
    m = _OFFSET_RE.match(n)
    if m is not None:
        sign = -1 if m.group(1) == "-" else 1
        return dt.timezone(sign * dt.timedelta(hours=int(m.group(2)), minutes=int(m.group(3))))
    try:
        return zoneinfo.ZoneInfo(n)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise InputError(f"unknown time zone {name!r} (an IANA name such as Europe/Paris, UTC, +02:00 "
                         "or local)") from None


def wall_to_ns(wall: dt.datetime, tz: dt.tzinfo | None) -> int:
    """Unix nanoseconds of a naive wall-clock time in zone tz (None: this machine's local zone)."""
    aware = wall.astimezone() if tz is None else wall.replace(tzinfo=tz)
    return (aware - _EPOCH) // dt.timedelta(microseconds=1) * 1000
