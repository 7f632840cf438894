"""The socket transport's host side (runner/PROTOCOL.md, Transport): per environment a directory
the worker makes on the host, `<link dir>/<env id>/`, which its sandbox sees read-only at
`/.taskenv-link`; a session is one socket the worker binds there, to which the runner, started
by a detached `docker exec --connect`, connects once. The frames then go over that connection,
and dockerd copies none of them.

Why the worker listens and the runner connects: the worker only ever binds (never connects to,
never follows) a path in a directory that it made and that the sandbox cannot write, so no
symlink or socket swap in the sandbox can send the worker anywhere. The socket is the worker's
(root's), mode 0600: the runner (root in the sandbox) can connect, the task's own user cannot.
A task that runs as root could connect first and pose as its own runner: it breaks only its own
session, as it already can by killing or writing into its runner.
"""

import asyncio
import os
import re
import secrets
import shutil
import socket
import stat
import struct
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.execs import Exec

from taskenv.shared.settings import RunnerTransportKind
from taskenv.worker import never_started
from taskenv.worker.runner_volume import RUNNER_PATH

LINK_MOUNT = "/.taskenv-link"
# Only directories named as environment ids are ever made or removed in the link dir.
ENV_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
# A link dir whose sandbox is not on the engine is removed at a worker's start once older than
# this: a provision in flight (its directory made, its sandbox not created yet) keeps its own.
STALE_AFTER_SEC = 300.0
# How often the runner's exec is looked at while its connection is awaited: one that ended (no
# mount, an old runner) falls back at once instead of at the timeout.
EXEC_POLL_SEC = 0.05
READ_CHUNK = 64 * 1024


def env_dir(link_dir: Path, env_id: str) -> Path:
    if not ENV_ID.match(env_id):
        raise ValueError(f"not an environment id: {env_id!r}")
    return link_dir / env_id


def prepare(link_dir: Path, env_id: str) -> dict[str, Any]:
    """Make the environment's directory (before its sandbox) and return the sandbox's read-only
    mount of it."""
    path = env_dir(link_dir, env_id)
    link_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.mkdir(mode=0o755, exist_ok=True)
    return {"Type": "bind", "Source": str(path), "Target": LINK_MOUNT, "ReadOnly": True}


def remove(link_dir: Path, env_id: str) -> None:
    if ENV_ID.match(env_id):
        shutil.rmtree(link_dir / env_id, ignore_errors=True)


def is_linked(link_dir: Path, env_id: str) -> bool:
    """The environment's directory is there, a directory of ours that no one else can write
    (never a symlink): its sandbox was made with the mount."""
    try:
        found = os.lstat(env_dir(link_dir, env_id))
    except (OSError, ValueError):
        return False
    return stat.S_ISDIR(found.st_mode) and found.st_uid == os.getuid() and not found.st_mode & 0o022


async def prune(docker: aiodocker.Docker, link_dir: Path) -> int:
    """Remove the directories of environments whose sandbox no longer is on the engine (of any
    deployment: a link dir may be shared by mistake), once stale. The number removed."""
    found = await docker.containers.list(all=True, filters='{"label": ["taskenv.env"]}')
    alive = {c["Labels"]["taskenv.env"] for c in found}
    return await asyncio.to_thread(_prune, link_dir, alive, time.time() - STALE_AFTER_SEC)


def _prune(link_dir: Path, alive: set[str], before: float) -> int:
    removed = 0
    with suppress(FileNotFoundError), os.scandir(link_dir) as entries:
        for entry in entries:
            if ENV_ID.match(entry.name) and entry.name not in alive and _stale_dir(entry, before):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _stale_dir(entry: os.DirEntry[str], before: float) -> bool:
    return entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < before


async def mounted_link_dir(docker: aiodocker.Docker, container: str, env_id: str) -> Path | None:
    """The link dir whose environment directory this sandbox mounts (as the engine reports it),
    or None: for a process beside the engine that did not make it (the bench's runner side)."""
    mounts = (await docker.containers.container(container).show()).get("Mounts") or []
    source = next((m.get("Source") for m in mounts if m.get("Destination") == LINK_MOUNT), None)
    path = Path(source) if source else None
    return path.parent if path is not None and path.name == env_id else None


