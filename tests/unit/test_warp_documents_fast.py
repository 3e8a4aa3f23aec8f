"""The fast conversion path gives the same bytes as the full one (and defers to it)."""

from __future__ import annotations

import datetime as dt
import math
import uuid
from decimal import Decimal
from typing import Any

import orjson
import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Timestamp
from hypothesis import given
from hypothesis import strategies as st

from cartridge_dagster.documents import (
    ConversionStats,
    ValuePolicy,
    _decimal128_text,
    _NeedsPolicy,
    document_json,
    to_jsonable,
)


def slow(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(to_jsonable(doc, ValuePolicy(), ConversionStats()))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1).map(Int64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20).map(lambda b: Binary(b, 0)),
    st.uuids().map(lambda u: Binary(u.bytes, 4)),
    st.uuids(),
    st.builds(ObjectId),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000, tzinfo=dt.UTC)
    ),
    st.builds(
        lambda c, e, neg: Decimal128(Decimal((neg, tuple(int(x) for x in str(c)), e))),
        st.integers(0, 10**34 - 1),
        st.integers(-6000, 6000),
        st.integers(0, 1),
    ),
    st.sampled_from([Decimal128("NaN"), Decimal128("-Infinity"), Decimal128("-0")]),
    st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=10), values, max_size=6))
def test_fast_path_matches_full_conversion(doc: dict[str, Any]) -> None:
    assert document_json(doc) == slow(doc)


@given(st.decimals(allow_nan=False, allow_infinity=False))
def test_decimal128_text(value: Decimal) -> None:
    try:
        d = Decimal128(value)
    except Exception:
        return
    if value.is_zero() and value.is_signed():
        with pytest.raises(_NeedsPolicy):  # -0 goes the way that counts it
            _decimal128_text(d)
        return
    assert _decimal128_text(d) == str(d.to_decimal())


@given(
    st.integers(0, 10**34 - 1),
    st.integers(-60, 12),
    st.sampled_from(["", "-"]),
)
def test_decimal128_text_formats_like_decimal(coefficient: int, exponent: int, sign: str) -> None:
    """The formatter's own plain notation and its Decimal fallback both print what
    ``str(Decimal)`` prints (``-0`` aside, which the negative-zero policy must count)."""
    d = Decimal128(f"{sign}{coefficient}E{exponent}")
    if sign and not coefficient:
        with pytest.raises(_NeedsPolicy):
            _decimal128_text(d)
        return
    assert _decimal128_text(d) == str(d.to_decimal())


def test_policies_still_apply_and_count() -> None:
    stats = ConversionStats()
    out = document_json(
        {"_id": 1, "s": "a\x00b", "f": math.nan, "u": uuid.UUID(int=1)}, None, stats
    )
    assert orjson.loads(out) == {"_id": 1, "s": "ab", "f": "NaN", "u": str(uuid.UUID(int=1))}
    assert stats.nul_stripped == 1 and stats.non_finite == 1
    assert stats.as_dict() == {"nul_stripped": {"s": 1}, "non_finite": {"f": 1}}


def test_negative_zero_lands_as_zero_and_is_counted() -> None:
    stats = ConversionStats()
    doc = {"f": -0.0, "d": Decimal128("-0.00"), "a": [{"x": -0.0}], "ok": 0.0, "s": "-0.0"}
    out = document_json(doc, None, stats)
    assert out == b'{"f":0.0,"d":0.00,"a":[{"x":0.0}],"ok":0.0,"s":"-0.0"}'
    assert stats.as_dict() == {"negative_zero": {"a[].x": 1, "d": 1, "f": 1}}
    plain = ConversionStats()
    assert document_json({"s": "-0.0", "n": None}, None, plain) == b'{"s":"-0.0","n":null}'
    assert not plain
