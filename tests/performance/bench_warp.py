"""Warp throughput against baselines measured in the same run, on the same documents.

Run: ``python -m tests.performance.bench_warp`` (``make bench`` runs it against a throwaway
PostgreSQL; set ``CARTRIDGE_TEST_POSTGRES_DSN`` to use another server). Options through the
environment: ``BENCH_DOCS`` (default 50000 order documents, the size the issue's reference
numbers were measured on), ``BENCH_ROUNDS`` (default 3: every measure, baselines and warp alike,
runs once per round, rounds interleaved, best kept), ``BENCH_E2E_ROUNDS`` (default 8, the
plain-process vs Dagster rounds: one of each per round, the order alternating; the median of
the per-round ratios is the measure, as the machine's speed drifts between rounds), ``BENCH_E2E_DOCS`` (default 10000 documents
seeded into the embedded engine for the plain-process vs Dagster rows; each of those runs is a
process of its own, ``tests.performance.warp_child``, with warp in its main thread as in
``cartridge warp run`` and in Dagster's run worker; each round also runs the Dagster run
without the GC setting of warp's entry points, ``CARTRIDGE_GC_TUNING=0``, for what it buys
there: the CPU without ÷ with, median of the rounds), ``BENCH_DLT_DOCS``
(default 30000, dlt and the landing + staging comparison; a fifth of it is the small size).

Baselines: ``B_decode`` (BSON decode of all the documents into a list, as the issue measured it;
a batch-at-a-time decode, which the garbage collector slows less, is printed beside it), ``B_copy`` (asyncpg ``copy_records_to_table`` of the final rows),
``B_copy`` of warp's binary COPY rows (the pages warp's snapshot writes, built beforehand by
the same C code: PostgreSQL's side alone), ``B_naive`` (the same decode and JSON conversion of
the same input, then an ``executemany`` upsert).

Warp's snapshot rows run what a snapshot runs: the real ``SchemaSource.snapshot`` over a
server's replies to its scan, encoded beforehand (``WireServer``: raw cursor replies, each
batch cut into the documents' BSON in C, then written in C straight into PostgreSQL binary
COPY rows), or over the embedded engine's stored documents (``StoredPages``: its JSON texts,
decoded, BSON-encoded and written by the same C code), the batches applied by the real sink
(the rows COPYed straight into the raw table, checkpoint in the same transaction); a
re-snapshot (``sweep``) takes the per-document path (a ``Change`` per document, staged COPY
and set-based merge, the sweep's wipe). The change-event rows run ``Transformer.event`` (a
``Change`` per event) and the sink's staged COPY, set-based merge, dead-letter isolation and
checkpoint. Reader and writer are pipelined through a bounded queue like the runner's. The
dlt rows compare warp's landing (and landing plus the generated staging models
built by ``dbt run`` as tables) with dlt's default normalizer loading the same documents into the
same PostgreSQL. Both tools run in this process, imported and set up before their clock starts
(dlt's pipeline built, dbt's project parsed); the same ``dbt run`` through the dbt CLI (its own
process, ~4 s of imports) is printed beside it, and steady-state rates from two sizes (their
difference).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import bson
from bson import Int64, ObjectId, Timestamp
from bson.raw_bson import RawBSONDocument

from cartridge_dagster.config import SchemaConfig, settings_from_mapping
from cartridge_dagster.connectors.mongo import open_event
from cartridge_dagster.demo.seed import DemoGenerator, DemoSizes
from cartridge_dagster.documents import (
    FAST_BSON,
    RAW_OPTIONS,
    canonical_id,
    document_json,
    raw_copy_rows,
)
from cartridge_dagster.identifiers import qualified, quote_ident
from cartridge_dagster.landing import RAW_COLUMNS, raw_table_ddl, raw_table_name
from cartridge_dagster.observability import configure_logging
from cartridge_dagster.warp.changes import Change, Transformer, cluster_base, make_version
from cartridge_dagster.warp.readahead import initial_state
from cartridge_dagster.warp.sink import (
    COPY_COLUMNS,
    COPY_HEADER,
    COPY_TRAILER,
    Batch,
    Sink,
    copy_tail,
    setup_jsonb_codec,
)
from cartridge_dagster.warp.source import FIRST_PAGE, YIELD_EVERY, SchemaSource

N = int(os.environ.get("BENCH_DOCS", "50000"))
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "3")))
#: plain vs Dagster runs: the embedded engine's read rate moves ~30 % between runs
E2E_ROUNDS = max(1, int(os.environ.get("BENCH_E2E_ROUNDS", "8")))
N_E2E = int(os.environ.get("BENCH_E2E_DOCS", "10000"))
N_DLT = int(os.environ.get("BENCH_DLT_DOCS", "30000"))
# memory rows: a backlog of N_MEM, then of 10 x N_MEM. N_MEM is ten batches of 500, enough to
# fill the runner's pipeline (the reader's batch, 4 queued, the writer's): its steady state
N_MEM = 5000
BATCH = 5000


def server_url() -> str:
    dsn = os.environ.get("CARTRIDGE_TEST_POSTGRES_DSN")
    if dsn:
        return dsn
    from cartridge_dagster.services.postgres import LocalPostgres

    status = LocalPostgres(Path(".cartridge/bench"), preferred_port=None, durable=False).up()
    assert status.url
    return status.url


async def fresh_db(server: str) -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(server)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return server.rpartition("/")[0] + "/" + name


async def drop_db(server: str, url: str) -> None:
    conn = await asyncpg.connect(server)
    await conn.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')
    await conn.close()


def orders(n: int) -> list[dict[str, Any]]:
    gen = DemoGenerator(DemoSizes(customers=0, products=0, orders=0, events=0), seed=42)
    gen.customer_ids = [ObjectId() for _ in range(500)]
    gen.product_ids = [ObjectId() for _ in range(200)]
    return [gen.order(ObjectId()) for _ in range(n)]


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


async def atimed(coro: Any) -> tuple[float, Any]:
    gc.collect()
    t = time.perf_counter()
    out = await coro
    return time.perf_counter() - t, out


def schema_cfg(**kwargs: Any) -> SchemaConfig:
    return SchemaConfig(name="bench", source_database="bench", target_schema="raw_bench", **kwargs)


async def baseline_copy(url: str, rows: list[tuple[Any, ...]]) -> float:
    conn = await asyncpg.connect(url)
    await setup_jsonb_codec(conn)
    for stmt in raw_table_ddl("raw_bench", "copy_target"):
        await conn.execute(stmt)
    cols = list(RAW_COLUMNS)
    gc.collect()
    t = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        await conn.copy_records_to_table(
            "copy_target", schema_name="raw_bench", records=rows[i : i + BATCH], columns=cols
        )
    took = time.perf_counter() - t
    await conn.close()
    return took


def baseline_decode(raws: list[bytes], *, per_batch: bool = False) -> float:
    """Decode every document into one list (how the issue measured B_decode), or one batch at a
    time, each held until the next replaces it (``per_batch``). The second is faster: the
    cyclic garbage collector's passes grow with the decoded documents kept alive."""
    gc.collect()
    t = time.perf_counter()
    kept: list[Any] = []
    if per_batch:
        for i in range(0, len(raws), BATCH):
            kept = [bson.decode(r) for r in raws[i : i + BATCH]]
    else:
        kept = [bson.decode(r) for r in raws]
    took = time.perf_counter() - t
    del kept
    return took


