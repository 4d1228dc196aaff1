"""The NVML device model: real pynvml types, units and errors over GpuState, and profiles true to captures."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynvml
import pytest

from collector.sim.nvml_model import (
    PROFILE_NAMES,
    NvmlDeviceModel,
    load_profile,
    profile_path,
    state_from_profile,
)
from collector.sim.state import GpuState

FIXTURES = Path(__file__).parent.parent / "fixtures" / "nvml"
MIB = 1024 * 1024


def _model(*profiles: str, **kwargs: Any) -> NvmlDeviceModel:
    states = [state_from_profile(p, i) for i, p in enumerate(profiles)]
    m = NvmlDeviceModel(states, **kwargs)
    m.nvmlInit()
    return m


def _raises(code: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> pynvml.NVMLError:
    with pytest.raises(pynvml.NVMLError) as info:
        fn(*args, **kwargs)
    assert info.value.value == code, f"{info.value} ({info.value.value}) != {code}"
    assert type(info.value) is pynvml.nvmlExceptionClass(code)
    return info.value


# --- profiles against the real captures ------------------------------------------------------------------

def _num(text: str) -> float:
    return float(text.split()[0])


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_profile_matches_its_nvidia_smi_capture(name: str) -> None:
    p = load_profile(name)
    q = json.loads((FIXTURES / f"{name}.smi-q.json").read_text())["query"]
    assert p["name"] == q["Product Name"]
    assert p["architecture_name"] == q["Product Architecture"]
    assert p["driver_version"] == q["Driver Version"]
    assert int(p["pci_device_id"], 16) == int(q["PCI/Device Id"], 16)
    assert int(p["pci_subsystem_id"], 16) == int(q["PCI/Sub System Id"], 16)
    assert p["memory_total_mib"] == _num(q["FB Memory Usage/Total"])
    assert p["memory_reserved_mib"] == _num(q["FB Memory Usage/Reserved"])
    assert p["power_limit_w"] == _num(q["GPU Power Readings/Current Power Limit"])
    assert p["power_min_limit_w"] == _num(q["GPU Power Readings/Min Power Limit"])
    assert p["power_max_limit_w"] == _num(q["GPU Power Readings/Max Power Limit"])
    assert p["max_clocks_mhz"]["sm"] == _num(q["Max Clocks/SM"])
    assert p["max_clocks_mhz"]["graphics"] == _num(q["Max Clocks/Graphics"])
    assert p["max_clocks_mhz"]["memory"] == _num(q["Max Clocks/Memory"])
    # nvidia-smi 590+ prints thresholds as offsets from T.Limit, itself printed as a margin.
    tlimit = _num(q["Temperature/GPU Current Temp"]) + _num(q["Temperature/GPU T.Limit Temp"])
    assert p["temperature"]["tlimit_c"] == tlimit
    assert p["temperature"]["slowdown_c"] == tlimit - _num(q["Temperature/GPU Slowdown T.Limit Temp"])
    assert p["temperature"]["shutdown_c"] == tlimit - _num(q["Temperature/GPU Shutdown T.Limit Temp"])
    feats = p["features"]
    assert feats["fan"] == (q["Fan Speed"] != "N/A")
    assert feats["memory_temperature"] == (q["Temperature/Memory Current Temp"] != "N/A")
    assert feats["retired_pages"] == (q["Retired Pages/Single Bit ECC"] != "N/A")
    assert feats["remapped_rows"] == (q["Remapped Rows/Correctable Error"] != "N/A")
    assert feats["ecc"] == (q["ECC Mode/Current"] == "Enabled")
    assert feats["nvlink_links"] == sum(1 for line in q["nvlink -s"] if line.strip().startswith("Link "))
    assert feats["gpm"] == (p["architecture"] >= pynvml.NVML_DEVICE_ARCH_HOPPER)
    init = p["initial"]
    assert init["gpu_util_pct"] == _num(q["Utilization/GPU"])
    assert init["mem_util_pct"] == _num(q["Utilization/Memory"])
    assert init["temp_gpu_c"] == _num(q["Temperature/GPU Current Temp"])
    assert init["power_w"] == _num(q["GPU Power Readings/Instantaneous Power Draw"])
    assert init["sm_clock_mhz"] == _num(q["Clocks/SM"])
    assert init["mem_clock_mhz"] == _num(q["Clocks/Memory"])
    assert init["pstate"] == int(q["Performance State"].lstrip("P"))
    assert init["pcie_tx_kbps"] == _num(q["PCI/Tx Throughput"])
    assert init["pcie_rx_kbps"] == _num(q["PCI/Rx Throughput"])
    assert init["pcie_replays"] == int(q["PCI/Replays Since Reset"])
    idle_bit = int(str(init["clock_event_reasons"]), 0) & pynvml.nvmlClocksEventReasonGpuIdle
    assert bool(idle_bit) == (q["Clocks Event Reasons"]["Idle"] == "Active")


def test_profile_loading_forms(tmp_path: Path) -> None:
    p = load_profile("h200")
    assert load_profile(profile_path("h200")) == p
    assert load_profile(p) == p
    copy = tmp_path / "x.json"
    copy.write_text(json.dumps(p))
    assert load_profile(str(copy)) == p
    with pytest.raises(FileNotFoundError, match="packaged: h100-80gb-hbm3, h200, l40s"):
        load_profile("a100")


def test_state_from_profile_h100() -> None:
    s = state_from_profile("h100-80gb-hbm3", 3, seed="node-7")
    assert s.index == 3 and s.minor_number == 3
    assert s.name == "NVIDIA H100 80GB HBM3"
    assert s.pci_bus_id == "00000000:5D:00.0"
    assert s.uuid.startswith("GPU-") and len(s.uuid) == 40
    assert len(s.serial) == 13 and s.serial.isdigit()
    assert s.fb_total == 81559 * MIB and s.fb_reserved == 479 * MIB
    assert (s.power_mw, s.power_limit_mw) == (69_620, 700_000)
    assert (s.temp_gpu, s.temp_mem, s.temp_slowdown, s.temp_shutdown) == (41, 48, 89, 95)
    assert (s.sm_clock_mhz, s.mem_clock_mhz, s.max_sm_clock_mhz) == (345, 2619, 1980)
    assert s.fan_pct is None and s.retired_sbe is None and s.retired_pending is None
    assert s.remap_correctable == 0 and s.gpm_sm == 0.0
    assert len(s.nvlink_errors) == len(s.nvlink_active) == 18
    assert s.clock_event_reasons == 0x1 and s.pcie_replays == 9


def test_state_from_profile_l40s_and_uuids() -> None:
    s = state_from_profile("l40s", 0)
    assert s.architecture == pynvml.NVML_DEVICE_ARCH_ADA
    assert s.temp_mem is None and s.gpm_sm is None and s.gpm_tensor is None
    assert s.nvlink_active == [] and s.nvlink_errors == []
    uuids = {state_from_profile("h100-80gb-hbm3", i, seed=n).uuid for i in range(8) for n in ("a", "b")}
    assert len(uuids) == 16
    assert state_from_profile("h200", 1, seed="a").uuid == state_from_profile("h200", 1, seed="a").uuid
    assert state_from_profile("h200", 9).pci_bus_id == "00000000:E1:00.0"
    assert state_from_profile("h200", 40).pci_bus_id == "00000001:E0:00.0"
    assert state_from_profile("h200", 0, uuid="GPU-x", pci_bus_id="00000000:01:00.0").uuid == "GPU-x"


# --- return types and units ------------------------------------------------------------------------------

def test_identity_calls() -> None:
    m = _model("h100-80gb-hbm3", "h100-80gb-hbm3")
    m.driver_version = "550.90.07"
    assert m.nvmlSystemGetDriverVersion() == "550.90.07"
    assert m.nvmlDeviceGetCount() == 2
    h = m.nvmlDeviceGetHandleByIndex(1)
    assert isinstance(h, pynvml.c_nvmlDevice_t)
    assert m.nvmlDeviceGetHandleByIndex(1) is h
    s = m.states[1]
    assert m.nvmlDeviceGetName(h) == "NVIDIA H100 80GB HBM3"
    assert m.nvmlDeviceGetUUID(h) == s.uuid
    assert m.nvmlDeviceGetSerial(h) == s.serial
    assert m.nvmlDeviceGetIndex(h) == 1 and m.nvmlDeviceGetMinorNumber(h) == 1
    assert m.nvmlDeviceGetArchitecture(h) == pynvml.NVML_DEVICE_ARCH_HOPPER
    pci = m.nvmlDeviceGetPciInfo(h)
    assert isinstance(pci, pynvml.nvmlPciInfo_t)
    assert pci.busId == "00000000:2A:00.0" and pci.busIdLegacy == "0000:2A:00.0"
    assert (pci.domain, pci.bus, pci.device) == (0, 0x2A, 0)
    assert pci.pciDeviceId == 0x233010DE and pci.pciSubSystemId == 0x16C110DE
    assert m.nvmlDeviceGetHandleByUUID(s.uuid) is h
    assert m.nvmlDeviceGetHandleByPciBusId("0000:2a:00.0") is h
    assert m.nvmlDeviceGetHandleByPciBusId(b"00000000:2A:00.0") is h
    _raises(pynvml.NVML_ERROR_NOT_FOUND, m.nvmlDeviceGetHandleByUUID, "GPU-nope")
    _raises(pynvml.NVML_ERROR_NOT_FOUND, m.nvmlDeviceGetHandleByPciBusId, "0000:99:00.0")
    assert m.nvmlDeviceGetVirtualizationMode(h) == pynvml.NVML_GPU_VIRTUALIZATION_MODE_NONE


def test_readings_have_pynvml_types_and_nvml_units() -> None:
    m = _model("h100-80gb-hbm3")
    s = m.states[0]
    s.gpu_util, s.mem_util, s.enc_util, s.dec_util = 87, 41, 3, 4
    s.fb_used, s.power_mw, s.energy_mj = 10 * 2**30, 612_345, 9_876_543
    s.sm_clock_mhz, s.pstate, s.clock_event_reasons = 1755, 2, 0x44
    s.ecc_sbe_volatile, s.ecc_dbe_volatile, s.ecc_sbe_aggregate, s.ecc_dbe_aggregate = 1, 2, 3, 4
    s.remap_correctable, s.remap_uncorrectable, s.remap_pending, s.remap_failure = 5, 6, True, False
    s.pcie_tx_kbps, s.pcie_rx_kbps, s.pcie_replays = 1000, 2000, 12
    h = m.nvmlDeviceGetHandleByIndex(0)
    u = m.nvmlDeviceGetUtilizationRates(h)
    assert isinstance(u, pynvml.c_nvmlUtilization_t) and (u.gpu, u.memory) == (87, 41)
    assert m.nvmlDeviceGetEncoderUtilization(h) == [3, 167_000]
    assert m.nvmlDeviceGetDecoderUtilization(h) == [4, 167_000]
    v2 = m.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2)
    assert isinstance(v2, pynvml.c_nvmlMemory_v2_t) and v2.version == pynvml.nvmlMemory_v2
    assert (v2.total, v2.reserved, v2.used) == (s.fb_total, s.fb_reserved, s.fb_used)
    assert v2.free == s.fb_total - s.fb_reserved - s.fb_used
    v1 = m.nvmlDeviceGetMemoryInfo(h)
    assert isinstance(v1, pynvml.c_nvmlMemory_t)
    assert v1.used == s.fb_used + s.fb_reserved and v1.free == v2.free     # v1 counts reserved as used
    _raises(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH, m.nvmlDeviceGetMemoryInfo, h, version=7)
    assert m.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU) == 41
    assert m.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN) == 89
    assert m.nvmlDeviceGetTemperatureThreshold(h, pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN) == 95
    assert m.nvmlDeviceGetPowerUsage(h) == 612_345
    assert m.nvmlDeviceGetEnforcedPowerLimit(h) == m.nvmlDeviceGetPowerManagementLimit(h) == 700_000
    assert m.nvmlDeviceGetTotalEnergyConsumption(h) == 9_876_543
    assert m.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM) == 1755
    assert m.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM) == 2619
    assert m.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM) == 1980
    assert m.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM) == 2619
    assert m.nvmlDeviceGetPerformanceState(h) == 2
    assert m.nvmlDeviceGetCurrentClocksEventReasons(h) == 0x44
    assert m.nvmlDeviceGetSupportedClocksEventReasons(h) == 0x1FF
    assert m.nvmlDeviceGetEccMode(h) == [pynvml.NVML_FEATURE_ENABLED] * 2
    ecc = m.nvmlDeviceGetTotalEccErrors
    corr, unc = pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED
    vol, agg = pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC
    assert (ecc(h, corr, vol), ecc(h, unc, vol), ecc(h, corr, agg), ecc(h, unc, agg)) == (1, 2, 3, 4)
    rows = m.nvmlDeviceGetRemappedRows(h)
    assert rows == (5, 6, 1, 0) and all(type(x) is int for x in rows)
    assert m.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_TX_BYTES) == 1000
    assert m.nvmlDeviceGetPcieThroughput(h, pynvml.NVML_PCIE_UTIL_RX_BYTES) == 2000
    assert m.nvmlDeviceGetPcieReplayCounter(h) == 12


def test_retired_pages_on_a_pre_ampere_state() -> None:
    s = GpuState(index=0, uuid="GPU-v100", name="Tesla V100-SXM2-32GB", architecture=5, retired_sbe=2,
                 retired_dbe=1, retired_pending=True, remap_correctable=None, remap_uncorrectable=None)
    m = NvmlDeviceModel([s])
    m.nvmlInit()
    h = m.nvmlDeviceGetHandleByIndex(0)
    sbe = m.nvmlDeviceGetRetiredPages(h, pynvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS)
    dbe = m.nvmlDeviceGetRetiredPages(h, pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
    assert len(sbe) == 2 and len(dbe) == 1 and all(isinstance(a, int) for a in sbe + dbe)
    assert m.nvmlDeviceGetRetiredPagesPendingStatus(h) == 1
    _raises(pynvml.NVML_ERROR_NOT_SUPPORTED, m.nvmlDeviceGetRemappedRows, h)
    # Unknown product: PCI ids 0, max memory clock falls back to the current one.
    assert m.nvmlDeviceGetPciInfo(h).pciDeviceId == 0
    assert m.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_MEM) == s.mem_clock_mhz


def test_field_values() -> None:
    m = _model("h100-80gb-hbm3", "l40s")
    m.states[0].nvlink_bandwidth = 1001
    h0, h1 = m.nvmlDeviceGetHandleByIndex(0), m.nvmlDeviceGetHandleByIndex(1)
    tx, rx = pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, pynvml.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
    v = m.nvmlDeviceGetFieldValues(h0, [pynvml.NVML_FI_DEV_MEMORY_TEMP, (tx, 0xFFFFFFFF), (rx, 0xFFFFFFFF),
                                        pynvml.NVML_FI_DEV_NVLINK_LINK_COUNT, 999, 5])
    assert isinstance(v[0], pynvml.c_nvmlFieldValue_t)
    assert v[0].nvmlReturn == pynvml.NVML_SUCCESS and v[0].valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
    assert v[0].value.uiVal == 48 and v[0].timestamp > 0
    assert v[1].valueType == pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG and v[1].scopeId == 0xFFFFFFFF
    assert v[1].value.ullVal + v[2].value.ullVal == 1001
    assert v[3].value.uiVal == 18
    assert v[4].nvmlReturn == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert v[5].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    per_link = m.nvmlDeviceGetFieldValues(h0, [(tx, link) for link in range(18)])
    assert sum(x.value.ullVal for x in per_link) == v[1].value.ullVal
    assert m.nvmlDeviceGetFieldValues(h0, [(tx, 18)])[0].nvmlReturn == pynvml.NVML_ERROR_INVALID_ARGUMENT
    # L40S: no HBM temperature sensor, no NVLink.
    w = m.nvmlDeviceGetFieldValues(h1, [pynvml.NVML_FI_DEV_MEMORY_TEMP, (tx, 0xFFFFFFFF)])
    assert [x.nvmlReturn for x in w] == [pynvml.NVML_ERROR_NOT_SUPPORTED] * 2


def test_nvlink() -> None:
    m = _model("h100-80gb-hbm3", "l40s")
    s = m.states[0]
    s.nvlink_errors[4] = [1, 2, 3, 4]
    s.nvlink_active[5] = False
    h0, h1 = m.nvmlDeviceGetHandleByIndex(0), m.nvmlDeviceGetHandleByIndex(1)
    assert m.nvmlDeviceGetNvLinkState(h0, 4) == pynvml.NVML_FEATURE_ENABLED
    assert m.nvmlDeviceGetNvLinkState(h0, 5) == pynvml.NVML_FEATURE_DISABLED
    counters = [m.nvmlDeviceGetNvLinkErrorCounter(h0, 4, c) for c in (
        pynvml.NVML_NVLINK_ERROR_DL_REPLAY, pynvml.NVML_NVLINK_ERROR_DL_RECOVERY,
        pynvml.NVML_NVLINK_ERROR_DL_CRC_FLIT, pynvml.NVML_NVLINK_ERROR_DL_CRC_DATA)]
    assert counters == [1, 2, 3, 4]
    _raises(pynvml.NVML_ERROR_NOT_SUPPORTED, m.nvmlDeviceGetNvLinkErrorCounter, h0, 4,
            pynvml.NVML_NVLINK_ERROR_DL_ECC_DATA)
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, m.nvmlDeviceGetNvLinkState, h0, 18)
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, m.nvmlDeviceGetNvLinkErrorCounter, h0, 0, 9)
    _raises(pynvml.NVML_ERROR_NOT_SUPPORTED, m.nvmlDeviceGetNvLinkState, h1, 0)


# --- errors ----------------------------------------------------------------------------------------------

DEVICE_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("nvmlDeviceGetName", ()), ("nvmlDeviceGetUUID", ()), ("nvmlDeviceGetPciInfo", ()),
    ("nvmlDeviceGetUtilizationRates", ()), ("nvmlDeviceGetMemoryInfo", ()),
    ("nvmlDeviceGetTemperature", (0,)), ("nvmlDeviceGetPowerUsage", ()),
    ("nvmlDeviceGetTotalEnergyConsumption", ()), ("nvmlDeviceGetClockInfo", (1,)),
    ("nvmlDeviceGetCurrentClocksEventReasons", ()), ("nvmlDeviceGetTotalEccErrors", (0, 0)),
    ("nvmlDeviceGetRemappedRows", ()), ("nvmlDeviceGetPcieThroughput", (0,)),
    ("nvmlDeviceGetNvLinkState", (0,)), ("nvmlDeviceGetNvLinkErrorCounter", (0, 0)),
    ("nvmlDeviceGetFieldValues", ([82],)), ("nvmlGpmQueryDeviceSupport", ()),
    ("nvmlDeviceGetEncoderUtilization", ()), ("nvmlDeviceGetPerformanceState", ()),
]


@pytest.mark.parametrize(("func", "args"), DEVICE_CALLS, ids=[c[0] for c in DEVICE_CALLS])
def test_every_device_call_fails_lost_and_uninitialised(func: str, args: tuple[Any, ...]) -> None:
    m = _model("h100-80gb-hbm3", "h100-80gb-hbm3")
    h0, h1 = m.nvmlDeviceGetHandleByIndex(0), m.nvmlDeviceGetHandleByIndex(1)
    m.states[1].lost = True
    getattr(m, func)(h0, *args)                                   # the healthy GPU still answers
    _raises(pynvml.NVML_ERROR_GPU_IS_LOST, getattr(m, func), h1, *args)
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, getattr(m, func), object(), *args)
    m.nvmlShutdown()
    _raises(pynvml.NVML_ERROR_UNINITIALIZED, getattr(m, func), h0, *args)


def test_lost_gpu_handle_by_index_and_invalid_index() -> None:
    m = _model("h100-80gb-hbm3", "h100-80gb-hbm3")
    m.states[0].lost = True
    _raises(pynvml.NVML_ERROR_GPU_IS_LOST, m.nvmlDeviceGetHandleByIndex, 0)
    _raises(pynvml.NVML_ERROR_GPU_IS_LOST, m.nvmlDeviceGetHandleByUUID, m.states[0].uuid)
    assert m.nvmlDeviceGetHandleByIndex(1) is not None
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, m.nvmlDeviceGetHandleByIndex, 2)
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, m.nvmlDeviceGetHandleByIndex, -1)


def test_not_supported_fields() -> None:
    m = _model("h100-80gb-hbm3", "l40s")
    h0, h1 = m.nvmlDeviceGetHandleByIndex(0), m.nvmlDeviceGetHandleByIndex(1)
    ns = pynvml.NVML_ERROR_NOT_SUPPORTED
    _raises(ns, m.nvmlDeviceGetFanSpeed, h0)
    _raises(ns, m.nvmlDeviceGetRetiredPages, h0, pynvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
    _raises(ns, m.nvmlDeviceGetRetiredPagesPendingStatus, h0)
    assert m.nvmlGpmQueryDeviceSupport(h1).isSupportedDevice == 0
    assert m.nvmlGpmQueryDeviceSupport(h0).isSupportedDevice == 1
    sample = m.nvmlGpmSampleAlloc()
    _raises(ns, m.nvmlGpmSampleGet, h1, sample)
    m.states[0].enc_util = None
    _raises(ns, m.nvmlDeviceGetEncoderUtilization, h0)
    m.states[0].ecc_enabled = False
    _raises(ns, m.nvmlDeviceGetTotalEccErrors, h0, 0, 0)
    assert m.nvmlDeviceGetEccMode(h0) == [pynvml.NVML_FEATURE_DISABLED] * 2
    _raises(ns, m.nvmlDeviceGetClockInfo, h0, pynvml.NVML_CLOCK_VIDEO)
    _raises(ns, m.nvmlDeviceGetTemperatureThreshold, h0, pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX)


def test_invalid_enum_arguments() -> None:
    m = _model("h100-80gb-hbm3")
    h = m.nvmlDeviceGetHandleByIndex(0)
    inv = pynvml.NVML_ERROR_INVALID_ARGUMENT
    _raises(inv, m.nvmlDeviceGetTemperature, h, 7)
    _raises(inv, m.nvmlDeviceGetClockInfo, h, 42)
    _raises(inv, m.nvmlDeviceGetMaxClockInfo, h, 42)
    _raises(inv, m.nvmlDeviceGetPcieThroughput, h, 5)
    _raises(inv, m.nvmlDeviceGetTotalEccErrors, h, 5, 0)
    _raises(inv, m.nvmlDeviceGetTotalEccErrors, h, 0, 5)
    _raises(inv, m.nvmlDeviceGetTemperatureThreshold, h, 99)


def test_init_shutdown_and_fail_init() -> None:
    m = NvmlDeviceModel([state_from_profile("h200", 0)])
    _raises(pynvml.NVML_ERROR_UNINITIALIZED, m.nvmlDeviceGetCount)
    _raises(pynvml.NVML_ERROR_UNINITIALIZED, m.nvmlShutdown)
    m.fail_init(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    err = _raises(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, m.nvmlInit)
    assert isinstance(err, pynvml.NVMLError_LibraryNotFound)
    m.fail_init(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    _raises(pynvml.NVML_ERROR_DRIVER_NOT_LOADED, m.nvmlInitWithFlags, 0)
    m.fail_init(None)
    m.nvmlInit()
    m.nvmlInit()
    m.nvmlShutdown()
    assert m.nvmlDeviceGetCount() == 1                 # init/shutdown are reference counted
    m.nvmlShutdown()
    _raises(pynvml.NVML_ERROR_UNINITIALIZED, m.nvmlDeviceGetCount)


def test_delegation_to_the_real_module() -> None:
    m = NvmlDeviceModel([])
    assert m.NVML_ERROR_GPU_IS_LOST == pynvml.NVML_ERROR_GPU_IS_LOST
    assert m.NVMLError is pynvml.NVMLError and m.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost
    assert m.c_nvmlGpmMetricsGet_t is pynvml.c_nvmlGpmMetricsGet_t
    assert m.nvmlExceptionClass(15) is pynvml.NVMLError_GpuIsLost
    assert m.nvmlEventTypeXidCriticalError == 8
    _raises(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, m.nvmlDeviceGetBAR1MemoryInfo, None)
    assert m.calls["nvmlDeviceGetBAR1MemoryInfo"] == 1
    with pytest.raises(AttributeError):
        _ = m.no_such_thing
    with pytest.raises(AttributeError):
        _ = m._private


def test_refresh_runs_on_count_and_handle() -> None:
    ticks: list[int] = []
    m = NvmlDeviceModel([state_from_profile("h200", 0)], refresh=lambda: ticks.append(1))
    m.nvmlInit()
    m.nvmlDeviceGetCount()
    m.nvmlDeviceGetHandleByIndex(0)
    assert len(ticks) == 2


def test_inject_error_by_function_index_and_times() -> None:
    m = _model("h200", "h200")
    h0, h1 = m.nvmlDeviceGetHandleByIndex(0), m.nvmlDeviceGetHandleByIndex(1)
    m.inject_error("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_UNKNOWN, index=1, times=2)
    assert m.nvmlDeviceGetPowerUsage(h0) == 77_880
    _raises(pynvml.NVML_ERROR_UNKNOWN, m.nvmlDeviceGetPowerUsage, h1)
    _raises(pynvml.NVML_ERROR_UNKNOWN, m.nvmlDeviceGetPowerUsage, h1)
    assert m.nvmlDeviceGetPowerUsage(h1) == 77_880              # spent after two
    m.inject_error("nvmlDeviceGetCount", pynvml.NVML_ERROR_IRQ_ISSUE)
    _raises(pynvml.NVML_ERROR_IRQ_ISSUE, m.nvmlDeviceGetCount)
    _raises(pynvml.NVML_ERROR_IRQ_ISSUE, m.nvmlDeviceGetCount)
    m.clear_errors()
    assert m.nvmlDeviceGetCount() == 2
    with pytest.raises(ValueError, match="does not implement"):
        m.inject_error("nvmlDeviceGetPowerUsgae", 1)


def test_hang_blocks_calls_and_can_be_released() -> None:
    m = _model("h200")
    h = m.nvmlDeviceGetHandleByIndex(0)
    m.set_hang(0.15)
    t0 = time.monotonic()
    m.nvmlDeviceGetPowerUsage(h)
    assert time.monotonic() - t0 >= 0.15
    m.set_hang(30.0)
    threading.Timer(0.1, m.set_hang, args=(0,)).start()
    t0 = time.monotonic()
    m.nvmlDeviceGetPowerUsage(h)
    assert 0.05 < time.monotonic() - t0 < 5.0                 # released early by set_hang(0)


# --- events ----------------------------------------------------------------------------------------------

def test_event_wait_times_out_after_really_waiting() -> None:
    m = _model("h200")
    es = m.nvmlEventSetCreate()
    m.nvmlDeviceRegisterEvents(m.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError, es)
    t0 = time.monotonic()
    _raises(pynvml.NVML_ERROR_TIMEOUT, m.nvmlEventSetWait_v2, es, 120)
    assert time.monotonic() - t0 >= 0.12


def test_event_delivers_pending_xids_in_order() -> None:
    m = _model("h200", "h200")
    es = m.nvmlEventSetCreate()
    h1 = m.nvmlDeviceGetHandleByIndex(1)
    m.nvmlDeviceRegisterEvents(h1, pynvml.nvmlEventTypeXidCriticalError, es)
    m.states[1].pending_xids.extend([48, 94])
    m.states[0].pending_xids.append(13)                       # not registered: stays pending
    first = m.nvmlEventSetWait(es, 1000)
    assert isinstance(first, pynvml.c_nvmlEventData_t)
    assert first.eventType == pynvml.nvmlEventTypeXidCriticalError and first.eventData == 48
    assert m._index(first.device) == 1
    assert m.nvmlEventSetWait_v2(es, 1000).eventData == 94
    assert m.states[1].pending_xids == [] and m.states[0].pending_xids == [13]
    m.nvmlEventSetFree(es)
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, m.nvmlEventSetWait_v2, es, 10)


def test_notify_wakes_a_waiter_promptly() -> None:
    m = _model("h200")
    es = m.nvmlEventSetCreate()
    m.nvmlDeviceRegisterEvents(m.nvmlDeviceGetHandleByIndex(0), pynvml.nvmlEventTypeXidCriticalError, es)

    def later() -> None:
        """Deliver an XID the way the simulator does."""
        m.states[0].pending_xids.append(79)
        m.notify()

    threading.Timer(0.05, later).start()
    t0 = time.monotonic()
    assert m.nvmlEventSetWait_v2(es, 5000).eventData == 79
    assert time.monotonic() - t0 < 1.0


def test_event_registration_support() -> None:
    m = _model("h200", events_supported=False)
    h = m.nvmlDeviceGetHandleByIndex(0)
    es = m.nvmlEventSetCreate()
    assert m.nvmlDeviceGetSupportedEventTypes(h) == 0
    _raises(pynvml.NVML_ERROR_NOT_SUPPORTED, m.nvmlDeviceRegisterEvents, h,
            pynvml.nvmlEventTypeXidCriticalError, es)
    m2 = _model("h200")
    es2 = m2.nvmlEventSetCreate()
    h2 = m2.nvmlDeviceGetHandleByIndex(0)
    assert m2.nvmlDeviceGetSupportedEventTypes(h2) & pynvml.nvmlEventTypeXidCriticalError
    _raises(pynvml.NVML_ERROR_NOT_SUPPORTED, m2.nvmlDeviceRegisterEvents, h2,
            pynvml.nvmlEventTypeGpuUnavailableError, es2)
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, m2.nvmlDeviceRegisterEvents, h2,
            pynvml.nvmlEventTypeXidCriticalError, object())


# --- GPM -------------------------------------------------------------------------------------------------

def _metrics_get(m: NvmlDeviceModel, s1: Any, s2: Any, ids: list[int]) -> Any:
    get = pynvml.c_nvmlGpmMetricsGet_t()
    get.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    get.numMetrics = len(ids)
    get.sample1, get.sample2 = s1, s2
    for i, metric_id in enumerate(ids):
        get.metrics[i].metricId = metric_id
    return get


def test_gpm_metrics_between_two_samples() -> None:
    m = _model("h100-80gb-hbm3")
    h = m.nvmlDeviceGetHandleByIndex(0)
    s = m.states[0]
    a, b = m.nvmlGpmSampleAlloc(), m.nvmlGpmSampleAlloc()
    ids = [pynvml.NVML_GPM_METRIC_GRAPHICS_UTIL, pynvml.NVML_GPM_METRIC_SM_UTIL,
           pynvml.NVML_GPM_METRIC_ANY_TENSOR_UTIL, pynvml.NVML_GPM_METRIC_DRAM_BW_UTIL,
           pynvml.NVML_GPM_METRIC_FP64_UTIL]
    m.nvmlGpmSampleGet(h, a)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        m.nvmlGpmMetricsGet(_metrics_get(m, a, a, ids))          # one sample is not an interval
    s.gpm_graphics, s.gpm_sm, s.gpm_tensor, s.gpm_dram = 0.9, 0.75, 0.5, 0.25
    assert m.nvmlGpmSampleGet(h, b) is b
    got = m.nvmlGpmMetricsGet(_metrics_get(m, a, b, ids))
    assert [got.metrics[i].value for i in range(4)] == pytest.approx([90.0, 75.0, 50.0, 25.0])
    assert [got.metrics[i].nvmlReturn for i in range(4)] == [pynvml.NVML_SUCCESS] * 4
    assert got.metrics[4].nvmlReturn == pynvml.NVML_ERROR_NOT_SUPPORTED
    bad = _metrics_get(m, a, b, ids)
    bad.version = 9
    _raises(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH, m.nvmlGpmMetricsGet, bad)
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, m.nvmlGpmMetricsGet, _metrics_get(m, b, a, ids))
    m.nvmlGpmSampleFree(a)
    _raises(pynvml.NVML_ERROR_INVALID_ARGUMENT, m.nvmlGpmSampleGet, h, a)
    s.lost = True
    _raises(pynvml.NVML_ERROR_GPU_IS_LOST, m.nvmlGpmSampleGet, h, b)
