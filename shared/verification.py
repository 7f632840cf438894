"""A task's verification (task.yaml `verification:`, as stored with its version): what checking
an environment reads or runs in its sandbox, how the result is judged, and the shape of it that
the SDK's `training/env_rollouts.verify_env_state` consumes.

Pure: worker/verify.py runs the command a `Check` names and judges what came back here; the API
refuses what this deployment cannot verify before any job is sent.

- `flag`: the file at `path` (relative to the sandbox's workdir, as the SDK's own `cat` reads
  it) is read, at most `FLAG_MAX_BYTES`, and compared after stripping, with the plaintext
  `value` or the digest `hash` (`alg:hex`, bare hex = sha256), in constant time.
- `script`: the task's script, staged read-only at `TASK_DIR`, runs in the sandbox (`where:
  agent` too: the sandbox is the agent's) within its `timeout`; exit 0 passes.
- judge methods need an LLM judge, which this deployment does not run: refused (the SDK runs
  judges itself from `task_verification`).
"""

import hashlib
import hmac
import posixpath
import shlex
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.models import EXEC_TIMEOUT_MAX_SEC
from taskenv.shared.task_manifest import Verification, VerificationMethod, parse_flag_hash

# Where the task directory is staged in the sandbox (worker/task_volume.py).
TASK_DIR = "/home/user/task"
# Reading a file is quick; a FIFO or a slow filesystem must not hold the check (the SDK's default).
FLAG_READ_TIMEOUT_SEC = 10
FLAG_MAX_BYTES = 64 * 1024
# What an answer's `output` carries at most: a flag's head, a script's tail.
OUTPUT_MAX_CHARS = 4096
SCRIPT_OUTPUT_READ_BYTES = 256 * 1024
# The only digest the SDK's `verify_env_state` computes.
SDK_HASH = "sha256"

_JUDGE_METHODS = {
    VerificationMethod.OUTCOME_JUDGE,
    VerificationMethod.SCRIPT_AND_JUDGE,
    VerificationMethod.FLAG_AND_JUDGE,
}


class Outcome(StrEnum):
    """Why a verification passed or failed: the first word of its `detail`."""

    MATCHED = "matched"
    MISMATCH = "mismatch"
    FLAG_UNREADABLE = "flag_unreadable"
    FLAG_TOO_LARGE = "flag_too_large"
    SCRIPT_PASSED = "script_passed"
    SCRIPT_FAILED = "script_failed"
    SCRIPT_TIMEOUT = "script_timeout"


class Verdict(BaseModel):
    model_config = ConfigDict(frozen=True)

    passed: bool
    outcome: Outcome
    why: str

    @property
    def detail(self) -> str:
        return f"{self.outcome}: {self.why}"


class FlagCheck(BaseModel):
    """Read `path`; compare with `value`, or with the digest `hex` by `algorithm`."""

    model_config = ConfigDict(frozen=True)

    path: str
    value: str | None = None
    algorithm: str = SDK_HASH
    hex: str | None = None
    timeout_sec: int = FLAG_READ_TIMEOUT_SEC

    @property
    def method(self) -> VerificationMethod:
        return VerificationMethod.FLAG

    @property
    def command(self) -> str:
        # One byte past the bound tells a file too large from one exactly at it; `head` also
        # ends on an endless file (/dev/zero) that `cat` would read until the deadline.
        return f"head -c {FLAG_MAX_BYTES + 1} -- {shlex.quote(self.path)}"

    @property
    def output_limit(self) -> int:
        return FLAG_MAX_BYTES + 1 + 1024  # room for the shell's own error line


class ScriptCheck(BaseModel):
    """Run the task's `script` (a path inside the task directory) within `timeout_sec`."""

    model_config = ConfigDict(frozen=True)

    script: str
    timeout_sec: int

    @property
    def method(self) -> VerificationMethod:
        return VerificationMethod.SCRIPT

    @property
    def command(self) -> str:
        return script_command(self.script)

    @property
    def output_limit(self) -> int:
        # Read on past what is answered: the answer keeps the output's tail, where a verifier
        # says why it failed.
        return SCRIPT_OUTPUT_READ_BYTES


Check = FlagCheck | ScriptCheck


def script_command(script: str) -> str:
    """The command that runs a task's script as staged (it need not be executable there)."""
    inside = posixpath.normpath("/" + script.replace("\\", "/")).lstrip("/")
    return f"sh {shlex.quote(f'{TASK_DIR}/{inside}')}"


def no_verification(task: str) -> TaskenvError:
    return TaskenvError(ErrorType.CONFLICT, f"Task {task} declares no verification: nothing to check")


def unsupported(method: VerificationMethod) -> TaskenvError:
    return TaskenvError(
        ErrorType.VALIDATION,
        f"unsupported: verification method {method.value!r} needs an LLM judge, which this deployment"
        " does not run (the SDK's verify_env_state runs judges itself from task_verification)",
    )


def parse(verification: Mapping[str, Any] | None, task: str = "of this environment") -> Check:
    """The check a stored verification asks for; `TaskenvError` (409 none or invalid, 422 a judge
    method) for what cannot be checked here."""
    if not verification:
        raise no_verification(task)
    try:
        manifest = Verification.model_validate(dict(verification))
        method = manifest.effective_method()
    except (ValidationError, ValueError) as exc:
        # Validated at push: only a record from another version of taskenv could get here.
        raise TaskenvError(ErrorType.CONFLICT, f"Task {task} has an invalid verification: {exc}") from None
    if method in _JUDGE_METHODS:
        raise unsupported(method)
    if method is VerificationMethod.SCRIPT and manifest.script:
        return ScriptCheck(script=manifest.script, timeout_sec=script_timeout(manifest.timeout))
    if method is VerificationMethod.FLAG and manifest.path:
        return _flag_check(manifest, manifest.path)
    raise TaskenvError(ErrorType.CONFLICT, f"Task {task} has an incomplete {method.value} verification")


