"""CPU package and DRAM energy from the powercap RAPL zones, /sys/class/powercap/intel-rapl:N[:M]/.

energy_uj is a raw counter that wraps at max_energy_range_uj (about 262 kJ on current Xeons: some
minutes at full load). The source keeps per-zone state and exports a monotonic joules counter that adds
the range on every wrap, a wrap being any decrease. This assumes at most one wrap per collection
interval: a package drawing 500 W wraps a 262 kJ range in about 9 minutes, so any interval under ~60 s
is safe on current CPUs; two wraps in one interval would be undercounted by one range. The true modulus
is one hardware energy unit (about 61 µJ) larger than max_energy_range_uj, an error far below the
counter's resolution in practice.

Since Linux 5.10 (CVE-2020-8694, "PLATYPUS") energy_uj is readable only by root; the source then raises
NoDataError saying so, rather than failing every interval.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.batch import Batch, Entity
from collector.source import NoDataError, SourceContext, ThreadedSource, register_source
from collector.sources._paths import read_optional, read_text, sys_path

METRIC = "fleetwatch_rapl_energy_joules_total"
ZONE_PREFIX = "intel-rapl:"  # the intel-rapl control type; AMD Zen CPUs expose the same zones


def zone_index(dirname: str) -> tuple[int, ...]:
    """The numeric path of a zone directory: "intel-rapl:0:1" → (0, 1); ValueError otherwise."""
    if not dirname.startswith(ZONE_PREFIX):
        raise ValueError(f"{dirname!r} is not an {ZONE_PREFIX}N[:M] zone")
    return tuple(int(part) for part in dirname[len(ZONE_PREFIX):].split(":"))


def zone_labels(names: Mapping[str, str]) -> dict[str, str]:
    """Unique zone labels from {zone directory: contents of its name file}.

    Top-level zones keep their name ("package-0", "psys"); sub-zones are prefixed with their parent's
    label ("package-0/dram") because every package has a "core" or "dram" sub-zone. A label that is
    still not unique gets the zone's index appended ("dram-1").
    """
    ordered = sorted(names, key=zone_index)
    labels: dict[str, str] = {}
    for dirname in ordered:
        index = zone_index(dirname)
        parent = ZONE_PREFIX + ":".join(str(i) for i in index[:-1])
        name = names[dirname]
        labels[dirname] = f"{labels[parent]}/{name}" if len(index) > 1 and parent in labels else name
    counts: dict[str, int] = {}
    for label in labels.values():
        counts[label] = counts.get(label, 0) + 1
    return {d: (f"{lab}-{d[len(ZONE_PREFIX):]}" if counts[lab] > 1 else lab) for d, lab in labels.items()}


@dataclass
class WrapCounter:
    """Turns a raw energy_uj counter that wraps at its range into monotonic joules."""

    last_uj: int | None = None
    wrapped_uj: int = 0

    def update(self, raw_uj: int, range_uj: int) -> float:
        """Account one raw reading and return the wrap-corrected total in joules."""
        if self.last_uj is not None and raw_uj < self.last_uj:
            # Any decrease is taken as exactly one wrap (see the module docstring for why that holds).
            self.wrapped_uj += range_uj
        self.last_uj = raw_uj
        return (self.wrapped_uj + raw_uj) / 1e6


def _read_uint(path: Path) -> int | None:
    text = read_optional(path)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


class RaplSource(ThreadedSource):
    """Reads every intel-rapl zone and exports wrap-corrected energy counters."""

    name = "rapl"

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self._counters: dict[str, WrapCounter] = {}
        self._entities: dict[str, Entity] = {}
        super().__init__()

    def _entity(self, label: str) -> Entity:
        entity = self._entities.get(label)
        if entity is None:
            entity = Entity(kind="rapl_zone", node=self.ctx.node, id=label, labels=(self.ctx.node, label))
            self._entities[label] = entity
        return entity

    def _zones(self) -> dict[str, Path]:
        root = sys_path(self.ctx, "class", "powercap")
        try:
            entries = list(root.iterdir())
        except (FileNotFoundError, NotADirectoryError) as err:
            raise NoDataError(f"rapl: {root} does not exist (no powercap support)") from err
        zones: dict[str, Path] = {}
        for entry in entries:
            try:
                zone_index(entry.name)
            except ValueError:
                continue  # the control-type directory "intel-rapl", intel-rapl-mmio:*, other drivers
            zones[entry.name] = entry
        if not zones:
            raise NoDataError(f"rapl: no {ZONE_PREFIX}* zones under {root} (no RAPL on this CPU, or a VM)")
        return zones

    def collect(self, ts_ns: int) -> Batch:
        """One batch with every readable zone's energy in joules."""
        zones = self._zones()
        names = {d: n for d, p in zones.items() if (n := read_optional(p / "name"))}
        labels = zone_labels(names)
        batch = Batch(source=self.name, ts_ns=ts_ns)
        for dirname, label in labels.items():
            path = zones[dirname] / "energy_uj"
            try:
                raw_text = read_text(path)
            except PermissionError as err:
                raise NoDataError(
                    f"rapl: {path} is readable only by root (Linux 5.10+, CVE-2020-8694): run the agent as "
                    "root or grant it read access to the powercap energy_uj files") from err
            except OSError:
                continue  # the zone vanished, or the driver refused the read (ENODATA in some VMs)
            range_uj = _read_uint(zones[dirname] / "max_energy_range_uj")
            try:
                raw_uj = int(raw_text)
            except ValueError:
                continue
            if range_uj is None or raw_uj < 0:
                continue  # without the range a wrap cannot be corrected: skip rather than mislead
            joules = self._counters.setdefault(dirname, WrapCounter()).update(raw_uj, range_uj)
            batch.add(METRIC, self._entity(label), joules)
        if not batch.metric:
            raise NoDataError(f"rapl: none of the {len(zones)} zones could be read")
        return batch


def create(ctx: SourceContext, options: dict[str, Any]) -> RaplSource:
    """Build the rapl source; it takes no options."""
    for key in options:
        raise ValueError(f"rapl: unknown option {key!r} (it takes none)")
    return RaplSource(ctx)


register_source("rapl", True, create)
