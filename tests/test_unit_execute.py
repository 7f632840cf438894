"""A command's deadline is absolute: one that passed in the queue is never started; and no
answer can fail to encode or escape arq's end hook."""

import time

import fakeredis
import pytest

from taskenv.shared import jobs
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.worker import context
from taskenv.worker.arq_worker import _finish_ops, _publish_result
from taskenv.worker.context import JobAnswer
from taskenv.worker.execute import run_command
from taskenv.worker.job_functions import job


class NoDocker:
    """Any use of the engine fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the engine was used ({name}) for a command past its deadline")


async def test_a_command_past_its_deadline_is_not_started():
    job = {
        "env_id": "e",
        "command": "touch /tmp/ran",
        "timeout_sec": 1,
        "deadline_at": time.time() - 0.01,
        "user": "1000:1000",
        "workdir": "/tmp",
        "output_limit": 1024,
    }
    with pytest.raises(TaskenvError) as caught:
        await run_command(NoDocker(), job)  # type: ignore[arg-type]
    assert caught.value.type == ErrorType.TIMEOUT and caught.value.extra == {"output": ""}


# Nothing a job returns may make its answer fail to encode, or escape arq's end hook.


async def test_an_answer_msgpack_cannot_carry_becomes_an_internal_error():
    @job
    async def forged(ctx: dict, payload: dict) -> dict:
        return {"exit_code": 2**64, "output": ""}

    ctx: dict = {"job_id": "j1"}
    result = await forged(ctx, {"env_id": "e"}, "reply-channel")
    assert result["error"]["type"] == ErrorType.APP
    answer = context.answer_of(ctx)
    assert answer is not None and answer.reply_to == "reply-channel"
    assert jobs.deserialize(answer.encoded) == result


async def test_the_end_hook_swallows_any_failure_and_still_accounts():
    class Broken:
        def pipeline(self, **_: object) -> object:
            raise ValueError("not a Redis error")

    accounted: list[bool] = []
    ctx = {"job_id": "j2", "redis": Broken()}
    context.set_answer(ctx, JobAnswer("chan", b"x", account=lambda: accounted.append(True)))
    await _publish_result(ctx)
    assert accounted == [True]

    def broken_account() -> None:
        raise RuntimeError("metrics failed")

    redis = fakeredis.FakeAsyncRedis()
    pubsub = redis.pubsub()
    await pubsub.subscribe("chan")
    ctx = {"job_id": "j3", "redis": redis}
    context.set_answer(ctx, JobAnswer("chan", b"answer", account=broken_account))
    await _publish_result(ctx)
    message = None
    for _ in range(100):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.01)
        if message:
            break
    assert message is not None and message["data"] == b"answer"
    await pubsub.aclose()
    await redis.aclose()


async def test_the_answer_round_trip_also_ends_the_job_as_arq_does():
    redis = fakeredis.FakeAsyncRedis()
    pubsub = redis.pubsub()
    await pubsub.subscribe("chan")
    for key in ("arq:job:j4", "arq:in-progress:j4", "arq:retry:j4"):
        await redis.set(key, b"1")
    await redis.zadd("arq:queue:q", {"j4": 1})
    await redis.zadd("taskenv:running", {"j4": 1})
    ctx = {"job_id": "j4", "redis": redis}
    context.set_answer(ctx, JobAnswer("chan", b"answer", commands=["taskenv:running"]))

    def finish(pipe: object) -> None:
        _finish_ops(pipe, "arq:queue:q", "j4", True, b"stored", 60, False, None, None)

    assert await _publish_result(ctx, finish=finish)
    assert await redis.get("arq:result:j4") == b"stored" and 0 < await redis.pttl("arq:result:j4") <= 60_000
    assert not await redis.exists("arq:job:j4", "arq:in-progress:j4", "arq:retry:j4")
    assert not await redis.zcard("arq:queue:q") and not await redis.zcard("taskenv:running")
    message = None
    for _ in range(100):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.01)
        if message:
            break
    assert message is not None and message["data"] == b"answer"
    await pubsub.aclose()
    await redis.aclose()
