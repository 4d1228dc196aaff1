"""Hourly rollups of compacted trace days: exactly mergeable partials that analyze() reads instead of raw rows.

What Thanos/Mimir downsampling and Prometheus recording rules do, for analyze(): when compaction writes a
metrics day file, write_rollup() summarises it into `rollups/date=YYYY-MM-DD/rollup-day-YYYY-MM-DD.parquet`
(temp file, fsync, rename). analyze() (fleetwatch/analysis/query.py) combines these partials per GPU, node
or window with partials computed the same way from raw rows for the days that have no usable rollup.

Partials, per (node, GPU, UTC hour); one Parquet file holds them all, told apart by the `kind` column:

- kind "a" (aligned samples: power, utilisation, clock-event reasons, energy counter pivoted to one row per
  instant), grouped further by `dtv`, the time since the GPU's previous instant IN THE SAME HOUR (null for
  the hour's first instant). The time an instant stands for (dt), the trapezoid and "is this a gap" depend
  on the GPU's median interval over the whole selection, unknown when the rollup is written; within a dtv
  group they are one number times a count or a sum, so every dt-weighted figure (throttled_s by reason,
  idle_powered_s, util_hours, trapezoid energy) is exact once the median is known. The dtv groups with
  their counts are also the exact histogram of sampling intervals, so the median is exact too. Per group:
  counts, sums and max of power/util, Σ(p + p_prev)/2, the reset-aware energy increase inside the hour,
  the last power value and the first/last energy counter values with their times.
- kind "s": per series of the temperature and error-counter metrics: count, first/last time, sum, max,
  reset-aware increase inside the hour, first and last value.
- kind "h": a histogram of power per GPU and hour, bins of 0.25 W (bin = round(p * 4)): lists `bins` and
  `counts` in one row (a row per bin would make analyze() decode and group millions of string keys).
- kind "n" / "nh": node power per instant (the sum of its GPUs' power readings closer together than a
  tolerance) per node and hour, count/sum/max and its histogram; plus the largest gap between the node's
  instants that was joined and the smallest that was not, so analyze() can check that its own tolerance
  (half the smallest GPU median interval of the selection) would have grouped the instants the same way.

Nothing crosses an hour in a partial: what depends on the previous hour (the first instant's dt and
trapezoid, a counter's increase from the previous hour's last value) is computed when combining, from the
hours' first and last values in time order. So a day's rollup needs no look-behind into the previous day,
and the increase across midnight belongs to the later sample's day and window, as in one pass over both.

p95 power comes from the merged histograms with DuckDB quantile_cont's definition (linear interpolation
between the values at ranks floor and ceil of (N-1)·0.95), each value placed evenly inside its bin: the
two values interpolated are each within one 0.25 W bin of the true ones, so the result is within 0.25 W.

A rollup is used only when its footer names the current day file (its name, rows, bytes and the list of
files it replaced): a day compacted again with late data has a new list, so an old rollup is ignored until
compaction writes the new one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from collector.catalogue import CLOCK_EVENT_REASONS
from collector.compact import ROLLUPS_DIR
from collector.fsync import atomic_file
from collector.trace import METRICS_DIR
from collector.trace_io import (
    COMPACTED_FROM_KEY,
    NS_PER_DAY,
    SCHEMAS,
    TEMP_PREFIX,
    TraceError,
    compacted_file_name,
    list_trace_files,
)
from fleetwatch.analysis.query import (
    _ALIGNED,
    _COUNTERS,
    _ERROR_COUNTERS,
    _STATS,
    _WIDE,
    GAP_FACTOR,
    IDLE_POWER_W,
    IDLE_UTIL,
    REASONS,
    THROTTLE_MASK,
    _arrow,
    _bucket,
    _gpu_select,
    _gpu_tail,
    _in,
    _increase,
    _node_select,
    _source,
    _sql_str,
    _where,
    _xid_sql,
)

HOUR_NS = 3600 * 10**9
BINS_PER_W = 4                      # histogram bins of 0.25 W
P95_BOUND_W = 1 / BINS_PER_W        # |p95 from the histogram − exact p95| is below one bin
ROLLUP_OF_KEY = b"fleetwatch.rollup_of"
VERSION_KEY = b"fleetwatch.rollup_version"
VERSION = 2                         # 2: histograms as lists; other versions count as stale
_PREFIX = "rollup-"
_TEMP_GRACE_S = 3600.0

# Columns of each kind (the file holds their union; a kind's other columns are null).
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "a": ("node", "entity", "hour", "dtv", "n", "t0", "t1", "n_p", "n_u", "n_e", "n_r", "sum_p", "sum_u",
          "max_p", "inc_e", "trap_h", "n_thr", *(f"n_{r}" for r in REASONS), "n_idle", "p_last", "e_first",
          "te_first", "e_last", "te_last"),
    "s": ("node", "entity", "metric", "hour", "n", "t0", "t1", "sum_v", "vmax", "inc", "v_first", "v_last"),
    "h": ("node", "entity", "hour", "bins", "counts"),
    "n": ("node", "hour", "n", "sum_w", "max_w", "t0", "t1", "max_in", "min_out"),
    "nh": ("node", "hour", "bins", "counts"),
}


# --- stage 1: partials ------------------------------------------------------------------------------


def partial_sql(src: str, where: str = "", prefix: str = "") -> list[str]:
    """Statements creating temp tables {prefix}a, s, h, n, nh: the partials of the rows of view `src`."""
    m = {k: _sql_str(v) for k, v in _WIDE.items()}
    hour = _bucket("epoch_ns(ts)", HOUR_NS)
    counters = _in(k for k in _STATS if k in _COUNTERS)
    reasons = ", ".join(f"count(*) FILTER (WHERE (r::BIGINT & {CLOCK_EVENT_REASONS[name]}) <> 0) AS n_{name}"
                        for name in REASONS)
    x = prefix
    return [f"""
