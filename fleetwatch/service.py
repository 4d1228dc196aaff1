"""Service wiring: builds sources, agent, exporter and recorder from a Config and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from collector.agent import Agent
from collector.batch import Batch
from collector.clock import Clock, ScaledClock, WallClock
from collector.exporter import Exporter
from collector.series_view import RecentWindow, TraceView
from collector.source import REGISTRY, Source, SourceContext
from collector.trace import DATA_DIR_TRACES
from collector.webconfig import load_web_config
from fleetwatch.config import Config, ConfigError, parse_hostport, parse_simulate

log = logging.getLogger("fleetwatch")

# Sources that read the host itself; registered on import of their modules.
HOST_SOURCES = ("netdev", "infiniband", "rapl", "redfish")


def _import_sources() -> None:
    # Importing a source module registers it (node_exporter's init() pattern).
    for mod in ("nvml", "kernel_log", "netdev", "infiniband", "rapl", "redfish"):
        importlib.import_module(f"collector.sources.{mod}")


def gpu_present() -> tuple[bool, str]:
    """Whether real NVML is usable here, and why not."""
    try:
        import pynvml
    except ImportError as err:
        return False, f"pynvml not importable: {err}"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        return False, f"NVML unavailable: {err}"
    try:
        n = pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()
    return (n > 0), f"{n} GPU(s) found"


class KernelXidFallback(Source):
    """Reads XIDs from the kernel log only while NVML's event API is unavailable (else an empty batch).

    With both running, the same fleetwatch_gpu_xid_errors_total series would come from two places.
    """

    def __init__(self, inner: Source, gpu: Any) -> None:
        self.inner, self.gpu = inner, gpu
        self.name, self.interval, self.timeout = inner.name, inner.interval, inner.timeout

    async def update(self, ts_ns: int) -> Batch:
        """Delegate unless the GPU source's XID event thread works."""
        if self.gpu.xid_events_supported is True:
            return Batch(self.name, ts_ns)
        return await self.inner.update(ts_ns)

    async def start(self) -> None:
        """Start the kernel-log reader."""
        await self.inner.start()

    async def close(self) -> None:
        """Close the kernel-log reader."""
        await self.inner.close()


class Component(Protocol):
    """A part of the service beyond collection (forecaster, failure scorer, alert engine).

    It reads the service's series views, runs its own loop until `stop`, and publishes what it computes
    with `Service.publish` (served on /metrics and visible to later components through `window`).
    """

    name: str

    async def run(self, stop: asyncio.Event) -> None:
        """Run until stop is set."""
        ...

    def notes(self) -> list[str]:
        """Lines printed at start (where to look)."""
        ...


# Builders of the service's components, in data-flow order: "module:function", each called with
# (config, service) and returning a Component or None (disabled by configuration).
COMPONENT_BUILDERS: list[str] = [
    "predictor.energy.live:build",
    "predictor.failure.live:build",
    "alerts.live:build",            # after the predictors: it reads what they publish
    "alerts.remediation.live:build",
]


@dataclass
class Service:
    """Everything `fleetwatch run` starts, in one typed container."""

    config: Config
    clock: Clock
    agent: Agent
    exporter: Exporter
    recorder: Any = None
    simulator: Any = None
    mode: str = "nvml"
    notes: list[str] = field(default_factory=list)
    # Live series view of this node's readings and of what components published (alerts read it).
    window: RecentWindow = field(default_factory=RecentWindow)
    components: list[Any] = field(default_factory=list)
    _published: dict[str, Batch] = field(default_factory=dict)

    def publish(self, batch: Batch) -> None:
        """Serve a component's batch on /metrics (replacing its previous one) and add it to the window."""
        self._published[batch.source] = batch
        self.window.add(batch)

    def published(self) -> list[Batch]:
        """The components' latest batches (an exporter provider)."""
        return list(self._published.values())

    def history(self) -> TraceView | None:
        """This node's recorded traces as a series view (None when not recording)."""
        if self.recorder is None:
            return None
        return TraceView(Path(self.config.data_dir) / DATA_DIR_TRACES)


def _host_source(name: str, cfg: Config, ctx: SourceContext, simulating: bool,
                 default: bool | None = None) -> Source | None:
    reg = REGISTRY.get(name)
    if reg is None:
        return None
    sc = cfg.source(name)
    if default is None:
        default = reg.default_enabled and not simulating
    enabled = sc.enabled if sc.enabled is not None else default
    if not enabled:
        return None
    try:
        src = reg.factory(ctx, sc.options())
    except (ValueError, TypeError) as err:
        raise ConfigError(f"collector.{name}: {err}") from err
    if sc.interval is not None:
        src.interval = sc.interval
    if sc.timeout is not None:
        src.timeout = sc.timeout
    return src


