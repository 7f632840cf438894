"""Faults, each against a private taskenv whose parts are stopped, killed and restarted for real:
Redis, the API, the worker, containers. Every request must get an answer by its deadline plus
a few seconds; what was created before a fault must still work after it.
(A worker SIGKILLed mid-execute: test_integration_hosts.py.)"""

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from taskenv.shared import keys
from tests.conftest import Env
from tests.harness import running_in
from tests.helpers import api_client, commands_in_flight, provision, until, wait_for_state
from tests.helpers import execute as run
from tests.stack import PYTHON, Stack, running

pytestmark = pytest.mark.integration

# Past a request's own deadline, the most a fault may add before the client has its answer.
SLACK_SEC = 5.0


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    with running(tmp_path) as started:
        yield started


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(stack.key()) as client:
        yield client


async def state_of(http: httpx.AsyncClient, env: Env, *wanted: str, timeout: float = 30) -> str | None:
    """The environment's state once it is one of `wanted` (or whatever it is at `timeout`)."""
    return (await wait_for_state(http, env.url, *wanted, timeout=timeout))["state"]


def is_envelope(response: httpx.Response) -> bool:
    body = response.json()
    return set(body) >= {"code", "detail", "type", "errors"} and body["code"] == response.status_code


def container(env: Env) -> str:
    return f"taskenv-{env.id}"


def docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60)


async def written_out(stack: Stack) -> None:
    """Everything Redis holds so far is in its append-only file, which a SIGKILL of the server
    does not lose (`appendfsync everysec` writes it each second at worst): a marker written now
    is found there, and the file is written in order."""
    marker = f"test-marker-{uuid.uuid4().hex}"
    client = stack.client()
    client.set(marker, "1")
    client.close()
    aof = stack.home / "appendonlydir"
    await until(lambda: any(marker.encode() in part.read_bytes() for part in aof.glob("*.aof")), "the AOF")


@pytest.mark.parametrize(
    ("how", "down_sec"),
    # A clean restart; a crash with Redis down past the clients' ~2 s of retries. With
    # `appendfsync everysec` (as `taskenv up` runs it) a crash loses at most the last second.
    [(signal.SIGTERM, 0.5), (signal.SIGKILL, 3.0)],
    ids=["sigterm", "sigkill"],
)
async def test_redis_restart_keeps_keys_tokens_and_environments(stack, http, how, down_sec):
    env = await provision(http, stack)
    assert (await run(http, env, "echo before")).json()["output"] == "before\n"
    await written_out(stack)
    started = time.monotonic()
    in_flight = asyncio.create_task(run(http, env, "sleep 2; echo across", timeout_sec=5))
    await until(lambda: running_in(container(env), "sleep 2"), "the command runs")
    await asyncio.to_thread(Stack.stop, stack.redis, how)
    down = time.monotonic()
    during = await http.get(f"{env.url}/status")
    answered_in = time.monotonic() - down
    assert during.status_code == 503 and is_envelope(during), during.text
    assert during.json()["type"] == "service_unavailable_error" and during.headers["Retry-After"] == "1"
    assert answered_in < SLACK_SEC
    await asyncio.sleep(down_sec)  # the point: Redis stays down that long
    await asyncio.to_thread(stack.start_redis)  # on the same socket
    answer = await in_flight
    in_flight_sec = time.monotonic() - started
    # The command's own deadline is 5 s: an answer, not a hang, by then plus the slack.
    assert time.monotonic() - started < 5 + SLACK_SEC
    assert answer.status_code in (200, 502, 503, 504) and (answer.is_success or is_envelope(answer)), (
        answer.text
    )
    # The same API key, environment and execute token work, through the same processes.
    assert (await http.get(env.url)).status_code == 200
    first_after = time.monotonic()
    after = await run(http, env, "echo after")
    recovered_in = time.monotonic() - first_after
    assert after.status_code == 200 and after.json()["output"] == "after\n", after.text
    assert stack.api is not None and stack.api.poll() is None
    assert stack.worker is not None and stack.worker.poll() is None
    fresh = await provision(http, stack)
    assert (await run(http, fresh, "echo new")).json()["output"] == "new\n"
    for one in (env, fresh):
        assert (await http.delete(one.url)).status_code == 204
    print(
        f"\nredis {how.name} down {down_sec} s: 503 during the outage in {answered_in:.2f} s;"
        f" in-flight execute answered {answer.status_code} after {in_flight_sec:.2f} s (deadline 5 s);"
        f" first execute after the restart took {recovered_in:.2f} s"
    )


