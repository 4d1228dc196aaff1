"""Import NVIDIA XID errors from kernel logs (dmesg, journal, kern.log) into a trace's events table.

Lines are parsed with collector.sources.kernel_log.parse_xid_line, so imported events read exactly like
those the live `kernel_xid` source records (kind "xid", the code, detail from collector.xid.xid_event).
The entity is the GPU's UUID when a `NVRM: GPU at PCI:0000:9b:00: GPU-…` line of the same node maps its
PCI location (anywhere in the file), else `PCI:0000:9b:00` as the live source writes it.

Timestamps, per line, in the forms the tools print:
- `[Sun Feb 23 16:24:18 2025] ...` (dmesg -T; local wall clock, --timezone);
- `2025-02-23T16:24:18.123456+00:00 host kernel: ...` (journalctl -o short-iso, RFC 3339 syslog);
- `Feb 23 16:24:18 host kernel: ...` (syslog, journalctl; no year: --year, else the file's modification
  year, a date after the modification date being taken as the year before; local wall clock);
- `[12345.678901] ...` (plain dmesg) and `6,1234,12345678901,-;...` (/dev/kmsg): time since boot, which
  needs --boot-time; without it such a line is an error naming the line.
The syslog forms name the host: that is the node, else --node, else "imported".
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from collector.batch import Entity
from collector.importers._writer import (
    ImportSummary,
    InputError,
    Reporter,
    TraceWriter,
    input_files,
    parse_time,
    parse_timezone,
    progress_bar,
    wall_to_ns,
)
from collector.sources.kernel_log import normalize_pci, parse_xid_line
from collector.xid import xid_event

DEFAULT_NODE = "imported"
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), 1)}
_DMESG_T = re.compile(r"^\[(?:[A-Z][a-z]{2} )?(?P<mon>[A-Z][a-z]{2})\s+(?P<day>\d{1,2}) "
                      r"(?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2}) (?P<year>\d{4})\]")
_ISO = re.compile(r"^(?P<iso>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\s+(?P<host>\S+)\s")
_SYSLOG = re.compile(r"^(?P<mon>[A-Z][a-z]{2})\s+(?P<day>\d{1,2}) (?P<h>\d{2}):(?P<m>\d{2}):(?P<s>\d{2})"
                     r"\s+(?P<host>\S+)\s")
_UPTIME = re.compile(r"^\[\s*(?P<up>\d+\.\d+)\]")
_KMSG = re.compile(r"^\d+,\d+,(?P<us>\d+),[^;]*;")
_GPU_AT = re.compile(r"NVRM: GPU at (?:PCI:)?(?P<pci>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}(?:\.[0-7])?)"
                     r":\s+(?P<uuid>GPU-[0-9A-Fa-f-]+)")


@dataclass(frozen=True, slots=True)
class Stamp:
    """When a line was logged (Unix ns, or None with the reason) and the host it names, if any."""

    ts_ns: int | None
    host: str | None
    problem: str = ""


class LineClock:
    """Turns each line's own timestamp into Unix nanoseconds (see the module docstring for the forms)."""

    def __init__(self, tz: dt.tzinfo | None, year: int | None, boot_ns: int | None,
                 mtime: dt.datetime | None) -> None:
        self.tz = tz
        self.year = year
        self.boot_ns = boot_ns
        self.mtime = mtime

    def _syslog_year(self, month: int, day: int) -> int:
        if self.year is not None:
            return self.year
        if self.mtime is None:
            return dt.datetime.now().year
        # syslog omits the year: a date later in the year than the file's last write is from the year before
        return self.mtime.year - 1 if (month, day) > (self.mtime.month, self.mtime.day) else self.mtime.year

    def stamp(self, line: str) -> Stamp:
        """The time and host of one line."""
        m = _DMESG_T.match(line)
        if m is not None and m["mon"] in _MONTHS:
            wall = dt.datetime(int(m["year"]), _MONTHS[m["mon"]], int(m["day"]), int(m["h"]),
                               int(m["m"]), int(m["s"]))
            return Stamp(wall_to_ns(wall, self.tz), None)
        m = _ISO.match(line)
        if m is not None:
            return Stamp(parse_time(m["iso"]), m["host"])
        m = _SYSLOG.match(line)
        if m is not None and m["mon"] in _MONTHS:
            month, day = _MONTHS[m["mon"]], int(m["day"])
            wall = dt.datetime(self._syslog_year(month, day), month, day, int(m["h"]), int(m["m"]), int(m["s"]))
            return Stamp(wall_to_ns(wall, self.tz), m["host"])
        m = _UPTIME.match(line)
        uptime_ns = None
        if m is not None:
            sec, _, frac = m["up"].partition(".")
            uptime_ns = int(sec) * 10**9 + int(frac[:9].ljust(9, "0"))
        else:
            k = _KMSG.match(line)
            if k is not None:
                uptime_ns = int(k["us"]) * 1000
        if uptime_ns is not None:
            if self.boot_ns is None:
                return Stamp(None, None, "its time is counted from boot: pass --boot-time")
            return Stamp(self.boot_ns + uptime_ns, None)
        return Stamp(None, None, "no timestamp (expected dmesg -T, syslog, RFC 3339 or [seconds since boot])")


