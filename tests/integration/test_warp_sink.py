"""The sink against a real PostgreSQL: merge, versions, tombstones, history, fencing, poison."""

from __future__ import annotations

from typing import Any

import asyncpg
import bson
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.identifiers import qualified
from cartridge_dagster.landing import raw_table_name
from cartridge_dagster.warp.changes import Change, Transformer
from cartridge_dagster.warp.sink import (
    COPY_HEADER,
    COPY_TRAILER,
    Batch,
    CopyRows,
    Fenced,
    KeyRange,
    RangeLanded,
    RangeMark,
    RangePlan,
    Sink,
    Wipe,
    copy_tail,
)
from tests.conftest import run

pytestmark = pytest.mark.integration


def schema_cfg(**tables: Any) -> SchemaConfig:
    return SchemaConfig(
        name="shop",
        source_database="shop",
        target_schema="raw_shop",
        tables=dict(tables),
    )


def ch(coll: str, _id: str, version: int, doc: dict[str, Any] | None, op: str = "update") -> Change:
    return Change(
        coll,
        _id,
        "delete" if doc is None else op,  # type: ignore[arg-type]
        version,
        None if doc is None else orjson.dumps(doc),
        None,
    )


def batch(*changes: Change, token: int | None = None) -> Batch:
    top = max((c.version for c in changes), default=0)
    return Batch(
        changes=list(changes),
        version=top,
        token={"_data": str(token if token is not None else top)},
        events=len(changes),
    )


