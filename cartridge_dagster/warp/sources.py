"""The one interface warp reads sources through, and the factory that picks one from the URL.

A :class:`Source` serves one Cartridge schema: it records a consistent position, copies each
table or collection in resumable key ranges (each batch carries the snapshot cursor), streams
the changes after the position as :class:`~cartridge_dagster.warp.sink.Batch`es carrying their
position, and hears, after each commit, which position the warehouse now holds (a source that
keeps changes for its readers, such as a PostgreSQL replication slot, may let go of them then).
The runner, the sink, checkpoints, fencing, dead letters, metrics and the Dagster layer use this
interface only; what a position is (a resume token, an LSN) stays inside the source.

:func:`open_source` connects by URL scheme: ``mongodb://``, ``mongodb+srv://`` and
``mongoeco://`` give :class:`~cartridge_dagster.warp.source.SchemaSource` (MongoDB change
streams), ``postgresql://`` :class:`~cartridge_dagster.warp.pg_source.PgSource` (logical
replication).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.documents import ConversionStats
from cartridge_dagster.errors import ConfigError, redact_url
from cartridge_dagster.warp.changes import Transformer, make_version
from cartridge_dagster.warp.sink import Batch

__all__ = ["Position", "Source", "open_source", "source_kind"]


@dataclass(frozen=True)
class Position:
    """Where a source's change history stood when it was recorded: its token (what the
    checkpoint stores) and its base version (snapshot rows get ordinal 0 of it)."""

    token: dict[str, Any] | None
    base: int

    @property
    def snapshot_version(self) -> int:
        return make_version(self.base, 0)


@runtime_checkable
class Source(Protocol):
    """What warp needs of a source, for one schema."""

    #: ``"MongoDB"`` or ``"PostgreSQL"``: for messages only.
    label: str
    #: Tables/collections warp has seen (copied or streamed) in this run.
    known: set[str]
    #: Successful reads of the change history (a retry loop's sign that the source is back).
    reads: int
    #: When the stream last found nothing new (None while busy or not streaming).
    idle_since: float | None

    async def check(self) -> None:
        """Before the first snapshot: refuse what cannot be right (a missing database)."""

    async def position(self) -> Position:
        """Record the current end of the change history (before snapshotting)."""

    async def collections(self) -> list[str]:
        """The tables/collections in scope, sorted."""

    def seed_version(self, version: int) -> None:
        """Continue versions after a checkpoint's."""

    def snapshot(
        self, collection: str, state: Mapping[str, Any], stop: asyncio.Event | None = None
    ) -> AsyncIterator[Batch]:
        """Copy ``collection`` from ``state`` (its snapshot-plan entry) in key order."""

    def stream(self, token: Mapping[str, Any] | None, stop: asyncio.Event) -> AsyncIterator[Batch]:
        """Batches of changes after ``token`` until ``stop`` is set."""

    def take_stats(self, collection: str | None = None) -> dict[str, ConversionStats]:
        """What the value policies changed since the last call, per collection (only
        ``collection``'s when given; the runner attaches it to the batch just read, which
        counts it in its transaction)."""

    async def estimate(self, collection: str) -> int | None:
        """About how many documents/rows ``collection`` holds (from metadata: cheap), for
        progress and ETAs; None when the source cannot say."""

    async def acknowledge(self, token: Mapping[str, Any]) -> None:
        """The warehouse committed everything up to ``token``."""

    async def close(self) -> None: ...


def source_kind(url: str) -> str:
    """``mongodb`` or ``postgresql`` for a source URL; ConfigError otherwise."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("mongodb", "mongodb+srv", "mongoeco"):
        return "mongodb"
    if scheme in ("postgresql", "postgres"):
        return "postgresql"
    raise ConfigError(
        f"unsupported source URL {redact_url(url)}: use mongodb://, mongodb+srv://, "
        "mongoeco://PATH or postgresql://"
    )


async def open_source(
    url: str, schema: SchemaConfig, *, timeout_seconds: float = 10.0, read_only: bool = False
) -> Source:
    """Connect to the source at ``url`` for ``schema`` (raises what the driver's first
    contact raises, mapped onto Cartridge's errors: transient ones are worth retrying).

    ``read_only``: for checks (``warp validate``): ``position`` then reports where the source
    stands without creating anything (a PostgreSQL source creates its slot there)."""
    kind = source_kind(url)
    if kind == "postgresql":
        from cartridge_dagster.warp.pg_source import open_pg_source

        return await open_pg_source(
            url, schema, timeout_seconds=timeout_seconds, read_only=read_only
        )
    await asyncio.to_thread(_import_mongo_side, url)
    from cartridge_dagster.connectors.mongo import open_mongo
    from cartridge_dagster.warp.source import SchemaSource

    conn = open_mongo(url, timeout_seconds=timeout_seconds)
    try:
        await conn.ping()
    except BaseException:
        await conn.close()
        raise
    return SchemaSource(conn, schema, Transformer(schema))


def _import_mongo_side(url: str) -> None:
    """Import what a MongoDB source runs on: PyMongo and the source's modules, and the embedded
    engine for ``mongoeco://`` (~0.1–0.2 s of a process's start-up). :func:`open_source` runs
    this in a worker thread, so the warehouse's start-up round trips, which the runner awaits
    on the event loop at the same time, proceed meanwhile instead of after it."""
    importlib.import_module("cartridge_dagster.warp.source")
    if url.split("://", 1)[0].lower() == "mongoeco":
        with contextlib.suppress(ImportError):  # open_mongo says what is missing
            importlib.import_module("mongoeco")
            importlib.import_module("mongoeco.engines")
