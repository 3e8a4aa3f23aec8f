"""Profiles of raw and modelled tables, computed in PostgreSQL with set-based SQL.

Nothing is pulled into Python but one summary row per table. A raw table's columns are the paths
of ``document`` (``customer.address.zip``, ``items[].unit_price``), walked by a recursive query
and typed by ``jsonb_typeof``; a modelled table's columns are its own, read through
``to_jsonb(row)`` so both layers share one profile pipeline:

1. ``table_profiles``: rows live/deleted, last operations, freshness, CDC lag, growth.
2. ``activity`` (raw tables): changes landed per time bucket and operation, with lag.
3. ``column_profiles``: null ratio (share of rows without a non-null value at the path),
   distinct estimate, min/max/mean/stddev/percentiles of numbers, min/max/median of times
   (ISO-8601 strings and timestamp columns), text/array lengths, top values and histograms.

Values of ``sensitive_fields`` never reach the summary: only counts and lengths are kept.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg

from cartridge_dagster.analytics.store import table, try_timestamptz_fn
from cartridge_dagster.errors import TerminalError
from cartridge_dagster.identifiers import pg_name, qualified, quote_ident, quote_literal
from cartridge_dagster.landing import CONTROL_SCHEMA, history_table_name
from cartridge_dagster.observability import get_logger

__all__ = [
    "CDC_OPS",
    "ColumnProfile",
    "Relation",
    "TableProfile",
    "profile_relation",
    "relation_exists",
]

log = get_logger(__name__)

Layer = Literal["raw", "model"]

#: Operations that come from the change stream (snapshot rows have no meaningful lag).
CDC_OPS = ("insert", "update", "replace", "delete")

#: Above this many live rows, column profiles read a random sample of about this many rows.
SAMPLE_ROWS = 1_000

#: An ISO-8601 date or timestamp, as documents.py writes them and PostgreSQL prints them.
ISO_TIME_RE = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}(:?\d{2})?)?$"

#: The ISO-8601 times every one of which PostgreSQL casts to ``timestamptz`` (days up to 28,
#: hours to 23, offsets to 14:59, at most microseconds, no offset without a time): cast
#: directly. Other ISO-looking strings go through the exception-catching cast, whose
#: subtransaction per value costs several microseconds.
SAFE_TIME_RE = (
    r"^(000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])-"
    r"(0[1-9]|1[0-9]|2[0-8])([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?"
    r"(Z|[+-](0[0-9]|1[0-4])(:?[0-5][0-9])?)?)?$"
)

#: Bucket widths for activity charts; the smallest that gives at most ~60 buckets is used.
_BUCKETS = (1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)


@dataclass(frozen=True)
class Relation:
    """A table (or view) to profile, and where its summary rows belong."""

    schema_name: str
    layer: Layer
    collection: str
    relation_schema: str
    relation_name: str
    sensitive_paths: frozenset[str] = frozenset()

    @property
    def qualified(self) -> str:
        return qualified(self.relation_schema, self.relation_name)

    @property
    def display(self) -> str:
        return f"{self.relation_schema}.{self.relation_name}"


@dataclass
class ColumnProfile:
    path: str
    json_type: str
    data_type: str | None
    null_ratio: float
    distinct_estimate: int | None
    rows_with_type: int
    type_share: float | None


@dataclass
class TableProfile:
    relation: Relation
    rows_total: int
    rows_live: int
    rows_deleted: int
    last_synced_at: dt.datetime | None = None
    freshness_seconds: float | None = None
    lag_p50_seconds: float | None = None
    lag_p95_seconds: float | None = None
    lag_max_seconds: float | None = None
    recent_lag_p95_seconds: float | None = None
    rows_live_previous: int | None = None
    row_count_change: float | None = None
    rows_profiled: int = 0
    columns: list[ColumnProfile] = field(default_factory=list)

    def column_types(self) -> dict[str, str]:
        """Each column's type, once: a model column's SQL type (it has one, whatever JSON types
        its values take), a document path's JSON types other than null, joined by ``|``."""
        seen: dict[str, list[str]] = {}
        for col in self.columns:
            kinds = seen.setdefault(col.path, [])
            kind = col.data_type or col.json_type
            if kind not in kinds:
                kinds.append(kind)
        out = {}
        for path, kinds in seen.items():
            shown = [k for k in kinds if k != "null"] or kinds
            out[path] = "|".join(sorted(shown))
        return out

    def max_null_ratio(self) -> tuple[str | None, float]:
        worst: tuple[str | None, float] = (None, 0.0)
        for col in self.columns:
            if col.null_ratio > worst[1]:
                worst = (col.path, col.null_ratio)
        return worst


async def relation_exists(conn: asyncpg.Connection, schema: str, name: str) -> bool:
    found = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified(schema, name))
    return bool(found)


