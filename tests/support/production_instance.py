"""The shipped production ``dagster.yaml`` (deploy/dagster-instance.yaml) as a test instance.

Storage is the real PostgreSQL given by ``pg_url`` (through the ``DAGSTER_PG_*`` variables the
file reads); only the way the K8s run launcher reaches a cluster is swapped (in-cluster → a
kubeconfig file naming an unreachable server), because no cluster is reachable in tests. Each
home directory is one pod: its own ``$DAGSTER_HOME`` on its own disk, the database shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.support.services import REPO

SHIPPED = REPO / "deploy" / "dagster-instance.yaml"


def set_dagster_pg_env(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    parts = urlsplit(pg_url)
    monkeypatch.setenv("DAGSTER_PG_USERNAME", parts.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", parts.password or "")
    monkeypatch.setenv("DAGSTER_PG_HOST", parts.hostname or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(parts.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", parts.path.lstrip("/"))


def production_config(kubeconfig: Path) -> dict[str, Any]:
    """The shipped instance config, launcher pointed at ``kubeconfig`` (written here)."""
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "not-a-token"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    config: dict[str, Any] = yaml.safe_load(SHIPPED.read_text())
    launcher = config["run_launcher"]["config"]
    assert launcher.pop("load_incluster_config") is True
    launcher.update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    return config


def write_home(home: Path, config: dict[str, Any]) -> Path:
    """A ``$DAGSTER_HOME`` with ``config`` as its dagster.yaml."""
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home
