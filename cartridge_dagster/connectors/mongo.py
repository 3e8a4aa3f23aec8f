"""One small interface to MongoDB, whatever serves it.

``open_mongo(url)`` maps ``mongodb://`` and ``mongodb+srv://`` to PyMongo's async client
(``pymongo.AsyncMongoClient``; Motor is end-of-life) and ``mongoeco://PATH`` to the embedded
engine's in-process async client over a SQLite file. The rest of Cartridge uses
:class:`MongoConnection` and :class:`ChangeStream` and never asks which one it got.

Embedded engine notes (mongoeco 4.11): change streams on a file are read from the engine's
transactional change log (:mod:`cartridge_dagster.connectors.mongoeco_log`), which holds every
process's writes in commit order; a stream registers a durable consumer there and acknowledges
Clients opened here keep one change stream open, so the engine records each write's change
(without one it records a gap), and make the engine keep its newest changes for any reader.
Query option on the URL: ``history_size`` (default 10000): how many changes the engine keeps
(an oplog's size); a stream resumed from further back gets
:class:`~cartridge_dagster.errors.ResumeTokenLost` (as a real server's code 286).
``mongoeco://:memory:`` streams in process only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

import orjson

from cartridge_dagster.connectors.mongoeco_documents import DocumentReader
from cartridge_dagster.connectors.mongoeco_log import (
    ChangeLog,
    LogEntry,
    decode_token,
    encode_token,
)
from cartridge_dagster.errors import (
    CartridgeError,
    ConfigError,
    ConnectionFailed,
    ResumeTokenLost,
    TerminalError,
    TransientError,
    classify,
    is_busy_file,
    redact_url,
)
from cartridge_dagster.observability import get_logger

__all__ = [
    "ChangeStream",
    "MongoConnection",
    "aggregate",
    "bson_options",
    "change_log_event",
    "mongo_session",
    "mongoeco_paths",
    "open_event",
    "open_mongo",
    "raw_database",
]

log_ = get_logger("cartridge.connectors.mongo")

#: Change event fields kept as raw BSON by :func:`open_event` (converted to JSON in C).
RAW_EVENT_FIELDS = frozenset({"fullDocument", "fullDocumentBeforeChange"})


def _plain(value: Any) -> Any:
    from bson.raw_bson import RawBSONDocument

    from cartridge_dagster.documents import DECODE_OPTIONS

    if isinstance(value, RawBSONDocument):
        import bson

        return bson.decode(value.raw, DECODE_OPTIONS)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def open_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """A change event read as ``RawBSONDocument`` → a dict whose documents stay raw.

    Every field is decoded as usual except ``fullDocument`` and ``fullDocumentBeforeChange``,
    which stay ``RawBSONDocument``: warp converts them to JSON in C without building them
    (``_bsonjson.split_event`` cuts them out of the event's bytes first). Any other mapping
    (the embedded engine's dicts) comes back as a shallow copy."""
    raw = getattr(event, "raw", None)
    if raw is None:
        return dict(event)
    from bson.raw_bson import RawBSONDocument

    from cartridge_dagster.documents import DECODE_OPTIONS, RAW_OPTIONS, split_event

    parts = split_event(raw)
    if parts is None:  # no C extension, or BSON it could not walk: the field-by-field way
        return {
            key: value if key in RAW_EVENT_FIELDS else _plain(value) for key, value in event.items()
        }
    import bson

    envelope, full, before = parts
    opened: dict[str, Any] = bson.decode(envelope, DECODE_OPTIONS)
    if full is not None:
        opened["fullDocument"] = RawBSONDocument(full, RAW_OPTIONS)
    if before is not None:
        opened["fullDocumentBeforeChange"] = RawBSONDocument(before, RAW_OPTIONS)
    return opened


def raw_database(conn: MongoConnection, name: str) -> Any:
    """``conn``'s database ``name`` reading documents as ``RawBSONDocument`` (PyMongo, with the
    C conversion available), or as dicts (the embedded engine, which builds dicts anyway)."""
    from cartridge_dagster.documents import FAST_BSON

    db = conn.database(name)
    if conn.kind != "pymongo" or not FAST_BSON:
        return db
    return _raw_view(db)


def _raw_view(db: Any) -> Any:
    from bson.raw_bson import RawBSONDocument

    return db.with_options(
        codec_options=db.codec_options.with_options(document_class=RawBSONDocument)
    )


MongoKind = Literal["pymongo", "mongoeco"]
FullDocument = Literal["default", "updateLookup", "whenAvailable", "required"]

#: Codec options for encoding documents read from either client (UUIDs as standard subtype 4).
BSON_OPTIONS: Any = None


def bson_options() -> Any:
    """``bson.CodecOptions`` with tz-aware UTC dates and standard UUIDs (cached)."""
    global BSON_OPTIONS
    if BSON_OPTIONS is None:
        import datetime as dt

        from bson.binary import UuidRepresentation
        from bson.codec_options import CodecOptions

        BSON_OPTIONS = CodecOptions(
            tz_aware=True, tzinfo=dt.UTC, uuid_representation=UuidRepresentation.STANDARD
        )
    return BSON_OPTIONS


DEFAULT_HISTORY_SIZE = 10_000
#: Changes a client's in-process hub keeps (only ``:memory:`` streams read it).
_HUB_HISTORY = 64


@dataclass(frozen=True)
class MongoecoPaths:
    database: str  # SQLite file, or ":memory:"
    history_size: int


def mongoeco_paths(url: str) -> MongoecoPaths:
    """Parse ``mongoeco://PATH[?history_size=N]``.

    ``PATH`` is a file path, relative to the working directory unless absolute
    (``mongoeco:///abs/file.sqlite`` or ``mongoeco://rel/file.sqlite``).
    """
    rest = url.split("://", 1)[1]
    path, _, query = rest.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(params) - {"history_size"}
    if unknown:
        raise ConfigError(
            f"mongoeco URL: unknown option(s) {sorted(unknown)}; the one option is history_size"
        )
    try:
        history = int(params.get("history_size", DEFAULT_HISTORY_SIZE))
    except ValueError:
        raise ConfigError("mongoeco URL: history_size must be an integer") from None
    if history < 1:
        raise ConfigError("mongoeco URL: history_size must be at least 1")
    if not path:
        raise ConfigError("mongoeco URL needs a path: mongoeco://PATH/TO/source.sqlite")
    if path == ":memory:":
        return MongoecoPaths(":memory:", history)
    return MongoecoPaths(str(Path(path).expanduser().resolve()), history)


def _translate_error(exc: BaseException) -> BaseException:
    """Map driver errors about lost history onto :class:`ResumeTokenLost`."""
    import pymongo.errors as pme

    if isinstance(exc, pme.OperationFailure):
        text = str(exc).lower()
        if (
            exc.code in (286, 280)
            or "resume token is no longer available" in text
            or ("resume" in text and "no longer" in text)
        ):
            return ResumeTokenLost(
                f"change stream history lost: {exc}",
                hint="the stored resume token is older than the source keeps; re-snapshot "
                "(warp.history_lost_policy: resnapshot) or raise the oplog size",
            )
    return exc


def _reraise(exc: BaseException) -> Any:
    translated = _translate_error(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def change_log_event(entry: LogEntry, database: str | None) -> dict[str, Any] | None:
    """A change-log entry as a change event (the engine's in-process shape), or None when it
    belongs to another database."""
    try:
        payload = orjson.loads(entry.payload)  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        payload = json.loads(entry.payload)  # type: ignore[arg-type]  # NaN/Infinity literals
    if database is not None and payload.get("db_name") != database:
        return None
    from mongoeco.core.codec import DocumentCodec

    if "$mongoeco" in entry.payload:  # type: ignore[operator]
        payload = DocumentCodec.decode(payload, preserve_bson_wrappers=True)
    payload = DocumentCodec.to_pymongo(payload)
    op = payload["operation_type"]
    event: dict[str, Any] = {
        "_id": encode_token(entry.sequence),
        "operationType": op,
        "ns": {"db": payload["db_name"], "coll": payload["coll_name"]},
        "documentKey": payload["document_key"],
        "clusterTime": entry.sequence,
    }
    full = payload.get("full_document")
    if full is not None and op != "delete":
        event["fullDocument"] = full
    if payload.get("update_description") is not None:
        event["updateDescription"] = payload["update_description"]
    return event


class _LogCursor:
    """A change stream over the embedded engine's change log, from a position on."""

    #: How often a cursor looks for new changes (another process's writes included) right
    #: after one arrived; each empty look doubles the wait up to ``IDLE_POLL_SECONDS``, so an
    #: idle stream reads the log 5 times a second, not 40 (each look is a query in a thread).
    POLL_SECONDS = 0.025
    IDLE_POLL_SECONDS = 0.2
    #: Changes read from the log at a time: a backlog stays in the source, not in memory.
    READ_AHEAD = 64

    def __init__(self, log: ChangeLog, database: str | None, after: int, max_await_ms: int) -> None:
        self._log = log
        self._database = database
        self.position = after
        self._max_await = max_await_ms / 1000
        self._buffer: collections.deque[LogEntry] = collections.deque()
        self._poll = self.POLL_SECONDS

    async def try_next(self) -> dict[str, Any] | None:
        deadline = time.monotonic() + self._max_await
        while True:
            while self._buffer:
                entry = self._buffer.popleft()
                self.position = entry.sequence
                event = change_log_event(entry, self._database)
                if event is not None:
                    return event
            entries = await asyncio.to_thread(self._log.read, self.position, self.READ_AHEAD)
            if entries:
                self._buffer.extend(entries)
                self._poll = self.POLL_SECONDS
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await asyncio.sleep(min(self._poll, remaining))
            self._poll = min(self._poll * 2, self.IDLE_POLL_SECONDS)

    def close(self) -> None:
        self._buffer.clear()


class ChangeStream:
    """A change stream with one behaviour for both clients.

    ``try_next()`` returns the next event or ``None`` when nothing arrived within
    ``max_await_time_ms``; ``resume_token`` is the position after the last returned event (or
    the server's post-batch token while idle, where the driver has one). On the embedded
    engine's file the stream reads the engine's change log (:class:`ChangeLog`)."""

    def __init__(
        self,
        connection: MongoConnection,
        database: str | None,
        pipeline: Sequence[Mapping[str, Any]],
        *,
        resume_after: Mapping[str, Any] | None,
        start_after: Mapping[str, Any] | None,
        full_document: FullDocument,
        max_await_time_ms: int,
        raw_documents: bool = False,
    ) -> None:
        self._conn = connection
        from cartridge_dagster.documents import FAST_BSON

        # PyMongo reads events as RawBSONDocument (the embedded engine builds dicts anyway)
        self._raw = raw_documents and database is not None and connection.kind == "pymongo"
        self._raw = self._raw and FAST_BSON
        self._database = database
        self._pipeline = [dict(stage) for stage in pipeline]
        self._resume_after = dict(resume_after) if resume_after else None
        self._start_after = dict(start_after) if start_after else None
        self._full_document = full_document
        self._max_await_ms = max_await_time_ms
        self._cursor: Any = None
        self._last_token: dict[str, Any] | None = None

    async def _open_log(self, log: ChangeLog) -> None:
        start = self._last_token or self._start_after or self._resume_after
        after = decode_token(start) if start is not None else None
        position = await asyncio.to_thread(log.position, after)
        self._cursor = _LogCursor(log, self._database, position, self._max_await_ms)
        self._last_token = encode_token(position)

    async def _open(self) -> None:
        log = self._conn.change_log()
        if log is not None:
            await self._open_log(log)
            return
        client = self._conn.client
        kwargs: dict[str, Any] = {"max_await_time_ms": self._max_await_ms}
        if self._full_document != "default":
            kwargs["full_document"] = self._full_document
        if self._last_token is not None:
            kwargs["resume_after"] = self._last_token
        elif self._start_after is not None:
            kwargs["start_after"] = self._start_after
        elif self._resume_after is not None:
            kwargs["resume_after"] = self._resume_after
        target = client[self._database] if self._database is not None else client
        if self._raw:
            target = _raw_view(target)
        try:
            if self._conn.kind == "pymongo":
                self._cursor = await target.watch(self._pipeline, **kwargs)
            else:
                self._cursor = target.watch(self._pipeline, **kwargs)
        except Exception as exc:  # noqa: BLE001 - re-raised, translated when recognised
            _reraise(exc)
        if self._last_token is None:
            token = getattr(self._cursor, "resume_token", None)
            if token is not None:
                self._last_token = dict(token)

    async def position(self) -> dict[str, Any] | None:
        """Open the stream if needed and return its current resume token (the position)."""
        if self._cursor is None:
            await self._open()
        return self.resume_token

    async def try_next(self) -> dict[str, Any] | None:
        if self._cursor is None:
            await self._open()
        try:
            event = await self._cursor.try_next()
        except Exception as exc:  # noqa: BLE001 - re-raised, translated when recognised
            _reraise(exc)
        if isinstance(self._cursor, _LogCursor):
            self._last_token = encode_token(self._cursor.position)
        if event is not None:
            event = open_event(event)
            self._last_token = dict(event["_id"])
            return event  # type: ignore[no-any-return]
        token = getattr(self._cursor, "resume_token", None)
        if token is not None:
            self._last_token = dict(token)
        return None

    @property
    def resume_token(self) -> dict[str, Any] | None:
        if self._last_token is not None:
            return self._last_token
        return self._start_after or self._resume_after

    async def close(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            result = cursor.close()
            if asyncio.iscoroutine(result):
                await result

    async def __aenter__(self) -> ChangeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass
class MongoConnection:
    """An open MongoDB client and what kind it is."""

    kind: MongoKind
    client: Any
    display_url: str
    _url: str = field(default="", repr=False)
    _closed: bool = field(default=False, repr=False)
    #: The embedded engine's SQLite file (None: a server, or ``:memory:``).
    _path: str | None = field(default=None, repr=False)
    _log: ChangeLog | None = field(default=None, repr=False)
    _reader: DocumentReader | None = field(default=None, repr=False)
    _publisher: Any = field(default=None, repr=False)
    _connected: bool = field(default=False, repr=False)

    def database(self, name: str) -> Any:
        return self.client[name]

    async def connect(self) -> None:
        """Open the underlying client (the embedded engine must be connected before use)."""
        if self.kind == "mongoeco" and not self._connected:
            await self.client.__aenter__()
            self._connected = True
            if self._path is not None:
                # An open stream makes the engine record every write's change in its change
                # log (without one it records a gap, which no reader can get past).
                self._publisher = self.client.watch(max_await_time_ms=0)
                log = self.change_log()
                assert log is not None
                await asyncio.to_thread(log.hold)

    def change_log(self) -> ChangeLog | None:
        """The embedded engine's change log (a file-backed embedded engine only)."""
        if self._path is None:
            return None
        if self._log is None:
            self._log = ChangeLog(self._path)
        return self._log

    def document_reader(self) -> DocumentReader | None:
        """Batched reads by ``_id`` from the embedded engine's file (None: a server, or
        ``:memory:``); see :mod:`~cartridge_dagster.connectors.mongoeco_documents`."""
        if self._path is None:
            return None
        if self._reader is None:
            self._reader = DocumentReader(self._path)
        return self._reader

    async def position(self) -> dict[str, Any] | None:
        """The embedded engine's newest change as a resume token (None: a server, which gives
        its position through a change stream)."""
        log = self.change_log()
        if log is None:
            return None
        return encode_token(await asyncio.to_thread(log.position, None))

    async def ping(self) -> None:
        try:
            await self.connect()
            if self.kind == "pymongo":
                await self.client.admin.command("ping")
            else:
                await self.client.server_info()
        except Exception as exc:  # noqa: BLE001 - mapped to one clear error
            raise first_contact_error(self.display_url, exc) from None

    async def list_collection_names(self, database: str) -> list[str]:
        names = await self.client[database].list_collection_names()
        return sorted(str(n) for n in names)

    async def list_database_names(self) -> list[str]:
        return sorted(str(n) for n in await self.client.list_database_names())

    def watch(
        self,
        database: str | None = None,
        pipeline: Sequence[Mapping[str, Any]] = (),
        *,
        resume_after: Mapping[str, Any] | None = None,
        start_after: Mapping[str, Any] | None = None,
        full_document: FullDocument = "updateLookup",
        max_await_time_ms: int = 500,
        raw_documents: bool = False,
    ) -> ChangeStream:
        """A change stream on one database (or the whole deployment when ``database`` is None).

        ``raw_documents``: events' full documents stay raw BSON (see :func:`open_event`) where
        the client and the C conversion allow it (:func:`raw_database`)."""
        return ChangeStream(
            self,
            database,
            pipeline,
            resume_after=resume_after,
            start_after=start_after,
            full_document=full_document,
            max_await_time_ms=max_await_time_ms,
            raw_documents=raw_documents,
        )

    @property
    def supports_server_change_streams(self) -> bool:
        """True for a real server (a replica set is still needed for streams to open)."""
        return self.kind == "pymongo"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        publisher, self._publisher = self._publisher, None
        if publisher is not None:
            publisher.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        result = self.client.close()
        if asyncio.iscoroutine(result):
            await result

    async def __aenter__(self) -> MongoConnection:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


#: Server error codes that retrying cannot fix: wrong credentials, missing privileges.
_AUTH_CODES = frozenset({13, 18, 8000})


def first_contact_error(display_url: str, exc: BaseException) -> CartridgeError:
    """The one error a failed first contact maps onto: terminal for credentials, transient
    (retried) for a busy embedded file, "cannot reach" otherwise."""
    detail = f"{type(exc).__name__}: {redact_url(str(exc))[:300]}"
    code = getattr(exc, "code", None)
    if code in _AUTH_CODES or "authentication failed" in str(exc).lower():
        return TerminalError(
            f"MongoDB at {display_url} refused the credentials: {detail}",
            hint="check the user, password and authSource in source.connection_string",
        )
    if classify(exc) is TransientError and is_busy_file(exc):
        return ConnectionFailed(f"the embedded engine at {display_url} is busy: {detail}")
    return ConnectionFailed(f"cannot reach MongoDB at {display_url}: {detail}")


async def stream_start(client: Any, database: str) -> tuple[Any, dict[str, Any] | None]:
    """A server's current position, recorded before a snapshot reads: ``hello``'s operation
    time and the resume token of a change stream opened on ``database`` (the time is None on a
    server without change streams: a standalone one)."""
    hello = await client.admin.command("hello")
    op_time = hello.get("operationTime")
    if op_time is None:
        return None, None
    stream = await client[database].watch([], max_await_time_ms=10)
    try:
        token = stream.resume_token  # the aggregate's postBatchResumeToken (MongoDB 4.0.7+)
        if token is None:
            await stream.try_next()
            token = stream.resume_token
    finally:
        await stream.close()
    return op_time, (dict(token) if token else None)


def natural_find(collection: str, batch_size: int, resume_after: Any = None) -> Any:
    """The ``find`` of a resumable natural-order scan of ``collection`` (MongoDB 4.4+):
    ``hint: {$natural: 1}`` and ``$_requestResumeToken``, from ``resume_after`` (a
    ``postBatchResumeToken``) when given."""
    from bson import SON

    command: Any = SON(
        [
            ("find", collection),
            ("filter", {}),
            ("hint", {"$natural": 1}),
            ("batchSize", batch_size),
            ("$_requestResumeToken", True),
        ]
    )
    if resume_after is not None:
        command["$_resumeAfter"] = resume_after
    return command


def open_mongo(
    url: str,
    *,
    timeout_seconds: float = 10.0,
    history_size: int | None = None,
) -> MongoConnection:
    """Open a client for ``url`` (no I/O happens until first use; call ``ping()`` to check).

    ``history_size`` overrides the URL's: how many changes an embedded engine keeps behind its
    slowest consumer when this client writes."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    display = redact_url(url)
    if scheme in ("mongodb", "mongodb+srv"):
        import pymongo

        timeout_ms = int(timeout_seconds * 1000)
        client: Any
        try:
            client = pymongo.AsyncMongoClient(
                url,
                serverSelectionTimeoutMS=timeout_ms,
                connectTimeoutMS=timeout_ms,
                tz_aware=True,  # as documents.DECODE_OPTIONS
                uuidRepresentation="standard",
                datetime_conversion="DATETIME_AUTO",  # dates past datetime range: DatetimeMS
                appname="cartridge",
            )
        except pymongo.errors.ConfigurationError as exc:
            raise ConfigError(f"invalid MongoDB connection string {display}: {exc}") from None
        except pymongo.errors.InvalidURI as exc:
            raise ConfigError(f"invalid MongoDB connection string {display}: {exc}") from None
        return MongoConnection("pymongo", client, display, url)
    if scheme == "mongoeco":
        try:
            from mongoeco import AsyncMongoClient
            from mongoeco.engines import SQLiteEngine
        except ImportError:
            raise ConfigError(
                "mongoeco:// needs the embedded engine: pip install 'cartridge-dagster[demo]'"
            ) from None
        paths = mongoeco_paths(url)
        history = history_size or paths.history_size
        if paths.database == ":memory:":
            client = AsyncMongoClient(change_stream_history_size=history)
            return MongoConnection("mongoeco", client, display, url)
        Path(paths.database).parent.mkdir(parents=True, exist_ok=True)
        client = AsyncMongoClient(
            SQLiteEngine(paths.database, change_outbox_max_entries=history),
            change_stream_history_size=_HUB_HISTORY,
        )
        return MongoConnection("mongoeco", client, display, url, _path=paths.database)
    raise ConfigError(
        f"unsupported MongoDB URL {display}: use mongodb://, mongodb+srv:// or mongoeco://PATH"
    )


@contextlib.asynccontextmanager
async def mongo_session(url: str, *, timeout_seconds: float = 10.0, **options: Any) -> Any:
    """``async with mongo_session(url) as conn:`` — opens, pings, always closes.

    ``options`` go to :func:`open_mongo` (``history_size``).
    """
    conn = open_mongo(url, timeout_seconds=timeout_seconds, **options)
    try:
        await conn.ping()
        yield conn
    finally:
        await conn.close()


async def aggregate(collection: Any, pipeline: Sequence[Mapping[str, Any]], **kwargs: Any) -> Any:
    """``collection.aggregate`` for both clients (PyMongo's async API returns an awaitable)."""
    cursor = collection.aggregate(list(pipeline), **kwargs)
    if asyncio.iscoroutine(cursor) or hasattr(cursor, "__await__"):
        cursor = await cursor
    return cursor
