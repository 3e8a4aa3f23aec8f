"""Done-when checks of init on the demo source, through the real CLI, PostgreSQL and dbt.

scan → generate → `dbt build` passes with every generated test; a second scan with no source
change leaves every generated file byte-identical (and writes no version); adding a field and
changing a type produce a new schema version, its diff and an updated staging model.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.init.dbtcli import run_dbt, settings_dbt_env
from tests.support.cli import cartridge
from tests.support.init_env import InitEnv, make_env
from tests.support.raw_fixture import delete_documents, land_from_mongo

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def env(tmp_path: Path, mongo_url: str, pg_url: str) -> InitEnv:
    return make_env(tmp_path, mongo_url, pg_url)


def _ok(proc) -> str:  # type: ignore[no-untyped-def]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(proc.stdout)


def _build(env: InitEnv) -> dict[str, str]:
    result = run_dbt(env.project, ["build"], env=settings_dbt_env(env.settings()), check=False)
    assert result.ok, result.output[-4000:]
    statuses = result.statuses()
    # every model built and every generated test passed: not even a warning
    assert statuses and set(statuses.values()) <= {"success", "pass"}, result.failures()
    return statuses


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_scan_generate_build_and_rescan_is_byte_identical(env: InitEnv) -> None:
    out = _ok(cartridge("scan", "--config", str(env.config), "--output", str(env.root / "s.json")))
    assert "new version v0001" in out
    scanned = json.loads((env.root / "s.json").read_text())["schemas"]["shop"]
    assert set(scanned["collections"]) == {"customers", "events", "orders", "products"}
    orders = scanned["collections"]["orders"]
    assert orders["references"]["customer_id"]["collection"] == "customers"
    assert orders["references"]["items.[].product_id"]["collection"] == "products"
    assert orders["fields"]["status"]["enum"]
    assert "examples" not in scanned["collections"]["customers"]["fields"]["email"]

    out = _ok(
        cartridge("generate", "--config", str(env.config), "--input", str(env.root / "s.json"))
    )
    assert "written" in out
    files = sorted(p.name for p in env.generated.iterdir())
    assert files == [
        "_shop__models.yml",
        "_shop__sources.yml",
        "stg_shop__customers.sql",
        "stg_shop__events.sql",
        "stg_shop__orders.sql",
        "stg_shop__orders__items.sql",
        "stg_shop__products.sql",
    ]

    counts = asyncio.run(land_from_mongo(env.pg_url, env.mongo_url, "shop", "raw_shop"))

    async def tombstone() -> list[str]:
        conn = await asyncpg.connect(env.pg_url)
        try:
            ids = [r[0] for r in await conn.fetch('SELECT "_id" FROM raw_shop.events LIMIT 3')]
            await delete_documents(conn, "raw_shop", "events", ids)
            return ids
        finally:
            await conn.close()

    deleted = asyncio.run(tombstone())
    statuses = _build(env)
    tests = [u for u in statuses if u.startswith("test.")]
    assert len(tests) >= 30
    assert any("relationships" in t for t in tests) and any("accepted_values" in t for t in tests)

    rows = asyncio.run(_fetch(env.pg_url, "SELECT count(*) FROM shop_staging.stg_shop__events"))
    assert rows[0][0] == counts["events"] - len(deleted)
    items = asyncio.run(
        _fetch(
            env.pg_url,
            "SELECT count(*), count(DISTINCT _parent_id), min(_index) "
            "FROM shop_staging.stg_shop__orders__items",
        )
    )
    assert items[0][1] == counts["orders"] and items[0][2] == 0 and items[0][0] >= counts["orders"]
    typed = asyncio.run(
        _fetch(
            env.pg_url,
            "SELECT pg_typeof(placed_at)::text, pg_typeof(total)::text, "
            "cardinality(_cartridge_invalid_fields) FROM shop_staging.stg_shop__orders LIMIT 1",
        )
    )
    assert tuple(typed[0]) == ("timestamp with time zone", "numeric", 0)

    before = env.snapshot()
    versions = sorted(p.name for p in env.state.iterdir())
    out = _ok(cartridge("scan", "--config", str(env.config)))
    assert "unchanged (v0001)" in out
    _ok(cartridge("generate", "--config", str(env.config)))
    assert env.snapshot() == before  # same bytes, not even rewritten
    assert sorted(p.name for p in env.state.iterdir()) == versions


def test_new_field_and_type_change_make_a_version_diff_and_model(env: InitEnv) -> None:
    _ok(cartridge("scan", "--config", str(env.config)))
    _ok(cartridge("generate", "--config", str(env.config)))
    before = env.snapshot()

    async def drift() -> None:
        async with mongo_session(env.mongo_url) as conn:
            db = conn.database("shop")
            ids = [d["_id"] async for d in db.customers.find({}, {"_id": 1}).limit(5)]
            await db.customers.update_many(
                {"_id": {"$in": ids}}, {"$set": {"preferred_language": "pt"}}
            )
            pids = [d["_id"] async for d in db.products.find({}, {"_id": 1}).limit(2)]
            await db.products.update_many({"_id": {"$in": pids}}, {"$set": {"stock": "many"}})

    asyncio.run(drift())
    out = _ok(cartridge("scan", "--config", str(env.config)))
    assert "new version v0002" in out
    assert (env.state / "v0002.json").exists()
    latest = json.loads((env.state / "latest.json").read_text())
    assert latest["version"] == 2
    assert latest["diff"]["fields_added"] == {"customers": ["preferred_language"]}
    assert latest["diff"]["types_widened"]["products"]["stock"] == [["int"], ["int", "string"]]
    assert latest["diff"]["column_types_changed"]["products"]["stock"] == ["integer", "text"]
    diff_out = _ok(cartridge("schema", "diff", "--config", str(env.config), "--schema", "shop"))
    assert "field added" in diff_out and "preferred_language" in diff_out
    assert "type widened" in diff_out

    out = _ok(cartridge("generate", "--config", str(env.config)))
    after = env.snapshot()
    changed = {n for n in after if after[n][0] != before[n][0]}
    assert {"stg_shop__customers.sql", "stg_shop__products.sql", "_shop__models.yml"} <= changed
    assert "stg_shop__orders.sql" not in changed and "stg_shop__events.sql" not in changed
    customers_sql = after["stg_shop__customers.sql"][0].decode()
    assert '"preferred_language"' in customers_sql
    assert "cartridge_cast('\"stock\"', 'text')" in after["stg_shop__products.sql"][0].decode()

    asyncio.run(land_from_mongo(env.pg_url, env.mongo_url, "shop", "raw_shop"))
    _build(env)
    langs = asyncio.run(
        _fetch(
            env.pg_url,
            "SELECT count(*) FROM shop_staging.stg_shop__customers WHERE preferred_language = 'pt'",
        )
    )
    assert langs[0][0] == 5


def test_approve_policy_holds_changes_until_approved(
    tmp_path: Path, mongo_url: str, pg_url: str
) -> None:
    env = make_env(tmp_path, mongo_url, pg_url, scale=0.005)
    text = env.config.read_text().replace(
        "target_schema: raw_shop", "target_schema: raw_shop\n  evolution:\n    policy: approve"
    )
    env.config.write_text(text)
    _ok(cartridge("scan", "--config", str(env.config)))

    async def drift() -> None:
        async with mongo_session(env.mongo_url) as conn:
            await conn.database("shop").orders.update_many({}, {"$set": {"channel": "web"}})

    asyncio.run(drift())
    out = _ok(cartridge("scan", "--config", str(env.config)))
    assert "pending approval" in out
    assert not (env.state / "v0002.json").exists()
    out = _ok(cartridge("schema", "approve", "--config", str(env.config), "--schema", "shop"))
    assert "approved as v0002" in out and "channel" in out


@pytest.mark.parametrize("materialized", ["view", "table"])
def test_bad_values_become_null_and_are_counted(
    tmp_path: Path, mongo_url: str, pg_url: str, materialized: str
) -> None:
    env = make_env(tmp_path, mongo_url, pg_url, scale=0.005)
    config = yaml.safe_load(env.config.read_text())
    config["dbt"]["staging_materialized"] = materialized
    env.config.write_text(yaml.safe_dump(config))
    _ok(cartridge("scan", "--config", str(env.config)))
    _ok(cartridge("generate", "--config", str(env.config)))
    model = (env.generated / "stg_shop__customers.sql").read_text()
    assert f"materialized='{materialized}'" in model and "cartridge_fence()" in model
    asyncio.run(land_from_mongo(env.pg_url, env.mongo_url, "shop", "raw_shop", ["customers"]))

    async def bad_rows() -> None:
        from tests.support.raw_fixture import land_documents

        conn = await asyncpg.connect(env.pg_url)
        try:
            await land_documents(
                conn,
                "raw_shop",
                "customers",
                [
                    {"_id": "bad-1", "loyalty_points": "lots", "created_at": "yesterday"},
                    {"_id": "bad-2", "loyalty_points": {"nested": 1}, "marketing_opt_in": "yes"},
                ],
            )
        finally:
            await conn.close()

    asyncio.run(bad_rows())
    result = run_dbt(
        env.project,
        ["build", "--select", "stg_shop__customers", "--indirect-selection", "cautious"],
        env=settings_dbt_env(env.settings()),
        check=False,
    )
    assert result.ok, result.output[-3000:]  # a bad value never fails the model
    compiled = next((env.project / "target" / "compiled").rglob("stg_shop__customers.sql"))
    # tables get the fence (each cast evaluated once per row); views keep filters pushable
    assert ("offset 0" in compiled.read_text()) is (materialized == "table")
    statuses = result.statuses()
    invalid = [u for u in statuses if "cartridge_invalid_values" in u]
    assert [statuses[u] for u in invalid] == ["warn"]  # counted, reported, not fatal
    assert statuses["model.cartridge.stg_shop__customers"] == "success"
    rows = asyncio.run(
        _fetch(
            env.pg_url,
            "SELECT _id, loyalty_points, created_at, marketing_opt_in, _cartridge_invalid_fields "
            "FROM shop_staging.stg_shop__customers WHERE _id LIKE 'bad-%' ORDER BY _id",
        )
    )
    assert [tuple(r) for r in rows] == [
        ("bad-1", None, None, None, ["created_at", "loyalty_points"]),
        ("bad-2", None, None, None, ["loyalty_points", "marketing_opt_in"]),
    ]
