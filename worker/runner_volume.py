"""Where every sandbox finds the runner: a Docker volume the engine manages, filled once per
runner build through the engine's API and mounted read-only into each sandbox.

No host path is shared, so this works wherever the worker does: beside the engine, in a
container holding only the Docker socket (compose), or against a remote engine (DOCKER_HOST).
The volume's name holds the binary's digest: a new build is a new volume, and a sandbox never
sees a binary change under it. Nothing in the volume is writable from a sandbox.
"""

import hashlib
import io
import secrets
import tarfile
from pathlib import Path
from typing import Any

import aiodocker

from taskenv.worker import never_started
from taskenv.worker.docker import read_only_volume

RUNNER_DIR = "/.taskenv"
RUNNER_NAME = "taskenv-runner"
RUNNER_PATH = f"{RUNNER_DIR}/{RUNNER_NAME}"
# install.sh builds it here (runner/Makefile).
DEFAULT_BINARY = Path(__file__).resolve().parents[1] / "runner" / "build" / RUNNER_NAME


def volume_name(binary: bytes) -> str:
    return f"taskenv-runner-{hashlib.sha256(binary).hexdigest()[:16]}"


# What the runner needs, added to `CapDrop: ALL`: it runs as root in the sandbox and starts
# each command as its user (SETUID, SETGID) and kills commands' trees (KILL). Commands of an
# unprivileged user get none of them (a uid change clears them; `no-new-privileges` stays).
RUNNER_CAPABILITIES = ("KILL", "SETUID", "SETGID")


def sandbox_host_config(volume: str) -> dict[str, Any]:
    """What a sandbox's HostConfig gains to run the runner from `volume`."""
    return {"Mounts": [sandbox_mount(volume)], "CapAdd": list(RUNNER_CAPABILITIES)}


def sandbox_mount(volume: str) -> dict[str, Any]:
    """The sandbox's read-only view of the runner's volume."""
    return read_only_volume(volume, RUNNER_DIR)


async def install(docker: aiodocker.Docker, binary: bytes, image: str) -> str:
    """The volume holding this binary, created and filled if it is not there yet."""
    name = volume_name(binary)
    try:
        await docker.volumes.get(name)  # type: ignore[no-untyped-call]
        return name
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise
    await docker.volumes.create({"Name": name, "Labels": {"taskenv.runner": "true"}})  # type: ignore[no-untyped-call]
    await _fill(docker, name, binary, image)
    return name


async def _fill(docker: aiodocker.Docker, volume: str, binary: bytes, image: str) -> None:
    """Copy the binary in through a container that is created, never started, and removed."""
    config = never_started.config(image, [{"Type": "volume", "Source": volume, "Target": RUNNER_DIR}])
    filler = await docker.containers.create(config, name=f"taskenv-runner-fill-{secrets.token_hex(6)}")
    try:
        await filler.put_archive(RUNNER_DIR, _archive(binary))  # type: ignore[no-untyped-call]
    finally:
        await filler.delete(force=True)


def _archive(binary: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(RUNNER_NAME)
        info.size, info.mode, info.uid, info.gid = len(binary), 0o555, 0, 0
        tar.addfile(info, io.BytesIO(binary))
    return buffer.getvalue()
