"""``cartridge warp run`` imports only what it needs before its first read.

Its start-up is timed (launch → first snapshot read, ``make bench``), and most of it is
imports. Each test runs a fresh interpreter through the steps the command takes before it
connects — the command line, the configuration, the runner — and lists what got imported:
typer and pydantic-settings (the command line is read without typer, the environment
without pydantic-settings), the Dagster layer, dbt, rich (tables, progress bars), the HTTP
server and Prometheus (a server only when a metrics port is set; the metrics are made in a
worker thread while connecting),
PyMongo and the embedded engine (imported in a worker thread when the source connects) and
asyncpg (imported once the first snapshot reads are asked for: ``warp.readahead``) must not be
among them. A module named for import at its first use (``cartridge_dagster.lazy``) is in
``sys.modules`` before that, not loaded: it is not counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cartridge_dagster import cli

#: Top-level packages (or exact modules) warp run must not import before it connects.
NOT_BEFORE_CONNECTING = (
    "typer",
    "click",
    "pydantic_settings",
    "dagster",
    "dagster_dbt",
    "dbt",
    "rich",
    "pygments",
    "colorama",
    "http.server",
    "prometheus_client",
    "pymongo",
    "mongoeco",
    "psycopg2",
    "asyncpg",
    "cartridge_dagster.connectors.postgres",
    "cartridge_dagster.definitions",
    "cartridge_dagster.assets",
    "cartridge_dagster.sensors",
    "cartridge_dagster.resources",
    "cartridge_dagster.analytics",
    "cartridge_dagster.init",
    "cartridge_dagster.deploy",
    "cartridge_dagster.warp.source",
    "cartridge_dagster.cli.warp_cmds",
    "cartridge_dagster.cli.core_cmds",
    "cartridge_dagster.cli.init_cmds",
    "cartridge_dagster.cli.analytics_cmds",
    "cartridge_dagster.cli.deploy_cmds",
)


def _imported_by(code: str, tmp_path: Path) -> list[str]:
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        "source: {connection_string: 'mongodb://127.0.0.1:1/?replicaSet=rs0'}\n"
        "destination: {connection_string: 'postgresql://u@127.0.0.1:1/db'}\n"
        "schemas:\n- {name: shop, source_database: shop, warp: {metrics_port: 0}}\n"
    )
    script = textwrap.dedent(code).format(config=str(config)) + textwrap.dedent(
        """
        import json, sys
        loaded = [n for n, m in sys.modules.items() if type(m).__name__ != "_LazyModule"]
        print(json.dumps(sorted(loaded)))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    modules: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return modules


def _offenders(modules: list[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == p or m.startswith(p + ".") for p in NOT_BEFORE_CONNECTING)
    )


def test_warp_run_path_imports_nothing_it_does_not_need(tmp_path: Path) -> None:
    modules = _imported_by(
        """
        from cartridge_dagster.cli import warp_run
        # what `cartridge warp run` does up to run_schemas (cli._run, then warp_run.run)
        args = warp_run.parse_run_args(["--config", {config!r}])
        from cartridge_dagster.cli.common import load
        settings = load(args.config)
        from cartridge_dagster.observability import HealthState
        from cartridge_dagster.warp.runner import run_schemas
        from cartridge_dagster.runtime import gc_tuning_enabled, young_gc_threshold
        HealthState()
        """,
        tmp_path,
    )
    assert "cartridge_dagster.warp.runner" in modules  # the script did run the path
    assert "cartridge_dagster.cli.warp_run" in modules
    assert _offenders(modules) == []


#: What ``warp run`` must not import before it asks for its first reads (``warp.early``): the
#: settings are validated meanwhile (pydantic), logging is configured then (structlog), and the
#: runner and the warehouse's driver come after.
NOT_BEFORE_EARLY_READS = (
    "pydantic",
    "pydantic_core",
    "cartridge_dagster.config",
    "structlog",
    "cartridge_dagster.warp.runner",
    "cartridge_dagster.warp.source",
    "cartridge_dagster.warp.sink",
    "tenacity",
    "asyncpg",
    "typer",
    "rich",
    "dagster",
)


def test_early_reads_are_asked_for_before_the_settings_are_validated(tmp_path: Path) -> None:
    modules = _imported_by(
        """
        from cartridge_dagster.cli import warp_run
        args = warp_run.parse_run_args(["--config", {config!r}])
        from cartridge_dagster.warp import early
        plan = early.plan(args.config, args.schema)
        assert plan is not None and plan.database == "shop"
        # what EarlyRead._read does before its first request goes out
        from cartridge_dagster.connectors.mongo import (
            natural_find, open_mongo, raw_database, stream_start,
        )
        conn = open_mongo(plan.url, timeout_seconds=plan.timeout_seconds)
        raw_database(conn, plan.database)
        natural_find("orders", early.FIRST_PAGE)
        """,
        tmp_path,
    )
    assert "pymongo" in modules and "cartridge_dagster.warp.early" in modules
    offenders = sorted(
        m for m in modules if any(m == p or m.startswith(p + ".") for p in NOT_BEFORE_EARLY_READS)
    )
    assert offenders == []


def test_a_lazy_module_counts_once_it_is_used(tmp_path: Path) -> None:
    """The sink names asyncpg lazily: its first use (an attribute) imports it, and then the
    check sees it."""
    modules = _imported_by(
        """
        from cartridge_dagster.warp import sink
        sink.asyncpg.PostgresError
        """,
        tmp_path,
    )
    assert "asyncpg" in _offenders(modules)


def test_the_same_check_catches_a_heavy_import(tmp_path: Path) -> None:
    """The check can fail: the whole command line (``cartridge --help``) imports rich."""
    modules = _imported_by(
        """
        from cartridge_dagster import cli
        cli.app
        """,
        tmp_path,
    )
    assert "rich" in modules
    assert "cartridge_dagster.cli.analytics_cmds" in _offenders(modules)


@pytest.mark.parametrize("module", sorted(set(cli._COMMANDS.values())))
def test_each_command_is_found_in_the_module_it_is_mapped_to(module: str) -> None:
    """``cartridge CMD …`` builds the app from ``_COMMANDS[CMD]`` alone: every top-level
    command and group a module registers is mapped to it, and nothing else is."""
    app = cli.build_app([module])
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == {cmd for cmd, home in cli._COMMANDS.items() if home == module}


def test_the_whole_app_has_every_mapped_command() -> None:
    app = cli.app
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == set(cli._COMMANDS)


def test_an_unmapped_first_word_builds_the_whole_app() -> None:
    assert cli._modules_for(["--help"]) == cli._MODULES
    assert cli._modules_for([]) == cli._MODULES
    assert cli._modules_for(["wrap", "run"]) == cli._MODULES  # a typo: click suggests
    assert cli._modules_for(["warp", "run"]) == ("warp_cmds",)
