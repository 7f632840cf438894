"""A real taskenv for integration tests: a private redis-server, a worker and the API as child
processes (exactly as operators run them), against the machine's real Docker engine."""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import pytest
import redis

from taskenv.shared.settings import DEFAULT_TASKS_DIR

BROKEN_TASK = '[[task]]\nname = "broken"\nimage = "taskenv/no-such-image:0"\n'
# The default image run as root, with a small /tmp: per-task user and tmpfs size.
ROOT_TASK = '[[task]]\nname = "rooted"\nuser = "0:0"\n[task.resources]\ntmp_mb = 16\n'


@dataclass
class Service:
    base_url: str
    redis_url: str
    queue: str
    key: str
    other_key: str
    api: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    env: dict[str, str]

    def envs_url(self, org: str = "acme", workspace: str = "main") -> str:
        return f"{self.base_url}/api/v1/org/{org}/ws/{workspace}/environments"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check, what: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {timeout} s")


def _docker_ready() -> None:
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


def _remove_containers(queue: str) -> None:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=taskenv.host={queue}"], capture_output=True, text=True
    ).stdout.split()
    if ids:
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
    _wait(redis.Redis(unix_socket_path=str(sock)).ping, "redis-server", proc)
    return proc


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    _docker_ready()
    home = tmp_path_factory.mktemp("taskenv")
    tasks = home / "tasks"
    tasks.mkdir()
    shutil.copy(DEFAULT_TASKS_DIR / "default.toml", tasks / "default.toml")
    (tasks / "broken.toml").write_text(BROKEN_TASK)
    (tasks / "rooted.toml").write_text(ROOT_TASK)
    redis_proc = start_redis(home, "--save", "")
    sock = home / "redis.sock"

    queue = f"test-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    env = {
        **os.environ,
        "TASKENV_REDIS_URL": f"unix://{sock}",
        "TASKENV_HOST_ID": queue,  # this test service's own "host": its containers, its reaper
        "TASKENV_API_PORT": str(port),
        "TASKENV_TASKS_PATH": str(tasks),
        "TASKENV_REAP_INTERVAL_SEC": "1",
        "TASKENV_MAX_LIFETIME_SEC": "3600",
    }
    python = [sys.executable, "-m", "taskenv"]
    log = open(home / "service.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen([*python, "worker"], env=env, stdout=log, stderr=log)
    api = subprocess.Popen([*python, "api"], env=env, stdout=log, stderr=log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(f"{base_url}/api/v1/health").is_success, "the API", api)
        keys = [
            subprocess.run(
                [*python, "keys", "create", "--org", org, "--workspace", "main"],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            for org in ("acme", "other")
        ]
        yield Service(base_url, env["TASKENV_REDIS_URL"], queue, keys[0], keys[1], api, worker, env)
    finally:
        for proc in (api, worker):
            proc.terminate()
        for proc in (api, worker):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        redis_proc.terminate()
        redis_proc.wait()
        log.close()
        _remove_containers(queue)
        print(f"\nservice log: {home / 'service.log'}")


@pytest.fixture
async def client(service: Service) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        headers={"X-API-Key": service.key}, timeout=httpx.Timeout(60, connect=5)
    ) as http:
        yield http


async def wait_for_state(client: httpx.AsyncClient, url: str, *states: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = (await client.get(f"{url}/status")).json()
        if status["state"] in states or time.monotonic() > deadline:
            return status
        await asyncio.sleep(0.05)


@dataclass
class Env:
    id: str
    token: str
    url: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"X-Environment-Token": f"Bearer {token or self.token}"}


async def provision(client: httpx.AsyncClient, service: Service, **body: object) -> Env:
    response = await client.post(service.envs_url(), json={"task_ref": "default", **body})
    assert response.status_code == 201, response.text
    created = response.json()
    env = Env(created["id"], created["execute_token"], f"{service.envs_url()}/{created['id']}")
    status = await wait_for_state(client, env.url, "ready", "failed")
    assert status["state"] == "ready", status
    return env


@pytest.fixture
async def env(client: httpx.AsyncClient, service: Service) -> AsyncIterator[Env]:
    ready = await provision(client, service)
    yield ready
    await client.delete(ready.url)


# Several "hosts" (worker processes with their own host ids) for one test: tests/cluster.py.
from tests.cluster import cluster_api, cluster_factory  # noqa: E402, F401
