"""What the job functions of one worker process share, as one typed object in arq's ctx.

arq hands each job a dict (its own copy of the worker's `ctx`, plus `job_id`, `enqueue_time`
and `redis`). taskenv keeps everything of its own in that dict under two keys: the process's
`WorkerContext`, built once by the workers' start-up, and the job's `JobAnswer`, written by
the job for arq's end hook, which sends it.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import aiodocker
from redis.asyncio import Redis

from taskenv.shared.settings import Settings
from taskenv.worker.task_files import TaskFilesCache

if TYPE_CHECKING:
    from taskenv.shared.sealing import Sealer
    from taskenv.worker.command_env import CommandEnvironments
    from taskenv.worker.container_events import ContainerEvents
    from taskenv.worker.membership import Membership
    from taskenv.worker.runner_sessions import RunnerPool

_CONTEXT = "taskenv"
_ANSWER = "taskenv_answer"


@dataclass
class WorkerContext:
    settings: Settings
    # The records' client (decoded strings); arq's own client is the job's `ctx["redis"]`.
    records: Redis
    docker: aiodocker.Docker
    # The deployment this worker joined at start (shared/deployment.py): its containers' label.
    deployment: str
    # Set once the process has joined its host (worker/process.py); absent in single jobs' tests.
    membership: "Membership | None" = None
    # The sandboxes' runner sessions (TASKENV_EXEC_BACKEND=runner); None: `docker exec` only.
    runners: "RunnerPool | None" = None
    # TASKENV_SECRETS_KEY's sealer (shared/sealing.py); None when the operator set no key.
    sealer: "Sealer | None" = None
    # The variables environments' commands run with (worker/command_env.py).
    variables: "CommandEnvironments | None" = None
    # Pushed tasks' files, read once per archive (worker/task_files.py).
    task_files: TaskFilesCache = field(default_factory=TaskFilesCache)
    # Wake-ups when this deployment's containers change (worker/container_events.py); None:
    # a provision polls its services' state.
    events: "ContainerEvents | None" = None


@dataclass
class JobAnswer:
    """A job's answer, encoded, and what sending it frees (worker/arq_worker.py `on_job_end`)."""

    reply_to: str | None
    encoded: bytes
    # An execute's Idempotency-Key record: the answer is kept there for retries.
    idempotency: str | None = None
    # An execute's running-command entries (shared/commands.py), removed with the answer.
    commands: list[str] = field(default_factory=list)
    # The job's log line and metric, once the answer has left.
    account: Callable[[], None] | None = None


def install(ctx: dict[str, Any], context: WorkerContext) -> None:
    ctx[_CONTEXT] = context


def of(ctx: dict[str, Any]) -> WorkerContext:
    return cast(WorkerContext, ctx[_CONTEXT])


def answer_of(ctx: dict[str, Any]) -> JobAnswer | None:
    return cast(JobAnswer | None, ctx.get(_ANSWER))


def set_answer(ctx: dict[str, Any], answer: JobAnswer) -> None:
    ctx[_ANSWER] = answer
