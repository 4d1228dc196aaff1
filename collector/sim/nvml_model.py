"""A faithful fake of the `pynvml` module that reads simulated GpuState: same names, types, units, errors.

`NvmlDeviceModel(states)` is a drop-in for `import pynvml` wherever code takes the NVML module as a
parameter: calls return exactly what nvidia-ml-py returns (ctypes structs such as c_nvmlUtilization_t and
c_nvmlMemory_v2_t, lists, tuples, ints in NVML's units: mW, mJ, MHz, KB/s, bytes, %), and fail with the
real `pynvml.NVMLError_*` classes. Constants, struct classes and error classes come from the real module
through `__getattr__`, so `model.NVML_ERROR_GPU_IS_LOST is pynvml.NVML_ERROR_GPU_IS_LOST`.

Modelled behaviour (from NVML's API reference, https://docs.nvidia.com/deploy/nvml-api/):
- every call before nvmlInit (or after the last nvmlShutdown) raises NVML_ERROR_UNINITIALIZED;
- a GpuState with `lost` set raises NVML_ERROR_GPU_IS_LOST on every call with its handle and from
  nvmlDeviceGetHandleByIndex;
- a GpuState field that is None raises NVML_ERROR_NOT_SUPPORTED (fan on SXM boards, memory temperature
  on GDDR boards, retired pages on Ampere and later, remapped rows before Ampere, GPM before Hopper, where
  nvmlGpmQueryDeviceSupport reports isSupportedDevice=0 rather than failing);
- an index past the device count, an unknown handle or an unknown enum value raises
  NVML_ERROR_INVALID_ARGUMENT;
- nvmlEventSetWait_v2 really waits (on a condition variable, re-checking GpuState.pending_xids at least
  every 50 ms, at once after `notify()`) and raises NVML_ERROR_TIMEOUT when nothing arrived.
Functions pynvml defines but the model does not implement raise NVML_ERROR_FUNCTION_NOT_FOUND, as calling
a symbol missing from an older libnvidia-ml does.

Test hooks: `fail_init(code)`, `set_hang(seconds)` (every call blocks that long, as a wedged driver does),
`inject_error(func_name, code, index=None, times=None)`, and `calls`, a Counter of calls by function name.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import inspect
import json
import threading
import time
import uuid as uuid_mod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pynvml as _real

from collector.clock import Clock, WallClock
from collector.sim.state import GpuState

MIB = 1024 * 1024
UINT_MAX = 0xFFFFFFFF
# Sampling period nvmlDeviceGet{En,De}coderUtilization report on Hopper, in µs.
CODEC_SAMPLING_PERIOD_US = 167_000
# Event types the model accepts in nvmlDeviceRegisterEvents; only XIDs are ever generated.
SUPPORTED_EVENT_TYPES = (_real.nvmlEventTypeSingleBitEccError | _real.nvmlEventTypeDoubleBitEccError
                         | _real.nvmlEventTypePState | _real.nvmlEventTypeXidCriticalError
                         | _real.nvmlEventTypeClock)
# Bus numbers of the eight GPUs of a DGX H100 (nvidia-smi: 00000000:18:00.0 … 00000000:DB:00.0).
HGX_BUSES: tuple[int, ...] = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
PROFILE_DIR = "nvml-profiles"
PROFILE_NAMES: tuple[str, ...] = ("h100-80gb-hbm3", "h200", "l40s")
# Pure helpers of the real module that touch no library and are safe to hand out as they are.
_PURE_HELPERS = frozenset({"nvmlExceptionClass", "nvmlStructToFriendlyObject", "nvmlFriendlyObjectToStruct"})
_POLL_S = 0.05


def _err(code: int) -> _real.NVMLError:
    return _real.NVMLError(code)


def _pci_key(bus_id: str) -> tuple[int, int, int, int] | None:
    """(domain, bus, device, function) of "DDDD[DDDD]:BB:DD.F", or None when it does not parse."""
    try:
        domain, bus, rest = bus_id.strip().split(":")
        device, _, function = rest.partition(".")
        return int(domain, 16), int(bus, 16), int(device, 16), int(function or "0")
    except ValueError:
        return None


# --- device profiles -----------------------------------------------------------------------------------

def profile_path(name: str) -> Path:
    """The packaged profile file for a model name such as "h100-80gb-hbm3"."""
    return Path(str(resources.files("collector").joinpath("data", PROFILE_DIR, f"{name}.json")))


def load_profile(profile: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A profile as a dict: given as a mapping, a JSON file path, or a packaged profile name."""
    if isinstance(profile, Mapping):
        return dict(profile)
    path = Path(profile)
    if not path.is_file():
        if isinstance(profile, str) and profile in PROFILE_NAMES:
            path = profile_path(profile)
        else:
            packaged = ", ".join(PROFILE_NAMES)
            raise FileNotFoundError(f"no NVML profile file {profile!r} (packaged: {packaged})")
    with path.open(encoding="utf-8") as f:
        return dict(json.load(f))


