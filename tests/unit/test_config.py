"""The settings model: strict validation, env overrides, defaults flowing down, secrets."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote_plus

import pytest
import yaml

from cartridge_dagster.config import load_settings, settings_from_mapping
from cartridge_dagster.errors import ConfigError

BASE = {
    "source": {"connection_string": "mongodb://localhost:27017/?replicaSet=rs0"},
    "destination": {"connection_string": "postgresql://loader@localhost:5432/wh"},
    "schemas": [{"name": "shop", "source_database": "shop"}],
}


def write(tmp_path: Path, data: object, name: str = "c.yaml") -> Path:
    import yaml

    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CARTRIDGE_"):
            monkeypatch.delenv(key)


def test_examples_validate() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    files = [
        root / "demo.yaml",
        root / "mongodb-to-postgresql-single.yaml",
        root / "mongodb-to-postgresql-multi.yaml",
    ]
    for file in files:
        settings = load_settings(file)
        assert settings.schemas, file


def test_defaults_flow_down_to_schemas_and_tables(tmp_path: Path) -> None:
    data = {
        **BASE,
        "defaults": {"batching": {"max_batch_size": 77}, "deletes": "hard"},
        "schemas": [
            {"name": "a", "source_database": "a", "batching": {"max_batch_seconds": 3}},
            {
                "name": "b",
                "source_database": "b",
                "deletes": "soft",
                "tables": {"t": {"delete_mode": "hard"}, "u": {}},
            },
        ],
    }
    settings = load_settings(write(tmp_path, data))
    a, b = settings.schemas
    assert a.batching.max_batch_size == 77  # from defaults
    assert a.batching.max_batch_seconds == 3  # own override, key by key
    assert a.deletes == "hard"
    assert a.table("anything").delete_mode == "hard"
    assert b.table("t").delete_mode == "hard"
    assert b.table("u").delete_mode == "soft"
    assert a.raw_schema == "raw_a"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["schemas"][0].update(tabels={}), "schemas[0].tabels: unknown key"),
        (
            lambda d: d["schemas"][0].update(tables={"orders": {"delete_mode": "purge"}}),
            "schemas[0].tables.orders.delete_mode:",
        ),
        (lambda d: d.update(mode="both"), "mode: Input should be 'single' or 'multi'"),
        (lambda d: d["schemas"][0].update(name="Bad-Name"), "schemas[0].name:"),
        (lambda d: d.update(schemas=[]), "schemas: List should have at least 1 item"),
        (
            lambda d: d["source"].pop("connection_string"),
            "source.connection_string: Field required",
        ),
        (
            lambda d: d["source"].update(connection_string="http://x"),
            "source.connection_string",
        ),
        (
            lambda d: d.update(defaults={"batching": {"max_batch_size": 0}}),
            "max_batch_size: Input should be greater than or equal to 1",
        ),
        (
            lambda d: d["schemas"].append({"name": "shop", "source_database": "x"}),
            "schema name 'shop' is used twice",
        ),
        (
            lambda d: d["schemas"][0].update(warp={"snapshot_writers": 0}),
            "schemas[0].warp.snapshot_writers: Input should be greater than or equal to 1",
        ),
        (
            lambda d: d.update(defaults={"warp": {"snapshot_writers": 17}}),
            "snapshot_writers: Input should be less than or equal to 16",
        ),
    ],
)
def test_bad_values_name_file_and_dotted_path(tmp_path: Path, mutate, expected: str) -> None:
    data = json.loads(json.dumps(BASE))
    mutate(data)
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert str(path) in message
    assert expected in message


def test_json_files_and_unparseable_files(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, BASE, "c.json")).schemas[0].name == "shop"
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_environment_overrides_file_including_seed_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, BASE)
    monkeypatch.setenv("CARTRIDGE_WARP_SOURCE__CONNECTION_STRING", "mongodb://seed-host:1/")
    assert load_settings(path).source.url() == "mongodb://seed-host:1/"
    # the CARTRIDGE_ prefix wins over the seed's prefix and over the file
    monkeypatch.setenv("CARTRIDGE_SOURCE__CONNECTION_STRING", "mongodb://env-host:2/")
    monkeypatch.setenv("CARTRIDGE_MODE", "single")
    monkeypatch.setenv("CARTRIDGE_DEFAULTS__BATCHING__MAX_BATCH_SIZE", "123")
    settings = load_settings(path)
    assert settings.source.url() == "mongodb://env-host:2/"
    assert settings.mode == "single"
    assert settings.schemas[0].batching.max_batch_size == 123
    # file values the environment does not touch survive (deep merge)
    assert settings.destination.url() == "postgresql://loader@localhost:5432/wh"


def test_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CARTRIDGE_MODE", "sideways")
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, BASE))
    assert "CARTRIDGE_MODE" in str(err.value)


PASSWORD = "p@ss:w/rd%"


def test_special_characters_in_credentials() -> None:
    # Encoded in the URL: accepted and passed through unchanged.
    encoded = f"mongodb://user:{quote_plus(PASSWORD)}@db:27017/"
    assert settings_from_mapping(
        {**BASE, "source": {"connection_string": encoded}}
    ).source.url() == (encoded)
    # Raw in the URL: a clear message saying what to do.
    for raw in (f"mongodb://user:{PASSWORD}@db:27017/", "postgresql://u:a@b@h/db"):
        kind = "mongodb" if raw.startswith("mongodb") else "postgresql"
        section = {"type": kind, "connection_string": raw}
        with pytest.raises(ConfigError) as err:
            settings_from_mapping({**BASE, "source": section})
        assert "URL-encode" in str(err.value)
        assert PASSWORD not in str(err.value)
    # Given separately: encoded for the caller.
    settings = settings_from_mapping(
        {
            **BASE,
            "destination": {
                "connection_string": "postgresql://h:5432/db",
                "username": "lo@der",
                "password": PASSWORD,
            },
        }
    )
    assert settings.destination.url() == f"postgresql://lo%40der:{quote_plus(PASSWORD)}@h:5432/db"


def test_secrets_never_printed() -> None:
    settings = settings_from_mapping(
        {
            **BASE,
            "source": {"connection_string": f"mongodb://u:{quote_plus(PASSWORD)}@h/"},
            "destination": {"connection_string": "postgresql://h/db", "password": "hunter2"},
        }
    )
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text
        assert quote_plus(PASSWORD) not in text
    assert settings.source.display_url() == "mongodb://***@h/"


def test_schema_selection() -> None:
    settings = settings_from_mapping(
        {**BASE, "schemas": [{"name": "s", "source_database": "d", "exclude": ["tmp"]}]}
    )
    schema = settings.get_schema("s")
    assert schema.selects("orders")
    assert not schema.selects("tmp")
    assert not schema.selects("system.views")
    with pytest.raises(ConfigError, match="no schema named 'x'"):
        settings.get_schema("x")


def test_a_schema_with_a_source_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {
        "source": {"connection_string": "mongodb://db1:27017/"},
        "destination": {"connection_string": "postgresql://loader@localhost:5432/wh"},
        "schemas": [
            {"name": "shop", "source_database": "shop"},
            {
                "name": "billing",
                "source_database": "billing",
                "source": {"type": "postgresql", "connection_string": "postgresql://u@pg:5432/b"},
            },
        ],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    settings = load_settings(path)
    assert settings.source_for("shop") is settings.source
    assert settings.source_for("billing").type == "postgresql"
    assert settings.source_url("shop") == "mongodb://db1:27017/"
    assert settings.source_url("billing") == "postgresql://u@pg:5432/b"
    # in a cluster the schema's connection string comes from the environment, by index
    monkeypatch.setenv("CARTRIDGE_SCHEMAS__1__SOURCE__CONNECTION_STRING", "postgresql://s@h/b2")
    monkeypatch.setenv("CARTRIDGE_SCHEMAS__0__TARGET_SCHEMA", "raw_s")
    settings = load_settings(path)
    assert settings.source_url("billing") == "postgresql://s@h/b2"
    assert settings.get_schema("billing").source_database == "billing"  # the rest of the file
    assert settings.get_schema("shop").raw_schema == "raw_s"
    assert [s.name for s in settings.schemas] == ["shop", "billing"]
    monkeypatch.setenv("CARTRIDGE_SCHEMAS__5__TARGET_SCHEMA", "x")
    with pytest.raises(
        ConfigError, match="SCHEMAS__5__… names schema 5, but the configuration has 2"
    ):
        load_settings(path)
    monkeypatch.delenv("CARTRIDGE_SCHEMAS__5__TARGET_SCHEMA")
    # a MongoDB URL where the schema says postgresql, and local/ names for MongoDB, are refused
    data["schemas"][1]["source"]["connection_string"] = "mongodb://x/"  # type: ignore[index]
    monkeypatch.delenv("CARTRIDGE_SCHEMAS__1__SOURCE__CONNECTION_STRING")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"schemas\[1\]\.source\.connection_string: must start"):
        load_settings(path)
    data["schemas"][1]["source"] = {"connection_string": "local/billing"}  # type: ignore[index]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="must start with one of mongodb://"):
        load_settings(path)
    data["schemas"][1]["source"] = {"type": "postgresql", "connection_string": "local/billing"}  # type: ignore[index]
    path.write_text(yaml.safe_dump(data))
    local = load_settings(path).get_schema("billing").source
    assert local is not None and local.local_database == "billing"
    assert local.display_url() == "local/billing (cartridge services)"


@pytest.mark.parametrize("cron", ["hourly", "0 * * *", "0 * * * * *", "0 * * * ;"])
def test_a_profile_cron_that_is_not_cron_fails_with_its_path(cron: str) -> None:
    """The full profile's cron feeds an automation condition: refused in the config with its
    dotted path, not as a traceback when the code location loads."""
    with pytest.raises(ConfigError) as err:
        settings_from_mapping(
            {
                "source": {"connection_string": "mongoeco://:memory:"},
                "destination": {"connection_string": "postgresql://u@h/db"},
                "schemas": [
                    {"name": "shop", "source_database": "shop", "analytics": {"profile_cron": cron}}
                ],
            }
        )
    assert "schemas[0].analytics.profile_cron" in str(err.value)
    assert "is not a cron schedule" in str(err.value)
    good = settings_from_mapping(
        {
            "source": {"connection_string": "mongoeco://:memory:"},
            "destination": {"connection_string": "postgresql://u@h/db"},
            "schemas": [{"name": "shop", "source_database": "shop"}],
            "defaults": {"analytics": {"profile_cron": "*/15 8-18 * * MON-FRI"}},
        }
    )
    assert good.get_schema("shop").analytics.profile_cron == "*/15 8-18 * * MON-FRI"
