#!/usr/bin/env bash
# Label Studio → evo serve latency, from a real Label Studio 1.23.2 (the integration test's flow, timed):
# annotation submission → evo's updated prediction (≥ 50 annotations), and a /predict of 100 tasks.
# Usage: benchmarks/serve_labelstudio.sh [MODEL [INPUT_SIZE]]   (default small_cnn; e.g. efficientnet_lite0 64)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MODEL=${1:-small_cnn}
mkdir -p benchmarks/results
OUT=benchmarks/results/serve_labelstudio_${MODEL}.json
bash tests/labelstudio/setup.sh
EVO_LS_MODEL=$MODEL EVO_LS_INPUT_SIZE=${2:-} EVO_LS_RESULTS=$OUT \
  "$PY" -m pytest -q -s -m labelstudio tests/labelstudio -p no:cacheprovider
echo "[benchmark] wrote $OUT"
