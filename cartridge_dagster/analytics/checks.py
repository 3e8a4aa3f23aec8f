"""Check rules over profiles and reconciliations (plain Python; Dagster turns them into checks).

Per collection: ``freshness_lag`` (CDC lag p95 and warp's checkpoint age against
``warp.lag_threshold_seconds``), ``reconciliation`` (within ``analytics.reconcile_tolerance``),
``dead_letters`` (no pending dead letters in ``cartridge_warp.dead_letters``; no table means none),
``null_ratio`` and ``row_count_change`` (``tables.<C>.max_null_ratio`` /
``max_row_count_change``, else ``analytics.*``; unset means no rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg

from cartridge_dagster.analytics.profile import TableProfile
from cartridge_dagster.analytics.reconcile import Reconciliation
from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.identifiers import qualified
from cartridge_dagster.landing import CONTROL_SCHEMA

__all__ = [
    "CHECK_NAMES",
    "CheckOutcome",
    "checkpoint_age_seconds",
    "dead_letter_check",
    "dead_letter_count",
    "evaluate_checks",
    "lag_check",
    "null_ratio_check",
    "reconciliation_check",
    "row_count_check",
]

Severity = Literal["ERROR", "WARN"]

CHECK_NAMES = ("freshness_lag", "reconciliation", "dead_letters", "null_ratio", "row_count_change")


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    severity: Severity
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)


def lag_check(
    profile: TableProfile | None, threshold_seconds: float, checkpoint_age: float | None = None
) -> CheckOutcome:
    name = "freshness_lag"
    if profile is None:
        return CheckOutcome(name, False, "ERROR", "the raw table does not exist yet")
    lag = profile.recent_lag_p95_seconds
    if lag is None:
        lag = profile.lag_p95_seconds
    meta: dict[str, Any] = {
        "threshold_seconds": threshold_seconds,
        "lag_p95_seconds": lag,
        "freshness_seconds": profile.freshness_seconds,
        "checkpoint_age_seconds": checkpoint_age,
    }
    if lag is not None and lag > threshold_seconds:
        return CheckOutcome(
            name, False, "ERROR", f"CDC lag p95 {lag:.1f}s exceeds {threshold_seconds:.0f}s", meta
        )
    if checkpoint_age is not None and checkpoint_age > threshold_seconds:
        return CheckOutcome(
            name,
            False,
            "ERROR",
            f"warp has not checkpointed for {checkpoint_age:.0f}s (over {threshold_seconds:.0f}s)",
            meta,
        )
    what = f"CDC lag p95 {lag:.2f}s" if lag is not None else "no CDC changes yet"
    return CheckOutcome(name, True, "ERROR", f"{what} (threshold {threshold_seconds:.0f}s)", meta)


def reconciliation_check(rec: Reconciliation | None, error: str | None = None) -> CheckOutcome:
    name = "reconciliation"
    if error is not None:
        return CheckOutcome(name, False, "ERROR", f"cannot reconcile: {error}")
    if rec is None:
        return CheckOutcome(name, True, "ERROR", "reconciliation not run (no source connection)")
    meta: dict[str, Any] = {
        "source_count": rec.source_count,
        "target_count": rec.target_count,
        "count_difference": rec.count_difference,
        "sampled": rec.sampled,
        "mismatched": len(rec.mismatches),
        "tolerance": rec.tolerance,
        "mismatched_ids": [f"{m.kind}: {m.id}" for m in rec.mismatches[:20]],
    }
    if not rec.target_exists:
        return CheckOutcome(name, False, "ERROR", "the raw table does not exist yet", meta)
    return CheckOutcome(name, rec.within_tolerance, "ERROR", rec.describe(), meta)


def dead_letter_check(count: int | None) -> CheckOutcome:
    name = "dead_letters"
    if not count:
        return CheckOutcome(name, True, "ERROR", "no pending dead letters", {"pending": 0})
    return CheckOutcome(
        name,
        False,
        "ERROR",
        f"{count} pending dead letters (see `cartridge warp dead-letters`)",
        {"pending": count},
    )


def null_ratio_check(profile: TableProfile | None, max_ratio: float | None) -> CheckOutcome:
    name = "null_ratio"
    if max_ratio is None:
        return CheckOutcome(name, True, "WARN", "no null-ratio rule configured")
    if profile is None:
        return CheckOutcome(name, True, "WARN", "nothing profiled yet")
    worst: dict[str, float] = {}
    for col in profile.columns:
        worst[col.path] = max(worst.get(col.path, 0.0), col.null_ratio)
    over = {p: round(r, 4) for p, r in sorted(worst.items()) if r > max_ratio}
    meta: dict[str, Any] = {"max_null_ratio": max_ratio, "columns_over": over}
    if over:
        return CheckOutcome(
            name,
            False,
            "WARN",
            f"{len(over)} columns have a null ratio above {max_ratio:.0%}: "
            + ", ".join(list(over)[:5]),
            meta,
        )
    return CheckOutcome(name, True, "WARN", f"every column at most {max_ratio:.0%} null", meta)


def row_count_check(profile: TableProfile | None, max_change: float | None) -> CheckOutcome:
    name = "row_count_change"
    if max_change is None:
        return CheckOutcome(name, True, "WARN", "no row-count rule configured")
    if profile is None or profile.row_count_change is None:
        return CheckOutcome(name, True, "WARN", "no previous profile to compare with")
    change = profile.row_count_change
    meta: dict[str, Any] = {
        "rows_live": profile.rows_live,
        "rows_live_previous": profile.rows_live_previous,
        "change": round(change, 4),
        "max_change": max_change,
    }
    if abs(change) > max_change:
        return CheckOutcome(
            name,
            False,
            "WARN",
            f"live rows changed by {change:+.1%} since the last profile (limit {max_change:.0%})",
            meta,
        )
    return CheckOutcome(name, True, "WARN", f"live rows changed by {change:+.1%}", meta)


async def _columns_of(conn: asyncpg.Connection, schema: str, name: str) -> set[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = $1 AND table_name = $2",
        schema,
        name,
    )
    return {str(r["column_name"]) for r in rows}


async def dead_letter_count(conn: asyncpg.Connection, schema: str, collection: str) -> int | None:
    """Pending dead letters of one collection; None when warp's table does not exist."""
    cols = await _columns_of(conn, CONTROL_SCHEMA, "dead_letters")
    if not cols:
        return None
    where: list[str] = []
    params: list[str] = []
    for column, value in (("schema_name", schema), ("collection", collection)):
        if column in cols:
            params.append(value)
            where.append(f"{column} = ${len(params)}")
    if "resolved_at" in cols:
        where.append("resolved_at IS NULL")
    elif "status" in cols:
        where.append("status NOT IN ('resolved', 'replayed')")
    sql = f"SELECT count(*) FROM {qualified(CONTROL_SCHEMA, 'dead_letters')}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return int(await conn.fetchval(sql, *params) or 0)


