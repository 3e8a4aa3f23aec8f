"""Reconciliation against a PostgreSQL source: a landed table reconciles clean; rows removed,
changed or added behind warp's back in the warehouse are reported by ``_id`` and kind."""

from __future__ import annotations

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
