"""The taskenv side: the wire calls an SDK makes, timed one request at a time.

The client is aiohttp, as on the baseline side (aiodocker): measured here, httpx costs ~0.8 ms
more per request in the client, which would be charged to the service.
"""

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from taskenv.bench.ledger import Ledger, guarded
from taskenv.bench.stats import Sample
from taskenv.bench.workloads import Workload, check
from taskenv.shared.user_agents import USER_AGENT

READY_TIMEOUT_SEC = 120.0
# Still on its way to `ready`: `building` is a pushed task's provision waiting for its images.
PENDING_STATES = frozenset({"provisioning", "building"})
# How long one status request may wait for the provision to end (the API's `wait_sec`).
STATUS_WAIT_SEC = "10"
CONNECT_TIMEOUT_SEC = 30.0
# Below uvicorn's 5-s keep-alive: the client drops an idle connection before the server can
# close it under a request being sent (a POST on it would fail, not be retried).
KEEPALIVE_SEC = 4.0


class Failure(Exception):
    """An answer that is not the expected one; `status` is what the report counts it under."""

    def __init__(self, status: str, detail: str = "") -> None:
        super().__init__(f"{status} {detail}".strip())
        self.status = status


@dataclass(frozen=True)
class Env:
    id: str
    token: str


@dataclass(frozen=True)
class Answer:
    """A whole response, read: the connection is back in the pool once this exists."""

    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def error_name(exc: BaseException) -> str:
    return exc.status if isinstance(exc, Failure) else type(exc).__name__


def envs_url(base_url: str, org: str, workspace: str) -> str:
    return f"{base_url}/api/v1/org/{org}/ws/{workspace}/environments"


def make_session(api_key: str, *, connections: int, read_timeout_sec: float) -> aiohttp.ClientSession:
    """One pool sized for every request the run holds at once, so none queues inside the client;
    no proxies from the environment (and no redirects, see `call`): traffic stays on the checked
    loopback URL. Call within the event loop that will use it."""
    connector = aiohttp.TCPConnector(limit=connections, force_close=False, keepalive_timeout=KEEPALIVE_SEC)
    return aiohttp.ClientSession(
        connector=connector,
        headers={"X-API-Key": api_key, "User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=CONNECT_TIMEOUT_SEC, sock_read=read_timeout_sec
        ),
        trust_env=False,
    )


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    params: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request, answer read to the end; a redirect comes back as its own status."""
    async with session.request(
        method, url, json=body, params=params, headers=headers, allow_redirects=False
    ) as response:
        return Answer(response.status, await response.read())


async def check_access(session: aiohttp.ClientSession, url: str) -> None:
    """Fail early, before anything is created, on a wrong URL, key, org or workspace."""
    answer = await call(session, "GET", url, params={"limit": "1"})
    if answer.status != 200:
        raise Failure(str(answer.status), f"GET {url}: {answer.text[:200]}")


async def _create(
    session: aiohttp.ClientSession, url: str, ledger: Ledger, task_ref: str, lifetime_sec: int
) -> Env:
    answer = await call(session, "POST", url, body={"task_ref": task_ref, "timeout_sec": lifetime_sec})
    if answer.status != 201:
        raise Failure(str(answer.status), answer.text[:200])
    body = answer.json()
    ledger.add_env(body["id"])
    return Env(body["id"], body["execute_token"])


async def create(
    session: aiohttp.ClientSession, url: str, ledger: Ledger, task_ref: str, lifetime_sec: int
) -> Env:
    """POST a provision; the id lands in the ledger even if the run is cancelled meanwhile."""
    return await guarded(ledger, _create(session, url, ledger, task_ref, lifetime_sec))


async def wait_ready(session: aiohttp.ClientSession, url: str, env_id: str, poll_sec: float) -> None:
    """Ask for the status until `ready`, each request waiting for the provision to end
    (`?wait_sec=`: answered at once when it does, so no polling interval blurs the latency, and
    no stream of requests takes CPU from the containers being made); `poll_sec` between asks
    only when an answer comes back still pending."""
    async with asyncio.timeout(READY_TIMEOUT_SEC):
        while True:
            answer = await call(
                session, "GET", f"{url}/{env_id}/status", params={"wait_sec": STATUS_WAIT_SEC}
            )
            if answer.status != 200:
                raise Failure(str(answer.status), answer.text[:200])
            status = answer.json()
            state = status["state"]
            if state == "ready":
                return
            if state not in PENDING_STATES:
                raise Failure(state, status.get("error") or "")
            await asyncio.sleep(poll_sec)


async def provision(
    session: aiohttp.ClientSession,
    url: str,
    ledger: Ledger,
    task_ref: str,
    lifetime_sec: int,
    poll_sec: float,
) -> Env:
    env = await create(session, url, ledger, task_ref, lifetime_sec)
    await wait_ready(session, url, env.id, poll_sec)
    return env


async def timed_provision(
    session: aiohttp.ClientSession,
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
        env = await provision(session, url, ledger, task_ref, lifetime_sec, poll_sec)
    except Exception as exc:
        return Sample(started, time.perf_counter(), error_name(exc))
    ended = time.perf_counter()
    ready.append(env)
    return Sample(started, ended)


async def execute(
    session: aiohttp.ClientSession, url: str, env: Env, workload: Workload, timeout_sec: int
) -> Sample:
    """One exec, from sending the request to the whole answer read, checked."""
    started = time.perf_counter()
    error: str | None
    try:
        answer = await call(
            session,
            "POST",
            f"{url}/{env.id}/execute",
            body={"command": workload.command, "timeout_sec": timeout_sec},
            headers={"X-Environment-Token": f"Bearer {env.token}"},
        )
        ended = time.perf_counter()
        if answer.status != 200:
            error = str(answer.status)
        else:
            body = answer.json()
            error = check(workload, int(body["exit_code"]), str(body["output"]))
    except Exception as exc:
        ended = time.perf_counter()
        error = error_name(exc)
    return Sample(started, ended, error)


async def delete(session: aiohttp.ClientSession, url: str, env_id: str) -> None:
    """204 once the container is gone; 404 means there is nothing left to delete."""
    answer = await call(session, "DELETE", f"{url}/{env_id}")
    if answer.status not in (204, 404):
        raise Failure(str(answer.status), answer.text[:200])
