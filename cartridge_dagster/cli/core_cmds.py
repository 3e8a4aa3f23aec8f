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

from cartridge_dagster.cli.common import console, load, run_async
from cartridge_dagster.cli.options import ConfigOption
from cartridge_dagster.config import CartridgeSettings, SchemaConfig, load_settings
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
    console.print(f"source: {settings.source.display_url(settings.state_path)}")
    for schema in settings.schemas:
        if schema.source is not None:
            shown = schema.source.display_url(settings.state_path)
            console.print(f"source of {schema.name}: {shown}")
    console.print(f"destination: {settings.destination.display_url(settings.state_path)}")
    console.print(f"mode: {settings.mode}")
    if check_connections:
        from cartridge_dagster.connectors.mongo import mongo_session
        from cartridge_dagster.connectors.postgres import pg_connection

        async def probe() -> None:
            seen: set[str] = set()
            for schema in settings.schemas:
                source = settings.source_for(schema)
                url = settings.source_url(schema)
                if url in seen:
                    continue
                seen.add(url)
                timeout = source.connect_timeout_seconds
                if source.type == "postgresql":
                    async with pg_connection(url, timeout=timeout) as conn:
                        await conn.fetchval("SELECT 1")
                else:
                    async with mongo_session(url, timeout_seconds=timeout):
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
    schema: Annotated[
        str | None, typer.Option(help="Schema to seed (default: every configured schema).")
    ] = None,
) -> None:
    """Seed the demo sources: the e-commerce dataset into each MongoDB schema, the billing
    tables into each PostgreSQL one (deterministic)."""
    if scale <= 0:
        raise ConfigError("--scale must be positive")
    settings = load(config)
    targets = [settings.get_schema(schema)] if schema else list(settings.schemas)
    for target in targets:
        if settings.source_for(target).type == "postgresql":
            run_async(_seed_billing(settings, target, scale, seed, reset))
        else:
            run_async(_seed_shop(settings, target, scale, seed, reset))


async def _seed_shop(
    settings: CartridgeSettings, target: SchemaConfig, scale: float, seed: int, reset: bool
) -> None:
    from cartridge_dagster.connectors.mongo import mongo_session
    from cartridge_dagster.demo.seed import DemoSizes, existing_documents, reset_demo, seed_demo

    sizes = DemoSizes.scaled(scale)
    async with mongo_session(settings.source_url(target)) as conn:
        db = conn.database(target.source_database)
        existing = await existing_documents(conn, db)
        if existing and not reset:  # --if-empty or not: never seed over data
            _already_seeded(target, existing)
            return
        if reset:
            _emptied(target, await reset_demo(db))
        with _progress() as progress:
            task = progress.add_task(target.source_database, total=sizes.total)
            counts = await seed_demo(
                db, sizes=sizes, seed=seed, progress=lambda _c, n: progress.advance(task, n)
            )
    _seeded(target, counts)


async def _seed_billing(
    settings: CartridgeSettings, target: SchemaConfig, scale: float, seed: int, reset: bool
) -> None:
    from cartridge_dagster.connectors.postgres import pg_connection
    from cartridge_dagster.demo.billing import (
        BillingSizes,
        ensure_database,
        existing_rows,
        reset_billing,
        seed_billing,
    )

    sizes = BillingSizes.scaled(scale)
    url = settings.source_url(target)
    await ensure_database(url)
    async with pg_connection(url) as conn:
        existing = await existing_rows(conn, target.source_database)
        if existing and not reset:
            _already_seeded(target, existing)
            return
        if reset:
            _emptied(target, await reset_billing(conn, target.source_database))
        with _progress() as progress:
            task = progress.add_task(target.source_database, total=sizes.total)
            counts = await seed_billing(
                conn,
                target.source_database,
                sizes=sizes,
                seed=seed,
                progress=lambda _t, n: progress.advance(task, n),
            )
    _seeded(target, counts)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]seeding[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def _already_seeded(target: SchemaConfig, existing: dict[str, int]) -> None:
    listed = ", ".join(f"{name}={n:,}" for name, n in existing.items())
    console.print(
        f"demo source {target.source_database!r} already has data ({listed}); "
        "not seeding (--reset empties the demo collections and seeds again)"
    )


def _emptied(target: SchemaConfig, removed: dict[str, int]) -> None:
    if removed:
        listed = ", ".join(f"{name}={n:,}" for name, n in removed.items())
        console.print(f"emptied {listed} in {target.source_database!r}")


def _seeded(target: SchemaConfig, counts: dict[str, int]) -> None:
    console.print(
        "seeded "
        + ", ".join(f"{name}={n}" for name, n in counts.items())
        + f" into {target.source_database!r}"
    )


def demo_traffic(
    config: ConfigOption = None,
    rate: Annotated[float, typer.Option(help="Operations per second (MongoDB sources).")] = 5.0,
    postgres_rate: Annotated[
        float | None,
        typer.Option(help="Operations per second on PostgreSQL sources (default: rate / 4)."),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    max_ops: Annotated[
        int | None, typer.Option(help="Stop after this many operations (per schema).")
    ] = None,
    schema: Annotated[
        str | None, typer.Option(help="Schema (default: every configured schema).")
    ] = None,
) -> None:
    """Keep producing inserts, updates and deletes on the demo sources until stopped (every
    schema at once: the shop at ``--rate``, the billing tables at ``--postgres-rate``)."""
    settings = load(config)
    targets = [settings.get_schema(schema)] if schema else list(settings.schemas)
    pg_rate = rate / 4 if postgres_rate is None else postgres_rate

    async def one(target: SchemaConfig, stop: asyncio.Event) -> tuple[str, dict[str, int]]:
        if settings.source_for(target).type == "postgresql":
            from cartridge_dagster.connectors.postgres import pg_connection
            from cartridge_dagster.demo.billing import run_billing_traffic

            async with pg_connection(settings.source_url(target)) as conn:
                console.print(f"traffic on {target.source_database!r} at {pg_rate:g} ops/s")
                counts = await run_billing_traffic(
                    conn,
                    target.source_database,
                    rate=pg_rate,
                    duration=duration,
                    max_ops=max_ops,
                    stop=stop,
                )
            return target.name, dict(counts)
        from cartridge_dagster.connectors.mongo import mongo_session
        from cartridge_dagster.demo.traffic import run_traffic

        async with mongo_session(settings.source_url(target)) as mongo:
            console.print(
                f"traffic on {target.source_database!r} at {rate:g} ops/s (Ctrl-C to stop)"
            )
            counts = await run_traffic(
                mongo.database(target.source_database),
                rate=rate,
                duration=duration,
                max_ops=max_ops,
                stop=stop,
            )
        return target.name, dict(counts)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [asyncio.create_task(one(t, stop)) for t in targets]
        try:
            done = await asyncio.gather(*tasks)
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
        for name, counts in done:
            prefix = "traffic: " if len(done) == 1 else f"traffic {name}: "
            console.print(prefix + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))

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
