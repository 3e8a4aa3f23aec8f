"""warp's whole run as a user times it, beside Sling and the server's plain read ceiling.

Every tool reads the same collection of order documents (the demo generator's, ~530 bytes of
BSON) from the same MongoDB wire server — the replica-set test server (``tests/support/replset``)
over TCP on 127.0.0.1 — into the same PostgreSQL, in interleaved rounds:

- **plain read ceiling**: a PyMongo client reading every document as raw BSON (no conversion,
  no writes): what the server can serve, timed as a whole process from its launch to its last
  document, as warp's run is timed (the ≥ 0.8 target is judged on it). Also timed inside its
  process, after its imports: that ratio counts warp's start-up and not the read's, so at 10k
  it is capped near launch → first read ÷ the read itself (0.3 s allowed before the first read
  and ~0.3 s of the server's own reading already exceed the 0.375 s that 0.8× of it allows).
- **Sling**: ``sling run`` MongoDB → PostgreSQL, full refresh (the ``sling-linux-amd64``
  wheel's binary, called directly), from launch to exit.
- **warp over the wire**: ``cartridge warp run`` as a process of its own, from launch until the
  checkpoint says the snapshot is done (polled every 20 ms); also launch → its first snapshot
  read as the server got it (the server's own trace, ``CARTRIDGE_REPLSET_TRACE``: the first
  ``find`` on the bench's database after the launch), the CPU seconds warp's process had used
  by then (±20 ms), the server's own time answering ``listCollections`` / ``listDatabases``
  before that read (the test server finds collection names in its engine's documents table,
  so that time grows with the data; MongoDB reads them from its catalog), and its peak
  resident memory.
- **warp in process**: the same on the embedded engine's file (``mongoeco://``).
- **what the interpreter-wide settings of warp's entry points buy**: the GC setting, as warp's
  CPU seconds (launch → snapshot done) without it (``CARTRIDGE_GC_TUNING=0``) ÷ with it, in
  process and over the wire (sizes up to 100,000; CPU, not docs/s: the wall clock of a shared
  machine moves more than the setting); and pydantic's plugin switch, as the CPU a fresh
  process spends loading the bench's configuration with the plugin scan
  (``PYDANTIC_DISABLE_PLUGINS=``) and without it (the entry point's setting), the minima (and
  medians) of ``CONFIG_ROUNDS`` interleaved pairs, measured once per bench run.
- **CPU accounting** (Linux ``/proc``): the CPU seconds the wire server, warp's process and
  its PostgreSQL backends used from launch to "snapshot done", and the server's for the
  plain read. The server, warp and PostgreSQL share the machine's cores: on a loaded machine
  (one core or less free) warp's share of the ceiling tends to server ÷ (server + warp +
  PostgreSQL), whatever the overlap.

Each tool starts once the server's CPU has been still for 0.2 s (:func:`server_idle`), so no
tool is timed through the last one's cursors and garbage.

Sizes: ``BENCH_E2E_SIZES`` (default ``10000,50000,100000,1000000``), rounds
``BENCH_E2E_ROUNDS`` (3; one round for a million), and ``BENCH_E2E_MANY`` collections of 10,000
(100; 0 skips). Seeded sources are cached in ``.cartridge/bench/seed/`` (10,000 documents
through the engine, larger ones derived from them: :func:`seed_file`). Processes start from compiled bytecode, as
a deployed image does (this machine sets ``PYTHONDONTWRITEBYTECODE``; it is dropped for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from tests.support.services import REPO

SIZES = [int(s) for s in os.environ.get("BENCH_E2E_SIZES", "10000,50000,100000,1000000").split(",")]
ROUNDS = max(1, int(os.environ.get("BENCH_E2E_ROUNDS", "3")))
MANY = int(os.environ.get("BENCH_E2E_MANY", "100"))
MANY_SIZE = 10_000
SEED_DIR = REPO / ".cartridge" / "bench" / "seed"
SEED_VERSION = "1"  # bump when the generator or the engine's format changes
DB = "bench"


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --------------------------------------------------------------------------- sources


BASE_SIZE = 10_000
_OID_PREFIX = '{"_id":{"$mongoeco":{"type":"objectid","value":"'


def seed_file(n: int, collections: int = 1) -> Path:
    """An embedded-engine file with ``collections`` collections of ``n`` order documents each
    (``orders``, or ``c000``…), cached.

    Only ``BASE_SIZE`` documents go through the engine's own inserts (~150 documents/s here: each
    insert also journals its change event); larger sources are that file's documents repeated
    under new ``_id``s (the ObjectId's two leading bytes number the copy), written straight into
    the engine's ``documents`` table, so a million documents take a minute instead of hours."""
    SEED_DIR.mkdir(parents=True, exist_ok=True)
    path = SEED_DIR / f"v{SEED_VERSION}-{collections}x{n}.sqlite"
    if path.exists():
        return path
    if (n, collections) != (BASE_SIZE, 1):
        base = seed_file(BASE_SIZE)
        progress(f"deriving {collections} x {n:,} documents into {path.name} from {base.name}")
        tmp = path.with_suffix(".seeding")
        shutil.copy(base, tmp)
        _derive(tmp, n, collections)
        tmp.rename(path)
        return path
    progress(f"seeding {collections} x {n:,} documents into {path.name} (cached afterwards)")
    tmp = path.with_suffix(".seeding")
    for stale in SEED_DIR.glob(tmp.name + "*"):
        stale.unlink()
    code = (
        "import asyncio, sys\n"
        "from tests.performance.bench_warp import orders\n"
        "from cartridge_dagster.connectors.mongo import mongo_session\n"
        "async def main():\n"
        f"    async with mongo_session('mongoeco://{tmp}') as conn:\n"
        f"        db = conn.database({DB!r})\n"
        f"        for c in range({collections}):\n"
        f"            name = 'orders' if {collections} == 1 else f'c{{c:03d}}'\n"
        f"            for i in range(0, {n}, 10000):\n"
        f"                await db[name].insert_many(orders(min(10000, {n} - i)))\n"
        "asyncio.run(main())\n"
        "import sqlite3\n"
        f"db = sqlite3.connect('{tmp}')\n"
        "db.execute('PRAGMA wal_checkpoint(TRUNCATE)')\n"  # everything in the main file
        "db.close()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env())
    if done.returncode != 0:
        # the engine's close can fail on a busy file after every insert committed (seen once
        # after a 31-minute seeding): keep the file when every document is in it
        with contextlib.closing(sqlite3.connect(tmp)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (count,) = db.execute("SELECT count(*) FROM documents").fetchone()
        if count != n * collections:
            raise RuntimeError(f"seeding {path.name} failed ({count:,} documents written)")
    tmp.rename(path)
    return path


def _derive(file: Path, n: int, collections: int) -> None:
    """Rewrite the base file's documents as ``collections`` x ``n`` (see :func:`seed_file`)."""
    with contextlib.closing(sqlite3.connect(file)) as db:
        rows = db.execute(
            "SELECT storage_key, document FROM documents WHERE db_name = ? AND coll_name = ?"
            " ORDER BY storage_key",
            (DB, "orders"),
        ).fetchall()
        names = ["orders"] if collections == 1 else [f"c{c:03d}" for c in range(collections)]
        if len(rows) != BASE_SIZE or not all(doc.startswith(_OID_PREFIX) for _, doc in rows):
            raise RuntimeError(f"{file.name}: not a base seed of {BASE_SIZE:,} orders")
        at = len(_OID_PREFIX)
        with db:
            db.execute("DELETE FROM documents WHERE db_name = ?", (DB,))
            if collections > 1:
                db.execute("DELETE FROM collections WHERE db_name = ?", (DB,))
                db.executemany(
                    "INSERT INTO collections (collection_id, db_name, coll_name, options_json)"
                    " VALUES (?, ?, ?, '{}')",
                    [(i + 1, DB, name) for i, name in enumerate(names)],
                )
            for name in names:
                for copy in range(-(-n // BASE_SIZE)):
                    take = rows[: min(BASE_SIZE, n - copy * BASE_SIZE)]
                    batch = []
                    for key, doc in take:
                        old = doc[at : at + 24]
                        new = f"{copy:04x}{old[4:]}"
                        batch.append(
                            (DB, name, key.replace(old, new), doc[:at] + new + doc[at + 24 :])
                        )
                    db.executemany(
                        "INSERT INTO documents (db_name, coll_name, storage_key, document)"
                        " VALUES (?, ?, ?, ?)",
                        batch,
                    )
        (count,) = db.execute("SELECT count(*) FROM documents WHERE db_name = ?", (DB,)).fetchone()
        if count != n * collections:
            raise RuntimeError(f"{file.name}: {count:,} documents derived, not {n * collections:,}")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")


@dataclass
class Source:
    """A copy of a seeded file, served over the wire by the replica-set test server."""

    seed: Path
    work: Path
    server: Any = None
    uri: str = ""

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.seed, self.work / "engine.sqlite")

    @property
    def engine_url(self) -> str:
        return f"mongoeco://{self.work / 'engine.sqlite'}"

    def start(self) -> None:
        from tests.support.replset import start

        # the server's trace: one line per command, with the time it arrived (the first
        # snapshot read is timed from it)
        os.environ["CARTRIDGE_REPLSET_TRACE"] = "1"
        try:
            self.server = start(self.work)
        finally:
            del os.environ["CARTRIDGE_REPLSET_TRACE"]
        self.uri = self.server.uri

    @property
    def log(self) -> Path:
        return self.work / "server.log"

    @property
    def pid(self) -> int | None:
        proc = getattr(self.server, "proc", None)
        return proc.pid if proc is not None else None

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


# --------------------------------------------------------------------------- the tools


def server_idle(pid: int | None, quiet: float = 0.2, limit: float = 15.0) -> None:
    """Wait until the server's CPU has not moved for ``quiet`` seconds (at most ``limit``):
    each tool starts on a server done with the last one's reads (cursors closed, garbage
    collected), so no tool's start is timed through another's leftovers."""
    deadline = time.monotonic() + limit
    last = cpu_seconds(pid)
    while pid is not None and time.monotonic() < deadline:
        time.sleep(quiet)
        now = cpu_seconds(pid)
        if now - last < 0.01:
            return
        last = now


def plain_read(uri: str, collections: list[str]) -> tuple[float, float]:
    """Seconds a PyMongo client takes to read every document as raw BSON: inside its process
    (after its imports and a ping), and from its launch to its last document (what the
    process as a whole takes, as warp's run is timed)."""
    code = (
        "import sys, time, pymongo\n"
        "from bson.raw_bson import RawBSONDocument\n"
        f"c = pymongo.MongoClient({uri!r}, document_class=RawBSONDocument)\n"
        "c.admin.command('ping')\n"
        "t = time.perf_counter()\n"
        f"n = sum(1 for name in {collections!r} for _ in c[{DB!r}][name].find())\n"
        "print(time.perf_counter() - t, time.time(), n)\n"
    )
    launched = time.time()
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    inside, ended, _ = out.stdout.split()
    return float(inside), float(ended) - launched


def sling_binary() -> Path:
    try:
        import sling_linux_amd64  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(
            "the bench needs Sling: install the bench extra (pip install 'cartridge-dagster[bench]')"
        ) from None
    binary = Path(sling_linux_amd64.__file__).parent / "bin" / "sling-linux-amd64"
    if not binary.exists():
        raise SystemExit(f"no Sling binary at {binary}")
    return binary


def sling(uri: str, pg_url: str, collections: list[str], home: Path) -> float:
    """Seconds from launching Sling's full refresh of ``collections`` to its exit."""
    direct = uri.replace("?replicaSet=rs0", "?directConnection=true")
    env = {
        **child_env(),
        "MONGO": direct,
        "PG": pg_url + ("&" if "?" in pg_url else "?") + "sslmode=disable",
        "SLING_HOME_DIR": str(home),
    }
    started = time.perf_counter()
    for name in collections:
        proc = subprocess.run(
            [
                str(sling_binary()),
                "run",
                "--src-conn",
                "MONGO",
                "--src-stream",
                f"{DB}.{name}",
                "--tgt-conn",
                "PG",
                "--tgt-object",
                f"public.sling_{name}",
                "--mode",
                "full-refresh",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sling failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
    return time.perf_counter() - started


@dataclass
class WarpRun:
    done: float  # launch → the checkpoint says the snapshot is done
    first_read: float  # launch → warp.snapshot.start in its log
    peak_rss_mb: float
    rows: int = 0
    log: list[str] = field(default_factory=list)
    first_read_cpu: float = float("nan")  # warp's CPU seconds when its log said so (±20 ms)
    first_read_catalog: float = float("nan")  # the server's catalog answers before the read
    cpu: float = float("nan")  # warp's CPU seconds, launch → snapshot done
    server_cpu: float = float("nan")  # the wire server's, over the same span
    pg_cpu: float = float("nan")  # warp's PostgreSQL backends', over the same span
    most_at_once: int = 0  # the most collections being copied at the same time (its log)
    progress_lines: int = 0  # its log's progress lines with rows/s and an ETA


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float:
    """CPU seconds (user + system) process ``pid`` has used, from ``/proc``; NaN without it."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _HZ


def backend_cpu(database: str) -> dict[int, float]:
    """CPU seconds of each PostgreSQL backend connected to ``database`` (``/proc``)."""
    out: dict[int, float] = {}
    needle = f" {database} ".encode()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes()
        except OSError:
            continue
        if text.startswith(b"postgres: ") and needle in text:
            pid = int(cmdline.parent.name)
            value = cpu_seconds(pid)
            if value == value:
                out[pid] = value
    return out


async def _snapshot_state(conn: asyncpg.Connection) -> tuple[bool, int]:
    try:
        row = await conn.fetchrow(
            "SELECT snapshot FROM cartridge_warp.checkpoints WHERE schema_name = 'bench'"
        )
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return False, 0
    if row is None or not row["snapshot"]:
        return False, 0
    plan = json.loads(row["snapshot"])
    copied = sum(int(v.get("copied", 0)) for v in plan.values())
    return bool(plan) and all(v.get("done") for v in plan.values()), copied


async def _wait_done(
    proc: subprocess.Popen[bytes],
    conn: asyncpg.Connection,
    log_path: Path,
    run: WarpRun,
    database: str,
    backends: dict[int, float],
    first_read: _FirstRead,
) -> tuple[float, int]:
    """Poll the checkpoint every 20 ms over one connection, opened before the launch (a new
    connection per poll cost the machine a backend start 50 times a second, beside warp).
    Each poll also notes warp's CPU when its log first shows the first read, and every 25th
    (~0.5 s: scanning ``/proc`` costs the machine) the CPU of its PostgreSQL backends (a
    backend's last reading stands when it has gone; the last one is read at "done")."""
    polls = 0
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"warp exited early: {log_path.read_text()[-3000:]}")
        ok, copied = await _snapshot_state(conn)
        if ok:
            return time.perf_counter(), copied
        if run.first_read_cpu != run.first_read_cpu and first_read.at() is not None:
            run.first_read_cpu = cpu_seconds(proc.pid)
        polls += 1
        if polls % 25 == 0:
            backends.update(backend_cpu(database))
        await asyncio.sleep(0.02)


def warp(
    source_url: str,
    pg_url: str,
    work: Path,
    n_expected: int,
    env: dict[str, str] | None = None,
    server_pid: int | None = None,
    server_log: Path | None = None,
) -> WarpRun:
    """``cartridge warp run`` from launch until its checkpoint says the snapshot is done
    (``env``: added to its environment; ``server_pid``: the wire server, for its CPU;
    ``server_log``: its trace, where the first snapshot read is timed as the server got it —
    else from warp's log, ``warp.snapshot.start``)."""
    work.mkdir(parents=True, exist_ok=True)
    config = work / "cartridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": source_url},
                "destination": {"connection_string": pg_url},
                "state_dir": str(work / "state"),
                "mode": "single",
                "schemas": [
                    {
                        "name": "bench",
                        "source_database": DB,
                        "target_schema": "raw_bench",
                        "warp": {"metrics_port": 0},
                    }
                ],
            }
        )
    )
    log_path = work / "warp.log"
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(pg_url))
    database = pg_url.rpartition("/")[2]
    run = WarpRun(float("nan"), float("nan"), float("nan"))
    backends = backend_cpu(database)  # the poller's own backend: subtracted below
    poller = dict(backends)
    trace_from = server_log.stat().st_size if server_log is not None else 0
    first_read = _FirstRead(log_path, server_log, trace_from)
    with open(log_path, "w") as log:
        server_before = cpu_seconds(server_pid)
        launched_wall = time.time()
        launched = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "cartridge_dagster", "warp", "run", "--config", str(config)],
            cwd=REPO,
            env={**child_env(), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            finished, copied = loop.run_until_complete(
                _wait_done(proc, conn, log_path, run, database, backends, first_read)
            )
            done_at = finished - launched
            run.cpu = cpu_seconds(proc.pid)
            run.server_cpu = cpu_seconds(server_pid) - server_before
            backends.update(backend_cpu(database))
            run.pg_cpu = sum(v - poller.get(pid, 0.0) for pid, v in backends.items())
        finally:
            loop.run_until_complete(conn.close())
            loop.close()
            proc.send_signal(signal.SIGTERM)
            _, _, usage = os.wait4(proc.pid, 0)
            proc.returncode = 0
    text = log_path.read_text()
    first = first_read.at()
    if copied != n_expected:
        raise RuntimeError(f"warp copied {copied} of {n_expected} documents")
    run.done = done_at
    run.first_read = (first - launched_wall) if first is not None else float("nan")
    run.first_read_catalog = first_read.catalog_seconds()
    run.peak_rss_mb = usage.ru_maxrss / 1024
    run.rows = copied
    run.most_at_once, run.progress_lines = _copies(text)
    return run


#: A snapshot read in the server's trace: ``cmd <arrival time> <seconds> find db=bench …``.
_TRACED_FIND = re.compile(rf"^cmd (\d+\.\d+) \S+ find db={DB} ", re.MULTILINE)
#: The catalog's commands in the trace: arrival time and seconds taken.
_TRACED_CATALOG = re.compile(
    r"^cmd (\d+\.\d+) (\d+\.\d+)s (?:listCollections|listDatabases) ", re.MULTILINE
)


@dataclass
class _FirstRead:
    """When warp's first snapshot read happened: as the server got it (its trace, from offset
    ``since``), or as warp's log says it asked (in process: no server)."""

    log_path: Path
    server_log: Path | None
    since: int

    def at(self) -> float | None:
        if self.server_log is None:
            return _log_time(self.log_path.read_text(), "warp.snapshot.start")
        with open(self.server_log, "rb") as f:
            f.seek(self.since)
            found = _TRACED_FIND.search(f.read().decode(errors="replace"))
        return float(found.group(1)) if found else None

    def catalog_seconds(self) -> float:
        """The server's own time answering ``listCollections`` and ``listDatabases`` that
        started before the first snapshot read (the test server's grow with its data: the
        engine finds collection names in its documents table; MongoDB's come from a catalog)."""
        if self.server_log is None:
            return float("nan")
        with open(self.server_log, "rb") as f:
            f.seek(self.since)
            text = f.read().decode(errors="replace")
        first = self.at()
        total = 0.0
        for m in _TRACED_CATALOG.finditer(text):
            if first is None or float(m.group(1)) < first:
                total += float(m.group(2))
        return total


def _copies(text: str) -> tuple[int, int]:
    """From warp's log: the most collections copied at once (between each one's
    ``warp.snapshot.start`` and ``warp.snapshot.done``), and the progress lines that give
    rows/s and an ETA (``warp.snapshot.progress``, every few seconds per collection)."""
    copying: set[str] = set()
    most = lines = 0
    for line in text.splitlines():
        table = next((w[6:] for w in line.split() if w.startswith("table=")), None)
        if table is None:
            continue
        if "warp.snapshot.start" in line:
            copying.add(table)
            most = max(most, len(copying))
        elif "warp.snapshot.done" in line:
            copying.discard(table)
        elif "warp.snapshot.progress" in line and "rows_per_s=" in line and "eta_s=" in line:
            lines += 1
    return most, lines


def _log_time(text: str, event: str) -> float | None:
    import datetime as dt

    for line in text.splitlines():
        if event in line:
            stamp = line.split(" ", 1)[0]
            try:
                return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


# --------------------------------------------------------------------------- the run


async def fresh_db(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return f"{server.rpartition('/')[0]}/{name}"


async def drop_db(server: str, url: str) -> None:
    conn = await asyncpg.connect(server)
    await conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
    await conn.close()


def measure(pg_server: str, n: int, collections: int, rounds: int, tmp: Path) -> dict[str, Any]:
    names = ["orders"] if collections == 1 else [f"c{c:03d}" for c in range(collections)]
    total = n * collections
    src = Source(seed_file(n, collections), tmp / f"src-{collections}x{n}")
    src.start()
    results: dict[str, list[float]] = {
        "ceiling": [],
        "ceiling_process": [],
        "sling": [],
        "warp": [],
        "warp_first": [],
        "warp_first_cpu": [],
        "warp_first_catalog": [],
        "warp_rss": [],
        "warp_at_once": [],
        "warp_progress_lines": [],
        "embedded": [],
        "embedded_cpu": [],
        "embedded_nogc_cpu": [],
        "warp_nogc_cpu": [],
        "ceiling_server_cpu": [],
        "warp_server_cpu": [],
        "warp_cpu": [],
        "warp_pg_cpu": [],
    }
    try:
        for r in range(rounds):
            order = ["ceiling", "sling", "warp", "embedded"]
            if collections == 1 and n <= 100_000:
                # what the GC setting of warp's entry points buys, in process and over the wire
                order += ["embedded_nogc", "warp_nogc"]
            if r % 2:
                order.reverse()
            for tool in order:
                server_idle(src.pid)
                url = asyncio.run(fresh_db(pg_server))
                try:
                    work = tmp / f"{tool}-{collections}x{n}-{r}"
                    if tool == "ceiling":
                        before = cpu_seconds(src.pid)
                        inside, whole = plain_read(src.uri, names)
                        results["ceiling"].append(total / inside)
                        results["ceiling_process"].append(total / whole)
                        results["ceiling_server_cpu"].append(cpu_seconds(src.pid) - before)
                    elif tool == "sling":
                        results["sling"].append(total / sling(src.uri, url, names, work / "home"))
                    elif tool == "warp":
                        run = warp(
                            src.uri, url, work, total, server_pid=src.pid, server_log=src.log
                        )
                        results["warp"].append(total / run.done)
                        results["warp_first"].append(run.first_read)
                        results["warp_first_cpu"].append(run.first_read_cpu)
                        results["warp_first_catalog"].append(run.first_read_catalog)
                        results["warp_rss"].append(run.peak_rss_mb)
                        results["warp_at_once"].append(run.most_at_once)
                        results["warp_progress_lines"].append(run.progress_lines)
                        results["warp_cpu"].append(run.cpu)
                        results["warp_server_cpu"].append(run.server_cpu)
                        results["warp_pg_cpu"].append(run.pg_cpu)
                    elif tool == "warp_nogc":
                        nogc = {"CARTRIDGE_GC_TUNING": "0"}
                        run = warp(
                            src.uri, url, work, total, nogc, server_pid=src.pid, server_log=src.log
                        )
                        results["warp_nogc_cpu"].append(run.cpu)
                    elif tool == "embedded_nogc":
                        run = warp(src.engine_url, url, work, total, {"CARTRIDGE_GC_TUNING": "0"})
                        results["embedded_nogc_cpu"].append(run.cpu)
                    elif collections == 1 or n * collections <= 200_000:
                        run = warp(src.engine_url, url, work, total)
                        results["embedded"].append(total / run.done)
                        results["embedded_cpu"].append(run.cpu)
                finally:
                    asyncio.run(drop_db(pg_server, url))
            progress(
                f"{collections}x{n:,} round {r + 1}: "
                + ", ".join(f"{k} {v[-1]:,.2f}" for k, v in results.items() if v)
            )
    finally:
        src.stop()
    return {
        "docs": total,
        **{k: (statistics.median(v) if v else float("nan")) for k, v in results.items()},
        "warp_seconds": total / statistics.median(results["warp"]),
        "warp_rss_max": max(results["warp_rss"]),
    }


CONFIG_ROUNDS = 20


def config_load_cpu(config: Path, plugins: bool) -> float:
    """CPU seconds a fresh process spends up to having loaded ``config`` (the interpreter's
    start included), with pydantic's plugin scan (``plugins``) or without it, as warp's entry
    point sets it."""
    code = (
        "import time\n"
        "from cartridge_dagster.config import load_settings\n"
        f"load_settings({str(config)!r})\n"
        "print(time.process_time())\n"
    )
    env = {**child_env(), "PYDANTIC_DISABLE_PLUGINS": "" if plugins else "__all__"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1])


def plugin_switch(tmp: Path) -> dict[str, float]:
    """The configuration's load with and without the plugin scan, interleaved pairs (the order
    alternating): the minima (other jobs on the machine only ever add CPU time: the minima
    of twenty moved by 1–3 ms between runs here, the medians by up to 20) and the medians."""
    config = tmp / "plugins" / "cartridge.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": "mongodb://127.0.0.1:1/?replicaSet=rs0"},
                "destination": {"connection_string": "postgresql://u@127.0.0.1:1/db"},
                "mode": "single",
                "schemas": [{"name": "bench", "source_database": DB, "warp": {"metrics_port": 0}}],
            }
        )
    )
    scanned, skipped = [], []
    for r in range(CONFIG_ROUNDS):
        for plugins in (True, False) if r % 2 == 0 else (False, True):
            (scanned if plugins else skipped).append(config_load_cpu(config, plugins))
    return {
        "scanned": min(scanned),
        "skipped": min(skipped),
        "scanned_median": statistics.median(scanned),
        "skipped_median": statistics.median(skipped),
    }


