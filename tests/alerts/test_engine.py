"""The alert engine over a RecentWindow fed with hand-built batches, stepping a ManualClock (no sleeps)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from alerts.engine import Alert, Engine, fingerprint
from alerts.rules import parse_rules
from collector.batch import Batch, Entity, gpu_entity
from collector.clock import ManualClock
from collector.series_view import RecentWindow
from collector.xid import lookup, xid_event
from tests.conftest import sample_gpu

GPU0, GPU1 = sample_gpu("node-0", 0), sample_gpu("node-0", 1)
OTHER = sample_gpu("node-1", 0)


def rules(text: str) -> Engine:
    return Engine(parse_rules("rules:\n" + text))


class Feed:
    """A window and a clock: each step adds one batch at now, evaluates, then moves time on."""

    def __init__(self, engine: Engine, step_s: float = 15.0) -> None:
        self.engine, self.step_s = engine, step_s
        self.clock = ManualClock()
        self.window = RecentWindow()

    def step(self, fill: Callable[[Batch], None] | None = None) -> list[Alert]:
        b = Batch("test", self.clock.now_ns())
        if fill is not None:
            fill(b)
        self.window.add(b)
        out = self.engine.evaluate(self.window, self.clock.now_ns())
        self.clock.advance(self.step_s)
        return out


def states(alerts: list[Alert]) -> dict[tuple[str, str], str]:
    return {(a.name, a.labels.get("gpu", a.labels.get("node", ""))): a.state for a in alerts}


def temps(t0: float, t1: float = 40.0) -> Callable[[Batch], None]:
    def fill(b: Batch) -> None:
        b.add("fleetwatch_gpu_temperature_celsius", GPU0, t0)
        b.add("fleetwatch_gpu_temperature_celsius", GPU1, t1)
    return fill


def test_pending_then_firing_after_for_then_resolved_then_dropped() -> None:
    f = Feed(rules("""
  - alert: Hot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    op: ">"
    value: 80
    for: 30s
    labels: {severity: critical}
    annotations: {summary: "GPU {{ $labels.gpu }} on {{ $labels.node }} at {{ $value }} C"}
"""))
    assert f.step(temps(70)) == []
    assert states(f.step(temps(85))) == {("Hot", "0"): "pending"}
    assert states(f.step(temps(86))) == {("Hot", "0"): "pending"}          # 15 s < for
    (a,) = f.step(temps(87))                                               # 30 s: fires
    assert a.state == "firing" and a.value == 87
    assert a.annotations["summary"] == "GPU 0 on node-0 at 87 C"
    assert a.labels == {"alertname": "Hot", "severity": "critical", "node": "node-0", "gpu": "0",
                        "uuid": GPU0.id, "pci_bus_id": GPU0.labels[3], "device": "nvidia0",
                        "model_name": GPU0.labels[5], "driver_version": GPU0.labels[6]}
    assert a.fingerprint == fingerprint(a.labels)
    starts = a.active_at_ns
    (a,) = f.step(temps(60))
    assert a.state == "resolved" and a.resolved_at_ns is not None and a.active_at_ns == starts
    # resolved alerts are kept (and re-sent) for 15 minutes, then forgotten
    for _ in range(59):
        assert states(f.step(temps(60))) == {("Hot", "0"): "resolved"}
    assert f.step(temps(60)) == []


def test_pending_alert_that_stops_holding_disappears_without_firing() -> None:
    f = Feed(rules("""
  - alert: Hot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    value: 80
    for: 1m
"""))
    assert states(f.step(temps(85))) == {("Hot", "0"): "pending"}
    assert f.step(temps(70)) == []


def test_hysteresis_keeps_firing_until_the_clear_threshold() -> None:
    f = Feed(rules("""
  - alert: Hot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    op: ">="
    value: 83
    clear: 80
