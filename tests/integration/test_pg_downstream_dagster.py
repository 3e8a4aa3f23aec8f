"""A PostgreSQL-sourced schema through the whole code location, beside a MongoDB one: the catalog
asset reads PostgreSQL's catalogs, ``refresh_billing`` (catalog → schema → dbt models) runs, the
warp job lands the tables, the supervisor asks for a run, and the generated dbt models build
from the raw tables warp landed, in one lineage graph with the MongoDB schema."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import dagster as dg
import pytest

from cartridge_dagster.assets.init import staging_key
from cartridge_dagster.assets.init.dbt import cartridge_dbt_project
from cartridge_dagster.assets.keys import catalog_key, dbt_models_key, raw_key, schema_key
from cartridge_dagster.definitions import build_definitions
from tests.conftest import run
from tests.support.cli import cartridge
from tests.support.demo_env import write_demo_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLES = ("customers", "invoices", "payments")


async def _counts(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM billing.{t}")) for t in TABLES}
    finally:
        await conn.close()


def _metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, object]:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key == key]
    assert len(events) == 1, key
    return {
        k: v.value for k, v in events[0].step_materialization_data.materialization.metadata.items()
    }


def test_pg_schema_refresh_warp_and_dbt_in_dagster(
    tmp_path: Path, pg_source_url: str, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", "http://127.0.0.1:9")  # no webserver to reload
    config = write_demo_config(tmp_path, pg_source_url, pg_url)
    seeded = cartridge("demo", "seed", "--config", str(config), "--scale", "0.05")
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr
    rows = run(_counts(pg_source_url))
    path = str(config)

    defs = build_definitions(path)
    kinds = {
        name: next(iter(defs.resolve_assets_def(catalog_key(name)).specs)).kinds
        for name in ("shop", "billing")
    }
    assert kinds == {"shop": {"mongodb"}, "billing": {"postgres"}}

    with dg.instance_for_test() as instance:
        refresh = defs.resolve_job_def("refresh_billing").execute_in_process(instance=instance)
        assert refresh.success
        catalog = _metadata(refresh, catalog_key("billing"))
        assert catalog["collections"] == 3
        assert catalog["documents"] == sum(rows.values())
        assert catalog["per_collection"] == rows
        schema = _metadata(refresh, schema_key("billing"))
        assert schema["collections"] == 3 and schema["version"] == 1
        assert schema["documents_sampled"] == sum(rows.values())
        models = _metadata(refresh, dbt_models_key("billing"))
        assert models["files_changed"] == 5  # sources, models yml, three staging models
        assert sorted(models["models"]) == [f"stg_billing__{t}" for t in TABLES]  # type: ignore[call-overload]

        # the schema is known now: the raw tables are assets, downstream of the schema
        defs = build_definitions(path)
        for table in TABLES:
            spec = next(iter(defs.resolve_assets_def(raw_key("billing", table)).specs))
            assert schema_key("billing") in {d.asset_key for d in spec.deps}

        sensor = defs.resolve_sensor_def("warp_billing_supervisor")
        tick = sensor.evaluate_tick(dg.build_sensor_context(instance=instance))
        assert [r.run_key for r in tick.run_requests or []] == ["warp_billing-1"]

        warp = defs.resolve_job_def("warp_billing").execute_in_process(
            run_config={"ops": {"warp_billing_run": {"config": {"stop_when_idle_seconds": 1.0}}}},
            instance=instance,
        )
        assert warp.success
        for table, n in rows.items():
            records = instance.fetch_materializations(raw_key("billing", table), limit=100)
            applied = [
                r.asset_materialization.metadata["events_applied"].value  # type: ignore[union-attr]
                for r in records.records
            ]
            assert sum(applied) == n, (table, applied)  # type: ignore[arg-type]

        # the generated models are dbt assets now, fed by warp's raw tables
        cartridge_dbt_project.cache_clear()
        defs = build_definitions(path)
        keys = [staging_key("billing", f"stg_billing__{t}") for t in TABLES]
        dbt_def = defs.resolve_assets_def(keys[0])
        for table, key in zip(TABLES, keys, strict=True):
            assert dbt_def.asset_deps[key] >= {raw_key("billing", table), dbt_models_key("billing")}
            assert dbt_def.group_names_by_key[key] == "billing"
        built = defs.resolve_job_def("update_billing").execute_in_process(
            instance=instance, asset_selection=keys
        )
        assert built.success
        assert {e.asset_key for e in built.get_asset_materialization_events()} == set(keys)
        checks = built.get_asset_check_evaluations()
        assert len(checks) >= 6 and all(c.passed for c in checks), [
            (c.asset_key.to_user_string(), c.check_name) for c in checks if not c.passed
        ]

    async def staged() -> dict[str, int]:
        conn = await asyncpg.connect(pg_url)
        try:
            out = {}
            for table in TABLES:
                where = await conn.fetchval(
                    "SELECT quote_ident(table_schema) FROM information_schema.tables "
                    "WHERE table_name = $1",
                    f"stg_billing__{table}",
                )
                out[table] = int(
                    await conn.fetchval(f"SELECT count(*) FROM {where}.stg_billing__{table}")
                )
            return out
        finally:
            await conn.close()

    assert run(staged()) == rows
