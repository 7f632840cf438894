"""The runner's socket transport on real Docker (worker/runner_link.py, runner/PROTOCOL.md
Transport): over HTTP on a stack of its own, as `taskenv up` runs it, and a worker's pool driven
directly against sandboxes made with and without the link dir's mount.

What it must hold: the sandbox sees its link dir read-only and empty (no socket to swap, no
symlink to plant), cannot open its runner's socket through /proc, sees no other environment's
link dir; the link dir goes with the environment; a sandbox whose runner cannot connect is
served over the exec transport at once, never after a hang.
"""

import os
import secrets
import shutil
import stat
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiodocker
import httpx
import pytest

from taskenv.shared.settings import RunnerTransportKind
from taskenv.shared.store import container_name
from taskenv.shared.tasks import DEFAULT_IMAGE
from taskenv.worker import runner_link, runner_volume
from taskenv.worker.runner_sessions import RunnerPool, usable_link_dir
from tests.conftest import ROOT_TASK, Env
from tests.helpers import api_client, provision
from tests.helpers import execute as run
from tests.stack import Stack, eventually, running

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not runner_volume.DEFAULT_BINARY.is_file(), reason="needs runner/build"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("runner-socket")
    settings = {"TASKENV_EXEC_BACKEND": "runner", "TASKENV_RUNNER_TRANSPORT": "socket"}
    with running(home, settings, rooted=ROOT_TASK) as started:
        yield started


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(stack.key()) as client:
        yield client


@pytest.fixture
async def rooted(http: httpx.AsyncClient, stack: Stack) -> AsyncIterator[Env]:
    ready = await provision(http, stack, task_ref="rooted")
    yield ready
    await http.delete(ready.url)


async def test_a_default_sandbox_starts_its_own_runner_and_needs_no_exec(http, stack, docker):
    """The built-in keep-alive starts the runner, which connects as the container starts: the
    session opens without a `docker exec` (RunnerPool.boot), and the container's log is as ever."""
    env = await provision(http, stack)
    assert (await run(http, env, "echo ok")).json() == {"exit_code": 0, "output": "ok\n"}
    info = await docker.containers.container(container_name(env.id)).show()
    assert not info.get("ExecIDs"), info.get("ExecIDs")
    assert "--connect" in " ".join(info["Config"]["Cmd"])
    assert (await http.get(f"{env.url}/logs")).json() == {"logs": "taskenv sandbox ready\n"}
    await http.delete(env.url)


async def test_the_link_dir_is_read_only_and_empty_even_for_root(http, stack, rooted):
    attacks = "touch /.taskenv-link/x; ln -s /var/run/docker.sock /.taskenv-link/s-x; mkdir /.taskenv-link/d"
    answer = (await run(http, rooted, f"{attacks}; ls -A /.taskenv-link; echo rc=$?")).json()
    # Three refusals, then an empty listing: the runner's socket was unlinked once it connected.
    output = answer["output"]
    assert output.count("Read-only file system") == 3 and output.endswith("Read-only file system\nrc=0\n"), (
        answer
    )
    host_side = stack.link_dir / rooted.id
    found = host_side.lstat()
    assert stat.S_ISDIR(found.st_mode) and found.st_uid == 0 and stat.S_IMODE(found.st_mode) == 0o755
    assert list(host_side.iterdir()) == []


async def test_a_root_sandbox_cannot_open_its_runners_socket_through_proc(http, stack, rooted):
    answer = (
        await run(http, rooted, "ls -l /proc/$PPID/fd/1; printf x > /proc/$PPID/fd/1; echo rc=$?")
    ).json()
    assert "socket:[" in answer["output"] and "No such device or address" in answer["output"], answer
    assert answer["output"].endswith("rc=1\n"), answer
    assert (await run(http, rooted, "echo ok")).json() == {"exit_code": 0, "output": "ok\n"}


async def test_an_environment_sees_only_its_own_link_dir_and_it_goes_with_it(http, stack):
    first, second = await provision(http, stack), await provision(http, stack)
    mounts = (await run(http, second, "grep taskenv-link /proc/self/mountinfo")).json()["output"]
    assert second.id in mounts and first.id not in mounts and " ro," in mounts, mounts
    assert (stack.link_dir / first.id).is_dir() and (stack.link_dir / second.id).is_dir()
    for env in (first, second):
        assert (await http.delete(env.url)).status_code in (200, 202, 204)
    eventually(
        lambda: not (stack.link_dir / first.id).exists() and not (stack.link_dir / second.id).exists(),
        "the link dirs removed with their environments",
    )