"""))
    assert f.step(temps(82)) == []                                        # inside the band: does not start
    assert states(f.step(temps(84))) == {("Hot", "0"): "firing"}
    assert states(f.step(temps(81))) == {("Hot", "0"): "firing"}          # below 83 but above 80: holds
    assert states(f.step(temps(80.5))) == {("Hot", "0"): "firing"}
    assert states(f.step(temps(79))) == {("Hot", "0"): "resolved"}
    assert states(f.step(temps(82))) == {("Hot", "0"): "resolved"}        # band again: no new alert


def test_keep_firing_for_counts_from_the_first_evaluation_without_the_condition() -> None:
    """As Prometheus: a firing alert stays firing (with its last value) for keep_firing_for after the first
    evaluation that no longer sees the condition, returns to plain firing if the condition comes back, and
    a pending alert is not kept."""
    f = Feed(rules("""
  - alert: Hot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    value: 80
    keep_firing_for: 45s
"""))
    assert states(f.step(temps(90))) == {("Hot", "0"): "firing"}
    for _ in range(3):                                                    # 0, 15 and 30 s without it
        (a,) = f.step(temps(50))
        assert a.state == "firing" and a.value == 90
    (a,) = f.step(temps(50))                                              # 45 s: resolved
    assert a.state == "resolved"
    f.step(temps(90))
    f.step(temps(50))
    assert states(f.step(temps(90))) == {("Hot", "0"): "firing"}          # back within the keep: one alert
    for _ in range(3):
        assert states(f.step(temps(50))) == {("Hot", "0"): "firing"}     # the keep starts again from zero
    assert states(f.step(temps(50))) == {("Hot", "0"): "resolved"}
    g = Feed(rules("""
  - alert: Hot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    value: 80
    for: 1m
    keep_firing_for: 1h
"""))
    assert states(g.step(temps(90))) == {("Hot", "0"): "pending"}
    assert g.step(temps(50)) == []


def test_refire_after_resolve_gets_a_new_start_but_the_same_fingerprint() -> None:
    f = Feed(rules("""
  - alert: Hot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    value: 80
"""))
    (a,) = f.step(temps(90))
    f.step(temps(50))
    (b,) = f.step(temps(90))
    assert b.state == "firing" and b.active_at_ns > a.active_at_ns and b.fingerprint == a.fingerprint


def test_matchers_select_series_and_by_aggregates() -> None:
    f = Feed(rules("""
  - alert: NodeHot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    matchers: ['node="node-0"']
    by: [node]
    agg: avg
    value: 60
  - alert: NotNode0
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    matchers: ['node!~"node-0"']
    value: 0
"""))

    def fill(b: Batch) -> None:
        temps(100, 40)(b)                   # node-0 average 70
        b.add("fleetwatch_gpu_temperature_celsius", OTHER, 99)
    got = f.step(fill)
    node_alert = next(a for a in got if a.name == "NodeHot")
    assert node_alert.labels == {"alertname": "NodeHot", "severity": "warning", "node": "node-0"}
    assert node_alert.value == 70
    other = [a for a in got if a.name == "NotNode0"]
    assert [a.labels["node"] for a in other] == ["node-1"]


def test_rate_rule_counts_increase_per_hour_and_survives_a_counter_reset() -> None:
    f = Feed(rules("""
  - alert: EccRate
    kind: rate
    metric: fleetwatch_gpu_ecc_sbe_volatile_total
    value: 100
    window: 10m
    per: 1h
"""), step_s=60)
    values = [0, 5, 10, 15, 20, 2, 7, 12]      # +5 a minute, reset (driver reload) after 20
    got: list[Alert] = []
    for v in values:
        got = f.step(lambda b, v=v: b.add("fleetwatch_gpu_ecc_sbe_volatile_total", GPU0, v))
    # 7 minutes, 5/min except the reset minute (+2 from zero): 32 over the 10-minute window → 192/h
    (a,) = got
    assert a.state == "firing" and a.value == pytest.approx((5 * 6 + 2) * 6)


def test_absent_rule_fires_for_a_gpu_and_for_a_whole_node() -> None:
    f = Feed(rules("""
  - alert: GpuGone
    kind: absent
    metric: fleetwatch_gpu_info
    after: 1m
  - alert: NodeGone
    kind: absent
    metric: fleetwatch_gpu_info
    by: [node]
    after: 1m
