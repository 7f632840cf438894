"""A task environment's life on a real stack (Redis, worker, API, the Docker engine), end to
end: its teardown script runs once, before its containers go, at DELETE and at expiry (the
outcome the worker writes to its record, and the one log line each run leaves, say so); nothing
of it is left after DELETE, expiry or a failed provision (containers and volumes, found by the
environment's label); a worker SIGKILLed while a provision waits for a slow service leaves
pieces that the restarted worker's reaper removes once the environment has failed; and a named
volume shared by two services (a one-shot seeding it, a reader) works, one per environment."""

import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from taskenv.shared import keys
from taskenv.shared.task_archive import TaskFiles, pack
from tests.harness import FAST_TIMINGS, containers_of, create_key
from tests.helpers import Env, async_http, execute, until, wait_for_state
from tests.stack import Stack
from tests.test_integration_tasks import Registry

pytestmark = pytest.mark.integration

IMAGE = "taskenv/default:1"
# A page served on :8080 of the environment's loopback, healthy once it answers.
WEB = {
    "image": IMAGE,
    "command": [
        "sh",
        "-c",
        "mkdir -p /tmp/www && echo up > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www",
    ],
    "healthcheck": {
        "test": ["CMD", "wget", "-qO", "/dev/null", "http://localhost:8080/"],
        "interval": "200ms",
        "timeout": "2s",
        "retries": 50,
    },
    "volumes": ["scratch:/scratch"],
}
# Exits 0 only if the service still answers: the containers were all there when it ran.
TEARDOWN = "#!/bin/sh\nwget -qO- http://localhost:8080/ | grep -q '^up$'\n"
WAIT_SEC = 60


def task(name: str, services: dict, **manifest: object) -> tuple[bytes, dict]:
    """A task archive: task.yaml, its compose file, and its scripts (`teardown.sh`)."""
    raw = {
        "name": name,
        "version": "1.0.0",
        "instruction": "Nothing to do.",
        "verification": {"method": "flag", "path": "/tmp/flag", "value": "x"},
        **manifest,
    }
    files = {
        "task.yaml": yaml.safe_dump(raw).encode(),
        "docker-compose.yaml": yaml.safe_dump({"services": services, "volumes": _volumes(services)}).encode(),
    }
    modes = {"task.yaml": 0o644, "docker-compose.yaml": 0o644}
    if "teardown" in manifest:
        files["teardown.sh"], modes["teardown.sh"] = TEARDOWN.encode(), 0o755
    return pack(TaskFiles(files=files, modes=modes)), raw


