"""Asset keys and groups: one place, stable and readable (see the asset graph in DESIGN.md).

``cartridge/<S>/catalog`` → ``cartridge/<S>/schema`` → ``cartridge/<S>/dbt_models``;
``raw/<S>/<C>`` (landed by warp) → dbt models (``staging/<S>/stg_<S>__<C>``…) →
``analytics/<S>/<C>``. Built through the Cartridge component, every key carries the component's
prefix and every group follows its template (:class:`cartridge_dagster.scope.BuildScope`).
"""

from __future__ import annotations

import dagster as dg

from cartridge_dagster.scope import current_scope

__all__ = [
    "analytics_key",
    "catalog_key",
    "dbt_models_key",
    "group_name",
    "key_selection",
    "raw_key",
    "schema_key",
    "staging_key",
]


def _key(*parts: str) -> dg.AssetKey:
    return dg.AssetKey([*current_scope().key_prefix, *parts])


def key_selection(*parts: str) -> str:
    """A ``key:"…"`` selection clause for the (prefixed) key ``parts`` (``*`` allowed).

    Parts are schema names (``[a-z0-9_]``), fixed words and prefix parts checked by
    :class:`BuildScope`: none can hold a quote."""
    return 'key:"' + "/".join((*current_scope().key_prefix, *parts)) + '"'


def group_name(schema: str) -> str:
    return current_scope().group_for(schema)


def catalog_key(schema: str) -> dg.AssetKey:
    return _key("cartridge", schema, "catalog")


def schema_key(schema: str) -> dg.AssetKey:
    return _key("cartridge", schema, "schema")


def dbt_models_key(schema: str) -> dg.AssetKey:
    return _key("cartridge", schema, "dbt_models")


def raw_key(schema: str, collection: str) -> dg.AssetKey:
    return _key("raw", schema, collection)


def staging_key(schema: str, model: str) -> dg.AssetKey:
    """Asset key of a generated dbt model: ``staging/<schema>/<model>``."""
    return _key("staging", schema, model)


def analytics_key(schema: str, collection: str) -> dg.AssetKey:
    return _key("analytics", schema, collection)
