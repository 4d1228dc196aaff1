"""What forecast energy costs and emits, PUE, and the chance of exceeding a power budget.

Cost and carbon weight the forecast path by the hour of day: with a tariff by hour, energy forecast for
the expensive hours costs more. Their quantiles are the energy quantiles times the path's effective
(energy-weighted) price or intensity, so the price itself is taken as known. With a PUE (configured, or
facility power over IT power), IT energy is scaled up to facility energy before pricing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

J_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True)
class Tariff:
    """Price per kWh and grid carbon intensity (gCO2/kWh), each a constant or 24 hourly values (UTC)."""

    price_per_kwh: float | Sequence[float] = 0.15
    carbon_g_per_kwh: float | Sequence[float] = 400.0

    def __post_init__(self) -> None:
        for name in ("price_per_kwh", "carbon_g_per_kwh"):
            v = getattr(self, name)
            vals = [v] if isinstance(v, int | float) else list(v)
            if not isinstance(v, int | float) and len(vals) != 24:
                raise ValueError(f"{name}: give one value or 24 hourly values, got {len(vals)}")
            if any(not math.isfinite(x) or x < 0 for x in vals):
                raise ValueError(f"{name}: values must be finite and >= 0, got {v}")


def hourly(v: float | Sequence[float], ts_ns: np.ndarray) -> np.ndarray:
    """The value in effect at each timestamp (UTC hour of day)."""
    if isinstance(v, int | float):
        return np.full(len(ts_ns), float(v))
    hours = ((np.asarray(ts_ns, dtype=np.int64) // 10**9) % 86400) // 3600
    return np.asarray(v, dtype=np.float64)[hours]


def effective_rate(v: float | Sequence[float], path_ts_ns: np.ndarray, path_w: np.ndarray, until_ns: int) -> float:
    """Energy-weighted mean of an hourly rate over the path up to until_ns (the constant itself if constant)."""
    if isinstance(v, int | float):
        return float(v)
    sel = (path_ts_ns <= until_ns) & np.isfinite(path_w)
    if not sel.any() or np.sum(path_w[sel]) <= 0:
        return float(np.mean(v))
    rate = hourly(v, path_ts_ns[sel])
    return float(np.sum(rate * path_w[sel]) / np.sum(path_w[sel]))


def pue_now(it_w: float, facility_w: float | None, pue: float | None) -> float:
    """Facility over IT power: the configured PUE, else facility power / IT power, else NaN."""
    if pue is not None:
        return float(pue)
    if facility_w is None or not it_w > 0:
        return math.nan
    return facility_w / it_w


@dataclass(frozen=True, slots=True)
class Money:
    """Cost (currency of the tariff) and carbon (g) quantiles for one series and horizon."""

    cost: np.ndarray
    carbon_g: np.ndarray


def price(energy_j: np.ndarray, tariff: Tariff, path_ts_ns: np.ndarray, path_w: np.ndarray, until_ns: int,
          pue: float = math.nan) -> Money:
    """Cost and carbon of energy quantiles (J), at facility level when a PUE is known."""
    factor = pue if math.isfinite(pue) and pue > 0 else 1.0
    kwh = np.asarray(energy_j) / J_PER_KWH * factor
    return Money(kwh * effective_rate(tariff.price_per_kwh, path_ts_ns, path_w, until_ns),
                 kwh * effective_rate(tariff.carbon_g_per_kwh, path_ts_ns, path_w, until_ns))
