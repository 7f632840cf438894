"""The reaper: a cron job on every host's own queue (and once at worker start) that fails
environments whose provision never ran, tears down expired ones, and removes containers
whose record is gone, failed or torn down.

It acts only on its own deployment's containers on its own host (their labels say whose they
are), and it never takes a store that looks wiped for one whose environments all ended: when
Redis has lost its data (restarted empty, or a wrong URL), every container's record is missing,
and removing them all would destroy every running environment. See `store_looks_wiped`.
"""

import logging
import time
from enum import StrEnum

import aiodocker
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis

from taskenv.shared import deployment, keys, store
from taskenv.shared.models import EnvironmentState
from taskenv.shared.settings import Settings
from taskenv.worker import containers, context, pod
from taskenv.worker.context import WorkerContext
from taskenv.worker.job_functions import (
    Ctx,
    fail_gone,
    remove_quietly,
)
from taskenv.worker.metrics import REGISTRY

log = logging.getLogger("taskenv.worker")

# More containers without a record than this, and more than a tenth of the host's records,
# is no crash's leftovers: the store was wiped.
UNKNOWN_CONTAINERS_TOLERATED = 5
_ENDED = (EnvironmentState.TORN_DOWN, EnvironmentState.FAILED)

PASSES = Counter("taskenv_reaper_passes", "Reaper passes run by this worker process", registry=REGISTRY)
REFUSALS = Counter(
    "taskenv_reaper_refusals",
    "Reaper passes that kept containers without a record because the store looked wiped",
    ["reason"],
    registry=REGISTRY,
)
KEPT = Gauge(
    "taskenv_reaper_kept_containers",
    "Containers without a record the last reaper pass kept because the store looked wiped",
    registry=REGISTRY,
)


class Wiped(StrEnum):
    """Why the store looks wiped."""

    # The deployment id this worker started with is gone from Redis, or another is there.
    MARKER_MISSING = "marker_missing"
    MARKER_CHANGED = "marker_changed"
    # Far more containers without a record than a crash could leave.
    TOO_MANY_UNKNOWN = "too_many_unknown"


