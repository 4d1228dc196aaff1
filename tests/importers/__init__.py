"""Tests of the trace importers (collector/importers)."""