async def why_not_shared(docker: aiodocker.Docker, link_dir: Path, image: str) -> str | None:
    """None when the engine sees `link_dir` as this process does (a probe file of a random name,
    bind-mounted into a container that is created, never started, and removed); else why not:
    a worker in a container without the link dir mounted at the same path."""
    await asyncio.to_thread(link_dir.mkdir, mode=0o755, parents=True, exist_ok=True)
    probe = link_dir / f".probe-{secrets.token_hex(8)}"
    probe.touch(mode=0o600)
    try:
        config = never_started.config(
            image, [{"Type": "bind", "Source": str(probe), "Target": "/probe", "ReadOnly": True}]
        )
        try:
            container = await docker.containers.create(
                config, name=f"taskenv-link-probe-{secrets.token_hex(6)}"
            )
        except aiodocker.DockerError as exc:
            return f"the engine does not see {link_dir} ({exc.message})"
        await container.delete(force=True)
        return None
    finally:
        probe.unlink(missing_ok=True)


class Listener:
    """One socket in an environment's directory, bound for one runner's connection."""

    def __init__(self, link_dir: Path, env_id: str) -> None:
        self.name = f"s-{secrets.token_hex(6)}"
        self.path = env_dir(link_dir, env_id) / self.name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # Linux gives the bound file the socket's own mode (under the umask): 0600 from the
            # start, with no moment when another uid could connect.
            os.fchmod(self._sock.fileno(), 0o600)
            self._sock.bind(str(self.path))
            self._sock.listen(1)
            self._sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    @property
    def sandbox_path(self) -> str:
        return f"{LINK_MOUNT}/{self.name}"

    async def accept(self, exe: Exec | None) -> socket.socket:
        """The runner's connection; RunnerGone if its exec ends first (`exe` None: a runner the
        sandbox started itself). Unbounded: the caller bounds it."""
        if exe is None:
            return (await asyncio.get_running_loop().sock_accept(self._sock))[0]
        accepting = asyncio.ensure_future(asyncio.get_running_loop().sock_accept(self._sock))
        try:
            while True:
                done, _ = await asyncio.wait({accepting}, timeout=EXEC_POLL_SEC)
                if done:
                    return accepting.result()[0]
                info = await exe.inspect()
                if not info.get("Running") and info.get("ExitCode") is not None:
                    raise RunnerGone(f"the runner exited with code {info['ExitCode']} before connecting")
        finally:
            accepting.cancel()

    def close(self) -> None:
        self._sock.close()
        with suppress(OSError):
            self.path.unlink()


def keep_alive_with_runner(listener: Listener) -> list[str]:
    """The built-in sandbox's keep-alive (shared/tasks.py KEEP_ALIVE), which also starts the
    runner, as root, to connect to `listener` as the container starts: the session opens with
    no `docker exec` at all. When that session ends (its worker gone) the runner exits and the
    keep-alive stays; later sessions are opened with an exec as for any sandbox. The runner's
    own words go nowhere: the container's log stays the sandbox's."""
    runner = f"{RUNNER_PATH} --connect {listener.sandbox_path} </dev/null 2>/dev/null &"
    return ["/bin/sh", "-c", f"echo taskenv sandbox ready; {runner} exec sleep 2147483647"]


def peer_pid(connection: socket.socket) -> int:
    """The pid, in this process's namespace, of the process that connected (0: not visible)."""
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", credentials)[0])


class RunnerGone(Exception):
    """The runner's exec ended before it connected."""


class SocketTransport:
    """The runner's frames over its unix socket. The exec is kept: its host pid is how a runner
    that stopped answering is killed from outside (None for the runner a sandbox started
    itself: its user's processes are swept instead)."""

    kind = RunnerTransportKind.SOCKET

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        exe: Exec | None,
        pid: int = 0,
        container_id: str = "",
    ) -> None:
        self.exe = exe
        # Without an exec: the runner's host pid (0 when this process does not see the host's
        # pids) and its container, to kill it from outside.
        self.pid = pid
        self.container_id = container_id
        self._reader = reader
        self._writer = writer

    @classmethod
    async def over(
        cls, connection: socket.socket, exe: Exec | None, container_id: str = ""
    ) -> "SocketTransport":
        """Over `connection`; without `exe` (a runner its sandbox started), the runner's pid is the
        socket's peer as the kernel reports it, in `container_id`."""
        pid = peer_pid(connection) if exe is None else 0
        reader, writer = await asyncio.open_unix_connection(sock=connection, limit=READ_CHUNK)
        return cls(reader, writer, exe, pid, container_id)

    async def read(self) -> bytes | None:
        return await self._reader.read(READ_CHUNK) or None

    async def write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        self._writer.close()
        with suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
