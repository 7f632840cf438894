"""Sending work to a host's workers through arq, and waiting for the answer."""

import asyncio
import time
import uuid
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from api.results import ResultListener
from shared import jobs, keys
from shared.errors import ErrorType, TaskenvError

# KEYS: job, result, queue, wake. ARGV: expiry ms, serialized job, score, job id, wake cap.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
redis.call('RPUSH', KEYS[4], ARGV[4])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
redis.call('EXPIRE', KEYS[4], 86400)
return 1
"""


class Dispatcher:
    def __init__(self, redis: ArqRedis, listener: ResultListener) -> None:
        self.redis = redis
        self.listener = listener
        self._enqueue = redis.register_script(_ENQUEUE)

    async def submit(
        self, function: str, payload: Any, *, queue: str, job_id: str, expires_sec: float, reply: bool
    ) -> None:
        """Enqueue an arq job and hand its id to the queue's workers, in one round trip.

        What arq's `enqueue_job` does (refuse a known id; the job key expiring with the job, so
        a job that waited past its deadline never starts) in one script instead of three round
        trips, plus the wake. `max_tries=1` on the worker makes a job never run twice."""
        enqueued_ms = int(time.time() * 1000)
        reply_to = self.listener.channel if reply else None
        job = serialize_job(
            function, (payload,), {"reply_to": reply_to}, None, enqueued_ms, serializer=jobs.serialize
        )
        added = await self._enqueue(
            keys=[
                job_key_prefix + job_id,
                result_key_prefix + job_id,
                keys.arq_queue(queue),
                keys.wake(queue),
            ],
            args=[max(1, int(expires_sec * 1000)), job, enqueued_ms, job_id, keys.WAKE_LIST_MAX],
        )
        if not added:
            raise TaskenvError(ErrorType.ALREADY_EXISTS, f"Job {job_id} already exists")

    async def call(
        self, function: str, payload: Any, *, queue: str, wait_sec: float, job_id: str | None = None
    ) -> dict[str, Any]:
        """Run a job and return its answer, or raise its error; never waits past `wait_sec`."""
        job_id = job_id or uuid.uuid4().hex
        with self.listener.expect(job_id) as future:
            await self.submit(function, payload, queue=queue, job_id=job_id, expires_sec=wait_sec, reply=True)
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
