"""The one YAML configuration file, environment overrides and validation with errors naming key and value."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector.config_types import (  # noqa: F401 (re-exported)
    ConfigError,
    Duration,
    Size,
    parse_duration,
    parse_hostport,
    parse_size,
)

ENV_PREFIX = "FLEETWATCH_"


def _check_source(v: str) -> str:
    """'local' (this node's readings) or an http(s):// Prometheus API URL."""
    if v not in ("", "local") and not re.match(r"^https?://[^\s/]+", v):
        raise ValueError(f"expected 'local' or an http(s):// Prometheus URL, got {v!r}")
    return v


Source = Annotated[str, AfterValidator(_check_source)]


def parse_simulate(v: str) -> tuple[int, int]:
    """'NODESxGPUS' → (nodes, gpus)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", str(v))
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise ValueError(f"expected NODESxGPUS such as 4x8 (or off), got {v!r}")
    return int(m.group(1)), int(m.group(2))


class SourceConfig(BaseModel):
    """collector.<name>: enabled, interval, timeout and the source's own options."""

    model_config = ConfigDict(extra="allow")
    enabled: bool | None = None          # None: the source's default
    interval: Duration | None = None     # None: the source's default
    timeout: Duration | None = None

    @field_validator("interval", "timeout")
    @classmethod
    def _positive(cls, v: float | None) -> float | None:
        if v is not None and v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v

    def options(self) -> dict[str, Any]:
        """Source-specific options (keys beyond enabled/interval/timeout)."""
        return dict(self.model_extra or {})


class RecordConfig(BaseModel):
    """record: the Parquet trace recorder."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    flush_interval: Duration = 10.0
    rotate_interval: Duration = 3600.0
    rotate_size: Size = 64 * 1024**2
    compact_interval: Duration = 3600.0          # merge finished days and apply retention this often
    retention_age: Duration | None = None        # keep days younger than this (None: forever)
    retention_size: Size | None = None           # and at most this many bytes (None: no limit)


class RemediationLimitsConfig(BaseModel):
    """remediation.limits: safety limits (alerts/remediation/safety.py says why each default)."""

    model_config = ConfigDict(extra="forbid")
    global_max: int = Field(default=10, ge=0)
    global_window: Duration = 3600.0
    per_action_max: int = Field(default=5, ge=0)
    per_action_window: Duration = 3600.0
    blast_max_nodes: int = Field(default=2, ge=0)
    blast_max_fraction: float = Field(default=0.10, ge=0.0, le=1.0)
    blast_window: Duration = 3600.0
    cooldown: Duration = 1800.0
    fleet_nodes: int | None = Field(default=None, ge=1)     # None: the nodes fleetwatch sees


class RemediationConfig(BaseModel):
    """remediation: the Alertmanager webhook receiver and the actions it may take (dry-run by default)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool | None = None               # None: on when `listen` is set (--receiver-listen)
    listen: str | None = None                 # default 0.0.0.0:9401 when enabled
    token_file: str | None = None             # None: <data_dir>/remediation/webhook-token, generated (0600)
    hmac_secret_file: str | None = None       # X-Fleetwatch-Signature: sha256=HMAC(secret, body)
    auth_disabled: bool = False               # only for a receiver on loopback behind something that authenticates
    policy_file: str | None = None            # None: no actions (every alert is still audited)
    mode: Literal["dry-run", "enforce"] = "dry-run"
    audit_file: str | None = None             # None: <data_dir>/remediation/audit.jsonl
    max_body: Size = 1024 * 1024
    queue_size: int = Field(default=1000, ge=1)
    grafana_url: str | None = None            # annotations tagged fleetwatch-remediation (optional)
    grafana_token_file: str | None = None
    limits: RemediationLimitsConfig = Field(default_factory=RemediationLimitsConfig)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v is not None:
            parse_hostport(v)
        return v


class AlertsConfig(BaseModel):
    """alerts: the rule engine inside `fleetwatch run` and delivery to Alertmanager (alerts/)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    rules: str | None = None                  # rule file; None: the built-in defaults (alerts/defaults.yml)
    interval: Duration = 15.0                 # evaluation interval, in the service clock's time
    alertmanagers: list[str] = Field(default_factory=list)     # base URLs, e.g. http://alertmanager:9093
    outbox_dir: str | None = None             # None: <data_dir>/alerts/outbox
    outbox_max_alerts: int = Field(default=10_000, ge=1)
    timeout: Duration = 10.0                  # per POST to an Alertmanager
    power_budget_watts: float | None = Field(default=None, gt=0)   # for forecast rules without their own budget
    external_url: str | None = None           # base of generatorURL; None: http://<node>:<listen port>

    @field_validator("interval", "timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v

    @field_validator("alertmanagers", mode="before")
    @classmethod
    def _urls(cls, v: Any) -> Any:
        from alerts.alertmanager import check_url

        if isinstance(v, str):          # FLEETWATCH_ALERTS__ALERTMANAGERS=url1,url2
            v = [u for u in v.split(",") if u.strip()]
        if isinstance(v, list):
            return [check_url(str(u).strip()) for u in v]
        return v


class EnergyConfig(BaseModel):
    """energy: power and energy forecasts (predictor/energy), their tariff, carbon, PUE and budget."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    horizons: list[Duration] = Field(default_factory=lambda: [900.0, 3600.0, 86400.0])
    step: Duration = 300.0                      # forecast grid
    history: Duration = 14 * 86400.0            # history kept and fitted on
    evaluate_interval: Duration = 300.0         # data time between published forecasts
    refit_interval: Duration = 6 * 3600.0       # data time between backtest + refits
    backtest_days: float = Field(default=2.0, gt=0)
    models: list[str] = Field(default_factory=lambda: ["last_value", "seasonal_naive", "holt_winters", "gbm"])
    statsmodels_max_series: int = Field(default=12, ge=0)
    price_per_kwh: float | list[float] = 0.15      # one price or 24 hourly prices (UTC)
    carbon_g_per_kwh: float | list[float] = 400.0  # one intensity or 24 hourly values
    pue: float | None = Field(default=None, ge=1.0)                 # constant PUE, if known
    facility_power_watts: float | None = Field(default=None, gt=0)  # constant facility power, if known
    budget_watts: float | None = Field(default=None, gt=0)          # fleet power budget
    node_budget_watts: float | None = Field(default=None, gt=0)     # per-node power budget
    source: Source = "local"                    # "local" (this node's readings) or a Prometheus API URL (a fleet)
    facility_power_query: str | None = None     # PromQL giving measured facility power (W), one series
    facility_source: Source | None = None       # Prometheus URL it runs against; None: `source` when a URL

    @model_validator(mode="after")
    def _facility(self) -> EnergyConfig:
        if self.facility_power_query is None:
            return self
        if not self.facility_power_query.strip():
            raise ValueError("energy.facility_power_query is empty: give a PromQL expression or leave it unset")
        given = [k for k in ("pue", "facility_power_watts") if getattr(self, k) is not None]
        if given:
            raise ValueError(f"energy.facility_power_query (measured) and energy.{given[0]} (constant) both set: "
                             "keep one")
        if self.facility_url() is None:
            raise ValueError("energy.facility_power_query is set but no Prometheus URL is known to run it: set "
                             "energy.facility_source (or energy.source) to an http(s):// URL")
        return self

    def facility_url(self) -> str | None:
        """The Prometheus API the facility power query runs against: facility_source, else source if a URL."""
        for url in (self.facility_source, self.source):
            if url and url not in ("", "local"):
                return url
        return None

    @field_validator("horizons", "step", "evaluate_interval", "refit_interval", "history")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        for x in v if isinstance(v, list) else [v]:
            if x <= 0:
                raise ValueError(f"must be > 0, got {x}")
        if isinstance(v, list) and not v:
            raise ValueError("give at least one horizon")
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        known = ("last_value", "seasonal_naive", "holt_winters", "sarimax", "gbm")
        bad = [m for m in v if m not in known]
        if bad or not v:
            raise ValueError(f"unknown model(s) {bad}; choose from {', '.join(known)}")
        return v

    @field_validator("price_per_kwh", "carbon_g_per_kwh")
    @classmethod
    def _rate(cls, v: float | list[float]) -> float | list[float]:
        vals = v if isinstance(v, list) else [v]
        if isinstance(v, list) and len(v) != 24:
            raise ValueError(f"give one value or 24 hourly values, got {len(v)}")
        if any(x < 0 for x in vals):
            raise ValueError("must be >= 0")
        return v


class FailureConfig(BaseModel):
    """failure: live GPU failure-risk scoring (predictor/failure)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    model: str | None = None                # model file from `fleetwatch train`; None: unsupervised anomaly score
    interval: Duration = 60.0               # data time between scoring rounds
    step: Duration = 60.0                   # feature grid step without a model (a model brings its own)
    horizon: Duration = 86400.0             # documented horizon of the risk (a model brings its own)
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)   # alert threshold; None: the model's
    # an alerting GPU clears below threshold x clear_ratio (hysteresis); None: the model's, or 0.75
    clear_ratio: float | None = Field(default=None, gt=0.0, le=1.0)
    source: Source = "local"                # "local" (this node's readings) or a Prometheus API URL

    @field_validator("interval", "step", "horizon")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be > 0, got {v}")
        return v


class Config(BaseModel):
    """The whole fleetwatch configuration."""

    model_config = ConfigDict(extra="forbid")
    listen: str = "0.0.0.0:9400"
    data_dir: str = "data"
    node: str = Field(default_factory=socket.gethostname)
    names: Literal["native", "dcgm", "both"] = "both"
    web_config_file: str | None = None
    simulate: str | None = None          # "NODESxGPUS"; None: real NVML, or 4x8 when there is no GPU; "off": NVML
    seed: int = 0
    speed: float = 1.0
    fault_rate: float = 1.0
    inject: list[str] = Field(default_factory=list)
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    rootfs: str = "/"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    record: RecordConfig = Field(default_factory=RecordConfig)
    remediation: RemediationConfig = Field(default_factory=RemediationConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    energy: EnergyConfig = Field(default_factory=EnergyConfig)
    failure: FailureConfig = Field(default_factory=FailureConfig)
    collector: dict[str, SourceConfig] = Field(default_factory=dict)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_hostport(v)
        return v

    @field_validator("simulate")
    @classmethod
    def _simulate(cls, v: str | None) -> str | None:
        if v is not None and v != "off":
            parse_simulate(v)
        return v

    @field_validator("speed", "fault_rate")
    @classmethod
    def _nonneg(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    def source(self, name: str) -> SourceConfig:
        """The config block of one source (defaults when absent)."""
        return self.collector.get(name) or SourceConfig()


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """FLEETWATCH_LISTEN=..., FLEETWATCH_COLLECTOR__GPU__INTERVAL=2s → nested dict (`__` nests)."""
    out: dict[str, Any] = {}
    for key, val in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ("FLEETWATCH_REDFISH_USERNAME", "FLEETWATCH_REDFISH_PASSWORD"):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        leaf: Any = val
        if path[-1] == "inject":
            leaf = [s for s in val.split(",") if s]
        node[path[-1]] = leaf
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _explain(err: ValidationError, raw: dict[str, Any], origin: str) -> ConfigError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"{origin}: unknown key {key!r}")
            continue
        val = raw
        for p in e["loc"]:
            val = val.get(p) if isinstance(val, dict) else None  # type: ignore[assignment]
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{origin}: {key} = {val!r}: {msg}")
    return ConfigError("invalid configuration\n  " + "\n  ".join(lines))


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Defaults ← YAML file ← FLEETWATCH_* environment ← command-line overrides, validated."""
    raw: dict[str, Any] = {}
    origin = "config"
    if path is not None:
        origin = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"{path}: cannot read config file: {err.strerror}") from err
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(loaded).__name__}")
        raw = loaded
    env = _env_overrides(dict(os.environ if environ is None else environ))
    merged = _merge(_merge(raw, env), {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Config.model_validate(merged)
    except ValidationError as err:
        raise _explain(err, merged, origin + (" (with environment/flags)" if env or overrides else "")) from None
