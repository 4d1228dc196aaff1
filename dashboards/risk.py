"""Failure risk: GPUs ranked by predicted failure risk with their reasons, and risk over time."""

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
    text_panel,
    timeseries_panel,
    variables,
)

UID = "fleetwatch-failure-risk"
RISK = "fleetwatch_gpu_failure_risk"
REASON = "fleetwatch_gpu_failure_risk_reason"
LEVEL = "fleetwatch_gpu_failure_risk_threshold"


def build(ctx: Ctx) -> db.Dashboard:
    """The failure-risk dashboard."""
    d = dashboard(ctx, UID, "fleetwatch / Failure risk",
                  "Which GPUs the predictor expects to fail, why, and how their risk evolved.", ["risk"])
    for v in variables(ctx):
        d = d.with_variable(v)
    sel = 'node=~"$node",gpu=~"$gpu"'
    d = d.with_row(row(ctx, "Ranking"))
    d = d.with_panel(stat_panel(
        ctx, "GPUs at their alert level", "none",
        [Q(f"count({RISK}{{{sel}}} >= {LEVEL}{{{sel}}}) or vector(0)", instant=True)],
        "GPUs whose risk is at or above the level that alerts on them now (the model's threshold, or its "
        "clear level while the GPU is alerting): what FleetwatchGpuHighFailureRisk fires on after 10 minutes.",
        w=4, h=8, thresholds=[(None, "green"), (1, "red")]))
    d = d.with_panel(bargauge_panel(
        ctx, "Highest-risk GPUs", "percentunit",
        [Q(f"topk(15, {RISK}{{{sel}}})", legend="{{node}} GPU {{gpu}}", instant=True)],
        "Predicted probability that the GPU fails within the model's horizon (0–1). The colours are fixed "
        "steps; the model's own alert level is drawn on 'Risk over time'.", w=10, max_val=1,
        thresholds=[(None, "green"), (0.2, "orange"), (0.5, "red")]))
    d = d.with_panel(table_panel(
        ctx, "Reasons", "percentunit",
        [Q(f"topk(30, {REASON}{{{sel}}})", instant=True, table=True)],
        "The factors behind each GPU's risk (reason label) and their contribution.", w=10,
        hide=["Time", "__name__"]))
    d = d.with_row(row(ctx, "History"))
    d = d.with_panel(timeseries_panel(
        ctx, "Risk over time", "percentunit",
        [Q(f"{RISK}{{{sel}}}", legend="{{node}} GPU {{gpu}}"),
         Q(f"{LEVEL}{{{sel}}}", legend="{{node}} GPU {{gpu}} alert level")],
        "Predicted failure risk of the selected GPUs, and (dashed) the level that alerts on each: the model's "
        "threshold, dropping to its clear level while the GPU is alerting.", w=16, fill=0, min_val=0)
        .override_by_query("B", [dm.DynamicConfigValue(id_val="custom.lineStyle",
                                                       value={"fill": "dash", "dash": [10, 10]})]))
    d = d.with_panel(text_panel(
        ctx, "How to read this",
        "Risk comes from the predictor (`fleetwatch_gpu_failure_risk{node,gpu,uuid}`, 0–1) and its reasons "
        "(`fleetwatch_gpu_failure_risk_reason{...,reason}`). Check the GPU health dashboard for the raw "
        "evidence: ECC errors, remapped rows, XIDs, NVLink and PCIe errors.", w=8, h=8))
    return d
