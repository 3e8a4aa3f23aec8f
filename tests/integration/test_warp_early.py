"""``cartridge warp run`` asks for its first reads while it validates its settings (``warp.early``).

Each test runs the command as its own process against a replica-set test server of its own,
started with its command trace on (``CARTRIDGE_REPLSET_TRACE=1``: one line per command the
server receives, written by the server). Two oracles do not use the code under test:

- the trace: which database was read, and whether an early cursor was let go;
- the source read back with PyMongo (``assert_oracle``).

What must hold:

- a first start uses what it read early: every document is copied once;
- the collection's count is asked for once, with the first page; the last page is small, and
  its reply ends the cursor (no empty page is asked for after it);
- a guess the settings contradict is dropped, and its cursor killed;
- an environment that overrides the file's source never reads the file's database;
- a restart drops the early pages (the checkpoint's plan goes on);
- a configuration error, or a database the source lacks, ends in one line with no traceback
  or asyncio warning.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from tests.conftest import run
from tests.support.replset import ReplicaSetProcess, start
from tests.support.services import REPO
from tests.support.warp import SCHEMA, assert_oracle, warp_settings

pytestmark = pytest.mark.integration

#: alpha needs four pages (1,000, 5,000, then 2,300 and the last 1,000: the estimated count says
#: where the end is); beta and gamma fit in the first
SIZES = {"alpha": 9_300, "beta": 40, "gamma": 1}
USER, PASSWORD = "app user", "p@ss:w/rd%"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaSetProcess]:
    os.environ["CARTRIDGE_REPLSET_TRACE"] = "1"
    try:
        handle = start(tmp_path_factory.mktemp("early-rs"), users=(f"{USER}:{PASSWORD}",))
    finally:
        del os.environ["CARTRIDGE_REPLSET_TRACE"]
    yield handle
    handle.stop()


def _authed(server: ReplicaSetProcess) -> str:
    from urllib.parse import quote_plus

    head, rest = server.uri.split("//", 1)
    return f"{head}//{quote_plus(USER)}:{quote_plus(PASSWORD)}@{rest}"


async def _seed(url: str, db: str) -> None:
    async with mongo_session(url) as conn:
        database = conn.database(db)
        for name, n in SIZES.items():
            await database[name].insert_many(
                [{"_id": i, "name": f"{name} é{i}", "n": i * 7} for i in range(n)]
            )


def _config(tmp_path: Path, server: ReplicaSetProcess, pg_url: str, db: str, **schema: Any) -> Path:
    path = tmp_path / "cartridge.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "source": {
                    "connection_string": server.uri,
                    "username": USER,
                    "password": PASSWORD,
                },
                "destination": {"connection_string": pg_url},
                "state_dir": str(tmp_path / "state"),
                "schemas": [
                    {
                        "name": SCHEMA,
                        "source_database": db,
                        "target_schema": "raw_shop",
                        "warp": {"metrics_port": 0, "idle_checkpoint_seconds": 0.5},
                        **schema,
                    }
                ],
            }
        )
    )
    return path


def _warp(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CARTRIDGE_") and k not in ("COLUMNS", "LINES")  # output to a pipe
    }
    return subprocess.run(
        [
            *(sys.executable, "-m", "cartridge_dagster", "warp", "run"),
            *("--config", str(config), "--stop-when-idle", "0.6"),
        ],
        cwd=REPO,
        env={**clean, "PYTHONWARNINGS": "default", **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
    )


def _trace(server: ReplicaSetProcess, since: int) -> list[str]:
    """The server's trace lines written after offset ``since`` of its log."""
    text = (server.data / "server.log").read_text(errors="replace")[since:]
    return [line for line in text.splitlines() if line.startswith("cmd ")]


def _log_size(server: ReplicaSetProcess) -> int:
    return len((server.data / "server.log").read_text(errors="replace"))


def _oracle(server: ReplicaSetProcess, pg_url: str, db: str) -> None:
    settings = warp_settings(_authed(server), pg_url, db)
    run(assert_oracle(settings, sorted(SIZES)))


def _clean(out: subprocess.CompletedProcess[str]) -> None:
    both = out.stdout + out.stderr
    for bad in (
        "Traceback",
        "was never awaited",
        "Task was destroyed",
        "Unclosed",
        "ResourceWarning",
    ):
        assert bad not in both, both[-3000:]


