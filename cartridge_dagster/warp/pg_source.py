"""The PostgreSQL side of warp: a publication, a replication slot, a consistent snapshot, then
the slot's changes (``pgoutput``) — the PostgreSQL :class:`~cartridge_dagster.warp.sources.Source`.

Per Cartridge schema S reading PostgreSQL schema N (``source_database``), warp owns:

- publication ``cartridge_<S>`` (``warp.publication_name``): ``FOR TABLE`` the tables of N in
  scope, publishing inserts, updates, deletes and truncates through partition roots; tables
  that appear later (in scope) are added by warp and copied;
- logical replication slot ``cartridge_<S>`` (``warp.slot_name``), plugin ``pgoutput``.

``cartridge warp drop-slot --schema S`` removes both.

Order of work:

1. **Position.** The slot is created with an exported snapshot; its consistent point is the
   position (an LSN) the checkpoint records, and snapshot rows get version ``LSN · 2^32``.
2. **Snapshot.** Each table is read in primary-key order, ``snapshot_chunk_size`` rows per
   query, in a transaction that imports the exported snapshot while the slot's connection
   stays open: a copy consistent with the slot's start. The source server builds each row's
   JSON (:func:`~cartridge_dagster.pg_documents.snapshot_expressions`). Each batch records the
   last key copied, so a crash continues the table after it; a continued copy reads the rows as
   they are then, and the stream, which starts at the slot's consistent point, replays every
   change since (versions decide: the copy converges to the source). With
   ``warp.snapshot_writers`` > 1 a table with a one-column key is instead split into a plan of
   key ranges (handed over first, committed before any range), each range read whole and
   handed over as one batch for the runner's range writers, then a batch ending the copy; a
   continued copy reads the ranges the warehouse has not marked landed.
3. **Stream.** ``START_REPLICATION`` from the checkpoint's LSN. A change's version is
   ``commit LSN · 2^32 + its number in the transaction`` (1, 2, …; up to 2^32 − 1 changes per
   transaction), so replays give the same versions and order follows commits. A batch closes
   at ``max_batch_size`` changes or ``max_batch_seconds``, preferably at a commit; its position
   is the end LSN of the last transaction it holds whole (a transaction larger than a batch
   spans several batches, the last one carries its position: a crash replays it whole).
4. **Confirm.** The runner calls :meth:`PgSource.acknowledge` after each batch committed in
   the warehouse: only then is the position confirmed to the slot (``flush_lsn``), so the
   server never lets go of a change warp has not landed. While idle, warp asks the server for
   a keepalive every ``idle_checkpoint_seconds`` and checkpoints its WAL position, so an idle
   slot keeps advancing (and retains little WAL).

Updates whose unchanged TOASTed values the server does not send (replica identity DEFAULT) get
them from the old row under REPLICA IDENTITY FULL, else by reading the row's current values
from the source (one query per table and batch): a later change of those columns carries them
again, so the landed row converges. A column added with a default (rows changed without WAL)
makes warp copy the table again; a dropped table follows ``warp.drop_policy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import bson
import orjson
import psycopg2

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.connectors.pg_catalog import (
    SlotState,
    TableInfo,
    TypeResolver,
    publication_tables,
    read_tables,
    slot_state,
    table_list,
)
from cartridge_dagster.connectors.pg_replication import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    ReplicationStream,
    Truncate,
    TypeMessage,
    Update,
    decode_message,
    format_lsn,
    parse_lsn,
)
from cartridge_dagster.documents import ConversionStats, UnlandableDocument
from cartridge_dagster.errors import (
    ConnectionFailed,
    ResumeTokenLost,
    TerminalError,
    TransientError,
    redact_url,
)
from cartridge_dagster.identifiers import qualified, quote_ident, quote_literal
from cartridge_dagster.observability import get_logger
from cartridge_dagster.pg_documents import (
    SESSION_SETTINGS,
    Column,
    RowConverter,
    key_id,
    output_text,
    raw_event,
    snapshot_expressions,
)
from cartridge_dagster.warp import metrics
from cartridge_dagster.warp.changes import Change, DeadLetter, Transformer
from cartridge_dagster.warp.sink import Batch, CopyRows, KeyRange, RangeMark, RangePlan, Wipe
from cartridge_dagster.warp.sources import Position

__all__ = [
    "ORDINAL_BITS",
    "PgSource",
    "SlotCheck",
    "SlotInUse",
    "check_slot",
    "drop_slot",
    "open_pg_source",
    "pg_version",
    "publication_name",
    "slot_name",
    "source_slot_state",
]

log = get_logger("cartridge.warp.pg_source")

#: Bits of a version below the commit LSN: the change's number within its transaction.
ORDINAL_BITS = 32
_ORDINAL_MAX = (1 << ORDINAL_BITS) - 1
#: Messages read between two explicit yields to the event loop (the writer shares it).
YIELD_EVERY = 200
#: How often the slot's state (lag, WAL kept, health) is read while streaming.
SLOT_POLL_SECONDS = 5.0


def pg_version(lsn: int, ordinal: int) -> int:
    """``_cartridge_version`` of the ``ordinal``-th change of the transaction committed at
    ``lsn`` (ordinal 0: a snapshot at that position)."""
    if not 0 <= ordinal <= _ORDINAL_MAX:
        raise TerminalError(
            f"a source transaction has more than {_ORDINAL_MAX} changes: warp cannot version "
            "its changes apart",
            hint="split the transaction in the source application",
        )
    return (lsn << ORDINAL_BITS) | ordinal


def slot_name(schema: SchemaConfig) -> str:
    return schema.warp.slot_name or f"cartridge_{schema.name}"


def publication_name(schema: SchemaConfig) -> str:
    return schema.warp.publication_name or f"cartridge_{schema.name}"


class SlotInUse(TransientError):
    """Another connection streams from warp's slot (a second warp process, fenced soon)."""


# --------------------------------------------------------------------------- connections


_REFUSED = (
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InsufficientPrivilegeError,
)


def _refused(url: str, exc: BaseException) -> Exception:
    if isinstance(exc, _REFUSED):
        return TerminalError(
            f"the PostgreSQL source {redact_url(url)} refused the connection: "
            f"{redact_url(str(exc))}",
            hint="check the user, password and database name in source.connection_string",
        )
    return ConnectionFailed(
        f"cannot connect to the PostgreSQL source {redact_url(url)}: "
        f"{redact_url(str(exc)) or type(exc).__name__}",
        hint="check source.connection_string and that the server is up",
    )


async def _codecs(conn: asyncpg.Connection) -> None:
    # JSON text straight into bytes (what the sink sends on): no decoding, no copy per value
    await conn.set_type_codec(
        "json",
        encoder=lambda v: v if isinstance(v, bytes) else str(v).encode(),
        decoder=bytes,
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + (v if isinstance(v, bytes) else str(v).encode()),
        decoder=lambda data: bytes(data[1:]),
        schema="pg_catalog",
        format="binary",
    )


async def _pool(url: str, size: int, timeout: float) -> asyncpg.Pool:
    """Connections for snapshot chunks (tables are copied side by side)."""
    try:
        pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=size,
            timeout=timeout,
            command_timeout=300,
            server_settings=dict(SESSION_SETTINGS),
            init=_codecs,
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _refused(url, exc) from None
    assert pool is not None
    return pool


async def _connect(url: str, timeout: float) -> asyncpg.Connection:
    try:
        conn = await asyncpg.connect(
            url, timeout=timeout, server_settings=dict(SESSION_SETTINGS), command_timeout=300
        )
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _refused(url, exc) from None
    await _codecs(conn)
    return conn


async def open_pg_source(
    url: str, schema: SchemaConfig, *, timeout_seconds: float = 10.0, read_only: bool = False
) -> PgSource:
    conn = await _connect(url, timeout_seconds)
    return PgSource(url, schema, Transformer(schema), conn, read_only=read_only)


# --------------------------------------------------------------------------- per table


@dataclass
class _Table:
    """What the stream knows of one relation: its columns as the last Relation message said,
    the key's positions, and the conversion."""

    oid: int
    name: str
    in_scope: bool
    columns: list[Column]
    key_idx: list[int]
    key_kinds: list[str]
    converter: RowConverter
    #: the column names a full image needs (for filling unchanged TOASTed values)
    names: list[str]


