"""docs/configuration.md is generated from the settings model and must stay in sync."""

from __future__ import annotations

from pathlib import Path

from cartridge_dagster.config import CartridgeSettings, SchemaConfig, TableConfig
from cartridge_dagster.config_docs import render_config_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_reference_is_in_sync() -> None:
    assert DOC.read_text(encoding="utf-8") == render_config_reference(), (
        "docs/configuration.md is stale: run `make docs` (cartridge docs config)"
    )


def test_every_option_is_documented_with_its_environment_variable() -> None:
    text = render_config_reference()
    for name in CartridgeSettings.model_fields:
        assert f"`{name}`" in text
        assert f"`CARTRIDGE_{name.upper()}`" in text
    for name in SchemaConfig.model_fields:
        assert f"`schemas[].{name}`" in text
    for name in TableConfig.model_fields:
        assert f"`schemas[].tables.<collection>.{name}`" in text
    assert "`CARTRIDGE_DEFAULTS__BATCHING__MAX_BATCH_SIZE`" in text
    assert "CARTRIDGE_WARP_SOURCE__CONNECTION_STRING" in text
