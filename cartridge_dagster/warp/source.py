"""The MongoDB side of warp: a consistent snapshot, then one change stream per schema.

Order of work for schema S (database D):

1. Record the stream position first (a resume token and its cluster time), and a snapshot plan
   (one entry per collection in scope, with the snapshot version = that position, ordinal 0).
2. Copy each collection in ``_id`` order, in chunks; each batch carries the last ``_id`` copied,
   so a crash resumes the copy where it stopped, per collection.
3. Stream D's changes from the recorded position (``fullDocument: updateLookup`` by default),
   routed per collection. Overlap with the copy is harmless: versions decide.

Drop, rename and dropDatabase follow ``warp.drop_policy``; after an ``invalidate`` the stream is
re-opened with ``startAfter``. The embedded engine does not emit rename or dropDatabase events
(and reports a collection drop as an ``invalidate`` naming the collection), so while idle the
source also reconciles the collection list: a collection that vanished is treated as dropped,
one that appeared with documents but no events (a rename target) is copied.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson
import pymongo.errors
from bson import Timestamp

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.connectors.mongo import (
    ChangeStream,
    MongoConnection,
    natural_find,
    raw_database,
    stream_start,
)
from cartridge_dagster.connectors.mongoeco_log import decode_token
from cartridge_dagster.connectors.mongoeco_store import StoreScan, decode_stored_text
from cartridge_dagster.documents import ConversionStats, split_documents
from cartridge_dagster.errors import TerminalError
from cartridge_dagster.observability import get_logger
from cartridge_dagster.safe_reads import find_documents
from cartridge_dagster.warp.changes import (
    Change,
    DeadLetter,
    Transformer,
    cluster_base,
    make_version,
    split_version,
)
from cartridge_dagster.warp.early import FIRST_PAGE, EarlyReads
from cartridge_dagster.warp.sink import (
    COPY_HEADER,
    COPY_TRAILER,
    Batch,
    CopyRows,
    Wipe,
    copy_tail,
)
from cartridge_dagster.warp.sources import Position

__all__ = [
    "DropPolicyStop",
    "Position",
    "SchemaSource",
    "decode_after",
    "encode_after",
]

#: Documents read between two explicit yields to the event loop (the writer shares it).
YIELD_EVERY = 100
#: Documents converted to COPY rows in one call to C (between two yields to the event loop).
COPY_CHUNK = 1000

log = get_logger("cartridge.warp.source")

#: Errors of a server that does not take resumable natural-order scans: BadValue,
#: FailedToParse, Unauthorized, InvalidOptions, unknown field (then ``_id`` order).
_NO_RESUMABLE_SCANS = frozenset({2, 9, 13, 72, 40415})


def _plain(value: Any) -> Any:
    """A reply's (raw BSON) value as plain Python values, for the checkpoint."""
    raw = getattr(value, "raw", None)
    if raw is not None:
        return bson.decode(raw)
    return dict(value) if isinstance(value, Mapping) else value


def _cursor_reply(reply: Any, key: str) -> tuple[list[Any], int, Any]:
    """A cursor reply's ``key`` batch, cursor id and ``postBatchResumeToken`` (plain values).

    A raw reply is read without decoding it: its batch array is cut into each document's BSON
    bytes (what :meth:`Transformer.document` converts in C), and only the id and the token are
    decoded. Reading ``reply["cursor"]["id"]`` would inflate the cursor document, making a
    ``RawBSONDocument`` of every document in the batch (~3 µs each, thrown away); decoding
    the array would also turn a document shaped like a DBRef into one."""
    raw = getattr(reply, "raw", None)
    if raw is None:  # decoded (no C conversion): a DBRef-shaped document back to a document
        from bson.dbref import DBRef

        cursor = reply["cursor"]
        docs = [d.as_doc() if isinstance(d, DBRef) else d for d in cursor[key]]
        return docs, int(cursor["id"]), _plain(cursor.get("postBatchResumeToken"))
    cursor_doc = _element(raw, 4, "cursor", 3)
    if cursor_doc is None:
        raise ValueError("a cursor reply without a cursor document")
    fields = _top_level(cursor_doc)
    array = fields.get(key)
    out: list[bytes] = []
    if array is not None and array[0] == 4:
        data = array[1]
        cut = split_documents(data)  # in C; the loop below for an array it cannot frame
        if cut is not None:
            out = cut
        pos, end = (4, len(data) - 1) if cut is None else (0, 0)
        while pos < end:
            kind = data[pos]
            name_end = data.index(0, pos + 1)
            start = name_end + 1
            if kind in (3, 4):
                size = int.from_bytes(data[start : start + 4], "little")
            else:  # not a document (no server sends one): skipped by its size
                size = _value_size(kind, data, start)
            if kind == 3:
                out.append(data[start : start + size])
            pos = start + size
    cursor_id = 0
    found = fields.get("id")
    if found is not None:
        kind, value = found
        cursor_id = int.from_bytes(value, "little", signed=True) if kind in (16, 18) else 0
    token = fields.get("postBatchResumeToken")
    plain = bson.decode(token[1]) if token is not None and token[0] == 3 else None
    return out, cursor_id, plain


