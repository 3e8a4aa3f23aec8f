"""PostgreSQL logical replication: the replication connection and the ``pgoutput`` messages.

The replication protocol is spoken by psycopg2 (``psycopg2.extras.LogicalReplicationConnection``
with ``decode=False``: the raw ``pgoutput`` bytes); psycopg 3 and asyncpg have no replication
support. psycopg2 answers the server's keepalives itself and, when everything received has been
confirmed, moves the confirmed position to the keepalive's WAL end, so an idle slot advances.

``pgoutput`` protocol version 1 (PostgreSQL 10+) sends each transaction at its commit:
``Begin``, then ``Relation`` (and ``Type``) messages before the first change of a table in a
session or after its definition changed, the changes (``Insert``, ``Update``, ``Delete``,
``Truncate``), and ``Commit``. Tuple values are in text format: ``None`` is NULL and
:data:`UNCHANGED` an unchanged TOASTed value (``u``), which the server does not send.

Blocking calls (connecting, creating a slot, which waits for running transactions) run in a
thread; reading is non-blocking (``read``), with :meth:`ReplicationStream.wait` for the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import struct
from dataclasses import dataclass
from typing import Any, Final

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

from cartridge_dagster.errors import ConnectionFailed, TerminalError, redact_url
from cartridge_dagster.pg_documents import SESSION_SETTINGS

__all__ = [
    "UNCHANGED",
    "Begin",
    "Commit",
    "Delete",
    "Insert",
    "Relation",
    "RelationColumn",
    "ReplicationStream",
    "Truncate",
    "TypeMessage",
    "Update",
    "decode_message",
    "format_lsn",
    "parse_lsn",
]


class _Unchanged:
    """An unchanged TOASTed value (``pgoutput`` sends ``u`` instead of the value)."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()

#: PostgreSQL's epoch (2000-01-01) in Unix microseconds.
_PG_EPOCH_US: Final = 946_684_800_000_000
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

_I8 = struct.Struct("!b")
_U32 = struct.Struct("!I")
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")
_BEGIN = struct.Struct("!QqI")
_COMMIT = struct.Struct("!bQQq")


