"""Ctrl-C during a bench run: the first one stops the run, and its cleanup then runs to the end.

Python's default (asyncio.Runner) turns a second Ctrl-C into a KeyboardInterrupt wherever the
loop is, which abandons the cleanup half way and leaves environments running. Here every later
Ctrl-C only says what is going on; SIGKILL remains the way to abandon a run.
"""

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

STILL_CLEANING = (
    "still removing what the run made (Ctrl-C again changes nothing; kill -9 abandons it and"
    " leaves the rest running)"
)


async def first_interrupt_stops(work: Coroutine[Any, Any, None], say: Callable[[str], None]) -> None:
    """Run `work`; the first SIGINT cancels it (CancelledError comes out of here once its
    cleanup is done), every later one calls `say`."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_interrupt() -> None:
        nonlocal interrupted
        if interrupted:
            say(STILL_CLEANING)
            return
        interrupted = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        await task
    finally:
        loop.remove_signal_handler(signal.SIGINT)
