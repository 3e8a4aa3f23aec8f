"""Batched reads by ``_id`` from the embedded engine's file, against its own ``find_one``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from bson import Decimal128, ObjectId

from cartridge_dagster.analytics.reconcile import _Sides
from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.connectors.mongoeco_documents import BATCH, storage_key
from cartridge_dagster.documents import canonical_id
from tests.conftest import run
from tests.support.raw_tables import shop_config

pytestmark = pytest.mark.integration

TWIN = ObjectId()


def _docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {
            "_id": ObjectId(),
            "n": i,
            "price": Decimal128(f"{i}.10"),
            "at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i),
            "nested": {"tags": ["a", None, i], "ünï": {"x": [1.5, "2"]}},
        }
        for i in range(BATCH + 20)  # more than one batch
    ]
    docs += [
        {"_id": "plain-string", "v": 1},
        {"_id": TWIN, "v": "the ObjectId"},
        {"_id": str(TWIN), "v": "the string that looks like it"},
        {"_id": 42, "v": "an int id: find_one"},
        {"_id": {"a": 1}, "v": "a document id: find_one"},
    ]
    return docs


async def _read(tmp_path: Path, pg_url: str) -> dict[str, Any]:
    url = f"mongoeco://{tmp_path / 'src.sqlite'}"
    settings = settings_from_mapping(shop_config(tmp_path, url, pg_url, "shop"))
    schema = settings.get_schema("shop")
    conn = await asyncpg.connect(pg_url)
    try:
        async with mongo_session(url) as mongo:
            coll = mongo.database("shop")["orders"]
            await coll.insert_many(_docs())
            ids = [canonical_id(d["_id"]) for d in _docs()[:3]]  # fresh ObjectIds: not stored
            ids = [canonical_id(d["_id"]) async for d in coll.find({})] + ["absent", *ids]
            batched = _Sides(mongo, conn, schema, "orders")
            assert batched.reader is not None
            stored = await batched._read_stored(ids)
            by_key = _Sides(mongo, conn, schema, "orders")
            by_key.reader = None  # find_one only, as before
            return {
                "ids": ids,
                "stored": stored,
                "batched": await batched.source_by_ids(ids),
                "by_key": await by_key.source_by_ids(ids),
            }
    finally:
        await conn.close()


def test_batched_reads_give_what_find_one_gives(tmp_path: Path, pg_url: str) -> None:
    out = run(_read(tmp_path, pg_url))
    assert out["batched"] == out["by_key"]
    assert len(out["by_key"]) == BATCH + 20 + 4  # the twins share one canonical id
    assert "absent" not in out["batched"]
    # read from the file: ObjectIds and strings; the int and document ids are left to find_one
    stored = out["stored"]
    assert len(stored) == BATCH + 20 + 2
    assert "42" not in stored and "plain-string" in stored
    # of the twins, the ObjectId is the one compared (as find_one answers)
    assert stored[str(TWIN)] == out["by_key"][str(TWIN)]


def test_storage_keys_only_for_plain_ids() -> None:
    oid = ObjectId()
    assert storage_key(oid) is not None and str(oid) in str(storage_key(oid))
    assert storage_key("x") != storage_key(oid)
    assert storage_key(42) is None and storage_key({"a": 1}) is None


def test_scan_reads_ids_and_sample_from_the_file_with_the_same_result(tmp_path: Path) -> None:
    """The scan's seeded sample on the embedded engine reads the ids and the sampled documents
    from its file: the same ranks, the same documents and the same schema, byte for byte, as
    through the engine's own find (mixed id types, ids only find_one can read)."""
    import json

    from cartridge_dagster.config import SchemaConfig
    from cartridge_dagster.init import scan

    schema = SchemaConfig.model_validate(
        {
            "name": "shop",
            "source_database": "shop",
            "target_schema": "raw_shop",
            "sampling": {"full_scan_below": 10, "sample_size": 200, "max_sample_size": 400},
        }
    )

    async def go() -> None:
        async with mongo_session(f"mongoeco://{tmp_path / 'src.sqlite'}") as mongo:
            db = mongo.database("shop")
            await db["orders"].insert_many(_docs())
            reader = mongo.document_reader()
            assert reader is not None
            stored = reader.ids("shop", "orders")
            assert stored is not None
            found = [d["_id"] async for d in db["orders"].find({}, {"_id": 1})]
            key = [(type(i).__name__, canonical_id(i)) for i in found]
            assert sorted((type(i).__name__, canonical_id(i)) for i in stored) == sorted(key)
            by_file = await scan._lowest_ranks(db["orders"], "orders", 400, reader)
            by_find = await scan._lowest_ranks(db["orders"], "orders", 400)
            assert by_file == by_find
            with_reader, prof_r = await scan.scan_collection(db, schema, "orders", reader=reader)
            without, prof_f = await scan.scan_collection(db, schema, "orders")
            assert with_reader["sampling"]["method"] == "sample"
            assert prof_r.documents == prof_f.documents == 400
            text = json.dumps(with_reader, sort_keys=True, default=str)
            assert text == json.dumps(without, sort_keys=True, default=str)

    run(go())


def test_random_sample_from_the_file_decodes_as_the_engine(tmp_path: Path) -> None:
    """The catalog's size sample on the embedded engine is picked in its file: every document
    it returns is the engine's own (``find``), and a sample as large as the collection is it."""
    import bson

    from cartridge_dagster.connectors.mongo import bson_options
    from cartridge_dagster.init.catalog import _avg_size

    def key(doc: dict[str, Any]) -> bytes:
        return bson.encode(doc, codec_options=bson_options())

    async def go() -> None:
        async with mongo_session(f"mongoeco://{tmp_path / 'src.sqlite'}") as mongo:
            coll = mongo.database("shop")["orders"]
            await coll.insert_many(_docs())
            reader = mongo.document_reader()
            assert reader is not None
            everything = sorted([key(d) async for d in coll.find({})])
            whole = reader.sample("shop", "orders", len(everything) + 10)
            assert whole is not None and sorted(key(d) for d in whole) == everything
            few = reader.sample("shop", "orders", 7)
            assert few is not None and len(few) == 7 and {key(d) for d in few} <= set(everything)
            exact = sum(len(b) for b in everything) // len(everything)
            assert abs(await _avg_size(coll, reader) - exact) <= exact  # 200 of 525, same scale
            assert await _avg_size(mongo.database("shop")["empty"], reader) == 0

    run(go())
