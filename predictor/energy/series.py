"""Power series for forecasting: GPU power from a series view on a regular grid, summed GPU → node → fleet.

Gaps stay explicit: a grid point without a fresh sample is NaN (the view's lookback rule), nothing is
interpolated across an outage. A node's value is the sum of the GPUs that reported at that point (NaN when
none did), the fleet's the sum of the nodes that did; so the levels add up exactly wherever they exist.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from collector.series_view import NS, SeriesKey, view_entities

POWER_METRIC = "fleetwatch_gpu_power_watts"
DAY_S = 86400.0


class SeriesInputError(ValueError):
    """The input cannot be forecast at all (no samples, a bad grid); the message says why."""


@dataclass(frozen=True, slots=True)
class SeriesId:
    """One forecast series: scope fleet|node|gpu with its node and GPU index ("" where not applicable)."""

    scope: str
    node: str = ""
    gpu: str = ""

    @property
    def name(self) -> str:
        """'fleet', 'node-0' or 'node-0/3'."""
        if self.scope == "fleet":
            return "fleet"
        return self.node if self.scope == "node" else f"{self.node}/{self.gpu}"


FLEET = SeriesId("fleet")


@dataclass(slots=True)
class PowerPanel:
    """Power on one regular grid: values[i] is series ids[i] (GPUs first, then nodes, then the fleet)."""

    ts_ns: np.ndarray                   # int64 (T,)
    step_s: float
    ids: list[SeriesId]
    values: np.ndarray                  # float64 (n, T), NaN = no fresh sample
    uuids: dict[SeriesId, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def index(self, sid: SeriesId) -> int:
        """Row of one series; KeyError when absent."""
        try:
            return self.ids.index(sid)
        except ValueError:
            raise KeyError(sid.name) from None

    def rows(self, scope: str) -> list[int]:
        """Rows of one scope."""
        return [i for i, s in enumerate(self.ids) if s.scope == scope]

    def structure(self) -> np.ndarray:
        """Summing matrix S (n × n_gpu): every series as a sum of GPU series (for reconciliation)."""
        gpus = self.rows("gpu")
        gpu_node = np.array([self.ids[g].node for g in gpus], dtype=object)
        s = np.zeros((len(self.ids), len(gpus)))
        for i, sid in enumerate(self.ids):
            if sid.scope == "fleet":
                s[i] = 1.0
            elif sid.scope == "node":
                s[i] = gpu_node == sid.node
        s[gpus, np.arange(len(gpus))] = 1.0
        return s


def align_grid(start_ns: int, end_ns: int, step_s: float) -> tuple[int, int]:
    """Start and end snapped down to multiples of the step (so calendar features line up run to run)."""
    step_ns = round(step_s * NS)
    return start_ns - start_ns % step_ns, end_ns - end_ns % step_ns


def aggregate(gpu_ids: list[SeriesId], gpu_values: np.ndarray) -> tuple[list[SeriesId], np.ndarray]:
    """GPU rows plus node rows (sum of the GPUs that reported) and the fleet row (sum of the nodes)."""
    nodes = sorted({s.node for s in gpu_ids})
    rows = [gpu_values]
    node_vals = np.full((len(nodes), gpu_values.shape[1]), np.nan)
    for k, n in enumerate(nodes):
        sel = gpu_values[[i for i, s in enumerate(gpu_ids) if s.node == n]]
        node_vals[k] = _sum_present(sel)
    rows.append(node_vals)
    rows.append(_sum_present(node_vals)[None, :] if len(nodes) else np.full((1, gpu_values.shape[1]), np.nan))
    ids = [*gpu_ids, *(SeriesId("node", n) for n in nodes), FLEET]
    return ids, np.vstack(rows)


def _sum_present(m: np.ndarray) -> np.ndarray:
    """Column sums over the rows present; NaN where no row has a value."""
    if m.shape[0] == 0:
        return np.full(m.shape[1], np.nan)
    present = ~np.isnan(m)
    out = np.where(present, m, 0.0).sum(axis=0)
    out[~present.any(axis=0)] = np.nan
    return out


def load_power(view: Any, start_ns: int, end_ns: int, step_s: float = 300.0, *, stale_s: float | None = None,
               nodes: list[str] | None = None) -> PowerPanel:
    """GPU power from `view` on the aligned grid [start, end], with node and fleet sums.

    stale_s defaults to 2.5 steps: a sample is used for the next two grid points at most, so a collector
    slower than the grid still fills it, and a longer outage stays NaN. SeriesInputError when the view has
    no GPU power in the window.
    """
    if not step_s > 0 or not math.isfinite(step_s):
        raise SeriesInputError(f"step must be a positive number of seconds, got {step_s}")
    if end_ns <= start_ns:
        raise SeriesInputError("the time window is empty (end is not after start)")
    start_ns, end_ns = align_grid(start_ns, end_ns, step_s)
    frame = view.range(POWER_METRIC, start_ns, end_ns, step_s, nodes=nodes,
                       stale_s=2.5 * step_s if stale_s is None else stale_s)
    if not frame.keys:
        raise SeriesInputError(f"no {POWER_METRIC} samples between {_iso(start_ns)} and {_iso(end_ns)}")
    ents = view_entities(view)
    ids, uuids = [], {}
    for k in frame.keys:
        sid = SeriesId("gpu", k.node, _gpu_index(ents, k))
        ids.append(sid)
        uuids[sid] = k.entity
    values = np.where(np.isfinite(frame.values), frame.values, np.nan)
    # Before the first sample there is no history, only an empty grid: it would read as a long outage.
    seen = np.isfinite(values).any(axis=0)
    first = int(np.argmax(seen)) if seen.any() else values.shape[1]
    if first >= values.shape[1]:
        raise SeriesInputError(f"{POWER_METRIC}: every sample between {_iso(start_ns)} and {_iso(end_ns)} is "
                               "missing or not a number")
    values, ts_grid = values[:, first:], frame.ts_ns[first:]
    notes = []
    neg = values < 0
    if neg.any():
        # A negative power reading is a broken sensor, not a value to learn from.
        notes.append(f"{int(neg.sum())} negative power readings dropped")
        values = np.where(neg, np.nan, values)
    order = sorted(range(len(ids)), key=lambda i: (ids[i].node, _num(ids[i].gpu)))
    gpu_ids = [ids[i] for i in order]
    all_ids, all_vals = aggregate(gpu_ids, values[order])
    return PowerPanel(ts_grid, step_s, all_ids, all_vals, uuids, notes)


def _gpu_index(ents: dict[SeriesKey, Any], key: SeriesKey) -> str:
    e = ents.get(key)
    if e is not None and e.kind == "gpu":
        return str(e.labels[1])
    return key.entity            # unknown identity: the UUID stands in for the index


def _num(s: str) -> tuple[int, str]:
    return (int(s), "") if s.isdigit() else (1 << 30, s)


def regular(ts_ns: np.ndarray, values: np.ndarray, step_s: float, *,
            stale_s: float | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Raw samples (any order, duplicates, NaNs) → (grid, values, notes) with the view's lookback rule.

    Samples out of time order (a clock that went backwards) are sorted; for duplicate timestamps the last
    one written wins. The notes say what was repaired, so a caller can flag it instead of hiding it.
    """
    ts = np.asarray(ts_ns, dtype=np.int64)
    v = np.asarray(values, dtype=np.float64)
    if ts.shape != v.shape or ts.ndim != 1:
        raise SeriesInputError(f"timestamps and values must be 1-d and the same length, got {ts.shape}, {v.shape}")
    notes = []
    back = int(np.sum(np.diff(ts) < 0)) if ts.size > 1 else 0
    if back:
        notes.append(f"clock went backwards {back} time(s): samples re-sorted by time")
    order = np.argsort(ts, kind="stable")
    ts, v = ts[order], v[order]
    keep = np.ones(ts.size, dtype=bool)
    keep[:-1] = ts[1:] != ts[:-1]              # the last sample of a duplicate timestamp wins
    if (~keep).any():
        notes.append(f"{int((~keep).sum())} duplicate timestamps dropped")
    ts, v = ts[keep], v[keep]
    bad = ~np.isfinite(v)
    if bad.any():
        notes.append(f"{int(bad.sum())} non-finite values dropped")
        ts, v = ts[~bad], v[~bad]
    if ts.size == 0:
        raise SeriesInputError("no finite samples")
    step_ns = round(step_s * NS)
    start = int(ts[0]) - int(ts[0]) % step_ns
    points = np.arange(start, int(ts[-1]) + 1, step_ns, dtype=np.int64)
    stale_ns = int((2.5 * step_s if stale_s is None else stale_s) * NS)
    idx = np.searchsorted(ts, points, side="right") - 1
    out = np.full(points.size, np.nan)
    ok = idx >= 0
    fresh = np.zeros(points.size, dtype=bool)
    fresh[ok] = points[ok] - ts[idx[ok]] <= stale_ns
    out[fresh] = v[idx[fresh]]
    return points, out, notes


def _iso(ns: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ns / NS, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
