"""A worker process's membership: its heartbeat, its host's drain flag and cap, and the sweep
that notices lost hosts and workers (shared/hosts.py says what a loss does)."""

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from contextlib import suppress

from redis.asyncio import Redis

from shared import hosts
from shared.settings import Settings
from worker.runner import WakeableWorker

log = logging.getLogger("taskenv.worker")


class Membership:
    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        workers: list[WakeableWorker],
        provisions: WakeableWorker,
        metrics: Callable[[], str] = lambda: "",
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.workers = workers
        self.provisions = provisions
        self.metrics = metrics
        self.worker_id = f"{settings.host_id}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = time.time()
        self.draining = False
        self.environments = 0
        self._drain_requested = False
        self._wake = asyncio.Event()

    def running_jobs(self) -> list[str]:
        return [job_id for w in self.workers for job_id, task in w.tasks.items() if not task.done()]

    def request_drain(self) -> None:
        """SIGUSR1: drain this worker's whole host (all its workers stop taking provisions)."""
        self._drain_requested = True
        self._wake.set()

    def saw_environments(self, count: int) -> None:
        """A provision's claim counted the host's environments: pause at the cap now, not at
        the next beat."""
        self.environments = count
        self._steer()

    def _steer(self) -> None:
        self.provisions.pause(self.draining or self.environments >= self.settings.host_max_environments)

    async def beat(self) -> None:
        drain = self._drain_requested
        view = await hosts.beat(
            self.redis,
            hosts.Beat(
                worker_id=self.worker_id,
                host=self.settings.host_id,
                pid=os.getpid(),
                started_at=self.started_at,
                max_jobs=self.settings.worker_max_jobs,
                running_jobs=self.running_jobs(),
                metrics=self.metrics(),
                drain=drain,
            ),
            dead_after_sec=self.settings.host_dead_after_sec,
            cap=self.settings.host_max_environments,
        )
        if drain:
            self._drain_requested = False
            log.info("host %s draining: no new provisions", self.settings.host_id)
        if view.draining != self.draining:
            log.info(
                "host %s %s", self.settings.host_id, "draining" if view.draining else "taking provisions"
            )
        self.draining, self.environments = view.draining, view.environments
        self._steer()

    async def sweep(self) -> None:
        loss = await hosts.sweep(self.redis, dead_after_sec=self.settings.host_dead_after_sec)
        for worker_id in loss.workers:
            log.warning("worker %s lost: no heartbeat for %g s", worker_id, self.settings.host_dead_after_sec)
        for host, failed in loss.hosts.items():
            log.warning("host %s lost: %d environments failed", host, failed)

    async def run(self) -> None:
        """Beat and sweep every `heartbeat_sec` until cancelled; Redis outages are waited out."""
        while True:
            try:
                await self.beat()
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)
            self._wake.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.heartbeat_sec)

    async def leave(self) -> None:
        settings = self.settings
        remaining = await hosts.leave(
            self.redis, self.worker_id, settings.host_id, dead_after_sec=settings.host_dead_after_sec
        )
        if remaining == 0:
            log.info("host %s stopped: its last worker left", settings.host_id)