CREATE OR REPLACE TEMP TABLE {x}l AS
SELECT *, t - lag(t) OVER w AS dtv, lag(p) OVER w AS p_prev, lag(e IGNORE NULLS) OVER w AS e_prev
FROM (
  SELECT node, entity, epoch_ns(ts) AS t, {hour} AS hour,
    {", ".join(f"max(value) FILTER (WHERE metric = {m[k]}) AS {k}" for k in _ALIGNED)}
  FROM {src} WHERE metric IN ({_in(_ALIGNED)}){where}
  GROUP BY node, entity, t, hour
) WINDOW w AS (PARTITION BY node, entity, hour ORDER BY t)""", f"""
CREATE OR REPLACE TEMP TABLE {x}a AS
SELECT node, entity, hour, dtv, count(*) AS n, min(t) AS t0, max(t) AS t1, count(p) AS n_p, count(u) AS n_u,
  count(e) AS n_e, count(r) AS n_r, sum(p) AS sum_p, sum(u) AS sum_u, max(p) AS max_p,
  sum({_increase("e", "e_prev")}) AS inc_e, sum((p + p_prev) / 2) AS trap_h,
  count(*) FILTER (WHERE (r::BIGINT & {THROTTLE_MASK}) <> 0) AS n_thr, {reasons},
  count(*) FILTER (WHERE u < {IDLE_UTIL} AND p > {IDLE_POWER_W}) AS n_idle,
  arg_max_null(p, t) AS p_last, arg_min(e, t) AS e_first, min(t) FILTER (WHERE e IS NOT NULL) AS te_first,
  arg_max(e, t) AS e_last, max(t) FILTER (WHERE e IS NOT NULL) AS te_last
FROM {x}l GROUP BY node, entity, hour, dtv""", f"""
CREATE OR REPLACE TEMP TABLE {x}h AS
SELECT node, entity, hour, list(bin ORDER BY bin) AS bins, list(c ORDER BY bin) AS counts FROM (
  SELECT node, entity, hour, round(p * {BINS_PER_W})::BIGINT AS bin, count(*) AS c
  FROM {x}l WHERE p IS NOT NULL GROUP BY ALL)
GROUP BY ALL""", f"""
CREATE OR REPLACE TEMP TABLE {x}s0 AS
SELECT node, entity, metric, hour, count(*) AS n, min(t) AS t0, max(t) AS t1, sum(value) AS sum_v,
  min(value) AS vmin, max(value) AS vmax, arg_min(value, t) AS v_first, arg_max(value, t) AS v_last
