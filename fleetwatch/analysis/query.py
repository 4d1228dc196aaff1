"""Offline analysis of recorded traces with DuckDB: per-GPU and per-node aggregates and bucketed series.

DuckDB reads the Parquet files out of core and on every core; it is given the explicit list of live files
from collector.trace_io (never a glob), so temp files, superseded hot files and inputs already covered by a
compacted day file are never read. Dictionary-encoded string columns arrive as VARCHAR; timestamps are turned
into Unix nanoseconds with epoch_ns() so the arithmetic is exact whatever timestamp type DuckDB maps them to.

How the per-GPU numbers are computed (one record per GPU, or per GPU and window):

- samples: the GPU's sample instants (the most readings of any one of its series); start/end: its first
  and last reading in the selection.
- Power, utilisation, clock-event reasons and the energy counter are pivoted to one row per sample instant.
  Each instant stands for the time since the previous one (`dt`); a gap longer than GAP_FACTOR × the GPU's
  median interval counts as one median interval, so an outage is neither throttled nor idle time. The
  first instant also counts one median interval.
- energy_kwh: the increase of fleetwatch_gpu_energy_joules_total where the GPU has it (sum of positive
  deltas; a negative delta is a counter reset and the new value is the increase, as Prometheus' increase()
  does), else the trapezoid integral of the power samples, never across a gap.
- Counters (ECC, row remaps, retired pages, PCIe replays, NVLink CRC) are reset-aware increases the same
  way; null when the GPU never reported the counter. ecc_* use the volatile counters, the aggregate ones when
  the volatile are absent. Increases start at the first sample in the selection (what happened before
  start_ns is not counted); with windows, an increase belongs to the window of its later sample, so the
  windows add up to the whole selection.
- throttled_s: time with any clock-event reason bit set other than THROTTLE_EXEMPT; throttled_s_<reason>:
  time with that bit set.
- idle_powered_s: time with utilisation below IDLE_UTIL while drawing more than the idle power threshold
  (IDLE_POWER_W by default): a GPU that burns power doing nothing (a hung job, clocks pinned).
- joules_per_util_hour: energy in joules over Σ utilisation × dt in hours (null when never utilised).
- *_per_day rates: the count over the GPU's observed span (last − first sample + one median interval).
- xid_count: events of kind "xid" on the GPU in the selected time range (and window).

by="node": extensive figures (energy, counts, seconds) are sums over the node's GPUs; node power is the sum
of its GPUs' power at each instant, then its mean, p95 and max; util_mean and temp_mean_c are means over
all the GPUs' samples; samples counts the node's instants. Windows are aligned to the Unix epoch.

Rollups (fleetwatch/analysis/rollup.py): analyze() reads a compacted day's hourly rollup instead of its raw
rows when the rollup is current and the day lies wholly in the selection, and computes the same partials
from raw rows for the other days; the combined figures are the ones above to floating-point rounding,
except power_p95_w (node or GPU), which comes from 0.25 W histograms and is within 0.25 W of quantile_cont.
Windows that are not whole hours, an idle_power_w other than IDLE_POWER_W, by="node" with a GPU selector
and node instants the partials would group differently all read raw rows; use_rollups=False forces that.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from collector.catalogue import BY_NAME, CLOCK_EVENT_REASONS
from collector.trace import ENTITIES_DIR, EVENTS_DIR, GROUND_TRUTH_DIR, METRICS_DIR
from collector.trace_io import SCHEMAS, TraceError, check_file, day_of, list_trace_files

# A GPU drawing more than this while under IDLE_UTIL is "idle but powered". H100 SXM idles at 69-71 W
# (collector/sim/engine.py, from the nvidia-smi capture) and A100 at ~60 W; 100 W sits clearly above both
# idle floors yet far below any working load. Pass idle_power_w to analyze() for other GPU models.
IDLE_POWER_W = 100.0
IDLE_UTIL = 0.05
# A gap between samples longer than this many median intervals is an outage, not a long sample.
GAP_FACTOR = 3.0
# Clock-event reasons that are not throttling: the GPU is idle, or clocks were set on purpose.
THROTTLE_EXEMPT = ("gpu_idle", "applications_clocks_setting", "display_clock_setting")
THROTTLE_MASK = sum(bit for name, bit in CLOCK_EVENT_REASONS.items() if name not in THROTTLE_EXEMPT)
REASONS = tuple(name for name in CLOCK_EVENT_REASONS if name != "gpu_idle")
# A series without an explicit step is cut into at most this many buckets.
AUTO_BUCKETS = 1000
_NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_MAX_ATTEMPTS = 5

_P = "fleetwatch_gpu_"
# Pivoted column → metric; the pivot keeps the analysis to one row per GPU sample.
_WIDE: dict[str, str] = {
    "p": _P + "power_watts",
    "u": _P + "utilization_ratio",
    "r": _P + "clock_event_reasons",
    "tc": _P + "temperature_celsius",
    "mt": _P + "memory_temperature_celsius",
    "e": _P + "energy_joules_total",
    "sv": _P + "ecc_sbe_volatile_total",
    "dv": _P + "ecc_dbe_volatile_total",
    "sa": _P + "ecc_sbe_aggregate_total",
    "da": _P + "ecc_dbe_aggregate_total",
    "rc": _P + "remapped_rows_correctable_total",
    "ru": _P + "remapped_rows_uncorrectable_total",
    "rs": _P + "retired_pages_sbe_total",
    "rd": _P + "retired_pages_dbe_total",
    "pr": _P + "pcie_replays_total",
    "nc": _P + "nvlink_crc_errors_total",
}
_COUNTERS = ("e", "sv", "dv", "sa", "da", "rc", "ru", "rs", "rd", "pr", "nc")
assert all(BY_NAME[m].type == "counter" for k, m in _WIDE.items() if k in _COUNTERS)

_TS = pa.timestamp("ns", tz="UTC")
_F = pa.float64()
_I = pa.int64()
# The per-GPU record (the JSON output contract); by="node" swaps gpu/uuid for a `gpus` count.
GPU_FIELDS: tuple[pa.Field, ...] = (
    pa.field("node", pa.string()), pa.field("gpu", pa.int32()), pa.field("uuid", pa.string()),
    pa.field("start", _TS), pa.field("end", _TS), pa.field("samples", _I),
    pa.field("energy_kwh", _F), pa.field("power_mean_w", _F), pa.field("power_p95_w", _F),
    pa.field("power_max_w", _F), pa.field("util_mean", _F), pa.field("temp_mean_c", _F),
    pa.field("temp_max_c", _F), pa.field("mem_temp_max_c", _F), pa.field("throttled_s", _F),
    *(pa.field(f"throttled_s_{r}", _F) for r in REASONS),
    pa.field("xid_count", _I), pa.field("xid_rate_per_day", _F),
    pa.field("ecc_corrected", _I), pa.field("ecc_corrected_per_day", _F), pa.field("ecc_uncorrected", _I),
    pa.field("remapped_rows_correctable", _I), pa.field("remapped_rows_uncorrectable", _I),
    pa.field("retired_pages", _I), pa.field("pcie_replays", _I), pa.field("nvlink_crc_errors", _I),
    pa.field("idle_powered_s", _F), pa.field("joules_per_util_hour", _F),
)
_TIME_COLUMNS = ("start", "end", "window_start", "ts")

T = TypeVar("T")


# --- inputs -----------------------------------------------------------------------------------------


def _trace_dirs(traces: Iterable[str | Path]) -> list[Path]:
    """The trace directories as Paths; TraceError naming any that is not a fleetwatch trace."""
    if isinstance(traces, str | Path):
        traces = [traces]
    out: list[Path] = []
    for t in traces:
        p = Path(t)
        if not p.is_dir():
            raise TraceError(f"{p}: no such trace directory")
        if not any((p / d).is_dir() for d in (METRICS_DIR, EVENTS_DIR, ENTITIES_DIR, GROUND_TRUTH_DIR)):
            raise TraceError(f"{p}: not a fleetwatch trace (no metrics/, events/ or entities/ directory)")
        if all(p.resolve() != q.resolve() for q in out):     # the same trace twice would count twice
            out.append(p)
    if not out:
        raise TraceError("no trace directory given")
    return out


def _day_range(start_ns: int | None, end_ns: int | None) -> tuple[str | None, str | None]:
    return (day_of(start_ns) if start_ns is not None else None,
            day_of(end_ns - 1) if end_ns is not None else None)


def _files(dirs: Sequence[Path], table: str, first_day: str | None = None,
           last_day: str | None = None) -> list[Path]:
    """Validated live files of `table` in every trace, only day partitions in [first_day, last_day]."""
    out: list[Path] = []
    for d in dirs:
        for f in list_trace_files(d, table):
            day = f.parent.name.removeprefix("date=")
            if (first_day is not None and day < first_day) or (last_day is not None and day > last_day):
                continue
            check_file(f, table)
            out.append(f)
    return out


def _sql_str(s: str) -> str:
    """A SQL string literal (standard SQL: quotes doubled, no backslash escapes)."""
    return "'" + s.replace("'", "''") + "'"


def _source(con: duckdb.DuckDBPyConnection, name: str, files: Sequence[Path], schema: pa.Schema) -> str:
    """SQL for a relation over `files`, or over an empty table of `schema` when there are none."""
    if not files:
        con.register(f"_empty_{name}", schema.empty_table())
        return f"SELECT * FROM _empty_{name}"
    listing = ", ".join(_sql_str(str(f)) for f in files)
    # hive_partitioning off: the views keep exactly the trace schema's columns.
    return f"SELECT * FROM read_parquet([{listing}], hive_partitioning = false)"


def _open(dirs: Sequence[Path], first_day: str | None = None, last_day: str | None = None,
          threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with views metrics, events and entities over the traces' live files."""
    metrics = _files(dirs, METRICS_DIR, first_day, last_day)
    events = _files(dirs, EVENTS_DIR, first_day, last_day)
    entities = []
    for d in dirs:
        for f in list_trace_files(d, ENTITIES_DIR):
            check_file(f, ENTITIES_DIR)
            entities.append(f)
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        # Spill files of a query bigger than memory: a private temp directory, never the working directory.
        spill = Path(tempfile.gettempdir()) / f"fleetwatch-duckdb-{os.getpid()}"
        con.execute(f"SET temp_directory = {_sql_str(str(spill))}")
        # DuckDB 2's partitioned execution splits a GROUP BY on a column the files are sorted by (node)
        # into one full scan per key range: 5-10x slower on traces. Older versions lack it (and the name).
        with contextlib.suppress(duckdb.Error):
            con.execute("SET disabled_optimizers = 'partitioned_execution'")
        if threads is not None:
            con.execute(f"SET threads = {int(threads)}")
        con.execute(f"CREATE VIEW metrics AS {_source(con, 'metrics', metrics, SCHEMAS[METRICS_DIR])}")
        con.execute(f"CREATE VIEW events AS {_source(con, 'events', events, SCHEMAS[EVENTS_DIR])}")
        con.execute(f"CREATE VIEW entities AS {_source(con, 'entities', entities, SCHEMAS[ENTITIES_DIR])}")
    except BaseException:
        con.close()
        raise
    return con