async def baseline_naive(url: str, events: list[bytes]) -> float:
    """The same decode and JSON conversion of the same change events, then ``executemany``."""
    conn = await asyncpg.connect(url)
    for stmt in raw_table_ddl("raw_bench", "naive_target"):
        await conn.execute(stmt)
    now = dt.datetime.now(dt.UTC)
    gc.collect()
    t = time.perf_counter()
    for i in range(0, len(events), BATCH):
        rows = []
        for j, raw in enumerate(events[i : i + BATCH]):
            event = bson.decode(raw)
            doc = event["fullDocument"]
            rows.append((canonical_id(doc["_id"]), document_json(doc).decode(), i + j, now))
        await conn.executemany(
            "INSERT INTO raw_bench.naive_target AS t (_id, document, _cartridge_version, "
            "_cartridge_op, _cartridge_source_ts) VALUES ($1, $2::jsonb, $3, 'insert', $4) "
            "ON CONFLICT (_id) DO UPDATE SET document = EXCLUDED.document, "
            "_cartridge_version = EXCLUDED._cartridge_version "
            "WHERE t._cartridge_version <= EXCLUDED._cartridge_version",
            rows,
        )
    took = time.perf_counter() - t
    await conn.close()
    return took


class NoCheckpointSink(Sink):
    async def _write_checkpoint(self, conn: Any, batch: Any, result: Any, top: Any) -> None:
        return None


async def warp_events(
    url: str,
    raws: list[bytes],
    *,
    sink_cls: type[Sink] = Sink,
    share: list[float] | None = None,
    raw_documents: bool = True,
    serial: bool = False,
) -> float:
    """Change events: read → ``Transformer.event`` (a ``Change`` per event) → staged COPY +
    merge + checkpoint, pipelined like the runner's reader and writer (a bounded queue between
    them), a batch of :data:`BATCH` events per transaction. ``share`` collects [checkpoint s,
    transaction s]. ``serial``: read everything first, then write (no reader time slices
    inside the writer's awaits: what the transactions themselves take).

    ``raw_documents``: what warp gets from PyMongo's change stream on a server
    (``RawBSONDocument``: the bytes off the wire; the envelope decoded by ``open_event``, its
    ``fullDocument`` converted to JSON in C); otherwise every event is decoded into dicts first
    (what the embedded engine hands over), then converted in Python."""
    cfg = schema_cfg()
    sink = sink_cls(url, cfg, owner="bench")
    await sink.setup()
    await sink.acquire()
    transformer = Transformer(cfg)
    now = dt.datetime.now(dt.UTC)
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=cfg.batching.queue_max_batches)

    async def produce() -> None:  # the reader's work: decode and transform
        for i in range(0, len(raws), BATCH):
            batch = Batch(kind="stream")
            for j, raw in enumerate(raws[i : i + BATCH]):
                if j % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)  # as the runner's source does
                doc = (
                    open_event(RawBSONDocument(raw, RAW_OPTIONS))
                    if raw_documents
                    else bson.decode(raw)
                )
                v = make_version(cluster_base(doc["clusterTime"]), 1)
                out = transformer.event(doc, v, now)
                batch.token = doc["_id"]
                batch.version = v
                if isinstance(out, Change):
                    batch.changes.append(out)
            await queue.put(batch)
        await queue.put(None)

    async def consume() -> None:  # the writer's work: one transaction per batch
        while (batch := await queue.get()) is not None:
            result = await sink.apply(batch)
            if share is not None:
                share[0] += result.checkpoint_seconds
                share[1] += result.seconds

    gc.collect()
    t = time.perf_counter()
    if serial:
        queue = asyncio.Queue()  # unbounded: the whole input is read before the first write
        await produce()
        await consume()
    else:
        await asyncio.gather(produce(), consume())
    took = time.perf_counter() - t
    await sink.close()
    return took