def script_timeout(timeout: int) -> int:
    """task.yaml's timeout within what any command may take here."""
    return min(max(timeout, 1), EXEC_TIMEOUT_MAX_SEC)


def _flag_check(manifest: Verification, path: str) -> FlagCheck:
    if manifest.hash:
        algorithm, hex_digest = parse_flag_hash(manifest.hash)
        return FlagCheck(path=path, algorithm=algorithm, hex=hex_digest)
    return FlagCheck(path=path, value=(manifest.value or "").strip())


def check_flag(content: str, verification: Mapping[str, Any] | FlagCheck) -> Verdict:
    """`content` (a flag file's, as read) against the task's flag; never raises for any content."""
    flag = verification if isinstance(verification, FlagCheck) else parse(verification)
    if not isinstance(flag, FlagCheck):
        raise TypeError(f"not a flag verification: {flag.method.value}")
    actual = content.strip().encode("utf-8", "surrogatepass")
    if flag.hex is not None:
        found = hashlib.new(flag.algorithm, actual).hexdigest()
        matched = hmac.compare_digest(found.encode(), flag.hex.encode())
        kind = f"its {flag.algorithm} digest"
    else:
        matched = hmac.compare_digest(actual, (flag.value or "").encode("utf-8", "surrogatepass"))
        kind = "its value"
    if matched:
        return Verdict(passed=True, outcome=Outcome.MATCHED, why=f"the flag at {flag.path} matches {kind}")
    return Verdict(
        passed=False, outcome=Outcome.MISMATCH, why=f"the flag at {flag.path} does not match {kind}"
    )


def judge(check: Check, exit_code: int, output: str) -> Verdict:
    """The verdict on what the check's command answered (its exit code and combined output)."""
    if isinstance(check, ScriptCheck):
        if exit_code == 0:
            return Verdict(passed=True, outcome=Outcome.SCRIPT_PASSED, why=f"{check.script} exited 0")
        return Verdict(passed=False, outcome=Outcome.SCRIPT_FAILED, why=f"{check.script} exited {exit_code}")
    if exit_code != 0:
        return Verdict(
            passed=False,
            outcome=Outcome.FLAG_UNREADABLE,
            why=f"reading {check.path} failed (exit {exit_code}): no flag was written there",
        )
    if len(output.encode("utf-8", "surrogatepass")) > FLAG_MAX_BYTES:
        return Verdict(
            passed=False,
            outcome=Outcome.FLAG_TOO_LARGE,
            why=f"the file at {check.path} is larger than {FLAG_MAX_BYTES} bytes",
        )
    return check_flag(output, check)


def timed_out(check: Check) -> Verdict:
    if isinstance(check, ScriptCheck):
        return Verdict(
            passed=False,
            outcome=Outcome.SCRIPT_TIMEOUT,
            why=f"{check.script} did not finish within {check.timeout_sec} s; its processes were killed",
        )
    return Verdict(
        passed=False,
        outcome=Outcome.FLAG_UNREADABLE,
        why=f"reading {check.path} did not finish within {check.timeout_sec} s",
    )


def bounded_output(check: Check, output: str) -> str:
    """A flag's head or a script's tail, at most `OUTPUT_MAX_CHARS`."""
    if len(output) <= OUTPUT_MAX_CHARS:
        return output
    if isinstance(check, ScriptCheck):
        return "[taskenv: output cut to its tail]\n" + output[-OUTPUT_MAX_CHARS:]
    return output[:OUTPUT_MAX_CHARS] + "\n[taskenv: output cut to its head]\n"


def task_verification(verification: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The shape `verify_env_state` of the SDK consumes (`env.task_verification`), or None.

    A flag hashed with sha256 carries `hash: "sha256:<hex>"` (lower case: the SDK compares the
    text); another algorithm keeps its own `alg:hex`, which the SDK, computing sha256 only,
    never matches: it fails closed, never passes wrongly (POST …/verify checks every algorithm).
    Judge methods (script_and_judge and flag_and_judge too) carry the judge's fields under
    `llm_judge`, which the SDK runs itself.
    """
    if not verification:
        return None
    try:
        manifest = Verification.model_validate(dict(verification))
        method = manifest.effective_method()
    except (ValidationError, ValueError):
        return None
    if method in _JUDGE_METHODS and manifest.judge is not None:
        return {"method": "llm_judge", **manifest.judge.model_dump(mode="json", exclude_none=True)}
    try:
        check = parse(verification)
    except TaskenvError:
        return None
    if isinstance(check, ScriptCheck):
        return {
            "method": "env_script",
            "script_path": check.command,
            "expected_exit_code": 0,
            "timeout_sec": check.timeout_sec,
        }
    shape: dict[str, Any] = {"method": "env_flag", "flag_path": check.path, "timeout_sec": check.timeout_sec}
    if check.hex is not None:
        shape["hash"] = f"{check.algorithm}:{check.hex}"
    else:
        shape["expected"] = check.value
    return shape
