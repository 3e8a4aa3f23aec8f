"""A defs state storage that every pod of a deployment reads, without a bucket.

Dagster keeps the versions of a state-backed component's state (``VERSIONED_STATE_STORAGE``)
in the instance's ``defs_state_storage``; its default is a directory under ``$DAGSTER_HOME``,
which on Kubernetes is each pod's own disk: the scan run pod records the state, and the code
server pod cannot read it. Dagster's alternative is a bucket (``UPathDefsStateStorage`` with
``s3://…``). :class:`RunStorageDefsStateStorage` keeps each state blob in the instance's run
storage instead, in the key-value table where Dagster's own storage already keeps its
latest-version pointer (the Dagster metadata database every pod of a deployment reaches):

.. code-block:: yaml

    defs_state_storage:
      module: cartridge_dagster.deploy.defs_state
      class: RunStorageDefsStateStorage
      config:                      # optional
        max_state_bytes: 1048576   # a stored blob larger than this is refused
        keep_versions: 5           # older versions of a key are dropped

A blob is stored as text when it is UTF-8 (the Cartridge component's state is JSON), else as
base64. Unlike the rest of :mod:`cartridge_dagster.deploy`, this module imports dagster: the
instance loads it, the renderer only names it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import dagster as dg

# Dagster has no public name for the storage interface, the configurable-class protocol or
# the key of the latest-version pointer (dagster._core.storage.defs_state.base); the pointer
# is Dagster's own, so UPathDefsStateStorage and this storage read the same one.
from dagster._core.storage.defs_state import DefsStateStorage
from dagster._core.storage.defs_state.base import DEFS_STATE_INFO_CURSOR_KEY
from dagster._serdes.config_class import ConfigurableClass, ConfigurableClassData
from dagster_shared.serdes import deserialize_value, serialize_value
from dagster_shared.serdes.objects.models.defs_state_info import DefsStateInfo

from cartridge_dagster.errors import TerminalError

__all__ = [
    "DEFAULT_KEEP_VERSIONS",
    "DEFAULT_MAX_STATE_BYTES",
    "RunStorageDefsStateStorage",
    "StateTooLarge",
]

#: The largest stored blob (after encoding), in bytes. The Cartridge component's state lists
#: collection names: a few kilobytes for hundreds of collections.
DEFAULT_MAX_STATE_BYTES = 1024 * 1024
#: Versions of one key kept readable: the latest, and a few a slow reader may still ask for.
DEFAULT_KEEP_VERSIONS = 5

_BLOB_PREFIX = "__cartridge_defs_state__"
_INDEX_PREFIX = "__cartridge_defs_state_versions__"
_TEXT = "text:"
_BASE64 = "base64:"


class StateTooLarge(TerminalError):
    """A state blob is over the storage's ``max_state_bytes``."""


def _blob_key(key: str, version: str) -> str:
    # JSON keeps the pair unambiguous whatever characters the key holds
    return _BLOB_PREFIX + json.dumps([key, version], ensure_ascii=False)


def _index_key(key: str) -> str:
    return _INDEX_PREFIX + json.dumps(key, ensure_ascii=False)


