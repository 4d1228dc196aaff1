"""The remediation engine with real commands: dry-run default, idempotency, undo, retries, literal labels, audit."""

from __future__ import annotations

from pathlib import Path

from alerts.remediation.audit import AuditLog, read_audit
from alerts.remediation.policy import build_policy
from alerts.remediation.remediator import Remediator
from alerts.remediation.safety import Limits, SafetyGate
from collector.clock import ManualClock
from fleetwatch.config import RemediationConfig
from tests.alerts.remediation.helpers import Rig, alert, command_policy, model, write_recorder

EVIL = ["$(rm -rf /)", "; touch {canary}", "`touch {canary}`", "a && touch {canary}", "{{node}}", "x\nrm -rf /",
        "' \" | > {canary}"]


def test_dry_run_is_the_default_mode() -> None:
    assert RemediationConfig().mode == "dry-run"


async def test_dry_run_records_what_would_run_and_runs_nothing(tmp_path: Path) -> None:
    rig = Rig(tmp_path, mode="dry-run")
    await rig.send(alert())
    assert rig.calls_made() == []
    (dec,) = rig.audit("decision")
    assert dec["result"] == "dry_run" and dec["argv"][1:] == ["node-0", "FleetwatchGpuLost"]
    assert rig.rem.stats.actions[("node-0", "record", "dry_run")] == 1


