"""Import Prometheus exposition snapshots (dcgm-exporter, node_exporter, fleetwatch /metrics) into a trace.

Each file is one snapshot, parsed with prometheus_client's parser (text format 0.0.4, or OpenMetrics when
the file ends with `# EOF`). Its time: a sample's own timestamp where it has one, else --time, else the
file's modification time.

Names map onto the catalogue (SeriesMapper, shared with the Prometheus importer):

- fleetwatch's native names 1:1, their identity labels giving the entity (GPU UUID, `GPU-…/nvlinkN`,
  interface, `mlx5_0/1`, RAPL zone, node);
- dcgm-exporter names through catalogue.BY_DCGM, value / dcgm_scale, entity from the dcgm labels (gpu,
  UUID, pci_bus_id, device, modelName, Hostname, DCGM_FI_DRIVER_VERSION; missing ones left empty). Series
  of MIG instances (a GPU_I_ID label) are not whole-GPU readings and are ignored;
- node_exporter names as in NODE_EXPORTER below (labels device, and port for InfiniBand).

When one reading arrives under both a native and a dcgm name (fleetwatch --names both), the native one is
kept: it carries the base-unit value without a round trip through dcgm's scale. Anything else is ignored
and counted by name in the summary.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families
from prometheus_client.parser import text_string_to_metric_families

from collector.batch import Entity
from collector.catalogue import BY_DCGM, BY_NAME, DCGM_GPU_LABELS, ENTITY_LABELS, MetricSpec
from collector.importers._writer import (
    ImportSummary,
    InputError,
    Reporter,
    TraceWriter,
    parse_time,
    progress_bar,
)
from collector.sources.infiniband import IB_PORT_ACTIVE

DEFAULT_NODE = "imported"
RANK_NATIVE = 1      # wins over a dcgm-exporter or node_exporter reading of the same series and time
RANK_OTHER = 0

# node_exporter name → (catalogue metric, value transform or None). Entities: `device` for interfaces,
# `device` + `port` for InfiniBand ports. node_exporter's netdev and netclass collectors read the same
# /proc/net/dev and /sys/class/net files as fleetwatch's netdev source; its infiniband collector reads
# the same counters, already scaled to bytes by procfs. RAPL is not mapped: node_exporter's
# node_rapl_*_joules_total wraps with the hardware counter and names zones differently.
NODE_EXPORTER: dict[str, tuple[str, Callable[[float], float] | None]] = {
    "node_network_receive_bytes_total": ("fleetwatch_network_receive_bytes_total", None),
    "node_network_transmit_bytes_total": ("fleetwatch_network_transmit_bytes_total", None),
    "node_network_receive_packets_total": ("fleetwatch_network_receive_packets_total", None),
    "node_network_transmit_packets_total": ("fleetwatch_network_transmit_packets_total", None),
    "node_network_receive_errs_total": ("fleetwatch_network_receive_errors_total", None),
    "node_network_transmit_errs_total": ("fleetwatch_network_transmit_errors_total", None),
    "node_network_receive_drop_total": ("fleetwatch_network_receive_drop_total", None),
    "node_network_transmit_drop_total": ("fleetwatch_network_transmit_drop_total", None),
    "node_network_up": ("fleetwatch_network_up", None),
    "node_infiniband_port_data_received_bytes_total": ("fleetwatch_infiniband_port_data_received_bytes_total", None),
    "node_infiniband_port_data_transmitted_bytes_total": (
        "fleetwatch_infiniband_port_data_transmitted_bytes_total", None),
    "node_infiniband_port_packets_received_total": ("fleetwatch_infiniband_port_packets_received_total", None),
    "node_infiniband_port_packets_transmitted_total": ("fleetwatch_infiniband_port_packets_transmitted_total", None),
    "node_infiniband_symbol_error_total": ("fleetwatch_infiniband_port_symbol_errors_total", None),
    "node_infiniband_link_downed_total": ("fleetwatch_infiniband_port_link_downed_total", None),
    "node_infiniband_port_errors_received_total": ("fleetwatch_infiniband_port_receive_errors_total", None),
    "node_infiniband_link_error_recovery_total": ("fleetwatch_infiniband_port_link_error_recovery_total", None),
    # state_id is the IB port state (4: ACTIVE); fleetwatch's gauge is 1 while ACTIVE.
    "node_infiniband_state_id": ("fleetwatch_infiniband_port_up", lambda v: float(v == IB_PORT_ACTIVE)),
}


@dataclass(frozen=True, slots=True)
class Mapped:
    """Where one exposition series goes: catalogue metric, entity, how to convert its values, its rank."""

    metric: str
    entity: Entity
    scale: float                                     # trace value = exposition value / scale
    transform: Callable[[float], float] | None
    rank: int

    def convert(self, value: float) -> float:
        """The trace value of an exposition value."""
        if self.transform is not None:
            return self.transform(value)
        return value if self.scale == 1.0 else value / self.scale


class SeriesMapper:
    """Maps (name, labels) of exposition or Prometheus series onto catalogue metrics and entities.

    map() returns a Mapped, or a string naming why the series is ignored (for the summary's counts);
    ValueError when a known metric lacks the label that identifies its entity.
    """

    def __init__(self, node: str | None = None) -> None:
        self.node = node
        self._cache: dict[tuple[str, tuple[str, ...]], Entity] = {}
        self.entities: dict[tuple[str, str], Entity] = {}   # every entity handed out, (node, id) → entity

    def _node(self, labels: Mapping[str, str], key: str, fallback: str | None) -> str:
        return labels.get(key) or fallback or self.node or DEFAULT_NODE

    def _entity(self, kind: str, entity_id: str, labels: tuple[str, ...], dcgm: tuple[str, ...] = ()) -> Entity:
        key = (kind, labels + dcgm)
        e = self._cache.get(key)
        if e is None:
            e = self._cache[key] = Entity(kind=kind, node=labels[0], id=entity_id, labels=labels, dcgm_labels=dcgm)
            self.entities[(e.node, e.id)] = e
        return e

    def _native(self, spec: MetricSpec, labels: Mapping[str, str], fallback: str | None) -> Entity:
        kind = spec.entity
        node = self._node(labels, "node", fallback)
        values = (node, *(labels.get(k, "") for k in ENTITY_LABELS[kind][1:]))
        named = dict(zip(ENTITY_LABELS[kind], values, strict=True))
        if kind in ("gpu", "nvlink"):
            if not named["uuid"]:
                raise ValueError("label 'uuid' is missing: the GPU cannot be identified")
            dcgm = (named["gpu"], named["uuid"], named["pci_bus_id"], named["device"], named["model_name"], node,
                    named["driver_version"])
            entity_id = named["uuid"] if kind == "gpu" else f"{named['uuid']}/nvlink{named['link']}"
            return self._entity(kind, entity_id, values, dcgm)
        need = {"interface": ("device",), "ib_port": ("device", "port"), "rapl_zone": ("zone",), "node": ()}[kind]
        for k in need:
            if not named[k]:
                raise ValueError(f"label {k!r} is missing: the {kind.replace('_', ' ')} cannot be identified")
        entity_id = {"interface": lambda: named["device"], "ib_port": lambda: f"{named['device']}/{named['port']}",
                     "rapl_zone": lambda: named["zone"], "node": lambda: node}[kind]()
        return self._entity(kind, entity_id, values)

    def _dcgm(self, labels: Mapping[str, str], fallback: str | None) -> Entity:
        uuid = labels.get("UUID", "")
        if not uuid:
            raise ValueError("label 'UUID' is missing: the GPU cannot be identified")
        node = self._node(labels, "Hostname", fallback)
        gpu, pci, device, model, driver = (labels.get(k, "") for k in
                                           ("gpu", "pci_bus_id", "device", "modelName", "DCGM_FI_DRIVER_VERSION"))
        dcgm = tuple(node if k == "Hostname" else labels.get(k, "") for k in DCGM_GPU_LABELS)
        return self._entity("gpu", uuid, (node, gpu, uuid, pci, device, model, driver), dcgm)

    def map(self, name: str, labels: Mapping[str, str], family: str | None = None,
            fallback_node: str | None = None) -> Mapped | str:
        """Map one series; `family` is its family name (a counter's name without the `_total` the parser adds)."""
        spec = BY_NAME.get(name)
        if spec is not None:
            if not spec.record:
                return f"{name} (not recorded in traces)"
            return Mapped(spec.name, self._native(spec, labels, fallback_node), 1.0, None, RANK_NATIVE)
        dcgm = BY_DCGM.get(name)
        if dcgm is None and family is not None and name == f"{family}_total":
            # client_python's text parser appends _total to counter samples; dcgm's counters have none.
            dcgm = BY_DCGM.get(family)
        if dcgm is not None:
            if labels.get("GPU_I_ID"):
                return f"{dcgm.dcgm} (MIG instance)"
            if not dcgm.record:
                return f"{dcgm.dcgm} (not recorded in traces)"
            return Mapped(dcgm.name, self._dcgm(labels, fallback_node), dcgm.dcgm_scale, None, RANK_OTHER)
        ne = NODE_EXPORTER.get(name)
        if ne is not None:
            metric, transform = ne
            return Mapped(metric, self._native(BY_NAME[metric], labels, fallback_node), 1.0, transform, RANK_OTHER)
        return name


def _label_text(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _timestamp_ns(ts: object) -> int | None:
    """A parsed sample timestamp (float seconds from the text parser, Timestamp from OpenMetrics) in ns."""
    if ts is None:
        return None
    sec = getattr(ts, "sec", None)
    if sec is not None:
        return int(sec) * 10**9 + int(getattr(ts, "nsec", 0))
    # The text format carries milliseconds: round there so float noise does not reach the nanoseconds.
    return round(float(ts) * 1000) * 10**6  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Sample:
    """One parsed exposition sample."""

    name: str
    labels: dict[str, str]
    value: float
    ts_ns: int | None
    family: str | None         # family name of counters (see SeriesMapper.map)


def _parse(text: str, openmetrics: bool) -> list[Sample]:
    parse = om_families if openmetrics else text_string_to_metric_families
    out: list[Sample] = []
    for fam in parse(text):
        family = fam.name if fam.type == "counter" else None
        for s in fam.samples:
            out.append(Sample(s.name, dict(s.labels), float(s.value), _timestamp_ns(s.timestamp), family))
    return out


def _bad_lines(lines: list[str], openmetrics: bool) -> list[tuple[int, str, str]]:
    """(line number, line, parser message) of each line the parser rejects on its own."""
    out: list[tuple[int, str, str]] = []
    parse = om_families if openmetrics else text_string_to_metric_families
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s == "# EOF" or (s.startswith("#") and not s.startswith(("# TYPE", "# HELP", "# UNIT"))):
            continue
        try:
            list(parse(line + ("\n# EOF\n" if openmetrics else "\n")))
        except ValueError as err:
            out.append((i, line, str(err)))
    return out


def parse_snapshot(text: str, where: str, reporter: Reporter) -> list[Sample]:
    """All samples of one exposition text; bad lines are reported by number (and dropped under skip)."""
    openmetrics = text.rstrip().endswith("# EOF")
    try:
        return _parse(text, openmetrics)
    except ValueError as err:
        first_err = err
    lines = text.splitlines()
    bad = _bad_lines(lines, openmetrics)
    if not bad:
        reporter.bad(f"{where}: cannot parse the exposition ({first_err})")
        return []
    for lineno, line, msg in bad:
        reporter.bad(f"{where}:{lineno}: cannot parse sample {line.strip()[:120]!r} ({msg})")
    drop = {n for n, _, _ in bad}
    kept = "\n".join(line for i, line in enumerate(lines, 1) if i not in drop) + "\n"
    try:
        return _parse(kept, openmetrics)
    except ValueError as err:
        reporter.bad(f"{where}: cannot parse the exposition ({err})")
        return []


class ExpositionImporter:
    """Reads exposition snapshots into a TraceWriter."""

    def __init__(self, writer: TraceWriter, summary: ImportSummary, reporter: Reporter, node: str | None = None,
                 time_ns: int | None = None) -> None:
        self.writer = writer
        self.summary = summary
        self.reporter = reporter
        self.mapper = SeriesMapper(node)
        self.time_ns = time_ns
        self._known: set[tuple[str, str]] = set()

    def add_samples(self, samples: Iterable[Sample], default_ts: int, where: str) -> None:
        """Map and add one snapshot's samples (sample timestamps win over default_ts)."""
        n = 0
        for i, s in enumerate(samples, 1):
            try:
                m = self.mapper.map(s.name, s.labels, s.family)
            except ValueError as err:
                self.reporter.bad(f"{where}: sample {i} {s.name}{_label_text(s.labels)}: {err}")
                continue
            if isinstance(m, str):
                self.summary.unknown[m] += 1
                continue
            value = m.convert(s.value)
            if math.isnan(value):
                self.summary.missing += 1
                continue
            key = (m.entity.node, m.entity.id)
            if key not in self._known:
                self._known.add(key)
                self.writer.add_entity(m.entity)
            self.writer.series(m.entity.node, m.entity.id, m.metric, m.rank).add(
                s.ts_ns if s.ts_ns is not None else default_ts, value)
            n += 1
        self.writer.added(n)

    def read(self, path: Path) -> None:
        """Import one snapshot file."""
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            self.reporter.bad(f"{where}: not UTF-8 text ({err})")
            return
        ts = self.time_ns if self.time_ns is not None else path.stat().st_mtime_ns
        self.add_samples(parse_snapshot(text, where, self.reporter), ts, where)


def iter_files(sources: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    """The files named, directories expanded to their files in name order."""
    for s in sources:
        p = Path(s)
        if p.is_dir():
            yield from sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        elif p.is_file():
            yield p
        else:
            raise InputError(f"{p}: no such file or directory")


def import_exposition(sources: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], *,
                      on_error: str = "fail", node: str | None = None, time: str | None = None,
                      progress: bool = True) -> ImportSummary:
    """Import exposition snapshots (one per file; directories are expanded) into the trace at `output`."""
    summary = ImportSummary(kind="exposition")
    reporter = Reporter(summary, on_error)
    time_ns = parse_time(time) if time is not None else None
    paths = list(iter_files(sources))
    with TraceWriter(output) as writer:
        importer = ExpositionImporter(writer, summary, reporter, node=node, time_ns=time_ns)
        bar = progress_bar(len(paths), "exposition", unit="file") if progress else None
        try:
            for p in paths:
                importer.read(p)
                summary.files += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        writer.commit(summary)
    return summary
