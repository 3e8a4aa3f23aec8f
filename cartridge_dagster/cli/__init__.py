"""The ``cartridge`` command line (``cartridge-warp`` is an alias of ``cartridge warp``).

Each capability registers its commands from its own module; user errors (bad config, unreachable
database, …) print one clear line and exit non-zero, with no traceback.

A command line naming one capability's command (``cartridge warp run …``) builds the app with
that capability's module only: ``warp run`` is a long-lived process whose start-up is timed
(launch → first snapshot read), and the other modules import what it never uses (rich's
tables and progress bars, ``http.server``, the init and deploy machinery). ``--help`` at the
top, or an unknown command, builds the whole app. ``app`` is the whole app, built when first
asked for (tests invoke it).

A plain ``warp run`` command line (its options, each given once with its value) does not
import typer at all: :func:`cartridge_dagster.cli.warp_run.parse_run_args` reads it and the
command runs straight away; help, typos and bad values go through typer as before.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cartridge_dagster.errors import CartridgeError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import typer

__all__ = ["app", "build_app", "main", "warp_main"]

#: The modules that register commands, in the order ``--help`` lists them.
_MODULES = ("core_cmds", "init_cmds", "warp_cmds", "analytics_cmds", "deploy_cmds")
#: Each top-level command (or command group) → the module that registers it.
_COMMANDS = {
    "validate": "core_cmds",
    "services": "core_cmds",
    "demo": "core_cmds",
    "docs": "core_cmds",
    "scan": "init_cmds",
    "generate": "init_cmds",
    "schema": "init_cmds",
    "warp": "warp_cmds",
    "analyze": "analytics_cmds",
    "serve-reports": "analytics_cmds",
    "deploy": "deploy_cmds",
}


def build_app(modules: Sequence[str] = _MODULES) -> typer.Typer:
    """A ``cartridge`` app with the commands of ``modules`` (all of them by default)."""
    import typer

    built = typer.Typer(
        name="cartridge",
        help="Operational MongoDB and PostgreSQL data into a tested, documented PostgreSQL "
        "warehouse.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for name in modules:
        importlib.import_module(f"cartridge_dagster.cli.{name}").register(built)
    return built


_app: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    if name == "app":
        global _app
        if _app is None:
            _app = build_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _modules_for(argv: Sequence[str]) -> Sequence[str]:
    """The one module a command line needs, or all of them (top-level options, help, typos)."""
    first = argv[0] if argv else None
    module = _COMMANDS.get(first) if first is not None else None
    return (module,) if module is not None else _MODULES


def _run(argv: list[str] | None, prog: str) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:2] == ["warp", "run"] and not _completing(prog):
        from cartridge_dagster.cli import warp_run
        from cartridge_dagster.runtime import skip_pydantic_plugins

        skip_pydantic_plugins()  # a process-wide setting: this entry point's to make
        parsed = warp_run.parse_run_args(args[2:])
        if parsed is not None:
            return _guarded(lambda: warp_run.run(parsed))

    def typer_app() -> None:
        import typer

        command = typer.main.get_command(build_app(_modules_for(args)))
        # Standalone mode: usage errors print click's message and exit 2.
        command.main(args=args, prog_name=prog, standalone_mode=True)

    return _guarded(typer_app)


def _completing(prog: str) -> bool:
    """Whether the shell asks for completions (typer answers those)."""
    return f"_{prog.replace('-', '_').upper()}_COMPLETE" in os.environ


def _guarded(call: Callable[[], None]) -> int:
    """Run a command: its exit code, and a user error as one line (no traceback).

    Inside a command typer runs, typer handles interruptions and broken pipes itself (exit 130
    and 1); these clauses catch them elsewhere (importing, and ``warp run``'s own path)."""
    try:
        call()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except CartridgeError as exc:
        from cartridge_dagster.cli.common import console_err, exit_code_for

        console_err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        if exc.hint:
            console_err.print(f"[dim]hint:[/] {exc.hint}", markup=True, highlight=False)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        from cartridge_dagster.cli.common import console_err

        console_err.print("interrupted")
        return 130
    except BrokenPipeError:
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(_run(argv, "cartridge"))


def warp_main(argv: list[str] | None = None) -> None:
    """``cartridge-warp ARGS`` is ``cartridge warp ARGS``."""
    args = list(sys.argv[1:] if argv is None else argv)
    sys.exit(_run(["warp", *args], "cartridge-warp"))
