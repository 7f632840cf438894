"""The arq job functions. Each returns a `JobResult` and never raises: results travel as msgpack,
and an exception must reach the client as its envelope, not as a pickled traceback."""

import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiodocker
from redis.asyncio import Redis

from taskenv.shared import commands, jobs, keys, store
from taskenv.shared.enqueue import enqueue
from taskenv.shared.errors import ErrorType, Reason, TaskenvError, because
from taskenv.shared.jobs import EnvJob, ExecJob, JobResult
from taskenv.shared.logs import REQUEST_ID
from taskenv.shared.models import EnvironmentState
from taskenv.shared.scripts import ClaimOutcome
from taskenv.shared.tasks import TaskSpec
from taskenv.worker import containers, context, environment_removal, task_environment, task_provision
from taskenv.worker.context import JobAnswer, WorkerContext
from taskenv.worker.docker import bad_gateway, docker_errors
from taskenv.worker.execute import run_command
from taskenv.worker.metrics import DOCKER_SECONDS, JOB_SECONDS, QUEUE_WAIT_SECONDS

log = logging.getLogger("taskenv.worker")

Ctx = dict[str, Any]
# How much of a failed service's or script's output a failed environment's `error` shows.
ERROR_TAIL_CHARS = 500
JobFunction = Callable[[Ctx, Any], Awaitable[dict[str, Any]]]


def job(fn: JobFunction) -> Callable[..., Coroutine[Any, Any, JobResult]]:
    """Wrap a job body: errors become results, and the result, encoded, is kept for
    `on_job_end`, which pushes it to the waiting API process, then logs the job."""

    @functools.wraps(fn)
    async def run(ctx: Ctx, payload: Any, reply_to: str | None = None, request_id: str = "") -> JobResult:
        job_id, started = ctx["job_id"], time.perf_counter()
        if request_id:
            REQUEST_ID.set(request_id)  # this job's own task: its log lines name the request
        if ctx.get("enqueue_time"):
            QUEUE_WAIT_SECONDS.labels(fn.__name__).observe(
                max(0.0, time.time() - ctx["enqueue_time"].timestamp())
            )
        try:
            result = jobs.ok(job_id, await fn(ctx, payload))
        except TaskenvError as exc:
            result = jobs.failed(job_id, exc)
        except (aiodocker.DockerError, OSError) as exc:
            result = jobs.failed(job_id, bad_gateway(exc, fn.__name__))
        except Exception:
            log.exception("job %s (%s) failed", job_id, fn.__name__)
            result = jobs.failed(job_id, TaskenvError(ErrorType.APP, "Internal error in the worker"))
        result, encoded = _encoded(job_id, result)
        answer = context.answer_of(ctx) or JobAnswer(reply_to, encoded)
        answer.reply_to, answer.encoded = reply_to, encoded
        answer.idempotency = payload.get("idempotency") if isinstance(payload, dict) else None
        # Logged and counted by `on_job_end` once the answer is on its way, not before it.
        answer.account = functools.partial(
            _account, fn.__name__, job_id, payload, result, time.perf_counter() - started, request_id
        )
        context.set_answer(ctx, answer)
        return result

    return run


def _encoded(job_id: str, result: JobResult) -> tuple[JobResult, bytes]:
    """The result and its wire form, encoded once here, inside the job: an answer msgpack cannot
    carry (none should: outputs are decoded and capped, statuses 0-255) becomes an internal
    error, never an exception in arq's end hook, which would end the worker process."""
    try:
        return result, jobs.serialize(result)
    except Exception:
        log.exception("job %s: its answer could not be encoded", job_id)
        error = TaskenvError(ErrorType.APP, "Internal error in the worker: its answer could not be encoded")
        failed = jobs.failed(job_id, error)
        return failed, jobs.serialize(failed)


def _account(
    function: str, job_id: str, payload: Any, result: JobResult, elapsed: float, request_id: str
) -> None:
    """One metric sample and one log line per job (never the command: it is the user's). It
    runs in arq's task, not the job's: the request id is passed, not read from the context."""
    outcome = "ok" if "value" in result else str(result.get("error", {}).get("type", "error"))
    JOB_SECONDS.labels(function, outcome).observe(elapsed)
    env_id = payload.get("env_id", "") if isinstance(payload, dict) else ""
    log.info(
        "%s %s %s in %.1f ms",
        function,
        env_id,
        outcome,
        elapsed * 1000,
        extra={
            "job_id": job_id,
            "env_id": env_id,
            "function": function,
            "outcome": outcome,
            **({"request_id": request_id} if request_id else {}),
        },
    )


