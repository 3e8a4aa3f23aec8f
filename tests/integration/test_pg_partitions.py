"""Partitioned tables in a PostgreSQL source: one collection each, never their partitions.

A partitioned table's rows live in its partitions; the scan lists the partitioned table alone
(its row count summed over its partitions), warp copies it through the parent and streams its
changes under the parent's name (the publication publishes through partition roots), and no
raw table is made for a partition. The landed rows are checked with the cast-back oracle.

The snapshot of a table with ``history: true`` lands through the staged merge: it reads the
source's binary COPY rows back into changes (the path a COPY that the warehouse refuses takes).
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from cartridge_dagster.init.scan import scan_postgres
from cartridge_dagster.warp.runner import WarpRunner
from tests.conftest import run
from tests.support.pgsource import cast_back_oracle, execute, pg_settings

pytestmark = [pytest.mark.integration]

PARTITIONED = (
    "CREATE SCHEMA app",
    # a one-column key (the snapshot's COPY path), partitioned by range of it
    """CREATE TABLE app.events (id bigint PRIMARY KEY, kind text NOT NULL, at timestamptz,
        amount numeric(12, 2), payload jsonb) PARTITION BY RANGE (id)""",
    "CREATE TABLE app.events_low PARTITION OF app.events FOR VALUES FROM (MINVALUE) TO (1000)",
    "CREATE TABLE app.events_high PARTITION OF app.events FOR VALUES FROM (1000) TO (2000)",
    # a partition that is itself partitioned
    """CREATE TABLE app.events_rest PARTITION OF app.events DEFAULT
        PARTITION BY RANGE (id)""",
    "CREATE TABLE app.events_rest_a PARTITION OF app.events_rest FOR VALUES FROM (2000) TO (2300)",
    "CREATE TABLE app.events_rest_other PARTITION OF app.events_rest DEFAULT",
    # a composite key, partitioned by list of its first column: updates move rows across
    """CREATE TABLE app.orders (region text, id int, note text, PRIMARY KEY (region, id))
        PARTITION BY LIST (region)""",
    "CREATE TABLE app.orders_eu PARTITION OF app.orders FOR VALUES IN ('EU')",
    "CREATE TABLE app.orders_us PARTITION OF app.orders FOR VALUES IN ('US')",
    "CREATE TABLE app.customers (id int PRIMARY KEY, name text)",
    """INSERT INTO app.events SELECT g, CASE WHEN g % 3 = 0 THEN 'a' ELSE 'b' END,
        '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 hour', g / 100.0,
        jsonb_build_object('g', g) FROM generate_series(1, 2500, 5) g""",
    """INSERT INTO app.orders SELECT CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'US' END, g, 'n' || g
        FROM generate_series(1, 40) g""",
    "INSERT INTO app.customers SELECT g, 'c' || g FROM generate_series(1, 10) g",
    "ANALYZE",
)
EVENTS = 500  # rows of app.events: 1, 6, …, 2496


def test_the_scan_lists_a_partitioned_table_once(pg_source_url: str) -> None:
    execute(pg_source_url, *PARTITIONED)
    schema = pg_settings(pg_source_url, pg_source_url).schemas[0]

    async def go() -> None:
        conn = await asyncpg.connect(pg_source_url)
        try:
            catalog = await scan_postgres(conn, schema, sample=False)
            sampled = await scan_postgres(conn, schema)
        finally:
            await conn.close()
        assert sorted(catalog.collections) == ["customers", "events", "orders"]
        events = catalog.collections["events"]
        # the planner's estimate, summed over the partitions (the parent holds no rows)
        assert events["documents_total"] == EVENTS
        assert events["primary_key"] == ["id"]
        assert sorted(events["fields"]) == ["amount", "at", "id", "kind", "payload"]
        assert catalog.collections["orders"]["primary_key"] == ["region", "id"]
        assert catalog.collections["orders"]["documents_total"] == 40
        # the sample reads every partition through the parent
        assert sorted(sampled.collections) == ["customers", "events", "orders"]
        assert sampled.collections["events"]["documents_sampled"] == EVENTS
        assert sampled.collections["orders"]["documents_sampled"] == 40

    run(go())


def test_warp_lands_partitioned_tables_under_their_parent(pg_source_url: str, pg_url: str) -> None:
    execute(pg_source_url, *PARTITIONED)
    # small ranges: the copy of app.events resumes many times, across partitions
    settings = pg_settings(pg_source_url, pg_url, batching={"snapshot_chunk_size": 64})
    schema = settings.schemas[0]

    async def go() -> None:
        runner = WarpRunner(settings, schema, stop_when_idle=1.5)
        summary = await asyncio.wait_for(runner.run(), 120)
        assert summary.snapshot_rows == {"events": EVENTS, "orders": 40, "customers": 10}
        execute(
            pg_source_url,
            # inserts routed to each partition, through the parent and straight into one
            """INSERT INTO app.events SELECT g, 'a', now(), 1, NULL
                FROM generate_series(2, 2502, 100) g""",
            "INSERT INTO app.events_high VALUES (1003, 'b', now(), 2, '{\"direct\": true}')",
            "UPDATE app.events SET amount = amount + 1, payload = '[1]' WHERE id % 10 = 1",
            "DELETE FROM app.events WHERE id BETWEEN 900 AND 1100",
            # a key change that moves rows to the other partition
            "UPDATE app.orders SET region = 'EU', note = 'moved' WHERE region = 'US' AND id < 10",
            "DELETE FROM app.orders WHERE id = 40",
            # a truncate of the partitioned table reaches every partition's rows
            "TRUNCATE app.customers",
            "INSERT INTO app.customers VALUES (99, 'after')",
        )
        again = WarpRunner(settings, schema, stop_when_idle=1.5)
        streamed = await asyncio.wait_for(again.run(), 120)
        assert set(streamed.applied) <= {"events", "orders", "customers"}
        for table in ("events", "orders", "customers"):
            result = await cast_back_oracle(pg_source_url, "app", table, pg_url, schema.raw_schema)
            assert result.ok, str(result)
        dst = await asyncpg.connect(pg_url)
        src = await asyncpg.connect(pg_source_url)
        try:
            raw = await dst.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
                "ORDER BY 1",
                schema.raw_schema,
            )
            assert [r["table_name"] for r in raw] == ["customers", "events", "orders"]
            moved = await dst.fetch(
                "SELECT _id, _cartridge_deleted AS gone, document->>'note' AS note "
                "FROM raw_shop.orders WHERE _id IN ('[\"US\",1]', '[\"EU\",1]') ORDER BY _id"
            )
            assert [(r["_id"], r["gone"], r["note"]) for r in moved] == [
                ('["EU",1]', False, "moved"),
                ('["US",1]', True, None),
            ]
            published = await src.fetch(
                "SELECT tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
                f"cartridge_{schema.name}",
            )
            assert [r["tablename"] for r in published] == ["customers", "events", "orders"]
        finally:
            await dst.close()
            await src.close()

    run(go())


def test_a_history_table_snapshots_through_the_merge(pg_source_url: str, pg_url: str) -> None:
    execute(pg_source_url, *PARTITIONED)
    settings = pg_settings(
        pg_source_url,
        pg_url,
        batching={"snapshot_chunk_size": 100},
        schema={"tables": {"events": {"history": True}}},
    )
    schema = settings.schemas[0]

    async def go() -> None:
        summary = await asyncio.wait_for(WarpRunner(settings, schema, stop_when_idle=1).run(), 120)
        assert summary.snapshot_rows["events"] == EVENTS
        result = await cast_back_oracle(pg_source_url, "app", "events", pg_url, schema.raw_schema)
        assert result.ok, str(result)
        dst = await asyncpg.connect(pg_url)
        try:
            history = await dst.fetchval(
                "SELECT count(*) FROM raw_shop.events__history WHERE _cartridge_op = 'snapshot'"
            )
            ts = await dst.fetchval(
                "SELECT count(*) FROM raw_shop.events WHERE _cartridge_source_ts IS NULL "
                "OR _cartridge_source_ts < now() - interval '1 hour' "
                "OR _cartridge_version <= 0"
            )
        finally:
            await dst.close()
        assert history == EVENTS
        assert ts == 0

    run(go())
