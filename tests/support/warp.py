"""Helpers for warp tests: settings, the oracle (PostgreSQL equals the source), checkpoints."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

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
    state_dir: str = ".cartridge",
) -> CartridgeSettings:
    spec: dict[str, Any] = {"name": SCHEMA, "source_database": db, "target_schema": "raw_shop"}
    spec.update(schema or {})
    spec.setdefault("batching", {})
    spec["batching"] = {"max_batch_size": 200, "max_batch_seconds": 0.2, **(batching or {})}
    spec["warp"] = {"metrics_port": 0, "idle_checkpoint_seconds": 0.5, **(warp or {})}
    return settings_from_mapping(
        {
            "source": {"connection_string": mongo_url},
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