def _encode(data: bytes) -> tuple[str, str]:
    """The stored value and the name of its encoding (PostgreSQL text holds no NUL)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text:
        return _TEXT + text, "text"
    return _BASE64 + base64.b64encode(data).decode("ascii"), "base64"


def _decode(value: str, key: str, version: str) -> bytes:
    if value.startswith(_TEXT):
        return value[len(_TEXT) :].encode("utf-8")
    if value.startswith(_BASE64):
        try:
            return base64.b64decode(value[len(_BASE64) :], validate=True)
        except binascii.Error as exc:
            raise ValueError(
                f"state for key {key} and version {version} is corrupt ({exc})"
            ) from None
    raise ValueError(f"state for key {key} and version {version} has an unknown encoding")


class RunStorageDefsStateStorage(DefsStateStorage[dg.DagsterInstance], ConfigurableClass):
    """Defs state in the run storage's key-value table (see the module docstring)."""

    def __init__(
        self,
        max_state_bytes: int = DEFAULT_MAX_STATE_BYTES,
        keep_versions: int = DEFAULT_KEEP_VERSIONS,
        inst_data: ConfigurableClassData | None = None,
    ) -> None:
        if max_state_bytes < 1:
            raise ValueError(f"max_state_bytes must be positive, not {max_state_bytes}")
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1, not {keep_versions}")
        self._max_state_bytes = max_state_bytes
        self._keep_versions = keep_versions
        self._inst_data = inst_data

    # ----------------------------------------------------------------- configurable class

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dg.Shape:
        return dg.Shape(  # type: ignore[no-untyped-call]  # dagster leaves it untyped
            {
                "max_state_bytes": dg.Field(
                    dg.IntSource,
                    is_required=False,
                    default_value=DEFAULT_MAX_STATE_BYTES,
                    description="The largest stored state blob, in bytes (after encoding).",
                ),
                "keep_versions": dg.Field(
                    dg.IntSource,
                    is_required=False,
                    default_value=DEFAULT_KEEP_VERSIONS,
                    description="Versions of each key kept readable; older ones are dropped.",
                ),
            }
        )

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> Self:
        return cls(
            max_state_bytes=int(config_value.get("max_state_bytes", DEFAULT_MAX_STATE_BYTES)),
            keep_versions=int(config_value.get("keep_versions", DEFAULT_KEEP_VERSIONS)),
            inst_data=inst_data,
        )

    @property
    def max_state_bytes(self) -> int:
        return self._max_state_bytes

    @property
    def keep_versions(self) -> int:
        return self._keep_versions

    # ----------------------------------------------------------------- the storage

    def _values(self, keys: set[str]) -> Mapping[str, str]:
        return self._instance.run_storage.get_cursor_values(keys)

    def get_latest_defs_state_info(self) -> DefsStateInfo | None:
        raw = self._values({DEFS_STATE_INFO_CURSOR_KEY}).get(DEFS_STATE_INFO_CURSOR_KEY)
        return None if raw is None else deserialize_value(raw, DefsStateInfo)

    def download_state_to_path(self, key: str, version: str, path: Path) -> None:
        value = self._values({_blob_key(key, version)}).get(_blob_key(key, version))
        if not value:
            # the message Dagster's own storages give (callers match its start)
            why = " (dropped: newer versions replaced it)" if value == "" else ""
            raise ValueError(f"No state found for key {key} and version {version}{why}")
        path.write_bytes(_decode(value, key, version))

    def upload_state_from_path(self, key: str, version: str, path: Path) -> None:
        """Store the blob, move the latest-version pointer, then drop the versions beyond
        ``keep_versions`` (a reader that just read the old pointer still finds its blob)."""
        value, encoding = _encode(path.read_bytes())
        size = len(value.encode("utf-8"))
        if size > self._max_state_bytes:
            raise StateTooLarge(
                f"defs state {key!r} version {version} is {size} bytes stored as {encoding}, "
                f"over the {self._max_state_bytes}-byte limit of RunStorageDefsStateStorage",
                hint="raise defs_state_storage.config.max_state_bytes in the instance config",
            )
        index = _index_key(key)
        versions = [v for v in json.loads(self._values({index}).get(index) or "[]") if v != version]
        versions.append(version)
        dropped, kept = versions[: -self._keep_versions], versions[-self._keep_versions :]
        # One key per write: the generic SQL run storage (SQLite, MySQL) inserts a batch or,
        # if any key exists, only updates, so a batch mixing new and existing keys loses the
        # new ones. PostgreSQL upserts either way.
        self._set(_blob_key(key, version), value)
        self._set(index, json.dumps(kept, ensure_ascii=False))
        self.set_latest_version(key, version)
        for old in dropped:
            self._set(_blob_key(key, old), "")  # the table has no delete: an empty value

    def _set(self, name: str, value: str) -> None:
        self._instance.run_storage.set_cursor_values({name: value})

    def set_latest_version(self, key: str, version: str | None) -> None:
        info = self.get_latest_defs_state_info()
        new_info = (
            DefsStateInfo.remove_key(info, key)
            if version is None
            else DefsStateInfo.add_version(info, key, version)
        )
        self._instance.run_storage.set_cursor_values(
            {DEFS_STATE_INFO_CURSOR_KEY: serialize_value(new_info)}
        )
