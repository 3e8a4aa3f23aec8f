"""New generated models appear as assets in a running webserver without a restart.

Runs the real ``dagster-webserver`` as a subprocess on a workspace with Cartridge's code
location; generation (the ``cartridge/shop/dbt_models`` asset) writes new models, parses the
project and asks the webserver to reload the location through Dagster's GraphQL API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import requests
import yaml

from cartridge_dagster.assets.init import build_init_defs, reload
from cartridge_dagster.assets.keys import dbt_models_key
from cartridge_dagster.init import store
from cartridge_dagster.init.service import generate_schema, scan_and_record, validate_project
from cartridge_dagster.resources import CartridgeResource, PostgresResource
from tests.support.init_env import InitEnv, make_env
from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUERY = "{ assetNodes { assetKey { path } } }"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _asset_keys(port: int) -> set[str]:
    resp = requests.post(f"http://127.0.0.1:{port}/graphql", json={"query": QUERY}, timeout=30)
    resp.raise_for_status()
    nodes = resp.json()["data"]["assetNodes"]
    return {"/".join(n["assetKey"]["path"]) for n in nodes}


@pytest.fixture
def webserver(tmp_path: Path, mongo_url: str, pg_url: str) -> Iterator[tuple[InitEnv, int]]:
    env = make_env(tmp_path, mongo_url, pg_url)
    settings = env.settings()
    asyncio.run(scan_and_record(settings, "shop"))
    latest = store.load_latest(env.state)
    assert latest is not None
    # the UI starts with only two collections' models generated
    subset = {
        **latest,
        "collections": {k: latest["collections"][k] for k in ("customers", "products")},
    }
    generate_schema(settings, "shop", document=subset)
    validate_project(settings)

    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "cartridge_dagster.definitions",
                            "location_name": "cartridge",
                            "working_directory": str(REPO),
                        }
                    }
                ]
            }
        )
    )
    home = tmp_path / "dagster_home"
    home.mkdir()
    port = _free_port()
    proc_env = {
        **os.environ,
        "CARTRIDGE_CONFIG": str(env.config),
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    log = (tmp_path / "webserver.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            str(workspace),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=proc_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if any("stg_shop__customers" in k for k in _asset_keys(port)):
                    break
            except (requests.RequestException, KeyError, TypeError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise AssertionError(
                    "webserver did not serve the location:\n"
                    + (tmp_path / "webserver.log").read_text()[-3000:]
                )
            time.sleep(1)
        yield env, port
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_an_unreachable_webserver_is_said_so(monkeypatch: pytest.MonkeyPatch) -> None:
    port = _free_port()  # nothing listens there
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", f"http://127.0.0.1:{port}")
    outcome = reload.reload_code_location("cartridge")
    assert outcome.startswith("skipped: webserver not reachable"), outcome


def test_a_reload_turned_off_is_not_attempted(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as server:  # a webserver that would hang: never asked
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("DAGSTER_WEBSERVER_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
        monkeypatch.setenv("CARTRIDGE_CODE_LOCATION_RELOAD", "off")
        started = time.monotonic()
        outcome = reload.reload_code_location("cartridge")
        assert outcome.startswith("not needed: CARTRIDGE_CODE_LOCATION_RELOAD=off"), outcome
        assert time.monotonic() - started < 1.0
        server.settimeout(0.1)
        with pytest.raises(TimeoutError):
            server.accept()  # no connection was made


def test_generated_models_appear_after_reload(
    webserver: tuple[InitEnv, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, port = webserver
    keys = _asset_keys(port)
    assert "staging/shop/stg_shop__customers" in keys
    assert "staging/shop/stg_shop__orders" not in keys
    assert "cartridge/shop/dbt_models" in keys

    # the dbt_models asset generates the rest, parses and reloads the running location
    monkeypatch.setenv("DAGSTER_WEBSERVER_URL", f"http://127.0.0.1:{port}")
    # the mutation is given up on after 0.5 s (a reload takes seconds): the location's entry is
    # polled until the reload has loaded it, as when a loaded machine takes minutes
    monkeypatch.setattr(reload, "MUTATION_WAIT_SECONDS", 0.5)
    settings = env.settings()
    models = next(
        a
        for a in build_init_defs(settings).assets or []
        if isinstance(a, dg.AssetsDefinition) and dbt_models_key("shop") in a.keys
    )
    result = dg.materialize(
        [models],
        resources={
            "cartridge": CartridgeResource(config_path=str(env.config)),
            "postgres": PostgresResource(config_path=str(env.config)),
        },
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = event.step_materialization_data.materialization.metadata
    assert meta["files_changed"].value >= 3
    assert meta["code_location_reload"].value == "reloaded"

    keys = _asset_keys(port)  # same webserver process, no restart
    assert {
        "staging/shop/stg_shop__orders",
        "staging/shop/stg_shop__orders__items",
        "staging/shop/stg_shop__events",
        "raw/shop/orders",
    } <= keys
