"""An environment removed whole: its teardown script first (best-effort, once), then its runner
session, its sandbox, its task services and its volumes, and the variables this worker kept.

The one way every path removes an environment: DELETE (the teardown job), expiry and orphans
(the reaper), and a provision that failed or was torn down while it ran.
"""

import asyncio
import logging
import time

from taskenv.shared import keys, scripts, store
from taskenv.shared.tasks import TaskSpec
from taskenv.worker import containers, pod, sandbox_run
from taskenv.worker.context import WorkerContext

log = logging.getLogger("taskenv.worker")

# The record's flag that its teardown script was started: a repeated removal (a DELETE whose
# worker seemed lost, then the reaper) never runs it twice.
TEARDOWN_STARTED_FIELD = "teardown_started"
# Past the script's own timeout: the removal running it reads the output and writes its outcome.
TEARDOWN_END_GRACE_SEC = 5.0
TEARDOWN_POLL_SEC = 0.1


async def remove(worker: WorkerContext, env_id: str, *, teardown_script: bool = True) -> bool:
    """True when its sandbox was there to remove."""
    if teardown_script:
        await _run_teardown_script(worker, env_id)
    if worker.runners is not None:
        await worker.runners.drop(env_id)
    if worker.variables is not None:
        worker.variables.forget(env_id)
    # Services first: they live in the sandbox's network namespace.
    await pod.remove_environment(worker.docker, env_id, worker.deployment)
    return await containers.remove(worker.docker, store.container_name(env_id), worker.deployment)


async def _run_teardown_script(worker: WorkerContext, env_id: str) -> None:
    record = await store.load(worker.records, env_id)
    if record is None:
        return
    spec = TaskSpec.model_validate_json(record.spec)
    step = spec.source.teardown if spec.source is not None else None
    if step is None or await containers.why_stopped(worker.docker, store.container_name(env_id)) is not None:
        return
    first = await scripts.SET_FLAG_ONCE.run(
        worker.records, environment=keys.environment(env_id), field=TEARDOWN_STARTED_FIELD
    )
    if not first:
        # Another removal runs it (the DELETE's job and a reaper pass can meet): the containers
        # it runs in stay until it has ended there, or until its deadline if that removal died.
        await _until_teardown_ended(worker, env_id, float(step.timeout) + TEARDOWN_END_GRACE_SEC)
        return
    variables = await worker.variables.of(env_id) if worker.variables is not None else {}
    result = await sandbox_run.run_script(
        worker, env_id, f"{sandbox_run.TASK_DIR}/{step.script}", timeout_sec=float(step.timeout),
        env=variables, user=spec.user,
    )  # fmt: skip
    why = f" ({result.detail})" if result.detail else ""
    log.info("teardown script of %s: %s%s", env_id, result.outcome, why, extra={"env_id": env_id})
    outcome = result.model_dump_json(include={"outcome", "exit_code"})
    # Only while the record is as it was read: a record expired or removed meanwhile is not
    # brought back as a fragment.
    await store.set_if_state(worker.records, env_id, record.state, teardown_outcome=outcome)


async def _until_teardown_ended(worker: WorkerContext, env_id: str, within_sec: float) -> None:
    """Until the environment's teardown outcome is written (or its record is gone), at most
    `within_sec`."""
    deadline = time.monotonic() + within_sec
    while time.monotonic() < deadline:
        record = await store.load(worker.records, env_id)
        if record is None or record.teardown_outcome:
            return
        await asyncio.sleep(TEARDOWN_POLL_SEC)
