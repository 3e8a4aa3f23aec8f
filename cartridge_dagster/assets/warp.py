"""Warp in Dagster: ``raw/<S>/<C>`` asset specs, the long-lived ``warp_<S>`` job, checks.

Per configured schema S:

- ``raw/<S>/<C>`` for each known collection (``state.known_collections``): asset *specs*,
  landed by warp, not materialized by Dagster directly; they depend on ``cartridge/<S>/schema``.
- job ``warp_<S>``: one op running the warp core as one long-lived run. It logs throttled
  ``AssetMaterialization``s for ``raw/<S>/<C>`` (events applied, lag, dead letters) so dbt
  assets downstream can be automated on them, and stops cleanly when the run is canceled or its
  worker receives SIGINT/SIGTERM (the checkpoint is written in the same transaction as the data,
  so it is always consistent); either way the run ends CANCELED, with no failure or traceback.
  Run tags: ``cartridge/warp_schema`` (the instance allows one run per value) and
  ``dagster-k8s/config`` with the schema's ``k8s_resources`` (one pod per schema).
- sensor ``warp_<S>_supervisor`` (see :mod:`cartridge_dagster.sensors.warp`).
- asset checks per raw table: lag under ``warp.lag_threshold_seconds``; no pending dead letters;
  PostgreSQL sources: the replication slot exists, is valid and holds less unconfirmed WAL than
  ``warp.slot_lag_threshold_bytes`` (``slot_lag_under_threshold``). They run by declarative
  automation when rows land and on the full-profile cron
  (:func:`cartridge_dagster.sensors.automation.raw_check_condition`).
"""

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dagster as dg

from cartridge_dagster.assets.keys import group_name, raw_key, schema_key
from cartridge_dagster.assets.stopping import end_canceled, report_canceling, signals_taken
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.deploy.k8s import warp_run_tags as deploy_warp_run_tags
from cartridge_dagster.errors import CartridgeError, redact_url
from cartridge_dagster.landing import raw_table_name
from cartridge_dagster.observability import MetricsServer, get_logger
from cartridge_dagster.resources.warp import WarpResource
from cartridge_dagster.runtime import gc_tuning_enabled, young_gc_threshold
from cartridge_dagster.scope import BuildScope, building, current_scope
from cartridge_dagster.sensors.automation import raw_check_condition
from cartridge_dagster.sensors.warp import build_warp_supervisor, warp_job_name
from cartridge_dagster.state import known_collections
from cartridge_dagster.warp.runner import RunSummary, WarpRunner
from cartridge_dagster.warp.sink import Batch, BatchResult

__all__ = ["DagsterObserver", "WarpRunConfig", "build_warp_defs", "warp_run_tags"]


log = get_logger("cartridge.warp.dagster")


class WarpRunConfig(dg.Config):  # type: ignore[misc]
    stop_when_idle_seconds: float | None = None
    """Stop after this many idle seconds (tests, one-off catch-up runs); None runs until
    canceled."""


def warp_run_tags(schema: SchemaConfig) -> dict[str, Any]:
    """The concurrency key and the run pod's spec (requests/limits, metrics port, ``/health``
    probes, Prometheus annotations) from the same renderer as ``cartridge deploy render``."""
    return {**deploy_warp_run_tags(schema), "cartridge/kind": "warp"}


