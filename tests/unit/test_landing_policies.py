"""Policy cases of the landing contract (docs/warp.md) with literal expected values.

NUL-stripped field names never overwrite another field; rare BSON types keep what they carry
(DBRef ``$db`` and extra fields, code with its scope, regex options as MongoDB's letters); and
every change a policy makes is counted per collection and field path.
"""

from __future__ import annotations

import math
import re
from typing import Any

import bson
import orjson
import pytest
from bson import Code, DBRef, Decimal128, Int64, Regex
from bson.datetime_ms import DatetimeMS
from bson.raw_bson import RawBSONDocument

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.documents import (
    ConversionStats,
    UnlandableDocument,
    ValuePolicy,
    document_json,
)
from cartridge_dagster.warp.changes import Change, DeadLetter, Transformer


def land(doc: dict[str, Any], **policy: Any) -> tuple[bytes, dict[str, dict[str, int]]]:
    stats = ConversionStats()
    return document_json(doc, ValuePolicy(**policy), stats), stats.as_dict()


@pytest.mark.parametrize(
    ("doc", "landed", "counts"),
    [
        pytest.param(
            {"key": 1, "k\x00ey": 2},
            b'{"key":1,"key~nul":2}',
            {"nul_key_renamed": {"key~nul": 1}},
            id="the plain field keeps its name",
        ),
        pytest.param(
            {"k\x00ey": 2, "key": 1},
            b'{"key~nul":2,"key":1}',
            {"nul_key_renamed": {"key~nul": 1}},
            id="whatever the order",
        ),
        pytest.param(
            {"k\x00ey": 1, "ke\x00y": 2},
            b'{"key":1,"key~nul":2}',
            {"nul_key_stripped": {"key": 1}, "nul_key_renamed": {"key~nul": 1}},
            id="two stripped names",
        ),
        pytest.param(
            {"key": 0, "key~nul": 9, "k\x00ey": 1},
            b'{"key":0,"key~nul":9,"key~nul2":1}',
            {"nul_key_renamed": {"key~nul2": 1}},
            id="the suffix too is taken",
        ),
        pytest.param(
            {"_id": 1, "_i\x00d": 2},
            b'{"_id":1,"_id~nul":2}',
            {"nul_key_renamed": {"_id~nul": 1}},
            id="never the _id",
        ),
        pytest.param(
            {"a": [{"x": 1, "\x00x": 2}]},
            b'{"a":[{"x":1,"x~nul":2}]}',
            {"nul_key_renamed": {"a[].x~nul": 1}},
            id="nested in an array",
        ),
        pytest.param(
            {"n\x00ame": "v\x00al"},
            b'{"name":"val"}',
            {"nul_stripped": {"name": 1}, "nul_key_stripped": {"name": 1}},
            id="no collision: stripped",
        ),
    ],
)
def test_nul_in_field_names(doc: dict[str, Any], landed: bytes, counts: Any) -> None:
    assert land(doc) == (landed, counts)


def test_nul_in_a_field_name_can_be_a_dead_letter() -> None:
    with pytest.raises(UnlandableDocument) as caught:
        land({"a": {"k\x00ey": 1}}, nul_in_strings="dead_letter")
    assert caught.value.reason == "nul_in_key" and caught.value.path == "a"
    assert "'k\\x00ey'" in str(caught.value) and "'a'" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "landed", "counts"),
    [
        (math.nan, b'"NaN"', {"non_finite": {"v": 1}}),
        (-math.inf, b'"-Infinity"', {"non_finite": {"v": 1}}),
        (Decimal128("-Infinity"), b'"-Infinity"', {"non_finite": {"v": 1}}),
        (Decimal128("NaN"), b'"NaN"', {"non_finite": {"v": 1}}),
        (-0.0, b"0.0", {"negative_zero": {"v": 1}}),
        (Decimal128("-0E+3"), b"0E+3", {"negative_zero": {"v": 1}}),
        (DatetimeMS(253402300800000), b'"253402300800000ms"', {"date_out_of_range": {"v": 1}}),
        (DatetimeMS(-62135596800001), b'"-62135596800001ms"', {"date_out_of_range": {"v": 1}}),
        ("a\x00b", b'"ab"', {"nul_stripped": {"v": 1}}),
        (Regex("a.b", "mix"), b'{"$regex":"a.b","$options":"imx"}', {}),
        (re.compile("a", re.IGNORECASE | re.DOTALL), b'{"$regex":"a","$options":"is"}', {}),
        (Regex("a\x00", "u"), b'{"$regex":"a","$options":"u"}', {"nul_stripped": {"v": 1}}),
        (Code("f()"), b'"f()"', {}),
        (
            Code("f(x)", {"x": Int64(1), "s": "\x00"}),
            b'{"$code":"f(x)","$scope":{"x":1,"s":""}}',
            {"nul_stripped": {"v.$scope.s": 1}},
        ),
        (
            DBRef("coll", 42, "db", foo="bar", n=Decimal128("1.50")),
            b'{"$ref":"coll","$id":42,"$db":"db","foo":"bar","n":1.50}',
            {},
        ),
        (DBRef("coll", "x"), b'{"$ref":"coll","$id":"x"}', {}),
    ],
)
def test_policy_values(value: Any, landed: bytes, counts: Any) -> None:
    assert land({"v": value}) == (b'{"v":' + landed + b"}", counts)


