"""The task registry's storage in Redis: OCI blobs per org, and immutable task versions.

Every worker host reaches Redis, so a task archive stored here can be built on any host without
a shared filesystem. Storage is bounded per org: a blob is counted from its upload, held as
*pending* until a version refers to it (or `pending_ttl_sec` passes, after which the next upload
of the org frees it), then reference-counted by the versions that name it; deleting the last
version that names a blob frees it. Versions are immutable per (org, name, version).

All calls take a bytes Redis client (`decode_responses=False`): blobs are binary.
"""

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, Field
from redis.asyncio import Redis

from taskenv.shared import scripts
from taskenv.shared import task_keys as keys
from taskenv.shared.scripts import BlobOutcome, CommitOutcome

UPLOAD_TTL_SEC = 3600


class TaskVersion(BaseModel):
    """One stored version: the OCI manifest as pushed, its digests, and the task.yaml fields the
    read routes answer with."""

    org: str
    name: str
    version: str
    created_at: float
    manifest: str
    manifest_digest: str
    config_digest: str
    oci_digest: str  # the task archive (layer) digest, which `dn task push` compares
    size: int
    instruction: str
    verification_method: str
    description: str | None = None
    tags: list[str] = Field(default_factory=list)
    difficulty: str | None = None
    source: str | None = None
    author: str | None = None
    license: str | None = None
    repository: str | None = None
    max_agent_timeout_sec: int | None = None
    ports: dict[str, list[int]] = Field(default_factory=dict)
    egress: dict[str, Any] | None = None
    models: list[str] | dict[str, Any] | None = None
    readme: str | None = None
    # Compose services with a `build:`: an environment of this version waits for their images.
    build_services: list[str] = Field(default_factory=list)
    # Images that services name with `image:` and no `build:`: each host checks it has them before
    # its first environment of this version (pulled only with TASKENV_PULL=missing).
    service_images: list[str] = Field(default_factory=list)
    # Every compose service, and the task.yaml parts its environments run (shared/tasks.py TaskSource).
    services: list[str] = Field(default_factory=list)
    verification: dict[str, Any] | None = None
    provision: dict[str, Any] | None = None
    teardown: dict[str, Any] | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.org}/{self.name}"

    @property
    def digests(self) -> list[str]:
        return list(dict.fromkeys([self.config_digest, self.oci_digest]))


def version_key(version: str) -> tuple[int, ...]:
    """Fixed semver as numbers, so 1.10.0 sorts after 1.9.0."""
    return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def put_blob(
    redis: Redis, org: str, digest: str, data: bytes, *, budget_bytes: int, pending_ttl_sec: float
) -> BlobOutcome:
    now = time.time()
    outcome = await scripts.PUT_TASK_BLOB.run(
        redis,
        blob=keys.task_blob(org, digest),
        refs=keys.task_blob_refs(org),
        pending=keys.task_blobs_pending(org),
        used=keys.task_bytes(org),
        digest=digest,
        data=data,
        now=repr(now),
        deadline=repr(now + pending_ttl_sec),
        budget=budget_bytes,
        blob_prefix=keys.task_blob(org, ""),
    )
    return BlobOutcome(_text(outcome))


async def blob_stored(redis: Redis, org: str, digest: str) -> bool:
    return bool(await redis.hexists(keys.task_blob_refs(org), digest))  # type: ignore[misc]


async def get_blob(redis: Redis, org: str, digest: str) -> bytes | None:
    data = await redis.get(keys.task_blob(org, digest))
    return None if data is None else bytes(data)


async def commit(redis: Redis, version: TaskVersion) -> tuple[CommitOutcome, TaskVersion | str | None]:
    """COMMITTED; EXISTS with the version already stored; MISSING_BLOB with its digest."""
    outcome, detail = await scripts.COMMIT_TASK_VERSION.run(
        redis,
        versions=keys.task_versions(version.org, version.name),
        refs=keys.task_blob_refs(version.org),
        pending=keys.task_blobs_pending(version.org),
        names=keys.task_names(version.org),
        orgs=keys.TASK_ORGS,
        version=version.version,
        record=version.model_dump_json(),
        name=version.name,
        org=version.org,
        rest=version.digests,
    )
    result = CommitOutcome(_text(outcome))
    if result is CommitOutcome.EXISTS:
        return result, TaskVersion.model_validate_json(detail)
    return result, _text(detail) or None


