"""The remediation policy (YAML): which alerts — by labels, XID catalogue action, risk — run which actions.

    allowlist: [/usr/bin/kubectl]           # the only executables a command action may run
    actions:
      cordon: {type: kubectl-cordon}        # presets: kubectl-cordon, kubectl-drain, slurm-drain
      page-me: {type: webhook, url: https://hooks.example/fleetwatch, secret_file: /etc/fleetwatch/hook-secret}
      record: {type: command, argv: [/usr/local/bin/record, "{node}", "{alertname}"], timeout: 10s}
    rules:
      - name: lost-gpu
        match: {alertname: FleetwatchGpuLost}
        actions: [cordon, page-me]
      - name: critical-xid
        xid_severity: [critical]            # the alert's `xid` label, classified by collector/xid.py
        actions: [cordon]
      - name: high-risk
        min_risk: 0.8                       # the alert's `risk` label or annotation
        actions: [page-me]

`{label}` in an argv template is replaced by that alert label's value as one literal argument; nothing is
ever passed through a shell.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector import xid as xid_catalogue
from collector.config_types import Duration

PLACEHOLDER = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")

# Presets for the usual node actions; each has an undo run when the alert resolves (if the rule asks).
PRESETS: dict[str, tuple[list[str], list[str]]] = {
    "kubectl-cordon": (["kubectl", "cordon", "{node}"], ["kubectl", "uncordon", "{node}"]),
    "kubectl-drain": (["kubectl", "drain", "{node}", "--ignore-daemonsets", "--delete-emptydir-data",
                       "--timeout=10m"], ["kubectl", "uncordon", "{node}"]),
    "slurm-drain": (["scontrol", "update", "nodename={node}", "state=drain", "reason=fleetwatch {alertname}"],
                    ["scontrol", "update", "nodename={node}", "state=resume"]),
}
ActionType = Literal["command", "webhook", "kubectl-cordon", "kubectl-drain", "slurm-drain"]
# Environment variables a command inherits from fleetwatch (nothing else: fleetwatch's own secrets stay put).
DEFAULT_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "KUBECONFIG")


class PolicyError(ValueError):
    """The policy file is invalid; the message names the file, the entry and the field."""


class ActionConfig(BaseModel):
    """One named action."""

    model_config = ConfigDict(extra="forbid")
    type: ActionType
    argv: list[str] | None = None            # command: executable and argument templates
    undo: list[str] | None = None            # command run on resolved (after this action ran on firing)
    env: dict[str, str] = Field(default_factory=dict)
    pass_env: list[str] = Field(default_factory=lambda: list(DEFAULT_PASS_ENV))
    timeout: Duration = 30.0
    retries: int = Field(default=2, ge=0, le=10)
    backoff: Duration = 1.0                  # first retry delay; doubles per attempt
    transient_exit_codes: list[int] = Field(default_factory=lambda: [75])   # EX_TEMPFAIL: worth retrying
    target: str = "node"                     # the label naming what the action changes (cooldown, blast radius)
    url: str | None = None                   # webhook
    secret_file: str | None = None           # webhook: HMAC-SHA256 key for X-Fleetwatch-Signature
    cooldown: Duration | None = None         # overrides remediation.limits.cooldown
    max_per_window: int | None = Field(default=None, ge=0)   # overrides limits.per_action_max

    @field_validator("timeout", "backoff")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v

    @model_validator(mode="after")
    def _shape(self) -> ActionConfig:
        if self.type in PRESETS:
            argv, undo = PRESETS[self.type]
            self.argv = self.argv or list(argv)
            self.undo = self.undo or list(undo)
        if self.type == "webhook":
            if not self.url or not self.url.startswith(("http://", "https://")):
                raise ValueError(f"webhook needs url: http(s)://..., got {self.url!r}")
            if self.argv or self.undo:
                raise ValueError("webhook takes url, not argv/undo")
        elif not self.argv:
            raise ValueError("command needs argv: [executable, args...]")
        for name, tmpl in (("argv", self.argv), ("undo", self.undo)):
            if tmpl and PLACEHOLDER.search(tmpl[0]):
                raise ValueError(f"{name}[0] must be a fixed executable, not a template: {tmpl[0]!r}")
        return self


class RuleConfig(BaseModel):
    """One rule: every condition given must hold; the first matching rule wins unless `continue: true`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str
    match: dict[str, str] = Field(default_factory=dict)       # label == value
    match_re: dict[str, str] = Field(default_factory=dict)    # label fully matches the regex
    xid_actions: list[str] = Field(default_factory=list)      # catalogue immediate action of the `xid` label
    xid_severity: list[Literal["info", "warning", "critical"]] = Field(default_factory=list)
    min_risk: float | None = Field(default=None, ge=0.0, le=1.0)
    actions: list[str] = Field(min_length=1)
    undo_on_resolved: bool = True
    continue_: bool = Field(default=False, alias="continue")

    @field_validator("match_re")
    @classmethod
    def _regexes(cls, v: dict[str, str]) -> dict[str, str]:
        for k, rx in v.items():
            try:
                re.compile(rx)
            except re.error as err:
                raise ValueError(f"match_re.{k}: invalid regex {rx!r}: {err}") from None
        return v


