"""alerts package (later issues)."""
