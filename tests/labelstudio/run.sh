#!/usr/bin/env bash
# The Label Studio integration test: install Label Studio into its cached venv (once), then run the
# `labelstudio`-marked tests with the project's venv. Called by .ci/run after the main suite.
# Usage: tests/labelstudio/run.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${1:-.venv/bin/python}
bash tests/labelstudio/setup.sh
start=$(date +%s)
"$PY" -m pytest -q -m labelstudio tests/labelstudio -p no:cacheprovider
echo "[labelstudio] integration test took $(( $(date +%s) - start ))s"
