"""A task's services as a pod beside a sandbox, through the real engine (worker/pod.py): started
in dependency order, reachable from the sandbox on localhost, a one-shot seeding a volume that a
later service reads; a crashing, a never-healthy and a never-finishing service fail naming
themselves with their log tails within the deadline; removal leaves nothing of the environment
and touches no other deployment's."""

import json
import secrets
import time
from collections.abc import AsyncIterator

import aiodocker
import pytest
import yaml

from taskenv.shared.settings import Settings
from taskenv.shared.store import container_name
from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.task_services import DependsCondition, ServicePlan, plans
from taskenv.worker import pod
from taskenv.worker.containers import LABEL_DEPLOYMENT, LABEL_ENV, LABEL_HOST, LABEL_MANAGED
from tests.helpers import pod_sandbox

pytestmark = pytest.mark.integration

IMAGE = "taskenv/default:1"
DEPLOYMENT = "test-pod"
SETTINGS = Settings(service_memory_mb=64, service_cpus=0.5, service_pids=64)
FILES = TaskFiles(
    files={"site/index.html": b"hello from web\n", "site/deep/a.txt": b"deep\n", "motd": b"file bind\n"},
    modes={"site/index.html": 0o644},
)


@pytest.fixture
async def env_id(docker: aiodocker.Docker) -> AsyncIterator[str]:
    """An environment of this test's own, whose sandbox runs; everything of it removed after."""
    value = f"test-pod-{secrets.token_hex(6)}"
    async with pod_sandbox(docker, value, labels(value), DEPLOYMENT):
        yield value


def labels(env_id: str, deployment: str = DEPLOYMENT) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_ENV: env_id, LABEL_HOST: "test", LABEL_DEPLOYMENT: deployment}


def compose_plans(text: str) -> list[ServicePlan]:
    return plans(yaml.safe_load(text), FILES, images={}, settings=SETTINGS)


async def start(docker: aiodocker.Docker, env_id: str, text: str, timeout: float = 30) -> None:
    await pod.start_services(
        docker,
        env_id=env_id,
        sandbox_id=container_name(env_id),
        plans=compose_plans(text),
        labels=labels(env_id),
        deadline_at=time.time() + timeout,
    )


async def run_in(docker: aiodocker.Docker, name: str, *argv: str) -> str:
    execution = await docker.containers.container(name).exec(list(argv), stdout=True, stderr=True)
    async with execution.start(detach=False) as stream:
        chunks = []
        while (message := await stream.read_out()) is not None:
            chunks.append(message.data.decode())
    return "".join(chunks)


async def leftovers(docker: aiodocker.Docker, env_id: str) -> tuple[list[str], list[str]]:
    label = f"{LABEL_ENV}={env_id}"
    found = await docker.containers.list(all=True, filters=json.dumps({"label": [label]}))
    volumes = await docker.volumes.list(filters={"label": [label]})  # type: ignore[no-untyped-call]
    return [c["Names"][0] for c in found], [v["Name"] for v in volumes.get("Volumes") or []]


POD = """
services:
  web:
    image: taskenv/default:1
    command: httpd -f -p 8080 -h /srv
    volumes: ["./site:/srv:ro", "./motd:/etc/motd:ro"]
    healthcheck:
      test: ["CMD", "wget", "-qO-", "http://localhost:8080/"]
      interval: 100ms
      retries: 50
  seed:
    image: taskenv/default:1
    command: sh -c 'echo seeded > /data/value'
    volumes: ["data:/data"]
  reader:
    image: taskenv/default:1
    command: ["sh", "-c", "cat /data/value && exec sleep 600"]
    volumes: ["data:/data:ro"]
    environment: {GREETING: hi}
    depends_on:
      seed: {condition: service_completed_successfully}
      web: {condition: service_healthy}
volumes:
  data: {}
"""


async def test_services_start_in_order_and_answer_the_sandbox_on_localhost(docker, env_id):
    await start(docker, env_id, POD)
    sandbox = container_name(env_id)
    assert await run_in(docker, sandbox, "wget", "-qO-", "http://localhost:8080/") == "hello from web\n"
    assert await run_in(docker, sandbox, "wget", "-qO-", "http://localhost:8080/deep/a.txt") == "deep\n"
    reader = pod.service_container(env_id, "reader")
    assert await run_in(docker, reader, "cat", "/data/value") == "seeded\n"
    assert (await run_in(docker, reader, "sh", "-c", "echo $GREETING")).strip() == "hi"
    web = pod.service_container(env_id, "web")
    assert await run_in(docker, web, "cat", "/etc/motd") == "file bind\n"
    # Read-only where the file said so; hardened as a sandbox.
    assert "Read-only" in await run_in(docker, web, "sh", "-c", "touch /srv/x 2>&1")
    info = await docker.containers.container(web).show()
    host = info["HostConfig"]
    assert host["NetworkMode"] == f"container:{(await docker.containers.container(sandbox).show())['Id']}"
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == 64 * 1024 * 1024 and host["PidsLimit"] == 64 and host["NanoCpus"] == 5 * 10**8
    assert host["Init"] is True and host["RestartPolicy"]["Name"] == "no"
    assert info["Config"]["Labels"][pod.LABEL_SERVICE] == "web"

    removed = await pod.remove_environment(docker, env_id, DEPLOYMENT)
    assert removed == pod.Removed(containers=3, volumes=2)  # data, and the site directory's
    assert await leftovers(docker, env_id) == ([f"/{sandbox}"], [])


