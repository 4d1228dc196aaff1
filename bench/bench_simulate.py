"""Benchmark of the fleet simulator: physics steps/s, offline trace rows/s, and KS distance to real fleets.

Run: PYTHONPATH=. python bench/bench_simulate.py            (small sizes, about a minute)
     PYTHONPATH=. python bench/bench_simulate.py --full     (adds 2,000 GPUs x 30 days at 300 s: minutes)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from collector.sim import fleet_data as fd
from collector.sim.engine import FleetSim
from collector.sim.offline import DEFAULT_START_NS, generate_trace

S = 10**9


def bench_steps(nodes: int, seconds: float, step_s: float) -> None:
    """Live-style stepping: sub-steps of step_s with states synced after every call."""
    sim = FleetSim(nodes, 8, 1, DEFAULT_START_NS, max_step_s=step_s)
    t0 = time.perf_counter()
    n = int(seconds / step_s)
    for k in range(1, n + 1):
        sim.advance_to(DEFAULT_START_NS + int(k * step_s * S))
    el = time.perf_counter() - t0
    print(f"live steps   {nodes * 8:>6} GPUs  {n:>6} steps of {step_s:g} s with sync: "
          f"{el:7.2f} s  {n / el:8.0f} steps/s  {el / n * 1e3:6.2f} ms/step")


def bench_trace(nodes: int, days: float, interval_s: float, out: Path) -> None:
    """Offline trace generation and its Parquet output."""
    t0 = time.perf_counter()
    s = generate_trace(out, nodes, 8, days, seed=1, interval_s=interval_s)
    el = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    print(f"trace        {nodes * 8:>6} GPUs  {days:>5g} days @ {interval_s:g} s: {el:7.1f} s  "
          f"{s.metric_rows:>12,} rows  {s.metric_rows / el / 1e6:5.2f} M rows/s  "
          f"{size / 1e6:8.1f} MB ({size / max(s.metric_rows, 1):.2f} B/row)  "
          f"{s.faults} faults, {s.failures} failed, {s.event_rows} events")


def bench_distributions(nodes: int, days: float) -> None:
    """KS distance of a fault-free run's power, temperatures and utilisation to Kalos and Seren."""
    sim = FleetSim(nodes, 8, 4, DEFAULT_START_NS, fault_rate=0.0, max_step_s=300)
    cols: dict[str, list[np.ndarray]] = {"p": [], "t": [], "m": [], "u": []}
    for k in range(1, int(days * 288) + 1):
        sim.advance_to(DEFAULT_START_NS + k * 300 * S, sync=False)
        g = sim.gpu_metrics()
        cols["p"].append(g["fleetwatch_gpu_power_watts"])
        cols["t"].append(g["fleetwatch_gpu_temperature_celsius"])
        cols["m"].append(g["fleetwatch_gpu_memory_temperature_celsius"])
        cols["u"].append(g["fleetwatch_gpu_utilization_ratio"])
    ks = fd.compare(*(np.ravel(cols[c]) for c in "ptu"), mem_temp_c=np.ravel(cols["m"]))
    print(f"KS vs real   {nodes * 8:>6} GPUs  {days:g} days: " + ", ".join(f"{k} {v:.3f}" for k, v in ks.items()))
    print("KS Kalos vs Seren: " + ", ".join(f"{k} {v:.3f}" for k, v in fd.between_clusters().items()))


def main() -> None:
    """Run the benchmarks and print one line per measurement."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="also run 2,000 GPUs x 30 days at 300 s")
    ap.add_argument("--out", type=Path, help="keep the traces here instead of a temporary folder")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        bench_steps(4, 3600.0, 1.0)
        bench_steps(250, 600.0, 5.0)
        bench_distributions(24, 3.0)
        bench_trace(16, 7.0, 300.0, root / "small")
        bench_trace(250, 1.0, 300.0, root / "fleet-1d")
        if args.full:
            bench_trace(250, 30.0, 300.0, root / "fleet-30d")


if __name__ == "__main__":
    main()
