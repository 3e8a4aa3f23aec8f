"""The raw landing contract (DESIGN.md): what warp writes and dbt and analytics read.

One table per collection, ``<raw_schema>.<table>``, where ``table`` is the collection name when
PostgreSQL can hold it (at most 63 bytes, no NUL) and otherwise a stable shortened name with a
hash suffix, recorded in ``cartridge_warp.name_map``. Control tables live in ``cartridge_warp``;
analytics tables in ``cartridge_analytics``.

``_cartridge_version`` is ``numeric(39,0)``: the change's cluster time (seconds and increment)
and its ordinal within that time, so it increases strictly per stream and never overflows.
"""

from __future__ import annotations

from cartridge_dagster.identifiers import (
    MAX_IDENTIFIER_BYTES,
    qualified,
    quote_ident,
    short_hash,
)

__all__ = [
    "ANALYTICS_SCHEMA",
    "CONTROL_SCHEMA",
    "RAW_COLUMNS",
    "raw_table_ddl",
    "raw_table_name",
]

CONTROL_SCHEMA = "cartridge_warp"
ANALYTICS_SCHEMA = "cartridge_analytics"

#: Column → PostgreSQL type, in table order.
RAW_COLUMNS: dict[str, str] = {
    "_id": "text PRIMARY KEY",
    "document": "jsonb",
    "_cartridge_deleted": "boolean NOT NULL DEFAULT false",
    "_cartridge_version": "numeric(39,0) NOT NULL",
    "_cartridge_op": "text NOT NULL",
    "_cartridge_source_ts": "timestamptz",
    "_cartridge_synced_at": "timestamptz NOT NULL DEFAULT now()",
}


def raw_table_name(collection: str) -> str:
    """The raw table's name for ``collection`` (stable; hashed only when it must be)."""
    if (
        collection
        and "\x00" not in collection
        and len(collection.encode("utf-8")) <= MAX_IDENTIFIER_BYTES
    ):
        return collection
    cleaned = collection.replace("\x00", "")
    suffix = "_" + short_hash(collection)
    budget = MAX_IDENTIFIER_BYTES - len(suffix)
    head = cleaned.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    return (head or "collection") + suffix


def raw_table_ddl(raw_schema: str, collection: str) -> list[str]:
    """Statements that create the raw table for ``collection`` (idempotent)."""
    table = qualified(raw_schema, raw_table_name(collection))
    columns = ",\n  ".join(f"{quote_ident(c)} {t}" for c, t in RAW_COLUMNS.items())
    return [
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(raw_schema)}",
        f"CREATE TABLE IF NOT EXISTS {table} (\n  {columns}\n)",
    ]
