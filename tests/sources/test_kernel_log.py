"""Kernel-log XIDs: the line parser on literal strings and the real sample, and the tailing source."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.batch import Batch, Entity, gpu_entity
from collector.source import REGISTRY, NoDataError, SourceContext
from collector.sources import kernel_log
from collector.sources.kernel_log import (
    KernelLogSource,
    XidLine,
    discover_gpus,
    normalize_pci,
    parse_xid_line,
)

SAMPLE = Path(__file__).parent.parent / "fixtures" / "kernel" / "dmesg-with-xid-119.log"
REAL_LINE = ("[Sun Feb 23 16:24:18 2025] NVRM: Xid (PCI:0000:9b:00): 119, pid=2024380, name=nvidia-smi, "
             "Timeout after 6s of waiting for RPC response from GPU4 GSP! Expected function 103 "
             "(GSP_RM_ALLOC) (0x2081 0x4).")
GSP_MSG = ("Timeout after 6s of waiting for RPC response from GPU4 GSP! Expected function 103 (GSP_RM_ALLOC) "
           "(0x2081 0x4).")


@pytest.mark.parametrize(("line", "want"), [
    (REAL_LINE, XidLine("0000:9b:00", 119, 2024380, "nvidia-smi", GSP_MSG)),
    ("4,2113,3423552018,-;NVRM: Xid (PCI:0000:9b:00): 119, pid=2024380, name=nvidia-smi, " + GSP_MSG,
     XidLine("0000:9b:00", 119, 2024380, "nvidia-smi", GSP_MSG)),
    ("[ 1234.567890] NVRM: Xid (PCI:0000:3b:00): 79, pid=0, GPU has fallen off the bus.",
     XidLine("0000:3b:00", 79, 0, None, "GPU has fallen off the bus.")),
    ("NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus.",
     XidLine("0000:18:00", 79, None, None, "GPU has fallen off the bus.")),
    ("Feb 23 16:24:18 gpu-node-3 kernel: NVRM: Xid (PCI:0000:B5:00): 13, Graphics SM Warp Exception on "
     "(GPC 0, TPC 0, SM 0): Out Of Range Address",
     XidLine("0000:b5:00", 13, None, None,
             "Graphics SM Warp Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address")),
    ("NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, pid=4242, name=python3, Ch 00000008, errorString CTX SWITCH "
     "TIMEOUT",
     XidLine("0000:01:00", 94, 4242, "python3", "Ch 00000008, errorString CTX SWITCH TIMEOUT")),
    ("NVRM: Xid (0000:41:00.0): 31, pid=77, name=train, Ch 00000010, intr 10000000. MMU Fault\r\n",
     XidLine("0000:41:00", 31, 77, "train", "Ch 00000010, intr 10000000. MMU Fault")),
    ("NVRM: Xid (PCI:0000:2a:00): 48", XidLine("0000:2a:00", 48, None, None, "")),
], ids=["dmesg-real", "kmsg", "uptime-no-name", "unknown-pid", "syslog-no-pid", "mig", "no-prefix", "bare"])
def test_parse_xid_line(line: str, want: XidLine) -> None:
    assert parse_xid_line(line) == want


@pytest.mark.parametrize("line", [
    "[Sun Feb 23 16:24:18 2025] NVRM: GPU at PCI:0000:9b:00: GPU-509665ad-b600-ac93-3616-d754b23d636d",
    "[Sun Feb 23 16:24:36 2025] NVRM: Rate limiting GSP RPC error prints for GPU at PCI:0000:9b:00",
    "NVRM: Xid (PCI:zzzz:9b:00): 119, x",
    "NVRM: Xid (PCI:0000:9b:00): abc, x",
    " SUBSYSTEM=pci",
    "",
])
def test_non_xid_lines(line: str) -> None:
    assert parse_xid_line(line) is None


@pytest.mark.parametrize(("raw", "want"), [
    ("PCI:0000:9B:00", "0000:9b:00"), ("00000000:9B:00.0", "0000:9b:00"), ("0000:9b:00.0", "0000:9b:00"),
    ("0001:02:1f", "0001:02:1f"), ("nvidia0", None), ("0000:9b", None),
])
def test_normalize_pci(raw: str, want: str | None) -> None:
    assert normalize_pci(raw) == want


def test_real_sample_has_five_xid_119_on_one_gpu() -> None:
    parsed = [p for line in SAMPLE.read_text().splitlines() if (p := parse_xid_line(line))]
    assert [(p.pci, p.xid) for p in parsed] == [("0000:9b:00", 119)] * 5
    assert [p.process for p in parsed] == ["nvidia-smi"] * 3 + ["cache_mgr_main", "gpud"]
    assert parsed[0].message == GSP_MSG


# --- the source ------------------------------------------------------------------------------------------

GPU4 = gpu_entity("node-1", 4, "GPU-509665ad-b600-ac93-3616-d754b23d636d", "00000000:9B:00.0",
                  "NVIDIA H100 80GB HBM3", "550.90.07")


@pytest.fixture
def ctx(tmp_path: Path) -> SourceContext:
    """A context whose proc root and rootfs live under tmp_path."""
    return SourceContext(node="node-1", proc_root=str(tmp_path / "proc"), rootfs=str(tmp_path))


@pytest.fixture
def made() -> Iterator[list[KernelLogSource]]:
    """Sources made by a test, closed after it."""
    out: list[KernelLogSource] = []
    yield out
    for s in out:
        s._close_fd()
        s._jobs.put(None)


def _source(made: list[KernelLogSource], ctx: SourceContext, *args: Any, **kwargs: Any) -> KernelLogSource:
    src = KernelLogSource(ctx, *args, **kwargs)
    made.append(src)
    return src


def _counts(batch: Batch) -> dict[tuple[str, str], float]:
    """{(entity id, xid): count} of the batch's fleetwatch_gpu_xid_errors_total series."""
    return {(e.id, x[0]): v for m, e, v, x in batch.rows() if m == "fleetwatch_gpu_xid_errors_total"}


