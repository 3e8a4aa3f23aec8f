"""Every conversion Cartridge ships against MongoDB's BSON corpus (``../shared/specs/``).

- valid cases (and their degenerate encodings): the landed JSON means what the case's canonical
  Extended JSON means (read by hand, see ``tests/support/bson_corpus.py``), the value policies
  count exactly the changes they make, and the three implementations agree byte for byte:
  :func:`to_jsonable` (the reference), the orjson fast path of :func:`document_json`, and the
  C extension wherever it answers (it must answer for every case of the types it knows);
- ``decodeErrors``: the C path declines every one (with and without an ``_id``), the Python
  path rejects it with ``invalid_bson`` and a reason, and warp's transformer turns it into a
  dead letter naming the collection (the same letter reaches PostgreSQL in
  ``tests/integration/test_landing_contract.py``).
"""

from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal

import bson
import orjson
import pytest
from bson import Decimal128
from bson.raw_bson import RawBSONDocument
from hypothesis import given, settings
from hypothesis import strategies as st

from cartridge_dagster import _bsonjson
from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.documents import (
    DECODE_OPTIONS,
    RAW_OPTIONS,
    ConversionStats,
    UnlandableDocument,
    ValuePolicy,
    canonical_id,
    decode_raw,
    document_json,
    raw_copy_rows,
    raw_document_json,
    to_jsonable,
)
from cartridge_dagster.warp.changes import DeadLetter, Transformer
from cartridge_dagster.warp.sink import COPY_HEADER, COPY_TRAILER, CopyRows, copy_tail
from tests.support.bson_corpus import (
    Case,
    DecodeError,
    check_meaning,
    decode_errors,
    expect,
    valid_cases,
    with_id,
)

VALID = valid_cases()
ERRORS = decode_errors()


def test_the_whole_corpus_is_there() -> None:
    canonical = [c for c in VALID if not c.degenerate]
    assert len(canonical) >= 728 and len(ERRORS) >= 75, (len(canonical), len(ERRORS))
    assert len({c.file for c in VALID}) >= 29  # every type (top.json has errors only)


def _landed(case: Case) -> tuple[bytes, ConversionStats]:
    stats = ConversionStats()
    doc = bson.decode(case.bson, DECODE_OPTIONS)
    return document_json(doc, ValuePolicy(), stats), stats


def _counts(stats: ConversionStats) -> Counter[tuple[str, str]]:
    return Counter(
        {(case, path): n for case, paths in stats.as_dict().items() for path, n in paths.items()}
    )


@pytest.mark.parametrize("case", VALID, ids=[c.id for c in VALID])
def test_valid_case_lands_with_its_meaning(case: Case) -> None:
    expected = expect(case.extjson)
    landed, stats = _landed(case)
    check_meaning(expected.tree, json.loads(landed, parse_float=Decimal))
    assert _counts(stats) == expected.counts


@pytest.mark.parametrize("case", VALID, ids=[c.id for c in VALID])
def test_valid_case_same_bytes_on_every_path(case: Case) -> None:
    expected = expect(case.extjson)
    landed, _ = _landed(case)
    doc = bson.decode(case.bson, DECODE_OPTIONS)
    assert orjson.dumps(to_jsonable(doc, ValuePolicy(), ConversionStats())) == landed
    in_c = _bsonjson.document(case.bson)
    # C must answer for the canonical encoding of every value of its types (a non-canonical
    # one, e.g. a Decimal128 coefficient past 10**34 read as 0, it may leave to Python)
    canonical = bson.encode(doc, codec_options=DECODE_OPTIONS) == case.bson
    if expected.c_handles and canonical:
        assert in_c is not None, "the C path gave up on types it converts itself"
    if in_c is not None:
        assert in_c == landed
    # with an _id, as warp calls it (canonical _id and the document in one walk)
    raw = case.bson if "_id" in json.loads(case.extjson) else with_id(case.bson)
    converted = raw_document_json(raw)
    if expected.c_handles and canonical:
        assert converted is not None
    if converted is not None:
        doc = bson.decode(raw, DECODE_OPTIONS)
        assert converted == (canonical_id(doc["_id"]), document_json(doc))


