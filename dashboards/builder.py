"""Shared building blocks for fleetwatch's dashboards: query naming, units, layout and panel helpers.

Every dashboard is built with grafana-foundation-sdk builders; this module only keeps the repetitive
parts (selectors in native or dcgm-exporter names, grid layout, units from the metric catalogue) in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from grafana_foundation_sdk.builders import bargauge, stat, table, text, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as pb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models import text as tm

from collector.catalogue import spec

Names = Literal["native", "dcgm"]
NAMES: tuple[Names, ...] = ("native", "dcgm")

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
GRID_COLUMNS = 24

# Catalogue unit → Grafana unit id (https://github.com/grafana/grafana/blob/main/packages/grafana-data/src/valueFormats/categories.ts).
GRAFANA_UNITS: dict[str, str] = {
    "ratio": "percentunit", "watts": "watt", "celsius": "celsius", "bytes": "bytes", "joules": "joule",
    "hertz": "hertz", "bytes_per_second": "Bps", "seconds": "s", "": "none",
}
# Metrics that later issues add; panels that use them stay in place and say what they wait for.
WAITING_METRICS: dict[str, str] = {}
WAITS_PREFIX = "Waits for "


def grafana_unit(metric: str) -> str:
    """The Grafana unit id of a catalogue metric's unit."""
    return GRAFANA_UNITS[spec(metric).unit]


@dataclass
class Ctx:
    """What one dashboard build needs: the naming it targets, a panel id counter and a grid cursor."""

    names: Names = "native"
    next_id: int = 1
    x: int = 0
    y: int = 0
    row_h: int = 0
    native_only: set[str] = field(default_factory=set)

    @property
    def node_label(self) -> str:
        """The label carrying the node name in the chosen naming."""
        return "Hostname" if self.names == "dcgm" else "node"

    def sel(self, metric: str, extra: str = "", node: bool = True, gpu: bool = False) -> str:
        """A series selector for a catalogue metric, filtered by $node (and $gpu), in native units.

        In dcgm mode a metric with a dcgm-exporter name is queried by that name and divided back to the
        native unit, so panels keep one unit in both namings; a metric without one stays native.
        """
        s = spec(metric) if metric not in WAITING_METRICS else None
        use_dcgm = self.names == "dcgm" and s is not None and s.dcgm is not None and s.dcgm_default
        if self.names == "dcgm" and not use_dcgm:
            self.native_only.add(metric)
        node_label = "Hostname" if use_dcgm else "node"
        matchers = []
        if node:
            matchers.append(f'{node_label}=~"$node"')
        if gpu:
            matchers.append('gpu=~"$gpu"')
        if extra:
            matchers.append(extra)
        name = s.dcgm if use_dcgm and s is not None else metric
        expr = f"{name}{{{','.join(matchers)}}}"
        if use_dcgm and s is not None and s.dcgm_scale != 1.0:
            expr = f"({expr} / {s.dcgm_scale:g})"
        return expr

    def over(self, fn: str, metric: str, window: str, node: bool = True, gpu: bool = False) -> str:
        """`fn(selector[window])` (rate, increase ...), scaled back to native units after the function."""
        expr = self.sel(metric, node=node, gpu=gpu)
        scaled = expr.startswith("(")
        if scaled:
            inner, _, divisor = expr[1:-1].rpartition(" / ")
            return f"({fn}({inner}[{window}]) / {divisor})"
        return f"{fn}({expr}[{window}])"

    def by(self, *labels: str) -> str:
        """A `by (...)` clause with `node` renamed for dcgm naming."""
        return "by (" + ", ".join(self.node_label if lb == "node" else lb for lb in labels) + ")"

    def place(self, w: int, h: int) -> dm.GridPos:
        """The next grid position for a w×h panel, wrapping to a new line when the row is full."""
        if self.x + w > GRID_COLUMNS:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = dm.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def new_row(self) -> None:
        """Start a new grid line."""
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0

    def take_id(self) -> int:
        """A panel id unique within the dashboard."""
        i, self.next_id = self.next_id, self.next_id + 1
        return i


