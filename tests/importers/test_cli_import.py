"""`fleetwatch import`: the command line over every importer, its summary, errors and interruption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from collector.importers import nvidia_smi
from fleetwatch.cli import EXIT_USAGE, main
from tests.importers.helpers import FIXTURES, H100, SMI, events, tree, values

LOG = ("timestamp, uuid, power.draw [W], temperature.gpu, pcie.link.gen.max\n"
       "2024/05/01 12:00:00.000, GPU-0, 250.12 W, 45, 5\n"
       "2024/05/01 12:00:01.000, GPU-0, 12a.3 W, 46, 5\n"
       "2024/05/01 12:00:02.000, GPU-0, 251.00 W, 47, 5\n")


def _log(tmp_path: Path) -> Path:
    src = tmp_path / "gpu-log.csv"
    src.write_text(LOG)
    return src


def test_nvidia_smi_import_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace"
    rc = main(["import", "nvidia-smi", str(SMI / f"{H100}.idle.csv"), str(SMI / f"{H100}.load.csv"),
               "-o", str(out), "--node", "h100-box"])
    stdout = capsys.readouterr().out
    assert rc == 0
    assert f"imported nvidia-smi into {out}" in stdout and "files read:      2" in stdout
    assert "ignored accounting.buffer_size: 2" in stdout and "... and 162 more" in stdout
    assert {k[0] for k in values(out)} == {"h100-box"}


def test_malformed_line_exits_2_naming_it_and_leaves_nothing(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    src = _log(tmp_path)
    rc = main(["import", "nvidia-smi", str(src), "-o", str(tmp_path / "trace")])
    err = capsys.readouterr().err
    assert rc == EXIT_USAGE
    assert err.strip() == f"fleetwatch: import nvidia-smi: {src}:3: field 'power.draw [W]': cannot parse '12a.3 W' " \
                          "as a number"
    assert tree(tmp_path) == ["gpu-log.csv"]


def test_on_error_skip_counts_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _log(tmp_path)
    out = tmp_path / "trace"
    assert main(["import", "nvidia-smi", str(src), "-o", str(out), "--on-error", "skip"]) == 0
    stdout = capsys.readouterr().out
    assert "skipped:         1 bad line(s)/record(s)" in stdout
    assert f"skipped: {src}:3: field 'power.draw [W]'" in stdout
    assert "ignored pcie.link.gen.max: 2" in stdout
    assert len(values(out)) == 4


def test_second_import_adds_to_the_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace"
    assert main(["import", "smi-q", str(SMI / f"{H100}.idle.smi-q.txt"), "-o", str(out)]) == 0
    first = sorted(p for p in out.rglob("*.parquet") if "entities" not in p.parts)
    assert main(["import", "smi-q", str(SMI / f"{H100}.load.smi-q.txt"), "-o", str(out)]) == 0
    second = sorted(p for p in out.rglob("*.parquet") if "entities" not in p.parts)
    assert set(first) < set(second) and len(second) == 2
    assert len({k[3] for k in values(out)}) == 2


def test_keyboard_interrupt_exits_130_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = nvidia_smi.CsvImporter.read

    def read_then_interrupt(self: nvidia_smi.CsvImporter, *args: object, **kw: object) -> None:
        real_read(self, *args, **kw)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(nvidia_smi.CsvImporter, "read", read_then_interrupt)
    rc = main(["import", "nvidia-smi", str(SMI / f"{H100}.idle.csv"), "-o", str(tmp_path / "out" / "trace")])
    assert rc == 130
    assert tree(tmp_path) == []


def test_exposition_and_kernel_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trace"
    assert main(["import", "exposition", str(FIXTURES / "exposition" / "dcgm-exporter.txt"), "-o", str(out),
                 "--time", "2024-05-01T12:00:00Z"]) == 0
    assert {k[3] for k in values(out)} == {1714564800 * 10**9}
    assert main(["import", "kernel-log", str(FIXTURES / "kernel" / "dmesg-with-xid-119.log"), "-o", str(out),
                 "--node", "dgx-07"]) == 0
    assert len(events(out)) == 5
    assert "events:          5" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["import", "kernel-log", "{src}", "--timezone", "Mars/Base"], "unknown time zone 'Mars/Base'"),
    (["import", "exposition", "{missing}"], "no such file or directory"),
    (["import", "prometheus", "--url", "ftp://x", "--match", "up", "--start=-1h"], "--url must start with http"),
    (["import", "prometheus", "--url", "http://x", "--match", "up", "--start", "now-1h", "--step", "fast"],
     "cannot parse duration 'fast'"),
], ids=["timezone", "missing-file", "url", "step"])
def test_option_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                              message: str) -> None:
    src = _log(tmp_path)
    args = [a.format(src=src, missing=tmp_path / "nope") for a in argv] + ["-o", str(tmp_path / "trace")]
    assert main(args) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "trace").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
