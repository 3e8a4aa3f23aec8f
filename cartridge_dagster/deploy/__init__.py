"""Deploy core: the Helm values, instance config, manifests and image build steps for Cartridge.

Plain Python (never imports dagster). ``cartridge deploy render`` and ``cartridge deploy
prepare-dbt`` are its command line; ``deploy/`` at the repository root holds what it ships.
"""

from cartridge_dagster.deploy.config_export import ExportedConfig, export_config, secret_field_paths
from cartridge_dagster.deploy.helm import DAGSTER_PG_SCHEME, helm_values, tag_concurrency_limits
from cartridge_dagster.deploy.instance import instance_config
from cartridge_dagster.deploy.k8s import (
    WARP_SCHEMA_TAG,
    DeployOptions,
    warp_deployment,
    warp_run_k8s_config,
    warp_run_tags,
)
from cartridge_dagster.deploy.prepare import PrepareError, prepare_dbt
from cartridge_dagster.deploy.render import RenderResult, render, render_documents

__all__ = [
    "DAGSTER_PG_SCHEME",
    "WARP_SCHEMA_TAG",
    "DeployOptions",
    "ExportedConfig",
    "PrepareError",
    "RenderResult",
    "export_config",
    "helm_values",
    "instance_config",
    "prepare_dbt",
    "render",
    "render_documents",
    "secret_field_paths",
    "tag_concurrency_limits",
    "warp_deployment",
    "warp_run_k8s_config",
    "warp_run_tags",
]
