"""A PostgreSQL source through the whole init chain: warp lands the rows, the scan (catalogs and
sampled rows) drives the generator, real dbt builds the staging model and runs its tests, and
the typed staging columns equal the source's (compared as PostgreSQL prints both)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from cartridge_dagster.init.dbtcli import dbt_env, run_dbt
from cartridge_dagster.init.generate import render_schema
from cartridge_dagster.init.naming import staging_schema_name
from cartridge_dagster.init.scan import scan_postgres
from cartridge_dagster.warp.runner import WarpRunner
from tests.conftest import run
from tests.support.init_env import copy_dbt_project
from tests.support.pgsource import UTC, execute, pg_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLUMNS = ("id", "total", "placed", "day", "flag", "status", "big", "ratio", "code", "data")


def test_staging_models_type_what_warp_landed(
    tmp_path: Path, pg_source_url: str, pg_url: str
) -> None:
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        """CREATE TABLE app.orders (id int PRIMARY KEY, total numeric(29,2) NOT NULL,
            placed timestamptz, day date, flag boolean, status text NOT NULL, big bigint,
            ratio double precision, code uuid, data jsonb)""",
        """INSERT INTO app.orders SELECT g, 123456789012345678901234567.89 + g,
            '2024-03-10 02:30:00.123456-08'::timestamptz + g * interval '1 hour',
            '2024-02-28'::date + g, g % 2 = 0, (ARRAY['new', 'paid', 'shipped'])[1 + g % 3],
            9007199254740993 + g, g / 7.0, md5(g::text)::uuid,
            jsonb_build_object('n', g, 'tags', jsonb_build_array('a', 'b'))
            FROM generate_series(1, 60) g""",
        "ANALYZE app.orders",
    )
    settings = pg_settings(pg_source_url, pg_url)
    schema = settings.schemas[0]

    async def land_and_scan() -> dict[str, dict[str, object]]:
        await WarpRunner(settings, schema, stop_when_idle=0.8).run()
        conn = await asyncpg.connect(pg_source_url)
        try:
            return (await scan_postgres(conn, schema)).collections
        finally:
            await conn.close()

    collections = run(land_and_scan())
    assert collections["orders"]["fields"]["status"]["enum"] == ["new", "paid", "shipped"]
    files, skipped = render_schema(
        schema.name, schema.raw_schema, staging_schema_name(schema.name, "staging"), collections
    )
    assert not skipped
    project = copy_dbt_project(tmp_path / "dbt")
    target = project / "models" / "generated" / schema.name
    target.mkdir(parents=True)
    for name, text in files.items():
        (target / name).write_text(text)
    built = run_dbt(
        project,
        ["build", "--select", f"path:models/generated/{schema.name}"],
        env=dbt_env(pg_url, schema="dbt"),
        check=False,
    )
    assert built.ok, built.output[-4000:]

    async def compare() -> None:
        dst = await asyncpg.connect(pg_url, server_settings=UTC)
        src = await asyncpg.connect(pg_source_url, server_settings=UTC)
        try:
            relation = await dst.fetchval(
                "SELECT quote_ident(table_schema) || '.' || quote_ident(table_name) "
                "FROM information_schema.tables WHERE table_name = 'stg_shop__orders'"
            )
            assert relation is not None
            cols = ", ".join(f"{c}::text" for c in COLUMNS)
            staged = [
                tuple(r) for r in await dst.fetch(f"SELECT {cols} FROM {relation} ORDER BY id")
            ]
            source = [
                tuple(r) for r in await src.fetch(f"SELECT {cols} FROM app.orders ORDER BY id")
            ]
        finally:
            await dst.close()
            await src.close()
        assert len(staged) == 60
        assert staged == source

    run(compare())
