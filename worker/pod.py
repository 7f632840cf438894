"""A task environment's compose services, run as a pod beside its sandbox.

The sandbox is made first and owns the environment's network namespace (`NetworkMode: none`:
loopback only). Every service joins it (`NetworkMode: container:<sandbox id>`), so a service
listening on :8080 is `http://localhost:8080` from the sandbox and from the other services, and
nothing else is reachable. Each service container is hardened as a sandbox is: every capability
dropped (a task's `cap_add`, within Docker's defaults, given back), no privilege gain, bounded
memory, CPU and PIDs, a capped log, an init process, never restarted.

Contracts:
- `start_services(docker, *, env_id, sandbox_id, plans, labels, deadline_at)`: creates the
  environment's volumes (named volumes of the compose file, and one per directory the task
  binds, filled with the task's files), then starts the services batch by batch in dependency
  order, waiting before each batch for the conditions its services name (started; healthy by
  Docker's own healthcheck; completed: exited 0). Returns once every service is up: running (and
  healthy when it has a healthcheck) or, for a one-shot service, exited 0. Otherwise raises
  `PodFailed` naming the service, why (`PodFailure`) and the tail of its log; `deadline_at` is a
  wall-clock time (time.time()). What it made stays on failure: `remove_environment` removes it.
  `labels` are the environment's (taskenv.managed/env/host/deployment); each container also
  gets `taskenv.service`.
- `remove_environment(docker, env_id, deployment) -> Removed`: removes every container (but the
  sandbox, `store.container_name(env_id)`, which the caller removes) and every volume labelled
  with this environment and this deployment; another deployment's are never touched.
"""

import asyncio
import hashlib
import io
import json
import posixpath
import secrets
import tarfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import nullcontext, suppress
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

import aiodocker
from aiodocker.volumes import DockerVolume

from taskenv.shared.store import container_name
from taskenv.shared.task_services import DependsCondition, ServicePlan, TaskMount, start_order
from taskenv.worker import never_started
from taskenv.worker.container_events import ContainerEvents
from taskenv.worker.containers import LABEL_DEPLOYMENT, LABEL_ENV, LABEL_HOST, LABEL_MANAGED, LABEL_SERVICE

LABEL_VOLUME = "taskenv.volume"
POLL_SEC = 0.1
# A service's state is read when the engine says it changed (worker/container_events.py) and
# at least this often (an event lost while the stream reconnects)...
WAIT_POLL_SEC = 0.5
# ...or this often without the engine's events: the environment is then `ready` at most this
# long after its last service is (one inspect each time, ~1 ms of dockerd).
WAIT_POLL_BLIND_SEC = 0.02
# A service with no healthcheck is up once it has been running this long: one that crashes as it
# starts (a bad command, a missing file) is then seen failing, not taken as up in the moment
# between its start and its exit.
SETTLE_SEC = 0.25
LOG_TAIL_LINES = 50
LOG_TAIL_BYTES = 8 * 1024
LOG_LINE_CHARS = 400
# Fetching a failed service's log tail may outlast the deadline by at most this.
LOG_FETCH_SEC = 3.0
# A volume still in use by a container being removed (by another remover) is retried this long.
VOLUME_BUSY_SEC = 10.0
_FILL_DIR = "/fill"
_T = TypeVar("_T")


class PodFailure(StrEnum):
    """Why a service failed its environment (read after "service 'web' ")."""

    CREATE_FAILED = "could not be created"
    START_FAILED = "could not start"
    CRASHED = "exited with an error"
    OUT_OF_MEMORY = "was killed: out of memory"
    EXITED = "exited before it was healthy"
    UNHEALTHY = "is unhealthy"
    NO_HEALTHCHECK = "has no healthcheck, yet a service waits for it to be healthy"
    TIMEOUT = "was not ready within the provision timeout"
    ENGINE_ERROR = "failed in the Docker engine"


