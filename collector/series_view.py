"""The series view: what the predictor and the alert engine read, live or offline (DESIGN.md seam 2).

Three views answer the same questions:

- `RecentWindow`: the agent's own readings of the last minutes, in memory (one node, live);
- `TraceView`: Parquet traces (offline, backtests, and a node's own recorded history);
- `PrometheusView`: a Prometheus-compatible query API (a fleet, live).

`range()` resamples one metric onto a regular grid start, start+step, ... <= end with Prometheus' lookback
semantics: each grid point holds the latest sample at or before it, if that sample is at most `stale_s`
old, else NaN. A long outage therefore stays a run of NaNs; nothing is interpolated across it.
Series are keyed by (node, entity) as in the trace schema (entity = GPU UUID, interface, ...).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds

from collector.batch import Batch, Entity, Event, entity_from_record
from collector.catalogue import BY_NAME
from collector.trace_io import (
    TraceError,
    list_trace_files,
    read_entities,
    read_events,
    read_metrics,
    resolve_trace_dir,
)

NS = 10**9
DEFAULT_STALE_S = 300.0          # Prometheus' default lookback delta


@dataclass(frozen=True, slots=True, order=True)
class SeriesKey:
    """One series of a metric: the node and the entity (GPU UUID, interface, ...).

    `extra` holds the values of the metric's labels beyond the entity's (catalogue `labels`, e.g. xid,
    quantile), so that e.g. one forecast's quantiles stay separate series; () for most metrics.
    """

    node: str
    entity: str
    extra: tuple[str, ...] = ()


@dataclass(slots=True)
class SeriesFrame:
    """One metric on a regular grid: values[i, j] is series keys[i] at ts_ns[j] (NaN: no fresh sample)."""

    metric: str
    keys: list[SeriesKey]
    ts_ns: np.ndarray                # int64, shape (T,)
    values: np.ndarray               # float64, shape (len(keys), T)

    def row(self, key: SeriesKey) -> np.ndarray:
        """The values of one series; KeyError when absent."""
        return self.values[self.keys.index(key)]

    def select(self, keys: Iterable[SeriesKey]) -> SeriesFrame:
        """The frame restricted to `keys` (those present), in that order."""
        index = {k: i for i, k in enumerate(self.keys)}
        keep = [k for k in keys if k in index]
        return SeriesFrame(self.metric, keep, self.ts_ns, self.values[[index[k] for k in keep]].reshape(
            len(keep), len(self.ts_ns)))


class SeriesView(Protocol):
    """What the predictor and the alert engine are written against."""

    def range(self, metric: str, start_ns: int, end_ns: int, step_s: float, *,
              nodes: Sequence[str] | None = None, stale_s: float = DEFAULT_STALE_S) -> SeriesFrame:
        """One metric resampled on the grid [start, end] every step_s seconds."""
        ...

    def latest(self, metric: str, at_ns: int, *, stale_s: float = DEFAULT_STALE_S) -> dict[SeriesKey, float]:
        """The latest value of every series of `metric` no older than stale_s at at_ns."""
        ...

    def events(self, start_ns: int, end_ns: int, *, kinds: Sequence[str] | None = None) -> list[Event]:
        """Observable events (XID, GPU lost, ...) with start <= ts < end, oldest first."""
        ...

    def entities(self) -> dict[SeriesKey, Entity]:
        """The identity (labels) of every entity the view knows."""
        ...

    def span(self) -> tuple[int, int] | None:
        """First and last sample time the view holds, or None when empty."""
        ...


def grid(start_ns: int, end_ns: int, step_s: float) -> np.ndarray:
    """The grid start, start+step, ... <= end (int64 ns); ValueError for a bad step or range."""
    if not step_s > 0 or not math.isfinite(step_s):
        raise ValueError(f"step must be a positive number of seconds, got {step_s}")
    if end_ns < start_ns:
        raise ValueError("range end is before its start")
    step_ns = round(step_s * NS)
    return np.arange(start_ns, end_ns + 1, step_ns, dtype=np.int64)


def resample(ts: np.ndarray, values: np.ndarray, points: np.ndarray, stale_ns: int) -> np.ndarray:
    """Latest sample at or before each grid point, NaN when none is at most stale_ns old (ts sorted)."""
    out = np.full(len(points), np.nan)
    if len(ts) == 0:
        return out
    idx = np.searchsorted(ts, points, side="right") - 1
    ok = idx >= 0
    fresh = np.zeros(len(points), dtype=bool)
    fresh[ok] = points[ok] - ts[idx[ok]] <= stale_ns
    out[fresh] = values[idx[fresh]]
    return out


def _frame(metric: str, series: dict[SeriesKey, tuple[np.ndarray, np.ndarray]], points: np.ndarray,
           stale_s: float) -> SeriesFrame:
    keys = sorted(series)
    stale_ns = int(stale_s * NS)
    n, t = len(keys), len(points)
    values = np.full((n, t), np.nan)
    lens = np.fromiter((len(series[k][0]) for k in keys), dtype=np.int64, count=n)
    total = int(lens.sum())
    if total == 0 or t == 0:
        return SeriesFrame(metric, keys, points, values)
    ts_all = np.concatenate([series[k][0] for k in keys])
    lo = min(int(ts_all.min()), int(points[0]))
    span = max(int(ts_all.max()), int(points[-1])) - lo + 1
    if span * n >= 2**62:       # keys below would overflow int64 (months of samples x many series): one by one
        for i, k in enumerate(keys):
            ts, v = series[k]
            values[i] = resample(ts, v, points, stale_ns)
        return SeriesFrame(metric, keys, points, values)
    # All series at once (alert rules read thousands): one sorted key per sample, series index * span + time,
    # and one searchsorted for every (series, grid point).
    v_all = np.concatenate([series[k][1] for k in keys]).astype(np.float64, copy=False)
    sid = np.repeat(np.arange(n, dtype=np.int64), lens)
    key = sid * span + (ts_all - lo)
    q = (np.arange(n, dtype=np.int64)[:, None] * span + (points - lo)[None, :]).ravel()
    idx = np.searchsorted(key, q, side="right") - 1
    first = np.repeat(np.cumsum(lens) - lens, t)
    ok = idx >= first
    fresh = np.zeros(n * t, dtype=bool)
    fresh[ok] = np.tile(points, n)[ok] - ts_all[idx[ok]] <= stale_ns
    flat = values.reshape(-1)
    flat[fresh] = v_all[idx[fresh]]
    return SeriesFrame(metric, keys, points, values)


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """A string column as (integer codes, their strings), without one Python string per row."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if not pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_encode()
    return arr.indices.to_numpy(zero_copy_only=False), arr.dictionary.to_pylist()