@dataclass(frozen=True)
class Q:
    """One panel query: PromQL, legend, and whether it is instant (tables, stats) or a range."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False


def _targets(queries: list[Q]) -> list[pb.Dataquery]:
    out = []
    for i, q in enumerate(queries):
        t = pb.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if q.legend:
            t = t.legend_format(q.legend)
        t = t.instant() if q.instant else t.range()
        if q.table:
            t = t.format(pm.PromQueryFormat.TABLE)
        out.append(t)
    return out


def _describe(description: str, waits: str | None) -> str:
    if waits is None:
        return description
    return f"{WAITS_PREFIX}{waits} ({WAITING_METRICS[waits]}); no data until it is exported. {description}"


def _common(p: Any, ctx: Ctx, title: str, unit: str, queries: list[Q], description: str, w: int, h: int,
            waits: str | None) -> Any:
    p = (p.id(ctx.take_id()).title(title).description(_describe(description, waits)).datasource(DATASOURCE)
         .unit(unit).grid_pos(ctx.place(w, h)))
    for t in _targets(queries):
        p = p.with_target(t)
    return p


def timeseries_panel(ctx: Ctx, title: str, unit: str, queries: list[Q], description: str, w: int = 12,
                     h: int = 8, waits: str | None = None, stack: bool = False, fill: int = 10,
                     min_val: float | None = None) -> timeseries.Panel:
    """A time series panel."""
    p = _common(timeseries.Panel(), ctx, title, unit, queries, description, w, h, waits).fill_opacity(fill)
    if stack:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if min_val is not None:
        p = p.min(min_val)
    return p


def stat_panel(ctx: Ctx, title: str, unit: str, queries: list[Q], description: str, w: int = 4, h: int = 4,
               waits: str | None = None, thresholds: list[tuple[float | None, str]] | None = None,
               mappings: list[dm.ValueMapping] | None = None) -> stat.Panel:
    """A single-stat panel (instant queries)."""
    p = _common(stat.Panel(), ctx, title, unit, queries, description, w, h, waits)
    p = p.color_mode(cm.BigValueColorMode.BACKGROUND if thresholds else cm.BigValueColorMode.VALUE)
    if thresholds:
        p = p.thresholds(thresholds_config(thresholds))
    if mappings:
        p = p.mappings(mappings)
    return p


def bargauge_panel(ctx: Ctx, title: str, unit: str, queries: list[Q], description: str, w: int = 12,
                   h: int = 8, waits: str | None = None, max_val: float | None = None,
                   thresholds: list[tuple[float | None, str]] | None = None) -> bargauge.Panel:
    """A horizontal bar gauge (rankings)."""
    p = _common(bargauge.Panel(), ctx, title, unit, queries, description, w, h, waits)
    p = p.orientation(cm.VizOrientation.HORIZONTAL).display_mode(cm.BarGaugeDisplayMode.GRADIENT)
    if max_val is not None:
        p = p.max(max_val)
    if thresholds:
        p = p.thresholds(thresholds_config(thresholds))
    return p


def table_panel(ctx: Ctx, title: str, unit: str, queries: list[Q], description: str, w: int = 12, h: int = 8,
                waits: str | None = None, overrides: list[tuple[str, list[dm.DynamicConfigValue]]] | None = None,
                hide: list[str] | None = None) -> table.Panel:
    """A table panel; `hide` names columns to drop (Time, __name__ ...)."""
    p = _common(table.Panel(), ctx, title, unit, queries, description, w, h, waits)
    for name, props in overrides or []:
        p = p.override_by_name(name, props)
    if hide:
        p = p.with_transformation(dm.DataTransformerConfig(
            id_val="organize", options={"excludeByName": {c: True for c in hide}}))
    return p


def text_panel(ctx: Ctx, title: str, content: str, w: int = 24, h: int = 3) -> text.Panel:
    """A markdown note (text panels query nothing and need no unit)."""
    return (text.Panel().id(ctx.take_id()).title(title).content(content).mode(tm.TextMode.MARKDOWN)
            .grid_pos(ctx.place(w, h)))


def row(ctx: Ctx, title: str) -> db.Row:
    """A row header spanning the grid."""
    ctx.new_row()
    r = db.Row(title).id(ctx.take_id()).grid_pos(dm.GridPos(h=1, w=GRID_COLUMNS, x=0, y=ctx.y))
    ctx.y += 1
    return r


def thresholds_config(steps: list[tuple[float | None, str]]) -> db.ThresholdsConfig:
    """Absolute thresholds from (value, colour) steps; the first value is None (the base)."""
    return (db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=v, color=c) for v, c in steps]))


def value_map(mapping: dict[str, tuple[str, str | None]]) -> dm.ValueMap:
    """A value mapping: raw value → (display text, colour or None)."""
    return dm.ValueMap(options={k: dm.ValueMappingResult(text=t, color=c) for k, (t, c) in mapping.items()})


def variables(ctx: Ctx, gpu: bool = True, node_metric: str = "fleetwatch_gpu_temperature_celsius") -> list[Any]:
    """The datasource, node and (optionally) gpu template variables."""
    probe = ctx.sel(node_metric, node=False) if node_metric.startswith("fleetwatch_gpu") else node_metric
    probe_name = probe.split("{", 1)[0].lstrip("(")
    out: list[Any] = [
        db.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        db.QueryVariable("node").label("Node").datasource(DATASOURCE)
        .query(f"label_values({probe_name}, {ctx.node_label})").multi(True).include_all(True)
        .all_value(".*").refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(dm.VariableSort.NATURAL_ASC),
    ]
    if gpu:
        out.append(db.QueryVariable("gpu").label("GPU").datasource(DATASOURCE)
                   .query(f'label_values({probe_name}{{{ctx.node_label}=~"$node"}}, gpu)').multi(True)
                   .include_all(True).all_value(".*").refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                   .sort(dm.VariableSort.NATURAL_ASC))
    return out


def dashboard(ctx: Ctx, uid: str, title: str, description: str, tags: list[str]) -> db.Dashboard:
    """A dashboard shell with fleetwatch's defaults; the uid gets a -dcgm suffix for dcgm naming."""
    suffix = "-dcgm" if ctx.names == "dcgm" else ""
    return (db.Dashboard(title + (" (dcgm-exporter names)" if suffix else "")).uid(uid + suffix)
            .description(description).tags(["fleetwatch", *tags, *(["dcgm"] if suffix else [])])
            .refresh("30s").time("now-6h", "now").timezone("browser").editable()
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(db.DashboardLink("fleetwatch").type(dm.DashboardLinkType.DASHBOARDS).tags(["fleetwatch"])
                  .as_dropdown(True).include_vars(True).keep_time(True)))


def to_json(d: db.Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of a built dashboard."""
    return json.loads(JSONEncoder(sort_keys=True).encode(d.build()))
