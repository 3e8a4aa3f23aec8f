"""Operating warp: status per table, dead letters (list and replay), configuration checks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import bson

from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.connectors.postgres import pg_connection
from cartridge_dagster.errors import CartridgeError, TerminalError, redact_url
from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.landing import CONTROL_SCHEMA, raw_table_name
from cartridge_dagster.warp.changes import Change, DeadLetter, Transformer
from cartridge_dagster.warp.sink import POISON_MARK, Sink, setup_jsonb_codec
from cartridge_dagster.warp.sources import open_source

__all__ = [
    "ReplayResult",
    "TableStatus",
    "list_dead_letters",
    "replay_dead_letters",
    "schema_status",
    "validate_schema",
]

CS = quote_ident(CONTROL_SCHEMA)


@dataclass
class TableStatus:
    collection: str
    table: str
    live_rows: int
    deleted_rows: int
    version: int
    events_applied: int
    last_source_ts: dt.datetime | None
    lag_seconds: float | None
    dead_letters: int  # pending: replay may still land them
    parked: int = 0  # failed replay dead_letter.max_attempts times: a person must act
    #: What the value policies changed: ``{policy: {field path: count}}`` (POLICY_CASES).
    policies: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class SchemaStatus:
    schema: str
    exists: bool
    epoch: int = 0
    owner: str | None = None
    resume_token: dict[str, Any] | None = None
    version: int = 0
    snapshot_done: bool = False
    events_applied: int = 0
    updated_at: dt.datetime | None = None
    lag_seconds: float | None = None
    dead_letters: int = 0  # pending
    parked: int = 0
    tables: list[TableStatus] = field(default_factory=list)


async def _control_exists(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass('cartridge_warp.checkpoints') IS NOT NULL"))


async def schema_status(pg_url: str, schema: SchemaConfig) -> SchemaStatus:
    """Where warp is for ``schema``: checkpoint, and per table rows, lag and dead letters."""
    async with pg_connection(pg_url) as conn:
        await setup_jsonb_codec(conn)
        if not await _control_exists(conn):
            return SchemaStatus(schema.name, exists=False)
        cp = await conn.fetchrow(
            f"SELECT * FROM {CS}.checkpoints WHERE schema_name = $1", schema.name
        )
        if cp is None:
            return SchemaStatus(schema.name, exists=False)
        snap = cp["snapshot"] or {}
        dead_by: dict[str, int] = {}
        parked_by: dict[str, int] = {}
        for r in await conn.fetch(
            f"SELECT collection, status, count(*) AS n FROM {CS}.dead_letters "
            "WHERE schema_name = $1 AND status IN ('pending', 'parked') "
            "GROUP BY collection, status",
            schema.name,
        ):
            (dead_by if r["status"] == "pending" else parked_by)[r["collection"]] = int(r["n"])
        status = SchemaStatus(
            schema.name,
            exists=True,
            epoch=int(cp["epoch"]),
            owner=cp["owner"],
            resume_token=cp["resume_token"],
            version=int(cp["version"]),
            snapshot_done=bool(snap) and all(v.get("done") for v in snap.values()),
            events_applied=int(cp["events_applied"]),
            updated_at=cp["updated_at"],
            dead_letters=sum(dead_by.values()),
            parked=sum(parked_by.values()),
        )
        if cp["last_source_ts"] is not None:
            status.lag_seconds = max(0.0, (cp["updated_at"] - cp["last_source_ts"]).total_seconds())
        policies: dict[str, dict[str, dict[str, int]]] = {}
        if await conn.fetchval("SELECT to_regclass('cartridge_warp.policy_counts') IS NOT NULL"):
            for r in await conn.fetch(
                f"SELECT collection, policy, path, n FROM {CS}.policy_counts "
                "WHERE schema_name = $1 ORDER BY collection, policy, path",
                schema.name,
            ):
                by_policy = policies.setdefault(r["collection"], {})
                by_policy.setdefault(r["policy"], {})[r["path"]] = int(r["n"])
        for row in await conn.fetch(
            f"SELECT * FROM {CS}.name_map WHERE schema_name = $1 ORDER BY collection",
            schema.name,
        ):
            table = qualified(row["raw_schema"], row["table_name"])
            counts = await conn.fetchrow(
                f"SELECT count(*) FILTER (WHERE NOT _cartridge_deleted) AS live, "
                f"count(*) FILTER (WHERE _cartridge_deleted) AS deleted FROM {table}"
            )
            last = row["last_source_ts"]
            status.tables.append(
                TableStatus(
                    collection=row["collection"],
                    table=f"{row['raw_schema']}.{row['table_name']}",
                    live_rows=int(counts["live"]) if counts else 0,
                    deleted_rows=int(counts["deleted"]) if counts else 0,
                    version=int(row["version"]),
                    events_applied=int(row["events_applied"]),
                    last_source_ts=last,
                    lag_seconds=(row["updated_at"] - last).total_seconds() if last else None,
                    dead_letters=dead_by.get(row["collection"], 0),
                    parked=parked_by.get(row["collection"], 0),
                    policies=policies.get(row["collection"], {}),
                )
            )
        return status


#: The statuses of letters that still need something: replay (pending) or a person (parked).
OPEN_STATUSES = ("pending", "parked")


async def list_dead_letters(
    pg_url: str,
    schema: str,
    *,
    statuses: tuple[str, ...] | None = OPEN_STATUSES,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Dead letters of ``schema`` in ``statuses`` (None: all), oldest first."""
    async with pg_connection(pg_url) as conn:
        await setup_jsonb_codec(conn)
        if not await _control_exists(conn):
            return []
        rows = await conn.fetch(
            f"SELECT id, collection, document_id, op, version, error_class, error_message, "
            f"attempts, status, last_failed_at, raw_event_json FROM {CS}.dead_letters "
            "WHERE schema_name = $1 AND ($2::text[] IS NULL OR status = ANY($2)) "
            "ORDER BY id LIMIT $3",
            schema,
            list(statuses) if statuses is not None else None,
            limit,
        )
        return [dict(r) for r in rows]


