"""Descriptions of generated models: deterministic prose from names, types and statistics.

This is the ``none`` AI provider and the fallback of every other one: no key, no network, the
same schema always gives the same words. A business-context file (YAML) feeds it and the AI
prompts alike::

    glossary:            # term → meaning; a column whose name contains the term gets it
      sku: Stock keeping unit, the merchant's product code.
    tables:              # collection (or "schema.collection") → purpose and owner
      orders:
        purpose: One document per checkout.
        owner: commerce-team
    owners:              # collection → owner (shorthand)
      events: analytics-team
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cartridge_dagster.errors import ConfigError

__all__ = [
    "BusinessContext",
    "CollectionDocs",
    "TableContext",
    "describe_collection",
    "load_business_context",
]

_TYPE_WORDS = {
    "int": "integer",
    "long": "64-bit integer",
    "double": "floating-point number",
    "decimal": "decimal number",
    "string": "text",
    "bool": "boolean",
    "date": "date-time (UTC)",
    "objectId": "ObjectId",
    "uuid": "UUID",
    "object": "object",
    "array": "array",
    "binary": "binary",
    "timestamp": "BSON timestamp",
}


class TableContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    purpose: str | None = None
    owner: str | None = None
    columns: dict[str, str] = Field(default_factory=dict)


class BusinessContext(BaseModel):
    """The business-context file."""

    model_config = ConfigDict(extra="forbid")
    glossary: dict[str, str] = Field(default_factory=dict)
    tables: dict[str, TableContext] = Field(default_factory=dict)
    owners: dict[str, str] = Field(default_factory=dict)

    def table(self, schema: str, collection: str) -> TableContext:
        found = self.tables.get(f"{schema}.{collection}") or self.tables.get(collection)
        ctx = found.model_copy() if found else TableContext()
        if ctx.owner is None:
            ctx.owner = self.owners.get(f"{schema}.{collection}") or self.owners.get(collection)
        return ctx


def load_business_context(path: str | Path | None) -> BusinessContext:
    """Read and validate the business-context YAML (``None`` → empty)."""
    if path is None:
        return BusinessContext()
    file = Path(path)
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(
            f"{file}: cannot read the business-context file ({exc.strerror})"
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    try:
        return BusinessContext.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{file}: {where}: {first['msg']}") from None


class CollectionDocs(BaseModel):
    """Descriptions for one collection's source table, staging model and child models."""

    model_config = ConfigDict(extra="forbid")
    description: str = Field(max_length=2000)
    source_description: str = Field(max_length=2000)
    #: staging column name → description; child model columns as ``<array path>.<column>``
    columns: dict[str, str] = Field(default_factory=dict)
    #: array path → description of its child model
    arrays: dict[str, str] = Field(default_factory=dict)
    #: AI-proposed models ({"name", "description", "sql"}); written only after the SQL
    #: allowlist and ``dbt parse`` accept them
    suggestions: list[dict[str, str]] = Field(default_factory=list)


def _types_phrase(types: Mapping[str, int]) -> str:
    total = sum(n for t, n in types.items() if t != "null")
    parts = []
    for t, n in sorted(types.items(), key=lambda kv: (-kv[1], kv[0])):
        if t == "null":
            continue
        word = _TYPE_WORDS.get(t, t)
        parts.append(word if len(types) == 1 or total == n else f"{word} ({n / total:.0%})")
    return ", ".join(parts) or "always null"


def _glossary(name: str, ctx: BusinessContext) -> str | None:
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    for term in sorted(ctx.glossary):
        key = term.lower()
        if key in words or (len(key) > 3 and key in name.lower()):
            return ctx.glossary[term]
    return None


def _column_text(
    path: str,
    entry: Mapping[str, Any],
    col: Mapping[str, Any],
    coll: Mapping[str, Any],
    ctx: BusinessContext,
    table: TableContext,
) -> str:
    column = str(col["column"])
    if column in table.columns:
        return table.columns[column]
    sentences = [f"`{path}` as {col['sql_type']}; source values: {_types_phrase(entry['types'])}."]
    if coll["source_kind"] == "mongodb":
        presence = entry.get("presence", 1.0)
        if entry.get("required"):
            sentences.append("Present and non-null in every sampled document.")
        else:
            sentences.append(
                f"Present in {presence:.0%} of sampled parents, null in "
                f"{entry.get('null_ratio', 0.0):.0%} of those."
            )
    if entry.get("enum"):
        sentences.append("One of: " + ", ".join(f"`{v}`" for v in entry["enum"]) + ".")
    ref = coll.get("references", {}).get(path)
    if ref:
        sentences.append(f"References `{ref['collection']}._id`.")
    if path in coll.get("timestamps", [])[:1]:
        sentences.append("Best timestamp for freshness and incremental models.")
    if entry.get("sensitive"):
        sentences.append("Marked sensitive: no example values are kept.")
    meaning = _glossary(path, ctx)
    if meaning:
        sentences.append(meaning)
    return " ".join(sentences)


def describe_collection(
    schema: str,
    collection: str,
    coll: Mapping[str, Any],
    context: Mapping[str, Any] | BusinessContext,
) -> CollectionDocs:
    """Deterministic descriptions for ``collection`` (the ``none`` provider)."""
    ctx = (
        context if isinstance(context, BusinessContext) else BusinessContext.model_validate(context)
    )
    table = ctx.table(schema, collection)
    sampled = coll["documents_sampled"]
    total = coll["documents_total"]
    how = {
        "full": f"all {total:,} documents",
        "sample": f"a sample of {sampled:,} of {total:,} documents",
        "catalog": "the PostgreSQL catalogs",
    }.get(coll["sampling"]["method"], "the source")
    kind = "table" if coll["source_kind"] == "postgresql" else "collection"
    lead = table.purpose or f"Typed staging model of the `{collection}` {kind} (schema `{schema}`)."
    description = (
        f"{lead} One row per live document; deleted documents are filtered out. "
        f"Inferred from {how}."
    )
    if table.owner:
        description += f" Owner: {table.owner}."
    columns: dict[str, str] = {"_id": f"Primary key: the `_id` of the {kind} row."}
    fields = coll["fields"]
    for path, col in coll["columns"].items():
        columns[str(col["column"])] = _column_text(path, fields[path], col, coll, ctx, table)
    arrays: dict[str, str] = {}
    for array_path, array in coll["arrays"].items():
        arrays[array_path] = (
            f"One row per element of `{array_path}` in `{collection}`, keyed by the parent "
            "`_id` and the element's position."
        )
        for path, col in array["columns"].items():
            columns[f"{array_path}.{col['column']}"] = _column_text(
                path, fields[path], col, coll, ctx, table
            )
    source_description = (
        f"Raw `{collection}` {kind}: one row per document `_id`, the document as JSONB, "
        "with Cartridge's version, operation, tombstone and landing-time columns."
    )
    return CollectionDocs(
        description=description,
        source_description=source_description,
        columns=columns,
        arrays=arrays,
    )
