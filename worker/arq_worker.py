"""arq's Worker, woken by a push instead of polling, and the settings it runs with.

arq only polls: with its default 0.5 s `poll_delay` a 1 ms job takes ~500 ms end to end, and
each poll re-reads every job in the queue, running ones included. Here the enqueuer also pushes
each job id to the queue's wake list, claimed for whichever worker pops it; that worker BLPOPs
it and runs it at once, with no claim of its own, and does arq's full pass over the queue only
once per `idle_wait_sec` (jobs past the wake list's cap, cron).
A small job's record rides its wake (shared/enqueue.py `Wake`): arq's `run_job` still runs it,
but its first round trip (read the record, count the try) is answered from the wake instead of
Redis (`_WakeFedRedis`).
Results go back to the waiting API process over pub/sub as soon as the job returns, in the
one round trip that also frees the command's slots and does arq's own end of the job (its
stored copy of the result, which a waiter that missed the message reads at its deadline; the
job's keys removed): arq's `on_job_end` hands the answer over, its `finish_job` sends it all.
"""

import asyncio
import contextvars
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from arq import cron
from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.utils import timestamp_ms, to_ms
from arq.worker import Worker, func
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from taskenv.shared import commands, jobs, keys, scripts, sealing
from taskenv.shared.enqueue import Wake
from taskenv.shared.jobs import JOB_TIMEOUT_SEC
from taskenv.shared.redis import arq_client, records_client
from taskenv.shared.settings import Settings
from taskenv.worker import context, docker, job_functions, reaper, runner_sessions, verify
from taskenv.worker.command_env import CommandEnvironments
from taskenv.worker.container_events import ContainerEvents, of_deployment
from taskenv.worker.context import JobAnswer, WorkerContext

log = logging.getLogger("taskenv.worker")

# Job ids taken off a wake list in one round trip at most: a burst's share for this worker.
WAKE_BATCH = 64
# The EXPIRE arq's `run_job` sets on a job's try count (a literal in arq 0.28:
# tests/test_unit_arq_contract.py holds it).
ARQ_TRY_COUNT_TTL_SEC = 88400
# The one key of the workers' shared ctx before `startup` builds the typed context from it.
_SETTINGS = "settings"
# The wake whose record answers arq's read of its job: set around the start of that job's task
# only, so its copy of the context is the one place it is seen (`_WakeFedRedis.pipeline`).
_CARRIED: contextvars.ContextVar[Wake | None] = contextvars.ContextVar("taskenv_carried_wake", default=None)


class _CarriedRead:
    """arq's `run_job` reads a job in a transaction: GET its record, INCR and EXPIRE its try
    count (arq 0.28, tests/test_unit_arq_contract.py). For a woken job whose record rode its
    wake, exactly those three are answered here: the record, try 1, and no round trip. The count
    is not written: the enqueuer's claim on a woken job outlives its record
    (shared/enqueue.py), so no second run can ever read it; arq's end of the job deletes it
    anyway. Anything else queued goes to Redis as queued, through the real pipeline."""

    def __init__(self, wake: Wake, pipe: Pipeline) -> None:
        self._wake = wake
        self._pipe = pipe
        self._queued: list[tuple[str, str]] = []

    async def __aenter__(self) -> "_CarriedRead":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pipe.reset()  # type: ignore[no-untyped-call]

    def get(self, name: str) -> "_CarriedRead":
        self._queued.append(("get", name))
        self._pipe.get(name)
        return self

    def incr(self, name: str, amount: int = 1) -> "_CarriedRead":
        self._queued.append(("incr", name) if amount == 1 else ("incrby", name))
        self._pipe.incr(name, amount)
        return self

    def expire(self, name: str, time: int) -> "_CarriedRead":
        self._queued.append(("expire", name) if time == ARQ_TRY_COUNT_TTL_SEC else ("expire other", name))
        self._pipe.expire(name, time)
        return self

    def __getattr__(self, name: str) -> Any:
        self._queued.append((name, ""))
        return getattr(self._pipe, name)

    async def execute(self) -> list[Any]:
        job_id = self._wake.job_id
        read = [("get", job_key_prefix + job_id), ("incr", retry_key_prefix + job_id)]
        if self._queued == [*read, ("expire", retry_key_prefix + job_id)]:
            return [self._wake.record, 1, True]
        return list(await self._pipe.execute())


