"""The C conversion (``_bsonjson``) against the Python one it stands in for.

For any BSON document, ``raw_document_json`` either returns exactly the bytes
``canonical_id``/``document_json`` give for the decoded document, or ``None`` (the Python path
decides); for documents of the common types it must not give up. (MongoDB's BSON corpus is
checked in ``test_bson_corpus.py``.)
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from typing import Any

import bson
import orjson
import pytest
from bson import Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.binary import Binary
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument
from hypothesis import given, settings
from hypothesis import strategies as st

from cartridge_dagster import documents
from cartridge_dagster.connectors.mongo import open_event
from cartridge_dagster.documents import (
    DECODE_OPTIONS,
    canonical_id,
    document_json,
    raw_document_json,
)
from cartridge_dagster.warp.changes import Change, DeadLetter, Transformer
from cartridge_dagster.warp.sink import COPY_HEADER, COPY_TRAILER, CopyRows, copy_tail
from tests.support.raw_source import RAW_OPTIONS, as_raw


def python_path(raw: bytes) -> tuple[str, bytes]:
    doc = bson.decode(raw, DECODE_OPTIONS)
    return canonical_id(doc["_id"]), document_json(doc)


def negative_zero(value: Any) -> bool:
    if isinstance(value, Decimal128):
        value = value.to_decimal()
        return bool(value.is_zero() and value.is_signed())
    return isinstance(value, float) and value == 0.0 and math.copysign(1.0, value) < 0


# Values of the types the C path converts itself
finite = st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not negative_zero(f))
texts = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)))
dates = st.datetimes(
    min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999000)
).map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=dt.UTC))
plain_decimals = st.builds(
    lambda digits, exp, neg: Decimal128(f"{'-' if neg else ''}{digits}E-{exp}"),
    st.integers(0, 10**34 - 1),
    st.integers(0, 40),
    st.booleans(),
).filter(lambda d: "E" not in str(d.to_decimal()) and not negative_zero(d))  # plain: amounts
any_decimals = (
    st.decimals(allow_nan=True, allow_infinity=True, places=None)
    .filter(lambda d: not d.is_finite() or -6143 <= d.adjusted() <= 6144)
    .map(lambda d: Decimal128(d) if not d.is_finite() or len(d.as_tuple().digits) <= 34 else None)
)
fast_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    finite,
    texts,
    st.builds(ObjectId),
    dates,
    plain_decimals,
    st.uuids(),
    st.binary(max_size=40).map(lambda b: Binary(b, 0)),
    st.binary(max_size=20).map(lambda b: Binary(b, 5)),
    st.binary(min_size=16, max_size=16).map(lambda b: Binary(b, 3)),
)
other_scalars = st.one_of(
    st.floats(),
    st.text(),
    any_decimals,
    st.builds(Timestamp, st.integers(0, 2**31), st.integers(0, 2**31)),
    st.just(MinKey()),
    st.just(MaxKey()),
    st.builds(Regex, texts, st.sampled_from(["", "i", "im"])),
    st.builds(Code, texts),
    st.integers(-(2**62), 2**62).map(DatetimeMS),
)
keys = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8)


def documents_of(scalars: Any) -> Any:
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=20,
    )
    ids = st.one_of(
        st.builds(ObjectId), texts, st.integers(-(2**31), 2**31 - 1), st.integers().map(str)
    )
    fields = st.dictionaries(keys.filter(lambda k: k != "_id"), values)
    return st.builds(lambda i, rest: {"_id": i, **rest}, ids, fields)


@settings(max_examples=300, deadline=None)
@given(documents_of(fast_scalars))
def test_common_types_convert_in_c_exactly_like_python(doc: dict[str, Any]) -> None:
    raw = bson.encode(doc, codec_options=RAW_OPTIONS)
    fast = raw_document_json(raw)
    assert fast is not None, doc
    expected_id, expected = python_path(raw)
    assert fast[0] == expected_id
    assert fast[1] == expected  # the same bytes, floats included


def copy_rows_of(raws: list[bytes], max_bytes: int) -> tuple[list[Change], list[int]]:
    """``raw_copy_rows`` of a page, read back as changes, and the indexes left to Python."""
    tail = copy_tail(99, "snapshot", None)
    out = documents.raw_copy_rows(raws, tail, max_bytes)
    assert out is not None
    data, n, rest = out
    changes = CopyRows("c", COPY_HEADER + data + COPY_TRAILER, n, 99).changes()
    assert len(changes) == n == len(raws) - len(rest)
    return changes, rest


@settings(max_examples=300, deadline=None)
@given(
    st.lists(documents_of(st.one_of(fast_scalars, other_scalars)), max_size=6),
    st.integers(2, 400),
)
def test_copy_rows_hold_exactly_what_c_converts(docs: list[dict[str, Any]], limit: int) -> None:
    """A page as C's binary COPY rows: one row per document C converts within ``limit`` bytes
    of JSON (its canonical _id and JSON, as raw_document_json gives them), in order; every
    other document is named for the Python conversion."""
    raws = [bson.encode(d, codec_options=RAW_OPTIONS) for d in docs]
    changes, rest = copy_rows_of(raws, limit)
    expected = []
    for i, raw in enumerate(raws):
        fast = raw_document_json(raw)
        if fast is None or len(fast[1]) > limit:
            assert i in rest
        else:
            assert i not in rest
            expected.append(fast)
    assert [(c.id, c.document) for c in changes] == expected
    assert all((c.op, c.version, c.source_ts) == ("snapshot", 99, None) for c in changes)


@settings(max_examples=2000, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not negative_zero(f)))
def test_doubles_are_spelled_as_orjson_spells_them(value: float) -> None:
    raw = bson.encode({"_id": 1, "v": value})
    fast = raw_document_json(raw)
    assert fast is not None
    assert fast[1] == b'{"_id":1,"v":' + orjson.dumps(value) + b"}"
    assert float(json.loads(fast[1])["v"]) == value


@settings(max_examples=300, deadline=None)
@given(documents_of(st.one_of(fast_scalars, other_scalars)))
def test_any_document_converts_like_python_or_is_left_to_python(doc: dict[str, Any]) -> None:
    raw = bson.encode(doc, codec_options=RAW_OPTIONS)
    fast = raw_document_json(raw)
    if fast is None:
        return
    expected_id, expected = python_path(raw)  # C only answers when no policy is involved
    assert fast[0] == expected_id
    assert fast[1] == expected


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (dt.datetime(1, 1, 1, tzinfo=dt.UTC), '"0001-01-01T00:00:00.000Z"'),
        (
            dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
            '"1969-12-31T23:59:59.999Z"',
        ),
        (dt.datetime(1900, 2, 28, 0, 0, 0, 1000, tzinfo=dt.UTC), '"1900-02-28T00:00:00.001Z"'),
        (dt.datetime(2000, 2, 29, 12, 0, tzinfo=dt.UTC), '"2000-02-29T12:00:00.000Z"'),
        (
            dt.datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=dt.UTC),
            '"9999-12-31T23:59:59.999Z"',
        ),
        (Decimal128("0"), "0"),
        (Decimal128("0.00"), "0.00"),
        (Decimal128("0.000001"), "0.000001"),
        (Decimal128("12.50"), "12.50"),
        (Decimal128("-1234567890123456789012345678901234"), "-1234567890123456789012345678901234"),
        (
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            '"12345678-1234-5678-1234-567812345678"',
        ),
        (Binary(b"\x00\xff", 0), '"AP8="'),
        (Int64(-(2**63)), str(-(2**63))),
        (
            'tab\tquote"back\\slash\x01\x1f é ✓ 𝄞',
            '"tab\\tquote\\"back\\\\slash\\u0001\\u001f é ✓ 𝄞"',
        ),
        (0.0, "0.0"),
        (1e16, "1e+16"),
        (1e15, "1000000000000000.0"),
        (-1.5e-5, "-0.000015"),
        (1e-4, "0.0001"),
        (1e-6, "1e-6"),
        (2.5e-300, "2.5e-300"),
        (-1.7976931348623157e308, "-1.7976931348623157e+308"),
        ([], "[]"),
        ({}, "{}"),
    ],
)
def test_values(value: Any, text: str) -> None:
    raw = bson.encode({"_id": 1, "v": value}, codec_options=RAW_OPTIONS)
    fast = raw_document_json(raw)
    assert fast is not None
    assert fast == ("1", b'{"_id":1,"v":' + text.encode() + b"}")
    assert fast[1] == python_path(raw)[1]


def _invalid_utf8() -> bytes:
    good = bson.encode({"_id": 1, "s": "ab"})
    return good.replace(b"ab\x00", b"a\xff\x00")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(bson.encode({"_id": 1, "s": "nul\x00"}), id="NUL in a string"),
        pytest.param(bson.encode({"_id": 1, "f": math.nan}), id="NaN"),
        pytest.param(bson.encode({"_id": 1, "f": [math.inf]}), id="Infinity in an array"),
        pytest.param(bson.encode({"_id": 1, "d": Decimal128("NaN")}), id="Decimal128 NaN"),
        pytest.param(bson.encode({"_id": 1, "f": -0.0}), id="negative zero"),
        pytest.param(bson.encode({"_id": 1, "d": Decimal128("-0")}), id="Decimal128 -0"),
        pytest.param(bson.encode({"_id": 1, "d": Decimal128("-0.00")}), id="Decimal128 -0.00"),
        pytest.param(bson.encode({"_id": 1, "c": Code("x", {"a": 1})}), id="code with scope"),
        pytest.param(bson.encode({"_id": 1, "d": Decimal128("1E+3")}), id="exponent form"),
        pytest.param(bson.encode({"_id": 1, "d": Decimal128("1E-7")}), id="small exponent"),
        pytest.param(bson.encode({"_id": 1, "t": Timestamp(1, 2)}), id="Timestamp"),
        pytest.param(bson.encode({"_id": 1, "r": Regex("a", "i")}), id="Regex"),
        pytest.param(bson.encode({"_id": 1, "k": MinKey()}), id="MinKey"),
        pytest.param(bson.encode({"_id": 1, "b": Binary(b"xy", 2)}), id="old binary"),
        pytest.param(bson.encode({"_id": 1, "d": DatetimeMS(2**62)}), id="date out of range"),
        pytest.param(bson.encode({"_id": 1, "d": DatetimeMS(-(2**50))}), id="date before year 1"),
        pytest.param(bson.encode({"_id": {"a": 1}}), id="document _id"),
        pytest.param(bson.encode({"_id": 1.5}), id="double _id"),
        pytest.param(bson.encode({"_id": "nul\x00id"}), id="NUL in _id"),
        pytest.param(bson.encode({"x": 1}), id="no _id"),
        pytest.param(_invalid_utf8(), id="invalid UTF-8"),
        pytest.param(bson.encode({"_id": 1, "s": "x"})[:-3], id="truncated"),
        pytest.param(b"\x05\x00\x00", id="too short"),
    ],
)
def test_left_to_python(raw: bytes) -> None:
    assert raw_document_json(raw) is None


def test_depth() -> None:
    node: dict[str, Any] = {"leaf": 1}
    for i in range(150):
        node = {f"l{i}": node}
    raw = bson.encode({"_id": 1, "deep": node})
    fast = raw_document_json(raw)
    assert fast is not None and fast[1] == python_path(raw)[1]
    for i in range(100):
        node = {f"m{i}": node}
    assert raw_document_json(bson.encode({"_id": 1, "deep": node})) is None  # past 200


def test_without_the_extension_documents_still_convert(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "_bsonjson", None)
    assert raw_document_json(bson.encode({"_id": 1})) is None
    out = Transformer(_schema()).document(
        "c", as_raw({"_id": 1, "a": "x"}), op="snapshot", version=1, source_ts=None
    )
    assert isinstance(out, Change) and out.document == b'{"_id":1,"a":"x"}'


# --------------------------------------------------------------------- the transformer, raw


def _schema(**dead_letter: Any) -> Any:
    from cartridge_dagster.config import SchemaConfig

    return SchemaConfig.model_validate(
        {
            "name": "s",
            "source_database": "s",
            "target_schema": "raw_s",
            "dead_letter": dead_letter,
            "tables": {"secret": {"exclude_fields": ["card.number"]}},
        }
    )


def _same_change(doc: dict[str, Any], **dead_letter: Any) -> tuple[Any, Any, Transformer]:
    t_raw, t_dict = Transformer(_schema(**dead_letter)), Transformer(_schema(**dead_letter))
    raw = as_raw(doc)
    a = t_raw.document("c", raw, op="insert", version=7, source_ts=None)
    b = t_dict.document(
        "c", bson.decode(raw.raw, DECODE_OPTIONS), op="insert", version=7, source_ts=None
    )
    assert t_raw.stats == t_dict.stats
    return a, b, t_raw


def test_raw_documents_land_like_decoded_ones() -> None:
    doc = {
        "_id": ObjectId(),
        "n": Decimal128("9.99"),
        "when": dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
    }
    a, b, _ = _same_change(doc)
    assert isinstance(a, Change) and a == b


def test_raw_documents_get_the_value_policies() -> None:
    a, b, t = _same_change({"_id": 1, "s": "a\x00b", "f": math.nan})
    assert isinstance(a, Change) and a == b
    assert t.stats.nul_stripped == 1 and t.stats.non_finite == 1
    assert json.loads(a.document) == {"_id": 1, "s": "ab", "f": "NaN"}


def test_raw_dead_letters_keep_the_raw_bytes() -> None:
    doc = {"_id": 1, "s": "a\x00b"}
    a, b, _ = _same_change(doc, nul_in_strings="dead_letter")
    assert isinstance(a, DeadLetter) and isinstance(b, DeadLetter)
    assert a.error_message == b.error_message and "'s'" in a.error_message
    assert bson.decode(a.raw_event) == doc


def test_raw_oversized_and_excluded() -> None:
    a, _, _ = _same_change({"_id": 1, "big": "x" * 5000}, max_document_bytes=2000)
    assert isinstance(a, DeadLetter) and "over dead_letter.max_document_bytes" in a.error_message
    t = Transformer(_schema())
    out = t.document(
        "secret",
        as_raw({"_id": 1, "card": {"number": "4111", "brand": "v"}}),
        op="snapshot",
        version=1,
        source_ts=None,
    )
    assert isinstance(out, Change) and json.loads(out.document) == {
        "_id": 1,
        "card": {"brand": "v"},
    }


def test_raw_change_events() -> None:
    oid = ObjectId()
    event = {
        "_id": {"_data": "8263A"},
        "operationType": "update",
        "clusterTime": Timestamp(1_700_000_000, 3),
        "ns": {"db": "s", "coll": "c"},
        "documentKey": {"_id": oid},
        "updateDescription": {"updatedFields": {"a": 2}, "truncatedArrays": [{"field": "x"}]},
        "fullDocument": {"_id": oid, "a": 2},
    }
    opened = open_event(RawBSONDocument(bson.encode(event), RAW_OPTIONS))
    assert isinstance(opened["fullDocument"], RawBSONDocument), "the document stays raw"
    assert type(opened["_id"]) is dict and opened["_id"] == {"_data": "8263A"}
    assert type(opened["ns"]) is dict and type(opened["documentKey"]) is dict
    assert opened["updateDescription"]["truncatedArrays"] == [{"field": "x"}]
    assert type(opened["updateDescription"]["truncatedArrays"][0]) is dict
    out = Transformer(_schema()).event(opened, 5, None)
    assert isinstance(out, Change) and out.id == str(oid) and out.op == "update"
    assert json.loads(out.document) == {"_id": str(oid), "a": 2}
    plain = {"operationType": "delete"}
    assert open_event(plain) == plain and open_event(plain) is not plain, "a shallow copy"


@pytest.mark.parametrize("with_c", [True, False], ids=["C split", "field by field"])
def test_raw_event_documents(with_c: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not with_c:
        monkeypatch.setattr(documents, "_bsonjson", None)
    before = {"_id": 1, "a": 1}
    event = {
        "_id": {"_data": "x"},
        "operationType": "delete",
        "fullDocument": None,
        "fullDocumentBeforeChange": before,
        "when": dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        "regex": Regex("a.b", "i"),
        "ts": Timestamp(5, 6),
    }
    opened = open_event(RawBSONDocument(bson.encode(event), RAW_OPTIONS))
    assert opened.get("fullDocument") is None
    assert isinstance(opened["fullDocumentBeforeChange"], RawBSONDocument)
    assert bson.decode(opened["fullDocumentBeforeChange"].raw) == before
    assert opened["when"] == event["when"] and opened["when"].tzinfo is not None
    assert opened["ts"] == Timestamp(5, 6) and opened["regex"].pattern == "a.b"
    assert opened["_id"] == {"_data": "x"}


def test_split_event_rejects_malformed_bson() -> None:
    good = bson.encode({"_id": {"_data": "x"}, "fullDocument": {"a": 1}})
    assert documents.split_event(good) is not None
    assert documents.split_event(good[:-2]) is None
    assert documents.split_event(good[:4] + b"\x7e" + good[5:]) is None  # unknown type


def test_pymongo_reads_raw() -> None:
    import pymongo

    from cartridge_dagster.connectors.mongo import MongoConnection, raw_database

    client = pymongo.AsyncMongoClient("mongodb://127.0.0.1:1", connect=False, tz_aware=True)
    db = raw_database(MongoConnection("pymongo", client, "x"), "s")
    assert db.codec_options.document_class is RawBSONDocument
    assert db.codec_options.tz_aware
    conn = MongoConnection("pymongo", client, "x")
    assert conn.watch("s", raw_documents=True)._raw
    assert not conn.watch(None, raw_documents=True)._raw, "deployment-wide streams stay dicts"
