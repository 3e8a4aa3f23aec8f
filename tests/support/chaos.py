"""Chaos for warp: writer processes, a warp process killed at random moments, and an oracle.

:func:`run_chaos` starts two or more *writer processes* (as applications are) that run bursts
of ``insert_many`` (20–200 documents), ``update_many`` bumping a counter ``n``, ``delete_many``,
and delete-then-re-insert of the same ``_id``, against a source: the embedded engine (a SQLite
file several processes write, with the demo's ``history_size``) or the replica-set test server
(PyMongo over TCP). Meanwhile ``cartridge warp run`` runs as its own process and is killed with
SIGKILL at random moments and restarted. When the writers are done, warp runs until idle, and
the oracle compares — without Cartridge's converter — the source's live ``_id`` set and every
``n`` (read with the source's own client) with PostgreSQL's (``_id`` and ``document->>'n'``).

``python -m tests.support.chaos soak --minutes 20`` runs seeds until the time is up and prints
one line per seed (what ``make soak`` runs); ``python -m tests.support.chaos writer ...`` is a
writer process.
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.services import REPO

__all__ = ["ChaosResult", "run_chaos"]

DB = "chaos"
COLL = "items"
SCHEMA = "chaos"
#: The demo's embedded-engine history (examples/demo.yaml): small, so kills lose history.
DEMO_HISTORY = 500


@dataclass
class ChaosResult:
    backend: str
    seed: int
    documents: int = 0
    writes: int = 0
    kills: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    seconds: float = 0.0
    warp_log: str = ""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.stale) and self.documents > 0

    def line(self) -> str:
        verdict = (
            "ok"
            if self.ok
            else (
                f"FAILED missing={len(self.missing)} extra={len(self.extra)} stale={len(self.stale)}"
            )
        )
        return (
            f"{self.backend:<9} seed={self.seed:<6} documents={self.documents:<6} "
            f"writes={self.writes:<6} kills={self.kills:<3} {self.seconds:6.1f}s  {verdict}"
        )


# --------------------------------------------------------------------------- writers


async def _writer(url: str, writer: int, seed: int, seconds: float, out: Path) -> None:
    rng = random.Random(seed * 1000 + writer)
    ops = 0
    if url.startswith("mongoeco:"):
        from cartridge_dagster.connectors.mongo import mongo_session

        async with mongo_session(url) as conn:
            ops = await _write_loop(conn.database(DB)[COLL], writer, rng, seconds)
    else:
        import pymongo

        client: pymongo.AsyncMongoClient[Any] = pymongo.AsyncMongoClient(url)
        try:
            ops = await _write_loop(client[DB][COLL], writer, rng, seconds)
        finally:
            await client.close()
    out.write_text(json.dumps({"ops": ops}))


async def _write_loop(coll: Any, writer: int, rng: random.Random, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    next_id = 0
    ops = 0
    while time.monotonic() < deadline:
        roll = rng.random()
        group = rng.randrange(8)
        if roll < 0.45 or next_id < 50:
            n = rng.randint(20, 200)
            docs = [
                {"_id": f"w{writer}-{next_id + i}", "n": 0, "g": rng.randrange(8), "w": writer}
                for i in range(n)
            ]
            next_id += n
            await coll.insert_many(docs)
        elif roll < 0.75:  # a counter bump over a group (other writers' documents too)
            await coll.update_many({"g": group}, {"$inc": {"n": 1}})
        elif roll < 0.87:
            await coll.delete_many({"w": writer, "g": group, "n": {"$gte": rng.randint(1, 4)}})
        else:  # delete, then the same _id again, with a new counter
            key = f"w{writer}-{rng.randrange(next_id)}"
            await coll.delete_one({"_id": key})
            await coll.insert_one({"_id": key, "n": 100, "g": group, "w": writer})
        ops += 1
        await asyncio.sleep(rng.uniform(0, 0.05))
    return ops


# --------------------------------------------------------------------------- warp


def _config(path: Path, url: str, pg_url: str, state: Path) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": url},
                "destination": {"connection_string": pg_url},
                "state_dir": str(state),
                "mode": "single",
                "schemas": [
                    {
                        "name": SCHEMA,
                        "source_database": DB,
                        "target_schema": "raw_chaos",
                        "batching": {"max_batch_size": 500, "max_batch_seconds": 0.5},
                        "warp": {
                            "metrics_port": 0,
                            "history_lost_policy": "resnapshot",
                            "idle_checkpoint_seconds": 1.0,
                        },
                    }
                ],
            }
        )
    )


def _warp(config: Path, log: Any, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cartridge_dagster", "warp", "run", "--config", str(config), *extra],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(),
    )


def _env() -> dict[str, str]:
    """A process environment that keeps compiled bytecode (this machine sets
    ``PYTHONDONTWRITEBYTECODE``, which makes every start compile Cartridge and its libraries
    again: seconds per start, where a deployed image starts from bytecode)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# --------------------------------------------------------------------------- the oracle


async def _source_state(url: str) -> dict[str, int]:
    if url.startswith("mongoeco:"):
        from mongoeco import AsyncMongoClient
        from mongoeco.engines import SQLiteEngine

        path = url.split("://", 1)[1].split("?", 1)[0]
        async with AsyncMongoClient(SQLiteEngine(path)) as client:
            return {str(d["_id"]): int(d["n"]) async for d in client[DB][COLL].find({}, {"n": 1})}
    import pymongo

    client: pymongo.AsyncMongoClient[Any] = pymongo.AsyncMongoClient(url)
    try:
        return {str(d["_id"]): int(d["n"]) async for d in client[DB][COLL].find({}, {"n": 1})}
    finally:
        await client.close()


