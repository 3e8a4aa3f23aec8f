"""A throwaway Cartridge environment for init tests: demo source, config file, dbt project copy.

Tests never write into the repository's ``dbt_project/models/generated`` (other engineers use the
same tree): each gets its own copy of the committed dbt project under ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cartridge_dagster.config import CartridgeSettings, load_settings
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from tests.support.services import REPO

DEMO_SCALE = 0.02


@dataclass
class InitEnv:
    root: Path
    config: Path
    mongo_url: str
    pg_url: str
    database: str
    project: Path

    def settings(self) -> CartridgeSettings:
        return load_settings(self.config)

    @property
    def generated(self) -> Path:
        return self.project / "models" / "generated" / "shop"

    @property
    def state(self) -> Path:
        return self.root / "state" / "schemas" / "shop"

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        """Every generated file: (bytes, mtime in ns)."""
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(self.generated.iterdir())
        }


def copy_dbt_project(dest: Path) -> Path:
    shutil.copytree(
        REPO / "dbt_project",
        dest,
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "generated"),
    )
    return dest


def make_env(
    tmp_path: Path,
    mongo_url: str,
    pg_url: str,
    *,
    database: str = "shop",
    scale: float = DEMO_SCALE,
    seed: bool = True,
    extra: dict[str, Any] | None = None,
) -> InitEnv:
    if seed:

        async def _seed() -> None:
            async with mongo_session(mongo_url) as conn:
                await seed_demo(conn.database(database), sizes=DemoSizes.scaled(scale))

        asyncio.run(_seed())
    project = copy_dbt_project(tmp_path / "dbt_project")
    config = {
        "source": {"type": "mongodb", "connection_string": mongo_url},
        "destination": {"connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "schemas": [
            {
                "name": "shop",
                "source_database": database,
                "target_schema": "raw_shop",
                "tables": {"customers": {"sensitive_fields": ["email", "phone"]}},
            }
        ],
        "dbt": {"project_dir": str(project)},
        **(extra or {}),
    }
    path = tmp_path / "cartridge.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return InitEnv(tmp_path, path, mongo_url, pg_url, database, project)


def init_resources(env: InitEnv, *, dbt: bool = False) -> dict[str, object]:
    """The resources the schema and generation assets need, from ``env``'s config."""
    from cartridge_dagster.resources import CartridgeResource, MongoResource, PostgresResource

    path = str(env.config)
    resources: dict[str, object] = {
        "cartridge": CartridgeResource(config_path=path),
        "mongo": MongoResource(config_path=path),
        "postgres": PostgresResource(config_path=path),
    }
    if dbt:
        from cartridge_dagster.resources.dbt import build_dbt_resource

        resources["dbt"] = build_dbt_resource(path)
    return resources


def asset_of(defs: Any, key: Any) -> Any:
    """The assets definition of ``defs`` that holds ``key`` (AssertionError when none does)."""
    import dagster as dg

    for a in defs.assets or []:
        if isinstance(a, dg.AssetsDefinition) and key in a.keys:
            return a
    raise AssertionError(f"no asset {key.to_user_string()}")
