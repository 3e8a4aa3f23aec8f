"""Sensors and schedules (the Dagster layer)."""
