"""The raw side of a pushed task's provision: the containers taskenv makes for one of its
environments, made straight through the engine, as the least any design must do.

A pod is the sandbox (worker/containers.py `container_config`, with the task directory's staged
volume and the runner's volume mounted as taskenv mounts them), the task's named volumes, then
each compose service (worker/pod.py `service_config`, in the sandbox's network namespace)
created and started batch by batch in dependency order, each waited for under the conditions
worker/pod.py judges (started, healthy, done). What the pod is made of is read from a live
environment of the task (`discover`): its sandbox's image and volumes, its services' images, and
the task's compose file pulled through the registry routes, as `dn task pull` reads it.

Everything carries `taskenv.bench=true` and `taskenv.bench-pod=<name>`, never `taskenv.managed`:
no taskenv reaper touches it, and `remove` finds all of a pod by its label.
"""

import asyncio
import json
import time
import uuid
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import aiohttp
from aiodocker.volumes import DockerVolume

from taskenv.bench.ledger import Ledger, guarded
from taskenv.bench.raw_side import LABEL_BENCH, error_name, remove_container
from taskenv.bench.stats import Sample
from taskenv.shared import task_archive, task_services, task_yaml
from taskenv.shared.settings import Settings
from taskenv.shared.task_oci import Manifest
from taskenv.shared.task_refs import TaskRef
from taskenv.shared.task_validation import COMPOSE_FILES
from taskenv.shared.tasks import TaskSpec
from taskenv.worker import pod, runner_link
from taskenv.worker.container_events import ContainerEvents
from taskenv.worker.containers import LABEL_ENV, LABEL_SERVICE, container_config
from taskenv.worker.runner_volume import RUNNER_DIR
from taskenv.worker.task_volume import TASK_DIR, sandbox_mount

LABEL_POD = "taskenv.bench-pod"
POD_PREFIX = "taskenv-bench-pod-"
READY_TIMEOUT_SEC = 120.0
MAX_TASK_BYTES = 64 * 1024 * 1024


class NotMeasurable(Exception):
    """The environment's pod cannot be made raw (the reason says why)."""


@dataclass(frozen=True)
class TaskPod:
    """What one environment of the task is made of."""

    sandbox: TaskSpec
    task_volume: str
    runner_volume: str | None
    plans: list[task_services.ServicePlan]
    # The runner's link dir (the socket transport), when the environment's sandbox mounts one:
    # a raw pod mounts a directory of its own there, as taskenv's sandboxes do.
    link_dir: Path | None = None

    @property
    def services(self) -> int:
        return len(self.plans)


def is_pushed(task_ref: str) -> bool:
    """A pushed task named with its org (`org/name[@version]`): the bench makes its pod raw."""
    return "/" in task_ref


async def discover(
    docker: aiodocker.Docker, session: aiohttp.ClientSession, base_url: str, api_key: str, task_ref: str,
    env_id: str,
) -> TaskPod:  # fmt: skip
    """The pod of the ready environment `env_id` of `task_ref`."""
    found = await docker.containers.list(all=True, filters=json.dumps({"label": [f"{LABEL_ENV}={env_id}"]}))
    services = {c["Labels"][LABEL_SERVICE]: c["Image"] for c in found if LABEL_SERVICE in (c["Labels"] or {})}
    sandboxes = [c for c in found if LABEL_SERVICE not in (c["Labels"] or {})]
    if len(sandboxes) != 1:
        raise NotMeasurable(f"environment {env_id} has {len(sandboxes)} sandboxes on this engine")
    info = await docker.containers.container(sandboxes[0]["Id"]).show()
    mounts = {m.get("Destination"): m.get("Name") for m in info.get("Mounts") or []}
    if not mounts.get(TASK_DIR):
        raise NotMeasurable(f"environment {env_id} has no task directory: not a pushed task's")
    files = await pull(session, base_url, api_key, task_ref)
    name = next((n for n in COMPOSE_FILES if n in files.files), None)
    compose = task_yaml.load(files.text(name) or "") if name else {"services": {}}
    if not isinstance(compose, dict):
        raise NotMeasurable("the task's compose file is not a mapping")
    plans = task_services.plans(compose, files, images=services, settings=Settings())
    if any(not bind.is_file for plan in plans for bind in plan.binds):
        raise NotMeasurable("a service binds a task directory: not measured raw")
    sandbox = TaskSpec(name="bench", image=info["Config"]["Image"])
    link_dir = await runner_link.mounted_link_dir(docker, sandboxes[0]["Id"], env_id)
    return TaskPod(sandbox, str(mounts[TASK_DIR]), mounts.get(RUNNER_DIR), plans, link_dir)


async def pull(
    session: aiohttp.ClientSession, base_url: str, api_key: str, task_ref: str
) -> task_archive.TaskFiles:
    """The task's files, through the registry routes `dn task pull` reads."""
    ref = TaskRef.parse(task_ref)
    auth = aiohttp.BasicAuth("__token__", api_key)
    repository = f"{base_url}/api/v1/{ref.org}/{ref.name}"
    async with session.get(f"{repository}/manifests/{ref.version or 'latest'}", auth=auth) as answer:
        if answer.status != 200:
            raise NotMeasurable(f"manifest of {task_ref}: HTTP {answer.status}")
        manifest = Manifest.model_validate_json(await answer.read())
    async with session.get(f"{base_url}/api/v1/{ref.org}/blobs/{manifest.layer.digest}", auth=auth) as answer:
        if answer.status != 200:
            raise NotMeasurable(f"archive of {task_ref}: HTTP {answer.status}")
        blob = await answer.read()
    return await asyncio.to_thread(task_archive.read, blob, MAX_TASK_BYTES)


