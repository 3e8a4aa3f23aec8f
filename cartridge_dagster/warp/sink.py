"""The PostgreSQL sink: one transaction per batch, exactly-once effect.

Each batch is applied in one transaction that

1. checks the fence: ``SELECT epoch … FOR UPDATE`` on the schema's checkpoint row must still be
   this process's epoch (a newer process bumped it: this one stops without committing);
2. COPYs the changes into a temporary staging table and runs one set-based merge per table:
   the newest change per ``_id`` wins (in-batch dedup), an upsert only moves
   ``_cartridge_version`` forward, deletes are versioned tombstones (soft: the row stays with
   ``_cartridge_deleted``; hard: the row goes and ``cartridge_warp.tombstones`` keeps the
   version), and tables with ``history: true`` also get every change appended;
3. isolates rows PostgreSQL rejects by bisecting the batch under savepoints and writes them,
   with the batch's conversion failures, to ``cartridge_warp.dead_letters``;
4. writes the checkpoint (resume token, version, snapshot progress).

A crash anywhere rolls everything back, so a restart replays at most one batch, and a replay
changes nothing (versions never move backwards).

A table's initial snapshot may also land through several connections (``warp.snapshot_writers``,
:meth:`Sink.apply_range`): the plan of its primary-key ranges is committed first (one batch of
this writer, rows of ``cartridge_warp.snapshot_ranges``), then each range is COPYed in its own
transaction that marks the range done (a range already done rolls back) and checks the fence
with a shared lock on the checkpoint row (range writers do not wait for each other; a new
process's epoch bump waits for them, and this writer's batches exclude them). The batch ending
the table's copy (``ranges_finished``) removes the plan and counts its rows. A kill at any moment
leaves each range landed whole or not at all; a restart copies the ranges not done.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

import orjson

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.documents import ConversionStats
from cartridge_dagster.errors import TerminalError, TransientError, classify
from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.landing import (
    CONTROL_SCHEMA,
    control_ddl,
    history_table_ddl,
    history_table_name,
    raw_table_ddl,
    raw_table_name,
)
from cartridge_dagster.lazy import lazy_module
from cartridge_dagster.observability import get_logger
from cartridge_dagster.warp.changes import Change, DeadLetter, dedup_latest, event_summary

if TYPE_CHECKING:
    import asyncpg
else:
    # imported at first use: the runner issues its first snapshot read before it connects
    # here (``warp.runner``), and asyncpg is ~20-30 ms of a fresh process's start-up
    asyncpg = lazy_module("asyncpg")

__all__ = [
    "POISON_MARK",
    "Batch",
    "BatchResult",
    "Checkpoint",
    "CopyRows",
    "Fenced",
    "KeyRange",
    "NumericCodec",
    "RangeLanded",
    "RangeMark",
    "RangePlan",
    "Sink",
    "Wipe",
    "setup_jsonb_codec",
    "setup_numeric_codec",
]

log = get_logger("cartridge.warp.sink")

STAGE = "_cartridge_warp_stage"
#: Key marking a dead letter's raw event as a row PostgreSQL rejected (not a source event).
POISON_MARK = "cartridge_poison"
_STAGE_COLUMNS = ["coll", "_id", "document", "deleted", "vhi", "vlo", "op", "source_ts", "latest"]
_LOW_BITS = 32
_LOW_MASK = (1 << _LOW_BITS) - 1


class Fenced(TerminalError):
    """Another warp process took over this schema (its epoch is newer): this one must stop."""


class RangeLanded(TerminalError):
    """A snapshot key range is marked landed already: applying it again would copy it twice."""


@dataclass(frozen=True, slots=True)
class Wipe:
    """Mark every row of ``collection`` older than ``version`` deleted (drop, a re-snapshot's
    sweep of documents that no longer exist, a PostgreSQL ``TRUNCATE``)."""

    collection: str
    version: int
    op: Literal["drop", "sweep", "truncate"]


#: The columns a source's COPY rows fill, in this order (the others take their defaults).
COPY_COLUMNS = (
    "_id",
    "document",
    "_cartridge_deleted",
    "_cartridge_version",
    "_cartridge_op",
    "_cartridge_source_ts",
)
#: PostgreSQL's binary COPY header (signature, flags, no extension) and trailer.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_PG_EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
#: A binary COPY stream's header (signature, flags 0, no extension) and trailer.
COPY_HEADER = COPY_SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
COPY_TRAILER = b"\xff\xff"
_FIELD = struct.Struct("!i")


def copy_tail(version: int, op: str, source_ts: dt.datetime | None) -> bytes:
    """The fields of :data:`COPY_COLUMNS` after ``_id`` and ``document`` in binary COPY
    format, for rows of a live document: ``_cartridge_deleted`` false, the version, the op
    and the source timestamp (the same for every row of a snapshot page)."""
    number = NumericCodec().encode(version)
    opb = op.encode()
    out = [_FIELD.pack(1), b"\x00", _FIELD.pack(len(number)), number, _FIELD.pack(len(opb)), opb]
    if source_ts is None:
        out.append(_FIELD.pack(-1))
    else:
        delta = source_ts - _PG_EPOCH
        micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        out += [_FIELD.pack(8), struct.pack("!q", micros)]
    return b"".join(out)


@dataclass
class CopyRows:
    """Snapshot rows of one collection as the source server wrote them: PostgreSQL's binary
    COPY format of :data:`COPY_COLUMNS` (the document as ``jsonb``'s binary form, version 1
    then the JSON text). The sink COPYs them into the raw table as they are (no Python object
    per row). ``version`` is every row's version."""

    collection: str
    data: bytes
    rows: int
    version: int

    def changes(self) -> list[Change]:
        """The same rows as :class:`Change`s, for the staged merge (a raw table with history,
        or rows the COPY could not land as they are)."""
        data = self.data
        if not data.startswith(COPY_SIGNATURE):
            raise TerminalError(f"snapshot rows of {self.collection!r} are not in binary COPY")
        pos = len(COPY_SIGNATURE) + 4
        (extension,) = struct.unpack_from("!i", data, pos)
        pos += 4 + extension
        out: list[Change] = []
        while True:
            (count,) = struct.unpack_from("!h", data, pos)
            pos += 2
            if count == -1:
                return out
            if count != len(COPY_COLUMNS):
                raise TerminalError(
                    f"snapshot rows of {self.collection!r} have {count} fields, "
                    f"not {len(COPY_COLUMNS)}"
                )
            fields: list[bytes | None] = []
            for _ in range(count):
                (size,) = struct.unpack_from("!i", data, pos)
                pos += 4
                if size < 0:
                    fields.append(None)
                    continue
                fields.append(data[pos : pos + size])
                pos += size
            doc_id, document, _deleted, _version, op, source_ts = fields
            ts = None
            if source_ts is not None:
                (micros,) = struct.unpack("!q", source_ts)
                ts = _PG_EPOCH + dt.timedelta(microseconds=micros)
            out.append(
                Change(
                    self.collection,
                    (doc_id or b"").decode(),
                    (op or b"snapshot").decode(),  # type: ignore[arg-type]
                    self.version,
                    document[1:] if document is not None else None,  # after jsonb's version
                    ts,
                )
            )