# ---- a worker's pool against sandboxes it makes itself ----


@pytest.fixture
def link_dir() -> Iterator[Path]:
    """Short: a socket's path in it must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tl-", dir="/run"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def pool(docker: aiodocker.Docker, link_dir: Path) -> AsyncIterator[RunnerPool]:
    volume = await runner_volume.install(docker, runner_volume.DEFAULT_BINARY.read_bytes(), DEFAULT_IMAGE)
    made = RunnerPool(docker, volume, link_dir)
    yield made
    await made.close()


@pytest.fixture
async def sandboxes(docker: aiodocker.Docker) -> AsyncIterator[list[aiodocker.containers.DockerContainer]]:
    made: list[aiodocker.containers.DockerContainer] = []
    yield made
    for container in made:
        with suppress(aiodocker.DockerError):
            await container.delete(force=True)


async def sandbox(docker: aiodocker.Docker, pool: RunnerPool, made: list[Any], *, mounted: bool) -> str:
    """A hardened sandbox with the runner, its link dir made; mounted or not."""
    env_id = str(uuid.uuid4())
    link = pool.link_mounts(env_id)
    config: dict[str, Any] = {
        "Image": DEFAULT_IMAGE,
        "Cmd": ["sleep", "3600"],
        "Labels": {"taskenv.test": "runner-socket", "taskenv.env": env_id},
        "HostConfig": {
            "NetworkMode": "none",
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Init": True,
            "Mounts": [runner_volume.sandbox_mount(pool.volume), *(link if mounted else [])],
            "CapAdd": list(runner_volume.RUNNER_CAPABILITIES),
        },
    }
    made.append(await docker.containers.run(config, name=container_name(env_id)))
    return env_id


async def test_a_pool_session_goes_over_the_socket_and_the_frames_bypass_the_engine(docker, pool, sandboxes):
    env_id = await sandbox(docker, pool, sandboxes, mounted=True)
    session = await pool.session(env_id)
    assert session is not None and session.transport.kind == RunnerTransportKind.SOCKET  # type: ignore[attr-defined]
    exe_info = await session.transport.exe.inspect()  # type: ignore[attr-defined]
    assert exe_info["OpenStdin"] is False and exe_info["Running"] is True  # detached: dockerd holds no stream


async def test_a_sandbox_without_the_mount_falls_back_to_exec_at_once(docker, pool, sandboxes, caplog):
    env_id = await sandbox(docker, pool, sandboxes, mounted=False)
    started = time.monotonic()
    session = await pool.session(env_id)
    assert session is not None and session.transport.kind == RunnerTransportKind.EXEC  # type: ignore[attr-defined]
    assert time.monotonic() - started < 3  # the runner's end was seen, not the hello timeout
    assert "using the exec transport" in caplog.text and "exited with code 1" in caplog.text
    # The session is lost and reopened over exec straight away: its socket is not tried again.
    await session.close()
    caplog.clear()
    again = await pool.session(env_id)
    assert again is not None and again.transport.kind == RunnerTransportKind.EXEC  # type: ignore[attr-defined]
    assert "using the exec transport" not in caplog.text


async def test_a_dropped_environment_loses_its_link_dir(docker, pool, sandboxes, link_dir):
    env_id = await sandbox(docker, pool, sandboxes, mounted=True)
    assert await pool.session(env_id) is not None
    await pool.drop(env_id)
    assert not (link_dir / env_id).exists()


async def test_the_link_dir_is_found_shared_with_the_engine(docker, link_dir):
    assert await usable_link_dir(docker, link_dir) == link_dir
    assert [p.name for p in link_dir.iterdir()] == []  # the probe file is gone


async def test_prune_removes_only_stale_link_dirs_of_environments_gone(docker, pool, sandboxes, link_dir):
    alive = await sandbox(docker, pool, sandboxes, mounted=True)
    gone, fresh, other = str(uuid.uuid4()), str(uuid.uuid4()), f"keep-{secrets.token_hex(4)}"
    for name in (gone, fresh, other):
        (link_dir / name).mkdir()
    old = time.time() - 3600
    for name in (alive, gone, other):
        os.utime(link_dir / name, (old, old))
    assert await runner_link.prune(docker, link_dir) == 1
    assert sorted(p.name for p in link_dir.iterdir()) == sorted([alive, fresh, other])
