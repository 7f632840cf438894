"""Job names, payloads and results exchanged through arq, serialized with msgpack.

msgpack rather than arq's default pickle: whoever can write to Redis must not be able to run
code in the workers or the API. Payloads are therefore plain dicts, and job functions catch
their own errors and return them as data (`JobResult`).
"""

from typing import Any, NotRequired, TypedDict, cast

import msgpack

from taskenv.shared.errors import TaskenvError
from taskenv.shared.models import EXEC_TIMEOUT_MAX_SEC

# arq's own timeout only guards against a hung job: commands end at their own deadline.
JOB_TIMEOUT_SEC = EXEC_TIMEOUT_MAX_SEC + 60

EXECUTE = "execute"
PROVISION = "provision"
TEARDOWN = "teardown"
LOGS = "logs"
# POST …/verify (worker/verify.py).
VERIFY = "verify"


class ExecJob(TypedDict):
    env_id: str
    command: str
    timeout_sec: int
    # Wall-clock instant (epoch seconds) at which the command must be dead.
    deadline_at: float
    user: str
    workdir: str
    output_limit: int
    # With an Idempotency-Key: the record that keeps the answer for retries (shared/idempotency.py).
    idempotency: NotRequired[str]
    # The sets of running commands it joined when admitted (shared/commands.py), which its
    # answer removes it from. The field keeps its first name: jobs queued by an older API.
    slots: NotRequired[list[str]]
    # Variables the command runs with, on top of the container's (the environment's template
    # variables, secrets, models: worker/command_env.py). Set by the worker, never by the API:
    # they are not carried through Redis in the clear.
    env: NotRequired[dict[str, str]]


class EnvJob(TypedDict):
    """Payload of the jobs that act on a whole environment (provision, teardown, logs)."""

    env_id: str


class VerifyJob(TypedDict):
    """Check an environment against its task's verification (shared/verification.py)."""

    env_id: str
    # The task's `verification:` as stored with its version (TaskSource.verification).
    verification: dict[str, Any]
    # Wall-clock instant (epoch seconds) at which the check's command must be dead.
    deadline_at: float
    user: str
    workdir: str


class JobResult(TypedDict):
    """Either `value` (the job's answer) or `error` (a `TaskenvError` in wire form)."""

    job_id: str
    value: NotRequired[dict[str, Any]]
    error: NotRequired[dict[str, Any]]


def ok(job_id: str, value: dict[str, Any]) -> JobResult:
    return {"job_id": job_id, "value": value}


def failed(job_id: str, error: TaskenvError) -> JobResult:
    return {"job_id": job_id, "error": error.to_wire()}


def unwrap(result: JobResult) -> dict[str, Any]:
    """The job's answer, or raise the error it carried."""
    if "error" in result:
        raise TaskenvError.from_wire(result["error"])
    return result.get("value", {})


def serialize(obj: Any) -> bytes:
    """Raises on what msgpack cannot carry (an int past 64 bits, an unknown type): a job's
    answer is therefore encoded inside the job (worker/jobs.py), where a failure becomes an
    error answer, before arq's end hook and result store see it."""
    return cast(bytes, msgpack.packb(obj, use_bin_type=True))


def deserialize(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)
