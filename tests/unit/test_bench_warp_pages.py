"""bench_warp's snapshot rows time the path a real snapshot takes: the source's own scan over
the bench's prepared server replies (or stored documents) yields pages of C COPY rows holding
every document once, in order, with no per-document ``Change``; a re-snapshot takes the
per-document path. If the source's scan changes what it asks a server, the bench's server
refuses (its assertions), and this test says so before a benchmark run does."""

from __future__ import annotations

import asyncio
from typing import Any

import bson
import pytest

from cartridge_dagster.documents import FAST_BSON
from cartridge_dagster.warp.changes import Change, Transformer
from cartridge_dagster.warp.sink import Batch
from cartridge_dagster.warp.source import FIRST_PAGE, SchemaSource
from tests.performance.bench_warp import (
    SNAPSHOT_VERSION,
    StoredPages,
    WireServer,
    initial_state,
    orders,
    schema_cfg,
    stored_texts,
)

pytestmark = pytest.mark.skipif(not FAST_BSON, reason="the C extension is not built")

N = 12_345


def batches(conn: Any, *, sweep: bool = False) -> list[Batch]:
    cfg = schema_cfg()
    source = SchemaSource(conn, cfg, Transformer(cfg))
    if isinstance(conn, StoredPages):
        source._store = conn
    state = initial_state(str(SNAPSHOT_VERSION), sweep=sweep)

    async def collect() -> list[Batch]:
        return [b async for b in source.snapshot("orders", state)]

    return asyncio.run(collect())


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return orders(N)


def test_wire_pages_land_as_copy_rows_of_every_document_in_order(docs: list[Any]) -> None:
    server = WireServer([bson.encode(d) for d in docs], "orders", schema_cfg())
    got = batches(server)
    assert server.served == len(server.pages) == 4  # 1,000 + 5,000 + 5,000 + 2,345
    *pages, final = got
    assert [len(b) for b in pages] == [FIRST_PAGE, 5000, 5000, N - FIRST_PAGE - 10_000]
    assert all(b.copy is not None and not b.changes and b.direct_copy for b in pages)
    ids = [ch.id for b in pages for ch in b.copy.changes()]  # type: ignore[union-attr]
    assert ids == [str(d["_id"]) for d in docs]
    assert final.snapshot is not None and final.snapshot["orders"]["done"] is True
    assert final.snapshot["orders"]["copied"] == N


def test_stored_documents_land_as_copy_rows(docs: list[Any]) -> None:
    got = batches(StoredPages(stored_texts(docs[:7000])))
    *pages, final = got
    assert [len(b) for b in pages] == [5000, 2000]
    assert all(b.copy is not None and not b.changes for b in pages)
    first = pages[0].copy.changes()[0]  # type: ignore[union-attr]
    assert first.id == str(docs[0]["_id"])
    assert bson.json_util.loads(first.document)["status"] == docs[0]["status"]
    assert final.snapshot is not None and final.snapshot["orders"]["done"] is True


def test_a_resnapshot_takes_a_change_per_document(docs: list[Any]) -> None:
    server = WireServer([bson.encode(d) for d in docs[:3000]], "orders", schema_cfg())
    *pages, final = batches(server, sweep=True)
    assert all(b.copy is None and not b.direct_copy for b in pages)
    changes = [ch for b in pages for ch in b.changes]
    assert len(changes) == 3000 and all(isinstance(ch, Change) for ch in changes)
    assert [w.op for w in final.wipes] == ["sweep"]
