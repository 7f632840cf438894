"""The client-side steps every integration test repeats, in one place: provision and wait for
ready, execute, and poll a condition with a deadline (never a fixed sleep)."""

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

# Polls start quick and back off to this: a check may start a process (`docker`, the CLI) or
# ask the API, and a long wait polled every 50 ms took a core of the loaded machine.
LONGEST_PAUSE_SEC = 0.25
# The longest one status request of `wait_for_state` is held by the API: short enough that
# a request lost with a killed API is soon asked again.
STATUS_WAIT_SEC = 5.0


@dataclass
class Env:
    id: str
    token: str
    url: str

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"X-Environment-Token": f"Bearer {token or self.token}"}


def envs_url(base_url: str, org: str = "acme", workspace: str = "main") -> str:
    return f"{base_url}/api/v1/org/{org}/ws/{workspace}/environments"


# The tests' clients speak plain HTTP to loopback, yet httpx builds a TLS context for each
# client, loading the CA bundle: 33 ms of CPU, and a run makes hundreds of clients. They share one.
_TLS = ssl.create_default_context()


def async_http(**options: Any) -> httpx.AsyncClient:
    """An httpx.AsyncClient with `options`, made without a TLS context of its own."""
    return httpx.AsyncClient(verify=_TLS, **options)


def sync_http(**options: Any) -> httpx.Client:
    """An httpx.Client with `options`, made without a TLS context of its own."""
    return httpx.Client(verify=_TLS, **options)


def transport_from(address: str) -> httpx.AsyncHTTPTransport:
    """Connections from `address` (any of 127.0.0.0/8 is loopback), as another client's."""
    return httpx.AsyncHTTPTransport(local_address=address, verify=_TLS)


def api_client(key: str) -> httpx.AsyncClient:
    """A client of the API with `key`, with the timeouts every test uses."""
    return async_http(headers={"X-API-Key": key}, timeout=httpx.Timeout(60, connect=5))


async def wait_for_state(
    client: httpx.AsyncClient, url: str, *states: str, timeout: float = 30
) -> dict[str, Any]:
    """The environment's status once its state is one of `states` (or the last one seen past
    `timeout`, state None if none was). Answers other than 200, as during a fault, are waited past.
    A provisioning environment is waited on by the API (`?wait_sec=`, answered the moment its
    provision ends) rather than polled: a run waits on hundreds of provisions."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {"state": None}
    pause = pauses()
    while True:
        wait_sec = min(max(deadline - time.monotonic(), 0), STATUS_WAIT_SEC)
        response = await client.get(f"{url}/status", params={"wait_sec": f"{wait_sec:.2f}"})
        if response.status_code == 200:
            status = response.json()
        if status["state"] in states or time.monotonic() > deadline:
            return status
        held = response.status_code == 200 and status["state"] == "provisioning"
        if not held:  # an answer at once (another state, or a fault's): asked again after a pause
            await asyncio.sleep(next(pause))


def pauses(first: float = 0.02) -> Iterator[float]:
    """The pauses between the polls of one wait: `first`, then half as long again each time, up
    to LONGEST_PAUSE_SEC."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 1.5, LONGEST_PAUSE_SEC)


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
    check: Callable[[], object], what: str, timeout: float = 30, poll_sec: float | None = None
) -> float:
    """Seconds until `check()` is true, asked every `poll_sec` (or after `pauses()`); fails the
    test past `timeout`."""
    started = time.monotonic()
    pause = pauses()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(poll_sec or next(pause))
    return time.monotonic() - started


async def until(check: Callable[[], object], what: str, timeout: float = 30) -> float:
    """Seconds until `check()` (blocking, so run in a thread) is true; fails past `timeout`."""
    started = time.monotonic()
    pause = pauses()
    while not await asyncio.to_thread(check):
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(next(pause))
    return time.monotonic() - started


async def until_true(check: Callable[[], Awaitable[object]], what: str, timeout: float = 30) -> float:
    """Seconds until the coroutine `check()` answers true; fails the test past `timeout`."""
    started = time.monotonic()
    pause = pauses()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(next(pause))
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