class _WakeFedRedis(ArqRedis):
    """The workers' arq client: a job task's first transaction, in a task started for a wake
    that carried its record, is that record's `_CarriedRead`; everything else is Redis."""

    @classmethod
    def over(cls, client: ArqRedis) -> "_WakeFedRedis":
        return cls(
            client.connection_pool,
            job_serializer=client.job_serializer,
            job_deserializer=client.job_deserializer,
            default_queue_name=client.default_queue_name,
        )

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Any:
        pipe = super().pipeline(transaction, shard_hint)
        carried = _CARRIED.get()
        if carried is None or not transaction:
            return pipe
        _CARRIED.set(None)  # the job's own transactions, later in this task, are Redis's
        return _CarriedRead(carried, pipe)


class WakeableWorker(Worker):
    """arq's Worker, fed job ids from a wake list; everything else (running, results, cron) is arq's."""

    def __init__(self, *args: Any, wake_key: str, idle_wait_sec: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake_key = wake_key
        self.idle_wait_sec = idle_wait_sec
        self._job_ended = asyncio.Event()
        self._stopping = False
        # The jobs running now, for the heartbeat's thread: replaced whole, never changed.
        self.running: frozenset[str] = frozenset()
        self._batched_wakes = True
        # Jobs between arq's `on_job_end` and its `finish_job`: their answers, sent by the latter.
        self._ending: dict[str, dict[str, Any]] = {}
        self.on_job_end = self._hand_over_answer

    async def main(self) -> None:
        log.info("worker on queue %s: %d functions", self.queue_name, len(self.functions))
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        loop = asyncio.get_running_loop()
        backoff = 0.1
        while not self._stopping:
            try:
                await self._poll_iteration()
                next_pass = loop.time() + self.idle_wait_sec
                while not self._stopping and (left := next_pass - loop.time()) > 0:
                    for entry in await self._next_woken(left):
                        await self._run_woken(entry)
                backoff = 0.1
            except (RedisError, OSError) as exc:
                # Redis restarting or unreachable: keep the process, and the commands it runs,
                # alive; its connections come back by themselves.
                log.warning(
                    "queue %s: Redis unavailable (%s); retrying in %.1f s", self.queue_name, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def pause(self, paused: bool) -> None:
        """Take no new jobs while paused (the provision worker of a draining or full host),
        without stopping: running jobs go on, and taking resumes at once when unpaused."""
        if paused != (not self.allow_pick_jobs) and not self._stopping:
            self.allow_pick_jobs = not paused
            self._job_ended.set()

    def stop_taking(self) -> None:
        """Take no more jobs. `main` returns after its current wait for a wake (at most
        `idle_wait_sec`) rather than being cancelled in it: a popped job id is claimed for this
        worker alone, so dropping it would lose that job."""
        self.allow_pick_jobs = False
        self._stopping = True

    async def _next_woken(self, wait_sec: float) -> list[bytes]:
        """The next job ids pushed by enqueuers, as many as are there up to this worker's room
        (one round trip for a burst: BLMPOP, Redis 7), or none after `wait_sec`."""
        self._job_ended.clear()
        room = self.max_jobs - self.job_counter
        if room <= 0 or not self.allow_pick_jobs:
            # Full or paused: leave the ids queued in the list until a running job ends.
            with suppress(TimeoutError):
                await asyncio.wait_for(self._job_ended.wait(), wait_sec)
            return []
        # A timeout of 0 would mean forever.
        timeout = max(wait_sec, 0.01)
        if self._batched_wakes:
            try:
                # redis-py types each key as a list; it is one name.
                key: Any = self.wake_key
                popped = await self.pool.blmpop(
                    timeout, 1, key, direction="LEFT", count=min(room, WAKE_BATCH)
                )  # type: ignore[misc]
                return list(popped[1]) if popped else []
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                log.info("Redis has no BLMPOP (before 7.0): wakes are popped one at a time")
                self._batched_wakes = False
        single = await self.pool.blpop([self.wake_key], timeout=timeout)  # type: ignore[misc, arg-type]
        return [single[1]] if single else []

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._job_ended.set()

    async def _run_woken(self, entry: bytes) -> None:
        """Run a job whose enqueuer claimed it for the worker that popped its wake: this one;
        from the record the wake carries while that record is live, else as arq reads it."""
        try:
            wake = Wake.decode(entry)
        except ValueError:
            log.error("queue %s: dropped a wake entry that is not one: %r", self.queue_name, entry[:64])
            return
        await self.sem.acquire()
        self.job_counter += 1
        now = timestamp_ms()
        carried = _CARRIED.set(wake if wake.record is not None and now < wake.expires_ms else None)
        try:
            self._start(wake.job_id, now)
        finally:
            _CARRIED.reset(carried)

    def _start(self, job_id: str, score: int) -> None:
        task = self.loop.create_task(self._run_job_contained(job_id, score))
        self.running = self.running | {job_id}
        task.add_done_callback(lambda _: self._ended(job_id))
        self.tasks[job_id] = task

    def _ended(self, job_id: str) -> None:
        self.running = self.running - {job_id}
        self._release_sem_dec_counter_on_complete()

    async def _run_job_contained(self, job_id: str, score: int) -> None:
        """arq's run_job, whose failures end here: arq re-raises a job task's exception in its
        main loop, which would end the worker process and every command running in it."""
        try:
            await self.run_job(job_id, score)
        except Exception:
            log.exception("job %s: arq could not complete it", job_id)

    async def _hand_over_answer(self, ctx: dict[str, Any]) -> None:
        self._ending[ctx["job_id"]] = ctx

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's end of a job, in the round trip that sends its answer (`_publish_result`); if
        that round trip fails, arq's own, on its own."""
        ctx = self._ending.pop(job_id, None)

        def finish_ops(pipe: Any) -> None:
            _finish_ops(
                pipe, self.queue_name, job_id, finish, result_data, result_timeout_s,
                keep_result_forever, incr_score, keep_in_progress,
            )  # fmt: skip

        if ctx is None or not await _publish_result(ctx, finish=finish_ops):
            await super().finish_job(
                job_id,
                finish,
                result_data,
                result_timeout_s,
                keep_result_forever,
                incr_score,
                keep_in_progress,
            )

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs (for its pass over the queue), with its claim (WATCH, EXISTS, ZSCORE,
        MULTI/PSETEX/EXEC: four round trips) done by one script, and our own running jobs
        skipped without asking Redis: they stay in arq's queue until they finish and every pass
        sees them again."""
        for job_id_bytes in job_ids:
            job_id = job_id_bytes.decode()
            if job_id in self.tasks:
                continue
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            try:
                score = await scripts.CLAIM_JOB.run(
                    self.pool,
                    in_progress=in_progress_key_prefix + job_id,
                    queue=self.queue_name,
                    job_id=job_id,
                    now_ms=timestamp_ms(),
                    claim_ms=int(self.in_progress_timeout_s * 1000),
                )
            except BaseException:
                # Redis failed mid-claim: give the job place back (`main` tries the pass again).
                self.job_counter -= 1
                self.sem.release()
                raise
            if not score:
                # Claimed by its enqueuer for a woken worker, started by another worker,
                # finished, or deferred: not ours to run.
                self.job_counter -= 1
                self.sem.release()
                continue
            self._start(job_id, int(float(score)))


async def startup(ctx: dict[str, Any]) -> None:
    """Open what the job functions of both of a process's workers share, and reconcile."""
    settings: Settings = ctx[_SETTINGS]
    records = records_client(settings)
    joined = await reaper.join_deployment(records, settings)
    sealer = sealing.optional(settings.secrets_key)
    worker = WorkerContext(
        settings, records, docker.connect(), joined, sealer=sealer,
        variables=CommandEnvironments(records, sealer),
    )  # fmt: skip
    context.install(ctx, worker)
    worker.events = ContainerEvents(worker.docker, of_deployment(joined))
    worker.events.start()
    await reaper.reap_with(worker)
    worker.runners = await runner_sessions.start_for_host(settings, worker.docker, joined)


async def shutdown(ctx: dict[str, Any]) -> None:
    worker = context.of(ctx)
    if worker.runners is not None:
        await worker.runners.close()
    if worker.events is not None:
        await worker.events.close()
    await docker.disconnect(worker.docker)
    await worker.records.aclose()


def _finish_ops(
    pipe: Any,
    queue: str,
    job_id: str,
    finish: bool,
    result_data: bytes | None,
    result_timeout_s: float | None,
    keep_result_forever: bool,
    incr_score: int | None,
    keep_in_progress: float | None,
) -> None:
    """What arq's `Worker.finish_job` sends (arq 0.28, tests/test_unit_arq_contract.py), queued
    in `pipe`, in its order: its result stored before its claim is released."""
    delete_keys = []
    if keep_in_progress is None:
        delete_keys.append(in_progress_key_prefix + job_id)
    else:
        pipe.pexpire(in_progress_key_prefix + job_id, to_ms(keep_in_progress))
    if finish:
        if result_data:
            expire = None if keep_result_forever else result_timeout_s
            pipe.set(result_key_prefix + job_id, result_data, px=to_ms(expire))
        delete_keys += [retry_key_prefix + job_id, job_key_prefix + job_id]
        pipe.zrem(abort_jobs_ss, job_id)
        pipe.zrem(queue, job_id)
    elif incr_score:
        pipe.zincrby(queue, incr_score, job_id)
    if delete_keys:
        pipe.delete(*delete_keys)


async def _publish_result(ctx: dict[str, Any], finish: Callable[[Any], None] | None = None) -> bool:
    """Send a job's answer to the API process waiting for it and, for an execute, remove it
    from its sets of running commands; for an execute with an Idempotency-Key, also keep the
    answer for retries and send it to those waiting; with `finish`, also what it queues (arq's
    end of the job): all in one round trip. False when that failed. A failure here must not
    keep arq from recording the job's end: a waiter that missed the message reads arq's
    stored result at its deadline, and a command not removed here stops counting at its
    deadline. The job's log line and metric come after the answer has left."""
    answer = context.answer_of(ctx) or JobAnswer(None, b"")
    redis = ctx["redis"]
    sent = False
    try:
        async with redis.pipeline(transaction=False) as pipe:
            if answer.idempotency:
                await scripts.STORE_AND_PUBLISH.run(
                    redis,
                    pipeline=pipe,
                    idempotency=answer.idempotency,
                    reply_channel=answer.reply_to or "",
                    answer=answer.encoded,
                )
            elif answer.reply_to:
                pipe.publish(answer.reply_to, answer.encoded)
            await commands.release(redis, answer.commands, ctx["job_id"], pipeline=pipe)
            if finish is not None:
                finish(pipe)
            await pipe.execute()
            sent = True
    except RedisError as exc:
        log.warning("could not send the answer of job %s: %s", ctx.get("job_id"), exc)
    except Exception:
        # Nothing may escape arq's end hook: arq re-raises it in its main loop, which ends the
        # worker process and every command running in it.
        log.exception("could not send the answer of job %s", ctx.get("job_id"))
    if answer.account:
        try:
            answer.account()
        except Exception:
            log.exception("could not account for job %s", ctx.get("job_id"))
    return sent


def create_workers(settings: Settings) -> tuple[WakeableWorker, WakeableWorker]:
    """A worker process's two arq workers, sharing one context (Docker and Redis clients,
    opened by `startup`): one for this host's own queue (execs, logs, teardowns and the
    reaper), one for the provision queue shared by all hosts, paused while this host is
    draining or full."""
    ctx: dict[str, Any] = {_SETTINGS: settings}
    reap_seconds = set(range(0, 60, settings.reap_interval_sec))
    host_queue = keys.host_queue(settings.host_id)
    own = _worker(
        settings,
        ctx,
        host_queue,
        [
            func(job_functions.execute, name=jobs.EXECUTE, max_tries=1, timeout=JOB_TIMEOUT_SEC),
            func(job_functions.teardown, name=jobs.TEARDOWN, max_tries=1, timeout=JOB_TIMEOUT_SEC),
            func(job_functions.logs, name=jobs.LOGS, max_tries=1, timeout=JOB_TIMEOUT_SEC),
            func(verify.verify, name=jobs.VERIFY, max_tries=1, timeout=JOB_TIMEOUT_SEC),
        ],
        settings.worker_max_jobs,
        cron_jobs=[cron(reaper.reap, second=reap_seconds, run_at_startup=False, max_tries=1)],
    )
    provisions = _worker(
        settings,
        ctx,
        keys.PROVISION_QUEUE,
        [func(job_functions.provision, name=jobs.PROVISION, max_tries=1, timeout=JOB_TIMEOUT_SEC)],
        settings.worker_max_provisions,
    )
    return own, provisions


def _worker(
    settings: Settings, ctx: dict[str, Any], queue: str, functions: list[Any], max_jobs: int, **kwargs: Any
) -> WakeableWorker:
    return WakeableWorker(
        functions=functions,
        queue_name=keys.arq_queue(queue),
        redis_pool=_WakeFedRedis.over(arq_client(settings)),
        ctx=ctx,
        max_jobs=max_jobs,
        queue_read_limit=max_jobs * 5,
        job_timeout=JOB_TIMEOUT_SEC,
        keep_result=60,
        max_tries=1,
        retry_jobs=False,
        wake_key=keys.wake(queue),
        idle_wait_sec=settings.worker_idle_wait_sec,
        job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize,
        log_results=False,
        handle_signals=False,
        **kwargs,
    )