@dataclass
class ReplayResult:
    replayed: int = 0
    superseded: int = 0
    failed: int = 0
    parked: int = 0
    ids: list[int] = field(default_factory=list)


async def _superseded(conn: asyncpg.Connection, schema: SchemaConfig, row: asyncpg.Record) -> bool:
    """Whether a change at least as new as the letter's landed for its document: a row (live
    or soft-deleted) or a hard delete's tombstone. A letter without a document id (its ``_id``
    could not be read) is never superseded."""
    doc_id = row["document_id"]
    if doc_id is None:
        return False
    version = int(row["version"])
    collection = str(row["collection"])
    name = await conn.fetchval(
        f"SELECT table_name FROM {CS}.name_map WHERE schema_name = $1 AND collection = $2",
        schema.name,
        collection,
    )
    if name is not None:
        landed = await conn.fetchval(
            f"SELECT _cartridge_version FROM {qualified(schema.raw_schema, str(name))} "
            "WHERE _id = $1",
            doc_id,
        )
        if landed is not None and int(landed) >= version:
            return True
    tomb = await conn.fetchval(
        f"SELECT version FROM {CS}.tombstones WHERE schema_name = $1 AND collection = $2 "
        "AND _id = $3",
        schema.name,
        collection,
        doc_id,
    )
    return tomb is not None and int(tomb) >= version


def _rebuild(transformer: Transformer, row: asyncpg.Record) -> Change | DeadLetter | None:
    raw = bson.decode(bytes(row["raw_event"]))
    version = int(row["version"])
    collection = row["collection"]
    if raw.get(POISON_MARK):
        doc = raw.get("document")
        return Change(
            collection,
            str(raw["_id"]),
            raw.get("op", "update"),
            version,
            doc.encode("utf-8") if isinstance(doc, str) else None,
            None,
        )
    if raw.get("cartridge_pg"):
        return _rebuild_pg(transformer, row, raw, version)
    if "operationType" in raw:
        return transformer.event(raw, version, None)
    return transformer.document(collection, raw, op="snapshot", version=version, source_ts=None)


def _rebuild_pg(
    transformer: Transformer, row: asyncpg.Record, raw: dict[str, Any], version: int
) -> Change | DeadLetter | None:
    """A PostgreSQL row that could not land: its column texts, converted again with the
    current policies (the kinds travel with the letter: no source connection needed)."""
    from cartridge_dagster.documents import ConversionStats, UnlandableDocument
    from cartridge_dagster.pg_documents import RowConverter, columns_of_raw

    collection = str(raw["table"])
    doc_id = row["document_id"]
    if "values" not in raw or doc_id is None:
        return None  # an oversized row: nothing to rebuild it from (the letter stays)
    excluded = [p.split(".") for p in transformer.schema.table(collection).exclude_fields]
    converter = RowConverter(columns_of_raw(raw), transformer.policy, excluded)
    counted = ConversionStats()
    try:
        body = converter.document(raw["values"], counted)
    except UnlandableDocument as exc:
        return DeadLetter(
            collection,
            doc_id,
            version,
            str(raw.get("op")),
            type(exc).__name__,
            str(exc),
            bytes(row["raw_event"]),
        )
    if len(body) > transformer.max_bytes:
        return None
    if counted:
        transformer.stats_for(collection).merge(counted)
    op = str(raw.get("op") or "update")
    return Change(collection, str(doc_id), op if op != "delete" else "update", version, body)  # type: ignore[arg-type]


