#!/usr/bin/env bash
# The one command that runs the whole test suite: unit tests and integration tests against a
# real Redis and the real Docker engine (both started here if needed), lint and types first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
# Dreadnode's SDK in its own venv (cached): the compatibility tests need it, so no SDK fails the run.
scripts/sdk-venv.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy taskenv
TASKENV_REDIS_PASSWORD=validate docker-compose -f compose.yaml config -q
exec .venv/bin/pytest -q -ra "$@"
