"""Declarative automation on the real code location: the conditions evaluated by Dagster against a
real instance, the pools, every asset check's way to run, and a load without warnings.

The code location is built the way a user gets it: a seeded demo source, scanned and generated
(``cartridge/shop/schema`` and ``cartridge/shop/dbt_models`` materialized, dbt parsed), then
``build_definitions`` — the staging models are real dagster-dbt assets from the manifest.
Materializations are logged from runs on the same instance, as warp and the runs do.
"""

import datetime as dt
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import pytest
import yaml

from cartridge_dagster.assets.init import build_init_defs, staging_key
from cartridge_dagster.assets.init.dbt import cartridge_dbt_project
from cartridge_dagster.assets.keys import (
    analytics_key,
    catalog_key,
    dbt_models_key,
    raw_key,
    schema_key,
)
from cartridge_dagster.definitions import build_definitions
from cartridge_dagster.resources import CartridgeResource, MongoResource, PostgresResource
from cartridge_dagster.resources.dbt import build_dbt_resource
from cartridge_dagster.sensors.automation import (
    ANALYTICS_POOL,
    AUTOMATION_SENSOR,
    DBT_POOL,
    INIT_POOL,
    interval_cron,
)
from tests.support.init_env import InitEnv, make_env
from tests.support.services import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

COLLECTIONS = ["customers", "events", "orders", "products"]
#: 10:00:10 UTC: the demo's 120 s interval ticks at 10:00, 10:02, 10:04…
T0 = dt.datetime(2026, 1, 5, 10, 0, 10, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, pg_server_url: str) -> Iterator[InitEnv]:
    """Seeded source, schema scanned and models generated (dbt parsed): the demo after
    `cartridge scan` + `cartridge generate`, with the demo's refresh interval (120 s)."""
    root = tmp_path_factory.mktemp("automation")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_server_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    pg_url = f"{pg_server_url.rpartition('/')[0]}/{name}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAGSTER_WEBSERVER_URL", "http://127.0.0.1:9")  # no webserver: reload skips
        env = make_env(
            root,
            f"mongoeco://{root / 'source.sqlite'}",
            pg_url,
            extra={"defaults": {"analytics": {"refresh_min_interval_seconds": 120}}},
        )
        path = str(env.config)
        resources = {
            "cartridge": CartridgeResource(config_path=path),
            "mongo": MongoResource(config_path=path),
            "postgres": PostgresResource(config_path=path),
            "dbt": build_dbt_resource(path),
        }
        init = build_init_defs(env.settings())
        generate = [a for a in init.assets or [] if isinstance(a, dg.AssetsDefinition)]
        assert dg.materialize(generate, resources=resources).success
        cartridge_dbt_project.cache_clear()  # the manifest now names the generated models
        yield env
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def _staging(defs: dg.Definitions) -> set[dg.AssetKey]:
    repo = defs.get_repository_def()
    return {k for k in repo.asset_graph.get_all_asset_keys() if k.path[:2] == ["staging", "shop"]}