def build_service(cfg: Config) -> Service:
    """Build (but do not start) the service described by `cfg`."""
    _import_sources()
    from collector.sources.nvml import NvmlSource

    notes: list[str] = []
    simulate = None if cfg.simulate == "off" else cfg.simulate
    if cfg.simulate is None:
        present, why = gpu_present()
        if not present:
            simulate = "4x8"
            notes.append(f"no GPU here ({why}): running the simulated fleet at 4x8")
    sources: list[Source] = []
    simulator = None
    clock: Clock
    gpu_cfg = cfg.source("gpu")
    if simulate is not None:
        from collector.sim.engine import FleetSim
        from collector.sim.faults import parse_inject
        from collector.sim.nvml_model import NvmlDeviceModel
        from collector.sources.sim_node import SimNodeSource

        nodes, gpus = parse_simulate(simulate)
        clock = ScaledClock(cfg.speed) if cfg.speed != 1.0 else WallClock()
        try:
            injects = [parse_inject(s) for s in cfg.inject]
        except ValueError as err:
            raise ConfigError(f"inject: {err}") from err
        try:
            simulator = FleetSim(nodes=nodes, gpus_per_node=gpus, seed=cfg.seed, start_ns=clock.now_ns(),
                                 fault_rate=cfg.fault_rate, injects=injects)
        except ValueError as err:
            raise ConfigError(f"inject {cfg.inject}: {err} (fleet is {nodes}x{gpus})") from err

        def refresh(sim: Any = simulator, c: Clock = clock) -> None:
            # Each node's NVML source advances the shared engine from its own thread; the engine locks.
            sim.advance_to(c.now_ns())

        for i, node in enumerate(simulator.node_names):
            ctx = SourceContext(node=node, clock=clock, simulator=simulator)
            model = NvmlDeviceModel(simulator.states_for_node(i), refresh=refresh)
            src: Source = NvmlSource(ctx, nvml=model, interval=gpu_cfg.interval or 1.0,
                                     timeout=gpu_cfg.timeout or 5.0)
            src.name = f"gpu:{node}"
            sources.append(src)
            sn = SimNodeSource(simulator, i)
            sn.name = f"sim_node:{node}"
            sn.interval = cfg.source("sim_node").interval or gpu_cfg.interval or 1.0
            sources.append(sn)
        mode = f"simulated {nodes}x{gpus}"
    else:
        clock = WallClock()
        ctx = SourceContext(node=cfg.node, clock=clock, proc_root=cfg.proc_root, sys_root=cfg.sys_root,
                            rootfs=cfg.rootfs)
        mode = "nvml"
        if gpu_cfg.enabled is False:          # a central service has no GPUs of its own
            mode = "no local GPU source"
        else:
            gpu_src = NvmlSource(ctx, interval=gpu_cfg.interval or 1.0, timeout=gpu_cfg.timeout or 5.0)
            sources.append(gpu_src)
            kl = _host_source("kernel_xid", cfg, ctx, simulating=False, default=True)
            if kl is not None:
                # Unless configured explicitly, it stands by as the fallback for NVML's event API.
                sources.append(kl if cfg.source("kernel_xid").enabled else KernelXidFallback(kl, gpu_src))
    host_ctx = SourceContext(node=cfg.node, clock=clock, proc_root=cfg.proc_root, sys_root=cfg.sys_root,
                             rootfs=cfg.rootfs)
    for name in HOST_SOURCES:
        s = _host_source(name, cfg, host_ctx, simulating=simulate is not None)
        if s is not None:
            sources.append(s)

    agent = Agent(sources, clock=clock)
    exporter, recorder = _outputs(cfg, agent)
    svc = Service(cfg, clock, agent, exporter, recorder, simulator, mode, notes)
    _add_components(svc)
    return svc


def _add_components(svc: Service) -> None:
    """Wire the window and the components (predictor, alerts) into a built service."""
    svc.agent.subscribe(svc.window.add)
    svc.exporter.providers.append(svc.published)
    for ref in COMPONENT_BUILDERS:
        module, _, func = ref.partition(":")
        comp = getattr(importlib.import_module(module), func)(svc.config, svc)
        if comp is not None:
            svc.components.append(comp)


def _outputs(cfg: Config, agent: Agent) -> tuple[Exporter, Any]:
    """The exporter and (when recording) the recorder, both fed by the agent."""
    web_config = load_web_config(cfg.web_config_file) if cfg.web_config_file else None
    exporter = Exporter(agent, names=cfg.names, web_config=web_config)
    recorder = None
    if cfg.record.enabled:
        from collector.recorder import Recorder

        # Flushing and rotation follow the wall clock: data volume grows with collections, not sim time.
        recorder = Recorder(Path(cfg.data_dir) / DATA_DIR_TRACES, clock=WallClock(),
                            flush_interval_s=cfg.record.flush_interval,
                            rotate_interval_s=cfg.record.rotate_interval, rotate_bytes=cfg.record.rotate_size)
        agent.subscribe(recorder.add)
        exporter.providers.append(lambda: [recorder.self_batch()])
    return exporter, recorder


