"""`fleetwatch train | score | evaluate | reliability`: failure prediction and fleet reliability commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from fleetwatch.config import parse_duration

Handler = Callable[[argparse.Namespace], int]


def _fail(command: str, message: str, code: int = 1) -> int:
    print(f"fleetwatch: {command}: {message}", file=sys.stderr)
    return code


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_parsers(sub: Any, parsers: dict[str, argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add the failure-prediction and reliability subcommands, and `run --failure-model`."""
    from fleetwatch.cli import OVERRIDE_FLAGS

    tr = sub.add_parser("train", help="train a GPU failure-risk model on traces")
    tr.add_argument("model_traces", nargs="+", metavar="TRACE", help="trace directories (simulated or recorded)")
    tr.add_argument("-o", "--output", required=True, metavar="MODEL", help="model file to write")
    tr.add_argument("--horizon", type=_duration, default=24 * 3600.0, metavar="DURATION",
                    help="predict failures this far ahead (default 24h)")
    tr.add_argument("--step", type=_duration, default=900.0, metavar="DURATION",
                    help="feature grid step (default 15m; the traces' sampling interval or coarser)")
    tr.add_argument("--false-alarm-budget", type=float, default=0.05, dest="fa_budget", metavar="N",
                    help="false alarms per 1,000 GPU-days the threshold may give on validation (default 0.05)")
    tr.add_argument("--validate", action="append", default=[], metavar="TRACE",
                    help="choose the operating threshold on these traces (other GPUs; repeatable); default: "
                         "on the training GPUs' out-of-fold risk")
    tr.add_argument("--validate-alarms", action="append", default=[], metavar="TRACE", dest="validate_alarms",
                    help="check the false-alarm budget on these traces instead (a fleet at its real fault rate, "
                         "when --validate runs at a raised one; repeatable)")
    tr.add_argument("--seed", type=int, default=0)
    sc = sub.add_parser("score", help="score every GPU of traces with a failure-risk model")
    sc.add_argument("model_traces", nargs="+", metavar="TRACE")
    sc.add_argument("--model", required=True, metavar="MODEL")
    sc.add_argument("--top", type=int, default=0, metavar="N", help="list only the N riskiest GPUs")
    sc.add_argument("--format", choices=("table", "json"), default="table")
    ev = sub.add_parser("evaluate", help="evaluate a failure-risk model against traces' ground truth")
    ev.add_argument("model_traces", nargs="+", metavar="TRACE")
    ev.add_argument("--model", required=True, metavar="MODEL")
    ev.add_argument("--threshold", type=float, help="operating threshold (default: the model's)")
    ev.add_argument("--clear-ratio", type=float, metavar="R",
                    help="an alert clears below R × the threshold (default: the model's)")
    ev.add_argument("--format", choices=("table", "json"), default="table")
    rl = sub.add_parser("reliability", help="Kaplan-Meier, MTBF, Weibull and Cox hazard ratios of an inventory")
    rl.add_argument("inventory", metavar="INVENTORY.csv")
    rl.add_argument("--by", action="append", default=[], metavar="COLUMN",
                    help="covariate column for hazard ratios and per-group curves (repeatable)")
    rl.add_argument("--event", action="append", default=[], metavar="TYPE",
                    help="count only these failure types (repeatable; default: every failure)")
    rl.add_argument("--columns", metavar="OURS=THEIRS,...", help="map column names, e.g. serial=SN,installed=insert")
    rl.add_argument("--format", choices=("table", "json"), default="table")
    run = parsers["run"]
    run.add_argument("--failure-model", dest="failure_model", metavar="MODEL",
                     help="failure-risk model file for live scoring (default: the unsupervised anomaly score)")
    OVERRIDE_FLAGS["failure_model"] = "failure.model"
    return {"train": cmd_train, "score": cmd_score, "evaluate": cmd_evaluate, "reliability": cmd_reliability}


def _load_model(command: str, path: str) -> Any:
    from predictor.failure.modelfile import ModelFileError, load

    try:
        return load(path)
    except ModelFileError as err:
        _fail(command, str(err), 2)
        return None


