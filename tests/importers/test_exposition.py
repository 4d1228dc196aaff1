"""Exposition importer: round trips through fleetwatch's renderer, dcgm-exporter and node_exporter snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collector.batch import Batch, Entity, entity_record, nvlink_entity
from collector.catalogue import BY_NAME, METRICS
from collector.exposition import Renderer, render_openmetrics
from collector.importers import InputError, import_exposition
from collector.importers.exposition import NODE_EXPORTER, SeriesMapper
from tests.conftest import sample_gpu
from tests.importers.helpers import FIXTURES, assert_layout, entities, latest, tree, values

EXPO = FIXTURES / "exposition"
T = 1_714_564_800 * 10**9
NODE = "gpu-node-1"


def _entities() -> dict[str, Entity]:
    gpu0, gpu1 = sample_gpu(NODE, 0), sample_gpu(NODE, 1)
    return {
        "gpu": gpu0, "gpu1": gpu1,
        "nvlink": nvlink_entity(gpu0, 3),
        "interface": Entity("interface", NODE, "eth0", (NODE, "eth0")),
        "ib_port": Entity("ib_port", NODE, "mlx5_0/1", (NODE, "mlx5_0", "1")),
        "rapl_zone": Entity("rapl_zone", NODE, "package-0", (NODE, "package-0")),
        "node": Entity("node", NODE, NODE, (NODE,)),
    }


def full_batch() -> Batch:
    """One reading of every recorded catalogue metric, with values that are awkward in binary."""
    ents = _entities()
    b = Batch("test", T)
    for i, m in enumerate(m for m in METRICS if m.record):
        value = 1234.5678 * (i + 1) + 0.1
        b.add(m.name, ents[m.entity], value)
        if m.entity == "gpu":
            b.add(m.name, ents["gpu1"], value / 3)
    return b


def _write(tmp_path: Path, name: str, data: bytes, mtime_ns: int = T) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


@pytest.mark.parametrize("fmt", ["text", "openmetrics"])
@pytest.mark.parametrize("names", ["native", "dcgm"])
def test_round_trip_through_fleetwatch_exposition(tmp_path: Path, names: str, fmt: str) -> None:
    batch = full_batch()
    renderer = Renderer(names)  # type: ignore[arg-type]
    data = renderer.render_text([batch]) if fmt == "text" else render_openmetrics(renderer, [batch])
    out = tmp_path / "trace"
    summary = import_exposition([_write(tmp_path, f"snap.{fmt}", data)], out, progress=False)
    expected = {}
    for metric, entity, value, _ in batch.rows():
        spec = BY_NAME[metric]
        if names == "dcgm" and not (spec.dcgm_default and entity.dcgm_labels):
            continue                                  # not exported under dcgm names
        expected[(entity.node, entity.id, metric, T)] = value
    got = values(out)
    assert got == pytest.approx(expected, rel=1e-12)
    assert summary.samples == len(expected) and summary.skipped == 0 and not summary.unknown
    imported = entities(out)
    for _, entity, _, _ in batch.rows():
        if (entity.node, entity.id) in imported:
            want = entity_record(entity)
            assert imported[(entity.node, entity.id)]["labels"] == __import__("json").loads(want["labels"])
    assert len(imported) == len({(n, e) for n, e, _, _ in expected})
    assert_layout(out)


def test_both_name_sets_keep_the_native_reading(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    src = _write(tmp_path, "e2e.txt", (FIXTURES / "e2e-output.txt").read_bytes())
    summary = import_exposition([src], out, progress=False)
    got = latest(out)
    k = ("gpu-node-1", "GPU-00000000-0000-0000-0000-000000000000")
    assert got[(*k, "fleetwatch_gpu_power_watts")] == 69.62
    assert got[(*k, "fleetwatch_gpu_framebuffer_free_bytes")] == 85018542080     # native bytes, not MiB × 2^20
    assert (*k, "fleetwatch_gpu_energy_joules_total") in got          # a counter without _total in dcgm
    assert ("gpu-node-1", "mlx5_0/1", "fleetwatch_infiniband_port_up") in got
    assert ("gpu-node-1", "eno1", "fleetwatch_network_receive_bytes_total") in got
    assert ("gpu-node-1", f"{k[1]}/nvlink0", "fleetwatch_nvlink_crc_flit_errors_total") in got
    assert {t for (*_, t) in values(out)} == {T}                                  # the file's mtime
    assert "fleetwatch_source_up (not recorded in traces)" in summary.unknown


def test_dcgm_exporter_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    summary = import_exposition([_write(tmp_path, "dcgm.txt", (EXPO / "dcgm-exporter.txt").read_bytes())], out,
                                progress=False)
    got = latest(out)
    g0 = ("dgx-07", "GPU-5e1a7a0e-3c8f-4b9e-9a41-0d2f6f1c2a11")
    g1 = ("dgx-07", "GPU-8f3b1d22-7a6c-4e0b-b2d5-91c4e7a3f0b2")
    assert got[(*g0, "fleetwatch_gpu_sm_clock_hertz")] == pytest.approx(1980e6)
    assert got[(*g0, "fleetwatch_gpu_power_watts")] == 612.347
    assert got[(*g0, "fleetwatch_gpu_energy_joules_total")] == pytest.approx(493105523.416)    # mJ → J
    assert got[(*g0, "fleetwatch_gpu_utilization_ratio")] == 1.0
    assert got[(*g1, "fleetwatch_gpu_utilization_ratio")] == 0.0              # not the MIG instance's 12 %
    assert got[(*g0, "fleetwatch_gpu_framebuffer_used_bytes")] == 19818 * 1024 * 1024
    assert got[(*g1, "fleetwatch_gpu_xid_last_code")] == 119.0
    assert got[(*g1, "fleetwatch_gpu_remapped_rows_correctable_total")] == 3.0
    assert got[(*g0, "fleetwatch_gpu_tensor_active_ratio")] == 0.61194
    assert summary.unknown == {"DCGM_FI_PROF_SM_OCCUPANCY": 2, "DCGM_FI_DEV_GPU_UTIL (MIG instance)": 1}
    e = entities(out)[g0]
    assert e["labels"] == {"node": "dgx-07", "gpu": "0", "uuid": g0[1], "pci_bus_id": "00000000:18:00.0",
                           "device": "nvidia0", "model_name": "NVIDIA H100 80GB HBM3", "driver_version": "550.90.07"}
    assert e["dcgm_labels"]["Hostname"] == "dgx-07" and e["dcgm_labels"]["modelName"] == "NVIDIA H100 80GB HBM3"


def test_node_exporter_snapshot(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    summary = import_exposition([_write(tmp_path, "ne.txt", (EXPO / "node-exporter.txt").read_bytes())], out,
                                node="dgx-07", progress=False)
    got = latest(out)
    assert got[("dgx-07", "eth0", "fleetwatch_network_receive_bytes_total")] == 24783297581
    assert got[("dgx-07", "eth0", "fleetwatch_network_receive_errors_total")] == 1
    assert got[("dgx-07", "eth0", "fleetwatch_network_up")] == 1
    assert got[("dgx-07", "lo", "fleetwatch_network_up")] == 0
    assert got[("dgx-07", "mlx5_0/1", "fleetwatch_infiniband_port_symbol_errors_total")] == 17
    assert got[("dgx-07", "mlx5_0/1", "fleetwatch_infiniband_port_up")] == 1.0     # state_id 4: ACTIVE
    assert got[("dgx-07", "mlx5_1/1", "fleetwatch_infiniband_port_up")] == 0.0     # state_id 1: DOWN
    assert got[("dgx-07", "mlx5_0/1", "fleetwatch_infiniband_port_data_received_bytes_total")] == 948637900964
    assert {m for (_, _, m) in got} == {BY_NAME[m].name for m, _ in NODE_EXPORTER.values()}
    assert set(summary.unknown) == {"go_goroutines", "node_cpu_seconds_total", "node_load1",
                                    "node_infiniband_physical_state_id"}
    assert entities(out)[("dgx-07", "mlx5_0/1")] == {"kind": "ib_port", "dcgm_labels": {},
                                                     "labels": {"node": "dgx-07", "device": "mlx5_0", "port": "1"}}


def test_sample_timestamps_and_time_option(tmp_path: Path) -> None:
    text = ('fleetwatch_node_power_watts{node="n1"} 1500.5 1714564800123\n'
            'fleetwatch_node_power_watts{node="n2"} 900\n')
    src = _write(tmp_path, "s.txt", text.encode(), mtime_ns=T + 10**9)
    out = tmp_path / "a"
    import_exposition([src], out, progress=False)
    assert values(out) == {("n1", "n1", "fleetwatch_node_power_watts", T + 123_000_000): 1500.5,
                           ("n2", "n2", "fleetwatch_node_power_watts", T + 10**9): 900.0}
    out = tmp_path / "b"
    import_exposition([src], out, time="2024-05-01T12:00:05Z", progress=False)
    assert values(out)[("n2", "n2", "fleetwatch_node_power_watts", T + 5 * 10**9)] == 900.0
    assert values(out)[("n1", "n1", "fleetwatch_node_power_watts", T + 123_000_000)] == 1500.5


def test_directory_of_snapshots_and_node_option(tmp_path: Path) -> None:
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    for i in range(3):
        _write(snaps, f"{i}.prom", f'DCGM_FI_DEV_GPU_TEMP{{gpu="0",UUID="GPU-x"}} {40 + i}\n'.encode(),
               mtime_ns=T + i * 10**9)
    out = tmp_path / "trace"
    summary = import_exposition([snaps], out, node="from-option", progress=False)
    assert summary.files == 3
    assert values(out) == {("from-option", "GPU-x", "fleetwatch_gpu_temperature_celsius", T + i * 10**9): 40.0 + i
                           for i in range(3)}


BAD_TEXT = ('# TYPE fleetwatch_node_power_watts gauge\n'
            'fleetwatch_node_power_watts{node="n1"} 10\n'
            'fleetwatch_node_power_watts{node="n2" 12a\n'
            'fleetwatch_node_power_watts{node="n3"} 30\n')


def test_malformed_sample_fails_naming_the_line(tmp_path: Path) -> None:
    src = _write(tmp_path, "bad.txt", BAD_TEXT.encode())
    want = r"bad\.txt:3: cannot parse sample 'fleetwatch_node_power_watts\{node=\"n2\" 12a'"
    with pytest.raises(InputError, match=want):
        import_exposition([src], tmp_path / "trace", progress=False)
    assert tree(tmp_path) == ["bad.txt"]


def test_malformed_sample_is_skipped(tmp_path: Path) -> None:
    src = _write(tmp_path, "bad.txt", BAD_TEXT.encode())
    out = tmp_path / "trace"
    summary = import_exposition([src], out, on_error="skip", progress=False)
    assert summary.skipped == 1
    assert {n for (n, *_) in values(out)} == {"n1", "n3"}


def test_missing_identity_label(tmp_path: Path) -> None:
    src = _write(tmp_path, "x.txt",
                 b'DCGM_FI_DEV_GPU_TEMP{gpu="0"} 40\nDCGM_FI_DEV_GPU_TEMP{gpu="1",UUID="GPU-b"} 41\n')
    want = r"x\.txt: sample 1 DCGM_FI_DEV_GPU_TEMP\{gpu=\"0\"\}: label 'UUID' is missing"
    with pytest.raises(InputError, match=want):
        import_exposition([src], tmp_path / "trace", progress=False)
    summary = import_exposition([src], tmp_path / "trace", on_error="skip", progress=False)
    assert summary.skipped == 1 and summary.samples == 1


@pytest.mark.parametrize(("name", "labels", "want"), [
    ("fleetwatch_gpu_power_watts", {"uuid": "GPU-a", "node": "n"}, ("fleetwatch_gpu_power_watts", "n", "GPU-a")),
    ("DCGM_FI_DEV_POWER_USAGE", {"UUID": "GPU-a", "Hostname": "h"}, ("fleetwatch_gpu_power_watts", "h", "GPU-a")),
    ("DCGM_FI_DEV_POWER_USAGE", {"UUID": "GPU-a"}, ("fleetwatch_gpu_power_watts", "fallback", "GPU-a")),
    ("fleetwatch_nvlink_replay_errors_total", {"uuid": "GPU-a", "link": "2"},
     ("fleetwatch_nvlink_replay_errors_total", "fallback", "GPU-a/nvlink2")),
    ("node_network_up", {"device": "eth1", "instance": "x:9100"}, ("fleetwatch_network_up", "fallback", "eth1")),
    ("fleetwatch_rapl_energy_joules_total", {"zone": "package-1", "node": "n"},
     ("fleetwatch_rapl_energy_joules_total", "n", "package-1")),
], ids=["native", "dcgm", "dcgm-no-hostname", "nvlink", "node-exporter", "rapl"])
def test_series_mapper(name: str, labels: dict[str, str], want: tuple[str, str, str]) -> None:
    m = SeriesMapper("fallback").map(name, labels)
    assert not isinstance(m, str)
    assert (m.metric, m.entity.node, m.entity.id) == want


def test_series_mapper_counter_suffix_quirk() -> None:
    # client_python's text parser names dcgm's counter samples <name>_total
    m = SeriesMapper().map("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total", {"UUID": "GPU-a"},
                           family="DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION")
    assert not isinstance(m, str) and m.metric == "fleetwatch_gpu_energy_joules_total" and m.convert(5000) == 5.0
    assert SeriesMapper().map("something_else", {}) == "something_else"
