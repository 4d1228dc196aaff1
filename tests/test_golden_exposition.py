"""Golden exposition: a full exporter run over fixed inputs compared byte for byte with a checked-in file.

Inputs: the NVML device model with two H100 and one L40S profile, and the netdev, infiniband and rapl
sources over tests/fixtures/{proc,sys}. Regenerate after an intended change with
`FLEETWATCH_UPDATE_GOLDEN=1 pytest tests/test_golden_exposition.py` and review the diff.
"""

from __future__ import annotations

import os

from collector.agent import Agent
from collector.clock import ManualClock
from collector.exporter import Exporter
from collector.sim.nvml_model import NvmlDeviceModel, state_from_profile
from collector.source import SourceContext
from collector.sources.infiniband import InfinibandSource
from collector.sources.netdev import NetDevSource
from collector.sources.nvml import NvmlSource
from collector.sources.rapl import RaplSource
from tests.conftest import FIXTURES

GOLDEN = FIXTURES / "e2e-output.txt"


async def render_fixed_inputs() -> bytes:
    """Collect twice (GPM needs two samples) from fixed inputs and render both name sets."""
    clock = ManualClock()
    ctx = SourceContext(node="gpu-node-1", clock=clock, proc_root=str(FIXTURES / "proc"),
                        sys_root=str(FIXTURES / "sys"))
    states = [state_from_profile("h100-80gb-hbm3", 0, uuid="GPU-00000000-0000-0000-0000-000000000000",
                                 pci_bus_id="00000000:18:00.0"),
              state_from_profile("h100-80gb-hbm3", 1, uuid="GPU-11111111-1111-1111-1111-111111111111",
                                 pci_bus_id="00000000:2A:00.0"),
              state_from_profile("l40s", 2, uuid="GPU-22222222-2222-2222-2222-222222222222",
                                 pci_bus_id="00000000:3A:00.0")]
    states[1].ecc_sbe_volatile, states[1].remap_correctable, states[1].clock_event_reasons = 7, 2, 0x4 | 0x20
    sources = [NvmlSource(ctx, nvml=NvmlDeviceModel(states), xid_events=False), NetDevSource(ctx),
               InfinibandSource(ctx), RaplSource(ctx)]
    agent = Agent(sources, clock=clock, timer=clock)
    exporter = Exporter(agent, names="both")
    try:
        for _ in range(2):
            clock.advance(1)
            for st in agent.states.values():
                await agent.collect_once(st)
        for st in agent.states.values():
            st.duration_s = 0.0          # timing varies from run to run
        return exporter.render_text()
    finally:
        await agent.stop()


async def test_exposition_matches_golden_file() -> None:
    got = await render_fixed_inputs()
    if os.environ.get("FLEETWATCH_UPDATE_GOLDEN"):
        GOLDEN.write_bytes(got)
    want = GOLDEN.read_bytes()
    if got != want:
        diff = [f"- {a}\n+ {b}" for a, b in zip(want.decode().splitlines(), got.decode().splitlines(),
                                                    strict=False) if a != b][:10]
        raise AssertionError("exposition differs from tests/fixtures/e2e-output.txt (set "
                             "FLEETWATCH_UPDATE_GOLDEN=1 to regenerate, then review):\n" + "\n".join(diff))
