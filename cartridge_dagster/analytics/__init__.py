"""analytics core (never imports dagster)."""
