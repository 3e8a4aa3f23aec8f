"""Documents of the embedded engine read by ``_id`` in batches, from where the engine keeps them.

The embedded engine (mongoeco's SQLite engine, 4.11) answers ``find_one({"_id": …})`` in about a
millisecond, nearly all of it event-loop and thread hand-offs, and its ``$in`` scans the whole
collection (and fails past about a thousand values). Its SQLite file keeps every document in one
table, ``documents (db_name, coll_name, storage_key, document)``, whose primary key holds
``repr(canonical_document_id(_id))``. :class:`DocumentReader` reads up to :data:`BATCH` keys per
query there and decodes the rows as the engine does (its ``DocumentCodec``).

Only ``ObjectId`` and string ids are read this way (their keys are plain); a document not found
(another id type, a key layout of another engine version, or truly absent) is left to the
caller's ``find_one``, and each document found is checked to carry the id asked for: a changed
layout costs speed, never a wrong answer.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["BATCH", "DocumentReader", "storage_key"]

#: Keys per query (SQLite's default limit on bound parameters is 32,766).
BATCH = 500


def storage_key(doc_id: Any) -> str | None:
    """The engine's primary key of a document with this ``_id`` (a ``bson.ObjectId`` or a
    string); None for other id types, read by ``find_one``."""
    from bson import ObjectId as BsonObjectId
    from mongoeco import ObjectId
    from mongoeco.core.identity import canonical_document_id

    if isinstance(doc_id, BsonObjectId):
        return repr(canonical_document_id(ObjectId(str(doc_id))))
    if isinstance(doc_id, str):
        return repr(canonical_document_id(doc_id))
    return None


def _decode(payload: str) -> dict[str, Any]:
    from mongoeco.core.codec import DocumentCodec

    try:
        parsed = orjson.loads(payload)
    except orjson.JSONDecodeError:
        import json

        parsed = json.loads(payload)  # NaN/Infinity literals
    if "$mongoeco" in payload:
        parsed = DocumentCodec.decode(parsed, preserve_bson_wrappers=True)
    out: dict[str, Any] = DocumentCodec.to_pymongo(parsed)
    return out


class DocumentReader:
    """Batched reads by key from one embedded-engine SQLite file (read-only connection).

    Blocking (callers in an event loop use ``asyncio.to_thread``); one connection guarded by a
    lock."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            f"file:{path}?mode=ro",
            uri=True,
            timeout=busy_timeout_ms / 1000,
            check_same_thread=False,
        )
        self._usable: bool | None = None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _check(self) -> bool:
        if self._usable is None:
            columns = {
                str(r[1]) for r in self._conn.execute("PRAGMA table_info(documents)").fetchall()
            }
            self._usable = {"db_name", "coll_name", "storage_key", "document"} <= columns
        return self._usable

    def ids(self, database: str, collection: str) -> list[Any] | None:
        """Every document's ``_id`` in the collection, decoded as the engine does (None when the
        file has another layout). One query over the ids alone: the engine's own
        ``find({}, {"_id": 1})`` decodes every whole document first (~0.4 ms each)."""
        with self._lock:
            if not self._check():
                return None
            try:
                rows = self._conn.execute(
                    "SELECT document -> '$._id' FROM documents WHERE db_name = ? AND coll_name = ?",
                    (database, collection),
                ).fetchall()
            except sqlite3.OperationalError:
                return None  # a document SQLite's JSON cannot parse (NaN, Infinity): find it is
        out: list[Any] = []
        for (text,) in rows:
            if text is None:
                return None  # a document without an _id: not this layout
            out.append(_decode('{"_id":' + str(text) + "}")["_id"])
        return out

    def sample(self, database: str, collection: str, size: int) -> list[dict[str, Any]] | None:
        """Up to ``size`` documents picked at random, decoded as the engine does (None when the
        file has another layout): the engine's ``$sample`` decodes the whole collection first."""
        with self._lock:
            if not self._check():
                return None
            rows = self._conn.execute(
                "SELECT document FROM documents WHERE db_name = ? AND coll_name = ? "
                "ORDER BY random() LIMIT ?",
                (database, collection, int(size)),
            ).fetchall()
        return [_decode(str(r[0])) for r in rows]

    def read(self, database: str, collection: str, keys: Iterable[str]) -> list[dict[str, Any]]:
        """The documents stored under ``keys`` (those found), decoded as the engine does."""
        wanted = list(dict.fromkeys(keys))
        out: list[dict[str, Any]] = []
        with self._lock:
            if not wanted or not self._check():
                return out
            for start in range(0, len(wanted), BATCH):
                batch = wanted[start : start + BATCH]
                marks = ", ".join("?" * len(batch))
                rows = self._conn.execute(
                    "SELECT document FROM documents WHERE db_name = ? AND coll_name = ? "
                    f"AND storage_key IN ({marks})",
                    (database, collection, *batch),
                ).fetchall()
                out.extend(_decode(str(r[0])) for r in rows)
        return out
