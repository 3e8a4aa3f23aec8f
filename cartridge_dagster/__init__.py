"""Cartridge: operational MongoDB and PostgreSQL data into a tested PostgreSQL warehouse.

``cartridge_dagster.CartridgeComponent`` (the Dagster component) is imported on first use, so
importing the package (the CLI, warp) does not import Dagster.
"""

from typing import Any

__all__ = ["CartridgeComponent"]


def __getattr__(name: str) -> Any:
    if name == "CartridgeComponent":
        from cartridge_dagster.component import CartridgeComponent

        return CartridgeComponent
    raise AttributeError(f"module 'cartridge_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