FROM (SELECT node, entity, metric, epoch_ns(ts) AS t, {hour} AS hour, value FROM {src}
      WHERE metric IN ({_in(_STATS)}){where})
GROUP BY ALL""",
        # A counter's increase inside the hour needs a pass in time order, but only where it moved at all
        # (min < max: rare); a counter that did not move increased by 0.
        f"""
CREATE OR REPLACE TEMP TABLE {x}s AS
SELECT s.* EXCLUDE (vmin), CASE WHEN s.metric IN ({counters}) THEN coalesce(c.inc, 0) END AS inc
FROM {x}s0 s LEFT JOIN (
  SELECT node, entity, metric, hour, sum({_increase("value", "prev")}) AS inc FROM (
    SELECT r.*, lag(r.value) OVER (PARTITION BY r.node, r.entity, r.metric, r.hour ORDER BY r.t) AS prev
    FROM (SELECT node, entity, metric, epoch_ns(ts) AS t, {hour} AS hour, value FROM {src}
          WHERE metric IN ({counters}){where}) r
    SEMI JOIN (SELECT * FROM {x}s0 WHERE vmin < vmax AND metric IN ({counters})) m
      ON r.node = m.node AND r.entity = m.entity AND r.metric = m.metric AND r.hour = m.hour)
  GROUP BY ALL) c USING (node, entity, metric, hour)""",
        # Node instants inside each hour, joined with a tolerance from these rows alone (half the smallest
        # GPU median interval); max_in/min_out let analyze() check its own tolerance groups them alike.
        f"""
CREATE OR REPLACE TEMP TABLE {x}ng AS
SELECT nt.*, nt.t - lag(nt.t) OVER (PARTITION BY nt.node, nt.hour ORDER BY nt.t) AS gap, tl.tol
FROM (SELECT node, hour, t, sum(p) AS w FROM {x}l WHERE p IS NOT NULL GROUP BY ALL) nt
JOIN (SELECT node, coalesce(min(md), 0) / 2 AS tol
      FROM (SELECT node, entity, median(dtv) AS md FROM {x}l GROUP BY ALL) GROUP BY node) tl USING (node)""",
        f"""
CREATE OR REPLACE TEMP TABLE {x}ni AS
SELECT node, hour, sum(w) AS w FROM (
  SELECT node, hour, w, sum(CASE WHEN gap <= tol THEN 0 ELSE 1 END)
    OVER (PARTITION BY node, hour ORDER BY t ROWS UNBOUNDED PRECEDING) AS inst
  FROM {x}ng)
GROUP BY node, hour, inst""", f"""
CREATE OR REPLACE TEMP TABLE {x}n AS
SELECT i.node, i.hour, i.n, i.sum_w, i.max_w, g.t0, g.t1, g.max_in, g.min_out
FROM (SELECT node, hour, count(*) AS n, sum(w) AS sum_w, max(w) AS max_w FROM {x}ni GROUP BY ALL) i
JOIN (SELECT node, hour, min(t) AS t0, max(t) AS t1, max(gap) FILTER (WHERE gap <= tol) AS max_in,
        min(gap) FILTER (WHERE gap > tol) AS min_out FROM {x}ng GROUP BY ALL) g USING (node, hour)""", f"""
CREATE OR REPLACE TEMP TABLE {x}nh AS
SELECT node, hour, list(bin ORDER BY bin) AS bins, list(c ORDER BY bin) AS counts FROM (
  SELECT node, hour, round(w * {BINS_PER_W})::BIGINT AS bin, count(*) AS c FROM {x}ni GROUP BY ALL)
GROUP BY ALL"""]


# --- rollup files -----------------------------------------------------------------------------------


def rollup_path(trace_dir: Path, day: str) -> Path:
    """Where the rollup of a day's compacted metrics file lives."""
    stem = Path(compacted_file_name(day)).stem
    return Path(trace_dir) / ROLLUPS_DIR / f"date={day}" / f"{_PREFIX}{stem}.parquet"


def day_identity(day_file: Path) -> dict[str, object]:
    """What names one version of a compacted day file: its name, rows, bytes and the files it replaced."""
    md = pq.read_metadata(day_file)
    replaced = (md.metadata or {}).get(COMPACTED_FROM_KEY, b"")
    return {"file": day_file.name, "rows": md.num_rows, "bytes": day_file.stat().st_size,
            "replaced_sha256": hashlib.sha256(replaced).hexdigest()}


