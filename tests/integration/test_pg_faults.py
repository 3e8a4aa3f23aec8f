"""The fault matrix for PostgreSQL sources: kill -9 before and after a commit, random kills with
writer processes and a column added mid-run, source and destination restarts, two warp
processes, an invalidated slot (a dropped one: ``test_pg_warp``). Every scenario ends with the
cast-back oracle: each row by primary key, every column read back through PostgreSQL's own
input functions, equal to the source."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from cartridge_dagster.errors import ResumeTokenLost
from cartridge_dagster.services.postgres import LocalPostgres
from cartridge_dagster.warp.runner import WarpRunner
from tests.conftest import run
from tests.support.pg_chaos import (
    DDL,
    run_pg_chaos,
    spawn_warp,
    start_writers,
    write_config,
)
from tests.support.pgsource import (
    cast_back_oracle,
    create_database,
    drop_database,
    execute,
    pg_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def _fetchval(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def checkpoint(dest: str) -> dict[str, Any] | None:
    if not await _fetchval(dest, "SELECT to_regclass('cartridge_warp.checkpoints') IS NOT NULL"):
        return None
    conn = await asyncpg.connect(dest)
    try:
        row = await conn.fetchrow("SELECT * FROM cartridge_warp.checkpoints")
    finally:
        await conn.close()
    return dict(row) if row is not None else None


async def snapshot_done(dest: str) -> bool:
    cp = await checkpoint(dest)
    plan = orjson.loads(cp["snapshot"]) if cp else {}
    return bool(plan) and all(v["done"] for v in plan.values())


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


async def oracle(source: str, dest: str) -> None:
    result = await cast_back_oracle(source, "app", "items", dest, "raw_chaos")
    assert result.ok, str(result)
    assert result.source_rows > 0


@pytest.fixture
def dbs(pg_server_url: str) -> Iterator[tuple[str, str]]:
    source = create_database(pg_server_url, "fsrc")
    dest = create_database(pg_server_url, "fdst")
    execute(
        source,
        *DDL,
        "INSERT INTO app.items (id, n, g, w) SELECT g, 0, g % 8, 0 FROM generate_series(1, 100) g",
    )
    try:
        yield source, dest
    finally:
        drop_database(pg_server_url, source)
        drop_database(pg_server_url, dest)


def test_kill9_before_and_after_commit(tmp_path: Path, dbs: tuple[str, str]) -> None:
    source, dest = dbs
    slot = f"cartridge_f_{uuid.uuid4().hex[:10]}"
    config = write_config(tmp_path / "cartridge.yaml", source, dest, slot)
    log = open(tmp_path / "warp.log", "ab")  # noqa: SIM115 - closed below

    async def go() -> None:
        proc = spawn_warp(config, log)
        try:
            await wait_for(lambda: snapshot_done(dest))
            # --- kill -9 before the commit: a row lock holds warp inside its transaction
            locker = await asyncpg.connect(dest)
            tx = locker.transaction()
            await tx.start()
            await locker.execute("SELECT 1 FROM raw_chaos.items WHERE _id = '5' FOR UPDATE")
            before = await checkpoint(dest)
            execute(source, "UPDATE app.items SET n = n + 1 WHERE id <= 10")

            async def blocked() -> bool:
                return bool(
                    await _fetchval(
                        dest,
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND wait_event_type = 'Lock'",
                    )
                )

            await wait_for(blocked)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await tx.rollback()
            await locker.close()
            after = await checkpoint(dest)
            assert before is not None and after is not None
            assert after["resume_token"] == before["resume_token"], "nothing was committed"
            # the slot was never told about the update: the server still has it for warp
            # (the slot's pending changes, peeked without consuming them, hold its 10 rows)
            pending = await _fetchval(
                source,
                "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, "
                "'proto_version', '1', 'publication_names', 'cartridge_chaos') "
                "WHERE substr(data, 1, 1) = 'U'::bytea",
                slot,
            )
            assert pending == 10
        finally:
            if proc.poll() is None:
                proc.kill()
        # --- kill -9 right after a commit
        proc = spawn_warp(config, log)
        try:
            start = await checkpoint(dest)
            assert start is not None
            execute(
                source,
                "INSERT INTO app.items (id, n, g, w) SELECT g, 7, 1, 0 "
                "FROM generate_series(1000, 1029) g",
            )

            async def advanced() -> bool:
                cp = await checkpoint(dest)
                return cp is not None and int(cp["version"]) > int(start["version"])

            await wait_for(advanced)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        execute(source, "DELETE FROM app.items WHERE id < 3", "UPDATE app.items SET note = 'x'")
        final = spawn_warp(config, log, "--stop-when-idle", "1.5")
        assert final.wait(120) == 0, (tmp_path / "warp.log").read_text()[-3000:]
        cp = await checkpoint(dest)
        assert cp is not None and int(cp["epoch"]) >= 3
        await oracle(source, dest)

    try:
        run(go())
    finally:
        log.close()


def test_random_kills_writer_processes_and_a_new_column(tmp_path: Path, pg_server_url: str) -> None:
    result = run_pg_chaos(pg_server_url, 7, tmp_path, seconds=8.0, life=(1.0, 3.0))
    assert result.kills >= 2, result.line()
    assert result.ok, result.line() + "\n" + Path(result.log).read_text()[-3000:]


def test_two_warp_processes(tmp_path: Path, dbs: tuple[str, str]) -> None:
    source, dest = dbs
    config = write_config(
        tmp_path / "cartridge.yaml", source, dest, f"cartridge_f_{uuid.uuid4().hex[:10]}"
    )
    log_a = open(tmp_path / "a.log", "wb")  # noqa: SIM115 - closed below
    log_b = open(tmp_path / "b.log", "wb")  # noqa: SIM115 - closed below

    async def go() -> None:
        writers = start_writers(source, 11, 4.0, tmp_path)
        a = spawn_warp(config, log_a)
        b: subprocess.Popen[bytes] | None = None
        try:
            await wait_for(lambda: snapshot_done(dest))
            await asyncio.sleep(0.5)
            b = spawn_warp(config, log_b)  # takes the schema over: a is fenced
            assert await asyncio.to_thread(a.wait, 60) == 1
            for w in writers:
                assert await asyncio.to_thread(w.wait, 60) == 0
            await asyncio.sleep(1.0)
            assert b.poll() is None, "the second process keeps running"
            b.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(b.wait, 30) == 0
        finally:
            for p in (a, b, *writers):
                if p is not None and p.poll() is None:
                    p.kill()
        log_a.flush()
        text = (tmp_path / "a.log").read_text()
        assert "was taken over by another warp process" in text, text[-2000:]
        final = spawn_warp(config, log_b, "--stop-when-idle", "1.5")
        assert await asyncio.to_thread(final.wait, 120) == 0
        await oracle(source, dest)

    try:
        run(go())
    finally:
        log_a.close()
        log_b.close()


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalPostgres, LocalPostgres]]:
    """A source and a destination server of their own (durable), to restart them."""
    base = tmp_path_factory.mktemp("servers")
    source = LocalPostgres(base / "source", preferred_port=None, durable=True)
    dest = LocalPostgres(base / "dest", preferred_port=None, durable=True)
    source.up()
    dest.up()
    try:
        yield source, dest
    finally:
        source.destroy()
        dest.destroy()


def _url(server: LocalPostgres) -> str:
    url = server.status().url
    assert url is not None
    return url


def test_source_and_destination_restarts(
    tmp_path: Path, servers: tuple[LocalPostgres, LocalPostgres]
) -> None:
    src_server, dst_server = servers
    source = create_database(_url(src_server), "rsrc")
    dest = create_database(_url(dst_server), "rdst")
    execute(
        source,
        *DDL,
        "INSERT INTO app.items (id, n, g, w) SELECT g, 0, g % 8, 0 FROM generate_series(1, 200) g",
    )
    settings = pg_settings(
        source,
        dest,
        name="chaos",
        batching={"max_batch_size": 300, "max_batch_seconds": 0.3},
        schema={"target_schema": "raw_chaos"},
    )

    async def go() -> None:
        runner = WarpRunner(settings, settings.schemas[0], max_backoff=1.0, max_retries=30)
        task = asyncio.create_task(runner.run())
        await wait_for(lambda: snapshot_done(dest))
        writers = start_writers(source, 5, 7.0, tmp_path)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(src_server.restart, mode="immediate")  # a crash of the source
        await asyncio.sleep(2.0)
        await asyncio.to_thread(dst_server.restart, mode="immediate")  # and of the warehouse
        for w in writers:
            assert await asyncio.to_thread(w.wait, 60) == 0
        for _ in range(300):
            await asyncio.sleep(0.1)
            src = runner.source
            if (
                src is not None
                and src.idle_since is not None
                and time.monotonic() - src.idle_since > 1.5
                and not runner._writer_busy
            ):
                break
        runner.stop.set()
        summary = await asyncio.wait_for(task, 60)
        assert summary.retries >= 2, "both restarts were noticed"
        await oracle(source, dest)

    try:
        run(go())
    finally:
        drop_database(_url(src_server), source)
        drop_database(_url(dst_server), dest)


def test_invalidated_slot_goes_through_the_policy(
    servers: tuple[LocalPostgres, LocalPostgres],
) -> None:
    src_server, dst_server = servers
    source = create_database(_url(src_server), "isrc")
    dest = create_database(_url(dst_server), "idst")
    execute(
        source,
        *DDL,
        "INSERT INTO app.items (id, n, g, w) SELECT g, 0, g % 8, 0 FROM generate_series(1, 50) g",
    )
    settings = pg_settings(source, dest, name="chaos", schema={"target_schema": "raw_chaos"})
    slot = settings.schemas[0].warp.slot_name

    async def go() -> None:
        runner = WarpRunner(settings, settings.schemas[0], stop_when_idle=0.8)
        await asyncio.wait_for(runner.run(), 60)
        # warp is down; the server may keep 1 MB of WAL for slots, and writes far more
        execute(
            source,
            "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
            "SELECT pg_reload_conf()",
        )
        try:
            for _ in range(4):
                execute(
                    source,
                    "INSERT INTO app.items (id, n, g, w) SELECT g, 1, 1, 1 FROM "
                    "generate_series(100000, 140000) g ON CONFLICT (id) DO UPDATE SET n = "
                    "app.items.n + 1",
                    "SELECT pg_switch_wal()",
                    "CHECKPOINT",
                )
            status = await _fetchval(
                source, "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1", slot
            )
            assert status == "lost", status
            failing = WarpRunner(settings, settings.schemas[0], stop_when_idle=0.8)
            with pytest.raises(ResumeTokenLost, match="invalidated"):
                await asyncio.wait_for(failing.run(), 60)
            again = pg_settings(
                source,
                dest,
                name="chaos",
                schema={"target_schema": "raw_chaos"},
                warp={"slot_name": slot, "history_lost_policy": "resnapshot"},
            )
            summary = await asyncio.wait_for(
                WarpRunner(again, again.schemas[0], stop_when_idle=0.8).run(), 120
            )
            assert summary.resnapshots == 1
            await oracle(source, dest)
        finally:
            execute(source, "ALTER SYSTEM RESET max_slot_wal_keep_size", "SELECT pg_reload_conf()")

    try:
        run(go())
    finally:
        drop_database(_url(src_server), source)
        drop_database(_url(dst_server), dest)


def test_kill9_mid_snapshot_resumes_after_the_last_range(
    tmp_path: Path, dbs: tuple[str, str]
) -> None:
    """The snapshot's key ranges land with their checkpoint: killed mid-copy, the raw table
    holds exactly the rows up to the checkpoint's last key, and the next run continues after
    it (rows changed meanwhile, on both sides of it, converge through the stream)."""
    source, dest = dbs
    execute(
        source,
        "INSERT INTO app.items (id, n, g, w, note) SELECT g, 1, g % 8, 0, 'n' || g "
        "FROM generate_series(101, 40100) g",
    )
    slot = f"cartridge_f_{uuid.uuid4().hex[:10]}"
    # one writer: ranges in key order, the checkpoint's cursor (parallel ranges: below)
    config = write_config(tmp_path / "cartridge.yaml", source, dest, slot, snapshot_writers=1)
    log = open(tmp_path / "warp.log", "ab")  # noqa: SIM115 - closed below

    async def copied() -> dict[str, Any] | None:
        cp = await checkpoint(dest)
        plan = orjson.loads(cp["snapshot"]) if cp else {}
        return plan.get("items")

    async def go() -> None:
        proc = spawn_warp(config, log)
        try:

            async def partway() -> bool:
                state = await copied()
                return state is not None and state["copied"] >= 1500

            await wait_for(partway)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        state = await copied()
        assert state is not None
        if state["done"]:
            pytest.fail("the snapshot finished before the kill: make the table larger")
        last = int(orjson.loads(state["after"])[0])
        rows = await _fetchval(dest, "SELECT count(*) FROM raw_chaos.items")
        top = await _fetchval(dest, "SELECT max(_id::bigint) FROM raw_chaos.items")
        # ids 1…last, each once: exactly the ranges committed with their checkpoint
        assert rows == state["copied"] == last == top
        execute(
            source,
            f"UPDATE app.items SET n = n + 5, note = 'changed' WHERE id % 1000 = 7 "
            f"AND id BETWEEN {last - 2000} AND {last + 2000}",
            f"DELETE FROM app.items WHERE id IN ({last}, {last + 1})",
        )
        final = spawn_warp(config, log, "--stop-when-idle", "1.5")
        assert final.wait(180) == 0, (tmp_path / "warp.log").read_text()[-3000:]
        await oracle(source, dest)

    try:
        run(go())
    finally:
        log.close()


async def _landed_ranges(dest: str) -> list[tuple[str | None, str | None]]:
    if not await _fetchval(
        dest, "SELECT to_regclass('cartridge_warp.snapshot_ranges') IS NOT NULL"
    ):
        return []
    conn = await asyncpg.connect(dest)
    try:
        rows = await conn.fetch("SELECT lo, hi FROM cartridge_warp.snapshot_ranges WHERE done")
    finally:
        await conn.close()
    return [(r["lo"], r["hi"]) for r in rows]


def _between(lo: str | None, hi: str | None) -> str:
    parts = ([f"id > {int(lo)}"] if lo is not None else []) + (
        [f"id <= {int(hi)}"] if hi is not None else []
    )
    return "(" + (" AND ".join(parts) or "true") + ")"


def test_kill9_mid_parallel_snapshot_lands_every_row_once(
    tmp_path: Path, dbs: tuple[str, str]
) -> None:
    """Three writers COPY key ranges side by side; kill -9 twice mid-snapshot: each time the
    raw table holds exactly the source's rows of the ranges marked landed (none of the others,
    none twice), and after the restart every source row is landed once, equal column by
    column (rows changed and deleted between the runs converge through the stream)."""
    source, dest = dbs
    execute(
        source,
        "INSERT INTO app.items (id, n, g, w, note) SELECT g, 1, g % 8, 0, 'n' || g "
        "FROM generate_series(101, 60100) g",
    )
    slot = f"cartridge_f_{uuid.uuid4().hex[:10]}"
    config = write_config(tmp_path / "cartridge.yaml", source, dest, slot, snapshot_writers=3)
    log = open(tmp_path / "warp.log", "ab")  # noqa: SIM115 - closed below

    async def killed_partway(at_least: int) -> list[tuple[str | None, str | None]]:
        proc = spawn_warp(config, log)
        try:

            async def partway() -> bool:
                return len(await _landed_ranges(dest)) >= at_least

            await wait_for(partway, timeout=120)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        if await snapshot_done(dest):
            pytest.fail("the snapshot finished before the kill: make the table larger")
        return await _landed_ranges(dest)

    async def check_exact(landed: list[tuple[str | None, str | None]]) -> None:
        # the oracle: the source's keys in the landed ranges, selected by the source itself
        conds = " OR ".join(_between(lo, hi) for lo, hi in landed)
        conn = await asyncpg.connect(source)
        try:
            expected = sorted(
                r[0] for r in await conn.fetch(f"SELECT id FROM app.items WHERE {conds}")
            )
        finally:
            await conn.close()
        conn = await asyncpg.connect(dest)
        try:
            got = [r[0] for r in await conn.fetch("SELECT _id::bigint FROM raw_chaos.items")]
        finally:
            await conn.close()
        assert len(got) == len(set(got))
        assert sorted(got) == expected
        assert 0 < len(got) < 60100

    async def go() -> None:
        first = await killed_partway(8)
        assert len(first) >= 8
        await check_exact(first)
        second = await killed_partway(len(first) + 8)
        assert set(first) <= set(second)
        await check_exact(second)
        last = max(int(hi) for _lo, hi in second if hi is not None)
        execute(
            source,
            f"UPDATE app.items SET n = n + 5, note = 'changed' WHERE id % 997 = 3 "
            f"AND id <= {last + 3000}",
            f"DELETE FROM app.items WHERE id IN ({last}, {last + 1}, 60100)",
            "INSERT INTO app.items (id, n, g, w, note) VALUES (70001, 2, 1, 0, 'late')",
        )
        final = spawn_warp(config, log, "--stop-when-idle", "1.5")
        assert final.wait(240) == 0, (tmp_path / "warp.log").read_text()[-3000:]
        assert await snapshot_done(dest)
        assert await _landed_ranges(dest) == []  # the plan goes with the copy's end
        # the table landed without its key's index (no duplicate above); it has it again
        assert (
            await _fetchval(
                dest,
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'raw_chaos.items'::regclass "
                "AND contype = 'p'",
            )
            == 1
        )
        await oracle(source, dest)
        live = await _fetchval(
            dest, "SELECT count(*) FROM raw_chaos.items WHERE NOT _cartridge_deleted"
        )
        assert live == await _fetchval(source, "SELECT count(*) FROM app.items")

    try:
        run(go())
    finally:
        log.close()
