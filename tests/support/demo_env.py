"""A seeded embedded demo source and a Cartridge config for end-to-end tests."""

from __future__ import annotations

import asyncio
import uuid
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


def write_demo_config(tmp_path: Path, pg_source_url: str, pg_url: str) -> Path:
    """The demo's two schemas, as in examples/demo.yaml, on throwaway databases."""
    data: dict[str, Any] = {
        "source": {"connection_string": f"mongoeco://{tmp_path / 'shop.sqlite'}"},
        "destination": {"connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "dbt": {"project_dir": str(copy_dbt_project(tmp_path / "dbt_project"))},
        "defaults": {"batching": {"max_batch_size": 500, "max_batch_seconds": 0.2}},
        "schemas": [
            {"name": "shop", "source_database": "shop", "target_schema": "raw_shop"},
            {
                "name": "billing",
                "source_database": "billing",
                "target_schema": "raw_billing",
                "source": {"type": "postgresql", "connection_string": pg_source_url},
                "tables": {"customers": {"sensitive_fields": ["email"]}},
                "warp": {
                    "metrics_port": 0,
                    "idle_checkpoint_seconds": 0.5,
                    "materialization_interval_seconds": 0,
                    "slot_name": f"cartridge_t_{uuid.uuid4().hex[:12]}",
                },
            },
        ],
    }
    path = tmp_path / "cartridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