class DagsterObserver:
    """Turns warp batches into throttled materializations; asks to stop on cancellation.

    Materializations are written to the instance's event log by one background thread, in
    order: a write is a storage round trip (~10 ms on SQLite here) that would otherwise stall
    warp's event loop, reader and writer alike. ``close`` waits for them; the final ``flush``
    writes directly."""

    def __init__(
        self,
        context: dg.OpExecutionContext,
        schema: SchemaConfig,
        *,
        interval: float,
        cancel_poll_seconds: float = 1.0,
        open_letters: Callable[[], "WarehouseCounts"] | None = None,
        source_lag: Callable[[], dict[str, float]] | None = None,
        scope: BuildScope | None = None,
    ) -> None:
        self.context = context
        #: The build's scope (key prefix): materializations name the keys the graph declares.
        self.scope = scope or current_scope()
        #: Open dead letters and value-policy counts per collection, read when emitting.
        self.open_letters = open_letters
        #: The source's own lag (PostgreSQL: the replication slot's), read when emitting.
        self.source_lag = source_lag
        self.schema = schema
        self.interval = interval
        self.cancel_poll = cancel_poll_seconds
        self.pending: Counter[str] = Counter()
        self.pending_dead: Counter[str] = Counter()
        #: The latest snapshot progress per table (see ``Batch.progress``).
        self.progress: dict[str, dict[str, Any]] = {}
        self.total: Counter[str] = Counter()
        self.last_emit: dict[str, float] = {}
        self.lag: float | None = None
        self.materializations = 0
        self._stop = False
        self._stop_logged = False
        #: The signal that stopped the run worker (``"SIGTERM"``), None if none did.
        self.signal: str | None = None
        self._closed = threading.Event()
        self._poller: threading.Thread | None = None
        self._emitter: ThreadPoolExecutor | None = None

    def on_batch(self, schema: str, batch: Batch, result: BatchResult) -> None:
        if batch.progress is not None and batch.snapshot:
            for table in batch.snapshot:
                self.progress[table] = batch.progress
                self.pending[table] += 0  # a progress report is worth a materialization
        self.pending.update(result.applied)
        self.pending_dead.update(result.dead_letters)
        for name in result.wiped:
            self.pending[name] += 0
        if batch.kind == "stream" and batch.events:
            self.lag = max(0.0, time.time() - batch.read_at)
            if batch.source_ts is not None:
                self.lag = max(self.lag, time.time() - batch.source_ts.timestamp())
        self.flush(force=False)

    def flush(self, *, force: bool = True) -> None:
        """Emit what is pending: throttled per table unless ``force``. A forced flush (the end
        of the run) writes in the calling thread; throttled ones go to the emitter thread."""
        events = self._due(force=force)
        if not events:
            return
        self.materializations += len(events)
        if force or self._closed.is_set():
            self._emit(events)
            return
        if self._emitter is None:
            self._emitter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warp-mat")
        self._emitter.submit(self._emit, events).add_done_callback(self._emitted)

    def _emit(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        counts: WarehouseCounts | None = None
        if self.open_letters is not None:
            try:
                counts = self.open_letters()
            except Exception as exc:  # noqa: BLE001 - the counts are a report; the data is landed
                log.warning("warp.warehouse_counts.failed", error=f"{type(exc).__name__}: {exc}")
        for table, metadata in events:
            if counts is not None:
                pending, parked = counts.letters.get(table, (0, 0))
                metadata["dead_letters_pending"] = dg.MetadataValue.int(pending)
                metadata["dead_letters_parked"] = dg.MetadataValue.int(parked)
                changed = counts.policies.get(table, {})
                metadata["value_policy_changes"] = dg.MetadataValue.int(
                    sum(sum(paths.values()) for paths in changed.values())
                )
                if changed:  # {policy: {field path: count}}: what landed differently
                    metadata["value_policies"] = dg.MetadataValue.json(changed)
            with building(self.scope):
                key = raw_key(self.schema.name, table)
            self.context.log_event(dg.AssetMaterialization(asset_key=key, metadata=metadata))

    @staticmethod
    def _emitted(future: Future[None]) -> None:
        exc = future.exception()
        if exc is not None:  # the data and checkpoint are committed; only the report is lost
            log.warning("warp.materialization.failed", error=f"{type(exc).__name__}: {exc}")

    def _due(self, *, force: bool) -> list[tuple[str, dict[str, Any]]]:
        events: list[tuple[str, dict[str, Any]]] = []
        now = time.monotonic()
        for table in sorted(set(self.pending) | set(self.pending_dead)):
            if not force and now - self.last_emit.get(table, 0.0) < self.interval:
                continue
            applied = self.pending.pop(table, 0)
            dead = self.pending_dead.pop(table, 0)
            self.total[table] += applied
            self.last_emit[table] = now
            metadata: dict[str, Any] = {
                "events_applied": dg.MetadataValue.int(applied),
                "events_applied_total": dg.MetadataValue.int(self.total[table]),
                "dead_letters": dg.MetadataValue.int(dead),
                "table": dg.MetadataValue.text(f"{self.schema.raw_schema}.{raw_table_name(table)}"),
            }
            if self.lag is not None:
                metadata["lag_seconds"] = dg.MetadataValue.float(round(self.lag, 3))
            slot = self.source_lag() if self.source_lag is not None else {}
            if slot:
                metadata["slot_lag_bytes"] = dg.MetadataValue.int(int(slot.get("bytes", 0)))
                metadata["slot_lag_seconds"] = dg.MetadataValue.float(
                    round(float(slot.get("seconds", 0.0)), 3)
                )
            progress = self.progress.get(table)
            if progress is not None:  # the copy of the snapshot: how far, how fast, how long
                metadata["snapshot_copied"] = dg.MetadataValue.int(int(progress["copied"]))
                if progress.get("total") is not None:
                    metadata["snapshot_total"] = dg.MetadataValue.int(int(progress["total"]))
                metadata["snapshot_rows_per_s"] = dg.MetadataValue.float(progress["rows_per_s"])
                if progress.get("eta_s") is not None:
                    metadata["snapshot_eta_seconds"] = dg.MetadataValue.float(progress["eta_s"])
                metadata["snapshot_done"] = dg.MetadataValue.bool(bool(progress["done"]))
                if progress["done"]:
                    self.progress.pop(table, None)
            events.append((table, metadata))
        return events

    def should_stop(self) -> bool:
        """Whether the run was canceled. The run storage is polled by a daemon thread, so the
        query never stalls warp's event loop."""
        if self._poller is None:
            self._poller = threading.Thread(
                target=self._poll_cancellation, name="warp-cancel-poll", daemon=True
            )
            self._poller.start()
        if self._stop and not self._stop_logged:
            self._stop_logged = True
            why = f"{self.signal} received" if self.signal else "run cancellation requested"
            self.context.log.info(f"{why}: stopping warp cleanly")
        return self._stop

    def interrupted(self, signame: str) -> None:
        """A stop signal reached the run worker: warp stops as on cancellation (the batch in
        flight is committed with its checkpoint, nothing after it is read)."""
        self.signal = self.signal or signame
        self._stop = True

    def _poll_cancellation(self) -> None:
        while not self._stop and not self._closed.wait(self.cancel_poll):
            try:
                run = self.context.instance.get_run_by_id(self.context.run_id)
            except Exception as exc:  # noqa: BLE001 - a storage hiccup must not end the poller
                log.warning("warp.cancel_poll.failed", error=f"{type(exc).__name__}: {exc}")
                continue
            if run is not None and run.status in (
                dg.DagsterRunStatus.CANCELING,
                dg.DagsterRunStatus.CANCELED,
            ):
                self._stop = True

    def close(self) -> None:
        """Stop polling and wait for the materializations already handed to the emitter."""
        self._closed.set()
        if self._emitter is not None:
            self._emitter.shutdown(wait=True)
        if self._poller is not None:
            self._poller.join(timeout=5)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def _run_until_signaled(runner: WarpRunner, observer: DagsterObserver) -> RunSummary:
    """``runner.run()`` with SIGINT/SIGTERM turned into warp's clean stop for its duration.

    Dagster's run worker maps both signals to an exception raised wherever the op happens to be
    (``DagsterExecutionInterruptedError``), which would fail the step mid-batch and the run
    with it. While warp runs, the event loop takes the signals instead and asks the runner to
    stop; Dagster's handlers are put back afterwards, so a second signal after that interrupts
    as usual. Outside the main thread (an in-process test) signals cannot be taken: unchanged."""
    loop = asyncio.get_running_loop()
    taken: list[tuple[signal.Signals, Any]] = []
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            previous = signal.getsignal(sig)
            loop.add_signal_handler(sig, observer.interrupted, sig.name)
            taken.append((sig, signal.SIG_DFL if previous is None else previous))
    try:
        return await runner.run()
    finally:
        for sig, previous in taken:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous)


