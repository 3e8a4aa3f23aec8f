"""Source disconnects: warp rides out a lost MongoDB connection, mid-snapshot and mid-stream.

Embedded engine: real driver errors (``pymongo.errors.AutoReconnect``) are raised at the
connector boundary (the change stream's ``try_next`` and the engine's query cursor) while
inserts, updates and deletes happen. Replica set: a TCP proxy between warp and MongoDB cuts
every connection mid-snapshot and mid-stream. Either way, after quiescing the oracle holds
(PostgreSQL equals the source, no dead letters, the checkpoint is the last event), nothing was
copied twice, and the retries were counted. A source that stays down stops the runner after its
retries with one clear error, and the checkpoint stays where it was.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import orjson
import pymongo
import pytest
from mongoeco.api._async.cursor import AsyncCursor
from pymongo.errors import AutoReconnect

from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.connectors.mongo import ChangeStream, mongo_session
from cartridge_dagster.connectors.mongoeco_store import StoreScan
from cartridge_dagster.errors import ConnectionFailed, TransientError, classify
from cartridge_dagster.warp import metrics
from cartridge_dagster.warp.runner import WarpRunner
from cartridge_dagster.warp.sink import Batch, BatchResult
from tests.conftest import run
from tests.support.tcp_proxy import TcpProxy, proxied_mongo_uri
from tests.support.warp import (
    assert_checkpoint_at_end,
    assert_oracle,
    checkpoint_row,
    quiesce,
    until_streaming,
    warp_settings,
)

pytestmark = pytest.mark.integration

SECRET = "s3cret-pw"


# ---------------------------------------------------------------------- fault injection


class Faults:
    """``AutoReconnect`` from the connector's change stream, the engine's query cursor and its
    stored-document pages (the snapshot's reads).

    ``cursor_fail_at``: fail the query cursor before its n-th document (counted over all
    queries while armed). ``stream_every``/``stream_failures``: fail every n-th ``try_next``,
    alternately before the call and after it consumed an event (the reply is lost)."""

    def __init__(self) -> None:
        self.cursor_docs = 0
        self.cursor_fail_at: set[int] = set()
        self.stream_calls = 0
        self.stream_every = 0
        self.stream_failures = 0
        self.stream_forever = False
        self.injected: Counter[str] = Counter()

    def disarm(self) -> None:
        self.cursor_fail_at = set()
        self.stream_failures = 0
        self.stream_forever = False

    def error(self, where: str) -> AutoReconnect:
        self.injected[where] += 1
        # a driver message that names the server with credentials: they must not leak
        return AutoReconnect(
            f"connection closed ({where}, injected) to mongodb://warp:{SECRET}@db.internal:27017"
        )

    def cursor_doc(self) -> None:
        self.cursor_docs += 1
        if self.cursor_docs in self.cursor_fail_at:
            self.cursor_fail_at.discard(self.cursor_docs)
            raise self.error("cursor")

    def stream_call(self) -> str | None:
        """None (no fault), "before" or "after" the real call."""
        self.stream_calls += 1
        if self.stream_forever:
            return "before"
        if self.stream_failures > 0 and self.stream_calls % self.stream_every == 0:
            self.stream_failures -= 1
            return "after" if self.stream_failures % 2 else "before"
        return None


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    f = Faults()
    original_try_next = ChangeStream.try_next
    original_aiter: Any = AsyncCursor.__aiter__

    async def try_next(self: ChangeStream) -> dict[str, Any] | None:
        when = f.stream_call()
        if when == "before":
            raise f.error("stream")
        event = await original_try_next(self)
        if when == "after":
            raise f.error("stream")  # the event was read, the reply never arrived
        return event

    def aiter(self: AsyncCursor) -> AsyncIterator[Any]:
        inner = original_aiter(self)

        async def docs() -> AsyncIterator[Any]:
            async for doc in inner:
                f.cursor_doc()
                yield doc

        return docs()

    original_page = StoreScan.page

    def page(self: StoreScan, db: str, coll: str, after: Any, limit: int) -> list[Any]:
        # the embedded engine's stored documents, read a page at a time: the page holding
        # the n-th document fails as a whole (as a lost connection would)
        rows = original_page(self, db, coll, after, limit)
        start = f.cursor_docs
        if any(start + i + 1 in f.cursor_fail_at for i in range(len(rows))):
            hit = min(n for n in f.cursor_fail_at if n > start)
            f.cursor_fail_at.discard(hit)
            f.cursor_docs = hit - 1
            raise f.error("cursor")
        f.cursor_docs += len(rows)
        return rows

    monkeypatch.setattr(ChangeStream, "try_next", try_next)
    monkeypatch.setattr(AsyncCursor, "__aiter__", aiter)
    monkeypatch.setattr(StoreScan, "page", page)
    yield f
    f.disarm()


class SnapshotLog:
    """Observer: every copied row applied in PostgreSQL (the initial snapshot, and live copies
    while streaming), to prove that none was copied twice."""

    def __init__(self) -> None:
        self.rows: Counter[tuple[str, str]] = Counter()
        self.live: Counter[tuple[str, str]] = Counter()

    def on_batch(self, schema: str, batch: Batch, result: BatchResult) -> None:
        if batch.kind == "snapshot":
            # the initial copy may COPY straight in; a live copy merges (streamed changes)
            rows = self.rows if batch.direct_copy else self.live
            rows.update((c.collection, c.id) for c in batch.changes)
            if batch.copy is not None:  # rows COPYed as the source's conversion wrote them
                rows.update((c.collection, c.id) for c in batch.copy.changes())

    def twice(self) -> list[tuple[str, str]]:
        return [k for k, n in (self.rows + self.live).items() if n > 1]

    def should_stop(self) -> bool:
        return False


# ---------------------------------------------------------------------- helpers


async def churn(
    url: str, db_name: str, collection: str, ops: int, seed: int, known: int
) -> Counter[str]:
    """Random inserts, updates, replaces and deletes of ``_id`` 0..known-1 and new ones, one
    at a time (no queries: the fault injection counts only warp's cursors)."""
    rng = random.Random(seed)
    counts: Counter[str] = Counter()
    ids: list[Any] = list(range(known))
    async with mongo_session(url) as conn:
        coll = conn.database(db_name)[collection]
        for i in range(ops):
            roll = rng.random()
            if roll < 0.35 or not ids:
                new_id = f"c{seed}-{i}"
                await coll.insert_one({"_id": new_id, "n": i, "tag": "new"})
                ids.append(new_id)
                counts["insert"] += 1
            elif roll < 0.7:
                await coll.update_one(
                    {"_id": rng.choice(ids)}, {"$set": {"n": i, "seen": True}, "$inc": {"v": 1}}
                )
                counts["update"] += 1
            elif roll < 0.8:
                await coll.replace_one({"_id": rng.choice(ids)}, {"replaced": i})
                counts["replace"] += 1
            else:
                victim = ids.pop(rng.randrange(len(ids)))
                await coll.delete_one({"_id": victim})
                counts["delete"] += 1
            if i % 10 == 0:
                await asyncio.sleep(0)
    return counts


async def seed_collections(url: str, db_name: str, sizes: dict[str, int]) -> None:
    async with mongo_session(url) as conn:
        db = conn.database(db_name)
        for name, n in sizes.items():
            await db[name].insert_many(
                [{"_id": i, "name": f"{name}-{i}", "pad": "x" * 120, "v": 0} for i in range(n)]
            )


async def highest_landed_version(pg_url: str, raw_schema: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            raw_schema,
        )
        top = 0
        for t in tables:
            v = await conn.fetchval(
                f'SELECT max(_cartridge_version) FROM "{raw_schema}"."{t["table_name"]}"'
            )
            top = max(top, int(v or 0))
        return top
    finally:
        await conn.close()


async def assert_checkpoint_is_last_landed(settings: CartridgeSettings) -> None:
    row = await checkpoint_row(settings.destination_url())
    assert row is not None
    top = await highest_landed_version(settings.destination_url(), settings.schemas[0].raw_schema)
    assert int(row["version"]) == top, f"checkpoint {row['version']} != highest landed {top}"


def mongodb_retries(schema: str) -> float:
    return float(metrics.RETRIES.labels(schema, "mongodb")._value.get())


async def wait_for(predicate: Any, task: asyncio.Task[Any], timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if task.done():
            task.result()
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def until_idle(runner: WarpRunner, task: asyncio.Task[Any], idle: float = 0.8) -> None:
    """Wait until the stream has found nothing new for ``idle`` seconds and the writer is done."""
    loop = asyncio.get_running_loop()

    def quiet() -> bool:
        src = runner.source
        return (
            src is not None
            and src.idle_since is not None
            and loop.time() - src.idle_since >= idle
            and not runner._writer_busy
        )

    await wait_for(quiet, task)


async def primary_address(url: str) -> tuple[str, int]:
    client: Any = pymongo.AsyncMongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        hello = await client.admin.command("hello")
    finally:
        await client.close()
    host, _, port = str(hello.get("primary") or hello["me"]).rpartition(":")
    return host, int(port)


SIZES = {"items": 600, "other": 150, "zold": 200}


def disconnect_settings(url: str, pg_url: str, db: str) -> CartridgeSettings:
    return warp_settings(
        url,
        pg_url,
        db,
        batching={"max_batch_size": 50, "snapshot_chunk_size": 120, "queue_max_batches": 2},
        source={"connect_timeout_seconds": 1.0},
    )


# ---------------------------------------------------------------------- the scenarios


def test_disconnects_mid_snapshot_and_mid_stream(
    source: str, pg_url: str, mongo_db_name: str, request: pytest.FixtureRequest
) -> None:
    if source.startswith("mongoeco:"):
        embedded_disconnects(source, pg_url, mongo_db_name, request.getfixturevalue("faults"))
    else:
        replset_disconnects(source, pg_url, mongo_db_name)


def embedded_disconnects(url: str, pg_url: str, db: str, faults: Faults) -> None:
    settings = disconnect_settings(url, pg_url, db)
    name = settings.schemas[0].name

    async def go() -> None:
        await seed_collections(url, db, SIZES)
        log = SnapshotLog()
        # three attempts per outage: ten separate outages must not add up to a stop
        runner = WarpRunner(
            settings, settings.schemas[0], observer=log, max_retries=3, max_backoff=0.3
        )
        retries_before = mongodb_retries(name)
        # mid-snapshot: three lost connections, in the first and the second collection
        faults.cursor_docs = 0
        faults.cursor_fail_at = {70, 330, 640}
        task = asyncio.create_task(runner.run())
        writes = asyncio.create_task(churn(url, db, "items", 120, seed=1, known=600))
        await until_streaming(runner, task)
        assert faults.injected["cursor"] == 3, "every snapshot fault fired"
        # mid-stream: every 6th read of the change stream fails (before or after the read)
        faults.stream_calls, faults.stream_every, faults.stream_failures = 0, 6, 6
        await writes
        await churn(url, db, "other", 80, seed=2, known=150)
        await wait_for(lambda: faults.stream_failures == 0, task)
        # a rename while streaming: the embedded engine reports none, warp copies the new
        # name while idle; the connection drops in the middle of that copy too
        faults.cursor_fail_at = {faults.cursor_docs + 90}
        async with mongo_session(url) as conn:
            await conn.database(db).zold.rename("znew")
        await wait_for(lambda: faults.injected["cursor"] == 4, task)
        await churn(url, db, "items", 40, seed=3, known=600)
        await quiesce(runner, task, idle=1.0)
        faults.disarm()

        summary = task.result()
        injected = sum(faults.injected.values())
        assert faults.injected["stream"] == 6 and injected == 10
        assert summary.retries == injected, "every lost connection was retried, and counted"
        assert mongodb_retries(name) - retries_before == injected
        # nothing copied twice: each row was applied by exactly one copy batch
        assert not log.twice(), f"copied twice: {log.twice()[:5]}"
        assert sum(summary.snapshot_rows.values()) == len(log.rows) + len(log.live)
        assert {c for c, _ in log.live} == {"znew"} and len(log.live) == SIZES["zold"]
        cp = await checkpoint_row(pg_url)
        assert cp is not None
        plan = orjson.loads(cp["snapshot"]) if isinstance(cp["snapshot"], str) else cp["snapshot"]
        for coll in SIZES:
            assert plan[coll]["done"]
            copied = sum(1 for c, _ in log.rows if c == coll)
            assert plan[coll]["copied"] == copied, f"{coll}: cursor count != rows handed over"
        await assert_oracle(settings, ["items", "other", "znew", "zold"])
        await assert_checkpoint_is_last_landed(settings)
        await assert_checkpoint_at_end(settings)

    run(go())


def replset_disconnects(url: str, pg_url: str, db: str) -> None:
    try:
        proxied_mongo_uri(url, 1)
    except ValueError as exc:
        pytest.skip(str(exc))

    async def go() -> None:
        await seed_collections(url, db, {"items": 3000, "other": 300})
        host, port = await primary_address(url)
        async with TcpProxy(host, port) as proxy:
            settings = disconnect_settings(proxied_mongo_uri(url, proxy.port), pg_url, db)
            log = SnapshotLog()
            runner = WarpRunner(settings, settings.schemas[0], observer=log, max_backoff=0.5)
            # mid-snapshot: down for 2 s once ~150 kB of the ~500 kB copy went through
            proxy.outage_after(150_000, 2.0)
            task = asyncio.create_task(runner.run())
            writes = asyncio.create_task(churn(url, db, "items", 150, seed=1, known=3000))
            await until_streaming(runner, task)
            assert not proxy.armed and proxy.cuts >= 1, "the snapshot outage happened"
            # mid-stream: cut everything while writes go on (directly, not through the proxy)
            more = asyncio.create_task(churn(url, db, "other", 150, seed=2, known=300))
            await asyncio.sleep(0.3)
            await proxy.outage(2.0)
            await writes
            await more
            await churn(url, db, "items", 40, seed=3, known=3000)
            await quiesce(runner, task, idle=1.0)
            summary = task.result()
            assert proxy.cuts >= 2
            assert summary.retries > 0
            assert not log.twice(), f"copied twice: {log.twice()[:5]}"
            await assert_oracle(settings, ["items", "other"])
            await assert_checkpoint_is_last_landed(settings)
            await assert_checkpoint_at_end(settings)

    run(go())


def test_source_that_stays_down_stops_the_runner(
    source: str, pg_url: str, mongo_db_name: str, request: pytest.FixtureRequest
) -> None:
    embedded = source.startswith("mongoeco:")
    if not embedded:
        try:
            proxied_mongo_uri(source, 1)
        except ValueError as exc:
            pytest.skip(str(exc))
    faults: Faults | None = request.getfixturevalue("faults") if embedded else None

    async def go() -> None:
        await seed_collections(source, mongo_db_name, {"items": 50})
        proxy: TcpProxy | None = None
        url = source
        if not embedded:
            proxy = await TcpProxy(*await primary_address(source)).start()
            url = proxied_mongo_uri(source, proxy.port)
        try:
            settings = disconnect_settings(url, pg_url, mongo_db_name)
            runner = WarpRunner(settings, settings.schemas[0], max_retries=3, max_backoff=0.2)
            task = asyncio.create_task(runner.run())
            await until_streaming(runner, task)
            await churn(source, mongo_db_name, "items", 20, seed=1, known=50)
            await until_idle(runner, task)  # everything read is applied
            before = await checkpoint_row(pg_url)
            # the source goes away for good, while it keeps changing
            if faults is not None:
                faults.stream_forever = True
            else:
                assert proxy is not None
                proxy.go_down()
            await churn(source, mongo_db_name, "items", 20, seed=2, known=50)
            started = asyncio.get_running_loop().time()
            with pytest.raises(ConnectionFailed) as caught:
                await asyncio.wait_for(task, 30)
            elapsed = asyncio.get_running_loop().time() - started
        finally:
            if proxy is not None:
                await proxy.close()
        error = caught.value
        message = str(error)
        assert "lost the MongoDB source" in message and "in 3 attempts" in message
        assert settings.source.display_url() in message, message
        assert SECRET not in message and SECRET not in str(error.hint)
        assert isinstance(error.__cause__, pymongo.errors.ConnectionFailure)
        assert classify(error) is TransientError  # the CLI exits 3, Dagster relaunches
        assert runner.summary.retries == 2  # 3 attempts
        assert elapsed < 20
        after = await checkpoint_row(pg_url)
        assert before is not None and after is not None
        for key in ("resume_token", "version", "events_applied", "epoch"):
            assert after[key] == before[key], f"checkpoint {key} moved while the source was down"

    run(go())


def test_tcp_proxy_cuts_and_restores_a_real_wire_connection() -> None:
    """The proxy the replica-set scenarios use, against a wire-protocol server (the embedded
    engine's): a cut mid-reply reaches PyMongo as a transient error, and it reconnects."""
    from mongoeco.wire import AsyncMongoEcoProxyServer

    async def go() -> None:
        async with AsyncMongoEcoProxyServer() as server:
            addr = server.address
            async with TcpProxy(addr.host, addr.port) as proxy:
                uri = proxied_mongo_uri(f"{addr.uri}&replicaSet=rs0", proxy.port)
                assert "replicaSet" not in uri and "directConnection=true" in uri
                client: Any = pymongo.AsyncMongoClient(
                    uri, serverSelectionTimeoutMS=500, retryReads=False
                )
                try:
                    coll = client.db.c
                    await coll.insert_many([{"_id": i, "pad": "x" * 200} for i in range(500)])
                    proxy.outage_after(20_000, 0.8)
                    seen: list[Any] = []

                    async def read_all() -> None:
                        async for doc in coll.find({}).batch_size(50):
                            seen.append(doc["_id"])

                    with pytest.raises(pymongo.errors.PyMongoError) as caught:
                        await read_all()
                    assert classify(caught.value) is TransientError, repr(caught.value)
                    assert 0 < len(seen) < 500 and proxy.cuts == 1
                    with pytest.raises(pymongo.errors.PyMongoError) as refused:
                        await coll.count_documents({})  # still down
                    assert classify(refused.value) is TransientError
                    await asyncio.sleep(1.0)
                    assert await coll.count_documents({}) == 500  # back
                finally:
                    await client.close()

    run(go())


def test_health_reports_what_is_true(
    mongo_url: str,
    pg_url: str,
    mongo_db_name: str,
    faults: Faults,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``/health``: starting (503) before the first checkpoint, ok once warp runs, unhealthy
    while it retries past warp.health_retry_seconds or when its event loop stalls, ok again
    once it recovers; ``/live`` stays 200 while starting."""
    import json
    import threading
    import time
    import urllib.error
    import urllib.request

    from cartridge_dagster.observability import HealthState, MetricsServer
    from cartridge_dagster.warp.runner import RunnerHealth

    monkeypatch.setattr(RunnerHealth, "LOOP_STALL_SECONDS", 1.0)
    settings = warp_settings(
        mongo_url,
        pg_url,
        mongo_db_name,
        warp={"health_retry_seconds": 1.0, "health_stall_seconds": 30.0},
    )

    def get(base: str, path: str) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{base}{path}", timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    async def go() -> None:
        await seed_collections(mongo_url, mongo_db_name, {"items": 30})
        health = HealthState()
        runner = WarpRunner(settings, settings.schemas[0], max_retries=100, max_backoff=0.3)
        health.watch("warp/shop", runner.health.probe)
        with MetricsServer(0, health=health) as server:
            base = f"http://127.0.0.1:{server.port}"
            code, body = await asyncio.to_thread(get, base, "/health")
            assert code == 503 and body["status"] == "starting", body
            assert (await asyncio.to_thread(get, base, "/live"))[0] == 200
            task = asyncio.create_task(runner.run())
            await until_streaming(runner, task)
            code, body = await asyncio.to_thread(get, base, "/health")
            assert code == 200 and body["status"] == "ok", body

            faults.stream_forever = True  # the source goes away: warp retries
            for _ in range(100):
                code, body = await asyncio.to_thread(get, base, "/health")
                if code == 503:
                    break
                await asyncio.sleep(0.1)
            assert code == 503 and "retrying" in body["components"]["warp/shop"]["reason"], body
            assert (await asyncio.to_thread(get, base, "/live"))[0] == 503
            faults.disarm()
            for _ in range(100):
                code, body = await asyncio.to_thread(get, base, "/health")
                if code == 200:
                    break
                await asyncio.sleep(0.1)
            assert code == 200, body

            seen: list[tuple[int, dict[str, Any]]] = []
            probe = threading.Thread(
                target=lambda: (time.sleep(1.6), seen.append(get(base, "/health")))
            )
            probe.start()
            time.sleep(2.2)  # block the event loop, as a runaway computation would
            await asyncio.to_thread(probe.join)
            assert seen and seen[0][0] == 503, seen
            assert "event loop stalled" in seen[0][1]["components"]["warp/shop"]["reason"]
            await asyncio.sleep(0.5)
            assert (await asyncio.to_thread(get, base, "/health"))[0] == 200
            await quiesce(runner, task)
            code, body = await asyncio.to_thread(get, base, "/health")
            assert code == 503 and "stopped" in body["components"]["warp/shop"]["reason"]

    run(go())
