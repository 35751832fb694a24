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
  rm -rf "$VENV/template"
fi
# A migrated, empty Label Studio data dir (SQLite): each test copies it instead of migrating (minutes).
if [ ! -f "$VENV/template/label_studio.sqlite3" ]; then
  echo "[labelstudio] migrating a template database"
  tmp=$(cd "$(mktemp -d "$VENV/.template.XXXXXX")" && pwd)
  LABEL_STUDIO_BASE_DATA_DIR="$tmp" LATEST_VERSION_CHECK=false COLLECT_ANALYTICS=false SENTRY_DSN= \
    "$VENV/bin/label-studio" version --data-dir "$tmp" >/dev/null 2>&1
  [ -f "$tmp/label_studio.sqlite3" ] || { echo "[labelstudio] migration failed" >&2; exit 1; }
  rm -rf "$VENV/template" && mv "$tmp" "$VENV/template"
fi
echo "[labelstudio] ready: label-studio $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))') in $VENV"
