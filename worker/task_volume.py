"""A task version's directory, staged read-only for its sandboxes: one Docker volume per task
version and host, filled once through the engine's API and mounted at /home/user/task.

The volume is named after the archive's digest (`taskenv-task-<hex[:16]>`), so a new version is
a new volume and a sandbox never sees files change under it. It is filled as the runner's
volume is (worker/runner_volume.py): a container created, never started, `PUT /archive`,
removed; no host path is shared. Every file is root's, 0444 (0555 for directories and for the
files the archive marked executable), and the mount is read-only: not even root in the sandbox
writes there. The task's solution script is never staged: it must not reach agents.

Concurrency, without Redis: the fill is elected through the engine. The filler container has a
fixed name per volume, so of the workers of a host staging the same version at once exactly
one creates it (the engine refuses a second container of that name) and fills; the others wait.
A filled volume is marked by a second, empty volume, created only after the whole archive is in
(`…-staged`): a volume cannot be renamed and reading a marker file from inside the volume would
cost a container per environment, while the marker's presence is one inspect. A filler left by
a worker that died mid-fill is removed after `STALE_FILL_SEC` and the fill elected again (it
rewrites the same bytes over what was half written; no sandbox mounted it, as it was unmarked).
"""

import asyncio
import io
import posixpath
import re
import tarfile
import time
from typing import Any

import aiodocker

from taskenv.shared import task_yaml
from taskenv.shared.task_archive import TaskFiles, normalise
from taskenv.shared.task_validation import TASK_YAML
from taskenv.worker import never_started
from taskenv.worker.containers import LABEL_DEPLOYMENT, LABEL_MANAGED
from taskenv.worker.docker import read_only_volume

TASK_DIR = "/home/user/task"
LABEL_TASK_DIGEST = "taskenv.task-digest"
LABEL_STAGED = "taskenv.task-staged"
# The scaffold's name for the solution (`dn task init`), left out even when task.yaml names none.
DEFAULT_SOLUTION = "solution.sh"
# Where the filler sees the volume: `PUT /archive` at the parent, so the volume's root is the
# archive's `task/` entry and takes its mode.
_FILL_PARENT = "/.taskenv-stage"
_FILL_ROOT = "task"
STALE_FILL_SEC = 60.0
POLL_SEC = 0.05
_HEX = re.compile(r"[0-9a-f]{16,}")


class StagingFailed(Exception):
    """The task directory could not be staged on this host (the reason says why)."""


