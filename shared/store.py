"""Environment records in Redis: one hash per environment plus the indexes that find it.

Both sides write here: the API creates records and tears them down, workers move them from
`provisioning` to `ready` or `failed`. State changes are compare-and-set scripts so a teardown
racing a provision can never be overwritten by it.
"""

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from taskenv.shared import keys, quotas, scripts
from taskenv.shared.environment_record import EnvironmentRecord
from taskenv.shared.models import Environment, EnvironmentPage, EnvironmentState, EnvironmentStatus
from taskenv.shared.quotas import NO_LIMITS, Limits, Quota
from taskenv.shared.scripts import ClaimOutcome
from taskenv.shared.tasks import TaskSpec

Record = dict[str, str]
# The typed record, or its fields as Redis holds them (callers not moved to the schema yet).
AnyRecord = EnvironmentRecord | dict[str, Any]


def _fields(record: AnyRecord) -> dict[str, Any]:
    return record.to_hash() if isinstance(record, EnvironmentRecord) else record


_ENV_PREFIX = keys.environment("")


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
    task_fields: dict[str, str] | None = None,
) -> Record:
    """The environment's record, made with its indexes in one script; `OverQuota` (and nothing
    written) when its org or workspace already holds its limit of live environments."""
    now = time.time()
    fields: dict[str, Any] = {"instruction": spec.instruction or "", **(task_fields or {})}
    record = EnvironmentRecord(
        id=env_id,
        org=org,
        workspace=workspace,
        task_ref=task_ref,
        state=EnvironmentState.PROVISIONING,
        created_at=now,
        expires_at=now + lifetime_sec,
        token_hash=token_hash,
        spec=spec.model_dump_json(),
        **fields,
    ).to_hash()
    pairs = [item for pair in record.items() for item in pair]
    org_environments, workspace_environments = quotas.environment_sets(org, workspace)
    outcome = await scripts.CREATE_ENVIRONMENT.run(
        redis,
        environment=keys.environment(env_id),
        workspace_index=keys.workspace_index(org, workspace),
        execute_token=keys.execute_token(token_hash),
        provisioning=keys.PROVISIONING,
        org_environments=org_environments,
        workspace_environments=workspace_environments,
        env_id=env_id,
        now=repr(now),
        expires_at=record["expires_at"],
        provision_deadline=repr(now + provision_timeout_sec),
        token_ttl_sec=lifetime_sec + 3600,
        org_limit=limits.org_environments,
        workspace_limit=limits.workspace_environments,
        env_prefix=_ENV_PREFIX,
        rest=pairs,
    )
    if outcome != scripts.CreateOutcome.CREATED:
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
    """The record's fields as Redis holds them (`load` for the typed record)."""
    record = await redis.hgetall(keys.environment(env_id))  # type: ignore[misc]
    return record or None


async def load(redis: Redis, env_id: str) -> EnvironmentRecord | None:
    record = await get(redis, env_id)
    return EnvironmentRecord.model_validate(record) if record else None


async def states(redis: Redis, env_ids: list[str]) -> dict[str, str | None]:
    """Each environment's state (None when its record is gone), in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for env_id in env_ids:
            pipe.hget(keys.environment(env_id), "state")
        found = await pipe.execute()
    return dict(zip(env_ids, found, strict=True))


async def set_if_state(redis: Redis, env_id: str, expected: EnvironmentState, **fields: str) -> bool:
    """Write `fields` only if the record is still in state `expected`."""
    pairs = [item for pair in fields.items() for item in pair]
    changed = await scripts.SET_IF_STATE.run(
        redis, environment=keys.environment(env_id), expected=expected, rest=pairs
    )
    return bool(changed)


async def tear_down(redis: Redis, record: AnyRecord, *, error: str = "", retention_sec: int) -> str | None:
    """Mark torn down and drop it from the live indexes; returns the state it was in before."""
    record = _fields(record)
    env_id = record["id"]
    previous = await scripts.TEAR_DOWN.run(redis, environment=keys.environment(env_id), reason=error)
    async with redis.pipeline(transaction=False) as pipe:
        if record.get("host"):
            pipe.zrem(keys.expiry_index(record["host"]), env_id)
        pipe.zrem(keys.PROVISIONING, env_id)
        pipe.delete(keys.env_commands(env_id))
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
    """The provision's job ended (ready, failed, or given up): the reaper stops watching it, and
    the API processes hear of it, for the status requests that wait for it."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.PROVISIONING, env_id)
        pipe.publish(keys.SETTLED, env_id)
        await pipe.execute()


async def claim_provision(
    redis: Redis, env_id: str, host: str, cap: int, *, worker: str = ""
) -> tuple[ClaimOutcome | EnvironmentState, int]:
    """Make `host` the environment's host, and `worker` its provisioner, if it is still
    unclaimed and the host holds fewer than `cap` live environments. Returns (CLAIMED, count
    after), (FULL, count), (TAKEN or MISSING, count), or (its state, count) when it is no longer
    provisioning."""
    outcome, count = await scripts.CLAIM_PROVISION.run(
        redis,
        environment=keys.environment(env_id),
        expiry_index=keys.expiry_index(host),
        env_id=env_id,
        host=host,
        cap=str(cap),
        env_prefix=_ENV_PREFIX,
        worker=worker,
    )
    text = str(outcome)
    claim = ClaimOutcome(text) if text in tuple(ClaimOutcome) else EnvironmentState(text)
    return claim, int(count)


_LIST_FIELDS = (
    "id", "state", "task_ref", "created_at", "expires_at", "error", "instruction", "service_urls",
    "task_verification",
)  # fmt: skip


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


def _shown_state(record: dict[str, Any]) -> EnvironmentState:
    """`building`: provisioning, waiting for its task's images (worker/task_provision.py)."""
    state = EnvironmentState(record["state"])
    building = state is EnvironmentState.PROVISIONING and record.get("building") == "1"
    return EnvironmentState.BUILDING if building else state


def to_status(record: AnyRecord) -> EnvironmentStatus:
    record = _fields(record)
    return EnvironmentStatus(
        id=record["id"],
        state=_shown_state(record),
        expires_at=_when(record.get("expires_at")),
        error=record.get("error") or None,
        instruction=record.get("instruction") or None,
        service_urls=_json_or(record.get("service_urls"), {}),
    )


def to_environment(record: AnyRecord) -> Environment:
    record = _fields(record)
    created_at = _when(record.get("created_at"))
    assert created_at is not None
    return Environment(
        **to_status(record).model_dump(),
        task_ref=record["task_ref"],
        created_at=created_at,
        task_verification=_json_or(record.get("task_verification"), None),
    )


def _json_or(value: str | None, default: Any) -> Any:
    """A JSON field the API or a worker wrote, or `default` when it is not there."""
    return json.loads(value) if value else default
