"""warp core (never imports dagster)."""