def test_reads_the_real_sample_from_its_start(ctx: SourceContext, made: list[KernelLogSource],
                                              tmp_path: Path) -> None:
    log = tmp_path / "dmesg.log"
    log.write_bytes(SAMPLE.read_bytes())
    src = _source(made, ctx, str(log), from_start=True, gpus={"00000000:9B:00.0": GPU4})
    batch = src.collect(42)
    assert _counts(batch) == {(GPU4.id, "119"): 5}
    assert len(batch.events) == 5
    ev = batch.events[0]
    assert (ev.ts_ns, ev.node, ev.entity, ev.kind, ev.code) == (42, "node-1", GPU4.id, "xid", 119)
    assert ev.detail == f"GSP_RPC_TIMEOUT: GSP RPC Timeout (pid=2024380, name=nvidia-smi, {GSP_MSG})"
    again = src.collect(43)                           # nothing new: counters stay, no new events
    assert again.events == [] and _counts(again) == {(GPU4.id, "119"): 5}


def test_tails_from_the_end_and_handles_partial_lines_and_rotation(ctx: SourceContext,
                                                                   made: list[KernelLogSource],
                                                                   tmp_path: Path) -> None:
    log = tmp_path / "kern.log"
    log.write_bytes(SAMPLE.read_bytes())
    src = _source(made, ctx, str(log), gpus=lambda: {"0000:9b:00": GPU4})
    assert src.collect(1).events == []                # existing history is skipped
    with log.open("a") as f:
        f.write("[t] NVRM: Xid (PCI:0000:9b:00): 48, pid=1, name=a, Double Bit ECC\n[t] NVRM: Xid (PCI:00")
    b2 = src.collect(2)
    assert [e.code for e in b2.events] == [48]
    with log.open("a") as f:
        f.write("00:9b:00): 63, pid=1, name=a, remap\n")
    b3 = src.collect(3)
    assert [e.code for e in b3.events] == [63]        # the line split across two reads is whole
    assert _counts(b3) == {(GPU4.id, "48"): 1, (GPU4.id, "63"): 1}
    # Rotation: a new file under the same name is read from its start.
    log.rename(tmp_path / "kern.log.1")
    log.write_text("NVRM: Xid (PCI:0000:9b:00): 79, pid=0, GPU has fallen off the bus.\n")
    b4 = src.collect(4)
    assert [e.code for e in b4.events] == [79]
    # Truncation in place: also read from the start.
    log.write_text("NVRM: Xid (PCI:0000:9b:00): 31, x\n")
    assert [e.code for e in src.collect(5).events] == [31]
    assert _counts(src.collect(6))[(GPU4.id, "79")] == 1


def test_kmsg_records(ctx: SourceContext, made: list[KernelLogSource], tmp_path: Path) -> None:
    kmsg = tmp_path / "dev" / "kmsg"
    kmsg.parent.mkdir()
    kmsg.write_text("6,1,100,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  550.90.07\n"
                    " SUBSYSTEM=pci\n"
                    "4,2,200,-;NVRM: Xid (PCI:0000:9b:00): 119, pid=5, name=x, GSP timeout\n"
                    "4,3,300,-;NVRM: Xid (PCI:0000:aa:00): 43, pid=6, name=y, reset channel\n")
    # Default path is <rootfs>/dev/kmsg; kmsg=True takes the record-by-record reader.
    src = _source(made, ctx, from_start=True, kmsg=True, gpus={"0000:9b:00": GPU4})
    assert src.path == str(kmsg)
    batch = src.collect(7)
    assert [(e.entity, e.code) for e in batch.events] == [(GPU4.id, 119), ("PCI:0000:aa:00", 43)]
    assert _counts(batch) == {(GPU4.id, "119"): 1}                # unmapped GPUs have no series
    assert src.unmapped == {"0000:aa:00": {43: 1}}


