"""A running command's life in Redis, from admission to its answer.

A running command is its exec job's id in three sorted sets, scored by the instant its caller
stops waiting: its environment's (`keys.env_commands`, bounded by TASKENV_MAX_EXECS_PER_ENV),
its org's and its workspace's (`keys.org_commands`, `keys.workspace_commands`, bounded by
their quotas, shared/quotas.py). Each set is counted, and the command added to all three, by
the execute's admission script (`scripts.ADMIT_AND_ENQUEUE`), so no two requests can both take
the last place. It leaves them:
- with its answer: the worker removes it in the round trip that sends the answer
  (worker/arq_worker.py, `release` in its pipeline), from the sets its job lists (`held_by`);
- without an answer (the wait ran out, its worker was lost): the API removes it (`release`);
- at its score, by itself: each count first drops the entries past their score, so a crashed
  API process or worker cannot leak a place;
- with its environment: a teardown deletes the environment's set.
"""

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from taskenv.shared import keys
from taskenv.shared.jobs import ExecJob


def sets_of(env_id: str, org: str, workspace: str) -> list[str]:
    """The sets a command admitted in this environment joins: its environment's, org's,
    workspace's (the order `scripts.ADMIT_AND_ENQUEUE` takes them in)."""
    return [keys.env_commands(env_id), keys.org_commands(org), keys.workspace_commands(org, workspace)]


def held_by(job: ExecJob) -> list[str]:
    """The sets an exec job's command is in, as its admission listed them in the job. A job
    enqueued without the list (an older API) is only in its environment's."""
    return job.get("slots") or [keys.env_commands(job["env_id"])]


async def release(redis: Redis, sets: list[str], job_id: str, *, pipeline: Pipeline | None = None) -> None:
    """Remove a command from its sets; with `pipeline`, queued in it."""
    if pipeline is not None:
        for running in sets:
            pipeline.zrem(running, job_id)
        return
    async with redis.pipeline(transaction=False) as pipe:
        await release(redis, sets, job_id, pipeline=pipe)
        await pipe.execute()
