"""Values for Dagster's official Helm chart (``dagster/dagster``, user code as its subchart).

The keys follow the chart's values schema (``helm/dagster/schema`` in dagster-io/dagster):
``dagsterWebserver``, ``dagsterDaemon`` (run coordinator, run monitoring, run retries),
``runLauncher`` (``K8sRunLauncher``), ``postgresql`` (Dagster's metadata database, external,
with ``postgresqlScheme: postgresql+psycopg2``), and ``dagster-user-deployments`` for the
Cartridge code location.

What each part is for:

- the user-code deployment serves ``cartridge_dagster.definitions`` over gRPC; with
  ``includeConfigInLaunchedRuns`` its env (Secret, ConfigMap), volumes and resources are copied
  into every run pod it launches, so runs see the same config as the code server;
- the warp runs add their own pod spec through the ``dagster-k8s/config`` run tag (see
  :func:`cartridge_dagster.deploy.k8s.warp_run_k8s_config`); the chart's ``concurrency`` block
  (the instance's ``concurrency:``) allows one run per value of ``cartridge/warp_schema`` and one
  run at a time in each of Cartridge's pools (dbt, analytics, init: ``pools.default_limit: 1``
  with ``granularity: run``), so automation, jobs and manual launches never overlap;
- ``defsStateStorage`` keeps the Cartridge component's state versions (the collections each
  scan run records) in Dagster's run storage, so the code server pod reads what a run pod
  recorded (:mod:`cartridge_dagster.deploy.defs_state`; the default is each pod's own disk);
  every pod that loads the instance imports that class, so the webserver and daemon run the
  Cartridge image too (it has ``dagster-webserver``);
- run monitoring resumes a run whose pod died (the K8s launcher supports resume), and run retries
  re-launch a failed run.

This module never imports dagster.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.deploy.k8s import (
    WARP_SCHEMA_TAG,
    DeployOptions,
    container_security_context,
    dbt_project_path,
    pod_security_context,
    state_volumes,
)

__all__ = [
    "DAGSTER_PG_SCHEME",
    "DEFS_STATE_STORAGE",
    "POOL_DEFAULT_LIMIT",
    "POOL_GRANULARITY",
    "chart_version",
    "helm_values",
    "tag_concurrency_limits",
]

#: SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3, which breaks dagster-postgres'
#: LISTEN/NOTIFY; the explicit driver keeps psycopg2.
DAGSTER_PG_SCHEME = "postgresql+psycopg2"
#: Every pool Cartridge's assets use (``cartridge_dbt``, ``cartridge_analytics``,
#: ``cartridge_init``) admits one run at a time; a queued run waits until its pools are free.
POOL_DEFAULT_LIMIT = 1
POOL_GRANULARITY = "run"
#: The instance's ``defs_state_storage``: state blobs in the run storage's key-value table,
#: which every pod of a deployment reaches (no bucket needed).
DEFS_STATE_STORAGE = {
    "module": "cartridge_dagster.deploy.defs_state",
    "class": "RunStorageDefsStateStorage",
}


def chart_version() -> str:
    """The chart version to install: the chart is released with Dagster, same version number."""
    try:
        return version("dagster")
    except PackageNotFoundError:  # pragma: no cover - dagster is a dependency
        return "1.13.27"


def _resources(cpu: str, memory: str, cpu_limit: str, memory_limit: str) -> dict[str, Any]:
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory_limit},
    }


def tag_concurrency_limits() -> list[dict[str, Any]]:
    """Exactly one run per warp schema (as in the local dagster.yaml); the dbt, analytics and
    init assets are kept apart by their pools."""
    return [
        {"key": WARP_SCHEMA_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1},
    ]


def _image(options: DeployOptions) -> dict[str, str]:
    return {
        "repository": options.image_repository,
        "tag": options.image_tag,
        "pullPolicy": options.image_pull_policy,
    }


def _user_deployment(settings: CartridgeSettings, options: DeployOptions) -> dict[str, Any]:
    volumes, mounts = state_volumes(options, dbt_project_path(settings.dbt.project_dir))
    return {
        "name": options.location_name,
        "image": _image(options),
        # `dagster code-server start` (not `api grpc`): a reload from the UI re-imports the
        # definitions, so newly generated dbt models appear without a restart.
        "codeServerArgs": ["--module-name", "cartridge_dagster.definitions"],
        "port": options.grpc_port,
        "replicaCount": 1,
        # Run pods get this deployment's env, Secret, ConfigMap, volumes and resources.
        "includeConfigInLaunchedRuns": {"enabled": True},
        # Shared env (config path, metrics bind address…) and the connection strings.
        "envConfigMaps": [{"name": options.env_config_map_name}],
        "envSecrets": [{"name": options.secret_name}],
        "volumes": volumes,
        "volumeMounts": mounts,
        # Sizes the code server, and every run pod that has no resources of its own (dbt,
        # analytics); warp runs bring their schema's k8s_resources in their run tag.
        "resources": _resources("250m", "512Mi", "1", "2Gi"),
        "podSecurityContext": pod_security_context(),
        "securityContext": container_security_context(read_only_root=False),
        "labels": {"app.kubernetes.io/part-of": "cartridge", **options.labels},
        # gRPC health (the chart's default exec probe: `dagster api grpc-health-check`).
        "readinessProbe": {
            "enabled": True,
            "periodSeconds": 20,
            "timeoutSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "periodSeconds": 30,
            "timeoutSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "startupProbe": {
            "enabled": True,
            "periodSeconds": 10,
            "timeoutSeconds": 10,
            "successThreshold": 1,
            "failureThreshold": 30,
        },
    }


def helm_values(settings: CartridgeSettings, options: DeployOptions) -> dict[str, Any]:
    """Complete values for ``helm upgrade --install dagster dagster/dagster -f values.yaml``."""
    warp_runs = len(settings.schemas)
    pod_sc = pod_security_context()
    container_sc = container_security_context(read_only_root=False)
    return {
        "global": {"postgresqlSecretName": options.dagster_pg_secret_name},
        "dagsterWebserver": {
            "replicaCount": 1,
            # The Cartridge image (it has dagster-webserver): every pod loading the instance
            # imports its defs_state_storage class, which Dagster's own image lacks.
            "image": _image(options),
            "resources": _resources("250m", "512Mi", "1", "1Gi"),
            # The chart's check-db-ready init container waits for the metadata database.
            "initContainerResources": _resources("50m", "64Mi", "100m", "128Mi"),
            "podSecurityContext": pod_sc,
            "securityContext": container_sc,
            "env": {"DAGSTER_DISABLE_TELEMETRY": "1"},
        },
        "dagster-user-deployments": {
            "enabled": True,
            "enableSubchart": True,
            "deployments": [_user_deployment(settings, options)],
        },
        "runLauncher": {
            "type": "K8sRunLauncher",
            "config": {
                "k8sRunLauncher": {
                    "imagePullPolicy": options.image_pull_policy,
                    "loadInclusterConfig": True,
                    "envConfigMaps": [],
                    "envSecrets": [],
                    "envVars": [],
                    "volumeMounts": [],
                    "volumes": [],
                    "labels": {"app.kubernetes.io/part-of": "cartridge"},
                    # Run pods launched without a code-location context still get limits.
                    "resources": _resources("250m", "512Mi", "1", "2Gi"),
                    "securityContext": container_sc,
                    "runK8sConfig": {
                        "podSpecConfig": {
                            "securityContext": pod_sc,
                            "automountServiceAccountToken": False,
                        },
                    },
                }
            },
        },
        "postgresql": {
            # Dagster's metadata database (runs, events, schedules): bring your own.
            "enabled": False,
            "postgresqlHost": options.dagster_pg_host,
            "postgresqlUsername": options.dagster_pg_user,
            "postgresqlDatabase": options.dagster_pg_database,
            "postgresqlScheme": DAGSTER_PG_SCHEME,
            "postgresqlParams": {},
            "service": {"port": options.dagster_pg_port},
        },
        # The password comes from the Secret named in global.postgresqlSecretName.
        "generatePostgresqlPasswordSecret": False,
        "dagsterDaemon": {
            "enabled": True,
            "image": _image(options),  # the instance's defs_state_storage class is in it
            "resources": _resources("250m", "512Mi", "1", "1Gi"),
            # The chart's check-db-ready init container waits for the metadata database.
            "initContainerResources": _resources("50m", "64Mi", "100m", "128Mi"),
            "podSecurityContext": pod_sc,
            "securityContext": container_sc,
            # The limits are in the top-level `concurrency` block (the chart refuses both).
            "runCoordinator": {
                "enabled": True,
                "type": "QueuedRunCoordinator",
                "config": {"queuedRunCoordinator": {}},
            },
            "runMonitoring": {
                "enabled": True,
                "startTimeoutSeconds": 300,
                "pollIntervalSeconds": 60,
                # A warp pod that dies (node drain, OOM) is resumed in a new pod; warp then
                # continues from its checkpoint.
                "maxResumeRunAttempts": 3,
            },
            "runRetries": {"enabled": True, "maxRetries": 3},
            "sensors": {"useThreads": True, "numWorkers": 4},
            "schedules": {"useThreads": True, "numWorkers": 2},
        },
        # The instance's `concurrency:` block: runs (the queue) and pools.
        "concurrency": {
            "enabled": True,
            "runs": {
                # Warp runs are long-lived: each holds a slot for as long as it streams.
                "maxConcurrentRuns": warp_runs + options.extra_concurrent_runs,
                "tagConcurrencyLimits": tag_concurrency_limits(),
            },
            "pools": {"defaultLimit": POOL_DEFAULT_LIMIT, "granularity": POOL_GRANULARITY},
        },
        # The component's state versions: recorded by scan runs, read by the code server.
        "defsStateStorage": {
            "type": "CustomDefsStateStorage",
            "config": {"customDefsStateStorage": dict(DEFS_STATE_STORAGE)},
        },
        "telemetry": {"enabled": False},
    }
