"""Replay: a recorded trace as a source, played through the same pipeline as live collection.

The replay clock starts at the trace's first sample and runs `speed` times faster than the wall clock. At
each update the source serves, for every series, the latest recorded value at or before the replay time,
rebuilt with the identity labels of the trace's entities table, plus the series the live agent derives
rather than records (one fleetwatch_gpu_clock_event_active per reason from the bitmask, and
fleetwatch_gpu_xid_errors_total from the events table). A series is served while its entity is fresh (its
latest row is at most three recorded intervals old) and only if it was in that latest row set (a GPU and
its NVLinks count as one), so series that stopped in the live run (a lost GPU's readings) stop here too.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from collector.batch import Batch, Entity, Event, entity_from_record
from collector.catalogue import BY_NAME, CLOCK_EVENT_REASONS
from collector.source import Source
from collector.trace_io import TraceError, list_trace_files, read_entities, read_events, read_metrics

log = logging.getLogger(__name__)

CHUNK_S = 3600.0           # trace time read per chunk: bounds memory for long traces
MIN_INTERVAL_S = 0.25      # at high speed, update at most 4 times a wall second (Prometheus scrapes slower)
STALE_INTERVALS = 3.0      # as the live exporter: nothing older than three intervals is served
REASONS_METRIC = "fleetwatch_gpu_clock_event_reasons"


@dataclass(frozen=True)
class TraceSpan:
    """First and last sample of a set of traces, and the typical interval between samples."""

    start_ns: int
    end_ns: int
    interval_s: float


def trace_span(traces: Sequence[str | Path]) -> TraceSpan:
    """The span of the traces' metrics, from Parquet footers (no data pages read)."""
    lo, hi = None, None
    files = [f for t in traces for f in list_trace_files(t, "metrics")]
    if not files:
        raise TraceError(f"{', '.join(map(str, traces))}: no metrics files (is this a fleetwatch trace?)")
    for f in files:
        meta = pq.ParquetFile(f).metadata
        col = meta.schema.to_arrow_schema().get_field_index("ts")
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(col).statistics
            if stats is None or not stats.has_min_max:
                continue
            mn, mx = int(stats.min_raw), int(stats.max_raw)     # physical int64 ns (no datetime detour)
            lo = mn if lo is None else min(lo, mn)
            hi = mx if hi is None else max(hi, mx)
    if lo is None or hi is None:
        raise TraceError(f"{files[0]}: no timestamp statistics; cannot replay")
    return TraceSpan(lo, hi, _median_interval(files))


def _median_interval(files: Sequence[Path]) -> float:
    """Median gap between consecutive samples of a series, from the head of the first file.

    Files are sorted by (node, entity, metric, ts), so a series' samples are adjacent rows.
    """
    gaps: list[np.ndarray] = []
    for f in files[:4]:
        pf = pq.ParquetFile(f)
        batch = next(pf.iter_batches(batch_size=20_000, columns=["node", "entity", "metric", "ts"]), None)
        if batch is None:
            continue
        key = np.array([f"{n}|{e}|{m}" for n, e, m in zip(batch.column("node").to_pylist(),
                                                        batch.column("entity").to_pylist(),
                                                        batch.column("metric").to_pylist(), strict=True)])
        ts = batch.column("ts").cast(pa.int64()).to_numpy()
        d = np.diff(ts)
        gaps.append(d[(key[1:] == key[:-1]) & (d > 0)])
    allg = np.concatenate(gaps) if gaps else np.zeros(0)
    return float(np.median(allg)) / 1e9 if len(allg) else 1.0


def _read(traces: Sequence[str | Path], start_ns: int, end_ns: int) -> pa.Table:
    tables = [read_metrics(t, start_ns, end_ns) for t in traces]
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


