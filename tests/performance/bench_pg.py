"""PostgreSQL → PostgreSQL: warp's snapshot and streaming rates beside the COPY ceiling and
Sling, for the same rows, in one run.

The source is a table of orders (bigint key, int, text, numeric(12,2), timestamptz, text,
jsonb; ~230 bytes as landed JSON) in one database of the bench server, the destination another
database of the same server (2 cores shared by both servers and the tools). Per round, in
this order:

- **COPY ceiling**: ``COPY (SELECT * FROM source) TO STDOUT`` piped into ``COPY … FROM STDIN`` of
  a table of the same columns (asyncpg, both ends streaming): what moving the rows costs when
  nothing is converted; the target's denominator.
- **COPY of the landed rows**: the same rows as warp lands them (``_id``, JSON document,
  version, …), built beforehand, COPYed into a table of the raw landing shape
  (``copy_records_to_table``): what the landing contract itself costs the warehouse.
- **warp snapshot, one writer**: ``WarpRunner`` in this process with
  ``warp.snapshot_writers: 1`` (key ranges in order, one warehouse connection), into a schema
  of its own, from its start (slot and publication created, exported snapshot) to its last
  batch landed. Rounds alternate which of the two warp snapshots goes first.
- **warp snapshot**: the same with ``warp.snapshot_writers`` at its default (or
  ``BENCH_PG_WRITERS``): the plan of key ranges landed by that many connections.
- **Sling**: ``sling run`` PostgreSQL → PostgreSQL, full refresh (the ``sling-linux-amd64``
  wheel's binary, called directly), launch to exit.
- **warp streaming**: with warp stopped, the source commits a backlog of row changes (updates,
  inserts, deletes; 1,000 rows per transaction); then warp starts from its checkpoint and
  catches up: changes ÷ (start → last batch landed).

``BENCH_PG_ROWS`` (200000), ``BENCH_PG_ROUNDS`` (3), ``BENCH_PG_WRITERS`` (the config's
default). Targets: snapshot ≥ 0.5 × the COPY
ceiling; streaming ≥ 20,000 row changes/s.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.pgsource import create_database, drop_database, execute, pg_settings

ROWS = int(os.environ.get("BENCH_PG_ROWS", "200000"))
ROUNDS = max(1, int(os.environ.get("BENCH_PG_ROUNDS", "3")))
WRITERS = os.environ.get("BENCH_PG_WRITERS")
TABLE = """CREATE TABLE {name} (
    id bigint PRIMARY KEY, customer_id int NOT NULL, status text NOT NULL, amount numeric(12,2),
    created_at timestamptz NOT NULL, note text, data jsonb)"""


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def seed(url: str) -> None:
    execute(
        url,
        "CREATE SCHEMA app",
        TABLE.format(name="app.orders"),
        f"""INSERT INTO app.orders SELECT g, g % 5000,
            (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4], (g % 100000) / 100.0,
            '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second',
            'note about order ' || md5(g::text),
            jsonb_build_object('items', g % 7, 'channel', 'web')
            FROM generate_series(1, {ROWS}) g""",
        "VACUUM ANALYZE app.orders",
    )


async def copy_ceiling(source: str, dest: str, table: str) -> float:
    src = await asyncpg.connect(source)
    dst = await asyncpg.connect(dest)
    try:
        await dst.execute(TABLE.format(name=table))
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)

        async def out(chunk: bytes) -> None:
            await queue.put(chunk)

        async def chunks() -> Any:
            while (chunk := await queue.get()) is not None:
                yield chunk

        async def produce() -> None:
            await src.copy_from_query("SELECT * FROM app.orders", output=out)
            await queue.put(None)

        started = time.perf_counter()
        await asyncio.gather(produce(), dst.copy_to_table(table, source=chunks()))
        return time.perf_counter() - started
    finally:
        await src.close()
        await dst.close()


async def landed_copy(source: str, dest: str, table: str) -> float:
    """COPY of the rows as landed (documents built beforehand) into the raw landing shape."""
    from cartridge_dagster.landing import RAW_COLUMNS
    from cartridge_dagster.pg_documents import SESSION_SETTINGS
    from cartridge_dagster.warp.sink import setup_jsonb_codec, setup_numeric_codec

    src = await asyncpg.connect(source, server_settings=dict(SESSION_SETTINGS))
    dst = await asyncpg.connect(dest)
    try:
        rows = await src.fetch(
            "SELECT t.id::text, row_to_json(t.*)::text FROM app.orders t ORDER BY t.id"
        )
        now = time.time()
        import datetime as dt

        ts = dt.datetime.fromtimestamp(now, dt.UTC)
        version = 1 << 70
        records = [(r[0], r[1].encode(), False, version, "snapshot", ts) for r in rows]
        columns = ", ".join(f'"{c}" {t}' for c, t in RAW_COLUMNS.items())
        await dst.execute(f"CREATE TABLE {table} ({columns})")
        await setup_jsonb_codec(dst)
        await setup_numeric_codec(dst)
        cols = list(RAW_COLUMNS)[:6]
        started = time.perf_counter()
        for i in range(0, len(records), 5000):
            async with dst.transaction():
                await dst.copy_records_to_table(table, records=records[i : i + 5000], columns=cols)
        return time.perf_counter() - started
    finally:
        await src.close()
        await dst.close()


def sling_binary() -> Path:
    try:
        import sling_linux_amd64  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(
            "the bench needs Sling: install the bench extra (pip install 'cartridge-dagster[bench]')"
        ) from None
    binary = Path(sling_linux_amd64.__file__).parent / "bin" / "sling-linux-amd64"
    if not binary.exists():
        raise SystemExit(f"no Sling binary at {binary}")
    return binary


def sling(source: str, dest: str, table: str, home: Path) -> float:
    def plain(url: str) -> str:
        return url + ("&" if "?" in url else "?") + "sslmode=disable"

    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    env.update(PGSRC=plain(source), PGDST=plain(dest), SLING_HOME_DIR=str(home))
    started = time.perf_counter()
    proc = subprocess.run(
        [
            str(sling_binary()),
            "run",
            "--src-conn",
            "PGSRC",
            "--src-stream",
            "app.orders",
            "--tgt-conn",
            "PGDST",
            "--tgt-object",
            table,
            "--mode",
            "full-refresh",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"sling failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return elapsed


async def one_writer(source: str, dest: str) -> float:
    """Seconds of warp's snapshot with one warehouse writer (into a schema of its own)."""
    from cartridge_dagster.config import BatchingConfig
    from cartridge_dagster.observability import configure_logging
    from cartridge_dagster.warp.runner import WarpRunner

    configure_logging("console", "warning")
    settings = pg_settings(
        source,
        dest,
        name="bench1",
        batching=BatchingConfig().model_dump(),
        warp={"snapshot_writers": 1},
    )
    summary = await WarpRunner(settings, settings.schemas[0], stop_when_idle=0.5).run()
    assert summary.snapshot_rows["orders"] == ROWS, summary.snapshot_rows
    return summary.busy_seconds


