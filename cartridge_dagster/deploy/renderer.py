"""``cartridge deploy render``: everything a cluster needs for one Cartridge configuration.

Output layout (all plain files; nothing here contacts a cluster)::

    OUT/
      values.yaml                     Helm values for dagster/dagster (user code as subchart)
      dagster-instance.yaml           the same instance settings, for running without Helm
      manifests/cartridge-config.yaml the ConfigMap with the config file (no secrets in it)
      warp-runs/<schema>.json         the dagster-k8s/config tag of each schema's warp run
      standalone/warp-<schema>.yaml   optional: a plain warp Deployment per schema
      README.md                       the Secret to create and the commands to run

Secret values never enter the output: the config is read from the file (not from the
environment), and every secret field is replaced by the name of its environment variable.

This module never imports dagster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cartridge_dagster.config import CartridgeSettings, find_config_file, load_settings
from cartridge_dagster.deploy.config_export import ExportedConfig, export_config
from cartridge_dagster.deploy.helm import chart_version, helm_values
from cartridge_dagster.deploy.instance import instance_config
from cartridge_dagster.deploy.k8s import (
    STATE_DIR,
    DeployOptions,
    dns_label,
    env_config_map,
    state_pvc,
    warp_deployment,
    warp_run_k8s_config,
)
from cartridge_dagster.errors import ConfigError

__all__ = ["RenderResult", "config_map", "dump_yaml", "render", "render_documents"]


class _Dumper(yaml.SafeDumper):
    """Block style, multi-line strings as ``|`` literals, keys in insertion order, no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(data: Any, header: str = "") -> str:
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)
    lines = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return lines + body


def config_map(exported: ExportedConfig, options: DeployOptions) -> dict[str, Any]:
    header = (
        "Rendered by `cartridge deploy render`. Secrets are not in this file: they come from\n"
        f"the environment, loaded from the Secret {options.secret_name!r}:\n"
        + "".join(f"  {name}\n" for name in exported.secret_env)
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": options.config_map_name,
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/part-of": "cartridge", **options.labels},
        },
        "data": {"cartridge.yaml": dump_yaml(exported.data, header)},
    }


@dataclass
class RenderResult:
    """What was written (paths relative to the output directory) and what the Secret needs."""

    output: Path
    files: list[str] = field(default_factory=list)
    secret_env: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ()


def _read_raw(path: Path) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def render_documents(
    settings: CartridgeSettings,
    raw: dict[str, Any],
    options: DeployOptions,
    *,
    standalone: bool = True,
) -> tuple[dict[str, str], ExportedConfig]:
    """File name → content for one configuration (pure: no I/O)."""
    exported = export_config(raw, state_dir=STATE_DIR)
    files: dict[str, str] = {}
    files["values.yaml"] = dump_yaml(
        helm_values(settings, options),
        "Values for Dagster's Helm chart: helm upgrade --install dagster dagster/dagster \\\n"
        f"  --version {chart_version()} --namespace NS -f values.yaml\n"
        "(rendered by `cartridge deploy render`).\n"
        "Warp runs (one pod per schema) take their resources, metrics port, /health probes and\n"
        "Prometheus annotations from their dagster-k8s/config run tag: see warp-runs/*.json.",
    )
    files["dagster-instance.yaml"] = dump_yaml(
        instance_config(settings, options),
        "Production Dagster instance (without Helm; the chart builds the same from values.yaml).\n"
        "Connection details: DAGSTER_PG_USERNAME, DAGSTER_PG_PASSWORD, DAGSTER_PG_HOST,\n"
        "DAGSTER_PG_DB, DAGSTER_PG_PORT.",
    )
    files["manifests/cartridge-config.yaml"] = dump_yaml(config_map(exported, options))
    files["manifests/cartridge-env.yaml"] = dump_yaml(
        env_config_map(options), "Environment shared by every Cartridge container (no secrets)."
    )
    pvc = state_pvc(options)
    if pvc is not None:
        files["manifests/cartridge-state.yaml"] = dump_yaml(
            pvc,
            "Shared Cartridge state: schema versions, generated dbt models, the dbt manifest.\n"
            "Needs a ReadWriteMany storage class (EFS, Filestore, Azure Files, NFS…).",
        )
    for schema in settings.schemas:
        files[f"warp-runs/{schema.name}.json"] = (
            json.dumps(warp_run_k8s_config(schema), indent=2, sort_keys=True) + "\n"
        )
        if standalone:
            name = dns_label(schema.name, "warp-")
            files[f"standalone/{name}.yaml"] = dump_yaml(
                warp_deployment(schema, options),
                f"Optional: warp for schema {schema.name!r} as a plain service (outside Dagster).\n"
                "Do not run it and the Dagster job warp_" + schema.name + " at the same time.",
            )
    files["README.md"] = _readme(settings, exported, options, standalone=standalone)
    return files, exported


def render(
    config_path: str | Path | None,
    output: str | Path,
    options: DeployOptions | None = None,
    *,
    standalone: bool = True,
) -> RenderResult:
    """Validate the config, then write the deployment files under ``output``."""
    options = options or DeployOptions()
    path = find_config_file(config_path)
    settings = load_settings(path)
    files, exported = render_documents(settings, _read_raw(path), options, standalone=standalone)
    out = Path(output)
    for name, content in files.items():
        target = out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    return RenderResult(
        output=out,
        files=sorted(files),
        secret_env=exported.secret_env,
        schemas=tuple(s.name for s in settings.schemas),
    )


def _readme(
    settings: CartridgeSettings,
    exported: ExportedConfig,
    options: DeployOptions,
    *,
    standalone: bool,
) -> str:
    ns = options.namespace
    literals = " \\\n".join(f"  --from-literal={name}='…'" for name in exported.secret_env)
    schemas = ", ".join(s.name for s in settings.schemas)
    lines = [
        "# Cartridge deployment (rendered)",
        "",
        f"Image: `{options.image}` · namespace: `{ns}` · warp schemas: {schemas}",
        "",
        "1. Secrets (never in these files). The warehouse and source connection strings, with",
        "   credentials URL-encoded inside them:",
        "",
        "```bash",
        f"kubectl create namespace {ns}",
        f"kubectl -n {ns} create secret generic {options.secret_name} \\",
        literals,
        f"kubectl -n {ns} create secret generic {options.dagster_pg_secret_name} \\",
        "  --from-literal=postgresql-password='…'   # Dagster's own metadata database",
        "```",
        "",
        "2. The Cartridge config, then Dagster with the Cartridge code location:",
        "",
        "```bash",
        f"kubectl -n {ns} apply -f manifests/",
        "helm repo add dagster https://dagster-io.github.io/helm && helm repo update",
        f"helm upgrade --install dagster dagster/dagster -n {ns} --version {chart_version()} \\",
        "  -f values.yaml",
        "```",
        "",
        "3. Each schema's warp job (`warp_<schema>`) runs as one long-lived run, in its own pod,",
        "   sized and probed by the `dagster-k8s/config` tag shown in `warp-runs/<schema>.json`.",
    ]
    if standalone:
        lines += [
            "",
            "Optional, instead of the Dagster warp jobs: `kubectl -n "
            + ns
            + " apply -f standalone/` runs warp as a plain Deployment per schema.",
        ]
    return "\n".join(lines) + "\n"