class PodFailed(Exception):
    def __init__(self, service: str, reason: PodFailure, detail: str = "", log_tail: str = "") -> None:
        self.service, self.reason, self.detail, self.log_tail = service, reason, detail, log_tail
        super().__init__(f"service {service!r} {reason}" + (f" ({detail})" if detail else ""))


class Removed(NamedTuple):
    containers: int
    volumes: int


def service_container(env_id: str, service: str) -> str:
    return f"{container_name(env_id)}-svc-{service}"


def volume_name(env_id: str, volume: str) -> str:
    return f"{container_name(env_id)}-vol-{volume}"


def bind_volume_name(env_id: str, source: str) -> str:
    """The volume holding the task's directory `source` ("" = the task's root)."""
    return f"{container_name(env_id)}-bind-{hashlib.sha256(source.encode()).hexdigest()[:12]}"


async def start_services(
    docker: aiodocker.Docker,
    *,
    env_id: str,
    sandbox_id: str,
    plans: list[ServicePlan],
    labels: dict[str, str],
    deadline_at: float,
    on_started: Callable[[], None] | None = None,
    events: ContainerEvents | None = None,
    sandbox_started: Coroutine[Any, Any, None] | None = None,
) -> None:
    """`on_started` is called once every service is started, before they are waited for.
    `events` wakes the waits when a service changes; without it they poll. `sandbox_started`
    (the created sandbox's start) runs while the services' volumes and containers are created:
    a container can join a namespace whose owner is not running yet, only not start in it."""
    deadline = asyncio.get_running_loop().time() + deadline_at - time.time()
    pod = _Pod(docker, env_id, labels, deadline, events)
    by_name = {plan.name: plan for plan in plans}
    await _all([pod.create_all(plans, sandbox_id), *([sandbox_started] if sandbox_started else [])])
    for batch in start_order(plans):
        needs = {(dep, cond) for name in batch for dep, cond in by_name[name].depends_on.items()}
        await _all(pod.wait(dep, cond) for dep, cond in sorted(needs))
        await _all(pod.start(name) for name in batch)
    if on_started is not None:
        on_started()
    await _all(pod.wait(plan.name, None) for plan in plans)


async def _all(waits: Any) -> None:
    """Run together; the first failure cancels the others and is raised as itself (a
    `PodFailed` first, if any)."""
    coroutines: list[Coroutine[Any, Any, None]] = list(waits)
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in coroutines:
                group.create_task(coroutine)
    except BaseExceptionGroup as raised:
        failed = raised.subgroup(PodFailed) or raised.subgroup(Exception)
        while failed is not None and isinstance(failed.exceptions[0], BaseExceptionGroup):
            failed = failed.exceptions[0]
        if failed is None:
            raise
        raise failed.exceptions[0] from None


def judge(state: dict[str, Any], condition: DependsCondition | None) -> bool | PodFailure:
    """True when `condition` holds (None: the service is up for good), False while it may still
    come, or why it never will."""
    health = (state.get("Health") or {}).get("Status")
    if state.get("Running"):
        if condition is DependsCondition.COMPLETED:
            return False
        if condition is DependsCondition.STARTED:
            return True
        if health is None or health == "none":
            return PodFailure.NO_HEALTHCHECK if condition is DependsCondition.HEALTHY else True
        return True if health == "healthy" else (PodFailure.UNHEALTHY if health == "unhealthy" else False)
    if state.get("Status") in ("exited", "dead"):
        if state.get("OOMKilled"):
            return PodFailure.OUT_OF_MEMORY
        if state.get("ExitCode") != 0:
            return PodFailure.CRASHED
        return PodFailure.EXITED if condition is DependsCondition.HEALTHY else True
    return False  # created, restarting, paused: not yet


