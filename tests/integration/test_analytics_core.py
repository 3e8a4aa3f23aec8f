"""Analytics core against real PostgreSQL and the embedded MongoDB engine."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from bson import Decimal128, ObjectId

from cartridge_dagster.analytics.checks import dead_letter_check, dead_letter_count
from cartridge_dagster.analytics.models import discover_collections
from cartridge_dagster.analytics.profile import Relation, profile_relation
from cartridge_dagster.analytics.reconcile import reconcile_collection, store_reconciliation
from cartridge_dagster.analytics.report import write_reports
from cartridge_dagster.analytics.runner import analyze_schema, analyze_schema_with
from cartridge_dagster.analytics.store import ensure_analytics_schema
from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from cartridge_dagster.landing import control_ddl, history_table_ddl
from tests.conftest import run
from tests.support.raw_tables import copy_source, land, shop_config, tombstone

pytestmark = pytest.mark.integration

NOW = dt.datetime.now(dt.UTC)


def _settings(tmp_path: Path, mongo_url: str, pg_url: str, db: str, **analytics: Any) -> Any:
    return settings_from_mapping(
        shop_config(
            tmp_path,
            mongo_url,
            pg_url,
            db,
            analytics=analytics,
            tables={"customers": {"sensitive_fields": ["email", "phone"]}},
        )
    )


def _decoded(row: Any) -> dict[str, Any]:
    out = dict(row)
    for key in ("top_values", "histogram"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


async def _profile_fixture(pg_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(pg_url)
    try:
        await ensure_analytics_schema(conn)
        docs = [
            {
                "_id": ObjectId(),
                "n": i,
                "price": Decimal128(f"{i}.50"),
                "status": "paid" if i % 3 else "open",
                "placed_at": dt.datetime(2024, 1, 1 + i % 28, 12, 0),
                "address": {"zip": 1000 + i if i % 2 else f"Z{i}", "city": "Oslo"},
                "items": [{"sku": f"s{j}", "qty": j} for j in range(i % 4)],
                "email": f"user{i}@example.com",
                "maybe": None if i % 5 else i,
            }
            for i in range(40)
        ]
        await land(
            conn,
            "raw_shop",
            "orders",
            docs[:30],
            op="insert",
            source_ts=NOW - dt.timedelta(seconds=3),
            synced_at=NOW,
        )
        await land(conn, "raw_shop", "orders", docs[30:], op="update", source_ts=NOW, synced_at=NOW)
        await tombstone(conn, "raw_shop", "orders", [d["_id"] for d in docs[:4]])
        rel = Relation(
            "shop", "raw", "orders", "raw_shop", "orders", sensitive_paths=frozenset({"email"})
        )
        profile = await profile_relation(conn, rel, "run-1", top_values=3, histogram_buckets=4)
        cols = {
            (r["column_path"], r["json_type"]): _decoded(r)
            for r in await conn.fetch('SELECT * FROM "cartridge_analytics"."column_profiles"')
        }
        tables = [
            dict(r) for r in await conn.fetch("SELECT * FROM cartridge_analytics.table_profiles")
        ]
        activity = [dict(r) for r in await conn.fetch("SELECT * FROM cartridge_analytics.activity")]
        # a second run sees growth
        await land(conn, "raw_shop", "orders", [{"_id": ObjectId(), "n": 99}], op="insert")
        again = await profile_relation(conn, rel, "run-2")
        return {
            "profile": profile,
            "again": again,
            "cols": cols,
            "tables": tables,
            "activity": activity,
        }
    finally:
        await conn.close()


def test_raw_profile_in_sql(pg_url: str) -> None:
    out = run(_profile_fixture(pg_url))
    profile = out["profile"]
    assert profile.rows_total == 40
    assert profile.rows_live == 36
    assert profile.rows_deleted == 4
    t = out["tables"][0]
    assert t["last_inserts"] == 26 and t["last_updates"] == 10 and t["last_deletes"] == 4
    assert t["lag_max_seconds"] == pytest.approx(3.0, abs=0.01)
    cols = out["cols"]
    n = cols[("n", "number")]
    assert n["rows_live"] == 36
    assert n["null_ratio"] == 0
    assert float(n["min_num"]) == 4 and float(n["max_num"]) == 39
    assert n["p50"] == pytest.approx(21.5)
    assert sum(b["count"] for b in n["histogram"]) == 36 and len(n["histogram"]) == 4
    # mixed types are profiled per type; nested paths and array elements are walked
    assert cols[("address.zip", "number")]["rows_with_type"] == 18
    assert cols[("address.zip", "string")]["rows_with_type"] == 18
    assert cols[("items[].qty", "number")]["value_count"] > 0
    assert cols[("items", "array")]["max_length"] == 3
    # null ratio: share of live rows without a non-null value
    maybe = cols[("maybe", "number")]
    assert maybe["null_ratio"] == pytest.approx(1 - 7 / 36)
    # dates: ISO strings get time statistics
    placed = cols[("placed_at", "string")]
    assert placed["time_values"] == 36
    assert placed["min_time"].year == 2024
    assert placed["min_time"] <= placed["p25_time"] <= placed["p50_time"] <= placed["p75_time"]
    assert placed["min_time"] < placed["mean_time"] < placed["max_time"]
    status = cols[("status", "string")]
    assert status["top_values"][0] == {"value": "paid", "count": 24}
    # sensitive: counts and lengths, no values
    email = cols[("email", "string")]
    assert email["sensitive"] and email["top_values"] is None and email["max_length"] > 0
    assert sum(a["inserts"] + a["updates"] + a["deletes"] for a in out["activity"]) == 40
    again = out["again"]
    assert again.rows_live_previous == 36 and again.rows_live == 37
    assert again.row_count_change == pytest.approx(1 / 36)


async def _reconcile_fixture(settings: Any, pg_url: str, mongo_url: str, db: str) -> Any:
    async with mongo_session(mongo_url) as mongo:
        mdb = mongo.database(db)
        await seed_demo(mdb, sizes=DemoSizes.scaled(0.01))
        conn = await asyncpg.connect(pg_url)
        try:
            schema = settings.get_schema("shop")
            await copy_source(mdb, conn, schema)
            await ensure_analytics_schema(conn)
            clean = await reconcile_collection(mongo, conn, schema, "orders", recheck_seconds=0)
            # break the target: one row changed, one missing, one extra, one tombstoned
            ids = [r["_id"] for r in await conn.fetch('SELECT "_id" FROM raw_shop.orders LIMIT 3')]
            await conn.execute(
                "UPDATE raw_shop.orders SET document = jsonb_set(document, '{status}', '\"x\"') "
                'WHERE "_id" = $1',
                ids[0],
            )
            await conn.execute('DELETE FROM raw_shop.orders WHERE "_id" = $1', ids[1])
            await conn.execute(
                'UPDATE raw_shop.orders SET "_cartridge_deleted" = true WHERE "_id" = $1', ids[2]
            )
            await land(conn, "raw_shop", "orders", [{"_id": "ghost", "n": 1}])
            broken = await reconcile_collection(
                mongo, conn, schema, "orders", sample_size=10_000, recheck_seconds=0
            )
            await store_reconciliation(conn, "r1", broken)
            stored = [
                dict(r)
                for r in await conn.fetch(
                    "SELECT _id, kind FROM cartridge_analytics.reconciliation_mismatches ORDER BY kind"
                )
            ]
            return clean, broken, ids, stored
        finally:
            await conn.close()


def test_reconciliation_finds_each_kind(
    tmp_path: Path, pg_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = _settings(tmp_path, mongo_url, pg_url, mongo_db_name)
    clean, broken, ids, stored = run(_reconcile_fixture(settings, pg_url, mongo_url, mongo_db_name))
    assert clean.source_count == clean.target_count == 150
    assert clean.mismatches == [] and clean.within_tolerance and clean.sampled > 0
    kinds = {m.id: m.kind for m in broken.mismatches}
    assert kinds == {
        ids[0]: "hash_mismatch",
        ids[1]: "missing_in_target",
        ids[2]: "deleted_in_target",
        "ghost": "extra_in_target",
    }
    assert broken.source_count == 150 and broken.target_count == 149
    assert not broken.within_tolerance
    assert {r["_id"] for r in stored} == set(kinds)


def test_analyze_schema_end_to_end(
    tmp_path: Path, pg_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    settings = _settings(
        tmp_path, mongo_url, pg_url, mongo_db_name, max_null_ratio=0.99, reconcile_sample_size=50
    )

    async def go() -> Any:
        async with mongo_session(mongo_url) as mongo:
            mdb = mongo.database(mongo_db_name)
            await seed_demo(mdb, sizes=DemoSizes.scaled(0.01))
            conn = await asyncpg.connect(pg_url)
            try:
                await copy_source(mdb, conn, settings.get_schema("shop"))
            finally:
                await conn.close()
        return await analyze_schema(settings, "shop", report_dir=tmp_path / "reports")

    result = run(go())
    assert set(result.collections) == {"customers", "events", "orders", "products"}
    orders = result.collections["orders"]
    assert orders.raw is not None and orders.raw.rows_live == 150
    assert orders.reconciliation is not None and orders.reconciliation.within_tolerance
    assert [c.name for c in orders.checks] == [
        "freshness_lag",
        "reconciliation",
        "dead_letters",
        "null_ratio",
        "row_count_change",
    ]
    assert all(c.passed for c in orders.checks), [c.description for c in orders.checks]
    assert result.report_path is not None and result.report_path.is_file()


async def _models_fixture(settings: Any, pg_url: str) -> Any:
    conn = await asyncpg.connect(pg_url)
    try:
        docs = [
            {
                "_id": ObjectId(),
                "status": "paid" if i % 2 else None,
                "total": Decimal128(f"{i}.25"),
                "placed_at": dt.datetime(2024, 5, 1 + i % 20, 8, 30),
                "items": [{"sku": f"s{j}", "qty": j + 1} for j in range(1 + i % 3)],
            }
            for i in range(20)
        ]
        await land(conn, "raw_shop", "orders", docs, op="update", source_ts=NOW, synced_at=NOW)
        # the collection keeps a history table: every change, not just the last one
        for stmt in history_table_ddl("raw_shop", "orders"):
            await conn.execute(stmt)
        await conn.execute(
            """INSERT INTO raw_shop.orders__history
               SELECT _id, document, _cartridge_deleted, _cartridge_version - n, op,
                      _cartridge_source_ts, _cartridge_synced_at - make_interval(mins => n)
               FROM raw_shop.orders,
                    LATERAL (VALUES (2, 'insert'), (1, 'update'), (0, 'update')) v(n, op)"""
        )
        # staging models as init generates them: typed columns, one child model per array
        await conn.execute("CREATE SCHEMA shop_staging")
        await conn.execute(
            """CREATE VIEW shop_staging.stg_shop__orders AS
               SELECT _id, document->>'status' AS status, (document->>'total')::numeric AS total,
                      (document->>'placed_at')::timestamptz AS placed_at,
                      _cartridge_deleted, _cartridge_synced_at
               FROM raw_shop.orders"""
        )
        await conn.execute(
            """CREATE TABLE shop_staging.stg_shop__orders__items AS
               SELECT o._id AS _parent_id, e.ordinality::int AS _index,
                      e.value->>'sku' AS sku, (e.value->>'qty')::int AS qty
               FROM raw_shop.orders o, jsonb_array_elements(o.document->'items')
                    WITH ORDINALITY e(value, ordinality)"""
        )
        result = await analyze_schema_with(conn, None, settings, "shop", collections=["orders"])
        tables = {
            r["relation_name"]: dict(r)
            for r in await conn.fetch("SELECT * FROM cartridge_analytics.table_profiles")
        }
        activity = await conn.fetch("SELECT * FROM cartridge_analytics.activity")
        return result, tables, activity
    finally:
        await conn.close()


def test_staging_models_and_history_activity(tmp_path: Path, pg_url: str, mongo_url: str) -> None:
    settings = _settings(tmp_path, mongo_url, pg_url, "shop")
    result, tables, activity = run(_models_fixture(settings, pg_url))
    orders = result.collections["orders"]
    models = {m.relation.relation_name: m for m in orders.models}
    assert set(models) == {"stg_shop__orders", "stg_shop__orders__items"}
    stg = {c.path: c for c in models["stg_shop__orders"].columns}
    assert stg["total"].data_type == "numeric" and stg["total"].json_type == "number"
    assert stg["placed_at"].data_type == "timestamp with time zone"
    assert stg["status"].null_ratio == pytest.approx(0.5)
    assert "_cartridge_deleted" not in stg  # bookkeeping columns are not profiled
    assert models["stg_shop__orders__items"].rows_live == sum(1 + i % 3 for i in range(20))
    assert tables["orders"]["activity_source"] == "history"
    assert tables["stg_shop__orders"]["layer"] == "model"
    assert sum(a["inserts"] for a in activity) == 20
    assert sum(a["updates"] for a in activity) == 40
    # no source connection: reconciliation is not run, and says so
    rec = next(c for c in orders.checks if c.name == "reconciliation")
    assert rec.passed and "not run" in rec.description


def test_hostile_names(tmp_path: Path, pg_url: str, mongo_url: str, mongo_db_name: str) -> None:
    """Quotes, semicolons, spaces, dots and non-ASCII in schema, table and field names."""
    raw_schema = 'raw "Shop"; DROP'
    collection = 'Örders "x"; --'
    settings = settings_from_mapping(
        {
            "source": {"connection_string": mongo_url},
            "destination": {"connection_string": pg_url},
            "state_dir": str(tmp_path / "state"),
            "schemas": [
                {
                    "name": "shop",
                    "source_database": mongo_db_name,
                    "target_schema": raw_schema,
                    "include": [collection],
                    "analytics": {"reconcile_sample_size": 10},
                }
            ],
        }
    )
    docs = [
        {"_id": i, 'we"ird key': i, "sp ace": {"x'y": f"v{i}"}, "<b>": "<script>"}
        for i in range(12)
    ]

    async def go() -> Any:
        async with mongo_session(mongo_url) as mongo:
            await mongo.database(mongo_db_name)[collection].insert_many([dict(d) for d in docs])
            conn = await asyncpg.connect(pg_url)
            try:
                await land(conn, raw_schema, collection, docs)
            finally:
                await conn.close()
        return await analyze_schema(settings, "shop", report_dir=tmp_path / "reports")

    result = run(go())
    analysis = result.collections[collection]
    assert analysis.raw is not None and analysis.raw.rows_live == 12
    assert {'we"ird key', "sp ace.x'y", "<b>"} <= {c.path for c in analysis.raw.columns}
    assert analysis.reconciliation is not None and analysis.reconciliation.mismatches == []
    assert analysis.reconciliation.source_count == 12
    page = (tmp_path / "reports" / "shop.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_events_applied_from_warp_name_map(tmp_path: Path, pg_url: str, mongo_url: str) -> None:
    """warp's cumulative counter is kept per profile, and the report charts its deltas."""
    settings = _settings(tmp_path, mongo_url, pg_url, "shop")

    async def go() -> list[Any]:
        conn = await asyncpg.connect(pg_url)
        try:
            for stmt in control_ddl():
                await conn.execute(stmt)
            await land(conn, "raw_shop", "orders", [{"_id": i, "n": i} for i in range(5)])
            counts = []
            for applied in (100, 175):
                await conn.execute(
                    "INSERT INTO cartridge_warp.name_map (schema_name, collection, raw_schema, "
                    "table_name, events_applied) VALUES ('shop', 'orders', 'raw_shop', 'orders', "
                    "$1) ON CONFLICT (schema_name, collection) "
                    "DO UPDATE SET events_applied = EXCLUDED.events_applied",
                    applied,
                )
                await analyze_schema_with(conn, None, settings, "shop", collections=["orders"])
            counts = [
                r["events_applied"]
                for r in await conn.fetch(
                    "SELECT events_applied FROM cartridge_analytics.table_profiles "
                    "WHERE layer = 'raw' ORDER BY profiled_at"
                )
            ]
            await write_reports(conn, settings, tmp_path / "reports")
            return counts
        finally:
            await conn.close()

    assert run(go()) == [100, 175]
    page = (tmp_path / "reports" / "shop.html").read_text()
    assert "Changes applied by warp between profiles" in page
    assert "changes: 75" in page  # the delta's tooltip


