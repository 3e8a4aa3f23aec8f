"""Change events → rows of the raw landing contract (pure functions, no I/O).

A :class:`Change` is one row to merge: the canonical ``_id``, the document as JSON bytes (or
``None`` for a delete), the operation, and ``_cartridge_version``. Versions are integers that
increase strictly along one stream:

``version = base(clusterTime) * 2**16 + ordinal``

where ``base`` is ``time << 32 | increment`` for a server's BSON ``Timestamp`` and the integer
itself for the embedded engine (whose ``clusterTime`` is a sequence number), and ``ordinal``
numbers the events that share one cluster time (several writes of one transaction) from 1.
Snapshot rows use ordinal 0 of the recorded start position, so any change streamed after the
position wins over the snapshot. The result fits ``numeric(39,0)``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import bson
import orjson
from bson import Timestamp
from bson.json_util import RELAXED_JSON_OPTIONS
from bson.json_util import dumps as bson_json_dumps
from bson.raw_bson import RawBSONDocument

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.documents import (
    DECODE_OPTIONS,
    ConversionStats,
    UnlandableDocument,
    ValuePolicy,
    canonical_id,
    decode_raw,
    document_json,
    raw_copy_rows,
    raw_document_json,
)

__all__ = [
    "ORDINAL_BITS",
    "Change",
    "DeadLetter",
    "Op",
    "Transformer",
    "cluster_base",
    "dedup_latest",
    "event_summary",
    "make_version",
    "split_version",
]

Op = Literal["insert", "update", "replace", "delete", "snapshot"]

ORDINAL_BITS = 16
_ORDINAL_MAX = (1 << ORDINAL_BITS) - 1


def cluster_base(cluster_time: Any) -> int:
    """The integer position of a ``clusterTime`` (BSON ``Timestamp`` or the engine's int)."""
    if isinstance(cluster_time, Timestamp):
        return (int(cluster_time.time) << 32) | int(cluster_time.inc)
    if isinstance(cluster_time, bool) or not isinstance(cluster_time, int):
        raise ValueError(f"unsupported clusterTime {cluster_time!r}")
    return int(cluster_time)


def make_version(base: int, ordinal: int) -> int:
    if not 0 <= ordinal <= _ORDINAL_MAX:
        raise ValueError(f"ordinal {ordinal} out of range")
    return (base << ORDINAL_BITS) | ordinal


def split_version(version: int) -> tuple[int, int]:
    return version >> ORDINAL_BITS, version & _ORDINAL_MAX


@dataclass(slots=True)
class Change:
    """One row to merge into ``<raw_schema>.<table(collection)>``."""

    collection: str
    id: str
    op: Op
    version: int
    document: bytes | None
    source_ts: dt.datetime | None = None


@dataclass(slots=True)
class DeadLetter:
    """A change that cannot be landed, with what went wrong and the raw event to replay."""

    collection: str
    document_id: str | None
    version: int
    op: str
    error_class: str
    error_message: str
    raw_event: bytes  # BSON of the change event (or of the snapshot document)
    token: Mapping[str, Any] | None = None


def event_summary(raw_event: bytes) -> str:
    """Relaxed Extended JSON of a raw event for display (NUL escaped, never raises)."""
    try:
        return bson_json_dumps(bson.decode(raw_event), json_options=RELAXED_JSON_OPTIONS)
    except (bson.errors.BSONError, ValueError, TypeError, OverflowError):
        return f"<{len(raw_event)} bytes of undecodable BSON>"


def _drop_path(document: dict[str, Any], path: Sequence[str]) -> None:
    node: Any = document
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)


def _bson_or_none(doc: Any) -> bytes:
    """A decoded document as BSON, or ``b""`` (which the C conversion declines) when PyMongo
    cannot encode it (a Python ``Decimal``, a key that is not a string, an int past 64 bits)."""
    try:
        return bson.encode(doc, codec_options=DECODE_OPTIONS)
    except (bson.errors.BSONError, ValueError, TypeError, OverflowError):
        return b""


