"""warp with a PostgreSQL source: every kind of change, TOAST, tables and columns that come and
go, keys, dead letters, lost history, and the commands that manage the slot.

Each test writes to a real source database (separate connections, as applications do), runs
warp until it is idle, and checks the raw tables with the cast-back oracle (PostgreSQL's input
functions read the landed JSON back into the source's types; nothing of Cartridge's converter).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
import yaml
from prometheus_client import REGISTRY

from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.errors import ResumeTokenLost
from cartridge_dagster.warp.admin import replay_dead_letters
from cartridge_dagster.warp.pg_source import PgSource
from cartridge_dagster.warp.runner import RunSummary, WarpRunner
from tests.conftest import run
from tests.support.cli import cartridge
from tests.support.pgsource import cast_back_oracle, execute, pg_settings

pytestmark = [pytest.mark.integration]

NS = 'App "Ünï"'  # a hostile PostgreSQL schema name
QNS = '"App ""Ünï"""'
LONG = "l" * 63
ORDERS = '"Orders ""x"""'  # the table 'Orders "x"', quoted


async def until_snapshot_done(pg_url: str, timeout: float = 60) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        for _ in range(int(timeout / 0.05)):
            if await conn.fetchval("SELECT to_regclass('cartridge_warp.checkpoints')"):
                raw = await conn.fetchval("SELECT snapshot FROM cartridge_warp.checkpoints")
                plan = orjson.loads(raw) if raw else {}
                if plan and all(v["done"] for v in plan.values()):
                    return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    raise AssertionError("the snapshot did not finish")


async def warp_until_idle(
    settings: CartridgeSettings,
    during: Callable[[], Awaitable[None]] | None = None,
    *,
    idle: float = 1.5,
) -> tuple[RunSummary, WarpRunner]:
    """Run warp; once its snapshot is done run ``during`` (the writers); stop when idle."""
    runner = WarpRunner(settings, settings.schemas[0], stop_when_idle=idle)
    task = asyncio.create_task(runner.run())
    if during is not None:
        await until_snapshot_done(settings.destination_url())
        await during()
    summary = await asyncio.wait_for(task, 120)
    return summary, runner


async def oracle(settings: CartridgeSettings, table: str, **kwargs: Any) -> None:
    schema = settings.schemas[0]
    result = await cast_back_oracle(
        settings.source.url(),
        schema.source_database,
        table,
        settings.destination_url(),
        schema.raw_schema,
        **kwargs,
    )
    assert result.ok, str(result)
    assert result.source_rows > 0


