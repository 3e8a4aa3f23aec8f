#!/usr/bin/env bash
# make bench: every benchmark in tests/performance/, against a throwaway PostgreSQL, each printing
# a table of measured rates and ratios against baselines measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
# write the bytecode cache (bootstrap.sh: modules are compiled by the first process importing them)
unset PYTHONDONTWRITEBYTECODE
CARTRIDGE_EXTRAS="dev demo bench" scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"  # dbt, dagster and cartridge from the project venv
export DBT_SEND_ANONYMOUS_USAGE_STATS=false DAGSTER_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
BIN=.venv/bin
$BIN/cartridge services up --state-dir .cartridge/bench --ephemeral --quiet
CARTRIDGE_TEST_POSTGRES_DSN=$($BIN/cartridge services url --state-dir .cartridge/bench)
export CARTRIDGE_TEST_POSTGRES_DSN
trap '$BIN/cartridge services down --state-dir .cartridge/bench --quiet || true' EXIT
shopt -s nullglob
benches=(tests/performance/bench_*.py)
if [ ${#benches[@]} -eq 0 ]; then echo "error: no benchmarks in tests/performance/" >&2; exit 1; fi
for file in "${benches[@]}"; do
  module=${file%.py}; module=${module//\//.}
  echo "==> $module"
  $BIN/python -m "$module"
done