@dataclass
class _Pending:
    """An update waiting for unchanged TOASTed values read from the source."""

    table: _Table
    key_texts: list[str | None]
    texts: list[Any]
    doc_id: str
    version: int
    source_ts: dt.datetime


@dataclass
class _Txn:
    commit_lsn: int
    source_ts: dt.datetime
    ordinal: int = 0


@dataclass
class PgSource:
    """Reads one schema's tables and its replication slot and produces :class:`Batch`es."""

    label = "PostgreSQL"

    url: str
    schema: SchemaConfig
    transformer: Transformer
    conn: asyncpg.Connection
    read_only: bool = False
    known: set[str] = field(default_factory=set)
    reads: int = 0
    idle_since: float | None = None
    repl: ReplicationStream | None = None
    #: Slot lag as last read: ``{"bytes": …, "seconds": …, "retained_bytes": …}``.
    slot_lag: dict[str, float] = field(default_factory=dict)
    resolver: TypeResolver = field(default_factory=TypeResolver)
    tables: dict[str, TableInfo] = field(default_factory=dict)
    _snapshot_name: str | None = None
    _relations: dict[int, _Table] = field(default_factory=dict)
    #: Live copies in progress (state after the last batch handed over).
    _copies: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Tables to copy again at the next commit (rows changed without WAL), with why.
    _recopy: dict[str, str] = field(default_factory=dict)
    #: Per table, the columns with a default warp has landed for every row (kept in the
    #: checkpoint's position: a column added with a default later, even while warp was down,
    #: is found and copied), and the lists a copy in progress will make true.
    _defaults: dict[str, list[str]] = field(default_factory=dict)
    _pending_defaults: dict[str, list[str]] = field(default_factory=dict)
    _unacked: deque[tuple[int, dt.datetime]] = field(default_factory=deque)
    #: updates whose TOASTed values were read from the source, and those whose row was gone
    toast_lookups: int = 0
    toast_gone: int = 0
    #: snapshot chunks read in the slot's exported snapshot (consistent with its start)
    snapshot_imports: int = 0
    events_read: int = 0
    _pool: asyncpg.Pool | None = None
    #: one catalog query at a time on ``conn`` (copies of several tables run side by side)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def namespace(self) -> str:
        return self.schema.source_database

    @property
    def slot(self) -> str:
        return slot_name(self.schema)

    @property
    def publication(self) -> str:
        return publication_name(self.schema)

    async def _db(self) -> asyncpg.Connection:
        if self.conn.is_closed():
            self.conn = await _connect(self.url, 10.0)
        return self.conn

    # ------------------------------------------------------------------ checks

    async def check(self) -> None:
        """Refuse what cannot work, each with one line: a missing schema, ``wal_level`` not
        ``logical``, a user without the REPLICATION attribute, a non-UTF-8 database."""
        conn = await self._db()
        row = await conn.fetchrow(
            "SELECT current_setting('wal_level') AS wal_level, "
            "current_setting('server_encoding') AS encoding, "
            "(SELECT rolreplication OR rolsuper FROM pg_catalog.pg_roles "
            " WHERE rolname = current_user) AS can_replicate, "
            "EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1) AS has_schema",
            self.namespace,
        )
        assert row is not None
        if not row["has_schema"]:
            names = await conn.fetch(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname <> 'information_schema' ORDER BY 1"
            )
            shown = ", ".join(str(r["nspname"]) for r in names) or "none"
            raise TerminalError(
                f"schema {self.schema.name!r}: the PostgreSQL source has no schema "
                f"{self.namespace!r} (it has: {shown})",
                hint="set schemas[].source_database to the PostgreSQL schema to read",
            )
        if row["wal_level"] != "logical":
            raise TerminalError(
                f"schema {self.schema.name!r}: the PostgreSQL source has wal_level = "
                f"{row['wal_level']}; logical replication needs wal_level = logical",
                hint="set wal_level = logical in postgresql.conf and restart the server",
            )
        if not row["can_replicate"]:
            raise TerminalError(
                f"schema {self.schema.name!r}: the source user may not use replication",
                hint="ALTER ROLE <user> REPLICATION (and allow `replication` connections for "
                "it in pg_hba.conf)",
            )
        if row["encoding"] != "UTF8":
            raise TerminalError(
                f"schema {self.schema.name!r}: the source database's encoding is "
                f"{row['encoding']}; warp reads UTF8 databases only",
            )

    def _keyless(self, tables: Mapping[str, TableInfo]) -> None:
        bad = sorted(t for t, info in tables.items() if not info.key)
        nothing = sorted(t for t, info in tables.items() if info.replica_identity == "n")
        if bad or nothing:
            parts = []
            if bad:
                parts.append(
                    f"{', '.join(repr(t) for t in bad)} in {self.namespace!r} have no primary key "
                    "(nor a replica identity index)"
                )
            if nothing:
                parts.append(f"{', '.join(repr(t) for t in nothing)} have REPLICA IDENTITY NOTHING")
            raise TerminalError(
                f"schema {self.schema.name!r}: table(s) " + "; ".join(parts) + ": warp cannot "
                "key their rows, and publishing them would make their updates and deletes fail",
                hint="add a primary key (or ALTER TABLE … REPLICA IDENTITY USING INDEX of a "
                "unique index), or leave the table out with schemas[].exclude",
            )

    async def _scope(self) -> dict[str, TableInfo]:
        async with self._lock:
            conn = await self._db()
            found = await read_tables(conn, self.namespace, self.resolver)
        self.tables = {n: t for n, t in found.items() if self.schema.selects(n)}
        return self.tables

    async def _ensure_publication(self) -> list[str]:
        """Create the publication, or bring it to the tables in scope. Returns the tables
        added to an existing publication (they need a copy)."""
        tables = await self._scope()
        self._keyless(tables)
        conn = await self._db()
        pub = quote_ident(self.publication)
        current = await publication_tables(conn, self.publication)
        options = (
            "WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)"
        )
        try:
            if current is None:
                what = f"FOR TABLE {table_list(self.namespace, tables)} " if tables else ""
                await conn.execute(f"CREATE PUBLICATION {pub} {what}{options}")
                log.info("warp.pg.publication.created", publication=self.publication)
                return []
            mine = {t for ns, t in current if ns == self.namespace}
            missing = sorted(set(tables) - mine)
            extra = sorted((ns, t) for ns, t in current if ns != self.namespace or t not in tables)
            if missing:
                await conn.execute(
                    f"ALTER PUBLICATION {pub} ADD TABLE {table_list(self.namespace, missing)}"
                )
                log.info("warp.pg.publication.added", tables=missing)
            if extra:
                names = ", ".join(qualified(ns, t) for ns, t in extra)
                await conn.execute(f"ALTER PUBLICATION {pub} DROP TABLE {names}")
            return missing
        except asyncpg.InsufficientPrivilegeError as exc:
            raise TerminalError(
                f"schema {self.schema.name!r}: cannot create or change publication "
                f"{self.publication!r}: {exc}",
                hint="the source user needs CREATE on the database and ownership of the "
                "tables (or create the publication yourself with the same name)",
            ) from None

    # ------------------------------------------------------------------ Source protocol

    async def position(self) -> Position:
        """Create the slot (exporting its snapshot) and return its consistent point. An old
        inactive slot of the same name is dropped first: ``position`` runs only for a first
        start or a re-snapshot, when nothing depends on it."""
        conn = await self._db()
        if self.read_only:
            self._keyless(await self._scope())
            lsn = int(await conn.fetchval("SELECT (pg_current_wal_lsn() - '0/0')::numeric"))
            return Position({"lsn": format_lsn(lsn)}, lsn << (ORDINAL_BITS - 16))
        await self._ensure_publication()
        state = await slot_state(conn, self.slot)
        if state.exists:
            if state.active:
                raise SlotInUse(
                    f"replication slot {self.slot!r} is in use (process {state.active_pid})",
                    hint="another warp process for this schema is stopping, or another "
                    "installation uses the same slot name (warp.slot_name)",
                )
            log.warning("warp.pg.slot.replaced", slot=self.slot, wal_status=state.wal_status)
            await conn.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", self.slot)
        await self._close_repl()
        repl = ReplicationStream(self.url, timeout=10.0)
        await repl.connect()
        try:
            lsn, snapshot = await repl.create_slot(self.slot)
        except psycopg2.Error:
            await repl.close()
            raise
        self.repl = repl
        self._snapshot_name = snapshot
        log.info("warp.pg.slot.created", slot=self.slot, lsn=format_lsn(lsn))
        # the slot's lag is reported from the snapshot's first batch on, not from streaming
        await self._poll_slot()
        self._defaults = {name: _with_default(info) for name, info in self.tables.items()}
        return Position(self._token(lsn), lsn << (ORDINAL_BITS - 16))

    def _token(self, lsn: int) -> dict[str, Any]:
        """A position for the checkpoint: the LSN, and the columns with defaults landed."""
        return {"lsn": format_lsn(lsn), "defaults": dict(sorted(self._defaults.items()))}

    async def slot_state(self) -> SlotState:
        return await slot_state(await self._db(), self.slot)

    async def collections(self) -> list[str]:
        return sorted(await self._scope())

    def seed_version(self, version: int) -> None:
        """Versions come from LSNs: nothing to continue."""

    def take_stats(self, collection: str | None = None) -> dict[str, ConversionStats]:
        return self.transformer.take_stats(collection)

    async def estimate(self, collection: str) -> int | None:
        """The planner's row count of the table (``pg_class.reltuples``, summed over the
        partitions of a partitioned table; None before the first ANALYZE or autovacuum)."""
        async with self._lock:
            conn = await self._db()
            n = await conn.fetchval(
                "SELECT CASE WHEN c.relkind = 'p' THEN (SELECT sum(p.reltuples) FILTER "
                "(WHERE p.reltuples >= 0) FROM pg_catalog.pg_partition_tree(c.oid) AS t "
                "JOIN pg_catalog.pg_class p ON p.oid = t.relid WHERE t.isleaf) "
                "ELSE c.reltuples END "
                "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                self.namespace,
                collection,
            )
        return int(n) if n is not None and n >= 0 else None

    async def acknowledge(self, token: Mapping[str, Any]) -> None:
        """Everything up to ``token`` is committed in the warehouse: confirm it to the slot."""
        lsn = parse_lsn(str(token["lsn"]))
        while self._unacked and self._unacked[0][0] <= lsn:
            self._unacked.popleft()
        if self.repl is not None and self.repl.streaming:
            try:
                self.repl.feedback(flush_lsn=lsn)
            except psycopg2.Error as exc:  # the stream's next read reports the connection
                log.warning("warp.pg.feedback.failed", error=str(exc)[:200])

    async def close(self) -> None:
        await self._close_repl()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pool.terminate()
        if not self.conn.is_closed():
            try:
                await self.conn.close(timeout=5)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self.conn.terminate()

    async def _close_repl(self) -> None:
        repl, self.repl = self.repl, None
        self._snapshot_name = None
        if repl is not None:
            await repl.close()

    # ------------------------------------------------------------------ snapshot

    async def _info(self, name: str) -> TableInfo | None:
        """The table's catalog entry; None when it is gone (dropped, renamed, out of scope)."""
        info = self.tables.get(name)
        if info is None:
            await self._scope()
            info = self.tables.get(name)
        return info

    def _excluded(self, name: str) -> list[list[str]]:
        return [p.split(".") for p in self.schema.table(name).exclude_fields]

    def _snapshot_query(self, info: TableInfo, first: bool) -> tuple[str, int]:
        """One chunk of ``info`` in key order: the key's texts, the document (JSON built by
        the server), and the column texts of the rows the Python conversion must take."""
        keys = info.key_columns()
        landed = [c.landed for c in info.landed]
        expr = snapshot_expressions("t", landed, self._excluded(info.name))
        sel = ", ".join(output_text(f"t.{quote_ident(k.name)}") for k in keys)
        cols = ", ".join(f"t.{quote_ident(k.name)}" for k in keys)
        params = ", ".join(f"${i + 1}::text::{k.cast}{k.collate}" for i, k in enumerate(keys))
        where = "" if first else f"WHERE ({cols}) > ({params}) "
        limit = f"${1 if first else len(keys) + 1}"
        table = qualified(self.namespace, info.name)
        if expr.slow is None:
            return (
                f"SELECT {sel}, {expr.document} AS doc, NULL::text[] AS texts "
                f"FROM {table} AS t {expr.lateral} {where}ORDER BY {cols} LIMIT {limit}",
                len(keys),
            )
        texts = "ARRAY[" + ", ".join(output_text(f"t.{quote_ident(c.name)}") for c in landed) + "]"
        return (
            f"SELECT {sel}, CASE WHEN s.slow THEN NULL ELSE {expr.document} END AS doc, "
            f"CASE WHEN s.slow THEN {texts} END AS texts FROM {table} AS t {expr.lateral} "
            f"CROSS JOIN LATERAL (SELECT COALESCE({expr.slow}, false) AS slow) AS s "
            f"{where}ORDER BY {cols} LIMIT {limit}",
            len(keys),
        )

    async def _in_snapshot[T](self, read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``read`` on a pooled connection, in one read-only transaction that imports the
        slot's exported snapshot while it lasts (a copy consistent with the slot's start)."""
        if self._pool is None:
            warp = self.schema.warp
            size = max(1, warp.snapshot_parallel_collections) * (warp.snapshot_writers + 1)
            self._pool = await _pool(self.url, size, 10.0)
        async with self._pool.acquire() as conn:
            name = self._snapshot_name
            if name is None:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await read(conn)
            try:
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    await conn.execute(f"SET TRANSACTION SNAPSHOT {quote_literal(name)}")
                    out = await read(conn)
                self.snapshot_imports += 1
                return out
            except (
                asyncpg.InvalidParameterValueError,
                asyncpg.ObjectNotInPrerequisiteStateError,
            ):
                # the exporting connection is gone: the stream's catch-up makes it consistent
                log.info("warp.pg.snapshot.lost_export", snapshot=name)
                self._snapshot_name = None
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    return await read(conn)

    async def _chunk(self, sql: str, args: Sequence[Any]) -> list[asyncpg.Record]:
        async def read(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            return list(await conn.fetch(sql, *args))

        return await self._in_snapshot(read)

    def _converter(self, info: TableInfo) -> RowConverter:
        return RowConverter(
            [c.landed for c in info.landed],
            self.transformer.policy,
            self._excluded(info.name),
        )

    async def snapshot(
        self, collection: str, state: Mapping[str, Any], stop: asyncio.Event | None = None
    ) -> AsyncIterator[Batch]:
        """Copy ``collection`` from ``state["after"]`` (the last key copied) in key order."""
        info = await self._info(collection)
        if info is None:  # gone before its copy: nothing to copy (the drop policy follows)
            log.info("warp.pg.snapshot.gone", table=collection)
            yield self._copied(collection, state)
            return
        version = int(state["version"])
        chunk = self.schema.batching.snapshot_chunk_size
        size = min(chunk, self.schema.batching.max_batch_size)
        after: list[str] | None = (
            orjson.loads(state["after"]) if state.get("after") is not None else None
        )
        copied = int(state.get("copied", 0))
        sweep = bool(state.get("sweep"))
        #: rows of this table may be landed already (a copy while streaming): merge, never COPY
        merge = bool(state.get("merge"))
        self.known.add(collection)
        kinds = [k.kind for k in info.key_columns()]
        converter = self._converter(info)
        first_sql, nkeys = self._snapshot_query(info, True)
        next_sql, _ = self._snapshot_query(info, False)
        single = len(kinds) == 1 and kinds[0] in ("int", "float", "string", "text", "date")
        if single and not (sweep or merge):
            # the source writes the rows in the raw table's COPY format: no Python per row
            ranged = state.get("ranges") or (
                after is None and self.schema.warp.snapshot_writers > 1
            )
            copier = self._copy_planned if ranged else self._copy_ranges
            async for batch in copier(info, converter, state, version, stop):
                yield batch
            return

        def close(batch: Batch, done: bool) -> Batch:
            batch.snapshot = {
                collection: {
                    "done": done,
                    "after": orjson.dumps(after).decode() if after is not None else None,
                    "version": str(version),
                    "sweep": sweep,
                    "merge": merge,
                    "copied": copied,
                }
            }
            batch.direct_copy = not (sweep or merge)
            if done and sweep:
                batch.wipes.append(Wipe(collection, version, "sweep"))
            return batch

        async def fetch(cursor: list[str] | None) -> list[asyncpg.Record]:
            args: list[Any] = [chunk] if cursor is None else [*cursor, chunk]
            try:
                return await self._chunk(first_sql if cursor is None else next_sql, args)
            except asyncpg.UndefinedTableError:  # dropped while copying: the rest is gone
                log.info("warp.pg.snapshot.gone", table=collection)
                return []

        ahead: asyncio.Task[list[asyncpg.Record]] | None = None
        try:
            while True:
                if stop is not None and stop.is_set():
                    return
                rows = await ahead if ahead is not None else await fetch(after)
                ahead = None
                if len(rows) == chunk:
                    # the source builds the next chunk while this one is converted and landed
                    ahead = asyncio.create_task(fetch(list(rows[-1][:nkeys])))
                now = dt.datetime.now(dt.UTC)
                batch = Batch(kind="snapshot", version=None)
                for row in rows:
                    key_texts = list(row[:nkeys])
                    doc_id = key_texts[0] if single else key_id(kinds, key_texts)
                    self._land(info, converter, row, nkeys, doc_id, version, now, batch)
                    after = key_texts  # type: ignore[assignment]
                    copied += 1
                    batch.events += 1
                    if batch.events >= size:
                        yield close(batch, done=False)
                        batch = Batch(kind="snapshot", version=None)
                done = len(rows) < chunk
                if batch.events or done:
                    yield close(batch, done=done)
                if done:
                    return
                await asyncio.sleep(0)
        finally:
            if ahead is not None:  # stopped early: the connection must be free again
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
                    await ahead

    def _land(
        self,
        info: TableInfo,
        converter: RowConverter,
        row: Sequence[Any],
        nkeys: int,
        doc_id: str,
        version: int,
        now: dt.datetime,
        batch: Batch,
    ) -> None:
        """One snapshot row (keys, document or NULL, column texts) into ``batch``: as built by
        the server, converted in Python, or a dead letter."""
        doc = row[nkeys]
        if doc is None:
            texts = row[nkeys + 1]
            try:
                counted = ConversionStats()
                doc = converter.document(texts, counted)
                if counted:  # taken by the runner after each batch: look it up now
                    self.transformer.stats_for(info.name).merge(counted)
            except UnlandableDocument as exc:
                batch.dead.append(
                    self._dead(
                        info.name, doc_id, version, "snapshot", exc, converter.columns, texts
                    )
                )
                return
        if len(doc) > self.transformer.max_bytes:
            batch.dead.append(self._oversized(info, doc_id, version, "snapshot", row))
        else:
            batch.changes.append(Change(info.name, doc_id, "snapshot", version, doc, now))

    def _range_sql(self, info: TableInfo, size: int, first: bool) -> str:
        """The last key (as text) and the number of the next ``size`` rows after ``$1``."""
        key = info.key_columns()[0]
        col = f"t.{quote_ident(key.name)}"
        where = "" if first else f"WHERE {col} > $1::text::{key.cast}{key.collate} "
        return (
            f"SELECT s.k, s.n FROM (SELECT {output_text(col)} AS k, row_number() OVER "
            f"(ORDER BY {col}) AS n FROM {qualified(self.namespace, info.name)} AS t "
            f"{where}ORDER BY {col} LIMIT {int(size)}) AS s ORDER BY s.n DESC LIMIT 1"
        )

    def _in_range(self, info: TableInfo, lo: str | None, hi: str | None) -> str:
        key = info.key_columns()[0]
        col = f"t.{quote_ident(key.name)}"
        conds = []
        if lo is not None:
            conds.append(f"{col} > {quote_literal(lo)}::text::{key.cast}{key.collate}")
        if hi is not None:
            conds.append(f"{col} <= {quote_literal(hi)}::text::{key.cast}{key.collate}")
        return " AND ".join(conds) or "true"

    def _range_sqls(
        self, info: TableInfo, lo: str | None, hi: str | None, version: int, now: dt.datetime
    ) -> tuple[str, str | None, str]:
        """For the rows with ``lo < key <= hi`` (None: unbounded): the query (to COPY) of those the
        server lands whole, in :data:`~cartridge_dagster.warp.sink.COPY_COLUMNS` order; the
        query of those the Python conversion takes (None: none can be); the query of those
        over ``dead_letter.max_document_bytes``. The last two in :meth:`_snapshot_query`'s
        shape."""
        key = info.key_columns()[0]
        col = f"t.{quote_ident(key.name)}"
        landed = [c.landed for c in info.landed]
        expr = snapshot_expressions("t", landed, self._excluded(info.name))
        table = qualified(self.namespace, info.name)
        in_range = self._in_range(info, lo, hi)
        slow = f"COALESCE({expr.slow}, false)" if expr.slow is not None else "false"
        # OFFSET 0: the document is built once per row, for the test and the output
        doc = f"CROSS JOIN LATERAL (SELECT {expr.document} AS doc OFFSET 0) AS _cartridge_doc"
        small = f"octet_length(_cartridge_doc.doc::text) <= {int(self.transformer.max_bytes)}"
        key_out = f"COALESCE({output_text(col)}, 'null')"
        # binary COPY: the document as jsonb's binary form (version 1, then the JSON text)
        copy = (
            f"SELECT {key_out}, decode('01', 'hex') || convert_to(_cartridge_doc.doc::text, "
            f"'UTF8'), false, {int(version)}::numeric, 'snapshot'::text, "
            f"{quote_literal(now.isoformat())}::timestamptz FROM {table} AS t {expr.lateral} "
            f"{doc} WHERE ({in_range}) AND NOT {slow} AND {small} ORDER BY {col}"
        )
        python = None
        if expr.slow is not None:
            texts = ", ".join(output_text(f"t.{quote_ident(c.name)}") for c in landed)
            python = (
                f"SELECT {key_out}, NULL::json AS doc, ARRAY[{texts}] AS texts "
                f"FROM {table} AS t WHERE ({in_range}) AND ({expr.slow}) ORDER BY {col}"
            )
        oversized = (
            f"SELECT {key_out}, _cartridge_doc.doc, NULL::text[] AS texts FROM {table} AS t "
            f"{expr.lateral} {doc} WHERE ({in_range}) AND NOT {slow} AND NOT {small} "
            f"ORDER BY {col}"
        )
        return copy, python, oversized

    async def _read_range(
        self, info: TableInfo, lo: str | None, version: int, size: int
    ) -> tuple[str | None, int, bytes, int, list[asyncpg.Record], dt.datetime]:
        """The next range of ``size`` rows after ``lo``, in one snapshot transaction: (its
        last key, its rows, the COPY data, the rows in it, the rows Python takes, the time)."""
        now = dt.datetime.now(dt.UTC)

        async def read(
            conn: asyncpg.Connection,
        ) -> tuple[str | None, int, bytes, int, list[asyncpg.Record], dt.datetime]:
            bound = await conn.fetchrow(
                self._range_sql(info, size, lo is None), *([] if lo is None else [lo])
            )
            if bound is None:
                return None, 0, b"", 0, [], now
            hi, count = bound["k"], int(bound["n"])
            copy_sql, python_sql, oversized_sql = self._range_sqls(
                info, lo, hi if count == size else None, version, now
            )
            data, copied, rest = await _copy_binary(
                conn, copy_sql, python_sql, oversized_sql, count
            )
            return hi, count, data, copied, rest, now

        return await self._in_snapshot(read)

    async def _copy_ranges(
        self,
        info: TableInfo,
        converter: RowConverter,
        state: Mapping[str, Any],
        version: int,
        stop: asyncio.Event | None,
    ) -> AsyncIterator[Batch]:
        """Copy a table with a one-column key in ranges of ``size`` rows: the source server
        writes each range in the raw table's binary COPY format (the rows the Python
        conversion must take, and oversized ones, come apart), the sink COPYs it in as it
        is. The next range is read while this one lands."""
        name = info.name
        size = min(self.schema.batching.snapshot_chunk_size, self.schema.batching.max_batch_size)
        start = orjson.loads(state["after"]) if state.get("after") is not None else None
        after: str | None = start[0] if start else None
        copied = int(state.get("copied", 0))

        async def fetch(
            lo: str | None,
        ) -> tuple[str | None, int, bytes, int, list[asyncpg.Record], dt.datetime]:
            try:
                return await self._read_range(info, lo, version, size)
            except asyncpg.UndefinedTableError:  # dropped while copying: the rest is gone
                log.info("warp.pg.snapshot.gone", table=name)
                return None, 0, b"", 0, [], dt.datetime.now(dt.UTC)

        ahead: asyncio.Task[Any] | None = None
        try:
            while True:
                if stop is not None and stop.is_set():
                    return
                hi, count, data, n, rest, now = await (ahead if ahead is not None else fetch(after))
                ahead = None
                done = count < size
                if not done:
                    ahead = asyncio.create_task(fetch(hi))
                batch = Batch(kind="snapshot", version=None, events=count, direct_copy=True)
                if n:
                    batch.copy = CopyRows(name, data, n, version)
                for row in rest:
                    self._land(info, converter, row, 1, row[0], version, now, batch)
                copied += count
                if hi is not None:
                    after = hi
                batch.snapshot = {
                    name: {
                        "done": done,
                        "after": orjson.dumps([after]).decode() if after is not None else None,
                        "version": str(version),
                        "sweep": False,
                        "merge": False,
                        "copied": copied,
                    }
                }
                yield batch
                if done:
                    return
        finally:
            if ahead is not None:  # stopped early: the connection must be free again
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
                    await ahead

    async def _plan_ranges(self, info: TableInfo, size: int) -> list[KeyRange]:
        """Split the key space in ranges of about ``size`` rows: ``(None, b1], (b1, b2], …,
        (bn, None)`` — together every key, whatever rows come and go later."""
        key = info.key_columns()[0]
        col = f"t.{quote_ident(key.name)}"
        sql = (
            f"SELECT s.k FROM (SELECT {output_text(col)} AS k, row_number() OVER "
            f"(ORDER BY {col}) AS n FROM {qualified(self.namespace, info.name)} AS t) AS s "
            f"WHERE s.n % {int(size)} = 0 ORDER BY s.n"
        )

        async def read(conn: asyncpg.Connection) -> list[str]:
            return [r[0] for r in await conn.fetch(sql)]

        bounds: list[str | None] = [None, *(await self._in_snapshot(read)), None]
        return [KeyRange(i, bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]

    async def _read_key_range(
        self, info: TableInfo, rng: KeyRange, version: int
    ) -> tuple[int, bytes, int, list[asyncpg.Record], dt.datetime]:
        """One planned range in one snapshot transaction: (its rows, the COPY data, the rows
        in it, the rows Python takes, the time)."""
        now = dt.datetime.now(dt.UTC)
        copy_sql, python_sql, oversized_sql = self._range_sqls(info, rng.lo, rng.hi, version, now)
        count_sql = (
            f"SELECT count(*) FROM {qualified(self.namespace, info.name)} AS t "
            f"WHERE {self._in_range(info, rng.lo, rng.hi)}"
        )

        async def read(
            conn: asyncpg.Connection,
        ) -> tuple[int, bytes, int, list[asyncpg.Record], dt.datetime]:
            count = int(await conn.fetchval(count_sql))
            data, copied, rest = await _copy_binary(
                conn, copy_sql, python_sql, oversized_sql, count
            )
            return count, data, copied, rest, now

        return await self._in_snapshot(read)

    async def _copy_planned(
        self,
        info: TableInfo,
        converter: RowConverter,
        state: Mapping[str, Any],
        version: int,
        stop: asyncio.Event | None,
    ) -> AsyncIterator[Batch]:
        """Copy a table with a one-column key as a plan of key ranges, each range one batch
        for one of ``warp.snapshot_writers`` writers (:meth:`Sink.apply_range`): first the
        plan (committed before any range), then the ranges (``warp.snapshot_writers`` read at
        a time, in plan order), then the batch ending the copy. ``state["pending"]`` (the
        runner's, on resume): the ranges not landed yet."""
        name = info.name
        size = min(self.schema.batching.snapshot_chunk_size, self.schema.batching.max_batch_size)
        copied = int(state.get("copied", 0))
        entry = {
            "done": False,
            "after": None,
            "version": str(version),
            "sweep": False,
            "merge": False,
            "copied": copied,
            "ranges": True,
        }
        if state.get("ranges"):
            pending = [KeyRange(int(s), lo, hi) for s, lo, hi in state.get("pending") or []]
        else:
            try:
                pending = await self._plan_ranges(info, size)
            except asyncpg.UndefinedTableError:  # dropped before its copy: nothing to copy
                log.info("warp.pg.snapshot.gone", table=name)
                yield self._copied(name, state)
                return
            plan = Batch(kind="snapshot", version=None, direct_copy=True)
            plan.range_plan = RangePlan(name, version, tuple(pending))
            plan.snapshot = {name: dict(entry)}
            yield plan
        log.info("warp.pg.snapshot.ranges", table=name, ranges=len(pending))

        async def fetch(rng: KeyRange) -> tuple[int, bytes, int, list[asyncpg.Record], dt.datetime]:
            try:
                return await self._read_key_range(info, rng, version)
            except asyncpg.UndefinedTableError:  # dropped while copying: the rest is gone
                log.info("warp.pg.snapshot.gone", table=name)
                return 0, b"", 0, [], dt.datetime.now(dt.UTC)

        depth = max(1, self.schema.warp.snapshot_writers)
        ahead: deque[tuple[KeyRange, asyncio.Task[Any]]] = deque()
        todo = deque(pending)
        try:
            while todo or ahead:
                while todo and len(ahead) < depth:
                    rng = todo.popleft()
                    ahead.append((rng, asyncio.create_task(fetch(rng))))
                if stop is not None and stop.is_set():
                    return
                rng, task = ahead.popleft()
                count, data, n, rest, now = await task
                batch = Batch(kind="snapshot", version=None, events=count, direct_copy=True)
                batch.key_range = RangeMark(name, version, rng.seq)
                if n:
                    batch.copy = CopyRows(name, data, n, version)
                for row in rest:
                    self._land(info, converter, row, 1, row[0], version, now, batch)
                copied += count
                yield batch
            end = Batch(kind="snapshot", version=None, direct_copy=True)
            end.ranges_finished = (name, version)
            end.snapshot = {name: {**entry, "done": True, "copied": copied}}
            yield end
        finally:
            for _rng, task in ahead:  # stopped early: the connections must be free again
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
                    await task

    def _copied(self, collection: str, state: Mapping[str, Any]) -> Batch:
        """The batch ending the copy of a table that is gone."""
        batch = Batch(kind="snapshot", version=None)
        batch.snapshot = {collection: {**dict(state), "done": True}}
        return batch

    def _dead(
        self,
        table: str,
        doc_id: str | None,
        version: int,
        op: str,
        exc: BaseException,
        columns: Sequence[Column],
        texts: Sequence[Any],
    ) -> DeadLetter:
        raw = raw_event(
            table, op, columns, [t if isinstance(t, str) or t is None else None for t in texts]
        )
        return DeadLetter(
            collection=table,
            document_id=doc_id,
            version=version,
            op=op,
            error_class=type(exc).__name__,
            error_message=str(exc)[:2000],
            raw_event=bson.encode(raw),
            token=None,
        )

    def _oversized(
        self, info: TableInfo, doc_id: str, version: int, op: str, row: Any
    ) -> DeadLetter:
        err = UnlandableDocument(
            f"row {doc_id!r} of {info.name!r} is over dead_letter.max_document_bytes="
            f"{self.transformer.max_bytes} as JSON",
            path="",
            reason="oversized",
        )
        return DeadLetter(
            collection=info.name,
            document_id=doc_id,
            version=version,
            op=op,
            error_class=type(err).__name__,
            error_message=str(err),
            raw_event=bson.encode(
                {"cartridge_pg": 1, "table": info.name, "op": op, "oversized": True, "_id": doc_id}
            ),
            token=None,
        )

    # ------------------------------------------------------------------ stream

    async def _start(self, token: Mapping[str, Any] | None) -> int:
        if token is None or "lsn" not in token:
            raise ResumeTokenLost(
                f"schema {self.schema.name!r}: the checkpoint holds no PostgreSQL position"
            )
        lsn = parse_lsn(str(token["lsn"]))
        conn = await self._db()
        if isinstance(token.get("defaults"), Mapping):
            self._defaults = {str(k): list(v) for k, v in token["defaults"].items()}
        else:
            await self._scope()
            self._defaults = {name: _with_default(info) for name, info in self.tables.items()}
        state = await slot_state(conn, self.slot)
        self._slot_health(state)
        mine = self.repl.backend_pid if self.repl is not None else None
        if state.active and state.active_pid != mine:
            raise SlotInUse(
                f"replication slot {self.slot!r} is in use (process {state.active_pid})",
                hint="another warp process for this schema is stopping (it is fenced at its "
                "next batch), or another installation uses the same warp.slot_name",
            )
        if state.confirmed_flush_lsn is not None and state.confirmed_flush_lsn > lsn:
            log.info(
                "warp.pg.slot.ahead",
                checkpoint=format_lsn(lsn),
                confirmed=format_lsn(state.confirmed_flush_lsn),
            )
        if self.repl is not None and self.repl.streaming:
            await self._close_repl()
        if self.repl is None:
            self.repl = ReplicationStream(self.url, timeout=10.0)
            await self.repl.connect()
        self._snapshot_name = None  # starting replication ends the exported snapshot
        try:
            await self.repl.start(self.slot, self.publication, lsn)
        except psycopg2.Error as exc:
            await self._close_repl()
            code = getattr(exc, "pgcode", None)
            if code == "42704" or (code == "55000" and "can no longer" in str(exc)):
                raise ResumeTokenLost(
                    f"replication slot {self.slot!r}: {str(exc).strip().splitlines()[0]}"
                ) from None
            if code == "55006":
                raise SlotInUse(f"replication slot {self.slot!r} is in use") from None
            raise
        self._relations.clear()  # the server sends Relation messages again in a new session
        self._unacked.clear()
        return lsn

    def _slot_health(self, state: SlotState) -> None:
        if not state.exists:
            raise ResumeTokenLost(
                f"replication slot {self.slot!r} does not exist (dropped?): the changes since "
                "the checkpoint are gone"
            )
        if state.lost:
            raise ResumeTokenLost(
                f"replication slot {self.slot!r} was invalidated (it fell behind by more than "
                "max_slot_wal_keep_size): the changes since the checkpoint are gone"
            )

    async def _poll_slot(self) -> None:
        conn = await self._db()
        state = await slot_state(conn, self.slot)
        self._slot_health(state)
        seconds = 0.0
        if self._unacked:
            seconds = max(0.0, time.time() - self._unacked[0][1].timestamp())
        self.slot_lag = {
            "bytes": float(state.lag_bytes or 0),
            "retained_bytes": float(state.retained_bytes or 0),
            "seconds": seconds,
        }
        name = self.schema.name
        metrics.SLOT_LAG_BYTES.labels(name).set(self.slot_lag["bytes"])
        metrics.SLOT_RETAINED_BYTES.labels(name).set(self.slot_lag["retained_bytes"])
        metrics.SLOT_LAG_SECONDS.labels(name).set(seconds)

    async def _relation(self, msg: Relation) -> None:
        conn = await self._db()
        in_scope = msg.namespace == self.namespace and self.schema.selects(msg.name)
        if in_scope and msg.name not in self.tables:
            # publishing through partition roots, the server describes a partition too before
            # its changes (which name the root): a partition is no table of its own
            part = await conn.fetchval(
                "SELECT relispartition FROM pg_catalog.pg_class WHERE oid = $1", msg.oid
            )
            in_scope = not part
        types = await self.resolver.resolve(conn, [c.type_oid for c in msg.columns])
        columns = [
            Column(c.name, types[c.type_oid].kind, types[c.type_oid].delim) for c in msg.columns
        ]
        names = [c.name for c in msg.columns]
        key_idx: list[int] = []
        if in_scope:
            info = self.tables.get(msg.name)
            if (
                info is None
                or any(k not in names for k in info.key)
                or set(names) - {c.name for c in info.columns}
            ):
                await self._scope()
                info = self.tables.get(msg.name)
            if info is not None and info.key and all(k in names for k in info.key):
                key = info.key
            elif msg.replica_identity in ("d", "i") and any(
                c.replica_identity for c in msg.columns
            ):
                # dropped or changed since: the key these changes were published with
                key = [c.name for c in msg.columns if c.replica_identity]
            else:
                self._keyless({msg.name: info} if info is not None else {})
                raise TerminalError(
                    f"schema {self.schema.name!r}: table {msg.name!r}: its changes carry no key"
                )
            key_idx = [names.index(k) for k in key]
            self.known.add(msg.name)
            if info is not None:
                now = [
                    n
                    for n in names
                    if n in info.columns_by_name and info.columns_by_name[n].has_default
                ]
                landed = self._defaults.get(msg.name)
                if landed is None or msg.name in self._copies:
                    pass  # a table being copied: its copy lands every column
                elif set(now) - set(landed):
                    # rows took the default without WAL of their own: copy the table again
                    self._recopy.setdefault(msg.name, "a column was added with a default")
                    self._pending_defaults[msg.name] = now
                else:
                    self._defaults[msg.name] = now
        converter = RowConverter(columns, self.transformer.policy, self._excluded(msg.name))
        self._relations[msg.oid] = _Table(
            oid=msg.oid,
            name=msg.name,
            in_scope=in_scope,
            columns=columns,
            key_idx=key_idx,
            key_kinds=[columns[i].kind for i in key_idx],
            converter=converter,
            names=names,
        )

    def _row(
        self,
        table: _Table,
        texts: Sequence[Any],
        op: str,
        version: int,
        source_ts: dt.datetime,
        batch: Batch,
    ) -> None:
        key_texts = [texts[i] for i in table.key_idx]
        doc_id = key_id(table.key_kinds, key_texts)
        counted = ConversionStats()
        try:
            doc = table.converter.document(texts, counted)
        except UnlandableDocument as exc:
            batch.dead.append(
                self._dead(table.name, doc_id, version, op, exc, table.columns, texts)
            )
            return
        if len(doc) > self.transformer.max_bytes:
            err = UnlandableDocument(
                f"row {doc_id!r} of {table.name!r} is {len(doc)} bytes as JSON, over "
                f"dead_letter.max_document_bytes={self.transformer.max_bytes}",
                path="",
                reason="oversized",
            )
            batch.dead.append(
                self._dead(table.name, doc_id, version, op, err, table.columns, texts)
            )
            return
        if counted:
            self.transformer.stats_for(table.name).merge(counted)
        batch.changes.append(Change(table.name, doc_id, op, version, doc, source_ts))  # type: ignore[arg-type]

    async def _fill_toast(self, batch: Batch, pending: list[_Pending]) -> None:
        """Read the current values of the columns updates left out (unchanged TOAST)."""
        by_table: dict[str, list[_Pending]] = {}
        for p in pending:
            by_table.setdefault(p.table.name, []).append(p)
        conn = await self._db()
        for name, items in by_table.items():
            info = await self._info(name)
            if info is None:  # dropped since: the drop policy decides what its rows become
                self.toast_gone += len(items)
                continue
            keys = info.key_columns()
            cols = items[0].table.names
            sel = ", ".join(output_text(f"t.{quote_ident(c)}") for c in cols)
            knames = ", ".join(f"t.{quote_ident(k.name)}" for k in keys)
            unnest = ", ".join(f"${i + 1}::text[]" for i in range(len(keys)))
            aliases = ", ".join(f"u{i}" for i in range(len(keys)))
            casts = ", ".join(f"u.u{i}::{k.cast}{k.collate}" for i, k in enumerate(keys))
            key_sel = ", ".join(output_text(f"t.{quote_ident(k.name)}") for k in keys)
            sql = (
                f"SELECT {key_sel}, {sel} FROM {qualified(self.namespace, name)} AS t "
                f"WHERE ({knames}) IN (SELECT {casts} FROM unnest({unnest}) AS u({aliases}))"
            )
            args = [[p.key_texts[i] for p in items] for i in range(len(keys))]
            try:
                rows = await conn.fetch(sql, *args)
            except asyncpg.UndefinedTableError:
                self.toast_gone += len(items)
                continue
            current = {tuple(r[: len(keys)]): list(r[len(keys) :]) for r in rows}
            for p in items:
                found = current.get(tuple(p.key_texts))
                self.toast_lookups += 1
                if found is None:
                    # deleted since: its delete follows in the stream
                    self.toast_gone += 1
                    continue
                texts = [found[i] if v is UNCHANGED else v for i, v in enumerate(p.texts)]
                self._row(p.table, texts, "update", p.version, p.source_ts, batch)

    async def _flush(self, batch: Batch, pending: list[_Pending]) -> Batch:
        if pending:
            await self._fill_toast(batch, pending)
            pending.clear()
        return batch

    async def stream(
        self, token: Mapping[str, Any] | None, stop: asyncio.Event
    ) -> AsyncIterator[Batch]:
        """Batches of changes after ``token`` until ``stop`` is set."""
        cfg = self.schema.batching
        idle_every = self.schema.warp.idle_checkpoint_seconds
        for name, entry in sorted(self._copies.items()):
            # interrupted by a lost connection: finish it first
            async for snap in self._live_copy(name, entry, stop):
                yield snap
        last_lsn = await self._start(token)
        repl = self.repl
        assert repl is not None
        batch = Batch(kind="stream")
        pending: list[_Pending] = []
        txn: _Txn | None = None
        now = time.monotonic()
        last_idle = last_reconcile = last_poll = now
        last_ask = 0.0
        self.idle_since = None
        count = 0
        await self._poll_slot()
        while not stop.is_set():
            msg = repl.read()
            self.reads += 1
            if msg is None:
                now = time.monotonic()
                if (len(batch) or pending or batch.wipes) and (
                    now - batch.created >= cfg.max_batch_seconds
                ):
                    yield await self._flush(batch, pending)
                    batch = Batch(kind="stream")
                    continue
                if txn is None and not (len(batch) or pending or batch.wipes):
                    if batch.token is not None:  # a batch of skipped transactions
                        yield batch
                        batch = Batch(kind="stream")
                        continue
                    if self.idle_since is None:
                        self.idle_since = now
                        batch.created = now
                    if now - last_ask >= idle_every / 2:
                        last_ask = now
                        repl.feedback(reply=True)  # a keepalive brings the server's position
                    if now - last_poll >= SLOT_POLL_SECONDS:
                        last_poll = now
                        await self._poll_slot()
                    if now - last_reconcile >= idle_every:
                        last_reconcile = now
                        async for extra in self._reconcile(stop):
                            yield extra
                        continue
                    wal_end = repl.wal_end
                    if now - last_idle >= idle_every and wal_end > last_lsn:
                        last_idle = now
                        last_lsn = wal_end
                        yield Batch(kind="idle", token=self._token(wal_end))
                        continue
                await repl.wait(min(0.1, cfg.max_batch_seconds))
                continue
            self.idle_since = None
            count += 1
            if count % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            decoded = decode_message(msg.payload)
            if isinstance(decoded, Begin):
                txn = _Txn(decoded.final_lsn, decoded.commit_ts)
                if not (len(batch) or pending or batch.wipes):
                    batch.created = time.monotonic()
                continue
            if isinstance(decoded, Commit):
                txn = None
                last_lsn = decoded.end_lsn
                batch.token = self._token(decoded.end_lsn)
                batch.source_ts = decoded.commit_ts
                self._unacked.append((decoded.end_lsn, decoded.commit_ts))
                now = time.monotonic()
                if (
                    len(batch) + len(pending) >= cfg.max_batch_size
                    or now - batch.created >= cfg.max_batch_seconds
                    or self._recopy
                ):
                    yield await self._flush(batch, pending)
                    batch = Batch(kind="stream")
                    if now - last_poll >= SLOT_POLL_SECONDS:
                        last_poll = now
                        await self._poll_slot()
                    if now - last_reconcile >= idle_every:
                        last_reconcile = now
                        async for extra in self._reconcile(stop):
                            yield extra
                if self._recopy and not (len(batch) or pending):
                    async for snap in self._due_copies(decoded, stop):
                        yield snap
                continue
            if isinstance(decoded, Relation):
                await self._relation(decoded)
                continue
            if decoded is None or isinstance(decoded, TypeMessage):
                continue
            if txn is None:
                raise TerminalError("pgoutput sent a change outside a transaction")
            self.events_read += 1
            batch.events += 1
            if isinstance(decoded, Truncate):
                for rel in decoded.relations:
                    table = self._relations.get(rel)
                    if table is not None and table.in_scope:
                        txn.ordinal += 1
                        batch.wipes.append(
                            Wipe(table.name, pg_version(txn.commit_lsn, txn.ordinal), "truncate")
                        )
                        batch.version = max(batch.version or 0, batch.wipes[-1].version)
                continue
            table = self._relations.get(decoded.relation)
            if table is None:
                raise TerminalError(
                    f"pgoutput sent a change of relation {decoded.relation} before its definition"
                )
            if not table.in_scope:
                continue
            self._change(table, decoded, txn, batch, pending)
            if len(batch) + len(pending) >= cfg.max_batch_size:
                # a transaction larger than a batch: this part lands now; the position stays
                # at the last whole transaction (a replay repeats this one whole)
                yield await self._flush(batch, pending)
                batch = Batch(kind="stream")
        if len(batch) or pending or batch.wipes or batch.token is not None:
            yield await self._flush(batch, pending)

    def _change(
        self,
        table: _Table,
        msg: Insert | Update | Delete,
        txn: _Txn,
        batch: Batch,
        pending: list[_Pending],
    ) -> None:
        ts = txn.source_ts
        if isinstance(msg, Insert):
            txn.ordinal += 1
            version = pg_version(txn.commit_lsn, txn.ordinal)
            batch.version = version
            self._row(table, msg.new, "insert", version, ts, batch)
            return
        if isinstance(msg, Delete):
            txn.ordinal += 1
            version = pg_version(txn.commit_lsn, txn.ordinal)
            batch.version = version
            key = [msg.old[i] for i in table.key_idx]
            batch.changes.append(
                Change(table.name, key_id(table.key_kinds, key), "delete", version, None, ts)
            )
            return
        new = msg.new
        if msg.old is not None:
            old_key = [msg.old[i] for i in table.key_idx]
            new_key = [new[i] for i in table.key_idx]
            if old_key != new_key and all(v is not UNCHANGED for v in old_key):
                # the key changed: the old row is gone, the new one lands
                txn.ordinal += 1
                version = pg_version(txn.commit_lsn, txn.ordinal)
                batch.changes.append(
                    Change(
                        table.name, key_id(table.key_kinds, old_key), "delete", version, None, ts
                    )
                )
            if msg.old_kind == "O" and any(v is UNCHANGED for v in new):
                new = [
                    msg.old[i] if v is UNCHANGED and msg.old[i] is not UNCHANGED else v
                    for i, v in enumerate(new)
                ]
        txn.ordinal += 1
        version = pg_version(txn.commit_lsn, txn.ordinal)
        batch.version = version
        if any(v is UNCHANGED for v in new):
            key = [new[i] for i in table.key_idx]
            pending.append(
                _Pending(table, key, list(new), key_id(table.key_kinds, key), version, ts)
            )
            return
        self._row(table, new, "update", version, ts, batch)

    # ------------------------------------------------------------------ live copies

    async def _current_lsn(self) -> int:
        conn = await self._db()
        return int(await conn.fetchval("SELECT (pg_current_wal_lsn() - '0/0')::numeric"))

    async def _reconcile(self, stop: asyncio.Event) -> AsyncIterator[Batch]:
        """Compare the tables in scope with what warp knows: a vanished table follows
        ``warp.drop_policy``; a new one is added to the publication and copied."""
        added = await self._ensure_publication()
        present = set(self.tables)
        # in the publication already but never copied whole (the tables of the checkpoint's
        # default-column map have been): a table renamed into the scope
        renamed = sorted(present - set(self._defaults) - set(added) - set(self._copies))
        vanished = sorted(self.known - present)
        if vanished:
            version = pg_version(await self._current_lsn(), 0)
            batch = Batch(kind="stream", version=version)
            for name in vanished:
                self._defaults.pop(name, None)
                wipe = self._drop(name, version)
                if wipe is not None:
                    batch.wipes.append(wipe)
            log.info("warp.pg.vanished", tables=vanished)
            yield batch
        for name in added:
            # the publication covers it from now on: copy what it holds
            landed = name in self.known  # dropped and created again: sweep the old rows
            entry = {
                "done": False,
                "after": None,
                "version": str(pg_version(await self._current_lsn(), 0)),
                "sweep": landed,
                "merge": landed,
                "copied": 0,
            }
            log.info("warp.pg.table.added", table=name)
            async for snap in self._live_copy(name, entry, stop):
                yield snap
        for name in renamed:
            entry = {
                "done": False,
                "after": None,
                "version": str(pg_version(await self._current_lsn(), 0)),
                "sweep": False,
                "merge": True,  # its changes since the rename may have landed already
                "copied": 0,
            }
            log.info("warp.pg.table.appeared", table=name)
            async for snap in self._live_copy(name, entry, stop):
                yield snap

    def _drop(self, name: str, version: int) -> Wipe | None:
        from cartridge_dagster.warp.source import DropPolicyStop

        policy = self.schema.warp.drop_policy
        if policy == "fail":
            raise DropPolicyStop(
                f"table {name!r} of schema {self.schema.name!r} was dropped and "
                "warp.drop_policy is 'fail'",
                hint="decide what the raw table should do, set warp.drop_policy to "
                "'tombstone' or 'ignore', and restart warp",
            )
        self.known.discard(name)
        return None if policy == "ignore" else Wipe(name, version, "drop")

    async def _due_copies(self, commit: Commit, stop: asyncio.Event) -> AsyncIterator[Batch]:
        """Tables whose rows changed without WAL (a column added with a default): copy them
        at the version of the transaction that showed it (its own changes come after)."""
        for name in sorted(self._recopy):
            reason = self._recopy.pop(name)
            log.info("warp.pg.table.recopy", table=name, reason=reason)
            entry = {
                "done": False,
                "after": None,
                "version": str(pg_version(commit.commit_lsn, 0)),
                "sweep": False,
                "merge": True,
                "copied": 0,
            }
            async for snap in self._live_copy(name, entry, stop):
                yield snap

    async def _live_copy(
        self, name: str, entry: Mapping[str, Any], stop: asyncio.Event
    ) -> AsyncIterator[Batch]:
        """Copy ``name`` while streaming. Its progress goes into the checkpoint's snapshot plan
        (a crash finishes it before streaming again) and into ``_copies`` (a lost connection
        finishes it first when the stream re-opens)."""
        self._copies[name] = dict(entry)
        async for snap in self.snapshot(name, entry, stop):
            state = (snap.snapshot or {}).get(name)
            yield snap
            if self.repl is not None and self.repl.streaming:
                self.repl.feedback(force=True)  # the walsender hears from us during the copy
            if state is not None:
                if state.get("done"):
                    self._copies.pop(name, None)
                    info = self.tables.get(name)
                    landed = self._pending_defaults.pop(name, None)
                    if landed is None and info is not None:
                        landed = _with_default(info)
                    if landed is not None:
                        self._defaults[name] = landed
                else:
                    self._copies[name] = dict(state)


def _with_default(info: TableInfo) -> list[str]:
    return sorted(c.name for c in info.landed if c.has_default)


# --------------------------------------------------------------------------- administration


async def source_slot_state(url: str, schema: SchemaConfig) -> SlotState:
    """The schema's slot as the source reports it (for checks and ``warp status``)."""
    conn = await _connect(url, 10.0)
    try:
        return await slot_state(conn, slot_name(schema))
    finally:
        await conn.close()


@dataclass(frozen=True)
class SlotCheck:
    """The ``slot_lag_under_threshold`` verdict for a schema's slot (dagster-free)."""

    passed: bool
    state: SlotState
    threshold_bytes: int
    reason: str | None

    def metadata(self) -> dict[str, Any]:
        return {
            "slot": self.state.name,
            "exists": self.state.exists,
            "wal_status": self.state.wal_status or "",
            "active": self.state.active,
            "lag_bytes": int(self.state.lag_bytes or 0),
            "retained_bytes": int(self.state.retained_bytes or 0),
            "threshold_bytes": self.threshold_bytes,
        }


async def check_slot(url: str, schema: SchemaConfig, *, expected: bool) -> SlotCheck:
    """Whether the schema's slot is healthy: it exists (once warp has run: ``expected``), is
    not invalidated, and holds less unconfirmed WAL than ``warp.slot_lag_threshold_bytes``."""
    state = await source_slot_state(url, schema)
    threshold = schema.warp.slot_lag_threshold_bytes
    reason = None
    if not state.exists:
        if expected:
            reason = (
                f"replication slot {state.name!r} does not exist: warp cannot resume from its "
                "checkpoint (warp.history_lost_policy decides at the next run)"
            )
    elif state.lost:
        reason = (
            f"replication slot {state.name!r} was invalidated (max_slot_wal_keep_size): the "
            "changes since the checkpoint are gone"
        )
    elif (state.lag_bytes or 0) > threshold:
        reason = (
            f"replication slot {state.name!r} holds {state.lag_bytes} bytes of WAL warp has not "
            f"confirmed (threshold {threshold}): is warp running and keeping up?"
        )
    return SlotCheck(reason is None, state, threshold, reason)


async def drop_slot(url: str, schema: SchemaConfig) -> list[str]:
    """Remove warp's replication slot and publication for ``schema`` (lines to print)."""
    conn = await _connect(url, 10.0)
    lines: list[str] = []
    try:
        state = await slot_state(conn, slot_name(schema))
        if state.exists:
            if state.active:
                raise TerminalError(
                    f"replication slot {slot_name(schema)!r} is in use (process "
                    f"{state.active_pid}): stop warp for schema {schema.name!r} first"
                )
            await conn.execute("SELECT pg_catalog.pg_drop_replication_slot($1)", state.name)
            lines.append(f"dropped replication slot {state.name!r}")
        else:
            lines.append(f"no replication slot {state.name!r}")
        pub = publication_name(schema)
        if await publication_tables(conn, pub) is not None:
            await conn.execute(f"DROP PUBLICATION {quote_ident(pub)}")
            lines.append(f"dropped publication {pub!r}")
        else:
            lines.append(f"no publication {pub!r}")
    finally:
        await conn.close()
    return lines


async def _copy_binary(
    conn: asyncpg.Connection,
    copy_sql: str,
    python_sql: str | None,
    oversized_sql: str,
    count: int,
) -> tuple[bytes, int, list[asyncpg.Record]]:
    """One snapshot read of ``count`` rows: the binary COPY (``copy_sql``), then the rows it
    leaves to Python (``python_sql``) and, when rows are still missing, the oversized ones.
    Returns the COPY's bytes, how many rows it carried, and the other rows."""
    parts: list[bytes] = []

    async def out(chunk: bytes) -> None:
        parts.append(bytes(chunk))

    status = await conn.copy_from_query(copy_sql, output=out, format="binary")
    copied = int(str(status).rsplit(" ", 1)[-1])
    rest = list(await conn.fetch(python_sql)) if python_sql is not None else []
    if copied + len(rest) < count:
        rest += await conn.fetch(oversized_sql)
    return b"".join(parts), copied, rest
