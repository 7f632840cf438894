"""The fast in-process tier: the real API application (routes, middleware, error envelope,
authentication, admission and dispatch scripts, result listener) served through
httpx.ASGITransport, over fakeredis (with Lua), and a fake worker that takes jobs from the queues
and answers them through the real worker's job functions and answer path (worker/job_functions.py,
worker/arq_worker.py `_publish_result`), only Docker faked. No process, no socket, no engine."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import httpx
import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from redis.asyncio import ConnectionPool, Redis

from taskenv.api import app as api_app
from taskenv.api import auth, dispatch
from taskenv.shared import apikeys, jobs, keys
from taskenv.shared.settings import Settings
from taskenv.worker import arq_worker, context, job_functions, pod
from taskenv.worker import containers as worker_containers
from taskenv.worker.context import WorkerContext
from tests.helpers import Env, envs_url

BASE_URL = "http://taskenv.test"
HOST = "fake-host"
POLL_SEC = 0.005


def _pool(server: fakeredis.FakeServer, decode: bool) -> ConnectionPool:
    return ConnectionPool(
        connection_class=fakeredis.FakeAsyncRedis().connection_pool.connection_class,
        server=server,
        decode_responses=decode,
    )


def _arq(server: fakeredis.FakeServer, queue: str) -> ArqRedis:
    return ArqRedis(
        connection_pool=_pool(server, decode=False),
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        default_queue_name=keys.arq_queue(queue),
    )


Command = Callable[[str], Awaitable[tuple[int, str]]]


async def echo_command(command: str) -> tuple[int, str]:
    """The fake sandbox's shell: answers every command with its own text."""
    return 0, f"ran: {command}\n"


def _worker_ctx(settings: Settings, records: Redis, arq: ArqRedis) -> dict[str, Any]:
    """arq's ctx as worker/arq_worker.py's start-up leaves it, with no Docker client: every
    function of worker/containers.py that would use one is faked (`_fake_docker`)."""
    ctx: dict[str, Any] = {"redis": arq}
    context.install(ctx, WorkerContext(settings, records, None, "fake-deployment"))  # type: ignore[arg-type]
    return ctx


@dataclass
class FakeWorker:
    """Host `HOST`'s worker without Docker: it takes each job off its queue (arq's job record,
    as the dispatcher wrote it), runs the real job function, and sends the answer the way a
    worker process does. `command` stands for the sandbox's shell."""

    server: fakeredis.FakeServer
    settings: Settings
    command: Command = echo_command
    ran: list[str] = field(default_factory=list)
    paused: bool = False

    async def run(self) -> None:
        arq = _arq(self.server, HOST)
        records = Redis(connection_pool=_pool(self.server, decode=True))
        ctx = _worker_ctx(self.settings, records, arq)
        queues = [keys.arq_queue(keys.PROVISION_QUEUE), keys.arq_queue(keys.host_queue(HOST))]
        try:
            while True:
                taken = 0 if self.paused else sum([await self._take(arq, ctx, queue) for queue in queues])
                if not taken:
                    await asyncio.sleep(POLL_SEC)
        finally:
            await records.aclose()
            await arq.aclose()

    async def _take(self, arq: ArqRedis, ctx: dict[str, Any], queue: str) -> int:
        taken = 0
        for raw_id in await arq.zrange(queue, 0, -1):
            job_id = raw_id.decode()
            if not await arq.zrem(queue, job_id):
                continue
            data = await arq.get(job_key_prefix + job_id)
            if data is None:  # expired before it was taken
                continue
            job = deserialize_job(data, deserializer=jobs.deserialize)
            self.ran.append(job.function)
            job_ctx = {**ctx, "job_id": job_id}
            await getattr(job_functions, job.function)(job_ctx, *job.args, **job.kwargs)
            await arq_worker._publish_result(job_ctx)
            taken += 1
        return taken


class Clock:
    """The API's clock for the org's request rate (`time.time` in api/auth.py and api/dispatch.py,
    whose `now` the token bucket counts from), with a hand to move it on: a test advances it by
    the Retry-After it was given instead of waiting that long."""

    def __init__(self) -> None:
        self.ahead_sec = 0.0

    def time(self) -> float:
        return time.time() + self.ahead_sec

    def advance(self, seconds: float) -> None:
        self.ahead_sec += seconds


@dataclass
class InProcess:
    http: httpx.AsyncClient
    records: Redis
    worker: FakeWorker
    settings: Settings
    clock: Clock

    def envs_url(self, org: str = "acme", workspace: str = "main") -> str:
        return envs_url(BASE_URL, org, workspace)

    async def key(self, org: str = "acme", workspace: str = "main") -> str:
        return await apikeys.create(self.records, org, workspace)


class _FakeSandbox:
    id = "fake-sandbox"

    async def start(self) -> None:
        return None


def _fake_docker(monkeypatch: pytest.MonkeyPatch, worker: FakeWorker) -> None:
    async def create(*_: Any, **__: Any) -> _FakeSandbox:
        return _FakeSandbox()

    async def no_services(*_: Any) -> pod.Removed:
        return pod.Removed(containers=0, volumes=0)

    async def remove(*_: Any) -> bool:
        return True

    async def tail_logs(*_: Any) -> str:
        return "fake logs\n"

    async def run_command(_: Any, payload: jobs.ExecJob, *__: Any) -> dict[str, Any]:
        exit_code, output = await worker.command(payload["command"])
        return {"exit_code": exit_code, "output": output}

    monkeypatch.setattr(worker_containers, "create", create)
    monkeypatch.setattr(worker_containers, "remove", remove)
    monkeypatch.setattr(pod, "remove_environment", no_services)
    monkeypatch.setattr(worker_containers, "tail_logs", tail_logs)
    monkeypatch.setattr(job_functions, "run_command", run_command)


@contextlib.asynccontextmanager
async def in_process(monkeypatch: pytest.MonkeyPatch, **settings: Any) -> AsyncIterator[InProcess]:
    """The API app and a fake worker on one fakeredis server, `settings` as the operator's."""
    server = fakeredis.FakeServer()
    config = Settings(host_id=HOST, **settings)
    monkeypatch.setattr(api_app, "arq_client", lambda s: _arq(server, keys.host_queue(s.host_id)))
    monkeypatch.setattr(
        api_app, "records_client", lambda s: Redis(connection_pool=_pool(server, decode=True))
    )
    worker = FakeWorker(server, config)
    _fake_docker(monkeypatch, worker)
    clock = Clock()
    for module in (auth, dispatch):
        monkeypatch.setattr(module, "time", clock)
    app = api_app.create_app(config)
    records = Redis(connection_pool=_pool(server, decode=True))
    running = asyncio.create_task(worker.run(), name="fake-worker")
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=BASE_URL, timeout=10) as http:
                yield InProcess(http, records, worker, config, clock)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await records.aclose()


async def provisioned(stack: InProcess, key: str, org: str = "acme", workspace: str = "main") -> Env:
    """A ready environment (the fake worker claims it at once)."""
    url = stack.envs_url(org, workspace)
    response = await stack.http.post(url, json={"task_ref": "default"}, headers={"X-API-Key": key})
    assert response.status_code == 201, response.text
    created = response.json()
    env = Env(created["id"], created["execute_token"], f"{url}/{created['id']}")
    for _ in range(400):
        status = (await stack.http.get(f"{env.url}/status", headers={"X-API-Key": key})).json()
        if status["state"] != "provisioning":
            break
        await asyncio.sleep(POLL_SEC)
    assert status["state"] == "ready", status
    return env
