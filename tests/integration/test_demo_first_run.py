"""The demo's first start (``python -m cartridge_dagster.demo.first_run``, what ``make demo`` runs
before the UI when nothing is generated yet), as its own process on the demo's two schemas: both
sources seeded, then every asset of the code location materialized and every asset check
executed, recorded in the Dagster instance. The oracles: the instance read here (not through
the script), the code location built here from that instance, and row counts in PostgreSQL
against the source's own counts."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import dagster as dg
import pytest
import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.identifiers import qualified
from tests.support.demo_env import write_demo_config
from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(config: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARTRIDGE_", "DAGSTER_"))}
    env.update(
        CARTRIDGE_CONFIG=str(config),
        DAGSTER_HOME=str(home),
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
        DAGSTER_DISABLE_TELEMETRY="1",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


async def _source_counts(url: str) -> dict[str, int]:
    async with mongo_session(url) as conn:
        db = conn.database("shop")
        return {n: int(await db[n].count_documents({})) for n in ("customers", "orders")}


async def _landed(pg_url: str, names: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(pg_url)
    try:
        return {
            n: int(await conn.fetchval(f"SELECT count(*) FROM {qualified('raw_shop', n)}"))
            for n in names
        }
    finally:
        await conn.close()


def test_first_run_materializes_every_asset_and_executes_every_check(
    tmp_path: Path, pg_source_url: str, pg_url: str
) -> None:
    config = write_demo_config(tmp_path, pg_source_url, pg_url)
    data = yaml.safe_load(config.read_text())
    data["defaults"]["warp"] = {"metrics_port": 0}
    data["schemas"][0]["include"] = ["customers", "orders"]  # two collections: a shorter run
    config.write_text(yaml.safe_dump(data))
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "local" / "dagster.yaml", home / "dagster.yaml")

    proc = subprocess.run(
        [sys.executable, "-m", "cartridge_dagster.demo.first_run", "--scale", "0.02"],
        cwd=tmp_path,
        env=_env(config, home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    # no webserver runs yet: the generation steps say so instead of trying to reach one
    assert "webserver not reachable" not in proc.stderr
    assert "reload: not needed: CARTRIDGE_CODE_LOCATION_RELOAD=off" in proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    # stdout holds the progress lines only (dbt's and Dagster's output go to stderr, the log)
    lines = proc.stdout.splitlines()
    assert lines and all(ln.startswith(("==> ", "    seeded ", "    emptied ")) for ln in lines), (
        lines
    )
    for schema in ("shop", "billing"):
        for step in ("scan and generate", "warp snapshot", "staging models, summaries"):
            assert any(ln.startswith(f"==> {schema}: {step}") for ln in lines), (schema, step)

    from cartridge_dagster.definitions import build_definitions

    with dg.DagsterInstance.from_config(str(home)) as instance:
        graph = build_definitions(str(config)).resolve_asset_graph()
        keys = graph.get_all_asset_keys()
        raw = {k for k in keys if k.path[0] == "raw"}
        assert {k.path[1] for k in raw} == {"shop", "billing"}
        assert any(k.path[0] == "staging" for k in keys) and any(
            k.path[0] == "analytics" for k in keys
        )
        missing = [
            k.to_user_string() for k in keys if instance.get_latest_materialization_event(k) is None
        ]
        assert not missing, missing
        checks = list(graph.asset_check_keys)
        assert any(c.asset_key in raw for c in checks)
        executed = instance.event_log_storage.get_latest_asset_check_execution_by_key(checks)
        not_run = [c.to_user_string() for c in checks if c not in executed]
        assert not not_run, not_run
        runs = instance.get_runs()
        assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)

    counts = asyncio.run(_source_counts(data["source"]["connection_string"]))
    assert all(counts.values()), counts
    assert asyncio.run(_landed(pg_url, sorted(counts))) == counts
