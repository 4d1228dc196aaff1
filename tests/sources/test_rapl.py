"""Tests for the RAPL source: zone naming, wrap-around correction, and the source on the fake root."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from collector.batch import Batch
from collector.catalogue import BY_NAME, ENTITY_LABELS
from collector.source import REGISTRY, NoDataError, SourceContext
from collector.sources import rapl
from collector.sources.rapl import RaplSource, WrapCounter, create, zone_index, zone_labels

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NODE = "gpu-node-01"
TS = 1_767_225_600 * 10**9
METRIC = "fleetwatch_rapl_energy_joules_total"
RANGE_UJ = 262_143_328_850  # max_energy_range_uj of a current Xeon package


def fixture_ctx() -> SourceContext:
    """A context reading the shared fake root."""
    return SourceContext(node=NODE, proc_root=str(FIXTURES / "proc"), sys_root=str(FIXTURES / "sys"))


def readings(batch: Batch) -> dict[str, float]:
    """{zone label: joules} of a batch."""
    return {e.id: v for _, e, v, _ in batch.rows()}


@pytest.mark.parametrize("dirname, index", [
    ("intel-rapl:0", (0,)), ("intel-rapl:1", (1,)), ("intel-rapl:0:1", (0, 1)), ("intel-rapl:12:3", (12, 3)),
], ids=["pkg0", "pkg1", "subzone", "two-digit"])
def test_zone_index(dirname: str, index: tuple[int, ...]) -> None:
    assert zone_index(dirname) == index


@pytest.mark.parametrize("dirname", ["intel-rapl", "intel-rapl-mmio:0", "intel-rapl:x"],
                         ids=["control-type", "mmio", "not-numeric"])
def test_zone_index_rejects_other_entries(dirname: str) -> None:
    with pytest.raises(ValueError):
        zone_index(dirname)


@pytest.mark.parametrize("names, labels", [
    ({"intel-rapl:0": "package-0", "intel-rapl:0:0": "dram", "intel-rapl:1": "package-1"},
     {"intel-rapl:0": "package-0", "intel-rapl:0:0": "package-0/dram", "intel-rapl:1": "package-1"}),
    ({"intel-rapl:1:0": "core", "intel-rapl:0:0": "core", "intel-rapl:1": "package-1",
      "intel-rapl:0": "package-0"},
     {"intel-rapl:0": "package-0", "intel-rapl:0:0": "package-0/core", "intel-rapl:1": "package-1",
      "intel-rapl:1:0": "package-1/core"}),
    ({"intel-rapl:0": "package-0", "intel-rapl:1": "dram", "intel-rapl:2": "dram", "intel-rapl:3": "psys"},
     {"intel-rapl:0": "package-0", "intel-rapl:1": "dram-1", "intel-rapl:2": "dram-2", "intel-rapl:3": "psys"}),
    ({"intel-rapl:0:0": "dram", "intel-rapl:1:0": "dram"},
     {"intel-rapl:0:0": "dram-0:0", "intel-rapl:1:0": "dram-1:0"}),
], ids=["server", "client-two-packages", "duplicate-top-level", "orphan-subzones"])
def test_zone_labels_are_unique(names: dict[str, str], labels: dict[str, str]) -> None:
    assert zone_labels(names) == labels


@pytest.mark.parametrize("raw, expected_j", [
    ([1_000_000, 2_000_000, 3_500_000], [1.0, 2.0, 3.5]),
    ([5_000_000, 5_000_000], [5.0, 5.0]),
    ([RANGE_UJ - 1_000_000, 2_000_000], [(RANGE_UJ - 1_000_000) / 1e6, (RANGE_UJ + 2_000_000) / 1e6]),
    ([RANGE_UJ - 10, 5, RANGE_UJ - 10, 0],
     [(RANGE_UJ - 10) / 1e6, (RANGE_UJ + 5) / 1e6, (2 * RANGE_UJ - 10) / 1e6, 2 * RANGE_UJ / 1e6]),
], ids=["no-wrap", "flat", "one-wrap", "two-wraps"])
def test_wrap_counter_is_monotonic(raw: list[int], expected_j: list[float]) -> None:
    counter = WrapCounter()
    got = [counter.update(r, RANGE_UJ) for r in raw]
    assert got == pytest.approx(expected_j, abs=1e-6)
    assert got == sorted(got)


def test_source_reads_fixture_root() -> None:
    batch = RaplSource(fixture_ctx()).collect(TS)
    assert batch.source == "rapl"
    assert readings(batch) == pytest.approx({
        "package-0": 93_862.018391, "package-0/dram": 18_470.142352, "package-1": 88_124.365012})
    for metric, entity, _, extra in batch.rows():
        assert metric == METRIC and BY_NAME[metric].entity == "rapl_zone" and extra == ()
        assert entity.kind == "rapl_zone" and entity.node == NODE
        assert entity.labels == (NODE, entity.id) and len(entity.labels) == len(ENTITY_LABELS["rapl_zone"])


def make_zone(root: Path, dirname: str, name: str, energy_uj: int | None,
              range_uj: int | None = RANGE_UJ) -> Path:
    """One powercap zone directory in a tmp tree."""
    zone = root / "class" / "powercap" / dirname
    zone.mkdir(parents=True)
    (zone / "name").write_text(name + "\n")
    if energy_uj is not None:
        (zone / "energy_uj").write_text(f"{energy_uj}\n")
    if range_uj is not None:
        (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
    return zone


async def test_source_corrects_wraps_across_collections(tmp_path: Path) -> None:
    zone = make_zone(tmp_path, "intel-rapl:0", "package-0", 0)
    src = RaplSource(SourceContext(node=NODE, sys_root=str(tmp_path)))
    raw = [RANGE_UJ - 30_000_000, RANGE_UJ - 5_000_000, 20_000_000, 120_000_000, 1_000_000]
    joules = []
    try:
        for i, value in enumerate(raw):
            (zone / "energy_uj").write_text(f"{value}\n")
            joules.append(readings(await src.update(TS + i * 10**9))["package-0"])
    finally:
        await src.close()
    r = RANGE_UJ / 1e6
    assert joules == pytest.approx([r - 30, r - 5, r + 20, r + 120, 2 * r + 1])
    assert joules == sorted(joules)


def test_zone_without_range_or_energy_is_skipped(tmp_path: Path) -> None:
    make_zone(tmp_path, "intel-rapl:0", "package-0", 7_000_000)
    make_zone(tmp_path, "intel-rapl:1", "package-1", 8_000_000, range_uj=None)
    make_zone(tmp_path, "intel-rapl:2", "psys", None)
    (tmp_path / "class" / "powercap" / "intel-rapl").mkdir()  # the control type: not a zone
    got = readings(RaplSource(SourceContext(node=NODE, sys_root=str(tmp_path))).collect(TS))
    assert got == {"package-0": 7.0}


def test_unreadable_energy_is_no_data_with_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_zone(tmp_path, "intel-rapl:0", "package-0", 7_000_000)
    real = rapl.read_text

    def deny_energy(path: Path) -> str:
        if path.name == "energy_uj":  # what a non-root reader gets on Linux 5.10+
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(rapl, "read_text", deny_energy)
    with pytest.raises(NoDataError, match=r"energy_uj is readable only by root .*CVE-2020-8694"):
        RaplSource(SourceContext(node=NODE, sys_root=str(tmp_path))).collect(TS)


@pytest.mark.parametrize("make, message", [
    (lambda root: None, "does not exist"),
    (lambda root: (root / "class" / "powercap" / "intel-rapl").mkdir(parents=True), "no intel-rapl"),
    (lambda root: make_zone(root, "intel-rapl:0", "package-0", None), "none of the 1 zones"),
], ids=["no-powercap", "no-zones", "no-readable-zone"])
def test_no_rapl_is_no_data(tmp_path: Path, make: Callable[[Path], object], message: str) -> None:
    make(tmp_path)
    with pytest.raises(NoDataError, match=message):
        RaplSource(SourceContext(node=NODE, sys_root=str(tmp_path))).collect(TS)


def test_registered_enabled_by_default() -> None:
    assert REGISTRY["rapl"].default_enabled is True and REGISTRY["rapl"].factory is rapl.create


def test_factory_rejects_options() -> None:
    assert isinstance(create(fixture_ctx(), {}), RaplSource)
    with pytest.raises(ValueError, match="'zones'"):
        create(fixture_ctx(), {"zones": "package-0"})
