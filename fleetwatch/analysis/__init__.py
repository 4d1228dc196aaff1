"""Offline analysis of recorded traces: DuckDB aggregations (query) and the HTML report (report)."""

from fleetwatch.analysis.query import analyze, connect, fleet_power_series, gpu_series

__all__ = ["analyze", "connect", "fleet_power_series", "gpu_series"]
