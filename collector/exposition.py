"""Renders batches as Prometheus text (0.0.4) and OpenMetrics, in native and/or dcgm-exporter names.

The 0.0.4 text is rendered here rather than by prometheus_client's generate_latest because dcgm-exporter
declares counters whose names lack `_total` (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION): client_python would
rename them in the HELP/TYPE lines, and the dcgm names must stay byte for byte. OpenMetrics goes through
client_python; there, dcgm counters without `_total` are typed `unknown` (OpenMetrics forbids them).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from collector.batch import Batch, Entity
from collector.catalogue import BY_NAME, DCGM_GPU_LABELS, METRICS, MetricSpec

Names = Literal["native", "dcgm", "both"]
NAMES_CHOICES: tuple[str, ...] = ("native", "dcgm", "both")

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_ORDER = {m.name: i for i, m in enumerate(METRICS)}


def escape_label_value(v: str) -> str:
    """Escape a label value for the text formats."""
    if "\\" in v or '"' in v or "\n" in v:
        v = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def format_value(v: float) -> str:
    """Format a sample value the way Prometheus parses it back exactly."""
    if v.is_integer() and -1e15 < v < 1e15:     # counters and most gauges: the fast path
        return str(int(v))
    r = repr(v)
    if r[-1] in "fn":                          # inf, -inf, nan
        return {"inf": "+Inf", "-inf": "-Inf"}.get(r, "NaN")
    return r


_SELF_KINDS = ("source", "process")


def _labelstr(names: Iterable[str], values: Iterable[str]) -> str:
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))


@dataclass
class Family:
    """One metric family being assembled for a scrape: sample-line prefix → value."""

    spec: MetricSpec
    samples: dict[str, float] = field(default_factory=dict)       # 'name{labels} ' → value
    dcgm_samples: dict[str, float] = field(default_factory=dict)  # 'DCGM_NAME{labels} ' → dcgm value
    # prefix → label dict, kept only when rendering through client_python (OpenMetrics)
    native_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    dcgm_labels: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Prepared:
    """One batch rendered ahead of the scrape: family → sample lines, and the nodes it covers."""

    native: dict[str, str]
    dcgm: dict[str, str]
    nodes: frozenset[str]


def _dedup(chunks: list[str]) -> list[str]:
    """Keep the first line of each series when two sources emitted the same one."""
    seen: set[str] = set()
    out = []
    for chunk in chunks:
        for line in chunk.splitlines(keepends=True):
            series = line.rpartition(" ")[0]
            if series not in seen:
                seen.add(series)
                out.append(line)
    return out


class Renderer:
    """Groups the fresh batches of all sources into families and renders them.

    Sample-line prefixes ('name{labels} ') are cached per (metric, entity, extra labels): sources reuse
    their Entity objects from one collection to the next, so a scrape mostly formats values.
    """

    _CACHE_MAX = 500_000

    def __init__(self, names: Names = "both") -> None:
        if names not in NAMES_CHOICES:
            raise ValueError(f"names must be one of {NAMES_CHOICES}, got {names!r}")
        self.names = names
        # (metric, id(entity), extra) → (entity kept alive so the id stays unique, native, dcgm prefix)
        self._prefix: dict[tuple[str, int, tuple[str, ...]], tuple[Entity, str | None, str | None]] = {}

    def _prefixes(self, spec: MetricSpec, entity: Entity, extra: tuple[str, ...]) -> tuple[str | None, str | None]:
        native = dcgm = None
        if self.names != "dcgm" or spec.entity in _SELF_KINDS:     # fleetwatch's own health in every mode
            labels = _labelstr(spec.labelnames, (*entity.labels, *extra))
            native = f"{spec.name}{{{labels}}} " if labels else f"{spec.name} "
        if self.names != "native" and spec.dcgm_default and entity.dcgm_labels and not extra:
            dcgm = f"{spec.dcgm}{{{_labelstr(DCGM_GPU_LABELS, entity.dcgm_labels)}}} "
        return native, dcgm

    def families(self, batches: Iterable[Batch], keep_labels: bool = False) -> list[Family]:
        """Fold batches into families in catalogue order; the first source to emit a series wins."""
        fams: dict[str, Family] = {}
        cache = self._prefix
        if len(cache) > self._CACHE_MAX:      # entities come and go (hot-plug, replay): bound the cache
            cache.clear()
        for b in batches:
            for metric, entity, value, extra in zip(b.metric, b.entity, b.value, b.extra, strict=True):
                fam = fams.get(metric)
                if fam is None:
                    fam = fams[metric] = Family(BY_NAME[metric])
                key = (metric, id(entity), extra)
                hit = cache.get(key)
                if hit is None or hit[0] is not entity:
                    hit = cache[key] = (entity, *self._prefixes(fam.spec, entity, extra))
                _, native, dcgm = hit
                if native is not None and native not in fam.samples:
                    fam.samples[native] = value
                    if keep_labels:
                        fam.native_labels[native] = dict(zip(fam.spec.labelnames, (*entity.labels, *extra),
                                                             strict=True))
                if dcgm is not None and dcgm not in fam.dcgm_samples:
                    fam.dcgm_samples[dcgm] = value * fam.spec.dcgm_scale
                    if keep_labels:
                        fam.dcgm_labels[dcgm] = dict(zip(DCGM_GPU_LABELS, entity.dcgm_labels, strict=True))
        return sorted(fams.values(), key=lambda f: _ORDER[f.spec.name])

    def prepare(self, batch: Batch) -> Prepared:
        """Render one batch's sample lines per family ahead of the scrape (called once per collection)."""
        native_lines: dict[str, list[str]] = {}
        dcgm_lines: dict[str, list[str]] = {}
        seen: set[str] = set()
        cache = self._prefix
        fv = format_value
        for metric, entity, value, extra in zip(batch.metric, batch.entity, batch.value, batch.extra, strict=True):
            key = (metric, id(entity), extra)
            hit = cache.get(key)
            if hit is None or hit[0] is not entity:
                hit = cache[key] = (entity, *self._prefixes(BY_NAME[metric], entity, extra))
            _, native, dcgm = hit
            if native is not None and native not in seen:
                seen.add(native)
                lines = native_lines.get(metric)
                if lines is None:
                    lines = native_lines[metric] = []
                lines.append(f"{native}{fv(value)}\n")
            if dcgm is not None and dcgm not in seen:
                seen.add(dcgm)
                lines = dcgm_lines.get(metric)
                if lines is None:
                    lines = dcgm_lines[metric] = []
                lines.append(f"{dcgm}{fv(value * BY_NAME[metric].dcgm_scale)}\n")
        return Prepared({m: "".join(v) for m, v in native_lines.items()},
                        {m: "".join(v) for m, v in dcgm_lines.items()},
                        frozenset({e.node for e in batch.entity}))

    def render_prepared(self, prepared: Iterable[Prepared]) -> bytes:
        """Prometheus text 0.0.4 from prepared batches: mostly string concatenation."""
        native: dict[str, list[str]] = {}
        dcgm: dict[str, list[str]] = {}
        owner: dict[tuple[str, str], int] = {}
        collided: set[str] = set()
        for i, p in enumerate(prepared):
            for m, chunk in p.native.items():
                native.setdefault(m, []).append(chunk)
                for node in p.nodes:     # two batches with the same node and family may share series
                    if owner.setdefault((m, node), i) != i:
                        collided.add(m)
            for m, chunk in p.dcgm.items():
                dcgm.setdefault(m, []).append(chunk)
        out: list[str] = []
        for m in sorted(native, key=_ORDER.__getitem__):
            s = BY_NAME[m]
            out.append(f"# HELP {s.name} {s.help}\n# TYPE {s.name} {s.type}\n")
            out.extend(_dedup(native[m]) if m in collided else native[m])
        for m in sorted(dcgm, key=_ORDER.__getitem__):
            s = BY_NAME[m]
            out.append(f"# HELP {s.dcgm} {s.dcgm_help}\n# TYPE {s.dcgm} {s.dcgm_type}\n")
            out.extend(_dedup(dcgm[m]) if m in collided else dcgm[m])
        return "".join(out).encode()

    def render_text(self, batches: Iterable[Batch]) -> bytes:
        """Prometheus text format 0.0.4."""
        out: list[str] = []
        fams = self.families(batches)
        fv = format_value
        for fam in fams:
            if fam.samples:
                s = fam.spec
                out.append(f"# HELP {s.name} {s.help}\n# TYPE {s.name} {s.type}\n")
                out.extend([f"{p}{fv(v)}\n" for p, v in fam.samples.items()])
        for fam in fams:
            if fam.dcgm_samples:
                s = fam.spec
                out.append(f"# HELP {s.dcgm} {s.dcgm_help}\n# TYPE {s.dcgm} {s.dcgm_type}\n")
                out.extend([f"{p}{fv(v)}\n" for p, v in fam.dcgm_samples.items()])
        return "".join(out).encode()

    def metrics(self, batches: Iterable[Batch]) -> Iterator[Metric]:
        """client_python metric families (for OpenMetrics)."""
        for fam in self.families(batches, keep_labels=True):
            s = fam.spec
            if fam.samples:
                base = s.name[:-6] if s.type == "counter" and s.name.endswith("_total") else s.name
                m = Metric(base, s.help, s.type)
                for p, v in fam.samples.items():
                    m.add_sample(s.name, fam.native_labels[p], v)
                yield m
            if fam.dcgm_samples and s.dcgm:
                typ = s.dcgm_type or "gauge"
                if typ == "counter" and not s.dcgm.endswith("_total"):
                    typ = "unknown"
                base = s.dcgm[:-6] if typ == "counter" else s.dcgm
                m = Metric(base, s.dcgm_help or "", typ)
                for p, v in fam.dcgm_samples.items():
                    m.add_sample(s.dcgm, fam.dcgm_labels[p], v)
                yield m


class _BatchCollector(Collector):
    def __init__(self, renderer: Renderer, batches: list[Batch]) -> None:
        self.renderer = renderer
        self.batches = batches

    def collect(self) -> Iterator[Metric]:
        return self.renderer.metrics(self.batches)


def render_openmetrics(renderer: Renderer, batches: list[Batch]) -> bytes:
    """OpenMetrics 1.0 text through client_python."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_BatchCollector(renderer, batches))
    return om_generate_latest(reg)
