"""Hostile collection and field names survive generation, dbt parse, and dbt build.

Dots, quotes, spaces, unicode, SQL keywords, case collisions, names over 63 bytes and Jinja
delimiters in field names: the generated SQL quotes every identifier, spells braces with
``chr()``, and each value lands in its own collision-free column.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from cartridge_dagster.init import store
from cartridge_dagster.init.dbtcli import run_dbt, settings_dbt_env
from cartridge_dagster.init.inference import InferenceOptions, Profiler, finalize
from cartridge_dagster.init.naming import staging_model_name
from cartridge_dagster.init.service import generate_schema
from tests.support.init_env import make_env
from tests.support.raw_fixture import land_documents

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIELDS = {
    "sp ace": 1,
    'quo"te': 2,
    "it's": 3,
    "select": 4,
    "Name": 5,
    "name": 6,
    "Größe": 7,
    "x" * 80: 8,
    "x" * 81: 9,
    "{{ run_query('drop schema raw_weird cascade') }}": 10,
    "a%}b{#c": 11,
    "semi;colon --": 12,
}
COLLECTIONS = ["Weird Coll.Name", "weird coll.name", "c" * 70]


def test_hostile_names_build(tmp_path: Path, mongo_url: str, pg_url: str) -> None:
    env = make_env(tmp_path, mongo_url, pg_url, seed=False)
    docs = [{"_id": f"id{i}", **FIELDS, "nested": {"or der": {"group": i}}} for i in range(5)]
    collections: dict[str, Any] = {}
    for name in COLLECTIONS:
        p = Profiler(InferenceOptions())
        p.add_many(docs)
        collections[name] = finalize(name, p, total_documents=5, method="full", rounds=1)
    scanned = {
        "schema": "shop",
        "database": "x",
        "source_kind": "mongodb",
        "collections": collections,
    }
    store.record(env.state, scanned)
    settings = env.settings()
    result = generate_schema(settings, "shop")
    assert not result.skipped and not result.conflicts
    models = {staging_model_name("shop", c) for c in COLLECTIONS}
    assert len(models) == 3

    async def land() -> None:
        conn = await asyncpg.connect(env.pg_url)
        try:
            for name in COLLECTIONS:
                await land_documents(conn, "raw_shop", name, docs)
        finally:
            await conn.close()

    asyncio.run(land())
    built = run_dbt(env.project, ["build"], env=settings_dbt_env(settings), check=False)
    assert built.ok, built.output[-4000:]
    assert set(built.statuses().values()) <= {"success", "pass"}

    async def read() -> list[Any]:
        conn = await asyncpg.connect(env.pg_url)
        try:
            schema_ok = await conn.fetchval(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'raw_shop'"
            )
            assert schema_ok == 1  # the Jinja in a field name did not run
            model = staging_model_name("shop", COLLECTIONS[0])
            return list(await conn.fetch(f'SELECT * FROM shop_staging."{model}" ORDER BY "_id"'))
        finally:
            await conn.close()

    rows = asyncio.run(read())
    assert len(rows) == 5
    values = sorted(v for k, v in rows[0].items() if isinstance(v, int) and not k.startswith("_"))
    # every hostile field has its own column with its own value, plus the nested one (0)
    assert values == [0, *sorted(FIELDS.values())]
