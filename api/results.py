"""Results pushed by workers to this API process, handed to the requests waiting for them.

One pub/sub subscription per process, whatever the number of waiting requests: no polling
loop and no Redis connection per request. A lost message (e.g. while reconnecting) costs
only latency: every waiter still reads arq's stored result once at its deadline, and after a
reconnect all waiters check theirs at once.

The same subscription hears of lost hosts and workers (shared/hosts.py): the requests waiting
on them answer 502 at once instead of at their deadline, and those watching a host's losses
(a DELETE, whose teardown may be re-run) hear of each. It also hears of provisions that ended
(`keys.SETTLED`), for the status requests waiting for one (`?wait_sec=`).
"""

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import TypeVar

from arq.connections import ArqRedis
from arq.jobs import Job

from taskenv.shared import hosts, jobs, keys
from taskenv.shared.errors import ErrorType, Reason, TaskenvError, because
from taskenv.shared.jobs import JobResult
from taskenv.shared.scripts import LossKind

log = logging.getLogger("taskenv.api")
_T = TypeVar("_T")


class ResultListener:
    def __init__(self, redis: ArqRedis) -> None:
        self.redis = redis
        self.channel = keys.reply_channel(uuid.uuid4().hex)
        self._waiting: dict[str, asyncio.Future[JobResult]] = {}
        # Requests waiting for each job: more than one when retries with the same
        # Idempotency-Key wait for the first request's command.
        self._users: Counter[str] = Counter()
        # Queue name → ids of the jobs waited for on it, to answer them all when its host is lost.
        self._by_queue: dict[str, set[str]] = {}
        # Host → futures of the requests watching it, set to the kind of its next loss.
        self._watching: dict[str, set[asyncio.Future[LossKind]]] = {}
        # Environment id → futures of the status requests waiting for its provision to end.
        self._settling: dict[str, set[asyncio.Future[None]]] = {}
        self._subscribed = asyncio.Event()
        self._recovering: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @contextmanager
    def expect(self, job_id: str, queue: str = "") -> Iterator["asyncio.Future[JobResult]"]:
        """Register before enqueueing, so that even an instant result finds its waiter."""
        future = self._waiting.get(job_id)
        if future is None:
            future = self._waiting[job_id] = asyncio.get_running_loop().create_future()
        self._users[job_id] += 1
        on_queue = self._by_queue.setdefault(queue, set())
        on_queue.add(job_id)
        try:
            yield future
        finally:
            self._users[job_id] -= 1
            if self._users[job_id] <= 0:
                del self._users[job_id]
                self._waiting.pop(job_id, None)
                on_queue.discard(job_id)
                if not on_queue and self._by_queue.get(queue) is on_queue:
                    del self._by_queue[queue]

    def losses(self, host: str) -> AbstractContextManager["asyncio.Future[LossKind]"]:
        """A future set when, within the block, `host` or any of its worker processes is lost."""
        return _registered(self._watching, host)

    def settled(self, env_id: str) -> AbstractContextManager["asyncio.Future[None]"]:
        """A future set when, within the block, a worker announces that the environment's
        provision ended (a hint: read the record to know how)."""
        return _registered(self._settling, env_id)

    async def stored_result(self, job_id: str) -> JobResult | None:
        """arq's stored copy of a result: the fallback when no message arrived."""
        info = await Job(job_id, self.redis, _deserializer=jobs.deserialize).result_info()
        if info is None:
            return None
        if info.success and isinstance(info.result, dict):
            return info.result  # type: ignore[return-value]
        return jobs.failed(job_id, _lost(f"the worker could not run the job: {info.result}"))

    async def wait_subscribed(self) -> None:
        await self._subscribed.wait()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel, keys.EVENTS, keys.SETTLED)
                    if pubsub.connection is not None:
                        # After a short outage redis-py reconnects and resubscribes by itself
                        # (shared/redis.py retries): recover what was published meanwhile.
                        pubsub.connection.register_connect_callback(self._reconnected)
                    self._subscribed.set()
                    backoff = 0.1
                    await self._recover()
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        if message["channel"] in (keys.EVENTS, keys.EVENTS.encode()):
                            self._loss(message["data"])
                        elif message["channel"] in (keys.SETTLED, keys.SETTLED.encode()):
                            self._settled(message["data"])
                        else:
                            self._receive(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:
                self._subscribed.clear()
                log.exception("result subscription lost; resubscribing in %.1f s", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _receive(self, data: bytes) -> None:
        try:
            result = jobs.deserialize(data)
            job_id = result["job_id"]
        except Exception:
            log.warning("ignored a malformed message on %s", self.channel)
            return
        if isinstance(job_id, str):
            self._deliver(result)

    def _loss(self, data: bytes) -> None:
        """A host or a worker was lost: the jobs waited for on it will never answer."""
        event = hosts.parse_event(data)
        if event is None:
            return
        host = str(event.get("host", ""))
        kind = LossKind(event["kind"])
        # Watchers first: a job failed below may wake its caller, who then asks what was lost.
        for future in self._watching.get(host, ()):
            if not future.done():
                future.set_result(kind)
        if kind == LossKind.HOST_LOST:
            job_ids = set(self._by_queue.get(keys.host_queue(host), ()))
            error = because(Reason.HOST_LOST, str(event.get("error") or host))
        else:
            job_ids = set(str(event.get("jobs", "")).split())
            error = because(
                Reason.WORKER_LOST,
                f"worker {event.get('worker')} of host {host} stopped heartbeating while running this"
                " job; it was not retried",
            )
        for job_id in job_ids:
            self._deliver(jobs.failed(job_id, error))

    def _settled(self, data: bytes | str) -> None:
        env_id = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
        for future in self._settling.get(env_id, ()):
            if not future.done():
                future.set_result(None)

    def _deliver(self, result: JobResult) -> None:
        future = self._waiting.get(result.get("job_id", ""))
        if future is not None and not future.done():
            future.set_result(result)

    def _reconnected(self, connection: object) -> None:
        task = asyncio.create_task(self._recover())
        self._recovering.add(task)
        task.add_done_callback(self._recovering.discard)

    async def _recover(self) -> None:
        for job_id in list(self._waiting):
            with suppress(Exception):
                result = await self.stored_result(job_id)
                if result is not None:
                    self._deliver(result)


@contextmanager
def _registered(registry: dict[str, set["asyncio.Future[_T]"]], key: str) -> Iterator["asyncio.Future[_T]"]:
    """A new future in `registry` under `key` for the block's length."""
    future: asyncio.Future[_T] = asyncio.get_running_loop().create_future()
    members = registry.setdefault(key, set())
    members.add(future)
    try:
        yield future
    finally:
        members.discard(future)
        if not members and registry.get(key) is members:
            del registry[key]


def _lost(detail: str) -> TaskenvError:
    return TaskenvError(ErrorType.BAD_GATEWAY, detail)
