"""Raw tables → generated dbt staging models → summaries, through the real code location.

init generates the models from a real scan; the ``update_<S>`` job that the raw-changes sensor
starts builds them with real dbt and then profiles raw tables and models, with every check.
"""

import asyncio
import os
import shutil
from pathlib import Path

import asyncpg
import dagster as dg
import pytest
import yaml

from cartridge_dagster.assets.keys import analytics_key
from cartridge_dagster.config import load_settings
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from cartridge_dagster.init.service import generate_schema, scan_and_record, validate_project
from tests.support.raw_tables import copy_source
from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLLECTIONS = ["customers", "events", "orders", "products"]


def test_update_job_builds_models_then_summaries(
    tmp_path: Path,
    pg_url: str,
    mongo_url: str,
    mongo_db_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    project = tmp_path / "dbt_project"
    shutil.copytree(
        REPO / "dbt_project",
        project,
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "generated"),
    )
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": mongo_url},
                "destination": {"connection_string": pg_url},
                "state_dir": str(tmp_path / "state"),
                "dbt": {"project_dir": str(project)},
                "defaults": {"analytics": {"reconcile_sample_size": 50}},
                "schemas": [{"name": "shop", "source_database": mongo_db_name}],
            }
        )
    )
    settings = load_settings(config)

    async def prepare() -> None:
        async with mongo_session(mongo_url) as mongo:
            mdb = mongo.database(mongo_db_name)
            await seed_demo(mdb, sizes=DemoSizes.scaled(0.01))
            await scan_and_record(settings, "shop", connection=mongo)
            conn = await asyncpg.connect(pg_url)
            try:
                await copy_source(mdb, conn, settings.get_schema("shop"))
            finally:
                await conn.close()

    asyncio.run(prepare())
    generate_schema(settings, "shop")
    validate_project(settings, url=pg_url)  # dbt parse: the manifest dagster-dbt loads

    from cartridge_dagster.definitions import build_definitions

    defs = build_definitions(str(config))
    job = defs.resolve_job_def("update_shop")
    keys = job.asset_layer.executable_asset_keys
    staging = {k for k in keys if k.path[0] == "staging"}
    assert dg.AssetKey(["staging", "shop", "stg_shop__orders"]) in staging
    assert dg.AssetKey(["staging", "shop", "stg_shop__orders__items"]) in staging
    assert not any(k.path[0] in ("raw", "cartridge") for k in keys)

    with dg.instance_for_test() as instance:
        result = job.execute_in_process(instance=instance)
        assert result.success
        order = [
            e.asset_key.path[0]
            for e in result.get_asset_materialization_events()
            if e.asset_key is not None
        ]
        # dbt models first, then the summaries that read them
        assert order.index("analytics") > max(i for i, p in enumerate(order) if p == "staging")
        mats = {
            m.asset_key: m.metadata
            for m in result.asset_materializations_for_node("analytics_shop")
        }
        assert set(mats) == {analytics_key("shop", c) for c in COLLECTIONS}
        orders = mats[analytics_key("shop", "orders")]
        models = orders["staging_models"].value
        assert set(models) == {
            "shop_staging.stg_shop__orders",
            "shop_staging.stg_shop__orders__items",
        }
        assert models["shop_staging.stg_shop__orders"] == 150
        assert models["shop_staging.stg_shop__orders__items"] > 150
        # the column schema shown is the staging model's, with its SQL types
        types = {c.name: c.type for c in orders["dagster/column_schema"].schema.columns}
        assert types["placed_at"] == "timestamp with time zone"
        failed = [
            (c.asset_key.to_user_string(), c.check_name, c.description)
            for c in result.get_asset_check_evaluations()
            if not c.passed and c.asset_key.path[0] == "analytics"
        ]
        assert failed == []
