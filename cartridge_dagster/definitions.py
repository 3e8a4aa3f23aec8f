"""The Cartridge code location: one use of the Cartridge component (:mod:`.component`).

The configuration file comes from ``$CARTRIDGE_CONFIG`` (``make demo`` points it at
``examples/demo.yaml``) or ``./cartridge.yaml``. Loading reads that file and the last scan's
local files (``collections_from: scan``: each schema's collections, so a reload after
``cartridge scan`` shows new ones); it connects to nothing. A team's own ``dg`` project uses
the same component from a ``defs.yaml`` (docs/component.md).
"""

from __future__ import annotations

import dagster as dg

from cartridge_dagster.component import CartridgeComponent


def build_definitions(config_path: str | None = None) -> dg.Definitions:
    component = CartridgeComponent(config_path=config_path, collections_from="scan")
    return dg.build_defs_for_component(component)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
