"""The replica-set test server's oplog: every change of its embedded engine, with cluster times.

A tailer copies the engine's transactional change log (``connectors/mongoeco_log.py``: every
write, whichever process made it, in commit order) into a side SQLite file, giving each change
what a replica set's oplog gives it: a realistic cluster time (``Timestamp(seconds since the
epoch, increment)``), a wall time, the document before and after the change (when the server has
seen the document before), and an ``updateDescription``. The server's own commands append the
changes the engine does not log (drop, rename, dropDatabase).

Positions are oplog row numbers (``pos``); resume tokens carry a position, its cluster time and
flags (see :func:`encode_token`), hex-encoded as MongoDB's ``{"_data": "<hex>"}`` (opaque to
clients). The oplog keeps its newest ``history`` entries; a position older than that raises
``ChangeStreamHistoryLost`` (code 286) when a stream tries to start from it.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import bson
from bson import Timestamp
from bson.raw_bson import RawBSONDocument

from cartridge_dagster.connectors.mongo import change_log_event
from cartridge_dagster.connectors.mongoeco_log import ChangeLog, PositionGap
from cartridge_dagster.errors import ResumeTokenLost

__all__ = [
    "CODEC",
    "FLAG_HWM",
    "FLAG_INVALIDATE",
    "Oplog",
    "OplogRow",
    "Token",
    "decode_token",
    "encode_token",
    "update_description",
]

#: BSON as the server reads and writes it (tz-aware UTC dates, standard UUIDs).
CODEC: Any = bson.CodecOptions(
    tz_aware=True,
    tzinfo=dt.UTC,
    uuid_representation=bson.binary.UuidRepresentation.STANDARD,
    datetime_conversion=bson.codec_options.DatetimeConversion.DATETIME_AUTO,
)
RAW = bson.CodecOptions(document_class=RawBSONDocument)

FLAG_INVALIDATE = 1
FLAG_HWM = 2  # a high-water mark: the stream's position between events
_TOKEN = struct.Struct(">BIIQBB")  # version, seconds, increment, position, flags, fragment
_TOKEN_VERSION = 0x82


@dataclass(frozen=True, slots=True)
class Token:
    pos: int
    ts: Timestamp
    flags: int = 0
    fragment: int = 0  # of a split event: the fragment the token follows (1-based); 0: whole


def encode_token(token: Token) -> dict[str, str]:
    data = _TOKEN.pack(
        _TOKEN_VERSION, token.ts.time, token.ts.inc, token.pos, token.flags, token.fragment
    )
    return {"_data": data.hex().upper()}


def decode_token(value: Any) -> Token:
    """The token a client sent back; ``ValueError`` when it is not one of ours."""
    data = value.get("_data") if isinstance(value, Mapping) else None
    if not isinstance(data, str):
        raise ValueError("resume token must be a document with a string _data")
    try:
        raw = bytes.fromhex(data)
        version, seconds, inc, pos, flags, fragment = _TOKEN.unpack(raw)
    except (ValueError, struct.error):
        raise ValueError(f"malformed resume token {data!r}") from None
    if version != _TOKEN_VERSION:
        raise ValueError(f"malformed resume token {data!r}")
    return Token(pos, Timestamp(seconds, inc), flags, fragment)


@dataclass(frozen=True, slots=True)
class OplogRow:
    pos: int
    ts: Timestamp
    wall_ms: int
    op: str
    db: str
    coll: str
    #: The event's envelope (``documentKey``, ``updateDescription``, ``to``) as BSON.
    body: bytes
    post: bytes | None  # the document after the change
    pre: bytes | None  # the document before it (when the server knew it)
    #: Whether the collection recorded pre- and post-images when the change happened.
    images: bool

    @property
    def token(self) -> Token:
        return Token(self.pos, self.ts)


def _key(value: Any) -> bytes:
    return bson.encode({"k": value}, codec_options=CODEC)


def _same(a: Any, b: Any) -> bool:
    """BSON equality (types matter: 1 and 1.0 are different values to a change stream)."""
    if type(a) is not type(b):
        return False
    return bool(_key(a) == _key(b))


def update_description(
    before: Mapping[str, Any] | None, after: Mapping[str, Any]
) -> dict[str, Any]:
    """What an update changed, as a change stream reports it: dotted ``updatedFields``,
    ``removedFields``, and arrays cut shorter in ``truncatedArrays``. Without the document
    before, every top-level field (but ``_id``) counts as updated."""
    updated: dict[str, Any] = {}
    removed: list[str] = []
    truncated: list[dict[str, Any]] = []
    if before is None:
        updated = {k: v for k, v in after.items() if k != "_id"}
        return {"updatedFields": updated, "removedFields": [], "truncatedArrays": []}

    def walk(old: Any, new: Any, path: str) -> None:
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            for k, v in new.items():
                sub = f"{path}.{k}" if path else str(k)
                if k not in old:
                    updated[sub] = v
                elif not _same(old[k], v):
                    walk(old[k], v, sub)
            for k in old:
                if k not in new:
                    removed.append(f"{path}.{k}" if path else str(k))
            return
        if isinstance(old, list) and isinstance(new, list) and path:
            if len(new) < len(old):
                truncated.append({"field": path, "newSize": len(new)})
            for i, v in enumerate(new):
                sub = f"{path}.{i}"
                if i >= len(old):
                    updated[sub] = v
                elif not _same(old[i], v):
                    walk(old[i], v, sub)
            return
        updated[path] = new

    walk(before, after, "")
    return {"updatedFields": updated, "removedFields": removed, "truncatedArrays": truncated}


_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS oplog (
        pos INTEGER PRIMARY KEY AUTOINCREMENT,
        t INTEGER NOT NULL, i INTEGER NOT NULL, wall INTEGER NOT NULL,
        op TEXT NOT NULL, db TEXT NOT NULL, coll TEXT NOT NULL,
        body BLOB NOT NULL, post BLOB, pre BLOB, images INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS oplog_ts ON oplog (t, i)",
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS images (
        db TEXT NOT NULL, coll TEXT NOT NULL, key BLOB NOT NULL, doc BLOB NOT NULL,
        PRIMARY KEY (db, coll, key)
    )""",
    "CREATE TABLE IF NOT EXISTS image_colls (db TEXT NOT NULL, coll TEXT NOT NULL, "
    "PRIMARY KEY (db, coll))",
]


