"""Which tables to profile: the raw tables of a schema and their generated staging models.

Staging models are found by name (``init.naming``: ``stg_<S>__<C>`` and its child models
``stg_<S>__<C>__<array>``), first in the dbt manifest (``<project>/target/manifest.json``, which
knows each model's relation), else in ``information_schema`` (the schema ``init`` builds into is
preferred when a name exists in several).
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from cartridge_dagster.analytics.profile import Relation, sensitive_names
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.identifiers import qualified
from cartridge_dagster.init.naming import staging_model_name, staging_schema_name
from cartridge_dagster.landing import (
    ANALYTICS_SCHEMA,
    CONTROL_SCHEMA,
    history_table_name,
    raw_table_name,
)
from cartridge_dagster.state import known_collections, read_json

__all__ = [
    "discover_collections",
    "model_names_for",
    "model_relations",
    "raw_relation",
]


def raw_relation(schema: SchemaConfig, collection: str) -> Relation:
    return Relation(
        schema_name=schema.name,
        layer="raw",
        collection=collection,
        relation_schema=schema.raw_schema,
        relation_name=raw_table_name(collection),
        sensitive_paths=frozenset(schema.table(collection).sensitive_fields),
    )


def _owner(schema: str, collections: list[str], model: str) -> str | None:
    """The collection whose staging model (or child model) ``model`` is; longest name wins."""
    best: tuple[int, str] | None = None
    for collection in collections:
        base = staging_model_name(schema, collection)
        if (model == base or model.startswith(base + "__")) and (
            best is None or len(base) > best[0]
        ):
            best = (len(base), collection)
    return best[1] if best else None


def model_names_for(
    settings: CartridgeSettings, schema: str, collections: list[str]
) -> dict[str, list[str]]:
    """Staging model names per collection, from the dbt manifest (empty without one)."""
    manifest = read_json(Path(settings.dbt.project_dir) / "target" / "manifest.json")
    out: dict[str, list[str]] = {c: [] for c in collections}
    if not isinstance(manifest, dict):
        return out
    for node in (manifest.get("nodes") or {}).values():
        if not isinstance(node, dict) or node.get("resource_type") != "model":
            continue
        name = str(node.get("name", ""))
        owner = _owner(schema, collections, name)
        if owner is not None:
            out[owner].append(name)
    return {c: sorted(v) for c, v in out.items()}


def _manifest_relations(settings: CartridgeSettings, prefix: str) -> dict[str, tuple[str, str]]:
    manifest = read_json(Path(settings.dbt.project_dir) / "target" / "manifest.json")
    found: dict[str, tuple[str, str]] = {}
    if not isinstance(manifest, dict):
        return found
    for node in (manifest.get("nodes") or {}).values():
        if not isinstance(node, dict) or node.get("resource_type") != "model":
            continue
        name = str(node.get("name", ""))
        if name.startswith(prefix) and node.get("schema"):
            found[name] = (str(node["schema"]), str(node.get("alias") or name))
    return found


async def model_relations(
    conn: asyncpg.Connection,
    settings: CartridgeSettings,
    schema: SchemaConfig,
    collections: list[str],
) -> dict[str, list[Relation]]:
    """Existing staging model relations per collection."""
    prefix = f"stg_{schema.name}__"
    candidates: dict[str, tuple[str, str]] = _manifest_relations(settings, prefix)
    preferred = staging_schema_name(schema.name, settings.dbt.staging_schema)
    rows = await conn.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables "
        "WHERE left(table_name, length($1)) = $1 "
        "AND table_schema NOT IN ('pg_catalog', 'information_schema', $2, $3, $4) "
        "ORDER BY (table_schema = $5) DESC, table_schema",
        prefix,
        schema.raw_schema,
        ANALYTICS_SCHEMA,
        CONTROL_SCHEMA,
        preferred,
    )
    existing: dict[str, list[str]] = {}
    for r in rows:
        existing.setdefault(str(r["table_name"]), []).append(str(r["table_schema"]))
    out: dict[str, list[Relation]] = {c: [] for c in collections}
    names = sorted(set(existing) | set(candidates))
    for name in names:
        owner = _owner(schema.name, collections, name)
        if owner is None:
            continue
        rel_schema: str | None = None
        rel_name = name
        if name in candidates:
            rel_schema, rel_name = candidates[name]
            if rel_schema not in existing.get(rel_name, []):
                rel_schema = None
        if rel_schema is None and name in existing:
            rel_schema = existing[name][0]
            rel_name = name
        if rel_schema is None:
            continue
        out[owner].append(
            Relation(
                schema_name=schema.name,
                layer="model",
                collection=owner,
                relation_schema=rel_schema,
                relation_name=rel_name,
                sensitive_paths=sensitive_names(schema.table(owner).sensitive_fields),
            )
        )
    return out


async def discover_collections(
    conn: asyncpg.Connection, settings: CartridgeSettings, schema: SchemaConfig
) -> list[str]:
    """Known collections (config, inferred schema, catalog), else the raw tables that exist."""
    known = known_collections(settings, schema.name)
    if known:
        return known
    rows = await conn.fetch(
        "SELECT c.table_name FROM information_schema.columns c "
        "WHERE c.table_schema = $1 AND c.column_name IN ('document', '_cartridge_deleted') "
        "GROUP BY c.table_name HAVING count(*) = 2 ORDER BY c.table_name",
        schema.raw_schema,
    )
    tables = {str(r["table_name"]) for r in rows}
    # a collection's history table is not a collection of its own
    history = {history_table_name(t) for t in tables}
    names = sorted(t for t in tables if t not in history)
    # Warp's name map knows collections whose tables got hashed names.
    name_map = qualified(CONTROL_SCHEMA, "name_map")
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name_map):
        rows = await conn.fetch(
            f"SELECT collection, table_name FROM {name_map} WHERE schema_name = $1",
            schema.name,
        )
        by_table = {str(r["table_name"]): str(r["collection"]) for r in rows}
        names = [by_table.get(n, n) for n in names]
    return sorted(c for c in names if schema.selects(c))