async def _target_state(pg_url: str) -> dict[str, int]:
    import asyncpg

    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch(
            'SELECT "_id", ("document"->>\'n\')::bigint AS n FROM "raw_chaos"."items" '
            'WHERE NOT "_cartridge_deleted"'
        )
    finally:
        await conn.close()
    return {str(r["_id"]): int(r["n"]) for r in rows}


# --------------------------------------------------------------------------- a run


def run_chaos(
    backend: str,
    seed: int,
    pg_url: str,
    work: Path,
    *,
    writers: int = 2,
    seconds: float = 20.0,
    life: tuple[float, float] = (2.0, 8.0),
) -> ChaosResult:
    """One chaos run; ``backend`` is ``embedded`` or ``replset`` (a test server of its own)."""
    started = time.monotonic()
    rng = random.Random(seed)
    result = ChaosResult(backend, seed)
    work.mkdir(parents=True, exist_ok=True)
    server = None
    if backend == "embedded":
        url = f"mongoeco://{work / 'source.sqlite'}?history_size={DEMO_HISTORY}"
    else:
        from tests.support.replset import start

        server = start(work / "replset")
        url = server.uri
    config = work / "cartridge.yaml"
    _config(config, url, pg_url, work / "state")
    log_path = work / "warp.log"
    try:
        with open(log_path, "ab") as log:
            asyncio.run(_seed(url))
            writer_procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.support.chaos",
                        "writer",
                        "--url",
                        url,
                        "--writer",
                        str(w),
                        "--seed",
                        str(seed),
                        "--seconds",
                        str(seconds),
                        "--out",
                        str(work / f"writer{w}.json"),
                    ],
                    cwd=REPO,
                    env=_env(),
                )
                for w in range(writers)
            ]
            warp = _warp(config, log)
            while any(p.poll() is None for p in writer_procs):
                deadline = time.monotonic() + rng.uniform(*life)
                while time.monotonic() < deadline and any(p.poll() is None for p in writer_procs):
                    time.sleep(0.05)
                if all(p.poll() is not None for p in writer_procs):
                    break
                warp.send_signal(signal.SIGKILL)
                warp.wait()
                result.kills += 1
                log.write(f"--- SIGKILL {result.kills}\n".encode())
                log.flush()
                warp = _warp(config, log)
            for p in writer_procs:
                if p.wait() != 0:
                    raise RuntimeError(f"a chaos writer failed (exit {p.returncode})")
            # the writers are done: let warp finish on its own, then check
            warp.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                warp.wait(30)
            if warp.poll() is None:
                warp.kill()
                warp.wait()
            final = _warp(config, log, "--stop-when-idle", "2")
            if final.wait(300) != 0:
                raise RuntimeError(f"warp's final run failed (exit {final.returncode}), {log_path}")
        for w in range(writers):
            result.writes += json.loads((work / f"writer{w}.json").read_text())["ops"]
        source = asyncio.run(_source_state(url))
        target = asyncio.run(_target_state(pg_url))
        result.documents = len(source)
        result.missing = sorted(set(source) - set(target))
        result.extra = sorted(set(target) - set(source))
        result.stale = sorted(k for k in set(source) & set(target) if source[k] != target[k])
    finally:
        if server is not None:
            server.stop()
        result.seconds = time.monotonic() - started
        result.warp_log = str(log_path)
    return result


async def _seed(url: str) -> None:
    """A first document, so the source database exists before warp plans its snapshot."""
    if url.startswith("mongoeco:"):
        from cartridge_dagster.connectors.mongo import mongo_session

        async with mongo_session(url) as conn:
            await conn.database(DB)[COLL].insert_one({"_id": "seed", "n": 0, "g": 0, "w": -1})
        return
    import pymongo

    client: pymongo.AsyncMongoClient[Any] = pymongo.AsyncMongoClient(url)
    try:
        await client[DB][COLL].insert_one({"_id": "seed", "n": 0, "g": 0, "w": -1})
    finally:
        await client.close()


# --------------------------------------------------------------------------- soak


def _fresh_database(server_url: str) -> str:
    import psycopg2

    name = f"chaos_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(server_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"


def soak(pg_server_url: str, minutes: float, seconds: float) -> int:
    deadline = time.monotonic() + minutes * 60
    failures = 0
    runs = 0
    seed = int(time.time()) % 100_000
    print(f"chaos soak: {minutes:g} minutes, writers {seconds:g} s per seed", flush=True)
    while time.monotonic() < deadline:
        for backend in ("embedded", "replset"):
            with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
                result = run_chaos(
                    backend, seed, _fresh_database(pg_server_url), Path(tmp), seconds=seconds
                )
                runs += 1
                print(result.line(), flush=True)
                if not result.ok:
                    failures += 1
                    print(
                        f"  missing {result.missing[:5]} extra {result.extra[:5]} "
                        f"stale {result.stale[:5]}",
                        flush=True,
                    )
        seed += 1
    print(f"chaos soak: {runs} runs, {failures} failed", flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="warp chaos: writers, kills, an oracle")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--url", required=True)
    w.add_argument("--writer", type=int, required=True)
    w.add_argument("--seed", type=int, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("soak")
    s.add_argument("--minutes", type=float, default=20.0)
    s.add_argument("--seconds", type=float, default=45.0, help="writers' time per seed")
    args = parser.parse_args(argv)
    if args.command == "writer":
        asyncio.run(_writer(args.url, args.writer, args.seed, args.seconds, args.out))
        return 0
    pg = os.environ.get("CARTRIDGE_TEST_POSTGRES_DSN")
    if not pg:
        print("set CARTRIDGE_TEST_POSTGRES_DSN (make soak starts a PostgreSQL)", file=sys.stderr)
        return 2
    return soak(pg, args.minutes, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
