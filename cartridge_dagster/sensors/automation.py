"""Automation that moves data along the graph by itself, per schema ``S``.

Jobs for the common intents:

- ``profile_<S>``: the ``analytics/<S>/*`` summaries and checks, now.
- ``update_<S>``: the staging models of ``S`` (dbt build, with their tests) and then the
  summaries.
- ``rebuild_models_<S>``: regenerate the dbt files (``cartridge/<S>/dbt_models``: generate,
  parse, reload the code location).
- ``refresh_<S>``: re-scan the source and regenerate: catalog → schema → generated models; the
  ``<S>_models_generated`` sensor then runs ``update_<S>`` (models and summaries).

Models are built in a run of their own after generation on purpose: a run executes the asset
definitions loaded when it started, so dbt models generated inside the same run would not match
the manifest those definitions were built from; the next run sees the reloaded code location.

Triggers (every one visible, with its reason, in the UI's sensor and schedule pages):

- sensor ``<S>_raw_changes`` (a multi-asset sensor on ``raw/<S>/*``): warp's raw-table
  materializations start ``update_<S>``, at most once per ``analytics.refresh_min_interval_seconds``
  and never while the previous update is still queued or running (the changes wait, nothing is
  lost: the cursor only moves when a run is requested);
- sensor ``<S>_schema_changes`` (an asset sensor on ``cartridge/<S>/schema``): a new schema
  version starts ``rebuild_models_<S>``;
- sensor ``<S>_models_generated`` (an asset sensor on ``cartridge/<S>/dbt_models``): changed
  model files, or a ``refresh_<S>`` run, start ``update_<S>``;
- schedule ``<S>_full_profile``: ``profile_<S>`` on ``analytics.profile_cron``.

Selections are Dagster selection strings, so the jobs resolve whether or not the init and warp
parts of the graph are loaded.
"""

from typing import Any

import dagster as dg

from cartridge_dagster.assets.keys import dbt_models_key, key_selection, raw_key, schema_key
from cartridge_dagster.config import CartridgeSettings, SchemaConfig
from cartridge_dagster.state import known_collections

#: What ``define_asset_job`` returns (its class is not exported by dagster's public API).
AssetJob = Any

__all__ = [
    "ACTIVE_STATUSES",
    "build_automation_defs",
    "job_names",
    "models_generated_sensor",
    "raw_changes_sensor",
    "schema_changes_sensor",
    "selections",
]

ACTIVE_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def job_names(schema: str) -> dict[str, str]:
    return {
        "profile": f"profile_{schema}",
        "update": f"update_{schema}",
        "rebuild_models": f"rebuild_models_{schema}",
        "refresh": f"refresh_{schema}",
    }


def selections(schema: str) -> dict[str, str]:
    """Selection strings per intent (``S`` is ``[a-z0-9_]``: safe inside quotes)."""
    analytics = key_selection("analytics", schema, "*")
    raw = key_selection("raw", schema, "*")
    control = " or ".join(
        key_selection("cartridge", schema, name) for name in ("catalog", "schema", "dbt_models")
    )
    return {
        "profile": analytics,
        # the summaries and what they read one layer up: the staging models (not raw: warp's)
        "update": f"((1+{analytics}) and not {raw})",
        "rebuild_models": key_selection("cartridge", schema, "dbt_models"),
        "refresh": control,
    }


def _jobs(schema: SchemaConfig) -> dict[str, AssetJob]:
    names = job_names(schema.name)
    sel = selections(schema.name)
    descriptions = {
        "profile": "Profile, reconcile and check every collection now.",
        "update": "Build the staging models (dbt), then the summaries and checks.",
        "rebuild_models": "Regenerate the dbt files from the latest schema (then update runs).",
        "refresh": "Re-scan and regenerate: catalog, schema, dbt files (then update runs).",
    }
    return {
        intent: dg.define_asset_job(
            names[intent],
            selection=sel[intent],
            description=f"`{schema.name}`: {descriptions[intent]}",
            tags={"cartridge/schema": schema.name, "cartridge/intent": intent},
        )
        for intent in names
    }


