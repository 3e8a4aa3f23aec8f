"""dbt generation: deterministic rendering, idempotent writes, hand-written files, hostile names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dbt.clients.jinja import get_rendered
from hypothesis import given, settings
from hypothesis import strategies as st

from cartridge_dagster.init.generate import (
    MARKER,
    dbt_relation_name,
    has_jinja,
    jinja_text,
    render_schema,
    sql_literal,
    write_files,
    yaml_text,
)
from cartridge_dagster.init.inference import InferenceOptions, Profiler, finalize


def _coll(name: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    p = Profiler(InferenceOptions())
    p.add_many(docs)
    return finalize(name, p, total_documents=len(docs), method="full", rounds=1)


def _collections() -> dict[str, Any]:
    orders = _coll(
        "orders",
        [
            {
                "_id": i,
                "status": ["paid", "shipped"][i % 2],
                "items": [{"sku": "a", "qty": 1}],
                "ship": {"city": "Porto"},
            }
            for i in range(20)
        ],
    )
    orders["references"] = {"items.[].sku": {"collection": "products", "field": "_id"}}
    products = _coll("products", [{"_id": "a", "name": "A"}])
    return {"orders": orders, "products": products}


def test_render_is_deterministic_and_complete() -> None:
    files, skipped = render_schema("shop", "raw_shop", "shop_staging", _collections())
    again, _ = render_schema("shop", "raw_shop", "shop_staging", _collections())
    assert files == again and not skipped
    assert sorted(files) == [
        "_shop__models.yml",
        "_shop__sources.yml",
        "stg_shop__orders.sql",
        "stg_shop__orders__items.sql",
        "stg_shop__products.sql",
    ]
    sources = yaml.safe_load(files["_shop__sources.yml"])["sources"][0]
    assert sources["schema"] == "raw_shop" and sources["quoting"]["identifier"] is True
    assert sources["config"]["loaded_at_field"] == '"_cartridge_synced_at"'
    assert {t["identifier"] for t in sources["tables"]} == {"orders", "products"}
    models = {m["name"]: m for m in yaml.safe_load(files["_shop__models.yml"])["models"]}
    order_cols = {c["name"]: c for c in models["stg_shop__orders"]["columns"]}
    assert order_cols["_id"]["data_tests"] == ["unique", "not_null"]
    accepted = order_cols["status"]["data_tests"][0]["accepted_values"]
    assert accepted["arguments"] == {"values": ["'paid'", "'shipped'"], "quote": False}
    item_cols = {c["name"]: c for c in models["stg_shop__orders__items"]["columns"]}
    rel = next(t for t in item_cols["sku"]["data_tests"] if "relationships" in t)
    rel = rel["relationships"]["arguments"]
    assert rel == {"to": "ref('stg_shop__products')", "field": "_id"}
    assert models["stg_shop__orders"]["config"]["schema"] == "shop_staging"
    sql = files["stg_shop__orders.sql"]
    assert sql.startswith(MARKER)
    assert 'where not "_cartridge_deleted"' in sql
    assert "\"document\" #> array['ship', 'city']::text[] as \"ship__city\"" in sql
    child = files["stg_shop__orders__items.sql"]
    assert "jsonb_array_elements" in child and "with ordinality" in child


def test_write_is_idempotent_keeps_hand_written_and_removes_stale(tmp_path: Path) -> None:
    files, _ = render_schema("shop", "raw_shop", "shop_staging", _collections())
    first = write_files(tmp_path, files)
    assert len(first.written) == len(files) and first.changed
    again = write_files(tmp_path, files)
    assert not again.changed and len(again.unchanged) == len(files)
    hand = tmp_path / "stg_shop__products.sql"
    hand.write_text("select 1 as mine\n")  # a person took this file over
    (tmp_path / "my_model.sql").write_text("select 2\n")
    third = write_files(tmp_path, files)
    assert third.conflicts == ["stg_shop__products.sql"]
    assert hand.read_text() == "select 1 as mine\n"
    smaller = {k: v for k, v in files.items() if "orders" not in k}
    fourth = write_files(tmp_path, smaller)
    assert sorted(fourth.deleted) == ["stg_shop__orders.sql", "stg_shop__orders__items.sql"]
    assert (tmp_path / "my_model.sql").exists()


def _strings(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, (*path, k))]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, (*path, i))]
    return [(path, node)] if isinstance(node, str) else []


EVIL = "{{ run_query('drop schema public cascade') }}"


def test_hostile_names_render_back_exactly_through_dbt_jinja() -> None:
    """Every YAML string, rendered by dbt's own Jinja (native, as dbt renders YAML) with no
    context at all (so ``run_query`` would fail), gives back exactly the text meant."""
    weird = 'we"ird\\{% x %}\n{#'
    coll = _coll(
        "c",
        [{"_id": i, EVIL: 1, "ok": ["{% do x %}", "it's", "a\\b"][i % 3]} for i in range(30)],
    )
    files, skipped = render_schema("shop", 'raw"x', "stg", {"c": coll, EVIL: coll, weird: coll})
    assert not skipped
    rendered: dict[tuple[Any, ...], Any] = {}
    for name in ("_shop__sources.yml", "_shop__models.yml"):
        for path, text in _strings(yaml.safe_load(files[name])):
            rendered[(name, *path)] = get_rendered(text, {}, native=True)
    metas = {v for k, v in rendered.items() if k[-2:] == ("cartridge", "collection")}
    assert metas == {"c", EVIL, weird}
    sources = yaml.safe_load(files["_shop__sources.yml"])["sources"][0]
    assert sources["schema"] == '"raw""x"' and sources["quoting"]["schema"] is False
    tables = {t["meta"]["cartridge"]["collection"]: t for t in sources["tables"]}
    weird_table = tables[jinja_text(weird)]
    assert get_rendered(weird_table["identifier"], {}, native=True) == '"we""ird\\{% x %}\n{#"'
    assert weird_table["quoting"] == {"identifier": False}
    assert "quoting" not in tables["c"] and tables["c"]["identifier"] == "c"
    assert any(EVIL in str(v) for k, v in rendered.items() if k[-1] == "description")
    models = {m["name"]: m for m in yaml.safe_load(files["_shop__models.yml"])["models"]}
    ok = next(c for c in models["stg_shop__c"]["columns"] if c["name"] == "ok")
    values = ok["data_tests"][0]["accepted_values"]["arguments"]["values"]
    assert values == [
        "'a\\b'",
        "'it''s'",
        "(chr(123) || '% do x %' || chr(125))",
    ]
    for text in (t for n, t in files.items() if n.endswith(".sql")):
        assert "{{ run_query" not in text and "{% do" not in text
    assert "chr(123)" in files["stg_shop__c.sql"]


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",))))
def test_jinja_text_renders_back_exactly(text: str) -> None:
    value = jinja_text(text)
    assert yaml.safe_load(yaml_text({"v": value}))["v"] == value
    assert get_rendered(value, {}, native=True) == text
    if not has_jinja(text) and "\n" not in text and "\r" not in text:
        assert value == text  # plain text stays plain


def test_dbt_relation_name() -> None:
    assert dbt_relation_name("orders") == ("orders", True)
    assert dbt_relation_name('we"ird') == ('"we""ird"', False)
    assert dbt_relation_name('a"{{b}}') == ('{{ "\\"a\\"\\"{{b}}\\"" }}', False)


def test_sql_literal() -> None:
    assert sql_literal("a'b") == "'a''b'"
    assert sql_literal("{x}") == "(chr(123) || 'x' || chr(125))"
