"""Every panel query, with template variables substituted, returns data from a real Prometheus."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dashboards.builder import WAITING_METRICS, WAITS_PREFIX
from dashboards.energy import DEFAULT_GCO2_PER_KWH, DEFAULT_PRICE_PER_KWH
from dashboards.export import build_all
from tests.alerts.remediation.helpers import dry_run_receiver_env, send_alert
from tests.conftest import require_tool
from tests.test_e2e_prometheus import free_port, http_get, query, serve_exposition, start_fleetwatch, stop, wait_until

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
SUBST = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$datasource": "prometheus",
         "$node": "node-0", "$gpu": "1", "$price_per_kwh": DEFAULT_PRICE_PER_KWH,
         "$gco2_per_kwh": DEFAULT_GCO2_PER_KWH}


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("dash")
    # XIDs (sudden-dbe: XID 48) and host NIC/IB counters from fixture /proc and /sys, named node-0.
    env = {"FLEETWATCH_NODE": "node-0", "FLEETWATCH_PROC_ROOT": str(FIXTURES / "proc"),
           "FLEETWATCH_SYS_ROOT": str(FIXTURES / "sys"), "FLEETWATCH_COLLECTOR__NETDEV__ENABLED": "true"}
    rx_port = free_port()      # the remediation receiver (dry-run) gets an alert for node-0: its panel has data
    env.update(dry_run_receiver_env(tmp, rx_port))
    # A site PDU that Prometheus scrapes and fleetwatch reads back as facility power (the PUE panel).
    pdu = serve_exposition("pdu_input_power_watts 12000\n")
    pport = free_port()
    url = f"http://127.0.0.1:{pport}"
    env.update({"FLEETWATCH_ENERGY__FACILITY_POWER_QUERY": "sum(pdu_input_power_watts)",
                "FLEETWATCH_ENERGY__FACILITY_SOURCE": url, "FLEETWATCH_ENERGY__EVALUATE_INTERVAL": "1s"})
    port = free_port()
    binary = require_tool("prometheus")
    rules = tmp / "rules.yml"
    # A rule that always fires, so the ALERTS panels have a series to show.
    rules.write_text("groups:\n  - name: t\n    rules:\n      - alert: DashboardTest\n"
                     "        expr: fleetwatch_gpu_temperature_celsius > 0\n        labels: {severity: info}\n")
    cfg = tmp / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
                   f"rule_files: ['{rules}']\n"
                   f"scrape_configs:\n  - job_name: fleetwatch\n    static_configs:\n"
                   f"      - targets: ['127.0.0.1:{port}']\n"
                   f"  - job_name: pdu\n    static_configs:\n      - targets: ['127.0.0.1:{pdu.server_port}']\n")
    # Prometheus first: its first scrape comes ~5 s after it starts (its service discovery's first update),
    # time that then overlaps fleetwatch's start-up.
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fw = None
    try:
        fw, _ = start_fleetwatch(tmp, "--simulate", "2x4", "--seed", "7", "--names", "both", "--no-record",
                                 "--inject", "sudden-dbe@node-0/1+1s", env=env, port=port)
        send_alert(rx_port)
        wait_until(lambda: http_get(url + "/-/ready")[0] == 200, 60, "prometheus ready", proc)
        wait_until(lambda: query(url, "fleetwatch_gpu_xid_errors_total"), 30, "an XID series", proc)
        wait_until(lambda: query(url, "fleetwatch_facility_power_watts"), 60, "facility power", proc)
        yield url
    finally:
        stop(*(p for p in (proc, fw) if p is not None))
        pdu.shutdown()


def substitute(expr: str) -> str:
    """Replace Grafana's template variables by values that exist in the simulated fleet."""
    for k in sorted(SUBST, key=len, reverse=True):
        expr = expr.replace(k, SUBST[k])
    assert "$" not in expr, expr
    return expr


def test_every_panel_query_returns_data(prom: str) -> None:
    waiting: dict[str, str] = {}
    checks: list[tuple[str, str, str]] = []          # (what is checked, variable|target, query)
    for model in build_all("native") + build_all("dcgm"):
        for v in model["templating"]["list"]:
            if v["type"] == "query":
                checks.append((f"{model['uid']} variable {v['name']}", "variable", substitute(v["query"])))
        for p in model["panels"]:
            if p["type"] in ("row", "text"):
                continue
            m = re.match(re.escape(WAITS_PREFIX) + r"(\S+) ", p["description"])
            if m:
                waiting[f"{model['uid']}/{p['title']}"] = m.group(1)
                continue
            for t in p["targets"]:
                checks.append((f"{model['uid']}/{p['title']}: {t['expr']}", "target", substitute(t["expr"])))
    assert sum(kind == "target" for _, kind, _ in checks) > 120

    def has_data(kind: str, expr: str) -> bool:
        if kind == "variable":
            metric, _, label = expr.removeprefix("label_values(").rstrip(")").rpartition(", ")
            return bool({r["metric"].get(label) for r in query(prom, metric)} - {None})
        return bool(query(prom, expr))

    # rate()/increase() over 1m need a few scrapes, and some series start with a predictor's first output:
    # look again at the queries still without data, for up to a minute, rather than sleep a fixed time first.
    empty = checks
    deadline = time.monotonic() + 60
    while True:
        empty = [c for c in empty if not has_data(c[1], c[2])]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not empty, "panel queries without data:\n" + "\n".join(what for what, _, _ in empty)
    # Only panels on metrics later issues add may be excused, and each such metric has its panel.
    assert set(waiting.values()) == set(WAITING_METRICS), waiting
