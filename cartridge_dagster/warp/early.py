"""``warp run``'s first reads, asked for while its settings are validated.

A fresh ``cartridge warp run`` process spends a third of its start-up importing pydantic and
validating its settings (~0.1 s of CPU) before it could open the source. On a MongoDB server,
what a first start reads first depends on few of those settings: the source's databases, the
change stream's position, the collection names and the first page of the first collection the
snapshot copies. So the command reads the configuration file as plain YAML first
(:func:`plan`), and on its event loop opens the source and asks for those reads
(:meth:`EarlyRead.start`), in the order the runner asks for them — the position before the
collection names, both before the first page. The settings are validated meanwhile, in a worker
thread, and the server reads the first page during that time.

Nothing read here is trusted. Once the settings are validated, the runner compares them with
what was guessed from the file (:meth:`EarlyRead.adopt`):

- the source URL, its connect timeout and the database;
- the first collection the snapshot copies;
- the size of its first page.

It uses the early reads only when all of them match. Otherwise it drops them and the run goes on
exactly as without them. Each early read is then used once, by the first call that would have
made it (:class:`EarlyReads`). A restart from a checkpoint drops the first page as
:mod:`~cartridge_dagster.warp.readahead` drops its pages.

Only reads happen here (MongoDB's, which change nothing), and none in these cases:

- the environment overrides the file's ``source`` or ``schemas``: the file's server might not be
  the one this run reads;
- a PostgreSQL source: recording its position creates a replication slot;
- the embedded engine (read in process; nothing to overlap);
- a dry run;
- a file naming several schemas without ``--schema``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cartridge_dagster.config_file import find_config_file, inject_credentials, read_file, selects
from cartridge_dagster.errors import ConfigError

if TYPE_CHECKING:
    from cartridge_dagster.config import SchemaConfig
    from cartridge_dagster.connectors.mongo import MongoConnection
    from cartridge_dagster.warp.source import SchemaSource

__all__ = ["EarlyPlan", "EarlyRead", "EarlyReads", "plan"]

#: The first page of a server's natural-order scan (the next ones are full pages); the early
#: read asks for it before the settings say the pages are not smaller.
FIRST_PAGE = 1000
#: The full pages of a default configuration: ``min(snapshot_chunk_size, max_batch_size)``.
DEFAULT_CHUNK, DEFAULT_MAX_BATCH = 10_000, 5_000
#: Environment variables (lower-cased) that would override what the file says is read.
_OVERRIDES = (
    "cartridge_source",
    "cartridge_schemas",
    "cartridge_warp_source",
    "cartridge_warp_schemas",
)
#: How long validating the settings waits for the first page to be asked for (seconds).
_AT_MOST = 0.2
#: How often the interpreter switches threads while both run: the event loop's replies get the
#: GIL from the validating thread within this many seconds (the default is 5 ms per switch).
_SWITCH_INTERVAL = 0.0005


@dataclass(frozen=True)
class EarlyPlan:
    """What the file says the first start reads (none of it validated)."""

    schema: str
    url: str
    timeout_seconds: float
    database: str
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    #: the size of the snapshot's pages after the first
    page: int = DEFAULT_MAX_BATCH


def _strings(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def plan(
    config: str | os.PathLike[str] | None,
    schema: str | None,
    environ: Mapping[str, str] | None = None,
) -> EarlyPlan | None:
    """What ``warp run --config CONFIG [--schema SCHEMA]`` reads first, from the file alone;
    None whenever the file does not say it plainly (the validated settings report its errors)."""
    env = os.environ if environ is None else environ
    if any(name.lower().startswith(_OVERRIDES) for name in env):
        return None
    try:
        data = read_file(find_config_file(config))
    except ConfigError:
        return None
    schemas = data.get("schemas")
    if not isinstance(schemas, list):
        return None
    entries = [s for s in schemas if isinstance(s, dict)]
    if schema is not None:
        entries = [s for s in entries if s.get("name") == schema]
    if len(entries) != 1 or (len(schemas) != 1 and schema is None):
        return None
    entry = entries[0]
    source = entry.get("source") or data.get("source")
    if not isinstance(source, dict) or source.get("type", "mongodb") != "mongodb":
        return None
    url, user, password = (source.get(k) for k in ("connection_string", "username", "password"))
    timeout = source.get("connect_timeout_seconds", 10.0)
    database, name = entry.get("source_database"), entry.get("name")
    include, exclude = _strings(entry.get("include")), _strings(entry.get("exclude"))
    if (
        not isinstance(url, str)
        or url.split("://", 1)[0].lower() not in ("mongodb", "mongodb+srv")
        or not all(v is None or isinstance(v, str) for v in (user, password))
        or isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or timeout <= 0
        or not isinstance(database, str)
        or not isinstance(name, str)
        or include is None
        or exclude is None
    ):
        return None
    try:
        url = inject_credentials(url, user, password)
    except ValueError:
        return None
    page = _page(data.get("defaults"), entry)
    if page is None:
        return None
    return EarlyPlan(name, url, float(timeout), database, include, exclude, page)


def _page(defaults: Any, entry: dict[str, Any]) -> int | None:
    """``min(snapshot_chunk_size, max_batch_size)`` from the schema's ``batching``, then the
    file's ``defaults.batching``, then the settings' defaults."""
    sizes = {"snapshot_chunk_size": DEFAULT_CHUNK, "max_batch_size": DEFAULT_MAX_BATCH}
    for section in (
        defaults.get("batching") if isinstance(defaults, dict) else None,
        entry.get("batching"),
    ):
        if section is None:
            continue
        if not isinstance(section, dict):
            return None
        for key in sizes:
            value = section.get(key, sizes[key])
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return None
            sizes[key] = value
    return min(sizes.values())


@dataclass
class EarlyReads:
    """What was read early, each read used once by the source (``warp.source.SchemaSource``)."""

    databases: list[str] | None = None
    #: ``hello``'s operation time and the change stream's resume token
    start: tuple[Any, dict[str, Any] | None] | None = None
    collections: list[str] | None = None
    #: the first page asked for: collection, its size, the session, the reply; and the next
    #: page's size and reply (None when the first reply ends the cursor)
    first: tuple[str, int, Any, asyncio.Future[Any], int, asyncio.Future[Any]] | None = None
    #: when the first page was asked for (``time.time()``)
    asked_at: float | None = None
    #: the first page's collection and its ``count`` reply, asked for right after the first
    #: page (before the second): the copy's page sizes and ETA read it
    count: tuple[str, asyncio.Future[Any]] | None = None

    def take_count(self, collection: str) -> asyncio.Future[Any] | None:
        """The ``count`` reply asked for ``collection`` (once)."""
        if self.count is None or self.count[0] != collection:
            return None
        future, self.count = self.count[1], None
        return future

    def take_first(
        self, collection: str, first: int, size: int
    ) -> tuple[Any, asyncio.Future[Any], asyncio.Future[Any]] | None:
        """The session and the replies of the first two pages of ``collection``, if they were
        asked for with these page sizes (once)."""
        if self.first is None:
            return None
        name, first_size, session, reply, next_size, following = self.first
        if (name, first_size, next_size) != (collection, first, size):
            return None
        self.first = None
        return session, reply, following

    async def close(self, conn: MongoConnection) -> None:
        """Let go of a first page no one took: its cursor and its session."""
        count, self.count = self.count, None
        if count is not None and not count[1].done():
            count[1].cancel()
        first, self.first = self.first, None
        if first is None:
            return
        collection, _, session, reply, _, following = first
        for future in (following, reply):
            if not future.done():
                future.cancel()
        with contextlib.suppress(BaseException):
            await following
        with contextlib.suppress(BaseException):
            found = await reply
            cursor = found["cursor"]
            if int(cursor["id"]):
                from bson import SON, Int64

                database = str(cursor["ns"]).split(".", 1)[0]
                await conn.client[database].command(
                    SON([("killCursors", collection), ("cursors", [Int64(cursor["id"])])]),
                    session=session,
                )
        with contextlib.suppress(BaseException):
            await session.end_session()


@dataclass
class EarlyRead:
    """The early reads of one :class:`EarlyPlan`, on the running event loop."""

    plan: EarlyPlan
    conn: MongoConnection | None = None
    reads: EarlyReads = field(default_factory=EarlyReads)
    #: set once the first page is asked for, or the early reads ended without asking for it
    asked: asyncio.Event = field(default_factory=asyncio.Event)
    #: what the early reads failed with (None: they did not fail, or have not ended)
    failure: BaseException | None = None
    _task: asyncio.Task[None] | None = None
    _switch: float | None = None

    def start(self) -> None:
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(_SWITCH_INTERVAL)
        self._task = asyncio.ensure_future(self._read())

    async def under_way(self, limit: float = _AT_MOST) -> None:
        """Wait until the first page is asked for (or the early reads ended), for at most
        ``limit`` seconds: the settings are validated after, while the server reads the page,
        so the round trips before it do not wait on the validating thread for the GIL. A slow
        or unreachable server waits ``limit`` at most."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.asked.wait(), limit)

    def asked_at(self) -> str | None:
        """When the first page was asked for (ISO 8601, UTC), if it was."""
        at = self.reads.asked_at
        if at is None:
            return None
        import datetime as dt

        return dt.datetime.fromtimestamp(at, dt.UTC).isoformat()

    def validated(self) -> None:
        """The settings are validated: threads switch as usual again."""
        if self._switch is not None:
            sys.setswitchinterval(self._switch)
            self._switch = None

    async def _read(self) -> None:
        try:
            await self._ask()
        finally:
            self.asked.set()

    async def _ask(self) -> None:
        from cartridge_dagster.connectors.mongo import open_mongo, stream_start

        p = self.plan
        conn = self.conn = open_mongo(p.url, timeout_seconds=p.timeout_seconds)
        # the position must come before the first snapshot read; the collection names (none
        # for a database that does not exist) are asked for meanwhile
        names = asyncio.ensure_future(conn.list_collection_names(p.database))
        try:
            start = await stream_start(conn.client, p.database)
        finally:
            collections = await names  # awaited either way: no task left behind
        self.reads.start, self.reads.collections = start, collections
        chosen = sorted(n for n in collections if selects(n, p.include, p.exclude))
        if chosen and start[0] is not None:
            reply = self._first(conn, chosen[0])
            self.asked.set()  # the server reads the first page while the settings validate
            with contextlib.suppress(Exception):  # its error is met where the page is read
                await asyncio.shield(reply)
        # the databases, for the runner's check of a missing one (the names alone); asked
        # once the first page is in: a server that lists its databases slowly (the test
        # server's time grows with its data) does not hold it up, and its connection is free
        self.reads.databases = await conn.list_database_names()

    def _first(self, conn: MongoConnection, name: str) -> asyncio.Future[Any]:
        """Ask for the first page of ``name``, its count, and (when the first arrives) its
        second page; the first page's reply."""
        from bson import SON

        from cartridge_dagster.connectors.mongo import natural_find, raw_database

        p = self.plan
        db = raw_database(conn, p.database)
        session = conn.client.start_session()
        first = min(p.page, FIRST_PAGE)
        command = natural_find(name, first)
        reply: asyncio.Future[Any] = asyncio.ensure_future(
            db.command(command, session=session, codec_options=db.codec_options)
        )
        self.reads.asked_at = time.time()
        self.reads.count = (
            name,
            asyncio.ensure_future(conn.client[p.database].command(SON([("count", name)]))),
        )

        async def following() -> Any:
            """The next page, asked for as soon as the first arrives (as the snapshot does)."""
            from bson import Int64

            cursor_id = int((await reply)["cursor"]["id"])
            if not cursor_id:
                return None
            more = SON([("getMore", Int64(cursor_id)), ("collection", name), ("batchSize", p.page)])
            return await db.command(more, session=session, codec_options=db.codec_options)

        self.reads.first = (name, first, session, reply, p.page, asyncio.ensure_future(following()))
        return reply

    async def adopt(
        self, url: str, timeout_seconds: float, schema: SchemaConfig
    ) -> tuple[SchemaSource | None, str]:
        """The source with its early reads, when the validated settings are what was guessed;
        else None and why (everything read early is dropped then)."""
        from cartridge_dagster.warp.changes import Transformer
        from cartridge_dagster.warp.source import SchemaSource

        p = self.plan
        size = min(schema.batching.snapshot_chunk_size, schema.batching.max_batch_size)
        if (url, timeout_seconds) != (p.url, p.timeout_seconds):
            reason = "the settings name another source"
        elif (schema.name, schema.source_database) != (p.schema, p.database):
            reason = "the settings name another schema or database"
        elif (tuple(schema.include), tuple(schema.exclude)) != (p.include, p.exclude):
            reason = "the settings select other collections"
        elif size != p.page:
            reason = "the settings ask for other page sizes"
        else:
            reason = ""
        task, self._task = self._task, None
        if task is not None and not reason:
            with contextlib.suppress(Exception):
                await task
            if task.cancelled() or task.exception() is not None:
                self.failure = None if task.cancelled() else task.exception()
                reason = "the early reads failed (the runner's own reads say why)"
        if reason or task is None or self.conn is None:
            await self.close(task)
            return None, reason or "nothing was read early"
        source = SchemaSource(self.conn, schema, Transformer(schema))
        source.early, self.conn = self.reads, None
        return source, ""

    async def close(self, task: asyncio.Task[None] | None = None) -> None:
        """Drop what was not adopted: the reads under way, the first page, the client."""
        self.validated()
        task = task or self._task
        self._task = None
        if task is not None:
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await self.reads.close(conn)
            with contextlib.suppress(Exception):
                await conn.close()
