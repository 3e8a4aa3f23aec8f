#!/usr/bin/env bash
# make soak: warp's chaos test for a long time over many seeds (writer processes, SIGKILLs,
# an oracle), on the embedded engine and the replica-set test server (SOAK_MINUTES, 20), then
# with a PostgreSQL source (SOAK_PG_MINUTES, 10).
set -euo pipefail
cd "$(dirname "$0")/.."
# write the bytecode cache (bootstrap.sh: modules are compiled by the first process importing them)
unset PYTHONDONTWRITEBYTECODE
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" DBT_SEND_ANONYMOUS_USAGE_STATS=false PYTHONUNBUFFERED=1
BIN=.venv/bin
$BIN/cartridge services up --state-dir .cartridge/soak --ephemeral --quiet
trap '$BIN/cartridge services down --state-dir .cartridge/soak --quiet || true' EXIT
CARTRIDGE_TEST_POSTGRES_DSN=$($BIN/cartridge services url --state-dir .cartridge/soak)
export CARTRIDGE_TEST_POSTGRES_DSN
rc=0
$BIN/python -m tests.support.chaos soak --minutes "${SOAK_MINUTES:-20}" --seconds "${SOAK_SECONDS:-45}" || rc=$?
# then the PostgreSQL source: writer processes, SIGKILLs, a column added mid-run, the cast-back
# oracle (SOAK_PG_MINUTES, 10)
$BIN/python -m tests.support.pg_chaos soak --minutes "${SOAK_PG_MINUTES:-10}" \
  --seconds "${SOAK_PG_SECONDS:-30}" || rc=$?
exit "${rc:-0}"
