"""Dagster resources, chosen per environment in one place (:func:`build_resources`).

Resources hold the *path* of the Cartridge config, never a secret: connection strings are read
at run time from the config and the environment (``CARTRIDGE_SOURCE__CONNECTION_STRING``…), or
given as ``dagster.EnvVar`` in production, so they never appear in run config, metadata or logs.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from cartridge_dagster.resources.cartridge import CartridgeResource, MongoResource, PostgresResource
from cartridge_dagster.resources.dbt import build_dbt_resources
from cartridge_dagster.resources.warp import WarpResource

__all__ = ["CartridgeResource", "MongoResource", "PostgresResource", "build_resources"]


def build_resources(config_path: str) -> dict[str, Any]:
    """Resources for the environment named by ``$CARTRIDGE_ENV`` (``local`` or ``prod``)."""
    env = os.environ.get("CARTRIDGE_ENV", "local")
    cartridge = CartridgeResource(config_path=config_path)
    if env == "prod":
        mongo = MongoResource(
            config_path=config_path,
            connection_string=dg.EnvVar("CARTRIDGE_SOURCE__CONNECTION_STRING"),
        )
        postgres = PostgresResource(
            config_path=config_path,
            connection_string=dg.EnvVar("CARTRIDGE_DESTINATION__CONNECTION_STRING"),
        )
    else:
        mongo = MongoResource(config_path=config_path)
        postgres = PostgresResource(config_path=config_path)
    dbt = build_dbt_resources(config_path)
    warp = {"warp": WarpResource(config_path=config_path)}
    return {"cartridge": cartridge, "mongo": mongo, "postgres": postgres, **dbt, **warp}
