#!/usr/bin/env bash
# Install the app into ./.venv (first run only takes long) and start it on http://localhost:8501.
# Fresh Linux machine with Python 3.11. Extra arguments go to `streamlit run` (e.g. --server.port 8600).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt -c constraints.txt
exec .venv/bin/streamlit run server.py "$@"
