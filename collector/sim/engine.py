"""The fleet simulator: vectorised GPU, node and InfiniBand physics driven by jobs and faults.

State lives in NumPy arrays of shape (n_gpus,) in node-major order (GPU g is local GPU g % gpus_per_node
of node g // gpus_per_node), or (n_nodes, ib_ports) for InfiniBand. A step costs a fixed number of array
operations whatever the fleet size; only faults (few) get Python work. `advance_to` steps time forward
and copies the arrays into `states` (GpuState, NVML units) for the NVML device model; the offline trace
path reads the arrays directly through `gpu_metrics`, `ib_metrics` and `node_power_w`.

Physics, per GPU: power follows the job's demand from idle (~70 W) to the 700 W limit, where it is
capped (sw_power_cap); temperature follows power to first order (time constant ~100 s) from the node's
inlet temperature, with some heat shared between the GPUs of a node; software thermal slowdown holds the
temperature at the slowdown threshold; energy integrates the reported power exactly; clocks drop under
power, thermal and power-brake throttling. Ground truth about faults never enters these arrays' metrics:
it is only returned by `ground_truth()`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Iterable
from typing import Any

import numpy as np

from collector.batch import Event
from collector.sim.faults import FaultManager, FaultSpec
from collector.sim.state import NVLINK_CRC_DATA, NVLINK_CRC_FLIT, NVLINK_RECOVERY, NVLINK_REPLAY, GpuState
from collector.sim.workload import Workload

# Real HGX H100 8-GPU baseboard PCI bus numbers, GPU 0..7.
HGX_H100_BUSES: tuple[int, ...] = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
NVLINKS = 18
EVENT_XID = "xid"
EVENT_GPU_LOST = "gpu_lost"
EVENT_IB_DOWN = "ib_link_down"
EVENT_IB_UP = "ib_link_up"
IB_STATE_DOWN, IB_STATE_ACTIVE = 1, 4       # IB port states as /sys/class/infiniband/*/ports/*/state numbers

TDP_W = 700.0                                # H100 SXM5 board power limit
IDLE_W = 71.0                                # idle draw, as in the H100 nvidia-smi capture (69-70 W)
MAX_SM_MHZ, IDLE_SM_MHZ, MEM_MHZ = 1980, 345, 2619
TAU_GPU_S, TAU_MEM_S = 100.0, 150.0          # thermal time constants of die+heatsink, HBM stacks
# Steady-state rise above inlet: A * dP**THERMAL_EXP for a GPU's own dynamic power dP (W). Fans speed up
# with load, so thermal resistance falls as power rises: the rise grows like sqrt(P), not linearly.
THERMAL_EXP = 0.5
A_GPU = 0.98                                 # ~26 C at the full 630 W dynamic range
A_MEM = 0.5
R_NODE = 0.006                               # C per W of the node's mean GPU dynamic power (shared air)
IDLE_RISE_C, MEM_OFFSET_C = 3.0, 20.0        # idle die above inlet; HBM above inlet at idle
NODE_BASE_W = 1500.0                         # CPUs, memory, NICs, fans of an HGX H100 node at idle
NODE_CPU_W = 600.0
MAX_EVENTS = 100_000                         # undrained events kept (oldest dropped first)


class FleetSim:
    """A simulated fleet of GPU nodes; deterministic for a seed and a sequence of advance_to calls."""

    def __init__(self, nodes: int, gpus_per_node: int, seed: int, start_ns: int, fault_rate: float = 1.0,
                 injects: Iterable[FaultSpec] = (), model: str = "NVIDIA H100 80GB HBM3",
                 driver: str = "550.90.07", *, max_step_s: float = 5.0, ib_ports: int = 8) -> None:
        if nodes < 1 or gpus_per_node < 1:
            raise ValueError(f"need at least one node and one GPU per node, got {nodes} x {gpus_per_node}")
        if max_step_s <= 0:
            raise ValueError(f"max_step_s must be > 0, got {max_step_s}")
        self.n_nodes = nodes
        self.gpus_per_node = gpus_per_node
        self.n_gpus = n = nodes * gpus_per_node
        self.ib_ports = ib_ports
        self.seed = seed
        self.start_ns = int(start_ns)
        self.t_ns = int(start_ns)
        self.max_step_s = float(max_step_s)
        self.model = model
        self.driver = driver
        self._lock = threading.RLock()
        ss = np.random.SeedSequence(seed)
        id_ss, phys_ss, work_ss = ss.spawn(3)
        self._rng = np.random.default_rng(phys_ss)
        idr = np.random.default_rng(id_ss)

        self.node_names: list[str] = [f"node-{i}" for i in range(nodes)]
        self.ib_port_names: list[str] = [f"mlx5_{p}" for p in range(ib_ports)]
        self.gpu_node = np.repeat(np.arange(nodes), gpus_per_node)
        self.gpu_local = np.tile(np.arange(gpus_per_node), nodes)
        raw = idr.integers(0, 256, size=(n, 16), dtype=np.uint8)
        uuids = []
        for row in raw:
            h = bytes(row).hex()
            uuids.append(f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
        serials = idr.integers(10**9, 10**10, size=n)
        self.states: list[GpuState] = [
            GpuState(index=int(self.gpu_local[g]), uuid=uuids[g], name=model,
                     pci_bus_id=f"00000000:{self._bus(int(self.gpu_local[g])):02x}:00.0",
                     serial=f"165{int(serials[g])}", minor_number=int(self.gpu_local[g]))
            for g in range(n)
        ]
        proto = self.states[0]
        self.fb_total = proto.fb_total
        self.fb_reserved = proto.fb_reserved
        self.temp_slowdown = float(proto.temp_slowdown)
        self.temp_shutdown = float(proto.temp_shutdown)

        # static per-GPU and per-node variation
        self.idle_w = np.clip(idr.normal(IDLE_W, 2.0, n), 64.0, 80.0)
        self.a_gpu = A_GPU * np.clip(idr.normal(1.0, 0.1, n), 0.7, 1.3)
        self.a_mem = A_MEM * np.clip(idr.normal(1.0, 0.1, n), 0.7, 1.3)
        self.inlet_c = np.clip(idr.normal(24.0, 3.5, nodes), 17.0, 34.0)
        self.node_base_w = idr.normal(NODE_BASE_W, 60.0, nodes)
        self.sbe_rate_per_day = 10.0 ** idr.normal(-2.5, 0.8, n)  # healthy GPUs: mostly rare, a few chatty

        # dynamic per-GPU state
        z = np.zeros
        self.util = z(n)
        self.mem_util = z(n)
        self.sm_active = z(n)
        self.tensor_active = z(n)
        self.dram_active = z(n)
        self.graphics_active = z(n)
        self.fb_used = z(n, dtype=np.int64)
        self.power_w = self.idle_w.copy()
        self.power_limit_w = np.full(n, TDP_W)
        self.energy_mj = z(n)                       # float64 holds whole mJ exactly far beyond 30 days
        self.temp_gpu = self.inlet_c[self.gpu_node] + IDLE_RISE_C
        self.temp_mem = self.inlet_c[self.gpu_node] + MEM_OFFSET_C
        self.sm_clock = np.full(n, float(IDLE_SM_MHZ))
        self.mem_clock = np.full(n, float(MEM_MHZ))
        self.clock_reasons = np.ones(n, dtype=np.int64)
        self.pcie_tx_kbps = z(n)
        self.pcie_rx_kbps = z(n)
        self.pcie_replays = z(n, dtype=np.int64)
        self.ecc_sbe_vol = z(n, dtype=np.int64)
        self.ecc_dbe_vol = z(n, dtype=np.int64)
        self.ecc_sbe_agg = idr.poisson(self.sbe_rate_per_day * 200.0).astype(np.int64)  # lifetime history
        self.ecc_dbe_agg = z(n, dtype=np.int64)
        self.remap_corr = z(n, dtype=np.int64)
        self.remap_unc = z(n, dtype=np.int64)
        self.remap_pending = z(n, dtype=bool)
        self.remap_failure = z(n, dtype=bool)
        self.nvlink_err = z((n, NVLINKS, 4), dtype=np.int64)
        self.nvlink_active = np.ones((n, NVLINKS), dtype=bool)
        self.nvlink_bw = z(n, dtype=np.int64)
        self.lost = z(n, dtype=bool)
        self.failed = z(n, dtype=bool)
        # fault hooks: faults set these; brake and hw_slowdown are reset every step
        self.cool_mult = np.ones(n)
        self.temp_floor = np.full(n, -np.inf)
        self.brake = z(n, dtype=bool)
        self.hw_slowdown = z(n, dtype=bool)

        # InfiniBand, per node and port
        shape = (nodes, ib_ports)
        self.ib_rcv_bytes = z(shape, dtype=np.int64)
        self.ib_xmit_bytes = z(shape, dtype=np.int64)
        self.ib_rcv_pkts = z(shape, dtype=np.int64)
        self.ib_xmit_pkts = z(shape, dtype=np.int64)
        self.ib_symbol_err = z(shape, dtype=np.int64)
        self.ib_link_downed = z(shape, dtype=np.int64)
        self.ib_rcv_err = z(shape, dtype=np.int64)
        self.ib_link_err_recovery = z(shape, dtype=np.int64)
        self.ib_up = np.ones(shape, dtype=bool)
        self.node_power = self.node_base_w + 1.06 * self.idle_w.reshape(nodes, gpus_per_node).sum(axis=1)

        self._events: list[Event] = []
        self._synced_ns = -1
        self.workload = Workload(nodes, gpus_per_node, np.random.default_rng(work_ss), self.start_ns)
        self.faults = FaultManager(self, seed, fault_rate, tuple(injects))
        # Start warm: nodes are part-way through jobs, so settle temperatures (twice, for the heat shared
        # within a node) instead of showing every GPU cold for the first minutes.
        self._step(0.0, 0.0, settle=True)
        self._step(0.0, 0.0, settle=True)
        self.sync_states()

    # --- identity and helpers ----------------------------------------------------------------------
    @staticmethod
    def _bus(local: int) -> int:
        return HGX_H100_BUSES[local] if local < len(HGX_H100_BUSES) else 0xE0 + local

    @property
    def t_s(self) -> float:
        """Seconds since the simulation start."""
        return (self.t_ns - self.start_ns) / 1e9

    def ns_at(self, t_s: float) -> int:
        """Unix nanoseconds of t_s seconds after the start."""
        return self.start_ns + round(t_s * 1e9)

    def node_index(self, node: int | str) -> int:
        """The index of a node given as index or name ("node-3"); ValueError if there is no such node."""
        if isinstance(node, str):
            if node not in self.node_names:
                raise ValueError(f"no node {node!r} in a fleet of {self.n_nodes} nodes")
            return self.node_names.index(node)
        if not 0 <= node < self.n_nodes:
            raise ValueError(f"node index {node} out of range 0..{self.n_nodes - 1}")
        return int(node)

    def node_slice(self, node: int) -> slice:
        """The GPU index range of a node."""
        return slice(node * self.gpus_per_node, (node + 1) * self.gpus_per_node)

    def states_for_node(self, i: int) -> list[GpuState]:
        """The GpuState objects of node i, in local index order."""
        return self.states[self.node_slice(i)]

    # --- events ------------------------------------------------------------------------------------
    def _event(self, ev: Event) -> None:
        self._events.append(ev)
        if len(self._events) > MAX_EVENTS:
            del self._events[: len(self._events) - MAX_EVENTS]

    def emit_xid(self, g: int, code: int, t_s: float, detail: str = "") -> None:
        """Record an XID on GPU g at t_s: an event, and a pending XID for the NVML event API."""
        self._event(Event(self.ns_at(t_s), self.node_names[int(self.gpu_node[g])], self.states[g].uuid,
                          EVENT_XID, int(code), detail))
        self.states[g].pending_xids.append(int(code))

    def mark_lost(self, g: int, t_s: float) -> None:
        """GPU g fell off the bus at t_s."""
        self.lost[g] = True
        self.states[g].lost = True
        self._event(Event(self.ns_at(t_s), self.node_names[int(self.gpu_node[g])], self.states[g].uuid,
                          EVENT_GPU_LOST, 79, "GPU is lost"))

    def ib_port_down(self, node: int, port: int, t_s: float) -> None:
        """An IB port's link goes down at t_s."""
        self.ib_up[node, port] = False
        self.ib_link_downed[node, port] += 1
        self._event(Event(self.ns_at(t_s), self.node_names[node], f"mlx5_{port}/1", EVENT_IB_DOWN,
                          IB_STATE_DOWN, "link down"))

    def ib_port_up(self, node: int, port: int, t_s: float) -> None:
        """An IB port's link comes back at t_s."""
        self.ib_up[node, port] = True
        self._event(Event(self.ns_at(t_s), self.node_names[node], f"mlx5_{port}/1", EVENT_IB_UP,
                          IB_STATE_ACTIVE, "link up"))

    def drain_events(self, node: int | str | None = None, kinds: Collection[str] | None = None) -> list[Event]:
        """Remove and return the events since the last call, optionally only one node's or some kinds."""
        with self._lock:
            name = None if node is None else self.node_names[self.node_index(node)]
            take = [e for e in self._events if (name is None or e.node == name) and (kinds is None or e.kind in kinds)]
            if take:
                keep = [e for e in self._events
                        if not ((name is None or e.node == name) and (kinds is None or e.kind in kinds))]
                self._events = keep
            return sorted(take, key=lambda e: e.ts_ns)

    def ground_truth(self) -> list[dict[str, Any]]:
        """One row per fault whose onset has passed (GROUND_TRUTH_SCHEMA; onset/failure as Unix ns)."""
        with self._lock:
            return self.faults.ground_truth(self.t_s)

    # --- time --------------------------------------------------------------------------------------
    def advance_to(self, ts_ns: int, sync: bool = True) -> None:
        """Step the physics up to ts_ns in sub-steps of at most max_step_s; older times are ignored.

        With sync (the default) `states` is brought up to date, also when an earlier call skipped it.
        """
        with self._lock:
            ts_ns = int(ts_ns)
            if ts_ns > self.t_ns:
                t0_ns = self.t_ns
                steps = max(1, math.ceil((ts_ns - t0_ns) / (self.max_step_s * 1e9) - 1e-9))
                prev = t0_ns
                for k in range(1, steps + 1):
                    cur = t0_ns + (ts_ns - t0_ns) * k // steps
                    self._step((prev - self.start_ns) / 1e9, (cur - self.start_ns) / 1e9)
                    prev = cur
                    self.t_ns = cur
            if sync and self._synced_ns != self.t_ns:
                self.sync_states()

    def _step(self, t0: float, t1: float, settle: bool = False) -> None:
        dt = t1 - t0
        rng = self._rng
        n = self.n_gpus
        gpn = self.gpus_per_node
        wl = self.workload
        wl.update(t1)
        self.brake[:] = False
        self.hw_slowdown[:] = False
        self.faults.step(t0, t1)
        act = wl.activity(t1, self.ib_ports)
        util = np.where(self.lost, 0.0, act.util)

        # power
        idle = self.idle_w
        demand = idle + act.pf * (TDP_W - idle) * (1.0 + 0.015 * rng.standard_normal(n))
        demand = np.where(self.lost, idle, np.maximum(demand, idle - 1.5))
        hw_th = self.temp_gpu >= self.temp_shutdown
        halve = self.brake | hw_th
        p = np.where(halve, idle + 0.5 * (demand - idle), demand)
        node_dyn = np.bincount(self.gpu_node, weights=self.power_w - idle, minlength=self.n_nodes) / gpn
        hour = wl.hour(t1)
        inlet = self.inlet_c + 1.5 * math.sin(2.0 * math.pi * (hour - 10.0) / 24.0)
        base_t = inlet[self.gpu_node] + IDLE_RISE_C * self.cool_mult + R_NODE * node_dyn[self.gpu_node]
        a_eff = self.a_gpu * self.cool_mult
        # software thermal slowdown holds the die at the slowdown threshold
        p_th = idle + (np.maximum(0.0, self.temp_slowdown + 0.5 - base_t) / a_eff) ** (1.0 / THERMAL_EXP)
        sw_th = (p > p_th) & (util > 0)
        p = np.where(sw_th, np.maximum(idle, p_th), p)
        limit = self.power_limit_w
        capped = p >= limit - 0.5
        p = np.where(capped, limit - np.abs(rng.normal(0.0, 2.0, n)), p)
        power_mw = np.rint(p * 1000.0)
        self.energy_mj += np.where(self.lost, 0.0, power_mw * dt)
        self.power_w = power_mw / 1000.0

        # clocks and clock-event reasons
        busy = util > 0.0
        f = np.ones(n)
        f = np.where(capped, np.clip((limit - idle) / np.maximum(demand - idle, 1.0), 0.3, 1.0) ** 0.4, f)
        f = np.where(sw_th, f * np.clip((p_th - idle) / np.maximum(demand - idle, 1.0), 0.2, 1.0) ** 0.4, f)
        blip = busy & (act.pf > 0.9) & (rng.random(n) < 0.003)       # benign brief thermal capping
        f = np.where(blip, f * 0.95, f)
        f = np.where(halve, f * 0.5, f)
        self.sm_clock = np.where(busy, np.maximum(IDLE_SM_MHZ, np.rint(MAX_SM_MHZ * f / 15.0) * 15.0),
                                 float(IDLE_SM_MHZ))
        reasons = np.where(busy, 0, 0x1)
        reasons = reasons | np.where(capped & busy, 0x4, 0)
        reasons = reasons | np.where(sw_th | blip, 0x20, 0)
        reasons = reasons | np.where(hw_th, 0x48, 0) | np.where(self.brake, 0x88, 0)
        reasons = reasons | np.where(self.hw_slowdown, 0x8, 0)
        self.clock_reasons = reasons.astype(np.int64)

        # temperatures: first order towards the steady state of the power just computed
        dyn = np.maximum(self.power_w - idle, 0.0) ** THERMAL_EXP
        t_ss = base_t + a_eff * dyn
        keep_gpu, keep_mem = (0.0, 0.0) if settle else (math.exp(-dt / TAU_GPU_S), math.exp(-dt / TAU_MEM_S))
        self.temp_gpu = t_ss + (self.temp_gpu - t_ss) * keep_gpu
        self.temp_gpu = np.maximum(self.temp_gpu, self.temp_floor)
        m_ss = (inlet[self.gpu_node] + MEM_OFFSET_C + R_NODE * node_dyn[self.gpu_node]
                + self.a_mem * self.cool_mult * dyn)
        self.temp_mem = m_ss + (self.temp_mem - m_ss) * keep_mem

        # utilisation, memory, GPM, PCIe, NVLink
        self.util = util
        self.mem_util = np.where(busy, act.memcopy, 0.0)
        self.sm_active = np.where(busy, act.sm * f ** 0.2, 0.0)
        self.tensor_active = np.where(busy, act.tensor, 0.0)
        self.dram_active = np.where(busy, act.dram, 0.0)
        self.graphics_active = np.where(busy, act.graphics, 0.0)
        self.fb_used = np.where(act.alloc & ~self.lost,
                                np.rint(act.fb_frac * (self.fb_total - self.fb_reserved)), 0).astype(np.int64)
        self.pcie_tx_kbps = np.rint(act.pcie_tx_bps / 1024.0)
        self.pcie_rx_kbps = np.rint(act.pcie_rx_bps / 1024.0)
        links_up = self.nvlink_active.sum(axis=1) / NVLINKS
        self.nvlink_bw += np.rint(act.nvlink_bps * links_up * dt / 1024.0).astype(np.int64)

        # InfiniBand and node power
        ib = np.where(self.ib_up, act.ib_bps, 0.0) * dt
        rx = np.rint(ib * np.exp(0.05 * rng.standard_normal(ib.shape))).astype(np.int64)
        tx = np.rint(ib).astype(np.int64)
        self.ib_rcv_bytes += rx
        self.ib_xmit_bytes += tx
        self.ib_rcv_pkts += rx // 3000
        self.ib_xmit_pkts += tx // 3000
        gpu_sum = np.bincount(self.gpu_node, weights=np.where(self.lost, idle, self.power_w),
                              minlength=self.n_nodes)
        self.node_power = (self.node_base_w + NODE_CPU_W * act.cpu_load + 1.06 * gpu_sum
                           + rng.normal(0.0, 15.0, self.n_nodes))
        self._benign_noise(t0, t1)

    def _sparse(self, rate_per_day: float | np.ndarray, size: int, dt: float) -> np.ndarray:
        """Indices (with repeats) hit by rare independent events over dt, at per-item rates per day."""
        rates = np.broadcast_to(np.asarray(rate_per_day, dtype=float), (size,))
        total = float(rates.sum()) * dt / 86400.0
        k = int(self._rng.poisson(total)) if total > 0 else 0
        if k == 0:
            return np.zeros(0, dtype=np.int64)
        return self._rng.choice(size, size=k, p=rates / rates.sum())

    def _benign_noise(self, t0: float, t1: float) -> None:
        """The errors healthy hardware shows too, so that no single error count means failure."""
        dt = t1 - t0
        rng = self._rng
        alive = ~self.lost
        g = self._sparse(self.sbe_rate_per_day * alive, self.n_gpus, dt)
        if g.size:
            burst = rng.integers(1, 4, g.size)
            np.add.at(self.ecc_sbe_vol, g, burst)
            np.add.at(self.ecc_sbe_agg, g, burst)
        g = self._sparse(0.1 * alive, self.n_gpus, dt)             # single PCIe replays
        if g.size:
            np.add.at(self.pcie_replays, g, 1)
        g = self._sparse(0.05 * alive, self.n_gpus, dt)            # a few NVLink CRC errors, then a replay
        if g.size:
            links = rng.integers(0, NVLINKS, g.size)
            np.add.at(self.nvlink_err, (g, links, NVLINK_CRC_FLIT), rng.integers(1, 6, g.size))
            np.add.at(self.nvlink_err, (g, links, NVLINK_CRC_DATA), rng.integers(0, 2, g.size))
            np.add.at(self.nvlink_err, (g, links, NVLINK_REPLAY), 1)
        for gi in self._sparse(1.0 / 3000.0 * alive, self.n_gpus, dt):   # a rare benign row remap
            self.remap_corr[gi] += 1
            self.remap_pending[gi] = True
            self.emit_xid(int(gi), 63, t0 + dt * float(rng.random()), "row remapping event (correctable)")
        ports = self.n_nodes * self.ib_ports
        flat = self._sparse(1.0 / 3.0, ports, dt)
        if flat.size:
            np.add.at(self.ib_symbol_err.reshape(-1), flat, rng.integers(1, 10, flat.size))
        flat = self._sparse(0.1, ports, dt)
        if flat.size:
            np.add.at(self.ib_rcv_err.reshape(-1), flat, 1)

    # --- outputs -----------------------------------------------------------------------------------
    def sync_states(self, node: int | None = None) -> None:
        """Copy the arrays into `states` (NVML units), for every GPU or one node's."""
        with self._lock:
            sl = slice(0, self.n_gpus) if node is None else self.node_slice(node)
            cols: dict[str, list[Any]] = {
                "gpu_util": np.rint(self.util[sl] * 100).astype(int).tolist(),
                "mem_util": np.rint(self.mem_util[sl] * 100).astype(int).tolist(),
                "fb_used": self.fb_used[sl].tolist(),
                "temp_gpu": np.rint(self.temp_gpu[sl]).astype(int).tolist(),
                "temp_mem": np.rint(self.temp_mem[sl]).astype(int).tolist(),
                "power_mw": np.rint(self.power_w[sl] * 1000).astype(int).tolist(),
                "power_limit_mw": np.rint(self.power_limit_w[sl] * 1000).astype(int).tolist(),
                "energy_mj": self.energy_mj[sl].astype(np.int64).tolist(),
                "sm_clock_mhz": self.sm_clock[sl].astype(int).tolist(),
                "mem_clock_mhz": self.mem_clock[sl].astype(int).tolist(),
                "clock_event_reasons": self.clock_reasons[sl].tolist(),
                "ecc_sbe_volatile": self.ecc_sbe_vol[sl].tolist(),
                "ecc_dbe_volatile": self.ecc_dbe_vol[sl].tolist(),
                "ecc_sbe_aggregate": self.ecc_sbe_agg[sl].tolist(),
                "ecc_dbe_aggregate": self.ecc_dbe_agg[sl].tolist(),
                "remap_correctable": self.remap_corr[sl].tolist(),
                "remap_uncorrectable": self.remap_unc[sl].tolist(),
                "remap_pending": self.remap_pending[sl].tolist(),
                "remap_failure": self.remap_failure[sl].tolist(),
                "pcie_tx_kbps": self.pcie_tx_kbps[sl].astype(int).tolist(),
                "pcie_rx_kbps": self.pcie_rx_kbps[sl].astype(int).tolist(),
                "pcie_replays": self.pcie_replays[sl].tolist(),
                "nvlink_errors": self.nvlink_err[sl].tolist(),
                "nvlink_active": self.nvlink_active[sl].tolist(),
                "nvlink_bandwidth": self.nvlink_bw[sl].tolist(),
                "gpm_sm": np.round(self.sm_active[sl], 4).tolist(),
                "gpm_tensor": np.round(self.tensor_active[sl], 4).tolist(),
                "gpm_dram": np.round(self.dram_active[sl], 4).tolist(),
                "gpm_graphics": np.round(self.graphics_active[sl], 4).tolist(),
                "lost": self.lost[sl].tolist(),
            }
            names = list(cols)
            for st, values in zip(self.states[sl], zip(*cols.values(), strict=True), strict=True):
                for name, v in zip(names, values, strict=True):
                    setattr(st, name, v)
                st.pstate = 0
            if node is None:
                self._synced_ns = self.t_ns

    def gpu_metrics(self) -> dict[str, np.ndarray]:
        """Every recorded per-GPU catalogue metric, in base units, quantised as NVML reports it."""
        with self._lock:
            return self._gpu_metrics()

    def _gpu_metrics(self) -> dict[str, np.ndarray]:
        mib_total = float(self.fb_total)
        used = self.fb_used.astype(np.float64)
        nvl = self.nvlink_err
        return {
            "fleetwatch_gpu_utilization_ratio": np.rint(self.util * 100) / 100,
            "fleetwatch_gpu_memory_copy_utilization_ratio": np.rint(self.mem_util * 100) / 100,
            "fleetwatch_gpu_encoder_utilization_ratio": np.zeros(self.n_gpus),
            "fleetwatch_gpu_decoder_utilization_ratio": np.zeros(self.n_gpus),
            "fleetwatch_gpu_framebuffer_free_bytes": mib_total - self.fb_reserved - used,
            "fleetwatch_gpu_framebuffer_used_bytes": used,
            "fleetwatch_gpu_framebuffer_reserved_bytes": np.full(self.n_gpus, float(self.fb_reserved)),
            "fleetwatch_gpu_framebuffer_total_bytes": np.full(self.n_gpus, mib_total),
            "fleetwatch_gpu_temperature_celsius": np.rint(self.temp_gpu),
            "fleetwatch_gpu_memory_temperature_celsius": np.rint(self.temp_mem),
            "fleetwatch_gpu_power_watts": self.power_w.copy(),
            "fleetwatch_gpu_power_limit_watts": self.power_limit_w.copy(),
            "fleetwatch_gpu_energy_joules_total": np.floor(self.energy_mj) / 1000.0,
            "fleetwatch_gpu_sm_clock_hertz": self.sm_clock * 1e6,
            "fleetwatch_gpu_memory_clock_hertz": self.mem_clock * 1e6,
            "fleetwatch_gpu_performance_state": np.zeros(self.n_gpus),
            "fleetwatch_gpu_clock_event_reasons": self.clock_reasons.astype(np.float64),
            "fleetwatch_gpu_ecc_sbe_volatile_total": self.ecc_sbe_vol.astype(np.float64),
            "fleetwatch_gpu_ecc_dbe_volatile_total": self.ecc_dbe_vol.astype(np.float64),
            "fleetwatch_gpu_ecc_sbe_aggregate_total": self.ecc_sbe_agg.astype(np.float64),
            "fleetwatch_gpu_ecc_dbe_aggregate_total": self.ecc_dbe_agg.astype(np.float64),
            "fleetwatch_gpu_remapped_rows_correctable_total": self.remap_corr.astype(np.float64),
            "fleetwatch_gpu_remapped_rows_uncorrectable_total": self.remap_unc.astype(np.float64),
            "fleetwatch_gpu_remapped_rows_pending": self.remap_pending.astype(np.float64),
            "fleetwatch_gpu_remapped_rows_failed": self.remap_failure.astype(np.float64),
            "fleetwatch_gpu_pcie_transmit_bytes_per_second": self.pcie_tx_kbps * 1024.0,
            "fleetwatch_gpu_pcie_receive_bytes_per_second": self.pcie_rx_kbps * 1024.0,
            "fleetwatch_gpu_pcie_replays_total": self.pcie_replays.astype(np.float64),
            "fleetwatch_gpu_nvlink_crc_errors_total":
                (nvl[:, :, NVLINK_CRC_FLIT] + nvl[:, :, NVLINK_CRC_DATA]).sum(axis=1).astype(np.float64),
            "fleetwatch_gpu_nvlink_replay_errors_total": nvl[:, :, NVLINK_REPLAY].sum(axis=1).astype(np.float64),
            "fleetwatch_gpu_nvlink_recovery_errors_total":
                nvl[:, :, NVLINK_RECOVERY].sum(axis=1).astype(np.float64),
            "fleetwatch_gpu_nvlink_bandwidth_total": self.nvlink_bw.astype(np.float64),
            "fleetwatch_gpu_graphics_engine_active_ratio": np.round(self.graphics_active, 4),
            "fleetwatch_gpu_sm_active_ratio": np.round(self.sm_active, 4),
            "fleetwatch_gpu_tensor_active_ratio": np.round(self.tensor_active, 4),
            "fleetwatch_gpu_dram_active_ratio": np.round(self.dram_active, 4),
            "fleetwatch_gpu_lost": self.lost.astype(np.float64),
        }

    def ib_metrics(self) -> dict[str, np.ndarray]:
        """The InfiniBand port metrics, arrays of shape (n_nodes, ib_ports), in base units."""
        f = np.float64
        with self._lock:
            return self._ib_metrics(f)

    def _ib_metrics(self, f: type) -> dict[str, np.ndarray]:
        return {
            "fleetwatch_infiniband_port_data_received_bytes_total": self.ib_rcv_bytes.astype(f),
            "fleetwatch_infiniband_port_data_transmitted_bytes_total": self.ib_xmit_bytes.astype(f),
            "fleetwatch_infiniband_port_packets_received_total": self.ib_rcv_pkts.astype(f),
            "fleetwatch_infiniband_port_packets_transmitted_total": self.ib_xmit_pkts.astype(f),
            "fleetwatch_infiniband_port_symbol_errors_total": self.ib_symbol_err.astype(f),
            "fleetwatch_infiniband_port_link_downed_total": self.ib_link_downed.astype(f),
            "fleetwatch_infiniband_port_receive_errors_total": self.ib_rcv_err.astype(f),
            "fleetwatch_infiniband_port_link_error_recovery_total": self.ib_link_err_recovery.astype(f),
            "fleetwatch_infiniband_port_up": self.ib_up.astype(f),
        }

    def node_power_w(self) -> np.ndarray:
        """Node power draw as the BMC reports it (whole watts), shape (n_nodes,)."""
        with self._lock:
            return np.rint(self.node_power)
