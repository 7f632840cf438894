"""Lazy builds of a pushed task's images on this host: the first environment of a task version
builds them (compose `build:` with context, dockerfile, args, target) through the Docker engine;
every later one, on this host, reuses them. One build per (task archive, host), however many
provisions ask at once: a Redis lock elects the builder, the others wait for its outcome.

Builds run with no network (`networkmode=none`) and never pull (`pull=false`): a `FROM` image
must be on the host. An `image:` the engine lacks is pulled only if TASKENV_PULL=missing. Built
images carry labels naming the task and the deployment (not the container labels: a container
made from the image must not look like a sandbox to the reaper), and the least recently used
are removed when their total passes TASKENV_TASK_IMAGE_BUDGET_BYTES.
"""

import asyncio
import io
import json
import logging
import posixpath
import re
import secrets
import tarfile
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aiodocker
from redis.asyncio import Redis

from taskenv.shared import scripts, task_archive, task_keys, task_store, task_yaml
from taskenv.shared.keys import PREFIX
from taskenv.shared.task_archive import TaskFiles, normalise
from taskenv.shared.task_compose import ComposeBuild, ComposeService, service_plan, services_of
from taskenv.shared.task_store import TaskVersion
from taskenv.shared.task_validation import COMPOSE_FILES
from taskenv.worker.image import image_exists

log = logging.getLogger("taskenv.worker")

LABEL_TASK = "taskenv.image.task"
LABEL_TASK_DIGEST = "taskenv.image.digest"
LABEL_DEPLOYMENT = "taskenv.image.deployment"
LABEL_HOST = "taskenv.image.host"
LOG_TAIL_LINES = 40
LOG_LINE_MAX_CHARS = 400
# A build's progress messages are read in chunks and split into lines; a "line" longer than
# this (hostile RUN output without a newline) is cut, so memory stays bounded.
_MESSAGE_MAX_BYTES = 256 * 1024
_INLINE_DOCKERFILE = ".taskenv.inline.Dockerfile"
_LOCK_POLL_SEC = 0.2
_SLUG = re.compile(r"[^a-z0-9_.-]+")


class PullPolicy(StrEnum):
    MISSING = "missing"
    NEVER = "never"


class BuildFailed(Exception):
    """The task's images could not be made on this host: why, and the build log's tail."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


@dataclass(frozen=True)
class BuildPolicy:
    pull: PullPolicy
    timeout_sec: float
    image_budget_bytes: int
    max_task_bytes: int


def image_tag(version: TaskVersion, service: str) -> str:
    """Named by content (the archive digest) and service: the same archive is built once."""
    slug = _SLUG.sub("-", service.lower()).strip("-.") or "service"
    digest = version.oci_digest.removeprefix("sha256:")[:16]
    return f"taskenv-task/{version.name[:64]}:{slug[:40]}-{digest}"


def _lock_key(version: TaskVersion, host: str) -> str:
    return f"{PREFIX}taskbuild:{host}:{version.oci_digest}"


def _failure_key(version: TaskVersion, host: str) -> str:
    return f"{PREFIX}taskbuildfailed:{host}:{version.oci_digest}"


def builds_key(version: TaskVersion, host: str) -> str:
    """Counter: the builds of this archive on this host (one, unless its images were removed)."""
    return f"{PREFIX}taskbuilds:{host}:{version.oci_digest}"


def _lru_key(host: str) -> str:
    """Sorted set of this host's task images, scored by when an environment last used them."""
    return f"{PREFIX}taskimages:{host}"


def services(files: TaskFiles) -> list[ComposeService]:
    name = next((name for name in COMPOSE_FILES if name in files.files), None)
    compose = task_yaml.load(files.text(name) or "") if name else None
    if not isinstance(compose, dict):
        return []
    return [service_plan(str(n), s) for n, s in services_of(compose).items() if isinstance(s, dict)]


def build_context(files: TaskFiles, build: ComposeBuild) -> tuple[bytes, str]:
    """The build's context as a tar (the files under its directory) and its Dockerfile's path."""
    root = normalise(build.context)
    prefix = "" if root in ("", ".") else root + "/"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(set(files.files) | set(files.links)):
            if not path.startswith(prefix):
                continue
            info = tarfile.TarInfo(path.removeprefix(prefix))
            if path in files.links:
                info.type, info.linkname = tarfile.SYMTYPE, files.links[path]
                tar.addfile(info)
                continue
            info.size, info.mode = len(files.files[path]), files.modes.get(path, 0o644)
            tar.addfile(info, io.BytesIO(files.files[path]))
        dockerfile = posixpath.normpath(build.dockerfile)
        if build.dockerfile_inline is not None:
            inline = build.dockerfile_inline.encode()
            info = tarfile.TarInfo(_INLINE_DOCKERFILE)
            info.size = len(inline)
            tar.addfile(info, io.BytesIO(inline))
            dockerfile = _INLINE_DOCKERFILE
    return buffer.getvalue(), dockerfile


