#!/usr/bin/env bash
# Dreadnode's public SDK (and its `dn` CLI) in a venv of its own, to prove it works against
# taskenv unchanged. Separate because its large dependency tree (it pins its own Starlette)
# must never constrain taskenv's.
#
# The venv is cached outside the checkout (TASKENV_SDK_VENV, default ~/.cache/taskenv/sdk-venv)
# and linked as .venv-sdk, so fresh clones (CI) on the same machine reuse it. It is reused while
# it was made for the same requirement and still imports; TASKENV_SDK_REFRESH=1 rebuilds it.
# Installed with uv (from .venv): pip's resolver gives up on dreadnode 2.0.52's tree after
# ~90 s of backtracking, uv resolves it in seconds. Exits non-zero if the SDK cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENT="dreadnode>=2.0.52"
venv="${TASKENV_SDK_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/taskenv/sdk-venv}"
stamp="$venv/.taskenv-requirement"
log() { printf '[sdk] %s\n' "$*" >&2; }

usable() {
  [ -x "$venv/bin/dn" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$REQUIREMENT" ] \
    && "$venv/bin/python" -c 'import dreadnode.app.api.client, dreadnode.core.environment' 2>/dev/null
}

if [ "${TASKENV_SDK_REFRESH:-0}" = 1 ] || ! usable; then
  [ -x .venv/bin/uv ] || { log ".venv/bin/uv missing: run scripts/install.sh first"; exit 1; }
  log "installing $REQUIREMENT into $venv"
  started=$(date +%s.%N)
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  .venv/bin/uv venv -q --seed --python "$(python3 -c 'import sys; print(sys.executable)')" "$venv"
  VIRTUAL_ENV="$venv" .venv/bin/uv pip install -q "$REQUIREMENT"
  printf '%s' "$REQUIREMENT" >"$stamp"
  usable || { log "the SDK does not import after installing"; exit 1; }
  log "installed in $(python3 -c "import sys; print(round($(date +%s.%N) - $started, 1))") s"
fi

# .venv-sdk is what the tests and people use; replace an older real venv left there.
if [ ! -L .venv-sdk ] || [ "$(readlink .venv-sdk)" != "$venv" ]; then
  rm -rf .venv-sdk
  ln -s "$venv" .venv-sdk
fi
log "dreadnode $("$venv/bin/python" -c 'from importlib.metadata import version; print(version("dreadnode"))') in .venv-sdk"