@functools.cache
def _profiles_by_product() -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in map(load_profile, PROFILE_NAMES)}


def state_from_profile(profile: str | Path | Mapping[str, Any], index: int, *, uuid: str | None = None,
                       pci_bus_id: str | None = None, seed: str = "") -> GpuState:
    """A GpuState for GPU `index` of a board described by a profile, in its captured initial state.

    The UUID is derived from (seed, product, index) unless given, so that a simulator passing the node name
    as `seed` gets fleet-unique, run-to-run stable UUIDs; the PCI bus id follows the DGX H100 layout.
    """
    p = load_profile(profile)
    feats: dict[str, Any] = p["features"]
    init: dict[str, Any] = p["initial"]
    if uuid is None:
        uuid = "GPU-" + str(uuid_mod.uuid5(uuid_mod.NAMESPACE_URL, f"fleetwatch:{seed}:{p['name']}:{index}"))
    if pci_bus_id is None:
        if index < len(HGX_BUSES):
            domain, bus = 0, HGX_BUSES[index]
        else:                                   # past eight GPUs: buses E0–FF, then the next PCI domain
            domain, bus = divmod(index - len(HGX_BUSES), 32)
            bus += 0xE0
        pci_bus_id = f"{domain:08X}:{bus:02X}:00.0"
    serial = str(int(hashlib.sha256(uuid.encode()).hexdigest(), 16) % 10**13).zfill(13)
    links = int(feats.get("nvlink_links", 0))
    gpm = 0.0 if feats.get("gpm") else None
    retired = 0 if feats.get("retired_pages") else None
    remap = 0 if feats.get("remapped_rows") else None
    temp_mem = init.get("temp_mem_c") if feats.get("memory_temperature") else None
    return GpuState(
        index=index, uuid=uuid, name=p["name"], pci_bus_id=pci_bus_id, serial=serial,
        architecture=int(p["architecture"]), minor_number=index,
        gpu_util=int(init["gpu_util_pct"]), mem_util=int(init["mem_util_pct"]),
        enc_util=0 if feats.get("encoder") else None, dec_util=0 if feats.get("decoder") else None,
        fb_total=int(p["memory_total_mib"]) * MIB, fb_reserved=int(p["memory_reserved_mib"]) * MIB, fb_used=0,
        temp_gpu=int(init["temp_gpu_c"]), temp_mem=None if temp_mem is None else int(temp_mem),
        temp_slowdown=int(p["temperature"]["slowdown_c"]), temp_shutdown=int(p["temperature"]["shutdown_c"]),
        power_mw=round(float(init["power_w"]) * 1000), power_limit_mw=round(float(p["power_limit_w"]) * 1000),
        energy_mj=0, sm_clock_mhz=int(init["sm_clock_mhz"]), mem_clock_mhz=int(init["mem_clock_mhz"]),
        max_sm_clock_mhz=int(p["max_clocks_mhz"]["sm"]), pstate=int(init["pstate"]),
        fan_pct=0 if feats.get("fan") else None, clock_event_reasons=int(str(init["clock_event_reasons"]), 0),
        ecc_enabled=bool(feats.get("ecc", True)),
        retired_sbe=retired, retired_dbe=retired, retired_pending=None if retired is None else False,
        remap_correctable=remap, remap_uncorrectable=remap,
        pcie_tx_kbps=int(init["pcie_tx_kbps"]), pcie_rx_kbps=int(init["pcie_rx_kbps"]),
        pcie_replays=int(init["pcie_replays"]),
        nvlink_errors=[[0, 0, 0, 0] for _ in range(links)], nvlink_active=[True] * links,
        gpm_sm=gpm, gpm_tensor=gpm, gpm_dram=gpm, gpm_graphics=gpm,
    )


# --- the model -----------------------------------------------------------------------------------------

@dataclass
class _Injection:
    index: int | None
    code: int
    remaining: int | None


@dataclass
class _GpmSnapshot:
    index: int
    seq: int
    values: dict[int, float]      # NVML_GPM_METRIC_* → percent


