"""The ``dbt`` resource: dagster-dbt's CLI resource for Cartridge's dbt project.

The profile (``<project>/profiles/profiles.yml``) holds no secret: the dbt assets fill its
environment variables from the Cartridge config at run time.
"""

from pathlib import Path

from dagster_dbt import DbtCliResource

from cartridge_dagster.config import load_settings
from cartridge_dagster.init.dbtcli import dbt_executable

__all__ = ["build_dbt_resource", "build_dbt_resources"]


def build_dbt_resource(config_path: str) -> DbtCliResource:
    """The ``dbt`` resource for the configured project (reads the config file, no I/O else)."""
    settings = load_settings(config_path)
    path = Path(settings.dbt.project_dir).resolve()
    return DbtCliResource(
        project_dir=str(path),
        profiles_dir=str(path / "profiles"),
        dbt_executable=dbt_executable()[0],
    )


def build_dbt_resources(config_path: str) -> dict[str, DbtCliResource]:
    """``{"dbt": …}`` when the configured dbt project exists, else ``{}``.

    Without a project there are no dbt assets either (``build_dbt_assets``), so the code
    location still loads (e.g. from another working directory, where a relative
    ``dbt.project_dir`` does not resolve).
    """
    settings = load_settings(config_path)
    if not (Path(settings.dbt.project_dir) / "dbt_project.yml").exists():
        return {}
    return {"dbt": build_dbt_resource(config_path)}
