"""Replay: a recorded run, played back, exposes the same series with the same values as the live run."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.agent import Agent
from collector.clock import ManualClock
from collector.exporter import Exporter
from collector.recorder import Recorder
from collector.replay import ReplaySource, trace_span
from collector.sim.nvml_model import NvmlDeviceModel, state_from_profile
from collector.source import SourceContext
from collector.sources.infiniband import InfinibandSource
from collector.sources.nvml import NvmlSource
from collector.trace_io import TraceError
from tests.conftest import FIXTURES

S = 10**9


def _series_lines(text: bytes) -> list[str]:
    """Exposition lines without fleetwatch's own source and recorder metrics (the agent, not the data)."""
    return sorted(ln for ln in text.decode().splitlines() if "fleetwatch_source_" not in ln)


async def record_live_run(tmp: Path) -> tuple[Path, dict[int, list[str]]]:
    """Run the NVML source (device model) and the IB source for 12 s of manual time, recording; snapshots."""
    clock = ManualClock()
    ctx = SourceContext(node="gpu-node-7", clock=clock, sys_root=str(FIXTURES / "sys"))
    states = [state_from_profile("h100-80gb-hbm3", i, uuid=f"GPU-{i}{i}{i}{i}0000-0000-0000-0000-000000000000",
                                 pci_bus_id=f"00000000:{0x18 + i:02X}:00.0") for i in range(3)]
    gpu = NvmlSource(ctx, nvml=NvmlDeviceModel(states), xid_events=True)
    agent = Agent([gpu, InfinibandSource(ctx)], clock=clock, timer=clock)
    exporter = Exporter(agent, names="both")
    rec = Recorder(tmp / "live", clock)
    agent.subscribe(rec.add)
    snapshots: dict[int, list[str]] = {}
    try:
        for step in range(12):
            clock.advance(1)
            for i, st in enumerate(states):         # readings that change every second
                st.power_mw = 100_000 + 37_000 * step + 1000 * i
                st.temp_gpu = 40 + step
                st.energy_mj += st.power_mw
                st.clock_event_reasons = 0x4 if step % 3 == 0 else 0x1
            if step == 4:
                states[1].ecc_sbe_volatile += 3
            if step == 5:
                gpu.watcher.record(states[2].uuid, 79, clock.now_ns())     # XID 79, then the GPU is lost
                states[2].lost = True
            if step == 6:
                gpu.watcher.record(states[0].uuid, 13, clock.now_ns())
            for st in agent.states.values():
                await agent.collect_once(st)
            snapshots[clock.now_ns()] = _series_lines(exporter.render_text())
    finally:
        await agent.stop()
        rec.close()
    return tmp / "live", snapshots


async def test_replay_serves_what_the_live_run_served(tmp_path: Path) -> None:
    trace, snapshots = await record_live_run(tmp_path)
    span = trace_span([trace])
    assert span.interval_s == pytest.approx(1.0)
    src = ReplaySource([trace], span, speed=60)
    agent = Agent([src], clock=ManualClock(), timer=ManualClock())
    exporter = Exporter(agent, names="both")
    compared = 0
    for ts, live in snapshots.items():
        batch = await src.update(ts)
        agent.states["replay"].batch, agent.states["replay"].up = batch, True
        agent.states["replay"].batch_mono = agent.timer.monotonic()
        replayed = _series_lines(exporter.render_text())
        assert replayed == live, f"at {ts}: " + "\n".join(sorted(set(live) ^ set(replayed))[:6])
        compared += 1
    assert compared == 12
    assert src.done
    last = snapshots[max(snapshots)]
    assert any("fleetwatch_gpu_lost" in ln and ln.endswith(" 1") for ln in last)
    assert any('xid="79"' in ln for ln in last) and any('xid="13"' in ln for ln in last)


def test_not_a_trace_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no metrics files"):
        trace_span([tmp_path])