class Oplog:
    """The server's oplog (a side SQLite file beside the engine's), fed by :meth:`sync`."""

    def __init__(self, path: str, engine_path: str, *, history: int = 100_000) -> None:
        self.path = path
        self.history = history
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        for stmt in _SCHEMA:
            self._db.execute(stmt)
        self._log = ChangeLog(engine_path)
        self._log.hold()
        if self._meta("engine_seq") is None:  # a new oplog begins at the engine's newest change
            self._set_meta("engine_seq", self._log.newest())
            self._set_meta("floor", 0)
        last = self._db.execute("SELECT t, i FROM oplog ORDER BY pos DESC LIMIT 1").fetchone()
        saved = self._meta("last_t"), self._meta("last_i")
        if last is not None:
            self._last = (int(last[0]), int(last[1]))
        elif saved[0] is not None:
            self._last = (int(saved[0]), int(saved[1] or 0))
        else:
            self._last = (0, 0)
        self._image_colls = {
            (str(r[0]), str(r[1])) for r in self._db.execute("SELECT db, coll FROM image_colls")
        }
        self.changes = 0  # rows appended by this process (a cheap "anything new?" signal)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._log.close()

    # ------------------------------------------------------------------ meta

    def _meta(self, key: str) -> int | None:
        row = self._db.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else int(row[0])

    def _set_meta(self, key: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (key, int(value)),
        )

    def _tick(self) -> Timestamp:
        """The next cluster time: seconds since the epoch, then an increment within them."""
        now = int(time.time())
        t, i = self._last
        self._last = (now, 1) if now > t else (t, i + 1)
        return Timestamp(*self._last)

    # ------------------------------------------------------------------ positions

    def floor(self) -> int:
        """Positions at or below this are no longer kept."""
        with self._lock:
            return int(self._meta("floor") or 0)

    def newest(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(pos) FROM oplog").fetchone()
            return max(int(row[0] or 0), self.floor())

    def now(self) -> Timestamp:
        """The cluster time of the newest change (the server's ``operationTime``)."""
        with self._lock:
            t, i = self._last
            if t == 0:
                self._last = (int(time.time()), 0)
                t, i = self._last
            return Timestamp(t, i)

    def token_at(self, pos: int) -> Token:
        """A token for position ``pos`` (a high-water mark between events)."""
        with self._lock:
            row = self._db.execute("SELECT t, i FROM oplog WHERE pos = ?", (pos,)).fetchone()
        ts = Timestamp(int(row[0]), int(row[1])) if row is not None else self.now()
        return Token(pos, ts, FLAG_HWM)

    def position_at(self, ts: Timestamp) -> int:
        """The position after which the changes at or after cluster time ``ts`` start."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(pos) FROM oplog WHERE t > ? OR (t = ? AND i >= ?)",
                (ts.time, ts.time, ts.inc),
            ).fetchone()
            first = row[0]
            floor = self.floor()
            if first is None:
                return self.newest()
            if int(first) - 1 < floor:
                oldest = self._db.execute(
                    "SELECT t, i FROM oplog WHERE pos = ?", (floor + 1,)
                ).fetchone()
                if oldest is not None and (ts.time, ts.inc) < (int(oldest[0]), int(oldest[1])):
                    raise LookupError(f"cluster time {ts} is older than the oplog keeps")
            return int(first) - 1

    # ------------------------------------------------------------------ images

    def enable_images(self, db: str, coll: str, documents: Iterator[Mapping[str, Any]]) -> None:
        """``changeStreamPreAndPostImages`` turned on: record the collection's documents as
        they are now, so the next change of each has its document before."""
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR IGNORE INTO image_colls (db, coll) VALUES (?, ?)", (db, coll)
            )
            for doc in documents:
                self._db.execute(
                    "INSERT OR REPLACE INTO images (db, coll, key, doc) VALUES (?, ?, ?, ?)",
                    (db, coll, _key(doc.get("_id")), bson.encode(doc, codec_options=CODEC)),
                )
            self._db.execute("COMMIT")
            self._image_colls.add((db, coll))

    def disable_images(self, db: str, coll: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM image_colls WHERE db = ? AND coll = ?", (db, coll))
            self._image_colls.discard((db, coll))

    def images_enabled(self, db: str, coll: str) -> bool:
        return (db, coll) in self._image_colls

    # ------------------------------------------------------------------ writing

    def _append(
        self,
        op: str,
        db: str,
        coll: str,
        body: Mapping[str, Any],
        *,
        post: Mapping[str, Any] | None = None,
        pre: bytes | None = None,
    ) -> int:
        ts = self._tick()
        cursor = self._db.execute(
            "INSERT INTO oplog (t, i, wall, op, db, coll, body, post, pre, images) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ts.time,
                ts.inc,
                int(time.time() * 1000),
                op,
                db,
                coll,
                bson.encode(body, codec_options=CODEC),
                None if post is None else bson.encode(post, codec_options=CODEC),
                pre,
                int((db, coll) in self._image_colls),
            ),
        )
        self.changes += 1
        return int(cursor.lastrowid or 0)

    def sync(self, limit: int = 2000) -> int:
        """Copy what the engine logged since the last sync; returns how many changes."""
        copied = 0
        with self._lock:
            while True:
                after = int(self._meta("engine_seq") or 0)
                try:
                    entries = self._log.read(after, limit)
                except ResumeTokenLost as exc:
                    # a change the oplog cannot have: a write the engine logged without its
                    # change (a gap), or changes it pruned before the oplog saw them (the server
                    # was down while others wrote). A marker takes its place: no stream reads
                    # past it (286), streams opened after it are whole.
                    skip_to = exc.position if isinstance(exc, PositionGap) else self._log.newest()
                    self._db.execute("BEGIN")
                    self._append("gap", "", "", {"at": int(skip_to)})
                    self._set_meta("engine_seq", skip_to)
                    self._prune()
                    self._db.execute("COMMIT")
                    continue
                if not entries:
                    return copied
                self._db.execute("BEGIN")
                try:
                    for entry in entries:
                        event = change_log_event(entry, None)
                        assert event is not None
                        self._copy(event)
                    self._set_meta("engine_seq", entries[-1].sequence)
                    self._prune()
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                copied += len(entries)

    def _copy(self, event: Mapping[str, Any]) -> None:
        op = str(event["operationType"])
        db, coll = str(event["ns"]["db"]), str(event["ns"]["coll"])
        key = event["documentKey"].get("_id")
        kb = _key(key)
        row = self._db.execute(
            "SELECT doc FROM images WHERE db = ? AND coll = ? AND key = ?", (db, coll, kb)
        ).fetchone()
        pre = None if row is None else bytes(row[0])
        post = event.get("fullDocument")
        body: dict[str, Any] = {"documentKey": event["documentKey"]}
        if op == "update":
            before = None if pre is None else bson.decode(pre, CODEC)
            body["updateDescription"] = update_description(before, post or {})
        self._append(op, db, coll, body, post=post if op != "delete" else None, pre=pre)
        if op == "delete":
            self._db.execute(
                "DELETE FROM images WHERE db = ? AND coll = ? AND key = ?", (db, coll, kb)
            )
        elif post is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO images (db, coll, key, doc) VALUES (?, ?, ?, ?)",
                (db, coll, kb, bson.encode(post, codec_options=CODEC)),
            )

    def record(self, op: str, db: str, coll: str, body: Mapping[str, Any]) -> int:
        """A change the engine does not log (drop, rename, dropDatabase); call after
        :meth:`sync`, with the command's effect done."""
        with self._lock:
            self._db.execute("BEGIN")
            pos = self._append(op, db, coll, body)
            if op in ("drop", "rename"):
                self._db.execute("DELETE FROM images WHERE db = ? AND coll = ?", (db, coll))
                self._db.execute("DELETE FROM image_colls WHERE db = ? AND coll = ?", (db, coll))
                self._image_colls.discard((db, coll))
            elif op == "dropDatabase":
                self._db.execute("DELETE FROM images WHERE db = ?", (db,))
                self._db.execute("DELETE FROM image_colls WHERE db = ?", (db,))
                self._image_colls = {c for c in self._image_colls if c[0] != db}
            self._prune()
            self._db.execute("COMMIT")
            return pos

    def _prune(self) -> None:
        row = self._db.execute("SELECT MAX(pos) FROM oplog").fetchone()
        newest = int(row[0] or 0)
        cut = newest - self.history
        if cut > int(self._meta("floor") or 0):
            self._db.execute("DELETE FROM oplog WHERE pos <= ?", (cut,))
            self._set_meta("floor", cut)
        t, i = self._last
        self._set_meta("last_t", t)
        self._set_meta("last_i", i)

    # ------------------------------------------------------------------ reading

    def read(
        self, after: int, limit: int, db: str | None, coll: str | None
    ) -> tuple[list[OplogRow], int]:
        """Up to ``limit`` changes after ``after`` in scope; returns them and the position the
        read got to (past changes out of scope too). ``LookupError`` when ``after`` is older
        than the oplog keeps."""
        with self._lock:
            if after < self.floor():
                raise LookupError(f"position {after} is older than the oplog keeps")
            where, args = "pos > ?", [after]
            if db is not None:  # (gap markers concern every stream)
                where += " AND (db = ? OR op = 'gap')"
                args.append(db)
                if coll is not None:
                    where += " AND (coll = ? OR op = 'gap')"
                    args.append(coll)
            rows = self._db.execute(
                f"SELECT pos, t, i, wall, op, db, coll, body, post, pre, images FROM oplog "
                f"WHERE {where} ORDER BY pos LIMIT ?",
                [*args, limit],
            ).fetchall()
            # a short read scanned everything there is: the stream is at the newest position
            reached = int(rows[-1][0]) if len(rows) == limit else self.newest()
        out = [
            OplogRow(
                int(r[0]),
                Timestamp(int(r[1]), int(r[2])),
                int(r[3]),
                str(r[4]),
                str(r[5]),
                str(r[6]),
                bytes(r[7]),
                None if r[8] is None else bytes(r[8]),
                None if r[9] is None else bytes(r[9]),
                bool(r[10]),
            )
            for r in rows
        ]
        return out, reached