# Containers killed or removed from outside (removed before a command: test_integration_execute.py).


async def test_a_container_killed_from_outside_fails_its_environment(client, service, env):
    assert docker("kill", container(env)).returncode == 0
    response = await run_shared(client, env, "true")
    assert response.status_code == 502 and is_envelope(response)
    assert response.json()["detail"].startswith(
        "container_gone: container stopped outside taskenv (exit code"
    )
    status = (await client.get(f"{env.url}/status")).json()
    assert status["state"] == "failed" and status["error"] == response.json()["detail"]
    assert (await client.delete(env.url)).status_code == 204
    assert docker("inspect", container(env)).returncode != 0  # removed


@pytest.mark.parametrize("how", ["kill", "rm"])
async def test_a_container_lost_during_a_command_answers_502_at_once(client, service, env, how):
    pending = asyncio.create_task(run_shared(client, env, "echo started; sleep 60", timeout_sec=30))
    await until(lambda: running_in(container(env), "sleep 60"), "the command runs")
    args = ["kill", container(env)] if how == "kill" else ["rm", "-f", container(env)]
    assert docker(*args).returncode == 0
    lost = time.monotonic()
    response = await pending
    elapsed = time.monotonic() - lost
    assert response.status_code == 502 and response.json()["detail"].startswith("container_gone: "), (
        response.text
    )
    assert elapsed < SLACK_SEC, elapsed  # not at the command's 30 s deadline
    assert (await client.get(f"{env.url}/status")).json()["state"] == "failed"
    assert (await client.delete(env.url)).status_code == 204
    print(f"\ncontainer {how} mid-command: 502 after {elapsed:.2f} s")


async def run_shared(
    client: httpx.AsyncClient, env: Env, command: str, timeout_sec: int = 10
) -> httpx.Response:
    return await run(client, env, command, timeout_sec)


# Worker start-up reconciles; the API process restarts.


