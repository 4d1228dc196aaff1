"""Per-node collection: sources, exporter, recorder and the fleet simulator."""
