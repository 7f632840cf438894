"""A pushed task's files as a worker reads them for its environments: fetched from the store
and parsed (the archive, task.yaml's solution, the compose file) once per archive, then kept.

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
class TaskFiles:
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
        self._kept: LRUCache[str, TaskFiles] = LRUCache(max_bytes, getsizeof=lambda read: max(read.size, 1))

    async def get(self, blobs: Redis, source: TaskSource, max_task_bytes: int) -> TaskFiles:
        kept = self._kept.get(source.oci_digest)
        if kept is None:
            kept = await _read(blobs, source, max_task_bytes)
            if kept.size <= self._kept.maxsize:
                self._kept[source.oci_digest] = kept
        return kept


async def _read(blobs: Redis, source: TaskSource, max_task_bytes: int) -> TaskFiles:
    blob = await task_store.get_blob(blobs, source.org, source.oci_digest)
    if blob is None:
        raise Unreadable(f"task {source.org}/{source.name}@{source.version} is no longer stored")
    try:
        return await asyncio.to_thread(_parse, blob, max_task_bytes)
    except (task_archive.ArchiveError, task_yaml.YamlError) as exc:
        raise Unreadable(f"task archive unreadable: {exc}") from None


def _parse(blob: bytes, max_task_bytes: int) -> TaskFiles:
    files = task_archive.read(blob, max_task_bytes)
    compose_name = next((name for name in COMPOSE_FILES if name in files.files), None)
    compose = task_yaml.load(files.text(compose_name) or "") if compose_name else None
    return TaskFiles(files, _solution_of(files), compose)


def _solution_of(files: task_archive.TaskFiles) -> str:
    """The solution script task.yaml names (validated at push)."""
    manifest = task_yaml.load(files.text("task.yaml") or "")
    solution = manifest.get("solution") if isinstance(manifest, dict) else None
    script = solution.get("script") if isinstance(solution, dict) else None
    return task_archive.normalise(str(script)) if script else task_volume.DEFAULT_SOLUTION
