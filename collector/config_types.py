"""Configuration value types shared by every package: durations, sizes, addresses, and ConfigError.

They live in collector (the bottom of the data flow) so that predictor and alerts can validate their own
settings without importing fleetwatch; fleetwatch/config.py re-exports them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

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