def _ts_stats(files: Sequence[Path]) -> tuple[int, int] | None:
    """Min and max of the ts column from the files' row-group statistics, or None when any lacks them."""
    import pyarrow.parquet as pq

    lo: int | None = None
    hi: int | None = None
    for f in files:
        meta = pq.ParquetFile(f).metadata
        i = meta.schema.names.index("ts")
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(i).statistics
            if meta.row_group(g).num_rows == 0:
                continue
            if st is None or not st.has_min_max:
                return None
            a, b = (pa.scalar(v, type=pa.timestamp("ns", tz="UTC")).cast(pa.int64()).as_py() for v in (st.min, st.max))
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    return None if lo is None or hi is None else (lo, hi)


def _check_metric(metric: str) -> None:
    if metric not in BY_NAME:
        raise KeyError(f"unknown metric {metric!r}: not in the catalogue")


# --- offline: Parquet traces ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Prefetched:
    """Series read ahead by TraceView.prefetch, for [start, end) (None: unbounded)."""

    start_ns: int | None
    end_ns: int | None
    series: dict[str, dict[SeriesKey, tuple[np.ndarray, np.ndarray]]]

    def covers(self, start_ns: int | None, end_ns: int | None) -> bool:
        """Whether [start, end) lies within the prefetched window."""
        lo_ok = self.start_ns is None or (start_ns is not None and start_ns >= self.start_ns)
        hi_ok = self.end_ns is None or (end_ns is not None and end_ns <= self.end_ns)
        return lo_ok and hi_ok

    def slice(self, metric: str, start_ns: int | None, end_ns: int | None,
              nodes: Sequence[str] | None) -> dict[SeriesKey, tuple[np.ndarray, np.ndarray]]:
        """The prefetched samples of `metric` with start <= ts < end (of `nodes`)."""
        out = {}
        for k, (ts, v) in self.series[metric].items():
            if nodes is not None and k.node not in nodes:
                continue
            a = 0 if start_ns is None else int(np.searchsorted(ts, start_ns, side="left"))
            b = len(ts) if end_ns is None else int(np.searchsorted(ts, end_ns, side="left"))
            if b > a:
                out[k] = (ts[a:b], v[a:b])
        return out


