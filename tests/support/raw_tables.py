"""Raw tables filled the way warp fills them (the landing contract), for analytics tests.

``land(conn, raw_schema, collection, docs)`` converts BSON documents with
``documents.document_json`` and upserts them with ``landing.raw_table_ddl`` columns;
``copy_source(mongo_db, conn, schema_cfg)`` lands a whole source database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import asyncpg

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.documents import canonical_id, document_json
from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.landing import raw_table_ddl, raw_table_name

_version = 0


def _next_version() -> int:
    global _version
    _version += 1
    return _version


async def land(
    conn: asyncpg.Connection,
    raw_schema: str,
    collection: str,
    docs: Iterable[Mapping[str, Any]],
    *,
    op: str = "snapshot",
    source_ts: dt.datetime | None = None,
    synced_at: dt.datetime | None = None,
) -> int:
    """Upsert documents as live rows; returns how many."""
    for stmt in raw_table_ddl(raw_schema, collection):
        await conn.execute(stmt)
    table = qualified(raw_schema, raw_table_name(collection))
    rows = [
        (
            canonical_id(doc["_id"]),
            document_json(dict(doc)).decode(),
            _next_version(),
            op,
            source_ts,
            synced_at or dt.datetime.now(dt.UTC),
        )
        for doc in docs
    ]
    cols = ", ".join(
        quote_ident(c)
        for c in (
            "_id",
            "document",
            "_cartridge_version",
            "_cartridge_op",
            "_cartridge_source_ts",
            "_cartridge_synced_at",
        )
    )
    await conn.executemany(
        f"INSERT INTO {table} ({cols}) VALUES ($1, $2::jsonb, $3, $4, $5, $6) "
        f'ON CONFLICT ("_id") DO UPDATE SET "document" = EXCLUDED."document", '
        '"_cartridge_deleted" = false, "_cartridge_version" = EXCLUDED."_cartridge_version", '
        '"_cartridge_op" = EXCLUDED."_cartridge_op", '
        '"_cartridge_source_ts" = EXCLUDED."_cartridge_source_ts", '
        '"_cartridge_synced_at" = EXCLUDED."_cartridge_synced_at"',
        rows,
    )
    return len(rows)


async def tombstone(
    conn: asyncpg.Connection,
    raw_schema: str,
    collection: str,
    ids: Iterable[Any],
    *,
    source_ts: dt.datetime | None = None,
) -> None:
    """Mark documents deleted (soft delete, document kept null)."""
    table = qualified(raw_schema, raw_table_name(collection))
    await conn.execute(
        f'UPDATE {table} SET "_cartridge_deleted" = true, "document" = NULL, '
        f'"_cartridge_op" = \'delete\', "_cartridge_source_ts" = $2, '
        '"_cartridge_synced_at" = now(), "_cartridge_version" = "_cartridge_version" + 1000000 '
        'WHERE "_id" = ANY($1::text[])',
        [canonical_id(i) for i in ids],
        source_ts,
    )


async def copy_source(
    mongo_db: Any, conn: asyncpg.Connection, schema: SchemaConfig
) -> dict[str, int]:
    """Land every collection of ``mongo_db`` in ``schema.raw_schema`` (a snapshot)."""
    out: dict[str, int] = {}
    for name in sorted(await mongo_db.list_collection_names()):
        if not schema.selects(name):
            continue
        docs = [doc async for doc in mongo_db[name].find({})]
        out[name] = await land(conn, schema.raw_schema, name, docs)
    return out


def shop_config(
    tmp_path: Path, mongo_url: str, pg_url: str, db: str, **schema: Any
) -> dict[str, Any]:
    """A Cartridge configuration (as data) for one schema ``shop`` over database ``db``, with
    its own state and dbt directories under ``tmp_path``; ``schema`` adds schema keys."""
    return {
        "source": {"connection_string": mongo_url},
        "destination": {"connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "dbt": {"project_dir": str(tmp_path / "dbt")},
        "schemas": [{"name": "shop", "source_database": db, **schema}],
    }
