"""Deterministic descriptions and the business-context file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cartridge_dagster.errors import ConfigError
from cartridge_dagster.init.describe import describe_collection, load_business_context
from cartridge_dagster.init.inference import InferenceOptions, Profiler, finalize


def _coll() -> dict:  # type: ignore[type-arg]
    p = Profiler(InferenceOptions(sensitive_fields=("email",)))
    p.add_many(
        [
            {"_id": i, "sku": f"S{i}", "status": ["a", "b"][i % 2], "email": "x@y.z", "n": i}
            for i in range(20)
        ]
    )
    coll = finalize("products", p, total_documents=20, method="full", rounds=1)
    coll["references"] = {"n": {"collection": "other", "field": "_id"}}
    return coll


def test_business_context_feeds_descriptions(tmp_path: Path) -> None:
    ctx_file = tmp_path / "ctx.yaml"
    ctx_file.write_text(
        "glossary:\n  sku: Stock keeping unit, the merchant's product code.\n"
        "tables:\n  shop.products:\n    purpose: Everything the shop sells.\n"
        "    columns:\n      n: Hand-written meaning of n.\n"
        "owners:\n  products: catalog-team\n"
    )
    ctx = load_business_context(ctx_file)
    docs = describe_collection("shop", "products", _coll(), ctx)
    assert docs.description.startswith("Everything the shop sells.")
    assert "Owner: catalog-team." in docs.description and "all 20 documents" in docs.description
    assert "Stock keeping unit" in docs.columns["sku"]
    assert docs.columns["n"] == "Hand-written meaning of n."
    assert "One of: `a`, `b`." in docs.columns["status"]
    assert "Marked sensitive" in docs.columns["email"]
    assert describe_collection("shop", "products", _coll(), ctx) == docs  # deterministic


def test_bad_business_context_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  orders:\n    purpos: typo\n")
    with pytest.raises(ConfigError, match=r"tables\.orders\.purpos"):
        load_business_context(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_business_context(tmp_path / "missing.yaml")


def test_example_business_context_is_valid() -> None:
    from tests.support.services import REPO

    ctx = load_business_context(REPO / "examples" / "shop-context.yaml")
    assert ctx.table("shop", "orders").owner == "commerce-team"
    assert ctx.table("shop", "events").owner == "analytics-team"
