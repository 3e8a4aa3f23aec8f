"""The local PostgreSQL service: a real server, idempotent, logical WAL available."""

from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from cartridge_dagster.errors import ServiceError
from cartridge_dagster.services.postgres import LocalPostgres

pytestmark = pytest.mark.integration


def test_up_is_idempotent_and_down_stops(tmp_path: Path) -> None:
    server = LocalPostgres(tmp_path / "pg", preferred_port=None, durable=False)
    try:
        first = server.up()
        second = server.up()
        assert first.running and second.running
        assert first.port == second.port
        assert first.url is not None
        conn = psycopg2.connect(first.url)
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            assert cur.fetchone() == ("logical",)
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("cartridge",)
        conn.close()
        assert server.down() is True
        assert server.status().running is False
        assert server.down() is False
        with pytest.raises(ServiceError, match="not running"):
            server.require_url()
        # restart keeps the data directory and the port when it is free
        again = server.up()
        assert again.running and again.data_dir == first.data_dir
    finally:
        server.destroy()


def test_immediate_restart_keeps_committed_data(tmp_path: Path) -> None:
    server = LocalPostgres(tmp_path / "pg", preferred_port=None)
    try:
        url = server.up().url
        assert url
        conn = psycopg2.connect(url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        conn.close()
        server.restart(mode="immediate")
        conn = psycopg2.connect(server.require_url())
        with conn.cursor() as cur:
            cur.execute("SELECT x FROM kept")
            assert cur.fetchone() == (42,)
        conn.close()
    finally:
        server.destroy()