async def rows(url: str, coll: str, schema: str = "raw_shop") -> dict[str, tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        got = await conn.fetch(
            f"SELECT _id, document::text AS d, _cartridge_deleted, _cartridge_version "
            f"FROM {qualified(schema, raw_table_name(coll))}"
        )
    finally:
        await conn.close()
    return {
        r["_id"]: (
            orjson.loads(r["d"]) if r["d"] else None,
            r["_cartridge_deleted"],
            int(r["_cartridge_version"]),
        )
        for r in got
    }


async def open_sink(url: str, cfg: SchemaConfig) -> Sink:
    sink = Sink(url, cfg, owner="test")
    await sink.setup()
    await sink.acquire()
    return sink


def test_upsert_dedup_and_versions_never_move_back(pg_url: str) -> None:
    async def go() -> None:
        sink = await open_sink(pg_url, schema_cfg())
        try:
            await sink.apply(
                batch(
                    ch("c", "a", 10, {"_id": "a", "v": 1}, "insert"),
                    ch("c", "a", 12, {"_id": "a", "v": 3}),  # in-batch dedup: newest wins
                    ch("c", "a", 11, {"_id": "a", "v": 2}),
                    ch("c", "b", 10, {"_id": "b", "v": 1}, "insert"),
                )
            )
            assert (await rows(pg_url, "c"))["a"] == ({"_id": "a", "v": 3}, False, 12)
            # duplicate replay: nothing changes
            await sink.apply(batch(ch("c", "a", 12, {"_id": "a", "v": 3})))
            # stale replay: an older version is ignored
            await sink.apply(batch(ch("c", "a", 11, {"_id": "a", "v": 2})))
            assert (await rows(pg_url, "c"))["a"] == ({"_id": "a", "v": 3}, False, 12)
            cp = await sink.checkpoint()
            # the position is the last batch's; the version never moves back
            assert cp is not None and cp.version == 12 and cp.resume_token == {"_data": "11"}
        finally:
            await sink.close()

    run(go())


def test_soft_delete_tombstone_blocks_stale_insert(pg_url: str) -> None:
    async def go() -> None:
        sink = await open_sink(pg_url, schema_cfg())
        try:
            await sink.apply(batch(ch("c", "a", 10, {"_id": "a"}, "insert")))
            await sink.apply(batch(ch("c", "a", 20, None)))
            assert (await rows(pg_url, "c"))["a"] == (None, True, 20)
            # replay after delete: the old insert cannot resurrect the document
            await sink.apply(batch(ch("c", "a", 10, {"_id": "a"}, "insert")))
            assert (await rows(pg_url, "c"))["a"] == (None, True, 20)
            # a newer insert of the same _id does
            await sink.apply(batch(ch("c", "a", 30, {"_id": "a", "again": True}, "insert")))
            assert (await rows(pg_url, "c"))["a"] == ({"_id": "a", "again": True}, False, 30)
        finally:
            await sink.close()

    run(go())


def test_hard_delete_and_history(pg_url: str) -> None:
    cfg = schema_cfg(c={"delete_mode": "hard", "history": True})

    async def go() -> None:
        sink = await open_sink(pg_url, cfg)
        try:
            await sink.apply(
                batch(
                    ch("c", "a", 10, {"_id": "a", "v": 1}, "insert"),
                    ch("c", "a", 11, {"_id": "a", "v": 2}),
                )
            )
            await sink.apply(batch(ch("c", "a", 20, None)))
            assert "a" not in await rows(pg_url, "c")
            await sink.apply(batch(ch("c", "a", 11, {"_id": "a", "v": 2})))  # stale replay
            assert "a" not in await rows(pg_url, "c")
            conn = await asyncpg.connect(pg_url)
            try:
                hist = await conn.fetch(
                    'SELECT _cartridge_version AS v, _cartridge_deleted AS d FROM raw_shop."c__history" '
                    "ORDER BY 1"
                )
                tomb = await conn.fetchval(
                    "SELECT version FROM cartridge_warp.tombstones WHERE _id = 'a'"
                )
            finally:
                await conn.close()
            assert [(int(r["v"]), r["d"]) for r in hist] == [(10, False), (11, False), (20, True)]
            assert int(tomb) == 20
        finally:
            await sink.close()

    run(go())


def test_fencing_stops_the_older_process(pg_url: str) -> None:
    async def go() -> None:
        first = await open_sink(pg_url, schema_cfg())
        second = await open_sink(pg_url, schema_cfg())
        try:
            with pytest.raises(Fenced):
                await first.apply(batch(ch("c", "zombie", 10, {"_id": "zombie"}, "insert")))
            await second.apply(batch(ch("c", "a", 11, {"_id": "a"}, "insert")))
            assert set(await rows(pg_url, "c")) == {"a"}
            cp = await second.checkpoint()
            assert cp is not None and cp.epoch == 2 and cp.version == 11
        finally:
            await first.close()
            await second.close()

    run(go())


def test_poison_rows_bisected_into_dead_letters_same_transaction(pg_url: str) -> None:
    async def go() -> None:
        sink = await open_sink(pg_url, schema_cfg())
        try:
            await sink.apply(batch(ch("c", "seed", 1, {"_id": "seed"}, "insert")))
            conn = await asyncpg.connect(pg_url)
            await conn.execute(
                "ALTER TABLE raw_shop.c ADD CONSTRAINT no_poison "
                "CHECK (document IS NULL OR NOT (document ? 'poison'))"
            )
            await conn.close()
            changes = [ch("c", f"d{i}", 10 + i, {"_id": f"d{i}"}, "insert") for i in range(40)]
            changes[7] = ch("c", "d7", 17, {"_id": "d7", "poison": 1}, "insert")
            changes[31] = ch("c", "d31", 41, {"_id": "d31", "poison": 2}, "insert")
            result = await sink.apply(batch(*changes))
            assert result.poisoned == 2
            landed = await rows(pg_url, "c")
            assert set(landed) == {"seed"} | {f"d{i}" for i in range(40)} - {"d7", "d31"}
            conn = await asyncpg.connect(pg_url)
            try:
                dead = await conn.fetch(
                    "SELECT document_id, error_class, status FROM cartridge_warp.dead_letters "
                    "ORDER BY document_id"
                )
            finally:
                await conn.close()
            assert [(r["document_id"], r["error_class"]) for r in dead] == [
                ("d31", "CheckViolationError"),
                ("d7", "CheckViolationError"),
            ]
            cp = await sink.checkpoint()
            assert cp is not None and cp.version == 49
        finally:
            await sink.close()

    run(go())


def test_wipe_tombstones_older_rows_only(pg_url: str) -> None:
    async def go() -> None:
        sink = await open_sink(pg_url, schema_cfg())
        try:
            await sink.apply(
                batch(
                    ch("c", "old", 5, {"_id": "old"}, "insert"),
                    ch("c", "new", 9, {"_id": "new"}, "insert"),
                )
            )
            b = Batch(wipes=[Wipe("c", 8, "sweep")], version=8, token={"_data": "8"})
            result = await sink.apply(b)
            assert result.wiped["c"] == 1
            got = await rows(pg_url, "c")
            assert got["old"] == (None, True, 8) and got["new"][1] is False
        finally:
            await sink.close()

    run(go())


HOSTILE = st.one_of(
    st.sampled_from(
        [
            'x"; DROP TABLE raw_shop.canary; --',
            "Robert'); DROP TABLE canary;--",
            "select",
            "a.b.c",
            "$weird",
            "名前",
            "emoji🙂",
            " spaced name ",
            "x" * 120,
            "UPPER",
            "upper",
            "tab\tname",
        ]
    ),
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=80,
    ),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    names=st.lists(HOSTILE, min_size=1, max_size=4, unique=True),
    field=st.text(min_size=0, max_size=30).filter(lambda s: "\x00" not in s),
)
def test_hostile_collection_and_field_names(pg_url: str, names: list[str], field: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(pg_url)
        await conn.execute("CREATE SCHEMA IF NOT EXISTS raw_shop")
        await conn.execute("CREATE TABLE IF NOT EXISTS raw_shop.canary (x int)")
        await conn.execute("INSERT INTO raw_shop.canary VALUES (1)")
        await conn.close()
        sink = await open_sink(pg_url, schema_cfg())
        try:
            changes = [
                ch(name, f"id-{i}", 100 + i, {"_id": f"id-{i}", field: name}, "insert")
                for i, name in enumerate(names)
            ]
            await sink.apply(batch(*changes))
            for i, name in enumerate(names):
                got = await rows(pg_url, name)
                assert got[f"id-{i}"][0] == {"_id": f"id-{i}", field: name}
        finally:
            await sink.close()
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM raw_shop.canary") >= 1
            mapped = await conn.fetch("SELECT collection, table_name FROM cartridge_warp.name_map")
        finally:
            await conn.close()
        by_coll = {r["collection"]: r["table_name"] for r in mapped}
        for name in names:
            assert by_coll[name] == raw_table_name(name)

    run(go())


def test_direct_copy_falls_back_to_the_merge_on_conflict(pg_url: str) -> None:
    async def go() -> None:
        sink = await open_sink(pg_url, schema_cfg())
        try:
            first = batch(*(ch("c", f"d{i}", 5, {"_id": f"d{i}"}, "snapshot") for i in range(3)))
            first.direct_copy = True
            await sink.apply(first)
            await sink.apply(batch(ch("c", "d1", 9, {"_id": "d1", "newer": True})))
            # a replayed snapshot chunk overlapping committed rows: COPY conflicts, merge wins
            again = batch(*(ch("c", f"d{i}", 5, {"_id": f"d{i}"}, "snapshot") for i in range(5)))
            again.direct_copy = True
            await sink.apply(again)
            got = await rows(pg_url, "c")
            assert set(got) == {f"d{i}" for i in range(5)}
            assert got["d1"] == ({"_id": "d1", "newer": True}, False, 9)
        finally:
            await sink.close()

    run(go())


def test_numeric_codec_round_trips_through_postgresql(pg_url: str) -> None:
    """The sink's own binary ``numeric`` codec: what it sends PostgreSQL reads as the same
    number, and what PostgreSQL sends back (integral or not) decodes to the same value."""
    from decimal import Decimal

    from cartridge_dagster.warp.sink import setup_numeric_codec

    ints = [0, 1, -1, 9999, 10000, 10001, 10**8, -(10**8), 2**63, -(2**79) - 7]
    ints += list(range(-30001, 30001, 7919))
    ints += [(1_700_000_000 << 48) | (12 << 16) | 3, 10**38 - 1]
    texts = ["0.5", "-0.0001", "123.4500", "1e20", "-98765.4321", "NaN", "0.000000"]

    async def go() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await setup_numeric_codec(conn)
            for value in ints:
                assert await conn.fetchval("SELECT $1::numeric::text", value) == str(value)
                assert await conn.fetchval("SELECT $1::numeric(39,0)", value) == value
                repeated = await conn.fetch(
                    "SELECT $1::numeric = x FROM unnest($2::numeric[]) x", value, [value, value]
                )
                assert [r[0] for r in repeated] == [True, True]  # the cached encoding is reused
            for text in texts:
                got = await conn.fetchval(f"SELECT '{text}'::numeric")
                expected = Decimal(text)
                if text == "NaN":
                    assert isinstance(got, Decimal) and got.is_nan()
                else:
                    assert got == expected and str(got) == str(
                        await conn.fetchval(f"SELECT '{text}'::numeric::text")
                    )
            with pytest.raises(asyncpg.DataError, match="must be an int"):
                await conn.fetchval("SELECT $1::numeric", Decimal("1.5"))
        finally:
            await conn.close()

    run(go())


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(-(10**38) + 1, 10**38 - 1))
def test_numeric_codec_property(pg_url: str, value: int) -> None:
    from cartridge_dagster.warp.sink import setup_numeric_codec

    async def go() -> None:
        conn = await asyncpg.connect(pg_url)
        try:
            await setup_numeric_codec(conn)
            assert await conn.fetchval("SELECT $1::numeric::text", value) == str(value)
            assert await conn.fetchval("SELECT $1::numeric", value) == value
        finally:
            await conn.close()

    run(go())


