"""Safety gates: rate limits, blast radius (nodes and fraction), cooldown, and the idempotency ledger."""

from __future__ import annotations

import pytest

from alerts.remediation.safety import Ledger, Limits, SafetyGate
from collector.clock import ManualClock

OPEN = dict(global_max=100, per_action_max=100, blast_max_nodes=100, blast_max_fraction=1.0, cooldown=0.0,
            fleet_nodes=100)


def gate(**over: object) -> tuple[SafetyGate, ManualClock]:
    clock = ManualClock()
    return SafetyGate(Limits(**{**OPEN, **over}), clock), clock  # type: ignore[arg-type]


def test_global_rate_limit_refuses_then_recovers_after_the_window() -> None:
    g, clock = gate(global_max=3, global_window=60)
    assert [g.admit(a, f"n{i}") for i, a in enumerate("abc")] == [None, None, None]
    reason = g.admit("d", "n9")
    assert reason is not None and "global rate limit" in reason
    clock.advance(61)
    assert g.admit("d", "n9") is None


def test_per_action_rate_limit_counts_each_action_separately() -> None:
    g, _ = gate(per_action_max=2)
    assert g.admit("cordon", "n1") is None and g.admit("cordon", "n2") is None
    assert "rate limit of 'cordon'" in (g.admit("cordon", "n3") or "")
    assert g.admit("notify", "n3") is None                     # another action still runs
    assert "rate limit of 'notify'" in (g.admit("notify", "n4", per_action_max=1) or "")   # action's own cap


def test_blast_radius_limits_distinct_targets_but_not_repeats() -> None:
    g, clock = gate(blast_max_nodes=2, blast_window=600)
    assert g.admit("cordon", "n1") is None and g.admit("notify", "n2") is None
    reason = g.admit("cordon", "n3")
    assert reason is not None and "blast radius" in reason and "3 targets" in reason
    assert g.admit("notify", "n1") is None                     # a node already acted on does not widen it
    clock.advance(601)
    assert g.admit("cordon", "n3") is None


@pytest.mark.parametrize(("fleet", "fraction", "admitted"), [
    (20, 0.10, 2), (10, 0.10, 1), (9, 0.10, 0), (4, 0.5, 2),
], ids=["20-nodes-10pct", "10-nodes-10pct", "9-nodes-10pct-rounds-down", "4-nodes-half"])
def test_blast_radius_fraction_of_the_fleet(fleet: int, fraction: float, admitted: int) -> None:
    g, _ = gate(blast_max_fraction=fraction, fleet_nodes=fleet)
    results = [g.admit("cordon", f"n{i}") for i in range(admitted + 1)]
    assert results[:admitted] == [None] * admitted
    assert "of the fleet" in (results[admitted] or "")


def test_unknown_fleet_size_refuses_instead_of_guessing() -> None:
    clock = ManualClock()
    g = SafetyGate(Limits(**{**OPEN, "fleet_nodes": None}), clock, fleet_size=lambda: 0)  # type: ignore[arg-type]
    assert "fleet size unknown" in (g.admit("cordon", "n1") or "")
    g2 = SafetyGate(Limits(**{**OPEN, "fleet_nodes": None}), clock, fleet_size=lambda: 8)  # type: ignore[arg-type]
    assert g2.admit("cordon", "n1") is None


def test_cooldown_per_action_and_target() -> None:
    g, clock = gate(cooldown=300)
    assert g.admit("cordon", "n1") is None
    clock.advance(100)
    assert "cooldown" in (g.admit("cordon", "n1") or "")
    assert g.admit("cordon", "n2") is None                     # another target
    assert g.admit("notify", "n1") is None                     # another action
    assert g.admit("cordon", "n1", cooldown=50) is None        # the action's own shorter cooldown
    clock.advance(10)
    assert "cooldown" in (g.admit("cordon", "n1") or "")
    clock.advance(300)
    assert g.admit("cordon", "n1") is None


def test_a_refusal_consumes_nothing() -> None:
    g, _ = gate(global_max=1, blast_max_nodes=1)
    assert g.admit("a", "n1") is None
    for _ in range(5):
        assert g.admit("a", "n2") is not None
    assert len(g._global) == 1 and {t for _, t in g._targets} == {"n1"}


def test_ledger_from_audit_restores_decisions_and_what_ran() -> None:
    k1 = ["fp1", "2026-01-01T00:00:00+00:00", "firing", "cordon"]
    k2 = ["fp2", "2026-01-01T00:00:00+00:00", "firing", "cordon"]
    k3 = ["fp3", "2026-01-01T00:00:00+00:00", "firing", "cordon"]
    records = [
        {"event": "decision", "key": k1, "result": "run", "target": "n1", "mode": "enforce"},
        {"event": "outcome", "key": k1, "result": "ok", "target": "n1", "mode": "enforce"},
        {"event": "decision", "key": k2, "result": "refused", "target": "n2"},
        {"event": "decision", "key": k3, "result": "run", "target": "n3", "mode": "enforce"},
        {"event": "outcome", "key": k3, "result": "ok", "target": "n3", "mode": "enforce"},
        {"event": "decision", "key": ["fp3", k3[1], "resolved", "cordon"], "result": "run", "undo": True},
        {"event": "outcome", "key": ["fp3", k3[1], "resolved", "cordon"], "result": "ok", "undo": True},
        {"event": "request", "result": "accepted"},
    ]
    led = Ledger.from_audit(records)
    assert led.seen(tuple(k1)) and led.seen(tuple(k3))   # type: ignore[arg-type]
    assert not led.seen(tuple(k2))                        # type: ignore[arg-type]  # refusals are reconsidered
    assert led.ran == {("fp1", "cordon"): ("n1", "enforce")}