@job
async def execute(ctx: Ctx, payload: ExecJob) -> dict[str, Any]:
    # The command leaves its sets of running commands with its answer, in the same round trip.
    context.set_answer(ctx, JobAnswer(None, b"", commands=commands.held_by(payload)))
    worker = context.of(ctx)
    docker = worker.docker
    if worker.variables is not None and (variables := await worker.variables.of(payload["env_id"])):
        payload = {**payload, "env": variables}
    try:
        with DOCKER_SECONDS.labels("exec").time():
            return await run_command(docker, payload, worker.runners)
    except TaskenvError as exc:
        if exc.type != ErrorType.BAD_GATEWAY:
            raise
        raise await explained(worker, payload["env_id"], exc) from None


async def explained(worker: WorkerContext, env_id: str, exc: TaskenvError) -> TaskenvError:
    """The error of a command the engine refused (a 502): if its container is gone, so is the
    environment, and the error says so; else the engine's own error."""
    try:
        why = await containers.why_stopped(worker.docker, store.container_name(env_id))
    except (aiodocker.DockerError, OSError):
        # The engine itself is unreachable: nothing to conclude.
        why = None
    if why is None:
        return TaskenvError(exc.type, exc.detail, reason=exc.reason)
    return await _gone_during(worker.records, env_id, why, exc)


async def _gone_during(redis: Redis, env_id: str, why: str, exc: TaskenvError) -> TaskenvError:
    """The error of a command whose container went away under it: torn down by taskenv (a
    DELETE, an expiry: the record says so) or removed or stopped by someone else (the
    environment fails)."""
    if await fail_gone(redis, env_id, why):
        return because(Reason.CONTAINER_GONE, why)
    record = await store.load(redis, env_id)
    if record is not None and record.state == EnvironmentState.TORN_DOWN:
        return TaskenvError(
            ErrorType.CONFLICT,
            f"Environment {env_id} was torn down while the command ran"
            + (f" ({record.error})" if record.error else ""),
            extra={"output": str(exc.extra.get("output", ""))},
            reason=Reason.TORN_DOWN,
        )
    return because(Reason.CONTAINER_GONE, why)


async def fail_gone(redis: Redis, env_id: str, why: str) -> bool:
    """A ready environment whose container vanished or stopped can run nothing again: failed,
    with the reason (the API answers its executes 502 `container_gone`)."""
    return await store.set_if_state(
        redis, env_id, EnvironmentState.READY, state=EnvironmentState.FAILED,
        error=f"{Reason.CONTAINER_GONE}: {why}", container_gone="1",
    )  # fmt: skip


@job
async def provision(ctx: Ctx, payload: EnvJob) -> dict[str, Any]:
    """Taken from the shared provision queue by a worker of any host with room: that host
    claims the environment, then creates its container."""
    worker = context.of(ctx)
    redis, settings, membership = worker.records, worker.settings, worker.membership
    env_id = payload["env_id"]
    if membership and membership.draining:
        # Taken in the moment the drain began: another host provisions it.
        await _hand_back(ctx, payload)
        return {"state": EnvironmentState.PROVISIONING, "handed_back": True}
    outcome, count = await store.claim_provision(
        redis,
        env_id,
        settings.host_id,
        settings.host_max_environments,
        worker=membership.worker_id if membership else "",
    )
    if membership:
        membership.saw_environments(count)
    if outcome == ClaimOutcome.FULL:
        # Another worker of this host filled it meanwhile: hand the provision back to the queue.
        await _hand_back(ctx, payload)
        return {"state": EnvironmentState.PROVISIONING, "handed_back": True}
    try:
        if outcome != ClaimOutcome.CLAIMED:
            return {"state": outcome}
        prepared = await task_provision.prepare(
            redis, ctx["redis"], worker.docker, env_id, settings, worker.deployment
        )
        if not isinstance(prepared, task_provision.Prepared):
            return {"state": prepared}
        return await _provision(redis, ctx["redis"], worker, prepared)
    finally:
        # Ran, whatever came of it: the reaper no longer needs to watch for it. (A worker that
        # dies before this line leaves the entry, and the reaper then fails the environment.)
        await store.provision_ran(redis, env_id)


