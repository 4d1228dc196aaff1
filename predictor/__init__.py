"""predictor package (later issues)."""
