"""The Cartridge code location: one use of the Cartridge component (:mod:`.component`).

The configuration file comes from ``$CARTRIDGE_CONFIG`` (``make demo`` points it at
``examples/demo.yaml``) or ``./cartridge.yaml``. The collections of each schema are component
state kept in the Dagster instance's defs state storage (``VERSIONED_STATE_STORAGE``): every
scan run (the ``schema`` assets) records what it found as a new version, and a load builds from
the latest one. ``dagster dev`` / ``dg dev`` refresh it at every load (from the last scan's
local files, so a ``cartridge scan`` then a reload shows new collections). Without a recorded
version, or outside an instance, the last scan's local files are read. Loading connects to
nothing. A team's own ``dg`` project uses the same component from a ``defs.yaml``
(docs/component.md).
"""

from __future__ import annotations

import dagster as dg
from dagster.components import DefsStateConfigArgs

from cartridge_dagster.component import CartridgeComponent


def build_definitions(config_path: str | None = None) -> dg.Definitions:
    component = CartridgeComponent(
        config_path=config_path,
        collections_from="state",
        # the instance keeps the state (no dg project here to hold local state files)
        defs_state=DefsStateConfigArgs.versioned_state_storage(),
    )
    return dg.build_defs_for_component(component)


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
