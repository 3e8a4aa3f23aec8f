"""Automation that moves data along the graph by itself: declarative automation conditions on
the assets, one sensor evaluating them, pools so runs never overlap; jobs for manual use.

Conditions, per schema ``S`` (each visible with its reasons on the asset's *Automation* tab):

- ``cartridge/<S>/dbt_models`` (:func:`generation_condition`): a new schema version — the
  ``cartridge/<S>/schema`` materialization carries the version number as its data version, so a
  re-scan that found nothing new, or a change waiting for approval, starts nothing — regenerates
  the dbt files (generate, parse, reload the code location);
- the generated staging models ``staging/<S>/*`` (:func:`staging_condition`): new rows landed by
  warp in ``raw/<S>/*``, regenerated model files, or a model never built yet, rebuild them (dbt
  build, with their tests);
- ``analytics/<S>/*`` (:func:`analytics_condition`): their raw tables or staging models changed,
  or the ``analytics.profile_cron`` tick passed (the full profile), profile them again, with
  their five checks;
- the raw-table checks of ``warp_<S>_checks`` (:func:`raw_check_condition`): lag and dead
  letters (and the replication slot of a PostgreSQL source), on the same triggers.

Every one of them waits while the asset, or anything it reads, is in progress, and is requested
at most once per ``analytics.refresh_min_interval_seconds`` (:func:`refresh_gate`). Requests of
one evaluation go into one run: raw changes give one run with the staging models, then the
summaries and checks. The sensor ``cartridge_automation`` evaluates the conditions every 30 s in
the daemon (only built-in conditions: no user code runs per tick).

Models are built in a run of their own after generation, on purpose: a run executes the asset
definitions loaded when it started, so dbt models generated inside the same run would not match
the manifest those definitions were built from. So the staging models are never requested in the
evaluation that requests ``dbt_models``, nor while it runs; its materialization is recorded after
the code location has reloaded, and the next evaluation requests the staging models from the
reloaded definitions (new models are built because they are missing).

Overlap: every asset that writes is in a pool (:data:`POOLS`: one dbt project, the analytics
tables and reports, the schema state), the instance limits each pool to one run at a time
(``concurrency.pools`` with ``default_limit: 1`` and ``granularity: run`` in dagster.yaml and the
production instance), so the automation sensor, the jobs and manual launches queue behind each
other instead of running the same assets twice at once.

Jobs for the common intents (manual launches; the automation does not use them):

- ``profile_<S>``: the ``analytics/<S>/*`` summaries and checks, now.
- ``update_<S>``: the staging models of ``S`` (dbt build, with their tests) and then the
  summaries.
- ``rebuild_models_<S>``: regenerate the dbt files (``cartridge/<S>/dbt_models``).
- ``refresh_<S>``: re-scan the source and regenerate: catalog → schema → generated models (the
  staging models then follow in a run of their own, by the conditions above).

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

AC = dg.AutomationCondition
#: A condition that applies to assets and checks alike.
AnyCondition = dg.AutomationCondition[dg.AssetKey | dg.AssetCheckKey]

__all__ = [
    "ANALYTICS_POOL",
    "AUTOMATION_SENSOR",
    "DBT_POOL",
    "INIT_POOL",
    "POOLS",
    "analytics_condition",
    "automation_sensor",
    "build_automation_defs",
    "generation_condition",
    "interval_cron",
    "job_names",
    "raw_check_condition",
    "refresh_gate",
    "selections",
    "staging_condition",
]

#: The one dbt project: every dbt build and every generation (which writes model files and
#: parses the project) — one at a time.
DBT_POOL = "cartridge_dbt"
#: The analytics tables in ``cartridge_analytics`` and the HTML reports (one index for all).
ANALYTICS_POOL = "cartridge_analytics"
#: The source catalogs and the versioned schema state under ``state_dir``.
INIT_POOL = "cartridge_init"
POOLS = (DBT_POOL, ANALYTICS_POOL, INIT_POOL)

AUTOMATION_SENSOR = "cartridge_automation"


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
    control = " or ".join(
        key_selection("cartridge", schema, name) for name in ("catalog", "schema", "dbt_models")
    )
    return {
        "profile": analytics,
        # the summaries and what they read one layer up, the staging models (dbt; not raw:
        # warp's). No `not` in selections: Dagster resolves it with a beta parameter and warns.
        "update": f'{analytics} or ((1+{analytics}) and kind:"dbt")',
        "rebuild_models": key_selection("cartridge", schema, "dbt_models"),
        "refresh": control,
    }


# --------------------------------------------------------------------------- conditions


def interval_cron(seconds: int) -> str:
    """The cron schedule whose ticks pace requests: ``seconds`` rounded up to a step of whole
    minutes that divides the hour (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30), or of whole hours that
    divides the day (1, 2, 3, 4, 6, 8, 12), or once a day."""
    minutes = max(1, -(-int(seconds) // 60))
    for step in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30):
        if minutes <= step:
            return "* * * * *" if step == 1 else f"*/{step} * * * *"
    hours = -(-minutes // 60)
    for step in (1, 2, 3, 4, 6, 8, 12):
        if hours <= step:
            return "0 * * * *" if step == 1 else f"0 */{step} * * *"
    return "0 0 * * *"


def refresh_gate(cron: str) -> dg.AutomationCondition:
    """True unless the target was requested since the last tick of ``cron``: at most one request
    per tick interval (the minimum interval), open from the first evaluation on."""
    return (~AC.newly_requested().since(AC.cron_tick_passed(cron, "UTC"))).with_label(
        f"not requested since the last tick of {cron!r}"
    )


def _gate(schema: SchemaConfig) -> dg.AutomationCondition:
    return refresh_gate(interval_cron(schema.analytics.refresh_min_interval_seconds))


def _never_built() -> dg.AutomationCondition:
    """Missing, and its last attempt did not fail (a failure waits for new data)."""
    return (AC.missing() & ~AC.execution_failed()).with_label("never built")


def _idle() -> dg.AutomationCondition:
    return (~AC.in_progress() & ~AC.any_deps_in_progress()).with_label(
        "neither it nor what it reads is in progress"
    )


def _raw(keys: list[dg.AssetKey]) -> dg.AssetSelection:
    # by key: key prefixes leave out external assets such as warp's raw tables
    return dg.AssetSelection.assets(*keys)


def generation_condition(schema: SchemaConfig) -> dg.AutomationCondition:
    """``cartridge/<S>/dbt_models``: a new schema version (data version), not already
    regenerated in the run that recorded it."""
    new_version = (
        AC.any_deps_match(AC.data_version_changed() & ~AC.executed_with_root_target())
        .allow(dg.AssetSelection.assets(schema_key(schema.name)))
        .with_label("new schema version")
    )
    return (new_version.since_last_handled() & _idle()).with_label(
        f"regenerate {schema.name}'s dbt files on a new schema version"
    )


def staging_condition(schema: SchemaConfig) -> dg.AutomationCondition:
    """A generated staging model of ``schema``: raw rows landed (or a parent model is built in
    the same run), its files were regenerated, or it was never built."""
    generated = dg.AssetSelection.assets(dbt_models_key(schema.name))
    changed = (
        AC.any_deps_updated().ignore(generated)
        | AC.any_deps_match(AC.newly_updated()).allow(generated).with_label("files regenerated")
    ).with_label("raw rows landed or files regenerated")
    return (
        (changed.since_last_handled() | _never_built())
        & ~AC.any_deps_missing().ignore(generated)
        # generation first, in a run of its own (see the module docstring)
        & ~AC.any_deps_match(AC.will_be_requested())
        .allow(generated)
        .with_label("its files are regenerated now")
        & _idle()
        & _gate(schema)
    ).with_label(f"rebuild {schema.name}'s staging models on new data")


def analytics_condition(
    schema: SchemaConfig, raw_keys: list[dg.AssetKey]
) -> dg.AutomationCondition:
    """``analytics/<S>/<C>``: its raw table or staging models changed, the full-profile cron
    tick passed, or it was never profiled; once its raw table (one of ``raw_keys``) has
    landed."""
    profile: AnyCondition = AC.cron_tick_passed(schema.analytics.profile_cron, "UTC")
    return (
        (AC.any_deps_updated().since_last_handled() | profile.since_last_handled() | _never_built())
        & ~AC.any_deps_missing().allow(_raw(raw_keys))
        & _idle()
        & _gate(schema)
    ).with_label(f"profile {schema.name} on new data and on {schema.analytics.profile_cron!r}")


def raw_check_condition(schema: SchemaConfig) -> dg.AutomationCondition:
    """A check of ``raw/<S>/<C>`` (lag, dead letters, slot): on new landings, on the full-profile
    tick, or never run yet; once the table has landed."""
    profile: AnyCondition = AC.cron_tick_passed(schema.analytics.profile_cron, "UTC")
    return (
        (AC.any_deps_updated().since_last_handled() | profile.since_last_handled() | _never_built())
        & ~AC.any_deps_missing()
        & ~AC.in_progress()
        & _gate(schema)
    ).with_label(f"check {schema.name}'s raw tables on new data")


def automation_sensor(settings: CartridgeSettings) -> dg.AutomationConditionSensorDefinition:
    """The one sensor evaluating Cartridge's conditions (its assets and their checks only, so a
    team's own automation sensor can cover the rest of its project)."""
    prefixes = [
        [layer, schema.name]
        for schema in settings.schemas
        for layer in ("cartridge", "staging", "analytics")
    ]
    # warp's raw tables are external assets (not in key-prefix selections): their checks by key
    raw = [
        raw_key(s.name, c) for s in settings.schemas for c in known_collections(settings, s.name)
    ]
    target = dg.AssetSelection.key_prefixes(*prefixes) | dg.AssetSelection.checks_for_assets(*raw)
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=target,
        default_status=dg.DefaultSensorStatus.RUNNING,
        # every 30 s: at 15 s the demo's idle CPU went from 14 % to 25 % of one core (the
        # daemon's evaluations), for ~15 s less between landed rows and their staging run
        minimum_interval_seconds=30,
        run_tags={"cartridge/trigger": "automation"},
        description=(
            "Declarative automation of Cartridge's assets: new schema versions regenerate the "
            "dbt files, landed rows rebuild the staging models, summaries and checks, at most "
            "once per analytics.refresh_min_interval_seconds and never while in progress."
        ),
    )


# --------------------------------------------------------------------------- jobs


def _jobs(schema: SchemaConfig) -> dict[str, AssetJob]:
    names = job_names(schema.name)
    sel = selections(schema.name)
    descriptions = {
        "profile": "Profile, reconcile and check every collection now.",
        "update": "Build the staging models (dbt), then the summaries and checks.",
        "rebuild_models": "Regenerate the dbt files from the latest schema (the staging models "
        "follow in a run of their own).",
        "refresh": "Re-scan and regenerate: catalog, schema, dbt files (the staging models "
        "follow in a run of their own).",
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


def build_automation_defs(settings: CartridgeSettings) -> dg.Definitions:
    """The jobs for manual use and the automation sensor (the conditions live on the assets)."""
    jobs: list[Any] = []
    for schema in settings.schemas:
        by_intent = _jobs(schema)
        jobs += [by_intent["refresh"], by_intent["rebuild_models"]]
        if known_collections(settings, schema.name):  # else no analytics assets yet
            jobs += [by_intent["profile"], by_intent["update"]]
    return dg.Definitions(jobs=jobs, sensors=[automation_sensor(settings)])
