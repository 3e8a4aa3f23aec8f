"""Shared CLI helpers: consoles, loading the configuration, running coroutines, exit codes.

This module does not import typer: ``cartridge warp run`` parses its command line without it
(``cli.warp_run``); the typer commands' shared options are in ``cli.options``.

``console`` and ``console_err`` are made when first used (``common.console``, or
``from cartridge_dagster.cli.common import console``): rich's console costs ~25 ms to import,
which ``warp run`` would otherwise pay before its first read for output it prints at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cartridge_dagster.errors import CartridgeError, ConfigError, TransientError

if TYPE_CHECKING:
    from rich.console import Console

    from cartridge_dagster.config import CartridgeSettings

    console: Console
    console_err: Console

__all__ = [
    "UNBOUNDED_WIDTH",
    "console",
    "console_err",
    "exit_code_for",
    "load",
    "run_async",
]

T = TypeVar("T")

#: The width of output that goes to a file or a pipe: lines are never cut or wrapped there.
UNBOUNDED_WIDTH = 10_000


def _make_console(*, stderr: bool) -> Console:
    from rich.console import Console, ConsoleDimensions

    class _Console(Console):
        """A rich console as wide as the terminal, and unbounded when the output is not one.

        Rich falls back to 80 columns when it finds no terminal, so a piped ``warp status`` or
        scan table lost its right-hand columns (``produ…``) and one-line errors broke in two.
        ``COLUMNS`` still sets the width when given."""

        @property
        def size(self) -> ConsoleDimensions:
            dims = super().size
            if self._width is None and "COLUMNS" not in self._environ and not self.is_terminal:
                return ConsoleDimensions(UNBOUNDED_WIDTH, dims.height)
            return dims

        @size.setter
        def size(self, new_size: tuple[int, int]) -> None:
            self._width, self._height = new_size

    return _Console(stderr=stderr, highlight=False)


def __getattr__(name: str) -> Any:
    if name in ("console", "console_err"):
        made = _make_console(stderr=name == "console_err")
        globals()[name] = made  # made once: later lookups find the module attribute
        return made
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load(config: Path | None) -> CartridgeSettings:
    """Load and validate settings, and configure logging from them."""
    from cartridge_dagster.config import load_settings
    from cartridge_dagster.observability import configure_logging

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
