"""A first start's snapshot reads, begun before the warehouse is touched.

On a first start warp records the source's position, lists its collections and copies them.
None of that writes anything, and nothing is written before the fence is held, so the runner
(:meth:`~cartridge_dagster.warp.runner.WarpRunner.run`) does it first: it connects to the source,
records the position and the collections (:func:`read_ahead`) and starts the copy of each
collection the snapshot starts with (its first pages, a bounded few: :data:`AHEAD_BATCHES`),
and only then imports the warehouse's driver, connects, takes the fence and reads the
checkpoint, while the source reads those pages.

The checkpoint decides: with no resume token (a first start) the plan recorded here is the
plan, committed by the writer before any row, exactly as a plan recorded after the fence, and
the copies continue from their first pages; otherwise (a restart, a snapshot in progress or
done) or when the fence cannot be taken, the pages are dropped (:meth:`ReadAhead.discard`)
along with what reading them changed in the source (the collections it has seen, the value
policies' counts), and the run goes on from the checkpoint as it would have.

Only a source whose reads change nothing is read ahead: MongoDB's (a PostgreSQL source creates
its replication slot when it records its position).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from cartridge_dagster.observability import get_logger
from cartridge_dagster.warp.sink import Batch
from cartridge_dagster.warp.sources import Position, Source

__all__ = ["FirstPages", "ReadAhead", "read_ahead"]

log = get_logger("cartridge.warp.readahead")


#: Batches a started copy keeps queued before the run takes it (one more is converted, waiting to
#: be queued, and the page after it asked for): the source goes on reading while warp takes the
#: fence and commits the plan, instead of stopping after the first page until the copy is taken;
#: bounded, so a fast source does not fill memory with pages before the fence.
AHEAD_BATCHES = 1

_END = object()


@dataclass
class FirstPages:
    """One collection's copy, started: its batches read by a task of their own until the copy
    is taken (:data:`AHEAD_BATCHES` queued, one more converted, the next page asked for)."""

    state: dict[str, Any]
    batches: AsyncIterator[Batch]
    buffered: asyncio.Queue[Any] = field(
        default_factory=lambda: asyncio.Queue(maxsize=AHEAD_BATCHES)
    )
    pump: asyncio.Task[None] | None = None
    taken: bool = False

    def start(self) -> None:
        self.pump = asyncio.ensure_future(self._pump())

    async def _pump(self) -> None:
        try:
            async for batch in self.batches:
                await self.buffered.put(batch)
        except Exception as exc:  # noqa: BLE001  # raised where the copy meets it (take)
            await self.buffered.put(exc)
        else:
            await self.buffered.put(_END)

    async def take(self) -> AsyncIterator[Batch]:
        """The copy's batches from its first on (once: a retry reads from the source again),
        in the order the source gave them, its error where it met one."""
        self.taken = True
        while True:
            item = await self.buffered.get()
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            yield item

    async def close(self) -> None:
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()
        if self.pump is not None:
            with contextlib.suppress(BaseException):
                await self.pump
        with contextlib.suppress(Exception):
            await self.batches.aclose()  # type: ignore[attr-defined]


@dataclass
class ReadAhead:
    """The position and collections recorded before the fence, and the copies started."""

    position: Position
    collections: list[str]
    copies: dict[str, FirstPages] = field(default_factory=dict)
    #: What the source had seen before (restored when the read ahead is dropped).
    known_before: set[str] = field(default_factory=set)

    def pages_for(self, name: str, state: dict[str, Any]) -> FirstPages | None:
        """The started copy of ``name``, when it starts where ``state`` says (and once)."""
        copy = self.copies.get(name)
        if copy is None or copy.taken or copy.state != state:
            return None
        return copy

    async def close(self) -> None:
        """Stop the copies no one took (the pipeline's end, or a plan that did not need one)."""
        for copy in self.copies.values():
            await copy.close()

    async def discard(self, source: Source, reason: str) -> None:
        """Drop everything read ahead: the checkpoint or the fence says this run does not
        start from this plan."""
        await self.close()
        for name in self.copies:
            source.take_stats(name)  # counts of pages that will not land
        source.known.clear()
        source.known.update(self.known_before)
        log.info("warp.snapshot.read_ahead_dropped", reason=reason)


async def read_ahead(
    source: Source, *, parallel: int, stop: asyncio.Event | None
) -> ReadAhead | None:
    """Record the position and the collections, and start the copies of the first
    ``parallel`` collections (the ones the snapshot copies first); None when the source cannot
    say (its error is met again, and handled, where the runner plans after the fence).
    """
    known_before = set(source.known)
    try:
        await source.check()
        position = await source.position()
        names = await source.collections()
    except Exception as exc:  # noqa: BLE001  # raised again by the plan after the fence
        log.info("warp.snapshot.read_ahead_skipped", error=type(exc).__name__)
        return None
    ahead = ReadAhead(position, names, known_before=known_before)
    version = str(position.snapshot_version)
    for name in sorted(names)[: max(1, parallel)]:
        state = initial_state(version)
        log.info("warp.snapshot.start", table=name, copied=0, read_ahead=True)
        copy = ahead.copies[name] = FirstPages(state, source.snapshot(name, dict(state), stop))
        copy.start()
    await asyncio.sleep(0)  # let the first requests go out before the caller goes on
    return ahead


def initial_state(version: str, *, sweep: bool = False) -> dict[str, Any]:
    """A collection's entry in a new snapshot plan."""
    return {"done": False, "after": None, "version": version, "sweep": sweep, "copied": 0}
