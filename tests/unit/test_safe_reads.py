"""safe_reads and the scan's query errors: one line naming the collection, retries kept apart.

The real engine's behaviour (NaN in a collection) is in tests/integration/test_hostile_values.py;
these fakes pin the error handling around it.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pymongo.errors
import pytest

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.errors import TransientError
from cartridge_dagster.init.scan import scan_collection
from cartridge_dagster.safe_reads import UnreadableCollection, count_documents, find_documents


class FakeCursor:
    def __init__(self, coll: FakeCollection, collation: Any) -> None:
        self.coll, self.collation = coll, collation

    def sort(self, *_: Any) -> FakeCursor:
        return self

    def limit(self, _: int) -> FakeCursor:
        return self

    def batch_size(self, _: int) -> FakeCursor:
        return self

    def __aiter__(self) -> Any:
        return self._docs()

    async def _docs(self) -> Any:
        self.coll.calls.append(self.collation)
        failure = self.coll.fail_plain if self.collation is None else self.coll.fail_collated
        if failure is not None:
            raise failure
        for doc in self.coll.docs:
            yield doc


class FakeCollection:
    def __init__(
        self,
        docs: list[dict[str, Any]],
        fail_plain: BaseException | None = None,
        fail_collated: BaseException | None = None,
    ) -> None:
        self.docs, self.fail_plain, self.fail_collated = docs, fail_plain, fail_collated
        self.calls: list[Any] = []

    def find(self, _query: Any, projection: Any = None, collation: Any = None) -> FakeCursor:
        return FakeCursor(self, collation)

    async def count_documents(self, _query: Any, collation: Any = None) -> int:
        self.calls.append(collation)
        failure = self.fail_plain if collation is None else self.fail_collated
        if failure is not None:
            raise failure
        return len(self.docs)


async def _all(coll: FakeCollection) -> list[Any]:
    return [d async for d in find_documents(coll, {}, name="c", sort_by_id=True)]


MALFORMED = sqlite3.OperationalError("malformed JSON")


def test_malformed_json_falls_back_to_the_simple_collation() -> None:
    coll = FakeCollection([{"_id": 1}], fail_plain=MALFORMED)
    assert asyncio.run(_all(coll)) == [{"_id": 1}]
    assert coll.calls == [None, {"locale": "simple"}]
    assert asyncio.run(count_documents(coll, {}, name="c")) == 1


def test_a_query_the_source_cannot_answer_is_one_line_naming_the_collection() -> None:
    coll = FakeCollection([], fail_plain=MALFORMED, fail_collated=MALFORMED)
    with pytest.raises(UnreadableCollection) as caught:
        asyncio.run(_all(coll))
    assert str(caught.value) == (
        "collection 'c': the source cannot read it in _id order (OperationalError: malformed JSON)"
    )
    with pytest.raises(UnreadableCollection, match="'c': the source cannot count"):
        asyncio.run(count_documents(coll, {}, name="c"))


def test_a_locked_file_is_left_to_the_retries() -> None:
    locked = sqlite3.OperationalError("database is locked")
    coll = FakeCollection([], fail_plain=locked)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        asyncio.run(_all(coll))
    assert coll.calls == [None]


class FakeDb:
    name = "shop"

    def __init__(self, coll: FakeCollection) -> None:
        self.coll = coll

    def __getitem__(self, _name: str) -> FakeCollection:
        return self.coll


def _schema() -> SchemaConfig:
    return SchemaConfig(name="s", source_database="shop", target_schema="raw_s")


def test_scan_errors_name_the_collection_and_keep_transient_apart() -> None:
    failed = pymongo.errors.OperationFailure("$sample is not allowed", code=13)
    coll = FakeCollection([], fail_plain=failed, fail_collated=failed)
    with pytest.raises(UnreadableCollection) as caught:
        asyncio.run(scan_collection(FakeDb(coll), _schema(), "orders"))
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("collection 'orders' of database 'shop': the source could not count")
    assert "OperationFailure: $sample is not allowed" in text
    lost = pymongo.errors.AutoReconnect("connection reset")
    coll = FakeCollection([], fail_plain=lost, fail_collated=lost)
    with pytest.raises(TransientError, match=r"'orders'.*AutoReconnect"):
        asyncio.run(scan_collection(FakeDb(coll), _schema(), "orders"))
