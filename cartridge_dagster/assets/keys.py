"""Asset keys: one place, stable and readable (see the asset graph in DESIGN.md).

``cartridge/<S>/catalog`` → ``cartridge/<S>/schema`` → ``cartridge/<S>/dbt_models``;
``raw/<S>/<C>`` (landed by warp) → dbt models (``stg_<S>__<C>``…) → ``analytics/<S>/<C>``.
"""

from __future__ import annotations

import dagster as dg

__all__ = [
    "analytics_key",
    "catalog_key",
    "dbt_models_key",
    "raw_key",
    "schema_key",
]


def catalog_key(schema: str) -> dg.AssetKey:
    return dg.AssetKey(["cartridge", schema, "catalog"])


def schema_key(schema: str) -> dg.AssetKey:
    return dg.AssetKey(["cartridge", schema, "schema"])


def dbt_models_key(schema: str) -> dg.AssetKey:
    return dg.AssetKey(["cartridge", schema, "dbt_models"])


def raw_key(schema: str, collection: str) -> dg.AssetKey:
    return dg.AssetKey(["raw", schema, collection])


def analytics_key(schema: str, collection: str) -> dg.AssetKey:
    return dg.AssetKey(["analytics", schema, collection])
