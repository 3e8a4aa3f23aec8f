"""The build scope: key prefix and group template checks, keys and groups made under it."""

from __future__ import annotations

import dagster as dg
import pytest

from cartridge_dagster.assets.keys import group_name, key_selection, raw_key, staging_key
from cartridge_dagster.errors import ConfigError
from cartridge_dagster.scope import BuildScope, building, current_scope


def test_keys_and_groups_follow_the_scope_and_come_back() -> None:
    assert raw_key("shop", "orders") == dg.AssetKey(["raw", "shop", "orders"])
    with building(BuildScope(key_prefix=("acme", "cdc"), group_name="cdc_{schema}")):
        assert raw_key("shop", "orders") == dg.AssetKey(["acme", "cdc", "raw", "shop", "orders"])
        assert staging_key("shop", "stg_shop__orders").path[:3] == ["acme", "cdc", "staging"]
        assert group_name("shop") == "cdc_shop"
        assert key_selection("analytics", "shop", "*") == 'key:"acme/cdc/analytics/shop/*"'
    assert current_scope() == BuildScope()
    assert group_name("shop") == "shop"
    assert key_selection("raw", "shop", "*") == 'key:"raw/shop/*"'


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"key_prefix": ("a/b",)}, "key_prefix: 'a/b' is not a valid asset-key part"),
        ({"key_prefix": ('x"',)}, "is not a valid asset-key part"),
        ({"key_prefix": ("",)}, "is not a valid asset-key part"),
        ({"group_name": "team-{schema}"}, "group_name: 'team-{schema}' must give a group name"),
        ({"group_name": "{collection}"}, "the only placeholder is {schema}"),
    ],
)
def test_invalid_scopes_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}")):
        BuildScope(**kwargs)