def page_size(cfg: SchemaConfig) -> int:
    """The documents of a snapshot page, as :meth:`SchemaSource.snapshot` asks for them."""
    return min(cfg.batching.snapshot_chunk_size, cfg.batching.max_batch_size)


def page_cuts(n: int, cfg: SchemaConfig) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each page of a server's scan of ``n`` documents: a first page of
    :data:`FIRST_PAGE`, then full pages."""
    size = page_size(cfg)
    cuts = [0, min(size, FIRST_PAGE, n)]
    while cuts[-1] < n:
        cuts.append(min(cuts[-1] + size, n))
    return list(itertools.pairwise(cuts))


class WireServer:
    """A MongoDB server's answers to warp's snapshot scan of one collection, encoded before
    any clock starts: the ``find`` (``$natural`` order, a first page of
    :data:`~cartridge_dagster.warp.source.FIRST_PAGE`) and ``getMore`` replies, each a raw
    cursor reply whose batch holds the documents' BSON, as PyMongo hands them to warp
    (``RawBSONDocument``). Answering costs nothing, so a run times warp's side of the wire
    only: :class:`SchemaSource`'s own scan loop (read-ahead included), cutting each reply into
    documents, the C COPY rows, and the sink."""

    kind = "pymongo"

    def __init__(self, raws: list[bytes], collection: str, cfg: SchemaConfig) -> None:
        size = page_size(cfg)
        self.pages: list[tuple[int, bytes]] = []  # (the batchSize asked for, the reply)
        for n, (lo, hi) in enumerate(page_cuts(len(raws), cfg)):
            last = hi >= len(raws)
            cursor = {
                "firstBatch" if n == 0 else "nextBatch": [RawBSONDocument(r) for r in raws[lo:hi]],
                "id": Int64(0 if last else 7_000_000_000 + n),
                "ns": f"bench.{collection}",
                "postBatchResumeToken": {"$recordId": Int64(hi)},
            }
            asked = min(size, FIRST_PAGE) if n == 0 else size
            self.pages.append((asked, bson.encode({"cursor": cursor, "ok": 1.0})))
        self.served = 0
        self.codec_options: bson.CodecOptions[Any] = bson.CodecOptions()
        self.client = self

    # the parts of PyMongo's client and database the snapshot scan uses
    def change_log(self) -> None:
        return None

    def database(self, name: str) -> WireServer:
        return self

    def with_options(self, **kwargs: Any) -> WireServer:
        return self

    @contextlib.asynccontextmanager
    async def start_session(self) -> AsyncIterator[None]:
        yield None

    async def command(self, command: Any, **kwargs: Any) -> Any:
        if "killCursors" in command:
            return {"ok": 1.0}
        asked, reply = self.pages[self.served]
        assert int(command["batchSize"]) == asked, (command, asked)
        assert ("find" in command) == (self.served == 0), command
        self.served += 1
        return RawBSONDocument(reply)


class StoredPages:
    """The embedded engine's stored documents of one collection (its JSON texts, as
    ``cartridge_dagster.connectors.mongoeco_store.StoreScan`` reads them from SQLite), encoded
    before any clock starts by the engine's own codec; pages of them in key order."""

    kind = "mongoeco"

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    def change_log(self) -> object:
        return self  # the engine's change log: the snapshot reads its stored documents

    def page(self, db: str, coll: str, after: str | None, limit: int) -> list[tuple[str, str]]:
        start = 0 if after is None else int(after) + 1
        return [
            (f"{i:09d}", self.texts[i]) for i in range(start, min(start + limit, len(self.texts)))
        ]


SNAPSHOT_VERSION = make_version(cluster_base(Timestamp(1_700_000_000, 1)), 0)


async def warp_snapshot(
    url: str,
    conn: WireServer | StoredPages,
    *,
    collection: str = "orders",
    sweep: bool = False,
    expect: int,
) -> float:
    """One collection's snapshot as the runner copies it: the real
    :meth:`SchemaSource.snapshot` over ``conn`` (pages of raw BSON from a server, or the
    embedded engine's stored documents), its batches applied by the real :class:`Sink` through
    a bounded queue (reader and writer pipelined like the runner's). An initial snapshot's
    pages are C COPY rows, COPYed straight into the raw table; ``sweep`` (a re-snapshot) takes
    the per-document path: a ``Change`` per document, the staged merge, the sweep's wipe at
    the end. The snapshot plan is committed first, before the clock, as the runner does; the
    table's row count and the checkpoint's ``done`` are checked after it."""
    cfg = schema_cfg()
    sink = Sink(url, cfg, owner="bench")
    await sink.setup()
    await sink.acquire()
    state = {**initial_state(str(SNAPSHOT_VERSION), sweep=sweep)}
    await sink.apply(Batch(kind="reset", snapshot={collection: state}, version=SNAPSHOT_VERSION))
    source = SchemaSource(conn, cfg, Transformer(cfg))  # type: ignore[arg-type]
    if isinstance(conn, StoredPages):
        source._store = conn
    else:
        conn.served = 0
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=cfg.batching.queue_max_batches)

    async def produce() -> None:
        async for batch in source.snapshot(collection, state):
            await queue.put(batch)
        await queue.put(None)

    async def consume() -> None:
        while (batch := await queue.get()) is not None:
            await sink.apply(batch)

    gc.collect()
    t = time.perf_counter()
    await asyncio.gather(produce(), consume())
    took = time.perf_counter() - t
    cp = await sink.checkpoint()
    assert cp is not None and cp.snapshot[collection]["done"], cp
    pg = await sink.connect()
    table = qualified("raw_bench", raw_table_name(collection))
    landed = await pg.fetchval(f"SELECT count(*) FROM {table} WHERE NOT _cartridge_deleted")
    assert landed == expect, (landed, expect)
    await sink.close()
    return took