def test_every_kind_of_change_lands(pg_source_url: str, pg_url: str) -> None:
    execute(
        pg_source_url,
        f"CREATE SCHEMA {QNS}",
        f"""CREATE TABLE {QNS}.{ORDERS} (
            region text, id bigint, total numeric(38,0), amount numeric(29,2),
            created timestamptz, note text, data jsonb, PRIMARY KEY (region, id))""",
        f'CREATE TABLE {QNS}."{LONG}" (k uuid PRIMARY KEY, v text)',
        f"""INSERT INTO {QNS}.{ORDERS} SELECT CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'ÜS' END,
            g, 12345678901234567890123456789 + g, g * 1.25,
            '2024-03-10 02:30:00-08'::timestamptz + g * interval '1 minute',
            'n' || g, jsonb_build_object('g', g) FROM generate_series(1, 300) g""",
        f"""INSERT INTO {QNS}."{LONG}" SELECT md5(g::text)::uuid, 'v' || g
            FROM generate_series(1, 20) g""",
    )
    # small chunks: the copy resumes after a composite key (text and bigint) many times
    settings = pg_settings(pg_source_url, pg_url, NS, batching={"snapshot_chunk_size": 7})
    orders = f"{QNS}.{ORDERS}"

    async def writers() -> None:
        execute(
            pg_source_url,
            # one transaction larger than a batch (500): it lands in parts, resumes whole
            f"""INSERT INTO {orders} SELECT 'EU', g, g, g, now(), 'big', NULL
                FROM generate_series(1000, 2199) g""",
            f"UPDATE {orders} SET note = 'updated', amount = amount + 0.01 WHERE id <= 100",
            f"DELETE FROM {orders} WHERE id BETWEEN 101 AND 150",
            # a key change: the old key goes, the new one lands
            f"UPDATE {orders} SET region = 'APAC' WHERE id BETWEEN 151 AND 160",
            f"""BEGIN; DELETE FROM {orders} WHERE region = 'ÜS' AND id = 161;
                INSERT INTO {orders} VALUES ('ÜS', 161, 1, 1, now(), 'again', '[1]'); COMMIT""",
            # truncate, then rows after it in the same transaction
            f"""BEGIN; INSERT INTO {QNS}."{LONG}" VALUES (gen_random_uuid(), 'gone');
                TRUNCATE {QNS}."{LONG}";
                INSERT INTO {QNS}."{LONG}" VALUES ('00000000-0000-4000-8000-000000000001', 'kept');
                COMMIT""",
        )

    async def go() -> None:
        summary, runner = await warp_until_idle(settings, writers)
        assert summary.snapshot_rows == {'Orders "x"': 300, LONG: 20}
        source = runner.source
        assert isinstance(source, PgSource)
        # every chunk (300 / 7 and 20 / 7) read in the slot's exported snapshot, and the
        # plan of the one-column key's ranges (several snapshot_writers) too
        assert source.snapshot_imports == 43 + 3 + 1
        await oracle(settings, 'Orders "x"')
        await oracle(settings, LONG)
        dst = await asyncpg.connect(pg_url)
        try:
            row = await dst.fetchrow(
                f"SELECT document, _cartridge_op FROM raw_shop.{ORDERS} WHERE _id = $1",
                '["APAC",151]',
            )
            assert row is not None and row["_cartridge_op"] == "update"
            gone = await dst.fetchval(
                f"SELECT _cartridge_deleted FROM raw_shop.{ORDERS} WHERE _id = $1",
                '["ÜS",151]',
            )
            assert gone is True
            truncated = await dst.fetch(
                f'SELECT _cartridge_op, count(*) AS n FROM raw_shop."{LONG}" GROUP BY 1 ORDER BY 1'
            )
            assert {r["_cartridge_op"]: r["n"] for r in truncated} == {"insert": 1, "truncate": 21}
            cp = await dst.fetchrow("SELECT resume_token, version FROM cartridge_warp.checkpoints")
        finally:
            await dst.close()
        src = await asyncpg.connect(pg_source_url)
        try:
            slot = await src.fetchrow(
                "SELECT confirmed_flush_lsn::text AS lsn FROM pg_replication_slots "
                "WHERE slot_name = $1",
                settings.schemas[0].warp.slot_name,
            )
        finally:
            await src.close()
        token = orjson.loads(cp["resume_token"])
        assert slot is not None
        # the slot's lag, as Prometheus serves it
        assert REGISTRY.get_sample_value("cartridge_warp_slot_lag_bytes", {"schema": "shop"}) >= 0
        assert REGISTRY.get_sample_value("cartridge_warp_slot_retained_bytes", {"schema": "shop"})
        # the slot was confirmed up to what the warehouse holds (or further, while idle)
        assert _lsn(slot["lsn"]) >= _lsn(token["lsn"])
        assert int(cp["version"]) >> 32 > 0

    run(go())


