"""deploy core (never imports dagster)."""