async def _messages(response: Any) -> AsyncIterator[dict[str, Any]]:
    """The engine's JSON progress messages, whatever the build prints (bounded per message)."""
    pending = b""
    async for chunk in response.content.iter_chunked(64 * 1024):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > _MESSAGE_MAX_BYTES:
            pending = b""
        for line in lines:
            try:
                message = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(message, dict):
                yield message


async def build_image(
    docker: aiodocker.Docker,
    context: bytes,
    dockerfile: str,
    build: ComposeBuild,
    tag: str,
    labels: dict[str, str],
) -> None:
    """One `docker build`, no network and no pull; `BuildFailed` with the log's tail."""
    params = {
        "t": tag,
        "dockerfile": dockerfile,
        "rm": "1",
        "forcerm": "1",
        "pull": "0",
        "networkmode": "none",
        "labels": json.dumps(labels),
        "buildargs": json.dumps(build.args),
    }
    if build.target:
        params["target"] = build.target
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    error = ""
    # aiodocker's `images.build` has no `target`: the same engine call, with it.
    async with docker._query(
        "build",
        "POST",
        params=params,
        headers={"content-type": "application/x-tar"},
        data=context,
        timeout=None,
    ) as response:
        async for message in _messages(response):
            text = str(message.get("stream") or message.get("status") or "")
            tail.extend(line[:LOG_LINE_MAX_CHARS] for line in text.splitlines() if line.strip())
            if message.get("error"):
                error = str(message["error"])[:LOG_LINE_MAX_CHARS]
                tail.append(error)
    if error:
        raise BuildFailed(error, "\n".join(tail))


async def _build_all(
    docker: aiodocker.Docker,
    files: TaskFiles,
    version: TaskVersion,
    policy: BuildPolicy,
    labels: dict[str, str],
) -> list[str]:
    made = []
    for service in services(files):
        if service.build is not None:
            context, dockerfile = build_context(files, service.build)
            tag = image_tag(version, service.name)
            await build_image(
                docker,
                context,
                dockerfile,
                service.build,
                tag,
                {**labels, "taskenv.image.service": service.name},
            )
            made.append(tag)
        elif service.image and not await image_exists(docker, service.image):
            if policy.pull is PullPolicy.NEVER:
                raise BuildFailed(
                    f"service {service.name!r}: image {service.image!r} is not on this host"
                    " and TASKENV_PULL=never"
                )
            await docker.images.pull(service.image)
    return made


async def _all_built(docker: aiodocker.Docker, version: TaskVersion) -> bool:
    """Every image the version's services need is on this host: the built ones and those named."""
    needed = [image_tag(version, service) for service in version.build_services] + version.service_images
    for image in needed:
        if not await image_exists(docker, image):
            return False
    return True


async def ensure_built(
    redis: Redis,
    docker: aiodocker.Docker,
    version: TaskVersion,
    *,
    host: str,
    deployment: str,
    policy: BuildPolicy,
    on_build: Any = None,
) -> bool:
    """The task's images exist on this host once this returns (True if this call built them).
    `on_build` is awaited before a build starts or is waited for (the environment turns
    `building`). Raises `BuildFailed`."""
    if await _all_built(docker, version):
        # The common case, answered from the engine alone: the archive is read only to build.
        await _touch(redis, version, host)
        return False
    blob = await task_store.get_blob(redis, version.org, version.oci_digest)
    if blob is None:
        raise BuildFailed(f"the archive of {version.qualified_name}@{version.version} is no longer stored")
    try:
        files = await asyncio.to_thread(task_archive.read, blob, policy.max_task_bytes)
    except task_archive.ArchiveError as exc:
        raise BuildFailed(f"the task archive is unreadable: {exc}") from None
    try:
        async with asyncio.timeout(policy.timeout_sec):
            return await _built_once(redis, docker, files, version, host, deployment, policy, on_build)
    except TimeoutError:
        raise BuildFailed(f"the build did not finish within {policy.timeout_sec:g} s") from None


