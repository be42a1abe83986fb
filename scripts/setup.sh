#!/usr/bin/env bash
# Creates .venv (if missing or stale) and installs the project with its dev extra.
# Idempotent: a second run with an unchanged pyproject.toml only checks the stamp.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${MAAE_VENV:-.venv}"
stamp="$VENV/.maae-setup-stamp"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating virtual environment in $VENV (first run takes a few minutes)" >&2
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
"$VENV/bin/python" -m pip install --quiet -e ".[dev]" >&2
echo "$want" > "$stamp"
echo "[setup] done" >&2
