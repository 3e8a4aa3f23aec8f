"""Reconciliation against a PostgreSQL source: the same comparison as for MongoDB
(:mod:`cartridge_dagster.analytics.reconcile`: live counts, then sampled canonical hashes of
the rows as they would land against the ``jsonb`` landed), reading the source table with SQL.

The source rows are converted as warp converts them (the server builds the landed JSON,
:func:`~cartridge_dagster.pg_documents.snapshot_expressions`; rows a value policy must see go
through :class:`~cartridge_dagster.pg_documents.RowConverter`); ``_id``s are matched back to
rows through the key's columns (keys of bytea, json or array columns are compared on the sample
only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson

from cartridge_dagster.analytics.reconcile import (
    _IN_BATCH,
    Reconciliation,
    _Sides,
    reconcile_collection,
)
from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.connectors.pg_catalog import TableInfo, TypeResolver, read_tables
from cartridge_dagster.documents import (
    ConversionStats,
    UnlandableDocument,
    ValuePolicy,
    canonical_hash,
)
from cartridge_dagster.errors import TerminalError
from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.landing import raw_table_name
from cartridge_dagster.pg_documents import (
    RowConverter,
    key_id,
    output_text,
    snapshot_expressions,
)

__all__ = ["reconcile_pg_table"]

#: Key kinds whose ``_id`` text casts back to the key's type.
_CASTABLE = frozenset(
    {"int", "float", "string", "text", "date", "timestamptz", "timestamp", "bool"}
)


class _PgSides(_Sides):
    """Reads a PostgreSQL source table (and, through :class:`_Sides`, its raw table)."""

    def __init__(
        self,
        source: asyncpg.Connection,
        conn: asyncpg.Connection,
        schema: SchemaConfig,
        info: TableInfo,
    ) -> None:
        self.conn = conn
        self.source = source
        self.info = info
        self.table = qualified(schema.raw_schema, raw_table_name(info.name))
        self.source_table = qualified(schema.source_database, info.name)
        self.excluded = schema.table(info.name).exclude_fields
        self.policy = ValuePolicy(
            nul_in_strings=schema.dead_letter.nul_in_strings,
            non_finite_numbers=schema.dead_letter.non_finite_numbers,
        )
        self.unlandable = 0
        excluded = [p.split(".") for p in self.excluded]
        landed = [c.landed for c in info.landed]
        self.converter = RowConverter(landed, self.policy, excluded)
        self.keys = info.key_columns()
        self.kinds = [k.kind for k in self.keys]
        expr = snapshot_expressions("t", landed, excluded)
        texts = "ARRAY[" + ", ".join(output_text(f"t.{quote_ident(c.name)}") for c in landed) + "]"
        slow = f"COALESCE({expr.slow}, false)" if expr.slow else "false"
        keys = ", ".join(output_text(f"t.{quote_ident(k.name)}") for k in self.keys)
        self.select = (
            f"SELECT {keys}, CASE WHEN {slow} THEN NULL ELSE {expr.document} END AS doc, "
            f"CASE WHEN {slow} THEN {texts} END AS texts FROM {self.source_table} AS t "
            f"{expr.lateral}"
        )

    async def source_count(self) -> int:
        return int(await self.source.fetchval(f"SELECT count(*) FROM {self.source_table}"))

    def _row(self, row: asyncpg.Record) -> tuple[str, str | None]:
        n = len(self.keys)
        doc_id = key_id(self.kinds, list(row[:n]))
        doc = row[n]
        if doc is None:
            try:
                doc = self.converter.document(row[n + 1], ConversionStats())
            except UnlandableDocument:
                self.unlandable += 1  # dead-lettered by design: not expected in the target
                return doc_id, None
        return doc_id, canonical_hash(doc)

    async def source_sample(self, size: int) -> dict[str, str | None]:
        rows = await self.source.fetch(f"{self.select} ORDER BY random() LIMIT $1", size)
        return dict(self._row(r) for r in rows)

    async def source_by_ids(self, ids: Sequence[str]) -> dict[str, str | None]:
        if not ids or not all(k in _CASTABLE for k in self.kinds):
            return {}
        found: dict[str, str | None] = {}
        for start in range(0, len(ids), _IN_BATCH):  # bounded statements, as on MongoDB
            found.update(await self._by_ids(ids[start : start + _IN_BATCH]))
        return found

    async def _by_ids(self, ids: Sequence[str]) -> dict[str, str | None]:
        columns: list[list[str | None]] = [[] for _ in self.keys]
        for doc_id in ids:
            parts = _key_texts(doc_id, len(self.keys))
            if parts is None:
                continue
            for i, part in enumerate(parts):
                columns[i].append(part)
        names = ", ".join(f"t.{quote_ident(k.name)}" for k in self.keys)
        casts = ", ".join(f"u.u{i}::{k.cast}{k.collate}" for i, k in enumerate(self.keys))
        unnest = ", ".join(f"${i + 1}::text[]" for i in range(len(self.keys)))
        aliases = ", ".join(f"u{i}" for i in range(len(self.keys)))
        rows = await self.source.fetch(
            f"{self.select} WHERE ({names}) IN (SELECT {casts} FROM unnest({unnest}) AS "
            f"u({aliases}))",
            *columns,
        )
        wanted = set(ids)
        return {k: v for k, v in (self._row(r) for r in rows) if k in wanted}


def _key_texts(doc_id: str, n: int) -> list[str | None] | None:
    """The key columns' texts of an ``_id`` (for the kinds that cast back from text)."""
    if n == 1:
        return [doc_id]
    try:
        parts = orjson.loads(doc_id)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(parts, list) or len(parts) != n:
        return None
    out: list[str | None] = []
    for part in parts:
        if isinstance(part, bool):
            out.append("true" if part else "false")
        elif part is None or isinstance(part, str):
            out.append(part)
        elif isinstance(part, int | float):
            out.append(repr(part) if isinstance(part, float) else str(part))
        else:
            return None
    return out


async def reconcile_pg_table(
    source: asyncpg.Connection,
    conn: asyncpg.Connection,
    schema: SchemaConfig,
    table: str,
    **kwargs: Any,
) -> Reconciliation:
    """Compare one PostgreSQL source table with its raw table.

    ``source`` must run with :data:`~cartridge_dagster.pg_documents.SESSION_SETTINGS` (values
    written as warp writes them); keyword arguments as
    :func:`~cartridge_dagster.analytics.reconcile.reconcile_collection`."""
    found = await read_tables(source, schema.source_database, TypeResolver(), names=[table])
    info = found.get(table)
    if info is None or not info.key:
        raise TerminalError(
            f"schema {schema.name!r}: no table {table!r} with a key in "
            f"{schema.source_database!r} to reconcile"
        )
    sides = _PgSides(source, conn, schema, info)
    return await reconcile_collection(None, conn, schema, table, sides=sides, **kwargs)
