#!/usr/bin/env bash
# Chromium for the browser tests (Debian's package; Playwright drives it). Installs it when we are
# root on a Debian-like machine and it is missing; otherwise only reports.
set -euo pipefail
if [ -x /usr/bin/chromium ] || [ -n "${CARTRIDGE_CHROMIUM:-}" ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "==> installing Chromium (apt-get install chromium)"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get install -y -qq chromium >/dev/null 2>&1) || \
    (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1)
  [ -x /usr/bin/chromium ] && exit 0
fi
exit 1
