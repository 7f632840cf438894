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
# A run starts hundreds of Python processes: with PYTHONDONTWRITEBYTECODE set, each compiled all
# it imported. Their bytecode is cached outside the checkout instead (tests/conftest.py does the
# same for a pytest started by hand, but only from its own import on).
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  unset PYTHONDONTWRITEBYTECODE
  export PYTHONPYCACHEPREFIX="${PYTHONPYCACHEPREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/taskenv/pycache}"
fi
# In parallel: the integration tests mostly wait on Docker and Redis, so more workers than the
# machine's cores pay (each starts its own Redis, API and worker processes, on its own host id).
# One module's tests stay on one worker (loadscope), so a module-scoped fixture (a stack, a fuzz
# target whose summary test runs last) starts once. (loadgroup's xdist_group marks are not applied
# with pytest 9 and xdist 3.8: its groups were split.) TASKENV_TEST_WORKERS=0 runs in one process;
# later options (e.g. -n 1) override these.
exec .venv/bin/pytest -q -ra -n "${TASKENV_TEST_WORKERS:-4}" --dist loadscope "$@"