async def _hand_back(ctx: Ctx, payload: EnvJob) -> None:
    """Re-enqueue a provision for other hosts, unannounced (no wake): a worker with room finds
    it on its next pass over the queue. It keeps its original expiry."""
    expires_at = await context.of(ctx).records.zscore(keys.PROVISIONING, payload["env_id"])
    left = (expires_at or 0) - time.time()
    if left > 0:
        await enqueue(
            ctx["redis"],
            function=jobs.PROVISION,
            payload=payload,
            queue=keys.PROVISION_QUEUE,
            job_id=uuid.uuid4().hex,
            expires_sec=left,
            queue_bound=0,  # it was in the queue already: a full one is no reason to lose it
            announce=False,
        )


async def _provision(
    redis: Redis, blobs: Redis, worker: WorkerContext, prepared: task_provision.Prepared
) -> dict[str, Any]:
    env_id, spec = prepared.record.id, prepared.spec
    try:
        with docker_errors("provision"), DOCKER_SECONDS.labels("create").time():
            made = await task_environment.make(worker, blobs, prepared.record, spec, prepared.version)
    except (task_environment.Unmade, TaskenvError) as exc:
        await _fail_provision(worker, env_id, spec, exc)
        return {"state": EnvironmentState.FAILED}
    ready = {"state": EnvironmentState.READY, **made.fields}
    if await store.set_if_state(redis, env_id, EnvironmentState.PROVISIONING, **ready):
        if worker.variables is not None:
            worker.variables.remember(env_id, made.variables)
        if worker.runners is not None:
            worker.runners.warm(env_id)  # its first command then finds its runner session open
        return {"state": EnvironmentState.READY}
    # Torn down while we were making it: nothing of it may outlive its record.
    await remove_quietly(worker, env_id)
    return {"state": EnvironmentState.TORN_DOWN}


async def _fail_provision(
    worker: WorkerContext, env_id: str, spec: TaskSpec, exc: task_environment.Unmade | TaskenvError
) -> None:
    if isinstance(exc, task_environment.Unmade):
        error, log_tail = exc.reason, exc.log_tail
        if log_tail.strip():  # the whole tail is GET /logs' answer
            error += f"; its last output: {log_tail.strip()[-ERROR_TAIL_CHARS:]}"
    else:
        error, log_tail = exc.detail, ""
        if "No such image" in error:
            error += f" (build it with `taskenv image build` or fix the task {spec.ref!r})"
    # Removed first: a `failed` environment has nothing left running.
    await remove_quietly(worker, env_id, teardown_script=False)
    await store.set_if_state(
        worker.records, env_id, EnvironmentState.PROVISIONING, state=EnvironmentState.FAILED, error=error,
        **({task_provision.BUILD_LOG_FIELD: log_tail} if log_tail else {}),
    )  # fmt: skip


@job
async def teardown(ctx: Ctx, payload: EnvJob) -> dict[str, Any]:
    worker = context.of(ctx)
    with docker_errors("teardown"), DOCKER_SECONDS.labels("remove").time():
        removed = await environment_removal.remove(worker, payload["env_id"])
    return {"removed": removed}


@job
async def logs(ctx: Ctx, payload: EnvJob) -> dict[str, Any]:
    worker = context.of(ctx)
    with docker_errors("logs"):
        text = await containers.tail_logs(
            worker.docker, store.container_name(payload["env_id"]), worker.settings.logs_tail_lines
        )
    return {"logs": text}


async def remove_quietly(worker: WorkerContext, env_id: str, *, teardown_script: bool = True) -> bool:
    try:
        return await environment_removal.remove(worker, env_id, teardown_script=teardown_script)
    except (aiodocker.DockerError, OSError, TaskenvError) as exc:
        log.warning("could not remove environment %s: %s", env_id, exc)
        return False