class _Pod:
    def __init__(
        self,
        docker: aiodocker.Docker,
        env_id: str,
        labels: dict[str, str],
        deadline: float,
        events: ContainerEvents | None,
    ) -> None:
        self.docker, self.env_id, self.labels, self.deadline = docker, env_id, labels, deadline
        self.events = events
        # When each service's start returned (the loop's clock): its settling time counts from it.
        self.started: dict[str, float] = {}

    async def volumes(self, plans: list[ServicePlan]) -> None:
        filled: set[str] = set()
        for plan in plans:
            try:
                for volume in plan.volumes:
                    name = volume_name(self.env_id, volume.volume)
                    await self.bounded(plan.name, self.create_volume(name, volume.volume))
                for bind in plan.binds:
                    if not bind.is_file and bind.source not in filled:
                        filled.add(bind.source)
                        await self.bounded(plan.name, self.fill(bind, plan.image))
            except aiodocker.DockerError as exc:
                raise PodFailed(
                    plan.name, PodFailure.CREATE_FAILED, f"its volumes: {_message(exc)}"
                ) from None

    async def create_volume(self, name: str, volume: str) -> None:
        config = {"Name": name, "Labels": {**self.labels, LABEL_VOLUME: volume}}
        await self.docker.volumes.create(config)  # type: ignore[no-untyped-call]

    async def fill(self, bind: TaskMount, image: str) -> None:
        """The task's directory into its own volume, through a container created, never
        started, and removed."""
        volume = bind_volume_name(self.env_id, bind.source)
        await self.create_volume(volume, f"task:{bind.source or '.'}")
        mount = {"Type": "volume", "Source": volume, "Target": _FILL_DIR}
        config = never_started.config(image, [mount], self.labels)
        name = f"{container_name(self.env_id)}-fill-{secrets.token_hex(4)}"
        filler = await self.docker.containers.create(config, name=name)
        try:
            await filler.put_archive(_FILL_DIR, _archive(bind.files, bind.modes))  # type: ignore[no-untyped-call]
        finally:
            await filler.delete(force=True)

    async def create_all(self, plans: list[ServicePlan], sandbox_id: str) -> None:
        """Every service's volumes, then every service's container, not started."""
        await self.volumes(plans)
        await _all(self.create(plan, sandbox_id) for plan in plans)

    async def create(self, plan: ServicePlan, sandbox_id: str) -> None:
        config = service_config(plan, env_id=self.env_id, sandbox_id=sandbox_id, labels=self.labels)
        name = service_container(self.env_id, plan.name)
        try:
            container = await self.bounded(plan.name, self.docker.containers.create(config, name=name))
        except aiodocker.DockerError as exc:
            raise PodFailed(plan.name, PodFailure.CREATE_FAILED, _message(exc)) from None
        try:
            for bind in plan.binds:
                if bind.is_file:
                    directory, file = posixpath.split(bind.target)
                    archive = _archive({file: bind.files[""]}, {file: bind.modes[""]})
                    await self.bounded(plan.name, container.put_archive(directory, archive))  # type: ignore[no-untyped-call]
        except aiodocker.DockerError as exc:
            raise PodFailed(
                plan.name, PodFailure.CREATE_FAILED, f"file {bind.target}: {_message(exc)}"
            ) from None

    async def start(self, service: str) -> None:
        container = self.docker.containers.container(service_container(self.env_id, service))
        try:
            await self.bounded(service, container.start())
        except aiodocker.DockerError as exc:
            raise await self.failed(service, PodFailure.START_FAILED, _message(exc)) from None
        self.started[service] = asyncio.get_running_loop().time()

    async def wait(self, service: str, condition: DependsCondition | None) -> None:
        name = service_container(self.env_id, service)
        with self.events.watching(name) if self.events else nullcontext(asyncio.Event()) as changed:
            await self.wait_watched(service, condition, changed)

    async def wait_watched(
        self, service: str, condition: DependsCondition | None, changed: asyncio.Event
    ) -> None:
        container = self.docker.containers.container(service_container(self.env_id, service))
        awaited = f"waited for {condition.value if condition else 'it to be up'}"
        while True:
            changed.clear()
            try:
                state = (await self.bounded(service, container.show(), awaited)).get("State") or {}
            except aiodocker.DockerError as exc:
                raise PodFailed(service, PodFailure.ENGINE_ERROR, _message(exc)) from None
            outcome = judge(state, condition)
            settling = self.settling(service, condition, state) if outcome is True else 0.0
            if outcome is True and settling <= 0:
                return
            if isinstance(outcome, PodFailure):
                raise await self.failed(service, outcome, _detail(state))
            left = self.deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise await self.failed(service, PodFailure.TIMEOUT, awaited)
            poll = WAIT_POLL_SEC if self.events is not None and self.events.live else WAIT_POLL_BLIND_SEC
            with suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(settling or poll, left))

    def settling(self, service: str, condition: DependsCondition | None, state: dict[str, Any]) -> float:
        """Seconds until a running service without a healthcheck counts as up (0: it does)."""
        if condition is not None or (state.get("Health") or {}).get("Status") not in (None, "none"):
            return 0.0
        if not state.get("Running") or service not in self.started:
            return 0.0
        return self.started[service] + SETTLE_SEC - asyncio.get_running_loop().time()

    async def bounded(self, service: str, step: Awaitable[_T], detail: str = "") -> _T:
        try:
            async with asyncio.timeout_at(self.deadline):
                return await step
        except TimeoutError:
            raise await self.failed(service, PodFailure.TIMEOUT, detail) from None

    async def failed(self, service: str, reason: PodFailure, detail: str = "") -> PodFailed:
        return PodFailed(service, reason, detail, await self.log_tail(service))

    async def log_tail(self, service: str) -> str:
        """The last lines of the service's log, bounded; "" when there is none to read."""
        container = self.docker.containers.container(service_container(self.env_id, service))
        try:
            async with asyncio.timeout(LOG_FETCH_SEC):
                lines = await container.log(stdout=True, stderr=True, tail=LOG_TAIL_LINES)
        except (aiodocker.DockerError, TimeoutError):
            return ""
        text = "".join(
            line if len(line) <= LOG_LINE_CHARS else line[:LOG_LINE_CHARS] + "…\n" for line in lines
        )
        return text[-LOG_TAIL_BYTES:]