def test_real_cluster_times_in_versions_plans_and_checkpoints(pg_url: str) -> None:
    """Versions of a real server's clock (``Timestamp(seconds since the epoch, inc)`` plus an
    ordinal: ~80 bits) land in numeric columns, JSON snapshot plans and the checkpoint."""
    import time

    from bson import Timestamp

    from cartridge_dagster.warp.changes import cluster_base, make_version, split_version

    now = int(time.time())
    snap_version = make_version(cluster_base(Timestamp(now, 1)), 0)
    late = make_version(cluster_base(Timestamp(now + 5, 2**32 - 1)), 2**16 - 1)
    assert snap_version.bit_length() > 64 and late.bit_length() <= 80
    assert split_version(late) == (((now + 5) << 32) | (2**32 - 1), 2**16 - 1)
    cfg = schema_cfg()

    async def go() -> None:
        sink = await open_sink(pg_url, cfg)
        try:
            plan = {"c": {"done": False, "after": None, "version": str(snap_version)}}
            await sink.apply(
                Batch(kind="reset", token={"_data": "82AB"}, snapshot=plan, version=snap_version)
            )
            await sink.apply(batch(ch("c", "a", snap_version, {"v": 0})))
            await sink.apply(batch(ch("c", "a", late, {"v": 1}), ch("c", "b", late - 1, {"v": 2})))
            await sink.apply(batch(ch("c", "a", snap_version, {"v": "stale"})))  # a replay
            cp = await sink.checkpoint()
        finally:
            await sink.close()
        assert cp is not None and cp.version == late
        assert int(cp.snapshot["c"]["version"]) == snap_version
        got = await rows(pg_url, "c")
        assert got["a"] == ({"v": 1}, False, late)
        assert got["b"] == ({"v": 2}, False, late - 1)

    run(go())


