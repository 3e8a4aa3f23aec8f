"""Make warp read the embedded engine as PyMongo reads a server: documents as raw BSON.

PyMongo (``raw_database``, ``ChangeStream(raw_documents=True)``) hands warp
``RawBSONDocument``s: snapshot documents and change events' ``fullDocument`` stay BSON bytes
and convert to JSON in C. The embedded engine builds dicts; :func:`read_raw` re-encodes what it
returns into real ``RawBSONDocument``s at the places warp reads (the stored-document scan, an
``_id``-order query, change events), so the end-to-end suite runs warp's raw path (C
conversion, Python fallback, dead letters of raw documents) here.
"""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson.raw_bson import RawBSONDocument

import cartridge_dagster.connectors.mongo as mongo_mod
import cartridge_dagster.warp.source as source_mod
from cartridge_dagster.documents import RAW_OPTIONS


def as_raw(document: Any) -> Any:
    """``document`` as PyMongo would hand it over; one BSON cannot hold at all (a NUL in a key,
    which only the embedded engine stores) stays a dict, as no server could send it."""
    try:
        return RawBSONDocument(bson.encode(document, codec_options=RAW_OPTIONS), RAW_OPTIONS)
    except bson.errors.InvalidDocument:
        return document


class _RawCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor
        self._it: Any = None

    def sort(self, *args: Any, **kwargs: Any) -> _RawCursor:
        self._cursor = self._cursor.sort(*args, **kwargs)
        return self

    def limit(self, n: int) -> _RawCursor:
        self._cursor = self._cursor.limit(n)
        return self

    def __aiter__(self) -> _RawCursor:
        return self

    async def __anext__(self) -> RawBSONDocument:
        if self._it is None:
            self._it = self._cursor.__aiter__()
        return as_raw(await self._it.__anext__())


class _RawCollection:
    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def find(self, *args: Any, **kwargs: Any) -> _RawCursor:
        return _RawCursor(self._collection.find(*args, **kwargs))


class _RawDatabase:
    def __init__(self, database: Any) -> None:
        self._database = database

    def __getitem__(self, name: str) -> _RawCollection:
        return _RawCollection(self._database[name])


def read_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Warp in this process reads snapshots and change events as raw BSON."""
    real_open_event = mongo_mod.open_event
    real_decode_stored = source_mod.decode_stored_text

    def decode_stored_text(text: str) -> Any:
        return as_raw(real_decode_stored(text))

    def raw_database(conn: Any, name: str) -> Any:
        return _RawDatabase(conn.database(name))

    def open_event(event: Any) -> dict[str, Any]:
        raw = as_raw(event)
        opened = real_open_event(raw)
        full = opened.get("fullDocument")
        if raw is not event:
            assert full is None or isinstance(full, RawBSONDocument), "fullDocument stays raw"
        return opened

    monkeypatch.setattr(source_mod, "raw_database", raw_database)
    monkeypatch.setattr(source_mod, "decode_stored_text", decode_stored_text)
    monkeypatch.setattr(mongo_mod, "open_event", open_event)
