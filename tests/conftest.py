"""Fixtures for real services: PostgreSQL, MongoDB (embedded engine unless a URI is given)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from cartridge_dagster.services.postgres import LocalPostgres
from tests.support.services import (
    REPO,
    container_replset,
    docker_engine_available,
    replset_mongo_uri,
)

os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server (maintenance database) for the whole session."""
    dsn = os.environ.get("CARTRIDGE_TEST_POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    if docker_engine_available() and os.environ.get("CARTRIDGE_TEST_USE_CONTAINERS") == "1":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    server = LocalPostgres(
        REPO / ".cartridge" / "test-postgres", preferred_port=None, durable=False
    )
    was_running = server.status().running
    status = server.up()
    assert status.url is not None
    yield status.url
    if not was_running:
        server.down()


def _admin(url: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


@pytest.fixture
def pg_url(pg_server_url: str) -> Iterator[str]:
    """A fresh, empty database on the test server; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = _admin(pg_server_url)
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base, _, _ = pg_server_url.rpartition("/")
    yield f"{base}/{name}"
    conn = _admin(pg_server_url)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


@pytest.fixture
def pg_source_url(pg_server_url: str) -> Iterator[str]:
    """A fresh database on the test server to serve as a PostgreSQL source; dropped afterwards
    with the replication slots warp made on it (slots would keep it from being dropped)."""
    from tests.support.pgsource import source_database

    with source_database(pg_server_url) as url:
        yield url


@pytest.fixture
def mongo_url(tmp_path: Path) -> str:
    """A MongoDB source: CARTRIDGE_TEST_MONGO_URI when given, else the embedded engine on disk."""
    uri = os.environ.get("CARTRIDGE_TEST_MONGO_URI")
    if uri:
        return uri
    return f"mongoeco://{tmp_path / 'source.sqlite'}"


@pytest.fixture(scope="session")
def replset_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB replica set, the best available: ``CARTRIDGE_TEST_MONGO_URI``, else a
    testcontainers ``mongo`` replica set when a Docker engine answers, else the project's
    replica-set test server (wire protocol on 127.0.0.1, real PyMongo; one per session, a
    database per test)."""
    uri, _ = replset_mongo_uri()
    if uri is not None:
        yield uri
        return
    found = container_replset()
    if found is not None:
        uri, container = found
        try:
            yield uri
        finally:
            container.stop()  # type: ignore[attr-defined]
        return
    from tests.support.replset import start

    server = start(tmp_path_factory.mktemp("replset"))
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def mongo_db_name() -> str:
    return f"src_{uuid.uuid4().hex[:8]}"


def run(coro):  # type: ignore[no-untyped-def]
    """Run a coroutine from a sync test."""
    return asyncio.run(coro)
