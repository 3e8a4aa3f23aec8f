"""Fill raw tables the way warp does (the landing contract in DESIGN.md), for tests.

Until warp lands, init's and analytics' tests need raw tables that look exactly like warp's:
``landing.raw_table_ddl`` for the table, ``documents.canonical_id`` for ``_id``,
``documents.document_json`` for ``document``, a strictly increasing ``_cartridge_version``
(cluster-time seconds shifted left 64 bits plus an ordinal), ``_cartridge_op`` of the last
change, soft deletes as tombstones (``document`` NULL, ``_cartridge_deleted`` true), and upserts
that only move forward.

    async with pg_connection(url) as conn:
        await land_documents(conn, "raw_shop", "orders", docs)
        await delete_documents(conn, "raw_shop", "orders", [some_id])

or, straight from a MongoDB source: ``await land_from_mongo(pg_url, mongo_url, "shop", "raw_shop")``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.connectors.postgres import pg_connection
from cartridge_dagster.documents import ConversionStats, ValuePolicy, canonical_id, document_json
from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.landing import RAW_COLUMNS, raw_table_ddl, raw_table_name

__all__ = [
    "delete_documents",
    "land_documents",
    "land_from_mongo",
    "next_version",
    "raw_rows",
]

_ordinal = itertools.count(1)


def next_version(cluster_seconds: int | None = None) -> int:
    """A version that is larger than every earlier one from this process."""
    seconds = int(time.time()) if cluster_seconds is None else cluster_seconds
    return (seconds << 64) + next(_ordinal)


def _upsert_sql(raw_schema: str, collection: str) -> str:
    table = qualified(raw_schema, raw_table_name(collection))
    cols = list(RAW_COLUMNS)
    names = ", ".join(quote_ident(c) for c in cols)
    params = ", ".join(f"${i}" for i in range(1, len(cols) + 1))
    updates = ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in cols[1:])
    return (
        f"INSERT INTO {table} ({names}) VALUES ({params}) "
        f"ON CONFLICT ({quote_ident('_id')}) DO UPDATE SET {updates} "
        f"WHERE {table}.{quote_ident('_cartridge_version')} < EXCLUDED.{quote_ident('_cartridge_version')}"
    )


async def _ensure(conn: asyncpg.Connection, raw_schema: str, collection: str) -> None:
    for stmt in raw_table_ddl(raw_schema, collection):
        await conn.execute(stmt)


async def land_documents(
    conn: asyncpg.Connection,
    raw_schema: str,
    collection: str,
    documents: Iterable[Mapping[str, Any]],
    *,
    op: str = "insert",
    policy: ValuePolicy | None = None,
    source_ts: dt.datetime | None = None,
) -> int:
    """Upsert ``documents`` (BSON-decoded dicts) into the raw table; returns rows written."""
    await _ensure(conn, raw_schema, collection)
    stats = ConversionStats()
    now = dt.datetime.now(dt.UTC)
    rows = []
    for doc in documents:
        rows.append(  # in RAW_COLUMNS order
            (
                canonical_id(doc["_id"]),
                document_json(dict(doc), policy, stats).decode("utf-8"),
                False,
                next_version(),
                op,
                source_ts or now,
                now,
            )
        )
    if rows:
        await conn.executemany(_upsert_sql(raw_schema, collection), rows)
    return len(rows)


async def delete_documents(
    conn: asyncpg.Connection, raw_schema: str, collection: str, ids: Iterable[Any]
) -> int:
    """Soft-delete: tombstones with ``document`` NULL and ``_cartridge_op`` = 'delete'."""
    await _ensure(conn, raw_schema, collection)
    now = dt.datetime.now(dt.UTC)
    rows = [(canonical_id(i), None, True, next_version(), "delete", now, now) for i in ids]
    if rows:
        await conn.executemany(_upsert_sql(raw_schema, collection), rows)
    return len(rows)


async def land_from_mongo(
    pg_url: str,
    mongo_url: str,
    database: str,
    raw_schema: str,
    collections: Iterable[str] | None = None,
) -> dict[str, int]:
    """Copy whole collections from a MongoDB source into raw tables (a one-shot snapshot)."""
    counts: dict[str, int] = {}
    async with mongo_session(mongo_url) as mongo, pg_connection(pg_url) as conn:
        names = (
            list(collections)
            if collections is not None
            else sorted(await mongo.list_collection_names(database))
        )
        db = mongo.database(database)
        for name in names:
            docs = [doc async for doc in db[name].find({})]
            counts[name] = await land_documents(conn, raw_schema, name, docs, op="snapshot")
    return counts


async def raw_rows(conn: asyncpg.Connection, raw_schema: str, collection: str) -> list[Any]:
    table = qualified(raw_schema, raw_table_name(collection))
    return list(await conn.fetch(f"SELECT * FROM {table} ORDER BY {quote_ident('_id')}"))
