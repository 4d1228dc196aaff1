"""XidWatcher: XIDs from NVML's event API, counted per GPU on a daemon thread, against the device model."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pynvml
import pytest

from collector.clock import ManualClock
from collector.sim.nvml_model import NvmlDeviceModel, state_from_profile
from collector.sources.nvml_xid import UNKNOWN_GPU, XidWatcher, handle_key


def _wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll `cond` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@pytest.fixture
def model() -> NvmlDeviceModel:
    """Three initialised H100s."""
    m = NvmlDeviceModel([state_from_profile("h100-80gb-hbm3", i) for i in range(3)])
    m.nvmlInit()
    return m


@pytest.fixture
def handles(model: NvmlDeviceModel) -> dict[str, object]:
    """Their handles by UUID."""
    return {s.uuid: model.nvmlDeviceGetHandleByIndex(s.index) for s in model.states}


@pytest.fixture
def watchers() -> Iterator[list[XidWatcher]]:
    """Watchers made by a test, stopped after it."""
    made: list[XidWatcher] = []
    yield made
    for w in made:
        w.stop()


def test_counts_xids_per_gpu_and_code(model: NvmlDeviceModel, handles: dict[str, object],
                                      watchers: list[XidWatcher]) -> None:
    clock = ManualClock(start_ns=1_000)
    seen: list[tuple[str, int, int]] = []
    w = XidWatcher(model, handles, lambda u, x, ts: seen.append((u, x, ts)), node="n1", clock=clock,
                   wait_ms=100)
    watchers.append(w)
    assert w.start() is True
    assert w.supported and w.running and sorted(w.registered) == sorted(handles)
    u0, u2 = model.states[0].uuid, model.states[2].uuid
    model.states[0].pending_xids.extend([48, 48, 94])
    model.states[2].pending_xids.append(79)
    model.notify()
    _wait_for(lambda: len(seen) == 4)
    assert w.counts() == {u0: {48: 2, 94: 1}, u2: {79: 1}}
    assert w.last_codes() == {u0: 94, u2: 79}
    assert sorted(seen) == sorted([(u0, 48, 1_000), (u0, 48, 1_000), (u0, 94, 1_000), (u2, 79, 1_000)])
    events = w.drain_events()
    assert [(e.entity, e.code, e.kind, e.node) for e in events if e.entity == u2] == [(u2, 79, "xid", "n1")]
    assert any(e.detail == "ROBUST_CHANNEL_GPU_ECC_DBE: Double Bit ECC Error" for e in events)
    assert w.drain_events() == []


def test_stop_ends_the_thread_within_a_second(model: NvmlDeviceModel, handles: dict[str, object]) -> None:
    w = XidWatcher(model, handles)                 # default 500 ms waits
    assert w.start()
    time.sleep(0.05)                               # let it enter a wait
    t0 = time.monotonic()
    assert w.stop() is True
    assert time.monotonic() - t0 < 1.0
    assert not w.running
    assert model.calls["nvmlEventSetFree"] == 1


def test_unsupported_event_api_reports_so() -> None:
    m = NvmlDeviceModel([state_from_profile("h200", 0)], events_supported=False)
    m.nvmlInit()
    h = {m.states[0].uuid: m.nvmlDeviceGetHandleByIndex(0)}
    w = XidWatcher(m, h)
    assert w.start() is False
    assert w.supported is False and not w.running
    assert w.unsupported == [m.states[0].uuid] and w.registered == []
    assert m.calls["nvmlEventSetFree"] == 1                    # the unused set is released
    m.inject_error("nvmlEventSetCreate", pynvml.NVML_ERROR_NOT_SUPPORTED)
    assert XidWatcher(m, h).start() is False


def test_partial_registration_still_watches_the_rest(model: NvmlDeviceModel, handles: dict[str, object],
                                                     watchers: list[XidWatcher]) -> None:
    model.inject_error("nvmlDeviceRegisterEvents", pynvml.NVML_ERROR_NOT_SUPPORTED, index=0)
    w = XidWatcher(model, handles, wait_ms=50)
    watchers.append(w)
    assert w.start() is True
    assert w.unsupported == [model.states[0].uuid] and len(w.registered) == 2
    model.states[0].pending_xids.append(13)                    # never delivered: not registered
    model.states[1].pending_xids.append(31)
    _wait_for(lambda: bool(w.counts()))
    assert w.counts() == {model.states[1].uuid: {31: 1}}


def test_survives_wait_errors_and_callback_bugs(model: NvmlDeviceModel, handles: dict[str, object],
                                                watchers: list[XidWatcher],
                                                caplog: pytest.LogCaptureFixture) -> None:
    def broken(uuid: str, xid: int, ts: int) -> None:
        """A consumer that always fails."""
        raise RuntimeError("consumer bug")

    model.inject_error("nvmlEventSetWait_v2", pynvml.NVML_ERROR_UNKNOWN, times=3)
    w = XidWatcher(model, handles, broken, wait_ms=20, error_backoff=0.01)
    watchers.append(w)
    with caplog.at_level(logging.WARNING, logger="collector.sources.nvml_xid"):
        assert w.start()
        model.states[1].pending_xids.extend([43, 45])
        _wait_for(lambda: sum(sum(c.values()) for c in w.counts().values()) == 2)
    assert w.running
    assert w.counts() == {model.states[1].uuid: {43: 1, 45: 1}}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("nvmlEventSetWait_v2 failed" in msg for msg in messages) == 1       # logged once
    assert sum("on_xid callback failed" in msg for msg in messages) == 1


def test_event_from_an_unregistered_handle_counts_as_unknown(model: NvmlDeviceModel,
                                                             watchers: list[XidWatcher]) -> None:
    h0 = model.nvmlDeviceGetHandleByIndex(0)
    w = XidWatcher(model, {"GPU-zero": h0}, wait_ms=20)
    watchers.append(w)
    w._uuid_by_key.clear()                             # as if NVML reported a device we never mapped
    assert w.start()
    model.states[0].pending_xids.append(62)
    _wait_for(lambda: bool(w.counts()))
    assert w.counts() == {UNKNOWN_GPU: {62: 1}}


def test_stop_gives_up_on_a_hung_wait(model: NvmlDeviceModel, handles: dict[str, object]) -> None:
    w = XidWatcher(model, handles, wait_ms=20)
    assert w.start()
    model.set_hang(5.0)
    time.sleep(0.06)                                   # the next wait is now stuck in the "driver"
    t0 = time.monotonic()
    assert w.stop(timeout=0.2) is False
    assert time.monotonic() - t0 < 0.5
    threading.Thread(target=model.set_hang, args=(0,)).start()
    _wait_for(lambda: not w.running)
    assert w.stop() is True


def test_record_feeds_counts_directly(model: NvmlDeviceModel) -> None:
    w = XidWatcher(model, {}, node="n2", clock=ManualClock(start_ns=7))
    w.record("GPU-x", 119)
    w.record("GPU-x", 119, ts_ns=9)
    assert w.counts() == {"GPU-x": {119: 2}} and w.last_codes() == {"GPU-x": 119}
    assert [e.ts_ns for e in w.drain_events()] == [7, 9]


def test_handle_key(model: NvmlDeviceModel) -> None:
    h = model.nvmlDeviceGetHandleByIndex(1)
    data = pynvml.c_nvmlEventData_t()
    data.device = h
    assert data.device is not h and handle_key(data.device) == handle_key(h)
    assert handle_key(h) != handle_key(model.nvmlDeviceGetHandleByIndex(0))
    assert handle_key("plain") == "plain"
