"""Fault kinds: inject syntax, each kind's precursors and failure signature, ground truth, random rates."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from collector.catalogue import CLOCK_EVENT_REASONS
from collector.sim.engine import EVENT_GPU_LOST, EVENT_IB_DOWN, EVENT_IB_UP, EVENT_XID, FleetSim
from collector.sim.faults import (
    CAUSES,
    FAULT_KINDS,
    GPU_FAILURES_PER_GPU_DAY,
    LLAMA3_GPU_DAYS,
    NODE_FAILURES_PER_NODE_DAY,
    FaultSpec,
    parse_inject,
)
from collector.sim.state import NVLINK_CRC_DATA, NVLINK_CRC_FLIT, NVLINK_RECOVERY, NVLINK_REPLAY
from collector.sim.workload import PRETRAIN

START = 1_767_225_600 * 10**9
S = 10**9
BIT = CLOCK_EVENT_REASONS
NODE, LOCAL = 1, 2
G = NODE * 8 + LOCAL                     # fleet-wide index of the injected GPU
DELAY, LEAD = 120.0, 1800.0


@dataclass
class Run:
    """A simulator stepped through one injected fault, with what was observed on the way."""

    sim: FleetSim
    events: list = field(default_factory=list)
    reasons: list[np.ndarray] = field(default_factory=list)     # node's clock reasons per step
    sbe: list[int] = field(default_factory=list)                # the GPU's SBE count per step
    ts: list[float] = field(default_factory=list)


def run_fault(kind: str, gpu: int | None = LOCAL, lead: float = LEAD, until: float = DELAY + LEAD + 600,
              step: float = 10.0, seed: int = 3) -> Run:
    """Inject `kind` on node 1 under a steady training load and step through it."""
    spec = FaultSpec(kind, f"node-{NODE}", gpu, DELAY, lead_s=lead)
    sim = FleetSim(2, 8, seed, START, fault_rate=0.0, injects=[spec], max_step_s=step)
    sim.workload.drain(NODE)
    sim.workload.assign(NODE, PRETRAIN, 0.0, 10 * 86400.0, intensity=1.0)
    run = Run(sim)
    for k in range(1, int(until / step) + 1):
        sim.advance_to(START + int(k * step * S), sync=False)
        run.events.extend(sim.drain_events())
        run.reasons.append(sim.clock_reasons[sim.node_slice(NODE)].copy())
        run.sbe.append(int(sim.ecc_sbe_vol[G]))
        run.ts.append(k * step)
    sim.sync_states()
    return run


def truth(run: Run) -> dict:
    """The run's single ground-truth row."""
    rows = run.sim.ground_truth()
    assert len(rows) == 1
    return rows[0]


def xids(run: Run) -> list[tuple[int, float]]:
    """(code, seconds after start) of the run's XID events."""
    return [(e.code, (e.ts_ns - START) / S) for e in run.events if e.kind == EVENT_XID]


# --- inject syntax -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("gpu-lost@node-0/3+10s", FaultSpec("gpu-lost", 0, 3, 10.0)),
    ("thermal@2+5m", FaultSpec("thermal", 2, None, 300.0)),
    ("ib-link-flap@node-1/4+1h", FaultSpec("ib-link-flap", 1, 4, 3600.0)),
    ("power-supply@node-3+2d", FaultSpec("power-supply", 3, None, 172800.0)),
    ("sudden-dbe@node-12/0", FaultSpec("sudden-dbe", 12, 0, 0.0)),
    ("hbm-degradation@node-0/7+1.5h", FaultSpec("hbm-degradation", 0, 7, 5400.0)),
    ("nvlink@node-0/1+30", FaultSpec("nvlink", 0, 1, 30.0)),
], ids=lambda x: x if isinstance(x, str) else "")
def test_parse_inject(text: str, want: FaultSpec) -> None:
    assert parse_inject(text) == want


