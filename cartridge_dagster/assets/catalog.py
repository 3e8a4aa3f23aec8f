"""``cartridge/<S>/catalog``: the collections (or tables) of each source schema, with counts
and sizes; read from MongoDB or from PostgreSQL's catalogs, whichever the schema's source is."""

import asyncio
from typing import Any

import dagster as dg

from cartridge_dagster.assets.keys import catalog_key, group_name
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.init.catalog import SourceCatalog, read_catalog, read_pg_catalog
from cartridge_dagster.resources import CartridgeResource, MongoResource
from cartridge_dagster.sensors.automation import INIT_POOL
from cartridge_dagster.state import catalog_file, write_json_atomic

__all__ = ["build_catalog_defs"]


def _catalog_asset(schema: SchemaConfig, kind: str) -> dg.AssetsDefinition:
    postgres = kind == "postgresql"
    things, rows = (
        ("Tables", "row counts and on-disk sizes")
        if postgres
        else (
            "Collections",
            "document counts and estimated sizes",
        )
    )
    where = "PostgreSQL schema" if postgres else "source database"

    @dg.asset(
        key=catalog_key(schema.name),
        group_name=group_name(schema.name),
        kinds={"postgres" if postgres else "mongodb"},
        description=(
            f"{things} of {where} `{schema.source_database}` in scope for schema "
            f"`{schema.name}`, with {rows}."
        ),
        tags={"cartridge/schema": schema.name},
        pool=INIT_POOL,
    )
    def catalog(
        context: dg.AssetExecutionContext, cartridge: CartridgeResource, mongo: MongoResource
    ) -> dg.MaterializeResult:
        settings = cartridge.settings()
        cfg = settings.get_schema(schema.name)

        async def read() -> SourceCatalog:
            if settings.source_for(cfg).type == "postgresql":
                from cartridge_dagster.connectors.postgres import pg_connection

                timeout = settings.source_for(cfg).connect_timeout_seconds
                async with pg_connection(settings.source_url(cfg), timeout=timeout) as conn:
                    return await read_pg_catalog(conn, cfg)
            async with mongo.connection(schema.name) as conn:
                return await read_catalog(conn, cfg)

        found = asyncio.run(read())
        write_json_atomic(catalog_file(settings, schema.name), found.to_json())
        in_scope = {n: c.documents for n, c in found.collections.items() if c.in_scope}
        metadata: dict[str, Any] = {
            "collections": dg.MetadataValue.int(len(in_scope)),
            "documents": dg.MetadataValue.int(found.total_documents),
            "estimated_mb": dg.MetadataValue.float(round(found.total_bytes / 1e6, 3)),
            "source_database": dg.MetadataValue.text(schema.source_database),
            "catalog": dg.MetadataValue.md(found.markdown()),
            "per_collection": dg.MetadataValue.json(in_scope),
        }
        noun = ("tables", "rows") if postgres else ("collections", "documents")
        context.log.info(
            f"{schema.name}: {len(in_scope)} {noun[0]}, {found.total_documents} {noun[1]}"
        )
        return dg.MaterializeResult(metadata=metadata)

    return catalog


def build_catalog_defs(settings: CartridgeSettings) -> dg.Definitions:
    return dg.Definitions(
        assets=[_catalog_asset(s, settings.source_for(s).type) for s in settings.schemas]
    )
