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
    assert "150/150" in result.stdout  # orders: source/target
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


def test_serve_reports(tmp_path: Path) -> None:
    """`cartridge serve-reports` serves the report directory on 127.0.0.1."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "index.html").write_text("<html><title>Cartridge reports</title></html>")
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": "mongoeco://:memory:"},
                "destination": {"connection_string": "postgresql://u@127.0.0.1/db"},
                "state_dir": str(tmp_path),
                "schemas": [{"name": "shop", "source_database": "shop"}],
            }
        )
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    command = [sys.executable, "-m", "cartridge_dagster", "serve-reports", "-c", str(config)]
    proc = subprocess.Popen(
        [*command, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        body = b""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2) as r:
                    body = r.read()
                break
            except OSError:
                time.sleep(0.3)
        assert b"Cartridge reports" in body
    finally:
        proc.terminate()
        rc = proc.wait(timeout=10)
    assert rc == 0, f"SIGTERM stops it cleanly (rc={rc})"
