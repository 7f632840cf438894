"""Sending work to a host's workers through arq, and waiting for the answer."""

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from api.results import ResultListener
from shared import jobs, keys
from shared.errors import ErrorType, TaskenvError
from shared.jobs import JOB_TIMEOUT_SEC
from shared.logs import REQUEST_ID

# What arq's `enqueue_job` does (refuse a known id; the job key expires with the job, so a job
# that waited past its deadline never starts), plus handing the id to the queue's workers: the
# job is claimed here (arq's in-progress key) for whichever worker pops its wake, so that worker
# runs it without a claim round trip and no other worker's pass over the queue takes it. Past
# the wake list's cap the job is left unclaimed, for the workers' periodic pass to find.
# KEYS: job, result, queue, wake, in-progress. ARGV: expiry ms, serialized job, score, job id,
# wake cap, claim ms.
_ENQUEUE_FUNCTION = """
local function enqueue()
  if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 'duplicate' end
  redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
  if redis.call('LLEN', KEYS[4]) < tonumber(ARGV[5]) then
    redis.call('PSETEX', KEYS[5], ARGV[6], '1')
    redis.call('RPUSH', KEYS[4], ARGV[4])
    redis.call('EXPIRE', KEYS[4], 86400)
  end
  return 'queued'
end
"""
_ENQUEUE = _ENQUEUE_FUNCTION + "return enqueue()"

# An execute: enqueued only if its environment is ready and has a free command slot; the slot
# carries the command's deadline, so a crashed API process cannot leak it.
# KEYS (after enqueue's): environment, in-flight set. ARGV (after enqueue's): now, slot
# expiry, slots per environment.
_ADMIT_AND_ENQUEUE = (
    _ENQUEUE_FUNCTION
    + """
local state = redis.call('HGET', KEYS[6], 'state')
if not state then return 'missing' end
if state ~= 'ready' then return state end
redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', ARGV[7])
if redis.call('ZCARD', KEYS[7]) >= tonumber(ARGV[9]) then return 'busy' end
local queued = enqueue()
if queued ~= 'queued' then return queued end
redis.call('ZADD', KEYS[7], ARGV[8], ARGV[4])
redis.call('EXPIRE', KEYS[7], math.ceil(tonumber(ARGV[8]) - tonumber(ARGV[7])) + 60)
return queued
"""
)


@dataclass(frozen=True)
class Admission:
    """Enqueue an execute only if `env_id` is ready and runs fewer than `slots` commands."""

    env_id: str
    slots: int
    slot_until: float


class NotAdmitted(Exception):
    """The environment was gone, not ready (`reason` is its state), or `busy`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Dispatcher:
    def __init__(self, redis: ArqRedis, listener: ResultListener) -> None:
        self.redis = redis
        self.listener = listener
        self._enqueue = redis.register_script(_ENQUEUE)
        self._admit_and_enqueue = redis.register_script(_ADMIT_AND_ENQUEUE)

    async def submit(
        self,
        function: str,
        payload: Any,
        *,
        queue: str,
        job_id: str,
        expires_sec: float,
        reply: bool,
        admission: Admission | None = None,
    ) -> None:
        """Enqueue an arq job and hand its id to the queue's workers, in one round trip (arq's
        `enqueue_job` takes three); with an admission, in that same round trip.
        `max_tries=1` on the worker makes a job never run twice."""
        now = time.time()
        enqueued_ms = int(now * 1000)
        reply_to = self.listener.channel if reply else None
        job = serialize_job(
            function,
            (payload,),
            {"reply_to": reply_to, "request_id": REQUEST_ID.get()},
            None,
            enqueued_ms,
            serializer=jobs.serialize,
        )
        script_keys = [
            job_key_prefix + job_id,
            result_key_prefix + job_id,
            keys.arq_queue(queue),
            keys.wake(queue),
            in_progress_key_prefix + job_id,
        ]
        expires_ms = max(1, int(expires_sec * 1000))
        # The claim outlives any run the job can still start: a worker's pass must never take
        # a job that another worker is running.
        claim_ms = expires_ms + int(JOB_TIMEOUT_SEC * 1000)
        args: list[Any] = [expires_ms, job, enqueued_ms, job_id, keys.WAKE_LIST_MAX, claim_ms]
        if admission is None:
            outcome = await self._enqueue(keys=script_keys, args=args)
        else:
            script_keys += [keys.environment(admission.env_id), keys.inflight(admission.env_id)]
            args += [now, admission.slot_until, admission.slots]
            outcome = await self._admit_and_enqueue(keys=script_keys, args=args)
        outcome = outcome.decode() if isinstance(outcome, bytes) else str(outcome)
        if outcome == "duplicate":
            raise TaskenvError(ErrorType.ALREADY_EXISTS, f"Job {job_id} already exists")
        if outcome != "queued":
            raise NotAdmitted(outcome)

    async def call(
        self,
        function: str,
        payload: Any,
        *,
        queue: str,
        wait_sec: float,
        job_id: str | None = None,
        admission: Admission | None = None,
    ) -> dict[str, Any]:
        """Run a job and return its answer, or raise its error; never waits past `wait_sec`."""
        job_id = job_id or uuid.uuid4().hex
        with self.listener.expect(job_id, queue) as future:
            await self.submit(
                function,
                payload,
                queue=queue,
                job_id=job_id,
                expires_sec=wait_sec,
                reply=True,
                admission=admission,
            )
            try:
                result = await asyncio.wait_for(asyncio.shield(future), wait_sec)
            except TimeoutError:
                stored = await self.listener.stored_result(job_id)
                if stored is None:
                    raise TaskenvError(
                        ErrorType.TIMEOUT,
                        f"No answer from a worker within {wait_sec:.1f} s (is a worker running"
                        f" for queue {queue!r}?)",
                        extra={"output": ""} if function == jobs.EXECUTE else None,
                    ) from None
                result = stored
        return jobs.unwrap(result)
