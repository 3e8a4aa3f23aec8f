"""What a dropped MongoDB connection raises is transient; lost history and bad input are not."""

from __future__ import annotations

import sqlite3

import mongoeco.errors as embedded
import psycopg2
import pymongo.errors as pme
import pytest

from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.connectors.mongo import _translate_error
from cartridge_dagster.errors import (
    ConnectionFailed,
    ResumeTokenLost,
    TerminalError,
    TransientError,
    classify,
)
from cartridge_dagster.warp.runner import WarpRunner


@pytest.mark.parametrize(
    "exc",
    [
        pme.AutoReconnect("connection closed"),
        pme.NetworkTimeout("timed out"),
        pme.ConnectionFailure("connection refused"),
        pme.ServerSelectionTimeoutError("no servers"),
        pme.NotPrimaryError("not primary", {"code": 10107}),
        pme.WaitQueueTimeoutError("pool exhausted"),
        pme.CursorNotFound("cursor id 42 not found", code=43),
        pme.OperationFailure("primary stepped down", code=189),
        pme.OperationFailure("interrupted at shutdown", code=11600),
        pme.OperationFailure("host unreachable", code=6),
        pme.OperationFailure("socket", code=9001),
        pme.OperationFailure(
            "resumable", code=1234, details={"errorLabels": ["ResumableChangeStreamError"]}
        ),
        # the embedded engine: its errors subclass PyMongo's; its SQLite file can be busy
        embedded.ConnectionFailure("engine connection closed"),
        embedded.ServerSelectionTimeoutError("selection timed out"),
        sqlite3.OperationalError("database is locked"),
        ConnectionResetError("reset by peer"),
        TimeoutError(),
        ConnectionFailed("cannot reach MongoDB"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_dropped_connections_are_transient(exc: BaseException) -> None:
    assert classify(exc) is TransientError


@pytest.mark.parametrize(
    "exc",
    [
        pme.OperationFailure("resume token not found", code=286),
        pme.OperationFailure("history lost", code=280),
        pme.OperationFailure("not authorized", code=13),
        pme.OperationFailure("Unrecognized pipeline stage name", code=40324),
        pme.ConfigurationError("bad option"),
        sqlite3.OperationalError("no such table: x"),
        embedded.OperationFailure("bad query", code=2),
        ResumeTokenLost("gone"),
        ValueError("bug"),
    ],
    ids=lambda e: f"{type(e).__name__}-{getattr(e, 'code', '')}",
)
def test_the_rest_is_terminal(exc: BaseException) -> None:
    assert classify(exc) is TerminalError


def test_the_engines_lost_history_is_terminal() -> None:
    lost = embedded.OperationFailure("resume token is no longer available in history")
    assert isinstance(_translate_error(lost), ResumeTokenLost)


def test_the_stop_message_names_the_source_without_secrets() -> None:
    url = "mongodb://warp:hunter2@db1.internal:27017,db2.internal:27017/?replicaSet=rs0"
    settings = settings_from_mapping(
        {
            "source": {"connection_string": url},
            "destination": {"connection_string": "postgresql://u:pw@localhost/db"},
            "schemas": [{"name": "shop", "source_database": "shop"}],
        }
    )
    runner = WarpRunner(settings, settings.schemas[0], max_retries=4)
    error = runner._source_down(pme.AutoReconnect(f"lost {url}"))
    assert isinstance(error, ConnectionFailed) and classify(error) is TransientError
    text = f"{error} {error.hint}"
    assert "hunter2" not in text
    assert "mongodb://***@db1.internal:27017,db2.internal:27017" in str(error)
    assert "shop" in str(error) and "4 attempts" in str(error) and "AutoReconnect" in str(error)


def _pg_error(base: type[Exception], code: str | None) -> Exception:
    """A psycopg2 error as the driver raises it, with its SQLSTATE."""
    kind = type("PgError", (base,), {"pgcode": code})
    return kind("boom")


@pytest.mark.parametrize(
    ("base", "code", "expected"),
    [
        # the replication stream cut by a server restart: no SQLSTATE
        (psycopg2.DatabaseError, None, TransientError),
        (psycopg2.OperationalError, None, TransientError),
        (psycopg2.InterfaceError, None, TransientError),
        (psycopg2.OperationalError, "57P01", TransientError),  # admin shutdown
        (psycopg2.OperationalError, "08006", TransientError),  # connection failure
        (psycopg2.OperationalError, "55006", TransientError),  # slot in use (a fenced twin)
        (psycopg2.OperationalError, "53300", TransientError),  # too many connections
        (psycopg2.ProgrammingError, "42704", TerminalError),  # slot does not exist
        (psycopg2.OperationalError, "55000", TerminalError),  # slot invalidated
        (psycopg2.OperationalError, "28P01", TerminalError),  # bad password
    ],
)
def test_psycopg2_errors_split_into_transient_and_terminal(
    base: type[Exception], code: str | None, expected: type[Exception]
) -> None:
    assert classify(_pg_error(base, code)) is expected


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "exc",
    [
        sqlite3.OperationalError("database is locked"),
        ExceptionGroup(
            "errors while closing AsyncMongoClient",
            [sqlite3.OperationalError("database is locked")],
        ),
        _raised_from(
            embedded.OperationFailure("change delivery failed"),
            sqlite3.OperationalError("database is locked"),
        ),
        ExceptionGroup(
            "nested",
            [ExceptionGroup("inner", [sqlite3.OperationalError("database table is locked")])],
        ),
    ],
    ids=["bare", "exception-group", "raised-from", "nested-groups"],
)
def test_a_busy_embedded_file_is_transient_however_wrapped(exc: BaseException) -> None:
    assert classify(exc) is TransientError


def test_a_group_with_a_terminal_member_is_terminal() -> None:
    group = ExceptionGroup(
        "mixed", [sqlite3.OperationalError("database is locked"), ValueError("x")]
    )
    assert classify(group) is TransientError  # the busy file decides: retrying may clear it
    assert classify(ExceptionGroup("bad", [ValueError("x"), KeyError("y")])) is TerminalError
