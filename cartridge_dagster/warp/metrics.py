"""Prometheus metrics of warp (served by :class:`~cartridge_dagster.observability.MetricsServer`).

Labels are the schema, the collection and the operation, never values from documents.

The metrics are made on first use (``metrics.EVENTS``) or by :func:`load`: ``prometheus_client``
imports ``http.server``, ``urllib.request`` and ``wsgiref`` (~40–50 ms in a fresh process), which
the runner loads in a worker thread once its connections are open, while the snapshot's first
reads are under way, instead of before them. Until then the queue-depth gauge skips its
updates (it is set again at every batch); counters wait for the metrics.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

    EVENTS: Counter
    DEAD_LETTERS: Counter
    BATCH_ROWS: Histogram
    BATCH_SECONDS: Histogram
    LAG_SECONDS: Gauge
    QUEUE_DEPTH: Gauge
    RETRIES: Counter
    HISTORY_LOST: Counter
    SNAPSHOT_ROWS: Counter
    SLOT_LAG_BYTES: Gauge
    SLOT_RETAINED_BYTES: Gauge
    SLOT_LAG_SECONDS: Gauge

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
    "load",
    "loaded",
]

_lock = threading.Lock()
_loaded = False


def loaded() -> bool:
    """Whether the metrics exist yet (a gauge may skip an update until then)."""
    return _loaded


def load() -> None:
    """Make (register) the metrics, once; safe from any thread."""
    global _loaded
    with _lock:
        if _loaded:
            return
        from prometheus_client import Counter, Gauge, Histogram

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
        RETRIES = Counter(
            "cartridge_warp_retries", "Retries of transient errors", ["schema", "side"]
        )
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
            "PostgreSQL sources: WAL the server keeps for warp's replication slot "
            "(from its restart position)",
            ["schema"],
        )
        SLOT_LAG_SECONDS = Gauge(
            "cartridge_warp_slot_lag_seconds",
            "PostgreSQL sources: age of the oldest source commit warp has read but not yet "
            "confirmed to its replication slot (0 when everything read is confirmed)",
            ["schema"],
        )

        globals().update(
            EVENTS=EVENTS,
            DEAD_LETTERS=DEAD_LETTERS,
            BATCH_ROWS=BATCH_ROWS,
            BATCH_SECONDS=BATCH_SECONDS,
            LAG_SECONDS=LAG_SECONDS,
            QUEUE_DEPTH=QUEUE_DEPTH,
            RETRIES=RETRIES,
            HISTORY_LOST=HISTORY_LOST,
            SNAPSHOT_ROWS=SNAPSHOT_ROWS,
            SLOT_LAG_BYTES=SLOT_LAG_BYTES,
            SLOT_RETAINED_BYTES=SLOT_RETAINED_BYTES,
            SLOT_LAG_SECONDS=SLOT_LAG_SECONDS,
        )
        _loaded = True


def __getattr__(name: str) -> Any:
    if name in __all__ and name.isupper():
        load()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
