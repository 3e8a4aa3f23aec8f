"""The environment is merged into the configuration by Cartridge's own reader
(``config._settings_data``), which replaced pydantic-settings so that ``cartridge warp run``
does not pay that library's import before its first read. The oracle here is the previous
implementation, rebuilt on pydantic-settings: for each case, both give the same settings or
the same one-line error naming the field (and the variable that set it)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from cartridge_dagster.config import (
    ENV_PREFIX,
    SEED_ENV_PREFIX,
    CartridgeSettings,
    _deep_merge,
    _indexed,
    format_validation_error,
    settings_from_mapping,
)
from cartridge_dagster.errors import ConfigError

FILE: dict[str, Any] = {
    "source": {"connection_string": "mongodb://file-host:27017/?replicaSet=rs0"},
    "destination": {"connection_string": "postgresql://loader@localhost:5432/wh"},
    "schemas": [
        {"name": "shop", "source_database": "shop", "tables": {"orders": {"history": True}}},
        {"name": "billing", "source_database": "billing"},
    ],
}


# --------------------------------------------------------------------------- the oracle
# The settings sources the configuration had on pydantic-settings, verbatim.


class _WithoutIndexed(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.inner = inner

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self.inner()
        if _indexed(data) is not None:
            data = {k: v for k, v in data.items() if k != "schemas"}
        return data


class _IndexedSchemas(PydanticBaseSettingsSource):
    def __init__(
        self,
        settings_cls: type[BaseSettings],
        envs: tuple[PydanticBaseSettingsSource, ...],
        init: PydanticBaseSettingsSource,
    ):
        super().__init__(settings_cls)
        self.envs = envs
        self.init = init

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self.init.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self.init()
        schemas = data.get("schemas")
        if not isinstance(schemas, list):
            return data
        schemas = list(schemas)
        for env in reversed(self.envs):
            for index, fields in sorted((_indexed(env()) or {}).items()):
                if index >= len(schemas):
                    raise ConfigError(
                        f"environment variable {ENV_PREFIX}SCHEMAS__{index}__… names schema "
                        f"{index}, but the configuration has {len(schemas)} (counted from 0)"
                    )
                own = schemas[index]
                if isinstance(own, BaseModel):
                    own = own.model_dump(exclude_unset=True)
                if isinstance(own, Mapping):
                    schemas[index] = _deep_merge(own, fields)
        return {**data, "schemas": schemas}


class _Oracle(BaseSettings, CartridgeSettings):  # type: ignore[misc]
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        seed_env = EnvSettingsSource(
            settings_cls, env_prefix=SEED_ENV_PREFIX, env_nested_delimiter="__"
        )
        indexed = _IndexedSchemas(settings_cls, (env_settings, seed_env), init_settings)
        return (
            _WithoutIndexed(settings_cls, env_settings),
            _WithoutIndexed(settings_cls, seed_env),
            indexed,
        )


def _oracle(data: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return _Oracle(**data).model_dump()
    except ValidationError as exc:
        return format_validation_error(exc, "<config>")
    except ConfigError as exc:
        return str(exc)


def _ours(data: dict[str, Any]) -> dict[str, Any] | str:
    try:
        return settings_from_mapping(data).model_dump()
    except ConfigError as exc:
        return str(exc)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.upper().startswith("CARTRIDGE_"):
            monkeypatch.delenv(key)


CASES: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("nothing set", {}, FILE),
    ("a top-level value", {"CARTRIDGE_MODE": "single", "CARTRIDGE_STATE_DIR": "/st"}, FILE),
    ("a bad top-level value", {"CARTRIDGE_MODE": "sideways"}, FILE),
    ("a lower-case name", {"cartridge_mode": "single"}, FILE),
    ("a nested value", {"CARTRIDGE_SOURCE__CONNECTION_STRING": "mongodb://env:1/"}, FILE),
    (
        "the CARTRIDGE_ prefix beats the seed's",
        {
            "CARTRIDGE_WARP_SOURCE__CONNECTION_STRING": "mongodb://seed:1/",
            "CARTRIDGE_SOURCE__CONNECTION_STRING": "mongodb://env:2/",
            "CARTRIDGE_WARP_MODE": "single",
        },
        FILE,
    ),
    ("two levels down", {"CARTRIDGE_DEFAULTS__BATCHING__MAX_BATCH_SIZE": "123"}, FILE),
    ("a bad number", {"CARTRIDGE_DESTINATION__POOL_MAX_SIZE": "many"}, FILE),
    ("a section as JSON", {"CARTRIDGE_DEFAULTS__BATCHING": '{"max_batch_size": 7}'}, FILE),
    (
        "JSON and a nested variable together",
        {
            "CARTRIDGE_SOURCE": '{"connection_string": "mongodb://json:1/"}',
            "CARTRIDGE_SOURCE__CONNECT_TIMEOUT_SECONDS": "3",
        },
        FILE,
    ),
    (
        "the schema list as JSON",
        {"CARTRIDGE_SCHEMAS": '[{"name": "x", "source_database": "y"}]'},
        FILE,
    ),
    (
        "a schema by index, both prefixes",
        {
            "CARTRIDGE_SCHEMAS__0__TARGET_SCHEMA": "raw_env",
            "CARTRIDGE_WARP_SCHEMAS__0__TARGET_SCHEMA": "raw_seed",
            "CARTRIDGE_WARP_SCHEMAS__1__TARGET_SCHEMA": "raw_seed_b",
            "CARTRIDGE_SCHEMAS__1__SOURCE__CONNECTION_STRING": "mongodb://b:1/",
        },
        FILE,
    ),
    ("schemas by index as JSON", {"CARTRIDGE_SCHEMAS": '{"1": {"target_schema": "j"}}'}, FILE),
    ("an index past the list", {"CARTRIDGE_SCHEMAS__3__TARGET_SCHEMA": "x"}, FILE),
    ("a list under an index is a string", {"CARTRIDGE_SCHEMAS__0__INCLUDE": '["a"]'}, FILE),
    ("a table by name", {"CARTRIDGE_SCHEMAS__0__TABLES__Orders__HISTORY": "false"}, FILE),
    ("an unknown key", {"CARTRIDGE_SOURCE__TYPO": "1"}, FILE),
    ("a section that is not an object", {"CARTRIDGE_DBT": "[1]"}, FILE),
    ("an empty value", {"CARTRIDGE_SOURCE__CONNECTION_STRING": ""}, FILE),
    ("an empty nested value", {"CARTRIDGE_DEFAULTS__WARP__METRICS_PORT": ""}, FILE),
    (
        "defaults and sections",
        {
            "CARTRIDGE_DEFAULTS__DELETES": "hard",
            "CARTRIDGE_DEFAULTS__WARP__METRICS_PORT": "0",
            "CARTRIDGE_OBSERVABILITY__LOG_LEVEL": "debug",
            "CARTRIDGE_DEFAULTS__ANALYTICS__PROFILE_CRON": "hourly",
        },
        FILE,
    ),
    (
        "variables that are not settings",
        {"CARTRIDGE_CONFIG": "x.yaml", "CARTRIDGE_GC_TUNING": "0", "CARTRIDGE_METRICS_HOST": "h"},
        FILE,
    ),
    ("a capitalised key in the file", {}, {**FILE, "Mode": "single"}),
    (
        "the source from the environment only",
        {"CARTRIDGE_SOURCE__CONNECTION_STRING": "mongodb://e/"},
        {k: v for k, v in FILE.items() if k != "source"},
    ),
    ("no schemas in the file", {"CARTRIDGE_SCHEMAS__0__NAME": "x"}, {"source": FILE["source"]}),
]


@pytest.mark.parametrize(("env", "data"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_environment_reads_as_it_did_with_pydantic_settings(
    env: dict[str, str], data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    expected = _oracle(json.loads(json.dumps(data)))
    assert _ours(json.loads(json.dumps(data))) == expected


def test_the_cases_cover_success_and_each_kind_of_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table above is not all successes: some cases fail, naming the variable."""
    outcomes = []
    for _, env, data in CASES:
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            outcomes.append(_ours(json.loads(json.dumps(data))))
    errors = [o for o in outcomes if isinstance(o, str)]
    assert len(errors) >= 6 and len(outcomes) - len(errors) >= 12
    assert any("(set by environment variable CARTRIDGE_MODE)" in e for e in errors)
    assert any("SCHEMAS__3__… names schema 3, but the configuration has 2" in e for e in errors)