class TraceView:
    """A series view over one or more trace directories (or the service's data dir)."""

    def __init__(self, traces: str | Path | Sequence[str | Path]) -> None:
        if isinstance(traces, str | Path):
            traces = [traces]
        self.traces = [resolve_trace_dir(t) for t in traces]
        for t in self.traces:
            if not t.is_dir():
                raise TraceError(f"{t}: no such trace directory")

    def prefetch(self, metrics: Sequence[str], start_ns: int | None = None, end_ns: int | None = None) -> None:
        """Read several metrics in one scan and serve later reads of them within [start, end) from memory.

        Each read otherwise scans the trace once; a predictor reading 20 metrics of a large trace pays
        that 20 times.
        """
        for m in metrics:
            _check_metric(m)
        self._cache = _Prefetched(start_ns, end_ns, self._read(list(metrics), start_ns, end_ns, None))

    def _read(self, metrics: list[str], start_ns: int | None, end_ns: int | None,
              nodes: Sequence[str] | None) -> dict[str, dict[SeriesKey, tuple[np.ndarray, np.ndarray]]]:
        out: dict[str, dict[SeriesKey, tuple[np.ndarray, np.ndarray]]] = {m: {} for m in metrics}
        for t in self.traces:
            if not (t / "metrics").is_dir():
                continue
            table = read_metrics(t, start_ns, end_ns, nodes=nodes, metrics=metrics)
            if table.num_rows == 0:
                continue
            node = _codes(table.column("node"))
            entity = _codes(table.column("entity"))
            metric = _codes(table.column("metric"))
            ts = table.column("ts").cast(pa.int64()).to_numpy()
            vals = table.column("value").to_numpy()
            # Rows are sorted by (node, entity, metric, ts): cut at key changes (vectorised: millions of rows).
            change = ((node[0][1:] != node[0][:-1]) | (entity[0][1:] != entity[0][:-1])
                      | (metric[0][1:] != metric[0][:-1]))
            cuts = [0, *(np.nonzero(change)[0] + 1).tolist(), len(ts)]
            for a, b in itertools.pairwise(cuts):
                key = SeriesKey(node[1][node[0][a]], entity[1][entity[0][a]])
                per = out[metric[1][metric[0][a]]]
                if key in per:      # the same series in two traces: merge in time order
                    ts0, v0 = per[key]
                    ts_all, v_all = np.concatenate([ts0, ts[a:b]]), np.concatenate([v0, vals[a:b]])
                    order = np.argsort(ts_all, kind="stable")
                    per[key] = (ts_all[order], v_all[order])
                else:
                    per[key] = (ts[a:b], vals[a:b])
        return out

    def _series(self, metric: str, start_ns: int | None, end_ns: int | None,
                nodes: Sequence[str] | None) -> dict[SeriesKey, tuple[np.ndarray, np.ndarray]]:
        cache: _Prefetched | None = getattr(self, "_cache", None)
        if cache is not None and metric in cache.series and cache.covers(start_ns, end_ns):
            return cache.slice(metric, start_ns, end_ns, nodes)
        return self._read([metric], start_ns, end_ns, nodes)[metric]

    def raw(self, metric: str, start_ns: int | None = None, end_ns: int | None = None, *,
            nodes: Sequence[str] | None = None) -> dict[SeriesKey, tuple[np.ndarray, np.ndarray]]:
        """Every sample of `metric` with start <= ts < end, per series: (ts_ns, values), ts sorted."""
        _check_metric(metric)
        return self._series(metric, start_ns, end_ns, nodes)

    def range(self, metric: str, start_ns: int, end_ns: int, step_s: float, *,
              nodes: Sequence[str] | None = None, stale_s: float = DEFAULT_STALE_S) -> SeriesFrame:
        """One metric resampled on the grid [start, end] every step_s seconds."""
        _check_metric(metric)
        points = grid(start_ns, end_ns, step_s)
        series = self._series(metric, start_ns - int(stale_s * NS), end_ns + 1, nodes)
        return _frame(metric, series, points, stale_s)

    def latest(self, metric: str, at_ns: int, *, stale_s: float = DEFAULT_STALE_S) -> dict[SeriesKey, float]:
        """The latest value of every series of `metric` no older than stale_s at at_ns."""
        f = self.range(metric, at_ns, at_ns, 1.0, stale_s=stale_s)
        return {k: float(v) for k, v in zip(f.keys, f.values[:, 0], strict=True) if not math.isnan(v)}

    def events(self, start_ns: int, end_ns: int, *, kinds: Sequence[str] | None = None) -> list[Event]:
        """Observable events with start <= ts < end, oldest first."""
        out: list[Event] = []
        for t in self.traces:
            if not (t / "events").is_dir():
                continue
            table = read_events(t, start_ns, end_ns, kinds=kinds)
            ts = table.column("ts").cast(pa.int64()).to_pylist()
            for i, r in enumerate(table.to_pylist()):
                out.append(Event(ts[i], r["node"], r["entity"], r["kind"], int(r["code"]), r["detail"]))
        out.sort(key=lambda e: e.ts_ns)
        return out

    def entities(self) -> dict[SeriesKey, Entity]:
        """The identity (labels) of every entity in the traces' entities tables."""
        out: dict[SeriesKey, Entity] = {}
        for t in self.traces:
            table = read_entities(t)
            for row in table.to_pylist() if table is not None else []:
                e = entity_from_record(row)
                out[SeriesKey(e.node, e.id)] = e
        return out

    def span(self) -> tuple[int, int] | None:
        """First and last sample time in the traces, or None when empty."""
        lo: int | None = None
        hi: int | None = None
        for t in self.traces:
            if not (t / "metrics").is_dir():
                continue
            files = list_trace_files(t, "metrics")
            if not files:
                continue
            stats = _ts_stats(files)
            if stats is not None:          # row-group statistics: no need to read every timestamp
                lo = stats[0] if lo is None else min(lo, stats[0])
                hi = stats[1] if hi is None else max(hi, stats[1])
                continue
            col = ds.dataset([str(f) for f in files], format="parquet").to_table(columns=["ts"]).column("ts")
            ts = col.cast(pa.int64()).to_numpy()
            if len(ts):
                lo = int(ts.min()) if lo is None else min(lo, int(ts.min()))
                hi = int(ts.max()) if hi is None else max(hi, int(ts.max()))
        return None if lo is None or hi is None else (lo, hi)