async def snapshot_reader(conn: WireServer, *, expect: int) -> float:
    """The snapshot's reader alone: :meth:`SchemaSource.snapshot` over ``conn``'s pages, each
    batch dropped as it comes (no sink): cutting the replies and the C COPY rows."""
    cfg = schema_cfg()
    conn.served = 0
    source = SchemaSource(conn, cfg, Transformer(cfg))  # type: ignore[arg-type]
    state = initial_state(str(SNAPSHOT_VERSION))
    rows = 0
    gc.collect()
    t = time.perf_counter()
    async for batch in source.snapshot("orders", state):
        rows += (batch.copy.rows if batch.copy is not None else 0) + len(batch.changes)
    took = time.perf_counter() - t
    assert rows == expect, (rows, expect)
    return took


async def baseline_copy_binary(url: str, pages: list[bytes]) -> float:
    """PostgreSQL's side alone: the binary COPY of the rows warp's snapshot writes (the same
    pages, built beforehand by the same C code), one COPY per page."""
    conn = await asyncpg.connect(url)
    for stmt in raw_table_ddl("raw_bench", "binary_target"):
        await conn.execute(stmt)
    gc.collect()
    t = time.perf_counter()
    for page in pages:
        await conn.copy_to_table(
            "binary_target",
            schema_name="raw_bench",
            source=memoryview(page),
            columns=list(COPY_COLUMNS),
            format="binary",
        )
    took = time.perf_counter() - t
    await conn.close()
    return took


def binary_pages(raws: list[bytes], cfg: SchemaConfig, now: dt.datetime) -> list[bytes]:
    """The binary COPY pages warp's snapshot writes for ``raws`` (whole pages, header and
    trailer), built by :func:`raw_copy_rows` as :meth:`SchemaSource.snapshot` builds them."""
    tail = copy_tail(SNAPSHOT_VERSION, "snapshot", now)
    max_bytes = Transformer(cfg).max_bytes
    out = []
    for lo, hi in page_cuts(len(raws), cfg):
        got = raw_copy_rows(raws[lo:hi], tail, max_bytes)
        assert got is not None and not got[2], "the C COPY rows take every bench document"
        out.append(COPY_HEADER + got[0] + COPY_TRAILER)
    return out


def stored_texts(docs: list[dict[str, Any]]) -> list[str]:
    """The documents as the embedded engine stores them (its codec, its JSON)."""
    from mongoeco.core.codec import DocumentCodec
    from mongoeco.core.json_compat import json_dumps_compact

    return [json_dumps_compact(DocumentCodec.encode(d)) for d in docs]


def as_events(docs: list[dict[str, Any]], hot: float | None) -> list[bytes]:
    """Insert events, or update events where 10 % of the keys take every update."""
    out = []
    keys = [d["_id"] for d in docs]
    hot_keys = keys[: max(1, int(len(keys) * (hot or 0)))] if hot else None
    rng = random.Random(1)
    for i, doc in enumerate(docs):
        if hot_keys is not None:
            key = rng.choice(hot_keys)
            doc = {**doc, "_id": key}
            op = "update"
        else:
            op = "insert"
        out.append(
            bson.encode(
                {
                    "_id": {"_data": f"{i:020d}"},
                    "operationType": op,
                    "clusterTime": Timestamp(1_700_000_000 + i // 1000, i % 1000 + 1),
                    "ns": {"db": "bench", "coll": "orders"},
                    "documentKey": {"_id": doc["_id"]},
                    "fullDocument": doc,
                }
            )
        )
    return out


def settings_for(src: str, url: str, work: Path, include: list[str]) -> Any:
    return settings_from_mapping(
        {
            "source": {"connection_string": src},
            "destination": {"connection_string": url},
            "state_dir": str(work / "state"),
            "schemas": [
                {
                    "name": "bench",
                    "source_database": "bench",
                    "target_schema": "raw_bench",
                    "include": include,
                    "batching": {"max_batch_size": 500, "queue_max_batches": 4},
                    "warp": {"metrics_port": 0, "materialization_interval_seconds": 1},
                }
            ],
        }
    )


async def seed_engine(src: str, docs: list[dict[str, Any]]) -> None:
    from cartridge_dagster.connectors.mongo import mongo_session

    progress("e2e: seeding the embedded engine")
    # as `cartridge demo seed` does; no warp consumer is registered yet, so the engine keeps
    # none of the load's changes (warp snapshots it)
    async with mongo_session(src) as conn:
        db = conn.database("bench")
        for name, count in (("plain", N_E2E), ("small", N_MEM), ("big", N_MEM * 10)):
            for i in range(0, count, 2000):
                await db[name].insert_many(docs[i : min(i + 2000, count)])


async def e2e_memory(server: str, src: str, work: Path) -> dict[str, float]:
    from cartridge_dagster.warp.runner import WarpRunner

    results: dict[str, float] = {}
    progress("e2e: memory, 1x and 10x backlog")
    for name in ("small", "big"):
        url = await fresh_db(server)
        s = settings_for(src, url, work, [name])
        tracemalloc.start()
        await WarpRunner(s, s.schemas[0], stop_when_idle=0.3).run()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results[f"peak_mb_{name}"] = peak / 1e6
        await drop_db(server, url)
    return results


async def e2e_child(
    mode: str, server: str, src: str, work: Path, env: dict[str, str] | None = None
) -> tuple[float, float, float]:
    """One warp run of the seeded ``plain`` collection in a process of its own
    (``tests.performance.warp_child``): ``plain``, the runner as ``cartridge warp run`` runs
    it; ``dagster``, the ``warp_bench`` job executed in the process's main thread, as Dagster's
    run worker executes it (``env``: added to its environment). Returns docs/s over the whole
    run, docs/s while busy (to the last batch with rows) and docs per CPU second of the process
    over the same span."""
    import yaml

    url = await fresh_db(server)
    cfg = work / f"e2e-{mode}.yaml"
    data = settings_for(src, url, work, ["plain"]).model_dump(mode="json")
    data["source"]["connection_string"] = src
    data["destination"]["connection_string"] = url
    cfg.write_text(yaml.safe_dump(data))
    repo = Path(__file__).resolve().parents[2]
    log = work / f"e2e-{mode}.log"  # a file, not a pipe: this process stays asleep meanwhile
    with log.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.performance.warp_child",
            mode,
            str(cfg),
            cwd=repo,
            env={**os.environ, **(env or {})},
            stdout=asyncio.subprocess.PIPE,
            stderr=err_file,
        )
        out, _ = await proc.communicate()
    await drop_db(server, url)
    if proc.returncode != 0:
        raise RuntimeError(f"warp_child {mode} failed:\n{log.read_text()[-3000:]}")
    got = json.loads(out.decode().strip().splitlines()[-1])
    assert got["applied"] == N_E2E, got
    return N_E2E / got["whole"], N_E2E / got["busy"], N_E2E / got["cpu"]


