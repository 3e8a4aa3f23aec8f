"""``analytics/<S>/<C>``: summaries, reconciliation and checks of each landed collection.

One multi-asset per schema (subsettable: a run can profile one collection or all of them with a
single connection), downstream of ``raw/<S>/<C>`` and of the collection's staging models
(``stg_<S>__<C>`` and its child models, keys as dagster-dbt names them). Each materialization
carries the numbers a person wants (rows, growth, lag, reconciliation, a markdown summary, the
column schema) and links to the schema's HTML report; the five checks of
:mod:`cartridge_dagster.analytics.checks` run in the same step.
"""

import asyncio
import os
from pathlib import Path
from typing import Any

import dagster as dg

from cartridge_dagster.analytics.checks import CHECK_NAMES, CheckOutcome
from cartridge_dagster.analytics.models import model_names_for
from cartridge_dagster.analytics.profile import TableProfile
from cartridge_dagster.analytics.report import INDEX_KEY, default_report_dir, write_reports
from cartridge_dagster.analytics.runner import (
    CollectionAnalysis,
    SchemaAnalysis,
    analyze_schema_with,
    source_or_reason,
)
from cartridge_dagster.assets.keys import analytics_key, group_name, raw_key, staging_key
from cartridge_dagster.assets.stopping import (
    end_canceled,
    report_canceling,
    run_stopping,
    signals_taken,
)
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.connectors.postgres import pg_connection
from cartridge_dagster.resources import CartridgeResource, MongoResource, PostgresResource
from cartridge_dagster.sensors.automation import (
    ANALYTICS_POOL,
    analytics_condition,
    build_automation_defs,
)
from cartridge_dagster.state import known_collections

__all__ = [
    "CHECK_DESCRIPTIONS",
    "analytics_assets_for",
    "build_analytics_asset_defs",
    "build_analytics_defs",
    "collection_metadata",
    "report_url",
    "staging_keys",
]

#: Base URL where ``cartridge serve-reports`` serves the reports (links in asset metadata).
REPORTS_URL_ENV = "CARTRIDGE_REPORTS_URL"

CHECK_DESCRIPTIONS = {
    "freshness_lag": "CDC lag p95 (and warp's checkpoint age) within warp.lag_threshold_seconds.",
    "reconciliation": "Source and target agree: live counts and sampled canonical hashes, within "
    "analytics.reconcile_tolerance.",
    "dead_letters": "No pending dead letters for this collection in cartridge_warp.dead_letters.",
    "null_ratio": "No column's null ratio above max_null_ratio (per table, else analytics).",
    "row_count_change": "Live rows changed at most max_row_count_change since the last profile.",
}


def staging_keys(settings: CartridgeSettings, schema: str, collection: str) -> list[dg.AssetKey]:
    """Asset keys of the collection's generated staging models (and child models).

    Read from the dbt manifest, so only models that exist as dbt assets become dependencies;
    a code-location reload after generation adds them.
    """
    names = model_names_for(settings, schema, [collection]).get(collection) or []
    return [staging_key(schema, n) for n in names]


def _fmt(value: float | None, unit: str = "") -> str:
    return "–" if value is None else f"{value:,.2f}{unit}"


def _markdown(a: CollectionAnalysis, report: Path | None) -> str:
    raw = a.raw
    lines = [f"### {a.collection}"]
    if raw is None:
        lines.append("The raw table does not exist yet.")
    else:
        growth = "–" if raw.row_count_change is None else f"{raw.row_count_change:+.1%}"
        lines += [
            "| measure | value |",
            "|---|---|",
            f"| live rows | {raw.rows_live:,} |",
            f"| deleted rows | {raw.rows_deleted:,} |",
            f"| growth since last profile | {growth} |",
            f"| last landed | {_fmt(raw.freshness_seconds, ' s')} ago |",
            f"| CDC lag p50 / p95 | {_fmt(raw.lag_p50_seconds, ' s')} / "
            f"{_fmt(raw.lag_p95_seconds, ' s')} |",
            f"| columns profiled | {len({c.path for c in raw.columns})} |",
        ]
        rec = a.reconciliation
        if rec is not None:
            lines.append(
                f"| source / target | {rec.source_count:,} / {rec.target_count:,} "
                f"({rec.count_difference:+,}) |"
            )
            lines.append(f"| hash mismatches | {len(rec.mismatches)} of {rec.sampled} sampled |")
        if a.dead_letters is not None:
            lines.append(f"| pending dead letters | {a.dead_letters} |")
    if a.models:
        lines += ["", "**Staging models**", "", "| model | rows | columns |", "|---|---|---|"]
        for m in a.models:
            cols = len({c.path for c in m.columns})
            lines.append(f"| `{m.relation.display}` | {m.rows_live:,} | {cols} |")
    lines += ["", "**Checks**", ""]
    for c in a.checks:
        mark = "✅" if c.passed else ("❌" if c.severity == "ERROR" else "⚠️")
        lines.append(f"- {mark} `{c.name}`: {c.description}")
    if report is not None:
        lines += ["", f"Report: `{report}`"]
    return "\n".join(lines)


