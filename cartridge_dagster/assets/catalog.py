"""``cartridge/<S>/catalog``: the collections of each source schema, with counts and sizes."""

import asyncio
from typing import Any

import dagster as dg

from cartridge_dagster.assets.keys import catalog_key
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.init.catalog import read_catalog
from cartridge_dagster.resources import CartridgeResource, MongoResource
from cartridge_dagster.state import catalog_file, write_json_atomic

__all__ = ["build_catalog_defs"]


def _catalog_asset(schema: SchemaConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=catalog_key(schema.name),
        group_name=schema.name,
        kinds={"mongodb"},
        description=(
            f"Collections of source database `{schema.source_database}` in scope for schema "
            f"`{schema.name}`, with document counts and estimated sizes."
        ),
        tags={"cartridge/schema": schema.name},
    )
    def catalog(
        context: dg.AssetExecutionContext, cartridge: CartridgeResource, mongo: MongoResource
    ) -> dg.MaterializeResult:
        settings = cartridge.settings()

        async def read() -> dict[str, Any]:
            async with mongo.connection() as conn:
                found = await read_catalog(conn, settings.get_schema(schema.name))
            write_json_atomic(catalog_file(settings, schema.name), found.to_json())
            return {
                "collections": dg.MetadataValue.int(
                    sum(1 for c in found.collections.values() if c.in_scope)
                ),
                "documents": dg.MetadataValue.int(found.total_documents),
                "estimated_mb": dg.MetadataValue.float(round(found.total_bytes / 1e6, 3)),
                "source_database": dg.MetadataValue.text(schema.source_database),
                "catalog": dg.MetadataValue.md(found.markdown()),
                "per_collection": dg.MetadataValue.json(
                    {n: c.documents for n, c in found.collections.items() if c.in_scope}
                ),
            }

        metadata = asyncio.run(read())
        context.log.info(
            f"{schema.name}: {metadata['collections'].value} collections, "
            f"{metadata['documents'].value} documents"
        )
        return dg.MaterializeResult(metadata=metadata)

    return catalog


def build_catalog_defs(settings: CartridgeSettings) -> dg.Definitions:
    return dg.Definitions(assets=[_catalog_asset(s) for s in settings.schemas])
