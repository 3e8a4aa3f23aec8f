"""A seeded embedded demo source and a Cartridge config for end-to-end tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from tests.support.init_env import copy_dbt_project


def seeded_demo_config(
    tmp_path: Path,
    pg_url: str,
    *,
    sizes: DemoSizes,
    schema: dict[str, Any] | None = None,
    **top: Any,
) -> Path:
    """Seed ``shop`` into an embedded source under ``tmp_path`` and write a config using it,
    its own state directory and its own copy of the dbt project. Call it before anything that
    runs an event loop (Playwright's sync API does)."""
    source = f"mongoeco://{tmp_path / 'shop.sqlite'}"

    async def seed() -> None:
        async with mongo_session(source) as conn:
            await seed_demo(conn.database("shop"), sizes=sizes)

    asyncio.run(seed())
    config = tmp_path / "cartridge.yaml"
    data: dict[str, Any] = {
        "source": {"connection_string": source},
        "destination": {"connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "dbt": {"project_dir": str(copy_dbt_project(tmp_path / "dbt_project"))},
        "schemas": [{"name": "shop", "source_database": "shop", **(schema or {})}],
        **top,
    }
    config.write_text(yaml.safe_dump(data))
    return config