def connect(traces: Iterable[str | Path]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with views `metrics`, `events` and `entities` over all the traces together."""
    return _open(_trace_dirs(traces))


def _retrying(dirs: Sequence[Path], first_day: str | None, last_day: str | None,
              run: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
    """Run a query on a fresh connection, listing the files again when a merge or compaction swaps them."""
    last: Exception | None = None
    for _ in range(_MAX_ATTEMPTS):
        try:
            con = _open(dirs, first_day, last_day)
        except FileNotFoundError as err:   # a file vanished between listing and validation
            last = err
            continue
        try:
            return run(con)
        except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException):
            raise                           # a bug in the SQL here, not in the data
        except duckdb.Error as err:
            files = _files_in(con)
            if not any(_gone(f) for f in files):
                raise _culprit(files, dirs, err) from err
            last = err
        finally:
            con.close()
    raise TraceError(f"{', '.join(map(str, dirs))}: files kept changing while reading ({last})")


def _files_in(con: duckdb.DuckDBPyConnection) -> list[Path]:
    """The Parquet files the connection's views read (from the view definitions)."""
    rows = con.execute("SELECT sql FROM duckdb_views() WHERE NOT internal").fetchall()
    return [Path(p) for (sql,) in rows for p in re.findall(r"'((?:[^']|'')+\.parquet)'", sql or "")]


def _gone(path: Path) -> bool:
    return not path.exists()


def _culprit(files: Sequence[Path], dirs: Sequence[Path], err: Exception) -> TraceError:
    """A TraceError naming the file DuckDB choked on (found by decoding each with pyarrow), else the trace."""
    for f in files:
        try:
            pq.read_table(f)
        except FileNotFoundError:
            continue
        except (pa.ArrowException, OSError) as e:
            return TraceError(f"{f}: corrupt data ({e})")
    return TraceError(f"reading {', '.join(map(str, dirs))} failed: {err}")


def _arrow(rel: duckdb.DuckDBPyRelation | duckdb.DuckDBPyConnection) -> pa.Table:
    """A query result as one Arrow table (DuckDB 1.x and 2.x spell this differently)."""
    fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    return fetch()


# --- GPU selection ----------------------------------------------------------------------------------


def _gpu_index(con: duckdb.DuckDBPyConnection) -> pa.Table:
    """(node, uuid, gpu) for every GPU in the entities tables, the index parsed from its labels."""
    rows = con.execute("SELECT DISTINCT node, entity, labels FROM entities WHERE kind = 'gpu' "
                       "ORDER BY node, entity, labels").fetchall()
    node, uuid, gpu = [], [], []
    seen: set[tuple[str, str]] = set()
    for n, e, labels in rows:
        if (n, e) in seen:
            continue            # relabelled (a driver update) or in several traces: one index is enough
        seen.add((n, e))
        try:
            index = json.loads(labels).get("gpu")
            value = int(index) if index is not None else None
        except (ValueError, TypeError, AttributeError):
            value = None        # a malformed label: the index stays unknown, the GPU is still analysed
        node.append(n)
        uuid.append(e)
        gpu.append(value)
    return pa.table({"node": pa.array(node, pa.string()), "uuid": pa.array(uuid, pa.string()),
                     "gpu": pa.array(gpu, pa.int32())})


def _resolve_gpus(gpus: Iterable[str], index: pa.Table) -> list[str]:
    """GPU selectors (UUIDs or "node/index") as UUIDs; ValueError for a node/index no entities table has."""
    by_pos = {(n, i): u for n, u, i in zip(index.column("node").to_pylist(), index.column("uuid").to_pylist(),
                                            index.column("gpu").to_pylist(), strict=True) if i is not None}
    out: list[str] = []
    for g in gpus:
        m = re.fullmatch(r"(.+)/(\d+)", g)
        if m is None:
            out.append(g)
            continue
        uuid = by_pos.get((m.group(1), int(m.group(2))))
        if uuid is None:
            known = "no entities table lists GPU indices" if not by_pos else \
                f"known nodes: {', '.join(sorted({n for n, _ in by_pos})[:10])}"
            raise ValueError(f"GPU {g!r}: no GPU {m.group(2)} on node {m.group(1)!r} in the traces ({known})")
        out.append(uuid)
    return out


# --- the per-GPU query ------------------------------------------------------------------------------
#
# Two scans of the Parquet files, each cheap because it keeps few metrics, instead of one pivot of every
# metric (a hash aggregation of tens of millions of rows into millions of groups, the slow part):
#   stats    one row per series (and window): count, first/last time, mean, min, max of temperatures and
#            the error counters;
#   aligned  power, utilisation, clock-event reasons and the energy counter pivoted to one row per GPU
#            sample, ordered per GPU: dt, the trapezoid and the energy increase come from one window pass.
# Error counters that changed at all over the selection (min < max: rare) get their reset-aware increase
# from a third, small window pass; a counter that never changed has increased by 0.

_ALIGNED = ("p", "u", "r", "e")
_STATS = tuple(k for k in _WIDE if k not in _ALIGNED)
_ERROR_COUNTERS = tuple(k for k in _COUNTERS if k != "e")


def _where(start_ns: int | None, end_ns: int | None, nodes: Sequence[str] | None,
           entities: Sequence[str] | None) -> str:
    """SQL conditions (joined with AND, leading AND) on ts, node and entity."""
    parts = []
    if start_ns is not None:
        parts.append(f"epoch_ns(ts) >= {int(start_ns)}")
    if end_ns is not None:
        parts.append(f"epoch_ns(ts) < {int(end_ns)}")
    if nodes is not None:
        parts.append(f"node IN ({', '.join(map(_sql_str, nodes)) or 'NULL'})")
    if entities is not None:
        parts.append(f"entity IN ({', '.join(map(_sql_str, entities)) or 'NULL'})")
    return "".join(f" AND {p}" for p in parts)


def _bucket(col: str, width_ns: int | None) -> str:
    """SQL for the start of the `width_ns` bucket holding `col` (floored, also before 1970); 0 without one."""
    if width_ns is None:
        return "0::BIGINT"
    return f"({col} - ((({col}) % {width_ns}) + {width_ns}) % {width_ns})"


def _in(keys: Iterable[str]) -> str:
    return ", ".join(_sql_str(_WIDE[k]) for k in keys)


def _increase(value: str, prev: str) -> str:
    """SQL for a counter's increase since the previous sample: the delta, or the new value after a reset."""
    return f"CASE WHEN {value} IS NULL OR {prev} IS NULL THEN NULL WHEN {value} >= {prev} " \
           f"THEN {value} - {prev} ELSE {value} END"


def _stats_sql(where: str, window_ns: int | None) -> list[str]:
    """Statements creating temp tables `stats` (per series and window) and `changed` (counters that moved)."""
    return [f"""
CREATE OR REPLACE TEMP TABLE stats AS
SELECT node, entity, metric, {_bucket("t", window_ns)} AS wstart, count(*) AS n, min(t) AS t0, max(t) AS t1,
  avg(value) AS mean, min(value) AS vmin, max(value) AS vmax
FROM (SELECT node, entity, metric, epoch_ns(ts) AS t, value FROM metrics
      WHERE metric IN ({_in(_STATS)}){where})
GROUP BY ALL""", f"""
CREATE OR REPLACE TEMP TABLE changed AS
SELECT node, entity, metric FROM stats WHERE metric IN ({_in(_ERROR_COUNTERS)})
GROUP BY ALL HAVING min(vmin) < max(vmax)"""]


def _inc_sql(where: str, window_ns: int | None, changed: Sequence[tuple[str, str, str]]) -> str:
    """Statement creating temp table `inc`: error-counter increases per series and window.

    `changed` holds the (node, entity, metric) of the series that moved; naming their nodes and entities
    as literals lets DuckDB skip the row groups of every other node (files are sorted by node, entity).
    """
    if not changed:
        return ("CREATE OR REPLACE TEMP TABLE inc AS SELECT node, entity, metric, 0::BIGINT AS wstart, "
                "0::DOUBLE AS inc FROM changed WHERE false")
    narrow = " AND ".join(f"{col} IN ({', '.join(_sql_str(v) for v in sorted({c[i] for c in changed}))})"
                          for i, col in enumerate(("node", "entity", "metric")))
    return f"""
CREATE OR REPLACE TEMP TABLE inc AS
SELECT node, entity, metric, {_bucket("t", window_ns)} AS wstart, sum({_increase("value", "prev")}) AS inc
FROM (
  SELECT x.node, x.entity, x.metric, x.t, x.value,
    lag(x.value) OVER (PARTITION BY x.node, x.entity, x.metric ORDER BY x.t) AS prev
  FROM (SELECT node, entity, metric, epoch_ns(ts) AS t, value FROM metrics WHERE {narrow}{where}) x
  JOIN changed c ON x.node = c.node AND x.entity = c.entity AND x.metric = c.metric)
GROUP BY ALL"""


def _count(k: str) -> str:
    """SQL: an error counter's increase for the group; null when the group never saw the counter."""
    return f"CASE WHEN s.has_{k} THEN coalesce(c.inc_{k}, 0) END"


def _gpu_ctes(where: str, window_ns: int | None, idle_power_w: float) -> str:
    """CTEs ending in `rows` (one row per aligned GPU sample) and `g` (one row per GPU, or GPU and window)."""
    m = {k: _sql_str(v) for k, v in _WIDE.items()}
    reasons = ",\n    ".join(
        f"coalesce(sum(dt) FILTER (WHERE (r::BIGINT & {CLOCK_EVENT_REASONS[name]}) <> 0), 0) / 1e9 "
        f"AS throttled_s_{name}" for name in REASONS)
    return f"""
wide AS (
  SELECT node, entity, epoch_ns(ts) AS t,
    {", ".join(f"max(value) FILTER (WHERE metric = {m[k]}) AS {k}" for k in _ALIGNED)}
  FROM metrics WHERE metric IN ({_in(_ALIGNED)}){where}
  GROUP BY node, entity, t
),
lagged AS MATERIALIZED (
  SELECT *, t - lag(t) OVER w AS dt_prev, lag(p) OVER w AS p_prev, lag(e IGNORE NULLS) OVER w AS e_prev
  FROM wide WINDOW w AS (PARTITION BY node, entity ORDER BY t)
),
med AS (SELECT node, entity, median(dt_prev) AS med FROM lagged GROUP BY node, entity),
fleet_med AS (SELECT median(dt_prev) AS fm FROM lagged),
step AS (SELECT m.node, m.entity, coalesce(m.med, f.fm) AS med FROM med m CROSS JOIN fleet_med f),
rows AS MATERIALIZED (
  SELECT l.node, l.entity, l.t, l.p, l.u, l.r, l.e, {_bucket("l.t", window_ns)} AS wstart,
    CASE WHEN l.dt_prev IS NOT NULL AND l.dt_prev <= {GAP_FACTOR} * s.med THEN l.dt_prev
         ELSE coalesce(s.med, 0) END AS dt,
    CASE WHEN l.dt_prev <= {GAP_FACTOR} * s.med THEN (l.p + l.p_prev) / 2 * l.dt_prev / 1e9 END AS trap_j,
    {_increase("l.e", "l.e_prev")} AS d_e
  FROM lagged l JOIN step s ON l.node = s.node AND l.entity = s.entity
),
aligned AS (
  SELECT node, entity, wstart, count(*) AS n, min(t) AS t0, max(t) AS t1, count(p) AS n_p, count(u) AS n_u,
    count(e) AS n_e, sum(d_e) AS inc_e, coalesce(sum(trap_j), 0) AS trap_j,
    avg(p) AS power_mean_w, quantile_cont(p, 0.95) AS power_p95_w, max(p) AS power_max_w, avg(u) AS util_mean,
    CASE WHEN count(r) > 0 THEN
      coalesce(sum(dt) FILTER (WHERE (r::BIGINT & {THROTTLE_MASK}) <> 0), 0) / 1e9 END AS throttled_s,
    {reasons},
    CASE WHEN count(u) > 0 AND count(p) > 0 THEN
      coalesce(sum(dt) FILTER (WHERE u < {IDLE_UTIL} AND p > {float(idle_power_w)}), 0) / 1e9 END
      AS idle_powered_s,
    sum(u * dt) / 3.6e12 AS util_hours
  FROM rows GROUP BY node, entity, wstart
),""" + _gpu_tail()


def _gpu_tail() -> str:
    """CTEs `gstats`, `ginc`, `keys` and `g` over `aligned`, `stats`, `inc` and `step` (raw or from rollups)."""
    m = {k: _sql_str(v) for k, v in _WIDE.items()}
    return f"""
gstats AS (
  SELECT node, entity, wstart, max(n) AS n, min(t0) AS t0, max(t1) AS t1,
    max(mean) FILTER (WHERE metric = {m["tc"]}) AS temp_mean_c,
    max(n) FILTER (WHERE metric = {m["tc"]}) AS n_tc,
    max(vmax) FILTER (WHERE metric = {m["tc"]}) AS temp_max_c,
    max(vmax) FILTER (WHERE metric = {m["mt"]}) AS mem_temp_max_c,
    {", ".join(f"bool_or(metric = {m[k]}) AS has_{k}" for k in _ERROR_COUNTERS)}
  FROM stats GROUP BY node, entity, wstart
),
ginc AS (
  SELECT node, entity, wstart,
    {", ".join(f"sum(inc) FILTER (WHERE metric = {m[k]}) AS inc_{k}" for k in _ERROR_COUNTERS)}
  FROM inc GROUP BY node, entity, wstart
),
keys AS (SELECT node, entity, wstart FROM aligned UNION SELECT node, entity, wstart FROM gstats),
g AS (
  SELECT k.node, k.entity, k.wstart, greatest(a.n, s.n) AS samples, least(a.t0, s.t0) AS t0,
    greatest(a.t1, s.t1) AS t1, s.temp_mean_c, s.n_tc, s.temp_max_c, s.mem_temp_max_c, a.n_u,
    a.power_mean_w, a.power_p95_w, a.power_max_w, a.util_mean, a.throttled_s, {_reason_cols("a.")},
    a.idle_powered_s, a.util_hours,
    coalesce(st.med, (greatest(a.t1, s.t1) - least(a.t0, s.t0)) / greatest(greatest(a.n, s.n) - 1, 1))
      AS med,
    CASE WHEN a.n_e > 0 THEN coalesce(a.inc_e, 0) WHEN a.n_p > 0 THEN a.trap_j END AS energy_j,
    coalesce({_count("sv")}, {_count("sa")}) AS ecc_corrected,
    coalesce({_count("dv")}, {_count("da")}) AS ecc_uncorrected,
    {_count("rc")} AS remapped_rows_correctable,
    {_count("ru")} AS remapped_rows_uncorrectable,
    CASE WHEN s.has_rs OR s.has_rd THEN coalesce(c.inc_rs, 0) + coalesce(c.inc_rd, 0) END AS retired_pages,
    {_count("pr")} AS pcie_replays,
    {_count("nc")} AS nvlink_crc_errors
  FROM keys k
  LEFT JOIN aligned a ON a.node = k.node AND a.entity = k.entity AND a.wstart = k.wstart
  LEFT JOIN gstats s ON s.node = k.node AND s.entity = k.entity AND s.wstart = k.wstart
  LEFT JOIN ginc c ON c.node = k.node AND c.entity = k.entity AND c.wstart = k.wstart
  LEFT JOIN step st ON st.node = k.node AND st.entity = k.entity
)"""


def _xid_sql(where: str, window_ns: int | None) -> str:
    """The CTE `xid`: XID events per GPU (and window)."""
    return f"""
xid AS (
  SELECT node, entity, {_bucket("epoch_ns(ts)", window_ns)} AS wstart, count(*) AS xid_count
  FROM events WHERE kind = 'xid'{where} GROUP BY ALL
)"""


def _reason_cols(prefix: str = "") -> str:
    return ", ".join(f"{prefix}throttled_s_{r}" for r in REASONS)


_COUNT_COLUMNS = ("ecc_corrected", "ecc_uncorrected", "remapped_rows_correctable", "remapped_rows_uncorrectable",
                  "retired_pages", "pcie_replays", "nvlink_crc_errors")


def _gpu_select(window: bool) -> str:
    """The final SELECT for by="gpu"."""
    win = "g.wstart AS window_start, " if window else ""
    span = "nullif((g.t1 - g.t0 + g.med) / 86400e9, 0)"
    return f"""
SELECT g.node, gi.gpu, g.entity AS uuid, {win}g.t0 AS start, g.t1 AS "end", g.samples,
  g.energy_j / 3.6e6 AS energy_kwh, g.power_mean_w, g.power_p95_w, g.power_max_w, g.util_mean,
  g.temp_mean_c, g.temp_max_c, g.mem_temp_max_c, g.throttled_s, {_reason_cols("g.")},
  coalesce(x.xid_count, 0) AS xid_count, coalesce(x.xid_count, 0) / {span} AS xid_rate_per_day,
  g.ecc_corrected, g.ecc_corrected / {span} AS ecc_corrected_per_day,
  {", ".join(f"g.{c}" for c in _COUNT_COLUMNS[1:])}, g.idle_powered_s,
  g.energy_j / nullif(g.util_hours, 0) AS joules_per_util_hour
FROM g
LEFT JOIN xid x ON x.node = g.node AND x.entity = g.entity AND x.wstart = g.wstart
LEFT JOIN _gpu_index gi ON gi.node = g.node AND gi.uuid = g.entity
ORDER BY g.node, gi.gpu NULLS LAST, g.entity{", g.wstart" if window else ""}"""


_NODE_POWER = """-- An instant of a node: its GPUs' readings closer together than half a sampling interval. The recorder
-- stamps a node's GPUs alike; nvidia-smi logs stamp each GPU's line a few milliseconds apart.
node_tol AS (SELECT node, coalesce(min(med), 0) / 2 AS tol FROM step GROUP BY node),
node_t AS (
  SELECT r.node, r.t, min(r.wstart) AS wstart, sum(r.p) AS w,
    CASE WHEN r.t - lag(r.t) OVER (PARTITION BY r.node ORDER BY r.t) <= any_value(nt.tol) THEN 0 ELSE 1 END
      AS starts
  FROM rows r JOIN node_tol nt ON nt.node = r.node WHERE r.p IS NOT NULL GROUP BY r.node, r.t
),
node_i AS (
  SELECT node, wstart, w, sum(starts) OVER (PARTITION BY node ORDER BY t ROWS UNBOUNDED PRECEDING) AS inst
  FROM node_t
),
node_power AS (
  SELECT node, wstart, count(*) AS instants, avg(w) AS power_mean_w, quantile_cont(w, 0.95) AS power_p95_w,
    max(w) AS power_max_w
  FROM (SELECT node, min(wstart) AS wstart, sum(w) AS w FROM node_i GROUP BY node, inst)
  GROUP BY node, wstart
)"""


def _node_select(window: bool, power: str | None = None) -> str:
    """The final SELECT for by="node": sums of the GPUs' extensive numbers, node power per instant.

    `power` replaces the CTEs computing `node_power` (node, wstart, instants, power_mean_w, power_p95_w,
    power_max_w) from `rows` and `step`: the rollup path computes it from partials.
    """
    win = "n.wstart AS window_start, " if window else ""
    span = "nullif((n.t1 - n.t0 + n.med) / 86400e9, 0)"
    sums = ", ".join(f"sum({c}) AS {c}" for c in (
        "energy_j", *_COUNT_COLUMNS, "idle_powered_s", "util_hours", "throttled_s",
        *(f"throttled_s_{r}" for r in REASONS)))
    return f"""
, node_gpu AS (
  SELECT node, wstart, count(*) AS gpus, min(t0) AS t0, max(t1) AS t1, min(med) AS med, max(samples) AS samples,
    sum(util_mean * n_u) / nullif(sum(n_u), 0) AS util_mean,
    sum(temp_mean_c * n_tc) / nullif(sum(n_tc), 0) AS temp_mean_c,
    max(temp_max_c) AS temp_max_c, max(mem_temp_max_c) AS mem_temp_max_c, {sums}
  FROM g GROUP BY node, wstart
),
{_NODE_POWER if power is None else power},
node_xid AS (SELECT node, wstart, sum(xid_count) AS xid_count FROM xid GROUP BY node, wstart),
n AS (
  SELECT g.*, p.instants, p.power_mean_w, p.power_p95_w, p.power_max_w, coalesce(x.xid_count, 0) AS xid_count
  FROM node_gpu g LEFT JOIN node_power p USING (node, wstart) LEFT JOIN node_xid x USING (node, wstart)
)
SELECT n.node, n.gpus, {win}n.t0 AS start, n.t1 AS "end", greatest(n.samples, n.instants) AS samples,
  n.energy_j / 3.6e6 AS energy_kwh, n.power_mean_w, n.power_p95_w, n.power_max_w, n.util_mean,
  n.temp_mean_c, n.temp_max_c, n.mem_temp_max_c, n.throttled_s, {_reason_cols("n.")},
  n.xid_count, n.xid_count / {span} AS xid_rate_per_day,
  n.ecc_corrected, n.ecc_corrected / {span} AS ecc_corrected_per_day,
  {", ".join(f"n.{c}" for c in _COUNT_COLUMNS[1:])}, n.idle_powered_s,
  n.energy_j / nullif(n.util_hours, 0) AS joules_per_util_hour
FROM n ORDER BY n.node{", n.wstart" if window else ""}"""


def _schema(by: str, window: bool) -> pa.Schema:
    """The output schema of analyze()."""
    fields = list(GPU_FIELDS)
    if by == "node":
        fields = [fields[0], pa.field("gpus", _I), *fields[3:]]
    if window:
        at = 3 if by == "gpu" else 2
        fields.insert(at, pa.field("window_start", _TS))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast DuckDB's result to the documented schema (int64 ns → UTC timestamps, exact column types)."""
    cols = []
    for f in schema:
        col = table.column(f.name)
        if f.name in _TIME_COLUMNS and not pa.types.is_timestamp(col.type):
            col = col.cast(pa.int64()).cast(f.type)
        elif col.type != f.type:
            # counts are float sums of integer counter deltas: round before the cast to an integer
            col = pc.round(col) if pa.types.is_integer(f.type) and pa.types.is_floating(col.type) else col
            col = col.cast(f.type)
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def _check_range(start_ns: int | None, end_ns: int | None) -> None:
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise ValueError(f"empty time range: end ({format_time(end_ns)}) is not after start "
                         f"({format_time(start_ns)})")


def analyze(traces: list[Path], start_ns: int | None = None, end_ns: int | None = None,
            nodes: list[str] | None = None, gpus: list[str] | None = None,
            window_s: float | None = None, by: str = "gpu", *, idle_power_w: float = IDLE_POWER_W,
            use_rollups: bool = True) -> pa.Table:
    """Per-GPU (by="gpu") or per-node (by="node") aggregates over the traces; see the module docstring.

    gpus holds UUIDs or "node/index"; window_s gives one record per GPU (or node) per window, aligned to
    the Unix epoch, with an extra window_start column. An empty selection gives an empty table with the
    same schema; TraceError for a path that is not a trace or a bad file (a rollup included); ValueError
    for bad arguments. use_rollups=False reads only raw rows (the same answer, but p95 power exact).
    """
    from fleetwatch.analysis import rollup  # rollup builds on this module's SQL: imported when used

    if by not in ("gpu", "node"):
        raise ValueError(f"by must be 'gpu' or 'node', got {by!r}")
    if window_s is not None and not window_s > 0:
        raise ValueError(f"window must be > 0 seconds, got {window_s}")
    _check_range(start_ns, end_ns)
    dirs = _trace_dirs(traces)
    window_ns = round(window_s * 1e9) if window_s is not None else None
    schema = _schema(by, window_ns is not None)
    first_day, last_day = _day_range(start_ns, end_ns)

    def run(con: duckdb.DuckDBPyConnection) -> pa.Table:
        index = _gpu_index(con)
        con.register("_gpu_index", index)
        entities = _resolve_gpus(gpus, index) if gpus is not None else None
        if use_rollups and rollup.usable(window_ns, by, gpus, idle_power_w):
            out = rollup.analyze_partials(con, dirs, first_day, last_day, start_ns, end_ns, nodes, entities,
                                          window_ns, by)
            if out is not None:
                return out
        where = _where(start_ns, end_ns, nodes, entities)
        for stmt in _stats_sql(where, window_ns):
            con.execute(stmt)
        changed = con.execute("SELECT node, entity, metric FROM changed").fetchall()
        con.execute(_inc_sql(where, window_ns, changed))
        body = _gpu_ctes(where, window_ns, idle_power_w) + "," + _xid_sql(where, window_ns)
        tail = _gpu_select(window_ns is not None) if by == "gpu" else _node_select(window_ns is not None)
        return _arrow(con.sql("WITH " + body + tail))

    return _conform(_retrying(dirs, first_day, last_day, run), schema)


# --- series -----------------------------------------------------------------------------------------


def _auto_step_s(con: duckdb.DuckDBPyConnection, metric: str, where: str) -> float:
    """The smallest "nice" bucket width that cuts the selection's span into at most AUTO_BUCKETS buckets."""
    lo, hi = con.execute(f"SELECT min(epoch_ns(ts)), max(epoch_ns(ts)) FROM metrics "
                         f"WHERE metric = {_sql_str(metric)}{where}").fetchall()[0]
    if lo is None:
        return 1.0
    want = (hi - lo) / 1e9 / AUTO_BUCKETS
    for s in _NICE_STEPS_S:
        if s >= want:
            return float(s)
    return float(86400 * math.ceil(want / 86400))


def _step_ns(step_s: float | None) -> int | None:
    if step_s is None:
        return None
    if not step_s > 0:
        raise ValueError(f"step must be > 0 seconds, got {step_s}")
    return max(1, round(step_s * 1e9))


def fleet_power_series(traces: list[Path], start_ns: int | None = None, end_ns: int | None = None,
                       step_s: float | None = None) -> pa.Table:
    """GPU power per node per step: columns ts (bucket start), node, power_w (sum over GPUs of their mean).

    Without step_s the bucket is the smallest of 1 s, 2 s, 5 s … 1 d giving at most AUTO_BUCKETS buckets.
    """
    _check_range(start_ns, end_ns)
    step = _step_ns(step_s)
    metric = _WIDE["p"]
    where = _where(start_ns, end_ns, None, None)

    def run(con: duckdb.DuckDBPyConnection) -> pa.Table:
        width = step if step is not None else round(_auto_step_s(con, metric, where) * 1e9)
        b = _bucket("epoch_ns(ts)", width)
        return _arrow(con.sql(f"""
            SELECT b AS ts, node, sum(v) AS power_w FROM (
              SELECT node, entity, {b} AS b, avg(value) AS v FROM metrics
              WHERE metric = {_sql_str(metric)}{where} GROUP BY node, entity, b)
            GROUP BY b, node ORDER BY ts, node"""))

    schema = pa.schema([pa.field("ts", _TS), pa.field("node", pa.string()), pa.field("power_w", _F)])
    return _conform(_retrying(_trace_dirs(traces), *_day_range(start_ns, end_ns), run), schema)


def gpu_series(traces: list[Path], metric: str, start_ns: int | None = None, end_ns: int | None = None,
               step_s: float | None = None) -> pa.Table:
    """One metric's mean per entity per step: columns ts (bucket start), node, entity, value.

    ValueError for a metric the catalogue does not know; the automatic step is fleet_power_series'.
    """
    if metric not in BY_NAME:
        raise ValueError(f"unknown metric {metric!r} (see the README's metric reference)")
    _check_range(start_ns, end_ns)
    step = _step_ns(step_s)
    where = _where(start_ns, end_ns, None, None)

    def run(con: duckdb.DuckDBPyConnection) -> pa.Table:
        width = step if step is not None else round(_auto_step_s(con, metric, where) * 1e9)
        b = _bucket("epoch_ns(ts)", width)
        return _arrow(con.sql(f"""
            SELECT {b} AS ts, node, entity, avg(value) AS value FROM metrics
            WHERE metric = {_sql_str(metric)}{where} GROUP BY ALL ORDER BY ts, node, entity"""))

    schema = pa.schema([pa.field("ts", _TS), pa.field("node", pa.string()), pa.field("entity", pa.string()),
                        pa.field("value", _F)])
    return _conform(_retrying(_trace_dirs(traces), *_day_range(start_ns, end_ns), run), schema)


# --- time and output helpers ------------------------------------------------------------------------


def parse_time(text: str) -> int:
    """Unix ns from ISO-8601 ("2026-01-01", "2026-01-01T02:00:00Z"; naive means UTC) or Unix seconds."""
    s = text.strip()
    try:
        return round(float(s) * 1e9)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith(("Z", "z")) else s)
    except ValueError:
        raise ValueError(f"bad time {text!r}: want ISO-8601 (2026-01-01T02:00:00Z) or Unix seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp()) * 10**9 + t.microsecond * 1000


def format_time(ns: int) -> str:
    """Unix ns as ISO-8601 UTC ("2026-01-01T00:00:00Z", fractional seconds only when there are some)."""
    sec, frac = divmod(int(ns), 10**9)
    text = dt.datetime.fromtimestamp(sec, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


def to_records(table: pa.Table) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: timestamps as ISO-8601 UTC strings, NaN as None."""
    cols: dict[str, list[Any]] = {}
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            cols[name] = [None if v is None else format_time(v)
                          for v in col.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_pylist()]
        else:
            cols[name] = [None if isinstance(v, float) and math.isnan(v) else v for v in col.to_pylist()]
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


def write_parquet(table: pa.Table, path: str | Path) -> None:
    """Write an analysis table as a zstd Parquet file."""
    pq.write_table(table, path, compression="zstd")


def to_csv(table: pa.Table) -> str:
    """The table as CSV with a header: timestamps ISO-8601 UTC, nulls empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.column_names)
    for rec in to_records(table):
        w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in rec.values()])
    return buf.getvalue()


