"""Alert rules: the YAML rule file as pydantic models, and its loader with errors naming the rule and field.

A rule file is a mapping with one key, `rules`, a list of rules. Each rule has an `alert` name, a `kind`
and the fields of that kind:

- ``threshold``: the latest value of `metric` compared with `value` (`op`); `clear` adds hysteresis (a
  firing alert stays firing until the value passes `clear`); `by` + `agg` aggregate series first. Instead
  of a number, `value_metric` names a catalogue metric with the same labels: each series is compared with
  that metric's series of the same labels (a per-series threshold, such as the failure predictor's
  fleetwatch_gpu_failure_risk_threshold, which carries its own hysteresis); a series without one does not fire;
- ``rate``: the increase of a counter over `window`, scaled to `per` (e.g. correctable ECC errors per hour);
- ``absent``: a series seen within `lookback` has not reported for `after` (`by: [node]`: a whole node);
- ``xid``: an XID of one of `codes` (or of catalogue `severity`) within `window`; the catalogue's meaning
  and action go into the annotations;
- ``forecast``: the power forecast says the budget is exceeded within `within` with at least `probability`.

Common fields: `for` (pending time before firing), `keep_firing_for`, `matchers` (PromQL-style label
matchers such as ``scope="fleet"`` or ``device!~"lo|veth.*"``), `labels` and `annotations` (templates with
``{{ $labels.NAME }}``, ``{{ $value }}``, ``{{ $value | humanize }}`` and ``{{ printf "%.1f" $value }}``,
the subset of Prometheus' Go templates that means the same in both places).
"""

from __future__ import annotations

import math
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from collector.catalogue import BY_NAME
from collector.xid import catalogue as xid_catalogue

SEVERITIES = ("critical", "warning", "info")
OPS = (">", ">=", "<", "<=", "==", "!=")
AGGS = ("sum", "max", "min", "avg", "count")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')
_TEMPLATE = re.compile(r"\{\{(.*?)\}\}", re.S)
_T_LABEL = re.compile(r"^\s*\$labels\.([A-Za-z_][A-Za-z0-9_]*)\s*$")
_T_VALUE = re.compile(r"^\s*\$value\s*$")
_T_HUMANIZE = re.compile(r"^\s*\$value\s*\|\s*humanize\s*$")
_T_PRINTF = re.compile(r'^\s*printf\s+"%\.(\d)f"\s+\$value\s*$')
DEFAULTS_RESOURCE = "defaults.yml"
_DURATION = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")
_DURATION_S = (604800.0, 86400.0, 3600.0, 60.0, 1.0, 0.001)


def parse_duration(v: Any) -> float:
    """A Prometheus duration ('90s', '5m', '1h30m', '1d', '250ms') or a number of seconds → seconds."""
    if isinstance(v, bool):
        raise ValueError(f"expected a duration like 5m, got {v!r}")
    if isinstance(v, int | float):
        return float(v)
    text = str(v).strip()
    m = _DURATION.match(text)
    if not text or not m:
        raise ValueError(f"expected a duration like 30s, 5m or 1h30m, got {v!r}")
    return sum(float(g) * k for g, k in zip(m.groups(), _DURATION_S, strict=True) if g)


def format_duration(seconds: float) -> str:
    """Seconds → a Prometheus duration string ('1h30m', '45s', '0s')."""
    ms = round(seconds * 1000)
    if ms == 0:
        return "0s"
    out = ""
    for unit, k in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= k:
            out += f"{ms // k}{unit}"
            ms %= k
    return out


Duration = Annotated[float, BeforeValidator(parse_duration)]


class RuleError(ValueError):
    """An invalid rule file; the message names the file, the rule and the field."""


class Matcher(BaseModel):
    """One label matcher: name, op (= != =~ !~) and value (a regex for =~ and !~, anchored as in PromQL)."""

    model_config = ConfigDict(frozen=True)
    name: str
    op: Literal["=", "!=", "=~", "!~"]
    value: str

    def promql(self) -> str:
        """The matcher in PromQL syntax."""
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'

    def test(self, value: str) -> bool:
        """Whether a label value matches."""
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = re.fullmatch(self.value, value) is not None
        return hit if self.op == "=~" else not hit


def parse_matcher(text: str) -> Matcher:
    """'name="value"', 'name!~"re"', ... → Matcher; ValueError says what is wrong."""
    m = _MATCHER.match(text)
    if not m:
        raise ValueError(f'expected a matcher like scope="fleet" or device!~"lo|veth.*", got {text!r}')
    name, op, raw = m.groups()
    value = re.sub(r"\\(.)", r"\1", raw)
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(f"bad regular expression {value!r}: {err}") from None
    return Matcher(name=name, op=op, value=value)  # type: ignore[arg-type]


