"""Command-line hooks: `run --receiver-listen/--remediation-mode/--remediation-policy` and `fleetwatch remediation`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from alerts.remediation.audit import AUDIT_FILE_NAME, read_audit
from alerts.remediation.policy import PolicyError, load_policy

Handler = Callable[[argparse.Namespace], int]


def add_parsers(sub: argparse._SubParsersAction, parsers: dict[str, argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add the remediation flags to `run` and the `remediation` command."""
    from fleetwatch.cli import OVERRIDE_FLAGS

    run = parsers["run"]
    run.add_argument("--receiver-listen", dest="receiver_listen", metavar="HOST:PORT",
                     help="run the Alertmanager webhook receiver here (remediation.listen; default off)")
    run.add_argument("--remediation-mode", dest="remediation_mode", choices=("dry-run", "enforce"),
                     help="dry-run (default) records what would run; enforce runs it")
    run.add_argument("--remediation-policy", dest="remediation_policy", metavar="FILE",
                     help="YAML policy mapping alerts to actions (remediation.policy_file)")
    OVERRIDE_FLAGS["receiver_listen"] = "remediation.listen"
    OVERRIDE_FLAGS["remediation_mode"] = "remediation.mode"
    OVERRIDE_FLAGS["remediation_policy"] = "remediation.policy_file"

    rem = sub.add_parser("remediation", help="check a remediation policy or read the audit log")
    rsub = rem.add_subparsers(dest="remediation_command", required=True)
    chk = rsub.add_parser("check-policy", help="validate a policy file (allowlist, actions, rules)")
    chk.add_argument("policy", metavar="FILE")
    aud = rsub.add_parser("audit", help="print the audit log")
    aud.add_argument("path", nargs="?", default="data", metavar="FILE|DATA_DIR",
                     help=f"the audit file or the data dir holding remediation/{AUDIT_FILE_NAME} (default data)")
    aud.add_argument("--format", choices=("table", "json"), default="table")
    aud.add_argument("--tail", type=int, default=0, metavar="N", help="only the last N records")
    return {"remediation": cmd_remediation}


def cmd_remediation(args: argparse.Namespace) -> int:
    """fleetwatch remediation check-policy | audit."""
    if args.remediation_command == "check-policy":
        try:
            pol = load_policy(args.policy)
        except PolicyError as err:
            print(f"fleetwatch: remediation check-policy: {err}", file=sys.stderr)
            return 1
        print(f"{args.policy}: OK: {len(pol.actions)} actions, {len(pol.rules)} rules, "
              f"allowlist {sorted(pol.allowlist)}")
        return 0
    path = Path(args.path)
    if path.is_dir():
        path = path / "remediation" / AUDIT_FILE_NAME
    if not path.is_file():
        print(f"fleetwatch: remediation audit: {path}: no audit log there", file=sys.stderr)
        return 1
    read = read_audit(path)
    records = read.records[-args.tail:] if args.tail > 0 else read.records
    if args.format == "json":
        for r in records:
            sys.stdout.write(json.dumps(r, separators=(",", ":")) + "\n")
    else:
        for r in records:
            what = r.get("action") or r.get("http_status", "")
            sys.stdout.write(f"{r.get('seq', ''):>6} {r.get('event', ''):<9} {r.get('result', ''):<12} "
                             f"{r.get('alertname', '') or '':<28} {what!s:<16} {r.get('target', '') or '':<14} "
                             f"{r.get('reason') or r.get('detail') or ''}\n")
    if read.damaged:
        print(f"fleetwatch: remediation audit: {read.damaged} damaged line(s) skipped", file=sys.stderr)
    return 0
