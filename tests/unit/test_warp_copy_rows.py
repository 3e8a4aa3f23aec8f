"""Snapshot rows in PostgreSQL's binary COPY format, read back into changes (the staged merge's
path for them), and the rows warp's C conversion writes from BSON (a wire snapshot's fast
path). The bytes are written here by hand, field by field, after PostgreSQL's documentation of
the format (``COPY … WITH (FORMAT binary)``)."""

from __future__ import annotations

import datetime as dt
import struct

import bson
import pytest

from cartridge_dagster.errors import TerminalError
from cartridge_dagster.warp.sink import Batch, CopyRows, copy_tail

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)


def field(data: bytes | None) -> bytes:
    return struct.pack("!i", -1) if data is None else struct.pack("!i", len(data)) + data


def row(*fields: bytes | None) -> bytes:
    return struct.pack("!h", len(fields)) + b"".join(field(f) for f in fields)


def numeric(digits: list[int], weight: int) -> bytes:
    return struct.pack(f"!hhhh{len(digits)}h", len(digits), weight, 0, 0, *digits)


#: 2024-01-02 03:04:05.000006 UTC in microseconds since 2000-01-01 UTC
TS = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC) - dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
MICROS = struct.pack("!q", TS // dt.timedelta(microseconds=1))


def test_binary_copy_rows_read_back_as_changes() -> None:
    data = (
        HEADER
        + row(
            b"42",
            b"\x01" + '{"a": "\\u00e9\\n", "é": 1}'.encode(),
            b"\x00",
            numeric([1, 2], 1),
            b"snapshot",
            MICROS,
        )
        + row(b"caf\xc3\xa9", None, b"\x00", numeric([1, 2], 1), b"snapshot", None)
        + TRAILER
    )
    rows = CopyRows("orders", data, 2, 10_002)
    first, second = rows.changes()
    assert (first.collection, first.id, first.op, first.version) == (
        "orders",
        "42",
        "snapshot",
        10_002,
    )
    # jsonb's binary form is version 1 then the text: the document is the text
    assert first.document == '{"a": "\\u00e9\\n", "é": 1}'.encode()
    assert first.source_ts == dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert (second.id, second.document, second.source_ts) == ("café", None, None)


def test_a_batch_counts_its_copy_rows() -> None:
    batch = Batch(kind="snapshot", copy=CopyRows("orders", HEADER + TRAILER, 7, 1))
    assert len(batch) == 7
    assert batch.collections() == ["orders"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"orders\t{}\n", "not in binary COPY"),
        (HEADER + row(b"1", b"\x01{}") + TRAILER, "have 2 fields, not 6"),
    ],
)
def test_malformed_copy_rows_stop_with_one_line(data: bytes, message: str) -> None:
    with pytest.raises(TerminalError, match=message):
        CopyRows("orders", data, 1, 1).changes()


@pytest.mark.parametrize(
    ("version", "digits", "weight"),
    [
        (10_002, [1, 2], 1),
        (7, [7], 0),
        (2 * 10**12, [2], 3),
        (123_4567_0000_0001, [123, 4567, 0, 1], 3),
    ],
)
def test_the_copy_tail_is_the_rows_other_fields(
    version: int, digits: list[int], weight: int
) -> None:
    """A snapshot page's shared fields, after ``_id`` and ``document``: live, the version as
    ``numeric`` (base-10000 digits, trailing zero groups implied), the op, the source time in
    microseconds since 2000-01-01 (or NULL)."""
    ts = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    expected = field(b"\x00") + field(numeric(digits, weight)) + field(b"snapshot")
    assert copy_tail(version, "snapshot", ts) == expected + field(MICROS)
    assert copy_tail(version, "snapshot", None) == expected + field(None)


def test_c_rows_read_back_as_the_changes_the_transformer_makes() -> None:
    """The C rows of a page (the fast path of a wire snapshot) are, field by field, the
    changes :meth:`Transformer.document` makes of the same documents; the documents C leaves
    to Python (a policy's NUL, NaN, an ``_id`` it does not write, an oversized document) are
    named by index, in order, and get no row."""
    from bson import Decimal128, Int64, ObjectId

    from cartridge_dagster.config import SchemaConfig
    from cartridge_dagster.warp.changes import Transformer
    from cartridge_dagster.warp.sink import COPY_HEADER, COPY_TRAILER

    docs = [
        {"_id": ObjectId(), "total": 12.5, "at": dt.datetime(2020, 1, 1, tzinfo=dt.UTC)},
        {"_id": "café", "items": [1, Int64(2), Decimal128("1.25")], "ok": True},
        {"_id": 3, "s": "nul\x00"},  # the NUL policy: Python
        {"_id": Int64(2**40), "n": None, "sub": {"a": "\n"}},
        {"_id": 5, "f": float("nan")},  # the NaN policy: Python
        {"_id": {"k": 1}},  # a document _id: Python
        {"_id": 7, "big": "x" * 1100},  # over max_document_bytes: Python (a dead letter)
        {"_id": -8, "last": "é"},
    ]
    raws = [bson.encode(d) for d in docs]
    cfg = SchemaConfig(
        name="s",
        source_database="s",
        target_schema="raw_s",
        dead_letter={"max_document_bytes": 1024},
    )
    transformer = Transformer(cfg)
    tail = copy_tail(10_002, "snapshot", dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC))
    out = transformer.copy_rows("orders", raws, tail)
    assert out is not None
    data, n, rest = out
    assert (n, rest) == (4, [2, 4, 5, 6])
    changes = CopyRows("orders", COPY_HEADER + data + COPY_TRAILER, n, 10_002).changes()
    when = dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    expected = [
        transformer.document("orders", raws[i], op="snapshot", version=10_002, source_ts=when)
        for i in range(len(raws))
        if i not in rest
    ]
    assert changes == expected
    # exclude_fields: only the Python conversion removes them
    excluding = SchemaConfig(
        name="s",
        source_database="s",
        target_schema="raw_s",
        tables={"orders": {"exclude_fields": ["total"]}},
    )
    assert Transformer(excluding).copy_rows("orders", raws, tail) is None
