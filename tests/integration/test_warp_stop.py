"""A warp run stopped by a signal ends CANCELED, cleanly: SIGTERM to the run worker (a pod
evicted, an operator's kill) and SIGTERM to the whole `dagster dev` process group (how
`make demo` stops). Real `dagster dev`, real runs, the outcome read from the instance."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg
import dagster as dg
import pytest

from cartridge_dagster.demo.seed import DemoSizes
from tests.support.dagster_dev import DagsterDev, dagster_dev
from tests.support.demo_env import seeded_demo_config
from tests.support.warp import checkpoint_row

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = """
{ runsOrError(filter: {pipelineName: "warp_shop"}) {
    ... on Runs { results { runId status } } } }
"""

LOGS = """
query Logs($runId: ID!) { logsForRun(runId: $runId) { __typename
  ... on EventConnection { events { __typename
    ... on MessageEvent { message level }
    ... on ErrorEvent { error { message stack } } } } } }
"""

FAILURES = {"ExecutionStepFailureEvent", "RunFailureEvent", "HookErroredEvent"}


def started_warp_run(dev: DagsterDev, *, other_than: set[str], timeout: float = 240) -> str:
    """The warp_shop run the supervisor keeps alive, once it is STARTED."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, str]] = []
    while time.monotonic() < deadline:
        seen = dev.graphql(RUNS)["runsOrError"]["results"]
        for run in seen:
            if run["status"] == "STARTED" and run["runId"] not in other_than:
                return str(run["runId"])
        time.sleep(1)
    raise AssertionError(f"no warp_shop run started: {seen}; log: {dev.log}")


def events(dev: DagsterDev, run_id: str) -> list[dict[str, Any]]:
    logs = dev.graphql(LOGS, {"runId": run_id})["logsForRun"]
    assert logs["__typename"] == "EventConnection", logs
    return list(logs["events"])


def worker_pid(dev: DagsterDev, run_id: str) -> int:
    for event in events(dev, run_id):
        found = re.search(r"Started process for run \(pid: (\d+)\)", event.get("message") or "")
        if found:
            return int(found.group(1))
    raise AssertionError(f"no run worker pid in the events of {run_id}")


def landed(url: str, table: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(url)
        try:
            return int(await conn.fetchval(f'SELECT count(*) FROM raw_shop."{table}"') or 0)
        except asyncpg.UndefinedTableError:
            return 0
        finally:
            await conn.close()

    return asyncio.run(count())


def wait_landed(url: str, table: str, n: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while landed(url, table) < n:
        assert time.monotonic() < deadline, f"raw_shop.{table} has not {n} rows"
        time.sleep(1)


def assert_no_failure(records: list[dg.EventLogEntry]) -> None:
    """No failure event, nothing carrying an error (a traceback)."""
    for rec in records:
        ev = rec.dagster_event
        if ev is None:
            continue
        assert ev.event_type not in (
            dg.DagsterEventType.STEP_FAILURE,
            dg.DagsterEventType.RUN_FAILURE,
            dg.DagsterEventType.HOOK_ERRORED,
        ), rec.message
        data = ev.event_specific_data
        error = getattr(data, "error", None) or getattr(data, "error_info", None)
        assert error is None, f"{ev.event_type_value}: {rec.message}\n{error}"


def assert_clean_cancel(records: list[dg.EventLogEntry]) -> None:
    """No failure event, nothing carrying an error (a traceback), warp said why it stopped."""
    assert_no_failure(records)
    messages = [rec.message or "" for rec in records]
    assert any("SIGTERM received: stopping warp cleanly" in m for m in messages), messages
    assert any(m.startswith("warp shop stopped (requested)") for m in messages), messages


def test_sigterm_ends_warp_runs_canceled(tmp_path: Path, pg_url: str) -> None:
    sizes = DemoSizes.scaled(0.01)
    config = seeded_demo_config(
        tmp_path,
        pg_url,
        sizes=sizes,
        schema={"include": ["customers", "orders"]},
        defaults={"warp": {"metrics_port": 0, "materialization_interval_seconds": 1}},
    )
    home = tmp_path / "home"
    with dagster_dev(config, home, timeout=300) as dev:
        # 1. SIGTERM to the run worker alone.
        first = started_warp_run(dev, other_than=set())
        wait_landed(pg_url, "orders", sizes.orders)
        pid = worker_pid(dev, first)
        os.kill(pid, signal.SIGTERM)
        assert dev.wait_run(first, timeout=120) == "CANCELED"
        for event in events(dev, first):
            assert event["__typename"] not in FAILURES, event
            assert event.get("error") is None, event
        # the supervisor starts the next run (a canceled run is no failure: no back-off)
        second = started_warp_run(dev, other_than={first}, timeout=180)
        # 2. SIGTERM to the whole process group, as make demo's Ctrl-C sends it.
        os.killpg(dev.proc.pid, signal.SIGTERM)
        dev.proc.wait(timeout=120)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        for run_id in (first, second):
            run = instance.get_run_by_id(run_id)
            assert run is not None
            assert run.status == dg.DagsterRunStatus.CANCELED, (run_id, run.status)
            assert_clean_cancel(list(instance.all_logs(run_id)))

    async def check() -> None:
        cp = await checkpoint_row(pg_url, "shop")
        assert cp is not None and cp["resume_token"] is not None
        conn = await asyncpg.connect(pg_url)
        try:
            top = await conn.fetchval(
                "SELECT max(_cartridge_version) FROM (SELECT _cartridge_version FROM "
                'raw_shop."orders" UNION ALL SELECT _cartridge_version FROM raw_shop."customers") v'
            )
        finally:
            await conn.close()
        assert int(cp["version"]) == int(top), "the checkpoint names the last applied change"

    asyncio.run(check())
    assert landed(pg_url, "customers") == sizes.customers
