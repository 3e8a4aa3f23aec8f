"""``$changeStreamSplitLargeEvent``: fragments of a large change event are merged back into one.

No MongoDB 7 here, so a stub change stream (``try_next``/``resume_token``/``close``, the whole
surface :class:`SchemaSource` uses) plays fragments shaped like MongoDB's documented split
events: each fragment has its own ``_id`` resume token and ``splitEvent: {fragment: n, of: m}``;
the first carries ``operationType``, ``clusterTime``, ``ns``, ``documentKey`` and the fields
that fit, later ones the other top-level fields (MongoDB splits at top-level fields).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections import deque
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
import pytest
from bson import ObjectId, Timestamp
from pymongo.errors import OperationFailure

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.documents import canonical_hash, document_json
from cartridge_dagster.warp.changes import Transformer
from cartridge_dagster.warp.sink import Batch, Sink
from cartridge_dagster.warp.source import SchemaSource
from tests.conftest import run

SPLIT_STAGE: dict[str, Any] = {"$changeStreamSplitLargeEvent": {}}


class StubStream:
    """Plays events, ``None`` (nothing within max_await) and exceptions, like the connector's
    :class:`~cartridge_dagster.connectors.mongo.ChangeStream`."""

    def __init__(self, items: list[Any], start: Mapping[str, Any] | None = None) -> None:
        self.items = deque(items)
        self.token: dict[str, Any] | None = dict(start) if start else None
        self.closed = False

    async def try_next(self) -> dict[str, Any] | None:
        if not self.items:
            return None
        item = self.items.popleft()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            await asyncio.sleep(0)
            return None
        self.token = dict(item["_id"])
        event: dict[str, Any] = copy.deepcopy(item)  # the connector hands out a fresh dict
        return event

    @property
    def resume_token(self) -> dict[str, Any] | None:
        return self.token

    async def close(self) -> None:
        self.closed = True


class StubConnection:
    """A PyMongo-kind connection whose ``watch`` hands out prepared stub streams."""

    kind = "pymongo"

    def __init__(self, *streams: list[Any]) -> None:
        self.streams = deque(streams)
        self.opened: list[dict[str, Any]] = []
        self.handed: list[StubStream] = []

    def watch(
        self,
        database: str | None = None,
        pipeline: Any = (),
        *,
        resume_after: Mapping[str, Any] | None = None,
        start_after: Mapping[str, Any] | None = None,
        full_document: str = "updateLookup",
        max_await_time_ms: int = 500,
        raw_documents: bool = False,
    ) -> StubStream:
        self.opened.append(
            {
                "pipeline": [dict(p) for p in pipeline],
                "resume_after": resume_after,
                "start_after": start_after,
            }
        )
        stream = StubStream(self.streams.popleft() if self.streams else [], resume_after)
        self.handed.append(stream)
        return stream


def schema(**batching: Any) -> SchemaConfig:
    return SchemaConfig(
        name="shop",
        source_database="shop",
        target_schema="raw_shop",
        batching=batching,
        warp={"idle_checkpoint_seconds": 3600, "metrics_port": 0},
    )


def source_for(conn: StubConnection) -> SchemaSource:
    cfg = schema()
    return SchemaSource(conn, cfg, Transformer(cfg))  # type: ignore[arg-type]


def token(n: int) -> dict[str, str]:
    return {"_data": f"82{n:016X}"}


OID = ObjectId("65a1b2c3d4e5f6a7b8c9d0e1")
WHEN = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def large_update(n: int = 10) -> dict[str, Any]:
    """An update with the post-image (updateLookup) and the pre-image: the shape that goes
    over 16 MiB when a large field changes (here small: the stub does not care)."""
    blob = "x" * 5000
    return {
        "_id": token(n),
        "operationType": "update",
        "clusterTime": Timestamp(1_700_000_000, n),
        "wallTime": WHEN,
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": OID},
        "fullDocument": {"_id": OID, "blob": blob + "new", "n": 2, "tags": ["a", "b"]},
        "updateDescription": {
            "updatedFields": {"blob": blob + "new", "n": 2},
            "removedFields": [],
            "truncatedArrays": [],
        },
        "fullDocumentBeforeChange": {"_id": OID, "blob": blob + "old", "n": 1, "tags": ["a"]},
    }


def split(event: dict[str, Any], groups: list[list[str]], first_token: int) -> list[dict[str, Any]]:
    """Fragments of ``event`` as ``$changeStreamSplitLargeEvent`` emits them: the fields of
    each group, a fresh resume token per fragment, ``splitEvent`` numbering."""
    out = []
    for i, fields in enumerate(groups, start=1):
        fragment: dict[str, Any] = {
            "_id": token(first_token + i),
            "splitEvent": {"fragment": i, "of": len(groups)},
        }
        fragment.update({f: copy.deepcopy(event[f]) for f in fields})
        out.append(fragment)
    covered = {f for g in groups for f in g}
    assert covered == set(event) - {"_id"}, "every field goes to exactly one fragment"
    return out


GROUPS = [
    ["operationType", "clusterTime", "wallTime", "ns", "documentKey", "fullDocument"],
    ["updateDescription"],
    ["fullDocumentBeforeChange"],
]


def normal_insert(n: int, doc_id: int) -> dict[str, Any]:
    return {
        "_id": token(n),
        "operationType": "insert",
        "clusterTime": Timestamp(1_700_000_000, n),
        "wallTime": WHEN,
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": doc_id},
        "fullDocument": {"_id": doc_id, "small": True},
    }


async def drain(source: SchemaSource, stream: Any, n: int) -> tuple[Any, list[Any]]:
    out = []
    for _ in range(n):
        stream, event = await source._next_event(stream)
        out.append(event)
    return stream, out


def test_fragments_merge_into_the_original_event_with_the_last_token() -> None:
    original = large_update()
    fragments = split(original, GROUPS, first_token=100)
    conn = StubConnection()
    source = source_for(conn)

    async def go() -> None:
        stream: Any = StubStream(fragments)
        _, (merged,) = await drain(source, stream, 1)
        assert "splitEvent" not in merged
        assert merged["_id"] == token(103) == fragments[-1]["_id"], "resume after the whole event"
        assert merged == {**original, "_id": token(103)}
        assert source._position(stream) == token(103)

    run(go())


def test_normal_events_and_idle_reads_pass_through_around_fragments() -> None:
    original = large_update(20)
    fragments = split(original, GROUPS, first_token=200)
    before, after = normal_insert(19, 1), normal_insert(30, 2)
    source = source_for(StubConnection())

    async def go() -> None:
        stream = StubStream([before, None, *fragments, after, None])
        _, events = await drain(source, stream, 5)
        assert events[0] == before and events[1] is None
        assert events[2] == {**original, "_id": token(203)}
        assert events[3] == after and events[4] is None

    run(go())


def test_no_position_inside_a_split_event() -> None:
    """Nothing within max_await between two fragments: the stream is idle, but its resume
    token points into the event, so it must not become a checkpoint (resuming there would
    read the event's tail without its head)."""
    original = large_update(40)
    f1, f2, f3 = split(original, GROUPS, first_token=400)
    source = source_for(StubConnection())

    async def go() -> None:
        stream = StubStream([f1, None, f2, None, f3])
        stream, (idle,) = await drain(source, stream, 1)
        assert idle is None and stream.resume_token == token(401)
        assert source._position(stream) is None
        stream, (idle,) = await drain(source, stream, 1)
        assert idle is None and source._position(stream) is None
        stream, (merged,) = await drain(source, stream, 1)
        assert merged == {**original, "_id": token(403)}
        assert source._position(stream) == token(403)

    run(go())


def test_a_reopened_stream_starts_the_event_again() -> None:
    """The connection drops after fragment 2 of 3; the re-opened stream delivers a fragment 1
    again (here of another event, a replace): what was left of the lost event is dropped."""
    first = large_update(50)
    first_fragments = split(first, GROUPS, first_token=500)
    second = {
        "_id": token(51),
        "operationType": "replace",
        "clusterTime": Timestamp(1_700_000_000, 51),
        "wallTime": WHEN,
        "ns": {"db": "shop", "coll": "orders"},
        "documentKey": {"_id": OID},
        "fullDocument": {"_id": OID, "other": "document", "blob": "y" * 5000},
    }
    second_fragments = split(
        second,
        [["operationType", "clusterTime", "wallTime", "ns", "documentKey"], ["fullDocument"]],
        first_token=510,
    )
    source = source_for(StubConnection())

    async def go() -> None:
        dropped = StubStream([*first_fragments[:2], ConnectionResetError("lost")])
        with pytest.raises(ConnectionResetError):
            await drain(source, dropped, 1)
        _, (merged,) = await drain(source, StubStream(second_fragments), 1)
        assert "updateDescription" not in merged, "a field of the lost event leaked in"
        assert merged == {**second, "_id": token(512)}

    run(go())


@pytest.mark.parametrize("how", ["resume_after", "start_after"])
def test_server_without_the_split_stage_gets_the_stream_without_it(how: str) -> None:
    unknown_stage = OperationFailure(
        "Unrecognized pipeline stage name: '$changeStreamSplitLargeEvent'", code=40324
    )
    event = normal_insert(60, 7)
    conn = StubConnection([unknown_stage], [event, None])
    source = source_for(conn)
    start = token(59)

    async def go() -> None:
        stream: Any = source.open_stream(**{how: start})
        stream, events = await drain(source, stream, 2)
        assert events == [event, None]
        assert conn.handed[0].closed
        first, second = conn.opened
        assert first["pipeline"] == [SPLIT_STAGE]
        assert second["pipeline"] == [], "re-opened without the stage"
        # from the same position, the same way (an invalidate's token needs startAfter)
        assert {k: second[k] for k in ("resume_after", "start_after")} == {
            "resume_after": start if how == "resume_after" else None,
            "start_after": start if how == "start_after" else None,
        }
        source.open_stream(resume_after=token(60))
        assert conn.opened[-1]["pipeline"] == [], "and never asks for it again"

    run(go())


def test_other_errors_are_not_mistaken_for_the_missing_stage() -> None:
    conn = StubConnection([OperationFailure("not authorized", code=13)])
    source = source_for(conn)

    async def go() -> None:
        with pytest.raises(OperationFailure, match="not authorized"):
            await drain(source, source.open_stream(resume_after=token(1)), 1)
        assert len(conn.opened) == 1 and source._split_large_events

    run(go())


@pytest.mark.integration
def test_a_split_event_lands_as_one_row(pg_url: str) -> None:
    """Fragments → ``SchemaSource.stream`` → a real :class:`Sink`: one row with the whole
    post-image, and the checkpoint at the last fragment's token."""
    original = large_update(70)
    fragments = split(original, GROUPS, first_token=700)
    following = normal_insert(80, 9)
    conn = StubConnection([*fragments, following])
    cfg = schema(max_batch_size=1)  # a batch (a transaction, a checkpoint) per event
    source = SchemaSource(conn, cfg, Transformer(cfg))  # type: ignore[arg-type]

    async def go() -> None:
        stop = asyncio.Event()
        batches: list[Batch] = []
        async for batch in source.stream(token(69), stop):
            batches.append(batch)
            if len(batches) == 2:
                stop.set()
        assert conn.opened[0]["pipeline"] == [SPLIT_STAGE]
        assert conn.opened[0]["resume_after"] == token(69)
        assert [(c.collection, c.id, c.op) for b in batches for c in b.changes] == [
            ("orders", str(OID), "update"),
            ("orders", "9", "insert"),
        ]
        assert [b.token for b in batches] == [token(703), token(80)]
        sink = Sink(pg_url, cfg, owner="test")
        pg = await asyncpg.connect(pg_url)
        try:
            await sink.setup()
            await sink.acquire()
            await sink.apply(batches[0])
            row = await pg.fetchrow(
                "SELECT document::text AS doc, _cartridge_op FROM raw_shop.orders WHERE _id = $1",
                str(OID),
            )
            stored = await pg.fetchval(
                "SELECT resume_token::text FROM cartridge_warp.checkpoints "
                "WHERE schema_name = 'shop'"
            )
            assert row is not None and row["_cartridge_op"] == "update"
            assert canonical_hash(row["doc"]) == canonical_hash(
                document_json(original["fullDocument"])
            )
            assert orjson.loads(stored) == token(703), "the checkpoint is after the whole event"
            await sink.apply(batches[1])
            assert await pg.fetchval("SELECT count(*) FROM raw_shop.orders") == 2
        finally:
            await pg.close()
            await sink.close()

    run(go())