def dlt_creds(url: str) -> str:
    scheme, _, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if at and ":" not in userinfo:  # dlt insists on a password; a trust-auth server ignores it
        return f"{scheme}://{userinfo}:unused@{hostpart}"
    return url


async def dlt_landing(server: str, docs: list[dict[str, Any]]) -> tuple[float, dict[str, int]]:
    """dlt's default normalizer: typed ``orders`` plus child tables. Returns (s, row counts)."""
    import dlt

    url = await fresh_db(server)
    plain = [bson.json_util.loads(document_json(d)) for d in docs]  # JSON-able input for dlt
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{uuid.uuid4().hex[:6]}",
        destination=dlt.destinations.postgres(credentials=dlt_creds(url)),
        dataset_name="dlt_bench",
        pipelines_dir=tempfile.mkdtemp(),
    )
    gc.collect()
    t = time.perf_counter()
    await asyncio.to_thread(pipeline.run, plain, table_name="orders")
    took = time.perf_counter() - t
    conn = await asyncpg.connect(url)
    counts = {
        r["table_name"]: int(
            await conn.fetchval(f"SELECT count(*) FROM dlt_bench.{quote_ident(r['table_name'])}")
        )
        for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'dlt_bench' "
            "AND table_name NOT LIKE '\\_dlt%'"
        )
    }
    await conn.close()
    await drop_db(server, url)
    return took, counts


def generate_staging(src: str, server: str, work: Path) -> tuple[Path, Path]:
    """``cartridge scan`` + ``generate`` on the seeded ``plain`` collection (the same order
    documents) into a copy of the dbt project, with ``dbt.staging_materialized: table`` so dbt
    does the typing work dlt's normalizer does. Returns (dbt project, config file)."""
    import shutil
    import subprocess

    import yaml

    repo = Path(__file__).resolve().parents[2]
    project = work / "dbt_project"
    shutil.copytree(
        repo / "dbt_project",
        project,
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "generated"),
    )
    cfg = work / "staging.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": src},
                "destination": {"connection_string": server},
                "state_dir": str(work / "init-state"),
                "schemas": [
                    {
                        "name": "bench",
                        "source_database": "bench",
                        "target_schema": "raw_bench",
                        "include": ["plain"],
                    }
                ],
                "dbt": {"project_dir": str(project), "staging_materialized": "table"},
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    for step in ("scan", "generate"):
        subprocess.run(
            [sys.executable, "-m", "cartridge_dagster", step, "--config", str(cfg)],
            env=env,
            check=True,
            capture_output=True,
        )
    models = sorted((project / "models" / "generated" / "bench").glob("*.sql"))
    assert models and all("materialized='table'" in m.read_text() for m in models), models
    return project, cfg


class InProcessDbt:
    """dbt in this process, as dlt runs here: imported and the project parsed once, before any
    clock starts (as dlt is imported and its pipeline built before its clock starts), then
    ``dbtRunner(manifest=...)`` per run."""

    def __init__(self, project: Path, env: dict[str, str]) -> None:
        os.environ.update(env)  # the profile reads the connection from the environment
        from dbt.cli.main import dbtRunner

        self.runner_cls = dbtRunner
        self.args = ["--project-dir", str(project), "--profiles-dir", str(project / "profiles")]
        parsed = dbtRunner().invoke(["parse", "--quiet", *self.args])
        assert parsed.success, parsed.exception
        self.manifest = parsed.result

    def run(self, select: str) -> tuple[float, float]:
        """(seconds for the whole invocation, the models' own execution time)."""
        t = time.perf_counter()
        res = self.runner_cls(manifest=self.manifest).invoke(
            ["run", "--quiet", "--select", select, *self.args]
        )
        took = time.perf_counter() - t
        assert res.success, res.exception
        return took, sum(float(r.execution_time) for r in res.result.results)


