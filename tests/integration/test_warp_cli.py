"""`cartridge warp …` end to end: validate, run (stop when idle), status, dlq list/replay."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cartridge_dagster.cli import app
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.errors import ConfigError
from cartridge_dagster.observability import configure_logging
from tests.conftest import run

pytestmark = pytest.mark.integration


def test_cli_run_status_and_dlq(tmp_path: Path, pg_url: str, mongo_db_name: str) -> None:
    mongo_url = f"mongoeco://{tmp_path / 'source.sqlite'}"

    async def seed() -> None:
        async with mongo_session(mongo_url) as conn:
            db = conn.database(mongo_db_name)
            await db.people.insert_many([{"_id": i, "name": f"p{i}"} for i in range(25)])
            await db.people.insert_one({"_id": "bad", "name": "nul\x00here"})

    run(seed())
    config = tmp_path / "cartridge.yaml"

    def write(nul: str) -> None:
        config.write_text(
            yaml.safe_dump(
                {
                    "source": {"connection_string": mongo_url},
                    "destination": {"connection_string": pg_url},
                    "state_dir": str(tmp_path / "state"),
                    "schemas": [
                        {
                            "name": "shop",
                            "source_database": mongo_db_name,
                            "dead_letter": {"nul_in_strings": nul},
                            "warp": {"metrics_port": 0},
                        }
                    ],
                }
            )
        )

    write("dead_letter")
    # structlog writes to the stream it was configured with: not CliRunner's (closed) one
    configure_logging("console", "info", force=True)
    cli = CliRunner()
    out = cli.invoke(app, ["warp", "validate", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "1 collections in scope" in out.output
    out = cli.invoke(app, ["warp", "run", "--config", str(config), "--dry-run"])
    assert out.exit_code == 0 and "nothing written" in out.output, out.output
    out = cli.invoke(
        app, ["warp", "run", "--config", str(config), "--mode", "single", "--stop-when-idle", "0.5"]
    )
    assert out.exit_code == 0, out.output
    assert "warp.snapshot.done" in out.output and "rows_per_s=" in out.output, out.output
    out = cli.invoke(app, ["warp", "status", "--config", str(config)])
    assert out.exit_code == 0, out.output
    assert "people" in out.output and "25" in out.output
    out = cli.invoke(app, ["warp", "dlq", "list", "--config", str(config), "--show-event"])
    assert out.exit_code == 0 and "bad" in out.output and "NUL" in out.output, out.output
    write("strip")  # the fix: strip NUL characters (counted), then replay
    out = cli.invoke(app, ["warp", "dlq", "replay", "--config", str(config)])
    assert out.exit_code == 0 and "1 replayed" in out.output, out.output
    out = cli.invoke(app, ["warp", "dlq", "list", "--config", str(config)])
    assert "0 dead letters" in out.output


def test_cli_single_mode_needs_a_schema(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": f"mongoeco://{tmp_path / 's.sqlite'}"},
                "destination": {"connection_string": "postgresql://u@127.0.0.1:1/db"},
                "schemas": [
                    {"name": "a", "source_database": "a"},
                    {"name": "b", "source_database": "b"},
                ],
            }
        )
    )
    out = CliRunner().invoke(app, ["warp", "run", "--config", str(config), "--mode", "single"])
    assert out.exit_code != 0
    assert isinstance(out.exception, ConfigError) and "--schema" in str(out.exception)


def test_metrics_and_health_endpoint(tmp_path: Path, pg_url: str, mongo_db_name: str) -> None:
    import json
    import urllib.request

    from cartridge_dagster.observability import HealthState, MetricsServer
    from tests.support.warp import run_warp, warp_settings

    mongo_url = f"mongoeco://{tmp_path / 'source.sqlite'}"

    async def go() -> None:
        async with mongo_session(mongo_url) as conn:
            await conn.database(mongo_db_name).metered.insert_many([{"_id": i} for i in range(7)])
        await run_warp(warp_settings(mongo_url, pg_url, mongo_db_name))

    run(go())
    health = HealthState()
    health.set("warp/shop", ok=True, reason="running")
    with MetricsServer(0, health=health) as server:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
            status = json.loads(resp.read())
    assert 'cartridge_warp_events_total{op="snapshot",schema="shop",table="metered"} 7.0' in body
    assert "cartridge_warp_batch_seconds_bucket" in body
    assert status["status"] == "ok"


def test_refused_credentials_and_missing_databases_are_one_line(
    tmp_path: Path, pg_url: str
) -> None:
    """What retrying cannot fix stops at once with one line: a wrong MongoDB password, a
    PostgreSQL database that does not exist, a source database that does not exist."""
    import time

    from tests.support.cli import cartridge
    from tests.support.replset import start

    server = start(tmp_path / "rs", users=("app:right",))
    try:
        host = server.uri.split("//", 1)[1].split("/", 1)[0]

        def attempt(source: str, dest: str, database: str = "shop") -> tuple[int, str, float]:
            config = tmp_path / f"c{time.monotonic_ns()}.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "source": {"connection_string": source},
                        "destination": {"connection_string": dest},
                        "state_dir": str(tmp_path / "state"),
                        "schemas": [
                            {
                                "name": "shop",
                                "source_database": database,
                                "warp": {"metrics_port": 0},
                            }
                        ],
                    }
                )
            )
            started = time.monotonic()
            out = cartridge("warp", "run", "--config", str(config), "--stop-when-idle", "1")
            return out.returncode, out.stdout + out.stderr, time.monotonic() - started

        good = f"mongodb://app:right@{host}/?replicaSet=rs0&authSource=admin"
        code, text, seconds = attempt(good.replace("right", "wrong"), pg_url)
        assert code != 0 and "Traceback" not in text, text
        assert "refused the credentials" in text and "wrong" not in text, text
        assert seconds < 30, f"retried a wrong password for {seconds:.0f}s"

        base, _, _ = pg_url.rpartition("/")
        code, text, seconds = attempt(good, f"{base}/no_such_database")
        assert code != 0 and "Traceback" not in text, text
        assert "refused the connection" in text and "no_such_database" in text, text
        assert seconds < 30

        code, text, seconds = attempt(good, pg_url, database="shpo")
        assert code != 0 and "Traceback" not in text, text
        assert "no database 'shpo'" in text, text
    finally:
        server.stop()
