"""A first start reads its first snapshot pages before it takes the fence (``warp.readahead``).

What must hold: a first start copies every document once, its first reads logged before the
fence; a restart drops what it read ahead (the checkpoint's plan goes on) and leaves no trace
of it (the value policies' counts of pages that did not land are not counted); a warehouse
that cannot be reached stops the run with nothing written, the pages read ahead dropped.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.errors import ConnectionFailed
from cartridge_dagster.landing import CONTROL_SCHEMA
from tests.conftest import run
from tests.support.warp import SCHEMA, assert_oracle, run_warp, warp_settings

pytestmark = pytest.mark.integration

COLLS = ["alpha", "beta"]


async def seed(url: str, db: str) -> None:
    async with mongo_session(url) as conn:
        database = conn.database(db)
        for name in COLLS:
            # a NUL in each string: the value policy strips it and counts it (per document)
            await database[name].insert_many(
                [{"_id": i, "name": f"n\x00{i}", "n": i} for i in range(120)]
            )


async def policy_total(pg_url: str) -> int:
    conn = await asyncpg.connect(pg_url)
    try:
        value = await conn.fetchval(
            f"SELECT coalesce(sum(n), 0) FROM {CONTROL_SCHEMA}.policy_counts "
            "WHERE schema_name = $1",
            SCHEMA,
        )
    finally:
        await conn.close()
    return int(value)


def _events(logs: list[dict[str, Any]]) -> list[str]:
    return [str(e["event"]) for e in logs]


def test_first_start_reads_before_the_fence_and_copies_once(
    source: str, pg_url: str, mongo_db_name: str
) -> None:
    settings = warp_settings(source, pg_url, mongo_db_name)

    async def go() -> None:
        await seed(source, mongo_db_name)
        with capture_logs() as logs:
            summary = await run_warp(settings)
        events = _events(logs)
        fence = events.index("warp.fence.acquired")
        ahead = [
            e["table"] for e in logs if e["event"] == "warp.snapshot.start" and e.get("read_ahead")
        ]
        assert sorted(ahead) == COLLS  # both copies start at once (parallel collections: 4)
        assert max(i for i, e in enumerate(events) if e == "warp.snapshot.start") < fence
        assert "warp.snapshot.read_ahead_dropped" not in events
        assert dict(summary.snapshot_rows) == dict.fromkeys(COLLS, 120)
        await assert_oracle(settings, COLLS)
        assert await policy_total(pg_url) == 240  # one stripped NUL per document, once

    run(go())


def test_restart_drops_what_it_read_ahead(source: str, pg_url: str, mongo_db_name: str) -> None:
    settings = warp_settings(source, pg_url, mongo_db_name)

    async def go() -> None:
        await seed(source, mongo_db_name)
        first = await run_warp(settings)
        assert sum(first.snapshot_rows.values()) == 240
        counted = await policy_total(pg_url)
        async with mongo_session(source) as conn:  # one change to stream, without a NUL
            await conn.database(mongo_db_name)["alpha"].insert_one({"_id": 1000, "name": "p"})
        with capture_logs() as logs:
            second = await run_warp(settings)
        dropped = [e for e in logs if e["event"] == "warp.snapshot.read_ahead_dropped"]
        assert [e["reason"] for e in dropped] == ["the checkpoint holds a plan"]
        assert not second.snapshot_rows, "the second run must not snapshot again"
        assert second.total_applied == 1
        # the pages read ahead were converted (their NULs counted) but never landed: the
        # streamed batch, which carries the counts taken since the last one, adds none
        assert await policy_total(pg_url) == counted
        await assert_oracle(settings, COLLS)

    run(go())


def test_a_warehouse_that_cannot_be_reached_writes_nothing(
    tmp_path: Any, pg_url: str, mongo_db_name: str
) -> None:
    source = f"mongoeco://{tmp_path / 'source.sqlite'}"
    unreachable = "postgresql://nobody@127.0.0.1:9/nowhere"
    settings = warp_settings(source, unreachable, mongo_db_name)

    async def go() -> None:
        await seed(source, mongo_db_name)
        with capture_logs() as logs, pytest.raises(ConnectionFailed):
            await run_warp(settings, max_retries=2, max_backoff=0.1)
        events = _events(logs)
        assert "warp.snapshot.start" in events  # it did read ahead
        dropped = [e for e in logs if e["event"] == "warp.snapshot.read_ahead_dropped"]
        assert [e["reason"] for e in dropped] == ["the warehouse or the fence failed"]
        assert "warp.batch" not in events

    run(go())