def _column_schema(profile: TableProfile) -> dg.TableSchema:
    by_path: dict[str, list[Any]] = {}
    for col in profile.columns:
        by_path.setdefault(col.path, []).append(col)
    columns = []
    types_of = profile.column_types()
    for path, cols in by_path.items():
        types = types_of[path]
        null = max(c.null_ratio for c in cols)
        distinct = max((c.distinct_estimate or 0) for c in cols)
        columns.append(
            dg.TableColumn(
                name=path,
                type=types,
                description=f"null {null:.1%} · distinct ≈ {distinct:,}",
            )
        )
    return dg.TableSchema(columns=columns)


def collection_metadata(a: CollectionAnalysis, report: Path | None) -> dict[str, Any]:
    """Materialization metadata for one collection (no secrets: names and numbers only)."""
    meta: dict[str, Any] = {"summary": dg.MetadataValue.md(_markdown(a, report))}
    raw = a.raw
    if raw is not None:
        shown = a.models[0] if a.models else raw
        meta.update(
            {
                "dagster/row_count": dg.MetadataValue.int(raw.rows_live),
                "dagster/column_schema": dg.MetadataValue.table_schema(_column_schema(shown)),
                "dagster/relation_identifier": dg.MetadataValue.text(raw.relation.display),
                "rows_live": dg.MetadataValue.int(raw.rows_live),
                "rows_deleted": dg.MetadataValue.int(raw.rows_deleted),
                "columns_profiled": dg.MetadataValue.int(len({c.path for c in raw.columns})),
            }
        )
        for key in (
            "row_count_change",
            "freshness_seconds",
            "lag_p50_seconds",
            "lag_p95_seconds",
        ):
            value = getattr(raw, key)
            if value is not None:
                meta[key] = dg.MetadataValue.float(round(float(value), 4))
    if a.reconciliation is not None:
        rec = a.reconciliation
        meta["source_count"] = dg.MetadataValue.int(rec.source_count)
        meta["target_count"] = dg.MetadataValue.int(rec.target_count)
        meta["hash_mismatches"] = dg.MetadataValue.int(len(rec.mismatches))
    if a.dead_letters is not None:
        meta["dead_letters"] = dg.MetadataValue.int(a.dead_letters)
    if a.models:
        meta["staging_models"] = dg.MetadataValue.json(
            {m.relation.display: m.rows_live for m in a.models}
        )
    if report is not None:
        meta["report"] = dg.MetadataValue.path(str(report.resolve()))
        meta["report_url"] = dg.MetadataValue.url(report_url(report))
    return meta


def report_url(report: Path) -> str:
    """``$CARTRIDGE_REPORTS_URL/<page>`` when reports are served (``cartridge serve-reports``),
    else the file's ``file://`` URI."""
    base = os.environ.get(REPORTS_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{report.name}"
    return report.resolve().as_uri()


def _check_result(key: dg.AssetKey, c: CheckOutcome) -> dg.AssetCheckResult:
    metadata: dict[str, Any] = {}
    for name, value in c.metadata.items():
        if value is None:
            continue
        if isinstance(value, bool | int | float | str):
            metadata[name] = value
        else:
            metadata[name] = dg.MetadataValue.json(value)
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=c.name,
        passed=c.passed,
        severity=(
            dg.AssetCheckSeverity.ERROR if c.severity == "ERROR" else dg.AssetCheckSeverity.WARN
        ),
        description=c.description,
        metadata=metadata,
    )