def _lsn(text: str) -> int:
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def test_unchanged_toasted_values_are_kept(pg_source_url: str, pg_url: str) -> None:
    big = "(SELECT string_agg(md5(random()::text || s.g || x), '') FROM generate_series(1, 800) x)"
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.dflt (id int PRIMARY KEY, v int, big text)",
        "CREATE TABLE app.full (id int PRIMARY KEY, v int, big text)",
        "ALTER TABLE app.full REPLICA IDENTITY FULL",
        "CREATE TABLE app.gone (id int PRIMARY KEY, v int, big text)",
        *(
            f"INSERT INTO app.{t} SELECT s.g, 0, {big} FROM generate_series(1, 30) AS s(g)"
            for t in ("dflt", "full", "gone")
        ),
    )
    settings = pg_settings(pg_source_url, pg_url)

    async def writers() -> None:
        execute(
            pg_source_url,
            # big stays TOASTed and unchanged: pgoutput does not send it
            "UPDATE app.dflt SET v = v + 1",
            "UPDATE app.full SET v = v + 1",
            "UPDATE app.dflt SET v = v + 1 WHERE id <= 5",
            # a row updated and then deleted before warp reads it
            "BEGIN; UPDATE app.dflt SET v = 99 WHERE id = 30; DELETE FROM app.dflt WHERE id = 30;"
            " COMMIT",
            "UPDATE app.dflt SET big = 'changed' WHERE id = 6",
            # updated, then dropped before warp can read the values the updates left out
            "BEGIN; UPDATE app.gone SET v = 1; DROP TABLE app.gone; COMMIT",
        )

    async def go() -> None:
        _summary, runner = await warp_until_idle(settings, writers)
        source = runner.source
        assert isinstance(source, PgSource)
        # DEFAULT: the values were read from the source; FULL: taken from the old row
        # 30 + 5 updates of dflt, and the one of row 30, whose row was gone when read (its
        # first update too, when read after the delete committed)
        assert source.toast_lookups == 36
        assert source.toast_gone in (31, 32)  # and the 30 rows of the dropped table
        await oracle(settings, "dflt")
        await oracle(settings, "full")
        dst = await asyncpg.connect(pg_url)
        try:
            lengths = await dst.fetch(
                "SELECT _id, length(document->>'big') AS n, (document->>'v')::int AS v "
                "FROM raw_shop.dflt WHERE NOT _cartridge_deleted ORDER BY _id::int"
            )
        finally:
            await dst.close()
        assert len(lengths) == 29
        dst = await asyncpg.connect(pg_url)
        try:
            left = await dst.fetchval(
                "SELECT count(*) FILTER (WHERE NOT _cartridge_deleted) FROM raw_shop.gone"
            )
        finally:
            await dst.close()
        assert left == 0, "the dropped table's rows follow the drop policy"
        assert all(r["n"] == 25600 for r in lengths if r["_id"] != "6")
        assert [r["v"] for r in lengths[:6]] == [2, 2, 2, 2, 2, 1]

    run(go())