# --- live, one node: the agent's recent readings -----------------------------------------------------------


@dataclass(slots=True)
class _Ring:
    ts: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)


class RecentWindow:
    """The last `max_age_s` seconds of the agent's readings, in memory; subscribe `add` to the agent."""

    def __init__(self, max_age_s: float = 3600.0) -> None:
        self.max_age_ns = int(max_age_s * NS)
        self._series: dict[str, dict[SeriesKey, _Ring]] = {}
        self._entities: dict[SeriesKey, Entity] = {}
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._newest = 0
        self._pruned_at = 0

    def add(self, batch: Batch) -> None:
        """Keep one batch's readings (an agent sink)."""
        with self._lock:
            for m, e, v, x in zip(batch.metric, batch.entity, batch.value, batch.extra, strict=True):
                key = SeriesKey(e.node, e.id, x) if x else SeriesKey(e.node, e.id)
                per = self._series.get(m)
                if per is None:
                    per = self._series[m] = {}
                ring = per.get(key)
                if ring is None:
                    ring = per[key] = _Ring()
                    self._entities.setdefault(SeriesKey(e.node, e.id), e)
                if ring.ts and ring.ts[-1] >= batch.ts_ns:
                    continue            # time went backwards or a duplicate: keep the series sorted
                ring.ts.append(batch.ts_ns)
                ring.values.append(float(v))
            self._events.extend(batch.events)
            self._newest = max(self._newest, batch.ts_ns)
            if self._newest - self._pruned_at > self.max_age_ns // 10:
                self._prune()

    def _prune(self) -> None:
        cut = self._newest - self.max_age_ns
        for per in self._series.values():
            for ring in per.values():
                if ring.ts and ring.ts[0] < cut:
                    i = int(np.searchsorted(np.asarray(ring.ts), cut))
                    del ring.ts[:i]
                    del ring.values[:i]
        self._events = [e for e in self._events if e.ts_ns >= cut]
        self._pruned_at = self._newest

    def _copy(self, metric: str, nodes: Sequence[str] | None) -> dict[SeriesKey, tuple[np.ndarray, np.ndarray]]:
        with self._lock:
            per = self._series.get(metric, {})
            return {k: (np.asarray(r.ts, dtype=np.int64), np.asarray(r.values, dtype=np.float64))
                    for k, r in per.items() if nodes is None or k.node in nodes}

    def range(self, metric: str, start_ns: int, end_ns: int, step_s: float, *,
              nodes: Sequence[str] | None = None, stale_s: float = DEFAULT_STALE_S) -> SeriesFrame:
        """One metric resampled on the grid [start, end] every step_s seconds."""
        _check_metric(metric)
        return _frame(metric, self._copy(metric, nodes), grid(start_ns, end_ns, step_s), stale_s)

    def latest(self, metric: str, at_ns: int, *, stale_s: float = DEFAULT_STALE_S) -> dict[SeriesKey, float]:
        """The latest value of every series of `metric` no older than stale_s at at_ns."""
        _check_metric(metric)
        cut = at_ns - int(stale_s * NS)
        out: dict[SeriesKey, float] = {}
        with self._lock:            # no copies: a bisection in each ring (the alert engine asks every 15 s)
            for k, r in self._series.get(metric, {}).items():
                i = bisect.bisect_right(r.ts, at_ns) - 1
                if i >= 0 and r.ts[i] >= cut:
                    out[k] = r.values[i]
        return out

    def events(self, start_ns: int, end_ns: int, *, kinds: Sequence[str] | None = None) -> list[Event]:
        """Observable events with start <= ts < end, oldest first."""
        with self._lock:
            evs = list(self._events)
        return sorted((e for e in evs if start_ns <= e.ts_ns < end_ns and (kinds is None or e.kind in kinds)),
                      key=lambda e: e.ts_ns)

    def entities(self) -> dict[SeriesKey, Entity]:
        """The identity (labels) of every entity seen."""
        with self._lock:
            return dict(self._entities)

    def span(self) -> tuple[int, int] | None:
        """First and last sample time held, or None when empty."""
        with self._lock:
            firsts = [r.ts[0] for per in self._series.values() for r in per.values() if r.ts]
            lasts = [r.ts[-1] for per in self._series.values() for r in per.values() if r.ts]
        return (min(firsts), max(lasts)) if firsts else None