@pytest.mark.parametrize(("text", "message"), [
    ("overheat@node-0", "unknown fault kind 'overheat'"),
    ("gpu-lost", "want KIND@NODE"),
    ("gpu-lost@rack-2/1", "bad node 'rack-2'"),
    ("gpu-lost@node-0/x+1s", "bad GPU index 'x'"),
    ("gpu-lost@node-0/1+10y", "bad delay '10y'"),
    ("gpu-lost@node-0/1+", "bad delay ''"),
    ("power-supply@node-0/1", "node-wide"),
], ids=["kind", "no-at", "node", "gpu", "unit", "empty-delay", "node-wide"])
def test_parse_inject_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        parse_inject(text)


def test_fault_kinds_and_calibration() -> None:
    assert set(FAULT_KINDS) == {"hbm-degradation", "gpu-lost", "thermal", "nvlink", "gsp-timeout",
                                "power-supply", "ib-link-flap", "sudden-dbe", "sudden-off-bus"}
    assert all(len(d) > 20 for d in FAULT_KINDS.values())
    # Llama 3: 262 GPU hardware interruptions (6 of them silent data corruption) in 884,736 GPU-days.
    assert LLAMA3_GPU_DAYS == 884_736
    assert 0.28e-3 < GPU_FAILURES_PER_GPU_DAY < 0.31e-3
    assert NODE_FAILURES_PER_NODE_DAY["ib-link-flap"] == pytest.approx(35 / 110_592)
    for count, _, kinds in CAUSES.values():
        assert count > 0 and sum(share for _, share in kinds) == pytest.approx(1.0)


# --- each kind's signature ---------------------------------------------------------------------------

def test_hbm_degradation_rising_sbe_remaps_then_dbe() -> None:
    run = run_fault("hbm-degradation")
    sim, gt = run.sim, truth(run)
    fail_at = DELAY + LEAD
    before = run.sbe[int(fail_at / 10) - 1]
    assert before >= 5                                                      # correctable errors climbed
    early = run.sbe[int((DELAY + LEAD / 2) / 10)] - run.sbe[int(DELAY / 10)]
    assert before - run.sbe[int((DELAY + LEAD / 2) / 10)] > early           # ... faster towards the end
    assert sim.remap_corr[G] >= 1 and sim.remap_unc[G] == 1 and sim.remap_pending[G]
    assert sim.ecc_dbe_vol[G] == 1 and sim.ecc_dbe_agg[G] == 1
    codes = xids(run)
    assert any(c == 63 and t < fail_at for c, t in codes)                   # remaps before the failure
    assert (gt["xid"], fail_at) in codes and gt["xid"] in (48, 94, 95)
    assert gt["kind"] == "hbm-degradation" and gt["cause"] == "hbm3" and gt["had_precursors"]
    assert gt["onset"] == START + DELAY * S and gt["failure"] == START + int(fail_at * S)
    assert gt["entity"] == sim.states[G].uuid and gt["gpu_index"] == LOCAL and gt["node"] == "node-1"
    assert sim.states[G].pending_xids[-2:][0] == gt["xid"]


def test_gpu_lost_replays_then_xid79() -> None:
    run = run_fault("gpu-lost")
    sim, gt = run.sim, truth(run)
    assert sim.pcie_replays[G] >= 5
    assert (79, DELAY + LEAD) in xids(run)
    assert [e.kind for e in run.events if e.entity == sim.states[G].uuid] == [EVENT_XID, EVENT_GPU_LOST]
    assert sim.states[G].lost and sim.gpu_metrics()["fleetwatch_gpu_lost"][G] == 1
    assert gt["xid"] == 79 and gt["had_precursors"]
    assert np.all(sim.util[sim.node_slice(NODE)] == 0)                      # the job died, node drained


def test_thermal_creeps_up_throttles_then_hits_shutdown() -> None:
    run = run_fault("thermal", lead=3600.0, until=DELAY + 3600.0 + 600)
    sim, gt = run.sim, truth(run)
    fail_step = int((DELAY + 3600.0) / 10)
    pre = np.array([r[LOCAL] for r in run.reasons[:fail_step - 1]])
    assert (pre & BIT["sw_thermal_slowdown"]).any()                         # sw slowdown before failure
    assert not (pre & BIT["hw_thermal_slowdown"]).any()
    post = np.array([r[LOCAL] for r in run.reasons[fail_step + 1:]])
    assert np.all(post & BIT["hw_thermal_slowdown"]) and np.all(post & BIT["hw_slowdown"])
    assert sim.temp_gpu[G] >= sim.states[G].temp_shutdown
    others = [i for i in range(8) if i != LOCAL]
    assert not np.array([r[others] & BIT["hw_thermal_slowdown"] for r in run.reasons]).any()
    assert gt["xid"] is None and gt["had_precursors"] and not xids(run)


