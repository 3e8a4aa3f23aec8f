"""Chaos for warp with a PostgreSQL source: writer processes, warp processes killed at random
moments, a column added mid-run, and the cast-back oracle.

:func:`run_pg_chaos` starts writer *processes* (psycopg2, as applications are) that run random
transactions against ``app.items`` — multi-row inserts (20–200 rows), counter bumps over a
group of rows (other writers' too), deletes of a group, delete-then-insert of the same key in
one transaction, a key change — with 29-digit numerics and timestamps with time zones; a writer
rides out a source restart (it reconnects and retries). Meanwhile ``cartridge warp run`` runs
as its own process and is killed with SIGKILL at random moments and restarted; halfway through,
a column with a default is added. When the writers are done, warp runs until idle and the
oracle (:func:`tests.support.pgsource.cast_back_oracle`: PostgreSQL's input functions, not
Cartridge's converter) compares every column of every row.

``python -m tests.support.pg_chaos soak --minutes 10`` runs seeds until the time is up (what
``make soak`` runs after the MongoDB soak); ``… writer …`` is a writer process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import yaml

from tests.support.pgsource import (
    OracleResult,
    cast_back_oracle,
    create_database,
    drop_database,
    execute,
)
from tests.support.services import REPO

TABLE = "items"
DDL = [
    "CREATE SCHEMA app",
    """CREATE TABLE app.items (
        id bigint PRIMARY KEY, n int NOT NULL, g int NOT NULL, w int NOT NULL,
        amount numeric(29,2), at timestamptz, note text)""",
]


def env() -> dict[str, str]:
    """Child processes start from bytecode, as a deployed image does."""
    out = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    return out


# --------------------------------------------------------------------------- writers


def _connect(url: str) -> Any:
    for _ in range(600):
        try:
            conn = psycopg2.connect(url, connect_timeout=2)
            conn.autocommit = False
            return conn
        except psycopg2.OperationalError:
            time.sleep(0.1)
    raise RuntimeError("the source did not come back")


def writer(url: str, who: int, seed: int, seconds: float, out: Path) -> None:
    rng = random.Random(seed * 1000 + who)
    deadline = time.monotonic() + seconds
    next_id = who * 10_000_000
    ops = 0
    conn = _connect(url)
    while time.monotonic() < deadline:
        roll = rng.random()
        group = rng.randrange(8)
        try:
            with conn.cursor() as cur:
                if roll < 0.4 or next_id < who * 10_000_000 + 50:
                    n = rng.randint(20, 200)
                    cur.execute(
                        "INSERT INTO app.items (id, n, g, w, amount, at, note) "
                        "SELECT g, 0, %s, %s, 12345678901234567890123456.78 + g, "
                        "'2024-03-10 02:30:00-08'::timestamptz + g * interval '1 ms', "
                        "'w' || g FROM generate_series(%s, %s) g",
                        (rng.randrange(8), who, next_id, next_id + n - 1),
                    )
                    next_id += n
                elif roll < 0.7:
                    cur.execute("UPDATE app.items SET n = n + 1, at = now() WHERE g = %s", (group,))
                elif roll < 0.8:
                    cur.execute(
                        "DELETE FROM app.items WHERE w = %s AND g = %s AND n >= %s",
                        (who, group, rng.randint(1, 4)),
                    )
                elif roll < 0.9:
                    key = rng.randrange(who * 10_000_000, next_id)
                    cur.execute("DELETE FROM app.items WHERE id = %s", (key,))
                    cur.execute(
                        "INSERT INTO app.items (id, n, g, w, note) VALUES (%s, 100, %s, %s, 'again')"
                        " ON CONFLICT (id) DO NOTHING",
                        (key, group, who),
                    )
                else:  # a key change
                    key = rng.randrange(who * 10_000_000, next_id)
                    cur.execute("UPDATE app.items SET id = %s WHERE id = %s", (next_id, key))
                    next_id += 1
            conn.commit()
            ops += 1
        except psycopg2.OperationalError:  # the source restarted: reconnect, go on
            with contextlib.suppress(psycopg2.Error):
                conn.close()
            conn = _connect(url)
        except psycopg2.errors.DeadlockDetected:
            conn.rollback()
        time.sleep(rng.uniform(0, 0.03))
    conn.close()
    out.write_text(json.dumps({"ops": ops}))


def start_writers(url: str, seed: int, seconds: float, work: Path, n: int = 2) -> list[Any]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.pg_chaos",
                "writer",
                "--url",
                url,
                "--writer",
                str(w + 1),
                "--seed",
                str(seed),
                "--seconds",
                str(seconds),
                "--out",
                str(work / f"writer{w}.json"),
            ],
            cwd=REPO,
            env=env(),
        )
        for w in range(n)
    ]


# --------------------------------------------------------------------------- warp


def write_config(path: Path, source_url: str, dest_url: str, slot: str, **warp: Any) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "source": {"type": "postgresql", "connection_string": source_url},
                "destination": {"connection_string": dest_url},
                "state_dir": str(path.parent / "state"),
                "mode": "single",
                "schemas": [
                    {
                        "name": "chaos",
                        "source_database": "app",
                        "target_schema": "raw_chaos",
                        "batching": {"max_batch_size": 300, "max_batch_seconds": 0.3},
                        "warp": {
                            "metrics_port": 0,
                            "idle_checkpoint_seconds": 0.5,
                            "slot_name": slot,
                            **warp,
                        },
                    }
                ],
            }
        )
    )
    return path


def spawn_warp(config: Path, log: Any, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cartridge_dagster", "warp", "run", "--config", str(config), *extra],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env(),
    )


# --------------------------------------------------------------------------- one run


@dataclass
class PgChaosResult:
    seed: int
    writes: int = 0
    kills: int = 0
    seconds: float = 0.0
    oracle: OracleResult | None = None
    log: str = ""

    @property
    def ok(self) -> bool:
        return self.oracle is not None and self.oracle.ok and self.oracle.source_rows > 0

    def line(self) -> str:
        verdict = "ok" if self.ok else f"FAILED {self.oracle}"
        rows = self.oracle.source_rows if self.oracle else 0
        return (
            f"postgresql seed={self.seed:<6} rows={rows:<6} writes={self.writes:<6} "
            f"kills={self.kills:<3} {self.seconds:6.1f}s  {verdict}"
        )


def run_pg_chaos(
    server_url: str,
    seed: int,
    work: Path,
    *,
    seconds: float = 15.0,
    life: tuple[float, float] = (1.5, 5.0),
) -> PgChaosResult:
    started = time.monotonic()
    rng = random.Random(seed)
    result = PgChaosResult(seed)
    work.mkdir(parents=True, exist_ok=True)
    source = create_database(server_url, "chsrc")
    dest = create_database(server_url, "chdst")
    try:
        execute(source, *DDL)
        execute(
            source,
            "INSERT INTO app.items (id, n, g, w) SELECT g, 0, g % 8, 0 "
            "FROM generate_series(1, 500) g",
        )
        config = write_config(
            work / "cartridge.yaml", source, dest, f"cartridge_chaos_{seed}_{os.getpid()}"
        )
        log_path = work / "warp.log"
        with open(log_path, "ab") as log:
            writers = start_writers(source, seed, seconds, work)
            warp = spawn_warp(config, log)
            altered = False
            while any(p.poll() is None for p in writers):
                deadline = time.monotonic() + rng.uniform(*life)
                while time.monotonic() < deadline and any(p.poll() is None for p in writers):
                    time.sleep(0.05)
                if not altered and time.monotonic() - started > seconds / 2:
                    # a column with a default while streaming: every row takes it without WAL
                    execute(source, "ALTER TABLE app.items ADD COLUMN tag text DEFAULT 'tagged'")
                    altered = True
                if all(p.poll() is not None for p in writers):
                    break
                warp.send_signal(signal.SIGKILL)
                warp.wait()
                result.kills += 1
                log.write(f"--- SIGKILL {result.kills}\n".encode())
                log.flush()
                warp = spawn_warp(config, log)
            for p in writers:
                if p.wait() != 0:
                    raise RuntimeError(f"a writer failed (exit {p.returncode})")
            warp.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                warp.wait(30)
            if warp.poll() is None:
                warp.kill()
                warp.wait()
            final = spawn_warp(config, log, "--stop-when-idle", "2")
            if final.wait(300) != 0:
                raise RuntimeError(f"warp's final run failed ({final.returncode}), {log_path}")
        for w in range(2):
            result.writes += json.loads((work / f"writer{w}.json").read_text())["ops"]
        result.oracle = asyncio.run(cast_back_oracle(source, "app", TABLE, dest, "raw_chaos"))
        result.log = str(log_path)
    finally:
        drop_database(server_url, source)
        drop_database(server_url, dest)
        result.seconds = time.monotonic() - started
    return result


def soak(server_url: str, minutes: float, seconds: float) -> int:
    deadline = time.monotonic() + minutes * 60
    failures = runs = 0
    seed = int(time.time()) % 100_000
    print(f"postgresql chaos soak: {minutes:g} minutes, writers {seconds:g} s per seed", flush=True)
    while time.monotonic() < deadline:
        with tempfile.TemporaryDirectory(prefix="pgchaos-") as tmp:
            result = run_pg_chaos(server_url, seed, Path(tmp), seconds=seconds)
        runs += 1
        print(result.line(), flush=True)
        failures += int(not result.ok)
        seed += 1
    print(f"postgresql chaos soak: {runs} runs, {failures} failed", flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="warp chaos with a PostgreSQL source")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--url", required=True)
    w.add_argument("--writer", type=int, required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("soak")
    s.add_argument("--minutes", type=float, default=10.0)
    s.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "writer":
        writer(args.url, args.writer, args.seed, args.seconds, args.out)
        return 0
    pg = os.environ.get("CARTRIDGE_TEST_POSTGRES_DSN")
    if not pg:
        print("set CARTRIDGE_TEST_POSTGRES_DSN (make soak starts a PostgreSQL)", file=sys.stderr)
        return 2
    return soak(pg, args.minutes, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
