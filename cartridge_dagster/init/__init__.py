"""init core (never imports dagster)."""
