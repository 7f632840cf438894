"""The execute admission script: ready, a free slot, enqueued, in one round trip (fakeredis)."""

import time

import fakeredis
import pytest

from api.dispatch import Admission, Dispatcher, NotAdmitted
from shared import jobs, keys


class Listener:
    channel = "taskenv:reply:test"


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis()


async def _submit(dispatcher: Dispatcher, job_id: str, slots: int = 2) -> None:
    await dispatcher.submit(
        jobs.EXECUTE,
        {"command": "true"},
        queue="q",
        job_id=job_id,
        expires_sec=30,
        reply=True,
        admission=Admission("e1", slots, slot_until=time.time() + 30),
    )


async def test_a_ready_environment_takes_commands_up_to_its_slots(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    dispatcher = Dispatcher(redis, Listener())  # type: ignore[arg-type]
    await _submit(dispatcher, "j1")
    await _submit(dispatcher, "j2")
    with pytest.raises(NotAdmitted) as refused:
        await _submit(dispatcher, "j3")
    assert refused.value.reason == "busy"
    # Admitted jobs are arq jobs in the queue, announced on the wake list, holding a slot.
    assert await redis.zrange(keys.arq_queue("q"), 0, -1) == [b"j1", b"j2"]
    assert await redis.lrange(keys.wake("q"), 0, -1) == [b"j1", b"j2"]
    assert await redis.zcard(keys.inflight("e1")) == 2
    assert await redis.exists("arq:job:j3") == 0  # a refused command is not enqueued
    # A slot whose deadline passed frees itself.
    await redis.zadd(keys.inflight("e1"), {"j1": time.time() - 1})
    await _submit(dispatcher, "j4")


async def test_refusals_say_why(redis):
    dispatcher = Dispatcher(redis, Listener())  # type: ignore[arg-type]
    with pytest.raises(NotAdmitted) as missing:
        await _submit(dispatcher, "j1")
    assert missing.value.reason == "missing"
    await redis.hset(keys.environment("e1"), "state", "torn_down")
    with pytest.raises(NotAdmitted) as torn_down:
        await _submit(dispatcher, "j2")
    assert torn_down.value.reason == "torn_down"
    assert await redis.zcard(keys.arq_queue("q")) == 0


async def test_a_woken_job_is_claimed_for_its_popper_and_past_the_cap_left_to_the_pass(redis, monkeypatch):
    dispatcher = Dispatcher(redis, Listener())  # type: ignore[arg-type]
    monkeypatch.setattr(keys, "WAKE_LIST_MAX", 1)

    async def submit(job_id: str) -> None:
        await dispatcher.submit(
            jobs.TEARDOWN, {"env_id": "e1"}, queue="q", job_id=job_id, expires_sec=30, reply=False
        )

    await submit("j1")
    await submit("j2")
    # j1 is announced and claimed (arq's in-progress key): only the worker that pops it runs it,
    # and the claim outlasts any run it can still start.
    assert await redis.lrange(keys.wake("q"), 0, -1) == [b"j1"]
    assert await redis.pttl("arq:in-progress:j1") > (30 + jobs.JOB_TIMEOUT_SEC - 1) * 1000
    # j2 found the wake list full: queued unclaimed, so the workers' pass over the queue takes it.
    assert await redis.exists("arq:in-progress:j2") == 0
    assert await redis.zrange(keys.arq_queue("q"), 0, -1) == [b"j1", b"j2"]
