"""The rule loader: valid files load, invalid ones fail with a RuleError naming rule and field; fuzzed input."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alerts.rules import (
    KINDS,
    ForecastRule,
    RuleError,
    ThresholdRule,
    default_rules,
    format_duration,
    humanize,
    load_rules,
    parse_duration,
    parse_rules,
    render,
)
from collector.catalogue import BY_NAME

BAD = [
    ("top level", "- a\n", "top level must be a mapping"),
    ("no kind", "rules:\n  - alert: A\n    metric: fleetwatch_gpu_lost\n    value: 1\n", "rule 1 (A)"),
    ("unknown kind", "rules:\n  - alert: A\n    kind: magic\n", "rule 1 (A), field kind"),
    ("bad name", "rules:\n  - alert: 'A B'\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n",
     "field alert"),
    ("unknown metric", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_nope\n    value: 1\n",
     "rule 1 (A), field metric: unknown metric 'fleetwatch_gpu_nope'"),
    ("rate over gauge", "rules:\n  - alert: A\n    kind: rate\n    metric: fleetwatch_gpu_power_watts\n"
     "    value: 1\n", "rule 1 (A), field metric: fleetwatch_gpu_power_watts is a gauge"),
    ("bad op", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    op: '=>'\n"
     "    value: 1\n", "rule 1 (A), field op"),
    ("bad for", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n"
     "    for: soon\n", "rule 1 (A), field for"),
    ("wrong hysteresis", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_temperature_celsius\n"
     "    value: 80\n    clear: 90\n", "clear threshold must be <= 80"),
    ("bad severity", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n"
     "    labels: {severity: huge}\n", "field labels: severity must be one of"),
    ("bad template", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n"
     "    annotations: {summary: '{{ .Foo }}'}\n", "field annotations: unsupported template"),
    ("bad matcher", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n"
     "    matchers: ['node=~\"(\"']\n", "bad regular expression"),
    ("xid both", "rules:\n  - alert: A\n    kind: xid\n    codes: [79]\n    xid_severity: [critical]\n",
     "exactly one of codes"),
    ("absent windows", "rules:\n  - alert: A\n    kind: absent\n    metric: fleetwatch_gpu_info\n    after: 2h\n",
     "shorter than lookback"),
    ("probability", "rules:\n  - alert: A\n    kind: forecast\n    metric: fleetwatch_gpu_power_watts\n"
     "    probability: 1.5\n", "probability: must be between 0 and 1"),
    ("second rule named", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n"
     "  - alert: B\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n", "rule 2 (B), field value"),
    ("duplicate", "rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n"
     "  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n", "rule 2 (A) repeats rule 1"),
    ("not yaml", "rules: [\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), [(t, m) for _, t, m in BAD], ids=[i for i, _, _ in BAD])
def test_invalid_rules_name_the_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(RuleError) as err:
        parse_rules(text, "my-rules.yml")
    assert str(err.value).startswith("my-rules.yml: ")
    assert message in str(err.value)


def test_defaults_load_with_the_alert_names_alertmanager_routes_on() -> None:
    rules = default_rules()
    names = {r.alert for r in rules}
    assert all(n.startswith("Fleetwatch") for n in names)
    for want in ("FleetwatchGpuLost", "FleetwatchGpuDoubleBitEcc", "FleetwatchGpuRowRemapFailed",
                 "FleetwatchGpuRowRemapPending", "FleetwatchXidCritical", "FleetwatchGpuThermalThrottling",
                 "FleetwatchGpuPowerBrake", "FleetwatchGpuTemperatureNearSlowdown", "FleetwatchGpuNvlinkErrorBurst",
                 "FleetwatchGpuPcieReplayBurst", "FleetwatchNicLinkDown", "FleetwatchInfinibandLinkDown",
                 "FleetwatchGpuHighFailureRisk", "FleetwatchPowerBudgetBreachForecast", "FleetwatchNodeNotReporting"):
        assert want in names, want
    for r in rules:
        assert r.severity in ("critical", "warning", "info") and r.annotations.get("summary"), r.alert
    assert any(isinstance(r, ForecastRule) for r in rules)


def test_every_metric_the_defaults_use_is_in_the_catalogue() -> None:
    # The predictive rules read the predictors' metrics (issues 4 and 5): they must be catalogued.
    missing = [r.metric for r in default_rules() if getattr(r, "metric", None) and r.metric not in BY_NAME]
    assert missing == [], f"default rules use metrics the catalogue lacks: {missing}"


def test_matcher_shorthand_and_durations() -> None:
    (r,) = parse_rules("rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_network_up\n"
                       "    matchers: {device: eth0}\n    op: '=='\n    value: 0\n    for: 1h30m\n")
    assert isinstance(r, ThresholdRule)
    assert [m.promql() for m in r.matchers] == ['device="eth0"'] and r.for_ == 5400
    assert r.labels == {"severity": "warning"}
    assert parse_duration("250ms") == 0.25 and format_duration(5400) == "1h30m" and format_duration(0) == "0s"


def test_templates_render_like_prometheus() -> None:
    labels = {"node": "n1", "gpu": "3"}
    assert render("{{ $labels.node }}/{{ $labels.gpu }} {{ $value }}", labels, 87.5) == "n1/3 87.5"
    assert render("{{ $value | humanize }}W", labels, 12345.0) == "12.35kW"
    assert render('{{ printf "%.2f" $value }}', labels, 0.8123) == "0.81"
    assert humanize(0.05) == "50m" and humanize(999) == "999"


def test_load_rules_reads_a_file_and_reports_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "r.yml"
    path.write_text("rules:\n  - alert: A\n    kind: threshold\n    metric: fleetwatch_gpu_lost\n    value: 1\n")
    assert [r.alert for r in load_rules(path)] == ["A"]
    with pytest.raises(RuleError, match="cannot read the rule file"):
        load_rules(tmp_path / "absent.yml")


# --- fuzzing: whatever the input, a RuleError or rules, never another exception ---------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=20), st.sampled_from(["5m", "1h", ">", "==", "fleetwatch_gpu_lost", "{{ x }}",
                                                            "{{ $labels.node }}", 'node=~"a.*"', "critical"]))
_keys = st.sampled_from(["alert", "kind", "metric", "op", "value", "clear", "for", "labels", "annotations",
                         "matchers", "by", "agg", "window", "per", "after", "lookback", "codes", "xid_severity",
                         "budget", "within", "probability", "keep_firing_for", "exclude", "junk"])
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=8)
_rule = st.dictionaries(_keys, st.one_of(_values, st.sampled_from(KINDS)), max_size=10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.fixed_dictionaries({"rules": st.lists(_rule, max_size=3)}), _values))
def test_fuzzed_rule_documents_raise_only_rule_errors(doc: object) -> None:
    text = yaml.safe_dump(doc)
    try:
        rules = parse_rules(text, "fuzz.yml")
    except RuleError as err:
        assert str(err).startswith("fuzz.yml: ")
        return
    assert isinstance(rules, list)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_text_raises_only_rule_errors(text: str) -> None:
    with contextlib.suppress(RuleError):
        parse_rules(text, "fuzz.yml")
