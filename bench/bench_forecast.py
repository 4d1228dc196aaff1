"""Benchmark of the energy forecaster: accuracy per model and horizon on simulated fleets, interval
coverage, and the time to fit and forecast 1,000 series.

Run: .venv/bin/python -m bench.bench_forecast            (3 seeds × 3 workload mixes, 2×8 GPUs × 7 days, and
                                                          the 1,000-series timing: several minutes)
     .venv/bin/python -m bench.bench_forecast --small    (one fleet, 200 series timing: about a minute)

Accuracy: rolling-origin backtest (hourly origins over the last 2 days with a full horizon after them).
MASE = MAE / in-sample MAE of the daily seasonal-naive forecast; ratios are against seasonal naive measured
in the same run. Coverage of the published (chosen, reconciled) intervals is measured online: at each
origin only residuals whose target time had passed calibrate the interval; horizons whose backtest spans
too few horizon windows (24 h) are calibrated from the seasonal-naive proxy's residuals over all history.
Workload mixes re-weight the simulator's job classes (collector/sim/workload.JOB_CLASSES) for the run.
The 1,000-series timing tiles a simulated fleet's GPUs with time shifts and noise (a 1,000-GPU simulation
alone would take minutes) and times backtest + selection + calibration + refit + forecast.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from collector.series_view import TraceView
from collector.sim import workload
from collector.sim.offline import generate_trace
from predictor.energy.forecast import DEFAULT_MODELS, Settings, fit_plan, horizon_label, make_forecast
from predictor.energy.series import PowerPanel, SeriesId, aggregate, load_power

MIXES: dict[str, dict[int, float]] = {
    "default": {},
    "pretrain-heavy": {workload.PRETRAIN: 0.45, workload.EVAL: 0.25, workload.INFER: 0.1, workload.DEBUG: 0.2},
    "inference-heavy": {workload.PRETRAIN: 0.05, workload.EVAL: 0.2, workload.INFER: 0.55, workload.DEBUG: 0.2},
}


def simulate(out: Path, nodes: int, gpus: int, days: float, seed: int, mix: str) -> PowerPanel:
    """A simulated fleet's power panel under a workload mix."""
    saved = dict(workload.JOB_CLASSES)
    try:
        for k, w in MIXES[mix].items():
            workload.JOB_CLASSES[k] = dataclasses.replace(saved[k], weight=w)
        generate_trace(out, nodes, gpus, days, seed, interval_s=300, fault_rate=0.0)
    finally:
        workload.JOB_CLASSES.clear()
        workload.JOB_CLASSES.update(saved)
    view = TraceView(out)
    span = view.span()
    assert span is not None
    return load_power(view, span[0], span[1], 300.0)


def accuracy(panels: list[tuple[str, PowerPanel]], settings: Settings) -> None:
    """Per model and horizon over all fleets; then the chosen model and the published intervals."""
    rows: dict[tuple[str, str, float], list[list[float]]] = defaultdict(list)
    chosen_1h: list[float] = []
    cover: dict[tuple[str, float], list[tuple[float, float]]] = defaultdict(list)
    pools: dict[tuple[str, float], set[str]] = defaultdict(set)
    windows: dict[tuple[str, float], list[int]] = defaultdict(list)
    fit_s = []
    for name, panel in panels:
        t0 = time.perf_counter()
        plan = fit_plan(panel, settings)
        fit_s.append(time.perf_counter() - t0)
        scopes = {s.name: s.scope for s in panel.ids}
        for s in plan.scores:
            rows[(scopes[s.series], s.model, s.horizon_s)].append([s.mae, s.mape, s.smape, s.mase, s.coverage_80,
                                                                   s.coverage_95])
            if s.chosen and s.horizon_s == 3600.0 and s.series == "fleet":
                chosen_1h.append(s.mase)
        for (scope, k), c in plan.coverage.items():
            cover[(scope, settings.horizons_s[k])].append(c)
        for (scope, kind, k), (src, _, _, w) in plan.calibration.items():
            if kind == 0:
                pools[(scope, settings.horizons_s[k])].add(src)
                windows[(scope, settings.horizons_s[k])].append(w)
        print(f"  {name}: fit {fit_s[-1]:.1f} s; fleet 1h chosen "
              f"{[s.model for s in plan.scores if s.chosen and s.series == 'fleet' and s.horizon_s == 3600.0]}")
    print(f"\n{'level':<6} {'model':<15} {'horizon':>7} {'MAE W':>9} {'MAPE':>6} {'sMAPE':>6} {'MASE':>6} "
          f"{'vs SN':>6} {'cov80':>6} {'cov95':>6}")
    for (scope, model, h), vals in sorted(rows.items(), key=lambda kv: ("gpu node fleet".index(kv[0][0]),
                                                                        kv[0][1], kv[0][2])):
        m = np.nanmean(np.array(vals, dtype=float), axis=0)
        sn = np.nanmean(np.array(rows[(scope, "seasonal_naive", h)], dtype=float), axis=0)
        print(f"{scope:<6} {model:<15} {horizon_label(h):>7} {m[0]:9.1f} {m[1]:6.3f} {m[2]:6.3f} {m[3]:6.3f} "
              f"{m[3] / sn[3]:6.2f} {m[4]:6.2f} {m[5]:6.2f}")
    print("\nPublished (chosen, reconciled) intervals, online coverage (target 0.75–0.85 and 0.92–0.97):")
    for (scope, h), cs in sorted(cover.items(), key=lambda kv: ("gpu node fleet".index(kv[0][0]), kv[0][1])):
        c = np.nanmean(np.array(cs, dtype=float), axis=0)
        print(f"  {scope:<6} {horizon_label(h):>4}: 80 % → {c[0]:.2f}   95 % → {c[1]:.2f}   "
              f"(pool: {'/'.join(sorted(pools[(scope, h)]))}, ≥ {min(windows[(scope, h)], default=0)} "
              f"horizon windows)")
    print(f"\nChosen model, fleet, 1 h: MASE mean {np.mean(chosen_1h):.3f}, max {np.max(chosen_1h):.3f} "
          f"(target <= 0.7) over {len(chosen_1h)} fleets")


