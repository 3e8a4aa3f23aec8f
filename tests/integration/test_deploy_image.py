"""The image's build steps without a Docker engine: deploy/docker/install.sh, step by step.

The Dockerfile runs ``install.sh deps``, ``project``, ``dbt`` and ``check`` in a build context
holding pyproject.toml, uv.lock, README.md, cartridge_dagster/ and dbt_project/. This test makes
the same context in a temporary directory and runs the same script into a fresh virtual
environment, offline (uv's cache), with the same interpreter version the image uses. A tiny dbt
project stands in for the generated one, so dagster-dbt's prepare-and-package really runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UV = REPO / ".venv" / "bin" / "uv"


def _context(tmp: Path) -> Path:
    """What .dockerignore lets into the build context, for the files the Dockerfile copies."""
    ctx = tmp / "context"
    (ctx / "deploy" / "docker").mkdir(parents=True)
    for name in ("pyproject.toml", "uv.lock", "README.md", "hatch_build.py"):
        shutil.copy2(REPO / name, ctx / name)
    shutil.copytree(
        REPO / "cartridge_dagster",
        ctx / "cartridge_dagster",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", ".env"),
    )
    shutil.copy2(REPO / "deploy" / "docker" / "install.sh", ctx / "deploy" / "docker")
    project = ctx / "dbt_project"
    if (REPO / "dbt_project" / "dbt_project.yml").is_file():  # the real project, as shipped
        shutil.copytree(
            REPO / "dbt_project",
            project,
            ignore=shutil.ignore_patterns("target", "dbt_packages", "logs", ".user.yml"),
        )
        (project / "models" / "staging").mkdir(parents=True, exist_ok=True)
        (project / "models" / "staging" / "stg_orders.sql").write_text(
            "select 1 as order_id, 'open'::text as status\n"
        )
        return ctx
    (project / "models" / "staging").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        yaml.safe_dump(
            {
                "name": "cartridge",
                "version": "1.0.0",
                "config-version": 2,
                "profile": "cartridge",
                "model-paths": ["models"],
            }
        )
    )
    (project / "models" / "staging" / "stg_orders.sql").write_text(
        "select 1 as order_id, 'open'::text as status\n"
    )
    return ctx


def _step(ctx: Path, venv: Path, step: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIRTUAL_ENV", "UV_", "CARTRIDGE_", "DAGSTER_HOME"))
    }
    env.update(
        PATH=f"{UV.parent}:{env.get('PATH', '')}",
        UV_PROJECT_ENVIRONMENT=str(venv),
        UV_PYTHON=sys._base_executable,
        UV_PYTHON_DOWNLOADS="never",
        UV_OFFLINE="1",  # packages come from uv's cache: no network needed
        UV_LINK_MODE="hardlink",
        DBT_SEND_ANONYMOUS_USAGE_STATS="false",
        DAGSTER_DISABLE_TELEMETRY="1",
    )
    proc = subprocess.run(
        ["deploy/docker/install.sh", step],
        cwd=ctx,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    offline_miss = ("offline", "network connectivity is disabled", "not found in the cache")
    if (
        proc.returncode != 0
        and step == "deps"
        and any(m in proc.stderr.lower() for m in offline_miss)
    ):
        pytest.skip(f"uv's cache lacks a locked package (offline): {proc.stderr[-300:]}")
    assert proc.returncode == 0, f"install.sh {step}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_image_install_steps_in_a_fresh_environment(tmp_path: Path) -> None:
    if not UV.is_file():
        pytest.skip("uv is not installed in .venv (scripts/bootstrap.sh installs it)")
    ctx = _context(tmp_path)
    venv = tmp_path / "image-venv"

    _step(ctx, venv, "deps")
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert (site / "dagster_k8s").is_dir() and (site / "psycopg2").is_dir()
    assert not (site / "cartridge_dagster").exists(), "deps must not install the project"
    # Only runtime dependencies: no test tools, no demo engine.
    assert not (site / "pytest").exists() and not (site / "mongoeco").exists()

    _step(ctx, venv, "project")
    installed = site / "cartridge_dagster"
    assert installed.is_dir() and not installed.is_symlink()
    assert not list(site.glob("*cartridge*.pth")), "the image installs a wheel, not an editable"
    assert list(installed.glob("_bsonjson.*.so")), "the wheel carries the compiled C extension"

    _step(ctx, venv, "dbt")
    manifest = ctx / "dbt_project" / "target" / "manifest.json"
    assert manifest.is_file()
    assert "model.cartridge.stg_orders" in manifest.read_text()
    assert not (ctx / "dbt_project" / "profiles.yml").exists(), "no stray profile in the image"

    proc = _step(ctx, venv, "check")
    assert f"dagster, version {version('dagster')}" in proc.stdout  # the locked version

    # The installed CLI renders a deployment with what the image contains.
    out = tmp_path / "rendered"
    subprocess.run(
        [
            str(venv / "bin" / "cartridge"),
            "deploy",
            "render",
            "--config",
            str(REPO / "examples" / "mongodb-to-postgresql-single.yaml"),
            "--output",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")},
    )
    assert (out / "values.yaml").read_text() == (REPO / "deploy/helm/values.yaml").read_text()
