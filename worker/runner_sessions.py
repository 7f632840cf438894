"""A worker process's runner sessions: one per environment, each a `docker exec` of the runner
with its stdio attached, opened at the environment's first command and closed at teardown.

Why an exec per worker process rather than the container's own stdio: several worker
processes serve one Docker host, and a container has one stdin; two attached writers could
interleave their frames. An exec's stdio belongs to its one caller. The runner runs as root
(without the capabilities to leave the sandbox: see worker/containers.py) and starts each
command as its task's user, so the command cannot signal, trace or write into the runner; a
task that runs as root can, and then only breaks its own session.

A session that ends (runner killed, container gone, protocol broken) is dropped and the next
command opens a new one; when a worker process restarts, its new sessions are opened the same
way, and the old runners, their stdin closed with the old process's connections, kill what they
ran and exit. An environment whose runner does not greet within `HELLO_TIMEOUT_SEC` (a
container made before the runner was mounted, an image that cannot run it) is served with plain
`docker exec` until `RETRY_AFTER_SEC` has passed.
"""

import asyncio
import logging
import time
from pathlib import Path

import aiodocker
from aiodocker.execs import Exec

from taskenv.shared.settings import ExecBackend, Settings
from taskenv.shared.store import container_name
from taskenv.shared.tasks import DEFAULT_IMAGE
from taskenv.worker.containers import managed_on_host
from taskenv.worker.runner_client import RunnerLost, RunnerSession
from taskenv.worker.runner_volume import DEFAULT_BINARY, RUNNER_PATH, install

log = logging.getLogger("taskenv.worker")

HELLO_TIMEOUT_SEC = 5.0
# Sessions opened ahead at once (after provisions, at a worker's start): each is one
# `docker exec`, and the engine runs only some tens of those per second.
WARM_AT_ONCE = 4
RETRY_AFTER_SEC = 30.0
STDOUT, STDERR = 1, 2
# What is logged of the runner's own stderr (it may be the sandbox's words: bounded).
STDERR_LOGGED = 300


class ExecStreamTransport:
    """The runner's frames ride the exec's stdout; its stderr is logged, bounded. The exec is
    kept: its host pid is how a runner that stopped answering is killed from outside."""

    def __init__(self, exe: Exec, env_id: str) -> None:
        self.exe = exe
        self._stream = exe.start(detach=False)
        self._env_id = env_id

    async def read(self) -> bytes | None:
        while (message := await self._stream.read_out()) is not None:
            if message.stream == STDOUT:
                return bytes(message.data)
            text = bytes(message.data[:STDERR_LOGGED]).decode("utf-8", errors="replace")
            log.warning("runner of %s said on stderr: %r", self._env_id, text)
        return None

    async def write(self, data: bytes) -> None:
        await self._stream.write_in(data)

    async def close(self) -> None:
        await self._stream.close()


async def open_session(
    docker: aiodocker.Docker, env_id: str, within_sec: float = HELLO_TIMEOUT_SEC
) -> RunnerSession:
    """Start a runner in the environment's container and wait for its hello."""
    container = docker.containers.container(container_name(env_id))
    try:
        async with asyncio.timeout(within_sec):
            exe = await container.exec(
                [RUNNER_PATH], stdin=True, stdout=True, stderr=True, user="0:0", workdir="/"
            )
    except TimeoutError:
        raise RunnerLost(f"the engine did not start the runner within {within_sec:g} s") from None
    session = RunnerSession(ExecStreamTransport(exe, env_id))
    await session.open(within_sec)
    return session


async def start_for_host(
    settings: Settings, docker: aiodocker.Docker, deployment: str
) -> "RunnerPool | None":
    """A worker process's pool when TASKENV_EXEC_BACKEND is `runner` (else None), its sessions
    to the host's running environments opening in the background: after a worker's restart,
    their commands find their runners ready."""
    if settings.exec_backend != ExecBackend.RUNNER:
        return None
    pool = await start_pool(docker, settings.runner_binary or DEFAULT_BINARY, DEFAULT_IMAGE)
    if pool is not None:
        running = await managed_on_host(docker, settings.host_id, deployment)
        pool.warm(*sorted(env_id for env_id, found in running.items() if found.running))
    return pool


async def start_pool(docker: aiodocker.Docker, binary: Path, image: str) -> "RunnerPool | None":
    """This worker process's pool, with the runner's volume in place (worker/runner_volume.py);
    None, said once in the log, when there is no runner to use: commands then run with
    `docker exec`."""
    try:
        volume = await install(docker, await asyncio.to_thread(binary.read_bytes), image)
    except OSError as exc:
        log.warning(
            "no runner binary (%s): commands run with docker exec; build it with `make -C runner`", exc
        )
        return None
    except aiodocker.DockerError as exc:
        log.warning("could not put the runner into a volume (%s): commands run with docker exec", exc)
        return None
    return RunnerPool(docker, volume)


class RunnerPool:
    """The open sessions of this worker process, by environment, and the volume that sandboxes
    made by this worker mount the runner from."""

    def __init__(self, docker: aiodocker.Docker, volume: str) -> None:
        self._docker = docker
        self.volume = volume
        self._sessions: dict[str, RunnerSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._unavailable: dict[str, float] = {}
        self._warming: set[asyncio.Task[None]] = set()
        self._warm_slots = asyncio.Semaphore(WARM_AT_ONCE)

    async def session(self, env_id: str) -> RunnerSession | None:
        """The environment's session, opened if need be; None while its runner is unavailable
        (the caller uses `docker exec`). Engine errors while opening propagate."""
        found = self._sessions.get(env_id)
        if found is not None and found.alive:
            return found
        if time.monotonic() < self._unavailable.get(env_id, 0.0):
            return None
        async with self._locks.setdefault(env_id, asyncio.Lock()):
            found = self._sessions.get(env_id)
            if found is not None and found.alive:
                return found
            try:
                opened = await open_session(self._docker, env_id)
            except RunnerLost as exc:
                log.warning("runner of %s unavailable, using docker exec: %s", env_id, exc)
                self._unavailable[env_id] = time.monotonic() + RETRY_AFTER_SEC
                return None
            opened.on_lost = self._forget
            self._sessions[env_id] = opened
            self._unavailable.pop(env_id, None)
            return opened

    def warm(self, *env_ids: str) -> None:
        """Open these sessions in the background, a few at a time (after a provision; at a
        worker's start, for its host's running environments): their first commands then find
        them ready."""
        for env_id in env_ids:
            task = asyncio.create_task(self._warm(env_id))
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    async def _warm(self, env_id: str) -> None:
        async with self._warm_slots:
            try:
                await self.session(env_id)
            except Exception as exc:
                log.info("could not open the runner session of %s ahead: %s", env_id, exc)

    def _forget(self, session: RunnerSession) -> None:
        for env_id, known in list(self._sessions.items()):
            if known is session:
                del self._sessions[env_id]

    async def drop(self, env_id: str) -> None:
        """At teardown: close the environment's session and forget it."""
        self._unavailable.pop(env_id, None)
        self._locks.pop(env_id, None)
        if (session := self._sessions.pop(env_id, None)) is not None:
            await session.close()

    async def close(self) -> None:
        for task in list(self._warming):
            task.cancel()
        for env_id in list(self._sessions):
            await self.drop(env_id)
