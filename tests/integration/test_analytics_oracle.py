"""Profiles of hostile raw tables against a straightforward Python computation.

The profile statement works from the distinct values of the walked documents (weighted sums,
values expanded back for percentiles); this computes every statistic value by value in Python
from the documents as PostgreSQL stores them, and compares. The table is small enough to be
profiled whole (no sampling), so every number is exact. The table's own numbers and its
activity (lag percentiles, changes per time bucket) are checked row by row the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
from collections import Counter, defaultdict
from decimal import Decimal, localcontext
from typing import Any

import asyncpg
import pytest
from bson import Decimal128

from cartridge_dagster.analytics.profile import (
    _BUCKETS,
    Relation,
    bucket_seconds,
    bucket_seconds_sql,
    profile_relation,
)
from cartridge_dagster.analytics.store import ensure_analytics_schema
from cartridge_dagster.landing import RAW_COLUMNS, raw_table_ddl
from tests.conftest import run
from tests.support.raw_tables import land

pytestmark = pytest.mark.integration

UTC = dt.UTC
#: ISO-looking strings and the time PostgreSQL reads (None: not a time; timezone UTC).
TIMES: dict[str, dt.datetime | None] = {
    "2026-01-31T10:00:00Z": dt.datetime(2026, 1, 31, 10, tzinfo=UTC),  # day 31: checked cast
    "2026-02-30": None,  # looks like a date, is none
    "2026-03-01 12:30": dt.datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
    "2026-03-01T12:30:00.123456+02:00": dt.datetime(2026, 3, 1, 10, 30, 0, 123456, tzinfo=UTC),
    "2026-13-01": None,
    "not a date": None,
    "2026-01-05T00:00:00.1234567Z": dt.datetime(2026, 1, 5, 0, 0, 0, 123457, tzinfo=UTC),
    "1999-12-31": dt.datetime(1999, 12, 31, tzinfo=UTC),
}
SENSITIVE = "sp ace"
TOP = 4


def _docs() -> list[dict[str, Any]]:
    times = list(TIMES)
    docs = []
    for i in range(60):
        doc: dict[str, Any] = {
            "_id": f"id-{i:02d}",
            "a.b": i if i % 3 else None,
            "": "empty key",
            "x[]": [i, i + 1] if i % 5 else [],
            "ключ": "значение" * (i % 3),
            "big": Decimal128(f"{i % 7}234567890123456789.012345678{i % 10}"),  # 29 digits
            "tiny": Decimal128(f"-{i}E-28"),
            "float": i / 7,
            "items": [
                {"sku": f"k{j}", "qty": j, "price": Decimal128(f"{j}.10"), "tags": ["t", None, j]}
                for j in range(i % 4)
            ],
            "nested": {"arr": [[i, None], [], [str(i)]], "deep": {"er": {"est": i % 2 == 0}}},
            "when": times[i % len(times)],
            SENSITIVE: f"secret{i}",
            "100%_\\": None if i % 2 else "x",
            # two values repeated, the rest seen once: the top values are both, then the
            # first of the singles in text order
            "mostly_unique": "dup" if i < 2 else "twice" if i < 4 else f"u{i}",
        }
        if i % 4 != 3:
            doc['qu"ote'] = True if i % 4 == 0 else False if i % 4 == 1 else None
        docs.append(doc)
    return docs


class _Num(str):
    """A JSON number, kept as PostgreSQL prints it."""


def _jtype(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, _Num):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _walk(doc: dict[str, Any], max_depth: int = 8) -> list[tuple[str, str, Any]]:
    out: list[tuple[str, str, Any]] = []

    def visit(path: str, v: Any, depth: int) -> None:
        out.append((path, _jtype(v), v))
        if depth < max_depth:
            if isinstance(v, dict):
                for k, c in v.items():
                    visit(f"{path}.{k}", c, depth + 1)
            elif isinstance(v, list):
                for c in v:
                    visit(f"{path}[]", c, depth + 1)

    for k, v in doc.items():
        visit(k, v, 1)
    return out


def _text(jtype: str, v: Any) -> str | None:
    if jtype in ("string", "number"):
        return str(v)
    if jtype == "boolean":
        return "true" if v else "false"
    return None


def _pct_cont(values: list[float], p: float) -> float:
    s = sorted(values)
    pos = p * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (pos - lo) * (s[hi] - s[lo])


def _pct_disc(values: list[dt.datetime], p: float) -> dt.datetime:
    s = sorted(values)
    return s[max(math.ceil(p * len(s)), 1) - 1]


def _expected(stored: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    values: dict[tuple[str, str], list[tuple[int, Any]]] = defaultdict(list)
    for rid, doc in enumerate(stored):
        for path, jtype, v in _walk(doc):
            values[(path, jtype)].append((rid, v))
    rows = len(stored)
    by_path: dict[str, list[tuple[str, list[tuple[int, Any]]]]] = defaultdict(list)
    for (path, jtype), vs in values.items():
        by_path[path].append((jtype, vs))
    out = {}
    for (path, jtype), vs in values.items():
        in_array = "[]" in path
        non_null = [(r, v) for t, tvs in by_path[path] if t != "null" for r, v in tvs]
        present = len({r for r, _ in non_null}) if in_array else len(non_null)
        total = sum(len(tvs) for _, tvs in by_path[path])
        texts = [t for t in (_text(jtype, v) for _, v in vs) if t is not None]
        counts = Counter(texts)
        e: dict[str, Any] = {
            "rows_live": rows,
            "value_count": len(vs),
            "rows_with_type": len({r for r, _ in vs}) if in_array else len(vs),
            "rows_present": present,
            "null_ratio": 1 - present / rows,
            "type_share": len(vs) / total,
            "distinct_estimate": len(counts),
            "true_count": sum(1 for _, v in vs if v is True),
            "sensitive": path == SENSITIVE,
        }
        lengths = [len(v) for _, v in vs if jtype in ("string", "array")]
        if lengths:
            e |= {"min_length": min(lengths), "max_length": max(lengths)}
            e["avg_length"] = sum(lengths) / len(lengths)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0].encode()))[:TOP]
        if len(counts) < len(vs) or len(vs) <= TOP:
            e["top_values"] = [{"value": t[:120], "count": c} for t, c in top] or None
        else:
            e["top_values"] = None
        if jtype == "number":
            nums = [Decimal(str(v)) for _, v in vs]
            floats = [float(x) for x in nums]
            with localcontext() as ctx:
                ctx.prec = 60
                mean = sum(nums) / len(nums)
            e |= {"min_num": min(nums), "max_num": max(nums), "mean_num": float(mean)}
            e["stddev_num"] = float(statistics.stdev(nums)) if len(nums) > 1 else None
            for name, p in (("p05", 0.05), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75)):
                e[name] = _pct_cont(floats, p)
            e["p95"] = _pct_cont(floats, 0.95)
            e["histogram_total"] = len(nums)
        times = [TIMES[str(v)] for _, v in vs if jtype == "string" and TIMES.get(str(v))]
        e["time_values"] = len(times)
        if times:
            e |= {"min_time": min(times), "max_time": max(times)}
            e |= {"p25_time": _pct_disc(times, 0.25), "p50_time": _pct_disc(times, 0.5)}
            e["p75_time"] = _pct_disc(times, 0.75)
            e["histogram_total"] = len(times)
        out[(path, jtype)] = e
    return out


async def _profile(pg_url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    conn = await asyncpg.connect(pg_url)
    try:
        await ensure_analytics_schema(conn)
        await land(conn, "raw_shop", "hostile", _docs())
        rel = Relation(
            "shop", "raw", "hostile", "raw_shop", "hostile", sensitive_paths=frozenset({SENSITIVE})
        )
        profile = await profile_relation(conn, rel, "oracle", top_values=TOP, histogram_buckets=5)
        assert profile is not None and profile.rows_profiled == 60
        texts = await conn.fetch('SELECT "document"::text AS d FROM raw_shop.hostile')
        stored = [json.loads(r["d"], parse_float=_Num, parse_int=_Num) for r in texts]
        cols = [
            dict(r) for r in await conn.fetch("SELECT * FROM cartridge_analytics.column_profiles")
        ]
        return stored, cols
    finally:
        await conn.close()


def test_profile_matches_a_value_by_value_computation(pg_url: str) -> None:
    stored, cols = run(_profile(pg_url))
    expected = _expected(stored)
    got = {(c["column_path"], c["json_type"]): c for c in cols}
    assert set(got) == set(expected)
    # the hostile parts are there: odd keys, nested arrays, nulls, 29-digit decimals
    for key in [("a.b", "null"), ("", "string"), ("x[][]", "number"), ('qu"ote', "boolean")]:
        assert key in got
    assert ("nested.arr[][]", "null") in got and ("items[].tags[]", "number") in got
    top = json.loads(got[("mostly_unique", "string")]["top_values"])
    assert [t["value"] for t in top] == ["dup", "twice", "u10", "u11"]
    assert got[("big", "number")]["max_num"] == Decimal("6234567890123456789.0123456788")
    approx = {"null_ratio", "type_share", "mean_num", "stddev_num", "avg_length"}
    approx |= {"p05", "p25", "p50", "p75", "p95"}
    for key, e in expected.items():
        c = got[key]
        sensitive = e.pop("sensitive")
        assert c["sensitive"] is sensitive, key
        total = e.pop("histogram_total", None)
        for name, want in e.items():
            if sensitive and name in ("top_values", "min_time", "max_time", "true_count"):
                want = None
            have = c[name]
            if name == "top_values" and have is not None:
                have = json.loads(have)
            if name in approx and want is not None:
                assert have == pytest.approx(want, rel=1e-12, abs=1e-300), (key, name)
            else:
                assert have == want, (key, name, have, want)
        histogram = json.loads(c["histogram"]) if c["histogram"] else None
        if total is None or sensitive:
            assert histogram is None, key
        else:
            assert sum(b["count"] for b in histogram) == total, key
            assert len(histogram) in (1, 5), key


# --------------------------------------------------------------------------- table level

OPS = ("insert", "update", "replace", "delete", "snapshot")


def _table_rows(now: dt.datetime) -> list[tuple[Any, ...]]:
    """Rows in landing order (RAW_COLUMNS): every operation, tombstones, rows without a source
    time, lags from negative to over a day, landed over two hours (some in the last 15 min)."""
    rows = []
    for i in range(97):
        op = OPS[i % len(OPS)]
        deleted = op == "delete"
        synced = now - dt.timedelta(seconds=7_200 - 73 * i, microseconds=i * 7_919)
        if i % 11 == 0:
            source = None
        elif i % 13 == 0:
            source = synced - dt.timedelta(days=1, hours=i % 5, microseconds=3)  # over a day
        elif i % 17 == 0:
            source = synced + dt.timedelta(seconds=2.5)  # a clock ahead of the warehouse
        else:
            source = synced - dt.timedelta(seconds=(i * 37 % 101) / 7, microseconds=i)
        doc = None if deleted else json.dumps({"_id": f"t-{i}", "n": i})
        rows.append((f"t-{i}", doc, deleted, i + 1, op, source, synced))
    return rows


def _lag(r: tuple[Any, ...]) -> float | None:
    op, source, synced = r[4], r[5], r[6]
    if op not in ("insert", "update", "replace", "delete") or source is None:
        return None
    delta = synced - source
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return float(Decimal(micros) / Decimal(1_000_000))


def _bin(t: dt.datetime, width: int) -> dt.datetime:
    origin = dt.datetime(2000, 1, 1, tzinfo=UTC)
    micros = (t - origin) // dt.timedelta(microseconds=1)
    step = width * 1_000_000
    return origin + dt.timedelta(microseconds=micros // step * step)


async def _profile_table(pg_url: str) -> tuple[list[tuple[Any, ...]], dict[str, Any], list[Any]]:
    conn = await asyncpg.connect(pg_url)
    try:
        await ensure_analytics_schema(conn)
        for stmt in raw_table_ddl("raw_shop", "timed"):
            await conn.execute(stmt)
        now = await conn.fetchval("SELECT now()")
        rows = _table_rows(now)
        await conn.copy_records_to_table(
            "timed", schema_name="raw_shop", records=rows, columns=list(RAW_COLUMNS)
        )
        rel = Relation("shop", "raw", "timed", "raw_shop", "timed")
        profile = await profile_relation(conn, rel, "oracle-table")
        assert profile is not None
        table = dict(
            await conn.fetchrow(
                "SELECT *, now() AS now FROM cartridge_analytics.table_profiles "
                "WHERE run_id = 'oracle-table'"
            )
        )
        activity = await conn.fetch(
            "SELECT * FROM cartridge_analytics.activity WHERE run_id = 'oracle-table' "
            "ORDER BY bucket"
        )
        return rows, table, list(activity)
    finally:
        await conn.close()


def test_table_numbers_and_activity_match_a_row_by_row_computation(pg_url: str) -> None:
    rows, got, activity = run(_profile_table(pg_url))
    live = [r for r in rows if not r[2]]
    lags = [x for x in (_lag(r) for r in rows) if x is not None]
    recent = [
        x
        for r in rows
        if (x := _lag(r)) is not None and r[6] > got["now"] - dt.timedelta(minutes=15)
    ]
    assert len(lags) > 40 and 0 < len(recent) < len(lags)
    synced = [r[6] for r in rows]
    want = {
        "rows_total": len(rows),
        "rows_live": len(live),
        "rows_deleted": len(rows) - len(live),
        "last_inserts": sum(r[4] == "insert" for r in rows),
        "last_updates": sum(r[4] in ("update", "replace") for r in rows),
        "last_deletes": sum(r[4] == "delete" for r in rows),
        "first_synced_at": min(synced),
        "last_synced_at": max(synced),
        "last_source_ts": max(r[5] for r in rows if r[5] is not None),
        "lag_max_seconds": max(lags),
        "activity_source": "latest",
    }
    for name, value in want.items():
        assert got[name] == value, name
    # percentile_cont interpolates in float8, as PostgreSQL does: exact to the last bit here
    for name, values, p in (
        ("lag_p50_seconds", lags, 0.5),
        ("lag_p95_seconds", lags, 0.95),
        ("recent_lag_p95_seconds", recent, 0.95),
    ):
        assert got[name] == pytest.approx(_pct_cont(values, p), rel=1e-15), name
    width = bucket_seconds(min(synced), max(synced))
    assert width == 300  # two hours: 24 buckets of 5 minutes
    buckets: dict[dt.datetime, list[tuple[Any, ...]]] = defaultdict(list)
    for r in rows:
        buckets[_bin(r[6], width)].append(r)
    assert [a["bucket"] for a in activity] == sorted(buckets)
    for a in activity:
        these = buckets[a["bucket"]]
        assert a["bucket_seconds"] == width
        assert a["inserts"] == sum(r[4] == "insert" for r in these)
        assert a["updates"] == sum(r[4] in ("update", "replace") for r in these)
        assert a["deletes"] == sum(r[4] == "delete" for r in these)
        assert a["other"] == sum(
            r[4] not in ("insert", "update", "replace", "delete") for r in these
        )
        bucket_lags = [x for x in (_lag(r) for r in these) if x is not None]
        for name, p in (("lag_p50_seconds", 0.5), ("lag_p95_seconds", 0.95)):
            if bucket_lags:
                assert a[name] == pytest.approx(_pct_cont(bucket_lags, p), rel=1e-15), name
            else:
                assert a[name] is None, name


async def _widths_in_sql(pg_url: str, spans: list[dt.timedelta | None]) -> list[int]:
    conn = await asyncpg.connect(pg_url)
    try:
        t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
        out = []
        for span in spans:
            hi = None if span is None else t0 + span
            sql = bucket_seconds_sql("$1::timestamptz", "$2::timestamptz", "$3::int[]")
            out.append(await conn.fetchval(f"SELECT {sql}", t0, hi, list(_BUCKETS)))
        return out
    finally:
        await conn.close()


def test_bucket_width_in_sql_is_the_python_width(pg_url: str) -> None:
    seconds = [0, 0.4, 1, 59.999999, 60, 60.000001, 300, 301, 1_800, 3_600, 3_600.5, 18_000]
    seconds += [54_000, 86_400, 216_000, 1_296_000, 10**7, 10**8, 10**9]
    spans: list[dt.timedelta | None] = [None] + [dt.timedelta(seconds=s) for s in seconds]
    t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
    want = [bucket_seconds(t0, None if s is None else t0 + s) for s in spans]
    assert len(set(want)) >= 8  # most widths, and the widest, are reached
    assert run(_widths_in_sql(pg_url, spans)) == want
