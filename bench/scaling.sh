#!/usr/bin/env bash
# Exec throughput as worker processes grow on this machine: for each N, a fresh embedded taskenv
# (`taskenv up --workers N`: its own Redis under a temporary TASKENV_HOME, its own API port and
# host id, so it touches no other deployment's containers), then `taskenv bench` against it and,
# interleaved in the same run, against the raw Docker engine. Prints one line per N and keeps
# each run's JSON. Usage: bench/scaling.sh [N...]   (default: 1 2 4)
# Other bench options: BENCH_ARGS="-k 16 -m 400 -c 32 --warmup 32 -n 0 --rounds 2" bench/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
taskenv=.venv/bin/taskenv
port=${TASKENV_SCALING_PORT:-8190}
out=${TASKENV_SCALING_OUT:-$(mktemp -d /tmp/taskenv-scaling.XXXXXX)}
mkdir -p "$out"
args=${BENCH_ARGS:--k 16 -m 400 -c 32 --warmup 32 -n 0 --rounds 2 --max-seconds 300}
counts=("$@")
[ ${#counts[@]} -gt 0 ] || counts=(1 2 4)
for n in "${counts[@]}"; do
  home=$(mktemp -d /tmp/taskenv-scaling-home.XXXXXX)
  export TASKENV_HOME=$home TASKENV_API_PORT=$port TASKENV_HOST_ID=scaling-$n-$$
  "$taskenv" up --workers "$n" >"$out/up-$n.log" 2>&1 &
  up=$!
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.5
  done
  key=$("$taskenv" keys create --org local --workspace main)
  # CPU seconds (user+system) of this deployment's workers and API, and of the engine's daemons.
  ours=$(pgrep -d, -P "$up" -f 'cli (worker|api)' || true)
  engine=$(pgrep -d, -x 'dockerd|containerd' || true)
  cpu() { python3 -c 'import os, sys
t = 0
for pid in filter(None, sys.argv[1].split(",")):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        t += int(f[11]) + int(f[12])
    except OSError:
        pass
print(round(t / os.sysconf("SC_CLK_TCK"), 2))' "$1"; }
  ours_before=$(cpu "$ours"); engine_before=$(cpu "$engine")
  # shellcheck disable=SC2086
  TASKENV_KEY=$key "$taskenv" bench --url "http://127.0.0.1:$port" $args --out "$out/bench-$n.json" \
    >"$out/bench-$n.txt" 2>&1 || echo "bench with $n workers failed: see $out/bench-$n.txt" >&2
  echo "cpu_s ours $(cpu "$ours") $ours_before engine $(cpu "$engine") $engine_before" >"$out/cpu-$n.txt"
  kill -INT "$up"
  wait "$up" || true
  rm -rf "$home"
  python3 - "$n" "$out/bench-$n.json" "$out/cpu-$n.txt" <<'PY'
import json, sys
n, path, cpu_path = sys.argv[1], sys.argv[2], sys.argv[3]
_, _, ours_after, ours_before, _, engine_after, engine_before = open(cpu_path).read().split()
ours_cpu = float(ours_after) - float(ours_before)
engine_cpu = float(engine_after) - float(engine_before)
try:
    runs = json.load(open(path))["exec"]
except (OSError, ValueError, KeyError):
    sys.exit(print(f"workers={n}: no result"))
ours, raw = runs["taskenv"], runs["raw"]
print(f"workers={n}: taskenv {ours['throughput']:.1f} exec/s (p50 {ours['p50_ms']:.0f} ms, p99 {ours['p99_ms']:.0f} ms,"
      f" {ours['requests'] - ours['ok']} errors); raw Docker {raw['throughput']:.1f} exec/s (p50 {raw['p50_ms']:.0f} ms);"
      f" ratio {ours['throughput'] / raw['throughput']:.2f}; CPU: taskenv's API and workers {ours_cpu:.1f} s,"
      f" dockerd+containerd {engine_cpu:.1f} s")
PY
done
echo "results in $out"
