"""A pushed task's files as a worker reads them for its environments: fetched from the store
and parsed (the archive, task.yaml's solution, the compose file) once per archive, then kept.
Provisions that need an archive not kept yet, at once (twenty environments of a new task), share
one read of it rather than each holding a copy.

An archive is named by its digest and never changes, so what was read from it never goes
stale; the kept ones are bounded by their files' bytes (least recently used dropped first), so a
worker serving many tasks holds at most `CACHE_BYTES` of them.
"""

import asyncio
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from redis.asyncio import Redis

from taskenv.shared import task_archive, task_store, task_yaml
from taskenv.shared.task_validation import COMPOSE_FILES
from taskenv.shared.tasks import TaskSource
from taskenv.worker import task_volume

CACHE_BYTES = 64 * 1024 * 1024


class Unreadable(Exception):
    """The task's archive is gone from the store or cannot be read (the message says which)."""


@dataclass(frozen=True)
class ParsedTask:
    files: task_archive.TaskFiles
    # The solution script task.yaml names: never staged for the agent.
    solution: str
    # The compose file's document (any YAML value: checked where it is used); None without one.
    compose: Any

    @property
    def size(self) -> int:
        return self.files.size


class TaskFilesCache:
    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self._kept: LRUCache[str, ParsedTask] = LRUCache(max_bytes, getsizeof=lambda read: max(read.size, 1))
        # Digest -> its read under way; gone once it ends.
        self._reading: dict[str, asyncio.Task[ParsedTask]] = {}

    async def get(self, blobs: Redis, source: TaskSource, max_task_bytes: int) -> ParsedTask:
        digest = source.oci_digest
        if (kept := self._kept.get(digest)) is not None:
            return kept
        reading = self._reading.get(digest)
        if reading is None:
            reading = asyncio.create_task(self._read_and_keep(blobs, source, max_task_bytes))
            self._reading[digest] = reading
            reading.add_done_callback(lambda done: self._read_ended(digest, done))
        # Shielded: a provision cancelled meanwhile does not cancel the read the others wait for.
        return await asyncio.shield(reading)

    def _read_ended(self, digest: str, done: "asyncio.Task[ParsedTask]") -> None:
        self._reading.pop(digest, None)
        if not done.cancelled():
            done.exception()  # retrieved: its waiters, if any are left, raise it themselves

    async def _read_and_keep(self, blobs: Redis, source: TaskSource, max_task_bytes: int) -> ParsedTask:
        read = await _read(blobs, source, max_task_bytes)
        if read.size <= self._kept.maxsize:
            self._kept[source.oci_digest] = read
        return read


async def _read(blobs: Redis, source: TaskSource, max_task_bytes: int) -> ParsedTask:
    blob = await task_store.get_blob(blobs, source.org, source.oci_digest)
    if blob is None:
        raise Unreadable(f"task {source.org}/{source.name}@{source.version} is no longer stored")
    try:
        return await asyncio.to_thread(_parse, blob, max_task_bytes)
    except (task_archive.ArchiveError, task_yaml.YamlError) as exc:
        raise Unreadable(f"task archive unreadable: {exc}") from None


def _parse(blob: bytes, max_task_bytes: int) -> ParsedTask:
    files = task_archive.read(blob, max_task_bytes)
    compose_name = next((name for name in COMPOSE_FILES if name in files.files), None)
    compose = task_yaml.load(files.text(compose_name) or "") if compose_name else None
    return ParsedTask(files, _solution_of(files), compose)


def _solution_of(files: task_archive.TaskFiles) -> str:
    """The solution script task.yaml names (validated at push)."""
    manifest = task_yaml.load(files.text("task.yaml") or "")
    solution = manifest.get("solution") if isinstance(manifest, dict) else None
    script = solution.get("script") if isinstance(solution, dict) else None
    return task_archive.normalise(str(script)) if script else task_volume.DEFAULT_SOLUTION