async def warp_round(source: str, dest: str) -> tuple[float, float, int]:
    """(snapshot seconds, streaming seconds, row changes streamed)."""
    from cartridge_dagster.observability import configure_logging
    from cartridge_dagster.warp.runner import WarpRunner

    configure_logging("console", "warning")
    from cartridge_dagster.config import BatchingConfig

    # the default batching (the test helper's is smaller)
    warp = {"snapshot_writers": int(WRITERS)} if WRITERS else {}
    settings = pg_settings(
        source, dest, name="bench", batching=BatchingConfig().model_dump(), warp=warp
    )
    runner = WarpRunner(settings, settings.schemas[0], stop_when_idle=0.5)
    summary = await runner.run()
    assert summary.snapshot_rows["orders"] == ROWS, summary.snapshot_rows
    snapshot = summary.busy_seconds
    # a backlog while warp is down: updates, inserts, deletes, 1,000 rows per transaction
    per = 1000
    updates = (ROWS // 2) // per * per
    inserts = deletes = (ROWS // 4) // per * per
    statements = [
        f"UPDATE app.orders SET amount = amount + 1, status = 'paid' "
        f"WHERE id BETWEEN {start} AND {start + per - 1}"
        for start in range(1, updates + 1, per)
    ]
    statements += [
        f"INSERT INTO app.orders SELECT g, 1, 'new', 1, now(), 'fresh', NULL "
        f"FROM generate_series({start}, {start + per - 1}) g"
        for start in range(ROWS + 1, ROWS + inserts + 1, per)
    ]
    statements += [
        f"DELETE FROM app.orders WHERE id BETWEEN {start} AND {start + per - 1}"
        for start in range(updates + 1, updates + deletes + 1, per)
    ]
    changes = updates + inserts + deletes
    await asyncio.to_thread(execute, source, *statements)
    # a long idle tail: under load the walsender may take seconds to decode its way to the
    # backlog (busy_seconds ends at the last batch landed, not counting the tail)
    again = WarpRunner(settings, settings.schemas[0], stop_when_idle=5.0)
    summary = await again.run()
    assert summary.total_applied == changes, (summary.total_applied, changes)
    return snapshot, summary.busy_seconds, changes


def main() -> int:
    server = os.environ.get("CARTRIDGE_TEST_POSTGRES_DSN")
    if not server:
        print("set CARTRIDGE_TEST_POSTGRES_DSN (make bench starts a PostgreSQL)", file=sys.stderr)
        return 2
    sling_binary()
    results: dict[str, list[float]] = {
        k: [] for k in ("ceiling", "landed", "snap1", "snap", "sling", "stream")
    }
    for r in range(ROUNDS):
        source = create_database(server, "bpsrc")
        dest = create_database(server, "bpdst")
        try:
            progress(f"round {r + 1}/{ROUNDS}: seeding {ROWS:,} rows")
            seed(source)
            results["ceiling"].append(ROWS / asyncio.run(copy_ceiling(source, dest, "ceiling")))
            results["landed"].append(ROWS / asyncio.run(landed_copy(source, dest, "landed")))
            with tempfile.TemporaryDirectory() as home:
                results["sling"].append(
                    ROWS / sling(source, dest, "public.sling_orders", Path(home))
                )
            if r % 2 == 0:
                results["snap1"].append(ROWS / asyncio.run(one_writer(source, dest)))
            snap, stream, changes = asyncio.run(warp_round(source, dest))
            if r % 2 == 1:
                results["snap1"].append(ROWS / asyncio.run(one_writer(source, dest)))
            results["snap"].append(ROWS / snap)
            results["stream"].append(changes / stream)
            progress(
                f"round {r + 1}: ceiling {results['ceiling'][-1]:,.0f}, landed COPY "
                f"{results['landed'][-1]:,.0f}, warp snapshot one writer "
                f"{results['snap1'][-1]:,.0f}, warp snapshot {results['snap'][-1]:,.0f}, "
                f"Sling {results['sling'][-1]:,.0f} rows/s; streaming {results['stream'][-1]:,.0f}"
                " changes/s"
            )
        finally:
            drop_database(server, source)
            drop_database(server, dest)
    med = {k: statistics.median(v) for k, v in results.items()}
    best = {k: max(v) for k, v in results.items()}
    per_round = [s / c for s, c in zip(results["snap"], results["ceiling"], strict=True)]
    per_round1 = [s / c for s, c in zip(results["snap1"], results["ceiling"], strict=True)]
    writers = WRITERS or "default"
    print(
        f"\nPostgreSQL → PostgreSQL, {ROWS:,} rows, {ROUNDS} rounds (median / best), "
        f"snapshot_writers {writers}, load {os.getloadavg()[0]:.1f}"
    )
    print("| measure | median | best | target |")
    print("|---|---:|---:|---|")
    for label, key in (
        ("COPY ceiling, typed table (rows/s)", "ceiling"),
        ("COPY of the landed rows, raw shape (rows/s)", "landed"),
        ("warp snapshot, one writer (rows/s)", "snap1"),
        ("warp snapshot (rows/s)", "snap"),
        ("Sling full refresh (rows/s)", "sling"),
        ("warp streaming (row changes/s)", "stream"),
    ):
        target = "≥ 20,000" if key == "stream" else ""
        print(f"| {label} | {med[key]:,.0f} | {best[key]:,.0f} | {target} |")
    print(
        f"| warp snapshot ÷ COPY ceiling (median of rounds) | "
        f"{statistics.median(per_round):.2f} | {max(per_round):.2f} | ≥ 0.5 |"
    )
    print(
        f"| warp snapshot, one writer ÷ COPY ceiling | "
        f"{statistics.median(per_round1):.2f} | {max(per_round1):.2f} | |"
    )
    print(f"| warp snapshot ÷ COPY of the landed rows | {med['snap'] / med['landed']:.2f} | | |")
    print(f"| warp snapshot ÷ Sling | {med['snap'] / med['sling']:.2f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