@dataclass(frozen=True)
class _Catalog:
    """What one catalog query says about a relation before it is profiled."""

    columns: dict[str, str]  # name → SQL type, in table order
    has_history: bool  # the collection keeps a history table (activity reads it)
    has_counter: bool  # warp's name_map has the cumulative change counter


async def _catalog_and_clear(
    conn: asyncpg.Connection, rel: Relation, run_id: str
) -> _Catalog | None:
    """One round trip: the relation's columns, whether a history table and warp's change
    counter exist, and the rows an earlier attempt of the same run wrote for the relation
    deleted (a re-run of a run id is idempotent). None when the relation does not exist."""
    exists = "to_regclass($1) IS NOT NULL"
    mine = f"run_id = $4 AND relation_schema = $5 AND relation_name = $6 AND {exists}"
    row = await conn.fetchrow(
        f"WITH t AS (DELETE FROM {table('table_profiles')} WHERE {mine}), "
        f"c AS (DELETE FROM {table('column_profiles')} WHERE {mine}), "
        f"a AS (DELETE FROM {table('activity')} WHERE run_id = $4 AND schema_name = $7 "
        f"AND collection = $8 AND $9 AND {exists}) "
        f"SELECT {exists} AS found, "
        "(SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a "
        " WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped) AS names, "
        "(SELECT array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum) "
        " FROM pg_attribute a "
        " WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped) AS types, "
        "to_regclass($2) IS NOT NULL AS history, "
        "(SELECT count(*) = 3 FROM pg_attribute WHERE attrelid = to_regclass($3) "
        " AND attnum > 0 AND NOT attisdropped "
        " AND attname IN ('schema_name', 'collection', 'events_applied')) AS counter",
        rel.qualified,
        qualified(rel.relation_schema, history_table_name(rel.collection)),
        qualified(CONTROL_SCHEMA, "name_map"),
        run_id,
        rel.relation_schema,
        rel.relation_name,
        rel.schema_name,
        rel.collection,
        rel.layer == "raw",
    )
    assert row is not None
    if not row["found"]:
        return None
    columns = dict(zip(row["names"] or [], row["types"] or [], strict=True))
    return _Catalog(
        {str(k): str(v) for k, v in columns.items()},
        has_history=rel.layer == "raw" and bool(row["history"]),
        has_counter=rel.layer == "raw" and bool(row["counter"]),
    )


def _sensitive_predicate(column: str, param: str) -> str:
    """SQL: ``column`` is a sensitive path (one of the text[] ``param``) or lies under one."""
    return (
        f"EXISTS (SELECT 1 FROM unnest({param}::text[]) s(p) WHERE {column} = s.p "
        f"OR left({column}, length(s.p) + 1) = s.p || '.' "
        f"OR left({column}, length(s.p) + 2) = s.p || '[]')"
    )


def sensitive_names(paths: Iterable[str]) -> frozenset[str]:
    """Sensitive field paths, plus the column names a staging model gives them."""
    out: set[str] = set()
    for path in paths:
        out.add(path)
        out.add(pg_name(path))
    return frozenset(out)


# --------------------------------------------------------------------------- table level


def bucket_seconds(first: dt.datetime | None, last: dt.datetime | None) -> int:
    """The activity bucket width for a time span (at most ~60 buckets)."""
    if first is None or last is None:
        return _BUCKETS[0]
    span = max((last - first).total_seconds(), 1.0)
    for width in _BUCKETS:
        if span / width <= 60:
            return width
    return _BUCKETS[-1]


def bucket_seconds_sql(lo: str, hi: str, widths: str) -> str:
    """SQL of :func:`bucket_seconds` for the span ``lo``..``hi`` (timestamptz expressions) and
    ``widths``, an int[] parameter holding ``_BUCKETS`` (the same float8 arithmetic)."""
    return (
        f"CASE WHEN {lo} IS NULL OR {hi} IS NULL THEN ({widths})[1] ELSE coalesce("
        f"(SELECT min(w) FROM unnest({widths}) w "
        f"WHERE greatest(extract(epoch FROM ({hi} - {lo}))::float8, 1.0) / w <= 60), "
        f"({widths})[array_upper({widths}, 1)]) END"
    )


_PREV_SQL = """prev AS (
      SELECT rows_live FROM {table_profiles}
      WHERE relation_schema = $5 AND relation_name = $6 AND run_id <> $1
      ORDER BY profiled_at DESC LIMIT 1
    )"""

_CHANGE_SQL = """prev.rows_live,
      CASE WHEN prev.rows_live IS NULL THEN NULL
           WHEN prev.rows_live = 0 THEN CASE WHEN s.rows_live = 0 THEN 0 ELSE 1 END
           ELSE (s.rows_live - prev.rows_live)::float8 / prev.rows_live END"""


