"""The execute admission script: ready, a free slot, enqueued, in one round trip (fakeredis)."""

import time

import fakeredis
import pytest

from taskenv.api.dispatch import Admission, Dispatcher, Idempotency, NotAdmitted, Replay
from taskenv.api.ratelimit import OrgRate
from taskenv.shared import commands, jobs, keys, scripts
from taskenv.shared.enqueue import Wake
from taskenv.shared.errors import ErrorType, TaskenvError


class Listener:
    channel = "taskenv:reply:test"


OFF = OrgRate(0, 1)


@pytest.fixture
def redis() -> fakeredis.FakeAsyncRedis:
    return fakeredis.FakeAsyncRedis()


def _dispatcher(redis: fakeredis.FakeAsyncRedis, max_queue_depth: int = 100) -> Dispatcher:
    return Dispatcher(redis, Listener(), max_queue_depth=max_queue_depth, retry_after_sec=1)  # type: ignore[arg-type]


async def _submit(
    dispatcher: Dispatcher,
    job_id: str,
    slots: int = 2,
    rate: OrgRate = OFF,
    idempotency: Idempotency | None = None,
) -> Replay | None:
    return await dispatcher.submit(
        jobs.EXECUTE,
        {"command": "true"},
        queue="q",
        job_id=job_id,
        expires_sec=30,
        reply=True,
        admission=Admission(
            "e1", slots, command_until=time.time() + 30, org="acme", rate=rate, idempotency=idempotency
        ),
    )


