"""Warp throughput against baselines measured in the same run, on the same documents.

Run: ``python -m tests.performance.bench_warp`` (``make bench`` runs it against a throwaway
PostgreSQL; set ``CARTRIDGE_TEST_POSTGRES_DSN`` to use another server). Options through the
environment: ``BENCH_DOCS`` (default 20000 order documents), ``BENCH_E2E_DOCS`` (default 3000,
default 500, documents seeded into the embedded engine for the end-to-end rows; the memory
row copies ten times as many).

Baselines: ``B_decode`` (BSON decode of the documents, or of the change events),
``B_copy`` (asyncpg ``copy_records_to_table`` of the final rows), ``B_naive`` (decode and the
same JSON conversion, then an ``executemany`` upsert). Warp rows run the real transform and sink
(staged COPY, set-based merge, dead-letter isolation, checkpoint in the same transaction).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import os
import random
import re
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import bson
from bson import ObjectId, Timestamp

from cartridge_dagster.config import SchemaConfig, settings_from_mapping
from cartridge_dagster.demo.seed import DemoGenerator, DemoSizes
from cartridge_dagster.documents import canonical_id, document_json
from cartridge_dagster.landing import RAW_COLUMNS, raw_table_ddl
from cartridge_dagster.observability import configure_logging
from cartridge_dagster.warp.changes import Change, Transformer, cluster_base, make_version
from cartridge_dagster.warp.sink import Batch, Sink, setup_jsonb_codec

N = int(os.environ.get("BENCH_DOCS", "20000"))
N_E2E = int(os.environ.get("BENCH_E2E_DOCS", "500"))
BATCH = 5000
#: Seconds spent writing checkpoints, and in whole batch transactions (warp_apply runs).
CHECKPOINT_SHARE = [0.0, 0.0]


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
    t = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        await conn.copy_records_to_table(
            "copy_target", schema_name="raw_bench", records=rows[i : i + BATCH], columns=cols
        )
    took = time.perf_counter() - t
    await conn.close()
    return took


async def baseline_naive(url: str, raws: list[bytes]) -> float:
    conn = await asyncpg.connect(url)
    for stmt in raw_table_ddl("raw_bench", "naive_target"):
        await conn.execute(stmt)
    now = dt.datetime.now(dt.UTC)
    t = time.perf_counter()
    for i in range(0, len(raws), BATCH):
        rows = []
        for j, raw in enumerate(raws[i : i + BATCH]):
            doc = bson.decode(raw)
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
    async def _write_checkpoint(self, conn: Any, batch: Any, result: Any, bad: Any) -> None:
        result.applied = {}


async def warp_apply(
    url: str, raws: list[bytes], *, events: bool, sink_cls: type[Sink] = Sink
) -> float:
    """Decode → transform → staged merge + checkpoint, pipelined like the runner's reader and
    writer (a bounded queue between them)."""
    cfg = schema_cfg()
    sink = sink_cls(url, cfg, owner="bench")
    await sink.setup()
    await sink.acquire()
    transformer = Transformer(cfg)
    now = dt.datetime.now(dt.UTC)
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=cfg.batching.queue_max_batches)

    async def produce() -> None:  # the reader's work: decode and transform
        for i in range(0, len(raws), BATCH):
            batch = Batch(kind="stream" if events else "snapshot", direct_copy=not events)
            for j, raw in enumerate(raws[i : i + BATCH]):
                if j % 500 == 499:
                    await asyncio.sleep(0)  # let the writer's I/O progress meanwhile
                doc = bson.decode(raw)
                if events:
                    v = make_version(cluster_base(doc["clusterTime"]), 1)
                    out = transformer.event(doc, v, now)
                    batch.token = doc["_id"]
                    batch.version = v
                else:
                    out = transformer.document(
                        "orders", doc, op="snapshot", version=1, source_ts=now
                    )
                if isinstance(out, Change):
                    batch.changes.append(out)
            await queue.put(batch)
        await queue.put(None)

    async def consume() -> None:  # the writer's work: one transaction per batch
        while (batch := await queue.get()) is not None:
            result = await sink.apply(batch)
            if type(sink) is Sink:
                CHECKPOINT_SHARE[0] += result.checkpoint_seconds
                CHECKPOINT_SHARE[1] += result.seconds

    t = time.perf_counter()
    await asyncio.gather(produce(), consume())
    took = time.perf_counter() - t
    await sink.close()
    return took


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


async def e2e(server: str, work: Path) -> dict[str, float]:
    """Snapshot from the embedded engine through the real runner: plain, in Dagster, memory."""
    from cartridge_dagster.connectors.mongo import mongo_session
    from cartridge_dagster.warp.runner import WarpRunner

    results: dict[str, float] = {}
    src = f"mongoeco://{work / 'src.sqlite'}"
    docs = orders(N_E2E * 10)
    progress("e2e: seeding the embedded engine")
    async with mongo_session(src) as conn:
        db = conn.database("bench")
        for name, count in (("plain", N_E2E), ("small", N_E2E), ("big", N_E2E * 10)):
            for i in range(0, count, 2000):
                await db[name].insert_many(docs[i : min(i + 2000, count)])

    def settings_for(url: str, include: list[str]) -> Any:
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
                        "batching": {"max_batch_size": 100, "queue_max_batches": 4},
                        "warp": {"metrics_port": 0, "materialization_interval_seconds": 1},
                    }
                ],
            }
        )

    progress("e2e: plain process")
    url = await fresh_db(server)
    s = settings_for(url, ["plain"])
    t, summary = await atimed(WarpRunner(s, s.schemas[0], stop_when_idle=0.3).run())
    results["e2e_plain_docs_s"] = summary.total_applied / t
    results["e2e_plain_runner_docs_s"] = summary.total_applied / summary.seconds
    await drop_db(server, url)

    progress("e2e: memory, 1x and 10x backlog")
    for name in ("small", "big"):
        url = await fresh_db(server)
        s = settings_for(url, [name])
        tracemalloc.start()
        await WarpRunner(s, s.schemas[0], stop_when_idle=0.3).run()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        results[f"peak_mb_{name}"] = peak / 1e6
        await drop_db(server, url)

    progress("e2e: inside a Dagster run")
    import dagster as dg
    import yaml

    from cartridge_dagster.assets.warp import build_warp_defs
    from cartridge_dagster.config import load_settings
    from cartridge_dagster.resources.warp import WarpResource

    url = await fresh_db(server)
    cfg_path = work / "bench.yaml"
    data = settings_for(url, ["plain"]).model_dump(mode="json")
    data["source"]["connection_string"] = src
    data["destination"]["connection_string"] = url
    cfg_path.write_text(yaml.safe_dump(data))
    defs = dg.Definitions.merge(
        build_warp_defs(load_settings(cfg_path)),
        dg.Definitions(resources={"warp": WarpResource(config_path=str(cfg_path))}),
    )
    job = defs.resolve_job_def("warp_bench")
    with dg.instance_for_test() as instance:
        t0 = time.perf_counter()
        result = await asyncio.to_thread(
            job.execute_in_process,
            run_config={"ops": {"warp_bench_run": {"config": {"stop_when_idle_seconds": 0.3}}}},
            instance=instance,
        )
        t = time.perf_counter() - t0
        assert result.success
        stats = instance.get_run_stats(result.run_id)
        op_seconds = (stats.end_time or 0) - (stats.start_time or 0)
        runner_seconds = 0.0
        for entry in instance.all_logs(result.run_id):
            found = re.search(r"batches \(([0-9.]+)s\)", entry.user_message or "")
            if found:
                runner_seconds = float(found.group(1))
    results["e2e_dagster_docs_s"] = N_E2E / t
    results["e2e_dagster_op_docs_s"] = N_E2E / max(op_seconds, 1e-9)
    results["e2e_dagster_runner_docs_s"] = N_E2E / max(runner_seconds, 1e-9)
    await drop_db(server, url)
    return results


async def dlt_landing(server: str, docs: list[dict[str, Any]]) -> float:
    import dlt

    url = await fresh_db(server)
    plain = [bson.json_util.loads(document_json(d)) for d in docs]  # JSON-able input for dlt
    creds = url
    scheme, _, rest = url.partition("://")
    userinfo, at, hostpart = rest.partition("@")
    if at and ":" not in userinfo:  # dlt insists on a password; a trust-auth server ignores it
        creds = f"{scheme}://{userinfo}:unused@{hostpart}"
    pipeline = dlt.pipeline(
        pipeline_name=f"bench_{uuid.uuid4().hex[:6]}",
        destination=dlt.destinations.postgres(credentials=creds),
        dataset_name="dlt_bench",
        pipelines_dir=tempfile.mkdtemp(),
    )
    t = time.perf_counter()
    await asyncio.to_thread(pipeline.run, plain, table_name="orders")
    took = time.perf_counter() - t
    await drop_db(server, url)
    return took


async def main() -> None:
    configure_logging("console", "warning")
    server = server_url()
    docs = orders(N)
    raws = [bson.encode(d) for d in docs]
    size = sum(len(r) for r in raws) / len(raws)
    rows_out: list[tuple[str, float, str]] = []

    t_decode, decoded = min(
        (timed(lambda: [bson.decode(r) for r in raws]) for _ in range(3)), key=lambda x: x[0]
    )
    b_decode = N / t_decode
    now = dt.datetime.now(dt.UTC)
    final_rows = [
        (canonical_id(d["_id"]), document_json(d), False, i, "snapshot", now, now)
        for i, d in enumerate(decoded)
    ]
    progress("baselines")
    url = await fresh_db(server)
    b_copy = N / await baseline_copy(url, final_rows)
    b_naive = N / await baseline_naive(url, raws)
    await drop_db(server, url)

    progress("warp apply: snapshot, inserts, updates, checkpoint overhead")
    url = await fresh_db(server)
    snap = N / await warp_apply(url, raws, events=False)
    await drop_db(server, url)

    ins_events = as_events(docs, None)
    t_ev = min(timed(lambda: [bson.decode(r) for r in ins_events])[0] for _ in range(3))
    b_decode_ev = N / t_ev
    url = await fresh_db(server)
    ins = N / await warp_apply(url, ins_events, events=True)
    await drop_db(server, url)

    upd_events = as_events(docs, 0.10)
    url = await fresh_db(server)
    upd = N / await warp_apply(url, upd_events, events=True)
    await drop_db(server, url)

    with_cp, without_cp = [], []
    for _ in range(3):  # interleaved, best of three: the difference is small
        for sink_cls, out in ((Sink, with_cp), (NoCheckpointSink, without_cp)):
            url = await fresh_db(server)
            out.append(await warp_apply(url, ins_events, events=True, sink_cls=sink_cls))
            await drop_db(server, url)
    cp_overhead = (min(with_cp) - min(without_cp)) / min(without_cp)
    cp_share = CHECKPOINT_SHARE[0] / CHECKPOINT_SHARE[1] if CHECKPOINT_SHARE[1] else 0.0

    progress("dlt")
    n_dlt = min(N, 10000)  # dlt is slow: a smaller sample of the same documents
    dlt_rate = n_dlt / await dlt_landing(server, docs[:n_dlt])

    with tempfile.TemporaryDirectory() as work:
        e = await e2e(server, Path(work))

    floor = min(b_decode, b_copy)
    floor_ev = min(b_decode_ev, b_copy)
    rows_out += [
        ("B_decode (BSON decode, docs/s)", b_decode, ""),
        ("B_decode of change events (events/s)", b_decode_ev, ""),
        ("B_copy (asyncpg COPY of final rows, rows/s)", b_copy, ""),
        ("B_naive (decode+convert+executemany upsert)", b_naive, ""),
        (
            "warp snapshot apply (docs/s)",
            snap,
            f"{snap / floor:.2f} x min(B_decode,B_copy) (>= 0.7)",
        ),
        ("warp insert-heavy apply (events/s)", ins, f"{ins / floor_ev:.2f} x min (>= 0.5)"),
        ("warp update-heavy 10% hot (events/s)", upd, f"{upd / floor_ev:.2f} x min (>= 0.4)"),
        ("warp apply vs B_naive", ins / b_naive, "(>= 1.5)"),
        (
            "checkpoint overhead, with vs without (best of 3)",
            cp_overhead * 100,
            "% of apply time (<= 2; noisy)",
        ),
        (
            "checkpoint statements' share of transaction time",
            cp_share * 100,
            "% (<= 2; measured inside each transaction)",
        ),
        ("dlt landing (docs/s)", dlt_rate, f"warp snapshot = {snap / dlt_rate:.1f} x dlt (>= 5)"),
        ("e2e snapshot from embedded engine, plain (docs/s)", e["e2e_plain_docs_s"], ""),
        (
            "e2e in a Dagster run, whole run (docs/s)",
            e["e2e_dagster_docs_s"],
            f"{e['e2e_dagster_docs_s'] / e['e2e_plain_docs_s']:.2f} x plain (>= 0.95)",
        ),
        (
            "e2e in a Dagster run, run start to end (docs/s)",
            e["e2e_dagster_op_docs_s"],
            f"{e['e2e_dagster_op_docs_s'] / e['e2e_plain_docs_s']:.2f} x plain",
        ),
        (
            "warp runner in a Dagster run vs plain (docs/s)",
            e["e2e_dagster_runner_docs_s"],
            f"{e['e2e_dagster_runner_docs_s'] / e['e2e_plain_runner_docs_s']:.2f} x plain "
            "runner (>= 0.95; same documents, Dagster's run launch excluded)",
        ),
        ("peak Python memory, 1x backlog (MB)", e["peak_mb_small"], ""),
        (
            "peak Python memory, 10x backlog (MB)",
            e["peak_mb_big"],
            f"{e['peak_mb_big'] / e['peak_mb_small']:.2f} x steady (<= 1.2)",
        ),
    ]
    print(
        f"\nwarp benchmark: {N} order documents, {size:.0f} bytes of BSON each; "
        f"end to end {N_E2E} (10x backlog {N_E2E * 10})"
    )
    width = max(len(r[0]) for r in rows_out)
    print(f"{'measure'.ljust(width)}  {'value':>12}  ratio / target")
    for name, value, note in rows_out:
        print(f"{name.ljust(width)}  {value:12.1f}  {note}")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