#: The size of a copy's last page, when the estimated count says where the end is.
LAST_PAGE = 1000


def _answered_count(reply: asyncio.Future[Any]) -> int | None:
    """The estimated count of a ``count`` reply, when it has arrived (else None)."""
    if not reply.done() or reply.cancelled() or reply.exception() is not None:
        return None
    try:
        return int(reply.result()["n"])
    except (KeyError, TypeError, ValueError):
        return None


def page_size(size: int, estimate: int | None, read: int) -> int:
    """The next page's size: ``size``, but where ``estimate`` (the collection's estimated
    count; None: unknown) says at most ``size + LAST_PAGE`` documents are left after the
    ``read`` ones, what leaves about :data:`LAST_PAGE` for the last page; the last page is
    asked for as a full one, so its reply also says the cursor ended (no empty page after
    it). An estimate that is off only changes page sizes: the copy reads until the server's
    cursor ends."""
    left = -1 if estimate is None else estimate - read
    if left > size + LAST_PAGE or left <= 2 * LAST_PAGE:
        return size
    return min(size, left - LAST_PAGE)


def _top_level(doc: bytes) -> dict[str, tuple[int, bytes]]:
    """``doc``'s top-level elements: name → (BSON type, the value's bytes); sub-documents and
    arrays as their own BSON, skipped over by their length (never walked)."""
    out: dict[str, tuple[int, bytes]] = {}
    pos, end = 4, len(doc) - 1
    while pos < end:
        t = doc[pos]
        name_end = doc.index(0, pos + 1)
        start = name_end + 1
        if t in (3, 4):
            size = int.from_bytes(doc[start : start + 4], "little")
        else:
            size = _value_size(t, doc, start)
        out[doc[pos + 1 : name_end].decode()] = (t, doc[start : start + size])
        pos = start + size
    return out


def _element(doc: bytes, pos: int, name: str, kind: int) -> bytes | None:
    """The bytes of sub-document (kind 3) or array (kind 4) ``name`` at the top of ``doc``."""
    want = name.encode()
    end = len(doc) - 1
    while pos < end:
        t = doc[pos]
        name_end = doc.index(0, pos + 1)
        start = name_end + 1
        if t in (3, 4):
            size = int.from_bytes(doc[start : start + 4], "little")
            if t == kind and doc[pos + 1 : name_end] == want:
                return bytes(doc[start : start + size])
            pos = start + size
            continue
        pos = start + _value_size(t, doc, start)
    return None


def _value_size(t: int, doc: bytes, start: int) -> int:
    """Bytes of a (non-document) BSON value of type ``t`` at ``start``."""
    fixed = {1: 8, 7: 12, 8: 1, 9: 8, 10: 0, 16: 4, 17: 8, 18: 8, 19: 16, 127: 0, 255: 0}
    if t in fixed:
        return fixed[t]
    if t in (2, 13, 14):  # string, code, symbol: int32 length + bytes
        return 4 + int.from_bytes(doc[start : start + 4], "little")
    if t == 5:  # binary: int32 length + subtype + bytes
        return 5 + int.from_bytes(doc[start : start + 4], "little")
    if t == 15:  # code with scope: int32 total
        return int.from_bytes(doc[start : start + 4], "little")
    if t == 11:  # regex: two cstrings
        first = doc.index(0, start)
        return doc.index(0, first + 1) + 1 - start
    if t == 12:  # DBPointer: string + 12 bytes
        return 4 + int.from_bytes(doc[start : start + 4], "little") + 12
    raise ValueError(f"unexpected BSON type {t} in a cursor reply")


def _later_brackets(value: Any) -> list[Any]:
    """The smallest value of each BSON type bracket that sorts after ``value``'s (MongoDB's
    order: numbers, strings, objects, binary, ObjectId, booleans, dates, timestamps)."""
    from bson import Binary, MaxKey, ObjectId
    from bson.datetime_ms import DatetimeMS

    brackets: list[tuple[tuple[type, ...], Any]] = [
        ((int, float, bson.Int64, bson.Decimal128), float("-inf")),
        ((str,), ""),
        ((dict,), {}),
        ((bytes, Binary), Binary(b"", 0)),
        ((ObjectId,), ObjectId("0" * 24)),
        ((bool,), False),
        ((dt.datetime, DatetimeMS), DatetimeMS(-(2**63))),
        ((Timestamp,), Timestamp(0, 0)),
        ((MaxKey,), MaxKey()),
    ]
    for i, (types, _low) in enumerate(brackets):
        if isinstance(value, bool):
            if bool in types:
                return [low for _, low in brackets[i + 1 :]]
            continue
        if isinstance(value, types):
            return [low for _, low in brackets[i + 1 :]]
    return [low for _, low in brackets]


