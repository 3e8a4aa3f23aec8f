#!/usr/bin/env bash
# Create .venv with Python 3.13 and install Cartridge from uv.lock. Idempotent and offline-safe:
# it never downloads an interpreter; it finds an installed Python 3.13 (PATH, pyenv, common
# prefixes, or $CARTRIDGE_PYTHON). Extras: dev and demo; `make bench` adds bench
# (CARTRIDGE_EXTRAS="dev demo bench": dlt, Sling's binary).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local cand
  for cand in "${CARTRIDGE_PYTHON:-}" "$(command -v python3.13 || true)" \
      "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python3.13 \
      /root/.pyenv/versions/3.13*/bin/python3.13 \
      /usr/local/bin/python3.13 /usr/bin/python3.13 \
      /opt/homebrew/bin/python3.13 /opt/python/3.13*/bin/python3.13; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    if "$cand" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 13) else 1)' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  return 1
}

EXTRAS="${CARTRIDGE_EXTRAS:-dev demo}"
stamp=".venv/.cartridge-installed-${EXTRAS// /-}"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$stamp" -nt uv.lock ] && [ "$stamp" -nt pyproject.toml ] \
    && [ "$stamp" -nt cartridge_dagster/_bsonjson.c ] && [ "$stamp" -nt hatch_build.py ]; then
  exit 0
fi

PY=$(find_python) || {
  echo "error: Python 3.13 not found. Install it (pyenv install 3.13, brew install python@3.13," >&2
  echo "       apt-get install python3.13) or set CARTRIDGE_PYTHON=/path/to/python3.13" >&2
  exit 1
}
echo "==> Python: $PY"
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if sys.version_info[:2]==(3,13) else 1)'; then
  rm -rf .venv
  "$PY" -m venv .venv
fi
UV=$(command -v uv || true)
if [ -z "$UV" ]; then
  if [ ! -x .venv/bin/uv ]; then
    echo "==> installing uv into .venv"
    .venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip --upgrade >/dev/null
    .venv/bin/python -m pip install --quiet --disable-pip-version-check uv 2>&1 | grep -v "is ignored: it is neither" || true
  fi
  UV=.venv/bin/uv
fi
echo "==> installing from uv.lock"
# No --compile-bytecode: compiling all 17,000 modules of the environment took 26 s of a quiet
# 2-core machine (54 s loaded) on every fresh clone, for the ~4,000 a Cartridge process imports.
# They are compiled once, by the first process that imports them: the scripts that use the
# environment (make demo, test, bench, soak) unset PYTHONDONTWRITEBYTECODE so that the cache is
# written (where it is set, every process would compile what it imports, every time).
if UV_PROJECT_ENVIRONMENT=.venv UV_PYTHON_DOWNLOADS=never \
    "$UV" sync --frozen $(for e in $EXTRAS; do printf -- '--extra %s ' "$e"; done) --inexact \
    --python .venv/bin/python; then
  :
else
  echo "==> uv sync failed; falling back to pip" >&2
  .venv/bin/python -m pip install --quiet -e ".[${EXTRAS// /,}]"
fi
.venv/bin/python -m compileall -q cartridge_dagster tests >/dev/null || true
touch "$stamp"
echo "==> environment ready: .venv"
