"""Per-GPU failure-precursor features over sliding windows (1 h, 6 h, 24 h; error counters also 72 h).

Every feature is computed for every GPU at every point of a regular grid with NumPy over the whole
(GPUs × time) array at once: counters become windowed increases (rates per hour) by differencing their
forward-filled values k samples apart, gauges become windowed means, deviations and excursion
fractions through cumulative sums. Nothing loops per sample; loops run over metrics, windows and nodes.

Only observable inputs are used (metrics and the events table). The simulator's ground truth is never
read here: evaluation alone reads it (predictor/failure/evaluate.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from collector import xid as xidcat
from collector.series_view import SeriesFrame, SeriesKey, SeriesView
from predictor.failure.labels import FAILURE_XIDS

HOUR_S = 3600.0
WINDOWS_H: tuple[int, ...] = (1, 6, 24)
# Error counters are also read over 3 days: a GPU whose errors have run for days stays at risk between
# bursts, so its alert does not clear days before it fails (an alert that clears more than the horizon
# before the failure is a false alarm, and the GPU then alerts again).
COUNTER_WINDOWS_H: tuple[int, ...] = (*WINDOWS_H, 72)
LOOKBACK_S = max(COUNTER_WINDOWS_H) * HOUR_S        # history a feature at t needs
FEATURE_SET = "fleetwatch-failure-features/2"   # bump when a feature's definition changes

# Counters whose windowed rates (per hour) are features: key -> (metric, words).
COUNTERS: dict[str, tuple[str, str]] = {
    "ecc_sbe": ("fleetwatch_gpu_ecc_sbe_aggregate_total", "correctable ECC errors"),
    "remap_corr": ("fleetwatch_gpu_remapped_rows_correctable_total", "rows remapped (correctable)"),
    "remap_unc": ("fleetwatch_gpu_remapped_rows_uncorrectable_total", "rows remapped (uncorrectable)"),
    "retired_sbe": ("fleetwatch_gpu_retired_pages_sbe_total", "pages retired (single-bit)"),
    "pcie_replay": ("fleetwatch_gpu_pcie_replays_total", "PCIe replays"),
    "nvlink_crc": ("fleetwatch_gpu_nvlink_crc_errors_total", "NVLink CRC errors"),
    "nvlink_replay": ("fleetwatch_gpu_nvlink_replay_errors_total", "NVLink replays"),
    "nvlink_recovery": ("fleetwatch_gpu_nvlink_recovery_errors_total", "NVLink recoveries"),
}
# Counters whose acceleration (6 h rate minus 24 h rate) is a feature too: a rising error rate.
ACCELERATING: tuple[str, ...] = ("ecc_sbe", "pcie_replay", "nvlink_crc", "nvlink_replay")
# Clock-event (throttle) reason bits (NVML nvmlClocksEventReasons*): key -> (bit, words).
THROTTLE_BITS: dict[str, tuple[int, str]] = {
    "hw_slowdown": (0x8, "hardware slowdown"),
    "sw_thermal": (0x20, "software thermal slowdown"),
    "hw_thermal": (0x40, "hardware thermal slowdown"),
    "power_brake": (0x80, "hardware power brake"),
}
TEMP = "fleetwatch_gpu_temperature_celsius"
MEM_TEMP = "fleetwatch_gpu_memory_temperature_celsius"
POWER = "fleetwatch_gpu_power_watts"
UTIL = "fleetwatch_gpu_utilization_ratio"
REASONS = "fleetwatch_gpu_clock_event_reasons"
PENDING = "fleetwatch_gpu_remapped_rows_pending"
EXCURSION_C = 8.0            # a GPU this much hotter than its node's median is on an excursion
XID_CLASSES: tuple[str, ...] = ("info", "warning", "critical")
# Every metric the features read (TraceView.prefetch reads them in one scan).
METRICS_READ: tuple[str, ...] = (*(m for m, _ in COUNTERS.values()), PENDING, TEMP, MEM_TEMP, REASONS, POWER, UTIL)


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """One feature: its column name, how to say it in words, and its unit for explanations."""

    name: str
    words: str
    kind: str          # "rate" (per hour), "count" (in a window), "level", "fraction", "delta"
    window_h: int = 0
    worse_when_higher: bool = True    # a monotonic constraint of the model: more never lowers the risk


def _defs() -> list[FeatureDef]:
    out: list[FeatureDef] = []
    for key, (_, words) in COUNTERS.items():
        out.extend(FeatureDef(f"{key}_rate_{w}h", words, "rate", w) for w in COUNTER_WINDOWS_H)
        if key in ACCELERATING:
            out.append(FeatureDef(f"{key}_accel", f"rise in {words}", "delta", 6))
    out.append(FeatureDef("remap_pending", "row remapping pending", "level"))
    out.append(FeatureDef("temp_rel_1h", "temperature above node peers", "level", 1))
    out.append(FeatureDef("temp_rel_6h", "temperature above node peers", "level", 6))
    out.append(FeatureDef("temp_std_6h", "temperature variability", "level", 6, worse_when_higher=False))
    out.append(FeatureDef("temp_excursions_24h", "time hot versus node peers", "fraction", 24))
    out.append(FeatureDef("memtemp_rel_1h", "memory temperature above node peers", "level", 1))
    out.extend(FeatureDef(f"throttle_{k}_6h", f"time in {w}", "fraction", 6) for k, (_, w) in THROTTLE_BITS.items())
    out.append(FeatureDef("power_std_6h", "power variability", "level", 6, worse_when_higher=False))
    out.append(FeatureDef("power_resid_6h", "power above fleet at same utilisation", "level", 6,
                          worse_when_higher=False))
    out.extend(FeatureDef(f"xid_{c}_24h", f"{c} XIDs", "count", 24) for c in XID_CLASSES)
    return out


FEATURES: tuple[FeatureDef, ...] = tuple(_defs())
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
BY_FEATURE: dict[str, FeatureDef] = {f.name: f for f in FEATURES}
# HistGradientBoosting's monotonic_cst: error rates, throttling, heat relative to peers and XIDs only
# ever raise the risk; variability and power residuals may go either way.
MONOTONIC: tuple[int, ...] = tuple(1 if f.worse_when_higher else 0 for f in FEATURES)


@dataclass(slots=True)
class FeatureFrame:
    """Features of every GPU on a grid: X[i, j, f] is GPU keys[i] at ts_ns[j], feature names[f]."""

    keys: list[SeriesKey]
    ts_ns: np.ndarray          # int64 (T,)
    X: np.ndarray              # float32 (G, T, F)
    names: tuple[str, ...] = FEATURE_NAMES

    def concat_gpus(self, other: FeatureFrame) -> FeatureFrame:
        """This frame and `other` (same grid, other GPUs) as one frame."""
        if not np.array_equal(self.ts_ns, other.ts_ns):
            raise ValueError("feature frames on different grids cannot be joined")
        return FeatureFrame(self.keys + other.keys, self.ts_ns, np.concatenate([self.X, other.X]), self.names)


# --- vectorised window helpers ----------------------------------------------------------------------


def ffill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs along time (axis 1); leading NaNs take the first valid value (0 if none)."""
    valid = ~np.isnan(a)
    idx = np.where(valid, np.arange(a.shape[1])[None, :], 0)
    np.maximum.accumulate(idx, axis=1, out=idx)
    out = np.take_along_axis(a, idx, axis=1)
    first = np.argmax(valid, axis=1)
    has = valid.any(axis=1)
    lead = np.arange(a.shape[1])[None, :] < first[:, None]
    firstval = np.where(has, a[np.arange(a.shape[0]), first], 0.0)
    out = np.where(lead | np.isnan(out), firstval[:, None], out)
    return out


