"""Several "hosts" on one machine for integration tests: a private redis-server, one API, and
worker processes with distinct `TASKENV_HOST_ID`s sharing the local Docker engine (their
containers labelled by host). `cluster_factory` starts one with the hosts and settings a test
asks for; the test can then kill, signal, drain or add workers by host."""

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from taskenv.shared import keys
from tests import harness
from tests.harness import FAST_TIMINGS, PYTHON, free_port, new_host_id, settings_env, start_redis, tasks_dir
from tests.helpers import api_client, envs_url, wait_for_state

__all__ = ["FAST", "PYTHON", "Cluster", "timed"]

FAST = FAST_TIMINGS


@dataclass
class Cluster:
    home: Path
    base_url: str
    redis_url: str
    key: str
    env: dict[str, str]
    prefix: str
    api: subprocess.Popen[bytes]
    workers: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    host_settings: dict[str, dict[str, str]] = field(default_factory=dict)

    def host_id(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def envs_url(self) -> str:
        return envs_url(self.base_url)

    def log_path(self, name: str) -> Path:
        return self.home / f"worker-{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def start_worker(self, name: str, **settings: str) -> subprocess.Popen[bytes]:
        """One more worker process for host `name` (a new host if it has none yet)."""
        self.host_settings.setdefault(name, {}).update(settings)
        env = {**self.env, **self.host_settings[name], "TASKENV_HOST_ID": self.host_id(name)}
        out = open(self.log_path(name), "ab")  # noqa: SIM115 (the child owns it)
        proc = harness.spawn("worker", env, out)
        self.workers.setdefault(name, []).append(proc)
        return proc

    async def wait_live(self, name: str, timeout: float = 30) -> None:
        await asyncio.to_thread(self._wait_live, name, timeout)

    def _wait_live(self, name: str, timeout: float) -> None:
        client = redis.Redis.from_url(self.redis_url)
        live = lambda: client.zscore("taskenv:hosts", self.host_id(name)) is not None  # noqa: E731
        harness.wait_until(live, f"host {name}", timeout=timeout)
        client.close()

    def worker_ids(self, name: str) -> list[str]:
        """The ids of host `name`'s worker processes that heartbeat (and are not swept yet)."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        found = [w for w in client.zrange(keys.WORKERS, 0, -1) if w.startswith(f"{self.host_id(name)}:")]
        client.close()
        return found

    def kill(self, name: str) -> None:
        """SIGKILL every worker of a host, as a crash or a power cut would."""
        for proc in self.workers.get(name, []):
            proc.kill()
        for proc in self.workers.pop(name, []):
            proc.wait()

    def signal(self, name: str, signum: signal.Signals) -> None:
        for proc in self.workers.get(name, []):
            proc.send_signal(signum)

    def stop_all(self) -> None:
        procs = [self.api, *(p for ps in self.workers.values() for p in ps)]
        harness.stop(*procs, timeout=harness.CLEANUP_GRACE_SEC)


@pytest.fixture
def cluster_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Coroutine[Any, Any, Cluster]]]:
    """`await cluster_factory(hosts=("a", "b"), workers_per_host=1, **TASKENV_settings)`."""
    started: list[tuple[Cluster, subprocess.Popen[bytes]]] = []

    def start(hosts: tuple[str, ...] = ("a", "b"), workers_per_host: int = 1, **settings: str) -> Cluster:
        harness.docker_ready()
        home = tmp_path_factory.mktemp("cluster")
        redis_proc = start_redis(home, "--save", "")
        port = free_port()
        env = settings_env(
            home / "redis.sock", port, tasks_dir(home), new_host_id("api"), **{**FAST, **settings}
        )
        api_log = open(home / "api.log", "ab")  # noqa: SIM115
        api = harness.spawn("api", env, api_log)
        cluster = Cluster(
            home,
            f"http://127.0.0.1:{port}",
            env["TASKENV_REDIS_URL"],
            "",
            env,
            f"t{uuid.uuid4().hex[:6]}",
            api,
        )
        started.append((cluster, redis_proc))
        for name in hosts:
            for _ in range(workers_per_host):
                cluster.start_worker(name)
        harness.wait_api(cluster.base_url, api)
        for name in hosts:
            cluster._wait_live(name, 30)
        cluster.key = harness.create_key(env)
        return cluster

    async def start_async(*args: Any, **kwargs: Any) -> Cluster:
        return await asyncio.to_thread(start, *args, **kwargs)

    yield start_async
    for cluster, redis_proc in started:
        cluster.stop_all()
        harness.stop(redis_proc)
        for name in cluster.host_settings:
            harness.remove_containers(f"taskenv.host={cluster.host_id(name)}")
        print(f"\ncluster logs: {cluster.home}")


def timed(since: float) -> float:
    return round(time.monotonic() - since, 2)


# A client of one cluster's API, with the execute tokens of the environments it made.
class Api:
    def __init__(self, cluster: Cluster, http: httpx.AsyncClient) -> None:
        self.cluster, self.http = cluster, http
        self.redis = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
        self.tokens: dict[str, str] = {}

    async def create(self) -> str:
        response = await self.http.post(self.cluster.envs_url(), json={"task_ref": "default"})
        assert response.status_code == 201, response.text
        created = response.json()
        self.tokens[created["id"]] = created["execute_token"]
        return str(created["id"])

    async def ready(self, env_id: str, timeout: float = 30) -> str:
        """Wait for ready; the host it landed on."""
        status = await wait_for_state(self.http, self.url(env_id), "ready", "failed", timeout=timeout)
        assert status["state"] == "ready", status
        return str(await self.redis.hget(keys.environment(env_id), "host"))

    def url(self, env_id: str) -> str:
        return f"{self.cluster.envs_url()}/{env_id}"

    async def run(self, env_id: str, command: str, timeout_sec: int = 10, **headers: str) -> httpx.Response:
        return await self.http.post(
            f"{self.url(env_id)}/execute",
            json={"command": command, "timeout_sec": timeout_sec},
            headers={"X-Environment-Token": f"Bearer {self.tokens[env_id]}", **headers},
        )

    async def state(self, env_id: str) -> dict:
        return (await self.http.get(f"{self.url(env_id)}/status")).json()


@pytest.fixture
async def cluster_api():
    """Opens API clients for a test's clusters, and closes them after it."""
    opened: list[Api] = []

    async def make(cluster: Cluster) -> Api:
        api = Api(cluster, api_client(cluster.key))
        opened.append(api)
        return api

    yield make
    for api in opened:
        await api.http.aclose()
        await api.redis.aclose()
