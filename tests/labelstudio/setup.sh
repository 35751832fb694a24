#!/usr/bin/env bash
# Label Studio (pinned) in its own cached venv, .venv-labelstudio at the repo root (gitignored), so the
# project's .venv stays clean. Idempotent: a second run only checks. Used by tests/labelstudio/run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
LS_VERSION=1.23.2
VENV=${EVO_LABELSTUDIO_VENV:-.venv-labelstudio}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[labelstudio] creating $VENV"
  "$PY" -m venv "$VENV"
fi
if [ "$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))' 2>/dev/null)" != "$LS_VERSION" ]; then
  echo "[labelstudio] installing label-studio==$LS_VERSION (a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "label-studio==$LS_VERSION"
fi
echo "[labelstudio] ready: label-studio $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))') in $VENV"