def test_non_finite_as_null() -> None:
    assert land({"v": [math.inf]}, non_finite_numbers="null") == (
        b'{"v":[null]}',
        {"non_finite": {"v[]": 1}},
    )


def _schema(**dead_letter: Any) -> SchemaConfig:
    return SchemaConfig.model_validate(
        {"name": "s", "source_database": "s", "target_schema": "raw_s", "dead_letter": dead_letter}
    )


def test_transformer_counts_per_collection_and_path() -> None:
    t = Transformer(_schema())
    a = t.document("a", {"_id": 1, "k\x00": 1, "k": 2}, op="insert", version=1, source_ts=None)
    b = t.document("b", {"_id": 2, "f": math.nan}, op="insert", version=2, source_ts=None)
    c = t.document("b", {"_id": 3, "f": [math.inf]}, op="insert", version=3, source_ts=None)
    assert isinstance(a, Change) and orjson.loads(a.document or b"") == {
        "_id": 1,
        "k~nul": 1,
        "k": 2,
    }
    assert isinstance(b, Change) and isinstance(c, Change)
    assert {n: s.as_dict() for n, s in t.collection_stats.items()} == {
        "a": {"nul_key_renamed": {"k~nul": 1}},
        "b": {"non_finite": {"f": 1, "f[]": 1}},
    }
    assert t.stats.non_finite == 2 and t.stats.nul_stripped == 1
    taken = t.take_stats()
    assert set(taken) == {"a", "b"} and not t.collection_stats and not t.stats


def test_a_dead_letter_counts_nothing() -> None:
    t = Transformer(_schema(max_document_bytes=1024))
    out = t.document(
        "a", {"_id": 1, "s": "\x00" + "x" * 2000}, op="insert", version=1, source_ts=None
    )
    assert isinstance(out, DeadLetter) and "max_document_bytes" in out.error_message
    assert not t.stats
    dead = Transformer(_schema(nul_in_strings="dead_letter")).document(
        "a", {"_id": 1, "p": {"k\x00": 1}}, op="insert", version=1, source_ts=None
    )
    assert isinstance(dead, DeadLetter) and dead.error_class == "UnlandableDocument"
    assert "NUL" in dead.error_message and dead.document_id == "1"


def test_the_raw_path_counts_like_the_dict_path() -> None:
    doc = {"_id": 1, "f": -0.0, "d": Decimal128("-0"), "r": Regex("x", "i")}
    raw = RawBSONDocument(bson.encode(doc))
    t_raw, t_dict = Transformer(_schema()), Transformer(_schema())
    a = t_raw.document("c", raw, op="snapshot", version=1, source_ts=None)
    b = t_dict.document("c", doc, op="snapshot", version=1, source_ts=None)
    assert isinstance(a, Change) and a == b
    assert a.document == b'{"_id":1,"f":0.0,"d":0,"r":{"$regex":"x","$options":"i"}}'
    assert t_raw.stats == t_dict.stats and t_raw.stats.total("negative_zero") == 2
