"""The analytics Dagster layer: assets, checks, jobs, automation, against real services.

The automation conditions themselves are evaluated in test_automation.py."""

import json
import os
from pathlib import Path
from typing import Any

import asyncpg
import dagster as dg
import pytest
import yaml

from cartridge_dagster.assets.analytics import build_analytics_defs
from cartridge_dagster.assets.catalog import build_catalog_defs
from cartridge_dagster.assets.keys import analytics_key, raw_key
from cartridge_dagster.config import load_settings
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from cartridge_dagster.resources.cartridge import (
    CartridgeResource,
    MongoResource,
    PostgresResource,
)
from tests.conftest import run
from tests.support.raw_tables import copy_source, shop_config

pytestmark = pytest.mark.integration

COLLECTIONS = ["customers", "events", "orders", "products"]


def _config(tmp_path: Path, pg_url: str, mongo_url: str, db: str, **analytics: Any) -> Path:
    path = tmp_path / "cartridge.yaml"
    path.write_text(
        yaml.safe_dump(
            shop_config(
                tmp_path,
                mongo_url,
                pg_url,
                db,
                include=COLLECTIONS,
                analytics={"reconcile_sample_size": 40, **analytics},
                tables={"orders": {"max_row_count_change": 0.5}},
            )
        )
    )
    return path


def _defs(config: Path) -> dg.Definitions:
    settings = load_settings(config)
    return dg.Definitions.merge(
        build_catalog_defs(settings),
        build_analytics_defs(settings),
        dg.Definitions(
            resources={
                "cartridge": CartridgeResource(config_path=str(config)),
                "mongo": MongoResource(config_path=str(config)),
                "postgres": PostgresResource(config_path=str(config)),
            }
        ),
    )


async def _seed_and_land(mongo_url: str, db: str, pg_url: str, config: Path) -> None:
    settings = load_settings(config)
    async with mongo_session(mongo_url) as mongo:
        mdb = mongo.database(db)
        await seed_demo(mdb, sizes=DemoSizes.scaled(0.01))
        conn = await asyncpg.connect(pg_url)
        try:
            await copy_source(mdb, conn, settings.get_schema("shop"))
        finally:
            await conn.close()


def test_definitions_and_jobs_resolve(tmp_path: Path, pg_url: str, mongo_url: str) -> None:
    config = _config(tmp_path, pg_url, mongo_url, "shop")
    # the dbt manifest names the generated models (as `dbt parse` writes it)
    manifest = tmp_path / "dbt" / "target" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    nodes = {
        f"model.cartridge.{name}": {
            "resource_type": "model",
            "name": name,
            "schema": "shop_staging",
        }
        for c in COLLECTIONS
        for name in (f"stg_shop__{c}", *([f"stg_shop__{c}__items"] if c == "orders" else []))
    }
    manifest.write_text(json.dumps({"nodes": nodes}))
    defs = _defs(config)
    repo = defs.get_repository_def()
    keys = repo.asset_graph.get_all_asset_keys()
    for c in COLLECTIONS:
        assert analytics_key("shop", c) in keys
        # lineage: raw table and staging model are upstream of the summary
        parents = repo.asset_graph.get(analytics_key("shop", c)).parent_keys
        assert raw_key("shop", c) in parents
        assert dg.AssetKey(["staging", "shop", f"stg_shop__{c}"]) in parents
    orders = repo.asset_graph.get(analytics_key("shop", "orders")).parent_keys
    assert dg.AssetKey(["staging", "shop", "stg_shop__orders__items"]) in orders
    profile = repo.get_job("profile_shop").asset_layer.executable_asset_keys
    assert profile == {analytics_key("shop", c) for c in COLLECTIONS}
    update = repo.get_job("update_shop").asset_layer.executable_asset_keys
    assert {analytics_key("shop", c) for c in COLLECTIONS} <= update
    assert not any(k.path[0] == "raw" for k in update)
    refresh = repo.get_job("refresh_shop").asset_layer.executable_asset_keys
    assert dg.AssetKey(["cartridge", "shop", "catalog"]) in refresh
    # declarative automation: one sensor evaluates the conditions; no schedule
    assert {s.name for s in repo.sensor_defs} == {"cartridge_automation"}
    assert list(repo.schedule_defs) == []
    for c in COLLECTIONS:
        condition = repo.asset_graph.get(analytics_key("shop", c)).automation_condition
        assert condition is not None and "0 * * * *" in str(condition.get_label())
    rebuild = repo.get_job("rebuild_models_shop").asset_layer.executable_asset_keys
    assert rebuild == set()  # init's dbt_models asset is not part of this test's graph