async def get_version(redis: Redis, org: str, name: str, version: str) -> TaskVersion | None:
    record = await redis.hget(keys.task_versions(org, name), version)  # type: ignore[misc]
    return None if record is None else TaskVersion.model_validate_json(record)


async def versions(redis: Redis, org: str, name: str) -> list[str]:
    """Newest first."""
    found = await redis.hkeys(keys.task_versions(org, name))  # type: ignore[misc]
    return sorted((_text(v) for v in found), key=version_key, reverse=True)


async def latest(redis: Redis, org: str, name: str) -> TaskVersion | None:
    newest = next(iter(await versions(redis, org, name)), None)
    return None if newest is None else await get_version(redis, org, name, newest)


async def delete_version(redis: Redis, version: TaskVersion) -> bool:
    deleted = await scripts.DELETE_TASK_VERSION.run(
        redis,
        versions=keys.task_versions(version.org, version.name),
        refs=keys.task_blob_refs(version.org),
        used=keys.task_bytes(version.org),
        names=keys.task_names(version.org),
        public=keys.TASKS_PUBLIC,
        orgs=keys.TASK_ORGS,
        version=version.version,
        name=version.name,
        qualified=version.qualified_name,
        blob_prefix=keys.task_blob(version.org, ""),
        org=version.org,
        rest=version.digests,
    )
    return bool(deleted)


async def set_public(redis: Redis, org: str, name: str, public: bool) -> bool:
    """False when the name has no version."""
    done = await scripts.SET_TASK_VISIBILITY.run(
        redis,
        versions=keys.task_versions(org, name),
        public=keys.TASKS_PUBLIC,
        qualified=f"{org}/{name}",
        published="1" if public else "0",
    )
    return bool(done)


async def is_public(redis: Redis, org: str, name: str) -> bool:
    return bool(await redis.sismember(keys.TASKS_PUBLIC, f"{org}/{name}"))  # type: ignore[misc]


async def names(redis: Redis, org: str) -> list[str]:
    return sorted(_text(name) for name in await redis.smembers(keys.task_names(org)))  # type: ignore[misc]


async def orgs(redis: Redis) -> list[str]:
    """The orgs that have a task version (`taskenv task ls` reads these, never a SCAN)."""
    return sorted(_text(org) for org in await redis.smembers(keys.TASK_ORGS))  # type: ignore[misc]


async def public_names(redis: Redis) -> list[tuple[str, str]]:
    qualified = sorted(_text(q) for q in await redis.smembers(keys.TASKS_PUBLIC))  # type: ignore[misc]
    return [(org, name) for org, _, name in (q.partition("/") for q in qualified)]


async def blob_readable(redis: Redis, owner: str, digest: str, caller: str) -> bool:
    """The caller's own blob, or one that a public version of another org names."""
    if owner == caller:
        return await blob_stored(redis, owner, digest)
    for org, name in await public_names(redis):
        if org != owner:
            continue
        records = await redis.hvals(keys.task_versions(org, name))  # type: ignore[misc]
        if any(digest in TaskVersion.model_validate_json(record).digests for record in records):
            return True
    return False


async def new_upload(redis: Redis, org: str, name: str) -> str:
    """An upload session's id (OCI's `POST .../blobs/uploads/`), valid `UPLOAD_TTL_SEC`."""
    upload_id = uuid.uuid4().hex
    await redis.set(keys.task_upload(upload_id), json.dumps([org, name]), ex=UPLOAD_TTL_SEC)
    return upload_id


async def upload_of(redis: Redis, upload_id: str) -> tuple[str, str] | None:
    found = await redis.get(keys.task_upload(upload_id))
    if found is None:
        return None
    org, name = json.loads(found)
    return str(org), str(name)


async def end_upload(redis: Redis, upload_id: str) -> None:
    await redis.delete(keys.task_upload(upload_id))