def check_template(text: str) -> None:
    """Raise ValueError unless every {{ ... }} is one of the supported template forms."""
    if text.count("{{") != text.count("}}"):
        raise ValueError(f"unbalanced {{{{ }}}} in {text!r}")
    for m in _TEMPLATE.finditer(text):
        expr = m.group(1)
        if not any(p.match(expr) for p in (_T_LABEL, _T_VALUE, _T_HUMANIZE, _T_PRINTF)):
            raise ValueError(f"unsupported template {{{{{expr}}}}}: use {{{{ $labels.NAME }}}}, {{{{ $value }}}}, "
                             f"{{{{ $value | humanize }}}} or {{{{ printf \"%.1f\" $value }}}}")


def humanize(v: float) -> str:
    """Prometheus' `humanize`: SI prefixes and 4 significant digits (1234 → 1.234k, 0.05 → 50m)."""
    if v == 0 or not math.isfinite(v):
        return f"{v:.4g}"
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return f"{v:.4g}{prefix}"


def render(text: str, labels: dict[str, str], value: float) -> str:
    """Expand the supported templates of `text` with a series' labels and value."""
    def one(m: re.Match[str]) -> str:
        expr = m.group(1)
        if lm := _T_LABEL.match(expr):
            return labels.get(lm.group(1), "")
        if _T_VALUE.match(expr):
            return f"{value:g}" if math.isfinite(value) else str(value)
        if _T_HUMANIZE.match(expr):
            return humanize(value)
        if pm := _T_PRINTF.match(expr):
            return f"{value:.{int(pm.group(1))}f}"
        return m.group(0)
    return _TEMPLATE.sub(one, text)


class _Rule(BaseModel):
    """Fields every rule has."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    alert: str
    for_: Duration = Field(default=0.0, alias="for")
    keep_firing_for: Duration = 0.0
    matchers: list[Matcher] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict, validate_default=True)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("alert")
    @classmethod
    def _alert(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"must be a Prometheus name ([A-Za-z_][A-Za-z0-9_]*), got {v!r}")
        return v

    @field_validator("for_", "keep_firing_for")
    @classmethod
    def _nonneg(cls, v: float) -> float:
        if v < 0 or not math.isfinite(v):
            raise ValueError(f"must be a duration >= 0, got {v}")
        return v

    @field_validator("matchers", mode="before")
    @classmethod
    def _matchers(cls, v: Any) -> Any:
        if isinstance(v, dict):        # {name: value} is shorthand for name="value"
            return [Matcher(name=str(k), op="=", value=str(x)) for k, x in v.items()]
        if isinstance(v, list):
            return [parse_matcher(x) if isinstance(x, str) else x for x in v]
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for k, text in v.items():
            if not _NAME.match(k) or k.startswith("__"):
                raise ValueError(f"bad label name {k!r}")
            check_template(text)
        sev = v.get("severity", "warning")
        if sev not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, got {sev!r}")
        return {"severity": "warning", **v}

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, v: dict[str, str]) -> dict[str, str]:
        for k, text in v.items():
            if not _NAME.match(k):
                raise ValueError(f"bad annotation name {k!r}")
            check_template(text)
        return v

    @property
    def severity(self) -> str:
        """The rule's severity label."""
        return self.labels.get("severity", "warning")


def _check_metric(name: str, want_type: str | None = None, info: ValidationInfo | None = None) -> str:
    spec = BY_NAME.get(name)
    if spec is None:
        if info is not None and info.context and info.context.get("allow_unknown_metrics") and _NAME.match(name):
            return name         # the built-in rules may name a metric of a component not installed here
        raise ValueError(f"unknown metric {name!r}: not in fleetwatch's catalogue")
    if want_type is not None and spec.type != want_type:
        raise ValueError(f"{name} is a {spec.type}, this rule kind needs a {want_type}")
    return name


def _field_error(model: BaseModel, name: str, message: str) -> ValidationError:
    """A validation error located at field `name` (a model validator's own errors carry no field)."""
    return ValidationError.from_exception_data(type(model).__name__, [InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=(name,), input=getattr(model, name, None))])


