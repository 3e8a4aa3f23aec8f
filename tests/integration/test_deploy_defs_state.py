"""The Cartridge component's state across pods: recorded by a run pod, read by the code server.

Two instances from the shipped production config (deploy/dagster-instance.yaml), each with its
own ``$DAGSTER_HOME`` directory (two pods, no shared disk), one PostgreSQL. With the shipped
``defs_state_storage`` (state in the run storage) the code location built in the second pod has
the per-collection assets the scan in the first one found; with Dagster's default (a directory
under ``$DAGSTER_HOME``) it has none and logs ``component.state.unreadable``: the bug this
storage fixes, kept here as the control.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import structlog
import yaml
from dagster.components import DefsStateConfigArgs

from cartridge_dagster.assets.keys import schema_key
from cartridge_dagster.component import CartridgeComponent, record_state
from cartridge_dagster.config import load_settings
from cartridge_dagster.deploy.defs_state import RunStorageDefsStateStorage, StateTooLarge
from tests.support.init_env import InitEnv, asset_of, init_resources, make_env
from tests.support.production_instance import production_config, set_dagster_pg_env, write_home

pytestmark = pytest.mark.integration

COLLECTIONS = {"customers", "events", "orders", "products"}

Pod = Callable[..., dg.DagsterInstance]


@pytest.fixture
def pod(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Pod:
    """``pod(name, storage=...)``: an instance of the production config in its own home, to
    use as ``with pod(name) as instance:`` (the context a code server builds in)."""
    set_dagster_pg_env(monkeypatch, pg_url)

    def make(name: str, storage: dict[str, Any] | str | None = "shipped") -> dg.DagsterInstance:
        config = production_config(tmp_path / f"kubeconfig-{name}")
        assert config["defs_state_storage"] == {
            "module": "cartridge_dagster.deploy.defs_state",
            "class": "RunStorageDefsStateStorage",
        }
        if storage is None:  # Dagster's default: a directory under this pod's DAGSTER_HOME
            del config["defs_state_storage"]
        elif storage != "shipped":
            config["defs_state_storage"] = storage
        home = write_home(tmp_path / f"home-{name}", config)
        return dg.DagsterInstance.from_config(str(home))

    return make


def _raw_collections(defs: dg.Definitions) -> set[str]:
    return {k.path[-1] for k in defs.resolve_all_asset_keys() if k.path[:2] == ["raw", "shop"]}


def _load(config: str) -> tuple[set[str], list[dict[str, Any]]]:
    """Build the code location as the code server does (inside ``with instance:``): the raw
    collections and the component's log events."""
    from cartridge_dagster.definitions import build_definitions

    with structlog.testing.capture_logs() as logs:
        defs = build_definitions(config)
    return _raw_collections(defs), [e for e in logs if e["event"].startswith("component.")]


@pytest.mark.slow
def test_a_scan_run_in_one_pod_builds_the_collections_in_another(
    pod: Pod, tmp_path: Path, mongo_url: str, pg_url: str
) -> None:
    from cartridge_dagster.definitions import build_definitions

    env = make_env(tmp_path / "env", mongo_url, pg_url)
    config = str(env.config)
    with pod("run") as run_pod:
        assert isinstance(run_pod.defs_state_storage, RunStorageDefsStateStorage)
        schema_asset = asset_of(build_definitions(config), schema_key("shop"))
        result = dg.materialize([schema_asset], resources=init_resources(env), instance=run_pod)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    version = event.step_materialization_data.materialization.metadata[
        "component_state_version"
    ].value
    # the run pod's local files go with it: the code server pod never had them
    scanned = list(env.state.rglob("*.json"))
    assert scanned
    for f in scanned:
        f.unlink()

    with pod("code-server") as code_server:
        storage = code_server.defs_state_storage
        assert isinstance(storage, RunStorageDefsStateStorage)
        (key,) = storage.list_state_keys_with_prefix("CartridgeComponent[")
        assert storage.get_latest_version(key) == version
        collections, logs = _load(config)
    assert collections == COLLECTIONS
    assert not [e for e in logs if e["event"] == "component.state.unreadable"], logs

    # the control: Dagster's default storage (this pod's own disk) sees the same pointer in
    # the run storage but not the blob, which is the bug on Kubernetes
    with pod("default-storage", storage=None):
        collections, logs = _load(config)
    assert collections == set()
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "component.state.unreadable"
    ]


def _set_include(env: InitEnv, include: list[str] | None) -> None:
    """The schema's collections as its ``include`` list (what the state records, no scan)."""
    data = yaml.safe_load(env.config.read_text())
    if include is None:
        data["schemas"][0].pop("include", None)
    else:
        data["schemas"][0]["include"] = include
    env.config.write_text(yaml.safe_dump(data))


def test_record_state_versions_keep_the_latest_pointer_across_pods(
    pod: Pod, tmp_path: Path, mongo_url: str, pg_url: str
) -> None:
    env = make_env(tmp_path / "env", mongo_url, pg_url, seed=False)
    config = str(env.config)
    key = CartridgeComponent(
        config_path=config, defs_state=DefsStateConfigArgs.versioned_state_storage()
    ).defs_state_config.key
    versions = []
    with pod("run") as recorder:
        for include in (["orders"], ["orders", "customers"]):
            _set_include(env, include)
            versions.append(record_state(recorder, key, load_settings(config), ["shop"]))
    first, second = versions
    assert first is not None and second is not None and first != second
    _set_include(env, None)  # the code server has no scan files and no include list

    with pod("code-server") as reader:
        storage = reader.defs_state_storage
        assert isinstance(storage, RunStorageDefsStateStorage)
        assert storage.get_latest_version(key) == second
        collections, logs = _load(config)
        # the older version stays readable, and the pointer can go back to it
        with tempfile.TemporaryDirectory() as tmp:
            storage.download_state_to_path(key, first, Path(tmp) / "s")
            assert json.loads((Path(tmp) / "s").read_text())["schemas"] == {"shop": ["orders"]}
        storage.set_latest_version(key, first)
    assert collections == {"orders", "customers"}
    assert not [e for e in logs if e["log_level"] == "warning"], logs
    with pod("code-server-restarted"):
        assert _load(config)[0] == {"orders"}


def test_an_oversized_state_fails_with_one_clear_line_and_keeps_the_pointer(
    pod: Pod, tmp_path: Path, mongo_url: str, pg_url: str
) -> None:
    env = make_env(tmp_path / "env", mongo_url, pg_url, seed=False)
    limited = {
        "module": "cartridge_dagster.deploy.defs_state",
        "class": "RunStorageDefsStateStorage",
        "config": {"max_state_bytes": 200},
    }
    with pod("run", storage=limited) as recorder:
        _set_include(env, ["orders"])
        before = record_state(recorder, "K", load_settings(env.config), ["shop"])
        _set_include(env, [f"collection_{n:03d}" for n in range(20)])
        with pytest.raises(StateTooLarge) as err:
            record_state(recorder, "K", load_settings(env.config), ["shop"])
    message = str(err.value)
    assert "\n" not in message
    assert re.fullmatch(
        r"defs state 'K' version [0-9a-f-]{36} is \d+ bytes stored as text, "
        r"over the 200-byte limit of RunStorageDefsStateStorage",
        message,
    ), message
    with pod("code-server") as reader:
        storage = reader.defs_state_storage
        assert storage is not None
        assert storage.get_latest_version("K") == before
