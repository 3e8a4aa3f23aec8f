"""`cartridge` commands of the init capability: scan, generate, schema diff/approve/show."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from cartridge_dagster.cli.common import console, load, run_async
from cartridge_dagster.cli.options import ConfigOption
from cartridge_dagster.config import CartridgeSettings, settings_from_mapping
from cartridge_dagster.errors import CartridgeError, ConfigError, redact_url

SchemaOption = Annotated[
    str | None,
    typer.Option("--schema", "-s", help="Only this schema (default: every configured schema)."),
]
Provider = Annotated[
    str | None,
    typer.Option(
        "--ai-provider",
        help="Who writes descriptions: none (deterministic, offline), openai, anthropic, gemini. "
        "Default: the config's ai.provider.",
        show_default=False,
    ),
]


def register(app: typer.Typer) -> None:
    app.command("scan")(scan)
    app.command("generate")(generate)
    schema = typer.Typer(help="Versioned inferred schemas: diffs and approvals.")
    schema.command("diff")(schema_diff)
    schema.command("approve")(schema_approve)
    schema.command("versions")(schema_versions)
    app.add_typer(schema, name="schema")


ConnectionOption = Annotated[
    str | None,
    typer.Option(
        "--connection-string",
        envvar="CARTRIDGE_SCAN_CONNECTION_STRING",
        help="Scan this source without a configuration file: postgresql://…, mongodb://… "
        "or mongoeco://PATH (also $CARTRIDGE_SCAN_CONNECTION_STRING, which keeps the password "
        "out of the process list). Needs --output.",
        show_default=False,
    ),
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        help="With --connection-string: the MongoDB database (default: the URL's), or the "
        "PostgreSQL schema (default: public).",
        show_default=False,
    ),
]


def _seed_name(database: str) -> str:
    """A Cartridge schema name for a database name (lower case, letters first, ≤ 40)."""
    name = re.sub(r"[^a-z0-9_]+", "_", database.lower()).strip("_") or "source"
    if not name[0].isalpha():
        name = f"s_{name}"
    return name[:40]


def _seed_settings(url: str, database: str | None, name: str | None) -> CartridgeSettings:
    """Settings for one source given on the command line (no configuration file)."""
    scheme = url.split("://", 1)[0].lower()
    kind = "postgresql" if scheme in ("postgresql", "postgres") else "mongodb"
    if database is None:
        if kind == "postgresql":
            database = "public"
        else:
            path = unquote(urlsplit(url).path.lstrip("/")) if scheme != "mongoeco" else ""
            if not path:
                raise ConfigError(
                    f"--connection-string {redact_url(url)}: pass --database (the MongoDB "
                    "database to scan)"
                )
            database = path
    return settings_from_mapping(
        {
            "source": {"type": kind, "connection_string": url},
            "state_dir": tempfile.mkdtemp(prefix="cartridge-scan-"),
            "schemas": [{"name": name or _seed_name(database), "source_database": database}],
        },
        origin="--connection-string",
    )


def _schemas(settings: CartridgeSettings, only: str | None) -> list[str]:
    if only is not None:
        settings.get_schema(only)
        return [only]
    return [s.name for s in settings.schemas]


def scan(
    config: ConfigOption = None,
    schema: SchemaOption = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Also write the scanned schema(s) to this JSON file."),
    ] = None,
    full_scan: Annotated[
        bool, typer.Option("--full-scan", help="Read every document instead of sampling.")
    ] = False,
    connection_string: ConnectionOption = None,
    database: DatabaseOption = None,
) -> None:
    """Sample the source, infer each collection's schema, and store a version when it changed.

    Without a configuration file: ``cartridge scan --connection-string URL [--database D]
    --output schema.json`` scans one source and writes the result (nothing else is kept)."""
    from cartridge_dagster.init.service import scan_and_record

    if connection_string is not None:
        if config is not None:
            raise ConfigError("pass either --config or --connection-string, not both")
        if output is None:
            raise ConfigError("--connection-string needs --output FILE (where the scan goes)")
        settings = _seed_settings(connection_string, database, schema)
        schema = None
    else:
        settings = load(config)
    names = _schemas(settings, schema)
    written: dict[str, Any] = {}
    table = Table(title="scan")
    for col in ("schema", "collection", "sampled", "documents", "method", "fields", "columns"):
        table.add_column(col, justify="right" if col in ("sampled", "documents") else "left")
    table.add_column("arrays")
    table.add_column("references")
    statuses = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(collection: str, seen: int, planned: int) -> None:
            if collection not in tasks:
                tasks[collection] = bar.add_task(f"sampling {collection}", total=planned)
            bar.update(tasks[collection], completed=seen, total=max(planned, seen))

        for name in names:
            outcome = run_async(
                scan_and_record(settings, name, full_scan=full_scan, progress=progress)
            )
            doc = outcome.scan.to_json()
            doc.update(version=outcome.stored.version, fingerprint=outcome.stored.fingerprint)
            written[name] = doc
            for cname, coll in sorted(outcome.scan.collections.items()):
                table.add_row(
                    name,
                    cname,
                    f"{coll['documents_sampled']:,}",
                    f"{coll['documents_total']:,}",
                    coll["sampling"]["method"],
                    str(len(coll["fields"])),
                    str(len(coll["columns"])),
                    ", ".join(coll["arrays"]) or "-",
                    ", ".join(f"{p}→{r['collection']}" for p, r in coll["references"].items())
                    or "-",
                )
            statuses.append((name, outcome))
    console.print(table)
    for name, outcome in statuses:
        verb = {
            "created": f"[green]new version v{outcome.stored.version:04d}[/]",
            "unchanged": f"unchanged (v{outcome.stored.version:04d})",
            "pending": "[yellow]change pending approval[/] "
            f"(`cartridge schema approve --schema {name}`)",
        }[outcome.stored.status]
        console.print(f"{name}: {verb} in {outcome.scan.seconds:.2f} s")
        if not outcome.stored.diff.empty:
            console.print(outcome.stored.diff.markdown())
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"schemas": written}, indent=2, sort_keys=True, ensure_ascii=False)
        output.write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote {output}")
    if connection_string is not None:  # nothing but the output is kept
        shutil.rmtree(settings.state_dir, ignore_errors=True)


def _settings_for_documents(documents: dict[str, dict[str, Any]]) -> CartridgeSettings:
    """Settings naming the schemas of a scan output (``generate`` without a config file)."""
    schemas = []
    kinds = set()
    for name, doc in sorted(documents.items()):
        schemas.append({"name": name, "source_database": str(doc.get("database") or name)})
        kinds.add(str(doc.get("source_kind") or "mongodb"))
    kind = "postgresql" if kinds == {"postgresql"} else "mongodb"
    placeholder = "postgresql://localhost/unused" if kind == "postgresql" else "mongoeco://:memory:"
    return settings_from_mapping(
        {
            "source": {"type": kind, "connection_string": placeholder},
            "state_dir": tempfile.mkdtemp(prefix="cartridge-generate-"),
            "schemas": schemas,
        },
        origin="--input",
    )


def _input_documents(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("schemas"), dict):
        return dict(data["schemas"])
    if isinstance(data, dict) and isinstance(data.get("collections"), dict) and "schema" in data:
        return {str(data["schema"]): data}
    raise ConfigError(
        f"{path}: not a scan output (expected a 'schemas' mapping or one schema document)",
        hint="produce it with `cartridge scan --output PATH`",
    )


def generate(
    config: ConfigOption = None,
    input: Annotated[
        Path | None,
        typer.Option(
            "--input",
            "-i",
            help="A `cartridge scan --output` file (default: the latest stored versions).",
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            "--output-dir",
            help="Where `<schema>/` model folders go (default: <dbt project>/models/generated).",
        ),
    ] = None,
    schema: SchemaOption = None,
    ai_provider: Provider = None,
    parse: Annotated[
        bool,
        typer.Option("--parse/--no-parse", help="Run `dbt parse` on the project afterwards."),
    ] = False,
) -> None:
    """Write dbt sources, staging and child models, and their tests, from inferred schemas.

    Without a configuration file: ``cartridge generate --input schema.json --output-dir
    models/ --ai-provider none`` writes the models of a ``cartridge scan --output`` file."""
    from cartridge_dagster.init.ai import build_describer
    from cartridge_dagster.init.service import generate_schema, validate_project

    documents = _input_documents(input) if input is not None else None
    if config is None and documents is not None and output_dir is not None:
        try:
            settings = load(config)
        except ConfigError:  # no configuration file: the scan output says what to generate
            settings = _settings_for_documents(documents)
    else:
        settings = load(config)
    names = _schemas(settings, schema)
    if documents is not None:
        unknown = sorted(set(documents) - {s.name for s in settings.schemas})
        if unknown:
            raise ConfigError(f"{input}: schema(s) {unknown} are not in the configuration")
        names = [n for n in names if n in documents]
    table = Table(title="generate")
    table.add_column("schema")
    table.add_column("file")
    table.add_column("status")
    with Progress(TextColumn("{task.description}"), console=console, transient=True) as bar:
        task = bar.add_task("describing…")

        def progress(message: str) -> None:
            bar.update(task, description=message)

        describer = build_describer(settings, provider=ai_provider, progress=progress)
        results = {}
        for name in names:
            results[name] = generate_schema(
                settings,
                name,
                document=documents[name] if documents is not None else None,
                models_root=output_dir,
                describe=describer,
            )
    changed = 0
    for name, result in results.items():
        for f in result.written:
            table.add_row(name, f, "[green]written[/]")
        for f in result.deleted:
            table.add_row(name, f, "[yellow]deleted[/]")
        for f in result.conflicts:
            table.add_row(name, f, "[red]hand-written: left alone[/]")
        for coll, reason in result.skipped.items():
            table.add_row(name, repr(coll), f"[red]skipped: {reason}[/]")
        if result.unchanged:
            table.add_row(name, f"{len(result.unchanged)} file(s)", "unchanged")
        changed += len(result.written) + len(result.deleted)
    console.print(table)
    console.print(f"{changed} file(s) changed")
    if parse:
        validate_project(settings)
        console.print("dbt parse: [green]ok[/]")


def schema_diff(
    config: ConfigOption = None,
    schema: Annotated[str, typer.Option("--schema", "-s", help="The schema.")] = "",
    from_version: Annotated[
        int | None, typer.Option("--from", help="Old version (default: the one before --to).")
    ] = None,
    to_version: Annotated[
        int | None,
        typer.Option("--to", help="New version (default: the pending change, else the latest)."),
    ] = None,
) -> None:
    """Show what changed between two stored versions (or what is pending approval)."""
    from cartridge_dagster.init import store
    from cartridge_dagster.state import schema_dir

    settings = load(config)
    name = schema or settings.schemas[0].name
    settings.get_schema(name)
    directory = schema_dir(settings, name)
    latest = store.load_latest(directory)
    if latest is None:
        raise CartridgeError(f"schema {name!r} has no stored version", hint="run `cartridge scan`")
    pending = store.load_pending(directory)
    if to_version is None and pending is not None:
        new, label = pending, "pending"
    else:
        target = to_version or int(latest["version"])
        new, label = store.load_version(directory, target), f"v{target:04d}"
    if from_version is not None:
        old = store.load_version(directory, from_version)
    elif label == "pending":
        old = latest
    else:
        prev = int(new["version"]) - 1
        old = store.load_version(directory, prev) if prev >= 1 else {"collections": {}}
    diff = store.diff_schemas(old["collections"], new["collections"])
    console.print(f"{name}: v{int(old.get('version', 0)):04d} → {label}")
    console.print(diff.markdown())


def schema_approve(
    config: ConfigOption = None,
    schema: Annotated[str, typer.Option("--schema", "-s", help="The schema.")] = "",
) -> None:
    """Accept a pending schema change (evolution policy `approve`) as the next version."""
    from cartridge_dagster.init import store
    from cartridge_dagster.state import schema_dir

    settings = load(config)
    name = schema or settings.schemas[0].name
    settings.get_schema(name)
    outcome = store.approve(schema_dir(settings, name))
    if outcome.status == "created":
        console.print(f"{name}: approved as v{outcome.version:04d}")
        console.print(outcome.diff.markdown())
    else:
        console.print(f"{name}: pending change matched v{outcome.version:04d}; nothing to do")


def schema_versions(
    config: ConfigOption = None,
    schema: Annotated[str, typer.Option("--schema", "-s", help="The schema.")] = "",
) -> None:
    """List stored versions of a schema."""
    from cartridge_dagster.init import store
    from cartridge_dagster.state import schema_dir

    settings = load(config)
    name = schema or settings.schemas[0].name
    settings.get_schema(name)
    directory = schema_dir(settings, name)
    table = Table(title=f"schema {name}")
    for col in ("version", "fingerprint", "collections", "changes"):
        table.add_column(col)
    for v in store.versions(directory):
        doc = store.load_version(directory, v)
        counts = {k: n for k, n in _diff_counts(doc.get("diff", {})).items() if n}
        table.add_row(
            f"v{v:04d}",
            str(doc.get("fingerprint")),
            str(len(doc["collections"])),
            ", ".join(f"{k} {n}" for k, n in counts.items()) or "-",
        )
    console.print(table)
    if store.load_pending(directory) is not None:
        console.print("[yellow]a change is pending approval[/]")


def _diff_counts(diff: dict[str, Any]) -> dict[str, int]:
    out = {}
    for key, value in diff.items():
        if isinstance(value, list):
            out[key] = len(value)
        elif isinstance(value, dict):
            out[key] = sum(len(v) if isinstance(v, list | dict) else 1 for v in value.values())
    return out