class ReplaySource(Source):
    """Serves a recorded trace at replay time; see the module docstring."""

    name = "replay"

    def __init__(self, traces: Sequence[str | Path], span: TraceSpan | None = None, speed: float = 1.0,
                 start_ns: int | None = None, end_ns: int | None = None) -> None:
        self.traces = [Path(t) for t in traces]
        self.span = span or trace_span(self.traces)
        self.start_ns = max(self.span.start_ns, start_ns or self.span.start_ns)
        self.end_ns = min(self.span.end_ns, end_ns) if end_ns is not None else self.span.end_ns
        self.interval = max(MIN_INTERVAL_S, self.span.interval_s / speed)
        self.timeout = max(5.0, self.interval * 3)
        # Trace time between updates can exceed the recorded interval at high speed: stay fresh across it.
        self.stale_ns = int(STALE_INTERVALS * max(self.span.interval_s, self.interval * speed) * 1e9)
        self._entities = self._load_entities()
        self._series: dict[tuple[str, str, str], int] = {}
        self._series_metric: list[str] = []
        self._series_entity: list[Entity] = []
        self._value = np.zeros(0)
        self._last = np.zeros(0, dtype=np.int64)
        # Freshness group of each entity: a GPU's NVLinks go with the GPU (one NVML collection wrote them),
        # so when a GPU stops answering its links stop being served with it, as live.
        self._group: dict[Entity, tuple[str, str]] = {}
        self._group_last: dict[tuple[str, str], int] = {}
        self._loaded_to = self.start_ns          # rows with ts < this are loaded
        self._rows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None   # ts, series, value
        self._pos = 0
        self._xids: Counter[tuple[Entity, int]] = Counter()
        self._last_xid: dict[Entity, int] = {}
        self._events = self._load_events()
        self._event_pos = 0
        self.done = False

    # --- loading -------------------------------------------------------------------------------
    def _load_entities(self) -> dict[tuple[str, str], Entity]:
        out: dict[tuple[str, str], Entity] = {}
        for t in self.traces:
            table = read_entities(t)
            if table is None:
                continue
            for row in table.to_pylist():
                try:
                    out[(row["node"], row["entity"])] = entity_from_record(row)
                except ValueError as err:
                    raise TraceError(f"{t}: entities table: {err}") from err
        return out

    def _entity(self, node: str, entity: str, metric: str) -> Entity:
        e = self._entities.get((node, entity))
        if e is None:
            # A trace without identity labels (an import that lacked them): minimal labels.
            kind = BY_NAME[metric].entity
            if kind == "gpu":
                e = Entity("gpu", node, entity, (node, "", entity, "", "", "", ""))
            elif kind == "node":
                e = Entity("node", node, entity, (node,))
            else:
                raise TraceError(f"entity {entity!r} on {node!r} is not in the trace's entities table")
            self._entities[(node, entity)] = e
        return e

    def _load_events(self) -> list[Event]:
        out: list[Event] = []
        for t in self.traces:
            ev = read_events(t, self.start_ns, self.end_ns + 1)
            ts = ev["ts"].cast(pa.int64()).to_pylist()
            for i, row in enumerate(ev.drop_columns(["ts"]).to_pylist()):
                out.append(Event(ts[i], str(row["node"]), str(row["entity"]), str(row["kind"]), int(row["code"]),
                                 row["detail"]))
        out.sort(key=lambda e: e.ts_ns)
        return out

    def _load_chunk(self) -> None:
        lo = self._loaded_to
        hi = min(self.end_ns + 1, lo + int(CHUNK_S * 1e9))
        table = _read(self.traces, lo, hi)
        self._loaded_to = hi
        n = table.num_rows
        ts = table["ts"].cast(pa.int64()).to_numpy()
        value = table["value"].to_numpy()
        idx = np.empty(n, dtype=np.int64)
        nodes = table["node"].cast(pa.string()).to_pylist()
        ents = table["entity"].cast(pa.string()).to_pylist()
        mets = table["metric"].cast(pa.string()).to_pylist()
        series = self._series
        for i, key in enumerate(zip(nodes, ents, mets, strict=True)):
            j = series.get(key)
            if j is None:
                if key[2] not in BY_NAME:
                    raise TraceError(f"metric {key[2]!r} in the trace is not in the catalogue")
                j = series[key] = len(self._series_metric)
                self._series_metric.append(key[2])
                ent = self._entity(*key)
                self._series_entity.append(ent)
                self._group[ent] = (ent.node, ent.id.split("/nvlink")[0] if ent.kind == "nvlink" else ent.id)
            idx[i] = j
        grow = len(self._series_metric) - len(self._value)
        if grow > 0:
            self._value = np.concatenate([self._value, np.zeros(grow)])
            self._last = np.concatenate([self._last, np.full(grow, -1, dtype=np.int64)])
        order = np.argsort(ts, kind="stable")
        self._rows = (ts[order], idx[order], value[order])
        self._pos = 0

    def _advance(self, now_ns: int) -> None:
        while True:
            if self._rows is None or self._pos >= len(self._rows[0]):
                if self._loaded_to > self.end_ns:
                    return
                if now_ns < self._loaded_to:
                    return
                self._load_chunk()
                continue
            ts, idx, val = self._rows
            stop = int(np.searchsorted(ts, now_ns, side="right"))
            if stop > self._pos:
                sl = slice(self._pos, stop)
                self._value[idx[sl]] = val[sl]          # later rows overwrite earlier ones, in ts order
                self._last[idx[sl]] = ts[sl]
                for j, t in zip(idx[sl].tolist(), ts[sl].tolist(), strict=True):
                    g = self._group[self._series_entity[j]]
                    if t > self._group_last.get(g, -1):
                        self._group_last[g] = t
                self._pos = stop
            if stop < len(ts):
                return

    @property
    def series(self) -> int:
        """Recorded series seen so far."""
        return len(self._series_metric)

    # --- the source ----------------------------------------------------------------------------
    async def update(self, ts_ns: int) -> Batch:
        """The trace's state at replay time ts_ns."""
        now = min(ts_ns, self.end_ns)
        self._advance(now)
        batch = Batch(self.name, ts_ns)
        while self._event_pos < len(self._events) and self._events[self._event_pos].ts_ns <= now:
            ev = self._events[self._event_pos]
            batch.events.append(ev)
            if ev.kind == "xid":
                ent = self._entities.get((ev.node, ev.entity))
                if ent is not None:
                    self._xids[(ent, ev.code)] += 1
                    self._last_xid[ent] = ev.code
            self._event_pos += 1
        fresh_after = now - self.stale_ns
        live_gpus: list[Entity] = []
        for j, metric in enumerate(self._series_metric):
            e = self._series_entity[j]
            last = self._last[j]
            if last < 0 or last != self._group_last[self._group[e]] or last < fresh_after:
                continue
            v = float(self._value[j])
            batch.add(metric, e, v)
            if metric == REASONS_METRIC:
                bits = int(v)
                for reason, bit in CLOCK_EVENT_REASONS.items():
                    batch.add("fleetwatch_gpu_clock_event_active", e, 1.0 if bits & bit else 0.0, (reason,))
            elif metric == "fleetwatch_gpu_info":
                live_gpus.append(e)
        for e in live_gpus:
            for (ent, code), n in sorted(self._xids.items(), key=lambda kv: kv[0][1]):
                if ent is e:
                    batch.add("fleetwatch_gpu_xid_errors_total", e, float(n), (str(code),))
        if ts_ns >= self.end_ns:
            self.done = True
        return batch
