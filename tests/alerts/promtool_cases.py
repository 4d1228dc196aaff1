"""`promtool test rules` cases for every built-in rule, written to tests/fixtures/alerts/ (regenerate with
`python -m tests.alerts.promtool_cases --write`; a test checks the file is current and runs promtool on it).

Each case gives input series and the value Prometheus must compute at the evaluation time (worked out by
hand in the comments: counters are sampled over exactly the window, so `increase` needs no extrapolation).
Expected annotations are the rule's templates rendered by fleetwatch's own renderer: promtool then checks
that Prometheus' Go templates render the same text.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from alerts.engine import xid_annotations
from alerts.rules import Rule, default_rules, render

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "alerts" / "fleetwatch-alerts.test.yml"
RULE_FILE = "fleetwatch-alerts.yml"          # deploy/prometheus/rules/, copied next to the test file for promtool

G = {"node": "n0", "gpu": "3", "uuid": "GPU-3", "pci_bus_id": "00000000:1B:00.0", "device": "nvidia3",
     "model_name": "NVIDIA H100 80GB HBM3", "driver_version": "550.90.07"}
G2 = {**G, "gpu": "4", "uuid": "GPU-4", "device": "nvidia4"}


def sel(metric: str, labels: dict[str, str]) -> str:
    return metric + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


@dataclass
class Case:
    alert: str
    interval: str
    series: list[tuple[str, dict[str, str], str]]
    eval_time: str
    expected: list[tuple[dict[str, str], float]] = field(default_factory=list)
    more: list[tuple[str, list[tuple[dict[str, str], float]]]] = field(default_factory=list)   # other eval times


CASES = [
    Case("FleetwatchGpuLost", "15s", [("fleetwatch_gpu_lost", G, "0 1x6"), ("fleetwatch_gpu_lost", G2, "0x6")],
         "1m", [(G, 1)]),
    # 30 zeros then 31 ones a minute apart: exactly 1 h of samples at 60m, increase = 1
    Case("FleetwatchGpuDoubleBitEcc", "1m", [("fleetwatch_gpu_ecc_dbe_volatile_total", G, "0x29 1x30")], "60m",
         [(G, 1)]),
    # +5 a minute: 300 over the hour ending at 70m (> 100 since 21m, so firing after its 10m `for`)
    Case("FleetwatchGpuCorrectableEccRate", "1m", [("fleetwatch_gpu_ecc_sbe_volatile_total", G, "0+5x80")], "70m",
         [(G, 300)]),
    Case("FleetwatchGpuRowRemapFailed", "15s", [("fleetwatch_gpu_remapped_rows_failed", G, "0 1x6")], "1m",
         [(G, 1)]),
    Case("FleetwatchGpuRowRemapPending", "15s", [("fleetwatch_gpu_remapped_rows_pending", G, "1x40")], "6m",
         [(G, 1)], more=[("4m", [])]),                     # pending (for: 5m) is not yet an alert
    # a counter born inside the window fires; an old, unchanged one does not
    Case("FleetwatchXidCritical", "1m", [("fleetwatch_gpu_xid_errors_total", {**G, "xid": "79"}, "_x30 1x10"),
                                         ("fleetwatch_gpu_xid_errors_total", {**G2, "xid": "79"}, "1x40")],
         "35m", [({**G, "xid": "79"}, 1)]),
    Case("FleetwatchGpuThermalThrottling", "15s",
         [("fleetwatch_gpu_clock_event_active", {**G, "reason": "hw_thermal_slowdown"}, "1x20"),
          ("fleetwatch_gpu_clock_event_active", {**G, "reason": "gpu_idle"}, "1x20")],
         "3m", [({**G, "reason": "hw_thermal_slowdown"}, 1)]),
    Case("FleetwatchGpuPowerBrake", "15s",
         [("fleetwatch_gpu_clock_event_active", {**G, "reason": "hw_power_brake_slowdown"}, "1x10")],
         "1m", [({**G, "reason": "hw_power_brake_slowdown"}, 1)]),
    # hysteresis: 84 °C for 6 min fires; 81 keeps it firing; 79 clears it; 81 from cold never starts one
    Case("FleetwatchGpuTemperatureNearSlowdown", "15s",
         [("fleetwatch_gpu_temperature_celsius", G, "84x24 81x8 79x4"),
          ("fleetwatch_gpu_temperature_celsius", G2, "81x36")],
         "6m", [(G, 84)], more=[("7m", [(G, 81)]), ("9m", [])]),
    Case("FleetwatchGpuNvlinkErrorBurst", "1m", [("fleetwatch_gpu_nvlink_crc_errors_total", G, "0+3x20")], "10m",
         [(G, 30)]),
    Case("FleetwatchGpuPcieReplayBurst", "1m", [("fleetwatch_gpu_pcie_replays_total", G, "0+2x20")], "10m",
         [(G, 20)]),
    Case("FleetwatchNicLinkDown", "15s", [("fleetwatch_network_up", {"node": "n0", "device": "eth0"}, "0x10"),
                                          ("fleetwatch_network_up", {"node": "n0", "device": "lo"}, "0x10")],
         "2m", [({"node": "n0", "device": "eth0"}, 0)]),
    Case("FleetwatchInfinibandLinkDown", "15s",
         [("fleetwatch_infiniband_port_up", {"node": "n0", "device": "mlx5_0", "port": "1"}, "0x6")],
         "1m", [({"node": "n0", "device": "mlx5_0", "port": "1"}, 0)]),
    Case("FleetwatchInfinibandLinkFlap", "1m",
         [("fleetwatch_infiniband_port_link_downed_total", {"node": "n0", "device": "mlx5_0", "port": "1"},
           "0x5 1x10")], "15m", [({"node": "n0", "device": "mlx5_0", "port": "1"}, 1)]),
    # reports for 5 min, then nothing: gone at 11 min (no sample in the last 5 min, some in the last hour)
    Case("FleetwatchNodeNotReporting", "15s", [("fleetwatch_gpu_info", G, "1x20")], "11m", [({"node": "n0"}, 1)],
         more=[("4m", [])]),
    Case("FleetwatchGpuNotReporting", "15s", [("fleetwatch_gpu_info", G, "1x20"), ("fleetwatch_gpu_info", G2, "1x60")],
         "11m", [(G, 1)]),
    # risk >= the scorer's per-GPU threshold series: GPU 3 reaches its model's 0.8 at once (the scorer then
    # exports the clear level 0.6), fires after 10 min, holds at 0.6 = the clear level, and ends at 0.5 (the
    # scorer back at 0.8), then keeps firing with its last value for 6 h (keep_firing_for: the benchmark's
    # episode merge) and ends; GPU 4 stays just below its 0.8 and never fires
    Case("FleetwatchGpuHighFailureRisk", "1m",
         [("fleetwatch_gpu_failure_risk", G, "0.8x12 0.6x4 0.5x4"),
          ("fleetwatch_gpu_failure_risk_threshold", G, "0.6x16 0.8x4"),
          ("fleetwatch_gpu_failure_risk", G2, "0.79x20"),
          ("fleetwatch_gpu_failure_risk_threshold", G2, "0.8x20")],
         "11m", [(G, 0.8)], more=[("9m", []), ("14m", [(G, 0.6)]), ("18m", [(G, 0.6)]), ("6h16m", [(G, 0.6)]),
                                  ("6h17m", [])]),
    # q0.1 at 1 h above the 20 kW budget the forecaster exports (P >= 0.9); q0.5 and the 24 h horizon do not count
    Case("FleetwatchPowerBudgetBreachForecast", "15s",
         [("fleetwatch_power_budget_watts", {"scope": "fleet"}, "20000x8"),
          ("fleetwatch_power_forecast_watts", {"scope": "fleet", "horizon": "1h", "quantile": "0.1"}, "21000x8"),
          ("fleetwatch_power_forecast_watts", {"scope": "fleet", "horizon": "1h", "quantile": "0.5"}, "25000x8"),
          ("fleetwatch_power_forecast_watts", {"scope": "fleet", "horizon": "24h", "quantile": "0.1"}, "30000x8")],
         "1m", [({"scope": "fleet"}, 21000)]),
]


def _expected(rule: Rule, series: dict[str, str], value: float) -> dict[str, Any]:
    labels = {**series, **{k: render(v, series, value) for k, v in rule.labels.items()}}
    ann = {k: render(v, series, value) for k, v in rule.annotations.items()}
    if rule.kind == "xid":
        ann.update(xid_annotations(int(series["xid"])))
    return {"exp_labels": labels, "exp_annotations": ann}


def build() -> dict[str, Any]:
    """The promtool test document."""
    rules = {r.alert: r for r in default_rules()}
    missing = set(rules) - {c.alert for c in CASES}
    assert not missing, f"no promtool case for {sorted(missing)}"
    tests = []
    for c in CASES:
        rule = rules[c.alert]
        checks = [(c.eval_time, c.expected), *c.more]
        tests.append({
            "name": c.alert, "interval": c.interval,
            "input_series": [{"series": sel(m, lab), "values": v} for m, lab, v in c.series],
            "alert_rule_test": [{"eval_time": t, "alertname": c.alert,
                                 "exp_alerts": [_expected(rule, s, v) for s, v in exp]} for t, exp in checks],
        })
    # one evaluation a minute: every case checks at whole minutes, and promtool runs 4x faster than at 15 s
    return {"rule_files": [RULE_FILE], "evaluation_interval": "1m", "tests": tests}


def render_file() -> str:
    """The fixture's text."""
    head = "# Generated by `python -m tests.alerts.promtool_cases --write`: promtool unit tests of the default rules.\n"
    return head + yaml.safe_dump(build(), sort_keys=False, width=1000, allow_unicode=True)


if __name__ == "__main__":
    if "--write" in sys.argv:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(render_file())
        print(f"wrote {FIXTURE}")
    else:
        sys.stdout.write(render_file())
