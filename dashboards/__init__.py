"""dashboards package (later issues)."""