async def _table_stats_raw(
    conn: asyncpg.Connection, rel: Relation, run_id: str, cat: _Catalog
) -> asyncpg.Record:
    """One statement: the table's numbers into ``table_profiles`` and its changes per time
    bucket into ``activity`` (from the history table when the collection keeps one, else from
    the last operation of each row, the same scan as the numbers), warp's change counter."""
    t = rel.qualified
    deleted = quote_ident("_cartridge_deleted")
    op = quote_ident("_cartridge_op")
    synced = quote_ident("_cartridge_synced_at")
    source_ts = quote_ident("_cartridge_source_ts")
    lag = f"extract(epoch FROM ({synced} - {source_ts}))::float8"
    cdc = f"{op} = ANY($7::text[]) AND {source_ts} IS NOT NULL"
    if cat.has_history:
        history = qualified(rel.relation_schema, history_table_name(rel.collection))
        changes = (
            f"SELECT {op} AS op, {synced} AS synced, CASE WHEN {cdc} THEN {lag} END AS lag "
            f"FROM {history}"
        )
        span = f"SELECT min({synced}) AS lo, max({synced}) AS hi FROM {history}"
        origin = "history"
    else:
        changes = "SELECT op, synced, lag FROM base"
        span = "SELECT first_synced_at AS lo, last_synced_at AS hi FROM s"
        origin = "latest"
    counter = (
        f"(SELECT events_applied FROM {qualified(CONTROL_SCHEMA, 'name_map')} "
        "WHERE schema_name = $2 AND collection = $4)"
        if cat.has_counter
        else "NULL::bigint"
    )
    sql = f"""
    WITH base AS (
      -- each row's lag computed once (a numeric extract), for every aggregate that reads it
      SELECT {deleted} AS deleted, {op} AS op, {synced} AS synced, {source_ts} AS source_ts,
        CASE WHEN {cdc} THEN {lag} END AS lag
      FROM {t}
    ), s AS (
      SELECT count(*) AS rows_total,
             count(*) FILTER (WHERE NOT deleted) AS rows_live,
             count(*) FILTER (WHERE deleted) AS rows_deleted,
             count(*) FILTER (WHERE op = 'insert') AS last_inserts,
             count(*) FILTER (WHERE op IN ('update', 'replace')) AS last_updates,
             count(*) FILTER (WHERE op = 'delete') AS last_deletes,
             min(synced) AS first_synced_at,
             max(synced) AS last_synced_at,
             max(source_ts) AS last_source_ts,
             extract(epoch FROM (now() - max(synced)))::float8 AS freshness_seconds,
             -- one sort for both percentiles; lag is NULL outside the change stream
             percentile_cont(ARRAY[0.5, 0.95]::float8[]) WITHIN GROUP (ORDER BY lag) AS lag_pct,
             max(lag) AS lag_max_seconds,
             percentile_cont(0.95) WITHIN GROUP (ORDER BY lag)
               FILTER (WHERE synced > now() - interval '15 minutes') AS recent_lag_p95_seconds
      FROM base
    ), {_PREV_SQL}, span AS ({span}
    ), width AS (
      SELECT ({bucket_seconds_sql("lo", "hi", "$8::int[]")})::int AS secs FROM span
    ), act AS (
      INSERT INTO {table("activity")} (
        run_id, schema_name, collection, bucket, bucket_seconds,
        inserts, updates, deletes, other, lag_p50_seconds, lag_p95_seconds)
      SELECT $1, $2, $4, b.bucket, width.secs, b.inserts, b.updates, b.deletes, b.other,
        b.pct[1], b.pct[2]
      FROM (
        SELECT date_bin(make_interval(secs => (SELECT secs FROM width)::float8), c.synced,
                        timestamptz '2000-01-01 00:00:00+00') AS bucket,
          count(*) FILTER (WHERE c.op = 'insert') AS inserts,
          count(*) FILTER (WHERE c.op IN ('update', 'replace')) AS updates,
          count(*) FILTER (WHERE c.op = 'delete') AS deletes,
          count(*) FILTER (WHERE NOT (c.op = ANY($7::text[]))) AS other,
          -- one sort for both percentiles
          percentile_cont(ARRAY[0.5, 0.95]::float8[]) WITHIN GROUP (ORDER BY c.lag) AS pct
        FROM ({changes}) c
        GROUP BY 1
      ) b CROSS JOIN width
    )
    INSERT INTO {table("table_profiles")} (
      run_id, schema_name, layer, collection, relation_schema, relation_name,
      rows_total, rows_live, rows_deleted, last_inserts, last_updates, last_deletes,
      first_synced_at, last_synced_at, last_source_ts, freshness_seconds,
      lag_p50_seconds, lag_p95_seconds, lag_max_seconds, recent_lag_p95_seconds,
      rows_live_previous, row_count_change, activity_source, events_applied)
    SELECT $1, $2, $3, $4, $5, $6,
      s.rows_total, s.rows_live, s.rows_deleted, s.last_inserts, s.last_updates, s.last_deletes,
      s.first_synced_at, s.last_synced_at, s.last_source_ts, s.freshness_seconds,
      s.lag_pct[1], s.lag_pct[2], s.lag_max_seconds, s.recent_lag_p95_seconds,
      {_CHANGE_SQL}, {_lit(origin)}, {counter}
    FROM s LEFT JOIN prev ON true
    RETURNING *
    """.replace("{table_profiles}", table("table_profiles"))
    row = await conn.fetchrow(
        sql,
        run_id,
        rel.schema_name,
        rel.layer,
        rel.collection,
        rel.relation_schema,
        rel.relation_name,
        list(CDC_OPS),
        list(_BUCKETS),
    )
    assert row is not None
    return row


