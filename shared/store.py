"""Environment records in Redis: one hash per environment plus the indexes that find it.

Both sides write here: the API creates records and tears them down, workers move them from
`provisioning` to `ready` or `failed`. State changes are compare-and-set scripts so a teardown
racing a provision can never be overwritten by it.
"""

import math
import time
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.models import Environment, EnvironmentPage, EnvironmentState, EnvironmentStatus
from shared.tasks import TaskSpec

Record = dict[str, str]

_SET_IF_STATE = """
if redis.call('HGET', KEYS[1], 'state') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

_TEAR_DOWN = """
local prev = redis.call('HGET', KEYS[1], 'state')
if (not prev) or prev == 'torn_down' then return prev end
redis.call('HSET', KEYS[1], 'state', 'torn_down')
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[1]) end
return prev
"""


async def create(
    redis: Redis,
    *,
    env_id: str,
    org: str,
    workspace: str,
    task_ref: str,
    spec: TaskSpec,
    token_hash: str,
    queue: str,
    lifetime_sec: int,
    provision_timeout_sec: float,
) -> Record:
    now = time.time()
    record: Record = {
        "id": env_id,
        "org": org,
        "workspace": workspace,
        "task_ref": task_ref,
        "state": EnvironmentState.PROVISIONING,
        "created_at": repr(now),
        "expires_at": repr(now + lifetime_sec),
        "error": "",
        "instruction": spec.instruction or "",
        "token_hash": token_hash,
        "queue": queue,
        "spec": spec.model_dump_json(),
    }
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(keys.environment(env_id), mapping=record)
        pipe.zadd(keys.workspace_index(org, workspace), {env_id: now})
        pipe.set(keys.execute_token(token_hash), env_id, ex=lifetime_sec + 3600)
        pipe.zadd(keys.expiry_index(queue), {env_id: now + lifetime_sec})
        pipe.zadd(keys.provisioning_index(queue), {env_id: now + provision_timeout_sec})
        await pipe.execute()
    return record


def container_name(env_id: str) -> str:
    """Deterministic, so teardown finds a container even while its provision is still running."""
    return f"taskenv-{env_id}"


async def get(redis: Redis, env_id: str) -> Record | None:
    record = await redis.hgetall(keys.environment(env_id))  # type: ignore[misc]
    return record or None


async def states(redis: Redis, env_ids: list[str]) -> dict[str, str | None]:
    """Each environment's state (None when its record is gone), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for env_id in env_ids:
            pipe.hget(keys.environment(env_id), "state")
        found = await pipe.execute()
    return dict(zip(env_ids, found, strict=True))


async def release_exec(redis: Redis, env_id: str, job_id: str) -> None:
    await redis.zrem(keys.inflight(env_id), job_id)


async def set_if_state(redis: Redis, env_id: str, expected: EnvironmentState, **fields: str) -> bool:
    """Write `fields` only if the record is still in state `expected`."""
    args: list[str] = [expected]
    for name, value in fields.items():
        args += [name, value]
    changed = await redis.eval(_SET_IF_STATE, 1, keys.environment(env_id), *args)  # type: ignore[misc]
    return bool(changed)


async def tear_down(redis: Redis, record: Record, *, error: str = "", retention_sec: int) -> str | None:
    """Mark torn down and drop it from the live indexes; returns the state it was in before."""
    env_id = record["id"]
    previous = await redis.eval(_TEAR_DOWN, 1, keys.environment(env_id), error)  # type: ignore[misc]
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.expiry_index(record["queue"]), env_id)
        pipe.zrem(keys.provisioning_index(record["queue"]), env_id)
        pipe.delete(keys.inflight(env_id))
        if retention_sec:
            pipe.expire(keys.environment(env_id), retention_sec)
            pipe.expire(keys.execute_token(record["token_hash"]), retention_sec)
        await pipe.execute()
    return str(previous) if previous is not None else None


async def expired(redis: Redis, queue: str, now: float) -> list[str]:
    return list(await redis.zrangebyscore(keys.expiry_index(queue), "-inf", now))


async def stalled_provisions(redis: Redis, queue: str, now: float) -> list[str]:
    return list(await redis.zrangebyscore(keys.provisioning_index(queue), "-inf", now))


async def provision_ran(redis: Redis, queue: str, env_id: str) -> None:
    await redis.zrem(keys.provisioning_index(queue), env_id)


_LIST_FIELDS = ("id", "state", "task_ref", "created_at", "expires_at", "error", "instruction")


async def list_page(
    redis: Redis,
    org: str,
    workspace: str,
    *,
    states: set[EnvironmentState],
    page: int,
    limit: int,
) -> EnvironmentPage:
    index = keys.workspace_index(org, workspace)
    ids = await redis.zrevrange(index, 0, -1)
    async with redis.pipeline(transaction=False) as pipe:
        for env_id in ids:
            pipe.hmget(keys.environment(env_id), list(_LIST_FIELDS))
        rows = await pipe.execute()
    gone = [env_id for env_id, row in zip(ids, rows, strict=True) if row[0] is None]
    if gone:
        await redis.zrem(index, *gone)
    records = [dict(zip(_LIST_FIELDS, row, strict=True)) for row in rows if row[0] is not None]
    if states:
        records = [r for r in records if r["state"] in states]
    total = len(records)
    start = (page - 1) * limit
    return EnvironmentPage(
        environments=[to_environment(r) for r in records[start : start + limit]],
        page=page,
        limit=limit,
        total=total,
        total_pages=math.ceil(total / limit),
        has_next=start + limit < total,
        has_previous=page > 1,
    )


def _when(value: str | None) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def to_status(record: dict[str, Any]) -> EnvironmentStatus:
    return EnvironmentStatus(
        id=record["id"],
        state=EnvironmentState(record["state"]),
        expires_at=_when(record.get("expires_at")),
        error=record.get("error") or None,
    )


def to_environment(record: dict[str, Any]) -> Environment:
    created_at = _when(record.get("created_at"))
    assert created_at is not None
    return Environment(
        **to_status(record).model_dump(),
        task_ref=record["task_ref"],
        created_at=created_at,
        instruction=record.get("instruction") or None,
    )