def service_config(
    plan: ServicePlan, *, env_id: str, sandbox_id: str, labels: dict[str, str]
) -> dict[str, Any]:
    """The service's container: in the sandbox's network namespace, hardened as a sandbox."""
    limits = plan.limits
    config: dict[str, Any] = {
        "Image": plan.image,
        "Env": [f"{name}={value}" for name, value in plan.environment.items()],
        "Labels": {**labels, LABEL_SERVICE: plan.name},
        "AttachStdin": False,
        "OpenStdin": False,
        "Tty": False,
        "HostConfig": {
            # No `NetworkDisabled` here: it would keep the container out of the namespace it joins.
            "NetworkMode": f"container:{sandbox_id}",
            "Init": True,
            "CapDrop": ["ALL"],
            "CapAdd": plan.cap_add,
            "SecurityOpt": ["no-new-privileges"],
            "Memory": limits.memory_bytes,
            "MemorySwap": limits.memory_bytes,
            "PidsLimit": limits.pids,
            "NanoCpus": limits.nano_cpus,
            "ReadonlyRootfs": plan.read_only,
            "Tmpfs": plan.tmpfs,
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
            "Mounts": _mounts(plan, env_id),
        },
    }
    optional = {
        "Cmd": plan.command,
        "Entrypoint": plan.entrypoint,
        "WorkingDir": plan.working_dir,
        "User": plan.user,
    }
    config.update({key: value for key, value in optional.items() if value is not None})
    if plan.healthcheck is not None:
        config["Healthcheck"] = plan.healthcheck.docker()
    return config