async def landing_and_staging(
    server: str, raws: list[bytes], project: Path
) -> tuple[float, float, float, float, dict[str, int]]:
    """warp's landing of ``raws`` into ``raw_bench.plain``, then the generated staging models
    (tables) built twice: by dbt in this process and by the ``dbt`` CLI (a process of its own,
    as dagster-dbt runs it). Returns (landing s, in-process ``dbt run`` s, CLI ``dbt run`` s,
    the models' own execution time in the in-process run, rows per staging table)."""
    from cartridge_dagster.init.dbtcli import dbt_env, run_dbt

    url = await fresh_db(server)
    pages = WireServer(raws, "plain", schema_cfg())
    gc.collect()
    gc.freeze()  # what dlt's run left alive in this process is not warp's to scan
    landing = await warp_snapshot(url, pages, collection="plain", expect=len(raws))
    env = dbt_env(url, schema="bench_staging")
    select = "path:models/generated/bench"
    dbt = InProcessDbt(project, env)
    gc.collect()
    dbt_s, models_s = dbt.run(select)  # nothing else runs meanwhile
    run_dbt(project, ["parse"], env=env)  # the CLI's partial parse is warm too
    t = time.perf_counter()
    result = await asyncio.to_thread(run_dbt, project, ["run", "--select", select], env=env)
    cli_s = time.perf_counter() - t
    assert result.ok
    conn = await asyncpg.connect(url)
    counts = {}
    for r in await conn.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE table_schema LIKE 'bench_staging%' AND table_type = 'BASE TABLE'"
    ):
        counts[r["table_name"]] = int(
            await conn.fetchval(
                f"SELECT count(*) FROM {quote_ident(r['table_schema'])}."
                f"{quote_ident(r['table_name'])}"
            )
        )
    await conn.close()
    await drop_db(server, url)
    return landing, dbt_s, cli_s, models_s, counts


def best(values: list[float]) -> float:
    return min(values)


