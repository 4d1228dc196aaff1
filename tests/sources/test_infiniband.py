"""Tests for the InfiniBand port source: parsers on literal strings, the source on the fake root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from collector.batch import Batch
from collector.catalogue import BY_NAME, ENTITY_LABELS
from collector.source import REGISTRY, NoDataError, SourceContext
from collector.sources import infiniband
from collector.sources.infiniband import (
    COUNTER_METRICS,
    InfinibandSource,
    create,
    parse_counter,
    parse_state,
    port_metrics,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NODE = "gpu-node-01"
TS = 1_767_225_600 * 10**9
RX_BYTES = "fleetwatch_infiniband_port_data_received_bytes_total"
TX_BYTES = "fleetwatch_infiniband_port_data_transmitted_bytes_total"
RX_PACKETS = "fleetwatch_infiniband_port_packets_received_total"
UP = "fleetwatch_infiniband_port_up"


def fixture_ctx() -> SourceContext:
    """A context reading the shared fake root."""
    return SourceContext(node=NODE, proc_root=str(FIXTURES / "proc"), sys_root=str(FIXTURES / "sys"))


def readings(batch: Batch) -> dict[tuple[str, str], float]:
    """{(metric, entity id): value} of a batch."""
    return {(m, e.id): v for m, e, v, _ in batch.rows()}


@pytest.mark.parametrize("text, value", [
    ("0\n", 0),
    ("18446744073709551615\n", 2**64 - 1),
    ("N/A (no PMA)\n", None),
    ("N/A\n", None),
    ("", None),
    ("-1", None),
], ids=["zero", "u64-max", "no-pma", "na", "empty", "negative"])
def test_parse_counter(text: str, value: int | None) -> None:
    assert parse_counter(text) == value


@pytest.mark.parametrize("text, parsed", [
    ("4: ACTIVE\n", (4, "ACTIVE")),
    ("1: DOWN", (1, "DOWN")),
    ("2: INIT", (2, "INIT")),
    ("3: ARMED", (3, "ARMED")),
], ids=["active", "down", "init", "armed"])
def test_parse_state(text: str, parsed: tuple[int, str]) -> None:
    assert parse_state(text) == parsed


@pytest.mark.parametrize("text", ["ACTIVE", "x: ACTIVE"], ids=["no-id", "bad-id"])
def test_parse_state_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        parse_state(text)


def test_port_metrics_scales_data_words_to_bytes() -> None:
    got = port_metrics({"port_rcv_data": "1000", "port_xmit_data": "250", "port_rcv_packets": "7"}, {},
                       "4: ACTIVE")
    assert got == {RX_BYTES: 4000.0, TX_BYTES: 1000.0, RX_PACKETS: 7.0, UP: 1.0}


def test_port_metrics_prefers_the_64_bit_counters() -> None:
    # Pre-4.5 kernels: counters/ held a saturated 32-bit value, counters_ext/ the real 64-bit one.
    got = port_metrics({"port_rcv_data": "4294967295", "port_rcv_packets": "4294967295"},
                       {"port_rcv_data_64": "10000000000", "port_rcv_packets_64": "5000000000"}, None)
    assert got == {RX_BYTES: 40_000_000_000.0, RX_PACKETS: 5_000_000_000.0}


def test_port_metrics_falls_back_when_the_64_bit_counter_is_unusable() -> None:
    got = port_metrics({"port_rcv_data": "10"}, {"port_rcv_data_64": "N/A (no PMA)"}, None)
    assert got == {RX_BYTES: 40.0}


@pytest.mark.parametrize("counters, state, expected", [
    ({"symbol_error": "N/A (no PMA)", "link_downed": "2"}, "4: ACTIVE",
     {"fleetwatch_infiniband_port_link_downed_total": 2.0, UP: 1.0}),
    ({}, "1: DOWN", {UP: 0.0}),
    ({}, "garbage", {}),
    ({"port_rcv_errors": "x"}, None, {}),
], ids=["na-counter-omitted", "down", "bad-state-omitted", "bad-counter-omitted"])
def test_port_metrics_omits_what_it_cannot_read(counters: dict[str, str], state: str | None,
                                                 expected: dict[str, float]) -> None:
    assert port_metrics(counters, {}, state) == expected


def test_source_reads_fixture_root() -> None:
    batch = InfinibandSource(fixture_ctx()).collect(TS)
    got = readings(batch)
    assert batch.source == "infiniband"
    assert {e.id for e in batch.entity} == {"mlx5_0/1", "mlx5_1/1"}
    assert got[(RX_BYTES, "mlx5_0/1")] == 2_901_234_567_890 * 4
    assert got[(TX_BYTES, "mlx5_0/1")] == 2_876_543_210_987 * 4
    assert got[("fleetwatch_infiniband_port_symbol_errors_total", "mlx5_0/1")] == 12
    assert got[("fleetwatch_infiniband_port_link_error_recovery_total", "mlx5_0/1")] == 3
    assert got[(UP, "mlx5_0/1")] == 1.0
    assert got[(UP, "mlx5_1/1")] == 0.0
    # mlx5_1's link_downed reads "N/A (no PMA)": that one reading is omitted, the rest are there.
    assert ("fleetwatch_infiniband_port_link_downed_total", "mlx5_1/1") not in got
    assert len([k for k in got if k[1] == "mlx5_0/1"]) == len(COUNTER_METRICS) + 1
    assert len([k for k in got if k[1] == "mlx5_1/1"]) == len(COUNTER_METRICS)
    for metric, entity, _, _ in batch.rows():
        assert BY_NAME[metric].entity == "ib_port"
        assert entity.kind == "ib_port" and entity.node == NODE
        device, port = entity.id.split("/")
        assert entity.labels == (NODE, device, port) and len(entity.labels) == len(ENTITY_LABELS["ib_port"])


async def test_update_runs_collect_on_its_thread() -> None:
    src = InfinibandSource(fixture_ctx())
    try:
        batch = await src.update(TS)
    finally:
        await src.close()
    assert readings(batch)[(RX_PACKETS, "mlx5_0/1")] == 3_456_789_012


def test_ports_sorted_numerically_and_portless_devices_skipped(tmp_path: Path) -> None:
    base = tmp_path / "class" / "infiniband"
    for port in ("1", "2", "10"):
        (base / "hfi1_0" / "ports" / port / "counters").mkdir(parents=True)
        (base / "hfi1_0" / "ports" / port / "state").write_text("4: ACTIVE\n")
    (base / "irdma0").mkdir()  # no ports/: skipped, not an error
    ctx = SourceContext(node=NODE, sys_root=str(tmp_path))
    batch = InfinibandSource(ctx).collect(TS)
    assert [e.id for e in batch.entity] == ["hfi1_0/1", "hfi1_0/2", "hfi1_0/10"]


def test_unreadable_counter_is_omitted(tmp_path: Path) -> None:
    counters = tmp_path / "class" / "infiniband" / "mlx5_0" / "ports" / "1" / "counters"
    counters.mkdir(parents=True)
    (counters / "port_rcv_packets").write_text("5\n")
    (counters / "port_xmit_packets").mkdir()  # reading a directory fails like an unreadable file
    got = readings(InfinibandSource(SourceContext(node=NODE, sys_root=str(tmp_path))).collect(TS))
    assert got == {(RX_PACKETS, "mlx5_0/1"): 5.0}


@pytest.mark.parametrize("make", [
    lambda root: None,
    lambda root: (root / "class" / "infiniband").mkdir(parents=True),
], ids=["no-class-dir", "no-devices"])
def test_no_infiniband_is_no_data(tmp_path: Path, make: Callable[[Path], object]) -> None:
    make(tmp_path)
    with pytest.raises(NoDataError, match="infiniband"):
        InfinibandSource(SourceContext(node=NODE, sys_root=str(tmp_path))).collect(TS)


def test_registered_enabled_by_default() -> None:
    assert REGISTRY["infiniband"].default_enabled is True
    assert REGISTRY["infiniband"].factory is infiniband.create


def test_factory_rejects_options() -> None:
    assert isinstance(create(fixture_ctx(), {}), InfinibandSource)
    with pytest.raises(ValueError, match="'ports'"):
        create(fixture_ctx(), {"ports": "1"})
