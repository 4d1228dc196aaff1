"""fleetwatch's Grafana dashboards, built as code with grafana-foundation-sdk (see dashboards.export)."""
