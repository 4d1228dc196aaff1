"""Helpers shared by the importer tests: reading a trace back and listing what a directory holds."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from collector.trace_io import check_file, list_trace_files, read_entities, read_events, read_metrics

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SMI = FIXTURES / "smi"
H100 = "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01"


def tree(path: Path) -> list[str]:
    """Every file and directory under path, relative, sorted (to prove nothing was left behind)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def values(trace: Path) -> dict[tuple[str, str, str, int], float]:
    """(node, entity, metric, ts_ns) → value of every metric row."""
    t = read_metrics(trace)
    ts = t.column("ts").cast("int64").to_pylist()
    return {(n, e, m, s): v for n, e, m, s, v in zip(
        t.column("node").to_pylist(), t.column("entity").to_pylist(), t.column("metric").to_pylist(), ts,
        t.column("value").to_pylist(), strict=True)}


def latest(trace: Path) -> dict[tuple[str, str, str], float]:
    """(node, entity, metric) → the value of its last row."""
    out: dict[tuple[str, str, str], float] = {}
    for (n, e, m, _), v in sorted(values(trace).items(), key=lambda kv: kv[0][3]):
        out[(n, e, m)] = v
    return out


def entities(trace: Path) -> dict[tuple[str, str], dict]:
    """(node, entity) → {kind, labels, dcgm_labels} with the JSON decoded."""
    t = read_entities(trace)
    if t is None:
        return {}
    return {(r["node"], r["entity"]): {"kind": r["kind"], "labels": json.loads(r["labels"]),
                                       "dcgm_labels": json.loads(r["dcgm_labels"]) if r["dcgm_labels"] else {}}
            for r in t.to_pylist()}


def events(trace: Path) -> list[dict]:
    """The events table as dicts (ts as Unix ns)."""
    t = read_events(trace)
    rows = t.to_pylist()
    for r, ts in zip(rows, t.column("ts").cast("int64").to_pylist(), strict=True):
        r["ts"] = ts
    return rows


def assert_layout(trace: Path) -> None:
    """Every file is a valid trace file: schema, zstd, dictionary-encoded strings, rows sorted by the keys."""
    files = list_trace_files(trace)
    assert files, f"no trace files under {trace}"
    for f in files:
        table = f.parent.parent.name if f.parent.name.startswith("date=") else f.parent.name
        check_file(f, table)
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                assert meta.row_group(rg).column(c).compression == "ZSTD"
        if table == "metrics":
            t = pq.read_table(f)
            keys = list(zip(t.column("node").to_pylist(), t.column("entity").to_pylist(),
                            t.column("metric").to_pylist(), t.column("ts").cast("int64").to_pylist(), strict=True))
            assert keys == sorted(keys), f"{f} is not sorted by (node, entity, metric, ts)"
            day = f.parent.name.removeprefix("date=")
            assert {str(x)[:10] for x in t.column("ts").to_pylist()} == {day}
