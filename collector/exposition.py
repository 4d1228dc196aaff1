"""Renders batches as Prometheus text (0.0.4) and OpenMetrics, in native and/or dcgm-exporter names.

The 0.0.4 text is rendered here rather than by prometheus_client's generate_latest because dcgm-exporter
declares counters whose names lack `_total` (DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION): client_python would
rename them in the HELP/TYPE lines, and the dcgm names must stay byte for byte. OpenMetrics goes through
client_python; there, dcgm counters without `_total` are typed `unknown` (OpenMetrics forbids them).
"""

from __future__ import annotations

import math
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
_DCGM_KINDS = ("gpu",)


def escape_label_value(v: str) -> str:
    """Escape a label value for the text formats."""
    if "\\" in v or '"' in v or "\n" in v:
        v = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def format_value(v: float) -> str:
    """Format a sample value the way Prometheus parses it back exactly."""
    if v != v:
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def _labelstr(names: Iterable[str], values: Iterable[str]) -> str:
    return ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))


@dataclass
class Family:
    """One metric family being assembled for a scrape."""

    spec: MetricSpec
    samples: dict[str, float] = field(default_factory=dict)       # native label string → value
    dcgm_samples: dict[str, float] = field(default_factory=dict)  # dcgm label string → dcgm value
    # label string → label dict, kept only when rendering through client_python (OpenMetrics)
    native_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    dcgm_labels: dict[str, dict[str, str]] = field(default_factory=dict)


class Renderer:
    """Groups the fresh batches of all sources into families and renders them."""

    def __init__(self, names: Names = "both") -> None:
        if names not in NAMES_CHOICES:
            raise ValueError(f"names must be one of {NAMES_CHOICES}, got {names!r}")
        self.names = names
        self._native_cache: dict[tuple[Entity, tuple[str, ...], str], str] = {}
        self._dcgm_cache: dict[Entity, str] = {}

    def _native_labels(self, spec: MetricSpec, entity: Entity, extra: tuple[str, ...]) -> str:
        key = (entity, extra, spec.entity)
        s = self._native_cache.get(key)
        if s is None:
            if len(self._native_cache) > 200_000:   # entities come and go (hot-plug, replay): bound it
                self._native_cache.clear()
            s = _labelstr(spec.labelnames, (*entity.labels, *extra))
            self._native_cache[key] = s
        return s

    def _dcgm_labels(self, entity: Entity) -> str:
        s = self._dcgm_cache.get(entity)
        if s is None:
            if len(self._dcgm_cache) > 50_000:
                self._dcgm_cache.clear()
            s = _labelstr(DCGM_GPU_LABELS, entity.dcgm_labels)
            self._dcgm_cache[entity] = s
        return s

    def families(self, batches: Iterable[Batch], keep_labels: bool = False) -> list[Family]:
        """Fold batches into families in catalogue order; the first source to emit a series wins."""
        fams: dict[str, Family] = {}
        want_native = self.names in ("native", "both")
        want_dcgm = self.names in ("dcgm", "both")
        for b in batches:
            for metric, entity, value, extra in zip(b.metric, b.entity, b.value, b.extra, strict=True):
                fam = fams.get(metric)
                if fam is None:
                    fam = fams[metric] = Family(BY_NAME[metric])
                spec = fam.spec
                if want_native or spec.entity == "source":
                    ls = self._native_labels(spec, entity, extra)
                    if ls not in fam.samples:
                        fam.samples[ls] = value
                        if keep_labels:
                            fam.native_labels[ls] = dict(zip(spec.labelnames, (*entity.labels, *extra),
                                                             strict=True))
                if want_dcgm and spec.dcgm_default and entity.dcgm_labels and not extra:
                    ds = self._dcgm_labels(entity)
                    if ds not in fam.dcgm_samples:
                        fam.dcgm_samples[ds] = value * spec.dcgm_scale
                        if keep_labels:
                            fam.dcgm_labels[ds] = dict(zip(DCGM_GPU_LABELS, entity.dcgm_labels, strict=True))
        return sorted(fams.values(), key=lambda f: _ORDER[f.spec.name])

    def render_text(self, batches: Iterable[Batch]) -> bytes:
        """Prometheus text format 0.0.4."""
        out: list[str] = []
        fams = self.families(batches)
        for fam in fams:
            if fam.samples:
                s = fam.spec
                out.append(f"# HELP {s.name} {s.help}\n# TYPE {s.name} {s.type}\n")
                out.extend(f"{s.name}{{{ls}}} {format_value(v)}\n" for ls, v in fam.samples.items())
        for fam in fams:
            if fam.dcgm_samples:
                s = fam.spec
                out.append(f"# HELP {s.dcgm} {s.dcgm_help}\n# TYPE {s.dcgm} {s.dcgm_type}\n")
                out.extend(f"{s.dcgm}{{{ls}}} {format_value(v)}\n" for ls, v in fam.dcgm_samples.items())
        return "".join(out).encode()

    def metrics(self, batches: Iterable[Batch]) -> Iterator[Metric]:
        """client_python metric families (for OpenMetrics)."""
        for fam in self.families(batches, keep_labels=True):
            s = fam.spec
            if fam.samples:
                base = s.name[:-6] if s.type == "counter" and s.name.endswith("_total") else s.name
                m = Metric(base, s.help, s.type)
                for ls, v in fam.samples.items():
                    m.add_sample(s.name, fam.native_labels[ls], v)
                yield m
            if fam.dcgm_samples and s.dcgm:
                typ = s.dcgm_type or "gauge"
                if typ == "counter" and not s.dcgm.endswith("_total"):
                    typ = "unknown"
                base = s.dcgm[:-6] if typ == "counter" else s.dcgm
                m = Metric(base, s.dcgm_help or "", typ)
                for ls, v in fam.dcgm_samples.items():
                    m.add_sample(s.dcgm, fam.dcgm_labels[ls], v)
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
