"""The alert engine: evaluates rules over a series view, keeping each alert's state and fingerprint.

States follow Prometheus: a series whose condition holds is `pending` until it has held for the rule's
`for`, then `firing`; when the condition stops holding a pending alert disappears (inactive) and a firing
one becomes `resolved` (kept and re-sent for `resolved_keep_s`, as Prometheus does, so every Alertmanager
hears of it). Evaluation is vectorised per metric: each metric is read from the view once per
evaluation, whatever number of rules use it.
"""

from __future__ import annotations

import logging
import math
import operator
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from collector.batch import Batch, Entity
from collector.catalogue import BY_NAME, ENTITY_LABELS
from collector.series_view import SeriesKey, SeriesView, view_entities
from collector.xid import lookup as xid_lookup

from .rules import (
    AbsentRule,
    ForecastRule,
    Matcher,
    RateRule,
    Rule,
    ThresholdRule,
    XidRule,
    parse_duration,
    render,
)

log = logging.getLogger("fleetwatch.alerts")
NS = 10**9
State = Literal["pending", "firing", "resolved"]
STATES: tuple[State, ...] = ("pending", "firing", "resolved")
_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}
PROCESS = Entity(kind="process", node="", id="fleetwatch", labels=())
BUDGET_METRIC = "fleetwatch_power_budget_watts"      # published by the energy forecaster (predictor/energy)

# FNV-1a 64, as Prometheus' model.LabelSet.Fingerprint (prometheus/common model/signature.go).
_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEP = 0xFF


def fingerprint(labels: dict[str, str]) -> str:
    """Alertmanager's fingerprint of a label set: FNV-1a 64 over sorted name/value pairs, 16 hex digits."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for b in part.encode():
                h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
            h = ((h ^ _SEP) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


@dataclass(slots=True)
class Alert:
    """One alert instance: a rule's alert for one series (label set)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    state: State
    value: float
    active_at_ns: int                 # when the condition began to hold (startsAt)
    fired_at_ns: int | None = None
    resolved_at_ns: int | None = None
    keep_since_ns: int | None = None  # first evaluation without the condition while keep_firing_for holds it
    _fingerprint: str | None = None

    @property
    def name(self) -> str:
        """The alert name."""
        return self.labels["alertname"]

    @property
    def fingerprint(self) -> str:
        """Alertmanager's fingerprint of the labels (computed on first use: most alerts never leave)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.labels)
        return self._fingerprint


@dataclass(slots=True)
class _Candidates:
    """What one rule found this evaluation: series identities and labels, values, and which hold."""

    idents: Sequence[Hashable]         # a series' identity within its rule (cheap: a SeriesKey or a group tuple)
    labels: Sequence[dict[str, str]]   # its labels (built only for the series that hold)
    values: np.ndarray
    fire: np.ndarray                   # bool: the condition holds
    keep: np.ndarray | None = None     # bool: the hysteresis condition (stays active) holds
    annotations: list[dict[str, str]] | None = None     # extra per-series annotations (XID catalogue)


@dataclass(slots=True)
class _Snapshot:
    """One metric's series at one time: keys, values and (lazily) their labels and label columns."""

    metric: str
    keys: list[SeriesKey]
    values: np.ndarray
    row_of: Callable[[SeriesKey], tuple[str, ...]]
    names: tuple[str, ...]
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    grouped: dict[tuple[str, ...], tuple[list[tuple[str, ...]], np.ndarray]] = field(default_factory=dict)
    _rows: list[tuple[str, ...]] | None = None

    @property
    def rows(self) -> list[tuple[str, ...]]:
        """Every series' label values (names order), built on first use."""
        if self._rows is None:
            self._rows = [self.row_of(k) for k in self.keys]
        return self._rows

    def column(self, name: str) -> np.ndarray:
        """Values of one label over the series (object array; '' where the label is absent)."""
        col = self.columns.get(name)
        if col is None:
            if name in self.names:
                i = self.names.index(name)
                col = np.array([r[i] for r in self.rows], dtype=object)
            else:
                col = np.full(len(self.keys), "", dtype=object)
            self.columns[name] = col
        return col

    def groups(self, by: tuple[str, ...]) -> tuple[list[tuple[str, ...]], np.ndarray]:
        """Group keys for labels `by`, and each series' group index (computed once per snapshot)."""
        got = self.grouped.get(by)
        if got is None:
            cols = [self.column(n) for n in by]
            index: dict[tuple[str, ...], int] = {}
            gid = np.fromiter((index.setdefault(k, len(index)) for k in zip(*cols, strict=True)), dtype=np.int64,
                              count=len(self.keys)) if cols else np.zeros(len(self.keys), dtype=np.int64)
            if not cols and len(self.keys):
                index[()] = 0
            got = self.grouped[by] = (list(index), gid)
        return got

    def labels(self, i: int) -> dict[str, str]:
        """The labels of series i."""
        row = self._rows[i] if self._rows is not None else self.row_of(self.keys[i])
        return dict(zip(self.names, row, strict=True))


