"""Offline trace generation: simulate a fleet for days and write Parquet traces in the collector/trace.py layout.

TRACE_DIR/metrics/date=YYYY-MM-DD/part-0.parquet   one file per simulated UTC day, rows sorted by
                                                   (node, entity, metric, ts), one row group per node group
TRACE_DIR/events/date=YYYY-MM-DD/part-0.parquet    XIDs, GPU lost, IB link down/up
TRACE_DIR/ground_truth/ground_truth.parquet        the faults: only evaluation may read this

Columns are built with NumPy and dictionary-encoded without a Python loop per row; every file is written
under a temporary name and renamed into place, so a reader never sees half a file. Recorded metrics: the
per-GPU catalogue metrics with record=True that an H100 SXM supports (fan speed and page retirement are
NOT_SUPPORTED there), the IB port metrics and the node power. A lost GPU only reports fleetwatch_gpu_lost,
as a real recorder would see every other NVML query fail.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from collector.batch import Entity, Event, entity_record, gpu_entity
from collector.catalogue import spec
from collector.sim.engine import FleetSim
from collector.sim.faults import FaultSpec
from collector.trace import (
    ENTITIES_DIR,
    ENTITIES_FILE,
    ENTITIES_SCHEMA,
    EVENTS_DIR,
    EVENTS_SCHEMA,
    GROUND_TRUTH_DIR,
    GROUND_TRUTH_SCHEMA,
    METRICS_DIR,
    METRICS_SCHEMA,
)

DEFAULT_START_NS = 1_767_225_600 * 10**9        # 2026-01-01T00:00:00Z: fixed, so traces are reproducible
DAY_NS = 86_400 * 10**9
ROWS_PER_GROUP = 6_000_000                      # rows per node group (row group) held in memory at once
_DICT = pa.dictionary(pa.int32(), pa.string())


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What generate_trace wrote."""

    out_dir: str
    start_ns: int
    end_ns: int                                  # last sample
    nodes: int
    gpus: int
    samples: int                                 # timestamps per series
    metric_rows: int
    event_rows: int
    faults: int                                  # ground-truth rows
    failures: int                                # faults that reached failure within the trace
    files: tuple[str, ...]


def sim_entities(sim: FleetSim) -> list[Entity]:
    """Every entity of the simulated fleet, with the identity labels the live agent would export."""
    out: list[Entity] = []
    for n, node in enumerate(sim.node_names):
        for st in sim.states_for_node(n):
            out.append(gpu_entity(node, st.index, st.uuid, st.pci_bus_id, sim.model, sim.driver,
                                  minor=st.minor_number))
        out.extend(Entity(kind="ib_port", node=node, id=f"{dev}/1", labels=(node, dev, "1"))
                   for dev in sim.ib_port_names)
        out.append(Entity(kind="node", node=node, id=node, labels=(node,)))
    return out


def _write_atomic(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _dict_array(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes, type=pa.int32()), dictionary)


