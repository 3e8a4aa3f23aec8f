"""One analysis of a schema: profile raw tables and staging models, reconcile, check, report.

Used by ``cartridge analyze`` and by the ``analytics/<S>/<C>`` assets alike. Reconciliation
reads the source the configuration names, chosen by its URL (as warp chooses): MongoDB
(``mongodb://``, ``mongodb+srv://``, ``mongoeco://``) through
:func:`~cartridge_dagster.analytics.reconcile.reconcile_collection`, PostgreSQL
(``postgresql://``) through :func:`~cartridge_dagster.analytics.reconcile_pg.reconcile_pg_table`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import asyncpg

from cartridge_dagster.analytics.checks import (
    CheckOutcome,
    checkpoint_age_seconds,
    dead_letter_count,
    evaluate_checks,
)
from cartridge_dagster.analytics.models import discover_collections, model_relations, raw_relation
from cartridge_dagster.analytics.profile import TableProfile, profile_relation
from cartridge_dagster.analytics.reconcile import (
    Reconciliation,
    reconcile_collection,
    store_reconciliation,
)
from cartridge_dagster.analytics.reconcile_pg import reconcile_pg_table
from cartridge_dagster.analytics.store import (
    ensure_analytics_schema,
    finish_run,
    new_run_id,
    start_run,
    table,
)
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.connectors.mongo import MongoConnection, open_mongo
from cartridge_dagster.connectors.postgres import pg_connection
from cartridge_dagster.errors import ConnectionFailed, redact_url
from cartridge_dagster.observability import get_logger
from cartridge_dagster.pg_documents import SESSION_SETTINGS
from cartridge_dagster.warp.sources import source_kind

__all__ = [
    "CollectionAnalysis",
    "MongoReconciler",
    "PgReconciler",
    "Reconciler",
    "SchemaAnalysis",
    "analyze_schema",
    "analyze_schema_with",
    "source_or_reason",
]

log = get_logger(__name__)


class Reconciler(Protocol):
    """What reconciliation needs of a source: one collection (or table) compared at a time."""

    #: ``"MongoDB"`` or ``"PostgreSQL"``: for messages only.
    label: str

    async def reconcile(
        self, conn: asyncpg.Connection, schema: SchemaConfig, collection: str
    ) -> Reconciliation: ...


class MongoReconciler:
    label = "MongoDB"

    def __init__(self, mongo: MongoConnection) -> None:
        self.mongo = mongo

    async def reconcile(
        self, conn: asyncpg.Connection, schema: SchemaConfig, collection: str
    ) -> Reconciliation:
        return await reconcile_collection(self.mongo, conn, schema, collection)


class PgReconciler:
    label = "PostgreSQL"

    def __init__(self, source: asyncpg.Connection) -> None:
        self.source = source

    async def reconcile(
        self, conn: asyncpg.Connection, schema: SchemaConfig, collection: str
    ) -> Reconciliation:
        return await reconcile_pg_table(self.source, conn, schema, collection)


def _reconciler(source: Reconciler | MongoConnection | None) -> Reconciler | None:
    if source is None or isinstance(source, MongoReconciler | PgReconciler):
        return source
    if isinstance(source, MongoConnection):
        return MongoReconciler(source)
    return source


@dataclass
class CollectionAnalysis:
    collection: str
    raw: TableProfile | None
    models: list[TableProfile] = field(default_factory=list)
    reconciliation: Reconciliation | None = None
    dead_letters: int | None = None
    checkpoint_age_seconds: float | None = None
    checks: list[CheckOutcome] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class SchemaAnalysis:
    schema_name: str
    run_id: str
    collections: dict[str, CollectionAnalysis] = field(default_factory=dict)
    report_path: Path | None = None


async def analyze_schema_with(
    conn: asyncpg.Connection,
    source: Reconciler | MongoConnection | None,
    settings: CartridgeSettings,
    schema_name: str,
    *,
    collections: list[str] | None = None,
    run_id: str | None = None,
    trigger: str = "manual",
    reconcile_error: str | None = None,
) -> SchemaAnalysis:
    """Analyse ``schema_name`` with open connections (``source`` None: no reconciliation; a
    MongoDB connection is reconciled as :class:`MongoReconciler`).

    ``reconcile_error`` says why the source could not be reached; the summaries are still
    computed and the reconciliation check fails with that reason.
    """
    schema = settings.get_schema(schema_name)
    reconciler = _reconciler(source)
    run_id = run_id or new_run_id()
    timeout = settings.destination.command_timeout_seconds
    # every statement of the analysis is bounded (profiling a huge table must not hang a run)
    await conn.execute(f"SET statement_timeout = {int(timeout * 1000)}")
    await ensure_analytics_schema(conn)
    await start_run(conn, schema.name, run_id, trigger)
    if collections is None:
        collections = await discover_collections(conn, settings, schema)
    models = await model_relations(conn, settings, schema, collections)
    age = await checkpoint_age_seconds(conn, schema.name)
    result = SchemaAnalysis(schema.name, run_id)
    options = {
        "top_values": schema.analytics.top_values,
        "histogram_buckets": schema.analytics.histogram_buckets,
        "max_depth": schema.sampling.max_depth,
        "sample_rows": schema.analytics.profile_sample_rows,
    }
    for collection in collections:
        raw = await profile_relation(conn, raw_relation(schema, collection), run_id, **options)
        profiled_models = []
        for rel in models.get(collection, []):
            profile = await profile_relation(conn, rel, run_id, **options)
            if profile is not None:
                profiled_models.append(profile)
        rec = None
        why = reconcile_error
        if reconciler is not None:
            try:
                async with asyncio.timeout(timeout):
                    rec = await reconciler.reconcile(conn, schema, collection)
            except TimeoutError:
                why = f"reconciliation of {collection} took longer than {timeout:.0f}s"
                log.warning("analytics.reconcile_timeout", schema=schema.name, table=collection)
            if rec is not None:
                await store_reconciliation(conn, run_id, rec)
        dead = await dead_letter_count(conn, schema.name, collection)
        analysis = CollectionAnalysis(
            collection=collection,
            raw=raw,
            models=profiled_models,
            reconciliation=rec,
            dead_letters=dead,
            checkpoint_age_seconds=age,
        )
        analysis.checks = evaluate_checks(
            schema,
            collection,
            raw=raw,
            reconciliation=rec,
            dead_letters=dead,
            checkpoint_age=age,
            reconcile_error=why,
        )
        await store_checks(conn, run_id, schema.name, collection, analysis.checks)
        result.collections[collection] = analysis
    await finish_run(conn, schema.name, run_id)
    log.info(
        "analytics.schema_analyzed",
        schema=schema.name,
        run_id=run_id,
        collections=len(result.collections),
    )
    return result


async def store_checks(
    conn: asyncpg.Connection,
    run_id: str,
    schema: str,
    collection: str,
    checks: list[CheckOutcome],
) -> None:
    await conn.executemany(
        f"""INSERT INTO {table("check_results")} (
          run_id, schema_name, collection, check_name, passed, severity, description)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (run_id, schema_name, collection, check_name) DO UPDATE SET
          passed = EXCLUDED.passed, severity = EXCLUDED.severity,
          description = EXCLUDED.description, checked_at = now()""",
        [(run_id, schema, collection, c.name, c.passed, c.severity, c.description) for c in checks],
    )


@contextlib.asynccontextmanager
async def source_or_reason(
    url: str | None, timeout: float
) -> AsyncIterator[tuple[Reconciler | None, str | None]]:
    """``(reconciler, None)`` for the source at ``url`` (MongoDB or PostgreSQL, by its
    scheme), or ``(None, reason)`` when it cannot be reached."""
    if url is None:
        yield None, None
        return
    if source_kind(url) == "postgresql":
        try:
            pg = await asyncpg.connect(url, timeout=timeout, server_settings=dict(SESSION_SETTINGS))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            why = (
                f"cannot connect to the PostgreSQL source {redact_url(url)}: "
                f"{redact_url(str(exc)) or type(exc).__name__}"
            )
            log.warning("analytics.source_unreachable", error=why)
            yield None, why
            return
        try:
            yield PgReconciler(pg), None
        finally:
            await pg.close()
        return
    conn = open_mongo(url, timeout_seconds=timeout)
    try:
        await conn.ping()
    except ConnectionFailed as exc:
        await conn.close()
        log.warning("analytics.source_unreachable", error=str(exc))
        yield None, str(exc)
        return
    try:
        yield MongoReconciler(conn), None
    finally:
        await conn.close()


async def analyze_schema(
    settings: CartridgeSettings,
    schema_name: str,
    *,
    pg_url: str | None = None,
    mongo_url: str | None = None,
    source_url: str | None = None,
    reconcile: bool = True,
    collections: list[str] | None = None,
    run_id: str | None = None,
    trigger: str = "manual",
    report_dir: Path | None = None,
) -> SchemaAnalysis:
    """Open connections from the settings (or the URLs given: ``source_url``, or
    ``mongo_url`` as it was called before PostgreSQL sources), analyse, and write the report."""
    pg_url = pg_url or settings.destination_url()
    source_url = source_url or mongo_url or settings.source_url(schema_name)
    source_url = source_url if reconcile else None
    async with (
        pg_connection(pg_url, timeout=settings.destination.connect_timeout_seconds) as conn,
        source_or_reason(source_url, settings.source.connect_timeout_seconds) as (source, why),
    ):
        result = await analyze_schema_with(
            conn,
            source,
            settings,
            schema_name,
            collections=collections,
            run_id=run_id,
            trigger=trigger,
            reconcile_error=why,
        )
        if report_dir is not None:
            from cartridge_dagster.analytics.report import write_reports

            paths = await write_reports(conn, settings, report_dir, schemas=[schema_name])
            result.report_path = paths.get(schema_name)
    return result