def test_key_ranges_land_once_with_their_mark_and_the_key_comes_back(pg_url: str) -> None:
    """A plan of key ranges for a table landing empty: the table has no primary key until the
    copy ends; a range lands with its mark (poison bisected by COPY into dead letters), never
    twice; range writers are fenced like the main one; the end adds the key and counts rows."""

    async def go() -> None:
        main = await open_sink(pg_url, schema_cfg())
        ranger = Sink(pg_url, schema_cfg(), owner="test")
        ranger.epoch = main.epoch
        try:
            plan = Batch(kind="snapshot")
            plan.range_plan = RangePlan("c", 7, (KeyRange(0, None, "d3"), KeyRange(1, "d3", None)))
            plan.snapshot = {"c": {"done": False, "ranges": True, "version": "7"}}
            await main.apply(plan)
            conn = await asyncpg.connect(pg_url)
            try:
                keys = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'raw_shop.c'::regclass"
                assert await conn.fetchval(keys + " AND contype = 'p'") == 0
                await conn.execute(
                    "ALTER TABLE raw_shop.c ADD CONSTRAINT no_poison "
                    "CHECK (document IS NULL OR NOT (document ? 'poison'))"
                )
            finally:
                await conn.close()
            changes = [ch("c", f"d{i}", 7, {"_id": f"d{i}"}, "snapshot") for i in range(40)]
            changes[5] = ch("c", "d5", 7, {"_id": "d5", "poison": 1}, "snapshot")
            one = Batch(kind="snapshot", changes=changes, direct_copy=True, events=40)
            one.key_range = RangeMark("c", 7, 1)
            result = await ranger.apply_range(one)
            assert result.poisoned == 1 and result.applied["c"] == 39
            again = Batch(kind="snapshot", changes=[ch("c", "x", 7, {}, "snapshot")])
            again.key_range = RangeMark("c", 7, 1)
            with pytest.raises(RangeLanded):
                await ranger.apply_range(again)
            assert "x" not in await rows(pg_url, "c")  # rolled back with the refused mark
            pending, landed = await main.pending_ranges("c", 7)
            assert pending == [KeyRange(0, None, "d3")] and landed == 39
            usurper = await open_sink(pg_url, schema_cfg())
            zero = Batch(kind="snapshot", changes=[ch("c", "z", 7, {}, "snapshot")])
            zero.key_range = RangeMark("c", 7, 0)
            with pytest.raises(Fenced):
                await ranger.apply_range(zero)
            await usurper.close()
            main.epoch = ranger.epoch = usurper.epoch
            await ranger.apply_range(zero)
            end = Batch(kind="snapshot", ranges_finished=("c", 7))
            end.snapshot = {"c": {"done": True, "ranges": True, "version": "7"}}
            await main.apply(end)
            conn = await asyncpg.connect(pg_url)
            try:
                assert await conn.fetchval(keys + " AND contype = 'p'") == 1
                assert (
                    await conn.fetchval("SELECT count(*) FROM cartridge_warp.snapshot_ranges") == 0
                )
                assert (
                    await conn.fetchval(
                        "SELECT events_applied FROM cartridge_warp.name_map WHERE collection = 'c'"
                    )
                    == 40
                )
                dead = await conn.fetch("SELECT document_id FROM cartridge_warp.dead_letters")
            finally:
                await conn.close()
            assert [r["document_id"] for r in dead] == ["d5"]
            assert len(await rows(pg_url, "c")) == 40  # 39 + "z"
        finally:
            await main.close()
            await ranger.close()

    run(go())


