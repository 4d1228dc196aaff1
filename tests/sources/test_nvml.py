"""The NVML `gpu` source against the device model: every metric and unit, every error path, timing."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from collector.batch import Batch
from collector.catalogue import CLOCK_EVENT_REASONS, METRICS
from collector.clock import ManualClock
from collector.sim.nvml_model import NvmlDeviceModel, state_from_profile
from collector.source import REGISTRY, NoDataError, SourceContext, SourceError
from collector.sources import nvml as nvml_source
from collector.sources.nvml import NvmlSource

GIB = 2**30
MIB = 2**20

Key = tuple[str, str, tuple[str, ...]]


def rows(batch: Batch) -> dict[Key, float]:
    """{(metric, entity id, extra labels): value}; fails on a duplicated series."""
    out: dict[Key, float] = {}
    for metric, entity, value, extra in batch.rows():
        key = (metric, entity.id, extra)
        assert key not in out, f"duplicate series {key}"
        out[key] = value
    return out


def of(batch: Batch, entity_id: str) -> dict[tuple[str, tuple[str, ...]], float]:
    """The readings of one entity: {(metric, extra): value}."""
    return {(m, x): v for (m, e, x), v in rows(batch).items() if e == entity_id}


def wait_for(cond: Any, timeout: float = 3.0) -> None:
    """Poll `cond` until true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def make_model(*profiles: str, **kwargs: Any) -> NvmlDeviceModel:
    """A device model with one GPU per profile name."""
    states = [state_from_profile(p, i, seed="node-1") for i, p in enumerate(profiles)]
    return NvmlDeviceModel(states, **kwargs)


@pytest.fixture
def ctx() -> SourceContext:
    """A source context on a manual clock."""
    return SourceContext(node="node-1", clock=ManualClock(start_ns=1_000_000))


@pytest.fixture
def sources() -> Iterator[list[NvmlSource]]:
    """Sources made by a test, shut down after it."""
    made: list[NvmlSource] = []
    yield made
    for s in made:
        s.shutdown()
        s._jobs.put(None)


def source(ctx: SourceContext, model: Any, sources: list[NvmlSource], **kwargs: Any) -> NvmlSource:
    """An NvmlSource registered for teardown."""
    kwargs.setdefault("xid_wait_ms", 50)               # short event waits: quick teardown
    src = NvmlSource(ctx, model, **kwargs)
    sources.append(src)
    return src


# --- every metric, every unit ----------------------------------------------------------------------------

def full_featured_model() -> NvmlDeviceModel:
    """An H100 with every optional field supported, set to distinctive values."""
    m = make_model("h100-80gb-hbm3", "h100-80gb-hbm3")
    s = m.states[0]
    s.gpu_util, s.mem_util, s.enc_util, s.dec_util = 87, 41, 3, 4
    s.fb_used, s.temp_gpu, s.temp_mem = 10 * GIB, 63, 71
    s.power_mw, s.power_limit_mw, s.energy_mj = 612_345, 650_000, 9_876_543
    s.sm_clock_mhz, s.mem_clock_mhz, s.pstate, s.fan_pct = 1755, 2619, 0, 55
    s.clock_event_reasons = 0x44                       # sw_power_cap | hw_thermal_slowdown
    s.ecc_sbe_volatile, s.ecc_dbe_volatile, s.ecc_sbe_aggregate, s.ecc_dbe_aggregate = 1, 2, 3, 4
    s.retired_sbe, s.retired_dbe, s.retired_pending = 2, 1, True
    s.remap_correctable, s.remap_uncorrectable, s.remap_pending, s.remap_failure = 5, 6, True, False
    s.pcie_tx_kbps, s.pcie_rx_kbps, s.pcie_replays = 1000, 2000, 12
    s.nvlink_errors[3] = [1, 2, 3, 4]                  # replay, recovery, crc flit, crc data
    s.nvlink_errors[7] = [10, 0, 5, 6]
    s.nvlink_bandwidth = 123_457
    s.gpm_graphics, s.gpm_sm, s.gpm_tensor, s.gpm_dram = 0.9, 0.75, 0.5, 0.25
    return m