class _Compared(_Rule):
    """A rule that compares a number with a threshold, with optional hysteresis."""

    metric: str
    op: Literal[">", ">=", "<", "<=", "==", "!="] = ">"
    value: float | None = None       # required except where a subclass offers another threshold (value_metric)
    clear: float | None = None       # hysteresis: a firing alert clears only once the value passes this

    @field_validator("value", "clear")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError(f"must be a finite number, got {v}")
        return v

    @model_validator(mode="after")
    def _hysteresis(self) -> _Compared:
        if self.value is None:
            if getattr(self, "value_metric", None) is None:
                raise _field_error(self, "value", "give the threshold to compare with (a number), or value_metric: "
                                   "a metric with the same labels holding one per series")
            return self             # ThresholdRule checks value_metric with its own fields
        if self.clear is None:
            return self
        if self.op in ("==", "!="):
            raise ValueError(f"clear: hysteresis needs an ordering comparison (> >= < <=), not {self.op}")
        if self.op in (">", ">=") and self.clear > self.value:
            raise ValueError(f"clear: for {self.op} {self.value:g} the clear threshold must be <= {self.value:g}, "
                             f"got {self.clear:g}")
        if self.op in ("<", "<=") and self.clear < self.value:
            raise ValueError(f"clear: for {self.op} {self.value:g} the clear threshold must be >= {self.value:g}, "
                             f"got {self.clear:g}")
        return self


class ThresholdRule(_Compared):
    """The latest value of a metric (optionally aggregated `by` labels) compared with a threshold: a number
    (`value`) or, series by series, the latest value of another metric with the same labels (`value_metric`)."""

    kind: Literal["threshold"]
    value_metric: str | None = None
    by: list[str] | None = None
    agg: Literal["sum", "max", "min", "avg", "count"] = "max"

    @field_validator("metric", "value_metric")
    @classmethod
    def _metric(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _check_metric(v, None, info)

    @model_validator(mode="after")
    def _value_metric(self) -> ThresholdRule:
        if self.value_metric is None:
            return self
        if self.value is not None:
            raise _field_error(self, "value_metric", "give exactly one of value (a number) or value_metric "
                               "(a metric), not both")
        if self.clear is not None:
            raise _field_error(self, "clear", "not allowed with value_metric: a per-series threshold brings its "
                               "own hysteresis (as fleetwatch_gpu_failure_risk_threshold does)")
        if self.by is not None:
            raise _field_error(self, "by", "not allowed with value_metric, which compares series by series")
        a, b = BY_NAME.get(self.metric), BY_NAME.get(self.value_metric)
        if a is not None and b is not None and a.labelnames != b.labelnames:
            raise _field_error(self, "value_metric", f"{self.value_metric} has labels ({', '.join(b.labelnames)}) "
                               f"but {self.metric} has ({', '.join(a.labelnames)}): they must be the same")
        return self


class RateRule(_Compared):
    """The increase of a counter over `window`, expressed per `per` (default per hour)."""

    kind: Literal["rate"]
    value: float
    window: Duration = 3600.0
    per: Duration = 3600.0

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return _check_metric(v, "counter")

    @field_validator("window", "per")
    @classmethod
    def _pos(cls, v: float) -> float:
        if not v > 0 or not math.isfinite(v):
            raise ValueError(f"must be a duration > 0, got {v}")
        return v


class AbsentRule(_Rule):
    """A series (or, with `by`, a group such as a node) that reported within `lookback` but not for `after`."""

    kind: Literal["absent"]
    metric: str
    after: Duration = 300.0
    lookback: Duration = 3600.0
    by: list[str] | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str, info: ValidationInfo) -> str:
        return _check_metric(v, None, info)

    @model_validator(mode="after")
    def _windows(self) -> AbsentRule:
        if not 0 < self.after < self.lookback:
            raise ValueError(f"after: must be > 0 and shorter than lookback ({self.lookback:g} s), got {self.after:g}")
        return self


class XidRule(_Rule):
    """XIDs of the given codes (or catalogue severity) seen within `window`, one alert per GPU and code."""

    kind: Literal["xid"]
    codes: list[int] | None = None
    severity_in: list[Literal["critical", "warning", "info"]] | None = Field(default=None, alias="xid_severity")
    exclude: list[int] = Field(default_factory=list)
    window: Duration = 600.0

    @model_validator(mode="after")
    def _select(self) -> XidRule:
        if (self.codes is None) == (self.severity_in is None):
            raise ValueError("give exactly one of codes (a list of XID codes) or xid_severity (e.g. [critical])")
        if self.codes is not None and not self.codes:
            raise ValueError("codes: the list is empty")
        if self.codes is not None and any(c <= 0 for c in self.codes):
            raise ValueError(f"codes: XID codes are positive integers, got {self.codes}")
        if not self.window > 0:
            raise ValueError(f"window: must be a duration > 0, got {self.window}")
        return self

    def selected(self) -> list[int]:
        """The XID codes this rule fires on, sorted."""
        if self.codes is not None:
            return sorted(set(self.codes) - set(self.exclude))
        wanted = set(self.severity_in or ())
        return sorted(c for c, info in xid_catalogue().items() if info.severity in wanted and c not in self.exclude)