class Ticks:
    """Evaluations of every automation condition, one after another (the sensor's ticks)."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance) -> None:
        self.defs = defs
        self.instance = instance
        self.cursor: Any = None
        # what the sensor evaluates: its target, not every asset of the definitions
        sensor = defs.get_repository_def().get_sensor_def(AUTOMATION_SENSOR)
        assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
        self.selection = sensor.asset_selection

    def __call__(self, seconds: float) -> set[str]:
        result = dg.evaluate_automation_conditions(
            defs=self.defs,
            instance=self.instance,
            asset_selection=self.selection,
            cursor=self.cursor,
            evaluation_time=T0 + dt.timedelta(seconds=seconds),
        )
        self.cursor = result.cursor
        return {r.key.to_user_string() for r in result.results if r.true_subset.size}


def _log(instance: dg.DagsterInstance, *keys: dg.AssetKey, data_version: str | None = None) -> None:
    """Materializations logged from a run, as warp logs its raw tables."""

    @dg.op
    def emit(context: dg.OpExecutionContext) -> None:
        for key in keys:
            tags = {"dagster/data_version": data_version} if data_version else None
            context.log_event(dg.AssetMaterialization(key, tags=tags))

    @dg.job(name=f"emit_{uuid.uuid4().hex[:6]}")
    def emitter() -> None:
        emit()

    assert emitter.execute_in_process(instance=instance).success


def test_conditions_move_data_along_at_most_once_per_interval(env: InitEnv) -> None:
    defs = build_definitions(str(env.config))
    staging = {k.to_user_string() for k in _staging(defs)}
    assert {"staging/shop/stg_shop__orders", "staging/shop/stg_shop__orders__items"} <= staging
    analytics = {analytics_key("shop", c).to_user_string() for c in COLLECTIONS}
    raw_checks = {
        f"raw/shop/{c}:{name}"
        for c in COLLECTIONS
        for name in ("lag_under_threshold", "no_dead_letters")
    }
    models = dbt_models_key("shop").to_user_string()
    raw = [raw_key("shop", c) for c in COLLECTIONS]
    with dg.instance_for_test() as instance:
        tick = Ticks(defs, instance)
        # nothing landed yet: nothing to build (staging models wait for their raw tables)
        assert tick(0) == set()
        # warp lands the four tables: one evaluation asks for the staging models, the summaries
        # and the raw-table checks, not for a regeneration
        _log(instance, *raw)
        first = tick(30)
        assert staging | analytics | raw_checks <= first
        assert models not in first
        # more rows within the minimum interval (120 s, ticks at 10:00 and 10:02): nothing
        _log(instance, *raw)
        assert tick(60) == set()
        assert tick(100) == set()
        # the next tick of the interval: the rows that landed meanwhile are built
        assert staging | analytics | raw_checks <= tick(125)

        # an update run in progress (however launched): its assets and their readers wait
        update = defs.resolve_job_def("update_shop")
        run = instance.create_run_for_job(
            update,
            asset_selection=frozenset(
                _staging(defs) | {analytics_key("shop", c) for c in COLLECTIONS}
            ),
            status=dg.DagsterRunStatus.STARTED,
        )
        _log(instance, *raw)
        busy = tick(250)
        assert not (busy & (staging | analytics)), busy
        instance.delete_run(run.run_id)
        assert staging | analytics <= tick(260)

        # a new schema version: regeneration alone; the models follow in a run of their own,
        # from the reloaded definitions, once the generation's materialization is recorded
        _log(instance, *raw)
        _log(instance, schema_key("shop"), data_version="2")
        regen = tick(370)
        assert models in regen and not (regen & staging), regen
        _log(instance, dbt_models_key("shop"))
        assert staging <= tick(490)
        # a re-scan without a new version (same data version): no regeneration
        _log(instance, schema_key("shop"), data_version="2")
        assert models not in tick(610)


def test_every_check_has_a_way_to_run_and_writers_have_pools(env: InitEnv) -> None:
    defs = build_definitions(str(env.config))
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    in_jobs = {
        key
        for job in repo.get_all_jobs()
        if job.asset_layer is not None
        for key in job.asset_layer.asset_graph.asset_check_keys
        if job.asset_layer.asset_graph.get(key) is not None
    }
    checks = set(graph.asset_check_keys)
    raw_checks = {k for k in checks if k.asset_key.path[0] == "raw"}
    assert len(raw_checks) == 2 * len(COLLECTIONS)  # lag and dead letters per raw table
    assert len({k for k in checks if k.asset_key.path[0] == "analytics"}) == 5 * len(COLLECTIONS)
    uncovered = [
        k.to_user_string()
        for k in checks
        if graph.get(k).automation_condition is None and k not in in_jobs
    ]
    assert uncovered == []
    assert all(graph.get(k).automation_condition is not None for k in raw_checks)

    # one automation sensor (plus warp's supervisor); the old sensors and schedule are gone
    assert {s.name for s in repo.sensor_defs} == {AUTOMATION_SENSOR, "warp_shop_supervisor"}
    assert list(repo.schedule_defs) == []
    sensor = repo.get_sensor_def(AUTOMATION_SENSOR)
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    for name in ("update_shop", "profile_shop", "rebuild_models_shop", "refresh_shop"):
        assert repo.has_job(name)  # kept for manual use
    update = repo.get_job("update_shop").asset_layer.executable_asset_keys
    assert update == _staging(defs) | {analytics_key("shop", c) for c in COLLECTIONS}

    # every asset that writes is in its pool; the automated ones have a condition
    pools = {
        catalog_key("shop"): INIT_POOL,
        schema_key("shop"): INIT_POOL,
        dbt_models_key("shop"): DBT_POOL,
        staging_key("shop", "stg_shop__orders"): DBT_POOL,
        **{analytics_key("shop", c): ANALYTICS_POOL for c in COLLECTIONS},
    }
    for key, pool in pools.items():
        assert defs.get_assets_def(key).op.pool == pool, key
    for key in [
        dbt_models_key("shop"),
        *_staging(defs),
        *(analytics_key("shop", c) for c in COLLECTIONS),
    ]:
        assert graph.get(key).automation_condition is not None, key
    assert graph.get(catalog_key("shop")).automation_condition is None  # scans are on demand


def test_definitions_load_without_warnings_from_project_code(env: InitEnv) -> None:
    """No deprecation, superseded, beta or preview warning comes from Cartridge's code."""
    cartridge_dbt_project.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        defs = build_definitions(str(env.config))
        repo = defs.get_repository_def()
        repo.asset_graph.get_all_asset_keys()
        for job in repo.get_all_jobs():
            job.asset_layer.asset_graph.get_all_asset_keys()
    package = str(REPO / "cartridge_dagster")
    ours = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if os.path.abspath(w.filename).startswith(package)
    ]
    assert ours == []
    # nor from Dagster about how Cartridge calls it (beta parameters, superseded APIs)
    dagster_kinds = (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning, DeprecationWarning)
    from_dagster = [
        f"{w.category.__name__}: {w.message}"
        for w in caught
        if issubclass(w.category, dagster_kinds) and f"{os.sep}dagster" in w.filename
    ]
    assert from_dagster == []


