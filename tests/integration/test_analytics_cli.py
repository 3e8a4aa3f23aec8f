"""`cartridge analyze --config FILE --output DIR`, run as a real subprocess."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
import yaml

from cartridge_dagster.config import load_settings
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from tests.conftest import run
from tests.support.cli import cartridge
from tests.support.raw_tables import copy_source

pytestmark = pytest.mark.integration


def test_analyze_writes_reports(
    tmp_path: Path, pg_url: str, mongo_url: str, mongo_db_name: str
) -> None:
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": mongo_url},
                "destination": {"connection_string": pg_url},
                "state_dir": str(tmp_path / "state"),
                "schemas": [{"name": "shop", "source_database": mongo_db_name}],
            }
        )
    )

    async def land() -> None:
        async with mongo_session(mongo_url) as mongo:
            mdb = mongo.database(mongo_db_name)
            await seed_demo(mdb, sizes=DemoSizes.scaled(0.01))
            conn = await asyncpg.connect(pg_url)
            try:
                await copy_source(mdb, conn, load_settings(config).get_schema("shop"))
                await conn.execute("DELETE FROM raw_shop.products")
            finally:
                await conn.close()

    run(land())
    out = tmp_path / "reports"
    result = cartridge("analyze", "--config", str(config), "--output", str(out))
    assert result.returncode == 0, result.stderr
    # collections come from the raw tables found (no include list, no state yet)
    for name in ("customers", "events", "orders", "products"):
        assert name in result.stdout
    assert "150 / 150" in result.stdout  # orders: source / target
    assert "reconciliation" in result.stdout  # products: emptied target fails the check
    page = (out / "shop.html").read_text()
    assert "orders" in page and "<svg" in page
    assert "shop.html" in (out / "index.html").read_text()
    assert pg_url.rsplit("@", 1)[0] not in result.stdout + page  # no credentials leak

    strict = cartridge("analyze", "--config", str(config), "--output", str(out), "--strict")
    assert strict.returncode == 1
    assert "checks failed" in strict.stderr + strict.stdout
    assert "Traceback" not in strict.stderr

    unknown = cartridge("analyze", "--config", str(config), "--schema", "nope")
    assert unknown.returncode == 2 and "no schema named 'nope'" in unknown.stderr + unknown.stdout
