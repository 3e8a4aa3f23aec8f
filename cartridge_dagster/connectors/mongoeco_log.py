"""The embedded engine's change log, read where the engine writes it: its transactional outbox.

The embedded engine (mongoeco's SQLite engine) appends one row per change to a table
``change_outbox`` in the same SQLite transaction as the write, numbered by an ``AUTOINCREMENT``
sequence. SQLite has one writer at a time, so sequence order is commit order, whichever process
wrote: a reader that has seen sequence ``n`` and finds ``n + 1`` next has missed nothing. The rows
carry the operation, namespace, document key and the document after the change.

Why not the engine's in-process ``watch()``: across processes it shares events through a journal
file that every client rewrites from its own memory when it compacts it, so a client in one
process deletes events a client in another process appended (measured: 524 of 16,578 documents
off after two writer processes and one reader, nothing reported). The outbox has no such race.

Retention: the engine prunes rows every registered consumer has acknowledged, and always rows
more than its ``change_outbox_max_entries`` behind the newest. :meth:`ChangeLog.hold` registers
one durable consumer that never acknowledges anything (``cartridge-oplog``), so the engine keeps
the newest ``change_outbox_max_entries`` changes whoever reads them: a capped log, as a replica
set's oplog is. A position older than what is kept raises
:class:`~cartridge_dagster.errors.ResumeTokenLost`; a row without its change (a write by a
client that publishes no events) raises :class:`PositionGap`. Neither is ever read past.

This module depends on the outbox's table layout (format version 4, mongoeco 4.11); other
formats are refused with one clear error.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cartridge_dagster.errors import ConfigError, ResumeTokenLost

__all__ = [
    "OUTBOX_FORMAT",
    "RETENTION_CONSUMER",
    "ChangeLog",
    "LogEntry",
    "PositionGap",
    "decode_token",
    "encode_token",
]

#: The engine's outbox format this module reads (``mongoeco_schema_migrations``).
OUTBOX_FORMAT = 4
#: The durable consumer that makes the engine keep its newest changes (see :meth:`hold`).
RETENTION_CONSUMER = "cartridge-oplog"


class PositionGap(ResumeTokenLost):
    """The change log has a position without its change: it cannot be read past. Handled as
    lost history (``warp.history_lost_policy``): stop naming the position, or re-snapshot,
    which fills it."""

    #: The position without its change.
    position: int = 0


def encode_token(sequence: int) -> dict[str, str]:
    """A resume token for ``sequence``, in the engine's own format (``{"_data": …}``)."""
    payload = json.dumps({"v": 1, "t": int(sequence)}, separators=(",", ":")).encode("utf-8")
    return {"_data": base64.urlsafe_b64encode(payload).decode("ascii").rstrip("=")}