def test_missing_or_unreadable_log_is_no_data(ctx: SourceContext, made: list[KernelLogSource],
                                              tmp_path: Path) -> None:
    with pytest.raises(NoDataError, match="does not exist"):
        _source(made, ctx).collect(1)
    locked = tmp_path / "locked.log"
    locked.write_text("")
    locked.chmod(0)
    if os.access(locked, os.R_OK):                     # root reads anything: nothing to check then
        assert _source(made, ctx, str(locked)).collect(1).events == []
    else:
        with pytest.raises(NoDataError, match="no permission"):
            _source(made, ctx, str(locked)).collect(1)


def _proc_gpu(root: Path, bus: str, uuid: str, minor: int) -> None:
    d = root / "driver" / "nvidia" / "gpus" / bus
    d.mkdir(parents=True)
    (d / "information").write_text(
        f"Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\nGPU UUID: \t {uuid}\n"
        "Video BIOS: \t 96.00.99.00.01\n"
        f"Bus Type: \t PCIe\nDMA Size: \t 52 bits\nBus Location: \t {bus}\nDevice Minor: \t {minor}\n"
        "GPU Excluded:\t No\n")


def test_gpus_discovered_from_proc_driver_nvidia(ctx: SourceContext, made: list[KernelLogSource],
                                                 tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    _proc_gpu(proc, "0000:9b:00.0", "GPU-bbbb", 4)
    _proc_gpu(proc, "0000:18:00.0", "GPU-aaaa", 0)
    (proc / "driver" / "nvidia" / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.90.07  Fri May 31 09:35:42 UTC 2024\n"
        "GCC version:  gcc version 12.3.0\n")
    gpus = discover_gpus(ctx)
    assert set(gpus) == {"0000:18:00", "0000:9b:00"}
    assert gpus["0000:18:00"].labels == ("node-1", "0", "GPU-aaaa", "00000000:18:00.0", "nvidia0",
                                         "NVIDIA H100 80GB HBM3", "550.90.07")
    assert gpus["0000:9b:00"].labels[1:5] == ("1", "GPU-bbbb", "00000000:9B:00.0", "nvidia4")
    log = tmp_path / "k.log"
    log.write_text("NVRM: Xid (PCI:0000:9b:00): 94, pid=1, name=a, contained\n")
    src = _source(made, ctx, str(log), from_start=True)
    assert _counts(src.collect(1)) == {("GPU-bbbb", "94"): 1}
    assert discover_gpus(SourceContext(node="n", proc_root=str(tmp_path / "none"))) == {}


def test_a_gpu_unknown_at_start_is_mapped_once_it_appears(ctx: SourceContext, made: list[KernelLogSource],
                                                          tmp_path: Path) -> None:
    known: dict[str, Entity] = {}
    log = tmp_path / "k.log"
    log.write_text("")
    src = _source(made, ctx, str(log), gpus=lambda: known)
    src.collect(1)
    known["00000000:9B:00.0"] = GPU4                 # the gpu source discovered it meanwhile
    with log.open("a") as f:
        f.write("NVRM: Xid (PCI:0000:9b:00): 119, pid=1, name=a, x\n")
    assert _counts(src.collect(2)) == {(GPU4.id, "119"): 1}


async def test_close_releases_the_file(ctx: SourceContext, tmp_path: Path) -> None:
    log = tmp_path / "k.log"
    log.write_text("")
    src = KernelLogSource(ctx, str(log))
    await src.update(1)
    assert src._fd is not None
    await src.close()
    assert src._fd is None


def test_registration_and_factory(ctx: SourceContext, made: list[KernelLogSource], tmp_path: Path) -> None:
    reg = REGISTRY["kernel_xid"]
    assert reg.default_enabled is False and reg.options == ("path", "from_start")
    src = kernel_log.create(ctx, {"path": str(tmp_path / "x.log"), "from_start": True})
    made.append(src)
    assert src.path == str(tmp_path / "x.log") and src.from_start is True
    default = kernel_log.create(ctx, {})
    made.append(default)
    assert default.path == os.path.join(str(tmp_path), "dev", "kmsg")
    for bad in ({"nope": 1}, {"from_start": "yes"}, {"path": 3}):
        with pytest.raises(ValueError, match="kernel_xid"):
            kernel_log.create(ctx, bad)