def rollup_identity(path: Path) -> dict[str, object] | None:
    """The day-file identity a rollup's footer names: None without a rollup, {} for another format version.

    TraceError when the file is unreadable or not a rollup.
    """
    try:
        meta = pq.read_schema(path).metadata or {}
    except FileNotFoundError:
        return None
    except (pa.ArrowException, OSError) as err:
        raise TraceError(f"{path}: not a readable rollup file ({err}); fleetwatch compact rewrites it") from err
    raw = meta.get(ROLLUP_OF_KEY)
    if raw is None or VERSION_KEY not in meta:
        raise TraceError(f"{path}: not a fleetwatch rollup file (no {ROLLUP_OF_KEY.decode()} metadata)")
    if meta[VERSION_KEY] != str(VERSION).encode():
        return {}           # another format version: stale, the next compaction rewrites it
    try:
        ident = json.loads(raw)
    except ValueError:
        ident = None
    if not isinstance(ident, dict):
        raise TraceError(f"{path}: bad {ROLLUP_OF_KEY.decode()} metadata {raw[:80]!r}")
    return ident


def current_rollup(trace_dir: Path, day: str) -> Path | None:
    """The day's rollup file if it summarises the current day file; None when missing or stale."""
    path = rollup_path(trace_dir, day)
    ident = rollup_identity(path)
    if ident is None:
        return None
    day_file = Path(trace_dir) / METRICS_DIR / f"date={day}" / compacted_file_name(day)
    try:
        return path if ident == day_identity(day_file) else None
    except FileNotFoundError:
        return None


def _tables(con: duckdb.DuckDBPyConnection, prefix: str) -> list[pa.Table]:
    """The partial tables, each with a kind column and sorted by its keys, cast to one common schema."""
    parts = []
    for kind, cols in KIND_COLUMNS.items():
        keys = [c for c in ("node", "entity", "metric", "hour", "dtv") if c in cols]
        parts.append(_arrow(con.sql(f"SELECT '{kind}' AS kind, {', '.join(cols)} FROM {prefix}{kind} "
                                    f"ORDER BY {', '.join(keys)} NULLS FIRST")))
    schema = pa.unify_schemas([t.schema for t in parts])
    out = []
    for t in parts:
        cols = [t.column(f.name) if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema]
        out.append(pa.Table.from_arrays(cols, schema=schema))
    return out


@dataclass(frozen=True, slots=True)
class RollupWritten:
    """One rollup written: where, how many partial rows for how many metric rows."""

    path: Path
    rows: int
    source_rows: int


def write_rollup(trace_dir: Path, day: str, day_file: Path) -> RollupWritten:
    """Compute the partials of one compacted metrics day file and write its rollup (temp, fsync, rename)."""
    target = rollup_path(trace_dir, day)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_old_temps(target.parent)
    ident = day_identity(day_file)
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        # Spill files of a day bigger than memory: a private temp directory, never the working directory.
        spill = Path(tempfile.gettempdir()) / f"fleetwatch-duckdb-{os.getpid()}"
        con.execute(f"SET temp_directory = {_sql_str(str(spill))}")
        con.execute(f"CREATE VIEW src AS SELECT * FROM read_parquet({_sql_str(str(day_file))}, "
                    f"hive_partitioning = false)")
        for stmt in partial_sql("src"):
            con.execute(stmt)
        tables = _tables(con, "")
    except duckdb.Error as err:
        raise TraceError(f"{day_file}: computing its rollup failed ({err})") from err
    finally:
        con.close()
    if day_identity(day_file) != ident:        # replaced while it was read: the next compaction pass retries
        raise TraceError(f"{day_file}: changed while its rollup was computed")
    meta = {ROLLUP_OF_KEY: json.dumps(ident, sort_keys=True).encode(), VERSION_KEY: str(VERSION).encode(),
            b"fleetwatch.hour_ns": str(HOUR_NS).encode()}
    schema = tables[0].schema.with_metadata(meta)
    # One row group (or more) per kind: a reader asking for one kind skips the others' row groups. The writer
    # closes before atomic_file fsyncs and renames.
    with atomic_file(target, TEMP_PREFIX) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for t in tables:
            if t.num_rows:
                writer.write_table(t.replace_schema_metadata(meta), row_group_size=1 << 20)
    return RollupWritten(target, sum(t.num_rows for t in tables), int(ident["rows"]))  # type: ignore[call-overload]