def _volumes(services: dict) -> dict:
    named = {v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    return {name: {} for name in sorted(named)}


async def push(client: httpx.AsyncClient, base_url: str, org: str, key: str, layer: bytes, raw: dict) -> None:
    answer = await Registry(client, base_url, org, key).push(raw["name"], layer, raw)
    assert answer.status_code == 201, answer.text


def volumes_of(env_id: str) -> list[str]:
    command = ["docker", "volume", "ls", "-q", f"--filter=label=taskenv.env={env_id}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.split()


def nothing_left(env_id: str) -> bool:
    return containers_of(f"taskenv.env={env_id}") == [] and volumes_of(env_id) == []


def record(redis_url: str, env_id: str) -> dict[str, str]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return dict(client.hgetall(keys.environment(env_id)))  # type: ignore[arg-type]
    finally:
        client.close()


def teardown_runs(log: Path, env_id: str) -> int:
    """The worker's one line per teardown script run of this environment."""
    return log.read_text(errors="replace").count(f"teardown script of {env_id}")


class Org:
    """An org of its own on a stack, with an API client, for one test."""

    def __init__(self, base_url: str, env: dict[str, str], http: httpx.AsyncClient) -> None:
        self.name = f"life-{uuid.uuid4().hex[:8]}"
        self.base_url, self.key, self.http = base_url, create_key(env, self.name), http
        self.http.headers["X-API-Key"] = self.key
        self.url = f"{base_url}/api/v1/org/{self.name}/ws/main/environments"

    async def push(self, layer: bytes, raw: dict) -> None:
        await push(self.http, self.base_url, self.name, self.key, layer, raw)

    async def create(self, task_name: str, **body: object) -> Env:
        created = await self.http.post(self.url, json={"task_ref": task_name, **body})
        assert created.status_code == 201, created.text
        made = created.json()
        return Env(made["id"], made["execute_token"], f"{self.url}/{made['id']}")

    async def ready(self, task_name: str, **body: object) -> Env:
        env = await self.create(task_name, **body)
        status = await wait_for_state(self.http, env.url, "ready", "failed", timeout=WAIT_SEC)
        assert status["state"] == "ready", status
        return env


@pytest.fixture
async def org(service) -> AsyncIterator[Org]:
    async with async_http(timeout=httpx.Timeout(90, connect=5)) as http:
        yield Org(service.base_url, service.env, http)


def service_log(service) -> Path:
    return Path(service.env["TASKENV_TASKS_PATH"]).parent / "service.log"


async def test_teardown_runs_once_at_delete_before_the_containers_go(service, org):
    await org.push(*task("torn", {"web": WEB}, teardown={"script": "teardown.sh", "timeout": 20}))
    env = await org.ready("torn")
    assert containers_of(f"taskenv.env={env.id}", "taskenv.service=web")
    assert any(name.endswith("-vol-scratch") for name in volumes_of(env.id))

    deleted = await org.http.delete(env.url)
    assert deleted.status_code == 204, deleted.text
    # The DELETE answers once the containers are gone, and the script ran while they were there.
    assert nothing_left(env.id)
    assert json.loads(record(service.redis_url, env.id)["teardown_outcome"]) == {
        "outcome": "exited",
        "exit_code": 0,
    }
    assert teardown_runs(service_log(service), env.id) == 1
    again = await org.http.delete(env.url)
    assert again.status_code in (204, 404), again.text
    assert teardown_runs(service_log(service), env.id) == 1


async def test_teardown_runs_once_at_expiry_before_the_containers_go(service, org):
    await org.push(*task("expiring", {"web": WEB}, teardown={"script": "teardown.sh", "timeout": 20}))
    env = await org.ready("expiring", timeout_sec=6)
    status = await wait_for_state(org.http, env.url, "torn_down", timeout=WAIT_SEC)
    assert status["state"] == "torn_down" and "expired" in (status.get("error") or ""), status
    await until(
        lambda: nothing_left(env.id), "the expired environment's containers and volumes removed", WAIT_SEC
    )
    # Written before the containers went, so there once they are gone.
    assert json.loads(record(service.redis_url, env.id)["teardown_outcome"]) == {
        "outcome": "exited",
        "exit_code": 0,
    }
    assert teardown_runs(service_log(service), env.id) == 1


async def test_a_failed_provision_leaves_nothing(service, org):
    # The page comes up with its volume, then a service that needs it healthy crashes.
    crashing = {"image": IMAGE, "command": ["sh", "-c", "echo giving up; exit 3"], "volumes": ["scratch:/s"]}
    crashing["depends_on"] = {"web": {"condition": "service_healthy"}}
    await org.push(
        *task("doomed", {"web": WEB, "crash": crashing}, teardown={"script": "teardown.sh", "timeout": 20})
    )
    env = await org.create("doomed")
    status = await wait_for_state(org.http, env.url, "failed", "ready", timeout=WAIT_SEC)
    assert status["state"] == "failed" and "service 'crash'" in status["error"], status
    assert nothing_left(env.id)
    # A provision that failed never ran its teardown script: nothing was handed to the agent.
    assert record(service.redis_url, env.id).get("teardown_outcome", "") == ""
    assert teardown_runs(service_log(service), env.id) == 0


SEED = {
    "image": IMAGE,
    # A value of this environment's own, written once into the shared volume.
    "command": ["sh", "-c", "cat /proc/sys/kernel/random/uuid > /data/token"],
    "volumes": ["shared:/data"],
}
READER = {
    "image": IMAGE,
    "command": ["httpd", "-f", "-p", "8080", "-h", "/data"],
    "volumes": ["shared:/data:ro"],
    "depends_on": {"seed": {"condition": "service_completed_successfully"}},
}


async def test_a_named_volume_is_shared_by_its_services_and_by_no_other_environment(service, org):
    await org.push(*task("seeded", {"seed": SEED, "reader": READER}))
    first = await org.ready("seeded")
    second = await org.ready("seeded")
    try:
        tokens = []
        for env in (first, second):
            read = await execute(org.http, env, "wget -qO- http://localhost:8080/token")
            assert read.status_code == 200 and read.json()["exit_code"] == 0, read.text
            tokens.append(read.json()["output"].strip())
            assert [v for v in volumes_of(env.id) if v.endswith("-vol-shared")], volumes_of(env.id)
        assert len(set(tokens)) == 2 and all(len(token) == 36 for token in tokens), tokens
        # The first environment still reads its own value after the second was seeded.
        reread = await execute(org.http, first, "wget -qO- http://localhost:8080/token")
        assert reread.json()["output"].strip() == tokens[0]
    finally:
        for env in (first, second):
            await org.http.delete(env.url)
    assert nothing_left(first.id) and nothing_left(second.id)


# The service never gets healthy while the provision waits: the worker is killed in that wait.
SLOW = {
    "image": IMAGE,
    "command": ["sleep", "600"],
    "healthcheck": {"test": ["CMD", "test", "-f", "/tmp/never"], "interval": "200ms", "retries": 1000},
    "volumes": ["scratch:/scratch"],
}


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    settings = {**FAST_TIMINGS, "TASKENV_PROVISION_TIMEOUT_SEC": "120"}
    started = Stack(tmp_path, settings).start()
    yield started
    started.close()


async def test_a_worker_killed_mid_provision_leaves_pieces_its_reaper_removes(stack):
    async with async_http(timeout=httpx.Timeout(90, connect=5)) as http:
        org = Org(stack.base_url, stack.env, http)
        await org.push(*task("slow", {"slow": SLOW}))
        env = await org.create("slow")
        waiting = lambda: containers_of(f"taskenv.env={env.id}", "taskenv.service=slow")  # noqa: E731
        await until(waiting, "the slow service's container", WAIT_SEC)
        assert (await org.http.get(f"{env.url}/status")).json()["state"] == "provisioning"

        Stack.stop(stack.worker, sig=9)
        # Sandbox, service and volume are left behind by the dead worker.
        assert len(containers_of(f"taskenv.env={env.id}")) == 2 and volumes_of(env.id)
        stack.start_worker()
        status = await wait_for_state(org.http, env.url, "failed", timeout=WAIT_SEC)
        # Failed for its lost worker (or its whole host, when the restart took longer than that).
        assert status["state"] == "failed" and " lost" in status["error"], status
        await until(lambda: nothing_left(env.id), "the dead worker's pieces removed by the reaper", WAIT_SEC)
