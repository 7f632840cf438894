"""The engine's container events as wake-ups (worker/container_events.py), through the real
engine: a watcher of a container is woken when it starts, turns healthy and dies; another
deployment's containers wake no one; and a pod's wait for a healthy service ends when the
engine says so, not at its next read of the state (the slow timer is set far past the test's
own bound, so only the event can end the wait in time)."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest

from taskenv.shared.settings import Settings
from taskenv.shared.store import container_name
from taskenv.shared.task_archive import TaskFiles
from taskenv.shared.task_services import plans
from taskenv.worker import pod
from taskenv.worker.container_events import ContainerEvents, of_deployment
from taskenv.worker.containers import LABEL_DEPLOYMENT, LABEL_ENV, LABEL_HOST, LABEL_MANAGED
from tests.helpers import pod_sandbox, until

pytestmark = pytest.mark.integration

IMAGE = "taskenv/default:1"
DEPLOYMENT = f"test-events-{secrets.token_hex(4)}"


def labels(env_id: str, deployment: str = DEPLOYMENT) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_ENV: env_id, LABEL_HOST: "test", LABEL_DEPLOYMENT: deployment}


@pytest.fixture
async def events(docker: aiodocker.Docker) -> AsyncIterator[ContainerEvents]:
    watcher = ContainerEvents(docker, of_deployment(DEPLOYMENT))
    watcher.start()
    await until(lambda: watcher.live, "the event stream open", timeout=10)
    try:
        yield watcher
    finally:
        await watcher.close()


@pytest.fixture
async def env_id(docker: aiodocker.Docker) -> AsyncIterator[str]:
    value = f"test-events-{secrets.token_hex(6)}"
    async with pod_sandbox(docker, value, labels(value), DEPLOYMENT):
        yield value


async def start_web(docker: aiodocker.Docker, env_id: str, events: ContainerEvents) -> None:
    """A service whose healthcheck passes from its first probe, 0.3 s after its start: its
    wait needs a second read of its state, which the slow timer (set to 60 s) cannot give."""
    compose = {
        "services": {
            "web": {
                "image": IMAGE,
                "command": "sleep 600",
                "healthcheck": {"test": ["CMD", "true"], "interval": "300ms", "retries": 5},
            }
        }
    }
    service_plans = plans(compose, TaskFiles(), images={}, settings=Settings())
    async with asyncio.timeout(20):
        await pod.start_services(
            docker, env_id=env_id, sandbox_id=container_name(env_id), plans=service_plans,
            labels=labels(env_id), deadline_at=time.time() + 30, events=events,
        )  # fmt: skip


async def changed_within(changed: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(changed.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def test_a_watcher_is_woken_at_start_health_and_death(
    docker: aiodocker.Docker, events: ContainerEvents
) -> None:
    name = f"test-events-{secrets.token_hex(6)}"
    config: dict[str, Any] = {
        "Image": IMAGE,
        "Cmd": ["sleep", "600"],
        "Labels": labels(name),
        "HostConfig": {"NetworkMode": "none"},
        "Healthcheck": {"Test": ["CMD", "true"], "Interval": 200_000_000, "Retries": 3},
    }
    container = await docker.containers.create(config, name=name)
    try:
        with events.watching(name) as changed:
            await container.start()
            assert await changed_within(changed, 10), "no wake at start"
            changed.clear()
            assert await changed_within(changed, 10), "no wake when it turned healthy"
            assert (await container.show())["State"]["Health"]["Status"] == "healthy"
            changed.clear()
            await container.kill()
            assert await changed_within(changed, 10), "no wake when it died"
    finally:
        await container.delete(force=True)


async def test_another_deployments_containers_wake_no_one(
    docker: aiodocker.Docker, events: ContainerEvents
) -> None:
    name = f"test-events-{secrets.token_hex(6)}"
    config = {"Image": IMAGE, "Cmd": ["true"], "Labels": labels(name, deployment="someone-else")}
    container = await docker.containers.create(config, name=name)
    try:
        with events.watching(name) as changed:
            await container.start()
            await container.wait(timeout=10)
            assert not await changed_within(changed, 0.5)
    finally:
        await container.delete(force=True)


async def test_a_pods_wait_ends_when_the_engine_says_healthy(
    docker: aiodocker.Docker, events: ContainerEvents, env_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pod, "WAIT_POLL_SEC", 60.0)
    await start_web(docker, env_id, events)
    state = (await docker.containers.container(pod.service_container(env_id, "web")).show())["State"]
    assert state["Health"]["Status"] == "healthy"


async def test_without_a_live_stream_the_wait_reads_the_state_on_the_short_timer(
    docker: aiodocker.Docker, env_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that is not open (the engine restarting) must not leave a wait on the slow timer."""
    monkeypatch.setattr(pod, "WAIT_POLL_SEC", 60.0)
    closed = ContainerEvents(docker, of_deployment(DEPLOYMENT))  # never started: not live
    await start_web(docker, env_id, closed)