def _remove_old_temps(directory: Path) -> None:
    """Temp files of a writer that crashed before its rename (old ones only: a live writer owns new ones)."""
    now = time.time()
    for n in os.listdir(directory):
        if n.startswith(TEMP_PREFIX):
            with contextlib.suppress(FileNotFoundError):
                if now - (directory / n).stat().st_mtime >= _TEMP_GRACE_S:
                    (directory / n).unlink()


def after_compaction(trace_dir: Path, day: str, day_file: Path) -> str | None:
    """compact()'s hook: write the day's rollup unless a current, readable one exists; a line for the report."""
    damaged = ""
    try:
        path = current_rollup(trace_dir, day)
        if path is not None:
            pq.read_table(path)         # small (~1 KB per GPU-hour): a damaged one is rewritten, not kept
            return None
    except (TraceError, pa.ArrowException, OSError) as err:
        damaged = f" (replaced a damaged one: {err})"
    w = write_rollup(trace_dir, day, day_file)
    return f"rollup date={day}: {w.source_rows:,} metric rows → {w.rows:,} partial rows ({w.path.name}){damaged}"


# --- stage 2: combining -----------------------------------------------------------------------------


def rollup_views(con: duckdb.DuckDBPyConnection, files: Sequence[Path], raw: str | None,
                 nodes: Sequence[str] | None, entities: Sequence[str] | None) -> None:
    """Views pa, ps, ph, pn, pnh: the rollup files' partials (selected nodes/GPUs) and partial_sql's (`raw`)."""
    flt = ""
    if nodes is not None:
        flt += f" AND node IN ({', '.join(map(_sql_str, nodes)) or 'NULL'})"
    ent = f" AND entity IN ({', '.join(map(_sql_str, entities)) or 'NULL'})" if entities is not None else ""
    listing = ", ".join(_sql_str(str(f)) for f in files)
    for kind, cols in KIND_COLUMNS.items():
        sel = ", ".join(cols)
        parts = []
        if files:
            where = f"kind = '{kind}'{flt}{ent if 'entity' in cols else ''}"
            parts.append(f"SELECT {sel} FROM read_parquet([{listing}], hive_partitioning = false) WHERE {where}")
        if raw is not None:
            parts.append(f"SELECT {sel} FROM {raw}{kind}")
        con.execute(f"CREATE OR REPLACE TEMP VIEW p{kind} AS {' UNION ALL '.join(parts)}")


def _wquantile(src: str, keys: str, q: float) -> str:
    """SQL: per `keys`, quantile_cont(q) of the multiset `src` (keys, v, c: value v c times), exactly."""
    def at(rank: str) -> str:
        return f"max(CASE WHEN cum - c <= {rank} AND {rank} < cum THEN v END)"
    return f"""
SELECT {keys}, lo + (h - floor(h)) * (hi - lo) AS q FROM (
  SELECT {keys}, any_value(h) AS h, {at("floor(h)")} AS lo, {at("ceil(h)")} AS hi
  FROM (SELECT *, (sum(c) OVER (PARTITION BY {keys}) - 1) * {q} AS h,
          sum(c) OVER (PARTITION BY {keys} ORDER BY v ROWS UNBOUNDED PRECEDING) AS cum FROM ({src}))
  GROUP BY {keys})"""


