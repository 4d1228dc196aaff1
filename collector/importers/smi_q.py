"""Import `nvidia-smi -q` text dumps into a trace: one snapshot per dump, at its "Timestamp" line.

A dump is an indented `Key : value` tree with one `GPU 00000000:18:00.0` block per GPU. Each block is
flattened to paths ("Temperature", "GPU Current Temp") and the readings the catalogue knows are taken from
them: temperatures, power draw and enforced limit, clocks, utilisation, framebuffer memory, volatile and
aggregate ECC totals, retired pages, remapped rows, performance state, fan speed, PCIe replays and
throughput, and the clock-event (throttle) reasons as the NVML bitmask. Driver generations spell some
paths differently (`Power Readings`/`GPU Power Readings`, `Clocks Throttle Reasons`/`Clocks Event
Reasons`, ECC as `Single Bit`/`Double Bit` totals or as SRAM and DRAM counts), so each reading lists the
paths it may come from. MIG instances' blocks nest under `MIG Device` and are not read.

A file may hold several dumps (`nvidia-smi -q -l N` appends them); the record that --on-error skip drops
is one GPU's block of one dump.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collector.batch import Entity
from collector.catalogue import CLOCK_EVENT_REASONS, MIB
from collector.importers._writer import (
    ImportSummary,
    InputError,
    Reporter,
    TraceWriter,
    input_files,
    parse_timezone,
    progress_bar,
    wall_to_ns,
)
from collector.importers.nvidia_smi import DEFAULT_NODE, is_unavailable, parse_value

FieldPath = tuple[str, ...]
KIB = 1024.0   # nvidia-smi's "KB/s" PCIe throughput is NVML's KiB/s (collector/sources/nvml.py does the same)

# metric → (paths it may be read from, first present wins; scale to the base unit)
READINGS: dict[str, tuple[tuple[FieldPath, ...], float]] = {
    "fleetwatch_gpu_temperature_celsius": ((("Temperature", "GPU Current Temp"),), 1.0),
    "fleetwatch_gpu_memory_temperature_celsius": ((("Temperature", "Memory Current Temp"),), 1.0),
    # Before driver 535 "Power Draw"; later the average (NVML's power usage) or, where averaging is not
    # supported, the instantaneous draw, the order nvidia-smi's power.draw itself follows.
    "fleetwatch_gpu_power_watts": ((("Power Readings", "Power Draw"), ("GPU Power Readings", "Power Draw"),
                                    ("GPU Power Readings", "Average Power Draw"),
                                    ("GPU Power Readings", "Instantaneous Power Draw")), 1.0),
    "fleetwatch_gpu_power_limit_watts": ((("Power Readings", "Enforced Power Limit"),
                                          ("GPU Power Readings", "Enforced Power Limit"),
                                          ("GPU Power Readings", "Current Power Limit"),
                                          ("GPU Power Readings", "GPU Ceiling Power Limit", "Current Power Limit")),
                                         1.0),
    "fleetwatch_gpu_sm_clock_hertz": ((("Clocks", "SM"),), 1e6),
    "fleetwatch_gpu_memory_clock_hertz": ((("Clocks", "Memory"),), 1e6),
    "fleetwatch_gpu_utilization_ratio": ((("Utilization", "GPU"), ("Utilization", "Gpu")), 0.01),
    "fleetwatch_gpu_memory_copy_utilization_ratio": ((("Utilization", "Memory"),), 0.01),
    "fleetwatch_gpu_encoder_utilization_ratio": ((("Utilization", "Encoder"),), 0.01),
    "fleetwatch_gpu_decoder_utilization_ratio": ((("Utilization", "Decoder"),), 0.01),
    "fleetwatch_gpu_framebuffer_total_bytes": ((("FB Memory Usage", "Total"),), MIB),
    "fleetwatch_gpu_framebuffer_reserved_bytes": ((("FB Memory Usage", "Reserved"),), MIB),
    "fleetwatch_gpu_framebuffer_used_bytes": ((("FB Memory Usage", "Used"),), MIB),
    "fleetwatch_gpu_framebuffer_free_bytes": ((("FB Memory Usage", "Free"),), MIB),
    "fleetwatch_gpu_performance_state": ((("Performance State",),), 1.0),
    "fleetwatch_gpu_fan_speed_ratio": ((("Fan Speed",),), 0.01),
    "fleetwatch_gpu_retired_pages_sbe_total": ((("Retired Pages", "Single Bit ECC"),), 1.0),
    "fleetwatch_gpu_retired_pages_dbe_total": ((("Retired Pages", "Double Bit ECC"),), 1.0),
    "fleetwatch_gpu_retired_pages_pending": ((("Retired Pages", "Pending Page Blacklist"),
                                              ("Retired Pages", "Pending Page Retirement"),
                                              ("Retired Pages", "Pending")), 1.0),
    "fleetwatch_gpu_remapped_rows_correctable_total": ((("Remapped Rows", "Correctable Error"),), 1.0),
    "fleetwatch_gpu_remapped_rows_uncorrectable_total": ((("Remapped Rows", "Uncorrectable Error"),), 1.0),
    "fleetwatch_gpu_remapped_rows_pending": ((("Remapped Rows", "Pending"),), 1.0),
    "fleetwatch_gpu_remapped_rows_failed": ((("Remapped Rows", "Remapping Failure Occurred"),), 1.0),
    "fleetwatch_gpu_pcie_replays_total": ((("PCI", "Replays Since Reset"),), 1.0),
    "fleetwatch_gpu_pcie_transmit_bytes_per_second": ((("PCI", "Tx Throughput"),), KIB),
    "fleetwatch_gpu_pcie_receive_bytes_per_second": ((("PCI", "Rx Throughput"),), KIB),
}
# ECC totals: metric → (scope, old-style section, prefixes of the new-style SRAM/DRAM counts summed)
ECC_TOTALS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "fleetwatch_gpu_ecc_sbe_volatile_total": ("Volatile", "Single Bit", ("SRAM Correctable", "DRAM Correctable")),
    "fleetwatch_gpu_ecc_dbe_volatile_total": ("Volatile", "Double Bit", ("SRAM Uncorrectable", "DRAM Uncorrectable")),
    "fleetwatch_gpu_ecc_sbe_aggregate_total": ("Aggregate", "Single Bit", ("SRAM Correctable", "DRAM Correctable")),
    "fleetwatch_gpu_ecc_dbe_aggregate_total": ("Aggregate", "Double Bit",
                                               ("SRAM Uncorrectable", "DRAM Uncorrectable")),
}
REASON_SECTIONS = ("Clocks Event Reasons", "Clocks Throttle Reasons")
# -q's reason names → catalogue.CLOCK_EVENT_REASONS keys (the NVML bits)
REASON_NAMES: dict[str, str] = {
    "Idle": "gpu_idle",
    "Applications Clocks Setting": "applications_clocks_setting",
    "SW Power Cap": "sw_power_cap",
    "HW Slowdown": "hw_slowdown",
    "Sync Boost": "sync_boost",
    "SW Thermal Slowdown": "sw_thermal_slowdown",
    "HW Thermal Slowdown": "hw_thermal_slowdown",
    "HW Power Brake Slowdown": "hw_power_brake_slowdown",
    "Display Clock Setting": "display_clock_setting",
}
_BANNER = "==============NVSMI LOG=============="
_TS_FORMAT = "%a %b %d %H:%M:%S %Y"


@dataclass
class GpuBlock:
    """One `GPU <bus id>` block of a dump: its flattened key paths → (value, line number)."""

    bus_id: str
    line: int
    fields: dict[FieldPath, tuple[str, int]] = field(default_factory=dict)


@dataclass
class Dump:
    """One `nvidia-smi -q` dump: its top-level keys and GPU blocks."""

    line: int
    top: dict[str, tuple[str, int]] = field(default_factory=dict)
    gpus: list[GpuBlock] = field(default_factory=list)


def _split(line: str) -> tuple[int, str, str | None]:
    """(indent, key, value) of a line; value None for a section heading."""
    stripped = line.lstrip(" ")
    indent = len(line) - len(stripped)
    # Keys are padded with spaces before the colon; a colon without a space before it (bus ids, times)
    # belongs to the text.
    key, sep, value = stripped.partition(" :")
    if not sep:
        return indent, stripped.rstrip(), None
    return indent, key.rstrip(), value.removeprefix(" ").rstrip()


def parse_dumps(lines: Iterable[str]) -> list[Dump]:
    """Parse the text of one or more `nvidia-smi -q` dumps into trees flattened per GPU."""
    dumps: list[Dump] = []
    dump: Dump | None = None
    gpu: GpuBlock | None = None
    stack: list[tuple[int, str]] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n").replace("\t", "    ")
        if lineno == 1:
            line = line.lstrip("\ufeff")
        if not line.strip():
            continue
        if line.strip() == _BANNER:
            dump, gpu, stack = None, None, []
            continue
        indent, key, value = _split(line)
        if indent == 0:
            stack = []
            if value is not None:
                if dump is None or (key == "Timestamp" and "Timestamp" in dump.top):
                    dump = Dump(lineno)
                    dumps.append(dump)
                    gpu = None
                dump.top[key] = (value, lineno)
            elif key.startswith("GPU "):
                if dump is None:
                    dump = Dump(lineno)
                    dumps.append(dump)
                gpu = GpuBlock(key[4:].strip(), lineno)
                dump.gpus.append(gpu)
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if gpu is None:
            continue
        if value is None:
            stack.append((indent, key))
        else:
            path = (*(name for _, name in stack), key)
            gpu.fields.setdefault(path, (value, lineno))
    return dumps


class SmiQImporter:
    """Reads nvidia-smi -q dumps into a TraceWriter."""

    def __init__(self, writer: TraceWriter, summary: ImportSummary, reporter: Reporter, node: str | None = None,
                 tz: dt.tzinfo | None = dt.UTC) -> None:
        self.writer = writer
        self.summary = summary
        self.reporter = reporter
        self.node = node or DEFAULT_NODE
        self.tz = tz

    def _time(self, dump: Dump, where: str) -> int | None:
        stamp = dump.top.get("Timestamp")
        if stamp is None:
            self.reporter.bad(f"{where}:{dump.line}: the dump has no 'Timestamp' line: it cannot be placed in time")
            return None
        text, lineno = stamp
        try:
            wall = dt.datetime.strptime(" ".join(text.split()), _TS_FORMAT)
        except ValueError:
            self.reporter.bad(f"{where}:{lineno}: field 'Timestamp': cannot parse {text!r} as a time "
                              "(expected e.g. 'Tue Jul 14 08:12:53 2026')")
            return None
        return wall_to_ns(wall, self.tz)

    @staticmethod
    def _number(gpu: GpuBlock, path: FieldPath, scale: float, where: str) -> float | None:
        value, lineno = gpu.fields[path]
        try:
            v = parse_value(value)
        except ValueError as err:
            raise InputError(f"{where}:{lineno}: field {'/'.join(path)!r}: {err}") from None
        return None if v is None else v * scale

    def readings(self, gpu: GpuBlock, where: str) -> tuple[dict[str, float], int]:
        """The catalogue readings of one GPU block and how many were unavailable; InputError when malformed."""
        out: dict[str, float] = {}
        missing = 0
        for metric, (paths, scale) in READINGS.items():
            present = [p for p in paths if p in gpu.fields]
            values = [self._number(gpu, p, scale, where) for p in present]
            got = next((v for v in values if v is not None), None)
            if got is not None:
                out[metric] = got
            elif present:
                missing += 1
        for metric, (scope, old, prefixes) in ECC_TOTALS.items():
            old_path = ("ECC Errors", scope, old, "Total")
            if old_path in gpu.fields:
                v = self._number(gpu, old_path, 1.0, where)
                if v is None:
                    missing += 1
                else:
                    out[metric] = v
                continue
            parts = [p for p in gpu.fields if len(p) == 3 and p[:2] == ("ECC Errors", scope)
                     and p[2].startswith(prefixes)]
            nums = [v for p in parts if (v := self._number(gpu, p, 1.0, where)) is not None]
            if nums:
                out[metric] = float(sum(nums))
            elif parts:
                missing += 1
        mask = 0
        seen = False
        for path, (value, lineno) in gpu.fields.items():
            if path[0] not in REASON_SECTIONS or path[-1] not in REASON_NAMES or len(path) < 2:
                continue
            state = value.strip().lower()
            if state == "active":
                mask |= CLOCK_EVENT_REASONS[REASON_NAMES[path[-1]]]
                seen = True
            elif state == "not active":
                seen = True
            elif not is_unavailable(value):
                raise InputError(f"{where}:{lineno}: field {'/'.join(path)!r}: cannot parse {value!r} "
                                 "(expected Active or Not Active)")
        if seen:
            out["fleetwatch_gpu_clock_event_reasons"] = float(mask)
        return out, missing

    def _entity(self, gpu: GpuBlock, index: int, driver: str) -> Entity:
        def text(path: FieldPath) -> str:
            v = gpu.fields.get(path, ("", 0))[0]
            return "" if is_unavailable(v) else v

        uuid = text(("GPU UUID",))
        minor = text(("Minor Number",))
        device = f"nvidia{minor if minor.isdigit() else index}"
        model = text(("Product Name",))
        node = self.node
        idx = str(index)
        return Entity(kind="gpu", node=node, id=uuid or gpu.bus_id,
                      labels=(node, idx, uuid, gpu.bus_id, device, model, driver),
                      dcgm_labels=(idx, uuid, gpu.bus_id, device, model, node, driver))

    def read(self, path: Path, lines: Iterable[str]) -> None:
        """Import the dumps of one file (path names it in messages)."""
        where = str(path)
        dumps = [d for d in parse_dumps(lines) if d.gpus or d.top]
        if not any(d.gpus for d in dumps):
            self.reporter.bad(f"{where}: no 'GPU <bus id>' blocks: not an nvidia-smi -q dump")
            return
        for dump in dumps:
            ts = self._time(dump, where)
            if ts is None:
                continue
            driver_v = dump.top.get("Driver Version", ("", 0))[0]
            # Drivers 610+ append a note: "610.57.04 [Deprecated; ... Use KMD Version instead]"
            driver = "" if is_unavailable(driver_v) else driver_v.split(" [")[0].strip()
            for index, gpu in enumerate(dump.gpus):
                try:
                    values, missing = self.readings(gpu, where)
                except InputError as err:
                    self.reporter.bad(str(err))
                    continue
                entity = self._entity(gpu, index, driver)
                self.writer.add_entity(entity)
                self.summary.missing += missing
                for metric, v in values.items():
                    self.writer.series(entity.node, entity.id, metric).add(ts, v)
                self.writer.added(len(values))


def import_smi_q(sources: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                 on_error: str = "fail", node: str | None = None, timezone: str | None = None,
                 progress: bool = True) -> ImportSummary:
    """Import nvidia-smi -q dumps (one or more per file) into the trace at `output`; the summary."""
    summary = ImportSummary(kind="smi-q")
    reporter = Reporter(summary, on_error)
    tz = parse_timezone(timezone)
    paths = input_files(sources)
    with TraceWriter(output) as writer:
        importer = SmiQImporter(writer, summary, reporter, node=node, tz=tz)
        bar = progress_bar(len(paths), "smi-q", unit="file") if progress else None
        advance: Callable[[int], object] = bar.update if bar is not None else (lambda n: None)
        try:
            for p in paths:
                with open(p, encoding="utf-8", errors="replace", newline="") as f:
                    importer.read(p, f)
                summary.files += 1
                advance(1)
        finally:
            if bar is not None:
                bar.close()
        writer.commit(summary)
    return summary