async def replay_dead_letters(
    pg_url: str,
    schema: SchemaConfig,
    *,
    ids: list[int] | None = None,
    collection: str | None = None,
) -> ReplayResult:
    """Re-apply pending dead letters with the current configuration (e.g. a relaxed NUL
    policy, or after fixing what PostgreSQL rejected). Versions still decide: a dead letter
    older than the row already landed is marked ``superseded``; one that fails again counts an
    attempt and is ``parked`` after ``dead_letter.max_attempts``."""
    result = ReplayResult()
    transformer = Transformer(schema)
    sink = Sink(pg_url, schema, owner="dlq-replay")
    try:
        conn = await sink.connect()
        if not await _control_exists(conn):
            return result
        rows = await conn.fetch(
            f"SELECT * FROM {CS}.dead_letters WHERE schema_name = $1 AND status = 'pending' "
            "AND ($2::bigint[] IS NULL OR id = ANY($2)) AND ($3::text IS NULL OR collection = $3) "
            "ORDER BY id",
            schema.name,
            ids,
            collection,
        )
        for row in rows:
            if await _superseded(conn, schema, row):
                # a newer change of the document (or its delete) landed since: nothing to do,
                # whatever the letter would rebuild into
                await conn.execute(
                    f"UPDATE {CS}.dead_letters SET status = 'superseded', resolved_at = now() "
                    "WHERE id = $1",
                    row["id"],
                )
                result.superseded += 1
                result.ids.append(int(row["id"]))
                continue
            rebuilt = _rebuild(transformer, row)
            if isinstance(rebuilt, DeadLetter) or rebuilt is None:
                attempts = int(row["attempts"]) + 1
                parked = attempts >= schema.dead_letter.max_attempts
                await conn.execute(
                    f"UPDATE {CS}.dead_letters SET attempts = $2, last_failed_at = now(), "
                    "status = $3, error_message = COALESCE($4, error_message) WHERE id = $1",
                    row["id"],
                    attempts,
                    "parked" if parked else "pending",
                    rebuilt.error_message if rebuilt is not None else None,
                )
                result.failed += 1
                result.parked += int(parked)
                continue
            async with conn.transaction():
                # Serialise with a running warp writer on the checkpoint row (no epoch change).
                await conn.execute(
                    f"SELECT 1 FROM {CS}.checkpoints WHERE schema_name = $1 FOR UPDATE",
                    schema.name,
                )
                await sink._ensure_table(conn, rebuilt.collection)
                poison = await sink._apply_isolating(conn, [rebuilt])
                changed = transformer.take_stats()
                if not poison:  # the replayed document landed as the policies changed it
                    await sink._count_policies(conn, changed)
                if poison:
                    attempts = int(row["attempts"]) + 1
                    parked = attempts >= schema.dead_letter.max_attempts
                    await conn.execute(
                        f"UPDATE {CS}.dead_letters SET attempts = $2, last_failed_at = now(), "
                        "status = $3 WHERE id = $1",
                        row["id"],
                        attempts,
                        "parked" if parked else "pending",
                    )
                    result.failed += 1
                    result.parked += int(parked)
                    continue
                table = qualified(schema.raw_schema, raw_table_name(rebuilt.collection))
                landed = await conn.fetchval(
                    f"SELECT _cartridge_version FROM {table} WHERE _id = $1", rebuilt.id
                )
                superseded = landed is not None and int(landed) > rebuilt.version
                await conn.execute(
                    f"UPDATE {CS}.dead_letters SET status = $2, resolved_at = now(), "
                    "attempts = attempts + 1 WHERE id = $1",
                    row["id"],
                    "superseded" if superseded else "replayed",
                )
                result.superseded += int(superseded)
                result.replayed += int(not superseded)
                result.ids.append(int(row["id"]))
        return result
    finally:
        await sink.close()


async def validate_schema(settings: CartridgeSettings, schema: SchemaConfig) -> list[str]:
    """Check that warp can run ``schema``: source reachable, stream position readable,
    collections in scope, warehouse reachable. Returns lines to print; raises on failure."""
    lines: list[str] = []
    url = settings.source_url(schema)
    source = await open_source(
        url,
        schema,
        timeout_seconds=settings.source_for(schema).connect_timeout_seconds,
        read_only=True,
    )
    try:
        await source.check()
        collections = await source.collections()
        try:
            position = await source.position()
        except CartridgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - turned into one clear error
            raise TerminalError(
                f"schema {schema.name!r}: cannot open a change stream on "
                f"{schema.source_database!r}: {type(exc).__name__}: "
                f"{redact_url(str(exc))[:200]}",
                hint="change streams need a replica set (or the embedded engine)",
            ) from None
        if source.label == "PostgreSQL":
            from cartridge_dagster.warp.pg_source import PgSource

            assert isinstance(source, PgSource)
            slot = await source.slot_state()
            lines.append(
                f"source {redact_url(url)}: schema {schema.source_database!r}, "
                f"{len(collections)} tables in scope, WAL position {position.token}; "
                + (
                    f"replication slot {slot.name!r} ({slot.wal_status}, "
                    f"{slot.lag_bytes} bytes behind)"
                    if slot.exists
                    else f"replication slot {slot.name!r} not created yet (warp run creates it)"
                )
            )
        else:
            lines.append(
                f"source {redact_url(url)}: database {schema.source_database!r}, "
                f"{len(collections)} collections in scope, stream position {position.base}"
            )
    finally:
        await source.close()
    async with pg_connection(settings.destination_url()) as pg:
        version = await pg.fetchval("SHOW server_version")
        lines.append(f"warehouse: PostgreSQL {version}, raw schema {schema.raw_schema!r}")
    return lines