async def test_enforce_runs_the_command_and_audits_decision_attempt_outcome(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.send(alert())
    (call,) = rig.calls_made()
    assert call["argv"] == ["node-0", "FleetwatchGpuLost"]
    assert call["env"]["FLEETWATCH_LABEL_NODE"] == "node-0"
    assert call["env"]["FLEETWATCH_ALERT_STATUS"] == "firing"
    assert [r["event"] for r in rig.audit()] == ["decision", "attempt", "outcome"]
    assert rig.audit("outcome")[0]["result"] == "ok"
    assert rig.rem.stats.actions[("node-0", "record", "ok")] == 1


async def test_label_values_arrive_literally_and_run_nothing_else(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    rig = Rig(tmp_path, argv=[str(write_recorder(tmp_path)), "{node}", "--note", "{description}"])
    for i, evil in enumerate(EVIL):
        value = evil.format(canary=canary)
        await rig.send(alert(fingerprint=f"{i:016x}", description=value))
        call = rig.calls_made()[-1]
        assert call["argv"] == ["node-0", "--note", value]
        assert call["env"]["FLEETWATCH_LABEL_DESCRIPTION"] == value
    assert len(rig.calls_made()) == len(EVIL)
    assert not canary.exists()


async def test_a_label_cannot_become_an_option_or_a_target_list(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.send(alert(fingerprint="01", node="--all"), alert(fingerprint="02", node="node-1,node-2"),
                   alert(fingerprint="03", node="node[1-99]"))
    assert rig.calls_made() == []
    reasons = [r["reason"] for r in rig.audit("decision")]
    assert len(reasons) == 3 and all("not a host-like name" in r for r in reasons)


async def test_a_missing_label_refuses_the_action(tmp_path: Path) -> None:
    rig = Rig(tmp_path, argv=[str(write_recorder(tmp_path)), "{node}", "{gpu}"])
    await rig.send(alert())
    assert rig.calls_made() == []
    (dec,) = rig.audit("decision")
    assert dec["result"] == "refused" and "needs label 'gpu'" in dec["reason"]


async def test_a_resent_alert_does_not_rerun_even_after_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.send(alert())
    await rig.send(alert())                      # Alertmanager re-sends the group
    assert len(rig.calls_made()) == 1
    rig.restart()                                 # the ledger is rebuilt from the audit log
    await rig.send(alert())
    assert len(rig.calls_made()) == 1
    assert [r["result"] for r in rig.audit("decision")] == ["run", "duplicate", "duplicate"]
    await rig.send(alert(starts="2026-01-02T00:00:00Z"))    # a new firing episode of the same alert
    assert len(rig.calls_made()) == 2


async def test_resolved_runs_the_undo_once_and_only_after_the_action_ran(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    await rig.send(alert(fingerprint="0a", status="resolved"))      # never fired here: nothing to undo
    assert rig.calls_made() == []
    await rig.send(alert())
    await rig.send(alert(status="resolved"))
    await rig.send(alert(status="resolved"))                       # re-sent resolved
    assert [c["argv"] for c in rig.calls_made()] == [["node-0", "FleetwatchGpuLost"], ["undo", "node-0"]]
    assert rig.calls_made()[1]["env"]["FLEETWATCH_ALERT_STATUS"] == "resolved"
    results = [(r["status"], r["result"]) for r in rig.audit("decision")]
    assert results == [("resolved", "no_action"), ("firing", "run"), ("resolved", "run"), ("resolved", "duplicate")]


async def test_no_undo_when_the_rule_says_so(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.policy_doc["rules"][0]["undo_on_resolved"] = False
    rig.restart()
    await rig.send(alert())
    await rig.send(alert(status="resolved"))
    assert len(rig.calls_made()) == 1


async def test_transient_failures_are_retried_with_backoff(tmp_path: Path) -> None:
    rig = Rig(tmp_path, retries=3, backoff="50ms")
    rig.policy_doc["actions"]["record"]["env"]["REC_FAIL_FIRST"] = "2"
    rig.restart()
    await rig.send(alert())
    assert len(rig.calls_made()) == 3
    attempts = rig.audit("attempt")
    assert [a["result"] for a in attempts] == ["failed", "failed", "ok"]
    assert [a["returncode"] for a in attempts] == [75, 75, 0]
    assert [a["retry_in_s"] for a in attempts] == [0.05, 0.1, None]      # the delay doubles per attempt
    assert attempts[1]["ts"] - attempts[0]["ts"] >= 0.05                 # and is waited
    assert rig.audit("outcome")[0] | {"result": "ok", "attempts": 3} == rig.audit("outcome")[0]


async def test_permanent_failures_are_not_retried(tmp_path: Path) -> None:
    rig = Rig(tmp_path, retries=3)
    rig.policy_doc["actions"]["record"]["env"]["REC_EXIT"] = "2"
    rig.restart()
    await rig.send(alert())
    assert len(rig.calls_made()) == 1
    assert rig.audit("outcome")[0]["result"] == "failed"
    assert rig.rem.stats.actions[("node-0", "record", "failed")] == 1


async def test_refusals_are_audited_with_their_reason(tmp_path: Path) -> None:
    limits = Limits(global_max=100, per_action_max=100, blast_max_nodes=1, blast_max_fraction=1.0, cooldown=0,
                    fleet_nodes=10)
    rig = Rig(tmp_path, limits=limits)
    await rig.send(alert(fingerprint="01", node="node-0"), alert(fingerprint="02", node="node-1"))
    assert [c["argv"][0] for c in rig.calls_made()] == ["node-0"]
    refused = [r for r in rig.audit("decision") if r["result"] == "refused"]
    assert len(refused) == 1 and refused[0]["target"] == "node-1" and "blast radius" in refused[0]["reason"]
    assert rig.rem.stats.actions[("node-1", "record", "refused")] == 1


async def test_an_executable_leaving_the_allowlist_is_refused_at_run_time(tmp_path: Path) -> None:
    rec = write_recorder(tmp_path)
    policy = build_policy(command_policy(rec), "p")
    policy.allowlist = frozenset()               # as if the file were replaced by a link elsewhere
    rem = Remediator(policy, SafetyGate(Limits(fleet_nodes=10, blast_max_fraction=1.0), ManualClock()),
                     AuditLog(tmp_path / "audit.jsonl"), "enforce")
    await rem.process(model(alert()), "r")
    await rem.idle()
    assert not (tmp_path / "calls.jsonl").exists()
    rem.audit.close()
    out = [r for r in read_audit(tmp_path / "audit.jsonl").records if r["event"] == "outcome"]
    assert out[0]["result"] == "refused" and "allowlist" in out[0]["detail"]
