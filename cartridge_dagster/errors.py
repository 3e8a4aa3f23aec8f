"""Cartridge's error vocabulary.

Every error the core raises is a :class:`CartridgeError`. Two mixins split them by what a caller
should do: :class:`TransientError` (retry with backoff) and :class:`TerminalError` (stop and tell a
person). :func:`classify` maps driver exceptions (PyMongo, asyncpg, OS) onto that split, so retry
policies are written once.

Messages never contain secrets: connection strings are redacted with :func:`redact_url` before
they are put in a message.
"""

from __future__ import annotations

import re
import sqlite3

__all__ = [
    "CartridgeError",
    "ConfigError",
    "ConnectionFailed",
    "ResumeTokenLost",
    "ServiceError",
    "TerminalError",
    "TransientError",
    "classify",
    "is_busy_file",
    "redact_url",
]


class CartridgeError(Exception):
    """Root of every error Cartridge raises on purpose."""

    #: A one-line hint for the person reading the error, shown by the CLI.
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class TransientError(CartridgeError):
    """Worth retrying: the same call may succeed later (network blip, failover, lock timeout)."""


class TerminalError(CartridgeError):
    """Retrying will not help; a person or a policy must act."""


class ConfigError(TerminalError):
    """The configuration is invalid. The message names the file and the dotted field path."""


class ServiceError(TerminalError):
    """A local service (PostgreSQL, the embedded MongoDB engine) could not be started or found."""


class ConnectionFailed(TransientError):
    """A database could not be reached."""


class ResumeTokenLost(TerminalError):
    """The change stream cannot resume from the stored token: the history is gone."""


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<creds>[^/@\s]*@)")
_PASSWORD_PARAM = re.compile(r"(?i)(password|passwd|pwd|secret|token|api_key)=([^&\s]+)")


def redact_url(text: str) -> str:
    """Hide credentials in any URL inside ``text`` (``user:pass@`` → ``***@``)."""
    redacted = _URL_CREDENTIALS.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m.group(1)}=***", redacted)


#: Server error codes worth retrying: the retryable-reads/writes set of the drivers' specs
#: (not primary, node recovering or shutting down, host unreachable, network timeout, socket
#: error, time limit, majority read concern not yet available).
_TRANSIENT_MONGO_CODES = frozenset(
    {6, 7, 89, 91, 134, 189, 262, 9001, 10058, 10107, 11600, 11602, 13435, 13436}
)
#: Error labels the server or driver puts on errors a retry (or a change stream resume) fixes.
_TRANSIENT_MONGO_LABELS = (
    "ResumableChangeStreamError",
    "RetryableWriteError",
    "TransientTransactionError",
)


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``, the members of an exception group, and what they were raised from."""
    seen: list[BaseException] = []
    pending = [exc]
    while pending and len(seen) < 50:
        current = pending.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return seen


def is_busy_file(exc: BaseException) -> bool:
    """True when ``exc`` is, wraps or groups SQLite's "database is locked"/"busy" (the embedded
    engine's file held by a writer in another process): always worth retrying."""
    for cause in _causes(exc):
        if isinstance(cause, sqlite3.OperationalError):
            text = str(cause).lower()
            if "locked" in text or "busy" in text:
                return True
    return False


def classify(exc: BaseException) -> type[TransientError] | type[TerminalError]:
    """Map a driver exception onto the transient/terminal split.

    A busy embedded-engine file is transient however it is wrapped (an exception group, or
    raised from another error); an exception group is transient when all its members are.
    Imports are local so the core can classify without importing drivers it does not use.
    """
    if is_busy_file(exc):
        return TransientError
    if isinstance(exc, BaseExceptionGroup):
        members = exc.exceptions
        if members and all(classify(m) is TransientError for m in members):
            return TransientError
        return TerminalError
    if isinstance(exc, TransientError):
        return TransientError
    if isinstance(exc, TerminalError):
        return TerminalError
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return TransientError
    try:
        import pymongo.errors as pme
    except ImportError:  # pragma: no cover - pymongo is a hard dependency
        pme = None  # type: ignore[assignment]
    if pme is not None:
        if isinstance(exc, pme.OperationFailure) and exc.code in (286, 280):
            return TerminalError
        # A dropped connection: ConnectionFailure is the base of AutoReconnect (and so of
        # NotPrimaryError), NetworkTimeout, ServerSelectionTimeoutError and WaitQueueTimeoutError;
        # the embedded engine's own ConnectionFailure and ServerSelectionTimeoutError subclass
        # PyMongo's. CursorNotFound: the server dropped the cursor (a restart, a failover).
        if isinstance(exc, (pme.ConnectionFailure, pme.CursorNotFound)):
            return TransientError
        if isinstance(exc, pme.OperationFailure) and exc.code in _TRANSIENT_MONGO_CODES:
            return TransientError
        if isinstance(exc, pme.PyMongoError) and any(
            exc.has_error_label(label) for label in _TRANSIENT_MONGO_LABELS
        ):
            return TransientError
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - psycopg2 is a hard dependency
        psycopg2 = None  # type: ignore[assignment]
    if psycopg2 is not None and isinstance(exc, psycopg2.Error):
        return _classify_psycopg2(exc, psycopg2)
    try:
        import asyncpg
    except ImportError:  # pragma: no cover
        asyncpg = None  # type: ignore[assignment]
    if asyncpg is not None:
        transient_pg: tuple[type[BaseException], ...] = (
            asyncpg.exceptions.ConnectionDoesNotExistError,
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.TooManyConnectionsError,
            asyncpg.exceptions.SerializationError,
            asyncpg.exceptions.DeadlockDetectedError,
            asyncpg.exceptions.LockNotAvailableError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.CrashShutdownError,
            asyncpg.exceptions.QueryCanceledError,
        )
        if isinstance(exc, transient_pg):
            return TransientError
        if isinstance(exc, asyncpg.exceptions.PostgresConnectionError):
            return TransientError
    return TerminalError


#: SQLSTATE classes and codes worth retrying from psycopg2 (the replication connection):
#: connection exceptions, operator intervention (shutdown, cancel), insufficient resources
#: (too many connections), a slot in use by another connection (55006: a second warp process
#: that is being fenced), serialization failures and deadlocks.
_TRANSIENT_PG_CLASSES = ("08", "57", "53")
_TRANSIENT_PG_CODES = frozenset({"55006", "40001", "40P01", "55P03"})


def _classify_psycopg2(
    exc: BaseException, psycopg2: object
) -> type[TransientError] | type[TerminalError]:
    code = getattr(exc, "pgcode", None)
    if code is not None:
        if code in _TRANSIENT_PG_CODES or code[:2] in _TRANSIENT_PG_CLASSES:
            return TransientError
        return TerminalError
    # No SQLSTATE: the connection itself failed (server gone, network, "connection already
    # closed", a replication stream cut: "error with status PGRES_COPY_BOTH and no message").
    # Refusals at connect time are turned into TerminalError by the connector.
    if isinstance(exc, (psycopg2.DatabaseError, psycopg2.InterfaceError)):  # type: ignore[attr-defined]
        return TransientError
    return TerminalError
