"""Pure warp logic: versions, event transform, in-batch dedup, the supervisor's decision."""

from __future__ import annotations

import datetime as dt
import math

import bson
import dagster as dg
import pytest
from bson import ObjectId, Timestamp
from hypothesis import given
from hypothesis import strategies as st

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.sensors.warp import RunInfo, decide
from cartridge_dagster.warp.changes import (
    Change,
    DeadLetter,
    Transformer,
    cluster_base,
    dedup_latest,
    event_summary,
    make_version,
    split_version,
)
from cartridge_dagster.warp.source import decode_after, encode_after


def schema(**kwargs: object) -> SchemaConfig:
    return SchemaConfig(name="shop", source_database="shop", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        (Timestamp(100, 5), Timestamp(100, 6)),
        (Timestamp(100, 2**31), Timestamp(101, 0)),
        (7, 8),
    ],
)
def test_cluster_time_orders_versions(earlier: object, later: object) -> None:
    assert make_version(cluster_base(earlier), 65535) < make_version(cluster_base(later), 0)


def test_version_fits_numeric_39_and_round_trips() -> None:
    top = make_version(cluster_base(Timestamp(2**32 - 1, 2**32 - 1)), 65535)
    assert len(str(top)) <= 39
    assert split_version(make_version(123456, 7)) == (123456, 7)
    with pytest.raises(ValueError, match="clusterTime"):
        cluster_base(True)


@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 1000)), max_size=60))
def test_dedup_keeps_exactly_the_newest_per_id(items: list[tuple[int, int]]) -> None:
    changes = [Change("c", str(k), "update", v, b"{}") for k, v in items]
    flags = dedup_latest(changes)
    winners = [c for c, f in zip(changes, flags, strict=True) if f]
    assert len({c.id for c in winners}) == len(winners) == len({c.id for c in changes})
    for w in winners:
        assert w.version == max(c.version for c in changes if c.id == w.id)


def test_event_transform_crud_and_policies() -> None:
    t = Transformer(schema(tables={"c": {"exclude_fields": ["secret", "nested.pin"]}}))
    oid = ObjectId()
    event = {
        "_id": {"_data": "1"},
        "operationType": "update",
        "ns": {"db": "shop", "coll": "c"},
        "documentKey": {"_id": oid},
        "fullDocument": {"_id": oid, "a": "x\x00y", "secret": 1, "nested": {"pin": 1, "k": 2}},
        "clusterTime": Timestamp(1, 1),
    }
    out = t.event(event, 42, None)
    assert isinstance(out, Change)
    assert out.id == str(oid) and out.version == 42 and out.op == "update"
    assert bson.json_util.loads(out.document) == {"_id": str(oid), "a": "xy", "nested": {"k": 2}}
    assert t.stats.nul_stripped == 1
    gone = t.event({**event, "operationType": "delete", "fullDocument": None}, 43, None)
    assert isinstance(gone, Change) and gone.document is None and gone.op == "delete"
    # updateLookup found nothing (deleted meanwhile): nothing to apply, the delete follows
    assert t.event({**event, "fullDocument": None}, 44, None) is None


def test_unlandable_documents_become_dead_letters() -> None:
    t = Transformer(
        schema(dead_letter={"non_finite_numbers": "dead_letter", "max_document_bytes": 1024})
    )
    nan = t.document("c", {"_id": 1, "f": math.nan}, op="snapshot", version=1, source_ts=None)
    assert isinstance(nan, DeadLetter) and nan.document_id == "1"
    assert "f" in nan.error_message and bson.decode(nan.raw_event)["_id"] == 1
    big = t.document("c", {"_id": 2, "s": "x" * 5000}, op="insert", version=2, source_ts=None)
    assert isinstance(big, DeadLetter) and "max_document_bytes" in big.error_message
    assert '"_id": 2' in event_summary(big.raw_event)


def test_snapshot_cursor_round_trips_any_id() -> None:
    for value in (1, "a", ObjectId(), {"x": 1}, dt.datetime(2020, 1, 1, tzinfo=dt.UTC)):
        back = decode_after(encode_after(value))
        assert back == value or back == value.replace(tzinfo=None)  # type: ignore[union-attr]


def run(run_id: str, status: dg.DagsterRunStatus, end: float | None = None) -> RunInfo:
    return RunInfo(run_id, status, end)


def test_supervisor_decision() -> None:
    now = 10_000.0
    assert decide([], now).launch
    alive = decide([run("a", dg.DagsterRunStatus.STARTED)], now)
    assert not alive.launch and "a" in alive.reason
    assert not decide([run("q", dg.DagsterRunStatus.QUEUED)], now).launch
    one_fail = [run("f", dg.DagsterRunStatus.FAILURE, now - 10)]
    assert not decide(one_fail, now).launch  # within 30 s
    assert decide([run("f", dg.DagsterRunStatus.FAILURE, now - 31)], now).launch
    three = [run(str(i), dg.DagsterRunStatus.FAILURE, now - 100) for i in range(3)]
    assert not decide(three, now).launch  # 120 s after three failures
    assert decide([run("s", dg.DagsterRunStatus.SUCCESS, now - 1)], now).launch
