"""Running one command in a sandbox: combined output in write order, a byte cap, a hard deadline.

The exec is one `sh` that sends its stderr to stdout, keeps a copy of stdout as fd 9, and
`eval`s the command: output arrives as one stream in the exact order written, and an EXIT trap
appends an exit report (`worker.marker`) to that stream the moment the command ends. Reading
stops at the report: no waiting for the pipe to close (a background child such as
`sleep 100 &` may never close it), nothing polls, no extra shell is forked and no inspect call
is needed. Only when the report is missing (the command `exec`s, replaces the trap or fd 9, or
is killed) does the worker ask the engine for the exit code. A command can forge a report on
purpose; it only misleads its own caller, and only with a status it could have exited with
(worker/marker.py). Should reading the stream fail for any reason, the command's processes
are killed, as at the deadline, before the error is answered.
"""

import asyncio
import logging
import time
from typing import Any

import aiodocker
from aiodocker.execs import Exec
from aiodocker.stream import Stream

from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.jobs import ExecJob
from taskenv.shared.store import container_name
from taskenv.worker.containers import sweep_user_processes, why_stopped
from taskenv.worker.docker import CONTAINER_GONE, docker_errors
from taskenv.worker.exit_report import ExitReport, new_nonce
from taskenv.worker.kill import kill_tree
from taskenv.worker.metrics import DOCKER_SECONDS
from taskenv.worker.output import CappedOutput
from taskenv.worker.runner_execute import run_through_runner
from taskenv.worker.runner_protocol import encode_env
from taskenv.worker.runner_sessions import RunnerPool

log = logging.getLogger("taskenv.worker")

# $1 is the command, $2 the report's nonce; both are cleared from the positional parameters
# before the eval. The trap writes only while fd 9 is still the output pipe: a command that
# reuses fd 9 (`exec 9>lockfile`) must never get our report written into its file.
WRAPPER = (
    "exec 9>&1 2>&1 </dev/null; "
    "trap '__taskenv_status=$?; [ -p /proc/self/fd/9 ] && "
    'printf "\\036%s:%s\\n" "$__taskenv_nonce" "$__taskenv_status" >&9\' EXIT; '
    '__taskenv_nonce=$2; __taskenv_command=$1; set --; eval "$__taskenv_command"'
)
STDOUT = 1
# How long a command killed without its exit report waits to tell a killed container (whose
# processes die first, its state a moment later) from a command killed alone (out of memory).
CONTAINER_END_SETTLE_SEC = 0.5


async def run_command(
    docker: aiodocker.Docker, job: ExecJob, runners: RunnerPool | None = None
) -> dict[str, Any]:
    if job["deadline_at"] <= time.time():
        # It waited in the queue past its deadline: the caller has its 504 already.
        raise TaskenvError(
            ErrorType.TIMEOUT,
            f"Command not started: its {job['timeout_sec']} s passed while it waited for a worker",
            extra={"output": ""},
        )
    if runners is not None and (answer := await run_through_runner(docker, runners, job)) is not None:
        return answer
    output = CappedOutput(job["output_limit"])
    nonce = new_nonce()
    container = docker.containers.container(container_name(job["env_id"]))
    with docker_errors("execute"):
        exe = await container.exec(
            ["/bin/sh", "-c", WRAPPER, "sh", job["command"], nonce],
            stdout=True,
            stderr=True,
            stdin=False,
            user=job["user"],
            workdir=job["workdir"],
            environment=_environment(job),
        )
    stream = exe.start(detach=False)
    try:
        try:
            async with asyncio.timeout(max(job["deadline_at"] - time.time(), 0.0)):
                with docker_errors("execute"):
                    exit_code = await _read_until_exit(stream, output, ExitReport(nonce))
        except TimeoutError:
            with docker_errors("kill at deadline"), DOCKER_SECONDS.labels("kill").time():
                await _kill(docker, exe, job)
            raise TaskenvError(
                ErrorType.TIMEOUT,
                f"Command did not finish within {job['timeout_sec']} s; its processes were killed",
                extra={"output": output.text()},
            ) from None
        except asyncio.CancelledError:
            # The job itself is cancelled (arq's own timeout, shutdown): nobody will read on.
            await asyncio.shield(_kill_after_failure(docker, exe, job))
            raise
        except Exception as exc:
            # The stream broke, or handling what came out of it failed: the command must not
            # run on with nobody reading it.
            await _kill_after_failure(docker, exe, job)
            raise _failure(exc) from exc
    finally:
        await stream.close()
    if exit_code is None:
        # No report (the command exec'd or set its own EXIT trap, or was killed, maybe with its
        # whole container): ask the engine.
        with docker_errors("execute"):
            info = await exe.inspect()
            # Killed (137) with all else in its container? Then the container's end follows.
            settle = CONTAINER_END_SETTLE_SEC if info["ExitCode"] in (None, 137) else 0.0
            gone = await why_stopped(docker, container_name(job["env_id"]), settle)
        if gone:
            # The output so far goes with it: a DELETE's 409 hands it to the caller.
            raise TaskenvError(
                ErrorType.BAD_GATEWAY, f"{CONTAINER_GONE}: {gone}", extra={"output": output.text()}
            )
        exit_code = int(info["ExitCode"] or 0)
    return {"exit_code": exit_code, "output": output.text()}


async def _read_until_exit(stream: Stream, output: CappedOutput, report: ExitReport) -> int | None:
    while (message := await stream.read_out()) is not None:
        if message.stream != STDOUT:
            output.add(message.data)  # only the shell's own words before its redirections
            continue
        output.add(report.feed(message.data))
        if report.status is not None:
            return report.status
    output.add(report.rest())
    return None


def _environment(job: ExecJob) -> dict[str, str] | None:
    """The job's variables, over the container's; held to the runner's rules (ValueError), so
    both backends run the same commands."""
    env = job.get("env")
    if not env:
        return None
    encode_env(env)
    return env


def _failure(exc: Exception) -> TaskenvError:
    """The error a command answers when reading it failed: the engine's 502 as it is, anything
    else (a fault of ours) a 500 that says the command was killed."""
    if isinstance(exc, TaskenvError):
        return exc
    log.error("reading a command's output failed; its processes were killed", exc_info=exc)
    return TaskenvError(
        ErrorType.APP, "Internal error while reading the command's output; its processes were killed"
    )


async def _kill_after_failure(docker: aiodocker.Docker, exe: Exec, job: ExecJob) -> None:
    """Kill the command's tree, as at its deadline; a failure to do so is logged, and the
    failure that led here is what the caller hears."""
    try:
        with DOCKER_SECONDS.labels("kill").time():
            await _kill(docker, exe, job)
    except Exception as exc:
        log.warning("could not kill a failed command's processes: %s: %s", type(exc).__name__, exc)


async def _kill(docker: aiodocker.Docker, exe: Exec, job: ExecJob) -> None:
    info = await exe.inspect()
    pid, container_id = int(info.get("Pid") or 0), str(info.get("ContainerID", ""))
    killed = await asyncio.to_thread(kill_tree, pid, container_id) if pid else 0
    if killed == 0 and info.get("Running"):
        # This worker cannot see the engine's processes: sweep from inside the sandbox.
        await sweep_user_processes(docker, container_name(job["env_id"]), job["user"])
