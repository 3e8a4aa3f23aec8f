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
    "HISTORY_SUFFIX",
    "RAW_COLUMNS",
    "control_ddl",
    "history_table_ddl",
    "history_table_name",
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


# --------------------------------------------------------------------------- warp additions

#: Suffix of the append-only history table kept for tables with ``history: true``.
HISTORY_SUFFIX = "__history"


def history_table_name(collection: str) -> str:
    """The append-only history table's name for ``collection`` (stable; hashed when long)."""
    return raw_table_name(collection + HISTORY_SUFFIX)


def history_table_ddl(raw_schema: str, collection: str) -> list[str]:
    """The history table: every applied change, keyed by ``(_id, _cartridge_version)``."""
    table = qualified(raw_schema, history_table_name(collection))
    columns = ",\n  ".join(
        f"{quote_ident(c)} {t.replace(' PRIMARY KEY', ' NOT NULL')}" for c, t in RAW_COLUMNS.items()
    )
    pk = f"PRIMARY KEY ({quote_ident('_id')}, {quote_ident('_cartridge_version')})"
    return [
        f"CREATE SCHEMA IF NOT EXISTS {quote_ident(raw_schema)}",
        f"CREATE TABLE IF NOT EXISTS {table} (\n  {columns},\n  {pk}\n)",
    ]


def control_ddl() -> list[str]:
    """Warp's control tables in ``cartridge_warp`` (idempotent).

    - ``checkpoints``: one row per schema: resume token, last applied version, fencing epoch,
      per-collection snapshot progress; written in the same transaction as the data.
    - ``dead_letters``: changes that could not be landed: the raw event (BSON), its JSON for
      reading, the error class and message, the resume token, attempts and status.
    - ``name_map``: collection → raw (and history) table, with per-table progress.
    - ``tombstones``: versions of hard-deleted documents, so a stale replay cannot resurrect them.
    - ``policy_counts``: what the value policies changed (NUL stripped, NaN as text, …) per
      collection, policy and field path, counted in the batch transaction (exactly once).
    - ``snapshot_ranges``: a table's initial snapshot split in primary-key ranges
      ``(lo, hi]`` (NULL: unbounded) landed by several writers; a range is marked done in the
      transaction of its rows, and the rows are gone when the table's copy is done.
    """
    cs = quote_ident(CONTROL_SCHEMA)
    return [
        f"CREATE SCHEMA IF NOT EXISTS {cs}",
        f"""CREATE TABLE IF NOT EXISTS {cs}.checkpoints (
  schema_name text PRIMARY KEY,
  epoch bigint NOT NULL DEFAULT 0,
  owner text,
  resume_token jsonb,
  version numeric(39,0) NOT NULL DEFAULT 0,
  snapshot jsonb NOT NULL DEFAULT '{{}}'::jsonb,
  events_applied bigint NOT NULL DEFAULT 0,
  last_source_ts timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
)""",
        f"""CREATE TABLE IF NOT EXISTS {cs}.dead_letters (
  id bigserial PRIMARY KEY,
  schema_name text NOT NULL,
  collection text NOT NULL,
  document_id text,
  version numeric(39,0) NOT NULL,
  op text NOT NULL,
  error_class text NOT NULL,
  error_message text NOT NULL,
  raw_event bytea NOT NULL,
  raw_event_json text NOT NULL,
  resume_token jsonb,
  attempts integer NOT NULL DEFAULT 1,
  status text NOT NULL DEFAULT 'pending',
  first_failed_at timestamptz NOT NULL DEFAULT now(),
  last_failed_at timestamptz NOT NULL DEFAULT now(),
  resolved_at timestamptz
)""",
        f"CREATE INDEX IF NOT EXISTS dead_letters_pending ON {cs}.dead_letters "
        "(schema_name, status, collection)",
        f"""CREATE TABLE IF NOT EXISTS {cs}.name_map (
  schema_name text NOT NULL,
  collection text NOT NULL,
  raw_schema text NOT NULL,
  table_name text NOT NULL,
  history_table text,
  version numeric(39,0) NOT NULL DEFAULT 0,
  events_applied bigint NOT NULL DEFAULT 0,
  last_source_ts timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (schema_name, collection)
)""",
        f"""CREATE TABLE IF NOT EXISTS {cs}.policy_counts (
  schema_name text NOT NULL,
  collection text NOT NULL,
  policy text NOT NULL,
  path text NOT NULL,
  n bigint NOT NULL DEFAULT 0,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (schema_name, collection, policy, path)
)""",
        f"""CREATE TABLE IF NOT EXISTS {cs}.snapshot_ranges (
  schema_name text NOT NULL,
  collection text NOT NULL,
  version numeric(39,0) NOT NULL,
  seq integer NOT NULL,
  lo text,
  hi text,
  done boolean NOT NULL DEFAULT false,
  rows bigint NOT NULL DEFAULT 0,
  PRIMARY KEY (schema_name, collection, version, seq)
)""",
        f"""CREATE TABLE IF NOT EXISTS {cs}.tombstones (
  schema_name text NOT NULL,
  collection text NOT NULL,
  _id text NOT NULL,
  version numeric(39,0) NOT NULL,
  PRIMARY KEY (schema_name, collection, _id)
)""",
    ]
