"""Ctrl-C in a bench run: the first stops it, a second one during cleanup does not abandon the
cleanup (a second KeyboardInterrupt did, leaving environments running). Real SIGINTs, sent to
this process while its event loop runs."""

import asyncio
import os
import signal

import pytest

from taskenv.bench.interrupt import STILL_CLEANING, first_interrupt_stops
from taskenv.bench.ledger import complete


async def test_a_second_interrupt_during_cleanup_changes_nothing():
    started, cleaned = asyncio.Event(), asyncio.Event()
    said: list[str] = []

    async def cleanup() -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again, while cleaning up
        await asyncio.sleep(0.2)
        cleaned.set()

    async def run() -> None:
        try:
            started.set()
            await asyncio.sleep(3600)
        finally:
            await complete(cleanup())

    running = asyncio.ensure_future(first_interrupt_stops(run(), said.append))
    await started.wait()
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, 10)
    assert cleaned.is_set() and said == [STILL_CLEANING]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # given back
