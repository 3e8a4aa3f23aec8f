"""The whole chain, the way a user runs it: `dagster dev` on a demo source, work launched through
the GraphQL API, and the warp supervisor and the declarative automation moving data along
source → schema → models → raw → dbt → summaries. The results are checked in PostgreSQL."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from cartridge_dagster.demo.seed import DemoSizes
from tests.support.dagster_dev import dagster_dev
from tests.support.demo_env import seeded_demo_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = """
{ runsOrError(limit: 50) { ... on Runs { results { runId status jobName tags { key value } } } } }
"""
AUTOMATION = {"key": "cartridge/trigger", "value": "automation"}
STAGING = (
    "SELECT count(*) FROM information_schema.tables WHERE table_name IN "
    "('stg_shop__orders', 'stg_shop__customers', 'stg_shop__orders__items')"
)


def _count(url: str, sql: str) -> int:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            row = cur.fetchone()
            return int(row[0]) if row else 0
    except psycopg2.Error:
        return -1
    finally:
        conn.close()


def test_chain_runs_by_itself_after_one_launch(tmp_path: Path, pg_url: str) -> None:
    sizes = DemoSizes.scaled(0.01)
    config = seeded_demo_config(
        tmp_path,
        pg_url,
        sizes=sizes,
        schema={"include": ["customers", "orders"]},
        defaults={
            "warp": {"metrics_port": 0, "materialization_interval_seconds": 1},
            "analytics": {"refresh_min_interval_seconds": 5, "reconcile_sample_size": 50},
        },
    )
    with dagster_dev(config, tmp_path / "home", timeout=300) as dev:
        # One launch: catalog → schema → generated dbt models.
        refresh = dev.launch("refresh_shop")
        assert dev.wait_run(refresh, timeout=900) == "SUCCESS"
        # Everything else happens by itself: the supervisor keeps warp running (raw tables),
        # its materializations start the automation (dbt staging models, then summaries).
        deadline = time.monotonic() + 1200
        done = False
        seen: dict[str, str] = {}
        while time.monotonic() < deadline and not done:
            runs = dev.graphql(RUNS)["runsOrError"]["results"]
            seen = {r["runId"]: f"{r['jobName']}:{r['status']}" for r in runs}
            automated = [r for r in runs if AUTOMATION in r["tags"]]
            failed = [r for r in automated if r["status"] == "FAILURE"]
            assert not failed, f"an automation run failed: {seen}; log: {dev.log}"
            done = any(r["status"] == "SUCCESS" for r in automated) and _count(pg_url, STAGING) == 3
            time.sleep(5)
        assert done, f"no successful automation run: {seen}; log: {dev.log}"
        assert any(v.startswith("warp_shop:STARTED") for v in seen.values()), seen

    # The collections are component state in the instance (what the code server loaded from)
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        storage = instance.defs_state_storage
        assert storage is not None
        info = storage.get_latest_defs_state_info()
        keys = [
            k for k in (info.info_mapping if info else {}) if k.startswith("CartridgeComponent[")
        ]
        assert keys, f"no Cartridge component state in the instance: {info}"

    # PostgreSQL holds the source: raw tables, typed staging models, stored summaries.
    assert _count(pg_url, 'SELECT count(*) FROM raw_shop."orders"') == sizes.orders
    assert _count(pg_url, 'SELECT count(*) FROM raw_shop."customers"') == sizes.customers
    assert _count(pg_url, STAGING) == 3
    summaries = _count(
        pg_url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'cartridge_analytics'",
    )
    assert summaries > 0
