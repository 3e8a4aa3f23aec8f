"""Schema inference rate against plain BSON decoding of the same documents, in the same run.

Run: ``python -m tests.performance.bench_inference`` (``make bench`` runs it). Options through
the environment: ``BENCH_DOCS`` (default 20000 documents per collection), ``BENCH_REPEAT``
(default 5; the best of the repeats is reported), ``BENCH_SCAN_DOCS`` (default 2000 documents
seeded into the embedded engine for the end-to-end scan row; 0 skips it).

Rows, per demo collection and for all of them:

- ``B_decode``: ``bson.decode`` of every document (the codec options the connectors use);
- ``infer``: :class:`~cartridge_dagster.init.inference.Profiler` over the decoded documents
  plus :func:`finalize` (what a scan does with what the driver hands it);
- ``decode+infer``: both, one after the other (what the CPU spends per scanned document).

Target (issue 3): ``infer`` ≥ 0.5 × ``B_decode``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bson

from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.connectors.mongo import bson_options, mongo_session
from cartridge_dagster.demo.seed import DemoGenerator, DemoSizes, seed_demo
from cartridge_dagster.init.inference import InferenceOptions, Profiler, finalize
from cartridge_dagster.init.scan import scan_mongo
from cartridge_dagster.observability import configure_logging

TARGET = 0.5


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _documents(n: int) -> dict[str, list[bytes]]:
    sizes = DemoSizes(customers=n, products=n, orders=n, events=n)
    gen = DemoGenerator(sizes, seed=42)
    opts = bson_options()
    return {
        name: [bson.encode(doc, codec_options=opts) for doc in docs]
        for name, _count, docs in gen.collections()
    }


def _infer(name: str, docs: list[dict[str, Any]]) -> None:
    profiler = Profiler(InferenceOptions(distinct_cap=20000))
    profiler.add_many(docs)
    finalize(name, profiler, total_documents=len(docs), method="full", rounds=1)


def _scan_row(n: int) -> tuple[int, float] | None:
    if n <= 0:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        url = f"mongoeco://{Path(tmp) / 'bench.sqlite'}"
        settings = settings_from_mapping(
            {
                "source": {"connection_string": url},
                "schemas": [{"name": "shop", "source_database": "shop"}],
            }
        )

        async def run() -> tuple[int, float]:
            async with mongo_session(url) as conn:
                await seed_demo(conn.database("shop"), sizes=DemoSizes.scaled(n / 32500))
                started = time.perf_counter()
                result = await scan_mongo(conn, settings.get_schema("shop"), full_scan=True)
                return result.documents_seen, time.perf_counter() - started

        return asyncio.run(run())


def main() -> int:
    configure_logging("console", "warning")
    n = int(os.environ.get("BENCH_DOCS", "20000"))
    repeat = int(os.environ.get("BENCH_REPEAT", "5"))
    raw = _documents(n)
    opts = bson_options()
    rows = []
    total_docs = total_decode = total_infer = 0.0
    for name, blobs in raw.items():
        decoded = [bson.decode(b, codec_options=opts) for b in blobs]
        t_decode = _best(
            lambda blobs=blobs: [bson.decode(b, codec_options=opts) for b in blobs], repeat
        )
        t_infer = _best(lambda name=name, decoded=decoded: _infer(name, decoded), repeat)
        count = len(blobs)
        avg = sum(map(len, blobs)) / count
        rows.append(
            (
                name,
                count,
                avg,
                count / t_decode,
                count / t_infer,
                t_decode / t_infer,
                count / (t_decode + t_infer),
            )
        )
        total_docs += count
        total_decode += t_decode
        total_infer += t_infer
    rows.append(
        (
            "all",
            int(total_docs),
            0.0,
            total_docs / total_decode,
            total_docs / total_infer,
            total_decode / total_infer,
            total_docs / (total_decode + total_infer),
        )
    )

    print(f"schema inference vs BSON decode (best of {repeat}; target infer ≥ {TARGET} × B_decode)")
    header = (
        f"{'collection':<11} {'docs':>7} {'avg B':>6} {'B_decode/s':>11} {'infer/s':>10} "
        f"{'infer÷B_decode':>15} {'decode+infer/s':>15}"
    )
    print(header)
    print("-" * len(header))
    ok = True
    for name, count, avg, dec, inf, ratio, both in rows:
        flag = "" if ratio >= TARGET else "  (below target)"
        ok = ok and (ratio >= TARGET or name != "all")
        size = f"{avg:6.0f}" if avg else "     -"
        print(
            f"{name:<11} {count:>7} {size} {dec:>11,.0f} {inf:>10,.0f} {ratio:>15.2f} "
            f"{both:>15,.0f}{flag}"
        )
    scan = _scan_row(int(os.environ.get("BENCH_SCAN_DOCS", "2000")))
    if scan is not None:
        seen, seconds = scan
        print(
            f"\nend to end: full scan of the embedded engine (read + decode + infer + "
            f"references): {seen:,} docs in {seconds:.2f} s = {seen / seconds:,.0f} docs/s"
        )
    print(
        f"\nresult: infer ÷ B_decode (all) = {rows[-1][5]:.2f} → "
        f"{'meets' if ok else 'BELOW'} the {TARGET} target"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
