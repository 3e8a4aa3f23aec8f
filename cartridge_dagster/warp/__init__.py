"""warp core: exactly-once CDC from MongoDB into PostgreSQL raw tables (never imports dagster).

- :mod:`~cartridge_dagster.warp.changes`: events and documents → rows (versions, policies)
- :mod:`~cartridge_dagster.warp.sink`: one transaction per batch (merge, fence, dead letters)
- :mod:`~cartridge_dagster.warp.sources`: the source Protocol and the factory by URL
- :mod:`~cartridge_dagster.warp.source`: MongoDB: snapshot, change stream, drops and renames
- :mod:`~cartridge_dagster.warp.runner`: reader → bounded queue → writer, retries, stop
- :mod:`~cartridge_dagster.warp.admin`: status, dead-letter list and replay, validation
- :mod:`~cartridge_dagster.warp.metrics`: Prometheus metrics
"""

from cartridge_dagster.warp.changes import Change, DeadLetter, Transformer
from cartridge_dagster.warp.runner import RunObserver, RunSummary, WarpRunner, run_schemas
from cartridge_dagster.warp.sink import Batch, BatchResult, Checkpoint, Fenced, Sink, Wipe
from cartridge_dagster.warp.source import DropPolicyStop, SchemaSource
from cartridge_dagster.warp.sources import Position, Source, open_source

__all__ = [
    "Batch",
    "BatchResult",
    "Change",
    "Checkpoint",
    "DeadLetter",
    "DropPolicyStop",
    "Fenced",
    "Position",
    "RunObserver",
    "RunSummary",
    "SchemaSource",
    "Sink",
    "Source",
    "Transformer",
    "WarpRunner",
    "Wipe",
    "open_source",
    "run_schemas",
]
