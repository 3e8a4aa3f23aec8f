"""Scanning a source schema: sample every collection, profile it, detect references.

MongoDB: collections smaller than ``sampling.full_scan_below`` (or all, with ``full_scan``) are
read whole in ``_id`` order. Larger ones are sampled **deterministically** (seeded sampling):
every ``_id`` is read (a projection: only the ``_id``s travel), each gets a rank from a
seeded hash of its canonical value, and the documents of the lowest ranks are read in rounds of
``sample_size``; with ``adaptive`` sampling, rounds continue while new field paths or types
still appear, up to ``max_sample_size`` documents. The same data therefore always gives the
same sample, the same statistics and the same schema, byte for byte (no new version, no
regenerated file, the scan says "unchanged"); a document's rank depends on its ``_id`` alone,
so a small change to the data changes the sample a little, not all of it. References are
checked on the sample: a field holding ObjectIds (or id-like strings) is a reference to
collection X when ≥ 90 % of up to 50 of its sampled values are ``_id``s of X.

No value stops a scan: a collection holding NaN or ±Infinity, which the embedded engine cannot
sort or filter in SQL, is read through :mod:`~cartridge_dagster.safe_reads`; a query the
source cannot answer raises one error naming the collection and the cause.

PostgreSQL: columns, types, nullability and keys come from the catalogs (:func:`scan_postgres`);
then the rows are sampled as warp lands them (the same JSON, built by the server): tables with
fewer than ``sampling.full_scan_below`` rows (or all, with ``full_scan``) are read whole,
larger ones through ``TABLESAMPLE BERNOULLI … REPEATABLE`` (the same rows for the same data) of
about ``max_sample_size`` rows; the sample gives each column's null ratio, distinct values,
examples and, for text and enum columns, the enum values. Stored in the same shape.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pymongo.errors
from bson import ObjectId

from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.connectors.mongo import MongoConnection
from cartridge_dagster.connectors.mongoeco_documents import DocumentReader, storage_key
from cartridge_dagster.documents import canonical_id
from cartridge_dagster.errors import CartridgeError, TransientError, classify
from cartridge_dagster.identifiers import assign_names, qualified, quote_ident
from cartridge_dagster.init.inference import (
    ARRAY_MARK,
    RESERVED_COLUMNS,
    InferenceOptions,
    Profiler,
    field_name,
    finalize,
    join_path,
)
from cartridge_dagster.observability import get_logger
from cartridge_dagster.safe_reads import UnreadableCollection, count_documents, find_documents

__all__ = [
    "REFERENCE_MIN_MATCH",
    "ScanProgress",
    "ScanResult",
    "scan_collection",
    "scan_mongo",
    "scan_postgres",
    "scan_schema",
]

REFERENCE_MIN_MATCH = 0.9
REFERENCE_PROBE = 50
FIND_BATCH = 2000
ID_BATCH = 10000
#: Sampled documents read by ``_id`` at the same time.
LOOKUP_CONCURRENCY = 8
#: The seed of the sample's ranks: changing it changes every sampled collection's sample.
SAMPLE_SEED = b"cartridge-sample-1"

log = get_logger(__name__)

#: progress(collection, documents_seen, documents_planned)
ScanProgress = Callable[[str, int, int], None]


@dataclass
class ScanResult:
    """A scanned schema: ``collections`` maps collection name → its schema JSON."""

    schema: str
    database: str
    source_kind: str
    collections: dict[str, dict[str, Any]]
    seconds: float = 0.0
    documents_seen: int = 0
    profiles: dict[str, Profiler] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The deterministic document stored by :mod:`.store` (no timings, no counters)."""
        return {
            "schema": self.schema,
            "database": self.database,
            "source_kind": self.source_kind,
            "collections": {c: self.collections[c] for c in sorted(self.collections)},
        }


def _options(schema: SchemaConfig, collection: str) -> InferenceOptions:
    table = schema.table(collection)
    sampling = schema.sampling
    return InferenceOptions(
        max_depth=sampling.max_depth,
        example_values=sampling.example_values,
        enum_max_distinct=sampling.enum_max_distinct,
        distinct_cap=max(sampling.max_sample_size, 1000),
        sensitive_fields=tuple(table.sensitive_fields),
        excluded_fields=tuple(table.exclude_fields),
        type_overrides=dict(table.type_overrides),
    )


