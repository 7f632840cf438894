"""One command or one task script run in an environment's sandbox by the worker itself (provision,
teardown, verification), through the same backend as an agent's commands (the runner, or `docker
exec`: worker/execute.py), so deadlines, the output cap and the tree kill apply alike. The
command's own failures (non-zero exit, timeout, a sandbox that cannot run it) come back as a
typed `RunResult`, never as an exception.

A task script is staged read-only at /home/user/task (worker/task_volume.py), often without its
executable bit: it is run through its shebang's interpreter when the sandbox has it, else `sh`
(the built-in sandbox is busybox: no bash, and Dreadnode's `#!/bin/bash` + `set -euo pipefail`
templates run under its ash).

`provision.sh` must print exactly one JSON object on stdout; what it writes on stderr is its
log, shown when it fails. Both backends hand back one merged stream, so the two are separated
by running two commands: the script with its stdout sent to a private file under /tmp and its
stderr as the command's output, then one that prints that file (bounded) and removes it. A
delimiter printed between the two streams would do with one command, but the script (or a
background child writing late) could print it too or interleave with it, and a large stderr
would push the JSON past the output cap; a file keeps the JSON whole and apart.
"""

import json
import math
import re
import secrets
import shlex
import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.jobs import ExecJob
from taskenv.shared.task_variables import coerce
from taskenv.worker.context import WorkerContext
from taskenv.worker.execute import run_command
from taskenv.worker.task_volume import TASK_DIR

__all__ = ["TASK_DIR", "ProvisionOutputInvalid", "RunOutcome", "RunResult", "ScriptFailed"]

PROVISION_MAX_BYTES = 64 * 1024
PROVISION_MAX_KEYS = 256
VARIABLE_NAME = re.compile(r"\w+")
# Reading the provision's stdout back: a `head` of a small file.
READ_BACK_TIMEOUT_SEC = 10.0


class RunOutcome(StrEnum):
    EXITED = "exited"  # it ran to its end: see the exit code
    TIMED_OUT = "timed_out"  # killed at its deadline
    FAILED = "failed"  # it could not be run to its end (the sandbox gone, the runner lost, …)


class RunResult(BaseModel):
    outcome: RunOutcome
    exit_code: int | None = None
    output: str = ""
    detail: str = ""

    @property
    def succeeded(self) -> bool:
        return self.outcome is RunOutcome.EXITED and self.exit_code == 0


class ProvisionOutputInvalid(ValueError):
    """The provision script's stdout is not one bounded JSON object of scalar values."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ScriptFailed(Exception):
    """A script the environment depends on failed: why, and its output (its stderr, for provision)."""

    def __init__(self, reason: str, output: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.output = output


async def run_in_environment(
    worker: WorkerContext,
    env_id: str,
    command: str,
    *,
    timeout_sec: float,
    env: dict[str, str],
    user: str,
    workdir: str,
    output_limit: int,
) -> RunResult:
    """`sh -c command` in the sandbox, as `user` in `workdir` with `env` over the container's."""
    job: ExecJob = {
        "env_id": env_id,
        "command": command,
        "timeout_sec": max(1, math.ceil(timeout_sec)),
        "deadline_at": time.time() + timeout_sec,
        "user": user,
        "workdir": workdir,
        "output_limit": output_limit,
        "env": env,
    }
    try:
        answer = await run_command(worker.docker, job, worker.runners)
    except TaskenvError as exc:
        output = str(exc.extra.get("output") or "")
        if exc.type is ErrorType.TIMEOUT:
            return RunResult(outcome=RunOutcome.TIMED_OUT, output=output, detail=exc.detail)
        return RunResult(outcome=RunOutcome.FAILED, output=output, detail=exc.detail)
    except ValueError as exc:  # variables no process can be given (the message names, never shows)
        return RunResult(outcome=RunOutcome.FAILED, detail=f"the command cannot be started: {exc}")
    return RunResult(outcome=RunOutcome.EXITED, exit_code=_int(answer.get("exit_code")), output=_text(answer))


def script_command(path: str) -> str:
    """The command that runs the script at `path` (in the sandbox) through its shebang's
    interpreter when the sandbox has it (`#!/usr/bin/env X` looks for X), else through `sh`.
    The script need not be executable: the interpreter is given its path."""
    return (
        f"__taskenv_script={shlex.quote(path)}; "
        '[ -r "$__taskenv_script" ] || { echo "taskenv: cannot read $__taskenv_script" >&2; exit 127; }; '
        '__taskenv_line=; IFS= read -r __taskenv_line < "$__taskenv_script"; '
        "__taskenv_line=${__taskenv_line%\"$(printf '\\r')\"}; "
        'case "$__taskenv_line" in "#!"*) '
        "set -f; set -- ${__taskenv_line#??}; set +f; "
        'if [ "${1##*/}" = env ] && [ $# -ge 2 ]; then __taskenv_i=$2; else __taskenv_i=${1:-}; fi; '
        'if [ -n "$__taskenv_i" ] && command -v "$__taskenv_i" >/dev/null 2>&1; '
        'then exec "$@" "$__taskenv_script"; fi;; '
        "esac; "
        'exec sh "$__taskenv_script"'
    )


