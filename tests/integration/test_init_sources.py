"""Scanning details against real services: adaptive sampling rounds, PostgreSQL catalogs,
and the dbt-parse gate for AI-proposed SQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import httpx2
import pytest

from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.init.ai import build_describer
from cartridge_dagster.init.generate import render_schema
from cartridge_dagster.init.scan import scan_mongo, scan_postgres
from cartridge_dagster.init.service import generate_schema, scan_and_record
from tests.support.init_env import make_env
from tests.unit.test_init_ai import Recorder, openai_sse, sse

pytestmark = pytest.mark.integration


def _schema_cfg(**sampling: object):  # type: ignore[no-untyped-def]
    return settings_from_mapping(
        {
            "source": {"connection_string": "mongoeco://:memory:"},
            "schemas": [{"name": "s", "source_database": "db", "sampling": sampling}],
        }
    ).get_schema("s")


def test_adaptive_sampling_stops_when_the_shape_settles(mongo_url: str) -> None:
    async def run() -> None:
        async with mongo_session(mongo_url) as conn:
            db = conn.database("db")
            await db.same.insert_many([{"_id": i, "a": i, "b": "x"} for i in range(400)])
            # a rare field: adaptive sampling keeps going while it still finds new paths
            await db.drift.insert_many(
                [{"_id": i, "a": i, **({f"f{i}": 1} if i % 10 == 0 else {})} for i in range(400)]
            )
            cfg = _schema_cfg(sample_size=50, max_sample_size=300, full_scan_below=100)
            result = await scan_mongo(conn, cfg)
            same = result.collections["same"]
            assert same["sampling"]["method"] == "sample"
            assert same["sampling"]["rounds"] == 2  # round 2 found nothing new: stop
            # two rounds of 50 documents of the lowest seeded ranks (never one twice)
            assert same["documents_sampled"] == 100 and same["documents_total"] == 400
            drift = result.collections["drift"]
            assert drift["sampling"]["rounds"] > 2 and drift["documents_sampled"] <= 300
            fixed = await scan_mongo(
                conn,
                _schema_cfg(
                    sample_size=50, max_sample_size=300, full_scan_below=100, adaptive=False
                ),
            )
            assert fixed.collections["same"]["documents_sampled"] == 50
            full = await scan_mongo(conn, cfg, full_scan=True)
            assert full.collections["drift"]["documents_sampled"] == 400
            assert full.collections["drift"]["sampling"]["method"] == "full"

    asyncio.run(run())


def test_postgresql_source_from_catalogs(pg_url: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(
                """
                CREATE SCHEMA app;
                CREATE TABLE app.users (id bigint PRIMARY KEY, email text NOT NULL,
                                        created_at timestamptz, score numeric);
                CREATE TABLE app.orders (id serial PRIMARY KEY,
                                         user_id bigint REFERENCES app.users(id), total numeric);
                INSERT INTO app.users SELECT g, 'u' || g || '@x.io', now(), NULL FROM generate_series(1, 50) g;
                INSERT INTO app.orders (user_id, total) SELECT 1 + g % 50, g FROM generate_series(1, 200) g;
                ANALYZE app.users; ANALYZE app.orders;
                """
            )
            cfg = settings_from_mapping(
                {
                    "source": {"type": "postgresql", "connection_string": pg_url},
                    "schemas": [{"name": "app", "source_database": "app"}],
                }
            ).get_schema("app")
            result = await scan_postgres(conn, cfg)
        finally:
            await conn.close()
        users, orders = result.collections["users"], result.collections["orders"]
        assert users["primary_key"] == ["id"] and users["documents_total"] == 50
        assert (
            users["fields"]["email"]["required"] and users["fields"]["score"]["null_ratio"] == 1.0
        )
        assert users["fields"]["id"]["distinct"] == 50
        assert users["columns"]["created_at"]["sql_type"] == "timestamptz"
        assert orders["references"]["user_id"]["collection"] == "users"
        assert orders["columns"]["total"]["sql_type"] == "numeric"
        # the same generator serves PostgreSQL sources (rows landed as documents by warp)
        files, skipped = render_schema("app", "raw_app", "app_staging", result.collections)
        assert not skipped
        assert "cartridge_cast('\"created_at\"', 'timestamptz')" in files["stg_app__users.sql"]
        models = files["_app__models.yml"]
        assert "to: ref('stg_app__users')" in models and "field: id" in models

    asyncio.run(run())


def test_postgresql_scans_sample_the_rows(pg_url: str) -> None:
    """Null ratios, distinct counts, examples and enums come from the rows (as landed), not
    only from the catalogs; a large table is sampled, the same rows each time."""

    async def run() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(
                """
                CREATE SCHEMA app;
                CREATE TYPE app.tier AS ENUM ('basic', 'gold');
                CREATE TABLE app.orders (id int PRIMARY KEY, status text, tier app.tier,
                                         placed timestamptz, note text);
                INSERT INTO app.orders SELECT g, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3],
                  CASE WHEN g % 2 = 0 THEN 'gold' ELSE 'basic' END::app.tier,
                  '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour',
                  CASE WHEN g % 4 = 0 THEN NULL ELSE 'n' || g END
                FROM generate_series(1, 300) g;
                CREATE TABLE app.big (id int PRIMARY KEY, kind text);
                INSERT INTO app.big SELECT g, 'k' || (g % 5) FROM generate_series(1, 3000) g;
                ANALYZE app.orders; ANALYZE app.big;
                """
            )
            cfg = settings_from_mapping(
                {
                    "source": {"type": "postgresql", "connection_string": pg_url},
                    "schemas": [
                        {
                            "name": "app",
                            "source_database": "app",
                            "sampling": {
                                "full_scan_below": 1000,
                                "sample_size": 200,
                                "max_sample_size": 400,
                            },
                        }
                    ],
                }
            ).get_schema("app")
            first = await scan_postgres(conn, cfg)
            again = await scan_postgres(conn, cfg)
        finally:
            await conn.close()
        orders = first.collections["orders"]
        assert orders["sampling"]["method"] == "full" and orders["documents_sampled"] == 300
        fields = orders["fields"]
        assert fields["status"]["enum"] == ["new", "paid", "shipped"]
        assert fields["tier"]["enum"] == ["basic", "gold"]
        assert "enum" not in fields["placed"], "timestamps are never enums"
        assert fields["note"]["null_ratio"] == 0.25
        assert fields["status"]["distinct"] == 3 and fields["status"]["distinct_exact"]
        assert fields["placed"]["examples"][0] == "2024-01-01T01:00:00+00:00"
        big = first.collections["big"]
        assert big["sampling"]["method"] == "sample"
        assert 0 < big["documents_sampled"] <= 400
        assert big["fields"]["kind"]["enum"] == ["k0", "k1", "k2", "k3", "k4"]
        assert first.to_json() == again.to_json(), "the same data gives the same scan"
        files, skipped = render_schema("app", "raw_app", "app_staging", first.collections)
        assert not skipped
        assert "accepted_values" in files["_app__models.yml"]

    asyncio.run(run())


@pytest.mark.slow
def test_ai_sql_must_pass_dbt_parse_before_it_is_written(
    tmp_path: Path, mongo_url: str, pg_url: str
) -> None:
    env = make_env(tmp_path, mongo_url, pg_url, scale=0.005)
    settings = env.settings()
    asyncio.run(scan_and_record(settings, "shop"))
    answer = {
        "description": "Orders.",
        "columns": [],
        "suggestions": [
            {
                "name": "orders_per_status",
                "sql": "select status, count(*) as n from {{ ref('stg_shop__orders') }} group by status",
            },
            {"name": "broken_ref", "sql": "select * from {{ ref('no_such_model') }}"},
        ],
    }
    plain = {"description": "Other.", "columns": [], "suggestions": []}
    responses = []
    for name in ("customers", "events", "orders", "products"):
        responses.append(sse(openai_sse(json.dumps(answer if name == "orders" else plain))))
    rec = Recorder(responses)
    settings = settings.model_copy(
        update={"ai": settings.ai.model_copy(update={"provider": "openai", "api_key": None})}
    )
    import os

    os.environ["OPENAI_API_KEY"] = "sk-test-not-a-real-key"
    try:
        describer = build_describer(
            settings, http_client=httpx2.Client(transport=httpx2.MockTransport(rec))
        )
        result = generate_schema(settings, "shop", describe=describer)
    finally:
        del os.environ["OPENAI_API_KEY"]
    assert (env.generated / "orders_per_status.sql").exists()
    assert not (env.generated / "broken_ref.sql").exists()
    assert "dbt parse failed" in result.rejected["broken_ref.sql"]
    assert "no_such_model" in result.rejected["broken_ref.sql"]
