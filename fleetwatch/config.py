"""The one YAML configuration file, environment overrides and validation with errors naming key and value."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "FLEETWATCH_"
_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2,
               "GB": 1000**3}


class ConfigError(ValueError):
    """Invalid configuration; the message names the key and the value."""


def parse_duration(v: Any) -> float:
    """'10s', '1m', '250ms', '2h', '1d' or a number of seconds → seconds."""
    if isinstance(v, bool):
        raise ValueError(f"expected a duration like 10s, got {v!r}")
    if isinstance(v, int | float):
        return float(v)
    m = _DUR.match(str(v))
    if not m:
        raise ValueError(f"expected a duration like 10s, 1m or 250ms, got {v!r}")
    return float(m.group(1)) * _DUR_UNITS[m.group(2)]


def parse_size(v: Any) -> int:
    """'64MiB', '1GiB' or a number of bytes → bytes."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    m = _SIZE.match(str(v))
    if not m:
        raise ValueError(f"expected a size like 64MiB, got {v!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def parse_hostport(v: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or '[v6]:PORT' → (host, port)."""
    host, sep, port = str(v).rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {v!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


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
