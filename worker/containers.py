"""Sandbox containers: created hardened, found by name or label, removed for good."""

import asyncio
import json
from typing import Any

import aiodocker

from shared.store import Record, container_name
from shared.tasks import TaskSpec

LABEL_MANAGED = "taskenv.managed"
LABEL_ENV = "taskenv.env"
# The Docker host whose worker made it: a reaper touches only its own host's containers.
LABEL_HOST = "taskenv.host"


def container_config(record: Record, spec: TaskSpec) -> dict[str, Any]:
    """Hardened by default: no network, no capabilities, no privilege gain, bounded memory,
    pids and CPU, a read-only root with a size-capped /tmp, and an init process that reaps
    orphaned children."""
    resources = spec.resources
    memory = resources.memory_mb * 1024 * 1024
    return {
        "Image": spec.image,
        "Cmd": spec.command,
        "Env": [f"{name}={value}" for name, value in spec.env.items()],
        "WorkingDir": spec.workdir,
        "Labels": {
            LABEL_MANAGED: "true",
            LABEL_ENV: record["id"],
            LABEL_HOST: record["host"],
            "taskenv.org": record["org"],
            "taskenv.workspace": record["workspace"],
            "taskenv.task": spec.ref,
        },
        "NetworkDisabled": True,
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


async def create_and_start(docker: aiodocker.Docker, record: Record, spec: TaskSpec) -> str:
    name = container_name(record["id"])
    container = await docker.containers.create(container_config(record, spec), name=name)
    await container.start()
    return str(container.id)


async def remove(docker: aiodocker.Docker, name: str) -> bool:
    """Force-remove; False when there was nothing to remove. When another remover (the reaper,
    a second DELETE) got there first, wait until the container is really gone."""
    container = docker.containers.container(name)
    try:
        await container.delete(force=True, v=True)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        if exc.status != 409 or "already in progress" not in str(exc.message):
            raise
        await _wait_gone(container)
    return True


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


async def managed_on_host(docker: aiodocker.Docker, host: str) -> dict[str, str]:
    """Container name by environment id, for every taskenv container of this host."""
    filters = json.dumps({"label": [f"{LABEL_MANAGED}=true", f"{LABEL_HOST}={host}"]})
    found = await docker.containers.list(all=True, filters=filters)
    return {c["Labels"][LABEL_ENV]: c["Names"][0].lstrip("/") for c in found}