async def _table_stats_model(
    conn: asyncpg.Connection, rel: Relation, run_id: str, columns: dict[str, str]
) -> asyncpg.Record:
    t = rel.qualified
    if "_cartridge_deleted" in columns:
        deleted = f"coalesce({quote_ident('_cartridge_deleted')}, false)"
    else:
        deleted = "false"
    synced = (
        f"max({quote_ident('_cartridge_synced_at')})"
        if "_cartridge_synced_at" in columns
        else "NULL::timestamptz"
    )
    sql = f"""
    WITH s AS (
      SELECT count(*) AS rows_total,
             count(*) FILTER (WHERE NOT {deleted}) AS rows_live,
             count(*) FILTER (WHERE {deleted}) AS rows_deleted,
             {synced} AS last_synced_at
      FROM {t}
    ), {_PREV_SQL}
    INSERT INTO {table("table_profiles")} (
      run_id, schema_name, layer, collection, relation_schema, relation_name,
      rows_total, rows_live, rows_deleted, last_synced_at, freshness_seconds,
      rows_live_previous, row_count_change)
    SELECT $1, $2, $3, $4, $5, $6, s.rows_total, s.rows_live, s.rows_deleted,
      s.last_synced_at, extract(epoch FROM (now() - s.last_synced_at))::float8,
      {_CHANGE_SQL}
    FROM s LEFT JOIN prev ON true
    RETURNING *
    """.replace("{table_profiles}", table("table_profiles"))
    row = await conn.fetchrow(
        sql,
        run_id,
        rel.schema_name,
        rel.layer,
        rel.collection,
        rel.relation_schema,
        rel.relation_name,
    )
    assert row is not None
    return row


# --------------------------------------------------------------------------- column level


def _walk_sql(max_depth: int) -> str:
    """``walk``: ``(rid, path, value)`` of every value under ``sampled``'s ``doc``, walked
    recursively (``sampled``: ``rid text, doc jsonb``). Objects are walked by key (``a.b``),
    arrays by element (``a[]``); only containers are expanded. Both kinds of children come from
    one ``ROWS FROM`` (only one of its functions has rows for a given value), which costs about
    half of a ``UNION ALL`` of the two.
    """
    return f"""
    walk(rid, path, value, jtype, depth) AS (
      SELECT b.rid, k.key, k.value, jsonb_typeof(k.value), 1
      FROM sampled b
      CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(b.doc) = 'object' THEN b.doc END) k
      UNION ALL
      SELECT w.rid,
        CASE WHEN f.key IS NULL THEN w.path || '[]' ELSE w.path || '.' || f.key END,
        coalesce(f.value, f.elem), jsonb_typeof(coalesce(f.value, f.elem)), w.depth + 1
      FROM walk w CROSS JOIN LATERAL ROWS FROM (
        jsonb_each(CASE WHEN w.jtype = 'object' THEN w.value END),
        jsonb_array_elements(CASE WHEN w.jtype = 'array' THEN w.value END)
      ) f(key, value, elem)
      WHERE w.depth < {int(max_depth)} AND w.jtype IN ('object', 'array')
    )"""


def _unpivot_sql(names: list[str]) -> str:
    """``walk``: ``(rid, path, value)`` of every column of ``sampled`` (``rid`` and ``names``),
    one row per row and column, each value as ``to_jsonb`` gives it (SQL NULL: JSON null)."""
    values = ", ".join(
        f"({_lit(n)}, coalesce(to_jsonb(b.{quote_ident(n)}), 'null'::jsonb))" for n in names
    )
    return f"""
    walk(rid, path, value, jtype) AS (
      SELECT b.rid, c.path, c.value, jsonb_typeof(c.value) FROM sampled b
      CROSS JOIN LATERAL (VALUES {values}) c(path, value)
    )"""


