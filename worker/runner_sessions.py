"""A worker process's runner sessions: one per environment, each a `docker exec` of the runner,
opened at the environment's first command and closed at teardown. Its frames go over the exec's
stdio (the `exec` transport) or, with TASKENV_RUNNER_TRANSPORT=socket, over a unix socket in the
environment's link dir (worker/runner_link.py), with dockerd off the per-command path.

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
`docker exec` until `RETRY_AFTER_SEC` has passed. A runner that does not connect over its socket
(a sandbox made without the link dir's mount, a link dir the engine does not share) is served
over the exec transport instead, said once in the log.
"""

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiodocker
from aiodocker.execs import Exec

from taskenv.shared.settings import ExecBackend, RunnerTransportKind, Settings
from taskenv.shared.store import container_name
from taskenv.shared.tasks import DEFAULT_IMAGE, KEEP_ALIVE, TaskSpec
from taskenv.worker import runner_link
from taskenv.worker.containers import managed_on_host
from taskenv.worker.runner_client import RunnerLost, RunnerSession
from taskenv.worker.runner_link import Listener, RunnerGone, SocketTransport
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

    kind = RunnerTransportKind.EXEC

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
    docker: aiodocker.Docker, env_id: str, within_sec: float = HELLO_TIMEOUT_SEC, link_dir: Path | None = None
) -> RunnerSession:
    """Start a runner in the environment's container and wait for its hello: over a socket in
    `link_dir` when the environment has its directory there, else (or when the runner does not
    connect) over the exec's stdio."""
    if link_dir is not None and runner_link.is_linked(link_dir, env_id):
        try:
            return await open_socket_session(docker, env_id, link_dir, within_sec)
        except RunnerLost as exc:
            log.warning(
                "runner of %s did not come over its socket (%s): using the exec transport", env_id, exc
            )
    return await open_exec_session(docker, env_id, within_sec)


async def open_exec_session(
    docker: aiodocker.Docker, env_id: str, within_sec: float = HELLO_TIMEOUT_SEC
) -> RunnerSession:
    try:
        async with asyncio.timeout(within_sec):
            exe = await _runner_exec(docker, env_id, [RUNNER_PATH], attached=True)
    except TimeoutError:
        raise RunnerLost(f"the engine did not start the runner within {within_sec:g} s") from None
    session = RunnerSession(ExecStreamTransport(exe, env_id))
    await session.open(within_sec)
    return session


async def open_socket_session(
    docker: aiodocker.Docker, env_id: str, link_dir: Path, within_sec: float = HELLO_TIMEOUT_SEC
) -> RunnerSession:
    """Bind a socket in the environment's directory, start the runner detached to connect to
    it, take its one connection; the socket's file is gone before the first frame."""
    try:
        listener = Listener(link_dir, env_id)
    except OSError as exc:
        raise RunnerLost(f"cannot listen in {link_dir / env_id}: {exc}") from None
    try:
        async with asyncio.timeout(within_sec):
            exe = await _runner_exec(
                docker, env_id, [RUNNER_PATH, "--connect", listener.sandbox_path], attached=False
            )
            await exe.start(detach=True)
            connection = await listener.accept(exe)
    except TimeoutError:
        raise RunnerLost(f"the runner did not connect within {within_sec:g} s") from None
    except RunnerGone as exc:
        raise RunnerLost(str(exc)) from None
    finally:
        listener.close()
    session = RunnerSession(await SocketTransport.over(connection, exe))
    await session.open(within_sec)
    return session


async def _runner_exec(docker: aiodocker.Docker, env_id: str, command: list[str], *, attached: bool) -> Exec:
    container = docker.containers.container(container_name(env_id))
    return await container.exec(
        command, stdin=attached, stdout=attached, stderr=attached, user="0:0", workdir="/"
    )


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
        if settings.runner_transport == RunnerTransportKind.SOCKET and settings.runner_link_dir:
            pool.link_dir = await usable_link_dir(docker, settings.runner_link_dir)
        running = await managed_on_host(docker, settings.host_id, deployment)
        pool.warm(*sorted(env_id for env_id, found in running.items() if found.running))
    return pool


