"""Alerts and remediation: firing alerts, alert history, and the remediation audit trail."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from dashboards.builder import Ctx, Q, dashboard, row, stat_panel, table_panel, text_panel, timeseries_panel, variables

UID = "fleetwatch-alerts"
AUDIT_TAG = "fleetwatch-remediation"
REMEDIATION = "fleetwatch_remediation_actions_total"


def build(ctx: Ctx) -> db.Dashboard:
    """The alerts and remediation dashboard."""
    d = dashboard(ctx, UID, "fleetwatch / Alerts and remediation",
                  "Firing alerts and what fleetwatch did about them.", ["alerts"])
    for v in variables(ctx, gpu=False):
        d = d.with_variable(v)
    # Remediation audit entries arrive as Grafana annotations tagged AUDIT_TAG (written by issue 6's service).
    d = d.annotation(db.AnnotationQuery().name("Remediation audit").enable(True).icon_color("orange")
                     .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                     .target(db.AnnotationTarget().type("tags").tags([AUDIT_TAG]).limit(500).match_any(True)))
    d = d.with_row(row(ctx, "Now"))
    d = d.with_panel(stat_panel(ctx, "Firing alerts", "none",
                                [Q('count(ALERTS{alertstate="firing"}) or vector(0)', instant=True)],
                                "Alerts Prometheus is firing now.", w=6,
                                thresholds=[(None, "green"), (1, "red")]))
    d = d.with_panel(table_panel(ctx, "Firing alerts", "none", [Q('ALERTS{alertstate="firing"}', instant=True,
                                                                   table=True)],
                                 "Every firing alert with its labels (Prometheus' ALERTS series).", w=18,
                                 hide=["Time", "__name__", "Value"]))
    d = d.with_row(row(ctx, "History"))
    d = d.with_panel(timeseries_panel(
        ctx, "Alerts over time", "none", [Q("sum by (alertname) (ALERTS{alertstate=\"firing\"})",
                                            legend="{{alertname}}")],
        "Firing alerts by name.", stack=True, fill=40))
    d = d.with_panel(timeseries_panel(
        ctx, "Remediation actions", "none",
        [Q(f'sum by (action, result) (increase({REMEDIATION}{{node=~"$node"}}[$__rate_interval]))',
           legend="{{action}} {{result}}")],
        "Remediation actions taken (drain, reset, ...) by outcome.", stack=True, fill=40))
    d = d.with_panel(text_panel(
        ctx, "Remediation audit log",
        f"Each remediation step is recorded in fleetwatch's audit log and shown on every panel of this "
        f"dashboard as an annotation tagged `{AUDIT_TAG}` (toggle 'Remediation audit' at the top), which "
        f"fleetwatch posts when `remediation.grafana_url` is set. The full log: `fleetwatch remediation audit`."))
    return d