def leaves_cte(base: str, walk: str, recursive: bool) -> str:
    """``WITH`` clause of ``sampled`` (``base``: the rows profiled), ``n`` (their number),
    ``vals`` and ``in_arrays``. ``$1`` is the ISO time pattern.

    ``vals``: one row per distinct (path, JSON type, scalar text, array length) with how many
    values it stands for (``n``), and its number, time and length, each taken once per distinct
    value rather than per value. ``in_arrays``: the distinct (path, type, row) under an array,
    where a row can hold many values at a path. Every statistic is computed from these two: one
    pass over the walked values instead of one per statistic.
    """
    return f"""
    WITH {"RECURSIVE " if recursive else ""}sampled AS MATERIALIZED ({base}),
    n AS (SELECT count(*) AS rows FROM sampled),
    {walk},
    vals AS MATERIALIZED (
      -- x: the number or time on the histogram's float8 axis (float8 of the text is the
      -- float8 of the numeric: PostgreSQL converts a numeric through its text)
      SELECT path, jtype, txt, n, num, ts, len,
        coalesce(numf, extract(epoch FROM ts)::float8) AS x
      FROM (
        SELECT path, jtype, txt, n,
          CASE WHEN jtype = 'number' THEN txt::numeric END AS num,
          CASE WHEN jtype = 'number' THEN txt::float8 END AS numf,
          CASE WHEN jtype = 'string' AND length(txt) >= 10 AND substr(txt, 5, 1) = '-'
                    AND txt ~ $1
               THEN CASE WHEN txt ~ {_lit(SAFE_TIME_RE)} THEN txt::timestamptz
                         ELSE {try_timestamptz_fn()}(txt) END END AS ts,
          CASE WHEN jtype = 'string' THEN length(txt) ELSE alen END AS len
        FROM (SELECT path, jtype, txt, alen, count(*) AS n
              FROM (SELECT path, jtype,
                      CASE WHEN jtype IN ('string', 'number', 'boolean')
                           THEN value #>> '{{}}' END AS txt,
                      CASE WHEN jtype = 'array' THEN jsonb_array_length(value) END AS alen
                    FROM walk) w
              GROUP BY path, jtype, txt, alen) g
        OFFSET 0) c
    ),
    in_arrays AS (
      SELECT DISTINCT path, jtype, rid FROM walk WHERE strpos(path, '[]') > 0
    )"""


