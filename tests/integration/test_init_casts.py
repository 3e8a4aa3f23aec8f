"""The guarded cast macros on edge values, through real dbt and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from cartridge_dagster.init.dbtcli import dbt_env, run_dbt
from tests.support.init_env import copy_dbt_project

pytestmark = pytest.mark.integration

# (jsonb value, type, expected text of the cast or None, valid?)
CASES = [
    ("1", "integer", "1", True),
    ('"42"', "integer", "42", True),
    ("2147483648", "integer", None, False),
    ("1.5", "integer", None, False),
    ("3.0", "integer", "3", True),
    ("9223372036854775807", "bigint", "9223372036854775807", True),
    ("9223372036854775808", "bigint", None, False),
    ('"12.50"', "numeric", "12.50", True),
    ('"NaN"', "numeric", None, False),
    ("1e3", "double precision", "1000", True),
    ("1e400", "double precision", None, False),
    ('"1e-400"', "double precision", None, False),
    ("12.25", "double precision", "12.25", True),
    ('"12"', "bigint", "12", True),
    ("-7", "bigint", "-7", True),
    ("12.5", "numeric", "12.5", True),
    ('"x"', "numeric", None, False),
    ("true", "integer", None, False),
    ('"abc"', "double precision", None, False),
    ("true", "boolean", "true", True),
    ('"yes"', "boolean", None, False),
    ('"2026-01-02T03:04:05.678Z"', "timestamptz", "2026-01-02 03:04:05.678+00", True),
    ('"0000-01-01T00:00:00Z"', "timestamptz", None, False),
    ('"yesterday"', "timestamptz", None, False),
    ('"2026-02-03"', "date", "2026-02-03", True),
    (
        '"6f1c2a3b-0000-4000-8000-00000000abcd"',
        "uuid",
        "6f1c2a3b-0000-4000-8000-00000000abcd",
        True,
    ),
    ('"not-a-uuid"', "uuid", None, False),
    ('{"a": 1}', "text", '{"a": 1}', True),
    ("null", "integer", None, True),
    ('{"a": 1}', "jsonb", '{"a": 1}', True),
    ("null", "jsonb", None, True),
]


def test_cast_macros(tmp_path: Path, pg_url: str) -> None:
    project = copy_dbt_project(tmp_path / "dbt")
    selects = []
    for i, (value, sql_type, _, _) in enumerate(CASES):
        literal = value.replace("'", "''")
        selects.append(
            f"select {i} as n, ({{{{ cartridge_cast('x', '{sql_type}') }}}})::text as v, "
            f"{{{{ cartridge_valid('x', '{sql_type}') }}}} as ok "
            f"from (select '{literal}'::jsonb as x) as s{i}"
        )
    (project / "models" / "cast_cases.sql").write_text(
        "{{ config(materialized='table') }}\n" + "\nunion all\n".join(selects) + "\n"
    )
    env = dbt_env(pg_url, schema="casts")
    result = run_dbt(project, ["run", "--select", "cast_cases"], env=env, check=False)
    assert result.ok, result.output[-3000:]

    async def read() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("SET TIME ZONE 'UTC'")
            return list(await conn.fetch("SELECT n, v, ok FROM casts.cast_cases ORDER BY n"))
        finally:
            await conn.close()

    rows = asyncio.run(read())
    got = [(r["v"], r["ok"]) for r in rows]
    expected = [(e, ok) for _, _, e, ok in CASES]
    assert got == expected
