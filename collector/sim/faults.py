"""Fault injection with ground truth: fault kinds, their precursors and failures, and the random fault model.

Random fault rate, calibrated to Meta's Llama 3 pre-training run (Dubey et al., "The Llama 3 Herd of
Models", 2024, table 5): 16,384 H100 GPUs over 54 days (884,736 GPU-days, 110,592 8-GPU node-days) had
419 unexpected interruptions. The hardware causes fleetwatch simulates, and the kinds they map to:

    cause (Llama 3 count)            kind(s)                                          precursors
    faulty_gpu (148)                 gpu-lost 40 %, nvlink 25 %, sudden-off-bus 35 %  not for sudden-off-bus
    hbm3 (72)                        hbm-degradation 70 %, sudden-dbe 30 %             not for sudden-dbe
    sram (19)                        sudden-dbe (SRAM uncorrectable, no row remap)     none
    gsp (17)                         gsp-timeout                                        none
    thermal_interface (6)            thermal                                            yes
    network (35, per node)           ib-link-flap                                       yes
    power_supply (3, per node)       power-supply                                       yes

The GPU causes sum to 256 per 884,736 GPU-days, about 0.29 per 1,000 GPU-days (0.30 with the 6 silent data
corruptions, which are not simulated: by definition no telemetry shows them). `fault_rate` multiplies
every rate. About 43 % of GPU failures have no precursor at all (35 % of faulty-GPU, 30 % of HBM3, all
SRAM and GSP failures), so a predictor cannot catch everything. Precursor lead times (onset to failure)
are lognormal, from minutes to days (LEAD_TIMES), and each fault has a lognormal severity that scales its
precursor rates, so some precursors are loud and some barely rise above the healthy fleet's noise.

After a GPU failure the GPU stays failed for the rest of the run (no repair is modelled): its node's job
is killed (except for thermal and power-supply faults, which degrade the job) and the node is drained,
i.e. it gets no new jobs. IB link flaps recover after a minute or two and may recur; power-supply
failures leave the node running with a lowered power limit.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from collector.sim.state import NVLINK_CRC_DATA, NVLINK_CRC_FLIT, NVLINK_RECOVERY, NVLINK_REPLAY

if TYPE_CHECKING:
    from collector.sim.engine import FleetSim

FAULT_KINDS: dict[str, str] = {
    "hbm-degradation": "HBM wear-out: correctable ECC errors rise and rows get remapped (XID 63), then a "
                       "double-bit error (XID 48, 94 or 95) with an uncorrectable row remap",
    "gpu-lost": "PCIe replays climb for a while, then the GPU falls off the bus (XID 79, NVML: GPU lost)",
    "thermal": "Cooling failure: temperature creeps up over minutes to hours, software then hardware "
               "thermal slowdown; fails when the GPU reaches its shutdown threshold",
    "nvlink": "NVLink CRC errors, replays and recoveries rise on one or two links, then XID 74 and the "
              "links go inactive",
    "gsp-timeout": "GSP firmware stops answering: XID 119 (RPC timeout) then XID 120; no precursor",
    "power-supply": "A node power supply degrades: bursts of hardware power-brake slowdown on all GPUs "
                    "of the node, then the node runs with a lowered GPU power limit",
    "ib-link-flap": "An InfiniBand port's symbol errors and link recoveries rise, then the link goes "
                    "down and back up (link_downed +1)",
    "sudden-dbe": "A double-bit ECC error out of the blue (XID 48): no precursor",
    "sudden-off-bus": "The GPU falls off the bus out of the blue (XID 79): no precursor",
}

NODE_KINDS: frozenset[str] = frozenset({"power-supply", "ib-link-flap"})
SUDDEN_KINDS: frozenset[str] = frozenset({"gsp-timeout", "sudden-dbe", "sudden-off-bus"})

LLAMA3_GPU_DAYS = 16_384 * 54
LLAMA3_NODE_DAYS = 16_384 // 8 * 54

# cause -> (Llama 3 count, per "gpu" or "node", ((kind, share), ...))
CAUSES: dict[str, tuple[int, str, tuple[tuple[str, float], ...]]] = {
    "faulty_gpu": (148, "gpu", (("gpu-lost", 0.40), ("nvlink", 0.25), ("sudden-off-bus", 0.35))),
    "hbm3": (72, "gpu", (("hbm-degradation", 0.70), ("sudden-dbe", 0.30))),
    "sram": (19, "gpu", (("sudden-dbe", 1.0),)),
    "gsp": (17, "gpu", (("gsp-timeout", 1.0),)),
    "thermal_interface": (6, "gpu", (("thermal", 1.0),)),
    "network": (35, "node", (("ib-link-flap", 1.0),)),
    "power_supply": (3, "node", (("power-supply", 1.0),)),
}

# The cause an injected fault is booked under in the ground truth.
KIND_CAUSE: dict[str, str] = {
    "hbm-degradation": "hbm3", "gpu-lost": "faulty_gpu", "thermal": "thermal_interface",
    "nvlink": "faulty_gpu", "gsp-timeout": "gsp", "power-supply": "power_supply",
    "ib-link-flap": "network", "sudden-dbe": "hbm3", "sudden-off-bus": "faulty_gpu",
}

# Lognormal lead time onset -> failure for random faults: (median seconds, sigma, min s, max s).
LEAD_TIMES: dict[str, tuple[float, float, float, float]] = {
    "hbm-degradation": (2 * 86400.0, 1.2, 1800.0, 14 * 86400.0),
    "gpu-lost": (6 * 3600.0, 1.5, 300.0, 7 * 86400.0),
    "nvlink": (12 * 3600.0, 1.3, 600.0, 7 * 86400.0),
    "thermal": (3600.0, 1.2, 300.0, 2 * 86400.0),
    "power-supply": (86400.0, 1.0, 1800.0, 7 * 86400.0),
    "ib-link-flap": (2 * 3600.0, 1.5, 120.0, 3 * 86400.0),
}
# Lead time of injected faults (seconds): short, so that a demo or a test sees the failure soon.
INJECT_LEAD_S: dict[str, float] = {
    "hbm-degradation": 1200.0, "gpu-lost": 30.0, "nvlink": 900.0, "thermal": 900.0,
    "power-supply": 600.0, "ib-link-flap": 300.0,
}


def _per_day(unit: str) -> dict[str, float]:
    """Failure rate per GPU-day (unit "gpu") or node-day ("node") by kind, at fault_rate 1."""
    days = LLAMA3_GPU_DAYS if unit == "gpu" else LLAMA3_NODE_DAYS
    out: dict[str, float] = {}
    for count, u, kinds in CAUSES.values():
        if u == unit:
            for kind, share in kinds:
                out[kind] = out.get(kind, 0.0) + count * share / days
    return out


GPU_FAILURES_PER_GPU_DAY: float = sum(c for c, u, _ in CAUSES.values() if u == "gpu") / LLAMA3_GPU_DAYS
NODE_FAILURES_PER_NODE_DAY: dict[str, float] = _per_day("node")
NODE_CAUSE: dict[str, str] = {kinds[0][0]: c for c, (_, u, kinds) in CAUSES.items() if u == "node"}


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """A fault to inject: kind, node (index or name), GPU index in the node (or IB port), delay to onset.

    `lead_s` is the time from onset (precursors start) to failure; None takes INJECT_LEAD_S[kind]
    (sudden kinds fail at onset).
    """

    kind: str
    node: int | str
    gpu: int | None = None
    delay_s: float = 0.0
    lead_s: float | None = None


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_INJECT_RE = re.compile(r"^(?P<kind>[a-z-]+)@(?P<node>[^/+]+)(?:/(?P<gpu>[^+]*))?(?:\+(?P<delay>.*))?$")


def parse_delay(text: str) -> float:
    """Parse a delay like "10s", "5m", "2h", "1d" or "30" (seconds) into seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise ValueError(f"bad delay {text!r}: want a number with unit s, m, h or d (e.g. 10s, 5m, 2h, 1d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_inject(text: str) -> FaultSpec:
    """Parse KIND@NODE[/GPU][+DELAY], e.g. "gpu-lost@node-0/3+10s", into a FaultSpec."""
    m = _INJECT_RE.match(text.strip())
    if not m:
        raise ValueError(f"bad fault spec {text!r}: want KIND@NODE[/GPU][+DELAY], e.g. gpu-lost@node-0/3+10s")
    kind = m.group("kind")
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r} in {text!r}; known kinds: {', '.join(FAULT_KINDS)}")
    node_txt = m.group("node")
    nm = re.fullmatch(r"(?:node-)?(\d+)", node_txt)
    if not nm:
        raise ValueError(f"bad node {node_txt!r} in {text!r}: want node-N or N")
    gpu: int | None = None
    gpu_txt = m.group("gpu")
    if gpu_txt is not None:
        if not gpu_txt.isdigit():
            raise ValueError(f"bad GPU index {gpu_txt!r} in {text!r}: want a non-negative integer")
        if kind == "power-supply":
            raise ValueError(f"fault kind {kind!r} is node-wide and takes no /GPU in {text!r}")
        gpu = int(gpu_txt)
    delay = 0.0 if m.group("delay") is None else parse_delay(m.group("delay"))
    return FaultSpec(kind=kind, node=int(nm.group(1)), gpu=gpu, delay_s=delay)


