"""XIDs from the kernel log (`NVRM: Xid (PCI:0000:9b:00): 119, pid=…, name=…, msg`) where NVML has no events.

The fallback for hosts where NVML's event API is unavailable (XidWatcher.supported is False). It tails
/dev/kmsg (records such as `4,1234,5678,-;NVRM: Xid …`) or any text log in dmesg/syslog/journal format
(`[Sun Feb 23 16:24:18 2025] NVRM: Xid …`), starting at its end unless told to read from the beginning,
and maps the PCI location the driver prints to the GPU's entity. Events carry the collect's timestamp:
kmsg stamps records in microseconds since boot and dmesg text in local time, neither of which is the
injected clock.

It is disabled by default: with NVML events working, the `gpu` source already exports
fleetwatch_gpu_xid_errors_total, and both at once would export the same series twice.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.batch import Batch, Entity, gpu_entity
from collector.source import NoDataError, SourceContext, SourceError, ThreadedSource, register_source
from collector.sources._paths import proc_path, read_optional
from collector.sources.nvml import with_device_minor
from collector.xid import xid_event

log = logging.getLogger(__name__)

OPTIONS = ("path", "from_start")
# At most this much log is read per collect, so a first read of a large file from its start cannot stall
# the source; the rest follows on the next collects.
MAX_READ_BYTES = 8 * 1024 * 1024
_CHUNK = 64 * 1024

_XID_RE = re.compile(
    r"NVRM: Xid \((?:PCI:)?(?P<pci>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2})(?:\.[0-7])?[^)]*\): "
    r"(?P<xid>\d+)(?:,\s*(?P<rest>.*))?$")
_PID_RE = re.compile(r"pid=(?P<q>'?)(?P<pid>[^,']*)(?P=q),\s*")
_NAME_RE = re.compile(r"name=(?P<name>[^,]*),\s*")
_PCI_RE = re.compile(r"^(?:PCI:)?([0-9A-Fa-f]{1,8}):([0-9A-Fa-f]{1,2}):([0-9A-Fa-f]{1,2})(?:\.[0-7])?$")
_VERSION_RE = re.compile(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True, slots=True)
class XidLine:
    """One parsed `NVRM: Xid` line."""

    pci: str                 # normalised PCI location, "0000:9b:00" (see normalize_pci)
    xid: int
    pid: int | None          # None when absent or "<unknown>"
    process: str | None      # the process name the driver printed, None when absent or "<unknown>"
    message: str


def normalize_pci(bus_id: str) -> str | None:
    """ "0000:9b:00" for any of "PCI:0000:9B:00", "00000000:9B:00.0", "0000:9b:00.0"; None if not a PCI id."""
    m = _PCI_RE.match(bus_id.strip())
    if m is None:
        return None
    domain, bus, device = (int(x, 16) for x in m.groups())
    return f"{domain:04x}:{bus:02x}:{device:02x}"


def parse_xid_line(line: str) -> XidLine | None:
    """Parse one kernel log line (kmsg record, dmesg or syslog text); None unless it is an NVRM Xid line."""
    m = _XID_RE.search(line.rstrip("\r\n"))
    if m is None:
        return None
    pci = normalize_pci(m["pci"])
    if pci is None:
        return None
    rest = m["rest"] or ""
    pid: int | None = None
    process: str | None = None
    pm = _PID_RE.match(rest)
    if pm is not None:
        pid = int(pm["pid"]) if pm["pid"].isdigit() else None
        rest = rest[pm.end():]
        nm = _NAME_RE.match(rest)
        if nm is not None:
            name = nm["name"].strip()
            process = None if name in ("", "<unknown>") else name
            rest = rest[nm.end():]
    return XidLine(pci=pci, xid=int(m["xid"]), pid=pid, process=process, message=rest.strip())


def discover_gpus(ctx: SourceContext) -> dict[str, Entity]:
    """GPU entities from /proc/driver/nvidia/gpus/*/information, keyed by normalised PCI location.

    Indexes follow PCI order (NVML's default enumeration), the device label the minor number, so the
    entities carry the same labels as the `gpu` source's on the same host.
    """
    root = proc_path(ctx, "driver", "nvidia", "gpus")
    try:
        dirs = sorted(root.iterdir(), key=lambda p: normalize_pci(p.name) or p.name)
    except OSError:
        return {}
    version_text = read_optional(proc_path(ctx, "driver", "nvidia", "version")) or ""
    vm = _VERSION_RE.search(version_text)
    driver = vm.group(1) if vm else ""
    out: dict[str, Entity] = {}
    for index, d in enumerate(dirs):
        info = _parse_information(read_optional(d / "information") or "")
        pci = normalize_pci(info.get("Bus Location", d.name))
        uuid = info.get("GPU UUID", "")
        if pci is None or not uuid:
            continue
        domain, bus, device = pci.split(":")
        nvml_bus_id = f"{int(domain, 16):08X}:{bus.upper()}:{device.upper()}.0"
        entity = gpu_entity(ctx.node, index, uuid, nvml_bus_id, info.get("Model", ""), driver)
        minor = info.get("Device Minor", "")
        if minor.isdigit() and int(minor) != index:
            entity = with_device_minor(entity, int(minor))
        out[pci] = entity
    return out


def _parse_information(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


GpuMap = Mapping[str, Entity] | Callable[[], Mapping[str, Entity]]


class KernelLogSource(ThreadedSource):
    """The `kernel_xid` source: XID events and per-GPU XID counters from the kernel log."""

    name = "kernel_xid"

    def __init__(self, ctx: SourceContext, path: str | None = None, *, from_start: bool = False,
                 gpus: GpuMap | None = None, kmsg: bool | None = None, interval: float = 1.0) -> None:
        self.ctx = ctx
        self.path = path or os.path.join(ctx.rootfs, "dev", "kmsg")
        self.from_start = from_start
        self.interval = interval
        self.kmsg = kmsg                                 # None: decided by the file type (char device)
        self.counts: dict[str, dict[int, int]] = {}     # entity id → {xid: count}
        self.unmapped: dict[str, dict[int, int]] = {}   # PCI location without a known GPU → {xid: count}
        self._gpus_arg = gpus
        self._gpus: dict[str, Entity] = {}
        self._entities: dict[str, Entity] = {}
        self._fd: int | None = None
        self._ino: int | None = None
        self._offset = 0
        self._partial = b""
        self._refreshed = False
        super().__init__()

    # --- GPU mapping ---------------------------------------------------------------------------------

    def _gpu_map(self) -> dict[str, Entity]:
        arg = self._gpus_arg
        raw = arg() if callable(arg) else arg if arg is not None else discover_gpus(self.ctx)
        out: dict[str, Entity] = {}
        for key, entity in raw.items():
            pci = normalize_pci(key)
            if pci is not None:
                out[pci] = entity
        return out

    def _entity_for(self, pci: str) -> Entity | None:
        entity = self._gpus.get(pci)
        if entity is None and not self._refreshed:
            # A GPU the map did not know yet (the gpu source discovered it since, or /proc changed):
            # look again, once per collect.
            self._refreshed = True
            self._gpus = self._gpu_map()
            entity = self._gpus.get(pci)
        return entity

    # --- reading -------------------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as err:
            raise NoDataError(f"{self.name}: {self.path} does not exist") from err
        except PermissionError as err:
            # /dev/kmsg needs CAP_SYSLOG when kernel.dmesg_restrict=1.
            raise NoDataError(f"{self.name}: no permission to read {self.path}") from err
        st = os.fstat(fd)
        if self.kmsg is None:
            self.kmsg = stat.S_ISCHR(st.st_mode)
        if not self.from_start:
            os.lseek(fd, 0, os.SEEK_END)
        self._fd, self._ino = fd, st.st_ino
        self._offset = os.lseek(fd, 0, os.SEEK_CUR) if not self.kmsg else 0
        self._partial = b""
        # Later reopenings (rotation, truncation) read the new file from its start.
        self.from_start = True

    def _reopen_if_rotated(self) -> None:
        if self.kmsg or self._fd is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return                                        # mid-rotation: keep reading the old file
        if st.st_ino != self._ino or st.st_size < self._offset:
            self._close_fd()
            self._open()

    def _read_new(self) -> bytes:
        fd = self._fd
        assert fd is not None
        chunks: list[bytes] = []
        total = 0
        while total < MAX_READ_BYTES:
            try:
                data = os.read(fd, _CHUNK)
            except BlockingIOError:
                break                                     # /dev/kmsg: no more records
            except OSError as err:
                if err.errno == errno.EPIPE:
                    continue                              # /dev/kmsg: records overwritten; resumes at oldest
                raise SourceError("read", f"{self.name}: reading {self.path}: {err}") from err
            if not data:
                break
            chunks.append(data)
            total += len(data)
        self._offset += total
        return b"".join(chunks)

    def _lines(self) -> list[str]:
        data = self._partial + self._read_new()
        if not data:
            return []
        lines = data.split(b"\n")
        self._partial = lines.pop()                       # an unterminated last line waits for its end
        return [line.decode("utf-8", errors="replace") for line in lines]

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- collection ----------------------------------------------------------------------------------

    def collect(self, ts_ns: int) -> Batch:
        """Read the lines added since the last collect; emit their XID events and every GPU's XID counters."""
        if self._fd is None:
            self._open()
            self._gpus = self._gpu_map()
        else:
            self._reopen_if_rotated()
        batch = Batch(source=self.name, ts_ns=ts_ns)
        self._refreshed = False
        for line in self._lines():
            parsed = parse_xid_line(line)
            if parsed is None:
                continue
            entity = self._entity_for(parsed.pci)
            if entity is None:
                codes = self.unmapped.setdefault(parsed.pci, {})
                entity_id = f"PCI:{parsed.pci}"
            else:
                self._entities[entity.id] = entity
                codes = self.counts.setdefault(entity.id, {})
                entity_id = entity.id
            codes[parsed.xid] = codes.get(parsed.xid, 0) + 1
            message = parsed.message
            if parsed.process is not None:
                message = f"pid={parsed.pid}, name={parsed.process}, {message}"
            batch.events.append(xid_event(ts_ns, self.ctx.node, entity_id, parsed.xid, message))
        for entity_id, codes in self.counts.items():
            entity = self._entities[entity_id]
            for xid, n in sorted(codes.items()):
                batch.add("fleetwatch_gpu_xid_errors_total", entity, n, (str(xid),))
        return batch

    async def close(self) -> None:
        """Stop the worker and close the log."""
        await super().close()
        self._close_fd()


def create(ctx: SourceContext, options: dict[str, Any]) -> KernelLogSource:
    """Build the kernel_xid source; options: path (default <rootfs>/dev/kmsg), from_start (bool)."""
    for key in options:
        if key not in OPTIONS:
            raise ValueError(f"kernel_xid: unknown option {key!r} (known: {', '.join(OPTIONS)})")
    path = options.get("path")
    if path is not None and not isinstance(path, str | Path):
        raise ValueError(f"kernel_xid option 'path' must be a file path, got {path!r}")
    from_start = options.get("from_start", False)
    if not isinstance(from_start, bool):
        raise ValueError(f"kernel_xid option 'from_start' must be true or false, got {from_start!r}")
    return KernelLogSource(ctx, str(path) if path is not None else None, from_start=from_start)


register_source("kernel_xid", False, create, OPTIONS)
