"""The reaper: a cron job on every host's own queue (and once at worker start) that fails
environments whose provision never ran, tears down expired ones, and removes containers
whose record is gone, failed or torn down."""

import logging
import time

import aiodocker

from shared import keys, store
from shared.models import EnvironmentState
from worker import containers
from worker.jobs import Ctx, _docker, _records, _settings, fail_gone, remove_quietly

log = logging.getLogger("taskenv.worker")


async def reap(ctx: Ctx) -> dict[str, int]:
    """Cron: fail environments whose provision job never ran, tear down expired ones, and
    remove containers whose record is gone, failed or torn down (left by a crash or a lost
    teardown job)."""
    redis, docker, settings = _records(ctx), _docker(ctx), _settings(ctx)
    now, host = time.time(), settings.host_id
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
    expired = 0
    for env_id in await store.expired(redis, host, now):
        record = await store.get(redis, env_id)
        if record is not None:
            await store.tear_down(
                redis, record, error="expired: lifetime reached", retention_sec=settings.record_retention_sec
            )
        else:
            await redis.zrem(keys.expiry_index(host), env_id)
        await remove_quietly(docker, store.container_name(env_id))
        expired += 1
    # The host's live environments are read before its containers are listed: one whose
    # provision ends in between is then listed with its container, never taken for vanished.
    live = await store.states(redis, list(await redis.zrange(keys.expiry_index(host), 0, -1)))
    managed = await containers.managed_on_host(docker, host)
    orphans = 0
    gone = (None, EnvironmentState.TORN_DOWN, EnvironmentState.FAILED)
    for env_id, state in (await store.states(redis, list(managed))).items():
        if state in gone:
            orphans += await remove_quietly(docker, managed[env_id].name)
    vanished = 0
    for env_id, state in live.items():
        found = managed.get(env_id)
        if state == EnvironmentState.READY and (found is None or not found.running):
            why = await _why_stopped(docker, found.name if found else store.container_name(env_id))
            if why is not None:
                vanished += await fail_gone(redis, env_id, why)
    if expired or orphans or vanished:
        log.info(
            "reaped %d expired environments and %d orphaned containers; %d environments failed"
            " because their container vanished",
            expired, orphans, vanished,
        )  # fmt: skip
    return {"expired": expired, "orphans": orphans, "vanished": vanished}


async def _why_stopped(docker: aiodocker.Docker, name: str) -> str | None:
    try:
        return await containers.why_stopped(docker, name)
    except (aiodocker.DockerError, OSError):
        return None
