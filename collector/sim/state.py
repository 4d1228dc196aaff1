"""Per-GPU device state in NVML's own units: the contract between the simulator and the NVML device model."""

from __future__ import annotations

from dataclasses import dataclass, field

# nvmlNvLinkErrorCounter_t order: DL_REPLAY=0, DL_RECOVERY=1, DL_CRC_FLIT=2, DL_CRC_DATA=3
NVLINK_REPLAY, NVLINK_RECOVERY, NVLINK_CRC_FLIT, NVLINK_CRC_DATA = 0, 1, 2, 3


@dataclass
class GpuState:
    """Everything NVML can be asked about one GPU. None means the device does not support the field."""

    index: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    pci_bus_id: str = "00000000:18:00.0"
    serial: str = "1650124014249"
    architecture: int = 9                     # NVML_DEVICE_ARCH_HOPPER
    minor_number: int = 0
    # utilisation, %
    gpu_util: int = 0
    mem_util: int = 0
    enc_util: int | None = 0
    dec_util: int | None = 0
    # framebuffer, bytes
    fb_total: int = 85_520_809_984            # H100 80GB HBM3 as nvidia-smi reports 81559 MiB
    fb_reserved: int = 553_648_128
    fb_used: int = 0
    # thermals and power
    temp_gpu: int = 30                        # C
    temp_mem: int | None = 32                 # C; None: not supported (e.g. GDDR boards)
    # NVML_TEMPERATURE_THRESHOLD_SLOWDOWN / _SHUTDOWN of the H100 80GB HBM3 profile
    # (collector/data/nvml-profiles/h100-80gb-hbm3.json), so the fleet simulator and the device model agree
    temp_slowdown: int = 89
    temp_shutdown: int = 95
    power_mw: int = 70_000
    power_limit_mw: int = 700_000
    energy_mj: int = 0                        # since driver load
    sm_clock_mhz: int = 345
    mem_clock_mhz: int = 2619
    max_sm_clock_mhz: int = 1980
    pstate: int = 0
    fan_pct: int | None = None                # SXM boards have no fan: NOT_SUPPORTED
    clock_event_reasons: int = 0x1            # gpu_idle
    # memory errors
    ecc_enabled: bool = True
    ecc_sbe_volatile: int = 0
    ecc_dbe_volatile: int = 0
    ecc_sbe_aggregate: int = 0
    ecc_dbe_aggregate: int = 0
    retired_sbe: int | None = None            # None: page retirement not supported (Ampere+ remaps rows)
    retired_dbe: int | None = None
    retired_pending: bool | None = None
    remap_correctable: int | None = 0         # None: row remapping not supported (pre-Ampere)
    remap_uncorrectable: int | None = 0
    remap_pending: bool = False
    remap_failure: bool = False
    # PCIe
    pcie_tx_kbps: int = 0                     # KB/s, as nvmlDeviceGetPcieThroughput
    pcie_rx_kbps: int = 0
    pcie_replays: int = 0
    # NVLink: per link [replay, recovery, crc_flit, crc_data]
    nvlink_errors: list[list[int]] = field(default_factory=lambda: [[0, 0, 0, 0] for _ in range(18)])
    nvlink_active: list[bool] = field(default_factory=lambda: [True] * 18)
    nvlink_bandwidth: int = 0                 # cumulative counter over all links
    # Hopper GPM ratios 0..1; None: GPM not supported on this device
    gpm_sm: float | None = 0.0
    gpm_tensor: float | None = 0.0
    gpm_dram: float | None = 0.0
    gpm_graphics: float | None = 0.0
    # health
    lost: bool = False                        # every query raises NVML_ERROR_GPU_IS_LOST
    pending_xids: list[int] = field(default_factory=list)  # drained by the event API
