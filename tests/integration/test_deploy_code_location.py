"""The real code location's warp jobs fit the deployment: one pod per schema, sized per schema.

Loads ``cartridge_dagster.definitions`` for the multi-schema example (no service is contacted)
and checks each ``warp_<schema>`` job's run tags against what the Helm values and the instance
rely on: the concurrency key ``cartridge/warp_schema`` carries the schema name, and the
``dagster-k8s/config`` tag is valid for dagster-k8s, sizes the pod with the schema's
``k8s_resources``, and agrees with :func:`cartridge_dagster.deploy.warp_run_k8s_config`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from cartridge_dagster.config import load_settings
from cartridge_dagster.deploy import warp_run_k8s_config
from cartridge_dagster.deploy.k8s import WARP_SCHEMA_TAG
from tests.support.services import REPO

pytestmark = pytest.mark.integration

MULTI = REPO / "examples" / "mongodb-to-postgresql-multi.yaml"


def _is_subset(part: Any, whole: Any) -> bool:
    if isinstance(part, dict):
        return isinstance(whole, dict) and all(
            key in whole and _is_subset(value, whole[key]) for key, value in part.items()
        )
    return bool(part == whole)


def test_each_warp_job_carries_its_schema_and_pod_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    from dagster_k8s.job import get_user_defined_k8s_config

    from cartridge_dagster.definitions import build_definitions

    monkeypatch.chdir(REPO)  # the dbt project is found relative to the working directory
    for name in [n for n in os.environ if n.startswith("CARTRIDGE_")]:
        monkeypatch.delenv(name)
    settings = load_settings(MULTI)
    defs = build_definitions(str(MULTI))
    for schema in settings.schemas:
        job = defs.resolve_job_def(f"warp_{schema.name}")
        tags = {k: v if isinstance(v, str) else json.dumps(v) for k, v in job.run_tags.items()}
        assert tags[WARP_SCHEMA_TAG] == schema.name
        k8s = get_user_defined_k8s_config(tags)  # raises if dagster-k8s would reject it
        assert dict(k8s.container_config)["resources"] == schema.k8s_resources
        assert _is_subset(json.loads(tags["dagster-k8s/config"]), warp_run_k8s_config(schema))