def decode_token(token: Mapping[str, Any]) -> int:
    """The sequence a resume token names (the engine's format, or a bare decimal string)."""
    data = token.get("_data") if isinstance(token, Mapping) else None
    if isinstance(data, int) and not isinstance(data, bool):
        return data
    if not isinstance(data, str) or not data:
        raise ValueError(f"not an embedded-engine resume token: {token!r}")
    if data.isdigit():
        return int(data)
    try:
        padded = data + "=" * (-len(data) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        sequence = decoded["t"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError(f"not an embedded-engine resume token: {token!r}") from None
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        raise ValueError(f"not an embedded-engine resume token: {token!r}")
    return sequence


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One change of the log: its position and the engine's payload (``None``: a gap)."""

    sequence: int
    payload: str | None


class ChangeLog:
    """The outbox of one embedded-engine SQLite file, with a durable consumer per reader.

    Every method is blocking and short (callers in an event loop use ``asyncio.to_thread``);
    one connection, guarded by a lock, in autocommit mode with a busy timeout."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, check_same_thread=False)
        self._conn.isolation_level = None  # autocommit; explicit BEGIN where atomicity matters
        self._checked = False

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # ------------------------------------------------------------------ format

    def _check_format(self) -> bool:
        """True when the file has an outbox this module reads; False when it has none yet."""
        if self._checked:
            return True
        tables = {
            str(r[0])
            for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "change_outbox" not in tables:
            return False
        row = self._conn.execute(
            "SELECT version FROM mongoeco_schema_migrations WHERE component = 'change_outbox'"
        ).fetchone()
        version = None if row is None else int(row[0])
        if version != OUTBOX_FORMAT:
            raise ConfigError(
                f"the embedded engine at {self.path} keeps its change log in format {version}; "
                f"Cartridge reads format {OUTBOX_FORMAT} (mongoeco 4.11)",
                hint="install the mongoeco version pinned by Cartridge",
            )
        self._checked = True
        return True

    def _floor(self) -> int:
        row = self._conn.execute(
            "SELECT pruned_through FROM change_outbox_state WHERE singleton = 1"
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _newest(self) -> int:
        row = self._conn.execute("SELECT COALESCE(MAX(sequence), 0) FROM change_outbox").fetchone()
        return max(int(row[0]), self._floor())

    # ------------------------------------------------------------------ positions

    def newest(self) -> int:
        """The newest committed position (0 when nothing was ever written)."""
        with self._lock:
            if not self._check_format():
                return 0
            return self._newest()

    def hold(self) -> None:
        """Make the engine keep its newest changes for any reader (idempotent): a durable
        consumer that never acknowledges, so only the engine's capacity prunes."""
        with self._lock:
            if not self._check_format():
                return
            held = self._conn.execute(
                "SELECT 1 FROM change_outbox_consumers WHERE consumer_id = ?",
                (RETENTION_CONSUMER,),
            ).fetchone()
            if held is not None:  # a read: no write lock needed (writers may hold it)
                return
            self._conn.execute(
                "INSERT INTO change_outbox_consumers (consumer_id, checkpoint, durable, "
                "updated_at_epoch) VALUES (?, 0, 1, CAST(strftime('%s', 'now') AS REAL)) "
                "ON CONFLICT(consumer_id) DO NOTHING",
                (RETENTION_CONSUMER,),
            )

    def position(self, after: int | None) -> int:
        """A position to read from: ``after`` when its changes are still kept (None: the
        newest). Raises :class:`ResumeTokenLost` when they are not."""
        with self._lock:
            if not self._check_format():
                if after:
                    raise _lost(self.path, after, 0)
                return 0
            newest = self._newest()
            if after is None:
                return newest
            floor = self._floor()
            if after < floor:
                raise _lost(self.path, after, floor)
            if after > newest:
                raise ResumeTokenLost(
                    f"the stored position {after} is ahead of the embedded engine's newest "
                    f"change {newest} ({self.path}): the source was replaced",
                    hint="re-snapshot (warp.history_lost_policy: resnapshot)",
                )
            return after

    # ------------------------------------------------------------------ reading

    def read(self, after: int, limit: int = 1000) -> list[LogEntry]:
        """Up to ``limit`` changes after position ``after``, in order, with nothing skipped.

        Raises :class:`ResumeTokenLost` when changes after ``after`` were pruned, and
        :class:`PositionGap` at a position whose change is unknown or missing."""
        with self._lock:
            if not self._check_format():
                return []
            self._conn.execute("BEGIN")  # one read snapshot for the floor and the rows
            try:
                floor = self._floor()
                if after < floor:
                    raise _lost(self.path, after, floor)
                rows = self._conn.execute(
                    "SELECT sequence, kind, payload FROM change_outbox WHERE sequence > ? "
                    "ORDER BY sequence LIMIT ?",
                    (int(after), int(limit)),
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
        entries: list[LogEntry] = []
        expected = after + 1
        for sequence, kind, payload in rows:
            if int(sequence) != expected:
                gap = PositionGap(
                    f"the embedded engine's change log at {self.path} has no position "
                    f"{expected} (next is {sequence}); nothing past {expected - 1} is read",
                    hint="the log was edited or a foreign writer broke its order; "
                    "re-snapshot (warp.history_lost_policy: resnapshot)",
                )
                gap.position = expected
                if entries:  # what came before the gap is good: hand it over first
                    break
                raise gap
            if kind != "event" or payload is None:
                gap = PositionGap(
                    f"position {sequence} of the embedded engine's change log at {self.path} "
                    "records a write without its change (a client that publishes no change "
                    "events wrote it); nothing past it is read",
                    hint="write through Cartridge's clients (or keep a change stream open in "
                    "the writer), then re-snapshot (warp.history_lost_policy: resnapshot)",
                )
                gap.position = int(sequence)
                if entries:  # what came before the gap is good: hand it over first
                    break
                raise gap
            entries.append(LogEntry(int(sequence), str(payload)))
            expected += 1
        return entries


def _lost(path: str, position: int, floor: int) -> ResumeTokenLost:
    return ResumeTokenLost(
        f"change stream history lost: the embedded engine at {path} no longer keeps the changes "
        f"after position {position} (it pruned through {floor})",
        hint="raise the URL's history_size (changes the engine keeps), or re-snapshot "
        "(warp.history_lost_policy: resnapshot)",
    )
