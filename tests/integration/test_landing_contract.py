"""MongoDB's BSON corpus into a real PostgreSQL: what lands is stored, and still means the same.

Every valid case's landed JSON goes into a ``jsonb`` column and is read back; the oracle of
``tests/support/bson_corpus.py`` (the case's own Extended JSON, read by hand) checks what
PostgreSQL kept. The same cases go through a replica set over TCP and warp's snapshot (the
PyMongo path end to end). Every ``decodeErrors`` case that the driver would hand over reaches
``cartridge_warp.dead_letters`` through the sink, with its reason and its exact bytes.
"""

from __future__ import annotations

import json
from decimal import Decimal

import asyncpg
import bson
import pytest
from bson.raw_bson import RawBSONDocument

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.documents import DECODE_OPTIONS, RAW_OPTIONS, document_json
from cartridge_dagster.warp.changes import DeadLetter, Transformer
from cartridge_dagster.warp.sink import Batch, Sink
from tests.conftest import run
from tests.support.bson_corpus import check_meaning, decode_errors, expect, valid_cases, with_id
from tests.support.replset import is_test_server
from tests.support.warp import run_warp, warp_settings

pytestmark = pytest.mark.integration


def test_every_valid_case_is_stored_by_jsonb_with_its_meaning(pg_url: str) -> None:
    cases = valid_cases()
    landed = [document_json(bson.decode(c.bson, DECODE_OPTIONS)) for c in cases]

    async def go() -> list[str]:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("CREATE TABLE corpus (n int PRIMARY KEY, doc jsonb NOT NULL)")
            await conn.executemany(
                "INSERT INTO corpus VALUES ($1, $2::jsonb)",
                [(i, body.decode()) for i, body in enumerate(landed)],
            )
            rows = await conn.fetch("SELECT doc::text FROM corpus ORDER BY n")
            return [r[0] for r in rows]
        finally:
            await conn.close()

    stored = run(go())
    assert len(stored) == len(cases) >= 728
    for case, text in zip(cases, stored, strict=True):
        try:
            check_meaning(
                expect(case.extjson).tree,
                json.loads(text, parse_float=Decimal, parse_int=Decimal),
                stored=True,
            )
        except AssertionError as exc:
            raise AssertionError(f"{case.id}: {exc}") from None


def test_decode_errors_reach_the_dead_letter_table(pg_url: str) -> None:
    cfg = SchemaConfig(name="shop", source_database="shop", target_schema="raw_shop")
    transformer = Transformer(cfg)
    letters: list[DeadLetter] = []
    for i, case in enumerate(decode_errors()):
        for raw in (case.bson, with_id(case.bson)):
            try:
                document = RawBSONDocument(raw, RAW_OPTIONS)
            except bson.errors.InvalidBSON:
                continue  # PyMongo refuses to hand this over as a document
            out = transformer.document(
                "hostile", document, op="snapshot", version=i + 1, source_ts=None
            )
            assert isinstance(out, DeadLetter), case.id
            letters.append(out)
    assert len(letters) >= 40

    async def go() -> list[asyncpg.Record]:
        sink = Sink(pg_url, cfg, owner="test")
        await sink.setup()
        await sink.acquire()
        try:
            await sink.apply(
                Batch(dead=letters, token={"_data": "1"}, version=1, events=len(letters))
            )
        finally:
            await sink.close()
        conn = await asyncpg.connect(pg_url)
        try:
            return list(
                await conn.fetch(
                    "SELECT collection, error_class, error_message, raw_event, status "
                    "FROM cartridge_warp.dead_letters ORDER BY id"
                )
            )
        finally:
            await conn.close()

    rows = run(go())
    assert len(rows) == len(letters)
    for row, letter in zip(rows, letters, strict=True):
        assert row["collection"] == "hostile" and row["status"] == "pending"
        assert row["error_class"] == "UnlandableDocument"
        assert row["error_message"].startswith("the document is not valid BSON")
        assert bytes(row["raw_event"]) == letter.raw_event


def test_the_corpus_over_the_wire_lands_with_its_meaning(
    replset_url: str, pg_url: str, mongo_db_name: str
) -> None:
    """PyMongo's path end to end: every valid case (without an ``_id`` of its own) is inserted
    as raw BSON into a replica set, snapshotted by warp over TCP (``RawBSONDocument`` → the C
    conversion or its Python fallback → the sink) and read back from ``jsonb``."""
    cases = [c for c in valid_cases() if "_id" not in json.loads(c.extjson)]
    if is_test_server(replset_url):
        # the test server keeps its data in the embedded engine, which cannot store a date
        # past year 9999 (a real server does; the unit corpus test covers its conversion)
        cases = [c for c in cases if c.id != "datetime: Y10K"]
    assert len(cases) >= 700

    async def go() -> dict[str, str]:
        async with mongo_session(replset_url) as conn:
            coll = conn.database(mongo_db_name).corpus
            for i, case in enumerate(cases):
                await coll.insert_one(RawBSONDocument(with_id(case.bson, i), RAW_OPTIONS))
        await run_warp(warp_settings(replset_url, pg_url, mongo_db_name))
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch("SELECT _id, document::text AS doc FROM raw_shop.corpus")
        finally:
            await conn.close()
        return {r["_id"]: r["doc"] for r in rows}

    landed = run(go())
    assert sorted(landed, key=int) == [str(i) for i in range(len(cases))]
    for i, case in enumerate(cases):
        doc = json.loads(landed[str(i)], parse_float=Decimal, parse_int=Decimal)
        assert doc.pop("_id") == i
        try:
            check_meaning(expect(case.extjson).tree, doc, stored=True)
        except AssertionError as exc:
            raise AssertionError(f"{case.id}: {exc}") from None