def sample_lead(rng: np.random.Generator, kind: str) -> float:
    """Draw a random fault's precursor lead time in seconds (0 for sudden kinds)."""
    if kind in SUDDEN_KINDS:
        return 0.0
    median, sigma, lo, hi = LEAD_TIMES[kind]
    return float(np.clip(median * math.exp(sigma * rng.standard_normal()), lo, hi))


@dataclass
class Fault:
    """One fault's ground truth and its progress through precursors to failure.

    Times are seconds since the simulation start; `gpu` is the fleet-wide GPU index (None for node
    faults), `port` the IB port of an ib-link-flap.
    """

    fault_id: int
    kind: str
    cause: str
    node: int
    gpu: int | None
    onset_s: float
    failure_s: float
    xid: int | None
    rng: np.random.Generator
    port: int | None = None
    injected: bool = False
    severity: float = 1.0
    failed: bool = False
    done: bool = False
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def had_precursors(self) -> bool:
        """Whether anything observable preceded the failure."""
        return self.failure_s > self.onset_s

    def progress(self, t: float) -> float:
        """How far the precursors have progressed at t: 0 at onset, 1 at failure."""
        if self.failure_s <= self.onset_s:
            return 1.0
        return min(1.0, max(0.0, (t - self.onset_s) / (self.failure_s - self.onset_s)))

    def _count(self, rate_per_h: float, t0: float, t1: float, shape: float) -> int:
        """Poisson count of precursor errors over [t0, t1] for a rate rising as progress**shape."""
        lo, hi = max(t0, self.onset_s), min(t1, self.failure_s)
        if hi <= lo:
            return 0
        p = self.progress(0.5 * (lo + hi))
        lam = rate_per_h * self.severity * (0.03 + 0.97 * p ** shape) * (hi - lo) / 3600.0
        lam *= float(self.rng.lognormal(0.0, 0.5))          # bursty, not a smooth ramp
        return int(self.rng.poisson(lam))

    # --- stepping -------------------------------------------------------------------------------
    def step(self, sim: FleetSim, t0: float, t1: float) -> None:
        """Apply this fault's effects over the interval (t0, t1]."""
        if t1 < self.onset_s or self.done:
            return
        if not self.failed:
            getattr(self, "_pre_" + self.kind.replace("-", "_"), _noop)(sim, t0, t1)
            if self.failure_s <= t1:
                self.failed = True
                getattr(self, "_fail_" + self.kind.replace("-", "_"))(sim)
        if self.failed:
            getattr(self, "_post_" + self.kind.replace("-", "_"), self._finish)(sim, t0, t1)

    def _finish(self, sim: FleetSim, t0: float, t1: float) -> None:
        self.done = True

    def _gpu_failure(self, sim: FleetSim, kill: bool = True) -> None:
        """Book-keeping shared by GPU failures: the GPU is failed, the node drained, the job killed."""
        assert self.gpu is not None
        sim.failed[self.gpu] = True
        sim.workload.drain(self.node)
        if kill:
            sim.workload.kill(self.node, self.failure_s)

    # hbm-degradation ---------------------------------------------------------------------------
    def _pre_hbm_degradation(self, sim: FleetSim, t0: float, t1: float) -> None:
        g = self.gpu
        n = self._count(120.0, t0, t1, 2.0)
        if n:
            sim.ecc_sbe_vol[g] += n
            sim.ecc_sbe_agg[g] += n
        remaps: list[float] = self.extra.setdefault(
            "remaps", sorted(self.onset_s + (self.failure_s - self.onset_s) * self.rng.beta(3.0, 1.0, size=int(
                self.rng.integers(1, 2 + int(3 * self.severity))))))
        while remaps and remaps[0] <= t1:
            ts = remaps.pop(0)
            sim.remap_corr[g] += 1
            sim.remap_pending[g] = True
            sim.emit_xid(g, 63, ts, "row remapping event (correctable)")

    def _fail_hbm_degradation(self, sim: FleetSim) -> None:
        g = self.gpu
        sim.ecc_dbe_vol[g] += 1
        sim.ecc_dbe_agg[g] += 1
        sim.remap_unc[g] += 1
        sim.remap_pending[g] = True
        sim.emit_xid(g, self.xid or 48, self.failure_s, "double-bit ECC error")
        if self.extra.get("remap_failure"):
            sim.remap_failure[g] = True
            sim.emit_xid(g, 64, self.failure_s, "row remapping failure")
        else:
            sim.emit_xid(g, 63, self.failure_s, "row remapping event (uncorrectable)")
        self._gpu_failure(sim)

    # sudden-dbe ----------------------------------------------------------------------------------
    def _fail_sudden_dbe(self, sim: FleetSim) -> None:
        g = self.gpu
        sim.ecc_dbe_vol[g] += 1
        sim.ecc_dbe_agg[g] += 1
        if self.cause != "sram":                       # SRAM errors do not remap HBM rows
            sim.remap_unc[g] += 1
            sim.remap_pending[g] = True
        sim.emit_xid(g, 48, self.failure_s, "double-bit ECC error")
        self._gpu_failure(sim)

    # gpu-lost / sudden-off-bus -------------------------------------------------------------------
    def _pre_gpu_lost(self, sim: FleetSim, t0: float, t1: float) -> None:
        g = self.gpu
        n = self._count(60.0, t0, t1, 1.5)
        if n:
            sim.pcie_replays[g] += n
        # A failing link trains down now and then: a brief hardware slowdown.
        if self.rng.random() < min(1.0, 0.2 * self.progress(t1) * self.severity * (t1 - t0) / 60.0):
            sim.hw_slowdown[g] = True

    def _fail_gpu_lost(self, sim: FleetSim) -> None:
        sim.emit_xid(self.gpu, 79, self.failure_s, "GPU has fallen off the bus")
        sim.mark_lost(self.gpu, self.failure_s)
        self._gpu_failure(sim)

    _fail_sudden_off_bus = _fail_gpu_lost

    # thermal -------------------------------------------------------------------------------------
    def _pre_thermal(self, sim: FleetSim, t0: float, t1: float) -> None:
        p = self.progress(t1)
        sim.cool_mult[self.gpu] = 1.0 + (self.extra["peak"] - 1.0) * p ** 1.5

    def _fail_thermal(self, sim: FleetSim) -> None:
        g = self.gpu
        sim.temp_floor[g] = float(sim.states[g].temp_shutdown) + 1.0
        sim.cool_mult[g] = max(float(sim.cool_mult[g]), 6.0)
        sim.temp_gpu[g] = max(float(sim.temp_gpu[g]), sim.temp_floor[g])
        self._gpu_failure(sim, kill=False)

    def _post_thermal(self, sim: FleetSim, t0: float, t1: float) -> None:
        pass                                            # sustained: floor and cooling stay degraded

    # nvlink --------------------------------------------------------------------------------------
    def _pre_nvlink(self, sim: FleetSim, t0: float, t1: float) -> None:
        g = self.gpu
        for link in self.extra["links"]:
            flit = self._count(400.0, t0, t1, 2.0)
            data = self._count(150.0, t0, t1, 2.0)
            replay = self._count(200.0, t0, t1, 2.0)
            recov = self._count(4.0, t0, t1, 3.0)
            sim.nvlink_err[g, link, NVLINK_CRC_FLIT] += flit
            sim.nvlink_err[g, link, NVLINK_CRC_DATA] += data
            sim.nvlink_err[g, link, NVLINK_REPLAY] += replay
            sim.nvlink_err[g, link, NVLINK_RECOVERY] += recov

    def _fail_nvlink(self, sim: FleetSim) -> None:
        g = self.gpu
        for link in self.extra["links"]:
            sim.nvlink_active[g, link] = False
            sim.nvlink_err[g, link, NVLINK_RECOVERY] += 1
        sim.emit_xid(g, 74, self.failure_s, "NVLink error on link(s) " + ",".join(map(str, self.extra["links"])))
        self._gpu_failure(sim)

    # gsp-timeout ---------------------------------------------------------------------------------
    def _fail_gsp_timeout(self, sim: FleetSim) -> None:
        sim.emit_xid(self.gpu, 119, self.failure_s, "GSP RPC timeout")
        self._gpu_failure(sim)

    def _post_gsp_timeout(self, sim: FleetSim, t0: float, t1: float) -> None:
        ts = self.failure_s + self.extra["gap"]
        if ts <= t1:
            sim.emit_xid(self.gpu, 120, ts, "GSP error")
            self.done = True

    # power-supply --------------------------------------------------------------------------------
    def _brake(self, sim: FleetSim, t0: float, t1: float, rate_per_h: float) -> None:
        """Bursts of hardware power-brake slowdown on every GPU of the node (active while one covers t1)."""
        bursts: list[tuple[float, float]] = self.extra.setdefault("bursts", [])
        for _ in range(int(self.rng.poisson(rate_per_h * max(0.0, t1 - t0) / 3600.0))):
            start = t0 + (t1 - t0) * float(self.rng.random())
            bursts.append((start, start + float(self.rng.uniform(10.0, 120.0))))
        bursts[:] = [b for b in bursts if b[1] >= t1]
        if any(b[0] <= t1 for b in bursts):
            sim.brake[sim.node_slice(self.node)] = True

    def _pre_power_supply(self, sim: FleetSim, t0: float, t1: float) -> None:
        lo = max(t0, self.onset_s)
        self._brake(sim, lo, t1, 8.0 * self.severity * (0.1 + 0.9 * self.progress(t1) ** 1.5))

    def _fail_power_supply(self, sim: FleetSim) -> None:
        sim.power_limit_w[sim.node_slice(self.node)] = self.extra["limit_w"]

    def _post_power_supply(self, sim: FleetSim, t0: float, t1: float) -> None:
        self._brake(sim, max(t0, self.failure_s), t1, 1.0)

    # ib-link-flap --------------------------------------------------------------------------------
    def _pre_ib_link_flap(self, sim: FleetSim, t0: float, t1: float) -> None:
        n, p = self.node, self.port
        sim.ib_symbol_err[n, p] += self._count(300.0, t0, t1, 2.0)
        sim.ib_link_err_recovery[n, p] += self._count(6.0, t0, t1, 2.5)
        sim.ib_rcv_err[n, p] += self._count(40.0, t0, t1, 2.0)

    def _fail_ib_link_flap(self, sim: FleetSim) -> None:
        sim.ib_port_down(self.node, self.port, self.failure_s)
        sim.workload.kill(self.node, self.failure_s)      # NCCL times out: the job dies

    def _post_ib_link_flap(self, sim: FleetSim, t0: float, t1: float) -> None:
        up_at = self.failure_s + self.extra["down_s"]
        if up_at <= t1:
            sim.ib_port_up(self.node, self.port, up_at)
            self.done = True


