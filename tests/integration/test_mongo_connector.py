"""The MongoDB connector on the embedded engine: CRUD, change streams, resume, history loss."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cartridge_dagster.connectors.mongo import aggregate, mongo_session, open_mongo
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from cartridge_dagster.errors import ConfigError, ConnectionFailed, ResumeTokenLost

pytestmark = pytest.mark.integration


async def test_seed_is_deterministic_and_realistic(tmp_path: Path) -> None:
    sizes = DemoSizes.scaled(0.01)
    docs = []
    for name in ("a", "b"):
        async with mongo_session(f"mongoeco://{tmp_path / name}.sqlite") as conn:
            counts = await seed_demo(conn.database("shop"), sizes=sizes, seed=3)
            assert counts == {
                "customers": sizes.customers,
                "products": sizes.products,
                "orders": sizes.orders,
                "events": sizes.events,
            }
            assert await conn.list_collection_names("shop") == [
                "customers",
                "events",
                "orders",
                "products",
            ]
            docs.append(await conn.database("shop").orders.find_one(sort=[("_id", 1)]))
    assert docs[0] == docs[1]
    order = docs[0]
    assert {"customer_id", "items", "total", "shipping_address"} <= set(order)
    assert order["items"] and "unit_price" in order["items"][0]


async def test_change_stream_resume_and_cross_process_visibility(tmp_path: Path) -> None:
    url = f"mongoeco://{tmp_path / 'src.sqlite'}"
    async with mongo_session(url) as conn:
        db = conn.database("app")
        await db.things.insert_one({"_id": 1, "v": "a"})
        stream = conn.watch("app", max_await_time_ms=100)
        assert await stream.try_next() is None  # opened at "now"
        await db.things.insert_one({"_id": 2, "v": "b"})
        await db.things.update_one({"_id": 2}, {"$set": {"v": "c"}})
        first = await stream.try_next()
        assert first is not None and first["operationType"] == "insert"
        token = stream.resume_token
        second = await stream.try_next()
        assert second is not None and second["operationType"] == "update"
        assert second["fullDocument"] == {"_id": 2, "v": "c"}  # updateLookup by default
        await stream.close()

        # Another process writes; a stream resumed from our token sees it (journal on disk).
        script = (
            "import asyncio\n"
            "from cartridge_dagster.connectors.mongo import mongo_session\n"
            "async def main():\n"
            f"    async with mongo_session({url!r}) as c:\n"
            "        await c.database('app').things.delete_one({'_id': 1})\n"
            "asyncio.run(main())\n"
        )
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
        resumed = conn.watch("app", resume_after=token, max_await_time_ms=100)
        kinds = []
        for _ in range(10):
            event = await resumed.try_next()
            if event is not None:
                kinds.append((event["operationType"], event["documentKey"]["_id"]))
            if len(kinds) == 2:
                break
        await resumed.close()
        assert kinds == [("update", 2), ("delete", 1)]


async def test_history_loss_is_resume_token_lost(tmp_path: Path) -> None:
    url = f"mongoeco://{tmp_path / 'small.sqlite'}?history_size=5"
    async with mongo_session(url) as conn:
        coll = conn.database("app").c
        await coll.insert_one({"_id": 0})
        stream = conn.watch("app", max_await_time_ms=50)
        await stream.try_next()
        await coll.insert_one({"_id": 1, "pad": "x" * 100})
        event = await stream.try_next()
        assert event is not None
        old = stream.resume_token
        await stream.close()
        for i in range(2, 60):
            await coll.insert_one({"_id": i, "pad": "x" * 200})
        lost = conn.watch("app", resume_after=old, max_await_time_ms=50)
        with pytest.raises(ResumeTokenLost, match="history lost"):
            await lost.try_next()
        await lost.close()


async def test_aggregate_sample_works(tmp_path: Path) -> None:
    async with mongo_session(f"mongoeco://{tmp_path / 's.sqlite'}") as conn:
        coll = conn.database("d").c
        await coll.insert_many([{"i": i} for i in range(50)])
        docs = [d async for d in await aggregate(coll, [{"$sample": {"size": 10}}])]
        assert len(docs) == 10


def test_bad_urls_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unsupported MongoDB URL"):
        open_mongo("redis://x")
    with pytest.raises(ConfigError, match="unknown option"):
        open_mongo("mongoeco:///tmp/x.sqlite?bogus=1")


async def test_unreachable_server_is_one_clear_error() -> None:
    conn = open_mongo(
        "mongodb://cartridge:secret@127.0.0.1:1/?directConnection=true", timeout_seconds=0.5
    )
    with pytest.raises(ConnectionFailed) as err:
        await conn.ping()
    await conn.close()
    assert "cannot reach MongoDB" in str(err.value)
    assert "secret" not in str(err.value)


async def test_a_write_without_its_change_is_never_read_past(tmp_path: Path) -> None:
    """A client that publishes no change events (a plain embedded-engine client, no stream
    open) leaves a position without its change in the log: a stream stops there, naming it."""
    from mongoeco import AsyncMongoClient
    from mongoeco.engines import SQLiteEngine

    from cartridge_dagster.connectors.mongoeco_log import PositionGap

    path = tmp_path / "gap.sqlite"
    url = f"mongoeco://{path}"
    async with mongo_session(url) as conn:
        await conn.database("app").c.insert_one({"_id": 1})
        stream = conn.watch("app", max_await_time_ms=100)
        assert await stream.try_next() is None
        async with AsyncMongoClient(SQLiteEngine(str(path))) as plain:  # no change events
            await plain["app"].c.insert_one({"_id": 2})
        await conn.database("app").c.insert_one({"_id": 3})
        with pytest.raises(PositionGap, match=r"position \d+ .* without its change") as caught:
            await stream.try_next()
        assert isinstance(caught.value, ResumeTokenLost)  # warp.history_lost_policy applies
        await stream.close()
