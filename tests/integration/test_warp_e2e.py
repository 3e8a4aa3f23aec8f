"""End to end: the embedded MongoDB engine (or a real replica set) → warp → real PostgreSQL.

Every scenario ends with the oracle: after quiescing, PostgreSQL equals the source (same live
``_id``s, same canonical hash per ``_id``), the dead letters are exactly the expected ones, and
the checkpoint is the last applied event (nothing is left to read after it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import sys
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from bson import Decimal128, ObjectId
from bson.datetime_ms import DatetimeMS

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from cartridge_dagster.demo.traffic import run_traffic
from cartridge_dagster.errors import ResumeTokenLost
from cartridge_dagster.warp.admin import replay_dead_letters
from cartridge_dagster.warp.runner import WarpRunner
from cartridge_dagster.warp.source import DropPolicyStop
from tests.conftest import run
from tests.support.replset import is_test_server
from tests.support.warp import (
    assert_checkpoint_at_end,
    assert_oracle,
    background,
    checkpoint_row,
    dead_letters,
    quiesce,
    run_warp,
    source_hashes,
    target_hashes,
    until_streaming,
    warp_settings,
)

pytestmark = pytest.mark.integration

DEMO = ["customers", "events", "orders", "products"]


async def seed(url: str, db: str, scale: float = 0.02) -> None:
    async with mongo_session(url) as conn:
        await seed_demo(conn.database(db), sizes=DemoSizes.scaled(scale), seed=42)


def test_snapshot_then_live_changes(source: str, pg_url: str, mongo_db_name: str) -> None:
    settings = warp_settings(source, pg_url, mongo_db_name)

    async def go() -> None:
        await seed(source, mongo_db_name)
        runner, task = await background(settings)
        async with mongo_session(source) as conn:
            db = conn.database(mongo_db_name)
            counts = await run_traffic(db, rate=0, max_ops=150)
            await db.customers.insert_one({"_id": "explicit", "name": "x"})
            await db.customers.update_one({"_id": "explicit"}, {"$set": {"name": "y"}})
            await db.customers.replace_one({"_id": "explicit"}, {"name": "z", "n": 1})
            victim = await db.orders.find_one({})
            await db.orders.delete_one({"_id": victim["_id"]})
        await quiesce(runner, task)
        assert sum(counts.values()) >= 150
        summary = task.result()
        assert summary.snapshot_rows and summary.total_applied > sum(summary.snapshot_rows.values())
        assert 0 < summary.busy_seconds <= summary.seconds, summary
        assert summary.busy_cpu_seconds > 0, summary  # the process's CPU over the busy span
        await assert_oracle(settings, DEMO)
        await assert_checkpoint_at_end(settings)
        conn2 = await asyncpg.connect(pg_url)
        try:
            deleted = await conn2.fetchrow(
                "SELECT document, _cartridge_deleted, _cartridge_op FROM raw_shop.orders "
                "WHERE _id = $1",
                str(victim["_id"]),
            )
        finally:
            await conn2.close()
        assert deleted["_cartridge_deleted"] and deleted["document"] is None
        assert deleted["_cartridge_op"] == "delete"

    run(go())


def test_restart_resumes_from_checkpoint(source: str, pg_url: str, mongo_db_name: str) -> None:
    settings = warp_settings(source, pg_url, mongo_db_name)

    async def go() -> None:
        await seed(source, mongo_db_name, 0.01)
        first = await run_warp(settings)
        async with mongo_session(source) as conn:
            db = conn.database(mongo_db_name)
            await db.customers.insert_many([{"_id": f"new-{i}", "i": i} for i in range(30)])
            await db.customers.delete_many({"_id": {"$in": ["new-1", "new-2"]}})
        second = await run_warp(settings)
        assert not second.snapshot_rows, "the second run must not snapshot again"
        assert second.total_applied == 32
        assert first.checkpoint is not None and second.checkpoint is not None
        assert second.checkpoint.epoch == first.checkpoint.epoch + 1
        await assert_oracle(settings, DEMO)
        await assert_checkpoint_at_end(settings)

    run(go())


def test_type_chaos(source: str, pg_url: str, mongo_db_name: str) -> None:
    settings = warp_settings(source, pg_url, mongo_db_name)

    def deep(n: int) -> dict[str, Any]:
        node: dict[str, Any] = {"leaf": n}
        for i in range(n):
            node = {f"l{i}": node}
        return node

    docs = [
        {"_id": 1, "s": "nul\x00inside", "k": {"a\x00b": 1}},
        {"_id": 2, "f": math.nan, "g": math.inf, "h": -math.inf},
        {
            "_id": 3,
            "d": Decimal128(Decimal("12345678901234567890.123456789")),
            "z": Decimal128("-0"),
        },
        {
            "_id": 4,
            "min": dt.datetime(1, 1, 1, tzinfo=dt.UTC),
            "max": dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
        },
        {"_id": 5, "deep": deep(100)},
        {"_id": ObjectId(), "when": dt.datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)},
        {"_id": "str-id", "u": "ünïcödé ✓", "list": [1, "a", None, {"x": [True]}]},
        {"_id": {"compound": 1, "key": "x"}, "v": 1},
    ]

    if not source.startswith("mongoeco:"):
        # a server refuses NUL in field names (only the embedded engine stores them)
        docs[0] = {"_id": 1, "s": "nul\x00inside", "k": {"a.b": 1}}
    if not source.startswith("mongoeco:") and not is_test_server(source):
        # past what Python's datetime holds (the embedded engine cannot store these, nor the
        # replica-set test server, which keeps its data in it)
        docs.append({"_id": 9, "far": DatetimeMS(2**62), "neg": DatetimeMS(-(2**61))})

    async def go() -> None:
        async with mongo_session(source) as conn:
            # NaN arrives live: the embedded engine cannot sort a collection holding NaN
            await conn.database(mongo_db_name).chaos.insert_many([docs[0], docs[2], docs[3]])
        runner, task = await background(settings)
        await until_streaming(runner, task)
        async with mongo_session(source) as conn:
            await conn.database(mongo_db_name).chaos.insert_many([docs[1], *docs[4:]])
            await conn.database(mongo_db_name).chaos.update_one(
                {"_id": 2}, {"$set": {"f2": math.nan}}
            )
        await quiesce(runner, task)
        await assert_oracle(settings, ["chaos"])
        await assert_checkpoint_at_end(settings)
        # every lossy policy is counted, per field path, exactly once
        from cartridge_dagster.warp.admin import schema_status

        status = await schema_status(pg_url, settings.schemas[0])
        table = next(t for t in status.tables if t.collection == "chaos")
        assert table.policies["nul_stripped"] == {"s": 1}, table.policies
        # the update lands the whole document again: f, g and h are converted twice
        assert table.policies["non_finite"] == {"f": 2, "f2": 1, "g": 2, "h": 2}, table.policies
        assert table.policies["negative_zero"] == {"z": 1}, table.policies
        if source.startswith("mongoeco:"):
            assert table.policies["nul_key_stripped"] == {"k.ab": 1}, table.policies

    run(go())


def test_poison_oversized_and_replay(source: str, pg_url: str, mongo_db_name: str) -> None:
    settings = warp_settings(
        source,
        pg_url,
        mongo_db_name,
        schema={"dead_letter": {"max_document_bytes": 4096, "nul_in_strings": "dead_letter"}},
    )

    async def go() -> None:
        async with mongo_session(source) as conn:
            db = conn.database(mongo_db_name)
            await db.items.insert_many([{"_id": i, "v": i} for i in range(20)])
            await db.items.insert_one({"_id": "big", "blob": "x" * 10_000})
            await db.items.insert_one({"_id": "nul", "s": "a\x00b"})
        await run_warp(settings)
        # a row PostgreSQL rejects (a constraint someone added), streamed live
        pg = await asyncpg.connect(pg_url)
        await pg.execute(
            "ALTER TABLE raw_shop.items ADD CONSTRAINT no_poison "
            "CHECK (document IS NULL OR NOT (document ? 'poison'))"
        )
        await pg.close()
        async with mongo_session(source) as conn:
            db = conn.database(mongo_db_name)
            await db.items.insert_many([{"_id": 100 + i, "v": i} for i in range(10)])
            await db.items.insert_one({"_id": "poison", "poison": True})
            await db.items.update_one({"_id": 3}, {"$set": {"v": "changed"}})
        await run_warp(settings)
        await assert_oracle(settings, ["items"], dead={"items": {"big", "nul", "poison"}})
        await assert_checkpoint_at_end(settings)
        letters = {r["document_id"]: r for r in await dead_letters(pg_url)}
        assert letters["big"]["error_class"] == "UnlandableDocument"
        assert "max_document_bytes" in letters["big"]["error_message"]
        assert "NUL" in letters["nul"]["error_message"]
        assert letters["poison"]["error_class"] == "CheckViolationError"
        assert '"poison"' in letters["poison"]["raw_event_json"]

        # fix the causes, then replay: everything lands, nothing is left pending
        pg = await asyncpg.connect(pg_url)
        await pg.execute("ALTER TABLE raw_shop.items DROP CONSTRAINT no_poison")
        await pg.close()
        relaxed = warp_settings(
            source,
            pg_url,
            mongo_db_name,
            schema={"dead_letter": {"max_document_bytes": 1 << 20, "nul_in_strings": "strip"}},
        )
        result = await replay_dead_letters(pg_url, relaxed.schemas[0])
        assert result.replayed == 3 and result.failed == 0
        assert await dead_letters(pg_url) == []
        await assert_oracle(relaxed, ["items"])

    run(go())


def test_drop_and_rename(source: str, pg_url: str, mongo_db_name: str) -> None:
    settings = warp_settings(source, pg_url, mongo_db_name)

    async def go() -> None:
        async with mongo_session(source) as conn:
            db = conn.database(mongo_db_name)
            await db.keep.insert_many([{"_id": i} for i in range(5)])
            await db.gone.insert_many([{"_id": i} for i in range(5)])
            await db.old.insert_many([{"_id": i, "x": i} for i in range(7)])
        await run_warp(settings)
        async with mongo_session(source) as conn:
            db = conn.database(mongo_db_name)
            await db.keep.insert_one({"_id": 99})
            await db.old.rename("renamed")
        # a rename event (or, on the embedded engine, the idle reconcile) moves the rows
        await run_warp(settings, idle=1.5)
        await assert_oracle(settings, ["keep", "renamed"])
        expected = {c: await source_hashes(source, mongo_db_name, c) for c in ("keep", "renamed")}
        # The embedded engine cannot re-open a file after a collection drop (mongoeco 4.11:
        # "change consumer … checkpoint is ahead of committed sequence"), so the drop happens
        # while warp's client is open, and the oracle compares with the source read before.
        runner, task = await background(settings)
        await until_streaming(runner, task)
        async with mongo_session(source) as conn:
            await conn.database(mongo_db_name).gone.drop()
        await quiesce(runner, task, idle=1.0)
        for coll, hashes in expected.items():
            assert await target_hashes(pg_url, "raw_shop", coll) == hashes
        pg = await asyncpg.connect(pg_url)
        try:
            live = {
                t: await pg.fetchval(
                    f'SELECT count(*) FROM raw_shop."{t}" WHERE NOT _cartridge_deleted'
                )
                for t in ("gone", "old")
            }
            ops = await pg.fetchval("SELECT DISTINCT _cartridge_op FROM raw_shop.gone")
        finally:
            await pg.close()
        assert live == {"gone": 0, "old": 0}
        assert ops == "drop"

    run(go())


def test_live_copy_finishes_after_a_stop(source: str, pg_url: str, mongo_db_name: str) -> None:
    """A collection renamed into scope is copied while warp streams; warp stopped in the middle
    of that copy (SIGTERM, or a crash after some of its batches committed) finishes it when it
    starts again (the copy's progress is in the checkpoint's plan), instead of taking the
    half-filled table for a known one."""
    settings = warp_settings(
        source,
        pg_url,
        mongo_db_name,
        batching={"max_batch_size": 25, "snapshot_chunk_size": 25, "queue_max_batches": 1},
        warp={"idle_checkpoint_seconds": 0.2},
    )

    class StopInCopy:
        def __init__(self) -> None:
            self.runner: WarpRunner | None = None
            self.copied = 0

        def on_batch(self, schema: str, batch: Any, result: Any) -> None:
            if batch.kind == "snapshot" and "renamed" in result.applied:
                self.copied += result.applied["renamed"]
                if self.copied >= 50 and self.runner is not None:
                    self.runner.stop.set()

        def should_stop(self) -> bool:
            return False

    async def go() -> None:
        async with mongo_session(source) as conn:
            db = conn.database(mongo_db_name)
            await db.keep.insert_many([{"_id": i} for i in range(5)])
            await db.old.insert_many([{"_id": i, "x": i} for i in range(400)])
        await run_warp(settings)
        observer = StopInCopy()
        runner, task = await background(settings, observer=observer)
        observer.runner = runner
        await until_streaming(runner, task)
        async with mongo_session(source) as conn:
            await conn.database(mongo_db_name).old.rename("renamed")
        await asyncio.wait_for(task, 60)
        assert 50 <= observer.copied < 400, observer.copied
        cp = await checkpoint_row(pg_url)
        assert cp is not None and json.loads(cp["snapshot"])["renamed"]["done"] is False
        await run_warp(settings, idle=1.5)
        await assert_oracle(settings, ["keep", "renamed"])
        cp = await checkpoint_row(pg_url)
        assert cp is not None and json.loads(cp["snapshot"])["renamed"]["done"] is True

    run(go())


def test_drop_policy_fail_stops_loudly(tmp_path: Any, pg_url: str, mongo_db_name: str) -> None:
    url = f"mongoeco://{tmp_path / 'source.sqlite'}"
    settings = warp_settings(url, pg_url, mongo_db_name, warp={"drop_policy": "fail"})

    async def go() -> None:
        async with mongo_session(url) as conn:
            await conn.database(mongo_db_name).gone.insert_many([{"_id": i} for i in range(3)])
        runner, task = await background(settings)
        await until_streaming(runner, task)
        async with mongo_session(url) as conn:
            await conn.database(mongo_db_name).gone.drop()
        with pytest.raises(DropPolicyStop, match="drop_policy"):
            await asyncio.wait_for(task, 30)
        pg = await asyncpg.connect(pg_url)
        try:  # the rows stay as they were: nothing is applied past the drop
            live = await pg.fetchval(
                "SELECT count(*) FROM raw_shop.gone WHERE NOT _cartridge_deleted"
            )
        finally:
            await pg.close()
        assert live == 3

    run(go())


def test_history_lost_policies(tmp_path: Any, pg_url: str, mongo_db_name: str) -> None:
    url = f"mongoeco://{tmp_path / 'source.sqlite'}?history_size=50"
    fail = warp_settings(url, pg_url, mongo_db_name, warp={"history_lost_policy": "fail"})
    resnap = warp_settings(url, pg_url, mongo_db_name, warp={"history_lost_policy": "resnapshot"})

    async def go() -> None:
        async with mongo_session(url) as conn:
            await conn.database(mongo_db_name).c.insert_many(
                [{"_id": i, "v": 0} for i in range(40)]
            )
        await run_warp(fail)
        before = await checkpoint_row(pg_url)
        async with mongo_session(url) as conn:
            db = conn.database(mongo_db_name)
            for i in range(120):  # far more history than the journal keeps
                await db.c.update_one({"_id": i % 40}, {"$set": {"v": i, "pad": "p" * 200}})
            await db.c.delete_many({"_id": {"$lt": 5}})
            await db.c.insert_one({"_id": "late"})
        with pytest.raises(ResumeTokenLost, match=r"cannot resume"):
            await run_warp(fail)
        after = await checkpoint_row(pg_url)
        assert after is not None and before is not None
        assert after["resume_token"] == before["resume_token"], "nothing applied past the loss"
        summary = await run_warp(resnap)
        assert summary.resnapshots == 1
        await assert_oracle(resnap, ["c"])
        await assert_checkpoint_at_end(resnap)

    run(go())


def test_slow_sink_keeps_memory_bounded(tmp_path: Any, pg_url: str, mongo_db_name: str) -> None:
    """Memory does not grow with the backlog: a slow warehouse, a backlog of 1× and of 12× what
    the queue holds (snapshot and then streamed changes, ~6 KB documents), and the peak of
    traced memory of the two runs compared."""
    import tracemalloc

    batching = {"max_batch_size": 20, "queue_max_batches": 2, "snapshot_chunk_size": 20}
    capacity = 20 * (2 + 2)  # the queue, the batch being read, the batch being written

    async def measure(name: str, backlog: int) -> tuple[int, Any]:
        url = f"mongoeco://{tmp_path / name}.sqlite"
        pad = "x" * 6000
        settings = warp_settings(
            url,
            pg_url,
            mongo_db_name,
            batching=batching,
            schema={"name": name, "target_schema": f"raw_{name}"},
        )
        async with mongo_session(url) as conn:
            coll = conn.database(mongo_db_name).c
            await coll.insert_many([{"_id": i, "pad": pad} for i in range(backlog)])
        runner = WarpRunner(settings, settings.schemas[0], stop_when_idle=0.5)
        original = runner._apply
        streamed = False

        async def slow_apply(sink: Any, batch: Any) -> Any:
            nonlocal streamed
            await asyncio.sleep(0.02)  # PostgreSQL is slow
            if (
                batch.kind == "snapshot"
                and not streamed
                and (batch.snapshot or {}).get("c", {}).get("done")
            ):
                # the snapshot is read: another process writes a backlog of the same size
                streamed = True
                script = (
                    "import asyncio\n"
                    "from cartridge_dagster.connectors.mongo import mongo_session\n"
                    "async def main():\n"
                    f"    async with mongo_session({url!r}) as conn:\n"
                    f"        await conn.database({mongo_db_name!r}).c.insert_many(\n"
                    f"            [{{'_id': {backlog} + i, 'pad': {pad!r}}} for i in range({backlog})])\n"
                    "asyncio.run(main())\n"
                )
                proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script)
                assert await proc.wait() == 0
            return await original(sink, batch)

        runner._apply = slow_apply  # type: ignore[method-assign]
        tracemalloc.start()
        try:
            summary = await asyncio.wait_for(runner.run(), 120)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert summary.total_applied == 2 * backlog
        await assert_oracle(settings, ["c"])
        return peak, summary

    async def go() -> None:
        small, _ = await measure("small", capacity)
        big, summary = await measure("big", capacity * 12)
        assert summary.peak_queue <= 2
        ratio = big / small
        print(
            f"peak traced memory: {small / 1e6:.1f} MB (1x) vs {big / 1e6:.1f} MB (12x): {ratio:.2f}"
        )
        assert ratio <= 1.3, f"memory grew with the backlog: {ratio:.2f}x"

    run(go())


def test_multi_mode_runs_schemas_side_by_side(tmp_path: Any, pg_url: str) -> None:
    from cartridge_dagster.config import settings_from_mapping
    from cartridge_dagster.warp.runner import run_schemas

    url = f"mongoeco://{tmp_path / 'source.sqlite'}"
    settings = settings_from_mapping(
        {
            "source": {"connection_string": url},
            "destination": {"connection_string": pg_url},
            "mode": "multi",
            "defaults": {"warp": {"metrics_port": 0}, "batching": {"max_batch_seconds": 0.2}},
            "schemas": [
                {"name": "alpha", "source_database": "db_a"},
                {"name": "beta", "source_database": "db_b", "deletes": "hard"},
            ],
        }
    )

    async def go() -> None:
        async with mongo_session(url) as conn:
            await conn.database("db_a").c.insert_many([{"_id": i} for i in range(10)])
            await conn.database("db_b").c.insert_many([{"_id": i} for i in range(20)])
        summaries = await asyncio.wait_for(
            run_schemas(settings, settings.schemas, stop=asyncio.Event(), stop_when_idle=0.6), 90
        )
        assert {s.schema: s.total_applied for s in summaries} == {"alpha": 10, "beta": 20}
        pg = await asyncpg.connect(pg_url)
        try:
            counts = {
                s: await pg.fetchval(f"SELECT count(*) FROM raw_{s}.c") for s in ("alpha", "beta")
            }
            epochs = await pg.fetch("SELECT schema_name, epoch FROM cartridge_warp.checkpoints")
        finally:
            await pg.close()
        assert counts == {"alpha": 10, "beta": 20}
        assert {r["schema_name"] for r in epochs} == {"alpha", "beta"}

    run(go())


def test_snapshot_resumes_per_collection(tmp_path: Any, pg_url: str, mongo_db_name: str) -> None:
    url = f"mongoeco://{tmp_path / 'source.sqlite'}"
    settings = warp_settings(
        url,
        pg_url,
        mongo_db_name,
        batching={"max_batch_size": 25, "snapshot_chunk_size": 50, "queue_max_batches": 1},
    )

    class StopAfter:
        """Stops the runner after three snapshot transactions (like SIGTERM mid-snapshot)."""

        def __init__(self) -> None:
            self.batches = 0
            self.runner: WarpRunner | None = None

        def on_batch(self, schema: str, batch: Any, result: Any) -> None:
            self.batches += batch.kind == "snapshot"
            if self.batches >= 3 and self.runner is not None:
                self.runner.stop.set()

        def should_stop(self) -> bool:
            return False

    async def go() -> None:
        async with mongo_session(url) as conn:
            await conn.database(mongo_db_name).c.insert_many([{"_id": i} for i in range(300)])
        observer = StopAfter()
        runner = WarpRunner(settings, settings.schemas[0], observer=observer)
        observer.runner = runner
        first = await asyncio.wait_for(runner.run(), 60)
        assert first.checkpoint is not None
        state = first.checkpoint.snapshot["c"]
        assert not state["done"] and 0 < state["copied"] < 300
        second = await run_warp(settings)
        assert sum(second.snapshot_rows.values()) == 300 - state["copied"], "resumed, not redone"
        await assert_oracle(settings, ["c"])

    run(go())


def test_replay_supersession_and_parked_letters(
    mongo_url: str, pg_url: str, mongo_db_name: str
) -> None:
    """A letter whose document changed (or went) since is superseded before it is rebuilt,
    even when it would still fail; one that keeps failing is parked, and parked letters stay
    visible (status, ``dlq list``) apart from pending ones."""
    from cartridge_dagster.warp.admin import list_dead_letters, schema_status

    strict = warp_settings(
        mongo_url,
        pg_url,
        mongo_db_name,
        schema={"dead_letter": {"nul_in_strings": "dead_letter", "max_attempts": 3}},
    )
    schema = strict.schemas[0]

    async def go() -> None:
        async with mongo_session(mongo_url) as conn:
            db = conn.database(mongo_db_name)
            await db.items.insert_many([{"_id": "ok", "v": 1}, {"_id": "gone", "s": "a\x00b"}])
            await db.items.insert_one({"_id": "stuck", "s": "c\x00d"})
        await run_warp(strict)
        async with mongo_session(mongo_url) as conn:
            await conn.database(mongo_db_name).items.delete_one({"_id": "gone"})
        await run_warp(strict)  # the delete lands: a tombstone newer than the letter
        first = await replay_dead_letters(pg_url, schema)
        assert (first.superseded, first.failed, first.parked) == (1, 1, 0), first
        second = await replay_dead_letters(pg_url, schema)
        assert (second.superseded, second.failed, second.parked) == (0, 1, 1), second
        status = await schema_status(pg_url, schema)
        assert (status.dead_letters, status.parked) == (0, 1)
        table = next(t for t in status.tables if t.collection == "items")
        assert (table.dead_letters, table.parked) == (0, 1)
        open_letters = await list_dead_letters(pg_url, schema.name)
        assert [(r["document_id"], r["status"]) for r in open_letters] == [("stuck", "parked")]
        every = await list_dead_letters(pg_url, schema.name, statuses=None)
        assert {r["document_id"]: r["status"] for r in every} == {
            "gone": "superseded",
            "stuck": "parked",
        }

    run(go())


def test_split_large_events_on_the_wire(tmp_path: Any, pg_url: str, mongo_db_name: str) -> None:
    """A server that splits events over its size limit (``$changeStreamSplitLargeEvent``, the
    test server with a 4 KiB limit standing for MongoDB's 16 MiB): warp reassembles the
    fragments, and a restart in the middle of a split event's fragments loses nothing."""
    from tests.support.replset import start

    server = start(tmp_path / "rs", max_event_bytes=4096)
    try:
        settings = warp_settings(server.uri, pg_url, mongo_db_name, batching={"max_batch_size": 3})

        async def go() -> None:
            async with mongo_session(server.uri) as conn:
                await conn.database(mongo_db_name).big.insert_one({"_id": 0, "a": "seed"})
            await run_warp(settings)
            async with mongo_session(server.uri) as conn:
                db = conn.database(mongo_db_name)
                for i in range(1, 8):  # each event ~6 KB: fullDocument and updateDescription
                    await db.big.insert_one({"_id": i, "a": "x" * 3000, "b": "y" * 3000})
                    await db.big.update_one({"_id": i}, {"$set": {"a": "z" * 3500}})
            runner = WarpRunner(settings, settings.schemas[0], stop_when_idle=0.6)
            summary = await asyncio.wait_for(runner.run(), 120)
            assert summary.total_applied >= 14
            assert runner.source is not None and runner.source.merged_splits >= 14
            await assert_oracle(settings, ["big"])
            await assert_checkpoint_at_end(settings)

        run(go())
    finally:
        server.stop()
