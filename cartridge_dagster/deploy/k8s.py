"""Kubernetes building blocks for Cartridge: names, security, probes, and the warp pod spec.

Everything here returns plain dicts in the Kubernetes API's own camelCase shape (what
``kubectl apply`` and Helm values take), except :func:`warp_run_k8s_config`, which returns the
value of the ``dagster-k8s/config`` run tag in the snake_case shape dagster-k8s documents.

One warp schema is one pod, whichever way it runs:

- inside Dagster, the long-lived run of job ``warp_<schema>`` carries :func:`warp_run_tags`; the
  K8s run launcher turns the ``dagster-k8s/config`` tag into that run's pod (resources, metrics
  port, ``/health`` probes, Prometheus annotations), and the instance's tag concurrency limit on
  ``cartridge/warp_schema`` keeps it to exactly one run per schema;
- outside Dagster, :func:`warp_deployment` is a one-replica ``Recreate`` Deployment running
  ``cartridge warp run --mode single --schema <schema>``.

This module never imports dagster.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cartridge_dagster.config import SchemaConfig
from cartridge_dagster.errors import ConfigError

__all__ = [
    "APP_GID",
    "APP_UID",
    "CONFIG_FILE",
    "CONFIG_MOUNT_DIR",
    "POD_BIND_ADDRESS",
    "STATE_DIR",
    "WARP_SCHEMA_TAG",
    "DeployOptions",
    "container_security_context",
    "dbt_project_path",
    "dns_label",
    "env_config_map",
    "pod_security_context",
    "prometheus_annotations",
    "shared_env",
    "state_pvc",
    "state_volumes",
    "warp_deployment",
    "warp_probes",
    "warp_run_k8s_config",
    "warp_run_tags",
]

#: The image's non-root user and group (the Dockerfile creates them with these ids).
APP_UID = 10001
APP_GID = 10001
#: Where the Cartridge config file is mounted from its ConfigMap.
CONFIG_MOUNT_DIR = "/etc/cartridge"
CONFIG_FILE = f"{CONFIG_MOUNT_DIR}/cartridge.yaml"
#: Cartridge's state directory inside pods: an emptyDir, or a shared volume (``state_claim``).
STATE_DIR = "/var/lib/cartridge"
#: Servers in pods listen on the pod's own network namespace (probes and scrapes come from
#: outside the container); locally Cartridge binds to 127.0.0.1.
POD_BIND_ADDRESS = "0.0.0.0"  # noqa: S104
#: The image's working directory; a relative ``dbt.project_dir`` is resolved against it.
APP_DIR = "/app"
#: The run tag the instance's concurrency limit keys on: one run per unique value.
WARP_SCHEMA_TAG = "cartridge/warp_schema"
#: The run tag dagster-k8s reads per-run Kubernetes config from.
DAGSTER_K8S_CONFIG_TAG = "dagster-k8s/config"
#: Labels put on every warp pod.
WARP_SCHEMA_LABEL = "cartridge.io/warp-schema"
PART_OF = "cartridge"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class DeployOptions:
    """What a deployment needs besides the Cartridge config (all have working defaults)."""

    image_repository: str = "cartridge-dagster"
    image_tag: str = "0.1.0"
    image_pull_policy: str = "IfNotPresent"
    namespace: str = "dagster"
    #: Secret with the Cartridge connection strings (``CARTRIDGE_*`` keys), made by the operator.
    secret_name: str = "cartridge-secrets"
    #: ConfigMap holding the Cartridge config file, rendered by ``cartridge deploy render``.
    config_map_name: str = "cartridge-config"
    #: ConfigMap with the environment every Cartridge container shares (no secrets).
    env_config_map_name: str = "cartridge-env"
    #: Name of the code location (the user-code deployment) in the Dagster workspace.
    location_name: str = "cartridge"
    grpc_port: int = 3030
    #: Dagster's own metadata database (run, event and schedule storage): not the warehouse.
    dagster_pg_host: str = "dagster-postgresql"
    dagster_pg_port: int = 5432
    dagster_pg_user: str = "dagster"
    dagster_pg_database: str = "dagster"
    #: Secret with key ``postgresql-password`` for Dagster's metadata database.
    dagster_pg_secret_name: str = "dagster-postgresql-secret"
    #: Runs allowed at once besides the long-lived warp runs (dbt, analytics, init).
    extra_concurrent_runs: int = 4
    #: A ReadWriteMany PersistentVolumeClaim shared by the code server and every run pod: the
    #: schema versions, the generated dbt models and the dbt manifest then survive restarts and
    #: are seen by all pods (needed for schema evolution inside the cluster). None: emptyDir.
    state_claim: str | None = None
    state_storage_class: str | None = None
    state_storage_size: str = "5Gi"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def image(self) -> str:
        return f"{self.image_repository}:{self.image_tag}"

    @classmethod
    def with_image(cls, image: str | None, **kwargs: Any) -> DeployOptions:
        """Options with ``REPO[:TAG]`` split (a registry port is not mistaken for a tag)."""
        if image and "@" in image:
            raise ConfigError(
                f"--image {image!r}: give REPO:TAG (the chart's image values take a tag)",
                hint="push the digest under a unique tag, e.g. the git commit",
            )
        if image:
            repo, sep, tag = image.rpartition(":")
            if sep and "/" not in tag:
                kwargs.update(image_repository=repo, image_tag=tag)
            else:
                kwargs.update(image_repository=image, image_tag="latest")
        return cls(**kwargs)


def dns_label(name: str, prefix: str = "") -> str:
    """A Kubernetes object name (RFC 1123 label) for a schema: ``shop_eu`` → ``warp-shop-eu``."""
    label = (prefix + name).lower().replace("_", "-")
    if len(label) > 63 or not _DNS_LABEL.match(label):
        raise ValueError(f"{label!r} is not a valid Kubernetes name")
    return label


def shared_env() -> dict[str, str]:
    """Environment for every Cartridge container (code server, run pods, standalone warp)."""
    return {
        "CARTRIDGE_ENV": "prod",
        "CARTRIDGE_CONFIG": CONFIG_FILE,
        # Warp's /metrics and /health answer on the pod address (probes, Prometheus).
        "CARTRIDGE_METRICS_HOST": POD_BIND_ADDRESS,
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }


def env_config_map(options: DeployOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": options.env_config_map_name,
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/part-of": PART_OF, **options.labels},
        },
        "data": shared_env(),
    }


def dbt_project_path(project_dir: str) -> str:
    """Where the dbt project is inside the image (``dbt.project_dir`` relative to ``/app``)."""
    return project_dir if project_dir.startswith("/") else f"{APP_DIR}/{project_dir}"


def state_volumes(
    options: DeployOptions, dbt_project_dir: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts for the config file and Cartridge's state.

    Without a claim the state is an ``emptyDir`` (scratch; the generated models and manifest
    are the ones baked into the image). With ``options.state_claim`` one shared volume holds the
    state directory and, when ``dbt_project_dir`` is given, the project's ``models/generated``
    and ``target`` directories, so models generated in a run pod reach the code server.
    """
    state: dict[str, Any] = (
        {"name": "cartridge-state", "persistentVolumeClaim": {"claimName": options.state_claim}}
        if options.state_claim
        else {"name": "cartridge-state", "emptyDir": {}}
    )
    volumes = [
        {"name": "cartridge-config", "configMap": {"name": options.config_map_name}},
        state,
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "cartridge-config", "mountPath": CONFIG_MOUNT_DIR, "readOnly": True},
        {"name": "cartridge-state", "mountPath": STATE_DIR}
        | ({"subPath": "state"} if options.state_claim else {}),
    ]
    if options.state_claim and dbt_project_dir:
        for sub_path, directory in (
            ("dbt-generated", "models/generated"),
            ("dbt-target", "target"),
        ):
            mounts.append(
                {
                    "name": "cartridge-state",
                    "mountPath": f"{dbt_project_dir}/{directory}",
                    "subPath": sub_path,
                }
            )
    return volumes, mounts


