"""A worker process's membership: its heartbeat, its host's drain flag and cap, and the sweep
that notices lost hosts and workers (shared/hosts.py says what a loss does).

`beat` and `sweep` run in the heartbeat's own thread (worker/heartbeat.py), with that thread's
Redis client; everything else runs on the job loop. What crosses between them is either
replaced whole (the running jobs, a counter of drain requests) or handed over with
`call_soon_threadsafe` (`apply`), so no lock is needed.
"""

import logging
import os
import secrets
import time
from collections.abc import Callable

from redis.asyncio import Redis

from taskenv.shared import hosts
from taskenv.shared.settings import Settings
from taskenv.worker.arq_worker import WakeableWorker

log = logging.getLogger("taskenv.worker")


class Membership:
    def __init__(
        self,
        settings: Settings,
        workers: list[WakeableWorker],
        provisions: WakeableWorker,
        metrics: Callable[[], str] = lambda: "",
    ) -> None:
        self.settings = settings
        self.workers = workers
        self.provisions = provisions
        self.metrics = metrics
        self.worker_id = f"{settings.host_id}:{os.getpid()}:{secrets.token_hex(3)}"
        self.started_at = time.time()
        # Written on the job loop only.
        self.draining = False
        self.environments = 0
        # SIGUSR1s received (job loop) and sent with a beat (heartbeat thread): counters, so a
        # request that arrives while a beat is on its way is not lost.
        self._drains_requested = 0
        self._drains_sent = 0

    def running_jobs(self) -> list[str]:
        """Safe from any thread: each worker's set of running jobs is replaced, never changed."""
        return [job_id for worker in self.workers for job_id in worker.running]

    def request_drain(self) -> None:
        """SIGUSR1: drain this worker's whole host (all its workers stop taking provisions) from
        the next beat on."""
        self._drains_requested += 1

    def saw_environments(self, count: int) -> None:
        """A provision's claim counted the host's environments: pause at the cap now, not at
        the next beat."""
        self.environments = count
        self._steer()

    def apply(self, view: hosts.HostView) -> None:
        """What a beat learnt about the host, on the job loop."""
        if view.draining != self.draining:
            log.info(
                "host %s %s", self.settings.host_id, "draining" if view.draining else "taking provisions"
            )
        self.draining, self.environments = view.draining, view.environments
        self._steer()

    def _steer(self) -> None:
        self.provisions.pause(self.draining or self.environments >= self.settings.host_max_environments)

    async def beat(self, redis: Redis) -> hosts.HostView:
        requested = self._drains_requested
        drain = requested > self._drains_sent
        view = await hosts.beat(
            redis,
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
            self._drains_sent = requested
            log.info("host %s draining: no new provisions", self.settings.host_id)
        return view

    async def sweep(self, redis: Redis) -> None:
        loss = await hosts.sweep(redis, dead_after_sec=self.settings.host_dead_after_sec)
        for worker_id in loss.workers:
            log.warning("worker %s lost: no heartbeat for %g s", worker_id, self.settings.host_dead_after_sec)
        for host, failed in loss.hosts.items():
            log.warning("host %s lost: %d environments failed", host, failed)

    async def leave(self, redis: Redis) -> None:
        settings = self.settings
        remaining = await hosts.leave(
            redis, self.worker_id, settings.host_id, dead_after_sec=settings.host_dead_after_sec
        )
        if remaining == 0:
            log.info("host %s stopped: its last worker left", settings.host_id)