def new_name() -> str:
    return f"{POD_PREFIX}{uuid.uuid4().hex}"


async def timed_provision(
    docker: aiodocker.Docker,
    task: TaskPod,
    ledger: Ledger,
    poll_sec: float,
    events: ContainerEvents | None = None,
) -> Sample:
    """Sandbox, volumes, services, until every service is up; the name is in the ledger first."""
    name = new_name()
    ledger.add_raw(name)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(READY_TIMEOUT_SEC):
            await guarded(ledger, make(docker, task, name, poll_sec, events))
    except Exception as exc:
        return Sample(started, time.perf_counter(), error_name(exc))
    return Sample(started, time.perf_counter())


async def make(
    docker: aiodocker.Docker, task: TaskPod, name: str, poll_sec: float, events: ContainerEvents | None = None
) -> None:
    """`events` (the engine's, for the bench's containers) wakes the waits, as taskenv's
    worker is woken; without it they read the state every `poll_sec`."""
    labels = {LABEL_BENCH: "true", LABEL_POD: name}
    record = {"id": name, "host": "bench", "org": "bench", "workspace": "bench"}
    mounts = [sandbox_mount(task.task_volume)]
    if task.link_dir is not None:
        mounts.append(runner_link.prepare(task.link_dir, _link_id(name)))
    config = container_config(record, task.sandbox, "bench", task.runner_volume, mounts)
    config["Labels"] = labels
    sandbox = await docker.containers.create(config, name=name)
    await sandbox.start()
    for volume in {v.volume for plan in task.plans for v in plan.volumes}:
        await docker.volumes.create({"Name": pod.volume_name(name, volume), "Labels": labels})  # type: ignore[no-untyped-call]
    by_name = {plan.name: plan for plan in task.plans}
    for batch in task_services.start_order(task.plans):
        needs = {(dep, cond) for service in batch for dep, cond in by_name[service].depends_on.items()}
        await asyncio.gather(*(_wait(docker, name, dep, cond, poll_sec, events) for dep, cond in needs))
        await asyncio.gather(*(_start(docker, name, str(sandbox.id), by_name[s], labels) for s in batch))
    await asyncio.gather(*(_wait(docker, name, plan.name, None, poll_sec, events) for plan in task.plans))


async def _start(
    docker: aiodocker.Docker,
    name: str,
    sandbox_id: str,
    plan: task_services.ServicePlan,
    labels: dict[str, str],
) -> None:
    config = pod.service_config(plan, env_id=name, sandbox_id=sandbox_id, labels=labels)
    container = await docker.containers.create(config, name=pod.service_container(name, plan.name))
    await container.start()


async def _wait(
    docker: aiodocker.Docker, name: str, service: str, condition: task_services.DependsCondition | None,
    poll_sec: float, events: ContainerEvents | None,
) -> None:  # fmt: skip
    container_name = pod.service_container(name, service)
    container = docker.containers.container(container_name)
    with events.watching(container_name) if events else nullcontext(asyncio.Event()) as changed:
        while True:
            changed.clear()
            outcome = pod.judge((await container.show()).get("State") or {}, condition)
            if outcome is True:
                return
            if isinstance(outcome, pod.PodFailure):
                raise NotMeasurable(f"service {service!r} {outcome}")
            with suppress(TimeoutError):
                await asyncio.wait_for(
                    changed.wait(), pod.WAIT_POLL_SEC if events and events.live else poll_sec
                )


def _link_id(name: str) -> str:
    """The raw pod's link directory: named as an environment id, as the link dir requires."""
    return str(uuid.UUID(name.removeprefix(POD_PREFIX)))


async def remove(docker: aiodocker.Docker, name: str) -> None:
    """A pod whole: its services, its sandbox, its volumes (found by its label), its link directory."""
    labels = {"label": [f"{LABEL_POD}={name}"]}
    for found in await docker.containers.list(all=True, filters=json.dumps(labels)):
        if f"/{name}" not in (found["Names"] or []):
            await remove_container(docker, str(found.id))
    link_dir = await _mounted_link_dir(docker, name)
    await remove_container(docker, name)
    if link_dir is not None:
        await asyncio.to_thread(runner_link.remove, link_dir, _link_id(name))
    listed = await docker.volumes.list(filters=labels)  # type: ignore[no-untyped-call]
    for volume in listed.get("Volumes") or []:
        await _remove_volume(docker, str(volume["Name"]))


async def _remove_volume(docker: aiodocker.Docker, volume: str) -> None:
    try:
        await DockerVolume(docker, volume).delete()  # type: ignore[no-untyped-call]
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise


async def _mounted_link_dir(docker: aiodocker.Docker, name: str) -> Path | None:
    try:
        return await runner_link.mounted_link_dir(docker, name, _link_id(name))
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return None
        raise