def test_nvlink_errors_rise_on_one_or_two_links_then_xid74() -> None:
    run = run_fault("nvlink")
    sim, gt = run.sim, truth(run)
    err = sim.nvlink_err[G]
    bad = np.nonzero(err[:, NVLINK_CRC_FLIT] > 20)[0]
    assert 1 <= bad.size <= 2
    assert gt["detail"].endswith("links=" + ",".join(map(str, bad)))
    assert np.all(err[bad, NVLINK_CRC_DATA] > 0) and np.all(err[bad, NVLINK_REPLAY] > 0)
    assert np.all(err[bad, NVLINK_RECOVERY] >= 1)
    assert not sim.nvlink_active[G, bad].any() and sim.nvlink_active[G].sum() == 18 - bad.size
    assert (74, DELAY + LEAD) in xids(run) and gt["xid"] == 74


def test_gsp_timeout_has_no_precursor_and_xid119_then_120() -> None:
    run = run_fault("gsp-timeout", until=DELAY + 120)
    gt = truth(run)
    codes = xids(run)
    assert [c for c, _ in codes] == [119, 120]
    assert codes[0][1] == DELAY and DELAY + 2 <= codes[1][1] <= DELAY + 30
    assert not gt["had_precursors"] and gt["onset"] == gt["failure"] == START + DELAY * S


def test_power_supply_brakes_all_gpus_then_lowers_power_limit() -> None:
    run = run_fault("power-supply", gpu=None, lead=4 * 3600.0, until=DELAY + 4 * 3600.0 + 600)
    sim, gt = run.sim, truth(run)
    fail_step = int((DELAY + 4 * 3600.0) / 10)
    brake = np.array([(r & BIT["hw_power_brake_slowdown"]) > 0 for r in run.reasons[:fail_step]])
    assert brake.any(axis=0).all()                                          # every GPU of the node
    assert np.array_equal(brake.all(axis=1), brake.any(axis=1))             # ... at the same moments
    assert brake[: int(DELAY / 10)].sum() == 0
    limit = sim.power_limit_w[sim.node_slice(NODE)]
    assert np.all(limit < 700) and np.all(sim.power_w[sim.node_slice(NODE)] <= limit)
    assert np.all(sim.power_limit_w[sim.node_slice(0)] == 700)
    assert gt["entity"] == "node-1" and gt["gpu_index"] is None and gt["xid"] is None
    assert not run.events


def test_ib_link_flap_symbol_errors_then_down_and_up() -> None:
    run = run_fault("ib-link-flap", gpu=6, lead=3600.0, until=DELAY + 3600.0 + 300)
    sim, gt = run.sim, truth(run)
    assert sim.ib_symbol_err[NODE, 6] > 20 and sim.ib_link_err_recovery[NODE, 6] >= 1
    assert sim.ib_link_downed[NODE, 6] == 1 and sim.ib_link_downed.sum() == 1
    ib = [(e.kind, e.entity, (e.ts_ns - START) / S) for e in run.events]
    assert [k for k, _, _ in ib] == [EVENT_IB_DOWN, EVENT_IB_UP]
    assert ib[0][1] == "mlx5_6/1" and ib[0][2] == DELAY + 3600.0 and 5 <= ib[1][2] - ib[0][2] <= 120
    assert sim.ib_up.all()
    assert gt["entity"] == "mlx5_6/1" and gt["gpu_index"] is None and gt["cause"] == "network"


