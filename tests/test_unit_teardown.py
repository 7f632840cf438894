"""A DELETE's removal of its container (api/teardown.py): re-run while its worker may have died,
never past twice the teardown wait, given up at once when the host has no live worker. Fake
dispatcher and a real listener's loss handling; fakeredis for the host's heartbeat."""

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

import fakeredis
import pytest

from taskenv.api import teardown
from taskenv.api.results import ResultListener
from taskenv.shared import keys
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.settings import Settings

WAIT_SEC = 0.3


class FakeDispatcher:
    """Each teardown call is answered as the next scripted reply says: "removed", "silent"
    (no answer until the wait is over: a dead worker), or a callable run meanwhile."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.calls = 0

    async def call(self, function: str, payload: Any, *, queue: str, wait_sec: float) -> dict[str, Any]:
        self.calls += 1
        reply = self.replies.pop(0) if self.replies else "removed"
        if callable(reply):
            reply()
            reply = "silent"
        if reply == "removed":
            return {"removed": True}
        await asyncio.sleep(wait_sec)
        raise TaskenvError(ErrorType.TIMEOUT, "No answer")


@pytest.fixture
async def state() -> SimpleNamespace:
    records = fakeredis.FakeAsyncRedis(decode_responses=True)
    await records.zadd(keys.HOSTS, {"a": time.time()})  # host a heartbeats
    settings = Settings(host_id="a", teardown_wait_sec=WAIT_SEC)
    return SimpleNamespace(settings=settings, records=records, listener=ResultListener(None))  # type: ignore[arg-type]


def lose(state: SimpleNamespace, kind: str, host: str = "a") -> None:
    event = {"kind": kind, "host": host, "worker": "w1", "jobs": "", "error": "gone"}
    asyncio.get_running_loop().call_soon(state.listener._loss, json.dumps(event).encode())


async def test_an_answered_teardown_is_removed(state):
    state.dispatcher = FakeDispatcher("removed")
    assert await teardown.remove_container(state, "e1", "a") == teardown.Teardown.REMOVED
    assert state.dispatcher.calls == 1


async def test_the_loss_of_a_worker_of_the_host_reruns_it_at_once(state):
    state.dispatcher = FakeDispatcher(lambda: lose(state, "worker_lost"), "removed")
    started = time.monotonic()
    assert await teardown.remove_container(state, "e1", "a") == teardown.Teardown.REMOVED
    assert state.dispatcher.calls == 2 and time.monotonic() - started < WAIT_SEC


async def test_a_loss_heard_during_the_rerun_of_a_silent_one_reruns_again(state):
    """The default timing: the teardown's wait ends before its worker's loss is noticed."""
    state.dispatcher = FakeDispatcher("silent", lambda: lose(state, "worker_lost"), "removed")
    assert await teardown.remove_container(state, "e1", "a") == teardown.Teardown.REMOVED
    assert state.dispatcher.calls == 3


async def test_a_loss_on_another_host_changes_nothing(state):
    state.dispatcher = FakeDispatcher(lambda: lose(state, "worker_lost", host="b"), "removed")
    started = time.monotonic()
    assert await teardown.remove_container(state, "e1", "a") == teardown.Teardown.REMOVED
    assert state.dispatcher.calls == 2 and time.monotonic() - started >= WAIT_SEC


async def test_silent_workers_are_given_up_on_after_two_waits(state):
    state.dispatcher = FakeDispatcher("silent", "silent", "silent")
    started = time.monotonic()
    assert await teardown.remove_container(state, "e1", "a") == teardown.Teardown.NO_ANSWER
    assert state.dispatcher.calls == 2 and time.monotonic() - started < 2 * WAIT_SEC + 0.2


async def test_no_live_worker_on_the_host_is_204_at_once(state):
    state.dispatcher = FakeDispatcher(lambda: lose(state, "host_lost"))
    assert await teardown.remove_container(state, "e1", "a") == teardown.Teardown.NO_WORKER
    await state.records.zrem(keys.HOSTS, "a")  # lost, or its last worker left
    state.dispatcher = FakeDispatcher()
    assert await teardown.remove_container(state, "e1", "a") == teardown.Teardown.NO_WORKER
    assert state.dispatcher.calls == 0


async def test_other_errors_reach_the_caller(state):
    async def refuse(*_: Any, **__: Any) -> dict[str, Any]:
        raise TaskenvError(ErrorType.BAD_GATEWAY, "Docker engine unreachable")

    state.dispatcher = SimpleNamespace(call=refuse)
    with pytest.raises(TaskenvError, match="unreachable"):
        await teardown.remove_container(state, "e1", "a")
