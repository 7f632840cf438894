"""A pushed task's files as a worker reads them (worker/task_files.py; fakeredis): read from the
store once per archive digest, then kept; the solution and the compose document parsed with it;
the kept ones bounded by bytes; a missing, corrupt or unparsable archive a clear `Unreadable`."""

import asyncio
import gzip
import io
import tarfile

import fakeredis
import pytest

from taskenv.shared import task_keys
from taskenv.shared.tasks import TaskSource
from taskenv.worker.task_files import TaskFilesCache, Unreadable

TASK_YAML = b"name: web-lab\nversion: 1.0.0\nsolution:\n  script: scripts/solve.sh\n"
COMPOSE = b"services:\n  web:\n    image: busybox\n"


def archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def source(digest: str) -> TaskSource:
    return TaskSource(org="acme", name="web-lab", version="1.0.0", oci_digest=digest)


class CountingRedis(fakeredis.FakeAsyncRedis):
    gets = 0

    async def get(self, name):  # type: ignore[no-untyped-def, override]
        type(self).gets += 1
        return await super().get(name)


@pytest.fixture
def redis() -> CountingRedis:
    CountingRedis.gets = 0
    return CountingRedis()


async def put(redis: fakeredis.FakeAsyncRedis, digest: str, blob: bytes) -> None:
    await redis.set(task_keys.task_blob("acme", digest), blob)


async def test_an_archive_is_read_once_with_its_solution_and_compose(redis: CountingRedis) -> None:
    blob = archive({"task.yaml": TASK_YAML, "docker-compose.yaml": COMPOSE, "scripts/solve.sh": b"true\n"})
    await put(redis, "sha256:a", blob)
    cache = TaskFilesCache()
    first = await cache.get(redis, source("sha256:a"), 1 << 20)
    again = await cache.get(redis, source("sha256:a"), 1 << 20)
    assert again is first
    assert CountingRedis.gets == 1
    assert first.solution == "scripts/solve.sh"
    assert first.compose == {"services": {"web": {"image": "busybox"}}}
    assert first.files.files["scripts/solve.sh"] == b"true\n"


async def test_provisions_that_miss_at_once_share_one_read(redis: CountingRedis) -> None:
    await put(redis, "sha256:g", archive({"task.yaml": TASK_YAML, "docker-compose.yaml": COMPOSE}))
    cache = TaskFilesCache()
    reads = await asyncio.gather(*(cache.get(redis, source("sha256:g"), 1 << 20) for _ in range(20)))
    assert CountingRedis.gets == 1
    assert all(read is reads[0] for read in reads)


async def test_a_cancelled_provision_does_not_cancel_the_read_others_wait_for(redis: CountingRedis) -> None:
    await put(redis, "sha256:h", archive({"task.yaml": TASK_YAML}))
    cache = TaskFilesCache()
    first = asyncio.create_task(cache.get(redis, source("sha256:h"), 1 << 20))
    second = asyncio.create_task(cache.get(redis, source("sha256:h"), 1 << 20))
    await asyncio.sleep(0)  # both are waiting on the one read
    first.cancel()
    assert (await second).solution == "scripts/solve.sh"
    assert CountingRedis.gets == 1


async def test_without_a_compose_file_or_solution_the_defaults(redis: CountingRedis) -> None:
    await put(redis, "sha256:b", archive({"task.yaml": b"name: x\nversion: 1.0.0\n"}))
    read = await TaskFilesCache().get(redis, source("sha256:b"), 1 << 20)
    assert read.compose is None
    assert read.solution == "solution.sh"


async def test_kept_archives_are_bounded_by_bytes(redis: CountingRedis) -> None:
    for name in "cde":
        await put(redis, f"sha256:{name}", archive({"task.yaml": TASK_YAML, "big": name.encode() * 600}))
    cache = TaskFilesCache(max_bytes=1500)
    for name in "cde":
        await cache.get(redis, source(f"sha256:{name}"), 1 << 20)
    assert CountingRedis.gets == 3
    await cache.get(redis, source("sha256:e"), 1 << 20)  # the newest is kept
    assert CountingRedis.gets == 3
    await cache.get(redis, source("sha256:c"), 1 << 20)  # the oldest was dropped
    assert CountingRedis.gets == 4


@pytest.mark.parametrize(
    ("blob", "says"),
    [
        (None, "no longer stored"),
        (b"not a gzip", "unreadable"),
        (archive({"task.yaml": b"name: [unclosed\n"}), "unreadable"),
        (archive({"task.yaml": TASK_YAML, "docker-compose.yaml": b"a: &a [*a]\n"}), "unreadable"),
    ],
)
async def test_an_unreadable_archive_says_why(redis: CountingRedis, blob: bytes | None, says: str) -> None:
    if blob is not None:
        await put(redis, "sha256:f", blob)
    with pytest.raises(Unreadable, match=says):
        await TaskFilesCache().get(redis, source("sha256:f"), 1 << 20)
