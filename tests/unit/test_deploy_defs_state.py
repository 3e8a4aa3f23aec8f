"""RunStorageDefsStateStorage on a SQLite instance: blobs, versions, the size limit.

The two-pod case against PostgreSQL (the production instance) is in
tests/integration/test_deploy_defs_state.py.
"""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from cartridge_dagster.deploy import DeployOptions, render
from cartridge_dagster.deploy.defs_state import (
    DEFAULT_KEEP_VERSIONS,
    DEFAULT_MAX_STATE_BYTES,
    RunStorageDefsStateStorage,
    StateTooLarge,
)
from tests.support.services import REPO

STORAGE = {"module": "cartridge_dagster.deploy.defs_state", "class": "RunStorageDefsStateStorage"}
EXAMPLE = REPO / "examples" / "mongodb-to-postgresql-multi.yaml"


def _instance(home: Path, config: dict[str, Any] | None = None) -> dg.DagsterInstance:
    storage = dict(STORAGE, config=config) if config else STORAGE
    home.mkdir(exist_ok=True)
    return dg.DagsterInstance.local_temp(str(home), overrides={"defs_state_storage": storage})


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with _instance(tmp_path / "home") as inst:
        yield inst


def _storage(instance: dg.DagsterInstance) -> RunStorageDefsStateStorage:
    storage = instance.defs_state_storage
    assert isinstance(storage, RunStorageDefsStateStorage)
    return storage


def _upload(storage: RunStorageDefsStateStorage, key: str, version: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state"
        path.write_bytes(data)
        storage.upload_state_from_path(key, version, path)


def _download(storage: RunStorageDefsStateStorage, key: str, version: str, tmp: Path) -> bytes:
    path = tmp / f"got-{version}"
    storage.download_state_to_path(key, version, path)
    return path.read_bytes()


def test_the_instance_config_names_the_storage_with_its_defaults(
    instance: dg.DagsterInstance,
) -> None:
    storage = _storage(instance)
    assert storage.max_state_bytes == DEFAULT_MAX_STATE_BYTES == 1024 * 1024
    assert storage.keep_versions == DEFAULT_KEEP_VERSIONS == 5
    assert storage.get_latest_defs_state_info() is None
    assert storage.get_latest_version("k") is None


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b'{"format": 1, "schemas": {"shop": ["orders"]}}\n', "text:"),
        ('{"ü": "名前"}'.encode(), "text:"),
        (b"a\x00b", "base64:"),  # valid UTF-8, but PostgreSQL text holds no NUL
        (bytes(range(256)), "base64:"),  # not UTF-8
        (b"", "text:"),
    ],
)
def test_blobs_round_trip_text_or_base64(
    instance: dg.DagsterInstance, tmp_path: Path, data: bytes, encoding: str
) -> None:
    storage = _storage(instance)
    _upload(storage, "Comp[a/b.yaml:*]", "v1", data)
    assert _download(storage, "Comp[a/b.yaml:*]", "v1", tmp_path) == data
    stored = instance.run_storage.get_cursor_values(
        {'__cartridge_defs_state__["Comp[a/b.yaml:*]", "v1"]'}
    )
    assert next(iter(stored.values())).startswith(encoding)


def test_versions_move_the_latest_pointer_and_old_ones_are_dropped(tmp_path: Path) -> None:
    with _instance(tmp_path / "home", {"keep_versions": 2}) as instance:
        storage = _storage(instance)
        for n in range(1, 5):
            _upload(storage, "a", f"v{n}", f"a{n}".encode())
        _upload(storage, "b", "v1", b"b1")
        assert storage.get_latest_version("a") == "v4"
        assert storage.get_latest_version("b") == "v1"  # keys do not overwrite each other
        assert _download(storage, "a", "v4", tmp_path) == b"a4"
        assert _download(storage, "a", "v3", tmp_path) == b"a3"
        for gone in ("v1", "v2"):
            with pytest.raises(ValueError, match=rf"^No state found for key a and version {gone}"):
                _download(storage, "a", gone, tmp_path)
        with pytest.raises(ValueError, match=r"^No state found for key c and version v1$"):
            _download(storage, "c", "v1", tmp_path)
        # re-recording an old version name keeps it once, as the newest
        _upload(storage, "a", "v3", b"a3 again")
        assert storage.get_latest_version("a") == "v3"
        assert _download(storage, "a", "v4", tmp_path) == b"a4"
        storage.set_latest_version("a", "v4")  # a roll-back
        assert storage.get_latest_version("a") == "v4"
        storage.set_latest_version("a", None)
        assert storage.get_latest_version("a") is None
        assert storage.list_state_keys_with_prefix("") == ["b"]


def test_an_oversized_state_fails_with_one_clear_line(tmp_path: Path) -> None:
    with _instance(tmp_path / "home", {"max_state_bytes": 100}) as instance:
        storage = _storage(instance)
        _upload(storage, "k", "small", b"x" * 95)  # "text:" + 95 bytes = exactly 100
        with pytest.raises(StateTooLarge) as err:
            _upload(storage, "k", "big", b"x" * 96)
        message = str(err.value)
        assert message == (
            "defs state 'k' version big is 101 bytes stored as text, "
            "over the 100-byte limit of RunStorageDefsStateStorage"
        )
        assert "max_state_bytes" in (err.value.hint or "")
        with pytest.raises(StateTooLarge, match="stored as base64"):
            _upload(storage, "k", "binary", b"\xff" * 70)  # 70 bytes, 100 once encoded + prefix
        assert storage.get_latest_version("k") == "small"  # nothing moved
        with pytest.raises(ValueError, match=r"^No state found"):
            _download(storage, "k", "big", tmp_path)


@pytest.mark.parametrize("config", [{"max_state_bytes": 0}, {"keep_versions": 0}])
def test_a_nonsense_limit_is_refused_at_instance_load(
    tmp_path: Path, config: dict[str, int]
) -> None:
    with pytest.raises(ValueError, match="must be"), _instance(tmp_path / "home", config):
        pass


def test_the_rendered_instance_and_helm_values_name_this_storage(tmp_path: Path) -> None:
    """Both ways to deploy give every pod the same storage, by its public module: the chart's
    CustomDefsStateStorage writes `defs_state_storage` from the values as the instance file has
    it, and every pod loading the instance (webserver and daemon too) runs the image that has
    the class. The local instance keeps Dagster's default (one machine, one disk)."""
    render(EXAMPLE, tmp_path / "r", DeployOptions.with_image("registry.local/cartridge:2.0.0"))
    instance = yaml.safe_load((tmp_path / "r" / "dagster-instance.yaml").read_text())
    values = yaml.safe_load((tmp_path / "r" / "values.yaml").read_text())
    assert instance["defs_state_storage"] == STORAGE
    assert values["defsStateStorage"] == {
        "type": "CustomDefsStateStorage",
        "config": {"customDefsStateStorage": STORAGE},
    }
    image = {"repository": "registry.local/cartridge", "tag": "2.0.0", "pullPolicy": "IfNotPresent"}
    assert values["dagster-user-deployments"]["deployments"][0]["image"] == image
    assert values["dagsterWebserver"]["image"] == values["dagsterDaemon"]["image"] == image
    local = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    assert "defs_state_storage" not in local
    module = importlib.import_module(STORAGE["module"])
    assert getattr(module, STORAGE["class"]) is RunStorageDefsStateStorage