async def checkpoint_age_seconds(conn: asyncpg.Connection, schema: str) -> float | None:
    """Seconds since warp last checkpointed ``schema``; None without a checkpoint."""
    cols = await _columns_of(conn, CONTROL_SCHEMA, "checkpoints")
    if not {"schema_name", "updated_at"} <= cols:
        return None
    value = await conn.fetchval(
        f"SELECT extract(epoch FROM (now() - updated_at))::float8 "
        f"FROM {qualified(CONTROL_SCHEMA, 'checkpoints')} WHERE schema_name = $1",
        schema,
    )
    return None if value is None else float(value)


def thresholds(schema: SchemaConfig, collection: str) -> tuple[float | None, float | None]:
    """(max_null_ratio, max_row_count_change) for a table: table overrides, else analytics."""
    tcfg = schema.table(collection)
    null_ratio = tcfg.max_null_ratio
    if null_ratio is None:
        null_ratio = schema.analytics.max_null_ratio
    change = tcfg.max_row_count_change
    if change is None:
        change = schema.analytics.max_row_count_change
    return null_ratio, change


def evaluate_checks(
    schema: SchemaConfig,
    collection: str,
    *,
    raw: TableProfile | None,
    reconciliation: Reconciliation | None,
    dead_letters: int | None,
    checkpoint_age: float | None,
    reconcile_error: str | None = None,
) -> list[CheckOutcome]:
    """Every check of one collection, in :data:`CHECK_NAMES` order."""
    max_null, max_change = thresholds(schema, collection)
    return [
        lag_check(raw, schema.warp.lag_threshold_seconds, checkpoint_age),
        reconciliation_check(reconciliation, reconcile_error),
        dead_letter_check(dead_letters),
        null_ratio_check(raw, max_null),
        row_count_check(raw, max_change),
    ]
