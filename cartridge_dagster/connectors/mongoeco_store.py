"""The embedded engine's stored documents, read where the engine keeps them.

mongoeco's SQLite engine stores each document as JSON in ``documents (db_name, coll_name,
storage_key, document)``, with BSON types tagged (``{"$mongoeco": {"type": "objectid",
"value": "…"}}``). Two things here read it directly:

- :func:`decode_stored`: a stored document (or change-log payload) → the values PyMongo's
  ``bson`` module uses (what the engine's own client returns), ~5× faster than the engine's
  generic codec; ``tests/unit/test_mongoeco_store.py`` holds it to the engine's codec, byte for
  byte of BSON, over every BSON type.
- :class:`StoreScan`: a collection's documents in the order of the table's primary key
  (``storage_key``, which the engine derives from ``_id`` and never changes), a bounded page at
  a time, resumable after any key: an index range scan, no sort, no query engine, linear in the
  size of the collection (the engine's sorted ``_id`` ranges cost a whole sort per query). A
  scan from a recorded change-log position reads every document that exists throughout exactly
  once; what changes meanwhile arrives as changes too.

Both depend on the engine's storage format (mongoeco 4.11, pinned; checked as the change log is).
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
import re
import sqlite3
import struct
import threading
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
from bson import SON, Binary, Code, Decimal128, Int64, MaxKey, MinKey, ObjectId, Regex, Timestamp
from bson.dbref import DBRef

__all__ = ["StoreScan", "decode_stored", "decode_stored_text"]

_MARKER = "$mongoeco"


def _binary(v: Any) -> Any:
    return Binary(binascii.unhexlify(v["hex"]), int(v["subtype"]))


def _regex(v: Any) -> Any:
    return Regex(v["pattern"], v["flags"])


def _code(v: Any) -> Any:
    scope = v.get("scope")
    return Code(v["code"], decode_stored(scope) if scope is not None else None)


def _dbref(v: Any) -> Any:
    extras = decode_stored(v.get("extras") or {})
    return DBRef(str(v["collection"]), decode_stored(v["id"]), v.get("database"), **extras)


def _undefined(v: Any) -> Any:
    import mongoeco.types

    return mongoeco.types.UNDEFINED  # type: ignore[attr-defined]


def _uuid(v: Any) -> Any:
    return uuid.UUID(v)


_PLAIN_DECIMAL = re.compile(r"(-?)([0-9]{1,34})(?:\.([0-9]{1,34}))?")
_BID = struct.Struct("<QQ")


def _from_bits(high: int, low: int) -> Decimal128:
    """A ``Decimal128`` of its two 64-bit halves, set the way its constructor sets them
    (``from_bid`` unpacks 16 bytes and checks them: 7x slower)."""
    value = Decimal128.__new__(Decimal128)
    value._Decimal128__high = high  # type: ignore[attr-defined]
    value._Decimal128__low = low  # type: ignore[attr-defined]
    return value


def _from_bid(high: int, low: int) -> Decimal128:
    return Decimal128.from_bid(_BID.pack(low, high))


try:  # PyMongo keeps the halves in these private slots (checked once here, else from_bid)
    _make = _from_bits if _from_bits(0x3040 << 48, 15).bid == Decimal128("15").bid else _from_bid
except (AttributeError, TypeError):  # pragma: no cover - another PyMongo layout
    _make = _from_bid


def _decimal128(text: str) -> Decimal128:
    """``Decimal128(text)``: plain notation (``-206.43``, at most 34 digits: every amount) is
    packed into its bits directly, ~20x faster than PyMongo's parse, which takes the rest. The
    coefficient and exponent are the text's own (trailing zeros and the sign of a zero kept),
    as PyMongo keeps them."""
    match = _PLAIN_DECIMAL.fullmatch(text)
    if match is None:
        return Decimal128(text)
    sign, whole, fraction = match.groups()
    digits = whole + fraction if fraction else whole
    if len(digits) > 34:
        return Decimal128(text)
    coefficient = int(digits)
    high = (coefficient >> 64) | ((6176 - len(fraction or "")) << 49) | (1 << 63 if sign else 0)
    return _make(high, coefficient & 0xFFFF_FFFF_FFFF_FFFF)


_TAGGED: dict[str, Callable[[Any], Any]] = {
    "objectid": ObjectId,
    "datetime": dt.datetime.fromisoformat,
    "decimal128_public": _decimal128,
    "decimal128": Decimal,
    "decimal": Decimal,
    "int64": lambda v: Int64(int(v)),
    "int32": int,
    "double": float,
    "uuid": _uuid,
    "binary": _binary,
    "bytes": binascii.unhexlify,
    "regex": _regex,
    "timestamp": lambda v: Timestamp(int(v["time"]), int(v["inc"])),
    "minkey": lambda v: MinKey(),
    "maxkey": lambda v: MaxKey(),
    "code": _code,
    "dbref": _dbref,
    "undefined": _undefined,
    "dict": lambda v: {k: decode_stored(x) for k, x in v.items()},
    "son": lambda v: SON((str(k), decode_stored(x)) for k, x in v),
}


def decode_stored(value: Any) -> Any:
    """A stored (parsed JSON) value → PyMongo's types, as the engine's client returns them."""
    if type(value) is dict:
        if len(value) == 1 and _MARKER in value:
            tagged = value[_MARKER]
            if type(tagged) is dict and len(tagged) == 2 and "type" in tagged:
                kind = tagged["type"]
                convert = _TAGGED.get(kind)
                if convert is None:
                    raise ValueError(f"unknown stored type {kind!r}")
                return convert(tagged["value"])
        return {k: (decode_stored(v) if type(v) in (dict, list) else v) for k, v in value.items()}
    if type(value) is list:
        return [decode_stored(v) if type(v) in (dict, list) else v for v in value]
    return value


def decode_stored_text(text: str) -> Any:
    """A stored JSON text → PyMongo's types (NaN/Infinity literals included)."""
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        parsed = json.loads(text)
    if _MARKER not in text:
        return parsed
    return decode_stored(parsed)


