"""Interval calibration: residual quantiles that cover their nominal share at small pools, and the long-horizon
proxy pool scaled per interval level."""

from __future__ import annotations

import numpy as np
import pytest

from predictor.energy.backtest import MIN_CALIB, MIN_TAIL, conformal_bounds, proxy_ratio, residual_quantiles


def _coverage(n: int, alpha: float, dist: str, trials: int = 8000) -> float:
    """Share of new residuals inside the interval from a pool of n earlier ones (same distribution)."""
    rng = np.random.default_rng(n)
    draw = getattr(rng, dist)
    pools = draw(size=(trials, n))
    new = draw(size=trials)
    lo, hi = np.array([conformal_bounds(p, alpha) for p in pools]).T
    return float(np.mean((new >= lo) & (new <= hi)))


@pytest.mark.parametrize("n", [30, 48])
@pytest.mark.parametrize(("alpha", "dist"), [(0.2, "laplace"), (0.05, "laplace"), (0.2, "normal"),
                                             (0.05, "normal")])
def test_intervals_cover_their_nominal_share_at_small_pools(n: int, alpha: float, dist: str) -> None:
    """The fleet's pools hold 20 to 48 residuals: there, intervals cover 1 − alpha on average."""
    # ±0.015 is over 3 standard errors at 8,000 trials; the old next-order-statistic rule gave 0.84 at n=48.
    assert _coverage(n, alpha, dist) == pytest.approx(1 - alpha, abs=0.015)


def test_a_95_interval_from_20_residuals_reaches_past_them() -> None:
    """Twenty residuals' range covers only 19/21 of new ones; extrapolating the tails gets closer to 0.95
    (the last spacing underestimates a normal or Laplace tail a little, so not all the way)."""
    assert 19 / 21 + 0.01 < _coverage(20, 0.05, "normal") < 0.95


def test_quantiles_interpolate_and_extrapolate_at_plotting_positions() -> None:
    r = np.array([5.0, 1.0, 3.0, 2.0, 4.0, np.nan])          # order statistics 1..5, plotting positions k/6
    q = residual_quantiles(r, (1 / 6, 0.25, 0.5, 5 / 6, 0.975))
    assert q[0] == pytest.approx(1.0) and q[2] == pytest.approx(3.0) and q[3] == pytest.approx(5.0)
    assert q[1] == pytest.approx(1.5)                         # rank 1.5: halfway between 1 and 2
    assert q[4] == pytest.approx(5.0 + (0.975 * 6 - 5))       # past the largest, along the last spacing
    assert np.isnan(residual_quantiles(np.array([np.nan]), (0.5,))[0])
    assert residual_quantiles(np.array([7.0]), (0.1, 0.9)).tolist() == [7.0, 7.0]


def test_proxy_ratio_narrows_and_widens_per_level() -> None:
    rng = np.random.default_rng(2)
    proxy = rng.laplace(size=400)
    assert proxy_ratio(0.5 * proxy, proxy, 0.2) == pytest.approx(0.5)        # a better model: narrower
    assert proxy_ratio(1.5 * proxy, proxy, 0.05) == pytest.approx(1.5)       # a worse one: wider
    # Same tails, smaller typical errors: the 95 % ratio stays near 1 while the 80 % one narrows.
    body = np.where(np.abs(proxy) < np.quantile(np.abs(proxy), 0.9), 0.3 * proxy, proxy)
    assert proxy_ratio(body, proxy, 0.2) < 0.5 and proxy_ratio(body, proxy, 0.05) == pytest.approx(1.0)


def test_proxy_ratio_needs_enough_pairs_beyond_its_quantile() -> None:
    proxy = np.linspace(-1, 1, MIN_CALIB)
    assert proxy_ratio(0.5 * proxy, proxy, 0.2) == 1.0 or MIN_CALIB * 0.2 >= MIN_TAIL
    few_tail = int(MIN_TAIL / 0.05) - 1                        # too few pairs past the 95 % quantile
    p = np.linspace(-1, 1, few_tail)
    assert proxy_ratio(0.5 * p, p, 0.05) == 1.0
    assert proxy_ratio(0.5 * p, p, 0.2) == pytest.approx(0.5)
    nan = np.full(100, np.nan)
    assert proxy_ratio(nan, nan, 0.2) == 1.0