@dataclass(slots=True)
class EvalStats:
    """What one evaluation did."""

    duration_s: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


class Engine:
    """Evaluates a rule list over a series view; holds alert states between evaluations."""

    def __init__(self, rules: Sequence[Rule], *, power_budget_watts: float | None = None,
                 resolved_keep_s: float = 900.0, stale_s: float = 300.0) -> None:
        self.rules = list(rules)
        self.power_budget_watts = power_budget_watts
        self.resolved_keep_ns = int(resolved_keep_s * NS)
        self.stale_s = stale_s
        # per rule index: {identity (sorted series label items): Alert}
        self._state: list[dict[tuple[tuple[str, str], ...], Alert]] = [{} for _ in self.rules]
        self.evaluations = 0
        self.rule_errors: dict[str, int] = {}
        self.last = EvalStats()
        self._failing: set[int] = set()
        self._label_cache: dict[tuple[str, SeriesKey], tuple[str, ...]] = {}
        self._prev_snaps: dict[str, list[_Snapshot]] = {}

    # --- evaluation ---------------------------------------------------------------------------------

    def evaluate(self, view: SeriesView, now_ns: int) -> list[Alert]:
        """One evaluation at now_ns; returns every alert now pending, firing or recently resolved."""
        t0 = time.perf_counter()
        stats = EvalStats()
        snaps: dict[tuple[Any, ...], _Snapshot] = {}
        entities = view_entities(view)
        for i, rule in enumerate(self.rules):
            unknown = [m for m in (getattr(rule, "metric", None), getattr(rule, "value_metric", None))
                       if m is not None and m not in BY_NAME]
            if unknown:
                stats.skipped[rule.alert] = f"metric {unknown[0]} is not in this fleetwatch's catalogue"
                continue
            try:
                cand = self._candidates(rule, view, now_ns, snaps, entities)
            except Exception as err:        # one broken rule or view answer must not stop the others
                stats.errors[rule.alert] = f"{type(err).__name__}: {err}"
                self.rule_errors[rule.alert] = self.rule_errors.get(rule.alert, 0) + 1
                if i not in self._failing:
                    log.warning("alert rule %d (%s) failed: %s", i + 1, rule.alert, err)
                    self._failing.add(i)
                continue
            if i in self._failing:
                log.info("alert rule %d (%s) evaluates again", i + 1, rule.alert)
                self._failing.discard(i)
            if cand is None:
                stats.skipped[rule.alert] = "no power budget (alerts.power_budget_watts, energy.budget_watts)"
                continue
            self._advance(i, rule, cand, now_ns)
        self.evaluations += 1
        stats.duration_s = time.perf_counter() - t0      # a duration, not data time: the wall clock is right
        self.last = stats
        return self.alerts()

    def alerts(self) -> list[Alert]:
        """Every alert now pending, firing or recently resolved, in rule order."""
        return [a for st in self._state for a in st.values()]

    def _advance(self, i: int, rule: Rule, cand: _Candidates, now_ns: int) -> None:
        state = self._state[i]
        for_ns = int(rule.for_ * NS)
        keep_for_ns = int(rule.keep_firing_for * NS)
        holds = cand.fire if cand.keep is None else (cand.fire | cand.keep)
        seen: set[Hashable] = set()
        for j in np.flatnonzero(holds):
            ident = cand.idents[j]
            a = state.get(ident)
            if not cand.fire[j] and (a is None or a.state == "resolved"):
                continue                # inside the hysteresis band but not active: does not start an alert
            value = float(cand.values[j])
            if a is None or a.state == "resolved":
                series = cand.labels[j]
                a = self._new_alert(rule, series, value, now_ns)
                extra = cand.annotations[j] if cand.annotations else None
                a.annotations = self._annotations(rule, series, value, extra)
                state[ident] = a
            elif value != a.value and rule.annotations:     # templates may show $value: render again
                a.annotations = self._annotations(rule, cand.labels[j], value,
                                                  cand.annotations[j] if cand.annotations else None)
            a.value = value
            a.keep_since_ns = None
            if a.state == "pending" and now_ns - a.active_at_ns >= for_ns:
                a.state, a.fired_at_ns = "firing", now_ns
            seen.add(ident)
        for ident in [k for k in state if k not in seen]:
            a = state[ident]
            if a.state == "pending":
                del state[ident]
            elif a.state == "firing":
                # as Prometheus: kept firing for keep_firing_for from the first evaluation without the condition
                if a.keep_since_ns is None:
                    a.keep_since_ns = now_ns
                if keep_for_ns and now_ns - a.keep_since_ns < keep_for_ns:
                    continue
                a.state, a.resolved_at_ns = "resolved", now_ns
            elif now_ns - (a.resolved_at_ns or now_ns) >= self.resolved_keep_ns:
                del state[ident]

    def _new_alert(self, rule: Rule, series: dict[str, str], value: float, now_ns: int) -> Alert:
        labels = dict(series)
        for k, text in rule.labels.items():
            labels[k] = render(text, series, value)
        labels["alertname"] = rule.alert
        labels = {k: v for k, v in labels.items() if v != ""}      # an empty label is no label (Prometheus)
        return Alert(labels=labels, annotations={}, state="pending", value=value, active_at_ns=now_ns)

    @staticmethod
    def _annotations(rule: Rule, series: dict[str, str], value: float,
                     extra: dict[str, str] | None) -> dict[str, str]:
        out = {k: render(text, series, value) for k, text in rule.annotations.items()}
        if extra:
            out.update(extra)
        return out

    # --- reading the view ---------------------------------------------------------------------------

    def _labels_of(self, metric: str, key: SeriesKey, entities: dict[SeriesKey, Entity]) -> tuple[str, ...]:
        ck = (metric, key)
        row = self._label_cache.get(ck)
        if row is None:
            spec = BY_NAME[metric]
            ent = entities.get(SeriesKey(key.node, key.entity))
            names = ENTITY_LABELS[spec.entity]
            if ent is not None and ent.kind == spec.entity:
                base = ent.labels
            else:       # identity unknown to the view: what the key itself says
                base = tuple(key.node if n == "node" else key.entity if n in ("uuid", "device", "zone", "source")
                             else "" for n in names)
            extra = key.extra + ("",) * (len(spec.labels) - len(key.extra))
            row = base + extra[:len(spec.labels)]
            if ent is not None:
                self._label_cache[ck] = row
        return row

    def _snapshot(self, view: SeriesView, metric: str, at_ns: int, stale_s: float,
                  snaps: dict[tuple[Any, ...], Any], entities: dict[SeriesKey, Entity]) -> _Snapshot:
        ck = ("latest", metric, at_ns, stale_s)
        snap = snaps.get(ck)
        if snap is None:
            latest = view.latest(metric, at_ns, stale_s=stale_s)
            snap = _Snapshot(metric, list(latest), np.fromiter(latest.values(), dtype=float, count=len(latest)),
                             lambda k: self._labels_of(metric, k, entities), BY_NAME[metric].labelnames)
            self._reuse_labels(snap)
            snaps[ck] = snap
        return snap

    def _reuse_labels(self, snap: _Snapshot) -> None:
        """Share label rows, columns and groups with the last snapshot of the same series (the usual case:
        the window hands back the same key objects, so the list comparison is an identity check)."""
        prevs = self._prev_snaps.setdefault(snap.metric, [])
        for prev in prevs:
            if prev.keys == snap.keys:
                snap._rows, snap.columns, snap.grouped = prev.rows, prev.columns, prev.grouped
                return
        prevs.insert(0, snap)
        del prevs[4:]           # one metric is read at a few staleness limits (latest, absent rules)

    @staticmethod
    def _mask(snap: _Snapshot, matchers: Sequence[Matcher], snaps_cache: dict[tuple[Any, ...], Any]) -> np.ndarray:
        mask = np.ones(len(snap.keys), dtype=bool)
        for m in matchers:
            ck = ("mask", snap.metric, id(snap), m)
            sub = snaps_cache.get(ck)
            if sub is None:
                col = snap.column(m.name)
                if m.op == "=":
                    sub = col == m.value
                elif m.op == "!=":
                    sub = col != m.value
                else:
                    uniq = {v: m.test(v) for v in set(col.tolist())}
                    sub = np.fromiter((uniq[v] for v in col), dtype=bool, count=len(col))
                snaps_cache[ck] = sub
            mask &= np.asarray(sub, dtype=bool)
        return mask

    def _candidates(self, rule: Rule, view: SeriesView, now_ns: int, snaps: dict[tuple[Any, ...], Any],
                    entities: dict[SeriesKey, Entity]) -> _Candidates | None:
        if isinstance(rule, ThresholdRule):
            snap = self._snapshot(view, rule.metric, now_ns, self.stale_s, snaps, entities)
            idx = np.flatnonzero(self._mask(snap, rule.matchers, snaps) & ~np.isnan(snap.values))
            if rule.value_metric is not None:
                limits = self._limits(view, rule.value_metric, snap, idx, now_ns, snaps, entities)
                return _compare_series(rule, snap, idx, snap.values[idx], limits)
            if rule.by is not None:
                groups, labels, values = _aggregate(snap, idx, snap.values[idx], rule.by, rule.agg)
                return _compare(rule, groups, labels, values)
            return _compare_lazy(rule, snap, idx, snap.values[idx])
        if isinstance(rule, RateRule):
            return self._rate(rule, view, now_ns, snaps, entities)
        if isinstance(rule, AbsentRule):
            return self._absent(rule, view, now_ns, snaps, entities)
        if isinstance(rule, XidRule):
            return self._xid(rule, view, now_ns, entities)
        if isinstance(rule, ForecastRule):
            return self._forecast(rule, view, now_ns, snaps, entities)
        raise TypeError(f"unknown rule type {type(rule).__name__}")

    def _limits(self, view: SeriesView, metric: str, snap: _Snapshot, idx: np.ndarray, now_ns: int,
                snaps: dict[tuple[Any, ...], Any], entities: dict[SeriesKey, Entity]) -> np.ndarray:
        """The latest value of `metric` for each series `idx` of `snap`, matched by series key (PromQL's
        one-to-one matching: the same labels); NaN where `metric` has no such series."""
        other = self._snapshot(view, metric, now_ns, self.stale_s, snaps, entities)
        ck = ("by-key", metric, id(other))
        by_key = snaps.get(ck)
        if by_key is None:
            by_key = snaps[ck] = {(k.node, k.entity, k.extra): float(v)
                                  for k, v in zip(other.keys, other.values, strict=True)}
        keys = snap.keys
        return np.fromiter((by_key.get((keys[i].node, keys[i].entity, keys[i].extra), math.nan) for i in idx),
                           dtype=float, count=len(idx))

    def _rate(self, rule: RateRule, view: SeriesView, now_ns: int, snaps: dict[tuple[Any, ...], Any],
              entities: dict[SeriesKey, Entity]) -> _Candidates:
        ck = ("rate", rule.metric, now_ns, rule.window)
        got = snaps.get(ck)
        if got is None:
            step = max(1.0, rule.window / 60.0)
            # stale over the whole window: each grid point carries the counter's last value forward
            frame = view.range(rule.metric, now_ns - int(rule.window * NS), now_ns, step,
                               stale_s=rule.window + step)
            v = frame.values
            if v.shape[1] >= 2:
                d = np.diff(v, axis=1)
                inc = np.where(d < 0, v[:, 1:], d)              # a drop is a counter reset: count from zero
                inc = np.where(np.isnan(inc), 0.0, inc)
                seen = (~np.isnan(v)).sum(axis=1) >= 2
                total = np.where(seen, inc.sum(axis=1), np.nan)
            else:
                total = np.full(len(frame.keys), np.nan)
            metric = rule.metric
            got = _Snapshot(metric, frame.keys, total, lambda k: self._labels_of(metric, k, entities),
                            BY_NAME[metric].labelnames)
            self._reuse_labels(got)
            snaps[ck] = got
        rate = got.values * (rule.per / rule.window)
        idx = np.flatnonzero(self._mask(got, rule.matchers, snaps) & ~np.isnan(rate))
        return _compare_lazy(rule, got, idx, rate[idx])

    def _absent(self, rule: AbsentRule, view: SeriesView, now_ns: int, snaps: dict[tuple[Any, ...], Any],
                entities: dict[SeriesKey, Entity]) -> _Candidates:
        # seen: a sample within the lookback; present: one within `after`; absent: seen but not present
        seen = self._snapshot(view, rule.metric, now_ns, rule.lookback, snaps, entities)
        now = self._snapshot(view, rule.metric, now_ns, rule.after, snaps, entities)
        ck = ("gone", rule.metric, now_ns, rule.after, rule.lookback)
        gone = snaps.get(ck)
        if gone is None:
            present = {(k.node, k.entity, k.extra) for k in now.keys}      # tuples hash in C
            gone = snaps[ck] = np.fromiter(((k.node, k.entity, k.extra) not in present for k in seen.keys),
                                           dtype=bool, count=len(seen.keys))
        idx = np.flatnonzero(self._mask(seen, rule.matchers, snaps))
        if rule.by is not None:
            # a group is absent when none of its series reports (min over its members of "absent")
            groups, labels, values = _aggregate(seen, idx, gone[idx].astype(float), rule.by, "min")
            return _Candidates(groups, labels, values, values >= 1.0)
        values = np.ones(len(idx))
        return _Candidates(_LazyKeys(seen, idx), _LazyLabels(seen, idx), values, gone[idx])

    def _xid(self, rule: XidRule, view: SeriesView, now_ns: int, entities: dict[SeriesKey, Entity]) -> _Candidates:
        codes = set(rule.selected())
        counts: dict[tuple[str, str, int], int] = {}
        for e in view.events(now_ns - int(rule.window * NS) + 1, now_ns + 1, kinds=["xid"]):   # (now-w, now]
            if e.code in codes:
                k = (e.node, e.entity, e.code)
                counts[k] = counts.get(k, 0) + 1
        labels: list[dict[str, str]] = []
        notes: list[dict[str, str]] = []
        values = []
        for (node, entity, code), n in sorted(counts.items()):
            ent = entities.get(SeriesKey(node, entity))
            series = (dict(zip(ENTITY_LABELS[ent.kind], ent.labels, strict=True)) if ent is not None
                      else {"node": node, "uuid": entity})
            series["xid"] = str(code)
            if not all(m.test(series.get(m.name, "")) for m in rule.matchers):
                continue
            labels.append(series)
            notes.append(xid_annotations(code))
            values.append(float(n))
        vals = np.asarray(values, dtype=float)
        idents = [tuple(sorted(x.items())) for x in labels]
        return _Candidates(idents, labels, vals, np.ones(len(vals), dtype=bool), annotations=notes)

    def _forecast(self, rule: ForecastRule, view: SeriesView, now_ns: int, snaps: dict[tuple[Any, ...], Any],
                  entities: dict[SeriesKey, Entity]) -> _Candidates | None:
        budget = rule.budget if rule.budget is not None else self.power_budget_watts
        if budget is None and BUDGET_METRIC not in BY_NAME:
            return None
        snap = self._snapshot(view, rule.metric, now_ns, self.stale_s, snaps, entities)
        mask = self._mask(snap, rule.matchers, snaps) & ~np.isnan(snap.values)
        q_max = 1.0 - rule.probability + 1e-9
        ok = np.zeros(len(snap.keys), dtype=bool)
        qs, hs = snap.column("quantile"), snap.column("horizon")
        for i in np.flatnonzero(mask):
            q, h = _float_or_nan(qs[i]), _duration_or_nan(hs[i])
            ok[i] = q <= q_max and h <= rule.within
        idx = np.flatnonzero(ok)
        by = list(ENTITY_LABELS[BY_NAME[rule.metric].entity])
        groups, labels, values = _aggregate(snap, idx, snap.values[idx], by, "max")
        if budget is not None:
            limits = np.full(len(groups), budget)
        else:
            # no budget configured here: the one the energy forecaster publishes for the same scope
            bsnap = self._snapshot(view, BUDGET_METRIC, now_ns, self.stale_s, snaps, entities)
            bkeys, bvals = _aggregate(bsnap, np.arange(len(bsnap.keys)), bsnap.values, by, "max")[::2]
            known = dict(zip(bkeys, bvals, strict=True))
            limits = np.array([known.get(g, np.nan) for g in groups], dtype=float)
        return _Candidates(groups, labels, values, values > limits)

    # --- self-metrics --------------------------------------------------------------------------------

    def self_batch(self, ts_ns: int, source: str = "alerts") -> Batch:
        """The engine's own metrics: evaluation duration and count, rule errors, alerts by state."""
        b = Batch(source, ts_ns)
        b.add("fleetwatch_alerts_evaluation_duration_seconds", PROCESS, self.last.duration_s)
        b.add("fleetwatch_alerts_evaluations_total", PROCESS, float(self.evaluations))
        b.add("fleetwatch_alerts_rules", PROCESS, float(len(self.rules)))
        for name in sorted({r.alert for r in self.rules}):
            b.add("fleetwatch_alerts_rule_errors_total", PROCESS, float(self.rule_errors.get(name, 0)), (name,))
        counts = dict.fromkeys(STATES, 0)
        for a in self.alerts():
            counts[a.state] += 1
        for st, n in counts.items():
            b.add("fleetwatch_alerts_instances", PROCESS, float(n), (st,))
        return b


