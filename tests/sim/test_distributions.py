"""The simulated fleet against real ones: KS distance to the Kalos and Seren CDFs (AcmeTrace)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest

from collector.sim import fleet_data as fd
from collector.sim.engine import FleetSim

START = 1_767_225_600 * 10**9
S = 10**9

# The bound. Two real LLM clusters of one operator, Kalos and Seren, are 0.10 apart in GPU power and
# 0.06-0.07 in GPU/HBM temperature (fd.between_clusters()). We ask the simulator to be about as close to
# Kalos, the cluster with a published utilisation CDF, as a sibling fleet is: within 1.5x the power gap,
# i.e. 0.15, for every quantity (over seeds 0-10 this 3-day, 192-GPU run scores at worst 0.13). Seren
# follows by the triangle inequality: sim-Seren <= sim-Kalos + Kalos-Seren.
KS_BOUND = 0.15


def test_reference_data_is_packaged_with_its_licence() -> None:
    folder = resources.files("collector") / "data" / "fleet-distributions"
    assert "Attribution 4.0 International" in (folder / "LICENSE.txt").read_text(encoding="utf-8-sig")
    for name, cols in (("gpu_power_kalos", 1), ("gpu_power_seren", 1), ("gpu_temp_kalos", 2),
                       ("gpu_temp_seren", 2), ("util_gpu_kalos_full", 5)):
        for c in range(cols):
            x, y = fd.load_cdf(name, c)
            assert x.size == y.size == 1000 and y[0] == 0 and y[-1] == pytest.approx(1.0)
            assert np.all(np.diff(x) >= 0)


def test_ks_distance_properties() -> None:
    rng = np.random.default_rng(0)
    grid = np.linspace(0.0, 1.0, 1001)
    assert fd.ks_distance(rng.random(20000), grid, grid) < 0.02                  # uniform vs uniform
    assert fd.ks_distance(rng.random(20000) + 0.3, grid, grid) == pytest.approx(0.3, abs=0.02)
    assert fd.ks_distance(np.full(10, 2.0), grid, grid) == 1.0                    # all mass beyond the range
    # ties in the reference quantile table (a point mass at 0, as in utilisation) are a step of 0.5
    x = np.array([0.0, 0.0, 0.0, 1.0, 1.0])
    y = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    assert fd.ks_distance(np.array([0.0, 0.0, 1.0, 1.0]), x, y) == pytest.approx(0.0)
    assert fd.ks_distance(np.array([0.0, 1.0, 1.0, 1.0]), x, y) == pytest.approx(0.25)
    # invariant under a monotone map of both sides (why mapping A100 watts onto H100's range is sound)
    s = rng.normal(size=5000)
    assert fd.ks_distance(np.exp(s), np.exp(grid * 4 - 2), grid) == pytest.approx(
        fd.ks_distance(s, grid * 4 - 2, grid))


def test_a100_power_maps_onto_h100_range() -> None:
    assert fd.a100_to_h100_watts(np.array([fd.A100_IDLE_W, fd.A100_LIMIT_W])) == pytest.approx([70.0, 700.0])
    x, _ = fd.reference_power("kalos")
    assert x.max() == fd.POWER_CENSOR and x.min() > 55


def test_simulated_fleet_resembles_real_fleets() -> None:
    sim = FleetSim(24, 8, 4, START, fault_rate=0.0, max_step_s=300)
    power, temp, mem, util = [], [], [], []
    for k in range(1, 3 * 288 + 1):                                              # 3 days, 5-minute samples
        sim.advance_to(START + k * 300 * S, sync=False)
        g = sim.gpu_metrics()
        power.append(g["fleetwatch_gpu_power_watts"])
        temp.append(g["fleetwatch_gpu_temperature_celsius"])
        mem.append(g["fleetwatch_gpu_memory_temperature_celsius"])
        util.append(g["fleetwatch_gpu_utilization_ratio"])
    ks = fd.compare(np.ravel(power), np.ravel(temp), np.ravel(util), np.ravel(mem))
    real = fd.between_clusters()
    print("\nKS distance, simulator vs real fleets:",
          ", ".join(f"{k} {v:.3f}" for k, v in ks.items()),
          "\nKS distance, Kalos vs Seren:", ", ".join(f"{k} {v:.3f}" for k, v in real.items()))
    for key in ("power_kalos", "temp_kalos", "memtemp_kalos", "util_kalos"):
        assert ks[key] < KS_BOUND, key
    assert ks["power_seren"] < KS_BOUND + real["power"]
    assert ks["temp_seren"] < KS_BOUND + real["temp"]
    assert ks["memtemp_seren"] < KS_BOUND + real["memtemp"]
    # and the shape that matters for alerting: some capped GPUs, a lot of idle, nothing absurd
    p = np.ravel(power)
    assert 0.05 < np.mean(p > 690) < 0.4 and 0.15 < np.mean(np.ravel(util) == 0) < 0.4