def volume_name(digest: str) -> str:
    """`taskenv-task-<hex[:16]>` for `sha256:<hex>` (or the bare hex)."""
    hex_digest = digest.removeprefix("sha256:")
    if not _HEX.fullmatch(hex_digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return f"taskenv-task-{hex_digest[:16]}"


def _marker_name(volume: str) -> str:
    return f"{volume}-staged"


def _filler_name(volume: str) -> str:
    return f"{volume}-fill"


def sandbox_mount(volume: str) -> dict[str, Any]:
    """The sandbox's read-only view of the task directory."""
    return read_only_volume(volume, TASK_DIR)


def solution_paths(files: TaskFiles) -> set[str]:
    """The paths never staged: task.yaml's `solution.script`, and the scaffold's solution.sh."""
    paths = {DEFAULT_SOLUTION}
    try:
        manifest = task_yaml.load(files.text(TASK_YAML) or "")
    except task_yaml.YamlError:
        return paths
    solution = manifest.get("solution") if isinstance(manifest, dict) else None
    script = solution.get("script") if isinstance(solution, dict) else None
    if isinstance(script, str) and script.strip():
        paths.add(normalise(script.strip()))
    return paths


async def ensure_staged(
    docker: aiodocker.Docker,
    digest: str,
    files: TaskFiles,
    *,
    deployment: str,
    image: str,
    exclude: set[str] | None = None,
    timeout_sec: float = 120.0,
) -> str:
    """The name of the volume holding `files` (less `exclude`, by default the solution), staged
    on this host once this returns. `image` is any image on the host (the filler never runs).
    Raises StagingFailed, or aiodocker.DockerError for the engine's own failures."""
    volume = volume_name(digest)
    if await _staged(docker, volume):
        return volume
    labels = {LABEL_MANAGED: "true", LABEL_DEPLOYMENT: deployment, LABEL_TASK_DIGEST: digest}
    skipped = solution_paths(files) if exclude is None else {normalise(p) for p in exclude}
    try:
        async with asyncio.timeout(timeout_sec):
            await _staged_once(docker, volume, files, skipped, labels, image)
    except TimeoutError:
        raise StagingFailed(f"the task directory was not staged within {timeout_sec:g} s") from None
    return volume


async def _staged(docker: aiodocker.Docker, volume: str) -> bool:
    """Marked staged, and the volume itself still there (a missing one would be made empty at
    the sandbox's mount): a marker without its volume is dropped, to be staged again."""
    marker, data = await asyncio.gather(_exists(docker, _marker_name(volume)), _exists(docker, volume))
    if marker and not data:
        await _remove_volume(docker, _marker_name(volume))
    return marker and data


async def _staged_once(
    docker: aiodocker.Docker,
    volume: str,
    files: TaskFiles,
    exclude: set[str],
    labels: dict[str, str],
    image: str,
) -> None:
    """Staged by another worker while this one waited, or by this one as the elected filler."""
    waited_for: tuple[str, float] | None = None  # the other filler, and since when
    while not await _staged(docker, volume):
        filler = await _elect(docker, volume, image, labels)
        if filler is not None:
            try:
                if not await _staged(docker, volume):
                    await _fill(docker, filler, volume, files, exclude, labels)
            finally:
                await filler.delete(force=True)
            return
        waited_for = await _wait_or_clear(docker, volume, waited_for)


async def _elect(
    docker: aiodocker.Docker, volume: str, image: str, labels: dict[str, str]
) -> aiodocker.containers.DockerContainer | None:
    """The filler container if this worker made it (the volume created with it), else None."""
    await docker.volumes.create({"Name": volume, "Labels": labels})  # type: ignore[no-untyped-call]
    target = f"{_FILL_PARENT}/{_FILL_ROOT}"
    mount = {"Type": "volume", "Source": volume, "Target": target, "VolumeOptions": {"NoCopy": True}}
    config = never_started.config(image, [mount])
    try:
        return await docker.containers.create(config, name=_filler_name(volume))
    except aiodocker.DockerError as exc:
        if exc.status == 409:  # another worker's filler
            return None
        raise


async def _wait_or_clear(
    docker: aiodocker.Docker, volume: str, waited_for: tuple[str, float] | None
) -> tuple[str, float] | None:
    """Wait a moment for the other filler; remove it once it has sat there past STALE_FILL_SEC
    (its worker died mid-fill). Returns which filler is waited for, and since when."""
    try:
        info = await docker.containers.get(_filler_name(volume))
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise
        return None  # gone: staged, or failed; the loop looks again
    seen = waited_for if waited_for is not None and waited_for[0] == info.id else (info.id, time.monotonic())
    if time.monotonic() - seen[1] > STALE_FILL_SEC:
        await info.delete(force=True)
        return None
    await asyncio.sleep(POLL_SEC)
    return seen


async def _fill(
    docker: aiodocker.Docker,
    filler: aiodocker.containers.DockerContainer,
    volume: str,
    files: TaskFiles,
    exclude: set[str],
    labels: dict[str, str],
) -> None:
    archive = await asyncio.to_thread(stage_archive, files, exclude)
    await filler.put_archive(_FILL_PARENT, archive)  # type: ignore[no-untyped-call]
    # Last: only now may a sandbox mount it.
    await docker.volumes.create(  # type: ignore[no-untyped-call]
        {"Name": _marker_name(volume), "Labels": {**labels, LABEL_STAGED: volume}}
    )


def stage_archive(files: TaskFiles, exclude: set[str]) -> bytes:
    """The task directory as a tar rooted at `task/`: root's, read-only, the excluded paths out."""
    kept = sorted(path for path in set(files.files) | set(files.links) if path not in exclude)
    directories = {_FILL_ROOT} | {f"{_FILL_ROOT}/{parent}" for path in kept for parent in _parents(path)}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory in sorted(directories):
            tar.addfile(_entry(directory, tarfile.DIRTYPE, 0o555))
        for path in kept:
            name = f"{_FILL_ROOT}/{path}"
            if path in files.links:
                info = _entry(name, tarfile.SYMTYPE, 0o777)
                info.linkname = files.links[path]
                tar.addfile(info)
                continue
            data = files.files[path]
            info = _entry(name, tarfile.REGTYPE, 0o555 if files.modes.get(path, 0) & 0o111 else 0o444)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _parents(path: str) -> list[str]:
    parents = []
    parent = posixpath.dirname(path)
    while parent:
        parents.append(parent)
        parent = posixpath.dirname(parent)
    return parents


def _entry(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.uname, info.gname = kind, mode, 0, 0, "root", "root"
    return info


async def _exists(docker: aiodocker.Docker, volume: str) -> bool:
    try:
        await docker.volumes.get(volume)  # type: ignore[no-untyped-call]
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


async def _remove_volume(docker: aiodocker.Docker, volume: str) -> None:
    try:
        await aiodocker.volumes.DockerVolume(docker, volume).delete()  # type: ignore[no-untyped-call]
    except aiodocker.DockerError as exc:
        if exc.status != 404:
            raise
