"""Sending work to a host's workers through arq, and waiting for the answer."""

import asyncio
import uuid
from typing import Any

from arq.connections import ArqRedis

from api.results import ResultListener
from shared import jobs, keys
from shared.errors import ErrorType, TaskenvError


class Dispatcher:
    def __init__(self, redis: ArqRedis, listener: ResultListener) -> None:
        self.redis = redis
        self.listener = listener

    async def submit(
        self, function: str, payload: Any, *, queue: str, job_id: str, expires_sec: float, reply: bool
    ) -> None:
        """Enqueue, then wake an idle worker of that queue. `_expires` makes a job that waited
        past its deadline never start; `max_tries=1` on the worker makes it never run twice."""
        await self.redis.enqueue_job(
            function,
            payload,
            reply_to=self.listener.channel if reply else None,
            _job_id=job_id,
            _queue_name=keys.arq_queue(queue),
            _expires=expires_sec,
        )
        await self.redis.lpush(keys.wake(queue), b"1")  # type: ignore[misc]

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
