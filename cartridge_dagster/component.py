"""Cartridge as a Dagster component: drop the whole pipeline into a team's own ``dg`` project.

``CartridgeComponent`` builds what the repo's code location builds (``definitions.py`` is one
use of it): per schema the catalog, schema and dbt-models assets, warp's raw tables, job and
supervisor, the dbt models, the analytics assets, checks, jobs, sensors and schedules, and the
resources they need. In a ``defs.yaml``::

    type: cartridge_dagster.CartridgeComponent
    attributes:
      config_path: cartridge.yaml        # relative to the project root; or `config:` inline
      schemas: [shop]                    # optional: a subset of the configured schemas
      key_prefix: [cartridge]            # optional: cartridge/raw/shop/orders, ...
      group_name: "cartridge_{schema}"   # optional: the group of a schema's assets

The collections of each schema (one ``raw/S/C`` and ``analytics/S/C`` asset each) are component
state: ``dg utils refresh-defs-state`` records what the last ``cartridge scan`` (or the catalog
and schema assets) found, and loading reads only that record. ``dagster dev`` refreshes it on
every load (``defs_state.refresh_if_dev``), so a scan followed by a reload shows new collections.
The repo's own code location uses ``collections_from: scan``: no recorded state, the scan's files
are read at every load (what ``make demo`` relies on).
"""

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import dagster as dg
import yaml
from dagster.components import (
    DefsStateConfig,
    DefsStateConfigArgs,
    ResolvedDefsStateConfig,
    Scaffolder,
    ScaffoldRequest,
    scaffold_component,
    scaffold_with,
)
from dagster_shared.serdes.objects.models.defs_state_info import DefsStateManagementType
from pydantic import BaseModel, Field

from cartridge_dagster.config import (
    CartridgeSettings,
    find_config_file,
    load_settings,
    settings_from_mapping,
)
from cartridge_dagster.errors import ConfigError
from cartridge_dagster.observability import get_logger
from cartridge_dagster.scope import BuildScope, building
from cartridge_dagster.state import scanned_collections

__all__ = ["CartridgeComponent", "CartridgeComponentScaffolder", "build_cartridge_defs"]

log = get_logger("cartridge.component")

#: The component's state file: ``{"format": 1, "schemas": {schema: [collection, ...]}}``.
STATE_FORMAT = 1


def build_cartridge_defs(settings: CartridgeSettings, config_path: str) -> dg.Definitions:
    """Every Cartridge definition for ``settings`` (in the current build scope)."""
    from cartridge_dagster.assets.analytics import build_analytics_defs
    from cartridge_dagster.assets.catalog import build_catalog_defs
    from cartridge_dagster.assets.init import build_init_defs
    from cartridge_dagster.assets.warp import build_warp_defs
    from cartridge_dagster.resources import build_resources

    builders = [build_warp_defs, build_catalog_defs, build_init_defs, build_analytics_defs]
    return dg.Definitions.merge(
        *(builder(settings) for builder in builders),
        # Steps run in the run's own process: a subprocess per step costs seconds of imports
        # (dagster, dbt) and buys nothing here; on Kubernetes each run is already its own pod.
        dg.Definitions(resources=build_resources(config_path), executor=dg.in_process_executor),
    )


def _inline_config_file(data: Mapping[str, Any], settings: CartridgeSettings) -> Path:
    """Inline configuration as a file, for the resources and runs (they take a path).

    ``<state_dir>/component/config-<digest>.yaml``, rewritten only when it changes, readable by
    its owner only. Secrets belong in ``CARTRIDGE_…`` environment variables, not in defs.yaml.
    """
    text = yaml.safe_dump(dict(data), sort_keys=True, allow_unicode=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = settings.state_path / "component" / f"config-{digest}.yaml"
    content = "# written by cartridge_dagster.CartridgeComponent\n" + text
    if path.exists() and path.read_text(encoding="utf-8") == content:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when a stale temporary file had another mode
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)
    tmp.replace(path)
    return path


def _state_storage() -> Any:
    """The defs state storage of the Dagster instance in context (None outside one)."""
    # the same lookup StateBackedComponent.build_defs makes; Dagster has no public name for it
    from dagster._core.storage.defs_state.base import DefsStateStorage

    return DefsStateStorage.get()


def write_state(state_path: Path, settings: CartridgeSettings, schemas: list[str]) -> None:
    """The component's state file: each schema's collections as the last scan recorded them."""
    state = {
        "format": STATE_FORMAT,
        "schemas": {name: scanned_collections(settings, name) for name in schemas},
    }
    state_path.parent.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def record_state(
    instance: dg.DagsterInstance, key: str, settings: CartridgeSettings, schemas: list[str]
) -> str | None:
    """Record the collections of ``schemas`` as a new version of the component state ``key``
    in the instance's defs state storage (what a scan run does, so the next load of the code
    location builds from what it found). Returns the version, or None without a storage."""
    storage = instance.defs_state_storage
    if storage is None:
        return None
    version = str(uuid.uuid4())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state"
        write_state(path, settings, schemas)
        storage.upload_state_from_path(key, version=version, path=path)
    return version


