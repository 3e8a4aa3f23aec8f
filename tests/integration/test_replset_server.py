"""The replica-set test server against MongoDB's own change-stream specification files.

Every test of ``../shared/specs/change-streams/`` that applies to a 7.0 replica set runs through
real PyMongo against the server (``tests/support/unified.py``); the features the server does not
implement are listed in ``UNSUPPORTED`` with the reason (and in docs/warp.md).
"""

from __future__ import annotations

import pytest

from tests.support.services import REPO
from tests.support.unified import applicable, load_spec_tests, run_spec_test

pytestmark = pytest.mark.integration

SPECS = REPO.parent / "shared" / "specs" / "change-streams"
SERVER_VERSION = "7.0.0"
#: Spec features the test server does not implement (substring of the test id → reason).
UNSUPPORTED = {
    "showExpandedEvents: when showExpandedEvents is true": "expanded events (create, "
    "createIndexes, dropIndexes, modify, shardCollection) are not implemented",
    "nsType:": "nsType needs expanded events",
    "disambiguatedPaths: disambiguatedPaths is present": "disambiguatedPaths needs expanded events",
    "disambiguatedPaths: disambiguatedPaths returns": "disambiguatedPaths needs expanded events",
}

if not SPECS.is_dir():
    raise RuntimeError(f"MongoDB's change-stream specification files are missing: {SPECS}")
ALL = load_spec_tests(SPECS)
CASES = [t for t in ALL if applicable(t, version=SERVER_VERSION, unsupported=UNSUPPORTED) is None]


def test_most_spec_tests_apply() -> None:
    """The applicability filter cannot quietly drop the suite."""
    assert len(ALL) >= 80
    assert len(CASES) >= 50, [t.id for t in CASES]


@pytest.mark.parametrize("case", CASES, ids=[t.id for t in CASES])
def test_change_stream_spec(replset_url: str, case) -> None:  # type: ignore[no-untyped-def]
    run_spec_test(replset_url, case)


# --------------------------------------------------------------------------- beyond the specs


def _client(uri: str):  # type: ignore[no-untyped-def]
    import pymongo

    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000)


def test_hello_and_cluster_times_are_a_replica_sets(replset_url: str) -> None:
    import time

    from bson import Timestamp

    client = _client(replset_url)
    try:
        hello = client.admin.command("hello")
        assert hello["setName"] == "rs0" and hello["isWritablePrimary"] is True
        assert hello["me"] in hello["hosts"] and hello["primary"] == hello["me"]
        op_time = hello["operationTime"]
        assert isinstance(op_time, Timestamp)
        assert abs(op_time.time - time.time()) < 120, "a wall-clock cluster time"
        assert hello["$clusterTime"]["clusterTime"] == op_time
        db = client["rs_times"]
        with db.c.watch(max_await_time_ms=200) as stream:
            token = stream.resume_token
            assert set(token) == {"_data"} and int(token["_data"], 16) >= 0
            db.c.insert_many([{"_id": i} for i in range(3)])
            events = [stream.next() for _ in range(3)]
        times = [e["clusterTime"] for e in events]
        assert all(isinstance(t, Timestamp) and abs(t.time - time.time()) < 120 for t in times)
        assert times == sorted(times) and len(set(times)) == 3
        assert [e["_id"]["_data"] for e in events] == sorted(e["_id"]["_data"] for e in events)
        # startAtOperationTime replays from a cluster time on
        with db.c.watch(start_at_operation_time=times[1], max_await_time_ms=200) as again:
            assert [again.next()["documentKey"]["_id"] for _ in range(2)] == [1, 2]
    finally:
        client.close()


def test_drop_database_events_and_invalidate(replset_url: str) -> None:
    client = _client(replset_url)
    try:
        db = client["rs_dropdb"]
        db.a.insert_one({"_id": 1})
        db.b.insert_one({"_id": 1})
        with db.watch(max_await_time_ms=300) as stream:
            client.drop_database("rs_dropdb")
            kinds = [stream.next() for _ in range(4)]
        assert [e["operationType"] for e in kinds] == ["drop", "drop", "dropDatabase", "invalidate"]
        assert {e["ns"]["coll"] for e in kinds[:2]} == {"a", "b"}
        assert kinds[2]["ns"] == {"db": "rs_dropdb"}
        assert set(kinds[3]) >= {"_id", "operationType", "clusterTime"}
    finally:
        client.close()