def histogram_quantile(con: duckdb.DuckDBPyConnection, name: str, src: str, keys: Sequence[str],
                       q: float) -> None:
    """Register `name` (keys..., q): per keys, quantile_cont(q) of the readings of the 0.25 W histograms `src`.

    `src` is a relation (keys..., hour, bins, counts). The value of rank k of a bin holding c readings is
    placed at (k + 0.5) / c across the bin; quantile_cont interpolates between ranks floor and ceil of
    (N - 1)·q. The merge is NumPy over the concatenated lists: SQL over a row per bin is 5-10x slower.
    """
    k = ", ".join(keys)
    t = _arrow(con.sql(f"SELECT {k}, flatten(list(bins ORDER BY hour)) AS vs, flatten(list(counts ORDER BY hour)) "
                       f"AS cs FROM ({src}) GROUP BY {k}"))
    out = {key: t.column(key) for key in keys}
    n = t.num_rows
    if n == 0:
        out["q"] = pa.array([], pa.float64())
        con.register(name, pa.table(out))
        return
    vs, cs = t.column("vs").combine_chunks(), t.column("cs").combine_chunks()
    off = vs.offsets.to_numpy()
    gid = np.repeat(np.arange(n), np.diff(off))
    v = vs.values.to_numpy()[off[0]:off[-1]]
    c = cs.values.to_numpy()[off[0]:off[-1]]
    order = np.lexsort((v, gid))
    v, c, gid = v[order], c[order], gid[order]
    first = np.ones(len(v), dtype=bool)             # merge the same bin of several hours
    first[1:] = (v[1:] != v[:-1]) | (gid[1:] != gid[:-1])
    at_first = np.flatnonzero(first)
    v, c, gid = v[at_first].astype(np.float64), np.add.reduceat(c, at_first), gid[at_first]
    cum = np.cumsum(c)
    start = np.searchsorted(gid, np.arange(n + 1))  # each key's first bin
    before = np.concatenate([[0], cum])[start[:-1]]
    h = (cum[start[1:] - 1] - before - 1) * q

    def value(rank: np.ndarray) -> np.ndarray:
        g = before + rank
        i = np.searchsorted(cum, g, side="right")    # the bin holding global rank g
        return ((v[i] - 0.5) + (g - (cum[i] - c[i]) + 0.5) / c[i]) / BINS_PER_W

    lo, hi = np.floor(h), np.ceil(h)
    vlo, vhi = value(lo), value(hi)
    out["q"] = pa.array(vlo + (h - lo) * (vhi - vlo), pa.float64())
    con.register(name, pa.table(out))


def combine(con: duckdb.DuckDBPyConnection, window_ns: int | None, by: str) -> None:
    """Turn the partial views into temp tables aligned, stats, inc and step (as the raw path has them)."""
    wb = _bucket("hour", window_ns)
    stmts = combine_sql(window_ns)
    for stmt in stmts[:3]:
        con.execute(stmt)
    histogram_quantile(con, "_p95", f"SELECT node, entity, {wb} AS wstart, hour, bins, counts FROM ph",
                       ("node", "entity", "wstart"), 0.95)
    for stmt in stmts[3:]:
        con.execute(stmt)
    if by == "node":
        histogram_quantile(con, "_node_p95", f"SELECT node, {wb} AS wstart, hour, bins, counts FROM pnh",
                           ("node", "wstart"), 0.95)


