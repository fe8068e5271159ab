#!/usr/bin/env bash
# Install what the real-browser tests (pytest -m browser) need; safe to run again.
#   bash scripts/install_browser.sh
# - Debian's chromium from apt (never `playwright install`: it downloads a browser build);
# - the playwright Python package into ./.venv (or the active virtual environment).
# Without root (or apt) the chromium step is skipped with a message; the browser tests then
# skip themselves with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${VIRTUAL_ENV:-}" ] && [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi

if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  echo "chromium: already installed ($(command -v chromium || command -v chromium-browser))"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
  echo "chromium: installed ($(command -v chromium))"
else
  echo "chromium: not installed (needs root and apt-get: apt-get install -y chromium);" \
       "browser tests will be skipped" >&2
fi

if "$py" -c "import playwright" 2>/dev/null; then
  echo "playwright: already installed"
else
  "$py" -m pip install --quiet "playwright>=1.45"
  echo "playwright: installed (Python package only; the browser is the system chromium)"
fi
