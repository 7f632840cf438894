"""The client-side steps every integration test repeats, in one place: provision and wait for
ready, execute, and poll a condition with a deadline (never a fixed sleep)."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

POLL_SEC = 0.05


@dataclass
class Env:
    id: str
    token: str
    url: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"X-Environment-Token": f"Bearer {token or self.token}"}


def envs_url(base_url: str, org: str = "acme", workspace: str = "main") -> str:
    return f"{base_url}/api/v1/org/{org}/ws/{workspace}/environments"


def api_client(key: str) -> httpx.AsyncClient:
    """A client of the API with `key`, with the timeouts every test uses."""
    return httpx.AsyncClient(headers={"X-API-Key": key}, timeout=httpx.Timeout(60, connect=5))


async def wait_for_state(
    client: httpx.AsyncClient, url: str, *states: str, timeout: float = 30
) -> dict[str, Any]:
    """The environment's status once its state is one of `states` (or the last one seen past
    `timeout`, state None if none was). Answers other than 200, as during a fault, are waited past."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {"state": None}
    while True:
        response = await client.get(f"{url}/status")
        if response.status_code == 200:
            status = response.json()
        if status["state"] in states or time.monotonic() > deadline:
            return status
        await asyncio.sleep(POLL_SEC)


async def create(client: httpx.AsyncClient, url: str, **body: object) -> Env:
    """POST an environment (201 expected); not waited for."""
    response = await client.post(url, json={"task_ref": "default", **body})
    assert response.status_code == 201, response.text
    created = response.json()
    return Env(created["id"], created["execute_token"], f"{url}/{created['id']}")


async def provision(client: httpx.AsyncClient, service: Any, **body: object) -> Env:
    """An environment of `service` (anything with `envs_url()`), ready."""
    env = await create(client, service.envs_url(), **body)
    status = await wait_for_state(client, env.url, "ready", "failed")
    assert status["state"] == "ready", status
    return env


async def execute(client: httpx.AsyncClient, env: Env, command: str, timeout_sec: int = 10) -> httpx.Response:
    return await client.post(
        f"{env.url}/execute", json={"command": command, "timeout_sec": timeout_sec}, headers=env.headers()
    )


def eventually(
    check: Callable[[], object], what: str, timeout: float = 30, poll_sec: float = POLL_SEC
) -> float:
    """Seconds until `check()` is true; fails the test past `timeout`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(poll_sec)
    return time.monotonic() - started


async def until(check: Callable[[], object], what: str, timeout: float = 30) -> float:
    """Seconds until `check()` (blocking, so run in a thread) is true; fails past `timeout`."""
    started = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(POLL_SEC)
    return time.monotonic() - started


async def until_true(check: Callable[[], Awaitable[object]], what: str, timeout: float = 30) -> float:
    """Seconds until the coroutine `check()` answers true; fails the test past `timeout`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(POLL_SEC)
    return time.monotonic() - started


def commands_in_flight(redis_url: str, env_id: str) -> int:
    """How many commands of the environment are admitted and not yet answered (shared/commands.py)."""
    import redis

    from taskenv.shared import keys

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.zcard(keys.env_commands(env_id)))
    finally:
        client.close()


@contextlib.asynccontextmanager
async def pod_sandbox(
    docker: Any, env_id: str, labels: dict[str, str], deployment: str
) -> AsyncIterator[str]:
    """A running sandbox named as `env_id`'s, for tests of its services (worker/pod.py); it and
    every service and volume of the environment removed after."""
    from taskenv.shared.store import container_name
    from taskenv.worker import pod

    config: dict[str, Any] = {
        "Image": "taskenv/default:1",
        "Cmd": ["sleep", "600"],
        "Labels": labels,
        # No `NetworkDisabled`: with it the engine leaves /etc/hosts empty and `localhost` (the
        # services' address) resolves nowhere; `NetworkMode: none` alone gives loopback only.
        "HostConfig": {"NetworkMode": "none", "CapDrop": ["ALL"], "SecurityOpt": ["no-new-privileges"]},
    }
    sandbox = await docker.containers.run(config, name=container_name(env_id))
    try:
        yield env_id
    finally:
        await pod.remove_environment(docker, env_id, deployment)
        await sandbox.delete(force=True)
