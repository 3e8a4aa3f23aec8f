"""`cartridge warp …`: run CDC, check it, see where it is, handle dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import Annotated, Any

import typer

from cartridge_dagster.cli import common
from cartridge_dagster.cli.common import ConfigOption, load, run_async
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.errors import ConfigError

SchemaOption = Annotated[
    str | None, typer.Option("--schema", "-s", help="Only this schema (required with single).")
]


def register(app: typer.Typer) -> None:
    """Add this capability's commands to ``app``."""
    warp = typer.Typer(
        help="Change data capture: MongoDB or PostgreSQL → PostgreSQL raw tables, exactly once."
    )
    warp.command("run")(run)
    warp.command("validate")(validate)
    warp.command("status")(status)
    warp.command("drop-slot")(drop_slot)
    dlq = typer.Typer(help="Dead letters: changes that could not be landed.")
    dlq.command("list")(dlq_list)
    dlq.command("replay")(dlq_replay)
    warp.add_typer(dlq, name="dlq")
    app.add_typer(warp, name="warp")


def _schemas(settings: CartridgeSettings, schema: str | None, mode: str) -> list[SchemaConfig]:
    if schema is not None:
        return [settings.get_schema(schema)]
    if mode == "single":
        if len(settings.schemas) == 1:
            return list(settings.schemas)
        known = ", ".join(s.name for s in settings.schemas)
        raise ConfigError(
            f"mode single runs one schema per process: pass --schema (one of {known})"
        )
    return list(settings.schemas)


