"""Running one command through its environment's runner, with the answers `docker exec` gives
(worker/execute.py): the exit code and the capped output, 504 with the partial output at the
deadline, 502 when the container is gone or the runner cannot be trusted any more.

The deadline is the worker's: the session kills the command at it (a kill frame); if the runner
does not confirm, the runner and everything under it are killed from outside, as a `docker
exec` is killed without a runner, and the session, which can no longer be trusted, is closed
(the next command opens a new one).
"""

import asyncio
import logging
import time
from typing import Any

import aiodocker

from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.jobs import ExecJob
from taskenv.shared.store import container_name
from taskenv.worker.containers import sweep_user_processes, why_stopped
from taskenv.worker.docker import CONTAINER_GONE, docker_errors
from taskenv.worker.kill import kill_tree
from taskenv.worker.output import CappedOutput
from taskenv.worker.runner_client import CommandTimedOut, RunnerLost, RunnerRefused, RunnerSession
from taskenv.worker.runner_link import SocketTransport
from taskenv.worker.runner_sessions import ExecStreamTransport, RunnerPool

log = logging.getLogger("taskenv.worker")

# The detail of a 502 whose runner broke off (killed by a root sandbox, or lying).
RUNNER_LOST = "runner_lost"
# As in worker/execute.py: a killed container's processes die before its state says so.
CONTAINER_END_SETTLE_SEC = 0.5


async def run_through_runner(
    docker: aiodocker.Docker, pool: RunnerPool, job: ExecJob
) -> dict[str, Any] | None:
    """The command's answer through its environment's runner, or None when the environment has
    no runner that answers (the caller then uses `docker exec`)."""
    with docker_errors("execute"):
        session = await pool.session(job["env_id"])
    if session is None:
        return None
    return await run_in_runner(docker, session, job)


async def run_in_runner(docker: aiodocker.Docker, session: RunnerSession, job: ExecJob) -> dict[str, Any]:
    output = CappedOutput(job["output_limit"])
    try:
        ended = await session.run(
            job["command"],
            workdir=job["workdir"],
            user=job["user"],
            output=output,
            within_sec=job["deadline_at"] - time.time(),
            env=job.get("env"),
        )
    except CommandTimedOut as exc:
        if not exc.killed:
            await _kill_from_outside(docker, session, job)
        raise TaskenvError(
            ErrorType.TIMEOUT,
            f"Command did not finish within {job['timeout_sec']} s; its processes were killed",
            extra={"output": output.text()},
        ) from None
    except RunnerRefused as exc:
        raise TaskenvError(ErrorType.BAD_GATEWAY, f"The sandbox could not start the command: {exc}") from None
    except RunnerLost as exc:
        raise await _lost(docker, job, output, str(exc)) from None
    return {"exit_code": ended.status, "output": output.text()}


async def _lost(docker: aiodocker.Docker, job: ExecJob, output: CappedOutput, why: str) -> TaskenvError:
    """The session broke mid-command: the container's end (as with docker exec), or the runner's."""
    try:
        gone = await why_stopped(docker, container_name(job["env_id"]), CONTAINER_END_SETTLE_SEC)
    except (aiodocker.DockerError, OSError) as exc:
        gone = None
        log.warning("could not inspect %s after its runner was lost: %s", job["env_id"], exc)
    detail = f"{CONTAINER_GONE}: {gone}" if gone else f"{RUNNER_LOST}: {why}"
    return TaskenvError(ErrorType.BAD_GATEWAY, detail, extra={"output": output.text()})


async def _kill_from_outside(docker: aiodocker.Docker, session: RunnerSession, job: ExecJob) -> None:
    """The runner did not confirm the kill: kill it and everything under it (its commands, and
    their orphans, which it adopted) from the host's PID namespace, as a `docker exec` is killed
    (worker/kill.py); a worker that cannot see the host's processes sweeps the user's processes
    from inside instead. The session is dropped first, as it cannot be trusted any more: a
    command sent to it while the kill is under way (the caller may have had its 504 from the
    API already) would be lost with it; it goes to a new session instead. The exec, which the
    kill needs, outlives its stream."""
    await session.close()
    try:
        killed = await _kill_runner_tree(session)
        if killed == 0:
            await sweep_user_processes(docker, container_name(job["env_id"]), job["user"])
    except Exception as exc:
        log.warning("could not kill the commands of %s's silent runner: %s", job["env_id"], exc)


async def _kill_runner_tree(session: RunnerSession) -> int:
    pid, container_id = await _runner_pid(session.transport)
    return await asyncio.to_thread(kill_tree, pid, container_id) if pid and container_id else 0


async def _runner_pid(transport: object) -> tuple[int, str]:
    """The runner's host pid and its container ((0, "") when unknown or no longer running)."""
    if isinstance(transport, SocketTransport) and transport.exe is None:
        # The runner its sandbox started: its pid as the kernel gave it at its connection.
        return transport.pid, transport.container_id
    if not isinstance(transport, ExecStreamTransport | SocketTransport) or transport.exe is None:
        return 0, ""
    info = await transport.exe.inspect()
    return (int(info.get("Pid") or 0), str(info.get("ContainerID", ""))) if info.get("Running") else (0, "")