@pytest.mark.parametrize("kind", ["sudden-dbe", "sudden-off-bus"])
def test_sudden_failures_come_without_precursors(kind: str) -> None:
    run = run_fault(kind, until=DELAY + 300)
    sim, gt = run.sim, truth(run)
    before = int(DELAY / 10) - 1
    assert run.sbe[before] == 0 and sim.pcie_replays[G] == 0
    assert not gt["had_precursors"] and gt["onset"] == gt["failure"] == START + DELAY * S
    if kind == "sudden-dbe":
        assert xids(run) == [(48, DELAY)] and sim.ecc_dbe_vol[G] == 1 and not sim.lost[G]
    else:
        assert xids(run) == [(79, DELAY)] and sim.lost[G] and sim.states[G].lost


def test_ground_truth_only_after_onset_and_failure_null_until_failed() -> None:
    spec = FaultSpec("hbm-degradation", 0, 1, 600.0, lead_s=3600.0)
    sim = FleetSim(1, 8, 1, START, fault_rate=0.0, injects=[spec], max_step_s=60)
    sim.advance_to(START + 300 * S)
    assert sim.ground_truth() == []
    sim.advance_to(START + 1200 * S)
    (row,) = sim.ground_truth()
    assert row["failure"] is None and row["onset"] == START + 600 * S
    sim.advance_to(START + 4300 * S)
    assert sim.ground_truth()[0]["failure"] == START + 4200 * S


def test_injected_gpu_defaults_to_a_seeded_choice() -> None:
    def pick(seed: int) -> int:
        """The GPU an unaddressed injection lands on for a seed."""
        sim = FleetSim(1, 8, seed, START, fault_rate=0.0, injects=[FaultSpec("sudden-off-bus", 0, None, 5.0)])
        sim.advance_to(START + 10 * S)
        return sim.ground_truth()[0]["gpu_index"]
    assert pick(1) == pick(1)
    assert len({pick(s) for s in range(8)}) > 1


# --- random faults -----------------------------------------------------------------------------------

def test_random_fault_rate_matches_llama3_calibration() -> None:
    nodes, days, rate = 8, 30, 50.0
    sim = FleetSim(nodes, 8, 2024, START, fault_rate=rate, max_step_s=3600)
    sim.advance_to(START + days * 86400 * S, sync=False)
    rows = sim.ground_truth()
    gpu_failed = [r for r in rows if r["gpu_index"] is not None and r["failure"] is not None]
    # One failure per GPU at most (it stays failed): expected = n (1 - exp(-lambda t)).
    p = 1.0 - np.exp(-GPU_FAILURES_PER_GPU_DAY * rate * days)
    expected, sd = 64 * p, np.sqrt(64 * p * (1 - p))
    print(f"GPU failures: {len(gpu_failed)}, expected {expected:.1f} ± {sd:.1f}")
    assert abs(len(gpu_failed) - expected) < 3.5 * sd
    flaps = [r for r in rows if r["kind"] == "ib-link-flap" and r["failure"] is not None]
    lam = NODE_FAILURES_PER_NODE_DAY["ib-link-flap"] * rate * days * nodes
    assert abs(len(flaps) - lam) < 4 * np.sqrt(lam) + 1
    sudden = [r for r in gpu_failed if not r["had_precursors"]]
    share = len(sudden) / len(gpu_failed)
    print(f"without precursors: {len(sudden)}/{len(gpu_failed)} = {share:.2f} (model: 0.43)")
    assert 0.15 < share < 0.75
    assert {r["kind"] for r in sudden} <= {"sudden-dbe", "sudden-off-bus", "gsp-timeout"}
    leads = [(r["failure"] - r["onset"]) / S for r in gpu_failed if r["had_precursors"] and r["onset"] > START]
    assert max(leads) / min(leads) > 10                                     # minutes to days, not one value


def test_random_fault_schedule_does_not_depend_on_step_size() -> None:
    def schedule(step: float) -> list[tuple]:
        """The ground truth of five days stepped at `step` seconds."""
        sim = FleetSim(4, 8, 77, START, fault_rate=200.0, max_step_s=step)
        sim.advance_to(START + 5 * 86400 * S, sync=False)
        return [(r["fault_id"], r["kind"], r["entity"], r["onset"], r["failure"]) for r in sim.ground_truth()]
    coarse, fine = schedule(3600.0), schedule(600.0)
    assert len(coarse) > 5 and coarse == fine
