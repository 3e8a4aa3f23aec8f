"""The dbt project as Dagster assets (dagster-dbt), mapped onto Cartridge's asset keys.

- dbt sources of a Cartridge schema (``meta.cartridge.{schema, collection}``) are warp's raw
  tables: their key is ``raw/<S>/<C>``, the asset warp defines, so lineage is one graph.
- generated models get ``staging/<S>/<model>``, are grouped per schema, and also depend on
  ``cartridge/<S>/dbt_models`` (the generation step that wrote them).
- hand-written models keep dagster-dbt's defaults (group ``dbt``).
- generated models carry their schema's automation condition
  (:func:`cartridge_dagster.sensors.automation.staging_condition`); every dbt run is in the
  ``cartridge_dbt`` pool (one dbt project: one build at a time, whoever launched it).

The manifest comes from a cached :class:`DbtProject` that runs ``dbt parse`` under
``dagster dev`` (``prepare_if_dev``) unless ``target/manifest.json`` is newer than every file
and folder of the project (models, macros, tests, YAML, ``dbt_project.yml``: see
:func:`manifest_is_current`); the ``dbt_models`` asset parses after writing files, so a code
location reload shows new models. No manifest (nothing generated yet) → no dbt assets.
"""

import contextlib
import functools
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import (
    DagsterDbtTranslator,
    DbtCliResource,
    DbtProject,
    dbt_assets,
)

from cartridge_dagster.assets.keys import dbt_models_key, raw_key, staging_key
from cartridge_dagster.assets.stopping import (
    end_canceled,
    report_canceling,
    run_stopping,
    signals_taken,
)
from cartridge_dagster.config import CartridgeSettings
from cartridge_dagster.init.dbtcli import profiles_dir, settings_dbt_env
from cartridge_dagster.resources import CartridgeResource, PostgresResource
from cartridge_dagster.scope import BuildScope, building, current_scope
from cartridge_dagster.sensors.automation import DBT_POOL, staging_condition

__all__ = [
    "CartridgeDbtTranslator",
    "build_dbt_assets",
    "cartridge_dbt_project",
    "manifest_is_current",
    "staging_key",
]


def _cartridge_meta(props: Mapping[str, Any]) -> dict[str, Any]:
    for meta in (props.get("meta") or {}, (props.get("config") or {}).get("meta") or {}):
        value = meta.get("cartridge")
        if isinstance(value, dict):
            return value
    if props.get("resource_type") == "source":
        value = (props.get("source_meta") or {}).get("cartridge")
        if isinstance(value, dict):
            return value
    return {}


class CartridgeDbtTranslator(DagsterDbtTranslator):
    """dbt sources → ``raw/S/C``; generated models → ``staging/S/<model>`` grouped by schema,
    automated by their schema's condition when ``settings`` are given.

    Keeps the build scope it was made in (key prefix, group template): dagster-dbt asks it for
    keys again while a run streams dbt's events, outside the build."""

    def __init__(
        self,
        settings: CartridgeSettings | None = None,
        *,
        scope: BuildScope | None = None,
    ) -> None:
        super().__init__()
        self.scope = scope or current_scope()
        with building(self.scope):
            self._conditions = (
                {s.name: staging_condition(s) for s in settings.schemas} if settings else {}
            )

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        with building(self.scope):
            meta = _cartridge_meta(dbt_resource_props)
            kind = dbt_resource_props.get("resource_type")
            if kind == "source" and meta.get("schema") and meta.get("collection"):
                return raw_key(str(meta["schema"]), str(meta["collection"]))
            if kind == "model" and meta.get("schema"):
                return staging_key(str(meta["schema"]), str(dbt_resource_props["name"]))
            default = super().get_asset_key(dbt_resource_props)
            return dg.AssetKey([*self.scope.key_prefix, *default.path])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        meta = _cartridge_meta(dbt_resource_props)
        if meta.get("schema"):
            return self.scope.group_for(str(meta["schema"]))
        return "dbt"

    def get_asset_spec(
        self, manifest: Mapping[str, Any], unique_id: str, project: DbtProject | None
    ) -> dg.AssetSpec:
        spec = super().get_asset_spec(manifest, unique_id, project)
        props = self.get_resource_props(manifest, unique_id)
        meta = _cartridge_meta(props)
        if props.get("resource_type") == "model" and meta.get("schema"):
            schema = str(meta["schema"])
            with building(self.scope):
                generated = dbt_models_key(schema)
            if all(dep.asset_key != generated for dep in spec.deps):
                spec = spec.replace_attributes(deps=[*spec.deps, dg.AssetDep(generated)])
            condition = self._conditions.get(schema)
            if condition is not None:
                spec = spec.replace_attributes(automation_condition=condition)
        return spec


#: Folders of a dbt project that dbt writes or installs into; they do not change the parse.
_NOT_PARSED = frozenset({"target", "logs", "dbt_packages", "dbt_internal_packages"})


