"""Network interface counters from /proc/net/dev and link state from /sys/class/net/<dev>/operstate.

Counters are exported exactly as the kernel reports them. Some drivers still keep 32-bit counters that
wrap at 2**32; a wrap shows up as a counter reset, which Prometheus' rate() and increase() already handle,
so correcting it here would only hide what the kernel said (node_exporter makes the same choice).

/proc/net/dev lists the interfaces of the reading process's network namespace: in a container the agent
needs the host's network namespace (hostNetwork) to see the node's interfaces.
"""

from __future__ import annotations

import re
from typing import Any

from collector.batch import Batch, Entity
from collector.source import SourceContext, SourceError, ThreadedSource, register_source
from collector.sources._paths import proc_path, read_optional, read_required, sys_path

# /proc/net/dev column (as named in its header) → catalogue metric, per direction.
RECEIVE_METRICS: dict[str, str] = {
    "bytes": "fleetwatch_network_receive_bytes_total",
    "packets": "fleetwatch_network_receive_packets_total",
    "errs": "fleetwatch_network_receive_errors_total",
    "drop": "fleetwatch_network_receive_drop_total",
}
TRANSMIT_METRICS: dict[str, str] = {
    "bytes": "fleetwatch_network_transmit_bytes_total",
    "packets": "fleetwatch_network_transmit_packets_total",
    "errs": "fleetwatch_network_transmit_errors_total",
    "drop": "fleetwatch_network_transmit_drop_total",
}
UP_METRIC = "fleetwatch_network_up"
DEFAULT_EXCLUDE = "^lo$"
OPTIONS = ("device_include", "device_exclude")


def parse_net_dev(text: str) -> dict[str, dict[str, int]]:
    """Parse /proc/net/dev into {device: {metric name: value}} using the header's column names."""
    lines = text.splitlines()
    if len(lines) < 2 or lines[1].count("|") != 2:
        raise ValueError("missing the two-line 'Inter-| Receive | Transmit' header")
    _, rx_header, tx_header = lines[1].split("|")
    rx_cols, tx_cols = rx_header.split(), tx_header.split()
    want = len(rx_cols) + len(tx_cols)
    stats: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        # Interface names cannot contain ':' (dev_valid_name), and old kernels glued large byte counts
        # to the colon ("eth0:123"), so split at the first colon rather than on whitespace.
        device, sep, rest = line.partition(":")
        device = device.strip()
        fields = rest.split()
        if not sep or not device or len(fields) != want:
            raise ValueError(f"line {lineno}: expected '<device>: <{want} counters>', got {line.strip()!r}")
        try:
            numbers = [int(f) for f in fields]
        except ValueError:
            raise ValueError(f"line {lineno}: non-numeric counter in {line.strip()!r}") from None
        rx = dict(zip(rx_cols, numbers[: len(rx_cols)], strict=True))
        tx = dict(zip(tx_cols, numbers[len(rx_cols):], strict=True))
        values = {metric: rx[col] for col, metric in RECEIVE_METRICS.items() if col in rx}
        values.update({metric: tx[col] for col, metric in TRANSMIT_METRICS.items() if col in tx})
        stats[device] = values
    return stats


def operstate_up(state: str) -> float:
    """1.0 for operstate "up", 0.0 for anything else (down, dormant, lowerlayerdown, unknown…)."""
    return 1.0 if state.strip() == "up" else 0.0


class DeviceFilter:
    """Keeps a device when it matches `include` (if set) and does not match `exclude` (if set)."""

    def __init__(self, include: str | None = None, exclude: str | None = DEFAULT_EXCLUDE) -> None:
        self.include = re.compile(include) if include else None
        self.exclude = re.compile(exclude) if exclude else None

    def __call__(self, device: str) -> bool:
        """Whether to export `device`."""
        if self.include is not None and not self.include.search(device):
            return False
        return self.exclude is None or not self.exclude.search(device)


class NetDevSource(ThreadedSource):
    """Reads /proc/net/dev and each interface's operstate."""

    name = "netdev"

    def __init__(self, ctx: SourceContext, device_include: str | None = None,
                 device_exclude: str | None = DEFAULT_EXCLUDE) -> None:
        self.ctx = ctx
        self.filter = DeviceFilter(device_include, device_exclude)
        self._entities: dict[str, Entity] = {}
        super().__init__()

    def _entity(self, device: str) -> Entity:
        entity = self._entities.get(device)
        if entity is None:
            entity = Entity(kind="interface", node=self.ctx.node, id=device, labels=(self.ctx.node, device))
            self._entities[device] = entity
        return entity

    def collect(self, ts_ns: int) -> Batch:
        """One batch of counters and link states for the kept interfaces."""
        path = proc_path(self.ctx, "net", "dev")
        text = read_required(path, self.name)
        try:
            stats = parse_net_dev(text)
        except ValueError as err:
            raise SourceError("parse", f"{path}: {err}") from err
        batch = Batch(source=self.name, ts_ns=ts_ns)
        for device, values in stats.items():
            if not self.filter(device):
                continue
            entity = self._entity(device)
            for metric, value in values.items():
                batch.add(metric, entity, value)
            # No operstate file (the device vanished between reads, or sysfs is not mounted): omit `up`
            # rather than guess.
            state = read_optional(sys_path(self.ctx, "class", "net", device, "operstate"))
            if state is not None:
                batch.add(UP_METRIC, entity, operstate_up(state))
        return batch


def _regex_option(options: dict[str, Any], key: str, default: str | None) -> str | None:
    value = options.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"netdev option {key!r} must be a regular expression string, got {value!r}")
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"netdev option {key!r} is not a valid regular expression: {err}") from None
    return value


def create(ctx: SourceContext, options: dict[str, Any]) -> NetDevSource:
    """Build the netdev source; options device_include / device_exclude are regexes (search semantics)."""
    for key in options:
        if key not in OPTIONS:
            raise ValueError(f"netdev: unknown option {key!r} (known: {', '.join(OPTIONS)})")
    return NetDevSource(ctx, _regex_option(options, "device_include", None),
                        _regex_option(options, "device_exclude", DEFAULT_EXCLUDE))


register_source("netdev", True, create, OPTIONS)
