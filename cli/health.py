"""`taskenv worker --check`: is a worker process of this machine heartbeating? The compose
healthcheck of the worker service, and an operator's probe.

A worker counts when it belongs to this host id, its last heartbeat is more recent than a host's
dead-after, and its process runs here: the same mount namespace as this check (a container's
healthcheck runs in that container, whose worker shares the host's pid namespace).
"""

import os

from taskenv.cli.failures import Refused
from taskenv.shared import hosts
from taskenv.shared.redis import records_client
from taskenv.shared.settings import Settings


def _runs_here(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


async def check_worker(settings: Settings) -> str:
    redis = records_client(settings)
    try:
        found = await hosts.list_workers(redis)
    finally:
        await redis.aclose()
    mine = [w for w in found if w.host == settings.host_id and _runs_here(w.pid)]
    fresh = [w for w in mine if w.beat_age_sec < settings.host_dead_after_sec]
    if not fresh:
        silent = f" (last heartbeat {min(w.beat_age_sec for w in mine):.1f} s ago)" if mine else ""
        raise Refused(f"no worker of host {settings.host_id!r} heartbeats from this machine{silent}")
    return (
        f"worker pid {fresh[0].pid} of host {settings.host_id!r}: heartbeat {fresh[0].beat_age_sec:.1f} s ago"
    )