def lag_diff(a: np.ndarray, k: int) -> np.ndarray:
    """a[:, t] - a[:, max(t - k, 0)]: the increase over the last k samples."""
    k = max(1, k)
    out = np.zeros_like(a)
    if k < a.shape[1]:
        out[:, k:] = a[:, k:] - a[:, :-k]
    out[:, :k] = a[:, :k] - a[:, :1]
    return out


def rolling_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum over the last k samples (fewer at the start), NaNs as 0."""
    c = np.cumsum(np.nan_to_num(a), axis=1)
    return lag_diff(np.concatenate([np.zeros((a.shape[0], 1)), c], axis=1), k)[:, 1:]


def rolling_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Mean of the non-NaN samples among the last k (NaN where there are none)."""
    n = rolling_sum((~np.isnan(a)).astype(np.float64), k)
    s = rolling_sum(a, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def rolling_std(a: np.ndarray, k: int) -> np.ndarray:
    """Standard deviation of the non-NaN samples among the last k (NaN where there are none)."""
    m = rolling_mean(a, k)
    m2 = rolling_mean(a * a, k)
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


def counter_increase(frame: np.ndarray, k: int) -> np.ndarray:
    """Windowed increase of a counter; a counter reset (negative step) counts as 0, not as a drop."""
    f = ffill(frame)
    step = np.diff(f, axis=1, prepend=f[:, :1])
    return rolling_sum(np.maximum(step, 0.0), k)


def node_relative(values: np.ndarray, nodes: Sequence[str]) -> np.ndarray:
    """values minus the median of the same node's GPUs at each time (peers on the same node)."""
    out = np.full_like(values, np.nan)
    arr = np.asarray(nodes)
    for n in np.unique(arr):
        rows = np.nonzero(arr == n)[0]
        block = values[rows]
        with np.errstate(all="ignore"):
            if np.isnan(block).all():
                continue
            med = np.nanmedian(np.where(np.isnan(block).all(axis=0, keepdims=True), 0.0, block), axis=0)
        out[rows] = block - med[None, :]
    return out


# --- building the features ----------------------------------------------------------------------------


def _aligned(frame: SeriesFrame, keys: list[SeriesKey]) -> np.ndarray:
    """The frame's rows for `keys` in that order (NaN rows for keys the metric does not have)."""
    out = np.full((len(keys), len(frame.ts_ns)), np.nan)
    index = {k: i for i, k in enumerate(frame.keys)}
    have = [(i, index[k]) for i, k in enumerate(keys) if k in index]
    if have:
        dst, src = zip(*have, strict=True)
        out[list(dst)] = frame.values[list(src)]
    return out


def gpu_keys(view: SeriesView, start_ns: int, end_ns: int, step_s: float,
             nodes: Sequence[str] | None = None) -> list[SeriesKey]:
    """The GPUs the view knows (entities of kind gpu, else any series of the temperature/lost metrics)."""
    ents = [k for k, e in view.entities().items() if e.kind == "gpu" and (nodes is None or k.node in nodes)]
    if ents:
        return sorted(ents)
    seen: set[SeriesKey] = set()
    for m in (TEMP, "fleetwatch_gpu_lost"):
        seen.update(view.range(m, start_ns, end_ns, step_s, nodes=nodes).keys)
    return sorted(seen)


def xid_counts(view: SeriesView, keys: list[SeriesKey], points: np.ndarray, window_s: float) -> dict[str, np.ndarray]:
    """XIDs by severity class (failure codes excluded: they are the label) in the window ending at each point."""
    out = {c: np.zeros((len(keys), len(points))) for c in XID_CLASSES}
    if len(points) == 0:
        return out
    row = {k: i for i, k in enumerate(keys)}
    evs = view.events(int(points[0] - window_s * 1e9), int(points[-1]) + 1, kinds=["xid"])
    cls_of = {c: i for i, c in enumerate(XID_CLASSES)}
    r, c, t = [], [], []
    for e in evs:
        i = row.get(SeriesKey(e.node, e.entity))
        if i is None or e.code in FAILURE_XIDS:
            continue
        r.append(i)
        c.append(cls_of[xidcat.severity(e.code)])
        t.append(e.ts_ns)
    if not r:
        return out
    ra, ca, ta = np.asarray(r), np.asarray(c), np.asarray(t, dtype=np.int64)
    # events at or before each point, minus those before the window: two searchsorted per (GPU, class)
    w_ns = int(window_s * 1e9)
    for ci, cname in enumerate(XID_CLASSES):
        sel = ca == ci
        for i in np.unique(ra[sel]):
            ts = np.sort(ta[sel & (ra == i)])
            out[cname][i] = (np.searchsorted(ts, points, side="right")
                             - np.searchsorted(ts, points - w_ns, side="right"))
    return out


def compute_features(view: SeriesView, start_ns: int, end_ns: int, step_s: float = 600.0, *,
                     every: int = 1, nodes: Sequence[str] | None = None,
                     keys: list[SeriesKey] | None = None, stale_s: float | None = None) -> FeatureFrame:
    """Features of every GPU on the grid [start, end] every step_s*every seconds.

    Windows reach LOOKBACK_S before `start`, so the view is read from there. `every` keeps one grid
    point in `every` for the output (features still use every sample).
    """
    stale = stale_s if stale_s is not None else max(300.0, 2.5 * step_s)
    lo = start_ns - int(LOOKBACK_S * 1e9)
    if keys is None:
        keys = gpu_keys(view, lo, end_ns, step_s, nodes)
    node_names = sorted({k.node for k in keys})
    read_nodes = node_names if keys else nodes

    def get(metric: str) -> np.ndarray:
        f = view.range(metric, lo, end_ns, step_s, nodes=read_nodes, stale_s=stale)
        return _aligned(f, keys)

    from collector.series_view import grid

    points = grid(lo, end_ns, step_s)
    n_t = len(points)
    keep = np.nonzero(points >= start_ns)[0][::max(1, every)]
    cols: dict[str, np.ndarray] = {}
    win = {w: max(1, round(w * HOUR_S / step_s)) for w in COUNTER_WINDOWS_H}

    for key, (metric, _) in COUNTERS.items():
        raw = get(metric)
        rates = {}
        for w in COUNTER_WINDOWS_H:
            rates[w] = counter_increase(raw, win[w]) / w
            cols[f"{key}_rate_{w}h"] = rates[w]
        if key in ACCELERATING:
            cols[f"{key}_accel"] = rates[6] - rates[24]
    cols["remap_pending"] = np.nan_to_num(ffill(get(PENDING)))
    node_of = [k.node for k in keys]
    temp = get(TEMP)
    rel = node_relative(temp, node_of)
    cols["temp_rel_1h"] = rolling_mean(rel, win[1])
    cols["temp_rel_6h"] = rolling_mean(rel, win[6])
    cols["temp_std_6h"] = rolling_std(temp, win[6])
    hot = np.where(np.isnan(rel), np.nan, (rel > EXCURSION_C).astype(np.float64))
    cols["temp_excursions_24h"] = rolling_mean(hot, win[24])
    cols["memtemp_rel_1h"] = rolling_mean(node_relative(get(MEM_TEMP), node_of), win[1])
    reasons = get(REASONS)
    ok = ~np.isnan(reasons)
    bits = np.where(ok, reasons, 0).astype(np.int64)
    for k, (bit, _) in THROTTLE_BITS.items():
        flag = np.where(ok, (bits & bit) != 0, np.nan).astype(np.float64)
        cols[f"throttle_{k}_6h"] = rolling_mean(flag, win[6])
    power = get(POWER)
    util = get(UTIL)
    cols["power_std_6h"] = rolling_std(power, win[6])
    cols["power_resid_6h"] = rolling_mean(power - _power_fit(power, util), win[6])
    for cname, counts in xid_counts(view, keys, points, 24 * HOUR_S).items():
        cols[f"xid_{cname}_24h"] = counts
    X = np.empty((len(keys), len(keep), len(FEATURE_NAMES)), dtype=np.float32)
    for j, name in enumerate(FEATURE_NAMES):
        X[:, :, j] = cols[name][:, keep] if n_t else 0.0
    return FeatureFrame(keys, points[keep], X)


def _power_fit(power: np.ndarray, util: np.ndarray) -> np.ndarray:
    """The fleet's power at each sample's utilisation: at each time, least squares power = a + b*util over the
    GPUs (cross-sectional, so that a feature never depends on later samples)."""
    ok = ~(np.isnan(power) | np.isnan(util))
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        u = np.where(ok, util, 0.0)
        p = np.where(ok, power, 0.0)
        mu_u = u.sum(axis=0) / np.maximum(n, 1)
        mu_p = p.sum(axis=0) / np.maximum(n, 1)
        du = np.where(ok, util - mu_u, 0.0)
        var = (du * du).sum(axis=0) / np.maximum(n, 1)
        cov = (du * np.where(ok, power - mu_p, 0.0)).sum(axis=0) / np.maximum(n, 1)
        b = np.where(var > 1e-6, cov / np.where(var > 1e-6, var, 1.0), 0.0)   # one utilisation level: no slope
    fit = mu_p[None, :] + b[None, :] * (util - mu_u[None, :])
    return np.where(ok & (n >= 2)[None, :], fit, np.nan)