def _encode_raw(value: Mapping[str, Any] | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, RawBSONDocument):
        return bytes(value.raw)
    try:
        return bson.encode(dict(value))
    except (bson.errors.BSONError, ValueError, TypeError, OverflowError):
        return bson.encode({"unencodable": repr(value)[:10000]})


@dataclass
class Transformer:
    """Turns source documents and change events into :class:`Change`s or :class:`DeadLetter`s.

    Applies the schema's value policy (NUL, NaN, negative zero, dates out of range), removes
    ``exclude_fields`` (never landed), enforces ``dead_letter.max_document_bytes`` and counts
    what the policies changed per collection and field path (``collection_stats``; see
    :class:`~cartridge_dagster.documents.ConversionStats` and :meth:`take_stats`).
    """

    schema: SchemaConfig
    #: collection → what the value policies changed since the last :meth:`take_stats`
    collection_stats: dict[str, ConversionStats] = field(default_factory=dict)

    @property
    def stats(self) -> ConversionStats:
        """All collections' counts together (since the last :meth:`take_stats`)."""
        total = ConversionStats()
        for stats in self.collection_stats.values():
            total.merge(stats)
        return total

    def stats_for(self, collection: str) -> ConversionStats:
        found = self.collection_stats.get(collection)
        if found is None:
            found = self.collection_stats[collection] = ConversionStats()
        return found

    def take_stats(self, collection: str | None = None) -> dict[str, ConversionStats]:
        """The counts per collection since the last call, and start counting afresh (for a
        caller that adds them up where they outlive the process, e.g. per batch); only
        ``collection``'s when given (copies of several collections run side by side)."""
        if collection is not None:
            stats = self.collection_stats.pop(collection, None)
            return {collection: stats} if stats else {}
        taken = {c: s for c, s in self.collection_stats.items() if s}
        self.collection_stats = {}
        return taken

    def __post_init__(self) -> None:
        dl = self.schema.dead_letter
        self.policy = ValuePolicy(
            nul_in_strings=dl.nul_in_strings, non_finite_numbers=dl.non_finite_numbers
        )
        self.max_bytes = dl.max_document_bytes
        self._excludes: dict[str, list[list[str]]] = {}

    def _excluded(self, collection: str) -> list[list[str]]:
        found = self._excludes.get(collection)
        if found is None:
            found = [p.split(".") for p in self.schema.table(collection).exclude_fields]
            self._excludes[collection] = found
        return found

    def copy_rows(
        self, collection: str, docs: Sequence[bytes | Mapping[str, Any]], tail: bytes
    ) -> tuple[bytes, int, list[int]] | None:
        """Snapshot documents straight into binary COPY rows, in C (see
        :func:`~cartridge_dagster.documents.raw_copy_rows`; ``tail``: the rows' other fields):
        the rows, their number, and the indexes of the documents :meth:`document` must take
        (the ones the C conversion leaves to Python, oversized ones). BSON bytes and
        ``RawBSONDocument``s convert as they are; decoded documents (the embedded engine's
        stored ones) are encoded to BSON first (PyMongo's C encoder), and one it cannot encode
        is left to Python. ``None`` when the C path does not apply (no extension,
        ``exclude_fields``)."""
        if self._excluded(collection):
            return None
        raws = [
            d if type(d) is bytes else d.raw if isinstance(d, RawBSONDocument) else _bson_or_none(d)
            for d in docs
        ]
        return raw_copy_rows(raws, tail, self.max_bytes)

    def document(
        self,
        collection: str,
        doc: Mapping[str, Any] | bytes,
        *,
        op: Op,
        version: int,
        source_ts: dt.datetime | None,
        raw: Mapping[str, Any] | bytes | None = None,
        token: Mapping[str, Any] | None = None,
    ) -> Change | DeadLetter:
        """A full document (snapshot row or an event's ``fullDocument``) → change.

        A ``RawBSONDocument`` (PyMongo reading raw BSON), or a document's BSON ``bytes`` (a
        snapshot page cut from a raw cursor reply), converts in C without being decoded; the
        rare document the C path leaves to Python (see :func:`raw_document_json`), or one with
        ``exclude_fields``, is decoded first."""
        if isinstance(doc, (bytes, RawBSONDocument)):
            data = doc if isinstance(doc, bytes) else doc.raw
            fast = None if self._excluded(collection) else raw_document_json(data)
            if fast is not None:
                doc_id, body = fast
                if len(body) <= self.max_bytes:
                    return Change(collection, doc_id, op, version, body, source_ts)
            raw = raw or doc  # a dead letter keeps the bytes as they came
            try:
                doc = decode_raw(data)
            except UnlandableDocument as exc:
                return self._dead(collection, None, version, op, exc, raw, token)
        try:
            doc_id = canonical_id(doc.get("_id"))
        except (UnlandableDocument, TypeError, ValueError, orjson.JSONEncodeError) as exc:
            return self._dead(collection, None, version, op, exc, raw or doc, token)
        excludes = self._excluded(collection)
        if excludes:
            doc = dict(doc)
            for path in excludes:
                _drop_path(doc, path)
        counted = ConversionStats()  # kept only when the document lands
        try:
            body = document_json(doc, self.policy, counted)  # type: ignore[arg-type]
        except (UnlandableDocument, orjson.JSONEncodeError, TypeError, ValueError) as exc:
            return self._dead(collection, doc_id, version, op, exc, raw or doc, token)
        if len(body) > self.max_bytes:
            err = UnlandableDocument(
                f"document {doc_id!r} is {len(body)} bytes as JSON, over "
                f"dead_letter.max_document_bytes={self.max_bytes}",
                path="",
                reason="oversized",
            )
            return self._dead(collection, doc_id, version, op, err, raw or doc, token)
        if counted:
            self.stats_for(collection).merge(counted)
        return Change(collection, doc_id, op, version, body, source_ts)

    def event(
        self, event: Mapping[str, Any], version: int, source_ts: dt.datetime | None
    ) -> Change | DeadLetter | None:
        """A CRUD change event → change (``None`` when there is nothing to apply)."""
        op = str(event.get("operationType"))
        collection = str(event["ns"]["coll"])
        key = event.get("documentKey") or {}
        if op == "delete":
            try:
                doc_id = canonical_id(key.get("_id"))
            except (UnlandableDocument, TypeError, ValueError, orjson.JSONEncodeError) as exc:
                return self._dead(collection, None, version, op, exc, event, event.get("_id"))
            return Change(collection, doc_id, "delete", version, None, source_ts)
        if op in ("insert", "update", "replace"):
            full = event.get("fullDocument")
            if full is None:
                # updateLookup found nothing: the document was deleted after this update, and
                # its delete event follows in the stream.
                return None
            return self.document(
                collection,
                # document() copies before edits; raw BSON stays raw (converted in C)
                full if type(full) is dict or isinstance(full, RawBSONDocument) else dict(full),
                op=op,  # type: ignore[arg-type]
                version=version,
                source_ts=source_ts,
                raw=event,
                token=event.get("_id"),
            )
        return None

    def _dead(
        self,
        collection: str,
        doc_id: str | None,
        version: int,
        op: str,
        exc: BaseException,
        raw: Mapping[str, Any] | bytes,
        token: Any,
    ) -> DeadLetter:
        return DeadLetter(
            collection=collection,
            document_id=doc_id,
            version=version,
            op=op,
            error_class=type(exc).__name__,
            error_message=str(exc)[:2000],
            raw_event=_encode_raw(raw),
            token=dict(token) if isinstance(token, Mapping) else None,
        )


def dedup_latest(changes: Sequence[Change]) -> list[bool]:
    """For each change, whether it is the newest one of its (collection, _id) in the batch."""
    best: dict[tuple[str, str], int] = {}
    for i, ch in enumerate(changes):
        key = (ch.collection, ch.id)
        j = best.get(key)
        if j is None or changes[j].version <= ch.version:
            best[key] = i
    winners = set(best.values())
    return [i in winners for i in range(len(changes))]
