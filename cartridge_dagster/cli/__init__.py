"""The ``cartridge`` command line (``cartridge-warp`` is an alias of ``cartridge warp``).

Each capability registers its commands from its own module; user errors (bad config, unreachable
database, …) print one clear line and exit non-zero, with no traceback.
"""

from __future__ import annotations

import sys

import typer

from cartridge_dagster.cli import (
    analytics_cmds,
    core_cmds,
    deploy_cmds,
    init_cmds,
    warp_cmds,
)
from cartridge_dagster.cli.common import console_err, exit_code_for
from cartridge_dagster.errors import CartridgeError

__all__ = ["app", "main", "warp_main"]

app = typer.Typer(
    name="cartridge",
    help="Operational MongoDB and PostgreSQL data into a tested, documented PostgreSQL warehouse.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for module in (core_cmds, init_cmds, warp_cmds, analytics_cmds, deploy_cmds):
    module.register(app)


def _run(argv: list[str] | None, prog: str) -> int:
    command = typer.main.get_command(app)
    try:
        # Standalone mode: usage errors print click's message and exit 2.
        command.main(args=argv, prog_name=prog, standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except CartridgeError as exc:
        console_err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        if exc.hint:
            console_err.print(f"[dim]hint:[/] {exc.hint}", markup=True, highlight=False)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        console_err.print("interrupted")
        return 130
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(_run(argv, "cartridge"))


def warp_main(argv: list[str] | None = None) -> None:
    """``cartridge-warp ARGS`` is ``cartridge warp ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(_run(["warp", *args], "cartridge-warp"))
