"""The shipped production dagster.yaml, loaded by Dagster itself against a real PostgreSQL.

Proves the ``postgresql+psycopg2`` storage works end to end (runs and events are written and
read back, and the event log's LISTEN/NOTIFY watcher starts), that the run coordinator and
run monitoring are what the deployment promises, and that the K8s run launcher accepts its
config. Only the way the launcher reaches the cluster is swapped (in-cluster → a kubeconfig
file), because no cluster is reachable here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy

from cartridge_dagster.deploy.k8s import WARP_SCHEMA_TAG
from tests.support.production_instance import production_config, set_dagster_pg_env, write_home

pytestmark = pytest.mark.integration


@pytest.fixture
def dagster_home(pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    set_dagster_pg_env(monkeypatch, pg_url)
    home = write_home(tmp_path / "dagster_home", production_config(tmp_path / "kubeconfig"))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def test_production_instance_stores_runs_in_postgres_with_psycopg2(dagster_home: Path) -> None:
    import dagster as dg
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage

    @dg.asset
    def probe() -> int:
        return 1

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        result = dg.materialize([probe], instance=instance, tags={WARP_SCHEMA_TAG: "shop"})
        assert result.success
        (run,) = instance.get_runs()
        assert run.tags[WARP_SCHEMA_TAG] == "shop"
        events = instance.all_logs(run.run_id)
        assert any(e.dagster_event and e.dagster_event.is_step_success for e in events)
        assert instance.get_latest_materialization_event(dg.AssetKey("probe")) is not None
        engine_url = instance.run_storage._engine.url  # the URL Dagster actually built
        assert engine_url.drivername == "postgresql+psycopg2"

        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        # the `concurrency:` block, as the run queue daemon reads it: one warp run per schema,
        # and Cartridge's pools hold one run each
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs == 5
        assert {
            "key": WARP_SCHEMA_TAG,
            "value": {"applyLimitPerUniqueValue": True},
            "limit": 1,
        } in concurrency.run_queue_config.tag_concurrency_limits
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.pool_config.pool_granularity is not None
        assert concurrency.pool_config.pool_granularity.value == "run"
        assert instance.auto_materialize_enabled and instance.auto_materialize_use_sensors
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_resume_run_attempts == 3
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 3

        launcher = instance.run_launcher
        assert isinstance(launcher, K8sRunLauncher)
        assert launcher.supports_resume_run
        assert launcher.env_secrets == ["cartridge-secrets"]
        assert launcher.env_config_maps == ["cartridge-env"]
        assert launcher.job_namespace == "dagster"


def test_the_plain_postgresql_scheme_is_the_sqlalchemy_2_1_trap(pg_url: str) -> None:
    """Why the scheme is explicit: SQLAlchemy 2.1 maps postgresql:// to psycopg 3."""
    assert sqlalchemy.__version__.startswith("2.")
    plain = sqlalchemy.engine.make_url(pg_url).set(drivername="postgresql")
    explicit = plain.set(drivername="postgresql+psycopg2")
    assert sqlalchemy.create_engine(explicit).dialect.driver == "psycopg2"
    if tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2]) >= (2, 1):
        try:
            dialect = sqlalchemy.create_engine(plain).dialect.driver
        except ModuleNotFoundError:
            dialect = "psycopg (not installed)"
        assert dialect != "psycopg2"
