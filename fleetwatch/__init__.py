"""fleetwatch: CLI, configuration and service wiring."""
