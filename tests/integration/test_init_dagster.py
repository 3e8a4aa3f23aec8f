"""init's Dagster layer: the schema and dbt_models assets, the dbt assets and their lineage."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import dagster as dg
import pytest

from cartridge_dagster.assets.init import build_init_defs, staging_key
from cartridge_dagster.assets.init.dbt import cartridge_dbt_project
from cartridge_dagster.assets.keys import catalog_key, dbt_models_key, raw_key, schema_key
from cartridge_dagster.connectors.mongo import mongo_session
from tests.support.init_env import InitEnv, asset_of, init_resources, make_env
from tests.support.raw_fixture import land_from_mongo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def env(tmp_path: Path, mongo_url: str, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> InitEnv:
    # no webserver runs here: the reload attempt must fail fast and say so
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "http://127.0.0.1:9")
    return make_env(tmp_path, mongo_url, pg_url)


def test_schema_and_dbt_models_assets_then_dbt_assets(env: InitEnv) -> None:
    settings = env.settings()
    defs = build_init_defs(settings)
    schema_asset = asset_of(defs, schema_key("shop"))
    models_asset = asset_of(defs, dbt_models_key("shop"))
    assert catalog_key("shop") in schema_asset.asset_deps[schema_key("shop")]
    assert schema_key("shop") in models_asset.asset_deps[dbt_models_key("shop")]
    # nothing generated yet: no dbt assets
    assert all(staging_key("shop", "stg_shop__orders") not in a.keys for a in defs.assets or [])

    result = dg.materialize([schema_asset, models_asset], resources=init_resources(env, dbt=True))
    assert result.success
    meta = {
        e.asset_key: e.step_materialization_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    schema_meta = meta[schema_key("shop")]
    assert schema_meta["collections"].value == 4
    assert schema_meta["fields"].value > 50
    assert schema_meta["documents_sampled"].value > 0
    assert schema_meta["version"].value == 1 and schema_meta["status"].value == "created"
    assert "collection added" in schema_meta["diff"].value
    models_meta = meta[dbt_models_key("shop")]
    assert models_meta["files_changed"].value == 7
    assert models_meta["code_location_reload"].value.startswith("skipped: webserver not reachable")

    again = dg.materialize([schema_asset, models_asset], resources=init_resources(env, dbt=True))
    meta2 = {
        e.asset_key: e.step_materialization_data.materialization.metadata
        for e in again.get_asset_materialization_events()
    }
    assert meta2[schema_key("shop")]["status"].value == "unchanged"
    assert meta2[schema_key("shop")]["diff"].value == "No schema change."
    assert meta2[dbt_models_key("shop")]["files_changed"].value == 0

    # generation parsed the project: the models are now assets, in one lineage graph
    cartridge_dbt_project.cache_clear()
    defs = build_init_defs(settings)
    dbt_def = asset_of(defs, staging_key("shop", "stg_shop__orders"))
    orders = staging_key("shop", "stg_shop__orders")
    items = staging_key("shop", "stg_shop__orders__items")
    assert dbt_def.asset_deps[orders] >= {raw_key("shop", "orders"), dbt_models_key("shop")}
    assert dbt_def.asset_deps[items] >= {raw_key("shop", "orders"), dbt_models_key("shop")}
    assert dbt_def.group_names_by_key[orders] == "shop"
    assert {
        staging_key("shop", f"stg_shop__{c}") for c in ("customers", "events", "products")
    } <= set(dbt_def.keys)
    assert dbt_def.check_specs_by_output_name  # generated dbt tests are asset checks

    asyncio.run(land_from_mongo(env.pg_url, env.mongo_url, "shop", "raw_shop"))
    built = dg.materialize([dbt_def], resources=init_resources(env, dbt=True))
    assert built.success
    done = {e.asset_key for e in built.get_asset_materialization_events()}
    assert orders in done and items in done
    checks = built.get_asset_check_evaluations()
    assert checks and all(c.passed for c in checks)

    # a source change shows in the UI: new version, diff as markdown, changed model files
    async def drift() -> None:
        async with mongo_session(env.mongo_url) as conn:
            await conn.database("shop").orders.update_many({}, {"$set": {"channel": "web"}})

    asyncio.run(drift())
    third = dg.materialize([schema_asset, models_asset], resources=init_resources(env, dbt=True))
    meta3 = {
        e.asset_key: e.step_materialization_data.materialization.metadata
        for e in third.get_asset_materialization_events()
    }
    assert meta3[schema_key("shop")]["version"].value == 2
    assert meta3[schema_key("shop")]["changes"].value["fields_added"] == 1
    assert "| field added | `orders` | `channel` |" in meta3[schema_key("shop")]["diff"].value
    assert "stg_shop__orders.sql" in " ".join(meta3[dbt_models_key("shop")]["written"].value)


def test_code_location_loads_with_init_defs(env: InitEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    from cartridge_dagster.definitions import build_definitions

    defs = build_definitions(str(env.config))
    keys = {k for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition) for k in a.keys}
    assert {schema_key("shop"), dbt_models_key("shop")} <= keys


def _raw_collections(defs: dg.Definitions) -> set[str]:
    keys = defs.resolve_all_asset_keys()
    return {k.path[-1] for k in keys if k.path[:2] == ["raw", "shop"]}


def test_code_location_builds_from_component_state_the_scan_recorded(
    env: InitEnv, tmp_path: Path
) -> None:
    """The repo's code location: the collections are component state in the instance's defs
    state storage, recorded by the scan run; a load reads that state, not the scan's files."""
    from cartridge_dagster.definitions import build_definitions

    config = str(env.config)
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "home")) as instance:
        storage = instance.defs_state_storage
        assert storage is not None
        defs = build_definitions(config)
        assert _raw_collections(defs) == set()  # nothing scanned, nothing recorded
        schema_asset = asset_of(defs, schema_key("shop"))
        result = dg.materialize(
            [schema_asset], resources=init_resources(env, dbt=True), instance=instance
        )
        assert result.success
        (event,) = result.get_asset_materialization_events()
        version = event.step_materialization_data.materialization.metadata[
            "component_state_version"
        ].value
        (key,) = storage.get_latest_defs_state_info().info_mapping  # type: ignore[union-attr]
        assert storage.get_latest_version(key) == version

        # the scan's own files go: the load still knows the four collections, from the state
        for f in env.state.rglob("*.json"):
            f.unlink()
        assert _raw_collections(build_definitions(config)) == {
            "customers",
            "events",
            "orders",
            "products",
        }
        # a version recorded where this process cannot read it (another pod's local disk):
        # the load goes on from the scan's files (now none) instead of failing
        shutil.rmtree(str(storage.base_path))  # type: ignore[attr-defined]
        assert _raw_collections(build_definitions(config)) == set()
    # outside an instance there is no state to read: the (now empty) scan files it is
    assert _raw_collections(build_definitions(config)) == set()
