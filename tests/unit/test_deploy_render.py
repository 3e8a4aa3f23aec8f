"""`cartridge deploy render`: every manifest validates offline, and the invariants hold.

Manifests are validated with kubernetes-validate (the Kubernetes OpenAPI schemas, strict: no
unknown fields); Kubernetes objects embedded in the Helm values are validated against the same
definitions; each warp run pod is built by dagster-k8s itself from the run tag, exactly as the
K8s run launcher does, and validated as a Job.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import schema_contents

from cartridge_dagster.cli import _run
from cartridge_dagster.config import load_settings, settings_from_mapping
from cartridge_dagster.deploy import (
    DeployOptions,
    export_config,
    render,
    secret_field_paths,
    warp_run_k8s_config,
    warp_run_tags,
)
from cartridge_dagster.deploy.k8s import APP_UID, WARP_SCHEMA_TAG, dns_label
from tests.support.services import REPO

EXAMPLES = {
    "demo": REPO / "examples" / "demo.yaml",
    "multi": REPO / "examples" / "mongodb-to-postgresql-multi.yaml",
    "single": REPO / "examples" / "mongodb-to-postgresql-single.yaml",
}
K8S_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
# Values a renderer's environment might hold; none may reach the output.
# (Credential-free URLs: the multi example names its users in the file.)
SENTINELS = {
    "CARTRIDGE_SOURCE__CONNECTION_STRING": "mongodb://S3ntinel-src-host:27017/",
    "CARTRIDGE_DESTINATION__CONNECTION_STRING": "postgresql://S3ntinel-dst-host/wh",
    "CARTRIDGE_DESTINATION__PASSWORD": "S3ntinel-dst-pw",
    "CARTRIDGE_AI__API_KEY": "sk-S3ntinel-ai-key",
}


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests(out: Path) -> list[tuple[Path, dict[str, Any]]]:
    files = sorted((out / "manifests").glob("*.yaml")) + sorted((out / "standalone").glob("*.yaml"))
    return [(f, doc) for f in files for doc in _docs(f)]


@pytest.fixture(params=["demo", "multi"])
def rendered(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Path]:
    for name, value in SENTINELS.items():
        monkeypatch.setenv(name, value)
    name = request.param
    out = tmp_path / name
    render(EXAMPLES[name], out, DeployOptions.with_image("registry.local:5000/cartridge:1.0.0"))
    return name, out


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_rendered_manifest_is_valid_kubernetes(
    rendered: tuple[str, Path], version: str
) -> None:
    _, out = rendered
    manifests = _manifests(out)
    kinds = sorted({doc["kind"] for _, doc in manifests})
    assert kinds == ["ConfigMap", "Deployment"]
    for path, doc in manifests:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {'.'.join(map(str, exc.path))}: {exc.message}")


def _definitions(version: str = K8S_VERSIONS[-1]) -> dict[str, Any]:
    schema: dict[str, Any] = schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version
    )
    return schema


def _validate_k8s_object(obj: Any, definition: str) -> None:
    import jsonschema

    schema = {**_definitions(), "$ref": f"#/$defs/{definition}"}
    jsonschema.Draft202012Validator(schema).validate(obj)


def _values(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((out / "values.yaml").read_text())
    return data


def test_kubernetes_objects_inside_helm_values_are_valid(rendered: tuple[str, Path]) -> None:
    _, out = rendered
    values = _values(out)
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    core = "io.k8s.api.core.v1."
    for component in (values["dagsterWebserver"], values["dagsterDaemon"], deployment):
        _validate_k8s_object(component["resources"], core + "ResourceRequirements")
        if "initContainerResources" in component:
            _validate_k8s_object(component["initContainerResources"], core + "ResourceRequirements")
        _validate_k8s_object(component["podSecurityContext"], core + "PodSecurityContext")
        _validate_k8s_object(component["securityContext"], core + "SecurityContext")
    for volume in deployment["volumes"]:
        _validate_k8s_object(volume, core + "Volume")
    for mount in deployment["volumeMounts"]:
        _validate_k8s_object(mount, core + "VolumeMount")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        spec = {k: v for k, v in deployment[probe].items() if k != "enabled"}
        _validate_k8s_object(spec, core + "Probe")
    for ref in deployment["envSecrets"]:
        _validate_k8s_object(ref, core + "SecretEnvSource")
    _validate_k8s_object(launcher["resources"], core + "ResourceRequirements")
    _validate_k8s_object(launcher["securityContext"], core + "SecurityContext")
    _validate_k8s_object(
        launcher["runK8sConfig"]["podSpecConfig"]["securityContext"], core + "PodSecurityContext"
    )


# Keys of Dagster's chart (dagster 1.13, helm/dagster/schema/schema/charts/...): a typo here
# would be silently ignored by Helm, so the values may only use keys the chart knows.
CHART_KEYS = {
    "": {
        "global", "dagsterWebserver", "dagster-user-deployments", "runLauncher", "postgresql",
        "generatePostgresqlPasswordSecret", "dagsterDaemon", "telemetry", "concurrency",
        "defsStateStorage",
    },
    "defsStateStorage": {"type", "config"},
    "defsStateStorage.config": {"blobStorageStateStorage", "customDefsStateStorage"},
    "customDefsStateStorage": {"module", "class", "config"},
    "concurrency": {"enabled", "pools", "runs"},
    "concurrency.pools": {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    "concurrency.runs": {"maxConcurrentRuns", "tagConcurrencyLimits"},
    "global": {"postgresqlSecretName", "serviceAccountName", "dagsterHome"},
    "dagsterWebserver": {
        "replicaCount", "image", "service", "env", "envConfigMaps", "envSecrets", "resources",
        "podSecurityContext", "securityContext", "annotations", "labels", "nodeSelector",
        "initContainerResources", "checkDbReadyInitContainer",
    },
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "deployment": {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns",
        "deploymentNamespace", "port", "replicaCount", "env", "envConfigMaps", "envSecrets",
        "annotations", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
        "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe",
        "labels", "volumeMounts", "volumes", "schedulerName", "initContainers",
        "sidecarContainers", "deploymentStrategy",
    },
    "k8sRunLauncher": {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile",
        "envConfigMaps", "envSecrets", "envVars", "volumeMounts", "volumes", "labels",
        "failPodOnRunFailure", "resources", "schedulerName", "securityContext", "runK8sConfig",
    },
    "runK8sConfig": {
        "containerConfig", "podSpecConfig", "podTemplateSpecMetadata", "jobSpecConfig",
        "jobMetadata",
    },
    "postgresql": {
        "image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
        "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service",
    },
    "dagsterDaemon": {
        "enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps",
        "envSecrets", "resources", "podSecurityContext", "securityContext", "runMonitoring",
        "runRetries", "sensors", "schedules", "annotations", "labels", "nodeSelector",
        "initContainerResources", "checkDbReadyInitContainer",
    },
    "queuedRunCoordinator": {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds",
        "dequeueNumWorkers", "dequeueUseThreads",
    },
    "runMonitoring": {
        "enabled", "startTimeoutSeconds", "cancelTimeoutSeconds", "maxResumeRunAttempts",
        "pollIntervalSeconds", "freeSlotsAfterRunEndSeconds",
    },
    "runRetries": {"enabled", "maxRetries", "retryOnAssetOrOpFailure"},
}  # fmt: skip


def test_helm_values_use_only_keys_of_dagsters_chart(rendered: tuple[str, Path]) -> None:
    _, out = rendered
    values = _values(out)
    daemon = values["dagsterDaemon"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    sections = {
        "": values,
        "global": values["global"],
        "dagsterWebserver": values["dagsterWebserver"],
        "dagster-user-deployments": values["dagster-user-deployments"],
        "deployment": values["dagster-user-deployments"]["deployments"][0],
        "k8sRunLauncher": launcher,
        "runK8sConfig": launcher["runK8sConfig"],
        "postgresql": values["postgresql"],
        "dagsterDaemon": daemon,
        "queuedRunCoordinator": daemon["runCoordinator"]["config"]["queuedRunCoordinator"],
        "runMonitoring": daemon["runMonitoring"],
        "runRetries": daemon["runRetries"],
        "concurrency": values["concurrency"],
        "concurrency.pools": values["concurrency"]["pools"],
        "concurrency.runs": values["concurrency"]["runs"],
        "defsStateStorage": values["defsStateStorage"],
        "defsStateStorage.config": values["defsStateStorage"]["config"],
        "customDefsStateStorage": values["defsStateStorage"]["config"]["customDefsStateStorage"],
    }
    for name, section in sections.items():
        unknown = set(section) - CHART_KEYS[name]
        assert not unknown, f"{name or 'top level'}: keys the chart does not know: {unknown}"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["defsStateStorage"]["type"] == "CustomDefsStateStorage"


# --------------------------------------------------------------------------- invariants


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def test_every_pod_runs_as_non_root_with_limits(rendered: tuple[str, Path]) -> None:
    _, out = rendered
    for path, doc in _manifests(out):
        if doc["kind"] != "Deployment":
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, path.name
        assert pod["securityContext"]["runAsUser"] == APP_UID
        assert pod["automountServiceAccountToken"] is False
        for container in _containers(doc):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), path.name
    values = _values(out)
    deployment = values["dagster-user-deployments"]["deployments"][0]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for part in (values["dagsterWebserver"], values["dagsterDaemon"], deployment, launcher):
        assert {"cpu", "memory"} <= set(part["resources"]["limits"])
        assert {"cpu", "memory"} <= set(part["resources"]["requests"])
        assert part["securityContext"]["runAsNonRoot"] is True
    for part in (values["dagsterWebserver"], values["dagsterDaemon"], deployment):
        assert part["podSecurityContext"]["runAsUser"] == APP_UID
    for part in (values["dagsterWebserver"], values["dagsterDaemon"]):  # their init containers
        assert {"cpu", "memory"} <= set(part["initContainerResources"]["limits"])


def test_exactly_one_warp_run_and_one_warp_deployment_per_schema(
    rendered: tuple[str, Path],
) -> None:
    name, out = rendered
    settings = load_settings(EXAMPLES[name])
    schemas = {s.name for s in settings.schemas}
    runs = {p.stem for p in (out / "warp-runs").glob("*.json")}
    assert runs == schemas
    deployments = [d for _, d in _manifests(out) if d["kind"] == "Deployment"]
    by_schema = {d["metadata"]["labels"]["cartridge.io/warp-schema"]: d for d in deployments}
    assert len(deployments) == len(schemas) and set(by_schema) == schemas
    for schema_name, doc in by_schema.items():
        assert doc["metadata"]["name"] == dns_label(schema_name, "cartridge-warp-")
        assert doc["spec"]["replicas"] == 1
        assert doc["spec"]["strategy"] == {"type": "Recreate"}
        args = doc["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--schema") + 1] == schema_name
        assert args[args.index("--mode") + 1] == "single"
    values = _values(out)
    runs = values["concurrency"]["runs"]
    limits = {lim["key"]: lim for lim in runs["tagConcurrencyLimits"]}
    assert limits[WARP_SCHEMA_TAG] == {
        "key": WARP_SCHEMA_TAG,
        "value": {"applyLimitPerUniqueValue": True},
        "limit": 1,
    }
    # Warp runs are long-lived: the global cap leaves room for all of them and more.
    assert runs["maxConcurrentRuns"] > len(schemas)
    # The chart refuses limits in both places: the run coordinator's config stays empty.
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert values["concurrency"]["enabled"] is True and queued == {}
    instance = yaml.safe_load((out / "dagster-instance.yaml").read_text())
    assert instance["concurrency"]["runs"]["tag_concurrency_limits"] == list(limits.values())
    assert instance["concurrency"]["runs"]["max_concurrent_runs"] == runs["maxConcurrentRuns"]


def test_every_cartridge_pool_admits_one_run_at_a_time(rendered: tuple[str, Path]) -> None:
    """Helm values and the instance: the pools of the dbt, analytics and init assets hold one
    run each (the default limit, enforced per run), and no class comes from a private module."""
    _, out = rendered
    pools = _values(out)["concurrency"]["pools"]
    assert pools == {"defaultLimit": 1, "granularity": "run"}
    instance = yaml.safe_load((out / "dagster-instance.yaml").read_text())
    assert instance["concurrency"]["pools"] == {"default_limit": 1, "granularity": "run"}
    assert instance["run_coordinator"] == {"module": "dagster", "class": "QueuedRunCoordinator"}
    assert instance["auto_materialize"] == {"enabled": True, "use_sensors": True}
    for section in instance.values():
        if isinstance(section, dict) and "module" in section:
            assert "._" not in f".{section['module']}", section
    local = yaml.safe_load((REPO / "deploy" / "local" / "dagster.yaml").read_text())
    assert local["concurrency"]["pools"] == instance["concurrency"]["pools"]
    assert local["run_coordinator"] == instance["run_coordinator"]
    assert (
        local["concurrency"]["runs"]["tag_concurrency_limits"]
        == (instance["concurrency"]["runs"]["tag_concurrency_limits"])
    )


def test_warp_pods_probe_health_and_are_annotated_for_prometheus(
    rendered: tuple[str, Path],
) -> None:
    name, out = rendered
    settings = load_settings(EXAMPLES[name])
    for doc in (d for _, d in _manifests(out) if d["kind"] == "Deployment"):
        schema = settings.get_schema(doc["metadata"]["labels"]["cartridge.io/warp-schema"])
        port = schema.warp.metrics_port
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations == {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(port),
            "prometheus.io/path": "/metrics",
        }
        container = doc["spec"]["template"]["spec"]["containers"][0]
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
        for probe in ("readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": port}
        assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": port}
        assert container["resources"] == schema.k8s_resources
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"configMapRef": {"name": "cartridge-env"}} in container["envFrom"]
    # Bound to the pod address, or the kubelet's probes and Prometheus cannot reach it; the
    # shared env reaches the code server, its run pods (warp) and the standalone pods alike.
    (env_map,) = _docs(out / "manifests" / "cartridge-env.yaml")
    assert env_map["data"]["CARTRIDGE_METRICS_HOST"] == "0.0.0.0"
    assert env_map["data"]["CARTRIDGE_CONFIG"] == "/etc/cartridge/cartridge.yaml"
    deployment = _values(out)["dagster-user-deployments"]["deployments"][0]
    assert deployment["envConfigMaps"] == [{"name": "cartridge-env"}]


def test_no_secret_value_reaches_any_rendered_file(rendered: tuple[str, Path]) -> None:
    name, out = rendered
    secrets = ["S3ntinel", *SENTINELS.values()]
    if name == "multi":
        secrets += ["p@ss:w/rd%", "p%40ss"]  # the file's own password, raw and encoded
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text()
            for secret in secrets:
                assert secret not in text, f"{path.relative_to(out)} contains a secret"
            assert not re.search(r"://[^/\s@:]+:[^/\s@]+@", text), path.name
    config_map = _docs(out / "manifests" / "cartridge-config.yaml")[0]
    exported = yaml.safe_load(config_map["data"]["cartridge.yaml"])
    for section in ("source", "destination"):
        assert "connection_string" not in exported[section]
        assert "password" not in exported[section]
    # Pods take the secrets from the Secret, by reference only.
    values = _values(out)
    assert values["dagster-user-deployments"]["deployments"][0]["envSecrets"] == [
        {"name": "cartridge-secrets"}
    ]
    for _, doc in _manifests(out):
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            assert container["envFrom"] == [
                {"configMapRef": {"name": "cartridge-env"}},
                {"secretRef": {"name": "cartridge-secrets"}},
            ]
            assert all("value" not in e or "S3ntinel" not in e["value"] for e in container["env"])


def test_the_configmap_config_plus_the_secret_env_is_the_whole_config(
    rendered: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, out = rendered
    original = load_settings(EXAMPLES[name])
    config_map = _docs(out / "manifests" / "cartridge-config.yaml")[0]
    file = tmp_path / "cartridge.yaml"
    file.write_text(config_map["data"]["cartridge.yaml"])
    header = config_map["data"]["cartridge.yaml"]
    for var in ("CARTRIDGE_SOURCE__CONNECTION_STRING", "CARTRIDGE_DESTINATION__CONNECTION_STRING"):
        assert var in header
    src = "mongodb://mongo-0.mongo:27017/?replicaSet=rs0"
    dst = "postgresql://warehouse:5432/analytics"
    monkeypatch.setenv("CARTRIDGE_SOURCE__CONNECTION_STRING", src)
    monkeypatch.setenv("CARTRIDGE_DESTINATION__CONNECTION_STRING", dst)
    if name == "multi":
        assert "CARTRIDGE_SOURCE__PASSWORD" in header
        monkeypatch.setenv("CARTRIDGE_SOURCE__PASSWORD", "from-the-secret")
    if name == "demo":  # the billing schema's own source comes from the Secret too, by index
        assert "CARTRIDGE_SCHEMAS__1__SOURCE__CONNECTION_STRING" in header
        monkeypatch.setenv("CARTRIDGE_SCHEMAS__1__SOURCE__CONNECTION_STRING", "local/billing")
    loaded = load_settings(file)
    assert loaded.source.connection_string.get_secret_value() == src
    assert loaded.destination.connection_string.get_secret_value() == dst
    assert loaded.mode == "single" and loaded.state_dir == "/var/lib/cartridge"
    assert loaded.observability.log_format == "json"
    assert [s.model_dump() for s in loaded.schemas] == [s.model_dump() for s in original.schemas]
    assert loaded.defaults == original.defaults and loaded.dbt == original.dbt
    if name == "multi":
        assert loaded.source.password is not None
        assert loaded.source.password.get_secret_value() == "from-the-secret"
        assert loaded.source.username == "cartridge"


def test_secret_fields_are_found_from_the_model() -> None:
    paths = set(secret_field_paths())
    assert {
        ("source", "connection_string"),
        ("source", "password"),
        ("destination", "connection_string"),
        ("destination", "password"),
        ("ai", "api_key"),
    } <= paths
    exported = export_config(
        {
            "source": {"connection_string": "mongodb://a:b@h/", "password": "pw"},
            "ai": {"provider": "openai", "api_key": "sk-x"},
            "schemas": [{"name": "s", "source_database": "s"}],
        },
        state_dir="/state",
    )
    assert exported.secret_env == (
        "CARTRIDGE_SOURCE__CONNECTION_STRING",
        "CARTRIDGE_DESTINATION__CONNECTION_STRING",
        "CARTRIDGE_AI__API_KEY",
        "CARTRIDGE_SOURCE__PASSWORD",
    )
    assert exported.data["ai"] == {"provider": "openai"}
    assert "sk-x" not in json.dumps(exported.data) and "a:b@" not in json.dumps(exported.data)


# --------------------------------------------------------------------------- warp run pods


def _fake_kubeconfig(path: Path) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_dagster_k8s_builds_a_valid_warp_run_pod_per_schema(
    rendered: tuple[str, Path], tmp_path: Path
) -> None:
    """The run launcher's own code turns each schema's run tag into its Job, as in a cluster."""
    import dagster as dg
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
    from kubernetes.client import ApiClient

    name, out = rendered
    settings = load_settings(EXAMPLES[name])
    instance = yaml.safe_load((out / "dagster-instance.yaml").read_text())
    launcher_config = dict(instance["run_launcher"]["config"])
    launcher_config.update(
        load_incluster_config=False,
        kubeconfig_file=str(_fake_kubeconfig(tmp_path / "kubeconfig")),
    )
    launcher = K8sRunLauncher(**launcher_config)
    # What the chart passes from the user-code deployment (includeConfigInLaunchedRuns).
    deployment = _values(out)["dagster-user-deployments"]["deployments"][0]
    location = K8sContainerContext.create_from_config(
        {
            "k8s": {
                "env_config_maps": [c["name"] for c in deployment["envConfigMaps"]],
                "env_secrets": [s["name"] for s in deployment["envSecrets"]],
                "volumes": deployment["volumes"],
                "volume_mounts": deployment["volumeMounts"],
                "resources": deployment["resources"],
            }
        }
    )
    for schema in settings.schemas:
        tags = warp_run_tags(schema)
        assert json.loads(tags["dagster-k8s/config"]) == json.loads(
            (out / "warp-runs" / f"{schema.name}.json").read_text()
        )
        run = dg.DagsterRun(job_name=f"warp_{schema.name}", run_id=str(uuid.uuid4()), tags=tags)
        base = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
        context = base.merge(
            location.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
        )
        job = construct_dagster_k8s_job(
            job_config=context.get_k8s_job_config("registry.local:5000/cartridge:1.0.0", launcher),
            args=["dagster", "api", "execute_run", "{}"],
            job_name=f"dagster-run-{run.run_id}",
            component="run_worker",
            user_defined_k8s_config=context.run_k8s_config,
            labels={"dagster/job": run.job_name, "dagster/run-id": run.run_id},
        )
        manifest = ApiClient().sanitize_for_serialization(job)
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
        pod = manifest["spec"]["template"]
        container = pod["spec"]["containers"][0]
        port = schema.warp.metrics_port
        assert container["resources"] == schema.k8s_resources  # the tag beats the defaults
        assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": port}
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": port}
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert pod["metadata"]["labels"]["cartridge.io/warp-schema"] == schema.name
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["runAsUser"] == APP_UID
        assert {"secretRef": {"name": "cartridge-secrets"}} in container["envFrom"]
        assert {"configMapRef": {"name": "cartridge-env"}} in container["envFrom"]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/etc/cartridge", "/var/lib/cartridge"} <= mounts


def test_a_schema_without_metrics_gets_no_probes_nor_scrape_annotations() -> None:
    settings = settings_from_mapping(
        {
            "source": {"connection_string": "mongodb://h/"},
            "schemas": [{"name": "quiet", "source_database": "q", "warp": {"metrics_port": 0}}],
        }
    )
    config = warp_run_k8s_config(settings.schemas[0])
    assert set(config["container_config"]) == {"resources"}
    assert config["pod_template_spec_metadata"]["annotations"] == {}


def test_image_digest_is_refused_with_a_hint() -> None:
    from cartridge_dagster.errors import ConfigError

    with pytest.raises(ConfigError, match="REPO:TAG"):
        DeployOptions.with_image("registry.local/cartridge@sha256:" + "a" * 64)


@pytest.mark.parametrize(
    ("image", "repo", "tag"),
    [
        ("cartridge:1.2", "cartridge", "1.2"),
        ("registry.local:5000/team/cartridge:2.0.1", "registry.local:5000/team/cartridge", "2.0.1"),
        ("registry.local:5000/cartridge", "registry.local:5000/cartridge", "latest"),
        (None, "cartridge-dagster", "0.1.0"),
    ],
)
def test_image_option_splits_repository_and_tag(image: str | None, repo: str, tag: str) -> None:
    options = DeployOptions.with_image(image)
    assert (options.image_repository, options.image_tag) == (repo, tag)


# --------------------------------------------------------------------------- CLI and shipped files


def test_cli_renders_and_bad_config_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = _run(
        ["deploy", "render", "--config", str(EXAMPLES["multi"]), "--output", str(out),
         "--image", "example/cartridge:9.9.9", "--namespace", "data", "--no-standalone"],
        "cartridge",
    )  # fmt: skip
    assert rc == 0
    assert not (out / "standalone").exists()
    values = _values(out)
    assert values["dagster-user-deployments"]["deployments"][0]["image"]["tag"] == "9.9.9"
    assert _docs(out / "manifests" / "cartridge-config.yaml")[0]["metadata"]["namespace"] == "data"
    assert (
        "kubectl -n data create secret generic cartridge-secrets" in (out / "README.md").read_text()
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {connection_string: 'mongodb://h/'}\nschemas: [{name: Bad-Name}]\n")
    capsys.readouterr()
    rc = _run(["deploy", "render", "--config", str(bad), "--output", str(tmp_path / "x")], "c")
    err = capsys.readouterr().err
    assert rc == 2
    assert "schemas[0].name" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_shipped_values_and_instance_are_the_render_of_the_single_example(
    tmp_path: Path,
) -> None:
    """deploy/helm/values.yaml and deploy/dagster-instance.yaml never drift from the renderer.

    Regenerate with: cartridge deploy render --config examples/mongodb-to-postgresql-single.yaml
    --output /tmp/r && cp /tmp/r/values.yaml deploy/helm/ && cp /tmp/r/dagster-instance.yaml deploy/
    """
    out = tmp_path / "r"
    render(EXAMPLES["single"], out)
    assert (REPO / "deploy" / "helm" / "values.yaml").read_text() == (
        out / "values.yaml"
    ).read_text()
    assert (REPO / "deploy" / "dagster-instance.yaml").read_text() == (
        out / "dagster-instance.yaml"
    ).read_text()
    assert "postgresql+psycopg2" in (out / "dagster-instance.yaml").read_text()
    assert _values(out)["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"


def test_shared_state_claim_reaches_the_code_server_run_pods_and_warp(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = _run(
        ["deploy", "render", "--config", str(EXAMPLES["multi"]), "--output", str(out),
         "--state-claim", "cartridge-state", "--state-storage-class", "efs-sc"],
        "cartridge",
    )  # fmt: skip
    assert rc == 0
    (pvc,) = _docs(out / "manifests" / "cartridge-state.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["storageClassName"] == "efs-sc"
    for _, doc in _manifests(out):
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)
    claim = {"name": "cartridge-state", "persistentVolumeClaim": {"claimName": "cartridge-state"}}
    deployment = _values(out)["dagster-user-deployments"]["deployments"][0]
    assert claim in deployment["volumes"]
    mounts = {m["mountPath"]: m.get("subPath") for m in deployment["volumeMounts"]}
    assert mounts["/var/lib/cartridge"] == "state"
    assert mounts["/app/dbt_project/models/generated"] == "dbt-generated"
    assert mounts["/app/dbt_project/target"] == "dbt-target"
    launcher = yaml.safe_load((out / "dagster-instance.yaml").read_text())["run_launcher"]
    assert claim in launcher["config"]["volumes"]
    for _, doc in _manifests(out):
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            assert claim in pod["volumes"]
            warp_mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            assert "/var/lib/cartridge" in warp_mounts
            assert not any("dbt_project" in m for m in warp_mounts)  # warp does not run dbt


def test_package_exports_resolve_to_their_objects() -> None:
    import types

    import cartridge_dagster.deploy as deploy
    import cartridge_dagster.deploy.renderer  # noqa: F401 - submodules must not shadow exports

    for name in deploy.__all__:
        assert not isinstance(getattr(deploy, name), types.ModuleType), name
    with pytest.raises(AttributeError):
        _ = deploy.no_such_name
