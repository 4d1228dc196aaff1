"""nvidia-smi --query-gpu CSV importer: real captures, edge cases as literal logs, malformed input."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from collector.catalogue import MIB
from collector.importers import InputError, import_nvidia_smi
from collector.importers.nvidia_smi import TimestampParser, parse_value
from tests.importers.helpers import H100, SMI, assert_layout, entities, latest, tree, values

CSVS = sorted(SMI.glob("*.csv"))
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"
TS = 1714564800 * 10**9        # 2024-05-01 12:00:00 UTC


def run(tmp_path: Path, text: str, name: str = "gpu-log.csv", **kw: object) -> tuple[Path, object]:
    """Import `text` as one log file into tmp_path/trace; (trace, summary)."""
    src = tmp_path / name
    src.write_text(text)
    out = tmp_path / "trace"
    return out, import_nvidia_smi([src], out, progress=False, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", CSVS, ids=[p.name.removesuffix(".csv") for p in CSVS])
def test_real_capture_imports(tmp_path: Path, path: Path) -> None:
    out = tmp_path / "trace"
    summary = import_nvidia_smi([path], out, progress=False)
    got = latest(out)
    assert summary.samples == len(got) >= 15
    assert summary.skipped == 0 and summary.files == 1
    # ~200 queried fields, most of which the catalogue does not map: counted, not errors
    assert len(summary.unknown) > 150
    assert "pci.device_id" in summary.unknown
    ents = entities(out)
    assert list(ents) == [("imported", UUID0)]
    labels = ents[("imported", UUID0)]["labels"]
    assert labels["model_name"].startswith("NVIDIA") and labels["driver_version"] in path.name
    assert labels["pci_bus_id"].startswith("00000000:") and labels["gpu"] == "0"
    key = ("imported", UUID0)
    assert 10 < got[(*key, "fleetwatch_gpu_temperature_celsius")] < 100
    assert 0 < got[(*key, "fleetwatch_gpu_power_watts")] < got[(*key, "fleetwatch_gpu_power_limit_watts")]
    assert got[(*key, "fleetwatch_gpu_framebuffer_total_bytes")] % MIB == 0
    if "mig" not in path.name:          # in MIG mode the whole-GPU utilisation is [N/A]
        assert 0 <= got[(*key, "fleetwatch_gpu_utilization_ratio")] <= 1
    assert got[(*key, "fleetwatch_gpu_sm_clock_hertz")] >= 1e8
    assert_layout(out)


def test_h100_capture_values(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    import_nvidia_smi([SMI / f"{H100}.idle.csv", SMI / f"{H100}.load.csv"], out, progress=False)
    v = values(out)
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    second = dt.timedelta(seconds=1)
    idle = (dt.datetime(2026, 7, 14, 8, 12, 38, tzinfo=dt.UTC) - epoch) // second * 10**9 + 696_000_000
    load = (dt.datetime(2026, 7, 14, 8, 12, 53, tzinfo=dt.UTC) - epoch) // second * 10**9 + 353_000_000
    k = ("imported", UUID0)
    assert v[(*k, "fleetwatch_gpu_power_watts", idle)] == 69.85
    assert v[(*k, "fleetwatch_gpu_power_watts", load)] == 631.95
    assert v[(*k, "fleetwatch_gpu_framebuffer_total_bytes", idle)] == 81559 * MIB
    assert v[(*k, "fleetwatch_gpu_sm_clock_hertz", idle)] == 345e6           # clocks.current.sm alias
    assert v[(*k, "fleetwatch_gpu_memory_clock_hertz", load)] == 2619e6
    assert v[(*k, "fleetwatch_gpu_utilization_ratio", load)] == 1.0
    assert v[(*k, "fleetwatch_gpu_clock_event_reasons", idle)] == 1.0         # 0x...0001: GPU idle
    assert v[(*k, "fleetwatch_gpu_performance_state", idle)] == 0.0           # P0
    assert v[(*k, "fleetwatch_gpu_remapped_rows_pending", idle)] == 0.0       # "No"
    assert (*k, "fleetwatch_gpu_fan_speed_ratio", idle) not in v            # [N/A]: no row


HEADER = "timestamp, name, pci.bus_id, driver_version, uuid, index, power.draw [W], temperature.gpu, memory.used [MiB]"


def _row(ts: str, i: int, power: str = "250.12 W", temp: str = "45", mem: str = "81559 MiB") -> str:
    return (f"{ts}, NVIDIA H100 80GB HBM3, 00000000:{0x18 + i:02X}:00.0, 550.90.07, GPU-{i}, {i}, {power}, {temp}, "
            f"{mem}")


CASES = {
    "units-in-header-and-values": (
        f"{HEADER}\n{_row('2024/05/01 12:00:00.000', 0)}\n",
        {("GPU-0", "fleetwatch_gpu_power_watts", TS): 250.12,
         ("GPU-0", "fleetwatch_gpu_temperature_celsius", TS): 45.0,
         ("GPU-0", "fleetwatch_gpu_framebuffer_used_bytes", TS): 81559 * MIB}),
    "nounits": (
        "timestamp, uuid, power.draw [W], utilization.gpu [%], clocks.sm [MHz]\n"
        "2024/05/01 12:00:00.500, GPU-0, 99.5, 45, 1410\n",
        {("GPU-0", "fleetwatch_gpu_power_watts", TS + 5 * 10**8): 99.5,
         ("GPU-0", "fleetwatch_gpu_utilization_ratio", TS + 5 * 10**8): 0.45,
         ("GPU-0", "fleetwatch_gpu_sm_clock_hertz", TS + 5 * 10**8): 1410e6}),
    "no-units-anywhere": (
        "timestamp,uuid,power.draw,fan.speed\n2024/05/01 12:00:00,GPU-0,300,80\n",
        {("GPU-0", "fleetwatch_gpu_power_watts", TS): 300.0, ("GPU-0", "fleetwatch_gpu_fan_speed_ratio", TS): 0.8}),
    "unavailable-values": (
        f"{HEADER}\n{_row('2024/05/01 12:00:00.000', 0, power='[N/A]', temp='[Not Supported]', mem='N/A')}\n"
        f"{_row('2024/05/01 12:00:01.000', 0, power='[Unknown Error]', temp='', mem='1 MiB')}\n",
        {("GPU-0", "fleetwatch_gpu_framebuffer_used_bytes", TS + 10**9): MIB}),
    "interleaved-gpus-and-repeated-headers": (
        f"{HEADER}\n{_row('2024/05/01 12:00:00.000', 0)}\n{_row('2024/05/01 12:00:00.001', 1, power='70 W')}\n"
        f"{HEADER}\n{_row('2024/05/01 12:00:05.000', 0, power='251 W')}\n"
        f"{_row('2024/05/01 12:00:05.001', 1, power='71 W')}\n",
        {("GPU-0", "fleetwatch_gpu_power_watts", TS): 250.12,
         ("GPU-1", "fleetwatch_gpu_power_watts", TS + 10**6): 70.0,
         ("GPU-0", "fleetwatch_gpu_power_watts", TS + 5 * 10**9): 251.0,
         ("GPU-1", "fleetwatch_gpu_power_watts", TS + 5 * 10**9 + 10**6): 71.0}),
    "hex-pstate-yes-no": (
        "timestamp, uuid, clocks_event_reasons.active, pstate, retired_pages.pending, remapped_rows.failure\n"
        "2024/05/01 12:00:00.000, GPU-0, 0x0000000000000044, P8, Yes, No\n",
        {("GPU-0", "fleetwatch_gpu_clock_event_reasons", TS): 0x44,
         ("GPU-0", "fleetwatch_gpu_performance_state", TS): 8.0,
         ("GPU-0", "fleetwatch_gpu_retired_pages_pending", TS): 1.0,
         ("GPU-0", "fleetwatch_gpu_remapped_rows_failed", TS): 0.0}),
    "old-throttle-name-and-aliases": (
        "timestamp, gpu_uuid, clocks_throttle_reasons.active, clocks.current.memory [MHz]\n"
        "2024/05/01 12:00:00.000, GPU-0, 0x4, 2619 MHz\n",
        {("GPU-0", "fleetwatch_gpu_clock_event_reasons", TS): 4.0,
         ("GPU-0", "fleetwatch_gpu_memory_clock_hertz", TS): 2619e6}),
    "gpu-lost": (
        "timestamp, uuid, power.draw [W]\n2024/05/01 12:00:00.000, GPU-0, [GPU is lost]\n",
        {("GPU-0", "fleetwatch_gpu_lost", TS): 1.0}),
    "windows-line-endings-and-bom": (
        "\ufefftimestamp, uuid, temperature.gpu\r\n2024/05/01 12:00:00.000, GPU-0, 33\r\n",
        {("GPU-0", "fleetwatch_gpu_temperature_celsius", TS): 33.0}),
    "index-only": (
        "timestamp, index, temperature.gpu\n2024/05/01 12:00:00.000, 3, 33\n",
        {("gpu3", "fleetwatch_gpu_temperature_celsius", TS): 33.0}),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_literal_logs(tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    out, _ = run(tmp_path, text)
    metrics = {m for _, m, _ in expected}
    got = {(e, m, ts): v for (_, e, m, ts), v in values(out).items() if m in metrics}
    assert got == pytest.approx(expected)


def test_identity_and_hostname_column(tmp_path: Path) -> None:
    out, _ = run(tmp_path, f"{HEADER}, hostname\n{_row('2024/05/01 12:00:00.000', 2)}, gpu-node-7\n"
                 f"{_row('2024/05/01 12:00:00.000', 0)}, [N/A]\n", node="fallback")
    ents = entities(out)
    assert set(ents) == {("gpu-node-7", "GPU-2"), ("fallback", "GPU-0")}
    e = ents[("gpu-node-7", "GPU-2")]
    assert e["labels"] == {"node": "gpu-node-7", "gpu": "2", "uuid": "GPU-2", "pci_bus_id": "00000000:1A:00.0",
                           "device": "nvidia2", "model_name": "NVIDIA H100 80GB HBM3", "driver_version": "550.90.07"}
    assert e["dcgm_labels"]["Hostname"] == "gpu-node-7" and e["dcgm_labels"]["UUID"] == "GPU-2"


def test_noheader_log_with_fields(tmp_path: Path) -> None:
    text = "2024/05/01 12:00:00.000, GPU-0, 250.00 W\n2024/05/01 12:00:01.000, GPU-0, 251.00 W\n"
    out, _ = run(tmp_path, text, fields="--query-gpu=timestamp,uuid,power.draw")
    assert sorted(values(out).values()) == [250.0, 251.0]
    with pytest.raises(InputError, match=r"again\.csv:1: a data line before any header.*--fields"):
        run(tmp_path, text, name="again.csv")


def test_timezone(tmp_path: Path) -> None:
    text = "timestamp, uuid, temperature.gpu\n2024/05/01 14:00:00.000, GPU-0, 33\n"
    out, _ = run(tmp_path, text, timezone="Europe/Paris")
    assert list(values(out)) == [("imported", "GPU-0", "fleetwatch_gpu_temperature_celsius", TS)]


def test_unknown_fields_are_counted(tmp_path: Path) -> None:
    text = ("timestamp, uuid, temperature.gpu, pcie.link.gen.max, vbios_version\n"
            "2024/05/01 12:00:00.000, GPU-0, 33, 5, 96.00.A5.00.01\n2024/05/01 12:00:01.000, GPU-0, 34, 5, x\n")
    _, summary = run(tmp_path, text)
    assert dict(summary.unknown) == {"pcie.link.gen.max": 2, "vbios_version": 2}
    assert "ignored vbios_version: 2" in str(summary)


BAD = {
    "bad-number": ("gpu-log.csv:3: field 'power.draw [W]': cannot parse '12a.3 W' as a number",
                   _row("2024/05/01 12:00:01.000", 0, power="12a.3 W")),
    "bad-timestamp": ("gpu-log.csv:3: field 'timestamp': cannot parse '2024-05-01 12:00' as a timestamp",
                      _row("2024-05-01 12:00", 0)),
    "missing-fields": ("gpu-log.csv:3: expected 9 fields as in the header, got 3", "2024/05/01 12:00:01.000, a, b"),
    "bad-index": ("gpu-log.csv:3: field 'index': cannot parse 'x'", _row("2024/05/01 12:00:01.000", 0).replace(
        ", 0, 250", ", x, 250")),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_malformed_line_fails_and_leaves_nothing(tmp_path: Path, case: str) -> None:
    message, line = BAD[case]
    text = f"{HEADER}\n{_row('2024/05/01 12:00:00.000', 0)}\n{line}\n{_row('2024/05/01 12:00:02.000', 0)}\n"
    with pytest.raises(InputError) as err:
        run(tmp_path, text)
    assert str(err.value).startswith(str(tmp_path / message.split(":")[0]) + message[len("gpu-log.csv"):])
    assert tree(tmp_path) == ["gpu-log.csv"]


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_malformed_line_is_skipped_and_counted(tmp_path: Path, case: str) -> None:
    _, line = BAD[case]
    text = f"{HEADER}\n{_row('2024/05/01 12:00:00.000', 0)}\n{line}\n{_row('2024/05/01 12:00:02.000', 0)}\n"
    out, summary = run(tmp_path, text, on_error="skip")
    assert summary.skipped == 1 and ":3:" in summary.problems[0]
    assert {ts for (_, _, _, ts) in values(out)} == {TS, TS + 2 * 10**9}    # the bad row left no value at all
    assert "skipped:         1" in str(summary)


def test_header_without_timestamp_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no 'timestamp' field"):
        run(tmp_path, "uuid, temperature.gpu\nGPU-0, 33\n")
    with pytest.raises(InputError, match=r"no uuid, pci\.bus_id or index"):
        run(tmp_path, "timestamp, temperature.gpu\n2024/05/01 12:00:00.000, 33\n", name="b.csv")


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        import_nvidia_smi([tmp_path / "nope.csv"], tmp_path / "t", progress=False)


@pytest.mark.parametrize(("text", "unit", "want"), [
    ("250.12 W", "W", 250.12), ("250.12", None, 250.12), ("81559 MiB", None, 81559.0), ("45 %", "%", 45.0),
    ("0x00000000000001FF", None, 511.0), ("P12", None, 12.0), ("Not Active", None, 0.0), ("Enabled", None, 1.0),
    ("[N/A]", "W", None), ("N/A", None, None), ("", None, None), ("-8 C", None, -8.0), ("1e3", None, 1000.0),
], ids=str)
def test_parse_value(text: str, unit: str | None, want: float | None) -> None:
    assert parse_value(text, unit) == want


@pytest.mark.parametrize("text", ["12a.3 W", "0xZZ", "P", "maybe"], ids=str)
def test_parse_value_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="cannot parse"):
        parse_value(text)


def test_timestamp_parser_fractions_and_hour_cache() -> None:
    p = TimestampParser(dt.UTC)
    assert p("2024/05/01 12:00:00.123") == TS + 123_000_000
    assert p("2024/05/01 12:59:59.5") == TS + 3599 * 10**9 + 500_000_000
    assert p("2024/05/01 13:00:00") == TS + 3600 * 10**9
    with pytest.raises(ValueError):
        p("2024/05/01 12:61:00")
