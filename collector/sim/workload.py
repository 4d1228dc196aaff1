"""Jobs on the simulated fleet: which node runs what, when, and how hard each GPU works (vectorised).

Each node runs at most one job at a time, on all or some of its GPUs (the others stay idle). Job
classes and their mix follow the LLM-development clusters of AcmeTrace (Hu et al., NSDI 2024): long
pretraining jobs that hold whole nodes at high power with periodic checkpoint dips; evaluation jobs that
keep kernels running (high utilisation) at low power; inference with a varying load; short debug jobs.
Idle gaps between jobs follow a daily cycle (shorter in the afternoon, longer at night). The mix was
tuned so that the fleet's power, temperature and utilisation distributions resemble Kalos and Seren's
(see tests/sim/test_distributions.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

IDLE, PRETRAIN, EVAL, INFER, DEBUG = 0, 1, 2, 3, 4
JOB_NAMES: tuple[str, ...] = ("idle", "pretrain", "eval", "inference", "debug")


@dataclass(frozen=True, slots=True)
class JobClass:
    """How one class of job behaves; power intensity is a fraction of the GPU's idle-to-limit range."""

    weight: float                               # share of job arrivals
    dur_median_s: float
    dur_sigma: float
    ngpu: tuple[int, ...]                       # GPUs used, as fractions of the node in eighths
    ngpu_p: tuple[float, ...]
    intensity: tuple[float, float]              # uniform range; > 1 means the job would exceed the limit
    fb: tuple[float, float]                     # framebuffer fraction used
    ib_gbps: tuple[float, float]                # per IB port, GB/s, while communicating
    nvlink_gbps: tuple[float, float]            # per GPU, GB/s
    cpu: float                                  # host CPU load 0..1


JOB_CLASSES: dict[int, JobClass] = {
    PRETRAIN: JobClass(0.13, 5 * 3600.0, 0.7, (8,), (1.0,), (0.85, 1.25), (0.85, 0.97), (8.0, 30.0),
                       (60.0, 250.0), 0.5),
    EVAL: JobClass(0.45, 1.2 * 3600.0, 0.8, (2, 4, 8), (0.1, 0.2, 0.7), (0.02, 0.25), (0.4, 0.9),
                   (0.005, 0.05), (1.0, 10.0), 0.35),
    INFER: JobClass(0.12, 2 * 3600.0, 0.8, (1, 2, 4, 8), (0.1, 0.2, 0.3, 0.4), (0.10, 0.55), (0.4, 0.95),
                    (0.05, 0.5), (1.0, 30.0), 0.3),
    DEBUG: JobClass(0.23, 15 * 60.0, 0.9, (1, 2, 4, 8), (0.4, 0.3, 0.2, 0.1), (0.0, 0.35), (0.05, 0.6),
                    (0.0, 0.2), (0.0, 5.0), 0.2),
}
GAP_MEAN_S = 17 * 60.0                           # mean idle gap between jobs at the daily average


def gap_factor(hour: np.ndarray | float) -> np.ndarray | float:
    """Daily cycle of idle gaps: x1.6 at 04:00, x0.4 at 16:00 (more jobs arrive in working hours)."""
    return 1.0 + 0.6 * np.cos(2.0 * math.pi * (np.asarray(hour) - 4.0) / 24.0)


@dataclass(slots=True)
class Activity:
    """What the jobs ask of the hardware at one instant: per-GPU arrays, then per-node arrays."""

    alloc: np.ndarray          # GPU is in a job
    util: np.ndarray           # fraction of time a kernel ran
    pf: np.ndarray             # power demand as a fraction of idle-to-limit (may exceed 1)
    sm: np.ndarray
    tensor: np.ndarray
    dram: np.ndarray
    memcopy: np.ndarray
    graphics: np.ndarray
    fb_frac: np.ndarray
    pcie_tx_bps: np.ndarray    # bytes/s
    pcie_rx_bps: np.ndarray
    nvlink_bps: np.ndarray
    node_busy: np.ndarray      # per node
    ib_bps: np.ndarray         # per node, per port, bytes/s
    cpu_load: np.ndarray       # per node, 0..1


