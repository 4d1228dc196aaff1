"""The `fleetwatch` command line."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from typing import Any

from fleetwatch.config import ConfigError, load_config

EXIT_USAGE = 2


def _common_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--simulate", metavar="NODESxGPUS",
                   help="run the simulated fleet, e.g. 4x8; 'off' uses NVML even without a GPU")
    p.add_argument("--seed", type=int, help="simulator seed")
    p.add_argument("--speed", type=float, help="simulated time runs this many times faster than real time")
    p.add_argument("--fault-rate", type=float, dest="fault_rate", help="multiply the calibrated fault rate")
    p.add_argument("--inject", action="append", metavar="KIND@NODE/GPU+DELAY",
                   help="inject a fault into the simulator, e.g. gpu-lost@node-0/3+10s (repeatable)")
    p.add_argument("--names", choices=("native", "dcgm", "both"), help="metric names to export")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (its spellings are a contract: docs and tests rely on them)."""
    ap = argparse.ArgumentParser(prog="fleetwatch", description="GPU fleet observability and prediction")
    ap.add_argument("--log-level", default=None, choices=("debug", "info", "warning", "error"))
    sub = ap.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent, exporter and recorder")
    _common_run_flags(run)
    run.add_argument("--listen", metavar="HOST:PORT", help="exporter address (default 0.0.0.0:9400)")
    run.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="where traces are recorded")
    run.add_argument("--web-config-file", dest="web_config_file", metavar="FILE",
                     help="TLS and basic auth, in the exporter-toolkit web-config format")
    run.add_argument("--no-record", action="store_true", help="do not record traces")

    col = sub.add_parser("collect", help="collect once and print the readings")
    _common_run_flags(col)
    col.add_argument("--once", action="store_true", required=True, help="one collection (required)")
    col.add_argument("--format", choices=("table", "json"), default="table")

    sim = sub.add_parser("simulate", help="generate a simulated fleet trace offline")
    sim.add_argument("--nodes", type=int, default=4)
    sim.add_argument("--gpus", type=int, default=8)
    sim.add_argument("--days", type=float, default=1.0)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--interval", type=float, default=300.0, metavar="SECONDS")
    sim.add_argument("--fault-rate", type=float, default=1.0, dest="fault_rate")
    sim.add_argument("--inject", action="append", default=[], metavar="KIND@NODE/GPU+DELAY")
    sim.add_argument("-o", "--output", metavar="TRACE_DIR")
    sim.add_argument("--list-faults", action="store_true", help="list the fault kinds and exit")
    rep = sub.add_parser("replay", help="play recorded traces through the live pipeline")
    rep.add_argument("traces", nargs="+", metavar="TRACE")
    rep.add_argument("--speed", type=float, default=1.0, help="trace seconds per wall second (default 1)")
    rep.add_argument("--start", help="replay from this time (RFC 3339 or Unix seconds)")
    rep.add_argument("--end", help="replay up to this time")
    rep.add_argument("--config", help="YAML config file")
    rep.add_argument("--listen", metavar="HOST:PORT")
    rep.add_argument("--names", choices=("native", "dcgm", "both"))
    rep.add_argument("--data-dir", dest="data_dir", metavar="DIR", help="where the replay is recorded")
    rep.add_argument("--no-record", action="store_true", help="do not record the replay")
    rpt = sub.add_parser("report", help="render a self-contained HTML report of recorded traces")
    rpt.add_argument("traces", nargs="+", metavar="TRACE", help="trace directories")
    rpt.add_argument("-o", "--output", required=True, metavar="FILE", help="the HTML file to write")
    rpt.add_argument("--start", metavar="T", help="window start: ISO-8601 (naive = UTC) or Unix seconds")
    rpt.add_argument("--end", metavar="T", help="window end (exclusive), same forms as --start")
    rpt.add_argument("--top", type=int, default=10, metavar="N", help="unhealthy GPUs to list (default 10)")
    _add_import_parser(sub)
    _add_analysis_parsers(sub)
    _add_dashboards_parser(sub)
    parsers = {"run": run, "replay": rep, "collect": col}
    for module in CLI_EXTENSIONS:
        COMMANDS.update(importlib.import_module(module).add_parsers(sub, parsers))
    return ap