def _mounts(plan: ServicePlan, env_id: str) -> list[dict[str, Any]]:
    mounts = [
        {
            "Type": "volume",
            "Source": volume_name(env_id, v.volume),
            "Target": v.target,
            "ReadOnly": v.read_only,
        }
        for v in plan.volumes
    ]
    mounts += [
        {
            "Type": "volume",
            "Source": bind_volume_name(env_id, bind.source),
            "Target": bind.target,
            "ReadOnly": bind.read_only,
            "VolumeOptions": {"NoCopy": True},
        }
        for bind in plan.binds
        if not bind.is_file
    ]
    return mounts


def _archive(files: dict[str, bytes], modes: dict[str, int]) -> bytes:
    """A tar of `files` (relative paths), root-owned, with their directories."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directories = sorted({d for path in files for d in _parents(path)})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), modes.get(path, 0o644) | 0o444
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _detail(state: dict[str, Any]) -> str:
    if state.get("Running"):
        probes = (state.get("Health") or {}).get("Log") or []
        last = probes[-1] if probes and isinstance(probes[-1], dict) else {}
        output = str(last.get("Output", "")).strip()[-LOG_LINE_CHARS:]
        return f"last healthcheck exit code {last.get('ExitCode')}: {output}" if last else ""
    return f"exit code {state.get('ExitCode')}"


def _message(exc: aiodocker.DockerError) -> str:
    return str(exc.message)[:LOG_LINE_CHARS]


async def remove_environment(docker: aiodocker.Docker, env_id: str, deployment: str) -> Removed:
    labels = [f"{LABEL_ENV}={env_id}", f"{LABEL_DEPLOYMENT}={deployment}"]
    found = await docker.containers.list(all=True, filters=json.dumps({"label": labels}))
    sandbox = f"/{container_name(env_id)}"
    removed = 0
    for entry in found:
        if sandbox in (entry["Names"] or []):
            continue
        removed += await _remove_container(docker, str(entry.id))
    listed = await docker.volumes.list(filters={"label": labels})  # type: ignore[no-untyped-call]
    volumes = listed.get("Volumes") or []
    count = 0
    for volume in volumes:
        count += await _remove_volume(docker, str(volume["Name"]))
    return Removed(containers=removed, volumes=count)


async def environments_on_host(docker: aiodocker.Docker, host: str, deployment: str) -> set[str]:
    """The environments of this deployment and host that have service containers or volumes."""
    labels = [f"{LABEL_MANAGED}=true", f"{LABEL_HOST}={host}", f"{LABEL_DEPLOYMENT}={deployment}"]
    services = json.dumps({"label": [*labels, LABEL_SERVICE]})
    containers = await docker.containers.list(all=True, filters=services)
    listed = await docker.volumes.list(filters={"label": labels})  # type: ignore[no-untyped-call]
    found = [entry["Labels"] for entry in containers] + [v.get("Labels") for v in listed.get("Volumes") or []]
    return {str(labels_of[LABEL_ENV]) for labels_of in found if labels_of and LABEL_ENV in labels_of}


async def _remove_container(docker: aiodocker.Docker, container_id: str) -> int:
    try:
        await docker.containers.container(container_id).delete(force=True, v=True)
    except aiodocker.DockerError as exc:
        if exc.status == 404 or (exc.status == 409 and "already in progress" in str(exc.message)):
            return 0
        raise
    return 1


async def _remove_volume(docker: aiodocker.Docker, name: str) -> int:
    """Removed once no container uses it (another remover may still be removing one)."""
    volume = DockerVolume(docker, name)  # type: ignore[no-untyped-call]
    async with asyncio.timeout(VOLUME_BUSY_SEC):
        while True:
            try:
                await volume.delete()  # type: ignore[no-untyped-call]
                return 1
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return 0
                if exc.status != 409:
                    raise
            await asyncio.sleep(POLL_SEC)
