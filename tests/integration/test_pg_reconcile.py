"""Reconciliation against a PostgreSQL source: a landed table reconciles clean; rows removed,
changed or added behind warp's back in the warehouse are reported by ``_id`` and kind."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from cartridge_dagster.analytics.reconcile_pg import reconcile_pg_table
from cartridge_dagster.pg_documents import SESSION_SETTINGS
from cartridge_dagster.warp.runner import WarpRunner
from tests.conftest import run
from tests.support.pgsource import execute, pg_settings

pytestmark = [pytest.mark.integration]


def test_reconcile_a_postgresql_source(pg_source_url: str, pg_url: str) -> None:
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.orders (region text, id int, total numeric(29,2), at timestamptz, "
        "x double precision, PRIMARY KEY (region, id))",
        "INSERT INTO app.orders SELECT CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'ÜS' END, g, "
        "12345678901234567890123456.78, now(), CASE WHEN g = 7 THEN 'NaN'::float8 ELSE g END "
        "FROM generate_series(1, 120) g",
    )
    settings = pg_settings(pg_source_url, pg_url)
    schema = settings.schemas[0]

    async def go() -> None:
        await WarpRunner(schema=schema, settings=settings, stop_when_idle=0.8).run()
        source = await asyncpg.connect(pg_source_url, server_settings=dict(SESSION_SETTINGS))
        conn = await asyncpg.connect(pg_url)
        try:
            clean = await reconcile_pg_table(
                source, conn, schema, "orders", sample_size=1000, recheck_seconds=0.1
            )
            assert clean.source_count == clean.target_count == 120
            assert clean.sampled == 120 and clean.mismatches == []
            assert clean.within_tolerance
            # the warehouse is tampered with behind warp's back
            await conn.execute(
                """DELETE FROM raw_shop.orders WHERE _id = '["EU",2]';
                   UPDATE raw_shop.orders SET document = document || '{"total": 1}'
                     WHERE _id = '["ÜS",3]';
                   INSERT INTO raw_shop.orders (_id, document, _cartridge_version, _cartridge_op)
                     VALUES ('["EU",999]', '{}', 1, 'insert')"""
            )
            found = await reconcile_pg_table(
                source, conn, schema, "orders", sample_size=1000, recheck_seconds=0.1
            )
        finally:
            await source.close()
            await conn.close()
        assert {(m.id, m.kind) for m in found.mismatches} == {
            ('["EU",2]', "missing_in_target"),
            ('["ÜS",3]', "hash_mismatch"),
            ('["EU",999]', "extra_in_target"),
        }
        assert not found.within_tolerance

    run(go())


def test_catalog_of_a_postgresql_source(pg_source_url: str) -> None:
    from cartridge_dagster.init.catalog import read_pg_catalog

    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.a (id int PRIMARY KEY, v text)",
        'CREATE TABLE app."Skipped" (id int PRIMARY KEY)',
        "INSERT INTO app.a SELECT g, repeat('x', 100) FROM generate_series(1, 250) g",
    )
    settings = pg_settings(pg_source_url, pg_source_url, schema={"exclude": ["Skipped"]})

    async def go() -> None:
        conn = await asyncpg.connect(pg_source_url)
        try:
            catalog = await read_pg_catalog(conn, settings.schemas[0])
        finally:
            await conn.close()
        assert catalog.collections["a"].documents == 250
        assert catalog.collections["a"].avg_document_bytes > 100
        assert catalog.to_json()["out_of_scope"] == ["Skipped"]
        assert catalog.total_documents == 250

    run(go())


def test_analysis_of_a_postgresql_source_reconciles_against_it(
    pg_source_url: str, pg_url: str, tmp_path: Path
) -> None:
    """``analyze_schema`` (what ``cartridge analyze`` and the analytics assets run) picks the
    PostgreSQL source from the configuration: never MongoDB."""
    from cartridge_dagster.analytics.runner import analyze_schema

    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.items (id int PRIMARY KEY, name text, price numeric(10,2))",
        "INSERT INTO app.items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 40) g",
    )
    settings = pg_settings(pg_source_url, pg_url, state_dir=str(tmp_path / "state"))
    schema = settings.schemas[0]

    async def go() -> None:
        await WarpRunner(schema=schema, settings=settings, stop_when_idle=0.8).run()
        clean = await analyze_schema(settings, "shop", collections=["items"])
        rec = clean.collections["items"].reconciliation
        assert rec is not None
        assert (rec.source_count, rec.target_count, rec.sampled) == (40, 40, 40)
        assert rec.mismatches == []
        assert {c.name: c.passed for c in clean.collections["items"].checks}["reconciliation"]
        # a row changed at the source behind warp's back, one removed from the warehouse
        execute(pg_source_url, "UPDATE app.items SET price = 0 WHERE id = 5")
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("DELETE FROM raw_shop.items WHERE _id = '7'")
        finally:
            await conn.close()
        found = await analyze_schema(settings, "shop", collections=["items"])
        rec = found.collections["items"].reconciliation
        assert rec is not None
        assert (rec.source_count, rec.target_count) == (40, 39)
        assert {(m.id, m.kind) for m in rec.mismatches} == {
            ("5", "hash_mismatch"),
            ("7", "missing_in_target"),
        }
        checks = {c.name: c for c in found.collections["items"].checks}
        assert not checks["reconciliation"].passed

    run(go())


def test_analysis_of_an_unreachable_postgresql_source_fails_reconciliation_only(
    pg_url: str, tmp_path: Path
) -> None:
    from cartridge_dagster.analytics.runner import analyze_schema

    dead = "postgresql://nobody:secret@127.0.0.1:1/nowhere"
    settings = pg_settings(dead, pg_url, state_dir=str(tmp_path / "state"))

    async def go() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("CREATE SCHEMA raw_shop")
            await conn.execute(
                "CREATE TABLE raw_shop.items (_id text PRIMARY KEY, document jsonb, "
                "_cartridge_deleted boolean NOT NULL DEFAULT false, _cartridge_version bigint, "
                "_cartridge_op text, _cartridge_source_ts timestamptz, "
                "_cartridge_synced_at timestamptz DEFAULT now())"
            )
            await conn.execute(
                "INSERT INTO raw_shop.items (_id, document) VALUES ('1', '{\"id\": 1}')"
            )
        finally:
            await conn.close()
        result = await analyze_schema(settings, "shop", collections=["items"])
        analysis = result.collections["items"]
        assert analysis.raw is not None and analysis.raw.rows_live == 1
        assert analysis.reconciliation is None
        check = {c.name: c for c in analysis.checks}["reconciliation"]
        assert not check.passed
        assert "PostgreSQL source" in check.description
        assert "secret" not in check.description

    run(go())