class StoreScan:
    """Pages of one SQLite file's stored documents, in primary-key (``storage_key``) order."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, check_same_thread=False)
        self._conn.isolation_level = None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def page(self, db: str, coll: str, after: str | None, limit: int) -> list[tuple[str, str]]:
        """Up to ``limit`` ``(storage_key, stored JSON)`` of ``db.coll`` after key ``after``
        (None: from the start), in key order: a range scan of the primary key's index."""
        with self._lock:
            if after is None:
                rows = self._conn.execute(
                    "SELECT storage_key, document FROM documents WHERE db_name = ? "
                    "AND coll_name = ? ORDER BY db_name, coll_name, storage_key LIMIT ?",
                    (db, coll, int(limit)),
                ).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT storage_key, document FROM documents WHERE db_name = ? "
                    "AND coll_name = ? AND storage_key > ? "
                    "ORDER BY db_name, coll_name, storage_key LIMIT ?",
                    (db, coll, after, int(limit)),
                ).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def database_names(self) -> list[str]:
        """The databases the engine lists (``mongoeco``'s ``list_database_names``: its catalog
        tables and its documents), the documents' found by a skip scan of the primary key's
        index, one seek per database, instead of the engine's pass over every document."""
        return self._names("db_name", "", ())

    def collection_names(self, db: str) -> list[str]:
        """The collections of ``db`` the engine lists (``list_collection_names``: its catalog
        tables and its documents), the documents' by a skip scan as :meth:`database_names`."""
        return self._names("coll_name", "db_name = ? AND ", (db,))

    def _names(self, column: str, where: str, params: tuple[str, ...]) -> list[str]:
        """The distinct values of ``column`` (``db_name``, or ``coll_name`` after the
        ``where`` on ``db_name``) in the catalog tables and the documents, sorted; the
        documents' each found by one seek of the primary key past the last."""
        catalog = " UNION ".join(
            f"SELECT {column} FROM {t} WHERE {where}1"
            for t in ("collections", "indexes", "search_indexes")
        )
        order = "db_name" if column == "db_name" else "db_name, coll_name"
        seek = f"SELECT {column} FROM documents WHERE {where}{column} > ? ORDER BY {order} LIMIT 1"
        with self._lock:
            names = {str(r[0]) for r in self._conn.execute(catalog, params * 3)}
            row = self._conn.execute(
                f"SELECT {column} FROM documents WHERE {where}1 ORDER BY {order} LIMIT 1", params
            ).fetchone()
            while row is not None:
                names.add(str(row[0]))
                row = self._conn.execute(seek, (*params, row[0])).fetchone()
        return sorted(names)

    def count(self, db: str, coll: str) -> int:
        with self._lock:
            row = self._conn.execute(
                "SELECT count(*) FROM documents WHERE db_name = ? AND coll_name = ?", (db, coll)
            ).fetchone()
        return int(row[0])
