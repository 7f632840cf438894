#!/usr/bin/env bash
# The one command that runs the whole test suite: unit tests and integration tests against a
# real Redis and the real Docker engine (both started here if needed), lint and types first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
scripts/sdk-venv.sh || echo "[test] dreadnode SDK unavailable: its compatibility test will be skipped" >&2
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy api worker shared cli bench
exec .venv/bin/pytest -q -ra "$@"