def build_replay_service(cfg: Config, traces: list[str], speed: float, start_ns: int | None = None,
                         end_ns: int | None = None) -> tuple[Service, Any]:
    """A service whose only source replays recorded traces (exporter and recorder as in `run`)."""
    from collector.replay import ReplaySource, trace_span
    from collector.trace_io import TraceError

    if speed <= 0:
        raise ConfigError(f"--speed must be > 0, got {speed}")
    try:
        span = trace_span(traces)
        source = ReplaySource(traces, span, speed=speed, start_ns=start_ns, end_ns=end_ns)
    except TraceError as err:
        raise ConfigError(str(err)) from err
    clock = ScaledClock(speed, start_ns=source.start_ns)
    agent = Agent([source], clock=clock)
    exporter, recorder = _outputs(cfg, agent)
    mode = f"replay of {', '.join(traces)} at {speed:g}x ({(source.end_ns - source.start_ns) / 1e9 / speed:.0f} s)"
    svc = Service(cfg, clock, agent, exporter, recorder, None, mode)
    _add_components(svc)        # replay runs the predictor and alerts exactly as live collection would
    return svc, source


async def run_replay(svc: Service, source: Any, stop: asyncio.Event | None = None, announce: bool = True) -> None:
    """Run a replay service until the trace ends (or a signal), then stop."""
    stop = stop or asyncio.Event()

    async def watch() -> None:
        while not source.done:
            await asyncio.sleep(min(0.2, source.interval))
        # Let one more scrape interval pass so the last state is served, then end.
        await asyncio.sleep(source.interval)
        stop.set()

    watcher = asyncio.create_task(watch())
    try:
        await run_service(svc, stop, announce)
    finally:
        watcher.cancel()


async def run_service(svc: Service, stop: asyncio.Event | None = None, announce: bool = True) -> None:
    """Start everything, print where to look, run until `stop` is set or SIGINT/SIGTERM arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    host, port = parse_hostport(svc.config.listen)
    bound = await svc.exporter.start(host, port)
    if isinstance(svc.clock, ScaledClock):
        svc.clock.restart()
    await svc.agent.start(stop)
    tasks: list[asyncio.Task[Any]] = []
    if svc.recorder is not None:
        from collector.compact import Retention, compact_loop
        from fleetwatch.analysis.rollup import after_compaction

        tasks.append(asyncio.create_task(svc.recorder.run(stop), name="recorder"))
        rec = svc.config.record
        tasks.append(asyncio.create_task(compact_loop(
            svc.recorder.data_dir, stop, rec.compact_interval, Retention(rec.retention_age, rec.retention_size),
            clock=svc.clock, after_day=after_compaction), name="compaction"))
    if svc.simulator is not None and svc.recorder is not None:
        tasks.append(asyncio.create_task(_ground_truth_loop(svc, stop), name="ground-truth"))
    for comp in svc.components:
        tasks.append(asyncio.create_task(comp.run(stop), name=comp.name))
    if announce:
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        scheme = "https" if svc.config.web_config_file and svc.exporter.web_config.cert_file else "http"
        for n in svc.notes:
            print(f"fleetwatch: {n}", flush=True)
        print(f"fleetwatch: collecting from {svc.mode} ({len(svc.agent.states)} sources)", flush=True)
        print(f"fleetwatch: metrics at {scheme}://{shown}:{bound}/metrics  "
              f"(health: /healthz, readiness: /readyz)", flush=True)
        if svc.recorder is not None:
            print(f"fleetwatch: recording traces to {Path(svc.config.data_dir, 'traces').resolve()}", flush=True)
        for comp in svc.components:
            for line in comp.notes():
                print(f"fleetwatch: {line}", flush=True)
        print("fleetwatch: Ctrl-C to stop", flush=True)
    try:
        await stop.wait()
    finally:
        await svc.agent.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if svc.recorder is not None:
            if svc.simulator is not None:
                svc.recorder.add_ground_truth(svc.simulator.ground_truth())
            await asyncio.to_thread(svc.recorder.close)
        await svc.exporter.stop()


async def _ground_truth_loop(svc: Service, stop: asyncio.Event) -> None:
    # The simulator's fault log goes to its own table, never to the exported metrics.
    while not stop.is_set():
        await asyncio.sleep(max(5.0, svc.config.record.flush_interval))
        svc.recorder.add_ground_truth(svc.simulator.ground_truth())
