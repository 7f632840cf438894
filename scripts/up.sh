#!/usr/bin/env bash
# The one command that starts taskenv on a fresh Debian machine: installs what is missing,
# then runs everything with the embedded default (private Redis, workers, API on 127.0.0.1:8000).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
exec .venv/bin/taskenv up "$@"