def test_a_range_plan_over_a_table_with_rows_keeps_its_key_and_merges(pg_url: str) -> None:
    """Control rows removed by hand, raw table kept: the plan's table is "new" to the sink but
    holds rows, so it keeps its key and a range meeting a landed row merges (newest wins)."""

    async def go() -> None:
        first = await open_sink(pg_url, schema_cfg())
        try:
            await first.apply(batch(ch("c", "a", 9, {"_id": "a", "v": "newer"}, "insert")))
        finally:
            await first.close()
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("DELETE FROM cartridge_warp.name_map")
        finally:
            await conn.close()
        main = await open_sink(pg_url, schema_cfg())
        ranger = Sink(pg_url, schema_cfg(), owner="test")
        ranger.epoch = main.epoch
        try:
            plan = Batch(kind="snapshot")
            plan.range_plan = RangePlan("c", 7, (KeyRange(0, None, None),))
            await main.apply(plan)
            one = Batch(
                kind="snapshot",
                changes=[
                    ch("c", "a", 7, {"_id": "a", "v": "older"}, "snapshot"),
                    ch("c", "b", 7, {"_id": "b"}, "snapshot"),
                ],
                direct_copy=True,
            )
            one.key_range = RangeMark("c", 7, 0)
            await ranger.apply_range(one)
            got = await rows(pg_url, "c")
            assert got["a"] == ({"_id": "a", "v": "newer"}, False, 9) and "b" in got
            conn = await asyncpg.connect(pg_url)
            try:
                assert (
                    await conn.fetchval(
                        "SELECT count(*) FROM pg_constraint "
                        "WHERE conrelid = 'raw_shop.c'::regclass AND contype = 'p'"
                    )
                    == 1
                )
            finally:
                await conn.close()
        finally:
            await main.close()
            await ranger.close()

    run(go())