def _human_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def to_text(table: pa.Table) -> str:
    """A human-readable table of the main columns, with a fleet total line."""
    by_node = "gpus" in table.column_names
    windowed = "window_start" in table.column_names
    cols: list[tuple[str, str, Callable[[dict[str, Any]], str]]] = [("NODE", "<", lambda r: str(r["node"]))]
    if by_node:
        cols.append(("GPUS", ">", lambda r: str(r["gpus"])))
    else:
        cols += [("GPU", ">", lambda r: _num(r["gpu"], "d")), ("UUID", "<", lambda r: str(r["uuid"])[:12])]
    if windowed:
        cols.append(("WINDOW", "<", lambda r: str(r["window_start"])))
    cols += [
        ("SAMPLES", ">", lambda r: str(r["samples"])),
        ("ENERGY_KWH", ">", lambda r: _num(r["energy_kwh"], ".3f")),
        ("P_MEAN_W", ">", lambda r: _num(r["power_mean_w"], ".0f")),
        ("P95_W", ">", lambda r: _num(r["power_p95_w"], ".0f")),
        ("P_MAX_W", ">", lambda r: _num(r["power_max_w"], ".0f")),
        ("UTIL%", ">", lambda r: _num(None if r["util_mean"] is None else 100 * r["util_mean"], ".1f")),
        ("T_MAX_C", ">", lambda r: _num(r["temp_max_c"], ".0f")),
        ("THROTTLED", ">", lambda r: _human_s(r["throttled_s"])),
        ("IDLE_PWR", ">", lambda r: _human_s(r["idle_powered_s"])),
        ("XID", ">", lambda r: str(r["xid_count"])),
        ("ECC_C", ">", lambda r: _num(r["ecc_corrected"], "d")),
        ("ECC_U", ">", lambda r: _num(r["ecc_uncorrected"], "d")),
        ("REMAP_U", ">", lambda r: _num(r["remapped_rows_uncorrectable"], "d")),
    ]
    records = to_records(table)
    cells = [[f(r) for _, _, f in cols] for r in records]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, (h, _, _) in enumerate(cols)]
    lines = ["  ".join(format(h, f"{a}{w}") for (h, a, _), w in zip(cols, widths, strict=True))]
    lines += ["  ".join(format(c, f"{a}{w}") for c, (_, a, _), w in zip(row, cols, widths, strict=True))
              for row in cells]
    if not records:
        lines.append("(no data in the selection)")
        return "\n".join(lines) + "\n"
    energy = sum(r["energy_kwh"] or 0.0 for r in records)
    xids = sum(r["xid_count"] or 0 for r in records)
    start = min(r["start"] for r in records)
    end = max(r["end"] for r in records)
    what = f"{len({r['node'] for r in records})} node(s)" if by_node else \
        f"{len({(r['node'], r['uuid']) for r in records})} GPU(s)"
    lines.append(f"total: {what}, {energy:.3f} kWh, {xids} XID event(s), {start} → {end}")
    return "\n".join(lines) + "\n"