#: The statistics of every (path, JSON type) of ``vals``, and the INSERT writing them.
#: Parameters: $1 ISO pattern, $2 run id, $3 relation schema, $4 relation name, $5 schema,
#: $6 layer, $7 collection, $8 rows live (the population the sample stands
#: for), $9 data types by path (jsonb), $10 sensitive paths, $11 top values, $12 buckets.
#: Sums weighted by ``n`` give what the aggregates over every value give, exactly (``avg`` is
#: the numeric sum over the count; ``stddev`` and percentiles read the values expanded back).
_STATS_SQL = """
    , spread AS (
      -- the numbers and times, each as many times as it was seen
      SELECT path, jtype,
        stddev_samp(num)::float8 AS stddev_num,
        percentile_cont(ARRAY[0.05, 0.25, 0.5, 0.75, 0.95]::float8[])
          WITHIN GROUP (ORDER BY x) FILTER (WHERE num IS NOT NULL) AS pct,
        percentile_disc(ARRAY[0.25, 0.5, 0.75]::float8[]) WITHIN GROUP (ORDER BY ts) AS tq
      FROM vals CROSS JOIN LATERAL generate_series(1, vals.n) AS g(i)
      WHERE num IS NOT NULL OR ts IS NOT NULL
      GROUP BY path, jtype
    ), array_rows AS (
      SELECT path, jtype, count(*) AS rows_with_type FROM in_arrays GROUP BY path, jtype
    ), array_present AS (
      SELECT path, count(DISTINCT rid) AS rows_present
      FROM in_arrays WHERE jtype <> 'null' GROUP BY path
    ), stats AS (
      SELECT v.path, v.jtype,
        coalesce(max(ar.rows_with_type), sum(v.n))::bigint AS rows_with_type,
        sum(v.n)::bigint AS value_count,
        min(v.num) AS min_num, max(v.num) AS max_num,
        (sum(v.num * v.n) / sum(v.n) FILTER (WHERE v.num IS NOT NULL))::float8 AS mean_num,
        max(sp.stddev_num) AS stddev_num, max(sp.pct) AS pct,
        coalesce(sum(v.n) FILTER (WHERE v.ts IS NOT NULL), 0)::bigint AS time_values,
        min(v.ts) AS min_time, max(v.ts) AS max_time, max(sp.tq) AS tq,
        to_timestamp(sum(extract(epoch FROM v.ts) * v.n)
                     / sum(v.n) FILTER (WHERE v.ts IS NOT NULL)) AS mean_time,
        min(v.len) AS min_length, max(v.len) AS max_length,
        (sum(v.len::bigint * v.n)::numeric
         / sum(v.n) FILTER (WHERE v.len IS NOT NULL))::float8 AS avg_length,
        coalesce(sum(v.n) FILTER (WHERE v.jtype = 'boolean' AND v.txt = 'true'), 0)::bigint
          AS true_count,
        -- d distinct of n sampled values, f1 of them seen once: the Haas-Stokes (Duj1)
        -- estimate n*d / (n - f1 + f1*n/N) of the distinct values among N, as ANALYZE makes it
        NULLIF(count(*) FILTER (WHERE v.txt IS NOT NULL), 0) AS d,
        count(*) FILTER (WHERE v.txt IS NOT NULL AND v.n = 1) AS f1,
        sum(v.n) FILTER (WHERE v.txt IS NOT NULL) AS nv,
        count(*) FILTER (WHERE v.txt IS NOT NULL AND v.n > 1) AS repeated,
        {sensitive_v} AS sensitive
      FROM vals v
      LEFT JOIN spread sp ON sp.path = v.path AND sp.jtype = v.jtype
      LEFT JOIN array_rows ar ON ar.path = v.path AND ar.jtype = v.jtype
      GROUP BY v.path, v.jtype
    ), present AS (
      -- outside arrays a row holds one value per path: its rows are its values
      SELECT s.path,
        CASE WHEN strpos(s.path, '[]') > 0 THEN coalesce(max(a.rows_present), 0)
             ELSE coalesce(sum(s.value_count) FILTER (WHERE s.jtype <> 'null'), 0)
        END::bigint AS rows_present,
        sum(s.value_count)::bigint AS value_total
      FROM stats s LEFT JOIN array_present a USING (path) GROUP BY s.path
    ), kept AS (
      -- the paths whose top values are kept: not where every value is distinct, not sensitive
      SELECT path, jtype, repeated FROM stats
      WHERE (d < value_count OR value_count <= $11) AND NOT sensitive
    ), counted_values AS (
      -- the values seen more than once, ranked (few: sorting every value by count and text
      -- costs more than the rest of the ranking)
      SELECT v.path, v.jtype, v.txt, v.n,
        row_number() OVER (PARTITION BY v.path, v.jtype ORDER BY v.n DESC, v.txt) AS rn
      FROM vals v JOIN kept k USING (path, jtype)
      WHERE v.txt IS NOT NULL AND v.n > 1
    ), singles AS (
      -- the values seen once, where fewer than $11 repeat: they follow, in text order
      SELECT v.path, v.jtype, max(k.repeated) AS repeated, array_agg(v.txt) AS txts
      FROM vals v JOIN kept k USING (path, jtype)
      WHERE v.txt IS NOT NULL AND v.n = 1 AND k.repeated < $11
      GROUP BY v.path, v.jtype
    ), top_rows AS (
      SELECT path, jtype, txt, n FROM counted_values WHERE rn <= $11
      UNION ALL
      SELECT g.path, g.jtype, f.txt, 1 FROM singles g
      CROSS JOIN LATERAL (
        SELECT t AS txt FROM unnest(g.txts) t ORDER BY t LIMIT $11 - g.repeated) f
    ), top_values AS (
      SELECT path, jtype,
        jsonb_agg(jsonb_build_object('value', left(txt, 120), 'count', n) ORDER BY n DESC, txt)
          AS top
      FROM top_rows GROUP BY path, jtype
    ), ranges AS (
      -- min and max of the numbers (or times) of a path, as the histogram's float8 axis
      SELECT path, jtype, lo, hi, CASE WHEN hi > lo THEN $12::int ELSE 1 END AS n
      FROM (SELECT path, jtype,
              coalesce(min_num::float8, extract(epoch FROM min_time)::float8) AS lo,
              coalesce(max_num::float8, extract(epoch FROM max_time)::float8) AS hi
            FROM stats WHERE (min_num IS NOT NULL OR min_time IS NOT NULL) AND NOT sensitive) r
    ), bucketed AS (
      SELECT v.path, v.jtype,
        CASE WHEN r.n = 1 THEN 1
             ELSE least(width_bucket(v.x, r.lo, r.hi, r.n), r.n) END AS b,
        sum(v.n)::bigint AS cnt
      FROM vals v JOIN ranges r USING (path, jtype)
      WHERE v.x IS NOT NULL GROUP BY 1, 2, 3
    ), histograms AS (
      SELECT r.path, r.jtype,
        jsonb_agg(jsonb_build_object(
          'lo', r.lo + (g.b - 1) * (r.hi - r.lo) / r.n,
          'hi', CASE WHEN r.n = 1 THEN r.hi ELSE r.lo + g.b * (r.hi - r.lo) / r.n END,
          'count', coalesce(bk.cnt, 0)) ORDER BY g.b) AS histogram
      FROM ranges r CROSS JOIN LATERAL generate_series(1, r.n) AS g(b)
      LEFT JOIN bucketed bk ON bk.path = r.path AND bk.jtype = r.jtype AND bk.b = g.b
      GROUP BY r.path, r.jtype
    ), profiled AS (
      SELECT s.*, p.rows_present, p.value_total, tv.top, h.histogram,
        -- the population of values the sample stands for
        s.value_count::float8 * greatest($8::bigint, n.rows) / greatest(n.rows, 1)
          AS population, n.rows AS rows_profiled
      FROM stats s JOIN present p USING (path) CROSS JOIN n
      LEFT JOIN top_values tv USING (path, jtype)
      LEFT JOIN histograms h USING (path, jtype)
    ), inserted AS (
    INSERT INTO {column_profiles} (
      run_id, relation_schema, relation_name, schema_name, layer, collection,
      column_path, json_type, data_type, rows_live, rows_present, rows_with_type,
      value_count, null_ratio, type_share, distinct_estimate,
      min_num, max_num, mean_num, stddev_num, p05, p25, p50, p75, p95,
      time_values, min_time, max_time, p50_time, p25_time, p75_time, mean_time,
      min_length, max_length, avg_length, true_count, sensitive, top_values, histogram)
    SELECT $2, $3, $4, $5, $6, $7,
      path, jtype, ($9::jsonb) ->> path, rows_profiled, rows_present, rows_with_type,
      value_count,
      CASE WHEN rows_profiled > 0 THEN 1 - rows_present::float8 / rows_profiled ELSE 0 END,
      value_count::float8 / NULLIF(value_total, 0),
      CASE WHEN d IS NULL THEN 0
           WHEN nv <= d OR population <= nv THEN d
           ELSE least(greatest(round(nv * d / (nv - f1 + f1 * nv / population)), d),
                      round(population))
      END::bigint,
      CASE WHEN sensitive THEN NULL ELSE min_num END,
      CASE WHEN sensitive THEN NULL ELSE max_num END,
      CASE WHEN sensitive THEN NULL ELSE mean_num END,
      CASE WHEN sensitive THEN NULL ELSE stddev_num END,
      CASE WHEN sensitive THEN NULL ELSE pct[1] END,
      CASE WHEN sensitive THEN NULL ELSE pct[2] END,
      CASE WHEN sensitive THEN NULL ELSE pct[3] END,
      CASE WHEN sensitive THEN NULL ELSE pct[4] END,
      CASE WHEN sensitive THEN NULL ELSE pct[5] END,
      time_values,
      CASE WHEN sensitive THEN NULL ELSE min_time END,
      CASE WHEN sensitive THEN NULL ELSE max_time END,
      CASE WHEN sensitive THEN NULL ELSE tq[2] END,
      CASE WHEN sensitive THEN NULL ELSE tq[1] END,
      CASE WHEN sensitive THEN NULL ELSE tq[3] END,
      CASE WHEN sensitive THEN NULL ELSE mean_time END,
      min_length, max_length, avg_length,
      CASE WHEN sensitive THEN NULL ELSE true_count END,
      sensitive,
      CASE WHEN NOT sensitive AND (d < value_count OR value_count <= $11) THEN top END,
      CASE WHEN sensitive THEN NULL ELSE histogram END
    FROM profiled
    RETURNING column_path, json_type, data_type, null_ratio, distinct_estimate, rows_with_type,
      type_share
    )
    , counted AS (
      UPDATE {table_profiles} SET rows_profiled = (SELECT rows FROM n),
        columns_profiled = (SELECT count(DISTINCT column_path) FROM inserted)
      WHERE run_id = $2 AND relation_schema = $3 AND relation_name = $4
    )
    SELECT n.rows AS rows_profiled, i.* FROM n LEFT JOIN inserted i ON true
    ORDER BY i.column_path, i.json_type
"""


