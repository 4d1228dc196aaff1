"""Per-GPU metrics from NVML: utilisation, memory, thermals, power, clocks, ECC, PCIe, NVLink, GPM and XIDs.

`nvml` is any module-like object with pynvml's API: the real `pynvml` (imported lazily, so the agent runs
on machines without a GPU) or collector.sim.nvml_model.NvmlDeviceModel. Every value is converted to the
catalogue's base units (ratios 0–1, bytes, hertz, watts, joules, °C).

How NVML's failures map:
- nvmlInit fails → SourceError (nvml_library_not_found, driver_not_loaded, …); retried next collect.
- No GPU → NoDataError.
- NVML_ERROR_GPU_IS_LOST from any call for one GPU → from then on that GPU reports only
  fleetwatch_gpu_lost=1 and fleetwatch_gpu_info, the other GPUs carry on, and one "gpu_lost" Event is
  added. NVML cannot recover a lost GPU without a driver reload, so neither does the source.
- NVML_ERROR_NOT_SUPPORTED → that field is dropped from the GPU's call plan for good: no re-query every
  interval, no error storm.
- Any other per-field error → the field is omitted this time, counted in `field_errors` and logged once.

The call plan per GPU is built once at discovery (NVLink links and GPM support probed then), so that a
collect only makes the calls that can succeed: 8 H100s cost roughly 800 NVML calls, most of them
NVLink counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from collector.batch import Batch, Entity, Event, gpu_entity, nvlink_entity
from collector.catalogue import CLOCK_EVENT_REASONS
from collector.source import NoDataError, SourceContext, SourceError, ThreadedSource, register_source
from collector.sources.nvml_xid import XidWatcher

log = logging.getLogger(__name__)

UINT_MAX = 0xFFFFFFFF
KIB = 1024.0
LOST_EVENT = "gpu_lost"
OPTIONS = ("interval", "timeout", "xid_events")

# NVML init error → (errors_total reason, what to tell the operator).
INIT_ERRORS: dict[str, tuple[str, str]] = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": (
        "nvml_library_not_found",
        "libnvidia-ml.so.1 was not found: install the NVIDIA driver, or mount the driver's libraries into "
        "the container (NVIDIA Container Toolkit)"),
    "NVML_ERROR_DRIVER_NOT_LOADED": (
        "driver_not_loaded", "the NVIDIA kernel driver is not loaded (is nvidia.ko loaded? see dmesg)"),
    "NVML_ERROR_NO_PERMISSION": (
        "no_permission", "no permission to open the NVIDIA device files (/dev/nvidiactl, /dev/nvidia*)"),
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": (
        "driver_version_mismatch",
        "libnvidia-ml and the loaded kernel driver differ in version (driver upgraded without a reboot?)"),
}

# GPM metric id constant → catalogue metric (NVML reports percent).
GPM_METRICS: tuple[tuple[str, str], ...] = (
    ("NVML_GPM_METRIC_GRAPHICS_UTIL", "fleetwatch_gpu_graphics_engine_active_ratio"),
    ("NVML_GPM_METRIC_SM_UTIL", "fleetwatch_gpu_sm_active_ratio"),
    ("NVML_GPM_METRIC_ANY_TENSOR_UTIL", "fleetwatch_gpu_tensor_active_ratio"),
    ("NVML_GPM_METRIC_DRAM_BW_UTIL", "fleetwatch_gpu_dram_active_ratio"),
)
_CLOCK_REASONS = tuple((reason, bit, (reason,)) for reason, bit in CLOCK_EVENT_REASONS.items())


class _GpuLost(Exception):
    """Raised inside a collect when NVML reports the GPU lost."""


@dataclasses.dataclass(eq=False)
class _Gpu:
    """One discovered GPU: identity, entity and its call plan."""

    index: int
    uuid: str
    handle: Any
    entity: Entity
    plan: dict[str, Callable[[_Gpu, Batch], None]] = dataclasses.field(default_factory=dict)
    lost: bool = False
    lost_reported: bool = False
    links: list[int] = dataclasses.field(default_factory=list)
    link_entities: dict[int, Entity] = dataclasses.field(default_factory=dict)
    # Last counters read per link ([replay, recovery, crc_flit, crc_data]); the per-GPU sums include links
    # that have since gone down, so that the sums never go backwards when a link drops.
    link_counters: dict[int, tuple[int, int, int, int]] = dataclasses.field(default_factory=dict)
    fields: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    gpm_samples: list[Any] = dataclasses.field(default_factory=list)
    gpm_have_prev: bool = False
    gpm_get: Any = None


def with_device_minor(entity: Entity, minor: int) -> Entity:
    """The GPU entity with device label nvidia<minor> (the /dev node), which may differ from the index."""
    device = f"nvidia{minor}"
    labels = (*entity.labels[:4], device, *entity.labels[5:])
    dcgm = (*entity.dcgm_labels[:3], device, *entity.dcgm_labels[4:])
    return dataclasses.replace(entity, labels=labels, dcgm_labels=dcgm)


class NvmlSource(ThreadedSource):
    """The `gpu` source: every catalogue gpu/nvlink metric NVML can give, for every GPU of the node."""

    name = "gpu"
    # How long close() waits for NVML to shut down before leaving it to a daemon thread.
    shutdown_timeout = 2.0

    def __init__(self, ctx: SourceContext, nvml: Any = None, interval: float = 1.0, timeout: float = 5.0, *,
                 xid_events: bool = True, xid_wait_ms: int = 500) -> None:
        self.ctx = ctx
        self.interval = interval
        self.timeout = timeout
        self.xid_events = xid_events
        self.xid_wait_ms = xid_wait_ms
        self.field_errors: Counter[str] = Counter()
        self.driver_version = ""
        self.watcher: XidWatcher | None = None
        self._nvml = nvml
        self._initialised = False
        self._gpus: list[_Gpu] | None = None
        self._c: dict[str, int] = {}
        self._gpm_metrics: tuple[tuple[int, str], ...] = ()
        self._nvlink_counters: tuple[int, int, int, int] = (0, 1, 2, 3)
        self._logged: set[tuple[str, int]] = set()
        self._count_warned = False
        self._lock = threading.Lock()
        super().__init__()

    # --- public helpers ------------------------------------------------------------------------------

    @property
    def xid_events_supported(self) -> bool | None:
        """Whether NVML delivers XID events here (None until discovery has run)."""
        if self._gpus is None:
            return None
        return self.watcher is not None and self.watcher.supported

    def entities(self) -> list[Entity]:
        """The discovered GPU entities (empty before the first successful collect)."""
        return [g.entity for g in self._gpus or ()]

    def entities_by_pci(self) -> dict[str, Entity]:
        """{PCI bus id as NVML writes it, "00000000:18:00.0": GPU entity}, for the kernel-log XID source."""
        return {g.entity.labels[3]: g.entity for g in self._gpus or () if g.entity.labels[3]}

    # --- lifecycle -----------------------------------------------------------------------------------

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as err:
                raise SourceError("nvml_library_not_found",
                                  f"the nvidia-ml-py package (pynvml) is not installed: {err}") from err
            self._nvml = pynvml
        return self._nvml

    def _init(self, nvml: Any) -> None:
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as err:
            for const, (reason, hint) in INIT_ERRORS.items():
                if err.value == getattr(nvml, const, None):
                    raise SourceError(reason, f"nvmlInit failed: {err}: {hint}") from err
            raise SourceError("nvml_init_failed", f"nvmlInit failed: {err}") from err
        self._initialised = True
        c = self._c
        for const in ("NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_INVALID_ARGUMENT",
                      "NVML_ERROR_FUNCTION_NOT_FOUND", "NVML_SUCCESS", "NVML_TEMPERATURE_GPU",
                      "NVML_CLOCK_SM", "NVML_CLOCK_MEM", "NVML_PCIE_UTIL_TX_BYTES", "NVML_PCIE_UTIL_RX_BYTES",
                      "NVML_MEMORY_ERROR_TYPE_CORRECTED", "NVML_MEMORY_ERROR_TYPE_UNCORRECTED",
                      "NVML_VOLATILE_ECC", "NVML_AGGREGATE_ECC", "NVML_FI_DEV_MEMORY_TEMP",
                      "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX", "NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX",
                      "NVML_NVLINK_MAX_LINKS", "NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS",
                      "NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR", "nvmlMemory_v2",
                      "NVML_GPM_METRICS_GET_VERSION", "NVML_GPM_METRIC_GRAPHICS_UTIL",
                      "NVML_GPM_METRIC_SM_UTIL", "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
                      "NVML_GPM_METRIC_DRAM_BW_UTIL",
                      "NVML_NVLINK_ERROR_DL_REPLAY", "NVML_NVLINK_ERROR_DL_RECOVERY",
                      "NVML_NVLINK_ERROR_DL_CRC_FLIT", "NVML_NVLINK_ERROR_DL_CRC_DATA"):
            c[const] = int(getattr(nvml, const))
        self._gpm_metrics = tuple((c[const], metric) for const, metric in GPM_METRICS)
        self._nvlink_counters = (c["NVML_NVLINK_ERROR_DL_REPLAY"], c["NVML_NVLINK_ERROR_DL_RECOVERY"],
                                 c["NVML_NVLINK_ERROR_DL_CRC_FLIT"], c["NVML_NVLINK_ERROR_DL_CRC_DATA"])

    def shutdown(self) -> None:
        """Stop XID capture, free GPM samples and shut NVML down (blocking; close() runs it off the loop)."""
        with self._lock:
            if self.watcher is not None:
                self.watcher.stop()
                self.watcher = None
            if not self._initialised:
                return
            nvml = self._nvml
            for g in self._gpus or ():
                for sample in g.gpm_samples:
                    with contextlib.suppress(nvml.NVMLError):
                        nvml.nvmlGpmSampleFree(sample)
                g.gpm_samples = []
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError as err:
                log.debug("nvmlShutdown: %s", err)
            self._initialised = False
            self._gpus = None

    async def close(self) -> None:
        """Stop the worker, then release NVML on a helper thread (a wedged driver must not block the loop)."""
        if self.watcher is not None:
            self.watcher.request_stop()
        await super().close()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def run() -> None:
            """Shut NVML down, then wake the waiting close()."""
            try:
                self.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):        # the loop may be gone by then
                    loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        # A daemon thread, not asyncio.to_thread: a call stuck in a wedged driver must not hold up the
        # default executor's shutdown, and with it the process's exit.
        threading.Thread(target=run, name="gpu-shutdown", daemon=True).start()
        try:
            await asyncio.wait_for(done, timeout=self.shutdown_timeout)
        except TimeoutError:
            log.warning("gpu: NVML shutdown did not finish in %.1f s (driver hung?); leaving it",
                        self.shutdown_timeout)

    # --- discovery -----------------------------------------------------------------------------------

    def _discover(self, nvml: Any) -> list[_Gpu]:
        try:
            count = nvml.nvmlDeviceGetCount()
            self.driver_version = str(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError as err:
            raise SourceError("nvml_error", f"NVML device enumeration failed: {err}") from err
        if count == 0:
            raise NoDataError("NVML reports no NVIDIA GPU")
        gpus = [self._discover_one(nvml, i) for i in range(count)]
        if self.xid_events:
            handles = {g.uuid: g.handle for g in gpus if not g.lost}
            watcher = XidWatcher(nvml, handles, node=self.ctx.node, clock=self.ctx.clock,
                                 wait_ms=self.xid_wait_ms)
            if handles and watcher.start():
                self.watcher = watcher
        return gpus

    def _discover_one(self, nvml: Any, index: int) -> _Gpu:
        lost_code = self._c["NVML_ERROR_GPU_IS_LOST"]
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = str(nvml.nvmlDeviceGetUUID(handle))
            name = str(nvml.nvmlDeviceGetName(handle))
            pci = str(nvml.nvmlDeviceGetPciInfo(handle).busId)
            minor = int(nvml.nvmlDeviceGetMinorNumber(handle))
        except nvml.NVMLError as err:
            if err.value != lost_code:
                raise SourceError("nvml_error", f"GPU {index}: identity query failed: {err}") from err
            # Lost before we ever saw it: NVML gives no identity, so the entity is named by index.
            entity = gpu_entity(self.ctx.node, index, f"unknown-gpu{index}", "", "", self.driver_version)
            return _Gpu(index=index, uuid=entity.id, handle=None, entity=entity, lost=True)
        entity = gpu_entity(self.ctx.node, index, uuid, pci, name, self.driver_version)
        if minor != index:
            entity = with_device_minor(entity, minor)
        g = _Gpu(index=index, uuid=uuid, handle=handle, entity=entity)
        try:
            self._build_plan(nvml, g)
        except nvml.NVMLError as err:
            if err.value != lost_code:
                raise SourceError("nvml_error", f"GPU {index}: capability probe failed: {err}") from err
            g.lost = True
        return g

    def _build_plan(self, nvml: Any, g: _Gpu) -> None:
        c = self._c
        plan = g.plan
        plan.update({
            "nvmlDeviceGetUtilizationRates": self._r_util,
            "nvmlDeviceGetEncoderUtilization": self._r_encoder,
            "nvmlDeviceGetDecoderUtilization": self._r_decoder,
            "nvmlDeviceGetMemoryInfo": self._r_memory,
            "nvmlDeviceGetTemperature": self._r_temperature,
            "nvmlDeviceGetPowerUsage": self._r_power,
            "nvmlDeviceGetEnforcedPowerLimit": self._r_power_limit,
            "nvmlDeviceGetTotalEnergyConsumption": self._r_energy,
            "nvmlDeviceGetClockInfo(SM)": self._r_sm_clock,
            "nvmlDeviceGetClockInfo(MEM)": self._r_mem_clock,
            "nvmlDeviceGetPerformanceState": self._r_pstate,
            "nvmlDeviceGetFanSpeed": self._r_fan,
            "nvmlDeviceGetCurrentClocksEventReasons": self._r_clock_events,
            "nvmlDeviceGetTotalEccErrors": self._r_ecc,
            "nvmlDeviceGetRetiredPages": self._r_retired,
            "nvmlDeviceGetRetiredPagesPendingStatus": self._r_retired_pending,
            "nvmlDeviceGetRemappedRows": self._r_remapped,
            "nvmlDeviceGetPcieThroughput(TX)": self._r_pcie_tx,
            "nvmlDeviceGetPcieThroughput(RX)": self._r_pcie_rx,
            "nvmlDeviceGetPcieReplayCounter": self._r_pcie_replays,
        })
        g.fields = [(c["NVML_FI_DEV_MEMORY_TEMP"], 0)]
        # NVLink: probe every possible link once; absent links answer NOT_SUPPORTED or INVALID_ARGUMENT.
        skip = (c["NVML_ERROR_NOT_SUPPORTED"], c["NVML_ERROR_INVALID_ARGUMENT"],
                c["NVML_ERROR_FUNCTION_NOT_FOUND"])
        lost = c["NVML_ERROR_GPU_IS_LOST"]
        for link in range(c["NVML_NVLINK_MAX_LINKS"]):
            try:
                nvml.nvmlDeviceGetNvLinkState(g.handle, link)
            except nvml.NVMLError as err:
                if err.value == lost:
                    raise
                if err.value not in skip:
                    # Unexpected (driver trouble): count it and treat the link as absent rather than
                    # failing the whole source at every discovery attempt.
                    self._field_error("nvmlDeviceGetNvLinkState(probe)", g, err)
                elif link == 0 and err.value != c["NVML_ERROR_INVALID_ARGUMENT"]:
                    break                                   # no NVLink on this board at all
                continue
            g.links.append(link)
            g.link_entities[link] = nvlink_entity(g.entity, link)
        if g.links:
            plan["nvmlDeviceGetNvLinkErrorCounter"] = self._r_nvlink
            # Scope UINT_MAX: the counter summed over all links (nvml.h, NVML_FI_DEV_NVLINK_THROUGHPUT_*).
            g.fields += [(c["NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"], UINT_MAX),
                         (c["NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX"], UINT_MAX)]
        plan["nvmlDeviceGetFieldValues"] = self._r_fields
        # GPM: Hopper and later only; the metrics need two samples, so keep two buffers and alternate.
        try:
            supported = bool(nvml.nvmlGpmQueryDeviceSupport(g.handle).isSupportedDevice)
            if supported:
                g.gpm_samples = [nvml.nvmlGpmSampleAlloc(), nvml.nvmlGpmSampleAlloc()]
        except nvml.NVMLError as err:
            if err.value == lost:
                raise
            if err.value not in skip:
                self._field_error("nvmlGpmQueryDeviceSupport(probe)", g, err)
            supported = False
        if supported:
            get = nvml.c_nvmlGpmMetricsGet_t()
            get.version = c["NVML_GPM_METRICS_GET_VERSION"]
            get.numMetrics = len(self._gpm_metrics)
            for i, (metric_id, _) in enumerate(self._gpm_metrics):
                get.metrics[i].metricId = metric_id
            g.gpm_get = get
            plan["nvmlGpmMetricsGet"] = self._r_gpm

    # --- collection ----------------------------------------------------------------------------------

    def collect(self, ts_ns: int) -> Batch:
        """Initialise and discover on first use, then read every GPU's plan into one batch."""
        with self._lock:
            nvml = self._module()
            if not self._initialised:
                self._init(nvml)
            if self._gpus is None:
                self._gpus = self._discover(nvml)
            else:
                self._check_count(nvml)
            batch = Batch(source=self.name, ts_ns=ts_ns)
            counts = self.watcher.counts() if self.watcher is not None else {}
            last = self.watcher.last_codes() if self.watcher is not None else {}
            for g in self._gpus:
                if not g.lost:
                    self._collect_gpu(nvml, g, batch, counts, last)
                if g.lost:
                    self._report_lost(g, batch, ts_ns, counts, last)
            if self.watcher is not None:
                batch.events.extend(self.watcher.drain_events())
            return batch

    def _check_count(self, nvml: Any) -> None:
        # Called every collect: cheap, and the simulator's device model advances its state here.
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as err:
            raise SourceError("nvml_error", f"nvmlDeviceGetCount failed: {err}") from err
        if count != len(self._gpus or ()) and not self._count_warned:
            self._count_warned = True
            log.warning("gpu: NVML now reports %d GPUs, %d were discovered; restart the agent to rediscover",
                        count, len(self._gpus or ()))

    def _collect_gpu(self, nvml: Any, g: _Gpu, batch: Batch, counts: dict[str, dict[int, int]],
                     last: dict[str, int]) -> None:
        mark = len(batch)
        not_supported = self._c["NVML_ERROR_NOT_SUPPORTED"]
        lost_code = self._c["NVML_ERROR_GPU_IS_LOST"]
        error_cls = nvml.NVMLError
        dropped: list[str] = []
        for key, reader in tuple(g.plan.items()):     # a snapshot: readers may drop their own entry
            try:
                reader(g, batch)
            except error_cls as err:
                code = err.value
                if code == lost_code:
                    g.lost = True
                    break
                if code == not_supported:
                    dropped.append(key)
                    log.debug("GPU %s: %s not supported; not asking again", g.uuid, key)
                else:
                    self._field_error(key, g, err)
            except _GpuLost:
                g.lost = True
                break
        for key in dropped:
            del g.plan[key]
        if g.lost:
            # Readings taken before NVML said "lost" in this collect are not trusted either.
            del batch.metric[mark:], batch.entity[mark:], batch.value[mark:], batch.extra[mark:]
            return
        e = g.entity
        add = batch.add
        add("fleetwatch_gpu_lost", e, 0.0)
        add("fleetwatch_gpu_info", e, 1.0)
        add("fleetwatch_gpu_vgpu_license_status", e, 0.0)
        self._add_xids(g, batch, counts, last)

    @staticmethod
    def _add_xids(g: _Gpu, batch: Batch, counts: dict[str, dict[int, int]], last: dict[str, int]) -> None:
        # XID counts are the agent's own tally, so they stay exported after the GPU is lost (XID 79 included).
        for xid, n in sorted(counts.get(g.uuid, {}).items()):
            batch.add("fleetwatch_gpu_xid_errors_total", g.entity, n, (str(xid),))
        batch.add("fleetwatch_gpu_xid_last_code", g.entity, last.get(g.uuid, 0))

    def _report_lost(self, g: _Gpu, batch: Batch, ts_ns: int, counts: dict[str, dict[int, int]],
                     last: dict[str, int]) -> None:
        batch.add("fleetwatch_gpu_lost", g.entity, 1.0)
        batch.add("fleetwatch_gpu_info", g.entity, 1.0)
        self._add_xids(g, batch, counts, last)
        if not g.lost_reported:
            g.lost_reported = True
            log.warning("GPU %d (%s) is lost (NVML_ERROR_GPU_IS_LOST); reporting only fleetwatch_gpu_lost and its XIDs",
                        g.index, g.uuid)
            batch.events.append(Event(ts_ns=ts_ns, node=self.ctx.node, entity=g.entity.id, kind=LOST_EVENT,
                                      code=self._c["NVML_ERROR_GPU_IS_LOST"],
                                      detail="NVML_ERROR_GPU_IS_LOST: the GPU stopped answering (fallen off "
                                             "the bus, XID 79 class); needs a reset or reboot"))

    def _field_error(self, key: str, g: _Gpu, err: Exception) -> None:
        self.field_errors[key] += 1
        code = int(getattr(err, "value", -1))
        if (key, code) not in self._logged:
            self._logged.add((key, code))
            log.warning("GPU %s: %s failed: %s (logged once; counted in field_errors)", g.uuid, key, err)

    # --- readers: one per plan entry; each reads, converts and adds, or raises NVMLError -------------

    def _r_util(self, g: _Gpu, b: Batch) -> None:
        u = self._nvml.nvmlDeviceGetUtilizationRates(g.handle)
        b.add("fleetwatch_gpu_utilization_ratio", g.entity, u.gpu / 100.0)
        b.add("fleetwatch_gpu_memory_copy_utilization_ratio", g.entity, u.memory / 100.0)

    def _r_encoder(self, g: _Gpu, b: Batch) -> None:
        util = self._nvml.nvmlDeviceGetEncoderUtilization(g.handle)[0]
        b.add("fleetwatch_gpu_encoder_utilization_ratio", g.entity, util / 100.0)

    def _r_decoder(self, g: _Gpu, b: Batch) -> None:
        util = self._nvml.nvmlDeviceGetDecoderUtilization(g.handle)[0]
        b.add("fleetwatch_gpu_decoder_utilization_ratio", g.entity, util / 100.0)

    def _r_memory(self, g: _Gpu, b: Batch) -> None:
        m = self._nvml.nvmlDeviceGetMemoryInfo(g.handle, version=self._c["nvmlMemory_v2"])
        e = g.entity
        b.add("fleetwatch_gpu_framebuffer_free_bytes", e, m.free)
        b.add("fleetwatch_gpu_framebuffer_used_bytes", e, m.used)
        b.add("fleetwatch_gpu_framebuffer_reserved_bytes", e, m.reserved)
        b.add("fleetwatch_gpu_framebuffer_total_bytes", e, m.total)

    def _r_temperature(self, g: _Gpu, b: Batch) -> None:
        t = self._nvml.nvmlDeviceGetTemperature(g.handle, self._c["NVML_TEMPERATURE_GPU"])
        b.add("fleetwatch_gpu_temperature_celsius", g.entity, t)

    def _r_power(self, g: _Gpu, b: Batch) -> None:
        b.add("fleetwatch_gpu_power_watts", g.entity, self._nvml.nvmlDeviceGetPowerUsage(g.handle) / 1000.0)

    def _r_power_limit(self, g: _Gpu, b: Batch) -> None:
        limit = self._nvml.nvmlDeviceGetEnforcedPowerLimit(g.handle)
        b.add("fleetwatch_gpu_power_limit_watts", g.entity, limit / 1000.0)

    def _r_energy(self, g: _Gpu, b: Batch) -> None:
        mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(g.handle)
        b.add("fleetwatch_gpu_energy_joules_total", g.entity, mj / 1000.0)

    def _r_sm_clock(self, g: _Gpu, b: Batch) -> None:
        mhz = self._nvml.nvmlDeviceGetClockInfo(g.handle, self._c["NVML_CLOCK_SM"])
        b.add("fleetwatch_gpu_sm_clock_hertz", g.entity, mhz * 1e6)

    def _r_mem_clock(self, g: _Gpu, b: Batch) -> None:
        mhz = self._nvml.nvmlDeviceGetClockInfo(g.handle, self._c["NVML_CLOCK_MEM"])
        b.add("fleetwatch_gpu_memory_clock_hertz", g.entity, mhz * 1e6)

    def _r_pstate(self, g: _Gpu, b: Batch) -> None:
        pstate = self._nvml.nvmlDeviceGetPerformanceState(g.handle)
        b.add("fleetwatch_gpu_performance_state", g.entity, pstate)

    def _r_fan(self, g: _Gpu, b: Batch) -> None:
        b.add("fleetwatch_gpu_fan_speed_ratio", g.entity, self._nvml.nvmlDeviceGetFanSpeed(g.handle) / 100.0)

    def _r_clock_events(self, g: _Gpu, b: Batch) -> None:
        mask = self._nvml.nvmlDeviceGetCurrentClocksEventReasons(g.handle)
        e = g.entity
        add = b.add
        add("fleetwatch_gpu_clock_event_reasons", e, mask)
        for _, bit, extra in _CLOCK_REASONS:
            add("fleetwatch_gpu_clock_event_active", e, 1.0 if mask & bit else 0.0, extra)

    def _r_ecc(self, g: _Gpu, b: Batch) -> None:
        c, get, h = self._c, self._nvml.nvmlDeviceGetTotalEccErrors, g.handle
        corrected = c["NVML_MEMORY_ERROR_TYPE_CORRECTED"]
        uncorrected = c["NVML_MEMORY_ERROR_TYPE_UNCORRECTED"]
        volatile, aggregate = c["NVML_VOLATILE_ECC"], c["NVML_AGGREGATE_ECC"]
        values = (get(h, corrected, volatile), get(h, uncorrected, volatile),
                  get(h, corrected, aggregate), get(h, uncorrected, aggregate))
        e = g.entity
        b.add("fleetwatch_gpu_ecc_sbe_volatile_total", e, values[0])
        b.add("fleetwatch_gpu_ecc_dbe_volatile_total", e, values[1])
        b.add("fleetwatch_gpu_ecc_sbe_aggregate_total", e, values[2])
        b.add("fleetwatch_gpu_ecc_dbe_aggregate_total", e, values[3])

    def _r_retired(self, g: _Gpu, b: Batch) -> None:
        get, c = self._nvml.nvmlDeviceGetRetiredPages, self._c
        sbe = len(get(g.handle, c["NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS"]))
        dbe = len(get(g.handle, c["NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR"]))
        b.add("fleetwatch_gpu_retired_pages_sbe_total", g.entity, sbe)
        b.add("fleetwatch_gpu_retired_pages_dbe_total", g.entity, dbe)

    def _r_retired_pending(self, g: _Gpu, b: Batch) -> None:
        pending = self._nvml.nvmlDeviceGetRetiredPagesPendingStatus(g.handle)
        b.add("fleetwatch_gpu_retired_pages_pending", g.entity, 1.0 if pending else 0.0)

    def _r_remapped(self, g: _Gpu, b: Batch) -> None:
        corr, unc, pending, failure = self._nvml.nvmlDeviceGetRemappedRows(g.handle)
        e = g.entity
        b.add("fleetwatch_gpu_remapped_rows_correctable_total", e, corr)
        b.add("fleetwatch_gpu_remapped_rows_uncorrectable_total", e, unc)
        b.add("fleetwatch_gpu_remapped_rows_pending", e, 1.0 if pending else 0.0)
        b.add("fleetwatch_gpu_remapped_rows_failed", e, 1.0 if failure else 0.0)

    def _r_pcie_tx(self, g: _Gpu, b: Batch) -> None:
        kbps = self._nvml.nvmlDeviceGetPcieThroughput(g.handle, self._c["NVML_PCIE_UTIL_TX_BYTES"])
        b.add("fleetwatch_gpu_pcie_transmit_bytes_per_second", g.entity, kbps * KIB)

    def _r_pcie_rx(self, g: _Gpu, b: Batch) -> None:
        kbps = self._nvml.nvmlDeviceGetPcieThroughput(g.handle, self._c["NVML_PCIE_UTIL_RX_BYTES"])
        b.add("fleetwatch_gpu_pcie_receive_bytes_per_second", g.entity, kbps * KIB)

    def _r_pcie_replays(self, g: _Gpu, b: Batch) -> None:
        replays = self._nvml.nvmlDeviceGetPcieReplayCounter(g.handle)
        b.add("fleetwatch_gpu_pcie_replays_total", g.entity, replays)

    def _r_fields(self, g: _Gpu, b: Batch) -> None:
        nvml, c = self._nvml, self._c
        values = nvml.nvmlDeviceGetFieldValues(g.handle, g.fields)
        ok, not_supported = c["NVML_SUCCESS"], c["NVML_ERROR_NOT_SUPPORTED"]
        got: dict[int, float] = {}
        unsupported: list[tuple[int, int]] = []
        for i, field in enumerate(g.fields):
            v = values[i]
            ret = v.nvmlReturn
            if ret == ok:
                got[field[0]] = _field_value(v)
            elif ret == not_supported:
                unsupported.append(field)
            elif ret == c["NVML_ERROR_GPU_IS_LOST"]:
                raise _GpuLost
            else:
                self._field_error(f"nvmlDeviceGetFieldValues({field[0]})", g, nvml.NVMLError(ret))
        if unsupported:
            g.fields = [f for f in g.fields if f not in unsupported]
            if not g.fields:
                del g.plan["nvmlDeviceGetFieldValues"]
        temp = got.get(c["NVML_FI_DEV_MEMORY_TEMP"])
        if temp is not None:
            b.add("fleetwatch_gpu_memory_temperature_celsius", g.entity, temp)
        tx = got.get(c["NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX"])
        rx = got.get(c["NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX"])
        if tx is not None and rx is not None:
            b.add("fleetwatch_gpu_nvlink_bandwidth_total", g.entity, tx + rx)

    def _r_nvlink(self, g: _Gpu, b: Batch) -> None:
        nvml, c = self._nvml, self._c
        state, counter, h = nvml.nvmlDeviceGetNvLinkState, nvml.nvmlDeviceGetNvLinkErrorCounter, g.handle
        error_cls = nvml.NVMLError
        lost, not_supported = c["NVML_ERROR_GPU_IS_LOST"], c["NVML_ERROR_NOT_SUPPORTED"]
        add = b.add
        replay, recovery, flit, data = self._nvlink_counters
        gone: list[int] = []
        for link in g.links:
            try:
                if not state(h, link):
                    continue                                  # down: no fresh counters, keep the last
                values = (counter(h, link, replay), counter(h, link, recovery), counter(h, link, flit),
                          counter(h, link, data))
            except error_cls as err:
                if err.value == lost:
                    raise
                if err.value == not_supported:
                    gone.append(link)
                else:
                    self._field_error("nvmlDeviceGetNvLinkErrorCounter", g, err)
                continue
            g.link_counters[link] = values
            e = g.link_entities[link]
            add("fleetwatch_nvlink_replay_errors_total", e, values[0])
            add("fleetwatch_nvlink_recovery_errors_total", e, values[1])
            add("fleetwatch_nvlink_crc_flit_errors_total", e, values[2])
            add("fleetwatch_nvlink_crc_data_errors_total", e, values[3])
        if gone:
            g.links = [link for link in g.links if link not in gone]
        if g.link_counters:
            totals = [sum(col) for col in zip(*g.link_counters.values(), strict=True)]
            add("fleetwatch_gpu_nvlink_replay_errors_total", g.entity, totals[0])
            add("fleetwatch_gpu_nvlink_recovery_errors_total", g.entity, totals[1])
            add("fleetwatch_gpu_nvlink_crc_errors_total", g.entity, totals[2] + totals[3])

    def _r_gpm(self, g: _Gpu, b: Batch) -> None:
        nvml = self._nvml
        prev, cur = g.gpm_samples
        try:
            nvml.nvmlGpmSampleGet(g.handle, cur)
        except nvml.NVMLError:
            g.gpm_have_prev = False                           # the pair is broken: start over
            raise
        if g.gpm_have_prev:
            get = g.gpm_get
            get.sample1, get.sample2 = prev, cur
            nvml.nvmlGpmMetricsGet(get)
            ok = self._c["NVML_SUCCESS"]
            for i, (_, metric) in enumerate(self._gpm_metrics):
                m = get.metrics[i]
                if m.nvmlReturn == ok:
                    b.add(metric, g.entity, m.value / 100.0)
        g.gpm_samples = [cur, prev]
        g.gpm_have_prev = True


