"""pgoutput messages (protocol 1) decoded from bytes written by hand after PostgreSQL's
"Logical Replication Message Formats", and LSN text forms."""

from __future__ import annotations

import datetime as dt
import struct

import pytest

from cartridge_dagster.connectors.pg_replication import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    TypeMessage,
    Update,
    decode_message,
    format_lsn,
    parse_lsn,
)
from cartridge_dagster.warp.pg_source import pg_version

# 2024-01-01 00:00:00 UTC in microseconds since 2000-01-01
TS = 757_382_400_000_000


def tuple_data(*values: str | object | None) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        if v is None:
            out += b"n"
        elif v is UNCHANGED:
            out += b"u"
        else:
            raw = str(v).encode()
            out += b"t" + struct.pack("!I", len(raw)) + raw
    return out


def test_begin_and_commit() -> None:
    begin = decode_message(b"B" + struct.pack("!QqI", 0x16B3748, TS, 735))
    assert begin == Begin(0x16B3748, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), 735)
    commit = decode_message(b"C" + struct.pack("!bQQq", 0, 0x16B3748, 0x16B3778, TS))
    assert isinstance(commit, Commit) and commit.end_lsn == 0x16B3778


def test_relation_and_type() -> None:
    cols = b"".join(
        struct.pack("!b", flags) + name.encode() + b"\x00" + struct.pack("!Ii", oid, -1)
        for flags, name, oid in ((1, "id", 23), (0, 'Wé "x"', 25))
    )
    rel = decode_message(
        b"R" + struct.pack("!I", 16390) + b"app\x00Orders\x00d" + struct.pack("!h", 2) + cols
    )
    assert isinstance(rel, Relation)
    assert (rel.namespace, rel.name, rel.replica_identity) == ("app", "Orders", "d")
    assert [(c.name, c.type_oid, c.replica_identity) for c in rel.columns] == [
        ("id", 23, True),
        ('Wé "x"', 25, False),
    ]
    typ = decode_message(b"Y" + struct.pack("!I", 16401) + b"app\x00mood\x00")
    assert typ == TypeMessage(16401, "app", "mood")


def test_changes_and_truncate() -> None:
    rel = struct.pack("!I", 16390)
    assert decode_message(b"I" + rel + b"N" + tuple_data("1", None, "é")) == Insert(
        16390, ["1", None, "é"]
    )
    update = decode_message(
        b"U" + rel + b"K" + tuple_data("1", None) + b"N" + tuple_data("2", UNCHANGED)
    )
    assert update == Update(16390, ["1", None], "K", ["2", UNCHANGED])
    plain = decode_message(b"U" + rel + b"N" + tuple_data("2", "x"))
    assert plain == Update(16390, None, None, ["2", "x"])
    full = decode_message(b"D" + rel + b"O" + tuple_data("3", "y"))
    assert full == Delete(16390, ["3", "y"], "O")
    trunc = decode_message(b"T" + struct.pack("!Ib", 2, 3) + struct.pack("!II", 16390, 16391))
    assert trunc == Truncate((16390, 16391), cascade=True, restart_identity=True)
    assert decode_message(b"O" + struct.pack("!Q", 1) + b"origin\x00") is None
    with pytest.raises(ValueError, match="unknown pgoutput message"):
        decode_message(b"Z")


def test_lsns_and_versions() -> None:
    assert format_lsn(0x16B3748) == "0/16B3748"
    assert parse_lsn("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert parse_lsn(format_lsn(2**63 + 5)) == 2**63 + 5
    with pytest.raises(ValueError, match="not an LSN"):
        parse_lsn("16B3748")
    # later commits win; within a transaction, later changes win; 96 bits fit numeric(39,0)
    assert pg_version(100, 2**32 - 1) < pg_version(101, 0) < pg_version(101, 1)
    assert pg_version(2**63, 2**32 - 1) < 10**39