def xid_annotations(code: int) -> dict[str, str]:
    """The catalogue's meaning and action of an XID, as alert annotations."""
    info = xid_lookup(code)
    if info is None:
        return {"xid_meaning": f"XID {code} is not in NVIDIA's catalogue",
                "xid_action": "not catalogued: collect nvidia-bug-report.sh output and check NVIDIA's XID list"}
    action = info.immediate_action or "none given"
    if info.investigatory_action:
        action += f"; investigate: {info.investigatory_action}"
    return {"xid_meaning": f"{info.mnemonic}: {info.description}", "xid_action": action}


def _float_or_nan(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _duration_or_nan(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        return math.nan


def _aggregate(snap: _Snapshot, idx: np.ndarray, values: np.ndarray, by: Sequence[str],
               agg: str) -> tuple[list[tuple[str, ...]], list[dict[str, str]], np.ndarray]:
    """Aggregate series `idx` into groups by the labels `by` (PromQL `agg by (...)`): keys, labels, values."""
    all_keys, all_gid = snap.groups(tuple(by))
    used, gid = np.unique(all_gid[idx], return_inverse=True)
    g = len(used)
    if agg == "sum":
        out = np.bincount(gid, weights=values, minlength=g)
    elif agg == "count":
        out = np.bincount(gid, minlength=g).astype(float)
    elif agg == "avg":
        out = np.bincount(gid, weights=values, minlength=g) / np.maximum(1, np.bincount(gid, minlength=g))
    else:
        out = np.full(g, -np.inf if agg == "max" else np.inf)
        (np.maximum if agg == "max" else np.minimum).at(out, gid, values)
    keys = [all_keys[int(u)] for u in used]
    labels = [{n: v for n, v in zip(by, key, strict=True) if v != ""} for key in keys]
    return keys, labels, out


def _compare(rule: ThresholdRule | RateRule, idents: Sequence[Hashable], labels: Sequence[dict[str, str]],
             values: np.ndarray) -> _Candidates:
    if rule.value is None:
        raise TypeError(f"{rule.alert}: a per-series threshold (value_metric) needs _compare_series")
    op = _OPS[rule.op]
    fire = np.asarray(op(values, rule.value), dtype=bool)
    keep = np.asarray(op(values, rule.clear), dtype=bool) if rule.clear is not None else None
    return _Candidates(idents, labels, values, fire, keep)


class _LazyLabels(Sequence[dict[str, str]]):
    """Series labels built only for the series an alert touches (most series never hold)."""

    def __init__(self, snap: _Snapshot, idx: np.ndarray) -> None:
        self.snap, self.idx = snap, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, j: Any) -> Any:
        return self.snap.labels(int(self.idx[j]))


class _LazyKeys(Sequence[SeriesKey]):
    """The SeriesKeys of series `idx` of a snapshot, looked up on use."""

    def __init__(self, snap: _Snapshot, idx: np.ndarray) -> None:
        self.snap, self.idx = snap, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, j: Any) -> Any:
        k = self.snap.keys[int(self.idx[j])]
        return (k.node, k.entity, k.extra)      # a plain tuple: hashed in C, unlike the dataclass


def _compare_lazy(rule: ThresholdRule | RateRule, snap: _Snapshot, idx: np.ndarray,
                  values: np.ndarray) -> _Candidates:
    return _compare(rule, _LazyKeys(snap, idx), _LazyLabels(snap, idx), values)


def _compare_series(rule: ThresholdRule, snap: _Snapshot, idx: np.ndarray, values: np.ndarray,
                    limits: np.ndarray) -> _Candidates:
    """Each series against its own threshold (value_metric); a series without one never holds (`!=` too)."""
    with np.errstate(invalid="ignore"):
        fire = np.asarray(_OPS[rule.op](values, limits), dtype=bool) & ~np.isnan(limits)
    return _Candidates(_LazyKeys(snap, idx), _LazyLabels(snap, idx), values, fire)
