"""Operator commands send jobs to a host's workers by the API's own path (api/dispatch.py): the
same queue, admission, deadline, output cap and answer channel, so an operator's command runs
exactly as a client's would, on whichever host holds the environment, without an API process or
an execute token."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from taskenv.api.dispatch import Dispatcher
from taskenv.api.results import ResultListener
from taskenv.shared.redis import arq_client
from taskenv.shared.settings import Settings

SUBSCRIBE_TIMEOUT_SEC = 10.0


@asynccontextmanager
async def dispatcher(settings: Settings) -> AsyncIterator[Dispatcher]:
    arq = arq_client(settings)
    listener = ResultListener(arq)
    listening: asyncio.Task[None] | None = None
    try:
        await arq.ping()  # an unreachable Redis is the command's error, not a retry loop's
        listening = asyncio.create_task(listener.run(), name="taskenv-cli-results")
        async with asyncio.timeout(SUBSCRIBE_TIMEOUT_SEC):
            await listener.wait_subscribed()
        yield Dispatcher(
            arq,
            listener,
            max_queue_depth=settings.max_queue_depth,
            retry_after_sec=settings.busy_retry_after_sec,
        )
    finally:
        if listening is not None:
            listening.cancel()
            with suppress(asyncio.CancelledError):
                await listening
        await arq.aclose()
