"""The code location: definitions load, the catalog asset materializes against real services,
and the webserver serves the location (queried through its GraphQL API)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.definitions import build_definitions
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from tests.support.init_env import copy_dbt_project
from tests.support.services import REPO

pytestmark = pytest.mark.integration


@pytest.fixture
def demo_config(tmp_path: Path, pg_url: str) -> Path:
    data = {
        "source": {"connection_string": f"mongoeco://{tmp_path / 'shop.sqlite'}"},
        "destination": {"connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "dbt": {"project_dir": str(copy_dbt_project(tmp_path / "dbt_project"))},
        "schemas": [{"name": "shop", "source_database": "shop", "exclude": ["events"]}],
    }
    path = tmp_path / "cartridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def _seed(config: Path) -> None:
    url = yaml.safe_load(config.read_text())["source"]["connection_string"]
    async with mongo_session(url) as conn:
        await seed_demo(conn.database("shop"), sizes=DemoSizes.scaled(0.01))


def test_catalog_asset_materializes(demo_config: Path) -> None:
    asyncio.run(_seed(demo_config))
    defs = build_definitions(str(demo_config))
    key = dg.AssetKey(["cartridge", "shop", "catalog"])
    result = dg.materialize(
        [defs.get_assets_def(key)],
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node(defs.get_assets_def(key).node_def.name)
    meta = mat.metadata
    assert meta["collections"].value == 3  # events excluded by config
    assert meta["documents"].value == 20 + 5 + 150
    assert meta["per_collection"].value == {"customers": 20, "orders": 150, "products": 5}
    assert "| orders | 150 |" in meta["catalog"].value
    assert "events" in meta["catalog"].value  # listed as out of scope
    # nothing secret in metadata
    assert "postgresql://" not in json.dumps({k: str(v.value) for k, v in meta.items()})
    state = json.loads((demo_config.parent / "state" / "catalog" / "shop.json").read_text())
    assert sorted(state["collections"]) == ["customers", "orders", "products"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_webserver_serves_the_code_location(demo_config: Path, tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CARTRIDGE_CONFIG": str(demo_config),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(REPO / "workspace.yaml"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        data: dict = {}
        while time.monotonic() < deadline:
            try:
                data = _graphql(
                    port,
                    """{ workspaceOrError { ... on Workspace { locationEntries {
                        name loadStatus
                        locationOrLoadError { __typename ... on RepositoryLocation {
                          repositories { name assetNodes { assetKey { path } } } }
                          ... on PythonError { message } } } } } }""",
                )
                entries = data["data"]["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["loadStatus"] == "LOADED":
                    break
            except (OSError, KeyError):
                pass
            time.sleep(1)
        entries = data["data"]["workspaceOrError"]["locationEntries"]
        assert entries[0]["name"] == "cartridge"
        location = entries[0]["locationOrLoadError"]
        assert location["__typename"] == "RepositoryLocation", location
        keys = {
            "/".join(node["assetKey"]["path"])
            for repo in location["repositories"]
            for node in repo["assetNodes"]
        }
        assert "cartridge/shop/catalog" in keys
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
