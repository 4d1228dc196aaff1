"""Helpers that write small, exactly known traces (metrics, events, entities) for analysis and compaction tests."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from collector.batch import entity_record, gpu_entity
from collector.catalogue import BY_NAME
from collector.trace import ENTITIES_DIR, ENTITIES_FILE, ENTITIES_SCHEMA, EVENTS_DIR, METRICS_DIR
from collector.trace_io import NS_PER_DAY, SCHEMAS, SORT_KEYS, day_of, sort_order

DAY0 = 1_767_225_600 * 10**9          # 2026-01-01T00:00:00Z
S = 10**9
POWER = "fleetwatch_gpu_power_watts"
UTIL = "fleetwatch_gpu_utilization_ratio"
ENERGY = "fleetwatch_gpu_energy_joules_total"
CLOCK_REASONS = "fleetwatch_gpu_clock_event_reasons"
TEMP = "fleetwatch_gpu_temperature_celsius"
MEMTEMP = "fleetwatch_gpu_memory_temperature_celsius"
SBE_VOL = "fleetwatch_gpu_ecc_sbe_volatile_total"
DBE_VOL = "fleetwatch_gpu_ecc_dbe_volatile_total"
REMAP_C = "fleetwatch_gpu_remapped_rows_correctable_total"
REPLAYS = "fleetwatch_gpu_pcie_replays_total"

Row = tuple[int, str, str, str, float]          # ts_ns, node, entity, metric, value


def uuid_of(node: int, gpu: int) -> str:
    """A stable fake GPU UUID."""
    return f"GPU-{node:08d}-{gpu:04d}-0000-0000-000000000000"


def _encode(cols: dict[str, list[object]], table: str) -> pa.Table:
    schema = SCHEMAS[table]
    arrays = []
    for f in schema:
        values = cols[f.name]
        if pa.types.is_dictionary(f.type):
            arrays.append(pa.array(values, pa.string()).dictionary_encode())
        elif pa.types.is_timestamp(f.type):
            arrays.append(pa.array(values, pa.int64()).cast(f.type))
        else:
            arrays.append(pa.array(values, f.type))
    t = pa.Table.from_arrays(arrays, schema=schema)
    return t.take(sort_order(t, SORT_KEYS[table])) if t.num_rows else t


def metrics_table(rows: Iterable[Row]) -> pa.Table:
    """Rows as a sorted METRICS_SCHEMA table (units from the catalogue)."""
    rows = list(rows)
    return _encode({"ts": [r[0] for r in rows], "node": [r[1] for r in rows], "entity": [r[2] for r in rows],
                    "metric": [r[3] for r in rows], "value": [r[4] for r in rows],
                    "unit": [BY_NAME[r[3]].unit for r in rows]}, METRICS_DIR)


def events_table(events: Iterable[tuple[int, str, str, str, int, str]]) -> pa.Table:
    """(ts, node, entity, kind, code, detail) tuples as a sorted EVENTS_SCHEMA table."""
    ev = list(events)
    return _encode({"ts": [e[0] for e in ev], "node": [e[1] for e in ev], "entity": [e[2] for e in ev],
                    "kind": [e[3] for e in ev], "code": [e[4] for e in ev], "detail": [e[5] for e in ev]},
                   EVENTS_DIR)


def write_metrics(trace: Path, rows: Iterable[Row], name: str = "part-0.parquet") -> list[Path]:
    """Write metric rows into their day partitions (one file per day, named `name`); the paths."""
    by_day: dict[str, list[Row]] = {}
    for r in rows:
        by_day.setdefault(day_of(r[0]), []).append(r)
    out = []
    for day, part in sorted(by_day.items()):
        d = trace / METRICS_DIR / f"date={day}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(metrics_table(part), d / name, compression="zstd")
        out.append(d / name)
    return out


def write_events(trace: Path, events: Iterable[tuple[int, str, str, str, int, str]],
                 name: str = "part-0.parquet") -> list[Path]:
    """Write events into their day partitions; the paths."""
    by_day: dict[str, list[tuple[int, str, str, str, int, str]]] = {}
    for e in events:
        by_day.setdefault(day_of(e[0]), []).append(e)
    out = []
    for day, part in sorted(by_day.items()):
        d = trace / EVENTS_DIR / f"date={day}"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(events_table(part), d / name, compression="zstd")
        out.append(d / name)
    return out


def write_entities(trace: Path, gpus: Iterable[tuple[int, int]]) -> None:
    """An entities table for GPUs given as (node number, index): node-N, UUID uuid_of(N, index)."""
    d = trace / ENTITIES_DIR
    d.mkdir(parents=True, exist_ok=True)
    rows = [entity_record(gpu_entity(f"node-{n}", i, uuid_of(n, i), f"00000000:{0x18 + i:02X}:00.0",
                                     "NVIDIA H100 80GB HBM3", "550.90.07")) for n, i in gpus]
    pq.write_table(pa.Table.from_pylist(rows, schema=ENTITIES_SCHEMA), d / ENTITIES_FILE)


def series(node: str, entity: str, metric: str, values: Iterable[float], start_ns: int = DAY0,
           step_s: float = 10.0, skip: Iterable[int] = ()) -> list[Row]:
    """One series sampled every step_s from start_ns; indices in `skip` are left out (gaps)."""
    gone = set(skip)
    return [(start_ns + round(i * step_s * S), node, entity, metric, float(v))
            for i, v in enumerate(values) if i not in gone]


def days(n: int) -> int:
    """n days in ns."""
    return n * NS_PER_DAY
