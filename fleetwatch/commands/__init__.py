"""Subcommands the predictor and alerts add to the CLI (registered in fleetwatch.cli.CLI_EXTENSIONS)."""
