"""A raw cursor reply is read without inflating it: each document's BSON as it came, the
cursor id and the ``postBatchResumeToken``, the same as reading the decoded reply."""

from __future__ import annotations

from typing import Any

import bson
import pytest
from bson import Int64, ObjectId
from bson.raw_bson import RawBSONDocument

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.documents import RAW_OPTIONS
from cartridge_dagster.warp.changes import Change, DeadLetter, Transformer
from cartridge_dagster.warp.source import _cursor_reply


def schema_config(name: str) -> SchemaConfig:
    return SchemaConfig.model_validate(
        {"name": name, "source_database": name, "target_schema": f"raw_{name}"}
    )


DOCS: list[dict[str, Any]] = [
    {"_id": ObjectId("00003886e0c3a418b5166584"), "status": "paid", "n": 1},
    {"_id": 2, "nested": {"a": [1, 2, {"b": "c"}]}},
    {"_id": "dbref-shaped", "$ref": "other", "$id": 5},  # stays a document, not a DBRef
]


def _reply(key: str, cursor_id: Any, token: Any = None) -> dict[str, Any]:
    cursor: dict[str, Any] = {key: DOCS, "id": cursor_id, "ns": "shop.orders"}
    if token is not None:
        cursor["postBatchResumeToken"] = token
    return {"cursor": cursor, "ok": 1.0, "operationTime": bson.Timestamp(1, 1)}


@pytest.mark.parametrize("key", ["firstBatch", "nextBatch"])
@pytest.mark.parametrize("cursor_id", [Int64(7_000_000_123_456), 0, 12])
def test_raw_reply_gives_each_documents_bytes_the_id_and_the_token(
    key: str, cursor_id: Any
) -> None:
    raw = RawBSONDocument(bson.encode(_reply(key, cursor_id, {"$recordId": "k-9"})), RAW_OPTIONS)
    docs, got_id, token = _cursor_reply(raw, key)
    assert docs == [bson.encode(d) for d in DOCS]
    assert all(type(d) is bytes for d in docs)
    assert got_id == int(cursor_id)
    assert token == {"$recordId": "k-9"}
    assert bson.decode(docs[2]) == DOCS[2]


def test_raw_reply_without_token_or_documents() -> None:
    reply = {"cursor": {"nextBatch": [], "id": Int64(0), "ns": "shop.orders"}, "ok": 1.0}
    docs, cursor_id, token = _cursor_reply(RawBSONDocument(bson.encode(reply)), "nextBatch")
    assert (docs, cursor_id, token) == ([], 0, None)


def test_decoded_reply_reads_the_same() -> None:
    decoded = bson.decode(bson.encode(_reply("firstBatch", Int64(44), {"$recordId": 3})))
    docs, cursor_id, token = _cursor_reply(decoded, "firstBatch")
    assert docs == DOCS
    assert (cursor_id, token) == (44, {"$recordId": 3})


def test_the_other_batch_key_is_not_read() -> None:
    raw = RawBSONDocument(bson.encode(_reply("firstBatch", Int64(1))))
    assert _cursor_reply(raw, "nextBatch")[0] == []


def test_a_reply_without_a_cursor_is_an_error() -> None:
    with pytest.raises(ValueError, match="cursor"):
        _cursor_reply(RawBSONDocument(bson.encode({"ok": 1.0})), "firstBatch")


def test_transformer_converts_bytes_as_it_converts_raw_documents() -> None:
    transformer = Transformer(schema_config("shop"))
    for doc in DOCS:
        data = bson.encode(doc)
        from_bytes = transformer.document("orders", data, op="snapshot", version=5, source_ts=None)
        from_raw = transformer.document(
            "orders", RawBSONDocument(data, RAW_OPTIONS), op="snapshot", version=5, source_ts=None
        )
        assert isinstance(from_bytes, Change)
        assert from_bytes == from_raw


def test_bytes_the_c_path_leaves_to_python_still_land_or_dead_letter() -> None:
    transformer = Transformer(schema_config("shop"))
    nul = bson.encode({"_id": 1, "s": "a\x00b"})  # NUL: a policy decides (Python path)
    out = transformer.document("orders", nul, op="snapshot", version=5, source_ts=None)
    assert isinstance(out, Change) and b"\\u0000" not in (out.document or b"")
    bad = bson.encode({"_id": 1})[:-1] + b"\x01"  # not BSON: a dead letter, never a crash
    dead = transformer.document("orders", bad, op="snapshot", version=5, source_ts=None)
    assert isinstance(dead, DeadLetter)
    assert dead.raw_event == bad and dead.error_class == "UnlandableDocument"


@pytest.mark.parametrize("with_c", [True, False])
def test_the_batch_is_cut_alike_in_c_and_in_python(
    with_c: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch array is cut in C (``documents.split_documents``) or, without the extension,
    by the Python loop: the same documents either way, elements that are not documents
    skipped."""
    from cartridge_dagster import documents

    if not with_c:
        monkeypatch.setattr(documents, "_bsonjson", None)
        monkeypatch.setattr(
            "cartridge_dagster.warp.source.split_documents", documents.split_documents
        )
    mixed = [*DOCS, 5, "not a document", {"_id": 9, "e": {}}]
    reply = {"cursor": {"nextBatch": mixed, "id": Int64(0), "ns": "s.o"}, "ok": 1.0}
    docs, _, _ = _cursor_reply(RawBSONDocument(bson.encode(reply)), "nextBatch")
    assert docs == [bson.encode(d) for d in mixed if isinstance(d, dict)]


def test_split_documents_declines_an_array_that_does_not_frame() -> None:
    from cartridge_dagster.documents import split_documents

    array = bson.encode({"0": {"a": 1}, "1": {"b": 2}})
    assert split_documents(array) == [bson.encode({"a": 1}), bson.encode({"b": 2})]
    assert split_documents(array[:-3] + b"\x00") is None  # a cut-off element
    assert split_documents(b"\x05\x00\x00") is None
    assert split_documents(bson.encode({})) == []