def test_tables_and_columns_that_come_and_go(pg_source_url: str, pg_url: str) -> None:
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.items (id int PRIMARY KEY, name text)",
        "CREATE TABLE app.doomed (id int PRIMARY KEY)",
        "CREATE TABLE app.skipped (id int PRIMARY KEY)",
        "CREATE TABLE app.old (id int PRIMARY KEY, v text)",
        "INSERT INTO app.old SELECT g, 'o' || g FROM generate_series(1, 7) g",
        "INSERT INTO app.items SELECT g, 'i' || g FROM generate_series(1, 50) g",
        "INSERT INTO app.doomed SELECT generate_series(1, 5)",
    )
    settings = pg_settings(pg_source_url, pg_url, schema={"exclude": ["skipped"]})

    async def writers() -> None:
        execute(
            pg_source_url,
            "CREATE TABLE app.later (id int PRIMARY KEY, t timestamptz DEFAULT now())",
            "INSERT INTO app.later (id) SELECT generate_series(1, 10)",
            "ALTER TABLE app.items ADD COLUMN extra int",
            "UPDATE app.items SET extra = id WHERE id <= 10",
            # rows take the default without a change of their own: warp copies the table again
            "ALTER TABLE app.items ADD COLUMN flag text NOT NULL DEFAULT 'dflt'",
            "UPDATE app.items SET flag = 'set' WHERE id = 1",
            "DROP TABLE app.doomed",
            "ALTER TABLE app.old RENAME TO moved",
            "UPDATE app.moved SET v = 'after the rename' WHERE id = 1",
            "INSERT INTO app.skipped VALUES (1)",
        )
        await asyncio.sleep(1.0)  # let warp find the new table (it looks while idle)
        execute(pg_source_url, "INSERT INTO app.later (id) SELECT generate_series(11, 15)")

    async def go() -> None:
        summary, _ = await warp_until_idle(settings, writers, idle=2.0)
        await oracle(settings, "items")
        await oracle(settings, "later")
        await oracle(settings, "moved")  # a renamed table: copied under its new name
        dst = await asyncpg.connect(pg_url)
        try:
            flags = await dst.fetch(
                "SELECT document->>'flag' AS f, count(*) AS n FROM raw_shop.items GROUP BY 1"
            )
            doomed = await dst.fetchval(
                "SELECT count(*) FILTER (WHERE NOT _cartridge_deleted) FROM raw_shop.doomed"
            )
            skipped = await dst.fetchval("SELECT to_regclass('raw_shop.skipped')")
            old_live = await dst.fetchval(
                "SELECT count(*) FILTER (WHERE NOT _cartridge_deleted) FROM raw_shop.old"
            )
        finally:
            await dst.close()
        assert {r["f"]: r["n"] for r in flags} == {"dflt": 49, "set": 1}
        assert doomed == 0
        assert old_live == 0, "the old name's rows follow the drop policy"
        assert skipped is None
        assert summary.applied["later"] >= 15

    run(go())


def test_a_column_added_with_a_default_while_warp_is_down(pg_source_url: str, pg_url: str) -> None:
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.t (id int PRIMARY KEY, v int)",
        "INSERT INTO app.t SELECT g, g FROM generate_series(1, 20) g",
    )
    settings = pg_settings(pg_source_url, pg_url)

    async def go() -> None:
        await warp_until_idle(settings, idle=0.8)
        # while warp is down: every row takes the default, with no change of its own
        execute(
            pg_source_url,
            "ALTER TABLE app.t ADD COLUMN c text NOT NULL DEFAULT 'dflt'",
            "INSERT INTO app.t VALUES (21, 21, 'own')",
        )
        summary, _ = await warp_until_idle(settings, idle=0.8)
        assert summary.snapshot_rows["t"] == 21, "the table was copied again"
        await oracle(settings, "t")

    run(go())


def test_dead_letters_name_the_column_and_replay(pg_source_url: str, pg_url: str) -> None:
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.m (id int PRIMARY KEY, x double precision)",
        "INSERT INTO app.m VALUES (1, 1.5), (2, 'NaN')",
    )
    strict = pg_settings(
        pg_source_url, pg_url, schema={"dead_letter": {"non_finite_numbers": "dead_letter"}}
    )

    async def writers() -> None:
        execute(pg_source_url, "INSERT INTO app.m VALUES (3, '-Infinity'), (4, 2)")

    async def go() -> None:
        summary, _ = await warp_until_idle(strict, writers)
        assert summary.dead_letters == {"m": 2}
        dst = await asyncpg.connect(pg_url)
        try:
            letters = await dst.fetch(
                "SELECT document_id, error_message, raw_event_json FROM cartridge_warp.dead_letters"
                " ORDER BY document_id"
            )
        finally:
            await dst.close()
        assert [r["document_id"] for r in letters] == ["2", "3"]
        assert "column 'x' holds NaN" in letters[0]["error_message"]
        assert '"-Infinity"' in letters[1]["raw_event_json"]
        relaxed = pg_settings(pg_source_url, pg_url, warp=dict(strict.schemas[0].warp))
        result = await replay_dead_letters(pg_url, relaxed.schemas[0])
        assert (result.replayed, result.failed) == (2, 0)
        await oracle(relaxed, "m")

    run(go())