# Modules that add subcommands (and flags on `run`/`replay`): each has
# add_parsers(sub, parsers) -> {command: handler}; `parsers` holds the existing run/replay/collect parsers.
CLI_EXTENSIONS: list[str] = [
    "fleetwatch.commands.forecast",
    "fleetwatch.commands.failure",
    "fleetwatch.commands.rules",
    "fleetwatch.commands.remediation",
]


def parse_time_ns(text: str) -> int:
    """RFC 3339 / ISO-8601 (naive = UTC) or Unix seconds → Unix nanoseconds; ConfigError when neither."""
    from fleetwatch.analysis.query import parse_time

    try:
        return parse_time(text)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def cmd_replay(args: argparse.Namespace) -> int:
    """fleetwatch replay."""
    from fleetwatch.service import build_replay_service, run_replay

    over = {k: getattr(args, k) for k in ("listen", "names", "data_dir") if getattr(args, k) is not None}
    over.update({k: v for k, v in _overrides(args).items() if k not in ("log_level",) and k not in over
                 and k in _extension_keys()})
    if args.no_record:
        over["record"] = {"enabled": False}
    cfg = load_config(args.config, over)
    start = parse_time_ns(args.start) if args.start else None
    end = parse_time_ns(args.end) if args.end else None
    svc, source = build_replay_service(cfg, args.traces, args.speed, start, end)
    asyncio.run(run_replay(svc, source))
    print(f"fleetwatch: replay finished ({source.span.interval_s:g} s interval, "
          f"{source.series} series)", flush=True)
    return 0


# Flag → config overrides that extensions add to (dotted keys nest: "alerts.alertmanagers").
OVERRIDE_FLAGS: dict[str, str] = {}


def _extension_keys() -> set[str]:
    """Top-level config keys that extension flags set."""
    return {key.split(".")[0] for key in OVERRIDE_FLAGS.values()}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("simulate", "seed", "speed", "fault_rate", "inject", "names", "listen", "data_dir",
            "web_config_file", "log_level")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    for dest, key in OVERRIDE_FLAGS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    if getattr(args, "no_record", False):
        out["record"] = {"enabled": False}
    return out


def cmd_run(args: argparse.Namespace) -> int:
    """fleetwatch run."""
    from fleetwatch.service import build_service, run_service

    cfg = load_config(args.config, _overrides(args))
    logging.getLogger().setLevel(cfg.log_level.upper())
    svc = build_service(cfg)
    asyncio.run(run_service(svc))
    return 0


async def _collect_once(args: argparse.Namespace) -> list[dict[str, Any]]:
    from collector.catalogue import BY_NAME
    from fleetwatch.service import build_service

    over = _overrides(args)
    over["record"] = {"enabled": False}
    svc = build_service(load_config(args.config, over))
    rows: list[dict[str, Any]] = []
    for st in svc.agent.states.values():
        await st.source.start()
    try:
        for name, st in svc.agent.states.items():
            batch = await svc.agent.collect_once(st)
            if batch is None:
                rows.append({"source": name, "error": st.last_error})
                continue
            for metric, ent, value, extra in batch.rows():
                spec = BY_NAME[metric]
                rows.append({"source": name, "node": ent.node, "entity": ent.id, "metric": metric,
                             "labels": dict(zip(spec.labels, extra, strict=True)), "value": value,
                             "unit": spec.unit})
    finally:
        await svc.agent.stop()
    return rows