async def usable_link_dir(docker: aiodocker.Docker, link_dir: Path) -> Path | None:
    """`link_dir`, its stale environments' directories removed, when the engine shares it with
    this process; else None, said once in the log (sessions then use the exec transport)."""
    try:
        why = await runner_link.why_not_shared(docker, link_dir, DEFAULT_IMAGE)
        if why is None:
            await runner_link.prune(docker, link_dir)
    except (OSError, aiodocker.DockerError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    if why is not None:
        log.warning("runner link dir unusable, runners use the exec transport: %s", why)
        return None
    return link_dir


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
    """The open sessions of this worker process, by environment, the volume that sandboxes
    made by this worker mount the runner from, and with the socket transport, the host directory
    where their runners connect."""

    def __init__(self, docker: aiodocker.Docker, volume: str, link_dir: Path | None = None) -> None:
        self._docker = docker
        self.volume = volume
        self.link_dir = link_dir
        # Environments whose runner did not come over its socket: reopened over exec at once.
        self._exec_only: set[str] = set()
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
            link_dir = None if env_id in self._exec_only else self.link_dir
            try:
                opened = await open_session(self._docker, env_id, link_dir=link_dir)
            except RunnerLost as exc:
                log.warning("runner of %s unavailable, using docker exec: %s", env_id, exc)
                self._unavailable[env_id] = time.monotonic() + RETRY_AFTER_SEC
                return None
            if link_dir is not None and not isinstance(opened.transport, SocketTransport):
                self._exec_only.add(env_id)
            opened.on_lost = self._forget
            self._sessions[env_id] = opened
            self._unavailable.pop(env_id, None)
            return opened

    def link_mounts(self, env_id: str) -> list[dict[str, Any]]:
        """What the environment's sandbox mounts for its runner to connect over a socket (its
        directory made here, before the sandbox): nothing without the socket transport, or when
        the directory cannot be made (its runner then uses the exec transport)."""
        if self.link_dir is None:
            return []
        try:
            return [runner_link.prepare(self.link_dir, env_id)]
        except (OSError, ValueError) as exc:
            log.warning("no runner link dir for %s (%s): its runner uses the exec transport", env_id, exc)
            return []

    def boot(self, env_id: str, spec: TaskSpec) -> Listener | None:
        """For a sandbox of the built-in image that runs the built-in keep-alive, with the socket
        transport: the socket its runner will connect to as the container starts (bound before
        the container exists; the spec's command is then `runner_link.keep_alive_with_runner`).
        None otherwise: another image's user may not be root, and a task's own command is the
        task's; those open their session with an exec."""
        if self.link_dir is None or spec.image != DEFAULT_IMAGE or spec.command != KEEP_ALIVE:
            return None
        if not runner_link.is_linked(self.link_dir, env_id):
            return None
        try:
            return Listener(self.link_dir, env_id)
        except OSError as exc:
            log.info("no boot socket for %s (%s): its session opens with an exec", env_id, exc)
            return None

    def adopt(self, env_id: str, listener: Listener, container_id: str) -> None:
        """Take the session of the runner the sandbox started (`boot`), in the background, under
        the environment's lock (a command or a warm-up meanwhile waits for it rather than
        opening a second); if it does not come, the next one opens with an exec."""
        task = asyncio.create_task(self._adopt(env_id, listener, container_id))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _adopt(self, env_id: str, listener: Listener, container_id: str) -> None:
        async with self._locks.setdefault(env_id, asyncio.Lock()):
            found = self._sessions.get(env_id)
            if found is not None and found.alive:
                listener.close()
                return
            try:
                async with asyncio.timeout(HELLO_TIMEOUT_SEC):
                    connection = await listener.accept(None)
                session = RunnerSession(await SocketTransport.over(connection, None, container_id))
                await session.open(HELLO_TIMEOUT_SEC)
            except Exception as exc:  # the sandbox's own process: anything it does is said, not raised
                log.info(
                    "the runner %s's sandbox started did not connect (%s): an exec opens it", env_id, exc
                )
                return
            finally:
                listener.close()
            session.on_lost = self._forget
            self._sessions[env_id] = session

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
        """At teardown: close the environment's session, forget it, remove its link dir."""
        await self._close_session(env_id)
        self._exec_only.discard(env_id)
        if self.link_dir is not None:
            await asyncio.to_thread(runner_link.remove, self.link_dir, env_id)

    async def _close_session(self, env_id: str) -> None:
        self._unavailable.pop(env_id, None)
        self._locks.pop(env_id, None)
        if (session := self._sessions.pop(env_id, None)) is not None:
            await session.close()

    async def close(self) -> None:
        """At the worker's end: its sessions close (their runners kill what they ran and exit);
        the environments and their link dirs stay, for the next worker."""
        for task in list(self._warming):
            task.cancel()
        for env_id in list(self._sessions):
            await self._close_session(env_id)