def _field_value(v: Any) -> float:
    """A c_nvmlFieldValue_t's value, read through its valueType (NVML_VALUE_TYPE_*)."""
    t, u = v.valueType, v.value
    if t == 0:
        return float(u.dVal)
    if t == 1:
        return float(u.uiVal)
    if t == 2:
        return float(u.ulVal)
    if t == 3:
        return float(u.ullVal)
    if t == 4:
        return float(u.sllVal)
    if t == 5:
        return float(u.siVal)
    return float(u.usVal)


def create(ctx: SourceContext, options: dict[str, Any]) -> NvmlSource:
    """Build the gpu source: real pynvml, or the simulator's NVML device model (ctx.simulator.nvml_model)."""
    for key in options:
        if key not in OPTIONS:
            raise ValueError(f"gpu: unknown option {key!r} (known: {', '.join(OPTIONS)})")
    kwargs: dict[str, Any] = {}
    for key in ("interval", "timeout"):
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"gpu option {key!r} must be a positive number of seconds, got {value!r}")
            kwargs[key] = float(value)
    if "xid_events" in options:
        if not isinstance(options["xid_events"], bool):
            raise ValueError(f"gpu option 'xid_events' must be true or false, got {options['xid_events']!r}")
        kwargs["xid_events"] = options["xid_events"]
    nvml = None
    factory = getattr(ctx.simulator, "nvml_model", None) if ctx.simulator is not None else None
    if callable(factory):
        nvml = factory(ctx.node)
    return NvmlSource(ctx, nvml, **kwargs)


register_source("gpu", True, create, OPTIONS)
