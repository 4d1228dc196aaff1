"""nvidia-smi -q importer: real dumps, driver-generation variants, several dumps per file, malformed input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from collector.catalogue import MIB
from collector.importers import InputError, import_smi_q
from collector.importers.smi_q import parse_dumps
from tests.importers.helpers import H100, SMI, assert_layout, entities, latest, tree, values

DUMPS = sorted(SMI.glob("*.smi-q.txt"))
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"


def _ns(*wall: int) -> int:
    return (dt.datetime(*wall, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(seconds=1) \
        * 10**9


@pytest.mark.parametrize("path", DUMPS, ids=[p.name.removesuffix(".smi-q.txt") for p in DUMPS])
def test_real_dump_imports(tmp_path: Path, path: Path) -> None:
    out = tmp_path / "trace"
    summary = import_smi_q([path], out, progress=False)
    got = latest(out)
    k = ("imported", UUID0)
    assert summary.samples == len(got) >= 19 and summary.skipped == 0
    for metric in ("temperature_celsius", "power_watts", "power_limit_watts", "sm_clock_hertz",
                   "memory_clock_hertz", "framebuffer_total_bytes", "framebuffer_used_bytes",
                   "performance_state", "clock_event_reasons", "pcie_replays_total"):
        assert (*k, f"fleetwatch_gpu_{metric}") in got, metric
    assert got[(*k, "fleetwatch_gpu_framebuffer_total_bytes")] % MIB == 0
    assert 0 < got[(*k, "fleetwatch_gpu_power_watts")] <= got[(*k, "fleetwatch_gpu_power_limit_watts")] * 1.2
    assert got[(*k, "fleetwatch_gpu_performance_state")] in (0.0, 2.0, 8.0)
    labels = entities(out)[k]["labels"]
    assert labels["pci_bus_id"].startswith("00000000:") and labels["model_name"].startswith("NVIDIA")
    assert labels["driver_version"] in path.name and labels["device"] == "nvidia0"
    assert_layout(out)


def test_h100_load_values(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    import_smi_q([SMI / f"{H100}.load.smi-q.txt"], out, progress=False)
    ts = _ns(2026, 7, 14, 8, 12, 53)
    v = {m: val for (_, _, m, t), val in values(out).items() if t == ts}
    assert v["fleetwatch_gpu_temperature_celsius"] == 59.0
    assert v["fleetwatch_gpu_memory_temperature_celsius"] == 55.0
    assert v["fleetwatch_gpu_power_watts"] == 629.45              # "Average Power Draw"
    assert v["fleetwatch_gpu_power_limit_watts"] == 700.0
    assert v["fleetwatch_gpu_sm_clock_hertz"] == 1980e6
    assert v["fleetwatch_gpu_utilization_ratio"] == 1.0
    assert v["fleetwatch_gpu_memory_copy_utilization_ratio"] == pytest.approx(0.11)
    assert v["fleetwatch_gpu_framebuffer_used_bytes"] == 19818 * MIB
    assert v["fleetwatch_gpu_ecc_sbe_volatile_total"] == 0.0
    assert v["fleetwatch_gpu_remapped_rows_pending"] == 0.0
    assert v["fleetwatch_gpu_pcie_replays_total"] == 9.0
    assert v["fleetwatch_gpu_pcie_transmit_bytes_per_second"] == 3092 * 1024
    assert v["fleetwatch_gpu_clock_event_reasons"] == 0.0
    assert "fleetwatch_gpu_fan_speed_ratio" not in v                # N/A on this board


def test_mig_blocks_are_not_read_as_the_gpu(tmp_path: Path) -> None:
    path = SMI / "linux-x86_64__nvidia-h200-mig__590.48.01.load.smi-q.txt"
    dump = parse_dumps(path.read_text().splitlines())[0]
    assert len(dump.gpus) == 1
    gpu = dump.gpus[0]
    assert gpu.fields[("FB Memory Usage", "Total")][0] == "143771 MiB"
    assert ("MIG Device", "ECC Errors", "Volatile", "SRAM Uncorrectable") in gpu.fields


GPU_BLOCK = """\
GPU 00000000:{bus}:00.0
    Product Name                          : NVIDIA A100-SXM4-80GB
    GPU UUID                              : GPU-{n}
    Minor Number                          : {minor}
    Fan Speed                             : 30 %
    Performance State                     : P{p}
    Clocks Throttle Reasons
        Idle                              : Not Active
        SW Power Cap                      : Active
        HW Slowdown                       : Not Active
            HW Thermal Slowdown           : Active
            HW Power Brake Slowdown       : Not Active
    ECC Errors
        Volatile
            Single Bit
                Device Memory             : 3
                Total                     : {sbe}
            Double Bit
                Device Memory             : 0
                Total                     : 0
        Aggregate
            Single Bit
                Total                     : 12
            Double Bit
                Total                     : 1
    Retired Pages
        Single Bit ECC                    : 2
        Double Bit ECC                    : 1
        Pending Page Blacklist            : Yes
    Temperature
        GPU Current Temp                  : {temp}
    Power Readings
        Power Draw                        : 312.40 W
        Enforced Power Limit              : 400.00 W
