"""`fleetwatch report`: one self-contained HTML file (inline SVG plots, no network) about recorded traces.

Sections: a summary header; fleet GPU power over time (stacked per node); energy by node; a GPU ×
time temperature heatmap; a throttling timeline per GPU and reason (from the
fleetwatch_gpu_clock_event_reasons bitmask); an error/XID timeline with the XID catalogue's meanings; the
top-N unhealthy GPUs; and a placeholder for the predictor's forecasts and risk scores.

Every number comes from DuckDB queries (fleetwatch.analysis.query and a few here) over the Parquet files,
never from all rows in Python, so a large trace stays fast; long series are bucketed in the query to at
most POWER_POINTS points per line and HEATMAP_BINS / THROTTLE_BINS columns.

Unhealthy-GPU score (HealthWeights): a sum of findings per GPU over the window,

    score = gpu_lost·[lost] + Σ_k weight_k · log2(1 + count_k)

for k in critical XIDs, other XIDs, uncorrectable ECC errors, uncorrectable and correctable remapped rows,
and hours of hardware/thermal throttling (UNHEALTHY_THROTTLE). log2 makes each doubling of a count add the
weight once more, so a flood of one benign XID cannot outrank a single uncorrectable error, while a GPU with
several kinds of findings ranks above one with a single kind.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from collector.catalogue import CLOCK_EVENT_REASONS
from collector.trace_io import TraceError, check_file, list_trace_files
from collector.xid import lookup, severity
from fleetwatch.analysis import _plots
from fleetwatch.analysis.query import analyze, connect, fleet_power_series, gpu_series

POWER_POINTS = 1000         # per line: well under the ~2,000 budget, and the stacked SVG stays small
HEATMAP_BINS = 200
THROTTLE_BINS = 500
HEATMAP_MAX_GPUS = 256      # rows; a bigger fleet shows its hottest GPUs
TIMELINE_MAX_GPUS = 30      # rows of the throttling and error timelines
STACK_MAX_NODES = 12        # stacked series; more nodes fold the smallest into "other nodes"
ENERGY_MAX_NODES = 40       # bars; a bigger fleet shows its biggest consumers
THROTTLE_TABLE_ROWS = 10
EVENT_PLOT_MAX = 5000       # markers in the error timeline
RECENT_EVENTS = 200         # rows in the event list

TEMP_METRIC = "fleetwatch_gpu_temperature_celsius"
REASONS_METRIC = "fleetwatch_gpu_clock_event_reasons"
LOST_METRIC = "fleetwatch_gpu_lost"
POWER_METRIC = "fleetwatch_gpu_power_watts"
# Reasons that mean "clocks were held down": idle, application clocks and display clocks are not throttling.
THROTTLE_REASONS = tuple(r for r in CLOCK_EVENT_REASONS
                         if r not in ("gpu_idle", "applications_clocks_setting", "display_clock_setting"))
# Of those, the ones that point at the hardware or its cooling: a software power cap under full load is
# normal operation and would otherwise rank every busy GPU as unhealthy.
UNHEALTHY_THROTTLE = ("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")


@dataclass(frozen=True, slots=True)
class HealthWeights:
    """Weights of the unhealthy-GPU score (see the module docstring for the formula)."""

    # A lost GPU is unusable until the node is reset: it outranks anything a working GPU can show.
    gpu_lost: float = 100.0
    # Critical XIDs need an operator (reset, reboot, RMA workflow) by NVIDIA's own resolution.
    critical_xid: float = 20.0
    # Warning/info XIDs mostly point at applications; they matter when they pile up.
    other_xid: float = 5.0
    # An uncorrectable ECC error or remapped row means lost data and usually a pending reset or RMA.
    ecc_uncorrected: float = 30.0
    remapped_uncorrectable: float = 30.0
    # Correctable remaps are the HBM wear-out precursor: worth a look, not an alarm.
    remapped_correctable: float = 3.0
    # Hours of hardware/thermal throttling: one hour scores like a critical XID's first occurrence ×2.
    throttle_hours: float = 40.0


@dataclass(slots=True)
class GpuHealth:
    """One GPU's findings over the report window and its score."""

    uuid: str
    node: str
    name: str
    lost: bool = False
    critical_xids: int = 0
    other_xids: int = 0
    ecc_uncorrected: float = 0.0
    remapped_uncorrectable: float = 0.0
    remapped_correctable: float = 0.0
    throttle_s: float = 0.0
    temp_max_c: float = math.nan
    score: float = 0.0
    xid_codes: list[int] = field(default_factory=list)

    def findings(self) -> list[str]:
        """Short human-readable reasons for the score, most serious first."""
        out = []
        if self.lost:
            out.append("GPU lost")
        if self.critical_xids:
            out.append(f"{self.critical_xids} critical XID(s)")
        if self.ecc_uncorrected:
            out.append(f"{self.ecc_uncorrected:g} uncorrectable ECC")
        if self.remapped_uncorrectable:
            out.append(f"{self.remapped_uncorrectable:g} uncorrectable remapped row(s)")
        if self.throttle_s:
            out.append(f"{_duration(self.throttle_s)} HW/thermal throttling")
        if self.other_xids:
            out.append(f"{self.other_xids} other XID(s)")
        if self.remapped_correctable:
            out.append(f"{self.remapped_correctable:g} correctable remapped row(s)")
        return out