"""))

    def all_three(b: Batch) -> None:
        for g in (GPU0, GPU1, OTHER):
            b.add("fleetwatch_gpu_info", g, 1)

    def only_gpu0(b: Batch) -> None:
        b.add("fleetwatch_gpu_info", GPU0, 1)
    for _ in range(3):
        assert f.step(all_three) == []
    for _ in range(5):                      # 75 s > after: gone
        got = f.step(only_gpu0)
    assert sorted((a.name, a.labels.get("gpu", "-"), a.labels["node"]) for a in got) == [
        ("GpuGone", "0", "node-1"), ("GpuGone", "1", "node-0"), ("NodeGone", "-", "node-1")]
    assert all(a.state == "firing" for a in got)


def test_xid_rule_by_code_carries_the_catalogue_meaning_and_action() -> None:
    f = Feed(rules("""
  - alert: Xid
    kind: xid
    codes: [79, 48]
    window: 5m
    annotations: {summary: "XID {{ $labels.xid }} on {{ $labels.node }}/{{ $labels.gpu }}"}
"""))

    def xid(code: int, g: Entity = GPU1) -> Callable[[Batch], None]:
        def fill(b: Batch) -> None:
            b.add("fleetwatch_gpu_info", g, 1)
            b.events.append(xid_event(b.ts_ns, g.node, g.id, code))
        return fill
    assert f.step(xid(13)) == []                          # not selected
    (a,) = f.step(xid(79))
    info = lookup(79)
    assert info is not None
    assert a.state == "firing" and a.labels["xid"] == "79" and a.labels["uuid"] == GPU1.id
    assert a.annotations["summary"] == "XID 79 on node-0/1"
    assert info.mnemonic in a.annotations["xid_meaning"] and info.immediate_action in a.annotations["xid_action"]
    for _ in range(19):                                    # stays firing for the window after the last XID
        got = f.step(lambda b: b.add("fleetwatch_gpu_info", GPU1, 1))
    assert states(got) == {("Xid", "1"): "firing"}
    got = f.step(lambda b: b.add("fleetwatch_gpu_info", GPU1, 1))
    assert states(got) == {("Xid", "1"): "resolved"}


def test_xid_severity_selection_follows_the_catalogue() -> None:
    from alerts.rules import XidRule

    (r,) = parse_rules("rules:\n  - alert: X\n    kind: xid\n    xid_severity: [critical]\n    exclude: [79]\n")
    assert isinstance(r, XidRule)
    sel = r.selected()
    assert 48 in sel and 79 not in sel
    assert all(lookup(c) is not None and lookup(c).severity == "critical" for c in sel)  # type: ignore[union-attr]


def _forecast(b: Batch, q_values: dict[tuple[str, str], float]) -> None:
    fleet = Entity(kind="scope", node="", id="fleet", labels=("fleet", "", ""))
    for (horizon, q), v in q_values.items():
        b.add("fleetwatch_power_forecast_watts", fleet, v, (horizon, q))


def test_forecast_rule_uses_the_conservative_quantile_within_the_horizon() -> None:
    engine = Engine(parse_rules("""
rules:
  - alert: Budget
    kind: forecast
    matchers: {scope: fleet}
    within: 2h
    probability: 0.8
