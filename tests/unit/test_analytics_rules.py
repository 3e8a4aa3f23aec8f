"""Pure analytics functions: check rules, formatting, charts, bucket widths, selections."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from bson import ObjectId

from cartridge_dagster.analytics import charts
from cartridge_dagster.analytics.checks import (
    dead_letter_check,
    evaluate_checks,
    lag_check,
    null_ratio_check,
    reconciliation_check,
    row_count_check,
    thresholds,
)
from cartridge_dagster.analytics.profile import (
    ColumnProfile,
    Relation,
    TableProfile,
    bucket_seconds,
    sensitive_names,
)
from cartridge_dagster.analytics.reconcile import (
    Mismatch,
    Reconciliation,
    _source_id_candidates,
    counts_consistent,
)
from cartridge_dagster.analytics.report import (
    CollectionReport,
    SchemaReport,
    render_index,
    render_schema,
)
from cartridge_dagster.config import settings_from_mapping
from cartridge_dagster.sensors.automation import job_names, selections

REL = Relation("shop", "raw", "orders", "raw_shop", "orders")


def _settings(**table: Any) -> Any:
    return settings_from_mapping(
        {
            "source": {"connection_string": "mongoeco://:memory:"},
            "destination": {"connection_string": "postgresql://u@h/db"},
            "defaults": {"analytics": {"max_null_ratio": 0.3}},
            "schemas": [{"name": "shop", "source_database": "shop", "tables": {"orders": table}}],
        }
    )


def _profile(**kw: Any) -> TableProfile:
    base: dict[str, Any] = {"relation": REL, "rows_total": 10, "rows_live": 10, "rows_deleted": 0}
    return TableProfile(**{**base, **kw})


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "–"), (0, "0"), (999, "999"), (1234, "1.2k"), (2_500_000, "2.5M"), (0.125, "0.125")],
)
def test_fmt_number(value: float | None, text: str) -> None:
    assert charts.fmt_number(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "–"), (0.25, "250 ms"), (12.0, "12.0 s"), (600, "10.0 min"), (7200, "2.0 h")],
)
def test_fmt_duration(seconds: float | None, text: str) -> None:
    assert charts.fmt_duration(seconds) == text


@pytest.mark.parametrize(
    ("span", "width"),
    [(0, 1), (50, 1), (61, 5), (3000, 60), (3 * 3600, 300), (10 * 86400, 6 * 3600)],
)
def test_bucket_width_gives_at_most_60_buckets(span: int, width: int) -> None:
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert bucket_seconds(t0, t0 + dt.timedelta(seconds=span)) == width
    assert bucket_seconds(None, None) == 1


def test_source_id_candidates() -> None:
    oid = ObjectId()
    assert _source_id_candidates(str(oid)) == [str(oid), oid]
    assert _source_id_candidates("42") == ["42", 42]
    assert _source_id_candidates('{"a":1}') == ['{"a":1}', {"a": 1}]
    assert _source_id_candidates("plain") == ["plain"]
    assert _source_id_candidates("-x") == ["-x"]  # not JSON: kept as the string only


def test_sensitive_names_cover_model_columns() -> None:
    assert sensitive_names(["customer.email"]) == {"customer.email", "customer__email"}


def test_lag_check() -> None:
    assert not lag_check(None, 60).passed
    assert lag_check(_profile(), 60).passed  # snapshot only: no CDC changes yet
    assert lag_check(_profile(lag_p95_seconds=5.0), 60).passed
    slow = lag_check(_profile(lag_p95_seconds=500.0, recent_lag_p95_seconds=90.0), 60)
    assert not slow.passed and "90.0s exceeds 60s" in slow.description
    stale = lag_check(_profile(lag_p95_seconds=1.0), 60, checkpoint_age=120)
    assert not stale.passed and "checkpointed" in stale.description


def test_reconciliation_check_tolerance() -> None:
    rec = Reconciliation("shop", "orders", 1000, 995, 200, tolerance=0.01)
    rec.mismatches = [Mismatch("a", "hash_mismatch", "x", "y")]
    assert rec.count_difference == -5 and rec.mismatch_ratio == 0.005
    assert reconciliation_check(rec).passed
    rec.tolerance = 0.0
    out = reconciliation_check(rec)
    assert not out.passed and out.metadata["mismatched_ids"] == ["hash_mismatch: a"]
    assert not reconciliation_check(None, error="cannot reach MongoDB").passed
    empty = Reconciliation("shop", "orders", 0, 3, 0, tolerance=0.5)
    assert empty.count_difference_ratio == 1.0 and not empty.within_tolerance


def test_null_ratio_and_row_count_rules() -> None:
    cols = [
        ColumnProfile("a", "string", None, 0.1, 5, 9, 1.0),
        ColumnProfile("b", "number", None, 0.6, 5, 4, 0.5),
        ColumnProfile("b", "string", None, 0.6, 5, 4, 0.5),
    ]
    profile = _profile(columns=cols, row_count_change=-0.4, rows_live_previous=17)
    assert null_ratio_check(profile, None).passed
    out = null_ratio_check(profile, 0.5)
    assert not out.passed and out.metadata["columns_over"] == {"b": 0.6}
    assert out.severity == "WARN"
    assert row_count_check(profile, None).passed
    assert row_count_check(profile, 0.5).passed
    assert not row_count_check(profile, 0.3).passed
    assert row_count_check(_profile(), 0.1).description == "no previous profile to compare with"
    assert dead_letter_check(None).passed and dead_letter_check(0).passed
    assert not dead_letter_check(3).passed


def test_thresholds_table_overrides_analytics() -> None:
    schema = _settings().get_schema("shop")
    assert thresholds(schema, "orders") == (0.3, None)
    schema = _settings(max_null_ratio=0.9, max_row_count_change=0.2).get_schema("shop")
    assert thresholds(schema, "orders") == (0.9, 0.2)
    assert thresholds(schema, "customers") == (0.3, None)
    outcomes = evaluate_checks(
        schema, "orders", raw=None, reconciliation=None, dead_letters=None, checkpoint_age=None
    )
    assert [o.name for o in outcomes] == [
        "freshness_lag",
        "reconciliation",
        "dead_letters",
        "null_ratio",
        "row_count_change",
    ]


def test_selections_and_job_names() -> None:
    assert job_names("shop") == {
        "profile": "profile_shop",
        "update": "update_shop",
        "rebuild_models": "rebuild_models_shop",
        "refresh": "refresh_shop",
    }
    sel = selections("shop")
    assert sel["profile"] == 'key:"analytics/shop/*"'
    assert sel["update"] == 'key:"analytics/shop/*" or ((1+key:"analytics/shop/*") and kind:"dbt")'
    assert all(" not " not in s for s in sel.values())  # `not` resolves with a beta parameter


def test_charts_escape_and_stay_offline() -> None:
    hostile = '<script>alert("x")</script>'
    svg = charts.bar_chart([hostile], {"inserts": [3], "updates": [1]})
    svg += charts.hbar_chart([(hostile, 0.5)], threshold=0.2)
    svg += charts.histogram([{"lo": 0, "hi": 1, "count": 2}, {"lo": 1, "hi": 2, "count": 0}])
    svg += charts.line_chart(["a", "b"], {hostile: [1.0, None]})
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "http" not in svg.replace("http://www.w3.org/2000/svg", "")
    assert "no changes landed yet" in charts.bar_chart([], {})


def test_schema_page_escapes_collection_names() -> None:
    schema = _settings().get_schema("shop")
    report = SchemaReport(schema, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    report.collections["<b>x</b>"] = CollectionReport("<b>x</b>")
    page = render_schema(report)
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "<link" not in page and "<script" not in page  # self-contained


@pytest.mark.parametrize(
    ("before", "target", "after", "consistent"),
    [
        (10, 10, 10, True),
        (10, 11, 12, True),
        (12, 11, 10, True),
        (10, 9, 12, False),
        (10, 12, 10, False),
    ],
)
def test_counts_in_flight(before: int, target: int, after: int, consistent: bool) -> None:
    assert counts_consistent(before, target, after) is consistent
    rec = Reconciliation("shop", "orders", after, target, 0, 0.0, counts_in_flight=consistent)
    assert rec.within_tolerance is consistent
    assert ("in flight" in rec.describe()) is consistent


def test_report_url_follows_served_reports(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from cartridge_dagster.assets.analytics import REPORTS_URL_ENV, report_url

    page = tmp_path / "shop.html"
    monkeypatch.delenv(REPORTS_URL_ENV, raising=False)
    assert report_url(page) == page.resolve().as_uri()
    monkeypatch.setenv(REPORTS_URL_ENV, "http://127.0.0.1:8765/")
    assert report_url(page) == "http://127.0.0.1:8765/shop.html"


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        # a staging column: one SQL type whatever JSON types its values took
        ([("total", "number", "numeric"), ("total", "null", "numeric")], {"total": "numeric"}),
        ([("name", "string", "text"), ("name", "null", "text")], {"name": "text"}),
        # a document path: its JSON types, null left out when others exist
        (
            [("zip", "number", None), ("zip", "string", None), ("zip", "null", None)],
            {"zip": "number|string"},
        ),
        ([("coupon", "null", None)], {"coupon": "null"}),
    ],
)
def test_column_types_are_not_repeated(
    columns: list[tuple[str, str, str | None]], expected: dict[str, str]
) -> None:
    from cartridge_dagster.analytics.profile import ColumnProfile, Relation, TableProfile

    profile = TableProfile(
        Relation("shop", "model", "orders", "shop_staging", "stg_shop__orders"), 1, 1, 0
    )
    profile.columns = [ColumnProfile(p, j, d, 0.0, 1, 1, 1.0) for p, j, d in columns]
    assert profile.column_types() == expected


HOSTILE = "<script>alert('x\")</script>"


def test_report_templates_escape_every_name_and_value() -> None:
    """Collection, paths, top values, ids and check text come from the warehouse: the templates
    print them as text, in element content and in attributes alike."""
    schema = _settings().get_schema("shop")
    report = SchemaReport(schema, dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    col = {
        "column_path": HOSTILE,
        "json_type": "string",
        "data_type": "text",
        "null_ratio": 0.25,
        "distinct_estimate": 2,
        "value_count": 3,
        "sensitive": False,
        "min_num": None,
        "time_values": 0,
        "true_count": None,
        "top_values": [{"value": HOSTILE, "count": 2}],
        "histogram": None,
        "max_length": 5,
        "min_length": 1,
        "avg_length": 2.0,
    }
    c = CollectionReport(HOSTILE)
    c.raw = {
        "relation_schema": "raw_shop",
        "relation_name": HOSTILE,
        "rows_live": 3,
        "rows_deleted": 0,
        "row_count_change": None,
        "freshness_seconds": 1.0,
        "lag_p50_seconds": None,
        "lag_p95_seconds": None,
        "activity_source": "latest",
        "profiled_at": now,
    }
    c.columns = [col]
    c.models = [
        {
            "relation_schema": "shop_staging",
            "relation_name": HOSTILE,
            "rows_live": 3,
            "columns_profiled": 1,
            "row_count_change": None,
        }
    ]
    c.model_columns = {HOSTILE: [col]}
    c.mismatches = [
        {"_id": HOSTILE, "kind": "hash_mismatch", "source_hash": "a", "target_hash": "b"}
    ]
    c.checks = [
        {"check_name": HOSTILE, "passed": False, "severity": "ERROR", "description": HOSTILE}
    ]
    report.collections[HOSTILE] = c
    page = render_schema(report)
    assert "<script" not in page
    assert page.count("&lt;script&gt;alert(&#39;x&#34;)&lt;/script&gt;") >= 8
    # an attribute cannot be closed by a quote in a name
    assert 'id="&lt;script&gt;alert(&#39;x&#34;)&lt;/script&gt;"' in page
    index = render_index([report])
    assert "<script" not in index