def _first_start(
    server: ReplicaSetProcess, tmp_path: Path, pg_url: str, db: str
) -> tuple[subprocess.CompletedProcess[str], int]:
    """Seed ``db``, run warp's first start on it (clean, exit 0); its output and the trace's
    offset before it."""
    run(_seed(_authed(server), db))
    since = _log_size(server)
    out = _warp(_config(tmp_path, server, pg_url, db))
    assert out.returncode == 0, out.stdout + out.stderr
    _clean(out)
    return out, since


def test_a_first_start_uses_its_early_reads(
    server: ReplicaSetProcess, tmp_path: Path, pg_url: str, mongo_db_name: str
) -> None:
    out, since = _first_start(server, tmp_path, pg_url, mongo_db_name)
    assert "warp.source.early_reads " in out.stderr, out.stderr
    assert "early_reads_dropped" not in out.stderr
    finds = [t for t in _trace(server, since) if f" find db={mongo_db_name} " in t]
    _oracle(server, pg_url, mongo_db_name)
    # one snapshot read per collection: the early one was the run's own, not read again
    assert len(finds) == len(SIZES), finds
    assert "'find': 'alpha'" in finds[0] and "'batchSize': 1000" in finds[0]


def test_the_count_is_asked_once_and_the_last_page_is_small(
    server: ReplicaSetProcess, tmp_path: Path, pg_url: str, mongo_db_name: str
) -> None:
    _, since = _first_start(server, tmp_path, pg_url, mongo_db_name)
    _oracle(server, pg_url, mongo_db_name)
    trace = [t for t in _trace(server, since) if f" db={mongo_db_name} " in t]
    for name in SIZES:  # the ETA and the page sizes share one count
        counts = [t for t in trace if f" count db={mongo_db_name} " in t and f"'{name}'" in t]
        assert len(counts) == 1, (name, counts)
    more = [
        int(m.group(1))
        for t in trace
        if " getMore " in t and "'collection': 'alpha'" in t
        for m in [re.search(r"'batchSize': (\d+)", t)]
        if m
    ]
    # 1,000 (find) + 5,000 + 2,300 + the last 1,000 (asked for as a full page: its reply ends
    # the cursor, so no empty getMore follows)
    assert more == [5_000, 2_300, 5_000], more
    # the count was asked for before the second page (the server got it first)
    started = [(float(t.split()[1]), t) for t in trace]
    count_at = min(at for at, t in started if " count " in t and "'alpha'" in t)
    more_at = min(at for at, t in started if " getMore " in t and "'alpha'" in t)
    assert count_at < more_at, "\n".join(trace)


def test_a_guess_the_settings_contradict_is_dropped_and_its_cursor_killed(
    server: ReplicaSetProcess, tmp_path: Path, pg_url: str, mongo_db_name: str
) -> None:
    run(_seed(_authed(server), mongo_db_name))
    since = _log_size(server)
    # the environment changes the page size the file implies (defaults are not overrides of
    # what is read: the early reads still happen, and the runner sees they do not fit)
    env = {"CARTRIDGE_DEFAULTS__BATCHING__MAX_BATCH_SIZE": "700"}
    out = _warp(_config(tmp_path, server, pg_url, mongo_db_name), env)
    assert out.returncode == 0, out.stdout + out.stderr
    _clean(out)
    assert "warp.source.early_reads_dropped" in out.stderr
    assert "other page sizes" in out.stderr
    _oracle(server, pg_url, mongo_db_name)
    trace = _trace(server, since)
    early_find = next(i for i, t in enumerate(trace) if "'find': 'alpha'" in t)
    killed = [t for t in trace[early_find:] if "killCursors" in t and "'alpha'" in t]
    assert killed, "the early cursor on alpha was not killed"


