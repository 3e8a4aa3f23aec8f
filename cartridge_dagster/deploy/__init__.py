"""Deploy core: the Helm values, instance config, manifests and image build steps for Cartridge.

Plain Python (never imports dagster). ``cartridge deploy render`` and ``cartridge deploy
prepare-dbt`` are its command line; ``deploy/`` at the repository root holds what it ships.

Names are imported lazily, so ``python -m cartridge_dagster.deploy.healthcheck`` (the image's
HEALTHCHECK, run every 30 s) loads the standard library only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cartridge_dagster.deploy.config_export import (
        ExportedConfig,
        export_config,
        secret_field_paths,
    )
    from cartridge_dagster.deploy.helm import (
        DAGSTER_PG_SCHEME,
        helm_values,
        tag_concurrency_limits,
    )
    from cartridge_dagster.deploy.instance import instance_config
    from cartridge_dagster.deploy.k8s import (
        WARP_SCHEMA_TAG,
        DeployOptions,
        warp_deployment,
        warp_run_k8s_config,
        warp_run_tags,
    )
    from cartridge_dagster.deploy.prepare import PrepareError, prepare_dbt
    from cartridge_dagster.deploy.renderer import RenderResult, render, render_documents

_EXPORTS = {
    "ExportedConfig": "config_export",
    "export_config": "config_export",
    "secret_field_paths": "config_export",
    "DAGSTER_PG_SCHEME": "helm",
    "helm_values": "helm",
    "tag_concurrency_limits": "helm",
    "instance_config": "instance",
    "WARP_SCHEMA_TAG": "k8s",
    "DeployOptions": "k8s",
    "warp_deployment": "k8s",
    "warp_run_k8s_config": "k8s",
    "warp_run_tags": "k8s",
    "PrepareError": "prepare",
    "prepare_dbt": "prepare",
    "RenderResult": "renderer",
    "render": "renderer",
    "render_documents": "renderer",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
