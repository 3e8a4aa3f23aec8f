"""`cartridge deploy …`: render Kubernetes deployment files, prepare dbt for the image."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from cartridge_dagster.cli.common import console
from cartridge_dagster.cli.options import ConfigOption
from cartridge_dagster.config import DbtConfig

_DBT_DEFAULTS = DbtConfig()


def register(app: typer.Typer) -> None:
    """Add this capability's commands to ``app``."""
    deploy = typer.Typer(help="Kubernetes deployment: Helm values, manifests, image build steps.")
    deploy.command("render")(render_cmd)
    deploy.command("prepare-dbt")(prepare_dbt_cmd)
    app.add_typer(deploy, name="deploy")


def render_cmd(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write into (created if needed).")
    ],
    config: ConfigOption = None,
    image: Annotated[
        str | None,
        typer.Option("--image", help="Image as REPO[:TAG] (default cartridge-dagster:0.1.0)."),
    ] = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="Namespace.")] = "dagster",
    secret_name: Annotated[
        str, typer.Option("--secret-name", help="Secret with the CARTRIDGE_* connection strings.")
    ] = "cartridge-secrets",
    dagster_pg_host: Annotated[
        str, typer.Option("--dagster-pg-host", help="Host of Dagster's own metadata database.")
    ] = "dagster-postgresql",
    state_claim: Annotated[
        str | None,
        typer.Option(
            "--state-claim",
            help="Share state, generated models and the dbt manifest on this ReadWriteMany "
            "PersistentVolumeClaim (rendered too). Default: emptyDir, models baked in the image.",
        ),
    ] = None,
    state_storage_class: Annotated[
        str | None, typer.Option("--state-storage-class", help="Storage class of that claim.")
    ] = None,
    standalone: Annotated[
        bool,
        typer.Option(
            "--standalone/--no-standalone", help="Also render a plain warp Deployment per schema."
        ),
    ] = True,
) -> None:
    """Render Helm values and manifests for the configured schemas (no secret values)."""
    from cartridge_dagster.deploy import DeployOptions, render

    options = DeployOptions.with_image(
        image,
        namespace=namespace,
        secret_name=secret_name,
        dagster_pg_host=dagster_pg_host,
        state_claim=state_claim,
        state_storage_class=state_storage_class,
    )
    result = render(config, output, options, standalone=standalone)
    for name in result.files:
        console.print(f"wrote {result.output / name}")
    console.print(
        f"warp schemas: {', '.join(result.schemas)} · the Secret {options.secret_name!r} needs: "
        + ", ".join(result.secret_env)
    )
    console.print(f"next: read {result.output / 'README.md'}")


def prepare_dbt_cmd(
    project_dir: Annotated[
        Path, typer.Option("--project-dir", help="The dbt project directory.")
    ] = Path(_DBT_DEFAULTS.project_dir),
    target: Annotated[str, typer.Option("--target", help="dbt target name.")] = (
        _DBT_DEFAULTS.target
    ),
    file: Annotated[
        Path | None,
        typer.Option("--file", help="A module defining the DbtProject (default: one is written)."),
    ] = None,
) -> None:
    """Run dagster-dbt's prepare-and-package (dbt deps + parse) to build the manifest."""
    from cartridge_dagster.deploy.prepare import prepare_dbt

    with tempfile.TemporaryDirectory(prefix="cartridge-dbt-") as work:
        manifest = prepare_dbt(
            project_dir, target=target, work_dir=Path(work), definition_file=file
        )
    console.print(f"manifest: {manifest}")