def manifest_is_current(project: DbtProject) -> bool:
    """Whether ``project``'s manifest is newer than everything ``dbt parse`` reads: every file
    and every folder (a deleted model changes its folder's time) of the project outside
    ``target/``, ``logs/`` and installed packages (the project folder's own time is not looked
    at: dbt creates those in it). Loading the code location then skips the
    parse (seconds of CPU per load: each ``dagster dev`` process and each run worker loads)."""
    try:
        manifest = project.manifest_path.stat().st_mtime_ns
    except FileNotFoundError:
        return False
    skip = _NOT_PARSED | {Path(project.target_path).parts[0]}
    for root, dirs, files in os.walk(project.project_dir):
        if Path(root) == Path(project.project_dir):
            dirs[:] = [d for d in dirs if d not in skip and not d.startswith(".")]
        for name in [*dirs, *files]:
            try:
                if Path(root, name).stat().st_mtime_ns >= manifest:
                    return False
            except FileNotFoundError:  # removed while walking: something changed
                return False
    return True


@functools.cache
def cartridge_dbt_project(project_dir: str) -> DbtProject:
    """The dbt project, prepared (``dbt parse``) under ``dagster dev`` unless its manifest is
    already newer than its sources (:func:`manifest_is_current`)."""
    path = Path(project_dir).resolve()
    project = DbtProject(project_dir=path, profiles_dir=profiles_dir(path))
    if not manifest_is_current(project):
        project.prepare_if_dev()
    return project


def _has_models(manifest_path: Path, excluded_tags: frozenset[str] = frozenset()) -> bool:
    import json

    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(
        n.get("resource_type") == "model" and not excluded_tags & set(n.get("tags") or ())
        for n in manifest.get("nodes", {}).values()
    )


def build_dbt_assets(settings: CartridgeSettings) -> list[dg.AssetsDefinition]:
    """The dbt models as assets, or nothing when the project has no parsed models yet."""
    project_path = Path(settings.dbt.project_dir)
    if not (project_path / "dbt_project.yml").exists():
        return []
    project = cartridge_dbt_project(str(project_path))
    # the generated models of schemas a component leaves out (tagged ``cartridge_<S>``)
    excluded = frozenset(f"cartridge_{s}" for s in current_scope().excluded_schemas)
    if not project.manifest_path.exists() or not _has_models(project.manifest_path, excluded):
        return []
    translator = CartridgeDbtTranslator(settings)

    @dbt_assets(
        manifest=project.manifest_path,
        project=project,
        exclude=" ".join(f"tag:{t}" for t in sorted(excluded)) or None,
        dagster_dbt_translator=translator,
        name="cartridge_dbt_models",
        op_tags={"cartridge/kind": "dbt"},
        pool=DBT_POOL,
    )
    def cartridge_dbt_models(
        context: dg.AssetExecutionContext,
        dbt: DbtCliResource,
        cartridge: CartridgeResource,
        postgres: PostgresResource,
    ) -> Iterator[Any]:
        # The committed profile reads the connection from the environment; fill it from the
        # Cartridge config (the password goes to a DBT_ENV_SECRET_ variable dbt scrubs).
        os.environ.update(settings_dbt_env(cartridge.settings(), postgres.url()))
        invocation = dbt.cli(["build"], context=context, raise_on_error=False)
        stop = _DbtStop(invocation.process)
        # Dagster puts its interrupting handler back each time it resumes this generator, so
        # the signals are taken around each wait for dbt's next event (and dbt's exit), not
        # across the yields. The models dbt finishes before a stop keep their
        # materializations: dbt's events are read to the end of its output after the stop.
        events = iter(invocation.stream())
        while True:
            with signals_taken(stop.signaled):
                event = next(events, _END)
                if event is _END:
                    invocation.process.wait()
                    break
            yield event
        stopped = stop.signal is not None or not invocation.is_successful()
        terminated = stopped and run_stopping(context)
        if stop.signal is not None or terminated:
            why = "run termination requested" if terminated else f"{stop.signal} received"
            context.log.info(
                f"{why}: dbt build stopped (exit code {invocation.process.returncode}); the "
                "models it finished are materialized"
            )
            if not terminated:
                report_canceling(context, f"{why} by the run worker: dbt build stopped cleanly")
            return
        error = invocation.get_error()
        if error is not None:
            raise error

    return [cartridge_dbt_models.with_hooks({end_canceled})]


_END = object()


class _DbtStop:
    """A stop signal (or a termination, which reaches the worker as SIGINT) during ``dbt
    build``: dbt is asked to stop as on Ctrl-C (SIGINT: it cancels its queries, writes its
    results and exits); a second signal kills it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self.signal: str | None = None

    def signaled(self, signame: str) -> None:
        first = self.signal is None
        self.signal = self.signal or signame
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if first:
                self.process.send_signal(signal.SIGINT)
            else:
                self.process.kill()