@dataclass(frozen=True, slots=True)
class KeyRange:
    """Rows with ``lo < key <= hi`` of a one-column primary key (texts; None: unbounded),
    number ``seq`` of its table's snapshot plan."""

    seq: int
    lo: str | None
    hi: str | None


@dataclass(frozen=True, slots=True)
class RangePlan:
    """A table's initial snapshot split in key ranges (together: the whole key space)."""

    collection: str
    version: int
    ranges: tuple[KeyRange, ...]


@dataclass(frozen=True, slots=True)
class RangeMark:
    """The batch holds range ``seq`` of ``collection``'s plan for ``version``, whole."""

    collection: str
    version: int
    seq: int


@dataclass
class Batch:
    """What the reader hands the writer: changes, dead letters and the position after them."""

    changes: list[Change] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    token: Mapping[str, Any] | None = None
    version: int | None = None
    snapshot: dict[str, dict[str, Any]] | None = None
    wipes: list[Wipe] = field(default_factory=list)
    source_ts: dt.datetime | None = None
    events: int = 0
    kind: Literal["snapshot", "stream", "idle", "reset"] = "stream"
    #: ``kind == "reset"``: replace the snapshot plan instead of merging into it.
    #: Initial-snapshot rows past the committed ``_id`` cursor cannot be in the table yet:
    #: they may be COPYed straight in (a conflict falls back to the staged merge).
    direct_copy: bool = False
    #: What the value policies changed in this batch's documents, per collection (counted
    #: with the batch, so a replayed batch counts once).
    policy: dict[str, ConversionStats] = field(default_factory=dict)
    #: A snapshot batch: how far its collection's copy is (``copied``, ``total`` — an
    #: estimate —, ``rows_per_s``, ``eta_s``), for logs and asset metadata.
    progress: dict[str, Any] | None = None
    created: float = field(default_factory=time.monotonic)
    read_at: float = field(default_factory=time.time)
    #: Snapshot rows already in COPY format (beside ``changes``, which then hold the rows the
    #: source's Python conversion had to take).
    copy: CopyRows | None = None
    #: A table's snapshot plan of key ranges, committed before any range lands.
    range_plan: RangePlan | None = None
    #: This batch is one whole range of a plan: applied by :meth:`Sink.apply_range`.
    key_range: RangeMark | None = None
    #: ``(collection, version)``: its ranges are all landed; the plan goes, its rows are counted.
    ranges_finished: tuple[str, int] | None = None
    #: Set by the runner's writer once the batch is committed (a plan's barrier).
    committed: asyncio.Event | None = None

    def __len__(self) -> int:
        return len(self.changes) + len(self.dead) + (self.copy.rows if self.copy else 0)

    def collections(self) -> list[str]:
        names = {c.collection for c in self.changes}
        if self.copy is not None:
            names.add(self.copy.collection)
        names.update(w.collection for w in self.wipes)
        if self.range_plan is not None:
            names.add(self.range_plan.collection)
        return sorted(names)


@dataclass
class BatchResult:
    applied: Counter[str] = field(default_factory=Counter)  # per collection
    ops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (collection, op)
    dead_letters: Counter[str] = field(default_factory=Counter)
    poisoned: int = 0
    wiped: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    checkpoint_seconds: float = 0.0  # of ``seconds``: the checkpoint and per-table progress


@dataclass
class Checkpoint:
    schema_name: str
    epoch: int
    resume_token: dict[str, Any] | None
    version: int
    snapshot: dict[str, dict[str, Any]]
    events_applied: int
    last_source_ts: dt.datetime | None
    updated_at: dt.datetime | None

    @property
    def snapshot_done(self) -> bool:
        return bool(self.snapshot) and all(s.get("done") for s in self.snapshot.values())