"""


def _dump(ts: str, temp: str = "51 C", sbe: str = "3") -> str:
    return ("\n==============NVSMI LOG==============\n\n"
            f"Timestamp                                 : {ts}\n"
            "Driver Version                            : 535.161.08\n\n"
            "Attached GPUs                             : 2\n"
            + GPU_BLOCK.format(bus="07", n="a", minor="2", p="0", temp=temp, sbe=sbe)
            + "\n" + GPU_BLOCK.format(bus="0F", n="b", minor="0", p="2", temp="40 C", sbe="0"))


def test_older_driver_layout_and_several_dumps_per_file(tmp_path: Path) -> None:
    src = tmp_path / "q.log"
    src.write_text(_dump("Mon Jan  8 10:00:00 2024") + _dump("Mon Jan  8 10:00:05 2024", temp="52 C"))
    out = tmp_path / "trace"
    summary = import_smi_q([src], out, node="dgx-1", progress=False)
    v = values(out)
    t0, t1 = _ns(2024, 1, 8, 10, 0, 0), _ns(2024, 1, 8, 10, 0, 5)
    a = ("dgx-1", "GPU-a")
    assert v[(*a, "fleetwatch_gpu_temperature_celsius", t0)] == 51.0
    assert v[(*a, "fleetwatch_gpu_temperature_celsius", t1)] == 52.0
    assert v[(*a, "fleetwatch_gpu_power_watts", t0)] == 312.4                  # "Power Readings / Power Draw"
    assert v[(*a, "fleetwatch_gpu_power_limit_watts", t0)] == 400.0
    assert v[(*a, "fleetwatch_gpu_ecc_sbe_volatile_total", t0)] == 3.0         # "Single Bit / Total"
    assert v[(*a, "fleetwatch_gpu_ecc_dbe_aggregate_total", t0)] == 1.0
    assert v[(*a, "fleetwatch_gpu_retired_pages_pending", t0)] == 1.0
    assert v[(*a, "fleetwatch_gpu_fan_speed_ratio", t0)] == 0.3
    # SW power cap (0x4) and HW thermal slowdown (0x40), nested under HW Slowdown
    assert v[(*a, "fleetwatch_gpu_clock_event_reasons", t0)] == 0x44
    assert v[("dgx-1", "GPU-b", "fleetwatch_gpu_performance_state", t0)] == 2.0
    ents = entities(out)
    assert ents[a]["labels"]["device"] == "nvidia2" and ents[a]["labels"]["gpu"] == "0"
    assert ents[("dgx-1", "GPU-b")]["labels"]["gpu"] == "1"
    assert summary.files == 1 and summary.samples == len(v)


def test_sram_dram_counts_are_summed(tmp_path: Path) -> None:
    text = """Timestamp : Tue Jul 14 08:12:53 2026
