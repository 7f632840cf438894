#!/usr/bin/env bash
# A separate venv with Dreadnode's public SDK, to prove it works against taskenv unchanged.
# (Separate so its large dependency tree never constrains taskenv's own.)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-sdk/bin/dn ]; then
  echo "[sdk] installing the dreadnode SDK into .venv-sdk" >&2
  python3 -m venv .venv-sdk
  .venv-sdk/bin/python -m pip install -q -U pip
  .venv-sdk/bin/python -m pip install -q dreadnode
fi