def _jsonb_encode(value: Any) -> bytes:
    if isinstance(value, bytes):
        return b"\x01" + value
    if isinstance(value, str):
        return b"\x01" + value.encode("utf-8")
    return b"\x01" + orjson.dumps(value)


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def setup_jsonb_codec(conn: asyncpg.Connection) -> None:
    """``jsonb`` in binary: JSON bytes go to the server without a decode/encode round trip."""
    await conn.set_type_codec(
        "jsonb",
        encoder=_jsonb_encode,
        decoder=_jsonb_decode,
        schema="pg_catalog",
        format="binary",
    )


_NUMERIC_HEADER = struct.Struct("!hhHh")  # ndigits, weight, sign, dscale
_NUMERIC_NEG, _NUMERIC_NAN = 0x4000, 0xC000


class NumericCodec:
    """``numeric`` in binary for the sink's connection, which only sends integers (versions).

    Snapshot rows of one batch share one version, so the last encoding is kept: a COPY of
    thousands of rows encodes it once instead of once per row (asyncpg's general encoder goes
    through ``Decimal``). Decoding gives ``int`` for integral values, ``Decimal`` otherwise."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._last_bytes = b""

    def encode(self, value: Any) -> bytes:
        if type(value) is not int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"numeric parameter must be an int, got {type(value).__name__}")
            value = int(value)
        if value == self._last:
            return self._last_bytes
        rest = -value if value < 0 else value
        groups: list[int] = []  # base-10000 digits, least significant first
        while rest:
            rest, digit = divmod(rest, 10000)
            groups.append(digit)
        weight = len(groups) - 1
        skip = 0
        while skip < len(groups) and groups[skip] == 0:  # trailing zero groups are implied
            skip += 1
        digits = groups[skip:][::-1]
        out = _NUMERIC_HEADER.pack(
            len(digits), weight if digits else 0, _NUMERIC_NEG if value < 0 else 0, 0
        ) + struct.pack(f"!{len(digits)}h", *digits)
        self._last, self._last_bytes = value, out
        return out

    @staticmethod
    def decode(data: bytes) -> int | Decimal:
        ndigits, weight, sign, dscale = _NUMERIC_HEADER.unpack_from(data)
        if sign == _NUMERIC_NAN:
            return Decimal("NaN")
        digits = struct.unpack_from(f"!{ndigits}h", data, _NUMERIC_HEADER.size)
        text = "".join(f"{d:04d}" for d in digits) or "0"
        exponent = 4 * (weight - ndigits + 1)
        number = Decimal(f"{'-' if sign == _NUMERIC_NEG else ''}{text}E{exponent}")
        if dscale == 0 and number == number.to_integral_value():
            return int(number)
        return number.quantize(Decimal(1).scaleb(-dscale))


async def setup_numeric_codec(conn: asyncpg.Connection) -> None:
    codec = NumericCodec()
    await conn.set_type_codec(
        "numeric", encoder=codec.encode, decoder=codec.decode, schema="pg_catalog", format="binary"
    )


def _row_to_checkpoint(row: asyncpg.Record) -> Checkpoint:
    return Checkpoint(
        schema_name=row["schema_name"],
        epoch=int(row["epoch"]),
        resume_token=row["resume_token"],
        version=int(row["version"]),
        snapshot=dict(row["snapshot"] or {}),
        events_applied=int(row["events_applied"]),
        last_source_ts=row["last_source_ts"],
        updated_at=row["updated_at"],
    )


def _is_data_error(exc: BaseException) -> bool:
    """A PostgreSQL error caused by the rows themselves (not the connection): bisect it."""
    return isinstance(exc, asyncpg.PostgresError) and classify(exc) is TerminalError


class Sink:
    """Writes batches for one schema. One connection, one transaction per batch."""

    def __init__(
        self,
        url: str,
        schema: SchemaConfig,
        *,
        owner: str = "",
        timeout: float = 10.0,
        command_timeout: float = 300.0,
    ) -> None:
        self.url = url
        self.schema = schema
        self.name = schema.name
        self.raw_schema = schema.raw_schema
        self.owner = owner
        self.timeout = timeout
        self.command_timeout = command_timeout
        self.epoch: int | None = None
        self.conn: asyncpg.Connection | None = None
        self._tables: dict[str, str] = {}  # collection → raw table name (after commit)
        self._history: dict[str, str] = {}
        self._cs = quote_ident(CONTROL_SCHEMA)
        self._merge_sql: dict[str, list[str]] = {}

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> asyncpg.Connection:
        if self.conn is not None and not self.conn.is_closed():
            return self.conn
        from cartridge_dagster.connectors.postgres import connect  # asyncpg: see the imports

        conn = await connect(self.url, timeout=self.timeout, command_timeout=self.command_timeout)
        await setup_jsonb_codec(conn)
        await setup_numeric_codec(conn)
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {quote_ident(STAGE)} ("
            "coll text NOT NULL, _id text NOT NULL, document jsonb, deleted boolean NOT NULL, "
            # versions travel as two bigints (cheap to encode); the server puts them together
            "vhi bigint NOT NULL, vlo bigint NOT NULL, version numeric(39,0) GENERATED ALWAYS "
            f"AS (vhi::numeric * {1 << _LOW_BITS} + vlo) STORED, op text NOT NULL, "
            "source_ts timestamptz, latest boolean NOT NULL) ON COMMIT DELETE ROWS"
        )
        self.conn = conn
        return conn

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                conn.terminate()

    def drop_connection(self) -> None:
        """Forget a broken connection (the next call reconnects)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def setup(self) -> None:
        """Create the control tables (idempotent; concurrent callers serialise on a lock).

        One round trip: the statements go as one script (the simple query protocol)."""
        conn = await self.connect()
        script = ";\n".join(
            ["SELECT pg_advisory_xact_lock(hashtext('cartridge_warp.setup'))", *control_ddl()]
        )
        async with conn.transaction():
            await conn.execute(script)

    async def acquire(self) -> Checkpoint:
        """Take the schema over: bump the fencing epoch. Returns the stored checkpoint."""
        conn = await self.connect()
        row = await conn.fetchrow(
            f"INSERT INTO {self._cs}.checkpoints AS c (schema_name, epoch, owner) "
            "VALUES ($1, 1, $2) ON CONFLICT (schema_name) DO UPDATE "
            "SET epoch = c.epoch + 1, owner = EXCLUDED.owner, updated_at = now() RETURNING *",
            self.name,
            self.owner,
        )
        assert row is not None
        cp = _row_to_checkpoint(row)
        self.epoch = cp.epoch
        rows = await conn.fetch(
            f"SELECT collection, table_name, history_table FROM {self._cs}.name_map "
            "WHERE schema_name = $1",
            self.name,
        )
        for r in rows:
            self._tables[r["collection"]] = r["table_name"]
            if r["history_table"]:
                self._history[r["collection"]] = r["history_table"]
        # Plan the per-batch statements once, at start: the batch path reuses them.
        for reset in (False, True):
            await conn.prepare(self._checkpoint_sql(reset=reset))
        await conn.prepare(self._fence_sql())
        log.info("warp.fence.acquired", schema=self.name, epoch=self.epoch)
        return cp

    async def checkpoint(self) -> Checkpoint | None:
        conn = await self.connect()
        row = await conn.fetchrow(
            f"SELECT * FROM {self._cs}.checkpoints WHERE schema_name = $1", self.name
        )
        return _row_to_checkpoint(row) if row is not None else None

    # ------------------------------------------------------------------ tables

    async def _ensure_table(self, conn: asyncpg.Connection, collection: str) -> bool:
        """Create the raw (and history) table inside the current transaction. New → True."""
        if collection in self._tables:
            return False
        table = raw_table_name(collection)
        for stmt in raw_table_ddl(self.raw_schema, collection):
            await conn.execute(stmt)
        history = None
        if self.schema.table(collection).history:
            history = history_table_name(collection)
            for stmt in history_table_ddl(self.raw_schema, collection):
                await conn.execute(stmt)
        await conn.execute(
            f"INSERT INTO {self._cs}.name_map (schema_name, collection, raw_schema, table_name, "
            "history_table) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (schema_name, collection) "
            "DO UPDATE SET table_name = EXCLUDED.table_name, "
            "history_table = EXCLUDED.history_table, raw_schema = EXCLUDED.raw_schema",
            self.name,
            collection,
            self.raw_schema,
            table,
            history,
        )
        return True

    def _sql(self, collection: str) -> list[str]:
        """Merge statements for one table ($1 = collection, $2 = schema name)."""
        cached = self._merge_sql.get(collection)
        if cached is not None:
            return cached
        table = qualified(self.raw_schema, raw_table_name(collection))
        stage = quote_ident(STAGE)
        cs = self._cs
        cols = (
            '"_id", "document", "_cartridge_deleted", "_cartridge_version", "_cartridge_op", '
            '"_cartridge_source_ts", "_cartridge_synced_at"'
        )
        update = (
            'ON CONFLICT ("_id") DO UPDATE SET "document" = EXCLUDED."document", '
            '"_cartridge_deleted" = EXCLUDED."_cartridge_deleted", '
            '"_cartridge_version" = EXCLUDED."_cartridge_version", '
            '"_cartridge_op" = EXCLUDED."_cartridge_op", '
            '"_cartridge_source_ts" = EXCLUDED."_cartridge_source_ts", '
            '"_cartridge_synced_at" = EXCLUDED."_cartridge_synced_at" '
            'WHERE t."_cartridge_version" <= EXCLUDED."_cartridge_version"'
        )
        hard = self.schema.table(collection).delete_mode == "hard"
        stmts: list[str] = []
        if not hard:
            stmts.append(
                f"INSERT INTO {table} AS t ({cols}) "
                "SELECT s._id, s.document, s.deleted, s.version, s.op, s.source_ts, now() "
                f"FROM {stage} s WHERE s.coll = $1 AND s.latest AND $2::text IS NOT NULL "
                f"{update}"
            )
        else:
            stmts.append(
                f"INSERT INTO {table} AS t ({cols}) "
                "SELECT s._id, s.document, false, s.version, s.op, s.source_ts, now() "
                f"FROM {stage} s WHERE s.coll = $1 AND s.latest AND NOT s.deleted "
                f"AND NOT EXISTS (SELECT 1 FROM {cs}.tombstones tb WHERE tb.schema_name = $2 "
                "AND tb.collection = $1 AND tb._id = s._id AND tb.version >= s.version) "
                f"{update}"
            )
            stmts.append(
                f"WITH gone AS (DELETE FROM {table} t USING {stage} s "
                "WHERE s.coll = $1 AND s.latest AND s.deleted AND t._id = s._id "
                'AND t."_cartridge_version" <= s.version RETURNING t._id) '
                f"INSERT INTO {cs}.tombstones AS tb (schema_name, collection, _id, version) "
                f"SELECT $2, $1, s._id, s.version FROM {stage} s "
                "WHERE s.coll = $1 AND s.latest AND s.deleted AND (SELECT count(*) FROM gone) >= 0 "
                "ON CONFLICT (schema_name, collection, _id) DO UPDATE "
                "SET version = GREATEST(tb.version, EXCLUDED.version)"
            )
        history = self._history.get(collection) or (
            history_table_name(collection) if self.schema.table(collection).history else None
        )
        if history is not None:
            stmts.append(
                f"INSERT INTO {qualified(self.raw_schema, history)} ({cols}) "
                "SELECT s._id, s.document, s.deleted, s.version, s.op, s.source_ts, now() "
                f"FROM {stage} s WHERE s.coll = $1 AND $2::text IS NOT NULL "
                'ON CONFLICT ("_id", "_cartridge_version") DO NOTHING'
            )
        self._merge_sql[collection] = stmts
        return stmts

    # ------------------------------------------------------------------ apply

    async def _stage_and_merge(self, conn: asyncpg.Connection, changes: Sequence[Change]) -> None:
        latest = dedup_latest(changes)
        history_colls = {
            c
            for c in {ch.collection for ch in changes}
            if self._history.get(c) or self.schema.table(c).history
        }
        records = [
            (
                ch.collection,
                ch.id,
                ch.document,
                ch.document is None,
                ch.version >> _LOW_BITS,
                ch.version & _LOW_MASK,
                ch.op,
                ch.source_ts,
                flag,
            )
            for ch, flag in zip(changes, latest, strict=True)
            if flag or ch.collection in history_colls
        ]
        await conn.execute(f"TRUNCATE {quote_ident(STAGE)}")
        await conn.copy_records_to_table(STAGE, records=records, columns=_STAGE_COLUMNS)
        for collection in sorted({ch.collection for ch in changes}):
            for stmt in self._sql(collection):
                await conn.execute(stmt, collection, self.name)

    async def _apply_isolating(
        self, conn: asyncpg.Connection, changes: list[Change]
    ) -> list[tuple[Change, BaseException]]:
        """Apply ``changes``; bisect to find the rows PostgreSQL rejects. Returns the poison."""
        return await _isolating(conn, changes, lambda part: self._stage_and_merge(conn, part))

    async def _direct_copy(self, conn: asyncpg.Connection, changes: Sequence[Change]) -> bool:
        """COPY rows straight into their raw tables (no staging, no merge) under a savepoint.

        Only for rows that cannot exist yet (the initial snapshot past its committed cursor).
        Any conflict or rejected row rolls the savepoint back and returns False: the caller
        then runs the staged merge, which dedups, guards versions and isolates poison."""
        if not changes:
            return True
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for collection in {ch.collection for ch in changes}:
            if self._history.get(collection) or self.schema.table(collection).history:
                return False
            by_table[collection] = []
        for ch in changes:
            by_table[ch.collection].append(
                (ch.id, ch.document, ch.document is None, ch.version, ch.op, ch.source_ts)
            )
        try:
            async with conn.transaction():
                for collection, records in by_table.items():
                    await conn.copy_records_to_table(
                        raw_table_name(collection),
                        schema_name=self.raw_schema,
                        records=records,
                        columns=list(COPY_COLUMNS),
                    )
            return True
        except asyncpg.PostgresError as exc:
            if not _is_data_error(exc):
                raise
            return False

    async def _copy_isolating(
        self, conn: asyncpg.Connection, changes: list[Change]
    ) -> list[tuple[Change, BaseException]]:
        """COPY ``changes`` (rows that cannot exist yet) under savepoints, bisecting to find
        the rows PostgreSQL rejects. Returns the poison."""

        async def copy(part: list[Change]) -> None:
            await conn.copy_records_to_table(
                raw_table_name(part[0].collection),
                schema_name=self.raw_schema,
                records=[
                    (ch.id, ch.document, ch.document is None, ch.version, ch.op, ch.source_ts)
                    for ch in part
                ],
                columns=list(COPY_COLUMNS),
            )

        return await _isolating(conn, changes, copy)

    async def _copy_in(self, conn: asyncpg.Connection, rows: CopyRows) -> bool:
        """COPY a source's rows into their raw table as they are, under a savepoint (only
        rows that cannot exist yet: see :meth:`_direct_copy`). False: nothing landed, the
        caller merges them instead."""
        collection = rows.collection
        if self._history.get(collection) or self.schema.table(collection).history:
            return False
        if not rows.rows:
            return True
        try:
            async with conn.transaction():
                await conn.copy_to_table(
                    raw_table_name(collection),
                    schema_name=self.raw_schema,
                    source=memoryview(rows.data),  # bytes would be taken for a path
                    columns=list(COPY_COLUMNS),
                    format="binary",
                )
            return True
        except asyncpg.PostgresError as exc:
            if not _is_data_error(exc):
                raise
            return False

    async def _insert_dead(self, conn: asyncpg.Connection, dead: Sequence[DeadLetter]) -> None:
        if not dead:
            return
        await conn.executemany(
            f"INSERT INTO {self._cs}.dead_letters (schema_name, collection, document_id, "
            "version, op, error_class, error_message, raw_event, raw_event_json, resume_token) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [
                (
                    self.name,
                    d.collection,
                    d.document_id,
                    d.version,
                    d.op,
                    d.error_class,
                    d.error_message.replace("\x00", "\\u0000"),
                    d.raw_event,
                    event_summary(d.raw_event),
                    orjson.dumps(d.token) if d.token is not None else None,
                )
                for d in dead
            ],
        )

    async def _wipe(self, conn: asyncpg.Connection, wipe: Wipe) -> int:
        table = qualified(self.raw_schema, raw_table_name(wipe.collection))
        if self.schema.table(wipe.collection).delete_mode == "hard":
            status = await conn.execute(
                f"WITH gone AS (DELETE FROM {table} t WHERE t._cartridge_version < $1 "
                "RETURNING t._id) "
                f"INSERT INTO {self._cs}.tombstones AS tb (schema_name, collection, _id, version) "
                "SELECT $2, $3, _id, $1 FROM gone ON CONFLICT (schema_name, collection, _id) "
                "DO UPDATE SET version = GREATEST(tb.version, EXCLUDED.version)",
                wipe.version,
                self.name,
                wipe.collection,
            )
        else:
            status = await conn.execute(
                f"UPDATE {table} SET document = NULL, _cartridge_deleted = true, "
                "_cartridge_version = $1, _cartridge_op = $2, _cartridge_synced_at = now() "
                "WHERE _cartridge_version < $1 AND NOT _cartridge_deleted",
                wipe.version,
                wipe.op,
            )
        return int(status.rsplit(" ", 1)[-1])

    async def _count_policies(
        self, conn: asyncpg.Connection, policy: Mapping[str, ConversionStats]
    ) -> None:
        rows = [
            (collection, case, path, n)
            for collection, stats in sorted(policy.items())
            for case, by_path in stats.as_dict().items()
            for path, n in by_path.items()
        ]
        if not rows:
            return
        await conn.execute(
            f"INSERT INTO {self._cs}.policy_counts AS p (schema_name, collection, policy, path, n) "
            "SELECT $1, c, k, pa, n FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[]) "
            "AS u(c, k, pa, n) ON CONFLICT (schema_name, collection, policy, path) "
            "DO UPDATE SET n = p.n + EXCLUDED.n, updated_at = now()",
            self.name,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2].replace("\x00", "") for r in rows],
            [r[3] for r in rows],
        )

    def _fence_sql(self) -> str:
        return f"SELECT epoch FROM {self._cs}.checkpoints WHERE schema_name = $1 FOR UPDATE"

    async def _check_fence(self, conn: asyncpg.Connection) -> None:
        if self.epoch is None:
            raise TerminalError("the sink has not acquired its schema (call acquire() first)")
        current = await conn.fetchval(self._fence_sql(), self.name)
        if current != self.epoch:
            raise self._fenced(current)

    def _fenced(self, current: int | None) -> Fenced:
        return Fenced(
            f"schema {self.name!r} was taken over by another warp process "
            f"(epoch {current}, this process {self.epoch}); this one stops without "
            "committing",
            hint="run one warp process per schema (Dagster's warp sensor keeps exactly one)",
        )

    async def apply(self, batch: Batch) -> BatchResult:
        """Apply ``batch`` and its checkpoint in one transaction."""
        started = time.perf_counter()
        conn = await self.connect()
        result = BatchResult()
        new_tables: list[str] = []
        try:
            async with conn.transaction():
                await self._check_fence(conn)
                for collection in batch.collections():
                    if await self._ensure_table(conn, collection):
                        new_tables.append(collection)
                        self._tables[collection] = raw_table_name(collection)
                        if self.schema.table(collection).history:
                            self._history[collection] = history_table_name(collection)
                copied = 0
                if batch.copy is not None:
                    if batch.direct_copy and await self._copy_in(conn, batch.copy):
                        copied = batch.copy.rows
                    else:  # the staged merge (history, or a row the COPY refused)
                        batch.changes.extend(batch.copy.changes())
                        batch.copy = None
                if batch.direct_copy and await self._direct_copy(conn, batch.changes):
                    poison = []
                else:
                    poison = await self._apply_isolating(conn, batch.changes)
                dead = list(batch.dead)
                bad = {id(ch) for ch, _ in poison}
                for ch, exc in poison:
                    dead.append(_poison_letter(ch, exc))
                await self._insert_dead(conn, dead)
                for wipe in batch.wipes:
                    result.wiped[wipe.collection] += await self._wipe(conn, wipe)
                top = _tally(batch.changes, bad, result)
                if copied and batch.copy is not None:
                    name = batch.copy.collection
                    result.applied[name] += copied
                    result.ops[(name, "snapshot")] += copied
                    top[name] = max(top.get(name, -1), batch.copy.version)
                await self._count_policies(conn, batch.policy)
                cp_started = time.perf_counter()
                if batch.range_plan is not None:
                    plan = batch.range_plan
                    await self._insert_plan(conn, plan)
                    if plan.collection in new_tables and plan.collection not in self._history:
                        # landing empty: the key's index is built once, when the copy ends
                        await self._drop_key(conn, plan.collection)
                if batch.ranges_finished is not None:
                    await self._finish_ranges(conn, *batch.ranges_finished)
                await self._write_checkpoint(conn, batch, result, top)
                result.checkpoint_seconds = time.perf_counter() - cp_started
        except BaseException:
            for collection in new_tables:  # the DDL rolled back with the batch
                self._tables.pop(collection, None)
                self._history.pop(collection, None)
                self._merge_sql.pop(collection, None)
            raise
        result.poisoned = len(poison)
        for d in dead:
            result.dead_letters[d.collection] += 1
        result.seconds = time.perf_counter() - started
        return result

    # ------------------------------------------------------------------ key ranges

    async def _insert_plan(self, conn: asyncpg.Connection, plan: RangePlan) -> None:
        await conn.execute(
            f"INSERT INTO {self._cs}.snapshot_ranges (schema_name, collection, version, seq, "
            "lo, hi) SELECT $1, $2, $3, u.seq, u.lo, u.hi FROM unnest($4::int[], $5::text[], "
            "$6::text[]) AS u(seq, lo, hi) ON CONFLICT DO NOTHING",
            self.name,
            plan.collection,
            plan.version,
            [r.seq for r in plan.ranges],
            [r.lo for r in plan.ranges],
            [r.hi for r in plan.ranges],
        )

    async def _key_constraint(self, conn: asyncpg.Connection, collection: str) -> str | None:
        """The name of the raw table's primary key constraint; None while it has none."""
        name: str | None = await conn.fetchval(
            "SELECT conname FROM pg_catalog.pg_constraint WHERE conrelid = $1::regclass "
            "AND contype = 'p'",
            qualified(self.raw_schema, raw_table_name(collection)),
        )
        return name

    async def _drop_key(self, conn: asyncpg.Connection, collection: str) -> None:
        """Drop the primary key of a raw table created in this transaction (its snapshot
        lands empty, by ranges): :meth:`_finish_ranges` adds it back. A table that was there
        already with rows (its control rows removed by hand) keeps its key: its ranges'
        COPYs then meet the rows and merge."""
        name = await self._key_constraint(conn, collection)
        table = qualified(self.raw_schema, raw_table_name(collection))
        if name is not None and not await conn.fetchval(f"SELECT EXISTS (SELECT FROM {table})"):
            await conn.execute(f"ALTER TABLE {table} DROP CONSTRAINT {quote_ident(name)}")

    async def _finish_ranges(self, conn: asyncpg.Connection, collection: str, version: int) -> None:
        """The plan of ``collection`` goes; its landed rows count in the table's and the
        schema's progress (range writers leave both rows alone: they would wait on each other);
        a table that landed without its primary key gets it (a duplicate ``_id`` would fail
        the batch: exactly-once means there is none)."""
        if await self._key_constraint(conn, collection) is None:
            table = qualified(self.raw_schema, raw_table_name(collection))
            await conn.execute(f'ALTER TABLE {table} ADD PRIMARY KEY ("_id")')
        await conn.execute(
            f"WITH r AS (DELETE FROM {self._cs}.snapshot_ranges WHERE schema_name = $1 "
            "AND collection = $2 RETURNING version, done, rows), "
            "n AS (SELECT COALESCE(sum(rows) FILTER (WHERE done AND version = $3), 0)::bigint "
            "AS n FROM r), "
            f"t AS (UPDATE {self._cs}.name_map nm SET events_applied = nm.events_applied + n.n, "
            "version = GREATEST(nm.version, $3), updated_at = now() FROM n "
            "WHERE nm.schema_name = $1 AND nm.collection = $2 RETURNING 1) "
            f"UPDATE {self._cs}.checkpoints c SET events_applied = c.events_applied + n.n "
            "FROM n WHERE c.schema_name = $1",
            self.name,
            collection,
            version,
        )

    async def pending_ranges(self, collection: str, version: int) -> tuple[list[KeyRange], int]:
        """The ranges of ``collection``'s plan for ``version`` not landed yet, in plan order,
        and the rows the landed ones hold. On a connection of its own (the reader asks while
        this sink's writer may be applying a batch)."""
        from cartridge_dagster.connectors.postgres import connect

        conn = await connect(self.url, timeout=self.timeout, command_timeout=self.command_timeout)
        try:
            rows = await conn.fetch(
                f"SELECT seq, lo, hi, done, rows FROM {self._cs}.snapshot_ranges "
                "WHERE schema_name = $1 AND collection = $2 AND version = $3 ORDER BY seq",
                self.name,
                collection,
                version,
            )
        finally:
            await conn.close()
        pending = [KeyRange(int(r["seq"]), r["lo"], r["hi"]) for r in rows if not r["done"]]
        return pending, sum(int(r["rows"]) for r in rows if r["done"])

    async def apply_range(self, batch: Batch) -> BatchResult:
        """Land one whole key range of a snapshot plan in one transaction with its mark.

        The fence is read under a shared lock (other range writers go on; an epoch bump
        waits). The mark must move from not done to done: a range landed already (a replay)
        rolls the whole transaction back with :class:`RangeLanded`."""
        mark = batch.key_range
        if mark is None:
            raise TerminalError("apply_range() takes a batch of one key range")
        started = time.perf_counter()
        conn = await self.connect()
        result = BatchResult()
        async with conn.transaction():
            if self.epoch is None:
                raise TerminalError("the sink has not acquired its schema (call acquire() first)")
            current = await conn.fetchval(
                f"SELECT epoch FROM {self._cs}.checkpoints WHERE schema_name = $1 FOR SHARE",
                self.name,
            )
            if current != self.epoch:
                raise self._fenced(current)
            copied = 0
            if batch.copy is not None:
                if await self._copy_in(conn, batch.copy):
                    copied = batch.copy.rows
                else:
                    batch.changes.extend(batch.copy.changes())
                    batch.copy = None
            if await self._direct_copy(conn, batch.changes):
                poison = []
            elif await self._key_constraint(conn, mark.collection) is None:
                # no key to merge on while the table lands empty: COPY, bisecting the poison
                poison = await self._copy_isolating(conn, batch.changes)
            else:
                poison = await self._apply_isolating(conn, batch.changes)
            dead = list(batch.dead)
            bad = {id(ch) for ch, _ in poison}
            dead.extend(_poison_letter(ch, exc) for ch, exc in poison)
            await self._insert_dead(conn, dead)
            _tally(batch.changes, bad, result)
            if copied and batch.copy is not None:
                result.applied[mark.collection] += copied
                result.ops[(mark.collection, "snapshot")] += copied
            await self._count_policies(conn, batch.policy)
            status = await conn.execute(
                f"UPDATE {self._cs}.snapshot_ranges SET done = true, rows = $5 "
                "WHERE schema_name = $1 AND collection = $2 AND version = $3 AND seq = $4 "
                "AND NOT done",
                self.name,
                mark.collection,
                mark.version,
                mark.seq,
                sum(result.applied.values()),
            )
            if status != "UPDATE 1":
                raise RangeLanded(
                    f"range {mark.seq} of {mark.collection!r} is landed already (or not planned)"
                )
        result.poisoned = len(poison)
        for d in dead:
            result.dead_letters[d.collection] += 1
        result.seconds = time.perf_counter() - started
        return result

    def _checkpoint_sql(self, *, reset: bool) -> str:
        snapshot_sql = "snapshot = $5::jsonb, " if reset else "snapshot = snapshot || $5::jsonb, "
        return (
            f"WITH tables AS (UPDATE {self._cs}.name_map nm SET "
            "version = GREATEST(nm.version, u.version), "
            "events_applied = nm.events_applied + u.n, "
            "last_source_ts = COALESCE($7, nm.last_source_ts), updated_at = now() "
            "FROM unnest($8::text[], $9::numeric[], $10::bigint[]) AS u(collection, version, n) "
            "WHERE nm.schema_name = $1 AND nm.collection = u.collection RETURNING 1) "
            f"UPDATE {self._cs}.checkpoints SET "
            "resume_token = COALESCE($3::jsonb, resume_token), "
            "version = GREATEST(version, $4), "
            + snapshot_sql
            + "events_applied = events_applied + $6, "
            "last_source_ts = COALESCE($7, last_source_ts), "
            "updated_at = now() WHERE schema_name = $1 AND epoch = $2"
        )

    async def _write_checkpoint(
        self, conn: asyncpg.Connection, batch: Batch, result: BatchResult, top: dict[str, int]
    ) -> None:
        per_table = result.applied
        names = sorted(per_table)
        # One round trip: per-table progress and the checkpoint row, in the batch transaction.
        status = await conn.execute(
            self._checkpoint_sql(reset=batch.kind == "reset"),
            self.name,
            self.epoch,
            orjson.dumps(dict(batch.token)) if batch.token is not None else None,
            batch.version or 0,
            orjson.dumps(batch.snapshot or {}),
            sum(per_table.values()),
            batch.source_ts,
            names,
            [top[n] for n in names],
            [per_table[n] for n in names],
        )
        if status != "UPDATE 1":
            raise Fenced(f"schema {self.name!r}: checkpoint row lost its epoch {self.epoch}")