# --------------------------------------------------------------------------- scaffolding

STARTER_CONFIG = """\
# A starter Cartridge configuration (docs/configuration.md). Connection strings with secrets
# belong in the environment: CARTRIDGE_SOURCE__CONNECTION_STRING,
# CARTRIDGE_DESTINATION__CONNECTION_STRING.
source:
  type: mongodb
  connection_string: mongodb://localhost:27017/?replicaSet=rs0
destination:
  type: postgresql
  connection_string: postgresql://localhost:5432/warehouse
schemas:
  - name: app
    source_database: app
    target_schema: raw_app
"""


class CartridgeScaffoldParams(BaseModel):
    config_path: str | None = Field(
        default=None,
        description="An existing Cartridge configuration, relative to the project root. "
        "Without it a starter cartridge.yaml is written beside defs.yaml.",
    )
    schemas: list[str] | None = Field(default=None, description="Build only these schemas.")
    key_prefix: list[str] | None = Field(default=None, description="Asset-key prefix parts.")


class CartridgeComponentScaffolder(Scaffolder[CartridgeScaffoldParams]):
    @classmethod
    def get_scaffold_params(cls) -> type[CartridgeScaffoldParams]:
        return CartridgeScaffoldParams

    def scaffold(self, request: ScaffoldRequest[CartridgeScaffoldParams]) -> None:
        root = request.project_root or Path.cwd()
        params = request.params
        if params.config_path is not None:
            config_path = params.config_path
            if not (root / config_path).is_file():
                raise ConfigError(f"--config-path: {root / config_path} is not a file")
            configured = [s.name for s in load_settings(root / config_path).schemas]
            unknown = [s for s in params.schemas or () if s not in configured]
            if unknown:
                raise ConfigError(
                    f"--schemas: {', '.join(unknown)} not in {config_path} "
                    f"(configured: {', '.join(configured)})"
                )
        else:
            starter = request.target_path / "cartridge.yaml"
            if not starter.exists():
                starter.parent.mkdir(parents=True, exist_ok=True)
                starter.write_text(STARTER_CONFIG, encoding="utf-8")
            config_path = os.path.relpath(starter, root)
        attributes: dict[str, Any] = {"config_path": config_path}
        if params.schemas:
            attributes["schemas"] = params.schemas
        if params.key_prefix:
            attributes["key_prefix"] = params.key_prefix
        scaffold_component(request, attributes)


# --------------------------------------------------------------------------- the component


