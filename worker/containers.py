"""Sandbox containers: created hardened, found by name or label, removed for good."""

import asyncio
import json
from contextlib import suppress
from typing import Any, NamedTuple

import aiodocker

from taskenv.shared.store import Record, container_name
from taskenv.shared.tasks import TaskSpec
from taskenv.worker.runner_volume import sandbox_host_config

LABEL_MANAGED = "taskenv.managed"
LABEL_ENV = "taskenv.env"
# The Docker host whose worker made it: a reaper touches only its own host's containers.
LABEL_HOST = "taskenv.host"
# The deployment (shared/deployment.py) that made it: nothing touches another deployment's.
LABEL_DEPLOYMENT = "taskenv.deployment"
# On a task service's container (worker/pod.py): the compose service it runs. The sandbox has none.
LABEL_SERVICE = "taskenv.service"


def labels_of(record: Record, deployment: str) -> dict[str, str]:
    """What marks every container and volume of an environment as this deployment's and its own."""
    return {
        LABEL_MANAGED: "true",
        LABEL_ENV: record["id"],
        LABEL_HOST: record["host"],
        LABEL_DEPLOYMENT: deployment,
    }


def container_config(
    record: Record,
    spec: TaskSpec,
    deployment: str,
    runner_volume: str | None = None,
    extra_mounts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Hardened by default: no network, no capabilities, no privilege gain, bounded memory,
    pids and CPU, a read-only root with a size-capped /tmp, and an init process that reaps
    orphaned children. With `runner_volume`, the runner mounted read-only and the three
    capabilities it needs (worker/runner_volume.py); `extra_mounts` (read-only: a task's directory,
    the runner's link dir) added to its mounts."""
    resources = spec.resources
    memory = resources.memory_mb * 1024 * 1024
    config: dict[str, Any] = {
        "Image": spec.image,
        "Cmd": spec.command,
        "Env": [f"{name}={value}" for name, value in spec.env.items()],
        "WorkingDir": spec.workdir,
        "Labels": {
            **labels_of(record, deployment),
            "taskenv.org": record["org"],
            "taskenv.workspace": record["workspace"],
            "taskenv.task": spec.ref,
        },
        # Network `none` (below) gives it a loopback and nothing else. No `NetworkDisabled`: with
        # it the engine leaves /etc/hosts empty, and `localhost` (a task's service URLs) would not
        # resolve in the sandbox nor in the services that share its namespace.
        "AttachStdin": False,
        "OpenStdin": False,
        "Tty": False,
        "HostConfig": {
            "NetworkMode": "none",
            "Init": True,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Memory": memory,
            "MemorySwap": memory,
            "PidsLimit": resources.pids,
            "NanoCpus": int(resources.cpus * 1e9),
            "ReadonlyRootfs": spec.read_only_root,
            # Docker's default for tmpfs is noexec; scripts written to /tmp must run.
            "Tmpfs": {"/tmp": f"rw,exec,nosuid,nodev,size={resources.tmp_mb}m,mode=1777"},  # noqa: S108
            "RestartPolicy": {"Name": "no"},
            "LogConfig": {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "1"}},
        },
    }
    if runner_volume is not None:
        config["HostConfig"].update(sandbox_host_config(runner_volume))
    if extra_mounts:
        config["HostConfig"]["Mounts"] = [*config["HostConfig"].get("Mounts", []), *extra_mounts]
    return config


async def create(
    docker: aiodocker.Docker,
    record: Record,
    spec: TaskSpec,
    deployment: str,
    runner_volume: str | None = None,
    extra_mounts: list[dict[str, Any]] | None = None,
) -> aiodocker.containers.DockerContainer:
    """The sandbox, created, not started."""
    config = container_config(record, spec, deployment, runner_volume, extra_mounts)
    return await docker.containers.create(config, name=container_name(record["id"]))


async def remove(docker: aiodocker.Docker, name: str, deployment: str) -> bool:
    """Force-remove; False when there was nothing to remove, or the container of that name is
    another deployment's. When another remover (the reaper, a second DELETE) got there first,
    wait until the container is really gone."""
    container = docker.containers.container(name)
    try:
        if not _owned_by(await container.show(), deployment):
            return False
        await container.delete(force=True, v=True)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        if exc.status != 409 or "already in progress" not in str(exc.message):
            raise
        await _wait_gone(container)
    return True


def _owned_by(info: dict[str, Any], deployment: str) -> bool:
    """A container made before deployments were labelled has no label: its name, from a random
    environment id, is its only owner mark."""
    labels = (info.get("Config") or {}).get("Labels") or {}
    return bool(labels.get(LABEL_DEPLOYMENT, deployment) == deployment)


REMOVAL_WAIT_SEC = 30.0


async def _wait_gone(container: aiodocker.containers.DockerContainer) -> None:
    async with asyncio.timeout(REMOVAL_WAIT_SEC):
        while True:
            try:
                await container.show()
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return
                raise
            await asyncio.sleep(0.05)


async def tail_logs(docker: aiodocker.Docker, name: str, lines: int) -> str:
    chunks = await docker.containers.container(name).log(stdout=True, stderr=True, tail=lines)
    return "".join(chunks)


class Managed(NamedTuple):
    name: str
    running: bool


async def managed_on_host(docker: aiodocker.Docker, host: str, deployment: str) -> dict[str, Managed]:
    """Every sandbox this deployment made on this host, by environment id (task services are
    worker/pod.py's)."""
    labels = [f"{LABEL_MANAGED}=true", f"{LABEL_HOST}={host}", f"{LABEL_DEPLOYMENT}={deployment}"]
    filters = json.dumps({"label": labels})
    found = await docker.containers.list(all=True, filters=filters)
    return {
        c["Labels"][LABEL_ENV]: Managed(c["Names"][0].lstrip("/"), c["State"] == "running")
        for c in found
        if LABEL_SERVICE not in (c["Labels"] or {})
    }


async def why_stopped(docker: aiodocker.Docker, name: str, settle_sec: float = 0.0) -> str | None:
    """Why this container can run no command any more (removed or stopped outside taskenv: a
    `docker kill`, an engine restart), or None while it runs (paused too: unpausing brings it
    back). With `settle_sec`, a running container is watched that long for its end: the engine
    reports a killed container's processes dead before the container itself."""
    container = docker.containers.container(name)
    try:
        state = (await container.show()).get("State") or {}
        if state.get("Running") and settle_sec > 0:
            with suppress(TimeoutError):
                async with asyncio.timeout(settle_sec):
                    await container.wait(condition="not-running")
                state = (await container.show()).get("State") or {}
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return "container removed outside taskenv"
        raise
    return None if state.get("Running") else stopped(state)


def stopped(state: dict[str, Any]) -> str:
    oom = ", out of memory" if state.get("OOMKilled") else ""
    return f"container stopped outside taskenv (exit code {state.get('ExitCode')}{oom})"


# How long a deadline's sweep from inside the sandbox is waited for before the answer leaves.
SWEEP_WAIT_SEC = 2.0


async def sweep_user_processes(docker: aiodocker.Docker, name: str, user: str) -> None:
    """`kill -KILL -1` as the sandbox's user, from inside (for a worker that cannot see the
    engine's processes), waited for (bounded): nothing of the command may still run when its 504
    leaves."""
    sweep = await docker.containers.container(name).exec(
        ["kill", "-KILL", "-1"], user=user, stdout=False, stderr=False
    )
    await sweep.start(detach=True)
    with suppress(TimeoutError):
        async with asyncio.timeout(SWEEP_WAIT_SEC):
            # Polled: the engine has no event for an exec's end.
            while True:
                if not (await sweep.inspect()).get("Running"):
                    return
                await asyncio.sleep(0.02)