def combine_sql(window_ns: int | None) -> list[str]:
    """combine()'s SQL statements; the aligned one joins `_p95` (GPU power p95 per window)."""
    wb = _bucket("hour", window_ns)
    aligned_sums = ", ".join(f"sum(dt * n_{r}) / 1e9 AS throttled_s_{r}" for r in REASONS)
    counters = _in(_ERROR_COUNTERS)
    return [f"""
CREATE OR REPLACE TEMP TABLE hb AS
SELECT node, entity, hour, tf - lag(tl) OVER w AS dtb, (pf + lag(pl) OVER w) / 2 AS trapb,
  {_increase("ef", "lag(el IGNORE NULLS) OVER w")} AS incb
FROM (SELECT node, entity, hour, min(t0) AS tf, max(t1) AS tl, arg_max_null(p_last, t1) AS pl,
        max(sum_p) FILTER (WHERE dtv IS NULL) AS pf, arg_min(e_first, te_first) AS ef,
        arg_max(e_last, te_last) AS el
      FROM pa GROUP BY ALL)
WINDOW w AS (PARTITION BY node, entity ORDER BY hour)""", """
CREATE OR REPLACE TEMP TABLE grp AS
SELECT a.* REPLACE (coalesce(a.dtv, b.dtb) AS dtv, CASE WHEN a.dtv IS NULL THEN b.trapb ELSE a.trap_h END AS trap_h)
FROM pa a JOIN hb b USING (node, entity, hour)""", f"""
CREATE OR REPLACE TEMP TABLE step AS
WITH dts AS (SELECT node, entity, dtv AS v, sum(n) AS c FROM grp WHERE dtv IS NOT NULL GROUP BY ALL),
med AS ({_wquantile("SELECT * FROM dts", "node, entity", 0.5)}),
fm AS ({_wquantile("SELECT 0 AS z, v, sum(c) AS c FROM dts GROUP BY v", "z", 0.5)})
SELECT k.node, k.entity, coalesce(m.q, (SELECT any_value(q) FROM fm)) AS med
FROM (SELECT DISTINCT node, entity FROM grp) k LEFT JOIN med m USING (node, entity)""", f"""
CREATE OR REPLACE TEMP TABLE aligned AS
WITH gd AS (
  SELECT g.*, {_bucket("g.hour", window_ns)} AS wstart,
    CASE WHEN g.dtv IS NOT NULL AND g.dtv <= {GAP_FACTOR} * s.med THEN g.dtv ELSE coalesce(s.med, 0) END AS dt,
    CASE WHEN g.dtv <= {GAP_FACTOR} * s.med THEN g.trap_h * g.dtv / 1e9 END AS trap_j
  FROM grp g JOIN step s USING (node, entity)
),
binc AS (SELECT node, entity, {wb} AS wstart, sum(incb) AS incb FROM hb GROUP BY ALL),
x AS (
  SELECT node, entity, wstart, sum(n) AS n, min(t0) AS t0, max(t1) AS t1, sum(n_p) AS n_p, sum(n_u) AS n_u,
    sum(n_e) AS n_e, sum(inc_e) AS inc_e, coalesce(sum(trap_j), 0) AS trap_j,
    sum(sum_p) / nullif(sum(n_p), 0) AS power_mean_w, max(max_p) AS power_max_w,
    sum(sum_u) / nullif(sum(n_u), 0) AS util_mean,
    CASE WHEN sum(n_r) > 0 THEN sum(dt * n_thr) / 1e9 END AS throttled_s,
    {aligned_sums},
    CASE WHEN sum(n_u) > 0 AND sum(n_p) > 0 THEN sum(dt * n_idle) / 1e9 END AS idle_powered_s,
    sum(sum_u * dt) / 3.6e12 AS util_hours
  FROM gd GROUP BY node, entity, wstart
)
SELECT x.* REPLACE (CASE WHEN x.inc_e IS NULL AND b.incb IS NULL THEN NULL
                         ELSE coalesce(x.inc_e, 0) + coalesce(b.incb, 0) END AS inc_e),
  p.q AS power_p95_w
FROM x LEFT JOIN binc b USING (node, entity, wstart) LEFT JOIN _p95 p USING (node, entity, wstart)""", f"""
CREATE OR REPLACE TEMP TABLE sw AS
SELECT node, entity, metric, {wb} AS wstart, sum(n) AS n, min(t0) AS t0, max(t1) AS t1,
  sum(sum_v) / sum(n) AS mean, max(vmax) AS vmax,
  CASE WHEN metric IN ({counters}) THEN coalesce(sum(inc), 0) + coalesce(sum(incb), 0) END AS inc
FROM (SELECT *, {_increase("v_first", "lag(v_last) OVER (PARTITION BY node, entity, metric ORDER BY hour)")}
        AS incb FROM ps)
GROUP BY node, entity, metric, wstart""",
        "CREATE OR REPLACE TEMP TABLE stats AS SELECT node, entity, metric, wstart, n, t0, t1, mean, vmax FROM sw",
        "CREATE OR REPLACE TEMP TABLE inc AS SELECT node, entity, metric, wstart, inc FROM sw WHERE inc IS NOT NULL"]


def node_groups_differ_sql() -> str:
    """SQL counting node-hours whose instants analyze()'s tolerance would group differently than the partials."""
    return """
WITH tol AS (SELECT node, coalesce(min(med), 0) / 2 AS tol FROM step GROUP BY node)
SELECT count(*) FROM (SELECT *, t0 - lag(t1) OVER (PARTITION BY node ORDER BY hour) AS bgap FROM pn) p
JOIN tol USING (node)
WHERE p.max_in > tol.tol OR p.min_out <= tol.tol OR p.bgap <= tol.tol"""


