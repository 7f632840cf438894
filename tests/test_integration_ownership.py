"""A deployment owns only what it made, and DELETE and lost workers say the right thing in time
(issue 10, cases 6 to 8). Real Redis, real worker and API processes, the real Docker engine:
each test is an attack or a fault next to a victim environment that must not notice it."""

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from taskenv.shared import keys
from tests.cluster import timed
from tests.conftest import Env
from tests.helpers import async_http, provision, until
from tests.helpers import execute as run
from tests.stack import PYTHON, Stack

pytestmark = pytest.mark.integration

SLACK_SEC = 5.0


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


def running(container: str) -> bool:
    return docker("inspect", "-f", "{{.State.Running}}", container).stdout.strip() == "true"


def label(container: str, name: str) -> str:
    return docker("inspect", "-f", f'{{{{index .Config.Labels "{name}"}}}}', container).stdout.strip()


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[Stack]]:
    """Stacks a test starts (`stacks.append(Stack(...).start())`), all closed after it."""
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.close()


@asynccontextmanager
async def api_of(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    key = await asyncio.to_thread(stack.key)
    async with async_http(headers={"X-API-Key": key}, timeout=httpx.Timeout(60, connect=5)) as http:
        yield http


def name(env: Env) -> str:
    return f"taskenv-{env.id}"


async def reaper_passes(stack: Stack, more: int) -> None:
    """Wait until the stack's worker has run `more` reaper passes from now (its heartbeat
    carries the count): no fixed sleep."""
    first = await asyncio.to_thread(stack.worker_metric, "taskenv_reaper_passes_total")
    await until(
        lambda: stack.worker_metric("taskenv_reaper_passes_total") >= first + more,
        f"{more} reaper passes of {stack.host}",
    )


# Case 6: Redis restarted empty, or a wrong URL.


@pytest.mark.parametrize("how", ["flushed", "flushed-then-worker-restarted"])
async def test_a_wiped_store_removes_no_container(stacks, tmp_path, how):
    """Flushed: the deployment id the worker started with is gone. Restarted: the worker joins
    the same explicit TASKENV_DEPLOYMENT again, and the count rule (more containers without a
    record than max(5, 10% of the records)) is what keeps them."""
    explicit = {"TASKENV_DEPLOYMENT": f"prod-{uuid.uuid4().hex[:6]}"} if "restarted" in how else {}
    stack = Stack(tmp_path, explicit)
    stacks.append(stack.start())
    async with api_of(stack) as http:
        envs = list(await asyncio.gather(*(provision(http, stack) for _ in range(6))))
        assert (await run(http, envs[0], "echo hi")).json()["output"] == "hi\n"
    assert {label(name(e), "taskenv.deployment") for e in envs} == {stack.deployment}
    await asyncio.to_thread(stack.client().flushall)
    wiped_at = time.monotonic()
    reason = "marker_missing"
    if how == "flushed-then-worker-restarted":
        await asyncio.to_thread(Stack.stop, stack.worker)
        stack.start_worker()
        reason = "too_many_unknown"
    line = f"the store looks wiped ({reason}): 6 containers of deployment {stack.deployment}"
    # Twice: a pass after the first refusal removes nothing either.
    await until(lambda: len(stack.log_lines(line)) >= 2, "two refusals logged", timeout=20)
    assert all(await asyncio.gather(*(asyncio.to_thread(running, name(e)) for e in envs)))
    assert " ERROR taskenv.worker: " in stack.log_lines(line)[0]
    # Its heartbeat carries the metrics: kept containers, refusals by reason.
    await until(lambda: stack.worker_metric("taskenv_reaper_kept_containers") == 6, "the kept gauge")
    assert await asyncio.to_thread(stack.worker_metric, "taskenv_reaper_refusals_total") >= 1
    print(f"\nstore wiped ({how}): {timed(wiped_at)} s later all 6 containers still run; refusals logged")


def test_a_worker_pointed_at_another_deployments_redis_refuses_to_start(stacks, tmp_path):
    stack = Stack(tmp_path, {"TASKENV_DEPLOYMENT": "prod-b"})
    stacks.append(stack)
    stack.start_redis()
    stack.client().set(keys.DEPLOYMENT, "prod-a")
    started = subprocess.run([*PYTHON, "worker"], env=stack.env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    assert started.stderr.strip() == (
        "taskenv worker: TASKENV_DEPLOYMENT is 'prod-b' but this Redis belongs to deployment"
        " 'prod-a': check TASKENV_REDIS_URL, or set TASKENV_DEPLOYMENT to the deployment's id"
    )
    assert stack.client().get(keys.DEPLOYMENT) == "prod-a" and stack.containers() == []


# Case 7: two deployments on one Docker engine, with the same host id.


async def test_two_deployments_sharing_an_engine_and_a_host_id_leave_each_other_alone(stacks, tmp_path):
    host = f"shared-{uuid.uuid4().hex[:6]}"
    for side in ("victim", "attacker"):
        (tmp_path / side).mkdir()
    victim = Stack(tmp_path / "victim", host=host)
    attacker = Stack(tmp_path / "attacker", host=host)
    stacks.append(victim.start())
    async with api_of(victim) as victim_http:
        mine = await provision(victim_http, victim)
        # A command runs across the other deployment's start and its reaper's passes.
        command = asyncio.create_task(run(victim_http, mine, "echo started; sleep 6; echo done", 30))
        started = time.monotonic()
        stacks.append(await asyncio.to_thread(attacker.start))
        assert attacker.deployment != victim.deployment
        async with api_of(attacker) as attacker_http:
            theirs = await provision(attacker_http, attacker)
            await asyncio.gather(reaper_passes(victim, 2), reaper_passes(attacker, 2))
            answer = await command
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"exit_code": 0, "output": "started\ndone\n"}
            for http, env in ((victim_http, mine), (attacker_http, theirs)):
                assert (await http.get(f"{env.url}/status")).json()["state"] == "ready"
                assert (await run(http, env, "echo alive")).json()["output"] == "alive\n"
            assert running(name(mine)) and running(name(theirs))
            assert victim.containers() == [docker("inspect", "-f", "{{.Id}}", name(mine)).stdout[:12]]
            # A DELETE in one deployment removes its own container only.
            assert (await attacker_http.delete(theirs.url)).status_code == 204
            assert docker("inspect", name(theirs)).returncode != 0 and running(name(mine))
    print(f"\ntwo deployments, one host id: the victim's command answered 200 after {timed(started)} s")


# Case 8: DELETE while a command runs; workers killed during DELETEs and provisions.


async def test_a_delete_during_a_command_answers_it_409_torn_down_with_its_output(stacks, tmp_path):
    stack = Stack(tmp_path)
    stacks.append(stack.start())
    async with api_of(stack) as http:
        env = await provision(http, stack)
        bystander = await provision(http, stack)
        command = asyncio.create_task(run(http, env, "echo started; sleep 60", timeout_sec=30))
        await until(lambda: "sleep 60" in docker("top", name(env)).stdout, "the command running")
        deleted_at = time.monotonic()
        assert (await http.delete(env.url)).status_code == 204
        answer = await command
        answered = timed(deleted_at)
        assert answer.status_code == 409, answer.text
        body = answer.json()
        assert body["type"] == "conflict_error"
        assert body["detail"] == f"Environment {env.id} was torn down while the command ran"
        assert body["output"] == "started\n"
        assert answered < SLACK_SEC  # not at the command's 30 s deadline
        assert (await http.get(f"{env.url}/status")).json()["state"] == "torn_down"
        assert (await run(http, bystander, "echo fine")).json()["output"] == "fine\n"
    print(f"\nDELETE during a command: its caller got 409 torn down in {answered} s")


def stop_in_blpop(proc: subprocess.Popen[bytes]) -> None:
    """Freeze a worker: its pending BLPOP on the host's wake list still takes the next job."""
    proc.send_signal(signal.SIGSTOP)


async def enqueued_teardown_taken(client: aioredis.Redis, host: str) -> bool:
    """A teardown job is queued for the host and its wake was popped (by the frozen worker)."""
    queued = [j for j in await client.zrange(keys.arq_queue(keys.host_queue(host)), 0, -1) if "cron" not in j]
    return bool(queued) and await client.llen(keys.wake(keys.host_queue(host))) == 0


@pytest.mark.parametrize(("dead_after", "heartbeat"), [(6, 0.5), (10, 1.0)], ids=["fast", "defaults"])
async def test_a_worker_killed_during_a_delete_has_its_teardown_rerun_by_another(
    cluster_factory, cluster_api, dead_after, heartbeat
):
    # A long idle wait keeps each worker in one BLPOP, served first come first served: the first
    # worker, blocked since its start, takes the teardown once frozen. With the defaults the
    # teardown's 10 s wait ends about when the loss is noticed: either way it runs again.
    cluster = await cluster_factory(
        hosts=("a",),
        TASKENV_WORKER_IDLE_WAIT_SEC="30",
        TASKENV_HOST_DEAD_AFTER_SEC=str(dead_after),
        TASKENV_HEARTBEAT_SEC=str(heartbeat),
    )
    api = await cluster_api(cluster)
    env_id, bystander = await api.create(), await api.create()
    await api.ready(env_id)
    await api.ready(bystander)
    (first,) = cluster.workers["a"]
    # The second worker starts before the DELETE: its start-up reaper cannot be what removes it.
    second = cluster.start_worker("a")
    await until(lambda: len(cluster.worker_ids("a")) == 2, "a second worker of the host")
    stop_in_blpop(first)
    stopped_at = time.monotonic()
    deleting = asyncio.create_task(api.http.delete(api.url(env_id)))
    host = cluster.host_id("a")
    await until(lambda: asyncio.run(_taken(cluster.redis_url, host)), "the teardown taken")
    first.kill()
    first.wait()
    cluster.workers["a"].remove(first)
    response = await asyncio.wait_for(deleting, 30)
    answered = timed(stopped_at)
    assert response.status_code == 204
    assert answered > 1, "the live worker took the teardown: the frozen one was not first in line"
    # 204 means removed: the teardown ran again, on the live worker.
    assert docker("inspect", f"taskenv-{env_id}").returncode != 0, "the container is still there"
    assert answered < dead_after + 3  # the loss noticed, not twice the 10 s teardown wait
    assert second.poll() is None
    assert (await api.run(bystander, "echo fine")).json()["output"] == "fine\n"
    print(
        f"\nworker killed during a DELETE (dead after {dead_after} s): 204 with the container removed"
        f" {answered} s after it froze"
    )


async def _taken(redis_url: str, host: str) -> bool:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return await enqueued_teardown_taken(client, host)
    finally:
        await client.aclose()


async def test_a_delete_whose_host_has_no_live_worker_is_204_and_the_reaper_finishes(
    cluster_factory, cluster_api
):
    cluster = await cluster_factory(hosts=("a",), TASKENV_WORKER_IDLE_WAIT_SEC="30")
    api = await cluster_api(cluster)
    env_id = await api.create()
    await api.ready(env_id)
    (only,) = cluster.workers["a"]
    stop_in_blpop(only)
    stopped_at = time.monotonic()
    deleting = asyncio.create_task(api.http.delete(api.url(env_id)))
    await until(lambda: asyncio.run(_taken(cluster.redis_url, cluster.host_id("a"))), "the teardown taken")
    cluster.kill("a")
    response = await asyncio.wait_for(deleting, 30)
    answered = timed(stopped_at)
    assert response.status_code == 204 and answered < 3 + 3  # at the host's loss
    assert (await api.state(env_id))["state"] == "torn_down"
    # As README says: the container waits for its host's reaper...
    assert docker("inspect", f"taskenv-{env_id}").returncode == 0
    back = time.monotonic()
    cluster.start_worker("a")
    # ...which removes it as soon as a worker of the host is back.
    await until(lambda: docker("inspect", f"taskenv-{env_id}").returncode != 0, "the container removed")
    print(
        f"\nDELETE with no live worker: 204 in {answered} s;"
        f" container removed {timed(back)} s after a worker came back"
    )


class DockerProxy:
    """A unix-socket proxy in front of the real Docker engine that a test can hold: requests then
    get no answer, as from an engine stuck in a create."""

    def __init__(self, path: Path, target: str = "/var/run/docker.sock") -> None:
        self.path, self.target = path, target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, held: bool) -> None:
            while data := await src.read(65536):
                if held:
                    await self.flowing.wait()
                dst.write(data)
                await dst.drain()
            dst.close()

        pumps = [pump(reader, up_writer, True), pump(up_reader, writer, False)]
        await asyncio.gather(*pumps, return_exceptions=True)

    async def close(self) -> None:
        self.flowing.set()
        if self.server is not None:
            self.server.close()


