"""The operator's view of a deployment's hosts, read from Redis: their list, their drains."""

import asyncio
import json
import time
from dataclasses import asdict

import typer

from taskenv.cli.failures import Refused
from taskenv.cli.table import table
from taskenv.shared import hosts, keys
from taskenv.shared.jobs import JOB_TIMEOUT_SEC
from taskenv.shared.redis import records_client
from taskenv.shared.settings import Settings


async def list_hosts(settings: Settings, as_json: bool) -> str:
    redis = records_client(settings)
    try:
        found = await hosts.list_hosts(redis, dead_after_sec=settings.host_dead_after_sec)
    finally:
        await redis.aclose()
    if as_json:
        return json.dumps(
            [{**{k: v for k, v in asdict(h).items() if k != "workers"}, "running": h.running,
              "capacity": h.capacity, "workers": [
                  {k: v for k, v in asdict(w).items() if k != "metrics"} for w in h.workers]}
             for h in found],
            indent=2,
        )  # fmt: skip
    rows = [
        [
            h.host,
            h.state + (" (draining)" if h.draining else ""),
            str(len(h.workers)),
            f"{h.ready}/{h.provisioning}",
            str(h.cap or "-"),
            f"{h.running}/{h.capacity}",
            f"{h.beat_age_sec:.1f} s ago" if h.beat_age_sec is not None else "-",
        ]
        for h in found
    ]
    header = ["HOST", "STATE", "WORKERS", "READY/PROVISIONING", "CAP", "RUNNING/CAPACITY", "LAST HEARTBEAT"]
    return table(rows, header) if rows else "no host has ever sent a heartbeat"


async def set_draining(settings: Settings, host: str, *, drain: bool) -> int:
    """Drain a host (no new provisions; its environments still served) and wait until no job
    runs on it; or end the drain. Only a host that has heartbeated: a typo must not look done."""
    redis = records_client(settings)
    try:
        if not await redis.sismember(keys.KNOWN_HOSTS, host):  # type: ignore[misc]
            raise Refused(f"no host {host!r} has ever sent a heartbeat here (see `taskenv hosts`)")
        await hosts.set_draining(redis, host, drain)
        if not drain:
            typer.echo(f"host {host} takes provisions again")
            return 0
        typer.echo(f"host {host} draining: no new provisions; waiting for its running jobs")
        deadline = time.monotonic() + JOB_TIMEOUT_SEC
        # One heartbeat first, so the counts read below were made after the drain began.
        await asyncio.sleep(settings.heartbeat_sec * 1.5)
        while time.monotonic() < deadline:
            listed = await hosts.list_hosts(redis, dead_after_sec=settings.host_dead_after_sec)
            found = {h.host: h for h in listed}
            running = found[host].running if host in found else 0
            if running == 0:
                typer.echo(f"host {host} drained: nothing running (its environments are still served)")
                return 0
            await asyncio.sleep(settings.heartbeat_sec)
        typer.echo(f"host {host}: jobs still running after {JOB_TIMEOUT_SEC} s", err=True)
        return 1
    finally:
        await redis.aclose()