def main() -> None:
    pg_server = os.environ.get("CARTRIDGE_TEST_POSTGRES_DSN")
    if not pg_server:
        raise SystemExit("set CARTRIDGE_TEST_POSTGRES_DSN (make bench starts a PostgreSQL)")
    sling_binary()
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        plugins = plugin_switch(tmp)
        rows: dict[int, dict[str, Any]] = {}
        for n in SIZES:
            rows[n] = measure(pg_server, n, 1, 1 if n >= 1_000_000 else ROUNDS, tmp)
        many = measure(pg_server, MANY_SIZE, MANY, 1, tmp) if MANY else None
    finally:
        if os.environ.get("BENCH_E2E_KEEP") == "1":
            progress(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(rows, many, plugins)


def report(
    rows: dict[int, dict[str, Any]], many: dict[str, Any] | None, plugins: dict[str, float]
) -> None:
    sizes = sorted(rows)

    def line(label: str, key: Any, fmt: str, target: str = "") -> None:
        cells = []
        for n in sizes:
            value = key(rows[n]) if callable(key) else rows[n][key]
            cells.append(format(value, fmt))
        print(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    print()
    print("warp's whole run, launch → snapshot done, over the wire (the replica-set test server)")
    print("| measure | " + " | ".join(f"{n:,}" for n in sizes) + " | target |")
    print("|---|" + "---|" * len(sizes) + "---|")
    line(
        "plain read ceiling, as a whole process: launch → last document (docs/s)",
        "ceiling_process",
        ",.0f",
    )
    line("… timed inside its process, after its imports (docs/s)", "ceiling", ",.0f")
    line("Sling full refresh, whole run (docs/s)", "sling", ",.0f")
    line("warp, launch → snapshot done (docs/s)", "warp", ",.0f")
    line("warp ÷ Sling", lambda r: r["warp"] / r["sling"], ".2f", "≥ 1.0 at 10k, ≥ 1.2 at 50k")
    line(
        "warp ÷ plain read ceiling (both timed from launch)",
        lambda r: r["warp"] / r["ceiling_process"],
        ".2f",
        "≥ 0.8",
    )
    line(
        "warp ÷ the ceiling timed inside its process (warp's start-up counted, the read's not)",
        lambda r: r["warp"] / r["ceiling"],
        ".2f",
    )
    line("warp in process (mongoeco://), docs/s", "embedded", ",.0f")
    line(
        "the GC setting, in process: warp's CPU without ÷ with (CARTRIDGE_GC_TUNING=0)",
        lambda r: r["embedded_nogc_cpu"] / r["embedded_cpu"],
        ".2f",
        "> 1 to keep it",
    )
    line(
        "… over the wire: warp's CPU without ÷ with",
        lambda r: r["warp_nogc_cpu"] / r["warp_cpu"],
        ".2f",
    )
    line("launch → first snapshot read, as the server got it (s)", "warp_first", ".3f", "≤ 0.3")
    line("… warp's CPU seconds by then", "warp_first_cpu", ".3f")
    line(
        "… of it, the server answering listCollections / listDatabases (its own time, s)",
        "warp_first_catalog",
        ".3f",
    )
    line("warp peak resident memory (MB)", "warp_rss_max", ".0f")
    line("CPU s, plain read: the server", "ceiling_server_cpu", ".2f")
    line(
        "CPU s, warp's run: server / warp / PostgreSQL",
        lambda r: f"{r['warp_server_cpu']:.2f} / {r['warp_cpu']:.2f} / {r['warp_pg_cpu']:.2f}",
        "s",
    )
    line(
        "server ÷ (server + warp + PostgreSQL): the ceiling share with one core free",
        lambda r: r["warp_server_cpu"] / (r["warp_server_cpu"] + r["warp_cpu"] + r["warp_pg_cpu"]),
        ".2f",
    )
    print()
    print("| setting | measured | target |")
    print("|---|---|---|")
    saved = (plugins["scanned"] - plugins["skipped"]) * 1000
    print(
        "| pydantic's plugin switch: configuration load in a fresh process, CPU ms with the "
        f"scan / without, minima of {CONFIG_ROUNDS} pairs (medians) | "
        f"{plugins['scanned'] * 1000:.0f} / {plugins['skipped'] * 1000:.0f}, saves {saved:.0f} "
        f"({plugins['scanned_median'] * 1000:.0f} / {plugins['skipped_median'] * 1000:.0f}) "
        "| > 0 to keep it |"
    )
    if 100_000 in rows and 1_000_000 in rows:
        small, big = rows[100_000], rows[1_000_000]
        print()
        print("| scale | measured | target |")
        print("|---|---|---|")
        print(f"| 1M time ÷ 100k time | {big['warp_seconds'] / small['warp_seconds']:.2f} | ≤ 11 |")

        def work(r: dict[str, Any]) -> float:
            return float(r["warp_server_cpu"] + r["warp_cpu"] + r["warp_pg_cpu"])

        print(
            "| … in CPU seconds (server + warp + PostgreSQL: what a shared machine's load "
            f"leaves out) | {work(big) / work(small):.2f} | ≤ 11 |"
        )
        print(
            f"| peak memory 1M ÷ 100k | {big['warp_rss_max'] / small['warp_rss_max']:.2f} | ≤ 1.2 |"
        )
        if many is not None:
            print(
                f"| {MANY} collections of {MANY_SIZE:,}: warp docs/s (÷ one collection of 1M) | "
                f"{many['warp']:,.0f} ({many['warp'] / big['warp']:.2f}) | |"
            )
            print(f"| … Sling docs/s | {many['sling']:,.0f} | |")
            print(
                f"| … the most collections warp copied at once (its log) | "
                f"{many['warp_at_once']:.0f} | > 1 (warp.snapshot_parallel_collections: 4) |"
            )
        print(
            f"| 1M: warp's progress lines with rows/s and ETA (every 5 s) | "
            f"{big['warp_progress_lines']:.0f} | > 0 |"
        )


if __name__ == "__main__":
    main()
