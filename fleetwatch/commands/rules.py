"""Command line: `fleetwatch rules export|check`, and `--alertmanager URL` / `--rules FILE` on `run` and `replay`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from alerts.promexport import export, render_yaml
from alerts.rules import RuleError, load_rules

Handler = Callable[[argparse.Namespace], int]


def add_parsers(sub: argparse._SubParsersAction, parsers: dict[str, argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add the `rules` command and the alerting flags of `run` and `replay`."""
    from fleetwatch.cli import OVERRIDE_FLAGS

    for name in ("run", "replay"):
        p = parsers[name]
        p.add_argument("--alertmanager", dest="alertmanager", action="append", metavar="URL",
                       help="send alerts to this Alertmanager, e.g. http://127.0.0.1:9093 (repeatable; "
                            "alerts.alertmanagers)")
        p.add_argument("--rules", dest="alert_rules", metavar="FILE",
                       help="alert rule file (alerts.rules; default: the built-in rules)")
    OVERRIDE_FLAGS["alertmanager"] = "alerts.alertmanagers"
    OVERRIDE_FLAGS["alert_rules"] = "alerts.rules"

    rules = sub.add_parser("rules", help="check alert rules or export them for Prometheus")
    rsub = rules.add_subparsers(dest="rules_command", required=True)
    exp = rsub.add_parser("export", help="write the rules as a Prometheus alerting-rule file")
    exp.add_argument("--rules", dest="rules_file", metavar="FILE", help="rule file (default: the built-in rules)")
    exp.add_argument("-o", "--output", required=True, metavar="OUT.yml", help="the file to write ('-': stdout)")
    exp.add_argument("--power-budget-watts", dest="power_budget_watts", type=float, metavar="W",
                     help="budget for forecast rules that have none of their own (else they are left out)")
    chk = rsub.add_parser("check", help="validate a rule file")
    chk.add_argument("file", metavar="FILE")
    return {"rules": cmd_rules}


def cmd_rules(args: argparse.Namespace) -> int:
    """fleetwatch rules export | check."""
    cmd = f"rules {args.rules_command}"
    try:
        rules = load_rules(args.rules_file if args.rules_command == "export" else args.file)
    except RuleError as err:
        print(f"fleetwatch: {cmd}: {err}", file=sys.stderr)
        return 1
    if args.rules_command == "check":
        kinds: dict[str, int] = {}
        for r in rules:
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        print(f"{args.file}: OK: {len(rules)} rules ({summary})")
        return 0
    budget = args.power_budget_watts
    if budget is not None and not budget > 0:
        print(f"fleetwatch: {cmd}: --power-budget-watts must be > 0, got {budget:g}", file=sys.stderr)
        return 2
    doc, notes = export(rules, budget)
    text = render_yaml(doc, notes)
    for n in notes:
        print(f"fleetwatch: {cmd}: {n}", file=sys.stderr)
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text)
    except OSError as err:
        print(f"fleetwatch: {cmd}: cannot write {args.output}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"wrote {len(doc['groups'][0]['rules'])} Prometheus alerting rules to {args.output}")
    return 0