def test_c_copy_rows_land_and_a_row_postgresql_refuses_is_a_dead_letter(pg_url: str) -> None:
    """A wire snapshot page as C writes it (binary COPY rows straight from BSON) lands as the
    Python conversion's changes would; a row PostgreSQL refuses rolls the COPY back, and the
    page goes through the staged merge in the same transaction, which dead-letters that row
    alone."""
    cfg = schema_cfg()
    transformer = Transformer(cfg)

    def page(docs: list[dict[str, Any]], version: int) -> Batch:
        out = transformer.copy_rows(
            "c", [bson.encode(d) for d in docs], copy_tail(version, "snapshot", None)
        )
        assert out is not None and out[2] == []
        data, n, _ = out
        return Batch(
            kind="snapshot",
            copy=CopyRows("c", COPY_HEADER + data + COPY_TRAILER, n, version),
            direct_copy=True,
            snapshot={"c": {"done": False, "version": str(version), "copied": n}},
            events=n,
        )

    async def go() -> None:
        sink = await open_sink(pg_url, cfg)
        try:
            first = [{"_id": f"a{i}", "n": i, "s": "é\n", "f": 1.5} for i in range(30)]
            result = await sink.apply(page(first, 5))
            assert result.applied["c"] == 30
            got = await rows(pg_url, "c")
            assert got == {d["_id"]: (d, False, 5) for d in first}
            conn = await asyncpg.connect(pg_url)
            await conn.execute(
                "ALTER TABLE raw_shop.c ADD CONSTRAINT no_poison "
                "CHECK (document IS NULL OR NOT (document ? 'poison'))"
            )
            await conn.close()
            second = [{"_id": f"b{i}", "n": i} for i in range(40)]
            second[17]["poison"] = 1
            result = await sink.apply(page(second, 6))
            assert result.poisoned == 1 and result.applied["c"] == 39
            got = await rows(pg_url, "c")
            assert set(got) == {d["_id"] for d in first + second} - {"b17"}
            assert got["b3"] == ({"_id": "b3", "n": 3}, False, 6)
            conn = await asyncpg.connect(pg_url)
            try:
                dead = await conn.fetch(
                    "SELECT document_id, error_class FROM cartridge_warp.dead_letters"
                )
            finally:
                await conn.close()
            assert [(r["document_id"], r["error_class"]) for r in dead] == [
                ("b17", "CheckViolationError")
            ]
            cp = await sink.checkpoint()
            assert cp is not None and cp.snapshot["c"]["copied"] == 40
        finally:
            await sink.close()

    run(go())
