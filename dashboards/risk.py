"""Failure risk: GPUs ranked by predicted failure risk with their reasons, and risk over time."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db

from dashboards.builder import (
    Ctx,
    Q,
    bargauge_panel,
    dashboard,
    row,
    table_panel,
    text_panel,
    timeseries_panel,
    variables,
)

UID = "fleetwatch-failure-risk"
RISK = "fleetwatch_gpu_failure_risk"
REASON = "fleetwatch_gpu_failure_risk_reason"


def build(ctx: Ctx) -> db.Dashboard:
    """The failure-risk dashboard."""
    d = dashboard(ctx, UID, "fleetwatch / Failure risk",
                  "Which GPUs the predictor expects to fail, why, and how their risk evolved.", ["risk"])
    for v in variables(ctx):
        d = d.with_variable(v)
    sel = 'node=~"$node",gpu=~"$gpu"'
    d = d.with_row(row(ctx, "Ranking"))
    d = d.with_panel(bargauge_panel(
        ctx, "Highest-risk GPUs", "percentunit",
        [Q(f"topk(15, {RISK}{{{sel}}})", legend="{{node}} GPU {{gpu}}", instant=True)],
        "Predicted probability that the GPU fails within the model's horizon (0–1).", max_val=1,
        thresholds=[(None, "green"), (0.2, "orange"), (0.5, "red")]))
    d = d.with_panel(table_panel(
        ctx, "Reasons", "percentunit",
        [Q(f"topk(30, {REASON}{{{sel}}})", instant=True, table=True)],
        "The factors behind each GPU's risk (reason label) and their contribution.",
        hide=["Time", "__name__"]))
    d = d.with_row(row(ctx, "History"))
    d = d.with_panel(timeseries_panel(
        ctx, "Risk over time", "percentunit", [Q(f"{RISK}{{{sel}}}", legend="{{node}} GPU {{gpu}}")],
        "Predicted failure risk of the selected GPUs.", w=16, fill=0, min_val=0))
    d = d.with_panel(text_panel(
        ctx, "How to read this",
        "Risk comes from the predictor (`fleetwatch_gpu_failure_risk{node,gpu,uuid}`, 0–1) and its reasons "
        "(`fleetwatch_gpu_failure_risk_reason{...,reason}`). Check the GPU health dashboard for the raw "
        "evidence: ECC errors, remapped rows, XIDs, NVLink and PCIe errors.", w=8, h=8))
    return d