def test_dead_letters_counted_from_warps_table(tmp_path: Path, pg_url: str) -> None:
    """No table: no dead letters; pending rows of the collection fail the check; resolved don't."""

    async def go() -> list[int | None]:
        conn = await asyncpg.connect(pg_url)
        try:
            counts = [await dead_letter_count(conn, "shop", "orders")]
            for stmt in control_ddl():
                await conn.execute(stmt)
            insert = (
                "INSERT INTO cartridge_warp.dead_letters (schema_name, collection, document_id, "
                "version, op, error_class, error_message, raw_event, raw_event_json, status, "
                "resolved_at) VALUES ($1, $2, 'x', 1, 'insert', 'E', 'm', '\\x00', '{}', $3, $4)"
            )
            await conn.execute(insert, "shop", "orders", "pending", None)
            await conn.execute(insert, "shop", "orders", "resolved", NOW)
            await conn.execute(insert, "shop", "events", "pending", None)
            await conn.execute(insert, "other", "orders", "pending", None)
            counts.append(await dead_letter_count(conn, "shop", "orders"))
            return counts
        finally:
            await conn.close()

    assert run(go()) == [None, 1]
    assert not dead_letter_check(1).passed and dead_letter_check(None).passed


def test_discover_collections_from_raw_tables(tmp_path: Path, pg_url: str, mongo_url: str) -> None:
    """Without config or state, the raw tables that follow the contract are the collections."""
    settings = _settings(tmp_path, mongo_url, pg_url, "shop")

    async def go() -> list[str]:
        conn = await asyncpg.connect(pg_url)
        try:
            await land(conn, "raw_shop", "orders", [{"_id": 1}])
            await land(conn, "raw_shop", "audit__history", [{"_id": 1}])  # a collection
            for stmt in history_table_ddl("raw_shop", "orders"):  # orders' history: not one
                await conn.execute(stmt)
            await conn.execute("CREATE TABLE raw_shop.notes (id int)")  # not a raw table
            return await discover_collections(conn, settings, settings.get_schema("shop"))
        finally:
            await conn.close()

    assert run(go()) == ["audit__history", "orders"]
