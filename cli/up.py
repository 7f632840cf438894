"""`taskenv up`: the whole service on one machine with no setup.

A private redis-server on a unix socket (persistence on), the workers and the API run as child
processes in their own sessions, so Ctrl-C reaches only this supervisor, which then stops them
in order: API first, workers next (they finish running commands), Redis last.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import redis

from cli import instance
from cli.operations import build_image, create_key
from shared.clients import USER_AGENT
from shared.settings import Settings

STARTUP_TIMEOUT_SEC = 30.0


def _spawn(args: list[str], env: dict[str, str], log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "ab") if log else None  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(args, env=env, start_new_session=True, stdout=out, stderr=out)


def _wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SEC
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            if check():
                return
        except Exception:  # noqa: S110 (not up yet)
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {STARTUP_TIMEOUT_SEC:.0f} s")


def _start_redis(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    socket_path = instance.redis_socket()
    client = redis.Redis(unix_socket_path=str(socket_path))
    if socket_path.is_socket():
        try:
            client.ping()
        except redis.ConnectionError:
            socket_path.unlink()
        else:
            raise RuntimeError(f"an embedded taskenv is already running (Redis at {socket_path})")
    proc = _spawn(
        [
            "redis-server",
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(home),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "300 1",
            "--logfile", str(home / "redis.log"),
        ],
        env,
    )  # fmt: skip
    _wait_until(lambda: bool(client.ping()), "redis-server", proc)
    return proc


def _banner(base: str, key: str, org: str, workspace: str) -> str:
    envs = f"{base}/api/v1/org/{org}/ws/{workspace}/environments"
    field = "python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])'"
    return f"""
taskenv is up: API {base}  (Ctrl-C stops everything)
API key for org {org!r}, workspace {workspace!r} (shown once; more: taskenv keys create):

  export TASKENV_KEY={key}

Try it:

  ENV=$(curl -s -X POST {envs} -H "X-API-Key: $TASKENV_KEY" \\
        -H 'Content-Type: application/json' -d '{{"task_ref": "default"}}')
  ID=$(echo "$ENV" | {field} id); TOKEN=$(echo "$ENV" | {field} execute_token)
  sleep 1
  curl -s -X POST {envs}/$ID/execute -H "X-Environment-Token: Bearer $TOKEN" \\
       -H 'Content-Type: application/json' -d '{{"command": "echo hello; uname -sm", "timeout_sec": 10}}'
  curl -s -X DELETE {envs}/$ID -H "X-API-Key: $TASKENV_KEY"
"""


def _stop(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(*, workers: int, org: str, workspace: str) -> int:
    home = instance.home()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    env = dict(os.environ)
    redis_proc = None
    if "TASKENV_REDIS_URL" not in env:
        redis_proc = _start_redis(home, env)
        env["TASKENV_REDIS_URL"] = instance.embedded_redis_url()
    settings = Settings(redis_url=env["TASKENV_REDIS_URL"])
    if build_image(only_if_missing=True):
        print("built the default task image (offline, from busybox-static)", flush=True)

    python = [sys.executable, "-m", "cli"]
    worker_procs = [_spawn([*python, "worker"], env) for _ in range(workers)]
    api_proc = _spawn([*python, "api"], env)
    base = f"http://{settings.api_host}:{settings.api_port}"
    children = [api_proc, *worker_procs] + ([redis_proc] if redis_proc else [])
    try:
        _wait_until(
            lambda: httpx.get(f"{base}/api/v1/health", headers={"User-Agent": USER_AGENT}).is_success,
            "the API",
            api_proc,
        )
        print(_banner(base, create_key(settings, org, workspace), org, workspace), flush=True)
        stop = {"signal": 0}

        def on_signal(signum: int, frame: object) -> None:
            stop["signal"] = signum

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["signal"]:
            if any(p.poll() is not None for p in children):
                dead = next(p for p in children if p.returncode is not None)
                print(f"child process {dead.args!r} exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        _stop(api_proc, 10)
        for proc in worker_procs:
            _stop(proc, 700)
        if redis_proc:
            _stop(redis_proc, 30)