def _noop(sim: FleetSim, t0: float, t1: float) -> None:
    """No precursor."""


class FaultManager:
    """Schedules random and injected faults, steps the active ones and keeps the ground truth."""

    def __init__(self, sim: FleetSim, seed: int, fault_rate: float, injects: tuple[FaultSpec, ...]) -> None:
        if fault_rate < 0:
            raise ValueError(f"fault_rate must be >= 0, got {fault_rate}")
        self.sim = sim
        self.seed = seed
        self.fault_rate = fault_rate
        self.faults: list[Fault] = []                  # materialised (onset reached), in onset order
        self.active: list[Fault] = []
        rng = np.random.default_rng([seed, 0xF417])
        n_gpus, n_nodes = sim.n_gpus, sim.n_nodes
        # One first failure per GPU: exponential, memoryless, so it can be drawn up front for any horizon.
        lam = GPU_FAILURES_PER_GPU_DAY * fault_rate / 86400.0
        fail = rng.exponential(1.0, n_gpus) / lam if lam > 0 else np.full(n_gpus, np.inf)
        gpu_kinds: list[tuple[str, str]] = []
        weights: list[float] = []
        for cause, (count, unit, kinds) in CAUSES.items():
            if unit == "gpu":
                for kind, share in kinds:
                    gpu_kinds.append((cause, kind))
                    weights.append(count * share)
        w = np.asarray(weights) / sum(weights)
        choice = rng.choice(len(gpu_kinds), size=n_gpus, p=w)
        self._gpu_kind = [gpu_kinds[i] for i in choice]
        lead = np.array([sample_lead(rng, gpu_kinds[i][1]) for i in choice]) if n_gpus else np.zeros(0)
        self._gpu_fail_s = fail
        self._gpu_onset_s = np.maximum(0.0, fail - lead)
        # Node faults may recur (a link flaps again); each occurrence draws from its own stream.
        self._node_kinds = list(NODE_FAILURES_PER_NODE_DAY)
        self._node_occ = np.zeros((n_nodes, len(self._node_kinds)), dtype=np.int64)
        self._node_fail_s = np.full((n_nodes, len(self._node_kinds)), np.inf)
        self._node_onset_s = np.full((n_nodes, len(self._node_kinds)), np.inf)
        for n in range(n_nodes):
            for k in range(len(self._node_kinds)):
                self._draw_node(n, k, 0.0)
        self._injected: list[tuple[int, FaultSpec]] = sorted(enumerate(injects), key=lambda x: x[1].delay_s)
        for _, spec in self._injected:
            self._validate(spec)

    def _validate(self, spec: FaultSpec) -> None:
        if spec.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {spec.kind!r}; known kinds: {', '.join(FAULT_KINDS)}")
        node = self.sim.node_index(spec.node)
        limit = self.sim.ib_ports if spec.kind == "ib-link-flap" else self.sim.gpus_per_node
        if spec.gpu is not None and not 0 <= spec.gpu < limit:
            what = "IB port" if spec.kind == "ib-link-flap" else "GPU"
            raise ValueError(f"{what} {spec.gpu} out of range 0..{limit - 1} on node {node}")
        if spec.delay_s < 0:
            raise ValueError(f"delay must be >= 0, got {spec.delay_s}")

    def _draw_node(self, n: int, k: int, after_s: float) -> None:
        kind = self._node_kinds[k]
        rate = NODE_FAILURES_PER_NODE_DAY[kind] * self.fault_rate / 86400.0
        if rate <= 0:
            return
        rng = np.random.default_rng([self.seed, 0x10DE, n, k, int(self._node_occ[n, k])])
        fail = after_s + float(rng.exponential(1.0 / rate))
        lead = sample_lead(rng, kind)
        self._node_fail_s[n, k] = fail
        self._node_onset_s[n, k] = max(after_s, fail - lead)

    def _new(self, key: tuple[int, ...], kind: str, cause: str, node: int, gpu: int | None, onset: float,
             failure: float, injected: bool, port: int | None = None) -> Fault:
        """A fault whose parameters come from its own stream, keyed by what it is, not by when it was stepped."""
        rng = np.random.default_rng([self.seed, 0xFA17, *key])
        f = Fault(fault_id=-1, kind=kind, cause=cause, node=node, gpu=gpu, onset_s=onset, failure_s=failure,
                  xid=None, rng=rng, port=port, injected=injected, severity=float(rng.lognormal(0.0, 0.6)))
        if kind == "hbm-degradation":
            f.xid = int(rng.choice([48, 94, 95], p=[0.5, 0.25, 0.25]))
            f.extra["remap_failure"] = bool(rng.random() < 0.15)
        elif kind == "sudden-dbe":
            f.xid = 48
        elif kind in ("gpu-lost", "sudden-off-bus"):
            f.xid = 79
        elif kind == "nvlink":
            f.xid = 74
            k = 1 if rng.random() < 0.6 else 2
            f.extra["links"] = sorted(int(x) for x in rng.choice(18, size=k, replace=False))
            f.detail = "links=" + ",".join(map(str, f.extra["links"]))
        elif kind == "gsp-timeout":
            f.xid = 119
            f.extra["gap"] = float(rng.uniform(2.0, 30.0))
        elif kind == "thermal":
            f.extra["peak"] = float(rng.uniform(1.8, 2.6))      # enough to reach sw slowdown before failing
        elif kind == "power-supply":
            f.extra["limit_w"] = float(rng.choice([400.0, 450.0, 500.0]))
            f.detail = f"gpu power limit drops to {f.extra['limit_w']:.0f} W"
        elif kind == "ib-link-flap":
            if f.port is None:
                f.port = int(rng.integers(self.sim.ib_ports))
            f.extra["down_s"] = float(rng.uniform(5.0, 120.0))
            f.detail = f"port mlx5_{f.port}/1"
        f.detail = ("injected" if injected else "random") + (f"; {f.detail}" if f.detail else "")
        return f

    def step(self, t0: float, t1: float) -> None:
        """Materialise faults whose onset is at or before t1, then apply the active ones over (t0, t1]."""
        sim = self.sim
        new: list[Fault] = []
        while self._injected and self._injected[0][1].delay_s <= t1:
            i, spec = self._injected.pop(0)
            node = sim.node_index(spec.node)
            onset = spec.delay_s
            lead = 0.0 if spec.kind in SUDDEN_KINDS else (
                spec.lead_s if spec.lead_s is not None else INJECT_LEAD_S[spec.kind])
            gpu: int | None = None
            port: int | None = None
            if spec.kind == "ib-link-flap":
                port = spec.gpu
            elif spec.kind not in NODE_KINDS:
                local = spec.gpu if spec.gpu is not None else int(
                    np.random.default_rng([self.seed, 0x6E7, i]).integers(sim.gpus_per_node))
                gpu = node * sim.gpus_per_node + local
            new.append(self._new((3, i), spec.kind, KIND_CAUSE[spec.kind], node, gpu, onset, onset + lead,
                                 True, port))
        for g in np.nonzero(self._gpu_onset_s <= t1)[0]:
            cause, kind = self._gpu_kind[g]
            new.append(self._new((1, int(g)), kind, cause, int(g) // sim.gpus_per_node, int(g),
                                 float(self._gpu_onset_s[g]), float(self._gpu_fail_s[g]), False))
            self._gpu_onset_s[g] = np.inf
        for n, k in zip(*np.nonzero(self._node_onset_s <= t1), strict=True):
            kind = self._node_kinds[k]
            fail = float(self._node_fail_s[n, k])
            new.append(self._new((2, int(n), int(k), int(self._node_occ[n, k])), kind, NODE_CAUSE[kind],
                                 int(n), None, float(self._node_onset_s[n, k]), fail, False))
            self._node_onset_s[n, k] = np.inf
            self._node_occ[n, k] += 1
            if kind == "ib-link-flap":                      # the link comes back and may flap again later
                self._draw_node(int(n), int(k), fail + 3600.0)
        # Ids follow onset order, so they do not depend on how time was stepped.
        new.sort(key=lambda f: (f.onset_s, f.node, -1 if f.gpu is None else f.gpu, f.kind))
        for i, f in enumerate(new):
            f.fault_id = len(self.faults) + i
        self.faults.extend(new)
        self.active.extend(new)
        for f in sorted(self.active, key=lambda f: (f.failure_s, f.fault_id)):
            f.step(sim, t0, t1)
        self.active = [f for f in self.active if not f.done]

    def ground_truth(self, now_s: float) -> list[dict[str, Any]]:
        """Ground-truth rows (GROUND_TRUTH_SCHEMA) for every fault whose onset has passed."""
        sim = self.sim
        rows: list[dict[str, Any]] = []
        for f in self.faults:
            if f.gpu is not None:
                entity, gpu_index = sim.states[f.gpu].uuid, f.gpu % sim.gpus_per_node
            elif f.kind == "ib-link-flap":
                entity, gpu_index = f"mlx5_{f.port}/1", None
            else:
                entity, gpu_index = sim.node_names[f.node], None
            failed = f.failure_s <= now_s
            rows.append({
                "fault_id": f.fault_id, "node": sim.node_names[f.node], "entity": entity,
                "gpu_index": gpu_index, "kind": f.kind, "cause": f.cause,
                "onset": sim.ns_at(f.onset_s), "failure": sim.ns_at(f.failure_s) if failed else None,
                "had_precursors": f.had_precursors, "xid": f.xid, "detail": f.detail,
            })
        return rows