_OPS_KEY = attrgetter("collection", "op")
_VERSION = attrgetter("version")


def _tally(changes: Sequence[Change], bad: set[int], result: BatchResult) -> dict[str, int]:
    """Fill ``result.applied`` and ``result.ops`` for the landed changes (poison excluded) and
    return the highest version per collection. C-level iteration: a batch is thousands of rows."""
    landed = [ch for ch in changes if id(ch) not in bad] if bad else changes
    ops: Counter[tuple[str, str]] = Counter(map(_OPS_KEY, landed))
    applied: Counter[str] = Counter()
    for (collection, _op), n in ops.items():
        applied[collection] += n
    result.ops, result.applied = ops, applied
    if len(applied) == 1:
        return {next(iter(applied)): max(map(_VERSION, landed))}
    top: dict[str, int] = {}
    for ch in landed:
        if ch.version > top.get(ch.collection, -1):
            top[ch.collection] = ch.version
    return top


def _poison_letter(change: Change, exc: BaseException) -> DeadLetter:
    import bson

    raw: dict[str, Any] = {
        POISON_MARK: True,
        "collection": change.collection,
        "_id": change.id,
        "op": change.op,
        "document": change.document.decode("utf-8", "replace") if change.document else None,
    }
    return DeadLetter(
        collection=change.collection,
        document_id=change.id,
        version=change.version,
        op=change.op,
        error_class=type(exc).__name__,
        error_message=f"PostgreSQL rejected the row: {exc}"[:2000],
        raw_event=bson.encode(raw),
        token=None,
    )


def is_transient(exc: BaseException) -> bool:
    """Whether the writer should retry ``exc`` (connection loss, failover, lock timeouts)."""
    if isinstance(exc, Fenced):
        return False
    if isinstance(exc, asyncpg.InterfaceError):
        return "connection" in str(exc).lower() or "closed" in str(exc).lower()
    return classify(exc) is TransientError


async def _isolating(
    conn: asyncpg.Connection,
    changes: list[Change],
    write: Callable[[list[Change]], Awaitable[Any]],
) -> list[tuple[Change, BaseException]]:
    """``write(changes)`` under a savepoint; on a data error, bisect (each half under its own
    savepoint) down to the rows PostgreSQL rejects. Returns those rows with their errors."""
    if not changes:
        return []
    try:
        async with conn.transaction():  # a savepoint inside the batch transaction
            await write(changes)
        return []
    except asyncpg.PostgresError as exc:
        if not _is_data_error(exc):
            raise
        if len(changes) == 1:
            return [(changes[0], exc)]
        mid = len(changes) // 2
        first = await _isolating(conn, changes[:mid], write)
        return first + await _isolating(conn, changes[mid:], write)
