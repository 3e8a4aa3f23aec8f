"""Reading collections whatever values they hold, on every source engine.

The embedded engine (mongoeco) evaluates most queries in SQLite, whose JSON functions reject a
stored document holding NaN or ±Infinity (``sqlite3.OperationalError: malformed JSON``): one such
value anywhere in a collection made every sorted read of it fail (scans and snapshots, both in
``_id`` order), and filtered ones too (``$gt``, ``$in``, equality through ``find``). The engine
evaluates a query in Python instead when it carries a collation; the simple collation is
MongoDB's default (binary) comparison, so the results are the same, only slower (the engine then
reads the collection in Python for that query). :func:`find_documents` and
:func:`count_documents` try the fast way and fall back to that where the collection needs it. A
query the source still cannot answer raises :class:`UnreadableCollection`, one line naming the
collection and the cause. Other errors (a locked file, a lost connection) pass through for the
caller's retries. A wire server that keeps its data in the engine (the replica-set test
server) relays the same error as an ``OperationFailure``, handled alike.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import pymongo.errors

from cartridge_dagster.errors import TerminalError

__all__ = [
    "SIMPLE_COLLATION",
    "UnreadableCollection",
    "count_documents",
    "engine_cannot_evaluate",
    "find_documents",
]

#: MongoDB's default (binary) comparison, stated: the embedded engine then evaluates in Python.
SIMPLE_COLLATION: Final[Mapping[str, str]] = {"locale": "simple"}


class UnreadableCollection(TerminalError):
    """The source cannot answer a query on a collection (the message names both)."""


#: What the embedded engine raises for it: in process, and relayed by a wire server storing
#: its data in the engine (an ``OperationFailure`` with that message, no code).
_ENGINE_ERRORS: Final = (sqlite3.OperationalError, pymongo.errors.OperationFailure)


def engine_cannot_evaluate(exc: BaseException) -> bool:
    """Whether ``exc`` is the embedded engine's SQLite refusing a stored document's JSON (NaN,
    ±Infinity) in a query it evaluates in SQL (in process, or relayed over the wire)."""
    return isinstance(exc, _ENGINE_ERRORS) and "malformed json" in str(exc).lower()


def _unreadable(name: str, what: str, exc: BaseException) -> UnreadableCollection:
    return UnreadableCollection(
        f"collection {name!r}: the source cannot {what} ({type(exc).__name__}: {exc})"
    )


async def find_documents(
    collection: Any,
    query: Mapping[str, Any],
    *,
    name: str,
    projection: Mapping[str, Any] | None = None,
    sort_by_id: bool = False,
    limit: int | None = None,
    batch_size: int | None = None,
) -> AsyncIterator[Any]:
    """``collection.find(query, projection)`` (sorted by ``_id``, limited), read lazily.

    On the embedded engine's "malformed JSON" before the first document, the same query runs
    again with :data:`SIMPLE_COLLATION`. ``name`` is the collection's name for the error."""
    for collation in (None, SIMPLE_COLLATION):
        kwargs: dict[str, Any] = {} if collation is None else {"collation": dict(collation)}
        if projection is not None:
            kwargs["projection"] = dict(projection)
        cursor = collection.find(dict(query), **kwargs)
        if sort_by_id:
            cursor = cursor.sort("_id", 1)
        if limit is not None:
            cursor = cursor.limit(limit)
        if batch_size is not None:
            cursor = cursor.batch_size(batch_size)
        yielded = 0
        try:
            async for doc in cursor:
                yielded += 1
                yield doc
            return
        except _ENGINE_ERRORS as exc:
            if not engine_cannot_evaluate(exc):
                raise  # e.g. a locked file: the caller's retries decide
            if collation is None and not yielded:
                continue  # a NaN or ±Infinity somewhere: let the engine evaluate in Python
            raise _unreadable(
                name, "read it" + (" in _id order" if sort_by_id else ""), exc
            ) from None


async def count_documents(collection: Any, query: Mapping[str, Any], *, name: str) -> int:
    """``collection.count_documents(query)``, with the same fallback as :func:`find_documents`."""
    try:
        return int(await collection.count_documents(dict(query)))
    except _ENGINE_ERRORS as exc:
        if not engine_cannot_evaluate(exc):
            raise
    try:
        return int(await collection.count_documents(dict(query), collation=dict(SIMPLE_COLLATION)))
    except _ENGINE_ERRORS as exc:
        if not engine_cannot_evaluate(exc):
            raise
        raise _unreadable(name, "count its documents", exc) from None
