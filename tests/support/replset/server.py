"""A single-node replica set for tests: the MongoDB wire protocol on 127.0.0.1, data in the
embedded engine, change streams with realistic cluster times and resume tokens.

Test support code, not part of the product. It extends the embedded engine's wire server
(mongoeco's ``AsyncMongoEcoProxyServer``, which speaks OP_MSG/OP_QUERY for CRUD, aggregate and
cursors) with what a replica set adds:

- ``hello``/``isMaster`` with ``setName``, ``hosts``, ``primary``, ``me``, ``electionId``,
  ``lastWrite``; every reply carries ``operationTime`` and ``$clusterTime`` (realistic
  ``Timestamp(seconds since the epoch, increment)``);
- change streams (``aggregate`` with ``$changeStream`` on a collection, a database, or the
  deployment with ``allChangesForCluster``), ``getMore`` honouring ``maxTimeMS`` as
  ``maxAwaitTimeMS``, ``postBatchResumeToken``, ``killCursors``, ``resumeAfter``,
  ``startAfter``, ``startAtOperationTime``, ``fullDocument`` (``default``, ``updateLookup``,
  ``whenAvailable``, ``required``), ``fullDocumentBeforeChange`` (``off``, ``whenAvailable``,
  ``required``, with ``changeStreamPreAndPostImages`` on ``create``/``collMod``), events
  insert, update (with ``updateDescription``), replace, delete, drop, rename, dropDatabase,
  invalidate, ``$changeStreamSplitLargeEvent``, the stages mongoeco evaluates after
  ``$changeStream`` (``$match``, ``$project``, ``$addFields``, ``$set``, ``$unset``,
  ``$replaceRoot``, ``$replaceWith``); error 286 ``ChangeStreamHistoryLost`` for a position
  the oplog no longer keeps, 280 when a pipeline changes ``_id``, 10334 for an event over the
  size limit without the split stage, 43 for an unknown cursor;
- ``configureFailPoint`` with ``failCommand`` (error codes, labels, ``closeConnection``,
  ``blockConnection``), as drivers' specification tests use it;
- ``insert`` through the engine's bulk path (its per-document command path is quadratic).

Run it as ``python -m tests.support.replset.server --data DIR [--port N]``: it prints one line,
``ready mongodb://127.0.0.1:PORT/?replicaSet=rs0``, once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
from bson import Int64, ObjectId, Timestamp

from tests.support.replset.oplog import (
    CODEC,
    FLAG_INVALIDATE,
    Oplog,
    OplogRow,
    Token,
    decode_token,
    encode_token,
)

SET_NAME = "rs0"
#: Events larger than this (BSON) are split by ``$changeStreamSplitLargeEvent`` or refused.
MAX_EVENT_BYTES = 16 * 1024 * 1024
_WRITES = frozenset({"insert", "update", "delete", "findAndModify", "findandmodify"})
_DDL = frozenset({"drop", "dropDatabase", "renameCollection", "create", "collMod"})
_HELLO = frozenset({"hello", "isMaster", "ismaster"})
#: getMore batches of the engine's own cursors when a driver asks for no size (MongoDB: 16 MiB).
_DEFAULT_GETMORE = 2000
_FIRST_BATCH = 101
#: Stands for ``aggregate: 1`` (a database or deployment stream) past the engine's checks.
_DB_LEVEL = "$cartridge.db-level-stream"
#: Commands the engine's wire layer refuses before the server sees them: they travel as a
#: ``ping`` carrying the real command under ``_STASH``.
_OWN_COMMANDS = frozenset({"collMod"})
_STASH = "$cartridgeCommand"
#: ``CARTRIDGE_REPLSET_TRACE=1``: one line per command on stderr (the server's log).
_TRACE = os.environ.get("CARTRIDGE_REPLSET_TRACE") == "1"
#: Errors a 4.4+ server labels ``ResumableChangeStreamError`` on a change stream's getMore.
_RESUMABLE_CODES = frozenset(
    {6, 7, 63, 89, 91, 133, 150, 189, 234, 262, 9001, 10107, 11600, 11602, 13388, 13435, 13436}
)


def _plain_ints(body: dict[str, Any]) -> dict[str, Any]:
    """A command's own int64 options as plain ints: the engine's wire layer turns every BSON
    int64 into a wrapper its own validation then refuses (cursor ids, a Go driver's ``limit``);
    values inside documents and filters keep their type."""

    def plain(value: Any) -> Any:
        return getattr(value, "value", value)

    if body.get("aggregate") == 1:
        pipeline = body.get("pipeline")
        if isinstance(pipeline, list) and pipeline and "$changeStream" in pipeline[0]:
            body["aggregate"] = _DB_LEVEL  # the engine's checks want a collection name
    for key, value in list(body.items()):  # limit, skip, batchSize, maxTimeMS, getMore, …
        if type(value).__name__ == "BsonInt64":
            body[key] = plain(value)
    if isinstance(body.get("cursor"), dict):
        body["cursor"] = {k: plain(v) for k, v in body["cursor"].items()}
    if "killCursors" in body and isinstance(body.get("cursors"), list):
        body["cursors"] = [plain(c) for c in body["cursors"]]
    return body


def _no_zero_limit(context: Any) -> Any:
    """``limit: 0`` means no limit to MongoDB (the engine returns nothing for it)."""
    doc = context.command_document
    if doc.get("limit") != 0:
        return context
    import dataclasses

    return dataclasses.replace(
        context, command_document={k: v for k, v in doc.items() if k != "limit"}
    )


def _error(code: int, name: str, message: str, labels: list[str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"ok": 0.0, "errmsg": message, "code": code, "codeName": name}
    if labels:
        doc["errorLabels"] = labels
    return doc


class _CommandError(Exception):
    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__(document.get("errmsg"))
        self.document = document


@dataclass
class _Stream:
    id: int
    db: str | None  # None: the whole deployment
    coll: str | None  # None: a database (or the deployment)
    ns: str
    pos: int
    full_document: str
    before: str
    pipeline: list[dict[str, Any]]
    split: bool
    pending: list[dict[str, Any]] = field(default_factory=list)  # fragments or an invalidate
    invalidated: bool = False
    last_token: dict[str, Any] | None = None


@dataclass
class _Scan:
    """A whole-collection find served from the engine's stored documents."""

    id: int
    db: str
    coll: str
    after: str | None  # the last key sent
    remaining: int | None  # of a limit
    token: bool  # $_requestResumeToken
    done: bool = False


def _own_find(body: dict[str, Any]) -> bool:
    """A find whose options the engine's wire layer refuses (a ``$natural`` hint, resumable
    scans): the server answers it (:func:`_full_scan`)."""
    hint = body.get("hint")
    return "find" in body and (
        (hasattr(hint, "keys") and list(hint.keys()) == ["$natural"])
        or "$_requestResumeToken" in body
        or "$_resumeAfter" in body
    )


def _full_scan(doc: dict[str, Any]) -> bool:
    """A find with no filter, sort, projection or skip (a hint may only be ``$natural``)."""
    if doc.get("filter") not in (None, {}) or doc.get("skip") or doc.get("projection"):
        return False
    sort, hint = doc.get("sort"), doc.get("hint")
    if sort and (not hasattr(sort, "keys") or list(sort.keys()) != ["$natural"]):
        return False
    if hint and (not hasattr(hint, "keys") or list(hint.keys()) != ["$natural"]):
        return False
    unknown = set(doc) - {
        "find",
        "filter",
        "sort",
        "hint",
        "batchSize",
        "limit",
        "singleBatch",
        "lsid",
        "$db",
        "$clusterTime",
        "$readPreference",
        "readConcern",
        "txnNumber",
        "comment",
        "maxTimeMS",
        "noCursorTimeout",
        "allowDiskUse",
        "$_requestResumeToken",
        "$_resumeAfter",
        "projection",
        "skip",
    }
    return not unknown and not doc.get("singleBatch")


@dataclass
class _FailPoint:
    commands: set[str]
    times: int | None  # None: always on
    skip: int
    data: dict[str, Any]


class ReplicaSetServer:
    """The server: an embedded engine, its oplog, and the wire server in front of both."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        history: int = 100_000,
        max_event_bytes: int = MAX_EVENT_BYTES,
        users: tuple[tuple[str, str], ...] = (),
    ) -> None:
        from mongoeco import AsyncMongoClient
        from mongoeco.engines import SQLiteEngine
        from mongoeco.wire import AsyncMongoEcoProxyServer
        from mongoeco.wire.auth import WireAuthUser
        from mongoeco.wire.executor import WireCommandExecutor

        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.engine_path = str(data_dir / "engine.sqlite")
        engine = SQLiteEngine(self.engine_path, change_outbox_max_entries=max(history, 100_000))
        self.client = AsyncMongoClient(engine, change_stream_history_size=64)
        self.oplog: Oplog | None = None
        self.history = history
        self.max_event_bytes = max_event_bytes
        self._streams: dict[int, _Stream] = {}
        self._scans: dict[int, _Scan] = {}
        self._store: Any = None  # StoreScan over the engine's file, opened on first use
        self._ids = itertools.count(7_000_000_000_000 + os.getpid() * 1000)
        self._write_lock = asyncio.Lock()
        self._fail_points: list[_FailPoint] = []
        self._close_connections: set[int] = set()
        self._election = ObjectId("7fffffff0000000000000001")
        self._publisher: Any = None
        self._tailer: asyncio.Task[None] | None = None
        self.started = time.time()
        server = self

        class Executor(WireCommandExecutor):
            async def execute_prepared(self, context: Any) -> dict[str, Any]:
                return await server._execute(context, super().execute_prepared)

        class Proxy(AsyncMongoEcoProxyServer):
            def _decode_wire_context(
                self, header: Any, payload: bytes, connection: Any, state: Any
            ) -> Any:
                from mongoeco.wire._framing import op_msg_flags
                from mongoeco.wire.protocol import OP_MSG, OP_MSG_MORE_TO_COME, decode_op_msg

                if header.op_code != OP_MSG:
                    return super()._decode_wire_context(header, payload, connection, state)
                if op_msg_flags(payload) & OP_MSG_MORE_TO_COME:
                    state.disposition = "suppress"
                    state.expects_reply = False
                body = _plain_ints(decode_op_msg(header, payload).body)
                if next(iter(body), None) in _OWN_COMMANDS or _own_find(body):
                    body = {"ping": 1, "$db": body.get("$db", "admin"), _STASH: body}
                state.phase = "prepare"
                try:
                    return self._executor._build_request_context(
                        body, connection=connection, db_name=None, on_normalized=state.normalized
                    )
                except Exception as exc:
                    if _TRACE:
                        print(f"refused {str(body)[:300]}: {exc}", file=sys.stderr, flush=True)
                    raise

            async def _dispatch_wire_request(
                self, header: Any, payload: bytes, *, connection: Any
            ) -> bytes | None:
                response = await super()._dispatch_wire_request(
                    header, payload, connection=connection
                )
                if connection.connection_id in server._close_connections:
                    server._close_connections.discard(connection.connection_id)
                    raise ConnectionResetError("failCommand: closeConnection")
                return response

        self._users = {name for name, _ in users}
        self.proxy = Proxy(
            client=self.client,
            host=host,
            port=port,
            auth_users=tuple(
                WireAuthUser(name, password, roles=({"role": "root", "db": "admin"},))
                for name, password in users
            ),
        )
        self.proxy._executor = Executor(
            self.client,
            self.proxy._cursor_store,
            self.proxy._session_store,
            surface=self.proxy._surface,
            auth=self.proxy._auth,
        )
        self.address = ""

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> str:
        await self.client.__aenter__()
        # an open stream makes the engine log every write's change (see connectors/mongo.py)
        self._publisher = self.client.watch(max_await_time_ms=0)
        self.oplog = Oplog(
            str(self.data_dir / "oplog.sqlite"), self.engine_path, history=self.history
        )
        addr = await self.proxy.start()
        self.address = f"{addr.host}:{addr.port}"
        self._tailer = asyncio.create_task(self._tail())
        return f"mongodb://{self.address}/?replicaSet={SET_NAME}"

    async def close(self) -> None:
        if self._tailer is not None:
            self._tailer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tailer
        with contextlib.suppress(Exception):
            await self.proxy.close()
        if self._publisher is not None:
            self._publisher.close()
        with contextlib.suppress(Exception):
            await self.client.close()
        if self.oplog is not None:
            self.oplog.close()
        if self._store is not None:
            self._store.close()

    async def _tail(self) -> None:
        """Copy other processes' writes into the oplog as they happen."""
        while True:
            await asyncio.sleep(0.02)
            await self._sync()

    async def _sync(self) -> None:
        assert self.oplog is not None
        await asyncio.to_thread(self.oplog.sync)

    # ------------------------------------------------------------------ dispatch

    async def _execute(
        self, context: Any, fallback: Callable[[Any], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        stashed = context.raw_body.get(_STASH)
        if isinstance(stashed, dict):
            import dataclasses

            command = {
                k: v
                for k, v in stashed.items()
                if k not in ("lsid", "$db", "$clusterTime", "$readPreference")
            }
            context = dataclasses.replace(
                context,
                command_name=next(iter(stashed)),
                command_document=command,
                db_name=str(stashed.get("$db", context.db_name)),
            )
        name = str(context.command_name)
        started = time.time()
        try:
            failed = await self._fail_point(name, context)
            if failed is not None:
                return self._stamp(failed)
            handler = _HANDLERS.get(name)
            if handler is not None:
                result = await handler(self, context, fallback)
            elif name in _WRITES:
                async with self._write_lock:
                    result = await fallback(context)
                    await self._sync()
            elif name == "find" and _full_scan(context.command_document):
                result = await self._scan(context)
            elif name == "find":
                result = await fallback(
                    self._with_batch_size(_no_zero_limit(context), _FIRST_BATCH)
                )
            elif name == "getMore":
                result = await fallback(self._with_batch_size(context, _DEFAULT_GETMORE))
            else:
                result = await fallback(context)
        except _CommandError as exc:
            result = exc.document
        if _TRACE:
            print(
                f"cmd {started:.3f} {time.time() - started:.3f}s {name} db={context.db_name} "
                f"ok={result.get('ok')} "
                f"{str(context.command_document)[:300]} -> {str(result.get('errmsg', ''))[:300]}",
                file=sys.stderr,
                flush=True,
            )
        return self._stamp(result)

    def _stamp(self, result: dict[str, Any]) -> dict[str, Any]:
        assert self.oplog is not None
        cursor = result.get("cursor")
        if isinstance(cursor, dict) and "id" in cursor and not isinstance(cursor["id"], Int64):
            cursor["id"] = Int64(int(cursor["id"]))  # drivers read cursor ids as int64
            for doc in cursor.get("firstBatch") or ():
                if (
                    isinstance(doc, dict)
                    and "name" in doc
                    and "type" not in doc
                    and ("listCollections" in str(cursor.get("ns", "")))
                ):
                    doc["type"] = "collection"
        now = self.oplog.now()
        result["operationTime"] = now
        result["$clusterTime"] = {
            "clusterTime": now,
            "signature": {"hash": bson.Binary(b"\x00" * 20), "keyId": Int64(0)},
        }
        return result

    @staticmethod
    def _with_batch_size(context: Any, size: int) -> Any:
        """A cursor command without a batch size gets MongoDB's (the engine returns all)."""
        doc = context.command_document
        if doc.get("batchSize") is not None:
            return context
        if isinstance(doc.get("cursor"), dict) and doc["cursor"].get("batchSize") is not None:
            return context
        if context.command_name == "getMore" and int(doc.get("getMore", 0)) >= 7 * 10**12:
            return context
        import dataclasses

        return dataclasses.replace(context, command_document={**doc, "batchSize": size})

    async def _fail_point(self, name: str, context: Any) -> dict[str, Any] | None:
        for fp in list(self._fail_points):
            if name not in fp.commands:
                continue
            if fp.skip > 0:
                fp.skip -= 1
                continue
            if fp.times is not None:
                fp.times -= 1
                if fp.times <= 0:
                    self._fail_points.remove(fp)
            data = fp.data
            if data.get("blockConnection"):
                await asyncio.sleep(int(data.get("blockTimeMS", 0)) / 1000)
            if data.get("closeConnection"):
                self._close_connections.add(context.connection.connection_id)
                return {"ok": 0.0, "errmsg": "connection closed by failCommand"}
            if "errorCode" in data:
                code = int(data["errorCode"])
                if "errorLabels" in data:
                    labels = list(data["errorLabels"])
                elif data.get("$labels") and code in _RESUMABLE_CODES:
                    labels = ["ResumableChangeStreamError"]  # as a 4.4+ server labels them
                else:
                    labels = []
                return _error(code, "FailPoint", "failCommand", labels)
            if not data.get("blockConnection"):
                return None
        return None

    # ------------------------------------------------------------------ handlers

    async def _hello(self, context: Any, fallback: Any) -> dict[str, Any]:
        result = await fallback(context)
        assert self.oplog is not None
        asked = context.raw_body.get("saslSupportedMechs")
        if isinstance(asked, str) and asked.partition(".")[2] in self._users:
            # the mechanism this server's SCRAM implements (drivers fall back to SHA-1 else)
            result["saslSupportedMechs"] = ["SCRAM-SHA-256"]
        now = self.oplog.now()
        wall = dt.datetime.fromtimestamp(now.time, dt.UTC)
        result.update(
            {
                "setName": SET_NAME,
                "setVersion": 1,
                "hosts": [self.address],
                "primary": self.address,
                "me": self.address,
                "secondary": False,
                "electionId": self._election,
                "lastWrite": {
                    "opTime": {"ts": now, "t": Int64(1)},
                    "lastWriteDate": wall,
                    "majorityOpTime": {"ts": now, "t": Int64(1)},
                    "majorityWriteDate": wall,
                },
            }
        )
        return result

    async def _configure_fail_point(self, context: Any, fallback: Any) -> dict[str, Any]:
        doc = context.command_document
        kind = doc.get("configureFailPoint")
        data = dict(doc.get("data") or {})
        if kind == "failGetMoreAfterCursorCheckout":  # getMore fails; the cursor stays valid
            data["failCommands"] = ["getMore"]
            data["$labels"] = True  # the server labels what a resume fixes
        elif kind != "failCommand":
            raise _CommandError(_error(2, "BadValue", f"no fail point {kind!r} here"))
        mode = doc.get("mode")
        if mode == "off":
            self._fail_points.clear()
            return {"ok": 1.0}
        times: int | None = None
        skip = 0
        if isinstance(mode, dict):
            times = int(mode["times"]) if "times" in mode else None
            skip = int(mode.get("skip", 0))
        elif mode != "alwaysOn":
            raise _CommandError(_error(2, "BadValue", f"unknown fail point mode {mode!r}"))
        self._fail_points.append(_FailPoint(set(data.get("failCommands") or []), times, skip, data))
        return {"ok": 1.0}

    async def _insert(self, context: Any, fallback: Any) -> dict[str, Any]:
        """``insert`` through the engine's bulk path, with MongoDB's reply shape."""
        from pymongo.errors import BulkWriteError

        doc = context.command_document
        coll = self.client[context.db_name][str(doc["insert"])]
        documents = list(doc.get("documents") or [])
        ordered = bool(doc.get("ordered", True))
        async with self._write_lock:
            try:
                result = await coll.insert_many(documents, ordered=ordered, session=context.session)
                reply: dict[str, Any] = {"n": len(result.inserted_ids), "ok": 1.0}
            except BulkWriteError as exc:
                details = exc.details or {}
                reply = {"n": int(details.get("nInserted", 0)), "ok": 1.0}
                errors = [
                    {
                        "index": int(e.get("index", 0)),
                        "code": int(e.get("code", 11000)),
                        "errmsg": str(e.get("errmsg", "")),
                    }
                    for e in details.get("writeErrors", [])
                ]
                if errors:
                    reply["writeErrors"] = errors
            await self._sync()
        return reply

    async def _ddl(self, context: Any, fallback: Any) -> dict[str, Any]:
        """drop, dropDatabase, renameCollection, create, collMod: run them, then log what a
        replica set's oplog would show (the engine logs no DDL)."""
        assert self.oplog is not None
        name = str(context.command_name)
        doc = dict(context.command_document)
        db = str(context.db_name)
        images = doc.pop("changeStreamPreAndPostImages", None)
        import dataclasses

        context = dataclasses.replace(context, command_document=doc)
        async with self._write_lock:
            await self._sync()
            before: list[str] = []
            if name == "dropDatabase":
                before = sorted(await self.client[db].list_collection_names())
            if name == "collMod" and len(doc) == 1:
                result: dict[str, Any] = {"ok": 1.0}  # only the images option: nothing else
            elif name == "renameCollection":
                result = await self._rename(doc)
            else:
                result = await fallback(context)
            await self._sync()
            if result.get("ok") != 1.0 and not (name == "drop" and result.get("code") == 26):
                return result
            if name == "drop":
                if result.get("ok") == 1.0:
                    self.oplog.record("drop", db, str(doc["drop"]), {})
                else:  # MongoDB 7 drops a missing collection without an error
                    result = {"ok": 1.0, "ns": f"{db}.{doc['drop']}", "nIndexesWas": 0}
            elif name == "dropDatabase":
                for coll in before:
                    self.oplog.record("drop", db, coll, {})
                self.oplog.record("dropDatabase", db, "", {})
            elif name == "renameCollection":
                src_db, _, src = str(doc["renameCollection"]).partition(".")
                dst_db, _, dst = str(doc["to"]).partition(".")
                self.oplog.record("rename", src_db, src, {"to": {"db": dst_db, "coll": dst}})
            if name in ("create", "collMod") and isinstance(images, dict):
                coll_name = str(doc.get(name))
                if images.get("enabled"):
                    docs = [d async for d in self.client[db][coll_name].find({})]
                    await asyncio.to_thread(self.oplog.enable_images, db, coll_name, iter(docs))
                else:
                    self.oplog.disable_images(db, coll_name)
        return result

    def _engine_store(self) -> Any:
        """A :class:`~cartridge_dagster.connectors.mongoeco_store.StoreScan` over the engine's
        file (opened on first use): its scans, and its names without a pass over the data."""
        if self._store is None:
            from cartridge_dagster.connectors.mongoeco_store import StoreScan

            self._store = StoreScan(self.engine_path)
        return self._store

    async def _list_databases(self, context: Any, fallback: Any) -> dict[str, Any]:
        """``listDatabases`` with the engine's names (its own command sizes every document and
        fails on a Decimal128: mongoeco 4.11), read as MongoDB reads its catalog: without a
        pass over the documents (the engine's own listing scans them, ~0.1–0.3 s a million);
        sizes are not reported (0)."""
        names = await asyncio.to_thread(self._engine_store().database_names)
        doc = context.command_document
        if doc.get("nameOnly"):
            return {"databases": [{"name": n} for n in names], "ok": 1.0}
        return {
            "databases": [{"name": n, "sizeOnDisk": 0, "empty": False} for n in names],
            "totalSize": 0,
            "totalSizeMb": 0,
            "ok": 1.0,
        }

    async def _rename(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``renameCollection`` (sent to admin with full names) through the engine's API."""
        from mongoeco.errors import OperationFailure as EngineFailure

        src_db, _, src = str(doc["renameCollection"]).partition(".")
        dst_db, _, dst = str(doc["to"]).partition(".")
        if src_db != dst_db:
            return _error(20, "IllegalOperation", "renaming across databases is not implemented")
        try:
            if doc.get("dropTarget"):
                await self.client[dst_db].drop_collection(dst)
            await self.client[src_db][src].rename(dst)
        except EngineFailure as exc:
            return _error(int(getattr(exc, "code", None) or 8), "UnknownError", str(exc))
        return {"ok": 1.0}

    async def _aggregate(self, context: Any, fallback: Any) -> dict[str, Any]:
        doc = context.command_document
        pipeline = doc.get("pipeline") or []
        if not pipeline or "$changeStream" not in pipeline[0]:
            if any("$changeStream" in stage for stage in pipeline):
                raise _CommandError(
                    _error(40602, "Location40602", "$changeStream is only valid as the first stage")
                )
            return await fallback(self._with_batch_size(context, _FIRST_BATCH))
        return await self._open_stream(context, doc, pipeline)

    async def _open_stream(
        self, context: Any, doc: dict[str, Any], pipeline: list[dict[str, Any]]
    ) -> dict[str, Any]:
        assert self.oplog is not None
        spec = dict(pipeline[0]["$changeStream"] or {})
        db: str | None = str(context.db_name)
        target = doc.get("aggregate")
        coll: str | None = None if target in (1, _DB_LEVEL) else str(target)
        if spec.pop("allChangesForCluster", False):
            if db != "admin" or coll is not None:
                raise _CommandError(
                    _error(
                        ErrorCodes.InvalidOptions,
                        "InvalidOptions",
                        "allChangesForCluster is only valid on the admin database",
                    )
                )
            db = None
        rest = [dict(stage) for stage in pipeline[1:]]
        split = False
        if rest and "$changeStreamSplitLargeEvent" in rest[-1]:
            rest.pop()
            split = True
        if any("$changeStreamSplitLargeEvent" in stage for stage in rest):
            raise _CommandError(
                _error(7182802, "Location7182802", "$changeStreamSplitLargeEvent must be last")
            )
        from mongoeco.core.codec import DocumentCodec
        from mongoeco.errors import OperationFailure as EngineFailure

        try:
            from mongoeco._change_streams.pipeline import compile_change_stream_pipeline

            compile_change_stream_pipeline(DocumentCodec.to_internal(rest))
        except (EngineFailure, TypeError) as exc:
            raise _CommandError(
                _error(40324, "Location40324", f"invalid pipeline: {exc}")
            ) from None
        full = str(spec.pop("fullDocument", "default"))
        before = str(spec.pop("fullDocumentBeforeChange", "off"))
        if full not in ("default", "updateLookup", "whenAvailable", "required"):
            raise _CommandError(_error(2, "BadValue", f"unknown fullDocument {full!r}"))
        if before not in ("off", "whenAvailable", "required"):
            raise _CommandError(
                _error(2, "BadValue", f"unknown fullDocumentBeforeChange {before!r}")
            )
        spec.pop("showExpandedEvents", None)
        resume_after, start_after = spec.pop("resumeAfter", None), spec.pop("startAfter", None)
        start_at = spec.pop("startAtOperationTime", None)
        if spec:
            raise _CommandError(
                _error(40415, "Location40415", f"unknown $changeStream option(s) {sorted(spec)}")
            )
        await self._sync()
        pending: list[dict[str, Any]] = []
        if resume_after is not None or start_after is not None:
            try:
                token = decode_token(resume_after if resume_after is not None else start_after)
            except ValueError as exc:
                raise _CommandError(_error(260, "InvalidResumeToken", str(exc))) from None
            if token.flags & FLAG_INVALIDATE and resume_after is not None:
                raise _CommandError(
                    _error(
                        260,
                        "InvalidResumeToken",
                        "cannot resume after an invalidate event with resumeAfter: use startAfter",
                    )
                )
            pos = token.pos
            if token.fragment:  # inside a split event: the rest of its fragments come first
                pending = await self._rest_of_split(token, db, coll, full, before, rest)
        elif start_at is not None:
            try:  # the engine's wire layer hands over its own Timestamp type
                pos = self.oplog.position_at(Timestamp(int(start_at.time), int(start_at.inc)))
            except LookupError as exc:
                raise _CommandError(self._lost(str(exc))) from None
        else:
            pos = self.oplog.newest()
        if pos < self.oplog.floor():
            raise _CommandError(self._lost(f"position {pos} is older than the oplog keeps"))
        if pos > self.oplog.newest():
            raise _CommandError(
                _error(260, "InvalidResumeToken", "resume token is from the future")
            )
        ns = (
            f"{context.db_name}.{coll}" if coll is not None else f"{context.db_name}.$cmd.aggregate"
        )
        stream = _Stream(next(self._ids), db, coll, ns, pos, full, before, rest, split, pending)
        stream.last_token = encode_token(self.oplog.token_at(pos))
        self._streams[stream.id] = stream
        batch_size = (doc.get("cursor") or {}).get("batchSize")
        first: list[Any] = []
        if batch_size:  # MongoDB answers the aggregate at once; events come with getMore
            first = await self._batch(stream, int(batch_size), wait=0)
        cursor_id = 0 if stream.invalidated and not stream.pending else stream.id
        if cursor_id == 0:
            self._streams.pop(stream.id, None)
        return {
            "cursor": {
                "firstBatch": first,
                "postBatchResumeToken": stream.last_token,
                "id": Int64(cursor_id),
                "ns": ns,
            },
            "ok": 1.0,
        }

    @staticmethod
    def _lost(detail: str) -> dict[str, Any]:
        return _error(
            286,
            "ChangeStreamHistoryLost",
            "Resume of change stream was not possible, as the resume point may no longer be in "
            f"the oplog ({detail})",
            ["NonResumableChangeStreamError"],
        )

    async def _scan(self, context: Any) -> dict[str, Any]:
        """A find that reads a whole collection (no filter, no sort, no projection): pages of
        the engine's stored documents in key order, decoded once and sent as BSON, with
        ``$_requestResumeToken``/``$_resumeAfter`` (resumable natural-order scans: the token is
        ``{"$recordId": <key>}``)."""
        doc = context.command_document
        resume = doc.get("$_resumeAfter")
        after = resume.get("$recordId") if isinstance(resume, dict) else None
        limit = int(doc.get("limit") or 0)
        scan = _Scan(
            next(self._ids),
            str(context.db_name),
            str(doc["find"]),
            None if after is None else str(after),
            limit if limit > 0 else None,
            bool(doc.get("$_requestResumeToken")),
        )
        size = doc.get("batchSize")
        first = await self._scan_page(scan, _FIRST_BATCH if size is None else int(size))
        return self._scan_reply(scan, first, "firstBatch")

    async def _scan_page(self, scan: _Scan, size: int) -> list[Any]:
        from bson.raw_bson import RawBSONDocument

        from cartridge_dagster.connectors.mongoeco_store import decode_stored_text

        store = self._engine_store()
        if scan.remaining is not None:
            size = min(size, scan.remaining)
        if size <= 0:
            scan.done = True
            return []
        rows = await asyncio.to_thread(store.page, scan.db, scan.coll, scan.after, size)
        out = [
            RawBSONDocument(bson.encode(decode_stored_text(text), codec_options=CODEC))
            for _, text in rows
        ]
        if rows:
            scan.after = rows[-1][0]
        if scan.remaining is not None:
            scan.remaining -= len(rows)
        scan.done = len(rows) < size or scan.remaining == 0
        return out

    def _scan_reply(self, scan: _Scan, batch: list[Any], key: str) -> dict[str, Any]:
        if scan.done:
            self._scans.pop(scan.id, None)
        else:
            self._scans[scan.id] = scan
        cursor: dict[str, Any] = {
            key: batch,
            "id": Int64(0 if scan.done else scan.id),
            "ns": f"{scan.db}.{scan.coll}",
        }
        if scan.token:
            cursor["postBatchResumeToken"] = {"$recordId": scan.after}
        return {"cursor": cursor, "ok": 1.0}

    async def _list_collections(self, context: Any, fallback: Any) -> dict[str, Any]:
        """``listCollections`` with ``nameOnly`` and no filter (what drivers'
        ``list_collection_names`` sends): the engine's names, read without a pass over the
        documents (as :meth:`_list_databases`); anything else goes to the engine."""
        doc = context.command_document
        if not doc.get("nameOnly") or doc.get("filter"):
            result: dict[str, Any] = await fallback(context)
            return result
        db = context.db_name
        names = await asyncio.to_thread(self._engine_store().collection_names, db)
        return {
            "cursor": {
                "firstBatch": [{"name": n, "type": "collection"} for n in names],
                "id": Int64(0),
                "ns": f"{db}.$cmd.listCollections",
            },
            "ok": 1.0,
        }

    async def _get_more(self, context: Any, fallback: Any) -> dict[str, Any]:
        doc = context.command_document
        cursor_id = int(doc.get("getMore", 0))
        if cursor_id in self._scans:
            scan = self._scans[cursor_id]
            size = int(doc.get("batchSize") or _DEFAULT_GETMORE)
            return self._scan_reply(scan, await self._scan_page(scan, size), "nextBatch")
        if cursor_id not in self._streams:
            if cursor_id >= 7 * 10**12:
                raise _CommandError(
                    _error(43, "CursorNotFound", f"cursor id {cursor_id} not found")
                )
            return await fallback(self._with_batch_size(context, _DEFAULT_GETMORE))
        stream = self._streams[cursor_id]
        wait = int(doc.get("maxTimeMS") or 1000)
        size = int(doc.get("batchSize") or 1000)
        batch = await self._batch(stream, size, wait=wait)
        done = stream.invalidated and not stream.pending
        if done:
            self._streams.pop(cursor_id, None)
        return {
            "cursor": {
                "nextBatch": batch,
                "postBatchResumeToken": stream.last_token,
                "id": Int64(0 if done else cursor_id),
                "ns": stream.ns,
            },
            "ok": 1.0,
        }

    async def _kill_cursors(self, context: Any, fallback: Any) -> dict[str, Any]:
        doc = dict(context.command_document)
        ids = [int(c) for c in doc.get("cursors") or []]
        ours = [c for c in ids if c in self._streams or c in self._scans]
        for c in ours:
            self._streams.pop(c, None)
            self._scans.pop(c, None)
        others = [c for c in ids if c not in ours]
        result: dict[str, Any] = {
            "cursorsKilled": ours,
            "cursorsNotFound": [],
            "cursorsAlive": [],
            "cursorsUnknown": [],
            "ok": 1.0,
        }
        if others:
            import dataclasses

            doc["cursors"] = others
            passed = await fallback(dataclasses.replace(context, command_document=doc))
            for key in ("cursorsKilled", "cursorsNotFound", "cursorsAlive", "cursorsUnknown"):
                result[key] = list(result[key]) + list(passed.get(key) or [])
        return result

    # ------------------------------------------------------------------ events

    async def _batch(self, stream: _Stream, size: int, *, wait: int) -> list[Any]:
        """Events for one reply: what is there, or what arrives within ``wait`` ms."""
        assert self.oplog is not None
        deadline = time.monotonic() + wait / 1000
        out: list[Any] = []
        total = 0
        while True:
            while stream.pending and len(out) < size:
                event = stream.pending.pop(0)
                out.append(event)
                stream.last_token = dict(event["_id"])
                if event.get("operationType") == "invalidate":
                    stream.invalidated = True
                    stream.pending.clear()
            if out or stream.invalidated:
                return out
            rows, reached = await asyncio.to_thread(
                self.oplog.read, stream.pos, size, stream.db, stream.coll
            )
            if rows:
                for row in rows:
                    if row.op == "gap":  # changes this stream would read past, unseen
                        raise _CommandError(
                            self._lost(f"changes at position {row.pos} are not in the oplog")
                        )
                    events = await self._events(stream, row)
                    stream.pos = row.pos
                    encoded = sum(len(bson.encode(e, codec_options=CODEC)) for e in events)
                    if out and total + encoded > self.max_event_bytes:
                        stream.pos = row.pos - 1
                        break
                    total += encoded
                    stream.pending.extend(events)
                    if stream.invalidated or any(
                        e.get("operationType") == "invalidate" for e in events
                    ):
                        break
                if stream.pending:
                    continue
            stream.pos = max(stream.pos, reached) if not stream.pending else stream.pos
            stream.last_token = encode_token(self.oplog.token_at(stream.pos))
            if time.monotonic() >= deadline:
                return out
            changes = self.oplog.changes
            while self.oplog.changes == changes and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

    async def _events(self, stream: _Stream, row: OplogRow) -> list[dict[str, Any]]:
        """The event(s) ``row`` gives this stream: split fragments, then an invalidate."""
        event = await self._event(stream, row)
        events = [event] if event is not None else []
        if event is not None:
            events = self._split(stream, event, row)
        invalidates = (
            stream.coll is not None
            and row.op in ("drop", "rename")
            and row.db == stream.db
            and row.coll == stream.coll
        ) or (stream.coll is None and stream.db is not None and row.op == "dropDatabase")
        if invalidates:
            events.append(
                {
                    "_id": encode_token(Token(row.pos, row.ts, FLAG_INVALIDATE)),
                    "operationType": "invalidate",
                    "clusterTime": row.ts,
                    "wallTime": dt.datetime.fromtimestamp(row.wall_ms / 1000, dt.UTC),
                }
            )
        return events

    async def _event(self, stream: _Stream, row: OplogRow) -> dict[str, Any] | None:
        body = bson.decode(row.body, CODEC)
        event: dict[str, Any] = {
            "_id": encode_token(row.token),
            "operationType": row.op,
            "clusterTime": row.ts,
            "wallTime": dt.datetime.fromtimestamp(row.wall_ms / 1000, dt.UTC),
        }
        if row.op in ("insert", "replace"):
            event["fullDocument"] = bson.decode(row.post, CODEC) if row.post else None
        elif row.op == "update":
            full = stream.full_document
            if full == "updateLookup":
                key = body["documentKey"].get("_id")
                event["fullDocument"] = await self.client[row.db][row.coll].find_one({"_id": key})
            elif full in ("whenAvailable", "required"):
                if row.images and row.post:
                    event["fullDocument"] = bson.decode(row.post, CODEC)
                elif full == "required":
                    raise _CommandError(self._no_image("post-image", row))
                else:
                    event["fullDocument"] = None
        event["ns"] = (
            {"db": row.db} if row.op == "dropDatabase" else {"db": row.db, "coll": row.coll}
        )
        if "documentKey" in body:
            event["documentKey"] = body["documentKey"]
        if "updateDescription" in body:
            event["updateDescription"] = body["updateDescription"]
        if "to" in body:
            event["to"] = body["to"]
        if row.op in ("update", "replace", "delete") and stream.before != "off":
            if row.images and row.pre:
                event["fullDocumentBeforeChange"] = bson.decode(row.pre, CODEC)
            elif stream.before == "required":
                raise _CommandError(self._no_image("pre-image", row))
            else:
                event["fullDocumentBeforeChange"] = None
        if stream.pipeline:
            return self._apply_pipeline(stream, event)
        return event

    @staticmethod
    def _no_image(what: str, row: OplogRow) -> dict[str, Any]:
        return _error(
            ErrorCodes.NoMatchingDocument,
            "NoMatchingDocument",
            f"Change stream was configured to require a {what}, but none was available for "
            f"{row.db}.{row.coll} at {row.ts}",
        )

    @staticmethod
    def _apply_pipeline(stream: _Stream, event: dict[str, Any]) -> dict[str, Any] | None:
        from mongoeco.core.aggregation import apply_pipeline
        from mongoeco.core.codec import DocumentCodec

        internal = dict(DocumentCodec.to_internal(event))  # top level mutable: $project edits it
        out = apply_pipeline([internal], DocumentCodec.to_internal(stream.pipeline))
        if not out:
            return None
        result: dict[str, Any] = DocumentCodec.to_pymongo(out[0])
        if result.get("_id") != event["_id"]:
            raise _CommandError(
                _error(
                    280,
                    "ChangeStreamFatalError",
                    "Encountered an event whose _id field, which contains the resume token, was "
                    "modified by the pipeline. Modifying the _id field of an event makes it "
                    "impossible to resume the stream from that point.",
                    ["NonResumableChangeStreamError"],
                )
            )
        return result

    def _split(self, stream: _Stream, event: dict[str, Any], row: OplogRow) -> list[dict[str, Any]]:
        size = len(bson.encode(event, codec_options=CODEC))
        if size <= self.max_event_bytes:
            return [event]
        if not stream.split:
            raise _CommandError(
                _error(
                    10334,
                    "BSONObjectTooLarge",
                    f"BSONObj size: {size} is invalid. Size must be between 0 and "
                    f"{self.max_event_bytes}",
                )
            )
        fields = [(k, v) for k, v in event.items() if k != "_id"]
        groups: list[list[tuple[str, Any]]] = [[]]
        used = 0
        for key, value in fields:
            part = len(bson.encode({key: value}, codec_options=CODEC))
            if groups[-1] and used + part > self.max_event_bytes // 2:
                groups.append([])
                used = 0
            groups[-1].append((key, value))
            used += part
        out = []
        for n, group in enumerate(groups, start=1):
            fragment: dict[str, Any] = {
                "_id": encode_token(Token(row.pos, row.ts, 0, n)),
                "splitEvent": {"fragment": n, "of": len(groups)},
            }
            fragment.update(group)
            out.append(fragment)
        return out

    async def _rest_of_split(
        self,
        token: Token,
        db: str | None,
        coll: str | None,
        full: str,
        before: str,
        pipeline: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        assert self.oplog is not None
        rows, _ = await asyncio.to_thread(self.oplog.read, token.pos - 1, 1, db, coll)
        if not rows or rows[0].pos != token.pos:
            return []
        probe = _Stream(0, db, coll, "", token.pos - 1, full, before, pipeline, True)
        events = await self._events(probe, rows[0])
        return [
            e for e in events if (e.get("splitEvent") or {}).get("fragment", 0) > token.fragment
        ]


class ErrorCodes:
    InvalidOptions = 72
    NoMatchingDocument = 47


_HANDLERS: dict[str, Callable[[ReplicaSetServer, Any, Any], Awaitable[dict[str, Any]]]] = {
    "hello": ReplicaSetServer._hello,
    "isMaster": ReplicaSetServer._hello,
    "ismaster": ReplicaSetServer._hello,
    "configureFailPoint": ReplicaSetServer._configure_fail_point,
    "listDatabases": ReplicaSetServer._list_databases,
    "listCollections": ReplicaSetServer._list_collections,
    "insert": ReplicaSetServer._insert,
    "aggregate": ReplicaSetServer._aggregate,
    "getMore": ReplicaSetServer._get_more,
    "killCursors": ReplicaSetServer._kill_cursors,
    **dict.fromkeys(_DDL, ReplicaSetServer._ddl),
}


async def _main(args: argparse.Namespace) -> None:
    server = ReplicaSetServer(
        Path(args.data),
        port=args.port,
        history=args.history,
        max_event_bytes=args.max_event_bytes,
        users=tuple(tuple(u.split(":", 1)) for u in args.user),  # type: ignore[misc]
    )
    uri = await server.start()
    print(f"ready {uri}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="directory for the engine and its oplog")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--history", type=int, default=100_000, help="oplog entries kept")
    parser.add_argument("--max-event-bytes", type=int, default=MAX_EVENT_BYTES)
    parser.add_argument(
        "--user", action="append", default=[], help="NAME:PASSWORD (SCRAM); repeatable"
    )
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
