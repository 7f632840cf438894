"""A task directory staged into its volume through the real engine (worker/task_volume.py), then
mounted into a sandbox of the built-in image: readable, not writable even by root, the solution
left out; staged once however many workers ask at once; a filler left by a dead worker cleared."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import aiodocker
import pytest

from taskenv.shared.task_archive import TaskFiles
from taskenv.worker import task_volume

IMAGE = "taskenv/default:1"
DEPLOYMENT = "test-task-volume"

FILES = TaskFiles(
    files={
        "task.yaml": b"name: t\nsolution:\n  script: scripts/solve.sh\n",
        "README.md": b"hello task\n",
        "provision.sh": b"#!/bin/sh\necho '{}'\n",
        "challenge/app/data.txt": b"deep\n",
        "scripts/solve.sh": b"echo the answer\n",
        "solution.sh": b"echo the answer too\n",
    },
    modes={"provision.sh": 0o755, "scripts/solve.sh": 0o755, "README.md": 0o644},
    links={"link-to-readme": "README.md"},
)


@pytest.fixture
async def digest(docker: aiodocker.Docker) -> AsyncIterator[str]:
    """A digest of this test's own: its volumes are removed after it."""
    value = f"sha256:{secrets.token_hex(32)}"
    yield value
    volume = task_volume.volume_name(value)
    for name in (f"{volume}-staged", volume):
        with suppress(aiodocker.DockerError):
            await aiodocker.volumes.DockerVolume(docker, name).delete()  # type: ignore[no-untyped-call]


async def in_sandbox(docker: aiodocker.Docker, volume: str, script: str) -> tuple[int, str]:
    """Run `script` as root with Docker's default capabilities (DAC_OVERRIDE, FOWNER: file modes
    stop it nowhere, only the read-only mount does), the task directory mounted."""
    config: dict[str, Any] = {
        "Image": IMAGE,
        "Cmd": ["sh", "-c", script],
        "User": "0:0",
        "NetworkDisabled": True,
        "HostConfig": {
            "NetworkMode": "none",
            "Mounts": [task_volume.sandbox_mount(volume)],
        },
    }
    container = await docker.containers.run(config, name=f"taskenv-test-volume-{secrets.token_hex(4)}")
    try:
        status = await container.wait(timeout=30)
        logs = await container.log(stdout=True, stderr=True)
        return int(status["StatusCode"]), "".join(logs)
    finally:
        await container.delete(force=True)


async def test_the_staged_directory_is_readable_read_only_and_without_the_solution(docker, digest):
    volume = await task_volume.ensure_staged(docker, digest, FILES, deployment=DEPLOYMENT, image=IMAGE)
    assert volume == f"taskenv-task-{digest[7:23]}"
    labels = (await (await docker.volumes.get(volume)).show())["Labels"]  # type: ignore[no-untyped-call]
    assert labels == {
        "taskenv.managed": "true",
        "taskenv.deployment": DEPLOYMENT,
        "taskenv.task-digest": digest,
    }
    d = task_volume.TASK_DIR
    status, out = await in_sandbox(
        docker,
        volume,
        f"cat {d}/README.md {d}/challenge/app/data.txt {d}/link-to-readme; "
        f"stat -c '%n %a %u:%g' {d} {d}/README.md {d}/provision.sh {d}/challenge {d}/challenge/app/data.txt; "
        f"(touch {d}/new && echo WROTE; echo x >> {d}/README.md && echo APPENDED; rm {d}/README.md &&"
        f" echo REMOVED; chmod 777 {d}/README.md && echo CHMOD; mkdir {d}/dir && echo MKDIR) 2>&1"
        " | grep -vc Read-only; "
        "echo end",
    )
    assert status == 0, out
    lines = out.splitlines()
    assert lines[:3] == ["hello task", "deep", "hello task"]
    assert f"{d} 555 0:0" in lines
    assert f"{d}/README.md 444 0:0" in lines
    assert f"{d}/provision.sh 555 0:0" in lines
    assert f"{d}/challenge 555 0:0" in lines
    assert f"{d}/challenge/app/data.txt 444 0:0" in lines
    assert lines[-2:] == ["0", "end"]  # every write refused by the read-only mount, nothing else said
    # Both solutions left out (task.yaml's and the scaffold's); scripts/ held only the solution.
    status, out = await in_sandbox(docker, volume, f"ls -A {d}")
    assert sorted(out.split()) == ["README.md", "challenge", "link-to-readme", "provision.sh", "task.yaml"]


async def test_concurrent_stagings_fill_once(docker, digest, monkeypatch):
    fills = 0
    original = task_volume.stage_archive

    def counted(files: TaskFiles, exclude: set[str]) -> bytes:
        nonlocal fills
        fills += 1
        return original(files, exclude)

    monkeypatch.setattr(task_volume, "stage_archive", counted)
    names = await asyncio.gather(
        *(
            task_volume.ensure_staged(docker, digest, FILES, deployment=DEPLOYMENT, image=IMAGE)
            for _ in range(4)
        )
    )
    assert len(set(names)) == 1 and fills == 1
    # Staged: the next one only looks.
    await task_volume.ensure_staged(docker, digest, FILES, deployment=DEPLOYMENT, image=IMAGE)
    assert fills == 1
    status, out = await in_sandbox(docker, names[0], f"cat {task_volume.TASK_DIR}/README.md")
    assert (status, out) == (0, "hello task\n")


async def test_a_filler_left_by_a_dead_worker_is_cleared_and_the_fill_redone(docker, digest, monkeypatch):
    volume = task_volume.volume_name(digest)
    # A worker died between electing itself and marking the volume staged.
    dead = await task_volume._elect(docker, volume, IMAGE, {"taskenv.managed": "true"})
    assert dead is not None
    monkeypatch.setattr(task_volume, "STALE_FILL_SEC", 0.3)
    async with asyncio.timeout(10):
        await task_volume.ensure_staged(docker, digest, FILES, deployment=DEPLOYMENT, image=IMAGE)
    with pytest.raises(aiodocker.DockerError):
        await docker.containers.get(f"{volume}-fill")
    status, out = await in_sandbox(docker, volume, f"cat {task_volume.TASK_DIR}/challenge/app/data.txt")
    assert (status, out) == (0, "deep\n")


async def test_a_marker_whose_volume_was_removed_is_staged_again(docker, digest):
    volume = await task_volume.ensure_staged(docker, digest, FILES, deployment=DEPLOYMENT, image=IMAGE)
    await aiodocker.volumes.DockerVolume(docker, volume).delete()  # type: ignore[no-untyped-call]
    assert (
        await task_volume.ensure_staged(docker, digest, FILES, deployment=DEPLOYMENT, image=IMAGE) == volume
    )
    status, out = await in_sandbox(docker, volume, f"cat {task_volume.TASK_DIR}/README.md")
    assert (status, out) == (0, "hello task\n")