@scaffold_with(CartridgeComponentScaffolder)
@dataclass
class CartridgeComponent(dg.StateBackedComponent, dg.Resolvable):
    """Cartridge's whole pipeline (warp CDC, generated dbt models, analytics) for a set of schemas.

    Scaffold one with ``dg scaffold defs cartridge_dagster.CartridgeComponent <path>``
    (``--config-path cartridge.yaml`` to use an existing configuration).
    """

    config_path: str | None = field(
        default=None,
        metadata={
            "description": "The Cartridge configuration file (docs/configuration.md), relative "
            "to the project root. Default: $CARTRIDGE_CONFIG, else ./cartridge.yaml."
        },
    )
    config: dict[str, Any] | None = field(
        default=None,
        metadata={
            "description": "The configuration inline (the cartridge.yaml model) instead of a "
            "file. Secrets go in CARTRIDGE_* environment variables."
        },
    )
    schemas: list[str] | None = field(
        default=None, metadata={"description": "Build only these configured schemas."}
    )
    key_prefix: list[str] = field(
        default_factory=list,
        metadata={"description": "Prepended to every asset key, one list item per part."},
    )
    group_name: str = field(
        default="{schema}",
        metadata={"description": "Group of a schema's assets; {schema} is its name."},
    )
    collections_from: Literal["state", "scan"] = field(
        default="state",
        metadata={
            "description": "`state`: the collections recorded by `dg utils refresh-defs-state`; "
            "`scan`: read the last scan's local files at every load."
        },
    )
    defs_state: ResolvedDefsStateConfig = field(
        default_factory=DefsStateConfigArgs.local_filesystem
    )

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> Self:
        component = super().load(attributes, context)
        # the project root it was loaded in: a relative `config_path` follows it when
        # `dg utils refresh-defs-state` writes the state (which gets no context)
        object.__setattr__(component, "_loaded_root", context.project_root)
        return component

    # ----------------------------------------------------------------- configuration

    def _settings(self, project_root: Path | None = None) -> tuple[CartridgeSettings, str]:
        """The validated settings (narrowed to ``schemas``) and the config file's path."""
        if self.config is not None and self.config_path is not None:
            raise ConfigError("CartridgeComponent: set config_path or config, not both")
        if self.config is not None:
            settings = settings_from_mapping(self.config, origin="defs.yaml: config")
            path = str(_inline_config_file(self.config, settings))
        else:
            explicit = self.config_path
            if explicit and project_root is not None and not Path(explicit).is_absolute():
                explicit = str(project_root / explicit)
            path = str(find_config_file(explicit))
            settings = load_settings(path)
        return self._narrowed(settings), path

    def _narrowed(self, settings: CartridgeSettings) -> CartridgeSettings:
        if self.schemas is None:
            return settings
        known = [s.name for s in settings.schemas]
        unknown = [s for s in self.schemas if s not in known]
        if unknown or not self.schemas:
            raise ConfigError(
                f"CartridgeComponent: schemas: {', '.join(map(repr, unknown)) or 'empty list'} "
                f"not in the configuration (configured: {', '.join(known)})"
            )
        kept = [s for s in settings.schemas if s.name in self.schemas]
        return settings.model_copy(update={"schemas": kept})

    def _excluded(self, settings: CartridgeSettings, path: str) -> tuple[str, ...]:
        if self.schemas is None:
            return ()
        configured = load_settings(path).schemas
        return tuple(s.name for s in configured if s.name not in self.schemas)

    # ----------------------------------------------------------------- state

    @property
    def defs_state_config(self) -> DefsStateConfig:
        if self.config is not None:
            text = json.dumps(self.config, sort_keys=True, default=str)
            source = "inline-" + hashlib.sha256(text.encode()).hexdigest()[:12]
        else:
            source = self.config_path or os.environ.get("CARTRIDGE_CONFIG") or "cartridge.yaml"
        schemas = ",".join(self.schemas) if self.schemas is not None else "*"
        return DefsStateConfig.from_args(
            self.defs_state, default_key=f"CartridgeComponent[{source}:{schemas}]"
        )

    def write_state_to_path(self, state_path: Path) -> None:
        """Record each schema's collections as the last scan found them (no connection)."""
        settings, _ = self._settings(getattr(self, "_loaded_root", None))
        write_state(state_path, settings, [s.name for s in settings.schemas])

    @staticmethod
    def read_state(state_path: Path) -> dict[str, tuple[str, ...]]:
        try:
            data = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"CartridgeComponent: unreadable state {state_path} ({exc}); "
                "run `dg utils refresh-defs-state`"
            ) from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ConfigError(
                f"CartridgeComponent: state {state_path} has another format; "
                "run `dg utils refresh-defs-state`"
            )
        return {str(k): tuple(str(c) for c in v) for k, v in data["schemas"].items()}

    # ----------------------------------------------------------------- building

    def _versioned(self) -> bool:
        return (
            self.defs_state_config.management_type
            == DefsStateManagementType.VERSIONED_STATE_STORAGE
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        if self.collections_from == "scan":  # no recorded state: the scan's files, every load
            return self.build_defs_from_state(context, state_path=None)
        if self._versioned() and _state_storage() is None:
            # built outside a Dagster instance (a script, a test): no storage to read, and
            # Dagster would raise; the scan's files it is
            return self.build_defs_from_state(context, state_path=None)
        try:
            return super().build_defs(context)
        except ValueError as exc:
            # a version recorded by a run whose storage this process cannot read (a local
            # `defs_state_storage` on another pod's disk): load from the scan's files, say why
            if not str(exc).startswith("No state found for key"):
                raise
            log.warning(
                "component.state.unreadable",
                key=self.defs_state_config.key,
                hint="give the instance a defs_state_storage every pod reads (docs/component.md)",
            )
            return self.build_defs_from_state(context, state_path=None)

    def build_defs_from_state(
        self, context: dg.ComponentLoadContext, state_path: Path | None
    ) -> dg.Definitions:
        settings, path = self._settings(context.project_root)
        collections = None
        if self.collections_from == "state":
            if state_path is None and self._versioned():
                # nothing recorded in the instance yet: the scan's local files (if any) until
                # the schema assets' first scan records the collections
                log.debug("component.state.none_yet", key=self.defs_state_config.key)
            elif state_path is None:
                log.warning(
                    "component.state.missing",
                    hint="run `dg utils refresh-defs-state`; using the last scan's local files",
                )
            else:
                collections = self.read_state(state_path)
        scope = BuildScope(
            key_prefix=tuple(self.key_prefix),
            group_name=self.group_name,
            collections=collections,
            excluded_schemas=self._excluded(settings, path),
            state_key=(
                self.defs_state_config.key
                if self.collections_from == "state"
                and self._versioned()
                and _state_storage() is not None
                else None
            ),
        )
        with building(scope):
            return build_cartridge_defs(settings, path)