async def test_worker_start_up_reconciles_containers_and_environments(stack, http):
    kept = await provision(http, stack)
    vanished = await provision(http, stack)
    killed = await provision(http, stack)
    await asyncio.to_thread(Stack.stop, stack.worker)
    # While no worker runs: a container of this host no environment owns, one removed, one killed.
    orphan = f"taskenv-orphan-{uuid.uuid4().hex[:8]}"
    labels = [
        "taskenv.managed=true",
        f"taskenv.host={stack.host}",
        f"taskenv.deployment={stack.deployment}",
        f"taskenv.env={uuid.uuid4()}",
    ]
    made = docker(
        "run", "-d", "--name", orphan, "--network", "none", *(f"--label={label}" for label in labels),
        "taskenv/default:1", "sleep", "3600",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert docker("rm", "-f", container(vanished)).returncode == 0
    assert docker("kill", container(killed)).returncode == 0
    started = time.monotonic()
    stack.start_worker()
    assert await state_of(http, vanished, "failed") == "failed"
    assert await state_of(http, killed, "failed") == "failed"
    reconciled_in = time.monotonic() - started
    await until(lambda: docker("inspect", orphan).returncode != 0, "the orphan container removed", 10)
    await until(
        lambda: docker("inspect", container(killed)).returncode != 0, "the failed one's container removed", 10
    )
    status = (await http.get(f"{vanished.url}/status")).json()
    assert status["error"] == "container_gone: container removed outside taskenv"
    assert (
        (await http.get(f"{killed.url}/status"))
        .json()["error"]
        .startswith("container_gone: container stopped")
    )
    assert (await run(http, kept, "echo still here")).json()["output"] == "still here\n"
    for env in (kept, vanished, killed):
        assert (await http.delete(env.url)).status_code == 204
    print(f"\nworker start-up: 2 environments failed and 2 containers removed within {reconciled_in:.2f} s")


async def test_an_api_that_dies_mid_provision_leaves_nothing_behind(stack, http):
    """The API is SIGKILLed right after enqueueing a provision and a command: the jobs run once
    regardless, the environment ends ready, and its container goes at its expiry."""
    # A lifetime long enough for two API restarts on a loaded machine (parallel tests), short
    # enough to see the expiry.
    created = await http.post(stack.envs_url(), json={"task_ref": "default", "timeout_sec": 30})
    assert created.status_code == 201
    env = Env(
        created.json()["id"], created.json()["execute_token"], f"{stack.envs_url()}/{created.json()['id']}"
    )
    await asyncio.to_thread(Stack.stop, stack.api, signal.SIGKILL)
    stack.start_api()
    assert await state_of(http, env, "ready", "failed") == "ready"
    in_flight = asyncio.create_task(run(http, env, "echo ran >> /tmp/once; sleep 1", timeout_sec=5))
    redis_url = stack.env["TASKENV_REDIS_URL"]
    await until(lambda: commands_in_flight(redis_url, env.id) == 1, "the command admitted and queued")
    await asyncio.to_thread(Stack.stop, stack.api, signal.SIGKILL)
    with pytest.raises(httpx.HTTPError):
        await in_flight  # its connection died with the API
    stack.start_api()
    await until(lambda: commands_in_flight(redis_url, env.id) == 0, "the command ran to its end")
    counted = await run(http, env, "wc -l < /tmp/once")
    assert counted.status_code == 200 and counted.json()["output"].strip() == "1", counted.text
    # Reaped at its expiry: torn down, container removed, nothing left queued.
    assert await state_of(http, env, "torn_down", timeout=60) == "torn_down"
    await until(lambda: stack.containers() == [], "its container removed", 5)
    redis = stack.client()
    for queue in (keys.host_queue(stack.host), keys.PROVISION_QUEUE):
        # Only the reaper's own cron jobs (one running, which arq keeps queued until it ends,
        # and the next).
        left = [str(job) for job in redis.zrange(keys.arq_queue(queue), 0, -1)]
        assert all(job.startswith("cron:") for job in left), left


async def test_jobs_nobody_runs_expire_instead_of_staying_queued(stack, http):
    """With no worker and the API gone, a queued job's data expires at its deadline: a worker
    that comes back later never runs it."""
    env = await provision(http, stack)
    await asyncio.to_thread(Stack.stop, stack.worker)
    answer = await run(http, env, "echo ran >> /tmp/late", timeout_sec=1)
    assert answer.status_code == 504 and is_envelope(answer)
    redis = stack.client()
    queue = keys.arq_queue(keys.host_queue(stack.host))
    # (The reaper's cron job, left by the stopped worker itself, is the next worker's to run.)
    job_ids = [job_id for job_id in redis.zrange(queue, 0, -1) if not job_id.startswith("cron:")]
    assert job_ids and all(redis.pttl(f"arq:job:{job_id}") == -2 for job_id in job_ids)  # expired
    stack.start_worker()
    # The new worker's pass over the queue drops the expired jobs (the cron entry may stay).
    await until(lambda: redis.zcard(queue) <= 1, "the expired jobs leave the queue")
    assert (await run(http, env, "cat /tmp/late 2>/dev/null | wc -l")).json()["output"].strip() == "0"
    assert (await http.delete(env.url)).status_code == 204


# The Docker engine restarts. Not the machine's shared dockerd (other tests use it): a private
# one, with its own socket, data, exec root and containerd, no networking of its own.


class PrivateDockerd:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.sock = home / "docker.sock"
        self.host = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "dockerd", "--host", self.host, "--data-root", str(self.home / "data"),
                "--exec-root", str(self.home / "exec"), "--pidfile", str(self.home / "docker.pid"),
                "--bridge=none", "--iptables=false", "--ip-masq=false", "--userland-proxy=false",
                "--shutdown-timeout", "2",
            ],
            stdout=open(self.home / "dockerd.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.cli("version").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private dockerd did not start; see {self.home / 'dockerd.log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        Stack.stop(self.proc, signal.SIGTERM, timeout=60)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "--host", self.host, *args], capture_output=True, text=True, timeout=60
        )


