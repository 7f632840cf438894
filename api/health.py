"""For load balancers and orchestrators: liveness, readiness, and the API's share of watching
for lost hosts (any process may sweep; shared/hosts.py makes sure only one acts per loss)."""

import asyncio
import logging

from redis.asyncio import Redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from taskenv.api.state import app_state
from taskenv.shared import hosts, keys
from taskenv.shared.settings import Settings

log = logging.getLogger("taskenv.api")

READY_PROBE_TTL_MS = 10_000


async def healthz(request: Request) -> Response:
    """The process answers: nothing else is checked, so a Redis outage does not restart it."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready to serve: Redis takes writes and at least one host has a live worker. A ping is not
    enough: a Redis out of memory, read-only or failing to persist still answers it, while
    every request needing a write fails. The probe writes one small key, expiring at once."""
    state = app_state(request)
    try:
        async with asyncio.timeout(2):
            await state.records.set(keys.READY_PROBE, "1", px=READY_PROBE_TTL_MS)
            live = await hosts.live_hosts(state.records, dead_after_sec=state.settings.host_dead_after_sec)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "redis": f"{type(exc).__name__}: {exc}"}, 503)
    if live == 0:
        return JSONResponse({"status": "unavailable", "redis": "ok", "live_hosts": 0}, 503)
    return JSONResponse({"status": "ready", "redis": "ok", "live_hosts": live})


async def sweep_forever(redis: Redis, settings: Settings) -> None:
    """Notice lost hosts and workers even when no worker is left to notice them."""
    while True:
        try:
            loss = await hosts.sweep(redis, dead_after_sec=settings.host_dead_after_sec)
            for host, failed in loss.hosts.items():
                log.warning("host %s lost: %d environments failed", host, failed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("sweep for lost hosts failed (%s: %s)", type(exc).__name__, exc)
        await asyncio.sleep(settings.heartbeat_sec)
