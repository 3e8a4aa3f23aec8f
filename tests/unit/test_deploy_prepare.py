"""Build-time dbt preparation: the profile holds no secret, errors are one clean line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cartridge_dagster.cli import _run
from cartridge_dagster.deploy.prepare import (
    build_profiles_yaml,
    dbt_project_definition,
    profile_name,
)
from cartridge_dagster.errors import ConfigError
from tests.support.services import REPO


def test_build_profile_reads_everything_from_the_environment() -> None:
    profile = yaml.safe_load(build_profiles_yaml("cartridge", "prod"))
    assert profile["cartridge"]["target"] == "prod"
    output = profile["cartridge"]["outputs"]["prod"]
    assert output["type"] == "postgres"
    for key in ("host", "user", "password", "dbname", "schema"):
        assert output[key].startswith("{{ env_var('CARTRIDGE_DBT_"), key
    assert "''" in output["password"]  # default is empty: no credential is ever written


def test_definition_file_is_python_that_names_the_project(tmp_path: Path) -> None:
    source = dbt_project_definition(tmp_path / "proj", tmp_path / "profiles", "cartridge")
    code = compile(source, "cartridge_build_project.py", "exec")
    assert "DbtProject" in code.co_names
    assert repr(str(tmp_path / "proj")) in source and "target='cartridge'" in source


def test_profile_name_comes_from_the_real_project() -> None:
    if not (REPO / "dbt_project" / "dbt_project.yml").is_file():
        pytest.skip("the dbt project has not been generated in this checkout")
    assert profile_name(REPO / "dbt_project") == "cartridge"


def test_missing_project_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dbt_project\.yml not found"):
        profile_name(tmp_path)
    (tmp_path / "dbt_project.yml").write_text("name: x\n")
    with pytest.raises(ConfigError, match="no `profile:`"):
        profile_name(tmp_path)


def test_cli_reports_a_missing_project_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = _run(["deploy", "prepare-dbt", "--project-dir", str(tmp_path / "none")], "cartridge")
    err = capsys.readouterr().err.replace("\n", "")
    assert rc == 2
    assert "dbt_project.yml not found" in err and "Traceback" not in err
