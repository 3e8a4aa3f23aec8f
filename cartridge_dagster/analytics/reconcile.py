"""Reconciliation of the source against the warehouse.

Per collection: live documents in MongoDB against live rows in the raw table, and a sampled
comparison of canonical document hashes (:func:`documents.canonical_hash` of the converted source
document against the hash of the ``jsonb`` read back). Differences are listed by ``_id``:

- ``missing_in_target``: in the source, no row in the warehouse;
- ``deleted_in_target``: in the source, but the row is a tombstone;
- ``hash_mismatch``: both exist, contents differ;
- ``extra_in_target``: a live row whose document is gone from the source.

A busy stream is in flight, not wrong: differences are re-read once after ``recheck_seconds``
and only those that persist are reported; counts are re-read the same way. The result is within
tolerance when both the count difference and the mismatch ratio are at most
``analytics.reconcile_tolerance``. Only sampled rows ever come into Python.

Reading the source: a MongoDB server samples with ``$sample`` and reads ids in ``$in`` batches
of 500. On the embedded engine (``mongoeco://``) ``$sample`` and ``$in`` scan the collection
(seconds for the demo's 15,000 orders, and ``$in`` fails past about a thousand values) and
``find_one({"_id": …})`` costs about a millisecond: there the sample is drawn from the
warehouse's rows (live and deleted) and read from the engine's SQLite file by key, 500 per query
(:mod:`~cartridge_dagster.connectors.mongoeco_documents`; ``find_one`` for ids of other types or
a file it cannot read); only when the counts differ is a ``$sample`` of the source added, to
name the documents the warehouse lacks. The warehouse side is read in batches of 500 too.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import orjson
from bson import ObjectId

from cartridge_dagster.analytics.store import table
from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.connectors.mongo import MongoConnection, aggregate, bson_options
from cartridge_dagster.connectors.mongoeco_documents import DocumentReader, storage_key
from cartridge_dagster.documents import (
    UnlandableDocument,
    ValuePolicy,
    canonical_hash,
    canonical_id,
    document_json,
)
from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.landing import raw_table_name
from cartridge_dagster.observability import get_logger

__all__ = [
    "Mismatch",
    "Reconciliation",
    "counts_consistent",
    "reconcile_collection",
    "store_reconciliation",
]

log = get_logger(__name__)

MismatchKind = Literal["missing_in_target", "deleted_in_target", "hash_mismatch", "extra_in_target"]

_HEX24 = re.compile(r"^[0-9a-f]{24}$")

#: Ids per query: ``$in`` on a MongoDB server, the embedded engine's file, PostgreSQL.
_IN_BATCH = 500

#: Lookups by id in flight at once on the embedded engine (a quarter faster than one by one).
_LOOKUPS_IN_FLIGHT = 8


@dataclass(frozen=True)
class Mismatch:
    id: str
    kind: MismatchKind
    source_hash: str | None = None
    target_hash: str | None = None


@dataclass
class Reconciliation:
    schema_name: str
    collection: str
    source_count: int
    target_count: int
    sampled: int
    tolerance: float
    mismatches: list[Mismatch] = field(default_factory=list)
    target_exists: bool = True
    unlandable: int = 0
    #: The source count moved while it was read and the target lies between its two readings.
    counts_in_flight: bool = False

    @property
    def count_difference(self) -> int:
        return self.target_count - self.source_count

    @property
    def count_difference_ratio(self) -> float:
        if self.counts_in_flight:
            return 0.0
        if self.source_count == 0:
            return 0.0 if self.target_count == 0 else 1.0
        return abs(self.count_difference) / self.source_count

    @property
    def mismatch_ratio(self) -> float:
        return len(self.mismatches) / self.sampled if self.sampled else 0.0

    @property
    def within_tolerance(self) -> bool:
        return (
            self.count_difference_ratio <= self.tolerance and self.mismatch_ratio <= self.tolerance
        )

    def describe(self) -> str:
        verdict = "within tolerance" if self.within_tolerance else "OUT OF TOLERANCE"
        flight = ", changes in flight" if self.counts_in_flight else ""
        return (
            f"{self.collection}: source {self.source_count}, target {self.target_count} "
            f"(difference {self.count_difference:+d}{flight}); {len(self.mismatches)} of "
            f"{self.sampled} sampled documents differ; {verdict} ({self.tolerance:.2%})"
        )


def counts_consistent(before: int, target: int, after: int) -> bool:
    """Whether ``target`` is a count the source held between two readings of it.

    Live counts move by one per insert or delete; a target count between (inclusive) the source
    count read before and the one read after it is one the source passed through.
    """
    return min(before, after) <= target <= max(before, after)


def _strip_paths(document: dict[str, Any], paths: Iterable[str]) -> dict[str, Any]:
    """Remove excluded field paths (never landed) before hashing, like warp does."""
    for path in paths:
        parts = path.split(".")
        node: Any = document
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(parts[-1], None)
    return document


def _source_id_candidates(canonical: str) -> list[Any]:
    """Source ``_id`` values whose canonical form may be ``canonical``."""
    out: list[Any] = [canonical]
    if _HEX24.match(canonical):
        out.append(ObjectId(canonical))
    elif canonical[:1] in "-0123456789{[" or canonical in ("true", "false"):
        with contextlib.suppress(orjson.JSONDecodeError):
            out.append(orjson.loads(canonical))
    return out


class _Sides:
    """Reads both sides of one collection."""

    #: the embedded engine: lookups by id, one at a time (see the module docstring)
    by_key: bool = False
    #: the warehouse ids the by-id sample read (found in the source or not)
    drawn: tuple[str, ...] = ()
    #: the embedded engine's file, read by key in batches (None: by ``find_one`` only)
    reader: DocumentReader | None = None

    def __init__(
        self,
        mongo: MongoConnection,
        conn: asyncpg.Connection,
        schema: SchemaConfig,
        collection: str,
    ) -> None:
        self.conn = conn
        db = mongo.database(schema.source_database)
        if mongo.kind == "pymongo":
            self.coll = db.get_collection(collection, codec_options=bson_options())
        else:
            self.coll = db[collection]
        self.table = qualified(schema.raw_schema, raw_table_name(collection))
        self.excluded = schema.table(collection).exclude_fields
        self.policy = ValuePolicy(
            nul_in_strings=schema.dead_letter.nul_in_strings,
            non_finite_numbers=schema.dead_letter.non_finite_numbers,
        )
        self.unlandable = 0
        self.by_key = mongo.kind == "mongoeco"
        self.reader = mongo.document_reader() if self.by_key else None
        self.database = schema.source_database
        self.collection = collection

    async def source_count(self) -> int:
        return int(await self.coll.count_documents({}))

    async def target_count(self) -> int:
        return int(
            await self.conn.fetchval(
                f"SELECT count(*) FROM {self.table} WHERE NOT {quote_ident('_cartridge_deleted')}"
            )
        )

    def _hash(self, doc: dict[str, Any]) -> str | None:
        try:
            return canonical_hash(document_json(_strip_paths(doc, self.excluded), self.policy))
        except UnlandableDocument:
            self.unlandable += 1  # dead-lettered by design: not expected in the target
            return None

    async def source_sample(self, size: int) -> dict[str, str | None]:
        if self.by_key:
            rows = await self.conn.fetch(
                f"SELECT {quote_ident('_id')} AS id FROM {self.table} ORDER BY random() LIMIT $1",
                size,
            )
            self.drawn = tuple(str(r["id"]) for r in rows)
            return await self.source_by_ids(self.drawn)
        return await self.scan_sample(size)

    async def scan_sample(self, size: int) -> dict[str, str | None]:
        cursor = await aggregate(self.coll, [{"$sample": {"size": size}}])
        return {canonical_id(doc["_id"]): self._hash(doc) async for doc in cursor}

    async def source_by_ids(self, ids: Sequence[str]) -> dict[str, str | None]:
        found: dict[str, str | None] = {}
        if self.by_key:
            if self.reader is not None:
                found = await self._read_stored(ids)
                ids = [i for i in ids if i not in found]
            gate = asyncio.Semaphore(_LOOKUPS_IN_FLIGHT)

            async def lookup(doc_id: str) -> None:
                # an ObjectId is likelier than the string that looks like one
                for candidate in reversed(_source_id_candidates(doc_id)):
                    async with gate:
                        doc = await self.coll.find_one({"_id": candidate})
                    if doc is not None and canonical_id(doc["_id"]) == doc_id:
                        found[doc_id] = self._hash(doc)
                        return

            await asyncio.gather(*(lookup(i) for i in ids))
            return found
        ids = list(ids)
        wanted = set(ids)
        for start in range(0, len(ids), _IN_BATCH):
            batch = ids[start : start + _IN_BATCH]
            candidates = [c for i in batch for c in _source_id_candidates(i)]
            cursor = self.coll.find({"_id": {"$in": candidates}})
            async for doc in cursor:
                cid = canonical_id(doc["_id"])
                if cid in wanted:
                    found[cid] = self._hash(doc)
        return found

    async def _read_stored(self, ids: Sequence[str]) -> dict[str, str | None]:
        """The documents of ``ids`` read from the embedded engine's file in batches (those
        found there; the caller looks up the rest by ``find_one``)."""
        assert self.reader is not None
        keys: dict[str, str] = {}
        for doc_id in ids:
            # an ObjectId is likelier than the string that looks like one
            for candidate in reversed(_source_id_candidates(doc_id)):
                key = storage_key(candidate)
                if key is not None:
                    keys.setdefault(key, doc_id)
        docs = await asyncio.to_thread(self.reader.read, self.database, self.collection, keys)
        found: dict[str, str | None] = {}
        wanted = set(ids)
        for doc in docs:
            cid = canonical_id(doc["_id"])
            # both an ObjectId and its hex string as ids: the ObjectId, as by find_one
            if cid in wanted and (cid not in found or isinstance(doc["_id"], ObjectId)):
                found[cid] = self._hash(doc)
        return found

    async def target_by_ids(self, ids: Sequence[str]) -> dict[str, tuple[bool, str | None]]:
        out: dict[str, tuple[bool, str | None]] = {}
        ids = list(ids)
        for start in range(0, len(ids), _IN_BATCH):
            rows = await self.conn.fetch(
                f"SELECT {quote_ident('_id')} AS id, "
                f"{quote_ident('_cartridge_deleted')} AS deleted, "
                f"{quote_ident('document')}::text AS doc FROM {self.table} "
                f"WHERE {quote_ident('_id')} = ANY($1::text[])",
                ids[start : start + _IN_BATCH],
            )
            for r in rows:
                out[str(r["id"])] = (
                    bool(r["deleted"]),
                    canonical_hash(r["doc"]) if r["doc"] else None,
                )
        return out

    async def target_sample(self, size: int) -> list[str]:
        if self.by_key:
            return list(self.drawn)  # the source sample was drawn from the warehouse
        rows = await self.conn.fetch(
            f"SELECT {quote_ident('_id')} AS id FROM {self.table} "
            f"WHERE NOT {quote_ident('_cartridge_deleted')} ORDER BY random() LIMIT $1",
            size,
        )
        return [str(r["id"]) for r in rows]

    async def compare(self, ids: Sequence[str], source: dict[str, str | None]) -> list[Mismatch]:
        """Classify ``ids`` given the source hashes already read (absent: not in the source)."""
        missing_from_read = [i for i in ids if i not in source]
        if missing_from_read:
            source = {**source, **(await self.source_by_ids(missing_from_read))}
        target = await self.target_by_ids(ids)
        out: list[Mismatch] = []
        for doc_id in ids:
            deleted, tgt_hash = target.get(doc_id, (True, None))
            in_target = doc_id in target
            if doc_id in source:
                src_hash = source[doc_id]
                if src_hash is None:  # unlandable by policy: dead-lettered, not compared
                    continue
                if not in_target:
                    out.append(Mismatch(doc_id, "missing_in_target", src_hash))
                elif deleted:
                    out.append(Mismatch(doc_id, "deleted_in_target", src_hash))
                elif tgt_hash != src_hash:
                    out.append(Mismatch(doc_id, "hash_mismatch", src_hash, tgt_hash))
            elif in_target and not deleted:
                out.append(Mismatch(doc_id, "extra_in_target", None, tgt_hash))
        return out


async def reconcile_collection(
    mongo: MongoConnection | None,
    conn: asyncpg.Connection,
    schema: SchemaConfig,
    collection: str,
    *,
    sample_size: int | None = None,
    tolerance: float | None = None,
    recheck_seconds: float = 2.0,
    attempts: int = 3,
    sides: _Sides | None = None,
) -> Reconciliation:
    """Compare one collection with its raw table (see the module docstring). ``sides``: how
    the source is read, when it is not MongoDB (``reconcile_pg.reconcile_pg_table``)."""
    sample_size = schema.analytics.reconcile_sample_size if sample_size is None else sample_size
    tolerance = schema.analytics.reconcile_tolerance if tolerance is None else tolerance
    if sides is None:
        assert mongo is not None
        sides = _Sides(mongo, conn, schema, collection)
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", sides.table)
    if not exists:
        count = await sides.source_count()
        result = Reconciliation(schema.name, collection, count, 0, 0, tolerance)
        result.target_exists = False
        return result

    # The target trails the source by the CDC lag: read the source, let the stream settle, read
    # the target, read the source again. A target count between the two source counts is what
    # the source held at some moment in between (changes in flight), not a difference.
    in_flight = False
    for attempt in range(attempts):
        before = await sides.source_count()
        if attempt:
            await asyncio.sleep(recheck_seconds)
        target_count = await sides.target_count()
        source_count = await sides.source_count()
        if target_count == source_count:
            break
        if counts_consistent(before, target_count, source_count):
            in_flight = True
            break
        await asyncio.sleep(recheck_seconds)

    mismatches: list[Mismatch] = []
    sampled = 0
    if sample_size > 0:
        source = await sides.source_sample(sample_size)
        if sides.by_key and target_count != source_count and not in_flight:
            # the by-id sample came from the warehouse: what it lacks needs the source's own
            source.update(await sides.scan_sample(sample_size))
        target_ids = await sides.target_sample(max(1, sample_size // 4))
        ids = list(dict.fromkeys([*source, *target_ids]))
        mismatches = await sides.compare(ids, source)
        sampled = len(ids) - sides.unlandable
        for _ in range(attempts - 1):
            if not mismatches:
                break
            # Re-read both sides for the differing ids: what was in flight has landed by now.
            await asyncio.sleep(recheck_seconds)
            mismatches = await sides.compare([m.id for m in mismatches], {})
    result = Reconciliation(
        schema.name,
        collection,
        source_count,
        target_count,
        sampled,
        tolerance,
        mismatches=sorted(mismatches, key=lambda m: (m.kind, m.id)),
        unlandable=sides.unlandable,
        counts_in_flight=in_flight,
    )
    log.info(
        "analytics.reconciled",
        schema=schema.name,
        table=collection,
        source=source_count,
        target=target_count,
        sampled=sampled,
        mismatches=len(result.mismatches),
    )
    return result


async def store_reconciliation(
    conn: asyncpg.Connection, run_id: str, result: Reconciliation
) -> None:
    """Write one reconciliation (and its mismatches) under ``run_id`` (idempotent)."""
    key = (run_id, result.schema_name, result.collection)
    async with conn.transaction():
        for name in ("reconciliation", "reconciliation_mismatches"):
            await conn.execute(
                f"DELETE FROM {table(name)} WHERE run_id = $1 AND schema_name = $2 "
                "AND collection = $3",
                *key,
            )
        await conn.execute(
            f"""INSERT INTO {table("reconciliation")} (
              run_id, schema_name, collection, source_count, target_count, count_difference,
              count_difference_ratio, sampled, mismatched, mismatch_ratio, tolerance,
              within_tolerance)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
            *key,
            result.source_count,
            result.target_count,
            result.count_difference,
            result.count_difference_ratio,
            result.sampled,
            len(result.mismatches),
            result.mismatch_ratio,
            result.tolerance,
            result.within_tolerance,
        )
        if result.mismatches:
            await conn.executemany(
                f"""INSERT INTO {table("reconciliation_mismatches")} (
                  run_id, schema_name, collection, _id, kind, source_hash, target_hash)
                VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                [(*key, m.id, m.kind, m.source_hash, m.target_hash) for m in result.mismatches],
            )