def store_looks_wiped(remembered: str, held: str | None, unknown: int, records: int) -> Wiped | None:
    """The rule: the deployment id Redis holds is missing or not the one this worker started
    with, or more of the host's containers have no record than max(5, 10% of the host's
    records). A crash leaves a few containers without a record; a lost store leaves them all."""
    if held is None:
        return Wiped.MARKER_MISSING
    if held != remembered:
        return Wiped.MARKER_CHANGED
    if unknown > max(UNKNOWN_CONTAINERS_TOLERATED, records // 10):
        return Wiped.TOO_MANY_UNKNOWN
    return None


async def join_deployment(redis: Redis, settings: Settings) -> str:
    """The deployment this worker belongs to, for its whole life. A TASKENV_DEPLOYMENT that is
    not the one Redis holds stops the worker with that one line, before it touches anything."""
    try:
        joined = await deployment.join(redis, settings.deployment)
    except deployment.DeploymentMismatch as exc:
        raise SystemExit(f"taskenv worker: {exc}") from None
    log.info("deployment %s", joined)
    return joined


async def reap(ctx: Ctx) -> dict[str, int]:
    """The cron job: `reap_with` the process's context."""
    return await reap_with(context.of(ctx))


async def reap_with(worker: WorkerContext) -> dict[str, int]:
    """Cron: fail environments whose provision job never ran, tear down expired ones, and
    remove containers whose record is gone, failed or torn down (left by a crash or a lost
    teardown job)."""
    PASSES.inc()
    redis, settings = worker.records, worker.settings
    now = time.time()
    await _fail_stalled_provisions(redis, settings, now)
    expired = await _tear_down_expired(worker, now)
    orphans, vanished = await _reconcile(worker)
    if expired or orphans or vanished:
        log.info(
            "reaped %d expired environments and %d orphaned containers; %d environments failed"
            " because their container vanished",
            expired, orphans, vanished,
        )  # fmt: skip
    return {"expired": expired, "orphans": orphans, "vanished": vanished}


async def _fail_stalled_provisions(redis: Redis, settings: Settings, now: float) -> None:
    for env_id in await store.stalled_provisions(redis, now):
        error = "not provisioned in time: no host with room took it, or its worker died"
        if (
            await store.set_if_state(
                redis, env_id, EnvironmentState.PROVISIONING, state=EnvironmentState.FAILED, error=error
            )
            and settings.record_retention_sec
        ):
            # On no host, so no host's reaper will ever expire it: its record goes by itself.
            await redis.expire(keys.environment(env_id), settings.record_retention_sec)
        await store.provision_ran(redis, env_id)


async def _tear_down_expired(worker: WorkerContext, now: float) -> int:
    redis, settings = worker.records, worker.settings
    expired = 0
    for env_id in await store.expired(redis, settings.host_id, now):
        record = await store.load(redis, env_id)
        if record is not None:
            await store.tear_down(
                redis, record, error="expired: lifetime reached", retention_sec=settings.record_retention_sec
            )
        else:
            await redis.zrem(keys.expiry_index(settings.host_id), env_id)
        await remove_quietly(worker, env_id)
        expired += 1
    return expired


async def _reconcile(worker: WorkerContext) -> tuple[int, int]:
    """Remove this deployment's containers on this host whose environment ended (or whose
    record is gone, unless the store looks wiped), and fail ready environments whose container
    vanished. Returns (containers removed, environments failed)."""
    redis, docker, host, mine = worker.records, worker.docker, worker.settings.host_id, worker.deployment
    # The host's live environments are read before its containers are listed: one whose
    # provision ends in between is then listed with its container, never taken for vanished.
    indexed = list(await redis.zrange(keys.expiry_index(host), 0, -1))
    live = await store.states(redis, indexed)
    managed = await containers.managed_on_host(docker, host, mine)
    known = await store.states(redis, list(managed))
    # Read after the records: a store wiped before or while they were read has lost it by now.
    held = await deployment.current(redis)
    unknown = [env_id for env_id, state in known.items() if state is None]
    wiped = store_looks_wiped(mine, held, len(unknown), len(indexed)) if unknown else None
    KEPT.set(len(unknown) if wiped else 0)
    if wiped:
        _refuse(wiped, host, mine, len(unknown), len(indexed))
    # Failed and torn-down environments' containers go whatever the store looks like.
    ended = _ENDED if wiped else (None, *_ENDED)
    orphans = 0
    for env_id, state in known.items():
        if state in ended:
            orphans += await remove_quietly(worker, env_id)
    # Pieces of environments whose sandbox is gone (a provision that crashed half-way, a
    # removal cut short): services and volumes, found by their environment's label.
    pieces = set(await pod.environments_on_host(docker, host, mine)) - set(managed)
    for env_id, state in (await store.states(redis, sorted(pieces))).items():
        if state in ended:
            await remove_quietly(worker, env_id, teardown_script=False)
    vanished = 0
    for env_id, state in live.items():
        found = managed.get(env_id)
        if state == EnvironmentState.READY and (found is None or not found.running):
            why = await _why_stopped(docker, found.name if found else store.container_name(env_id))
            if why is not None:
                vanished += await fail_gone(redis, env_id, why)
    return orphans, vanished


def _refuse(why: Wiped, host: str, mine: str, unknown: int, records: int) -> None:
    REFUSALS.labels(why).inc()
    log.error(
        "reaper: the store looks wiped (%s): %d containers of deployment %s on host %s have no"
        " record, and Redis holds %d records of this host; kept them all. Restore Redis, or"
        " remove them: docker rm -f $(docker ps -aq --filter label=taskenv.deployment=%s"
        " --filter label=taskenv.host=%s)",
        why, unknown, mine, host, records, mine, host,
    )  # fmt: skip


async def _why_stopped(docker: aiodocker.Docker, name: str) -> str | None:
    try:
        return await containers.why_stopped(docker, name)
    except (aiodocker.DockerError, OSError):
        return None
