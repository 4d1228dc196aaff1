"""XID capture through NVML's event API: a daemon thread waits on nvmlEventSetWait_v2 and counts XIDs per GPU.

NVML delivers each XID once, to every event set registered for NVML_EVENT_TYPE_XID_CRITICAL_ERROR
(`nvmlEventTypeXidCriticalError` in pynvml), with the XID code in `eventData`. Where the event API is not
available (some vGPU guests and containers, MIG setups on older drivers, or NOT_SUPPORTED for every GPU)
`supported` is False after start(), and the agent falls back to the kernel log
(collector/sources/kernel_log.py).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from collector.batch import Event
from collector.clock import Clock, WallClock
from collector.xid import xid_event

log = logging.getLogger(__name__)

XidCallback = Callable[[str, int, int], None]
UNKNOWN_GPU = "unknown"
# After an unexpected wait error, pause this long before waiting again, so a failing driver is not spun on.
ERROR_BACKOFF_S = 0.5


def handle_key(handle: Any) -> Any:
    """A hashable identity for an NVML device handle: the address it points at (ctypes pointers do not
    compare equal by value, and event data carries a fresh pointer object for the same device)."""
    try:
        return ctypes.addressof(handle.contents)
    except (AttributeError, TypeError, ValueError):
        return handle


class XidWatcher:
    """Counts XIDs per (GPU UUID, code) from NVML events, on its own daemon thread.

    `on_xid(uuid, xid, ts_ns)` (optional) is called on the watcher thread for every XID; `node` labels
    the Events it queues for drain_events(). Call start() once, stop() when done.
    """

    def __init__(self, nvml: Any, handles_by_uuid: Mapping[str, Any], on_xid: XidCallback | None = None, *,
                 node: str = "", clock: Clock | None = None, wait_ms: int = 500,
                 error_backoff: float = ERROR_BACKOFF_S) -> None:
        self.nvml = nvml
        self.handles_by_uuid = dict(handles_by_uuid)
        self.on_xid = on_xid
        self.node = node
        self.clock: Clock = clock or WallClock()
        self.wait_ms = wait_ms
        self.error_backoff = error_backoff
        self.supported = False
        self.registered: list[str] = []            # UUIDs whose XID events are delivered
        self.unsupported: list[str] = []           # UUIDs whose registration NVML refused
        self._uuid_by_key = {handle_key(h): u for u, h in self.handles_by_uuid.items()}
        self._lock = threading.Lock()
        self._counts: dict[str, dict[int, int]] = {}
        self._last: dict[str, int] = {}
        self._events: list[Event] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._logged: set[str] = set()

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> bool:
        """Create the event set, register every GPU, start the thread; False when events are unsupported."""
        nvml = self.nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as err:
            log.info("NVML event API unavailable (%s): XIDs need the kernel log source", err)
            return False
        xid_type = nvml.nvmlEventTypeXidCriticalError
        for uuid, handle in self.handles_by_uuid.items():
            try:
                nvml.nvmlDeviceRegisterEvents(handle, xid_type, self._event_set)
            except nvml.NVMLError as err:
                # NOT_SUPPORTED (no event support), GPU_IS_LOST, NO_PERMISSION…: this GPU's XIDs only
                # reach the kernel log.
                log.info("GPU %s: cannot register for XID events (%s)", uuid, err)
                self.unsupported.append(uuid)
            else:
                self.registered.append(uuid)
        if not self.registered:
            self._free_set()
            log.info("no GPU accepted XID event registration: XIDs need the kernel log source")
            return False
        self.supported = True
        self._thread = threading.Thread(target=self._run, name="nvml-xid", daemon=True)
        self._thread.start()
        return True

    def request_stop(self) -> None:
        """Ask the thread to end after its current wait (at most wait_ms), without waiting for it."""
        self._stop.set()

    def stop(self, timeout: float = 1.0) -> bool:
        """End the thread (within `timeout`) and free the event set; False if the thread is still stuck."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                # Stuck inside NVML (a hung driver): freeing the set under it would be unsafe; the daemon
                # thread ends on its own once the call returns.
                return False
            self._thread = None
        self._free_set()
        return True

    @property
    def running(self) -> bool:
        """Whether the watcher thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _free_set(self) -> None:
        if self._event_set is None:
            return
        try:
            self.nvml.nvmlEventSetFree(self._event_set)
        except self.nvml.NVMLError as err:
            log.debug("nvmlEventSetFree: %s", err)
        self._event_set = None

    # --- results -------------------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[int, int]]:
        """A copy of {uuid: {xid: count}} (UUID "unknown" for events from a device not registered here)."""
        with self._lock:
            return {uuid: dict(codes) for uuid, codes in self._counts.items()}

    def last_codes(self) -> dict[str, int]:
        """A copy of {uuid: last xid}."""
        with self._lock:
            return dict(self._last)

    def drain_events(self) -> list[Event]:
        """The XID events queued since the last drain."""
        with self._lock:
            events, self._events = self._events, []
        return events

    def record(self, uuid: str, xid: int, ts_ns: int | None = None) -> None:
        """Count one XID (the event thread's path; also lets tests and other sources feed the counts)."""
        ts = self.clock.now_ns() if ts_ns is None else ts_ns
        with self._lock:
            codes = self._counts.setdefault(uuid, {})
            codes[xid] = codes.get(xid, 0) + 1
            self._last[uuid] = xid
            self._events.append(xid_event(ts, self.node, uuid, xid))
        if self.on_xid is not None:
            try:
                self.on_xid(uuid, xid, ts)
            except Exception:  # a consumer's bug must not kill XID capture
                self._log_once("callback", "on_xid callback failed", exc_info=True)

    # --- the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        nvml = self.nvml
        timeout_code = nvml.NVML_ERROR_TIMEOUT
        xid_type = nvml.nvmlEventTypeXidCriticalError
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, self.wait_ms)
            except nvml.NVMLError as err:
                if err.value == timeout_code:
                    continue
                self._log_once(f"wait:{err.value}", "nvmlEventSetWait_v2 failed: %s", err)
                self._stop.wait(self.error_backoff)
                continue
            except Exception:  # the thread must survive anything a driver binding throws
                self._log_once("wait:exception", "nvmlEventSetWait_v2 raised", exc_info=True)
                self._stop.wait(self.error_backoff)
                continue
            if not data.eventType & xid_type:
                continue
            uuid = self._uuid_by_key.get(handle_key(data.device), UNKNOWN_GPU)
            self.record(uuid, int(data.eventData))

    def _log_once(self, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.warning(msg, *args, exc_info=exc_info)
