"""init's Dagster layer: ``cartridge/<S>/schema``, ``cartridge/<S>/dbt_models`` and the dbt models.

Lineage: ``cartridge/<S>/catalog`` → ``cartridge/<S>/schema`` → ``cartridge/<S>/dbt_models``;
``raw/<S>/<C>`` (warp) → ``staging/<S>/stg_<S>__<C>`` (dagster-dbt, also depending on
``cartridge/<S>/dbt_models``) so the whole pipeline is one graph.
"""

import dagster as dg

from cartridge_dagster.assets.init.dbt import (
    CartridgeDbtTranslator,
    build_dbt_assets,
    staging_key,
)
from cartridge_dagster.assets.init.schema import build_schema_assets
from cartridge_dagster.config import CartridgeSettings

__all__ = [
    "CartridgeDbtTranslator",
    "build_init_defs",
    "staging_key",
]


def build_init_defs(settings: CartridgeSettings) -> dg.Definitions:
    """Assets of init for every configured schema, plus the dbt project's models."""
    assets: list[dg.AssetsDefinition] = []
    for schema in settings.schemas:
        assets.extend(build_schema_assets(schema))
    assets.extend(build_dbt_assets(settings))
    return dg.Definitions(assets=assets)