def test_every_catalogue_gpu_and_nvlink_metric_with_its_unit(ctx: SourceContext,
                                                              sources: list[NvmlSource]) -> None:
    m = full_featured_model()
    src = source(ctx, m, sources)
    src.collect(1)
    uuid = m.states[0].uuid
    m.states[0].pending_xids.append(48)
    m.notify()
    wait_for(lambda: src.watcher is not None and src.watcher.counts())
    batch = src.collect(2)
    # What the predictor computes per GPU (origin predictor/...) is not read from NVML.
    want = {spec.name for spec in METRICS if spec.entity in ("gpu", "nvlink") and not spec.source.startswith(
        "predictor/")}
    assert want <= set(batch.metric), f"missing: {sorted(want - set(batch.metric))}"
    g = of(batch, uuid)
    expected = {
        "fleetwatch_gpu_utilization_ratio": 0.87,
        "fleetwatch_gpu_memory_copy_utilization_ratio": 0.41,
        "fleetwatch_gpu_encoder_utilization_ratio": 0.03,
        "fleetwatch_gpu_decoder_utilization_ratio": 0.04,
        "fleetwatch_gpu_framebuffer_used_bytes": 10 * GIB,
        "fleetwatch_gpu_framebuffer_reserved_bytes": 479 * MIB,
        "fleetwatch_gpu_framebuffer_total_bytes": 81559 * MIB,
        "fleetwatch_gpu_framebuffer_free_bytes": 81559 * MIB - 479 * MIB - 10 * GIB,
        "fleetwatch_gpu_temperature_celsius": 63,
        "fleetwatch_gpu_memory_temperature_celsius": 71,
        "fleetwatch_gpu_power_watts": 612.345,
        "fleetwatch_gpu_power_limit_watts": 650.0,
        "fleetwatch_gpu_energy_joules_total": 9876.543,
        "fleetwatch_gpu_sm_clock_hertz": 1.755e9,
        "fleetwatch_gpu_memory_clock_hertz": 2.619e9,
        "fleetwatch_gpu_performance_state": 0,
        "fleetwatch_gpu_fan_speed_ratio": 0.55,
        "fleetwatch_gpu_clock_event_reasons": 0x44,
        "fleetwatch_gpu_ecc_sbe_volatile_total": 1,
        "fleetwatch_gpu_ecc_dbe_volatile_total": 2,
        "fleetwatch_gpu_ecc_sbe_aggregate_total": 3,
        "fleetwatch_gpu_ecc_dbe_aggregate_total": 4,
        "fleetwatch_gpu_retired_pages_sbe_total": 2,
        "fleetwatch_gpu_retired_pages_dbe_total": 1,
        "fleetwatch_gpu_retired_pages_pending": 1,
        "fleetwatch_gpu_remapped_rows_correctable_total": 5,
        "fleetwatch_gpu_remapped_rows_uncorrectable_total": 6,
        "fleetwatch_gpu_remapped_rows_pending": 1,
        "fleetwatch_gpu_remapped_rows_failed": 0,
        "fleetwatch_gpu_pcie_transmit_bytes_per_second": 1000 * 1024,
        "fleetwatch_gpu_pcie_receive_bytes_per_second": 2000 * 1024,
        "fleetwatch_gpu_pcie_replays_total": 12,
        "fleetwatch_gpu_nvlink_replay_errors_total": 11,
        "fleetwatch_gpu_nvlink_recovery_errors_total": 2,
        "fleetwatch_gpu_nvlink_crc_errors_total": 3 + 4 + 5 + 6,
        "fleetwatch_gpu_nvlink_bandwidth_total": 123_457,
        "fleetwatch_gpu_graphics_engine_active_ratio": 0.9,
        "fleetwatch_gpu_sm_active_ratio": 0.75,
        "fleetwatch_gpu_tensor_active_ratio": 0.5,
        "fleetwatch_gpu_dram_active_ratio": 0.25,
        "fleetwatch_gpu_xid_last_code": 48,
        "fleetwatch_gpu_lost": 0,
        "fleetwatch_gpu_info": 1,
        "fleetwatch_gpu_vgpu_license_status": 0,
    }
    for metric, value in expected.items():
        assert g[(metric, ())] == pytest.approx(value), metric
    assert g[("fleetwatch_gpu_xid_errors_total", ("48",))] == 1
    for reason, bit in CLOCK_EVENT_REASONS.items():
        assert g[("fleetwatch_gpu_clock_event_active", (reason,))] == (1.0 if bit & 0x44 else 0.0), reason
    link3 = of(batch, f"{uuid}/nvlink3")
    assert link3 == {("fleetwatch_nvlink_replay_errors_total", ()): 1,
                     ("fleetwatch_nvlink_recovery_errors_total", ()): 2,
                     ("fleetwatch_nvlink_crc_flit_errors_total", ()): 3,
                     ("fleetwatch_nvlink_crc_data_errors_total", ()): 4}
    assert sum(1 for e in {ent.id for ent in batch.entity} if e.startswith(f"{uuid}/nvlink")) == 18
    assert [(e.kind, e.code, e.entity) for e in batch.events] == [("xid", 48, uuid)]
    # The second GPU saw no XID: last code 0 and no xid_errors_total series.
    other = of(batch, m.states[1].uuid)
    assert other[("fleetwatch_gpu_xid_last_code", ())] == 0
    assert not any(metric == "fleetwatch_gpu_xid_errors_total" for metric, _ in other)
    assert src.field_errors == {}