@pytest.fixture
def engine(tmp_path) -> Iterator[PrivateDockerd]:
    if os.geteuid() != 0 or shutil.which("dockerd") is None:
        pytest.skip("a private dockerd needs root and dockerd")
    # A short path: the daemon's unix sockets must fit in 108 bytes.
    home = Path(tempfile.mkdtemp(prefix="tdk-", dir="/tmp"))
    dockerd = PrivateDockerd(home)
    try:
        dockerd.start()
        built = subprocess.run(
            [*PYTHON, "image", "build"], env={**os.environ, "DOCKER_HOST": dockerd.host}, capture_output=True
        )
        assert built.returncode == 0, built.stderr
        yield dockerd
    finally:
        if dockerd.proc is not None and dockerd.proc.poll() is None:
            ids = dockerd.cli("ps", "-aq").stdout.split()
            if ids:
                dockerd.cli("rm", "-f", *ids)
        dockerd.stop()
        shutil.rmtree(home, ignore_errors=True)


async def test_a_docker_engine_restart_fails_environments_cleanly_and_recovers(tmp_path, engine):
    stack = Stack(tmp_path, {"DOCKER_HOST": engine.host})
    try:
        stack.start()
        async with api_client(stack.key()) as http:
            env = await provision(http, stack)
            assert (await run(http, env, "echo before")).json()["output"] == "before\n"
            started = time.monotonic()
            in_flight = asyncio.create_task(run(http, env, "echo started; sleep 60", timeout_sec=20))
            await until(lambda: running_in(container(env), "sleep 60", engine.host), "the command runs")
            stopping = time.monotonic()
            await asyncio.to_thread(engine.stop)
            stopped_in = time.monotonic() - stopping
            answer = await in_flight
            in_flight_sec = time.monotonic() - started
            assert answer.status_code == 502 and is_envelope(answer), answer.text
            assert in_flight_sec < 20 + SLACK_SEC
            # With the engine down: 502 at once, the same stable type.
            down = await run(http, env, "true")
            assert down.status_code == 502 and down.json()["type"] == "bad_gateway_error", down.text
            await asyncio.to_thread(engine.start)
            back = time.monotonic()
            # Its container did not survive the restart (no live-restore): the environment is
            # failed with the reason, answers 502 `container_gone`, and still tears down.
            after = await run(http, env, "true")
            assert after.status_code == 502 and after.json()["detail"].startswith("container_gone: "), (
                after.text
            )
            status = (await http.get(f"{env.url}/status")).json()
            assert status["state"] == "failed" and status["error"].startswith("container_gone: ")
            assert (await http.delete(env.url)).status_code == 204
            assert engine.cli("inspect", container(env)).returncode != 0
            # The worker's engine client reconnected by itself: new environments work.
            fresh = await provision(http, stack)
            recovered_in = time.monotonic() - back
            assert (await run(http, fresh, "echo after")).json()["output"] == "after\n"
            assert (await http.delete(fresh.url)).status_code == 204
            print(
                f"\ndockerd restart: stopped in {stopped_in:.2f} s; in-flight execute answered"
                f" {answer.status_code} after {in_flight_sec:.2f} s ({answer.json()['detail'][:60]}...);"
                f" new environment ready {recovered_in:.2f} s after the engine was back"
            )
    finally:
        stack.close()