async def test_a_ready_environment_takes_commands_up_to_its_slots(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    dispatcher = _dispatcher(redis)
    await _submit(dispatcher, "j1")
    await _submit(dispatcher, "j2")
    with pytest.raises(NotAdmitted) as refused:
        await _submit(dispatcher, "j3")
    assert refused.value.reason == "busy"
    # Admitted jobs are arq jobs in the queue, announced on the wake list, holding a slot.
    assert await redis.zrange(keys.arq_queue("q"), 0, -1) == [b"j1", b"j2"]
    assert [Wake.decode(e).job_id for e in await redis.lrange(keys.wake("q"), 0, -1)] == ["j1", "j2"]
    assert await redis.zcard(keys.env_commands("e1")) == 2
    assert await redis.exists("arq:job:j3") == 0  # a refused command is not enqueued
    # A slot whose deadline passed frees itself.
    await redis.zadd(keys.env_commands("e1"), {"j1": time.time() - 1})
    await _submit(dispatcher, "j4")


async def test_refusals_say_why(redis):
    dispatcher = _dispatcher(redis)
    with pytest.raises(NotAdmitted) as missing:
        await _submit(dispatcher, "j1")
    assert missing.value.reason == "missing"
    await redis.hset(keys.environment("e1"), "state", "torn_down")
    with pytest.raises(NotAdmitted) as torn_down:
        await _submit(dispatcher, "j2")
    assert torn_down.value.reason == "torn_down"
    assert await redis.zcard(keys.arq_queue("q")) == 0


async def test_a_woken_job_is_claimed_for_its_popper_and_past_the_cap_left_to_the_pass(redis, monkeypatch):
    dispatcher = _dispatcher(redis)
    monkeypatch.setattr(keys, "WAKE_LIST_MAX", 1)

    async def submit(job_id: str) -> None:
        await dispatcher.submit(
            jobs.TEARDOWN, {"env_id": "e1"}, queue="q", job_id=job_id, expires_sec=30, reply=False
        )

    await submit("j1")
    await submit("j2")
    # j1 is announced and claimed (arq's in-progress key): only the worker that pops it runs it,
    # and the claim outlasts any run it can still start.
    assert [Wake.decode(e).job_id for e in await redis.lrange(keys.wake("q"), 0, -1)] == ["j1"]
    assert await redis.pttl("arq:in-progress:j1") > (30 + jobs.JOB_TIMEOUT_SEC - 1) * 1000
    # j2 found the wake list full: queued unclaimed, so the workers' pass over the queue takes it.
    assert await redis.exists("arq:in-progress:j2") == 0
    assert await redis.zrange(keys.arq_queue("q"), 0, -1) == [b"j1", b"j2"]


async def test_a_retry_of_the_same_call_after_a_lost_reply_is_queued_once(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    dispatcher = _dispatcher(redis)
    assert await _submit(dispatcher, "j1", slots=1) is None
    # The same job id again (redis-py retrying the script): queued, not refused as busy.
    assert await _submit(dispatcher, "j1", slots=1) is None
    assert await redis.zrange(keys.arq_queue("q"), 0, -1) == [b"j1"]
    assert await redis.zcard(keys.env_commands("e1")) == 1


async def test_an_org_over_its_rate_gets_429_with_retry_after(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    dispatcher = _dispatcher(redis)
    rate = OrgRate(per_sec=0.5, burst=2)
    await _submit(dispatcher, "j1", slots=10, rate=rate)
    await _submit(dispatcher, "j2", slots=10, rate=rate)
    with pytest.raises(TaskenvError) as refused:
        await _submit(dispatcher, "j3", slots=10, rate=rate)
    assert refused.value.status == 429 and refused.value.type == ErrorType.RATE_LIMIT
    # One token comes back in 2 s at 0.5/s.
    assert refused.value.headers == {"Retry-After": "2"}
    assert await redis.exists("arq:job:j3") == 0
    # The bucket refills with time.
    bucket = keys.org_rate("acme")
    await redis.hset(bucket, "at", str(time.time() - 2))
    await _submit(dispatcher, "j4", slots=10, rate=rate)


async def test_a_full_queue_refuses_every_kind_of_job(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    dispatcher = _dispatcher(redis, max_queue_depth=2)
    await _submit(dispatcher, "j1", slots=10)
    await dispatcher.submit(jobs.LOGS, {"env_id": "e1"}, queue="q", job_id="j2", expires_sec=30, reply=True)
    for function in (jobs.EXECUTE, jobs.PROVISION, jobs.TEARDOWN):
        with pytest.raises(TaskenvError) as refused:
            if function == jobs.EXECUTE:
                await _submit(dispatcher, "j3", slots=10)
            else:
                await dispatcher.submit(
                    function, {"env_id": "e1"}, queue="q", job_id="j3", expires_sec=30, reply=False
                )
        assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
    assert await redis.zcard(keys.arq_queue("q")) == 2
    assert await redis.zcard(keys.env_commands("e1")) == 1  # the refused execute took no slot


async def test_every_kind_of_job_expires(redis):
    """A job nobody runs (its API process died, no worker came) never stays queued forever:
    arq's job key carries an expiry (`_expires`) for every function."""
    await redis.hset(keys.environment("e1"), "state", "ready")
    dispatcher = _dispatcher(redis)
    await _submit(dispatcher, "exec")
    for function in (jobs.PROVISION, jobs.TEARDOWN, jobs.LOGS):
        await dispatcher.submit(
            function, {"env_id": "e1"}, queue="q", job_id=function, expires_sec=60, reply=False
        )
    for job_id in ("exec", jobs.PROVISION, jobs.TEARDOWN, jobs.LOGS):
        assert 0 < await redis.pttl(f"arq:job:{job_id}") <= 60_000, job_id


def _once(fingerprint: str = "f1", ttl_sec: int = 600) -> Idempotency:
    return Idempotency(keys.idempotency("e1", "k1"), fingerprint, ttl_sec)


async def test_an_idempotency_key_runs_its_command_once_and_replays_the_answer(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    dispatcher = _dispatcher(redis)
    assert await _submit(dispatcher, "j1", idempotency=_once()) is None
    record = keys.idempotency("e1", "k1")
    assert 590_000 < await redis.pttl(record) <= 600_000
    # A retry while the first runs: told which job to wait for, and registered for its answer.
    replay = await _submit(dispatcher, "j2", idempotency=_once())
    assert replay is not None and replay.job_id == "j1" and replay.result is None
    assert replay.until == pytest.approx(time.time() + 30, abs=2)
    assert await redis.hget(record, f"reply:{Listener.channel}") == b"1"
    assert await redis.zrange(keys.arq_queue("q"), 0, -1) == [b"j1"]  # not enqueued again
    # The worker stores the answer and sends it to the first caller and to the waiting retries.
    pubsub = redis.pubsub()
    await pubsub.subscribe(Listener.channel, "first")
    await pubsub.get_message(timeout=0.1)
    await pubsub.get_message(timeout=0.1)
    answer = jobs.serialize(jobs.ok("j1", {"exit_code": 0, "output": "once\n"}))
    await scripts.STORE_AND_PUBLISH.run(redis, idempotency=record, reply_channel="first", answer=answer)
    sent = [await pubsub.get_message(timeout=0.5) for _ in range(2)]
    assert sorted(m["channel"] for m in sent if m) == [b"first", Listener.channel.encode()]
    await pubsub.aclose()
    later = await _submit(dispatcher, "j3", idempotency=_once())
    assert later is not None and later.job_id == "j1" and later.result == answer
    # The same key with another body is refused; without a key, commands run as usual.
    with pytest.raises(NotAdmitted) as mismatch:
        await _submit(dispatcher, "j4", idempotency=_once("f2"))
    assert mismatch.value.reason == "mismatch"
    assert await _submit(dispatcher, "j5") is None


async def test_an_idempotency_key_lives_at_least_until_its_command_deadline(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    await _submit(_dispatcher(redis), "j1", idempotency=_once(ttl_sec=1))
    assert await redis.pttl(keys.idempotency("e1", "k1")) > 25_000  # the slot's 30 s


async def test_a_refused_request_does_not_use_its_idempotency_key(redis):
    dispatcher = _dispatcher(redis)
    await redis.hset(keys.environment("e1"), "state", "provisioning")
    with pytest.raises(NotAdmitted):
        await _submit(dispatcher, "j1", idempotency=_once())
    assert await redis.exists(keys.idempotency("e1", "k1")) == 0
    await redis.hset(keys.environment("e1"), "state", "ready")
    assert await _submit(dispatcher, "j2", idempotency=_once()) is None


async def test_an_admitted_command_carries_the_slots_it_took_for_its_worker_to_free(redis):
    await redis.hset(keys.environment("e1"), "state", "ready")
    await _submit(_dispatcher(redis), "j1")
    payload = jobs.deserialize(await redis.get("arq:job:j1"))["a"][0]
    taken = [slot for slot in commands.sets_of("e1", "acme", "") if await redis.zscore(slot, "j1")]
    assert payload["slots"] == taken == commands.sets_of("e1", "acme", "")
