"""End to end with real components: `fleetwatch run` (simulator, injected GPU loss) → real Alertmanager (Debian
package) → fleetwatch's webhook receiver → a remediation command in enforce mode → the audit log; then the same
with Alertmanager down for a while, so that fleetwatch's outbox delivers once it is back."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from alerts.remediation.audit import read_audit
from tests.alerts.remediation.helpers import clean_env, recorded, write_recorder
from tests.conftest import require_tool
from tests.test_e2e_prometheus import free_port, http_get, start_fleetwatch, stop, wait_until

TOKEN = "e2e-webhook-token-0123456789abcdef"


def _alertmanager_config(tmp: Path, receiver_port: int) -> Path:
    (tmp / "token").write_text(TOKEN + "\n")
    (tmp / "token").chmod(0o600)
    cfg = {
        "route": {"receiver": "fleetwatch", "group_by": ["alertname", "node"], "group_wait": "1s",
                  "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "fleetwatch", "webhook_configs": [{
            "url": f"http://127.0.0.1:{receiver_port}/alertmanager/webhook", "send_resolved": True,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(tmp / "token")}}}]}],
    }
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_alertmanager(tmp: Path, config: Path, port: int) -> subprocess.Popen:
    """The Debian package's Alertmanager on loopback, no clustering, storage under tmp."""
    binary = require_tool("prometheus-alertmanager")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={tmp / 'am-data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: http_get(f"http://127.0.0.1:{port}/-/ready")[0] == 200, 30, "alertmanager ready", proc)
    return proc


class Stack:
    """Paths and ports of one fleetwatch + Alertmanager + receiver setup."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.am_port, self.rx_port = free_port(), free_port()
        self.am_config = _alertmanager_config(tmp, self.rx_port)
        rec = write_recorder(tmp)
        self.calls = tmp / "calls.jsonl"
        policy = {"allowlist": [str(rec)],
                  "actions": {"cordon-test": {"type": "command", "argv": [str(rec), "cordon", "{node}", "{uuid}"],
                                              "undo": [str(rec), "uncordon", "{node}"],
                                              "env": {"REC_OUT": str(self.calls)}, "timeout": "10s"}},
                  "rules": [{"name": "lost-gpu", "match": {"alertname": "FleetwatchGpuLost"},
                             "actions": ["cordon-test"]}]}
        self.policy = tmp / "policy.yml"
        self.policy.write_text(yaml.safe_dump(policy))
        self.env = {**clean_env(), "FLEETWATCH_REMEDIATION__TOKEN_FILE": str(tmp / "token"),
                    "FLEETWATCH_REMEDIATION__LIMITS__FLEET_NODES": "2",
                    "FLEETWATCH_REMEDIATION__LIMITS__BLAST_MAX_FRACTION": "0.5"}

    def start_fleetwatch(self) -> tuple[subprocess.Popen, int]:
        """fleetwatch with the simulator losing GPU 3 of node-0 five simulated seconds in."""
        return start_fleetwatch(
            self.tmp, "--simulate", "2x4", "--seed", "3", "--speed", "60", "--no-record",
            "--inject", "gpu-lost@node-0/3+5s", "--alertmanager", f"http://127.0.0.1:{self.am_port}",
            "--receiver-listen", f"127.0.0.1:{self.rx_port}", "--remediation-policy", str(self.policy),
            "--remediation-mode", "enforce", env=self.env)

    def audit(self, fw_port: int) -> list[dict]:
        """The audit log of the fleetwatch on fw_port."""
        return read_audit(self.tmp / f"data-{fw_port}" / "remediation" / "audit.jsonl").records


def _metric(port: int, name: str) -> float:
    _, text = http_get(f"http://127.0.0.1:{port}/metrics")
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _outcome(stack: Stack, fw_port: int) -> bool:
    return any(r["event"] == "outcome" for r in stack.audit(fw_port))


def _check_cordoned(stack: Stack, fw_port: int) -> None:
    calls = recorded(stack.calls)
    assert len(calls) == 1, calls                       # Alertmanager re-sends; the action runs once
    argv = calls[0]["argv"]
    assert argv[:2] == ["cordon", "node-0"] and argv[2] == calls[0]["env"]["FLEETWATCH_LABEL_UUID"] != ""
    assert calls[0]["env"]["FLEETWATCH_LABEL_GPU"] == "3"
    audit = stack.audit(fw_port)
    requests = [r for r in audit if r["event"] == "request"]
    assert requests and all(r["result"] == "accepted" for r in requests)   # Alertmanager's token is accepted
    decision = next(r for r in audit if r["event"] == "decision" and r.get("action") == "cordon-test")
    assert decision["result"] == "run" and decision["target"] == "node-0" and decision["mode"] == "enforce"
    outcome = next(r for r in audit if r["event"] == "outcome")
    assert outcome["result"] == "ok" and outcome["key"] == decision["key"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    yield Stack(tmp_path)


def test_fault_to_alertmanager_to_remediation_action(stack: Stack) -> None:
    am = start_alertmanager(stack.tmp, stack.am_config, stack.am_port)
    fw, fw_port = stack.start_fleetwatch()
    try:
        wait_until(lambda: recorded(stack.calls), 60, "the remediation command to run", fw)
        wait_until(lambda: _outcome(stack, fw_port), 10, "the action's outcome in the audit log", fw)
        wait_until(lambda: _metric(fw_port, "fleetwatch_remediation_actions_total") >= 1, 10,
                   "fleetwatch_remediation_actions_total", fw)
        _check_cordoned(stack, fw_port)
    finally:
        stop(fw)
        stop(am)


def test_alertmanager_down_for_a_while_then_the_outbox_delivers(stack: Stack) -> None:
    fw, fw_port = stack.start_fleetwatch()          # Alertmanager is not running yet
    am = None
    try:
        wait_until(lambda: _metric(fw_port, "fleetwatch_alertmanager_send_errors_total") >= 1
                   and _metric(fw_port, "fleetwatch_alertmanager_outbox_alerts") >= 1, 60,
                   "alerts waiting in the outbox", fw)
        assert recorded(stack.calls) == []
        am = start_alertmanager(stack.tmp, stack.am_config, stack.am_port)
        wait_until(lambda: recorded(stack.calls), 60, "the remediation command to run after delivery", fw)
        wait_until(lambda: _outcome(stack, fw_port), 10, "the action's outcome in the audit log", fw)
        _check_cordoned(stack, fw_port)
    finally:
        stop(fw)
        if am is not None:
            stop(am)