def health_score(h: GpuHealth, w: HealthWeights = HealthWeights()) -> float:
    """The unhealthy-GPU score of one GPU's findings (module docstring: formula and reasons)."""
    def lg(x: float) -> float:
        return math.log2(1.0 + max(0.0, x))
    return (w.gpu_lost * h.lost + w.critical_xid * lg(h.critical_xids) + w.other_xid * lg(h.other_xids)
            + w.ecc_uncorrected * lg(h.ecc_uncorrected) + w.remapped_uncorrectable * lg(h.remapped_uncorrectable)
            + w.remapped_correctable * lg(h.remapped_correctable) + w.throttle_hours * lg(h.throttle_s / 3600))


# --- formatting -----------------------------------------------------------------------------------


def _iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 10**9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _ns(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A timestamp (any unit) or integer-ns column as int64 Unix nanoseconds."""
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("ns", tz=col.type.tz))
        col = col.cast(pa.int64())
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)


def _strings(col: pa.ChunkedArray) -> list[str]:
    if pa.types.is_dictionary(col.type):
        col = col.cast(pa.string())
    return [str(v) for v in col.to_pylist()]


def _floats(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 (nulls → NaN); zeros when the column is absent."""
    if name not in table.column_names:
        return np.zeros(table.num_rows)
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


# --- input checks ---------------------------------------------------------------------------------


def check_traces(traces: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The trace directories as Paths; TraceError naming the first that is not a readable fleetwatch trace."""
    if isinstance(traces, str | os.PathLike):
        traces = [traces]       # one directory, not the characters of its name
    out = []
    for t in traces:
        p = Path(t)
        if not p.exists():
            raise TraceError(f"{p}: no such trace directory")
        if not p.is_dir():
            raise TraceError(f"{p}: not a trace directory (expected TRACE_DIR/metrics/date=YYYY-MM-DD/*.parquet)")
        metrics = list_trace_files(p, "metrics")
        if not metrics:
            raise TraceError(f"{p}: not a fleetwatch trace (no metrics/date=YYYY-MM-DD/*.parquet files)")
        # Footers only: cheap, and a stray or foreign file is named before any query runs.
        for f in metrics:
            check_file(f, "metrics")
        for f in list_trace_files(p, "events"):
            check_file(f, "events")
        out.append(p)
    if not out:
        raise TraceError("no trace directory given")
    return out


# --- data -----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReportData:
    """Everything the report shows, already reduced to plot-sized arrays."""

    traces: list[Path]
    start_ns: int | None
    end_ns: int | None
    span: tuple[int, int] | None = None
    interval_s: float = 0.0
    per_gpu: pa.Table | None = None
    names: dict[str, str] = field(default_factory=dict)         # uuid → "node/index"
    node_of: dict[str, str] = field(default_factory=dict)       # uuid → node
    events: list[dict[str, Any]] = field(default_factory=list)
    events_truncated: int = 0
    event_groups: list[dict[str, Any]] = field(default_factory=list)
    lost: set[str] = field(default_factory=set)
    health: list[GpuHealth] = field(default_factory=list)


def _where(start_ns: int | None, end_ns: int | None) -> tuple[str, list[int]]:
    """A SQL time filter on `ts` (whatever timestamp type the view has) and its parameters."""
    parts, params = [], []
    if start_ns is not None:
        parts.append("epoch_ns(ts) >= ?")
        params.append(start_ns)
    if end_ns is not None:
        parts.append("epoch_ns(ts) < ?")
        params.append(end_ns)
    return (" AND " + " AND ".join(parts)) if parts else "", params


def _step_s(span_ns: int, interval_s: float, bins: int) -> float:
    """A bucket width: a whole number of sampling intervals, giving at most `bins` buckets over the span."""
    base = interval_s if interval_s > 0 else 1.0
    return base * max(1, math.ceil(span_ns / 1e9 / bins / base))


def _gpu_label(node: str, index: Any, uuid: str) -> str:
    return f"{node}/{index}" if index is not None else f"{node}/{uuid[:12]}"


def collect(traces: Sequence[Path], start_ns: int | None, end_ns: int | None, con: Any) -> ReportData:
    """Run the report's queries: per-GPU summary, span, sampling interval, events, lost GPUs, health."""
    data = ReportData(traces=list(traces), start_ns=start_ns, end_ns=end_ns)
    where, params = _where(start_ns, end_ns)
    lo, hi = con.execute(f"SELECT min(epoch_ns(ts)), max(epoch_ns(ts)) FROM metrics WHERE true{where}",
                         params).fetchone()
    if lo is None:
        return data
    data.span = (int(lo), int(hi))
    per_gpu = analyze(list(traces), start_ns=start_ns, end_ns=end_ns)
    data.per_gpu = per_gpu
    uuids = _strings(per_gpu.column("uuid"))
    nodes = _strings(per_gpu.column("node"))
    idx = per_gpu.column("gpu").to_pylist() if "gpu" in per_gpu.column_names else [None] * len(uuids)
    data.names = {u: _gpu_label(n, i, u) for u, n, i in zip(uuids, nodes, idx, strict=True)}
    data.node_of = dict(zip(uuids, nodes, strict=True))
    if uuids:
        # The median gap between one GPU's power readings: the trace's sampling interval.
        row = con.execute(
            "SELECT median(d) FROM (SELECT epoch_ns(ts) - lag(epoch_ns(ts)) OVER (ORDER BY ts) AS d "
            f"FROM metrics WHERE metric = ? AND entity = ?{where})", [POWER_METRIC, uuids[0], *params]).fetchone()
        if row and row[0]:
            data.interval_s = float(row[0]) / 1e9
    if data.interval_s <= 0:
        data.interval_s = max(1.0, (data.span[1] - data.span[0]) / 1e9)
    _collect_events(data, con, where, params)
    lost_rows = con.execute(f"SELECT DISTINCT entity FROM metrics WHERE metric = ? AND value > 0{where}",
                            [LOST_METRIC, *params]).fetchall()
    data.lost = {str(r[0]) for r in lost_rows} | {e["entity"] for e in data.events if e["kind"] == "gpu_lost"}
    data.health = _health(data, con, where, params)
    return data


def _collect_events(data: ReportData, con: Any, where: str, params: list[int]) -> None:
    total = con.execute(f"SELECT count(*) FROM events WHERE true{where}", params).fetchone()[0]
    rows = con.execute(
        "SELECT epoch_ns(ts), CAST(node AS VARCHAR), CAST(entity AS VARCHAR), CAST(kind AS VARCHAR), code, detail "
        f"FROM events WHERE true{where} ORDER BY ts DESC LIMIT {EVENT_PLOT_MAX}", params).fetchall()
    data.events_truncated = int(total) - len(rows)
    data.events = [{"ts": int(r[0]), "node": r[1], "entity": r[2], "kind": r[3], "code": int(r[4]),
                    "detail": r[5]} for r in reversed(rows)]
    groups = con.execute(
        "SELECT CAST(kind AS VARCHAR) k, code, count(*), count(DISTINCT entity), min(epoch_ns(ts)), "
        f"max(epoch_ns(ts)), min(detail) FROM events WHERE true{where} GROUP BY k, code ORDER BY 3 DESC, 1, 2",
        params).fetchall()
    data.event_groups = [{"kind": g[0], "code": int(g[1]), "count": int(g[2]), "entities": int(g[3]),
                          "first": int(g[4]), "last": int(g[5]), "detail": g[6] or ""} for g in groups]


def _health(data: ReportData, con: Any, where: str, params: list[int]) -> list[GpuHealth]:
    """Each GPU's findings and score, highest first (GPUs without findings score 0)."""
    t = data.per_gpu
    assert t is not None
    uuids = _strings(t.column("uuid"))
    cols = {name: _floats(t, name) for name in ("ecc_uncorrected", "remapped_rows_uncorrectable",
                                                "remapped_rows_correctable", "temp_max_c")}
    # Reasons overlap (thermal slowdown sets hw_slowdown too), so take the longest rather than the sum.
    throttle = np.zeros(t.num_rows)
    for reason in UNHEALTHY_THROTTLE:
        throttle = np.fmax(throttle, _floats(t, f"throttled_s_{reason}"))
    xids: dict[str, dict[int, int]] = {}        # uuid → {code: count}
    for entity, code, n in con.execute(
            f"SELECT CAST(entity AS VARCHAR), code, count(*) FROM events WHERE kind = 'xid'{where} GROUP BY ALL",
            params).fetchall():
        xids.setdefault(entity, {})[int(code)] = int(n)
    out = []
    for i, u in enumerate(uuids):
        codes = xids.get(u, {})
        crit = sum(n for c, n in codes.items() if severity(c) == "critical")
        h = GpuHealth(uuid=u, node=data.node_of[u], name=data.names[u], lost=u in data.lost,
                      critical_xids=crit, other_xids=sum(codes.values()) - crit,
                      ecc_uncorrected=float(np.nan_to_num(cols["ecc_uncorrected"][i])),
                      remapped_uncorrectable=float(np.nan_to_num(cols["remapped_rows_uncorrectable"][i])),
                      remapped_correctable=float(np.nan_to_num(cols["remapped_rows_correctable"][i])),
                      throttle_s=float(np.nan_to_num(throttle[i])), temp_max_c=float(cols["temp_max_c"][i]),
                      xid_codes=sorted(set(codes)))
        h.score = health_score(h)
        out.append(h)
    out.sort(key=lambda h: (-h.score, h.name))
    return out


# --- sections -------------------------------------------------------------------------------------


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _figure(plot: Any, caption: str) -> str:
    return f'<figure>{plot.svg}<figcaption>{_esc(caption)}</figcaption></figure>'


def _empty(msg: str) -> str:
    return f'<p class="empty">{_esc(msg)}</p>'


def _section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}" aria-labelledby="{sid}-h"><h2 id="{sid}-h">{_esc(title)}</h2>\n{body}\n</section>'


def _summary_section(d: ReportData) -> str:
    if d.span is None or d.per_gpu is None:
        rows = [("Traces", ", ".join(str(t) for t in d.traces)), ("Data", "no metric rows in the selected window")]
    else:
        t = d.per_gpu
        energy = float(np.nansum(_floats(t, "energy_kwh")))
        samples = int(np.nansum(_floats(t, "samples")))
        nodes = len(set(d.node_of.values()))
        xid_events = sum(g["count"] for g in d.event_groups if g["kind"] == "xid")
        rows = [
            ("Traces", ", ".join(str(p) for p in d.traces)),
            ("Span", f"{_iso(d.span[0])} → {_iso(d.span[1])} ({_duration((d.span[1] - d.span[0]) / 1e9)})"),
            ("Nodes", f"{nodes}"),
            ("GPUs", f"{t.num_rows}"),
            ("GPU energy", f"{energy:,.2f} kWh"),
            ("GPU samples", f"{samples:,} (every {_duration(d.interval_s)})"),
            ("Events", f"{sum(g['count'] for g in d.event_groups):,} ({xid_events:,} XID), "
                       f"{len(d.lost)} GPU(s) lost"),
        ]
    if d.start_ns is not None or d.end_ns is not None:
        rows.insert(1, ("Window", f"{_iso(d.start_ns) if d.start_ns is not None else '…'} → "
                                  f"{_iso(d.end_ns) if d.end_ns is not None else '…'}"))
    body = "".join(f"<tr><th scope=\"row\">{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return _section("summary", "Summary", f'<table class="kv">{body}</table>')


def _power_section(d: ReportData) -> str:
    if d.span is None:
        return _section("power", "Fleet power over time", _empty("No data in the selected window."))
    step = _step_s(d.span[1] - d.span[0], d.interval_s, POWER_POINTS)
    t = fleet_power_series(d.traces, start_ns=d.start_ns, end_ns=d.end_ns, step_s=step)
    if t.num_rows == 0:
        return _section("power", "Fleet power over time", _empty("No GPU power readings in the selected window."))
    ts, nodes, watts = _ns(t.column("ts")), _strings(t.column("node")), _floats(t, "power_w")
    grid, col = _grid(ts, round(step * 1e9))
    names = sorted(set(nodes))
    mat = np.full((len(names), grid.size), np.nan)
    row = {n: i for i, n in enumerate(names)}
    mat[[row[n] for n in nodes], col] = watts
    # Biggest consumers at the bottom of the stack; beyond STACK_MAX_NODES the rest fold into one band.
    order = np.argsort(-np.nansum(mat, axis=1), kind="stable")
    names, mat = [names[i] for i in order], mat[order]
    if len(names) > STACK_MAX_NODES:
        keep = STACK_MAX_NODES - 1
        rest = np.nansum(mat[keep:], axis=0)
        names = [*names[:keep], f"{len(names) - keep} other nodes"]
        mat = np.vstack([mat[:keep], rest])
    plot = _plots.power_plot(grid, names, mat, "Fleet GPU power over time, stacked by node")
    cap = (f"Sum of GPU board power per node, averaged over {_duration(step)} buckets ({grid.size} points per "
           f"node); a bucket without readings counts as zero.")
    return _section("power", "Fleet power over time", _figure(plot, cap))


def _energy_section(d: ReportData) -> str:
    if d.per_gpu is None or d.per_gpu.num_rows == 0:
        return _section("energy", "Energy by node", _empty("No data in the selected window."))
    by: dict[str, float] = {}
    for n, e in zip(_strings(d.per_gpu.column("node")), _floats(d.per_gpu, "energy_kwh"), strict=True):
        by[n] = by.get(n, 0.0) + float(np.nan_to_num(e))
    items = sorted(by.items(), key=lambda kv: (-kv[1], kv[0]))
    shown, rest = items[:ENERGY_MAX_NODES], items[ENERGY_MAX_NODES:]
    plot = _plots.energy_bar([k for k, _ in shown], np.array([v for _, v in shown]), "GPU energy by node")
    total = sum(by.values())
    cap = f"Energy drawn by each node's GPUs in the window; fleet total {total:,.2f} kWh."
    if rest:
        cap += (f" Showing the {len(shown)} biggest consumers; the other {len(rest)} nodes drew "
                f"{sum(v for _, v in rest):,.2f} kWh together.")
    return _section("energy", "Energy by node", _figure(plot, cap))


def _heatmap_section(d: ReportData) -> str:
    title = "Temperature heatmap"
    if d.span is None or d.per_gpu is None:
        return _section("temperature", title, _empty("No data in the selected window."))
    step = _step_s(d.span[1] - d.span[0], d.interval_s, HEATMAP_BINS)
    t = gpu_series(d.traces, TEMP_METRIC, start_ns=d.start_ns, end_ns=d.end_ns, step_s=step)
    if t.num_rows == 0:
        return _section("temperature", title, _empty("No GPU temperature readings in the selected window."))
    ts, ents, vals = _ns(t.column("ts")), _strings(t.column("entity")), _floats(t, "value")
    grid, col = _grid(ts, round(step * 1e9))
    uuids = sorted(set(ents), key=lambda u: _natural(d.names.get(u, u)))
    note = ""
    if len(uuids) > HEATMAP_MAX_GPUS:
        tmax = dict(zip(_strings(d.per_gpu.column("uuid")), _floats(d.per_gpu, "temp_max_c"), strict=True))
        hottest = sorted(uuids, key=lambda u: -np.nan_to_num(tmax.get(u, np.nan), nan=-1e9))[:HEATMAP_MAX_GPUS]
        note = f" Showing the {HEATMAP_MAX_GPUS} hottest of {len(uuids)} GPUs."
        uuids = sorted(hottest, key=lambda u: _natural(d.names.get(u, u)))
    row = {u: i for i, u in enumerate(uuids)}
    sel = np.array([e in row for e in ents])
    mat = np.full((len(uuids), grid.size), np.nan)
    mat[[row[e] for e, s in zip(ents, sel, strict=True) if s], col[sel]] = vals[sel]
    names = [d.names.get(u, u) for u in uuids]
    plot = _plots.temp_heatmap(grid, round(step * 1e9), names, mat, "GPU temperature over time")
    cap = f"Mean GPU core temperature per {_duration(step)} bucket, one row per GPU.{note}"
    return _section("temperature", title, _figure(plot, cap))


def _grid(ts: np.ndarray, step_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """A uniform grid over bucket starts `ts` and each row's column: empty buckets stay, so outages show as gaps."""
    first = int(ts.min())
    col = (ts - first) // step_ns
    return first + np.arange(int(col.max()) + 1, dtype=np.int64) * step_ns, col


def _natural(s: str) -> tuple[Any, ...]:
    """Sort key that puts node-2 before node-10 and gpu 2 before gpu 10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", s))


def _throttle_section(d: ReportData, con: Any) -> str:
    title = "Throttling timeline"
    if d.span is None:
        return _section("throttling", title, _empty("No data in the selected window."))
    step = _step_s(d.span[1] - d.span[0], d.interval_s, THROTTLE_BINS)
    step_ns = round(step * 1e9)
    mask = sum(CLOCK_EVENT_REASONS[r] for r in THROTTLE_REASONS)
    where, params = _where(d.start_ns, d.end_ns)
    # bit_or over a bucket: a reason counts as active in a bucket if any sample in it had its bit set.
    res = con.execute(
        "SELECT CAST(entity AS VARCHAR) AS entity, (epoch_ns(ts) - ?) // ? AS b, "
        "bit_or(CAST(value AS BIGINT) & ?) AS bits "
        f"FROM metrics WHERE metric = ? AND (CAST(value AS BIGINT) & ?) <> 0{where} GROUP BY ALL",
        [d.span[0], step_ns, mask, REASONS_METRIC, mask, *params]).fetchnumpy()
    if len(res["entity"]) == 0:
        return _section("throttling", title, _empty(
            "No GPU was throttled in the selected window (no clock-event reason other than idle, application "
            "or display clocks was set)."))
    n_bins = int((d.span[1] - d.span[0]) // step_ns) + 1
    ents, inv = np.unique(np.asarray(res["entity"], dtype=object), return_inverse=True)
    b = np.clip(np.asarray(res["b"], dtype=np.int64), 0, n_bins - 1)
    bits = np.asarray(res["bits"], dtype=np.int64)
    busy_bins = np.bincount(inv, minlength=len(ents))
    # GPUs held down by the hardware or its cooling first: a software power cap is routine under load.
    bad = sum(CLOCK_EVENT_REASONS[r] for r in UNHEALTHY_THROTTLE)
    bad_bins = np.bincount(inv, weights=(bits & bad) != 0, minlength=len(ents))
    order = sorted(range(len(ents)), key=lambda i: (-bad_bins[i], -busy_bins[i],
                                                     _natural(d.names.get(ents[i], ents[i]))))
    shown_idx = sorted(order[:TIMELINE_MAX_GPUS], key=lambda i: _natural(d.names.get(ents[i], ents[i])))
    shown = [str(ents[i]) for i in shown_idx]
    reasons = [r for r in THROTTLE_REASONS if (bits & CLOCK_EVENT_REASONS[r]).any()]
    row_of = np.full(len(ents), -1)
    row_of[shown_idx] = np.arange(len(shown_idx))
    g = row_of[inv]
    keep = g >= 0
    active = np.zeros((len(shown), len(reasons), n_bins), dtype=bool)
    for r, reason in enumerate(reasons):
        on = keep & ((bits & CLOCK_EVENT_REASONS[reason]) != 0)
        active[g[on], r, b[on]] = True
    bins = d.span[0] + np.arange(n_bins, dtype=np.int64) * step_ns
    names = [d.names.get(u, u) for u in shown]
    plot = _plots.throttle_timeline(bins, step_ns, names, reasons, active, "GPU throttling by reason")
    more = (f" Showing {len(shown)} of {len(ents)} throttled GPUs: those with hardware or thermal throttling "
            "first, then the most throttled." if len(ents) > len(shown) else "")
    cap = (f"Clock-event reasons from fleetwatch_gpu_clock_event_reasons, per {_duration(step)} bucket (a bar "
           f"where the reason was set in any sample of the bucket).{more}")
    table = _throttle_table(d)
    return _section("throttling", title, _figure(plot, cap) + table)


def _throttle_table(d: ReportData) -> str:
    """Throttled time per reason for the most throttled GPUs (from the per-GPU summary), HW/thermal first."""
    t = d.per_gpu
    if t is None or "throttled_s" not in t.column_names:
        return ""
    total = np.nan_to_num(_floats(t, "throttled_s"))
    bad = np.zeros(t.num_rows)
    for reason in UNHEALTHY_THROTTLE:
        bad = np.fmax(bad, np.nan_to_num(_floats(t, f"throttled_s_{reason}")))
    order = [i for i in np.lexsort((-total, -bad)) if total[i] > 0][:THROTTLE_TABLE_ROWS]
    if not order:
        return ""
    uuids = _strings(t.column("uuid"))
    reasons = [r for r in THROTTLE_REASONS if f"throttled_s_{r}" in t.column_names
               and np.nansum(_floats(t, f"throttled_s_{r}")[order]) > 0]
    head = "".join(f"<th scope=\"col\">{_esc(r)}</th>" for r in reasons)
    body = []
    for i in order:
        cells = "".join(f"<td>{_esc(_duration(_floats(t, f'throttled_s_{r}')[i]))}</td>" for r in reasons)
        body.append(f"<tr><th scope=\"row\">{_esc(d.names[uuids[i]])}</th><td>{_esc(_duration(total[i]))}</td>"
                    f"{cells}</tr>")
    return (f'<table><caption>Throttled time per GPU and reason (the {len(order)} GPUs with the most hardware or '
            'thermal throttling, then the most throttled)</caption><thead><tr><th scope="col">GPU</th>'
            f'<th scope="col">throttled</th>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')


def _event_category(kind: str, code: int) -> str:
    return severity(code) if kind == "xid" else "event"


def _errors_section(d: ReportData) -> str:
    title = "Errors and XID events"
    if not d.events:
        return _section("errors", title, _empty("No XID or other error events in the selected window."))
    count: dict[str, int] = {}
    for e in d.events:
        count[e["entity"]] = count.get(e["entity"], 0) + 1
    label = {e["entity"]: d.names.get(e["entity"], f"{e['node']}/{e['entity']}") for e in d.events}
    shown = sorted(count, key=lambda u: (-count[u], _natural(label[u])))[:TIMELINE_MAX_GPUS]
    shown.sort(key=lambda u: _natural(label[u]))
    row = {u: i for i, u in enumerate(shown)}
    evs = [e for e in d.events if e["entity"] in row]
    span = d.span or (evs[0]["ts"], evs[-1]["ts"])
    plot = _plots.event_timeline(
        np.array([e["ts"] for e in evs], dtype=np.int64), np.array([row[e["entity"]] for e in evs]),
        [label[u] for u in shown], [_event_category(e["kind"], e["code"]) for e in evs],
        [str(e["code"]) if e["kind"] == "xid" else e["kind"] for e in evs], span, "Error events per GPU")
    notes = []
    if len(count) > len(shown):
        notes.append(f"Showing the {len(shown)} GPUs with the most events of {len(count)}.")
    if d.events_truncated:
        notes.append(f"Only the latest {len(d.events):,} events are plotted ({d.events_truncated:,} older ones "
                     "are counted in the table below).")
    cap = "XIDs coloured by the catalogue's severity of their immediate action. " + " ".join(notes)
    return _section("errors", title, _figure(plot, cap) + _event_groups_table(d) + _recent_events_table(d))


def _event_groups_table(d: ReportData) -> str:
    rows = []
    for g in d.event_groups:
        info = lookup(g["code"]) if g["kind"] == "xid" else None
        sev = _event_category(g["kind"], g["code"])
        if g["kind"] == "xid":
            what = (f"<b>{_esc(info.mnemonic)}</b><br>{_esc(info.description)}" if info is not None
                    else "<i>not in NVIDIA's XID catalogue</i>")
            action = (f"{_esc(info.immediate_action or '(none documented)')}"
                      + (f"<br><small>then: {_esc(info.investigatory_action)}</small>"
                         if info is not None and info.investigatory_action else "")) if info is not None else "—"
        else:
            what, action = _esc(g["detail"]), "—"
        rows.append(
            f'<tr class="sev-{_esc(sev)}"><td>{_esc(g["kind"])}</td><td>{g["code"]}</td><td>{what}</td>'
            f'<td><span class="badge {_esc(sev)}">{_esc(sev)}</span></td><td>{action}</td>'
            f'<td>{g["count"]:,}</td><td>{g["entities"]}</td><td>{_esc(_iso(g["first"]))}</td>'
            f'<td>{_esc(_iso(g["last"]))}</td></tr>')
    return ('<table class="events"><caption>Events by kind and code, with the XID catalogue\'s meaning and '
            'immediate action</caption><thead><tr><th scope="col">kind</th><th scope="col">code</th>'
            '<th scope="col">meaning</th><th scope="col">severity</th><th scope="col">immediate action</th>'
            '<th scope="col">count</th><th scope="col">entities</th><th scope="col">first</th>'
            f'<th scope="col">last</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _recent_events_table(d: ReportData) -> str:
    recent = d.events[-RECENT_EVENTS:][::-1]
    rows = "".join(
        f'<tr><td>{_esc(_iso(e["ts"]))}</td><td>{_esc(e["node"])}</td>'
        f'<td>{_esc(d.names.get(e["entity"], e["entity"]))}</td><td>{_esc(e["kind"])}</td><td>{e["code"]}</td>'
        f'<td>{_esc(e["detail"])}</td></tr>' for e in recent)
    more = f" (latest {len(recent)})" if len(d.events) > len(recent) or d.events_truncated else ""
    return (f'<details><summary>Event list{more}</summary><table><thead><tr><th scope="col">time</th>'
            '<th scope="col">node</th><th scope="col">entity</th><th scope="col">kind</th><th scope="col">code</th>'
            f'<th scope="col">detail</th></tr></thead><tbody>{rows}</tbody></table></details>')


def _unhealthy_section(d: ReportData, top: int) -> str:
    title = f"Top {top} unhealthy GPUs"
    ranked = [h for h in d.health if h.score > 0][:top]
    w = HealthWeights()
    doc = (
        '<p class="note">Score = '
        f'{w.gpu_lost:g}·[GPU lost] + {w.critical_xid:g}·log2(1+critical XIDs) + '
        f'{w.other_xid:g}·log2(1+other XIDs) + {w.ecc_uncorrected:g}·log2(1+uncorrectable ECC errors) + '
        f'{w.remapped_uncorrectable:g}·log2(1+uncorrectable remapped rows) + '
        f'{w.remapped_correctable:g}·log2(1+correctable remapped rows) + '
        f'{w.throttle_hours:g}·log2(1+hours of {", ".join(UNHEALTHY_THROTTLE)} throttling), over the window. '
        'XID severity is the catalogue\'s classification of its immediate action.</p>')
    if not ranked:
        return _section("unhealthy", title, doc + _empty("No GPU has any health finding in the selected window."))
    rows = []
    for rank, h in enumerate(ranked, 1):
        xids = ", ".join(str(c) for c in h.xid_codes) or "—"
        temp = f"{h.temp_max_c:.0f}" if math.isfinite(h.temp_max_c) else "—"
        rows.append(
            f'<tr><td>{rank}</td><th scope="row">{_esc(h.name)}</th><td><code>{_esc(h.uuid)}</code></td>'
            f'<td>{h.score:.1f}</td><td>{"yes" if h.lost else "no"}</td><td>{h.critical_xids}</td>'
            f'<td>{h.other_xids}</td><td>{_esc(xids)}</td><td>{h.ecc_uncorrected:g}</td>'
            f'<td>{h.remapped_uncorrectable:g} / {h.remapped_correctable:g}</td>'
            f'<td>{_esc(_duration(h.throttle_s))}</td><td>{temp}</td><td>{_esc("; ".join(h.findings()))}</td></tr>')
    healthy = sum(1 for h in d.health if h.score <= 0)
    tail = f'<p class="note">{healthy} GPU(s) have no findings.</p>' if healthy else ""
    table = ('<table class="unhealthy"><thead><tr><th scope="col">#</th><th scope="col">GPU</th>'
             '<th scope="col">UUID</th><th scope="col">score</th><th scope="col">lost</th>'
             '<th scope="col">critical XIDs</th><th scope="col">other XIDs</th><th scope="col">XID codes</th>'
             '<th scope="col">uncorr. ECC</th><th scope="col">remapped rows (uncorr. / corr.)</th>'
             '<th scope="col">HW/thermal throttling</th><th scope="col">max °C</th><th scope="col">findings</th>'
             f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    return _section("unhealthy", title, doc + table + tail)


# Sections the predictor adds, in order: (id, nav title, "module:function"). Each function takes
# (trace paths, start_ns, end_ns) and returns the section's inner HTML (plots inline, as the others).
PREDICTOR_SECTIONS: list[tuple[str, str, str]] = [
    ("energy-forecast", "Power and energy forecast", "fleetwatch.analysis.report_forecast:section"),
    ("failure-risk", "GPU failure risk", "fleetwatch.analysis.report_risk:section"),
]


def _predictor_sections(paths: Sequence[Path], start_ns: int | None, end_ns: int | None) -> list[str]:
    out = []
    for sid, title, ref in PREDICTOR_SECTIONS:
        module, _, func = ref.partition(":")
        body = getattr(importlib.import_module(module), func)(paths, start_ns, end_ns)
        out.append(_section(sid, title, body))
    return out


_CSS = """
:root{color-scheme:light}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;margin:0;color:#1b1b1b;
background:#fafafa;line-height:1.4}
header{background:#14323f;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:1.4em}
nav{background:#e9eef1;padding:6px 24px;font-size:.9em}
nav a{margin-right:14px;color:#14323f}
main{padding:0 24px 32px;max-width:1280px}
section{background:#fff;border:1px solid #dde3e6;border-radius:6px;margin:18px 0;padding:8px 18px 16px}
h2{font-size:1.15em;margin:.6em 0}
figure{margin:0}
figcaption,.note{font-size:.85em;color:#4a4a4a}
svg.plot{max-width:100%;height:auto;display:block}
table{border-collapse:collapse;font-size:.85em;margin:10px 0;width:100%}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 6px;text-align:left;vertical-align:top}
thead th{background:#f1f4f6}
table.kv{width:auto}
table.kv th{padding-right:24px}
table.unhealthy th[scope=row]{white-space:nowrap}
code{font-size:.9em}
.badge{display:inline-block;padding:0 6px;border-radius:8px;color:#fff;font-size:.85em}
.badge.critical{background:#c62828}.badge.warning{background:#b35c00}.badge.info{background:#1e6fbf}
.badge.event{background:#444}
.empty{color:#555;font-style:italic}
.placeholder{border:2px dashed #9aa7ad;border-radius:6px;padding:6px 14px;background:#f6f8f9}
details{margin-top:8px}
"""


def render_report(traces: Iterable[str | os.PathLike[str]], start_ns: int | None = None,
                  end_ns: int | None = None, top: int = 10) -> str:
    """The report as one self-contained HTML document (TraceError for a path that is not a trace)."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise ValueError(f"the window is empty: end {_iso(end_ns)} is not after start {_iso(start_ns)}")
    paths = check_traces(traces)
    con = connect(paths)
    try:
        con.execute("SET enable_progress_bar = false")     # a report run must not scribble on the terminal
        data = collect(paths, start_ns, end_ns, con)
        sections = [_summary_section(data), _power_section(data), _energy_section(data),
                    _heatmap_section(data), _throttle_section(data, con), _errors_section(data),
                    _unhealthy_section(data, top), *_predictor_sections(paths, start_ns, end_ns)]
    finally:
        con.close()
    nav = "".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, name in (
        ("summary", "Summary"), ("power", "Power"), ("energy", "Energy"), ("temperature", "Temperature"),
        ("throttling", "Throttling"), ("errors", "Errors"), ("unhealthy", "Unhealthy GPUs"),
        *((sid, title) for sid, title, _ in PREDICTOR_SECTIONS)))
    subtitle = (f"{_iso(data.span[0])} → {_iso(data.span[1])}" if data.span else "no data in the window")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>fleetwatch report: {_esc(subtitle)}</title><style>{_CSS}</style></head><body>\n"
            f"<header><h1>fleetwatch fleet report</h1><div>{_esc(subtitle)}</div></header>\n"
            f"<nav aria-label=\"sections\">{nav}</nav>\n<main>\n" + "\n".join(sections) + "\n</main></body></html>\n")


def write_report(traces: Iterable[str | os.PathLike[str]], out: str | os.PathLike[str],
                 start_ns: int | None = None, end_ns: int | None = None, top: int = 10) -> Path:
    """Render the report and write it to `out` atomically (a temp file renamed into place)."""
    text = render_report(traces, start_ns=start_ns, end_ns=end_ns, top=top)
    path = Path(out)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(f"{path}: cannot write the report ({err.strerror or err})") from err
    finally:
        tmp.unlink(missing_ok=True)
    return path
