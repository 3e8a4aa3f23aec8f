"""Core commands: validate, services, demo, docs."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cartridge_dagster.cli.common import ConfigOption, console, load, run_async
from cartridge_dagster.config import load_settings
from cartridge_dagster.errors import ConfigError
from cartridge_dagster.services.postgres import LocalPostgres

StateDir = Annotated[
    Path, typer.Option("--state-dir", help="Where local services keep their data.")
]


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    services = typer.Typer(help="Local services (a real PostgreSQL) for development and tests.")
    services.command("up")(services_up)
    services.command("down")(services_down)
    services.command("status")(services_status)
    services.command("url")(services_url)
    app.add_typer(services, name="services")
    demo = typer.Typer(help="The embedded demo source.")
    demo.command("seed")(demo_seed)
    demo.command("traffic")(demo_traffic)
    app.add_typer(demo, name="demo")
    docs = typer.Typer(help="Generated documentation.")
    docs.command("config")(docs_config)
    app.add_typer(docs, name="docs")


def validate(
    config: ConfigOption = None,
    check_connections: Annotated[
        bool, typer.Option("--check-connections", help="Also connect to source and destination.")
    ] = False,
) -> None:
    """Validate a configuration file (and, optionally, reach its databases)."""
    settings = load_settings(config)
    table = Table(title="configuration", show_header=True)
    table.add_column("schema")
    table.add_column("source database")
    table.add_column("raw tables in")
    table.add_column("collections")
    for schema in settings.schemas:
        scope = ", ".join(schema.include) if schema.include else "all"
        if schema.exclude:
            scope += f" (except {', '.join(schema.exclude)})"
        table.add_row(schema.name, schema.source_database, schema.raw_schema, scope)
    console.print(table)
    console.print(f"source: {settings.source.display_url()}")
    console.print(f"destination: {settings.destination.display_url(settings.state_path)}")
    console.print(f"mode: {settings.mode}")
    if check_connections:
        from cartridge_dagster.connectors.mongo import mongo_session
        from cartridge_dagster.connectors.postgres import pg_connection

        async def probe() -> None:
            async with mongo_session(
                settings.source.url(), timeout_seconds=settings.source.connect_timeout_seconds
            ):
                pass
            async with pg_connection(
                settings.destination_url(),
                timeout=settings.destination.connect_timeout_seconds,
            ) as conn:
                await conn.fetchval("SELECT 1")

        run_async(probe())
        console.print("connections: [green]ok[/]")
    console.print("[bold green]valid[/]")


def _pg(state_dir: Path, ephemeral: bool = False) -> LocalPostgres:
    return LocalPostgres(
        state_dir / "postgres", durable=not ephemeral, preferred_port=None if ephemeral else 55432
    )


def services_up(
    state_dir: StateDir = Path(".cartridge"),
    ephemeral: Annotated[
        bool, typer.Option("--ephemeral", help="Any free port, no fsync (tests).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Start the local PostgreSQL (idempotent)."""
    status = _pg(state_dir, ephemeral).up()
    if not quiet:
        console.print(f"postgresql: [green]running[/] on 127.0.0.1:{status.port} ({status.url})")


def services_down(
    state_dir: StateDir = Path(".cartridge"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Stop the local PostgreSQL."""
    was = _pg(state_dir).down()
    if not quiet:
        console.print("postgresql: stopped" if was else "postgresql: was not running")


def services_status(
    state_dir: StateDir = Path(".cartridge"),
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show whether the local PostgreSQL runs, and where."""
    status = _pg(state_dir).status()
    if as_json:
        console.print_json(json.dumps(status.as_dict()))
        return
    state = "[green]running[/]" if status.running else "[yellow]stopped[/]"
    console.print(f"postgresql: {state}  port={status.port}  data={status.data_dir}")
    if not status.running:
        raise typer.Exit(1)


def services_url(state_dir: StateDir = Path(".cartridge")) -> None:
    """Print the local PostgreSQL URL (for scripts)."""
    typer.echo(_pg(state_dir).require_url())


def demo_seed(
    config: ConfigOption = None,
    scale: Annotated[float, typer.Option(help="Size multiplier (1.0 ≈ 32,500 documents).")] = 1.0,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same documents.")] = 42,
    if_empty: Annotated[
        bool,
        typer.Option(
            "--if-empty", help="Do nothing when the source has data (the default; for scripts)."
        ),
    ] = False,
    reset: Annotated[
        bool,
        typer.Option("--reset", help="Empty the demo collections first, then seed them again."),
    ] = False,
    schema: Annotated[str | None, typer.Option(help="Schema to seed (default: the first).")] = None,
) -> None:
    """Seed the demo source with a deterministic e-commerce dataset."""
    from cartridge_dagster.connectors.mongo import mongo_session
    from cartridge_dagster.demo.seed import DemoSizes, existing_documents, reset_demo, seed_demo

    if scale <= 0:
        raise ConfigError("--scale must be positive")
    settings = load(config)
    target = settings.get_schema(schema) if schema else settings.schemas[0]
    sizes = DemoSizes.scaled(scale)

    async def go() -> None:
        url = settings.source.url()
        async with mongo_session(url) as conn:
            db = conn.database(target.source_database)
            existing = await existing_documents(conn, db)
            if existing and not reset:  # --if-empty or not: never seed over data
                listed = ", ".join(f"{name}={n:,}" for name, n in existing.items())
                console.print(
                    f"demo source {target.source_database!r} already has data ({listed}); "
                    "not seeding (--reset empties the demo collections and seeds again)"
                )
                return
            if reset:
                removed = await reset_demo(db)
                if removed:
                    listed = ", ".join(f"{name}={n:,}" for name, n in removed.items())
                    console.print(f"emptied {listed} in {target.source_database!r}")
            with Progress(
                TextColumn("[bold]seeding[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
            ) as progress:
                task = progress.add_task(target.source_database, total=sizes.total)
                counts = await seed_demo(
                    db,
                    sizes=sizes,
                    seed=seed,
                    progress=lambda _c, n: progress.advance(task, n),
                )
        console.print(
            "seeded "
            + ", ".join(f"{name}={n}" for name, n in counts.items())
            + f" into {target.source_database!r}"
        )

    run_async(go())


def demo_traffic(
    config: ConfigOption = None,
    rate: Annotated[float, typer.Option(help="Operations per second.")] = 5.0,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    max_ops: Annotated[int | None, typer.Option(help="Stop after this many operations.")] = None,
    schema: Annotated[str | None, typer.Option(help="Schema (default: the first).")] = None,
) -> None:
    """Keep producing inserts, updates and deletes on the demo source until stopped."""
    from cartridge_dagster.connectors.mongo import mongo_session
    from cartridge_dagster.demo.traffic import run_traffic

    settings = load(config)
    target = settings.get_schema(schema) if schema else settings.schemas[0]

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with mongo_session(settings.source.url()) as conn:
            console.print(
                f"traffic on {target.source_database!r} at {rate:g} ops/s (Ctrl-C to stop)"
            )
            counts = await run_traffic(
                conn.database(target.source_database),
                rate=rate,
                duration=duration,
                max_ops=max_ops,
                stop=stop,
            )
        console.print("traffic: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))

    run_async(go())


def docs_config(
    output: Annotated[Path, typer.Option(help="Where to write the reference.")] = Path(
        "docs/configuration.md"
    ),
) -> None:
    """Write the configuration reference generated from the settings model."""
    from cartridge_dagster.config_docs import render_config_reference

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render_config_reference(), encoding="utf-8")
    console.print(f"wrote {output}")
