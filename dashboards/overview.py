"""Fleet overview: GPUs up and lost, total power and energy, utilisation, hottest GPUs, active alerts."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.builder import (
    Ctx,
    Q,
    bargauge_panel,
    dashboard,
    row,
    stat_panel,
    table_panel,
    timeseries_panel,
    value_map,
    variables,
)

UID = "fleetwatch-overview"


def build(ctx: Ctx) -> db.Dashboard:
    """The fleet overview dashboard."""
    d = dashboard(ctx, UID, "fleetwatch / Fleet overview",
                  "The whole fleet at a glance; drill down through the node and GPU health dashboards.",
                  ["overview"])
    for v in variables(ctx, gpu=False):
        d = d.with_variable(v)
    n = ctx.node_label
    info = ctx.sel("fleetwatch_gpu_temperature_celsius")   # present under both namings, one series per GPU
    d = d.with_row(row(ctx, "Fleet"))
    d = d.with_panel(stat_panel(ctx, "GPUs reporting", "none", [Q(f"count({info})", instant=True)],
                                "GPUs with a current temperature reading.", w=4))
    d = d.with_panel(stat_panel(
        ctx, "GPUs lost", "none", [Q(f"sum({ctx.sel('fleetwatch_gpu_lost')}) or vector(0)", instant=True)],
        "GPUs that NVML reports lost (XID 79: fallen off the bus). Native metric fleetwatch_gpu_lost.", w=4,
        thresholds=[(None, "green"), (1, "red")]))
    d = d.with_panel(stat_panel(
        ctx, "Nodes", "none", [Q(f"count(count {ctx.by('node')} ({info}))", instant=True)],
        "Nodes with at least one reporting GPU.", w=4))
    d = d.with_panel(stat_panel(
        ctx, "Total GPU power", "watt", [Q(f"sum({ctx.sel('fleetwatch_gpu_power_watts')})", instant=True)],
        "Power draw of all GPU boards (fleetwatch_gpu_power_watts / DCGM_FI_DEV_POWER_USAGE).", w=4))
    d = d.with_panel(stat_panel(
        ctx, "GPU energy, last 24 h", "joule",
        [Q(f"sum({ctx.over('increase', 'fleetwatch_gpu_energy_joules_total', '1d')})", instant=True)],
        "Energy used by all GPUs over the last day, from the driver's energy counter.", w=4))
    d = d.with_panel(stat_panel(
        ctx, "Mean utilisation", "percentunit",
        [Q(f"avg({ctx.sel('fleetwatch_gpu_utilization_ratio')})", instant=True)],
        "Mean fraction of time a kernel was running, over all GPUs.", w=4,
        thresholds=[(None, "blue"), (0.3, "green")]))
    d = d.with_row(row(ctx, "Trends"))
    d = d.with_panel(timeseries_panel(
        ctx, "GPU power by node", "watt",
        [Q(f"sum {ctx.by('node')} ({ctx.sel('fleetwatch_gpu_power_watts')})", legend=f"{{{{{n}}}}}")],
        "Sum of GPU board power per node.", stack=True, fill=30))
    d = d.with_panel(timeseries_panel(
        ctx, "GPU utilisation by node", "percentunit",
        [Q(f"avg {ctx.by('node')} ({ctx.sel('fleetwatch_gpu_utilization_ratio')})", legend=f"{{{{{n}}}}}")],
        "Mean GPU utilisation per node.", min_val=0))
    d = d.with_panel(bargauge_panel(
        ctx, "Hottest GPUs", "celsius",
        [Q(f"topk(10, {ctx.sel('fleetwatch_gpu_temperature_celsius')})", legend=f"{{{{{n}}}}} GPU {{{{gpu}}}}",
           instant=True)],
        "The ten hottest GPU cores now.", thresholds=[(None, "green"), (75, "orange"), (85, "red")]))
    d = d.with_panel(table_panel(
        ctx, "Active alerts", "none",
        [Q('ALERTS{alertstate="firing"}', instant=True, table=True)],
        "Alerts Prometheus is firing now (its ALERTS series), from fleetwatch's alert rules and any others.",
        hide=["Time", "__name__", "Value"],
        overrides=[("severity", [dm.DynamicConfigValue(id_val="mappings", value=[value_map(
            {"critical": ("critical", "red"), "warning": ("warning", "orange"), "info": ("info", "blue")})])])]))
    return d