def test_lost_slot_fails_loudly_or_resnapshots(pg_source_url: str, pg_url: str) -> None:
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.t (id int PRIMARY KEY, v int)",
        "INSERT INTO app.t SELECT g, 0 FROM generate_series(1, 100) g",
    )
    settings = pg_settings(pg_source_url, pg_url)
    slot = settings.schemas[0].warp.slot_name

    async def go() -> None:
        await warp_until_idle(settings, idle=0.8)
        # while warp is down, the slot is dropped and the source changes
        execute(
            pg_source_url,
            f"SELECT pg_drop_replication_slot('{slot}')",
            "DELETE FROM app.t WHERE id <= 10",
            "UPDATE app.t SET v = 1 WHERE id > 90",
        )
        with pytest.raises(ResumeTokenLost, match=f"replication slot '{slot}' does not exist"):
            await warp_until_idle(settings, idle=0.8)
        again = pg_settings(
            pg_source_url,
            pg_url,
            warp={**settings.schemas[0].warp.model_dump(), "history_lost_policy": "resnapshot"},
        )
        summary, _ = await warp_until_idle(again, idle=0.8)
        assert summary.resnapshots == 1
        await oracle(again, "t")

    run(go())


def _config(path: Path, settings: CartridgeSettings) -> Path:
    schema = settings.schemas[0]
    path.write_text(
        yaml.safe_dump(
            {
                "source": {"type": "postgresql", "connection_string": settings.source.url()},
                "destination": {"connection_string": settings.destination_url()},
                "state_dir": str(path.parent / "state"),
                "schemas": [
                    {
                        "name": schema.name,
                        "source_database": schema.source_database,
                        "warp": {"metrics_port": 0, "slot_name": schema.warp.slot_name},
                    }
                ],
            }
        )
    )
    return path


def test_cli_refuses_keyless_tables_validates_and_drops_the_slot(
    tmp_path: Path, pg_source_url: str, pg_url: str
) -> None:
    execute(
        pg_source_url,
        "CREATE SCHEMA app",
        "CREATE TABLE app.ok (id int PRIMARY KEY)",
        'CREATE TABLE app."no key" (v int)',
    )
    settings = pg_settings(pg_source_url, pg_url)
    config = _config(tmp_path / "cartridge.yaml", settings)
    slot = settings.schemas[0].warp.slot_name

    async def slot_and_publication() -> tuple[Any, Any]:
        conn = await asyncpg.connect(pg_source_url)
        try:
            return (
                await conn.fetchval(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", slot
                ),
                await conn.fetchval(
                    "SELECT 1 FROM pg_publication WHERE pubname = 'cartridge_shop'"
                ),
            )
        finally:
            await conn.close()

    refused = cartridge("warp", "run", "--config", str(config), "--stop-when-idle", "1")
    assert refused.returncode == 1, refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, refused.stderr
    assert errors[0].startswith("error: schema 'shop': table(s) 'no key' in 'app' have no primary")
    assert "Traceback" not in refused.stderr
    assert run(slot_and_publication()) == (None, None), "nothing was created"

    execute(pg_source_url, 'ALTER TABLE app."no key" ADD COLUMN id serial PRIMARY KEY')
    checked = cartridge("warp", "validate", "--config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "not created yet" in checked.stdout
    assert run(slot_and_publication()) == (None, None), "validate creates nothing"

    ran = cartridge("warp", "run", "--config", str(config), "--stop-when-idle", "1")
    assert ran.returncode == 0, ran.stderr
    assert run(slot_and_publication()) == (1, 1)
    dropped = cartridge("warp", "drop-slot", "--config", str(config), "--schema", "shop")
    assert dropped.returncode == 0, dropped.stderr
    assert f"dropped replication slot '{slot}'" in dropped.stdout
    assert "dropped publication 'cartridge_shop'" in dropped.stdout
    assert run(slot_and_publication()) == (None, None)
