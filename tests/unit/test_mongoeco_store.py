"""The fast decoder of the embedded engine's stored JSON against the engine's own codec.

Oracle: mongoeco's ``DocumentCodec`` (what the engine's client returns): for every document of
MongoDB's BSON corpus the engine can store, and for generated documents, the fast decoder gives
values that encode to the same BSON bytes (types included: int32 vs int64, Decimal128, …).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import bson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mongoeco.core.codec import DocumentCodec
from mongoeco.core.json_compat import json_dumps_compact

from cartridge_dagster.connectors.mongoeco_store import decode_stored_text
from tests.support.bson_corpus import valid_cases

OPTS: Any = bson.CodecOptions(tz_aware=False)


def stored(document: Any) -> str | None:
    """``document`` as the engine stores it (None: the engine cannot store it)."""
    try:
        return json_dumps_compact(DocumentCodec.encode(document))
    except (TypeError, ValueError, OverflowError):
        return None


def reference(text: str) -> Any:
    return DocumentCodec.to_pymongo(
        DocumentCodec.decode(json.loads(text), preserve_bson_wrappers=True)
    )


def same_bson(text: str) -> None:
    ours, theirs = decode_stored_text(text), reference(text)
    assert bson.encode(ours, codec_options=OPTS) == bson.encode(theirs, codec_options=OPTS), text


def _storable() -> list[tuple[str, str]]:
    """The corpus's valid documents the engine can store, as it stores them (a date past
    Python's range, say, it cannot)."""
    out = []
    for case in valid_cases():
        if case.degenerate:
            continue
        try:
            document = bson.decode(case.bson, codec_options=bson.CodecOptions(tz_aware=False))
        except (bson.errors.InvalidBSON, ValueError, OverflowError):
            continue
        text = stored(document)
        if text is not None:
            out.append((case.id, text))
    return out


STORABLE = _storable()


def test_most_of_the_corpus_is_storable() -> None:
    assert len(STORABLE) > 300, len(STORABLE)


@pytest.mark.parametrize("text", [t for _, t in STORABLE], ids=[i for i, _ in STORABLE])
def test_corpus_documents_decode_as_the_engine_does(text: str) -> None:
    same_bson(text)


KEYS = st.text(min_size=1, max_size=8).filter(lambda k: not k.startswith("$") and "\x00" not in k)
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.builds(bson.ObjectId),
        st.builds(bson.Int64, st.integers(-(2**63), 2**63 - 1)),
        st.decimals(min_value=-(10**20), max_value=10**20, places=6).map(
            lambda d: bson.Decimal128(str(d))
        ),
        st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
            lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
        ),
        st.binary(max_size=16).map(lambda b: bson.Binary(b, 0)),
        st.builds(bson.Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
        st.builds(
            bson.Regex,
            st.text(max_size=5).filter(lambda p: "\x00" not in p),
            st.sampled_from(["", "i", "ms"]),
        ),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            KEYS,
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, values, max_size=6))
def test_generated_documents_decode_as_the_engine_does(document: dict[str, Any]) -> None:
    text = stored({"_id": 1, **document})
    if text is None:
        return
    same_bson(text)


def test_nan_literals_and_nested_markers() -> None:
    text = stored(
        {"_id": 1, "x": float("nan"), "y": [{"z": bson.Decimal128("1.5")}], "d": {"$k": 1}}
    )
    assert text is not None and "NaN" in text
    same_bson(text)


@pytest.mark.parametrize(
    "text",
    [
        "206.43",
        "-206.430",
        "0",
        "-0",
        "-0.00",
        "007.50",
        "9" * 34,
        "0." + "0" * 33 + "1",
        "1" * 35,  # past 34 digits: PyMongo's parse (which refuses it)
        "1E+3",
        "1.0E-7",
        "NaN",
        "-Infinity",
        ".5",
    ],
)
def test_stored_decimals_decode_to_the_bits_pymongo_gives(text: str) -> None:
    """The stored ``decimal128_public`` text → the same ``Decimal128`` (bits, so exponent and
    sign) as ``Decimal128(text)``, or the same refusal."""
    from cartridge_dagster.connectors.mongoeco_store import _decimal128

    try:
        expected = bson.Decimal128(text)
    except Exception as exc:  # whatever PyMongo raises, the decoder raises
        with pytest.raises(type(exc)):
            _decimal128(text)
        return
    got = _decimal128(text)
    assert type(got) is bson.Decimal128
    assert got.bid == expected.bid and str(got) == str(expected)


def lands_alike_in_c(texts: list[str]) -> int:
    """Stored documents, decoded, as warp's in-process snapshot lands them: the C rows (of
    their BSON) are the changes the Python conversion makes of the decoded documents, and the
    documents left to Python are the ones C declines. Returns how many C took."""
    from cartridge_dagster.config import SchemaConfig
    from cartridge_dagster.warp.changes import Change, Transformer
    from cartridge_dagster.warp.sink import COPY_HEADER, COPY_TRAILER, CopyRows, copy_tail

    transformer = Transformer(SchemaConfig(name="s", source_database="s", target_schema="r"))
    docs = [decode_stored_text(t) for t in texts]
    out = transformer.copy_rows("c", docs, copy_tail(3, "snapshot", None))
    assert out is not None
    data, n, rest = out
    changes = CopyRows("c", COPY_HEADER + data + COPY_TRAILER, n, 3).changes()
    expected = []
    for i, doc in enumerate(docs):
        python = transformer.document("c", doc, op="snapshot", version=3, source_ts=None)
        if i not in rest:
            assert isinstance(python, Change), (texts[i], python)
            expected.append(python)
    assert changes == expected
    return n


def test_stored_corpus_documents_land_alike_in_c() -> None:
    texts = []
    for i, case in enumerate(valid_cases()):
        if case.degenerate:
            continue
        try:
            document = bson.decode(case.bson, codec_options=OPTS)
        except (bson.errors.InvalidBSON, ValueError, OverflowError):
            continue
        text = stored({"_id": i, **{k: v for k, v in document.items() if k != "_id"}})
        if text is not None:
            texts.append(text)
    assert len(texts) > 300
    assert lands_alike_in_c(texts) > 150  # the rest are types C leaves to Python


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(KEYS, values, max_size=6), min_size=1, max_size=4))
def test_generated_stored_documents_land_alike_in_c(documents: list[dict[str, Any]]) -> None:
    texts = [stored({"_id": i, **d}) for i, d in enumerate(documents)]
    lands_alike_in_c([t for t in texts if t is not None])