def state_pvc(options: DeployOptions) -> dict[str, Any] | None:
    """The shared state claim (ReadWriteMany: the code server and run pods mount it at once)."""
    if not options.state_claim:
        return None
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": options.state_storage_size}},
    }
    if options.state_storage_class:
        spec["storageClassName"] = options.state_storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": options.state_claim,
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/part-of": PART_OF, **options.labels},
        },
        "spec": spec,
    }


def pod_security_context() -> dict[str, Any]:
    """Pod-level: non-root with the image's ids, the runtime's default seccomp profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "runAsGroup": APP_GID,
        "fsGroup": APP_GID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context(*, read_only_root: bool) -> dict[str, Any]:
    """Container-level: no privilege escalation, no capabilities.

    Dagster pods keep a writable root filesystem because dbt writes ``target/`` and logs inside
    the project directory; the standalone warp pod needs only ``/tmp`` and its state dir.
    """
    return {
        "runAsNonRoot": True,
        "runAsUser": APP_UID,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": read_only_root,
        "capabilities": {"drop": ["ALL"]},
    }


def prometheus_annotations(port: int) -> dict[str, str]:
    """The ``prometheus.io/*`` annotations Prometheus' pod discovery conventionally reads."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }


def warp_probes(port: int) -> dict[str, dict[str, Any]]:
    """Startup, liveness and readiness probes on warp's JSON health (200 ok, 503 not):
    ``/health`` (ready and healthy) for startup and readiness, ``/live`` (not unhealthy) for
    liveness, so a long first snapshot is never a reason to restart the pod.

    The startup probe allows five minutes for imports, connections and the first checkpoint;
    after that, a minute of failed liveness (stalled, retrying too long) restarts the container.
    """

    def http(path: str, **timing: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": port}, "timeoutSeconds": 5, **timing}

    return {
        "startupProbe": http("/health", periodSeconds=10, failureThreshold=30),
        "livenessProbe": http("/live", periodSeconds=15, failureThreshold=4),
        "readinessProbe": http("/health", periodSeconds=10, failureThreshold=3),
    }


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _snake_keys(value: Any) -> Any:
    """camelCase Kubernetes keys → the snake_case attribute names dagster-k8s documents.

    Only keys are converted (annotation and label maps are passed as they are).
    """
    if isinstance(value, dict):
        return {
            key if "/" in key or "." in key else _snake(key): _snake_keys(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_snake_keys(item) for item in value]
    return value


def _warp_labels(schema: SchemaConfig) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "cartridge-warp",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/component": "warp",
        WARP_SCHEMA_LABEL: schema.name,
    }


def warp_run_k8s_config(schema: SchemaConfig) -> dict[str, Any]:
    """The ``dagster-k8s/config`` tag value for the run of ``warp_<schema>``.

    The schema's ``k8s_resources`` size the pod; the metrics port is exposed, probed on
    ``/health`` and annotated for Prometheus (all three are left out when ``metrics_port`` is 0).
    """
    port = schema.warp.metrics_port
    container: dict[str, Any] = {"resources": schema.k8s_resources}
    annotations: dict[str, str] = {}
    if port:
        container["ports"] = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        container.update(warp_probes(port))
        annotations = prometheus_annotations(port)
    return {
        "container_config": _snake_keys(container),
        "pod_template_spec_metadata": {
            "labels": _warp_labels(schema),
            "annotations": annotations,
        },
        "pod_spec_config": {"termination_grace_period_seconds": 60},
    }


def warp_run_tags(schema: SchemaConfig) -> dict[str, str]:
    """Tags for the run of ``warp_<schema>``: the concurrency key and the pod spec (JSON)."""
    return {
        WARP_SCHEMA_TAG: schema.name,
        DAGSTER_K8S_CONFIG_TAG: json.dumps(warp_run_k8s_config(schema), sort_keys=True),
    }


def warp_deployment(schema: SchemaConfig, options: DeployOptions) -> dict[str, Any]:
    """A standalone warp Deployment for one schema (single-schema mode, outside Dagster).

    One replica with the ``Recreate`` strategy, so an old pod is gone before a new one starts
    (the checkpoint's fencing epoch also stops a zombie from committing).
    """
    name = dns_label(schema.name, "cartridge-warp-")
    port = schema.warp.metrics_port
    volumes, mounts = state_volumes(options)
    labels = {**_warp_labels(schema), **options.labels}
    selector = {"app.kubernetes.io/name": "cartridge-warp", WARP_SCHEMA_LABEL: schema.name}
    container: dict[str, Any] = {
        "name": "warp",
        "image": options.image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["cartridge", "warp", "run"],
        "args": ["--config", CONFIG_FILE, "--mode", "single", "--schema", schema.name],
        "env": [
            {"name": "CARTRIDGE_HEALTHCHECK", "value": f"http://127.0.0.1:{port}/health"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "envFrom": [
            {"configMapRef": {"name": options.env_config_map_name}},
            {"secretRef": {"name": options.secret_name}},
        ],
        "resources": schema.k8s_resources,
        "securityContext": container_security_context(read_only_root=True),
        "volumeMounts": [*mounts, {"name": "tmp", "mountPath": "/tmp"}],
    }
    annotations: dict[str, str] = {}
    if port:
        container["ports"] = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        container.update(warp_probes(port))
        annotations = prometheus_annotations(port)
    else:
        container["env"] = [e for e in container["env"] if e["name"] != "CARTRIDGE_HEALTHCHECK"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": options.namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": [
                        *volumes,
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }
