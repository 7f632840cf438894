"""The socket transport's host side without Docker (worker/runner_link.py): the listening
socket is root's alone (mode 0600 from its bind: another uid cannot connect), it takes one
connection and leaves no file behind; the transport carries bytes both ways and ends cleanly;
only directories named as environment ids are made, trusted or pruned; a link dir the engine does
not share is not used."""

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiodocker
import pytest

from taskenv.shared.settings import MAX_RUNNER_LINK_DIR, RunnerTransportKind, Settings
from taskenv.worker import runner_link
from taskenv.worker.runner_link import Listener, RunnerGone, SocketTransport
from taskenv.worker.runner_sessions import usable_link_dir

ENV_ID = "0f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
OTHER_UID = 54321
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (sockets of root, another uid)")


@pytest.fixture
def link_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tl-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


class FinishedExec:
    """An exec that ended before its runner connected (no mount, an old runner)."""

    async def inspect(self) -> dict[str, object]:
        return {"Running": False, "ExitCode": 1}


class RunningExec:
    async def inspect(self) -> dict[str, object]:
        return {"Running": True, "ExitCode": None}


def connect_as(uid: int, path: Path) -> subprocess.CompletedProcess[str]:
    """A connect by another uid, with the system's python (the venv's may be private to root)."""
    code = f"import socket; socket.socket(socket.AF_UNIX).connect({str(path)!r})"
    return subprocess.run([SYSTEM_PYTHON, "-c", code], user=uid, capture_output=True, text=True, timeout=10)


@needs_root
async def test_the_socket_is_roots_alone_takes_one_connection_and_leaves_no_file(link_dir):
    runner_link.prepare(link_dir, ENV_ID)
    listener = Listener(link_dir, ENV_ID)
    try:
        assert listener.sandbox_path == f"/.taskenv-link/{listener.name}"
        found = listener.path.lstat()
        assert (found.st_uid, found.st_mode & 0o777) == (0, 0o600)
        refused = await asyncio.to_thread(connect_as, OTHER_UID, listener.path)
        assert "PermissionError" in refused.stderr, refused.stderr
        with socket.socket(socket.AF_UNIX) as runner:
            runner.connect(str(listener.path))
            async with asyncio.timeout(5):
                accepted = await listener.accept(RunningExec())  # type: ignore[arg-type]
            accepted.close()
    finally:
        listener.close()
    assert list((link_dir / ENV_ID).iterdir()) == []


async def test_an_exec_that_ends_before_connecting_is_seen_at_once(link_dir):
    runner_link.prepare(link_dir, ENV_ID)
    listener = Listener(link_dir, ENV_ID)
    try:
        async with asyncio.timeout(2):
            with pytest.raises(RunnerGone, match="exited with code 1"):
                await listener.accept(FinishedExec())  # type: ignore[arg-type]
    finally:
        listener.close()


async def test_the_transport_carries_bytes_both_ways_and_ends_at_eof():
    ours, theirs = socket.socketpair()
    transport = await SocketTransport.over(ours, exe=None)  # type: ignore[arg-type]
    assert transport.kind == RunnerTransportKind.SOCKET
    await transport.write(b"frame")
    assert theirs.recv(16) == b"frame"
    theirs.sendall(b"x" * 100_000)
    received = b""
    while len(received) < 100_000:
        chunk = await transport.read()
        assert chunk is not None and len(chunk) <= runner_link.READ_CHUNK
        received += chunk
    theirs.close()
    assert await transport.read() is None
    await transport.close()


@pytest.mark.parametrize("env_id", ["../etc", "x", "", ENV_ID.upper(), ENV_ID + "/..", "/" + ENV_ID])
def test_only_environment_ids_name_a_link_dir(link_dir, env_id):
    with pytest.raises(ValueError, match="not an environment id"):
        runner_link.prepare(link_dir, env_id)
    runner_link.remove(link_dir, env_id)  # ignored, never a path outside
    assert not runner_link.is_linked(link_dir, env_id)


def test_a_link_dir_is_trusted_only_as_a_directory_of_ours_that_no_one_else_writes(link_dir):
    mount = runner_link.prepare(link_dir, ENV_ID)
    assert mount == {
        "Type": "bind",
        "Source": str(link_dir / ENV_ID),
        "Target": "/.taskenv-link",
        "ReadOnly": True,
    }
    assert runner_link.is_linked(link_dir, ENV_ID)
    (link_dir / ENV_ID).chmod(0o777)
    assert not runner_link.is_linked(link_dir, ENV_ID)
    shutil.rmtree(link_dir / ENV_ID)
    (link_dir / "elsewhere").mkdir(mode=0o755)
    (link_dir / ENV_ID).symlink_to(link_dir / "elsewhere")
    assert not runner_link.is_linked(link_dir, ENV_ID)
    runner_link.remove(link_dir, ENV_ID)
    assert (link_dir / "elsewhere").is_dir()  # a symlink is removed, never followed


def test_prune_keeps_the_alive_the_fresh_and_what_is_not_an_environments(link_dir):
    alive, gone, fresh = (str(uuid.uuid4()) for _ in range(3))
    for name in (alive, gone, fresh, "not-an-env"):
        (link_dir / name).mkdir()
    old = time.time() - runner_link.STALE_AFTER_SEC - 60
    for name in (alive, gone, "not-an-env"):
        os.utime(link_dir / name, (old, old))
    assert runner_link._prune(link_dir, {alive}, time.time() - runner_link.STALE_AFTER_SEC) == 1
    assert sorted(p.name for p in link_dir.iterdir()) == sorted([alive, fresh, "not-an-env"])


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"runner_transport": "socket"}, "needs TASKENV_RUNNER_LINK_DIR"),
        ({"runner_transport": "socket", "runner_link_dir": "relative"}, "must be absolute"),
        ({"runner_link_dir": "/" + "x" * MAX_RUNNER_LINK_DIR}, f"at most {MAX_RUNNER_LINK_DIR}"),
    ],
)
def test_settings_refuse_a_socket_transport_without_a_short_absolute_link_dir(settings, error):
    with pytest.raises(ValueError, match=error):
        Settings(**settings)


def test_the_longest_link_dir_leaves_room_for_an_environment_and_a_socket():
    listener_path = Path("/" + "x" * (MAX_RUNNER_LINK_DIR - 1)) / ENV_ID / "s-0123456789ab"
    assert len(str(listener_path).encode()) <= 107


class EngineElsewhere:
    """An engine that does not see this process's files: a worker in a container without the
    link dir mounted at the host's path."""

    class containers:  # as aiodocker names it
        @staticmethod
        async def create(config: dict[str, object], name: str) -> None:
            source = config["HostConfig"]["Mounts"][0]["Source"]  # type: ignore[index]
            raise aiodocker.DockerError(400, {"message": f"bind source path does not exist: {source}"})


async def test_a_link_dir_the_engine_does_not_share_is_not_used(link_dir, caplog):
    assert await usable_link_dir(EngineElsewhere(), link_dir) is None  # type: ignore[arg-type]
    assert (
        "runners use the exec transport" in caplog.text and "bind source path does not exist" in caplog.text
    )
    assert list(link_dir.iterdir()) == []  # the probe file is gone