def test_an_overridden_source_is_never_read_from_the_file(
    server: ReplicaSetProcess, tmp_path: Path, pg_url: str, mongo_db_name: str
) -> None:
    run(_seed(_authed(server), mongo_db_name))
    since = _log_size(server)
    config = _config(tmp_path, server, pg_url, "file_only_db")
    out = _warp(config, {"CARTRIDGE_SCHEMAS__0__SOURCE_DATABASE": mongo_db_name})
    assert out.returncode == 0, out.stdout + out.stderr
    _clean(out)
    assert "early_reads" not in out.stderr
    _oracle(server, pg_url, mongo_db_name)
    assert not [t for t in _trace(server, since) if "file_only_db" in t]


def test_a_restart_drops_its_early_pages(
    server: ReplicaSetProcess, tmp_path: Path, pg_url: str, mongo_db_name: str
) -> None:
    run(_seed(_authed(server), mongo_db_name))
    config = _config(tmp_path, server, pg_url, mongo_db_name)
    assert _warp(config).returncode == 0

    async def more() -> None:
        async with mongo_session(_authed(server)) as conn:
            await conn.database(mongo_db_name)["alpha"].insert_many(
                [{"_id": 100_000 + i, "name": "later"} for i in range(50)]
            )
            await conn.database(mongo_db_name)["beta"].delete_one({"_id": 3})

    run(more())
    out = _warp(config)
    assert out.returncode == 0, out.stdout + out.stderr
    _clean(out)
    assert "warp.snapshot.read_ahead_dropped" in out.stderr
    assert re.search(r"warp\.snapshot\.plan ", out.stderr) is None  # no new snapshot plan
    _oracle(server, pg_url, mongo_db_name)


def test_a_bad_setting_is_one_line(
    server: ReplicaSetProcess, tmp_path: Path, pg_url: str, mongo_db_name: str
) -> None:
    run(_seed(_authed(server), mongo_db_name))
    out = _warp(_config(tmp_path, server, pg_url, mongo_db_name, batching={"max_batch_sise": 5}))
    assert out.returncode == 2, out.stdout + out.stderr
    _clean(out)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert any("max_batch_sise" in line and "unknown key" in line for line in lines), lines
    assert len(lines) <= 3, lines


def test_a_database_the_source_lacks_is_one_line(
    server: ReplicaSetProcess, tmp_path: Path, pg_url: str
) -> None:
    out = _warp(_config(tmp_path, server, pg_url, "no_such_db"))
    assert out.returncode != 0
    _clean(out)
    both = out.stdout + out.stderr
    assert "the source has no database 'no_such_db'" in both, both


def test_an_unreachable_source_is_retried_after_one_timeout_and_stops_on_sigterm(
    tmp_path: Path, pg_url: str
) -> None:
    """The early reads' failed contact counts as the run's first attempt: the first retry
    comes one connect timeout after the start, not two (early reads, then the runner's own).
    SIGTERM while it retries ends the run as stopped (exit 0) within one attempt, not after
    every attempt has failed (the code before took 46 s here, then exited 3 with an error)."""
    import signal
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    timeout = 3.0
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {
                    "connection_string": f"mongodb://127.0.0.1:{port}/?replicaSet=rs0",
                    "connect_timeout_seconds": timeout,
                },
                "destination": {"connection_string": pg_url},
                "state_dir": str(tmp_path / "state"),
                "schemas": [
                    {"name": SCHEMA, "source_database": "shop", "warp": {"metrics_port": 0}}
                ],
            }
        )
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cartridge_dagster", "warp", "run", "--config", str(config)],
        cwd=REPO,
        env=clean,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "warp.retry" in line:
                break
        first_retry = time.monotonic() - started
        proc.send_signal(signal.SIGTERM)
        signaled = time.monotonic()
        lines += proc.stdout.readlines()
        code = proc.wait(60)
        stopped_in = time.monotonic() - signaled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    text = "".join(lines)
    assert "warp.source.early_reads_dropped" in text, text
    assert "attempt=1" in text and f"cannot reach MongoDB at mongodb://127.0.0.1:{port}" in text
    assert first_retry < timeout * 1.7, f"first retry after {first_retry:.1f} s: {text}"
    assert code == 0, text
    # at once in a pause, at the latest when the attempt under way times out
    assert stopped_in < timeout + 2.0, f"stopped {stopped_in:.1f} s after SIGTERM: {text}"
    assert "warp.stopped_while_retrying" in text and "error:" not in text, text
    assert "Traceback" not in text
