"""What each implementation of the landing contract buys: documents/s per path, same documents.

Run: ``python -m tests.performance.bench_conversion`` (``make bench`` runs it). Options through
the environment: ``BENCH_DOCS`` (default 20000 documents per demo collection), ``BENCH_REPEAT``
(default 5; the best repeat is kept). No database is needed.

The documents are the demo generator's four collections (nested objects, arrays of line items,
``Decimal128`` money, dates, UUIDs, ObjectIds), encoded to BSON once. Rows:

- ``bson.decode``: PyMongo's C decoder into dicts (what any Python conversion of raw BSON pays
  first; the embedded engine hands warp dicts it built itself at a similar cost);
- ``to_jsonable``: the reference conversion (a recursive walk building JSON-able Python, then
  ``orjson.dumps``) on the decoded dicts;
- ``document_json``: the orjson fast path (orjson walks the dict natively, BSON types through
  ``default``; falls back to ``to_jsonable`` where a policy applies) on the decoded dicts;
- ``C (_bsonjson)``: the C conversion straight from the BSON bytes (``raw_document_json``:
  canonical ``_id`` and JSON, no Python objects for the document);
- ``decode + document_json``: what the PyMongo path would cost without the C conversion.

Each row prints documents/s and its ratio to ``to_jsonable``.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from typing import Any

import bson
import orjson

from cartridge_dagster.demo.seed import DemoGenerator, DemoSizes
from cartridge_dagster.documents import (
    DECODE_OPTIONS,
    ConversionStats,
    ValuePolicy,
    document_json,
    raw_document_json,
    to_jsonable,
)


def _best(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _documents(n: int) -> list[bytes]:
    sizes = DemoSizes(customers=n, products=n, orders=n, events=n)
    gen = DemoGenerator(sizes, seed=42)
    return [
        bson.encode(doc, codec_options=DECODE_OPTIONS)
        for _name, _count, docs in gen.collections()
        for doc in docs
    ]


def main() -> int:
    n = int(os.environ.get("BENCH_DOCS", "20000"))
    repeat = int(os.environ.get("BENCH_REPEAT", "5"))
    blobs = _documents(n)
    decoded = [bson.decode(b, DECODE_OPTIONS) for b in blobs]
    policy = ValuePolicy()
    # the paths must agree before they are timed (the unit and corpus tests hold them to it)
    step = max(1, len(blobs) // 500)
    for raw, doc in zip(blobs[::step], decoded[::step], strict=True):
        reference = orjson.dumps(to_jsonable(doc, policy, ConversionStats()))
        fast = raw_document_json(raw)
        if document_json(doc) != reference or fast is None or fast[1] != reference:
            raise SystemExit("the conversion paths disagree; run tests/unit/test_bson_corpus.py")
    gc.freeze()

    def reference() -> None:
        stats = ConversionStats()
        for doc in decoded:
            orjson.dumps(to_jsonable(doc, policy, stats))

    def fast_path() -> None:
        stats = ConversionStats()
        for doc in decoded:
            document_json(doc, policy, stats)

    def c_path() -> None:
        for raw in blobs:
            raw_document_json(raw)

    def decode() -> None:
        for raw in blobs:
            bson.decode(raw, DECODE_OPTIONS)

    def decode_fast() -> None:
        stats = ConversionStats()
        for raw in blobs:
            document_json(bson.decode(raw, DECODE_OPTIONS), policy, stats)

    rows = [
        ("bson.decode (dicts from bytes)", _best(decode, repeat)),
        ("to_jsonable + orjson.dumps (dicts)", _best(reference, repeat)),
        ("document_json, orjson fast path (dicts)", _best(fast_path, repeat)),
        ("C _bsonjson (bytes)", _best(c_path, repeat)),
        ("bson.decode + document_json (bytes)", _best(decode_fast, repeat)),
    ]
    count = len(blobs)
    avg = sum(map(len, blobs)) / count
    base = rows[1][1]
    print(f"{count} demo documents, {avg:.0f} bytes of BSON on average, best of {repeat}")
    print(f"| {'path':<42} | {'docs/s':>10} | {'x to_jsonable':>13} |")
    print(f"|{'-' * 44}|{'-' * 12}|{'-' * 15}|")
    for label, seconds in rows:
        print(f"| {label:<42} | {count / seconds:>10,.0f} | {base / seconds:>13.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
