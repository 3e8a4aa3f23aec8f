"""Options shared by the typer commands (this module imports typer; ``common`` does not)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["ConfigOption"]

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Configuration file (YAML or JSON). Default: $CARTRIDGE_CONFIG, ./cartridge.yaml.",
        show_default=False,
    ),
]
