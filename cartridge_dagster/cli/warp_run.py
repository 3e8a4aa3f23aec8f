"""``cartridge warp run``'s work, and its command line read without typer.

``warp run`` is a long-lived process whose start-up is timed (launch → first snapshot read),
and typer (with its vendored click) is ~80–100 ms of CPU to import in a fresh process. The
console entry points read a plain ``warp run`` command line with :func:`parse_run_args` and
call :func:`run` directly; anything else — ``--help``, a typo, an option without its value, a
value that is not a number — goes to the typer command (``warp_cmds.run``), which prints its
usual help or error. Both call :func:`run`, so a command line means the same on either path
(``tests/unit/test_warp_fast_cli.py`` compares the two parsers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cartridge_dagster.cli import common
from cartridge_dagster.cli.common import load, run_async
from cartridge_dagster.errors import ConfigError

if TYPE_CHECKING:
    from cartridge_dagster.config import CartridgeSettings, SchemaConfig

__all__ = ["RunArgs", "parse_run_args", "run", "schemas_for", "validate_schemas"]


@dataclass(frozen=True)
class RunArgs:
    """``warp run``'s options, as the typer command receives them."""

    config: Path | None = None
    mode: str | None = None
    schema: str | None = None
    dry_run: bool = False
    stop_when_idle: float | None = None


#: Each option of ``warp run`` → the parameter it sets; flags (no value) are in _FLAGS.
_OPTIONS = {
    "--config": "config",
    "-c": "config",
    "--mode": "mode",
    "--schema": "schema",
    "-s": "schema",
    "--stop-when-idle": "stop_when_idle",
}
_FLAGS = {"--dry-run": "dry_run"}


def parse_run_args(args: Sequence[str]) -> RunArgs | None:
    """The options of ``warp run ARGS``, or None when ``ARGS`` is anything but plain options
    given once each with their values (``--config FILE``, ``--config=FILE``, ``-cFILE``)."""
    found: dict[str, Any] = {}
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        value: Any
        if arg in _FLAGS:
            name, value = _FLAGS[arg], True
        else:
            flag, value = _split(arg)
            if flag not in _OPTIONS:
                return None
            if value is None:
                if not rest or rest[0].startswith("-"):
                    return None  # click's own reading of these: let it say what it does
                value = rest.pop(0)
            name = _OPTIONS[flag]
            if name == "stop_when_idle":
                try:
                    value = float(value)
                except ValueError:
                    return None
            elif name == "config":
                value = Path(value)
        if name in found:
            return None
        found[name] = value
    return RunArgs(**found)


def _split(arg: str) -> tuple[str, str | None]:
    """``--name=value`` → (``--name``, value); ``-cvalue`` → (``-c``, value)."""
    if arg.startswith("--"):
        flag, eq, value = arg.partition("=")
        return (flag, value) if eq else (arg, None)
    if len(arg) > 2 and arg[0] == "-" and arg[:2] in _OPTIONS:
        return arg[:2], arg[2:]
    return arg, None


def schemas_for(settings: CartridgeSettings, schema: str | None, mode: str) -> list[SchemaConfig]:
    """The schemas a command acts on: ``schema``, or all of them (``single``: the only one)."""
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


def validate_schemas(
    settings: CartridgeSettings, schemas: list[SchemaConfig], *, dry_run: bool
) -> None:
    from cartridge_dagster.warp.admin import validate_schema

    for s in schemas:
        for line in run_async(validate_schema(settings, s)):
            common.console.print(f"{s.name}: {line}")
    common.console.print("[green]ok[/]" + (" (dry run: nothing written)" if dry_run else ""))


def _settings(args: RunArgs) -> tuple[CartridgeSettings, list[SchemaConfig]]:
    """The validated settings and the schemas this command runs."""
    settings = load(args.config)
    chosen_mode = args.mode or settings.mode
    if chosen_mode not in ("single", "multi"):
        raise ConfigError(f"--mode must be single or multi, not {chosen_mode!r}")
    return settings, schemas_for(settings, args.schema, chosen_mode)


def _metrics_server(schemas: list[SchemaConfig], health: Any) -> Any:
    """The metrics and health endpoint of the first schema's port (None: no port, or busy)."""
    from cartridge_dagster.observability import MetricsServer

    port = schemas[0].warp.metrics_port
    if not port:
        return None
    try:
        host = os.environ.get("CARTRIDGE_METRICS_HOST", "127.0.0.1")
        server = MetricsServer(port, host=host, health=health).start()
    except OSError as exc:
        common.console.print(f"[yellow]metrics disabled: port {port} is busy ({exc.strerror})[/]")
        return None
    common.console.print(f"metrics: http://127.0.0.1:{server.port}/metrics (health: /health)")
    return server


def run(args: RunArgs) -> None:
    """Snapshot, then stream changes into PostgreSQL until stopped (SIGTERM/Ctrl-C).

    On a first start from a MongoDB server the first reads are asked for while the settings
    are validated (:mod:`cartridge_dagster.warp.early`): the file is read as plain YAML for the
    source, the client opened on the event loop, and the settings validated in a worker thread
    meanwhile; the runner uses those reads only when the validated settings match them."""
    from cartridge_dagster.warp import early as early_reads

    plan = None if args.dry_run else early_reads.plan(args.config, args.schema)
    ready: tuple[CartridgeSettings, list[SchemaConfig]] | None = None
    if plan is None:
        ready = _settings(args)
        if args.dry_run:
            validate_schemas(*ready, dry_run=True)
            return

    from cartridge_dagster.runtime import gc_tuning_enabled, young_gc_threshold

    async def main() -> list[Any]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        early = early_reads.EarlyRead(plan) if plan is not None else None
        server: Any = None
        try:
            if early is not None:
                early.start()
                await early.under_way()  # the server reads the first page meanwhile
                settings, schemas = await asyncio.to_thread(_settings, args)
                early.validated()
                if all(s.name != early.plan.schema for s in schemas):
                    await early.close()
            else:
                assert ready is not None
                settings, schemas = ready
            from cartridge_dagster.observability import HealthState
            from cartridge_dagster.warp.runner import run_schemas

            health = HealthState()
            server = _metrics_server(schemas, health)
            return await run_schemas(
                settings,
                schemas,
                stop=stop,
                stop_when_idle=args.stop_when_idle,
                health=health,
                early=early,
            )
        finally:
            if early is not None:
                await early.close()  # what no runner adopted
            if server is not None:
                server.stop()

    with young_gc_threshold() if gc_tuning_enabled() else contextlib.nullcontext():
        summaries = run_async(main())
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
