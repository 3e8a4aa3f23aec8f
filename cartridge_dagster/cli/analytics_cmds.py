"""`cartridge analyze`: profile, reconcile and check, then write the HTML reports."""

from __future__ import annotations

import functools
import http.server
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cartridge_dagster.cli.common import console, load, run_async
from cartridge_dagster.cli.options import ConfigOption
from cartridge_dagster.errors import CartridgeError

if TYPE_CHECKING:  # the analytics core is imported by its commands only (start-up of the rest)
    from cartridge_dagster.analytics.runner import SchemaAnalysis


def register(app: typer.Typer) -> None:
    """Add this capability's commands to ``app``."""
    app.command("analyze")(analyze)
    app.command("serve-reports")(serve_reports)


class ChecksFailed(CartridgeError):
    """``--strict`` and an ERROR-severity check failed."""


def _fmt_seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}s"


def _table(result: SchemaAnalysis) -> Table:
    table = Table(title=f"schema {result.schema_name} (run {result.run_id})", show_header=True)
    for name in ("collection", "live", "deleted", "growth", "lag p95", "src/tgt", "differ"):
        table.add_column(name, justify="left" if name == "collection" else "right")
    table.add_column("checks")
    for name, a in result.collections.items():
        raw = a.raw
        rec = a.reconciliation
        failed = [c for c in a.checks if not c.passed]
        if not failed:
            checks = "[green]pass[/green]"
        else:
            worst = "red" if any(c.severity == "ERROR" for c in failed) else "yellow"
            checks = f"[{worst}]{len(failed)} failed[/]"
        table.add_row(
            name,
            "–" if raw is None else f"{raw.rows_live:,}",
            "–" if raw is None else f"{raw.rows_deleted:,}",
            "–" if raw is None or raw.row_count_change is None else f"{raw.row_count_change:+.1%}",
            "–" if raw is None else _fmt_seconds(raw.lag_p95_seconds),
            "–" if rec is None else f"{rec.source_count:,}/{rec.target_count:,}",
            "–" if rec is None else f"{len(rec.mismatches)}/{rec.sampled}",
            checks,
        )
    return table


def _failures(result: SchemaAnalysis) -> list[str]:
    return [
        f"[{'red' if c.severity == 'ERROR' else 'yellow'}]{name}: {c.name}[/] {c.description}"
        for name, a in result.collections.items()
        for c in a.checks
        if not c.passed
    ]


def analyze(
    config: ConfigOption = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Directory for the HTML reports. Default: <state_dir>/reports.",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[
        list[str] | None,
        typer.Option("--schema", "-s", help="Schema to analyse (repeatable). Default: all."),
    ] = None,
    collection: Annotated[
        list[str] | None,
        typer.Option("--collection", help="Collection to analyse (repeatable). Default: all."),
    ] = None,
    reconcile: Annotated[
        bool,
        typer.Option("--reconcile/--no-reconcile", help="Compare against the source."),
    ] = True,
    strict: Annotated[
        bool, typer.Option("--strict", help="Exit non-zero when an ERROR-severity check fails.")
    ] = False,
) -> None:
    """Profile raw tables and staging models, reconcile with the source, check, and report."""
    settings = load(config)
    names = schema or [s.name for s in settings.schemas]
    for name in names:
        settings.get_schema(name)  # unknown names fail before any work
    from cartridge_dagster.analytics.report import default_report_dir
    from cartridge_dagster.analytics.runner import analyze_schema

    out = output or default_report_dir(settings)
    failed: list[str] = []
    for name in names:
        with console.status(f"analysing {name}…"):
            result = run_async(
                analyze_schema(
                    settings,
                    name,
                    reconcile=reconcile,
                    collections=collection or None,
                    report_dir=out,
                )
            )
        console.print(_table(result))
        for line in _failures(result):
            console.print(f"  {line}", highlight=False)
        failed += [
            f"{name}.{c}: {check.name}"
            for c, a in result.collections.items()
            for check in a.checks
            if not check.passed and check.severity == "ERROR"
        ]
    console.print(
        f"report: {out / (names[0] + '.html') if len(names) == 1 else out / 'index.html'}"
    )
    console.print(f"index:  {out / 'index.html'}", style="dim")
    if strict and failed:
        raise ChecksFailed(
            f"{len(failed)} checks failed: {', '.join(failed[:5])}",
            hint="see the report for details",
        )


def serve_reports(
    config: ConfigOption = None,
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Reports directory. Default: <state_dir>/reports."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: any free port).")] = 8765,
) -> None:
    """Serve the HTML reports over HTTP (read-only), e.g. for links from the Dagster UI.

    Set ``CARTRIDGE_REPORTS_URL=http://HOST:PORT`` for the code location and the analytics
    assets link their reports there instead of to ``file://`` paths.
    """
    settings = load(config)
    from cartridge_dagster.analytics.report import default_report_dir

    root = (directory or default_report_dir(settings)).resolve()
    root.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(root))
    # SIGTERM stops it like Ctrl-C, also when the parent left SIGTERM ignored (inherited)
    signal.signal(signal.SIGTERM, _interrupt)
    with http.server.ThreadingHTTPServer((host, port), handler) as server:
        bound = server.server_address[1]
        console.print(f"serving {root} at http://{host}:{bound}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            console.print("stopped")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return
