#!/usr/bin/env bash
# Make this machine ready to run taskenv: Debian packages, the Python venv, a running dockerd.
# Idempotent: every step is skipped when already done. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[install] %s\n' "$*" >&2; }

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ -x /bin/busybox ] && /bin/busybox --list-full >/dev/null 2>&1 && ! ldd /bin/busybox >/dev/null 2>&1 \
  || need_apt+=(busybox-static)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# Validates compose.yaml in the tests (`docker-compose config`: no image is pulled or built).
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v make >/dev/null || need_apt+=(make)  # `make test-compat`
# The in-sandbox runner (runner/PROTOCOL.md) is one static binary: gcc with static glibc.
command -v gcc >/dev/null && dpkg -s libc6-dev >/dev/null 2>&1 || need_apt+=(gcc libc6-dev)
# scripts/offline_image.py (compose's images with no registry) builds the project with it.
[ -d /usr/lib/python3/dist-packages/wheel ] || need_apt+=(python3-wheel)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian starts redis-server as a system service on install; taskenv runs its own, so leave it.

# make rebuilds it only when its source changed; runner/build/ is not in git.
make -s -C runner build/taskenv-runner

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  log "installing Python dependencies into .venv"
  python3 -m venv .venv
  .venv/bin/python -m pip install -q -U pip
  .venv/bin/python -m pip install -q -e '.[test,bench]'
  touch "$stamp"
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (no bridge, no iptables: sandboxes use network none)"
  nohup dockerd --bridge=none --iptables=false --ip-masq=false >/var/log/taskenv-dockerd.log 2>&1 &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { log "dockerd did not start; see /var/log/taskenv-dockerd.log"; exit 1; }
fi
