"""Running dbt for init: environment from the Cartridge config, ``dbt parse``, ``dbt build``.

The committed profile (``dbt_project/profiles/profiles.yml``) reads everything from environment
variables; :func:`dbt_env` fills them from a PostgreSQL URL (the configured destination). The
password goes into ``DBT_ENV_SECRET_CARTRIDGE_PASSWORD``, which dbt scrubs from its logs.
(Not named ``dbt_*.py``: dbt would import such a module as an adapter plugin.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.errors import CartridgeError, ConfigError, redact_url

__all__ = [
    "DbtResult",
    "dbt_env",
    "dbt_executable",
    "profiles_dir",
    "run_dbt",
]

PASSWORD_ENV = "DBT_ENV_SECRET_CARTRIDGE_PASSWORD"


def profiles_dir(project_dir: Path) -> Path:
    return project_dir / "profiles"


def dbt_env(
    url: str, *, schema: str = "cartridge", threads: int = 2, target: str | None = None
) -> dict[str, str]:
    """Environment variables for the committed profile, from a PostgreSQL URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"dbt needs a postgresql:// destination, got {redact_url(url)}")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    env = {
        "CARTRIDGE_DBT_HOST": query.get("host") or parts.hostname or "127.0.0.1",
        "CARTRIDGE_DBT_PORT": str(query.get("port") or parts.port or 5432),
        "CARTRIDGE_DBT_USER": unquote(parts.username or query.get("user") or "postgres"),
        PASSWORD_ENV: unquote(parts.password or query.get("password") or ""),
        "CARTRIDGE_DBT_DBNAME": unquote(
            parts.path.lstrip("/") or query.get("dbname") or "postgres"
        ),
        "CARTRIDGE_DBT_SCHEMA": schema,
        "CARTRIDGE_DBT_THREADS": str(threads),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    if target:
        env["DBT_TARGET"] = target
    return env


def settings_dbt_env(settings: CartridgeSettings, url: str | None = None) -> dict[str, str]:
    """:func:`dbt_env` for the configured destination (or ``url``)."""
    return dbt_env(url or settings.destination_url(), threads=settings.dbt.threads)


def dbt_executable() -> list[str]:
    """The dbt command of this environment (next to the running interpreter)."""
    candidate = Path(sys.executable).parent / "dbt"
    if candidate.exists():
        return [str(candidate)]
    return [sys.executable, "-c", "from dbt.cli.main import cli; cli()"]


@dataclass
class DbtResult:
    """One dbt invocation: exit code, output, and ``run_results.json`` when written."""

    args: list[str]
    returncode: int
    output: str
    run_results: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def statuses(self) -> dict[str, str]:
        """unique_id → status from run_results.json."""
        if not self.run_results:
            return {}
        return {r["unique_id"]: r["status"] for r in self.run_results.get("results", [])}

    def failures(self) -> list[str]:
        return [
            f"{uid}: {status}"
            for uid, status in sorted(self.statuses().items())
            if status not in ("success", "pass")
        ]


def run_dbt(
    project_dir: Path,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    timeout: float = 900.0,
    check: bool = True,
) -> DbtResult:
    """Run ``dbt ARGS`` in ``project_dir`` with the Cartridge profile; raise on failure."""
    project_dir = project_dir.resolve()
    target_dir = project_dir / "target"
    run_results = target_dir / "run_results.json"
    if run_results.exists():
        run_results.unlink()
    cmd = [
        *dbt_executable(),
        *args,
        "--project-dir",
        str(project_dir),
        "--profiles-dir",
        str(profiles_dir(project_dir)),
    ]
    full_env = {**os.environ, **env}
    try:
        proc = subprocess.run(
            cmd,
            cwd=project_dir,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CartridgeError(
            f"dbt {' '.join(args)} did not finish within {timeout:.0f} s"
        ) from None
    output = proc.stdout + proc.stderr
    secret = env.get(PASSWORD_ENV)
    if secret:
        output = output.replace(secret, "*****")
    results = None
    if run_results.exists():
        try:
            results = json.loads(run_results.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            results = None
    result = DbtResult(list(args), proc.returncode, output, results)
    if check and not result.ok:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise CartridgeError(
            f"dbt {' '.join(args)} failed (exit {proc.returncode}):\n{tail}",
            hint=f"run it by hand in {project_dir} with --profiles-dir profiles",
        )
    return result
