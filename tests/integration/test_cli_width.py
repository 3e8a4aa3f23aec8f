"""Output that is not a terminal is not cut at 80 columns (rich's default without a terminal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from tests.conftest import run
from tests.support.cli import cartridge

pytestmark = pytest.mark.integration

#: Long enough that the tables are wider than 80 columns.
LONG = "customer_lifetime_value_snapshots_by_region_and_quarter"


def test_warp_status_and_scan_tables_are_whole_when_piped(
    tmp_path: Path, pg_url: str, mongo_db_name: str
) -> None:
    mongo_url = f"mongoeco://{tmp_path / 'source.sqlite'}"

    async def seed() -> None:
        async with mongo_session(mongo_url) as conn:
            db = conn.database(mongo_db_name)
            await db[LONG].insert_many(
                [{"_id": i, "region": f"r{i % 3}", "value": i * 1.5} for i in range(12)]
            )

    run(seed())
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": mongo_url},
                "destination": {"connection_string": pg_url},
                "state_dir": str(tmp_path / "state"),
                "schemas": [
                    {"name": "wide", "source_database": mongo_db_name, "warp": {"metrics_port": 0}}
                ],
            }
        )
    )
    proc = cartridge("warp", "run", "--config", str(config), "--stop-when-idle", "0.5")
    assert proc.returncode == 0, proc.stderr

    for args in (("warp", "status"), ("scan", "--schema", "wide")):
        proc = cartridge(*args, "--config", str(config), columns=None)
        assert proc.returncode == 0, proc.stderr
        assert "…" not in proc.stdout, proc.stdout
        rows = [line for line in proc.stdout.splitlines() if LONG in line]
        assert rows, proc.stdout
        assert max(len(line) for line in rows) > 80, proc.stdout
        if args[0] == "warp":  # the whole row: the name, the table and the last column (parked)
            cells = [c.strip() for c in rows[0].strip("│ ").split("│")]
            assert cells[0] == LONG and cells[1].endswith(LONG) and cells[-1] == "0", cells
            assert cells[2] == "12", cells  # live rows
