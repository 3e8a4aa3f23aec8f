"""Snapshot rows in PostgreSQL's binary COPY format, read back into changes (the staged merge's
path for them). The bytes are written here by hand, field by field, after PostgreSQL's
documentation of the format (``COPY … WITH (FORMAT binary)``)."""

from __future__ import annotations

import datetime as dt
import struct

import pytest

from cartridge_dagster.errors import TerminalError
from cartridge_dagster.warp.sink import Batch, CopyRows

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