def sample_rank(_id: Any) -> tuple[bytes, str, str]:
    """The seeded rank of a document in the sample (lowest first): a hash of its ``_id``'s
    canonical text, ties broken by type and text (so distinct ``_id``s never tie)."""
    text = canonical_id(_id)
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=SAMPLE_SEED)
    return digest.digest(), type(_id).__name__, text


async def _lowest_ranks(
    coll: Any, name: str, cap: int, reader: DocumentReader | None = None
) -> list[tuple[tuple[bytes, str, str], Any]]:
    """The ``cap`` documents of lowest rank, as (rank, ``_id``), lowest first; reads only the
    ``_id``s and keeps at most about ``2 * cap`` of them (on the embedded engine, ``reader``:
    from its file in one query)."""
    ranked: list[tuple[tuple[bytes, str, str], Any]] = []
    if reader is not None:
        database = str(getattr(getattr(coll, "database", None), "name", ""))
        stored = await asyncio.to_thread(reader.ids, database, name)
        if stored is not None:
            return heapq.nsmallest(cap, ((sample_rank(i), i) for i in stored), key=_first)
    ids = find_documents(coll, {}, name=name, projection={"_id": 1}, batch_size=ID_BATCH)
    async for doc in ids:
        _id = doc.get("_id")
        ranked.append((sample_rank(_id), _id))
        if len(ranked) >= 2 * cap + ID_BATCH:
            ranked = heapq.nsmallest(cap, ranked, key=_first)
    return heapq.nsmallest(cap, ranked, key=_first)


def _first(item: tuple[tuple[bytes, str, str], Any]) -> tuple[bytes, str, str]:
    return item[0]