class NvmlDeviceModel:
    """The `pynvml` module's API over a list of GpuState (NVML units), for simulation and tests."""

    def __init__(self, states: Sequence[GpuState], driver_version: str = "550.90.07",
                 refresh: Callable[[], None] | None = None, *, events_supported: bool = True,
                 clock: Clock | None = None) -> None:
        self.states = states
        self.driver_version = driver_version
        self.refresh = refresh
        self.events_supported = events_supported
        self.clock: Clock = clock or WallClock()
        self.calls: Counter[str] = Counter()
        self._init_count = 0
        self._init_error: int | None = None
        self._hang = 0.0
        self._injections: dict[str, list[_Injection]] = {}
        self._hooks = False
        self._cond = threading.Condition()
        self._handle_lock = threading.Lock()
        self._handles: list[Any] = []            # handle objects, kept alive so addresses stay unique
        self._by_addr: dict[int, int] = {}
        self._event_sets: dict[int, tuple[Any, dict[int, int]]] = {}   # address → (set, {index: mask})
        self._gpm: dict[int, tuple[Any, _GpmSnapshot | None]] = {}
        self._gpm_seq = 0

    # --- delegation to the real module ---------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        value = getattr(_real, name)
        if inspect.isfunction(value) and name.startswith("nvml") and name not in _PURE_HELPERS:
            value = self._missing(name)
        setattr(self, name, value)          # cache: later lookups skip __getattr__
        return value

    def _missing(self, name: str) -> Callable[..., Any]:
        def missing(*args: Any, **kwargs: Any) -> Any:
            """Stand-in for a symbol the model does not implement."""
            self.calls[name] += 1
            raise _err(_real.NVML_ERROR_FUNCTION_NOT_FOUND)
        missing.__name__ = name
        return missing

    # --- test hooks ----------------------------------------------------------------------------------

    def fail_init(self, code: int | None) -> None:
        """Make nvmlInit raise NVMLError(code) (e.g. NVML_ERROR_LIBRARY_NOT_FOUND); None heals it."""
        self._init_error = code

    def set_hang(self, seconds: float) -> None:
        """Make every call block `seconds` before doing anything; 0 ends the hang and wakes blocked calls."""
        with self._cond:
            self._hang = max(0.0, seconds)
            self._cond.notify_all()
        self._update_hooks()

    def inject_error(self, func_name: str, code: int, index: int | None = None,
                     times: int | None = None) -> None:
        """Make `func_name` calls (on GPU `index`, or any) raise NVMLError(code), `times` times or always."""
        if not callable(getattr(type(self), func_name, None)):
            raise ValueError(f"the NVML model does not implement {func_name!r}")
        self._injections.setdefault(func_name, []).append(_Injection(index, code, times))
        self._update_hooks()

    def clear_errors(self) -> None:
        """Remove every injected error."""
        self._injections.clear()
        self._update_hooks()

    def notify(self) -> None:
        """Wake event waiters now (call after appending to a GpuState's pending_xids)."""
        with self._cond:
            self._cond.notify_all()

    def _update_hooks(self) -> None:
        self._hooks = self._hang > 0 or any(self._injections.values())

    def _run_hooks(self, name: str, index: int | None) -> None:
        if self._hang > 0:
            with self._cond:
                deadline = time.monotonic() + self._hang
                while self._hang > 0 and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
        injections = self._injections.get(name)
        if injections:
            for inj in injections:
                if inj.index is None or inj.index == index:
                    if inj.remaining is not None:
                        inj.remaining -= 1
                        if inj.remaining <= 0:
                            injections.remove(inj)
                            self._update_hooks()
                    raise _err(inj.code)

    # --- call preambles ------------------------------------------------------------------------------

    def _sys(self, name: str) -> None:
        self.calls[name] += 1
        if not self._init_count:
            raise _err(_real.NVML_ERROR_UNINITIALIZED)
        if self._hooks:
            self._run_hooks(name, None)

    def _index(self, handle: Any) -> int:
        try:
            index = self._by_addr.get(ctypes.addressof(handle.contents))
        except (AttributeError, TypeError, ValueError):   # not a pointer, or a NULL one
            index = None
        if index is None:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def _dev(self, name: str, handle: Any) -> GpuState:
        self.calls[name] += 1
        if not self._init_count:
            raise _err(_real.NVML_ERROR_UNINITIALIZED)
        index = self._index(handle)
        if self._hooks:
            self._run_hooks(name, index)
        state = self.states[index]
        if state.lost:
            raise _err(_real.NVML_ERROR_GPU_IS_LOST)
        return state

    def _handle(self, index: int) -> Any:
        if index < len(self._handles):
            return self._handles[index]
        with self._handle_lock:
            while len(self._handles) <= index:
                handle = ctypes.pointer(_real.struct_c_nvmlDevice_t())
                self._by_addr[ctypes.addressof(handle.contents)] = len(self._handles)
                self._handles.append(handle)
        return self._handles[index]

    @staticmethod
    def _not_supported() -> _real.NVMLError:
        return _err(_real.NVML_ERROR_NOT_SUPPORTED)

    # --- library and system --------------------------------------------------------------------------

    def _init(self, name: str) -> None:
        self.calls[name] += 1
        if self._hooks:
            self._run_hooks(name, None)
        if self._init_error is not None:
            raise _err(self._init_error)
        self._init_count += 1

    def nvmlInitWithFlags(self, flags: int) -> None:
        """Initialise (counted, as NVML's init/shutdown pairs are)."""
        self._init("nvmlInitWithFlags")

    def nvmlInit(self) -> None:
        """nvmlInitWithFlags(0)."""
        self._init("nvmlInit")

    def nvmlShutdown(self) -> None:
        """Undo one nvmlInit."""
        self._sys("nvmlShutdown")
        self._init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        """The driver version string."""
        self._sys("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        """NVML's version: the CUDA major version's NVML prefix and the driver version."""
        self._sys("nvmlSystemGetNVMLVersion")
        return f"12.{self.driver_version}"

    def nvmlDeviceGetCount(self) -> int:
        """The number of GPUs (advances the simulator first, when one is attached)."""
        self._sys("nvmlDeviceGetCount")
        if self.refresh is not None:
            self.refresh()
        return len(self.states)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        """The handle of GPU `index`; a lost GPU fails with GPU_IS_LOST."""
        self._sys("nvmlDeviceGetHandleByIndex")
        if self.refresh is not None:
            self.refresh()
        if not 0 <= index < len(self.states):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if self._hooks:
            self._run_hooks("nvmlDeviceGetHandleByIndex", index)
        if self.states[index].lost:
            raise _err(_real.NVML_ERROR_GPU_IS_LOST)
        return self._handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any:
        """The handle of the GPU with this UUID, or NOT_FOUND."""
        self._sys("nvmlDeviceGetHandleByUUID")
        want = uuid.decode() if isinstance(uuid, bytes) else uuid
        for i, s in enumerate(self.states):
            if s.uuid == want:
                if s.lost:
                    raise _err(_real.NVML_ERROR_GPU_IS_LOST)
                return self._handle(i)
        raise _err(_real.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetHandleByPciBusId(self, pci_bus_id: str | bytes) -> Any:
        """The handle of the GPU at this PCI bus id (4- or 8-digit domain), or NOT_FOUND."""
        self._sys("nvmlDeviceGetHandleByPciBusId")
        want = _pci_key(pci_bus_id.decode() if isinstance(pci_bus_id, bytes) else pci_bus_id)
        for i, s in enumerate(self.states):
            if _pci_key(s.pci_bus_id) == want:
                if s.lost:
                    raise _err(_real.NVML_ERROR_GPU_IS_LOST)
                return self._handle(i)
        raise _err(_real.NVML_ERROR_NOT_FOUND)

    # --- identity ------------------------------------------------------------------------------------

    def nvmlDeviceGetName(self, handle: Any) -> str:
        """Product name."""
        return self._dev("nvmlDeviceGetName", handle).name

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        """GPU UUID ("GPU-…")."""
        return self._dev("nvmlDeviceGetUUID", handle).uuid

    def nvmlDeviceGetSerial(self, handle: Any) -> str:
        """Board serial number."""
        return self._dev("nvmlDeviceGetSerial", handle).serial

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        """NVML index."""
        return self._dev("nvmlDeviceGetIndex", handle).index

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        """The /dev/nvidiaN minor number."""
        return self._dev("nvmlDeviceGetMinorNumber", handle).minor_number

    def nvmlDeviceGetArchitecture(self, handle: Any) -> int:
        """NVML_DEVICE_ARCH_*."""
        return self._dev("nvmlDeviceGetArchitecture", handle).architecture

    def nvmlDeviceGetPciInfo_v3(self, handle: Any) -> Any:
        """nvmlPciInfo_t with the bus id, its parts and the profile's PCI device ids."""
        s = self._dev("nvmlDeviceGetPciInfo_v3", handle)
        domain, bus, rest = s.pci_bus_id.split(":")
        device = rest.split(".")[0]
        extra = _profiles_by_product().get(s.name, {})
        info = _real.nvmlPciInfo_t()
        info.busId = s.pci_bus_id.encode()
        info.busIdLegacy = f"{int(domain, 16):04x}:{bus}:{rest}".upper().encode()
        info.domain, info.bus, info.device = int(domain, 16), int(bus, 16), int(device, 16)
        info.pciDeviceId = int(str(extra.get("pci_device_id", "0")), 0)
        info.pciSubSystemId = int(str(extra.get("pci_subsystem_id", "0")), 0)
        return info

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        """nvmlDeviceGetPciInfo_v3."""
        return self.nvmlDeviceGetPciInfo_v3(handle)

    def nvmlDeviceGetVirtualizationMode(self, handle: Any) -> int:
        """NVML_GPU_VIRTUALIZATION_MODE_NONE: the simulated fleet is bare metal."""
        self._dev("nvmlDeviceGetVirtualizationMode", handle)
        return int(_real.NVML_GPU_VIRTUALIZATION_MODE_NONE)

    # --- utilisation, memory, thermals, power, clocks --------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        """c_nvmlUtilization_t, percent."""
        s = self._dev("nvmlDeviceGetUtilizationRates", handle)
        return _real.c_nvmlUtilization_t(gpu=s.gpu_util, memory=s.mem_util)

    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]:
        """[percent, sampling period µs]."""
        s = self._dev("nvmlDeviceGetEncoderUtilization", handle)
        if s.enc_util is None:
            raise self._not_supported()
        return [s.enc_util, CODEC_SAMPLING_PERIOD_US]

    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]:
        """[percent, sampling period µs]."""
        s = self._dev("nvmlDeviceGetDecoderUtilization", handle)
        if s.dec_util is None:
            raise self._not_supported()
        return [s.dec_util, CODEC_SAMPLING_PERIOD_US]

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        """c_nvmlMemory_t (v1: used includes reserved) or, given nvmlMemory_v2, c_nvmlMemory_v2_t."""
        s = self._dev("nvmlDeviceGetMemoryInfo", handle)
        if not version:
            used = s.fb_used + s.fb_reserved
            return _real.c_nvmlMemory_t(total=s.fb_total, free=max(0, s.fb_total - used), used=used)
        if version != _real.nvmlMemory_v2:
            raise _err(_real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        free = max(0, s.fb_total - s.fb_reserved - s.fb_used)
        return _real.c_nvmlMemory_v2_t(version=version, total=s.fb_total, reserved=s.fb_reserved, free=free,
                                       used=s.fb_used)

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        """GPU core temperature, °C (NVML_TEMPERATURE_GPU is the only sensor)."""
        s = self._dev("nvmlDeviceGetTemperature", handle)
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return s.temp_gpu

    def nvmlDeviceGetTemperatureThreshold(self, handle: Any, threshold: int) -> int:
        """Shutdown or slowdown threshold, °C; other thresholds are not modelled (NOT_SUPPORTED)."""
        s = self._dev("nvmlDeviceGetTemperatureThreshold", handle)
        if threshold == _real.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN:
            return s.temp_shutdown
        if threshold == _real.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN:
            return s.temp_slowdown
        if not 0 <= threshold < _real.NVML_TEMPERATURE_THRESHOLD_COUNT:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        raise self._not_supported()

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        """Board power, mW."""
        return self._dev("nvmlDeviceGetPowerUsage", handle).power_mw

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        """Enforced power limit, mW."""
        return self._dev("nvmlDeviceGetEnforcedPowerLimit", handle).power_limit_mw

    def nvmlDeviceGetPowerManagementLimit(self, handle: Any) -> int:
        """Power management limit, mW (the enforced one: no other limiter is modelled)."""
        return self._dev("nvmlDeviceGetPowerManagementLimit", handle).power_limit_mw

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        """Energy since driver load, mJ."""
        return self._dev("nvmlDeviceGetTotalEnergyConsumption", handle).energy_mj

    def nvmlDeviceGetClockInfo(self, handle: Any, type: int) -> int:
        """Current clock, MHz (graphics and SM share one clock domain on these boards)."""
        s = self._dev("nvmlDeviceGetClockInfo", handle)
        if type in (_real.NVML_CLOCK_SM, _real.NVML_CLOCK_GRAPHICS):
            return s.sm_clock_mhz
        if type == _real.NVML_CLOCK_MEM:
            return s.mem_clock_mhz
        if type == _real.NVML_CLOCK_VIDEO:
            raise self._not_supported()
        raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetMaxClockInfo(self, handle: Any, type: int) -> int:
        """Maximum clock, MHz (memory from the board's profile, else the current memory clock)."""
        s = self._dev("nvmlDeviceGetMaxClockInfo", handle)
        if type in (_real.NVML_CLOCK_SM, _real.NVML_CLOCK_GRAPHICS):
            return s.max_sm_clock_mhz
        if type == _real.NVML_CLOCK_MEM:
            extra = _profiles_by_product().get(s.name)
            return int(extra["max_clocks_mhz"]["memory"]) if extra else s.mem_clock_mhz
        if type == _real.NVML_CLOCK_VIDEO:
            raise self._not_supported()
        raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetPerformanceState(self, handle: Any) -> int:
        """P-state, 0–15."""
        return self._dev("nvmlDeviceGetPerformanceState", handle).pstate

    def nvmlDeviceGetFanSpeed(self, handle: Any) -> int:
        """Intended fan speed, %; SXM boards have no fan (NOT_SUPPORTED)."""
        s = self._dev("nvmlDeviceGetFanSpeed", handle)
        if s.fan_pct is None:
            raise self._not_supported()
        return s.fan_pct

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        """Bitmask of nvmlClocksEventReason* bits."""
        return self._dev("nvmlDeviceGetCurrentClocksEventReasons", handle).clock_event_reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: Any) -> int:
        """The deprecated name of nvmlDeviceGetCurrentClocksEventReasons."""
        return self._dev("nvmlDeviceGetCurrentClocksThrottleReasons", handle).clock_event_reasons

    def nvmlDeviceGetSupportedClocksEventReasons(self, handle: Any) -> int:
        """Every reason bit (0x1FF, as the captures' clocks_event_reasons.supported)."""
        self._dev("nvmlDeviceGetSupportedClocksEventReasons", handle)
        return int(_real.nvmlClocksEventReasonAll)

    # --- memory errors -------------------------------------------------------------------------------

    def nvmlDeviceGetEccMode(self, handle: Any) -> list[int]:
        """[current, pending] NVML_FEATURE_* ECC modes."""
        s = self._dev("nvmlDeviceGetEccMode", handle)
        mode = _real.NVML_FEATURE_ENABLED if s.ecc_enabled else _real.NVML_FEATURE_DISABLED
        return [mode, mode]

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        """Corrected/uncorrected × volatile/aggregate ECC counts; NOT_SUPPORTED with ECC off."""
        s = self._dev("nvmlDeviceGetTotalEccErrors", handle)
        if not s.ecc_enabled:
            raise self._not_supported()
        corrected = errorType == _real.NVML_MEMORY_ERROR_TYPE_CORRECTED
        if not corrected and errorType != _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if counterType == _real.NVML_VOLATILE_ECC:
            return s.ecc_sbe_volatile if corrected else s.ecc_dbe_volatile
        if counterType == _real.NVML_AGGREGATE_ECC:
            return s.ecc_sbe_aggregate if corrected else s.ecc_dbe_aggregate
        raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetRetiredPages(self, device: Any, sourceFilter: int) -> list[int]:
        """Addresses of pages retired for `sourceFilter`; Ampere and later remap rows instead."""
        s = self._dev("nvmlDeviceGetRetiredPages", device)
        if sourceFilter == _real.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS:
            count, base = s.retired_sbe, 0x1000
        elif sourceFilter == _real.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR:
            count, base = s.retired_dbe, 0x8000_0000
        else:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if count is None:
            raise self._not_supported()
        return [base + 0x1000 * i for i in range(count)]

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device: Any) -> int:
        """1 while a retirement waits for a driver reload."""
        s = self._dev("nvmlDeviceGetRetiredPagesPendingStatus", device)
        if s.retired_pending is None:
            raise self._not_supported()
        return int(s.retired_pending)

    def nvmlDeviceGetRemappedRows(self, device: Any) -> tuple[int, int, int, int]:
        """(correctable, uncorrectable, pending, failure occurred); pre-Ampere boards: NOT_SUPPORTED."""
        s = self._dev("nvmlDeviceGetRemappedRows", device)
        if s.remap_correctable is None or s.remap_uncorrectable is None:
            raise self._not_supported()
        return (s.remap_correctable, s.remap_uncorrectable, int(s.remap_pending), int(s.remap_failure))

    # --- PCIe and NVLink -----------------------------------------------------------------------------

    def nvmlDeviceGetPcieThroughput(self, device: Any, counter: int) -> int:
        """PCIe throughput over NVML's 20 ms window, KB/s."""
        s = self._dev("nvmlDeviceGetPcieThroughput", device)
        if counter == _real.NVML_PCIE_UTIL_TX_BYTES:
            return s.pcie_tx_kbps
        if counter == _real.NVML_PCIE_UTIL_RX_BYTES:
            return s.pcie_rx_kbps
        raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetPcieReplayCounter(self, handle: Any) -> int:
        """PCIe replays since reset."""
        return self._dev("nvmlDeviceGetPcieReplayCounter", handle).pcie_replays

    def _link(self, name: str, device: Any, link: int) -> GpuState:
        s = self._dev(name, device)
        if not s.nvlink_active:
            raise self._not_supported()
        if not 0 <= link < len(s.nvlink_active):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return s

    def nvmlDeviceGetNvLinkState(self, device: Any, link: int) -> int:
        """NVML_FEATURE_ENABLED while the link is up; boards without NVLink: NOT_SUPPORTED."""
        s = self._link("nvmlDeviceGetNvLinkState", device, link)
        return _real.NVML_FEATURE_ENABLED if s.nvlink_active[link] else _real.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkErrorCounter(self, device: Any, link: int, counter: int) -> int:
        """One link's DL error counter (replay, recovery, CRC flit, CRC data)."""
        s = self._link("nvmlDeviceGetNvLinkErrorCounter", device, link)
        if not 0 <= counter < _real.NVML_NVLINK_ERROR_COUNT:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if counter >= len(s.nvlink_errors[link]):
            raise self._not_supported()        # DL_ECC_DATA: not modelled
        return s.nvlink_errors[link][counter]

    def nvmlDeviceGetFieldValues(self, handle: Any, fieldIds: Sequence[int | tuple[int, int]]) -> Any:
        """c_nvmlFieldValue_t array; each entry carries its own nvmlReturn (NOT_SUPPORTED when unmodelled)."""
        s = self._dev("nvmlDeviceGetFieldValues", handle)
        values = (_real.c_nvmlFieldValue_t * len(fieldIds))()
        now_us = self.clock.now_ns() // 1000
        for i, fid in enumerate(fieldIds):
            v = values[i]
            if isinstance(fid, tuple):
                v.fieldId, v.scopeId = fid
            else:
                v.fieldId = fid
            v.timestamp = now_us
            self._field(s, v)
        return values

    def _field(self, s: GpuState, v: Any) -> None:
        fid, scope = v.fieldId, v.scopeId
        links = len(s.nvlink_active)
        v.nvmlReturn = _real.NVML_SUCCESS
        if fid == _real.NVML_FI_DEV_MEMORY_TEMP and s.temp_mem is not None:
            v.valueType, v.value.uiVal = _real.NVML_VALUE_TYPE_UNSIGNED_INT, s.temp_mem
        elif fid == _real.NVML_FI_DEV_PCIE_REPLAY_COUNTER:
            v.valueType, v.value.uiVal = _real.NVML_VALUE_TYPE_UNSIGNED_INT, s.pcie_replays
        elif fid == _real.NVML_FI_DEV_NVLINK_LINK_COUNT and links:
            v.valueType, v.value.uiVal = _real.NVML_VALUE_TYPE_UNSIGNED_INT, links
        elif fid in (_real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX,
                     _real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX) and links:
            # GpuState keeps one cumulative counter over all links and both directions: TX gets the
            # first half, RX the rest, so TX + RX summed over links is the state's counter exactly.
            total = s.nvlink_bandwidth // 2 if fid == _real.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX \
                else s.nvlink_bandwidth - s.nvlink_bandwidth // 2
            if scope == UINT_MAX:
                value = total
            elif scope < links:
                value = total // links + (1 if scope < total % links else 0)
            else:
                v.nvmlReturn = _real.NVML_ERROR_INVALID_ARGUMENT
                return
            v.valueType, v.value.ullVal = _real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, value
        elif 0 < fid < _real.NVML_FI_MAX:
            v.nvmlReturn = _real.NVML_ERROR_NOT_SUPPORTED
        else:
            v.nvmlReturn = _real.NVML_ERROR_INVALID_ARGUMENT

    # --- events --------------------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        """A new, empty event set."""
        self._sys("nvmlEventSetCreate")
        event_set = ctypes.pointer(_real.struct_c_nvmlEventSet_t())
        self._event_sets[ctypes.addressof(event_set.contents)] = (event_set, {})
        return event_set

    def _event_set(self, event_set: Any) -> dict[int, int]:
        try:
            entry = self._event_sets.get(ctypes.addressof(event_set.contents))
        except (AttributeError, TypeError, ValueError):
            entry = None
        if entry is None:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return entry[1]

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        """The event types the device can deliver (0 where the event API is unsupported)."""
        self._dev("nvmlDeviceGetSupportedEventTypes", handle)
        return SUPPORTED_EVENT_TYPES if self.events_supported else 0

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        """Add the device's `eventTypes` to the set; unsupported types fail with NOT_SUPPORTED."""
        self._dev("nvmlDeviceRegisterEvents", handle)
        registrations = self._event_set(eventSet)
        if not self.events_supported or eventTypes & ~SUPPORTED_EVENT_TYPES:
            raise self._not_supported()
        index = self._index(handle)
        registrations[index] = registrations.get(index, 0) | eventTypes

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any:
        """The next event (c_nvmlEventData_t), waiting up to `timeoutms`; TIMEOUT when none came."""
        self._sys("nvmlEventSetWait_v2")
        deadline = time.monotonic() + max(0, timeoutms) / 1000.0
        with self._cond:
            while True:
                registrations = self._event_set(eventSet)   # re-checked: the set may have been freed
                event = self._pop_event(registrations)
                if event is not None:
                    return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _err(_real.NVML_ERROR_TIMEOUT)
                self._cond.wait(min(left, _POLL_S))

    def nvmlEventSetWait(self, eventSet: Any, timeoutms: int) -> Any:
        """nvmlEventSetWait_v2."""
        return self.nvmlEventSetWait_v2(eventSet, timeoutms)

    def _pop_event(self, registrations: dict[int, int]) -> Any:
        for index, mask in registrations.items():
            if not mask & _real.nvmlEventTypeXidCriticalError or index >= len(self.states):
                continue
            pending = self.states[index].pending_xids
            if pending:
                data = _real.c_nvmlEventData_t()
                data.device = self._handle(index)
                data.eventType = _real.nvmlEventTypeXidCriticalError
                data.eventData = pending.pop(0)
                data.gpuInstanceId = data.computeInstanceId = UINT_MAX   # not attributable to a MIG slice
                return data
        return None

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        """Release an event set."""
        self._sys("nvmlEventSetFree")
        self._event_set(eventSet)
        with self._cond:
            self._event_sets.pop(ctypes.addressof(eventSet.contents), None)
            self._cond.notify_all()

    # --- GPM (Hopper and later) ----------------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, device: Any) -> Any:
        """c_nvmlGpmSupport_t; isSupportedDevice is 0 before Hopper (not an error)."""
        s = self._dev("nvmlGpmQueryDeviceSupport", device)
        return _real.c_nvmlGpmSupport_t(version=_real.NVML_GPM_SUPPORT_VERSION,
                                         isSupportedDevice=int(s.gpm_sm is not None))

    def nvmlGpmSampleAlloc(self) -> Any:
        """A new, empty GPM sample buffer."""
        self._sys("nvmlGpmSampleAlloc")
        sample = ctypes.pointer(_real.struct_c_nvmlGpmSample_t())
        self._gpm[ctypes.addressof(sample.contents)] = (sample, None)
        return sample

    def _sample_addr(self, sample: Any) -> int:
        try:
            addr = ctypes.addressof(sample.contents)
        except (AttributeError, TypeError, ValueError):
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT) from None
        if addr not in self._gpm:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        return addr

    def nvmlGpmSampleFree(self, gpmSample: Any) -> None:
        """Release a GPM sample buffer."""
        self._sys("nvmlGpmSampleFree")
        del self._gpm[self._sample_addr(gpmSample)]

    def nvmlGpmSampleGet(self, device: Any, gpmSample: Any) -> Any:
        """Record the device's GPM counters into the sample; NOT_SUPPORTED before Hopper."""
        s = self._dev("nvmlGpmSampleGet", device)
        addr = self._sample_addr(gpmSample)
        if s.gpm_sm is None or s.gpm_tensor is None or s.gpm_dram is None or s.gpm_graphics is None:
            raise self._not_supported()
        self._gpm_seq += 1
        values = {
            _real.NVML_GPM_METRIC_GRAPHICS_UTIL: s.gpm_graphics * 100.0,
            _real.NVML_GPM_METRIC_SM_UTIL: s.gpm_sm * 100.0,
            _real.NVML_GPM_METRIC_ANY_TENSOR_UTIL: s.gpm_tensor * 100.0,
            _real.NVML_GPM_METRIC_DRAM_BW_UTIL: s.gpm_dram * 100.0,
        }
        self._gpm[addr] = (self._gpm[addr][0], _GpmSnapshot(self._index(device), self._gpm_seq, values))
        return gpmSample

    def nvmlGpmMetricsGet(self, metricsGet: Any) -> Any:
        """Fill metricsGet.metrics[i] (percent) for the interval between sample1 and sample2.

        The simulator holds each GPM ratio constant over a step, so the interval's value is sample2's.
        Metrics the model does not simulate come back with nvmlReturn NOT_SUPPORTED, as real GPM does for
        metrics a device lacks.
        """
        self._sys("nvmlGpmMetricsGet")
        if metricsGet.version != _real.NVML_GPM_METRICS_GET_VERSION:
            raise _err(_real.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first = self._gpm[self._sample_addr(metricsGet.sample1)][1]
        second = self._gpm[self._sample_addr(metricsGet.sample2)][1]
        if first is None or second is None or first.index != second.index or second.seq <= first.seq:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        if self.states[second.index].lost:
            raise _err(_real.NVML_ERROR_GPU_IS_LOST)
        if not 0 < metricsGet.numMetrics <= _real.NVML_GPM_METRIC_MAX:
            raise _err(_real.NVML_ERROR_INVALID_ARGUMENT)
        for i in range(metricsGet.numMetrics):
            metric = metricsGet.metrics[i]
            value = second.values.get(metric.metricId)
            if value is None:
                metric.nvmlReturn, metric.value = _real.NVML_ERROR_NOT_SUPPORTED, 0.0
            else:
                metric.nvmlReturn, metric.value = _real.NVML_SUCCESS, value
        return metricsGet
