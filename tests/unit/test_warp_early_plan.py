"""``warp run``'s guess of its first reads from the file alone (``warp.early.plan``).

The guess is never trusted (the runner compares it with the validated settings), but a wrong
guess costs the early reads, and a guess made where the file does not say what this run reads
would send them to the wrong server: the environment overriding ``source`` or ``schemas``, a
PostgreSQL source, several schemas. Each case below is checked against the validated settings
of the same file (the oracle): the guess either matches them field by field or is None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cartridge_dagster.config import BatchingConfig, load_settings
from cartridge_dagster.warp import early
from cartridge_dagster.warp.source import FIRST_PAGE

MONGO = "mongodb://db1:27017,db2:27017/?replicaSet=rs0"


def _file(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "cartridge.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base(**schema: Any) -> dict[str, Any]:
    return {
        "source": {"connection_string": MONGO},
        "destination": {"connection_string": "postgresql://u@127.0.0.1:5432/wh"},
        "schemas": [{"name": "shop", "source_database": "shop", **schema}],
    }


def _matches(plan: early.EarlyPlan, path: Path, schema: str | None = None) -> None:
    """The guess equals what the validated settings say (what the runner compares)."""
    settings = load_settings(path)
    s = settings.get_schema(schema) if schema else settings.schemas[0]
    assert plan.schema == s.name
    assert plan.url == settings.source_url(s)
    assert plan.timeout_seconds == settings.source_for(s).connect_timeout_seconds
    assert plan.database == s.source_database
    assert (plan.include, plan.exclude) == (tuple(s.include), tuple(s.exclude))
    assert plan.page == min(s.batching.snapshot_chunk_size, s.batching.max_batch_size)


def test_the_defaults_guessed_are_the_settings_defaults() -> None:
    fields = BatchingConfig.model_fields
    assert fields["snapshot_chunk_size"].default == early.DEFAULT_CHUNK
    assert fields["max_batch_size"].default == early.DEFAULT_MAX_BATCH
    assert early.FIRST_PAGE == FIRST_PAGE


@pytest.mark.parametrize(
    "data",
    [
        _base(),
        _base(include=["orders", "users"], exclude=["audit"]),
        _base(batching={"max_batch_size": 700}),
        _base(batching={"snapshot_chunk_size": 300, "max_batch_size": 9000}),
        {**_base(), "defaults": {"batching": {"max_batch_size": 2000}}},
        {
            **_base(batching={"max_batch_size": 800}),
            "defaults": {"batching": {"max_batch_size": 2000}},
        },
        {**_base(), "source": {"connection_string": MONGO, "connect_timeout_seconds": 3}},
        {
            **_base(),
            "source": {
                "connection_string": "mongodb://db1:27017/?replicaSet=rs0",
                "username": "app user",
                "password": "p@ss:w/rd%",
            },
        },
        {
            **_base(source={"connection_string": "mongodb+srv://c.example.net/"}),
            "source": {"type": "postgresql", "connection_string": "postgresql://u@h/db"},
        },
    ],
    ids=[
        "defaults",
        "include-exclude",
        "schema-batch",
        "small-chunks",
        "file-defaults",
        "schema-over-defaults",
        "timeout",
        "credentials",
        "schema-own-source",
    ],
)
def test_the_guess_is_what_the_settings_say(tmp_path: Path, data: dict[str, Any]) -> None:
    path = _file(tmp_path, data)
    plan = early.plan(path, None, environ={})
    assert plan is not None
    _matches(plan, path)


def test_schema_option_picks_its_entry(tmp_path: Path) -> None:
    data = _base()
    data["schemas"].append({"name": "billing", "source_database": "billing"})
    path = _file(tmp_path, data)
    assert early.plan(path, None, environ={}) is None  # two schemas, none named: no guess
    plan = early.plan(path, "billing", environ={})
    assert plan is not None and plan.database == "billing"
    _matches(plan, path, "billing")
    assert early.plan(path, "nope", environ={}) is None


@pytest.mark.parametrize(
    "name",
    [
        "CARTRIDGE_SOURCE__CONNECTION_STRING",
        "CARTRIDGE_SOURCE",
        "cartridge_schemas__0__source_database",
        "CARTRIDGE_WARP_SOURCE__CONNECTION_STRING",
        "CARTRIDGE_WARP_SCHEMAS",
    ],
)
def test_no_guess_when_the_environment_overrides_what_is_read(tmp_path: Path, name: str) -> None:
    path = _file(tmp_path, _base())
    assert early.plan(path, None, environ={name: "x"}) is None
    # variables that do not touch the source or the schemas leave the guess alone
    other = {
        "CARTRIDGE_DESTINATION__CONNECTION_STRING": "postgresql://x@h/d",
        "CARTRIDGE_GC_TUNING": "0",
    }
    assert early.plan(path, None, environ=other) is not None


@pytest.mark.parametrize(
    "change",
    [
        {"source": {"type": "postgresql", "connection_string": "postgresql://u@h/db"}},
        {"source": {"connection_string": "mongoeco:///tmp/engine.sqlite"}},
        {"source": {"connection_string": "local/app", "type": "postgresql"}},
        {"source": {"connection_string": "mongodb://u:p@h/", "username": "v"}},
        {"source": {"connection_string": MONGO, "connect_timeout_seconds": "3"}},
        {"source": {"connection_string": MONGO, "connect_timeout_seconds": True}},
        {"source": {"connection_string": MONGO, "connect_timeout_seconds": 0}},
        {"source": {"connection_string": 42}},
        {"source": "mongodb://h/"},
        {"schemas": [{"name": "shop", "source_database": "shop", "include": "orders"}]},
        {"schemas": [{"name": "shop", "source_database": 7}]},
        {
            "schemas": [
                {"name": "shop", "source_database": "s", "batching": {"max_batch_size": "9"}}
            ]
        },
        {"schemas": [{"name": "shop", "source_database": "s", "batching": [1]}]},
        {"schemas": "shop"},
        {"schemas": []},
    ],
)
def test_no_guess_when_the_file_does_not_say_it_plainly(
    tmp_path: Path, change: dict[str, Any]
) -> None:
    assert early.plan(_file(tmp_path, {**_base(), **change}), None, environ={}) is None


def test_no_guess_without_a_readable_file(tmp_path: Path) -> None:
    assert early.plan(tmp_path / "missing.yaml", None, environ={}) is None
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: [unclosed\n")
    assert early.plan(bad, None, environ={}) is None
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    assert early.plan(listed, None, environ={}) is None
