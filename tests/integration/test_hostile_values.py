"""Hostile values stop neither a scan nor a snapshot, on any source, and land as the contract says.

Every policy case of the landing contract (docs/warp.md) sits in the collections *before* the
scan and the snapshot (NaN and ±Infinity among them: the embedded engine's SQLite used to refuse
every sorted or filtered read of such a collection). The oracle is literal: the JSON each
document must land as, and the dead letter the oversized one must become.

The ``source`` fixture runs this on the embedded engine, on the embedded engine read as raw BSON
(PyMongo's path: the C conversion and its fallbacks) and on a replica set where there is one.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from bson import Binary, Code, DBRef, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.datetime_ms import DatetimeMS

from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.identifiers import qualified
from cartridge_dagster.init.scan import scan_mongo
from tests.conftest import run
from tests.support.cli import cartridge
from tests.support.replset import is_test_server
from tests.support.warp import dead_letters, run_warp, warp_settings

pytestmark = pytest.mark.integration

OID = ObjectId("64b7f0c2a1b2c3d4e5f60718")
UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"leaf": levels}
    for i in range(levels):
        node = {f"l{i}": node}
    return node


def _documents(embedded: bool, wide_dates: bool) -> list[tuple[dict[str, Any], Any]]:
    """(document, what it lands as); ``None``: it becomes a dead letter. ``wide_dates``: the
    source stores dates past year 9999 (a real server; not the embedded engine, nor the
    replica-set test server, which keeps its data in it)."""
    cases: list[tuple[dict[str, Any], Any]] = [
        (
            {"_id": 1, "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "a": [math.nan, 1.5]},
            {"_id": 1, "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "a": ["NaN", 1.5]},
        ),
        (
            {
                "_id": 2,
                "d": Decimal128("NaN"),
                "di": Decimal128("-Infinity"),
                "z": -0.0,
                "dz": Decimal128("-0.00"),
                "money": Decimal128("12.50"),
                "huge": Decimal128("1E+6144"),
            },
            {
                "_id": 2,
                "d": "NaN",
                "di": "-Infinity",
                "z": Decimal("0"),
                "dz": Decimal("0.00"),
                "money": Decimal("12.50"),
                "huge": Decimal("1E+6144"),
            },
        ),
        (
            {
                "_id": 3,
                "s": "a\x00b",
                "code": Code("f(x)", {"x": 1}),
                "js": Code("g()"),
                "re": Regex("^a.b", "mi"),
                "ref": DBRef("customers", OID, "shop", note="vip"),
                "keys": [MinKey(), MaxKey()],
                "ts": Timestamp(1_700_000_000, 7),
                "uuid": UUID,
                "bin": Binary(b"\x00\x01\xff", 0),
                "long": Int64(2**62),
                "when": dt.datetime(1969, 7, 20, 20, 17, 40, tzinfo=dt.UTC),
            },
            {
                "_id": 3,
                "s": "ab",
                "code": {"$code": "f(x)", "$scope": {"x": 1}},
                "js": "g()",
                "re": {"$regex": "^a.b", "$options": "im"},
                "ref": {"$ref": "customers", "$id": str(OID), "$db": "shop", "note": "vip"},
                "keys": [{"$minKey": 1}, {"$maxKey": 1}],
                "ts": {"t": 1_700_000_000, "i": 7},
                "uuid": str(UUID),
                "bin": "AAH/",
                "long": 2**62,
                "when": "1969-07-20T20:17:40.000Z",
            },
        ),
        ({"_id": "deep", "deep": _deep(120)}, {"_id": "deep", "deep": _deep(120)}),
        ({"_id": {"a": 1, "b": "x"}, "v": 1}, {"_id": {"a": 1, "b": "x"}, "v": 1}),
        ({"_id": OID, "big": "x" * 6000}, None),
    ]
    if embedded:  # a NUL in a field name: only the embedded engine can store one
        cases.append(
            ({"_id": 4, "k\x00ey": 1, "key": 2}, {"_id": 4, "key~nul": 1, "key": 2}),
        )
    if wide_dates:
        cases.append(
            (
                {"_id": 5, "far": DatetimeMS(253402300800000), "ok": DatetimeMS(0)},
                {"_id": 5, "far": "253402300800000ms", "ok": "1970-01-01T00:00:00.000Z"},
            )
        )
    return cases


def _canonical(value: Any) -> Any:
    """Numbers as Decimal, for comparing with what jsonb gives back."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | Decimal):
        return value
    return Decimal(repr(value))


