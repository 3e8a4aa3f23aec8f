#!/usr/bin/env bash
# make demo: set up, start PostgreSQL, seed the embedded demo source, run the Dagster UI with
# live traffic. Ctrl-C stops everything it started (PostgreSQL keeps running: `make services-down`).
set -euo pipefail
cd "$(dirname "$0")/.."
# write the bytecode cache (bootstrap.sh: modules are compiled by the first process importing them)
unset PYTHONDONTWRITEBYTECODE
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"  # dbt, dagster and cartridge from the project venv
export DBT_SEND_ANONYMOUS_USAGE_STATS=false DAGSTER_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
export CARTRIDGE_CONFIG="${CARTRIDGE_CONFIG:-examples/demo.yaml}"
export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/.cartridge/dagster_home}"
BIN=$PWD/.venv/bin
PORT="${CARTRIDGE_DEMO_PORT:-3000}"
export DAGSTER_WEBSERVER_URL="http://127.0.0.1:$PORT"  # assets reload the code location here

echo "==> PostgreSQL"
$BIN/cartridge services up
mkdir -p "$DAGSTER_HOME"
# the local instance (not in the working directory: Dagster warns about a dagster.yaml there)
cp deploy/local/dagster.yaml "$DAGSTER_HOME/dagster.yaml"

SCHEMAS=(shop billing)
first=0
done_marker=.cartridge/demo-first-run.done  # written by first_run once the whole graph is built
if [ ! -f "$done_marker" ]; then
  first=1
  # Before the UI starts, through Dagster, in one process (cartridge_dagster/demo/first_run.py):
  # every source seeded (one process each, at once), then each schema scanned and its dbt
  # models generated as its seed ends, warp's snapshot, the staging models, the summaries and
  # every check. The UI's first load has the whole graph, materialized.
  log=.cartridge/demo-first-run.log
  echo "==> first start: seed the demo sources, build the whole graph through Dagster (log: $log)"
  # Ctrl-C here stops the first build (it starts again at the next make demo)
  trap 'echo "stopped during the first start; the next make demo builds the graph again" >&2; exit 0' INT TERM
  if ! $BIN/python -m cartridge_dagster.demo.first_run --scale "${CARTRIDGE_DEMO_SCALE:-1.0}" 2> "$log"; then
    tail -n 40 "$log" >&2
    echo "error: the demo's first build failed (whole log: $log)" >&2
    exit 1
  fi
  trap - INT TERM
else
  echo "==> demo source ($CARTRIDGE_CONFIG)"
  $BIN/cartridge demo seed --if-empty --scale "${CARTRIDGE_DEMO_SCALE:-1.0}"
fi

pids=()
dev_pid=""
alive() {
  local pid
  for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
  return 1
}
# Ctrl-C / SIGTERM: the daemon is stopped first (its sensors would launch new runs while the
# others stop), then the runs in progress are canceled through Dagster (they end CANCELED, warp's
# checkpoint committed; a run worker only killed would end FAILED and be shown again at the next
# start), then every process group started here is stopped (killed after 30 s), and the demo
# exits 0. Further signals are ignored meanwhile: make passes its own SIGTERM on, and a second
# Ctrl-C would otherwise leave the process groups running.
cleanup() {
  trap - EXIT
  trap '' INT TERM
  if [ -n "$dev_pid" ] && kill -0 "$dev_pid" 2>/dev/null; then
    daemon=$(pgrep -P "$dev_pid" -f 'dagster._daemon' || true)
    if [ -n "$daemon" ]; then
      kill -TERM $daemon 2>/dev/null || true
      for _ in $(seq 1 30); do kill -0 $daemon 2>/dev/null || break; sleep 1; done
    fi
    $BIN/python scripts/cancel_runs.py "$DAGSTER_WEBSERVER_URL" 60 || true
  fi
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 30); do alive || break; sleep 1; done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

echo "==> live traffic on the demo source (cartridge demo traffic)"
setsid $BIN/cartridge demo traffic --rate "${CARTRIDGE_DEMO_RATE:-2}" > .cartridge/demo-traffic.log 2>&1 &
pids+=($!)

REPORTS_PORT="${CARTRIDGE_REPORTS_PORT:-8765}"
echo "==> analytics reports on http://127.0.0.1:$REPORTS_PORT (cartridge serve-reports)"
setsid $BIN/cartridge serve-reports --port "$REPORTS_PORT" > .cartridge/demo-reports.log 2>&1 &
pids+=($!)
export CARTRIDGE_REPORTS_URL="http://127.0.0.1:$REPORTS_PORT"

echo "==> Dagster UI on http://127.0.0.1:$PORT"
# `dg dev` (dagster-dg-cli) where installed: `dagster dev` is superseded and says so at each start.
DEV=("$BIN/dagster" dev)
if [ -x "$BIN/dg" ]; then DEV=("$BIN/dg" dev); fi
# Reset SIGINT/SIGTERM dispositions so Ctrl-C reaches dagster dev even from non-interactive shells.
setsid $BIN/python -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL); signal.signal(signal.SIGTERM, signal.SIG_DFL)
os.execv(sys.argv[1], sys.argv[1:])' "${DEV[@]}" -h 127.0.0.1 -p "$PORT" -w workspace.yaml &
pids+=($!)
dev_pid=$!

# At a later start, once the UI answers, refresh the catalog, schema and models through Dagster
# (the refresh jobs: what changed in the sources while the demo was down); sensors do the rest.
for _ in $(seq 1 180); do
  if [ "$first" = 1 ]; then break; fi
  if curl -sf -o /dev/null "http://127.0.0.1:$PORT/server_info"; then
    for s in "${SCHEMAS[@]}"; do
      job="refresh_$s"
      if $BIN/dagster job launch -w workspace.yaml -j "$job" >/dev/null 2>&1; then
        echo "==> launched $job (catalog → schema → dbt models)"
      else
        echo "warning: could not launch $job; launch it from the UI" >&2
      fi
    done
    break
  fi
  sleep 2
done
wait "$dev_pid" || true
