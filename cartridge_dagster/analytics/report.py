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
from pathlib import Path
from typing import Any

import asyncpg
import jinja2
from markupsafe import Markup

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

#: The report's templates (package data): autoescaped, so every name read from the warehouse
#: (collections, paths, top values, ids) is text; charts come in as already-escaped SVG.
_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("cartridge_dagster.analytics", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.filters["number"] = charts.fmt_number
_ENV.filters["duration"] = charts.fmt_duration


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1%}"


_ENV.filters["pct"] = _pct


def _svg(text: str) -> Markup:
    """A chart from :mod:`charts` (which escapes every label it draws)."""
    return Markup(text)  # noqa: S704 - charts.py escapes its text


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


def _card(schema: SchemaConfig, c: CollectionReport) -> dict[str, Any]:
    """What the template needs of one collection: its rows, and its charts drawn."""
    raw = c.raw
    card: dict[str, Any] = {
        "collection": c.collection,
        "status": c.status,
        "relation": (
            f"{raw['relation_schema']}.{raw['relation_name']}" if raw else "(no raw table yet)"
        ),
        "sparkline": _svg(charts.sparkline([float(v) for _, v in c.trend])),
        "raw": raw,
        "reconciliation": c.reconciliation,
        "checks": c.checks,
        "mismatches": c.mismatches,
        "columns": c.columns,
        "raw_paths": len({x["column_path"] for x in c.columns}),
        "models": c.models,
        "model_columns": c.model_columns,
        "rows_chart": None,
    }
    if not raw:
        return card
    activity = _continuous(c.activity)
    labels = [_bucket_label(a["bucket"], a["bucket_seconds"]) for a in activity]
    history = raw.get("activity_source") == "history"
    card["volume_what"] = "every change" if history else "last operation per row"
    # the snapshot is one burst of copied rows: drawn beside the stream, it flattens it
    card["snapshot_rows"] = sum(int(a["other"]) for a in c.activity)
    card["volume_chart"] = _svg(
        charts.bar_chart(
            labels,
            {
                "inserts": [a["inserts"] for a in activity],
                "updates": [a["updates"] for a in activity],
                "deletes": [a["deletes"] for a in activity],
            },
            title=f"{c.collection}: changes streamed over time",
        )
    )
    card["lag_chart"] = _svg(
        charts.line_chart(
            labels,
            {
                "lag p50": [a["lag_p50_seconds"] for a in activity],
                "lag p95": [a["lag_p95_seconds"] for a in activity],
            },
            durations=True,
            title=f"{c.collection}: CDC lag",
        )
    )
    if len(c.trend) >= 2:
        run_labels = [t.strftime("%m-%d %H:%M") for t, _ in c.trend]
        card["rows_chart"] = _svg(
            charts.line_chart(
                run_labels,
                {"live rows": [float(v) for _, v in c.trend]},
                height=200,
                counts=True,
                title=f"{c.collection}: live rows",
            )
        )
        deltas = _applied_deltas(c.applied)
        card["applied_chart"] = _svg(
            charts.bar_chart(
                run_labels[1:],
                {"changes": [float(d or 0) for d in deltas]},
                height=200,
                title=f"{c.collection}: changes applied between profiles",
            )
            if any(d is not None for d in deltas)
            else charts.line_chart([], {}, height=200)
        )
    max_null = schema.table(c.collection).max_null_ratio
    if max_null is None:
        max_null = schema.analytics.max_null_ratio
    by_path: dict[str, float] = {}
    for col in c.columns:
        by_path[col["column_path"]] = max(by_path.get(col["column_path"], 0), col["null_ratio"])
    items = sorted(by_path.items(), key=lambda kv: (-kv[1], kv[0]))[:24]
    card["null_chart"] = _svg(charts.hbar_chart(items, threshold=max_null, title="null ratios"))
    card["hists"] = [
        {
            "column_path": h["column_path"],
            "value_count": h["value_count"],
            "kind": "time" if h.get("time_values") else h["json_type"],
            "chart": _svg(
                charts.histogram(
                    h["histogram"],
                    time_axis=bool(h.get("time_values")) and h["json_type"] == "string",
                    title=h["column_path"],
                )
            ),
        }
        for h in c.columns
        if h.get("histogram") and len(h["histogram"]) > 1 and not h["sensitive"]
    ][:9]
    return card


def render_schema(report: SchemaReport) -> str:
    s = report.schema
    cols = report.collections
    lags = [c.raw["lag_p95_seconds"] for c in cols.values() if c.raw and c.raw["lag_p95_seconds"]]
    recs = [c.reconciliation for c in cols.values() if c.reconciliation]
    checks = [ch for c in cols.values() for ch in c.checks]
    return _ENV.get_template("schema.html.j2").render(
        title=f"Cartridge · {s.name}",
        heading=s.name,
        analytics_schema=ANALYTICS_SCHEMA,
        schema=s,
        generated_at=report.generated_at,
        status=report.status,
        cards=[_card(s, c) for c in cols.values()],
        models=sum(len(c.models) for c in cols.values()),
        live=sum(c.raw["rows_live"] for c in cols.values() if c.raw),
        deleted=sum(c.raw["rows_deleted"] for c in cols.values() if c.raw),
        worst_lag=max(lags) if lags else None,
        reconciled=len(recs),
        in_tolerance=sum(1 for r in recs if r["within_tolerance"]),
        checks=len(checks),
        passed=sum(1 for ch in checks if ch["passed"]),
    )


def render_index(reports: list[SchemaReport]) -> str:
    rows = []
    for r in reports:
        cols = r.collections
        checks = [ch for c in cols.values() for ch in c.checks]
        rows.append(
            {
                "name": r.schema.name,
                "source_database": r.schema.source_database,
                "raw_schema": r.schema.raw_schema,
                "collections": len(cols),
                "live": sum(c.raw["rows_live"] for c in cols.values() if c.raw),
                "last": max((c.raw["profiled_at"] for c in cols.values() if c.raw), default=None),
                "checks": len(checks),
                "passed": sum(1 for ch in checks if ch["passed"]),
                "status": r.status,
            }
        )
    return _ENV.get_template("index.html.j2").render(
        title="Cartridge reports",
        heading="Warehouse reports",
        analytics_schema=ANALYTICS_SCHEMA,
        rows=rows,
        now=dt.datetime.now(dt.UTC),
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