def _date(ts_ns: int) -> str:
    return dt.datetime.fromtimestamp(ts_ns // 10**9, tz=dt.UTC).strftime("%Y-%m-%d")


class _DayWriter:
    """Buffers one day of samples as arrays and writes them as one sorted metrics file."""

    def __init__(self, sim: FleetSim, gpu_names: list[str], ib_names: list[str]) -> None:
        self.sim = sim
        self.gpu_names = gpu_names
        self.ib_names = ib_names
        self.node_metric = "fleetwatch_node_power_watts"
        metrics = sorted([*gpu_names, *ib_names, self.node_metric])
        self.metric_code = {m: i for i, m in enumerate(metrics)}
        self.metric_dict = pa.array(metrics, type=pa.string())
        units = sorted({spec(m).unit for m in metrics})
        self.unit_dict = pa.array(units, type=pa.string())
        self.metric_unit = np.array([units.index(spec(m).unit) for m in metrics], dtype=np.int32)
        node_names = sim.node_names
        self.node_order = sorted(range(sim.n_nodes), key=lambda i: node_names[i])
        self.node_dict = pa.array(sorted(node_names), type=pa.string())
        self.node_code = np.empty(sim.n_nodes, dtype=np.int32)
        self.node_code[self.node_order] = np.arange(sim.n_nodes, dtype=np.int32)
        ports = [f"{p}/1" for p in sim.ib_port_names]
        entities = sorted({*(s.uuid for s in sim.states), *ports, *node_names})
        code = {e: i for i, e in enumerate(entities)}
        self.entity_dict = pa.array(entities, type=pa.string())
        self.gpu_entity = np.array([code[s.uuid] for s in sim.states], dtype=np.int32)
        self.port_entity = np.array([code[p] for p in ports], dtype=np.int32)
        self.node_entity = np.array([code[n] for n in node_names], dtype=np.int32)
        self.gm_code = np.array([self.metric_code[m] for m in gpu_names], dtype=np.int32)
        self.im_code = np.array([self.metric_code[m] for m in ib_names], dtype=np.int32)
        self.lost_metric = gpu_names.index("fleetwatch_gpu_lost")
        self.reset()

    def reset(self) -> None:
        """Start a new day."""
        self.ts: list[int] = []
        self.gpu_buf: list[np.ndarray] = []       # each (n_gpu_metrics, n_gpus)
        self.ib_buf: list[np.ndarray] = []        # each (n_ib_metrics, n_nodes, ports)
        self.node_buf: list[np.ndarray] = []      # each (n_nodes,)

    def sample(self, ts_ns: int) -> None:
        """Record the simulator's current values at ts_ns."""
        sim = self.sim
        g = sim.gpu_metrics()
        i = sim.ib_metrics()
        self.ts.append(ts_ns)
        self.gpu_buf.append(np.stack([g[m] for m in self.gpu_names]))
        self.ib_buf.append(np.stack([i[m] for m in self.ib_names]))
        self.node_buf.append(sim.node_power_w())

    def write(self, path: Path) -> int:
        """Write the buffered day, sorted by (node, entity, metric, ts); returns the row count."""
        sim = self.sim
        n_t = len(self.ts)
        ts = np.asarray(self.ts, dtype=np.int64)
        gpu = np.stack(self.gpu_buf, axis=-1)          # (metrics, gpus, T)
        ib = np.stack(self.ib_buf, axis=-1)            # (metrics, nodes, ports, T)
        node = np.stack(self.node_buf, axis=-1)        # (nodes, T)
        gpn, ports = sim.gpus_per_node, sim.ib_ports
        n_gm, n_im = len(self.gpu_names), len(self.ib_names)
        per_node = gpn * n_gm + ports * n_im + 1
        group = max(1, ROWS_PER_GROUP // max(1, per_node * n_t))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        rows = 0
        # Values are too varied for a dictionary page to pay off; the low-cardinality columns are not.
        with pq.ParquetWriter(tmp, METRICS_SCHEMA, compression="zstd",
                              use_dictionary=["ts", "node", "entity", "metric", "unit"]) as writer:
            for start in range(0, sim.n_nodes, group):
                nodes = np.asarray(self.node_order[start:start + group])
                table = self._table(nodes, ts, gpu, ib, node, gpn, ports, n_gm, n_im)
                rows += table.num_rows
                writer.write_table(table)
        os.replace(tmp, path)
        self.reset()
        return rows

    def _table(self, nodes: np.ndarray, ts: np.ndarray, gpu: np.ndarray, ib: np.ndarray, node: np.ndarray,
               gpn: int, ports: int, n_gm: int, n_im: int) -> pa.Table:
        """One node group's rows, as blocks of one series each, sorted by their dictionary codes."""
        n_t = ts.size
        gsel = (nodes[:, None] * gpn + np.arange(gpn)[None, :]).ravel()
        # block keys and values: GPU series, IB series, node series
        g_vals = gpu[:, gsel, :].transpose(1, 0, 2).reshape(-1, n_t)              # (gpus*metrics, T)
        g_node = np.repeat(self.node_code[nodes], gpn * n_gm)
        g_ent = np.repeat(self.gpu_entity[gsel], n_gm)
        g_met = np.tile(self.gm_code, gsel.size)
        i_vals = ib[:, nodes, :, :].transpose(1, 2, 0, 3).reshape(-1, n_t)       # (nodes*ports*metrics, T)
        i_node = np.repeat(self.node_code[nodes], ports * n_im)
        i_ent = np.tile(np.repeat(self.port_entity, n_im), nodes.size)
        i_met = np.tile(self.im_code, nodes.size * ports)
        n_vals = node[nodes, :]
        n_node = self.node_code[nodes]
        n_ent = self.node_entity[nodes]
        n_met = np.full(nodes.size, self.metric_code[self.node_metric], dtype=np.int32)
        vals = np.concatenate([g_vals, i_vals, n_vals])
        b_node = np.concatenate([g_node, i_node, n_node]).astype(np.int32)
        b_ent = np.concatenate([g_ent, i_ent, n_ent]).astype(np.int32)
        b_met = np.concatenate([g_met, i_met, n_met]).astype(np.int32)
        # a lost GPU answers nothing but "lost": drop its other series' rows while it is lost
        keep = np.ones(vals.shape, dtype=bool)
        lost = gpu[self.lost_metric][gsel] > 0                                   # (gpus, T)
        if lost.any():
            lost_blocks = np.repeat(lost, n_gm, axis=0)
            not_lost_metric = np.tile(np.arange(n_gm) != self.lost_metric, gsel.size)
            keep[: g_vals.shape[0]] = ~(lost_blocks & not_lost_metric[:, None])
        order = np.lexsort((b_met, b_ent, b_node))
        vals, keep = vals[order], keep[order]
        counts = keep.sum(axis=1)
        mask = keep.ravel()
        n_rows = int(counts.sum())
        ts_col = np.broadcast_to(ts, vals.shape).ravel()[mask]
        return pa.Table.from_arrays([
            pa.array(ts_col, type=pa.timestamp("ns", tz="UTC")),
            _dict_array(np.repeat(b_node[order], counts), self.node_dict),
            _dict_array(np.repeat(b_ent[order], counts), self.entity_dict),
            _dict_array(np.repeat(b_met[order], counts), self.metric_dict),
            pa.array(vals.ravel()[mask] if n_rows != vals.size else vals.ravel(), type=pa.float64()),
            _dict_array(np.repeat(self.metric_unit[b_met[order]], counts), self.unit_dict),
        ], schema=METRICS_SCHEMA)


def events_table(events: Iterable[Event]) -> pa.Table:
    """Events as a table in EVENTS_SCHEMA, sorted by time."""
    evs = sorted(events, key=lambda e: (e.ts_ns, e.node, e.entity, e.kind))
    def dict_col(values: list[str]) -> pa.DictionaryArray:
        """A dictionary-encoded column with a sorted dictionary."""
        uniq = sorted(set(values))
        idx = {v: i for i, v in enumerate(uniq)}
        return _dict_array(np.array([idx[v] for v in values], dtype=np.int32), pa.array(uniq, type=pa.string()))
    return pa.Table.from_arrays([
        pa.array(np.array([e.ts_ns for e in evs], dtype=np.int64), type=pa.timestamp("ns", tz="UTC")),
        dict_col([e.node for e in evs]),
        dict_col([e.entity for e in evs]),
        dict_col([e.kind for e in evs]),
        pa.array([e.code for e in evs], type=pa.int64()),
        pa.array([e.detail for e in evs], type=pa.string()),
    ], schema=EVENTS_SCHEMA)


def ground_truth_table(rows: list[dict[str, object]]) -> pa.Table:
    """Ground-truth rows (onset/failure as Unix ns) as a table in GROUND_TRUTH_SCHEMA."""
    cols = {f.name: [r[f.name] for r in rows] for f in GROUND_TRUTH_SCHEMA}
    return pa.Table.from_pydict(cols, schema=GROUND_TRUTH_SCHEMA)


def generate_trace(out_dir: str | os.PathLike[str], nodes: int, gpus_per_node: int, days: float, seed: int,
                   interval_s: float = 300, fault_rate: float = 1.0, injects: Iterable[FaultSpec] = (),
                   start_ns: int | None = None,
                   progress: Callable[[int, int], None] | None = None) -> TraceSummary:
    """Simulate `days` of a fleet sampled every interval_s and write the trace; progress(day, days) per day."""
    if days <= 0 or interval_s <= 0:
        raise ValueError(f"days and interval_s must be > 0, got {days} and {interval_s}")
    start = DEFAULT_START_NS if start_ns is None else int(start_ns)
    step_ns = round(interval_s * 1e9)
    n_samples = max(1, round(days * 86400 / interval_s))
    sim = FleetSim(nodes, gpus_per_node, seed, start, fault_rate, tuple(injects), max_step_s=interval_s)
    gpu_names = sorted(n for n in sim.gpu_metrics() if spec(n).record)
    ib_names = sorted(sim.ib_metrics())
    writer = _DayWriter(sim, gpu_names, ib_names)
    out = Path(out_dir)
    files: list[str] = []
    events: list[Event] = []
    metric_rows = 0
    day_of = [(start + k * step_ns) // DAY_NS for k in range(n_samples)]
    days_total = len(set(day_of))
    done = 0
    for k in range(n_samples):
        ts = start + k * step_ns
        sim.advance_to(ts, sync=False)
        events.extend(sim.drain_events())
        writer.sample(ts)
        if k == n_samples - 1 or day_of[k + 1] != day_of[k]:
            path = out / METRICS_DIR / f"date={_date(ts)}" / "part-0.parquet"
            metric_rows += writer.write(path)
            files.append(str(path))
            done += 1
            if progress is not None:
                progress(done, days_total)
    end = start + (n_samples - 1) * step_ns
    for day in sorted(set(day_of)):
        day_events = [e for e in events if e.ts_ns // DAY_NS == day]
        path = out / EVENTS_DIR / f"date={_date(day * DAY_NS)}" / "part-0.parquet"
        _write_atomic(events_table(day_events), path)
        files.append(str(path))
    truth = sim.ground_truth()
    path = out / GROUND_TRUTH_DIR / "ground_truth.parquet"
    _write_atomic(ground_truth_table(truth), path)
    files.append(str(path))
    path = out / ENTITIES_DIR / ENTITIES_FILE
    _write_atomic(pa.Table.from_pylist([entity_record(e) for e in sim_entities(sim)], schema=ENTITIES_SCHEMA), path)
    files.append(str(path))
    return TraceSummary(out_dir=str(out), start_ns=start, end_ns=end, nodes=nodes, gpus=sim.n_gpus,
                        samples=n_samples, metric_rows=metric_rows, event_rows=len(events), faults=len(truth),
                        failures=sum(1 for r in truth if r["failure"] is not None), files=tuple(files))