@dataclass(frozen=True, slots=True)
class _Xid:
    lineno: int
    ts_ns: int
    node: str
    pci: str
    xid: int
    message: str


def _nvml_bus_id(pci: str) -> str:
    """NVML's bus id spelling ("00000000:9B:00.0") of a normalised PCI location ("0000:9b:00")."""
    domain, bus, device = pci.split(":")
    return f"{int(domain, 16):08X}:{bus.upper()}:{device.upper()}.0"


class KernelLogImporter:
    """Reads kernel logs into a TraceWriter's events table."""

    def __init__(self, writer: TraceWriter, summary: ImportSummary, reporter: Reporter, node: str | None = None,
                 tz: dt.tzinfo | None = dt.UTC, year: int | None = None, boot_ns: int | None = None) -> None:
        self.writer = writer
        self.summary = summary
        self.reporter = reporter
        self.node = node or DEFAULT_NODE
        self.tz = tz
        self.year = year
        self.boot_ns = boot_ns

    def read(self, path: Path, lines: Iterable[str], mtime: dt.datetime | None = None) -> None:
        """Import the XID lines of one log (path names it in messages)."""
        where = str(path)
        clock = LineClock(self.tz, self.year, self.boot_ns, mtime)
        gpus: dict[tuple[str, str], str] = {}      # (node, normalised PCI) → GPU UUID
        xids: list[_Xid] = []
        for lineno, raw in enumerate(lines, 1):
            if "NVRM" not in raw:
                continue
            line = raw.rstrip("\r\n")
            at = _GPU_AT.search(line)
            if at is not None:
                pci = normalize_pci(at["pci"])
                if pci is not None:
                    host = clock.stamp(line).host or self.node
                    gpus[(host, pci)] = at["uuid"]
                continue
            parsed = parse_xid_line(line)
            if parsed is None:
                continue
            st = clock.stamp(line)
            if st.ts_ns is None:
                self.reporter.bad(f"{where}:{lineno}: cannot place 'NVRM: Xid ... {parsed.xid}' in time: {st.problem}")
                continue
            message = parsed.message
            if parsed.process is not None:   # the live kernel_xid source's detail format
                message = f"pid={parsed.pid}, name={parsed.process}, {message}"
            xids.append(_Xid(lineno, st.ts_ns, st.host or self.node, parsed.pci, parsed.xid, message))
        for x in xids:
            uuid = gpus.get((x.node, x.pci))
            bus = _nvml_bus_id(x.pci)
            entity_id = uuid or f"PCI:{x.pci}"
            # Only the UUID and PCI location are known from the log; the other identity labels stay empty.
            self.writer.add_entity(Entity(kind="gpu", node=x.node, id=entity_id,
                                          labels=(x.node, "", uuid or "", bus, "", "", "")))
            self.writer.add_event(xid_event(x.ts_ns, x.node, entity_id, x.xid, x.message))


def import_kernel_log(sources: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                      on_error: str = "fail", node: str | None = None, year: int | None = None,
                      boot_time: str | None = None, timezone: str | None = None,
                      progress: bool = True) -> ImportSummary:
    """Import the XID lines of kernel logs into the events table of the trace at `output`; the summary."""
    summary = ImportSummary(kind="kernel-log")
    reporter = Reporter(summary, on_error)
    tz = parse_timezone(timezone)
    boot_ns = parse_time(boot_time) if boot_time is not None else None
    if year is not None and not 1970 <= year <= 9999:
        raise InputError(f"--year must be a four-digit year, got {year}")
    paths = input_files(sources)
    with TraceWriter(output) as writer:
        importer = KernelLogImporter(writer, summary, reporter, node=node, tz=tz, year=year, boot_ns=boot_ns)
        bar = progress_bar(len(paths), "kernel-log", unit="file") if progress else None
        try:
            for p in paths:
                mtime = dt.datetime.fromtimestamp(p.stat().st_mtime, tz)
                with open(p, encoding="utf-8", errors="replace", newline="") as f:
                    importer.read(p, f, mtime)
                summary.files += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        writer.commit(summary)
    return summary