def test_materialize_analytics_with_checks(
    tmp_path: Path, pg_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    config = _config(tmp_path, pg_url, mongo_url, mongo_db_name, max_null_ratio=0.99)
    run(_seed_and_land(mongo_url, mongo_db_name, pg_url, config))
    defs = _defs(config)
    job = defs.resolve_job_def("profile_shop")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success
        mats = {
            m.asset_key: m.metadata
            for m in result.asset_materializations_for_node("analytics_shop")
        }
        assert set(mats) == {analytics_key("shop", c) for c in COLLECTIONS}
        orders = mats[analytics_key("shop", "orders")]
        assert orders["dagster/row_count"].value == 150
        assert orders["source_count"].value == 150 and orders["hash_mismatches"].value == 0
        columns = {c.name for c in orders["dagster/column_schema"].schema.columns}
        assert {"status", "items[].unit_price", "shipping_address.city"} <= columns
        assert "| live rows | 150 |" in orders["summary"].value
        report = Path(orders["report"].value)
        assert report.is_file() and (report.parent / "index.html").is_file()
        html = report.read_text()
        assert "<svg" in html and "http://" not in html.replace("http://www.w3.org", "")
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 5 * len(COLLECTIONS)
        failed = [(c.asset_key, c.check_name, c.description) for c in checks if not c.passed]
        assert failed == []

    # break the target: reconciliation and row-count checks fail, by _id
    async def damage() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(
                "DELETE FROM raw_shop.orders WHERE _id IN "
                "(SELECT _id FROM raw_shop.orders ORDER BY _id LIMIT 100)"
            )
        finally:
            await conn.close()

    run(damage())
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        by_name = {(c.asset_key, c.check_name): c for c in result.get_asset_check_evaluations()}
        rec = by_name[(analytics_key("shop", "orders"), "reconciliation")]
        assert not rec.passed and rec.severity == dg.AssetCheckSeverity.ERROR
        assert "source 150, target 50" in (rec.description or "")
        change = by_name[(analytics_key("shop", "orders"), "row_count_change")]
        assert not change.passed and change.severity == dg.AssetCheckSeverity.WARN
        assert by_name[(analytics_key("shop", "customers"), "reconciliation")].passed


def test_code_location_loads_with_demo_config() -> None:
    """The real definitions module assembles with the analytics builder in BUILDERS."""
    from cartridge_dagster import definitions

    assert build_analytics_defs in definitions.BUILDERS
    assert os.path.isfile("examples/demo.yaml")


def test_checks_alone_and_one_collection(
    tmp_path: Path, pg_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    """The multi-asset subsets: one collection, or its checks without materializing it."""
    config = _config(tmp_path, pg_url, mongo_url, mongo_db_name)
    run(_seed_and_land(mongo_url, mongo_db_name, pg_url, config))
    defs = _defs(config)
    orders = analytics_key("shop", "orders")
    with dg.instance_for_test() as instance:
        one = dg.materialize(
            [defs.get_assets_def(orders)],
            selection=[orders],
            instance=instance,
            resources=defs.resources,
        )
        assert [m.asset_key for m in one.get_asset_materialization_events()] == [orders]
        assert {c.asset_key for c in one.get_asset_check_evaluations()} == {orders}
        job = dg.define_asset_job(
            "orders_checks", selection=dg.AssetSelection.checks_for_assets(orders)
        )
        checks_only = dg.Definitions.merge(defs, dg.Definitions(jobs=[job]))
        result = checks_only.resolve_job_def("orders_checks").execute_in_process(instance=instance)
        assert result.success
        assert result.get_asset_materialization_events() == []
        assert len(result.get_asset_check_evaluations()) == 5