@pytest.mark.parametrize(
    ("service", "reason", "detail", "logged"),
    [
        ("command: sh -c 'echo boom-line; exit 3'", pod.PodFailure.CRASHED, "exit code 3", "boom-line"),
        (
            "command: sh -c 'echo starting-up; exec sleep 600'\n"
            "    healthcheck: {test: 'echo probe-said-no; exit 1', interval: 100ms, retries: 2}",
            pod.PodFailure.UNHEALTHY,
            "probe-said-no",
            "starting-up",
        ),
        (
            "command: sh -c 'echo still-going; exec sleep 600'",
            pod.PodFailure.TIMEOUT,
            "waited for",
            "still-going",
        ),
        # The init process starts, then fails to run the command: its own message is the log.
        ("command: ['/no/such/binary']", pod.PodFailure.CRASHED, "exit code 127", "No such file"),
    ],
)
async def test_a_failing_service_is_named_with_its_log_tail_within_the_deadline(
    docker, env_id, service, reason, detail, logged
):
    text = f"""
services:
  bad:
    image: taskenv/default:1
    {service}
  after:
    image: taskenv/default:1
    command: sleep 600
    depends_on: {{bad: {{condition: service_completed_successfully}}}}
"""
    if reason is not pod.PodFailure.TIMEOUT:
        text = text.replace(
            "service_completed_successfully",
            "service_healthy" if "healthcheck" in service else "service_started",
        )
    # Only the timeout case waits out its deadline; the others end at their failure, which a
    # loaded engine may take seconds to show (a short deadline turned them into timeouts).
    timeout = 3 if reason is pod.PodFailure.TIMEOUT else 30
    started = time.monotonic()
    with pytest.raises(pod.PodFailed) as caught:
        await start(docker, env_id, text, timeout=timeout)
    failed = caught.value
    assert (failed.service, failed.reason) == ("bad", reason), str(failed)
    assert detail in failed.detail.lower() and logged in failed.log_tail, (failed.detail, failed.log_tail)
    assert time.monotonic() - started < timeout + pod.LOG_FETCH_SEC + 1
    assert str(failed).startswith("service 'bad' ")


async def test_a_service_without_a_healthcheck_that_dies_as_it_starts_is_not_taken_as_up(docker, env_id):
    """Running at its first read, exited a moment later: the settling time sees it fail."""
    text = """
services:
  brief:
    image: taskenv/default:1
    command: sh -c 'echo going; sleep 0.05; exit 3'
"""
    with pytest.raises(pod.PodFailed) as caught:
        await start(docker, env_id, text)
    assert (caught.value.service, caught.value.reason) == ("brief", pod.PodFailure.CRASHED)


async def test_removal_touches_no_other_deployment(docker, env_id):
    other = await docker.volumes.create(  # type: ignore[no-untyped-call]
        {"Name": f"{container_name(env_id)}-other", "Labels": labels(env_id, "another-deployment")}
    )
    try:
        await start(docker, env_id, "services:\n  once:\n    image: taskenv/default:1\n    command: 'true'\n")
        assert await pod.remove_environment(docker, env_id, DEPLOYMENT) == pod.Removed(
            containers=1, volumes=0
        )
        assert (await leftovers(docker, env_id))[1] == [other.name]
    finally:
        await other.delete()


_STARTED, _HEALTHY, _DONE = (DependsCondition.STARTED, DependsCondition.HEALTHY, DependsCondition.COMPLETED)


@pytest.mark.parametrize(
    ("state", "condition", "outcome"),
    [
        ({"Running": True, "Status": "running"}, _STARTED, True),
        ({"Running": True, "Status": "running"}, None, True),
        ({"Running": True, "Status": "running"}, _DONE, False),
        ({"Running": True, "Status": "running"}, _HEALTHY, pod.PodFailure.NO_HEALTHCHECK),
        ({"Running": True, "Health": {"Status": "starting"}}, None, False),
        ({"Running": True, "Health": {"Status": "healthy"}}, _HEALTHY, True),
        ({"Running": True, "Health": {"Status": "unhealthy"}}, None, pod.PodFailure.UNHEALTHY),
        ({"Running": False, "Status": "exited", "ExitCode": 0}, _DONE, True),
        ({"Running": False, "Status": "exited", "ExitCode": 0}, None, True),
        ({"Running": False, "Status": "exited", "ExitCode": 0}, _HEALTHY, pod.PodFailure.EXITED),
        ({"Running": False, "Status": "exited", "ExitCode": 2}, _STARTED, pod.PodFailure.CRASHED),
        (
            {"Running": False, "Status": "exited", "ExitCode": 137, "OOMKilled": True},
            None,
            pod.PodFailure.OUT_OF_MEMORY,
        ),
        ({"Running": False, "Status": "created"}, None, False),
    ],
)
def test_judge_reads_a_containers_state_for_each_condition(state, condition, outcome):
    assert pod.judge(state, condition) == outcome