class PolicyFile(BaseModel):
    """The whole policy file."""

    model_config = ConfigDict(extra="forbid")
    allowlist: list[str] = Field(default_factory=list)
    actions: dict[str, ActionConfig] = Field(default_factory=dict)
    rules: list[RuleConfig] = Field(default_factory=list)


@dataclass(frozen=True)
class Action:
    """A validated action: its config plus the resolved executables of its command and undo."""

    name: str
    config: ActionConfig
    executable: str | None = None
    undo_executable: str | None = None


@dataclass(frozen=True)
class Match:
    """One (rule, action) pair an alert triggers."""

    rule: RuleConfig
    action: Action


def resolve_executable(name: str) -> str | None:
    """The real path of an executable name or path (None when not found or not executable)."""
    found = name if os.sep in name else shutil.which(name)
    if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
        return None
    return os.path.realpath(found)


def in_allowlist(executable: str, allowlist: frozenset[str]) -> bool:
    """Whether the executable's real path (re-resolved now: a link may have moved) is allowlisted."""
    return os.path.realpath(executable) in allowlist


def _risk(labels: dict[str, str], annotations: dict[str, str]) -> float | None:
    for src in (labels, annotations):
        if "risk" in src:
            try:
                return float(src["risk"])
            except ValueError:
                return None
    return None


@dataclass
class Policy:
    """The loaded policy: match alerts to actions."""

    actions: dict[str, Action]
    rules: list[RuleConfig]
    allowlist: frozenset[str]
    source: str = "(empty policy)"

    @classmethod
    def empty(cls) -> Policy:
        """A policy that runs nothing (the receiver still audits every alert)."""
        return cls({}, [], frozenset())

    def match(self, labels: dict[str, str], annotations: dict[str, str] | None = None) -> list[Match]:
        """The (rule, action) pairs for an alert, in rule order; each action at most once."""
        out: list[Match] = []
        seen: set[str] = set()
        for rule in self.rules:
            if not _rule_matches(rule, labels, annotations or {}):
                continue
            for name in rule.actions:
                if name not in seen:
                    seen.add(name)
                    out.append(Match(rule, self.actions[name]))
            if not rule.continue_:
                break
        return out


def _rule_matches(rule: RuleConfig, labels: dict[str, str], annotations: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in rule.match.items()):
        return False
    if any(re.fullmatch(rx, labels.get(k, "")) is None for k, rx in rule.match_re.items()):
        return False
    if rule.xid_actions or rule.xid_severity:
        try:
            code = int(labels.get("xid", ""))
        except ValueError:
            return False
        info = xid_catalogue.lookup(code)
        action = info.immediate_action if info else ""
        if rule.xid_actions and action not in rule.xid_actions:
            return False
        if rule.xid_severity and xid_catalogue.severity(code) not in rule.xid_severity:
            return False
    if rule.min_risk is not None:
        risk = _risk(labels, annotations)
        if risk is None or not risk >= rule.min_risk:
            return False
    return True


def _explain(err: ValidationError, origin: str) -> PolicyError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {key}: {msg}" if e["type"] != "extra_forbidden" else f"{origin}: unknown key {key}")
    return PolicyError("invalid remediation policy\n  " + "\n  ".join(lines))


def build_policy(data: Any, origin: str = "policy") -> Policy:
    """Validate a parsed policy document; PolicyError names the entry and the field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: the top level must be a mapping, got {type(data).__name__}")
    try:
        pf = PolicyFile.model_validate(data)
    except ValidationError as err:
        raise _explain(err, origin) from None
    allow: set[str] = set()
    for entry in pf.allowlist:
        if not os.path.isabs(entry):
            raise PolicyError(f"{origin}: allowlist entry {entry!r} must be an absolute path")
        allow.add(os.path.realpath(entry))
    actions: dict[str, Action] = {}
    for name, ac in pf.actions.items():
        exes: list[str | None] = []
        for what, tmpl in (("argv", ac.argv), ("undo", ac.undo)):
            if not tmpl:
                exes.append(None)
                continue
            exe = resolve_executable(tmpl[0])
            if exe is None:
                raise PolicyError(f"{origin}: actions.{name}.{what}[0]: executable {tmpl[0]!r} not found")
            if exe not in allow:
                raise PolicyError(f"{origin}: actions.{name}.{what}[0]: {tmpl[0]!r} ({exe}) is not in the "
                                  f"allowlist {sorted(allow)}")
            exes.append(exe)
        actions[name] = Action(name, ac, exes[0], exes[1])
    for i, rule in enumerate(pf.rules):
        for a in rule.actions:
            if a not in actions:
                raise PolicyError(f"{origin}: rules[{i}] ({rule.name}): unknown action {a!r} "
                                  f"(defined: {sorted(actions)})")
    return Policy(actions, pf.rules, frozenset(allow), origin)


def load_policy(path: str | Path | None) -> Policy:
    """Load a policy file (None: the empty policy); PolicyError names what is wrong."""
    if path is None:
        return Policy.empty()
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise PolicyError(f"{path}: cannot read policy file: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise PolicyError(f"{path}: not valid YAML: {err}") from None
    return build_policy(data, str(path))
