"""Crashes: warp killed with SIGKILL before and after a commit; PostgreSQL crash-restarted
mid-run. Each ends with the oracle and the checkpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.services.postgres import LocalPostgres
from cartridge_dagster.warp.runner import WarpRunner
from tests.conftest import run
from tests.support.services import REPO
from tests.support.warp import assert_oracle, checkpoint_row, run_warp, warp_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def write_config(tmp_path: Path, mongo_url: str, pg_url: str, db: str) -> Path:
    cfg = {
        "source": {"connection_string": mongo_url},
        "destination": {"connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "mode": "single",
        "schemas": [
            {
                "name": "shop",
                "source_database": db,
                "target_schema": "raw_shop",
                "batching": {"max_batch_size": 50, "max_batch_seconds": 0.1},
                "warp": {"metrics_port": 0, "idle_checkpoint_seconds": 0.5},
            }
        ],
    }
    path = tmp_path / "cartridge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def spawn(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "cartridge"), "warp", "run", "--config", str(config)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def version(pg_url: str) -> int:
    row = await checkpoint_row(pg_url)
    return int(row["version"]) if row is not None else -1


def test_kill9_before_and_after_commit(tmp_path: Path, pg_url: str, mongo_db_name: str) -> None:
    mongo_url = f"mongoeco://{tmp_path / 'source.sqlite'}"
    config = write_config(tmp_path, mongo_url, pg_url, mongo_db_name)
    settings = warp_settings(mongo_url, pg_url, mongo_db_name)

    async def go() -> None:
        async with mongo_session(mongo_url) as conn:
            await conn.database(mongo_db_name).c.insert_many(
                [{"_id": i, "v": 0} for i in range(100)]
            )
        proc = spawn(config)
        try:
            await wait_for(lambda: _snapshot_done(pg_url))
            # --- kill -9 before commit: hold a row lock so warp blocks inside its transaction
            locker = await asyncpg.connect(pg_url)
            tx = locker.transaction()
            await tx.start()
            await locker.execute("SELECT 1 FROM raw_shop.c WHERE _id = '5' FOR UPDATE")
            before = await checkpoint_row(pg_url)
            async with mongo_session(mongo_url) as conn:
                db = conn.database(mongo_db_name)
                for i in range(10):
                    await db.c.update_one({"_id": i}, {"$set": {"v": 1}})
            await wait_for(lambda: _someone_waits(pg_url))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await tx.rollback()
            await locker.close()
            after = await checkpoint_row(pg_url)
            assert after is not None and before is not None
            assert after["resume_token"] == before["resume_token"], "nothing committed"
            assert after["version"] == before["version"]
        finally:
            if proc.poll() is None:
                proc.kill()
        # --- kill -9 right after a commit
        proc = spawn(config)
        try:
            start = await version(pg_url)
            async with mongo_session(mongo_url) as conn:
                db = conn.database(mongo_db_name)
                await db.c.insert_many([{"_id": 1000 + i} for i in range(30)])
            await wait_for(lambda: _advanced(pg_url, start))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        async with mongo_session(mongo_url) as conn:
            db = conn.database(mongo_db_name)
            await db.c.delete_many({"_id": {"$lt": 3}})
            await db.c.insert_one({"_id": "after-crash"})
        # restart: replays at most the unfinished batch, and the replay changes nothing
        summary = await run_warp(settings)
        assert summary.checkpoint is not None and summary.checkpoint.epoch >= 3
        await assert_oracle(settings, ["c"])

    run(go())


async def _snapshot_done(pg_url: str) -> bool:
    row = await checkpoint_row(pg_url) if await _has_control(pg_url) else None
    if row is None:
        return False
    snap = orjson.loads(row["snapshot"])
    return bool(snap) and all(s["done"] for s in snap.values())


async def _has_control(pg_url: str) -> bool:
    conn = await asyncpg.connect(pg_url)
    try:
        return bool(
            await conn.fetchval("SELECT to_regclass('cartridge_warp.checkpoints') IS NOT NULL")
        )
    finally:
        await conn.close()


async def _someone_waits(pg_url: str) -> bool:
    conn = await asyncpg.connect(pg_url)
    try:
        return bool(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    finally:
        await conn.close()


async def _advanced(pg_url: str, start: int) -> bool:
    return await version(pg_url) > start


def test_postgres_restarted_mid_run(tmp_path: Path, mongo_db_name: str) -> None:
    # durable: a non-durable server (synchronous_commit=off) may lose acknowledged commits
    server = LocalPostgres(tmp_path / "pg", preferred_port=None, durable=True)
    status = server.up()
    assert status.url is not None
    pg_url = status.url
    mongo_url = f"mongoeco://{tmp_path / 'source.sqlite'}"
    settings = warp_settings(mongo_url, pg_url, mongo_db_name)
    try:

        async def go() -> None:
            async with mongo_session(mongo_url) as conn:
                await conn.database(mongo_db_name).c.insert_many([{"_id": i} for i in range(50)])
            runner = WarpRunner(settings, settings.schemas[0], max_backoff=2.0, max_retries=20)
            task = asyncio.create_task(runner.run())

            async def traffic(start: int, n: int) -> None:
                async with mongo_session(mongo_url) as conn:
                    db = conn.database(mongo_db_name)
                    for i in range(start, start + n):
                        await db.c.insert_one({"_id": i, "live": True})
                        await db.c.update_one({"_id": i - 40}, {"$set": {"u": i}})
                        await asyncio.sleep(0.002)

            await traffic(1000, 100)
            await asyncio.to_thread(server.restart, mode="immediate")  # crash-like
            await traffic(2000, 100)
            for _ in range(300):
                await asyncio.sleep(0.1)
                src = runner.source
                if (
                    src is not None
                    and src.idle_since is not None
                    and time.monotonic() - src.idle_since > 1.0
                    and not runner._writer_busy
                ):
                    break
            runner.stop.set()
            summary = await asyncio.wait_for(task, 60)
            assert summary.retries >= 1, "the restart was not noticed"
            await assert_oracle(settings, ["c"])

        run(go())
    finally:
        server.down()
