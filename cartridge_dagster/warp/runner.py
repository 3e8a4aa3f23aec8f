"""The warp runner: reader → bounded queue → writer, per schema.

The reader (snapshot, then change stream) and the writer (one PostgreSQL transaction per batch)
run as two tasks joined by an ``asyncio.Queue`` of at most ``batching.queue_max_batches``
batches, so memory stays flat whatever the backlog: when PostgreSQL is slow, the reader waits.

Transient errors (connection loss, failover, lock timeouts) are retried with tenacity: capped
exponential backoff with jitter. The writer retries the same batch (its transaction rolled
back); the reader re-opens the stream from the last position it handed over, and a snapshot
copy continues after the last ``_id`` it handed over. The reader's retry budget counts
consecutive failures (a batch handed over or a successful read ends an outage); a source that
stays down stops the runner with :class:`ConnectionFailed` naming it. Terminal errors (bad
configuration, a fenced process, lost history with ``history_lost_policy: fail``) stop the
runner with a clear message.

A snapshot a source hands over as a plan of key ranges (a PostgreSQL table with a one-column
key, ``warp.snapshot_writers`` > 1) lands through that many more writers, each with its own
warehouse connection, taking whole ranges from a second bounded queue: the plan is committed
(by the main writer) before any range is queued, and the batch ending the table's copy is
queued only once every range handed over is committed.

Stopping (a stop event: SIGTERM in the CLI, run cancellation in Dagster, or ``stop_when_idle``)
ends the reader at an event boundary; the writer applies what was already queued and exits, so
the checkpoint always names the last applied change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.errors import (
    CartridgeError,
    ConnectionFailed,
    ResumeTokenLost,
    TerminalError,
    TransientError,
    classify,
    redact_url,
)
from cartridge_dagster.observability import bind_context, get_logger
from cartridge_dagster.warp import metrics
from cartridge_dagster.warp.readahead import ReadAhead, initial_state, read_ahead
from cartridge_dagster.warp.sink import (
    Batch,
    BatchResult,
    Checkpoint,
    RangeLanded,
    Sink,
    Wipe,
    is_transient,
)
from cartridge_dagster.warp.sources import Source, open_source, source_kind

if TYPE_CHECKING:
    from cartridge_dagster.observability import HealthState
    from cartridge_dagster.warp.early import EarlyRead

__all__ = ["RunObserver", "RunSummary", "RunnerHealth", "WarpRunner", "run_schemas"]

log = get_logger("cartridge.warp.runner")

_END = object()


class RunnerHealth:
    """What ``/health`` says of one runner, from timestamps the runner keeps (read from any
    thread; the HTTP server computes the answer on each request).

    - ready: the schema's checkpoint is read (or written) and the source answered once;
    - unhealthy: no batch applied and no successful read of the source for
      ``warp.health_stall_seconds``; retrying a failing source or warehouse for
      ``warp.health_retry_seconds``; the event loop not ticking for 10 s (stalled)."""

    LOOP_STALL_SECONDS = 10.0

    def __init__(self, stall_seconds: float, retry_seconds: float) -> None:
        self.stall_seconds = stall_seconds
        self.retry_seconds = retry_seconds
        self.checkpointed = False
        self.progress_at: float | None = None
        self.retrying_since: float | None = None
        self.retry_reason = ""
        self.beat_at = time.monotonic()
        self.stopped: str | None = None

    def progress(self) -> None:
        self.progress_at = time.monotonic()
        self.retrying_since = None

    def retrying(self, reason: str) -> None:
        if self.retrying_since is None:
            self.retrying_since = time.monotonic()
        self.retry_reason = reason

    def probe(self) -> tuple[bool, bool, str]:
        now = time.monotonic()
        ready = self.checkpointed and self.progress_at is not None
        if self.stopped is not None:
            return False, False, f"stopped: {self.stopped}"
        if now - self.beat_at > self.LOOP_STALL_SECONDS:
            return ready, False, f"event loop stalled for {now - self.beat_at:.0f}s"
        if self.retrying_since is not None and now - self.retrying_since > self.retry_seconds:
            return (
                ready,
                False,
                (f"retrying for {now - self.retrying_since:.0f}s ({self.retry_reason})"),
            )
        if self.progress_at is not None and now - self.progress_at > self.stall_seconds:
            return ready, False, f"no batch or read of the source for {now - self.progress_at:.0f}s"
        if not ready:
            return False, True, "starting: no checkpoint and first read yet"
        return True, True, "running"


class RunObserver(Protocol):
    """Hooks for a host (the Dagster op): hear about batches, ask to stop."""

    def on_batch(self, schema: str, batch: Batch, result: BatchResult) -> None: ...

    def should_stop(self) -> bool: ...


class NullObserver:
    def on_batch(self, schema: str, batch: Batch, result: BatchResult) -> None:
        return None

    def should_stop(self) -> bool:
        return False


@dataclass
class RunSummary:
    schema: str
    batches: int = 0
    applied: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    snapshot_rows: Counter[str] = field(default_factory=Counter)
    events_read: int = 0
    retries: int = 0
    resnapshots: int = 0
    stop_reason: str = ""
    checkpoint: Checkpoint | None = None
    seconds: float = 0.0
    last_lag_seconds: float | None = None
    peak_queue: int = 0
    #: Seconds from the start of the run to the last batch that landed rows (throughput
    #: without the idle tail of ``stop_when_idle``).
    busy_seconds: float = 0.0
    #: CPU seconds of the whole process (every thread) over the same span: what hosting the
    #: runner costs (a Dagster run's threads included), less sensitive to a busy machine.
    busy_cpu_seconds: float = 0.0
    started: float = field(default_factory=time.perf_counter, repr=False)
    cpu_started: float = field(default_factory=time.process_time, repr=False)

    @property
    def total_applied(self) -> int:
        return sum(self.applied.values())


async def _estimate(source: Source, collection: str) -> int | None:
    estimate = getattr(source, "estimate", None)  # optional for a source
    if estimate is None:
        return None
    try:
        return await asyncio.wait_for(estimate(collection), 10)
    except TimeoutError:
        return None


@dataclass
class _Progress:
    """A collection copy's progress: logged every few seconds (rows/s, ETA) and carried by
    its batches to the host (asset metadata in Dagster)."""

    collection: str
    start_copied: int
    total: int | None
    started: float = field(default_factory=time.monotonic)
    logged: float = field(default_factory=time.monotonic)
    EVERY = 5.0

    def update(self, copied: int, done: bool) -> dict[str, Any]:
        now = time.monotonic()
        elapsed = max(now - self.started, 1e-6)
        rate = (copied - self.start_copied) / elapsed
        total = max(self.total, copied) if self.total is not None else None
        eta = (total - copied) / rate if total is not None and rate > 0 and not done else None
        info: dict[str, Any] = {
            "copied": copied,
            "total": total,
            "rows_per_s": round(rate, 1),
            "eta_s": round(eta, 1) if eta is not None else (0.0 if done else None),
            "done": done,
        }
        if done:
            log.info(
                "warp.snapshot.done",
                table=self.collection,
                copied=copied,
                rows_per_s=info["rows_per_s"],
                seconds=round(elapsed, 2),
            )
        elif now - self.logged >= self.EVERY:
            self.logged = now
            log.info(
                "warp.snapshot.progress",
                table=self.collection,
                copied=copied,
                total=total,
                rows_per_s=info["rows_per_s"],
                eta_s=info["eta_s"],
            )
        return info


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _source_transient(exc: BaseException) -> bool:
    if isinstance(exc, ResumeTokenLost):
        return False
    return classify(exc) is TransientError


class _Stopped(BaseException):
    """A stop asked for while a retry paused: nothing more is tried, the run ends as stopped.
    (A BaseException: the handlers of the errors being retried must not take it for one.)"""


class WarpRunner:
    """Runs warp for one schema until stopped."""

    def __init__(
        self,
        settings: CartridgeSettings,
        schema: SchemaConfig,
        *,
        pg_url: str | None = None,
        source_url: str | None = None,
        stop: asyncio.Event | None = None,
        stop_when_idle: float | None = None,
        observer: RunObserver | None = None,
        max_retries: int = 8,
        max_backoff: float = 30.0,
        run_id: str | None = None,
        early: EarlyRead | None = None,
    ) -> None:
        self.settings = settings
        self.schema = schema
        self.pg_url = pg_url or settings.destination_url()
        self.source_url = source_url or settings.source_url(schema)
        #: The retry side and metric label of the source (``mongodb``, ``postgresql``).
        self.source_side = source_kind(self.source_url)
        self.stop = stop or asyncio.Event()
        self.stop_when_idle = stop_when_idle
        self.observer: RunObserver = observer or NullObserver()
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.summary = RunSummary(schema.name)
        self.health = RunnerHealth(
            schema.warp.health_stall_seconds, schema.warp.health_retry_seconds
        )
        self._writer_busy = False
        self._read_token: dict[str, Any] | None = None
        self.sink: Sink | None = None
        self.source: Source | None = None
        #: a first start's plan and first pages, read before the fence (``warp.readahead``)
        self._ahead: ReadAhead | None = None
        #: ``warp run``'s reads made while the settings were validated (``warp.early``)
        self.early = early
        #: whole key ranges of a snapshot plan, for the range writers
        self._ranges: asyncio.Queue[Any] = asyncio.Queue(
            maxsize=max(1, schema.batching.queue_max_batches)
        )

    # ------------------------------------------------------------------ retries

    def _retrying(self, side: str, predicate: Callable[[BaseException], bool]) -> AsyncRetrying:
        def before_sleep(state: RetryCallState) -> None:
            if self.stop.is_set():
                return  # no retry follows (_pause)
            exc = state.outcome.exception() if state.outcome else None
            self.summary.retries += 1
            self.health.retrying(f"{side}: {type(exc).__name__}")
            metrics.RETRIES.labels(self.schema.name, side).inc()
            log.warning(
                "warp.retry",
                side=side,
                attempt=state.attempt_number,
                error=type(exc).__name__,
                message=str(exc)[:300],
            )

        return AsyncRetrying(
            retry=retry_if_exception(predicate),
            wait=wait_exponential_jitter(initial=0.2, max=self.max_backoff, jitter=0.5),
            stop=stop_after_attempt(self.max_retries),
            before_sleep=before_sleep,
            sleep=self._pause,
            reraise=True,
        )

    async def _pause(self, seconds: float) -> None:
        """The pause before a retry, cut short by a stop (SIGTERM, Ctrl-C, Dagster): then no
        retry follows and the run ends as stopped (:class:`_Stopped`), instead of waiting out
        every attempt against a source or warehouse that does not answer."""
        if not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), seconds)
        if self.stop.is_set():
            raise _Stopped

    def _source_down(self, exc: BaseException) -> ConnectionFailed:
        """The error a runner stops with when the source stays unreachable."""
        return ConnectionFailed(
            f"schema {self.schema.name!r}: lost the {self._label} source "
            f"{redact_url(self.source_url)} "
            f"and could not read from it again in {self.max_retries} attempts "
            f"({type(exc).__name__}: {redact_url(str(exc))[:300]})",
            hint="check that the source is up and reachable from here; warp resumes from its "
            "checkpoint when started again (in Dagster, the supervisor sensor relaunches it)",
        )

    @property
    def _label(self) -> str:
        return "PostgreSQL" if self.source_side == "postgresql" else "MongoDB"

    async def _open_source(self) -> Source:
        """Connect to the source, retrying what is transient (an unreachable server, the
        embedded engine's file busy with another process's write)."""
        timeout = self.settings.source_for(self.schema).connect_timeout_seconds
        early, self.early = self.early, None
        try:
            async for attempt in self._retrying(self.source_side, _source_transient):
                with attempt:
                    if early is not None:
                        taken, early = early, None
                        adopted, reason = await taken.adopt(self.source_url, timeout, self.schema)
                        if adopted is not None:
                            log.info(
                                "warp.source.early_reads", first_page_asked_at=taken.asked_at()
                            )
                            return adopted
                        log.info("warp.source.early_reads_dropped", reason=reason)
                        if taken.failure is not None and _source_transient(taken.failure):
                            # the early reads could not reach the source: that was this run's
                            # first attempt (retried after a pause, not at once)
                            from cartridge_dagster.connectors.mongo import first_contact_error

                            shown = redact_url(self.source_url)
                            raise first_contact_error(shown, taken.failure)
                    return await open_source(self.source_url, self.schema, timeout_seconds=timeout)
        except Exception as exc:
            if _source_transient(exc):
                raise ConnectionFailed(
                    f"schema {self.schema.name!r}: {redact_url(str(exc))} (gave up after "
                    f"{self.max_retries} attempts)",
                    hint="check that the source is up and reachable from here",
                ) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _source_call[T](self, call: Callable[[], Awaitable[T]]) -> T:
        """One read of the source (its position, its collections), retried when transient."""
        try:
            async for attempt in self._retrying(self.source_side, _source_transient):
                with attempt:
                    return await call()
        except Exception as exc:
            if _source_transient(exc):
                raise self._source_down(exc) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _from_source(
        self,
        source: Source,
        queue: asyncio.Queue[Any],
        produce: Callable[[], AsyncIterator[Batch]],
        handed: Callable[[Batch], None] | None = None,
    ) -> None:
        """Hand ``produce()``'s batches to the writer, retrying transient source errors.

        After an error ``produce`` is called again and must continue after the last batch
        handed over (``handed`` hears of each). The retry budget counts consecutive failures:
        a batch handed over or a successful read of the stream ends an outage, so a long-lived
        run rides out any number of separate disconnects, and the backoff starts small again."""
        try:
            async for attempt in self._retrying(self.source_side, _source_transient):
                with attempt:
                    reads = source.reads
                    progressed = False
                    try:
                        async for batch in produce():
                            single = batch.snapshot is not None and len(batch.snapshot) == 1
                            batch.policy = source.take_stats(
                                next(iter(batch.snapshot)) if single else None  # type: ignore[arg-type]
                            )
                            await self._put(queue, batch)
                            progressed = True
                            if handed is not None:
                                handed(batch)
                    except Exception:
                        source.idle_since = None  # disconnected is not idle
                        if progressed or source.reads != reads:
                            attempt.retry_state.attempt_number = 1  # a new outage
                        raise
        except Exception as exc:
            if _source_transient(exc):
                raise self._source_down(exc) from exc
            raise

    # ------------------------------------------------------------------ writer

    async def _apply(self, sink: Sink, batch: Batch) -> BatchResult:
        async for attempt in self._retrying("postgres", is_transient):
            with attempt:
                try:
                    return await sink.apply(batch)
                except BaseException as exc:
                    if is_transient(exc):
                        sink.drop_connection()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write(self, sink: Sink, queue: asyncio.Queue[Any]) -> None:
        name = self.schema.name
        while True:
            item = await queue.get()
            self._gauge_queue(queue.qsize())
            if item is _END:
                return
            batch: Batch = item
            self._writer_busy = True
            try:
                result = await self._apply(sink, batch)
            finally:
                self._writer_busy = False
            self._record(batch, result)
            if batch.committed is not None:
                batch.committed.set()
            if batch.token is not None and self.source is not None:
                # committed: a source that keeps changes for warp may let go of them
                await self.source.acknowledge(batch.token)
            self.health.checkpointed = True
            self.health.progress()
            self.observer.on_batch(name, batch, result)

    async def _apply_range(self, sink: Sink, batch: Batch) -> BatchResult:
        retried = False
        async for attempt in self._retrying("postgres", is_transient):
            with attempt:
                try:
                    return await sink.apply_range(batch)
                except RangeLanded:
                    if not retried:
                        raise
                    # the commit went through before the connection broke: landed once
                    log.info("warp.range.landed_before_retry", table=batch.collections())
                    return BatchResult()
                except BaseException as exc:
                    if is_transient(exc):
                        sink.drop_connection()
                        retried = True
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _write_ranges(self, sink: Sink) -> None:
        """One range writer: whole key ranges, each in its own transaction with its mark."""
        queue = self._ranges
        while True:
            item = await queue.get()
            if item is _END:
                queue.task_done()
                return
            batch: Batch = item
            result = await self._apply_range(sink, batch)
            self._record(batch, result)
            self.health.checkpointed = True
            self.health.progress()
            self.observer.on_batch(self.schema.name, batch, result)
            # only once committed: a failed range keeps the end of its table's copy waiting
            # (the pipeline stops the reader), it never lets it through
            queue.task_done()

    def _record(self, batch: Batch, result: BatchResult) -> None:
        name = self.schema.name
        s = self.summary
        s.batches += 1
        if result.applied:
            s.busy_seconds = time.perf_counter() - s.started
            s.busy_cpu_seconds = time.process_time() - s.cpu_started
        s.applied.update(result.applied)
        s.dead_letters.update(result.dead_letters)
        if batch.kind == "snapshot":
            s.snapshot_rows.update(result.applied)
            for table, n in result.applied.items():
                metrics.SNAPSHOT_ROWS.labels(name, table).inc(n)
        for (table, op), n in result.ops.items():
            metrics.EVENTS.labels(name, table, op).inc(n)
        for table, n in result.dead_letters.items():
            metrics.DEAD_LETTERS.labels(name, table).inc(n)
        if len(batch):
            metrics.BATCH_ROWS.labels(name).observe(len(batch))
            metrics.BATCH_SECONDS.labels(name).observe(result.seconds)
        if batch.kind == "stream" and batch.events:
            lag = max(0.0, time.time() - batch.read_at)
            if batch.source_ts is not None:
                lag = max(lag, time.time() - batch.source_ts.timestamp())
            s.last_lag_seconds = lag
            metrics.LAG_SECONDS.labels(name).set(lag)
        elif batch.kind == "idle":
            s.last_lag_seconds = 0.0
            metrics.LAG_SECONDS.labels(name).set(0.0)
        if len(batch) or batch.wipes:
            log.info(
                "warp.batch",
                kind=batch.kind,
                rows=len(batch),
                applied=sum(result.applied.values()),
                dead=sum(result.dead_letters.values()),
                seconds=round(result.seconds, 4),
            )

    # ------------------------------------------------------------------ reader

    async def _put(self, queue: asyncio.Queue[Any], batch: Batch) -> None:
        if batch.key_range is not None:
            await self._ranges.put(batch)  # its plan is committed (below)
            return
        if batch.ranges_finished is not None:
            await self._ranges.join()  # every range handed over is committed
        if batch.range_plan is not None:
            batch.committed = asyncio.Event()
        await queue.put(batch)
        if batch.committed is not None:
            await batch.committed.wait()
        size = queue.qsize()
        self.summary.peak_queue = max(self.summary.peak_queue, size)
        self._gauge_queue(size)
        if batch.token is not None:
            self._read_token = dict(batch.token)

    def _gauge_queue(self, size: int) -> None:
        # Skipped while the metrics load (the start of a run): the next put or get sets it.
        if metrics.loaded():
            metrics.QUEUE_DEPTH.labels(self.schema.name).set(size)

    async def _plan(self, source: Source, *, sweep: bool, ahead: ReadAhead | None = None) -> Batch:
        """A new snapshot plan: the source's position, then its collections (``ahead``: as
        recorded before the fence, on a first start)."""
        if ahead is not None:
            position, names = ahead.position, ahead.collections
        else:
            if not sweep:
                await source.check()
            position = await source.position()
            names = await source.collections()
        version = str(position.snapshot_version)  # JSON: ~80 bits for a real clock
        plan = {name: initial_state(version, sweep=sweep) for name in names}
        source.seed_version(position.snapshot_version)
        log.info(
            "warp.snapshot.plan",
            collections=sorted(plan),
            version=position.snapshot_version,
            resnapshot=sweep,
        )
        return Batch(
            kind="reset", token=position.token, snapshot=plan, version=position.snapshot_version
        )

    async def _snapshot(
        self, source: Source, queue: asyncio.Queue[Any], plan: dict[str, dict[str, Any]]
    ) -> None:
        """Copy the plan's unfinished collections, up to ``warp.snapshot_parallel_collections``
        at a time (their reads overlap; the writer takes their batches in turn)."""
        todo = []
        for name in sorted(plan):
            if plan[name].get("done"):
                source.known.add(name)
            else:
                todo.append(name)
        gate = asyncio.Semaphore(max(1, self.schema.warp.snapshot_parallel_collections))

        async def one(name: str) -> None:
            async with gate:
                if self.stop.is_set():
                    return
                with bind_context(table=name):
                    ahead = self._ahead
                    if ahead is None or ahead.pages_for(name, plan[name]) is None:
                        log.info("warp.snapshot.start", copied=plan[name].get("copied", 0))
                    await self._copy(source, queue, name, plan[name])

        tasks = [asyncio.create_task(one(name), name=f"warp-copy-{name}") for name in todo]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _copy(
        self, source: Source, queue: asyncio.Queue[Any], name: str, state: dict[str, Any]
    ) -> None:
        """Copy one collection of the snapshot plan. After a transient source error the copy
        continues after the last ``_id`` handed to the writer: rows past it were never queued,
        so nothing is copied twice and the direct COPY of initial-snapshot rows stays safe."""
        current = dict(state)
        if current.get("ranges") and self.sink is not None:
            # a plan of key ranges in progress: the ranges not landed yet
            sink, version = self.sink, int(current["version"])
            async for attempt in self._retrying("postgres", is_transient):
                with attempt:
                    pending, landed = await sink.pending_ranges(name, version)
            current["pending"] = [[r.seq, r.lo, r.hi] for r in pending]
            current["copied"] = landed
        progress = _Progress(name, int(current.get("copied", 0)), await _estimate(source, name))

        async def produce() -> AsyncIterator[Batch]:
            ahead = self._ahead.pages_for(name, current) if self._ahead is not None else None
            batches = (
                ahead.take() if ahead is not None else source.snapshot(name, current, self.stop)
            )
            async for batch in batches:
                entry = (batch.snapshot or {}).get(name)
                if entry is not None:
                    batch.progress = progress.update(int(entry.get("copied", 0)), entry["done"])
                elif batch.key_range is not None:
                    copied = int(current.get("copied", 0)) + batch.events
                    batch.progress = progress.update(copied, False)
                yield batch

        def handed(batch: Batch) -> None:
            nonlocal current
            entry = (batch.snapshot or {}).get(name)
            if batch.range_plan is not None:
                ranges = batch.range_plan.ranges
                current = {**(entry or current), "pending": [[r.seq, r.lo, r.hi] for r in ranges]}
            elif batch.key_range is not None:
                seq = batch.key_range.seq
                current["pending"] = [p for p in current.get("pending", []) if p[0] != seq]
                current["copied"] = int(current.get("copied", 0)) + batch.events
            elif entry is not None:
                current = dict(entry)

        await self._from_source(source, queue, produce, handed)

    async def _read(self, source: Source, queue: asyncio.Queue[Any], cp: Checkpoint) -> None:
        policy = self.schema.warp.history_lost_policy
        plan = cp.snapshot
        token = cp.resume_token
        source.seed_version(cp.version)
        if token is None:  # first start (an empty plan is a plan: never re-plan over a gap)
            ahead = self._ahead
            if ahead is not None:  # recorded before the fence, nothing written since
                reset = await self._plan(source, sweep=False, ahead=ahead)
            else:
                reset = await self._source_call(lambda: self._plan(source, sweep=False))
            await self._put(queue, reset)
            plan, token = reset.snapshot or {}, dict(reset.token) if reset.token else None
        while not self.stop.is_set():
            await self._snapshot(source, queue, plan)
            if self.stop.is_set():
                return
            try:
                await self._stream(source, queue, token)
                return
            except ResumeTokenLost as exc:
                metrics.HISTORY_LOST.labels(self.schema.name).inc()
                if policy == "fail":
                    pg = self.source_side == "postgresql"
                    raise ResumeTokenLost(
                        f"schema {self.schema.name!r}: the "
                        + ("replication slot" if pg else "change stream")
                        + f" cannot resume from the stored position ({exc}); nothing was "
                        "applied past the checkpoint",
                        hint="set warp.history_lost_policy: resnapshot to copy the "
                        + ("tables" if pg else "collections")
                        + " again (rows deleted meanwhile are tombstoned), or "
                        + (
                            "raise max_slot_wal_keep_size on the source"
                            if pg
                            else "raise the oplog size"
                        ),
                    ) from exc
                log.warning("warp.history_lost.resnapshot", error=str(exc)[:300])
                self.summary.resnapshots += 1
                reset = await self._source_call(lambda: self._plan(source, sweep=True))
                for name in sorted(source.known - set(reset.snapshot or {})):
                    # gone while the history was lost: nothing of it is live any more
                    reset.wipes.append(Wipe(name, int(reset.version or 0), "sweep"))
                await self._put(queue, reset)
                plan, token = reset.snapshot or {}, dict(reset.token) if reset.token else None

    async def _stream(
        self, source: Source, queue: asyncio.Queue[Any], token: dict[str, Any] | None
    ) -> None:
        self._read_token = dict(token) if token else None
        await self._from_source(source, queue, lambda: source.stream(self._read_token, self.stop))

    # ------------------------------------------------------------------ control

    async def _watch_stop(self, source: Source, queue: asyncio.Queue[Any]) -> None:
        reads = source.reads
        while not self.stop.is_set():
            await asyncio.sleep(0.2)
            self.health.beat_at = time.monotonic()
            if source.reads != reads:  # the source answered (an event, or an idle poll)
                reads = source.reads
                self.health.progress()
            if self.observer.should_stop():
                self.summary.stop_reason = self.summary.stop_reason or "requested"
                self.stop.set()
            idle = source.idle_since
            if (
                self.stop_when_idle is not None
                and idle is not None
                and time.monotonic() - idle >= self.stop_when_idle
                and queue.empty()
                and not self._writer_busy
            ):
                self.summary.stop_reason = "idle"
                self.stop.set()

    async def run(self) -> RunSummary:
        started = self.summary.started = time.perf_counter()
        self.summary.cpu_started = time.process_time()
        name = self.schema.name
        with bind_context(schema=name, run_id=self.run_id):
            sink = Sink(
                self.pg_url,
                self.schema,
                owner=_owner(),
                timeout=self.settings.destination.connect_timeout_seconds,
                command_timeout=self.settings.destination.command_timeout_seconds,
            )
            self.sink = sink
            try:
                cp, source = await self._connect(sink)
                self.health.checkpointed = cp.resume_token is not None
                # in a worker thread while the snapshot's first reads wait for the source
                loading = asyncio.create_task(asyncio.to_thread(metrics.load))
                try:
                    self.source = source
                    source.known.update(sink._tables)
                    await self._pipeline(sink, source, cp)
                finally:
                    if self._ahead is not None:
                        await self._ahead.close()  # copies the plan did not take
                        self._ahead = None
                    await source.close()
                    # a failed load raises again where a metric is next used: not here,
                    # over what ended the pipeline
                    with contextlib.suppress(Exception):
                        await loading
                self.summary.checkpoint = await sink.checkpoint()
            except _Stopped:  # stopped while a retry paused: what was applied stays, no error
                self.summary.stop_reason = self.summary.stop_reason or "stopped"
                log.info("warp.stopped_while_retrying", retries=self.summary.retries)
            except BaseException as exc:
                self.health.stopped = type(exc).__name__
                raise
            finally:
                await sink.close()
        self.health.stopped = self.health.stopped or "done"
        self.summary.seconds = time.perf_counter() - started
        self.summary.stop_reason = self.summary.stop_reason or "stopped"
        log.info(
            "warp.stopped",
            schema=name,
            reason=self.summary.stop_reason,
            applied=self.summary.total_applied,
            batches=self.summary.batches,
        )
        return self.summary

    async def _connect(self, sink: Sink) -> tuple[Checkpoint, Source]:
        """The source, then the warehouse (control tables, fence, checkpoint).

        A MongoDB source is read ahead in between (:mod:`cartridge_dagster.warp.readahead`):
        its position and collections are recorded and the first pages asked for before the
        warehouse's driver is even imported, so the source reads them while warp connects to
        the warehouse and takes the fence. What the checkpoint then says decides whether they
        are used (a first start: :meth:`_read`) or dropped; reading writes nothing, and
        nothing is written before the fence is held. The metrics are loaded after
        (:meth:`run`)."""
        opening = asyncio.create_task(self._open_source())
        source: Source | None = None
        try:
            if self.source_side == "mongodb":
                source = await opening
                self._ahead = await read_ahead(
                    source,
                    parallel=self.schema.warp.snapshot_parallel_collections,
                    stop=self.stop,
                )
                cp = await self._warehouse(sink)
                drop = getattr(source, "drop_early", None)  # reads no copy took (warp.early)
                if drop is not None:
                    await drop()
            else:  # the two connections' round trips overlap
                cp = await self._warehouse(sink)
                source = await opening
        except BaseException:
            opening.cancel()
            with contextlib.suppress(BaseException):
                source = await opening
            if source is not None:
                await self._drop_ahead(source, "the warehouse or the fence failed")
                await source.close()
            raise
        if cp.resume_token is not None:  # a restart: the checkpoint's plan goes on
            await self._drop_ahead(source, "the checkpoint holds a plan")
        return cp, source

    async def _warehouse(self, sink: Sink) -> Checkpoint:
        """Control tables, fence, checkpoint (retried when transient)."""
        async for attempt in self._retrying("postgres", is_transient):
            with attempt:
                await sink.setup()
                return await sink.acquire()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _drop_ahead(self, source: Source, reason: str) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            with contextlib.suppress(Exception):  # a source that failed meanwhile: closed next
                await ahead.discard(source, reason)

    def _range_sinks(self, sink: Sink) -> list[Sink]:
        """The range writers' sinks: the main one's epoch and tables, their own connections
        (opened at their first range: a source that plans no ranges opens none)."""
        out = []
        for _ in range(max(1, self.schema.warp.snapshot_writers)):
            other = Sink(
                sink.url,
                self.schema,
                owner=sink.owner,
                timeout=sink.timeout,
                command_timeout=sink.command_timeout,
            )
            other.epoch = sink.epoch
            other._tables = sink._tables
            other._history = sink._history
            out.append(other)
        return out

    async def _pipeline(self, sink: Sink, source: Source, cp: Checkpoint) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.schema.batching.queue_max_batches)
        writer = asyncio.create_task(self._write(sink, queue), name=f"warp-writer-{cp.schema_name}")
        range_sinks = self._range_sinks(sink)
        range_writers = [
            asyncio.create_task(self._write_ranges(s), name=f"warp-range-writer-{i}")
            for i, s in enumerate(range_sinks)
        ]
        writers = {writer, *range_writers}
        reader = asyncio.create_task(
            self._read(source, queue, cp), name=f"warp-reader-{cp.schema_name}"
        )
        watcher = asyncio.create_task(self._watch_stop(source, queue))
        try:
            done, _ = await asyncio.wait({reader, *writers}, return_when=asyncio.FIRST_COMPLETED)
            ended = done & writers
            if ended:
                # A writer only ends early on an error: stop reading and report it.
                self.stop.set()
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                for task in ended:
                    task.result()
                return
            exc = reader.exception()
            if isinstance(exc, _Stopped):  # stopped while the source was retried: what was
                exc = None  # read is queued, and applied below as at any stop
            if exc is not None:
                self.stop.set()
                self.summary.stop_reason = f"error: {type(exc).__name__}"
                for task in writers:
                    task.cancel()
                for task in writers:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                raise exc
            # drain what was queued, then stop
            for _ in range_writers:
                await self._ranges.put(_END)
            await queue.put(_END)
            await asyncio.gather(*range_writers)
            await writer
        finally:
            watcher.cancel()
            for task in (reader, *writers, watcher):
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for other in range_sinks:
                await other.close()


async def run_schemas(
    settings: CartridgeSettings,
    schemas: list[SchemaConfig],
    *,
    stop: asyncio.Event,
    stop_when_idle: float | None = None,
    observer: RunObserver | None = None,
    health: HealthState | None = None,
    early: EarlyRead | None = None,
) -> list[RunSummary]:
    """Run several schemas in one process (``mode: multi``); the first terminal error stops all.
    ``health``: each runner's probe is watched there as ``warp/<schema>``; ``early``: reads
    ``warp run`` made for one of them while it validated the settings (``warp.early``)."""
    runners = [
        WarpRunner(
            settings,
            s,
            stop=stop,
            stop_when_idle=stop_when_idle,
            observer=observer,
            early=early if early is not None and early.plan.schema == s.name else None,
        )
        for s in schemas
    ]
    if health is not None:
        for r in runners:
            health.watch(f"warp/{r.schema.name}", r.health.probe)
    if len(runners) == 1:
        return [await runners[0].run()]
    # Each runner has its own idle rule; share the stop event only for external stops.
    for r in runners:
        r.stop = asyncio.Event()

    async def relay() -> None:
        await stop.wait()
        for r in runners:
            r.stop.set()

    relay_task = asyncio.create_task(relay())
    tasks = [asyncio.create_task(r.run(), name=f"warp-{r.schema.name}") for r in runners]
    try:
        pending: set[asyncio.Task[RunSummary]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            if any(t.exception() is not None for t in done):
                for r in runners:  # one schema failed: stop the others cleanly
                    r.stop.set()
                await asyncio.wait(pending)
                break
    finally:
        relay_task.cancel()
    errors = [t.exception() for t in tasks if t.done() and t.exception() is not None]
    if errors:
        first = errors[0]
        assert first is not None
        if isinstance(first, CartridgeError):
            raise first
        raise TerminalError(f"warp failed: {type(first).__name__}: {first}") from first
    return [t.result() for t in tasks]
