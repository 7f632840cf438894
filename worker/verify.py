"""The `verify` job: an environment checked against its task's verification, on its host.

The check's command (shared/verification.py: a bounded read of the flag file, or the staged
script) runs in the sandbox as the environment's commands do (worker/execute.py, through its
runner session when there is one), as the task's user; whatever the sandbox answers is judged
there, never trusted: a check that runs out of time fails, it does not error.
"""

import time
from typing import Any

import aiodocker

from taskenv.shared import verification
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.jobs import ExecJob, VerifyJob
from taskenv.worker import context
from taskenv.worker.execute import run_command
from taskenv.worker.job_functions import Ctx, explained, job
from taskenv.worker.metrics import DOCKER_SECONDS
from taskenv.worker.runner_sessions import RunnerPool


@job
async def verify(ctx: Ctx, payload: VerifyJob) -> dict[str, Any]:
    worker = context.of(ctx)
    env = await worker.variables.of(payload["env_id"]) if worker.variables is not None else None
    try:
        return await check(worker.docker, payload, worker.runners, env)
    except TaskenvError as exc:
        if exc.type != ErrorType.BAD_GATEWAY:
            raise
        # As for a command: a container gone under the check fails its environment.
        raise await explained(worker, payload["env_id"], exc) from None


async def check(
    docker: aiodocker.Docker,
    payload: VerifyJob,
    runners: RunnerPool | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The answer of POST …/verify: `{passed, method, detail, output}`. `env`: the variables the
    environment's commands run with (worker/command_env.py)."""
    planned = verification.parse(payload["verification"])
    if payload["deadline_at"] <= time.time():
        raise TaskenvError(ErrorType.TIMEOUT, "Verification not started: its deadline passed in the queue")
    command = _command(payload, planned, env)
    try:
        with DOCKER_SECONDS.labels("exec").time():
            ran = await run_command(docker, command, runners)
    except TaskenvError as exc:
        if exc.type != ErrorType.TIMEOUT:
            raise
        verdict, output = verification.timed_out(planned), str(exc.extra.get("output", ""))
    else:
        output = str(ran.get("output", ""))
        verdict = verification.judge(planned, _exit_code(ran.get("exit_code")), output)
    return {
        "passed": verdict.passed,
        "method": planned.method.value,
        "detail": verdict.detail,
        "output": verification.bounded_output(planned, output),
    }


def _command(payload: VerifyJob, planned: verification.Check, env: dict[str, str] | None) -> ExecJob:
    command = ExecJob(
        env_id=payload["env_id"],
        command=planned.command,
        timeout_sec=planned.timeout_sec,
        deadline_at=min(payload["deadline_at"], time.time() + planned.timeout_sec),
        user=payload["user"],
        workdir=payload["workdir"],
        output_limit=planned.output_limit,
    )
    if env:
        command["env"] = env
    return command


def _exit_code(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
