"""`fleetwatch forecast` and `fleetwatch backtest`, and the forecaster's flags on `fleetwatch run`."""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetwatch.config import ConfigError, parse_duration

Handler = Callable[[argparse.Namespace], int]
EXIT_USAGE = 2
DEFAULT_WINDOW_S = 14 * 86400.0


def add_parsers(sub: argparse._SubParsersAction, parsers: dict[str, argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add `forecast` and `backtest`, and --power-budget-watts / --no-forecast on `run`."""
    from fleetwatch.cli import OVERRIDE_FLAGS

    run = parsers["run"]
    run.add_argument("--power-budget-watts", dest="energy_budget_watts", type=float, metavar="W",
                     help="fleet power budget: publish the probability of exceeding it (energy.budget_watts)")
    run.add_argument("--no-forecast", dest="energy_enabled", action="store_const", const=False, default=None,
                     help="do not run the energy forecaster (energy.enabled: false)")
    OVERRIDE_FLAGS["energy_budget_watts"] = "energy.budget_watts"
    OVERRIDE_FLAGS["energy_enabled"] = "energy.enabled"

    fc = sub.add_parser("forecast", help="forecast GPU power, energy, cost and carbon from traces or Prometheus")
    _input_flags(fc)
    fc.add_argument("--horizon", default="15m,1h,24h", metavar="H[,H...]",
                    help="forecast horizons, e.g. 24h or 15m,1h,24h (default 15m,1h,24h)")
    fc.add_argument("--format", choices=("table", "json", "csv"), default="table")
    fc.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    fc.add_argument("--price-per-kwh", type=float, default=None, metavar="P", help="energy price (default 0.15)")
    fc.add_argument("--carbon-g-per-kwh", type=float, default=None, metavar="G",
                    help="grid carbon intensity (default 400)")
    fc.add_argument("--pue", type=float, default=None, help="power usage effectiveness, to price facility energy")
    fc.add_argument("--budget-watts", type=float, default=None, metavar="W",
                    help="fleet power budget: print the probability of exceeding it within each horizon")
    bt = sub.add_parser("backtest", help="rolling-origin accuracy of every model per series and horizon")
    _input_flags(bt)
    bt.add_argument("--horizon", default="15m,1h,24h", metavar="H[,H...]",
                    help="horizons to score (default 15m,1h,24h)")
    bt.add_argument("--format", choices=("table", "json"), default="table")
    bt.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    bt.add_argument("--all-series", action="store_true", help="table: every GPU too (default: fleet and nodes)")
    return {"forecast": cmd_forecast, "backtest": cmd_backtest}


def _input_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("traces", nargs="*", metavar="TRACE", help="trace directories (or a service data dir)")
    p.add_argument("--prometheus", metavar="URL", help="read fleetwatch_gpu_power_watts from this Prometheus instead")
    p.add_argument("--start", metavar="T", help="history start (ISO-8601 or Unix seconds; default: 14 days before end)")
    p.add_argument("--end", metavar="T", help="history end = forecast origin (default: the trace's end, or now)")
    p.add_argument("--step", default="5m", help="forecast grid step (default 5m)")
    p.add_argument("--models", default=None, metavar="M[,M...]",
                   help="models to try: last_value, seasonal_naive, holt_winters, sarimax, gbm "
                        "(default: all but sarimax)")
    p.add_argument("--backtest-days", type=float, default=2.0, metavar="D",
                   help="days of rolling origins (default 2)")


def _fail(cmd: str, msg: str, code: int = EXIT_USAGE) -> int:
    print(f"fleetwatch: {cmd}: {msg}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> Any:
    from predictor.energy.forecast import DEFAULT_MODELS, Settings

    try:
        horizons = tuple(parse_duration(h.strip()) for h in args.horizon.split(",") if h.strip())
        step = parse_duration(args.step)
    except ValueError as err:
        raise ConfigError(f"{args.command}: {err}") from None
    models = tuple(m.strip() for m in args.models.split(",") if m.strip()) if args.models else DEFAULT_MODELS
    s = Settings(horizons_s=horizons, step_s=step, models=models, backtest_days=args.backtest_days)
    try:
        s.hsteps()
    except ValueError as err:
        raise ConfigError(f"{args.command}: {err}") from None
    if not args.backtest_days > 0:
        raise ConfigError(f"{args.command}: --backtest-days must be > 0, got {args.backtest_days}")
    return s


def load_panel(args: argparse.Namespace, step_s: float) -> Any:
    """The power panel from --prometheus or the traces, over [--start, --end]."""
    import time

    from collector.series_view import NS, PrometheusView, TraceView
    from collector.trace_io import TraceError
    from fleetwatch.cli import parse_time_ns
    from predictor.energy.series import load_power

    if bool(args.prometheus) == bool(args.traces):
        raise ConfigError(f"{args.command}: give trace directories or --prometheus URL (one of them)")
    view: Any
    if args.prometheus:
        view = PrometheusView(args.prometheus)
        end = parse_time_ns(args.end) if args.end else time.time_ns()  # the outermost loop: wall clock is "now"
    else:
        try:
            view = TraceView(args.traces)
            span = view.span()
        except TraceError as err:
            raise ConfigError(f"{args.command}: {err}") from None
        if span is None:
            raise ConfigError(f"{args.command}: no metric samples in {', '.join(args.traces)}")
        end = parse_time_ns(args.end) if args.end else span[1]
    start = parse_time_ns(args.start) if args.start else end - int(DEFAULT_WINDOW_S * NS)
    if end <= start:
        raise ConfigError(f"{args.command}: --end must be after --start")
    return load_power(view, start, end, step_s)


def _run(args: argparse.Namespace) -> tuple[Any, Any] | int:
    import aiohttp

    from collector.importers._writer import InputError
    from predictor.energy.forecast import fit_plan
    from predictor.energy.series import SeriesInputError

    settings = _settings(args)
    try:
        panel = load_panel(args, settings.step_s)
    except SeriesInputError as err:
        return _fail(args.command, str(err), 1)
    except (InputError, aiohttp.ClientError, OSError) as err:
        return _fail(args.command, f"cannot read {args.prometheus}: {err}", 1)
    return panel, fit_plan(panel, settings)


def _write(args: argparse.Namespace, text: str) -> None:
    if args.output and args.output != "-":
        try:
            Path(args.output).write_text(text)
        except OSError as err:
            raise ConfigError(f"{args.command}: cannot write {args.output}: {err.strerror}") from None
    else:
        sys.stdout.write(text)


def forecast_records(fc: Any, plan: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per series × horizon: quantiles of power and energy, model, fallback (+ cost for the fleet)."""
    from predictor.energy.costs import Tariff, price
    from predictor.energy.forecast import exceed_probability

    tariff = Tariff(0.15 if args.price_per_kwh is None else args.price_per_kwh,
                    400.0 if args.carbon_g_per_kwh is None else args.carbon_g_per_kwh)
    out = []
    for i, sid in enumerate(fc.ids):
        for k, h in enumerate(fc.labels):
            rec: dict[str, Any] = {"series": sid.name, "scope": sid.scope, "node": sid.node, "gpu": sid.gpu,
                                   "horizon": h, "horizon_s": fc.horizons_s[k], "model": str(fc.model[i, k]),
                                   "fallback": fc.fallback[i]}
            for j, q in enumerate(fc.quantiles):
                rec[f"power_w_q{q:g}"] = _num(fc.power[i, k, j])
            for j, q in enumerate(fc.quantiles):
                rec[f"energy_kwh_q{q:g}"] = _num(fc.energy[i, k, j] / 3.6e6)
            if sid.scope == "fleet":
                until = fc.origin_ns + round(fc.horizons_s[k] * 1e9)
                m = price(fc.energy[i, k], tariff, fc.path_ts_ns, fc.path[i], until,
                          args.pue if args.pue else math.nan)
                rec["cost_q0.5"] = _num(m.cost[fc.quantiles.index(0.5)])
                rec["carbon_kg_q0.5"] = _num(m.carbon_g[fc.quantiles.index(0.5)] / 1000)
                if args.budget_watts:
                    rec["p_exceed_budget"] = _num(exceed_probability(fc, i, k, args.budget_watts))
            out.append(rec)
    return out


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def cmd_forecast(args: argparse.Namespace) -> int:
    """fleetwatch forecast."""
    from predictor.energy.forecast import make_forecast
    from predictor.energy.series import _iso

    res = _run(args)
    if isinstance(res, int):
        return res
    panel, plan = res
    fc = make_forecast(plan, panel)
    recs = forecast_records(fc, plan, args)
    if args.format == "json":
        text = json.dumps({"origin": _iso(fc.origin_ns), "notes": fc.notes, "forecasts": recs}, indent=1) + "\n"
    elif args.format == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=sorted({k for r in recs for k in r}, key=lambda k: list(recs[0]).index(k)
                                                  if k in recs[0] else 99))
        w.writeheader()
        w.writerows(recs)
        text = buf.getvalue()
    else:
        lines = [f"forecast from {_iso(fc.origin_ns)} ({len(panel.ids)} series, {panel.ts_ns.size} points of "
                 f"{panel.step_s:g} s history)"]
        lines += [f"note: {n}" for n in fc.notes]
        lines.append(f"{'series':<24} {'horizon':>7} {'model':<15} {'fallback':<13} {'power W p50':>11} "
                     f"{'80% interval':>19} {'energy kWh p50':>14}")
        for r in recs:
            if r["scope"] == "gpu" and len(fc.ids) > 40:
                continue
            lines.append(f"{r['series']:<24} {r['horizon']:>7} {r['model']:<15} {r['fallback']:<13} "
                         f"{_fmt(r['power_w_q0.5']):>11} {_fmt(r['power_w_q0.1']) + '–' + _fmt(r['power_w_q0.9']):>19} "
                         f"{_fmt(r['energy_kwh_q0.5'], 2):>14}")
        for r in recs:
            if r["scope"] == "fleet":
                extra = f", P(exceed budget) {r['p_exceed_budget']:.2f}" if r.get("p_exceed_budget") is not None else ""
                lines.append(f"fleet {r['horizon']}: cost {_fmt(r['cost_q0.5'], 2)}, carbon "
                             f"{_fmt(r['carbon_kg_q0.5'], 1)} kg CO2{extra}")
        text = "\n".join(lines) + "\n"
    _write(args, text)
    return 0


def _fmt(x: float | None, nd: int = 0) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def backtest_records(plan: Any) -> list[dict[str, Any]]:
    """The accuracy table as JSON-ready records (NaN → null)."""
    return [{"series": s.series, "model": s.model, "horizon_s": s.horizon_s, "mae": _num(s.mae),
             "mape": _num(s.mape), "smape": _num(s.smape), "mase": _num(s.mase), "coverage_80": _num(s.coverage_80),
             "coverage_95": _num(s.coverage_95), "chosen": s.chosen} for s in plan.scores]


def cmd_backtest(args: argparse.Namespace) -> int:
    """fleetwatch backtest."""
    res = _run(args)
    if isinstance(res, int):
        return res
    panel, plan = res
    if not plan.backtested:
        return _fail(args.command, "; ".join(plan.notes) or "not enough history for a backtest", 1)
    recs = backtest_records(plan)
    if args.format == "json":
        _write(args, json.dumps(recs, indent=1) + "\n")
        return 0
    from predictor.energy.forecast import horizon_label

    lines = [f"{'series':<24} {'model':<15} {'horizon':>7} {'MAE W':>9} {'MAPE':>7} {'sMAPE':>7} {'MASE':>6} "
             f"{'cov80':>6} {'cov95':>6}  chosen"]
    scopes = {s.name: s.scope for s in panel.ids}
    for r in recs:
        if scopes.get(r["series"]) == "gpu" and not args.all_series:
            continue
        lines.append(f"{r['series']:<24} {r['model']:<15} {horizon_label(r['horizon_s']):>7} {_fmt(r['mae'], 1):>9} "
                     f"{_fmt(r['mape'], 3):>7} {_fmt(r['smape'], 3):>7} {_fmt(r['mase'], 2):>6} "
                     f"{_fmt(r['coverage_80'], 2):>6} {_fmt(r['coverage_95'], 2):>6}  {'*' if r['chosen'] else ''}")
    lines += [f"note: {n}" for n in plan.notes]
    _write(args, "\n".join(lines) + "\n")
    return 0
