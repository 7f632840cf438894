"""Running one command in a sandbox: combined output in write order, a byte cap, a hard deadline.

The command runs as `sh -c CMD 2>&1` inside a wrapper shell that reports the exit status on the
exec's otherwise unused stderr. Output then arrives as one stream in the exact order written,
and the status arrives in-band the moment the command exits, even when a background child
(`sleep 100 &`) keeps the output pipe open: no polling, no extra inspect call.
"""

import asyncio
import time
from contextlib import suppress
from typing import Any

import aiodocker
from aiodocker.execs import Exec
from aiodocker.stream import Stream

from shared.errors import ErrorType, TaskenvError
from shared.jobs import ExecJob
from worker.docker import docker_errors
from worker.kill import kill_tree
from worker.output import CappedOutput

WRAPPER = 'sh -c "$1" 2>&1 </dev/null; echo "$?" >&2'
# After the exit report, how long output already written may still trail in.
DRAIN_SEC = 0.05
STDOUT = 1


async def run_command(docker: aiodocker.Docker, job: ExecJob) -> dict[str, Any]:
    output = CappedOutput(job["output_limit"])
    container = docker.containers.container(job["container"])
    with docker_errors("execute"):
        exe = await container.exec(
            ["/bin/sh", "-c", WRAPPER, "sh", job["command"]],
            stdout=True,
            stderr=True,
            stdin=False,
            user=job["user"],
            workdir=job["workdir"],
        )
    stream = exe.start(detach=False)
    try:
        try:
            async with asyncio.timeout(max(job["deadline_at"] - time.time(), 0.0)):
                with docker_errors("execute"):
                    exit_code = await _read_until_exit(stream, output)
        except TimeoutError:
            with docker_errors("kill at deadline"):
                await _kill(docker, exe, job)
            raise TaskenvError(
                ErrorType.TIMEOUT,
                f"Command did not finish within {job['timeout_sec']} s; its processes were killed",
                extra={"output": output.text()},
            ) from None
    finally:
        await stream.close()
    if exit_code is None:
        # The wrapper itself died (killed from outside, out of memory): ask the engine.
        with docker_errors("execute"):
            exit_code = int((await exe.inspect())["ExitCode"] or 0)
    return {"exit_code": exit_code, "output": output.text()}


async def _read_until_exit(stream: Stream, output: CappedOutput) -> int | None:
    report = b""
    while (message := await stream.read_out()) is not None:
        if message.stream == STDOUT:
            output.add(message.data)
            continue
        report += message.data
        if report.endswith(b"\n"):
            break
    else:
        return None
    with suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SEC):
            while (message := await stream.read_out()) is not None:
                if message.stream == STDOUT:
                    output.add(message.data)
    try:
        return int(report.splitlines()[-1])
    except ValueError:
        return None


async def _kill(docker: aiodocker.Docker, exe: Exec, job: ExecJob) -> None:
    info = await exe.inspect()
    pid, container_id = int(info.get("Pid") or 0), str(info.get("ContainerID", ""))
    killed = await asyncio.to_thread(kill_tree, pid, container_id) if pid else 0
    if killed == 0 and info.get("Running"):
        # This worker cannot see the engine's processes: sweep from inside the sandbox.
        container = docker.containers.container(job["container"])
        sweep = await container.exec(["kill", "-KILL", "-1"], user=job["user"], stdout=False, stderr=False)
        await sweep.start(detach=True)
