"""Prometheus metrics of warp (served by :class:`~cartridge_dagster.observability.MetricsServer`).

Labels are the schema, the collection and the operation, never values from documents.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "BATCH_ROWS",
    "BATCH_SECONDS",
    "DEAD_LETTERS",
    "EVENTS",
    "HISTORY_LOST",
    "LAG_SECONDS",
    "QUEUE_DEPTH",
    "RETRIES",
    "SLOT_LAG_BYTES",
    "SLOT_LAG_SECONDS",
    "SLOT_RETAINED_BYTES",
    "SNAPSHOT_ROWS",
]

EVENTS = Counter(
    "cartridge_warp_events",
    "Changes applied to raw tables",
    ["schema", "table", "op"],
)
DEAD_LETTERS = Counter(
    "cartridge_warp_dead_letters",
    "Changes written to the dead-letter table",
    ["schema", "table"],
)
BATCH_ROWS = Histogram(
    "cartridge_warp_batch_rows",
    "Rows per applied batch",
    ["schema"],
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 50000),
)
BATCH_SECONDS = Histogram(
    "cartridge_warp_batch_seconds",
    "Seconds to apply one batch (one transaction)",
    ["schema"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
LAG_SECONDS = Gauge(
    "cartridge_warp_lag_seconds",
    "Seconds between the source commit of the last applied change and its landing",
    ["schema"],
)
QUEUE_DEPTH = Gauge(
    "cartridge_warp_queue_batches", "Batches waiting between reader and writer", ["schema"]
)
RETRIES = Counter("cartridge_warp_retries", "Retries of transient errors", ["schema", "side"])
HISTORY_LOST = Counter(
    "cartridge_warp_history_lost",
    "Times the change stream could not resume (resume token lost)",
    ["schema"],
)
SNAPSHOT_ROWS = Counter(
    "cartridge_warp_snapshot_rows", "Documents copied by snapshots", ["schema", "table"]
)
SLOT_LAG_BYTES = Gauge(
    "cartridge_warp_slot_lag_bytes",
    "PostgreSQL sources: WAL between the server's current position and the position warp "
    "confirmed to its replication slot",
    ["schema"],
)
SLOT_RETAINED_BYTES = Gauge(
    "cartridge_warp_slot_retained_bytes",
    "PostgreSQL sources: WAL the server keeps for warp's replication slot (from its restart "
    "position)",
    ["schema"],
)
SLOT_LAG_SECONDS = Gauge(
    "cartridge_warp_slot_lag_seconds",
    "PostgreSQL sources: age of the oldest source commit warp has read but not yet confirmed "
    "to its replication slot (0 when everything read is confirmed)",
    ["schema"],
)
