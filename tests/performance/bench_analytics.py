"""Profiling rate of raw tables, against baselines measured on the same table in the same run.

Run: ``python -m tests.performance.bench_analytics`` (``make bench`` runs it) with
``CARTRIDGE_TEST_POSTGRES_DSN`` pointing at a server (else the local test server is started).
Options through the environment: ``BENCH_DOCS`` (default 20000 documents per collection),
``BENCH_REPEAT`` (default 3; the best is reported).

Rows, per demo collection (orders and events: nested objects, arrays, mixed shapes):

- ``B_scan``: ``count(*)`` over the live rows (a sequential scan: the floor of any profile);
- ``B_pull``: every ``document`` fetched into Python and parsed (what profiling in Python would
  cost before computing anything);
- ``B_python``: ``B_pull`` plus the least a Python profiler does (walk every leaf, tally values
  by path and type, one distinct count and one sort per path);
- ``B_walk``: the recursive walk alone (every leaf of every document, typed), in SQL;
- ``profile``: :func:`profile_relation` (table stats, activity, every column's statistics, top
  values and histograms, written to ``cartridge_analytics``).

The issue sets no rate target for profiling (it asks for set-based SQL, never pulling tables into
Python); the ratios show where the time goes. Column statistics read at most
``MAX_PROFILE_ROWS`` sampled rows per table, so the cost per table is bounded.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from cartridge_dagster.analytics.profile import Relation, _leaves_sql, _raw_base, profile_relation
from cartridge_dagster.analytics.store import ensure_analytics_schema
from cartridge_dagster.demo.seed import DemoGenerator, DemoSizes
from cartridge_dagster.documents import canonical_id, document_json
from cartridge_dagster.identifiers import qualified
from cartridge_dagster.landing import raw_table_ddl
from cartridge_dagster.observability import configure_logging


def _server_url() -> str:
    dsn = os.environ.get("CARTRIDGE_TEST_POSTGRES_DSN")
    if dsn:
        return dsn
    from cartridge_dagster.services.postgres import LocalPostgres
    from tests.support.services import REPO

    status = LocalPostgres(
        REPO / ".cartridge" / "test-postgres", preferred_port=None, durable=False
    ).up()
    assert status.url is not None
    return status.url


async def _best(fn: Callable[[], Awaitable[Any]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - started)
    return best


async def _land(conn: asyncpg.Connection, collection: str, docs: list[dict[str, Any]]) -> None:
    for stmt in raw_table_ddl("raw_bench", collection):
        await conn.execute(stmt)
    now = dt.datetime.now(dt.UTC)
    records = [
        (
            canonical_id(d["_id"]),
            document_json(d).decode(),
            False,
            i + 1,
            "insert" if i % 3 else "update",
            now - dt.timedelta(seconds=i % 600, milliseconds=300),
            now - dt.timedelta(seconds=i % 600),
        )
        for i, d in enumerate(docs)
    ]
    await conn.copy_records_to_table(
        collection,
        schema_name="raw_bench",
        records=records,
        columns=[
            "_id",
            "document",
            "_cartridge_deleted",
            "_cartridge_version",
            "_cartridge_op",
            "_cartridge_source_ts",
            "_cartridge_synced_at",
        ],
    )
    await conn.execute(f"ANALYZE {qualified('raw_bench', collection)}")


async def _bench(url: str, n: int, repeat: int) -> list[tuple[str, str, float]]:
    gen = DemoGenerator(DemoSizes(customers=n, products=50, orders=n, events=n), seed=42)
    docs = {name: list(items) for name, _count, items in gen.collections()}
    conn = await asyncpg.connect(url)
    rows: list[tuple[str, str, float]] = []
    try:
        await ensure_analytics_schema(conn)
        for collection in ("orders", "events"):
            await _land(conn, collection, docs[collection])
            rel = Relation("bench", "raw", collection, "raw_bench", collection)
            t = rel.qualified

            async def scan(t: str = t) -> None:
                await conn.fetchval(f'SELECT count(*) FROM {t} WHERE NOT "_cartridge_deleted"')

            async def pull(t: str = t) -> None:
                for r in await conn.fetch(f'SELECT "document"::text AS d FROM {t}'):
                    json.loads(r["d"])

            async def python(t: str = t) -> None:
                # the least a Python profiler does: pull, parse, walk every leaf, tally by path
                stats: dict[tuple[str, str], list[Any]] = {}

                def visit(value: Any, path: str) -> None:
                    if isinstance(value, dict):
                        for k, v in value.items():
                            visit(v, f"{path}.{k}" if path else k)
                        return
                    if isinstance(value, list):
                        for v in value:
                            visit(v, path + "[]")
                        return
                    stats.setdefault((path, type(value).__name__), []).append(value)

                for r in await conn.fetch(f'SELECT "document"::text AS d FROM {t}'):
                    visit(json.loads(r["d"]), "")
                for values in stats.values():
                    len(set(map(str, values)))
                    sorted(v for v in values if isinstance(v, int | float))

            async def walk(rel: Relation = rel) -> None:
                async with conn.transaction():
                    await conn.execute(
                        _leaves_sql(_raw_base(rel, 1.0), 8),
                        r"^\d{4}-\d{2}-\d{2}",
                    )
                    await conn.fetchval('SELECT count(*) FROM "_cartridge_leaves"')

            async def profile(rel: Relation = rel) -> None:
                await profile_relation(conn, rel, f"bench-{uuid.uuid4().hex[:8]}")

            for name, fn in (
                ("B_scan", scan),
                ("B_pull", pull),
                ("B_python", python),
                ("B_walk", walk),
            ):
                rows.append((collection, name, n / await _best(fn, repeat)))
            rows.append((collection, "profile", n / await _best(profile, repeat)))
    finally:
        await conn.execute("DROP SCHEMA IF EXISTS raw_bench CASCADE")
        await conn.close()
    return rows


def main() -> int:
    configure_logging("console", "warning")
    n = int(os.environ.get("BENCH_DOCS", "20000"))
    repeat = int(os.environ.get("BENCH_REPEAT", "3"))
    server = _server_url()
    name = f"bench_{uuid.uuid4().hex[:8]}"

    async def run() -> list[tuple[str, str, float]]:
        admin = await asyncpg.connect(server)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        try:
            return await _bench(server.rpartition("/")[0] + "/" + name, n, repeat)
        finally:
            admin = await asyncpg.connect(server)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

    rows = asyncio.run(run())
    print(f"raw-table profiling, {n} documents per collection (best of {repeat})")
    header = f"{'collection':<10} {'measure':<8} {'docs/s':>12} {'× B_python':>11} {'× B_walk':>9}"
    print(header)
    print("-" * len(header))
    for collection in ("orders", "events"):
        by = {m: r for c, m, r in rows if c == collection}
        for measure, rate in by.items():
            print(
                f"{collection:<10} {measure:<8} {rate:>12,.0f} {rate / by['B_python']:>11.2f} "
                f"{rate / by['B_walk']:>9.2f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