def run(
    config: ConfigOption = None,
    mode: Annotated[
        str | None,
        typer.Option("--mode", help="single (one schema, Kubernetes) or multi (all schemas)."),
    ] = None,
    schema: SchemaOption = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Check source, position and warehouse; write nothing."),
    ] = False,
    stop_when_idle: Annotated[
        float | None,
        typer.Option(
            "--stop-when-idle",
            help="Stop after this many seconds without changes (snapshot done, queue empty).",
        ),
    ] = None,
) -> None:
    """Snapshot, then stream changes into PostgreSQL until stopped (SIGTERM/Ctrl-C)."""
    settings = load(config)
    chosen_mode = mode or settings.mode
    if chosen_mode not in ("single", "multi"):
        raise ConfigError(f"--mode must be single or multi, not {chosen_mode!r}")
    schemas = _schemas(settings, schema, chosen_mode)
    if dry_run:
        _validate(settings, schemas, dry_run=True)
        return
    from cartridge_dagster.observability import HealthState, MetricsServer
    from cartridge_dagster.warp.runner import run_schemas

    port = schemas[0].warp.metrics_port
    health = HealthState()
    server: Any = None
    if port:
        try:
            host = os.environ.get("CARTRIDGE_METRICS_HOST", "127.0.0.1")
            server = MetricsServer(port, host=host, health=health).start()
            common.console.print(
                f"metrics: http://127.0.0.1:{server.port}/metrics (health: /health)"
            )
        except OSError as exc:
            common.console.print(
                f"[yellow]metrics disabled: port {port} is busy ({exc.strerror})[/]"
            )

    from cartridge_dagster.runtime import gc_tuning_enabled, young_gc_threshold

    async def main() -> list[Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await run_schemas(
            settings, schemas, stop=stop, stop_when_idle=stop_when_idle, health=health
        )

    try:
        with young_gc_threshold() if gc_tuning_enabled() else contextlib.nullcontext():
            summaries = run_async(main())
    finally:
        if server is not None:
            server.stop()
    from rich.table import Table

    table = Table(title="warp", show_header=True)
    for col in ("schema", "applied", "snapshot rows", "dead letters", "batches", "stopped"):
        table.add_column(col)
    for s in summaries:
        table.add_row(
            s.schema,
            str(s.total_applied),
            str(sum(s.snapshot_rows.values())),
            str(sum(s.dead_letters.values())),
            str(s.batches),
            s.stop_reason,
        )
    common.console.print(table)


def _validate(settings: CartridgeSettings, schemas: list[SchemaConfig], *, dry_run: bool) -> None:
    from cartridge_dagster.warp.admin import validate_schema

    for s in schemas:
        for line in run_async(validate_schema(settings, s)):
            common.console.print(f"{s.name}: {line}")
    common.console.print("[green]ok[/]" + (" (dry run: nothing written)" if dry_run else ""))


def validate(config: ConfigOption = None, schema: SchemaOption = None) -> None:
    """Check that warp can run: configuration, source stream position, warehouse."""
    settings = load(config)
    _validate(settings, _schemas(settings, schema, "multi"), dry_run=False)


def _fmt_lag(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def status(config: ConfigOption = None, schema: SchemaOption = None) -> None:
    """Per table: position, lag, row counts and dead letters."""
    from cartridge_dagster.warp.admin import schema_status

    settings = load(config)
    for s in _schemas(settings, schema, "multi"):
        st = run_async(schema_status(settings.destination_url(), s))
        if not st.exists:
            common.console.print(f"{s.name}: warp has not run yet")
            continue
        common.console.print(
            f"[bold]{s.name}[/]: epoch {st.epoch}, version {st.version}, "
            f"snapshot {'done' if st.snapshot_done else 'in progress'}, "
            f"{st.events_applied} changes applied, lag {_fmt_lag(st.lag_seconds)}, "
            f"{st.dead_letters} dead letters pending, {st.parked} parked, updated {st.updated_at}"
        )
        from rich.table import Table

        table = Table(show_header=True)
        for col in (
            "collection",
            "table",
            "live",
            "deleted",
            "applied",
            "version",
            "lag",
            "dead",
            "parked",
        ):
            table.add_column(col)
        for t in st.tables:
            table.add_row(
                t.collection,
                t.table,
                str(t.live_rows),
                str(t.deleted_rows),
                str(t.events_applied),
                str(t.version),
                _fmt_lag(t.lag_seconds),
                str(t.dead_letters),
                str(t.parked),
            )
        common.console.print(table)
        for t in st.tables:
            if t.policies:
                changed = "; ".join(
                    f"{policy} {sum(paths.values())} ({', '.join(sorted(paths)[:5])}"
                    f"{', …' if len(paths) > 5 else ''})"
                    for policy, paths in t.policies.items()
                )
                common.console.print(
                    f"  {t.collection}: value policies changed: {changed}", markup=False
                )


def drop_slot(
    config: ConfigOption = None,
    schema: Annotated[str, typer.Option("--schema", "-s", help="The schema.")] = "",
) -> None:
    """PostgreSQL sources: remove the replication slot and publication warp owns for a schema
    (stop warp first; the next `warp run` then needs a new snapshot to resume)."""
    from cartridge_dagster.warp.pg_source import drop_slot as drop
    from cartridge_dagster.warp.sources import source_kind

    settings = load(config)
    if not schema:
        raise ConfigError("pass --schema: the schema whose slot to drop")
    cfg = settings.get_schema(schema)
    url = settings.source_url(cfg)
    if source_kind(url) != "postgresql":
        raise ConfigError(f"schema {schema!r} reads a MongoDB source: it has no replication slot")
    for line in run_async(drop(url, cfg)):
        common.console.print(f"{schema}: {line}")


def dlq_list(
    config: ConfigOption = None,
    schema: SchemaOption = None,
    all_statuses: Annotated[
        bool, typer.Option("--all", help="Include replayed and superseded letters.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", help="At most this many.")] = 100,
    show_event: Annotated[bool, typer.Option("--show-event", help="Print the raw event.")] = False,
) -> None:
    """List dead letters that need something (pending and parked; --all for every one)."""
    from cartridge_dagster.warp.admin import OPEN_STATUSES, list_dead_letters

    settings = load(config)
    for s in _schemas(settings, schema, "multi"):
        rows = run_async(
            list_dead_letters(
                settings.destination_url(),
                s.name,
                statuses=None if all_statuses else OPEN_STATUSES,
                limit=limit,
            )
        )
        from rich.table import Table

        table = Table(title=f"{s.name}: {len(rows)} dead letters", show_header=True)
        for col in ("id", "collection", "_id", "op", "error", "attempts", "status"):
            table.add_column(col)
        for r in rows:
            table.add_row(
                str(r["id"]),
                r["collection"],
                str(r["document_id"]),
                r["op"],
                f"{r['error_class']}: {r['error_message'][:120]}",
                str(r["attempts"]),
                r["status"],
            )
        common.console.print(table)
        if show_event:
            for r in rows:
                common.console.print(f"#{r['id']}: {r['raw_event_json'][:2000]}", markup=False)


def dlq_replay(
    config: ConfigOption = None,
    schema: SchemaOption = None,
    ids: Annotated[
        list[int] | None, typer.Option("--id", help="Only these dead letters (repeatable).")
    ] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", help="Only this collection.")
    ] = None,
) -> None:
    """Re-apply pending dead letters with the current configuration."""
    from cartridge_dagster.warp.admin import replay_dead_letters

    settings = load(config)
    for s in _schemas(settings, schema, "multi"):
        result = run_async(
            replay_dead_letters(settings.destination_url(), s, ids=ids, collection=collection)
        )
        common.console.print(
            f"{s.name}: {result.replayed} replayed, {result.superseded} superseded by newer "
            f"changes, {result.failed} failed again ({result.parked} parked)"
        )
