#!/bin/sh
# The image's build steps, one per Docker layer. tests/integration/test_deploy_image.py runs the
# very same steps into a fresh virtual environment, so what the Dockerfile does is tested without
# a Docker engine.
#
#   install.sh deps      third-party packages from uv.lock (cached layer: changes with the lock)
#   install.sh project   Cartridge itself, as a wheel (not editable)
#   install.sh dbt       dbt deps + parse through dagster-dbt's prepare-and-package → manifest
#   install.sh check     the installed environment imports and its commands run
#
# Needs: uv on PATH, the working directory holding pyproject.toml and uv.lock, and
# UV_PROJECT_ENVIRONMENT naming the target environment.
set -eu

: "${UV_PROJECT_ENVIRONMENT:?set UV_PROJECT_ENVIRONMENT to the target environment}"
VENV_BIN="$UV_PROJECT_ENVIRONMENT/bin"
DBT_PROJECT_DIR="${CARTRIDGE_DBT_PROJECT_DIR:-dbt_project}"

case "${1:-}" in
  deps)
    uv sync --frozen --no-dev --no-editable --no-install-project
    ;;
  project)
    uv sync --frozen --no-dev --no-editable
    ;;
  dbt)
    # A DbtProject module of the project's own can be named with CARTRIDGE_DBT_PROJECT_FILE;
    # otherwise prepare-dbt writes a build-time one with a secret-free profile.
    if [ -n "${CARTRIDGE_DBT_PROJECT_FILE:-}" ]; then
      "$VENV_BIN/cartridge" deploy prepare-dbt --project-dir "$DBT_PROJECT_DIR" \
        --file "$CARTRIDGE_DBT_PROJECT_FILE"
    else
      "$VENV_BIN/cartridge" deploy prepare-dbt --project-dir "$DBT_PROJECT_DIR"
    fi
    test -f "$DBT_PROJECT_DIR/target/manifest.json"
    ;;
  check)
    "$VENV_BIN/python" -c "import cartridge_dagster.definitions, dagster_k8s, dagster_postgres, psycopg2"
    "$VENV_BIN/cartridge" --help >/dev/null
    "$VENV_BIN/dagster" --version
    ;;
  *)
    echo "usage: install.sh deps|project|dbt|check" >&2
    exit 2
    ;;
esac