async def _sampled(
    coll: Any,
    name: str,
    ranked: list[tuple[tuple[bytes, str, str], Any]],
    reader: DocumentReader | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The documents of ``ranked`` (a round), in rank order (those deleted meanwhile skipped).

    Each is read by its ``_id`` (``limit 1``: an index look-up on any MongoDB), a few at a time.
    Not ``$in``: the embedded engine evaluates ``$in`` by scanning the whole collection once
    per query (≈ 30 ms per ``_id`` at 15k documents) and refuses more than ≈ 500 values. On the
    embedded engine (``reader``) the round is read from its file in batches of keys first
    (:mod:`~cartridge_dagster.connectors.mongoeco_documents`: ~1 ms per look-up otherwise);
    what is not found there is looked up one by one as on a server."""

    async def one(_id: Any) -> dict[str, Any] | None:
        found = None
        async for doc in find_documents(coll, {"_id": _id}, name=name, limit=1):
            found = dict(doc)  # limit 1: the loop ends after it, and closes the cursor
        return found

    stored: dict[str, dict[str, Any]] = {}
    if reader is not None:
        keys = [k for _rank, _id in ranked if (k := storage_key(_id)) is not None]
        database = str(getattr(getattr(coll, "database", None), "name", ""))
        for stored_doc in await asyncio.to_thread(reader.read, database, name, keys):
            stored[canonical_id(stored_doc["_id"])] = stored_doc

    def from_file(_id: Any) -> dict[str, Any] | None:
        doc = stored.get(canonical_id(_id))
        # the id asked for, of its type (an ObjectId and its hex string are two documents)
        if doc is not None and type(doc["_id"]) is type(_id) and doc["_id"] == _id:
            return doc
        return None

    for start in range(0, len(ranked), LOOKUP_CONCURRENCY):
        chunk = ranked[start : start + LOOKUP_CONCURRENCY]
        docs: list[dict[str, Any] | None] = [from_file(_id) for _rank, _id in chunk]
        missing = [i for i, found in enumerate(docs) if found is None]
        if missing:
            looked_up = await asyncio.gather(*(one(chunk[i][1]) for i in missing))
            for i, found in zip(missing, looked_up, strict=True):
                docs[i] = found
        for found in docs:
            if found is not None:
                yield found


def _query_error(exc: BaseException, db: Any, collection: str, what: str) -> CartridgeError:
    """A driver error while reading ``collection``, as one line naming it and the cause."""
    where = f"collection {collection!r} of database {getattr(db, 'name', '?')!r}"
    message = f"{where}: the source could not {what} ({type(exc).__name__}: {exc})"
    if classify(exc) is TransientError:
        return TransientError(message, hint="the source may be busy or unreachable; retry")
    return UnreadableCollection(message)


async def scan_collection(
    db: Any,
    schema: SchemaConfig,
    collection: str,
    *,
    full_scan: bool = False,
    progress: ScanProgress | None = None,
    reader: DocumentReader | None = None,
) -> tuple[dict[str, Any], Profiler]:
    """Profile one collection; returns its schema JSON and the profiler (for references)."""
    what = "count its documents"
    try:
        coll = db[collection]
        total = await count_documents(coll, {}, name=collection)
        what = "read it"
        return await _profile(coll, schema, collection, total, full_scan, progress, reader)
    except (pymongo.errors.PyMongoError, sqlite3.Error) as exc:
        raise _query_error(exc, db, collection, what) from None


async def _profile(
    coll: Any,
    schema: SchemaConfig,
    collection: str,
    total: int,
    full_scan: bool,
    progress: ScanProgress | None,
    reader: DocumentReader | None = None,
) -> tuple[dict[str, Any], Profiler]:
    sampling = schema.sampling
    profiler = Profiler(_options(schema, collection))
    rounds = 0
    batch: list[Any] = []
    if full_scan or total <= sampling.full_scan_below:
        method = "full"
        docs = find_documents(coll, {}, name=collection, sort_by_id=True, batch_size=FIND_BATCH)
        async for doc in docs:
            batch.append(doc)
            if len(batch) >= FIND_BATCH:
                profiler.add_many(batch)
                batch = []
                if progress is not None:
                    progress(collection, profiler.documents, total)
        profiler.add_many(batch)
        rounds = 1
    else:
        method = "sample"
        cap = min(sampling.max_sample_size, total)
        ranked = await _lowest_ranks(coll, collection, cap, reader)
        taken = 0
        while taken < len(ranked):
            size = min(sampling.sample_size, len(ranked) - taken)
            before = profiler.novelty
            round_ = ranked[taken : taken + size]
            batch = [doc async for doc in _sampled(coll, collection, round_, reader)]
            taken += size
            profiler.add_many(batch)
            rounds += 1
            if progress is not None:
                progress(collection, profiler.documents, cap)
            if not sampling.adaptive:
                break
            if rounds > 1 and profiler.novelty == before:
                break  # this round found no new path and no new type: the shape has settled
    if progress is not None:
        progress(collection, profiler.documents, profiler.documents)
    result = finalize(collection, profiler, total_documents=total, method=method, rounds=rounds)
    log.info(
        "init.scan.collection",
        schema=schema.name,
        table=collection,
        documents=profiler.documents,
        method=method,
        fields=len(result["fields"]),
    )
    return result, profiler


def _reference_candidates(result: Mapping[str, Any]) -> list[str]:
    out = []
    for path, entry in result["fields"].items():
        if path == "_id":
            continue
        nonnull = {t for t in entry["types"] if t != "null"}
        if nonnull == {"objectId"} or (
            nonnull == {"string"} and entry["path"][-1].lower().endswith("id")
        ):
            out.append(path)
    return out


def _probe_values(profiler: Profiler, segments: list[str]) -> list[Any]:
    node: Any = profiler.root
    for seg in segments:
        node = node.elem if seg == ARRAY_MARK else (node.children or {}).get(field_name(seg))
        if node is None:
            return []
    if not node.distinct:
        return []
    values = [v for v in node.distinct if isinstance(v, ObjectId | str)]
    return sorted(values, key=str)[:REFERENCE_PROBE]


async def _detect_references(
    db: Any,
    results: dict[str, dict[str, Any]],
    profilers: dict[str, Profiler],
) -> None:
    targets = sorted(results)
    for name in sorted(results):
        refs: dict[str, dict[str, Any]] = {}
        for path in _reference_candidates(results[name]):
            values = _probe_values(profilers[name], results[name]["fields"][path]["path"])
            if not values:
                continue
            best: tuple[float, str] | None = None
            for target in targets:
                id_types = set(results[target].get("id_types", []))
                if isinstance(values[0], ObjectId) and "objectId" not in id_types:
                    continue
                if isinstance(values[0], str) and "string" not in id_types:
                    continue
                query = {"_id": {"$in": values}}
                try:
                    found = await count_documents(db[target], query, name=target)
                except (pymongo.errors.PyMongoError, sqlite3.Error) as exc:
                    raise _query_error(exc, db, target, "look up the _ids of a reference") from None
                ratio = found / len(values)
                if ratio >= REFERENCE_MIN_MATCH and (best is None or ratio > best[0]):
                    best = (ratio, target)
            if best is not None:
                refs[path] = {
                    "collection": best[1],
                    "field": "_id",
                    "match_ratio": round(best[0], 4),
                    "checked": len(values),
                }
        results[name]["references"] = dict(sorted(refs.items()))


async def scan_mongo(
    conn: MongoConnection,
    schema: SchemaConfig,
    *,
    collections: list[str] | None = None,
    full_scan: bool = False,
    progress: ScanProgress | None = None,
) -> ScanResult:
    """Scan every in-scope collection of ``schema`` (or the named ones)."""
    started = time.perf_counter()
    db = conn.database(schema.source_database)
    names = collections
    if names is None:
        names = sorted(
            c for c in await conn.list_collection_names(schema.source_database) if schema.selects(c)
        )
    results: dict[str, dict[str, Any]] = {}
    profilers: dict[str, Profiler] = {}
    for name in names:
        results[name], profilers[name] = await scan_collection(
            db, schema, name, full_scan=full_scan, progress=progress, reader=conn.document_reader()
        )
    await _detect_references(db, results, profilers)
    return ScanResult(
        schema=schema.name,
        database=schema.source_database,
        source_kind="mongodb",
        collections=results,
        seconds=time.perf_counter() - started,
        documents_seen=sum(p.documents for p in profilers.values()),
        profiles=profilers,
    )


# --------------------------------------------------------------------------- PostgreSQL

_PG_TO_BSON = {
    "smallint": "int",
    "integer": "int",
    "bigint": "long",
    "numeric": "decimal",
    "real": "double",
    "double precision": "double",
    "boolean": "bool",
    "text": "string",
    "character varying": "string",
    "character": "string",
    "uuid": "uuid",
    "date": "date",
    "timestamp without time zone": "date",
    "timestamp with time zone": "date",
    "json": "object",
    "jsonb": "object",
    "bytea": "binary",
    "ARRAY": "array",
}
_PG_SQL_TYPE = {
    "smallint": "integer",
    "integer": "integer",
    "bigint": "bigint",
    "numeric": "numeric",
    "real": "double precision",
    "double precision": "double precision",
    "boolean": "boolean",
    "uuid": "uuid",
    "date": "date",
    # warp lands a timestamp without a zone as it is (`2024-01-01T12:00:00`): staged as the
    # same type, never shifted by a session's time zone
    "timestamp without time zone": "timestamp without time zone",
    "timestamp with time zone": "timestamptz",
    "json": "jsonb",
    "jsonb": "jsonb",
    "ARRAY": "jsonb",  # landed as JSON arrays
}

#: The tables of a schema are its ordinary and partitioned tables; a partition is not a table
#: of its own (its rows are the partitioned table's, read and published through it).
_PG_TABLES = """
SELECT r.oid, r.relname, r.relkind, r.reltuples FROM pg_catalog.pg_class r
JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
WHERE n.nspname = $1 AND r.relkind IN ('r', 'p') AND NOT r.relispartition
"""
_PG_COLUMNS = f"""
SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, c.ordinal_position
FROM information_schema.columns c
JOIN ({_PG_TABLES}) r ON r.relname = c.table_name
WHERE c.table_schema = $1 AND c.is_generated = 'NEVER'
ORDER BY c.table_name, c.ordinal_position
"""
_PG_KEYS = """
SELECT rel.relname AS table_name, con.contype::text AS contype, att.attname AS column_name,
       frel.relname AS ref_table, fatt.attname AS ref_column
FROM pg_constraint con
JOIN pg_class rel ON rel.oid = con.conrelid
JOIN pg_namespace nsp ON nsp.oid = rel.relnamespace
JOIN LATERAL unnest(con.conkey) WITH ORDINALITY AS k(attnum, n) ON true
JOIN pg_attribute att ON att.attrelid = rel.oid AND att.attnum = k.attnum
LEFT JOIN pg_class frel ON frel.oid = con.confrelid
LEFT JOIN pg_attribute fatt ON fatt.attrelid = con.confrelid AND fatt.attnum = con.confkey[k.n]
WHERE nsp.nspname = $1 AND con.contype IN ('p', 'f') AND NOT rel.relispartition
ORDER BY rel.relname, con.conname, k.n
"""
#: A partitioned table's statistics are those over its partitions (``inherited``).
_PG_STATS = """
SELECT DISTINCT ON (tablename, attname) tablename, attname, null_frac, n_distinct
FROM pg_stats WHERE schemaname = $1 ORDER BY tablename, attname, inherited
"""
#: A partitioned table holds no rows itself: its estimate is the sum of its partitions'.
_PG_ROWS = f"""
SELECT r.relname, CASE WHEN r.relkind = 'p'
    THEN (SELECT COALESCE(sum(greatest(p.reltuples, 0)), 0)
          FROM pg_catalog.pg_partition_tree(r.oid) AS t
          JOIN pg_catalog.pg_class p ON p.oid = t.relid WHERE t.isleaf)
    ELSE greatest(r.reltuples, 0) END::bigint
FROM ({_PG_TABLES}) r
"""


#: Column types whose few distinct values make an enum (not timestamps, uuids, numbers).
_PG_ENUM_TYPES = frozenset({"text", "character varying", "character", "USER-DEFINED"})
#: The seed of PostgreSQL samples (``REPEATABLE``): changing it changes every sample.
PG_SAMPLE_SEED = 1


async def _sample_postgres(
    conn: Any,
    schema: SchemaConfig,
    results: dict[str, dict[str, Any]],
    *,
    full_scan: bool,
    progress: ScanProgress | None,
    profilers: dict[str, Profiler],
) -> int:
    """Profile each table's rows as landed and fold the statistics into its fields (the
    profilers land in ``profilers``, by table)."""
    from cartridge_dagster.connectors.pg_catalog import TypeResolver, read_tables
    from cartridge_dagster.pg_documents import snapshot_expressions

    sampling = schema.sampling
    seen = 0
    async with conn.transaction(readonly=True):
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        await conn.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        infos = await read_tables(conn, schema.source_database, TypeResolver(), names=list(results))
        for table, result in sorted(results.items()):
            info = infos.get(table)
            if info is None:
                continue
            landed = [c.landed for c in info.landed]
            excluded = [p.split(".") for p in schema.table(table).exclude_fields]
            expr = snapshot_expressions("t", landed, excluded)
            estimate = int(result["documents_total"])
            whole = full_scan or estimate <= sampling.full_scan_below
            source = qualified(schema.source_database, table)
            if whole:
                sql = f"SELECT ({expr.document})::text FROM {source} AS t {expr.lateral}"
                method = "full"
            else:
                percent = min(100.0, 100.0 * sampling.max_sample_size / max(estimate, 1))
                sql = (
                    f"SELECT ({expr.document})::text FROM {source} AS t "
                    f"TABLESAMPLE BERNOULLI ({percent:.6f}) REPEATABLE ({PG_SAMPLE_SEED}) "
                    f"{expr.lateral} LIMIT {int(sampling.max_sample_size)}"
                )
                method = "sample"
            profiler = Profiler(_options(schema, table))
            try:
                async with conn.transaction():  # a savepoint: one table's failure stays its own
                    rows = await conn.fetch(sql)
            except asyncpg.PostgresError as exc:
                log.warning("init.scan.pg_sample_failed", table=table, error=str(exc)[:200])
                continue
            profiler.add_many(orjson.loads(r[0]) for r in rows)
            profilers[table] = profiler
            sampled = finalize(table, profiler, total_documents=estimate, method=method, rounds=1)
            seen += profiler.documents
            if progress is not None:
                progress(table, profiler.documents, profiler.documents)
            _fold_sample(result, sampled, profiler.documents, method)
    return seen


#: Column types a reference can have (its values compared as text with the target's key).
_PG_KEY_TYPES = frozenset(
    {"smallint", "integer", "bigint", "text", "character varying", "character", "uuid"}
)


async def _pg_references(
    conn: Any,
    schema: SchemaConfig,
    results: dict[str, dict[str, Any]],
    profilers: Mapping[str, Profiler],
) -> None:
    """References checked on the sampled values, as for MongoDB: a declared foreign key gets
    the share of up to 50 of its sampled values found in the target's key (``match_ratio``,
    ``checked``); a column without one whose name ends in ``id`` is a reference to table X when
    ≥ 90 % of them are keys of X (a single-column key of a compatible type)."""
    keys = {
        t: r["primary_key"][0]
        for t, r in results.items()
        if len(r["primary_key"]) == 1 and r["fields"].get(join_path(r["primary_key"]))
    }
    for table in sorted(results):
        result, profiler = results[table], profilers.get(table)
        if profiler is None:
            continue
        refs = dict(result["references"])
        for path, entry in sorted(result["fields"].items()):
            name = entry["path"][0]
            kind = entry.get("pg_type")
            if kind not in _PG_KEY_TYPES or result["primary_key"] == [name]:
                continue
            declared = refs.get(path)
            if declared is None and not name.lower().endswith("id"):
                continue
            node = (profiler.root.children or {}).get(field_name(name))
            distinct = (node.distinct if node is not None else None) or ()
            values = sorted({str(v) for v in distinct if isinstance(v, int | str)})
            values = values[:REFERENCE_PROBE]
            if not values:
                continue
            if declared is not None:
                targets = [declared["collection"]] if declared["collection"] in keys else []
            else:
                targets = [
                    t
                    for t in sorted(keys)
                    if (t != table or keys[t] != name)
                    and (results[t]["fields"][join_path([keys[t]])].get("pg_type") in _PG_KEY_TYPES)
                ]
            best: tuple[float, str] | None = None
            for target in targets:
                column = keys[target]
                if declared is not None and declared.get("field") != column:
                    continue
                found = int(
                    await conn.fetchval(
                        f"SELECT count(*) FROM {qualified(schema.source_database, target)} "
                        f"WHERE {quote_ident(column)}::text = ANY($1::text[])",
                        values,
                    )
                )
                ratio = found / len(values)
                if (declared is not None or ratio >= REFERENCE_MIN_MATCH) and (
                    best is None or ratio > best[0]
                ):
                    best = (ratio, target)
            if best is not None:
                refs[path] = {
                    "collection": best[1],
                    "field": keys[best[1]],
                    "match_ratio": round(best[0], 4),
                    "checked": len(values),
                }
        result["references"] = dict(sorted(refs.items()))


def _fold_sample(
    result: dict[str, Any], sampled: dict[str, Any], documents: int, method: str
) -> None:
    """Sampled statistics into the catalog's fields (types and layout stay the catalog's)."""
    result["documents_sampled"] = documents
    result["sampling"] = {"method": method, "rounds": 1}
    if method == "full":
        result["documents_total"] = documents
    for path, entry in result["fields"].items():
        found = sampled["fields"].get(path)
        if found is None:
            continue
        nulls = int(found.get("types", {}).get("null", 0)) + (documents - int(found["count"]))
        entry["null_ratio"] = round(nulls / documents, 4) if documents else entry["null_ratio"]
        entry["nulls"] = nulls if method == "full" else entry["nulls"]
        if "distinct" in found:
            entry["distinct"] = found["distinct"]
            entry["distinct_exact"] = method == "full" and bool(found.get("distinct_exact", True))
        for key in ("examples", "min", "max", "range_exact", "string_length"):
            if key in found:
                entry[key] = found[key]
        if "enum" in found and entry.get("pg_type") in _PG_ENUM_TYPES:
            entry["enum"] = found["enum"]


async def scan_postgres(
    conn: Any,
    schema: SchemaConfig,
    *,
    full_scan: bool = False,
    progress: ScanProgress | None = None,
    sample: bool = True,
) -> ScanResult:
    """Read a PostgreSQL schema's tables from the catalogs (``conn``: an asyncpg connection).

    Each table becomes a "collection" whose fields are its columns: the type histogram holds the
    column's type, presence is 1, the null ratio and distinct estimate come from ``pg_stats``
    (after ``ANALYZE``), keys from ``pg_constraint``.
    """
    started = time.perf_counter()
    source = schema.source_database
    columns = await conn.fetch(_PG_COLUMNS, source)
    keys = await conn.fetch(_PG_KEYS, source)
    stats = {(r[0], r[1]): (r[2], r[3]) for r in await conn.fetch(_PG_STATS, source)}
    rows = {r[0]: int(r[1]) for r in await conn.fetch(_PG_ROWS, source)}
    pks: dict[str, list[str]] = {}
    fks: dict[str, dict[str, dict[str, Any]]] = {}
    for r in keys:
        if r["contype"] == "p":
            pks.setdefault(r["table_name"], []).append(r["column_name"])
        else:
            fks.setdefault(r["table_name"], {})[join_path([r["column_name"]])] = {
                "collection": r["ref_table"],
                "field": r["ref_column"],
                "match_ratio": 1.0,
                "checked": 0,
            }
    tables: dict[str, list[Any]] = {}
    for r in columns:
        if schema.selects(r["table_name"]):
            tables.setdefault(r["table_name"], []).append(r)
    results: dict[str, dict[str, Any]] = {}
    for table, cols in sorted(tables.items()):
        total = rows.get(table, 0)
        fields: dict[str, dict[str, Any]] = {}
        layout: dict[str, dict[str, Any]] = {}
        names = assign_names([c["column_name"] for c in cols], reserved=RESERVED_COLUMNS)
        for c in cols:
            name, data_type = c["column_name"], c["data_type"]
            null_frac, n_distinct = stats.get((table, name), (0.0, 0.0))
            null_frac = float(null_frac or 0.0)
            n_distinct = float(n_distinct or 0.0)
            distinct = int(n_distinct if n_distinct >= 0 else -n_distinct * total)
            bson_type = _PG_TO_BSON.get(data_type, "string")
            path = join_path([name])
            fields[path] = {
                "path": [name],
                "types": {bson_type: total}
                | ({"null": int(null_frac * total)} if null_frac else {}),
                "count": total,
                "nulls": int(null_frac * total),
                "presence": 1.0,
                "null_ratio": round(null_frac, 4),
                "required": c["is_nullable"] == "NO",
                "nullable": c["is_nullable"] == "YES",
                "distinct": distinct,
                "distinct_exact": False,
                "sensitive": name in schema.table(table).sensitive_fields,
                "pg_type": data_type,
            }
            layout[path] = {
                "sql_type": _PG_SQL_TYPE.get(data_type, "text"),
                "path": [name],
                "column": names[name],
            }
        pk = pks.get(table, [])
        results[table] = {
            "collection": table,
            "source_kind": "postgresql",
            "documents_total": total,
            "documents_sampled": 0,
            "sampling": {"method": "catalog", "rounds": 0},
            "primary_key": pk,
            "id_types": [],
            "fields": fields,
            "columns": dict(sorted(layout.items())),
            "arrays": {},
            "timestamps": sorted(
                p for p, f in fields.items() if f["pg_type"].startswith("timestamp")
            ),
            "incremental_key": None,
            "references": dict(sorted(fks.get(table, {}).items())),
        }
    seen = 0
    profilers: dict[str, Profiler] = {}
    if sample and results:
        seen = await _sample_postgres(
            conn, schema, results, full_scan=full_scan, progress=progress, profilers=profilers
        )
        await _pg_references(conn, schema, results, profilers)
    return ScanResult(
        schema=schema.name,
        database=source,
        source_kind="postgresql",
        collections=results,
        seconds=time.perf_counter() - started,
        documents_seen=seen,
        profiles=profilers,
    )


async def scan_schema(
    settings: CartridgeSettings,
    schema_name: str,
    *,
    full_scan: bool = False,
    progress: ScanProgress | None = None,
) -> ScanResult:
    """Scan one configured schema from the configured source (MongoDB or PostgreSQL)."""
    schema = settings.get_schema(schema_name)
    source = settings.source_for(schema)
    if source.type == "postgresql":
        from cartridge_dagster.connectors.postgres import pg_connection

        async with pg_connection(settings.source_url(schema)) as conn:
            return await scan_postgres(conn, schema, full_scan=full_scan, progress=progress)
    from cartridge_dagster.connectors.mongo import mongo_session

    async with mongo_session(
        settings.source_url(schema), timeout_seconds=source.connect_timeout_seconds
    ) as conn:
        return await scan_mongo(conn, schema, full_scan=full_scan, progress=progress)
