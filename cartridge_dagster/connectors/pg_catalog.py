"""What a PostgreSQL source schema holds, read from its catalogs: tables, columns, keys, the
kind of each column's values (:mod:`cartridge_dagster.pg_documents`), publications and slots.

Plain asyncpg queries, every name a parameter; used by warp's PostgreSQL source."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.pg_documents import Column, kind_of_type

__all__ = ["SlotState", "TableColumn", "TableInfo", "TypeResolver", "read_tables", "slot_state"]

#: ``pg_attribute.attcollation`` of the database default (no COLLATE clause needed).
DEFAULT_COLLATION = 100


@dataclass(frozen=True)
class TableColumn:
    name: str
    type_oid: int
    kind: str
    delim: str
    #: ``"schema"."type"`` for casting a key's text back (arrays: the element's, plus ``[]``).
    cast: str
    #: ``COLLATE "ns"."name"`` when not the default (key comparisons in snapshots).
    collate: str
    generated: bool
    has_default: bool

    @property
    def landed(self) -> Column:
        return Column(self.name, self.kind, self.delim)


@dataclass
class TableInfo:
    oid: int
    name: str
    relkind: str
    replica_identity: str
    columns: list[TableColumn]
    #: The columns ``_id`` is made of: the primary key, else the replica identity index.
    key: list[str]
    key_source: str  # "primary key", "replica identity index", or "" (none)
    columns_by_name: dict[str, TableColumn] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.columns_by_name = {c.name: c for c in self.columns}

    @property
    def landed(self) -> list[TableColumn]:
        """The columns that land (generated columns are not published by pgoutput)."""
        return [c for c in self.columns if not c.generated]

    def key_columns(self) -> list[TableColumn]:
        return [self.columns_by_name[k] for k in self.key]


@dataclass(frozen=True)
class _Type:
    oid: int
    kind: str
    delim: str
    cast: str


class TypeResolver:
    """Type OID → (kind, delimiter, cast), domains resolved, cached per connection."""

    def __init__(self) -> None:
        self.cache: dict[int, _Type] = {}

    async def resolve(self, conn: asyncpg.Connection, oids: Iterable[int]) -> dict[int, _Type]:
        wanted = sorted({o for o in oids if o not in self.cache})
        if wanted:
            rows = await conn.fetch(
                """
                SELECT t.oid, t.typtype::text AS typtype, t.typdelim::text AS typdelim,
                       t.typbasetype, t.typelem,
                       t.typname, n.nspname,
                       t.typsubscript = 'pg_catalog.array_subscript_handler'::regproc AS is_array,
                       t.typrelid <> 0 AND t.typtype = 'c' AS is_composite,
                       EXISTS (SELECT 1 FROM pg_catalog.pg_cast c WHERE c.castsource = t.oid
                               AND c.casttarget = 'pg_catalog.json'::regtype
                               AND c.castmethod = 'f') AS json_cast
                FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
                WHERE t.oid = ANY($1::oid[])
                """,
                wanted,
            )
            by_oid = {int(r["oid"]): r for r in rows}
            deps = {int(r["typbasetype"]) for r in rows if r["typtype"] == "d"} | {
                int(r["typelem"]) for r in rows if r["is_array"]
            }
            if deps - set(self.cache) - set(by_oid):
                await self.resolve(conn, deps)
            for oid in wanted:
                r = by_oid.get(oid)
                if r is None:  # a dropped type: its values still have a text form
                    self.cache[oid] = _Type(oid, "string", ",", "pg_catalog.text")
                    continue
                await self._settle(conn, r, by_oid)
        return {o: self.cache[o] for o in oids}

    async def _settle(self, conn: asyncpg.Connection, r: Any, rows: dict[int, Any]) -> _Type:
        oid = int(r["oid"])
        if oid in self.cache:
            return self.cache[oid]
        cast = qualified(r["nspname"], r["typname"])
        if r["typtype"] == "d":
            base = int(r["typbasetype"])
            found = self.cache.get(base) or (await self.resolve(conn, [base]))[base]
            out = _Type(oid, found.kind, found.delim, cast)
        elif r["is_array"]:
            elem = int(r["typelem"])
            found = self.cache.get(elem) or (await self.resolve(conn, [elem]))[elem]
            kind = "text" if found.kind == "text" else f"{found.kind}[]"
            elem_row = rows.get(elem)
            delim = str(elem_row["typdelim"]) if elem_row is not None else found.delim
            out = _Type(oid, kind, delim, cast)
        else:
            kind = kind_of_type(
                oid,
                typtype=str(r["typtype"]),
                is_composite=bool(r["is_composite"]),
                json_cast=bool(r["json_cast"]),
            )
            out = _Type(oid, kind, str(r["typdelim"]), cast)
        self.cache[oid] = out
        return out


async def read_tables(
    conn: asyncpg.Connection,
    namespace: str,
    resolver: TypeResolver,
    *,
    names: Sequence[str] | None = None,
) -> dict[str, TableInfo]:
    """Ordinary and partitioned tables of ``namespace`` (partitions themselves excluded: a
    partitioned table's rows are read and published through its root)."""
    tables = await conn.fetch(
        """
        SELECT c.oid, c.relname, c.relkind::text AS relkind,
               c.relreplident::text AS relreplident,
               (SELECT array_agg(a.attname ORDER BY k.ord)
                  FROM pg_catalog.pg_index i
                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                 WHERE i.indrelid = c.oid AND i.indisprimary) AS pkey,
               (SELECT array_agg(a.attname ORDER BY k.ord)
                  FROM pg_catalog.pg_index i
                  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                 WHERE i.indrelid = c.oid AND i.indisreplident) AS identkey
        FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND ($2::text[] IS NULL OR c.relname = ANY($2::text[]))
        ORDER BY c.relname
        """,
        namespace,
        list(names) if names is not None else None,
    )
    if not tables:
        return {}
    cols = await conn.fetch(
        """
        SELECT a.attrelid, a.attname, a.atttypid, a.attgenerated <> '' AS generated,
               a.atthasdef OR a.atthasmissing AS has_default,
               CASE WHEN a.attcollation IN (0, $2) THEN NULL ELSE cn.nspname END AS coll_ns,
               CASE WHEN a.attcollation IN (0, $2) THEN NULL ELSE co.collname END AS coll_name
        FROM pg_catalog.pg_attribute a
        LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
        LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
        WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attrelid, a.attnum
        """,
        [int(t["oid"]) for t in tables],
        DEFAULT_COLLATION,
    )
    types = await resolver.resolve(conn, {int(c["atttypid"]) for c in cols})
    by_rel: dict[int, list[TableColumn]] = {}
    for c in cols:
        t = types[int(c["atttypid"])]
        collate = f" COLLATE {qualified(c['coll_ns'], c['coll_name'])}" if c["coll_name"] else ""
        by_rel.setdefault(int(c["attrelid"]), []).append(
            TableColumn(
                name=str(c["attname"]),
                type_oid=int(c["atttypid"]),
                kind=t.kind,
                delim=t.delim,
                cast=t.cast,
                collate=collate,
                generated=bool(c["generated"]),
                has_default=bool(c["has_default"]),
            )
        )
    out: dict[str, TableInfo] = {}
    for t in tables:
        pkey = list(t["pkey"] or [])
        ident = list(t["identkey"] or [])
        key, source = (
            (pkey, "primary key")
            if pkey
            else ((ident, "replica identity index") if ident else ([], ""))
        )
        out[str(t["relname"])] = TableInfo(
            oid=int(t["oid"]),
            name=str(t["relname"]),
            relkind=str(t["relkind"]),
            replica_identity=str(t["relreplident"]),
            columns=by_rel.get(int(t["oid"]), []),
            key=key,
            key_source=source,
        )
    return out


@dataclass(frozen=True)
class SlotState:
    """A replication slot as the server reports it (``pg_replication_slots``)."""

    name: str
    exists: bool
    active: bool = False
    active_pid: int | None = None
    wal_status: str | None = None  # reserved, extended, unreserved, lost
    confirmed_flush_lsn: int | None = None
    lag_bytes: int | None = None  # current WAL position − confirmed position
    retained_bytes: int | None = None  # current WAL position − restart position (WAL kept)
    database: str | None = None
    plugin: str | None = None

    @property
    def lost(self) -> bool:
        return self.exists and self.wal_status == "lost"


async def slot_state(conn: asyncpg.Connection, name: str) -> SlotState:
    row = await conn.fetchrow(
        """
        SELECT active, active_pid, wal_status, database, plugin,
               (confirmed_flush_lsn - '0/0'::pg_lsn)::numeric AS confirmed,
               (pg_catalog.pg_current_wal_lsn() - confirmed_flush_lsn)::numeric AS lag,
               (pg_catalog.pg_current_wal_lsn() - restart_lsn)::numeric AS retained
        FROM pg_catalog.pg_replication_slots WHERE slot_name = $1
        """,
        name,
    )
    if row is None:
        return SlotState(name, exists=False)

    def num(v: Any) -> int | None:
        return int(v) if v is not None else None

    return SlotState(
        name,
        exists=True,
        active=bool(row["active"]),
        active_pid=num(row["active_pid"]),
        wal_status=row["wal_status"],
        confirmed_flush_lsn=num(row["confirmed"]),
        lag_bytes=num(row["lag"]),
        retained_bytes=num(row["retained"]),
        database=row["database"],
        plugin=row["plugin"],
    )


async def publication_tables(
    conn: asyncpg.Connection, publication: str
) -> set[tuple[str, str]] | None:
    """(schema, table) pairs a publication covers, or None when it does not exist."""
    exists = await conn.fetchval(
        "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1", publication
    )
    if exists is None:
        return None
    rows = await conn.fetch(
        "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = $1",
        publication,
    )
    return {(str(r["schemaname"]), str(r["tablename"])) for r in rows}


def table_list(namespace: str, tables: Iterable[str]) -> str:
    return ", ".join(qualified(namespace, t) for t in sorted(tables))


def ident(name: str) -> str:
    return quote_ident(name)
