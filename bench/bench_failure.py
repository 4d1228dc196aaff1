"""GPU failure prediction on simulated fleets: the model against the dcgm-style rule baseline.

    python -m bench.bench_failure            # train 1,000 GPUs x 30 d (rate 10); test 2,000 GPUs x 30 d
                                             # at --fault-rate 10 and at 1, seeds not used in training
    python -m bench.bench_failure --small    # 128 GPUs x 6 d fleets: a smoke run

Traces are generated once (collector.sim.offline.generate_trace, 15-minute samples) and cached under
--cache (default /tmp/fleetwatch-bench-failure). The baseline, measured on the same test fleets in the
same run, alerts on each double-bit ECC error, critical XID or lost GPU as it happens (lead time zero by
construction). Targets (issue 5): at rate 10 precision >= 0.9 and recall >= 0.8 over failures with
precursors, median lead time >= 6 h; at rate 1 <= 0.1 false alarms per 1,000 GPU-days. The published
reference (Liu et al., "Prediction of GPU Failures Under Deep Learning Workloads", 2022) reports 84 %
precision on a real production cluster's logs: different data, so the comparison is indicative only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from collector.sim.offline import generate_trace
from predictor.failure.modelfile import load, save
from predictor.failure.pipeline import evaluate, train

INTERVAL_S = 900.0


def fleets(small: bool) -> dict[str, tuple[int, float, float, int]]:
    """name -> (nodes of 8 GPUs, days, fault rate, seed): one training fleet, two test fleets."""
    if small:
        return {"train": (16, 6.0, 10.0, 101), "test-rate10": (16, 6.0, 10.0, 202), "test-rate1": (16, 6.0, 1.0, 303)}
    return {"train": (125, 30.0, 10.0, 101), "test-rate10": (250, 30.0, 10.0, 202), "test-rate1": (250, 30.0, 1.0, 303)}


def ensure(cache: Path, name: str, nodes: int, days: float, rate: float, seed: int) -> Path:
    """The cached trace, generated when missing (a trace is complete once its ground truth is written)."""
    tag = "train" if name == "train" else "test"
    out = cache / f"{tag}-{nodes}x8-{days:g}d-r{rate:g}-s{seed}-{INTERVAL_S:g}s"
    if not (out / "ground_truth" / "ground_truth.parquet").is_file():
        t0 = time.perf_counter()
        generate_trace(out, nodes, 8, days, seed=seed, interval_s=INTERVAL_S, fault_rate=rate)
        print(f"generated {out.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


ROWS = (("precision", ".3f"), ("recall", ".3f"), ("recall_with_precursors", ".3f"), ("pr_auc", ".3f"),
        ("median_lead_time_h", ".1f"), ("p10_lead_time_h", ".1f"), ("false_alarms_per_1000_gpu_days", ".3f"),
        ("alerts", "d"), ("failures", "d"), ("gpus", "d"), ("gpu_days", ".0f"))


def table(results: dict[str, dict[str, Any]]) -> str:
    """Model and baseline side by side for each test fleet."""
    names = list(results)
    head = f"{'':<32}" + "".join(f"{n + ' model':>20}{n + ' rule':>20}" for n in names)
    lines = [head]
    for key, fmt in ROWS:
        cells = "".join(f"{_f(results[n].get(key), fmt):>20}{_f(results[n]['baseline'].get(key), fmt):>20}"
                        for n in names)
        lines.append(f"{key:<32}{cells}")
    return "\n".join(lines)


def targets(results: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's targets, each with its figure and whether it is met."""
    out = []
    r10 = results.get("test-rate10")
    if r10:
        for key, op, want in (("precision", ">=", 0.9), ("recall_with_precursors", ">=", 0.8),
                              ("median_lead_time_h", ">=", 6.0)):
            v = r10.get(key)
            ok = v is not None and v >= want
            out.append(f"rate 10: {key} {_f(v, '.3f')} {op} {want}: {'met' if ok else 'NOT met'}")
        p = r10.get("precision")
        out.append(f"rate 10: precision {_f(p, '.3f')} vs 0.84 published by Liu et al. 2022 (other data: "
                   f"a real cluster's logs, not this simulator)")
    r1 = results.get("test-rate1")
    if r1:
        v = r1["false_alarms_per_1000_gpu_days"]
        out.append(f"rate 1: false alarms / 1,000 GPU-days {v:.3f} <= 0.1: {'met' if v <= 0.1 else 'NOT met'}")
    return out


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="small fleets (a smoke run)")
    ap.add_argument("--cache", default="/tmp/fleetwatch-bench-failure", help="where generated traces are kept")
    ap.add_argument("--retrain", action="store_true", help="train even when a cached model exists")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    traces = {n: ensure(cache, n, *spec) for n, spec in fleets(args.small).items()}
    model_path = cache / f"model-{'small' if args.small else 'full'}.joblib"
    t0 = time.perf_counter()
    if args.retrain or not model_path.is_file():
        model = train([traces["train"]], step_s=INTERVAL_S,
                      progress=lambda m: print(f"[{time.perf_counter() - t0:5.0f} s] {m}", flush=True))
        save(model, model_path)
        print(f"trained in {time.perf_counter() - t0:.0f} s: threshold {model.threshold:.4f}, "
              f"{model.training['samples']} samples ({model.training['positives']} positive)", flush=True)
    model = load(model_path)
    results: dict[str, dict[str, Any]] = {}
    for name in ("test-rate10", "test-rate1"):
        t1 = time.perf_counter()
        results[name] = evaluate(model, [traces[name]])
        print(f"evaluated {name} in {time.perf_counter() - t1:.0f} s", flush=True)
    print()
    print(table(results))
    print()
    for r in results.values():
        b = r["baseline"]
        if r.get("median_lead_time_h") is not None and r.get("recall") and b.get("recall"):
            print(f"model/rule recall ratio {r['recall'] / b['recall']:.2f}; lead time {r['median_lead_time_h']:.1f} h "
                  "vs 0 h")
    for line in targets(results):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
