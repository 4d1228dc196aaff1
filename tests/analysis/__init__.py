"""Tests of offline trace analysis: DuckDB aggregations, the analyze CLI and the report."""
