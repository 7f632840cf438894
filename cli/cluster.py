"""The operator's view of a deployment, read from Redis: hosts, environments, drains."""

import asyncio
import json
import time
from dataclasses import asdict
from typing import Any

import typer

from shared import hosts, keys
from shared.jobs import JOB_TIMEOUT_SEC
from shared.redis import records_client
from shared.settings import Settings

_ENV_FIELDS = ("id", "org", "workspace", "state", "host", "task_ref", "created_at", "expires_at", "error")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


async def list_hosts(settings: Settings, as_json: bool) -> str:
    redis = records_client(settings)
    try:
        found = await hosts.hosts(redis, dead_after_sec=settings.host_dead_after_sec)
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
    return _table(rows, header) if rows else "no host has ever sent a heartbeat"


async def environments(redis: Any) -> list[dict[str, str]]:
    """Every environment record, across hosts, orgs and workspaces (a SCAN: an operator's tool)."""
    ids = [
        key.removeprefix(keys.environment(""))
        async for key in redis.scan_iter(keys.environment("*"), count=1000)
    ]
    async with redis.pipeline(transaction=False) as pipe:
        for env_id in ids:
            pipe.hmget(keys.environment(env_id), list(_ENV_FIELDS))
        rows = await pipe.execute()
    found = [dict(zip(_ENV_FIELDS, row, strict=True)) for row in rows if row[0] is not None]
    return sorted(found, key=lambda r: float(r["created_at"] or 0))


async def list_environments(
    settings: Settings, *, host: str | None, state: str | None, org: str | None, as_json: bool
) -> str:
    redis = records_client(settings)
    try:
        found = await environments(redis)
    finally:
        await redis.aclose()
    found = [
        r
        for r in found
        if (host is None or r["host"] == host)
        and (state is None or r["state"] == state)
        and (org is None or r["org"] == org)
    ]
    if as_json:
        return json.dumps(found, indent=2)
    now = time.time()
    rows = [
        [
            r["id"],
            r["state"],
            r["host"] or "-",
            f"{r['org']}/{r['workspace']}",
            r["task_ref"] or "",
            f"{(now - float(r['created_at'] or now)) / 60:.0f} min",
            (r["error"] or "")[:60],
        ]
        for r in found
    ]
    return _table(rows, ["ID", "STATE", "HOST", "ORG/WORKSPACE", "TASK", "AGE", "ERROR"]) if rows else "none"


async def set_draining(settings: Settings, *, drain: bool) -> int:
    """Drain this host (no new provisions; its environments still served) and wait until no job
    runs on it; or end the drain."""
    host = settings.host_id
    redis = records_client(settings)
    try:
        await hosts.set_draining(redis, host, drain)
        if not drain:
            typer.echo(f"host {host} takes provisions again")
            return 0
        typer.echo(f"host {host} draining: no new provisions; waiting for its running jobs")
        deadline = time.monotonic() + JOB_TIMEOUT_SEC
        # One heartbeat first, so the counts read below were made after the drain began.
        await asyncio.sleep(settings.heartbeat_sec * 1.5)
        while time.monotonic() < deadline:
            found = {h.host: h for h in await hosts.hosts(redis, dead_after_sec=settings.host_dead_after_sec)}
            running = found[host].running if host in found else 0
            if running == 0:
                typer.echo(f"host {host} drained: nothing running (its environments are still served)")
                return 0
            await asyncio.sleep(settings.heartbeat_sec)
        typer.echo(f"host {host}: jobs still running after {JOB_TIMEOUT_SEC} s", err=True)
        return 1
    finally:
        await redis.aclose()