def _raw_base(rel: Relation, fraction: float) -> str:
    sample = "" if fraction >= 1 else f" AND random() < {float(fraction)!r}"
    return (
        f"SELECT row_number() OVER () AS rid, {quote_ident('document')} AS doc "
        f"FROM {rel.qualified} WHERE NOT {quote_ident('_cartridge_deleted')} "
        f"AND {quote_ident('document')} IS NOT NULL{sample}"
    )


def _model_base(rel: Relation, names: list[str], columns: dict[str, str], fraction: float) -> str:
    where = ["true"]
    if "_cartridge_deleted" in columns:
        where.append(f"NOT coalesce(t.{quote_ident('_cartridge_deleted')}, false)")
    if fraction < 1:
        where.append(f"random() < {float(fraction)!r}")
    picked = "".join(f", t.{quote_ident(n)}" for n in names)
    return (
        f"SELECT row_number() OVER () AS rid{picked} "
        f"FROM {rel.qualified} t WHERE {' AND '.join(where)}"
    )


def _lit(value: str) -> str:
    return quote_literal(value)


def columns_sql(leaves: str, *, column_profiles: str, table_profiles: str) -> str:
    """The one statement profiling every column of a ``leaves`` WITH clause (and counting the
    columns and rows profiled into the table's ``table_profiles`` row)."""
    return leaves + _STATS_SQL.replace(
        "{sensitive_v}", _sensitive_predicate("v.path", "$10")
    ).replace("{column_profiles}", column_profiles).replace("{table_profiles}", table_profiles)


