"""Self-contained HTML reports: one page per schema and an index (inline SVG, no network).

The pages read the latest summaries from ``cartridge_analytics`` (small, already aggregated
rows) and render them with :mod:`charts`. They are written under ``DIR/index.html`` and
``DIR/<schema>.html``; ``settings.state_dir/reports`` by default.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import asyncpg

from cartridge_dagster.analytics import charts
from cartridge_dagster.analytics.store import table
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.landing import ANALYTICS_SCHEMA

__all__ = ["INDEX_KEY", "SchemaReport", "default_report_dir", "load_schema_report", "write_reports"]


#: Key of the index page in :func:`write_reports`' result (schema names start with a letter).
INDEX_KEY = "_index"


def default_report_dir(settings: CartridgeSettings) -> Path:
    return settings.state_path / "reports"


@dataclass
class CollectionReport:
    collection: str
    raw: dict[str, Any] | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    trend: list[tuple[dt.datetime, int]] = field(default_factory=list)
    applied: list[tuple[dt.datetime, int | None]] = field(default_factory=list)
    activity: list[dict[str, Any]] = field(default_factory=list)
    columns: list[dict[str, Any]] = field(default_factory=list)
    model_columns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    reconciliation: dict[str, Any] | None = None
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def status(self) -> str:
        if not self.checks:
            return "unknown"
        if any(not c["passed"] and c["severity"] == "ERROR" for c in self.checks):
            return "failing"
        if any(not c["passed"] for c in self.checks):
            return "warning"
        return "passing"


@dataclass
class SchemaReport:
    schema: SchemaConfig
    generated_at: dt.datetime
    collections: dict[str, CollectionReport] = field(default_factory=dict)

    @property
    def status(self) -> str:
        states = {c.status for c in self.collections.values()}
        for state in ("failing", "warning", "passing"):
            if state in states:
                return state
        return "unknown"


def _decode(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    for key in ("top_values", "histogram"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


async def load_schema_report(conn: asyncpg.Connection, schema: SchemaConfig) -> SchemaReport:
    """The latest summaries of ``schema`` (empty when it was never analysed)."""
    report = SchemaReport(schema, dt.datetime.now(dt.UTC))
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table("table_profiles"))
    if not exists:
        return report

    def coll(name: str) -> CollectionReport:
        return report.collections.setdefault(name, CollectionReport(name))

    latest = await conn.fetch(
        f"""SELECT DISTINCT ON (relation_schema, relation_name) *
        FROM {table("table_profiles")} WHERE schema_name = $1
        ORDER BY relation_schema, relation_name, profiled_at DESC""",
        schema.name,
    )
    for row in latest:
        c = coll(str(row["collection"]))
        if row["layer"] == "raw":
            c.raw = dict(row)
        else:
            c.models.append(dict(row))
    for c in report.collections.values():
        c.models.sort(key=lambda m: m["relation_name"])
    trend = await conn.fetch(
        f"""SELECT collection, profiled_at, rows_live, events_applied FROM (
          SELECT collection, profiled_at, rows_live, events_applied,
                 row_number() OVER (PARTITION BY collection ORDER BY profiled_at DESC) AS rn
          FROM {table("table_profiles")} WHERE schema_name = $1 AND layer = 'raw') t
        WHERE rn <= 60 ORDER BY profiled_at""",
        schema.name,
    )
    for row in trend:
        c = coll(str(row["collection"]))
        c.trend.append((row["profiled_at"], int(row["rows_live"])))
        c.applied.append((row["profiled_at"], row["events_applied"]))
    for c in report.collections.values():
        runs = {
            (m["run_id"], m["relation_schema"], m["relation_name"]): m
            for m in ([c.raw] if c.raw else []) + c.models
        }
        if c.raw:
            c.activity = [
                dict(r)
                for r in await conn.fetch(
                    f"SELECT * FROM {table('activity')} WHERE run_id = $1 AND schema_name = $2 "
                    "AND collection = $3 ORDER BY bucket",
                    c.raw["run_id"],
                    schema.name,
                    c.collection,
                )
            ]
        for (run_id, rs, rn), profile in runs.items():
            cols = [
                _decode(r)
                for r in await conn.fetch(
                    f"SELECT * FROM {table('column_profiles')} WHERE run_id = $1 "
                    "AND relation_schema = $2 AND relation_name = $3 "
                    "ORDER BY column_path, rows_with_type DESC",
                    run_id,
                    rs,
                    rn,
                )
            ]
            if profile["layer"] == "raw":
                c.columns = cols
            else:
                c.model_columns[rn] = cols
    recs = await conn.fetch(
        f"""SELECT DISTINCT ON (collection) * FROM {table("reconciliation")}
        WHERE schema_name = $1 ORDER BY collection, checked_at DESC""",
        schema.name,
    )
    for row in recs:
        c = coll(str(row["collection"]))
        c.reconciliation = dict(row)
        c.mismatches = [
            dict(r)
            for r in await conn.fetch(
                f"SELECT _id, kind, source_hash, target_hash "
                f"FROM {table('reconciliation_mismatches')} "
                "WHERE run_id = $1 AND schema_name = $2 AND collection = $3 ORDER BY kind, _id "
                "LIMIT 50",
                row["run_id"],
                schema.name,
                row["collection"],
            )
        ]
    checks = await conn.fetch(
        f"""SELECT DISTINCT ON (collection, check_name) * FROM {table("check_results")}
        WHERE schema_name = $1 ORDER BY collection, check_name, checked_at DESC""",
        schema.name,
    )
    for row in checks:
        coll(str(row["collection"])).checks.append(dict(row))
    report.collections = dict(sorted(report.collections.items()))
    return report


# --------------------------------------------------------------------------- rendering

_CSS = """
:root { --ink:#111827; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7fb; --card:#fff;
  --accent:#4f46e5; --good:#047857; --good-bg:#d1fae5; --warn:#b45309; --warn-bg:#fef3c7;
  --bad:#b91c1c; --bad-bg:#fee2e2; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font: 14px/1.5 Inter, ui-sans-serif, system-ui, -apple-system, "Segoe UI", sans-serif; }
header.top { background:linear-gradient(120deg,#1e1b4b,#4338ca 60%,#6366f1); color:#fff;
  padding:28px 40px 24px; }
header.top .crumbs { opacity:.75; font-size:13px; }
header.top .crumbs a { color:#fff; }
header.top h1 { margin:6px 0 4px; font-size:26px; font-weight:650; letter-spacing:-.01em; }
header.top .sub { opacity:.85; font-size:13px; }
main { max-width:1240px; margin:0 auto; padding:24px 40px 60px; }
a { color:var(--accent); text-decoration:none; } a:hover { text-decoration:underline; }
.kpis { display:grid; grid-template-columns:repeat(auto-fit,minmax(170px,1fr)); gap:12px;
  margin:-44px 0 24px; }
.kpi { background:var(--card); border-radius:12px; padding:14px 16px;
  box-shadow:0 1px 2px rgba(16,24,40,.06),0 1px 3px rgba(16,24,40,.1); }
.kpi .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.kpi .value { font-size:24px; font-weight:650; margin-top:2px; }
.kpi .note { color:var(--muted); font-size:12px; }
.card { background:var(--card); border-radius:14px; padding:20px 22px; margin:0 0 22px;
  box-shadow:0 1px 2px rgba(16,24,40,.06),0 1px 3px rgba(16,24,40,.1); }
.card h2 { margin:0; font-size:19px; font-weight:650; }
.card h3 { margin:18px 0 8px; font-size:13px; color:var(--muted); text-transform:uppercase;
  letter-spacing:.05em; font-weight:600; }
.card-head { display:flex; align-items:center; gap:12px; flex-wrap:wrap; }
.card-head .rel { color:var(--muted); font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
  font-size:12px; }
.pill { display:inline-block; border-radius:999px; padding:2px 10px; font-size:12px;
  font-weight:600; }
.pill.passing { background:var(--good-bg); color:var(--good); }
.pill.warning { background:var(--warn-bg); color:var(--warn); }
.pill.failing { background:var(--bad-bg); color:var(--bad); }
.pill.unknown { background:#e5e7eb; color:#374151; }
.stats { display:grid; grid-template-columns:repeat(auto-fit,minmax(130px,1fr)); gap:10px;
  margin-top:14px; }
.stat { border:1px solid var(--line); border-radius:10px; padding:8px 12px; }
.stat .label { color:var(--muted); font-size:11.5px; }
.stat .value { font-size:17px; font-weight:600; }
.grid2 { display:grid; grid-template-columns:1fr 1fr; gap:18px; }
@media (max-width:900px) { .grid2 { grid-template-columns:1fr; } }
svg.chart { width:100%; height:auto; display:block; }
svg.spark { width:120px; height:28px; vertical-align:middle; }
.hists { display:grid; grid-template-columns:repeat(auto-fill,minmax(250px,1fr)); gap:14px; }
.hist { border:1px solid var(--line); border-radius:10px; padding:8px 10px 4px; }
.hist .name { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
.hist .meta { color:var(--muted); font-size:11.5px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th { text-align:left; color:var(--muted); font-weight:600; font-size:12px;
  border-bottom:1px solid var(--line); padding:6px 8px; white-space:nowrap; }
td { border-bottom:1px solid #f1f2f6; padding:6px 8px; vertical-align:top; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
td code, .mono { font-family:ui-monospace,SFMono-Regular,Menlo,monospace; font-size:12px; }
.type { display:inline-block; font-size:11px; padding:0 7px; border-radius:6px;
  background:#eef2ff; color:#3730a3; }
.type.string { background:#ecfeff; color:#155e75; } .type.number { background:#eef2ff; }
.type.boolean { background:#fdf4ff; color:#86198f; } .type.object { background:#f3f4f6;
  color:#374151; } .type.array { background:#fff7ed; color:#9a3412; }
.type.null { background:#f3f4f6; color:#6b7280; }
.tops { color:#374151; font-size:12px; }
.tops span { display:inline-block; background:#f3f4f6; border-radius:6px; padding:0 6px;
  margin:1px 3px 1px 0; }
.check { display:flex; gap:10px; align-items:baseline; padding:5px 0;
  border-bottom:1px solid #f1f2f6; }
.check .dot { width:9px; height:9px; border-radius:50%; flex:none; margin-top:5px; }
.dot.ok { background:#10b981; } .dot.warn { background:#f59e0b; } .dot.bad { background:#ef4444; }
.check .name { font-weight:600; min-width:150px; }
.check .desc { color:#374151; }
details summary { cursor:pointer; color:var(--accent); font-weight:600; margin-top:12px; }
.empty { color:var(--muted); font-style:italic; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:20px; }
.index-table td, .index-table th { padding:10px 12px; }
"""


def _page(title: str, crumbs: str, heading: str, sub: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<header class='top'><div class='crumbs'>{crumbs}</div><h1>{escape(heading)}</h1>"
        f"<div class='sub'>{sub}</div></header><main>{body}</main>"
        "<footer>Generated by Cartridge analytics from the summaries in "
        f"<code>{escape(ANALYTICS_SCHEMA)}</code>.</footer></body></html>"
    )


def _kpi(label: str, value: str, note: str = "") -> str:
    return (
        f"<div class='kpi'><div class='label'>{escape(label)}</div>"
        f"<div class='value'>{value}</div><div class='note'>{note}</div></div>"
    )


def _stat(label: str, value: str) -> str:
    return (
        f"<div class='stat'><div class='label'>{escape(label)}</div>"
        f"<div class='value'>{value}</div></div>"
    )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


def _bucket_label(bucket: dt.datetime, seconds: int) -> str:
    if seconds >= 86400:
        return bucket.strftime("%b %d")
    if seconds >= 3600:
        return bucket.strftime("%d %H:00")
    return bucket.strftime("%H:%M") if seconds >= 60 else bucket.strftime("%H:%M:%S")


def _continuous(activity: list[dict[str, Any]], limit: int = 120) -> list[dict[str, Any]]:
    """Activity with the empty buckets between the first and the last filled in."""
    if not activity:
        return []
    width = int(activity[0]["bucket_seconds"])
    by_bucket = {a["bucket"]: a for a in activity}
    first, last = activity[0]["bucket"], activity[-1]["bucket"]
    steps = int((last - first).total_seconds() // width) + 1
    if steps > limit:
        return activity
    empty = {"inserts": 0, "updates": 0, "deletes": 0, "other": 0}
    out = []
    for i in range(steps):
        bucket = first + dt.timedelta(seconds=i * width)
        out.append(
            by_bucket.get(bucket)
            or {
                **empty,
                "bucket": bucket,
                "bucket_seconds": width,
                "lag_p50_seconds": None,
                "lag_p95_seconds": None,
            }
        )
    return out


def _applied_deltas(applied: list[tuple[dt.datetime, int | None]]) -> list[int | None]:
    """Changes warp applied between consecutive profiles (None where a counter is missing)."""
    out: list[int | None] = []
    for (_, prev), (_, cur) in itertools.pairwise(applied):
        out.append(None if prev is None or cur is None or cur < prev else cur - prev)
    return out


def _column_summary(col: dict[str, Any]) -> str:
    if col["sensitive"]:
        return "<span class='empty'>sensitive: values not kept</span>"
    jt = col["json_type"]
    if jt == "number" and col["min_num"] is not None:
        return (
            f"min {charts.fmt_number(float(col['min_num']), 2)} · "
            f"p50 {charts.fmt_number(col['p50'], 2)} · "
            f"max {charts.fmt_number(float(col['max_num']), 2)} · "
            f"mean {charts.fmt_number(col['mean_num'], 2)}"
        )
    if col.get("time_values") and col["min_time"] is not None:
        return (
            f"{col['min_time']:%Y-%m-%d %H:%M} → {col['max_time']:%Y-%m-%d %H:%M} "
            f"(median {col['p50_time']:%Y-%m-%d}, middle half "
            f"{col['p25_time']:%Y-%m-%d} → {col['p75_time']:%Y-%m-%d})"
        )
    if jt == "boolean" and col["true_count"] is not None:
        share = col["true_count"] / col["value_count"] if col["value_count"] else 0
        return f"{share:.0%} true"
    tops = col.get("top_values") or []
    if tops:
        return (
            "<div class='tops'>"
            + "".join(
                f"<span>{escape(str(t['value']))} · {charts.fmt_number(t['count'])}</span>"
                for t in tops[:5]
            )
            + "</div>"
        )
    if jt in ("string", "array") and col["max_length"] is not None:
        what = "items" if jt == "array" else "chars"
        return f"{what} {col['min_length']}–{col['max_length']} (avg {col['avg_length']:.1f})"
    return ""


def _columns_table(cols: list[dict[str, Any]], *, declared: bool = False) -> str:
    if not cols:
        return "<p class='empty'>No columns profiled.</p>"
    head = (
        "<tr><th>column</th><th>type</th>"
        + ("<th>declared</th>" if declared else "")
        + "<th>null</th><th>distinct</th><th>values</th><th>summary</th></tr>"
    )
    rows = []
    for c in cols:
        scalar = c["json_type"] in ("string", "number", "boolean")
        distinct = charts.fmt_number(c["distinct_estimate"]) if scalar else "–"
        rows.append(
            f"<tr><td><code>{escape(c['column_path'])}</code></td>"
            f"<td><span class='type {escape(c['json_type'])}'>{escape(c['json_type'])}</span></td>"
            + (f"<td><code>{escape(c['data_type'] or '')}</code></td>" if declared else "")
            + f"<td class='num'>{c['null_ratio']:.1%}</td>"
            f"<td class='num'>{distinct}</td>"
            f"<td class='num'>{charts.fmt_number(c['value_count'])}</td>"
            f"<td>{_column_summary(c)}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _checks_html(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return "<p class='empty'>No checks evaluated yet.</p>"
    out = []
    for c in sorted(checks, key=lambda c: c["check_name"]):
        dot = "ok" if c["passed"] else ("bad" if c["severity"] == "ERROR" else "warn")
        out.append(
            f"<div class='check'><span class='dot {dot}'></span>"
            f"<span class='name'>{escape(c['check_name'])}</span>"
            f"<span class='desc'>{escape(c['description'])}</span></div>"
        )
    return "".join(out)


def _collection_card(schema: SchemaConfig, c: CollectionReport) -> str:
    raw = c.raw
    rel = f"{raw['relation_schema']}.{raw['relation_name']}" if raw else "(no raw table yet)"
    parts = [
        f"<section class='card' id='{escape(c.collection)}'><div class='card-head'>"
        f"<h2>{escape(c.collection)}</h2><span class='pill {c.status}'>{c.status}</span>"
        f"<span class='rel'>{escape(rel)}</span>"
        f"{charts.sparkline([float(v) for _, v in c.trend])}</div>"
    ]
    if raw:
        rec = c.reconciliation
        rec_value = (
            "–"
            if rec is None
            else f"{charts.fmt_number(rec['mismatched'])} / {charts.fmt_number(rec['sampled'])}"
        )
        parts.append(
            "<div class='stats'>"
            + _stat("live rows", charts.fmt_number(raw["rows_live"]))
            + _stat("deleted", charts.fmt_number(raw["rows_deleted"]))
            + _stat("growth", _pct(raw["row_count_change"]))
            + _stat("last landed", charts.fmt_duration(raw["freshness_seconds"]) + " ago")
            + _stat(
                "lag p50 / p95",
                f"{charts.fmt_duration(raw['lag_p50_seconds'])} / "
                f"{charts.fmt_duration(raw['lag_p95_seconds'])}",
            )
            + _stat(
                "source / target",
                "–" if rec is None else f"{rec['source_count']:,} / {rec['target_count']:,}",
            )
            + _stat("hash mismatches", rec_value)
            + "</div>"
        )
        activity = _continuous(c.activity)
        labels = [_bucket_label(a["bucket"], a["bucket_seconds"]) for a in activity]
        history = raw.get("activity_source") == "history"
        what = "every change" if history else "last operation per row"
        volume = charts.bar_chart(
            labels,
            {
                "inserts": [a["inserts"] for a in activity],
                "updates": [a["updates"] for a in activity],
                "deletes": [a["deletes"] for a in activity],
                "snapshot": [a["other"] for a in activity],
            },
            title=f"{c.collection}: changes landed over time",
        )
        lag = charts.line_chart(
            labels,
            {
                "lag p50": [a["lag_p50_seconds"] for a in activity],
                "lag p95": [a["lag_p95_seconds"] for a in activity],
            },
            durations=True,
            title=f"{c.collection}: CDC lag",
        )
        parts.append(
            f"<div class='grid2'><div><h3>Volume over time ({what})</h3>"
            f"{volume}</div><div><h3>CDC lag</h3>{lag}</div></div>"
        )
        if len(c.trend) >= 2:
            run_labels = [t.strftime("%m-%d %H:%M") for t, _ in c.trend]
            rows_chart = charts.line_chart(
                run_labels,
                {"live rows": [float(v) for _, v in c.trend]},
                height=200,
                title=f"{c.collection}: live rows",
            )
            deltas = _applied_deltas(c.applied)
            if any(d is not None for d in deltas):
                applied_chart = charts.bar_chart(
                    run_labels[1:],
                    {"changes": [float(d or 0) for d in deltas]},
                    height=200,
                    title=f"{c.collection}: changes applied between profiles",
                )
            else:
                applied_chart = charts.line_chart([], {}, height=200)
            parts.append(
                "<div class='grid2'><div><h3>Live rows per profile run</h3>"
                f"{rows_chart}</div><div><h3>Changes applied by warp between profiles</h3>"
                f"{applied_chart}</div></div>"
            )
        max_null = schema.table(c.collection).max_null_ratio
        if max_null is None:
            max_null = schema.analytics.max_null_ratio
        by_path: dict[str, float] = {}
        for col in c.columns:
            by_path[col["column_path"]] = max(by_path.get(col["column_path"], 0), col["null_ratio"])
        items = sorted(by_path.items(), key=lambda kv: (-kv[1], kv[0]))[:24]
        hists = [
            col
            for col in c.columns
            if col.get("histogram") and len(col["histogram"]) > 1 and not col["sensitive"]
        ][:9]
        parts.append(
            "<div class='grid2'><div><h3>Null ratio by column (highest first)</h3>"
            + charts.hbar_chart(items, threshold=max_null, title="null ratios")
            + "</div><div><h3>Distributions</h3><div class='hists'>"
            + "".join(
                f"<div class='hist'><div class='name'>{escape(h['column_path'])}</div>"
                f"<div class='meta'>{charts.fmt_number(h['value_count'])} values · "
                f"{'time' if h.get('time_values') else h['json_type']}</div>"
                + charts.histogram(
                    h["histogram"],
                    time_axis=bool(h.get("time_values")) and h["json_type"] == "string",
                    title=h["column_path"],
                )
                + "</div>"
                for h in hists
            )
            + ("" if hists else "<p class='empty'>No numeric or time columns.</p>")
            + "</div></div></div>"
        )
    parts.append(f"<h3>Checks</h3>{_checks_html(c.checks)}")
    if c.mismatches:
        parts.append(
            "<h3>Reconciliation differences</h3><table><tr><th>_id</th><th>kind</th>"
            "<th>source hash</th><th>target hash</th></tr>"
            + "".join(
                f"<tr><td><code>{escape(m['_id'])}</code></td><td>{escape(m['kind'])}</td>"
                f"<td><code>{escape((m['source_hash'] or '–')[:12])}</code></td>"
                f"<td><code>{escape((m['target_hash'] or '–')[:12])}</code></td></tr>"
                for m in c.mismatches
            )
            + "</table>"
        )
    if raw:
        parts.append(
            f"<details><summary>Raw columns ({len({x['column_path'] for x in c.columns})} "
            f"paths)</summary>{_columns_table(c.columns)}</details>"
        )
    if c.models:
        rows = "".join(
            f"<tr><td><code>{escape(m['relation_schema'])}.{escape(m['relation_name'])}</code></td>"
            f"<td class='num'>{charts.fmt_number(m['rows_live'])}</td>"
            f"<td class='num'>{m['columns_profiled']}</td>"
            f"<td class='num'>{_pct(m['row_count_change'])}</td></tr>"
            for m in c.models
        )
        parts.append(
            "<h3>Staging models</h3><table><tr><th>model</th><th>rows</th><th>columns</th>"
            f"<th>growth</th></tr>{rows}</table>"
        )
        for name, cols in c.model_columns.items():
            parts.append(
                f"<details><summary>{escape(name)} columns</summary>"
                f"{_columns_table(cols, declared=True)}</details>"
            )
    parts.append("</section>")
    return "".join(parts)


def render_schema(report: SchemaReport) -> str:
    s = report.schema
    cols = report.collections
    live = sum(c.raw["rows_live"] for c in cols.values() if c.raw)
    deleted = sum(c.raw["rows_deleted"] for c in cols.values() if c.raw)
    lags = [c.raw["lag_p95_seconds"] for c in cols.values() if c.raw and c.raw["lag_p95_seconds"]]
    recs = [c.reconciliation for c in cols.values() if c.reconciliation]
    in_tol = sum(1 for r in recs if r["within_tolerance"])
    checks = [ch for c in cols.values() for ch in c.checks]
    passed = sum(1 for ch in checks if ch["passed"])
    models = sum(len(c.models) for c in cols.values())
    kpis = (
        "<div class='kpis'>"
        + _kpi("collections", str(len(cols)), f"{models} staging models")
        + _kpi("live rows", charts.fmt_number(live), f"{charts.fmt_number(deleted)} deleted")
        + _kpi("worst lag p95", charts.fmt_duration(max(lags) if lags else None), "source → landed")
        + _kpi("reconciled", f"{in_tol} / {len(recs)}", "collections within tolerance")
        + _kpi(
            "checks",
            f"<span class='pill {report.status}'>{passed} / {len(checks)} pass</span>",
            "freshness, reconciliation, dead letters, anomalies",
        )
        + "</div>"
    )
    toc = " · ".join(f"<a href='#{escape(name)}'>{escape(name)}</a>" for name in cols)
    body = kpis
    if cols:
        body += f"<p>{toc}</p>" + "".join(_collection_card(s, c) for c in cols.values())
    else:
        body += (
            "<section class='card'><p class='empty'>Not analysed yet: run <code>cartridge "
            "analyze</code> or materialize the analytics assets.</p></section>"
        )
    sub = (
        f"source database <b>{escape(s.source_database)}</b> → raw schema "
        f"<b>{escape(s.raw_schema)}</b> · generated {report.generated_at:%Y-%m-%d %H:%M} UTC"
    )
    return _page(
        f"Cartridge · {s.name}",
        "<a href='index.html'>Cartridge reports</a> / schema",
        s.name,
        sub,
        body,
    )


def render_index(reports: list[SchemaReport]) -> str:
    rows = []
    for r in reports:
        cols = r.collections
        live = sum(c.raw["rows_live"] for c in cols.values() if c.raw)
        last = max((c.raw["profiled_at"] for c in cols.values() if c.raw), default=None)
        checks = [ch for c in cols.values() for ch in c.checks]
        passed = sum(1 for ch in checks if ch["passed"])
        rows.append(
            f"<tr><td><a href='{escape(r.schema.name)}.html'><b>{escape(r.schema.name)}</b></a>"
            f"</td><td>{escape(r.schema.source_database)}</td>"
            f"<td><code>{escape(r.schema.raw_schema)}</code></td>"
            f"<td class='num'>{len(cols)}</td><td class='num'>{charts.fmt_number(live)}</td>"
            f"<td>{'–' if last is None else f'{last:%Y-%m-%d %H:%M} UTC'}</td>"
            f"<td class='num'>{passed} / {len(checks)}</td>"
            f"<td><span class='pill {r.status}'>{r.status}</span></td></tr>"
        )
    body = (
        "<section class='card' style='margin-top:-30px'><table class='index-table'><tr>"
        "<th>schema</th><th>source database</th><th>raw schema</th><th>collections</th>"
        "<th>live rows</th><th>last profiled</th><th>checks passing</th><th>status</th></tr>"
        + "".join(rows)
        + "</table></section>"
    )
    now = dt.datetime.now(dt.UTC)
    return _page(
        "Cartridge reports",
        "Cartridge",
        "Warehouse reports",
        f"{len(reports)} schema{'' if len(reports) == 1 else 's'} · "
        f"generated {now:%Y-%m-%d %H:%M} UTC",
        body,
    )


async def write_reports(
    conn: asyncpg.Connection,
    settings: CartridgeSettings,
    output: Path | None = None,
    schemas: list[str] | None = None,
) -> dict[str, Path]:
    """Write ``<schema>.html`` for each schema and ``index.html``; returns the paths by schema.

    The index always lists every configured schema; ``schemas`` limits which pages are rewritten.
    """
    output = output or default_report_dir(settings)
    output.mkdir(parents=True, exist_ok=True)
    reports = [await load_schema_report(conn, s) for s in settings.schemas]
    paths: dict[str, Path] = {}
    for report in reports:
        path = output / f"{report.schema.name}.html"
        if schemas is None or report.schema.name in schemas:
            _write(path, render_schema(report))
        paths[report.schema.name] = path
    index = output / "index.html"
    _write(index, render_index(reports))
    paths[INDEX_KEY] = index
    return paths


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
