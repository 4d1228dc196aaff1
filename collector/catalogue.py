"""The metric catalogue: every metric fleetwatch knows, as plain records (the design's seam 1).

The exporter renders native and dcgm-exporter names from it, the recorder takes units from it, the
importers map nvidia-smi fields and dcgm names through it, and the README's metric reference is
generated from it (`python -m collector.catalogue --markdown`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

MetricType = Literal["gauge", "counter"]

# Identity labels per entity kind, in exposition order. Native names use snake_case labels.
GPU_LABELS: tuple[str, ...] = ("node", "gpu", "uuid", "pci_bus_id", "device", "model_name", "driver_version")
ENTITY_LABELS: dict[str, tuple[str, ...]] = {
    "gpu": GPU_LABELS,
    "nvlink": (*GPU_LABELS, "link"),
    "interface": ("node", "device"),
    "ib_port": ("node", "device", "port"),
    "rapl_zone": ("node", "zone"),
    "node": ("node",),
    "source": ("source",),
    "process": (),                 # fleetwatch itself (recorder): no identity labels
    "scope": ("scope", "node", "gpu"),    # a forecast's aggregate: fleet (node="", gpu=""), node, or gpu
}
# dcgm-exporter's own label names and order (its camelCase labels are kept byte for byte).
DCGM_GPU_LABELS: tuple[str, ...] = (
    "gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION",
)

# NVML clock-event ("throttle") reason bits, nvmlClocksEventReason* in nvml.h; label value → bit.
CLOCK_EVENT_REASONS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its native name and everything that maps other worlds onto it."""

    name: str
    type: MetricType
    unit: str
    help: str
    entity: str
    source: str
    labels: tuple[str, ...] = ()          # labels beyond the entity's identity labels
    dcgm: str | None = None               # dcgm-exporter / DCGM field name
    dcgm_type: str | None = None          # dcgm-exporter's declared type (may differ from ours)
    dcgm_help: str | None = None          # dcgm-exporter's help text, byte for byte
    dcgm_scale: float = 1.0               # native value × scale = dcgm value
    dcgm_default: bool = False            # exported in dcgm mode (uncommented in default-counters.csv)
    smi: str | None = None                # nvidia-smi --query-gpu field
    smi_scale: float = 1.0                # nvidia-smi value (nounits) × scale = native value
    record: bool = True                   # written to traces (derived series are not)

    @property
    def labelnames(self) -> tuple[str, ...]:
        """All native label names of this metric's series."""
        return ENTITY_LABELS[self.entity] + self.labels


MIB = 1024.0 * 1024.0