def node_power_sql(window_ns: int | None) -> str:
    """CTE `node_power` from the node partials and combine()'s `_node_p95` (replaces the raw per-instant CTEs)."""
    wb = _bucket("hour", window_ns)
    return f"""
node_power AS (
  SELECT x.*, p.q AS power_p95_w FROM (
    SELECT node, {wb} AS wstart, sum(n) AS instants, sum(sum_w) / sum(n) AS power_mean_w, max(max_w) AS power_max_w
    FROM pn GROUP BY ALL) x
  LEFT JOIN _node_p95 p USING (node, wstart)
)"""


# --- which days come from rollups -------------------------------------------------------------------


def _day_start_ns(day: str) -> int:
    start = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    return int(start.timestamp()) * 10**9


def plan(dirs: Sequence[Path], first_day: str | None, last_day: str | None, start_ns: int | None,
         end_ns: int | None) -> tuple[list[Path], list[Path]]:
    """(rollup files to read, raw metrics files of the other days) for a selection.

    A day comes from its rollup when the rollup names the current day file, the day file is the day's only
    live metrics file (no hot or late files), no other trace has that day, and the day lies entirely in
    [start_ns, end_ns).
    """
    per_dir: list[dict[str, list[Path]]] = []
    for d in dirs:
        days: dict[str, list[Path]] = {}
        for f in list_trace_files(d, METRICS_DIR):
            day = f.parent.name.removeprefix("date=")
            if (first_day is None or day >= first_day) and (last_day is None or day <= last_day):
                days.setdefault(day, []).append(f)
        per_dir.append(days)
    seen = Counter(day for days in per_dir for day in days)
    rollups: list[Path] = []
    raw: list[Path] = []
    for d, days in zip(dirs, per_dir, strict=True):
        for day, files in days.items():
            lo = _day_start_ns(day)
            whole = (start_ns is None or start_ns <= lo) and (end_ns is None or lo + NS_PER_DAY <= end_ns)
            alone = seen[day] == 1 and [f.name for f in files] == [compacted_file_name(day)]
            path = current_rollup(d, day) if whole and alone else None
            if path is not None:
                rollups.append(path)
            else:
                raw.extend(files)
    return rollups, raw


def usable(window_ns: int | None, by: str, gpus: Sequence[str] | None, idle_power_w: float) -> bool:
    """Whether partials can give analyze()'s answer for these arguments at all.

    Windows must be whole hours (partials are per hour); the idle threshold is the one the partials count
    with; node power per instant sums every GPU of the node, so it cannot honour a GPU selector.
    """
    return ((window_ns is None or window_ns % HOUR_NS == 0) and idle_power_w == IDLE_POWER_W
            and not (by == "node" and gpus is not None))


def analyze_partials(con: duckdb.DuckDBPyConnection, dirs: Sequence[Path], first_day: str | None,
                     last_day: str | None, start_ns: int | None, end_ns: int | None, nodes: Sequence[str] | None,
                     entities: Sequence[str] | None, window_ns: int | None, by: str) -> pa.Table | None:
    """analyze()'s result from rollups plus partials of the other days' raw rows; None to use the raw query.

    None when no day has a usable rollup, or when analyze()'s tolerance would group node instants
    differently from the partials (readings of a node's GPUs stamped far apart).
    """
    rollups, raw = plan(dirs, first_day, last_day, start_ns, end_ns)
    if not rollups:
        return None
    where = _where(start_ns, end_ns, nodes, entities)
    if raw:
        con.execute(f"CREATE OR REPLACE VIEW metrics_raw AS "
                    f"{_source(con, 'metrics_raw', raw, SCHEMAS[METRICS_DIR])}")
        for stmt in partial_sql("metrics_raw", where, "r_"):
            con.execute(stmt)
    rollup_views(con, rollups, "r_" if raw else None, nodes, entities)
    combine(con, window_ns, by)
    window = window_ns is not None
    if by == "node":
        (differ,) = con.execute(node_groups_differ_sql()).fetchall()[0]
        if differ:
            return None
        tail = _node_select(window, node_power_sql(window_ns))
    else:
        tail = _gpu_select(window)
    return _arrow(con.sql("WITH " + _gpu_tail() + "," + _xid_sql(where, window_ns) + tail))
