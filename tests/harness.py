"""The one process harness of the integration tests: a private redis-server on a Unix socket,
taskenv's API and worker processes started exactly as operators run them (`python -m taskenv
...`) with the settings a test gives, stopped by signal, their output in a log file of the
test's own home. tests/conftest.py (`service`), tests/stack.py and tests/cluster.py build on it.

Everything here is per test or per pytest-xdist worker: homes come from the test's
`tmp_path_factory`, ports are free ones picked on 127.0.0.1, host ids are random, Redis listens
on a socket in the home (no TCP port), so parallel workers share nothing but the Docker engine,
where every container carries its host's label."""

import asyncio
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest
import redis

from taskenv.shared.settings import DEFAULT_TASKS_DIR
from tests.helpers import pauses, sync_http

PYTHON = [sys.executable, "-m", "taskenv"]
# How long a test's clean-up waits for a process to end on SIGTERM before SIGKILL. A worker
# idle in its queue wait only notices SIGTERM when the wait ends (TASKENV_WORKER_IDLE_WAIT_SEC,
# 30 s in some tests): clean-up is no test's point, and containers are removed by label after.
CLEANUP_GRACE_SEC = 2.0
# Fast membership and reaping for test deployments (settings, never code paths): a host is lost
# after 3 s without a heartbeat, the reaper passes every second.
FAST_TIMINGS = {
    "TASKENV_HOST_DEAD_AFTER_SEC": "3",
    "TASKENV_HEARTBEAT_SEC": "0.5",
    "TASKENV_REAP_INTERVAL_SEC": "1",
}

# Dreadnode's SDK and `dn` CLI, in a venv of their own (scripts/sdk-venv.sh).
SDK = Path(__file__).parent.parent / ".venv-sdk"


def dn_environment(home: Path) -> dict[str, str]:
    """The environment of a `dn` process: `home` as its HOME and proxies that lead nowhere, so
    nothing it does leaves loopback (nor reads the developer's own ~/.dreadnode)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DREADNODE_", "_DN_"))}
    blackhole = "http://127.0.0.1:9"
    env.update(HOME=str(home), HTTP_PROXY=blackhole, HTTPS_PROXY=blackhole, ALL_PROXY=blackhole)
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "COLUMNS": "200", "NO_COLOR": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_host_id(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(
    check: Callable[[], object], what: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30
) -> None:
    """Poll `check` (exceptions count as not yet) until true; fail if `proc` exits or past `timeout`."""
    deadline = time.monotonic() + timeout
    pause = pauses()
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(next(pause))
    raise RuntimeError(f"{what} not ready after {timeout} s")


def docker_ready() -> None:
    """The engine answers and the default image exists (built locally if not)."""
    from taskenv.worker.docker import connect, disconnect
    from taskenv.worker.image import build_default_image, image_exists

    async def check() -> None:
        docker = connect()
        try:
            await docker.version()
            if not await image_exists(docker):
                await build_default_image(docker)
        finally:
            await disconnect(docker)

    try:
        asyncio.run(check())
    except Exception as exc:
        pytest.fail(f"integration tests need a running Docker engine (see .ci/run): {exc!r}")


def containers_of(*labels: str) -> list[str]:
    found = subprocess.run(
        ["docker", "ps", "-aq", *(f"--filter=label={label}" for label in labels)],
        capture_output=True,
        text=True,
    )
    return found.stdout.split()


def running_in(container: str, command: str, docker_host: str | None = None) -> bool:
    """`command` is among the processes of `container` (`docker top`), of `docker_host`'s engine."""
    host = ["--host", docker_host] if docker_host else []
    top = subprocess.run(["docker", *host, "top", container], capture_output=True, text=True, timeout=60)
    return top.returncode == 0 and command in top.stdout


def remove_containers(*labels: str) -> None:
    if ids := containers_of(*labels):
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def start_redis(home: Path, *options: str, log: IO[bytes] | None = None) -> subprocess.Popen[bytes]:
    """A private redis-server on `home`/redis.sock (no TCP port), returned once it answers."""
    if shutil.which("redis-server") is None:
        pytest.fail("integration tests need redis-server (apt-get install redis-server)")
    sock = home / "redis.sock"
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--dir", str(home), *options],
        stdout=log or subprocess.DEVNULL,
        stderr=log,
    )
    client = redis.Redis(unix_socket_path=str(sock))
    try:
        wait_until(client.ping, "redis-server", proc)
    finally:
        client.close()
    return proc


def tasks_dir(home: Path, **extra: str) -> Path:
    """A task registry folder: the default task plus `name=TOML` ones."""
    tasks = home / "tasks"
    tasks.mkdir(exist_ok=True)
    shutil.copy(DEFAULT_TASKS_DIR / "default.toml", tasks / "default.toml")
    for name, toml in extra.items():
        (tasks / f"{name}.toml").write_text(toml)
    return tasks


# The key sealing org secrets and environments' variables in the test stacks (Fernet: 32 bytes).
TEST_SECRETS_KEY = base64.urlsafe_b64encode(os.urandom(32)).decode()


def settings_env(redis_sock: Path, port: int, tasks: Path, host: str, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "TASKENV_REDIS_URL": f"unix://{redis_sock}",
        "TASKENV_HOST_ID": host,
        "TASKENV_API_PORT": str(port),
        "TASKENV_TASKS_PATH": str(tasks),
        "TASKENV_REAP_INTERVAL_SEC": "1",
        "TASKENV_SECRETS_KEY": TEST_SECRETS_KEY,
        **settings,
    }


def spawn(command: str, env: dict[str, str], log: IO[bytes], *args: str) -> subprocess.Popen[bytes]:
    """`python -m taskenv COMMAND`, its output appended to `log`."""
    return subprocess.Popen([*PYTHON, command, *args], env=env, stdout=log, stderr=log)


def wait_api(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    # One client for every poll (its connection kept).
    with sync_http(base_url=base_url) as client:
        wait_until(lambda: client.get("/api/v1/health").is_success, "the API", proc, timeout)


def stop(*procs: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal every live one at once, then wait for each (SIGKILL past `timeout`)."""
    live = [proc for proc in procs if proc is not None and proc.poll() is None]
    for proc in live:
        proc.send_signal(sig)
    for proc in live:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def create_key(env: dict[str, str], org: str = "acme", workspace: str = "main") -> str:
    """An API key, made as `taskenv keys create` makes it (shared/apikeys.py) but without
    starting a Python process per key: tests/test_integration_cli.py runs the command itself."""
    import redis.asyncio as aioredis

    from taskenv.shared import apikeys

    async def create() -> str:
        client = aioredis.Redis.from_url(env["TASKENV_REDIS_URL"], decode_responses=True)
        try:
            return await apikeys.create(client, org, workspace)
        finally:
            await client.aclose()

    # In a thread of its own: callers may be inside a running event loop (async tests).
    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, create()).result()
