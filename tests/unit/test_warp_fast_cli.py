"""``cartridge warp run`` reads a plain command line without typer (``cli.warp_run``).

The oracle for the options is the typer command itself: every command line the fast reader
accepts must give the parameters typer gives, and whatever it declines goes to typer (help,
typos, missing values). Through the real entry point (``python -m cartridge_dagster``), the
fast path imports neither typer nor pydantic-settings, and a bad configuration is refused
with the same one line, naming the field, as on the typer path.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cartridge_dagster import cli
from cartridge_dagster.cli.warp_run import parse_run_args
from tests.support.services import REPO


def _typer_params(args: list[str]) -> dict[str, Any]:
    group = typer.main.get_command(cli.build_app(["warp_cmds"]))
    ctx = group.make_context("cartridge", ["warp", "run"])
    warp = group.get_command(ctx, "warp")  # type: ignore[attr-defined]
    run = warp.get_command(ctx, "run")
    return dict(run.make_context("run", list(args)).params)


ACCEPTED = [
    [],
    ["--config", "c.yaml"],
    ["-c", "c.yaml"],
    ["-cc.yaml"],
    ["-c=c.yaml"],
    ["--config=c.yaml"],
    ["--config", ""],
    ["--config", "dir with spaces/c.yaml", "--mode", "single", "--schema", "shop"],
    ["-s", "shop", "--dry-run"],
    ["-sshop", "--mode=multi"],
    ["--stop-when-idle", "0.5"],
    ["--stop-when-idle=3"],
    ["--stop-when-idle", "1e1", "--dry-run", "--config", "c.json"],
    ["--stop-when-idle", " 2 "],
    ["--mode", "sideways"],  # refused by the command itself, on either path
]

DECLINED = [
    ["--help"],
    ["--bogus"],
    ["--conf", "c.yaml"],  # click does not expand abbreviations: it suggests --config
    ["-c"],
    ["--config"],
    ["--stop-when-idle", "abc"],
    ["--dry-run=yes"],
    ["--config", "a.yaml", "--config", "b.yaml"],
    ["--schema", "-x"],
    ["extra"],
    ["--", "--config", "c.yaml"],
    ["-x"],
]


@pytest.mark.parametrize("args", ACCEPTED, ids=" ".join)
def test_a_plain_command_line_reads_as_typer_reads_it(args: list[str]) -> None:
    parsed = parse_run_args(args)
    assert parsed is not None
    assert dataclasses.asdict(parsed) == _typer_params(args)


@pytest.mark.parametrize("args", DECLINED, ids=" ".join)
def test_anything_else_is_left_to_typer(args: list[str]) -> None:
    assert parse_run_args(args) is None


# --------------------------------------------------------------------------- the entry point

BASE: dict[str, Any] = {
    "source": {"connection_string": "mongodb://127.0.0.1:1/?replicaSet=rs0"},
    "destination": {"connection_string": "postgresql://u@127.0.0.1:1/db"},
    "schemas": [{"name": "shop", "source_database": "shop", "warp": {"metrics_port": 0}}],
}


def _cartridge(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, importtime: bool = False
) -> subprocess.CompletedProcess[str]:
    # no COLUMNS: a pipe's lines are never wrapped (cli.common)
    full_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CARTRIDGE_") and k not in ("COLUMNS", "LINES")
    }
    full_env.update({"NO_COLOR": "1", **(env or {})})
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run(
        [sys.executable, *flags, "-m", "cartridge_dagster", *args],
        cwd=cwd,
        env={**full_env, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _imported(stderr: str) -> set[str]:
    return {
        line.rsplit("|", 1)[1].strip()
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def _without_importtime(stderr: str) -> str:
    return "\n".join(line for line in stderr.splitlines() if not line.startswith("import time:"))


@pytest.mark.parametrize(
    ("change", "env", "expected"),
    [
        (
            {
                "schemas": [
                    {"name": "shop", "source_database": "shop", "batching": {"max_batch_size": 0}}
                ]
            },
            {},
            "schemas[0].batching.max_batch_size: Input should be greater than or equal to 1",
        ),
        ({"mode": "both"}, {}, "mode: Input should be 'single' or 'multi'"),
        ({"sourc": {}}, {}, "sourc: unknown key"),
        (
            {},
            {"CARTRIDGE_DESTINATION__POOL_MAX_SIZE": "many"},
            "destination.pool_max_size: Input should be a valid integer, unable to parse string "
            "as an integer (set by environment variable CARTRIDGE_DESTINATION__POOL_MAX_SIZE)",
        ),
        (
            {"source": {"connection_string": "http://x/"}},
            {},
            "source.connection_string: must start with one of mongodb://",
        ),
    ],
    ids=["file value", "enum", "unknown key", "environment value", "url scheme"],
)
def test_a_bad_configuration_is_one_line_naming_the_field_on_both_paths(
    tmp_path: Path, change: dict[str, Any], env: dict[str, str], expected: str
) -> None:
    config = tmp_path / "cartridge.yaml"
    config.write_text(yaml.safe_dump({**BASE, **change}))
    fast = _cartridge(["warp", "run", "--config", str(config)], tmp_path, env, importtime=True)
    # a repeated option is declined by the fast reader: typer reads it (the last one wins)
    slow = _cartridge(
        ["warp", "run", "--config", str(config), "--config", str(config)], tmp_path, env
    )
    assert fast.returncode == slow.returncode == 2
    message = _without_importtime(fast.stderr)
    assert message == slow.stderr.rstrip("\n")
    assert message.count("\n") == 0, message  # one line, no traceback
    assert message.startswith(f"error: {config}: ") and expected in message, message
    imported = _imported(fast.stderr)
    assert "cartridge_dagster.cli.warp_run" in imported  # the fast path did run
    assert _heavy(imported) == set()


def _heavy(imported: set[str]) -> set[str]:
    return {m for m in imported if m.split(".")[0] in ("typer", "click", "pydantic_settings")}


def test_the_import_check_can_fail(tmp_path: Path) -> None:
    """The typer path (a repeated option) does import typer, and the check sees it."""
    config = tmp_path / "cartridge.yaml"
    config.write_text(yaml.safe_dump({**BASE, "mode": "both"}))
    args = ["warp", "run", "--config", str(config), "--config", str(config)]
    assert "typer" in _heavy(_imported(_cartridge(args, tmp_path, importtime=True).stderr))


def test_help_and_typos_still_answer_through_typer(tmp_path: Path) -> None:
    helped = _cartridge(["warp", "run", "--help"], tmp_path)
    assert helped.returncode == 0
    assert "Usage: cartridge warp run [OPTIONS]" in helped.stdout
    assert "--stop-when-idle" in helped.stdout
    typo = _cartridge(["warp", "run", "--conf", "x.yaml"], tmp_path)
    assert typo.returncode == 2
    assert "No such option: --conf" in typo.stderr
    missing = _cartridge(["warp", "run", "--config", str(tmp_path / "none.yaml")], tmp_path)
    assert missing.returncode == 2
    assert (
        missing.stderr.strip() == f"error: configuration file not found: {tmp_path / 'none.yaml'}"
    )


def test_warp_run_turns_the_pydantic_plugin_scan_off_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An interpreter-wide setting, made by the entry point (``cli._run``) before the
    configuration is imported; ``PYDANTIC_DISABLE_PLUGINS`` set to anything is kept."""
    from cartridge_dagster.cli import warp_run

    seen: list[str | None] = []
    monkeypatch.setattr(
        warp_run, "run", lambda args: seen.append(os.environ.get("PYDANTIC_DISABLE_PLUGINS"))
    )
    monkeypatch.delenv("PYDANTIC_DISABLE_PLUGINS", raising=False)
    assert cli._run(["warp", "run", "--config", "c.yaml"], "cartridge") == 0
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", "")
    assert cli._run(["warp", "run"], "cartridge") == 0
    assert seen == ["__all__", ""]
