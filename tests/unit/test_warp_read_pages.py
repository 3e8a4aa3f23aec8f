"""How a copy's pages are asked for: the last page's size (``page_size``) and the copy started
before the fence (``readahead.FirstPages``), which keeps reading while the run is not there yet.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from cartridge_dagster.warp.readahead import AHEAD_BATCHES, FirstPages
from cartridge_dagster.warp.sink import Batch
from cartridge_dagster.warp.source import LAST_PAGE, page_size

SIZE = 5_000


@pytest.mark.parametrize(
    ("estimate", "read", "expected"),
    [
        (None, 0, SIZE),  # no estimate: full pages
        (None, 9_000, SIZE),
        (100_000, 1_000, SIZE),  # far from the end
        (10_000, 6_000, 3_000),  # 4,000 left: 3,000 now, the last 1,000 next
        (10_000, 9_000, SIZE),  # the last page: asked for as a full one (its reply ends the cursor)
        (10_000, 3_999, SIZE),  # 6,001 left: more than a page and the last one
        (10_000, 4_000, 5_000),  # 6,000 left: a full page, then the last 1,000
        (10_000, 7_999, 1_001),  # 2,001 left: 1,001 now, the last 1,000 next
        (10_000, 8_000, SIZE),  # 2,000 left: the last page
        (10_000, 12_000, SIZE),  # an estimate below what was read: full pages to the end
        (0, 0, SIZE),
    ],
)
def test_the_last_page_is_small(estimate: int | None, read: int, expected: int) -> None:
    assert page_size(SIZE, estimate, read) == expected


def test_pages_add_up_to_the_estimate_with_a_small_last_page() -> None:
    for total in (1, 999, 1_000, 6_000, 7_300, 9_300, 10_000, 12_345, 50_000, 1_000_000):
        read, pages = min(total, LAST_PAGE), [min(total, LAST_PAGE)]  # the first page
        while read < total:
            got = min(page_size(SIZE, total, read), total - read)
            pages.append(got)
            read += got
        assert sum(pages) == total
        assert all(0 < p <= SIZE for p in pages), pages
        if total > SIZE + LAST_PAGE:  # the taper applies: the last page is small
            assert pages[-1] <= 2 * LAST_PAGE, (total, pages)


class _Pages:
    """An async generator of batches that records how far it was read, and its closing."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n, self.fail_at = n, fail_at
        self.produced = 0
        self.closed = False

    async def gen(self) -> AsyncIterator[Batch]:
        try:
            for i in range(self.n):
                await asyncio.sleep(0)
                if i == self.fail_at:
                    raise ConnectionError(f"source lost at page {i}")
                self.produced += 1
                batch = Batch(kind="snapshot", version=None)
                batch.events = i
                yield batch
        finally:
            self.closed = True


async def _started(pages: _Pages) -> FirstPages:
    """A copy of ``pages`` started, and given the loop long enough to read what it may."""
    copy = FirstPages({}, pages.gen())
    copy.start()
    for _ in range(50):
        await asyncio.sleep(0)
    return copy


def test_a_started_copy_reads_ahead_a_bounded_number_of_batches_then_hands_them_in_order() -> None:
    async def main() -> None:
        pages = _Pages(10)
        copy = await _started(pages)
        # it did not wait for the run: the queue is full and one more batch is made
        assert pages.produced == AHEAD_BATCHES + 1
        got = [b.events async for b in copy.take()]
        assert got == list(range(10))
        assert copy.taken and pages.closed
        await copy.close()

    asyncio.run(main())


def test_a_source_error_reaches_the_copy_after_the_batches_before_it() -> None:
    async def main() -> None:
        pages = _Pages(10, fail_at=2)
        copy = FirstPages({}, pages.gen())
        copy.start()
        got: list[int] = []

        async def drain() -> None:
            async for b in copy.take():
                got.append(b.events)

        with pytest.raises(ConnectionError, match="page 2"):
            await drain()
        assert got == [0, 1]
        await copy.close()

    asyncio.run(main())


def test_closing_a_copy_not_taken_stops_its_reads_and_closes_its_pages() -> None:
    async def main() -> None:
        pages = _Pages(10)
        copy = await _started(pages)
        await copy.close()
        assert pages.closed
        produced = pages.produced
        for _ in range(20):
            await asyncio.sleep(0)
        assert pages.produced == produced <= AHEAD_BATCHES + 1

    asyncio.run(main())
