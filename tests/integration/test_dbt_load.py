"""Loading the code location under `dagster dev` parses the dbt project only when the manifest is
older than the project's files: a real `dbt parse`, its manifest's time the witness."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from cartridge_dagster.assets.init.dbt import cartridge_dbt_project, manifest_is_current
from tests.support.init_env import copy_dbt_project

pytestmark = pytest.mark.integration

MODEL = "select 1 as id\n"


def load(project_dir: Path) -> int:
    """Load as a fresh code-location process would; the manifest's mtime after it."""
    cartridge_dbt_project.cache_clear()
    project = cartridge_dbt_project(str(project_dir))
    return project.manifest_path.stat().st_mtime_ns


def touch_later(path: Path, manifest_ns: int) -> None:
    """Give ``path`` a time after the manifest's, whatever the clock's resolution."""
    later = manifest_ns + 1_000_000_000
    os.utime(path, ns=(later, later))


def test_second_load_does_not_parse_until_a_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DAGSTER_IS_DEV_CLI", "1")  # what `dagster dev` sets: prepare_if_dev parses
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    project_dir = copy_dbt_project(tmp_path / "dbt_project")
    model = project_dir / "models" / "hand" / "one.sql"
    model.parent.mkdir(parents=True)
    model.write_text(MODEL)
    manifest = project_dir / "target" / "manifest.json"
    assert not manifest.exists()

    first = load(project_dir)  # no manifest: parsed
    assert '"model.cartridge.one"' in manifest.read_text()
    started = time.perf_counter()
    assert load(project_dir) == first, "an unchanged project was parsed again"
    assert time.perf_counter() - started < 1.0

    # a changed model, a changed YAML file, a deleted model: each is parsed again
    touch_later(model, first)
    second = load(project_dir)
    assert second > first
    assert load(project_dir) == second

    (project_dir / "models" / "hand" / "one.yml").write_text(
        "version: 2\nmodels:\n  - name: one\n    description: the number one\n"
    )
    touch_later(project_dir / "models" / "hand" / "one.yml", second)
    third = load(project_dir)
    assert third > second
    assert "the number one" in manifest.read_text()

    model.unlink()
    (project_dir / "models" / "hand" / "one.yml").unlink()
    touch_later(model.parent, third)
    assert load(project_dir) > third
    assert '"model.cartridge.one"' not in manifest.read_text()

    # dbt_project.yml itself
    fourth = manifest.stat().st_mtime_ns
    touch_later(project_dir / "dbt_project.yml", fourth)
    assert load(project_dir) > fourth


def test_manifest_is_current_ignores_what_dbt_writes(tmp_path: Path) -> None:
    project_dir = copy_dbt_project(tmp_path / "dbt_project")
    cartridge_dbt_project.cache_clear()
    project = cartridge_dbt_project(str(project_dir))  # not under dagster dev: no parse
    assert not project.manifest_path.exists()
    assert not manifest_is_current(project)
    project.manifest_path.parent.mkdir(parents=True)
    project.manifest_path.write_text("{}")
    assert manifest_is_current(project)
    # dbt's own output (logs, partial parse, packages) does not make the manifest stale
    for written in ("logs/dbt.log", "target/partial_parse.msgpack", "dbt_packages/p/x.sql"):
        path = project_dir / written
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
        touch_later(path, project.manifest_path.stat().st_mtime_ns)
    assert manifest_is_current(project)
    macro = next((project_dir / "macros").rglob("*.sql"))
    touch_later(macro, project.manifest_path.stat().st_mtime_ns)
    assert not manifest_is_current(project)