def test_entity_labels(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h100-80gb-hbm3", "h200", driver_version="550.90.07")
    m.states[1].minor_number = 5                       # minor numbers need not follow NVML indexes
    src = source(ctx, m, sources)
    batch = src.collect(1)
    entities = {e.id: e for e in batch.entity}
    e0, e1 = entities[m.states[0].uuid], entities[m.states[1].uuid]
    assert e0.labels == ("node-1", "0", m.states[0].uuid, "00000000:18:00.0", "nvidia0",
                         "NVIDIA H100 80GB HBM3", "550.90.07")
    assert e1.labels[4] == "nvidia5" and e1.dcgm_labels[3] == "nvidia5" and e1.labels[1] == "1"
    assert e1.dcgm_labels == ("1", m.states[1].uuid, "00000000:2A:00.0", "nvidia5", "NVIDIA H200", "node-1",
                              "550.90.07")
    assert src.driver_version == "550.90.07"
    assert src.entities() == [e0, e1]
    assert src.entities_by_pci() == {"00000000:18:00.0": e0, "00000000:2A:00.0": e1}
    assert entities[f"{m.states[0].uuid}/nvlink17"].labels[-1] == "17"


def test_gpm_needs_two_samples(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h100-80gb-hbm3")
    m.states[0].gpm_sm = 0.5
    src = source(ctx, m, sources)
    assert "fleetwatch_gpu_sm_active_ratio" not in src.collect(1).metric
    assert of(src.collect(2), m.states[0].uuid)[("fleetwatch_gpu_sm_active_ratio", ())] == 0.5
    m.states[0].gpm_sm = 0.25
    assert of(src.collect(3), m.states[0].uuid)[("fleetwatch_gpu_sm_active_ratio", ())] == 0.25
    # A failed sample breaks the pair: the next collect starts a new one instead of spanning the gap.
    m.inject_error("nvmlGpmSampleGet", pynvml.NVML_ERROR_UNKNOWN, times=1)
    assert "fleetwatch_gpu_sm_active_ratio" not in src.collect(4).metric
    assert "fleetwatch_gpu_sm_active_ratio" not in src.collect(5).metric
    assert "fleetwatch_gpu_sm_active_ratio" in src.collect(6).metric


# --- NOT_SUPPORTED ---------------------------------------------------------------------------------------

def test_not_supported_fields_are_omitted_and_not_queried_again(ctx: SourceContext, sources: list[NvmlSource],
                                                                caplog: pytest.LogCaptureFixture) -> None:
    m = make_model("h100-80gb-hbm3", "l40s")
    src = source(ctx, m, sources)
    with caplog.at_level(logging.INFO, logger="collector.sources.nvml"):
        batches = [src.collect(i) for i in range(3)]
    h100, l40s = of(batches[-1], m.states[0].uuid), of(batches[-1], m.states[1].uuid)
    for absent in ("fleetwatch_gpu_fan_speed_ratio", "fleetwatch_gpu_retired_pages_sbe_total",
                   "fleetwatch_gpu_retired_pages_dbe_total", "fleetwatch_gpu_retired_pages_pending"):
        assert (absent, ()) not in h100 and (absent, ()) not in l40s
    for absent in ("fleetwatch_gpu_memory_temperature_celsius", "fleetwatch_gpu_nvlink_bandwidth_total",
                   "fleetwatch_gpu_nvlink_crc_errors_total", "fleetwatch_gpu_sm_active_ratio"):
        assert (absent, ()) not in l40s
    assert ("fleetwatch_gpu_memory_temperature_celsius", ()) in h100
    assert not any(e.kind == "nvlink" and e.id.startswith(m.states[1].uuid) for e in batches[-1].entity)
    # Asked once (first collect, both GPUs), never again.
    assert m.calls["nvmlDeviceGetFanSpeed"] == 2
    assert m.calls["nvmlDeviceGetRetiredPages"] == 2
    assert m.calls["nvmlDeviceGetRetiredPagesPendingStatus"] == 2
    # NVLink: the H100 probes all NVML_NVLINK_MAX_LINKS (36) links at discovery, then its 18 each
    # collect; the L40S answers NOT_SUPPORTED for link 0 and is never asked again. GPM: L40S never sampled.
    assert m.calls["nvmlDeviceGetNvLinkState"] == pynvml.NVML_NVLINK_MAX_LINKS + 3 * 18 + 1
    assert m.calls["nvmlGpmSampleGet"] == 3
    # Field values: the L40S's only field (memory temperature) is unsupported, so it stops being asked.
    assert m.calls["nvmlDeviceGetFieldValues"] == 3 + 1
    assert src.field_errors == {}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_ecc_disabled_drops_the_ecc_counters(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h200")
    m.states[0].ecc_enabled = False
    src = source(ctx, m, sources)
    src.collect(1)
    batch = src.collect(2)
    assert not any(metric.startswith("fleetwatch_gpu_ecc_") for metric in batch.metric)
    assert m.calls["nvmlDeviceGetTotalEccErrors"] == 1


# --- lost GPUs -------------------------------------------------------------------------------------------

# What a lost GPU still reports: the flag, its identity, and the agent's own XID tally (none here).
LOST_ONLY = {("fleetwatch_gpu_lost", ()): 1.0, ("fleetwatch_gpu_info", ()): 1.0,
             ("fleetwatch_gpu_xid_last_code", ()): 0.0}

def test_gpu_lost_mid_run(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h100-80gb-hbm3", "h100-80gb-hbm3", "h100-80gb-hbm3")
    src = source(ctx, m, sources)
    src.collect(0)
    first = src.collect(1)                             # the second collect: GPM has its two samples
    lost = m.states[1].uuid
    assert of(first, lost)[("fleetwatch_gpu_lost", ())] == 0
    m.states[1].lost = True
    second = src.collect(2)
    assert of(second, lost) == LOST_ONLY
    assert not any(e.id.startswith(f"{lost}/") for e in second.entity)        # no NVLink rows either
    for healthy in (m.states[0].uuid, m.states[2].uuid):
        assert of(second, healthy) == of(first, healthy)
    assert [(e.kind, e.entity, e.code) for e in second.events] == [
        ("gpu_lost", lost, pynvml.NVML_ERROR_GPU_IS_LOST)]
    before = m.calls["nvmlDeviceGetPowerUsage"]
    third = src.collect(3)
    assert third.events == []                                                  # reported once
    assert of(third, lost)[("fleetwatch_gpu_lost", ())] == 1.0
    assert m.calls["nvmlDeviceGetPowerUsage"] - before == 2                    # the lost GPU is not asked


def test_gpu_lost_in_the_middle_of_a_collect_discards_its_partial_readings(
        ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h200", "h200")
    src = source(ctx, m, sources)
    src.collect(1)
    m.inject_error("nvmlDeviceGetRemappedRows", pynvml.NVML_ERROR_GPU_IS_LOST, index=0)
    batch = src.collect(2)
    assert of(batch, m.states[0].uuid) == LOST_ONLY
    assert of(batch, m.states[1].uuid)[("fleetwatch_gpu_lost", ())] == 0.0
    assert [e.kind for e in batch.events] == ["gpu_lost"]


def test_gpu_lost_before_discovery(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h200", "h200")
    m.states[1].lost = True
    src = source(ctx, m, sources)
    batch = src.collect(1)
    assert of(batch, "unknown-gpu1") == LOST_ONLY
    assert [(e.kind, e.entity) for e in batch.events] == [("gpu_lost", "unknown-gpu1")]
    assert src.watcher is not None and src.watcher.registered == [m.states[0].uuid]
    assert src.collect(2).events == []


# --- other errors ----------------------------------------------------------------------------------------

def test_other_field_errors_are_counted_and_logged_once(ctx: SourceContext, sources: list[NvmlSource],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    m = make_model("h200", "h200")
    m.inject_error("nvmlDeviceGetPowerUsage", pynvml.NVML_ERROR_UNKNOWN, index=0, times=2)
    m.inject_error("nvmlDeviceGetNvLinkErrorCounter", pynvml.NVML_ERROR_UNKNOWN, index=1, times=1)
    src = source(ctx, m, sources)
    with caplog.at_level(logging.WARNING, logger="collector.sources.nvml"):
        b1, b2, b3 = src.collect(1), src.collect(2), src.collect(3)
    u0, u1 = m.states[0].uuid, m.states[1].uuid
    assert ("fleetwatch_gpu_power_watts", ()) not in of(b1, u0)
    assert ("fleetwatch_gpu_power_watts", ()) not in of(b2, u0)
    assert of(b3, u0)[("fleetwatch_gpu_power_watts", ())] == pytest.approx(77.88)
    assert of(b1, u1)[("fleetwatch_gpu_power_watts", ())] == pytest.approx(77.88)
    # The failing link is skipped for one collect; the GPU's other links still report.
    assert ("fleetwatch_nvlink_replay_errors_total", ()) not in of(b1, f"{u1}/nvlink0")
    assert ("fleetwatch_nvlink_replay_errors_total", ()) in of(b1, f"{u1}/nvlink1")
    assert ("fleetwatch_nvlink_replay_errors_total", ()) in of(b2, f"{u1}/nvlink0")
    assert src.field_errors == {"nvmlDeviceGetPowerUsage": 2, "nvmlDeviceGetNvLinkErrorCounter": 1}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("nvmlDeviceGetPowerUsage failed" in w for w in warnings) == 1


def test_nvlink_sums_do_not_go_backwards_when_a_link_drops(ctx: SourceContext,
                                                           sources: list[NvmlSource]) -> None:
    m = make_model("h100-80gb-hbm3")
    s = m.states[0]
    s.nvlink_errors[2] = [7, 1, 2, 3]
    src = source(ctx, m, sources)
    uuid = s.uuid
    assert of(src.collect(1), uuid)[("fleetwatch_gpu_nvlink_replay_errors_total", ())] == 7
    s.nvlink_active[2] = False
    batch = src.collect(2)
    assert of(batch, f"{uuid}/nvlink2") == {}
    assert of(batch, uuid)[("fleetwatch_gpu_nvlink_replay_errors_total", ())] == 7
    assert of(batch, uuid)[("fleetwatch_gpu_nvlink_crc_errors_total", ())] == 5


@pytest.mark.parametrize(("code", "reason"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "nvml_library_not_found"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver_not_loaded"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "no_permission"),
    (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "driver_version_mismatch"),
    (pynvml.NVML_ERROR_UNKNOWN, "nvml_init_failed"),
], ids=["library", "driver", "permission", "mismatch", "other"])
def test_init_failure_is_a_source_error_and_is_retried(code: int, reason: str, ctx: SourceContext,
                                                       sources: list[NvmlSource]) -> None:
    m = make_model("h200")
    m.fail_init(code)
    src = source(ctx, m, sources)
    with pytest.raises(SourceError) as info:
        src.collect(1)
    assert info.value.reason == reason
    assert "nvmlInit failed" in str(info.value)
    with pytest.raises(SourceError):
        src.collect(2)
    m.fail_init(None)
    assert "fleetwatch_gpu_power_watts" in src.collect(3).metric
    assert m.calls["nvmlInit"] == 3


def test_real_pynvml_without_a_driver_or_with_one(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    """The default module is the real pynvml: with no driver here it must be a clean SourceError."""
    src = source(ctx, None, sources, xid_events=False)
    try:
        batch = src.collect(1)
    except SourceError as err:
        assert err.reason in ("nvml_library_not_found", "driver_not_loaded")
        assert src._nvml is pynvml
    except NoDataError:
        assert src._nvml is pynvml                     # a driver without GPUs
    else:                                              # a GPU machine: real readings
        assert "fleetwatch_gpu_temperature_celsius" in batch.metric


def test_no_gpu_is_no_data(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    src = source(ctx, NvmlDeviceModel([]), sources)
    with pytest.raises(NoDataError, match="no NVIDIA GPU"):
        src.collect(1)


def test_identity_and_count_errors(ctx: SourceContext, sources: list[NvmlSource],
                                   caplog: pytest.LogCaptureFixture) -> None:
    m = make_model("h200", "h200")
    src = source(ctx, m, sources)
    m.inject_error("nvmlDeviceGetUUID", pynvml.NVML_ERROR_UNKNOWN, index=1, times=1)
    with pytest.raises(SourceError, match="GPU 1: identity query failed") as info:
        src.collect(1)
    assert info.value.reason == "nvml_error"
    assert len(src.collect(2).events) == 0 and len(src.entities()) == 2
    m.inject_error("nvmlDeviceGetCount", pynvml.NVML_ERROR_UNKNOWN, times=1)
    with pytest.raises(SourceError, match="nvmlDeviceGetCount failed"):
        src.collect(3)
    m.states.append(state_from_profile("h200", 2))
    with caplog.at_level(logging.WARNING, logger="collector.sources.nvml"):
        src.collect(4)
        src.collect(5)
    assert sum("now reports 3 GPUs" in r.getMessage() for r in caplog.records) == 1


# --- XIDs, timeouts, lifecycle ---------------------------------------------------------------------------

def test_xids_from_the_event_thread_are_counted(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h100-80gb-hbm3", "h100-80gb-hbm3")
    src = source(ctx, m, sources)
    src.collect(1)
    assert src.xid_events_supported is True
    u0, u1 = m.states[0].uuid, m.states[1].uuid
    m.states[0].pending_xids.extend([94, 94, 48])
    m.states[1].pending_xids.append(31)
    m.notify()
    wait_for(lambda: src.watcher is not None and sum(len(c) for c in src.watcher.counts().values()) == 3)
    wait_for(lambda: src.watcher is not None and src.watcher.counts()[u0].get(94) == 2)
    batch = src.collect(2)
    g0, g1 = of(batch, u0), of(batch, u1)
    assert g0[("fleetwatch_gpu_xid_errors_total", ("94",))] == 2
    assert g0[("fleetwatch_gpu_xid_errors_total", ("48",))] == 1
    assert g0[("fleetwatch_gpu_xid_last_code", ())] == 48
    assert g1[("fleetwatch_gpu_xid_errors_total", ("31",))] == 1
    want = [(u0, 94), (u0, 94), (u0, 48), (u1, 31)]
    assert sorted((e.entity, e.code) for e in batch.events) == sorted(want)
    assert all(e.kind == "xid" and e.node == "node-1" for e in batch.events)
    again = src.collect(3)
    assert again.events == [] and of(again, u0)[("fleetwatch_gpu_xid_errors_total", ("94",))] == 2


def test_without_event_support_xid_last_code_is_zero(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h200", events_supported=False)
    src = source(ctx, m, sources)
    assert src.xid_events_supported is None
    batch = src.collect(1)
    assert src.xid_events_supported is False
    assert of(batch, m.states[0].uuid)[("fleetwatch_gpu_xid_last_code", ())] == 0


async def test_hang_longer_than_timeout_does_not_block_the_loop(ctx: SourceContext,
                                                                sources: list[NvmlSource]) -> None:
    m = make_model("h200", "h200")
    src = source(ctx, m, sources, timeout=0.2)
    await src.update(1)
    m.set_hang(5.0)
    ticks = 0

    async def ticker() -> None:
        """Count event-loop ticks while the collect hangs."""
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(src.update(2), src.timeout)
        assert loop.time() - t0 < 1.0
        assert ticks >= 10                                   # the loop kept running meanwhile
        with pytest.raises(SourceError) as info:             # the hung call is not stacked on
            await src.update(3)
        assert info.value.reason == "busy"
        m.set_hang(0)
        deadline = loop.time() + 3.0
        while True:
            try:
                batch = await src.update(4)
                break
            except SourceError:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
        assert "fleetwatch_gpu_power_watts" in batch.metric
    finally:
        task.cancel()
        m.set_hang(0)


async def test_close_stops_xid_capture_and_shuts_nvml_down(ctx: SourceContext) -> None:
    m = make_model("h200")
    src = NvmlSource(ctx, m, xid_wait_ms=50)
    await src.update(1)
    watcher = src.watcher
    assert watcher is not None and watcher.running
    await src.close()
    assert not watcher.running and src.watcher is None
    assert m.calls["nvmlShutdown"] == 1 and m.calls["nvmlEventSetFree"] == 1
    assert m.calls["nvmlGpmSampleFree"] == 2
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        m.nvmlDeviceGetCount()


def test_eight_gpu_collect_is_cheap(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model(*["h100-80gb-hbm3"] * 8)
    src = source(ctx, m, sources)
    src.collect(0)
    src.collect(1)
    costs = []
    for i in range(20):
        t0 = time.thread_time()
        batch = src.collect(i)
        costs.append(time.thread_time() - t0)
    assert len(batch) > 900
    assert statistics.median(costs) < 0.010, f"median collect CPU {statistics.median(costs) * 1e3:.2f} ms"


# --- registration ----------------------------------------------------------------------------------------

def test_registered_and_factory(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    reg = REGISTRY["gpu"]
    assert reg.default_enabled is True and reg.factory is nvml_source.create
    assert reg.options == ("interval", "timeout", "xid_events")
    model = make_model("h200")
    sim_ctx = SourceContext(node="sim-3", simulator=SimpleNamespace(nvml_model=lambda node: model))
    src = nvml_source.create(sim_ctx, {"interval": 2, "timeout": 0.5, "xid_events": False})
    sources.append(src)
    assert (src.interval, src.timeout, src.xid_events) == (2.0, 0.5, False)
    assert src.collect(1).entity[0].node == "sim-3"
    assert src.watcher is None and model.calls["nvmlEventSetCreate"] == 0
    plain = nvml_source.create(ctx, {})
    sources.append(plain)
    assert plain._nvml is None                                 # real pynvml, imported on first collect
    for bad in ({"nope": 1}, {"interval": 0}, {"timeout": "5"}, {"interval": True}, {"xid_events": "yes"}):
        with pytest.raises(ValueError, match="gpu"):
            nvml_source.create(ctx, bad)


async def test_close_does_not_wait_for_a_hung_driver(ctx: SourceContext) -> None:
    m = make_model("h200")
    src = NvmlSource(ctx, m, timeout=0.1, xid_wait_ms=50)
    src.shutdown_timeout = 0.3
    await src.update(1)
    m.set_hang(10.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(src.update(2), src.timeout)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        await src.close()                                # the collect thread holds the hung call
        assert 0.25 < loop.time() - t0 < 1.5             # gave up after its budget
    finally:
        m.set_hang(0)
    wait_for(lambda: m.calls["nvmlShutdown"] == 1)       # and finished once the driver came back


def test_probe_failures_disable_the_feature_not_the_source(ctx: SourceContext,
                                                            sources: list[NvmlSource]) -> None:
    m = make_model("h100-80gb-hbm3")
    m.inject_error("nvmlDeviceGetNvLinkState", pynvml.NVML_ERROR_UNKNOWN, times=1)     # link 0's probe
    m.inject_error("nvmlGpmQueryDeviceSupport", pynvml.NVML_ERROR_UNKNOWN, times=1)
    src = source(ctx, m, sources)
    src.collect(1)
    batch = src.collect(2)
    uuid = m.states[0].uuid
    assert of(batch, f"{uuid}/nvlink0") == {} and of(batch, f"{uuid}/nvlink1") != {}
    assert "fleetwatch_gpu_sm_active_ratio" not in batch.metric
    assert src.field_errors == {"nvmlDeviceGetNvLinkState(probe)": 1, "nvmlGpmQueryDeviceSupport(probe)": 1}


def test_lost_gpu_keeps_its_xid_counts(ctx: SourceContext, sources: list[NvmlSource]) -> None:
    m = make_model("h100-80gb-hbm3", "h100-80gb-hbm3")
    src = source(ctx, m, sources)
    src.collect(1)
    uuid = m.states[0].uuid
    assert src.watcher is not None
    src.watcher.record(uuid, 79)                 # XID 79 arrives, then every query says GPU_IS_LOST
    m.states[0].lost = True
    got = of(src.collect(2), uuid)
    assert got[("fleetwatch_gpu_lost", ())] == 1.0
    assert got[("fleetwatch_gpu_xid_errors_total", ("79",))] == 1.0
    assert got[("fleetwatch_gpu_xid_last_code", ())] == 79.0
