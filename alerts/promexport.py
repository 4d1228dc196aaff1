"""`fleetwatch rules export`: the same rules as a Prometheus alerting-rule file, for Prometheus to evaluate.

Each kind becomes the PromQL that means the same:

- threshold: ``M{matchers} OP V`` (``AGG by (...) (M) OP V`` with `by`); hysteresis keeps an active alert
  while ``M OP CLEAR`` through its own ALERTS series: ``(M OP V) or (M OP CLEAR and ignoring(...) ALERTS{...})``;
  with `value_metric`: ``M{matchers} OP T{matchers}``, PromQL's one-to-one matching pairing the series of
  the same labels (a comparison without `bool` keeps M's value, so ``$value`` is still M's);
- rate: ``increase(M[window]) * per/window OP V``;
- absent: ``max_over_time(M[lookback]) unless max_over_time(M[after])`` (per `by` group when given);
- xid: one rule per code, ``increase(fleetwatch_gpu_xid_errors_total{xid="C"}[window]) > 0`` or a series that
  appeared within the window, with the catalogue's meaning and action as static annotations;
- forecast: ``max by (scope, node, gpu) (M{quantile=~"<= 1-p", horizon=~"<= within"}) > budget``, the budget
  being the rule's, --power-budget-watts, or else the energy forecaster's fleetwatch_power_budget_watts of
  the same scope. Quantile and horizon label values are matched from the usual spellings
  (FORECAST_QUANTILES, FORECAST_HORIZONS).

Prometheus' `increase` extrapolates to the window's edges where fleetwatch's engine takes the counter's
value at the window start, so rate rules can differ near their threshold; everything else agrees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from collector.catalogue import BY_NAME, ENTITY_LABELS

from .engine import BUDGET_METRIC, xid_annotations
from .rules import (
    AbsentRule,
    ForecastRule,
    Matcher,
    RateRule,
    Rule,
    ThresholdRule,
    XidRule,
    format_duration,
    parse_duration,
)

GROUP = "fleetwatch-alerts"
FORECAST_QUANTILES = ("0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.2", "0.25", "0.5", "0.75", "0.8",
                      "0.9", "0.95", "0.975", "0.99")
FORECAST_HORIZONS = ("1m", "5m", "10m", "15m", "30m", "1h", "2h", "3h", "4h", "6h", "12h", "24h", "1d", "48h",
                     "2d", "7d")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(float(v))


def _selector(metric: str, matchers: Sequence[Matcher], extra: Sequence[str] = ()) -> str:
    parts = [m.promql() for m in matchers] + list(extra)
    return f"{metric}{{{','.join(parts)}}}" if parts else metric


def _hysteresis(rule: ThresholdRule | RateRule, value_expr: str) -> str:
    if rule.value is None:
        raise TypeError(f"{rule.alert}: a per-series threshold (value_metric) has no number to export")
    fire = f"{value_expr} {rule.op} {_num(rule.value)}"
    if rule.clear is None:
        return fire
    ignoring = ", ".join(sorted({"alertname", "alertstate", *rule.labels}))
    keep = f"{value_expr} {rule.op} {_num(rule.clear)}"
    return f'({fire}) or ({keep} and ignoring({ignoring}) ALERTS{{alertname="{rule.alert}"}})'


def _base(rule: Rule, expr: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"alert": rule.alert, "expr": expr}
    if rule.for_ > 0:
        out["for"] = format_duration(rule.for_)
    if rule.keep_firing_for > 0:
        out["keep_firing_for"] = format_duration(rule.keep_firing_for)
    out["labels"] = dict(rule.labels)
    ann = {**rule.annotations, **(annotations or {})}
    if ann:
        out["annotations"] = ann
    return out


def rule_to_prometheus(rule: Rule, power_budget_watts: float | None = None) -> list[dict[str, Any]]:
    """The Prometheus alerting rules for one fleetwatch rule ([] when it cannot be expressed, see module doc)."""
    if isinstance(rule, ThresholdRule):
        sel = _selector(rule.metric, rule.matchers)
        if rule.value_metric is not None:
            return [_base(rule, f"{sel} {rule.op} {_selector(rule.value_metric, rule.matchers)}")]
        value = f"{rule.agg} by ({', '.join(rule.by)}) ({sel})" if rule.by is not None else sel
        return [_base(rule, _hysteresis(rule, value))]
    if isinstance(rule, RateRule):
        sel = _selector(rule.metric, rule.matchers)
        value = f"increase({sel}[{format_duration(rule.window)}])"
        if rule.per != rule.window:
            value = f"({value} * {_num(rule.per / rule.window)})"
        return [_base(rule, _hysteresis(rule, value))]
    if isinstance(rule, AbsentRule):
        sel = _selector(rule.metric, rule.matchers)
        seen = f"max_over_time({sel}[{format_duration(rule.lookback)}])"
        now = f"max_over_time({sel}[{format_duration(rule.after)}])"
        if rule.by is not None:
            by = ", ".join(rule.by)
            seen, now = f"max by ({by}) ({seen})", f"max by ({by}) ({now})"
        return [_base(rule, f"{seen} unless {now}")]
    if isinstance(rule, XidRule):
        out = []
        window = format_duration(rule.window)
        for code in rule.selected():
            sel = _selector("fleetwatch_gpu_xid_errors_total", rule.matchers, [f'xid="{code}"'])
            # A counter series born inside the window (a GPU's first XID of this code) has no earlier sample
            # for increase(); count it through "present now, absent `window` ago".
            expr = f"(increase({sel}[{window}]) > 0) or ({sel} + 0 unless {sel} offset {window})"
            one = _base(rule, expr, xid_annotations(code))
            one["labels"].setdefault("xid", str(code))     # the series' own label too: keeps promtool's lint happy
            out.append(one)
        return out
    if isinstance(rule, ForecastRule):
        budget = rule.budget if rule.budget is not None else power_budget_watts
        qs = [q for q in FORECAST_QUANTILES if float(q) <= 1.0 - rule.probability + 1e-9]
        hs = [h for h in FORECAST_HORIZONS if parse_duration(h) <= rule.within]
        if not qs or not hs:
            return []
        extra = [f'quantile=~"{"|".join(qs)}"', f'horizon=~"{"|".join(hs)}"']
        spec = BY_NAME.get(rule.metric)        # the forecast's labels are the "scope" entity's until it is catalogued
        by = ", ".join(ENTITY_LABELS[spec.entity if spec is not None else "scope"])
        forecast = f"max by ({by}) ({_selector(rule.metric, rule.matchers, extra)})"
        if budget is not None:
            return [_base(rule, f"{forecast} > {_num(budget)}")]
        # no budget given: the one the energy forecaster exports for the same scope
        limit = f"max by ({by}) ({_selector(BUDGET_METRIC, rule.matchers)})"
        return [_base(rule, f"{forecast} > {limit}")]
    raise TypeError(f"unknown rule type {type(rule).__name__}")


def export(rules: Sequence[Rule], power_budget_watts: float | None = None) -> tuple[dict[str, Any], list[str]]:
    """A Prometheus rule-file document for the rules, and notes on rules left out."""
    out: list[dict[str, Any]] = []
    notes: list[str] = []
    for r in rules:
        got = rule_to_prometheus(r, power_budget_watts)
        if not got:
            notes.append(f"{r.alert}: left out: its quantiles or horizons match none of the usual label values")
        out += got
    return {"groups": [{"name": GROUP, "rules": out}]}, notes


HEADER = ("# Generated by `fleetwatch rules export` from fleetwatch's alert rules: do not edit, regenerate.\n"
          "# Check with: promtool check rules FILE\n")


def render_yaml(doc: dict[str, Any], notes: Sequence[str] = ()) -> str:
    """The rule file's text (a header, then YAML)."""
    head = HEADER + "".join(f"# {n}\n" for n in notes)
    return head + yaml.safe_dump(doc, sort_keys=False, width=1000, allow_unicode=True)
