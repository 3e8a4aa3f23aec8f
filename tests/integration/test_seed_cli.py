"""The seed's CLI without a configuration file: scan a source given on the command line into
a file, then generate dbt models from that file (PostgreSQL and MongoDB sources)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cartridge_dagster.connectors.mongo import mongo_session
from tests.conftest import run
from tests.support.cli import cartridge
from tests.support.pgsource import execute

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_scan_and_generate_a_postgresql_source(tmp_path: Path, pg_source_url: str) -> None:
    execute(
        pg_source_url,
        'CREATE SCHEMA "Sales"',
        'CREATE TABLE "Sales".orders (id int PRIMARY KEY, total numeric(29,2) NOT NULL, '
        "placed timestamptz, note text)",
        "INSERT INTO \"Sales\".orders SELECT g, g * 1.5, now(), 'n' FROM generate_series(1, 5) g",
    )
    out = tmp_path / "schema.json"
    scanned = cartridge(
        "scan",
        "--connection-string",
        pg_source_url,
        "--database",
        "Sales",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert scanned.returncode == 0, scanned.stderr
    doc = json.loads(out.read_text())["schemas"]["sales"]
    assert doc["source_kind"] == "postgresql" and doc["database"] == "Sales"
    columns = doc["collections"]["orders"]["columns"]
    assert set(columns) == {"id", "total", "placed", "note"}
    assert columns["total"]["sql_type"] == "numeric"
    assert columns["placed"]["sql_type"] == "timestamptz"
    assert not (tmp_path / ".cartridge").exists(), "nothing but the output is kept"

    models = tmp_path / "models"
    generated = cartridge(
        "generate",
        "--input",
        str(out),
        "--output-dir",
        str(models),
        "--ai-provider",
        "none",
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stderr
    sql = (models / "sales" / "stg_sales__orders.sql").read_text()
    assert "total" in sql and "placed" in sql
    yml = "".join(p.read_text() for p in (models / "sales").glob("*.yml"))
    assert "raw_sales" in yml and "orders" in yml, "dbt sources point at the raw tables"


def test_scan_and_generate_a_mongodb_source(tmp_path: Path) -> None:
    url = f"mongoeco://{tmp_path / 'source.sqlite'}"

    async def seed() -> None:
        async with mongo_session(url) as conn:
            await conn.database("shop").customers.insert_many(
                [
                    {"_id": i, "name": f"c{i}", "tier": "gold" if i % 2 else "basic"}
                    for i in range(30)
                ]
            )

    run(seed())
    out = tmp_path / "schema.json"
    missing = cartridge("scan", "--connection-string", url, "--output", str(out), cwd=tmp_path)
    assert missing.returncode == 2
    assert "pass --database" in missing.stderr and "Traceback" not in missing.stderr
    no_output = cartridge("scan", "--connection-string", url, "--database", "shop", cwd=tmp_path)
    assert no_output.returncode == 2 and "needs --output" in no_output.stderr
    scanned = cartridge(
        "scan",
        "--connection-string",
        url,
        "--database",
        "shop",
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert scanned.returncode == 0, scanned.stderr
    doc = json.loads(out.read_text())["schemas"]["shop"]
    assert doc["collections"]["customers"]["documents_total"] == 30
    models = tmp_path / "models"
    generated = cartridge(
        "generate",
        "--input",
        str(out),
        "--output-dir",
        str(models),
        "--ai-provider",
        "none",
        cwd=tmp_path,
    )
    assert generated.returncode == 0, generated.stderr
    assert (models / "shop" / "stg_shop__customers.sql").exists()