class ForecastRule(_Rule):
    """The power forecast exceeds `budget` within `within` with probability >= `probability`.

    P(power > budget) >= p holds when the forecast's (1 - p) quantile is above the budget; the rule uses the
    largest published quantile <= 1 - p (conservative) at every horizon <= `within`.
    """

    kind: Literal["forecast"]
    metric: str = "fleetwatch_power_forecast_watts"
    budget: float | None = None          # watts; None: alerts.power_budget_watts from the configuration
    within: Duration = 7200.0
    probability: float = 0.8

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str, info: ValidationInfo) -> str:
        return _check_metric(v, None, info)

    @model_validator(mode="after")
    def _check(self) -> ForecastRule:
        if not 0 < self.probability < 1:
            raise ValueError(f"probability: must be between 0 and 1, got {self.probability}")
        if self.budget is not None and not (self.budget > 0 and math.isfinite(self.budget)):
            raise ValueError(f"budget: must be a number of watts > 0, got {self.budget}")
        if not self.within > 0:
            raise ValueError(f"within: must be a duration > 0, got {self.within}")
        return self


Rule = Annotated[ThresholdRule | RateRule | AbsentRule | XidRule | ForecastRule, Field(discriminator="kind")]
KINDS = ("threshold", "rate", "absent", "xid", "forecast")


class RuleFile(BaseModel):
    """A whole rule file."""

    model_config = ConfigDict(extra="forbid")
    rules: list[Rule]


def _where(raw: Any, loc: tuple[Any, ...]) -> str:
    """'rule 3 (FleetwatchX), field op' from a pydantic error location."""
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        i = loc[1]
        name = None
        if isinstance(raw, dict) and isinstance(raw.get("rules"), list) and i < len(raw["rules"]):
            item = raw["rules"][i]
            name = item.get("alert") if isinstance(item, dict) else None
        fields = [str(p) for p in loc[2:] if p not in KINDS]
        where = f"rule {i + 1}" + (f" ({name})" if isinstance(name, str) else "")
        return where + (f", field {'.'.join(fields)}" if fields else "")
    return "field " + ".".join(str(p) for p in loc) if loc else "top level"


def parse_rules(text: str, origin: str = "rules", *, allow_unknown_metrics: bool = False) -> list[Rule]:
    """Parse and validate rule-file text; RuleError names the origin, the rule and the field.

    allow_unknown_metrics: accept metric names the catalogue lacks (the built-in rules over the predictors'
    metrics); the engine then skips such a rule and says why.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise RuleError(f"{origin}: not valid YAML: {err}") from None
    except RecursionError:
        raise RuleError(f"{origin}: YAML nested too deeply") from None
    if not isinstance(raw, dict):
        raise RuleError(f"{origin}: the top level must be a mapping with a 'rules' list, got {type(raw).__name__}")
    rules = raw.get("rules")
    if isinstance(rules, list):
        for i, item in enumerate(rules):
            if isinstance(item, dict) and "kind" in item and item["kind"] not in KINDS:
                name = item.get("alert")
                raise RuleError(f"{origin}: rule {i + 1}" + (f" ({name})" if isinstance(name, str) else "")
                                + f", field kind: must be one of {', '.join(KINDS)}, got {item['kind']!r}")
    try:
        parsed = RuleFile.model_validate(raw, context={"allow_unknown_metrics": allow_unknown_metrics})
    except ValidationError as err:
        lines = []
        for e in err.errors()[:10]:
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "union_tag_not_found":
                msg = f"missing 'kind' (one of {', '.join(KINDS)})"
            lines.append(f"{origin}: {_where(raw, tuple(e['loc']))}: {msg}")
        raise RuleError("\n".join(lines)) from None
    except (RecursionError, TypeError) as err:
        raise RuleError(f"{origin}: cannot read the rules: {err}") from None
    _check_unique(parsed.rules, origin)
    return parsed.rules


def _check_unique(rules: list[Rule], origin: str) -> None:
    # One alert name may come from several rules (Prometheus allows it), but then their label sets must
    # differ or their alerts would share fingerprints; the simple case, an exact duplicate, is refused.
    seen: dict[str, int] = {}
    for i, r in enumerate(rules):
        key = r.model_dump_json()
        if key in seen:
            raise RuleError(f"{origin}: rule {i + 1} ({r.alert}) repeats rule {seen[key] + 1}")
        seen[key] = i


def load_rules(path: str | Path | None = None) -> list[Rule]:
    """The rules of a file, or the built-in defaults when path is None."""
    if path is None:
        return default_rules()
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise RuleError(f"{path}: cannot read the rule file: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise RuleError(f"{path}: not a UTF-8 text file") from None
    return parse_rules(text, str(path))


def default_rules() -> list[Rule]:
    """The built-in default rule set (alerts/defaults.yml)."""
    text = resources.files("alerts").joinpath(DEFAULTS_RESOURCE).read_text(encoding="utf-8")
    return parse_rules(text, "alerts/defaults.yml", allow_unknown_metrics=True)
