"""A DELETE's removal of its environment's container, on the environment's host.

Removing is idempotent, unlike a command: a teardown whose worker may have died (announced
lost, or silent past the wait) runs again, on whichever live worker of the host takes it, so
that 204 means the container is gone. A re-run is a new job: the earlier one, if its worker
lives after all, finds the container gone or going and answers as well. With no worker of
the host alive, nothing can remove it now: the record is torn down already, and the host's
reaper removes the container when a worker of that host is back.
"""

import asyncio
from contextlib import suppress
from enum import StrEnum
from typing import Any

from taskenv.api.state import AppState
from taskenv.shared import hosts, jobs, keys
from taskenv.shared.errors import ErrorType, TaskenvError
from taskenv.shared.scripts import LossKind


class Teardown(StrEnum):
    """How a DELETE's removal of its container ended."""

    REMOVED = "removed"
    # No worker of the host is alive: its reaper removes the container when one is back.
    NO_WORKER = "no_worker"
    WORKER_LOST = "worker_lost"
    NO_ANSWER = "no_answer"
    QUEUE_FULL = "queue_full"


# How long a DELETE keeps trying, in teardown waits: the first run, and re-runs while its worker
# may have died (announced lost, or no answer within the wait) and the host still lives.
WAITS = 2
_RETRIED = (Teardown.WORKER_LOST, Teardown.NO_ANSWER)


async def remove_container(state: AppState, env_id: str, host: str, script_sec: float = 0.0) -> Teardown:
    """`script_sec`: how long its task's teardown script may run first (worker/environment_removal.py):
    each wait is that much longer, so a running script is never taken for a lost worker."""
    settings = state.settings
    loop = asyncio.get_running_loop()
    wait_sec = settings.teardown_wait_sec + script_sec
    deadline = loop.time() + WAITS * settings.teardown_wait_sec + script_sec
    outcome = Teardown.NO_ANSWER
    while (left := deadline - loop.time()) > 0:
        if not await hosts.host_alive(state.records, host, dead_after_sec=settings.host_dead_after_sec):
            return Teardown.NO_WORKER
        outcome = await _once(state, env_id, host, min(left, wait_sec))
        if outcome not in _RETRIED:
            return outcome
    return outcome


async def _once(state: AppState, env_id: str, host: str, wait_sec: float) -> Teardown:
    """One teardown job on the host's queue, answered by its worker or cut short by the loss of
    any worker of the host (the one running it may be lost without having listed it yet)."""
    with state.listener.losses(host) as lost:
        removal = asyncio.ensure_future(
            state.dispatcher.call(
                jobs.TEARDOWN,
                jobs.EnvJob(env_id=env_id),
                queue=keys.host_queue(host),
                wait_sec=wait_sec,
            )
        )
        try:
            either: set[asyncio.Future[Any]] = {removal, lost}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not removal.done():
                removal.cancel()
                with suppress(asyncio.CancelledError, TaskenvError):
                    await removal
    if removal.done() and not removal.cancelled() and removal.exception() is None:
        return Teardown.REMOVED
    if lost.done():
        return Teardown.NO_WORKER if lost.result() == LossKind.HOST_LOST else Teardown.WORKER_LOST
    return _outcome(removal.exception())


def _outcome(error: BaseException | None) -> Teardown:
    if isinstance(error, TaskenvError) and error.type == ErrorType.TIMEOUT:
        return Teardown.NO_ANSWER
    if isinstance(error, TaskenvError) and error.type == ErrorType.RATE_LIMIT:
        return Teardown.QUEUE_FULL
    raise error or RuntimeError("teardown ended without an answer")