@pytest.mark.parametrize("case", ERRORS, ids=[c.id for c in ERRORS])
def test_decode_error_is_declined_by_c_and_rejected_with_a_reason(case: DecodeError) -> None:
    assert _bsonjson.document(case.bson) is None
    assert raw_document_json(case.bson) is None
    assert raw_document_json(with_id(case.bson)) is None
    with pytest.raises(UnlandableDocument) as caught:
        decode_raw(case.bson)
    assert caught.value.reason == "invalid_bson"
    message = str(caught.value)
    assert message.startswith("the document is not valid BSON") and len(message) > 40


def _schema() -> SchemaConfig:
    return SchemaConfig(name="s", source_database="s", target_schema="raw_s")


@pytest.mark.parametrize("case", ERRORS, ids=[c.id for c in ERRORS])
def test_decode_error_becomes_a_dead_letter(case: DecodeError) -> None:
    """PyMongo refuses framing it cannot split into documents before warp sees them; every
    document it does hand over (as ``RawBSONDocument``) that does not decode is a dead letter
    with its reason and the exact bytes, never an exception or a silent skip."""
    for raw in (case.bson, with_id(case.bson)):
        try:
            document = RawBSONDocument(raw, RAW_OPTIONS)
        except bson.errors.InvalidBSON:
            continue  # the driver raises: no document reaches warp
        out = Transformer(_schema()).document(
            "hostile", document, op="snapshot", version=7, source_ts=None
        )
        assert isinstance(out, DeadLetter), out
        assert out.collection == "hostile" and out.error_class == "UnlandableDocument"
        assert out.error_message.startswith("the document is not valid BSON")
        assert out.raw_event == raw


def test_the_corpus_as_copy_rows() -> None:
    """Every valid case (with an _id) and every decode error in one snapshot page through C's
    binary COPY rows: a row for exactly the documents :func:`raw_document_json` converts, with
    its bytes; every decode error left to Python (which dead-letters it)."""
    valid = [c.bson if "_id" in json.loads(c.extjson) else with_id(c.bson) for c in VALID]
    broken = [e.bson for e in ERRORS] + [with_id(e.bson) for e in ERRORS]
    page = valid + broken
    out = raw_copy_rows(page, copy_tail(5, "snapshot", None), 10**9)
    assert out is not None
    data, n, rest = out
    changes = CopyRows("c", COPY_HEADER + data + COPY_TRAILER, n, 5).changes()
    converted = [(i, raw_document_json(raw)) for i, raw in enumerate(page)]
    assert rest == [i for i, fast in converted if fast is None]
    assert set(rest) >= set(range(len(valid), len(page)))
    assert [(c.id, c.document) for c in changes] == [fast for _, fast in converted if fast]
    assert n > 300  # (336: the cases of the types C writes itself)


@settings(max_examples=1500, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_mutated_bson_is_converted_exactly_or_declined(
    case: Case, edits: list[tuple[int, int]]
) -> None:
    """Bytes a little off a valid case (a length, a type code, a terminator, a UTF-8 byte):
    whenever C answers, Python decodes the same bytes and writes the same JSON."""
    raw = bytearray(with_id(case.bson))
    for position, byte in edits:
        raw[position % len(raw)] = byte
    converted = raw_document_json(bytes(raw))
    if converted is None:
        return
    doc = decode_raw(bytes(raw))  # raises (and fails the test) if C took what Python refuses
    assert converted == (canonical_id(doc["_id"]), document_json(doc))


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_any_decimal128_bits(bid: bytes) -> None:
    raw = bson.encode({"_id": 1, "d": Decimal128.from_bid(bid)})
    converted = raw_document_json(raw)
    stats = ConversionStats()
    expected = document_json(bson.decode(raw, DECODE_OPTIONS), ValuePolicy(), stats)
    assert converted is None or (not stats and converted == ("1", expected))
