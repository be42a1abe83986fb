#!/usr/bin/env bash
# Sets up the environment (if needed) and runs the whole test suite: lint, then pytest.
# Installs Debian's chromium for the report's browser test when it is missing and we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "[test] installing chromium for the browser test" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[test] chromium could not be installed; the browser test will be skipped" >&2
fi
# A full run writes about 2 GB (temporary study folders, Ray's session logs); a CI run on a nearly full disk
# once failed with errors everywhere, so say up front when space is short.
free_kb=$(df -Pk "${TMPDIR:-/tmp}" | awk 'NR==2 {print $4}')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((3 * 1024 * 1024)) ]; then
  echo "[test] warning: only $((free_kb / 1024)) MB free under ${TMPDIR:-/tmp}; the tests need about 2 GB" >&2
fi
.venv/bin/ruff check maae study tests benchmarks
# the slowest tests are listed so that a run that creeps towards CI's limit shows where the time goes
.venv/bin/python -m pytest --durations=25 "$@"
