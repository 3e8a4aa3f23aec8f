"""The allowlist for AI-proposed SQL."""

from __future__ import annotations

import pytest

from cartridge_dagster.init.ai.sqlguard import RejectedSQL, check_sql


@pytest.mark.parametrize(
    "sql",
    [
        "select * from {{ ref('stg_shop__orders') }}",
        "{{ config(materialized='view') }}\nwith o as (select 1 as x) select x from o;",
        "select o._id, c.name from {{ ref('a') }} o join {{ source('cartridge_shop', 'orders') }} c "
        "on true -- a comment; drop table x\nwhere c.note = 'delete; drop'",
    ],
)
def test_allowed(sql: str) -> None:
    assert check_sql(sql).endswith("\n")


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("select 1; drop table x", "more than one statement"),
        ("delete from t", "not a SELECT"),
        ("with x as (delete from t returning *) select * from x", "DELETE"),
        ("select * from {{ run_query('drop table t') }}", "not ref()"),
        ("{% set x = 1 %} select 1", "Jinja statements"),
        ("select {# c #} 1", "Jinja comments"),
        ("select pg_sleep(10)", "PG_SLEEP"),
        ("select * into t2 from t", "INTO"),
        ("select 'unterminated", "unterminated"),
        ("select * from {{ ref(var('x')) }}", "not ref()"),
        ("select 1 /* open", "unterminated comment"),
    ],
)
def test_rejected(sql: str, reason: str) -> None:
    with pytest.raises(RejectedSQL, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_sql(sql)
