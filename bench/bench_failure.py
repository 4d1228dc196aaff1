"""GPU failure prediction on simulated fleets: the model against the dcgm-style rule baseline.

    python -m bench.bench_failure            # train on 3,000 GPUs x 30 d (rate 10), choose the threshold on
                                             # another 2,000 (precision at rate 10) and 6,000 more at rate 1
                                             # (false alarms); test on 2,000 GPUs x 30 d at --fault-rate 10
                                             # and at 1: other seeds (no GPU in both), and the 30 days
                                             # after training ends (later time)
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

from collector.sim.offline import DEFAULT_START_NS, generate_trace
from predictor.failure.evaluate import pool_counts
from predictor.failure.modelfile import FORMAT, ModelFileError, load, save
from predictor.failure.pipeline import evaluate, train

INTERVAL_S = 900.0


def fleets(small: bool) -> dict[str, tuple[int, float, float, int, float]]:
    """name -> (nodes of 8 GPUs, days, fault rate, seed, start day): training fleets, validation fleets
    (the operating threshold), then test fleets that start when training ends (three per fault rate in the full
    run, reported each and pooled: two 2,000-GPU fleets at rate 10 differed by 0.09 in precision).

    The false-alarm budget (0.05 per 1,000 GPU-days) is checked on three rate-1 fleets: one fleet's 57,000
    GPU-days allow fewer than three false alarms, and fleets of the same size differed by 1 against 7 at one
    threshold, so a single fleet cannot resolve the budget."""
    if small:
        return {"train": (16, 6.0, 10.0, 101, 0.0), "validate": (16, 6.0, 10.0, 404, 0.0),
                "validate-rate1": (16, 6.0, 1.0, 606, 0.0),
                "test-rate10": (16, 6.0, 10.0, 202, 6.0),
                "test-rate1": (16, 6.0, 1.0, 303, 6.0)}
    return {"train": (125, 30.0, 10.0, 101, 0.0), "train-2": (250, 30.0, 10.0, 404, 0.0),
            "validate": (250, 30.0, 10.0, 505, 0.0), "validate-rate1": (250, 30.0, 1.0, 606, 0.0),
            "validate-rate1-2": (250, 30.0, 1.0, 707, 0.0), "validate-rate1-3": (250, 30.0, 1.0, 808, 0.0),
            "test-rate10": (250, 30.0, 10.0, 202, 30.0), "test-rate1": (250, 30.0, 1.0, 303, 30.0),
            "test-rate10-b": (250, 30.0, 10.0, 919, 30.0), "test-rate1-b": (250, 30.0, 1.0, 909, 30.0),
            "test-rate10-c": (250, 30.0, 10.0, 929, 30.0), "test-rate1-c": (250, 30.0, 1.0, 939, 30.0)}


def ensure(cache: Path, name: str, nodes: int, days: float, rate: float, seed: int, start_day: float) -> Path:
    """The cached trace, generated when missing (a trace is complete once its ground truth is written)."""
    tag = "test" if name.startswith("test") else "train"
    when = f"-from{start_day:g}d" if start_day else ""
    out = cache / f"{tag}-{nodes}x8-{days:g}d-r{rate:g}-s{seed}{when}-{INTERVAL_S:g}s"
    if not (out / "ground_truth" / "ground_truth.parquet").is_file():
        t0 = time.perf_counter()
        generate_trace(out, nodes, 8, days, seed=seed, interval_s=INTERVAL_S, fault_rate=rate,
                       start_ns=DEFAULT_START_NS + round(start_day * 86400e9))
        print(f"generated {out.name} in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def _f(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


COLUMNS = (("precision", "precision", ".3f"), ("recall", "recall", ".3f"),
           ("recall_with_precursors", "rec.prec", ".3f"), ("pr_auc", "PR-AUC", ".3f"),
           ("median_lead_time_h", "lead p50 h", ".1f"), ("p10_lead_time_h", "lead p10 h", ".1f"),
           ("false_alarms_per_1000_gpu_days", "FA/1000d", ".3f"), ("alerts", "alerts", "d"),
           ("false_alarms", "false", "d"), ("failures", "failures", "d"), ("gpus", "GPUs", "d"),
           ("gpu_days", "GPU-days", ".0f"))


def table(results: dict[str, dict[str, Any]]) -> str:
    """One line for the model and one for the rule baseline on each test fleet (rec.prec: recall over failures
    with precursors; FA/1000d: false alarms per 1,000 GPU-days)."""
    lines = [f"{'':<26}" + "".join(f"{title:>11}" for _, title, _ in COLUMNS)]
    for name, r in results.items():
        for who, figures in (("model", r), ("rule", r["baseline"])):
            lines.append(f"{name + ' ' + who:<26}" + "".join(f"{_f(figures.get(k), fmt):>11}" for k, _, fmt in COLUMNS))
    return "\n".join(lines)


def pooled(results: dict[str, dict[str, Any]], rate: str) -> dict[str, Any] | None:
    """The test fleets of one fault rate ("rate10", "rate1") pooled, model and baseline."""
    parts = [r for n, r in results.items() if n == f"test-{rate}" or n.startswith(f"test-{rate}-")]
    if not parts:
        return None
    return {**pool_counts(parts), "baseline": pool_counts([p["baseline"] for p in parts]),
            "fleets": len(parts)}


def targets(results: dict[str, dict[str, Any]]) -> list[str]:
    """The issue's targets, each with its figure (the test fleets of a rate pooled) and whether it is met."""
    out = []
    r10 = pooled(results, "rate10")
    if r10:
        each = [r for n, r in results.items() if n.startswith("test-rate10")]
        for key, want in (("precision", 0.9), ("recall_with_precursors", 0.8)):
            v = r10.get(key)
            ok = v is not None and v >= want
            spread = ", ".join(_f(r.get(key), ".3f") for r in each)
            out.append(f"rate 10: {key} {_f(v, '.3f')} >= {want} over {r10['fleets']} fleet(s) pooled (each: "
                       f"{spread}): {'met' if ok else 'NOT met'}")
        leads = [r.get("median_lead_time_h") for r in each]
        ok = all(v is not None and v >= 6.0 for v in leads)
        out.append(f"rate 10: median_lead_time_h >= 6.0 in each fleet ({', '.join(_f(v, '.1f') for v in leads)}): "
                   f"{'met' if ok else 'NOT met'}")
        out.append(f"rate 10: precision {_f(r10.get('precision'), '.3f')} vs 0.84 published by Liu et al. 2022 "
                   "(other data: a real cluster's logs, not this simulator)")
    r1 = pooled(results, "rate1")
    if r1:
        v = r1["false_alarms_per_1000_gpu_days"]
        each = ", ".join(f"{r['false_alarms_per_1000_gpu_days']:.3f}" for n, r in results.items()
                         if n.startswith("test-rate1") and not n.startswith("test-rate10"))
        out.append(f"rate 1: false alarms / 1,000 GPU-days {v:.3f} <= 0.1 ({r1['false_alarms']} in "
                   f"{r1['gpu_days']:.0f} GPU-days; each fleet: {each}): {'met' if v <= 0.1 else 'NOT met'}")
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
    model_path = cache / f"model-{'small' if args.small else 'full'}-format{FORMAT}.joblib"
    t0 = time.perf_counter()
    stale = ""
    if model_path.is_file() and not args.retrain:
        try:
            load(model_path)
        except ModelFileError as err:        # built by another feature set or scikit-learn: train again
            stale = str(err)
            print(f"retraining: {stale}", flush=True)
    if args.retrain or stale or not model_path.is_file():
        # Precision is checked on a rate-10 fleet (enough failures to measure it), the false-alarm budget on
        # rate-1 fleets: a rate-10 fleet has ten times the early alerts on GPUs that fail later than the horizon.
        model = train([p for n, p in traces.items() if n.startswith("train")], validation=[traces["validate"]],
                      alarm_validation=[p for n, p in traces.items() if n.startswith("validate-rate1")],
                      step_s=INTERVAL_S,
                      progress=lambda m: print(f"[{time.perf_counter() - t0:5.0f} s] {m}", flush=True))
        save(model, model_path)
        print(f"trained in {time.perf_counter() - t0:.0f} s: threshold {model.threshold:.4f}, "
              f"{model.training['samples']} samples ({model.training['positives']} positive)", flush=True)
    model = load(model_path)
    v = model.training.get("validation", {})
    print(f"threshold {model.threshold:.4f} (alerts clear below {model.clear_ratio:g} × it) chosen on "
          f"{model.training.get('validation_method')}: precision "
          f"{_f(v.get('precision'), '.3f')}, recall {_f(v.get('recall'), '.3f')}, false alarms / 1,000 GPU-days "
          f"{_f(v.get('false_alarms_per_1000_gpu_days'), '.3f')}; on the rate-1 validation fleets "
          f"{_f((model.training.get('alarm_validation') or {}).get('false_alarms_per_1000_gpu_days'), '.3f')}",
          flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name in sorted(n for n in traces if n.startswith("test")):
        t1 = time.perf_counter()
        results[name] = evaluate(model, [traces[name]])
        print(f"evaluated {name} in {time.perf_counter() - t1:.0f} s", flush=True)
    shown = dict(results)
    for rate in ("rate10", "rate1"):
        p = pooled(results, rate)
        if p is not None and p["fleets"] > 1:
            shown[f"{rate} pooled"] = p
    print()
    print(table(shown))
    print()
    for r in results.values():
        b = r["baseline"]
        if r.get("median_lead_time_h") is not None and r.get("recall") and b.get("recall"):
            print(f"model/rule recall ratio {r['recall'] / b['recall']:.2f}; lead time {r['median_lead_time_h']:.1f} h "
                  "vs 0 h")
    for line in targets(results):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(shown, indent=2))


if __name__ == "__main__":
    main()
