"""One small interface to MongoDB, whatever serves it.

``open_mongo(url)`` maps ``mongodb://`` and ``mongodb+srv://`` to PyMongo's async client
(``pymongo.AsyncMongoClient``; Motor is end-of-life) and ``mongoeco://PATH`` to the embedded
engine's in-process async client over a SQLite file. The rest of Cartridge uses
:class:`MongoConnection` and :class:`ChangeStream` and never asks which one it got.

Embedded engine notes (mongoeco 4.11): change events persist, and become visible to other
processes, only through a journal file, which this module always configures next to the SQLite
file (``PATH.changes.*``); a stream sees another process's writes when it is re-opened from its
last token, so :class:`ChangeStream` re-opens itself when idle. The journal is capped: resuming
from a token older than the cap raises an ``OperationFailure`` without code 286, which this module
maps to :class:`~cartridge_dagster.errors.ResumeTokenLost` like the real server's code 286.
Query options on the URL: ``journal_max_bytes`` (default 4 MiB) and ``history_size``
(default 10000 events): a new client loads the retained history, so keep it modest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs

from cartridge_dagster.errors import (
    ConfigError,
    ConnectionFailed,
    ResumeTokenLost,
    redact_url,
)

__all__ = [
    "ChangeStream",
    "MongoConnection",
    "aggregate",
    "bson_options",
    "compact_change_journal",
    "mongo_session",
    "mongoeco_paths",
    "open_event",
    "open_mongo",
    "raw_database",
]

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


DEFAULT_JOURNAL_MAX_BYTES = 4 * 1024 * 1024
DEFAULT_HISTORY_SIZE = 10_000


@dataclass(frozen=True)
class MongoecoPaths:
    database: str  # SQLite file, or ":memory:"
    journal: str | None
    journal_max_bytes: int
    history_size: int


def mongoeco_paths(url: str) -> MongoecoPaths:
    """Parse ``mongoeco://PATH[?journal_max_bytes=N&history_size=N]``.

    ``PATH`` is a file path, relative to the working directory unless absolute
    (``mongoeco:///abs/file.sqlite`` or ``mongoeco://rel/file.sqlite``).
    """
    rest = url.split("://", 1)[1]
    path, _, query = rest.partition("?")
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    unknown = set(params) - {"journal_max_bytes", "history_size"}
    if unknown:
        raise ConfigError(f"mongoeco URL: unknown option(s) {sorted(unknown)}")
    try:
        max_bytes = int(params.get("journal_max_bytes", DEFAULT_JOURNAL_MAX_BYTES))
        history = int(params.get("history_size", DEFAULT_HISTORY_SIZE))
    except ValueError:
        raise ConfigError(
            "mongoeco URL: journal_max_bytes and history_size must be integers"
        ) from None
    if not path:
        raise ConfigError("mongoeco URL needs a path: mongoeco://PATH/TO/source.sqlite")
    if path == ":memory:":
        return MongoecoPaths(":memory:", None, max_bytes, history)
    file = str(Path(path).expanduser().resolve())
    return MongoecoPaths(file, file + ".changes", max_bytes, history)


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


async def _open_embedded_reader(url: str, attempts: int = 20) -> MongoConnection:
    """A new embedded-engine client, retrying the engine's journal-load race.

    A writer in another process compacts the journal (rewrites the snapshot and removes the
    event log) while this client reads it; mongoeco 4.11 then fails the load with
    ``FileNotFoundError``. The next attempt reads the compacted journal.
    """
    from mongoeco.errors import OperationFailure as EmbeddedOperationFailure

    for attempt in range(attempts):
        try:
            # The client's constructor loads the journal; connect() opens the engine.
            conn = open_mongo(url)
            await conn.connect()
            return conn
        except (FileNotFoundError, EmbeddedOperationFailure) as exc:
            if isinstance(exc, EmbeddedOperationFailure) and "journal" not in str(exc):
                raise
            if attempt == attempts - 1:
                # Still racing a writer: transient for the caller's retry policy.
                raise ConnectionFailed(
                    f"the embedded engine at {redact_url(url)} could not load its change "
                    f"journal after {attempts} attempts: {type(exc).__name__}: {exc}"
                ) from exc
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class ChangeStream:
    """A change stream with one behaviour for both clients.

    ``try_next()`` returns the next event or ``None`` when nothing arrived within
    ``max_await_time_ms``; ``resume_token`` is the position after the last returned event (or
    the server's post-batch token while idle, where the driver has one).
    """

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
        self._stream_conn: MongoConnection | None = None
        self._last_token: dict[str, Any] | None = None
        self._idle_polls = 0

    def _embedded_position(self, client: Any) -> dict[str, Any]:
        """The embedded engine's current position as a resume token (no event needed)."""
        state = client.change_stream_state()
        return {"_data": str(max(int(state["nextToken"]) - 1, 0))}

    async def _open(self) -> None:
        client = self._conn.client
        if self._conn.kind == "mongoeco":
            # The embedded engine loads other processes' events from its journal only when a
            # client is created: stream through a private client, re-created when idle.
            self._stream_conn = await _open_embedded_reader(self._conn._url)
            client = self._stream_conn.client
        if (
            self._conn.kind == "mongoeco"
            and self._last_token is None
            and self._start_after is None
            and self._resume_after is None
        ):
            # Pin "now" to a token, so re-opening when idle never skips an event.
            self._last_token = self._embedded_position(client)
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
        if self._last_token is None and self._conn.kind == "pymongo":
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
        if event is not None:
            self._idle_polls = 0
            event = open_event(event)
            self._last_token = dict(event["_id"])
            return event  # type: ignore[no-any-return]
        if self._conn.kind == "pymongo":
            token = getattr(self._cursor, "resume_token", None)
            if token is not None:
                self._last_token = dict(token)
        else:
            # The embedded engine shows other processes' writes only to a re-opened stream.
            self._idle_polls += 1
            await self._close_cursor()
        return None

    @property
    def resume_token(self) -> dict[str, Any] | None:
        if self._last_token is not None:
            return self._last_token
        return self._start_after or self._resume_after

    async def _close_cursor(self) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            result = cursor.close()
            if asyncio.iscoroutine(result):
                await result
        stream_conn, self._stream_conn = self._stream_conn, None
        if stream_conn is not None:
            await stream_conn.close()

    async def close(self) -> None:
        await self._close_cursor()

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

    def database(self, name: str) -> Any:
        return self.client[name]

    async def connect(self) -> None:
        """Open the underlying client (the embedded engine must be connected before use)."""
        if self.kind == "mongoeco":
            await self.client.__aenter__()

    async def ping(self) -> None:
        try:
            await self.connect()
            if self.kind == "pymongo":
                await self.client.admin.command("ping")
            else:
                await self.client.server_info()
        except Exception as exc:  # noqa: BLE001 - mapped to one clear error
            raise ConnectionFailed(
                f"cannot reach MongoDB at {self.display_url}: {type(exc).__name__}: "
                f"{redact_url(str(exc))[:300]}"
            ) from None

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
        result = self.client.close()
        if asyncio.iscoroutine(result):
            await result

    async def __aenter__(self) -> MongoConnection:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def open_mongo(
    url: str,
    *,
    timeout_seconds: float = 10.0,
    history_size: int | None = None,
    journal_max_bytes: int | None = None,
) -> MongoConnection:
    """Open a client for ``url`` (no I/O happens until first use; call ``ping()`` to check).

    Every embedded-engine client records change events in the journal: the engine's outbox
    refuses a journaled client after unjournaled writes, so there is no way around it. Once the
    retained history is full, the engine rewrites it on every write, so bulk loads pass a
    ``history_size`` above their size and compact afterwards (:func:`compact_change_journal`).
    """
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
        if history_size is not None or journal_max_bytes is not None:
            paths = MongoecoPaths(
                paths.database,
                paths.journal,
                journal_max_bytes or paths.journal_max_bytes,
                history_size or paths.history_size,
            )
        if paths.database == ":memory:":
            client = AsyncMongoClient(change_stream_history_size=paths.history_size)
        else:
            Path(paths.database).parent.mkdir(parents=True, exist_ok=True)
            client = AsyncMongoClient(
                SQLiteEngine(paths.database),
                change_stream_history_size=paths.history_size,
                change_stream_journal_path=paths.journal,
                change_stream_journal_max_bytes=paths.journal_max_bytes,
            )
        return MongoConnection("mongoeco", client, display, url)
    raise ConfigError(
        f"unsupported MongoDB URL {display}: use mongodb://, mongodb+srv:// or mongoeco://PATH"
    )


@contextlib.asynccontextmanager
async def mongo_session(url: str, *, timeout_seconds: float = 10.0, **options: Any) -> Any:
    """``async with mongo_session(url) as conn:`` — opens, pings, always closes.

    ``options`` go to :func:`open_mongo` (``history_size``, ``journal_max_bytes``).
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


async def compact_change_journal(url: str) -> None:
    """Rewrite the embedded engine's journal down to the URL's ``history_size`` (after a bulk
    load), so later clients load a small history. A no-op for a real server."""
    conn = open_mongo(url)
    if conn.kind != "mongoeco":
        await conn.close()
        return
    try:
        await conn.connect()
        # mongoeco 4.11 has no public compaction call on the client; its hub has one.
        hub = getattr(conn.client, "_change_hub", None)
        if hub is not None and hasattr(hub, "compact_journal"):
            hub.compact_journal()
    finally:
        await conn.close()