def test_a_setting_that_takes_json_refuses_a_value_that_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pydantic-settings raised its own SettingsError here (a traceback in the CLI); now it is
    the usual one line, naming the variable."""
    monkeypatch.setenv("CARTRIDGE_SOURCE", "mongodb://not-json/")
    with pytest.raises(SettingsError):
        _Oracle(**FILE)
    with pytest.raises(
        ConfigError, match=r"^environment variable CARTRIDGE_SOURCE: this setting takes JSON"
    ):
        settings_from_mapping(FILE)
    monkeypatch.delenv("CARTRIDGE_SOURCE")
    monkeypatch.setenv("CARTRIDGE_DEFAULTS__BATCHING", "{max_batch_size: 1}")
    with pytest.raises(ConfigError, match="CARTRIDGE_DEFAULTS__BATCHING: this setting takes JSON"):
        settings_from_mapping(FILE)


def test_the_values_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Literal expectations, beside the comparison with the oracle."""
    monkeypatch.setenv("CARTRIDGE_SCHEMAS__1__SOURCE__CONNECTION_STRING", "postgresql://s@h/b")
    monkeypatch.setenv("CARTRIDGE_SCHEMAS__1__SOURCE__TYPE", "postgresql")
    monkeypatch.setenv("CARTRIDGE_WARP_DEFAULTS__BATCHING__MAX_BATCH_SIZE", "9")
    monkeypatch.setenv("CARTRIDGE_DEFAULTS__BATCHING", '{"max_batch_seconds": 2.5}')
    settings = settings_from_mapping(FILE)
    assert settings.source_url("billing") == "postgresql://s@h/b"
    assert settings.source_url("shop") == "mongodb://file-host:27017/?replicaSet=rs0"
    shop = settings.get_schema("shop")
    assert (shop.batching.max_batch_size, shop.batching.max_batch_seconds) == (9, 2.5)
    assert shop.table("orders").history is True