# --- live, a fleet: a Prometheus-compatible query API --------------------------------------------------------


class PrometheusView:
    """A series view over a Prometheus-compatible HTTP API (native fleetwatch or dcgm-exporter names).

    Synchronous methods, each running its own short event loop: call them from a worker thread
    (asyncio.to_thread) when inside the service's loop.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, retries: int = 3, concurrency: int = 4,
                 selector: str = "") -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.concurrency = concurrency
        self.selector = selector          # extra label matchers, e.g. 'cluster="a"'
        self._entities: dict[SeriesKey, Entity] = {}

    def _query(self, metric: str, nodes: Sequence[str] | None) -> list[str]:
        spec = BY_NAME[metric]
        matchers = [self.selector] if self.selector else []
        if nodes:
            alt = "|".join(_re_escape(n) for n in nodes)
            native = [*matchers, f'node=~"{alt}"']
            dcgm = [*matchers, f'Hostname=~"{alt}"']
        else:
            native = dcgm = matchers
        out = [f"{metric}{{{','.join(native)}}}"]
        if spec.dcgm:
            out.append(f"{spec.dcgm}{{{','.join(dcgm)}}}")
        return out

    def _fetch(self, metric: str, start_ns: int, end_ns: int, step_s: float, nodes: Sequence[str] | None,
               stale_s: float) -> dict[SeriesKey, tuple[np.ndarray, np.ndarray]]:
        from collector.importers.exposition import SeriesMapper
        from collector.importers.prometheus import MAX_POINTS, plan_requests

        mapper = SeriesMapper()
        step_ns = round(step_s * NS)
        # (key, rank) -> chunks in time order; a 24 h window at a fine step exceeds Prometheus' points limit
        parts: dict[tuple[SeriesKey, int], tuple[list[np.ndarray], list[np.ndarray]]] = {}

        async def run() -> None:
            import aiohttp

            imp = self._fetcher(step_ns)
            params = plan_requests(self._query(metric, nodes), start_ns, end_ns, step_ns, MAX_POINTS * step_ns)
            async with aiohttp.ClientSession() as session:
                results = await asyncio.gather(*(imp.fetch(session, r) for r in params))
            for result in results:
                for series in result.get("result") or []:
                    labels = {str(k): str(v) for k, v in (series.get("metric") or {}).items()}
                    name = labels.pop("__name__", metric)
                    try:
                        m = mapper.map(name, labels)
                    except ValueError:
                        continue
                    if isinstance(m, str) or m.metric != metric:
                        continue
                    pts = series.get("values") or []
                    ts = np.array([round(float(p[0]) * 1000) * 10**6 for p in pts], dtype=np.int64)
                    vals = np.array([m.convert(float(p[1])) for p in pts], dtype=np.float64)
                    key = SeriesKey(m.entity.node, m.entity.id)
                    self._entities.setdefault(key, m.entity)
                    one = parts.setdefault((key, m.rank), ([], []))
                    one[0].append(ts)
                    one[1].append(vals)

        asyncio.run(run())
        found: dict[SeriesKey, tuple[np.ndarray, np.ndarray, int]] = {}
        for (key, rank), (ts_parts, val_parts) in parts.items():
            if key not in found or rank < found[key][2]:          # native beats dcgm for one series
                ts = np.concatenate(ts_parts)
                order = np.argsort(ts, kind="stable")
                found[key] = (ts[order], np.concatenate(val_parts)[order], rank)
        return {k: (ts, v) for k, (ts, v, _) in found.items()}

    def range(self, metric: str, start_ns: int, end_ns: int, step_s: float, *,
              nodes: Sequence[str] | None = None, stale_s: float = DEFAULT_STALE_S) -> SeriesFrame:
        """One metric on the grid; Prometheus applies its own lookback, we re-apply stale_s on its samples."""
        _check_metric(metric)
        points = grid(start_ns, end_ns, step_s)
        series = self._fetch(metric, int(points[0]), int(points[-1]), step_s, nodes, stale_s)
        return _frame(metric, series, points, stale_s)

    def latest(self, metric: str, at_ns: int, *, stale_s: float = DEFAULT_STALE_S) -> dict[SeriesKey, float]:
        """The latest value of every series of `metric` at at_ns."""
        f = self.range(metric, at_ns, at_ns, 1.0, stale_s=stale_s)
        return {k: float(v) for k, v in zip(f.keys, f.values[:, 0], strict=True) if not math.isnan(v)}

    def events(self, start_ns: int, end_ns: int, *, kinds: Sequence[str] | None = None,
               step_s: float = 60.0) -> list[Event]:
        """XID events derived from increases of fleetwatch_gpu_xid_errors_total{xid} (one per unit of increase,
        at the grid point where the increase shows), and GPU-lost events from fleetwatch_gpu_lost turning 1."""
        out: list[Event] = []
        points = grid(start_ns, max(start_ns, end_ns - 1), step_s)
        wanted = [k for k in ("xid", "gpu_lost") if kinds is None or k in kinds]
        for kind in wanted:
            name = "fleetwatch_gpu_xid_errors_total" if kind == "xid" else "fleetwatch_gpu_lost"
            for labels, ts, vals in self._raw(name, int(points[0]), int(points[-1]), step_s):
                node, uuid = labels.get("node", ""), labels.get("uuid", "")
                code = int(labels.get("xid", "79") or 79)
                prev = vals[0] if kind == "gpu_lost" else 0.0     # a counter's first value counts as new
                for t, v in zip(ts, vals, strict=True):
                    if math.isnan(v):
                        continue
                    grow = v - prev if v >= prev else v           # a reset starts the counter again
                    prev = v
                    n = min(round(grow), 100) if kind == "xid" else int(grow > 0)
                    out.extend(Event(int(t), node, uuid, kind, code, "from " + name) for _ in range(n))
        out.sort(key=lambda e: e.ts_ns)
        return out

    def _raw(self, name: str, start_ns: int, end_ns: int, step_s: float) -> list[tuple[dict[str, str], np.ndarray,
                                                                                       np.ndarray]]:
        """One native series family straight from query_range: [(labels, ts_ns, values)]."""
        return self.query_range(f"{name}{{{self.selector}}}", start_ns, end_ns, step_s)

    def query_range(self, expr: str, start_ns: int, end_ns: int,
                    step_s: float) -> list[tuple[dict[str, str], np.ndarray, np.ndarray]]:
        """Any PromQL expression, uninterpreted (no catalogue mapping): [(labels, ts_ns, values)] per series.

        Long ranges go in chunks of at most Prometheus' 11,000 points; InputError on a refused query.
        """
        from collector.importers.prometheus import MAX_POINTS, plan_requests

        step_ns = round(step_s * NS)
        requests = plan_requests([expr], start_ns, end_ns, step_ns, MAX_POINTS * step_ns)

        async def run() -> list[dict[str, Any]]:
            import aiohttp

            imp = self._fetcher(step_ns)
            async with aiohttp.ClientSession() as session:
                return [await imp.fetch(session, r) for r in requests]

        found: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[np.ndarray], list[np.ndarray]]] = {}
        for result in asyncio.run(run()):
            for series in result.get("result") or []:
                labels = {str(k): str(v) for k, v in (series.get("metric") or {}).items()}
                pts = series.get("values") or []
                one = found.setdefault(tuple(sorted(labels.items())), (labels, [], []))
                one[1].append(np.array([round(float(p[0]) * 1000) * 10**6 for p in pts], dtype=np.int64))
                one[2].append(np.array([float(p[1]) for p in pts], dtype=np.float64))
        return [(labels, np.concatenate(ts), np.concatenate(vals)) for labels, ts, vals in found.values()]

    def _fetcher(self, step_ns: int) -> Any:
        """The retrying range-query client the Prometheus importer uses."""
        from collector.importers.prometheus import RangeClient

        return RangeClient(self.url, step_ns, self.concurrency, self.retries, 0.5, self.timeout_s)

    def entities(self) -> dict[SeriesKey, Entity]:
        """The identity of every entity seen in answers so far."""
        return dict(self._entities)

    def span(self) -> tuple[int, int] | None:
        """Unknown for a server (its retention decides); None."""
        return None


def _re_escape(s: str) -> str:
    """Escape a literal for a PromQL regex inside double quotes."""
    out = []
    for ch in s:
        if ch in r".^$*+?()[]{}|\\":
            out.append("\\\\" + ch)
        elif ch == '"':
            out.append('\\"')
        else:
            out.append(ch)
    return "".join(out)


def view_entities(view: Any) -> dict[SeriesKey, Entity]:
    """view.entities(), or {} for a view that cannot say."""
    try:
        return dict(view.entities())
    except (AttributeError, TraceError):
        return {}
