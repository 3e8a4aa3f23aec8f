"""init's entry points for the CLI and the Dagster assets: scan → record → generate.

- :func:`scan_and_record`: scan one schema, store a new version when its structure changed
  (or a pending one under the ``approve`` policy), return both and the diff.
- :func:`generate_schema`: render the dbt files of one schema from its latest stored version
  (or a given schema document) and write them idempotently.
- :func:`validate_project`: ``dbt parse`` of the project (what makes new models visible to the
  dagster-dbt assets, via ``target/manifest.json``).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.connectors.mongo import MongoConnection
from cartridge_dagster.errors import CartridgeError
from cartridge_dagster.init import store
from cartridge_dagster.init.describe import load_business_context
from cartridge_dagster.init.generate import (
    Describer,
    GenerationResult,
    generated_dir,
    render_schema,
    write_files,
)
from cartridge_dagster.init.naming import staging_schema_name
from cartridge_dagster.init.scan import ScanProgress, ScanResult, scan_mongo, scan_schema
from cartridge_dagster.state import schema_dir

__all__ = [
    "ScanOutcome",
    "generate_schema",
    "project_dir",
    "scan_and_record",
    "validate_project",
]


@dataclass
class ScanOutcome:
    scan: ScanResult
    stored: store.StoreOutcome

    def summary(self) -> dict[str, Any]:
        colls = self.scan.collections
        return {
            "schema": self.scan.schema,
            "collections": len(colls),
            "fields": sum(len(c["fields"]) for c in colls.values()),
            "documents_sampled": sum(c["documents_sampled"] for c in colls.values()),
            "version": self.stored.version,
            "status": self.stored.status,
            "seconds": round(self.scan.seconds, 3),
        }


def project_dir(settings: CartridgeSettings) -> Path:
    return Path(settings.dbt.project_dir)


async def scan_and_record(
    settings: CartridgeSettings,
    schema: str,
    *,
    full_scan: bool = False,
    progress: ScanProgress | None = None,
    connection: MongoConnection | None = None,
) -> ScanOutcome:
    """Scan ``schema`` (through ``connection`` when given) and record it in the store."""
    if connection is not None:
        result = await scan_mongo(
            connection, settings.get_schema(schema), full_scan=full_scan, progress=progress
        )
    else:
        result = await scan_schema(settings, schema, full_scan=full_scan, progress=progress)
    policy = settings.get_schema(schema).evolution.policy
    outcome = store.record(schema_dir(settings, schema), result.to_json(), policy=policy)
    return ScanOutcome(result, outcome)


def generate_schema(
    settings: CartridgeSettings,
    schema: str,
    *,
    document: dict[str, Any] | None = None,
    models_root: Path | None = None,
    describe: Describer | None = None,
) -> GenerationResult:
    """Write ``models/generated/<schema>/`` (or ``<models_root>/<schema>/``)."""
    cfg = settings.get_schema(schema)
    if document is None:
        document = store.load_latest(schema_dir(settings, schema))
        if document is None:
            raise CartridgeError(
                f"schema {schema!r} has not been scanned yet",
                hint=f"run `cartridge scan --schema {schema}` "
                f"(or materialize cartridge/{schema}/schema)",
            )
    context = load_business_context(settings.ai.business_context)
    suggestions: dict[str, str] = {}
    files, skipped = render_schema(
        schema,
        cfg.raw_schema,
        staging_schema_name(schema, settings.dbt.staging_schema),
        document["collections"],
        describe=describe,
        business_context=context.model_dump(),
        suggestions=suggestions,
        materialized=settings.dbt.staging_materialized,
    )
    rejected: dict[str, str] = {}
    if suggestions:
        accepted, rejected = parse_suggestions(project_dir(settings), schema, files, suggestions)
        files.update(accepted)
    if models_root is None:
        directory = generated_dir(project_dir(settings), schema)
        root = project_dir(settings)
    else:
        directory = models_root / schema
        root = models_root
    result = write_files(directory, files, root=root)
    result.skipped = skipped
    result.rejected = rejected
    return result


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOG_PREFIX = re.compile(r"^\d\d:\d\d:\d\d\s+")


def _parse_error(output: str) -> str:
    """The error dbt printed, on one line (first error line and the three after it)."""
    lines = [_LOG_PREFIX.sub("", _ANSI.sub("", ln)).strip() for ln in output.splitlines()]
    for i, line in enumerate(lines):
        if "Error" in line:
            text = " ".join(ln for ln in lines[i : i + 4] if ln)
            return text[:400]
    return "unknown error"


def parse_suggestions(
    project: Path, schema: str, files: dict[str, str], suggestions: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """``dbt parse`` each AI-proposed model in a scratch copy of the project.

    Returns (accepted file name → text, rejected file name → reason). Parsing needs no
    database: the profile's defaults are enough, so no connection detail is used.
    """
    from cartridge_dagster.init.dbtcli import dbt_env, run_dbt

    accepted: dict[str, str] = {}
    rejected: dict[str, str] = {}
    env = dbt_env("postgresql://parse@127.0.0.1:5432/parse")
    with tempfile.TemporaryDirectory(prefix="cartridge-parse-") as tmp:
        scratch = Path(tmp) / "project"
        shutil.copytree(
            project, scratch, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages")
        )
        target = generated_dir(scratch, schema)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        for name, text in files.items():
            (target / name).write_text(text, encoding="utf-8")
        for name, text in sorted(suggestions.items()):
            path = target / name
            path.write_text(text, encoding="utf-8")
            result = run_dbt(scratch, ["parse", "--no-partial-parse"], env=env, check=False)
            if result.ok:
                accepted[name] = text
            else:
                rejected[name] = "dbt parse failed: " + _parse_error(result.output)
                path.unlink()
    return accepted, rejected


def validate_project(settings: CartridgeSettings, *, url: str | None = None) -> None:
    """``dbt parse`` the project with the configured destination (raises on error)."""
    from cartridge_dagster.init.dbtcli import dbt_env, run_dbt, settings_dbt_env

    try:
        env = settings_dbt_env(settings, url)
    except CartridgeError:
        # parsing never connects: without a reachable destination (the local service is
        # down) the profile's defaults do; the manifest then names the default database
        env = dbt_env("postgresql://postgres@127.0.0.1:5432/postgres", threads=settings.dbt.threads)
    run_dbt(project_dir(settings), ["parse"], env=env)
