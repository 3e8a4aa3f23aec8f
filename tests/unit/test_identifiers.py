"""The one quoting function and stable names for hostile source names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cartridge_dagster.identifiers import (
    MAX_IDENTIFIER_BYTES,
    assign_names,
    pg_name,
    qualified,
    quote_ident,
)
from cartridge_dagster.landing import raw_table_name


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("orders", '"orders"'),
        ('we"ird', '"we""ird"'),
        ("select", '"select"'),
        ("a b.c$d", '"a b.c$d"'),
        ("Größe", '"Größe"'),
    ],
)
def test_quote_ident(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 64, "é" * 32])
def test_quote_ident_rejects_what_postgres_cannot_hold(bad: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        quote_ident(bad)


def test_qualified() -> None:
    assert qualified("raw shop", 'or"ders') == '"raw shop"."or""ders"'


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("customer.address.zip", "customer__address__zip"),
        ("$type", "type"),
        ("Größe", "grosse"),
        ("First Name", "first_name"),
        ("123abc", "_123abc"),
        ("select", "select"),
    ],
)
def test_pg_name_is_readable(source: str, expected: str) -> None:
    assert pg_name(source) == expected


def test_pg_name_long_names_are_stable_and_distinct() -> None:
    a = "x" * 80 + "a"
    b = "x" * 80 + "b"
    assert pg_name(a) == pg_name(a)
    assert pg_name(a) != pg_name(b)
    assert len(pg_name(a).encode()) <= MAX_IDENTIFIER_BYTES


def test_assign_names_resolves_collisions_deterministically() -> None:
    names = ["Name", "name", "a.b", "a__b", "_id", "$$", "%%"]
    first = assign_names(names, reserved=["_id"])
    second = assign_names(list(reversed(names)), reserved=["_id"])
    assert first == second
    values = [v.lower() for v in first.values()]
    assert len(values) == len(set(values))
    assert first["_id"] != "_id"  # reserved names are never handed out


@given(st.lists(st.text(min_size=1, max_size=90), min_size=1, max_size=30))
def test_assign_names_always_valid_and_unique(names: list[str]) -> None:
    mapping = assign_names(names, reserved=["_id", "document"])
    out = list(mapping.values())
    assert len({o.lower() for o in out}) == len(out)
    for name in out:
        assert quote_ident(name)  # never raises: length and NUL are handled
        assert name.lower() not in ("_id", "document")


@given(st.text(min_size=1, max_size=120))
def test_raw_table_name_always_quotable_and_stable(collection: str) -> None:
    name = raw_table_name(collection)
    assert quote_ident(name)
    assert raw_table_name(collection) == name