def tiled(panel: PowerPanel, n_series: int, seed: int = 0) -> PowerPanel:
    """About n_series series (GPUs + nodes of 8 + fleet) from a panel's GPUs, shifted in time with noise."""
    rng = np.random.default_rng(seed)
    g = panel.values[panel.rows("gpu")]
    n_gpu = int(n_series * 8 / 9)
    rows, ids = [], []
    for i in range(n_gpu):
        src = g[i % g.shape[0]]
        shift = int(rng.integers(0, src.size))
        rows.append(np.roll(src, shift) * rng.uniform(0.9, 1.1) + rng.normal(0, 5, src.size))
        ids.append(SeriesId("gpu", f"node-{i // 8}", str(i % 8)))
    all_ids, vals = aggregate(ids, np.array(rows))
    return PowerPanel(panel.ts_ns, panel.step_s, all_ids, vals)


def timing(panel: PowerPanel, n_series: int, settings: Settings) -> None:
    """Fit + forecast of n_series series, against the baselines alone in the same run."""
    big = tiled(panel, n_series)
    print(f"\nTiming on {len(big.ids)} series × {big.ts_ns.size} points (2 cores; GBM on 1 OpenMP thread):")
    base_s = None
    for label, s in (("baselines only", dataclasses.replace(settings, models=("last_value", "seasonal_naive"))),
                     ("default models", settings)):
        t0 = time.perf_counter()
        plan = fit_plan(big, s)
        fc = make_forecast(plan, big)
        el = time.perf_counter() - t0
        base_s = base_s or el
        assert np.isfinite(fc.power[big.rows("fleet")[0]]).all()
        print(f"  {label:<15} backtest+select+refit+forecast: {el:6.1f} s  (×{el / base_s:.1f} the baselines; "
              f"target < 60 s)")


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="one fleet and 200 series for the timing")
    ap.add_argument("--series", type=int, default=None, help="series in the timing run (default 1000)")
    args = ap.parse_args()
    settings = Settings(models=DEFAULT_MODELS)
    fleets = [(1, "default")] if args.small else [(s, m) for s in (1, 2, 3) for m in MIXES]
    days = 5 if args.small else 7
    with tempfile.TemporaryDirectory() as tmp:
        panels = []
        t0 = time.perf_counter()
        for seed, mix in fleets:
            panels.append((f"seed {seed} {mix}", simulate(Path(tmp) / f"{seed}-{mix}", 2, 8, days, seed, mix)))
        print(f"simulated {len(panels)} fleets of 2×8 GPUs × {days} days in {time.perf_counter() - t0:.0f} s")
        accuracy(panels, settings)
        timing(panels[0][1], args.series or (200 if args.small else 1000), settings)


if __name__ == "__main__":
    main()
