"""The membership heartbeat in a thread of its own, with its own event loop and Redis client.

A host is declared lost when its workers have not beaten for `TASKENV_HOST_DEAD_AFTER_SEC`,
and a loss fails every environment on it. The job loop is the sandboxes' to load: a command
flooding output keeps it busy, and a beat waiting behind that work would let one tenant get the
whole host declared lost. In its own thread the beat waits only for the interpreter's lock,
which a busy thread hands over every few milliseconds (`sys.getswitchinterval`).

The thread reads the job loop's state only as snapshots that are swapped whole, never
mutated (`Membership.running_jobs`), and hands what a beat learnt back with
`call_soon_threadsafe`. Each beat also measures how late the job loop runs a callback, so a
starved loop shows in the metrics even though it can no longer delay the beat.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress

from redis.asyncio import Redis

from taskenv.shared.redis import records_client
from taskenv.shared.settings import Settings
from taskenv.worker import metrics
from taskenv.worker.membership import Membership

log = logging.getLogger("taskenv.worker")


class Heartbeat:
    def __init__(self, settings: Settings, membership: Membership) -> None:
        self.settings = settings
        self.membership = membership
        self._jobs_loop = asyncio.get_running_loop()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._started: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name="taskenv-heartbeat", daemon=True)
        self._last_beat: float | None = None
        self._worst = 0.0

    async def start(self) -> None:
        """Start beating; returns after the first beat (which raises if it failed)."""
        self._thread.start()
        await asyncio.wrap_future(self._started)

    def wake(self) -> None:
        """Beat now (from any thread): a drain was asked for."""
        if self._loop is not None and self._wake is not None:
            with suppress(RuntimeError):  # the thread has ended: nothing to wake
                self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop beating and wait (bounded) for the thread to end."""
        self._stopping = True
        self.wake()
        await asyncio.to_thread(self._thread.join, self.settings.heartbeat_sec + 5)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        redis = records_client(self.settings)
        try:
            try:
                await self._beat(redis)
            except BaseException as exc:
                self._started.set_exception(exc)
                return
            self._started.set_result(None)
            while not self._stopping:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.heartbeat_sec)
                self._wake.clear()
                if self._stopping:
                    break
                try:
                    await self._beat(redis)
                    await self.membership.sweep(redis)
                except Exception as exc:
                    log.warning("heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)
        finally:
            await redis.aclose()

    async def _beat(self, redis: Redis) -> None:
        self._probe_jobs_loop()
        view = await self.membership.beat(redis)
        self._to_jobs_loop(self.membership.apply, view)
        self._measure(time.monotonic())

    def _to_jobs_loop(self, callback: Callable[..., object], *args: object) -> None:
        with suppress(RuntimeError):  # the job loop has closed: the process is ending
            self._jobs_loop.call_soon_threadsafe(callback, *args)

    def _measure(self, now: float) -> None:
        if self._last_beat is not None:
            interval = now - self._last_beat
            metrics.HEARTBEAT_INTERVAL_SECONDS.observe(interval)
            self._worst = max(self._worst, interval)
            metrics.HEARTBEAT_WORST_INTERVAL_SECONDS.set(self._worst)
            if interval > 2 * self.settings.heartbeat_sec:
                log.warning(
                    "heartbeat late: %.2f s since the last one (every %g s; lost after %g s)",
                    interval,
                    self.settings.heartbeat_sec,
                    self.settings.host_dead_after_sec,
                )
        self._last_beat = now

    def _probe_jobs_loop(self) -> None:
        sent = time.monotonic()
        self._to_jobs_loop(lambda: metrics.EVENT_LOOP_LAG_SECONDS.observe(time.monotonic() - sent))