def raw_changes_sensor(
    schema: str,
    raw_keys: list[dg.AssetKey],
    job: AssetJob,
    minimum_interval_seconds: int,
) -> dg.MultiAssetSensorDefinition:
    @dg.multi_asset_sensor(
        name=f"{schema}_raw_changes",
        monitored_assets=raw_keys,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"New rows landed in raw/{schema}/* start {job.name} (dbt models, then summaries), "
            f"at most every {minimum_interval_seconds}s and never while one is in progress."
        ),
    )
    def raw_changes(context: dg.MultiAssetSensorEvaluationContext) -> Any:
        records = context.latest_materialization_records_by_key()
        changed = sorted(k.to_user_string() for k, r in records.items() if r is not None)
        if not changed:
            return dg.SkipReason(f"no new materializations of raw/{schema}/*")
        active = context.instance.get_runs(
            filters=dg.RunsFilter(job_name=job.name, statuses=ACTIVE_STATUSES), limit=1
        )
        if active:
            return dg.SkipReason(
                f"{len(changed)} tables changed, but {job.name} run {active[0].run_id} is still "
                "in progress; they wait for the next tick"
            )
        last = max(r.storage_id for r in records.values() if r is not None)
        context.advance_all_cursors()  # type: ignore[no-untyped-call]
        return dg.RunRequest(
            job_name=job.name,
            run_key=f"{schema}-raw-{last}",
            tags={
                "cartridge/trigger": "raw_changes",
                "cartridge/changed_tables": ",".join(changed)[:250],
            },
        )

    return raw_changes


def _metadata_value(meta: Any, key: str) -> Any:
    value = meta.get(key) if meta else None
    return getattr(value, "value", value)


def schema_changes_sensor(schema: str, job: AssetJob) -> dg.SensorDefinition:
    @dg.asset_sensor(
        name=f"{schema}_schema_changes",
        asset_key=schema_key(schema),
        job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"A new version of cartridge/{schema}/schema starts {job.name}.",
    )
    def schema_changes(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry) -> Any:
        mat = asset_event.asset_materialization
        meta = mat.metadata if mat is not None else {}
        status = _metadata_value(meta, "status")
        version = _metadata_value(meta, "version")
        if status == "unchanged":
            return dg.SkipReason(f"schema {schema} re-scanned: no new version")
        if status == "pending":
            return dg.SkipReason(
                f"schema {schema} version {version} waits for approval (evolution.policy approve)"
            )
        ident = version if version is not None else int(asset_event.timestamp)
        return dg.RunRequest(
            job_name=job.name,
            run_key=f"{schema}-schema-{ident}",
            tags={"cartridge/trigger": "schema_changes", "cartridge/schema_version": str(ident)},
        )

    return schema_changes


def models_generated_sensor(
    schema: str, job: AssetJob, refresh_job_name: str
) -> dg.SensorDefinition:
    @dg.asset_sensor(
        name=f"{schema}_models_generated",
        asset_key=dbt_models_key(schema),
        job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            f"Changed dbt files for {schema} (or a {refresh_job_name} run) start {job.name}, in "
            "a run of its own so it uses the reloaded models."
        ),
    )
    def models_generated(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry) -> Any:
        mat = asset_event.asset_materialization
        meta = mat.metadata if mat is not None else {}
        changed = _metadata_value(meta, "files_changed") or 0
        run = context.instance.get_run_by_id(asset_event.run_id) if asset_event.run_id else None
        from_refresh = run is not None and run.job_name == refresh_job_name
        if not changed and not from_refresh:
            return dg.SkipReason(f"dbt files of {schema} regenerated without changes")
        reason = f"{changed} files changed" if changed else f"after {refresh_job_name}"
        return dg.RunRequest(
            job_name=job.name,
            run_key=f"{schema}-models-{asset_event.run_id}-{int(asset_event.timestamp * 1000)}",
            tags={"cartridge/trigger": "models_generated", "cartridge/reason": reason},
        )

    return models_generated


def build_automation_defs(settings: CartridgeSettings) -> dg.Definitions:
    jobs: list[Any] = []
    sensors: list[Any] = []
    schedules: list[Any] = []
    for schema in settings.schemas:
        by_intent = _jobs(schema)
        collections = known_collections(settings, schema.name)
        jobs.append(by_intent["refresh"])
        jobs.append(by_intent["rebuild_models"])
        sensors.append(schema_changes_sensor(schema.name, by_intent["rebuild_models"]))
        if not collections:
            continue  # no analytics assets yet: nothing to profile or update
        jobs += [by_intent["profile"], by_intent["update"]]
        sensors.append(
            models_generated_sensor(schema.name, by_intent["update"], by_intent["refresh"].name)
        )
        sensors.append(
            raw_changes_sensor(
                schema.name,
                [raw_key(schema.name, c) for c in collections],
                by_intent["update"],
                schema.analytics.refresh_min_interval_seconds,
            )
        )
        schedules.append(
            dg.ScheduleDefinition(
                name=f"{schema.name}_full_profile",
                job=by_intent["profile"],
                cron_schedule=schema.analytics.profile_cron,
                execution_timezone="UTC",
                default_status=dg.DefaultScheduleStatus.RUNNING,
                description=f"Full profile of schema {schema.name} on a schedule.",
            )
        )
    return dg.Definitions(jobs=jobs, sensors=sensors, schedules=schedules)