def test_local_instance_config_loads_with_pools_and_public_classes(tmp_path: Path) -> None:
    """The repo's dagster.yaml, as `make demo` installs it: the run queue and pools from the
    `concurrency:` block, the public QueuedRunCoordinator, automation by sensors."""
    config = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    assert config["run_coordinator"]["module"] == "dagster"
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
            assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
            concurrency = instance.get_concurrency_config()
            assert concurrency.pool_config.default_pool_limit == 1
            assert concurrency.pool_config.pool_granularity is not None
            assert concurrency.pool_config.pool_granularity.value == "run"
            queue = concurrency.run_queue_config
            assert queue is not None and queue.max_concurrent_runs == 6
            assert [lim["key"] for lim in queue.tag_concurrency_limits] == ["cartridge/warp_schema"]
            assert instance.auto_materialize_enabled and instance.auto_materialize_use_sensors
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize(
    ("seconds", "cron"),
    [
        (1, "* * * * *"),
        (60, "* * * * *"),
        (61, "*/2 * * * *"),
        (120, "*/2 * * * *"),
        (420, "*/10 * * * *"),
        (1800, "*/30 * * * *"),
        (3600, "0 * * * *"),
        (5 * 3600, "0 */6 * * *"),
        (2 * 86400, "0 0 * * *"),
    ],
)
def test_interval_rounds_up_to_a_cron_step(seconds: int, cron: str) -> None:
    assert interval_cron(seconds) == cron
