"""The Cartridge code location. This module only assembles; builders live with their assets.

The configuration file comes from ``$CARTRIDGE_CONFIG`` (``make demo`` points it at
``examples/demo.yaml``) or ``./cartridge.yaml``. Loading reads that file (and the local schema
state, to know each schema's collections); it connects to nothing.
"""

from __future__ import annotations

import dagster as dg

from cartridge_dagster.assets.analytics import build_analytics_defs
from cartridge_dagster.assets.catalog import build_catalog_defs
from cartridge_dagster.assets.init import build_init_defs
from cartridge_dagster.assets.warp import build_warp_defs
from cartridge_dagster.config import find_config_file, load_settings
from cartridge_dagster.resources import build_resources

BUILDERS = [
    build_warp_defs,
    build_catalog_defs,
    build_init_defs,
    build_analytics_defs,
]


def build_definitions(config_path: str | None = None) -> dg.Definitions:
    path = str(find_config_file(config_path))
    settings = load_settings(path)
    return dg.Definitions.merge(
        *(builder(settings) for builder in BUILDERS),
        # Steps run in the run's own process: a subprocess per step costs seconds of imports
        # (dagster, dbt) and buys nothing here; on Kubernetes each run is already its own pod.
        dg.Definitions(resources=build_resources(path), executor=dg.in_process_executor),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
