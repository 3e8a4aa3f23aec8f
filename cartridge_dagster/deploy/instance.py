"""A production ``dagster.yaml`` for running Dagster on Kubernetes without the Helm chart.

With the chart, the same settings come from the values (:mod:`cartridge_dagster.deploy.helm`)
and the chart writes the instance ConfigMap itself. Both use the same concurrency limits (the
``concurrency:`` block: the run queue and the pools), run monitoring and retries, declarative
automation, the ``postgresql+psycopg2`` scheme, and the defs state storage (the Cartridge
component's recorded collections, kept in the run storage so the code server reads what a scan
run recorded: :mod:`cartridge_dagster.deploy.defs_state`). Classes are named by public modules
only (``dagster.QueuedRunCoordinator``, ``dagster_k8s.launcher``, ``dagster_postgres.*``).

This module never imports dagster.
"""

from __future__ import annotations

from typing import Any

from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.deploy.helm import (
    DAGSTER_PG_SCHEME,
    DEFS_STATE_STORAGE,
    POOL_DEFAULT_LIMIT,
    POOL_GRANULARITY,
    tag_concurrency_limits,
)
from cartridge_dagster.deploy.k8s import (
    DeployOptions,
    container_security_context,
    dbt_project_path,
    pod_security_context,
    state_volumes,
)

__all__ = ["instance_config"]


def _postgres_storage() -> dict[str, Any]:
    return {
        "postgres_db": {
            "username": {"env": "DAGSTER_PG_USERNAME"},
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": {"env": "DAGSTER_PG_HOST"},
            "db_name": {"env": "DAGSTER_PG_DB"},
            "port": {"env": "DAGSTER_PG_PORT"},
            "scheme": DAGSTER_PG_SCHEME,
        }
    }


def instance_config(settings: CartridgeSettings, options: DeployOptions) -> dict[str, Any]:
    """The instance config; connection details come from ``DAGSTER_PG_*`` environment variables."""
    storage = _postgres_storage()
    volumes, mounts = state_volumes(options, dbt_project_path(settings.dbt.project_dir))
    return {
        "run_storage": {
            "module": "dagster_postgres.run_storage",
            "class": "PostgresRunStorage",
            "config": storage,
        },
        "event_log_storage": {
            "module": "dagster_postgres.event_log",
            "class": "PostgresEventLogStorage",
            "config": storage,
        },
        "schedule_storage": {
            "module": "dagster_postgres.schedule_storage",
            "class": "PostgresScheduleStorage",
            "config": storage,
        },
        "run_launcher": {
            "module": "dagster_k8s.launcher",
            "class": "K8sRunLauncher",
            "config": {
                "load_incluster_config": True,
                "job_namespace": options.namespace,
                "service_account_name": "dagster",
                "instance_config_map": "dagster-instance",
                "postgres_password_secret": options.dagster_pg_secret_name,
                "dagster_home": "/opt/dagster/dagster_home",
                "image_pull_policy": options.image_pull_policy,
                "env_config_maps": [options.env_config_map_name],
                "env_secrets": [options.secret_name],
                "volumes": volumes,
                "volume_mounts": mounts,
                "resources": {
                    "requests": {"cpu": "250m", "memory": "512Mi"},
                    "limits": {"cpu": "1", "memory": "2Gi"},
                },
                "security_context": container_security_context(read_only_root=False),
                "run_k8s_config": {
                    "pod_spec_config": {
                        "security_context": pod_security_context(),
                        "automount_service_account_token": False,
                    }
                },
            },
        },
        "run_coordinator": {"module": "dagster", "class": "QueuedRunCoordinator"},
        # the component's state versions, readable by every pod (not $DAGSTER_HOME's disk)
        "defs_state_storage": dict(DEFS_STATE_STORAGE),
        "concurrency": {
            "runs": {
                "max_concurrent_runs": len(settings.schemas) + options.extra_concurrent_runs,
                "tag_concurrency_limits": tag_concurrency_limits(),
            },
            "pools": {"default_limit": POOL_DEFAULT_LIMIT, "granularity": POOL_GRANULARITY},
        },
        "run_monitoring": {
            "enabled": True,
            "start_timeout_seconds": 300,
            "poll_interval_seconds": 60,
            "max_resume_run_attempts": 3,
        },
        "run_retries": {"enabled": True, "max_retries": 3},
        "sensors": {"use_threads": True, "num_workers": 4},
        "schedules": {"use_threads": True, "num_workers": 2},
        "auto_materialize": {"enabled": True, "use_sensors": True},
        "telemetry": {"enabled": False},
    }
