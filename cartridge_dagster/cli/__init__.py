"""The ``cartridge`` command line (``cartridge-warp`` is an alias of ``cartridge warp``).

Each capability registers its commands from its own module; user errors (bad config, unreachable
database, …) print one clear line and exit non-zero, with no traceback.
"""

from __future__ import annotations

import sys

import click
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
    try:
        rc = typer.main.get_command(app).main(args=argv, prog_name=prog, standalone_mode=False)
    except click.exceptions.Abort:
        console_err.print("aborted")
        return 130
    except click.exceptions.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except CartridgeError as exc:
        console_err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        if exc.hint:
            console_err.print(f"[dim]hint:[/] {exc.hint}", markup=True, highlight=False)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        console_err.print("interrupted")
        return 130
    return rc if isinstance(rc, int) else 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(_run(argv, "cartridge"))


def warp_main(argv: list[str] | None = None) -> None:
    """``cartridge-warp ARGS`` is ``cartridge warp ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(_run(["warp", *args], "cartridge-warp"))