async def _columns(
    conn: asyncpg.Connection,
    rel: Relation,
    run_id: str,
    *,
    leaves: str,
    rows_live: int,
    data_types: dict[str, str],
    top_values: int,
    histogram_buckets: int,
) -> tuple[int, list[asyncpg.Record]]:
    """Fill ``column_profiles`` for ``rel`` in one statement; returns the rows profiled and
    the columns written (path, type, null ratio, distinct estimate, rows and share of the type),
    by path and type."""
    sql = columns_sql(
        leaves, column_profiles=table("column_profiles"), table_profiles=table("table_profiles")
    )
    rows = await conn.fetch(
        sql,
        ISO_TIME_RE,
        run_id,
        rel.relation_schema,
        rel.relation_name,
        rel.schema_name,
        rel.layer,
        rel.collection,
        rows_live,
        _json(data_types),
        sorted(rel.sensitive_paths),
        top_values,
        histogram_buckets,
    )
    assert rows
    return int(rows[0]["rows_profiled"]), [r for r in rows if r["column_path"] is not None]


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


async def profile_relation(
    conn: asyncpg.Connection,
    rel: Relation,
    run_id: str,
    *,
    top_values: int = 10,
    histogram_buckets: int = 10,
    max_depth: int = 8,
    sample_rows: int = SAMPLE_ROWS,
) -> TableProfile | None:
    """Profile one table into the analytics tables; None when the table does not exist.

    Table-level numbers are exact (one pass over the table); column statistics come from one
    statement over a random sample of at most ``sample_rows`` live rows. Three statements in
    one transaction: the catalog (and clearing an earlier attempt of the run), the table's
    numbers and activity, the column statistics."""
    async with conn.transaction():
        # the planner's guesses for the walk are huge: JIT would compile for seconds
        await conn.execute("SET LOCAL timezone = 'UTC'; SET LOCAL jit = off")
        cat = await _catalog_and_clear(conn, rel, run_id)
        if cat is None:
            return None
        columns = cat.columns
        if rel.layer == "raw":
            missing = {"_id", "document", "_cartridge_deleted"} - set(columns)
            if missing:
                raise TerminalError(
                    f"{rel.display} does not follow the raw landing contract: missing columns "
                    f"{', '.join(sorted(missing))}"
                )
            row = await _table_stats_raw(conn, rel, run_id, cat)
        else:
            row = await _table_stats_model(conn, rel, run_id, columns)
        rows_live = int(row["rows_live"])
        fraction = 1.0 if rows_live <= sample_rows else sample_rows / rows_live
        if rel.layer == "raw":
            leaves = leaves_cte(_raw_base(rel, fraction), _walk_sql(max_depth), recursive=True)
            types: dict[str, str] = {}
        else:
            names = [c for c in columns if not c.startswith("_cartridge_")]
            leaves = leaves_cte(
                _model_base(rel, names, columns, fraction), _unpivot_sql(names), recursive=False
            )
            types = columns
        rows_profiled, cols = await _columns(
            conn,
            rel,
            run_id,
            leaves=leaves,
            rows_live=rows_live,
            data_types=types,
            top_values=top_values,
            histogram_buckets=histogram_buckets,
        )
    profile = TableProfile(
        relation=rel,
        rows_total=int(row["rows_total"]),
        rows_live=rows_live,
        rows_deleted=int(row["rows_deleted"]),
        last_synced_at=row["last_synced_at"],
        freshness_seconds=row["freshness_seconds"],
        lag_p50_seconds=row.get("lag_p50_seconds"),
        lag_p95_seconds=row.get("lag_p95_seconds"),
        lag_max_seconds=row.get("lag_max_seconds"),
        recent_lag_p95_seconds=row.get("recent_lag_p95_seconds"),
        rows_live_previous=row["rows_live_previous"],
        row_count_change=row["row_count_change"],
        rows_profiled=rows_profiled,
        columns=[
            ColumnProfile(
                path=str(c["column_path"]),
                json_type=str(c["json_type"]),
                data_type=c["data_type"],
                null_ratio=float(c["null_ratio"]),
                distinct_estimate=c["distinct_estimate"],
                rows_with_type=int(c["rows_with_type"]),
                type_share=c["type_share"],
            )
            for c in cols
        ],
    )
    log.info(
        "analytics.profiled",
        schema=rel.schema_name,
        table=rel.display,
        layer=rel.layer,
        rows_live=profile.rows_live,
        columns=len(profile.columns),
    )
    return profile