def test_history_lost_is_code_286(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pymongo.errors import OperationFailure

    from tests.support.replset import start

    server = start(tmp_path / "rs", history=20)
    client = _client(server.uri)
    try:
        coll = client["rs_lost"].c
        with coll.watch(max_await_time_ms=100) as stream:
            old = stream.resume_token
        coll.insert_many([{"_id": i} for i in range(60)])  # far more than the oplog keeps
        with (
            pytest.raises(OperationFailure) as caught,
            coll.watch(resume_after=old, max_await_time_ms=100) as lost,
        ):
            lost.try_next()
        assert caught.value.code == 286
        assert caught.value.has_error_label("NonResumableChangeStreamError")
        # a restarted server keeps its oplog: a recent token still resumes
        with coll.watch(max_await_time_ms=100) as stream:
            recent = stream.resume_token
        coll.insert_one({"_id": "after"})
        server.restart()
        client.close()
        client = _client(server.uri)
        with client["rs_lost"].c.watch(resume_after=recent, max_await_time_ms=300) as resumed:
            event = resumed.next()
        assert event["documentKey"]["_id"] == "after"
    finally:
        client.close()
        server.stop()


def test_a_gap_in_the_engines_log_is_lost_history_on_the_wire(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A write the engine logged without its change (a client that publishes none, writing to
    the server's file) is never streamed past: a stream from before it gets 286."""
    import asyncio

    from mongoeco import AsyncMongoClient
    from mongoeco.engines import SQLiteEngine
    from pymongo.errors import OperationFailure

    from tests.support.replset import start

    server = start(tmp_path / "rs")
    client = _client(server.uri)
    try:
        coll = client["rs_gap"].c
        coll.insert_one({"_id": 0})
        with coll.watch(max_await_time_ms=100) as stream:
            before = stream.resume_token

        async def plain_write() -> None:
            async with AsyncMongoClient(SQLiteEngine(str(tmp_path / "rs" / "engine.sqlite"))) as c:
                await c["rs_gap"].c.insert_one({"_id": "unlogged"})

        asyncio.run(plain_write())
        coll.insert_one({"_id": 2})
        with (
            coll.watch(resume_after=before, max_await_time_ms=300) as resumed,
            pytest.raises(OperationFailure) as caught,
        ):
            resumed.next()
        assert caught.value.code == 286
        # a stream opened after the gap streams the changes after it
        with coll.watch(max_await_time_ms=300) as after:
            coll.insert_one({"_id": 3})
            assert after.next()["documentKey"] == {"_id": 3}
    finally:
        client.close()
        server.stop()


def test_listings_are_the_engines_names_read_without_a_pass_over_the_data(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """``listCollections`` (names only) and ``listDatabases`` answer from the engine's file by
    a skip scan of its key (MongoDB reads a catalog; the engine's own listing passes over every
    document). Oracle: mongoeco's own listing queries on the same file, read after the writes."""
    import sqlite3

    import pymongo
    from mongoeco.engines._sqlite_catalog import list_collection_names, list_database_names

    from tests.support.replset import start

    server = start(tmp_path / "rs")
    client = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=10_000)
    odd = ["a", "a.b", "ab", "a b", "été", "Z", "z", "日本", "a" * 100]
    try:
        for i, name in enumerate(odd):  # implicit creation, several per database
            client["rs_names_1"][name].insert_many([{"_id": j, "n": i} for j in range(3)])
        client["rs_names_2"].create_collection("empty_explicit")  # catalog only, no documents
        client["rs_names_2"]["indexed"].create_index("k")  # an index on an empty collection
        client["rs_names_2"]["gone"].insert_one({"_id": 1})
        client["rs_names_2"].drop_collection("gone")
        client["rs_names_3"]["x"].insert_one({"_id": 1})
        client.drop_database("rs_names_3")
        client["rs_names_4"]["big"].insert_many([{"_id": i} for i in range(2_000)])

        got = {
            db: sorted(client[db].list_collection_names()) for db in client.list_database_names()
        }
        engine = sqlite3.connect(server.data / "engine.sqlite")
        try:
            want_dbs = list_database_names(engine)
            want = {db: list_collection_names(engine, db) for db in want_dbs}
        finally:
            engine.close()
        assert sorted(got) == want_dbs
        assert got == want
        assert got["rs_names_1"] == sorted(odd)
        assert "rs_names_3" not in got
        assert "gone" not in got["rs_names_2"]
        # a filter is the engine's to answer (not the fast path)
        assert client["rs_names_1"].list_collection_names(filter={"name": "ab"}) == ["ab"]
    finally:
        client.close()
        server.stop()