def test_hostile_values_are_scanned_and_snapshotted(
    source: str, pg_url: str, mongo_db_name: str
) -> None:
    embedded = source.startswith("mongoeco:")
    cases = _documents(embedded, wide_dates=not embedded and not is_test_server(source))
    settings = warp_settings(
        source, pg_url, mongo_db_name, schema={"dead_letter": {"max_document_bytes": 4096}}
    )

    async def go() -> None:
        async with mongo_session(source) as conn:
            coll = conn.database(mongo_db_name).hostile
            for doc, _ in cases:
                await coll.insert_one(doc)
            await conn.database(mongo_db_name).plain.insert_many(
                [{"_id": i, "n": math.nan if i == 7 else i} for i in range(40)]
            )
            for full_scan_below in (1000, 3):  # read whole, then seeded sampling
                cfg = settings_from_mapping(
                    {
                        "source": {"connection_string": source},
                        "schemas": [
                            {
                                "name": "shop",
                                "source_database": mongo_db_name,
                                "sampling": {
                                    "full_scan_below": full_scan_below,
                                    "sample_size": 4,
                                    "max_sample_size": 40,
                                },
                            }
                        ],
                    }
                ).get_schema("shop")
                scanned = await scan_mongo(conn, cfg)
                hostile = scanned.collections["hostile"]
                assert {"nan", "d", "code", "deep"} <= {
                    f["path"][0] for f in hostile["fields"].values()
                }
                assert scanned.collections["plain"]["documents_total"] == 40
        summary = await run_warp(settings)
        assert summary is not None
        conn = await asyncpg.connect(pg_url)
        try:
            rows = await conn.fetch(
                f"SELECT _id, document::text AS doc FROM {qualified('raw_shop', 'hostile')}"
            )
            plain = await conn.fetchval(f"SELECT count(*) FROM {qualified('raw_shop', 'plain')}")
        finally:
            await conn.close()
        landed = {
            r["_id"]: json.loads(r["doc"], parse_float=Decimal, parse_int=Decimal) for r in rows
        }
        expected = {
            json.dumps(doc["_id"], sort_keys=True, separators=(",", ":"))
            if isinstance(doc["_id"], dict)
            else str(doc["_id"]): _canonical(out)
            for doc, out in cases
            if out is not None
        }
        assert landed == expected
        assert plain == 40
        letters = await dead_letters(pg_url)
        assert [(r["collection"], r["document_id"]) for r in letters] == [("hostile", str(OID))]
        assert "max_document_bytes" in letters[0]["error_message"]

    run(go())


def test_the_cli_scans_and_snapshots_a_collection_holding_nan(tmp_path: Any, pg_url: str) -> None:
    """The issue's symptom, as a user meets it: `cartridge scan` and `cartridge warp run` on a
    collection holding NaN and ±Infinity (embedded engine) exit 0, without a traceback."""
    url = f"mongoeco://{tmp_path / 'source.sqlite'}"
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        json.dumps(
            {
                "source": {"connection_string": url},
                "destination": {"connection_string": pg_url},
                "state_dir": str(tmp_path / "state"),
                "schemas": [
                    {"name": "shop", "source_database": "shop", "warp": {"metrics_port": 0}}
                ],
            }
        )
    )

    async def seed() -> None:
        async with mongo_session(url) as conn:
            await conn.database("shop").readings.insert_many(
                [{"_id": i, "v": [math.nan, math.inf, -math.inf, 1.0][i % 4]} for i in range(30)]
            )

    run(seed())
    scan = cartridge("scan", "--config", str(config))
    assert scan.returncode == 0 and "Traceback" not in scan.stderr, scan.stdout + scan.stderr
    assert "new version v0001" in scan.stdout
    warp = cartridge("warp", "run", "--config", str(config), "--stop-when-idle", "1")
    assert warp.returncode == 0 and "Traceback" not in warp.stderr, warp.stdout + warp.stderr

    async def landed() -> list[Any]:
        conn = await asyncpg.connect(pg_url)
        try:
            return list(await conn.fetch("SELECT document->'v' AS v FROM raw_shop.readings"))
        finally:
            await conn.close()

    values = sorted(str(r["v"]) for r in run(landed()))
    assert values == sorted(
        ['"NaN"', '"Infinity"', '"-Infinity"', "1.0"] * 7 + ['"NaN"', '"Infinity"']
    )
