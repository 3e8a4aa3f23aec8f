"""Inference core: per-path statistics, derived facts, hostile names, determinism."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from decimal import Decimal

import pytest
from bson import Decimal128, Int64, ObjectId
from hypothesis import given
from hypothesis import strategies as st

from cartridge_dagster.identifiers import MAX_IDENTIFIER_BYTES
from cartridge_dagster.init.inference import (
    InferenceOptions,
    Profiler,
    finalize,
    join_path,
    split_path,
    sql_type_for,
)
from cartridge_dagster.init.naming import (
    child_model_name,
    staging_model_name,
    staging_schema_name,
)


def _infer(docs, **options):  # type: ignore[no-untyped-def]
    profiler = Profiler(InferenceOptions(**options))
    profiler.add_many(docs)
    return finalize("c", profiler, total_documents=len(docs), method="full", rounds=1)


def test_type_histogram_presence_nulls_and_ranges() -> None:
    docs = [
        {"_id": 1, "n": 1, "s": "ab", "when": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)},
        {"_id": 2, "n": Int64(2**40), "s": None},
        {"_id": 3, "n": 2.5, "s": "abcd", "when": dt.datetime(2026, 3, 4)},
        {"_id": 4, "n": Decimal128("7.25")},
    ]
    schema = _infer(docs)
    n = schema["fields"]["n"]
    assert n["types"] == {"decimal": 1, "double": 1, "int": 1, "long": 1}
    assert n["presence"] == 1.0 and n["required"]
    assert n["min"] == 1 and n["max"] == 2**40
    s = schema["fields"]["s"]
    assert s["types"] == {"null": 1, "string": 2}
    assert s["presence"] == 0.75 and s["null_ratio"] == round(1 / 3, 4)
    assert s["string_length"] == {"min": 2, "max": 4, "mean": 3.0}
    assert not s["required"] and s["nullable"]
    when = schema["fields"]["when"]
    assert when["min"] == "2026-01-02T00:00:00.000Z" and when["max"] == "2026-03-04T00:00:00.000Z"
    assert schema["columns"]["n"]["sql_type"] == "numeric"
    assert schema["timestamps"] == ["when"] and schema["incremental_key"] == "when"


def test_arrays_objects_child_models_and_depth() -> None:
    docs = [
        {
            "_id": i,
            "address": {"city": "Lisbon", "geo": {"lat": 1.5}},
            "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2, "extra": {"x": 1}}][
                : i % 2 + 1
            ],
            "tags": ["x", "y"][: i % 3],
            "deep": {"a": {"b": {"c": {"d": 1}}}},
        }
        for i in range(20)
    ]
    schema = _infer(docs, max_depth=3)
    cols = schema["columns"]
    assert cols["address.city"]["column"] == "address__city"
    assert cols["address.geo.lat"]["sql_type"] == "double precision"
    assert cols["tags"]["sql_type"] == "jsonb"
    items = schema["fields"]["items"]
    assert items["array"]["element_types"] == {"object": 30}
    assert items["array"]["min_length"] == 1 and items["array"]["max_length"] == 2
    assert "items" in schema["arrays"] and "items" not in cols
    child = schema["arrays"]["items"]["columns"]
    assert {c["column"] for c in child.values()} == {"sku", "qty", "extra"}
    assert child["items.[].extra"]["sql_type"] == "jsonb"  # below max_depth: kept whole
    assert schema["fields"]["items.[].sku"]["presence"] == 1.0
    assert schema["fields"]["items.[].extra"]["presence"] == 0.3333
    # depth 3: deep.a.b is recorded as an object, nothing below it
    assert "deep.a.b" in schema["fields"] and "deep.a.b.c" not in schema["fields"]
    assert schema["columns"]["deep.a.b"]["sql_type"] == "jsonb"
    deeper = _infer(docs)["arrays"]["items"]["columns"]
    assert {c["column"] for c in deeper.values()} == {"sku", "qty", "extra__x"}


def test_enums_examples_and_sensitive_redaction() -> None:
    docs = [
        {"_id": i, "tier": ["gold", "silver"][i % 2], "email": f"u{i}@x.io", "n": i}
        for i in range(30)
    ]
    schema = _infer(docs, sensitive_fields=("email",), example_values=2)
    assert schema["fields"]["tier"]["enum"] == ["gold", "silver"]
    assert schema["fields"]["tier"]["examples"] == ["gold", "silver"]
    email = schema["fields"]["email"]
    assert email["sensitive"] and "examples" not in email and "enum" not in email
    assert "@" not in json.dumps(schema)
    assert schema["fields"]["n"]["distinct"] == 30 and schema["fields"]["n"]["distinct_exact"]


def test_distinct_cap_estimates() -> None:
    schema = _infer([{"_id": i, "v": i} for i in range(500)], distinct_cap=100)
    v = schema["fields"]["v"]
    assert not v["distinct_exact"] and v["distinct"] >= 100


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ({"int"}, "integer"),
        ({"int", "long"}, "bigint"),
        ({"int", "double"}, "double precision"),
        ({"double", "decimal"}, "numeric"),
        ({"string"}, "text"),
        ({"bool"}, "boolean"),
        ({"date"}, "timestamptz"),
        ({"objectId"}, "text"),
        ({"uuid"}, "uuid"),
        ({"object", "string"}, "jsonb"),
        ({"bool", "string"}, "text"),
        (set(), "text"),
    ],
)
def test_sql_types(types: set[str], expected: str) -> None:
    assert sql_type_for(types) == expected


def test_drifting_types_choose_guarded_columns() -> None:
    docs = [{"_id": 1, "amount": 1.5, "zip": 1234}, {"_id": 2, "amount": "2.50", "zip": "1234-567"}]
    cols = _infer(docs)["columns"]
    assert cols["amount"]["sql_type"] == "numeric"  # numeric strings: cast, guarded
    assert cols["zip"]["sql_type"] == "text"  # a non-numeric string: text holds all


def test_type_overrides() -> None:
    cols = _infer([{"_id": 1, "a": {"b": 1}}], type_overrides={"a.b": "text"})["columns"]
    assert cols["a.b"]["sql_type"] == "text"


HOSTILE = [
    "a.b",
    "$type",
    'quo"te',
    "sp ace",
    "Größe",
    "select",
    "Name",
    "name",
    "x" * 80,
    "x" * 81,
    "_id_",
    "_cartridge_deleted",
    "日本",
    "",
]


def test_hostile_field_names_get_unique_stable_columns() -> None:
    doc = {"_id": 1, **dict.fromkeys(HOSTILE, 1)}
    first = _infer([doc])["columns"]
    again = _infer([dict(reversed(list(doc.items())))])["columns"]
    assert first == again
    names = [c["column"] for c in first.values()]
    assert len(names) == len(HOSTILE)
    assert len({n.lower() for n in names}) == len(names)
    assert all(0 < len(n.encode()) <= MAX_IDENTIFIER_BYTES for n in names)
    assert "_cartridge_deleted" not in names and "_id" not in names
    assert first[join_path(["a.b"])]["path"] == ["a.b"]


@given(st.lists(st.text(min_size=0, max_size=8), min_size=1, max_size=5))
def test_path_round_trip(segments: list[str]) -> None:
    assert split_path(join_path(segments)) == segments


def test_finalize_is_deterministic_bytes() -> None:
    docs = [
        {"_id": ObjectId(bytes([i] * 12)), "u": uuid.UUID(int=i), "d": Decimal128(Decimal(i))}
        for i in range(50)
    ]
    a = json.dumps(_infer(docs), sort_keys=True)
    b = json.dumps(_infer(list(reversed(docs))), sort_keys=True)
    assert a == b


def test_model_names() -> None:
    assert staging_model_name("shop", "orders") == "stg_shop__orders"
    assert staging_model_name("shop", "Orders") != staging_model_name("shop", "orders")
    assert child_model_name("shop", "orders", "items") == "stg_shop__orders__items"
    long = staging_model_name("shop", "c" * 100)
    assert len(long) <= 63 and long == staging_model_name("shop", "c" * 100)
    assert staging_model_name("shop", "c" * 100) != staging_model_name("shop", "c" * 101)
    assert staging_schema_name("shop") == "shop_staging"


@given(
    st.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
        lambda d: d.adjusted() < 6000 and d.adjusted() > -6000 and len(d.as_tuple().digits) <= 34
    )
)
def test_bid_to_decimal_matches_pymongo(value: Decimal) -> None:
    from cartridge_dagster.init.inference import bid_to_decimal

    d128 = Decimal128(value)
    assert str(bid_to_decimal(d128.bid)) == str(d128.to_decimal())


def test_bid_to_decimal_special_values() -> None:
    from cartridge_dagster.init.inference import bid_to_decimal

    assert bid_to_decimal(Decimal128("NaN").bid).is_nan()
    assert bid_to_decimal(Decimal128("-Infinity").bid) == Decimal("-Infinity")