_G = "gpu"
METRICS: tuple[MetricSpec, ...] = (
    # --- utilisation -------------------------------------------------------------------------
    MetricSpec("fleetwatch_gpu_utilization_ratio", "gauge", "ratio",
               "Fraction of the sample period during which a kernel was running on the GPU.", _G,
               "nvmlDeviceGetUtilizationRates().gpu", dcgm="DCGM_FI_DEV_GPU_UTIL", dcgm_type="gauge",
               dcgm_help="GPU utilization (in %).", dcgm_scale=100, dcgm_default=True,
               smi="utilization.gpu", smi_scale=0.01),
    MetricSpec("fleetwatch_gpu_memory_copy_utilization_ratio", "gauge", "ratio",
               "Fraction of the sample period during which device memory was read or written.", _G,
               "nvmlDeviceGetUtilizationRates().memory", dcgm="DCGM_FI_DEV_MEM_COPY_UTIL", dcgm_type="gauge",
               dcgm_help="Memory utilization (in %).", dcgm_scale=100, dcgm_default=True,
               smi="utilization.memory", smi_scale=0.01),
    MetricSpec("fleetwatch_gpu_encoder_utilization_ratio", "gauge", "ratio",
               "Video encoder utilisation.", _G, "nvmlDeviceGetEncoderUtilization",
               dcgm="DCGM_FI_DEV_ENC_UTIL", dcgm_type="gauge", dcgm_help="Encoder utilization (in %).",
               dcgm_scale=100, dcgm_default=True, smi="utilization.encoder", smi_scale=0.01),
    MetricSpec("fleetwatch_gpu_decoder_utilization_ratio", "gauge", "ratio",
               "Video decoder utilisation.", _G, "nvmlDeviceGetDecoderUtilization",
               dcgm="DCGM_FI_DEV_DEC_UTIL", dcgm_type="gauge", dcgm_help="Decoder utilization (in %).",
               dcgm_scale=100, dcgm_default=True, smi="utilization.decoder", smi_scale=0.01),
    # --- framebuffer -------------------------------------------------------------------------
    MetricSpec("fleetwatch_gpu_framebuffer_free_bytes", "gauge", "bytes", "Free framebuffer memory.", _G,
               "nvmlDeviceGetMemoryInfo(v2).free", dcgm="DCGM_FI_DEV_FB_FREE", dcgm_type="gauge",
               dcgm_help="Framebuffer memory free (in MiB).", dcgm_scale=1 / MIB, dcgm_default=True,
               smi="memory.free", smi_scale=MIB),
    MetricSpec("fleetwatch_gpu_framebuffer_used_bytes", "gauge", "bytes", "Used framebuffer memory.", _G,
               "nvmlDeviceGetMemoryInfo(v2).used", dcgm="DCGM_FI_DEV_FB_USED", dcgm_type="gauge",
               dcgm_help="Framebuffer memory used (in MiB).", dcgm_scale=1 / MIB, dcgm_default=True,
               smi="memory.used", smi_scale=MIB),
    MetricSpec("fleetwatch_gpu_framebuffer_reserved_bytes", "gauge", "bytes",
               "Framebuffer memory reserved by the driver and firmware.", _G,
               "nvmlDeviceGetMemoryInfo(v2).reserved", dcgm="DCGM_FI_DEV_FB_RESERVED", dcgm_type="gauge",
               dcgm_help="Framebuffer memory reserved (in MiB).", dcgm_scale=1 / MIB, dcgm_default=True,
               smi="memory.reserved", smi_scale=MIB),
    MetricSpec("fleetwatch_gpu_framebuffer_total_bytes", "gauge", "bytes", "Total framebuffer memory.", _G,
               "nvmlDeviceGetMemoryInfo(v2).total", dcgm="DCGM_FI_DEV_FB_TOTAL", smi="memory.total",
               smi_scale=MIB),
    # --- thermals and power ------------------------------------------------------------------
    MetricSpec("fleetwatch_gpu_temperature_celsius", "gauge", "celsius", "GPU core temperature.", _G,
               "nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)", dcgm="DCGM_FI_DEV_GPU_TEMP",
               dcgm_type="gauge", dcgm_help="GPU temperature (in C).", dcgm_default=True,
               smi="temperature.gpu"),
    MetricSpec("fleetwatch_gpu_memory_temperature_celsius", "gauge", "celsius", "HBM memory temperature.",
               _G, "nvmlDeviceGetFieldValues(NVML_FI_DEV_MEMORY_TEMP)", dcgm="DCGM_FI_DEV_MEMORY_TEMP",
               dcgm_type="gauge", dcgm_help="Memory temperature (in C).", dcgm_default=True,
               smi="temperature.memory"),
    MetricSpec("fleetwatch_gpu_power_watts", "gauge", "watts", "Power draw of the GPU board.", _G,
               "nvmlDeviceGetPowerUsage (mW)", dcgm="DCGM_FI_DEV_POWER_USAGE", dcgm_type="gauge",
               dcgm_help="Power draw (in W).", dcgm_default=True, smi="power.draw"),
    MetricSpec("fleetwatch_gpu_power_limit_watts", "gauge", "watts", "Enforced power limit.", _G,
               "nvmlDeviceGetEnforcedPowerLimit (mW)", dcgm="DCGM_FI_DEV_ENFORCED_POWER_LIMIT",
               smi="enforced.power.limit"),
    MetricSpec("fleetwatch_gpu_energy_joules_total", "counter", "joules",
               "Energy consumed by the GPU since the driver was loaded.", _G,
               "nvmlDeviceGetTotalEnergyConsumption (mJ)", dcgm="DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
               dcgm_type="counter", dcgm_help="Total energy consumption since boot (in mJ).",
               dcgm_scale=1000, dcgm_default=True),
    MetricSpec("fleetwatch_gpu_sm_clock_hertz", "gauge", "hertz", "SM clock frequency.", _G,
               "nvmlDeviceGetClockInfo(NVML_CLOCK_SM) (MHz)", dcgm="DCGM_FI_DEV_SM_CLOCK", dcgm_type="gauge",
               dcgm_help="SM clock frequency (in MHz).", dcgm_scale=1e-6, dcgm_default=True,
               smi="clocks.sm", smi_scale=1e6),
    MetricSpec("fleetwatch_gpu_memory_clock_hertz", "gauge", "hertz", "Memory clock frequency.", _G,
               "nvmlDeviceGetClockInfo(NVML_CLOCK_MEM) (MHz)", dcgm="DCGM_FI_DEV_MEM_CLOCK",
               dcgm_type="gauge", dcgm_help="Memory clock frequency (in MHz).", dcgm_scale=1e-6,
               dcgm_default=True, smi="clocks.mem", smi_scale=1e6),
    MetricSpec("fleetwatch_gpu_performance_state", "gauge", "",
               "Performance state (0 = P0, maximum performance, to 15 = P15, minimum).", _G,
               "nvmlDeviceGetPerformanceState", dcgm="DCGM_FI_DEV_PSTATE", smi="pstate"),
    MetricSpec("fleetwatch_gpu_fan_speed_ratio", "gauge", "ratio",
               "Intended fan speed as a fraction of maximum.", _G, "nvmlDeviceGetFanSpeed (%)",
               dcgm="DCGM_FI_DEV_FAN_SPEED", smi="fan.speed", smi_scale=0.01),
    MetricSpec("fleetwatch_gpu_clock_event_reasons", "gauge", "",
               "Bitmask of active clock-event (throttle) reasons, nvmlClocksEventReason* bits.", _G,
               "nvmlDeviceGetCurrentClocksEventReasons", dcgm="DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
               smi="clocks_event_reasons.active"),
    MetricSpec("fleetwatch_gpu_clock_event_active", "gauge", "",
               "1 while the clock-event (throttle) reason is active.", _G,
               "nvmlDeviceGetCurrentClocksEventReasons, one series per bit", labels=("reason",),
               record=False),
    # --- memory errors -----------------------------------------------------------------------
    MetricSpec("fleetwatch_gpu_ecc_sbe_volatile_total", "counter", "",
               "Single-bit (corrected) ECC errors since the driver was loaded.", _G,
               "nvmlDeviceGetTotalEccErrors(CORRECTED, VOLATILE_ECC)", dcgm="DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
               smi="ecc.errors.corrected.volatile.total"),
    MetricSpec("fleetwatch_gpu_ecc_dbe_volatile_total", "counter", "",
               "Double-bit (uncorrected) ECC errors since the driver was loaded.", _G,
               "nvmlDeviceGetTotalEccErrors(UNCORRECTED, VOLATILE_ECC)",
               dcgm="DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", smi="ecc.errors.uncorrected.volatile.total"),
    MetricSpec("fleetwatch_gpu_ecc_sbe_aggregate_total", "counter", "",
               "Single-bit (corrected) ECC errors over the GPU's lifetime.", _G,
               "nvmlDeviceGetTotalEccErrors(CORRECTED, AGGREGATE_ECC)", dcgm="DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
               smi="ecc.errors.corrected.aggregate.total"),
    MetricSpec("fleetwatch_gpu_ecc_dbe_aggregate_total", "counter", "",
               "Double-bit (uncorrected) ECC errors over the GPU's lifetime.", _G,
               "nvmlDeviceGetTotalEccErrors(UNCORRECTED, AGGREGATE_ECC)",
               dcgm="DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", smi="ecc.errors.uncorrected.aggregate.total"),
    MetricSpec("fleetwatch_gpu_retired_pages_sbe_total", "counter", "",
               "Pages retired because of repeated single-bit errors (pre-Ampere page retirement).", _G,
               "nvmlDeviceGetRetiredPages(MULTIPLE_SINGLE_BIT_ECC_ERRORS)", dcgm="DCGM_FI_DEV_RETIRED_SBE",
               smi="retired_pages.single_bit_ecc.count"),
    MetricSpec("fleetwatch_gpu_retired_pages_dbe_total", "counter", "",
               "Pages retired because of double-bit errors.", _G,
               "nvmlDeviceGetRetiredPages(DOUBLE_BIT_ECC_ERROR)", dcgm="DCGM_FI_DEV_RETIRED_DBE",
               smi="retired_pages.double_bit.count"),
    MetricSpec("fleetwatch_gpu_retired_pages_pending", "gauge", "",
               "1 while a page retirement waits for the next driver reload.", _G,
               "nvmlDeviceGetRetiredPagesPendingStatus", dcgm="DCGM_FI_DEV_RETIRED_PENDING",
               smi="retired_pages.pending"),
    MetricSpec("fleetwatch_gpu_remapped_rows_correctable_total", "counter", "",
               "HBM rows remapped because of correctable errors.", _G, "nvmlDeviceGetRemappedRows().corrRows",
               dcgm="DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", dcgm_type="counter",
               dcgm_help="Number of remapped rows for correctable errors", dcgm_default=True,
               smi="remapped_rows.correctable"),
    MetricSpec("fleetwatch_gpu_remapped_rows_uncorrectable_total", "counter", "",
               "HBM rows remapped because of uncorrectable errors.", _G,
               "nvmlDeviceGetRemappedRows().uncRows", dcgm="DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
               dcgm_type="counter", dcgm_help="Number of remapped rows for uncorrectable errors",
               dcgm_default=True, smi="remapped_rows.uncorrectable"),
    MetricSpec("fleetwatch_gpu_remapped_rows_pending", "gauge", "",
               "1 while a row remap waits for a GPU reset.", _G, "nvmlDeviceGetRemappedRows().isPending",
               smi="remapped_rows.pending"),
    MetricSpec("fleetwatch_gpu_remapped_rows_failed", "gauge", "",
               "1 once a row remap has failed (no spare rows left in a bank).", _G,
               "nvmlDeviceGetRemappedRows().failureOccurred", dcgm="DCGM_FI_DEV_ROW_REMAP_FAILURE",
               dcgm_type="gauge", dcgm_help="Whether remapping of rows has failed", dcgm_default=True,
               smi="remapped_rows.failure"),
    # --- PCIe and NVLink ---------------------------------------------------------------------
    MetricSpec("fleetwatch_gpu_pcie_transmit_bytes_per_second", "gauge", "bytes_per_second",
               "PCIe transmit throughput over NVML's 20 ms sample window.", _G,
               "nvmlDeviceGetPcieThroughput(TX_BYTES) (KB/s)", dcgm="DCGM_FI_PROF_PCIE_TX_BYTES",
               dcgm_type="gauge",
               dcgm_help="The rate of data transmitted over the PCIe bus - including both protocol headers "
                         "and data payloads - in bytes per second.", dcgm_default=True),
    MetricSpec("fleetwatch_gpu_pcie_receive_bytes_per_second", "gauge", "bytes_per_second",
               "PCIe receive throughput over NVML's 20 ms sample window.", _G,
               "nvmlDeviceGetPcieThroughput(RX_BYTES) (KB/s)", dcgm="DCGM_FI_PROF_PCIE_RX_BYTES",
               dcgm_type="gauge",
               dcgm_help="The rate of data received over the PCIe bus - including both protocol headers "
                         "and data payloads - in bytes per second.", dcgm_default=True),
    MetricSpec("fleetwatch_gpu_pcie_replays_total", "counter", "", "PCIe replays (link-level retries).", _G,
               "nvmlDeviceGetPcieReplayCounter", dcgm="DCGM_FI_DEV_PCIE_REPLAY_COUNTER", dcgm_type="counter",
               dcgm_help="Total number of PCIe retries.", dcgm_default=True),
    MetricSpec("fleetwatch_gpu_nvlink_crc_errors_total", "counter", "",
               "NVLink CRC errors (flit and data) summed over the GPU's links.", _G,
               "sum over links of nvmlDeviceGetNvLinkErrorCounter(CRC_FLIT, CRC_DATA)",
               dcgm="DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL"),
    MetricSpec("fleetwatch_gpu_nvlink_replay_errors_total", "counter", "",
               "NVLink replays summed over the GPU's links.", _G,
               "sum over links of nvmlDeviceGetNvLinkErrorCounter(REPLAY)",
               dcgm="DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL"),
    MetricSpec("fleetwatch_gpu_nvlink_recovery_errors_total", "counter", "",
               "NVLink recoveries summed over the GPU's links.", _G,
               "sum over links of nvmlDeviceGetNvLinkErrorCounter(RECOVERY)",
               dcgm="DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL"),
    MetricSpec("fleetwatch_gpu_nvlink_bandwidth_total", "counter", "",
               "NVLink bandwidth counter summed over all links, in the driver's counter units.", _G,
               "nvmlDeviceGetFieldValues(NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX/RX)",
               dcgm="DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", dcgm_type="counter",
               dcgm_help="Total number of NVLink bandwidth counters for all lanes.", dcgm_default=True),
    MetricSpec("fleetwatch_nvlink_crc_flit_errors_total", "counter", "", "NVLink flow-control CRC errors.",
               "nvlink", "nvmlDeviceGetNvLinkErrorCounter(NVML_NVLINK_ERROR_DL_CRC_FLIT)"),
    MetricSpec("fleetwatch_nvlink_crc_data_errors_total", "counter", "", "NVLink data CRC errors.", "nvlink",
               "nvmlDeviceGetNvLinkErrorCounter(NVML_NVLINK_ERROR_DL_CRC_DATA)"),
    MetricSpec("fleetwatch_nvlink_replay_errors_total", "counter", "", "NVLink replays.", "nvlink",
               "nvmlDeviceGetNvLinkErrorCounter(NVML_NVLINK_ERROR_DL_REPLAY)"),
    MetricSpec("fleetwatch_nvlink_recovery_errors_total", "counter", "", "NVLink recoveries.", "nvlink",
               "nvmlDeviceGetNvLinkErrorCounter(NVML_NVLINK_ERROR_DL_RECOVERY)"),
    # --- Hopper GPM (profiling) ---------------------------------------------------------------
    MetricSpec("fleetwatch_gpu_graphics_engine_active_ratio", "gauge", "ratio",
               "Fraction of time the graphics engine was active (GPM).", _G,
               "nvmlGpmMetricsGet(NVML_GPM_METRIC_GRAPHICS_UTIL)", dcgm="DCGM_FI_PROF_GR_ENGINE_ACTIVE",
               dcgm_type="gauge", dcgm_help="Ratio of time the graphics engine is active.", dcgm_default=True),
    MetricSpec("fleetwatch_gpu_sm_active_ratio", "gauge", "ratio",
               "Fraction of cycles an SM had at least one warp assigned (GPM).", _G,
               "nvmlGpmMetricsGet(NVML_GPM_METRIC_SM_UTIL)", dcgm="DCGM_FI_PROF_SM_ACTIVE"),
    MetricSpec("fleetwatch_gpu_tensor_active_ratio", "gauge", "ratio",
               "Fraction of cycles a tensor pipe was active (GPM).", _G,
               "nvmlGpmMetricsGet(NVML_GPM_METRIC_ANY_TENSOR_UTIL)", dcgm="DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
               dcgm_type="gauge", dcgm_help="Ratio of cycles the tensor (HMMA) pipe is active.",
               dcgm_default=True),
    MetricSpec("fleetwatch_gpu_dram_active_ratio", "gauge", "ratio",
               "Fraction of cycles the device memory interface was busy (GPM).", _G,
               "nvmlGpmMetricsGet(NVML_GPM_METRIC_DRAM_BW_UTIL)", dcgm="DCGM_FI_PROF_DRAM_ACTIVE",
               dcgm_type="gauge",
               dcgm_help="Ratio of cycles the device memory interface is active sending or receiving data.",
               dcgm_default=True),
    # --- XID, health, identity ----------------------------------------------------------------
    MetricSpec("fleetwatch_gpu_xid_errors_total", "counter", "", "XID errors reported by the driver, by code.",
               _G, "nvmlEventSetWait(NVML_EVENT_TYPE_XID_CRITICAL_ERROR) or kernel log 'NVRM: Xid'",
               labels=("xid",), record=False),
    MetricSpec("fleetwatch_gpu_xid_last_code", "gauge", "", "Code of the last XID error seen (0: none).", _G,
               "nvmlEventSetWait(NVML_EVENT_TYPE_XID_CRITICAL_ERROR)", dcgm="DCGM_FI_DEV_XID_ERRORS",
               dcgm_type="gauge", dcgm_help="Value of the last XID error encountered.", dcgm_default=True),
    MetricSpec("fleetwatch_gpu_lost", "gauge", "",
               "1 when NVML reports the GPU lost (NVML_ERROR_GPU_IS_LOST, XID 79: fallen off the bus).", _G,
               "NVML_ERROR_GPU_IS_LOST from any device query"),
    MetricSpec("fleetwatch_gpu_vgpu_license_status", "gauge", "",
               "vGPU licence status (0 on bare metal: no vGPU licence applies).", _G,
               "nvmlDeviceGetVirtualizationMode", dcgm="DCGM_FI_DEV_VGPU_LICENSE_STATUS", dcgm_type="gauge",
               dcgm_help="vGPU License status", dcgm_default=True),
    MetricSpec("fleetwatch_gpu_info", "gauge", "", "GPU identity; always 1.", _G,
               "nvmlDeviceGetName/UUID/PciInfo, nvmlSystemGetDriverVersion"),
    # --- network -----------------------------------------------------------------------------
    MetricSpec("fleetwatch_network_receive_bytes_total", "counter", "bytes", "Bytes received.", "interface",
               "/proc/net/dev"),
    MetricSpec("fleetwatch_network_transmit_bytes_total", "counter", "bytes", "Bytes transmitted.",
               "interface", "/proc/net/dev"),
    MetricSpec("fleetwatch_network_receive_packets_total", "counter", "", "Packets received.", "interface",
               "/proc/net/dev"),
    MetricSpec("fleetwatch_network_transmit_packets_total", "counter", "", "Packets transmitted.", "interface",
               "/proc/net/dev"),
    MetricSpec("fleetwatch_network_receive_errors_total", "counter", "", "Receive errors.", "interface",
               "/proc/net/dev"),
    MetricSpec("fleetwatch_network_transmit_errors_total", "counter", "", "Transmit errors.", "interface",
               "/proc/net/dev"),
    MetricSpec("fleetwatch_network_receive_drop_total", "counter", "", "Received packets dropped.",
               "interface", "/proc/net/dev"),
    MetricSpec("fleetwatch_network_transmit_drop_total", "counter", "", "Transmitted packets dropped.",
               "interface", "/proc/net/dev"),
    MetricSpec("fleetwatch_network_up", "gauge", "", "1 when the interface's operstate is up.", "interface",
               "/sys/class/net/<device>/operstate"),
    MetricSpec("fleetwatch_infiniband_port_data_received_bytes_total", "counter", "bytes",
               "Data received on the InfiniBand port.", "ib_port",
               "/sys/class/infiniband/<dev>/ports/<port>/counters/port_rcv_data (4-byte words)"),
    MetricSpec("fleetwatch_infiniband_port_data_transmitted_bytes_total", "counter", "bytes",
               "Data transmitted on the InfiniBand port.", "ib_port",
               "/sys/class/infiniband/<dev>/ports/<port>/counters/port_xmit_data (4-byte words)"),
    MetricSpec("fleetwatch_infiniband_port_packets_received_total", "counter", "",
               "Packets received on the InfiniBand port.", "ib_port", "counters/port_rcv_packets"),
    MetricSpec("fleetwatch_infiniband_port_packets_transmitted_total", "counter", "",
               "Packets transmitted on the InfiniBand port.", "ib_port", "counters/port_xmit_packets"),
    MetricSpec("fleetwatch_infiniband_port_symbol_errors_total", "counter", "",
               "Minor link errors detected on the physical lanes.", "ib_port", "counters/symbol_error"),
    MetricSpec("fleetwatch_infiniband_port_link_downed_total", "counter", "",
               "Times the link error recovery process failed and the link went down.", "ib_port",
               "counters/link_downed"),
    MetricSpec("fleetwatch_infiniband_port_receive_errors_total", "counter", "",
               "Packets received with errors.", "ib_port", "counters/port_rcv_errors"),
    MetricSpec("fleetwatch_infiniband_port_link_error_recovery_total", "counter", "",
               "Successful link error recoveries.", "ib_port", "counters/link_error_recovery"),
    MetricSpec("fleetwatch_infiniband_port_up", "gauge", "", "1 when the port state is ACTIVE.", "ib_port",
               "/sys/class/infiniband/<dev>/ports/<port>/state"),
    # --- node power ----------------------------------------------------------------------------
    MetricSpec("fleetwatch_rapl_energy_joules_total", "counter", "joules",
               "Energy counted by a RAPL zone, wrap-around corrected.", "rapl_zone",
               "/sys/class/powercap/intel-rapl:*/energy_uj"),
    MetricSpec("fleetwatch_node_power_watts", "gauge", "watts", "Node power draw reported by the BMC.", "node",
               "Redfish /redfish/v1/Chassis/<id>/Power PowerControl[].PowerConsumedWatts"),
    # --- fleetwatch itself ----------------------------------------------------------------------
    MetricSpec("fleetwatch_source_up", "gauge", "", "1 when the source's last collection succeeded.",
               "source", "collector runner", record=False),
    MetricSpec("fleetwatch_source_duration_seconds", "gauge", "seconds",
               "Duration of the source's last collection.", "source", "collector runner", record=False),
    MetricSpec("fleetwatch_source_errors_total", "counter", "", "Failed collections by reason.", "source",
               "collector runner", labels=("reason",), record=False),
    MetricSpec("fleetwatch_recorder_rows_written_total", "counter", "",
               "Metric and event rows the trace recorder has written.", "process", "collector/recorder.py",
               record=False),
    MetricSpec("fleetwatch_recorder_written_bytes_total", "counter", "bytes",
               "Bytes of Parquet the trace recorder has written (merges included).", "process",
               "collector/recorder.py", record=False),
    MetricSpec("fleetwatch_recorder_flush_errors_total", "counter", "",
               "Failed recorder flushes (rows are kept for the next flush).", "process", "collector/recorder.py",
               record=False),
    MetricSpec("fleetwatch_recorder_rows_dropped_total", "counter", "",
               "Rows dropped after repeated write failures.", "process", "collector/recorder.py", record=False),
    MetricSpec("fleetwatch_recorder_pending_rows", "gauge", "", "Rows buffered but not yet on disk.", "process",
               "collector/recorder.py", record=False),
    MetricSpec("fleetwatch_recorder_last_flush_timestamp_seconds", "gauge", "seconds",
               "Time of the last successful recorder flush.", "process", "collector/recorder.py", record=False),
    # --- predictor: energy and power forecasts (predictor/energy) --------------------------------
    MetricSpec("fleetwatch_power_forecast_watts", "gauge", "watts",
               "Forecast GPU power at the horizon (quantile 0.5: reconciled point forecast; 0.1/0.9 and "
               "0.025/0.975 bound the 80 % and 95 % intervals).", "scope", "predictor/energy",
               labels=("horizon", "quantile"), record=False),
    MetricSpec("fleetwatch_energy_forecast_joules", "gauge", "joules",
               "Forecast GPU energy over the next horizon, by quantile.", "scope", "predictor/energy",
               labels=("horizon", "quantile"), record=False),
    MetricSpec("fleetwatch_energy_forecast_cost", "gauge", "",
               "Forecast energy cost over the next horizon in the tariff's currency (facility energy when a PUE "
               "is known), by quantile.", "scope", "predictor/energy", labels=("horizon", "quantile"),
               record=False),
    MetricSpec("fleetwatch_energy_forecast_carbon_grams", "gauge", "grams",
               "Forecast CO2 emitted for the energy over the next horizon (grid intensity × energy), by "
               "quantile.", "scope", "predictor/energy", labels=("horizon", "quantile"), record=False),
    MetricSpec("fleetwatch_pue_ratio", "gauge", "ratio",
               "Power usage effectiveness now: facility power over IT (GPU) power.", "scope", "predictor/energy",
               record=False),
    MetricSpec("fleetwatch_pue_forecast_ratio", "gauge", "ratio",
               "PUE at the horizon: facility power over the forecast IT (GPU) power (median); method: "
               "linear_fit or current_ratio (measured facility power), configured_pue, configured_facility.",
               "scope", "predictor/energy", labels=("horizon", "method"), record=False),
    MetricSpec("fleetwatch_facility_power_watts", "gauge", "watts",
               "Measured facility (whole-site) power from energy.facility_power_query.", "scope",
               "predictor/energy/facility.py", record=False),
    MetricSpec("fleetwatch_power_budget_exceed_probability_ratio", "gauge", "ratio",
               "Probability that power exceeds the configured budget at some point within the horizon.",
               "scope", "predictor/energy", labels=("horizon",), record=False),
    MetricSpec("fleetwatch_power_budget_watts", "gauge", "watts", "The configured power budget.", "scope",
               "predictor/energy (configuration)", record=False),
    MetricSpec("fleetwatch_forecast_model_info", "gauge", "",
               "The model chosen for a series and horizon; fallback says why a baseline is used (none, "
               "short_history, constant, gaps, fit_failed, no_data). Always 1.", "scope", "predictor/energy",
               labels=("horizon", "model", "fallback"), record=False),
    MetricSpec("fleetwatch_forecast_backtest_mase", "gauge", "",
               "Backtest MASE of a model at a horizon (MAE over the in-sample daily seasonal-naive MAE).",
               "scope", "predictor/energy", labels=("horizon", "model"), record=False),
    MetricSpec("fleetwatch_forecast_backtest_coverage_ratio", "gauge", "ratio",
               "Backtest share of actuals inside the published interval (interval 80 or 95), per hierarchy "
               "level, of the chosen reconciled forecasts.", "scope", "predictor/energy",
               labels=("horizon", "interval"), record=False),
    MetricSpec("fleetwatch_forecast_last_fit_timestamp_seconds", "gauge", "seconds",
               "Data time of the last model refit.", "process", "predictor/energy", record=False),
    MetricSpec("fleetwatch_forecast_fit_duration_seconds", "gauge", "seconds",
               "Wall time the last refit (backtest, selection, fit) took.", "process", "predictor/energy",
               record=False),
    MetricSpec("fleetwatch_forecast_origin_timestamp_seconds", "gauge", "seconds",
               "Data time the published forecasts start from.", "process", "predictor/energy", record=False),
    # --- predictor: GPU failure risk (predictor/failure) ------------------------------------------
    MetricSpec("fleetwatch_gpu_failure_risk", "gauge", "",
               "Predicted probability (0-1) that the GPU fails within the model's horizon (anomaly score "
               "without a trained model).", _G, "predictor/failure/live.py", record=False),
    MetricSpec("fleetwatch_gpu_failure_risk_reason", "gauge", "",
               "A top contributing factor of the GPU's failure risk: the risk drop when it is set to the fleet "
               "median.", _G, "predictor/failure/live.py", labels=("reason",), record=False),
    MetricSpec("fleetwatch_gpu_failure_risk_threshold", "gauge", "",
               "The failure risk at or above which the GPU is alerting now: the model's threshold while it is "
               "not, threshold x clear ratio while it is (hysteresis). Alert on risk >= this.", _G,
               "predictor/failure/live.py", record=False),
    MetricSpec("fleetwatch_failure_model_info", "gauge", "",
               "The failure-risk model in use (always 1): version, kind (supervised|anomaly), threshold.",
               "process", "predictor/failure/live.py", labels=("version", "kind", "threshold"), record=False),
    MetricSpec("fleetwatch_failure_scoring_duration_seconds", "gauge", "seconds",
               "Duration of the last failure-risk scoring round.", "process", "predictor/failure/live.py",
               record=False),
    # --- alerts and remediation (alerts/) ---------------------------------------------------------
    MetricSpec("fleetwatch_alerts_evaluation_duration_seconds", "gauge", "seconds",
               "Duration of the last evaluation of all alert rules.", "process", "alerts/engine.py", record=False),
    MetricSpec("fleetwatch_alerts_evaluations_total", "counter", "", "Evaluations of the alert rules.", "process",
               "alerts/engine.py", record=False),
    MetricSpec("fleetwatch_alerts_rules", "gauge", "", "Alert rules loaded.", "process", "alerts/engine.py",
               record=False),
    MetricSpec("fleetwatch_alerts_rule_errors_total", "counter", "",
               "Failed evaluations of an alert rule (its alerts keep their state).", "process", "alerts/engine.py",
               labels=("alertname",), record=False),
    MetricSpec("fleetwatch_alerts_instances", "gauge", "", "Alerts by state (pending, firing, resolved).",
               "process", "alerts/engine.py", labels=("state",), record=False),
    MetricSpec("fleetwatch_alertmanager_outbox_alerts", "gauge", "",
               "Alerts waiting in the durable outbox for an Alertmanager.", "process", "alerts/alertmanager.py",
               labels=("alertmanager",), record=False),
    MetricSpec("fleetwatch_alertmanager_sent_alerts_total", "counter", "",
               "Alerts an Alertmanager accepted (POST /api/v2/alerts).", "process", "alerts/alertmanager.py",
               labels=("alertmanager",), record=False),
    MetricSpec("fleetwatch_alertmanager_send_errors_total", "counter", "",
               "Failed deliveries to an Alertmanager (the alerts stay in the outbox).", "process",
               "alerts/alertmanager.py", labels=("alertmanager",), record=False),
    MetricSpec("fleetwatch_alertmanager_dropped_alerts_total", "counter", "",
               "Alerts dropped because the outbox was full (oldest resolved first).", "process",
               "alerts/alertmanager.py", labels=("alertmanager",), record=False),
    # remediation (alerts/remediation): the webhook receiver and the actions it ran, refused or dry-ran
    MetricSpec("fleetwatch_remediation_actions_total", "counter", "",
               "Remediation decisions by action and result (ok, failed, timeout, refused, dry_run); node is the "
               "alert's node label.", "node", "alerts/remediation/remediator.py", labels=("action", "result"),
               record=False),
    MetricSpec("fleetwatch_remediation_requests_total", "counter", "",
               "Webhook requests by result (accepted, unauthorized, bad_request, too_large, overloaded).", "process",
               "alerts/remediation/receiver.py", labels=("result",), record=False),
    MetricSpec("fleetwatch_remediation_request_duration_seconds_total", "counter", "seconds",
               "Time spent answering webhook requests (divide by the requests' rate for the mean).", "process",
               "alerts/remediation/receiver.py", record=False),
    MetricSpec("fleetwatch_remediation_audit_records_total", "counter", "",
               "Records appended (and fsynced) to the remediation audit log since start.", "process",
               "alerts/remediation/audit.py", record=False),
    MetricSpec("fleetwatch_remediation_queued_payloads", "gauge", "",
               "Accepted webhook payloads waiting for the remediation engine.", "process",
               "alerts/remediation/remediator.py", record=False),
    MetricSpec("fleetwatch_remediation_running_actions", "gauge", "",
               "Remediation actions running now (commands and webhooks, retries included).", "process",
               "alerts/remediation/remediator.py", record=False),
    MetricSpec("fleetwatch_remediation_enforcing", "gauge", "",
               "1 when remediation runs actions (enforce mode), 0 in dry-run mode.", "process",
               "alerts/remediation/live.py", record=False),
)

