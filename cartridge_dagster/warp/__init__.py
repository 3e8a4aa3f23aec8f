"""warp core: exactly-once CDC from MongoDB into PostgreSQL raw tables (never imports dagster).

- :mod:`~cartridge_dagster.warp.changes`: events and documents → rows (versions, policies)
- :mod:`~cartridge_dagster.warp.sink`: one transaction per batch (merge, fence, dead letters)
- :mod:`~cartridge_dagster.warp.sources`: the source Protocol and the factory by URL
- :mod:`~cartridge_dagster.warp.source`: MongoDB: snapshot, change stream, drops and renames
- :mod:`~cartridge_dagster.warp.runner`: reader → bounded queue → writer, retries, stop
- :mod:`~cartridge_dagster.warp.admin`: status, dead-letter list and replay, validation
- :mod:`~cartridge_dagster.warp.metrics`: Prometheus metrics

The names below are imported from their modules when first used (``from cartridge_dagster.warp
import Sink``): importing one module of the package (the runner, for ``warp run``) does not
import the others — the MongoDB source and PyMongo load only when a MongoDB source opens.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cartridge_dagster.warp.changes import Change, DeadLetter, Transformer
    from cartridge_dagster.warp.runner import RunObserver, RunSummary, WarpRunner, run_schemas
    from cartridge_dagster.warp.sink import Batch, BatchResult, Checkpoint, Fenced, Sink, Wipe
    from cartridge_dagster.warp.source import DropPolicyStop, SchemaSource
    from cartridge_dagster.warp.sources import Position, Source, open_source

_HOMES = {
    "Batch": "sink",
    "BatchResult": "sink",
    "Change": "changes",
    "Checkpoint": "sink",
    "DeadLetter": "changes",
    "DropPolicyStop": "source",
    "Fenced": "sink",
    "Position": "sources",
    "RunObserver": "runner",
    "RunSummary": "runner",
    "SchemaSource": "source",
    "Sink": "sink",
    "Source": "sources",
    "Transformer": "changes",
    "WarpRunner": "runner",
    "Wipe": "sink",
    "open_source": "sources",
    "run_schemas": "runner",
}

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


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"cartridge_dagster.warp.{home}"), name)