"""), power_budget_watts=10_000)
    f = Feed(engine)
    # q0.1 at 1h above the budget: P(power > budget) >= 0.9 >= 0.8 → fires. q0.5 alone would not count.
    got = f.step(lambda b: _forecast(b, {("1h", "0.1"): 10_500, ("1h", "0.5"): 11_000, ("24h", "0.1"): 20_000}))
    (a,) = got
    assert a.state == "firing" and a.value == 10_500 and a.labels["scope"] == "fleet"
    got = f.step(lambda b: _forecast(b, {("1h", "0.1"): 9_000, ("1h", "0.5"): 11_000, ("24h", "0.1"): 20_000}))
    assert states(got) == {("Budget", ""): "resolved"}


def test_forecast_rule_takes_the_budget_the_forecaster_publishes() -> None:
    from alerts.rules import default_rules

    engine = Engine([r for r in default_rules() if r.alert == "FleetwatchPowerBudgetBreachForecast"])
    f = Feed(engine)
    fleet = Entity(kind="scope", node="", id="fleet", labels=("fleet", "", ""))
    # no budget anywhere: nothing fires, nothing fails
    assert f.step(lambda b: _forecast(b, {("1h", "0.1"): 50_000})) == [] and engine.last.errors == {}

    def with_budget(b: Batch) -> None:
        _forecast(b, {("1h", "0.1"): 50_000})
        b.add("fleetwatch_power_budget_watts", fleet, 40_000)
    (a,) = f.step(with_budget)
    assert a.state == "firing" and a.labels == {"alertname": "FleetwatchPowerBudgetBreachForecast",
                                                "severity": "warning", "scope": "fleet"}
    assert "50kW" in a.annotations["description"]


def test_a_failing_rule_is_counted_and_the_others_still_evaluate() -> None:
    class Broken(RecentWindow):
        def events(self, *a, **k):  # type: ignore[no-untyped-def]
            raise OSError("disk gone")

    engine = rules("""
  - alert: Xid
    kind: xid
    codes: [79]
  - alert: Hot
    kind: threshold
    metric: fleetwatch_gpu_temperature_celsius
    value: 80
""")
    w, clock = Broken(), ManualClock()
    b = Batch("t", clock.now_ns())
    temps(90)(b)
    w.add(b)
    got = engine.evaluate(w, clock.now_ns())
    assert [a.name for a in got] == ["Hot"]
    assert "disk gone" in engine.last.errors["Xid"] and engine.rule_errors == {"Xid": 1}
    rows = {(m, x): v for m, _, v, x in engine.self_batch(clock.now_ns()).rows()}
    assert rows[("fleetwatch_alerts_rule_errors_total", ("Xid",))] == 1
    assert rows[("fleetwatch_alerts_instances", ("firing",))] == 1
    assert rows[("fleetwatch_alerts_evaluations_total", ())] == 1


def test_default_rules_fire_gpu_lost_on_a_lost_gpu() -> None:
    from alerts.rules import default_rules

    f = Feed(Engine(default_rules()))
    g = gpu_entity("node-0", 3, "GPU-lost", "00000000:1B:00.0", "NVIDIA H100 80GB HBM3", "550.90.07")
    got = f.step(lambda b: (b.add("fleetwatch_gpu_lost", g, 1), b.add("fleetwatch_gpu_info", g, 1)))
    lost = [a for a in got if a.name == "FleetwatchGpuLost"]
    assert len(lost) == 1 and lost[0].state == "firing" and lost[0].labels["severity"] == "critical"
    assert lost[0].labels["uuid"] == "GPU-lost" and "node-0" in lost[0].annotations["summary"]


def test_fingerprint_is_alertmanagers_fnv1a() -> None:
    # Values computed by prometheus/common model.LabelSet.Fingerprint (and checked against a real
    # Alertmanager in test_alertmanager.py).
    assert fingerprint({}) == "cbf29ce484222325"
    a = fingerprint({"alertname": "A", "node": "n"})
    assert a == fingerprint({"node": "n", "alertname": "A"}) != fingerprint({"alertname": "A", "node": "m"})
