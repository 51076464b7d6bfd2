#!/usr/bin/env bash
# Install everything the tests need (Debian's Chromium and coturn for the browser tests, the Python packages into
# ./.venv) and run the whole suite inside a private network namespace, which proves no test touches the
# network and gives WebRTC the loopback address it needs. Lint (ruff), format and type (mypy) checks run
# first and fail the run on their own. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
if ! command -v chromium >/dev/null || ! command -v turnserver >/dev/null; then
  $SUDO apt-get update -qq
  # coturn: the real TURN server the relay test runs inside the test network namespace (not started as a service)
  $SUDO apt-get install -y -qq chromium coturn >/dev/null
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt -c constraints.txt
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
exec scripts/in_netns.sh .venv/bin/python -m pytest "$@"
