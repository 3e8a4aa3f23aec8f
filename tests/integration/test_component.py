"""The Cartridge component in a dg project: the real ``dg`` CLI against examples/dg-project.

``dg list components`` shows it (entry point), ``dg check defs`` / ``dg list defs`` load it with
the translated keys and groups, the collections come from component state refreshed by
``dg utils refresh-defs-state`` (not from the scan's files at load), and ``dg scaffold defs``
writes a defs.yaml that loads.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from cartridge_dagster.component import CartridgeComponent
from cartridge_dagster.connectors.mongo import mongo_session
from cartridge_dagster.demo.seed import DemoSizes, seed_demo
from tests.support.init_env import copy_dbt_project
from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "dg-project"


def _run(cmd: list[str], cwd: Path, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "COLUMNS": "200",
        # the project's package, as `uv sync` / `pip install -e .` would make it importable
        # (`dg utils refresh-defs-state` imports it in its own process)
        "PYTHONPATH": str(cwd),
        # an activated environment: dagster-dbt finds `dbt` on PATH
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("CARTRIDGE_CONFIG", None)
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if ok:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _dg(project: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([str(BIN / "dg"), *args], project, ok=ok)


def _defs(project: Path) -> dict[str, Any]:
    out = _dg(project, "list", "defs", "--json").stdout
    return json.loads(out[out.index("{") :])


def _assets(defs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["asset_key"]: a for a in defs["assets"]}


def _copy_example(dest: Path) -> Path:
    shutil.copytree(
        EXAMPLE, dest, ignore=shutil.ignore_patterns(".local_defs_state", "__pycache__")
    )
    return dest


def test_dg_list_components_shows_cartridge(tmp_path: Path) -> None:
    project = _copy_example(tmp_path / "project")
    out = _dg(project, "list", "components", "--json").stdout
    listed = {c["key"]: c for c in json.loads(out[out.index("{") :])["items"]}
    assert "cartridge_dagster.CartridgeComponent" in listed
    assert "Cartridge" in listed["cartridge_dagster.CartridgeComponent"]["summary"]


def test_example_project_loads_with_translated_keys(tmp_path: Path) -> None:
    project = _copy_example(tmp_path / "project")
    _dg(project, "check", "defs")
    defs = _defs(project)
    assets = _assets(defs)
    # schema `shop` only (billing is configured but not selected), everything under acme/
    expected = {
        "acme/cartridge/shop/catalog",
        "acme/cartridge/shop/schema",
        "acme/cartridge/shop/dbt_models",
        "acme/raw/shop/customers",
        "acme/raw/shop/orders",
        "acme/analytics/shop/customers",
        "acme/analytics/shop/orders",
    }
    assert set(assets) == expected
    assert {a["group_name"] for a in assets.values()} == {"acme_shop"}
    # defs.yaml's post_processing reaches every asset, the analytics multi-asset's too
    for asset in assets.values():
        assert {"key": "team", "value": "acme"} in asset["tags"], asset["asset_key"]
    # lineage is translated with the keys: no dependency points outside acme/
    assert assets["acme/raw/shop/orders"]["dependency_keys"] == ["acme/cartridge/shop/schema"]
    assert assets["acme/analytics/shop/orders"]["dependency_keys"] == ["acme/raw/shop/orders"]
    assert assets["acme/cartridge/shop/schema"]["dependency_keys"] == [
        "acme/cartridge/shop/catalog"
    ]
    checks = {c["key"] for c in defs["asset_checks"]}
    assert "acme/raw/shop/orders:lag_under_threshold" in checks
    assert "acme/raw/shop/customers:no_dead_letters" in checks
    assert "acme/analytics/shop/orders:reconciliation" in checks
    assert all(c.startswith("acme/") for c in checks)
    jobs = {j["name"] for j in defs["jobs"]}
    assert {"warp_shop", "update_shop", "profile_shop", "refresh_shop"} <= jobs
    assert not any("billing" in j for j in jobs)
    assert "warp_shop_supervisor" in {s["name"] for s in defs["sensors"]}
    assert {"cartridge", "mongo", "postgres", "warp"} <= {r["name"] for r in defs["resources"]}


@pytest.fixture
def stateful_project(tmp_path: Path, pg_url: str) -> Path:
    """The example project with a real (embedded, seeded) source and no `include` list: the
    collections are only known once scanned."""
    project = _copy_example(tmp_path / "project")
    source = f"mongoeco://{tmp_path / 'shop.sqlite'}"

    async def seed() -> None:
        async with mongo_session(source) as conn:
            await seed_demo(conn.database("shop"), sizes=DemoSizes.scaled(0.01))

    asyncio.run(seed())
    config = {
        "source": {"type": "mongodb", "connection_string": source},
        "destination": {"type": "postgresql", "connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "ai": {"provider": "none"},
        "dbt": {"project_dir": str(copy_dbt_project(tmp_path / "dbt_project"))},
        "schemas": [
            {"name": "shop", "source_database": "shop", "exclude": ["events"]},
            {
                "name": "billing",
                "source_database": "billing",
                "source": {"type": "postgresql", "connection_string": pg_url},
            },
        ],
    }
    (project / "cartridge.yaml").write_text(yaml.safe_dump(config))
    return project


def _defs_yaml(project: Path) -> Path:
    return project / "cartridge_example" / "defs" / "cartridge" / "defs.yaml"


def test_collections_are_component_state(stateful_project: Path) -> None:
    project = stateful_project
    config = str(project / "cartridge.yaml")
    # every `dg` command counts as development and would refresh the state on each load:
    # turned off here, loads read only the recorded state (as a deployed code location does)
    defs_yaml = _defs_yaml(project)
    component = yaml.safe_load(defs_yaml.read_text())
    component["attributes"]["defs_state"] = {
        "management_type": "LOCAL_FILESYSTEM",
        "refresh_if_dev": False,
    }
    defs_yaml.write_text(yaml.safe_dump(component))
    _dg(project, "utils", "refresh-defs-state")
    before = _assets(_defs(project))
    assert not [k for k in before if k.startswith("acme/raw/")]  # nothing scanned yet
    assert "acme/cartridge/shop/catalog" in before

    # a scan and generation record the collections and write the dbt models ...
    _run([str(BIN / "cartridge"), "scan", "--config", config, "--schema", "shop"], project)
    _run([str(BIN / "cartridge"), "generate", "--config", config, "--schema", "shop"], project)
    # ... but loading reads the component's state, which has not been refreshed
    stale = _assets(_defs(project))
    assert not [k for k in stale if k.startswith("acme/analytics/")]
    # the dbt sources name the raw tables (as dependencies), but warp's raw assets are absent
    assert not [a for a in stale.values() if "Raw landing table" in (a.get("description") or "")]

    _dg(project, "utils", "refresh-defs-state")
    _dg(project, "check", "defs")
    assets = _assets(_defs(project))
    for c in ("customers", "orders", "products"):
        assert "Raw landing table" in assets[f"acme/raw/shop/{c}"].get("description", "")
        assert f"acme/analytics/shop/{c}" in assets
    assert "acme/raw/shop/events" not in assets  # excluded by the config
    assert not [k for k in assets if "billing" in k]  # not a selected schema
    # the generated dbt models carry the prefix and depend on the prefixed raw tables
    staging = assets["acme/staging/shop/stg_shop__orders"]
    assert "acme/raw/shop/orders" in staging["dependency_keys"]
    assert "acme/cartridge/shop/dbt_models" in staging["dependency_keys"]
    assert staging["group_name"] == "acme_shop"
    assert (
        "acme/staging/shop/stg_shop__orders"
        in (assets["acme/analytics/shop/orders"]["dependency_keys"])
    )
    assert all(k.startswith("acme/") for k in assets)
    (state_file,) = (project / "cartridge_example" / "defs" / ".local_defs_state").glob("*/state")
    assert json.loads(state_file.read_text())["schemas"] == {
        "shop": ["customers", "orders", "products"]
    }

    # by default (`refresh_if_dev`), `dg` and `dagster dev` refresh on every load: an outdated
    # record is replaced by what the scan found
    state_file.write_text(json.dumps({"format": 1, "schemas": {"shop": ["customers"]}}))
    del component["attributes"]["defs_state"]
    defs_yaml.write_text(yaml.safe_dump(component))
    fresh = _assets(_defs(project))
    assert "acme/analytics/shop/orders" in fresh
    assert json.loads(state_file.read_text())["schemas"]["shop"] == [
        "customers",
        "orders",
        "products",
    ]


def test_scaffold_writes_a_working_defs_yaml(tmp_path: Path) -> None:
    project = _copy_example(tmp_path / "project")
    shutil.rmtree(project / "cartridge_example" / "defs" / "cartridge")
    _dg(
        project,
        "scaffold",
        "defs",
        "cartridge_dagster.CartridgeComponent",
        "team_cartridge",
        "--config-path",
        "cartridge.yaml",
        "--schemas",
        "shop",
        "--key-prefix",
        "team",
    )
    written = project / "cartridge_example" / "defs" / "team_cartridge" / "defs.yaml"
    assert yaml.safe_load(written.read_text()) == {
        "type": "cartridge_dagster.CartridgeComponent",
        "attributes": {
            "config_path": "cartridge.yaml",
            "schemas": ["shop"],
            "key_prefix": ["team"],
        },
    }
    _dg(project, "check", "defs")
    assets = _assets(_defs(project))
    assert "team/raw/shop/orders" in assets
    assert {a["group_name"] for a in assets.values()} == {"shop"}

    # a schema the configuration does not have is refused with the configured ones named
    written.write_text(written.read_text().replace("- shop", "- nope"))
    failed = _dg(project, "check", "defs", ok=False)
    assert failed.returncode != 0
    assert "'nope' not in the configuration (configured: shop, billing)" in (
        failed.stdout + failed.stderr
    )


def test_scaffold_without_config_writes_a_starter_that_loads(tmp_path: Path) -> None:
    project = _copy_example(tmp_path / "project")
    shutil.rmtree(project / "cartridge_example" / "defs" / "cartridge")
    _dg(project, "scaffold", "defs", "cartridge_dagster.CartridgeComponent", "starter")
    folder = project / "cartridge_example" / "defs" / "starter"
    assert yaml.safe_load((folder / "defs.yaml").read_text())["attributes"] == {
        "config_path": "cartridge_example/defs/starter/cartridge.yaml"
    }
    assert (folder / "cartridge.yaml").is_file()
    _dg(project, "check", "defs")
    assert "cartridge/app/catalog" in _assets(_defs(project))


def test_runs_report_the_translated_keys(tmp_path: Path, pg_url: str) -> None:
    """Executed in process: the catalog asset of a prefixed build materializes under its key,
    and the dbt translator keeps the prefix outside the build (as dagster-dbt calls it in a run)."""
    source = f"mongoeco://{tmp_path / 'shop.sqlite'}"

    async def seed() -> None:
        async with mongo_session(source) as conn:
            await seed_demo(conn.database("shop"), sizes=DemoSizes.scaled(0.01))

    asyncio.run(seed())
    config = tmp_path / "cartridge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "source": {"connection_string": source},
                "destination": {"connection_string": pg_url},
                "state_dir": str(tmp_path / "state"),
                "schemas": [{"name": "shop", "source_database": "shop"}],
            }
        )
    )
    component = CartridgeComponent(
        config_path=str(config),
        key_prefix=["acme", "ops"],
        group_name="cdc_{schema}",
        collections_from="scan",  # no dg project here: no component state
    )
    defs = dg.build_defs_for_component(component)
    key = dg.AssetKey(["acme", "ops", "cartridge", "shop", "catalog"])
    result = dg.materialize(
        [defs.get_assets_def(key)],
        resources=defs.resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    assert [m.asset_key for m in result.get_asset_materialization_events()] == [key]
    assert defs.resolve_asset_graph().get(key).group_name == "cdc_shop"

    from cartridge_dagster.assets.init.dbt import CartridgeDbtTranslator
    from cartridge_dagster.scope import BuildScope, building

    with building(BuildScope(key_prefix=("acme",))):
        translator = CartridgeDbtTranslator()
    source_props = {
        "resource_type": "source",
        "source_meta": {"cartridge": {"schema": "shop", "collection": "orders"}},
    }
    assert translator.get_asset_key(source_props) == dg.AssetKey(["acme", "raw", "shop", "orders"])


def test_inline_configuration(tmp_path: Path, pg_url: str) -> None:
    """`config:` instead of a file: validated at load with the field named, written once for
    the resources (owner-readable only), and refused together with `config_path`."""
    from cartridge_dagster.errors import ConfigError

    inline = {
        "source": {"connection_string": "mongodb://localhost:27017/?replicaSet=rs0"},
        "destination": {"connection_string": pg_url},
        "state_dir": str(tmp_path / "state"),
        "schemas": [{"name": "shop", "source_database": "shop", "include": ["orders"]}],
    }
    defs = dg.build_defs_for_component(
        CartridgeComponent(config=inline, key_prefix=["inline"], collections_from="scan")
    )
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert "inline/raw/shop/orders" in keys
    assert "inline/analytics/shop/orders" in keys
    (written,) = (tmp_path / "state" / "component").glob("config-*.yaml")
    assert yaml.safe_load(written.read_text()) == inline
    assert written.stat().st_mode & 0o077 == 0
    assert defs.resources["cartridge"].config_path == str(written)

    bad = {**inline, "schemas": [{"name": "shop", "source_database": "shop", "tables": 3}]}
    with pytest.raises(ConfigError, match=r"defs.yaml: config: schemas\[0\]\.tables"):
        dg.build_defs_for_component(CartridgeComponent(config=bad, collections_from="scan"))
    with pytest.raises(ConfigError, match="set config_path or config, not both"):
        dg.build_defs_for_component(
            CartridgeComponent(config=inline, config_path="x.yaml", collections_from="scan")
        )
    with pytest.raises(ConfigError, match=r"'nope' not in the configuration \(configured: shop\)"):
        dg.build_defs_for_component(
            CartridgeComponent(config=inline, schemas=["nope"], collections_from="scan")
        )
