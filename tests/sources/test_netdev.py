"""Tests for the /proc/net/dev + operstate source: parser on literal strings, source on the fake root."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.batch import Batch
from collector.catalogue import BY_NAME, ENTITY_LABELS
from collector.source import REGISTRY, NoDataError, SourceContext, SourceError
from collector.sources import netdev
from collector.sources.netdev import DeviceFilter, NetDevSource, create, operstate_up, parse_net_dev

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NODE = "gpu-node-01"
TS = 1_767_225_600 * 10**9

HEADER = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
    "carrier compressed\n"
)
TWO_DEVICES = HEADER + (
    "    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0"
    "       0          0\n"
    "  eth0: 5000000    4000    1    2    0     0          0         7  3000000    2500    3    4    0     0"
    "       0          0\n"
)


def fixture_ctx() -> SourceContext:
    """A context reading the shared fake root."""
    return SourceContext(node=NODE, proc_root=str(FIXTURES / "proc"), sys_root=str(FIXTURES / "sys"))


def readings(batch: Batch) -> dict[tuple[str, str], float]:
    """{(metric, entity id): value} of a batch."""
    return {(m, e.id): v for m, e, v, _ in batch.rows()}


def test_parse_maps_columns_to_catalogue_metrics() -> None:
    stats = parse_net_dev(TWO_DEVICES)
    assert list(stats) == ["lo", "eth0"]
    assert stats["eth0"] == {
        "fleetwatch_network_receive_bytes_total": 5_000_000,
        "fleetwatch_network_receive_packets_total": 4000,
        "fleetwatch_network_receive_errors_total": 1,
        "fleetwatch_network_receive_drop_total": 2,
        "fleetwatch_network_transmit_bytes_total": 3_000_000,
        "fleetwatch_network_transmit_packets_total": 2500,
        "fleetwatch_network_transmit_errors_total": 3,
        "fleetwatch_network_transmit_drop_total": 4,
    }
    assert all(name in BY_NAME for name in stats["eth0"])


def test_parse_handles_counts_glued_to_the_colon() -> None:
    # Old kernels printed "%6s:%8lu", so a large byte count touches the colon.
    text = HEADER + "  eth0:12345678901 4000 0 0 0 0 0 0 99 2 0 0 0 0 0 0\n"
    assert parse_net_dev(text)["eth0"]["fleetwatch_network_receive_bytes_total"] == 12_345_678_901


def test_parse_keeps_64_bit_values_exact() -> None:
    big = 2**63 - 1
    text = HEADER + f"  ib0: {big} 1 0 0 0 0 0 0 {big} 1 0 0 0 0 0 0\n"
    assert parse_net_dev(text)["ib0"]["fleetwatch_network_transmit_bytes_total"] == big


@pytest.mark.parametrize("text, message", [
    ("", "header"),
    ("eth0: 1 2 3\n", "header"),
    (HEADER + "  eth0: 1 2 3\n", "16 counters"),
    (HEADER + "  eth0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n", "16 counters"),
    (HEADER + "  eth0: 1 2 x 4 5 6 7 8 9 10 11 12 13 14 15 16\n", "non-numeric"),
], ids=["empty", "no-header", "short-row", "no-colon", "non-numeric"])
def test_parse_rejects_malformed_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_net_dev(text)


@pytest.mark.parametrize("state, up", [
    ("up", 1.0), ("up\n", 1.0), ("down", 0.0), ("dormant", 0.0), ("lowerlayerdown", 0.0), ("unknown", 0.0),
], ids=["up", "up-newline", "down", "dormant", "lowerlayerdown", "unknown"])
def test_operstate(state: str, up: float) -> None:
    assert operstate_up(state) == up


@pytest.mark.parametrize("include, exclude, device, kept", [
    (None, "^lo$", "lo", False),
    (None, "^lo$", "eth0", True),
    (None, "^lo$", "lo0", True),
    ("^(eno|ib)", "^lo$", "ib0", True),
    ("^(eno|ib)", "^lo$", "docker0", False),
    ("^eno", "2$", "eno2", False),
    (None, None, "lo", True),
    (None, "", "lo", True),
], ids=["lo-excluded", "eth0-kept", "lo0-not-anchored-match", "include-ib", "include-misses",
        "include-and-exclude", "no-filter", "empty-exclude"])
def test_device_filter(include: str | None, exclude: str | None, device: str, kept: bool) -> None:
    assert DeviceFilter(include, exclude)(device) is kept


def test_source_reads_fixture_root() -> None:
    src = NetDevSource(fixture_ctx())
    batch = src.collect(TS)
    got = readings(batch)
    assert batch.source == "netdev" and batch.ts_ns == TS
    assert {e.id for e in batch.entity} == {"eno1", "eno2", "bond0", "ib0", "docker0"}  # lo excluded
    assert got[("fleetwatch_network_receive_bytes_total", "ib0")] == 52_012_345_678_901
    assert got[("fleetwatch_network_transmit_errors_total", "ib0")] == 1
    assert got[("fleetwatch_network_receive_drop_total", "eno1")] == 120
    assert got[("fleetwatch_network_up", "eno1")] == 1.0
    assert got[("fleetwatch_network_up", "eno2")] == 0.0
    assert got[("fleetwatch_network_up", "ib0")] == 1.0
    assert len(batch) == 5 * 9
    for metric, entity, _, extra in batch.rows():
        assert BY_NAME[metric].entity == "interface" and extra == ()
        assert entity.kind == "interface" and entity.node == NODE
        assert entity.labels == (NODE, entity.id) and len(entity.labels) == len(ENTITY_LABELS["interface"])


async def test_update_runs_collect_on_its_thread() -> None:
    src = NetDevSource(fixture_ctx(), device_include="^eno1$")
    try:
        batch = await src.update(TS)
    finally:
        await src.close()
    assert {e.id for e in batch.entity} == {"eno1"}
    assert readings(batch)[("fleetwatch_network_transmit_bytes_total", "eno1")] == 123_456_789_012


def write_root(tmp_path: Path, dev_text: str, operstates: dict[str, str]) -> SourceContext:
    """A proc/sys tree in tmp_path with the given /proc/net/dev and operstate files."""
    (tmp_path / "proc" / "net").mkdir(parents=True)
    (tmp_path / "proc" / "net" / "dev").write_text(dev_text)
    for device, state in operstates.items():
        (tmp_path / "sys" / "class" / "net" / device).mkdir(parents=True)
        (tmp_path / "sys" / "class" / "net" / device / "operstate").write_text(state + "\n")
    return SourceContext(node=NODE, proc_root=str(tmp_path / "proc"), sys_root=str(tmp_path / "sys"))


def test_missing_operstate_omits_up(tmp_path: Path) -> None:
    ctx = write_root(tmp_path, TWO_DEVICES, {})
    got = readings(NetDevSource(ctx).collect(TS))
    assert ("fleetwatch_network_receive_bytes_total", "eth0") in got
    assert not any(metric == "fleetwatch_network_up" for metric, _ in got)


def test_counters_are_exported_as_is_across_a_32_bit_wrap(tmp_path: Path) -> None:
    # A driver's 32-bit counter wraps; the source reports the kernel's value and leaves resets to rate().
    ctx = write_root(tmp_path, HEADER + "  eth0: 4294967000 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n", {"eth0": "up"})
    src = NetDevSource(ctx)
    before = readings(src.collect(TS))[("fleetwatch_network_receive_bytes_total", "eth0")]
    (tmp_path / "proc" / "net" / "dev").write_text(HEADER + "  eth0: 704 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n")
    after = readings(src.collect(TS + 10**9))[("fleetwatch_network_receive_bytes_total", "eth0")]
    assert (before, after) == (4_294_967_000, 704)


def test_missing_proc_net_dev_is_no_data(tmp_path: Path) -> None:
    ctx = SourceContext(node=NODE, proc_root=str(tmp_path / "proc"), sys_root=str(tmp_path / "sys"))
    with pytest.raises(NoDataError, match="net/dev"):
        NetDevSource(ctx).collect(TS)


def test_malformed_proc_net_dev_is_a_parse_error(tmp_path: Path) -> None:
    ctx = write_root(tmp_path, "garbage\n", {})
    with pytest.raises(SourceError, match="header") as info:
        NetDevSource(ctx).collect(TS)
    assert info.value.reason == "parse"


def test_registered_enabled_by_default() -> None:
    reg = REGISTRY["netdev"]
    assert reg.default_enabled is True and reg.factory is netdev.create
    assert set(reg.options) == {"device_include", "device_exclude"}


def test_factory_builds_a_filtered_source() -> None:
    src = create(fixture_ctx(), {"device_include": "^ib", "device_exclude": None})
    assert {e.id for e in src.collect(TS).entity} == {"ib0"}


@pytest.mark.parametrize("options, key", [
    ({"devices": "eth0"}, "devices"),
    ({"device_include": "("}, "device_include"),
    ({"device_exclude": 3}, "device_exclude"),
], ids=["unknown-key", "bad-regex", "not-a-string"])
def test_factory_rejects_bad_options(options: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=repr(key)):
        create(fixture_ctx(), options)