async def run_script(
    worker: WorkerContext,
    env_id: str,
    path: str,
    *,
    timeout_sec: float,
    env: dict[str, str],
    user: str,
    workdir: str = TASK_DIR,
    output_limit: int | None = None,
) -> RunResult:
    """The task script at `path` run to its end (or its deadline); never raises for its failures."""
    limit = output_limit if output_limit is not None else worker.settings.output_limit_bytes
    return await run_in_environment(
        worker, env_id, script_command(path), timeout_sec=timeout_sec, env=env, user=user, workdir=workdir,
        output_limit=limit,
    )  # fmt: skip


async def run_provision(
    worker: WorkerContext,
    env_id: str,
    path: str,
    *,
    timeout_sec: float,
    env: dict[str, str],
    user: str,
    workdir: str = TASK_DIR,
) -> dict[str, str]:
    """provision.sh's JSON object as template variables. Raises ScriptFailed when it exits
    non-zero, times out, cannot run, or prints anything but one JSON object on stdout."""
    # In the sandbox's own /tmp (never the host's), under a name the script cannot foresee.
    stdout_file = shlex.quote(f"/tmp/.taskenv-provision-{secrets.token_hex(8)}")  # noqa: S108
    # The file is made private before the script writes into it; a shell whose redirection fails exits.
    command = f"(umask 077; : > {stdout_file}) || exit 126; exec > {stdout_file}; {script_command(path)}"
    ran = await run_in_environment(
        worker, env_id, command, timeout_sec=timeout_sec, env=env, user=user, workdir=workdir,
        output_limit=worker.settings.output_limit_bytes,
    )  # fmt: skip
    if problem := _problem(ran, timeout_sec):
        await run_in_environment(
            worker, env_id, f"rm -f {stdout_file}", timeout_sec=READ_BACK_TIMEOUT_SEC, env={}, user=user,
            workdir="/", output_limit=1024,
        )  # fmt: skip
        raise ScriptFailed(problem, ran.output)
    most = PROVISION_MAX_BYTES + 1  # one byte past the bound: too long is told from just long enough
    read = await run_in_environment(
        worker, env_id, f"head -c {most} {stdout_file}; s=$?; rm -f {stdout_file}; exit $s",
        timeout_sec=READ_BACK_TIMEOUT_SEC, env={}, user=user, workdir="/", output_limit=most,
    )  # fmt: skip
    if not read.succeeded:
        reason = read.detail or read.output.strip()[:200] or f"status {read.exit_code}"
        raise ScriptFailed(f"its stdout could not be read back: {reason}", ran.output)
    try:
        return parse_provision_output(read.output)
    except ProvisionOutputInvalid as exc:
        raise ScriptFailed(f"its stdout is not one JSON object: {exc.reason}", ran.output) from None


def _problem(ran: RunResult, timeout_sec: float) -> str | None:
    if ran.outcome is RunOutcome.TIMED_OUT:
        return f"did not finish within {timeout_sec:g} s"
    if ran.outcome is RunOutcome.FAILED:
        return f"could not run: {ran.detail}"
    if ran.exit_code != 0:
        return f"exited with status {ran.exit_code}"
    return None


def parse_provision_output(stdout: str) -> dict[str, str]:
    """Exactly one JSON object (whitespace around it allowed) of at most PROVISION_MAX_KEYS keys,
    each a template variable name (`\\w+`), each value a scalar: strings as they are, booleans
    `true`/`false`, numbers as written by `str`, null left out (as the SDK's templating does).
    Raises ProvisionOutputInvalid with the reason (never quoting the values)."""
    size = len(stdout.encode("utf-8", "surrogatepass"))
    if size > PROVISION_MAX_BYTES:
        raise ProvisionOutputInvalid(f"over {PROVISION_MAX_BYTES} bytes")
    if not stdout.strip():
        raise ProvisionOutputInvalid("empty")
    try:
        value = json.loads(stdout, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except ProvisionOutputInvalid:
        raise
    except ValueError as exc:  # JSONDecodeError; an integer past Python's digit limit
        raise ProvisionOutputInvalid(_json_problem(exc)) from None
    except RecursionError:
        raise ProvisionOutputInvalid("nested too deeply") from None
    if not isinstance(value, dict):
        raise ProvisionOutputInvalid(f"a JSON {_kind(value)}, not an object")
    if len(value) > PROVISION_MAX_KEYS:
        raise ProvisionOutputInvalid(f"{len(value)} keys, over {PROVISION_MAX_KEYS}")
    return {key: text for key, item in value.items() if (text := _variable(key, item)) is not None}


def _variable(key: str, value: Any) -> str | None:
    if not VARIABLE_NAME.fullmatch(key):
        raise ProvisionOutputInvalid(f"key {key[:64]!r} is not a variable name (letters, digits, _)")
    if isinstance(value, dict | list):
        raise ProvisionOutputInvalid(f"the value of {key!r} is a JSON {_kind(value)}, not a scalar")
    text = coerce(value)
    if text is None:
        return None
    if "\0" in text:
        raise ProvisionOutputInvalid(f"the value of {key!r} holds a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProvisionOutputInvalid(f"the value of {key!r} is not valid Unicode text") from None
    return text


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ProvisionOutputInvalid(f"key {key[:64]!r} given twice")
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise ProvisionOutputInvalid(f"{name} is not JSON")


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        if exc.msg == "Extra data":
            return f"more than one JSON value (extra data at line {exc.lineno} column {exc.colno})"
        return f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return f"not valid JSON: {exc}"


def _kind(value: Any) -> str:
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(answer: dict[str, Any]) -> str:
    output = answer.get("output")
    return output if isinstance(output, str) else ""
