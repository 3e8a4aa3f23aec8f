"""The source catalog: which collections (or tables) a schema has, how many documents, how large.

Plain core code (no dagster): used by the ``cartridge/<S>/catalog`` asset and the CLI.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass
from typing import Any

import bson

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.connectors.mongo import MongoConnection, aggregate, bson_options
from cartridge_dagster.connectors.mongoeco_documents import DocumentReader

__all__ = ["CollectionInfo", "SourceCatalog", "read_catalog", "read_pg_catalog"]

SIZE_SAMPLE = 200


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    documents: int
    avg_document_bytes: int
    estimated_bytes: int
    in_scope: bool


@dataclass(frozen=True)
class SourceCatalog:
    schema: str
    database: str
    collections: dict[str, CollectionInfo]

    @property
    def total_documents(self) -> int:
        return sum(c.documents for c in self.collections.values() if c.in_scope)

    @property
    def total_bytes(self) -> int:
        return sum(c.estimated_bytes for c in self.collections.values() if c.in_scope)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "database": self.database,
            "collections": {
                name: asdict(info)
                for name, info in sorted(self.collections.items())
                if info.in_scope
            },
            "out_of_scope": sorted(n for n, i in self.collections.items() if not i.in_scope),
        }

    def markdown(self) -> str:
        lines = [
            "| collection | documents | avg size (bytes) | est. size (MB) |",
            "|---|---:|---:|---:|",
        ]
        for name, info in sorted(self.collections.items()):
            if info.in_scope:
                lines.append(
                    f"| {name} | {info.documents:,} | {info.avg_document_bytes:,} | "
                    f"{info.estimated_bytes / 1e6:,.2f} |"
                )
        excluded = [n for n, i in sorted(self.collections.items()) if not i.in_scope]
        if excluded:
            lines.append("")
            lines.append("Out of scope (include/exclude): " + ", ".join(excluded))
        return "\n".join(lines)


async def _avg_size(coll: Any, reader: DocumentReader | None = None) -> int:
    """The average BSON size of up to :data:`SIZE_SAMPLE` documents picked at random (on the
    embedded engine, ``reader``, picked in its file: its ``$sample`` decodes every document)."""
    total = 0
    n = 0
    picked = None
    if reader is not None:
        picked = await asyncio.to_thread(reader.sample, coll.database.name, coll.name, SIZE_SAMPLE)
    if picked is not None:
        for doc in picked:
            total += len(bson.encode(doc, codec_options=bson_options()))
            n += 1
        return total // n if n else 0
    cursor = await aggregate(coll, [{"$sample": {"size": SIZE_SAMPLE}}])
    async for doc in cursor:
        total += len(bson.encode(doc, codec_options=bson_options()))
        n += 1
    return total // n if n else 0


async def read_catalog(conn: MongoConnection, schema: SchemaConfig) -> SourceCatalog:
    """Count and size every collection of ``schema.source_database``."""
    db = conn.database(schema.source_database)
    infos: dict[str, CollectionInfo] = {}
    for name in await conn.list_collection_names(schema.source_database):
        in_scope = schema.selects(name)
        coll = db[name]
        count = int(await coll.count_documents({})) if in_scope else 0
        avg = await _avg_size(coll, conn.document_reader()) if in_scope and count else 0
        infos[name] = CollectionInfo(name, count, avg, avg * count, in_scope)
    return SourceCatalog(schema.name, schema.source_database, infos)


async def read_pg_catalog(conn: Any, schema: SchemaConfig) -> SourceCatalog:
    """Count and size every table of PostgreSQL schema ``schema.source_database`` (``conn``: an
    asyncpg connection). Rows are counted exactly; sizes are the tables' on-disk sizes (TOAST
    included), averaged over the rows."""
    from cartridge_dagster.identifiers import qualified

    tables = await conn.fetch(
        "SELECT c.relname, pg_catalog.pg_table_size(c.oid) AS bytes "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition "
        "ORDER BY c.relname",
        schema.source_database,
    )
    infos: dict[str, CollectionInfo] = {}
    for row in tables:
        name = str(row["relname"])
        in_scope = schema.selects(name)
        count = 0
        size = int(row["bytes"] or 0)
        if in_scope:
            count = int(
                await conn.fetchval(
                    f"SELECT count(*) FROM {qualified(schema.source_database, name)}"
                )
            )
        avg = size // count if count else 0
        infos[name] = CollectionInfo(name, count, avg, size if in_scope else 0, in_scope)
    return SourceCatalog(schema.name, schema.source_database, infos)
