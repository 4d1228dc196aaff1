"""The trace schema (long form, Parquet) and its on-disk layout; see docs/architecture.md."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 1

_DICT = pa.dictionary(pa.int32(), pa.string())
_TS = pa.timestamp("ns", tz="UTC")

# One row per reading, sorted by (node, entity, metric, ts) within a file, zstd-compressed.
METRICS_SCHEMA = pa.schema([
    pa.field("ts", _TS, nullable=False),
    pa.field("node", _DICT, nullable=False),
    pa.field("entity", _DICT, nullable=False),
    pa.field("metric", _DICT, nullable=False),
    pa.field("value", pa.float64(), nullable=False),
    pa.field("unit", _DICT, nullable=False),
], metadata={b"fleetwatch.schema_version": str(SCHEMA_VERSION).encode(), b"fleetwatch.table": b"metrics"})

# Observable events: XID, GPU lost, link flaps, remediation.
EVENTS_SCHEMA = pa.schema([
    pa.field("ts", _TS, nullable=False),
    pa.field("node", _DICT, nullable=False),
    pa.field("entity", _DICT, nullable=False),
    pa.field("kind", _DICT, nullable=False),
    pa.field("code", pa.int64(), nullable=False),
    pa.field("detail", pa.string(), nullable=False),
], metadata={b"fleetwatch.schema_version": str(SCHEMA_VERSION).encode(), b"fleetwatch.table": b"events"})

# The simulator's ground truth: only evaluation reads it, never the predictor.
GROUND_TRUTH_SCHEMA = pa.schema([
    pa.field("fault_id", pa.int64(), nullable=False),
    pa.field("node", pa.string(), nullable=False),
    pa.field("entity", pa.string(), nullable=False),      # GPU UUID, or interface for network faults
    pa.field("gpu_index", pa.int32(), nullable=True),
    pa.field("kind", pa.string(), nullable=False),        # e.g. hbm-degradation, gpu-lost
    pa.field("cause", pa.string(), nullable=False),       # Llama-3 taxonomy: faulty_gpu, hbm3, ...
    pa.field("onset", _TS, nullable=False),               # precursors start (== failure when none)
    pa.field("failure", _TS, nullable=True),              # the uncorrectable event; null if never failed
    pa.field("had_precursors", pa.bool_(), nullable=False),
    pa.field("xid", pa.int64(), nullable=True),
    pa.field("detail", pa.string(), nullable=False),
], metadata={b"fleetwatch.schema_version": str(SCHEMA_VERSION).encode(), b"fleetwatch.table": b"ground_truth"})

# Entities: the identity labels of every entity a trace mentions, so that replay and importers can rebuild
# the exact series (labels as JSON objects; dcgm_labels "" for non-GPU entities). One file, rewritten
# atomically when new entities appear.
ENTITIES_SCHEMA = pa.schema([
    pa.field("node", pa.string(), nullable=False),
    pa.field("entity", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("labels", pa.string(), nullable=False),
    pa.field("dcgm_labels", pa.string(), nullable=False),
], metadata={b"fleetwatch.schema_version": str(SCHEMA_VERSION).encode(), b"fleetwatch.table": b"entities"})

# Layout: TRACE_DIR/<table>/date=YYYY-MM-DD/<name>.parquet (Hive partitions DuckDB, Spark and Dask read).
METRICS_DIR = "metrics"
EVENTS_DIR = "events"
GROUND_TRUTH_DIR = "ground_truth"
ENTITIES_DIR = "entities"
ENTITIES_FILE = "entities.parquet"
# The service records under DATA_DIR/traces; commands given the data dir look there.
DATA_DIR_TRACES = "traces"
