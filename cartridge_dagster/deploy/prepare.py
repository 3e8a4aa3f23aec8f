"""Prepare the dbt project at image build time (dagster-dbt's ``prepare-and-package``).

In production dagster-dbt expects ``<project>/target/manifest.json`` to exist when the code
location loads; it is made once, at build time, by ``dbt deps`` and ``dbt parse``. Parsing needs
a profile but no database: the project's own ``profiles/profiles.yml`` (all ``env_var(...)``)
when it has one, else a throwaway one of the same kind. No credential enters the image.

``cartridge deploy prepare-dbt`` writes that profile and a small Python file defining the
``DbtProject`` into a scratch directory, then runs
``dagster-dbt project prepare-and-package --file <that file>``. ``--file`` may instead name the
project's own module that defines its ``DbtProject``.

This module never imports dagster (the dagster-dbt CLI runs in a subprocess).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from cartridge_dagster.errors import ConfigError, TerminalError

__all__ = [
    "PrepareError",
    "build_profiles_yaml",
    "dbt_project_definition",
    "prepare_command",
    "prepare_dbt",
    "profile_name",
]


class PrepareError(TerminalError):
    """The dbt project could not be prepared."""


def profile_name(project_dir: Path) -> str:
    """The ``profile:`` a dbt project names in its ``dbt_project.yml``."""
    spec = project_dir / "dbt_project.yml"
    if not spec.is_file():
        raise ConfigError(
            f"{spec} not found: the image needs the dbt project",
            hint="build from the repository root, which holds dbt_project/",
        )
    data = yaml.safe_load(spec.read_text(encoding="utf-8")) or {}
    name = data.get("profile") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{spec}: no `profile:` set")
    return name


def build_profiles_yaml(profile: str, target: str) -> str:
    """A Postgres profile that parses without a database and holds no secret."""

    def env(name: str, default: str) -> str:
        return "{{ env_var('" + name + "', '" + default + "') }}"

    output = {
        "type": "postgres",
        "host": env("CARTRIDGE_DBT_HOST", "localhost"),
        "port": 5432,
        "user": env("CARTRIDGE_DBT_USER", "cartridge"),
        "password": env("CARTRIDGE_DBT_PASSWORD", ""),
        "dbname": env("CARTRIDGE_DBT_DBNAME", "cartridge"),
        "schema": env("CARTRIDGE_DBT_SCHEMA", "public"),
        "threads": 1,
    }
    doc = {profile: {"target": target, "outputs": {target: output}}}
    return yaml.safe_dump(doc, sort_keys=False)


def dbt_project_definition(project_dir: Path, profiles_dir: Path, target: str) -> str:
    """Python source defining the ``DbtProject`` that ``prepare-and-package`` finds."""
    return (
        '"""Build-time DbtProject (written by `cartridge deploy prepare-dbt`)."""\n\n'
        "from dagster_dbt import DbtProject\n\n"
        "cartridge_dbt_project = DbtProject(\n"
        f"    project_dir={str(project_dir)!r},\n"
        f"    profiles_dir={str(profiles_dir)!r},\n"
        f"    target={target!r},\n"
        ")\n"
    )


def _dagster_dbt() -> str:
    """The ``dagster-dbt`` executable next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).with_name("dagster-dbt")
    if beside.is_file():
        return str(beside)
    found = shutil.which("dagster-dbt")
    if found is None:
        raise PrepareError("dagster-dbt is not installed in this environment")
    return found


def prepare_command(definition_file: Path) -> list[str]:
    return [_dagster_dbt(), "project", "prepare-and-package", "--file", str(definition_file)]


def prepare_dbt(
    project_dir: Path,
    *,
    target: str,
    work_dir: Path,
    definition_file: Path | None = None,
    timeout_seconds: float = 900.0,
) -> Path:
    """Run ``prepare-and-package``; return the manifest path it produced.

    Raises :class:`PrepareError` with dbt's own output when preparation fails.
    """
    project_dir = project_dir.resolve()
    if definition_file is None:
        profile = profile_name(project_dir)
        # The project's own profile (``<project>/profiles``) when it has one, as at run time.
        profiles_dir = project_dir / "profiles"
        if not (profiles_dir / "profiles.yml").is_file():
            profiles_dir = work_dir / "profiles"
            profiles_dir.mkdir(parents=True, exist_ok=True)
            (profiles_dir / "profiles.yml").write_text(
                build_profiles_yaml(profile, target), encoding="utf-8"
            )
        definition_file = work_dir / "cartridge_build_project.py"
        definition_file.write_text(
            dbt_project_definition(project_dir, profiles_dir, target), encoding="utf-8"
        )
    else:
        profile_name(project_dir)  # fail early, with a clear message, if there is no project
    try:
        proc = subprocess.run(
            prepare_command(definition_file),
            capture_output=True,
            text=True,
            timeout=timeout_seconds,
            check=False,
            env=None,
        )
    except subprocess.TimeoutExpired:
        raise PrepareError(f"dbt preparation took longer than {timeout_seconds:.0f} s") from None
    manifest = project_dir / "target" / "manifest.json"
    if proc.returncode != 0 or not manifest.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise PrepareError(f"dagster-dbt prepare-and-package failed:\n{tail}")
    return manifest