async def test_a_worker_killed_mid_provision_fails_it_at_once_and_its_job_leaves_the_queue(
    cluster_factory, cluster_api, tmp_path
):
    # A short path: a unix socket's must fit in 108 bytes.
    proxy = DockerProxy(Path(f"/tmp/tdp-{uuid.uuid4().hex[:6]}.sock"))
    await proxy.start()
    try:
        cluster = await cluster_factory(hosts=(), TASKENV_HOST_DEAD_AFTER_SEC="6")
        first = cluster.start_worker("a", DOCKER_HOST=f"unix://{proxy.path}")
        await cluster.wait_live("a")
        api = await cluster_api(cluster)
        bystander = await api.create()
        await api.ready(bystander)
        proxy.flowing.clear()  # the engine answers the first worker no more
        env_id = await api.create()
        (first_id,) = cluster.worker_ids("a")
        claimed = lambda: asyncio.run(api_field(cluster.redis_url, env_id, "provisioner")) == first_id  # noqa: E731
        await until(claimed, "the provision claimed by the first worker")
        cluster.host_settings["a"].pop("DOCKER_HOST")
        cluster.start_worker("a")
        await until(lambda: len(cluster.worker_ids("a")) == 2, "a second worker of the host")
        first.kill()
        first.wait()
        cluster.workers["a"].remove(first)
        killed_at = time.monotonic()
        deadline = time.monotonic() + 6 + 3 + SLACK_SEC
        while (status := await api.state(env_id))["state"] == "provisioning" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        failed_in = timed(killed_at)
        assert status["state"] == "failed", status
        assert status["error"] == f"worker {first_id} lost while provisioning it: no heartbeat for 6 s"
        assert failed_in < 6 + 3  # at the loss, not the provision's 60 s deadline
        # Its dead provision job no longer counts in the provision queue.
        client = aioredis.Redis.from_url(cluster.redis_url, decode_responses=True)
        assert await client.zcard(keys.arq_queue(keys.PROVISION_QUEUE)) == 0
        await client.aclose()
        # The host lives on through its other worker, which serves the bystander and new work.
        assert (await api.run(bystander, "echo fine")).json()["output"] == "fine\n"
        assert await api.ready(await api.create()) == cluster.host_id("a")
        print(f"\nworker killed mid-provision: the environment failed {failed_in} s after the kill")
    finally:
        await proxy.close()
        proxy.path.unlink(missing_ok=True)


async def api_field(redis_url: str, env_id: str, field: str) -> str | None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return await client.hget(keys.environment(env_id), field)  # type: ignore[no-any-return]
    finally:
        await client.aclose()