def cmd_collect(args: argparse.Namespace) -> int:
    """fleetwatch collect --once."""
    rows = asyncio.run(_collect_once(args))
    if args.format == "json":
        json.dump(rows, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    w = sys.stdout.write
    w(f"{'SOURCE':<18} {'NODE':<10} {'ENTITY':<44} {'METRIC':<52} {'VALUE':>16} UNIT\n")
    for r in rows:
        if "error" in r:
            w(f"{r['source']:<18} DOWN: {r['error']}\n")
            continue
        metric = r["metric"] + ("{" + ",".join(f"{k}={v}" for k, v in r["labels"].items()) + "}"
                                if r["labels"] else "")
        w(f"{r['source']:<18} {r['node']:<10} {r['entity']:<44} {metric:<52} {r['value']:>16.6g} {r['unit']}\n")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """fleetwatch simulate."""
    from collector.sim.faults import FAULT_KINDS, parse_inject

    if args.list_faults:
        for kind, desc in FAULT_KINDS.items():
            print(f"{kind:<18} {desc}")
        return 0
    if not args.output:
        print("fleetwatch simulate: -o TRACE_DIR is required", file=sys.stderr)
        return EXIT_USAGE
    for name in ("nodes", "gpus"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.days <= 0 or args.interval <= 0 or args.fault_rate < 0:
        raise ConfigError("--days and --interval must be > 0 and --fault-rate >= 0")
    try:
        injects = [parse_inject(s) for s in args.inject]
    except ValueError as err:
        raise ConfigError(f"--inject: {err}") from err
    from collector.sim.offline import generate_trace

    def progress(done: float, total: float) -> None:
        if sys.stderr.isatty():
            sys.stderr.write(f"\rsimulating: {100 * done / max(total, 1):5.1f}%")
            sys.stderr.flush()

    summary = generate_trace(args.output, nodes=args.nodes, gpus_per_node=args.gpus, days=args.days,
                             seed=args.seed, interval_s=args.interval, fault_rate=args.fault_rate,
                             injects=injects, progress=progress)
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    print(summary)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """fleetwatch report."""
    from collector.trace_io import TraceError
    from fleetwatch.analysis.query import parse_time
    from fleetwatch.analysis.report import write_report

    try:
        start = parse_time(args.start) if args.start else None
        end = parse_time(args.end) if args.end else None
        path = write_report(args.traces, args.output, start_ns=start, end_ns=end, top=args.top)
    except (TraceError, ValueError, OSError) as err:
        raise ConfigError(f"report: {err}") from err
    print(f"wrote {path}")
    return 0


def _add_import_parser(sub: Any) -> None:
    """`fleetwatch import KIND ...`: the importers of collector/importers."""
    imp = sub.add_parser("import", help="import nvidia-smi logs, exposition snapshots, Prometheus or kernel logs")
    kinds = imp.add_subparsers(dest="kind", required=True, metavar="KIND")

    def kind(name: str, help: str, sources: bool = True) -> argparse.ArgumentParser:
        p = kinds.add_parser(name, help=help)
        if sources:
            p.add_argument("sources", nargs="+", metavar="SOURCE")
        p.add_argument("-o", "--output", required=True, metavar="TRACE_DIR",
                       help="trace to create, or to add files to")
        p.add_argument("--on-error", dest="on_error", choices=("fail", "skip"), default="fail",
                       help="fail: stop and write nothing (default); skip: skip bad lines and count them")
        p.add_argument("--node", help="node name where the input does not say (default: 'imported')")
        return p

    tz_help = "zone of the input's local wall-clock times: IANA name, +HH:MM or local (default UTC)"
    smi = kind("nvidia-smi", "nvidia-smi --query-gpu --format=csv logs")
    smi.add_argument("--fields", metavar="LIST", help="the --query-gpu field list of a noheader log")
    smi.add_argument("--timezone", help=tz_help)
    kind("smi-q", "nvidia-smi -q text dumps").add_argument("--timezone", help=tz_help)
    kind("exposition", "Prometheus text snapshots (dcgm-exporter, node_exporter, fleetwatch)").add_argument(
        "--time", metavar="T", help="snapshot time for samples without one (default: the file's mtime)")
    prom = kind("prometheus", "series from a Prometheus server's range-query API", sources=False)
    prom.add_argument("--url", required=True, help="Prometheus base URL, e.g. http://prometheus:9090")
    prom.add_argument("--match", action="append", required=True, metavar="SELECTOR",
                      help="series selector, e.g. '{__name__=~\"DCGM_.*\"}' (repeatable)")
    prom.add_argument("--start", required=True, metavar="T",
                      help="RFC 3339, Unix seconds, now, now-1h (or --start=-1h)")
    prom.add_argument("--end", default="now", metavar="T", help="same forms as --start (default now)")
    prom.add_argument("--step", default="15s", help="resolution (default 15s)")
    prom.add_argument("--chunk", default="1h", help="time range per request (default 1h)")
    prom.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    prom.add_argument("--retries", type=int, default=5, help="retries on 5xx or connection errors (default 5)")
    prom.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="per request (default 60)")
    klog = kind("kernel-log", "NVRM Xid lines of dmesg, journal or kern.log text")
    klog.add_argument("--year", type=int, help="year of syslog timestamps (default: the file's mtime year)")
    klog.add_argument("--boot-time", dest="boot_time", metavar="T",
                      help="boot time, for [seconds since boot] timestamps")
    klog.add_argument("--timezone", help=tz_help)


def cmd_import(args: argparse.Namespace) -> int:
    """fleetwatch import."""
    from collector.importers import InputError, run_import

    skip = {"command", "kind", "sources", "output", "log_level"}
    options = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    try:
        summary = run_import(args.kind, getattr(args, "sources", []), args.output, **options)
    except (InputError, OSError) as err:
        raise ConfigError(f"import {args.kind}: {err}") from err
    print(summary)
    return 0


def _add_analysis_parsers(sub: Any) -> None:
    """`fleetwatch analyze` and `fleetwatch compact`."""
    an = sub.add_parser("analyze", help="per-GPU (or per-node) energy, power, thermal and error summary of traces")
    an.add_argument("traces", nargs="+", metavar="TRACE", help="trace directories")
    an.add_argument("--format", choices=("table", "csv", "json", "parquet"), default="table")
    an.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout (parquet needs it)")
    an.add_argument("--by", choices=("gpu", "node"), default="gpu", help="one record per GPU (default) or node")
    an.add_argument("--window", metavar="DURATION", help="one record per window too, e.g. 1h (epoch-aligned)")
    an.add_argument("--start", metavar="T", help="ISO-8601 (naive = UTC) or Unix seconds")
    an.add_argument("--end", metavar="T", help="exclusive; same forms as --start")
    an.add_argument("--node", action="append", metavar="N", help="only this node (repeatable)")
    an.add_argument("--gpu", action="append", metavar="G", help="only this GPU: UUID or NODE/INDEX (repeatable)")
    an.add_argument("--idle-power", dest="idle_power", type=float, metavar="WATTS",
                    help="idle_powered_s counts time above this draw at < 5%% utilisation (default 100)")
    cp = sub.add_parser("compact", help="merge each finished day of a trace into one file; apply retention")
    cp.add_argument("trace_dir", metavar="TRACE_DIR")
    cp.add_argument("--retention-age", dest="retention_age", metavar="DURATION",
                    help="delete whole days older than this, e.g. 30d")
    cp.add_argument("--retention-size", dest="retention_size", metavar="SIZE",
                    help="then delete the oldest days outside the age window until the trace fits, e.g. 10GiB")
    cp.add_argument("--all", dest="all_days", action="store_true",
                    help="also compact today's partition (only when no recorder is writing the trace)")


def cmd_analyze(args: argparse.Namespace) -> int:
    """fleetwatch analyze."""
    from collector.trace_io import TraceError
    from fleetwatch.analysis import query
    from fleetwatch.config import parse_duration

    if args.format == "parquet" and not args.output:
        raise ConfigError("analyze: --format parquet needs -o FILE")
    try:
        window = parse_duration(args.window) if args.window else None
        start = query.parse_time(args.start) if args.start else None
        end = query.parse_time(args.end) if args.end else None
        extra = {"idle_power_w": args.idle_power} if args.idle_power is not None else {}
        table = query.analyze(args.traces, start_ns=start, end_ns=end, nodes=args.node, gpus=args.gpu,
                              window_s=window, by=args.by, **extra)
    except (TraceError, ValueError) as err:
        raise ConfigError(f"analyze: {err}") from err
    try:
        if args.format == "parquet":
            query.write_parquet(table, args.output)
            return 0
        text = {"table": query.to_text, "csv": query.to_csv,
                "json": lambda t: json.dumps(query.to_records(t), indent=1) + "\n"}[args.format](table)
        if args.output:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            sys.stdout.write(text)
    except OSError as err:
        raise ConfigError(f"analyze: cannot write {args.output}: {err}") from err
    return 0


def cmd_compact(args: argparse.Namespace) -> int:
    """fleetwatch compact."""
    from collector.compact import compact
    from collector.trace_io import TraceError
    from fleetwatch.analysis.rollup import after_compaction
    from fleetwatch.config import parse_duration, parse_size

    try:
        age = parse_duration(args.retention_age) if args.retention_age else None
        size = parse_size(args.retention_size) if args.retention_size else None
        report = compact(args.trace_dir, retention_age_s=age, retention_bytes=size, all_days=args.all_days,
                         after_day=after_compaction)
    except (TraceError, ValueError, OSError) as err:
        raise ConfigError(f"compact: {err}") from err
    for line in report.lines():
        print(line, file=sys.stderr if line.startswith("error:") else sys.stdout)
    return 1 if report.errors else 0


def _add_dashboards_parser(sub: Any) -> None:
    """`fleetwatch dashboards export|push`: the Grafana dashboards of dashboards/."""
    dash = sub.add_parser("dashboards", help="export or push the Grafana dashboards")
    acts = dash.add_subparsers(dest="action", required=True)
    ex = acts.add_parser("export", help="write dashboard JSON and Grafana provisioning files to DIR")
    ex.add_argument("dir", metavar="DIR")
    ex.add_argument("--names", choices=("native", "dcgm", "both"), default="native",
                    help="metric names the queries use (both: two sets of dashboards)")
    ex.add_argument("--dashboards-path", dest="dashboards_path", default=None, metavar="PATH",
                    help="where Grafana will find the JSON (provider path)")
    ex.add_argument("--prometheus-url", dest="prometheus_url", default=None, metavar="URL")
    pu = acts.add_parser("push", help="upload the dashboards to Grafana, overwriting by uid")
    pu.add_argument("--url", required=True, help="Grafana base URL")
    pu.add_argument("--token", required=True, help="service-account token")
    pu.add_argument("--folder", default="fleetwatch", help="folder uid and title (default fleetwatch)")
    pu.add_argument("--names", choices=("native", "dcgm", "both"), default="native")


def cmd_dashboards(args: argparse.Namespace) -> int:
    """fleetwatch dashboards export|push."""
    from dashboards.export import DEFAULT_DASHBOARDS_PATH, DEFAULT_PROMETHEUS_URL, build_all, export

    names = ("native", "dcgm") if args.names == "both" else (args.names,)
    if args.action == "export":
        from pathlib import Path

        try:
            paths = export(Path(args.dir), names, args.dashboards_path or DEFAULT_DASHBOARDS_PATH,
                           args.prometheus_url or DEFAULT_PROMETHEUS_URL)
        except OSError as err:
            raise ConfigError(f"dashboards export: {err}") from err
        print(f"wrote {len(paths)} files to {args.dir}")
        return 0
    from grafana_client.client import GrafanaException

    from dashboards.push import push

    try:
        results = push(args.url, args.token, [m for n in names for m in build_all(n)], args.folder)
    except GrafanaException as err:
        print(f"fleetwatch: dashboards push: Grafana said {err.status_code}: {err.message}", file=sys.stderr)
        return 1
    for r in results:
        print(f"{r.change:9} {r.uid}  {r.title}")
    return 0


COMMANDS = {
    "run": cmd_run, "collect": cmd_collect, "simulate": cmd_simulate, "replay": cmd_replay,
    "import": cmd_import, "analyze": cmd_analyze, "report": cmd_report, "compact": cmd_compact,
    "dashboards": cmd_dashboards,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `fleetwatch` console script."""
    args = build_parser().parse_args(argv)
    # `fleetwatch analyze /var/lib/fleetwatch` means the traces the service recorded there.
    if getattr(args, "traces", None) or getattr(args, "trace_dir", None):
        from collector.trace_io import resolve_trace_dir
    if getattr(args, "traces", None):
        args.traces = [str(resolve_trace_dir(t)) for t in args.traces]
    if getattr(args, "trace_dir", None):
        args.trace_dir = str(resolve_trace_dir(args.trace_dir))
    logging.basicConfig(level=(args.log_level or "info").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except ConfigError as err:
        print(f"fleetwatch: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # `python -m fleetwatch.cli` runs this file as __main__: use the importable module instead, so that the
    # OVERRIDE_FLAGS and COMMANDS which CLI extensions register (on fleetwatch.cli) are the ones consulted.
    sys.exit(importlib.import_module("fleetwatch.cli").main())
