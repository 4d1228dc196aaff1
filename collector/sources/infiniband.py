"""InfiniBand (and RoCE) port counters and state from /sys/class/infiniband/<dev>/ports/<port>/.

See the kernel's Documentation/ABI/stable/sysfs-class-infiniband. port_rcv_data and port_xmit_data count
4-byte words ("octets divided by 4"), so they are multiplied by 4 to give bytes. Before Linux 4.5 the
counters/ files of some drivers were 32-bit and the 64-bit ones lived in counters_ext/*_64; where both
exist the 64-bit value wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from collector.batch import Batch, Entity
from collector.source import SourceContext, ThreadedSource, register_source
from collector.sources._paths import list_dir, read_optional, sys_path

# counters/<file> → (catalogue metric, multiplier to the metric's unit).
COUNTER_METRICS: dict[str, tuple[str, int]] = {
    "port_rcv_data": ("fleetwatch_infiniband_port_data_received_bytes_total", 4),
    "port_xmit_data": ("fleetwatch_infiniband_port_data_transmitted_bytes_total", 4),
    "port_rcv_packets": ("fleetwatch_infiniband_port_packets_received_total", 1),
    "port_xmit_packets": ("fleetwatch_infiniband_port_packets_transmitted_total", 1),
    "symbol_error": ("fleetwatch_infiniband_port_symbol_errors_total", 1),
    "link_downed": ("fleetwatch_infiniband_port_link_downed_total", 1),
    "port_rcv_errors": ("fleetwatch_infiniband_port_receive_errors_total", 1),
    "link_error_recovery": ("fleetwatch_infiniband_port_link_error_recovery_total", 1),
}
# counters/<file> → its pre-4.5 64-bit twin in counters_ext/.
EXT_COUNTERS: dict[str, str] = {
    "port_rcv_data": "port_rcv_data_64",
    "port_xmit_data": "port_xmit_data_64",
    "port_rcv_packets": "port_rcv_packets_64",
    "port_xmit_packets": "port_xmit_packets_64",
}
UP_METRIC = "fleetwatch_infiniband_port_up"
IB_PORT_ACTIVE = 4  # IB_PORT_ACTIVE in enum ib_port_state


def parse_counter(text: str) -> int | None:
    """A counter file's value, or None for "N/A (no PMA)" and anything else that is not an integer."""
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def parse_state(text: str) -> tuple[int, str]:
    """Split a port state such as "4: ACTIVE" into (4, "ACTIVE"); ValueError when malformed."""
    code, sep, name = text.partition(":")
    if not sep:
        raise ValueError(f"port state {text.strip()!r} is not '<id>: <NAME>'")
    return int(code.strip()), name.strip()


def port_metrics(counters: Mapping[str, str], counters_ext: Mapping[str, str],
                 state: str | None) -> dict[str, float]:
    """The catalogue readings of one port from its raw counters/, counters_ext/ and state contents."""
    out: dict[str, float] = {}
    for file, (metric, scale) in COUNTER_METRICS.items():
        value = None
        ext = EXT_COUNTERS.get(file)
        if ext is not None and ext in counters_ext:
            value = parse_counter(counters_ext[ext])
        if value is None and file in counters:
            value = parse_counter(counters[file])
        if value is not None:
            out[metric] = float(value * scale)
    if state is not None:
        try:
            code, _ = parse_state(state)
        except ValueError:
            pass  # an unparseable state is omitted, like an unreadable counter
        else:
            out[UP_METRIC] = 1.0 if code == IB_PORT_ACTIVE else 0.0
    return out


def read_port(port_dir: Path) -> dict[str, float]:
    """Read one port directory's counters and state into catalogue readings."""
    counters = _read_files(port_dir / "counters", COUNTER_METRICS)
    counters_ext = _read_files(port_dir / "counters_ext", EXT_COUNTERS.values())
    return port_metrics(counters, counters_ext, read_optional(port_dir / "state"))


def _read_files(directory: Path, names: Iterable[str]) -> dict[str, str]:
    # Unreadable files (EACCES, EINVAL from a PMA query that fails) are simply absent.
    out: dict[str, str] = {}
    for name in names:
        text = read_optional(directory / name)
        if text is not None:
            out[name] = text
    return out


class InfinibandSource(ThreadedSource):
    """Reads every port of every device under /sys/class/infiniband."""

    name = "infiniband"

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self._entities: dict[tuple[str, str], Entity] = {}
        super().__init__()

    def _entity(self, device: str, port: str) -> Entity:
        entity = self._entities.get((device, port))
        if entity is None:
            entity = Entity(kind="ib_port", node=self.ctx.node, id=f"{device}/{port}",
                            labels=(self.ctx.node, device, port))
            self._entities[(device, port)] = entity
        return entity

    def collect(self, ts_ns: int) -> Batch:
        """One batch with the counters and state of every port."""
        batch = Batch(source=self.name, ts_ns=ts_ns)
        for device_dir in list_dir(sys_path(self.ctx, "class", "infiniband"), self.name):
            try:
                ports = sorted((p for p in (device_dir / "ports").iterdir() if p.name.isdigit()),
                               key=lambda p: int(p.name))
            except OSError:
                continue  # a device being removed, or one without ports/: nothing to read
            for port_dir in ports:
                entity = self._entity(device_dir.name, port_dir.name)
                for metric, value in read_port(port_dir).items():
                    batch.add(metric, entity, value)
        return batch


def create(ctx: SourceContext, options: dict[str, Any]) -> InfinibandSource:
    """Build the infiniband source; it takes no options."""
    for key in options:
        raise ValueError(f"infiniband: unknown option {key!r} (it takes none)")
    return InfinibandSource(ctx)


register_source("infiniband", True, create)
