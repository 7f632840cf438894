"""A small job's record rides its wake (shared/enqueue.py `Wake`), and the worker that pops it
runs it through arq's own `run_job` with arq's read of the job answered from the wake
(worker/arq_worker.py `_CarriedRead`): no round trip, and the same run as a read from Redis.
A large record, a stale one, or any other transaction goes to Redis (fakeredis)."""

import asyncio
import time
from typing import Any

import fakeredis
import pytest
from arq.constants import job_key_prefix, retry_key_prefix
from arq.worker import func

from taskenv.shared import jobs, keys
from taskenv.shared.enqueue import WAKE_CARRY_MAX_BYTES, Wake, enqueue
from taskenv.worker import arq_worker

QUEUE = "q"


@pytest.fixture
def redis() -> arq_worker._WakeFedRedis:
    fake = fakeredis.FakeAsyncRedis()
    return arq_worker._WakeFedRedis(
        fake.connection_pool, job_serializer=jobs.serialize, job_deserializer=jobs.deserialize
    )


def test_an_entry_round_trips_and_anything_else_is_refused() -> None:
    assert Wake.decode(Wake("j1").encode()) == Wake("j1")
    assert Wake.decode(Wake("j1", b"\x00rec", 12).encode()) == Wake("j1", b"\x00rec", 12)
    # A bare uuid hex id, as enqueuers pushed before entries carried records, is still a wake.
    assert Wake.decode(b"0123456789abcdef0123456789abcdef") == Wake("0123456789abcdef0123456789abcdef")
    for garbage in (b"j1", b"\x92\xa2j1\x01", b"\x93\xa2j1\xa1x\x01", b"\xc1", b"", b"0123456789ABCDEF" * 2):
        with pytest.raises(ValueError):
            Wake.decode(garbage)


async def _enqueued(redis: Any, job_id: str, command: str) -> Wake:
    payload = {"env_id": "e", "command": command}
    await enqueue(redis, function=jobs.EXECUTE, payload=payload, queue=QUEUE, job_id=job_id,
                  expires_sec=30, queue_bound=0)  # fmt: skip
    (entry,) = await redis.lpop(keys.wake(QUEUE), 1)
    return Wake.decode(entry)


async def test_a_small_record_rides_its_wake_and_a_large_one_does_not(redis: Any) -> None:
    small = await _enqueued(redis, "j1", "true")
    assert small.record == await redis.get(job_key_prefix + "j1")
    assert small.expires_ms > time.time() * 1000 + 29_000
    large = await _enqueued(redis, "j2", "x" * WAKE_CARRY_MAX_BYTES)
    assert large == Wake("j2")


def _worker(redis: Any, ran: list[Any]) -> arq_worker.WakeableWorker:
    async def execute(ctx: dict[str, Any], payload: Any, **_: Any) -> str:
        ran.append((payload, ctx["job_try"]))
        return "done"

    worker = arq_worker.WakeableWorker(
        functions=[func(execute, name=jobs.EXECUTE, max_tries=1)], queue_name=keys.arq_queue(QUEUE),
        redis_pool=redis, ctx={"redis": redis}, max_jobs=4, max_tries=1, retry_jobs=False,
        wake_key=keys.wake(QUEUE), idle_wait_sec=1, job_serializer=jobs.serialize,
        job_deserializer=jobs.deserialize, log_results=False, handle_signals=False,
    )  # fmt: skip
    worker.on_job_end = None  # the answer's round trip is tested elsewhere: arq's own end here
    return worker


async def _run(worker: arq_worker.WakeableWorker, wake: Wake) -> None:
    await worker._run_woken(wake.encode())
    async with asyncio.timeout(5):
        await asyncio.gather(*worker.tasks.values())


async def test_a_carried_record_is_run_without_reading_it(redis: Any) -> None:
    ran: list[Any] = []
    wake = await _enqueued(redis, "j1", "true")
    # Gone from Redis, the job still runs from its wake: arq's read was never sent.
    await redis.delete(job_key_prefix + "j1")
    await _run(_worker(redis, ran), wake)
    assert ran == [({"env_id": "e", "command": "true"}, 1)]
    assert not await redis.exists(retry_key_prefix + "j1")
    assert arq_worker._CARRIED.get() is None  # nothing left for this task's later transactions


async def test_a_stale_or_absent_record_is_read_as_arq_reads_it(redis: Any) -> None:
    ran: list[Any] = []
    worker = _worker(redis, ran)
    wake = await _enqueued(redis, "j1", "true")
    await redis.delete(job_key_prefix + "j1")
    # Past its expiry the carried record is not used: arq reads the job, finds it expired and
    # does not run it.
    await _run(worker, wake._replace(expires_ms=int(time.time() * 1000) - 1))
    large = await _enqueued(redis, "j2", "x" * WAKE_CARRY_MAX_BYTES)
    await _run(worker, large)
    assert ran == [({"env_id": "e", "command": "x" * WAKE_CARRY_MAX_BYTES}, 1)]


async def test_any_other_transaction_goes_to_redis(redis: Any) -> None:
    token = arq_worker._CARRIED.set(Wake("j1", b"record", 0))
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.get(job_key_prefix + "j1")
            pipe.set("other", "1")
            assert await pipe.execute() == [None, True]
    finally:
        arq_worker._CARRIED.reset(token)
    assert await redis.get("other") == b"1"
