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

from taskenv.shared import keys, quotas
from taskenv.shared.models import Environment, EnvironmentPage, EnvironmentState, EnvironmentStatus
from taskenv.shared.quotas import NO_LIMITS, Limits, Quota
from taskenv.shared.tasks import TaskSpec

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


# Counting a host's live environments walks its expiry index (at most its cap plus the failed
# ones not expired yet): exact, and atomic with the claim, so workers of one host sharing a
# count cannot overshoot the cap together.
# The claiming worker process writes its id too: if it is lost, the sweep (shared/hosts.py)
# fails the provisions it left unfinished at once.
# KEYS: environment, host's expiry index. ARGV: env id, host, cap, environment key prefix,
# worker id.
_CLAIM_PROVISION = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'provisioning' then return {state or 'missing', 0} end
local live = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local s = redis.call('HGET', ARGV[4] .. id, 'state')
  if s == 'ready' or s == 'provisioning' then live = live + 1 end
end
if redis.call('HGET', KEYS[1], 'host') ~= '' then return {'taken', live} end
if live >= tonumber(ARGV[3]) then return {'full', live} end
redis.call('HSET', KEYS[1], 'host', ARGV[2], 'provisioner', ARGV[5])
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'expires_at'), ARGV[1])
return {'claimed', live + 1}
"""
_ENV_PREFIX = keys.environment("")


# A new environment's record and indexes, only if its org and workspace are within their
# quotas of live environments (shared/quotas.py), which it then joins, scored by its expiry.
# An existing record can only be this very call's, retried after a lost reply (ids are fresh
# uuids): it is not counted twice.
# KEYS: environment, workspace index, execute token, provisioning index, org's quota set,
# workspace's quota set. ARGV: env id, now, expires at, provision deadline, token TTL s, org
# limit, workspace limit, environment key prefix, then the record's fields and values.
_CREATE = (
    quotas.FULL
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'created' end
local now = tonumber(ARGV[2])
if full(KEYS[5], now, tonumber(ARGV[6]), ARGV[8]) then return 'org_environments' end
if full(KEYS[6], now, tonumber(ARGV[7]), ARGV[8]) then return 'workspace_environments' end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[1], 'EX', ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
local expires = tonumber(ARGV[3])
for i = 5, 6 do
  redis.call('ZADD', KEYS[i], expires, ARGV[1])
  if redis.call('TTL', KEYS[i]) < expires - now then
    redis.call('EXPIREAT', KEYS[i], math.ceil(expires) + 1)
  end
end
return 'created'
"""
)


class OverQuota(Exception):
    """`create` refused: the org or the workspace holds its limit of live environments."""

    def __init__(self, quota: Quota) -> None:
        super().__init__(quota)
        self.quota = quota


async def create(
    redis: Redis,
    *,
    env_id: str,
    org: str,
    workspace: str,
    task_ref: str,
    spec: TaskSpec,
    token_hash: str,
    lifetime_sec: int,
    provision_timeout_sec: float,
    limits: Limits = NO_LIMITS,
) -> Record:
    """The environment's record, made with its indexes in one script; `OverQuota` (and nothing
    written) when its org or workspace already holds its limit of live environments."""
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
        # The host whose worker takes the provision writes itself here (`claim_provision`).
        "host": "",
        "spec": spec.model_dump_json(),
    }
    fields = [item for pair in record.items() for item in pair]
    outcome = await redis.register_script(_CREATE)(
        keys=[
            keys.environment(env_id),
            keys.workspace_index(org, workspace),
            keys.execute_token(token_hash),
            keys.PROVISIONING,
            *quotas.environment_sets(org, workspace),
        ],
        args=[
            env_id,
            repr(now),
            record["expires_at"],
            repr(now + provision_timeout_sec),
            lifetime_sec + 3600,
            limits.org_environments,
            limits.workspace_environments,
            _ENV_PREFIX,
            *fields,
        ],
    )
    if outcome != "created":
        raise OverQuota(Quota(outcome))
    return record


async def discard(redis: Redis, record: Record) -> None:
    """Undo `create` for an environment whose provision was refused (its caller got 429 and
    never learnt its id): no record, no index entry, no quota taken."""
    env_id, org, workspace = record["id"], record["org"], record["workspace"]
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.environment(env_id), keys.execute_token(record["token_hash"]))
        pipe.zrem(keys.workspace_index(org, workspace), env_id)
        pipe.zrem(keys.PROVISIONING, env_id)
        for quota_set in quotas.environment_sets(org, workspace):
            pipe.zrem(quota_set, env_id)
        await pipe.execute()


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
        if record.get("host"):
            pipe.zrem(keys.expiry_index(record["host"]), env_id)
        pipe.zrem(keys.PROVISIONING, env_id)
        pipe.delete(keys.inflight(env_id))
        if retention_sec:
            pipe.expire(keys.environment(env_id), retention_sec)
            pipe.expire(keys.execute_token(record["token_hash"]), retention_sec)
        await pipe.execute()
    return str(previous) if previous is not None else None


async def expired(redis: Redis, host: str, now: float) -> list[str]:
    return list(await redis.zrangebyscore(keys.expiry_index(host), "-inf", now))


async def stalled_provisions(redis: Redis, now: float) -> list[str]:
    return list(await redis.zrangebyscore(keys.PROVISIONING, "-inf", now))


async def provision_ran(redis: Redis, env_id: str) -> None:
    await redis.zrem(keys.PROVISIONING, env_id)


async def claim_provision(
    redis: Redis, env_id: str, host: str, cap: int, *, worker: str = ""
) -> tuple[str, int]:
    """Make `host` the environment's host, and `worker` its provisioner, if it is still
    unclaimed and the host holds fewer than `cap` live environments. Returns ("claimed", count
    after), ("full", count) or (state, count) when there is nothing to provision any more."""
    outcome, count = await redis.eval(  # type: ignore[misc]
        _CLAIM_PROVISION,
        2,
        keys.environment(env_id),
        keys.expiry_index(host),
        env_id,
        host,
        str(cap),
        _ENV_PREFIX,
        worker,
    )
    return str(outcome), int(count)


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