def format_lsn(lsn: int) -> str:
    """``0/16B3748``: PostgreSQL's text form of an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    hi, _, lo = text.partition("/")
    if not lo:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def pg_time(us: int) -> dt.datetime:
    """A ``pgoutput`` timestamp (microseconds since 2000-01-01) as a UTC datetime."""
    return _EPOCH + dt.timedelta(microseconds=us + _PG_EPOCH_US)


# --------------------------------------------------------------------------- messages


@dataclass(slots=True)
class Begin:
    final_lsn: int  # the commit record's LSN
    commit_ts: dt.datetime
    xid: int


@dataclass(slots=True)
class Commit:
    commit_lsn: int
    end_lsn: int  # where the next transaction can start: the position to resume after
    commit_ts: dt.datetime


@dataclass(frozen=True, slots=True)
class RelationColumn:
    name: str
    type_oid: int
    typmod: int
    replica_identity: bool


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # d(efault), n(othing), f(ull), i(ndex)
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True, slots=True)
class TypeMessage:
    oid: int
    namespace: str
    name: str


Values = list[Any]  # str | None | UNCHANGED per column


@dataclass(slots=True)
class Insert:
    relation: int
    new: Values


@dataclass(slots=True)
class Update:
    relation: int
    old: Values | None
    old_kind: str | None  # "K": the key columns only; "O": the whole old row (FULL)
    new: Values


@dataclass(slots=True)
class Delete:
    relation: int
    old: Values
    old_kind: str


@dataclass(slots=True)
class Truncate:
    relations: tuple[int, ...]
    cascade: bool
    restart_identity: bool


Message = Begin | Commit | Relation | TypeMessage | Insert | Update | Delete | Truncate | None


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\x00", pos)
    return buf[pos:end].decode("utf-8"), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[Values, int]:
    (n,) = _I16.unpack_from(buf, pos)
    pos += 2
    out: Values = []
    append = out.append
    unpack = _U32.unpack_from
    for _ in range(n):
        kind = buf[pos]
        pos += 1
        if kind == 116:  # 't'
            (size,) = unpack(buf, pos)
            pos += 4
            append(buf[pos : pos + size].decode("utf-8"))
            pos += size
        elif kind == 110:  # 'n'
            append(None)
        elif kind == 117:  # 'u'
            append(UNCHANGED)
        elif kind == 98:  # 'b': binary, only with the binary option (never requested)
            (size,) = unpack(buf, pos)
            pos += 4
            append(bytes(buf[pos : pos + size]))
            pos += size
        else:
            raise ValueError(f"unknown tuple value kind {chr(kind)!r}")
    return out, pos


def decode_message(buf: bytes) -> Message:
    """One ``pgoutput`` message (protocol 1); ``None`` for the kinds warp ignores (origin,
    logical decoding messages)."""
    tag = buf[0]
    if tag == 73:  # 'I'
        (rel,) = _U32.unpack_from(buf, 1)
        new, _ = _tuple(buf, 6)  # rel (4) + 'N'
        return Insert(rel, new)
    if tag == 85:  # 'U'
        (rel,) = _U32.unpack_from(buf, 1)
        pos = 5
        old: Values | None = None
        old_kind: str | None = None
        if buf[pos] in (75, 79):  # 'K', 'O'
            old_kind = chr(buf[pos])
            old, pos = _tuple(buf, pos + 1)
        new, _ = _tuple(buf, pos + 1)  # 'N'
        return Update(rel, old, old_kind, new)
    if tag == 68:  # 'D'
        (rel,) = _U32.unpack_from(buf, 1)
        kind = chr(buf[5])
        old_row, _ = _tuple(buf, 6)
        return Delete(rel, old_row, kind)
    if tag == 66:  # 'B'
        final_lsn, ts, xid = _BEGIN.unpack_from(buf, 1)
        return Begin(final_lsn, pg_time(ts), xid)
    if tag == 67:  # 'C'
        _flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
        return Commit(commit_lsn, end_lsn, pg_time(ts))
    if tag == 82:  # 'R'
        (rel,) = _U32.unpack_from(buf, 1)
        namespace, pos = _cstring(buf, 5)
        name, pos = _cstring(buf, pos)
        ident = chr(buf[pos])
        (ncols,) = _I16.unpack_from(buf, pos + 1)
        pos += 3
        cols = []
        for _ in range(ncols):
            flags = buf[pos]
            cname, pos = _cstring(buf, pos + 1)
            type_oid, typmod = struct.unpack_from("!Ii", buf, pos)
            pos += 8
            cols.append(RelationColumn(cname, type_oid, typmod, bool(flags & 1)))
        return Relation(rel, namespace, name, ident, tuple(cols))
    if tag == 89:  # 'Y'
        (oid,) = _U32.unpack_from(buf, 1)
        namespace, pos = _cstring(buf, 5)
        name, _ = _cstring(buf, pos)
        return TypeMessage(oid, namespace, name)
    if tag == 84:  # 'T'
        (n,) = _U32.unpack_from(buf, 1)
        options = buf[5]
        rels = struct.unpack_from(f"!{n}I", buf, 6)
        return Truncate(tuple(rels), bool(options & 1), bool(options & 2))
    if tag in (79, 77):  # 'O' origin, 'M' logical decoding message
        return None
    raise ValueError(f"unknown pgoutput message {chr(tag)!r}")


# --------------------------------------------------------------------------- the connection


def _options() -> str:
    return " ".join(f"-c {k}={v.replace(' ', '')}" for k, v in SESSION_SETTINGS.items())


class ReplicationStream:
    """One replication connection (``replication=database``) to the source database."""

    def __init__(self, url: str, *, timeout: float = 10.0, status_interval: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self.status_interval = status_interval
        self.conn: Any = None
        self.cur: Any = None
        self.streaming = False
        self._readable: asyncio.Event | None = None
        self._fd: int | None = None

    async def connect(self) -> None:
        def work() -> Any:
            return psycopg2.connect(
                self.url,
                connection_factory=psycopg2.extras.LogicalReplicationConnection,
                connect_timeout=max(1, int(self.timeout)),
                options=_options(),
                application_name="cartridge-warp",
            )

        try:
            self.conn = await asyncio.to_thread(work)
        except psycopg2.OperationalError as exc:
            raise _connect_error(self.url, exc) from None
        self.cur = self.conn.cursor()

    async def create_slot(self, name: str) -> tuple[int, str | None]:
        """``CREATE_REPLICATION_SLOT name LOGICAL pgoutput`` (exporting a snapshot, the
        default): the slot's consistent point and the snapshot's name. The snapshot stays
        importable (``SET TRANSACTION SNAPSHOT``) until this connection runs another command."""

        def work() -> tuple[int, str | None]:
            self.cur.create_replication_slot(name, output_plugin="pgoutput")
            row = self.cur.fetchone()
            return parse_lsn(str(row[1])), (str(row[2]) if row[2] else None)

        return await asyncio.to_thread(work)

    async def start(self, slot: str, publication: str, start_lsn: int) -> None:
        def work() -> None:
            self.cur.start_replication(
                slot_name=slot,
                decode=False,
                start_lsn=start_lsn,
                options={"proto_version": "1", "publication_names": publication},
                status_interval=self.status_interval,
            )

        await asyncio.to_thread(work)
        self.streaming = True
        self._fd = self.cur.fileno()

    @property
    def backend_pid(self) -> int | None:
        """The walsender's process id (what ``pg_replication_slots.active_pid`` shows)."""
        return int(self.conn.info.backend_pid) if self.conn is not None else None

    def read(self) -> Any:
        """The next replication message (``payload`` bytes, ``data_start``), or None."""
        return self.cur.read_message()

    @property
    def wal_end(self) -> int:
        """The server's WAL position as last reported (data messages and keepalives)."""
        return int(self.cur.wal_end) if self.cur is not None else 0

    async def wait(self, timeout: float) -> None:
        """Wait until the connection has data, or ``timeout`` seconds."""
        if self._fd is None:
            await asyncio.sleep(timeout)
            return
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        loop.add_reader(self._fd, event.set)
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(self._fd)

    def feedback(self, *, flush_lsn: int = 0, reply: bool = False, force: bool = False) -> None:
        """Confirm ``flush_lsn`` (all changes before it are committed in the warehouse)."""
        if self.cur is None or not self.streaming:
            return
        self.cur.send_feedback(
            write_lsn=flush_lsn, flush_lsn=flush_lsn, reply=reply, force=force or bool(flush_lsn)
        )

    async def close(self) -> None:
        conn, self.conn, self.cur = self.conn, None, None
        self.streaming = False
        self._fd = None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                await asyncio.to_thread(conn.close)


def _connect_error(url: str, exc: psycopg2.Error) -> Exception:
    reason = redact_url(str(exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
    text = str(exc).lower()
    if "password authentication failed" in text or "no pg_hba.conf entry" in text:
        return TerminalError(
            f"PostgreSQL source {redact_url(url)} refused the replication connection: {reason}",
            hint="the source user needs the REPLICATION attribute (or superuser) and a "
            "pg_hba.conf line allowing `replication` connections for the database",
        )
    if "does not exist" in text:
        return TerminalError(f"PostgreSQL source {redact_url(url)}: {reason}")
    return ConnectionFailed(
        f"cannot open a replication connection to {redact_url(url)}: {reason}",
        hint="check that the source is up and accepts replication connections",
    )
