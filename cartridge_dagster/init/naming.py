"""Names of what init generates: dbt sources, staging models, child models, their schemas.

Pure functions (no I/O, no dagster), shared with analytics: ``staging_model_name("shop",
"orders")`` is ``stg_shop__orders`` wherever it is computed. A collection name that is not
already a safe lower-case SQL name gets a stable hash suffix, so two collections never share a
model name (``Orders`` → ``stg_shop__orders_1a2b3c4d`` next to ``orders`` → ``stg_shop__orders``).
"""

from __future__ import annotations

from cartridge_dagster.identifiers import MAX_IDENTIFIER_BYTES, pg_name, short_hash

__all__ = [
    "GENERATED_DIR",
    "child_model_name",
    "dbt_source_name",
    "dbt_source_table_name",
    "safe_part",
    "staging_model_name",
    "staging_schema_name",
]

#: Generated models live under ``<project>/models/generated/<schema>/``.
GENERATED_DIR = ("models", "generated")


def safe_part(name: str) -> str:
    """``name`` as a lower-case SQL-safe word; lossy mappings get a hash of the original."""
    mapped = pg_name(name)
    if mapped != name:
        mapped = f"{mapped}_{short_hash(name)}"
    return mapped


def _fit(name: str, original: str) -> str:
    if len(name.encode("utf-8")) <= MAX_IDENTIFIER_BYTES:
        return name
    suffix = "_" + short_hash(original)
    head = name.encode("utf-8")[: MAX_IDENTIFIER_BYTES - len(suffix)].decode("utf-8", "ignore")
    return head.rstrip("_") + suffix


def staging_model_name(schema: str, collection: str) -> str:
    """``stg_<schema>__<collection>`` (at most 63 bytes, stable, collision-free)."""
    return _fit(f"stg_{schema}__{safe_part(collection)}", f"{schema}\x00{collection}")


def child_model_name(schema: str, collection: str, array_path: str) -> str:
    """``stg_<schema>__<collection>__<array>`` for an array of objects at ``array_path``."""
    base = f"stg_{schema}__{safe_part(collection)}__{safe_part(array_path)}"
    return _fit(base, f"{schema}\x00{collection}\x00{array_path}")


def dbt_source_name(schema: str) -> str:
    """The dbt source holding ``schema``'s raw tables: ``cartridge_<schema>``."""
    return f"cartridge_{schema}"


def dbt_source_table_name(collection: str) -> str:
    """The name of a collection inside its dbt source (``source('cartridge_shop', NAME)``)."""
    return _fit(safe_part(collection), collection)


def staging_schema_name(schema: str, staging_suffix: str = "staging") -> str:
    """PostgreSQL schema the staging models of ``schema`` are built in: ``<schema>_staging``."""
    return _fit(f"{schema}_{staging_suffix}", f"{schema}\x00{staging_suffix}")