def _redacted_failure(exc: Exception) -> dg.Failure:
    """``exc`` as a ``dg.Failure`` that carries no credentials into the event log: Dagster
    stores an op's exception with its whole cause chain, and a driver's message can hold a URL
    with its password. The message and the (redacted) traceback are kept for the reader."""
    import traceback

    message = redact_url(f"{type(exc).__name__}: {exc}")
    hint = getattr(exc, "hint", None)
    if isinstance(exc, CartridgeError):
        message = redact_url(str(exc)) + (f" ({redact_url(hint)})" if hint else "")
    trace = redact_url("".join(traceback.format_exception(exc)))
    return dg.Failure(description=message, metadata={"traceback": dg.MetadataValue.text(trace)})


@dataclass
class WarehouseCounts:
    """Per collection: open dead letters ``(pending, parked)``, and what the value policies
    changed ``{policy: {field path: count}}``."""

    letters: dict[str, tuple[int, int]]
    policies: dict[str, dict[str, dict[str, int]]]


class DeadLetterCounts:
    """:class:`WarehouseCounts` read from the warehouse on the materialization thread (two
    short queries per emit, one connection kept)."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self._conn: Any = None

    def __call__(self) -> WarehouseCounts:
        import psycopg2

        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.url, connect_timeout=5)
            self._conn.autocommit = True
        with self._conn.cursor() as cur:
            cur.execute(
                "SELECT collection, count(*) FILTER (WHERE status = 'pending'), "
                "count(*) FILTER (WHERE status = 'parked') FROM cartridge_warp.dead_letters "
                "WHERE schema_name = %s AND status IN ('pending', 'parked') GROUP BY collection",
                (self.schema,),
            )
            letters = {str(c): (int(p), int(k)) for c, p, k in cur.fetchall()}
            cur.execute(
                "SELECT collection, policy, path, n FROM cartridge_warp.policy_counts "
                "WHERE schema_name = %s",
                (self.schema,),
            )
            policies: dict[str, dict[str, dict[str, int]]] = {}
            for collection, policy, path, n in cur.fetchall():
                policies.setdefault(str(collection), {}).setdefault(str(policy), {})[str(path)] = (
                    int(n)
                )
        return WarehouseCounts(letters, policies)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _warp_job(schema: SchemaConfig) -> dg.JobDefinition:
    name = warp_job_name(schema.name)
    scope = current_scope()

    @dg.op(name=f"{name}_run", description=f"Run warp for schema `{schema.name}` until stopped.")
    def run_warp(context: dg.OpExecutionContext, config: WarpRunConfig, warp: WarpResource) -> None:
        # a stop signal while warp starts (before its event loop takes the signals) is kept
        # and handed to the observer: warp then stops at once, cleanly, instead of the step
        # being interrupted wherever it is
        early: list[str] = []
        started: list[DagsterObserver] = []

        def on_signal(name: str) -> None:
            early.append(name)
            for observer in started:
                observer.interrupted(name)

        with signals_taken(on_signal):
            observer, runner, server, counts = _start_warp(context, config, warp)
            started.append(observer)
            if early:
                observer.interrupted(early[0])
            _drive_warp(context, schema, observer, runner, server, counts)

    def _start_warp(
        context: dg.OpExecutionContext, config: WarpRunConfig, warp: WarpResource
    ) -> tuple[DagsterObserver, Any, MetricsServer | None, DeadLetterCounts]:
        settings = warp.settings()
        cfg = settings.get_schema(schema.name)
        counts = DeadLetterCounts(settings.destination_url(), schema.name)
        observer = DagsterObserver(
            context,
            cfg,
            interval=cfg.warp.materialization_interval_seconds,
            open_letters=counts,
            scope=scope,
        )
        runner = warp.runner(
            schema.name,
            stop_when_idle=config.stop_when_idle_seconds,
            observer=observer,
            run_id=context.run_id,
        )
        observer.source_lag = lambda: dict(getattr(runner.source, "slot_lag", None) or {})
        server: MetricsServer | None = None
        if cfg.warp.metrics_port:
            # In a pod, set CARTRIDGE_METRICS_HOST=0.0.0.0 so Prometheus and probes reach it.
            host = os.environ.get("CARTRIDGE_METRICS_HOST", "127.0.0.1")
            try:
                server = MetricsServer(cfg.warp.metrics_port, host=host).start()
            except OSError as exc:
                context.log.warning(
                    f"metrics disabled: port {cfg.warp.metrics_port} is busy ({exc.strerror})"
                )
        return observer, runner, server, counts

    def _drive_warp(
        context: dg.OpExecutionContext,
        schema: SchemaConfig,
        observer: DagsterObserver,
        runner: Any,
        server: MetricsServer | None,
        counts: DeadLetterCounts,
    ) -> None:
        try:
            if server is not None:
                server.health.watch(f"warp/{schema.name}", runner.health.probe)
            with young_gc_threshold() if gc_tuning_enabled() else contextlib.nullcontext():
                summary = asyncio.run(_run_until_signaled(runner, observer))
        except Exception as exc:  # noqa: BLE001 - re-raised as a Failure without secrets
            raise _redacted_failure(exc) from None
        finally:
            observer.close()
            if server is not None:
                server.stop()
        observer.flush(force=True)
        counts.close()
        cp = summary.checkpoint
        context.log.info(
            f"warp {schema.name} stopped ({summary.stop_reason}): {summary.total_applied} "
            f"changes applied in {summary.batches} batches ({summary.seconds:.2f}s, "
            f"busy {summary.busy_seconds:.2f}s, cpu {summary.busy_cpu_seconds:.2f}s), "
            f"{sum(summary.dead_letters.values())} dead letters, checkpoint version "
            f"{cp.version if cp else '-'}"
        )
        if observer.signal is not None:
            report_canceling(
                context, f"{observer.signal} received by the run worker: warp stopped cleanly"
            )

    @dg.job(
        name=name,
        tags=warp_run_tags(schema),
        executor_def=dg.in_process_executor,
        hooks={end_canceled},
        description=f"Long-lived CDC run for schema `{schema.name}` (one per schema).",
    )
    def warp_job() -> None:
        run_warp()

    return warp_job


def _raw_specs(settings: CartridgeSettings, schema: SchemaConfig) -> list[dg.AssetSpec]:
    return [
        dg.AssetSpec(
            raw_key(schema.name, collection),
            deps=[schema_key(schema.name)],
            group_name=group_name(schema.name),
            kinds={"postgres"},
            description=(
                f"Raw landing table `{schema.raw_schema}.{raw_table_name(collection)}` for "
                f"collection `{collection}`, kept current by the `{warp_job_name(schema.name)}` "
                "run (JSONB documents, versions, tombstones)."
            ),
            metadata={
                "table": f"{schema.raw_schema}.{raw_table_name(collection)}",
                "source": f"{schema.source_database}.{collection}",
            },
            tags={"cartridge/schema": schema.name},
        )
        for collection in known_collections(settings, schema.name)
    ]


def _checks(
    schema: SchemaConfig, keys: list[dg.AssetKey], *, slot: bool = False
) -> dg.AssetChecksDefinition | None:
    if not keys:
        return None
    names = ["lag_under_threshold", "no_dead_letters"]
    if slot:  # a PostgreSQL source: its replication slot
        names.append("slot_lag_under_threshold")
    condition = raw_check_condition(schema)
    specs = [
        dg.AssetCheckSpec(name, asset=key, automation_condition=condition)
        for key in keys
        for name in names
    ]

    @dg.multi_asset_check(specs=specs, name=f"warp_{schema.name}_checks", can_subset=True)
    def warp_checks(context: dg.AssetCheckExecutionContext, warp: WarpResource) -> Any:
        from cartridge_dagster.warp.admin import schema_status

        settings = warp.settings()
        cfg = settings.get_schema(schema.name)
        status = asyncio.run(schema_status(settings.destination_url(), cfg))
        by_table = {t.collection: t for t in status.tables}
        threshold = cfg.warp.lag_threshold_seconds
        slot_check: Any = None
        for key in context.selected_asset_check_keys:
            collection = key.asset_key.path[-1]
            table = by_table.get(collection)
            if key.name == "slot_lag_under_threshold":
                from cartridge_dagster.warp.pg_source import check_slot

                if slot_check is None:  # one look at the slot for all tables
                    slot_check = asyncio.run(
                        check_slot(settings.source_url(cfg), cfg, expected=status.exists)
                    )
                yield dg.AssetCheckResult(
                    asset_key=key.asset_key,
                    check_name=key.name,
                    passed=slot_check.passed,
                    metadata=slot_check.metadata(),
                    description=slot_check.reason,
                )
            elif key.name == "lag_under_threshold":
                lag = table.lag_seconds if table else None
                yield dg.AssetCheckResult(
                    asset_key=key.asset_key,
                    check_name=key.name,
                    passed=lag is None or lag <= threshold,
                    metadata={
                        "lag_seconds": dg.MetadataValue.float(float(lag or 0.0)),
                        "threshold_seconds": dg.MetadataValue.float(threshold),
                    },
                )
            else:
                dead = table.dead_letters if table else 0
                parked = table.parked if table else 0
                yield dg.AssetCheckResult(
                    asset_key=key.asset_key,
                    check_name=key.name,
                    passed=dead == 0 and parked == 0,
                    metadata={
                        "pending_dead_letters": dg.MetadataValue.int(dead),
                        "parked_dead_letters": dg.MetadataValue.int(parked),
                    },
                    description=(
                        None
                        if dead == 0 and parked == 0
                        else "see `cartridge warp dlq list`; fix and `cartridge warp dlq replay` "
                        "(parked letters failed replay dead_letter.max_attempts times)"
                    ),
                )

    return warp_checks


def build_warp_defs(settings: CartridgeSettings) -> dg.Definitions:
    assets: list[dg.AssetSpec] = []
    jobs: list[dg.JobDefinition] = []
    sensors: list[dg.SensorDefinition] = []
    checks: list[dg.AssetChecksDefinition] = []
    for schema in settings.schemas:
        specs = _raw_specs(settings, schema)
        assets.extend(specs)
        job = _warp_job(schema)
        jobs.append(job)
        sensors.append(build_warp_supervisor(schema, job))
        check = _checks(
            schema, [s.key for s in specs], slot=settings.source_for(schema).type == "postgresql"
        )
        if check is not None:
            checks.append(check)
    return dg.Definitions(assets=assets, jobs=jobs, sensors=sensors, asset_checks=checks)
