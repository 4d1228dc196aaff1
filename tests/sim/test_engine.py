"""Fleet simulator engine: determinism, identity, physics invariants, events and the sim_node source."""

from __future__ import annotations

import re

import numpy as np
import pytest

from collector.catalogue import BY_NAME, CLOCK_EVENT_REASONS
from collector.sim.engine import EVENT_IB_DOWN, EVENT_IB_UP, EVENT_XID, TAU_GPU_S, FleetSim
from collector.sim.faults import FaultSpec
from collector.sim.workload import PRETRAIN
from collector.source import NoDataError, SourceContext
from collector.sources.sim_node import SimNodeSource, _factory

START = 1_767_225_600 * 10**9
S = 10**9
BIT = CLOCK_EVENT_REASONS


def quiet_node(sim: FleetSim, node: int) -> None:
    """Take a node out of the job schedule so a test can control its load."""
    sim.workload.drain(node)
    sim.workload.kill(node, sim.t_s)


def test_same_seed_same_fleet_different_seed_different_fleet() -> None:
    a = FleetSim(3, 8, 42, START, fault_rate=5.0, max_step_s=30)
    b = FleetSim(3, 8, 42, START, fault_rate=5.0, max_step_s=30)
    c = FleetSim(3, 8, 43, START, fault_rate=5.0, max_step_s=30)
    for sim in (a, b, c):
        sim.advance_to(START + 3 * 3600 * S)
    for name in ("power_w", "temp_gpu", "temp_mem", "util", "energy_mj", "ecc_sbe_vol", "pcie_replays",
                 "nvlink_bw", "ib_rcv_bytes", "node_power", "clock_reasons"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert [s.uuid for s in a.states] == [s.uuid for s in b.states]
    assert a.ground_truth() == b.ground_truth()
    assert [s.uuid for s in a.states] != [s.uuid for s in c.states]
    assert not np.array_equal(a.power_w, c.power_w)


def test_identity_names_uuids_and_hgx_bus_layout() -> None:
    sim = FleetSim(2, 8, 7, START, fault_rate=0.0)
    assert sim.node_names == ["node-0", "node-1"]
    assert sim.n_gpus == len(sim.states) == 16
    uuid = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    assert all(uuid.match(s.uuid) for s in sim.states)
    assert len({s.uuid for s in sim.states}) == 16
    node1 = sim.states_for_node(1)
    assert [s.index for s in node1] == list(range(8)) == [s.minor_number for s in node1]
    assert [s.pci_bus_id for s in node1] == [f"00000000:{b}:00.0" for b in
                                             ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")]
    assert node1[0] is sim.states[8]
    assert all(s.name == "NVIDIA H100 80GB HBM3" for s in sim.states)


def test_energy_counter_integrates_reported_power_exactly() -> None:
    sim = FleetSim(1, 8, 3, START, fault_rate=0.0, max_step_s=5)
    integral = sim.energy_mj.copy()
    for k in range(1, 721):                                   # one hour in 5 s steps
        sim.advance_to(START + k * 5 * S, sync=False)
        integral += sim.power_w * 1000.0 * 5.0                # power held over the step it is reported for
    assert np.allclose(sim.energy_mj, integral, rtol=1e-12, atol=1e-3)
    energy = np.array([s.energy_mj for s in sim.states])
    sim.sync_states()
    energy = np.array([s.energy_mj for s in sim.states])
    assert np.array_equal(energy, np.floor(sim.energy_mj).astype(np.int64))
    before = energy.copy()
    sim.advance_to(START + 7200 * S)
    assert np.all(np.array([s.energy_mj for s in sim.states]) >= before)       # monotone


def test_power_never_exceeds_limit_and_cap_sets_sw_power_cap() -> None:
    sim = FleetSim(2, 8, 5, START, fault_rate=0.0, max_step_s=10)
    quiet_node(sim, 0)
    sim.workload.assign(0, PRETRAIN, sim.t_s, 3 * 3600.0, intensity=1.3)   # asks for more than 700 W
    seen_cap = np.zeros(8, dtype=bool)
    for k in range(1, 361):
        sim.advance_to(START + k * 10 * S, sync=False)
        assert np.all(sim.power_w <= sim.power_limit_w)
        assert np.all(sim.power_w > 0)
        seen_cap |= (sim.clock_reasons[:8] & BIT["sw_power_cap"]) > 0
    assert seen_cap.all()
    assert np.all(sim.power_w[:8] > 650)
    assert np.all(sim.sm_clock[:8] < 1980)                                     # clocks drop at the cap


def test_idle_gpu_shows_idle_clocks_and_gpu_idle_bit() -> None:
    sim = FleetSim(1, 4, 5, START, fault_rate=0.0, max_step_s=10)
    quiet_node(sim, 0)
    sim.advance_to(START + 1800 * S)
    assert np.all(sim.util == 0)
    assert np.all(sim.clock_reasons & BIT["gpu_idle"])
    assert np.all(sim.sm_clock == 345)
    assert np.all((sim.power_w > 60) & (sim.power_w < 85))
    assert np.all(sim.fb_used == 0)
    assert np.all(sim.temp_mem > sim.temp_gpu)                                 # HBM runs warmer at idle


def test_temperature_lags_power_with_first_order_response() -> None:
    sim = FleetSim(1, 8, 11, START, fault_rate=0.0, max_step_s=1)
    quiet_node(sim, 0)
    sim.advance_to(START + 1800 * S)                                           # settle at idle
    t_idle = sim.temp_gpu.copy()
    p_idle = sim.power_w.copy()
    t0 = sim.t_s
    sim.workload.assign(0, PRETRAIN, t0, 4 * 3600.0, intensity=0.9)
    sim.advance_to(START + int((t0 + 2) * S))
    assert np.all(sim.power_w > p_idle + 400)                                  # power jumps at once
    rise_2s = sim.temp_gpu - t_idle
    sim.advance_to(START + int((t0 + TAU_GPU_S) * S))
    rise_tau = sim.temp_gpu - t_idle
    sim.advance_to(START + int((t0 + 8 * TAU_GPU_S) * S))
    rise_final = sim.temp_gpu - t_idle
    assert np.all(rise_final > 15)
    assert np.all(rise_2s < 0.1 * rise_final)                                  # temperature lags
    frac = rise_tau / rise_final
    assert np.all((frac > 0.5) & (frac < 0.75))                                # ~1 - 1/e after one tau


def test_job_drives_memory_pcie_nvlink_ib_and_gpm() -> None:
    sim = FleetSim(2, 8, 9, START, fault_rate=0.0, max_step_s=10)
    quiet_node(sim, 0)
    sim.advance_to(START + 600 * S)
    bw0, ib0 = sim.nvlink_bw[:8].copy(), sim.ib_xmit_bytes[0].copy()
    idle_node_w = sim.node_power_w()[0]
    sim.workload.assign(0, PRETRAIN, sim.t_s, 3600.0, intensity=1.0)
    sim.advance_to(START + 1800 * S)
    assert np.all(sim.util[:8] > 0.9)
    assert np.all(sim.fb_used[:8] > 50e9)
    assert np.all(sim.nvlink_bw[:8] > bw0)
    assert np.all(sim.ib_xmit_bytes[0] - ib0 > 1e12)                          # many GB over 20 minutes
    assert np.all(sim.sm_active[:8] > 0.5) and np.all(sim.tensor_active[:8] > 0.2)
    assert np.all(sim.pcie_rx_kbps[:8] > 0)
    busy_node_w = sim.node_power_w()[0]
    assert 1800 < idle_node_w < 2600 and 6000 < busy_node_w < 9000


def test_advance_ignores_the_past_and_syncs_states_in_nvml_units() -> None:
    sim = FleetSim(1, 2, 1, START, fault_rate=0.0)
    sim.advance_to(START + 60 * S, sync=False)
    before = (sim.t_ns, sim.energy_mj.copy())
    sim.advance_to(START + 30 * S)                                             # older: no step, but syncs
    assert sim.t_ns == before[0] and np.array_equal(sim.energy_mj, before[1])
    st = sim.states[1]
    assert st.power_mw == round(sim.power_w[1] * 1000)
    assert st.temp_gpu == round(sim.temp_gpu[1]) and isinstance(st.temp_gpu, int)
    assert st.clock_event_reasons == int(sim.clock_reasons[1])
    assert len(st.nvlink_errors) == 18 and len(st.nvlink_errors[0]) == 4
    assert st.pcie_tx_kbps == int(sim.pcie_tx_kbps[1])


def test_gpu_metrics_are_catalogue_metrics_in_base_units_without_ground_truth() -> None:
    sim = FleetSim(2, 8, 2, START, fault_rate=0.0, max_step_s=60)
    sim.advance_to(START + 3600 * S)
    g = sim.gpu_metrics()
    for name in (*g, *sim.ib_metrics(), "fleetwatch_node_power_watts"):
        assert name in BY_NAME and BY_NAME[name].record, name
    assert {BY_NAME[n].entity for n in g} == {"gpu"}
    assert all(v.shape == (16,) for v in g.values())
    assert np.all((g["fleetwatch_gpu_utilization_ratio"] >= 0) & (g["fleetwatch_gpu_utilization_ratio"] <= 1))
    assert np.allclose(g["fleetwatch_gpu_framebuffer_total_bytes"], sim.states[0].fb_total)
    assert np.all(g["fleetwatch_gpu_sm_clock_hertz"] >= 345e6)
    assert not any(w in n for n in g for w in ("fault", "onset", "truth", "precursor"))


def test_healthy_fleet_shows_benign_errors_but_no_failures() -> None:
    sim = FleetSim(8, 8, 21, START, fault_rate=0.0, max_step_s=3600)
    sim.advance_to(START + 30 * 86400 * S, sync=False)
    assert sim.ecc_sbe_vol.sum() > 0 and sim.pcie_replays.sum() > 0
    assert sim.nvlink_err.sum() > 0 and sim.ib_symbol_err.sum() > 0
    assert sim.ecc_dbe_vol.sum() == 0 and not sim.lost.any() and not sim.failed.any()
    assert sim.ground_truth() == []
    kinds = {e.kind for e in sim.drain_events()}
    assert kinds <= {EVENT_XID}                                                # benign XID 63 at most


def test_drain_events_filters_by_node_and_kind() -> None:
    sim = FleetSim(2, 8, 4, START, fault_rate=0.0, max_step_s=5, injects=[
        FaultSpec("ib-link-flap", 1, 3, 10.0, lead_s=60.0), FaultSpec("sudden-dbe", 0, 2, 20.0)])
    sim.advance_to(START + 400 * S)
    ib = sim.drain_events(node="node-1", kinds={EVENT_IB_DOWN, EVENT_IB_UP})
    assert [e.kind for e in ib] == [EVENT_IB_DOWN, EVENT_IB_UP]
    assert all(e.entity == "mlx5_3/1" for e in ib)
    rest = sim.drain_events()
    assert [(e.node, e.code) for e in rest] == [("node-0", 48)]
    assert sim.drain_events() == []
    assert sim.states[2].pending_xids == [48]


def test_validation_errors() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        FleetSim(0, 8, 1, START)
    with pytest.raises(ValueError, match="node index 5 out of range"):
        FleetSim(2, 8, 1, START, injects=[FaultSpec("gpu-lost", 5, 0, 0.0)])
    with pytest.raises(ValueError, match="GPU 9 out of range"):
        FleetSim(2, 8, 1, START, injects=[FaultSpec("gpu-lost", "node-1", 9, 0.0)])
    with pytest.raises(ValueError, match="fault_rate"):
        FleetSim(2, 8, 1, START, fault_rate=-1)


async def test_sim_node_source_reports_ib_ports_node_power_and_ib_events() -> None:
    sim = FleetSim(2, 8, 6, START, fault_rate=0.0, max_step_s=5,
                   injects=[FaultSpec("ib-link-flap", 1, 5, 30.0, lead_s=60.0)])
    src = SimNodeSource(sim, 1)
    batch = await src.update(START + 10 * S)
    assert sim.t_ns == START + 10 * S
    ports = {e.id for e in batch.entity if e.kind == "ib_port"}
    assert ports == {f"mlx5_{p}/1" for p in range(8)}
    assert len(batch) == 8 * 9 + 1
    power = [v for m, v in zip(batch.metric, batch.value, strict=True) if m == "fleetwatch_node_power_watts"]
    assert len(power) == 1 and 1500 < power[0] < 10000
    assert all(e.labels[0] == "node-1" for e in batch.entity)
    batch = await src.update(START + 300 * S)
    assert [e.kind for e in batch.events] == [EVENT_IB_DOWN, EVENT_IB_UP]
    downed = {e.id: v for m, e, v, _ in batch.rows() if m == "fleetwatch_infiniband_port_link_downed_total"}
    assert downed["mlx5_5/1"] == 1 and downed["mlx5_0/1"] == 0
    with pytest.raises(NoDataError):
        await SimNodeSource(None, 0).update(START)
    assert _factory(SourceContext(node="node-1", simulator=sim), {}).node_index == 1
    with pytest.raises(ValueError, match="not in the simulated fleet"):
        _factory(SourceContext(node="gpu-host-7", simulator=sim), {})