def cmd_train(args: argparse.Namespace) -> int:
    """fleetwatch train."""
    from collector.trace_io import TraceError
    from predictor.failure.modelfile import save
    from predictor.failure.pipeline import train

    try:
        model = train(args.model_traces, validation=args.validate, alarm_validation=args.validate_alarms,
                      horizon_s=args.horizon, step_s=args.step,
                      seed=args.seed,
                      fa_budget=args.fa_budget, progress=lambda m: print(f"fleetwatch: train: {m}", file=sys.stderr))
    except (TraceError, ValueError, FileNotFoundError) as err:
        return _fail("train", str(err))
    path = save(model, args.output)
    t = model.training
    print(f"wrote {path}: model {model.version} ({model.kind}), {t['gpus']} GPUs, {t['failures']} observed "
          f"failures, threshold {model.threshold:.4f} (alerts clear below {model.clear_threshold:.4f})")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    """fleetwatch score."""
    from collector.trace_io import TraceError
    from predictor.failure.pipeline import score_traces

    model = _load_model("score", args.model)
    if model is None:
        return 2
    try:
        scores = score_traces(model, args.model_traces)
    except (TraceError, ValueError) as err:
        return _fail("score", str(err))
    if args.top > 0:
        scores = scores[: args.top]
    rows = [{"node": s.node, "gpu": s.gpu, "uuid": s.entity, "risk": round(s.risk, 4),
             "max_risk_24h": round(s.max_risk, 4), "alert": s.alert,
             "reasons": [{"reason": r.label, "text": r.text, "contribution": round(r.contribution, 4)}
                         for r in s.reasons]} for s in scores]
    if args.format == "json":
        print(json.dumps({"model_version": model.version, "threshold": model.threshold, "gpus": rows}, indent=2))
        return 0
    print(f"model {model.version} ({model.kind}), threshold {model.threshold:.3f}")
    print(f"{'NODE':<14} {'GPU':>3} {'RISK':>6} {'MAX24H':>6} {'ALERT':<5} REASONS")
    for r in rows:
        why = "; ".join(x["text"] for x in r["reasons"]) or "-"
        print(f"{r['node']:<14} {r['gpu']:>3} {r['risk']:>6.3f} {r['max_risk_24h']:>6.3f} "
              f"{'yes' if r['alert'] else '':<5} {why}")
    return 0


_ROWS = (("precision", "precision", ".3f"), ("recall", "recall (all failures)", ".3f"),
         ("recall_with_precursors", "recall (failures with precursors)", ".3f"), ("pr_auc", "PR-AUC", ".3f"),
         ("median_lead_time_h", "median lead time (h)", ".1f"), ("p10_lead_time_h", "p10 lead time (h)", ".1f"),
         ("false_alarms_per_1000_gpu_days", "false alarms / 1,000 GPU-days", ".3f"),
         ("threshold", "threshold", ".4f"), ("clear_ratio", "clears below × threshold", ".2f"),
         ("alerts", "alert episodes", "d"), ("failures", "failures", "d"),
         ("gpus", "GPUs", "d"), ("gpu_days", "GPU-days", ".0f"))


def _cell(v: Any, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def evaluation_table(result: dict[str, Any]) -> str:
    """The evaluation figures as a two-column table: model and rule baseline."""
    base = result["baseline"]
    lines = [f"{'':<36} {'model':>10} {'rule baseline':>14}"]
    lines += [f"{label:<36} {_cell(result.get(k), f):>10} {_cell(base.get(k), f):>14}" for k, label, f in _ROWS]
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    """fleetwatch evaluate."""
    from collector.trace_io import TraceError
    from predictor.failure.pipeline import evaluate

    model = _load_model("evaluate", args.model)
    if model is None:
        return 2
    try:
        if args.clear_ratio is not None and not 0.0 < args.clear_ratio <= 1.0:
            return _fail("evaluate", f"--clear-ratio must be in (0, 1], got {args.clear_ratio:g}", 2)
        result = evaluate(model, args.model_traces, threshold=args.threshold, clear_ratio=args.clear_ratio)
    except (TraceError, ValueError, FileNotFoundError) as err:
        return _fail("evaluate", str(err))
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(f"model {model.version}, horizon {result['horizon_h']:g} h")
        print(evaluation_table(result))
    return 0


def reliability_table(d: dict[str, Any]) -> str:
    """The reliability figures as text."""
    w = d["weibull"]
    out = [f"units {d['units']}, failures {d['failures']}",
           f"MTBF {_cell(d['mtbf_h'], ',.0f')} h"]
    if w["shape"] is not None:
        out.append(f"Weibull shape {w['shape']:.3f} [{w['shape_ci'][0]:.3f}, {w['shape_ci'][1]:.3f}], "
                   f"scale {w['scale_h']:,.0f} h [{w['scale_ci'][0]:,.0f}, {w['scale_ci'][1]:,.0f}]")
    km = d["km"]
    for q in (0.9, 0.5):
        t = next((p["t_h"] for p in km if p["survival"] <= q), None)
        out.append(f"Kaplan-Meier: {int(q * 100)} % survive to {_cell(t, ',.0f')} h")
    if d["cox"]:
        out.append(f"{'covariate':<30} {'hazard ratio':>12} {'95 % CI':>20} {'p':>9}")
        for c in d["cox"]:
            ci = f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]"
            out.append(f"{c['covariate']:<30} {c['hazard_ratio']:>12.3f} {ci:>20} {c['p']:>9.2g}")
    for g, v in d["groups"].items():
        out.append(f"  {g}: {v['units']} units, {v['failures']} failures")
    return "\n".join(out)


def cmd_reliability(args: argparse.Namespace) -> int:
    """fleetwatch reliability."""
    from predictor.failure.reliability import InventoryError, analyse, parse_columns, read_inventory

    try:
        inv = read_inventory(args.inventory, parse_columns(args.columns))
        result = analyse(inv, by=args.by, types=args.event or None).as_dict()
    except InventoryError as err:
        return _fail("reliability", str(err), 2)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print(reliability_table(result))
    return 0
