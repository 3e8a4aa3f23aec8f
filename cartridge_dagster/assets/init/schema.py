"""Per schema: ``cartridge/<S>/schema`` (scan, versioned store), ``cartridge/<S>/dbt_models``."""

import asyncio
import os
from typing import Any

import dagster as dg

from cartridge_dagster.assets.init.reload import reload_code_location
from cartridge_dagster.assets.keys import catalog_key, dbt_models_key, group_name, schema_key
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.init import store
from cartridge_dagster.init.service import ScanOutcome, generate_schema, scan_and_record
from cartridge_dagster.resources import CartridgeResource, MongoResource, PostgresResource
from cartridge_dagster.scope import current_scope
from cartridge_dagster.sensors.automation import DBT_POOL, INIT_POOL, generation_condition
from cartridge_dagster.state import schema_dir

__all__ = ["build_schema_assets"]


def _collections_markdown(outcome: ScanOutcome) -> str:
    lines = [
        "| collection | sampled | documents | method | fields | columns | arrays | references |",
        "|---|---:|---:|---|---:|---:|---|---|",
    ]
    for name, coll in sorted(outcome.scan.collections.items()):
        refs = ", ".join(f"`{p}`→{r['collection']}" for p, r in coll["references"].items())
        lines.append(
            f"| {name} | {coll['documents_sampled']:,} | {coll['documents_total']:,} | "
            f"{coll['sampling']['method']} | {len(coll['fields'])} | {len(coll['columns'])} | "
            f"{', '.join(coll['arrays']) or '-'} | {refs or '-'} |"
        )
    return "\n".join(lines)


def _schema_asset(schema: SchemaConfig) -> dg.AssetsDefinition:
    scope = current_scope()  # the build's: where to record the collections this scan finds

    @dg.asset(
        key=schema_key(schema.name),
        deps=[catalog_key(schema.name)],
        group_name=group_name(schema.name),
        kinds={"python"},
        description=(
            f"Inferred, versioned schema of source `{schema.source_database}`: per field path "
            "type histograms, presence, nulls, enums, references; a new version per change."
        ),
        tags={"cartridge/schema": schema.name},
        pool=INIT_POOL,
    )
    def schema_asset(
        context: dg.AssetExecutionContext,
        cartridge: CartridgeResource,
        mongo: MongoResource,
        postgres: PostgresResource,
    ) -> dg.MaterializeResult:
        settings = cartridge.settings()

        async def scan() -> ScanOutcome:
            if settings.source_for(schema.name).type == "mongodb":
                async with mongo.connection(schema.name) as conn:
                    return await scan_and_record(settings, schema.name, connection=conn)
            return await scan_and_record(settings, schema.name)

        outcome = asyncio.run(scan())
        summary = outcome.summary()
        diff = outcome.stored.diff
        context.log.info(
            f"{schema.name}: {summary['collections']} collections, {summary['fields']} fields, "
            f"{summary['documents_sampled']} documents sampled; version "
            f"v{outcome.stored.version:04d} ({outcome.stored.status})"
        )
        metadata: dict[str, Any] = {
            "collections": dg.MetadataValue.int(summary["collections"]),
            "fields": dg.MetadataValue.int(summary["fields"]),
            "documents_sampled": dg.MetadataValue.int(summary["documents_sampled"]),
            "version": dg.MetadataValue.int(outcome.stored.version),
            "status": dg.MetadataValue.text(outcome.stored.status),
            "fingerprint": dg.MetadataValue.text(outcome.stored.fingerprint),
            "diff": dg.MetadataValue.md(diff.markdown()),
            "changes": dg.MetadataValue.json(diff.counts()),
            "per_collection": dg.MetadataValue.md(_collections_markdown(outcome)),
            "scan_seconds": dg.MetadataValue.float(summary["seconds"]),
        }
        if scope.state_key is not None:
            # the component's state: the next load of the code location builds the raw and
            # analytics assets of the collections this scan found, without reading its files
            from cartridge_dagster.component import record_state

            schemas = [s.name for s in settings.schemas if s.name not in scope.excluded_schemas]
            version = record_state(context.instance, scope.state_key, settings, schemas)
            if version is not None:
                metadata["component_state_version"] = dg.MetadataValue.text(version)
        if outcome.stored.status == "pending":
            metadata["approval"] = dg.MetadataValue.text(
                f"change pending: cartridge schema approve --schema {schema.name}"
            )
        # The data version is the latest accepted version: a re-scan without change, or a change
        # waiting for approval, keeps it, so nothing downstream regenerates.
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(str(outcome.stored.version))
        )

    return schema_asset


def _dbt_models_asset(schema: SchemaConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=dbt_models_key(schema.name),
        deps=[schema_key(schema.name)],
        group_name=group_name(schema.name),
        kinds={"dbt"},
        description=(
            f"Generated dbt sources, staging and child models and tests for `{schema.name}` "
            f"(files under models/generated/{schema.name}/)."
        ),
        tags={"cartridge/schema": schema.name},
        # it writes the dbt project's files and parses it: one dbt project, one pool
        pool=DBT_POOL,
        automation_condition=generation_condition(schema),
    )
    def dbt_models(
        context: dg.AssetExecutionContext,
        cartridge: CartridgeResource,
        postgres: PostgresResource,
    ) -> dg.MaterializeResult:
        from cartridge_dagster.init.ai import build_describer
        from cartridge_dagster.init.service import validate_project

        settings: CartridgeSettings = cartridge.settings()
        latest = store.load_latest(schema_dir(settings, schema.name))
        describer = build_describer(settings, progress=lambda m: context.log.debug(m))
        result = generate_schema(settings, schema.name, document=latest, describe=describer)
        reloaded = "not needed"
        if result.changed:
            validate_project(settings, url=postgres.url())
            reloaded = reload_code_location(
                os.environ.get("CARTRIDGE_CODE_LOCATION"),
                run_location=_run_location(context),
                log=context.log,
            )
        context.log.info(
            f"{schema.name}: {len(result.written)} written, {len(result.deleted)} deleted, "
            f"{len(result.unchanged)} unchanged, {len(result.conflicts)} hand-written left alone"
        )
        return dg.MaterializeResult(
            metadata={
                "files_changed": dg.MetadataValue.int(len(result.written) + len(result.deleted)),
                "written": dg.MetadataValue.json(result.written),
                "deleted": dg.MetadataValue.json(result.deleted),
                "unchanged": dg.MetadataValue.int(len(result.unchanged)),
                "conflicts": dg.MetadataValue.json(result.conflicts),
                "skipped": dg.MetadataValue.json(result.skipped),
                "models": dg.MetadataValue.json(result.models),
                "schema_version": dg.MetadataValue.int(int(latest["version"]) if latest else 0),
                "code_location_reload": dg.MetadataValue.text(reloaded),
            }
        )

    return dbt_models


def _run_location(context: dg.AssetExecutionContext) -> str | None:
    origin = context.run.remote_job_origin
    if origin is None:
        return None
    return str(origin.repository_origin.code_location_origin.location_name)


def build_schema_assets(schema: SchemaConfig) -> list[dg.AssetsDefinition]:
    return [_schema_asset(schema), _dbt_models_asset(schema)]