CRUD = frozenset({"insert", "update", "replace", "delete"})


class DropPolicyStop(TerminalError):
    """A collection or the database was dropped or renamed and ``warp.drop_policy`` is ``fail``."""


def encode_after(value: Any) -> str:
    """A snapshot cursor (the last ``_id`` copied) as text for the checkpoint."""
    return base64.b64encode(bson.encode({"v": value})).decode("ascii")


def decode_after(text: str) -> Any:
    return bson.decode(base64.b64decode(text))["v"]


def _source_ts(event: Mapping[str, Any]) -> dt.datetime:
    wall = event.get("wallTime")
    if isinstance(wall, dt.datetime):
        return wall if wall.tzinfo else wall.replace(tzinfo=dt.UTC)
    ct = event.get("clusterTime")
    if isinstance(ct, Timestamp):
        return ct.as_datetime()
    # The embedded engine's clusterTime is a sequence number: the read time is the best we have.
    return dt.datetime.now(dt.UTC)


@dataclass
class SchemaSource:
    """Reads one schema's collections and change stream and produces :class:`Batch`es: the
    MongoDB :class:`~cartridge_dagster.warp.sources.Source`."""

    label = "MongoDB"

    conn: MongoConnection
    schema: SchemaConfig
    transformer: Transformer
    max_await_ms: int = 250
    known: set[str] = field(default_factory=set)
    events_read: int = 0
    idle_since: float | None = None
    last_version: int = 0
    _last_base: int = -1
    _last_ordinal: int = 0
    #: Successful reads of the change stream (a retry loop's sign that the source is back).
    reads: int = 0
    _split_large_events: bool = True
    _fragments: list[dict[str, Any]] = field(default_factory=list)
    #: How the current stream was opened (``resume_after``, ``start_after``).
    _opened: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None)
    #: Live copies (a rename's target, a collection that appeared) not finished yet, with the
    #: state after the last batch handed over: a re-opened stream finishes them first.
    _copies: dict[str, tuple[dict[str, Any], bool]] = field(default_factory=dict)
    _scan_kind_cache: str | None = None
    _store: Any = None
    #: Events the server split into fragments (over 16 MiB) that were put back together.
    merged_splits: int = 0
    #: Update events whose ``fullDocument`` was missing (``whenAvailable`` without post-images)
    #: and that were looked up instead.
    looked_up: int = 0
    #: What ``warp run`` read while its settings were validated (``warp.early``): each read
    #: is used once, by the first call that would have made it.
    early: EarlyReads | None = None
    #: Estimated counts asked for at a copy's start, for the second of the two that want one
    #: (the progress's ETA, the page sizes): the future and when it was asked.
    _counts: dict[str, tuple[asyncio.Future[Any], float]] = field(default_factory=dict)

    async def _next_event(self, stream: ChangeStream) -> tuple[ChangeStream, Any]:
        """The next whole event: fragments of a split large event are merged back into one;
        a server without ``$changeStreamSplitLargeEvent`` gets the stream without it.

        MongoDB splits an event over 16 MiB at top-level fields: every fragment has its own
        ``_id`` (resume token) and ``splitEvent: {fragment: n, of: m}``. The merged event keeps
        the last fragment's ``_id``, so resuming after it never re-reads half an event."""
        while True:
            try:
                event = await stream.try_next()
            except Exception as exc:
                code = getattr(exc, "code", None)
                if self._split_large_events and code in (40324, 40573, 9):
                    log.info("warp.source.no_split_stage", schema=self.schema.name)
                    self._split_large_events = False
                    self._fragments = []
                    resume_after, start_after = self._opened
                    token = stream.resume_token
                    if token is not None and token not in (resume_after, start_after):
                        resume_after, start_after = dict(token), None  # events were read
                    await stream.close()
                    stream = self.open_stream(resume_after=resume_after, start_after=start_after)
                    continue
                raise
            self.reads += 1
            if event is None or "splitEvent" not in event:
                return stream, event
            split = event.pop("splitEvent")
            fragment, of = int(split.get("fragment", 1)), int(split.get("of", 1))
            if fragment == 1:
                self._fragments = []  # a re-opened stream delivers the event from its start
            self._fragments.append(dict(event))
            if fragment < of:
                continue
            merged: dict[str, Any] = {}
            for part in self._fragments:
                merged.update(part)
            self._fragments = []
            self.merged_splits += 1
            return stream, merged

    def _position(self, stream: ChangeStream) -> dict[str, Any] | None:
        """The stream's resume token, unless it points inside a split event."""
        if self._fragments:
            return None
        token = stream.resume_token
        return dict(token) if token is not None else None

    @property
    def database(self) -> Any:
        return self.conn.database(self.schema.source_database)

    async def check(self) -> None:
        """A first start on a database that does not exist is a typo, not an empty source:
        stop with one clear line instead of streaming nothing forever."""
        name = self.schema.source_database
        early = self.early
        if early is not None and early.databases is not None:
            names, early.databases = early.databases, None
        else:
            names = await self.conn.list_database_names()
        if name not in names:
            shown = ", ".join(n for n in names if n not in ("admin", "config", "local")) or "none"
            raise TerminalError(
                f"schema {self.schema.name!r}: the source has no database {name!r} "
                f"(it has: {shown})",
                hint="fix schemas[].source_database, or create the database first",
            )

    async def acknowledge(self, token: Mapping[str, Any]) -> None:
        """A MongoDB server keeps its oplog by size and time, whoever reads: nothing to do."""

    def take_stats(self, collection: str | None = None) -> dict[str, ConversionStats]:
        return self.transformer.take_stats(collection)

    async def estimate(self, collection: str) -> int | None:
        try:
            if self._scan_kind() == "store":
                if self._store is None:
                    log_ = self.conn.change_log()
                    assert log_ is not None
                    self._store = StoreScan(log_.path)
                db = self.schema.source_database
                return await asyncio.to_thread(self._store.count, db, collection)
        except (OSError, ValueError, AttributeError):
            return None
        count = self._count(collection)
        with contextlib.suppress(Exception):  # an estimate: without it, no ETA
            await asyncio.shield(count)
        return _answered_count(count)

    def _count(self, collection: str) -> asyncio.Future[Any]:
        """The server's ``count`` reply for ``collection`` (``n``: its estimated count), asked
        once for the two that want it as a copy starts (:meth:`estimate`,
        :meth:`_natural_pages`): the first asks, the second takes that answer (when it is at
        most a minute old). With the early reads it was asked for with the first page."""
        pending = self._counts.pop(collection, None)
        if pending is not None and time.monotonic() - pending[1] < 60:
            return pending[0]
        early = self.early.take_count(collection) if self.early is not None else None
        if early is not None:
            future = early
        else:

            async def ask() -> dict[str, int]:
                coll = self.conn.database(self.schema.source_database)[collection]
                return {"n": int(await coll.estimated_document_count())}

            future = asyncio.ensure_future(ask())
        # an error here only means no estimate: retrieved, so asyncio does not report it
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._counts[collection] = (future, time.monotonic())
        return future

    async def drop_early(self) -> None:
        """Let go of the early reads no call took (a first page whose copy was not started)."""
        if self.early is not None:
            early, self.early = self.early, None
            await early.close(self.conn)

    async def close(self) -> None:
        await self.drop_early()
        if self._store is not None:
            self._store.close()
            self._store = None
        await self.conn.close()

    # ------------------------------------------------------------------ position

    async def position(self) -> Position:
        """The current end of the change stream (record it before snapshotting)."""
        db_name = self.schema.source_database
        token = await self.conn.position()
        if token is not None:  # the embedded engine's file: its change log's newest position
            return Position(token, decode_token(token))
        if self.conn.kind == "mongoeco":  # in process (``:memory:``)
            state = self.conn.client.change_stream_state()
            last = int(state["nextToken"]) - 1
            return Position({"_data": str(max(last, 0))}, max(last, 0))
        early = self.early
        if early is not None and early.start is not None:
            (op_time, token), early.start = early.start, None
        else:
            op_time, token = await stream_start(self.conn.client, db_name)
        if op_time is None:
            raise TerminalError(
                "MongoDB did not report an operation time: change streams need a replica set "
                "or a sharded cluster",
                hint="point source.connection_string at a replica set (a single-node one works)",
            )
        return Position(token, cluster_base(op_time))

    async def collections(self) -> list[str]:
        early = self.early
        if early is not None and early.collections is not None:
            names, early.collections = early.collections, None
        else:
            names = await self.conn.list_collection_names(self.schema.source_database)
        return [n for n in names if self.schema.selects(n)]

    def seed_version(self, version: int) -> None:
        """Continue ordinals after a checkpoint (events sharing its cluster time)."""
        base, ordinal = split_version(version)
        self._last_base, self._last_ordinal = base, ordinal
        self.last_version = max(self.last_version, version)

    def _version(self, cluster_time: Any) -> int:
        base = cluster_base(cluster_time)
        if base == self._last_base:
            self._last_ordinal += 1
        else:
            self._last_base, self._last_ordinal = base, 1
        version = make_version(base, self._last_ordinal)
        self.last_version = max(self.last_version, version)
        return version

    def _synthetic_version(self) -> int:
        """A version after everything seen, for changes inferred without an event."""
        base, ordinal = split_version(self.last_version)
        self._last_base, self._last_ordinal = base, ordinal + 1
        self.last_version = make_version(base, ordinal + 1)
        return self.last_version

    # ------------------------------------------------------------------ snapshot

    def _scan_kind(self) -> str:
        """How this source copies a collection: ``store`` (the embedded engine's file: its
        stored documents in key order), ``natural`` (a server: a resumable natural-order scan,
        ``$_requestResumeToken``), or ``id`` (``_id`` order: the fallback)."""
        if self._scan_kind_cache is None:
            if self.conn.change_log() is not None:
                self._scan_kind_cache = "store"
            elif self.conn.kind == "pymongo":
                self._scan_kind_cache = "natural"
            else:
                self._scan_kind_cache = "id"
        return self._scan_kind_cache

    async def _pages(
        self, collection: str, state: Mapping[str, Any], size: int
    ) -> AsyncGenerator[tuple[list[Any], dict[str, Any]]]:
        """Pages of ``collection``'s documents from ``state`` on, each with the scan cursor
        after it (what the snapshot plan stores): linear in the collection, never a re-sort."""
        scan = state.get("scan")
        kind = scan.get("kind") if isinstance(scan, Mapping) else None
        if kind is None:
            kind = "id" if state.get("after") is not None else self._scan_kind()
        if kind == "store":
            async for page in self._store_pages(collection, scan, size):
                yield page
            return
        if kind == "natural":
            try:
                copied = int(state.get("copied", 0))
                async for page in self._natural_pages(collection, scan, size, copied):
                    yield page
                return
            except pymongo.errors.OperationFailure as exc:
                if scan is not None or exc.code not in _NO_RESUMABLE_SCANS:
                    raise
                # a server without resumable scans (MongoDB < 4.4, or not allowed): _id order
                log.info("warp.snapshot.id_order", collection=collection, reason=str(exc)[:200])
                self._scan_kind_cache = "id"
        async for page in self._id_pages(collection, state, size):
            yield page

    async def _store_pages(
        self, collection: str, scan: Mapping[str, Any] | None, size: int
    ) -> AsyncIterator[tuple[list[Any], dict[str, Any]]]:
        if self._store is None:
            path = self.conn.change_log()
            assert path is not None
            self._store = StoreScan(path.path)
        key = scan.get("key") if scan else None
        db = self.schema.source_database
        while True:
            rows = await asyncio.to_thread(self._store.page, db, collection, key, size)
            if not rows:
                return
            key = rows[-1][0]
            yield [decode_stored_text(text) for _, text in rows], {"kind": "store", "key": key}
            if len(rows) < size:
                return

    async def _natural_pages(
        self, collection: str, scan: Mapping[str, Any] | None, size: int, copied: int = 0
    ) -> AsyncIterator[tuple[list[Any], dict[str, Any]]]:
        """``find`` with ``hint: {$natural: 1}`` and ``$_requestResumeToken`` (MongoDB 4.4+):
        the storage order, no index, resumable after any batch (``$_resumeAfter``).

        Pages are ``size`` documents but near the end, where the server's estimated count
        (``copied``: the documents of the copy before ``scan``) says the next full page would
        be the last: the last page is then asked for as about :data:`LAST_PAGE` documents, so
        what is written after the server's last read is a small page, not a full one."""
        from bson import SON, Int64, json_util

        db = raw_database(self.conn, self.schema.source_database)
        # a smaller first page: warp and PostgreSQL start on it while the server reads the
        # next (full) one, instead of waiting for a whole page at the start
        first_size = min(size, FIRST_PAGE)
        resume = json_util.loads(str(scan["token"])) if scan and scan.get("token") else None
        early = (
            self.early.take_first(collection, first_size, size)
            if self.early is not None and resume is None
            else None
        )
        following: asyncio.Future[Any] | None = None
        if early is not None:  # asked for while the settings were validated (warp.early)
            session, asked, following = early
        else:
            session = self.conn.client.start_session()
            command = natural_find(collection, first_size, resume)
            asked = asyncio.ensure_future(
                db.command(command, session=session, codec_options=db.codec_options)
            )
        count = self._count(collection)
        read = copied
        async with session:

            def more(cursor_id: int) -> Any:
                estimate = _answered_count(count)  # what it says now: never waited for
                return db.command(
                    SON(
                        [
                            ("getMore", Int64(cursor_id)),
                            ("collection", collection),
                            ("batchSize", page_size(size, estimate, read)),
                        ]
                    ),
                    session=session,
                    codec_options=db.codec_options,
                )

            ahead: asyncio.Future[Any] | None = None
            cursor_id = 0
            try:
                reply = await asked
                batch, cursor_id, token = _cursor_reply(reply, "firstBatch")
                while True:
                    read += len(batch)
                    state = {"kind": "natural", "token": json_util.dumps(token)}
                    # the next batch is asked for now: the server reads it while this one is
                    # converted and written (one request in flight, as a driver's cursor would);
                    # the second one was asked for early, with the first
                    if following is not None:
                        ahead, following = following, None
                        if not cursor_id:  # the first page was the last: nothing was asked
                            ahead.cancel()
                            with contextlib.suppress(BaseException):
                                await ahead
                            ahead = None
                    else:
                        ahead = asyncio.ensure_future(more(cursor_id)) if cursor_id else None
                    if batch:
                        yield batch, state
                    if ahead is None:
                        return
                    reply, ahead = await ahead, None
                    batch, cursor_id, token = _cursor_reply(reply, "nextBatch")
            finally:
                for pending in (ahead, following):
                    if pending is not None:
                        pending.cancel()
                        with contextlib.suppress(BaseException):
                            await pending
                if cursor_id:
                    with contextlib.suppress(pymongo.errors.PyMongoError):
                        await db.command(
                            SON([("killCursors", collection), ("cursors", [Int64(cursor_id)])]),
                            session=session,
                        )

    async def _id_pages(
        self, collection: str, state: Mapping[str, Any], size: int
    ) -> AsyncIterator[tuple[list[Any], dict[str, Any]]]:
        """One cursor in ``_id`` order (the index on a server). After a resume, ``$gt`` stays
        within the BSON type of the last ``_id`` copied: the later types (MongoDB's sort order
        of types) follow, each found through the index (``$gte`` its smallest value)."""
        coll = raw_database(self.conn, self.schema.source_database)[collection]
        has_after = state.get("after") is not None
        after = decode_after(str(state["after"])) if has_after else None
        queries: list[dict[str, Any]] = [{"_id": {"$gt": after}} if has_after else {}]
        if has_after:
            queries += [{"_id": {"$gte": low}} for low in _later_brackets(after)]
        page: list[Any] = []
        for query in queries:
            async for doc in find_documents(
                coll, query, name=collection, sort_by_id=True, batch_size=size
            ):
                page.append(doc)
                if len(page) >= size:
                    yield page, {"after": encode_after(page[-1]["_id"])}
                    page = []
        if page:
            yield page, {"after": encode_after(page[-1]["_id"])}

    async def _copy_rows(
        self, collection: str, docs: list[Any], version: int, now: dt.datetime
    ) -> tuple[CopyRows, list[int]] | None:
        """A page of documents as binary COPY rows (in C, :data:`COPY_CHUNK` documents
        at a time, yielding to the event loop in between), and the indexes of the documents
        the Python conversion must take; None when the C path does not apply."""
        tail = copy_tail(version, "snapshot", now)
        parts = [COPY_HEADER]
        rows = 0
        rest: list[int] = []
        for start in range(0, len(docs), COPY_CHUNK):
            if start:
                await asyncio.sleep(0)  # let the writer's I/O progress meanwhile
            out = self.transformer.copy_rows(collection, docs[start : start + COPY_CHUNK], tail)
            if out is None:
                return None
            data, n, left = out
            parts.append(data)
            rows += n
            rest += [start + i for i in left] if start else left
        parts.append(COPY_TRAILER)
        return CopyRows(collection, b"".join(parts), rows, version), rest

    async def snapshot(
        self, collection: str, state: Mapping[str, Any], stop: asyncio.Event | None = None
    ) -> AsyncIterator[Batch]:
        """Copy ``collection`` from ``state`` (its snapshot-plan entry) on: one page of
        ``min(snapshot_chunk_size, max_batch_size)`` documents per batch (a transaction), each
        recording the scan cursor after it, so a crash resumes the copy where it stopped."""
        version = int(state["version"])
        size = min(self.schema.batching.snapshot_chunk_size, self.schema.batching.max_batch_size)
        copied = int(state.get("copied", 0))
        sweep = bool(state.get("sweep"))
        self.known.add(collection)
        cursor: dict[str, Any] = {
            k: state[k] for k in ("after", "scan") if state.get(k) is not None
        }

        def entry(done: bool) -> dict[str, Any]:
            return {
                "done": done,
                "version": str(version),  # JSON: a real cluster time needs ~80 bits
                "sweep": sweep,
                "copied": copied,
                "after": cursor.get("after"),
                "scan": cursor.get("scan"),
            }

        if stop is not None and stop.is_set():
            return
        # rows that go straight into the raw table (not a sweep, no history) land as binary
        # COPY rows written in C from the documents' BSON; the rest through Change objects
        copy_in = not sweep and not self.schema.table(collection).history
        pages = self._pages(collection, state, size)
        try:
            async for docs, position in pages:
                now = dt.datetime.now(dt.UTC)
                batch = Batch(kind="snapshot", version=None)
                rest: Sequence[int] = range(len(docs))
                if copy_in and docs:
                    page = await self._copy_rows(collection, docs, version, now)
                    if page is not None:
                        batch.copy, rest = page
                for i, at in enumerate(rest, 1):
                    if i % YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # let the writer's I/O progress meanwhile
                    out = self.transformer.document(
                        collection, docs[at], op="snapshot", version=version, source_ts=now
                    )
                    (batch.changes if isinstance(out, Change) else batch.dead).append(out)  # type: ignore[arg-type]
                copied += len(docs)
                batch.events = len(docs)
                cursor = {"after": position["after"]} if "after" in position else {"scan": position}
                batch.snapshot = {collection: entry(done=False)}
                batch.direct_copy = not sweep
                yield batch
                if stop is not None and stop.is_set():
                    return
        finally:
            await pages.aclose()
        final = Batch(kind="snapshot", version=None)
        final.snapshot = {collection: entry(done=True)}
        final.direct_copy = not sweep
        if sweep:
            final.wipes.append(Wipe(collection, version, "sweep"))
        yield final

    # ------------------------------------------------------------------ stream

    def open_stream(
        self,
        *,
        resume_after: Mapping[str, Any] | None = None,
        start_after: Mapping[str, Any] | None = None,
    ) -> ChangeStream:
        self._opened = (
            dict(resume_after) if resume_after else None,
            dict(start_after) if start_after else None,
        )
        pipeline: list[dict[str, Any]] = []
        if self.conn.kind == "pymongo" and self._split_large_events:
            # Events over 16 MiB arrive as fragments (MongoDB 6.0.9+/7.0), reassembled below.
            pipeline.append({"$changeStreamSplitLargeEvent": {}})
        return self.conn.watch(
            self.schema.source_database,
            pipeline,
            resume_after=resume_after,
            start_after=start_after,
            full_document=self.schema.warp.full_document,
            max_await_time_ms=self.max_await_ms,
            raw_documents=True,
        )

    async def _look_up(self, event: dict[str, Any]) -> None:
        """An update event without its document (``fullDocument: whenAvailable`` where the
        collection keeps no post-images): read the document as it is now, as ``updateLookup``
        would. Still missing: it was deleted since, and its delete event follows."""
        key = (event.get("documentKey") or {}).get("_id")
        coll = raw_database(self.conn, self.schema.source_database)[str(event["ns"]["coll"])]
        found = await coll.find_one({"_id": key})
        self.looked_up += 1
        if found is not None:
            event["fullDocument"] = found

    def _drop(self, collection: str, version: int, what: str) -> Wipe | None:
        policy = self.schema.warp.drop_policy
        if policy == "fail":
            raise DropPolicyStop(
                f"{what} in schema {self.schema.name!r} (collection {collection!r}) and "
                "warp.drop_policy is 'fail'",
                hint="decide what the raw table should do, set warp.drop_policy to "
                "'tombstone' or 'ignore', and restart warp",
            )
        self.known.discard(collection)
        if policy == "ignore":
            return None
        return Wipe(collection, version, "drop")

    async def stream(
        self,
        token: Mapping[str, Any] | None,
        stop: asyncio.Event,
        *,
        start_after: bool = False,
    ) -> AsyncIterator[Batch]:
        """Batches of changes from ``token`` on, until ``stop`` is set."""
        cfg = self.schema.batching
        idle_every = self.schema.warp.idle_checkpoint_seconds
        stream = self.open_stream(
            resume_after=None if start_after else token, start_after=token if start_after else None
        )
        batch = Batch(kind="stream")
        last_emitted_token = dict(token) if token else None
        last_activity = time.monotonic()
        last_reconcile = time.monotonic()
        self.idle_since = None  # idle once a read finds nothing, not before
        self._fragments = []
        try:
            for name, (state, versioned) in sorted(self._copies.items()):
                # interrupted (a lost connection): continue after the last batch handed over
                async for snap in self._live_copy(name, state, stop, versioned=versioned):
                    yield snap
            while not stop.is_set():
                stream, event = await self._next_event(stream)
                now = time.monotonic()
                if event is None:
                    if len(batch) or batch.wipes:
                        if now - batch.created >= cfg.max_batch_seconds:
                            last_emitted_token = dict(batch.token) if batch.token else None
                            yield batch
                            batch = Batch(kind="stream")
                        continue
                    batch.created = now
                    if self.idle_since is None:
                        self.idle_since = now
                    if now - last_reconcile >= idle_every:
                        last_reconcile = now
                        async for extra in self.reconcile(stop):
                            yield extra
                    current = self._position(stream)
                    if (
                        now - last_activity >= idle_every
                        and current is not None
                        and current != last_emitted_token
                    ):
                        last_activity = now
                        last_emitted_token = dict(current)
                        yield Batch(kind="idle", token=dict(current))
                    continue
                self.idle_since = None
                last_activity = now
                if not len(batch) and not batch.wipes:
                    batch.created = now
                self.events_read += 1
                if self.events_read % YIELD_EVERY == 0:
                    # a driver handing out a buffered batch never suspends: let the writer's
                    # I/O (another batch's transaction) progress meanwhile
                    await asyncio.sleep(0)
                op = str(event.get("operationType"))
                ns = event.get("ns") or {}
                collection = ns.get("coll")
                version = self._version(event["clusterTime"])
                batch.token = dict(event["_id"])
                batch.version = version
                batch.events += 1
                batch.source_ts = _source_ts(event)
                if op in CRUD:
                    if collection is None or not self.schema.selects(str(collection)):
                        pass
                    else:
                        self.known.add(str(collection))
                        if (
                            op == "update"
                            and event.get("fullDocument") is None
                            and self.schema.warp.full_document != "updateLookup"
                        ):
                            await self._look_up(event)
                        out = self.transformer.event(event, version, batch.source_ts)
                        if isinstance(out, Change):
                            batch.changes.append(out)
                        elif isinstance(out, DeadLetter):
                            batch.dead.append(out)
                elif op in ("drop", "rename", "dropDatabase", "invalidate"):
                    async for extra in self._structural(event, op, version, batch, stop):
                        yield extra
                    batch = Batch(kind="stream")
                    last_emitted_token = dict(event["_id"])
                    if op == "invalidate":
                        await stream.close()
                        stream = self.open_stream(start_after=event["_id"])
                    continue
                if len(batch) >= cfg.max_batch_size or (
                    now - batch.created >= cfg.max_batch_seconds
                ):
                    last_emitted_token = dict(batch.token) if batch.token else None
                    yield batch
                    batch = Batch(kind="stream")
            if len(batch) or batch.wipes or batch.token is not None:
                yield batch
        finally:
            await stream.close()

    async def _structural(
        self, event: Mapping[str, Any], op: str, version: int, batch: Batch, stop: asyncio.Event
    ) -> AsyncIterator[Batch]:
        """Drop, rename, dropDatabase, invalidate: close the batch with the wipes, copy a
        rename's target, then continue."""
        ns = event.get("ns") or {}
        collection = ns.get("coll")
        if op == "dropDatabase":
            for name in sorted(self.known):
                wipe = self._drop(name, version, "the source database was dropped")
                if wipe is not None:
                    batch.wipes.append(wipe)
        elif collection is not None and self.schema.selects(str(collection)):
            what = {
                "drop": "a collection was dropped",
                "rename": "a collection was renamed",
                "invalidate": "a collection was dropped",
            }[op]
            if str(collection) in self.known or op != "invalidate":
                wipe = self._drop(str(collection), version, what)
                if wipe is not None:
                    batch.wipes.append(wipe)
        log.info("warp.source.structural", schema=self.schema.name, op=op, collection=collection)
        yield batch
        if op == "rename":
            target = (event.get("to") or {}).get("coll")
            if target is not None and self.schema.selects(str(target)):
                state = {"done": False, "after": None, "version": version, "sweep": True}
                async for snap in self._live_copy(str(target), state, stop, versioned=False):
                    yield snap

    async def reconcile(self, stop: asyncio.Event) -> AsyncIterator[Batch]:
        """Compare the collection list with what warp knows (renames and database drops the
        embedded engine does not report as events)."""
        present = set(await self.collections())
        vanished = sorted(self.known - present)
        if vanished:
            version = self._synthetic_version()
            batch = Batch(kind="stream", version=version)
            for name in vanished:
                wipe = self._drop(name, version, "a collection disappeared")
                if wipe is not None:
                    batch.wipes.append(wipe)
            log.info("warp.source.vanished", schema=self.schema.name, collections=vanished)
            yield batch
        for name in sorted(present - self.known):
            coll = self.database[name]
            if await coll.find_one({}, {"_id": 1}) is None:
                continue
            version = self._synthetic_version()
            log.info("warp.source.appeared", schema=self.schema.name, collection=name)
            state = {"done": False, "after": None, "version": version, "sweep": True}
            async for snap in self._live_copy(name, state, stop, versioned=True):
                yield snap

    async def _live_copy(
        self, collection: str, state: Mapping[str, Any], stop: asyncio.Event, *, versioned: bool
    ) -> AsyncIterator[Batch]:
        """Copy ``collection`` while streaming (not part of the initial snapshot's plan).

        Its progress goes into the checkpoint's snapshot plan with each batch (the stream's
        position is already past the event that started the copy: a warp stopped or killed in
        the middle finishes it from the plan before streaming again). Until it is done it also
        stays in ``_copies`` with the state after the last batch the consumer took, so a stream
        re-opened after a lost connection finishes it first."""
        self._copies[collection] = (dict(state), versioned)
        version = int(state["version"])
        async for snap in self.snapshot(collection, state, stop):
            entry = (snap.snapshot or {}).get(collection)
            snap.direct_copy = False  # streamed changes may be in the table already
            if versioned:
                snap.version = version
            yield snap
            if entry is not None:  # handed over
                if entry.get("done"):
                    self._copies.pop(collection, None)
                else:
                    self._copies[collection] = (entry, versioned)
