"""Shared CLI helpers: consoles, the --config option, running coroutines, exit codes."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from cartridge_dagster.config import CartridgeSettings, load_settings
from cartridge_dagster.errors import CartridgeError, ConfigError, TransientError
from cartridge_dagster.observability import configure_logging

__all__ = [
    "ConfigOption",
    "console",
    "console_err",
    "exit_code_for",
    "load",
    "run_async",
]

T = TypeVar("T")

console = Console(highlight=False)
console_err = Console(stderr=True, highlight=False)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Configuration file (YAML or JSON). Default: $CARTRIDGE_CONFIG, ./cartridge.yaml.",
        show_default=False,
    ),
]


def load(config: Path | None) -> CartridgeSettings:
    """Load and validate settings, and configure logging from them."""
    settings = load_settings(config)
    configure_logging(settings.observability.log_format, settings.observability.log_level)
    return settings


def run_async[R](coro: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coro)


def exit_code_for(exc: CartridgeError) -> int:
    if isinstance(exc, ConfigError):
        return 2
    if isinstance(exc, TransientError):
        return 3
    return 1