def analytics_assets_for(
    settings: CartridgeSettings, schema: SchemaConfig
) -> dg.AssetsDefinition | None:
    """The analytics multi-asset of one schema; None while no collection is known."""
    collections = known_collections(settings, schema.name)
    if not collections:
        return None
    keys = {c: analytics_key(schema.name, c) for c in collections}
    condition = analytics_condition(schema, [raw_key(schema.name, c) for c in collections])
    specs = [
        dg.AssetSpec(
            key=keys[c],
            deps=[raw_key(schema.name, c), *staging_keys(settings, schema.name, c)],
            group_name=group_name(schema.name),
            kinds={"postgres"},
            description=(
                f"Profile of `{c}` (raw table and staging models) in `cartridge_analytics`, "
                "reconciled against the source, with freshness, dead-letter and anomaly checks."
            ),
            tags={"cartridge/schema": schema.name, "cartridge/layer": "analytics"},
            skippable=True,
            automation_condition=condition,
        )
        for c in collections
    ]
    check_specs = [
        dg.AssetCheckSpec(name=name, asset=keys[c], description=CHECK_DESCRIPTIONS[name])
        for c in collections
        for name in CHECK_NAMES
    ]

    @dg.multi_asset(
        name=f"analytics_{schema.name}",
        specs=specs,
        check_specs=check_specs,
        can_subset=True,
        op_tags={"cartridge/schema": schema.name},
        pool=ANALYTICS_POOL,
    )
    def analytics(
        context: dg.AssetExecutionContext,
        cartridge: CartridgeResource,
        postgres: PostgresResource,
        mongo: MongoResource,
    ) -> Any:
        cfg = cartridge.settings()
        checks_for = {k.asset_key for k in context.selected_asset_check_keys}
        wanted = [
            c
            for c in collections
            if keys[c] in context.selected_asset_keys or keys[c] in checks_for
        ]
        report_dir = default_report_dir(cfg)

        async def run() -> tuple[SchemaAnalysis, dict[str, Path]]:
            async with (
                pg_connection(postgres.url(), application_name="cartridge-analytics") as conn,
                source_or_reason(
                    mongo.url(schema.name), cfg.source_for(schema.name).connect_timeout_seconds
                ) as (src, why),
            ):
                result = await analyze_schema_with(
                    conn,
                    src,
                    cfg,
                    schema.name,
                    collections=wanted,
                    run_id=context.run.run_id,
                    trigger="dagster",
                    reconcile_error=why,
                )
                paths = await write_reports(conn, cfg, report_dir, schemas=[schema.name])
            return result, paths

        stop: list[str] = []

        async def until_stopped() -> tuple[SchemaAnalysis, dict[str, Path]] | None:
            # SIGINT/SIGTERM (a termination reaches the worker as SIGINT) cancel the analysis
            # (asyncpg cancels the query in progress) instead of failing the step
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            assert task is not None

            def on_signal(name: str) -> None:
                stop.append(name)
                loop.call_soon_threadsafe(task.cancel)

            with signals_taken(on_signal):
                try:
                    return await run()
                except asyncio.CancelledError:
                    if not stop:
                        raise
                    return None

        analysed = asyncio.run(until_stopped())
        if analysed is None:
            terminated = run_stopping(context)
            why = "run termination requested" if terminated else f"{stop[0]} received"
            context.log.info(f"{why}: analytics of {schema.name} stopped; nothing written")
            if not terminated:
                report_canceling(context, f"{why} by the run worker: analytics stopped cleanly")
            return
        result, paths = analysed
        report = paths.get(schema.name)
        context.log.info(
            f"analytics {schema.name}: {len(wanted)} collections profiled; report {report} "
            f"(index {paths.get(INDEX_KEY)})"
        )
        for c in wanted:
            analysis = result.collections[c]
            if keys[c] in context.selected_asset_keys:
                yield dg.MaterializeResult(
                    asset_key=keys[c], metadata=collection_metadata(analysis, report)
                )
            for outcome in analysis.checks:
                check_key = dg.AssetCheckKey(keys[c], outcome.name)
                if check_key in context.selected_asset_check_keys:
                    yield _check_result(keys[c], outcome)

    return analytics.with_hooks({end_canceled})


def build_analytics_asset_defs(settings: CartridgeSettings) -> dg.Definitions:
    assets = [a for s in settings.schemas if (a := analytics_assets_for(settings, s)) is not None]
    return dg.Definitions(assets=assets)


def build_analytics_defs(settings: CartridgeSettings) -> dg.Definitions:
    """Analytics assets and checks, plus the automation sensor and the jobs."""
    return dg.Definitions.merge(
        build_analytics_asset_defs(settings), build_automation_defs(settings)
    )
