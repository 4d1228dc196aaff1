"""Collector sources, one module per thing read."""