async def _built_once(
    redis: Redis,
    docker: aiodocker.Docker,
    files: TaskFiles,
    version: TaskVersion,
    host: str,
    deployment: str,
    policy: BuildPolicy,
    on_build: Any,
) -> bool:
    """Built already, or built by this call under the lock, or by another holder of it."""
    while True:
        if await _all_built(docker, version):
            await _touch(redis, version, host)
            return False
        failed = await redis.get(_failure_key(version, host))
        if failed is not None:
            reason, _, tail = (failed.decode() if isinstance(failed, bytes) else str(failed)).partition("\n")
            raise BuildFailed(reason, tail)
        if on_build is not None:
            await on_build()
            on_build = None
        token = secrets.token_hex(8)
        if await redis.set(_lock_key(version, host), token, nx=True, ex=int(policy.timeout_sec) + 1):
            try:
                return await _build_locked(redis, docker, files, version, host, deployment, policy)
            finally:
                await _release(redis, _lock_key(version, host), token)
        await asyncio.sleep(_LOCK_POLL_SEC)


async def _build_locked(
    redis: Redis,
    docker: aiodocker.Docker,
    files: TaskFiles,
    version: TaskVersion,
    host: str,
    deployment: str,
    policy: BuildPolicy,
) -> bool:
    if await _all_built(docker, version):
        return False  # built by the previous holder of the lock
    labels = {
        LABEL_TASK: f"{version.qualified_name}@{version.version}",
        LABEL_TASK_DIGEST: version.oci_digest,
        LABEL_DEPLOYMENT: deployment,
        LABEL_HOST: host,
    }
    started = time.monotonic()
    await redis.incr(builds_key(version, host))
    try:
        await _build_all(docker, files, version, policy, labels)
    except BuildFailed as failed:
        # Remembered briefly, so that the provisions waiting on this build fail with its reason
        # instead of building again, one after the other.
        await redis.set(_failure_key(version, host), f"{failed.reason}\n{failed.log_tail}", ex=30)
        raise
    except aiodocker.DockerError as exc:
        reason = str(exc.message)[:LOG_LINE_MAX_CHARS]
        await redis.set(_failure_key(version, host), reason, ex=30)
        raise BuildFailed(reason) from None
    log.info(
        "built task %s@%s in %.1f s", version.qualified_name, version.version, time.monotonic() - started
    )
    await _touch(redis, version, host)
    await prune(redis, docker, host, deployment, policy.image_budget_bytes)
    return True


async def _release(redis: Redis, key: str, token: str) -> None:
    await scripts.RELEASE_BUILD_LOCK.run(redis, lock=key, token=token)


async def _touch(redis: Redis, version: TaskVersion, host: str) -> None:
    tags = [image_tag(version, service) for service in version.build_services]
    async with redis.pipeline(transaction=False) as pipe:
        if tags:
            pipe.zadd(_lru_key(host), dict.fromkeys(tags, time.time()))
        pipe.sadd(task_keys.task_built_hosts(version.oci_digest), host)
        await pipe.execute()


async def prune(
    redis: Redis, docker: aiodocker.Docker, host: str, deployment: str, budget_bytes: int
) -> list[str]:
    """Remove this deployment's task images on this host, least recently used first, until their
    total size is within the budget. An image a container still uses is kept (not forced)."""
    labels = [f"{LABEL_DEPLOYMENT}={deployment}", f"{LABEL_HOST}={host}"]
    images = await docker.images.list(filters={"label": labels})
    sizes = {tag: int(image.get("Size") or 0) for image in images for tag in image.get("RepoTags") or []}
    digests = {
        tag: (image.get("Labels") or {}).get(LABEL_TASK_DIGEST, "")
        for image in images
        for tag in image.get("RepoTags") or []
    }
    total = sum(int(image.get("Size") or 0) for image in images)
    used = {_text(tag): score for tag, score in await redis.zrange(_lru_key(host), 0, -1, withscores=True)}
    removed = []
    for tag in sorted(sizes, key=lambda t: used.get(t, 0.0)):
        if total <= budget_bytes:
            break
        try:
            await docker.images.delete(tag)
        except aiodocker.DockerError:
            continue  # in use by a container, or already gone
        total -= sizes[tag]
        removed.append(tag)
        await redis.zrem(_lru_key(host), tag)
        await redis.srem(task_keys.task_built_hosts(digests[tag]), host)  # type: ignore[misc]
    if removed:
        log.info("removed %d task images over the budget: %s", len(removed), ", ".join(removed))
    return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
