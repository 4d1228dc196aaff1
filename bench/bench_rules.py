"""Rule evaluation speed: 1,000 rules over 50,000 series must evaluate in under 1 s.

    python -m bench.bench_rules            # 1,000 rules, 50,000 series (1,250 GPUs x 40 metrics)
    python -m bench.bench_rules --small    # 100 rules, 5,000 series: a smoke run

The baseline, measured in the same run on the same window, is the naive evaluator: for each rule, ask the
view for that rule's metric and compare series by series in a Python loop (no sharing between rules, no
NumPy). The engine reads each metric once per evaluation and compares whole columns at once.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import time

from alerts.engine import Engine
from alerts.rules import AbsentRule, RateRule, Rule, ThresholdRule, XidRule, parse_rules
from collector.batch import Batch, gpu_entity
from collector.catalogue import METRICS
from collector.clock import ManualClock
from collector.series_view import RecentWindow
from collector.xid import xid_event

STEP_S = 15.0


def build_window(gpus: int, n_metrics: int, samples: int, seed: int) -> tuple[RecentWindow, list[str], list[str], int]:
    """A window holding `gpus` x `n_metrics` GPU series with `samples` readings each (plus a few XIDs)."""
    rng = random.Random(seed)
    gauges = [m.name for m in METRICS if m.entity == "gpu" and m.type == "gauge" and not m.labels]
    counters = [m.name for m in METRICS if m.entity == "gpu" and m.type == "counter" and not m.labels]
    n_counters = min(len(counters), n_metrics // 4)
    metrics = counters[:n_counters] + gauges[:n_metrics - n_counters]
    ents = [gpu_entity(f"node-{i // 8}", i % 8, f"GPU-{i:08d}", f"00000000:{i % 256:02X}:00.0", "NVIDIA H100", "550")
            for i in range(gpus)]
    clock = ManualClock()
    window = RecentWindow()
    level = [rng.uniform(0, 100) for _ in range(gpus)]
    for s in range(samples):
        b = Batch("bench", clock.now_ns())
        for m in metrics:
            is_counter = m in counters
            for i, e in enumerate(ents):
                # counters grow at a GPU-specific rate; gauges wander around a GPU-specific level
                b.add(m, e, level[i] * s if is_counter else level[i] + rng.gauss(0, 2))
        if s == samples - 2:
            for i in rng.sample(range(gpus), max(1, gpus // 100)):
                b.events.append(xid_event(clock.now_ns(), ents[i].node, ents[i].id, rng.choice([79, 48, 13, 31])))
        window.add(b)
        clock.advance(STEP_S)
    now = clock.now_ns() - int(STEP_S * 1e9)
    return window, [m for m in metrics if m in counters], [m for m in metrics if m not in counters], now


def make_rules(n: int, counters: list[str], gauges: list[str], nodes: int, seed: int,
               storm: bool = False) -> list[Rule]:
    """n rules: 70 % threshold (some with matchers, hysteresis or `by node`), 20 % rate, 5 % absent, 5 % XID.

    Thresholds sit above most series (about 1 % of them hold per rule, a fleet with a few problems);
    `storm` lowers them so that about a quarter of all series hold in every rule.
    """
    rng = random.Random(seed)
    lo, hi = (50, 110) if storm else (95, 140)
    rate_lo, rate_hi = (100, 400) if storm else (380, 600)
    lines = ["rules:"]
    for i in range(n):
        kind = rng.random()
        name = f"BenchRule{i}"
        if kind < 0.70:
            m = rng.choice(gauges)
            v = rng.uniform(lo, hi)
            extra = ""
            r = rng.random()
            if r < 0.2:
                extra = f"\n    matchers: ['node=\"node-{rng.randrange(nodes)}\"']"
            elif r < 0.35:
                extra = f"\n    clear: {v - 5:.1f}"
            elif r < 0.45:
                extra = "\n    by: [node]\n    agg: max"
            lines.append(f"  - alert: {name}\n    kind: threshold\n    metric: {m}\n    op: '>'\n    value: {v:.1f}"
                         f"\n    for: 1m{extra}")
        elif kind < 0.90:
            m = rng.choice(counters)
            v = rng.uniform(rate_lo, rate_hi)
            lines.append(f"  - alert: {name}\n    kind: rate\n    metric: {m}\n    value: {v:.1f}\n    window: 5m\n"
                         f"    per: 1m")
        elif kind < 0.95:
            lines.append(f"  - alert: {name}\n    kind: absent\n    metric: {rng.choice(gauges)}\n    after: 1m\n"
                         f"    lookback: 10m")
        else:
            lines.append(f"  - alert: {name}\n    kind: xid\n    codes: [{rng.choice([79, 48, 13, 31])}]")
    return parse_rules("\n".join(lines) + "\n", "bench")


def naive(rules: list[Rule], window: RecentWindow, now: int) -> int:
    """The baseline: per rule, per series, in Python; returns how many series hold."""
    holding = 0
    ops = {">": lambda a, b: a > b}
    for r in rules:
        if isinstance(r, ThresholdRule):
            latest = window.latest(r.metric, now)
            ents = window.entities()
            groups: dict[str, float] = {}
            for key, v in latest.items():
                labels = dict(zip(("node", "gpu"), ents[key].labels[:2], strict=True))
                if any(labels.get(m.name) != m.value for m in r.matchers):
                    continue
                if r.by is not None:
                    g = labels["node"]
                    groups[g] = max(groups.get(g, -math.inf), v)
                elif ops[r.op](v, r.value):
                    holding += 1
            holding += sum(ops[r.op](v, r.value) for v in groups.values())
        elif isinstance(r, RateRule):
            start = now - int(r.window * 1e9)
            frame = window.range(r.metric, start, now, STEP_S, stale_s=r.window)
            for row in frame.values:
                inc = 0.0
                prev = None
                for v in row:
                    if math.isnan(v):
                        continue
                    if prev is not None:
                        inc += v - prev if v >= prev else v
                    prev = v
                if inc * r.per / r.window > r.value:
                    holding += 1
        elif isinstance(r, AbsentRule):
            now_vals = window.latest(r.metric, now, stale_s=r.after)
            seen = window.range(r.metric, now - int(r.lookback * 1e9), now, r.lookback / 12, stale_s=r.lookback / 12)
            for key, row in zip(seen.keys, seen.values, strict=True):
                if key not in now_vals and not all(math.isnan(v) for v in row):
                    holding += 1
        elif isinstance(r, XidRule):
            codes = set(r.selected())
            holding += len({(e.node, e.entity, e.code) for e in window.events(now - int(r.window * 1e9), now + 1)
                            if e.code in codes})
    return holding


def main() -> None:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="100 rules over 5,000 series")
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--gpus", type=int, default=1250)
    ap.add_argument("--metrics", type=int, default=40)
    ap.add_argument("--samples", type=int, default=24, help="readings per series in the window (15 s apart)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.small:
        args.rules, args.gpus = 100, 125
    t = time.perf_counter()
    window, counters, gauges, now = build_window(args.gpus, args.metrics, args.samples, args.seed)
    n_series = args.gpus * (len(counters) + len(gauges))
    rules = make_rules(args.rules, counters, gauges, max(1, args.gpus // 8), args.seed)
    print(f"setup: {n_series:,} series x {args.samples} readings, {len(rules):,} rules "
          f"({time.perf_counter() - t:.1f} s)")

    # Wall seconds, and CPU seconds of this process: on a shared machine the CPU time is the steadier figure.
    rows = []
    t, c = time.perf_counter(), time.process_time()
    naive_holding = naive(rules, window, now)
    t_naive, c_naive = time.perf_counter() - t, time.process_time() - c
    rows.append(("naive per-series Python loop (baseline)", t_naive, c_naive, naive_holding))
    steady = steady_cpu = math.inf
    for storm in (False, True):
        rs = rules if not storm else make_rules(args.rules, counters, gauges, max(1, args.gpus // 8), args.seed,
                                                storm=True)
        engine = Engine(rs)
        times, cpus = [], []
        alerts: list = []  # type: ignore[type-arg]
        for _ in range(args.repeat):
            t, c = time.perf_counter(), time.process_time()
            alerts = engine.evaluate(window, now)
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        med = statistics.median(times[1:]) if len(times) > 1 else times[0]
        cmed = statistics.median(cpus[1:]) if len(cpus) > 1 else cpus[0]
        what = "storm: ~25 % of series hold" if storm else "few alerts"
        rows.append((f"engine, {what}, first evaluation", times[0], cpus[0], len(alerts)))
        rows.append((f"engine, {what}, steady state", med, cmed, len(alerts)))
        if not storm:
            steady, steady_cpu = med, cmed
            if len(alerts) != naive_holding:
                print(f"warning: engine has {len(alerts)} alerts, naive {naive_holding} holding series")
    print(f"\n{'evaluator':<52} {'wall s':>8} {'cpu s':>8} {'vs naive':>9} {'alerts':>9}")
    for name, sec, cpu, n in rows:
        print(f"{name:<52} {sec:>8.3f} {cpu:>8.3f} {t_naive / sec:>8.1f}x {n:>9,}")
    if not args.small:
        verdict = "PASS" if steady < 1.0 else "FAIL"
        print(f"\ntarget: {len(rules):,} rules over {n_series:,} series in < 1 s (steady state, few alerts): "
              f"{verdict} ({steady:.3f} s wall, {steady_cpu:.3f} s CPU; load average "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
