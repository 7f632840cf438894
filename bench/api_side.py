"""The taskenv side: the wire calls an SDK makes, timed one request at a time."""

import asyncio
import time
from dataclasses import dataclass

import httpx

from bench.ledger import Ledger, guarded
from bench.stats import Sample
from bench.workloads import Workload, check

READY_TIMEOUT_SEC = 120.0


class Failure(Exception):
    """An answer that is not the expected one; `status` is what the report counts it under."""

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(f"{status} {detail}".strip())
        self.status = status


@dataclass(frozen=True)
class Env:
    id: str
    token: str


def error_name(exc: BaseException) -> str:
    return exc.status if isinstance(exc, Failure) else type(exc).__name__


def envs_url(base_url: str, org: str, workspace: str) -> str:
    return f"{base_url}/api/v1/org/{org}/ws/{workspace}/environments"


def make_client(api_key: str, *, connections: int, read_timeout_sec: float) -> httpx.AsyncClient:
    """One pool sized for every request the run holds at once, so none queues inside the client;
    no proxies from the environment, no redirects: traffic stays on the checked loopback URL."""
    return httpx.AsyncClient(
        headers={"X-API-Key": api_key},
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(read_timeout_sec, connect=30.0, pool=None),
        trust_env=False,
        follow_redirects=False,
    )


async def check_access(client: httpx.AsyncClient, url: str) -> None:
    """Fail early, before anything is created, on a wrong URL, key, org or workspace."""
    response = await client.get(url, params={"limit": 1})
    if response.status_code != 200:
        raise Failure(str(response.status_code), f"GET {url}: {response.text[:200]}")


async def _create(
    client: httpx.AsyncClient, url: str, ledger: Ledger, task_ref: str, lifetime_sec: int
) -> Env:
    response = await client.post(url, json={"task_ref": task_ref, "timeout_sec": lifetime_sec})
    if response.status_code != 201:
        raise Failure(str(response.status_code), response.text[:200])
    body = response.json()
    ledger.add_env(body["id"])
    return Env(body["id"], body["execute_token"])


async def create(
    client: httpx.AsyncClient, url: str, ledger: Ledger, task_ref: str, lifetime_sec: int
) -> Env:
    """POST a provision; the id lands in the ledger even if the run is cancelled meanwhile."""
    return await guarded(ledger, _create(client, url, ledger, task_ref, lifetime_sec))


async def wait_ready(client: httpx.AsyncClient, url: str, env_id: str, poll_sec: float) -> None:
    """Poll the status until `ready`; the poll interval is the resolution of provision latency."""
    async with asyncio.timeout(READY_TIMEOUT_SEC):
        while True:
            response = await client.get(f"{url}/{env_id}/status")
            if response.status_code != 200:
                raise Failure(str(response.status_code), response.text[:200])
            state = response.json()["state"]
            if state == "ready":
                return
            if state != "provisioning":
                raise Failure(state, response.json().get("error") or "")
            await asyncio.sleep(poll_sec)


async def provision(
    client: httpx.AsyncClient, url: str, ledger: Ledger, task_ref: str, lifetime_sec: int, poll_sec: float
) -> Env:
    env = await create(client, url, ledger, task_ref, lifetime_sec)
    await wait_ready(client, url, env.id, poll_sec)
    return env


async def timed_provision(
    client: httpx.AsyncClient,
    url: str,
    ledger: Ledger,
    task_ref: str,
    lifetime_sec: int,
    poll_sec: float,
    ready: list[Env],
) -> Sample:
    """From the POST to the first `ready` status seen; the environment goes to `ready`."""
    started = time.perf_counter()
    try:
        env = await provision(client, url, ledger, task_ref, lifetime_sec, poll_sec)
    except Exception as exc:
        return Sample(started, time.perf_counter(), error_name(exc))
    ended = time.perf_counter()
    ready.append(env)
    return Sample(started, ended)


async def execute(
    client: httpx.AsyncClient, url: str, env: Env, workload: Workload, timeout_sec: int
) -> Sample:
    """One exec, from sending the request to the whole answer read, checked."""
    started = time.perf_counter()
    error: str | None
    try:
        response = await client.post(
            f"{url}/{env.id}/execute",
            json={"command": workload.command, "timeout_sec": timeout_sec},
            headers={"X-Environment-Token": f"Bearer {env.token}"},
        )
        ended = time.perf_counter()
        if response.status_code != 200:
            error = str(response.status_code)
        else:
            body = response.json()
            error = check(workload, int(body["exit_code"]), str(body["output"]))
    except Exception as exc:
        ended = time.perf_counter()
        error = error_name(exc)
    return Sample(started, ended, error)


async def delete(client: httpx.AsyncClient, url: str, env_id: str) -> None:
    """204 once the container is gone; 404 means there is nothing left to delete."""
    response = await client.delete(f"{url}/{env_id}")
    if response.status_code not in (204, 404):
        raise Failure(str(response.status_code), response.text[:200])
