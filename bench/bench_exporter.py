"""Benchmark: collection CPU time, scrape latency and agent RSS for 8, 64 and 512 simulated GPUs.

Every figure is printed next to a baseline measured in the same run: the same series rendered by a bare
prometheus-client registry (GaugeMetricFamily/CounterMetricFamily + generate_latest).
Run: `python -m bench.bench_exporter [--gpus 8,64,512] [--rss-collections 10000]`.
Targets (issue 2): 8 GPUs at 1 Hz under 1% of one core; scrape p99 under 20 ms at 8 GPUs and 250 ms at 512.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Iterator

import aiohttp
import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from collector.agent import Agent
from collector.batch import Batch
from collector.catalogue import BY_NAME
from collector.clock import ManualClock
from collector.exporter import Exporter
from collector.sim.engine import FleetSim
from collector.sim.nvml_model import NvmlDeviceModel
from collector.source import SourceContext
from collector.sources.nvml import NvmlSource


def build(n_gpus: int, clock: ManualClock) -> tuple[FleetSim, list[NvmlSource]]:
    """A simulated fleet of n_gpus (8 per node) and one NVML source per node."""
    nodes = max(1, n_gpus // 8)
    sim = FleetSim(nodes=nodes, gpus_per_node=min(8, n_gpus), seed=1, start_ns=clock.now_ns(), fault_rate=0)

    def refresh() -> None:
        sim.advance_to(clock.now_ns())

    sources = []
    for i, node in enumerate(sim.node_names):
        src = NvmlSource(SourceContext(node=node, clock=clock), nvml=NvmlDeviceModel(sim.states_for_node(i),
                         refresh=refresh), xid_events=False)
        src.name = f"gpu:{node}"
        sources.append(src)
    return sim, sources


class _BareCollector(Collector):
    """The same series as plain client_python families, built per scrape from the batches."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        fams: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for b in self.batches:
            for metric, ent, value, extra in zip(b.metric, b.entity, b.value, b.extra, strict=True):
                fam = fams.get(metric)
                spec = BY_NAME[metric]
                if fam is None:
                    cls = CounterMetricFamily if spec.type == "counter" else GaugeMetricFamily
                    fam = fams[metric] = cls(metric, spec.help, labels=list(spec.labelnames))
                fam.add_metric([*ent.labels, *extra], value)
        yield from fams.values()


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of xs."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def bench_size(n_gpus: int, scrapes: int) -> dict[str, float]:
    """Collection CPU and scrape latency for one fleet size."""
    clock = ManualClock()
    _sim, sources = build(n_gpus, clock)
    agent = Agent(sources, clock=clock)
    # warm up: discovery, GPM first sample
    for _ in range(2):
        clock.advance(1)
        for st in agent.states.values():
            await agent.collect_once(st)
    reps = max(5, 400 // n_gpus)
    cpu0 = time.process_time()
    for _ in range(reps):
        clock.advance(1)
        for st in agent.states.values():
            st.source.collect(clock.now_ns())    # the blocking part, measured directly
    cpu_per_collect = (time.process_time() - cpu0) / reps
    exporter = Exporter(agent, names="both")    # subscribes: batches are pre-rendered as they arrive
    for st in agent.states.values():
        await agent.collect_once(st)
    batches = [b for _, b in agent.fresh_batches()]
    series = sum(len(b) for b in batches)

    port = await exporter.start("127.0.0.1", 0)
    lat: list[float] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(scrapes):
            t0 = time.perf_counter()
            async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                await r.read()
            lat.append(time.perf_counter() - t0)
    await exporter.stop()

    render_native: list[float] = []
    render_bare: list[float] = []
    native = Exporter(agent, names="native").renderer
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_BareCollector(batches))
    for _ in range(max(10, scrapes // 4)):
        t0 = time.perf_counter()
        native.render_text(batches)
        render_native.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate_latest(reg)
        render_bare.append(time.perf_counter() - t0)
    await agent.stop()
    return {
        "gpus": n_gpus, "series": series, "cpu_ms": cpu_per_collect * 1e3,
        "core_pct_1hz": cpu_per_collect * 100, "scrape_p50_ms": pct(lat, 0.5) * 1e3,
        "scrape_p99_ms": pct(lat, 0.99) * 1e3, "render_native_ms": statistics.median(render_native) * 1e3,
        "render_bare_ms": statistics.median(render_bare) * 1e3,
    }


async def bench_rss(collections: int) -> tuple[float, float, float]:
    """RSS (MiB) after 10% of the collections, at the end, and the growth."""
    clock = ManualClock()
    _, sources = build(8, clock)
    agent = Agent(sources, clock=clock)
    exporter = Exporter(agent)
    proc = psutil.Process()
    st = next(iter(agent.states.values()))
    early = 0.0
    for i in range(collections):
        clock.advance(1)
        await agent.collect_once(st)
        if i % 100 == 0:
            exporter.render_text()
        if i == collections // 10:
            gc.collect()
            early = proc.memory_info().rss / 2**20
    gc.collect()
    end = proc.memory_info().rss / 2**20
    await agent.stop()
    return early, end, end - early


def main() -> None:
    """Print the benchmark table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", default="8,64,512")
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--rss-collections", type=int, default=10_000)
    args = ap.parse_args()
    print(f"{'GPUs':>5} {'series':>7} {'collect CPU ms':>15} {'% core @1Hz':>12} {'scrape p50 ms':>14} "
          f"{'scrape p99 ms':>14} {'render ms':>10} {'bare client ms':>15} {'ratio':>6}")
    for n in (int(x) for x in args.gpus.split(",")):
        r = asyncio.run(bench_size(n, args.scrapes if n <= 64 else max(20, args.scrapes // 5)))
        print(f"{r['gpus']:>5} {r['series']:>7} {r['cpu_ms']:>15.2f} {r['core_pct_1hz']:>12.2f} "
              f"{r['scrape_p50_ms']:>14.2f} {r['scrape_p99_ms']:>14.2f} {r['render_native_ms']:>10.2f} "
              f"{r['render_bare_ms']:>15.2f} {r['render_native_ms'] / r['render_bare_ms']:>6.2f}")
    early, end, growth = asyncio.run(bench_rss(args.rss_collections))
    print(f"RSS after {args.rss_collections // 10} collections {early:.1f} MiB, after {args.rss_collections}: "
          f"{end:.1f} MiB (growth {growth:+.1f} MiB)")


if __name__ == "__main__":
    main()
