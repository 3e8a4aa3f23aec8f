"""The local PostgreSQL service: a real server, idempotent, logical WAL available."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest

from cartridge_dagster.errors import ServiceError
from cartridge_dagster.services.postgres import LocalPostgres
from tests.support.services import REPO

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


@pytest.mark.skipif(os.geteuid() != 0, reason="the non-root path is what already ran as this user")
def test_works_as_a_normal_user(tmp_path: Path) -> None:
    """As root we run the server through runuser; a normal user runs initdb/pg_ctl directly."""
    user = "postgres"
    base = Path(tempfile.mkdtemp(prefix="cartridge-nonroot-"))
    pw = pwd.getpwnam(user)
    os.chown(base, pw.pw_uid, pw.pw_gid)
    script = (
        "from cartridge_dagster.services.postgres import LocalPostgres\n"
        f"s = LocalPostgres({str(base / 'pg')!r}, preferred_port=None, durable=False)\n"
        "st = s.up()\n"
        "print('UP', st.port, st.running)\n"
        "s.destroy()\n"
    )
    try:
        proc = subprocess.run(
            # The project's interpreter may live where this user cannot enter (/root): the
            # service module needs only the standard library, so any python3 will do.
            ["runuser", "-u", user, "--", _system_python(), "-c", script],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(base)},
        )
        assert proc.returncode == 0, proc.stderr
        assert "True" in proc.stdout.split("UP", 1)[1]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _system_python() -> str:
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand):
            return cand
    return sys.executable
