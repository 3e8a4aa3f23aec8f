"""Helpers for warp tests: settings, the oracle (PostgreSQL equals the source), checkpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson

from cartridge_dagster.config import CartridgeSettings, settings_from_mapping
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.documents import ValuePolicy, canonical_hash, canonical_id, document_json
from cartridge_dagster.identifiers import qualified
from cartridge_dagster.landing import CONTROL_SCHEMA, raw_table_name
from cartridge_dagster.warp.runner import RunSummary, WarpRunner

SCHEMA = "shop"


def warp_settings(
    mongo_url: str,
    pg_url: str,
    db: str,
    *,
    schema: dict[str, Any] | None = None,
    batching: dict[str, Any] | None = None,
    warp: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    state_dir: str = ".cartridge",
) -> CartridgeSettings:
    spec: dict[str, Any] = {"name": SCHEMA, "source_database": db, "target_schema": "raw_shop"}
    spec.update(schema or {})
    spec.setdefault("batching", {})
    spec["batching"] = {"max_batch_size": 200, "max_batch_seconds": 0.2, **(batching or {})}
    spec["warp"] = {"metrics_port": 0, "idle_checkpoint_seconds": 0.5, **(warp or {})}
    return settings_from_mapping(
        {
            "source": {"connection_string": mongo_url, **(source or {})},
            "destination": {"connection_string": pg_url},
            "state_dir": state_dir,
            "schemas": [spec],
        }
    )


async def run_warp(settings: CartridgeSettings, *, idle: float = 0.6, **kwargs: Any) -> RunSummary:
    runner = WarpRunner(settings, settings.schemas[0], stop_when_idle=idle, **kwargs)
    return await asyncio.wait_for(runner.run(), timeout=120)


async def source_hashes(
    mongo_url: str, db: str, collection: str, policy: ValuePolicy | None = None
) -> dict[str, str]:
    out: dict[str, str] = {}
    async with mongo_session(mongo_url) as conn:
        async for doc in conn.database(db)[collection].find({}):
            out[canonical_id(doc["_id"])] = canonical_hash(document_json(doc, policy))
    return out


async def target_hashes(pg_url: str, raw_schema: str, collection: str) -> dict[str, str]:
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            f"SELECT _id, document::text AS doc FROM "
            f"{qualified(raw_schema, raw_table_name(collection))} WHERE NOT _cartridge_deleted"
        )
    finally:
        await conn.close()
    return {r["_id"]: canonical_hash(r["doc"]) for r in rows}


async def assert_oracle(
    settings: CartridgeSettings,
    collections: list[str],
    *,
    dead: dict[str, set[str]] | None = None,
) -> None:
    """After quiescing: same live _ids, same canonical hash per _id, except dead letters."""
    schema = settings.schemas[0]
    pg_url = settings.destination_url()
    dead = dead or {}
    for coll in collections:
        src = await source_hashes(settings.source.url(), schema.source_database, coll)
        dst = await target_hashes(pg_url, schema.raw_schema, coll)
        expected_missing = dead.get(coll, set())
        for key in expected_missing:
            src.pop(key, None)
        assert set(src) == set(dst), (
            f"{coll}: only in source {sorted(set(src) - set(dst))[:5]}, "
            f"only in target {sorted(set(dst) - set(src))[:5]}"
        )
        diff = [k for k in src if src[k] != dst[k]]
        assert not diff, f"{coll}: {len(diff)} documents differ, e.g. {diff[:3]}"
    letters = await dead_letters(pg_url)
    got: dict[str, set[str]] = {}
    for r in letters:
        got.setdefault(r["collection"], set()).add(r["document_id"])
    assert got == {k: v for k, v in dead.items() if v}, f"dead letters {got} != {dead}"


async def dead_letters(pg_url: str, status: str = "pending") -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('cartridge_warp.dead_letters')")
        if exists is None:
            return []
        return list(
            await conn.fetch(
                f"SELECT * FROM {CONTROL_SCHEMA}.dead_letters WHERE status = $1 ORDER BY id",
                status,
            )
        )
    finally:
        await conn.close()


async def checkpoint_row(pg_url: str, schema: str = SCHEMA) -> asyncpg.Record | None:
    conn = await asyncpg.connect(pg_url)
    try:
        return await conn.fetchrow(
            f"SELECT * FROM {CONTROL_SCHEMA}.checkpoints WHERE schema_name = $1", schema
        )
    finally:
        await conn.close()


async def assert_checkpoint_at_end(settings: CartridgeSettings) -> None:
    """Nothing in the source after the stored position (the checkpoint is the last event)."""
    schema = settings.schemas[0]
    row = await checkpoint_row(settings.destination_url(), schema.name)
    assert row is not None and row["resume_token"] is not None
    token = orjson.loads(row["resume_token"])
    async with mongo_session(settings.source.url()) as conn:
        stream = conn.watch(schema.source_database, [], resume_after=token, max_await_time_ms=200)
        try:
            for _ in range(3):
                event = await stream.try_next()
                assert event is None or event["operationType"] not in (
                    "insert",
                    "update",
                    "replace",
                    "delete",
                ), f"unapplied event after the checkpoint: {event['operationType']}"
        finally:
            await stream.close()


async def background(
    settings: CartridgeSettings, **kwargs: Any
) -> tuple[WarpRunner, asyncio.Task[Any]]:
    runner = WarpRunner(settings, settings.schemas[0], **kwargs)
    task = asyncio.create_task(runner.run())
    return runner, task


async def until_streaming(runner: WarpRunner, task: asyncio.Task[Any]) -> None:
    """Wait until the snapshot is done and the change stream is being read."""
    for _ in range(600):
        if task.done():
            task.result()
        if runner.source is not None and runner.source.idle_since is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("warp never started streaming")


async def quiesce(runner: WarpRunner, task: asyncio.Task[Any], idle: float = 0.8) -> None:
    """Wait until the runner has been idle for ``idle`` seconds, then stop it."""
    deadline = asyncio.get_running_loop().time() + 90
    while asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
        if task.done():
            task.result()
        src = runner.source
        if (
            src is not None
            and src.idle_since is not None
            and asyncio.get_running_loop().time() - src.idle_since >= idle
            and not runner._writer_busy
        ):
            break
    runner.stop.set()
    await asyncio.wait_for(task, 30)
