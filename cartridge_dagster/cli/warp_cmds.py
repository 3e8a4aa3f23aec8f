"""`cartridge warp …`: run CDC, check it, see where it is, handle dead letters."""

from __future__ import annotations

from typing import Annotated

import typer

from cartridge_dagster.cli import common, warp_run
from cartridge_dagster.cli.common import load, run_async
from cartridge_dagster.cli.options import ConfigOption
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
    # The console entry points call warp_run.run directly for a plain command line.
    warp_run.run(warp_run.RunArgs(config, mode, schema, dry_run, stop_when_idle))


def validate(config: ConfigOption = None, schema: SchemaOption = None) -> None:
    """Check that warp can run: configuration, source stream position, warehouse."""
    settings = load(config)
    warp_run.validate_schemas(
        settings, warp_run.schemas_for(settings, schema, "multi"), dry_run=False
    )


def _fmt_lag(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def status(config: ConfigOption = None, schema: SchemaOption = None) -> None:
    """Per table: position, lag, row counts and dead letters."""
    from cartridge_dagster.warp.admin import schema_status

    settings = load(config)
    for s in warp_run.schemas_for(settings, schema, "multi"):
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
    for s in warp_run.schemas_for(settings, schema, "multi"):
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
    for s in warp_run.schemas_for(settings, schema, "multi"):
        result = run_async(
            replay_dead_letters(settings.destination_url(), s, ids=ids, collection=collection)
        )
        common.console.print(
            f"{s.name}: {result.replayed} replayed, {result.superseded} superseded by newer "
            f"changes, {result.failed} failed again ({result.parked} parked)"
        )
