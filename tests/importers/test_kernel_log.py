"""Kernel-log importer: NVRM Xid lines of dmesg, syslog, journal and kmsg text into the events table."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from collector.importers import InputError, import_kernel_log
from collector.trace_io import read_metrics
from collector.xid import describe
from tests.importers.helpers import FIXTURES, assert_layout, entities, events, tree

UUID = "GPU-509665ad-b600-ac93-3616-d754b23d636d"
XID = "NVRM: Xid (PCI:0000:9b:00): 79, pid=1234, name=python3, GPU has fallen off the bus."
GPU_AT = "NVRM: GPU at PCI:0000:9b:00: " + UUID


def _ns(*wall: int) -> int:
    return (dt.datetime(*wall, tzinfo=dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(seconds=1) \
        * 10**9


def run(tmp_path: Path, text: str, mtime: dt.datetime | None = None, **kw: object) -> Path:
    """Import `text` as kern.log (optionally with that modification time) into tmp_path/trace."""
    src = tmp_path / "kern.log"
    src.write_text(text)
    if mtime is not None:
        os.utime(src, (mtime.timestamp(), mtime.timestamp()))
    out = tmp_path / "trace"
    import_kernel_log([src], out, progress=False, **kw)  # type: ignore[arg-type]
    return out


def test_real_dmesg_with_xid_119(tmp_path: Path) -> None:
    out = tmp_path / "trace"
    summary = import_kernel_log([FIXTURES / "kernel" / "dmesg-with-xid-119.log"], out, node="dell-xe9680",
                                progress=False)
    evs = events(out)
    assert summary.events == len(evs) == 5 and summary.samples == 0
    assert {e["code"] for e in evs} == {119} and {e["kind"] for e in evs} == {"xid"}
    assert {e["entity"] for e in evs} == {UUID}                 # mapped by the "GPU at PCI" line
    assert evs[0]["ts"] == _ns(2025, 2, 23, 16, 24, 18)
    assert evs[0]["detail"].startswith(describe(119))
    assert "pid=2024380, name=nvidia-smi, Timeout after 6s" in evs[0]["detail"]
    ent = entities(out)[("dell-xe9680", UUID)]
    assert ent["labels"]["pci_bus_id"] == "00000000:9B:00.0" and ent["labels"]["uuid"] == UUID
    assert read_metrics(out).num_rows == 0
    assert_layout(out)


LINES = {
    "dmesg-T": (f"[Sun Feb 23 16:24:18 2025] {GPU_AT}\n[Sun Feb 23 16:24:19 2025] {XID}\n", {},
                _ns(2025, 2, 23, 16, 24, 19), "imported"),
    "syslog": (f"Feb 23 16:24:18 gpu-07 kernel: {GPU_AT}\nFeb 23 16:24:19 gpu-07 kernel: [ 812.5] {XID}\n",
               {"year": 2025}, _ns(2025, 2, 23, 16, 24, 19), "gpu-07"),
    "journal-iso": (f"2025-02-23T17:24:18+01:00 gpu-07 kernel: {GPU_AT}\n"
                    f"2025-02-23T17:24:19.250000+01:00 gpu-07 kernel: {XID}\n", {},
                    _ns(2025, 2, 23, 16, 24, 19) + 250_000_000, "gpu-07"),
    "uptime": (f"[  100.000000] {GPU_AT}\n[  812.500000] {XID}\n", {"boot_time": "2025-02-23T16:00:00Z"},
               _ns(2025, 2, 23, 16, 13, 32) + 500_000_000, "imported"),
    "kmsg": (f"6,1,100000000,-;{GPU_AT}\n4,2,812500000,-;{XID}\n", {"boot_time": "2025-02-23T16:00:00Z"},
             _ns(2025, 2, 23, 16, 13, 32) + 500_000_000, "imported"),
    "dmesg-T-timezone": (f"[Sun Feb 23 17:24:19 2025] {GPU_AT}\n[Sun Feb 23 17:24:19 2025] {XID}\n",
                         {"timezone": "Europe/Berlin"}, _ns(2025, 2, 23, 16, 24, 19), "imported"),
}


@pytest.mark.parametrize("case", list(LINES), ids=list(LINES))
def test_timestamp_forms(tmp_path: Path, case: str) -> None:
    text, options, ts, node = LINES[case]
    evs = events(run(tmp_path, text, **options))
    assert len(evs) == 1
    e = evs[0]
    assert (e["ts"], e["node"], e["entity"], e["code"]) == (ts, node, UUID, 79)
    assert e["detail"] == f"{describe(79)} (pid=1234, name=python3, GPU has fallen off the bus.)"


def test_syslog_year_from_mtime_rolls_back_over_new_year(tmp_path: Path) -> None:
    text = f"Dec 31 23:59:59 h kernel: {XID}\nJan  1 00:00:01 h kernel: {XID}\n"
    evs = events(run(tmp_path, text, mtime=dt.datetime(2025, 1, 2, 12, 0)))
    assert [e["ts"] for e in evs] == [_ns(2024, 12, 31, 23, 59, 59), _ns(2025, 1, 1, 0, 0, 1)]


def test_unmapped_gpu_keeps_its_pci_location(tmp_path: Path) -> None:
    out = run(tmp_path, f"[Sun Feb 23 16:24:19 2025] {XID.replace('9b:00', '1a:00')}\n", node="n1")
    assert events(out)[0]["entity"] == "PCI:0000:1a:00"
    assert entities(out)[("n1", "PCI:0000:1a:00")]["labels"]["pci_bus_id"] == "00000000:1A:00.0"


def test_mapping_is_per_host(tmp_path: Path) -> None:
    text = (f"Feb 23 16:24:18 host-a kernel: {GPU_AT}\nFeb 23 16:24:19 host-a kernel: {XID}\n"
            f"Feb 23 16:24:19 host-b kernel: {XID}\n")
    evs = events(run(tmp_path, text, year=2025))
    assert {(e["node"], e["entity"]) for e in evs} == {("host-a", UUID), ("host-b", "PCI:0000:9b:00")}


def test_seconds_since_boot_without_boot_time_fails_naming_the_line(tmp_path: Path) -> None:
    text = f"[  100.000000] {GPU_AT}\n[  812.500000] {XID}\n"
    with pytest.raises(InputError) as err:
        run(tmp_path, text)
    assert str(err.value) == (f"{tmp_path}/kern.log:2: cannot place 'NVRM: Xid ... 79' in time: its time is "
                              "counted from boot: pass --boot-time")
    assert tree(tmp_path) == ["kern.log"]


def test_line_without_time_is_skipped(tmp_path: Path) -> None:
    text = f"{XID}\n[Sun Feb 23 16:24:19 2025] {XID}\n"
    src = tmp_path / "kern.log"
    src.write_text(text)
    summary = import_kernel_log([src], tmp_path / "trace", on_error="skip", progress=False)
    assert summary.skipped == 1 and summary.events == 1
    assert "kern.log:1: cannot place" in summary.problems[0]


def test_log_without_xids_writes_nothing(tmp_path: Path) -> None:
    src = tmp_path / "kern.log"
    src.write_text("[Sun Feb 23 16:24:18 2025] usb 1-1: new device\n")
    summary = import_kernel_log([src], tmp_path / "trace", progress=False)
    assert summary.events == 0 and tree(tmp_path) == ["kern.log"]