class Workload:
    """The job schedule of every node, advanced in time; `activity` turns it into per-GPU demand."""

    def __init__(self, n_nodes: int, gpus_per_node: int, rng: np.random.Generator, start_ns: int) -> None:
        self.n_nodes = n_nodes
        self.gpus_per_node = gpus_per_node
        self.rng = rng
        self.epoch_s = start_ns / 1e9
        n = n_nodes
        self.kind = np.zeros(n, dtype=np.int8)
        self.start_s = np.zeros(n)
        self.end_s = np.zeros(n)
        self.ngpu = np.zeros(n, dtype=np.int64)
        self.intensity = np.zeros(n)
        self.util_base = np.zeros(n)
        self.fb = np.zeros(n)
        self.ib_gbps = np.zeros(n)
        self.nvlink_gbps = np.zeros(n)
        self.ckpt_period = np.full(n, np.inf)
        self.ckpt_len = np.zeros(n)
        self.phase = np.zeros(n)
        self.load_s = np.zeros(n)                   # pretrain jobs load data and weights first
        self.next_start_s = np.zeros(n)
        self.drained = np.zeros(n, dtype=bool)
        self.gpu_node = np.repeat(np.arange(n), gpus_per_node)
        self.gpu_local = np.tile(np.arange(gpus_per_node), n)
        self.gpu_jitter = np.clip(rng.normal(1.0, 0.04, n * gpus_per_node), 0.85, 1.15)
        # Start in a steady state: most nodes are already part-way through a job.
        busy = rng.random(n) < 0.75
        idx = np.nonzero(busy)[0]
        self._start(idx, 0.0)
        dur = self.end_s[idx] - self.start_s[idx]
        shift = dur * rng.random(idx.size)
        self.start_s[idx] -= shift
        self.end_s[idx] -= shift
        idle = np.nonzero(~busy)[0]
        self.next_start_s[idle] = rng.exponential(GAP_MEAN_S, idle.size)

    def hour(self, t_s: float) -> float:
        """UTC hour of day at t_s seconds after the start."""
        return ((self.epoch_s + t_s) % 86400.0) / 3600.0

    def _start(self, idx: np.ndarray, t_s: float, kinds: np.ndarray | None = None) -> None:
        """Start a new job on each node in idx, of a random class unless `kinds` says which."""
        if idx.size == 0:
            return
        rng = self.rng
        classes = list(JOB_CLASSES)
        if kinds is None:
            weights = np.array([JOB_CLASSES[c].weight for c in classes])
            kinds = rng.choice(classes, size=idx.size, p=weights / weights.sum())
        self.kind[idx] = kinds
        self.start_s[idx] = t_s
        for c in classes:
            sel = idx[kinds == c]
            if sel.size == 0:
                continue
            jc = JOB_CLASSES[c]
            k = sel.size
            self.end_s[sel] = t_s + jc.dur_median_s * np.exp(jc.dur_sigma * rng.standard_normal(k))
            eighths = rng.choice(jc.ngpu, size=k, p=jc.ngpu_p)
            self.ngpu[sel] = np.maximum(1, np.round(eighths * self.gpus_per_node / 8.0)).astype(np.int64)
            self.intensity[sel] = rng.uniform(*jc.intensity, k)
            self.util_base[sel] = rng.uniform(0.96, 1.0, k) if c == EVAL else rng.uniform(0.35, 0.8, k)
            self.fb[sel] = rng.uniform(*jc.fb, k)
            self.ib_gbps[sel] = rng.uniform(*jc.ib_gbps, k)
            self.nvlink_gbps[sel] = rng.uniform(*jc.nvlink_gbps, k)
            if c == PRETRAIN:
                self.ckpt_period[sel] = rng.uniform(1800.0, 5400.0, k)
                self.ckpt_len[sel] = rng.uniform(60.0, 240.0, k)
                self.load_s[sel] = 300.0
            else:
                self.ckpt_period[sel] = np.inf
                self.ckpt_len[sel] = 0.0
                self.load_s[sel] = 0.0
            self.phase[sel] = rng.uniform(0.0, 86400.0, k)

    def _gap(self, k: int, t_s: float) -> np.ndarray:
        return self.rng.exponential(GAP_MEAN_S * float(gap_factor(self.hour(t_s))), k)

    def update(self, t_s: float) -> None:
        """End jobs that are over and start jobs on idle nodes whose gap has elapsed."""
        ending = np.nonzero((self.kind != IDLE) & (self.end_s <= t_s))[0]
        if ending.size:
            self.kind[ending] = IDLE
            self.next_start_s[ending] = self.end_s[ending] + self._gap(ending.size, t_s)
        starting = np.nonzero((self.kind == IDLE) & (self.next_start_s <= t_s) & ~self.drained)[0]
        self._start(starting, t_s)

    def kill(self, node: int, t_s: float) -> None:
        """The node's job dies now (a fault took it down)."""
        if self.kind[node] != IDLE:
            self.kind[node] = IDLE
            self.end_s[node] = t_s
        self.next_start_s[node] = t_s + float(self._gap(1, t_s)[0])

    def drain(self, node: int) -> None:
        """No new jobs on the node (it waits for repair); the running job, if any, finishes."""
        self.drained[node] = True

    def assign(self, node: int, kind: int, t_s: float, duration_s: float, ngpu: int | None = None,
               intensity: float | None = None) -> None:
        """Force a job on a node (tests, demos): it starts at t_s and lasts duration_s."""
        self._start(np.array([node]), t_s, np.array([kind]))
        jc = JOB_CLASSES[kind]
        self.end_s[node] = t_s + duration_s
        self.ngpu[node] = self.gpus_per_node if ngpu is None else ngpu
        self.intensity[node] = float(np.mean(jc.intensity)) if intensity is None else intensity
        self.util_base[node] = 0.95 if kind == EVAL else 0.6
        self.ckpt_period[node] = np.inf          # a forced job neither loads nor checkpoints: steady load
        self.load_s[node] = 0.0

    def activity(self, t_s: float, ib_ports: int) -> Activity:
        """Per-GPU and per-node demand at t_s (noise from the workload's own stream)."""
        rng = self.rng
        n_g = self.gpu_node.size
        nd = self.gpu_node
        kind = self.kind[nd]
        alloc = (kind != IDLE) & (self.gpu_local < self.ngpu[nd])
        kind = np.where(alloc, kind, IDLE)
        elapsed = t_s - self.start_s[nd]
        noise = rng.standard_normal((3, n_g))
        inten = self.intensity[nd] * self.gpu_jitter
        pre = kind == PRETRAIN
        loading = pre & (elapsed < self.load_s[nd])
        ckpt = (pre & (np.mod(elapsed + self.phase[nd], self.ckpt_period[nd]) < self.ckpt_len[nd])) | loading
        util = np.zeros(n_g)
        pf = np.zeros(n_g)
        # pretrain: kernels always running, power near the limit, dips while checkpointing
        util = np.where(pre, np.clip(0.992 + 0.006 * noise[0], 0.0, 1.0), util)
        pf = np.where(pre, inten * (1.0 + 0.03 * noise[1]), pf)
        util = np.where(ckpt, np.clip(0.15 + 0.1 * noise[0], 0.0, 1.0), util)
        pf = np.where(ckpt, 0.04 + 0.02 * np.abs(noise[1]), pf)
        # eval: busy kernels, low power (communication- and memory-bound)
        ev = kind == EVAL
        util = np.where(ev, np.clip(self.util_base[nd] + 0.015 * noise[0], 0.0, 1.0), util)
        pf = np.where(ev, inten * (1.0 + 0.15 * noise[1]), pf)
        # inference: load follows requests
        inf = kind == INFER
        wave = np.sin(2.0 * math.pi * t_s / 1800.0 + self.phase[nd])
        u_inf = np.clip(self.util_base[nd] + 0.2 * wave + 0.08 * noise[0], 0.02, 1.0)
        util = np.where(inf, u_inf, util)
        pf = np.where(inf, inten * u_inf * (1.0 + 0.1 * noise[1]), pf)
        # debug: on and off
        dbg = kind == DEBUG
        on = noise[2] > 0.0
        u_dbg = np.where(on, np.clip(0.5 + 0.3 * noise[0], 0.0, 1.0), 0.0)
        util = np.where(dbg, u_dbg, util)
        pf = np.where(dbg, inten * u_dbg, pf)
        pf = np.where(alloc, np.maximum(pf, 0.03), 0.0)      # a CUDA context holds clocks up: ~+20 W
        pfc = np.minimum(pf, 1.0)
        sm = util * np.clip(0.12 + 0.85 * pfc, 0.0, 0.97)
        tensor = sm * np.where(pre, 0.65, 0.3) * pfc
        dram = util * np.clip(0.08 + 0.45 * pfc, 0.0, 1.0)
        memcopy = np.clip(dram * 0.9 + 0.02 * noise[2] * util, 0.0, 1.0)
        graphics = util * 0.99
        fb_frac = np.where(alloc, self.fb[nd], 0.0)
        pcie_base = 3.0e5                                      # bytes/s of housekeeping on an idle GPU
        pcie_tx = pcie_base + np.where(alloc, 0.3e9 * util, 0.0) + np.where(ckpt & ~loading, 8e9, 0.0)
        pcie_rx = pcie_base + np.where(alloc, 1.0e9 * util, 0.0) + np.where(loading, 10e9, 0.0)
        pcie_tx *= np.exp(0.2 * noise[1])
        pcie_rx *= np.exp(0.2 * noise[2])
        multi = self.ngpu[nd] > 1
        nvl = np.where(alloc & multi & ~ckpt, self.nvlink_gbps[nd] * 1e9 * util, 0.0)
        # per node
        busy = self.kind != IDLE
        node_ckpt = np.zeros(self.n_nodes, dtype=bool)
        np.logical_or.at(node_ckpt, nd[ckpt], True)
        ib_rate = np.where(busy & ~node_ckpt, self.ib_gbps * 1e9, 2.0e4)
        ib = ib_rate[:, None] * np.exp(0.1 * rng.standard_normal((self.n_nodes, ib_ports)))
        cpu = np.array([0.03] + [JOB_CLASSES[c].cpu for c in (PRETRAIN, EVAL, INFER, DEBUG)])[self.kind]
        return Activity(alloc=alloc, util=util, pf=pf, sm=sm, tensor=tensor, dram=dram, memcopy=memcopy,
                        graphics=graphics, fb_frac=fb_frac, pcie_tx_bps=pcie_tx, pcie_rx_bps=pcie_rx,
                        nvlink_bps=nvl, node_busy=busy, ib_bps=ib, cpu_load=cpu)
