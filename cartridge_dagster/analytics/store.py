"""The ``cartridge_analytics`` schema: summary tables with history (one row set per run).

Every profile, reconciliation and activity row carries the ``run_id`` of the analysis that wrote
it, and ``runs`` records when it happened, so trends are a ``GROUP BY run`` away. Tables:

- ``runs``: one row per analysis run (schema, trigger, start and end).
- ``table_profiles``: per table and run: rows live/deleted, last operations, freshness, CDC lag,
  growth against the previous run.
- ``activity``: per raw table, run and time bucket: inserts/updates/deletes landed and the lag.
- ``column_profiles``: per column path, JSON type and run: null ratio, distinct estimate,
  numbers, times, text lengths, top values and a histogram.
- ``reconciliation`` and ``reconciliation_mismatches``: source against target, by ``_id``.
- ``check_results``: the outcome of every check rule per collection and run.

The DDL is idempotent and additive; nothing here imports dagster.
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.landing import ANALYTICS_SCHEMA

__all__ = [
    "ANALYTICS_TABLES",
    "ensure_analytics_schema",
    "finish_run",
    "new_run_id",
    "start_run",
    "table",
]

ANALYTICS_TABLES: dict[str, str] = {
    "runs": """
        run_id text NOT NULL,
        schema_name text NOT NULL,
        trigger text NOT NULL DEFAULT 'manual',
        started_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        PRIMARY KEY (run_id, schema_name)
    """,
    "table_profiles": """
        run_id text NOT NULL,
        schema_name text NOT NULL,
        layer text NOT NULL,
        collection text NOT NULL,
        relation_schema text NOT NULL,
        relation_name text NOT NULL,
        rows_total bigint NOT NULL,
        rows_live bigint NOT NULL,
        rows_deleted bigint NOT NULL,
        last_inserts bigint,
        last_updates bigint,
        last_deletes bigint,
        first_synced_at timestamptz,
        last_synced_at timestamptz,
        last_source_ts timestamptz,
        freshness_seconds double precision,
        lag_p50_seconds double precision,
        lag_p95_seconds double precision,
        lag_max_seconds double precision,
        recent_lag_p95_seconds double precision,
        rows_live_previous bigint,
        row_count_change double precision,
        columns_profiled integer NOT NULL DEFAULT 0,
        rows_profiled bigint,
        activity_source text,
        events_applied bigint,
        profiled_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, relation_schema, relation_name)
    """,
    "activity": """
        run_id text NOT NULL,
        schema_name text NOT NULL,
        collection text NOT NULL,
        bucket timestamptz NOT NULL,
        bucket_seconds integer NOT NULL,
        inserts bigint NOT NULL,
        updates bigint NOT NULL,
        deletes bigint NOT NULL,
        other bigint NOT NULL,
        lag_p50_seconds double precision,
        lag_p95_seconds double precision,
        PRIMARY KEY (run_id, schema_name, collection, bucket)
    """,
    "column_profiles": """
        run_id text NOT NULL,
        schema_name text NOT NULL,
        layer text NOT NULL,
        collection text NOT NULL,
        relation_schema text NOT NULL,
        relation_name text NOT NULL,
        column_path text NOT NULL,
        json_type text NOT NULL,
        data_type text,
        rows_live bigint NOT NULL,
        rows_present bigint NOT NULL,
        rows_with_type bigint NOT NULL,
        value_count bigint NOT NULL,
        null_ratio double precision NOT NULL,
        type_share double precision,
        distinct_estimate bigint,
        min_num numeric,
        max_num numeric,
        mean_num double precision,
        stddev_num double precision,
        p05 double precision,
        p25 double precision,
        p50 double precision,
        p75 double precision,
        p95 double precision,
        time_values bigint,
        min_time timestamptz,
        max_time timestamptz,
        p50_time timestamptz,
        p25_time timestamptz,
        p75_time timestamptz,
        mean_time timestamptz,
        min_length integer,
        max_length integer,
        avg_length double precision,
        true_count bigint,
        sensitive boolean NOT NULL DEFAULT false,
        top_values jsonb,
        histogram jsonb,
        PRIMARY KEY (run_id, relation_schema, relation_name, column_path, json_type)
    """,
    "reconciliation": """
        run_id text NOT NULL,
        schema_name text NOT NULL,
        collection text NOT NULL,
        source_count bigint NOT NULL,
        target_count bigint NOT NULL,
        count_difference bigint NOT NULL,
        count_difference_ratio double precision NOT NULL,
        sampled bigint NOT NULL,
        mismatched bigint NOT NULL,
        mismatch_ratio double precision NOT NULL,
        tolerance double precision NOT NULL,
        within_tolerance boolean NOT NULL,
        checked_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, schema_name, collection)
    """,
    "reconciliation_mismatches": """
        run_id text NOT NULL,
        schema_name text NOT NULL,
        collection text NOT NULL,
        _id text NOT NULL,
        kind text NOT NULL,
        source_hash text,
        target_hash text,
        PRIMARY KEY (run_id, schema_name, collection, _id)
    """,
    "check_results": """
        run_id text NOT NULL,
        schema_name text NOT NULL,
        collection text NOT NULL,
        check_name text NOT NULL,
        passed boolean NOT NULL,
        severity text NOT NULL,
        description text NOT NULL,
        checked_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (run_id, schema_name, collection, check_name)
    """,
}

_INDEXES = {
    "table_profiles": ("schema_name", "collection", "profiled_at"),
    "column_profiles": ("schema_name", "collection", "run_id"),
    "reconciliation": ("schema_name", "collection", "checked_at"),
}

# A cast that returns NULL instead of failing (a string that looks like a date but is not one).
_TRY_TIMESTAMPTZ = """
CREATE OR REPLACE FUNCTION {fn}(value text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $body$
BEGIN
  RETURN value::timestamptz;
EXCEPTION WHEN others THEN
  RETURN NULL;
END
$body$
"""


def _column_definitions(columns: str) -> list[tuple[str, str]]:
    """(name, type and constraints) of each column in one of the DDL bodies above."""
    out = []
    for line in columns.strip().splitlines():
        line = line.strip().rstrip(",")
        if not line or line.startswith("PRIMARY KEY"):
            continue
        name, _, definition = line.partition(" ")
        out.append((name, definition))
    return out


def table(name: str) -> str:
    """``"cartridge_analytics"."<name>"``."""
    return qualified(ANALYTICS_SCHEMA, name)


def try_timestamptz_fn() -> str:
    return qualified(ANALYTICS_SCHEMA, "try_timestamptz")


async def ensure_analytics_schema(conn: asyncpg.Connection) -> None:
    """Create the analytics schema, tables and helper function when missing (idempotent)."""
    async with conn.transaction():
        # Serialise concurrent first runs (two schemas profiled at once).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('cartridge_analytics_ddl'))")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(ANALYTICS_SCHEMA)}")
        for name, columns in ANALYTICS_TABLES.items():
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {table(name)} ({columns})")
            # additive upgrades: columns added since a table was created (always nullable)
            for column, definition in _column_definitions(columns):
                await conn.execute(
                    f"ALTER TABLE {table(name)} ADD COLUMN IF NOT EXISTS "
                    f"{quote_ident(column)} {definition}"
                )
        for name, cols in _INDEXES.items():
            index = quote_ident(f"{name}_by_{cols[0]}_{cols[1]}")
            column_list = ", ".join(quote_ident(c) for c in cols)
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {index} ON {table(name)} ({column_list})"
            )
        await conn.execute(_TRY_TIMESTAMPTZ.format(fn=try_timestamptz_fn()))


def new_run_id() -> str:
    """A sortable run id: UTC time plus a random suffix."""
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:8]}"


async def start_run(
    conn: asyncpg.Connection, schema: str, run_id: str, trigger: str = "manual"
) -> None:
    await conn.execute(
        f"INSERT INTO {table('runs')} (run_id, schema_name, trigger) VALUES ($1, $2, $3) "
        "ON CONFLICT (run_id, schema_name) DO UPDATE SET "
        "trigger = EXCLUDED.trigger, started_at = now(), finished_at = NULL",
        run_id,
        schema,
        trigger,
    )


async def finish_run(conn: asyncpg.Connection, schema: str, run_id: str) -> None:
    await conn.execute(
        f"UPDATE {table('runs')} SET finished_at = now() WHERE run_id = $1 AND schema_name = $2",
        run_id,
        schema,
    )