GPU 00000000:00:09.0
    GPU UUID : GPU-x
    ECC Errors
        Volatile
            SRAM Correctable                           : 2
            SRAM Uncorrectable Parity                  : 1
            SRAM Uncorrectable SEC-DED                 : 4
            DRAM Correctable                           : 5
            DRAM Uncorrectable                         : N/A
        Aggregate
            SRAM Correctable                           : N/A
            DRAM Correctable                           : N/A
            SRAM Threshold Exceeded                    : No
"""
    src = tmp_path / "q.txt"
    src.write_text(text)
    out = tmp_path / "trace"
    summary = import_smi_q([src], out, progress=False)
    got = {m: v for (_, _, m, _), v in values(out).items()}
    assert got == {"fleetwatch_gpu_ecc_sbe_volatile_total": 7.0, "fleetwatch_gpu_ecc_dbe_volatile_total": 5.0}
    assert summary.missing == 1          # aggregate corrected: all N/A


@pytest.mark.parametrize(("bad", "message"), [
    ("51 X C", "q.log:38: field 'Temperature/GPU Current Temp': cannot parse '51 X C' as a number"),
    ("hot", "q.log:38: field 'Temperature/GPU Current Temp': cannot parse 'hot' as a number"),
], ids=["garbled-unit", "word"])
def test_malformed_field_fails_and_leaves_nothing(tmp_path: Path, bad: str, message: str) -> None:
    src = tmp_path / "q.log"
    src.write_text(_dump("Mon Jan  8 10:00:00 2024", temp=bad))
    with pytest.raises(InputError) as err:
        import_smi_q([src], tmp_path / "trace", progress=False)
    assert str(err.value) == f"{tmp_path}/{message}"
    assert tree(tmp_path) == ["q.log"]


def test_malformed_gpu_block_is_skipped(tmp_path: Path) -> None:
    src = tmp_path / "q.log"
    src.write_text(_dump("Mon Jan  8 10:00:00 2024", temp="hot") + _dump("Mon Jan  8 10:00:05 2024"))
    out = tmp_path / "trace"
    summary = import_smi_q([src], out, on_error="skip", progress=False)
    assert summary.skipped == 1
    keys = {(e, t) for (_, e, _, t) in values(out)}
    # GPU a's first block is dropped whole; GPU b of that dump and both GPUs of the next one stay
    assert keys == {("GPU-b", _ns(2024, 1, 8, 10, 0, 0)), ("GPU-a", _ns(2024, 1, 8, 10, 0, 5)),
                    ("GPU-b", _ns(2024, 1, 8, 10, 0, 5))}


@pytest.mark.parametrize(("text", "message"), [
    ("GPU 00000000:00:09.0\n    GPU UUID : GPU-x\n", "x.txt:1: the dump has no 'Timestamp' line"),
    ("Timestamp : yesterday\nGPU 00000000:00:09.0\n    GPU UUID : GPU-x\n",
     "x.txt:1: field 'Timestamp': cannot parse 'yesterday' as a time"),
    ("hello world\n", "x.txt: no 'GPU <bus id>' blocks: not an nvidia-smi -q dump"),
], ids=["no-timestamp", "bad-timestamp", "not-a-dump"])
def test_unusable_dumps(tmp_path: Path, text: str, message: str) -> None:
    src = tmp_path / "x.txt"
    src.write_text(text)
    with pytest.raises(InputError) as err:
        import_smi_q([src], tmp_path / "trace", progress=False)
    assert str(err.value).startswith(f"{tmp_path}/{message}")
    summary = import_smi_q([src], tmp_path / "trace", on_error="skip", progress=False)
    assert summary.skipped == 1 and summary.samples == 0
    assert tree(tmp_path) == ["x.txt"]


def test_timezone_applies_to_the_timestamp_line(tmp_path: Path) -> None:
    src = tmp_path / "q.log"
    src.write_text(_dump("Mon Jan  8 10:00:00 2024"))
    out = tmp_path / "trace"
    import_smi_q([src], out, timezone="-05:00", progress=False)
    assert {t for (*_, t) in values(out)} == {_ns(2024, 1, 8, 15, 0, 0)}