async def main() -> None:
    configure_logging("console", "warning")
    server = server_url()
    docs = orders(N)
    raws = [bson.encode(d) for d in docs]
    size = sum(len(r) for r in raws) / len(raws)
    now = dt.datetime.now(dt.UTC)
    final_rows = [
        (canonical_id(d["_id"]), document_json(d), False, i, "snapshot", now, now)
        for i, d in enumerate(docs)
    ]
    ins_events = as_events(docs, None)
    upd_events = as_events(docs, 0.10)
    cfg = schema_cfg()
    server_pages = WireServer(raws, "orders", cfg)  # a server's replies to warp's scan
    engine_pages = StoredPages(stored_texts(docs))  # the embedded engine's stored documents
    # the COPY rows warp's snapshot writes (none without the C extension: warp then converts
    # each document in Python and COPYs tuples, which the snapshot rows then time)
    copy_pages = binary_pages(raws, cfg, now) if FAST_BSON else None
    seconds: dict[str, list[float]] = {}
    share = [0.0, 0.0]
    share_serial = [0.0, 0.0]
    # The inputs above (N documents in three forms) stay alive for the whole run; a warp process
    # holds nothing like them. Freeze them out of the cyclic GC so its passes cost every
    # measure, baselines and warp alike, what they would cost in a process of its own.
    gc.collect()
    gc.freeze()

    async def measure(name: str, coro: Any) -> None:
        seconds.setdefault(name, []).append(await coro)

    async def in_fresh_db(fn: Callable[[str], Any]) -> float:
        url = await fresh_db(server)
        try:
            return float(await fn(url))
        finally:
            await drop_db(server, url)

    async def sync(value: float) -> float:
        return value

    for r in range(ROUNDS):
        progress(f"round {r + 1}/{ROUNDS}: baselines and warp apply on {N} documents")
        await measure("decode", sync(baseline_decode(raws)))
        await measure("decode_batch", sync(baseline_decode(raws, per_batch=True)))
        await measure("decode_ev", sync(baseline_decode(ins_events)))
        await measure("copy", in_fresh_db(lambda u: baseline_copy(u, final_rows)))
        await measure("naive", in_fresh_db(lambda u: baseline_naive(u, ins_events)))
        if copy_pages is not None:
            await measure("copy_binary", in_fresh_db(lambda u: baseline_copy_binary(u, copy_pages)))
        await measure("snapshot", in_fresh_db(lambda u: warp_snapshot(u, server_pages, expect=N)))
        await measure(
            "insert",
            in_fresh_db(lambda u: warp_events(u, ins_events, share=share)),
        )
        await measure(
            "insert_serial",
            in_fresh_db(lambda u: warp_events(u, ins_events, share=share_serial, serial=True)),
        )
        await measure(
            "no_checkpoint",
            in_fresh_db(lambda u: warp_events(u, ins_events, sink_cls=NoCheckpointSink)),
        )
        await measure("update", in_fresh_db(lambda u: warp_events(u, upd_events)))
        await measure("snapshot_reader", snapshot_reader(server_pages, expect=N))
        await measure(
            "snapshot_engine",
            in_fresh_db(lambda u: warp_snapshot(u, engine_pages, expect=N)),
        )
        await measure(
            "resnapshot",
            in_fresh_db(lambda u: warp_snapshot(u, server_pages, sweep=True, expect=N)),
        )
        await measure(
            "insert_dict",
            in_fresh_db(lambda u: warp_events(u, ins_events, raw_documents=False)),
        )

    rate = {k: N / best(v) for k, v in seconds.items()}
    rate.setdefault("copy_binary", math.nan)
    cp_overhead = (best(seconds["insert"]) - best(seconds["no_checkpoint"])) / best(
        seconds["no_checkpoint"]
    )
    cp_share = share[0] / share[1] if share[1] else 0.0
    cp_share_serial = share_serial[0] / share_serial[1] if share_serial[1] else 0.0

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = f"mongoeco://{work / 'src.sqlite'}"
        e2e_docs = orders(max(N_E2E, N_MEM * 10))
        await seed_engine(src, e2e_docs)
        plain_runs, dagster_runs, nogc_runs = [], [], []
        for r in range(E2E_ROUNDS):
            progress(f"round {r + 1}/{E2E_ROUNDS}: warp runner, plain process and Dagster run")
            # one of each per round, the order alternating: whichever runs second in a pair
            # was measurably slower here, and the machine's speed drifts between pairs
            modes = ["plain", "dagster", "dagster_nogc"]
            for mode in reversed(modes) if r % 2 else modes:
                if mode == "dagster_nogc":
                    nogc = {"CARTRIDGE_GC_TUNING": "0"}
                    nogc_runs.append(await e2e_child("dagster", server, src, work, nogc))
                    continue
                runs = dagster_runs if mode == "dagster" else plain_runs
                runs.append(await e2e_child(mode, server, src, work))
        mem = await e2e_memory(server, src, work)

        progress("dlt, and warp landing + generated staging models built by dbt")
        project, _ = generate_staging(src, server, work)
        small = max(1000, N_DLT // 5)
        dlt_s, wl_s, dbt_s, cli_s, models_s = {}, {}, {}, {}, {}
        counts_dlt: dict[str, int] = {}
        counts_stg: dict[str, int] = {}
        for n in (small, N_DLT):
            dlt_s[n], counts_dlt = await dlt_landing(server, docs[:n])
            wl_s[n], dbt_s[n], cli_s[n], models_s[n], counts_stg = await landing_and_staging(
                server, raws[:n], project
            )

    def marginal(times: dict[int, float]) -> float:
        """Steady-state rate from two sizes; NaN when noise makes the larger run faster."""
        spent = times[N_DLT] - times[small]
        return (N_DLT - small) / spent if spent > 0 else math.nan

    # both tools in this process, imported and set up before the clock (dlt's pipeline built,
    # dbt's project parsed): the whole run of each, landing + staging against dlt's load
    both = {n: wl_s[n] + dbt_s[n] for n in wl_s}
    # the same with the dbt CLI (a process of its own, as dagster-dbt runs it): its start-up,
    # ~4 s of imports here, is a fixed cost per run that dlt in process does not pay
    both_cli = N_DLT / (wl_s[N_DLT] + cli_s[N_DLT])
    # the work itself: landing + the staging models' execution
    both_work = N_DLT / (wl_s[N_DLT] + models_s[N_DLT])
    dlt_rate, dlt_marginal = N_DLT / dlt_s[N_DLT], marginal(dlt_s)
    land_rate = N_DLT / wl_s[N_DLT]
    both_rate, both_marginal = N_DLT / both[N_DLT], marginal(both)

    plain_whole = max(p[0] for p in plain_runs)
    plain_busy = max(p[1] for p in plain_runs)
    dag_whole = max(d[0] for d in dagster_runs)
    dag_busy = max(d[1] for d in dagster_runs)
    paired = sorted(d[1] / p[1] for p, d in zip(plain_runs, dagster_runs, strict=True))
    paired_cpu = [d[2] / p[2] for p, d in zip(plain_runs, dagster_runs, strict=True)]
    # docs per CPU second with ÷ without: the CPU without ÷ with
    gc_gain = [d[2] / n[2] for d, n in zip(dagster_runs, nogc_runs, strict=True)]
    floor = min(rate["decode"], rate["copy"])
    floor_ev = min(rate["decode_ev"], rate["copy"])
    rows_out: list[tuple[str, float, str]] = [
        ("B_decode (BSON decode, docs/s)", rate["decode"], ""),
        (
            "B_decode one batch at a time (docs/s)",
            rate["decode_batch"],
            f"warp snapshot = {rate['snapshot'] / rate['decode_batch']:.2f} x this (no target)",
        ),
        ("B_decode of change events (events/s)", rate["decode_ev"], ""),
        ("B_copy (asyncpg COPY of final rows, rows/s)", rate["copy"], ""),
        ("B_copy of warp's binary COPY rows, PostgreSQL alone (rows/s)", rate["copy_binary"], ""),
        ("B_naive (decode+convert+executemany upsert, events/s)", rate["naive"], ""),
        (
            "warp snapshot: wire pages -> C COPY rows -> sink (docs/s)",
            rate["snapshot"],
            f"{rate['snapshot'] / floor:.2f} x min(B_decode,B_copy) (>= 0.7); "
            f"{rate['snapshot'] / rate['copy_binary']:.2f} x its rows' COPY alone",
        ),
        (
            "the same, its reader alone: pages -> C COPY rows (docs/s)",
            rate["snapshot_reader"],
            f"{rate['snapshot_reader'] / rate['snapshot']:.1f} x the whole (no target)",
        ),
        (
            "warp snapshot from the embedded engine's stored documents (docs/s)",
            rate["snapshot_engine"],
            f"{rate['snapshot_engine'] / floor:.2f} x min (in process; no target)",
        ),
        (
            "warp re-snapshot (sweep): a Change per document, merge (docs/s)",
            rate["resnapshot"],
            f"initial snapshot = {rate['snapshot'] / rate['resnapshot']:.2f} x this (no target)",
        ),
        (
            "warp change events, insert-heavy (events/s)",
            rate["insert"],
            f"{rate['insert'] / floor_ev:.2f} x min (>= 0.5)",
        ),
        (
            "warp change events, update-heavy 10% hot (events/s)",
            rate["update"],
            f"{rate['update'] / floor_ev:.2f} x min (>= 0.4)",
        ),
        (
            "warp change events, insert-heavy, vs B_naive",
            rate["insert"] / rate["naive"],
            "(>= 1.5)",
        ),
        (
            "warp change events, decoded to dicts first (events/s)",
            rate["insert_dict"],
            f"{rate['insert_dict'] / rate['naive']:.2f} x B_naive (embedded engine; no target)",
        ),
        (
            "checkpoint overhead, with vs without",
            cp_overhead * 100,
            "% of apply time (<= 2; difference of two noisy timings)",
        ),
        (
            "checkpoint statement's share of transaction time",
            cp_share * 100,
            "% (<= 2; inside each transaction, the reader's time slices included)",
        ),
        (
            "the same, transactions alone (read first, then write)",
            cp_share_serial * 100,
            "% (<= 2)",
        ),
        (
            f"dlt landing, {N_DLT} docs (docs/s)",
            dlt_rate,
            f"warp snapshot = {rate['snapshot'] / dlt_rate:.1f} x dlt (>= 5); "
            f"warp landing of the same {N_DLT}: {land_rate / dlt_rate:.1f} x",
        ),
        (
            "dlt steady state (docs/s)",
            dlt_marginal,
            f"warp snapshot = {rate['snapshot'] / dlt_marginal:.1f} x dlt (>= 5)",
        ),
        (
            f"warp landing + dbt staging tables, {N_DLT} docs (docs/s)",
            both_rate,
            f"{both_rate / dlt_rate:.2f} x dlt (>= 2; both in process, set up before the clock)",
        ),
        (
            "the same with the dbt CLI, its start-up included (docs/s)",
            both_cli,
            f"{both_cli / dlt_rate:.2f} x dlt (a fixed ~4 s per dbt process; no target)",
        ),
        (
            "warp landing + dbt staging models' execution (docs/s)",
            both_work,
            f"{both_work / dlt_marginal:.2f} x dlt steady state (>= 2; dbt start-up excluded)",
        ),
        (
            "warp landing + dbt staging, two-size steady state (docs/s)",
            both_marginal,
            f"{both_marginal / dlt_marginal:.2f} x dlt steady state (NaN: noise > the work)",
        ),
        ("e2e from embedded engine, plain process, whole run (docs/s)", plain_whole, ""),
        (
            "e2e in a Dagster run, whole run (docs/s)",
            dag_whole,
            f"{dag_whole / plain_whole:.2f} x plain (Dagster's run launch included)",
        ),
        ("warp runner, plain process, until last batch (docs/s)", plain_busy, ""),
        (
            "warp runner in a Dagster run, until last batch (docs/s)",
            dag_busy,
            f"{dag_busy / plain_busy:.2f} x plain, best of each",
        ),
        (
            "Dagster / plain, median of the paired rounds",
            statistics.median(paired),
            f"x plain (>= 0.95); pairs {paired[0]:.2f}-{paired[-1]:.2f}",
        ),
        (
            "the same per CPU second of each process, median",
            statistics.median(paired_cpu),
            "x plain (every thread counted: Dagster's own included)",
        ),
        (
            "GC setting in a Dagster run: CPU without ÷ with, median",
            statistics.median(gc_gain),
            f"(> 1 to keep it); rounds {min(gc_gain):.2f}-{max(gc_gain):.2f}",
        ),
        ("peak Python memory, 1x backlog (MB)", mem["peak_mb_small"], ""),
        (
            "peak Python memory, 10x backlog (MB)",
            mem["peak_mb_big"],
            f"{mem['peak_mb_big'] / mem['peak_mb_small']:.2f} x steady (<= 1.2)",
        ),
    ]
    print(
        ("" if FAST_BSON else "\nNO C EXTENSION: the snapshot rows time the Python fallback")
        + f"\nwarp benchmark: {N} order documents, {size:.0f} bytes of BSON each, best of "
        f"{ROUNDS} interleaved rounds; end to end {N_E2E}, best of {E2E_ROUNDS} (memory "
        f"{N_MEM}, 10x {N_MEM * 10}); "
        f"dlt and landing + staging at {small} and {N_DLT}"
    )
    width = max(len(r[0]) for r in rows_out)
    print(f"{'measure'.ljust(width)}  {'value':>12}  ratio / target")
    for name, value, note in rows_out:
        shown = f"{value:12.2f}" if abs(value) < 10 else f"{value:12.1f}"
        print(f"{name.ljust(width)}  {shown}  {note}")
    print(f"dlt tables at {N_DLT}: {counts_dlt}; staging tables: {counts_stg}")
    print(
        "plain / Dagster per round (docs/s while busy; the 2nd, 4th, ... ran Dagster first): "
        + ", ".join(f"{p[1]:.0f}/{d[1]:.0f}" for p, d in zip(plain_runs, dagster_runs, strict=True))
    )
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
