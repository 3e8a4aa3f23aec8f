#!/usr/bin/env bash
# make test: set up, start a throwaway PostgreSQL, run lint, types and tests, stop what we started.
set -euo pipefail
cd "$(dirname "$0")/.."
# write the bytecode cache (bootstrap.sh: modules are compiled by the first process importing them)
unset PYTHONDONTWRITEBYTECODE
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"  # dbt, dagster and cartridge from the project venv
export DBT_SEND_ANONYMOUS_USAGE_STATS=false DAGSTER_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
BIN=.venv/bin
scripts/ensure-browser.sh || echo "warning: no Chromium; browser tests will report why they skip" >&2

echo "==> ruff"
$BIN/ruff check .
$BIN/ruff format --check .
echo "==> mypy"
$BIN/mypy cartridge_dagster

started=0
if [ -z "${CARTRIDGE_TEST_POSTGRES_DSN:-}" ]; then
  echo "==> starting a throwaway PostgreSQL"
  $BIN/cartridge services up --state-dir .cartridge/test --ephemeral --quiet
  CARTRIDGE_TEST_POSTGRES_DSN=$($BIN/cartridge services url --state-dir .cartridge/test)
  export CARTRIDGE_TEST_POSTGRES_DSN
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then $BIN/cartridge services down --state-dir .cartridge/test --quiet || true; fi; }
trap cleanup EXIT

echo "==> pytest"
set +e
# Two workers (pytest-xdist): most integration tests wait on subprocesses (dagster dev, dbt, warp
# processes), so two at a time fit two cores. Each test has its own database and directories.
# CARTRIDGE_TEST_WORKERS=0 runs them in this one process.
$BIN/pytest -n "${CARTRIDGE_TEST_WORKERS:-2}" --durations=15 "$@"  # the slowest, in every log
rc=$?
set -e
if [ "$rc" = 5 ]; then
  echo "error: pytest collected no tests" >&2
fi
exit "$rc"