BY_NAME: dict[str, MetricSpec] = {m.name: m for m in METRICS}
BY_DCGM: dict[str, MetricSpec] = {m.dcgm: m for m in METRICS if m.dcgm}
BY_SMI: dict[str, MetricSpec] = {m.smi: m for m in METRICS if m.smi}


def spec(name: str) -> MetricSpec:
    """Look a metric up by native name; KeyError names the unknown metric."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"metric {name!r} is not in the catalogue") from None


def markdown_reference() -> str:
    """The README's metric reference table, generated from the catalogue."""
    rows = [
        "| native name | type | unit | labels | dcgm-exporter name | source |",
        "|---|---|---|---|---|---|",
    ]
    for m in METRICS:
        dcgm = f"`{m.dcgm}`" + ("" if m.dcgm_default else " (not exported)") if m.dcgm else ""
        extra = ", ".join(m.labels)
        labels = m.entity + (f" + {extra}" if extra else "")
        rows.append(f"| `{m.name}` | {m.type} | {m.unit or '-'} | {labels} | {dcgm} | {m.source} |")
    return "\n".join(rows) + "\n"


_START, _END = "<!-- metric-reference:start -->\n", "<!-- metric-reference:end -->"


def readme_with_reference(readme: str) -> str:
    """The README text with its metric reference section regenerated."""
    head, sep, rest = readme.partition(_START)
    _, sep2, tail = rest.partition(_END)
    if not sep or not sep2:
        raise ValueError("README has no metric-reference markers")
    return head + _START + markdown_reference() + _END + tail


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        sys.stdout.write(markdown_reference())
    elif "--update-readme" in sys.argv:
        from pathlib import Path

        path = Path(sys.argv[-1]) if sys.argv[-1].endswith(".md") else Path("README.md")
        path.write_text(readme_with_reference(path.read_text()))
